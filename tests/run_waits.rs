//! `approval` and `wait_event` steps in `tasuki run`, which answers them
//! from `--approve`, `--reject` and `--event`, and otherwise asks on the
//! terminal; with no terminal and no flag, the step fails naming the flag.
//! Misplaced waits and bad flags are refused before anything runs.

mod support;

use support::run_text;

const FLOW: &str = r#"version: 1
name: waits
steps:
  - id: prepare
    action: set
    with: {release: v7}
  - id: ok
    action: approval
    # Approvers are the hub's business: tasuki run's terminal and flags
    # decide whatever the step lists.
    with: {message: "ship ${release}?", timeout: 5m, approvers: [TSKFINANCE]}
  - id: paid
    action: wait_event
    with: {event: payment}
  - id: after
    action: log
    with: {message: "${release} by ${steps.ok.output.by}, ${steps.paid.output.payload.amount}"}
finally:
  - id: tidy
    action: log
    with: {message: tidied}
"#;

#[test]
fn flags_answer_the_waits_and_later_steps_read_the_answers() {
    let r = run_text(
        FLOW,
        &["--approve", "ok", "--event", r#"payment={"amount": 12}"#],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["status"], "success");
    assert_eq!(r.report["steps"]["ok"]["output"]["decision"], "approved");
    assert_eq!(r.report["steps"]["ok"]["output"]["by"], "flag");
    assert_eq!(r.report["steps"]["paid"]["output"]["event"], "payment");
    assert_eq!(r.report["steps"]["paid"]["output"]["payload"]["amount"], 12);
    assert!(r.stderr.contains("v7 by flag, 12"), "{}", r.stderr);
}

#[test]
fn a_rejection_fails_the_step_and_the_cleanup_still_runs() {
    let r = run_text(FLOW, &["--reject", "ok"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["status"], "error");
    assert_eq!(r.report["error"]["code"], "approval_rejected");
    assert_eq!(r.report["error"]["step_id"], "ok");
    assert_eq!(r.report["steps"]["paid"]["status"], "skipped");
    assert_eq!(r.report["steps"]["tidy"]["status"], "success");
}

#[test]
fn without_a_terminal_or_a_flag_the_step_fails_naming_the_flag() {
    let r = run_text(FLOW, &["--approve", "ok"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["error"]["code"], "wait_unanswered");
    assert_eq!(r.report["error"]["step_id"], "paid");
    let message = r.report["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("--event payment=JSON"), "{message}");
}

#[test]
fn bad_flags_are_refused_before_anything_runs() {
    for (args, expected) in [
        (
            vec!["--approve", "nope"],
            "--approve nope: the workflow has no approval step `nope` (it has: ok)",
        ),
        (
            vec!["--approve", "ok", "--reject", "ok"],
            "--approve ok and --reject ok: choose one",
        ),
        (
            vec!["--event", "payment=not json"],
            "--event payment: the payload is not JSON",
        ),
        (
            vec!["--event", "refund={}"],
            "--event refund: the workflow waits for no event `refund` (it has: payment)",
        ),
        (vec!["--event", "payment"], "expected NAME=JSON"),
    ] {
        let r = run_text(FLOW, &args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(expected), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("tidied"), "nothing ran: {}", r.stderr);
    }
}

#[test]
fn misplaced_and_malformed_waits_are_refused_with_their_field_paths() {
    let flow = r#"version: 1
name: bad-waits
steps:
  - id: guard
    action: try
    steps:
      - id: inside
        action: approval
        with: {message: "inside a try?"}
  - id: loop
    action: for_each
    with: {items: [1, 2]}
    steps:
      - id: each
        action: wait_event
        with: {event: tick}
  - id: no_message
    action: approval
    with: {timeout: 0s, on_timeout: maybe}
  - id: first
    action: wait_event
    with: {event: done, timeout: 900h}
  - id: second
    action: wait_event
    with: {event: done, colour: blue}
  - id: spaced
    action: wait_event
    with: {event: "two words"}
  - id: chosen_by_params
    action: approval
    with: {message: ok?, approvers: ["${params.boss}", "TSK A", 7, TSKAUDIT, TSKAUDIT]}
  - id: nobody
    action: approval
    with: {message: ok?, approvers: []}
  - id: one_key
    action: approval
    with: {message: ok?, approvers: TSKAUDIT}
  - id: on_event
    action: wait_event
    with: {event: paid, approvers: [TSKAUDIT]}
  - id: crowd
    action: approval
    with: {message: ok?, approvers: CROWD}
finally:
  - id: late
    action: approval
    with: {message: "in finally?"}
"#;
    let crowd: Vec<String> = (0..33).map(|i| format!("TSK{i}")).collect();
    let flow = flow.replace("CROWD", &format!("[{}]", crowd.join(", ")));
    let r = run_text(&flow, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    for expected in [
        "steps[0].steps[0].action: `approval` may only be a step of the workflow's own `steps`",
        "steps[1].steps[0].action: `wait_event` may only be a step",
        "steps[2].with.message: missing required argument `message`",
        "steps[2].with.timeout: a wait's timeout must be above zero",
        "steps[2].with.on_timeout: expected `approve` or `reject`, found `maybe`",
        "steps[3].with.timeout: `900h` is longer than the longest wait, 30 days (720h)",
        "steps[4].with.colour: unknown argument `colour`",
        "steps[4].with.event: the event `done` is waited for at steps[3] already",
        "steps[5].with.event: `two words` is not an event name",
        "steps[6].with.approvers[0]: an approver is written in the file, not a template",
        "steps[6].with.approvers[1]: `TSK A` is not an access key id",
        "steps[6].with.approvers[2]: expected an access key id, found a number",
        "steps[6].with.approvers[4]: `TSKAUDIT` is listed twice",
        "steps[7].with.approvers: an empty list lets nobody decide",
        "steps[8].with.approvers: expected a list of access key ids, found",
        "steps[9].with.approvers: unknown argument `approvers`",
        "steps[10].with.approvers: 33 approvers; a step lists at most 32",
        "finally[0].action: `approval` may only be a step",
    ] {
        assert!(r.stderr.contains(expected), "{expected}\n{}", r.stderr);
    }
}

#[test]
fn the_dry_run_plan_lists_the_waits() {
    let r = run_text(FLOW, &["--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = r.report["steps"].as_array().cloned().unwrap_or_default();
    let actions: Vec<&str> = steps.iter().filter_map(|s| s["action"].as_str()).collect();
    assert!(
        actions.contains(&"approval") && actions.contains(&"wait_event"),
        "{}",
        r.report
    );
}
