//! Fleet mode end to end: a real `tasuki-hub`, real `tasuki agent`
//! processes, real child processes, over loopback. Nothing is mocked.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleet_support::*;
use hub_support::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);

/// The tests watch sessions closely, far above AUTORO's 60 calls a
/// minute; the quota itself is tested with the default.
const HUB_ARGS: &[&str] = &["--quota-per-robot", "1000000"];

struct Fleet {
    scratch: Scratch,
    hub: Hub,
    key: Key,
    api: Api,
}

fn fleet() -> Fleet {
    fleet_with(HUB_ARGS)
}

fn fleet_with(hub_args: &[&str]) -> Fleet {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, hub_args);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    Fleet {
        scratch,
        hub,
        key,
        api,
    }
}

impl Fleet {
    fn robot(&self, name: &str) -> Robot {
        Robot::new(self.scratch.dir.path(), name)
    }

    /// A registered robot with its agent running.
    fn agent(&self, name: &str, register: &[&str], run: &[&str]) -> (Robot, Agent) {
        let robot = self.robot(name);
        robot.register_ok(&self.hub, &self.key, register);
        let agent = robot.start(run);
        (robot, agent)
    }
}

fn shell_yaml(name: &str, script: &str) -> String {
    format!(
        "version: 1\nname: {name}\nparams:\n  n: 0\n  dir: \"\"\nsteps:\n  - id: work\n    action: shell.run\n    with:\n      shell: sh\n      script: |\n{}\n",
        script
            .lines()
            .map(|l| format!("        {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refuses_a_second_machine_and_survives_restarts() {
    let f = fleet();
    let first = f.robot("standard-1");
    first.register_ok(&f.hub, &f.key, &["--labels", "linux,web"]);

    // The credentials file is private and the config holds no secret.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(first.credentials())
            .expect("credentials written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let config = std::fs::read_to_string(first.config()).expect("config written");
    assert!(!config.contains(&f.key.secret), "{config}");

    // Another machine taking the same name gets a clear error.
    let second = Robot::new(&f.scratch.dir.path().join("other"), "standard-1");
    let out = second.register(&f.hub, &f.key, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("robot_name_taken") && err.contains("--replace"),
        "{err}"
    );

    // The agent registers again when it starts, and again after a restart
    // of its own and of the hub.
    let mut agent = first.start(&[]);
    agent.signal("TERM");
    assert!(agent.wait(LIMIT).expect("agent exits").success());
    let scratch = f.scratch;
    let url = f.hub.url.clone();
    f.hub.stop();
    let hub = Hub::start_at(&scratch, url.trim_start_matches("http://"), HUB_ARGS);
    let _agent = first.start(&[]);
    let api = Api::new(&hub, Some(token(&f.key, ALL_SCOPES)));
    // The heartbeat (the first poll) carries the host metrics.
    let mut robots = api.get("/v1/robots").await;
    let deadline = Instant::now() + LIMIT;
    while robots.body["robots"][0]["metrics"].is_null() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        robots = api.get("/v1/robots").await;
    }
    assert_eq!(robots.body["total_count"], 1, "{}", robots.body);
    let r = &robots.body["robots"][0];
    assert_eq!(r["name"], "standard-1");
    assert_eq!(r["labels"], json!(["linux", "web"]));
    assert_eq!(r["state"], "idle");
    assert!(
        r["metrics"]["agent_rss_bytes"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );
    assert!(
        r["metrics"]["memory_total_bytes"].as_u64().unwrap_or(0) > 0,
        "{r}"
    );

    // --replace takes the name over, deliberately.
    let out = second.register(&hub, &f.key, &["--replace"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A page for the browser step, on loopback.
async fn page_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            axum::response::Html("<html><body><h1 id=title>Fleet page</h1></body></html>")
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_to_success_with_its_logs_steps_and_artifacts() {
    let f = fleet();
    let (_robot, _agent) = f.agent("runner", &[], &[]);
    let page = page_server().await;
    let yaml = r##"version: 1
name: full
params:
  page: ""
steps:
  - id: lines
    action: shell.run
    with:
      shell: sh
      script: |
        i=1; while [ $i -le 300 ]; do echo "line $i"; i=$((i+1)); done
  - id: open
    action: browser.open
    with: {url: "${params.page}"}
  - id: title
    action: browser.get_text
    with: {selector: "#title"}
  - id: shot
    action: browser.screenshot
    with: {path: page.png}
  - id: done
    action: log
    with: {message: "title was ${steps.title.output.text}"}
"##;
    let wf = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, wf, json!({"page": page})).await;
    let s = finished(&f.api, id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "success", "{s}");
    assert_eq!(s["robot"]["name"], "runner");
    assert!(s["started_at"].is_string() && s["ended_at"].is_string());
    let steps = s["steps"].as_array().expect("steps");
    let ids: Vec<&str> = steps
        .iter()
        .map(|s| s["id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids, ["lines", "open", "title", "shot", "done"]);
    for step in steps {
        assert_eq!(step["status"], "success", "{step}");
        assert!(step["duration_ms"].is_u64(), "{step}");
    }

    // Every line, in order, numbered from 1 without gaps.
    let logs = all_logs(&f.api, id).await;
    let seqs: Vec<i64> = logs
        .iter()
        .map(|l| l["seq"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let shell: Vec<&str> = logs
        .iter()
        .filter(|l| l["step_id"] == "lines")
        .map(|l| l["message"].as_str().unwrap_or(""))
        .collect();
    let expected: Vec<String> = (1..=300).map(|i| format!("line {i}")).collect();
    assert_eq!(shell, expected);
    assert!(
        logs.iter().any(|l| l["message"] == "title was Fleet page"),
        "{logs:?}"
    );

    // The screenshot is served by the public API.
    let list = f
        .api
        .get(&format!("/v1/session_queues/{id}/artifacts"))
        .await;
    let names: Vec<&str> = list.body["artifacts"]
        .as_array()
        .expect("artifacts")
        .iter()
        .map(|a| a["name"].as_str().unwrap_or(""))
        .collect();
    assert!(names.contains(&"page.png"), "{}", list.body);
    let png = f
        .api
        .request(
            reqwest::Method::GET,
            &format!("/v1/session_queues/{id}/artifacts/page.png"),
        )
        .send()
        .await
        .expect("artifact");
    assert_eq!(png.headers()["content-type"], "image/png");
    let bytes = png.bytes().await.expect("bytes");
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_workflow_ends_in_error_naming_the_step() {
    let f = fleet();
    let (_robot, _agent) = f.agent("failer", &[], &[]);
    let yaml = "version: 1\nname: fails\nsteps:\n  - id: ok\n    action: log\n    with: {message: fine}\n  - id: boom\n    action: shell.run\n    with: {argv: [sh, -c, \"echo about to fail; exit 3\"]}\n  - id: never\n    action: log\n    with: {message: unreachable}\n";
    let wf = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, wf, json!({})).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    assert_eq!(s["error"]["step_id"], "boom", "{s}");
    assert!(s["error"]["code"].is_string() && s["error"]["message"].is_string());
    let by_id: HashMap<&str, &Value> = s["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|st| (st["id"].as_str().unwrap_or(""), st))
        .collect();
    assert_eq!(by_id["ok"]["status"], "success");
    assert_eq!(by_id["boom"]["status"], "error");
    assert_eq!(by_id["never"]["status"], "skipped");
    let logs = all_logs(&f.api, id).await;
    assert!(
        logs.iter().any(|l| l["message"] == "about to fail"),
        "{logs:?}"
    );
}

/// A robot whose `allowed_actions` leave out a family refuses a session
/// that uses it at validation: no step runs, and the error says why.
/// A robot offers the hub only what its allow-list lets it run
/// (agent/src/daemon/catalog.rs), so a session that uses anything else is
/// never sent to it: it stays queued, saying why, while the robot takes
/// what it may run. (Were one sent all the same, the robot would refuse it
/// before any step ran: `session.rs` checks the workflow against the
/// allow-list, as `tasuki run` does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_is_never_sent_a_session_its_allow_list_refuses() {
    let f = fleet();
    let (_robot, _agent) = f.agent(
        "careful",
        &[],
        &["--set", "behaviour.allowed_actions=browser.*,http.*"],
    );
    let dir = f.scratch.dir.path().join("careful-marker");
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = "version: 1\nname: refused\nparams:\n  dir: \"\"\nsteps:\n  - id: first\n    action: http.request\n    with:\n      url: \"http://127.0.0.1:9/\"\n  - id: shell\n    action: shell.run\n    with:\n      argv: [\"touch\", \"${params.dir}/ran\"]\n";
    let wf = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, wf, json!({ "dir": dir.display().to_string() })).await;
    // The robot is waiting for work: a later session it may run goes
    // ahead (its request fails: nothing listens on port 9).
    let allowed = "version: 1\nname: allowed\nsteps:\n  - id: first\n    action: http.request\n    with:\n      url: \"http://127.0.0.1:9/\"\n";
    let later = queue(&f.api, workflow(&f.api, allowed, &[]).await, json!({})).await;
    let later = finished(&f.api, later, LIMIT).await;
    assert_eq!(later["robot"]["name"], "careful", "{later}");
    assert_eq!(later["status"], "error", "{later}");

    let s = f.api.get(&format!("/v1/session_queues/{id}")).await.body;
    assert_eq!(s["status"], "queued", "{s}");
    assert_eq!(
        s["queued_reason"], "no robot can run it: careful lacks shell.run",
        "{s}"
    );
    assert!(!dir.join("ran").exists(), "a step ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_session_means_it_never_runs() {
    let f = fleet();
    let marker = f.scratch.dir.path().join("ran");
    let yaml = shell_yaml("marker", "touch \"${params.dir}/ran\"");
    let wf = workflow(&f.api, &yaml, &[]).await;
    let dir = f.scratch.dir.path().display().to_string();
    let id = queue(&f.api, wf, json!({"dir": dir})).await;
    let r = f
        .api
        .delete(&format!("/v1/session_queues/{id}/cancel"))
        .await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    // A robot connecting afterwards does not get it; a later session runs.
    let (_robot, _agent) = f.agent("late", &[], &[]);
    let later = queue(&f.api, wf, json!({"dir": dir})).await;
    assert_eq!(finished(&f.api, later, LIMIT).await["status"], "success");
    let s = f.api.get(&format!("/v1/session_queues/{id}")).await.body;
    assert_eq!(s["status"], "cancelled");
    assert!(s["started_at"].is_null(), "{s}");
    assert!(s["robot"].is_null(), "{s}");
    assert!(marker.exists(), "the later session ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_shell_step_ends_its_grandchild_within_seconds() {
    let f = fleet();
    let (_robot, _agent) = f.agent("canceller", &[], &[]);
    let yaml = shell_yaml(
        "sleeper",
        "sleep 300 &\necho $! > \"${params.dir}/grandchild.pid\"\necho started\nwait",
    );
    let wf = workflow(&f.api, &yaml, &[]).await;
    let dir = f.scratch.dir.path().display().to_string();
    let id = queue(&f.api, wf, json!({"dir": dir})).await;
    running(&f.api, id, LIMIT).await;
    let pid_file = f.scratch.dir.path().join("grandchild.pid");
    assert!(eventually(LIMIT, || std::fs::read_to_string(&pid_file)
        .is_ok_and(|t| t.ends_with('\n'))));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(alive(pid));

    let asked = Instant::now();
    let r = f
        .api
        .delete(&format!("/v1/session_queues/{id}/cancel"))
        .await;
    assert!(r.body["cancel_requested_at"].is_string(), "{}", r.body);
    let s = finished(&f.api, id, Duration::from_secs(10)).await;
    assert_eq!(s["status"], "cancelled", "{s}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        asked.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "the grandchild {pid} outlived the cancel"
    );
    // Cancelling again is harmless.
    let again = f
        .api
        .delete(&format!("/v1/session_queues/{id}/cancel"))
        .await;
    assert_eq!(again.body["status"], "cancelled");
}

/// A session cancelled through the hub runs its `finally` steps on the
/// robot before it ends: the cleanup's effect is there, and the hub's
/// report shows the cleanup step succeeded while the session is
/// `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_session_runs_its_finally_steps_on_the_robot() {
    let f = fleet();
    let (_robot, _agent) = f.agent("tidy-bot", &[], &[]);
    let yaml = "version: 1
name: tidy
params:
  dir: \"\"
steps:
  - id: long
    action: shell.run
    with: {argv: [sh, -c, 'echo $$ > \"$1/long.pid\"; exec sleep 300', sh, \"${params.dir}\"]}
finally:
  - id: logout
    action: shell.run
    with: {argv: [sh, -c, 'echo logged-out > \"$1/logout.txt\"', sh, \"${params.dir}\"]}
";
    let wf = workflow(&f.api, yaml, &[]).await;
    let dir = f.scratch.dir.path().display().to_string();
    let id = queue(&f.api, wf, json!({"dir": dir})).await;
    running(&f.api, id, LIMIT).await;
    let pid_file = f.scratch.dir.path().join("long.pid");
    assert!(eventually(LIMIT, || std::fs::read_to_string(&pid_file)
        .is_ok_and(|t| t.ends_with('\n'))));
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");

    let r = f
        .api
        .delete(&format!("/v1/session_queues/{id}/cancel"))
        .await;
    assert!(r.body["cancel_requested_at"].is_string(), "{}", r.body);
    let s = finished(&f.api, id, Duration::from_secs(30)).await;
    assert_eq!(s["status"], "cancelled", "{s}");
    let logout = std::fs::read_to_string(f.scratch.dir.path().join("logout.txt"));
    assert_eq!(
        logout.ok().as_deref(),
        Some("logged-out\n"),
        "the cleanup ran"
    );
    let by_id: HashMap<&str, &Value> = s["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|st| (st["id"].as_str().unwrap_or(""), st))
        .collect();
    assert_eq!(by_id["long"]["status"], "cancelled", "{s}");
    assert_eq!(by_id["logout"]["status"], "success", "{s}");
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "the cancelled step's process {pid} survived"
    );
}

/// A `parallel` step on a robot: its branches overlap by the times the
/// hub stores for their steps, and a later step reads both outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallel_step_runs_its_branches_at_once_on_the_robot() {
    let f = fleet();
    let (_robot, _agent) = f.agent("fan-bot", &[], &[]);
    let yaml = "version: 1
name: fan
steps:
  - id: both
    action: parallel
    branches:
      left:
        - id: nap_left
          action: shell.run
          with: {argv: [sh, -c, 'sleep 1; echo L']}
      right:
        - id: nap_right
          action: shell.run
          with: {argv: [sh, -c, 'sleep 1; echo R']}
  - id: joined
    action: log
    with: {message: '${steps.nap_left.output.stdout}${steps.nap_right.output.stdout}'}
outputs:
  joined: '${steps.joined.output.message}'
";
    let wf = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, wf, json!({})).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    assert_eq!(s["outputs"]["joined"], "LR", "{s}");
    let by_id: HashMap<&str, &Value> = s["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|st| (st["id"].as_str().unwrap_or(""), st))
        .collect();
    let span = |id: &str| {
        let at = |field: &str| {
            by_id[id][field]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .unwrap_or_else(|| panic!("{id}.{field}: {s}"))
        };
        (at("started_at"), at("ended_at"))
    };
    let (left, right) = (span("nap_left"), span("nap_right"));
    assert!(
        left.0 < right.1 && right.0 < left.1,
        "the branches did not overlap: {left:?} {right:?}"
    );
}

/// A session that logs past its workflow's `limits.log_bytes` runs to its
/// end and reports: its log is cut, ending with the hub's line that says
/// at which line and by which limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_past_its_workflow_s_limit_is_cut_and_the_session_finishes() {
    let f = fleet();
    let (_robot, _agent) = f.agent("chatty-bot", &[], &[]);
    let yaml = "version: 1
name: chatty
limits: {log_bytes: 300}
steps:
  - id: talk
    action: shell.run
    with: {argv: [sh, -c, 'for i in $(seq 1 200); do echo line-$i-xxxxxxxxxx; done']}
  - id: after
    action: log
    with: {message: still-running}
";
    let wf = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, wf, json!({})).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    let logs = all_logs(&f.api, id).await;
    let last = logs.last().expect("a log");
    let message = last["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("[tasuki-hub] the log stops here, at line ")
            && message.contains("its workflow's limits.log_bytes (300 bytes of messages)"),
        "{message}"
    );
    let seqs: Vec<i64> = logs
        .iter()
        .map(|l| l["seq"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let stored: usize = logs[..logs.len() - 1]
        .iter()
        .map(|l| l["message"].as_str().unwrap_or("").len())
        .sum();
    assert!(stored <= 300, "{stored} bytes stored before the cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_run_fifty_sessions_each_exactly_once() {
    let f = fleet();
    let (_r1, _a1) = f.agent("pair-1", &["--max-concurrency", "2"], &[]);
    let (_r2, _a2) = f.agent("pair-2", &["--max-concurrency", "2"], &[]);
    let yaml = shell_yaml("once", "echo \"${params.n}\" >> \"${params.dir}/runs.txt\"");
    let wf = workflow(&f.api, &yaml, &[]).await;
    let dir = f.scratch.dir.path().display().to_string();
    let mut ids = Vec::new();
    for n in 1..=50 {
        ids.push(queue(&f.api, wf, json!({"n": n, "dir": dir})).await);
    }
    let mut by_robot: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let s = finished(&f.api, *id, Duration::from_secs(60)).await;
        assert_eq!(s["status"], "success", "{s}");
        *by_robot
            .entry(s["robot"]["name"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    let runs = std::fs::read_to_string(f.scratch.dir.path().join("runs.txt")).expect("runs");
    let mut seen: Vec<i64> = runs.lines().map(|l| l.trim().parse().expect("n")).collect();
    seen.sort();
    assert_eq!(
        seen,
        (1..=50).collect::<Vec<_>>(),
        "each session exactly once"
    );
    assert_eq!(by_robot.values().sum::<usize>(), 50);
    assert!(
        by_robot.keys().all(|k| k == "pair-1" || k == "pair-2"),
        "{by_robot:?}"
    );
}

/// Start and end times (ns) a session's step wrote.
fn interval(dir: &std::path::Path, n: i64) -> (u128, u128) {
    let text = std::fs::read_to_string(dir.join(format!("span-{n}.txt"))).expect("span file");
    let mut parts = text
        .split_whitespace()
        .map(|p| p.parse::<u128>().expect("ns"));
    (parts.next().expect("start"), parts.next().expect("end"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_process_session_runs_alone_on_its_robot() {
    let f = fleet();
    let (_robot, _agent) = f.agent("solo", &["--max-concurrency", "3"], &[]);
    let span = "s=$(date +%s%N)\nsleep 0.6\necho \"$s $(date +%s%N)\" > \"${params.dir}/span-${params.n}.txt\"";
    let normal = workflow(&f.api, &shell_yaml("normal", span), &[]).await;
    let solo_yaml =
        shell_yaml("solo", span).replace("name: solo\n", "name: solo\nsingle_process_mode: true\n");
    let solo = workflow(&f.api, &solo_yaml, &[]).await;
    let dir = f.scratch.dir.path().to_path_buf();
    let d = dir.display().to_string();
    let mut ids = vec![
        queue(&f.api, normal, json!({"n": 1, "dir": d})).await,
        queue(&f.api, normal, json!({"n": 2, "dir": d})).await,
        queue(&f.api, solo, json!({"n": 3, "dir": d})).await,
        queue(&f.api, normal, json!({"n": 4, "dir": d})).await,
        queue(&f.api, normal, json!({"n": 5, "dir": d})).await,
    ];
    ids.push(queue(&f.api, solo, json!({"n": 6, "dir": d})).await);
    for id in &ids {
        assert_eq!(finished(&f.api, *id, LIMIT).await["status"], "success");
    }
    let spans: Vec<(u128, u128)> = (1..=6).map(|n| interval(&dir, n)).collect();
    for solo_n in [3usize, 6] {
        let (s0, e0) = spans[solo_n - 1];
        for (i, &(s, e)) in spans.iter().enumerate() {
            if i + 1 != solo_n {
                assert!(
                    e <= s0 || s >= e0,
                    "session {} overlapped single-process session {solo_n}",
                    i + 1
                );
            }
        }
    }
    // And the normal ones did run side by side: the robot was not simply
    // running one at a time.
    let overlap = |a: (u128, u128), b: (u128, u128)| a.0 < b.1 && b.0 < a.1;
    assert!(
        overlap(spans[0], spans[1]) || overlap(spans[3], spans[4]),
        "{spans:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflow_robots_pins_sessions_to_named_robots() {
    let f = fleet();
    let (_r1, _a1) = f.agent("any-1", &["--max-concurrency", "2"], &[]);
    let (_r2, _a2) = f.agent("pinned-2", &[], &[]);
    let wf = workflow(&f.api, &shell_yaml("pinned", "echo pinned"), &["pinned-2"]).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(queue(&f.api, wf, json!({"n": n})).await);
    }
    for id in ids {
        let s = finished(&f.api, id, LIMIT).await;
        assert_eq!(s["status"], "success");
        assert_eq!(s["robot"]["name"], "pinned-2", "{s}");
    }
    let listed = f.api.get("/v1/workflows").await;
    assert_eq!(
        listed.body["workflows"][0]["workflow_robots"],
        json!(["pinned-2"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_runs_one_session_and_exits() {
    let f = fleet();
    let wf = workflow(&f.api, &shell_yaml("one", "echo one"), &[]).await;
    let first = queue(&f.api, wf, json!({})).await;
    let second = queue(&f.api, wf, json!({})).await;
    let robot = f.robot("oneshot");
    robot.register_ok(&f.hub, &f.key, &["--max-concurrency", "2"]);
    let mut agent = robot.start(&["--once"]);
    let status = agent.wait(LIMIT).expect("--once exits");
    assert!(status.success(), "{}", agent.log());
    assert_eq!(finished(&f.api, first, LIMIT).await["status"], "success");
    let s = f
        .api
        .get(&format!("/v1/session_queues/{second}"))
        .await
        .body;
    assert_eq!(s["status"], "queued", "{s}");
    assert!(
        s["robot"].is_null(),
        "the second session was handed back: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_running_session_and_takes_no_new_one() {
    let f = fleet();
    let (_robot, mut agent) = f.agent("drainer", &["--max-concurrency", "2"], &[]);
    let wf = workflow(
        &f.api,
        &shell_yaml("slow", "echo started\nsleep 1.5\necho finished"),
        &[],
    )
    .await;
    let running_id = queue(&f.api, wf, json!({})).await;
    // Running on the robot, not only leased: a lease still on its way when
    // the drain begins is handed back instead (the hub's `running` comes
    // from the grant).
    let deadline = std::time::Instant::now() + LIMIT;
    while all_logs(&f.api, running_id).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "{}", agent.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.signal("TERM");
    // Queued after the drain began: it must wait for another robot.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let later = queue(&f.api, wf, json!({})).await;
    let status = agent.wait(LIMIT).expect("the agent exits after draining");
    assert!(status.success(), "{}", agent.log());
    let s = finished(&f.api, running_id, LIMIT).await;
    assert_eq!(s["status"], "success", "the running session finished: {s}");
    let logs = all_logs(&f.api, running_id).await;
    assert!(logs.iter().any(|l| l["message"] == "finished"));
    let s = f.api.get(&format!("/v1/session_queues/{later}")).await.body;
    assert_eq!(s["status"], "queued", "{s}");
}

/// A lease the hub grants just as the agent begins to drain (its poll in
/// flight, abandoned for the drain) is handed back before the agent exits,
/// never left `running` on the hub until its lease expires. Each round
/// signals the agent the moment the hub shows the session granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_granted_as_the_drain_begins_is_run_or_handed_back() {
    let f = fleet();
    for round in 0..10 {
        let name = format!("edge-{round}");
        let (_robot, mut agent) = f.agent(&name, &[], &[]);
        assert!(
            eventually(LIMIT, || agent.log().contains("registered")),
            "{}",
            agent.log()
        );
        let wf = workflow(
            &f.api,
            &shell_yaml(&name, "echo started\nsleep 0.2"),
            &[name.as_str()],
        )
        .await;
        let id = queue(&f.api, wf, json!({})).await;
        running(&f.api, id, LIMIT).await;
        agent.signal("TERM");
        let status = agent.wait(LIMIT).expect("the agent exits after draining");
        assert!(status.success(), "{}", agent.log());
        let s = f.api.get(&format!("/v1/session_queues/{id}")).await.body;
        assert!(
            s["status"] == "success" || s["status"] == "queued",
            "round {round}: run to its end or handed back, not left to expire: {s}\n{}",
            agent.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_restart_mid_session_loses_and_duplicates_no_log_line() {
    let f = fleet();
    let (_robot, _agent) = f.agent("steady", &[], &[]);
    let yaml = shell_yaml(
        "steady",
        "i=1; while [ $i -le 400 ]; do echo \"tick $i\"; sleep 0.005; i=$((i+1)); done",
    );
    let wf = workflow(&f.api, &yaml, &[]).await;
    let id = queue(&f.api, wf, json!({})).await;
    running(&f.api, id, LIMIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let Fleet {
        scratch, hub, key, ..
    } = f;
    let listen = hub.url.trim_start_matches("http://").to_string();
    hub.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let hub = Hub::start_at(&scratch, &listen, HUB_ARGS);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let s = finished(&api, id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "success", "{s}");
    let logs = all_logs(&api, id).await;
    let ticks: Vec<&str> = logs
        .iter()
        .map(|l| l["message"].as_str().unwrap_or(""))
        .collect();
    let expected: Vec<String> = (1..=400).map(|i| format!("tick {i}")).collect();
    assert_eq!(ticks, expected);
    let seqs: Vec<i64> = logs
        .iter()
        .map(|l| l["seq"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
}

/// While the hub keeps up, a step that prints fast is slowed down so that
/// lines reach the hub soon after they are printed; while it is down, the
/// step must not wait for it: its lines go to the spool on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_keeps_printing_while_the_hub_is_down_and_every_line_arrives_later() {
    const LINES: usize = 30_000;
    let f = fleet();
    let (_robot, _agent) = f.agent("outage", &[], &[]);
    let dir = f.scratch.dir.path().join("outage-flags");
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = shell_yaml(
        "outage",
        &format!(
            "while [ ! -e \"${{params.dir}}/go\" ]; do sleep 0.02; done\nseq 1 {LINES}\ntouch \"${{params.dir}}/printed\""
        ),
    );
    let wf = workflow(&f.api, &yaml, &[]).await;
    let id = queue(&f.api, wf, json!({ "dir": dir.display().to_string() })).await;
    running(&f.api, id, LIMIT).await;
    let Fleet {
        scratch, hub, key, ..
    } = f;
    let listen = hub.url.trim_start_matches("http://").to_string();
    hub.stop();
    std::fs::write(dir.join("go"), b"").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !dir.join("printed").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the step did not get its {LINES} lines out within 30 s while the hub was down"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hub = Hub::start_at(&scratch, &listen, HUB_ARGS);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let s = finished(&api, id, Duration::from_secs(60)).await;
    assert_eq!(s["status"], "success", "{s}");
    let logs = all_logs(&api, id).await;
    let printed: Vec<&str> = logs
        .iter()
        .map(|l| l["message"].as_str().unwrap_or(""))
        .collect();
    let expected: Vec<String> = (1..=LINES).map(|i| i.to_string()).collect();
    assert_eq!(printed, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robot_calls_do_not_count_toward_the_quota() {
    let f = fleet_with(&[]);
    let (_robot, _agent) = f.agent("quiet", &[], &[]);
    // One robot: 60 public calls a minute. Robot-protocol calls (the
    // agent's polls, and these registrations) are not counted.
    let robot_api = Api::new(&f.hub, Some(token(&f.key, "robot")));
    for _ in 0..80 {
        let r = robot_api
            .send(
                robot_api
                    .request(reqwest::Method::PUT, "/v1/robot/robots/quota-probe")
                    .json(&json!({"instance_id": "probe", "version": "t", "max_concurrency": 1})),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    }
    // Now two robots: 120 public calls pass, the next is refused.
    let mut refused = None;
    for i in 0..130 {
        let r = f.api.get("/v1/workflows").await;
        if r.status.as_u16() == 429 {
            refused = Some((i, r));
            break;
        }
    }
    let (i, r) = refused.expect("the quota refuses at some point");
    assert_eq!(i, 120, "two robots registered: 120 calls a minute");
    let after: u64 = r.headers["retry-after"]
        .to_str()
        .expect("header")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&after));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_robot_calls_are_refused_with_the_field_named() {
    let f = fleet();
    let robot_api = Api::new(&f.hub, Some(token(&f.key, "robot")));
    let put = |path: &str, body: Value| {
        robot_api.send(robot_api.request(reqwest::Method::PUT, path).json(&body))
    };
    // Registration: unknown field, bad name, bad concurrency, bad label.
    let r = put(
        "/v1/robot/robots/r1",
        json!({"instance_id": "i", "version": "1", "max_concurrency": 1, "colour": "red"}),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "unknown_field"),
        "{}",
        r.body
    );
    let r = put(
        "/v1/robot/robots/bad%20name",
        json!({"instance_id": "i", "version": "1", "max_concurrency": 1}),
    )
    .await;
    assert_eq!((r.status.as_u16(), r.code()), (400, "invalid_robot_name"));
    let r = put(
        "/v1/robot/robots/r1",
        json!({"instance_id": "i", "version": "1", "max_concurrency": 0}),
    )
    .await;
    assert_eq!(r.status.as_u16(), 422);
    assert_eq!(r.body["error"]["problems"][0]["path"], "max_concurrency");
    let r = put(
        "/v1/robot/robots/r1",
        json!({"instance_id": "i", "version": "1", "max_concurrency": 1, "labels": ["ok", "not ok"]}),
    )
    .await;
    assert_eq!(
        r.body["error"]["problems"][0]["path"], "labels[1]",
        "{}",
        r.body
    );
    // The registration check: without an instance id, and for a robot the
    // hub does not know.
    let r = robot_api.get("/v1/robot/robots/r1").await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert_eq!(
        r.body["error"]["problems"][0]["path"], "instance_id",
        "{}",
        r.body
    );
    let r = robot_api
        .get("/v1/robot/robots/nobody?instance_id=abc")
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (404, "robot_not_registered"),
        "{}",
        r.body
    );

    // A public-API key without the robot scope cannot act as a robot.
    let public = Api::new(&f.hub, Some(token(&f.key, "session_queue.read")));
    let r = public
        .send(
            public
                .request(reqwest::Method::PUT, "/v1/robot/robots/r1")
                .json(&json!({"instance_id": "i", "version": "1", "max_concurrency": 1})),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (403, "insufficient_scope"));

    // Poll: wrong type, unknown robot, and the wrong instance.
    let r = robot_api
        .post(
            "/v1/robot/robots/r1/poll",
            &json!({"instance_id": "i", "poll_id": "p", "free_slots": "one"}),
        )
        .await;
    assert_eq!(
        r.body["error"]["problems"][0]["path"], "free_slots",
        "{}",
        r.body
    );
    let r = robot_api
        .post(
            "/v1/robot/robots/nobody/poll",
            &json!({"instance_id": "i", "poll_id": "p", "free_slots": 0}),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (404, "robot_not_registered"));
    let ok = put(
        "/v1/robot/robots/r1",
        json!({"instance_id": "i", "version": "1", "max_concurrency": 1}),
    )
    .await;
    assert_eq!(ok.status.as_u16(), 200, "{}", ok.body);
    let r = robot_api
        .post(
            "/v1/robot/robots/r1/poll",
            &json!({"instance_id": "someone-else", "poll_id": "p", "free_slots": 0}),
        )
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (409, "robot_name_taken"));

    // Session calls: no lease header, a lease that is not the session's,
    // a log line numbered 0, a non-final finish, a bad artifact name.
    let wf = workflow(&f.api, &shell_yaml("x", "true"), &[]).await;
    let id = queue(&f.api, wf, json!({})).await;
    let r = robot_api
        .post(&format!("/v1/robot/sessions/{id}/release"), &json!({}))
        .await;
    assert_eq!((r.status.as_u16(), r.code()), (400, "missing_lease"));
    let with_lease = |path: String, body: Value| {
        robot_api.send(
            robot_api
                .request(reqwest::Method::POST, &path)
                .header("tasuki-lease", "00ff")
                .json(&body),
        )
    };
    let r = with_lease(format!("/v1/robot/sessions/{id}/release"), json!({})).await;
    assert_eq!((r.status.as_u16(), r.code()), (409, "lease_lost"));
    let r = with_lease(
        format!("/v1/robot/sessions/{id}/logs"),
        json!({"lines": [{"seq": 0, "ts": "2026-01-01T00:00:00Z", "level": "info", "step_id": null, "message": "x"}]}),
    )
    .await;
    assert_eq!(
        r.body["error"]["problems"][0]["path"], "lines[0].seq",
        "{}",
        r.body
    );
    let r = with_lease(
        format!("/v1/robot/sessions/{id}/logs"),
        json!({"lines": [{"seq": 1, "ts": "yesterday", "level": "info", "step_id": null, "message": "x"}]}),
    )
    .await;
    assert_eq!(
        r.body["error"]["problems"][0]["path"], "lines[0].ts",
        "{}",
        r.body
    );
    let r = with_lease(
        format!("/v1/robot/sessions/{id}/finish"),
        json!({"idempotency_key": "k", "status": "running", "ended_at": "2026-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(
        r.body["error"]["problems"][0]["path"], "status",
        "{}",
        r.body
    );
    let r = robot_api
        .send(
            robot_api
                .request(
                    reqwest::Method::PUT,
                    &format!("/v1/robot/sessions/{id}/artifacts/..hidden"),
                )
                .header("tasuki-lease", "00ff")
                .body("x"),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "invalid_artifact_name")
    );
    let r = with_lease("/v1/robot/sessions/999999/release".to_string(), json!({})).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (404, "session_queue_not_found")
    );

    // Nothing malformed reached a robot, and the session still waits.
    let s = f.api.get(&format!("/v1/session_queues/{id}")).await.body;
    assert_eq!(s["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_wrong_secret_is_told_why() {
    let f = fleet();
    let robot = f.robot("wrong");
    let bad = Key {
        id: f.key.id.clone(),
        secret: "0".repeat(64),
    };
    let out = robot.register(&f.hub, &bad, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid_signature"), "{err}");
    assert!(!err.contains(&f.key.secret));
    assert!(!robot.config().exists(), "nothing is written on failure");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_reads_the_secret_from_stdin_and_never_from_argv_afterwards() {
    use std::io::Write;
    let f = fleet();
    let robot = f.robot("stdin-robot");
    let mut child = std::process::Command::new(tasuki_bin())
        .args(["register", "--url", &f.hub.url, "--name", "stdin-robot"])
        .args([
            "--access-key-id",
            &f.key.id,
            "--secret-access-key-file",
            "-",
        ])
        .arg("--config")
        .arg(robot.config())
        .arg("--work-dir")
        .arg(robot.dir.join("work"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tasuki register");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{}\n", f.key.secret).as_bytes())
        .expect("write the secret");
    let out = child.wait_with_output().expect("register exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = robot.start(&[]);
    // The running daemon's command line holds no secret.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", agent.pid())).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(!cmdline.contains(&f.key.secret), "{cmdline}");
    let environ = std::fs::read(format!("/proc/{}/environ", agent.pid())).expect("environ");
    assert!(!String::from_utf8_lossy(&environ).contains(&f.key.secret));
    assert!(!agent.log().contains(&f.key.secret));
}

#[test]
fn a_bad_config_or_open_credentials_file_is_refused_with_the_place_named() {
    let scratch = Scratch::new();
    let robot = Robot::new(scratch.dir.path(), "bad-config");
    let run = |config: &std::path::Path| {
        std::process::Command::new(tasuki_bin())
            .arg("agent")
            .arg("--config")
            .arg(config)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run tasuki agent")
    };
    let creds = robot.credentials();
    let write = |name: &str, text: &str| {
        let p = robot.dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let good_head = format!(
        "[control_plane]\nurl = \"http://127.0.0.1:9\"\nname = \"r\"\n\n[credentials]\nfile = \"{}\"\n",
        creds.display()
    );
    // An unknown key, a wrong type, a bad value: each names its place.
    let cases = [
        (
            "unknown.toml",
            format!("{good_head}\n[paths]\nwork_dirr = \"/tmp\"\n"),
            "paths.work_dirr",
            ":9:",
        ),
        (
            "type.toml",
            good_head.replace("name = \"r\"", "name = \"r\"\nmax_concurrency = \"two\""),
            "control_plane.max_concurrency",
            ":4:",
        ),
        (
            "value.toml",
            good_head.replace("http://127.0.0.1:9", "ftp://x"),
            "control_plane.url",
            "",
        ),
        (
            "name.toml",
            good_head.replace("name = \"r\"", "name = \"a b\""),
            "control_plane.name",
            "",
        ),
    ];
    for (file, text, needle, line) in cases {
        let out = run(&write(file, &text));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{file}: {err}");
        assert!(
            err.contains(file) && err.contains(needle) && err.contains(line),
            "{file}: {err}"
        );
    }
    // A credentials file others can read is refused, with the fix.
    let config = write("ok.toml", &good_head);
    std::fs::write(
        &creds,
        "access_key_id = \"k\"\nsecret_access_key = \"s\"\ninstance_id = \"i\"\n",
    )
    .expect("write credentials");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = run(&config);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("secret_access_key = \"s\""), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_session_delivers_its_spool_when_it_starts_again() {
    let f = fleet();
    let robot = f.robot("phoenix");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = robot.start(&[]);
    let yaml = shell_yaml(
        "cut-off",
        "echo $$ > \"${params.dir}/shell.pid\"\nsleep 1.5\necho while the hub was down\nexec sleep 300",
    );
    let wf = workflow(&f.api, &yaml, &[]).await;
    let dir = f.scratch.dir.path().display().to_string();
    let id = queue(&f.api, wf, json!({"dir": dir})).await;
    running(&f.api, id, LIMIT).await;
    // The hub goes away; the line printed meanwhile can only go to the
    // spool on disk. Then the agent dies without any cleanup.
    let Fleet {
        scratch, hub, key, ..
    } = f;
    let listen = hub.url.trim_start_matches("http://").to_string();
    hub.stop();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    agent.signal("KILL");
    drop(agent);
    let pid = std::fs::read_to_string(scratch.dir.path().join("shell.pid")).expect("pid");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status();

    let hub = Hub::start_at(&scratch, &listen, HUB_ARGS);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let again = robot.start(&[]);
    let s = finished(&api, id, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    assert_eq!(s["error"]["code"], "agent_restarted", "{s}");
    let logs = all_logs(&api, id).await;
    assert!(
        logs.iter()
            .any(|l| l["message"] == "while the hub was down"),
        "the spooled line was delivered: {logs:?}\n{}",
        again.log()
    );
}

/// `--owner` names the account the credentials file is for; a name that
/// is not an account stops registration before the hub hears of the robot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_an_unknown_owner_is_refused_before_the_hub_hears_of_it() {
    let f = fleet();
    let robot = f.robot("owned");
    let out = robot.register(&f.hub, &f.key, &["--owner", "no-such-tasuki-user"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("there is no user `no-such-tasuki-user`"),
        "{stderr}"
    );
    let robots = f.api.get("/v1/robots").await;
    assert_eq!(robots.body["total_count"], 0, "{}", robots.body);
    assert!(!robot.credentials().exists(), "no credentials were written");
}

/// Two agents on one work dir would deliver each other's spools and remove
/// each other's session directories: the second is refused, before it
/// registers, with the holder's pid and what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_the_same_work_dir_is_refused() {
    let f = fleet();
    let robot = f.robot("single");
    robot.register_ok(&f.hub, &f.key, &[]);
    let first = robot.start(&[]);
    let second = std::process::Command::new(tasuki_bin())
        .arg("agent")
        .arg("--config")
        .arg(robot.config())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run a second tasuki agent");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{stderr}");
    assert!(
        stderr.contains("another tasuki agent")
            && stderr.contains(&format!("(pid {})", first.pid()))
            && stderr.contains("paths.work_dir"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("registered"),
        "refused before registering: {stderr}"
    );
    // The first one still serves.
    let wf = workflow(&f.api, &shell_yaml("still", "echo fine"), &[]).await;
    let id = queue(&f.api, wf, json!({})).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
}

/// A hub whose leases run out within a test (polls held 2 s, leases living
/// 7 s without a renewal), and one robot running a session whose shell
/// notes its pid and a line in `runs.txt`, then sleeps.
struct ShortLease {
    f: Fleet,
    robot: Robot,
    agent: Agent,
    id: i64,
    shell: u32,
}

async fn session_on_short_leases(robot_name: &str) -> ShortLease {
    let mut args = HUB_ARGS.to_vec();
    args.extend(["--hold-seconds", "2", "--lease-ttl-seconds", "7"]);
    let f = fleet_with(&args);
    let robot = f.robot(robot_name);
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = robot.start(&[]);
    let yaml = shell_yaml(
        "short-lease",
        "echo $$ > \"${params.dir}/shell.pid\"\necho ran >> \"${params.dir}/runs.txt\"\nexec sleep 300",
    );
    let wf = workflow(&f.api, &yaml, &[]).await;
    let dir = f.scratch.dir.path().display().to_string();
    let id = queue(&f.api, wf, json!({"dir": dir})).await;
    running(&f.api, id, LIMIT).await;
    let pid_file = f.scratch.dir.path().join("shell.pid");
    assert!(eventually(LIMIT, || std::fs::read_to_string(&pid_file)
        .is_ok_and(|t| t.ends_with('\n'))));
    let shell = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    ShortLease {
        f,
        robot,
        agent,
        id,
        shell,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_that_dies_mid_session_is_marked_lost_and_its_session_never_reruns() {
    let ShortLease {
        f,
        agent,
        id,
        shell,
        ..
    } = session_on_short_leases("mortal").await;
    agent.signal("KILL");
    drop(agent);
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &shell.to_string()])
        .status();
    // A second robot is there to take work; it must not get this session.
    let (_r2, _a2) = f.agent("survivor", &[], &[]);
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    assert_eq!(s["error"]["code"], "robot_lost", "{s}");
    assert_eq!(s["robot"]["name"], "mortal");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = std::fs::read_to_string(f.scratch.dir.path().join("runs.txt")).expect("runs");
    assert_eq!(runs.lines().count(), 1, "the session ran once, never again");
}

/// An agent frozen past its lease's life (a suspended VM, a stopped
/// process) hears when it wakes that the hub has ended the session: it
/// stops the session's processes and drops the spool, which the hub would
/// never take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_frozen_past_its_lease_stops_the_session_and_drops_its_spool_on_waking() {
    let ShortLease {
        f,
        robot,
        agent,
        id,
        shell,
    } = session_on_short_leases("sleeper").await;
    // The session's spool: the directory whose lease.json names it.
    let spool_root = robot.dir.join("work").join("spool");
    let has_spool = || {
        std::fs::read_dir(&spool_root).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                std::fs::read(e.path().join("lease.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .is_some_and(|l| l["session_id"] == id)
            })
        })
    };
    assert!(eventually(LIMIT, has_spool), "the session has a spool");

    agent.signal("STOP");
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["error"]["code"], "robot_lost", "{s}");
    assert!(alive(shell), "the frozen agent's shell still runs");
    agent.signal("CONT");

    assert!(
        eventually(LIMIT, || !alive(shell)),
        "the woken agent stops the session's shell\n{}",
        agent.log()
    );
    assert!(
        eventually(LIMIT, || !has_spool()),
        "the woken agent drops the spool\n{}",
        agent.log()
    );
    let s = f.api.get(&format!("/v1/session_queues/{id}")).await.body;
    assert_eq!(
        s["error"]["code"], "robot_lost",
        "the hub's verdict stands: {s}"
    );
}

/// The opt-in listener of a real agent connected to a real hub: `/healthz`
/// says it is connected (and stops saying so when the hub goes), and
/// `/metrics` counts what the agent did. Its log file is JSON, one object
/// a line, without terminal colours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_report_a_connected_agent_and_what_it_did() {
    let f = fleet();
    let logs = f.scratch.dir.path().join("agent-logs");
    let logs_arg = format!("paths.log_dir={}", logs.display());
    let (_robot, agent) = f.agent(
        "observed",
        &[],
        &[
            "--set",
            "metrics.listen=127.0.0.1:0",
            "--set",
            &logs_arg,
            "--set",
            "paths.log_format=json",
        ],
    );
    let bound = agent
        .log()
        .lines()
        .find(|l| l.contains("serving /healthz and /metrics"))
        .and_then(|l| l.split("bound=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
        .expect("the agent logs the listener's address");
    let base = format!("http://{bound}");
    let ok = shell_yaml("observed-ok", "echo one\necho two");
    let bad = shell_yaml("observed-bad", "echo failing\nexit 3");
    let (ok, bad) = (
        workflow(&f.api, &ok, &[]).await,
        workflow(&f.api, &bad, &[]).await,
    );
    let id = queue(&f.api, ok, json!({})).await;
    assert_eq!(finished(&f.api, id, LIMIT).await["status"], "success");
    let id = queue(&f.api, bad, json!({})).await;
    assert_eq!(finished(&f.api, id, LIMIT).await["status"], "error");

    let http = reqwest::Client::new();
    // The hub has the final report before the agent has put the session
    // away: give it a moment to.
    let deadline = Instant::now() + Duration::from_secs(5);
    let doc: Value = loop {
        let health = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(health.status().as_u16(), 200);
        let doc: Value = health.json().await.unwrap();
        if doc["running_sessions"] == json!([]) || Instant::now() >= deadline {
            break doc;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["connected"], true, "{doc}");
    assert_eq!(doc["robot"], "observed", "{doc}");
    assert!(doc["last_poll_at"].is_string(), "{doc}");
    assert_eq!(doc["running_sessions"], json!([]), "{doc}");

    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(value("tasuki_sessions_total{status=\"success\"}"), 1.0);
    assert_eq!(value("tasuki_sessions_total{status=\"error\"}"), 1.0);
    assert_eq!(value("tasuki_step_duration_seconds_count"), 2.0);
    assert_eq!(value("tasuki_pickup_latency_seconds_count"), 2.0);
    assert_eq!(value("tasuki_log_lines_dropped_total"), 0.0);
    assert!(value("tasuki_log_lines_shipped_total") >= 3.0, "{text}");
    assert!(value("tasuki_log_lines_spooled_total") >= 3.0, "{text}");
    assert!(
        value("tasuki_resident_memory_bytes") > 1_000_000.0,
        "{text}"
    );
    assert_eq!(value("tasuki_sessions_running"), 0.0);

    // The hub goes away: the agent's next poll fails, and it says so.
    let Fleet { hub, .. } = f;
    hub.stop();
    let mut last = String::new();
    let mut unhealthy = false;
    for _ in 0..100 {
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        let status = r.status().as_u16();
        last = r.text().await.unwrap();
        if status == 503 {
            unhealthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        unhealthy,
        "still healthy 10 s after the hub stopped: {last}"
    );
    assert!(last.contains("\"disconnected\""), "{last}");

    let files: Vec<_> = std::fs::read_dir(&logs)
        .expect("the log dir exists")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(
        name.starts_with("tasuki.") && name.ends_with(".log"),
        "{name}"
    );
    let content = std::fs::read_to_string(&files[0]).unwrap();
    assert!(!content.contains('\u{1b}'), "ANSI codes in the log file");
    assert!(content.contains("waiting for sessions"), "{content}");
    for line in content.lines() {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not JSON: {line}");
    }
}

/// Runs `tasuki doctor` on a robot's config; (exit code, stdout).
fn doctor(robot: &Robot, extra: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(tasuki_bin())
        .arg("doctor")
        .arg("--config")
        .arg(robot.config())
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tasuki doctor");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_a_healthy_robot_and_names_each_check() {
    let f = fleet();
    let robot = f.robot("healthy");
    robot.register_ok(&f.hub, &f.key, &[]);
    let (code, out) = doctor(&robot, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    for want in [
        "ok    config: ",
        "ok    logs: standard error only",
        "ok    credentials: ",
        "mode 0600",
        "ok    hub: ",
        "ok    token: accepted; robot `healthy`",
        "ok    clock: ",
        "ok    chromium: ",
        "ok    chromedriver: ",
        "ok    browser versions: both major version",
        "ok    headless session: started and closed",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(out.contains("work dir: "), "{out}");
}

/// Each broken setup fails its check, with a fix, and exit code 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_fails_each_broken_setup_with_a_fix() {
    let f = fleet();
    let robot = f.robot("patient");
    robot.register_ok(&f.hub, &f.key, &[]);
    let expect_fail = |extra: &[&str], want: &[&str]| {
        let (code, out) = doctor(&robot, extra);
        assert_eq!(code, 1, "{extra:?}:\n{out}");
        for w in want {
            assert!(out.contains(w), "{extra:?}: missing {w:?} in:\n{out}");
        }
    };
    // The hub is not where the config says.
    expect_fail(
        &["--set", "control_plane.url=http://127.0.0.1:9"],
        &[
            "FAIL  hub: cannot reach http://127.0.0.1:9",
            "fix: check control_plane.url",
        ],
    );
    // A robot the hub does not know.
    expect_fail(
        &["--set", "control_plane.name=ghost"],
        &[
            "FAIL  token: accepted, but: robot_not_registered",
            "fix: run `tasuki register`",
        ],
    );
    // Versions that do not match: a stand-in chromedriver says 1.0.
    let fake = robot.dir.join("old-chromedriver");
    std::fs::write(&fake, "#!/bin/sh\necho 'ChromeDriver 1.0.0 (fake)'\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let fake_arg = format!("browser.chromedriver={}", fake.display());
    expect_fail(
        &["--set", &fake_arg],
        &[
            "FAIL  browser versions: Chromium ",
            "but chromedriver 1",
            "fix: install the chromedriver",
        ],
    );
    // A driver that is not there at all.
    expect_fail(
        &["--set", "browser.chromedriver=/nonexistent/chromedriver"],
        &["FAIL  chromedriver: ", "fix: install it"],
    );
    // A log dir the agent cannot write.
    expect_fail(
        &["--set", "paths.log_dir=/proc/tasuki-logs"],
        &["FAIL  logs: cannot write in /proc/tasuki-logs"],
    );
    // A wrong secret: the hub refuses the token.
    let creds_path = robot.credentials();
    let good = std::fs::read_to_string(&creds_path).unwrap();
    let secret_line = good
        .lines()
        .find(|l| l.starts_with("secret_access_key"))
        .expect("a secret line")
        .to_string();
    std::fs::write(
        &creds_path,
        good.replace(&secret_line, "secret_access_key = \"not-the-secret\""),
    )
    .unwrap();
    expect_fail(
        &[],
        &[
            "FAIL  token: the hub refused the token",
            "fix: check the access key",
        ],
    );
    std::fs::write(&creds_path, &good).unwrap();
    // Credentials others can read.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&creds_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        expect_fail(
            &[],
            &[
                "FAIL  credentials: ",
                &format!("fix: chmod 600 {}", creds_path.display()),
            ],
        );
        std::fs::set_permissions(&creds_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // A clock five minutes fast (libfaketime; .ci/run installs it): the
    // clock check says by how much, and the hub refuses the token.
    let out = std::process::Command::new("faketime")
        .args(["-f", "+300s"])
        .arg(tasuki_bin())
        .arg("doctor")
        .arg("--config")
        .arg(robot.config())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run faketime (Debian package `faketime`)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  clock: this machine's clock is 29")
            || text.contains("FAIL  clock: this machine's clock is 30"),
        "{text}"
    );
    assert!(text.contains("s ahead of the hub's"), "{text}");
    assert!(
        text.contains("fix: synchronise this machine's clock"),
        "{text}"
    );
    assert!(
        text.contains("FAIL  token: the hub refused the token"),
        "{text}"
    );
    // No config at all.
    std::fs::remove_file(robot.config()).unwrap();
    expect_fail(
        &[],
        &[
            "FAIL  config: cannot read the config file",
            "fix: register the robot",
        ],
    );
}

/// A `call` step on a robot: the hub resolves the called workflow by
/// name at registration and puts it in the lease; the robot runs it
/// inline, reports its steps nested (`CALL.ID`) as they run, and the
/// session's outputs read its outputs. A call to a workflow the hub does
/// not have is refused at registration, at its field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_called_workflow_runs_inline_on_the_robot() {
    let f = fleet();
    let (_robot, _agent) = f.agent("caller-bot", &[], &[]);
    let r = f
        .api
        .post(
            "/v1/workflows",
            &json!({"yaml": "version: 1\nname: main-flow\nsteps:\n  - id: sub\n    action: call\n    with: {workflow: not-registered}\n"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert!(
        r.body.to_string().contains("steps[0].with.workflow")
            && r.body
                .to_string()
                .contains("this hub has no workflow named `not-registered`"),
        "{}",
        r.body
    );
    workflow(
        &f.api,
        "version: 1\nname: greet\nparams:\n  who: {}\nsteps:\n  - id: hello\n    action: shell.run\n    with: {argv: [sh, -c, 'echo \"hello $0\"', \"${params.who}\"]}\noutputs:\n  said: \"${steps.hello.output.stdout}\"\n",
        &[],
    )
    .await;
    let main = workflow(
        &f.api,
        "version: 1\nname: main-flow\nsteps:\n  - id: sub\n    action: call\n    with: {workflow: greet, params: {who: robots}}\noutputs:\n  greeting: \"${steps.sub.output.said}\"\n",
        &[],
    )
    .await;
    let id = queue(&f.api, main, json!({})).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    assert_eq!(s["outputs"]["greeting"], "hello robots", "{s}");
    let steps = s["steps"].as_array().cloned().unwrap_or_default();
    let nested = steps.iter().find(|st| st["id"] == "sub.hello").cloned();
    assert_eq!(
        nested.map(|n| n["status"].clone()),
        Some(json!("success")),
        "{s}"
    );
    let logs = all_logs(&f.api, id).await;
    assert!(
        logs.iter()
            .any(|l| l["step_id"] == "sub.hello" && l["message"] == "hello robots"),
        "{logs:?}"
    );
}

/// `--max-session-duration`: a run that lasts longer is cancelled by the
/// hub (its process tree ended, its cleanup run) and ends `error` with
/// code `session_duration_limit`, its log saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_the_hub_s_max_session_duration_ends_with_its_code() {
    let mut args: Vec<&str> = HUB_ARGS.to_vec();
    args.extend(["--max-session-duration", "2s"]);
    let f = fleet_with(&args);
    let (_robot, agent) = f.agent("slow-bot", &[], &[]);
    let dir = f.scratch.dir.path().display().to_string();
    let yaml = "version: 1
name: too-long
params:
  dir: \"\"
steps:
  - id: forever
    action: shell.run
    with: {argv: [sh, -c, 'echo $$ > \"$0/forever.pid\"; exec sleep 300', \"${params.dir}\"]}
finally:
  - id: tidy
    action: log
    with: {message: tidied}
";
    let wf = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, wf, json!({"dir": dir})).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}\n{}", agent.log());
    assert_eq!(s["error"]["code"], "session_duration_limit", "{s}");
    assert!(
        s["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("--max-session-duration"),
        "{s}"
    );
    let pid: u32 = std::fs::read_to_string(f.scratch.dir.path().join("forever.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok())
        .expect("the step wrote its pid");
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "the step's process {pid} survived"
    );
    let text: Vec<String> = all_logs(&f.api, id)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(
        text.iter()
            .any(|m| m.contains("longer than the hub's --max-session-duration (2 s)")),
        "{text:?}"
    );
    assert!(text.iter().any(|m| m == "tidied"), "{text:?}");
}
