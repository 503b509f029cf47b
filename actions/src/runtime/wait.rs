//! Steps that wait for the world outside the session: `approval` (a person
//! approves or rejects) and `wait_event` (an outside system calls back).
//!
//! Where the answer comes from is the [`Waiter`]'s business: the terminal
//! or `--approve`/`--event` flags for `tasuki run`. On a robot the answer
//! comes through the hub, and nobody should keep a robot busy for the hours
//! a person takes to decide, so the session *suspends*: the executor stops
//! at the waiting step, ends the session's resources (a browser does not
//! outlive a wait) and hands back a [`Checkpoint`] of everything later steps
//! can read. A robot that later takes the session up again resumes it from
//! that checkpoint with the [`WaitOutcome`] (`Executor::run_with`).
//!
//! A session can only stop and start again between steps of its top level
//! (not inside `try`, `for_each` or `parallel`, nor in `on_error` or
//! `finally`): there, what runs next is just "the step after this one",
//! and the checkpoint needs no picture of a half-run block.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use indexmap::IndexMap;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use super::report::StepRecord;

/// How long a wait lasts unless its step says: a day, long enough for a
/// person, short enough that a forgotten session ends.
pub const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The longest a wait may be set to last (30 days).
pub const MAX_WAIT_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// The largest checkpoint a session may wait with, as JSON (its hub's
/// limit too): a session whose later steps could read more fails its
/// waiting step with `checkpoint_too_large` instead of suspending.
pub const MAX_CHECKPOINT_BYTES: usize = 4 * 1024 * 1024;

/// How long an event's name may be.
pub const MAX_EVENT_NAME_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    Approval,
    Event,
}

/// What an approval comes to when nobody decides in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    Approve,
    #[default]
    Reject,
}

/// What a waiting step waits for, as its hub is told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitRequest {
    pub step_id: String,
    pub kind: WaitKind,
    /// An approval's message to the person deciding, rendered and masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The event's name, for `wait_event`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    pub timeout_ms: u64,
    /// For an approval: the decision when the timeout runs out.
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// For an event: the key its sender signs the delivery with
    /// (`Tasuki-Signature`), when the workflow gives one; the hub then
    /// takes the event from a sender that holds no access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// For an approval: the access key ids that may decide it on a hub.
    /// Empty: any key that may write sessions. Written in the file, never
    /// a template, so that whoever queues a session cannot choose who
    /// approves it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
}

/// The most approvers an approval step may list.
pub const MAX_APPROVERS: usize = 32;

/// The longest an approver's access key id may be.
pub const MAX_APPROVER_LEN: usize = 64;

/// The shortest signing key an event wait takes.
pub const MIN_EVENT_SECRET_BYTES: usize = 16;

impl WaitRequest {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// How a wait ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WaitOutcome {
    /// `by` names who decided: an access key id, `terminal`, `flag`, or
    /// `timeout` when the approval's `on_timeout` decided.
    Approved {
        by: String,
        at: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    Rejected {
        by: String,
        at: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    /// The event came, with what its sender sent.
    Event { payload: Value, at: Timestamp },
    /// No event came in time.
    TimedOut { at: Timestamp },
    /// The session was cancelled while it waited.
    Cancelled { at: Timestamp },
}

/// A waiter's answer.
pub enum WaitAnswer {
    Decided(WaitOutcome),
    /// Stop the session here; it is resumed from its checkpoint later.
    Suspend,
    /// Nobody can answer: the step fails with this message.
    Unanswerable(String),
}

pub type WaitFuture<'a> = Pin<Box<dyn Future<Output = WaitAnswer> + Send + 'a>>;

/// Where waiting steps get their answers.
pub trait Waiter: Send + Sync {
    /// Answers `request`. `cancel` is the session's: a waiter that waits
    /// in place stops when it is cancelled and answers `Cancelled`.
    fn wait<'a>(&'a self, request: &'a WaitRequest, cancel: CancellationToken) -> WaitFuture<'a>;
}

/// The waiter of a session that nobody can answer: every wait fails.
pub struct NoWaiter;

impl Waiter for NoWaiter {
    fn wait<'a>(&'a self, request: &'a WaitRequest, _: CancellationToken) -> WaitFuture<'a> {
        Box::pin(async move {
            WaitAnswer::Unanswerable(format!(
                "step `{}` waits for {}, and nothing here can answer it",
                request.step_id,
                describe(request)
            ))
        })
    }
}

/// The waiter of a robot: every wait suspends the session, and its hub
/// gathers the answer.
pub struct SuspendingWaiter;

impl Waiter for SuspendingWaiter {
    fn wait<'a>(&'a self, _: &'a WaitRequest, _: CancellationToken) -> WaitFuture<'a> {
        Box::pin(async { WaitAnswer::Suspend })
    }
}

/// "an approval" or "the event `NAME`", for messages.
pub fn describe(request: &WaitRequest) -> String {
    match request.kind {
        WaitKind::Approval => "an approval".into(),
        WaitKind::Event => format!(
            "the event `{}`",
            request.event.as_deref().unwrap_or_default()
        ),
    }
}

/// Everything a suspended session's later steps can read, and what its
/// report needs, to go on from the step after `wait.step_id`. It holds
/// values unmasked (a later step may need a secret an earlier one read), so
/// it travels only between the robot and its hub, which seals it at rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub wait: WaitRequest,
    /// When the session's first run started.
    pub started_at: Timestamp,
    /// Variables (`set`, `save_as`).
    pub vars: Map<String, Value>,
    /// `{id: {status, output, error}}`, as templates read them.
    pub step_states: Value,
    /// Each step's record for the report.
    pub records: IndexMap<String, StepRecord>,
    /// Steps run so far, against `limits.steps`.
    pub steps_run: u64,
    /// Values masked so far, secrets that steps learned included.
    pub secrets: Vec<String>,
}

/// A session taken up again after its wait.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub checkpoint: Checkpoint,
    pub outcome: WaitOutcome,
}

