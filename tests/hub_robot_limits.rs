//! Robots at the hub's limits, on a real hub with real agents: what a robot
//! does when its calls are answered 429, and how soon `GET /v1/robots`
//! shows a robot that went away as offline.
//!
//! The robot protocol is exempt from the per-key call quota, so the one
//! 429 a robot call can get is the failed-authentication limit: a source
//! address past `--auth-failures-per-source` is refused whatever key it
//! names, robots on that address included, until its one-minute window
//! ends.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::time::{Duration, Instant};

use fleet_support::{Robot, eventually, finished, queue, workflow};
use hub_support::*;
use serde_json::json;

const QUICK_YAML: &str = "version: 1
name: quick
steps:
  - id: work
    action: shell.run
    with: {argv: [\"true\"]}
";

async fn state_of(api: &Api, name: &str) -> String {
    let r = api.get("/v1/robots").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["robots"]
        .as_array()
        .and_then(|robots| robots.iter().find(|x| x["name"] == name))
        .and_then(|x| x["state"].as_str())
        .unwrap_or_else(|| panic!("no robot `{name}` in {}", r.body))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_refused_with_429_waits_retry_after_and_recovers() {
    let scratch = Scratch::new();
    let admin = create_key(&scratch, ALL_SCOPES);
    let robot_key = create_key(&scratch, "robot");
    // The test reads its session often: the API quota is out of the way
    // (tested in hub_robots), so that only the failed-authentication
    // limit answers 429 here.
    let flags = [
        "--hold-seconds",
        "1",
        "--auth-failures-per-source",
        "3",
        "--quota-per-robot",
        "1000000",
    ];
    let hub = Hub::start_with(&scratch, &flags);
    let robot = Robot::new(scratch.dir.path(), "limited");
    robot.register_ok(&hub, &robot_key, &[]);
    // A key that worked from an address is not locked out by others
    // failing there; a restarted hub has forgotten which did, so the robot
    // starting now is like any caller from 127.0.0.1 (its own address).
    let listen = hub.url.trim_start_matches("http://").to_string();
    hub.stop();
    let hub = Hub::start_at(&scratch, &listen, &flags);
    // The test's own calls come from 127.0.0.2, a source of their own.
    let api = Api {
        http: reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .build()
            .expect("a client bound to 127.0.0.2"),
        ..Api::new(&hub, Some(token(&admin, ALL_SCOPES)))
    };
    let wf = workflow(&api, QUICK_YAML, &[]).await;

    // Three bad tokens from 127.0.0.1: for the rest of the window every
    // call from there is refused, unless its key has worked from there.
    let stranger = Api::new(&hub, Some("not-a-token".into()));
    for _ in 0..3 {
        let r = stranger.get("/v1/robots").await;
        assert_eq!(r.status, 401, "{}", r.body);
    }
    let agent = robot.spawn(&[]);
    let limited_at = Instant::now();

    // A raw robot call gets the API's JSON error with Retry-After.
    let raw = Api::new(&hub, Some(token(&robot_key, "robot")));
    let r = raw
        .post(
            "/v1/robot/robots/limited/poll",
            &json!({"instance_id": "x", "poll_id": "p", "free_slots": 1}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (429, "too_many_failed_authentications"),
        "{}",
        r.body
    );
    let retry_after: u64 = r
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");

    // The agent's registration at start is refused; it says so once and
    // waits what the hub asked rather than retrying at once.
    assert!(
        eventually(Duration::from_secs(10), || agent
            .log()
            .contains("rate limited")),
        "the agent never met the 429:\n{}",
        agent.log()
    );
    let id = queue(&api, wf, json!({})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refusals = agent
        .log()
        .matches("too_many_failed_authentications")
        .count();
    assert!(
        refusals <= 2,
        "the agent retried {refusals} times within seconds of a {retry_after} s Retry-After:\n{}",
        agent.log()
    );

    // Once the window is over it polls again and runs the session.
    let session = finished(&api, id, Duration::from_secs(retry_after + 30)).await;
    assert_eq!(session["status"], "success", "{session}");
    let waited = limited_at.elapsed();
    assert!(
        waited + Duration::from_secs(2) >= Duration::from_secs(retry_after),
        "the session ran after {waited:?}, before the {retry_after} s the hub asked for"
    );
    assert!(
        waited <= Duration::from_secs(retry_after + 15),
        "the agent took {waited:?} to recover from a {retry_after} s Retry-After:\n{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_whose_poll_connection_closes_shows_offline_within_seconds() {
    let scratch = Scratch::new();
    let admin = create_key(&scratch, ALL_SCOPES);
    let robot_key = create_key(&scratch, "robot");
    // A long hold: the robot's poll stays open until it goes away. The
    // test asks for the state five times a second.
    let hub = Hub::start_with(
        &scratch,
        &["--hold-seconds", "25", "--quota-per-robot", "100000"],
    );
    let api = Api::new(&hub, Some(token(&admin, ALL_SCOPES)));
    let robot = Robot::new(scratch.dir.path(), "leaving");
    robot.register_ok(&hub, &robot_key, &[]);
    let mut agent = robot.start(&[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(state_of(&api, "leaving").await, "idle");

    // SIGKILL: the poll's connection closes with no goodbye.
    agent.signal("KILL");
    let _ = agent.wait(Duration::from_secs(10));
    let gone = Instant::now();
    let mut state = String::new();
    while gone.elapsed() < Duration::from_secs(30) {
        state = state_of(&api, "leaving").await;
        if state == "offline" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(state, "offline", "still {state} 30 s after the agent died");
    assert!(
        gone.elapsed() <= Duration::from_secs(8),
        "offline only {:?} after the agent died (the bound is 5 s)",
        gone.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_that_stops_polling_shows_offline_within_seconds() {
    let scratch = Scratch::new();
    let admin = create_key(&scratch, ALL_SCOPES);
    let robot_key = create_key(&scratch, "robot");
    let hub = Hub::start_with(
        &scratch,
        &["--hold-seconds", "1", "--quota-per-robot", "100000"],
    );
    let api = Api::new(&hub, Some(token(&admin, ALL_SCOPES)));
    let raw = Api::new(&hub, Some(token(&robot_key, "robot")));
    let r = raw
        .send(
            raw.request(reqwest::Method::PUT, "/v1/robot/robots/quiet")
                .json(&json!({"instance_id": "m", "version": "test", "max_concurrency": 1})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    // One poll, answered empty after the 1 s hold; then no next poll.
    let r = raw
        .post(
            "/v1/robot/robots/quiet/poll",
            &json!({"instance_id": "m", "poll_id": "p1", "free_slots": 1}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answered = Instant::now();
    assert_eq!(state_of(&api, "quiet").await, "idle");
    let mut state = String::new();
    while answered.elapsed() < Duration::from_secs(30) {
        state = state_of(&api, "quiet").await;
        if state == "offline" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(state, "offline", "still {state} 30 s after its last poll");
    assert!(
        answered.elapsed() <= Duration::from_secs(8),
        "offline only {:?} after the last poll was answered (the bound is 5 s)",
        answered.elapsed()
    );
}
