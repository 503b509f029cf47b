//! The web console at `/ui`, end to end: a real hub and a real agent, the
//! console driven in headless Chromium by `tasuki run` workflows (the
//! project's own WebDriver code), and its cookie, CSRF and scope checks
//! read with a plain HTTP client. Screenshots of each page are kept as
//! test artifacts in `target/test-artifacts/console-screens/` (or
//! `$TASUKI_CONSOLE_SCREENS`).

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fleet_support::*;
use hub_support::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(90);

/// Browser tests need Chromium and chromedriver; they fail, never skip.
fn require_browser() {
    let found = |names: &[&str]| {
        std::env::var_os("PATH").is_some_and(|p| {
            std::env::split_paths(&p).any(|d| names.iter().any(|n| d.join(n).is_file()))
        })
    };
    assert!(
        found(&["chromium", "chromium-browser", "google-chrome"]) && found(&["chromedriver"]),
        "the console tests need Chromium and chromedriver on PATH (Debian/Ubuntu: apt-get install chromium chromium-driver)"
    );
}

/// Percent-encodes a form value.
fn enc(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// A plain HTTP client of the console: no redirects followed, the session
/// cookie kept by hand.
struct Browserless {
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in {}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').expect("end of the value")].to_string()
    }
}

impl Browserless {
    fn new(hub: &Hub) -> Browserless {
        Browserless {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a client"),
            base: hub.url.clone(),
            cookie: None,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Page {
        let r = match &self.cookie {
            Some(c) => r.header("cookie", format!("tasuki_console={c}")),
            None => r,
        };
        let resp = r.send().await.expect("the hub answers");
        Page {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.text().await.expect("a body"),
        }
    }

    async fn get(&self, path: &str) -> Page {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form(fields)),
        )
        .await
    }

    /// Signs in; the answer to the sign-in.
    async fn sign_in(&mut self, key: &Key, next: &str) -> Page {
        let page = self
            .post(
                "/ui/login",
                &[
                    ("access_key_id", &key.id),
                    ("secret_access_key", &key.secret),
                    ("next", next),
                ],
            )
            .await;
        assert_eq!(page.status, 303, "sign-in: {}", page.body);
        let set = page
            .headers
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .expect("a Set-Cookie");
        let value = set
            .strip_prefix("tasuki_console=")
            .and_then(|v| v.split(';').next())
            .expect("the session cookie");
        self.cookie = Some(value.to_string());
        page
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_cookie_csrf_scopes_and_error_pages_over_plain_http() {
    let scratch = Scratch::new();
    let full = create_key(&scratch, ALL_SCOPES);
    let no_delete = create_key(&scratch, "session_queue.read session_queue.write");
    // Never signed in with: its failures are not forgiven as a trusted
    // key's would be (auth_limit.rs).
    let guessed = create_key(&scratch, "session_queue.read");
    let hub = Hub::start_with(&scratch, &["--auth-failures-per-key", "3"]);
    let api = Api::new(&hub, Some(token(&full, ALL_SCOPES)));
    let wf = create_hello(&api).await;
    // No robot: it stays queued.
    let queued = queue(&api, wf, json!({"token": "t0k3n-value"})).await;

    // Not signed in: to the sign-in page, and back here after.
    let mut c = Browserless::new(&hub);
    let page = c.get(&format!("/ui/sessions/{queued}")).await;
    assert_eq!(page.status, 303);
    assert_eq!(
        page.location(),
        format!("/ui/login?next=/ui/sessions/{queued}")
    );
    let login = c.get(page.location()).await;
    assert_eq!(login.status, 200);
    let csp = login.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!login.body.contains("<script>"), "an inline script");

    // The cookie's flags.
    let signed = c.sign_in(&full, &format!("/ui/sessions/{queued}")).await;
    assert_eq!(signed.location(), format!("/ui/sessions/{queued}"));
    let set = signed.headers["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=1800"] {
        assert!(set.contains(flag), "{flag} missing: {set}");
    }
    assert!(!set.contains("Secure"), "a plain-HTTP hub: {set}");

    // `next` never leads off the console.
    for evil in ["https://evil.example/", "//evil.example/ui", "/v1/robots"] {
        let mut other = Browserless::new(&hub);
        let page = other.sign_in(&full, evil).await;
        assert_eq!(page.location(), "/ui/sessions", "{evil}");
    }

    // A wrong secret: refused, named, and limited like POST /v1/token.
    let wrong = Key {
        id: guessed.id.clone(),
        secret: "0".repeat(64),
    };
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let page = Browserless::new(&hub)
            .post(
                "/ui/login",
                &[
                    ("access_key_id", &wrong.id),
                    ("secret_access_key", &wrong.secret),
                ],
            )
            .await;
        assert!(!page.body.contains(&wrong.secret));
        statuses.push(page.status);
    }
    assert_eq!(&statuses[..3], &[401, 401, 401], "{statuses:?}");
    assert_eq!(statuses[4], 429, "{statuses:?}");

    // The session page, its forms' CSRF token.
    let page = c.get(&format!("/ui/sessions/{queued}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("queued"));
    assert!(!page.body.contains("t0k3n-value"), "a secret param shown");
    let csrf = page.csrf();
    let cancel = format!("/ui/sessions/{queued}/cancel");

    // Without the token, or with a wrong one: refused, nothing changed.
    let page = c.post(&cancel, &[]).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("CSRF"), "{}", page.body);
    let page = c.post(&cancel, &[("csrf", &"ab".repeat(32))]).await;
    assert_eq!(page.status, 403);
    // A token of another sign-in of the same key does not pass either.
    let mut second = Browserless::new(&hub);
    second.sign_in(&full, "/ui").await;
    let page = second.post(&cancel, &[("csrf", &csrf)]).await;
    assert_eq!(page.status, 403);
    let still = api.get(&format!("/v1/session_queues/{queued}")).await;
    assert_eq!(still.body["status"], "queued");

    // A key without session_queue.delete: refused, the scope named.
    let mut reader = Browserless::new(&hub);
    reader.sign_in(&no_delete, "/ui").await;
    let page = reader.get(&format!("/ui/sessions/{queued}")).await;
    assert_eq!(page.status, 200);
    let page = reader.post(&cancel, &[("csrf", &page.csrf())]).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("session_queue.delete"), "{}", page.body);
    let still = api.get(&format!("/v1/session_queues/{queued}")).await;
    assert_eq!(still.body["status"], "queued");

