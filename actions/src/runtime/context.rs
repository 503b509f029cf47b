//! What an action can see and do while it runs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use super::event::{Event, EventSink, LogLevel, LogLine};
use super::mask::Masker;

/// Settings that shape how actions behave, shared by every step of a session.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Default working directory of `shell.run`.
    pub work_dir: PathBuf,
    /// Where actions write files the session keeps (screenshots, downloads).
    pub artifacts_dir: PathBuf,
    /// Environment variables templates may read as `${env.NAME}`.
    pub env_allow: Vec<String>,
    /// How long a cancelled process tree gets between interrupt, terminate
    /// and kill.
    pub cancel_grace: Duration,
    /// Longer log lines are cut, with a marker saying so.
    pub max_log_line_bytes: usize,
    /// Larger HTTP responses fail the step rather than exhaust memory.
    pub max_response_bytes: usize,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            work_dir: PathBuf::from("."),
            artifacts_dir: PathBuf::from("tasuki-artifacts"),
            env_allow: Vec::new(),
            cancel_grace: Duration::from_secs(5),
            max_log_line_bytes: 16 * 1024,
            max_response_bytes: 10 * 1024 * 1024,
        }
    }
}

/// Session-wide state that outlives single steps.
pub(crate) struct SessionShared {
    pub sink: Arc<dyn EventSink>,
    pub masker: Masker,
    pub options: ExecOptions,
    next_seq: AtomicU64,
    http: OnceLock<reqwest::Client>,
}

impl SessionShared {
    pub fn new(sink: Arc<dyn EventSink>, masker: Masker, options: ExecOptions) -> Self {
        SessionShared {
            sink,
            masker,
            options,
            next_seq: AtomicU64::new(1),
            http: OnceLock::new(),
        }
    }

    pub fn log(&self, level: LogLevel, step_id: Option<&str>, message: &str) {
        let mut message = message.to_string();
        self.masker.mask_in_place(&mut message);
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        self.sink.emit(Event::Log(LogLine {
            seq,
            ts: Timestamp::now(),
            level,
            step_id: step_id.map(str::to_string),
            message,
        }));
    }
}

/// Handed to an action for one attempt of one step.
pub struct ActionContext {
    pub step_id: String,
    /// Cancelled when the session is cancelled or the step times out.
    pub cancel: CancellationToken,
    pub(crate) shared: Arc<SessionShared>,
}

impl ActionContext {
    pub fn log(&self, level: LogLevel, message: &str) {
        self.shared.log(level, Some(&self.step_id), message);
    }

    pub fn options(&self) -> &ExecOptions {
        &self.shared.options
    }

    pub fn mask(&self, text: &str) -> String {
        self.shared.masker.mask(text)
    }

    /// One HTTP client per session, so connections are reused across steps.
    pub fn http_client(&self) -> Result<&reqwest::Client, String> {
        if let Some(c) = self.shared.http.get() {
            return Ok(c);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("tasuki/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(self.shared.http.get_or_init(|| client))
    }
}
