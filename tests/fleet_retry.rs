//! `retry_on` (docs/workflow-language.md): a session whose run could not
//! finish through no fault of its own (its robot lost, its agent killed
//! and started again) is queued again by its hub when its workflow opts
//! in, and runs to its end; without it the session stays failed. Real
//! hubs and agents, the agents killed with SIGKILL.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::path::Path;
use std::time::Duration;

use fleet_support::*;
use hub_support::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

/// Counts its runs in `DIR/NAME.runs`; the first run waits for ever (the
/// test kills its agent), a later one succeeds.
fn flaky(name: &str, retry_on: &str) -> String {
    format!(
        r#"version: 1
name: {name}
{retry_on}params:
  dir: ""
steps:
  - id: work
    action: shell.run
    with:
      shell: sh
      script: |
        echo run >> "${{params.dir}}/{name}.runs"
        if [ "$(wc -l < "${{params.dir}}/{name}.runs")" -ge 2 ]; then echo second-run; exit 0; fi
        echo first-run
        echo $$ > "${{params.dir}}/{name}.pid"
        exec sleep 300
"#
    )
}

fn runs(dir: &Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{name}.runs")))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn pid(dir: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// Waits until each session's first run's line is at the hub: lines the
/// agent holds in memory (between flushes to its spool) die with it.
async fn first_lines_at_hub(api: &Api, ids: &[i64]) {
    for &id in ids {
        let mut logged = false;
        for _ in 0..600 {
            if messages(&all_logs(api, id).await)
                .iter()
                .any(|m| m == "first-run")
            {
                logged = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(logged, "session {id}'s first line never reached the hub");
    }
}

/// The log of a session that ran twice: the first run's lines, the hub's
/// note, the second run's lines, numbered 1.. without a gap.
fn assert_two_runs_logged(logs: &[Value], why: &str) {
    assert_numbered_in_order(logs);
    let text = messages(logs);
    let first = text.iter().position(|m| m == "first-run");
    let note = text
        .iter()
        .position(|m| m.starts_with("[tasuki-hub] run 1 ended ") && m.contains(why));
    let second = text.iter().position(|m| m == "second-run");
    assert!(
        matches!((first, note, second), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "first run, the hub's note, second run: {text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cut_off_by_an_agent_restart_runs_again_with_retry_on() {
    let f = Fleet::start();
    let dir = f.scratch.dir.path().join("flags");
    std::fs::create_dir_all(&dir).expect("flags");
    let robot = Robot::new(f.scratch.dir.path(), "phoenix");
    robot.register_ok(&f.hub, &f.key, &["--max-concurrency", "2"]);
    let agent = robot.start(&[]);
    let retrying = workflow(
        &f.api,
        &flaky("retrying", "retry_on: [agent_restarted]\n"),
        &[],
    )
    .await;
    let plain = workflow(&f.api, &flaky("plain", ""), &[]).await;
    let params = json!({"dir": dir.display().to_string()});
    let retried = queue(&f.api, retrying, params.clone()).await;
    let once = queue(&f.api, plain, params).await;
    assert!(
        eventually(LIMIT, || pid(&dir, "retrying").is_some()
            && pid(&dir, "plain").is_some()),
        "both first runs started\n{}",
        agent.log()
    );

    first_lines_at_hub(&f.api, &[retried, once]).await;
    agent.signal("KILL");
    drop(agent);
    let again = robot.start(&[]);

    let s = finished(&f.api, retried, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}\n{}", again.log());
    assert_eq!(s["attempt"], 2, "{s}");
    assert_eq!(runs(&dir, "retrying"), 2, "ran twice, no more");
    assert_two_runs_logged(&all_logs(&f.api, retried).await, "agent_restarted");

    let s = finished(&f.api, once, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    assert_eq!(s["error"]["code"], "agent_restarted", "{s}");
    assert!(s.get("attempt").is_none(), "{s}");
    assert_eq!(runs(&dir, "plain"), 1, "without retry_on it ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_robot_died_runs_on_another_with_retry_on() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    // Polls held 1 s, a lease lost after 6 s without a renewal.
    let hub = Hub::start_with(
        &scratch,
        &[
            "--quota-per-robot",
            "1000000",
            "--hold-seconds",
            "1",
            "--lease-ttl-seconds",
            "6",
        ],
    );
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let dir = scratch.dir.path().join("flags");
    std::fs::create_dir_all(&dir).expect("flags");
    let doomed = Robot::new(scratch.dir.path(), "doomed");
    doomed.register_ok(&hub, &key, &["--max-concurrency", "2"]);
    let agent = doomed.start(&[]);
    let retrying = workflow(&api, &flaky("retrying", "retry_on: [robot_lost]\n"), &[]).await;
    let plain = workflow(&api, &flaky("plain", ""), &[]).await;
    let params = json!({"dir": dir.display().to_string()});
    let retried = queue(&api, retrying, params.clone()).await;
    let once = queue(&api, plain, params).await;
    assert!(
        eventually(LIMIT, || pid(&dir, "retrying").is_some()
            && pid(&dir, "plain").is_some()),
        "both first runs started\n{}",
        agent.log()
    );
    // Their first lines are at the hub before the robot dies.
    first_lines_at_hub(&api, &[retried, once]).await;
    // The robot dies and stays dead (its first runs' shells are ended by
    // the test, as a dead machine's would be).
    agent.signal("KILL");
    drop(agent);
    for name in ["retrying", "plain"] {
        if let Some(p) = pid(&dir, name) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &p.to_string()])
                .status();
        }
    }
    let heir = Robot::new(scratch.dir.path(), "heir");
    heir.register_ok(&hub, &key, &[]);
    let heir_agent = heir.start(&[]);

    let s = finished(&api, retried, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}\n{}", heir_agent.log());
    assert_eq!(s["robot"]["name"], "heir", "{s}");
    assert_eq!(s["attempt"], 2, "{s}");
    assert_eq!(runs(&dir, "retrying"), 2, "ran twice, no more");
    assert_two_runs_logged(&all_logs(&api, retried).await, "robot_lost");

    let s = finished(&api, once, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    assert_eq!(s["error"]["code"], "robot_lost", "{s}");
    assert_eq!(s["robot"]["name"], "doomed", "{s}");
    assert_eq!(runs(&dir, "plain"), 1, "without retry_on it ran once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_names_only_the_ends_it_can_repeat_after() {
    let f = Fleet::start();
    let r = f
        .api
        .post(
            "/v1/workflows",
            &json!({"yaml": "version: 1\nname: bad\nretry_on: [robot_lost, step_failed]\nsteps:\n  - id: a\n    action: log\n    with: {message: hi}\n"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    let text = r.body.to_string();
    assert!(
        text.contains("retry_on[1]") && text.contains("robot_lost or agent_restarted"),
        "{text}"
    );
}
