//! Session log lines, as the public API returns them.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::session::SessionStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<LogLevel> {
        [
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warn,
            LogLevel::Error,
        ]
        .into_iter()
        .find(|l| l.as_str() == s)
    }
}

/// One line. `seq` counts from 1 per session, without gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    #[serde(with = "crate::time::millis")]
    pub ts: Timestamp,
    pub level: LogLevel,
    pub step_id: Option<String>,
    pub message: String,
}

/// `GET /v1/session_queues/{id}/logs?after_seq=N`: the lines after `N`, in
/// order, and the session's status, so that a reader knows when to stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsResponse {
    pub logs: Vec<LogLine>,
    pub status: SessionStatus,
}
