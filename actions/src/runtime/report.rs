//! What a session and its steps came to. These are the words the hub and
//! the local report use: AUTORO's session states plus `cancelled`.

use indexmap::IndexMap;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Queued,
    Running,
    /// Suspended at a waiting step (`runtime/wait.rs`): the report carries
    /// its checkpoint.
    Waiting,
    Success,
    Error,
    Cancelled,
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

impl SessionStatus {
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
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Success => "success",
            StepStatus::Error => "error",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

/// A failure, as every report and event carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    pub step_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub status: StepStatus,
    pub started_at: Option<Timestamp>,
    pub ended_at: Option<Timestamp>,
    pub duration_ms: Option<u64>,
    pub output: Value,
    pub error: Option<ErrorInfo>,
}

impl StepRecord {
    pub fn pending() -> Self {
        StepRecord {
            status: StepStatus::Pending,
            started_at: None,
            ended_at: None,
            duration_ms: None,
            output: Value::Null,
            error: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionReport {
    pub status: SessionStatus,
    pub started_at: Timestamp,
    pub ended_at: Timestamp,
    pub duration_ms: u64,
    /// Bound params, with secret values masked.
    pub params: Value,
    pub steps: IndexMap<String, StepRecord>,
    pub error: Option<ErrorInfo>,
    /// The workflow's `outputs:`, rendered when it succeeded; secret values
    /// masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Value>,
    /// For a `waiting` session: what it goes on from. Holds unmasked
    /// values; it goes to the hub and nowhere else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Box<super::wait::Checkpoint>>,
}

pub fn millis_between(start: Timestamp, end: Timestamp) -> u64 {
    end.duration_since(start).as_millis().max(0) as u64
}
