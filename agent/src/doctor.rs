//! `tasuki doctor`: checks what a robot needs, in the order it needs it,
//! and says how to fix each thing that is wrong. Exit 0 when nothing
//! failed (warnings allowed), 1 otherwise.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tasuki_actions::language::params::{ParamInputs, bind_params};
use tasuki_actions::runtime::context::BrowserSettings;
use tasuki_actions::runtime::event::NullSink;
use tasuki_actions::{ExecOptions, Executor, LoadOptions, Registry, SessionStatus, parse_workflow};

use crate::daemon::{Credentials, HubClient};
use crate::settings::{Settings, SettingsArgs, masked_url};
use crate::{EXIT_FAILED, EXIT_OK};

/// Warn below this much free disk in the work dir; fail below a tenth.
const DISK_WARN_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Tokens carry `nbf`/`exp` in seconds; past this skew the hub refuses them.
const SKEW_FAIL_SECONDS: f64 = 30.0;
const SKEW_WARN_SECONDS: f64 = 5.0;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    worst: Level,
}

impl Report {
    fn line(&mut self, level: Level, name: &str, detail: &str, fix: Option<&str>) {
        self.worst = self.worst.max(level);
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        crate::print_stdout(&format!("{tag}  {name}: {detail}"));
        if let Some(fix) = fix {
            crate::print_stdout(&format!("      fix: {fix}"));
        }
    }

    fn ok(&mut self, name: &str, detail: &str) {
        self.line(Level::Ok, name, detail, None);
    }

    fn warn(&mut self, name: &str, detail: &str, fix: &str) {
        self.line(Level::Warn, name, detail, Some(fix));
    }

    fn fail(&mut self, name: &str, detail: &str, fix: &str) {
        self.line(Level::Fail, name, detail, Some(fix));
    }
}

pub fn run(args: &SettingsArgs) -> u8 {
    let mut r = Report { worst: Level::Ok };
    let path = args.config_path();
    let effective = match args.load() {
        Ok(e) => e,
        Err(e) => {
            r.fail(
                "config",
                &format!("{e}"),
                &format!(
                    "register the robot (`tasuki register --config {} ...`) or correct the \
                     file; `tasuki config show` prints what is in effect",
                    path.display()
                ),
            );
            return done(&r);
        }
    };
    let settings = effective.settings();
    let (registry, packs) = crate::packs::registry(&settings.action_packs);
    match effective.allowed_actions(&registry) {
        Ok(_) => r.ok(
            "config",
            &format!(
                "{} (robot `{}` at {})",
                path.display(),
                settings.control_plane.name,
                masked_url(&settings.control_plane.url)
            ),
        ),
        Err(e) => r.fail(
            "config",
            &e.to_string(),
            "correct behaviour.allowed_actions",
        ),
    }
    action_packs(&mut r, &packs);
    log_files(&mut r, &settings);
    let creds = credentials(&mut r, &settings);
    work_dir(&mut r, &settings.work_dir);
    spool(&mut r, &settings.work_dir);
    if let Some(creds) = creds {
        hub(&mut r, &settings, &creds);
    } else {
        r.warn(
            "hub",
            "not checked: it needs the credentials",
            "fix the credentials first",
        );
    }
    browser(&mut r, &settings);
    warm_browser(&mut r, &settings);
    done(&r)
}

/// Packs that do not load are left out of what the robot offers; say so
/// here rather than only in the agent's log.
fn action_packs(r: &mut Report, found: &tasuki_actions::packs::Found) {
    let loaded: Vec<String> = found
        .packs
        .iter()
        .map(|p| format!("{} {}", p.name, p.version))
        .collect();
    let summary = if loaded.is_empty() {
        "none loaded".to_string()
    } else {
        loaded.join(", ")
    };
    if found.problems.is_empty() {
        r.ok("action packs", &summary);
    } else {
        r.warn(
            "action packs",
            &format!("{summary}; left out: {}", found.problems),
            "correct the named manifest (`tasuki packs check DIR` checks one), then restart the robot",
        );
    }
}

