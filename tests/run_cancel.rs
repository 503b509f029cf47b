//! Cancellation and process-tree cleanup: a cancelled or timed-out step
//! ends its whole process tree, and nothing is orphaned.

mod support;

use std::time::{Duration, Instant};

use support::{
    Scratch, alive, eventually, read_pid, signal, spawn_run, start_server, wait_with_limit,
};

const TREE_WORKFLOW: &str = r#"
version: 1
name: tree
steps:
  - id: tree
    action: shell.run
    with:
      shell: sh
      script: |
        sleep 300 &
        echo $! > grandchild.pid
        echo $$ > child.pid
        wait
"#;

#[test]
fn ctrl_c_cancels_the_session_and_ends_the_grandchild() {
    let scratch = Scratch::new();
    let child = spawn_run(&scratch, TREE_WORKFLOW, &[]);
    let grandchild = read_pid(&scratch, "grandchild.pid");
    let shell = read_pid(&scratch, "child.pid");
    assert!(alive(grandchild));

    let cancelled_at = Instant::now();
    signal(child.id(), "INT");
    let r = wait_with_limit(child, Duration::from_secs(10));
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(5),
        "cancel took {:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert_eq!(r.report["status"], "cancelled");
    assert_eq!(r.report["steps"]["tree"]["status"], "cancelled");
    assert!(
        eventually(Duration::from_secs(2), || !alive(grandchild)),
        "grandchild {grandchild} survived"
    );
    assert!(!alive(shell), "child {shell} survived");
}

#[test]
fn processes_that_ignore_interrupt_and_terminate_are_killed_after_the_grace() {
    let scratch = Scratch::new();
    let workflow = r#"
version: 1
name: stubborn
steps:
  - id: stubborn
    action: shell.run
    with:
      shell: sh
      script: |
        trap '' INT TERM
        sleep 300 &
        echo $! > grandchild.pid
        wait
"#;
    let child = spawn_run(&scratch, workflow, &["--cancel-grace", "1s"]);
    let grandchild = read_pid(&scratch, "grandchild.pid");
    signal(child.id(), "TERM");
    let r = wait_with_limit(child, Duration::from_secs(10));
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert!(
        r.stderr.contains("SIGKILL"),
        "expected the tree to need SIGKILL: {}",
        r.stderr
    );
    assert!(
        eventually(Duration::from_secs(2), || !alive(grandchild)),
        "grandchild {grandchild} survived"
    );
}

#[test]
fn step_timeout_ends_the_whole_tree() {
    let scratch = Scratch::new();
    let workflow = TREE_WORKFLOW.replace(
        "    action: shell.run\n",
        "    action: shell.run\n    timeout: 500ms\n",
    );
    let child = spawn_run(&scratch, &workflow, &[]);
    let grandchild = read_pid(&scratch, "grandchild.pid");
    let r = wait_with_limit(child, Duration::from_secs(10));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["steps"]["tree"]["error"]["code"], "timeout");
    assert!(
        eventually(Duration::from_secs(2), || !alive(grandchild)),
        "grandchild {grandchild} survived the timeout"
    );
}

#[test]
fn background_processes_left_by_a_finished_step_are_ended() {
    let scratch = Scratch::new();
    let workflow = r#"
version: 1
name: leftovers
steps:
  - id: leaves
    action: shell.run
    with:
      shell: sh
      script: |
        sleep 300 > /dev/null 2>&1 &
        echo $! > grandchild.pid
        echo done
"#;
    let child = spawn_run(&scratch, workflow, &[]);
    let r = wait_with_limit(child, Duration::from_secs(10));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let grandchild = read_pid(&scratch, "grandchild.pid");
    assert!(
        eventually(Duration::from_secs(2), || !alive(grandchild)),
        "leftover {grandchild} survived"
    );
    assert!(
        r.stderr.contains("ended processes the step left running"),
        "{}",
        r.stderr
    );
}

