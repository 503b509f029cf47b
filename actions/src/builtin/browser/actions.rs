//! The browser actions. Each one parses its arguments, then does its work
//! inside `super::run`, which supplies the browser, cancellation and
//! failure evidence.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use thirtyfour::By;
use thirtyfour::error::{WebDriverError, WebDriverErrorInner};

use super::locator::xpath_literal;
use super::{
    CODE_BROWSER, CODE_DOWNLOAD, CODE_NOT_FOUND, Handle, Locator, Overrides, check_locator,
    check_navigation, driver_error, first_line, retriable_while_reading, run, run_acting,
    sha256_hex, with_element, write_artifact,
};
use crate::builtin::args::{DurationArg, Text};
use crate::runtime::context::ActionContext;
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{ActionError, TypedAction, codes};

pub struct Open;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenArgs {
    /// A page to open once the browser is up.
    url: Option<String>,
    /// Overrides the robot's setting; `false` needs a desktop.
    headless: Option<bool>,
    /// `[width, height]` in pixels.
    window_size: Option<[u32; 2]>,
    /// The browser's language, such as `ja-JP`.
    lang: Option<String>,
    user_agent: Option<String>,
}

impl TypedAction for Open {
    type Args = OpenArgs;

    async fn run(&self, ctx: &ActionContext, args: OpenArgs) -> Result<Value, ActionError> {
        let overrides = Overrides {
            headless: args.headless,
            window_size: args.window_size.map(|[w, h]| (w, h)),
            lang: args.lang.clone(),
            user_agent: args.user_agent.clone(),
        };
        if let Some(url) = &args.url {
            navigable(ctx, url)?;
        }
        let args = &args;
        run_acting(ctx, Some(&overrides), |h| async move {
            if let Some(url) = &args.url {
                h.driver
                    .goto(url.as_str())
                    .await
                    .map_err(|e| driver_error(&format!("opening {url}"), e))?;
            }
            where_now(ctx, &h).await
        })
        .await
    }
}

pub struct Goto;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GotoArgs {
    url: String,
}

impl TypedAction for Goto {
    type Args = GotoArgs;

    async fn run(&self, ctx: &ActionContext, args: GotoArgs) -> Result<Value, ActionError> {
        navigable(ctx, &args.url)?;
        let args = &args;
        run_acting(ctx, None, |h| async move {
            h.driver
                .goto(args.url.as_str())
                .await
                .map_err(|e| driver_error(&format!("opening {}", args.url), e))?;
            where_now(ctx, &h).await
        })
        .await
    }
}

/// `browser.go_back`, `browser.go_forward` and `browser.reload`: through
/// the page's history, waiting for the page to load as `browser.goto` does.
pub enum History {
    Back,
    Forward,
    Reload,
}

impl TypedAction for History {
    type Args = NoArgs;

    async fn run(&self, ctx: &ActionContext, _args: NoArgs) -> Result<Value, ActionError> {
        run_acting(ctx, None, |h| async move {
            let (done, what) = match self {
                History::Back => (h.driver.back().await, "going back"),
                History::Forward => (h.driver.forward().await, "going forward"),
                History::Reload => (h.driver.refresh().await, "reloading the page"),
            };
            done.map_err(|e| driver_error(what, e))?;
            where_now(ctx, &h).await
        })
        .await
    }
}

/// The page's URL and title: what a step that moves the page answers. The
/// page it arrived at may open a dialog as it loads: that one meets the
/// session's policy here, where reading again repeats nothing.
async fn where_now(ctx: &ActionContext, h: &Handle) -> Result<Value, ActionError> {
    let mut answered = 0;
    loop {
        let read = async {
            let url = h
                .driver
                .current_url()
                .await
                .map_err(|e| driver_error("reading the URL", e))?;
            let title = h
                .driver
                .title()
                .await
                .map_err(|e| driver_error("reading the title", e))?;
            Ok::<_, ActionError>(json!({ "url": url.to_string(), "title": title }))
        };
        match read.await {
            Err(e) if e.code == super::dialogs::CODE_DIALOG_OPEN => {
                super::dialogs::unexpected(ctx, &h.driver, answered).await?;
                answered += 1;
            }
            other => return other,
        }
    }
}