    // With it: cancelled, and back to the session's page.
    let page = c.post(&cancel, &[("csrf", &csrf)]).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location(), format!("/ui/sessions/{queued}"));
    let done = api.get(&format!("/v1/session_queues/{queued}")).await;
    assert_eq!(done.body["status"], "cancelled");

    // The log stream of an ended session: its status, then its end.
    let page = c
        .get(&format!("/ui/sessions/{queued}/log/stream?after=0"))
        .await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("event: status\ndata: cancelled") && page.body.contains("event: end"),
        "{}",
        page.body
    );

    // Cookies the hub did not make for this key: forged, expired, an API
    // token without the console's nonce. Each leads to the sign-in page
    // (and back to the page after), and clears itself.
    let with_nonce = |mut c: Value| {
        c["nonce"] = json!("00112233445566778899aabbccddeeff");
        c
    };
    let mut expired = with_nonce(claims(&full, ALL_SCOPES));
    expired["nbf"] = json!(now() - 4000);
    expired["exp"] = json!(now() - 3600);
    for (what, cookie) in [
        (
            "forged",
            sign(&"f".repeat(64), &with_nonce(claims(&full, ALL_SCOPES))),
        ),
        ("expired", sign(&full.secret, &expired)),
        ("without a nonce", token(&full, ALL_SCOPES)),
        ("not a token", "garbage".to_string()),
    ] {
        let mut other = Browserless::new(&hub);
        other.cookie = Some(cookie);
        let page = other.get("/ui/robots").await;
        assert_eq!(page.status, 303, "{what}");
        assert_eq!(page.location(), "/ui/login?next=/ui/robots", "{what}");
        assert!(
            page.headers["set-cookie"]
                .to_str()
                .unwrap()
                .contains("Max-Age=0"),
            "{what}"
        );
    }
    // One the test signs itself, as the hub does: the bearer path checks it.
    let mut own = Browserless::new(&hub);
    own.cookie = Some(sign(&full.secret, &with_nonce(claims(&full, ALL_SCOPES))));
    assert_eq!(own.get("/ui/robots").await.status, 200);

    // Filters by workflow and robot (the console's own, beside the API's
    // search terms).
    let page = c.get(&format!("/ui/sessions?workflow={wf}")).await;
    assert!(
        page.body.contains(&format!("id=\"session-{queued}\"")),
        "{}",
        page.body
    );
    let page = c
        .get(&format!(
            "/ui/sessions?workflow={}&after=2000-01-01",
            wf + 1
        ))
        .await;
    assert!(page.body.contains("No sessions match."), "{}", page.body);
    let page = c.get("/ui/sessions?robot=1").await;
    assert!(page.body.contains("No sessions match."), "{}", page.body);
    let page = c.get("/ui/sessions?robot=the-bot").await;
    assert!(
        page.body.contains("the robot filter is an id"),
        "{}",
        page.body
    );

    // Error pages.
    let page = c.get("/ui/sessions/999999").await;
    assert_eq!(page.status, 404);
    assert!(page.body.contains("there is no session queue 999999"));
    assert_eq!(c.get("/ui/sessions/abc").await.status, 404);
    assert_eq!(c.get("/ui/workflows/999999").await.status, 404);
    let page = c.get("/ui/sessions?status=finished").await;
    assert!(page.body.contains("unknown session status `finished`"));
    for path in ["/ui/sessions", "/ui/robots", "/ui/workflows"] {
        let page = c.get(path).await;
        assert_eq!(page.status, 200, "{path}");
    }

    // Signing out clears the cookie.
    let page = c.get("/ui/sessions").await;
    let out = c.post("/ui/logout", &[("csrf", &page.csrf())]).await;
    assert_eq!(out.status, 303);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );

    // Deleting the key ends its sign-ins at once.
    let page = reader.get("/ui/sessions").await;
    assert_eq!(page.status, 200);
    let out = hub_command()
        .args(["keys", "delete", &no_delete.id])
        .args(scratch.db_args())
        .output()
        .expect("keys delete");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = reader.get("/ui/sessions").await;
    assert_eq!(page.status, 303);
    assert!(
        page.location().starts_with("/ui/login"),
        "{}",
        page.location()
    );

    // `--no-console`: no /ui at all.
    let plain = Scratch::new();
    let hub = Hub::start_with(&plain, &["--no-console"]);
    let c = Browserless::new(&hub);
    for path in ["/ui", "/ui/sessions", "/ui/login", "/ui/static/console.js"] {
        assert_eq!(c.get(path).await.status, 404, "{path}");
    }
}

/// Runs a console-driving workflow with `tasuki run`; its report.
fn drive(dir: &Path, shots: &Path, name: &str, yaml: &str, key: &Key) -> Value {
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).expect("write the driver");
    let out = std::process::Command::new(tasuki_bin())
        .current_dir(dir)
        .arg("run")
        .arg(&file)
        .args(["--output", "json", "--artifacts"])
        .arg(shots)
        .args(["--param", &format!("key_secret={}", key.secret)])
        .stdin(Stdio::null())
        .output()
        .expect("start tasuki run");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "driver {name} failed ({:?}): {}\n{}",
        out.status,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// The first steps of every driver: open the browser at `path`, which
/// sends it to the sign-in page, and sign in; it is back at `path` after.
fn signed_in_at(base: &str, key: &Key, path: &str, steps: &str) -> String {
    format!(
        r##"version: 1
name: console-driver
params:
  key_secret: {{secret: true}}
steps:
  - id: open
    action: browser.open
    with: {{window_size: [1280, 800]}}
  - id: go
    action: browser.goto
    with: {{url: "{base}{path}"}}
  - id: key
    action: browser.type
    with: {{selector: "#access_key_id", text: "{key_id}"}}
  - id: secret
    action: browser.type
    with: {{selector: "#secret_access_key", text: "${{params.key_secret}}"}}
  - id: sign_in
    action: browser.click
    with: {{selector: "#sign-in"}}
  - id: back
    action: browser.wait_for_url
    with: {{contains: "{path}"}}
{steps}"##,
        key_id = key.id
    )
}

fn out<'a>(report: &'a Value, step: &str) -> &'a Value {
    &report["steps"][step]["output"]
}

const SLOW: &str = r##"version: 1
name: slow
description: counts to twelve, a line a second
params:
  who: world
steps:
  - id: count
    action: shell.run
    with: {argv: [sh, -c, "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line-$i; sleep 1; done"]}
"##;

const LONG: &str = r##"version: 1
name: long
params:
  pidfile: ""
steps:
  - id: wait
    action: shell.run
    with: {argv: [sh, -c, "echo $$ > \"$1\"; exec sleep 300", sh, "${params.pidfile}"]}
"##;

const SECRETIVE: &str = r##"version: 1
name: secretive
params:
  token: {secret: true}
  label: plain
steps:
  - id: use
    action: shell.run
    with: {argv: [sh, -c, "test -n \"$1\" && echo used-the-token", sh, "${params.token}"]}
"##;

