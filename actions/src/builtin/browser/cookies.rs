//! Cookies: `browser.get_cookies`, `add_cookie`, `delete_cookies`,
//! `save_cookies` and `load_cookies`.
//!
//! A cookie's value is often a login: every value these actions see is
//! masked like a secret param from then on, in every log line, step output
//! and error of the session (the workflow's variables keep the real value,
//! so `${steps.x.output.cookies[0].value}` still works). Values shorter
//! than [`MIN_MASKED_LEN`] characters are not: masking `1` or `en`
//! everywhere would make the log unreadable, and such values are flags and
//! preferences, not logins.
//!
//! Saved cookies go to a file in the state folder (`ExecOptions::state_dir`),
//! which outlives the session: the work directory for `tasuki run`, a
//! folder per workflow on a robot. The file is written 0600 in a folder
//! made 0700.

use std::path::{Component, Path, PathBuf};

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use thirtyfour::error::WebDriverErrorInner;
use thirtyfour::{Cookie, SameSite, WebDriver};

use super::{CODE_BROWSER, driver_error, run, run_acting};
use crate::builtin::args::Text;
use crate::runtime::context::ActionContext;
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{ActionError, TypedAction, codes};

/// Cookie values of at least this many characters are masked in the
/// session's logs and outputs; shorter ones (`1`, `en`, `true`) are not,
/// since masking them everywhere would wreck the log.
pub const MIN_MASKED_LEN: usize = 6;

/// Masks the values (those long enough) from now on.
fn mask_values<'a>(ctx: &ActionContext, values: impl IntoIterator<Item = &'a str>) {
    ctx.add_secrets(
        values
            .into_iter()
            .filter(|v| v.chars().count() >= MIN_MASKED_LEN),
    );
}

fn cookies_n(n: usize) -> String {
    if n == 1 {
        "1 cookie".into()
    } else {
        format!("{n} cookies")
    }
}

fn cookie_json(c: &Cookie) -> Value {
    json!({
        "name": c.name,
        "value": c.value,
        "domain": c.domain,
        "path": c.path,
        "secure": c.secure.unwrap_or(false),
        "http_only": c.http_only.unwrap_or(false),
        // `null` when the site set none (the browser's default applies).
        "same_site": c.same_site.as_ref().and_then(|s| match s {
            SameSite::Strict => Some("Strict"),
            SameSite::Lax => Some("Lax"),
            SameSite::None => Some("None"),
            SameSite::Default => None,
        }),
        "expiry": c.expiry,
    })
}

async fn all_cookies(driver: &WebDriver) -> Result<Vec<Cookie>, ActionError> {
    driver
        .get_all_cookies()
        .await
        .map_err(|e| driver_error("reading the cookies", e))
}

async fn page_url(driver: &WebDriver) -> Result<url::Url, ActionError> {
    driver
        .current_url()
        .await
        .map_err(|e| driver_error("reading the URL", e))
}

// ---------------------------------------------------------------------
// browser.get_cookies

pub struct GetCookies;

/// The cookies the open page can see. Their values, those of 6 characters
/// or more, are masked like secrets in the logs and outputs from now on;
/// later steps' templates still get the real values.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetCookiesArgs {
    /// Only the cookie with this name (an empty list when there is none).
    name: Option<String>,
}

impl TypedAction for GetCookies {
    type Args = GetCookiesArgs;

    async fn run(&self, ctx: &ActionContext, args: GetCookiesArgs) -> Result<Value, ActionError> {
        let name = args.name;
        run(ctx, None, move |h| {
            let name = name.clone();
            async move {
                let mut cookies = all_cookies(&h.driver).await?;
                if let Some(name) = &name {
                    cookies.retain(|c| &c.name == name);
                }
                mask_values(ctx, cookies.iter().map(|c| c.value.as_str()));
                let list: Vec<Value> = cookies.iter().map(cookie_json).collect();
                Ok(json!({ "count": list.len(), "cookies": list }))
            }
        })
        .await
    }
}

// ---------------------------------------------------------------------
// browser.add_cookie

pub struct AddCookie;

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum SameSiteArg {
    Strict,
    Lax,
    /// Sent on cross-site requests too; needs `secure: true`.
    None,
}

