//! What an action can see and do while it runs.

use std::any::Any;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use super::event::{Event, EventSink, LogLevel, LogLine};
use super::mask::{Masker, SessionMasker};

/// Settings that shape how actions behave, shared by every step of a session.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The session's id, as packs are told it: the hub's id on a robot,
    /// `local-…` for `tasuki run`.
    pub session_id: String,
    /// Default working directory of `shell.run`.
    pub work_dir: PathBuf,
    /// Where actions write files the session keeps (screenshots, downloads).
    pub artifacts_dir: PathBuf,
    /// Where actions keep what outlives the session, such as the cookies
    /// `browser.save_cookies` saves for a later session's
    /// `browser.load_cookies`: the work directory for `tasuki run`; on a
    /// robot, a folder per workflow kept across its sessions
    /// (`<work dir>/state/<workflow id>`), made private to the agent's
    /// account when an action first writes there.
    pub state_dir: PathBuf,
    /// Environment variables templates may read as `${env.NAME}`.
    pub env_allow: Vec<String>,
    /// How long a cancelled process tree gets between interrupt, terminate
    /// and kill.
    pub cancel_grace: Duration,
    /// Longer log lines are cut, with a marker saying so.
    pub max_log_line_bytes: usize,
    /// Larger HTTP responses fail the step rather than exhaust memory.
    pub max_response_bytes: usize,
    pub browser: BrowserSettings,
    // What the processes that steps start (`shell.run`, the browser) may
    // see; see `builtin::process::Tree::spawn_step`.
    /// Files those processes can neither read nor change: the robot's own
    /// credentials. Enforced by Landlock on Linux, nowhere else (see
    /// `builtin::confine::support`).
    pub protected_paths: Vec<PathBuf>,
    /// Variables of this process's environment passed on to them, by name
    /// or glob (`*`), beyond the base set of `builtin::step_env`.
    pub env_pass: Vec<String>,
    /// A private directory (0700) for the files made for the session's
    /// processes: scripts (which may hold secrets), their temporary
    /// directory, the records a restarted agent ends leftover trees by.
    /// `None`: scripts go to the system's temporary directory, unrecorded.
    pub private_dir: Option<PathBuf>,
}

/// How browser steps find and start their browser.
#[derive(Debug, Clone)]
pub struct BrowserSettings {
    /// Explicit paths; when unset, `PATH` and the usual install paths are searched.
    pub chromium: Option<PathBuf>,
    pub chromedriver: Option<PathBuf>,
    /// A remote WebDriver (such as Selenium Grid) to use instead of a local driver.
    pub remote_url: Option<String>,
    pub headless: bool,
    pub window_size: (u32, u32),
    pub lang: Option<String>,
    pub user_agent: Option<String>,
    /// How long element waits last and how often they poll, unless a step says otherwise.
    pub element_timeout: Duration,
    pub poll_interval: Duration,
    /// Whether `file:` and `view-source:` URLs may be opened; they read
    /// local files (see `builtin/browser/navigation.rs`).
    pub allow_file_urls: bool,
    /// What a browser step does about a dialog (alert, confirm, prompt)
    /// that no step was there to handle.
    pub unexpected_dialog: DialogPolicy,
    /// A robot's browser started ahead, which a session's first browser
    /// step takes when it fits (`builtin/browser/warm.rs`); `None` but on a
    /// robot with `browser.warm` on.
    pub warm: Option<crate::builtin::browser::warm::WarmBrowsers>,
}

/// What a browser step does about a dialog that no step expected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DialogPolicy {
    /// Fail the step, quoting the dialog, and dismiss the dialog so that
    /// later steps (`on_error`) can still use the browser.
    #[default]
    Fail,
    /// Accept it, log a warning with its text, and go on.
    Accept,
    /// Dismiss it, log a warning with its text, and go on.
    Dismiss,
}

impl DialogPolicy {
    pub const NAMES: &'static [&'static str] = &["fail", "accept", "dismiss"];

    pub fn parse(name: &str) -> Option<DialogPolicy> {
        match name {
            "fail" => Some(DialogPolicy::Fail),
            "accept" => Some(DialogPolicy::Accept),
            "dismiss" => Some(DialogPolicy::Dismiss),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DialogPolicy::Fail => "fail",
            DialogPolicy::Accept => "accept",
            DialogPolicy::Dismiss => "dismiss",
        }
    }
}

impl Default for BrowserSettings {
    fn default() -> Self {
        BrowserSettings {
            chromium: None,
            chromedriver: None,
            remote_url: None,
            headless: true,
            window_size: (1280, 800),
            lang: None,
            user_agent: None,
            element_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(50),
            allow_file_urls: false,
            unexpected_dialog: DialogPolicy::Fail,
            warm: None,
        }
    }
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            session_id: "local".into(),
            work_dir: PathBuf::from("."),
            artifacts_dir: PathBuf::from("tasuki-artifacts"),
            state_dir: PathBuf::from("."),
            env_allow: Vec::new(),
            cancel_grace: Duration::from_secs(5),
            max_log_line_bytes: 16 * 1024,
            max_response_bytes: 10 * 1024 * 1024,
            browser: BrowserSettings::default(),
            protected_paths: Vec::new(),
            env_pass: Vec::new(),
            private_dir: None,
        }
    }
}