/// Checked when the step runs, whatever validation saw: the URL may come
/// from a template.
fn navigable(ctx: &ActionContext, url: &str) -> Result<(), ActionError> {
    let allow = ctx.options().browser.allow_file_urls;
    check_navigation(url, Some(allow))
        .map_err(|m| ActionError::new(codes::INVALID_ARGS, format!("with.url: {m}")))
}

element_args!(ClickArgs {});
pub struct Click;

impl TypedAction for Click {
    type Args = ClickArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: ClickArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let locator = &locator;
        run(ctx, None, |h| async move {
            with_element(
                &h,
                locator,
                wait,
                "click",
                |el| async move { el.click().await },
            )
            .await?;
            Ok(json!({ "clicked": true }))
        })
        .await
    }
}

element_args!(TypeArgs {
    /// The text to type. A secret param stays masked in the logs.
    text: Text,
    /// Clear the field first.
    #[serde(default)]
    clear: bool,
    /// A pause between keys, for pages that react to each keystroke.
    key_delay: Option<DurationArg>,
});
pub struct Type;

impl TypedAction for Type {
    type Args = TypeArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: TypeArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let text = args.text.0.clone();
        let chars = text.chars().count();
        let (args, locator, text) = (&args, &locator, &text);
        let result = run_acting(ctx, None, |h| async move {
            // Clearing and the first keys go inside the retry, so a field
            // that is present but not yet interactable is waited for.
            let mut chars_iter = text.chars();
            let first: String = match args.key_delay {
                None => text.clone(),
                Some(_) => chars_iter.next().map(String::from).unwrap_or_default(),
            };
            let clear = args.clear;
            let (element, file_input) = with_element(&h, locator, wait, "type", |el| {
                let first = first.clone();
                async move {
                    // Keys sent to a file input select the files they name
                    // (WebDriver's rule), which would get round the upload
                    // confinement: only browser.upload fills file inputs.
                    if el.prop("type").await?.as_deref() == Some("file") {
                        return Ok((el, true));
                    }
                    if clear {
                        el.clear().await?;
                    }
                    if !first.is_empty() {
                        el.send_keys(first.as_str()).await?;
                    }
                    Ok((el, false))
                }
            })
            .await?;
            if file_input {
                return Err(ActionError::new(
                    codes::INVALID_ARGS,
                    format!(
                        "{} is a file input: browser.type cannot fill it; use browser.upload \
                         with a file from the session's work directory",
                        locator.describe()
                    ),
                ));
            }
            if let Some(delay) = args.key_delay {
                for ch in chars_iter {
                    tokio::time::sleep(delay.0).await;
                    element
                        .send_keys(ch.to_string())
                        .await
                        .map_err(|e| driver_error("type", e))?;
                }
            }
            Ok(json!({ "typed_characters": chars }))
        })
        .await;
        if result.is_ok() {
            // Logged through the masker, so a secret shows as ***.
            ctx.log(LogLevel::Info, &format!("typed \"{}\"", args.text.0));
        }
        result
    }
}

element_args!(SelectArgs {
    /// The option's `value` attribute.
    value: Option<String>,
    /// The option's visible text.
    label: Option<String>,
    /// The option's position, from 0.
    index: Option<u32>,
});
pub struct Select;

impl TypedAction for Select {
    type Args = SelectArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        let mut p = check_locator(args, true);
        let given = ["value", "label", "index"]
            .iter()
            .filter(|k| args.contains_key(**k))
            .count();
        if given != 1 {
            p.push((
                String::new(),
                "give exactly one of `value`, `label` or `index`".into(),
            ));
        }
        p
    }

    async fn run(&self, ctx: &ActionContext, args: SelectArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let (args, locator) = (&args, &locator);
        run(ctx, None, |h| async move {
            let (value, label, index) = (args.value.clone(), args.label.clone(), args.index);
            let driver = h.driver.clone();
            with_element(&h, locator, wait, "select", move |el| {
                let (value, label, driver) = (value.clone(), label.clone(), driver.clone());
                async move {
                    // One lookup for the option, a click only if it is not
                    // chosen yet, and one script to read it back: 5 WebDriver
                    // calls where thirtyfour's SelectElement makes 10.
                    let xpath = match (value, label, index) {
                        (Some(v), _, _) => format!(".//option[@value={}]", xpath_literal(&v)),
                        (None, Some(l), _) => {
                            format!(".//option[normalize-space(.)={}]", xpath_literal(l.trim()))
                        }
                        (None, None, Some(i)) => format!("(.//option)[{}]", u64::from(i) + 1),
                        (None, None, None) => ".//option[@selected]".to_string(),
                    };
                    let option = el.find(By::XPath(xpath)).await?;
                    if !option.is_selected().await? {
                        option.click().await?;
                    }
                    let read = driver
                        .execute(
                            "return [arguments[0].value, arguments[0].text];",
                            vec![option.to_json()?],
                        )
                        .await?;
                    let got = read.json();
                    Ok(json!({
                        "value": got[0].as_str().unwrap_or_default(),
                        "label": got[1].as_str().unwrap_or_default(),
                    }))
                }
            })
            .await
        })
        .await
    }
}

