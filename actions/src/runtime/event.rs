//! The stream of events a running session produces. The local terminal
//! display is one consumer; the control-plane shipper is another.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::report::{SessionReport, StepRecord};

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
}

/// One log line. `seq` counts from 1 within a session, without gaps, so a
/// receiver can tell what it has and ask for the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: u64,
    pub ts: Timestamp,
    pub level: LogLevel,
    pub step_id: Option<String>,
    pub message: String,
}

/// Secrets are masked before an event is built, so a sink can never leak one.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    SessionStarted {
        workflow: String,
        started_at: Timestamp,
    },
    StepStarted {
        step_id: String,
        action: String,
        /// 1 for the first attempt, 2 for the first retry, and so on.
        attempt: u32,
        started_at: Timestamp,
    },
    StepFinished {
        step_id: String,
        record: StepRecord,
    },
    Log(LogLine),
    SessionFinished(Box<SessionReport>),
}

/// Receives a session's events, in order. Called from the executor's task,
/// so an implementation should hand slow work off rather than block.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: Event);

    /// Resolves when the sink wants more log lines. Readers of a child's
    /// output await it before each read, so a consumer that falls behind
    /// slows the child down (its pipe fills and its writes block) instead
    /// of letting lines queue without bound. The default never waits.
    fn log_room(&self) -> LogRoom<'_> {
        Box::pin(std::future::ready(()))
    }
}

/// See [`EventSink::log_room`].
pub type LogRoom<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

/// Forwards events into an unbounded channel, for consumers that live in
/// their own task.
impl EventSink for tokio::sync::mpsc::UnboundedSender<Event> {
    fn emit(&self, event: Event) {
        // A consumer that went away has nothing left to tell; dropping is right.
        let _ = self.send(event);
    }
}

/// Discards everything; for benchmarks and callers that only want the report.
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _event: Event) {}
}
