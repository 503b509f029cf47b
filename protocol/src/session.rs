//! Session queues: the AUTORO Session Queue Schema, and what Tasuki adds
//! to it (`steps`, `error`, `outputs`, `cancel_requested_at`).

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Queued,
    Running,
    /// Stopped at an `approval` or `wait_event` step, on no robot, until
    /// the answer comes (`SessionQueue::wait`).
    Waiting,
    Success,
    Error,
    Cancelled,
}

impl SessionStatus {
    pub const ALL: [SessionStatus; 6] = [
        SessionStatus::Queued,
        SessionStatus::Running,
        SessionStatus::Waiting,
        SessionStatus::Success,
        SessionStatus::Error,
        SessionStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Queued => "queued",
            SessionStatus::Running => "running",
            SessionStatus::Waiting => "waiting",
            SessionStatus::Success => "success",
            SessionStatus::Error => "error",
            SessionStatus::Cancelled => "cancelled",
        }
    }

    /// A terminal session never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SessionStatus::Success | SessionStatus::Error | SessionStatus::Cancelled
        )
    }
}

impl fmt::Display for SessionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SessionStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<SessionStatus, String> {
        SessionStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown session status `{s}`; the statuses are: {}",
                    SessionStatus::ALL.map(SessionStatus::as_str).join(", ")
                )
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowRef {
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotRef {
    pub id: i64,
    pub name: String,
}

/// Why a session or a step failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionError {
    pub code: String,
    pub message: String,
    pub step_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Success,
    Error,
    Skipped,
    Cancelled,
}

/// One step's record within a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub id: String,
    pub status: StepStatus,
    #[serde(default, with = "crate::time::millis_opt")]
    pub started_at: Option<Timestamp>,
    #[serde(default, with = "crate::time::millis_opt")]
    pub ended_at: Option<Timestamp>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub output: Value,
    #[serde(default)]
    pub error: Option<SessionError>,
}

/// The Session Queue Schema. The first nine fields are AUTORO's, in its
/// order; the rest are present only when they have something to say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionQueue {
    pub id: i64,
    pub project_id: i64,
    #[serde(with = "crate::time::millis_opt")]
    pub started_at: Option<Timestamp>,
    #[serde(with = "crate::time::millis_opt")]
    pub ended_at: Option<Timestamp>,
    pub status: SessionStatus,
    #[serde(with = "crate::time::millis")]
    pub created_at: Timestamp,
    pub workflow: WorkflowRef,
    pub params: Map<String, Value>,
    /// `null` until a robot takes the session.
    pub robot: Option<RobotRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<StepState>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SessionError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::millis_opt"
    )]
    pub cancel_requested_at: Option<Timestamp>,
    /// For a `queued` session that no registered robot could ever take
    /// (its workflow's pins, actions or labels), which robots lack what.
    /// Absent while some robot could: the session only waits for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_reason: Option<String>,
    /// How the hub itself queued the session; absent for a client's POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<SessionOrigin>,
    /// Which run of the session this is, from 2 on: its workflow's
    /// `retry_on` queued it again after a run that could not finish
    /// (its robot lost, its agent restarted). Absent for a first run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The session's latest wait (an `approval` or `wait_event` step):
    /// what it waits for while `waiting`, and how it was answered after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<SessionWait>,
    /// Neena's word for an approval's answer: `approved` or `rejected`
    /// once decided; absent for a session that never asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_status: Option<String>,
}

/// What a session waits, or waited, for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionWait {
    pub step_id: String,
    /// `approval` or `event`.
    pub kind: WaitKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(with = "crate::time::millis")]
    pub since: Timestamp,
    /// When the wait ends by itself: an approval with its `on_timeout`,
    /// an event as a `timeout` failure.
    #[serde(with = "crate::time::millis")]
    pub deadline: Timestamp,
    /// Once answered: `approved`, `rejected`, `event`, `timed_out` or
    /// `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Who answered: an access key id, or `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::time::millis_opt"
    )]
    pub decided_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// For an event whose step gave a signing key: where its sender posts
    /// it, signed (`Tasuki-Signature`), without an access key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    /// For an approval whose step lists them: the only access keys that
    /// may decide it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
}

