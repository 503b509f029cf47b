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

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tasuki_actions::runtime::wait::{OnTimeout, WaitKind, WaitOutcome, WaitRequest};
    use tasuki_protocol::robot::{Resumption, WaitOutcome as HubOutcome, WaitSpec};

    /// The executor's wait types and the robot protocol's are written
    /// twice (neither crate may depend on the other) and meet only as
    /// JSON: every field of each must cross unchanged, both ways.
    #[test]
    fn the_executors_wait_types_and_the_protocols_are_the_same_json() {
        let requests = [
            WaitRequest {
                step_id: "sign_off".into(),
                kind: WaitKind::Approval,
                message: Some("pay 42?".into()),
                event: None,
                timeout_ms: 8 * 3600 * 1000,
                on_timeout: OnTimeout::Approve,
                secret: None,
                approvers: vec!["TSKFINANCE".into(), "TSKAUDIT".into()],
            },
            WaitRequest {
                step_id: "paid".into(),
                kind: WaitKind::Event,
                message: None,
                event: Some("payment-done".into()),
                timeout_ms: 60_000,
                on_timeout: OnTimeout::Reject,
                secret: Some("a-signing-key-of-32-bytes-long!!".into()),
                approvers: Vec::new(),
            },
        ];
        for request in requests {
            let sent = serde_json::to_value(&request).expect("json");
            let spec: WaitSpec =
                serde_json::from_value(sent.clone()).expect("the protocol reads it");
            assert_eq!(serde_json::to_value(&spec).expect("json"), sent);
            let back: WaitRequest =
                serde_json::from_value(serde_json::to_value(&spec).expect("json")).expect("back");
            assert_eq!(back, request);
        }
        let at = "2026-12-05T10:00:00Z";
        for outcome in [
            json!({"outcome": "approved", "by": "AKID", "at": at, "comment": "ok"}),
            json!({"outcome": "rejected", "by": "timeout", "at": at}),
            json!({"outcome": "event", "payload": {"paid": 42}, "at": at}),
            json!({"outcome": "timed_out", "at": at}),
            json!({"outcome": "cancelled", "at": at}),
        ] {
            let hub: HubOutcome = serde_json::from_value(outcome.clone())
                .unwrap_or_else(|e| panic!("{outcome}: {e}"));
            let hub_json = serde_json::to_value(&hub).expect("json");
            let executor: WaitOutcome = serde_json::from_value(hub_json.clone())
                .unwrap_or_else(|e| panic!("{hub_json}: {e}"));
            assert_eq!(serde_json::to_value(&executor).expect("json"), hub_json);
            assert_eq!(hub_json, outcome);
            assert_eq!(hub_json["outcome"], hub.name(), "the hub's name for it");
        }
        // A resumption as a lease carries it is read by the agent.
        let _: Resumption = serde_json::from_value(json!({
            "checkpoint": {},
            "outcome": {"outcome": "timed_out", "at": at},
        }))
        .expect("a resumption");
    }
}
