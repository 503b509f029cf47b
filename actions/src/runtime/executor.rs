//! Runs a workflow's steps in order, honoring `if`, `timeout`, `retry`,
//! `continue_on_error` and `save_as`, and reports everything as events.
//!
//! Control constructs (`set`, `for_each`, `try`) are handled here because
//! they shape the flow and the variable scope. Every other action is looked
//! up in the registry, so adding one never touches this file.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use indexmap::IndexMap;
use jiff::Timestamp;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

pub use super::context::ExecOptions;
use super::context::{ActionContext, SessionShared};
use super::event::{Event, EventSink, LogLevel};
use super::mask::Masker;
use super::registry::{ActionError, Registry, codes};
use super::report::{
    ErrorInfo, SessionReport, SessionStatus, StepRecord, StepStatus, millis_between,
};
use super::wait::{
    self, Checkpoint, NoWaiter, Resume, WaitAnswer, WaitKind, WaitOutcome, WaitRequest, Waiter,
};
use crate::language::duration::format_duration;
use crate::language::model::{
    Branch, CONTROL_CALL, CONTROL_FOR_EACH, CONTROL_PARALLEL, CONTROL_SET, CONTROL_TRY, Step,
    Workflow, nested, wait_kind,
};
use crate::language::params::BoundParams;
use crate::language::template::{PathExpr, Scope, Segment, Template, truthy};

/// How large a session's rendered `outputs:` may be, as JSON: they travel
/// in the final report, whose hub refuses more (the robot protocol's
/// `MAX_OUTPUTS_BYTES`, which this crate does not depend on).
const MAX_OUTPUTS_BYTES: usize = 64 * 1024;

/// How long `on_error` may run; it must not keep a failed session alive.
const ON_ERROR_LIMIT: Duration = Duration::from_secs(300);

/// Extra time a cancelled action gets, beyond the process grace period, to
/// return before the executor stops waiting for it.
const CANCEL_SLACK: Duration = Duration::from_secs(2);

pub struct Executor {
    registry: Registry,
    options: ExecOptions,
}