/// Whether the access key `key_id` may decide an approval that lists
/// `approvers` (none listed: any key that may write sessions).
pub fn may_decide(approvers: &[String], key_id: &str) -> bool {
    approvers.is_empty() || approvers.iter().any(|a| a == key_id)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitKind {
    Approval,
    Event,
}

/// `POST /v1/session_queues/{id}/approval`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decide {
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

/// The longest comment an approval takes.
pub const MAX_DECISION_COMMENT_BYTES: usize = 4096;
/// The largest event payload, as JSON.
pub const MAX_EVENT_PAYLOAD_BYTES: usize = 64 * 1024;

/// A session the hub queued on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionOrigin {
    /// A schedule's run, due at `due_at`.
    Schedule {
        schedule_id: i64,
        #[serde(with = "crate::time::millis")]
        due_at: Timestamp,
    },
    /// `POST /v1/session_queues/{id}/rerun` of session `session_id`.
    Rerun { session_id: i64 },
    /// The error handler of session `session_id`, which ended in error.
    ErrorHandler { session_id: i64 },
    /// A signed request to webhook trigger `trigger_id`.
    Trigger { trigger_id: i64 },
}

/// `POST /v1/session_queues`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionQueue {
    pub workflow_id: i64,
    /// Values for the workflow's declared params.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
}

/// `POST /v1/session_queues/{id}/rerun`: the values of the session's
/// secret params, which are not kept once it ends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerunSessionQueue {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
}

/// `GET /v1/session_queues`: one page, newest first, and the count of all
/// that match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionQueueList {
    pub session_queues: Vec<SessionQueue>,
    pub total_count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_seed_example() {
        let q: SessionQueue = serde_json::from_str(
            r#"{
  "id": 123123123,
  "project_id": 123123123123,
  "started_at": "2019-07-09T10:02:57.000Z",
  "ended_at": "2019-07-09T10:04:01.000Z",
  "status": "running",
  "created_at": "2019-07-09T10:02:57.000Z",
  "workflow": {"id": 12341234, "name": "Awesome Workflow."},
  "params": {"var1": "this is string", "var2": ["this", "is", "array"]},
  "robot": {"id": 12341234, "name": "standard-1"}
}"#,
        )
        .unwrap();
        assert_eq!(q.status, SessionStatus::Running);
        let back = serde_json::to_value(&q).unwrap();
        assert_eq!(back["started_at"], "2019-07-09T10:02:57.000Z");
        assert!(back.get("cancel_requested_at").is_none());
    }

    #[test]
    fn robot_is_null_until_assigned() {
        let q = SessionQueue {
            id: 1,
            project_id: 1,
            started_at: None,
            ended_at: None,
            status: SessionStatus::Queued,
            created_at: Timestamp::UNIX_EPOCH,
            workflow: WorkflowRef {
                id: 1,
                name: "w".into(),
            },
            params: Map::new(),
            robot: None,
            steps: None,
            error: None,
            outputs: None,
            cancel_requested_at: None,
            queued_reason: None,
            origin: None,
            attempt: None,
            wait: None,
            approval_status: None,
        };
        let v = serde_json::to_value(&q).unwrap();
        assert!(v["robot"].is_null());
        assert!(v["started_at"].is_null());
    }

    /// A param the hub stores as JSON text and a robot reads back is the
    /// number the caller sent, to the last bit (serde_json's
    /// `float_roundtrip`). Found by the `hub_request` fuzz target.
    #[test]
    fn float_params_survive_a_round_trip() {
        let body = format!(
            r#"{{"workflow_id": 1, "params": {{"n": 2{}}}}}"#,
            "8".repeat(84)
        );
        let first: CreateSessionQueue = serde_json::from_str(&body).unwrap();
        let stored = serde_json::to_string(&first).unwrap();
        let read: CreateSessionQueue = serde_json::from_str(&stored).unwrap();
        assert_eq!(read, first, "stored as {stored}");
    }

    #[test]
    fn statuses_round_trip() {
        for s in SessionStatus::ALL {
            assert_eq!(s.as_str().parse::<SessionStatus>(), Ok(s));
        }
        assert!("done".parse::<SessionStatus>().is_err());
    }
}