fn broken(base: &str) -> String {
    format!(
        r##"version: 1
name: broken
steps:
  - id: open
    action: browser.open
  - id: go
    action: browser.goto
    with: {{url: "{base}/ui/login"}}
  - id: press
    action: browser.click
    with: {{selector: "#no-such-button", timeout: 2s}}
"##
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser_against_a_real_fleet() {
    require_browser();
    let f = Fleet::start();
    let base = f.hub.url.clone();
    let robot = Robot::new(f.scratch.dir.path(), "console-bot");
    robot.register_ok(&f.hub, &f.key, &["--labels", "screens"]);
    let _agent = robot.start(&[]);
    let shots = f.scratch.dir.path().join("console-screens");
    let work = f.scratch.dir.path().join("driver");
    std::fs::create_dir_all(&work).expect("the driver's folder");
    let slow = workflow(&f.api, SLOW, &[]).await;
    let long = workflow(&f.api, LONG, &[]).await;
    let secretive = workflow(&f.api, SECRETIVE, &[]).await;
    let broken_wf = workflow(&f.api, &broken(&base), &[]).await;
    // Pinned to a robot that does not exist: its sessions stay queued.
    let parked = workflow(
        &f.api,
        "version: 1\nname: parked\nsteps:\n  - id: wait\n    action: log\n    with: {message: never}\n",
        &["nobody"],
    )
    .await;
    let bearer = f.api.token.clone().expect("the fleet's token");
    let robot_bearer = token(&f.key, "robot");

    // 1. Sign in, queue `slow` from its workflow page, and watch its log
    // stream in: lines arrive on the page without a reload while it runs.
    let r = drive(
        &work,
        &shots,
        "watch",
        &signed_in_at(
            &base,
            &f.key,
            &format!("/ui/workflows/{slow}"),
            &format!(
                r##"  - id: workflow_shot
    action: browser.screenshot
    with: {{path: workflow.png}}
  - id: queue
    action: browser.click
    with: {{selector: "#queue"}}
  - id: running
    action: browser.wait_for
    with: {{selector: "#session-status", text: "running", timeout: 60s}}
  - id: mark
    action: browser.execute_script
    with: {{script: "window.consoleMarker = 'same-page'; return location.pathname"}}
  - id: streamed
    action: browser.wait_for
    with: {{selector: "#log", text: "line-8", timeout: 30s}}
  - id: still
    action: browser.execute_script
    with: {{script: "return [window.consoleMarker || 'reloaded', document.getElementById('session-status').textContent]"}}
  - id: running_shot
    action: browser.screenshot
    with: {{path: session-running.png}}
  - id: done
    action: browser.wait_for
    with: {{selector: "#session-status", text: "success", timeout: 60s}}
  - id: log
    action: browser.get_text
    with: {{selector: "#log"}}
  - id: steps
    action: browser.get_text
    with: {{selector: "#steps"}}
  - id: session_shot
    action: browser.screenshot
    with: {{path: session.png}}
  - id: list
    action: browser.goto
    with: {{url: "{base}/ui/sessions"}}
  - id: table
    action: browser.get_text
    with: {{selector: "#sessions-table tbody tr"}}
  - id: sessions_shot
    action: browser.screenshot
    with: {{path: sessions.png}}
  - id: list_mark
    action: browser.execute_script
    with: {{script: "window.listMarker = 'kept'; return null"}}
  - id: queue_elsewhere
    action: browser.execute_script
    with:
      script: "fetch('/v1/session_queues', {{method: 'POST', headers: {{'authorization': 'Bearer {bearer}', 'content-type': 'application/json'}}, body: JSON.stringify({{workflow_id: {parked}}})}}); return null"
  - id: appeared
    action: browser.wait_for
    with: {{selector: "#sessions-table tbody", text: "parked", timeout: 20s}}
  - id: list_kept
    action: browser.execute_script
    with: {{script: "return window.listMarker || 'reloaded'"}}
  - id: robots
    action: browser.goto
    with: {{url: "{base}/ui/robots"}}
  - id: robot_row
    action: browser.get_text
    with: {{selector: "#robots tbody tr"}}
  - id: robots_shot
    action: browser.screenshot
    with: {{path: robots.png}}
  - id: robots_mark
    action: browser.execute_script
    with: {{script: "window.robotsMarker = 'kept'; return null"}}
  - id: register_elsewhere
    action: browser.execute_script
    with:
      script: "fetch('/v1/robot/robots/late-bot', {{method: 'PUT', headers: {{'authorization': 'Bearer {robot_bearer}', 'content-type': 'application/json'}}, body: JSON.stringify({{instance_id: 'late-bot', version: 'test', max_concurrency: 1}})}}); return null"
  - id: late_robot
    action: browser.wait_for
    with: {{selector: "#robots tbody", text: "late-bot", timeout: 20s}}
  - id: robots_kept
    action: browser.execute_script
    with: {{script: "return window.robotsMarker || 'reloaded'"}}
  - id: workflows
    action: browser.goto
    with: {{url: "{base}/ui/workflows"}}
  - id: workflows_shot
    action: browser.screenshot
    with: {{path: workflows.png}}
"##
            ),
        ),
        &f.key,
    );
    let path = out(&r, "mark")["result"].as_str().unwrap_or("").to_string();
    let watched: i64 = path
        .strip_prefix("/ui/sessions/")
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("the queue form led to {path}"));
    assert_eq!(
        out(&r, "still")["result"],
        json!(["same-page", "▶ running"]),
        "line-8 arrived over the stream while it ran"
    );
    let log = out(&r, "log")["text"].as_str().unwrap_or("");
    for i in 1..=12 {
        assert!(
            log.contains(&format!("line-{i}\n")) || log.ends_with(&format!("line-{i}")),
            "line-{i} missing: {log}"
        );
    }
    let steps = out(&r, "steps")["text"].as_str().unwrap_or("");
    assert!(
        steps.contains("count") && steps.contains("success"),
        "{steps}"
    );
    let row = out(&r, "table")["text"].as_str().unwrap_or("");
    assert!(
        row.contains(&format!("#{watched}"))
            && row.contains("success")
            && row.contains("slow")
            && row.contains("console-bot"),
        "{row}"
    );
    assert_eq!(
        out(&r, "list_kept")["result"],
        "kept",
        "the new session appeared in the list without a reload"
    );
    assert_eq!(
        out(&r, "robots_kept")["result"],
        "kept",
        "a robot registered meanwhile appeared in the list without a reload"
    );
    let robot_row = out(&r, "robot_row")["text"].as_str().unwrap_or("");
    assert!(
        robot_row.contains("console-bot")
            && robot_row.contains("screens")
            && robot_row.contains("idle"),
        "{robot_row}"
    );
    let api_view = f.api.get(&format!("/v1/session_queues/{watched}")).await;
    assert_eq!(api_view.body["workflow"]["id"], slow);

    // 2. Re-run it from its page.
    let r = drive(
        &work,
        &shots,
        "rerun",
        &signed_in_at(
            &base,
            &f.key,
            &format!("/ui/sessions/{watched}"),
            &format!(
                r##"  - id: rerun
    action: browser.click
    with: {{selector: "#rerun"}}
  - id: origin
    action: browser.wait_for
    with: {{selector: "a[href='/ui/sessions/{watched}']", text: "#{watched}"}}
  - id: url
    action: browser.get_url
  - id: rerun_shot
    action: browser.screenshot
    with: {{path: rerun.png}}
"##
            ),
        ),
        &f.key,
    );
    let url = out(&r, "url")["url"].as_str().unwrap_or("").to_string();
    let rerun: i64 = url
        .rsplit('/')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("the re-run led to {url}"));
    assert_ne!(rerun, watched);
    let again = f.api.get(&format!("/v1/session_queues/{rerun}")).await;
    assert_eq!(again.body["origin"]["type"], "rerun", "{}", again.body);
    assert_eq!(again.body["origin"]["session_id"], watched);
    finished(&f.api, rerun, LIMIT).await;

    // 3. Cancel a running session from its page; its process ends.
    let pidfile = f.scratch.dir.path().join("long.pid");
    let long_id = queue(
        &f.api,
        long,
        json!({"pidfile": pidfile.display().to_string()}),
    )
    .await;
    running(&f.api, long_id, LIMIT).await;
    let pid = pid_in(&pidfile).await;
    assert!(alive(pid));
    drive(
        &work,
        &shots,
        "cancel",
        &signed_in_at(
            &base,
            &f.key,
            &format!("/ui/sessions/{long_id}"),
            r##"  - id: cancel
    action: browser.click
    with: {selector: "#cancel"}
  - id: cancelled
    action: browser.wait_for
    with: {selector: "#session-status", text: "cancelled", timeout: 60s}
  - id: cancelled_shot
    action: browser.screenshot
    with: {path: cancelled.png}
"##,
        ),
        &f.key,
    );
    assert_eq!(
        finished(&f.api, long_id, LIMIT).await["status"],
        "cancelled"
    );
    assert!(
        eventually(Duration::from_secs(20), || !alive(pid)),
        "the cancelled session's process {pid} still runs"
    );

    // 4. A failed browser session: its failure screenshot inline.
    let broken_id = queue(&f.api, broken_wf, json!({})).await;
    assert_eq!(finished(&f.api, broken_id, LIMIT).await["status"], "error");
    let r = drive(
        &work,
        &shots,
        "failure",
        &signed_in_at(
            &base,
            &f.key,
            &format!("/ui/sessions/{broken_id}"),
            r##"  - id: image
    action: browser.wait_for
    with: {selector: "#artifacts img[src$='press-failure.png']"}
  - id: loaded
    action: browser.execute_script
    with:
      async: true
      script: "var done = arguments[arguments.length - 1]; var i = document.querySelector('#artifacts img'); var say = function () { done([i.complete, i.naturalWidth > 0]); }; if (i.complete) { say(); } else { i.loading = 'eager'; i.addEventListener('load', say); i.addEventListener('error', say); }"
  - id: error
    action: browser.get_text
    with: {selector: "#session-error"}
  - id: failed_shot
    action: browser.screenshot
    with: {path: session-failed.png}
"##,
        ),
        &f.key,
    );
    assert_eq!(out(&r, "loaded")["result"], json!([true, true]));
    assert!(
        out(&r, "error")["text"]
            .as_str()
            .unwrap_or("")
            .contains("press"),
        "{}",
        out(&r, "error")
    );
    // The same at a phone's width: nothing wider than the screen but the
    // tables, which scroll inside their own box.
    let phone = drive(
        &work,
        &shots,
        "phone",
        &signed_in_at(
            &base,
            &f.key,
            &format!("/ui/sessions/{broken_id}"),
            &format!(
                r##"  - id: failed_phone_shot
    action: browser.screenshot
    with: {{path: session-failed-phone.png}}
  - id: list
    action: browser.goto
    with: {{url: "{base}/ui/sessions"}}
  - id: list_phone_shot
    action: browser.screenshot
    with: {{path: sessions-phone.png}}
  - id: list_width
    action: browser.execute_script
    with: {{script: "return [document.documentElement.scrollWidth, window.innerWidth]"}}
"##
            ),
        )
        .replace("[1280, 800]", "[390, 844]"),
        &f.key,
    );
    let width = &out(&phone, "list_width")["result"];
    let (page, screen) = (
        width[0].as_u64().expect("the page's width"),
        width[1].as_u64().expect("the window's width"),
    );
    assert!(
        page <= screen,
        "the sessions page ({page} px) is wider than a phone's screen ({screen} px)"
    );
    let mut c = Browserless::new(&f.hub);
    c.sign_in(&f.key, "/ui").await;
    let img = c
        .get(&format!(
            "/ui/sessions/{broken_id}/artifacts/press-failure.png"
        ))
        .await;
    assert_eq!(img.status, 200);
    assert_eq!(img.headers["content-type"], "image/png");
    assert_eq!(img.headers["x-content-type-options"], "nosniff");
    assert_eq!(
        Browserless::new(&f.hub)
            .get(&format!(
                "/ui/sessions/{broken_id}/artifacts/press-failure.png"
            ))
            .await
            .status,
        303,
        "an artifact without the cookie"
    );

    // 5. Queue with a secret param from the workflow page; the secret is
    // on no page afterwards, nor in the hub's log.
    let secret = "s3cr3t-Console-Value-4711";
    let r = drive(
        &work,
        &shots,
        "secret",
        &signed_in_at(
            &base,
            &f.key,
            &format!("/ui/workflows/{secretive}"),
            &format!(
                r##"  - id: token
    action: browser.type
    with: {{selector: "#param-token", text: "{secret}"}}
  - id: queue
    action: browser.click
    with: {{selector: "#queue"}}
  - id: done
    action: browser.wait_for
    with: {{selector: "#session-status", text: "success", timeout: 60s}}
  - id: url
    action: browser.get_url
  - id: page
    action: browser.get_html
  - id: secret_shot
    action: browser.screenshot
    with: {{path: session-secret.png}}
  - id: workflow_again
    action: browser.goto
    with: {{url: "{base}/ui/workflows/{secretive}"}}
  - id: form_page
    action: browser.get_html
  - id: list
    action: browser.goto
    with: {{url: "{base}/ui/sessions"}}
  - id: list_page
    action: browser.get_html
"##
            ),
        ),
        &f.key,
    );
    let url = out(&r, "url")["url"].as_str().unwrap_or("").to_string();
    let queued: i64 = url
        .rsplit('/')
        .next()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("the queue form led to {url}"));
    for step in ["page", "form_page", "list_page"] {
        let html = out(&r, step)["html"].as_str().unwrap_or("");
        assert!(html.contains("<main"), "{step}: {html}");
        assert!(
            !html.contains(secret),
            "the secret is in the page of {step}"
        );
    }
    let html = out(&r, "page")["html"].as_str().unwrap_or("");
    assert!(html.contains("***"), "the secret param is shown masked");
    let logs = all_logs(&f.api, queued).await;
    assert!(
        logs.iter().any(|l| l["message"]
            .as_str()
            .unwrap_or("")
            .contains("used-the-token")),
        "the session got its secret: {logs:?}"
    );
    // Every page as the hub sends it, and the log stream.
    for path in [
        "/ui/sessions".to_string(),
        format!("/ui/sessions/{queued}"),
        format!("/ui/sessions/{queued}/log/stream?after=0"),
        "/ui/workflows".to_string(),
        format!("/ui/workflows/{secretive}"),
        "/ui/robots".to_string(),
    ] {
        let page = c.get(&path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.body.contains(secret), "the secret is in {path}");
    }
    // The list filtered by this robot and a status.
    let robots = f.api.get("/v1/robots").await;
    let robot_id = robots.body["robots"][0]["id"]
        .as_i64()
        .expect("the robot's id");
    let page = c
        .get(&format!("/ui/sessions?robot={robot_id}&status=cancelled"))
        .await;
    assert!(
        page.body.contains(&format!("id=\"session-{long_id}\"")),
        "{}",
        page.body
    );
    assert!(!page.body.contains(&format!("id=\"session-{watched}\"")));
    let hub_log = f.hub.stderr();
    assert!(hub_log.contains("queued (console)"), "{hub_log}");
    assert!(!hub_log.contains(secret), "the secret is in the hub's log");

    // The screenshots, one per page.
    for name in [
        "workflow.png",
        "session-running.png",
        "session.png",
        "sessions.png",
        "robots.png",
        "workflows.png",
        "rerun.png",
        "cancelled.png",
        "session-failed.png",
        "session-failed-phone.png",
        "sessions-phone.png",
        "session-secret.png",
    ] {
        let path: PathBuf = shots.join(name);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "{} is missing or empty", path.display());
    }
    keep_screens(&shots);
}

