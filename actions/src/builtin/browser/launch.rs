//! Finding, starting and ending the browser: chromedriver in its own
//! process group on a free loopback port, Chromium headless with a fresh
//! profile, or a remote WebDriver. Teardown is quit, then kill the group,
//! then remove the profile; dropping a `Browser` still kills and removes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use thirtyfour::{CapabilitiesHelper, ChromiumLikeCapabilities, DesiredCapabilities, WebDriver};

use crate::builtin::process::{Tree, step_command};
use crate::runtime::context::{BrowserSettings, ExecOptions};
use crate::runtime::registry::ActionError;

pub const CODE_NOT_INSTALLED: &str = "browser_not_found";
pub const CODE_START: &str = "browser_start_failed";

/// How long chromedriver gets to start listening.
const DRIVER_READY: Duration = Duration::from_secs(15);
/// How long a polite quit may take before the processes are killed.
const QUIT_GRACE: Duration = Duration::from_secs(3);

/// Per-open overrides of the robot's browser settings.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub headless: Option<bool>,
    pub window_size: Option<(u32, u32)>,
    pub lang: Option<String>,
    pub user_agent: Option<String>,
}

pub struct Browser {
    pub driver: Option<WebDriver>,
    /// The local chromedriver and everything it started; `None` for remote.
    driver_tree: Option<Tree>,
    /// The fresh profile; see `Profile`.
    profile: Option<Profile>,
    pub downloads: PathBuf,
    /// Downloads already handed out by `wait_for_download`.
    pub claimed: std::sync::Arc<std::sync::Mutex<Vec<PathBuf>>>,
    pub description: String,
    /// The windows this session has seen and came from (`windows.rs`).
    pub windows: super::windows::SharedWindows,
}

impl Browser {
    pub fn driver(&self) -> Result<&WebDriver, ActionError> {
        self.driver
            .as_ref()
            .ok_or_else(|| ActionError::new(CODE_START, "the browser has been closed"))
    }

