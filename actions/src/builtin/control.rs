//! `log`, `sleep` and `fail`: the control steps that need no access to the
//! executor's scope. (`set`, `for_each` and `try` live in the executor.)

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

use super::args::DurationArg;
use crate::runtime::context::ActionContext;
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{ActionError, TypedAction, codes};

pub struct Log;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogArgs {
    /// What to log. Non-string values are logged as JSON.
    message: Value,
    #[serde(default)]
    level: Level,
}

#[derive(Deserialize, JsonSchema, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Level {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl TypedAction for Log {
    type Args = LogArgs;

    async fn run(&self, ctx: &ActionContext, args: LogArgs) -> Result<Value, ActionError> {
        let mut text = String::new();
        crate::language::template::push_display(&mut text, &args.message);
        let level = match args.level {
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        ctx.log(level, &text);
        Ok(json!({ "message": text }))
    }
}

pub struct Sleep;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepArgs {
    duration: DurationArg,
}

impl TypedAction for Sleep {
    type Args = SleepArgs;

    async fn run(&self, ctx: &ActionContext, args: SleepArgs) -> Result<Value, ActionError> {
        tokio::select! {
            _ = tokio::time::sleep(args.duration.0) => Ok(json!({ "slept_ms": args.duration.0.as_millis() as u64 })),
            _ = ctx.cancel.cancelled() => Err(ActionError::new(codes::CANCELLED, "sleep was interrupted")),
        }
    }
}

pub struct Fail;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailArgs {
    message: String,
    /// A machine-readable code for the failure; `failed` by default.
    code: Option<String>,
}

impl TypedAction for Fail {
    type Args = FailArgs;

    async fn run(&self, _ctx: &ActionContext, args: FailArgs) -> Result<Value, ActionError> {
        Err(ActionError::new(
            args.code.unwrap_or_else(|| codes::FAILED.into()),
            args.message,
        ))
    }
}