fn done(r: &Report) -> u8 {
    if r.worst == Level::Fail {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

fn log_files(r: &mut Report, settings: &Settings) {
    match &settings.log_dir {
        None => r.ok(
            "logs",
            "standard error only (the journal, under systemd); set paths.log_dir for daily files",
        ),
        Some(dir) => match writable(dir) {
            Ok(()) => r.ok(
                "logs",
                &format!(
                    "{} (a file a day, {} kept)",
                    crate::logging::current_file(dir).display(),
                    settings.log_retention
                ),
            ),
            Err(e) => r.fail(
                "logs",
                &format!("cannot write in {}: {e}", dir.display()),
                "create the directory and give it to the account the agent runs as",
            ),
        },
    }
}

fn credentials(r: &mut Report, settings: &Settings) -> Option<Credentials> {
    let file = &settings.credentials_file;
    match Credentials::load(file) {
        Ok(c) => {
            r.ok(
                "credentials",
                &format!(
                    "{} (access key {}, mode 0600)",
                    file.display(),
                    c.access_key_id
                ),
            );
            Some(c)
        }
        Err(e) => {
            let text = e.to_string();
            let fix = if text.contains("chmod 600") {
                format!("chmod 600 {}", file.display())
            } else {
                "run `tasuki register` again (it writes the file with mode 0600)".to_string()
            };
            r.fail("credentials", &text, &fix);
            None
        }
    }
}

fn work_dir(r: &mut Report, dir: &Path) {
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| writable(dir)) {
        r.fail(
            "work dir",
            &format!("cannot write in {}: {e}", dir.display()),
            "create it and give it to the account the agent runs as, or set paths.work_dir",
        );
        return;
    }
    let Some(free) = free_bytes(dir) else {
        r.warn(
            "work dir",
            &format!("{}: free space unknown", dir.display()),
            "check it with `df`",
        );
        return;
    };
    let gib = free as f64 / (1024.0 * 1024.0 * 1024.0);
    let detail = format!("{} ({gib:.1} GiB free)", dir.display());
    if free < DISK_WARN_BYTES / 10 {
        r.fail(
            "work dir",
            &detail,
            "free some space: sessions write their spool, downloads and screenshots here",
        );
    } else if free < DISK_WARN_BYTES {
        r.warn("work dir", &detail, "free some space before it runs out");
    } else {
        r.ok("work dir", &detail);
    }
}

/// The log spool: its folder must take lines (a full disk makes the
/// agent keep them in memory, and past a bound stop sessions as
/// `spool_full`), and what waits there has not reached the hub yet.
fn spool(r: &mut Report, work_dir: &Path) {
    let dir = work_dir.join("spool");
    if !dir.exists() {
        r.ok(
            "spool",
            &format!("{} (made when the agent starts)", dir.display()),
        );
        return;
    }
    let waiting = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("lease.json").exists())
                .count()
        })
        .unwrap_or(0);
    let waiting = match waiting {
        0 => "no session's lines waiting".to_string(),
        n => format!(
            "{n} session(s) with lines or a report not yet delivered (the running agent, or \
             the next to start, sends them)"
        ),
    };
    // Some bytes, not an empty file: a full disk still takes those.
    let probe = tempfile::tempfile_in(&dir)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &[0u8; 64 * 1024]));
    if let Err(e) = probe {
        r.fail(
            "spool",
            &format!("cannot write in {}: {e}; {waiting}", dir.display()),
            "free space on its disk, or give the folder to the account the agent runs as: \
             until then a session's lines wait in memory (up to 32 MiB), and past that the \
             session stops as spool_full",
        );
        return;
    }
    let free = free_bytes(&dir).map_or_else(String::new, |b| {
        format!(", {:.1} MiB free", b as f64 / (1024.0 * 1024.0))
    });
    r.ok(
        "spool",
        &format!("{} (writable{free}); {waiting}", dir.display()),
    );
}

fn writable(dir: &Path) -> std::io::Result<()> {
    tempfile::tempfile_in(dir).map(drop)
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let disks = sysinfo::Disks::new_with_refreshed_list().ok()?;
    let dir = std::fs::canonicalize(dir).ok()?;
    disks
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
        .map(|d| d.available_space())
}