    /// Starts the browser. A local chromedriver, and so Chromium, is a
    /// step's process like any other (see `Tree::spawn_step`): `options`
    /// give its environment and what it may not read.
    pub async fn launch(
        settings: &BrowserSettings,
        overrides: &Overrides,
        downloads: PathBuf,
        options: &ExecOptions,
    ) -> Result<Browser, ActionError> {
        std::fs::create_dir_all(&downloads).map_err(|e| {
            ActionError::new(
                CODE_START,
                format!(
                    "cannot create the downloads directory {}: {e}",
                    downloads.display()
                ),
            )
        })?;
        let started = Instant::now();
        let headless = overrides.headless.unwrap_or(settings.headless);
        let (width, height) = overrides.window_size.unwrap_or(settings.window_size);
        let lang = overrides.lang.clone().or_else(|| settings.lang.clone());
        let user_agent = overrides
            .user_agent
            .clone()
            .or_else(|| settings.user_agent.clone());

        let mut caps = DesiredCapabilities::chrome();
        let mut args: Vec<String> = [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--password-store=basic",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if headless {
            args.push("--headless=new".into());
        }
        args.push(format!("--window-size={width},{height}"));
        if let Some(lang) = &lang {
            args.push(format!("--lang={lang}"));
        }
        if let Some(ua) = &user_agent {
            args.push(format!("--user-agent={ua}"));
        }
        let mut prefs = json!({
            "download.default_directory": downloads.display().to_string(),
            "download.prompt_for_download": false,
            "safebrowsing.enabled": false,
        });
        if let Some(lang) = &lang {
            prefs["intl.accept_languages"] = json!(lang);
        }
        let start_error = |e: thirtyfour::error::WebDriverError| {
            ActionError::new(CODE_START, format!("cannot configure the browser: {e}"))
        };
        caps.add_experimental_option("prefs", prefs)
            .map_err(start_error)?;
        // A dialog stays open until a step answers it (see dialogs.rs),
        // rather than being dismissed by whichever command meets it.
        caps.set("unhandledPromptBehavior", "ignore")
            .map_err(start_error)?;

        if let Some(remote_url) = &settings.remote_url {
            let remote = redact_userinfo(remote_url);
            for a in &args {
                caps.add_arg(a).map_err(start_error)?;
            }
            let driver = WebDriver::new(remote_url.as_str(), caps)
                .await
                .map_err(|e| {
                    ActionError::new(
                        CODE_START,
                        format!("cannot start a session on the remote WebDriver at {remote}: {e}"),
                    )
                })?;
            return Ok(Browser {
                driver: Some(driver),
                driver_tree: None,
                profile: None,
                claimed: existing_downloads(&downloads),
                windows: Default::default(),
                downloads,
                description: format!(
                    "remote WebDriver at {remote} ({} ms)",
                    started.elapsed().as_millis()
                ),
            });
        }

        let chromedriver = find_chromedriver(settings)?;
        let chromium = find_chromium(settings)?;
        let profile = tempfile::Builder::new()
            .prefix("tasuki-profile-")
            .tempdir_in(profile_root())
            .map(|dir| {
                crate::builtin::process::register_temp_path(dir.path());
                Profile(dir)
            })
            .map_err(|e| {
                ActionError::new(
                    CODE_START,
                    format!("cannot create a browser profile directory: {e}"),
                )
            })?;
        args.push(format!("--user-data-dir={}", profile.0.path().display()));
        #[cfg(unix)]
        let browser_tmp = {
            let tmp = profile.0.path().join("tmp");
            crate::builtin::process::private_dir_all(&tmp).map_err(|e| {
                ActionError::new(CODE_START, format!("cannot create {}: {e}", tmp.display()))
            })?;
            tmp
        };
        caps.set_binary(&chromium.display().to_string())
            .map_err(start_error)?;
        for a in &args {
            caps.add_arg(a).map_err(start_error)?;
        }

        // The free port is only free until someone else takes it; if our
        // chromedriver cannot bind it, it exits, and we try another.
        let mut driver_up = None;
        for _ in 0..3 {
            let port = free_port().map_err(|e| {
                ActionError::new(CODE_START, format!("cannot find a free loopback port: {e}"))
            })?;
            let mut command = step_command(&chromedriver, options);
            // Chromium's crash handler daemonizes out of the process group and
            // keeps its database under $XDG_CONFIG_HOME. Pointing that into the
            // profile keeps the service account's home clean, and puts the
            // profile path in the handler's command line, where teardown finds it.
            // Its temporary files go in the profile too: it exists before
            // the spawn, so a Landlock ruleset (confine.rs) that freezes the
            // folders above the robot's credentials, /tmp among them in a
            // checkout under /tmp, still lets Chromium write there.
            #[cfg(unix)]
            command.env("TMPDIR", &browser_tmp);
            command
                .env("XDG_CONFIG_HOME", profile.0.path().join("config"))
                .arg(format!("--port={port}"))
                .arg("--allowed-ips=127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut tree = Tree::spawn_step(command, options).map_err(|e| {
                ActionError::new(
                    CODE_START,
                    format!("cannot start {}: {e}", chromedriver.display()),
                )
            })?;
            // A restarted agent removes it once it has ended the tree.
            tree.record_temp_dir(profile.0.path());
            if wait_until_listening(port, &mut tree).await? {
                driver_up = Some((port, tree));
                break;
            }
        }
        let (port, tree) = driver_up.ok_or_else(|| {
            ActionError::new(
                CODE_START,
                "chromedriver exited at start three times in a row",
            )
        })?;
        let url = format!("http://127.0.0.1:{port}");
        let driver = WebDriver::new(url.as_str(), caps).await.map_err(|e| {
            ActionError::new(
                CODE_START,
                format!(
                    "chromedriver could not start Chromium ({}): {e}",
                    chromium.display()
                ),
            )
        })?;
        Ok(Browser {
            driver: Some(driver),
            driver_tree: Some(tree),
            profile: Some(profile),
            claimed: existing_downloads(&downloads),
            windows: Default::default(),
            downloads,
            description: format!(
                "Chromium {} via chromedriver on port {port}{} ({} ms)",
                chromium.display(),
                if headless { ", headless" } else { "" },
                started.elapsed().as_millis()
            ),
        })
    }

    /// The local chromedriver's process group, which Chromium's processes
    /// share (all but its crash handler, which names the profile); `None`
    /// for a remote WebDriver.
    pub(super) fn driver_group(&self) -> Option<u32> {
        self.driver_tree.as_ref().and_then(Tree::leader)
    }

    pub(super) fn profile_dir(&self) -> Option<&Path> {
        self.profile.as_ref().map(|p| p.0.path())
    }

    /// Hands the record of the driver's tree (see `tree_records.rs`) to
    /// another private directory: the session that takes a warm browser.
    pub(super) fn move_records(&mut self, private_dir: &Path) -> std::io::Result<()> {
        match &mut self.driver_tree {
            Some(tree) => tree.move_record(private_dir),
            None => Ok(()),
        }
    }

    /// Quit politely when there is time, then make sure: kill the driver's
    /// process group. The profile directory goes when `self` is dropped.
    pub async fn shutdown(mut self, graceful: bool) {
        if let Some(driver) = self.driver.take() {
            if graceful {
                let _ = tokio::time::timeout(QUIT_GRACE, driver.quit()).await;
            } else if self.driver_tree.is_none() {
                // A remote session has no process of ours to kill: without
                // a quit it would hold a Grid node until the Grid's own
                // timeout. One short try.
                let _ = tokio::time::timeout(Duration::from_secs(1), driver.quit()).await;
            } else {
                // Skip the quit (a command may still be in flight) and
                // stop the driver from quitting synchronously on drop.
                let _ = driver.leak();
            }
        }
        if let Some(mut tree) = self.driver_tree.take() {
            tree.terminate(Duration::from_millis(500)).await;
        }
        // `self` drops here, and with it the profile: see `Profile`.
    }
}

