//! A browser ready before the session asks (`browser.warm`, agent mode).
//!
//! Starting chromedriver and Chromium is most of a short browser session's
//! time. [`WarmBrowsers`] keeps at most one browser started ahead, with the
//! robot's settings and no session's overrides, by a supervisor task of its
//! own that starts one whenever the agent says it wants one ([`want`]:
//! the robot has a free slot and is not draining).
//!
//! A session's first browser step ([`attach`], from `ensure_browser`) takes
//! it when it is the kind the step would launch, checks that it answers,
//! points Chromium's downloads at the session's directory and moves its
//! process record into the session's private directory: from then on it is
//! that session's browser like any other, torn down with it. Otherwise
//! (another window size, headed, a language or user agent of its own; it
//! died; it does not answer) it is ended and the step launches as before.
//! It is never shared: one browser serves one session, and the next is
//! started once the robot wants one again.
//!
//! While it waits, its tree is recorded in a private directory of the
//! robot's (`dir`), which the agent's sweep at start covers; the supervisor
//! checks every few seconds that it still answers, and ends and replaces
//! one that does not (Chromium crashed). [`close`](WarmBrowsers::close)
//! ends it (drain, `--once`, SIGTERM); a forced exit ends it with every
//! other tree (`process::kill_all_trees`).
//!
//! [`want`]: WarmBrowsers::want

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thirtyfour::WebDriver;
use thirtyfour::cdp::domains::browser::DownloadBehavior;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::launch::{Browser, Overrides, existing_downloads};
use crate::runtime::context::{ActionContext, BrowserSettings, ExecOptions};
use crate::runtime::event::LogLevel;

/// How often an idle warm browser is asked whether it still answers.
const WATCH_EVERY: Duration = Duration::from_secs(5);
/// How long a warm browser gets to answer before it counts as dead. A
/// dead Chromium is reported by chromedriver at once; this is for one that
/// hangs, and is generous because a busy machine (browsers starting on
/// every core) can delay a live one's answer by seconds.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How long a session's first browser step waits for a warm browser that
/// is still starting (it normally takes under a second) before it starts
/// its own.
const WAIT_FOR_START: Duration = Duration::from_secs(20);
/// The pause after a warm browser failed to start, doubled after each
/// failure in a row, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Something the supervisor has to say, for the agent's log.
#[derive(Debug, Clone)]
pub struct Note {
    pub warning: bool,
    pub message: String,
}

/// The robot's warm browser, if it has one: a cheap handle, shared by the
/// agent (which says when one is wanted, and closes it) and by the
/// sessions' options (whose first browser step takes it).
#[derive(Clone)]
pub struct WarmBrowsers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WarmBrowsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmBrowsers")
            .field("dir", &self.inner.dir)
            .field("ready", &self.is_ready())
            .finish()
    }
}

struct Inner {
    /// The robot's browser settings (without this handle).
    settings: BrowserSettings,
    /// The robot's options for the processes steps start, with `dir` as
    /// the private directory that holds the idle browser's record.
    options: ExecOptions,
    dir: PathBuf,
    /// What every warm browser is: the robot's settings, no overrides.
    kind: Kind,
    state: Mutex<State>,
    /// Sent whenever `state` or `wanted` changes.
    changed: watch::Sender<()>,
    wanted: AtomicBool,
    closed: CancellationToken,
    notes: Box<dyn Fn(Note) + Send + Sync>,
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    next_id: AtomicU64,
}

enum State {
    Empty,
    /// Being started; cancelled when a session set it aside first.
    Starting(CancellationToken),
    Ready(Box<Warm>),
}

struct Warm {
    browser: Browser,
    id: u64,
    ready_at: Instant,
}

/// What a step's browser would be: what the warm one must match.
#[derive(Debug, Clone, PartialEq)]
struct Kind {
    headless: bool,
    window_size: (u32, u32),
    lang: Option<String>,
    user_agent: Option<String>,
}

