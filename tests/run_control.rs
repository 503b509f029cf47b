//! Control constructs, templating, retries, timeouts and dry runs, run for
//! real through `tasuki run`.

mod support;

use serde_json::json;
use support::{Scratch, run_json, run_text, start_server};

#[test]
fn set_and_templates_keep_types_walk_paths_and_escape() {
    let r = run_text(
        r#"
version: 1
name: templates
params:
  count: 3
  tags: [red, green]
  user: {name: ann, roles: [admin]}
steps:
  - id: vars
    action: set
    with:
      n: ${params.count}
      list: ${params.tags}
      text: "count=${params.count} tags=${params.tags}"
      role: ${params.user.roles[0]}
      literal: "$${params.count} stays"
      spaced: "${ params.user.name }"
      check: ${params.count >= 3 && params.user.name == 'ann'}
  - id: reuse
    action: set
    with:
      from_step: ${steps.vars.output.role}
      from_var: ${list[1]}
"#,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let vars = &r.report["steps"]["vars"]["output"];
    assert_eq!(vars["n"], json!(3));
    assert_eq!(vars["list"], json!(["red", "green"]));
    assert_eq!(vars["text"], json!("count=3 tags=[\"red\",\"green\"]"));
    assert_eq!(vars["role"], json!("admin"));
    assert_eq!(vars["literal"], json!("${params.count} stays"));
    assert_eq!(vars["spaced"], json!("ann"));
    assert_eq!(vars["check"], json!(true));
    assert_eq!(
        r.report["steps"]["reuse"]["output"],
        json!({"from_step": "admin", "from_var": "green"})
    );
}

#[test]
fn param_flags_take_the_type_of_the_default() {
    let r = run_text(
        "version: 1\nname: p\nparams:\n  count: 1\n  flag: false\n  name: x\nsteps:\n  - id: s\n    action: set\n    with: {c: '${params.count}', f: '${params.flag}', n: '${params.name}'}\n",
        &[
            "--param",
            "count=42",
            "--param",
            "flag=true",
            "--param",
            "name=007",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.report["steps"]["s"]["output"],
        json!({"c": 42, "f": true, "n": "007"})
    );
    assert_eq!(
        r.report["params"],
        json!({"count": 42, "flag": true, "name": "007"})
    );
}

#[test]
fn undefined_reference_at_run_time_names_the_step_and_expression() {
    let r = run_text(
        r#"
version: 1
name: undefined
steps:
  - id: data
    action: set
    with: {obj: {a: 1}}
  - id: use
    action: log
    with: {message: "${steps.data.output.obj.b}"}
"#,
        &[],
    );
    assert_eq!(r.code, 1);
    let err = &r.report["error"];
    assert_eq!(err["step_id"], "use");
    assert_eq!(err["code"], "template_error");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("steps.data.output.obj.b") && message.contains("no field `b`"),
        "{message}"
    );
}

#[test]
fn if_skips_steps_whose_condition_is_false() {
    let r = run_text(
        r#"
version: 1
name: conditions
params: {mode: fast}
steps:
  - id: yes
    if: ${params.mode == 'fast'}
    action: log
    with: {message: ran}
  - id: no
    if: ${params.mode != 'fast'}
    action: log
    with: {message: skipped}
  - id: after
    action: set
    with: {skipped_status: "${steps.no.status}"}
"#,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["steps"]["yes"]["status"], "success");
    assert_eq!(r.report["steps"]["no"]["status"], "skipped");
    assert_eq!(
        r.report["steps"]["after"]["output"]["skipped_status"],
        "skipped"
    );
}

#[test]
fn for_each_binds_item_and_index_and_collects_outputs() {
    let r = run_text(
        r#"
version: 1
name: loop
steps:
  - id: users
    action: set
    with: {names: [ann, bob, cy]}
  - id: each
    action: for_each
    with: {items: "${names}", as: who, index_as: i}
    steps:
      - id: greet
        action: shell.run
        with: {argv: [echo, "${i}:${who}"]}
"#,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let outputs = r.report["steps"]["each"]["output"].as_array().unwrap();
    let lines: Vec<&str> = outputs
        .iter()
        .map(|o| o["greet"]["stdout"].as_str().unwrap())
        .collect();
    assert_eq!(lines, ["0:ann", "1:bob", "2:cy"]);
}

#[test]
fn try_catch_binds_error_and_on_error_runs_on_failure() {
    let r = run_text(
        r#"
version: 1
name: errors
steps:
  - id: guarded
    action: try
    steps:
      - id: bad
        action: fail
        with: {message: first failure, code: e1}
    catch:
      - id: handle
        action: set
        with: {caught: "${error.code}: ${error.message} in ${error.step_id}"}
  - id: fatal
    action: fail
    with: {message: second failure}
on_error:
  - id: report
    action: log
    with: {message: "on_error saw ${error.step_id}: ${error.message}"}
"#,
        &[],
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.report["steps"]["guarded"]["status"], "success");
    assert_eq!(r.report["steps"]["guarded"]["output"]["caught"], true);
    assert_eq!(r.report["steps"]["bad"]["status"], "error");
    assert_eq!(
        r.report["steps"]["handle"]["output"]["caught"],
        "e1: first failure in bad"
    );
    assert_eq!(
        r.report["steps"]["report"]["output"]["message"],
        "on_error saw fatal: second failure"
    );
    assert_eq!(r.report["error"]["step_id"], "fatal");
}

#[test]
fn on_error_does_not_run_on_success() {
    let r = run_text(
        "version: 1\nname: ok\nsteps:\n  - id: a\n    action: log\n    with: {message: fine}\non_error:\n  - id: cleanup\n    action: log\n    with: {message: '${error.message}'}\n",
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["steps"]["cleanup"]["status"], "skipped");
}

#[test]
fn continue_on_error_and_save_as() {
    let r = run_text(
        r#"
version: 1
name: continue
steps:
  - id: flaky
    action: shell.run
    continue_on_error: true
    with: {argv: [sh, -c, "exit 9"]}
  - id: next
    action: shell.run
    save_as: answer
    with: {argv: [echo, "42"]}
  - id: use
    action: set
    with: {got: "${answer.stdout}", flaky_status: "${steps.flaky.status}", code: "${steps.flaky.error.code}"}
"#,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["steps"]["flaky"]["status"], "error");
    assert_eq!(
        r.report["steps"]["use"]["output"],
        json!({"got": "42", "flaky_status": "error", "code": "exit_code"})
    );
    assert!(r.stderr.contains("continue_on_error"), "{}", r.stderr);
}

#[test]
fn retry_repeats_a_failing_step_until_it_succeeds() {
    let server = start_server();
    let r = run_text(
        &format!(
            r#"
version: 1
name: retry
steps:
  - id: call
    action: http.request
    retry: {{times: 4, delay: 10ms, max_delay: 50ms}}
    with: {{url: "{}"}}
"#,
            server.url("/flaky/3")
        ),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["steps"]["call"]["output"]["body"], "ok after 3");
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(r.stderr.matches("retrying in").count(), 2, "{}", r.stderr);
}

#[test]
fn retry_gives_up_after_its_count() {
    let server = start_server();
    let r = run_text(
        &format!(
            "version: 1\nname: r\nsteps:\n  - id: call\n    action: http.request\n    retry: 2\n    with: {{url: \"{}\"}}\n",
            server.url("/flaky/100")
        ),
        &[],
    );
    assert_eq!(r.code, 1);
    assert_eq!(
        server.hits.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one attempt and two retries"
    );
    assert_eq!(r.report["steps"]["call"]["error"]["code"], "http_status");
}

#[test]
fn step_timeout_stops_a_long_step() {
    let started = std::time::Instant::now();
    let r = run_text(
        "version: 1\nname: t\nsteps:\n  - id: long\n    action: shell.run\n    timeout: 300ms\n    with: {argv: [sleep, '30']}\n",
        &[],
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.report["steps"]["long"]["error"]["code"], "timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn workflow_timeout_fails_the_session_and_runs_on_error() {
    let r = run_text(
        "version: 1\nname: t\ntimeout: 300ms\nsteps:\n  - id: nap\n    action: sleep\n    with: {duration: 30s}\n  - id: after\n    action: log\n    with: {message: never}\non_error:\n  - id: cleanup\n    action: log\n    with: {message: \"cleaning up after ${error.code}\"}\n",
        &[],
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.report["status"], "error");
    assert_eq!(r.report["error"]["code"], "timeout");
    // The interrupted step failed; nobody cancelled it.
    assert_eq!(r.report["steps"]["nap"]["status"], "error");
    assert_eq!(r.report["steps"]["nap"]["error"]["code"], "timeout");
    assert_eq!(r.report["steps"]["after"]["status"], "skipped");
    assert_eq!(
        r.report["steps"]["cleanup"]["output"]["message"],
        "cleaning up after timeout"
    );
}

#[test]
fn a_skipped_or_failed_step_binds_its_save_as_to_null() {
    let r = run_text(
        r#"
version: 1
name: nulls
steps:
  - id: maybe
    if: ${false}
    action: shell.run
    save_as: skipped_out
    with: {argv: [echo, hi]}
  - id: broken
    action: shell.run
    continue_on_error: true
    save_as: failed_out
    with: {argv: [sh, -c, "exit 2"]}
  - id: use
    action: set
    with: {a: "${skipped_out}", b: "${failed_out}", c: "${steps.maybe.output}"}
"#,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.report["steps"]["use"]["output"],
        json!({"a": null, "b": null, "c": null})
    );
}

#[test]
fn dry_run_executes_nothing_and_resolves_what_it_can() {
    let scratch = Scratch::new();
    let marker = scratch.path().join("created-by-step");
    let file = scratch.write(
        "flow.yaml",
        &format!(
            r#"
version: 1
name: dry
params:
  target: "{}"
  password: {{secret: true, default: sup3r-s3cret}}
steps:
  - id: touch
    action: shell.run
    with: {{argv: [touch, "${{params.target}}"]}}
  - id: later
    action: log
    with: {{message: "exit ${{steps.touch.output.exit_code}} pw ${{params.password}}"}}
"#,
            marker.display()
        ),
    );
    let out = support::tasuki()
        .current_dir(scratch.path())
        .args(["run", "--dry-run", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!marker.exists(), "dry run ran a step");
    assert!(
        !scratch.path().join("tasuki-artifacts").exists(),
        "dry run created the artifacts dir"
    );
    assert!(
        stdout.contains(&marker.display().to_string()),
        "params were not resolved: {stdout}"
    );
    assert!(
        stdout.contains("${steps.touch.output.exit_code}"),
        "run-time references should stay as written: {stdout}"
    );
    assert!(
        !stdout.contains("sup3r-s3cret") && stdout.contains("pw ***"),
        "{stdout}"
    );

    // The same workflow, run for real, does create the file.
    let r = run_json(scratch.path(), &file, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(marker.exists());
}

#[test]
fn json_workflows_run_like_yaml_ones() {
    let scratch = Scratch::new();
    let file = scratch.write(
        "flow.json",
        r#"{"version": 1, "name": "json", "params": {"n": 2},
            "steps": [{"id": "s", "action": "set", "with": {"double": "${params.n}${params.n}"}}]}"#,
    );
    let r = run_json(scratch.path(), &file, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["steps"]["s"]["output"]["double"], "22");
}

#[test]
fn report_has_the_documented_shape() {
    let r = run_text(
        "version: 1\nname: shape\nsteps:\n  - id: a\n    action: log\n    with: {message: hi}\n",
        &[],
    );
    assert_eq!(r.code, 0);
    for key in [
        "status",
        "started_at",
        "ended_at",
        "duration_ms",
        "params",
        "steps",
        "error",
    ] {
        assert!(
            r.report.get(key).is_some(),
            "report lacks {key}: {}",
            r.report
        );
    }
    let step = &r.report["steps"]["a"];
    for key in [
        "status",
        "started_at",
        "ended_at",
        "duration_ms",
        "output",
        "error",
    ] {
        assert!(step.get(key).is_some(), "step record lacks {key}: {step}");
    }
    // Only the report goes to stdout; progress goes to stderr.
    assert!(r.stdout.trim_start().starts_with('{') && r.stdout.trim_end().ends_with('}'));
}

#[test]
fn text_output_prints_plain_progress_lines_when_not_a_terminal() {
    let scratch = Scratch::new();
    let file = scratch.write(
        "flow.yaml",
        "version: 1\nname: text\nsteps:\n  - id: a\n    action: log\n    with: {message: hello}\n",
    );
    let out = support::tasuki()
        .current_dir(scratch.path())
        .args(["run", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout.contains("→ a (log)")
            && stdout.contains("a │ hello")
            && stdout.contains("✓ success"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\u{1b}'),
        "escape codes in non-terminal output: {stdout:?}"
    );
}

#[test]
fn schema_command_prints_a_json_schema_with_per_action_arguments() {
    let out = support::tasuki().arg("schema").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema["properties"]["steps"].is_object());
    let text = schema.to_string();
    for needle in [
        "shell.run",
        "http.request",
        "ok_exit_codes",
        "expect_status",
        "single_process_mode",
        "accept_undeclared_params",
    ] {
        assert!(text.contains(needle), "schema lacks {needle}");
    }
}

#[test]
fn outputs_are_rendered_on_success_with_secrets_masked() {
    let r = run_text(
        r#"
version: 1
name: outputs
params:
  who: ann
  token: {secret: true, default: s3cr3t-out}
steps:
  - id: sum
    action: set
    with: {n: 3, items: [a, b]}
outputs:
  total: ${steps.sum.output.n}
  summary: "${params.who} has ${steps.sum.output.n}"
  nested: {first: "${steps.sum.output.items[0]}", token: "${params.token}"}
"#,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.report["outputs"],
        json!({
            "total": 3,
            "summary": "ann has 3",
            "nested": {"first": "a", "token": "***"},
        })
    );
    assert!(!r.stdout.contains("s3cr3t-out") && !r.stderr.contains("s3cr3t-out"));

    // An output that cannot be rendered fails the session, saying which.
    let r = run_text(
        r#"
version: 1
name: outputs-fail
steps:
  - id: sum
    action: set
    with: {n: 3}
outputs:
  missing: ${steps.sum.output.nope}
"#,
        &[],
    );
    assert_ne!(r.code, 0);
    assert_eq!(r.report["status"], "error", "{}", r.report);
    assert_eq!(r.report["error"]["code"], "outputs_failed", "{}", r.report);
    assert!(
        r.report["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("outputs.missing")),
        "{}",
        r.report
    );
    assert!(r.report.get("outputs").is_none(), "{}", r.report);
}

/// `--param` with a name the workflow does not declare: refused, unless the
/// workflow takes undeclared params; then bound as text and read as
/// `${params.NAME}`, and a reference to one not given fails its step when
/// it runs (validation cannot know).
#[test]
fn undeclared_params_need_the_opt_in_and_are_checked_when_the_step_runs() {
    const FLOW: &str = r#"
version: 1
name: undeclared
params:
  who: ann
steps:
  - id: greet
    action: set
    with: {who: "${params.who}", extra: "${params.var1}"}
"#;
    // Without the opt-in the reference itself is refused.
    let r = run_text(FLOW, &["--param", "var1=hello"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no param named `var1`"), "{}", r.stderr);
    let plain = FLOW.replace(", extra: \"${params.var1}\"", "");
    let r = run_text(&plain, &["--param", "var1=hello"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("unknown param `var1`"), "{}", r.stderr);

    let open = FLOW.replace("params:\n", "accept_undeclared_params: true\nparams:\n");
    let r = run_text(&open, &["--param", "var1=3"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.report["steps"]["greet"]["output"],
        json!({"who": "ann", "extra": "3"})
    );
    let r = run_text(&open, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let err = &r.report["error"];
    assert_eq!(err["step_id"], "greet", "{}", r.stdout);
    assert_eq!(err["code"], "template_error", "{}", r.stdout);
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.contains("no field `var1`"), "{message}");
    let r = run_text(&open, &["--param", "9x=1"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not an identifier"), "{}", r.stderr);
}

#[test]
fn limits_steps_ends_a_loop_that_runs_too_long_but_not_its_cleanup() {
    let r = run_text(
        "version: 1\nname: t\nlimits: {steps: 5}\nsteps:\n  - id: each\n    action: for_each\n    with: {items: [1, 2, 3, 4, 5, 6, 7, 8]}\n    steps:\n      - id: tick\n        action: log\n        with: {message: \"${item}\"}\nfinally:\n  - id: tidy\n    action: log\n    with: {message: done}\n",
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["error"]["code"], "step_limit", "{}", r.report);
    let message = r.report["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("limits.steps"), "{message}");
    assert_eq!(r.report["steps"]["tidy"]["status"], "success");
}

#[test]
fn limits_output_bytes_fails_outputs_that_are_too_large() {
    let r = run_text(
        "version: 1\nname: t\nlimits: {output_bytes: 20}\nsteps:\n  - id: a\n    action: log\n    with: {message: hi}\noutputs:\n  text: \"a rather long output value\"\n",
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.report["error"]["code"], "outputs_failed");
    let message = r.report["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("limits.output_bytes is 20"), "{message}");
}

#[test]
fn bad_limits_are_refused_with_their_paths() {
    let r = run_text(
        "version: 1\nname: t\nlimits: {steps: 0, log_bytes: lots, wall_time: 3}\nsteps:\n  - id: a\n    action: log\n    with: {message: hi}\n",
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    for expected in ["limits.steps", "limits.log_bytes", "limits.wall_time"] {
        assert!(
            r.stderr.contains(expected),
            "`{expected}` missing: {}",
            r.stderr
        );
    }
}
