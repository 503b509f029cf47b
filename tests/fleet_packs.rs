//! Routing by what robots offer, end to end: a real `tasuki-hub`, real
//! `tasuki agent` processes, the real probe pack (tests/packs/probe,
//! Python 3) over loopback. A robot sends its catalog and labels when it
//! registers; the hub refuses a workflow no robot could run, sends each
//! session only to a robot that has every action and label it needs, and
//! says why a session no robot can take waits.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_support::*;
use hub_support::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

const HELLO: &str = "version: 1
name: hello-from-the-pack
steps:
  - id: hello
    action: probe.hello
    with: {name: fleet}
";

const LOGS: &str = "version: 1
name: logs
steps:
  - id: a
    action: log
    with: {message: hi}
";

/// The folder of test packs (tests/packs), which holds the probe pack.
fn test_packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/packs")
}

impl Fleet {
    /// A registered robot with its agent running, its packs from
    /// `packs` (an empty folder for none, so that no default folder of
    /// this machine counts), and `--set` flags `settings`.
    fn agent(
        &self,
        name: &str,
        register: &[&str],
        packs: Option<&Path>,
        settings: &[&str],
    ) -> (Robot, Agent) {
        let robot = Robot::new(self.scratch.dir.path(), name);
        robot.register_ok(&self.hub, &self.key, register);
        let none = robot.dir.join("no-packs");
        std::fs::create_dir_all(&none).expect("an empty packs folder");
        let mut args = vec![
            "--set".to_string(),
            format!("paths.action_packs={}", packs.unwrap_or(&none).display()),
        ];
        for set in settings {
            args.extend(["--set".to_string(), set.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = robot.start(&args);
        (robot, agent)
    }

    async fn robot(&self, name: &str) -> Value {
        let r = self.api.get("/v1/robots").await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        r.body["robots"]
            .as_array()
            .and_then(|robots| robots.iter().find(|r| r["name"] == name).cloned())
            .unwrap_or_else(|| panic!("robot {name} is listed: {}", r.body))
    }

    async fn upload(&self, yaml: &str, robot_labels: &[&str]) -> Reply {
        upload_labelled(&self.api, yaml, robot_labels).await
    }

    async fn workflow(&self, yaml: &str, robot_labels: &[&str]) -> i64 {
        workflow_labelled(&self.api, yaml, robot_labels).await
    }
}

/// The names of the actions a robot offers, as GET /v1/robots shows them.
fn offered(robot: &Value) -> Vec<String> {
    robot["actions"]
        .as_array()
        .unwrap_or_else(|| panic!("a catalog: {robot}"))
        .iter()
        .filter_map(|a| a["name"].as_str().map(String::from))
        .collect()
}

/// Queues `count` sessions of `workflow`, waits for them all to end, and
/// returns them.
async fn run_all(api: &Api, workflow: i64, count: usize) -> Vec<Value> {
    let mut ids = Vec::new();
    for _ in 0..count {
        ids.push(queue(api, workflow, json!({})).await);
    }
    let mut out = Vec::new();
    for id in ids {
        out.push(finished(api, id, LIMIT).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pack_workflow_runs_only_on_the_robot_that_has_the_pack() {
    let f = Fleet::start();
    let _plain = f.agent("plain", &[], None, &[]);
    let _packs = f.agent("with-probe", &[], Some(&test_packs()), &[]);

    let with_probe = f.robot("with-probe").await;
    let hello = with_probe["actions"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["name"] == "probe.hello"))
        .cloned()
        .unwrap_or_else(|| panic!("probe.hello is offered: {with_probe}"));
    assert_eq!(hello["pack"], "probe");
    assert_eq!(hello["version"], "0.1.0");
    assert_eq!(hello["schema_sha256"].as_str().map(str::len), Some(64));
    assert!(offered(&with_probe).contains(&"shell.run".to_string()));
    let plain = offered(&f.robot("plain").await);
    assert!(plain.contains(&"log".to_string()), "{plain:?}");
    assert!(!plain.iter().any(|a| a.starts_with("probe.")), "{plain:?}");

    // Both robots wait; every session goes to the one with the pack.
    let wf = f.workflow(HELLO, &[]).await;
    for s in run_all(&f.api, wf, 4).await {
        assert_eq!(s["status"], "success", "{s}");
        assert_eq!(s["robot"]["name"], "with-probe", "{s}");
        assert_eq!(s["steps"][0]["output"]["greeting"], "hello, fleet", "{s}");
    }

    // An action no robot offers is refused at upload, naming it and what
    // the fleet does offer.
    let r = f
        .upload(
            "version: 1\nname: n\nsteps:\n  - id: a\n    action: excel.read_sheet\n",
            &[],
        )
        .await;
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
        "no robot of this hub offers `excel.read_sheet`; the packs its robots offer: probe \
         0.1.0 (with-probe)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_with_robot_labels_runs_only_on_a_robot_that_carries_them() {
    let f = Fleet::start();
    let _plain = f.agent("plain", &["--labels", "linux"], None, &[]);
    let _special = f.agent("special-1", &["--labels", "linux,special"], None, &[]);
    assert_eq!(
        f.robot("special-1").await["labels"],
        json!(["linux", "special"])
    );

    let wf = f.workflow(LOGS, &["special"]).await;
    for s in run_all(&f.api, wf, 4).await {
        assert_eq!(s["status"], "success", "{s}");
        assert_eq!(s["robot"]["name"], "special-1", "{s}");
    }
    // A label both carry: either may run it.
    let wf = f.workflow(LOGS, &["linux"]).await;
    for s in run_all(&f.api, wf, 2).await {
        assert_eq!(s["status"], "success", "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_needs_a_label_no_robot_has_stays_queued_and_says_why() {
    let f = Fleet::start();
    let _a = f.agent("robot-a", &["--labels", "linux"], None, &[]);
    let _b = f.agent("robot-b", &[], None, &[]);

    let wf = f.workflow(LOGS, &["gpu"]).await;
    let id = queue(&f.api, wf, json!({})).await;
    // Both robots wait for work all along: a later session that they can
    // run goes ahead of it, and it is still queued after.
    let other = f.workflow(LOGS, &[]).await;
    let ran = finished(&f.api, queue(&f.api, other, json!({})).await, LIMIT).await;
    assert_eq!(ran["status"], "success", "{ran}");
    let s = f.api.get(&format!("/v1/session_queues/{id}")).await.body;
    assert_eq!(s["status"], "queued", "{s}");
    assert!(s["robot"].is_null(), "{s}");
    assert_eq!(
        s["queued_reason"],
        "no robot can run it: robot-a lacks the label gpu; robot-b lacks the label gpu",
        "{s}"
    );
    let listed = f.api.get("/v1/session_queues?query=is:queued").await;
    assert_eq!(
        listed.body["session_queues"][0]["queued_reason"], s["queued_reason"],
        "{}",
        listed.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_whose_allowed_actions_refuse_the_pack_neither_offers_it_nor_gets_it() {
    let f = Fleet::start();
    let packs = test_packs();
    let _refuser = f.agent(
        "refuser",
        &[],
        Some(&packs),
        &["behaviour.allowed_actions=log,shell.*"],
    );
    let refuser = offered(&f.robot("refuser").await);
    assert!(
        !refuser.iter().any(|a| a.starts_with("probe.")),
        "{refuser:?}"
    );
    assert!(
        !refuser.iter().any(|a| a.starts_with("browser.")),
        "{refuser:?}"
    );
    assert!(refuser.contains(&"log".to_string()), "{refuser:?}");

    // It is the only robot: nobody offers probe.hello.
    let r = f.upload(HELLO, &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "invalid_workflow"),
        "{}",
        r.body
    );
    assert!(
        r.body["error"]["problems"][0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no robot of this hub offers `probe.hello`; no robot of this hub offers any action pack")),
        "{}",
        r.body
    );

    // Another robot offers it: every session goes there, none to the
    // refuser, which is idle and waiting all along.
    let _taker = f.agent("taker", &[], Some(&packs), &[]);
    let wf = f.workflow(HELLO, &[]).await;
    for s in run_all(&f.api, wf, 4).await {
        assert_eq!(s["status"], "success", "{s}");
        assert_eq!(s["robot"]["name"], "taker", "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_sessions_each_have_their_own_pack_process() {
    let f = Fleet::start();
    let _agent = f.agent(
        "pair",
        &["--max-concurrency", "2"],
        Some(&test_packs()),
        &[],
    );
    let yaml = "version: 1
name: remember-then-recall
params:
  value: \"\"
steps:
  - id: remember
    action: probe.remember
    with: {value: \"${params.value}\"}
  - id: wait
    action: sleep
    with: {duration: 1s}
  - id: recall
    action: probe.recall
";
    let wf = f.workflow(yaml, &[]).await;
    let first = queue(&f.api, wf, json!({"value": "first"})).await;
    let second = queue(&f.api, wf, json!({"value": "second"})).await;
    let first = finished(&f.api, first, LIMIT).await;
    let second = finished(&f.api, second, LIMIT).await;
    let mut pids = Vec::new();
    for (s, value) in [(&first, "first"), (&second, "second")] {
        assert_eq!(s["status"], "success", "{s}");
        assert_eq!(s["robot"]["name"], "pair", "{s}");
        let recall = &s["steps"][2];
        assert_eq!(recall["id"], "recall", "{s}");
        assert_eq!(recall["output"]["value"], value, "{s}");
        // The same process served both of a session's steps.
        assert_eq!(
            recall["output"]["pid"], s["steps"][0]["output"]["pid"],
            "{s}"
        );
        pids.push(recall["output"]["pid"].as_i64().expect("a pid"));
    }
    assert_ne!(pids[0], pids[1], "each session has its own pack process");
    // They ran at once: each started before the other ended.
    let time = |s: &Value, field: &str| {
        s[field]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .unwrap_or_else(|| panic!("{field}: {s}"))
    };
    assert!(
        time(&first, "started_at") < time(&second, "ended_at")
            && time(&second, "started_at") < time(&first, "ended_at"),
        "the two sessions overlapped:\n{first}\n{second}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasuki_register_sends_the_catalog_before_the_agent_starts() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "new-robot");
    // Its config names the folder of test packs and refuses the browser.
    std::fs::write(
        robot.config(),
        format!(
            "[paths]\naction_packs = [\"{}\"]\n\n[behaviour]\nallowed_actions = [\"log\", \"probe.*\"]\n",
            test_packs().display()
        ),
    )
    .expect("write the config");
    robot.register_ok(&f.hub, &f.key, &[]);
    let mut offered = offered(&f.robot("new-robot").await);
    offered.retain(|a| !a.starts_with("probe.") || a == "probe.hello");
    assert_eq!(offered, ["log", "probe.hello"]);
}
