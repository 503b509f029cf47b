//! `browser.warm`: an idle robot keeps a headless browser started ahead,
//! and a session's first browser step attaches to it. A real hub, real
//! agents, real chromedriver and Chromium; what runs is read from /proc.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::time::Duration;

use fleet_support::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);
const WARM: &[&str] = &["--set", "browser.warm=true"];

/// Pages for the browser steps, on loopback: `/` (title "Warm page"),
/// `/download.html` (a link to a CSV served as an attachment) and `/hang`
/// (answers after a minute).
async fn page_server() -> String {
    use axum::http::header;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async {
                axum::response::Html(
                    "<html><head><title>Warm page</title></head><body><h1 id=title>Warm page</h1>\
                     <a id=tab href=\"/\" target=_blank>again</a>\
                     <button id=ask onclick=\"document.getElementById('title').textContent = confirm('Sure?') ? 'yes' : 'no'\">ask</button>\
                     </body></html>",
                )
            }),
        )
        .route(
            "/download.html",
            axum::routing::get(|| async {
                axum::response::Html(
                    "<!doctype html><title>download</title><a id=get href=\"/files/report.csv\">report</a>",
                )
            }),
        )
        .route(
            "/files/report.csv",
            axum::routing::get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/csv"),
                        (
                            header::CONTENT_DISPOSITION,
                            "attachment; filename=\"report.csv\"",
                        ),
                    ],
                    "id,total\n1,42\n",
                )
            }),
        )
        .route(
            "/hang",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                axum::response::Html("<p>late</p>")
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// Every live process: (pid, parent, command line).
fn processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let parent = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if state == "Z" || state == "X" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        out.push((
            pid,
            parent,
            String::from_utf8_lossy(&cmdline).replace('\0', " "),
        ));
    }
    out
}

/// Live processes whose command line contains `needle`.
fn mentioning(needle: &str) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|(_, _, cmd)| cmd.contains(needle))
        .map(|(pid, _, _)| pid)
        .collect()
}

/// A browser the agent runs: chromedriver's pid, Chromium's (the browser
/// process itself) and its profile.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    driver: u32,
    chromium: u32,
    profile: String,
}

/// The browsers among the agent's descendants.
fn browsers_of(agent: u32) -> Vec<Seen> {
    let all = processes();
    let children = |of: u32| -> Vec<&(u32, u32, String)> {
        all.iter().filter(|(_, parent, _)| *parent == of).collect()
    };
    let mut seen = Vec::new();
    for (driver, _, cmd) in children(agent) {
        if !cmd.contains("chromedriver") {
            continue;
        }
        for (chromium, _, cmd) in children(*driver) {
            if cmd.contains("--type=") {
                continue;
            }
            if let Some(profile) = cmd
                .split_whitespace()
                .find_map(|a| a.strip_prefix("--user-data-dir="))
            {
                seen.push(Seen {
                    driver: *driver,
                    chromium: *chromium,
                    profile: profile.to_string(),
                });
            }
        }
    }
    seen
}

/// Waits until the agent has a browser warm and idle (it says so, and its
/// processes run), other than `not`; returns it.
fn warm_browser(agent: &Agent, not: &[&Seen]) -> Seen {
    let mut found = None;
    let ok = eventually(LIMIT, || {
        let log = agent.log();
        found = browsers_of(agent.pid()).into_iter().find(|b| {
            !not.iter().any(|n| n.profile == b.profile)
                && log.contains(&format!("; profile {})", b.profile))
        });
        found.is_some()
    });
    assert!(ok, "no warm browser started:\n{}", agent.log());
    found.expect("found")
}

/// Waits until nothing of `browser` runs and its profile is gone.
fn assert_gone(browser: &Seen, what: &str) {
    let gone = eventually(Duration::from_secs(10), || {
        !alive(browser.driver)
            && !alive(browser.chromium)
            && mentioning(&browser.profile).is_empty()
    });
    assert!(
        gone,
        "{what}: the browser {browser:?} left processes behind: {:?}",
        mentioning(&browser.profile)
    );
    assert!(
        eventually(Duration::from_secs(5), || !std::path::Path::new(
            &browser.profile
        )
        .exists()),
        "{what}: the profile {} was left behind",
        browser.profile
    );
}

/// A running agent that is stopped with SIGTERM, not killed, should the
/// test fail: so that it ends its warm browser rather than leave it.
struct Warm(Option<Agent>);

impl Warm {
    fn start(robot: &Robot, args: &[&str]) -> Warm {
        Warm(Some(robot.start(args)))
    }

    fn into_inner(mut self) -> Agent {
        self.0.take().expect("running")
    }
}

impl std::ops::Deref for Warm {
    type Target = Agent;
    fn deref(&self) -> &Agent {
        self.0.as_ref().expect("running")
    }
}

