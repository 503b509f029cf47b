//! `parallel` steps run by `tasuki run`: branches at the same time
//! (measured by their steps' own times in the report), their outputs read
//! after, a failing branch cancelling or sparing its siblings, at most
//! `max_parallel` at once, the browser's branches one after another, and
//! the workflows refused before anything runs.

mod support;

use jiff::Timestamp;
use serde_json::Value;
use support::{require_browser, run_text, start_server};

/// A step's `[started_at, ended_at]` from the report.
fn span(report: &Value, step: &str) -> (Timestamp, Timestamp) {
    let at = |field: &str| -> Timestamp {
        report["steps"][step][field]
            .as_str()
            .unwrap_or_else(|| panic!("step {step} has no {field}: {report}"))
            .parse()
            .expect("a timestamp")
    };
    (at("started_at"), at("ended_at"))
}

fn overlap(a: (Timestamp, Timestamp), b: (Timestamp, Timestamp)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

const TWO_SLEEPERS: &str = r#"version: 1
name: fan-out
steps:
  - id: both
    action: parallel
    branches:
      left:
        - id: nap_left
          action: shell.run
          with: {argv: [sh, -c, "sleep 1; echo from-left"]}
      right:
        - id: nap_right
          action: shell.run
          with: {argv: [sh, -c, "sleep 1; echo from-right"]}
  - id: joined
    action: log
    with: {message: "${steps.nap_left.output.stdout} and ${steps.nap_right.output.stdout}"}
"#;

#[test]
fn branches_run_at_the_same_time_and_their_outputs_join() {
    let r = run_text(TWO_SLEEPERS, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (left, right) = (span(&r.report, "nap_left"), span(&r.report, "nap_right"));
    assert!(
        overlap(left, right),
        "the branches ran one after the other: {left:?} {right:?}"
    );
    assert_eq!(
        r.report["steps"]["joined"]["output"]["message"],
        "from-left and from-right"
    );
    assert_eq!(
        r.report["steps"]["both"]["output"]["branches"]["left"],
        "success"
    );
    assert_eq!(
        r.report["steps"]["both"]["output"]["branches"]["right"],
        "success"
    );
}

#[test]
fn max_parallel_one_runs_the_branches_in_turn() {
    let r = run_text(
        &TWO_SLEEPERS.replace(
            "action: parallel\n",
            "action: parallel\n    with: {max_parallel: 1}\n",
        ),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (left, right) = (span(&r.report, "nap_left"), span(&r.report, "nap_right"));
    assert!(!overlap(left, right), "{left:?} {right:?}");
}

const ONE_FAILS: &str = r#"version: 1
name: one-fails
steps:
  - id: both
    action: parallel
    ON_FAILURE
    branches:
      broken:
        - id: nap_first
          action: sleep
          with: {duration: 200ms}
        - id: boom
          action: fail
          with: {message: the left branch broke, code: left_broke}
      slow:
        - id: long
          action: shell.run
          with: {argv: [sh, -c, "sleep 2; echo done"]}
  - id: after
    action: log
    with: {message: never}
"#;

#[test]
fn a_failing_branch_cancels_its_siblings_by_default() {
    let started = std::time::Instant::now();
    // The slow branch would take 30 s: cut short, the run ends long before.
    let r = run_text(
        &ONE_FAILS
            .replace("    ON_FAILURE\n", "")
            .replace("sleep 2", "sleep 30"),
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["error"]["code"], "left_broke", "{}", r.report);
    assert_eq!(r.report["error"]["step_id"], "boom");
    assert_eq!(r.report["steps"]["long"]["status"], "cancelled");
    assert_eq!(r.report["steps"]["both"]["status"], "error");
    assert_eq!(r.report["steps"]["after"]["status"], "skipped");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the slow branch was not cut short: {:?}",
        started.elapsed()
    );
}

#[test]
fn finish_siblings_lets_the_others_end_then_fails() {
    let r = run_text(
        &ONE_FAILS.replace("ON_FAILURE\n", "with: {on_failure: finish_siblings}\n"),
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["error"]["step_id"], "boom");
    assert_eq!(r.report["steps"]["long"]["status"], "success");
    assert_eq!(r.report["steps"]["long"]["output"]["stdout"], "done");
    assert_eq!(r.report["steps"]["after"]["status"], "skipped");
}

/// The session has one browser window: branches that drive it take
/// turns, while a branch that does not runs beside them.
#[test]
fn branches_that_use_the_browser_take_turns() {
    require_browser();
    let server = start_server();
    let flow = format!(
        r##"version: 1
name: browse
steps:
  - id: open
    action: browser.open
  - id: fan
    action: parallel
    branches:
      first:
        - id: go_first
          action: browser.goto
          with: {{url: "{inner}"}}
        - id: read_first
          action: browser.get_text
          with: {{selector: "#inner-text"}}
      second:
        - id: go_second
          action: browser.goto
          with: {{url: "{frames}"}}
        - id: read_second
          action: browser.get_text
          with: {{selector: "#outer"}}
      aside:
        - id: nap
          action: shell.run
          with: {{argv: [sh, -c, "sleep 1"]}}
"##,
        inner = server.url("/pages/inner.html"),
        frames = server.url("/pages/frames.html"),
    );
    let r = run_text(&flow, &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.report);
    assert_eq!(
        r.report["steps"]["read_first"]["output"]["text"],
        "inside the frame"
    );
    assert_eq!(
        r.report["steps"]["read_second"]["output"]["text"],
        "outer page"
    );
    let first = (
        span(&r.report, "go_first").0,
        span(&r.report, "read_first").1,
    );
    let second = (
        span(&r.report, "go_second").0,
        span(&r.report, "read_second").1,
    );
    assert!(
        !overlap(first, second),
        "browser branches overlapped: {first:?} {second:?}"
    );
    let nap = span(&r.report, "nap");
    assert!(
        overlap(nap, first) || overlap(nap, second),
        "the branch without the browser waited for them: {nap:?}"
    );
}

#[test]
fn bad_parallel_steps_are_refused_with_their_paths() {
    let r = run_text(
        r#"version: 1
name: bad
steps:
  - id: fan
    action: parallel
    with: {max_parallel: 0, fail_fast: true}
    branches:
      a:
        - id: a1
          action: log
          with: {message: hi}
      b:
        - id: b1
          action: log
          with: {message: "${steps.a1.output.message}"}
  - id: not_parallel
    action: log
    with: {message: hi}
    branches:
      x:
        - id: x1
          action: log
          with: {message: hi}
  - id: empty
    action: parallel
  - id: later
    action: log
    with: {message: "${steps.a1.output.message} ${steps.b1.output.message}"}
"#,
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    for expected in [
        "steps[0].with.max_parallel",
        "steps[0].with.fail_fast",
        "steps[0].branches.b[0].with.message",
        "step `a1` does not run before this point",
        "steps[1].branches",
        "only `parallel` steps have `branches`, not `log`",
        "steps[2].branches",
    ] {
        assert!(
            r.stderr.contains(expected),
            "`{expected}` missing: {}",
            r.stderr
        );
    }
    // After the parallel step, every branch's steps have run.
    assert!(!r.stderr.contains("steps[3]"), "{}", r.stderr);
}

/// A cancel (Ctrl-C) while branches run ends every branch's process, marks
/// their steps cancelled, and still runs the cleanup.
#[test]
fn a_cancel_ends_every_running_branch_and_the_cleanup_runs() {
    let scratch = support::Scratch::new();
    let flow = r#"version: 1
name: cancel-branches
steps:
  - id: both
    action: parallel
    branches:
      left:
        - id: left_work
          action: shell.run
          with: {argv: [sh, -c, 'echo $$ > left.pid; exec sleep 300']}
      right:
        - id: right_work
          action: shell.run
          with: {argv: [sh, -c, 'echo $$ > right.pid; exec sleep 300']}
  - id: after
    action: log
    with: {message: never}
finally:
  - id: tidy
    action: shell.run
    with: {argv: [sh, -c, 'echo tidy > tidy.txt']}
"#;
    let child = support::spawn_run(&scratch, flow, &[]);
    let left = support::read_pid(&scratch, "left.pid");
    let right = support::read_pid(&scratch, "right.pid");
    support::signal(child.id(), "INT");
    let r = support::wait_with_limit(child, std::time::Duration::from_secs(30));
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert_eq!(r.report["status"], "cancelled", "{}", r.report);
    for step in ["left_work", "right_work", "both", "after"] {
        assert_eq!(
            r.report["steps"][step]["status"], "cancelled",
            "{step}: {}",
            r.report
        );
    }
    assert_eq!(
        r.report["steps"]["tidy"]["status"], "success",
        "{}",
        r.report
    );
    assert!(scratch.path().join("tidy.txt").exists());
    for pid in [left, right] {
        assert!(
            support::eventually(std::time::Duration::from_secs(5), || !support::alive(pid)),
            "a branch's process {pid} survived the cancel"
        );
    }
}
