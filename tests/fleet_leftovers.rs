//! An agent killed with SIGKILL mid-step leaves processes and a script
//! (which may hold secrets) behind; started again, it ends the one and
//! removes the other. A real hub, real agents, real processes.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::path::Path;
use std::time::Duration;

use fleet_support::*;
use hub_support::*;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(30);

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_ends_the_killed_ones_process_trees_and_removes_its_scripts() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, &["--quota-per-robot", "1000000"]);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = Robot::new(scratch.dir.path(), "phoenix");
    robot.register_ok(&hub, &key, &[]);
    let agent = robot.start(&[]);

    // A child, and a grandchild that leaves the process group (setsid in a
    // subshell that exits at once: a double fork).
    let script = [
        "D=\"${params.dir}\"",
        "echo \"$0\" > \"$D/script.path\"",
        "echo $$ > \"$D/leader.pid\"",
        "sleep 300 &",
        "echo $! > \"$D/child.pid\"",
        "(setsid sh -c 'echo $$ > \"$1/escapee.pid\"; exec sleep 301' sh \"$D\" &)",
        "sleep 302",
    ]
    .iter()
    .map(|l| format!("        {l}"))
    .collect::<Vec<_>>()
    .join("\n");
    let yaml = format!(
        "version: 1\nname: leaves-things\nparams:\n  dir: \"\"\nsteps:\n  - id: work\n    action: shell.run\n    with:\n      shell: sh\n      script: |\n{script}\n"
    );
    let wf = workflow(&api, &yaml, &[]).await;
    let dir = scratch.dir.path().join("out");
    std::fs::create_dir_all(&dir).expect("out dir");
    let id = queue(&api, wf, json!({ "dir": dir.display().to_string() })).await;
    running(&api, id, LIMIT).await;
    let names = ["leader.pid", "child.pid", "escapee.pid"];
    let started = eventually(LIMIT, || {
        names
            .iter()
            .all(|n| read_pid(&dir.join(n)).is_some_and(alive))
    });
    assert!(
        started,
        "the step's processes did not all start:\n{}",
        agent.log()
    );
    let pids: Vec<u32> = names
        .iter()
        .filter_map(|n| read_pid(&dir.join(n)))
        .collect();
    let script_path = std::fs::read_to_string(dir.join("script.path")).expect("script path");
    let script_path = Path::new(script_path.trim()).to_path_buf();
    assert!(script_path.is_file(), "{}", script_path.display());
    assert!(
        script_path.starts_with(robot.dir.join("work")),
        "the script is in the session's private directory, not in /tmp: {}",
        script_path.display()
    );

    // Killed without any cleanup: everything it started lives on.
    agent.signal("KILL");
    drop(agent);
    std::thread::sleep(Duration::from_millis(300));
    assert!(pids.iter().all(|p| alive(*p)), "the kill alone ended them");

    let again = robot.start(&[]);
    let ended = eventually(Duration::from_secs(5), || pids.iter().all(|p| !alive(*p)));
    assert!(
        ended,
        "still alive: {:?}\n{}",
        pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>(),
        again.log()
    );
    let removed = eventually(Duration::from_secs(5), || !script_path.exists());
    assert!(removed, "the script was left behind");
    let s = finished(&api, id, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    assert_eq!(s["error"]["code"], "agent_restarted", "{s}");
    assert!(
        again
            .log()
            .contains("ended processes that sessions of an earlier run left running"),
        "{}",
        again.log()
    );
}

/// The first file named `name` under `root`, however deep.
fn find_file(root: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    None
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_ends_the_pack_processes_a_killed_one_left() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, &["--quota-per-robot", "1000000"]);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = Robot::new(scratch.dir.path(), "packrat");
    robot.register_ok(&hub, &key, &[]);
    let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/packs");
    let with_packs = format!("paths.action_packs={}", packs.display());
    let agent = robot.start(&["--set", &with_packs]);

    // `probe.hang` starts a child, writes both pids to pids.txt in the
    // session's work dir, and never answers.
    let yaml = "version: 1\nname: hangs-in-a-pack\nsteps:\n  - id: work\n    action: probe.hang\n";
    let wf = workflow(&api, yaml, &[]).await;
    let id = queue(&api, wf, json!({})).await;
    running(&api, id, LIMIT).await;
    let mut pids = Vec::new();
    let started = eventually(LIMIT, || {
        pids = find_file(&robot.dir, "pids.txt")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .filter(|text| text.ends_with('\n'))
            .map(|text| {
                text.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        pids.len() == 2 && pids.iter().all(|p| alive(*p))
    });
    assert!(started, "the pack did not start:\n{}", agent.log());

    agent.signal("KILL");
    drop(agent);
    std::thread::sleep(Duration::from_millis(300));
    assert!(pids.iter().all(|p| alive(*p)), "the kill alone ended them");

    let again = robot.start(&["--set", &with_packs]);
    let ended = eventually(Duration::from_secs(5), || pids.iter().all(|p| !alive(*p)));
    assert!(
        ended,
        "the pack or its child is still alive: {:?}\n{}",
        pids.iter().filter(|p| alive(**p)).collect::<Vec<_>>(),
        again.log()
    );
    let s = finished(&api, id, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    assert_eq!(s["error"]["code"], "agent_restarted", "{s}");
}