fn hub(r: &mut Report, settings: &Settings, creds: &Credentials) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        r.fail(
            "hub",
            "cannot start an async runtime",
            "report this as a bug",
        );
        return;
    };
    // First without a token: reachability of every hub URL, and the
    // clock of the first that answers from its `Date` header, which
    // explains a refused token better than the refusal does.
    let urls = settings.control_plane.hub_urls();
    for url in &urls {
        if let Some(warning) = crate::daemon::plain_http_warning(url) {
            r.warn(
                "hub",
                &warning,
                "serve the hub over TLS (tasuki-hub's certificate, or a reverse proxy) and set \
                 its https:// URL in control_plane.url or control_plane.fallback_urls",
            );
        }
    }
    let built = crate::daemon::hub_http(settings).and_then(|builder| {
        // Built where it runs, as reqwest's connection pool expects.
        runtime.block_on(async {
            builder
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| plain_error(&e))
        })
    });
    let client = match built {
        Ok(c) => c,
        Err(e) => {
            r.fail("hub", &e, "check control_plane.ca_file");
            return;
        }
    };
    let probes: Vec<_> = urls
        .iter()
        .map(|url| {
            let sent = jiff::Timestamp::now();
            // The request is made inside the runtime: its timeout needs the
            // runtime's timer.
            let answer =
                runtime.block_on(async { client.get(format!("{url}/v1/robot")).send().await });
            (url, sent, jiff::Timestamp::now(), answer)
        })
        .collect();
    let any_answered = probes.iter().any(|(.., answer)| answer.is_ok());
    let mut first_answered = None;
    for (url, sent, received, answer) in probes {
        match answer {
            Ok(answer) => {
                r.ok(
                    "hub",
                    &format!(
                        "{} answered in {} ms",
                        masked_url(url),
                        (received - sent).get_milliseconds()
                    ),
                );
                first_answered.get_or_insert((url, sent, received, answer));
            }
            Err(e) => {
                let detail = format!("cannot reach {}: {}", masked_url(url), plain_error(&e));
                let fix = "check control_plane.url and control_plane.fallback_urls, that \
                           tasuki-hub runs at each, and the network between; for a certificate \
                           error, that control_plane.ca_file names the CA that signed the \
                           hub's certificate";
                // The robot works while one hub answers.
                if any_answered {
                    r.warn("hub", &detail, fix);
                } else {
                    r.fail("hub", &detail, fix);
                }
            }
        }
    }
    let Some((answered_url, sent, received, answer)) = first_answered else {
        return;
    };
    let hub_date = answer
        .headers()
        .get(reqwest::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| jiff::fmt::rfc2822::parse(v).ok())
        .map(|z| z.timestamp());
    match hub_date {
        Some(date) => clock(r, date, sent, received),
        None => r.warn(
            "clock",
            "the hub's answer has no Date header to compare with",
            "check this machine's clock by other means (NTP)",
        ),
    }

    // The token at the hub that answered: every hub of the database
    // judges it the same.
    let mut at_answered = settings.clone();
    at_answered.control_plane.url = answered_url.clone();
    at_answered.control_plane.fallback_urls.clear();
    let client = match HubClient::new(&at_answered, creds, Arc::default()) {
        Ok(c) => c,
        Err(e) => {
            r.fail("token", &e.to_string(), "check control_plane.url");
            return;
        }
    };
    let answer = runtime.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(15),
            client.check_registration(&creds.instance_id),
        )
        .await
    });
    use crate::daemon::CallError;
    match answer {
        Err(_) => r.fail(
            "token",
            "the hub did not answer the registration check within 15 s",
            "check the hub's log",
        ),
        Ok(Ok(check)) => r.ok(
            "token",
            &format!(
                "accepted; robot `{}` (id {}) is registered to this machine",
                check.name, check.robot_id
            ),
        ),
        Ok(Err(CallError::Auth(e))) => r.fail(
            "token",
            &format!("the hub refused the token: {e}"),
            "check the access key in the credentials file and its `robot` scope, the \
             token's issuer/audience (control_plane.issuer, control_plane.audience), and \
             this machine's clock (see `clock` above)",
        ),
        Ok(Err(CallError::Rejected { code, message, .. })) => {
            let fix = match code.as_str() {
                "robot_not_registered" => {
                    "run `tasuki register` (the hub does not know this robot)"
                }
                "robot_name_taken" => {
                    "another machine holds the name: register with another name, or with --replace"
                }
                "robot_of_another_key" => {
                    "another access key holds the robot (a hub operator moved it): register \
                     this machine under another name, or ask the operator"
                }
                _ => "run `tasuki register` again",
            };
            r.fail("token", &format!("accepted, but: {code}: {message}"), fix);
        }
        Ok(Err(e)) => r.fail("token", &e.to_string(), "see the message"),
    }
}