element_args!(UploadArgs {
    /// The file to upload, relative to the session's work directory.
    file: String,
});
pub struct Upload;

impl TypedAction for Upload {
    type Args = UploadArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        let mut problems = check_locator(args, true);
        if let Some(Value::String(file)) = args.get("file")
            && let Some(why) = absolute(file)
        {
            problems.push(("file".into(), why));
        }
        problems
    }

    async fn run(&self, ctx: &ActionContext, args: UploadArgs) -> Result<Value, ActionError> {
        let path = inside_work_dir(&ctx.options().work_dir, &args.file)
            .map_err(|m| ActionError::new(codes::INVALID_ARGS, format!("with.file: {m}")))?;
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let text = path.display().to_string();
        let (locator, text, path) = (&locator, &text, &path);
        run_acting(ctx, None, |h| async move {
            with_element(&h, locator, wait, "upload", |el| {
                let text = text.clone();
                async move { el.send_keys(text).await }
            })
            .await?;
            Ok(json!({ "file": path.display().to_string() }))
        })
        .await
    }
}

/// `file` resolved inside `work_dir`, after `..` and symbolic links: the
/// browser reads whatever it is given, so a path that leads out of the work
/// directory would hand any file the robot can read to the page.
fn inside_work_dir(work_dir: &Path, file: &str) -> Result<PathBuf, String> {
    if let Some(why) = absolute(file) {
        return Err(why);
    }
    let relative = Path::new(file);
    let root = work_dir.canonicalize().map_err(|e| {
        format!(
            "cannot resolve the work directory {}: {e}",
            work_dir.display()
        )
    })?;
    let path = root.join(relative).canonicalize().map_err(|e| {
        format!(
            "there is no file `{file}` in the work directory {} ({e})",
            root.display()
        )
    })?;
    if !path.starts_with(&root) {
        return Err(format!(
            "`{file}` leads to {}, outside the work directory {}; uploads come from inside it",
            path.display(),
            root.display()
        ));
    }
    if !path.is_file() {
        return Err(format!("`{file}` is not a file"));
    }
    Ok(without_verbatim_prefix(path))
}

/// Why `file` is not relative (a root, or on Windows a drive), if it is not.
fn absolute(file: &str) -> Option<String> {
    Path::new(file)
        .components()
        .any(|c| matches!(c, Component::Prefix(_) | Component::RootDir))
        .then(|| {
            format!(
                "`{file}` is an absolute path; give a path relative to the session's work directory"
            )
        })
}

/// Windows canonicalizes to `\\?\C:\...`, which not every
/// program takes; the plain form names the same file.
fn without_verbatim_prefix(path: PathBuf) -> PathBuf {
    #[cfg(windows)]
    if let Some(plain) = path.to_str().and_then(|s| s.strip_prefix(r"\\?\"))
        && !plain.starts_with("UNC\\")
    {
        return PathBuf::from(plain);
    }
    path
}

element_args!(GetTextArgs {});
pub struct GetText;

impl TypedAction for GetText {
    type Args = GetTextArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: GetTextArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let locator = &locator;
        run(ctx, None, |h| async move {
            let text = with_element(&h, locator, wait, "get_text", |el| async move {
                el.text().await
            })
            .await?;
            Ok(json!({ "text": text }))
        })
        .await
    }
}

element_args!(GetAttributeArgs {
    /// The attribute's name, such as `href` or `value`. The element's live
    /// property wins over the attribute written in the HTML.
    name: String,
});
pub struct GetAttribute;

impl TypedAction for GetAttribute {
    type Args = GetAttributeArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: GetAttributeArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let name = args.name.clone();
        let (args, locator, name) = (&args, &locator, &name);
        run(ctx, None, |h| async move {
            let value = with_element(&h, locator, wait, "get_attribute", |el| {
                let name = name.clone();
                async move {
                    // The live property first (an input's current `value`),
                    // then the attribute as written in the HTML.
                    match el.prop(name.as_str()).await? {
                        Some(v) => Ok(Some(v)),
                        None => el.attr(name.as_str()).await,
                    }
                }
            })
            .await?;
            Ok(json!({ "name": args.name, "value": value }))
        })
        .await
    }
}

