//! Browser automation through WebDriver.
//!
//! A session has at most one browser, started by its first browser step
//! and kept until the session ends (or a `browser.close`), so cookies,
//! logins and tabs carry from step to step. Element waits are our own
//! polling loops (50 ms by default, rather than thirtyfour's 500 ms), which
//! also makes every wait interruptible by a cancel.

/// The fields of an element-taking action's arguments: the locator
/// (`locator::LocatorArgs`, spelled out because serde cannot combine
/// `flatten` with `deny_unknown_fields`), the wait, then the action's own.
macro_rules! element_args {
    ($(#[$meta:meta])* $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(serde::Deserialize, schemars::JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// A CSS selector for the element.
            selector: Option<String>,
            /// An XPath for the element, instead of `selector`.
            xpath: Option<String>,
            /// The element whose visible text (whitespace normalised) is exactly this.
            by_text: Option<String>,
            /// The element whose visible text contains this.
            by_text_contains: Option<String>,
            /// An ARIA role such as `button`, `link`, `textbox`, `checkbox`, `tab`;
            /// with `by_label`, the one with that accessible name.
            by_role: Option<String>,
            /// The accessible name (aria-label, its label, alt, text...), exactly.
            by_label: Option<String>,
            /// How long to wait for the element; 30s by default.
            timeout: Option<crate::builtin::args::DurationArg>,
            /// How often to look while waiting; 50ms by default.
            poll: Option<crate::builtin::args::DurationArg>,
            $($body)*
        }

        impl $name {
            #[allow(dead_code)]
            fn locator(&self) -> $crate::builtin::browser::locator::Locator {
                $crate::builtin::browser::locator::LocatorArgs {
                    selector: self.selector.clone(),
                    xpath: self.xpath.clone(),
                    by_text: self.by_text.clone(),
                    by_text_contains: self.by_text_contains.clone(),
                    by_role: self.by_role.clone(),
                    by_label: self.by_label.clone(),
                }
                .locator()
            }
            #[allow(dead_code)]
            fn wait(&self, ctx: &crate::runtime::context::ActionContext) -> $crate::builtin::browser::Wait {
                $crate::builtin::browser::Wait::from_args(ctx, self.timeout, self.poll)
            }
        }
    };
}

mod actions;
mod cookies;
mod dialogs;
mod forms;
mod input;
mod launch;
pub mod locator;
mod navigation;
mod page;
mod query;
pub mod warm;
mod windows;

use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use thirtyfour::error::{WebDriverError, WebDriverErrorInner};
use thirtyfour::{WebDriver, WebElement};

pub use locator::Locator;

pub use launch::{Browser, Overrides, find_chromedriver, find_chromium};
pub use navigation::{FILE_URLS_SETTING, NAVIGATING_ACTIONS, check_navigation};

use crate::runtime::context::{ActionContext, DialogPolicy};
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{ActionError, Registry, codes};

pub const CODE_NOT_FOUND: &str = "element_not_found";
pub const CODE_BROWSER: &str = "browser_error";
pub const CODE_SCRIPT: &str = "script_error";
pub const CODE_DOWNLOAD: &str = "download_timeout";

