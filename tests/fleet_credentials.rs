//! Named credentials end to end: a real `tasuki-hub` keeps them sealed,
//! routes a session that uses one only to the robots it allows, puts the
//! values in that robot's lease alone, and real agents run the session
//! with the values masked; a rotation reaches the next session, and the
//! audit log records every change and delivery. Besides, the credential
//! API's refusals, each naming its field.
#![cfg(unix)]

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_support::*;
use hub_support::*;
use serde_json::{Value, json};

const ADMIN_SCOPES: &str = "session_queue.write session_queue.read session_queue.delete \
                            access_token.create workflow.write robot audit.read credential.read \
                            credential.write";

const USER: &str = "shopbot-Kq7Xw";
const FIRST_PASSWORD: &str = "first-pw-3Lm9Zr4T";
const SECOND_PASSWORD: &str = "second-pw-8Hj2Vn6Q";

/// A workflow that hands the credential to a shell step through its
/// environment: the step writes it where the test reads it (so the test
/// sees what arrived) and prints it (so masking is put to work).
fn workflow_yaml(out_dir: &Path) -> String {
    format!(
        r#"version: 1
name: shop-login
credentials:
  site: username_password
params:
  n: 0
steps:
  - id: login
    action: shell.run
    with:
      shell: sh
      env: {{U: "${{credentials.site.username}}", P: "${{credentials.site.password}}"}}
      script: |
        printf '%s:%s' "$U" "$P" > '{dir}/arrived-${{params.n}}.txt'
        echo "logging in as $U with $P"
  - id: note
    action: log
    with: {{message: "user ${{credentials.site.username}}"}}
outputs:
  who: "${{credentials.site.username}}"
"#,
        dir = out_dir.display()
    )
}

