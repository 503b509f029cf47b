//! The workflow model, and its lowering from a parsed document.
//!
//! Lowering checks shapes and types field by field and keeps going after a
//! problem, so that one run reports every mistake in the file. Semantic
//! checks (ids, actions, arguments, references) live in `validate`.

use std::time::Duration;

use serde_json::{Map, Value};

use super::credentials::CredentialSpec;
use super::duration::parse_duration;
use super::params::ParamType;
use super::problem::{Problems, index, join};
use super::template::describe;
use crate::runtime::context::DialogPolicy;

/// A workflow, checked and ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    pub params: Vec<ParamSpec>,
    /// `accept_undeclared_params: true`: a session may be given params the
    /// workflow does not declare (the AUTORO document's way), bound as
    /// they come and read as `${params.NAME}`. A reference to an
    /// undeclared param then cannot be checked before the run: one the
    /// session was not given fails its step.
    pub accept_undeclared_params: bool,
    pub single_process_mode: bool,
    pub timeout: Option<Duration>,
    pub steps: Vec<Step>,
    pub on_error: Vec<Step>,
    /// `finally:`: steps that run once the steps (and `on_error`) are over,
    /// whatever their end: success, failure, timeout or cancel.
    pub finally: Vec<Step>,
    /// `finally_timeout:`: how long each `finally` block (the workflow's,
    /// and each `try`'s) may run; a cancel does not stop one, this does.
    pub finally_timeout: Duration,
    /// `retry_on:`: the ends of a session, among [`RETRY_ON_CODES`], after
    /// which its hub queues it again (the workflow is safe to repeat).
    /// Empty by default: a session runs at most once.
    pub retry_on: Vec<String>,
    /// `limits:`: bounds on one session of this workflow.
    pub limits: Limits,
    /// The workflow's own browser settings, over the robot's.
    pub browser: WorkflowBrowser,
    /// What validation found unwise but not wrong (a secret in `argv`):
    /// callers show these, and the workflow still runs.
    pub warnings: Problems,
    /// `outputs:`: the session's results, name → a value with templates
    /// over params and steps, rendered when the session succeeds.
    pub outputs: Map<String, Value>,
    /// `credentials:`: the named credentials its templates read, with
    /// their kinds (`credentials.rs`).
    pub credentials: Vec<CredentialSpec>,
    /// The workflows its `call` steps run, by name, each with its own
    /// `called` filled in (`language/calls.rs`).
    pub called: std::collections::BTreeMap<String, std::sync::Arc<Workflow>>,
}

/// `limits:` in a workflow. Each bound, when reached, ends the session
/// (or cuts its log) with an error naming it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Steps run, each iteration of a loop and each branch's counted.
    pub steps: Option<u64>,
    /// Bytes of log messages the hub stores; the log is cut past it.
    pub log_bytes: Option<u64>,
    /// Bytes of the rendered `outputs:`, as JSON.
    pub output_bytes: Option<u64>,
    /// Bytes of artifacts the hub stores for one session; one past it is
    /// refused.
    pub artifact_bytes: Option<u64>,
    /// How deep `call` steps may nest (a workflow calling one that calls
    /// another is 2); [`DEFAULT_SUBWORKFLOW_DEPTH`] unless set.
    pub subworkflow_depth: Option<u64>,
}

const LIMIT_FIELDS: &[&str] = &[
    "steps",
    "log_bytes",
    "output_bytes",
    "artifact_bytes",
    "subworkflow_depth",
];

/// How deep `call` steps nest unless `limits.subworkflow_depth` says.
pub const DEFAULT_SUBWORKFLOW_DEPTH: u64 = 5;
/// The deepest `limits.subworkflow_depth` may allow.
pub const MAX_SUBWORKFLOW_DEPTH: u64 = 20;

/// `browser:` in a workflow: what it says wins over the robot's settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowBrowser {
    /// `unexpected_dialog: fail | accept | dismiss`.
    pub unexpected_dialog: Option<DialogPolicy>,
    /// `element_timeout`: how long element waits last unless a step says.
    pub element_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    /// `None` makes the param required.
    pub default: Option<Value>,
    pub secret: bool,
    pub description: Option<String>,
    /// `type:`; without it the default's type, if any (`value_type`).
    pub declared_type: Option<ParamType>,
    /// `choices:`: the only values it takes; empty for any.
    pub choices: Vec<Value>,
}