impl std::ops::DerefMut for Warm {
    fn deref_mut(&mut self) -> &mut Agent {
        self.0.as_mut().expect("running")
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        if let Some(mut agent) = self.0.take() {
            // `pid` panics once the agent has been waited for.
            let pid = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| agent.pid()));
            if let Ok(pid) = pid {
                // The first drains; a second cancels what still runs.
                for _ in 0..2 {
                    let _ = std::process::Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status();
                    if agent.wait(Duration::from_secs(10)).is_some() {
                        break;
                    }
                }
            }
        }
    }
}

/// SIGTERM: the agent drains and exits; returns its log.
fn stop(agent: Warm) -> String {
    let mut agent = agent.into_inner();
    agent.signal("TERM");
    let status = agent.wait(Duration::from_secs(30));
    let log = agent.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent did not exit cleanly ({status:?}):\n{log}"
    );
    log
}

/// The session's log messages, one string.
async fn session_log(api: &hub_support::Api, id: i64) -> String {
    all_logs(api, id)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn step<'a>(session: &'a Value, id: &str) -> &'a Value {
    session["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step {id} in {session}"))
}

const GOTO: &str = "version: 1\nname: warm-goto\nparams:\n  page: \"\"\nsteps:\n  - id: go\n    action: browser.goto\n    with: {url: \"${params.page}\"}\n  - id: title\n    action: browser.get_text\n    with: {selector: \"#title\"}\n";

/// Before any session, an idle robot has chromedriver and Chromium running;
/// the first session's first step attaches to them (and its downloads go to
/// the session's own directory), and the second session gets a fresh
/// browser, never the first's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_robot_keeps_a_browser_warm_and_each_session_gets_a_fresh_one() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "warm");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = Warm::start(&robot, WARM);
    let pages = page_server().await;
    let first = warm_browser(&agent, &[]);

    let yaml = "version: 1\nname: warm-download\nparams:\n  pages: \"\"\nsteps:\n  - id: go\n    action: browser.goto\n    with: {url: \"${params.pages}/download.html\"}\n  - id: click\n    action: browser.click\n    with: {selector: \"#get\"}\n  - id: saved\n    action: browser.wait_for_download\n    with: {name: report, timeout: 20s}\n  - id: back\n    action: browser.goto\n    with: {url: \"${params.pages}/\"}\n  - id: title\n    action: browser.get_text\n    with: {selector: \"#title\"}\n  - id: open_tab\n    action: browser.click\n    with: {selector: \"#tab\"}\n  - id: to_tab\n    action: browser.switch_window\n    with: {new: true}\n  - id: close_tab\n    action: browser.close_window\n  - id: ask\n    action: browser.click\n    with: {selector: \"#ask\"}\n  - id: confirm\n    action: browser.accept_dialog\n  - id: answered\n    action: browser.get_text\n    with: {selector: \"#title\"}\n";
    let wf = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, wf, json!({ "pages": pages })).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}\n{}", agent.log());
    let log = session_log(&f.api, id).await;
    assert!(
        log.contains("attached to the warm browser") && log.contains(&first.profile),
        "the first step did not attach to the warm browser {first:?}:\n{log}"
    );
    assert!(!log.contains("started Chromium"), "{log}");
    assert_eq!(step(&s, "title")["output"]["text"], "Warm page");
    // The other actions work on it as on a browser of the session's own:
    // a tab opened by a link, a dialog opened by a click.
    assert_eq!(step(&s, "to_tab")["output"]["title"], "Warm page", "{s}");
    assert_eq!(step(&s, "confirm")["output"]["message"], "Sure?", "{s}");
    assert_eq!(step(&s, "answered")["output"]["text"], "yes", "{s}");
    let saved = &step(&s, "saved")["output"];
    assert_eq!(saved["name"], "report.csv", "{s}");
    let path = saved["path"].as_str().expect("a path");
    let artifacts = robot.dir.join("work").join("artifacts");
    assert!(
        path.starts_with(artifacts.to_str().unwrap()) && path.contains("/downloads/"),
        "the download went to {path}, not the session's downloads directory"
    );
    assert!(!path.contains("warm-browser"), "{path}");

    // Torn down with its session; the next one is warmed once idle.
    assert_gone(&first, "after its session");
    let second = warm_browser(&agent, &[&first]);
    assert_ne!(second.profile, first.profile);
    let wf = workflow(&f.api, GOTO, &[]).await;
    let id = queue(&f.api, wf, json!({ "page": format!("{pages}/") })).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    let log = session_log(&f.api, id).await;
    assert!(
        log.contains("attached to the warm browser") && log.contains(&second.profile),
        "{log}"
    );
    assert!(!log.contains(&first.profile), "{log}");
    assert_gone(&second, "after the second session");

    let third = warm_browser(&agent, &[&first, &second]);
    stop(agent);
    assert_gone(&third, "after a drain");
}