/// Copies a test's screenshots out of its scratch folder, which goes with
/// the test, to `TASUKI_CONSOLE_SCREENS` or else
/// `<target>/test-artifacts/console-screens/` (beside `debug/`): the test
/// artifacts a CI run or a reader looks at, and where docs/console.png
/// comes from.
fn keep_screens(shots: &Path) {
    let dir = std::env::var_os("TASUKI_CONSOLE_SCREENS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let profile = tasuki_bin()
                .parent()
                .map(Path::to_path_buf)
                .expect("the binaries' folder");
            profile
                .parent()
                .unwrap_or(&profile)
                .join("test-artifacts")
                .join("console-screens")
        });
    std::fs::create_dir_all(&dir).expect("the screenshots' folder");
    for entry in std::fs::read_dir(shots).expect("the screenshots").flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy a screenshot");
        }
    }
}

/// The pid a session's step wrote, once it is there.
async fn pid_in(file: &Path) -> u32 {
    for _ in 0..200 {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no pid in {}", file.display());
}

const LOUD: &str = r##"version: 1
name: loud
params:
  go: ""
steps:
  - id: ready
    action: shell.run
    with: {argv: [sh, -c, 'while [ ! -e "$1" ]; do sleep 0.05; done', sh, "${params.go}"]}
  - id: print
    action: shell.run
    with: {argv: [sh, -c, "seq 1 30000 | sed s/^/n-/"]}
  - id: linger
    action: shell.run
    with: {argv: [sleep, "300"]}
"##;

/// Watches what the console's own code adds to `#log`: the most lines the
/// page held at once, the main thread's longest busy spell (a 10 ms
/// timer's lateness), and a mark on `<body>` once `n-30000` is shown.
const LOG_WATCH: &str = "var log = document.getElementById('log'); \
var w = window.__watch = {most: log.childElementCount, stall: 0}; \
var tick = performance.now(); \
setInterval(function () { var now = performance.now(); w.stall = Math.max(w.stall, now - tick - 10); tick = now; }, 10); \
new MutationObserver(function (records) { \
  w.most = Math.max(w.most, log.childElementCount); \
  records.forEach(function (r) { r.addedNodes.forEach(function (n) { \
    if (/\\] n-30000\\n?$/.test(n.textContent || '')) { document.body.setAttribute('data-all-shown', '1'); } \
  }); }); \
}).observe(log, {childList: true}); return null";

/// A step that prints 30,000 lines as fast as it can, watched live: every
/// line reaches the page, which keeps only its last 10,000 and says so,
/// and stays responsive; `log.txt` has them all, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_log_streams_into_a_page_that_keeps_its_last_lines() {
    require_browser();
    let f = Fleet::start();
    let base = f.hub.url.clone();
    let robot = Robot::new(f.scratch.dir.path(), "loud-bot");
    robot.register_ok(&f.hub, &f.key, &[]);
    let _agent = robot.start(&[]);
    let shots = f.scratch.dir.path().join("console-screens");
    let work = f.scratch.dir.path().join("driver");
    std::fs::create_dir_all(&work).expect("the driver's folder");
    let go = f.scratch.dir.path().join("go");
    let loud = workflow(&f.api, LOUD, &[]).await;
    let id = queue(&f.api, loud, json!({"go": go.display().to_string()})).await;

    let r = drive(
        &work,
        &shots,
        "loud",
        &signed_in_at(
            &base,
            &f.key,
            &format!("/ui/sessions/{id}"),
            &format!(
                r##"  - id: running
    action: browser.wait_for
    with: {{selector: "#session-status", text: "running", timeout: 60s}}
  - id: watch
    action: browser.execute_script
    with: {{script: {watch}}}
  - id: start
    action: shell.run
    with: {{argv: [touch, {go}]}}
  - id: all_shown
    action: browser.wait_for
    with: {{selector: "body[data-all-shown]", state: present, timeout: 60s}}
  - id: seen
    action: browser.execute_script
    with:
      script: "var log = document.getElementById('log'); var note = document.getElementById('log-trimmed'); return [window.__watch.most, log.childElementCount, Number(log.firstElementChild.getAttribute('data-seq')), Number(log.lastElementChild.getAttribute('data-seq')), note.hidden, note.textContent, window.__watch.stall]"
  - id: loud_shot
    action: browser.screenshot
    with: {{path: session-loud.png}}
"##,
                watch = serde_json::to_string(LOG_WATCH).expect("json"),
                go = serde_json::to_string(&go.display().to_string()).expect("json"),
            ),
        ),
        &f.key,
    );
    let seen = &out(&r, "seen")["result"];
    let most = seen[0].as_u64().expect("most lines");
    assert!(most <= 10_000, "the page held {most} lines at once: {seen}");
    assert_eq!(seen[1], 10_000, "the last 10,000 lines stay: {seen}");
    let (first, last) = (seen[2].as_u64().unwrap_or(0), seen[3].as_u64().unwrap_or(0));
    assert!(
        first > 20_000 && last - first + 1 == 10_000,
        "the page keeps the last lines it got, with no gap: {seen}"
    );
    assert_eq!(seen[4], false, "the page says lines were left out: {seen}");
    assert_eq!(seen[5], format!("Lines before {first} are not shown here."));
    // A generous bound, the behaviour itself: a page that freezes for
    // seconds under a fast log is the defect this guards against.
    let stall = seen[6].as_f64().expect("stall");
    assert!(
        stall < 3_000.0,
        "the page's main thread was busy {stall} ms at once"
    );

    // The session lingers, so that the page above streamed while it ran;
    // it ends now.
    let r = f
        .api
        .delete(&format!("/v1/session_queues/{id}/cancel"))
        .await;
    assert!(r.body["cancel_requested_at"].is_string(), "{}", r.body);
    let ended = finished(&f.api, id, LIMIT).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    let mut c = Browserless::new(&f.hub);
    c.sign_in(&f.key, "/ui/sessions").await;
    let text = c.get(&format!("/ui/sessions/{id}/log.txt")).await;
    assert_eq!(text.status, 200, "{}", text.body);
    assert_eq!(
        text.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/plain; charset=utf-8")
    );
    let printed: Vec<&str> = text
        .body
        .lines()
        .filter_map(|l| l.split_once("[print] ").map(|(_, m)| m))
        .collect();
    let expected: Vec<String> = (1..=30_000).map(|i| format!("n-{i}")).collect();
    assert!(
        printed == expected,
        "log.txt holds {} of the step's lines (first {:?}, last {:?})",
        printed.len(),
        printed.first(),
        printed.last()
    );
    // A browser reconnecting sends the last event id it had: the stream
    // goes on from the line after it, each line once, and ends.
    let seq_of = |n: &str| {
        text.body
            .lines()
            .position(|l| l.ends_with(&format!("[print] {n}")))
            .map(|i| i as u64 + 1)
            .expect("the line is in log.txt")
    };
    let resume_after = seq_of("n-29990");
    let resumed = c
        .send(
            c.http
                .get(format!("{}/ui/sessions/{id}/log/stream", c.base))
                .header("last-event-id", resume_after.to_string()),
        )
        .await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let ids: Vec<u64> = resumed
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    assert_eq!(ids.first(), Some(&(resume_after + 1)), "{}", resumed.body);
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "each line once, in order: {ids:?}"
    );
    for n in 29_991..=30_000 {
        assert_eq!(
            resumed.body.matches(&format!("\"n-{n}\"")).count(),
            1,
            "n-{n} in {}",
            resumed.body
        );
    }
    assert!(!resumed.body.contains("\"n-29990\""), "{}", resumed.body);
    assert!(resumed.body.contains("event: end"), "{}", resumed.body);

    // The finished session's page shows the last 5,000 lines, no stream.
    let page = c.get(&format!("/ui/sessions/{id}")).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body.matches("data-seq=").count(), 5_000);
    assert!(page.body.contains("] n-30000\n"), "the last line is shown");
    assert!(!page.body.contains("data-stream="), "no stream once ended");
    assert!(
        page.body.contains("Lines before "),
        "it says lines are left out"
    );
    assert!(page.body.contains(&format!("/ui/sessions/{id}/log.txt")));
    let gone = c.get("/ui/sessions/999999/log.txt").await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    keep_screens(&shots);
}