/// WebDriver adds a cookie for the page that is open: open a page of the
/// cookie's site first.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddCookieArgs {
    name: String,
    /// The value; masked in the logs from now on when 6 characters or longer.
    value: Text,
    /// The domain, such as `example.com` (then its subdomains get it too);
    /// by default only the open page's host.
    domain: Option<String>,
    /// `/` by default.
    path: Option<String>,
    /// Sent over HTTPS only.
    secure: Option<bool>,
    /// Hidden from the page's scripts.
    http_only: Option<bool>,
    /// When it expires, in seconds since 1970 (Unix time); a session cookie
    /// by default.
    expiry: Option<i64>,
    /// `strict`, `lax` or `none`.
    same_site: Option<SameSiteArg>,
}

impl TypedAction for AddCookie {
    type Args = AddCookieArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        match args.get("name") {
            Some(Value::String(n)) if n.is_empty() => {
                vec![("name".into(), "a cookie needs a name".into())]
            }
            _ => Vec::new(),
        }
    }

    async fn run(&self, ctx: &ActionContext, args: AddCookieArgs) -> Result<Value, ActionError> {
        // Masked before WebDriver sees it, so that no error can show it.
        mask_values(ctx, [args.value.0.as_str()]);
        let mut cookie = Cookie::new(args.name.clone(), args.value.0.clone());
        cookie.domain = args.domain.clone();
        cookie.path = Some(args.path.clone().unwrap_or_else(|| "/".into()));
        cookie.secure = args.secure;
        cookie.http_only = args.http_only;
        cookie.expiry = args.expiry;
        cookie.same_site = args.same_site.map(|s| match s {
            SameSiteArg::Strict => SameSite::Strict,
            SameSiteArg::Lax => SameSite::Lax,
            SameSiteArg::None => SameSite::None,
        });
        let name = args.name;
        run_acting(ctx, None, move |h| {
            let cookie = cookie.clone();
            let name = name.clone();
            async move {
                if let Err(e) = h.driver.add_cookie(cookie).await {
                    let page = page_url(&h.driver).await.ok();
                    return Err(cookie_refused(&name, page.as_ref(), e));
                }
                Ok(json!({ "added": true }))
            }
        })
        .await
    }
}

/// WebDriver's refusal, with what to do about the usual cause: no page of
/// the cookie's site is open.
fn cookie_refused(
    name: &str,
    page: Option<&url::Url>,
    e: thirtyfour::error::WebDriverError,
) -> ActionError {
    let domain_trouble = matches!(
        e.as_inner(),
        WebDriverErrorInner::InvalidCookieDomain(_) | WebDriverErrorInner::UnableToSetCookie(_)
    );
    let mut err = driver_error(&format!("adding the cookie `{name}`"), e);
    if domain_trouble {
        let on = page.map_or_else(|| "no page".to_string(), |u| u.to_string());
        err.message.push_str(&format!(
            " (the browser is on {on}; WebDriver sets a cookie only for the open page's site: \
             open a page of that site first with browser.goto)"
        ));
    }
    err
}

// ---------------------------------------------------------------------
// browser.delete_cookies

pub struct DeleteCookies;

/// Deletes the cookies the open page can see.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteCookiesArgs {
    /// Only the cookie with this name; all of them by default.
    name: Option<String>,
}

impl TypedAction for DeleteCookies {
    type Args = DeleteCookiesArgs;

    async fn run(
        &self,
        ctx: &ActionContext,
        args: DeleteCookiesArgs,
    ) -> Result<Value, ActionError> {
        let name = args.name;
        run_acting(ctx, None, move |h| {
            let name = name.clone();
            async move {
                let before = all_cookies(&h.driver).await?;
                let deleted = match &name {
                    Some(name) => {
                        let n = before.iter().filter(|c| &c.name == name).count();
                        if n > 0 {
                            h.driver.delete_cookie(name.as_str()).await.map_err(|e| {
                                driver_error(&format!("deleting the cookie `{name}`"), e)
                            })?;
                        }
                        n
                    }
                    None => {
                        h.driver
                            .delete_all_cookies()
                            .await
                            .map_err(|e| driver_error("deleting the cookies", e))?;
                        before.len()
                    }
                };
                Ok(json!({ "deleted": deleted }))
            }
        })
        .await
    }
}

// ---------------------------------------------------------------------
// The state folder

/// Why `file` cannot name a file in the state folder, if it cannot:
/// empty, absolute, or with `..` (or `.`) in it. Checked at validation (for
/// a literal) and when the step runs.
pub fn check_state_file(file: &str) -> Option<String> {
    let path = Path::new(file);
    if file.is_empty() {
        return Some("give a file name, relative to the state folder".into());
    }
    if path
        .components()
        .any(|c| matches!(c, Component::Prefix(_) | Component::RootDir))
    {
        return Some(format!(
            "`{file}` is an absolute path; give a path relative to the state folder (the work \
             directory for `tasuki run`, a folder of the workflow's own on a robot)"
        ));
    }
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Some(format!(
            "`{file}` may not contain `..` or `.`: it must stay inside the state folder"
        ));
    }
    None
}