/// Reads a waiting step's `with`: the one reading of it, for validation
/// (where `message` may still hold templates) and for the run (rendered).
/// Problems come as (path under `with`, as `problem::join` and `index`
/// make it from an empty parent; `problem::under` puts it below one,
/// message).
/// The waits a workflow's text declares: each waiting step of its top
/// level, as its request starts before the run renders it (a signing key's
/// template, not its value; the message unrendered). A hub checks against
/// these what a robot says a session waits for. Text that does not parse
/// declares none (a hub stored it validated).
pub fn declared_waits(text: &str, origin: &str) -> Vec<WaitRequest> {
    use crate::language::{model, source};
    let Ok(located) = source::parse(text, source::Format::from_file_name(origin)) else {
        return Vec::new();
    };
    let (Some(workflow), _) = model::lower(&located.value) else {
        return Vec::new();
    };
    waits_of(&workflow).into_iter().map(|(_, w)| w).collect()
}

/// [`declared_waits`] of a workflow loaded already, each with its step's
/// index in `steps`.
pub fn waits_of(workflow: &crate::Workflow) -> Vec<(usize, WaitRequest)> {
    workflow
        .steps
        .iter()
        .enumerate()
        .filter_map(|(i, step)| {
            let kind = crate::language::model::wait_kind(&step.action)?;
            Some((i, parse(&step.id, kind, &step.with).ok()?))
        })
        .collect()
}