impl crate::runtime::context::SessionResource for Browser {
    fn shutdown(
        self: Box<Self>,
        graceful: bool,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(Browser::shutdown(*self, graceful))
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Only reached without `shutdown` on a panic or an aborted task:
        // never block here; the tree's own drop kills the processes.
        if let Some(driver) = self.driver.take() {
            let _ = driver.leak();
        }
    }
}

/// Where profiles go: the temporary directory, unless its path is so long
/// that Chromium could not start. Chromium makes a Unix socket under its
/// TMPDIR (the profile's `tmp`, see `launch`):
/// `.org.chromium.Chromium.XXXXXX/SingletonSocket`, and a socket's path
/// may not pass 107 bytes; past it Chromium exits at start ("Chrome
/// instance exited"). Then `/tmp` serves.
fn profile_root() -> PathBuf {
    let tmp = std::env::temp_dir();
    // "/tasuki-profile-XXXXXX" + "/tmp" + "/.org.chromium.Chromium.XXXXXX/SingletonSocket"
    let socket_path = tmp.as_os_str().len() + 22 + 4 + 46;
    if cfg!(unix) && socket_path > 107 {
        PathBuf::from("/tmp")
    } else {
        tmp
    }
}

/// A browser profile directory. Dropping it first kills every process
/// still naming it (Chromium's crash handler leaves the process group), then
/// removes it, so a launch that is cancelled halfway leaves nothing either.
struct Profile(tempfile::TempDir);

impl Drop for Profile {
    fn drop(&mut self) {
        crate::builtin::process::kill_processes_mentioning(self.0.path());
        crate::builtin::process::forget_temp_path(self.0.path());
    }
}

/// Files already in the downloads directory when the browser starts (an
/// earlier run's) are never handed out by `wait_for_download`.
pub(super) fn existing_downloads(dir: &Path) -> std::sync::Arc<std::sync::Mutex<Vec<PathBuf>>> {
    let files = std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    std::sync::Arc::new(std::sync::Mutex::new(files))
}

