//! Windows and tabs: `browser.switch_window`, `browser.close_window` and
//! `browser.list_windows`.
//!
//! WebDriver has one current window per session, and it stays current
//! from step to step, so a switch carries over to later steps as a frame
//! does. What WebDriver does not know is which windows a session has
//! already seen (for `new: true`) and which window it came from (for
//! `close_window`): [`Windows`], kept on the session's [`Browser`], holds
//! that. It is filled lazily by the first window action, so steps that do
//! not use windows make no extra WebDriver call.
//!
//! Reading another window's title or URL means switching to it; WebDriver
//! then leaves any frame the session was in. So `list_windows`, and
//! `switch_window` by title or URL, leave the session on the top-level page
//! of the window they end on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regex::Regex;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use thirtyfour::common::command::Command;
use thirtyfour::error::{WebDriverError, WebDriverErrorInner};
use thirtyfour::{WebDriver, WindowHandle};

use super::{Browser, CODE_BROWSER, driver_error, run, run_acting};
use crate::builtin::args::DurationArg;
use crate::runtime::context::ActionContext;
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{ActionError, TypedAction, codes};

/// No window matched what `switch_window` asked for within its timeout.
pub const CODE_NO_WINDOW: &str = "window_not_found";

/// What a session knows of its windows beyond WebDriver's current one.
#[derive(Debug, Default)]
pub struct Windows {
    /// Every handle a window action has seen; `None` until the first one
    /// runs, which counts the window the session is on as seen (it is the
    /// browser's first window unless a window action switched, and none has).
    seen: Option<HashSet<String>>,
    /// The windows switched away from, most recent last: where
    /// `close_window` goes back to.
    came_from: Vec<String>,
}

impl Windows {
    fn seen(&mut self, current: Option<&str>) -> &mut HashSet<String> {
        self.seen
            .get_or_insert_with(|| current.map(str::to_string).into_iter().collect())
    }

    fn switched(&mut self, from: Option<&str>, to: &str) {
        if let Some(from) = from
            && from != to
        {
            self.came_from.retain(|h| h != from && h != to);
            self.came_from.push(from.to_string());
        }
    }
}

/// The session's window record (on its [`Browser`]), shared so that it is
/// never held across a WebDriver call.
pub type SharedWindows = Arc<Mutex<Windows>>;

async fn windows_of(ctx: &ActionContext) -> Result<SharedWindows, ActionError> {
    let mut resources = ctx.resources().await;
    resources
        .get_mut::<Browser>()
        .map(|b| b.windows.clone())
        .ok_or_else(|| ActionError::new(CODE_BROWSER, "the browser has been closed"))
}

fn lock(w: &SharedWindows) -> std::sync::MutexGuard<'_, Windows> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

fn no_such_window(e: &WebDriverError) -> bool {
    matches!(e.as_inner(), WebDriverErrorInner::NoSuchWindow(_))
}

/// The current window's handle; `None` when the page closed it.
/// chromedriver then answers either "no such window" or a null handle
/// (which thirtyfour's `window()` cannot decode), so the command is sent
/// as is.
async fn current_handle(driver: &WebDriver) -> Result<Option<String>, ActionError> {
    let read = match driver.cmd(Command::GetWindowHandle).await {
        Ok(r) => r.value::<Option<String>>(),
        Err(e) => Err(e),
    };
    match read {
        Ok(h) => Ok(h.filter(|h| !h.is_empty())),
        Err(e) if no_such_window(&e) => Ok(None),
        Err(e) => Err(driver_error("reading the current window", e)),
    }
}

async fn handles(driver: &WebDriver) -> Result<Vec<String>, ActionError> {
    Ok(driver
        .windows()
        .await
        .map_err(|e| driver_error("listing the windows", e))?
        .iter()
        .map(ToString::to_string)
        .collect())
}

async fn switch_to(driver: &WebDriver, handle: &str) -> Result<(), WebDriverError> {
    driver
        .switch_to_window(WindowHandle::from(handle.to_string()))
        .await
}

/// One window, as the outputs show it.
#[derive(Debug, Clone)]
struct Seen {
    handle: String,
    title: String,
    url: String,
}

impl Seen {
    fn json(&self) -> Value {
        json!({ "handle": self.handle, "title": self.title, "url": self.url })
    }

    fn describe(&self) -> String {
        format!("\"{}\" ({})", self.title, self.url)
    }
}

/// The title and URL of the window the session is on.
async fn read_current(driver: &WebDriver, handle: &str) -> Result<Seen, WebDriverError> {
    let url = driver.current_url().await?.to_string();
    let title = driver.title().await?;
    Ok(Seen {
        handle: handle.to_string(),
        title,
        url,
    })
}

