//! The JSON Schema of the workflow file format, for editors. It is derived
//! from documentation types below, then each action's argument schema is
//! attached so that `with` is checked per action.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde_json::{Value, json};

use super::params::ParamType;
use crate::builtin::DurationArg;
use crate::runtime::registry::Registry;

/// A Tasuki workflow (version 1).
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Workflow {
    /// Always 1.
    version: u32,
    name: String,
    description: Option<String>,
    /// Param names and their defaults. A mapping declares the param in full;
    /// a param without a default is required.
    params: Option<BTreeMap<String, Param>>,
    /// Take params the workflow does not declare (the AUTORO document's
    /// way): a session's undeclared params are bound as given (strings,
    /// numbers, lists, objects) and read as `${params.NAME}`; a reference to
    /// one the session was not given fails its step when it runs.
    accept_undeclared_params: Option<bool>,
    /// Run alone on the robot, with one browser and one working directory
    /// shared by every step.
    single_process_mode: Option<bool>,
    /// The whole session fails when it runs longer than this.
    timeout: Option<DurationArg>,
    steps: Vec<Step>,
    /// Steps that run when the workflow fails, with `${error}` bound.
    on_error: Option<Vec<Step>>,
    /// Cleanup: steps that run after the steps and `on_error`, whatever
    /// their end (success, failure, timeout, cancel). A cancel does not
    /// stop them; `finally_timeout` does.
    finally: Option<Vec<Step>>,
    /// How long each `finally` block may run (default 60s).
    finally_timeout: Option<DurationArg>,
    /// After which ends its hub queues the session again, at most 3 times
    /// (for a workflow that is safe to repeat): `robot_lost` (its robot
    /// stopped renewing the lease), `agent_restarted` (the agent was
    /// killed mid-run and restarted). By default a session runs at most
    /// once.
    retry_on: Option<Vec<RetryOnDoc>>,
    /// Bounds on one session: `steps` run (loops' iterations and branches
    /// counted; `finally` and `on_error` exempt) ends it `step_limit`;
    /// `output_bytes` of its rendered outputs, `outputs_failed`;
    /// `log_bytes` of log messages its hub stores, past which the log is
    /// cut with a line saying where and why; `artifact_bytes` its hub
    /// stores, past which an artifact is refused.
    limits: Option<LimitsDoc>,
    /// Browser settings of this workflow, over the robot's.
    browser: Option<BrowserSection>,
    /// The session's results: output name → a value, with templates over
    /// params and steps, rendered when the session succeeds (at most
    /// 64 KiB as JSON; secret values masked).
    outputs: Option<BTreeMap<String, serde_json::Value>>,
    /// The named credentials the workflow reads, name → kind; read as
    /// `${credentials.NAME.FIELD}` and masked everywhere. A robot
    /// receives them from its hub, `tasuki run` from `--credentials-file`.
    credentials: Option<BTreeMap<String, CredentialKindDoc>>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct LimitsDoc {
    #[schemars(range(min = 1))]
    steps: Option<u64>,
    #[schemars(range(min = 1))]
    log_bytes: Option<u64>,
    #[schemars(range(min = 1))]
    output_bytes: Option<u64>,
    #[schemars(range(min = 1))]
    artifact_bytes: Option<u64>,
    /// How deep `call` steps may nest; 5 by default.
    #[schemars(range(min = 1, max = 20))]
    subworkflow_depth: Option<u64>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum RetryOnDoc {
    RobotLost,
    AgentRestarted,
}

/// A credential's kind and so its fields: `username_password`
/// (`username`, `password`), `token` (`token`), `file` (`content`, at
/// most 64 KiB).
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
enum CredentialKindDoc {
    UsernamePassword,
    Token,
    File,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct BrowserSection {
    /// A dialog (alert, confirm, prompt) that no step handles: `fail` the
    /// step (the default), or `accept` or `dismiss` it with a warning.
    unexpected_dialog: Option<UnexpectedDialog>,
    /// How long element waits last unless a step gives `timeout`; 30s by
    /// default.
    element_timeout: Option<DurationArg>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum UnexpectedDialog {
    Fail,
    Accept,
    Dismiss,
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Param {
    Declared(ParamSpec),
    Default(Value),
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ParamSpec {
    default: Option<Value>,
    /// Masked as *** in every log line, report and error.
    secret: Option<bool>,
    description: Option<String>,
    /// The JSON type of its values; without it, the default's type.
    #[serde(rename = "type")]
    value_type: Option<ParamType>,
    /// The only values it takes (not for a secret).
    choices: Option<Vec<Value>>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct Step {
    /// Unique in the workflow; outputs are read as `${steps.<id>.output}`.
    id: String,
    /// A label for people.
    name: Option<String>,
    /// A registered action such as `shell.run`, or a control step:
    /// set, log, sleep, fail, for_each, try, parallel, call (another
    /// workflow, by name), and the waiting steps `approval` and
    /// `wait_event` (top-level steps only).
    action: String,
    /// The action's arguments. Strings may contain `${...}` templates.
    with: Option<BTreeMap<String, Value>>,
    /// The step runs only when this template is truthy.
    #[serde(rename = "if")]
    condition: Option<Condition>,
    timeout: Option<DurationArg>,
    retry: Option<Retry>,
    continue_on_error: Option<bool>,
    /// Binds the step's output to a variable of this name.
    save_as: Option<String>,
    /// The body of `for_each` and `try`.
    steps: Option<Vec<Step>>,
    /// The handler of `try`, with `${error}` bound.
    catch: Option<Vec<Step>>,
    /// The cleanup of `try`: runs after its steps and `catch`, whatever
    /// their end, a cancel included (bounded by `finally_timeout`).
    finally: Option<Vec<Step>>,
    /// The branches of `parallel`: name → steps. They run at the same
    /// time (at most `with.max_parallel` at once; those that use the
    /// browser one after another); `with.on_failure: cancel_siblings`
    /// (the default) or `finish_siblings`.
    branches: Option<BTreeMap<String, Vec<Step>>>,
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Condition {
    Template(String),
    Constant(bool),
}

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum Retry {
    Times(u32),
    Policy {
        times: u32,
        delay: Option<DurationArg>,
        max_delay: Option<DurationArg>,
        factor: Option<f32>,
    },
}

/// The schema, with per-action argument schemas for every action in `registry`.
pub fn workflow_schema(registry: &Registry) -> Value {
    let mut schema = schemars::schema_for!(Workflow).to_value();
    schema["$id"] = json!("https://tasuki.dev/schema/workflow-v1.json");
    schema["properties"]["version"] = json!({"const": 1});
    let mut per_action = Vec::new();
    for name in registry.names() {
        if let Some(args) = registry.schema(name) {
            per_action.push(json!({
                "if": {"properties": {"action": {"const": name}}, "required": ["action"]},
                "then": {"properties": {"with": args}}
            }));
        }
    }
    let for_each_args = json!({
        "type": "object",
        "properties": {"items": {}, "as": {"type": "string"}, "index_as": {"type": "string"}},
        "required": ["items"],
        "additionalProperties": false
    });
    per_action.push(json!({
        "if": {"properties": {"action": {"const": "for_each"}}, "required": ["action"]},
        "then": {"properties": {"with": for_each_args}, "required": ["steps"]}
    }));
    let duration = json!({"type": "string", "description": "a duration such as `30m` or `48h`; 24h by default, at most 720h"});
    per_action.push(json!({
        "if": {"properties": {"action": {"const": "approval"}}, "required": ["action"]},
        "then": {"properties": {"with": {
            "type": "object",
            "properties": {
                "message": {"type": "string", "description": "what the person deciding should know"},
                "timeout": duration,
                "on_timeout": {"enum": ["approve", "reject"], "description": "the decision when nobody decides in time; reject by default"},
                "approvers": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": crate::runtime::wait::MAX_APPROVERS,
                    "uniqueItems": true,
                    "items": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                    "description": "the access key ids that may decide, on a hub; any key with session_queue.write when left out"
                }
            },
            "required": ["message"],
            "additionalProperties": false
        }}, "required": ["with"]}
    }));
    per_action.push(json!({
        "if": {"properties": {"action": {"const": "call"}}, "required": ["action"]},
        "then": {"properties": {"with": {
            "type": "object",
            "properties": {
                "workflow": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]{0,63}$", "description": "the called workflow's name: NAME.yaml beside this file for tasuki run, the newest of that name on a hub"},
                "params": {"type": "object", "description": "its params; templates allowed"}
            },
            "required": ["workflow"],
            "additionalProperties": false
        }}, "required": ["with"]}
    }));
    per_action.push(json!({
        "if": {"properties": {"action": {"const": "wait_event"}}, "required": ["action"]},
        "then": {"properties": {"with": {
            "type": "object",
            "properties": {
                "event": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$", "description": "the name it is delivered under"},
                "timeout": duration
            },
            "required": ["event"],
            "additionalProperties": false
        }}, "required": ["with"]}
    }));
    if let Some(Value::Object(step)) = schema.pointer_mut("/$defs/Step") {
        step.insert("allOf".into(), Value::Array(per_action));
    }
    schema
}
