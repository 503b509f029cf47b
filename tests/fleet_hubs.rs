//! A robot and several hubs of one PostgreSQL database: a real agent with
//! `control_plane.fallback_urls`, two real `tasuki-hub` processes, one
//! killed under a running session. Needs the server at
//! `TASUKI_TEST_POSTGRES` whatever `TASUKI_TEST_BACKEND` says: hubs share
//! a database only there.
#![cfg(unix)]

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::time::{Duration, Instant};

use fleet_support::*;
use hub_support::*;
use serde_json::{Value, json};

/// The tests read sessions often, far above AUTORO's 60 calls a minute.
const HUB_ARGS: &[&str] = &["--quota-per-robot", "1000000"];

/// What the agent logs each time it moves to the next hub URL.
const MOVED: &str = "moving to the next hub URL";

/// Two hubs on one fresh database, and a key with every scope.
struct TwoHubs {
    scratch: Scratch,
    a: Hub,
    b: Hub,
    key: Key,
}

impl TwoHubs {
    fn start() -> TwoHubs {
        let scratch = Scratch::postgres();
        let key = create_key(&scratch, ALL_SCOPES);
        let a = Hub::start_with(&scratch, HUB_ARGS);
        let b = Hub::start_with(&scratch, HUB_ARGS);
        TwoHubs { scratch, a, b, key }
    }

    fn api(&self, hub: &Hub) -> Api {
        Api::new(hub, Some(token(&self.key, ALL_SCOPES)))
    }

    /// A robot registered at hub A with hub B as its fallback, its agent
    /// running (and so registered, at A).
    fn robot_at_a_falling_back_to_b(&self, name: &str) -> (Robot, Agent) {
        let robot = Robot::new(self.scratch.dir.path(), name);
        robot.register_ok(&self.a, &self.key, &["--fallback-url", &self.b.url]);
        let config = std::fs::read_to_string(robot.config()).expect("the config");
        assert!(
            config.contains(&format!("fallback_urls = [\"{}\"]", self.b.url)),
            "register records the fallback URL:\n{config}"
        );
        let agent = robot.start(&[]);
        let registered = agent
            .log()
            .lines()
            .find(|l| l.contains("waiting for sessions"))
            .unwrap_or_default()
            .to_string();
        assert!(
            registered.contains(&format!("hub={}", self.a.url)),
            "the agent starts at control_plane.url: {registered}"
        );
        (robot, agent)
    }
}

/// SIGKILL: the hub gets no chance to close anything cleanly.
fn kill_hard(hub: &Hub) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pid = hub.pid().expect("the hub is running");
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL the hub");
}

fn messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap_or("").to_string())
        .collect()
}

fn numbered(range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|i| format!("line {i}")).collect()
}