#[derive(Deserialize, JsonSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum WaitState {
    Present,
    Visible,
    /// Not visible, or not there at all.
    Hidden,
    /// No element matches any more (a spinner gone).
    Absent,
}

element_args!(WaitForArgs {
    /// What to wait for: `present`, `visible` (the default), `hidden`, or
    /// `absent` (no element matches any more); the text when `text` is given.
    state: Option<WaitState>,
    /// Wait until the element's text contains this.
    text: Option<String>,
});
pub struct WaitFor;

impl TypedAction for WaitFor {
    type Args = WaitForArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: WaitForArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let state = args.state.unwrap_or(if args.text.is_some() {
            WaitState::Present
        } else {
            WaitState::Visible
        });
        let text = args.text.clone();
        let (locator, text) = (&locator, &text);
        run(ctx, None, |h| async move {
            let started = Instant::now();
            let deadline = started + wait.timeout;
            // Why the last look failed, when the page was changing under it.
            let mut last_failure: Option<String>;
            loop {
                match condition_holds(&h, locator, state, text.as_deref()).await {
                    Ok(true) => {
                        return Ok(json!({ "waited_ms": started.elapsed().as_millis() as u64 }));
                    }
                    Ok(false) => last_failure = None,
                    Err(e) if retriable_while_reading(&e) => last_failure = Some(first_line(&e)),
                    Err(e) => return Err(driver_error("wait_for", e)),
                }
                if Instant::now() >= deadline {
                    let what = match (&text, state) {
                        (Some(t), _) => format!("to contain the text \"{t}\""),
                        (None, WaitState::Present) => "to be present".into(),
                        (None, WaitState::Visible) => "to be visible".into(),
                        (None, WaitState::Hidden) => "to be hidden".into(),
                        (None, WaitState::Absent) => "to be gone".into(),
                    };
                    let why = match last_failure {
                        Some(reason) => format!(" (the last look failed: {reason})"),
                        None => String::new(),
                    };
                    return Err(ActionError::new(
                        CODE_NOT_FOUND,
                        format!(
                            "waited {} ms for {} {what}{why}",
                            wait.timeout.as_millis(),
                            locator.describe()
                        ),
                    ));
                }
                tokio::time::sleep(wait.poll).await;
            }
        })
        .await
    }
}

/// One look at the page. A stale element means the page changed under us,
/// which is a "not yet", not a failure.
async fn condition_holds(
    h: &Handle,
    locator: &Locator,
    state: WaitState,
    text: Option<&str>,
) -> Result<bool, WebDriverError> {
    let Some(el) = locator.find_all(&h.driver).await?.into_iter().next() else {
        return Ok(matches!(state, WaitState::Hidden | WaitState::Absent));
    };
    let outcome: Result<bool, WebDriverError> = async {
        let holds = match state {
            WaitState::Present => true,
            WaitState::Absent => false,
            WaitState::Visible => el.is_displayed().await?,
            WaitState::Hidden => !el.is_displayed().await?,
        };
        match text {
            Some(t) if holds => Ok(el.text().await?.contains(t)),
            _ => Ok(holds),
        }
    }
    .await;
    match outcome {
        Err(e) if matches!(e.as_inner(), WebDriverErrorInner::StaleElementReference(_)) => {
            Ok(false)
        }
        other => other,
    }
}

pub struct ExecuteScript;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteScriptArgs {
    /// JavaScript; its `return` value comes back as the output.
    script: String,
    /// Values passed to the script as `arguments`.
    #[serde(default)]
    args: Vec<Value>,
    /// Run as an async script, which ends by calling the last argument.
    #[serde(default, rename = "async")]
    is_async: bool,
}

impl TypedAction for ExecuteScript {
    type Args = ExecuteScriptArgs;