fn check_file_arg(args: &Map<String, Value>) -> Vec<(String, String)> {
    match args.get("file") {
        Some(Value::String(file)) if !file.contains("${") => check_state_file(file)
            .map(|m| vec![("file".to_string(), m)])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

fn state_error(m: String) -> ActionError {
    ActionError::new(codes::INVALID_ARGS, format!("with.file: {m}"))
}

/// The state folder, resolved (made 0700 first when `create`).
fn state_root(state_dir: &Path, create: bool) -> Result<PathBuf, String> {
    if create {
        crate::builtin::process::private_dir_all(state_dir).map_err(|e| {
            format!(
                "cannot create the state folder {}: {e}",
                state_dir.display()
            )
        })?;
    }
    state_dir.canonicalize().map_err(|e| {
        format!(
            "cannot resolve the state folder {}: {e}",
            state_dir.display()
        )
    })
}

/// Where `file` is to be written: its folder made (0700) and resolved
/// through symbolic links, which must not lead out of the state folder.
fn path_to_write(state_dir: &Path, file: &str) -> Result<PathBuf, String> {
    if let Some(why) = check_state_file(file) {
        return Err(why);
    }
    let root = state_root(state_dir, true)?;
    let joined = root.join(file);
    let (Some(parent), Some(name)) = (joined.parent(), joined.file_name()) else {
        return Err(format!("`{file}` does not name a file"));
    };
    crate::builtin::process::private_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let parent = parent
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", parent.display()))?;
    if !parent.starts_with(&root) {
        return Err(format!(
            "`{file}` leads to {}, outside the state folder {}",
            parent.display(),
            root.display()
        ));
    }
    let path = parent.join(name);
    if path.is_dir() {
        return Err(format!("`{file}` is a folder in {}", root.display()));
    }
    Ok(path)
}

/// The existing `file`, resolved through symbolic links inside the state
/// folder.
fn path_to_read(state_dir: &Path, file: &str) -> Result<PathBuf, String> {
    if let Some(why) = check_state_file(file) {
        return Err(why);
    }
    let missing = |detail: String| {
        format!(
            "there is no file `{file}` in the state folder {} ({detail}); a session saves one \
             with browser.save_cookies",
            state_dir.display()
        )
    };
    let root = state_root(state_dir, false).map_err(missing)?;
    let path = root
        .join(file)
        .canonicalize()
        .map_err(|e| missing(e.to_string()))?;
    if !path.starts_with(&root) {
        return Err(format!(
            "`{file}` leads to {}, outside the state folder {}",
            path.display(),
            root.display()
        ));
    }
    if !path.is_file() {
        return Err(format!("`{file}` in {} is not a file", root.display()));
    }
    Ok(path)
}

/// Writes `bytes` to `path` through a new 0600 file renamed into place,
/// so the file is never readable by others, even for a moment, and a
/// reader never sees half of it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    // tempfile makes its files 0600 on Unix.
    let mut tmp = tempfile::Builder::new()
        .prefix(".tasuki-cookies-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

// ---------------------------------------------------------------------
// browser.save_cookies

pub struct SaveCookies;

/// Saves the cookies the open page can see, as a JSON list of W3C
/// WebDriver cookies, for `browser.load_cookies` in a later session. Their
/// values (6 characters or more) are masked in the logs from now on.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SaveCookiesArgs {
    /// The file, relative to the state folder: the work directory for
    /// `tasuki run`, a folder of the workflow's own, kept across sessions,
    /// on a robot. No `..`, no absolute path. Written 0600.
    file: String,
}

impl TypedAction for SaveCookies {
    type Args = SaveCookiesArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_file_arg(args)
    }

    async fn run(&self, ctx: &ActionContext, args: SaveCookiesArgs) -> Result<Value, ActionError> {
        if let Some(why) = check_state_file(&args.file) {
            return Err(state_error(why));
        }
        let file = args.file;
        run(ctx, None, move |h| {
            let file = file.clone();
            async move {
                let cookies = all_cookies(&h.driver).await?;
                mask_values(ctx, cookies.iter().map(|c| c.value.as_str()));
                let path = path_to_write(&ctx.options().state_dir, &file).map_err(state_error)?;
                let bytes = serde_json::to_vec_pretty(&cookies).map_err(|e| {
                    ActionError::new(CODE_BROWSER, format!("cannot encode the cookies: {e}"))
                })?;
                write_private(&path, &bytes).map_err(|e| {
                    ActionError::new(
                        CODE_BROWSER,
                        format!("cannot write {}: {e}", path.display()),
                    )
                })?;
                ctx.log(
                    LogLevel::Info,
                    &format!("saved {} to {}", cookies_n(cookies.len()), path.display()),
                );
                Ok(json!({ "file": path.display().to_string(), "count": cookies.len() }))
            }
        })
        .await
    }
}

// ---------------------------------------------------------------------
// browser.load_cookies

pub struct LoadCookies;

/// Adds the cookies of a file `browser.save_cookies` wrote. WebDriver adds
/// cookies only for the open page's site, so open a page of that site
/// first: the cookies for its host (and the domains above it) are loaded,
/// the others skipped, as are expired ones. Their values (6 characters or
/// more) are masked in the logs from now on.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadCookiesArgs {
    /// The file, relative to the state folder (see `browser.save_cookies`).
    file: String,
}

