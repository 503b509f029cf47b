//! Action packs run for real (docs/action-packs.md): `tasuki run --packs`
//! starts the pack in `tests/packs/probe`, a Python program that behaves
//! well or badly on request, and each test checks what the robot made of it.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{
    RunResult, Scratch, alive, eventually, repo_root, run_json, signal, spawn_run, tasuki,
    wait_with_limit,
};

fn probe_packs() -> PathBuf {
    repo_root().join("tests/packs")
}

fn run_with_packs(scratch: &Scratch, workflow: &str, extra: &[&str]) -> RunResult {
    let file = scratch.write("flow.yaml", workflow);
    let packs = probe_packs();
    let mut args = vec!["--packs", packs.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_json(scratch.path(), &file, &args)
}

fn one_step(action: &str, with: &str) -> String {
    format!("version: 1\nname: probe\nsteps:\n  - id: s\n    action: {action}\n    with: {with}\n")
}

fn error_of(r: &RunResult, step: &str) -> (String, String) {
    let e = &r.report["steps"][step]["error"];
    (
        e["code"].as_str().unwrap_or_default().to_string(),
        e["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// Both pids the `hang` action wrote, once it has.
fn hang_pids(scratch: &Scratch) -> (u32, u32) {
    let path = scratch.path().join("pids.txt");
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(&path)
            .is_ok_and(|s| s.ends_with('\n'))),
        "the pack never wrote pids.txt"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let mut pids = text.split_whitespace().map(|p| p.parse::<u32>().unwrap());
    (pids.next().unwrap(), pids.next().unwrap())
}

#[test]
fn a_pack_call_logs_saves_an_artifact_and_answers() {
    let scratch = Scratch::new();
    let r = run_with_packs(&scratch, &one_step("probe.hello", "{ name: world }"), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["steps"]["s"]["output"]["greeting"], "hello, world");
    assert!(r.stderr.contains("hello from the pack"), "{}", r.stderr);
    assert!(r.stderr.contains("warn: a line on stderr"), "{}", r.stderr);
    assert!(r.stderr.contains("artifact: `hello.txt`"), "{}", r.stderr);
    let artifact =
        std::fs::read_to_string(scratch.path().join("tasuki-artifacts/hello.txt")).unwrap();
    assert!(
        artifact.starts_with("hello, world (session local-")
            && artifact.contains("step s, attempt 1"),
        "{artifact}"
    );
    // The session ended the pack: nothing of it is left.
    let pid = r.report["steps"]["s"]["output"]["pid"].as_u64().unwrap() as u32;
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "pack {pid} outlived the session"
    );
}

#[test]
fn state_is_kept_between_the_steps_of_a_session() {
    let scratch = Scratch::new();
    let workflow = r#"
version: 1
name: state
steps:
  - id: put
    action: probe.remember
    with: { value: kept between steps }
  - id: between
    action: log
    with: { message: a built-in step in between }
  - id: get
    action: probe.recall
"#;
    let r = run_with_packs(&scratch, workflow, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(steps["get"]["output"]["value"], "kept between steps");
    assert_eq!(steps["get"]["output"]["pid"], steps["put"]["output"]["pid"]);
}

#[test]
fn a_pack_that_crashes_mid_step_fails_it_with_its_stderr_and_starts_again_next_time() {
    let scratch = Scratch::new();
    let workflow = r#"
version: 1
name: crash
steps:
  - id: risky
    action: try
    steps:
      - id: crash
        action: probe.crash
    catch:
      - id: noted
        action: log
        with: { message: "caught ${error.code}" }
  - id: after
    action: probe.hello
    with: { name: again }
"#;
    let r = run_with_packs(&scratch, workflow, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (code, message) = error_of(&r, "crash");
    assert_eq!(code, "pack_crashed");
    assert!(message.contains("exited with code 3"), "{message}");
    assert!(
        message.contains("ValueError: the probe crashed on purpose"),
        "{message}"
    );
    assert!(r.stderr.contains("caught pack_crashed"), "{}", r.stderr);
    assert_eq!(
        r.report["steps"]["after"]["output"]["greeting"],
        "hello, again"
    );
    assert!(
        r.stderr
            .contains("again (the previous process was ended: pack_crashed"),
        "{}",
        r.stderr
    );
}

#[test]
fn protocol_breaches_fail_the_step_with_a_message_for_the_packs_author() {
    for (action, code, expected) in [
        (
            "probe.junk",
            "pack_protocol_error",
            "not a protocol message (expected ident): `this is not json`",
        ),
        (
            "probe.unknown_id",
            "pack_protocol_error",
            "request `not-1`, which is not open (the open request is `1`)",
        ),
        (
            "probe.twice",
            "pack_protocol_error",
            "it answered request `1` twice",
        ),
        ("probe.flood", "pack_output_too_large", "over 16 MiB"),
        (
            "probe.bad_output",
            "pack_bad_output",
            "output.greeting: expected a string, found a number",
        ),
        ("probe.fail", "probe_failed", "failed as asked"),
    ] {
        let scratch = Scratch::new();
        let started = Instant::now();
        let r = run_with_packs(&scratch, &one_step(action, "{}"), &[]);
        assert_eq!(r.code, 1, "{action}: {}", r.stderr);
        let (got_code, message) = error_of(&r, "s");
        assert_eq!(got_code, code, "{action}: {message}");
        assert!(message.contains(expected), "{action}: {message}");
        // None of them waits for a timeout: each is seen as it happens.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{action} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn an_artifact_must_be_a_regular_file_directly_in_the_artifacts_folder() {
    for (kind, expected) in [
        (
            "link",
            "`link.txt` is not a regular file (a link or a folder)",
        ),
        (
            "subfolder",
            "`sub/x.txt` is not a plain file name in the artifacts folder",
        ),
        (
            "outside",
            "`/etc/hostname` is not directly in the artifacts folder",
        ),
    ] {
        let scratch = Scratch::new();
        let r = run_with_packs(
            &scratch,
            &one_step("probe.bad_artifact", &format!("{{ kind: {kind} }}")),
            &[],
        );
        let (code, message) = error_of(&r, "s");
        assert_eq!(code, "pack_protocol_error", "{kind}: {message}");
        assert!(message.contains(expected), "{kind}: {message}");
    }
}

#[test]
fn a_pack_error_code_that_is_not_plain_is_a_protocol_error() {
    let scratch = Scratch::new();
    let r = run_with_packs(
        &scratch,
        &one_step("probe.fail", "{ code: 'Not Plain' }"),
        &[],
    );
    let (code, message) = error_of(&r, "s");
    assert_eq!(code, "pack_protocol_error", "{message}");
    assert!(message.contains("has the code `Not Plain`"), "{message}");
}

#[test]
fn a_hung_pack_times_out_and_leaves_no_process_behind() {
    let scratch = Scratch::new();
    let workflow =
        "version: 1\nname: hang\nsteps:\n  - id: s\n    action: probe.hang\n    timeout: 2s\n";
    let r = run_with_packs(&scratch, workflow, &["--cancel-grace", "1s"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(error_of(&r, "s").0, "timeout", "{}", r.stderr);
    let (pack, grandchild) = hang_pids(&scratch);
    assert!(!alive(pack), "pack {pack} survived");
    assert!(!alive(grandchild), "its child {grandchild} survived");
    assert!(
        r.stderr.contains("did not answer the cancel"),
        "{}",
        r.stderr
    );
}

#[test]
fn cancelling_the_session_ends_the_pack_and_its_children() {
    let scratch = Scratch::new();
    let packs = probe_packs();
    let child = spawn_run(
        &scratch,
        &one_step("probe.hang", "{}"),
        &["--packs", packs.to_str().unwrap()],
    );
    let (pack, grandchild) = hang_pids(&scratch);
    let cancelled_at = Instant::now();
    signal(child.id(), "INT");
    let r = wait_with_limit(child, Duration::from_secs(15));
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert!(
        eventually(Duration::from_secs(5), || !alive(pack)
            && !alive(grandchild)),
        "pack {pack} or its child {grandchild} survived"
    );
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        cancelled_at.elapsed()
    );
}

#[test]
fn a_pack_that_answers_the_cancel_keeps_its_state_after_a_timeout() {
    let scratch = Scratch::new();
    let workflow = r#"
version: 1
name: cooperative
steps:
  - id: put
    action: probe.remember
    with: { value: survives }
  - id: slow
    action: try
    steps:
      - id: wait
        action: probe.cooperative
        timeout: 1s
    catch:
      - id: noted
        action: log
        with: { message: "timed out as planned" }
  - id: get
    action: probe.recall
"#;
    let r = run_with_packs(&scratch, workflow, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(error_of(&r, "wait").0, "timeout");
    let steps = &r.report["steps"];
    assert_eq!(steps["get"]["output"]["value"], "survives");
    assert_eq!(steps["get"]["output"]["pid"], steps["put"]["output"]["pid"]);
    assert!(
        !r.stderr.contains("did not answer the cancel"),
        "{}",
        r.stderr
    );
}

#[test]
fn secret_arguments_and_params_are_masked_in_everything_the_pack_sends_back() {
    let scratch = Scratch::new();
    scratch.write("secrets.json", r#"{"user": "robot-user-s3cret"}"#);
    let workflow = r#"
version: 1
name: secrets
params:
  user: { secret: true }
steps:
  - id: s
    action: probe.login
    with: { user: "${params.user}", password: literal-hunter2 }
"#;
    let r = run_with_packs(&scratch, workflow, &["--secrets-file", "secrets.json"]);
    assert_eq!(error_of(&r, "s").0, "login_failed", "{}", r.stderr);
    let everything = format!("{}{}", r.stdout, r.stderr);
    assert!(!everything.contains("hunter2"), "{everything}");
    assert!(everything.contains("logging in with ***"), "{everything}");
    assert!(everything.contains("stderr also says ***"), "{everything}");
    assert!(everything.contains("wrong password ***"), "{everything}");

    let r = run_with_packs(
        &scratch,
        workflow,
        &["--secrets-file", "secrets.json", "--dry-run"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let everything = format!("{}{}", r.stdout, r.stderr);
    assert!(
        !everything.contains("hunter2") && !everything.contains("s3cret"),
        "{everything}"
    );
    let plan: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(plan["steps"][0]["with"]["password"], "***", "{}", r.stdout);
    assert_eq!(plan["steps"][0]["with"]["user"], "***", "{}", r.stdout);
}

#[test]
fn pack_actions_are_validated_against_their_schemas_before_anything_runs() {
    let scratch = Scratch::new();
    let workflow = "version: 1\nname: bad\nsteps:\n  - id: s\n    action: probe.hello\n    with: { nme: typo }\n  - id: t\n    action: probe.nope\n";
    let r = run_with_packs(&scratch, workflow, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("flow.yaml:6:"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("steps[0].with.nme: unknown argument `nme`; expected one of: name"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("steps[0].with.name: missing required argument `name`"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("unknown action `probe.nope`"),
        "{}",
        r.stderr
    );
    assert!(!scratch.path().join("tasuki-artifacts").exists());
}

#[test]
fn a_broken_manifest_is_named_and_leaves_the_other_packs_working() {
    let scratch = Scratch::new();
    let packs = scratch.path().join("packs");
    let good = packs.join("probe");
    let broken = packs.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::create_dir_all(&good).unwrap();
    for file in ["tasuki-pack.yaml", "probe.py"] {
        std::fs::copy(probe_packs().join("probe").join(file), good.join(file)).unwrap();
    }
    std::fs::write(
        broken.join("tasuki-pack.yaml"),
        "manifest: 1\nname: broken\nversion: 1\ncommand: [x]\nactions:\n  go:\n    args: { type: object, properties: { a: { type: strng } } }\n",
    )
    .unwrap();

    let out = tasuki()
        .args([
            "packs",
            "list",
            "--config",
            "/nonexistent/agent.toml",
            "--packs",
        ])
        .arg(&packs)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stdout.contains("probe 0.1.0") && stdout.contains("probe.hello"),
        "{stdout}"
    );
    let manifest = broken.join("tasuki-pack.yaml");
    assert!(
        stderr.contains(&format!("{}:3:", manifest.display()))
            && stderr.contains("version: expected a string"),
        "{stderr}"
    );
    assert!(
        stderr.contains("actions.go.args.properties.a.type: unknown type \"strng\""),
        "{stderr}"
    );

    let flow = scratch.write("flow.yaml", &one_step("probe.hello", "{ name: still }"));
    let r = run_json(scratch.path(), &flow, &["--packs", packs.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("warning: action pack left out"),
        "{}",
        r.stderr
    );
}

#[test]
fn packs_check_starts_the_pack_runs_its_self_test_and_shuts_it_down() {
    let out = tasuki()
        .args(["packs", "check"])
        .arg(probe_packs().join("probe"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "manifest ok",
        "started: `ready` after",
        "probe.hello: ok",
        "shutdown: exited with code 0",
        "pack check passed",
    ] {
        assert!(stdout.contains(expected), "{expected} in {stdout}");
    }

    let scratch = Scratch::new();
    scratch.write(
        "tasuki-pack.yaml",
        "manifest: 1\nname: dead\nversion: '1'\ncommand: [sh, -c, 'echo the pack needs a licence >&2; exit 4']\nactions:\n  go:\n    args: { type: object }\n",
    );
    let out = tasuki()
        .args(["packs", "check"])
        .arg(scratch.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("pack_start_failed"), "{stdout}");
    assert!(
        stdout.contains("exited with code 4 before writing `ready`"),
        "{stdout}"
    );
    assert!(stdout.contains("the pack needs a licence"), "{stdout}");
}

#[test]
fn a_pack_whose_program_is_missing_fails_its_step_saying_so() {
    let scratch = Scratch::new();
    let pack = scratch.path().join("packs/ghost");
    std::fs::create_dir_all(&pack).unwrap();
    std::fs::write(
        pack.join("tasuki-pack.yaml"),
        "manifest: 1\nname: ghost\nversion: '1'\ncommand: [no-such-program-tasuki]\nactions:\n  go:\n    args: { type: object }\n",
    )
    .unwrap();
    let flow = scratch.write("flow.yaml", &one_step("ghost.go", "{}"));
    let r = run_json(scratch.path(), &flow, &["--packs", pack.to_str().unwrap()]);
    let (code, message) = error_of(&r, "s");
    assert_eq!(code, "pack_start_failed", "{message}");
    assert!(
        message.contains("cannot run `no-such-program-tasuki`"),
        "{message}"
    );
}

#[test]
fn the_schema_lists_pack_actions() {
    let out = tasuki()
        .arg("schema")
        .arg("--packs")
        .arg(probe_packs())
        .output()
        .unwrap();
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = schema.to_string();
    assert!(
        text.contains("probe.hello") && text.contains("probe.login"),
        "{text}"
    );
}

#[test]
fn the_python_helper_and_the_shipped_packs_pass_their_own_tests() {
    for suite in ["packs/python", "packs/excel", "examples/packs/shout"] {
        let out = std::process::Command::new("python3")
            .args(["-m", "unittest", "discover", "-s", suite])
            .current_dir(repo_root())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("start python3");
        let report = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{suite}:\n{report}");
        // unittest's summary: "Ran N tests" then "OK"; a skip would say so.
        assert!(
            report.contains("\nOK\n") && !report.contains("skipped"),
            "{suite}:\n{report}"
        );
    }
}

#[test]
fn a_pack_written_in_shell_runs_from_a_workflow() {
    let scratch = Scratch::new();
    let workflow = r#"
version: 1
name: shout
steps:
  - id: loud
    action: shout.upper
    with: { text: "hello from sh" }
  - id: caught
    action: try
    steps:
      - id: fails
        action: shout.fail
    catch:
      - id: noted
        action: log
        with: { message: "caught ${error.code}" }
"#;
    let file = scratch.write("flow.yaml", workflow);
    let shout = repo_root().join("examples/packs/shout");
    let r = run_json(scratch.path(), &file, &["--packs", shout.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["steps"]["loud"]["output"]["text"], "HELLO FROM SH");
    assert!(r.stderr.contains("caught shouted_failure"), "{}", r.stderr);
}