impl Kind {
    /// As `Browser::launch` resolves them.
    fn of(settings: &BrowserSettings, overrides: &Overrides) -> Kind {
        Kind {
            headless: overrides.headless.unwrap_or(settings.headless),
            window_size: overrides.window_size.unwrap_or(settings.window_size),
            lang: overrides.lang.clone().or_else(|| settings.lang.clone()),
            user_agent: overrides
                .user_agent
                .clone()
                .or_else(|| settings.user_agent.clone()),
        }
    }

    /// What `self`, a step's, asks that `warm` is not, for the log.
    fn differs(&self, warm: &Kind) -> Option<String> {
        let mut asks = Vec::new();
        if self.headless != warm.headless {
            asks.push(if self.headless {
                "a headless browser".to_string()
            } else {
                "a browser with a window (headless: false)".to_string()
            });
        }
        if self.window_size != warm.window_size {
            asks.push(format!(
                "a {}x{} window (the warm one is {}x{})",
                self.window_size.0, self.window_size.1, warm.window_size.0, warm.window_size.1
            ));
        }
        if self.lang != warm.lang {
            asks.push(format!(
                "the language {}",
                self.lang.as_deref().unwrap_or("of the system")
            ));
        }
        if self.user_agent != warm.user_agent {
            asks.push("a user agent of its own".to_string());
        }
        (!asks.is_empty()).then(|| asks.join(", "))
    }
}