impl ParamSpec {
    /// A param with a name and nothing else declared: required, any value.
    pub fn named(name: impl Into<String>) -> Self {
        ParamSpec {
            name: name.into(),
            default: None,
            secret: false,
            description: None,
            declared_type: None,
            choices: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub id: String,
    /// Where the step sits in the document, e.g. `steps[2].steps[0]`.
    pub path: String,
    pub action: String,
    pub with: Map<String, Value>,
    pub condition: Option<String>,
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    pub continue_on_error: bool,
    pub save_as: Option<String>,
    /// The body of `for_each` and `try`.
    pub steps: Vec<Step>,
    /// The handler of `try`.
    pub catch: Vec<Step>,
    /// The cleanup of `try`: runs after its steps and `catch`, whatever
    /// their end.
    pub finally: Vec<Step>,
    /// The branches of `parallel`, in document order: each runs its steps
    /// one after another, beside the others.
    pub branches: Vec<Branch>,
}

/// One branch of a `parallel` step.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch {
    pub name: String,
    /// Where it sits, e.g. `steps[2].branches.prices`.
    pub path: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub times: u32,
    pub delay: Duration,
    pub max_delay: Duration,
    pub factor: f32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            times: 0,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            factor: 2.0,
        }
    }
}

/// The actions that are part of the language rather than the registry,
/// because they shape control flow or the variable scope.
pub const CONTROL_SET: &str = "set";
pub const CONTROL_FOR_EACH: &str = "for_each";
pub const CONTROL_TRY: &str = "try";
pub const CONTROL_PARALLEL: &str = "parallel";
/// Runs another workflow inline (`language/calls.rs`).
pub const CONTROL_CALL: &str = "call";
/// Waits for a person's decision (`runtime/wait.rs`).
pub const CONTROL_APPROVAL: &str = "approval";
/// Waits for an outside event (`runtime/wait.rs`).
pub const CONTROL_WAIT_EVENT: &str = "wait_event";
/// The control steps, which the executor runs itself.
pub const CONTROL_ACTIONS: &[&str] = &[
    CONTROL_SET,
    CONTROL_FOR_EACH,
    CONTROL_TRY,
    CONTROL_PARALLEL,
    CONTROL_APPROVAL,
    CONTROL_WAIT_EVENT,
    CONTROL_CALL,
];

/// The kind of wait `action` is, if it is a waiting step.
pub fn wait_kind(action: &str) -> Option<crate::runtime::wait::WaitKind> {
    use crate::runtime::wait::WaitKind;
    match action {
        CONTROL_APPROVAL => Some(WaitKind::Approval),
        CONTROL_WAIT_EVENT => Some(WaitKind::Event),
        _ => None,
    }
}

/// Names a template may not use for a variable.
pub const RESERVED_ROOTS: &[&str] = &[
    "params",
    "steps",
    "env",
    "error",
    "credentials",
    "true",
    "false",
    "null",
];

pub const MAX_STEPS: usize = 10_000;
/// What `retry_on` may name: a session that ended so never finished its
/// run, through no fault of its own.
pub const RETRY_ON_CODES: &[&str] = &["robot_lost", "agent_restarted"];

/// `finally_timeout` unless the workflow sets it.
pub const DEFAULT_FINALLY_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_ID_LEN: usize = 64;

const WORKFLOW_FIELDS: &[&str] = &[
    "version",
    "name",
    "description",
    "params",
    "accept_undeclared_params",
    "single_process_mode",
    "timeout",
    "steps",
    "on_error",
    "finally",
    "finally_timeout",
    "retry_on",
    "limits",
    "browser",
    "outputs",
    "credentials",
];
const BROWSER_FIELDS: &[&str] = &["unexpected_dialog", "element_timeout"];
const STEP_FIELDS: &[&str] = &[
    "id",
    "name",
    "action",
    "with",
    "if",
    "timeout",
    "retry",
    "continue_on_error",
    "save_as",
    "steps",
    "catch",
    "finally",
    "branches",
];
const PARAM_FIELDS: &[&str] = &["default", "secret", "description", "type", "choices"];
/// Keys that make a mapping a param's declaration whatever else it holds.
const DECLARING_FIELDS: &[&str] = &["default", "secret", "description"];

/// Whether a param's mapping declares it rather than being its default:
/// it is empty, uses `default`, `secret` or `description`, or holds only a
/// `type` that names a type and a `choices` list. A workflow written before
/// `type` and `choices` could have `{type: invoice}` as an object default,
/// and still has.
fn declares(spec: &Map<String, Value>) -> bool {
    spec.is_empty()
        || spec.keys().any(|k| DECLARING_FIELDS.contains(&k.as_str()))
        || (spec.keys().all(|k| k == "type" || k == "choices")
            && spec
                .get("type")
                .is_none_or(|t| t.as_str().and_then(ParamType::parse).is_some())
            && spec.get("choices").is_none_or(Value::is_array))
}
const RETRY_FIELDS: &[&str] = &["times", "delay", "max_delay", "factor"];

/// Whether `name` can be an id or a variable name.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.len() <= MAX_ID_LEN
}