/// Reads every window in `handles`, switching to each but the one the
/// session is on (`on`, updated). A window that closes meanwhile is left out.
async fn read_all(
    driver: &WebDriver,
    handles: &[String],
    on: &mut Option<String>,
) -> Result<Vec<Seen>, ActionError> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match read_one(driver, h, on).await {
            Ok(seen) => out.push(seen),
            Err(e) if no_such_window(&e) => continue,
            Err(e) => return Err(driver_error("reading a window", e)),
        }
    }
    Ok(out)
}

async fn read_one(
    driver: &WebDriver,
    handle: &str,
    on: &mut Option<String>,
) -> Result<Seen, WebDriverError> {
    if on.as_deref() != Some(handle) {
        switch_to(driver, handle).await?;
        *on = Some(handle.to_string());
    }
    read_current(driver, handle).await
}

/// Back to `original` after looking around, if the session left it and it
/// is still open; otherwise the session stays where it is.
async fn return_to(driver: &WebDriver, original: Option<&str>, on: &Option<String>) {
    if let Some(original) = original
        && on.as_deref() != Some(original)
    {
        let _ = switch_to(driver, original).await;
    }
}

// ---------------------------------------------------------------------
// browser.switch_window

pub struct SwitchWindow;

/// Exactly one of `title`, `title_matches`, `url`, `url_matches`, `index`,
/// `handle` or `new: true`. Waits up to `timeout` for a window that fits.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchWindowArgs {
    /// A window whose title contains this: the current one if it does,
    /// else the first in the browser's order.
    title: Option<String>,
    /// A window whose title matches this regular expression (the current
    /// one first, as for `title`).
    title_matches: Option<String>,
    /// A window whose URL contains this (the current one first).
    url: Option<String>,
    /// A window whose URL matches this regular expression (the current
    /// one first).
    url_matches: Option<String>,
    /// The window at this position in the browser's order, from 0.
    index: Option<u32>,
    /// The window with this handle (from `browser.list_windows`).
    handle: Option<String>,
    /// `true`: a window this session has not seen yet, such as the tab
    /// the previous step's click opened. Seen are the window the session
    /// was on when its first window action ran, the windows open at each
    /// `list_windows`, `close_window` and switch by other means, and those
    /// `new: true` switched to (so a second `new: true` reaches a second
    /// new tab).
    new: Option<bool>,
    /// How long to wait for such a window; the element timeout (30s) by
    /// default.
    timeout: Option<DurationArg>,
    /// How often to look while waiting; 50ms by default.
    poll: Option<DurationArg>,
}

const CRITERIA: [&str; 7] = [
    "title",
    "title_matches",
    "url",
    "url_matches",
    "index",
    "handle",
    "new",
];

enum Want {
    Title(String),
    TitleMatches(Regex),
    Url(String),
    UrlMatches(Regex),
    Index(usize),
    Handle(String),
    New,
}

impl Want {
    fn describe(&self) -> String {
        match self {
            Want::Title(t) => format!("window whose title contains \"{t}\""),
            Want::TitleMatches(r) => format!("window whose title matches `{r}`"),
            Want::Url(u) => format!("window whose URL contains \"{u}\""),
            Want::UrlMatches(r) => format!("window whose URL matches `{r}`"),
            Want::Index(i) => format!("window at index {i} (indexes start at 0)"),
            Want::Handle(h) => format!("window with the handle {h}"),
            Want::New => "window this session has not seen yet".into(),
        }
    }

    fn fits(&self, seen: &Seen) -> bool {
        match self {
            Want::Title(t) => seen.title.contains(t.as_str()),
            Want::TitleMatches(r) => r.is_match(&seen.title),
            Want::Url(u) => seen.url.contains(u.as_str()),
            Want::UrlMatches(r) => r.is_match(&seen.url),
            Want::Index(_) | Want::Handle(_) | Want::New => false,
        }
    }
}

fn regex(field: &str, pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| {
            // The parser's message draws a caret under the pattern; its
            // last line says what is wrong.
            let text = e.to_string();
            let why = text.lines().last().unwrap_or("").trim();
            let why = why.strip_prefix("error: ").unwrap_or(why);
            format!("`{pattern}` is not a valid regular expression for `{field}`: {why}")
        })
}