/// Something a session keeps across steps, such as its browser, and must
/// tear down when the session ends, however it ends.
pub trait SessionResource: Any + Send {
    /// Ends the resource. `graceful` is false when the session was
    /// cancelled: then speed matters more than politeness.
    fn shutdown(self: Box<Self>, graceful: bool) -> Pin<Box<dyn Future<Output = ()> + Send>>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A session's resources, at most one of each type.
#[derive(Default)]
pub struct Resources {
    items: Vec<Box<dyn SessionResource>>,
}

impl Resources {
    pub fn get_mut<R: SessionResource>(&mut self) -> Option<&mut R> {
        self.items
            .iter_mut()
            .find_map(|r| r.as_any_mut().downcast_mut::<R>())
    }

    pub fn insert<R: SessionResource>(&mut self, resource: R) {
        self.items.retain_mut(|r| !r.as_any_mut().is::<R>());
        self.items.push(Box::new(resource));
    }

    /// Removes the resource of type `R`, for a caller that ends it early.
    pub fn take<R: SessionResource>(&mut self) -> Option<Box<dyn SessionResource>> {
        let i = self
            .items
            .iter_mut()
            .position(|r| r.as_any_mut().is::<R>())?;
        Some(self.items.remove(i))
    }

    pub(crate) fn drain(&mut self) -> Vec<Box<dyn SessionResource>> {
        std::mem::take(&mut self.items)
    }
}

/// Session-wide state that outlives single steps.
pub(crate) struct SessionShared {
    pub sink: Arc<dyn EventSink>,
    /// Starts with the secret params; actions may add to it (see
    /// [`ActionContext::add_secrets`]).
    pub masker: SessionMasker,
    pub options: ExecOptions,
    next_seq: AtomicU64,
    pub resources: tokio::sync::Mutex<Resources>,
    /// The session's cancel from outside (a person, a drain), which no
    /// timeout fires: error handlers that run after a timeout hang on it.
    pub stop: CancellationToken,
}

impl SessionShared {
    pub fn new(
        sink: Arc<dyn EventSink>,
        masker: Masker,
        options: ExecOptions,
        stop: CancellationToken,
    ) -> Self {
        SessionShared {
            sink,
            masker: SessionMasker::new(masker),
            options,
            next_seq: AtomicU64::new(1),
            resources: tokio::sync::Mutex::new(Resources::default()),
            stop,
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
    /// 1 for a step's first attempt, 2 for its first retry, and so on.
    pub attempt: u32,
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

    /// Waits until the session's sink wants more log lines (see
    /// [`crate::EventSink::log_room`]).
    pub async fn log_room(&self) {
        self.shared.sink.log_room().await
    }

    /// The session's resources. Steps run one at a time, so holding this
    /// for the length of an action is fine.
    pub async fn resources(&self) -> tokio::sync::MutexGuard<'_, Resources> {
        self.shared.resources.lock().await
    }

    pub fn mask(&self, text: &str) -> String {
        self.shared.masker.mask(text)
    }

    /// Masks `values` too, in every log line, step output and error from
    /// now on, for the rest of the session: values a step learns that are
    /// as secret as a secret param (a cookie's value). The workflow's
    /// variables keep the real values, so later steps can use them.
    pub fn add_secrets<I, S>(&self, values: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.shared.masker.add(values);
    }

    /// See [`Masker::cut_margin`]: what a reader cutting long lines keeps
    /// past the cut.
    pub fn mask_cut_margin(&self) -> usize {
        self.shared.masker.cut_margin()
    }

    /// `text` masked, then cut to `max` bytes (see [`Masker::mask_cut`]).
    pub fn mask_cut(&self, text: &[u8], max: usize) -> String {
        self.shared.masker.mask_cut(text, max)
    }

    /// The process's HTTP client: connections are reused across steps and
    /// sessions, and building one (a TLS setup, 3-15 ms) is paid once. It
    /// keeps no cookies, so sessions share nothing but the pool.
    pub fn http_client(&self) -> Result<&'static reqwest::Client, String> {
        shared_http_client()
    }
}

/// Builds the process-wide HTTP client now rather than in a session's first
/// HTTP step; a daemon calls it at start.
pub fn shared_http_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(c) = CLIENT.get() {
        return Ok(c);
    }
    // `http.request` follows redirects itself (see builtin/http.rs), and
    // `Referer` could carry secret query parameters to another host.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .referer(false)
        .user_agent(concat!("tasuki/", env!("CARGO_PKG_VERSION")))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    Ok(CLIENT.get_or_init(|| client))
}