impl Executor {
    pub fn new(registry: Registry, options: ExecOptions) -> Self {
        Executor { registry, options }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Runs one session to its end and returns its report (which is also
    /// sent as the last event). Cancelling `cancel` stops the session at the
    /// running step, interrupting whatever it waits on. A waiting step
    /// fails: nothing here answers it (see [`Executor::run_with`]).
    pub async fn run(
        &self,
        workflow: &Workflow,
        params: &BoundParams,
        sink: Arc<dyn EventSink>,
        cancel: CancellationToken,
    ) -> SessionReport {
        self.run_with(workflow, params, sink, cancel, Start::default())
            .await
    }

    /// [`Executor::run`], with waiting steps answered by `start.waiter`,
    /// and, for a session taken up again after its wait, from
    /// `start.resume`. A session whose waiter suspended it ends `waiting`,
    /// its report carrying the checkpoint to resume it from; its `on_error`
    /// and `finally` wait for the run that ends it.
    pub async fn run_with(
        &self,
        workflow: &Workflow,
        params: &BoundParams,
        sink: Arc<dyn EventSink>,
        cancel: CancellationToken,
        start: Start,
    ) -> SessionReport {
        let Start { waiter, resume } = start;
        let started_at = resume
            .as_ref()
            .map_or_else(Timestamp::now, |r| r.checkpoint.started_at);
        let masker = match &resume {
            None => Masker::new(&params.secret_values),
            Some(r) => Masker::new(
                params
                    .secret_values
                    .iter()
                    .chain(r.checkpoint.secrets.iter()),
            ),
        };
        // A session cancelled while it waited is taken up again only to end
        // it, so that its `finally` runs.
        if matches!(
            resume.as_ref().map(|r| &r.outcome),
            Some(WaitOutcome::Cancelled { .. })
        ) {
            cancel.cancel();
        }
        let mut options = self.options.clone();
        if let Some(policy) = workflow.browser.unexpected_dialog {
            options.browser.unexpected_dialog = policy;
        }
        if let Some(timeout) = workflow.browser.element_timeout {
            options.browser.element_timeout = timeout;
        }
        let shared = Arc::new(SessionShared::new(
            sink.clone(),
            masker,
            options,
            cancel.clone(),
        ));
        sink.emit(Event::SessionStarted {
            workflow: workflow.name.clone(),
            started_at,
        });

        let session_token = cancel.child_token();
        let timed_out = Arc::new(TimeLimit::new(
            "the workflow's timeout ran out during this step".into(),
        ));
        let timer = workflow
            .timeout
            .map(|limit| timed_out.start(limit, session_token.clone()));

        let mut records = IndexMap::new();
        // Every step is readable from the start, as pending with a null
        // output, so `on_error` can look at a step that never ran.
        let mut step_states = Map::new();
        for step in workflow.all_steps() {
            records.insert(step.id.clone(), StepRecord::pending());
            step_states.insert(
                step.id.clone(),
                json!({"status": StepStatus::Pending.as_str(), "output": null, "error": null}),
            );
        }
        // A resumed session reads what its earlier run recorded.
        let (mut vars, mut steps_run) = (Map::new(), 0);
        if let Some(r) = &resume {
            let c = &r.checkpoint;
            // Its own steps' records, and those of the workflows its calls
            // ran (`CALL.ID`), which only a run makes.
            for (id, record) in &c.records {
                records.insert(id.clone(), record.clone());
            }
            if let Value::Object(states) = &c.step_states {
                for (id, state) in states {
                    if let Some(mine) = step_states.get_mut(id) {
                        *mine = state.clone();
                    }
                }
            }
            vars = c.vars.clone();
            steps_run = c.steps_run;
            // What the earlier run recorded, told again: a consumer that
            // starts each session with every step pending (a robot's
            // sink) shows it from the start.
            for (id, record) in &c.records {
                if record.status != StepStatus::Pending {
                    sink.emit(Event::StepFinished {
                        step_id: id.clone(),
                        record: record.clone(),
                    });
                }
            }
        }
        let env = self
            .options
            .env_allow
            .iter()
            .filter_map(|name| {
                std::env::var(name)
                    .ok()
                    .map(|v| (name.clone(), Value::String(v)))
            })
            .collect();

        // `file` credentials' private files, removed when this ends.
        let mut credentials = params.credentials.clone();
        let _credential_files = match crate::language::credentials::write_files(
            &workflow.credentials,
            &mut credentials,
            shared.options.private_dir.as_deref(),
        ) {
            Ok(files) => Some(files),
            Err(e) => {
                shared.log(
                    LogLevel::Error,
                    None,
                    &format!(
                        "cannot write the private files of the workflow's file credentials \
                         (their `path` is not set): {e}"
                    ),
                );
                None
            }
        };
        let mut session = Session {
            registry: &self.registry,
            shared: shared.clone(),
            params: Value::Object(params.values.clone()),
            credentials: Value::Object(credentials),
            env: Value::Object(env),
            vars,
            step_states: Value::Object(step_states),
            records,
            error_binding: None,
            cancel: session_token.clone(),
            timed_out: timed_out.clone(),
            finally_timeout: workflow.finally_timeout,
            steps_run: Arc::new(StepCount {
                run: AtomicU64::new(steps_run),
                limit: workflow.limits.steps,
            }),
            waiter,
            suspended: None,
            prefix: String::new(),
            called: workflow.called.clone(),
        };

        let outcome = match &resume {
            None => session.run_steps(&workflow.steps).await,
            Some(r) => session.resume(&workflow.steps, r).await,
        };
        if let Some(timer) = timer {
            timer.abort();
        }
        let outcome = match session.suspended.take() {
            None => outcome,
            Some(wait) => {
                let checkpoint = session.checkpoint(wait, started_at, params);
                let size = serde_json::to_vec(&checkpoint).map_or(usize::MAX, |v| v.len());
                if size <= wait::MAX_CHECKPOINT_BYTES {
                    return session.suspend(checkpoint, started_at, params).await;
                }
                // It cannot wait: the waiting step fails, and the session
                // ends as after any failure.
                let id = checkpoint.wait.step_id.clone();
                let f = failure(
                    codes::CHECKPOINT_TOO_LARGE,
                    format!(
                        "the session cannot wait here: what its later steps may read (variables \
                         and step outputs) is {size} bytes as JSON, more than a checkpoint's {} \
                         MiB; keep large outputs in files or artifacts",
                        wait::MAX_CHECKPOINT_BYTES / (1024 * 1024)
                    ),
                    &id,
                );
                if let Some(step) = workflow.steps.iter().find(|s| s.id == id) {
                    let started = session
                        .records
                        .get(&id)
                        .and_then(|r| r.started_at)
                        .unwrap_or(started_at);
                    session.finish(
                        step,
                        started,
                        Instant::now(),
                        StepStatus::Error,
                        Value::Null,
                        Some(f.clone()),
                    );
                }
                Err(f)
            }
        };

        // A timeout is a failure, not a cancel: the step it interrupted is
        // recorded as such, and on_error runs.
        let outcome = match outcome {
            Err(failure) if timed_out.hit() => {
                let limit = workflow.timeout.map(format_duration).unwrap_or_default();
                let info = ErrorInfo {
                    code: codes::TIMEOUT.into(),
                    message: format!("the workflow did not finish within its timeout of {limit}"),
                    step_id: failure.step_id,
                };
                Err(info)
            }
            other => other,
        };
        // Outputs are the result of a session that succeeded: one that
        // cannot be rendered fails it.
        let mut outputs = None;
        let outcome = match outcome {
            Ok(()) if !workflow.outputs.is_empty() => {
                match session.outputs(&workflow.outputs, workflow.limits.output_bytes) {
                    Ok(rendered) => {
                        outputs = Some(rendered);
                        Ok(())
                    }
                    Err(message) => Err(ErrorInfo {
                        code: codes::OUTPUTS.into(),
                        message,
                        step_id: None,
                    }),
                }
            }
            other => other,
        };
        let (status, error) = match outcome {
            Ok(()) => (SessionStatus::Success, None),
            Err(failure) if cancel.is_cancelled() => (SessionStatus::Cancelled, Some(failure)),
            Err(failure) => {
                if !workflow.on_error.is_empty() {
                    shared.log(
                        LogLevel::Warn,
                        None,
                        "the workflow failed; running on_error",
                    );
                    session.error_binding = Some(error_value(&failure));
                    // A fresh token: the session token is cancelled after a
                    // timeout, and the handler deserves its chance to run,
                    // within a bound of its own.
                    let handler_token = cancel.child_token();
                    session.cancel = handler_token.clone();
                    // A limit of its own too: a workflow it calls must not
                    // count the session's timeout, which ran out, as its own.
                    session.timed_out = Arc::new(TimeLimit::handler());
                    // The handler runs even after `limits.steps` was reached.
                    session.steps_run = StepCount::unbounded();
                    let handler = session.run_steps(&workflow.on_error);
                    let result = tokio::select! {
                        r = handler => Some(r),
                        _ = tokio::time::sleep(ON_ERROR_LIMIT) => None,
                    };
                    match result {
                        Some(Ok(())) => {}
                        Some(Err(handler_failure)) => shared.log(
                            LogLevel::Error,
                            handler_failure.step_id.as_deref(),
                            &format!("on_error failed too: {}", handler_failure.message),
                        ),
                        None => {
                            handler_token.cancel();
                            shared.log(
                                LogLevel::Error,
                                None,
                                &format!(
                                    "on_error did not finish within {}",
                                    format_duration(ON_ERROR_LIMIT)
                                ),
                            );
                        }
                    }
                }
                if cancel.is_cancelled() {
                    (SessionStatus::Cancelled, Some(failure))
                } else {
                    (SessionStatus::Error, Some(failure))
                }
            }
        };

        // Cleanup, whatever the end: the browser is still open for it. A
        // failing `finally` fails a session that had succeeded; after a
        // failure or a cancel it is logged, and the first failure stands.
        let (status, error) = if workflow.finally.is_empty() {
            (status, error)
        } else {
            shared.log(LogLevel::Info, None, "running the finally steps");
            match session.run_finally(&workflow.finally).await {
                Ok(()) => (status, error),
                Err(f) if status == SessionStatus::Success => {
                    outputs = None;
                    (SessionStatus::Error, Some(f))
                }
                Err(f) => {
                    shared.log(
                        LogLevel::Error,
                        f.step_id.as_deref(),
                        &format!("a finally step failed too: {}", f.message),
                    );
                    (status, error)
                }
            }
        };

        // Resources (the browser) end with the session, whatever its end.
        let resources = shared.resources.lock().await.drain();
        let graceful = status != SessionStatus::Cancelled;
        for resource in resources {
            resource.shutdown(graceful).await;
        }

        let leftover = if status == SessionStatus::Cancelled {
            StepStatus::Cancelled
        } else {
            StepStatus::Skipped
        };
        let mut steps = std::mem::take(&mut session.records);
        for record in steps.values_mut() {
            if record.status == StepStatus::Pending || record.status == StepStatus::Running {
                record.status = leftover;
            }
        }
        let mut error = error;
        if let Some(e) = &mut error {
            shared.masker.mask_in_place(&mut e.message);
            shared.masker.mask_in_place(&mut e.code);
        }
        let ended_at = Timestamp::now();
        let report = SessionReport {
            status,
            started_at,
            ended_at,
            duration_ms: millis_between(started_at, ended_at),
            params: params.masked(),
            steps,
            error,
            outputs,
            checkpoint: None,
        };
        sink.emit(Event::SessionFinished(Box::new(report.clone())));
        report
    }
}

/// How a session starts: who answers its waiting steps, and, when it is
/// taken up again after one, where it goes on from.
pub struct Start {
    pub waiter: Arc<dyn Waiter>,
    pub resume: Option<Resume>,
}

impl Default for Start {
    fn default() -> Self {
        Start {
            waiter: Arc::new(NoWaiter),
            resume: None,
        }
    }
}

/// What a waiting step comes to, once its wait has ended.
fn wait_result(step: &Step, request: &WaitRequest, outcome: WaitOutcome) -> Result<Value, Failure> {
    let how_long = format_duration(request.timeout());
    match (request.kind, outcome) {
        (_, WaitOutcome::Cancelled { .. }) => Err(failure(
            codes::CANCELLED,
            "the session was cancelled while it waited",
            &step.id,
        )),
        (WaitKind::Approval, WaitOutcome::Approved { by, at, comment }) => {
            Ok(json!({"decision": "approved", "by": by, "at": at, "comment": comment}))
        }
        (WaitKind::Approval, WaitOutcome::Rejected { by, at, comment }) => {
            let why = match (by.as_str(), comment) {
                ("timeout", _) => {
                    format!("nobody decided within {how_long}, and its on_timeout is reject")
                }
                (_, Some(c)) => format!("rejected by {by} at {at}: {c}"),
                (_, None) => format!("rejected by {by} at {at}"),
            };
            Err(failure(codes::REJECTED, why, &step.id))
        }
        (WaitKind::Event, WaitOutcome::Event { payload, at }) => {
            Ok(json!({"event": request.event, "payload": payload, "at": at}))
        }
        (WaitKind::Event, WaitOutcome::TimedOut { .. }) => Err(failure(
            codes::TIMEOUT,
            format!("{} did not come within {how_long}", wait::describe(request)),
            &step.id,
        )),
        (_, other) => Err(failure(
            codes::RESUME,
            format!("{} cannot end in {other:?}", wait::describe(request)),
            &step.id,
        )),
    }
}

fn error_value(e: &ErrorInfo) -> Value {
    json!({"code": e.code, "message": e.message, "step_id": e.step_id})
}

type Failure = ErrorInfo;
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The live state of one session.
struct Session<'e> {
    registry: &'e Registry,
    shared: Arc<SessionShared>,
    params: Value,
    /// `{name: {field: text}}`, every text also in the masker.
    credentials: Value,
    env: Value,
    vars: Map<String, Value>,
    /// `{id: {status, output, error}}` as templates read it, unmasked.
    step_states: Value,
    records: IndexMap<String, StepRecord>,
    error_binding: Option<Value>,
    cancel: CancellationToken,
    /// Set when a time limit cancelled `cancel`: the workflow's timeout,
    /// or a `finally` block's.
    timed_out: Arc<TimeLimit>,
    /// How long each `finally` block may run.
    finally_timeout: Duration,
    /// Steps started so far, branches' too, against `limits.steps`.
    steps_run: Arc<StepCount>,
    /// Who answers waiting steps.
    waiter: Arc<dyn Waiter>,
    /// Set when a waiting step suspended the session: its steps stop at
    /// once, and the session ends `waiting`.
    suspended: Option<WaitRequest>,
    /// What the ids of this session's steps are reported under: empty for
    /// the session's own workflow, `CALL.` for a workflow a `call` step
    /// runs (`CALL.INNER.` deeper). Templates read the ids without it.
    prefix: String,
    /// The workflows this one's `call` steps run, by name.
    called: std::collections::BTreeMap<String, Arc<Workflow>>,
}

struct StepCount {
    run: AtomicU64,
    limit: Option<u64>,
}

impl StepCount {
    fn unbounded() -> Arc<StepCount> {
        Arc::new(StepCount {
            run: AtomicU64::new(0),
            limit: None,
        })
    }
}

/// A time limit that cancels a token when it runs out, and remembers that
/// it did: a step it interrupted failed with `timeout`, it was not
/// cancelled by anyone.
struct TimeLimit {
    hit: AtomicBool,
    /// What a step it interrupted says.
    message: String,
    /// The limit this one runs inside (a called workflow's, inside its
    /// caller's): either running out is a timeout here.
    outer: Option<Arc<TimeLimit>>,
}

impl TimeLimit {
    fn new(message: String) -> TimeLimit {
        TimeLimit {
            hit: AtomicBool::new(false),
            message,
            outer: None,
        }
    }