/// The error and its causes on one line (reqwest's own message is terse).
fn plain_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// `date` is the hub's clock at whole seconds, read somewhere between
/// `sent` and `received`.
fn clock(r: &mut Report, date: jiff::Timestamp, sent: jiff::Timestamp, received: jiff::Timestamp) {
    let midpoint_ms = (sent.as_millisecond() + received.as_millisecond()) / 2;
    // The header truncates to the second: half a second is the best guess.
    let skew = (date.as_millisecond() + 500 - midpoint_ms) as f64 / 1000.0;
    let detail = if skew < 0.0 {
        format!(
            "this machine's clock is {:.1} s ahead of the hub's (±1 s)",
            -skew
        )
    } else {
        format!("this machine's clock is {skew:.1} s behind the hub's (±1 s)")
    };
    let fix = "synchronise this machine's clock (NTP: `timedatectl set-ntp true`); the agent's \
               tokens are only valid for a short window";
    if skew.abs() > SKEW_FAIL_SECONDS {
        r.fail("clock", &detail, fix);
    } else if skew.abs() > SKEW_WARN_SECONDS {
        r.warn("clock", &detail, fix);
    } else {
        r.ok("clock", &detail);
    }
}

fn browser(r: &mut Report, settings: &Settings) {
    let browser = BrowserSettings {
        chromium: settings.chromium.clone(),
        chromedriver: settings.chromedriver.clone(),
        remote_url: settings.remote_webdriver.clone(),
        headless: true,
        window_size: settings.window_size,
        ..Default::default()
    };
    if settings.remote_webdriver.is_none() {
        let chromium = tasuki_actions::builtin::browser::find_chromium(&browser);
        let driver = tasuki_actions::builtin::browser::find_chromedriver(&browser);
        let (chromium, driver) = match (chromium, driver) {
            (Ok(c), Ok(d)) => (c, d),
            (c, d) => {
                for (what, found) in [("chromium", c), ("chromedriver", d)] {
                    if let Err(e) = found {
                        r.fail(
                            what,
                            &e.to_string(),
                            "install it, or set its path in [browser]",
                        );
                    }
                }
                return;
            }
        };
        let chromium_version = version_of(&chromium);
        let driver_version = version_of(&driver);
        r.ok(
            "chromium",
            &format!(
                "{} ({})",
                chromium.display(),
                chromium_version.as_deref().unwrap_or("version unknown")
            ),
        );
        r.ok(
            "chromedriver",
            &format!(
                "{} ({})",
                driver.display(),
                driver_version.as_deref().unwrap_or("version unknown")
            ),
        );
        match (major(&chromium_version), major(&driver_version)) {
            (Some(a), Some(b)) if a != b => r.fail(
                "browser versions",
                &format!("Chromium {a} but chromedriver {b}"),
                "install the chromedriver of the same major version as the browser",
            ),
            (Some(a), Some(_)) => r.ok("browser versions", &format!("both major version {a}")),
            _ => r.warn(
                "browser versions",
                "could not read both versions",
                "run both with --version and compare",
            ),
        }
    }
    headless_session(r, browser);
}

fn version_of(program: &Path) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The first number with a dot after it: "Chromium 131.0.6778.85" → 131.
fn major(version: &Option<String>) -> Option<u32> {
    version.as_deref()?.split_whitespace().find_map(|w| {
        let (first, _) = w.split_once('.')?;
        first.parse().ok()
    })
}