impl TypedAction for LoadCookies {
    type Args = LoadCookiesArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        check_file_arg(args)
    }

    async fn run(&self, ctx: &ActionContext, args: LoadCookiesArgs) -> Result<Value, ActionError> {
        let path = path_to_read(&ctx.options().state_dir, &args.file).map_err(state_error)?;
        let bytes = std::fs::read(&path).map_err(|e| {
            ActionError::new(
                codes::INVALID_ARGS,
                format!("with.file: cannot read {}: {e}", path.display()),
            )
        })?;
        let cookies: Vec<Cookie> = serde_json::from_slice(&bytes).map_err(|e| {
            ActionError::new(
                codes::INVALID_ARGS,
                format!(
                    "with.file: {} is not a list of cookies as browser.save_cookies writes: {e}",
                    path.display()
                ),
            )
        })?;
        mask_values(ctx, cookies.iter().map(|c| c.value.as_str()));
        let file = args.file;
        let shown = path.display().to_string();
        let shown = &shown;
        run_acting(ctx, None, move |h| {
            let (cookies, file) = (cookies.clone(), file.clone());
            async move {
                let page = page_url(&h.driver).await?;
                let host = page.host_str().unwrap_or("").to_ascii_lowercase();
                let now = jiff::Timestamp::now().as_second();
                let (mut loaded, mut skipped) = (0usize, 0usize);
                // The sites of the cookies skipped for being another site's.
                let mut elsewhere = std::collections::BTreeSet::new();
                for cookie in cookies {
                    if cookie.expiry.is_some_and(|t| t <= now) {
                        skipped += 1;
                        continue;
                    }
                    let domain = cookie.domain.clone().unwrap_or_default();
                    let Some(cookie) = for_host(cookie, &host) else {
                        elsewhere.insert(domain.trim_start_matches('.').to_string());
                        skipped += 1;
                        continue;
                    };
                    let name = cookie.name.clone();
                    match h.driver.add_cookie(cookie.clone()).await {
                        Ok(()) => loaded += 1,
                        Err(e) => {
                            let err = cookie_refused(&name, Some(&page), e);
                            ctx.log(LogLevel::Warn, &format!("skipped: {}", err.message));
                            skipped += 1;
                        }
                    }
                }
                if loaded == 0 && skipped > 0 {
                    return Err(nothing_for(&file, &page, &elsewhere, skipped));
                }
                ctx.log(
                    LogLevel::Info,
                    &format!(
                        "loaded {} from {shown}, skipped {skipped}",
                        cookies_n(loaded)
                    ),
                );
                Ok(json!({ "file": shown, "loaded": loaded, "skipped": skipped }))
            }
        })
        .await
    }
}

/// The cookie as WebDriver will take it on a page of `host`, or `None`
/// when it is for another site. A host-only cookie (saved without a
/// leading dot) stays host-only: it is added without a domain.
fn for_host(mut cookie: Cookie, host: &str) -> Option<Cookie> {
    let Some(domain) = cookie.domain.clone() else {
        return Some(cookie);
    };
    let bare = domain.trim_start_matches('.').to_ascii_lowercase();
    if host == bare {
        if !domain.starts_with('.') {
            cookie.domain = None;
        }
        Some(cookie)
    } else if host.ends_with(&format!(".{bare}")) {
        Some(cookie)
    } else {
        None
    }
}

