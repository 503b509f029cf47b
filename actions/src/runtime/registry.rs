//! The `Action` trait and the registry actions plug into.
//!
//! A new action is a type that implements [`TypedAction`] (or [`Action`]
//! directly) and is registered by name. The executor and the validator find
//! it through the registry; neither needs to change.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::Digest;

use super::context::ActionContext;

pub type ActionFuture<'a> = Pin<Box<dyn Future<Output = Result<Value, ActionError>> + Send + 'a>>;

/// Why an action failed. `code` is stable and machine-readable
/// (`exit_code`, `http_status`, `timeout`...); `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    pub code: String,
    pub message: String,
}

impl ActionError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ActionError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Stable error codes shared by the executor and the built-in actions.
pub mod codes {
    pub const CANCELLED: &str = "cancelled";
    pub const TIMEOUT: &str = "timeout";
    pub const INVALID_ARGS: &str = "invalid_args";
    pub const TEMPLATE: &str = "template_error";
    pub const FAILED: &str = "failed";
    pub const EXIT_CODE: &str = "exit_code";
    pub const SPAWN: &str = "spawn_failed";
    pub const HTTP: &str = "http_error";
    pub const HTTP_STATUS: &str = "http_status";
    pub const RESPONSE_TOO_LARGE: &str = "response_too_large";
    pub const UNKNOWN_ACTION: &str = "unknown_action";
    /// The workflow's `outputs:` could not be rendered, or are too large.
    pub const OUTPUTS: &str = "outputs_failed";
    /// The workflow's `limits.steps` was reached.
    pub const STEP_LIMIT: &str = "step_limit";
    /// An `approval` step was rejected (or timed out with `on_timeout: reject`).
    pub const REJECTED: &str = "approval_rejected";
    /// A waiting step that nothing could answer (`tasuki run` with no
    /// terminal and no `--approve`/`--reject`/`--event` for it).
    pub const WAIT_UNANSWERED: &str = "wait_unanswered";
    /// A suspended session could not be taken up again: its workflow no
    /// longer has the step it waited at.
    pub const RESUME: &str = "resume_failed";
    /// A session could not suspend at a waiting step: what its later steps
    /// may read is larger than a checkpoint may be.
    pub const CHECKPOINT_TOO_LARGE: &str = "checkpoint_too_large";
}

/// An action, as the executor sees it.
pub trait Action: Send + Sync + 'static {
    /// The JSON Schema of `with`. Validation checks arguments against it
    /// and `tasuki schema` publishes it.
    fn args_schema(&self) -> Value;

    /// Checks that a schema cannot express, such as "either `argv` or
    /// `script`". Returns (path below `with`, message) pairs.
    fn check_args(&self, _args: &Map<String, Value>) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The JSON Schema of the output, when the action declares one.
    fn output_schema(&self) -> Option<Value> {
        None
    }

    /// One line for people, shown by `tasuki schema`.
    fn description(&self) -> Option<String> {
        None
    }

    /// Top-level arguments whose values are secret: masked in the dry-run
    /// plan and in what the action sends back.
    fn secret_args(&self) -> Vec<String> {
        Vec::new()
    }

    /// The pack (name, version) that serves the action; `None` for a
    /// built-in one.
    fn pack(&self) -> Option<(&str, &str)> {
        None
    }

    /// Runs the action on rendered arguments. It must return promptly once
    /// `ctx.cancel` is cancelled, after cleaning up what it started.
    fn run<'a>(&'a self, ctx: &'a ActionContext, args: Value) -> ActionFuture<'a>;
}

/// The convenient way to write an action: typed arguments, checked by serde
/// at run time and described by schemars for validation.
pub trait TypedAction: Send + Sync + 'static {
    type Args: DeserializeOwned + JsonSchema + Send;

    fn check_args(_args: &Map<String, Value>) -> Vec<(String, String)> {
        Vec::new()
    }

    fn run(
        &self,
        ctx: &ActionContext,
        args: Self::Args,
    ) -> impl Future<Output = Result<Value, ActionError>> + Send;
}

impl<T: TypedAction> Action for T {
    fn args_schema(&self) -> Value {
        schema_of::<T::Args>()
    }

    fn check_args(&self, args: &Map<String, Value>) -> Vec<(String, String)> {
        T::check_args(args)
    }

    fn run<'a>(&'a self, ctx: &'a ActionContext, args: Value) -> ActionFuture<'a> {
        Box::pin(async move {
            let args = decode_args::<T::Args>(args)?;
            TypedAction::run(self, ctx, args).await
        })
    }
}

/// Decodes rendered arguments; the error names the argument's path.
pub fn decode_args<A: DeserializeOwned>(args: Value) -> Result<A, ActionError> {
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if path == "." {
            format!("invalid arguments: {inner}")
        } else {
            format!("with.{path}: {inner}")
        };
        ActionError::new(codes::INVALID_ARGS, message)
    })
}

/// A self-contained schema (no `$ref`s), so it can be embedded anywhere.
pub fn schema_of<A: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<A>().to_value();
    if let Value::Object(map) = &mut schema {
        map.remove("$schema");
        map.remove("title");
    }
    schema
}

/// Actions by name. Cheap to clone and share between sessions.
#[derive(Clone, Default)]
pub struct Registry {
    actions: BTreeMap<String, Registered>,
}

#[derive(Clone)]
struct Registered {
    action: Arc<dyn Action>,
    schema: Arc<Value>,
}

/// One action as a robot offers it to a hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub name: String,
    /// The pack's name and version; `None` for a built-in action.
    pub pack: Option<(String, String)>,
    /// SHA-256 of the argument and output schemas, so that a hub can tell
    /// two versions of an action apart.
    pub schema_sha256: String,
}

impl Registry {
    /// An empty registry. Most callers want [`Registry::builtin`].
    pub fn new() -> Self {
        Registry::default()
    }

    pub fn register(&mut self, name: &str, action: impl Action) {
        let schema = Arc::new(action.args_schema());
        self.actions.insert(
            name.to_string(),
            Registered {
                action: Arc::new(action),
                schema,
            },
        );
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Action>> {
        self.actions.get(name).map(|r| &r.action)
    }

    pub fn schema(&self, name: &str) -> Option<&Value> {
        self.actions.get(name).map(|r| r.schema.as_ref())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.actions.keys().map(String::as_str)
    }

    /// Every action, by name, with where it comes from.
    pub fn offers(&self) -> Vec<Offer> {
        self.actions
            .iter()
            .map(|(name, r)| {
                let both =
                    serde_json::json!({"args": *r.schema, "output": r.action.output_schema()});
                let digest = sha2::Sha256::digest(both.to_string().as_bytes());
                Offer {
                    name: name.clone(),
                    pack: r.action.pack().map(|(p, v)| (p.to_string(), v.to_string())),
                    schema_sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
                }
            })
            .collect()
    }
}
