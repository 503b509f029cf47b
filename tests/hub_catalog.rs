//! Action catalogs and routing, spoken by hand against a real
//! `tasuki-hub`: robots register what they offer (actions, packs,
//! labels), the hub shows it, validates uploaded workflows against what
//! the fleet offers, routes each session only to a robot that has
//! everything it needs, and says why a session no robot can take waits.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleet_support::{queue, upload_labelled, workflow_labelled};
use hub_support::*;
use serde_json::{Value, json};

/// An idle poll is held 1 s, so that one with nothing to give answers
/// quickly.
const HUB_ARGS: &[&str] = &["--quota-per-robot", "1000000", "--hold-seconds", "1"];

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Setup {
    _scratch: Scratch,
    _hub: Hub,
    api: Api,
    robot_api: Api,
}

fn setup_with(hub_args: &[&str]) -> Setup {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, hub_args);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot_api = Api::new(&hub, Some(token(&key, "robot")));
    Setup {
        _scratch: scratch,
        _hub: hub,
        api,
        robot_api,
    }
}

fn setup() -> Setup {
    setup_with(HUB_ARGS)
}

/// A built-in action as an agent offers it.
fn builtin(name: &str) -> Value {
    json!({"name": name, "version": "0.1.0", "schema_sha256": SHA})
}

/// A pack's action as an agent offers it.
fn packed(name: &str, version: &str) -> Value {
    let pack = name.split('.').next().unwrap_or_default();
    json!({"name": name, "pack": pack, "version": version, "schema_sha256": SHA})
}

impl Setup {
    /// `PUT /v1/robot/robots/{name}` with `extra` fields over a minimal body.
    async fn register_with(&self, name: &str, extra: Value) -> Reply {
        let mut body = json!({"instance_id": name, "version": "test", "max_concurrency": 1});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        self.robot_api
            .send(
                self.robot_api
                    .request(reqwest::Method::PUT, &format!("/v1/robot/robots/{name}"))
                    .json(&body),
            )
            .await
    }

    async fn register(&self, name: &str, actions: Option<Vec<Value>>, labels: &[&str]) {
        let extra = match actions {
            Some(actions) => json!({"actions": actions, "labels": labels}),
            None => json!({"labels": labels}),
        };
        let r = self.register_with(name, extra).await;
        assert_eq!(r.status.as_u16(), 200, "register {name}: {}", r.body);
    }

    async fn upload(&self, yaml: &str, robot_labels: &[&str]) -> Reply {
        upload_labelled(&self.api, yaml, robot_labels).await
    }

    async fn workflow(&self, yaml: &str, robot_labels: &[&str]) -> i64 {
        workflow_labelled(&self.api, yaml, robot_labels).await
    }

    async fn robots(&self) -> Vec<Value> {
        let r = self.api.get("/v1/robots").await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        r.body["robots"].as_array().cloned().unwrap_or_default()
    }

    async fn session(&self, id: i64) -> Value {
        let r = self.api.get(&format!("/v1/session_queues/{id}")).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        r.body
    }

    /// One poll of robot `name` with a free slot; the sessions it leases.
    async fn poll(&self, name: &str) -> Vec<i64> {
        poll(&self.robot_api, name).await
    }
}

