//! What `behaviour.allowed_actions = ["browser.*"]` still keeps from a
//! workflow: local files. Real headless Chromium through a real
//! chromedriver, pages from a loopback server. Unix only: the files it
//! guards (/etc/passwd) and the links it makes are Unix's.
#![cfg(unix)]

mod support;

use support::{Scratch, require_browser, run_json, start_server, tasuki};

/// Runs `workflow` with `work/` under the scratch directory as work dir.
fn run_with(scratch: &Scratch, workflow: &str, extra: &[&str]) -> support::RunResult {
    let work = scratch.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let file = scratch.write("flow.yaml", workflow);
    let artifacts = scratch.path().join("artifacts");
    let mut args = vec![
        "--artifacts",
        artifacts.to_str().unwrap(),
        "--work-dir",
        work.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run_json(scratch.path(), &file, &args)
}

const GOTO_PASSWD: &str = r#"
version: 1
name: local-file
steps:
  - id: go
    action: browser.goto
    with: {url: "file:///etc/passwd"}
  - id: text
    action: browser.get_text
    with: {selector: body}
"#;

#[test]
fn a_literal_file_url_is_refused_at_validation_naming_the_scheme_and_the_setting() {
    let scratch = Scratch::new();
    let r = run_with(&scratch, GOTO_PASSWD, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("steps[0].with.url: `file:` URLs open local files")
            && r.stderr.contains("browser.allow_file_urls"),
        "{}",
        r.stderr
    );
    let file = scratch.write("check.yaml", GOTO_PASSWD);
    let validate = tasuki().arg("validate").arg(&file).output().unwrap();
    assert_eq!(validate.status.code(), Some(2));
    let with_flag = tasuki()
        .arg("validate")
        .arg(&file)
        .arg("--allow-file-urls")
        .output()
        .unwrap();
    assert_eq!(with_flag.status.code(), Some(0));
}

#[test]
fn a_file_url_from_a_template_is_refused_when_the_step_runs() {
    require_browser();
    let scratch = Scratch::new();
    let r = run_with(
        &scratch,
        r#"
version: 1
name: templated
params:
  target: {default: "view-source:file:///etc/passwd"}
steps:
  - id: go
    action: browser.goto
    with: {url: "${params.target}"}
"#,
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let message = r.report["steps"]["go"]["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("`view-source:`") && message.contains("browser.allow_file_urls"),
        "{message}"
    );
    assert!(!r.stdout.contains("root:x:0:0"), "{}", r.stdout);
}

#[test]
fn internal_schemes_are_refused_even_with_the_setting() {
    let scratch = Scratch::new();
    let r = run_with(
        &scratch,
        "version: 1\nname: internal\nsteps:\n  - id: go\n    action: browser.goto\n    with: {url: \"chrome://settings\"}\n",
        &["--allow-file-urls"],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("the `chrome:` scheme is refused"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_file_url_opens_where_the_setting_allows_it() {
    require_browser();
    let scratch = Scratch::new();
    let r = run_with(&scratch, GOTO_PASSWD, &["--allow-file-urls"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = r.report["steps"]["text"]["output"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("root:"), "{text}");
}

#[test]
fn uploads_come_only_from_inside_the_work_dir_after_resolving_links() {
    require_browser();
    let server = start_server();
    let scratch = Scratch::new();
    let work = scratch.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("invoice.txt"), "12345").unwrap();
    std::fs::write(scratch.path().join("outside.txt"), "secret").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", work.join("link")).unwrap();
    std::fs::create_dir(work.join("sub")).unwrap();

    // An absolute literal is refused before anything runs.
    let literal = "version: 1\nname: abs\nsteps:\n  - id: up\n    action: browser.upload\n    with: {selector: \"#file\", file: /etc/passwd}\n";
    let r = run_with(&scratch, literal, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("steps[0].with.file: `/etc/passwd` is an absolute path"),
        "{}",
        r.stderr
    );

    // When the step runs, whatever the path came from.
    let attempt = |id: &str, file: &str| {
        format!(
            r##"
  - id: {id}_try
    action: try
    steps:
      - id: {id}
        action: browser.upload
        with: {{selector: "#file", file: "{file}", timeout: 2s}}
    catch:
      - id: {id}_caught
        action: log
        with: {{message: caught}}"##
        )
    };
    let workflow = format!(
        r##"
version: 1
name: uploads
params:
  absolute: {{default: /etc/passwd}}
steps:
  - id: go
    action: browser.goto
    with: {{url: "{page}"}}{abs}{up}{deep}{link}
  - id: inside
    action: browser.upload
    with: {{selector: "#file", file: sub/../invoice.txt}}
  - id: picked
    action: browser.get_text
    with: {{selector: "#picked"}}
"##,
        page = server.url("/pages/upload.html"),
        abs = attempt("abs", "${params.absolute}"),
        up = attempt("up", "../outside.txt"),
        deep = attempt("deep", "sub/../../outside.txt"),
        link = attempt("link", "link"),
    );
    let r = run_with(&scratch, &workflow, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    let error = |id: &str| {
        assert_eq!(steps[id]["status"], "error", "{id}: {}", steps[id]);
        steps[id]["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(error("abs").contains("`/etc/passwd` is an absolute path"));
    for id in ["up", "deep"] {
        let e = error(id);
        assert!(e.contains("outside the work directory"), "{id}: {e}");
    }
    let e = error("link");
    assert!(
        e.contains("leads to /etc/passwd, outside the work directory"),
        "{e}"
    );
    // The page never got any of them; the file inside the work dir it did.
    assert_eq!(steps["picked"]["output"]["text"], "invoice.txt:5");
}

/// WebDriver types a path into a file input as a choice of that file, which
/// would be `browser.upload` without its confinement: `browser.type` refuses
/// file inputs.
#[test]
fn typing_a_path_into_a_file_input_is_refused() {
    require_browser();
    let server = start_server();
    let scratch = Scratch::new();
    let workflow = format!(
        r##"
version: 1
name: type-a-file
steps:
  - id: go
    action: browser.goto
    with: {{url: "{page}"}}
  - id: sneak
    action: browser.type
    continue_on_error: true
    with: {{selector: "#file", text: /etc/passwd}}
  - id: picked
    action: browser.execute_script
    with: {{script: "return document.getElementById('file').files.length"}}
"##,
        page = server.url("/pages/upload.html"),
    );
    let r = run_with(&scratch, &workflow, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(steps["sneak"]["status"], "error", "{}", steps["sneak"]);
    let message = steps["sneak"]["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("is a file input") && message.contains("browser.upload"),
        "{message}"
    );
    assert_eq!(
        steps["picked"]["output"]["result"], 0,
        "{}",
        steps["picked"]
    );
}

/// WebDriver's navigation is what the check guards; a page's own attempts
/// (a script, a link, also on a `data:` page) Chromium refuses itself.
#[test]
fn a_page_cannot_send_the_browser_to_a_local_file_either() {
    require_browser();
    let server = start_server();
    let scratch = Scratch::new();
    let r = run_with(
        &scratch,
        &format!(
            r##"
version: 1
name: from-a-page
steps:
  - id: web
    action: browser.goto
    with: {{url: "{page}"}}
  - id: script
    action: browser.execute_script
    with: {{script: "location.href = 'file:///etc/passwd'; return null"}}
  - id: settle
    action: sleep
    with: {{duration: 500ms}}
  - id: after_script
    action: browser.get_url
  - id: data
    action: browser.goto
    with: {{url: "data:text/html,<a id=l href='file:///etc/passwd'>x</a>"}}
  - id: click
    action: browser.click
    with: {{selector: "#l"}}
  - id: settle_again
    action: sleep
    with: {{duration: 500ms}}
  - id: after_link
    action: browser.get_url
"##,
            page = server.url("/pages/upload.html")
        ),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    for id in ["after_script", "after_link"] {
        let url = steps[id]["output"]["url"].as_str().unwrap_or_default();
        assert!(!url.starts_with("file:"), "{id}: {url}");
    }
}
