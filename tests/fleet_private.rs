//! What a robot keeps to itself, end to end (real hub, real agent, real
//! shell): its own secret access key is masked in everything a session
//! produces, and its folders and spool files are private to its account.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::time::Duration;

use fleet_support::*;
use hub_support::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);
const HUB_ARGS: &[&str] = &["--quota-per-robot", "1000000"];

/// A step that gets hold of the robot's secret (here the test hands it
/// over as a plain param: how a step might read it is another layer's
/// business) prints it to stdout and stderr, mid-line, in a log step and
/// in its output; the hub stores only `***`. The hub's secrets are hex, so
/// their percent- and JSON-encoded forms are the same text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_robots_own_secret_is_masked_in_logs_steps_and_errors() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, HUB_ARGS);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = Robot::new(scratch.dir.path(), "keeper");
    robot.register_ok(&hub, &key, &[]);
    let _agent = robot.start(&[]);

    let yaml = r#"version: 1
name: leaky
params:
  s: ""
steps:
  - id: print
    action: shell.run
    with:
      shell: sh
      env:
        S: ${params.s}
      script: |
        echo "$S"
        echo "the key is:$S:ok"
        echo "to stderr $S" >&2
  - id: say
    action: log
    with:
      message: "log step says ${params.s}"
  - id: boom
    action: fail
    with:
      message: "failing with ${params.s}"
"#;
    let wf = workflow(&api, yaml, &["keeper"]).await;
    let id = queue(&api, wf, json!({"s": key.secret})).await;
    let s = finished(&api, id, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    let logs = all_logs(&api, id).await;
    let produced = json!({"steps": s["steps"], "error": s["error"], "logs": logs}).to_string();
    assert!(
        !produced.contains(&key.secret),
        "the robot's secret leaked: {produced}"
    );
    let messages: Vec<&str> = logs
        .iter()
        .map(|l| l["message"].as_str().unwrap_or(""))
        .collect();
    for expected in [
        "***",
        "the key is:***:ok",
        "to stderr ***",
        "log step says ***",
    ] {
        assert!(
            messages.contains(&expected),
            "{expected:?} not in {messages:?}"
        );
    }
    assert!(
        s["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("failing with ***")),
        "{s}"
    );
}

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// Every folder and file under `root`, with its mode.
#[cfg(unix)]
fn modes_under(root: &std::path::Path) -> Vec<(String, bool, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            let is_dir = path.is_dir();
            out.push((path.display().to_string(), is_dir, mode(&path)));
            if is_dir {
                stack.push(path);
            }
        }
    }
    out
}

/// The work dir, the spool with its `lease.json`, and each session's
/// work and artifacts folders are the agent account's alone, while a
/// session runs and after: folders 0700, files 0600.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_spool_and_artifact_folders_are_0700_and_spool_files_0600() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, HUB_ARGS);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = Robot::new(scratch.dir.path(), "private");
    robot.register_ok(&hub, &key, &[]);
    let _agent = robot.start(&[]);
    let work = robot.dir.join("work");

    let yaml = "version: 1\nname: stay\nsteps:\n  - id: mode\n    action: shell.run\n    with:\n      shell: sh\n      script: |\n        echo \"cwd mode $(stat -c %a .)\"\n        sleep 2\n";
    let wf = workflow(&api, yaml, &["private"]).await;
    let id = queue(&api, wf, json!({})).await;
    running(&api, id, LIMIT).await;
    let spool = work.join("spool");
    let leases_written = eventually(LIMIT, || {
        modes_under(&spool)
            .iter()
            .any(|(p, _, _)| p.ends_with("lease.json"))
    });
    assert!(leases_written, "no lease.json in {}", spool.display());

    let mut seen = vec![(work.display().to_string(), true, mode(&work))];
    seen.extend(modes_under(&work));
    for (path, is_dir, mode) in &seen {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{path} is {mode:o}: {seen:#?}");
    }
    for part in ["spool", "sessions", "artifacts", "lease.json", "logs"] {
        assert!(
            seen.iter().any(|(p, _, _)| p.contains(part)),
            "{part} was checked: {seen:#?}"
        );
    }

    let s = finished(&api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    let logs = all_logs(&api, id).await;
    assert!(
        logs.iter().any(|l| l["message"] == "cwd mode 700"),
        "the session's own work dir: {logs:?}"
    );
}

/// A workflow name carrying CR, LF, an ESC sequence and U+202E reaches the
/// agent's own log ("session started") escaped: it cannot forge a line or
/// hide text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_a_workflow_name_reach_the_agents_log_escaped() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, HUB_ARGS);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = Robot::new(scratch.dir.path(), "plainspoken");
    robot.register_ok(&hub, &key, &[]);
    let agent = robot.start(&[]);

    let yaml = "version: 1\nname: \"pay\\r\\nERROR forged\\e[31m\\u202Eexe.txt\"\nsteps:\n  - id: one\n    action: log\n    with:\n      message: hi\n";
    let wf = workflow(&api, yaml, &["plainspoken"]).await;
    let id = queue(&api, wf, json!({})).await;
    let s = finished(&api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    assert!(
        eventually(LIMIT, || agent.log().contains("session ended")),
        "{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains(r"pay\r\nERROR forged\u{1b}[31m\u{202e}exe.txt"),
        "{log}"
    );
    for raw in ['\r', '\u{1b}', '\u{202e}'] {
        assert!(!log.contains(raw), "{raw:?} raw in {log:?}");
    }
    assert!(
        !log.lines().any(|l| l.starts_with("ERROR forged")),
        "a forged line: {log}"
    );
}