/// A hub whose database is gone answers the console with a page that says
/// so (a 500 naming the database, nothing of the failure's details), not a
/// blank or a crash; the sign-in page, which needs no database, still
/// renders. On PostgreSQL whatever the run's backend: its database can be
/// dropped under a running hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_that_lost_its_database_says_so_on_every_page() {
    let scratch = Scratch::postgres();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, &[]);
    let mut c = Browserless::new(&hub);
    c.sign_in(&key, "/ui/sessions").await;
    assert_eq!(c.get("/ui/sessions").await.status, 200);

    scratch.lose_database();
    for path in [
        "/ui/sessions",
        "/ui/sessions/1",
        "/ui/robots",
        "/ui/workflows",
    ] {
        let page = c.get(path).await;
        assert_eq!(page.status, 500, "{path}: {}", page.body);
        assert!(
            page.body.contains("Database unreachable")
                && page.body.contains("the hub cannot reach its database"),
            "{path}: {}",
            page.body
        );
        assert!(
            !page.body.contains("does not exist"),
            "{path}: the failure's details"
        );
    }
    let login = Browserless::new(&hub).get("/ui/login").await;
    assert_eq!(login.status, 200, "{}", login.body);
}

/// A key without `session_queue.delete` sees the Cancel button with a note
/// saying which scope it lacks; pressing it in the browser shows the
/// refusal. A key with the scope whose form lost its CSRF token is refused
/// too, and the browser holds the session cookie HttpOnly, SameSite=Strict,
/// for 30 minutes. The session is not cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_the_scope_or_the_csrf_token_is_refused_in_the_browser() {
    require_browser();
    let scratch = Scratch::new();
    let full = create_key(&scratch, ALL_SCOPES);
    let reader = create_key(&scratch, "session_queue.read session_queue.write");
    let hub = Hub::start_with(&scratch, &[]);
    let api = Api::new(&hub, Some(token(&full, ALL_SCOPES)));
    let wf = create_hello(&api).await;
    // No robot: it stays queued.
    let queued = queue(&api, wf, json!({"token": "t0k3n-value"})).await;
    let work = scratch.dir.path().join("driver");
    let shots = scratch.dir.path().join("console-screens");
    std::fs::create_dir_all(&work).expect("the driver's folder");
    let r = drive(
        &work,
        &shots,
        "refused",
        &signed_in_at(
            &hub.url,
            &reader,
            &format!("/ui/sessions/{queued}"),
            r##"  - id: note
    action: browser.get_text
    with: {selector: "section.actions"}
  - id: cancel
    action: browser.click
    with: {selector: "#cancel"}
  - id: refused
    action: browser.wait_for
    with: {selector: "#problem", text: "session_queue.delete"}
  - id: heading
    action: browser.get_text
    with: {selector: "h1"}
  - id: refused_shot
    action: browser.screenshot
    with: {path: refused.png}
"##,
        ),
        &reader,
    );
    // Signing in with the keyboard alone: Tab from field to field, Enter
    // to send.
    let keys = format!(
        r##"version: 1
name: keyboard
params:
  key_secret: {{secret: true}}
steps:
  - id: open
    action: browser.open
    with: {{window_size: [1280, 800]}}
  - id: go
    action: browser.goto
    with: {{url: "{base}/ui/login"}}
  - id: id
    action: browser.press_keys
    with: {{selector: "#access_key_id", keys: ["{key_id}", Tab]}}
  - id: secret
    action: browser.press_keys
    with: {{keys: ["${{params.key_secret}}", Enter]}}
  - id: in
    action: browser.wait_for_url
    with: {{contains: "/ui/sessions"}}
  - id: listed
    action: browser.wait_for
    with: {{selector: "#sessions-table tbody", text: "#{queued}"}}
"##,
        base = hub.url,
        key_id = reader.id
    );
    drive(&work, &shots, "keyboard", &keys, &reader);

    // A key with the scope, in the same browser's view: the cookie as
    // the browser holds it, out of reach of the page's script, and the
    // Cancel form sent without its CSRF field is refused.
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_secs() as i64
    };
    let before = unix_now();
    let forged = drive(
        &work,
        &shots,
        "forged",
        &signed_in_at(
            &hub.url,
            &full,
            &format!("/ui/sessions/{queued}"),
            r##"  - id: cookie
    action: browser.get_cookies
    with: {name: tasuki_console}
  - id: script_sees
    action: browser.execute_script
    with: {script: "return document.cookie;"}
  - id: strip
    action: browser.execute_script
    with: {script: "var f = document.querySelector('#cancel').form; var t = f.querySelector('input[name=csrf]'); t.remove(); return f.querySelectorAll('input[name=csrf]').length;"}
  - id: cancel
    action: browser.click
    with: {selector: "#cancel"}
  - id: refused
    action: browser.wait_for
    with: {selector: "#problem", text: "CSRF"}
  - id: refused_shot
    action: browser.screenshot
    with: {path: csrf-refused.png}
"##,
        ),
        &full,
    );
    let cookies = &out(&forged, "cookie")["cookies"];
    assert_eq!(out(&forged, "cookie")["count"], 1, "{cookies}");
    let cookie = &cookies[0];
    assert_eq!(cookie["http_only"], true, "{cookie}");
    assert_eq!(cookie["same_site"], "Strict", "{cookie}");
    assert_eq!(cookie["path"], "/ui", "{cookie}");
    assert_eq!(cookie["secure"], false, "a plain-HTTP hub: {cookie}");
    let expiry = cookie["expiry"]
        .as_i64()
        .expect("an expiry: not a browser-session cookie");
    let after = unix_now();
    assert!(
        (before + 1795..=after + 1805).contains(&expiry),
        "30 minutes after the sign-in: {expiry}, signed in between {before} and {after}"
    );
    let seen = out(&forged, "script_sees")["result"]
        .as_str()
        .expect("document.cookie is a string");
    assert!(
        !seen.contains("tasuki_console"),
        "the page's script reads the session cookie: {seen}"
    );
    assert_eq!(
        out(&forged, "strip")["result"],
        0,
        "the CSRF field was not removed"
    );

    let note = out(&r, "note")["text"].as_str().unwrap_or("");
    assert!(
        note.contains("your key lacks session_queue.delete"),
        "{note}"
    );
    assert_eq!(out(&r, "heading")["text"], "Not allowed");
    let now = api.get(&format!("/v1/session_queues/{queued}")).await;
    assert_eq!(now.body["status"], "queued", "{}", now.body);
    assert!(now.body["cancel_requested_at"].is_null(), "{}", now.body);
    keep_screens(&shots);
}