/// Nothing could be loaded: says which site's page to open first.
fn nothing_for(
    file: &str,
    page: &url::Url,
    elsewhere: &std::collections::BTreeSet<String>,
    skipped: usize,
) -> ActionError {
    let hint = match elsewhere.iter().next() {
        Some(site) => format!(
            "they are for {}: open a page of {site} first (browser.goto, such as \
             `https://{site}/`), then load them; WebDriver adds cookies only for the open page's site",
            elsewhere.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
        None => "they have expired or the browser refused them (see the warnings above)".into(),
    };
    ActionError::new(
        CODE_BROWSER,
        format!("none of the {skipped} cookies in `{file}` could be loaded on {page}: {hint}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_are_relative_and_stay_inside() {
        assert_eq!(check_state_file("cookies.json"), None);
        assert_eq!(check_state_file("logins/site.json"), None);
        for bad in ["", "/etc/x", "../x", "a/../../x", "a/..", "./x"] {
            assert!(check_state_file(bad).is_some(), "{bad:?} was let through");
        }
        assert!(check_state_file("/etc/x").unwrap().contains("absolute"));
        assert!(check_state_file("../x").unwrap().contains(".."));
        // Templates are checked when the step runs.
        let args: Map<String, Value> =
            serde_json::from_value(json!({"file": "${params.f}"})).unwrap();
        assert!(check_file_arg(&args).is_empty());
        let args: Map<String, Value> = serde_json::from_value(json!({"file": "../x"})).unwrap();
        assert_eq!(check_file_arg(&args)[0].0, "file");
    }

    #[cfg(unix)]
    #[test]
    fn saved_files_are_private_and_links_cannot_lead_out() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state/42");
        let path = path_to_write(&state, "logins/site.json").unwrap();
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("logins")), 0o700);
        write_private(&path, b"[]").unwrap();
        assert_eq!(mode(&path), 0o600);
        // Rewriting a loose file leaves a private one.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"[1]").unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"[1]");
        assert_eq!(
            path_to_read(&state, "logins/site.json").unwrap(),
            state.canonicalize().unwrap().join("logins/site.json")
        );

        // A link in the state folder to a folder outside it.
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("other.json"), "[]").unwrap();
        std::os::unix::fs::symlink(&outside, state.join("out")).unwrap();
        let err = path_to_write(&state, "out/x.json").unwrap_err();
        assert!(err.contains("outside the state folder"), "{err}");
        let err = path_to_read(&state, "out/other.json").unwrap_err();
        assert!(err.contains("outside the state folder"), "{err}");

        let err = path_to_read(&state, "missing.json").unwrap_err();
        assert!(
            err.contains("`missing.json`") && err.contains(&state.display().to_string()),
            "{err}"
        );
        // A state folder never made yet: the file is missing, nothing is made.
        let never = root.path().join("state/7");
        assert!(
            path_to_read(&never, "c.json")
                .unwrap_err()
                .contains("`c.json`")
        );
        assert!(!never.exists());
    }

    #[test]
    fn cookies_are_loaded_for_the_open_host_and_the_domains_above_it() {
        let with_domain = |d: Option<&str>| {
            let mut c = Cookie::new("sid", "value-123");
            c.domain = d.map(str::to_string);
            c
        };
        // Host-only stays host-only.
        let c = for_host(with_domain(Some("127.0.0.1")), "127.0.0.1").unwrap();
        assert_eq!(c.domain, None);
        let c = for_host(with_domain(Some(".example.com")), "app.example.com").unwrap();
        assert_eq!(c.domain.as_deref(), Some(".example.com"));
        assert!(for_host(with_domain(Some(".example.com")), "example.com").is_some());
        assert!(for_host(with_domain(Some("Example.COM")), "example.com").is_some());
        assert!(for_host(with_domain(Some("example.com")), "badexample.com").is_none());
        assert!(for_host(with_domain(Some("app.example.com")), "example.com").is_none());
        assert!(for_host(with_domain(None), "anything.test").is_some());
    }

    #[test]
    fn the_error_says_which_site_to_open() {
        let page = url::Url::parse("http://127.0.0.1:8080/").unwrap();
        let sites = ["shop.example.com".to_string()].into_iter().collect();
        let e = nothing_for("c.json", &page, &sites, 2);
        assert!(
            e.message.contains("open a page of shop.example.com first")
                && e.message.contains("http://127.0.0.1:8080/"),
            "{}",
            e.message
        );
    }
}