pub fn register(r: &mut Registry) {
    r.register("browser.open", actions::Open);
    r.register("browser.goto", actions::Goto);
    r.register("browser.go_back", actions::History::Back);
    r.register("browser.go_forward", actions::History::Forward);
    r.register("browser.reload", actions::History::Reload);
    r.register("browser.click", actions::Click);
    r.register("browser.type", actions::Type);
    r.register("browser.select", actions::Select);
    r.register("browser.upload", actions::Upload);
    r.register("browser.get_text", actions::GetText);
    r.register("browser.get_attribute", actions::GetAttribute);
    r.register("browser.wait_for", actions::WaitFor);
    r.register("browser.execute_script", actions::ExecuteScript);
    r.register("browser.extract_table", actions::ExtractTable);
    r.register("browser.screenshot", actions::Screenshot);
    r.register("browser.get_url", actions::GetUrl);
    r.register("browser.switch_frame", actions::SwitchFrame);
    r.register("browser.wait_for_download", actions::WaitForDownload);
    r.register("browser.close", actions::Close);
    r.register("browser.accept_dialog", dialogs::AcceptDialog);
    r.register("browser.dismiss_dialog", dialogs::DismissDialog);
    r.register("browser.press_keys", input::PressKeys);
    r.register("browser.hover", input::Hover);
    r.register("browser.double_click", input::DoubleClick);
    r.register("browser.right_click", input::RightClick);
    r.register("browser.drag_and_drop", input::DragAndDrop);
    r.register("browser.scroll", input::Scroll);
    r.register("browser.check", forms::Check { want: true });
    r.register("browser.uncheck", forms::Check { want: false });
    r.register("browser.clear", forms::Clear);
    r.register("browser.get_state", forms::GetState);
    r.register("browser.count", query::Count { as_exists: false });
    r.register("browser.exists", query::Count { as_exists: true });
    r.register("browser.wait_for_url", query::WaitForPage { title: false });
    r.register("browser.wait_for_title", query::WaitForPage { title: true });
    r.register("browser.switch_window", windows::SwitchWindow);
    r.register("browser.close_window", windows::CloseWindow);
    r.register("browser.list_windows", windows::ListWindows);
    r.register("browser.get_cookies", cookies::GetCookies);
    r.register("browser.add_cookie", cookies::AddCookie);
    r.register("browser.delete_cookies", cookies::DeleteCookies);
    r.register("browser.save_cookies", cookies::SaveCookies);
    r.register("browser.load_cookies", cookies::LoadCookies);
    r.register("browser.get_html", page::GetHtml);
    r.register("browser.print_pdf", page::PrintPdf);
}

/// What a browser action works with: cheap clones of the session's browser.
#[derive(Clone)]
pub struct Handle {
    pub driver: WebDriver,
    pub downloads: PathBuf,
    pub claimed: Arc<Mutex<Vec<PathBuf>>>,
}

/// How long to wait for an element, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    pub timeout: Duration,
    pub poll: Duration,
}

impl Wait {
    /// A step's `timeout` and `poll`, or the robot's defaults.
    pub fn from_args(
        ctx: &ActionContext,
        timeout: Option<crate::builtin::args::DurationArg>,
        poll: Option<crate::builtin::args::DurationArg>,
    ) -> Wait {
        let settings = &ctx.options().browser;
        Wait {
            timeout: timeout.map_or(settings.element_timeout, |d| d.0),
            poll: poll
                .map_or(settings.poll_interval, |d| d.0)
                .max(Duration::from_millis(5)),
        }
    }
}

/// Checks shared by every action that takes an element: one way to find
/// it, or none when it is optional.
pub fn check_locator(args: &Map<String, Value>, required: bool) -> Vec<(String, String)> {
    locator::check(args, required, "")
}

/// Runs `op` against the session's browser, starting it first if needed.
/// A cancel interrupts at once; a failure saves a screenshot and the page
/// URL as artifacts and names them in the error. For steps that only read,
/// or whose effect is the same done twice (click, select, switch): a
/// dialog that no step expected is handled by the session's policy (see
/// `dialogs.rs`): the step fails quoting it, or the dialog is answered and
/// `op` runs again, which is why `op` is `FnMut`.
pub async fn run<F, Fut>(
    ctx: &ActionContext,
    overrides: Option<&Overrides>,
    op: F,
) -> Result<Value, ActionError>
where
    F: FnMut(Handle) -> Fut,
    Fut: Future<Output = Result<Value, ActionError>>,
{
    run_op(ctx, overrides, Repeat::Safe, op).await
}

/// [`run`] for steps that act and must not act twice (navigate, type,
/// press keys, run a script, close a window, change cookies): `op` runs
/// once. A dialog already open when the step starts is answered first by
/// an accept or dismiss policy; one that opens while `op` acts is answered
/// too, and the step fails saying so, since part of it may have taken
/// effect.
pub async fn run_acting<F, Fut>(
    ctx: &ActionContext,
    overrides: Option<&Overrides>,
    op: F,
) -> Result<Value, ActionError>
where
    F: FnMut(Handle) -> Fut,
    Fut: Future<Output = Result<Value, ActionError>>,
{
    run_op(ctx, overrides, Repeat::Never, op).await
}

/// Whether `op` may run again after a dialog interrupted it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Safe,
    Never,
}