/// The agent's log lines that say it moved to another hub.
fn moves(agent: &Agent) -> Vec<String> {
    agent
        .log()
        .lines()
        .filter(|l| l.contains(MOVED))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_killed_mid_session_hands_over_to_the_fallback_every_line_once_one_run() {
    const LINES: u32 = 40;
    let hubs = TwoHubs::start();
    let (_robot, agent) = hubs.robot_at_a_falling_back_to_b("twin-1");
    let api_a = hubs.api(&hubs.a);
    let api_b = hubs.api(&hubs.b);

    // A line a tenth of a second, for about four seconds; each also goes
    // to a file, where a second run would show as a second count.
    let yaml = format!(
        "version: 1\nname: counting\nparams:\n  dir: \"\"\nsteps:\n  - id: count\n    action: shell.run\n    with:\n      shell: sh\n      script: |\n        n=1\n        while [ $n -le {LINES} ]; do\n          echo \"line $n\"\n          echo \"line $n\" >> \"${{params.dir}}/runs.txt\"\n          sleep 0.1\n          n=$((n+1))\n        done\n"
    );
    let wf = workflow(&api_a, &yaml, &[]).await;
    let dir = hubs.scratch.dir.path().to_path_buf();
    let id = queue(&api_a, wf, json!({"dir": dir.display().to_string()})).await;

    // Some lines reached the database through hub A before it dies.
    let deadline = Instant::now() + Duration::from_secs(30);
    while all_logs(&api_b, id).await.len() < 5 {
        assert!(
            Instant::now() < deadline,
            "no log lines within 30 s:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill_hard(&hubs.a);
    let killed_at = Instant::now();

    let s = finished(&api_b, id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "success", "{s}\nagent log:\n{}", agent.log());
    assert_eq!(s["robot"]["name"], "twin-1", "{s}");
    assert!(
        killed_at.elapsed() < Duration::from_secs(30),
        "the session ended well inside its lease: {:?}",
        killed_at.elapsed()
    );
    let logs = all_logs(&api_b, id).await;
    assert_eq!(
        messages(&logs),
        numbered(1..=LINES),
        "each line once, in order"
    );
    let seqs: Vec<u64> = logs.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=u64::from(LINES)).collect::<Vec<_>>());
    let runs = std::fs::read_to_string(dir.join("runs.txt")).expect("the step's file");
    assert_eq!(
        runs.lines().map(String::from).collect::<Vec<_>>(),
        numbered(1..=LINES),
        "the session ran exactly once"
    );

    // One move, from A to B, logged: the calls after it go to B, and one
    // that fails late at A moves nothing (the unit tests in client.rs
    // cover several failing at once).
    let moved = moves(&agent);
    assert_eq!(moved.len(), 1, "{moved:#?}");
    assert!(
        moved[0].contains(&format!("from={}", hubs.a.url))
            && moved[0].contains(&format!("to={}", hubs.b.url)),
        "{}",
        moved[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_queued_at_one_hub_wakes_a_robot_polling_another() {
    let hubs = TwoHubs::start();
    let (_robot, agent) = hubs.robot_at_a_falling_back_to_b("twin-2");
    let api_b = hubs.api(&hubs.b);
    let wf = workflow(&api_b, "version: 1\nname: hello\nsteps:\n  - id: hi\n    action: shell.run\n    with: {argv: [echo, hi]}\n", &[]).await;
    // The agent's first poll is now held at hub A, for far longer than the
    // bound below: only hub B's notice can end it in time.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let queued = Instant::now();
    let id = queue(&api_b, wf, json!({})).await;
    let deadline = queued + Duration::from_secs(10);
    loop {
        let r = api_b.get(&format!("/v1/session_queues/{id}")).await;
        let status = r.body["status"].as_str().unwrap_or("").to_string();
        if status != "queued" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not picked up within 10 s of being queued at hub B: {}\nagent log:\n{}",
            r.body,
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let picked_up = queued.elapsed();
    let s = finished(&api_b, id, Duration::from_secs(30)).await;
    assert_eq!(s["status"], "success", "{s}");
    assert!(
        moves(&agent).is_empty(),
        "the agent stayed at hub A:\n{}",
        agent.log()
    );
    eprintln!("picked up {picked_up:?} after being queued at the other hub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_every_hub_url_and_the_token_at_a_hub_that_answers() {
    let hubs = TwoHubs::start();
    let robot = Robot::new(hubs.scratch.dir.path(), "twin-3");
    robot.register_ok(&hubs.a, &hubs.key, &["--fallback-url", &hubs.b.url]);
    kill_hard(&hubs.a);
    let out = std::process::Command::new(tasuki_bin())
        .arg("doctor")
        .arg("--config")
        .arg(robot.config())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tasuki doctor");
    let out = String::from_utf8_lossy(&out.stdout);
    // A dead hub is a warning while another answers: the robot still works.
    for want in [
        format!("warn  hub: cannot reach {}", hubs.a.url),
        format!("ok    hub: {} answered", hubs.b.url),
        "ok    token: accepted; robot `twin-3`".to_string(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in:\n{out}");
    }
    assert!(!out.contains("FAIL  hub"), "{out}");
}