/// What a session's first browser step got from the slot.
enum Taken {
    Browser(Box<Warm>),
    /// The warm browser was of another kind, and has been ended.
    SetAside(String),
    /// There was none to take, and why.
    Nothing(&'static str),
}

impl WarmBrowsers {
    /// A slot for a warm browser started with `settings` and `options`
    /// (the robot's), whose idle browser is recorded in `dir`. Nothing
    /// starts until [`start`](Self::start) and [`want`](Self::want).
    pub fn new(
        settings: BrowserSettings,
        options: ExecOptions,
        dir: PathBuf,
        notes: impl Fn(Note) + Send + Sync + 'static,
    ) -> WarmBrowsers {
        let settings = BrowserSettings {
            warm: None,
            ..settings
        };
        let options = ExecOptions {
            browser: settings.clone(),
            private_dir: Some(dir.clone()),
            ..options
        };
        let kind = Kind::of(&settings, &Overrides::default());
        WarmBrowsers {
            inner: Arc::new(Inner {
                settings,
                options,
                dir,
                kind,
                state: Mutex::new(State::Empty),
                changed: watch::Sender::new(()),
                wanted: AtomicBool::new(false),
                closed: CancellationToken::new(),
                notes: Box::new(notes),
                supervisor: Mutex::new(None),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Starts the supervisor, on the current runtime. Call it once what a
    /// killed agent left in `dir` has been ended.
    pub fn start(&self) {
        let mut supervisor = lock(&self.inner.supervisor);
        if supervisor.is_none() && !self.inner.closed.is_cancelled() {
            *supervisor = Some(tokio::spawn(supervise(self.inner.clone())));
        }
    }

    /// Whether a browser should be kept warm now: the robot has a free
    /// slot and takes work. One that is ready or starting stays either way.
    pub fn want(&self, wanted: bool) {
        if self.inner.wanted.swap(wanted, Ordering::SeqCst) != wanted {
            self.inner.changed.send_replace(());
        }
    }

    /// Whether a warm browser is waiting for a session now.
    pub fn is_ready(&self) -> bool {
        matches!(*lock(&self.inner.state), State::Ready(_))
    }

    /// The memory the waiting browser holds (see [`tree_memory`]); `None`
    /// when none waits, or it cannot be measured here. Reads /proc: call it
    /// off the async threads.
    pub fn memory(&self, with_pss: bool) -> Option<Memory> {
        let group = match &*lock(&self.inner.state) {
            State::Ready(w) => w.browser.driver_group()?,
            _ => return None,
        };
        tree_memory(group, with_pss)
    }

    /// Ends the warm browser, politely, or one being started, and stops
    /// the supervisor: the agent is exiting.
    pub async fn close(&self) {
        self.inner.closed.cancel();
        let supervisor = lock(&self.inner.supervisor).take();
        if let Some(task) = supervisor {
            // It drops a browser it was starting (which kills its
            // processes) as it sees the token.
            let _ = task.await;
        }
        let state = std::mem::replace(&mut *lock(&self.inner.state), State::Empty);
        match state {
            State::Ready(w) => w.browser.shutdown(true).await,
            State::Starting(abort) => abort.cancel(),
            State::Empty => {}
        }
        self.inner.changed.send_replace(());
    }

    /// Takes the warm browser for a step that wants a browser of `kind`:
    /// waits for one being started, ends one of another kind.
    async fn take(&self, kind: &Kind) -> Taken {
        let deadline = tokio::time::Instant::now() + WAIT_FOR_START;
        loop {
            let mut changed = self.inner.changed.subscribe();
            {
                if self.inner.closed.is_cancelled() {
                    return Taken::Nothing("the robot is stopping");
                }
                let mut state = lock(&self.inner.state);
                let differs = kind.differs(&self.inner.kind);
                match &*state {
                    State::Empty => return Taken::Nothing("none was ready"),
                    State::Starting(abort) => {
                        if let Some(why) = differs {
                            abort.cancel();
                            return Taken::SetAside(why);
                        }
                    }
                    State::Ready(_) => {
                        let State::Ready(warm) = std::mem::replace(&mut *state, State::Empty)
                        else {
                            unreachable!("matched as ready");
                        };
                        drop(state);
                        self.inner.changed.send_replace(());
                        return match differs {
                            None => Taken::Browser(warm),
                            Some(why) => {
                                discard(warm.browser);
                                Taken::SetAside(why)
                            }
                        };
                    }
                }
            }
            // Starting, and of the right kind: wait for it.
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return Taken::Nothing("the one being started was not ready in time"),
            }
        }
    }

    fn note(&self, warning: bool, message: String) {
        (self.inner.notes)(Note { warning, message });
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Ends a browser no session will use, in the background: the step that
/// set it aside goes on launching its own meanwhile. (Should the runtime
/// stop first, dropping the task drops the browser, which kills its
/// processes and removes its profile.)
fn discard(browser: Browser) {
    tokio::spawn(browser.shutdown(false));
}

/// The supervisor: starts a browser when one is wanted and none is there,
/// watches the one that waits, and replaces one that stops answering.
async fn supervise(inner: Arc<Inner>) {
    let handle = WarmBrowsers {
        inner: inner.clone(),
    };
    let mut failures = 0u32;
    loop {
        let mut changed = inner.changed.subscribe();
        if inner.closed.is_cancelled() {
            return;
        }
        enum Next {
            Start(CancellationToken),
            Watch(WebDriver, u64),
            Wait,
        }
        let next = {
            let mut state = lock(&inner.state);
            match &*state {
                State::Empty if inner.wanted.load(Ordering::SeqCst) => {
                    let abort = CancellationToken::new();
                    *state = State::Starting(abort.clone());
                    Next::Start(abort)
                }
                State::Ready(w) => match &w.browser.driver {
                    Some(driver) => Next::Watch(driver.clone(), w.id),
                    None => Next::Wait,
                },
                _ => Next::Wait,
            }
        };
        match next {
            Next::Start(abort) => {
                inner.changed.send_replace(());
                let started = Instant::now();
                // Private before the launch makes anything in it.
                if let Err(e) = crate::builtin::process::private_dir_all(&inner.dir) {
                    handle.note(true, format!("cannot create {}: {e}", inner.dir.display()));
                }
                let no_overrides = Overrides::default();
                let launch = async {
                    let browser = Browser::launch(
                        &inner.settings,
                        &no_overrides,
                        inner.dir.join("downloads"),
                        &inner.options,
                    )
                    .await?;
                    // Ready once its first page answers: on a busy machine
                    // that can take seconds after the launch, which are
                    // better spent here than in a session's first step.
                    match &browser.driver {
                        Some(driver) => match settled(driver).await {
                            Ok(()) => Ok(browser),
                            Err(why) => {
                                browser.shutdown(false).await;
                                Err(crate::runtime::registry::ActionError::new(
                                    super::launch::CODE_START,
                                    format!("it started but did not answer: {why}"),
                                ))
                            }
                        },
                        None => Ok(browser),
                    }
                };
                let launched = tokio::select! {
                    r = launch => Some(r),
                    _ = abort.cancelled() => None,
                    _ = inner.closed.cancelled() => None,
                };
                match launched {
                    Some(Ok(browser)) => {
                        let profile = browser
                            .profile_dir()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default();
                        // Kept only if nobody set it aside meanwhile.
                        let unwanted = {
                            let mut state = lock(&inner.state);
                            if matches!(*state, State::Starting(_))
                                && !abort.is_cancelled()
                                && !inner.closed.is_cancelled()
                            {
                                *state = State::Ready(Box::new(Warm {
                                    browser,
                                    id: inner.next_id.fetch_add(1, Ordering::Relaxed),
                                    ready_at: Instant::now(),
                                }));
                                None
                            } else {
                                *state = State::Empty;
                                Some(browser)
                            }
                        };
                        match unwanted {
                            Some(browser) => browser.shutdown(false).await,
                            None => {
                                failures = 0;
                                handle.note(
                                    false,
                                    format!(
                                        "a warm browser is ready for the next session ({} ms; profile {profile})",
                                        started.elapsed().as_millis()
                                    ),
                                );
                            }
                        }
                    }
                    Some(Err(e)) => {
                        *lock(&inner.state) = State::Empty;
                        failures += 1;
                        let pause =
                            (RETRY_FIRST * 2u32.saturating_pow(failures - 1)).min(RETRY_MAX);
                        handle.note(
                            true,
                            format!(
                                "cannot start a warm browser: {}; trying again in {} s (sessions start their own meanwhile)",
                                e.message,
                                pause.as_secs()
                            ),
                        );
                        inner.changed.send_replace(());
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = inner.closed.cancelled() => return,
                        }
                        continue;
                    }
                    // Set aside or closed before it was ready: dropping the
                    // launch killed what it had started.
                    None => *lock(&inner.state) = State::Empty,
                }
                inner.changed.send_replace(());
            }
            Next::Watch(driver, id) => {
                tokio::select! {
                    _ = changed.changed() => continue,
                    _ = inner.closed.cancelled() => return,
                    _ = tokio::time::sleep(WATCH_EVERY) => {}
                }
                let answered = tokio::select! {
                    r = answers(&driver) => r,
                    _ = inner.closed.cancelled() => return,
                };
                if let Err(why) = answered {
                    drop(driver);
                    let dead = {
                        let mut state = lock(&inner.state);
                        match &*state {
                            State::Ready(w) if w.id == id => {
                                match std::mem::replace(&mut *state, State::Empty) {
                                    State::Ready(w) => Some(w),
                                    _ => None,
                                }
                            }
                            _ => None,
                        }
                    };
                    if let Some(w) = dead {
                        handle.note(
                            true,
                            format!(
                                "the warm browser stopped answering ({why}); ending it and starting another"
                            ),
                        );
                        w.browser.shutdown(false).await;
                        inner.changed.send_replace(());
                    }
                }
            }
            Next::Wait => {
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = inner.closed.cancelled() => return,
                }
            }
        }
    }
}

/// Whether the browser answers a cheap command (its page's title), soon.
async fn answers(driver: &WebDriver) -> Result<(), String> {
    match tokio::time::timeout(ANSWER_WITHIN, driver.title()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(first_line(&e.to_string())),
        Err(_) => Err(format!("no answer within {} ms", ANSWER_WITHIN.as_millis())),
    }
}

/// [`answers`], with the time a browser that has just started may need.
async fn settled(driver: &WebDriver) -> Result<(), String> {
    const WITHIN: Duration = Duration::from_secs(30);
    match tokio::time::timeout(WITHIN, driver.title()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(first_line(&e.to_string())),
        Err(_) => Err(format!("no answer within {} s", WITHIN.as_secs())),
    }
}

fn first_line(text: &str) -> String {
    text.lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The warm browser for a session's first browser step, made the
/// session's: it answers, saves downloads in `downloads`, and its record is
/// in the session's private directory. `None` when the step must start its
/// own: the robot keeps no warm browser, none was ready, or it was of
/// another kind or did not answer (then it has been ended). The step's log
/// says which.
pub(super) async fn attach(
    ctx: &ActionContext,
    overrides: &Overrides,
    downloads: &Path,
) -> Option<Browser> {
    let settings = &ctx.options().browser;
    let warm = settings.warm.as_ref()?;
    if settings.remote_url.is_some() {
        return None;
    }
    let warm_one = match warm.take(&Kind::of(settings, overrides)).await {
        Taken::Browser(w) => w,
        Taken::SetAside(why) => {
            ctx.log(
                LogLevel::Info,
                &format!(
                    "the warm browser was not used and has been ended: this step asks for {why}"
                ),
            );
            return None;
        }
        Taken::Nothing(why) => {
            ctx.log(
                LogLevel::Info,
                &format!("no warm browser to attach to ({why})"),
            );
            return None;
        }
    };
    let Warm {
        mut browser,
        ready_at,
        ..
    } = *warm_one;
    if let Err(why) = hand_over(&browser, downloads).await {
        ctx.log(
            LogLevel::Warn,
            &format!("the warm browser did not answer ({why}); it has been ended"),
        );
        discard(browser);
        return None;
    }
    if let Some(private) = &ctx.options().private_dir
        && let Err(e) = browser.move_records(private)
    {
        // It stays recorded where it was, which the start's sweep covers too.
        ctx.log(
            LogLevel::Warn,
            &format!("cannot move the warm browser's process record into the session's private directory: {e}"),
        );
    }
    browser.downloads = downloads.to_path_buf();
    browser.claimed = existing_downloads(downloads);
    let profile = browser
        .profile_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    ctx.log(
        LogLevel::Info,
        &format!(
            "attached to the warm browser: {}, profile {profile}, ready {} ms before this step",
            browser.description,
            ready_at.elapsed().as_millis()
        ),
    );
    Some(browser)
}

/// Checks that the browser answers, and points its downloads at the
/// session's directory (its profile was set up before the session was
/// known): `Browser.setDownloadBehavior`, over chromedriver's CDP endpoint.
async fn hand_over(browser: &Browser, downloads: &Path) -> Result<(), String> {
    std::fs::create_dir_all(downloads)
        .map_err(|e| format!("cannot create {}: {e}", downloads.display()))?;
    let driver = browser
        .driver
        .as_ref()
        .ok_or_else(|| "it has been closed".to_string())?;
    answers(driver).await?;
    let cdp = driver.cdp();
    let domain = cdp.browser();
    let set = domain.set_download_behavior(
        DownloadBehavior::Allow,
        Some(downloads.display().to_string()),
    );
    match tokio::time::timeout(ANSWER_WITHIN, set).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "setting its downloads directory: {}",
            first_line(&e.to_string())
        )),
        Err(_) => Err("setting its downloads directory took too long".into()),
    }
}

/// The memory a browser's processes hold: chromedriver's process group
/// (Chromium and its helpers share it) and the processes outside it that
/// name its profile (Chromium's crash handlers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident memory summed over the processes: pages shared between
    /// them (Chromium's code, mostly) are counted once per process.
    pub rss_bytes: u64,
    /// Proportional set size summed: shared pages divided among their
    /// users, what the browser really takes; when asked for and readable.
    pub pss_bytes: Option<u64>,
    pub processes: usize,
}

/// The memory of the idle warm browser recorded in `dir` (the robot's
/// warm-browser directory), read from outside the agent: `tasuki doctor`.
/// `None` when no recorded browser is alive.
pub fn recorded_memory(dir: &Path, with_pss: bool) -> Option<Memory> {
    crate::builtin::tree_records::live_recorded_groups(dir)
        .into_iter()
        .find_map(|(group, _)| tree_memory(u32::try_from(group).ok()?, with_pss))
}

/// Starts a browser as the warm one is started, lets it settle for
/// `settle`, measures its memory and ends it: what a warm browser would
/// hold on this machine (`tasuki doctor`). Returns how long it took to
/// start, and its memory when it can be measured here.
pub async fn measure_idle(
    settings: &BrowserSettings,
    options: &ExecOptions,
    downloads: PathBuf,
    settle: Duration,
) -> Result<(Duration, Option<Memory>), crate::runtime::registry::ActionError> {
    let started = Instant::now();
    let browser = Browser::launch(settings, &Overrides::default(), downloads, options).await?;
    let took = started.elapsed();
    tokio::time::sleep(settle).await;
    let memory = browser
        .driver_group()
        .and_then(|group| tree_memory(group, true));
    browser.shutdown(true).await;
    Ok((took, memory))
}

/// The memory of chromedriver's process group `group` and of the processes
/// that name its members' profile (`--user-data-dir`); `None` when the
/// group has no live member or this is not Linux.
#[cfg(target_os = "linux")]
pub fn tree_memory(group: u32, with_pss: bool) -> Option<Memory> {
    struct Proc {
        dir: PathBuf,
        in_group: bool,
        cmdline: Vec<u8>,
    }
    let mut procs = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, _ppid, pgrp) = (fields.next(), fields.next(), fields.next());
        if matches!(state, Some("Z") | Some("X")) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        procs.push(Proc {
            dir: entry.path(),
            in_group: pgrp.and_then(|g| g.parse::<u32>().ok()) == Some(group),
            cmdline,
        });
    }
    const FLAG: &[u8] = b"--user-data-dir=";
    let profile: Option<Vec<u8>> = procs
        .iter()
        .filter(|p| p.in_group)
        .flat_map(|p| p.cmdline.split(|b| *b == 0))
        .find_map(|arg| arg.strip_prefix(FLAG).map(<[u8]>::to_vec))
        .filter(|p| p.len() >= 8);
    let members: Vec<&Proc> = procs
        .iter()
        .filter(|p| {
            p.in_group
                || profile
                    .as_ref()
                    .is_some_and(|needle| p.cmdline.windows(needle.len()).any(|w| w == needle))
        })
        .collect();
    if members.is_empty() {
        return None;
    }
    let kb = |file: &str, field: &str, dir: &Path| -> Option<u64> {
        std::fs::read_to_string(dir.join(file))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let rss: u64 = members
        .iter()
        .filter_map(|p| kb("status", "VmRSS:", &p.dir))
        .sum();
    let pss = with_pss
        .then(|| {
            members
                .iter()
                .map(|p| kb("smaps_rollup", "Pss:", &p.dir))
                .sum::<Option<u64>>()
        })
        .flatten();
    Some(Memory {
        rss_bytes: rss * 1024,
        pss_bytes: pss.map(|kb| kb * 1024),
        processes: members.len(),
    })
}

