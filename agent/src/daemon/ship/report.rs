//! The hub's words for how a session went: step states and the final
//! report, from the executor's records.

use tasuki_actions::runtime::wait::Checkpoint;
use tasuki_actions::{SessionReport, StepRecord};
use tasuki_protocol::robot::{Suspension, WaitSpec};
use tasuki_protocol::{
    FinishSession, HeldLease, SessionError, SessionStatus, StepState, StepStatus,
};

pub(super) fn step_state(id: &str, r: &StepRecord) -> StepState {
    StepState {
        id: id.to_string(),
        status: match r.status {
            tasuki_actions::StepStatus::Pending => StepStatus::Pending,
            tasuki_actions::StepStatus::Running => StepStatus::Running,
            tasuki_actions::StepStatus::Success => StepStatus::Success,
            tasuki_actions::StepStatus::Error => StepStatus::Error,
            tasuki_actions::StepStatus::Skipped => StepStatus::Skipped,
            tasuki_actions::StepStatus::Cancelled => StepStatus::Cancelled,
        },
        started_at: r.started_at,
        ended_at: r.ended_at,
        duration_ms: r.duration_ms,
        output: r.output.clone(),
        error: r.error.as_ref().map(|e| SessionError {
            code: e.code.clone(),
            message: e.message.clone(),
            step_id: e.step_id.clone(),
        }),
    }
}

/// The final report, from the executor's.
pub(super) fn finish_report(lease: &HeldLease, report: &SessionReport) -> FinishSession {
    let suspend = report.checkpoint.as_deref().and_then(suspension);
    FinishSession {
        idempotency_key: finish_key(lease),
        status: match (report.status, &suspend) {
            (tasuki_actions::SessionStatus::Success, _) => SessionStatus::Success,
            (tasuki_actions::SessionStatus::Cancelled, _) => SessionStatus::Cancelled,
            (tasuki_actions::SessionStatus::Waiting, Some(_)) => SessionStatus::Waiting,
            _ => SessionStatus::Error,
        },
        ended_at: report.ended_at,
        error: report.error.as_ref().map(|e| SessionError {
            code: e.code.clone(),
            message: e.message.clone(),
            step_id: e.step_id.clone(),
        }),
        steps: report
            .steps
            .iter()
            .map(|(id, r)| step_state(id, r))
            .collect(),
        outputs: report.outputs.clone(),
        suspend,
    }
}

/// The executor's checkpoint as the hub takes it: the wait spelled out,
/// the rest as opaque JSON (the robot protocol's types are the same JSON
/// as the executor's; `None` only if they ever drift apart, which then
/// reports the session as an error rather than waiting for nothing).
fn suspension(checkpoint: &Checkpoint) -> Option<Suspension> {
    let wait: WaitSpec = serde_json::to_value(&checkpoint.wait)
        .and_then(serde_json::from_value)
        .ok()?;
    let checkpoint = serde_json::to_value(checkpoint).ok()?;
    Some(Suspension { wait, checkpoint })
}

/// One key per lease: a restarted agent sending the same report again
/// gets the first answer.
fn finish_key(lease: &HeldLease) -> String {
    format!("finish-{}-{}", lease.session_id, lease.lease_id)
}

/// A session that ended before it ran (its workflow or params did not
/// check out on this robot, its spool could not be made) or that a killed
/// agent left cut off.
pub fn failed_before_start(lease: &HeldLease, code: &str, message: String) -> FinishSession {
    FinishSession {
        idempotency_key: finish_key(lease),
        status: SessionStatus::Error,
        ended_at: jiff::Timestamp::now(),
        error: Some(SessionError {
            code: code.into(),
            message,
            step_id: None,
        }),
        steps: Vec::new(),
        outputs: None,
        suspend: None,
    }
}

/// The report without step outputs and with short error messages: what
/// still matters most when the hub refused the whole one (too large).
pub(super) fn trimmed(report: &FinishSession) -> FinishSession {
    let mut trimmed = report.clone();
    for step in &mut trimmed.steps {
        step.output = serde_json::Value::Null;
        if let Some(e) = step.error.as_mut() {
            e.message = e.message.chars().take(1024).collect();
        }
    }
    if let Some(e) = trimmed.error.as_mut() {
        e.message = e.message.chars().take(1024).collect();
    }
    trimmed.outputs = None;
    // A wait the hub would not keep ends the session here: it cannot be
    // resumed, and a report the hub refuses again would leave it running
    // until its lease ran out.
    if let Some(suspension) = trimmed.suspend.take() {
        trimmed.status = SessionStatus::Error;
        trimmed.error = Some(SessionError {
            code: "suspend_refused".into(),
            message: "the hub refused to keep the session waiting at this step (the agent's log \
                      says why), so it ends here"
                .into(),
            step_id: Some(suspension.wait.step_id),
        });
    }
    trimmed
}