/// A Grid URL often carries `user:key@`; logs and errors must not.
fn redact_userinfo(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("***");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until our chromedriver listens on `port`. `Ok(false)` when it
/// exited first (most likely the port was taken meanwhile).
async fn wait_until_listening(port: u16, tree: &mut Tree) -> Result<bool, ActionError> {
    let deadline = Instant::now() + DRIVER_READY;
    loop {
        if matches!(tree.child_mut().try_wait(), Ok(Some(_))) {
            // Marks an emptied group as finished, so dropping the tree will
            // not signal a process group id that may be reused.
            tree.any_alive();
            return Ok(false);
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            // Someone listens; make sure it is not another driver that got
            // the port while ours was failing to bind it.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let exited = matches!(tree.child_mut().try_wait(), Ok(Some(_)));
            if exited {
                tree.any_alive();
            }
            return Ok(!exited);
        }
        if Instant::now() > deadline {
            return Err(ActionError::new(
                CODE_START,
                format!(
                    "chromedriver did not start listening on port {port} within {} s",
                    DRIVER_READY.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const INSTALL_HINT: &str = "Install Chromium and its driver: on Debian or Ubuntu `sudo apt-get install chromium chromium-driver`; on macOS `brew install --cask chromium` and `brew install chromedriver`; on Windows, Google Chrome and the matching chromedriver.exe. Or point the agent at them with --chromium and --chromedriver (browser.chromium and browser.chromedriver in the config), or use a remote WebDriver with --remote-webdriver.";

pub fn find_chromedriver(settings: &BrowserSettings) -> Result<PathBuf, ActionError> {
    locate(
        "chromedriver",
        settings.chromedriver.as_deref(),
        &["chromedriver"],
        &[
            "/usr/bin/chromedriver",
            "/usr/lib/chromium/chromedriver",
            "/usr/lib/chromium-browser/chromedriver",
            "/usr/local/bin/chromedriver",
            "/opt/homebrew/bin/chromedriver",
            "/snap/bin/chromium.chromedriver",
            r"C:\Program Files\chromedriver\chromedriver.exe",
        ],
    )
}

pub fn find_chromium(settings: &BrowserSettings) -> Result<PathBuf, ActionError> {
    locate(
        "Chromium",
        settings.chromium.as_deref(),
        &[
            "chromium",
            "chromium-browser",
            "google-chrome",
            "google-chrome-stable",
            "chrome",
        ],
        &[
            "/usr/bin/chromium",
            "/usr/lib/chromium/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
            "/snap/bin/chromium",
            "/Applications/Chromium.app/Contents/MacOS/Chromium",
            "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
            r"C:\Program Files\Google\Chrome\Application\chrome.exe",
            r"C:\Program Files (x86)\Google\Chrome\Application\chrome.exe",
        ],
    )
}

/// Config first, then `PATH`, then the usual install paths.
fn locate(
    what: &str,
    configured: Option<&Path>,
    names: &[&str],
    usual: &[&str],
) -> Result<PathBuf, ActionError> {
    if let Some(path) = configured {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(ActionError::new(
                CODE_NOT_INSTALLED,
                format!(
                    "{what} was configured at {}, but there is no file there. {INSTALL_HINT}",
                    path.display()
                ),
            ))
        };
    }
    if let Some(path_var) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path_var) {
            for name in names {
                for candidate in [dir.join(name), dir.join(format!("{name}.exe"))] {
                    if candidate.is_file() {
                        return Ok(candidate);
                    }
                }
            }
        }
    }
    if let Some(found) = usual.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Ok(found);
    }
    Err(ActionError::new(
        CODE_NOT_INSTALLED,
        format!(
            "{what} was not found (looked for {} on PATH and in the usual install paths). {INSTALL_HINT}",
            names.join(", ")
        ),
    ))
}
