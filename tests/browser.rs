//! Browser actions in real headless Chromium, driven through a real
//! chromedriver, against pages served from a loopback server.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    Scratch, TestServer, children_of, eventually, processes_mentioning, require_browser, run_json,
    signal, spawn_run, start_server, wait_with_limit,
};

fn run_in(scratch: &Scratch, workflow: &str) -> support::RunResult {
    let file = scratch.write("flow.yaml", workflow);
    run_json(
        scratch.path(),
        &file,
        &[
            "--artifacts",
            scratch.path().join("artifacts").to_str().unwrap(),
        ],
    )
}

fn shop(server: &TestServer) -> String {
    server.url("/site/index.html")
}

#[test]
fn form_select_click_wait_read_table_screenshot_url_script_and_close() {
    require_browser();
    let server = start_server();
    let scratch = Scratch::new();
    let r = run_in(
        &scratch,
        &format!(
            r##"
version: 1
name: shop
params:
  password: {{secret: true, default: pa55-w0rd-xyz}}
steps:
  - id: open
    action: browser.open
    with: {{window_size: [1024, 700]}}
  - id: go
    action: browser.goto
    with: {{url: "{url}"}}
  - id: name
    action: browser.type
    with: {{selector: "#customer", text: "Dana"}}
  - id: retype
    action: browser.type
    with: {{selector: "#customer", text: "Eri", clear: true, key_delay: 5ms}}
  - id: secret_typing
    action: browser.type
    with: {{selector: "#qty", text: "${{params.password}}", clear: true}}
  - id: fix_qty
    action: browser.type
    with: {{xpath: "//input[@id='qty']", text: "3", clear: true}}
  - id: by_label
    action: browser.select
    with: {{selector: "#item", label: "Water bottle"}}
  - id: by_index
    action: browser.select
    with: {{selector: "#item", index: 0}}
  - id: by_value
    action: browser.select
    with: {{selector: "#item", value: sash}}
  - id: submit
    action: browser.click
    with: {{selector: "#submit"}}
  - id: placed
    action: browser.wait_for
    with: {{selector: "#status", text: "Thank you"}}
  - id: status
    action: browser.get_text
    with: {{selector: "#status"}}
  - id: qty_value
    action: browser.get_attribute
    with: {{selector: "#qty", name: value}}
  - id: qty_type
    action: browser.get_attribute
    with: {{selector: "#qty", name: type}}
  - id: table
    action: browser.extract_table
    with: {{selector: "#orders"}}
  - id: page_shot
    action: browser.screenshot
  - id: table_shot
    action: browser.screenshot
    with: {{selector: "#orders", path: shots/table.png}}
  - id: where
    action: browser.get_url
  - id: script
    action: browser.execute_script
    with: {{script: "return {{title: document.title, sum: arguments[0] + arguments[1]}}", args: [40, 2]}}
  - id: hide
    action: browser.execute_script
    with: {{script: "document.getElementById('status').style.display = 'none'; return null"}}
  - id: hidden
    action: browser.wait_for
    with: {{selector: "#status", state: hidden}}
  - id: close
    action: browser.close
"##,
            url = shop(&server)
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(
        steps["status"]["output"]["text"],
        "Thank you, Eri! Order A-1004 is placed."
    );
    assert_eq!(
        steps["by_label"]["output"],
        json!({"value": "bottle", "label": "Water bottle"})
    );
    assert_eq!(steps["by_index"]["output"]["value"], "tenugui");
    assert_eq!(steps["by_value"]["output"]["label"], "Sash");
    assert_eq!(steps["qty_value"]["output"]["value"], "3");
    assert_eq!(steps["qty_type"]["output"]["value"], "number");
    let table = &steps["table"]["output"];
    assert_eq!(
        table["headers"],
        json!(["Order", "Customer", "Item", "Qty", "Status"])
    );
    assert_eq!(table["count"], 4);
    assert_eq!(
        table["rows"][3],
        json!({"Order": "A-1004", "Customer": "Eri", "Item": "sash", "Qty": "3", "Status": "new"})
    );
    for shot in ["page_shot", "table_shot"] {
        let out = &steps[shot]["output"];
        let path = std::path::Path::new(out["path"].as_str().unwrap());
        let bytes = std::fs::read(path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is not a PNG");
        assert_eq!(out["size"], bytes.len());
        let sum = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&sum.stdout).starts_with(out["sha256"].as_str().unwrap()));
    }
    assert!(
        steps["table_shot"]["output"]["path"]
            .as_str()
            .unwrap()
            .ends_with("artifacts/shots/table.png")
    );
    assert_eq!(steps["where"]["output"]["url"], shop(&server));
    assert_eq!(steps["where"]["output"]["title"], "Tasuki demo shop");
    assert_eq!(
        steps["script"]["output"]["result"],
        json!({"title": "Tasuki demo shop", "sum": 42})
    );
    assert_eq!(steps["hidden"]["status"], "success");
    assert_eq!(steps["close"]["output"]["closed"], true);
    // The typed secret is masked in the log.
    assert!(r.stderr.contains("typed \"***\""), "{}", r.stderr);
    assert!(!r.stderr.contains("pa55-w0rd-xyz") && !r.stdout.contains("pa55-w0rd-xyz"));
}

#[test]
fn frames_can_be_entered_and_left() {
    require_browser();
    let server = start_server();
    let scratch = Scratch::new();
    let r = run_in(
        &scratch,
        &format!(
            r##"
version: 1
name: frames
steps:
  - id: go
    action: browser.goto
    with: {{url: "{url}"}}
  - id: into_first
    action: browser.switch_frame
    with: {{selector: "#first"}}
  - id: inner
    action: browser.get_text
    with: {{selector: "#inner-text"}}
  - id: press
    action: browser.click
    with: {{selector: "#inner-button"}}
  - id: pressed
    action: browser.wait_for
    with: {{selector: "#inner-button", text: pressed}}
  - id: out
    action: browser.switch_frame
    with: {{to: top}}
  - id: outer
    action: browser.get_text
    with: {{selector: "#outer"}}
  - id: into_second
    action: browser.switch_frame
    with: {{index: 1}}
  - id: second
    action: browser.get_text
    with: {{selector: "#second-text"}}
  - id: back
    action: browser.switch_frame
    with: {{to: parent}}
  - id: outer_again
    action: browser.get_text
    with: {{selector: "#outer"}}
"##,
            url = server.url("/pages/frames.html")
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(steps["inner"]["output"]["text"], "inside the frame");
    assert_eq!(steps["outer"]["output"]["text"], "outer page");
    assert_eq!(steps["second"]["output"]["text"], "second frame");
    assert_eq!(steps["outer_again"]["output"]["text"], "outer page");
}

#[test]
fn upload_sets_the_file_and_download_is_waited_for() {
    require_browser();
    let server = start_server();
    let scratch = Scratch::new();
    std::fs::write(scratch.path().join("invoice.txt"), "12345").unwrap();
    let file = scratch.write(
        "flow.yaml",
        &format!(
            r##"
version: 1
name: files
steps:
  - id: go_upload
    action: browser.goto
    with: {{url: "{upload}"}}
  - id: upload
    action: browser.upload
    with: {{selector: "#file", file: invoice.txt}}
  - id: picked
    action: browser.wait_for
    with: {{selector: "#picked", text: "invoice.txt"}}
  - id: picked_text
    action: browser.get_text
    with: {{selector: "#picked"}}
  - id: go_download
    action: browser.goto
    with: {{url: "{download}"}}
  - id: click
    action: browser.click
    with: {{selector: "#get"}}
  - id: saved
    action: browser.wait_for_download
    with: {{name: report, timeout: 20s}}
"##,
            upload = server.url("/pages/upload.html"),
            download = server.url("/pages/download.html")
        ),
    );
    let artifacts = scratch.path().join("artifacts");
    let r = run_json(
        scratch.path(),
        &file,
        &[
            "--artifacts",
            artifacts.to_str().unwrap(),
            "--work-dir",
            scratch.path().to_str().unwrap(),
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(steps["picked_text"]["output"]["text"], "invoice.txt:5");
    let saved = &steps["saved"]["output"];
    assert_eq!(saved["name"], "report.csv");
    assert_eq!(saved["size"], 14);
    let path = saved["path"].as_str().unwrap();
    assert!(path.starts_with(artifacts.to_str().unwrap()), "{path}");
    assert_eq!(std::fs::read_to_string(path).unwrap(), "id,total\n1,42\n");
}

#[test]
fn waits_for_a_delayed_element() {
    require_browser();
    let server = start_server();
    let scratch = Scratch::new();
    let r = run_in(
        &scratch,
        &format!(
            "version: 1\nname: delayed\nsteps:\n  - id: go\n    action: browser.goto\n    with: {{url: \"{}\"}}\n  - id: late\n    action: browser.get_text\n    with: {{selector: \"#late\", timeout: 15s}}\n  - id: gone\n    action: browser.wait_for\n    with: {{selector: \"#spinner\", state: hidden}}\n",
            server.url("/pages/delayed.html")
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["steps"]["late"]["output"]["text"], "arrived late");
    // It really waited: the element appears 1.2 s after the page loads.
    assert!(r.report["steps"]["late"]["duration_ms"].as_u64().unwrap() >= 800);
}

#[test]
fn a_wait_keeps_looking_while_the_page_reloads_under_it() {
    require_browser();
    let server = start_server();
    let scratch = Scratch::new();
    let r = run_in(
        &scratch,
        &format!(
            "version: 1\nname: reloading\nsteps:\n  - id: go\n    action: browser.goto\n    with: {{url: \"{}\"}}\n  - id: settled\n    action: browser.wait_for\n    with: {{selector: \"#status\", text: \"settled\", timeout: 30s, poll: 10ms}}\n  - id: status\n    action: browser.get_text\n    with: {{selector: \"#status\"}}\n",
            server.url("/pages/reloading.html")
        ),
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, r.report);
    assert_eq!(
        r.report["steps"]["status"]["output"]["text"],
        "settled after 25 loads"
    );
}

#[test]
fn a_missing_element_fails_clearly_with_a_screenshot_and_url() {
    require_browser();
    let server = start_server();
    let scratch = Scratch::new();
    let r = run_in(
        &scratch,
        &format!(
            "version: 1\nname: missing\nsteps:\n  - id: go\n    action: browser.goto\n    with: {{url: \"{}\"}}\n  - id: find\n    action: browser.click\n    with: {{selector: \"#no-such-button\", timeout: 500ms}}\n",
            shop(&server)
        ),
    );
    assert_eq!(r.code, 1);
    let err = &r.report["steps"]["find"]["error"];
    assert_eq!(err["code"], "element_not_found");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("#no-such-button") && message.contains("no element matched"),
        "{message}"
    );
    let shot = scratch.path().join("artifacts/find-failure.png");
    let url_file = scratch.path().join("artifacts/find-failure-url.txt");
    assert!(message.contains(&shot.display().to_string()), "{message}");
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
    assert_eq!(std::fs::read_to_string(&url_file).unwrap(), shop(&server));
}

/// Pauses a workflow until the test removes the marker it writes.
const PAUSE: &str = r##"
  - id: pause
    action: shell.run
    with:
      shell: sh
      script: |
        touch paused
        while [ -e paused ]; do sleep 0.05; done
"##;

#[test]
fn single_process_mode_uses_one_browser_for_twenty_steps() {
    require_browser();
    let server = start_server();
    let scratch = Scratch::new();
    let state = server.url("/pages/state.html");
    let mut workflow = String::from("version: 1\nname: reuse\nsingle_process_mode: true\nsteps:\n");
    for i in 0..19 {
        let step = match i % 3 {
            0 => format!(
                "  - id: visit{i}\n    action: browser.goto\n    with: {{url: \"{state}\"}}\n"
            ),
            1 => format!(
                "  - id: read{i}\n    action: browser.get_text\n    with: {{selector: \"#visits\"}}\n"
            ),
            _ => format!(
                "  - id: cookie{i}\n    action: browser.execute_script\n    with: {{script: \"return document.cookie\"}}\n"
            ),
        };
        workflow.push_str(&step);
    }
    workflow.push_str(
        "  - id: last\n    action: browser.get_text\n    with: {selector: \"#visits\"}\n",
    );
    workflow.push_str(PAUSE);

    let child = spawn_run(&scratch, &workflow, &[]);
    let tasuki = child.id();
    assert!(
        eventually(Duration::from_secs(60), || scratch
            .path()
            .join("paused")
            .exists()),
        "the workflow never reached the pause"
    );
    let drivers: Vec<_> = children_of(tasuki)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("chromedriver"))
        .collect();
    assert_eq!(
        drivers.len(),
        1,
        "expected one chromedriver, found {drivers:?}"
    );
    let browsers: Vec<_> = children_of(drivers[0].0)
        .into_iter()
        .filter(|(_, cmd)| !cmd.contains("--type="))
        .collect();
    assert_eq!(
        browsers.len(),
        1,
        "expected one Chromium browser process, found {browsers:?}"
    );
    std::fs::remove_file(scratch.path().join("paused")).unwrap();

    let r = wait_with_limit(child, Duration::from_secs(60));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("started Chromium").count(),
        1,
        "{}",
        r.stderr
    );
    // State carried across steps: seven visits, and the cookie stayed set.
    assert_eq!(r.report["steps"]["last"]["output"]["text"], "visit 7");
    assert_eq!(r.report["steps"]["cookie2"]["output"]["result"], "seen=yes");
    assert_eq!(r.report["steps"].as_object().unwrap().len(), 21);
}

/// Starts a workflow that hangs in a browser step, cancels it, and checks
/// that it stops promptly and leaves no browser process behind.
fn cancel_leaves_nothing(hanging_step: &str) {
    require_browser();
    let server = start_server();
    let scratch = Scratch::new();
    let workflow = format!(
        "version: 1\nname: cancel\nsteps:\n  - id: go\n    action: browser.goto\n    with: {{url: \"{}\"}}\n  - id: mark\n    action: shell.run\n    with: {{argv: [touch, waiting]}}\n{hanging_step}",
        shop(&server)
    )
    .replace("HANG_URL", &server.url("/hang"));
    let child = spawn_run(&scratch, &workflow, &[]);
    let tasuki = child.id();
    assert!(eventually(Duration::from_secs(60), || scratch
        .path()
        .join("waiting")
        .exists()));
    let drivers: Vec<_> = children_of(tasuki)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("chromedriver"))
        .collect();
    assert_eq!(drivers.len(), 1, "{drivers:?}");
    let driver_pid = drivers[0].0;
    let browser = children_of(driver_pid)
        .into_iter()
        .find(|(_, cmd)| !cmd.contains("--type="))
        .expect("a Chromium process");
    let profile = browser
        .1
        .split_whitespace()
        .find_map(|a| a.strip_prefix("--user-data-dir="))
        .expect("Chromium has a --user-data-dir")
        .to_string();
    std::thread::sleep(Duration::from_millis(700));

    let cancelled_at = Instant::now();
    signal(tasuki, "INT");
    let r = wait_with_limit(child, Duration::from_secs(20));
    let took = cancelled_at.elapsed();
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert_eq!(r.report["steps"]["hang"]["status"], "cancelled");
    // The whole process, teardown included, ends well within the bound.
    assert!(took < Duration::from_secs(5), "cancel took {took:?}");
    assert!(
        eventually(Duration::from_secs(3), || !support::alive(driver_pid)),
        "chromedriver {driver_pid} survived"
    );
    assert!(
        eventually(Duration::from_secs(3), || processes_mentioning(&profile)
            .is_empty()),
        "processes using the profile survived: {:?}",
        processes_mentioning(&profile)
    );
    assert!(
        !std::path::Path::new(&profile).exists(),
        "the profile {profile} was not removed"
    );
}

#[test]
fn cancel_during_an_element_wait_leaves_no_process() {
    cancel_leaves_nothing(
        "  - id: hang\n    action: browser.wait_for\n    with: {selector: \"#never\", timeout: 10m}\n",
    );
}

#[test]
fn cancel_during_a_slow_page_load_leaves_no_process() {
    cancel_leaves_nothing(
        "  - id: hang\n    action: browser.goto\n    with: {url: \"HANG_URL\"}\n",
    );
}

#[test]
fn a_missing_browser_says_what_to_install() {
    let scratch = Scratch::new();
    let file = scratch.write(
        "flow.yaml",
        "version: 1\nname: x\nsteps:\n  - id: open\n    action: browser.open\n",
    );
    let r = run_json(
        scratch.path(),
        &file,
        &["--chromium", "/nonexistent/chromium"],
    );
    assert_eq!(r.code, 1);
    let err = &r.report["steps"]["open"]["error"];
    assert_eq!(err["code"], "browser_not_found");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("apt-get install chromium chromium-driver"),
        "{err}"
    );
}

#[test]
fn a_remote_webdriver_can_stand_in_for_the_local_driver() {
    require_browser();
    let server = start_server();
    // A chromedriver of the test's own plays the browser farm.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut farm = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start chromedriver");
    assert!(eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    }));
    let scratch = Scratch::new();
    let file = scratch.write(
        "flow.yaml",
        &format!(
            "version: 1\nname: remote\nsteps:\n  - id: go\n    action: browser.goto\n    with: {{url: \"{}\"}}\n  - id: title\n    action: browser.get_url\n",
            shop(&server)
        ),
    );
    let child = support::tasuki()
        .current_dir(scratch.path())
        .args(["run", file.to_str().unwrap(), "--output", "json"])
        .args(["--remote-webdriver", &format!("http://127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tasuki = child.id();
    let mut local_drivers = 0;
    let watcher = std::thread::spawn(move || {
        while support::alive(tasuki) {
            local_drivers += children_of(tasuki)
                .iter()
                .filter(|(_, c)| c.contains("chromedriver"))
                .count();
            std::thread::sleep(Duration::from_millis(20));
        }
        local_drivers
    });
    let r = wait_with_limit(child, Duration::from_secs(60));
    let _ = farm.kill();
    let _ = farm.wait();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("started remote WebDriver"),
        "{}",
        r.stderr
    );
    assert_eq!(
        r.report["steps"]["title"]["output"]["title"],
        "Tasuki demo shop"
    );
    assert_eq!(
        watcher.join().unwrap(),
        0,
        "tasuki started a local chromedriver despite --remote-webdriver"
    );
}

#[test]
fn a_long_temporary_directory_still_starts_the_browser() {
    require_browser();
    let scratch = Scratch::new();
    // Chromium's socket under a TMPDIR this long would pass the 107-byte
    // limit of a socket's path, and Chromium would exit at start.
    let tmp = scratch
        .path()
        .join("a-temporary-directory-with-a-rather-long-name/and-deeper");
    std::fs::create_dir_all(&tmp).unwrap();
    let file = scratch.write(
        "flow.yaml",
        "version: 1\nname: long\nsteps:\n  - {id: open, action: browser.open, with: {url: \"data:text/html,<title>ok</title>\"}}\n",
    );
    let out = support::tasuki()
        .current_dir(scratch.path())
        .env("TMPDIR", &tmp)
        .args(["run", file.to_str().unwrap(), "--output", "json"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let r = support::result(out);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.report["steps"]["open"]["output"]["title"], "ok");
}