    /// An error handler's: bounded by `ON_ERROR_LIMIT` from outside, never
    /// hit itself, and inside no other limit.
    fn handler() -> TimeLimit {
        TimeLimit::new(format!(
            "on_error's limit of {} ran out during this step",
            format_duration(ON_ERROR_LIMIT)
        ))
    }

    /// A limit inside `outer`.
    fn within(message: String, outer: Arc<TimeLimit>) -> TimeLimit {
        TimeLimit {
            outer: Some(outer),
            ..TimeLimit::new(message)
        }
    }

    fn hit(&self) -> bool {
        self.hit.load(Ordering::SeqCst) || self.outer.as_ref().is_some_and(|o| o.hit())
    }

    /// What a step it interrupted says: the limit that ran out.
    fn message(&self) -> &str {
        match &self.outer {
            Some(outer) if !self.hit.load(Ordering::SeqCst) && outer.hit() => outer.message(),
            _ => &self.message,
        }
    }

    /// Cancels `token` after `limit`, unless the returned task is aborted.
    fn start(
        self: &Arc<Self>,
        limit: Duration,
        token: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            this.hit.store(true, Ordering::SeqCst);
            token.cancel();
        })
    }
}

impl Scope for Session<'_> {
    fn root(&self, path: &PathExpr) -> Result<Cow<'_, Value>, String> {
        match path.root.as_str() {
            "params" => Ok(Cow::Borrowed(&self.params)),
            crate::language::credentials::ROOT => Ok(Cow::Borrowed(&self.credentials)),
            "steps" => match path.segments.first() {
                Some(Segment::Key(id)) if self.step_states.get(id).is_none() => {
                    Err(format!("there is no step `{id}`"))
                }
                _ => Ok(Cow::Borrowed(&self.step_states)),
            },
            "env" => match path.segments.first() {
                Some(Segment::Key(name)) if self.env.get(name).is_none() => {
                    if self.shared.options.env_allow.iter().any(|a| a == name) {
                        Err(format!("environment variable `{name}` is not set"))
                    } else {
                        Err(format!(
                            "environment variable `{name}` is not in the allow-list"
                        ))
                    }
                }
                _ => Ok(Cow::Borrowed(&self.env)),
            },
            "error" => self
                .error_binding
                .as_ref()
                .map(Cow::Borrowed)
                .ok_or_else(|| "`error` is only bound inside `on_error` and `catch`".to_string()),
            name => self
                .vars
                .get(name)
                .map(Cow::Borrowed)
                .ok_or_else(|| format!("variable `{name}` is not defined")),
        }
    }
}