/// Waits until session `id` is `waiting` (its agent's log if it never is).
async fn until_waiting(api: &Api, id: i64, agent: &Agent) {
    let deadline = std::time::Instant::now() + LIMIT;
    while api.get(&format!("/v1/session_queues/{id}")).await.body["status"] != "waiting" {
        assert!(
            std::time::Instant::now() < deadline,
            "never waited\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A waiting session's page says what it waits for, and a person with the
/// scope approves it there (the form's CSRF token checked); the session
/// resumes on its robot and the page shows who decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_session_is_approved_from_its_page() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "approver-bot");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = robot.start(&[]);
    let wf = workflow(
        &f.api,
        "version: 1\nname: needs-a-yes\nsteps:\n  - id: ok\n    action: approval\n    with: {message: \"publish the <price> list?\"}\n  - id: after\n    action: log\n    with: {message: \"published after ${steps.ok.output.comment}\"}\n",
        &[],
    )
    .await;
    let id = queue(&f.api, wf, json!({})).await;
    until_waiting(&f.api, id, &agent).await;

    let mut c = Browserless::new(&f.hub);
    c.sign_in(&f.key, "/ui").await;
    let path = format!("/ui/sessions/{id}");
    let page = c.get(&path).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("data-status=\"waiting\""),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("an approval at step <code>ok</code>"),
        "{}",
        page.body
    );
    // The message is text, escaped.
    assert!(
        page.body.contains("publish the &lt;price&gt; list?"),
        "{}",
        page.body
    );
    assert!(page.body.contains("id=\"approve\""), "{}", page.body);

    let approve = format!("{path}/approval");
    let refused = c
        .post(
            &approve,
            &[("csrf", &"ab".repeat(32)), ("decision", "approve")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(
        f.api.get(&format!("/v1/session_queues/{id}")).await.body["status"],
        "waiting",
        "a form without its token changes nothing"
    );
    // A key that may read but not queue: refused, the scope named.
    let reader = create_key(&f.scratch, "session_queue.read");
    let mut r = Browserless::new(&f.hub);
    r.sign_in(&reader, "/ui").await;
    let read_page = r.get(&path).await;
    assert!(
        read_page
            .body
            .contains("your key lacks session_queue.write"),
        "{}",
        read_page.body
    );
    let refused = r
        .post(
            &approve,
            &[("csrf", &read_page.csrf()), ("decision", "approve")],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("session_queue.write"),
        "{}",
        refused.body
    );
    assert_eq!(
        f.api.get(&format!("/v1/session_queues/{id}")).await.body["status"],
        "waiting"
    );
    let csrf = page.csrf();
    let done = c
        .post(
            &approve,
            &[
                ("csrf", &csrf),
                ("decision", "approve"),
                ("comment", "looks right"),
            ],
        )
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}\n{}", agent.log());
    assert_eq!(s["wait"]["decided_by"], f.key.id.as_str(), "{s}");
    let text: Vec<String> = all_logs(&f.api, id)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        text.iter().any(|m| m == "published after looks right"),
        "{text:?}"
    );
    let page = c.get(&path).await;
    assert!(page.body.contains("id=\"session-answer\""), "{}", page.body);
    assert!(
        page.body
            .contains(&format!("approved by <code>{}</code>", f.key.id)),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains("id=\"approve\""),
        "no form once decided"
    );
}

/// An approval that lists its approvers: the page names them, tells
/// another key it is not one, refuses its decision, and takes a listed
/// key's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_listed_approver_decides_from_the_page() {
    let f = Fleet::start();
    let approver = create_key(&f.scratch, "session_queue.write session_queue.read");
    let robot = Robot::new(f.scratch.dir.path(), "listed-bot");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = robot.start(&[]);
    let wf = workflow(
        &f.api,
        &format!(
            "version: 1\nname: listed\nsteps:\n  - id: ok\n    action: approval\n    \
             with: {{message: go?, approvers: [{}]}}\n",
            approver.id
        ),
        &[],
    )
    .await;
    let id = queue(&f.api, wf, json!({})).await;
    until_waiting(&f.api, id, &agent).await;
    let path = format!("/ui/sessions/{id}");
    let approve = format!("{path}/approval");

    let mut other = Browserless::new(&f.hub);
    other.sign_in(&f.key, "/ui").await;
    let page = other.get(&path).await;
    assert!(
        page.body.contains(&format!(
            "id=\"session-approvers\"><code>{}</code>",
            approver.id
        )),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("your key is not among the approvers"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("id=\"approve\" disabled"),
        "{}",
        page.body
    );
    // Sent all the same (the button is only a hint): refused.
    let refused = other
        .post(&approve, &[("csrf", &page.csrf()), ("decision", "approve")])
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("is not an approver of step"),
        "{}",
        refused.body
    );
    assert_eq!(
        f.api.get(&format!("/v1/session_queues/{id}")).await.body["status"],
        "waiting"
    );

    let mut listed = Browserless::new(&f.hub);
    listed.sign_in(&approver, "/ui").await;
    let page = listed.get(&path).await;
    assert!(
        !page.body.contains("not among the approvers") && !page.body.contains("disabled"),
        "{}",
        page.body
    );
    let done = listed
        .post(&approve, &[("csrf", &page.csrf()), ("decision", "approve")])
        .await;
    assert_eq!(done.status, 303, "{}", done.body);
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}\n{}", agent.log());
    assert_eq!(s["wait"]["decided_by"], approver.id.as_str(), "{s}");
}