impl TypedAction for SwitchWindow {
    type Args = SwitchWindowArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let given = CRITERIA.iter().filter(|k| args.contains_key(**k)).count();
        if given != 1 {
            p.push((
                String::new(),
                "give exactly one of `title`, `title_matches`, `url`, `url_matches`, `index`, \
                 `handle` or `new: true`"
                    .into(),
            ));
        }
        if args.get("new") == Some(&Value::Bool(false)) {
            p.push((
                "new".into(),
                "`new: false` picks no window; leave it out, or give another way to find the window"
                    .into(),
            ));
        }
        for field in ["title_matches", "url_matches"] {
            if let Some(Value::String(pattern)) = args.get(field)
                && !pattern.contains("${")
                && let Err(m) = regex(field, pattern)
            {
                p.push((field.into(), m));
            }
        }
        p
    }

    async fn run(&self, ctx: &ActionContext, args: SwitchWindowArgs) -> Result<Value, ActionError> {
        let invalid = |field: &str, m: String| {
            ActionError::new(codes::INVALID_ARGS, format!("with.{field}: {m}"))
        };
        let want = match args {
            SwitchWindowArgs { title: Some(t), .. } => Want::Title(t),
            SwitchWindowArgs {
                title_matches: Some(r),
                ..
            } => Want::TitleMatches(
                regex("title_matches", &r).map_err(|m| invalid("title_matches", m))?,
            ),
            SwitchWindowArgs { url: Some(u), .. } => Want::Url(u),
            SwitchWindowArgs {
                url_matches: Some(r),
                ..
            } => Want::UrlMatches(regex("url_matches", &r).map_err(|m| invalid("url_matches", m))?),
            SwitchWindowArgs { index: Some(i), .. } => Want::Index(i as usize),
            SwitchWindowArgs {
                handle: Some(h), ..
            } => Want::Handle(h),
            SwitchWindowArgs {
                new: Some(true), ..
            } => Want::New,
            _ => {
                return Err(ActionError::new(
                    codes::INVALID_ARGS,
                    "give exactly one of `title`, `title_matches`, `url`, `url_matches`, `index`, \
                     `handle` or `new: true`",
                ));
            }
        };
        let settings = &ctx.options().browser;
        let timeout = args.timeout.map_or(settings.element_timeout, |d| d.0);
        let poll = args
            .poll
            .map_or(settings.poll_interval, |d| d.0)
            .max(Duration::from_millis(5));
        let want = Arc::new(want);
        run(ctx, None, move |h| {
            let want = want.clone();
            async move {
                let windows = windows_of(ctx).await?;
                let found = switch_window(&h.driver, &windows, &want, timeout, poll).await?;
                ctx.log(
                    LogLevel::Info,
                    &format!("switched to the window {}", found.describe()),
                );
                Ok(found.json())
            }
        })
        .await
    }
}