async fn run_op<F, Fut>(
    ctx: &ActionContext,
    overrides: Option<&Overrides>,
    repeat: Repeat,
    mut op: F,
) -> Result<Value, ActionError>
where
    F: FnMut(Handle) -> Fut,
    Fut: Future<Output = Result<Value, ActionError>>,
{
    let handle = tokio::select! {
        h = ensure_browser(ctx, overrides) => h?,
        _ = ctx.cancel.cancelled() => return Err(cancelled()),
    };
    let evidence_driver = handle.driver.clone();
    let answers = ctx.options().browser.unexpected_dialog != DialogPolicy::Fail;
    if repeat == Repeat::Never && answers {
        // A dialog an earlier step left open refuses `op`'s first command,
        // before anything took effect; answering it first lets `op` run
        // once, whole. (Under `fail` that refusal is the step's error.)
        tokio::select! {
            r = dialogs::unexpected(ctx, &handle.driver, 0) => r?,
            _ = ctx.cancel.cancelled() => return Err(cancelled()),
        }
    }
    let mut answered = 0;
    loop {
        let result = tokio::select! {
            r = op(handle.clone()) => r,
            _ = ctx.cancel.cancelled() => return Err(cancelled()),
        };
        let mut error = match result {
            Ok(v) => return Ok(v),
            Err(e) if e.code == codes::CANCELLED => return Err(e),
            Err(e) if e.code == dialogs::CODE_DIALOG_OPEN => {
                match dialogs::unexpected(ctx, &handle.driver, answered).await {
                    // (Bounded: `unexpected` gives up after a few dialogs,
                    // and a refusal with no dialog to read is not retried
                    // forever either.)
                    Ok(()) if repeat == Repeat::Safe && answered < 20 => {
                        answered += 1;
                        continue;
                    }
                    Ok(()) => dialogs::answered_mid_step(),
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        if let Some(note) = save_evidence(ctx, &evidence_driver).await {
            error.message.push_str(&note);
        }
        return Err(error);
    }
}

fn cancelled() -> ActionError {
    ActionError::new(codes::CANCELLED, "the browser step was cancelled")
}

async fn ensure_browser(
    ctx: &ActionContext,
    overrides: Option<&Overrides>,
) -> Result<Handle, ActionError> {
    let mut resources = ctx.resources().await;
    if resources.get_mut::<Browser>().is_none() {
        let settings = &ctx.options().browser;
        // Chromium needs an absolute download directory.
        let downloads = ctx.options().artifacts_dir.join("downloads");
        let downloads = std::path::absolute(&downloads).unwrap_or(downloads);
        let overrides = overrides.unwrap_or(&Overrides::default()).clone();
        // A robot's warm browser, when it has one of the kind the step
        // wants (see warm.rs); it logs what it did.
        let browser = match warm::attach(ctx, &overrides, &downloads).await {
            Some(browser) => browser,
            None => {
                let browser =
                    Browser::launch(settings, &overrides, downloads.clone(), ctx.options()).await?;
                ctx.log(LogLevel::Info, &format!("started {}", browser.description));
                browser
            }
        };
        resources.insert(browser);
    } else if overrides.is_some() {
        ctx.log(
            LogLevel::Info,
            "the session's browser is already open; reusing it",
        );
    }
    let browser = resources
        .get_mut::<Browser>()
        .ok_or_else(|| ActionError::new(CODE_BROWSER, "the browser vanished"))?;
    Ok(Handle {
        driver: browser.driver()?.clone(),
        downloads: browser.downloads.clone(),
        claimed: browser.claimed.clone(),
    })
}

/// Ends the session's browser, if there is one.
pub async fn close(ctx: &ActionContext) -> bool {
    let taken = ctx.resources().await.take::<Browser>();
    match taken {
        Some(browser) => {
            browser.shutdown(true).await;
            true
        }
        None => false,
    }
}

async fn save_evidence(ctx: &ActionContext, driver: &WebDriver) -> Option<String> {
    let capture = async {
        let png = driver.screenshot_as_png().await.ok();
        let url = driver.current_url().await.ok().map(|u| u.to_string());
        (png, url)
    };
    // Evidence is worth a few seconds, but never a late cancel.
    let (png, url) = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(5), capture) => r.ok()?,
        _ = ctx.cancel.cancelled() => return None,
    };
    let mut saved = Vec::new();
    if let Some(png) = png
        && let Ok(path) = write_artifact(ctx, &format!("{}-failure.png", ctx.step_id), &png)
    {
        saved.push(format!("screenshot {}", path.display()));
    }
    if let Some(url) = url {
        let url = ctx.mask(&url);
        if let Ok(path) = write_artifact(
            ctx,
            &format!("{}-failure-url.txt", ctx.step_id),
            url.as_bytes(),
        ) {
            saved.push(format!("page URL {url} (saved in {})", path.display()));
        }
    }
    (!saved.is_empty()).then(|| format!("; evidence: {}", saved.join(", ")))
}

/// Writes a file under the artifacts directory and returns its path. The
/// name must stay inside that directory.
pub fn write_artifact(
    ctx: &ActionContext,
    name: &str,
    bytes: &[u8],
) -> Result<PathBuf, ActionError> {
    check_relative(name).map_err(|m| ActionError::new(codes::INVALID_ARGS, m))?;
    let path = ctx.options().artifacts_dir.join(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            ActionError::new(
                CODE_BROWSER,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
    }
    std::fs::write(&path, bytes).map_err(|e| {
        ActionError::new(
            CODE_BROWSER,
            format!("cannot write {}: {e}", path.display()),
        )
    })?;
    Ok(std::path::absolute(&path).unwrap_or(path))
}

pub fn check_relative(name: &str) -> Result<(), String> {
    let p = Path::new(name);
    if name.is_empty()
        || p.is_absolute()
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(format!(
            "`{name}` must be a relative path inside the artifacts directory, without `..`"
        ));
    }
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Errors worth another look: the page may still be changing.
fn retriable(e: &WebDriverError) -> bool {
    matches!(
        e.as_inner(),
        WebDriverErrorInner::NoSuchElement(_)
            | WebDriverErrorInner::StaleElementReference(_)
            | WebDriverErrorInner::ElementNotInteractable(_)
            | WebDriverErrorInner::ElementClickIntercepted(_)
            | WebDriverErrorInner::InvalidElementState(_)
    )
}

/// Errors worth another look by a step that only reads the page. A page
/// that is loading (a reload, a redirect) can answer a look with
/// ChromeDriver's bare "unknown error" while its document is swapped; a
/// read is safe to repeat, an act (a click) is not, so only reads retry it.
pub fn retriable_while_reading(e: &WebDriverError) -> bool {
    retriable(e) || matches!(e.as_inner(), WebDriverErrorInner::UnknownError(_))
}

pub fn driver_error(what: &str, e: WebDriverError) -> ActionError {
    let code = match e.as_inner() {
        WebDriverErrorInner::UnexpectedAlertOpen(_) => dialogs::CODE_DIALOG_OPEN,
        WebDriverErrorInner::JavascriptError(_) => CODE_SCRIPT,
        WebDriverErrorInner::InvalidSelector(_) => codes::INVALID_ARGS,
        _ => CODE_BROWSER,
    };
    // The WebDriver error text is long; its first line says what happened.
    let text = e.to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    ActionError::new(code, format!("{what}: {first}"))
}

/// Finds the element and applies `op` to it, retrying while the element
/// is missing, stale or not yet interactable, until the wait runs out.
pub async fn with_element<T, F, Fut>(
    h: &Handle,
    locator: &Locator,
    wait: Wait,
    what: &str,
    mut op: F,
) -> Result<T, ActionError>
where
    F: FnMut(WebElement) -> Fut,
    Fut: Future<Output = Result<T, WebDriverError>>,
{
    let deadline = Instant::now() + wait.timeout;
    let mut last: Option<String>;
    loop {
        match locator.find_all(&h.driver).await {
            Ok(found) => match found.into_iter().next() {
                Some(element) => match op(element).await {
                    Ok(v) => return Ok(v),
                    Err(e) if retriable(&e) => last = Some(first_line(&e)),
                    Err(e) => return Err(driver_error(what, e)),
                },
                None => last = None,
            },
            // Finding is a read, safe to repeat while the page loads.
            Err(e) if retriable_while_reading(&e) => last = Some(first_line(&e)),
            Err(e) => {
                return Err(driver_error(
                    &format!("{what}: finding {}", locator.describe()),
                    e,
                ));
            }
        }
        if Instant::now() >= deadline {
            let why = match last {
                Some(reason) => format!("an element matched but {what} kept failing: {reason}"),
                None => "no element matched".into(),
            };
            return Err(ActionError::new(
                CODE_NOT_FOUND,
                format!(
                    "{what}: {} after waiting {} ms for {}",
                    why,
                    wait.timeout.as_millis(),
                    locator.describe()
                ),
            ));
        }
        tokio::time::sleep(wait.poll).await;
    }
}

pub fn first_line(e: &WebDriverError) -> String {
    e.to_string()
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}