async fn poll(api: &Api, name: &str) -> Vec<i64> {
    static POLLS: AtomicU64 = AtomicU64::new(0);
    let poll_id = format!("p-{}", POLLS.fetch_add(1, Ordering::Relaxed));
    let r = api
        .post(
            &format!("/v1/robot/robots/{name}/poll"),
            &json!({"instance_id": name, "poll_id": poll_id, "free_slots": 1}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "poll of {name}: {}", r.body);
    r.body["leases"]
        .as_array()
        .map(|l| l.iter().filter_map(|l| l["session_id"].as_i64()).collect())
        .unwrap_or_default()
}

fn uses(action: &str) -> String {
    format!("version: 1\nname: uses-{action}\nsteps:\n  - id: a\n    action: {action}\n")
}

const LOGS: &str = "version: 1
name: logs
steps:
  - id: a
    action: log
    with: {message: hi}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_robots_shows_each_robots_catalog_as_it_last_registered() {
    let s = setup();
    s.register(
        "with-packs",
        Some(vec![builtin("log"), packed("probe.hello", "0.1.0")]),
        &["linux", "gpu"],
    )
    .await;
    s.register("older", None, &[]).await;

    let robots = s.robots().await;
    let by_name = |name: &str| {
        robots
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} listed: {robots:?}"))
    };
    let with_packs = by_name("with-packs");
    assert_eq!(
        with_packs["actions"],
        json!([builtin("log"), packed("probe.hello", "0.1.0")])
    );
    assert_eq!(with_packs["labels"], json!(["linux", "gpu"]));
    // An agent older than catalogs said nothing: unknown, not empty.
    assert!(by_name("older")["actions"].is_null(), "{robots:?}");

    // A registration replaces the catalog (an agent's start with other
    // packs).
    s.register("with-packs", Some(vec![builtin("log")]), &[])
        .await;
    let robots = s.robots().await;
    assert_eq!(robots[1]["name"], "with-packs", "{robots:?}");
    assert_eq!(robots[1]["actions"], json!([builtin("log")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_catalog_is_refused_naming_the_field() {
    let s = setup();
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!([builtin("log"), builtin("Excel.Read")]),
            "actions[1].name",
            "lowercase",
        ),
        (json!([builtin("a.b.c")]), "actions[0].name", "at most one"),
        (
            json!([builtin("log"), builtin("log")]),
            "actions[1].name",
            "listed twice",
        ),
        (
            json!([{"name": "excel.read", "pack": "word", "version": "1", "schema_sha256": SHA}]),
            "actions[0].name",
            "word.<action>",
        ),
        (
            json!([{"name": "x.y", "pack": "X", "version": "1", "schema_sha256": SHA}]),
            "actions[0].pack",
            "lowercase",
        ),
        (
            json!([{"name": "log", "version": "v".repeat(65), "schema_sha256": SHA}]),
            "actions[0].version",
            "64 bytes",
        ),
        (
            json!([{"name": "log", "version": "1\u{7}", "schema_sha256": SHA}]),
            "actions[0].version",
            "printable",
        ),
        (
            json!([{"name": "log", "version": "1", "schema_sha256": "ABC"}]),
            "actions[0].schema_sha256",
            "64 lowercase hexadecimal",
        ),
        (
            Value::Array((0..1001).map(|i| builtin(&format!("a{i}.b"))).collect()),
            "actions",
            "at most 1000",
        ),
    ];
    for (actions, field, says) in cases {
        let r = s
            .register_with("robot-a", json!({"actions": actions}))
            .await;
        assert_eq!(
            (
                r.status.as_u16(),
                r.body["error"]["problems"][0]["path"].as_str()
            ),
            (422, Some(field)),
            "{}",
            r.body
        );
        assert!(r.message().contains(says), "{field}: {}", r.message());
    }
    // A field the hub does not know is refused, not ignored.
    let r = s
        .register_with(
            "robot-a",
            json!({"actions": [{"name": "log", "version": "1", "schema_sha256": SHA, "schema": {}}]}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "unknown_field"),
        "{}",
        r.body
    );
    assert!(r.message().contains("actions[0]"), "{}", r.message());
    // Nothing of it was stored.
    assert!(s.robots().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_using_an_action_no_robot_offers_is_refused_naming_it_and_the_fleets_packs() {
    let s = setup();
    // No robot at all: a pack action is unknown, built-ins are fine.
    let r = s.upload(&uses("probe.hello"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "invalid_workflow"),
        "{}",
        r.body
    );
    let problem = &r.body["error"]["problems"][0];
    assert_eq!(problem["path"], "steps[0].action");
    assert_eq!(
        problem["message"],
        "no robot of this hub offers `probe.hello`; no robot of this hub offers any action pack"
    );
    s.workflow(LOGS, &[]).await;

    s.register(
        "robot-a",
        Some(vec![builtin("log"), packed("probe.hello", "0.1.0")]),
        &[],
    )
    .await;
    s.register(
        "robot-b",
        Some(vec![
            packed("probe.hello", "0.1.0"),
            packed("excel.write_rows", "1.2.0"),
        ]),
        &[],
    )
    .await;
    s.register("robot-old", None, &[]).await;

    // The action is offered now; its arguments are the robot's to check.
    s.workflow(
        "version: 1\nname: p\nsteps:\n  - id: a\n    action: probe.hello\n    with: {anything: [1]}\n",
        &[],
    )
    .await;
    // Built-ins are still checked in full.
    let r = s
        .upload(
            "version: 1\nname: l\nsteps:\n  - id: a\n    action: log\n",
            &[],
        )
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert_eq!(
        r.body["error"]["problems"][0]["path"],
        "steps[0].with.message"
    );

    let r = s.upload(&uses("excel.read_sheet"), &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "invalid_workflow"),
        "{}",
        r.body
    );
    let problem = &r.body["error"]["problems"][0];
    assert_eq!(problem["path"], "steps[0].action");
    assert_eq!(
        problem["message"],
        "no robot of this hub offers `excel.read_sheet`; the packs its robots offer: excel \
         1.2.0 (robot-b), probe 0.1.0 (robot-a, robot-b); robot-old did not say what it offers \
         (agents older than action catalogs)",
        "{}",
        r.body
    );
    assert!(r.message().contains("excel.read_sheet"), "{}", r.message());
    // A near miss is pointed out.
    let r = s.upload(&uses("probe.helo"), &[]).await;
    let message = r.body["error"]["problems"][0]["message"]
        .as_str()
        .unwrap_or("");
    assert!(
        message
            .starts_with("no robot of this hub offers `probe.helo` (did you mean `probe.hello`?)"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robot_labels_are_checked_stored_and_listed() {
    let s = setup();
    let long = "l".repeat(65);
    let many: Vec<String> = (0..33).map(|i| format!("l{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for (labels, field, says) in [
        (vec!["gpu", "a b"], "robot_labels[1]", "not ' '"),
        (vec!["-gpu"], "robot_labels[0]", "starts with a letter"),
        (vec![long.as_str()], "robot_labels[0]", "at most 64"),
        (vec!["gpu", "ssd", "gpu"], "robot_labels[2]", "listed twice"),
        (many, "robot_labels", "at most 32"),
    ] {
        let r = s.upload(LOGS, &labels).await;
        assert_eq!(
            (
                r.status.as_u16(),
                r.body["error"]["problems"][0]["path"].as_str()
            ),
            (422, Some(field)),
            "{}",
            r.body
        );
        assert!(r.message().contains(says), "{field}: {}", r.message());
    }
    let r = s.upload(LOGS, &["gpu", "ssd"]).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(r.body["robot_labels"], json!(["gpu", "ssd"]));
    let plain = s.workflow(LOGS, &[]).await;
    let list = s.api.get("/v1/workflows").await;
    let workflows = list.body["workflows"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(workflows[0]["robot_labels"], json!(["gpu", "ssd"]));
    assert_eq!(workflows[1]["id"], plain);
    // Not AUTORO's field: absent when there are none.
    assert!(workflows[1].get("robot_labels").is_none(), "{}", list.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_only_to_a_robot_with_its_actions_and_labels() {
    let s = setup();
    s.register("plain", Some(vec![builtin("log")]), &["gpu"])
        .await;
    s.register(
        "packs",
        Some(vec![builtin("log"), packed("probe.hello", "0.1.0")]),
        &[],
    )
    .await;
    let probe = s.workflow(&uses("probe.hello"), &[]).await;
    let gpu = s.workflow(LOGS, &["gpu"]).await;

    // Queued before any poll: each robot's poll takes what it may run,
    // passing over what it may not.
    let probe_session = queue(&s.api, probe, json!({})).await;
    let gpu_session = queue(&s.api, gpu, json!({})).await;
    assert!(
        s.session(probe_session)
            .await
            .get("queued_reason")
            .is_none()
    );
    assert_eq!(s.poll("plain").await, [gpu_session]);
    assert_eq!(s.poll("packs").await, [probe_session]);
    assert_eq!(s.session(probe_session).await["robot"]["name"], "packs");
    assert_eq!(s.session(gpu_session).await["robot"]["name"], "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_robot_that_lacks_an_action_is_passed_over() {
    // Polls are held long enough for both robots to wait while the
    // session is queued.
    let s = setup_with(&["--quota-per-robot", "1000000", "--hold-seconds", "5"]);
    s.register("plain", Some(vec![builtin("log")]), &[]).await;
    s.register(
        "packs",
        Some(vec![builtin("log"), packed("probe.hello", "0.1.0")]),
        &[],
    )
    .await;
    let probe = s.workflow(&uses("probe.hello"), &[]).await;

    // `plain` waits first, so it would be offered the session first if it
    // could run it.
    let robot_api = Api {
        http: s.robot_api.http.clone(),
        base: s.robot_api.base.clone(),
        token: s.robot_api.token.clone(),
    };
    let plain = tokio::spawn(async move { poll(&robot_api, "plain").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let robot_api = Api {
        http: s.robot_api.http.clone(),
        base: s.robot_api.base.clone(),
        token: s.robot_api.token.clone(),
    };
    let packs = tokio::spawn(async move { poll(&robot_api, "packs").await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let id = queue(&s.api, probe, json!({})).await;
    assert_eq!(packs.await.expect("the poll answers"), [id]);
    assert_eq!(plain.await.expect("the poll answers"), Vec::<i64>::new());
    assert_eq!(s.session(id).await["robot"]["name"], "packs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_no_robot_can_take_stays_queued_and_says_why() {
    let s = setup();
    let gpu = s.workflow(LOGS, &["gpu"]).await;

    let id = queue(&s.api, gpu, json!({})).await;
    assert_eq!(
        s.session(id).await["queued_reason"],
        "no robot is registered on this hub"
    );

    s.register("robot-a", Some(vec![builtin("log")]), &["linux"])
        .await;
    s.register("robot-b", None, &[]).await;
    assert_eq!(s.poll("robot-a").await, Vec::<i64>::new());
    let session = s.session(id).await;
    assert_eq!(session["status"], "queued");
    assert_eq!(
        session["queued_reason"],
        "no robot can run it: robot-a lacks the label gpu; robot-b lacks the label gpu"
    );
    // The list says it too, for queued sessions only.
    let list = s.api.get("/v1/session_queues").await;
    assert_eq!(
        list.body["session_queues"][0]["queued_reason"],
        session["queued_reason"]
    );

    // Actions count as well: one robot lacks the pack, the other the label.
    s.register(
        "robot-b",
        Some(vec![builtin("log"), packed("probe.hello", "0.1.0")]),
        &["gpu"],
    )
    .await;
    let both = s.workflow(&uses("probe.hello"), &["linux"]).await;
    let other = queue(&s.api, both, json!({})).await;
    assert_eq!(
        s.session(other).await["queued_reason"],
        "no robot can run it: robot-a lacks probe.hello; robot-b lacks the label linux"
    );

    // robot-b now has the label gpu: the first session only waits for it,
    // and its next poll takes it.
    assert!(s.session(id).await.get("queued_reason").is_none());
    assert_eq!(s.poll("robot-b").await, [id]);
    assert_eq!(s.session(id).await["robot"]["name"], "robot-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_without_a_catalog_is_routed_any_action_but_not_a_missing_label() {
    let s = setup();
    s.register(
        "with-packs",
        Some(vec![packed("probe.hello", "0.1.0")]),
        &[],
    )
    .await;
    s.register("older", None, &[]).await;
    let probe = s.workflow(&uses("probe.hello"), &[]).await;
    let labelled = s.workflow(&uses("probe.hello"), &["gpu"]).await;
    let labelled_session = queue(&s.api, labelled, json!({})).await;
    let id = queue(&s.api, probe, json!({})).await;
    // Its actions are unknown, so they are not held against it; its
    // labels are known.
    assert_eq!(s.poll("older").await, [id]);
    let reason = s.session(labelled_session).await["queued_reason"].clone();
    assert_eq!(
        reason,
        "no robot can run it: older lacks the label gpu; with-packs lacks the label gpu"
    );
}