async fn switch_window(
    driver: &WebDriver,
    windows: &SharedWindows,
    want: &Want,
    timeout: Duration,
    poll: Duration,
) -> Result<Seen, ActionError> {
    let deadline = Instant::now() + timeout;
    let original = current_handle(driver).await?;
    lock(windows).seen(original.as_deref());
    let mut on = original.clone();
    loop {
        let all = handles(driver).await?;
        let pick = match want {
            Want::Index(i) => all.get(*i).cloned(),
            Want::Handle(wanted) => all.iter().find(|h| *h == wanted).cloned(),
            Want::New => {
                let mut w = lock(windows);
                let seen = w.seen(original.as_deref());
                all.iter().find(|h| !seen.contains(*h)).cloned()
            }
            _ => None,
        };
        let found = match pick {
            Some(handle) => match read_one(driver, &handle, &mut on).await {
                Ok(seen) => Some(seen),
                // Closed between the listing and the switch: look again.
                Err(e) if no_such_window(&e) => None,
                Err(e) => return Err(driver_error("switching windows", e)),
            },
            None if matches!(want, Want::Index(_) | Want::Handle(_) | Want::New) => None,
            None => {
                // By title or URL: the window the session was on first (no
                // switch needed the first time), then the others in the
                // browser's order.
                let mut found = None;
                let ordered: Vec<String> = original
                    .iter()
                    .filter(|h| all.contains(h))
                    .chain(all.iter().filter(|h| Some(*h) != original.as_ref()))
                    .cloned()
                    .collect();
                for handle in ordered {
                    match read_one(driver, &handle, &mut on).await {
                        Ok(seen) if want.fits(&seen) => {
                            found = Some(seen);
                            break;
                        }
                        Ok(_) => {}
                        Err(e) if no_such_window(&e) => {}
                        Err(e) => return Err(driver_error("reading a window", e)),
                    }
                }
                found
            }
        };
        if let Some(seen) = found {
            let mut w = lock(windows);
            w.switched(original.as_deref(), &seen.handle);
            let record = w.seen(original.as_deref());
            if matches!(want, Want::New) {
                // Other new windows stay new, for the next `new: true`.
                record.insert(seen.handle.clone());
            } else {
                record.extend(all.iter().cloned());
            }
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            let open = read_all(driver, &all, &mut on).await.unwrap_or_default();
            return_to(driver, original.as_deref(), &on).await;
            let listing = open
                .iter()
                .enumerate()
                .map(|(i, s)| format!("[{i}] {}", s.describe()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ActionError::new(
                CODE_NO_WINDOW,
                format!(
                    "no {} after waiting {} ms; the open windows are: {listing}",
                    want.describe(),
                    timeout.as_millis()
                ),
            ));
        }
        tokio::time::sleep(poll).await;
    }
}

// ---------------------------------------------------------------------
// browser.close_window

pub struct CloseWindow;

/// Closes the current window and switches to the one the session was on
/// before it (else the first left open). The browser's last window is not
/// closed: `browser.close` ends the browser.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseWindowArgs {}

impl TypedAction for CloseWindow {
    type Args = CloseWindowArgs;

    async fn run(&self, ctx: &ActionContext, _args: CloseWindowArgs) -> Result<Value, ActionError> {
        run_acting(ctx, None, move |h| async move {
            let windows = windows_of(ctx).await?;
            let driver = &h.driver;
            let current = current_handle(driver).await?;
            lock(&windows).seen(current.as_deref());
            let before = handles(driver).await?;
            if current.is_some() {
                if before.len() <= 1 {
                    return Err(ActionError::new(
                        codes::INVALID_ARGS,
                        "this is the browser's only window; browser.close ends the browser",
                    ));
                }
                match driver.close_window().await {
                    Ok(()) => {}
                    Err(e) if no_such_window(&e) => {}
                    Err(e) => return Err(driver_error("closing the window", e)),
                }
            }
            let remaining = handles(driver).await?;
            let Some(first) = remaining.first().cloned() else {
                return Err(ActionError::new(
                    CODE_BROWSER,
                    "no window is left open; browser.goto needs one (browser.close and a new \
                     browser.open start afresh)",
                ));
            };
            let target = {
                let mut w = lock(&windows);
                w.came_from.retain(|h| remaining.contains(h));
                w.seen(None).extend(remaining.iter().cloned());
                w.came_from.pop().unwrap_or(first)
            };
            let mut on = None;
            let seen = read_one(driver, &target, &mut on)
                .await
                .map_err(|e| driver_error("switching to the window left", e))?;
            let how = match current {
                Some(_) => "closed the window",
                None => "the window was already closed (by its page)",
            };
            ctx.log(
                LogLevel::Info,
                &format!("{how}; now on {}", seen.describe()),
            );
            let mut out = seen.json();
            out["closed"] = json!(current);
            Ok(out)
        })
        .await
    }
}

// ---------------------------------------------------------------------
// browser.list_windows

pub struct ListWindows;

/// Every open window, in the browser's order, with its title and URL. The
/// session stays on its window (at its top-level page, out of any frame,
/// when there are several: reading another window's title means switching
/// to it).
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListWindowsArgs {}

impl TypedAction for ListWindows {
    type Args = ListWindowsArgs;

    async fn run(&self, ctx: &ActionContext, _args: ListWindowsArgs) -> Result<Value, ActionError> {
        run(ctx, None, move |h| async move {
            let windows = windows_of(ctx).await?;
            let driver = &h.driver;
            let current = current_handle(driver).await?;
            let all = handles(driver).await?;
            // The current window first, so that with one window nothing
            // switches (and a frame the session is in is kept); listed in
            // the browser's order.
            let ordered: Vec<String> = current
                .iter()
                .filter(|h| all.contains(h))
                .chain(all.iter().filter(|h| Some(*h) != current.as_ref()))
                .cloned()
                .collect();
            let mut on = current.clone();
            let open = read_all(driver, &ordered, &mut on).await;
            return_to(driver, current.as_deref(), &on).await;
            let mut open = open?;
            open.sort_by_key(|s| all.iter().position(|h| *h == s.handle));
            lock(&windows)
                .seen(current.as_deref())
                .extend(all.iter().cloned());
            let list: Vec<Value> = open
                .iter()
                .map(|s| {
                    let mut v = s.json();
                    v["current"] = json!(current.as_deref() == Some(s.handle.as_str()));
                    v
                })
                .collect();
            Ok(json!({ "count": list.len(), "windows": list }))
        })
        .await
    }
}