/// A step that wants another kind of browser (another window size, or a
/// window at all) launches its own, and the warm one is ended at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_asking_for_another_kind_of_browser_launches_its_own_and_the_warm_one_ends() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "particular");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = Warm::start(&robot, WARM);
    let pages = page_server().await;
    let warm = warm_browser(&agent, &[]);

    let yaml = "version: 1\nname: small-window\nparams:\n  page: \"\"\nsteps:\n  - id: open\n    action: browser.open\n    with: {url: \"${params.page}\", window_size: [800, 600]}\n  - id: size\n    action: browser.execute_script\n    with: {script: \"return window.outerWidth + 'x' + window.outerHeight\"}\n";
    let wf = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, wf, json!({ "page": format!("{pages}/") })).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}\n{}", agent.log());
    assert_eq!(step(&s, "size")["output"]["result"], "800x600", "{s}");
    let log = session_log(&f.api, id).await;
    assert!(
        log.contains("the warm browser was not used and has been ended")
            && log.contains("a 800x600 window (the warm one is 1280x800)")
            && log.contains("started Chromium"),
        "{log}"
    );
    // Nothing of it is left.
    assert_gone(&warm, "set aside for a smaller window");

    // A window at all: the warm one is headless. Without a display the
    // launch may fail; either way the warm one is ended and nothing stays.
    let again = warm_browser(&agent, &[&warm]);
    let yaml = "version: 1\nname: headed\nparams:\n  page: \"\"\nsteps:\n  - id: open\n    action: browser.open\n    with: {url: \"${params.page}\", headless: false}\n";
    let wf = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, wf, json!({ "page": format!("{pages}/") })).await;
    let s = finished(&f.api, id, LIMIT).await;
    let log = session_log(&f.api, id).await;
    assert!(
        log.contains("the warm browser was not used and has been ended")
            && log.contains("a browser with a window (headless: false)"),
        "{s}\n{log}"
    );
    assert_gone(&again, "set aside for a headed browser");

    let last = warm_browser(&agent, &[&warm, &again]);
    stop(agent);
    assert_gone(&last, "after a drain");
}

/// Chromium of the idle warm browser is killed: the next session still
/// runs, never on the dead browser, and nothing of it is left (its
/// chromedriver ends too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_browser_whose_chromium_died_is_not_handed_out_and_leaves_nothing() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "crashy");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = Warm::start(&robot, WARM);
    let pages = page_server().await;
    let dead = warm_browser(&agent, &[]);
    let wf = workflow(&f.api, GOTO, &[]).await;

    agent_kill(dead.chromium);
    let id = queue(&f.api, wf, json!({ "page": format!("{pages}/") })).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}\n{}", agent.log());
    assert_eq!(step(&s, "title")["output"]["text"], "Warm page");
    let log = session_log(&f.api, id).await;
    // Either the step found it dead (and launched), or the supervisor did
    // first (and warmed another, which the step took): never the dead one.
    let probed =
        log.contains("the warm browser did not answer") && log.contains("started Chromium");
    let replaced = agent.log().contains("the warm browser stopped answering")
        && log.contains("attached to the warm browser");
    assert!(probed || replaced, "{log}\n{}", agent.log());
    assert!(!log.contains(&format!("profile {}", dead.profile)), "{log}");
    assert_gone(&dead, "after Chromium was killed");

    // Killed while idle with no session coming: the supervisor ends it.
    let idle = warm_browser(&agent, &[&dead]);
    agent_kill(idle.chromium);
    assert_gone(&idle, "killed while idle");
    let next = warm_browser(&agent, &[&dead, &idle]);
    assert!(
        agent.log().contains("the warm browser stopped answering"),
        "{}",
        agent.log()
    );
    stop(agent);
    assert_gone(&next, "after a drain");
}

fn agent_kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// A session using the warm browser is cancelled: its browser ends with
/// it; the robot warms another, which a drain ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_session_leaves_nothing_of_the_warm_browser_it_took() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "cancelled");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = Warm::start(&robot, WARM);
    let pages = page_server().await;
    let warm = warm_browser(&agent, &[]);
    let yaml = "version: 1\nname: hangs\nparams:\n  page: \"\"\nsteps:\n  - id: go\n    action: browser.goto\n    with: {url: \"${params.page}\"}\n  - id: hang\n    action: browser.wait_for\n    with: {selector: \"#never\", timeout: 10m}\n";
    let wf = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, wf, json!({ "page": format!("{pages}/") })).await;
    running(&f.api, id, LIMIT).await;
    let attached = {
        let mut attached = false;
        for _ in 0..500 {
            if session_log(&f.api, id)
                .await
                .contains("attached to the warm browser")
            {
                attached = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        attached
    };
    assert!(attached, "{}", session_log(&f.api, id).await);
    let r = f
        .api
        .delete(&format!("/v1/session_queues/{id}/cancel"))
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "cancelled", "{s}");
    assert_gone(&warm, "after its session was cancelled");
    let next = warm_browser(&agent, &[&warm]);
    stop(agent);
    assert_gone(&next, "after a drain");
}