#[test]
fn cancel_interrupts_sleep_and_http_waits_promptly() {
    let server = start_server();
    for (name, step) in [
        (
            "sleep",
            "action: sleep\n    with: {duration: 5m}".to_string(),
        ),
        (
            "http",
            format!(
                "action: http.request\n    with: {{url: \"{}\", timeout: 5m}}",
                server.url("/slow")
            ),
        ),
    ] {
        let scratch = Scratch::new();
        let workflow = format!(
            "version: 1\nname: {name}\nsteps:\n  - id: mark\n    action: shell.run\n    with: {{argv: [touch, started]}}\n  - id: wait\n    {step}\n"
        );
        let child = spawn_run(&scratch, &workflow, &[]);
        assert!(eventually(Duration::from_secs(10), || scratch
            .path()
            .join("started")
            .exists()));
        std::thread::sleep(Duration::from_millis(200));
        let cancelled_at = Instant::now();
        signal(child.id(), "INT");
        let r = wait_with_limit(child, Duration::from_secs(10));
        let took = cancelled_at.elapsed();
        assert_eq!(r.code, 130, "{name}: {}", r.stderr);
        assert_eq!(r.report["steps"]["wait"]["status"], "cancelled", "{name}");
        // Generous bound: the behaviour is "promptly", measured in ms locally.
        assert!(
            took < Duration::from_secs(3),
            "{name}: cancel took {took:?}"
        );
    }
}

#[test]
fn a_second_interrupt_forces_exit() {
    let scratch = Scratch::new();
    let workflow = r#"
version: 1
name: stubborn
steps:
  - id: stubborn
    action: shell.run
    with:
      shell: sh
      script: |
        # MARKER
        trap '' INT TERM
        echo $$ > child.pid
        while true; do sleep 1; done
"#;
    // A marker unique to this run, to find this run's script file.
    let marker = format!("forced-exit-{}", std::process::id());
    let workflow = workflow.replace("MARKER", &marker);
    let child = spawn_run(&scratch, &workflow, &["--cancel-grace", "60s"]);
    let shell = read_pid(&scratch, "child.pid");
    signal(child.id(), "INT");
    std::thread::sleep(Duration::from_millis(300));
    signal(child.id(), "INT");
    let r = wait_with_limit(child, Duration::from_secs(10));
    assert_eq!(r.code, 130);
    assert!(r.stderr.contains("forced exit"), "{}", r.stderr);
    // Even a forced exit leaves nothing behind: no process, and not the
    // script file, which could hold secrets.
    assert!(
        eventually(Duration::from_secs(2), || !alive(shell)),
        "{shell} survived the forced exit"
    );
    let script_left = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("tasuki-script-")
        })
        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&marker)));
    assert!(!script_left, "the forced exit left the script file behind");
}

/// What a step printed before it was stopped comes before the note that
/// says it was stopped, however much of it was still in the pipe.
#[test]
fn a_stopped_steps_output_comes_before_the_note_that_stopped_it() {
    let scratch = Scratch::new();
    let workflow = r#"
version: 1
name: chatty
steps:
  - id: chatty
    action: shell.run
    timeout: 500ms
    with:
      shell: sh
      script: |
        i=1; while true; do echo "tick $i"; i=$((i+1)); done
"#;
    let child = spawn_run(&scratch, workflow, &[]);
    let r = wait_with_limit(child, Duration::from_secs(10));
    assert_eq!(r.report["steps"]["chatty"]["error"]["code"], "timeout");
    let lines: Vec<&str> = r.stderr.lines().collect();
    let note = lines
        .iter()
        .position(|l| l.contains("stopped the process tree"))
        .unwrap_or_else(|| panic!("no note on stopping the step:\n{}", r.stderr));
    assert!(
        lines[..note].iter().any(|l| l.contains("tick ")),
        "the step printed before it was stopped"
    );
    let late: Vec<&&str> = lines[note..]
        .iter()
        .filter(|l| l.contains("tick "))
        .collect();
    assert!(late.is_empty(), "output after the note: {late:?}");
}