impl<'e> Session<'e> {
    fn run_steps<'a>(&'a mut self, steps: &'a [Step]) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            for step in steps {
                self.run_step(step).await?;
            }
            Ok(())
        })
    }

    async fn run_step(&mut self, step: &Step) -> Result<(), Failure> {
        if self.cancel.is_cancelled() {
            return Err(failure(
                codes::CANCELLED,
                "the session was cancelled",
                &step.id,
            ));
        }
        let started_at = Timestamp::now();
        let clock = Instant::now();
        let reported = self.reported_id(&step.id);
        if let Some(record) = self.records.get_mut(&reported) {
            record.status = StepStatus::Running;
            record.started_at = Some(started_at);
        }
        self.shared.sink.emit(Event::StepStarted {
            step_id: reported,
            action: step.action.clone(),
            attempt: 1,
            started_at,
        });
        let run = self.steps_run.run.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(limit) = self.steps_run.limit.filter(|l| run > *l) {
            let f = failure(
                codes::STEP_LIMIT,
                format!("the session has run {limit} steps, its workflow's limits.steps"),
                &step.id,
            );
            return self.fail(step, started_at, clock, f);
        }

        if let Some(condition) = &step.condition {
            match self.render_text(condition) {
                Ok(value) if !truthy(&value) => {
                    // A skipped step still binds its save_as, to null, so
                    // later steps see null rather than "not defined".
                    if let Some(name) = &step.save_as {
                        self.vars.insert(name.clone(), Value::Null);
                    }
                    self.finish(
                        step,
                        started_at,
                        clock,
                        StepStatus::Skipped,
                        Value::Null,
                        None,
                    );
                    return Ok(());
                }
                Ok(_) => {}
                Err(message) => {
                    let f = failure(codes::TEMPLATE, format!("if: {message}"), &step.id);
                    return self.fail(step, started_at, clock, f);
                }
            }
        }

        let result = match step.action.as_str() {
            CONTROL_SET => self.set(step),
            CONTROL_FOR_EACH => self.for_each(step).await,
            CONTROL_TRY => self.try_catch(step).await,
            CONTROL_PARALLEL => self.parallel(step).await,
            CONTROL_CALL => self.call(step).await,
            action if let Some(kind) = wait_kind(action) => self.wait(step, kind).await,
            _ => self.invoke(step).await,
        };
        if self.suspended.is_some() {
            // Not a failure: the step is still running, somewhere else, and
            // ends when the session is resumed.
            return result.map(|_| ());
        }
        match result {
            Ok(output) => {
                if let Some(name) = &step.save_as {
                    self.vars.insert(name.clone(), output.clone());
                }
                self.finish(step, started_at, clock, StepStatus::Success, output, None);
                Ok(())
            }
            Err(f) => self.fail(step, started_at, clock, f),
        }
    }

    fn fail(
        &mut self,
        step: &Step,
        started_at: Timestamp,
        clock: Instant,
        f: Failure,
    ) -> Result<(), Failure> {
        // The workflow timeout cancels through the session token; the step
        // it interrupted failed, it was not cancelled by anyone.
        let f = if f.code == codes::CANCELLED && self.timed_out.hit() {
            failure(
                codes::TIMEOUT,
                self.timed_out.message().to_string(),
                &step.id,
            )
        } else {
            f
        };
        let cancelled = f.code == codes::CANCELLED && self.cancel.is_cancelled();
        if let Some(name) = &step.save_as {
            self.vars.insert(name.clone(), Value::Null);
        }
        let status = if cancelled {
            StepStatus::Cancelled
        } else {
            StepStatus::Error
        };
        self.finish(
            step,
            started_at,
            clock,
            status,
            Value::Null,
            Some(f.clone()),
        );
        if !cancelled && step.continue_on_error {
            self.log(
                LogLevel::Warn,
                Some(&step.id),
                &format!(
                    "step failed and continue_on_error is set, so the workflow goes on: {}",
                    f.message
                ),
            );
            return Ok(());
        }
        Err(f)
    }

    fn finish(
        &mut self,
        step: &Step,
        started_at: Timestamp,
        clock: Instant,
        status: StepStatus,
        output: Value,
        error: Option<ErrorInfo>,
    ) {
        let mut state = Map::with_capacity(3);
        state.insert("status".into(), Value::String(status.as_str().into()));
        state.insert("output".into(), output.clone());
        state.insert(
            "error".into(),
            error.as_ref().map(error_value).unwrap_or(Value::Null),
        );
        if let Value::Object(states) = &mut self.step_states {
            states.insert(step.id.clone(), Value::Object(state));
        }

        let mut output = output;
        let mut error = error;
        let masker = &self.shared.masker;
        masker.mask_value(&mut output);
        if let Some(e) = &mut error {
            masker.mask_in_place(&mut e.message);
            masker.mask_in_place(&mut e.code);
            e.step_id = e.step_id.as_deref().map(|id| self.reported_id(id));
        }
        let record = StepRecord {
            status,
            started_at: Some(started_at),
            ended_at: Some(Timestamp::now()),
            duration_ms: Some(clock.elapsed().as_millis() as u64),
            output,
            error,
        };
        let reported = self.reported_id(&step.id);
        self.records.insert(reported.clone(), record.clone());
        self.shared.sink.emit(Event::StepFinished {
            step_id: reported,
            record,
        });
    }

    fn set(&mut self, step: &Step) -> Result<Value, Failure> {
        let rendered = self
            .render_map(&step.with)
            .map_err(|m| failure(codes::TEMPLATE, m, &step.id))?;
        for (k, v) in &rendered {
            self.vars.insert(k.clone(), v.clone());
        }
        Ok(Value::Object(rendered))
    }

    async fn for_each(&mut self, step: &Step) -> Result<Value, Failure> {
        let items = match step.with.get("items") {
            Some(v) => self
                .render(v)
                .map_err(|m| failure(codes::TEMPLATE, format!("with.items: {m}"), &step.id))?,
            None => Value::Null,
        };
        let Value::Array(items) = items else {
            return Err(failure(
                codes::INVALID_ARGS,
                format!(
                    "with.items: expected a list, found {}",
                    crate::language::template::describe(&items)
                ),
                &step.id,
            ));
        };
        let name_of = |key: &str, default: &str| {
            step.with
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string()
        };
        let item_name = name_of("as", "item");
        let index_name = name_of("index_as", "index");
        let saved_item = self.vars.remove(&item_name);
        let saved_index = self.vars.remove(&index_name);

        let mut outputs = Vec::with_capacity(items.len());
        let mut result = Ok(());
        for (i, item) in items.into_iter().enumerate() {
            self.vars.insert(item_name.clone(), item);
            self.vars.insert(index_name.clone(), Value::from(i));
            if let Err(f) = self.run_steps(&step.steps).await {
                result = Err(f);
                break;
            }
            let iteration: Map<String, Value> = step
                .steps
                .iter()
                .map(|s| {
                    let out = self
                        .step_states
                        .get(&s.id)
                        .and_then(|st| st.get("output"))
                        .cloned()
                        .unwrap_or(Value::Null);
                    (s.id.clone(), out)
                })
                .collect();
            outputs.push(Value::Object(iteration));
        }
        self.vars.remove(&item_name);
        self.vars.remove(&index_name);
        if let Some(v) = saved_item {
            self.vars.insert(item_name, v);
        }
        if let Some(v) = saved_index {
            self.vars.insert(index_name, v);
        }
        result.map(|()| Value::Array(outputs))
    }

    /// Runs the branches of a `parallel` step at the same time (at most
    /// `max_parallel` at once), each in a fork of the session: what ran
    /// before is readable, variables set inside stay inside, and the
    /// branch's step records and states come back once all have ended.
    /// Branches that use the browser, the session's one window, run one
    /// after another. A failing branch cancels the others unless
    /// `on_failure: finish_siblings`; the step then fails with the first
    /// failure that was not such a cancel.
    async fn parallel(&mut self, step: &Step) -> Result<Value, Failure> {
        let args = self
            .render_map(&step.with)
            .map_err(|m| failure(codes::TEMPLATE, m, &step.id))?;
        let max = match args.get("max_parallel") {
            None => step.branches.len(),
            Some(v) => match v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .filter(|n| *n >= 1)
            {
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => {
                    return Err(failure(
                        codes::INVALID_ARGS,
                        format!("with.max_parallel: expected a whole number from 1, found {v}"),
                        &step.id,
                    ));
                }
            },
        };
        let finish_siblings =
            args.get("on_failure").and_then(Value::as_str) == Some("finish_siblings");
        let siblings = self.cancel.child_token();
        let slots = tokio::sync::Semaphore::new(max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS));
        let browser = tokio::sync::Mutex::new(());
        let mut forks: Vec<Session<'e>> = step
            .branches
            .iter()
            .map(|b| self.fork(b, siblings.child_token()))
            .collect();
        let called = &self.called;
        let runs = forks.iter_mut().zip(&step.branches).map(|(fork, branch)| {
            let (slots, browser, siblings) = (&slots, &browser, &siblings);
            async move {
                // Never closed: a permit always comes.
                let _slot = slots.acquire().await;
                let _browser = if uses_browser(&branch.steps, called) {
                    Some(browser.lock().await)
                } else {
                    None
                };
                let result = fork.run_steps(&branch.steps).await;
                if result.is_err() && !finish_siblings {
                    siblings.cancel();
                }
                result
            }
        });
        let results = futures_util::future::join_all(runs).await;
        let mut statuses = Map::new();
        let mut first_failure = None;
        let mut first_cancel = None;
        for ((fork, branch), result) in forks.into_iter().zip(&step.branches).zip(results) {
            self.merge(fork, &branch.steps);
            let status = match result {
                Ok(()) => StepStatus::Success,
                Err(f) if f.code == codes::CANCELLED => {
                    first_cancel.get_or_insert(f);
                    StepStatus::Cancelled
                }
                Err(f) => {
                    first_failure.get_or_insert(f);
                    StepStatus::Error
                }
            };
            statuses.insert(branch.name.clone(), Value::String(status.as_str().into()));
        }
        match first_failure.or(first_cancel) {
            Some(f) => Err(f),
            None => Ok(json!({"branches": statuses})),
        }
    }

    /// A session for one branch of a `parallel` step: the same shared
    /// parts, a copy of what templates read, the records of the branch's
    /// own steps, and its own token.
    fn fork(&self, branch: &Branch, cancel: CancellationToken) -> Session<'e> {
        let mut records = IndexMap::new();
        for step in nested(&branch.steps) {
            let reported = self.reported_id(&step.id);
            if let Some(record) = self.records.get(&reported) {
                records.insert(reported, record.clone());
            }
        }
        Session {
            registry: self.registry,
            shared: self.shared.clone(),
            params: self.params.clone(),
            credentials: self.credentials.clone(),
            env: self.env.clone(),
            vars: self.vars.clone(),
            step_states: self.step_states.clone(),
            records,
            error_binding: self.error_binding.clone(),
            cancel,
            timed_out: self.timed_out.clone(),
            finally_timeout: self.finally_timeout,
            steps_run: self.steps_run.clone(),
            waiter: self.waiter.clone(),
            suspended: None,
            prefix: self.prefix.clone(),
            called: self.called.clone(),
        }
    }

    /// A step id as reports, events and logs say it: with this session's
    /// prefix (a called workflow's steps are `CALL.ID`).
    fn reported_id(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// A log line of the session, its step named as reports name it.
    fn log(&self, level: LogLevel, step_id: Option<&str>, message: &str) {
        let reported = step_id.map(|id| self.reported_id(id));
        self.shared.log(level, reported.as_deref(), message);
    }

    /// A waiting step: asks the waiter, and either ends the step with its
    /// answer or suspends the session.
    async fn wait(&mut self, step: &Step, kind: WaitKind) -> Result<Value, Failure> {
        let rendered = self
            .render_map(&step.with)
            .map_err(|m| failure(codes::TEMPLATE, m, &step.id))?;
        let mut request = wait::parse(&step.id, kind, &rendered).map_err(|problems| {
            let text: Vec<String> = problems
                .into_iter()
                .map(|(path, message)| {
                    format!(
                        "{}: {message}",
                        crate::language::problem::under("with", &path)
                    )
                })
                .collect();
            failure(codes::INVALID_ARGS, text.join("; "), &step.id)
        })?;
        if let Some(message) = &mut request.message {
            self.shared.masker.mask_in_place(message);
        }
        if let Some(secret) = &request.secret {
            self.shared.masker.add([secret]);
        }
        self.log(
            LogLevel::Info,
            Some(&step.id),
            &format!(
                "waiting for {} (at most {})",
                wait::describe(&request),
                format_duration(request.timeout())
            ),
        );
        match self.waiter.wait(&request, self.cancel.clone()).await {
            WaitAnswer::Decided(outcome) => wait_result(step, &request, outcome),
            WaitAnswer::Suspend => {
                self.suspended = Some(request);
                Err(failure(
                    codes::CANCELLED,
                    "the session is suspended while it waits",
                    &step.id,
                ))
            }
            WaitAnswer::Unanswerable(message) => {
                Err(failure(codes::WAIT_UNANSWERED, message, &step.id))
            }
        }
    }

    /// Goes on from the waiting step a suspended session stopped at: ends
    /// that step with the wait's outcome, then runs the steps after it.
    async fn resume(&mut self, steps: &[Step], resume: &Resume) -> Result<(), Failure> {
        let id = &resume.checkpoint.wait.step_id;
        let Some(at) = steps
            .iter()
            .position(|s| &s.id == id && wait_kind(&s.action) == Some(resume.checkpoint.wait.kind))
        else {
            return Err(ErrorInfo {
                code: codes::RESUME.into(),
                message: format!(
                    "the session waited at step `{id}`, which its workflow no longer has among \
                     its top-level steps (it changed while the session waited)"
                ),
                step_id: None,
            });
        };
        let step = &steps[at];
        let started_at = self
            .records
            .get(id)
            .and_then(|r| r.started_at)
            .unwrap_or_else(Timestamp::now);
        // The step's duration counts the wait: the clock it is measured by
        // starts when the step did, in the session's earlier run.
        let waited = Timestamp::now().duration_since(started_at).unsigned_abs();
        let clock = Instant::now()
            .checked_sub(waited)
            .unwrap_or_else(Instant::now);
        match wait_result(step, &resume.checkpoint.wait, resume.outcome.clone()) {
            Ok(output) => {
                if let Some(name) = &step.save_as {
                    self.vars.insert(name.clone(), output.clone());
                }
                self.finish(step, started_at, clock, StepStatus::Success, output, None);
            }
            Err(f) => self.fail(step, started_at, clock, f)?,
        }
        self.run_steps(&steps[at + 1..]).await
    }

    /// What a session suspended at `wait` resumes from.
    fn checkpoint(
        &self,
        wait: WaitRequest,
        started_at: Timestamp,
        params: &BoundParams,
    ) -> Checkpoint {
        Checkpoint {
            wait,
            started_at,
            vars: self.vars.clone(),
            step_states: self.step_states.clone(),
            records: self.records.clone(),
            steps_run: self.steps_run.run.load(Ordering::SeqCst),
            // Only what steps learned: the params' and credentials' secrets
            // (and a robot's own key) come with the lease that resumes it,
            // from that robot's hub, and go nowhere else.
            secrets: self
                .shared
                .masker
                .current()
                .secrets()
                .iter()
                .filter(|s| !params.secret_values.contains(s))
                .cloned()
                .collect(),
        }
    }

    /// Ends a session its waiter suspended: its resources end (a browser
    /// does not outlive a wait), and its report is `waiting`, with the
    /// checkpoint a robot resumes it from.
    async fn suspend(
        self,
        checkpoint: Checkpoint,
        started_at: Timestamp,
        params: &BoundParams,
    ) -> SessionReport {
        let resources = self.shared.resources.lock().await.drain();
        for resource in resources {
            resource.shutdown(true).await;
        }
        let records = checkpoint.records.clone();
        let ended_at = Timestamp::now();
        let report = SessionReport {
            status: SessionStatus::Waiting,
            started_at,
            ended_at,
            duration_ms: millis_between(started_at, ended_at),
            params: params.masked(),
            steps: records,
            error: None,
            outputs: None,
            checkpoint: Some(Box::new(checkpoint)),
        };
        self.shared
            .sink
            .emit(Event::SessionFinished(Box::new(report.clone())));
        report
    }

    /// A `call` step: runs the called workflow inline, in a session of its
    /// own (its params bound from `with.params`, its own variables and
    /// step names) that shares this one's browser, packs, masker, token
    /// and step count. Its steps are reported as `CALL.ID`; its rendered
    /// `outputs` are the step's output; a failure inside it fails the step
    /// with that failure, its step named `CALL.ID`.
    async fn call(&mut self, step: &Step) -> Result<Value, Failure> {
        let name = super::super::language::calls::called_name(step).unwrap_or_default();
        let Some(called) = self.called.get(name).cloned() else {
            return Err(failure(
                codes::INVALID_ARGS,
                format!("with.workflow: the workflow `{name}` was not loaded with this one"),
                &step.id,
            ));
        };
        let given = match step.with.get("params") {
            Some(v) => self
                .render(v)
                .map_err(|m| failure(codes::TEMPLATE, format!("with.params: {m}"), &step.id))?,
            None => Value::Object(Map::new()),
        };
        let Value::Object(given) = given else {
            return Err(failure(
                codes::INVALID_ARGS,
                "with.params: expected a mapping of param names to values",
                &step.id,
            ));
        };
        let inputs = crate::language::params::ParamInputs {
            file: given,
            ..Default::default()
        };
        let bound = crate::language::params::bind_params(&called, &inputs).map_err(|p| {
            failure(
                codes::INVALID_ARGS,
                format!("with.params for `{name}`: {p}"),
                &step.id,
            )
        })?;
        self.shared.masker.add(&bound.secret_values);
        let prefix = format!("{}{}.", self.prefix, step.id);
        let mut records = IndexMap::new();
        let mut step_states = Map::new();
        for inner in called.all_steps() {
            records.insert(format!("{prefix}{}", inner.id), StepRecord::pending());
            step_states.insert(
                inner.id.clone(),
                json!({"status": StepStatus::Pending.as_str(), "output": null, "error": null}),
            );
        }
        let limit = Arc::new(TimeLimit::within(
            format!("the timeout of workflow `{name}` ran out during this step"),
            self.timed_out.clone(),
        ));
        let mut child = Session {
            registry: self.registry,
            shared: self.shared.clone(),
            params: Value::Object(bound.values),
            credentials: Value::Object(Map::new()),
            env: self.env.clone(),
            vars: Map::new(),
            step_states: Value::Object(step_states),
            records,
            error_binding: None,
            cancel: self.cancel.child_token(),
            // Its own timeout, or, without one, the caller's (a step it
            // interrupts then fails `timeout`, as in the caller).
            timed_out: if called.timeout.is_some() {
                limit.clone()
            } else {
                self.timed_out.clone()
            },
            finally_timeout: called.finally_timeout,
            steps_run: self.steps_run.clone(),
            waiter: Arc::new(NoWaiter),
            suspended: None,
            prefix,
            called: called.called.clone(),
        };
        let timer = called.timeout.map(|t| limit.start(t, child.cancel.clone()));
        let outcome = child.run_called(&called).await;
        if let Some(timer) = timer {
            timer.abort();
        }
        self.records.extend(std::mem::take(&mut child.records));
        // The failure's step, named from here: `CALL.ID`.
        outcome.map_err(|mut f| {
            f.step_id = Some(match &f.step_id {
                Some(inner) => format!("{}.{inner}", step.id),
                None => step.id.clone(),
            });
            f
        })
    }

    /// A called workflow's steps, `on_error` after a failure, its
    /// `outputs` after success, and its `finally` whatever the end.
    fn run_called<'a>(&'a mut self, called: &'a Workflow) -> BoxFuture<'a, Result<Value, Failure>> {
        Box::pin(async move {
            let outcome = self.run_steps(&called.steps).await;
            let outcome = match outcome {
                Err(f)
                    if !called.on_error.is_empty()
                        && (!self.cancel.is_cancelled() || self.timed_out.hit()) =>
                {
                    self.error_binding = Some(error_value(&f));
                    // After a timeout (its own, its caller's or the
                    // session's: `timed_out` chains them), which cancelled
                    // this token, a token of its own that hangs on the
                    // session's cancel from outside, which still reaches it;
                    // bounded like the session's handler. After a failure,
                    // the token it had: a sibling branch's failure, a
                    // timeout or a cancel still stop it.
                    // (`hit` is set just before the token is cancelled.)
                    let handler_token = if self.cancel.is_cancelled() || self.timed_out.hit() {
                        self.shared.stop.child_token()
                    } else {
                        self.cancel.clone()
                    };
                    let outer = std::mem::replace(&mut self.cancel, handler_token);
                    // Its own limit, as the session's handler has: a limit
                    // that ran out must not make its steps' cancels (a
                    // person's, a sibling branch's) read as timeouts.
                    let outer_limit =
                        std::mem::replace(&mut self.timed_out, Arc::new(TimeLimit::handler()));
                    let handler =
                        tokio::time::timeout(ON_ERROR_LIMIT, self.run_steps(&called.on_error));
                    let handled = handler.await.unwrap_or_else(|_| {
                        Err(ErrorInfo {
                            code: codes::TIMEOUT.into(),
                            message: format!(
                                "on_error did not finish within {}",
                                format_duration(ON_ERROR_LIMIT)
                            ),
                            step_id: None,
                        })
                    });
                    self.cancel = outer;
                    self.timed_out = outer_limit;
                    if let Err(also) = handled {
                        self.log(
                            LogLevel::Error,
                            also.step_id.as_deref(),
                            &format!("on_error failed too: {}", also.message),
                        );
                    }
                    self.error_binding = None;
                    Err(f)
                }
                other => other,
            };
            let outcome = match outcome {
                Ok(()) => self
                    .outputs(&called.outputs, called.limits.output_bytes)
                    .map_err(|m| ErrorInfo {
                        code: codes::OUTPUTS.into(),
                        message: format!("workflow `{}`: {m}", called.name),
                        step_id: None,
                    }),
                Err(f) => Err(f),
            };
            self.with_cleanup(outcome, &called.finally).await
        })
    }

    /// Takes back what a branch's steps recorded.
    fn merge(&mut self, fork: Session<'e>, steps: &[Step]) {
        let Session {
            records,
            mut step_states,
            ..
        } = fork;
        // The fork holds its branch's records only: its own steps', and
        // those of the workflows they called (`CALL.ID`).
        self.records.extend(records);
        for step in nested(steps) {
            let id = &step.id;
            if let (Some(state), Value::Object(mine)) = (
                step_states.get_mut(id).map(Value::take),
                &mut self.step_states,
            ) {
                mine.insert(id.clone(), state);
            }
        }
    }

    /// Runs a `finally` block: whatever became of the steps before it,
    /// with a token of its own (the session's may already be cancelled, by
    /// a cancel or the workflow's timeout) that only `finally_timeout`
    /// cancels. The session's token and time limit are back after it.
    fn run_finally<'a>(&'a mut self, steps: &'a [Step]) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(async move {
            let token = CancellationToken::new();
            let limit = Arc::new(TimeLimit::new(format!(
                "the finally steps' limit of {} ran out during this step",
                format_duration(self.finally_timeout)
            )));
            let timer = limit.start(self.finally_timeout, token.clone());
            let outer_token = std::mem::replace(&mut self.cancel, token);
            let outer_limit = std::mem::replace(&mut self.timed_out, limit);
            // A cleanup runs even after `limits.steps` was reached.
            let outer_count = std::mem::replace(&mut self.steps_run, StepCount::unbounded());
            let result = self.run_steps(steps).await;
            timer.abort();
            self.cancel = outer_token;
            self.timed_out = outer_limit;
            self.steps_run = outer_count;
            result
        })
    }

    async fn try_catch(&mut self, step: &Step) -> Result<Value, Failure> {
        let outcome = self.try_body(step).await;
        self.with_cleanup(outcome, &step.finally).await
    }

    /// Runs a block's `finally` steps after its `outcome`: a failing
    /// cleanup fails a block that had succeeded; after a failure it is
    /// logged, and the first failure stands.
    async fn with_cleanup(
        &mut self,
        outcome: Result<Value, Failure>,
        finally: &[Step],
    ) -> Result<Value, Failure> {
        if finally.is_empty() {
            return outcome;
        }
        match (outcome, self.run_finally(finally).await) {
            (outcome, Ok(())) => outcome,
            (Ok(_), Err(f)) => Err(f),
            (Err(f), Err(also)) => {
                self.log(
                    LogLevel::Error,
                    also.step_id.as_deref(),
                    &format!("a finally step failed too: {}", also.message),
                );
                Err(f)
            }
        }
    }

    async fn try_body(&mut self, step: &Step) -> Result<Value, Failure> {
        match self.run_steps(&step.steps).await {
            Ok(()) => Ok(json!({"caught": false, "error": null})),
            Err(f) if f.code == codes::CANCELLED && self.cancel.is_cancelled() => Err(f),
            Err(f) => {
                self.log(
                    LogLevel::Info,
                    Some(&step.id),
                    &format!(
                        "caught the failure of step `{}`: {}",
                        f.step_id.as_deref().unwrap_or("?"),
                        f.message
                    ),
                );
                let caught = error_value(&f);
                let previous = self.error_binding.replace(caught.clone());
                let handled = self.run_steps(&step.catch).await;
                self.error_binding = previous;
                handled.map(|()| json!({"caught": true, "error": caught}))
            }
        }
    }

    /// Runs a registry action, with retries and a per-attempt timeout.
    async fn invoke(&mut self, step: &Step) -> Result<Value, Failure> {
        let Some(action) = self.registry.get(&step.action).cloned() else {
            return Err(failure(
                codes::UNKNOWN_ACTION,
                format!("unknown action `{}`", step.action),
                &step.id,
            ));
        };
        let args = self
            .render_map(&step.with)
            .map(Value::Object)
            .map_err(|m| failure(codes::TEMPLATE, m, &step.id))?;
        let policy = step.retry.unwrap_or_default();
        let mut delays = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(policy.delay)
            .with_max_delay(policy.max_delay)
            .with_factor(policy.factor)
            .with_max_times(policy.times as usize)
            .build();
        let mut attempt = 1;
        loop {
            let result = self
                .attempt(step, action.as_ref(), args.clone(), attempt)
                .await;
            let error = match result {
                Ok(output) => return Ok(output),
                Err(e) if e.code == codes::CANCELLED => {
                    return Err(failure(e.code, e.message, &step.id));
                }
                Err(e) => e,
            };
            let Some(delay) = delays.next() else {
                return Err(failure(error.code, error.message, &step.id));
            };
            self.log(
                LogLevel::Warn,
                Some(&step.id),
                &format!(
                    "attempt {attempt} of {} failed: {}; retrying in {} ms",
                    policy.times + 1,
                    error.message,
                    delay.as_millis()
                ),
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cancel.cancelled() => {
                    return Err(failure(codes::CANCELLED, "the session was cancelled while waiting to retry", &step.id));
                }
            }
            attempt += 1;
            self.shared.sink.emit(Event::StepStarted {
                step_id: self.reported_id(&step.id),
                action: step.action.clone(),
                attempt,
                started_at: Timestamp::now(),
            });
        }
    }

    async fn attempt(
        &self,
        step: &Step,
        action: &dyn super::registry::Action,
        args: Value,
        attempt: u32,
    ) -> Result<Value, ActionError> {
        let token = self.cancel.child_token();
        let ctx = ActionContext {
            step_id: self.reported_id(&step.id),
            attempt,
            cancel: token.clone(),
            shared: self.shared.clone(),
        };
        let run = action.run(&ctx, args);
        tokio::pin!(run);
        let deadline = async {
            match step.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let timed_out = tokio::select! {
            result = &mut run => return result,
            _ = deadline => true,
            _ = token.cancelled() => false,
        };
        // Either way the action has been told to stop (the timeout cancels
        // the attempt's token, which is a child of the session's). Give it
        // time to end its processes, but never wait forever on a bad one.
        token.cancel();
        let bound = self.shared.options.cancel_grace + CANCEL_SLACK;
        let _ = tokio::time::timeout(bound, &mut run).await;
        if timed_out {
            let limit = step.timeout.map(format_duration).unwrap_or_default();
            Err(ActionError::new(
                codes::TIMEOUT,
                format!("the step did not finish within its timeout of {limit}"),
            ))
        } else {
            Err(ActionError::new(
                codes::CANCELLED,
                "the session was cancelled",
            ))
        }
    }

    /// The workflow's outputs, rendered and masked, at most `limit` bytes
    /// as JSON (`limits.output_bytes`) and never more than a report carries.
    fn outputs(&self, declared: &Map<String, Value>, limit: Option<u64>) -> Result<Value, String> {
        let mut out = Map::with_capacity(declared.len());
        for (name, value) in declared {
            let rendered = self
                .render(value)
                .map_err(|e| format!("outputs.{name}: {e}"))?;
            out.insert(name.clone(), rendered);
        }
        let mut out = Value::Object(out);
        self.shared.masker.mask_value(&mut out);
        let size = out.to_string().len();
        if let Some(limit) = limit.filter(|l| (size as u64) > *l) {
            return Err(format!(
                "the outputs are {size} bytes as JSON; the workflow's limits.output_bytes is {limit}"
            ));
        }
        if size > MAX_OUTPUTS_BYTES {
            return Err(format!(
                "the outputs are {size} bytes as JSON; they may be at most {MAX_OUTPUTS_BYTES}"
            ));
        }
        Ok(out)
    }

    fn render_text(&self, text: &str) -> Result<Value, String> {
        let template = Template::parse(text).map_err(|e| e.to_string())?;
        template.render(self).map_err(|e| e.to_string())
    }

    fn render(&self, value: &Value) -> Result<Value, String> {
        match value {
            Value::String(s) if s.contains("${") => self.render_text(s),
            Value::Array(items) => items
                .iter()
                .map(|v| self.render(v))
                .collect::<Result<_, _>>()
                .map(Value::Array),
            Value::Object(map) => self.render_map(map).map(Value::Object),
            other => Ok(other.clone()),
        }
    }

    fn render_map(&self, map: &Map<String, Value>) -> Result<Map<String, Value>, String> {
        let mut out = Map::with_capacity(map.len());
        for (k, v) in map {
            let rendered = self.render(v).map_err(|e| format!("with.{k}: {e}"))?;
            out.insert(k.clone(), rendered);
        }
        Ok(out)
    }
}

/// Whether a branch drives the browser, which a session has one of.
/// Whether `steps` drive the browser, through the workflows they call too.
fn uses_browser(
    steps: &[Step],
    called: &std::collections::BTreeMap<String, Arc<Workflow>>,
) -> bool {
    nested(steps).iter().any(|s| {
        s.action.starts_with("browser.")
            || (s.action == CONTROL_CALL
                && super::super::language::calls::called_name(s)
                    .and_then(|name| called.get(name))
                    .is_some_and(|w| {
                        [&w.steps, &w.on_error, &w.finally]
                            .into_iter()
                            .any(|steps| uses_browser(steps, &w.called))
                    }))
    })
}

fn failure(code: impl Into<String>, message: impl Into<String>, step_id: &str) -> Failure {
    ErrorInfo {
        code: code.into(),
        message: message.into(),
        step_id: Some(step_id.to_string()),
    }
}
