//! `call` steps in `tasuki run`: another workflow, found as a file beside
//! the calling one, runs inline with params; its outputs come back as the
//! step's output, its steps appear nested (`CALL.ID`) in the report and
//! the log, and its failure names its step. Cycles, a depth past
//! `limits.subworkflow_depth`, missing workflows and wrong params are
//! refused before anything runs.

mod support;

use std::time::{Duration, Instant};

use support::{Scratch, alive, eventually, read_pid, run_json, signal, spawn_run, wait_with_limit};

const INVOICE: &str = r#"version: 1
name: make-invoice
params:
  customer: {}
  amount: {default: 10}
steps:
  - id: total
    action: set
    with: {total: "${params.amount}"}
  - id: render
    action: shell.run
    with: {argv: [sh, -c, 'echo "invoice for $0: $1"', "${params.customer}", "${total}"]}
outputs:
  text: "${steps.render.output.stdout}"
  total: "${total}"
"#;

#[test]
fn a_called_workflow_runs_inline_and_its_outputs_come_back() {
    let scratch = Scratch::new();
    scratch.write("make-invoice.yaml", INVOICE);
    let main = scratch.write(
        "main.yaml",
        r#"version: 1
name: billing
steps:
  - id: total
    action: set
    with: {total: "not the called one's"}
  - id: invoice
    action: call
    with: {workflow: make-invoice, params: {customer: ACME, amount: 42}}
  - id: after
    action: log
    with: {message: "got ${steps.invoice.output.text} (${steps.invoice.output.total}); mine is ${total}"}
"#,
    );
    let r = run_json(scratch.path(), &main, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["status"], "success", "{}", r.report);
    assert_eq!(
        r.report["steps"]["invoice"]["output"]["text"],
        "invoice for ACME: 42"
    );
    // The called workflow's steps, nested under the call.
    assert_eq!(r.report["steps"]["invoice.total"]["status"], "success");
    assert_eq!(
        r.report["steps"]["invoice.render"]["output"]["stdout"],
        "invoice for ACME: 42"
    );
    assert!(
        r.stderr
            .contains("got invoice for ACME: 42 (42); mine is not the called one's"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("invoice.render"),
        "the log names the nested step: {}",
        r.stderr
    );
}

#[test]
fn a_failure_inside_a_called_workflow_names_its_nested_step() {
    let scratch = Scratch::new();
    scratch.write(
        "breaks.yaml",
        "version: 1\nname: breaks\nsteps:\n  - id: ok\n    action: log\n    with: {message: fine}\n  - id: boom\n    action: fail\n    with: {message: broken inside, code: inner_failure}\nfinally:\n  - id: inner_tidy\n    action: log\n    with: {message: inner tidy}\n",
    );
    let main = scratch.write(
        "main.yaml",
        "version: 1\nname: outer\nsteps:\n  - id: run_it\n    action: call\n    with: {workflow: breaks}\n  - id: never\n    action: log\n    with: {message: never}\n",
    );
    let r = run_json(scratch.path(), &main, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["error"]["code"], "inner_failure", "{}", r.report);
    assert_eq!(r.report["error"]["step_id"], "run_it.boom", "{}", r.report);
    assert_eq!(r.report["steps"]["run_it"]["status"], "error");
    assert_eq!(r.report["steps"]["run_it.boom"]["status"], "error");
    assert_eq!(r.report["steps"]["run_it.inner_tidy"]["status"], "success");
    assert_eq!(r.report["steps"]["never"]["status"], "skipped");
}

#[test]
fn bad_calls_are_refused_before_anything_runs() {
    let scratch = Scratch::new();
    scratch.write(
        "loop-a.yaml",
        "version: 1\nname: loop-a\nsteps:\n  - id: b\n    action: call\n    with: {workflow: loop-b}\n",
    );
    scratch.write(
        "loop-b.yaml",
        "version: 1\nname: loop-b\nsteps:\n  - id: a\n    action: call\n    with: {workflow: loop-a}\n",
    );
    scratch.write("make-invoice.yaml", INVOICE);
    scratch.write(
        "waits.yaml",
        "version: 1\nname: waits\nsteps:\n  - id: ok\n    action: approval\n    with: {message: go?}\n",
    );
    for i in 1..=3 {
        scratch.write(
            &format!("deep-{i}.yaml"),
            &format!(
                "version: 1\nname: deep-{i}\nsteps:\n  - id: next\n    action: call\n    with: {{workflow: deep-{}}}\n",
                i + 1
            ),
        );
    }
    scratch.write(
        "deep-4.yaml",
        "version: 1\nname: deep-4\nsteps:\n  - id: end\n    action: log\n    with: {message: bottom}\n",
    );
    let main = scratch.write(
        "main.yaml",
        r#"version: 1
name: caller
limits: {subworkflow_depth: 3}
steps:
  - id: cycle
    action: call
    with: {workflow: loop-a}
  - id: missing
    action: call
    with: {workflow: nowhere}
  - id: wrong_params
    action: call
    with: {workflow: make-invoice, params: {colour: blue, amount: ten}}
  - id: waiting
    action: call
    with: {workflow: waits}
  - id: too_deep
    action: call
    with: {workflow: deep-1}
"#,
    );
    let r = run_json(scratch.path(), &main, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for expected in [
        "steps[0].with.workflow: the workflow `loop-a`",
        "`loop-a` calls itself: caller → loop-a → loop-b → loop-a",
        "steps[1].with.workflow: cannot find the workflow `nowhere`: there is no nowhere.yaml",
        "steps[2].with.params.colour: `make-invoice` takes no param `colour`; it takes: customer, amount",
        "steps[2].with.params: `make-invoice` requires the param `customer`",
        "steps[2].with.params.amount: `make-invoice` does not take this value for `amount`: expected a number, found a string",
        "steps[3].with.workflow: `waits` waits (its step `ok`); a called workflow may not wait",
        "steps[4].with.workflow: the workflow `deep-1`",
        "deep-3.yaml:6:22: steps[0].with.workflow: calling `deep-4` here nests calls 4 deep, past limits.subworkflow_depth (3) of `caller`",
    ] {
        assert!(r.stderr.contains(expected), "{expected}\n{}", r.stderr);
    }

    // A call's own arguments are checked first: a name written out, and
    // nothing but `workflow` and `params`.
    let shapes = scratch.write(
        "shapes.yaml",
        "version: 1\nname: shapes\nsteps:\n  - id: templated\n    action: call\n    with: {workflow: \"${env.X}\", extra: 1, params: [1]}\n",
    );
    let r = run_json(scratch.path(), &shapes, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for expected in [
        "steps[0].with.workflow: `${env.X}` is not a workflow name",
        "steps[0].with.extra: unknown argument `extra`",
        "steps[0].with.params: expected a mapping of param names to values",
    ] {
        assert!(r.stderr.contains(expected), "{expected}\n{}", r.stderr);
    }
}

/// Calls nest (`outer.inner.ID`), run inside `parallel` branches with
/// their records kept, mask the secret params they are given, and a
/// called workflow's own timeout ends its step `timeout` and runs its
/// `on_error`.
#[test]
fn nested_calls_calls_in_branches_secrets_and_a_called_timeout() {
    let scratch = Scratch::new();
    scratch.write(
        "leaf.yaml",
        "version: 1\nname: leaf\nparams:\n  token: {secret: true}\nsteps:\n  - id: use\n    action: log\n    with: {message: \"token is ${params.token}\"}\noutputs:\n  done: yes-done\n",
    );
    scratch.write(
        "middle.yaml",
        "version: 1\nname: middle\nparams:\n  token: {secret: true}\nsteps:\n  - id: deeper\n    action: call\n    with: {workflow: leaf, params: {token: \"${params.token}\"}}\noutputs:\n  from_leaf: \"${steps.deeper.output.done}\"\n",
    );
    scratch.write(
        "slow.yaml",
        "version: 1\nname: slow\ntimeout: 300ms\nsteps:\n  - id: hang\n    action: sleep\n    with: {duration: 30s}\non_error:\n  - id: noted\n    action: log\n    with: {message: \"slow failed: ${error.code}\"}\n",
    );
    let main = scratch.write(
        "main.yaml",
        r#"version: 1
name: top
steps:
  - id: both
    action: parallel
    branches:
      one:
        - id: outer
          action: call
          with: {workflow: middle, params: {token: "s3cr3t-t0ken-value"}}
      two:
        - id: other
          action: call
          with: {workflow: leaf, params: {token: "s3cr3t-t0ken-value"}}
  - id: got
    action: log
    with: {message: "got ${steps.outer.output.from_leaf}"}
  - id: slowly
    action: call
    with: {workflow: slow}
"#,
    );
    let r = run_json(scratch.path(), &main, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(
        r.report["steps"]["outer.deeper.use"]["status"], "success",
        "{}",
        r.report
    );
    assert_eq!(r.report["steps"]["outer.deeper"]["status"], "success");
    assert_eq!(r.report["steps"]["other.use"]["status"], "success");
    assert_eq!(r.report["steps"]["got"]["status"], "success");
    assert!(r.stderr.contains("got yes-done"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("s3cr3t-t0ken-value"),
        "a secret leaked: {}",
        r.stderr
    );
    assert!(!r.report.to_string().contains("s3cr3t-t0ken-value"));
    assert!(r.stderr.contains("token is ***"), "{}", r.stderr);
    // The called workflow's own timeout.
    assert_eq!(r.report["error"]["code"], "timeout", "{}", r.report);
    assert_eq!(r.report["error"]["step_id"], "slowly.hang", "{}", r.report);
    assert_eq!(r.report["steps"]["slowly.hang"]["status"], "error");
    assert_eq!(
        r.report["steps"]["slowly.noted"]["status"], "success",
        "{}",
        r.report
    );
    assert!(r.stderr.contains("slow failed: timeout"), "{}", r.stderr);
}

/// A called workflow that ran out of its own time runs its `on_error`;
/// cancelling the session then reaches that handler too: its process
/// ends at once rather than running out the handler's 300 s bound.
#[test]
fn a_cancel_reaches_a_called_workflows_error_handler_after_its_timeout() {
    let scratch = Scratch::new();
    scratch.write(
        "slowpart.yaml",
        r#"version: 1
name: slowpart
timeout: 1s
steps:
  - id: stall
    action: shell.run
    with: {argv: [sleep, "30"]}
on_error:
  - id: mop
    action: shell.run
    with: {shell: sh, script: "echo $$ > handler.pid; exec sleep 300"}
"#,
    );
    let child = spawn_run(
        &scratch,
        "version: 1\nname: caller\nsteps:\n  - id: part\n    action: call\n    with: {workflow: slowpart}\n",
        &[],
    );
    let handler = read_pid(&scratch, "handler.pid");
    assert!(alive(handler));
    let cancelled_at = Instant::now();
    signal(child.id(), "INT");
    let r = wait_with_limit(child, Duration::from_secs(20));
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(5),
        "the cancel took {:?} to end the session",
        cancelled_at.elapsed()
    );
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert_eq!(r.report["status"], "cancelled", "{}", r.report);
    assert!(
        eventually(Duration::from_secs(2), || !alive(handler)),
        "the handler's process {handler} survived the cancel"
    );
}

/// A called workflow runs its `on_error` when the caller's timeout
/// interrupts it, with a timeout of its own or without: the handler is not
/// cut off by the timeout that made it run, and the interrupted step says
/// `timeout`.
#[test]
fn a_called_workflows_error_handler_runs_after_the_callers_timeout() {
    let scratch = Scratch::new();
    scratch.write(
        "untimed.yaml",
        r#"version: 1
name: untimed
steps:
  - id: stall
    action: shell.run
    with: {argv: [sleep, "30"]}
on_error:
  - id: note
    action: shell.run
    with: {argv: [touch, handled]}
"#,
    );
    // The same under a timeout of its own that the caller's beats.
    scratch.write(
        "timed.yaml",
        r#"version: 1
name: timed
timeout: 30s
steps:
  - id: stall
    action: shell.run
    with: {argv: [sleep, "30"]}
on_error:
  - id: note
    action: shell.run
    with: {argv: [touch, handled-too]}
"#,
    );
    let main = scratch.write(
        "main.yaml",
        "version: 1\nname: caller\ntimeout: 1s\nsteps:\n  - id: part\n    action: call\n    with: {workflow: untimed}\n",
    );
    let r = run_json(scratch.path(), &main, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["status"], "error", "{}", r.report);
    assert_eq!(r.report["error"]["code"], "timeout", "{}", r.report);
    assert!(
        scratch.path().join("handled").exists(),
        "the called workflow's on_error did not run: {}",
        r.stderr
    );
    assert_eq!(
        r.report["steps"]["part.note"]["status"], "success",
        "{}",
        r.report
    );

    let main = scratch.write(
        "main2.yaml",
        "version: 1\nname: caller\ntimeout: 1s\nsteps:\n  - id: part\n    action: call\n    with: {workflow: timed}\n",
    );
    let r = run_json(scratch.path(), &main, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["error"]["code"], "timeout", "{}", r.report);
    assert_eq!(
        r.report["steps"]["part.stall"]["error"]["code"], "timeout",
        "the interrupted step names the timeout that ran out: {}",
        r.report
    );
    assert!(
        scratch.path().join("handled-too").exists(),
        "the timed workflow's on_error did not run: {}",
        r.stderr
    );
}

/// The session's timeout ran out and its `on_error` calls a workflow; a
/// person's cancel then stops that workflow's step, which says
/// `cancelled`: the timeout that ran out before the call is not its own.
#[test]
fn a_cancel_inside_on_error_after_a_timeout_is_a_cancel() {
    let scratch = Scratch::new();
    scratch.write(
        "tidy.yaml",
        r#"version: 1
name: tidy
timeout: 60s
steps:
  - id: slow
    action: shell.run
    with: {shell: sh, script: "echo $$ > tidy.pid; exec sleep 30"}
"#,
    );
    let child = spawn_run(
        &scratch,
        "version: 1\nname: caller\ntimeout: 1s\nsteps:\n  - id: stall\n    action: shell.run\n    with: {argv: [sleep, \"30\"]}\non_error:\n  - id: tidy\n    action: call\n    with: {workflow: tidy}\n",
        &[],
    );
    let tidy = read_pid(&scratch, "tidy.pid");
    signal(child.id(), "INT");
    let r = wait_with_limit(child, Duration::from_secs(20));
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert_eq!(r.report["status"], "cancelled", "{}", r.report);
    assert_eq!(
        r.report["steps"]["tidy.slow"]["status"], "cancelled",
        "{}",
        r.report
    );
    assert!(
        eventually(Duration::from_secs(2), || !alive(tidy)),
        "the called workflow's process {tidy} survived"
    );
}
