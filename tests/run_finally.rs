//! `finally:` cleanup steps, the workflow's and a `try`'s, run by
//! `tasuki run`: after success, failure, timeout and cancel, in order after
//! `on_error`, ended at `finally_timeout` when they hang.

mod support;

use std::time::Duration;

use support::{
    Scratch, alive, eventually, read_pid, run_json, run_text, signal, spawn_run, wait_with_limit,
};

/// Steps that append their name to `order.txt`, so the test reads the
/// order in which they ran.
fn mark(id: &str) -> String {
    format!(
        "  - id: {id}\n    action: shell.run\n    with: {{argv: [sh, -c, 'echo {id} >> order.txt']}}\n"
    )
}

fn order(scratch: &Scratch) -> Vec<String> {
    std::fs::read_to_string(scratch.path().join("order.txt"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn finally_runs_after_success_and_after_a_failure_following_on_error() {
    let scratch = Scratch::new();
    let ok = format!(
        "version: 1\nname: ok\nsteps:\n{}finally:\n{}",
        mark("work"),
        mark("tidy")
    );
    let file = scratch.write("ok.yaml", &ok);
    let r = run_json(scratch.path(), &file, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["status"], "success");
    assert_eq!(r.report["steps"]["tidy"]["status"], "success");
    assert_eq!(order(&scratch), ["work", "tidy"]);

    let scratch = Scratch::new();
    let failing = format!(
        "version: 1\nname: failing\nsteps:\n{}  - id: boom\n    action: fail\n    with: {{message: broken}}\n{}on_error:\n{}finally:\n{}",
        mark("work"),
        mark("never"),
        mark("report"),
        mark("tidy")
    );
    let file = scratch.write("failing.yaml", &failing);
    let r = run_json(scratch.path(), &file, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["status"], "error");
    // The first failure stands: the cleanup does not replace it.
    assert_eq!(r.report["error"]["step_id"], "boom");
    assert_eq!(r.report["steps"]["never"]["status"], "skipped");
    assert_eq!(r.report["steps"]["tidy"]["status"], "success");
    assert_eq!(order(&scratch), ["work", "report", "tidy"]);
}

#[test]
fn a_failing_finally_step_fails_a_session_that_had_succeeded() {
    let r = run_text(
        "version: 1\nname: t\nsteps:\n  - id: work\n    action: log\n    with: {message: fine}\noutputs:\n  said: done\nfinally:\n  - id: logout\n    action: fail\n    with: {message: the site refused the logout, code: logout_failed}\n",
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["status"], "error");
    assert_eq!(r.report["error"]["step_id"], "logout");
    assert_eq!(r.report["error"]["code"], "logout_failed");
    assert!(r.report["outputs"].is_null(), "{}", r.report);
}

#[test]
fn finally_runs_after_the_workflow_timeout() {
    let scratch = Scratch::new();
    let flow = format!(
        "version: 1\nname: t\ntimeout: 300ms\nsteps:\n  - id: nap\n    action: sleep\n    with: {{duration: 30s}}\nfinally:\n{}",
        mark("tidy")
    );
    let file = scratch.write("flow.yaml", &flow);
    let r = run_json(scratch.path(), &file, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["error"]["code"], "timeout");
    assert_eq!(r.report["steps"]["nap"]["error"]["code"], "timeout");
    assert_eq!(r.report["steps"]["tidy"]["status"], "success");
    assert_eq!(order(&scratch), ["tidy"]);
}

/// A cancel stops the running step and its processes, then the cleanup
/// runs (a cancel does not stop it), and the session ends `cancelled`.
#[test]
fn a_cancelled_run_runs_its_finally_steps_and_the_try_s() {
    let scratch = Scratch::new();
    let flow = r#"version: 1
name: cancelled
steps:
  - id: guarded
    action: try
    steps:
      - id: long
        action: shell.run
        with: {argv: [sh, -c, 'echo $$ > long.pid; exec sleep 300']}
    finally:
      - id: release
        action: shell.run
        with: {argv: [sh, -c, 'echo release >> order.txt']}
  - id: after
    action: log
    with: {message: never}
finally:
  - id: logout
    action: shell.run
    with: {argv: [sh, -c, 'echo logout >> order.txt']}
"#;
    let child = spawn_run(&scratch, flow, &[]);
    let long = read_pid(&scratch, "long.pid");
    signal(child.id(), "INT");
    let r = wait_with_limit(child, Duration::from_secs(30));
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert_eq!(r.report["status"], "cancelled", "{}", r.report);
    assert_eq!(r.report["steps"]["long"]["status"], "cancelled");
    assert_eq!(r.report["steps"]["release"]["status"], "success");
    assert_eq!(r.report["steps"]["after"]["status"], "cancelled");
    assert_eq!(r.report["steps"]["logout"]["status"], "success");
    assert_eq!(order(&scratch), ["release", "logout"]);
    assert!(
        eventually(Duration::from_secs(2), || !alive(long)),
        "the cancelled step's process {long} survived"
    );
}

/// A cleanup step that hangs is ended at `finally_timeout`, its process
/// with it, and says which limit ended it.
#[test]
fn a_hanging_finally_step_is_ended_at_its_limit() {
    let scratch = Scratch::new();
    let flow = "version: 1\nname: hang\nfinally_timeout: 1s\nsteps:\n  - id: work\n    action: log\n    with: {message: fine}\nfinally:\n  - id: stuck\n    action: shell.run\n    with: {argv: [sh, -c, 'echo $$ > stuck.pid; exec sleep 300']}\n  - id: next\n    action: log\n    with: {message: never}\n";
    let child = spawn_run(&scratch, flow, &[]);
    let stuck = read_pid(&scratch, "stuck.pid");
    let r = wait_with_limit(child, Duration::from_secs(30));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["status"], "error");
    assert_eq!(r.report["error"]["step_id"], "stuck");
    assert_eq!(r.report["error"]["code"], "timeout");
    let message = r.report["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("finally steps' limit of 1s"), "{message}");
    assert_eq!(r.report["steps"]["next"]["status"], "skipped");
    assert!(
        eventually(Duration::from_secs(5), || !alive(stuck)),
        "the hanging step's process {stuck} survived"
    );
}

#[test]
fn a_try_s_finally_runs_after_its_steps_and_catch_whatever_their_end() {
    let scratch = Scratch::new();
    let flow = format!(
        "version: 1\nname: t\nsteps:\n  - id: caught\n    action: try\n    steps:\n      - id: bad\n        action: fail\n        with: {{message: first}}\n    catch:\n{}    finally:\n{}  - id: clean\n    action: try\n    steps:\n{}    finally:\n{}  - id: failing_cleanup\n    action: try\n    steps:\n{}    finally:\n      - id: broken\n        action: fail\n        with: {{message: cleanup broke}}\n",
        indent(&mark("handle")),
        indent(&mark("cleanup1")),
        indent(&mark("body2")),
        indent(&mark("cleanup2")),
        indent(&mark("body3")),
    );
    let file = scratch.write("flow.yaml", &flow);
    let r = run_json(scratch.path(), &file, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["steps"]["caught"]["status"], "success");
    assert_eq!(r.report["steps"]["caught"]["output"]["caught"], true);
    assert_eq!(r.report["steps"]["clean"]["status"], "success");
    // A failing cleanup fails its `try`, and so the session.
    assert_eq!(r.report["steps"]["failing_cleanup"]["status"], "error");
    assert_eq!(r.report["error"]["step_id"], "broken");
    assert_eq!(
        order(&scratch),
        ["handle", "cleanup1", "body2", "cleanup2", "body3"]
    );
}

fn indent(steps: &str) -> String {
    steps
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect::<String>()
}

#[test]
fn finally_where_it_does_not_belong_is_refused_with_its_path() {
    let r = run_text(
        "version: 1\nname: t\nfinally_timeout: soon\nsteps:\n  - id: a\n    action: log\n    with: {message: hi}\n    finally:\n      - id: b\n        action: log\n        with: {message: no}\nfinally:\n  - id: c\n    action: log\n    with: {message: \"${steps.nope.output}\"}\n",
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    for expected in [
        "steps[0].finally",
        "only `try` steps have `finally`, not `log`",
        "finally_timeout",
        "finally[0].with.message",
        "there is no step with id `nope`",
    ] {
        assert!(
            r.stderr.contains(expected),
            "`{expected}` missing: {}",
            r.stderr
        );
    }
}

#[test]
fn dry_run_plans_the_finally_steps() {
    let r = run_text(
        "version: 1\nname: t\nsteps:\n  - id: a\n    action: log\n    with: {message: hi}\nfinally:\n  - id: tidy\n    action: log\n    with: {message: bye}\n",
        &["--dry-run"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let plan = r.report.to_string();
    assert!(plan.contains("tidy"), "{plan}");
}

/// A cleanup runs whatever became of the steps, so a variable they set
/// may never have been bound: `finally` may not read one (it reads
/// `${steps.ID...}`), and it needs some time.
#[test]
fn finally_reads_no_variable_the_steps_set_and_needs_time() {
    let r = run_text(
        "version: 1\nname: t\nfinally_timeout: 0s\nsteps:\n  - id: fetch\n    action: shell.run\n    save_as: token\n    with: {argv: [echo, t0k]}\n  - id: guarded\n    action: try\n    steps:\n      - id: mark\n        action: set\n        with: {inside: yes-it-ran}\n    finally:\n      - id: inner\n        action: log\n        with: {message: \"${inside}\"}\nfinally:\n  - id: outer\n    action: log\n    with: {message: \"${token.stdout} ${steps.fetch.status}\"}\n",
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    for expected in [
        ": finally_timeout: ",
        ": steps[1].finally[0].with.message: `${inside}`",
        ": finally[0].with.message: `${token.stdout}`",
    ] {
        assert!(
            r.stderr.contains(expected),
            "`{expected}` missing: {}",
            r.stderr
        );
    }
    // Reading the step, not the variable, is fine.
    assert!(!r.stderr.contains("steps.fetch"), "{}", r.stderr);
}