/// Reads the fields of one mapping, remembering which were used so that
/// the rest can be reported as unknown.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Fields<'a> {
    fn new(
        map: &'a Map<String, Value>,
        path: &'a str,
        known: &[&str],
        problems: &mut Problems,
    ) -> Self {
        for key in map.keys() {
            if !known.contains(&key.as_str()) {
                let hint = closest(key, known)
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_else(|| format!("; expected one of: {}", known.join(", ")));
                problems.add(join(path, key), format!("unknown field `{key}`{hint}"));
            }
        }
        Fields { map, path }
    }

    fn get(&self, key: &str) -> Option<(&'a Value, String)> {
        self.map.get(key).map(|v| (v, join(self.path, key)))
    }

    fn string(&self, key: &str, problems: &mut Problems) -> Option<String> {
        let (v, path) = self.get(key)?;
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                problems.add(
                    path,
                    format!("expected a string, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn bool(&self, key: &str, problems: &mut Problems) -> Option<bool> {
        let (v, path) = self.get(key)?;
        match v {
            Value::Bool(b) => Some(*b),
            Value::String(s) if matches!(s.as_str(), "yes" | "no" | "on" | "off" | "y" | "n") => {
                problems.add(path, format!("expected true or false, found the string `{s}` (YAML 1.1 booleans are not accepted)"));
                None
            }
            other => {
                problems.add(
                    path,
                    format!("expected true or false, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn duration(&self, key: &str, problems: &mut Problems) -> Option<Duration> {
        let (v, path) = self.get(key)?;
        duration_value(v, &path, problems)
    }
}

fn duration_value(v: &Value, path: &str, problems: &mut Problems) -> Option<Duration> {
    match v {
        Value::String(s) => match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.add(path, e);
                None
            }
        },
        Value::Number(n) => {
            problems.add(path, format!("duration `{n}` has no unit; write `{n}s` for seconds or `{n}ms` for milliseconds"));
            None
        }
        other => {
            problems.add(
                path,
                format!(
                    "expected a duration such as `30s`, found {}",
                    describe(other)
                ),
            );
            None
        }
    }
}

/// A known name within edit distance 2 of `key`, for "did you mean".
fn closest<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Lowers a parsed document into a `Workflow`, reporting every shape and
/// type problem found on the way. The workflow comes back even when there
/// are problems (with the broken fields left out), so that semantic checks
/// can still run and report their findings in the same pass.
pub fn lower(doc: &Value) -> (Option<Workflow>, Problems) {
    let mut problems = Problems::default();
    let Value::Object(map) = doc else {
        problems.add(
            "",
            format!(
                "a workflow must be a mapping with `version`, `name` and `steps`; found {}",
                describe(doc)
            ),
        );
        return (None, problems);
    };
    let fields = Fields::new(map, "", WORKFLOW_FIELDS, &mut problems);

    match fields.get("version") {
        None => problems.add("version", "missing field `version`; add `version: 1`"),
        Some((Value::Number(n), _)) if n.as_u64() == Some(1) => {}
        Some((other, path)) => problems.add(
            path,
            format!("unsupported version {other}; this Tasuki reads `version: 1`"),
        ),
    }
    let name = fields.string("name", &mut problems).unwrap_or_default();
    if !map.contains_key("name") {
        problems.add("name", "missing field `name`");
    } else if name.trim().is_empty() && matches!(map.get("name"), Some(Value::String(_))) {
        problems.add("name", "`name` must not be empty");
    }
    let description = fields.string("description", &mut problems);
    let single_process_mode = fields
        .bool("single_process_mode", &mut problems)
        .unwrap_or(false);
    let accept_undeclared_params = fields
        .bool("accept_undeclared_params", &mut problems)
        .unwrap_or(false);
    let timeout = fields.duration("timeout", &mut problems);
    let browser = match fields.get("browser") {
        None | Some((Value::Null, _)) => WorkflowBrowser::default(),
        Some((Value::Object(b), path)) => lower_browser(b, &path, &mut problems),
        Some((other, path)) => {
            problems.add(
                path,
                format!(
                    "expected a mapping such as `unexpected_dialog: accept` or `element_timeout: 10s`, found {}",
                    describe(other)
                ),
            );
            WorkflowBrowser::default()
        }
    };
    // What lowering finds unwise but not wrong; validation adds its own.
    let mut warnings = Problems::default();
    let params = match fields.get("params") {
        None | Some((Value::Null, _)) => Vec::new(),
        Some((Value::Object(p), path)) => lower_params(p, &path, &mut problems, &mut warnings),
        Some((other, path)) => {
            problems.add(
                path,
                format!(
                    "expected a mapping of param names to defaults, found {}",
                    describe(other)
                ),
            );
            Vec::new()
        }
    };
    let mut count = 0usize;
    let steps = match fields.get("steps") {
        None => {
            problems.add(
                "steps",
                "missing field `steps`; a workflow needs at least one step",
            );
            Vec::new()
        }
        Some((v, path)) => {
            let steps = lower_steps(v, &path, &mut problems, &mut count, 0);
            if steps.is_empty() && matches!(v, Value::Array(a) if a.is_empty()) {
                problems.add(path, "`steps` is empty; a workflow needs at least one step");
            }
            steps
        }
    };
    let on_error = match fields.get("on_error") {
        None | Some((Value::Null, _)) => Vec::new(),
        Some((v, path)) => lower_steps(v, &path, &mut problems, &mut count, 0),
    };
    let finally = match fields.get("finally") {
        None | Some((Value::Null, _)) => Vec::new(),
        Some((v, path)) => lower_steps(v, &path, &mut problems, &mut count, 0),
    };
    let finally_timeout = match fields.duration("finally_timeout", &mut problems) {
        Some(d) if d.is_zero() => {
            problems.add(
                "finally_timeout",
                "the finally steps need some time: give more than 0s, such as 30s",
            );
            DEFAULT_FINALLY_TIMEOUT
        }
        Some(d) => d,
        None => DEFAULT_FINALLY_TIMEOUT,
    };
    let limits = match fields.get("limits") {
        None | Some((Value::Null, _)) => Limits::default(),
        Some((Value::Object(map), path)) => {
            let limits = Fields::new(map, &path, LIMIT_FIELDS, &mut problems);
            let mut bound = |name: &str| match limits.get(name) {
                None => None,
                Some((Value::Number(n), _)) if n.as_u64().is_some_and(|n| n >= 1) => n.as_u64(),
                Some((other, p)) => {
                    problems.add(
                        p,
                        format!("expected a whole number from 1, found {}", describe(other)),
                    );
                    None
                }
            };
            Limits {
                steps: bound("steps"),
                log_bytes: bound("log_bytes"),
                output_bytes: bound("output_bytes"),
                artifact_bytes: bound("artifact_bytes"),
                subworkflow_depth: match bound("subworkflow_depth") {
                    Some(d) if d > MAX_SUBWORKFLOW_DEPTH => {
                        problems.add(
                            join(&path, "subworkflow_depth"),
                            format!("at most {MAX_SUBWORKFLOW_DEPTH}, found {d}"),
                        );
                        None
                    }
                    d => d,
                },
            }
        }
        Some((other, path)) => {
            problems.add(
                path,
                format!(
                    "expected a mapping such as `{{steps: 1000, log_bytes: 10000000}}`, found {}",
                    describe(other)
                ),
            );
            Limits::default()
        }
    };
    let retry_on = match fields.get("retry_on") {
        None | Some((Value::Null, _)) => Vec::new(),
        Some((v, path)) => lower_retry_on(v, &path, &mut problems),
    };
    if count > MAX_STEPS {
        problems.add(
            "steps",
            format!("the workflow has {count} steps; the limit is {MAX_STEPS}"),
        );
    }

    let outputs = match fields.get("outputs") {
        None | Some((Value::Null, _)) => Map::new(),
        Some((Value::Object(map), path)) => {
            for name in map.keys() {
                if !is_identifier(name) {
                    problems.add(
                        join(&path, name),
                        "an output's name is an identifier (letters, digits, `_` and `-`, not \
                         starting with a digit)",
                    );
                }
            }
            map.clone()
        }
        Some((other, path)) => {
            problems.add(
                path,
                format!(
                    "expected a mapping of output names to values, such as `total: \"${{steps.sum.output}}\"`, found {}",
                    describe(other)
                ),
            );
            Map::new()
        }
    };
    let credentials = match fields.get("credentials") {
        None => Vec::new(),
        Some((v, path)) => super::credentials::lower(v, &path, &mut problems),
    };
    let workflow = Workflow {
        credentials,
        name,
        description,
        params,
        accept_undeclared_params,
        single_process_mode,
        timeout,
        steps,
        on_error,
        finally,
        finally_timeout,
        retry_on,
        limits,
        browser,
        warnings,
        outputs,
        called: Default::default(),
    };
    (Some(workflow), problems)
}

fn lower_browser(map: &Map<String, Value>, path: &str, problems: &mut Problems) -> WorkflowBrowser {
    let fields = Fields::new(map, path, BROWSER_FIELDS, problems);
    let unexpected_dialog = fields
        .string("unexpected_dialog", problems)
        .and_then(|name| {
            let policy = DialogPolicy::parse(&name);
            if policy.is_none() {
                problems.add(
                    join(path, "unexpected_dialog"),
                    format!(
                        "unknown dialog policy `{name}`; expected one of: {}",
                        DialogPolicy::NAMES.join(", ")
                    ),
                );
            }
            policy
        });
    let element_timeout = fields.duration("element_timeout", problems);
    WorkflowBrowser {
        unexpected_dialog,
        element_timeout,
    }
}

fn lower_params(
    map: &Map<String, Value>,
    path: &str,
    problems: &mut Problems,
    warnings: &mut Problems,
) -> Vec<ParamSpec> {
    let mut params = Vec::new();
    for (name, value) in map {
        let here = join(path, name);
        if !is_identifier(name) {
            problems.add(&here, format!("param name `{name}` must start with a letter or `_` and contain only letters, digits, `_` and `-`"));
            continue;
        }
        // A mapping that uses any of the spec keys declares the param;
        // any other value, mappings included, is its default. A near miss
        // (`secrte: true`) would silently make a secret a plain default, so
        // it is refused.
        if let Value::Object(spec) = value
            && !declares(spec)
            && let Some((key, near)) = spec
                .keys()
                .find_map(|k| closest(k, DECLARING_FIELDS).map(|n| (k, n)))
        {
            problems.add(
                        join(&here, key),
                        format!("unknown field `{key}`; did you mean `{near}`? (to give a mapping as the default, write it under `default:`)"),
                    );
            continue;
        }
        let spec = match value {
            Value::Object(spec) if declares(spec) => {
                let fields = Fields::new(spec, &here, PARAM_FIELDS, problems);
                let declared = ParamSpec {
                    default: fields.get("default").map(|(v, _)| v.clone()),
                    secret: fields.bool("secret", problems).unwrap_or(false),
                    description: fields.string("description", problems),
                    declared_type: param_type(&fields, problems),
                    choices: match fields.get("choices") {
                        None => Vec::new(),
                        Some((Value::Array(items), path)) if items.is_empty() => {
                            problems.add(path, "an empty list of choices leaves no value to give; leave `choices` out to take any");
                            Vec::new()
                        }
                        Some((Value::Array(items), _)) => items.clone(),
                        Some((other, path)) => {
                            problems.add(
                                path,
                                format!(
                                    "expected a list of the values it takes, found {}",
                                    describe(other)
                                ),
                            );
                            Vec::new()
                        }
                    },
                    ..ParamSpec::named(name.clone())
                };
                check_param_shape(&declared, &here, problems);
                // `default: 3.0` of an integer is bound as `3`, as a given
                // `3.0` is.
                let default = match (&declared.default, declared.value_type()) {
                    (Some(d @ Value::Number(_)), Some(ParamType::Integer)) => {
                        declared.check_value(d).ok()
                    }
                    (d, _) => d.clone(),
                };
                ParamSpec {
                    default,
                    ..declared
                }
            }
            Value::Null => ParamSpec::named(name.clone()),
            other => {
                if let Value::Object(mapping) = other {
                    warn_typed_looking_default(mapping, &here, warnings);
                }
                ParamSpec {
                    default: Some(other.clone()),
                    ..ParamSpec::named(name.clone())
                }
            }
        };
        params.push(spec);
    }
    params
}

/// A param's default that is a mapping with a `type` or `choices` key,
/// but no declaration (`{type: int}` names no type): most likely not what
/// was meant. Said once, briefly; the mapping itself is not repeated (it
/// may be long).
fn warn_typed_looking_default(mapping: &Map<String, Value>, path: &str, warnings: &mut Problems) {
    const TYPING: &[&str] = &["type", "choices"];
    // `tpye`, `choice`: a declaration's key misspelt, one letter off or two
    // swapped (`time` or `top` are keys of their own).
    let near_miss = mapping
        .keys()
        .filter(|k| !TYPING.contains(&k.as_str()))
        .find_map(|k| {
            TYPING
                .iter()
                .find(|t| one_slip(k, t))
                .map(|near| (k, *near))
        });
    let why = match (mapping.get("type"), near_miss) {
        (Some(t), _) if t.as_str().and_then(ParamType::parse).is_none() => {
            let hint = t
                .as_str()
                .and_then(|t| {
                    ParamType::alias(t).or_else(|| {
                        ParamType::parse(&t.to_ascii_lowercase()).map(ParamType::as_str)
                    })
                })
                .map(|near| format!("; did you mean `type: {near}`?"))
                .unwrap_or_default();
            format!(
                "`type: {t}` names no type (one of {}){hint}",
                ParamType::NAMES.join(", ")
            )
        }
        (_, Some((key, near))) => format!("`{key}` is not `{near}`"),
        (None, None) if !mapping.contains_key("choices") => return,
        (_, None) if mapping.get("choices").is_some_and(|c| !c.is_array()) => {
            "`choices` is not a list".to_string()
        }
        _ => {
            let others: Vec<&str> = mapping
                .keys()
                .map(String::as_str)
                .filter(|k| !TYPING.contains(k))
                .collect();
            format!(
                "{} beside `type` or `choices` make it a default (a declaration holds only \
                 those, or uses `default`, `secret` or `description`)",
                others
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    };
    warnings.add(
        path,
        format!(
            "read as its default, a mapping: {why}; to keep the mapping as the default and \
             silence this, write it under `default:`"
        ),
    );
}

/// Whether `a` is `b` with one letter added, dropped or changed, or two
/// neighbours swapped.
fn one_slip(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a == b {
        return false;
    }
    let same_but = |skip_a: usize, skip_b: usize| {
        let strip = |v: &[char], at: usize| {
            v.iter()
                .enumerate()
                .filter(|(i, _)| *i != at)
                .map(|(_, c)| *c)
                .collect::<Vec<_>>()
        };
        strip(&a, skip_a) == strip(&b, skip_b)
    };
    match a.len() as isize - b.len() as isize {
        0 => {
            let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
            differ.len() == 1
                || (differ.len() == 2
                    && differ[1] == differ[0] + 1
                    && a[differ[0]] == b[differ[1]]
                    && a[differ[1]] == b[differ[0]])
        }
        1 => (0..a.len()).any(|i| same_but(i, usize::MAX)),
        -1 => (0..b.len()).any(|i| same_but(usize::MAX, i)),
        _ => false,
    }
}

fn param_type(fields: &Fields, problems: &mut Problems) -> Option<ParamType> {
    let (v, path) = fields.get("type")?;
    let found = match v {
        Value::String(name) => ParamType::parse(name),
        _ => None,
    };
    if found.is_none() {
        let hint = v
            .as_str()
            .and_then(|name| ParamType::alias(name).or_else(|| closest(name, ParamType::NAMES)))
            .map(|near| format!("; did you mean `{near}`?"))
            .unwrap_or_default();
        problems.add(
            path,
            format!(
                "unknown param type {v}{hint} (a param's type is one of: {})",
                ParamType::NAMES.join(", ")
            ),
        );
    }
    found
}

/// A declared param's default and choices fit its type, and its default
/// is one of its choices. A secret lists no choices: they would be written
/// in the file for anyone to read.
fn check_param_shape(spec: &ParamSpec, path: &str, problems: &mut Problems) {
    let choices = join(path, "choices");
    if !spec.choices.is_empty() && spec.secret {
        problems.add(&choices, "a secret param cannot list choices: they would be written in the workflow for anyone to read");
    }
    for (i, c) in spec.choices.iter().enumerate() {
        if c.is_null() {
            problems.add(
                index(&choices, i),
                "a choice cannot be null; a param that may be left out has a `default`",
            );
        }
    }
    if let Some(d) = &spec.default
        && !d.is_null()
        && !spec.choices.is_empty()
        && !spec.choices.iter().any(|c| super::params::same_value(c, d))
    {
        problems.add(
            join(path, "default"),
            format!("the default {d} is not one of the choices"),
        );
    }
    let Some(ty) = spec.value_type() else {
        return;
    };
    if let Some(d) = &spec.default
        && !d.is_null()
        && let Err(e) = ty.check(d)
    {
        problems.add(
            join(path, "default"),
            format!("the default is not the param's type: {e}"),
        );
    }
    for (i, c) in spec.choices.iter().enumerate() {
        if !c.is_null()
            && let Err(e) = ty.check(c)
        {
            problems.add(
                index(&choices, i),
                format!("a choice must be of the param's type: {e}"),
            );
        }
    }
}

const MAX_NESTING: usize = 16;

fn lower_steps(
    value: &Value,
    path: &str,
    problems: &mut Problems,
    count: &mut usize,
    depth: usize,
) -> Vec<Step> {
    let Value::Array(items) = value else {
        problems.add(
            path,
            format!("expected a list of steps, found {}", describe(value)),
        );
        return Vec::new();
    };
    if depth > MAX_NESTING {
        problems.add(
            path,
            format!("steps are nested deeper than {MAX_NESTING} levels"),
        );
        return Vec::new();
    }
    let mut steps = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        *count += 1;
        if *count > MAX_STEPS {
            // Reported once by the caller; stop building a huge model.
            return steps;
        }
        let here = index(path, i);
        if let Some(step) = lower_step(item, &here, problems, count, depth) {
            steps.push(step);
        }
    }
    steps
}

fn lower_step(
    value: &Value,
    path: &str,
    problems: &mut Problems,
    count: &mut usize,
    depth: usize,
) -> Option<Step> {
    let Value::Object(map) = value else {
        problems.add(
            path,
            format!(
                "expected a step (a mapping with `id` and `action`), found {}",
                describe(value)
            ),
        );
        return None;
    };
    let fields = Fields::new(map, path, STEP_FIELDS, problems);
    let id = fields.string("id", problems);
    if !map.contains_key("id") {
        problems.add(
            join(path, "id"),
            "missing field `id`; every step needs a unique id",
        );
    }
    if let Some(id) = &id
        && !is_identifier(id)
    {
        problems.add(join(path, "id"), format!("step id `{id}` must start with a letter or `_`, contain only letters, digits, `_` and `-`, and be at most {MAX_ID_LEN} characters"));
    }
    let _display_name = fields.string("name", problems);
    let action = fields.string("action", problems);
    if !map.contains_key("action") {
        problems.add(
            join(path, "action"),
            "missing field `action`, such as `shell.run` or `http.request`",
        );
    }
    let with = match fields.get("with") {
        None | Some((Value::Null, _)) => Map::new(),
        Some((Value::Object(w), _)) => w.clone(),
        Some((other, p)) => {
            problems.add(
                p,
                format!("expected a mapping of arguments, found {}", describe(other)),
            );
            Map::new()
        }
    };
    let condition = match fields.get("if") {
        None => None,
        // `if: no` would be a non-empty string, which is truthy.
        Some((Value::String(s), p))
            if matches!(s.as_str(), "yes" | "no" | "on" | "off" | "y" | "n") =>
        {
            problems.add(p, format!("expected a condition or true or false, found the string `{s}` (YAML 1.1 booleans are not accepted)"));
            None
        }
        Some((Value::String(s), _)) => Some(s.clone()),
        Some((Value::Bool(b), _)) => Some(b.to_string()),
        Some((other, p)) => {
            problems.add(p, format!("expected a condition such as `${{steps.check.output.exit_code == 0}}`, found {}", describe(other)));
            None
        }
    };
    let timeout = fields.duration("timeout", problems);
    let retry = fields
        .get("retry")
        .and_then(|(v, p)| lower_retry(v, &p, problems));
    let continue_on_error = fields.bool("continue_on_error", problems).unwrap_or(false);
    let save_as = fields.string("save_as", problems);
    if let Some(name) = &save_as {
        check_variable_name(name, &join(path, "save_as"), problems);
    }
    let steps = fields
        .get("steps")
        .map(|(v, p)| lower_steps(v, &p, problems, count, depth + 1))
        .unwrap_or_default();
    let catch = fields
        .get("catch")
        .map(|(v, p)| lower_steps(v, &p, problems, count, depth + 1))
        .unwrap_or_default();
    let finally = fields
        .get("finally")
        .map(|(v, p)| lower_steps(v, &p, problems, count, depth + 1))
        .unwrap_or_default();
    let branches = fields
        .get("branches")
        .map(|(v, p)| lower_branches(v, &p, problems, count, depth + 1))
        .unwrap_or_default();

    // A step with a broken id or action is kept with an empty one, which
    // the validator skips, so that its other fields are still checked.
    Some(Step {
        id: id.filter(|i| is_identifier(i)).unwrap_or_default(),
        path: path.to_string(),
        action: action.unwrap_or_default(),
        with,
        condition,
        timeout,
        retry,
        continue_on_error,
        save_as,
        steps,
        catch,
        finally,
        branches,
    })
}

fn lower_branches(
    value: &Value,
    path: &str,
    problems: &mut Problems,
    count: &mut usize,
    depth: usize,
) -> Vec<Branch> {
    let Value::Object(map) = value else {
        problems.add(
            path,
            format!(
                "expected a mapping of branch names to lists of steps, found {}",
                describe(value)
            ),
        );
        return Vec::new();
    };
    let mut branches = Vec::with_capacity(map.len());
    for (name, steps) in map {
        let here = join(path, name);
        if !is_identifier(name) {
            problems.add(
                &here,
                format!("branch name `{name}` must start with a letter or `_` and contain only letters, digits, `_` and `-`"),
            );
            continue;
        }
        let steps = lower_steps(steps, &here, problems, count, depth);
        if steps.is_empty() {
            problems.add(&here, "a branch needs at least one step");
        }
        branches.push(Branch {
            name: name.clone(),
            path: here,
            steps,
        });
    }
    branches
}

fn lower_retry_on(value: &Value, path: &str, problems: &mut Problems) -> Vec<String> {
    let Value::Array(items) = value else {
        problems.add(
            path,
            format!(
                "expected a list such as `[robot_lost, agent_restarted]`, found {}",
                describe(value)
            ),
        );
        return Vec::new();
    };
    let mut codes = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(code) if RETRY_ON_CODES.contains(&code) => {
                if !codes.iter().any(|c| c == code) {
                    codes.push(code.to_string());
                }
            }
            _ => problems.add(
                index(path, i),
                format!(
                    "a session is queued again only after {}, not {}",
                    RETRY_ON_CODES.join(" or "),
                    describe(item)
                ),
            ),
        }
    }
    codes
}

pub(crate) fn check_variable_name(name: &str, path: &str, problems: &mut Problems) {
    if !is_identifier(name) {
        problems.add(path, format!("variable name `{name}` must start with a letter or `_` and contain only letters, digits, `_` and `-`"));
    } else if RESERVED_ROOTS.contains(&name) {
        problems.add(
            path,
            format!("`{name}` is reserved and cannot be used as a variable name"),
        );
    }
}

fn lower_retry(value: &Value, path: &str, problems: &mut Problems) -> Option<RetryPolicy> {
    let mut policy = RetryPolicy::default();
    match value {
        Value::Number(n) => match n.as_u64() {
            Some(t) if (1..=100).contains(&t) => policy.times = t as u32,
            _ => {
                problems.add(
                    path,
                    format!("retry count must be a whole number from 1 to 100, found {n}"),
                );
                return None;
            }
        },
        Value::Object(map) => {
            let fields = Fields::new(map, path, RETRY_FIELDS, problems);
            match fields.get("times") {
                Some((Value::Number(n), p)) => match n.as_u64() {
                    Some(t) if (1..=100).contains(&t) => policy.times = t as u32,
                    _ => problems.add(
                        p,
                        format!("`times` must be a whole number from 1 to 100, found {n}"),
                    ),
                },
                Some((other, p)) => problems.add(
                    p,
                    format!("expected a number of retries, found {}", describe(other)),
                ),
                None => problems.add(
                    join(path, "times"),
                    "missing field `times`, the number of retries",
                ),
            }
            if let Some(d) = fields.duration("delay", problems) {
                policy.delay = d;
            }
            if let Some(d) = fields.duration("max_delay", problems) {
                policy.max_delay = d;
            }
            match fields.get("factor") {
                Some((Value::Number(n), p)) => match n.as_f64() {
                    Some(f) if (1.0..=10.0).contains(&f) => policy.factor = f as f32,
                    _ => problems.add(p, format!("`factor` must be between 1 and 10, found {n}")),
                },
                Some((other, p)) => {
                    problems.add(p, format!("expected a number, found {}", describe(other)))
                }
                None => {}
            }
        }
        other => {
            problems.add(
                path,
                format!(
                    "expected a retry count or a mapping with `times` and `delay`, found {}",
                    describe(other)
                ),
            );
            return None;
        }
    }
    Some(policy)
}

/// `steps` and every step inside them (a `for_each`'s or `try`'s steps,
/// `catch`, `finally`, `parallel`'s branches), in document order.
pub fn nested(steps: &[Step]) -> Vec<&Step> {
    fn walk<'a>(steps: &'a [Step], out: &mut Vec<&'a Step>) {
        for s in steps {
            out.push(s);
            walk(&s.steps, out);
            walk(&s.catch, out);
            walk(&s.finally, out);
            for b in &s.branches {
                walk(&b.steps, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(steps, &mut out);
    out
}

impl Workflow {
    /// Every step, nested ones included, in document order.
    pub fn all_steps(&self) -> Vec<&Step> {
        let mut out = Vec::new();
        for steps in [&self.steps, &self.on_error, &self.finally] {
            out.extend(nested(steps));
        }
        out
    }

    /// The actions the steps use, the called workflows' too, each once, in
    /// name order; control flow (`set`, `for_each`, `try`, ...), which the
    /// executor runs itself, left out. A hub routes a session only to a
    /// robot that offers them all.
    pub fn actions_used(&self) -> Vec<String> {
        let mut used = std::collections::BTreeSet::new();
        // Each called workflow once, however many paths reach it.
        let mut seen = std::collections::BTreeSet::new();
        let mut pending: Vec<&Workflow> = vec![self];
        while let Some(w) = pending.pop() {
            used.extend(
                w.all_steps()
                    .into_iter()
                    .map(|s| s.action.as_str())
                    .filter(|a| !CONTROL_ACTIONS.contains(a))
                    .map(String::from),
            );
            for (name, called) in &w.called {
                if seen.insert(name.as_str()) {
                    pending.push(called);
                }
            }
        }
        used.into_iter().collect()
    }

    /// Every step id a session of this workflow reports: its own, and its
    /// called workflows' as `CALL.ID` (`runtime/executor.rs`).
    pub fn reported_step_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for step in self.all_steps() {
            ids.push(step.id.clone());
            if step.action == CONTROL_CALL
                && let Some(called) = step
                    .with
                    .get("workflow")
                    .and_then(Value::as_str)
                    .and_then(|name| self.called.get(name))
            {
                ids.extend(
                    called
                        .reported_step_ids()
                        .into_iter()
                        .map(|inner| format!("{}.{inner}", step.id)),
                );
            }
        }
        ids
    }

    pub fn param(&self, name: &str) -> Option<&ParamSpec> {
        self.params.iter().find(|p| p.name == name)
    }
}