const TYPED: &str = r##"version: 1
name: typed
params:
  count: {type: integer, default: 3, description: How many invoices to fetch}
  mode: {choices: [fast, careful], default: fast}
  dry: {type: boolean}
  level: {choices: [1, 2, 3], default: null}
  token: {secret: true}
  pin: {secret: true, type: integer, default: 0}
steps:
  - id: part
    action: call
    with: {workflow: part}
"##;

/// A param's declared type and choices give it its field on the queue
/// form (a whole number, a list of choices, true or false, a password),
/// its description is shown, and a value of the wrong type is refused by
/// the form and by the API alike, naming the param. The workflow's page
/// checks its stored source again, as a robot would load it today: a
/// called workflow that changed since shows as a problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_params_get_typed_fields_and_a_stored_workflow_is_checked_again() {
    let scratch = Scratch::new();
    let full = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, &[]);
    let api = Api::new(&hub, Some(token(&full, ALL_SCOPES)));
    let register = |yaml: &'static str| {
        let api = api.clone();
        async move {
            let r = api.post("/v1/workflows", &json!({ "yaml": yaml })).await;
            assert_eq!(r.status.as_u16(), 201, "{}", r.body);
            r.body["id"].as_i64().expect("workflow id")
        }
    };
    register(
        "version: 1\nname: part\nparams:\n  n: 1\nsteps:\n  - {id: a, action: log, with: {message: \"n=${params.n}\"}}\n",
    )
    .await;
    let typed = register(TYPED).await;

    let mut c = Browserless::new(&hub);
    c.sign_in(&full, "/ui/sessions").await;
    let page = c.get(&format!("/ui/workflows/{typed}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    for want in [
        r#"input type="number" step="1" id="param-count" name="param.count" aria-describedby="param-count-help" value="3""#,
        "How many invoices to fetch",
        r#"select id="param-mode""#,
        r#"<option value="fast" selected>fast</option>"#,
        r#"<option value="careful">careful</option>"#,
        r#"select id="param-dry""#,
        r#"select id="param-level" name="param.level"><option value="" selected>(the workflow's default)</option><option value="1">1</option>"#,
        r#"input type="password" id="param-token""#,
        r#"input type="password" id="param-pin""#,
    ] {
        assert!(page.body.contains(want), "{want} missing: {}", page.body);
    }
    assert!(!page.body.contains(r#"id="problems""#), "{}", page.body);
    let csrf = page.csrf();
    let queue_path = format!("/ui/workflows/{typed}/queue");
    let sessions_before = api.get("/v1/session_queues").await.body["total"].clone();

    // Refused by the form, naming the param, never echoing the secret.
    for (count, mode, pin, expect) in [
        ("2.5", "fast", "", "the param `count`: expected an integer"),
        (
            "4",
            "reckless",
            "",
            "the param `mode`: not one of the choices",
        ),
        (
            "4",
            "fast",
            "not-a-pin-xyz",
            "the param `pin`: it wants an integer",
        ),
    ] {
        let page = c
            .post(
                &queue_path,
                &[
                    ("csrf", &csrf),
                    ("param.count", count),
                    ("param.mode", mode),
                    ("param.dry", "true"),
                    ("param.level", ""),
                    ("param.token", "s3cret-typed"),
                    ("param.pin", pin),
                ],
            )
            .await;
        assert_eq!(page.status, 422, "{}", page.body);
        assert!(page.body.contains(expect), "{expect}: {}", page.body);
        assert!(!page.body.contains("s3cret-typed"));
        assert!(!page.body.contains("not-a-pin-xyz"), "a secret echoed");
    }
    // … and by the API, at the param's path.
    let r = api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": typed, "params": {"count": "12", "mode": "slow", "token": "t"}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    let problems = r.problems();
    let at = |path: &str| {
        problems
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("no problem at {path}: {problems:?}"))
    };
    assert!(at("params.count").contains("expected an integer, found a string"));
    assert!(at("params.mode").contains("not one of the choices"));
    assert!(at("params.dry").contains("no default"));
    assert_eq!(
        api.get("/v1/session_queues").await.body["total"],
        sessions_before,
        "a refused session was stored"
    );

    // Accepted: each value stored as its type.
    let page = c
        .post(
            &queue_path,
            &[
                ("csrf", &csrf),
                ("param.count", "12"),
                ("param.mode", "careful"),
                ("param.dry", "true"),
                ("param.level", ""),
                ("param.token", "s3cret-typed"),
                ("param.pin", "1234"),
            ],
        )
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let id = page
        .location()
        .strip_prefix("/ui/sessions/")
        .and_then(|id| id.parse::<i64>().ok())
        .expect("to the new session's page");
    let session = api.get(&format!("/v1/session_queues/{id}")).await.body;
    assert_eq!(
        session["params"],
        json!({"count": 12, "mode": "careful", "dry": true, "token": "***", "pin": "***"}),
        "{session}"
    );

    // Re-run once it has ended: its secrets, an integer among them, are
    // asked for again by name, before their type is looked at.
    let r = api.delete(&format!("/v1/session_queues/{id}/cancel")).await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    let r = api
        .post(
            &format!("/v1/session_queues/{id}/rerun"),
            &json!({"params": {"token": "again"}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert!(
        r.body.to_string().contains("`pin` is a secret param")
            && r.body.to_string().contains("give it again"),
        "{}",
        r.body
    );
    let r = api
        .post(
            &format!("/v1/session_queues/{id}/rerun"),
            &json!({"params": {"token": "again", "pin": 4321}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);

    // A mapping that names no type is a default, and the page warns.
    let warned = register(
        "version: 1\nname: warned\nparams:\n  kind: {type: invoice}\nsteps:\n  - {id: a, action: log, with: {message: hi}}\n",
    )
    .await;
    let page = c.get(&format!("/ui/workflows/{warned}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(r#"id="warnings""#), "{}", page.body);
    assert!(
        page.body.contains("read as its default, a mapping: ")
            && page.body.contains("names no type"),
        "{}",
        page.body
    );

    // `part` is sent again and now requires a param `typed` never gives:
    // typed's page says so.
    register(
        "version: 1\nname: part\nparams:\n  m: {type: string}\nsteps:\n  - {id: a, action: log, with: {message: \"m=${params.m}\"}}\n",
    )
    .await;
    let page = c.get(&format!("/ui/workflows/{typed}")).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(r#"id="problems""#), "{}", page.body);
    assert!(
        page.body.contains("requires the param `m`"),
        "{}",
        page.body
    );
}
