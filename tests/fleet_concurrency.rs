//! Concurrency policies per workflow, end to end: a real `tasuki-hub` and
//! a real agent with room for more sessions than a workflow allows at
//! once. The hub's own `started_at`/`ended_at` say which ran side by side.
#![cfg(unix)]

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::time::Duration;

use fleet_support::*;
use hub_support::*;
use serde_json::{Value, json};

/// A robot with room for four sessions at once.
fn roomy_robot(f: &Fleet) -> (Robot, Agent) {
    let robot = Robot::new(f.scratch.dir.path(), "roomy");
    robot.register_ok(&f.hub, &f.key, &["--max-concurrency", "4"]);
    let agent = robot.start(&[]);
    (robot, agent)
}

/// A workflow whose sessions sleep `seconds`, with a `customer` param.
fn sleeper(name: &str, seconds: f64) -> String {
    format!(
        "version: 1\nname: {name}\nparams:\n  customer: nobody\nsteps:\n  - id: work\n    action: shell.run\n    with: {{argv: [sleep, \"{seconds}\"]}}\n"
    )
}

async fn limited(api: &Api, yaml: &str, concurrency: Value) -> i64 {
    let r = api
        .post(
            "/v1/workflows",
            &json!({"yaml": yaml, "concurrency": concurrency}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(r.body["concurrency"], concurrency, "{}", r.body);
    r.body["id"].as_i64().expect("workflow id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_keeps_at_most_the_limit_running() {
    let f = Fleet::start();
    let _robot = roomy_robot(&f);
    let workflow_id = limited(
        &f.api,
        &sleeper("two-at-once", 3.0),
        json!({"limit": 2, "on_limit": "wait"}),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(queue(&f.api, workflow_id, json!({})).await);
    }
    // While the first two run, the third waits for the limit, and says so.
    running(&f.api, ids[0], Duration::from_secs(30)).await;
    running(&f.api, ids[1], Duration::from_secs(30)).await;
    let third = f.api.get(&format!("/v1/session_queues/{}", ids[2])).await;
    assert_eq!(third.body["status"], "queued", "{}", third.body);
    let reason = third.body["queued_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("concurrency limit"), "{}", third.body);
    let mut done = Vec::new();
    for id in &ids {
        let s = finished(&f.api, *id, Duration::from_secs(60)).await;
        assert_eq!(s["status"], "success", "{s}");
        done.push(s);
    }
    // The robot had room for four: the limit, not the robot, held them.
    assert_eq!(most_at_once(&done), 2, "{done:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_session_starts_on_another_robot_as_soon_as_one_ends() {
    let f = Fleet::start();
    let mut agents = Vec::new();
    for name in ["first", "second"] {
        let robot = Robot::new(f.scratch.dir.path(), name);
        robot.register_ok(&f.hub, &f.key, &[]);
        agents.push((name, robot.start(&[]), robot));
    }
    let workflow_id = limited(
        &f.api,
        &sleeper("one-at-a-time", 3.0),
        json!({"limit": 1, "on_limit": "wait"}),
    )
    .await;
    let earlier = queue(&f.api, workflow_id, json!({})).await;
    let ran = running(&f.api, earlier, Duration::from_secs(30)).await;
    let later = queue(&f.api, workflow_id, json!({})).await;
    // The robot running the earlier one drains: it finishes it and takes
    // nothing more. Only the other robot, whose poll has been waiting all
    // along, can take the later one, and only the end of the earlier one
    // can tell it to (its poll would otherwise wait out its 25 s).
    let busy = ran["robot"]["name"].as_str().expect("a robot").to_string();
    let (_, agent, _) = agents
        .iter()
        .find(|(name, _, _)| *name == busy)
        .expect("the busy robot");
    agent.signal("TERM");
    let ended = finished(&f.api, earlier, Duration::from_secs(30)).await;
    assert_eq!(ended["status"], "success", "{ended}");
    let started = running(&f.api, later, Duration::from_secs(30)).await;
    assert_ne!(started["robot"]["name"], busy, "{started}");
    let gap = ms(&started["started_at"]) - ms(&ended["ended_at"]);
    assert!(
        gap < 5_000,
        "the waiting session started {gap} ms after the running one ended"
    );
    finished(&f.api, later, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_answers_409_at_the_limit_and_queues_again_once_one_ended() {
    let f = Fleet::start();
    let _robot = roomy_robot(&f);
    let workflow_id = limited(
        &f.api,
        &sleeper("one-or-none", 1.0),
        json!({"limit": 1, "on_limit": "refuse"}),
    )
    .await;
    let first = queue(&f.api, workflow_id, json!({})).await;
    let r = f
        .api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": workflow_id, "params": {}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "concurrency_limit", "{}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("allows 1 session(s) at once") && message.contains("refuse"),
        "{message}"
    );
    // Nothing was stored for the refused one.
    let list = f.api.get("/v1/session_queues?per_page=50").await;
    assert_eq!(list.body["total_count"], 1, "{}", list.body);

    let s = finished(&f.api, first, Duration::from_secs(30)).await;
    assert_eq!(s["status"], "success", "{s}");
    let again = queue(&f.api, workflow_id, json!({})).await;
    let s = finished(&f.api, again, Duration::from_secs(30)).await;
    assert_eq!(s["status"], "success", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_oldest_cancels_the_running_session_and_runs_the_new_one() {
    let f = Fleet::start();
    let _robot = roomy_robot(&f);
    let workflow_id = limited(
        &f.api,
        &sleeper("latest-wins", 60.0),
        json!({"limit": 1, "on_limit": "cancel_oldest"}),
    )
    .await;
    let old = queue(&f.api, workflow_id, json!({})).await;
    running(&f.api, old, Duration::from_secs(30)).await;
    let new = queue(&f.api, workflow_id, json!({})).await;
    let ended = finished(&f.api, old, Duration::from_secs(20)).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    let started = running(&f.api, new, Duration::from_secs(20)).await;
    // The new one started only once the old one had ended.
    assert!(
        ms(&started["started_at"]) >= ms(&ended["ended_at"]),
        "{ended}\n{started}"
    );
    // The audit log says the policy cancelled it, and for which session.
    let auditor = create_key(&f.scratch, "audit.read");
    let auditor = Api::new(&f.hub, Some(token(&auditor, "audit.read")));
    let log = auditor.get("/v1/audit_log").await;
    let entry = log.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["action"] == "session_queue.cancel")
        .unwrap_or_else(|| panic!("no cancel recorded: {}", log.body))
        .clone();
    assert_eq!(entry["actor"], "hub", "{entry}");
    assert_eq!(entry["subject"], format!("session_queue {old}"), "{entry}");
    assert_eq!(entry["detail"]["reason"], "concurrency_policy", "{entry}");
    assert_eq!(entry["detail"]["for_session_queue"], new, "{entry}");
    f.api
        .delete(&format!("/v1/session_queues/{new}/cancel"))
        .await;
    finished(&f.api, new, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_limit_holds_per_value_of_its_param() {
    let f = Fleet::start();
    let _robot = roomy_robot(&f);
    let workflow_id = limited(
        &f.api,
        &sleeper("one-per-customer", 3.0),
        json!({"limit": 1, "on_limit": "wait", "key": "customer"}),
    )
    .await;
    let a1 = queue(&f.api, workflow_id, json!({"customer": "acme"})).await;
    let a2 = queue(&f.api, workflow_id, json!({"customer": "acme"})).await;
    let b = queue(&f.api, workflow_id, json!({"customer": "globex"})).await;
    // The default is a value like any other.
    let d = queue(&f.api, workflow_id, json!({})).await;
    running(&f.api, a1, Duration::from_secs(30)).await;
    let waiting = f.api.get(&format!("/v1/session_queues/{a2}")).await;
    assert_eq!(waiting.body["status"], "queued", "{}", waiting.body);
    let reason = waiting.body["queued_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("customer `acme`"), "{}", waiting.body);
    let mut done = Vec::new();
    for id in [a1, a2, b, d] {
        let s = finished(&f.api, id, Duration::from_secs(60)).await;
        assert_eq!(s["status"], "success", "{s}");
        done.push(s);
    }
    let (a1, a2, b, d) = (&done[0], &done[1], &done[2], &done[3]);
    // acme's two ran one after the other; globex's and the default's beside
    // acme's first.
    assert_eq!(most_at_once(&[a1.clone(), a2.clone()]), 1, "{a1}\n{a2}");
    assert!(ms(&b["started_at"]) < ms(&a1["ended_at"]), "{a1}\n{b}");
    assert!(ms(&d["started_at"]) < ms(&a1["ended_at"]), "{a1}\n{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_concurrency_policies_are_refused_with_their_field() {
    let f = Fleet::start();
    let yaml = "version: 1\nname: p\nparams:\n  customer: x\n  password: {secret: true}\nsteps:\n  - id: s\n    action: log\n    with: {message: hi}\n";
    for (concurrency, field) in [
        (json!({"limit": 0}), "concurrency.limit"),
        (json!({"limit": 10_001}), "concurrency.limit"),
        (json!({"limit": 1, "key": "nobody"}), "concurrency.key"),
        (json!({"limit": 1, "key": "password"}), "concurrency.key"),
    ] {
        let r = f
            .api
            .post(
                "/v1/workflows",
                &json!({"yaml": yaml, "concurrency": concurrency}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 422, "{concurrency}: {}", r.body);
        let text = r.body.to_string();
        assert!(text.contains(field), "{concurrency}: {text}");
    }
    // Shapes serde refuses: an unknown policy, an unknown field.
    for concurrency in [
        json!({"limit": 1, "on_limit": "drop"}),
        json!({"limit": 1, "per": "customer"}),
        json!({"on_limit": "wait"}),
    ] {
        let r = f
            .api
            .post(
                "/v1/workflows",
                &json!({"yaml": yaml, "concurrency": concurrency}),
            )
            .await;
        assert!(
            r.status.is_client_error(),
            "{concurrency}: {} {}",
            r.status,
            r.body
        );
        assert!(r.body.to_string().contains("concurrency"), "{}", r.body);
    }
    // A policy that cancels sessions needs a caller who may cancel them.
    let scopes = "session_queue.write session_queue.read workflow.write";
    let api = Api::new(&f.hub, Some(token(&f.key, scopes)));
    let r = api
        .post(
            "/v1/workflows",
            &json!({"yaml": yaml, "concurrency": {"limit": 1, "on_limit": "cancel_oldest"}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.body);
    assert!(
        r.body.to_string().contains("session_queue.delete"),
        "{}",
        r.body
    );
    let r = api
        .post(
            "/v1/workflows",
            &json!({"yaml": yaml, "concurrency": {"limit": 1, "on_limit": "refuse"}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let listed = f.api.get("/v1/workflows").await;
    assert_eq!(
        listed.body["workflows"][0]["concurrency"],
        json!({"limit": 1, "on_limit": "refuse"}),
        "{}",
        listed.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_s_run_refused_at_the_limit_records_at_limit_and_queues_nothing() {
    let f = Fleet::start();
    let _robot = roomy_robot(&f);
    let workflow_id = limited(
        &f.api,
        &sleeper("busy-all-day", 60.0),
        json!({"limit": 1, "on_limit": "refuse"}),
    )
    .await;
    let busy = queue(&f.api, workflow_id, json!({})).await;
    running(&f.api, busy, Duration::from_secs(30)).await;
    let r = f
        .api
        .post(
            &format!("/v1/workflows/{workflow_id}/schedules"),
            &json!({"cron": "* * * * * *"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let schedule_id = r.body["id"].as_i64().expect("schedule id");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = f.api.get(&format!("/v1/schedules/{schedule_id}")).await;
        if r.body["last_outcome"] == "at_limit" {
            assert!(r.body["last_session_id"].is_null(), "{}", r.body);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f.api
        .post(&format!("/v1/schedules/{schedule_id}/pause"), &json!({}))
        .await;
    let list = f.api.get("/v1/session_queues?per_page=50").await;
    assert_eq!(list.body["total_count"], 1, "{}", list.body);
    f.api
        .delete(&format!("/v1/session_queues/{busy}/cancel"))
        .await;
    finished(&f.api, busy, Duration::from_secs(20)).await;
}
