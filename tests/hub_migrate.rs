//! `tasuki-hub migrate`: a hub's SQLite database copied into PostgreSQL,
//! then served from there by a hub given the SQLite hub's master key,
//! which answers as the SQLite hub did. Real processes throughout; the
//! robot protocol spoken by hand. Needs `TASUKI_TEST_POSTGRES` (an admin
//! URL), as the PostgreSQL runs of the other hub tests do.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::ffi::OsStr;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use fleet_support::{all_logs, queue, workflow};
use hub_support::*;
use serde_json::{Value, json};

/// Sessions are read often, far above AUTORO's 60 calls a minute, and an
/// idle poll is held 1 s, not 25.
const HUB_ARGS: &[&str] = &["--quota-per-robot", "1000000", "--hold-seconds", "1"];

const SECRET_YAML: &str = "version: 1
name: secretive
params:
  who: world
  token: {secret: true}
steps:
  - id: work
    action: shell.run
    with: {argv: [\"true\"]}
";

const PLAIN_YAML: &str = "version: 1
name: plain
steps:
  - id: first
    action: shell.run
    with: {argv: [\"true\"]}
  - id: second
    action: shell.run
    with: {argv: [\"false\"]}
";

const PAUSING_YAML: &str = "version: 1
name: pausing
steps:
  - id: first
    action: shell.run
    with: {argv: [\"true\"]}
  - id: second
    action: approval
    with: {message: go?, timeout: 1h}
";

/// The secret param of the session left queued, which only the robot that
/// runs it may see in clear.
const QUEUED_SECRET: &str = "TOKEN-left-queued-3c9e";

fn migrate(from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> Output {
    hub_command()
        .arg("migrate")
        .arg("--from")
        .arg(from)
        .arg("--to")
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .expect("run tasuki-hub migrate")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `count` rows of `table`, asked of PostgreSQL.
fn rows_in(scratch: &Scratch, table: &str) -> i64 {
    let db = scratch.db();
    let url = db.to_str().expect("a UTF-8 URL");
    psql(url, &format!("SELECT COUNT(*) FROM {table}"))
        .parse()
        .expect("a count")
}

/// Bytes that do not compress or repeat, the same on every run.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A robot's side of the protocol, by hand.
struct Robot {
    api: Api,
}

impl Robot {
    /// Registers `name` with `slots`; its robot id.
    async fn register(&self, name: &str, slots: u32) -> i64 {
        let r = self
            .api
            .send(
                self.api
                    .request(reqwest::Method::PUT, &format!("/v1/robot/robots/{name}"))
                    .json(&json!({"instance_id": name, "version": "test", "max_concurrency": slots,
                                  "labels": ["migrated"],
                                  "host": {"hostname": format!("{name}.local"), "os": "linux", "arch": "x86_64"}})),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "register {name}: {}", r.body);
        r.body["robot_id"].as_i64().expect("robot_id")
    }

    async fn poll(&self, name: &str, poll_id: &str, free_slots: u32) -> Value {
        let r = self
            .api
            .post(
                &format!("/v1/robot/robots/{name}/poll"),
                &json!({"instance_id": name, "poll_id": poll_id, "free_slots": free_slots,
                        "draining": false, "held": []}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "poll of {name}: {}", r.body);
        r.body
    }

    /// Polls, holding nothing, until a lease comes (a poll carries one):
    /// its session id, its lease id, and the lease as sent.
    async fn lease(&self, name: &str, poll_prefix: &str) -> (i64, String, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0;
        loop {
            n += 1;
            let answer = self.poll(name, &format!("{poll_prefix}-{n}"), 1).await;
            if let Some(lease) = answer["leases"].get(0) {
                let id = lease["session_id"].as_i64().expect("session_id");
                let lease_id = lease["lease_id"].as_str().expect("lease_id").to_owned();
                return (id, lease_id, lease.clone());
            }
            assert!(Instant::now() < deadline, "no lease for {name}: {answer}");
        }
    }

    /// A robot call on a session, under its lease.
    async fn leased(
        &self,
        method: reqwest::Method,
        path: &str,
        lease: &str,
        body: reqwest::Body,
        content_type: &str,
    ) -> Reply {
        self.api
            .send(
                self.api
                    .request(method, path)
                    .header("tasuki-lease", lease)
                    .header("content-type", content_type)
                    .body(body),
            )
            .await
    }

    async fn logs(&self, id: i64, lease: &str, from_seq: u64, messages: &[String]) {
        let lines: Vec<Value> = messages
            .iter()
            .enumerate()
            .map(|(i, message)| {
                let seq = from_seq + i as u64;
                json!({"seq": seq, "ts": format!("2026-01-01T00:00:{:02}.{:03}Z", seq % 60, seq % 1000),
                       "level": if seq.is_multiple_of(7) { "warn" } else { "info" },
                       "step_id": if seq.is_multiple_of(2) { Value::from("work") } else { Value::Null },
                       "message": message})
            })
            .collect();
        let body = json!({ "lines": lines }).to_string();
        let r = self
            .leased(
                reqwest::Method::POST,
                &format!("/v1/robot/sessions/{id}/logs"),
                lease,
                body.into(),
                "application/json",
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "logs of {id}: {}", r.body);
    }

    async fn steps(&self, id: i64, lease: &str, steps: Value) {
        let body = json!({"revision": 1, "steps": steps}).to_string();
        let r = self
            .leased(
                reqwest::Method::PUT,
                &format!("/v1/robot/sessions/{id}/steps"),
                lease,
                body.into(),
                "application/json",
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "steps of {id}: {}", r.body);
    }

    async fn artifact(&self, id: i64, lease: &str, name: &str, data: Vec<u8>) {
        let r = self
            .leased(
                reqwest::Method::PUT,
                &format!("/v1/robot/sessions/{id}/artifacts/{name}"),
                lease,
                data.into(),
                "application/octet-stream",
            )
            .await;
        assert_eq!(
            r.status.as_u16(),
            204,
            "artifact {name} of {id}: {}",
            r.body
        );
    }

    async fn finish(&self, id: i64, lease: &str, report: Value) {
        let r = self
            .leased(
                reqwest::Method::POST,
                &format!("/v1/robot/sessions/{id}/finish"),
                lease,
                report.to_string().into(),
                "application/json",
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "finish of {id}: {}", r.body);
    }
}

/// Everything the public API shows of a hub's state.
#[derive(Debug, PartialEq)]
struct Shown {
    workflows: Value,
    sessions: Value,
    each_session: Vec<Value>,
    logs: Vec<Vec<Value>>,
    artifact_lists: Vec<Value>,
    artifacts: Vec<(i64, String, Vec<u8>)>,
    /// `GET /v1/robots` without each robot's `state`, which is whether it
    /// polled in the last seconds: a fact about the process, not the data.
    robots: Value,
}

async fn shown(api: &Api, sessions: &[i64]) -> Shown {
    let ok = |r: Reply| {
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        r.body
    };
    let mut each_session = Vec::new();
    let mut logs = Vec::new();
    let mut artifact_lists = Vec::new();
    let mut artifacts = Vec::new();
    for id in sessions {
        each_session.push(ok(api.get(&format!("/v1/session_queues/{id}")).await));
        logs.push(all_logs(api, *id).await);
        let list = ok(api.get(&format!("/v1/session_queues/{id}/artifacts")).await);
        for artifact in list["artifacts"].as_array().expect("artifacts") {
            let name = artifact["name"].as_str().expect("artifact name").to_owned();
            let response = api
                .request(
                    reqwest::Method::GET,
                    &format!("/v1/session_queues/{id}/artifacts/{name}"),
                )
                .send()
                .await
                .expect("the hub answers");
            assert_eq!(response.status().as_u16(), 200);
            let bytes = response.bytes().await.expect("the artifact's bytes");
            artifacts.push((*id, name, bytes.to_vec()));
        }
        artifact_lists.push(list);
    }
    let mut robots = ok(api.get("/v1/robots").await);
    for robot in robots["robots"].as_array_mut().expect("robots") {
        robot
            .as_object_mut()
            .expect("a robot object")
            .remove("state");
    }
    Shown {
        workflows: ok(api.get("/v1/workflows").await),
        sessions: ok(api.get("/v1/session_queues").await),
        each_session,
        logs,
        artifact_lists,
        artifacts,
        robots,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_hub_answers_as_the_sqlite_hub_did() {
    let sqlite = Scratch::sqlite();
    let operator = create_key(&sqlite, ALL_SCOPES);
    let robot_key = create_key(&sqlite, "robot");
    let hub = Hub::start_with(&sqlite, HUB_ARGS);
    let api = Api::new(&hub, Some(token(&operator, ALL_SCOPES)));
    let robot = Robot {
        api: Api::new(&hub, Some(token(&robot_key, "robot"))),
    };

    let secretive = workflow(&api, SECRET_YAML, &[]).await;
    let plain = workflow(&api, PLAIN_YAML, &[]).await;
    let pausing = workflow(&api, PAUSING_YAML, &[]).await;
    robot.register("r1", 2).await;
    let deleted_robot = robot.register("r2", 1).await;

    // Two sessions run on r1: one to success, with many log lines (several
    // pages of the copy), steps and artifacts; one to an error.
    let succeeded = queue(&api, secretive, json!({"who": "ann", "token": "T-run"})).await;
    let (leased, lease, sent) = robot.lease("r1", "first").await;
    assert_eq!(leased, succeeded);
    assert_eq!(sent["params"]["token"], "T-run");
    let lease = &lease;
    let messages: Vec<String> = (1..=1500)
        .map(|i| format!("line {i}: ünïcödé ✓ {}", "x".repeat(i % 300)))
        .collect();
    for (batch, chunk) in messages.chunks(500).enumerate() {
        robot
            .logs(succeeded, lease, 1 + 500 * batch as u64, chunk)
            .await;
    }
    robot
        .steps(
            succeeded,
            lease,
            json!([{"id": "work", "status": "running", "started_at": "2026-01-01T00:00:01Z"}]),
        )
        .await;
    let big = noise(8 * 1024 * 1024);
    robot
        .artifact(succeeded, lease, "capture.bin", big.clone())
        .await;
    robot
        .artifact(succeeded, lease, "notes.txt", b"a small one".to_vec())
        .await;
    robot
        .finish(
            succeeded,
            lease,
            json!({"idempotency_key": "k-ok", "status": "success",
                   "ended_at": "2026-01-01T00:01:00Z",
                   "steps": [{"id": "work", "status": "success",
                              "started_at": "2026-01-01T00:00:01Z",
                              "ended_at": "2026-01-01T00:00:59Z", "duration_ms": 58000,
                              "output": {"stdout": "done"}}],
                   "outputs": {"answer": 42}}),
        )
        .await;
    let failed = queue(&api, plain, json!({})).await;
    let (leased, lease, _) = robot.lease("r1", "second").await;
    assert_eq!(leased, failed);
    let lease = &lease;
    robot
        .logs(failed, lease, 1, &["starting".into(), "it failed".into()])
        .await;
    robot
        .finish(
            failed,
            lease,
            json!({"idempotency_key": "k-err", "status": "error",
                   "ended_at": "2026-01-01T00:02:00Z",
                   "error": {"code": "step_failed", "message": "exit 1", "step_id": "second"}}),
        )
        .await;

    // One suspended at a waiting step: its sealed checkpoint must cross.
    let suspended = queue(&api, pausing, json!({})).await;
    let (leased, lease, _) = robot.lease("r1", "third").await;
    assert_eq!(leased, suspended);
    let wait = json!({"step_id": "second", "kind": "approval", "message": "go?",
                      "timeout_ms": 3_600_000, "on_timeout": "reject"});
    robot
        .finish(
            suspended,
            &lease,
            json!({"idempotency_key": "k-wait", "status": "waiting",
                   "ended_at": "2026-01-01T00:03:00Z",
                   "suspend": {"wait": wait.clone(),
                               "checkpoint": {"wait": wait, "marker": "kept across the copy"}}}),
        )
        .await;

    // One cancelled while queued (its sealed params purged, which the
    // counter row counts); one left queued with its secret sealed.
    let cancelled = queue(&api, secretive, json!({"token": "T-cancelled"})).await;
    let r = api
        .delete(&format!("/v1/session_queues/{cancelled}/cancel"))
        .await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    let waiting = queue(
        &api,
        secretive,
        json!({"who": "bob", "token": QUEUED_SECRET}),
    )
    .await;

    // A robot deleted by the operator: its machine is remembered.
    let out = hub_command()
        .args(["robots", "delete", "r2"])
        .args(sqlite.db_args())
        .output()
        .expect("run tasuki-hub robots delete");
    assert!(out.status.success(), "{}", stderr(&out));

    let sessions = [succeeded, failed, suspended, cancelled, waiting];
    let before = shown(&api, &sessions).await;
    assert_eq!(before.logs[0].len(), 1500);
    assert_eq!(before.artifacts.len(), 2);
    assert!(hub.stop().success());
    let purges: i64 = {
        let conn = rusqlite::Connection::open(sqlite.db_file()).expect("open the SQLite file");
        conn.query_row("SELECT count FROM secret_purges", [], |r| r.get(0))
            .expect("the counter row")
    };
    assert!(purges >= 2, "{purges}");

    let postgres = Scratch::postgres();
    let out = migrate(sqlite.db_file(), postgres.db());
    let said = stderr(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("--master-key {}", sqlite.key_file().display())),
        "the output names the master key file to start the new hubs with: {said}"
    );
    assert!(said.contains("session_logs"), "{said}");
    assert!(said.contains("1503 rows"), "{said}");
    assert!(
        said.contains(&format!("({} bytes)", big.len() + "a small one".len())),
        "{said}"
    );

    let hub = Hub::start_with_master_key(&postgres, &sqlite.key_file(), HUB_ARGS);
    // The old keys authenticate: the tokens are signed with their secrets,
    // which the hub opens from the copied rows.
    let api = Api::new(&hub, Some(token(&operator, ALL_SCOPES)));
    let robot = Robot {
        api: Api::new(&hub, Some(token(&robot_key, "robot"))),
    };
    let after = shown(&api, &sessions).await;
    assert_eq!(after.workflows, before.workflows);
    assert_eq!(after.sessions, before.sessions);
    assert_eq!(after.each_session, before.each_session);
    assert_eq!(after.logs, before.logs);
    assert_eq!(after.artifact_lists, before.artifact_lists);
    assert!(
        after.artifacts == before.artifacts,
        "the artifacts' bytes differ"
    );
    assert_eq!(after.artifacts[0].2, big);
    assert_eq!(after.robots, before.robots);
    assert_eq!(
        psql(
            postgres.db().to_str().expect("a UTF-8 URL"),
            "SELECT count FROM secret_purges"
        ),
        purges.to_string()
    );

    // The queued session goes to the robot with its secret in clear: the
    // sealed bytes open with the same master key under the same id.
    let (leased, _, sent) = robot.lease("r1", "after").await;
    assert_eq!(leased, waiting);
    assert_eq!(
        sent["params"],
        json!({"who": "bob", "token": QUEUED_SECRET}),
        "{sent}"
    );
    // The suspended session is approved on the new database, and the
    // robot that resumes it gets the checkpoint the old one sealed.
    let r = api
        .post(
            &format!("/v1/session_queues/{suspended}/approval"),
            &json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let (leased, _, sent) = robot.lease("r1", "resume").await;
    assert_eq!(leased, suspended);
    assert_eq!(
        sent["resume"]["checkpoint"]["marker"], "kept across the copy",
        "{sent}"
    );
    assert_eq!(
        sent["resume"]["checkpoint"]["wait"]["step_id"], "second",
        "{sent}"
    );
    assert_eq!(sent["resume"]["outcome"]["outcome"], "approved", "{sent}");

    // New rows get ids past the copied ones, and past the deleted robot's.
    let new_workflow = workflow(&api, PLAIN_YAML, &[]).await;
    assert!(
        new_workflow > secretive.max(plain).max(pausing),
        "{new_workflow}"
    );
    let new_session = queue(&api, new_workflow, json!({})).await;
    assert!(
        new_session > *sessions.iter().max().expect("sessions"),
        "{new_session}"
    );
    let new_robot = robot.register("r3", 1).await;
    assert!(new_robot > deleted_robot, "{new_robot} <= {deleted_robot}");
    // The deleted robot's machine is still refused.
    let r = robot
        .api
        .post(
            "/v1/robot/robots/r2/poll",
            &json!({"instance_id": "r2", "poll_id": "x", "free_slots": 1}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 410, "{}", r.body);
    assert!(hub.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_holds_rows_is_refused_and_left_as_it_was() {
    let sqlite = Scratch::sqlite();
    let key = create_key(&sqlite, ALL_SCOPES);
    let hub = Hub::start_with(&sqlite, HUB_ARGS);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    workflow(&api, SECRET_YAML, &[]).await;
    assert!(hub.stop().success());

    // A database a hub has already used: it has an access key.
    let postgres = Scratch::postgres();
    let theirs = create_key(&postgres, "robot");
    let out = migrate(sqlite.db_file(), postgres.db());
    let said = stderr(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("not empty"), "{said}");
    assert!(said.contains("1 row in access_keys"), "{said}");

    // Nothing was copied, and what was there is still there.
    assert_eq!(rows_in(&postgres, "workflows"), 0);
    assert_eq!(rows_in(&postgres, "access_keys"), 1);
    let db = postgres.db();
    let url = db.to_str().expect("a UTF-8 URL");
    assert_eq!(psql(url, "SELECT id FROM access_keys"), theirs.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sources_and_targets_are_refused_with_what_to_do() {
    let sqlite = Scratch::sqlite();
    create_key(&sqlite, ALL_SCOPES);
    let postgres = Scratch::postgres();

    // From PostgreSQL.
    let out = migrate(postgres.db(), postgres.db());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--from is the hub's SQLite database"),
        "{}",
        stderr(&out)
    );

    // Into SQLite.
    let elsewhere = sqlite.dir.path().join("other.db");
    let out = migrate(sqlite.db_file(), &elsewhere);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--to is the PostgreSQL database"),
        "{}",
        stderr(&out)
    );
    assert!(!elsewhere.exists(), "nothing is made at --to");

    // From a file that is not there: not made, not copied as empty.
    let missing = sqlite.dir.path().join("missing.db");
    let out = migrate(&missing, postgres.db());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "there is no database {} to migrate",
            missing.display()
        )),
        "{}",
        stderr(&out)
    );
    assert!(!missing.exists());

    // From a database a hub still serves.
    let hub = Hub::start_with(&sqlite, HUB_ARGS);
    let out = migrate(sqlite.db_file(), postgres.db());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another process has the source database open"),
        "{}",
        stderr(&out)
    );
    assert_eq!(rows_in(&postgres, "access_keys"), 0);
    assert!(hub.stop().success());
}
