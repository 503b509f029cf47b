//! `tasuki packs check`: a pack started, its self-test requests run and
//! the pack shut down, exactly as a session would, so that its author
//! knows it works before a robot does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::manifest::Manifest;
use super::process::PackProcess;
use crate::runtime::context::{ActionContext, ExecOptions, SessionShared};
use crate::runtime::event::EventSink;
use crate::runtime::mask::Masker;
use crate::runtime::registry::ActionError;

/// How long one self-test request may take before it is cancelled.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// What a check found, in the order it happened.
#[derive(Debug)]
pub struct CheckReport {
    /// How long the pack took to say `ready`, or why it did not.
    pub start: Result<Duration, ActionError>,
    pub requests: Vec<RequestOutcome>,
    /// Whether the pack exited by itself after `shutdown`.
    pub clean_shutdown: bool,
}

#[derive(Debug)]
pub struct RequestOutcome {
    pub action: String,
    pub took: Duration,
    pub result: Result<Value, ActionError>,
}

impl CheckReport {
    pub fn passed(&self) -> bool {
        self.start.is_ok() && self.clean_shutdown && self.requests.iter().all(|r| r.result.is_ok())
    }
}

/// Starts `manifest`'s pack, runs its `self_test`, and shuts it down. Log
/// lines go to `sink`, as they would in a session.
pub async fn check(
    manifest: Arc<Manifest>,
    options: ExecOptions,
    sink: Arc<dyn EventSink>,
) -> CheckReport {
    let shared = Arc::new(SessionShared::new(
        sink,
        Masker::default(),
        options,
        CancellationToken::new(),
    ));
    let context = |step_id: String| ActionContext {
        step_id,
        attempt: 1,
        cancel: CancellationToken::new(),
        shared: shared.clone(),
    };
    let started = Instant::now();
    let mut process = match PackProcess::start(manifest.clone(), &context("start".into())).await {
        Ok(p) => p,
        Err(e) => {
            return CheckReport {
                start: Err(e),
                requests: Vec::new(),
                clean_shutdown: false,
            };
        }
    };
    let start = Ok(started.elapsed());
    let mut requests = Vec::new();
    for (i, test) in manifest.self_test.iter().enumerate() {
        let ctx = context(format!("self_test_{}", i + 1));
        let began = Instant::now();
        // A request that never ends is cancelled, as a step's timeout would.
        let timer = {
            let cancel = ctx.cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REQUEST_LIMIT).await;
                cancel.cancel();
            })
        };
        let result = process
            .call(&ctx, &test.action, &Value::Object(test.with.clone()))
            .await;
        timer.abort();
        requests.push(RequestOutcome {
            action: format!("{}.{}", manifest.name, test.action),
            took: began.elapsed(),
            result,
        });
        if process.ended {
            break;
        }
    }
    let clean_shutdown = !process.ended && process.shutdown(true).await;
    CheckReport {
        start,
        requests,
        clean_shutdown,
    }
}