async fn session(api: &Api, id: i64) -> Value {
    let r = api.get(&format!("/v1/session_queues/{id}")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    r.body
}

/// Runs a session with param `n`, and returns it once it has ended
/// successfully, with what reached its file.
async fn run_one(api: &Api, workflow_id: i64, n: i64, out_dir: &Path) -> (Value, String) {
    let id = queue(api, workflow_id, json!({"n": n})).await;
    let s = finished(api, id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "success", "{s}");
    let arrived = std::fs::read_to_string(out_dir.join(format!("arrived-{n}.txt")))
        .expect("the step wrote what it received");
    (s, arrived)
}

/// Fails naming where a value was found.
fn assert_no_value(what: &str, text: &str) {
    for value in [USER, FIRST_PASSWORD, SECOND_PASSWORD] {
        assert!(
            !text.contains(value),
            "{what} holds a credential value ({value}):\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_reaches_only_the_robots_it_allows_masked_and_rotated() {
    let f = Fleet::start();
    let admin = create_key(&f.scratch, ADMIN_SCOPES);
    let admin = Api::new(&f.hub, Some(token(&admin, ADMIN_SCOPES)));
    let out_dir = f.scratch.dir.path().join("arrived");
    std::fs::create_dir_all(&out_dir).expect("the output dir");

    let vault = Robot::new(f.scratch.dir.path(), "vault-robot");
    vault.register_ok(&f.hub, &f.key, &["--labels", "vault"]);
    let vault_agent = vault.start(&[]);
    let plain = Robot::new(f.scratch.dir.path(), "plain-robot");
    plain.register_ok(&f.hub, &f.key, &[]);
    let plain_agent = plain.start(&[]);

    // Made: the answer is metadata only.
    let r = admin
        .post(
            "/v1/credentials",
            &json!({"name": "site", "kind": "username_password",
                    "fields": {"username": USER, "password": FIRST_PASSWORD},
                    "allow": {"labels": ["vault"]}, "description": "the shop's robot login"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["fields"], json!(["username", "password"]));
    assert_no_value("the create answer", &r.body.to_string());

    let w = workflow(&admin, &workflow_yaml(&out_dir), &[]).await;

    // Allowed by label: every session runs on the vault robot, never on
    // the plain one, though both wait for work.
    let mut ids = Vec::new();
    for n in 0..3 {
        let (s, arrived) = run_one(&admin, w, n, &out_dir).await;
        assert_eq!(s["robot"]["name"], "vault-robot", "{s}");
        assert_eq!(arrived, format!("{USER}:{FIRST_PASSWORD}"));
        assert_eq!(s["outputs"]["who"], "***", "{s}");
        ids.push(s["id"].as_i64().expect("id"));
    }

    // Rotated: the next session receives the new password.
    let r = admin
        .request(reqwest::Method::PUT, "/v1/credentials/site")
        .json(&json!({"fields": {"username": USER, "password": SECOND_PASSWORD}}));
    let r = admin.send(r).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    assert_no_value("the rotate answer", &r.body.to_string());
    let (s, arrived) = run_one(&admin, w, 10, &out_dir).await;
    assert_eq!(arrived, format!("{USER}:{SECOND_PASSWORD}"));
    assert_eq!(s["robot"]["name"], "vault-robot", "{s}");
    ids.push(s["id"].as_i64().expect("id"));

    // Allowed by name instead: the plain robot alone may have it now.
    let r = admin
        .request(reqwest::Method::PUT, "/v1/credentials/site")
        .json(&json!({"allow": {"robots": ["plain-robot"], "labels": []}}));
    let r = admin.send(r).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(
        r.body["version"], 2,
        "a change of the allow list is no rotation"
    );
    let (s, arrived) = run_one(&admin, w, 11, &out_dir).await;
    assert_eq!(s["robot"]["name"], "plain-robot", "{s}");
    assert_eq!(arrived, format!("{USER}:{SECOND_PASSWORD}"));
    ids.push(s["id"].as_i64().expect("id"));

    // A credential that allows nobody: its session waits, saying why.
    let r = admin
        .post(
            "/v1/credentials",
            &json!({"name": "locked", "kind": "token", "fields": {"token": "tok-unused-1"},
                    "allow": {}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let locked = workflow(
        &admin,
        "version: 1\nname: locked\ncredentials: {locked: token}\nsteps:\n  - id: a\n    action: log\n    with: {message: \"${credentials.locked.token}\"}\n",
        &[],
    )
    .await;
    let waiting = queue(&admin, locked, json!({})).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = session(&admin, waiting).await;
    assert_eq!(s["status"], "queued", "{s}");
    let reason = s["queued_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("vault-robot is not allowed by the credential locked")
            && reason.contains("plain-robot is not allowed by the credential locked"),
        "{s}"
    );
    let r = admin
        .delete(&format!("/v1/session_queues/{waiting}/cancel"))
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);

    // Nothing the hub answers carries a value: the credential, the
    // sessions (with their logs), the audit log.
    let r = admin.get("/v1/credentials").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["credentials"][1]["name"], "site", "{}", r.body);
    assert_no_value("the credential list", &r.body.to_string());
    let r = admin.get("/v1/credentials/site").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_no_value("the credential", &r.body.to_string());
    for id in &ids {
        assert_no_value("a session", &session(&admin, *id).await.to_string());
        let logs = all_logs(&admin, *id).await;
        let text = serde_json::to_string(&logs).expect("logs");
        assert!(text.contains("logging in as *** with ***"), "{text}");
        assert_no_value("a session's logs", &text);
    }
    let r = admin.get("/v1/session_queues?per_page=50").await;
    assert_no_value("the session list", &r.body.to_string());

    // Deleted: a new session is refused, naming the credential.
    assert_eq!(
        admin.delete("/v1/credentials/site").await.status.as_u16(),
        204
    );
    let r = admin
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": w, "params": {"n": 99}}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "unknown_credential"),
        "{}",
        r.body
    );
    assert!(r.message().contains("`site`"), "{}", r.body);

    // The audit log: made, rotated, changed, deleted, and each delivery
    // with its session, robot and version.
    let r = admin.get("/v1/audit_log?per_page=200").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_no_value("the audit log", &r.body.to_string());
    let entries = r.body["entries"].as_array().expect("entries");
    let actions: Vec<&str> = entries
        .iter()
        .filter(|e| e["subject"] == "credential site")
        .map(|e| e["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        actions,
        [
            "credential.delete",
            "credential.update",
            "credential.rotate",
            "credential.create"
        ],
        "newest first"
    );
    let deliveries: Vec<(i64, String, i64)> = entries
        .iter()
        .filter(|e| e["action"] == "credential.deliver")
        .map(|e| {
            let d = &e["detail"];
            assert_eq!(d["credentials"].as_array().map(Vec::len), Some(1), "{e}");
            assert_eq!(d["credentials"][0]["name"], "site", "{e}");
            (
                d["session_queue_id"].as_i64().expect("session id"),
                d["robot"].as_str().unwrap_or("").to_string(),
                d["credentials"][0]["version"].as_i64().expect("version"),
            )
        })
        .collect();
    let mut deliveries = deliveries;
    deliveries.sort();
    // Each grant is recorded: a lease taken back before it reached its
    // robot (a poll the agent gave up, docs/protocol.md) and granted
    // again is recorded twice (docs/security.md, *Known gaps*).
    deliveries.dedup();
    assert_eq!(
        deliveries,
        [
            (ids[0], "vault-robot".to_string(), 1),
            (ids[1], "vault-robot".to_string(), 1),
            (ids[2], "vault-robot".to_string(), 1),
            (ids[3], "vault-robot".to_string(), 2),
            (ids[4], "plain-robot".to_string(), 2),
        ]
    );

    // No log line of the hub or of either agent carries a value.
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_no_value("the hub's log", &f.hub.stderr());
    assert_no_value("the vault robot's log", &vault_agent.log());
    assert_no_value("the plain robot's log", &plain_agent.log());
    // Nor any file the robots keep (spools, work dirs).
    for robot in [&vault, &plain] {
        for entry in walk(&robot.dir) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            assert_no_value(
                &format!("the robot's file {}", entry.display()),
                &String::from_utf8_lossy(&bytes),
            );
        }
    }
}

/// A credential that lists the workflows it allows reaches their
/// sessions only: another workflow that declares it (any `workflow.write`
/// key may register one) cannot queue a session, and one queued before
/// the list narrowed gets no values: its robot fails it before it starts,
/// naming the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_that_lists_its_workflows_reaches_only_their_sessions() {
    let f = Fleet::start();
    let admin = create_key(&f.scratch, ADMIN_SCOPES);
    let admin = Api::new(&f.hub, Some(token(&admin, ADMIN_SCOPES)));
    let uses = |name: &str| {
        format!(
            "version: 1\nname: {name}\ncredentials:\n  api: token\nsteps:\n  - id: call\n    \
             action: log\n    with: {{message: \"token ${{credentials.api.token}}\"}}\n"
        )
    };
    let billing = workflow(&admin, &uses("billing"), &[]).await;
    let copycat = workflow(&f.api, &uses("copycat"), &[]).await;
    let r = admin
        .post(
            "/v1/credentials",
            &json!({"name": "api", "kind": "token", "fields": {"token": "tok-Zq81Lw"},
                    "allow": {"robots": ["any-bot"], "workflows": ["billing", "copycat"]}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(
        r.body["allow"]["workflows"],
        json!(["billing", "copycat"]),
        "{}",
        r.body
    );
    // Queued while allowed, with no robot yet to run it.
    let early = queue(&f.api, copycat, json!({})).await;
    let r = admin
        .send(
            admin
                .request(reqwest::Method::PUT, "/v1/credentials/api")
                .json(&json!({"allow": {"robots": ["any-bot"], "workflows": ["billing"]}})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);

    let r = f
        .api
        .post("/v1/session_queues", &json!({"workflow_id": copycat}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "credential_not_allowed"),
        "{}",
        r.body
    );
    assert!(
        r.message().contains(
            "the credential `api` does not allow the sessions of this workflow (`copycat`)"
        ),
        "{}",
        r.body
    );
    // Which workflows it allows is not told to a key that may only queue.
    assert!(!r.message().contains("billing"), "{}", r.body);
    // A change of robots alone keeps the workflows; `null` lifts them.
    let put = |allow: Value| {
        let admin = admin.clone();
        async move {
            admin
                .send(
                    admin
                        .request(reqwest::Method::PUT, "/v1/credentials/api")
                        .json(&json!({"allow": allow})),
                )
                .await
        }
    };
    let r = put(json!({"robots": ["any-bot", "other-bot"]})).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(
        r.body["allow"]["workflows"],
        json!(["billing"]),
        "{}",
        r.body
    );
    let r = put(json!({"robots": ["any-bot"], "workflows": null})).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert!(r.body["allow"].get("workflows").is_none(), "{}", r.body);
    let r = put(json!({"robots": ["any-bot"], "workflows": ["billing"]})).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);

    let robot = Robot::new(f.scratch.dir.path(), "any-bot");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = robot.start(&[]);
    let id = queue(&admin, billing, json!({})).await;
    let s = finished(&admin, id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "success", "{s}\n{}", agent.log());
    let text = messages(&all_logs(&admin, id).await);
    assert!(text.iter().any(|m| m == "token ***"), "{text:?}");

    let s = finished(&f.api, early, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "error", "{s}");
    assert_eq!(s["error"]["code"], "invalid_credentials", "{s}");
    assert!(
        s["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("credentials.api: the workflow uses the `token` credential `api`"),
        "{s}"
    );
    let logs = serde_json::to_string(&all_logs(&f.api, early).await).expect("logs");
    assert!(!logs.contains("tok-Zq81Lw"), "{logs}");
    let audit = admin.get("/v1/audit_log?per_page=200").await;
    let delivered_to: Vec<i64> = audit.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "credential.deliver")
        .filter_map(|e| e["detail"]["session_queue_id"].as_i64())
        .collect();
    assert!(
        delivered_to.contains(&id) && !delivered_to.contains(&early),
        "{delivered_to:?}"
    );
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_credential_api_refuses_each_bad_field_by_its_path() {
    let f = Fleet::start();
    let admin = create_key(&f.scratch, ADMIN_SCOPES);
    let admin = Api::new(&f.hub, Some(token(&admin, ADMIN_SCOPES)));
    let ok = json!({"name": "site", "kind": "token", "fields": {"token": "t-Valu3"},
                    "allow": {"robots": ["r1"], "labels": ["eu"]}});
    let with = |path: &str, value: Value| {
        let mut body = ok.clone();
        let mut at = &mut body;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            at = &mut at[*p];
        }
        at[parts[parts.len() - 1]] = value;
        body
    };
    let cases = [
        (with("name", json!("9 bad")), "name"),
        (with("kind", json!("password")), "kind"),
        (with("fields", json!({"token": ""})), "fields.token"),
        (with("fields", json!({"token": 7})), "fields.token"),
        (with("fields", json!({})), "fields.token"),
        (
            with("fields", json!({"token": "x", "user": "y"})),
            "fields.user",
        ),
        (
            with("fields", json!({"token": "x".repeat(4097)})),
            "fields.token",
        ),
        (
            with("allow.robots", json!(["ok", "no/slash"])),
            "allow.robots[1]",
        ),
        (
            with("allow.labels", json!(["bad label"])),
            "allow.labels[0]",
        ),
        (
            with("allow.workflows", json!(["billing", "  "])),
            "allow.workflows[1]",
        ),
        (
            with("allow.workflows", json!(["billing", "billing"])),
            "allow.workflows[1]",
        ),
        (
            with("allow.workflows", json!(["w".repeat(201)])),
            "allow.workflows[0]",
        ),
        (
            with("allow.workflows", json!(["tab\there"])),
            "allow.workflows[0]",
        ),
        // Nobody has registered it: whoever did first would get the value.
        (
            with("allow.workflows", json!(["nobody-registered"])),
            "allow.workflows[0]",
        ),
        (with("description", json!("d".repeat(501))), "description"),
    ];
    for (body, path) in cases {
        let r = admin.post("/v1/credentials", &body).await;
        assert_eq!(r.status.as_u16(), 422, "{path}: {}", r.body);
        assert_eq!(
            r.body["error"]["problems"][0]["path"], path,
            "{path}: {}",
            r.body
        );
        assert!(!r.body.to_string().contains("t-Valu3"), "{}", r.body);
    }
    // An unknown field of the body is refused too.
    let r = admin
        .post("/v1/credentials", &with("secret", json!("x")))
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);

    // Made once; a second of the same name conflicts.
    let r = admin.post("/v1/credentials", &ok).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let r = admin.post("/v1/credentials", &ok).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "credential_exists"),
        "{}",
        r.body
    );
    // A rotation keeps the kind: a field of another kind is refused.
    let r = admin
        .send(
            admin
                .request(reqwest::Method::PUT, "/v1/credentials/site")
                .json(&json!({"fields": {"username": "u", "password": "p"}})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert_eq!(r.body["error"]["problems"][0]["path"], "fields.username");
    let r = admin
        .send(
            admin
                .request(reqwest::Method::PUT, "/v1/credentials/nope")
                .json(&json!({"description": "x"})),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (404, "credential_not_found"),
        "{}",
        r.body
    );

    // Scopes: the fleet key (no credential scope) can neither read nor write.
    let r = f.api.get("/v1/credentials").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "insufficient_scope"),
        "{}",
        r.body
    );
    let r = f
        .api
        .post("/v1/credentials", &with("name", json!("other")))
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "insufficient_scope"));
    // A reader cannot write.
    let reader = create_key(&f.scratch, "credential.read");
    let reader = Api::new(&f.hub, Some(token(&reader, "credential.read")));
    let r = reader.get("/v1/credentials/site").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert!(!r.body.to_string().contains("t-Valu3"), "{}", r.body);
    let r = reader.delete("/v1/credentials/site").await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "insufficient_scope"));

    // A session of a workflow whose credential does not exist: refused,
    // naming it; one whose kind differs: refused too.
    let w = workflow(
        &admin,
        "version: 1\nname: needs-missing\ncredentials: {absent: token}\nsteps:\n  - id: a\n    action: log\n    with: {message: \"${credentials.absent.token}\"}\n",
        &[],
    )
    .await;
    let r = admin
        .post("/v1/session_queues", &json!({"workflow_id": w}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "unknown_credential"),
        "{}",
        r.body
    );
    assert!(r.message().contains("`absent`"), "{}", r.body);
    let w = workflow(
        &admin,
        "version: 1\nname: wrong-kind\ncredentials: {site: username_password}\nsteps:\n  - id: a\n    action: log\n    with: {message: \"${credentials.site.username}\"}\n",
        &[],
    )
    .await;
    let r = admin
        .post("/v1/session_queues", &json!({"workflow_id": w}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "credential_kind_mismatch"),
        "{}",
        r.body
    );
    // A workflow that reads an undeclared credential is refused at upload,
    // at its field path.
    let r = admin
        .post(
            "/v1/workflows",
            &json!({"yaml": "version: 1\nname: undeclared\nsteps:\n  - id: a\n    action: log\n    with: {message: \"${credentials.site.token}\"}\n"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert_eq!(
        r.body["error"]["problems"][0]["path"], "steps[0].with.message",
        "{}",
        r.body
    );
}

/// A `file` credential on a robot: its content in a private file (0600) in
/// the session's private folder, gone with the session, its lines masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_credential_reaches_the_robot_as_a_private_file() {
    const LINE: &str = "cert-line-Pz6Wq3Rt8Y";
    let f = Fleet::start();
    let admin = create_key(&f.scratch, ADMIN_SCOPES);
    let admin = Api::new(&f.hub, Some(token(&admin, ADMIN_SCOPES)));
    let robot = Robot::new(f.scratch.dir.path(), "cert-robot");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = robot.start(&[]);
    let r = admin
        .post(
            "/v1/credentials",
            &json!({"name": "cert", "kind": "file", "fields": {"content": format!("{LINE}\n")},
                    "allow": {"robots": ["cert-robot"]}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let seen = f.scratch.dir.path().join("seen.txt");
    let w = workflow(
        &admin,
        &format!(
            "version: 1\nname: cert\ncredentials: {{cert: file}}\nsteps:\n  - id: use\n    action: shell.run\n    with:\n      shell: sh\n      env: {{F: \"${{credentials.cert.path}}\"}}\n      script: |\n        printf '%s %s\\n' \"$F\" \"$(stat -c %a \"$F\")\" > '{}'\n        cat \"$F\"\n",
            seen.display()
        ),
        &[],
    )
    .await;
    let id = queue(&admin, w, json!({})).await;
    let s = finished(&admin, id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "success", "{s}");
    let seen = std::fs::read_to_string(&seen).expect("what the step saw");
    let (path, mode) = seen.trim_end().rsplit_once(' ').expect("path and mode");
    assert_eq!(mode, "600", "{seen}");
    assert!(path.contains(".private/credentials/cert"), "{path}");
    assert!(
        eventually(Duration::from_secs(10), || !Path::new(path).exists()),
        "{path} outlived the session"
    );
    let logs = serde_json::to_string(&all_logs(&admin, id).await).expect("logs");
    assert!(!logs.contains(LINE) && logs.contains("***"), "{logs}");
    assert!(!agent.log().contains(LINE), "{}", agent.log());
    assert!(!f.hub.stderr().contains(LINE));
}