/// Starts a real headless session through the action runtime, as a
/// session on this robot would.
fn headless_session(r: &mut Report, browser: BrowserSettings) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            r.fail(
                "headless session",
                &format!("no temporary directory: {e}"),
                "check TMPDIR",
            );
            return;
        }
    };
    let yaml = "version: 1\nname: doctor\nsteps:\n  - id: open\n    action: browser.open\n    with: {url: \"about:blank\"}\n";
    let registry = Registry::builtin();
    let outcome = parse_workflow(yaml, "doctor.yaml", &registry, &LoadOptions::default())
        .map_err(|p| p.to_string())
        .and_then(|wf| {
            let params = bind_params(&wf, &ParamInputs::default()).map_err(|p| p.to_string())?;
            Ok((wf, params))
        });
    let (workflow, params) = match outcome {
        Ok(x) => x,
        Err(e) => {
            r.fail("headless session", &e, "report this as a bug");
            return;
        }
    };
    let options = ExecOptions {
        work_dir: dir.path().to_path_buf(),
        artifacts_dir: dir.path().join("artifacts"),
        browser,
        ..ExecOptions::default()
    };
    let Some(runtime) = crate::local_run::runtime() else {
        r.fail(
            "headless session",
            "cannot start an async runtime",
            "report this as a bug",
        );
        return;
    };
    let started = std::time::Instant::now();
    let report = runtime.block_on(Executor::new(registry, options).run(
        &workflow,
        &params,
        Arc::new(NullSink),
        tokio_util::sync::CancellationToken::new(),
    ));
    if report.status == SessionStatus::Success {
        r.ok(
            "headless session",
            &format!("started and closed in {} ms", started.elapsed().as_millis()),
        );
    } else {
        let why = report
            .error
            .map(|e| e.message)
            .unwrap_or_else(|| "it failed".into());
        r.fail(
            "headless session",
            &why,
            "run `tasuki demo` to see the browser start, and check the messages above",
        );
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `browser.warm`: the memory the waiting warm browser holds, that of the
/// running agent when it has one, else that of one started here.
fn warm_browser(r: &mut Report, settings: &Settings) {
    use tasuki_actions::builtin::browser::warm::{Memory, measure_idle, recorded_memory};
    let name = "warm browser";
    if !settings.browser_warm {
        r.ok(
            name,
            "off (browser.warm): each session's first browser step starts its own browser",
        );
        return;
    }
    if settings.remote_webdriver.is_some() {
        r.warn(
            name,
            "browser.warm is on, but browser.remote_webdriver is set: there is no local browser to warm",
            "turn browser.warm off, or unset browser.remote_webdriver",
        );
        return;
    }
    let held = |m: &Memory| {
        let pss = m
            .pss_bytes
            .map(|b| {
                format!(
                    ", {} proportional (PSS: shared pages divided among them)",
                    mib(b)
                )
            })
            .unwrap_or_default();
        format!(
            "{} resident summed over its {} processes{pss}",
            mib(m.rss_bytes),
            m.processes
        )
    };
    if let Some(m) = recorded_memory(&crate::daemon::warm_dir(&settings.work_dir), true) {
        r.ok(
            name,
            &format!(
                "on; the agent's warm browser waits for a session, holding {}",
                held(&m)
            ),
        );
        return;
    }
    let Some(runtime) = crate::local_run::runtime() else {
        r.fail(
            name,
            "cannot start an async runtime",
            "report this as a bug",
        );
        return;
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            r.fail(
                name,
                &format!("no temporary directory: {e}"),
                "check TMPDIR",
            );
            return;
        }
    };
    let browser = BrowserSettings {
        chromium: settings.chromium.clone(),
        chromedriver: settings.chromedriver.clone(),
        headless: settings.headless,
        window_size: settings.window_size,
        ..Default::default()
    };
    let options = ExecOptions {
        browser: browser.clone(),
        env_pass: settings.env_pass.clone(),
        ..ExecOptions::default()
    };
    let measured = runtime.block_on(measure_idle(
        &browser,
        &options,
        dir.path().join("downloads"),
        Duration::from_secs(2),
    ));
    match measured {
        Ok((took, Some(m))) => r.ok(
            name,
            &format!(
                "on; no warm browser waits now (no agent runs here, or it is serving a session); \
                 one started here in {} ms and held {} while idle",
                took.as_millis(),
                held(&m)
            ),
        ),
        Ok((took, None)) => r.ok(
            name,
            &format!(
                "on; one started here in {} ms (its memory cannot be measured on this system)",
                took.as_millis()
            ),
        ),
        Err(e) => r.fail(
            name,
            &format!("on, but a browser cannot be started: {}", e.message),
            "see the browser checks above, or turn browser.warm off",
        ),
    }
}