    async fn run(
        &self,
        ctx: &ActionContext,
        args: ExecuteScriptArgs,
    ) -> Result<Value, ActionError> {
        let args = &args;
        run_acting(ctx, None, |h| async move {
            let result = if args.is_async {
                h.driver
                    .execute_async(args.script.as_str(), args.args.clone())
                    .await
            } else {
                h.driver
                    .execute(args.script.as_str(), args.args.clone())
                    .await
            };
            let ret = result.map_err(|e| driver_error("execute_script", e))?;
            Ok(json!({ "result": ret.json().clone() }))
        })
        .await
    }
}

element_args!(ExtractTableArgs {});
pub struct ExtractTable;

const EXTRACT_TABLE_JS: &str = r#"
const table = arguments[0];
const text = (cell) => (cell.innerText || cell.textContent || '').trim();
const rows = Array.from(table.rows);
if (rows.length === 0) { return { headers: [], rows: [] }; }
const headerRow = (table.tHead && table.tHead.rows.length) ? table.tHead.rows[0] : rows[0];
const headers = Array.from(headerRow.cells).map((c, i) => text(c) || ('column_' + (i + 1)));
const body = rows.filter((r) => r !== headerRow && !(table.tHead && table.tHead.contains(r)));
return {
  headers: headers,
  rows: body.map((r) => {
    const row = {};
    Array.from(r.cells).forEach((c, i) => { row[headers[i] || ('column_' + (i + 1))] = text(c); });
    return row;
  }),
};
"#;

impl TypedAction for ExtractTable {
    type Args = ExtractTableArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_locator(args, true)
    }

    async fn run(&self, ctx: &ActionContext, args: ExtractTableArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let locator = &locator;
        run(ctx, None, |h| async move {
            let driver = h.driver.clone();
            let table = with_element(&h, locator, wait, "extract_table", move |el| {
                let driver = driver.clone();
                async move {
                    let arg = el.to_json()?;
                    driver.execute(EXTRACT_TABLE_JS, vec![arg]).await
                }
            })
            .await?;
            let mut out = table.json().clone();
            let count = out["rows"].as_array().map_or(0, Vec::len);
            out["count"] = json!(count);
            Ok(out)
        })
        .await
    }
}

element_args!(ScreenshotArgs {
    /// Where to save it, relative to the artifacts directory; `<step id>.png` by default.
    path: Option<String>,
});
pub struct Screenshot;

impl TypedAction for Screenshot {
    type Args = ScreenshotArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        let mut p = check_locator(args, false);
        if let Some(Value::String(path)) = args.get("path")
            && !path.contains("${")
            && let Err(m) = super::check_relative(path)
        {
            p.push(("path".into(), m));
        }
        p
    }

    async fn run(&self, ctx: &ActionContext, args: ScreenshotArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let name = args
            .path
            .clone()
            .unwrap_or_else(|| format!("{}.png", ctx.step_id));
        let (locator, name) = (&locator, &name);
        run(ctx, None, |h| async move {
            let png = if locator.is_set() {
                with_element(&h, locator, wait, "screenshot", |el| async move { el.screenshot_as_png().await }).await?
            } else {
                h.driver.screenshot_as_png().await.map_err(|e| driver_error("screenshot", e))?
            };
            let path = write_artifact(ctx, name, &png)?;
            Ok(json!({ "path": path.display().to_string(), "size": png.len(), "sha256": sha256_hex(&png) }))
        })
        .await
    }
}

pub struct GetUrl;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

impl TypedAction for GetUrl {
    type Args = NoArgs;

    async fn run(&self, ctx: &ActionContext, _args: NoArgs) -> Result<Value, ActionError> {
        run(ctx, None, |h| async move { where_now(ctx, &h).await }).await
    }
}

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum FrameTarget {
    /// Back to the frame that contains the current one.
    Parent,
    /// Back to the page itself.
    Top,
}

element_args!(SwitchFrameArgs {
    /// The frame's position on the page, from 0, instead of a selector.
    index: Option<u16>,
    /// `parent` or `top`, to switch back out.
    to: Option<FrameTarget>,
});
pub struct SwitchFrame;