#[cfg(not(target_os = "linux"))]
pub fn tree_memory(_group: u32, _with_pss: bool) -> Option<Memory> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_matches_the_warm_browser_unless_it_overrides_something() {
        let settings = BrowserSettings::default();
        let warm = Kind::of(&settings, &Overrides::default());
        let same = Overrides {
            headless: Some(true),
            window_size: Some(settings.window_size),
            ..Overrides::default()
        };
        assert_eq!(Kind::of(&settings, &same).differs(&warm), None);
        let other = Overrides {
            headless: Some(false),
            window_size: Some((800, 600)),
            lang: Some("ja-JP".into()),
            user_agent: Some("robot".into()),
        };
        let why = Kind::of(&settings, &other).differs(&warm).unwrap();
        for part in [
            "a browser with a window",
            "a 800x600 window (the warm one is 1280x800)",
            "the language ja-JP",
            "a user agent of its own",
        ] {
            assert!(why.contains(part), "{why}");
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn our_own_group_is_measured() {
        let group = nix::unistd::getpgrp().as_raw() as u32;
        let m = tree_memory(group, true).expect("our group is alive");
        assert!(m.processes >= 1 && m.rss_bytes > 1024 * 1024, "{m:?}");
        assert!(tree_memory(u32::MAX - 1, false).is_none());
    }
}