pub fn parse(
    step_id: &str,
    kind: WaitKind,
    with: &Map<String, Value>,
) -> Result<WaitRequest, Vec<(String, String)>> {
    let mut problems = Vec::new();
    let known: &[&str] = match kind {
        WaitKind::Approval => &["message", "timeout", "on_timeout", "approvers"],
        WaitKind::Event => &["event", "timeout", "secret"],
    };
    for key in with.keys() {
        if !known.contains(&key.as_str()) {
            problems.push((
                crate::language::problem::join("", key),
                format!(
                    "unknown argument `{key}`; this step takes {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    }
    let text = |key: &str, problems: &mut Vec<(String, String)>| match with.get(key) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            problems.push((
                key.into(),
                format!(
                    "expected text, found {}",
                    crate::language::template::describe(other)
                ),
            ));
            None
        }
    };
    let timeout = match text("timeout", &mut problems) {
        None => Some(DEFAULT_WAIT_TIMEOUT),
        Some(t) => match crate::language::duration::parse_duration(&t) {
            Ok(d) if d.is_zero() => {
                problems.push((
                    "timeout".into(),
                    "a wait's timeout must be above zero".into(),
                ));
                None
            }
            Ok(d) if d > MAX_WAIT_TIMEOUT => {
                problems.push((
                    "timeout".into(),
                    format!("`{t}` is longer than the longest wait, 30 days (720h)"),
                ));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(("timeout".into(), e));
                None
            }
        },
    };
    let mut request = WaitRequest {
        step_id: step_id.into(),
        kind,
        message: None,
        event: None,
        timeout_ms: timeout.map(|t| t.as_millis() as u64).unwrap_or(0),
        on_timeout: OnTimeout::Reject,
        secret: None,
        approvers: Vec::new(),
    };
    match kind {
        WaitKind::Approval => {
            request.message = text("message", &mut problems);
            if !with.contains_key("message") {
                problems.push((
                    "message".into(),
                    "missing required argument `message`: what the person approving should know"
                        .into(),
                ));
            } else if request
                .message
                .as_deref()
                .is_some_and(|m| m.trim().is_empty())
            {
                problems.push(("message".into(), "the message is empty".into()));
            }
            match text("on_timeout", &mut problems).as_deref() {
                None | Some("reject") => {}
                Some("approve") => request.on_timeout = OnTimeout::Approve,
                Some(other) => problems.push((
                    "on_timeout".into(),
                    format!("expected `approve` or `reject`, found `{other}`"),
                )),
            }
            if let Some(list) = with.get("approvers") {
                request.approvers = parse_approvers(list, &mut problems);
            }
        }
        WaitKind::Event => {
            match text("secret", &mut problems) {
                None => {}
                // Validation sees the template; the run, what it gave.
                Some(s) if s.contains("${") => request.secret = Some(s),
                Some(s) if !with.contains_key("secret") || s.len() >= MIN_EVENT_SECRET_BYTES => {
                    request.secret = Some(s)
                }
                Some(_) => problems.push((
                    "secret".into(),
                    format!("a signing key has at least {MIN_EVENT_SECRET_BYTES} bytes"),
                )),
            }
            match text("event", &mut problems) {
                None if !with.contains_key("event") => problems.push((
                    "event".into(),
                    "missing required argument `event`: the name its sender delivers it under"
                        .into(),
                )),
                None => {}
                Some(name) => match check_event_name(&name) {
                    Ok(()) => request.event = Some(name),
                    Err(message) => problems.push(("event".into(), message)),
                },
            }
        }
    }
    if problems.is_empty() {
        Ok(request)
    } else {
        Err(problems)
    }
}

/// An approval's `approvers`: a list of access key ids, as written.
fn parse_approvers(list: &Value, problems: &mut Vec<(String, String)>) -> Vec<String> {
    let Value::Array(items) = list else {
        problems.push((
            "approvers".into(),
            format!(
                "expected a list of access key ids, found {}",
                crate::language::template::describe(list)
            ),
        ));
        return Vec::new();
    };
    if items.is_empty() {
        problems.push((
            "approvers".into(),
            "an empty list lets nobody decide; leave `approvers` out to let any key that may \
             write sessions decide"
                .into(),
        ));
    } else if items.len() > MAX_APPROVERS {
        // Not read further: the items of a list this long are not worth
        // a problem each (nor the time to compare them).
        problems.push((
            "approvers".into(),
            format!(
                "{} approvers; a step lists at most {MAX_APPROVERS}",
                items.len()
            ),
        ));
        return Vec::new();
    }
    let mut approvers: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = crate::language::problem::index("approvers", i);
        match item {
            Value::String(id) if id.contains("${") => problems.push((
                field,
                "an approver is written in the file, not a template: whoever queues a session \
                 must not choose who approves it"
                    .into(),
            )),
            Value::String(id) if !is_key_id(id) => problems.push((
                field,
                format!(
                    "`{}` is not an access key id (1 to {MAX_APPROVER_LEN} letters, digits, \
                     `_`, `-` or `.`, such as `TSK…` from `tasuki-hub keys create`)",
                    id.chars().take(MAX_APPROVER_LEN).collect::<String>()
                ),
            )),
            Value::String(id) if approvers.contains(id) => {
                problems.push((field, format!("`{id}` is listed twice")))
            }
            Value::String(id) => approvers.push(id.clone()),
            other => problems.push((
                field,
                format!(
                    "expected an access key id, found {}",
                    crate::language::template::describe(other)
                ),
            )),
        }
    }
    approvers
}

fn is_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_APPROVER_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// An event's name: letters, digits, `_` and `-`, at most 64, as it
/// appears in the URL it is delivered to.
pub fn check_event_name(name: &str) -> Result<(), String> {
    let fine = !name.is_empty()
        && name.len() <= MAX_EVENT_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if fine {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not an event name: use 1 to {MAX_EVENT_NAME_LEN} letters, digits, `_` or `-`"
        ))
    }
}