/// `--once`: the session takes the warm browser, no other is warmed after
/// it, and the agent exits leaving nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_leaves_no_warm_browser_behind() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "single");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = Warm::start(&robot, &["--once", "--set", "browser.warm=true"]);
    let pages = page_server().await;
    let warm = warm_browser(&agent, &[]);
    let wf = workflow(&f.api, GOTO, &[]).await;
    let id = queue(&f.api, wf, json!({ "page": format!("{pages}/") })).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    assert!(
        session_log(&f.api, id)
            .await
            .contains("attached to the warm browser")
    );
    let mut agent = agent.into_inner();
    let status = agent.wait(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        agent.log()
    );
    assert_gone(&warm, "after --once");
    let log = agent.log();
    assert_eq!(
        log.matches("a warm browser is ready for the next session")
            .count(),
        1,
        "a second browser was warmed for a session --once never takes:\n{log}"
    );
}

/// An agent killed with SIGKILL leaves its warm browser running; started
/// again, it ends it before warming another.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_ends_the_warm_browser_a_killed_one_left() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "phoenix");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = Warm::start(&robot, WARM);
    let left = warm_browser(&agent, &[]);
    agent.signal("KILL");
    drop(agent);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(left.driver) && alive(left.chromium),
        "the kill alone ended the browser"
    );

    let again = Warm::start(&robot, WARM);
    let ended = eventually(Duration::from_secs(10), || {
        !alive(left.driver) && !alive(left.chromium)
    });
    assert!(
        ended,
        "the killed agent's warm browser still runs:\n{}",
        again.log()
    );
    assert!(
        again
            .log()
            .contains("ended processes that sessions of an earlier run left running"),
        "{}",
        again.log()
    );
    let gone = eventually(Duration::from_secs(10), || {
        mentioning(&left.profile).is_empty()
    });
    assert!(gone, "{:?}", mentioning(&left.profile));
    // Its profile too (cookies, for a session's browser): recorded with it.
    assert!(
        !std::path::Path::new(&left.profile).exists(),
        "the killed agent's warm profile {} was left behind",
        left.profile
    );
    let fresh = warm_browser(&again, &[&left]);
    assert_ne!(fresh.profile, left.profile);
    stop(again);
    assert_gone(&fresh, "after a drain");
}

/// `/metrics` and `tasuki doctor` report the memory the waiting warm
/// browser holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_doctor_report_the_warm_browsers_memory() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "measured");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = Warm::start(
        &robot,
        &[
            "--set",
            "browser.warm=true",
            "--set",
            "metrics.listen=127.0.0.1:0",
        ],
    );
    let warm = warm_browser(&agent, &[]);
    let bound = agent
        .log()
        .lines()
        .find(|l| l.contains("serving /healthz and /metrics"))
        .and_then(|l| l.split("bound=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
        .expect("the agent logs the listener's address");
    let text = reqwest::get(format!("http://{bound}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics");
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(value("tasuki_warm_browser_ready"), 1.0, "{text}");
    let bytes = value("tasuki_warm_browser_bytes");
    assert!(
        bytes > 50.0 * 1024.0 * 1024.0 && bytes < 8.0 * 1024.0 * 1024.0 * 1024.0,
        "{bytes}"
    );
    let pss = value("tasuki_warm_browser_pss_bytes");
    assert!(
        pss > 10.0 * 1024.0 * 1024.0 && pss < bytes,
        "{pss} of {bytes}"
    );

    let doctor = |extra: &[&str]| -> String {
        let out = std::process::Command::new(tasuki_bin())
            .arg("doctor")
            .arg("--config")
            .arg(robot.config())
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run tasuki doctor");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let out = doctor(WARM);
    let line = out
        .lines()
        .find(|l| l.contains("warm browser:"))
        .unwrap_or_else(|| panic!("no warm browser line:\n{out}"));
    assert!(
        line.starts_with(
            "ok    warm browser: on; the agent's warm browser waits for a session, holding "
        ) && line.contains(" MiB resident summed over its "),
        "{out}"
    );
    stop(agent);
    assert_gone(&warm, "after a drain");

    // No agent: the doctor measures one of its own, and leaves nothing.
    let out = doctor(WARM);
    assert!(
        out.contains("ok    warm browser: on; no warm browser waits now")
            && out.contains("MiB resident summed over its"),
        "{out}"
    );
    let out = doctor(&[]);
    assert!(
        out.contains("ok    warm browser: off (browser.warm)"),
        "{out}"
    );
}
