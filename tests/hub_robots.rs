//! Robot identity on a real hub: a robot belongs to the access key that
//! registered it, and only the hub's operator (`tasuki-hub robots ...`)
//! moves it to another key; the quota follows the robots a key has, and a
//! key may register only so many.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::process::{Output, Stdio};
use std::time::Duration;

use fleet_support::{Robot, queue, workflow};
use hub_support::*;
use serde_json::{Value, json};

/// Idle polls are held 1 s, so that a poll with nothing to give answers
/// quickly.
const HUB_ARGS: &[&str] = &["--hold-seconds", "1"];

const PINNED_YAML: &str = "version: 1
name: pinned
params:
  token: {secret: true}
steps:
  - id: work
    action: shell.run
    with: {argv: [\"true\"]}
";

/// A hub with an operator key (every scope) and two robot-only keys.
struct Setup {
    scratch: Scratch,
    hub: Hub,
    api: Api,
    key_a: Key,
    key_b: Key,
    robot_a: Api,
    robot_b: Api,
}

fn setup_with(args: &[&str]) -> Setup {
    let scratch = Scratch::new();
    let admin = create_key(&scratch, ALL_SCOPES);
    let key_a = create_key(&scratch, "robot");
    let key_b = create_key(&scratch, "robot");
    let hub = Hub::start_with(&scratch, args);
    let api = Api::new(&hub, Some(token(&admin, ALL_SCOPES)));
    let robot_a = Api::new(&hub, Some(token(&key_a, "robot")));
    let robot_b = Api::new(&hub, Some(token(&key_b, "robot")));
    Setup {
        scratch,
        hub,
        api,
        key_a,
        key_b,
        robot_a,
        robot_b,
    }
}

fn setup() -> Setup {
    setup_with(HUB_ARGS)
}

impl Setup {
    /// `tasuki-hub robots ARGS --db <this hub's db>`.
    fn robots_cli(&self, args: &[&str]) -> Output {
        hub_command()
            .arg("robots")
            .args(args)
            .args(self.scratch.db_args())
            .stdin(Stdio::null())
            .output()
            .expect("run tasuki-hub robots")
    }
}

async fn register(api: &Api, name: &str, instance_id: &str, replace: bool) -> Reply {
    api.send(
        api.request(reqwest::Method::PUT, &format!("/v1/robot/robots/{name}"))
            .json(&json!({
                "instance_id": instance_id,
                "version": "test",
                "max_concurrency": 1,
                "host": {"hostname": format!("host-{instance_id}")},
                "replace": replace,
            })),
    )
    .await
}

async fn register_ok(api: &Api, name: &str, instance_id: &str) -> Value {
    let r = register(api, name, instance_id, false).await;
    assert_eq!(r.status.as_u16(), 200, "register {name}: {}", r.body);
    r.body
}

async fn poll(api: &Api, name: &str, instance_id: &str, poll_id: &str) -> Reply {
    api.post(
        &format!("/v1/robot/robots/{name}/poll"),
        &json!({"instance_id": instance_id, "poll_id": poll_id, "free_slots": 1}),
    )
    .await
}

fn assert_refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status.as_u16(), r.code()), (status, code), "{}", r.body);
    // A lost `\` line continuation leaves a run of spaces in the text.
    assert!(
        !r.message().contains("  "),
        "the message reads as one sentence: {:?}",
        r.message()
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_cannot_take_a_robot_with_replace_or_its_instance_id() {
    let s = setup();
    register_ok(&s.robot_a, "robot-a", "machine-a").await;

    for (instance, replace) in [
        ("machine-b", true),
        ("machine-a", false),
        ("machine-a", true),
    ] {
        let r = register(&s.robot_b, "robot-a", instance, replace).await;
        assert_refused(&r, 403, "robot_of_another_key");
        assert!(
            r.message().contains("belongs to another access key")
                && r.message().contains("tasuki-hub robots transfer"),
            "{}",
            r.message()
        );
    }
    // B's polls and checks on it are refused, and A keeps its robot.
    let r = poll(&s.robot_b, "robot-a", "machine-a", "b1").await;
    assert_refused(&r, 403, "robot_of_another_key");
    let r = s
        .robot_b
        .get("/v1/robot/robots/robot-a?instance_id=machine-a")
        .await;
    assert_refused(&r, 403, "robot_of_another_key");
    let r = poll(&s.robot_a, "robot-a", "machine-a", "a1").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);

    // The same key moving to another machine with --replace stays allowed,
    // and the machine it left is told who took the name.
    let r = register(&s.robot_a, "robot-a", "machine-c", true).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = poll(&s.robot_a, "robot-a", "machine-a", "a2").await;
    assert_refused(&r, 409, "robot_name_taken");
    assert!(
        r.message()
            .contains("taken over by another machine (host `host-machine-c`)")
            && r.message().contains("--replace"),
        "{}",
        r.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_transfer_gives_the_robot_and_its_work_to_the_new_key() {
    let s = setup_with(&["--hold-seconds", "5"]);
    register_ok(&s.robot_a, "robot-a", "machine-a").await;
    // A's poll is waiting in the hub when the robot is moved. It carries
    // metrics, which the hub stores in the same database call that makes
    // the poll wait: once GET /v1/robots shows them, the poll is waiting.
    let waiting = {
        let api = Api::new(&s.hub, s.robot_a.token.clone());
        tokio::spawn(async move {
            api.post(
                "/v1/robot/robots/robot-a/poll",
                &json!({"instance_id": "machine-a", "poll_id": "a1", "free_slots": 1,
                        "metrics": {"cpu_percent": 1.0, "memory_used_bytes": 1,
                                    "memory_total_bytes": 2, "disk_free_bytes": 1,
                                    "disk_total_bytes": 2, "agent_rss_bytes": 1}}),
            )
            .await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.api.get("/v1/robots").await;
        if !r.body["robots"][0]["metrics"].is_null() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A's poll never reached the hub: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Refused: an unknown key, a key without `robot`, the current owner.
    let out = s.robots_cli(&["transfer", "robot-a", "--to-key", "TSKNOSUCHKEY"]);
    assert!(!out.status.success() && text(&out).contains("no access key `TSKNOSUCHKEY`"));
    let reader = create_key(&s.scratch, "session_queue.read");
    let out = s.robots_cli(&["transfer", "robot-a", "--to-key", &reader.id]);
    assert!(
        !out.status.success() && text(&out).contains("does not have the `robot` scope"),
        "{}",
        text(&out)
    );
    let out = s.robots_cli(&["transfer", "robot-a", "--to-key", &s.key_a.id]);
    assert!(!out.status.success() && text(&out).contains("already belongs"));

    let out = s.robots_cli(&["transfer", "robot-a", "--to-key", &s.key_b.id]);
    assert!(out.status.success(), "{}", text(&out));

    // Work pinned to the robot, queued after the move, never reaches A's
    // waiting poll.
    let wf = workflow(&s.api, PINNED_YAML, &["robot-a"]).await;
    let session = queue(&s.api, wf, json!({"token": "pinned-secret"})).await;
    let answer = waiting.await.expect("A's poll");
    assert_eq!(answer.status.as_u16(), 200, "{}", answer.body);
    assert_eq!(answer.body["leases"], json!([]), "{}", answer.body);

    // A is now told what happened, on every call.
    let r = poll(&s.robot_a, "robot-a", "machine-a", "a2").await;
    assert_refused(&r, 403, "robot_of_another_key");
    assert!(
        r.message()
            .contains("was moved to another access key by a hub operator"),
        "{}",
        r.message()
    );
    let r = register(&s.robot_a, "robot-a", "machine-a", true).await;
    assert_refused(&r, 403, "robot_of_another_key");

    // B's agent registers it without --replace, and gets its work.
    let r = poll(&s.robot_b, "robot-a", "machine-b", "b0").await;
    assert_refused(&r, 404, "robot_not_registered");
    register_ok(&s.robot_b, "robot-a", "machine-b").await;
    let r = poll(&s.robot_b, "robot-a", "machine-b", "b1").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let leases = r.body["leases"].as_array().expect("leases").clone();
    assert_eq!(leases.len(), 1, "{}", r.body);
    assert_eq!(leases[0]["session_id"], session, "{}", r.body);
    assert_eq!(leases[0]["params"]["token"], "pinned-secret", "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_and_delete_robots() {
    let s = setup();
    register_ok(&s.robot_a, "robot-a", "machine-a").await;
    register_ok(&s.robot_b, "robot-b", "machine-b").await;

    let out = s.robots_cli(&["list"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("robots list prints JSON");
    let owners: Vec<(&str, &str, &str)> = list
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or(""),
                r["access_key_id"].as_str().unwrap_or(""),
                r["hostname"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        owners,
        vec![
            ("robot-a", s.key_a.id.as_str(), "host-machine-a"),
            ("robot-b", s.key_b.id.as_str(), "host-machine-b")
        ]
    );

    // A robot holding a lease is not deleted.
    let wf = workflow(&s.api, PINNED_YAML, &["robot-a"]).await;
    let session = queue(&s.api, wf, json!({"token": "t"})).await;
    let r = poll(&s.robot_a, "robot-a", "machine-a", "a1").await;
    assert_eq!(r.body["leases"][0]["session_id"], session, "{}", r.body);
    let out = s.robots_cli(&["delete", "robot-a"]);
    assert!(
        !out.status.success() && text(&out).contains(&format!("session(s) {session}")),
        "{}",
        text(&out)
    );

    let out = s.robots_cli(&["delete", "robot-b"]);
    assert!(out.status.success(), "{}", text(&out));
    // Its machine is refused, polling or registering, rather than being
    // let to register it again (which its agent does on
    // robot_not_registered)...
    let r = poll(&s.robot_b, "robot-b", "machine-b", "b1").await;
    assert_refused(&r, 410, "robot_deleted");
    assert!(
        r.message()
            .contains("a hub operator deleted robot `robot-b`")
            && r.message().contains("--replace"),
        "{}",
        r.message()
    );
    let r = register(&s.robot_b, "robot-b", "machine-b", false).await;
    assert_refused(&r, 410, "robot_deleted");
    let out = s.robots_cli(&["delete", "robot-b"]);
    assert!(!out.status.success() && text(&out).contains("no robot `robot-b`"));
    let out = s.robots_cli(&["list"]);
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    // ...while it may register another name, and comes back when
    // registered with replace.
    register_ok(&s.robot_b, "robot-c", "machine-b").await;
    let r = register(&s.robot_b, "robot-b", "machine-b", true).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = poll(&s.robot_b, "robot-b", "machine-b", "b2").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
}

#[test]
fn register_warns_about_a_key_with_more_than_the_robot_scope() {
    let scratch = Scratch::new();
    let broad = create_key(&scratch, "robot session_queue.read workflow.write");
    let narrow = create_key(&scratch, "robot");
    let hub = Hub::start_with(&scratch, HUB_ARGS);

    let out = Robot::new(scratch.dir.path(), "broad").register(&hub, &broad, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning:")
            && stderr.contains("session_queue.read, workflow.write")
            && stderr.contains("a workflow")
            && stderr.contains("tasuki-hub keys create --scopes robot"),
        "{stderr}"
    );

    let out = Robot::new(scratch.dir.path(), "narrow").register(&hub, &narrow, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_counts_the_robots_of_the_calling_key_only() {
    let s = setup();
    // Robots of other keys raise nobody else's quota.
    for i in 0..3 {
        register_ok(&s.robot_a, &format!("a-{i}"), &format!("a-{i}")).await;
    }
    let reader = create_key(&s.scratch, "session_queue.read");
    let api = Api::new(&s.hub, Some(token(&reader, "session_queue.read")));
    let limit_of = |api: Api| async move {
        for i in 1..=1000u64 {
            let r = api.get("/v1/robots").await;
            if r.status.as_u16() == 429 {
                assert_eq!(r.code(), "rate_limited");
                return i - 1;
            }
            assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        }
        panic!("no limit within 1000 calls");
    };
    assert_eq!(limit_of(api).await, 60);

    // A key's own robots do: two robots, twice the calls.
    let owner = create_key(&s.scratch, "robot session_queue.read");
    let owner_robots = Api::new(&s.hub, Some(token(&owner, "robot")));
    register_ok(&owner_robots, "o-1", "o-1").await;
    register_ok(&owner_robots, "o-2", "o-2").await;
    let api = Api::new(&s.hub, Some(token(&owner, "session_queue.read")));
    assert_eq!(limit_of(api).await, 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_may_register_only_so_many_robots() {
    let s = setup_with(&["--hold-seconds", "1", "--max-robots-per-key", "3"]);
    for i in 0..3 {
        register_ok(&s.robot_a, &format!("r-{i}"), &format!("m-{i}")).await;
    }
    let r = register(&s.robot_a, "r-3", "m-3", false).await;
    assert_refused(&r, 403, "robot_limit_reached");
    assert!(
        r.message().contains("already has 3 robots")
            && r.message().contains("--max-robots-per-key"),
        "{}",
        r.message()
    );
    // Registering one it has again is no new robot; another key has its own count.
    register_ok(&s.robot_a, "r-0", "m-0").await;
    register_ok(&s.robot_b, "r-3", "m-3").await;
}

/// Registrations sent at once (on PostgreSQL, on connections of their own)
/// take turns: a key's limit holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_at_once_keep_a_key_s_limit() {
    let s = setup_with(&["--hold-seconds", "1", "--max-robots-per-key", "3"]);
    let robot_a = std::sync::Arc::new(s.robot_a);
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..12 {
        let api = robot_a.clone();
        burst.spawn(async move {
            register(&api, &format!("burst-{i}"), &format!("bm-{i}"), false).await
        });
    }
    let replies = burst.join_all().await;
    let registered = replies.iter().filter(|r| r.status.as_u16() == 200).count();
    assert_eq!(
        registered,
        3,
        "{:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    for r in replies.iter().filter(|r| r.status.as_u16() != 200) {
        assert_refused(r, 403, "robot_limit_reached");
    }
}

/// A new name sent by two keys at once gets one owner; the other key is
/// told it is another key's, never an error of the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_registered_by_two_keys_at_once_gets_one_owner() {
    let s = setup();
    for i in 0..20 {
        let name = format!("contested-{i}");
        let (a, b) = tokio::join!(
            register(&s.robot_a, &name, "from-a", false),
            register(&s.robot_b, &name, "from-b", false),
        );
        let (won, lost) = if a.status.as_u16() == 200 {
            (a, b)
        } else {
            (b, a)
        };
        assert_eq!(won.status.as_u16(), 200, "{name}: {}", won.body);
        assert_refused(&lost, 403, "robot_of_another_key");
    }
}

/// A key made with `--robot-labels` gives its robots those labels at most,
/// so that a credential allowed by a label reaches only the robots of the
/// keys that may give it; bad flags are refused, and `keys list` shows the
/// labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_with_robot_labels_gives_its_robots_those_at_most() {
    let s = setup();
    let keys_cli = |args: &[&str]| {
        hub_command()
            .arg("keys")
            .args(args)
            .args(s.scratch.db_args())
            .stdin(Stdio::null())
            .output()
            .expect("run tasuki-hub keys")
    };
    for (args, expected) in [
        (
            vec![
                "create",
                "--scopes",
                "robot",
                "--robot-labels",
                "eu,no label!",
            ],
            "--robot-labels: `label!`",
        ),
        (
            vec![
                "create",
                "--scopes",
                "session_queue.read",
                "--robot-labels",
                "eu",
            ],
            "the key has no `robot` scope",
        ),
    ] {
        let out = keys_cli(&args);
        assert!(!out.status.success(), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(expected), "{args:?}: {}", text(&out));
    }
    let out = keys_cli(&["create", "--scopes", "robot", "--robot-labels", "eu gpu,eu"]);
    assert!(out.status.success(), "{}", text(&out));
    let made: Value = serde_json::from_slice(&out.stdout).expect("keys create prints JSON");
    let limited = Key {
        id: made["access_key_id"].as_str().expect("id").into(),
        secret: made["secret_access_key"].as_str().expect("secret").into(),
    };
    let robot = Api::new(&s.hub, Some(token(&limited, "robot")));
    let with_labels = |labels: Value| {
        let robot = robot.clone();
        async move {
            robot
                .send(
                    robot
                        .request(reqwest::Method::PUT, "/v1/robot/robots/limited-1")
                        .json(&json!({"instance_id": "i-limited", "version": "test",
                                      "max_concurrency": 1, "labels": labels})),
                )
                .await
        }
    };
    let r = with_labels(json!(["gpu", "vault"])).await;
    assert_refused(&r, 403, "label_not_allowed");
    assert!(
        r.message().contains("labels[1]: the access key")
            && r.message()
                .contains("may not give its robots the label `vault` (it may give: eu, gpu)"),
        "{}",
        r.body
    );
    let r = s.api.get("/v1/robots").await;
    assert_eq!(
        r.body["robots"].as_array().map(Vec::len),
        Some(0),
        "{}",
        r.body
    );
    let r = with_labels(json!(["gpu", "eu"])).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    // Another key, made without the flag, gives any label, as before.
    let r = s
        .robot_a
        .send(
            s.robot_a
                .request(reqwest::Method::PUT, "/v1/robot/robots/free-1")
                .json(&json!({"instance_id": "i-free", "version": "test",
                              "max_concurrency": 1, "labels": ["vault"]})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);

    let out = keys_cli(&["list"]);
    let listed: Value = serde_json::from_slice(&out.stdout).expect("keys list prints JSON");
    let row = |id: &str| {
        listed
            .as_array()
            .expect("a list")
            .iter()
            .find(|k| k["access_key_id"] == id)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(row(&limited.id)["robot_labels"], json!(["eu", "gpu"]));
    assert!(row(&s.key_a.id)["robot_labels"].is_null(), "{listed}");

    // Moved to another key, a robot carries no label until that key's
    // agent registers it with labels of its own.
    let out = s.robots_cli(&["transfer", "limited-1", "--to-key", &s.key_a.id]);
    assert!(out.status.success(), "{}", text(&out));
    let r = s.api.get("/v1/robots").await;
    let moved = r.body["robots"]
        .as_array()
        .expect("robots")
        .iter()
        .find(|robot| robot["name"] == "limited-1")
        .cloned()
        .unwrap_or_default();
    assert_eq!(moved["labels"], json!([]), "{}", r.body);
}
