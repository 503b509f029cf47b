//! The built-in actions, run for real through `tasuki run`: real child
//! processes and a real HTTP server on loopback.

mod support;

use serde_json::json;
use support::{Scratch, run_json, run_text, start_server};

#[test]
fn shell_argv_streams_lines_and_reports_exit_code_and_tails() {
    let r = run_text(
        r#"
version: 1
name: shell
steps:
  - id: both
    action: shell.run
    with:
      argv: [sh, -c, "echo one; echo two; echo oops >&2"]
"#,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = &r.report["steps"]["both"]["output"];
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["stdout"], "one\ntwo");
    assert_eq!(out["stderr"], "oops");
    // Each line is a log event, shown live on stderr in json mode.
    for line in ["both │ one", "both │ two", "both │ warn: oops"] {
        assert!(r.stderr.contains(line), "missing {line:?} in {}", r.stderr);
    }
}

#[test]
fn shell_argv_is_never_interpreted_by_a_shell() {
    let r = run_text(
        r#"
version: 1
name: literal
params:
  evil: "$(echo injected); echo also"
steps:
  - id: echo
    action: shell.run
    with:
      argv: [echo, "${params.evil}"]
"#,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.report["steps"]["echo"]["output"]["stdout"],
        "$(echo injected); echo also"
    );
}

#[test]
fn shell_script_runs_with_the_named_shell_cwd_and_env() {
    let scratch = Scratch::new();
    std::fs::create_dir(scratch.path().join("sub")).unwrap();
    let file = scratch.write(
        "flow.yaml",
        r#"
version: 1
name: script
steps:
  - id: s
    action: shell.run
    with:
      shell: bash
      cwd: sub
      env: {GREETING: hi}
      script: |
        set -e
        echo "$GREETING from $(basename "$PWD") in bash $${BASH_VERSINFO[0]}" | cut -d' ' -f1-4
"#,
    );
    let r = run_json(scratch.path(), &file, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["steps"]["s"]["output"]["stdout"], "hi from sub in");
}

#[test]
fn shell_nonzero_exit_fails_unless_listed_in_ok_exit_codes() {
    let r = run_text(
        r#"
version: 1
name: codes
steps:
  - id: tolerated
    action: shell.run
    with: {argv: [sh, -c, "exit 3"], ok_exit_codes: [0, 3]}
  - id: fails
    action: shell.run
    with: {argv: [sh, -c, "echo broken >&2; exit 4"]}
"#,
        &[],
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.report["steps"]["tolerated"]["status"], "success");
    assert_eq!(r.report["steps"]["tolerated"]["output"]["exit_code"], 3);
    let err = &r.report["steps"]["fails"]["error"];
    assert_eq!(err["code"], "exit_code");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("exited with code 4") && message.contains("broken"),
        "{message}"
    );
    assert_eq!(r.report["error"]["step_id"], "fails");
}

#[test]
fn shell_missing_program_is_a_clear_error() {
    let r = run_text(
        "version: 1\nname: x\nsteps:\n  - id: nope\n    action: shell.run\n    with: {argv: [definitely-not-a-program-4711]}\n",
        &[],
    );
    assert_eq!(r.code, 1);
    let err = &r.report["steps"]["nope"]["error"];
    assert_eq!(err["code"], "spawn_failed");
    assert!(
        err["message"].as_str().unwrap().contains("no such program"),
        "{err}"
    );
}

