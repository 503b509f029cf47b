//! A pack's action as the executor sees it, and the session's running
//! packs, a session resource like the browser: started by the first step
//! that needs one, ended with the session.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::manifest::Manifest;
use super::process::PackProcess;
use crate::runtime::context::{ActionContext, SessionResource};
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{Action, ActionError, ActionFuture};

pub(crate) struct PackAction {
    pub manifest: Arc<Manifest>,
    pub action: String,
}

impl PackAction {
    fn spec(&self) -> Option<&super::manifest::ActionSpec> {
        self.manifest.actions.get(&self.action)
    }
}

impl Action for PackAction {
    fn args_schema(&self) -> Value {
        self.spec()
            .map(|s| s.args.clone())
            .unwrap_or(Value::Bool(true))
    }

    fn output_schema(&self) -> Option<Value> {
        self.spec().and_then(|s| s.output.clone())
    }

    fn description(&self) -> Option<String> {
        self.spec().and_then(|s| s.description.clone())
    }

    fn secret_args(&self) -> Vec<String> {
        self.spec().map(|s| s.secrets.clone()).unwrap_or_default()
    }

    fn pack(&self) -> Option<(&str, &str)> {
        Some((&self.manifest.name, &self.manifest.version))
    }

    fn run<'a>(&'a self, ctx: &'a ActionContext, args: Value) -> ActionFuture<'a> {
        Box::pin(async move {
            let mut resources = ctx.resources().await;
            if resources.get_mut::<RunningPacks>().is_none() {
                resources.insert(RunningPacks::default());
            }
            let Some(running) = resources.get_mut::<RunningPacks>() else {
                return Err(ActionError::new(
                    super::process::error_codes::START_FAILED,
                    "the session's packs could not be kept",
                ));
            };
            running.call(ctx, &self.manifest, &self.action, &args).await
        })
    }
}

/// The packs a session has started, by name.
#[derive(Default)]
pub(crate) struct RunningPacks {
    processes: BTreeMap<String, PackProcess>,
    /// Why a pack's last process was ended, said when it starts again.
    ended: BTreeMap<String, String>,
}

impl RunningPacks {
    async fn call(
        &mut self,
        ctx: &ActionContext,
        manifest: &Arc<Manifest>,
        action: &str,
        args: &Value,
    ) -> Result<Value, ActionError> {
        let name = &manifest.name;
        if let Some(process) = self.processes.get_mut(name)
            && process.in_flight.is_some()
        {
            // A step gave up on its request without an answer (its future
            // was dropped): what the pack holds can no longer be trusted.
            process.end().await;
            self.processes.remove(name);
            self.ended
                .insert(name.clone(), "a step stopped waiting for its answer".into());
        }
        if !self.processes.contains_key(name) {
            let started = Instant::now();
            let process = PackProcess::start(manifest.clone(), ctx).await?;
            let again = match self.ended.remove(name) {
                Some(why) => {
                    format!(" again (the previous process was ended: {why}; what it held is lost)")
                }
                None => String::new(),
            };
            ctx.log(
                LogLevel::Debug,
                &format!(
                    "started pack `{name}` {}{again} in {} ms",
                    manifest.version,
                    started.elapsed().as_millis()
                ),
            );
            self.processes.insert(name.clone(), process);
        }
        let Some(process) = self.processes.get_mut(name) else {
            return Err(ActionError::new(
                super::process::error_codes::START_FAILED,
                format!("pack `{name}` was not kept"),
            ));
        };
        let result = process.call(ctx, action, args).await;
        if process.ended {
            self.processes.remove(name);
            let why = match &result {
                Err(e) => e.code.clone(),
                Ok(_) => "it was ended".into(),
            };
            self.ended.insert(name.clone(), why);
        }
        result
    }
}

impl SessionResource for RunningPacks {
    fn shutdown(
        self: Box<Self>,
        graceful: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let endings = self
                .processes
                .into_values()
                .map(|process| process.shutdown(graceful));
            futures_util::future::join_all(endings).await;
        })
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
