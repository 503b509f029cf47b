//! A workflow's state folder on a robot (real hub, real agent, real
//! Chromium): cookies one session saves are loaded by the workflow's next
//! session to skip a login, another workflow's sessions cannot load them,
//! the folders are the agent's alone, and the cookie's value reaches the
//! hub only as `***`.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::time::Duration;

use axum::http::{HeaderMap, header};
use axum::response::Html;
use fleet_support::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(60);

/// `/login` sets `session=<value>`; `/home` welcomes only that cookie.
async fn login_site(value: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let set = format!("session={value}; Path=/");
    let wanted = format!("session={value}");
    let app = axum::Router::new()
        .route(
            "/login",
            axum::routing::get(move || {
                let set = set.clone();
                async move {
                    (
                        [(header::SET_COOKIE, set)],
                        Html("<p id=done>logged in</p>"),
                    )
                }
            }),
        )
        .route(
            "/home",
            axum::routing::get(move |headers: HeaderMap| {
                let wanted = wanted.clone();
                async move {
                    let sent = headers
                        .get(header::COOKIE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let known = sent.split("; ").any(|c| c == wanted);
                    Html(format!(
                        "<h1 id=greeting>{}</h1>",
                        if known {
                            "Welcome back"
                        } else {
                            "Please log in"
                        }
                    ))
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// A step of a session as the hub shows it (steps are a list there).
fn step(session: &serde_json::Value, id: &str) -> serde_json::Value {
    session["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|st| st["id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("no step `{id}` in {session}"))
}

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflows_saved_cookies_reach_its_next_session_and_no_other_workflow() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "keeper");
    robot.register_ok(&f.hub, &f.key, &[]);
    let _agent = robot.start(&[]);
    let value = format!(
        "S3ss-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let site = login_site(value.clone()).await;

    // One workflow: `load: false` logs in and saves the cookies, `load:
    // true` opens the home page with them. The other workflow tries the
    // same load from its own state folder.
    let steps = format!(
        r##"steps:
  - id: login
    if: "${{!params.load}}"
    action: browser.goto
    with: {{url: "{site}/login"}}
  - id: read
    if: "${{!params.load}}"
    action: browser.get_cookies
  - id: save
    if: "${{!params.load}}"
    action: browser.save_cookies
    with: {{file: login.json}}
  - id: home
    action: browser.goto
    with: {{url: "{site}/home"}}
  - id: before
    action: browser.get_text
    with: {{selector: "#greeting"}}
  - id: load
    if: "${{params.load}}"
    action: browser.load_cookies
    with: {{file: login.json}}
  - id: again
    action: browser.goto
    with: {{url: "{site}/home"}}
  - id: greeting
    action: browser.get_text
    with: {{selector: "#greeting"}}
"##
    );
    let yaml = |name: &str| format!("version: 1\nname: {name}\nparams:\n  load: false\n{steps}");
    let saver = workflow(&f.api, &yaml("saver"), &["keeper"]).await;
    let id = queue(&f.api, saver, json!({"load": false})).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    assert_eq!(
        step(&s, "read")["output"]["cookies"][0]["value"],
        "***",
        "{s}"
    );
    assert_eq!(
        step(&s, "greeting")["output"]["text"],
        "Welcome back",
        "{s}"
    );
    let logs = all_logs(&f.api, id).await;
    let shipped = json!({"steps": s["steps"], "logs": logs}).to_string();
    assert!(
        !shipped.contains(&value),
        "the cookie's value reached the hub: {shipped}"
    );

    let state = robot.dir.join("work/state");
    let folder = state.join(saver.to_string());
    let saved = folder.join("login.json");
    assert!(saved.is_file(), "nothing saved in {}", folder.display());
    assert!(std::fs::read_to_string(&saved).unwrap().contains(&value));
    #[cfg(unix)]
    {
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&folder), 0o700);
        assert_eq!(mode(&saved), 0o600);
    }

    // The same workflow's next session: a fresh browser, whose first look
    // at the home page asks for a login, and whose second, after loading
    // the saved cookies, is welcomed.
    let id = queue(&f.api, saver, json!({"load": true})).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    assert_eq!(step(&s, "login")["status"], "skipped", "{s}");
    assert_eq!(step(&s, "before")["output"]["text"], "Please log in", "{s}");
    assert_eq!(step(&s, "load")["output"]["loaded"], 1, "{s}");
    assert_eq!(
        step(&s, "greeting")["output"]["text"],
        "Welcome back",
        "{s}"
    );
    let logs = all_logs(&f.api, id).await;
    let shipped = json!({"steps": s["steps"], "logs": logs}).to_string();
    assert!(
        !shipped.contains(&value),
        "the cookie's value reached the hub: {shipped}"
    );

    // Another workflow, the same robot: its state folder is its own.
    let other = workflow(&f.api, &yaml("other"), &["keeper"]).await;
    let id = queue(&f.api, other, json!({"load": true})).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    let load = step(&s, "load");
    let message = load["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("there is no file `login.json`")
            && message.contains(&format!("state/{other}")),
        "{s}"
    );

    // Nor can a step's process read it, or any workflow's, though it runs
    // as the robot's account: the state folders are kept from step
    // processes as the credentials are (Landlock).
    let snoop = format!(
        "version: 1\nname: snoop\nsteps:\n  - id: cat\n    action: shell.run\n    with:\n      \
         argv: [cat, \"{}\"]\n",
        saved.display()
    );
    let snoop = workflow(&f.api, &snoop, &["keeper"]).await;
    let id = queue(&f.api, snoop, json!({})).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    let logs = serde_json::Value::from(all_logs(&f.api, id).await).to_string();
    assert!(logs.contains("Permission denied"), "{logs}");
    assert!(
        !logs.contains(&value),
        "a step read the saved cookie: {logs}"
    );
}