impl TypedAction for SwitchFrame {
    type Args = SwitchFrameArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        let mut p = check_locator(args, false);
        let given = ["selector", "xpath", "index", "to"]
            .iter()
            .filter(|k| args.contains_key(**k))
            .count();
        if given != 1 {
            p.push((
                String::new(),
                "give exactly one of `selector`, `xpath`, `index`, or `to: parent|top`".into(),
            ));
        }
        p
    }

    async fn run(&self, ctx: &ActionContext, args: SwitchFrameArgs) -> Result<Value, ActionError> {
        let (locator, wait) = (args.locator(), args.wait(ctx));
        let (args, locator) = (&args, &locator);
        run(ctx, None, |h| async move {
            match (args.to, args.index) {
                (Some(FrameTarget::Top), _) => h
                    .driver
                    .enter_default_frame()
                    .await
                    .map_err(|e| driver_error("switch_frame", e))?,
                (Some(FrameTarget::Parent), _) => h
                    .driver
                    .enter_parent_frame()
                    .await
                    .map_err(|e| driver_error("switch_frame", e))?,
                (None, Some(i)) => h
                    .driver
                    .enter_frame(i)
                    .await
                    .map_err(|e| driver_error(&format!("switch_frame to frame {i}"), e))?,
                (None, None) => {
                    with_element(&h, locator, wait, "switch_frame", |el| async move {
                        el.enter_frame().await
                    })
                    .await?
                }
            }
            Ok(json!({ "switched": true }))
        })
        .await
    }
}

pub struct WaitForDownload;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForDownloadArgs {
    /// Only a file whose name contains this.
    name: Option<String>,
    /// How long to wait; 30s by default.
    timeout: Option<DurationArg>,
}

impl TypedAction for WaitForDownload {
    type Args = WaitForDownloadArgs;

    async fn run(
        &self,
        ctx: &ActionContext,
        args: WaitForDownloadArgs,
    ) -> Result<Value, ActionError> {
        let settings = ctx.options().browser.clone();
        let timeout = args.timeout.map_or(settings.element_timeout, |d| d.0);
        let (args, settings) = (&args, &settings);
        run(ctx, None, |h| async move {
            let deadline = Instant::now() + timeout;
            let mut last_size: Option<(std::path::PathBuf, u64)> = None;
            loop {
                if let Some((path, size)) = finished_download(&h, args.name.as_deref()) {
                    // Claim it only once its size holds still across a poll.
                    if last_size.as_ref() == Some(&(path.clone(), size)) {
                        h.claimed.lock().unwrap_or_else(|p| p.into_inner()).push(path.clone());
                        let bytes = std::fs::read(&path).map_err(|e| ActionError::new(CODE_BROWSER, format!("cannot read {}: {e}", path.display())))?;
                        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                        return Ok(json!({ "path": path.display().to_string(), "name": name, "size": size, "sha256": sha256_hex(&bytes) }));
                    }
                    last_size = Some((path, size));
                }
                if Instant::now() >= deadline {
                    return Err(ActionError::new(
                        CODE_DOWNLOAD,
                        format!("no download finished within {} ms (watching {})", timeout.as_millis(), h.downloads.display()),
                    ));
                }
                tokio::time::sleep(settings.poll_interval.max(Duration::from_millis(20))).await;
            }
        })
        .await
    }
}

/// A finished, unclaimed download, if there is one and none is in progress.
fn finished_download(h: &Handle, name: Option<&str>) -> Option<(std::path::PathBuf, u64)> {
    let claimed = h.claimed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir(&h.downloads).ok()?.flatten() {
        let path = entry.path();
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name.ends_with(".crdownload")
            || file_name.ends_with(".tmp")
            || file_name.starts_with(".com.google")
        {
            return None;
        }
        if claimed.contains(&path) || name.is_some_and(|n| !file_name.contains(n)) {
            continue;
        }
        let meta = entry.metadata().ok()?;
        if meta.is_file() {
            candidates.push((meta.modified().ok(), path, meta.len()));
        }
    }
    candidates.sort_by_key(|(modified, _, _)| *modified);
    candidates.pop().map(|(_, path, size)| (path, size))
}

pub struct Close;

impl TypedAction for Close {
    type Args = NoArgs;

    async fn run(&self, ctx: &ActionContext, _args: NoArgs) -> Result<Value, ActionError> {
        let closed = super::close(ctx).await;
        if closed {
            ctx.log(LogLevel::Info, "closed the browser");
        }
        Ok(json!({ "closed": closed }))
    }
}
