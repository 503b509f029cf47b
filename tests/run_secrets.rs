//! Secrets and what a workflow can leak of them, through the real `tasuki`
//! binary: long output lines cut around a secret, and secrets in `argv`.

mod support;

use support::{Scratch, run_json};

const SECRET: &str = "Qv7Kp2Lm9Xr4Tn6wZj8H";

/// Lines are cut at 16 KiB; the shell prints the secret at every offset
/// around the cut (wholly before it, across it, wholly after it). Not one
/// four-character prefix of it may reach the log, the step's output or the
/// report.
#[test]
fn a_secret_across_the_long_line_cut_never_leaks_a_prefix() {
    let scratch = Scratch::new();
    let secrets = scratch.write("secrets.json", &format!(r#"{{"tok": "{SECRET}"}}"#));
    let cut = 16 * 1024;
    let first = cut - SECRET.len() - 2;
    let file = scratch.write(
        "flow.yaml",
        &format!(
            r#"
version: 1
name: long-lines
params:
  tok: {{secret: true}}
steps:
  - id: long
    action: shell.run
    with:
      shell: sh
      env: {{SECRET: "${{params.tok}}"}}
      script: |
        for k in $(seq 0 {span}); do
          head -c $(({first} + k)) /dev/zero | tr '\0' a
          printf '%sbbbb\n' "$SECRET"
        done
"#,
            span = SECRET.len() + 4,
        ),
    );
    let r = run_json(
        scratch.path(),
        &file,
        &["--secrets-file", secrets.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let everything = format!("{}{}", r.stdout, r.stderr);
    for n in 4..=SECRET.len() {
        assert!(
            !everything.contains(&SECRET[..n]),
            "{n} characters of the secret leaked"
        );
    }
    // The cut happened, and the lines that held the secret before it show the mask.
    assert!(
        r.stderr.contains("a*** …[line truncated]"),
        "{}",
        tail(&r.stderr)
    );
    let stdout = r.report["steps"]["long"]["output"]["stdout"]
        .as_str()
        .expect("the step's stdout");
    assert!(stdout.contains("…[line truncated]"));
}

fn tail(text: &str) -> &str {
    &text[text.len().saturating_sub(2000)..]
}

/// A secret param in `argv` is on the process's command line, which every
/// local user can read: validation warns (naming the file, line, field and
/// param) but accepts the workflow.
#[test]
fn a_secret_param_in_argv_gets_a_warning_that_does_not_fail_validation() {
    let scratch = Scratch::new();
    let in_argv = scratch.write(
        "argv.yaml",
        r#"version: 1
name: argv
params:
  password: {secret: true, default: pw}
  user: {default: alice}
steps:
  - id: nested
    action: try
    steps:
      - id: login
        action: shell.run
        with:
          argv: [curl, -u, "${params.user}:${params.password}", https://example.test]
"#,
    );
    let out = support::tasuki()
        .arg("validate")
        .arg(&in_argv)
        .output()
        .expect("start tasuki");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let expected = format!("warning: {}:13:", in_argv.display());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(
        stderr.contains(
            "steps[0].steps[0].with.argv[2]: secret param `password` is passed in `argv`"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("`env`") && stderr.contains("`script`"),
        "{stderr}"
    );
    assert!(!stderr.contains("`user`"), "{stderr}");
    assert_eq!(stderr.matches("warning:").count(), 1, "{stderr}");

    // `tasuki run` says the same before it runs.
    let run = run_json(scratch.path(), &in_argv, &["--dry-run"]);
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
}

#[test]
fn a_secret_param_passed_in_env_gets_no_warning() {
    let scratch = Scratch::new();
    let in_env = scratch.write(
        "env.yaml",
        r#"version: 1
name: env
params:
  password: {secret: true, default: pw}
steps:
  - id: login
    action: shell.run
    with:
      argv: [sh, -c, 'curl -u "alice:$PASSWORD" https://example.test']
      env: {PASSWORD: "${params.password}"}
"#,
    );
    let out = support::tasuki()
        .arg("validate")
        .arg(&in_env)
        .output()
        .expect("start tasuki");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

/// `tasuki run --credentials-file`: the workflow reads a credential's
/// fields, a step gets them (its file shows they arrived), and not one
/// value reaches the log, the step outputs, the report or the outputs.
/// Without the file the run is refused, naming the credential; a dry run
/// checks the references without it.
#[test]
fn credentials_from_a_file_reach_the_step_and_are_masked_everywhere() {
    const USER: &str = "robo-user-7Hq2";
    const PASS: &str = "pw-Zr8LmQ4vTx";
    let scratch = Scratch::new();
    let creds = scratch.write(
        "creds.yaml",
        &format!("site:\n  username: {USER}\n  password: {PASS}\nunused:\n  token: zzz\n"),
    );
    let out = scratch.path().join("arrived.txt");
    let file = scratch.write(
        "flow.yaml",
        &format!(
            r#"
version: 1
name: creds
credentials:
  site: username_password
steps:
  - id: use
    action: shell.run
    with:
      shell: sh
      env: {{U: "${{credentials.site.username}}", P: "${{credentials.site.password}}"}}
      script: |
        printf '%s:%s' "$U" "$P" > '{out}'
        echo "user=$U pass=$P"
  - id: say
    action: log
    with: {{message: "logged in as ${{credentials.site.username}}"}}
outputs:
  who: "${{credentials.site.username}}"
"#,
            out = out.display()
        ),
    );
    let r = run_json(
        scratch.path(),
        &file,
        &["--credentials-file", creds.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&out).expect("the step's file"),
        format!("{USER}:{PASS}")
    );
    let everything = format!("{}{}", r.stdout, r.stderr);
    assert!(!everything.contains(USER), "{everything}");
    assert!(!everything.contains(PASS), "{everything}");
    assert!(r.stderr.contains("user=*** pass=***"), "{}", r.stderr);
    assert_eq!(r.report["outputs"]["who"], "***");

    // Without the file: refused before anything runs, naming it.
    let r = run_json(scratch.path(), &file, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("the workflow uses the credentials site; pass them with --credentials-file"),
        "{}",
        r.stderr
    );
    // A dry run needs no values.
    let r = run_json(scratch.path(), &file, &["--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    // A file that lacks a field: refused at its path, without a value.
    let bad = scratch.write("bad.yaml", &format!("site:\n  username: {USER}\n"));
    let r = run_json(
        scratch.path(),
        &file,
        &["--credentials-file", bad.to_str().unwrap()],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("credentials.site.password"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(USER), "{}", r.stderr);
}

/// A `file` credential: its content as `${credentials.NAME.content}`, and
/// as a private file (0600) at `${credentials.NAME.path}`, gone once the
/// run ends; each line of it masked.
#[cfg(unix)]
#[test]
fn a_file_credential_is_a_private_file_for_the_session_only() {
    const LINE_ONE: &str = "-----KEY-Vq8Lm2Xr9Tn-----";
    const LINE_TWO: &str = "body-Hj4Zw7Qp1Ks";
    let scratch = Scratch::new();
    let creds = scratch.write(
        "creds.json",
        &serde_json::json!({"cert": {"content": format!("{LINE_ONE}\n{LINE_TWO}\n")}}).to_string(),
    );
    let seen = scratch.path().join("seen.txt");
    let file = scratch.write(
        "flow.yaml",
        &format!(
            r#"
version: 1
name: file-cred
credentials:
  cert: file
steps:
  - id: use
    action: shell.run
    with:
      shell: sh
      env: {{F: "${{credentials.cert.path}}"}}
      script: |
        printf '%s %s\n' "$F" "$(stat -c %a "$F")" > '{seen}'
        cat "$F" >> '{seen}'
        cat "$F"
"#,
            seen = seen.display()
        ),
    );
    let r = run_json(
        scratch.path(),
        &file,
        &["--credentials-file", creds.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let seen = std::fs::read_to_string(&seen).expect("what the step saw");
    let (first, rest) = seen.split_once('\n').expect("two parts");
    let (path, mode) = first.rsplit_once(' ').expect("path and mode");
    assert_eq!(mode, "600", "{seen}");
    assert_eq!(rest, format!("{LINE_ONE}\n{LINE_TWO}\n"));
    assert!(
        !std::path::Path::new(path).exists(),
        "{path} outlived the run"
    );
    let everything = format!("{}{}", r.stdout, r.stderr);
    assert!(!everything.contains(LINE_ONE), "{everything}");
    assert!(!everything.contains(LINE_TWO), "{everything}");
}