#[test]
fn shell_long_lines_are_cut_with_a_marker() {
    let r = run_text(
        r#"
version: 1
name: long
steps:
  - id: long
    action: shell.run
    with: {argv: [sh, -c, "head -c 100000 /dev/zero | tr '\\0' 'a'; echo; echo after"]}
"#,
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let stdout = r.report["steps"]["long"]["output"]["stdout"]
        .as_str()
        .unwrap();
    let first = stdout.lines().next().unwrap();
    assert!(
        first.len() < 20_000,
        "line was not cut: {} bytes",
        first.len()
    );
    assert!(first.ends_with("[line truncated]"));
    assert_eq!(stdout.lines().nth(1), Some("after"));
}

#[test]
fn http_get_parses_json_bodies_and_keeps_text_bodies() {
    let server = start_server();
    let r = run_text(
        &format!(
            r#"
version: 1
name: http
steps:
  - id: fetch
    action: http.request
    with: {{url: "{json}"}}
  - id: text
    action: http.request
    with: {{url: "{text}"}}
  - id: first
    action: log
    with: {{message: "${{steps.fetch.output.body.items[1].name}}"}}
"#,
            json = server.url("/json"),
            text = server.url("/text")
        ),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let fetch = &r.report["steps"]["fetch"]["output"];
    assert_eq!(fetch["status"], 200);
    assert_eq!(fetch["body"]["items"][0], json!({"name": "alpha", "n": 1}));
    assert!(
        fetch["headers"]["content-type"]
            .as_str()
            .unwrap()
            .contains("json")
    );
    assert_eq!(
        r.report["steps"]["text"]["output"]["body"],
        "plain text body"
    );
    assert_eq!(r.report["steps"]["first"]["output"]["message"], "beta");
}

#[test]
fn http_post_sends_method_headers_query_and_json() {
    let server = start_server();
    let r = run_text(
        &format!(
            r#"
version: 1
name: post
steps:
  - id: post
    action: http.request
    with:
      method: POST
      url: "{url}"
      headers: {{X-Robot: tasuki}}
      query: {{page: 2, q: "a b"}}
      json: {{hello: [1, 2]}}
  - id: put
    action: http.request
    with: {{method: PUT, url: "{url}", body: "raw text"}}
"#,
            url = server.url("/echo")
        ),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let body = &r.report["steps"]["post"]["output"]["body"];
    assert_eq!(body["method"], "POST");
    assert_eq!(body["headers"]["x-robot"], "tasuki");
    assert_eq!(body["query"], json!({"page": "2", "q": "a b"}));
    assert_eq!(body["json"], json!({"hello": [1, 2]}));
    assert!(
        body["headers"]["content-type"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    let put = &r.report["steps"]["put"]["output"]["body"];
    assert_eq!(put["method"], "PUT");
    assert_eq!(put["body"], "raw text");
}

#[test]
fn http_status_outside_expectations_fails_and_expect_status_accepts_it() {
    let server = start_server();
    let r = run_text(
        &format!(
            r#"
version: 1
name: status
steps:
  - id: expected
    action: http.request
    with: {{url: "{nf}", expect_status: [404]}}
  - id: unexpected
    action: http.request
    with: {{url: "{err}"}}
"#,
            nf = server.url("/status/404"),
            err = server.url("/status/500")
        ),
        &[],
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.report["steps"]["expected"]["status"], "success");
    assert_eq!(r.report["steps"]["expected"]["output"]["status"], 404);
    let err = &r.report["steps"]["unexpected"]["error"];
    assert_eq!(err["code"], "http_status");
    assert!(err["message"].as_str().unwrap().contains("500"), "{err}");
}

#[test]
fn http_response_over_the_size_cap_fails_the_step() {
    let server = start_server();
    let r = run_text(
        &format!(
            r#"
version: 1
name: big
steps:
  - id: whole
    action: http.request
    with: {{url: "{url}"}}
  - id: capped
    action: http.request
    with: {{url: "{url}", max_response_bytes: 1048576}}
"#,
            url = server.url("/big")
        ),
        &[],
    );
    assert_eq!(r.code, 1);
    // 3 MiB is under the 10 MiB default cap and comes through whole...
    assert_eq!(
        r.report["steps"]["whole"]["output"]["body"]
            .as_str()
            .unwrap()
            .len(),
        3 * 1024 * 1024
    );
    // ...but not under a 1 MiB cap.
    let err = &r.report["steps"]["capped"]["error"];
    assert_eq!(err["code"], "response_too_large", "{err}");
}

#[test]
fn http_connection_refused_is_a_clear_error() {
    // Bind and drop a listener to get a loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = run_text(
        &format!(
            "version: 1\nname: refused\nsteps:\n  - id: call\n    action: http.request\n    with: {{url: \"http://127.0.0.1:{port}/\"}}\n"
        ),
        &[],
    );
    assert_eq!(r.code, 1);
    let err = &r.report["steps"]["call"]["error"];
    assert_eq!(err["code"], "http_error");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{err}"
    );
}

#[test]
fn http_timeout_interrupts_a_slow_server() {
    let server = start_server();
    let started = std::time::Instant::now();
    let r = run_text(
        &format!(
            "version: 1\nname: slow\nsteps:\n  - id: slow\n    action: http.request\n    with: {{url: \"{}\", timeout: 300ms}}\n",
            server.url("/slow")
        ),
        &[],
    );
    assert_eq!(r.code, 1);
    assert_eq!(r.report["steps"]["slow"]["error"]["code"], "timeout");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the timeout did not interrupt the request"
    );
}

#[test]
fn log_sleep_and_fail_do_what_they_say() {
    let r = run_text(
        r#"
version: 1
name: control
steps:
  - id: note
    action: log
    with: {message: {a: 1}, level: warn}
  - id: nap
    action: sleep
    with: {duration: 100ms}
  - id: stop
    action: fail
    with: {message: "stopped on purpose", code: custom_code}
  - id: never
    action: log
    with: {message: unreachable}
"#,
        &[],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("note │ warn: {\"a\":1}"), "{}", r.stderr);
    let nap = &r.report["steps"]["nap"];
    assert_eq!(nap["output"]["slept_ms"], 100);
    assert!(nap["duration_ms"].as_u64().unwrap() >= 100);
    assert_eq!(
        r.report["error"],
        json!({"code": "custom_code", "message": "stopped on purpose", "step_id": "stop"})
    );
    assert_eq!(r.report["steps"]["never"]["status"], "skipped");
    assert_eq!(r.report["status"], "error");
}

#[test]
fn secrets_are_masked_in_logs_outputs_errors_and_params() {
    let scratch = Scratch::new();
    let secrets = scratch.write("secrets.json", r#"{"token": "tok-XYZ-123"}"#);
    let file = scratch.write(
        "flow.yaml",
        r#"
version: 1
name: secrets
params:
  password: {secret: true}
  token: {}
  user: alice
steps:
  - id: echo
    action: shell.run
    with:
      argv: [sh, -c, 'echo "user=$1 pw=$2 token=$3"; echo "pw again: $2" >&2', sh, "${params.user}", "${params.password}", "${params.token}"]
  - id: note
    action: log
    with: {message: "logging in with ${params.password}"}
  - id: boom
    action: fail
    with: {message: "bad password hunter2-long? no: ${params.password}"}
"#,
    );
    let r = run_json(
        scratch.path(),
        &file,
        &[
            "--param",
            "password=hunter2-long",
            "--secrets-file",
            secrets.to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 1);
    let everything = format!("{}{}", r.stdout, r.stderr);
    assert!(
        !everything.contains("hunter2-long"),
        "password leaked:\n{everything}"
    );
    assert!(
        !everything.contains("tok-XYZ-123"),
        "token leaked:\n{everything}"
    );
    assert_eq!(r.report["params"]["password"], "***");
    assert_eq!(r.report["params"]["token"], "***");
    assert_eq!(r.report["params"]["user"], "alice");
    assert_eq!(
        r.report["steps"]["echo"]["output"]["stdout"],
        "user=alice pw=*** token=***"
    );
    assert!(r.stderr.contains("note │ logging in with ***"));
    assert!(
        r.report["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("no: ***")
    );
    assert!(
        r.stderr.contains("prefer --secrets-file"),
        "no warning about a secret in argv"
    );
}

#[test]
fn env_is_readable_only_when_allowed() {
    let scratch = Scratch::new();
    let file = scratch.write(
        "flow.yaml",
        "version: 1\nname: env\nsteps:\n  - id: e\n    action: log\n    with: {message: \"${env.TASUKI_TEST_VALUE}\"}\n",
    );
    let denied = support::tasuki()
        .current_dir(scratch.path())
        .args(["run", file.to_str().unwrap(), "--output", "json"])
        .env("TASUKI_TEST_VALUE", "visible")
        .output()
        .unwrap();
    assert_eq!(denied.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("--allow-env TASUKI_TEST_VALUE"));

    let allowed = support::result(
        support::tasuki()
            .current_dir(scratch.path())
            .args([
                "run",
                file.to_str().unwrap(),
                "--output",
                "json",
                "--allow-env",
                "TASUKI_TEST_VALUE",
            ])
            .env("TASUKI_TEST_VALUE", "visible")
            .output()
            .unwrap(),
    );
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert_eq!(allowed.report["steps"]["e"]["output"]["message"], "visible");
}
