//! Schedules (a workflow's sessions queued by the hub at the times a cron
//! expression names) and webhook triggers (queued by signed requests):
//! hub/README.md, "Schedules" and "Webhook triggers".

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What a run that falls due while the schedule's previous session is
/// still queued or running does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The run is not started (the default).
    #[default]
    Skip,
    /// The run starts when the previous session ends; runs due meanwhile
    /// are folded into it.
    Queue,
    /// The previous session is cancelled, and the run starts.
    CancelPrevious,
}

/// What runs that fell due while no hub was running (more than a minute
/// late) become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// One run, at once, for all of them (the default).
    #[default]
    RunOnce,
    /// None: the schedule waits for its next time.
    Skip,
}

/// `POST /v1/workflows/{id}/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSchedule {
    /// Five fields (minute hour day-of-month month day-of-week), or six
    /// with seconds first.
    pub cron: String,
    /// An IANA time zone name; `UTC` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Values for the workflow's declared params, as a session's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Map<String, Value>>,
    #[serde(default)]
    pub overlap: Overlap,
    #[serde(default)]
    pub missed: Missed,
    /// `false` creates it paused.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// What the last due run of a schedule became.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleOutcome {
    Started,
    /// Skipped: the previous session was still queued or running.
    Skipped,
    /// Waiting for the previous session to end (`overlap: queue`).
    Waiting,
    /// Started after cancelling the previous session.
    CancelledPrevious,
    /// More than a minute late, and skipped (`missed: skip`).
    Missed,
    /// Refused by the workflow's concurrency policy (`on_limit: refuse`).
    AtLimit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub id: i64,
    pub workflow_id: i64,
    pub cron: String,
    pub timezone: String,
    /// Secret params shown as `***`.
    pub params: Map<String, Value>,
    pub overlap: Overlap,
    pub missed: Missed,
    pub enabled: bool,
    /// The next five times it runs; empty while paused.
    #[serde(with = "crate::time::millis_vec")]
    pub next_runs: Vec<Timestamp>,
    #[serde(with = "crate::time::millis_opt")]
    pub last_due_at: Option<Timestamp>,
    pub last_outcome: Option<ScheduleOutcome>,
    /// The session the schedule last queued.
    pub last_session_id: Option<i64>,
    #[serde(with = "crate::time::millis")]
    pub created_at: Timestamp,
}

/// `GET /v1/workflows/{id}/schedules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

/// `POST /v1/workflows/{id}/triggers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTrigger {
    /// Param name → a JSON Pointer (RFC 6901) into the request's body:
    /// `{"customer": "/data/customer/id"}`; `""` is the whole body.
    #[serde(default)]
    pub params_mapping: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    pub id: i64,
    pub workflow_id: i64,
    /// Where to send signed requests, on this hub.
    pub path: String,
    pub params_mapping: Map<String, Value>,
    /// The signing secret: in the answer that made the trigger only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(with = "crate::time::millis")]
    pub created_at: Timestamp,
}

/// `GET /v1/workflows/{id}/triggers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerList {
    pub triggers: Vec<Trigger>,
}

/// One change on the hub, as `GET /v1/audit_log` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "crate::time::millis")]
    pub at: Timestamp,
    /// The access key id that asked, or `operator` (the hub's command line).
    pub actor: String,
    /// `workflow.create`, `schedule.pause`, `key.delete`, …
    pub action: String,
    /// What it was done to: `workflow 3`, `schedule 7`, `key TSK…`.
    pub subject: String,
    pub detail: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditLog {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}
