//! The browser actions for dialogs, keys, the mouse, form state, queries,
//! page waits and locators, in real headless Chromium against
//! tests/pages/input.html served from a loopback server.

mod support;

use serde_json::json;
use support::{Scratch, TestServer, require_browser, run_json, start_server, tasuki};

fn page(server: &TestServer) -> String {
    server.url("/tests/input.html")
}

/// Runs `steps` (YAML list items, indented by two) after opening the page.
fn run_steps(server: &TestServer, header: &str, steps: &str) -> (Scratch, support::RunResult) {
    let scratch = Scratch::new();
    let workflow = format!(
        "version: 1\nname: input\n{header}steps:\n  - id: go\n    action: browser.goto\n    with: {{url: \"{}\"}}\n{steps}",
        page(server)
    );
    let file = scratch.write("flow.yaml", &workflow);
    let artifacts = scratch.path().join("artifacts");
    let r = run_json(
        scratch.path(),
        &file,
        &["--artifacts", artifacts.to_str().unwrap()],
    );
    (scratch, r)
}

#[test]
fn dialogs_opened_by_a_click_are_accepted_dismissed_and_answered() {
    require_browser();
    let server = start_server();
    let (_s, r) = run_steps(
        &server,
        "params:\n  new_name: {secret: true, default: Hiro-s3cret-name}\n",
        r##"
  - {id: delete, action: browser.click, with: {selector: "#delete"}}
  - {id: accept, action: browser.accept_dialog}
  - {id: after_accept, action: browser.get_text, with: {selector: "#status"}}
  - {id: delete_again, action: browser.click, with: {selector: "#delete"}}
  - {id: dismiss, action: browser.dismiss_dialog}
  - {id: after_dismiss, action: browser.get_text, with: {selector: "#status"}}
  - {id: rename, action: browser.click, with: {selector: "#rename"}}
  - {id: answer, action: browser.accept_dialog, with: {text: "${params.new_name}"}}
  - {id: after_rename, action: browser.get_text, with: {selector: "#status"}}
  - {id: later, action: browser.click, with: {selector: "#late-alert"}}
  - {id: late, action: browser.accept_dialog, with: {timeout: 5s}}
  - {id: none, action: browser.dismiss_dialog, with: {timeout: 200ms}, continue_on_error: true}
"##,
    );
    let steps = &r.report["steps"];
    assert_eq!(
        steps["accept"]["output"]["message"], "Delete order 42?",
        "{}",
        r.stderr
    );
    assert_eq!(steps["after_accept"]["output"]["text"], "deleted 42");
    assert_eq!(steps["dismiss"]["output"]["message"], "Delete order 42?");
    assert_eq!(steps["after_dismiss"]["output"]["text"], "kept 42");
    assert_eq!(steps["answer"]["output"]["message"], "New name?");
    // The page got the real text; the report and the log only ***.
    assert_eq!(steps["after_rename"]["output"]["text"], "name: ***");
    assert!(r.stderr.contains("typed \"***\""), "{}", r.stderr);
    assert!(!r.stderr.contains("Hiro-s3cret-name") && !r.stdout.contains("Hiro-s3cret-name"));
    assert_eq!(steps["late"]["output"]["message"], "late news");
    assert_eq!(steps["none"]["error"]["code"], "dialog_not_found");
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn an_unexpected_dialog_fails_its_step_quoting_it_and_on_error_still_has_the_browser() {
    require_browser();
    let server = start_server();
    let (scratch, r) = run_steps(
        &server,
        "",
        r##"
  - {id: type_note, action: browser.type, with: {selector: "#note", text: "disk full", clear: true}}
  - {id: warn, action: browser.click, with: {selector: "#warn"}}
  - {id: read, action: browser.get_text, with: {selector: "#status"}}
on_error:
  - {id: after, action: browser.get_text, with: {selector: "#status"}}
  - {id: shot, action: browser.screenshot}
"##,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let steps = &r.report["steps"];
    let error = &steps["read"]["error"];
    assert_eq!(error["code"], "unexpected_dialog");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("\"Heads up: disk full\""), "{message}");
    assert!(
        message.contains("browser.accept_dialog") && message.contains("browser.dismiss_dialog"),
        "{message}"
    );
    // The dialog was dismissed first, so the failure screenshot was taken.
    assert!(
        scratch.path().join("artifacts/read-failure.png").is_file(),
        "{message}"
    );
    assert_eq!(steps["after"]["status"], "success");
    assert_eq!(steps["after"]["output"]["text"], "ready");
    assert_eq!(steps["shot"]["status"], "success");
}

#[test]
fn under_an_accept_policy_an_unexpected_dialog_is_accepted_with_a_warning() {
    require_browser();
    let server = start_server();
    let (_s, r) = run_steps(
        &server,
        "browser: {unexpected_dialog: accept}\n",
        r##"
  - {id: delete, action: browser.click, with: {selector: "#delete"}}
  - {id: read, action: browser.get_text, with: {selector: "#status"}}
"##,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["steps"]["read"]["output"]["text"], "deleted 42");
    assert!(
        r.stderr.contains(
            "accepted a dialog no step expected: \"Delete order 42?\" (unexpected_dialog: accept)"
        ),
        "{}",
        r.stderr
    );
    let (_s, r) = run_steps(
        &server,
        "browser: {unexpected_dialog: dismiss}\n",
        r##"
  - {id: delete, action: browser.click, with: {selector: "#delete"}}
  - {id: read, action: browser.get_text, with: {selector: "#status"}}
"##,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.report["steps"]["read"]["output"]["text"], "kept 42");
}

#[test]
fn keys_submit_with_enter_select_with_chords_and_go_to_the_focus() {
    require_browser();
    let server = start_server();
    let (_s, r) = run_steps(
        &server,
        "",
        r##"
  - {id: query, action: browser.type, with: {selector: "#q", text: "tenugui"}}
  - {id: enter, action: browser.press_keys, with: {selector: "#q", keys: Enter}}
  - {id: results, action: browser.get_text, with: {selector: "#results"}}
  - {id: fill, action: browser.type, with: {selector: "#keys", text: "old words"}}
  - {id: replace, action: browser.press_keys, with: {selector: "#keys", keys: ["Control+A", "new"]}}
  - {id: replaced, action: browser.get_attribute, with: {selector: "#keys", name: value}}
  - {id: chord, action: browser.press_keys, with: {keys: "Shift+Tab"}}
  - {id: last, action: browser.get_text, with: {selector: "#last-key"}}
  - {id: focus_q, action: browser.click, with: {selector: "#q"}}
  - {id: focused, action: browser.press_keys, with: {keys: ["Control+A", "Backspace", "sash", "Enter"]}}
  - {id: results2, action: browser.get_text, with: {selector: "#results"}}
"##,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(steps["results"]["output"]["text"], "results for tenugui");
    assert_eq!(steps["replaced"]["output"]["value"], "new");
    assert_eq!(steps["last"]["output"]["text"], "Shift+Tab");
    assert_eq!(steps["focused"]["output"]["pressed"], 4);
    assert_eq!(steps["results2"]["output"]["text"], "results for sash");
    assert!(r.stderr.contains("pressed Control+A, new"), "{}", r.stderr);
}

#[test]
fn hover_opens_a_menu_and_double_right_click_and_drag_reach_the_page() {
    require_browser();
    let server = start_server();
    let (_s, r) = run_steps(
        &server,
        "",
        r##"
  - {id: before, action: browser.get_state, with: {selector: "#export"}}
  - {id: hover, action: browser.hover, with: {by_text: "Reports"}}
  - {id: during, action: browser.get_state, with: {selector: "#export"}}
  - {id: export, action: browser.click, with: {by_role: link, by_label: Export}}
  - {id: status, action: browser.get_text, with: {selector: "#status"}}
  - {id: twice, action: browser.double_click, with: {selector: "#twice"}}
  - {id: context, action: browser.right_click, with: {selector: "#context"}}
  - {id: mouse, action: browser.drag_and_drop, with: {selector: "#mouse-source", target: {selector: "#mouse-target"}}}
  - {id: html5, action: browser.drag_and_drop, with: {selector: "#html5-source", target: {by_text: "html5 drop"}}}
  - {id: read, action: browser.execute_script, with: {script: "return ['twice', 'context', 'mouse-target', 'html5-target'].map(function (id) { return document.getElementById(id).textContent })"}}
"##,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(steps["before"]["output"]["visible"], false);
    assert_eq!(steps["during"]["output"]["visible"], true);
    assert_eq!(steps["status"]["output"]["text"], "exported");
    assert_eq!(steps["mouse"]["output"]["html5"], false);
    assert_eq!(steps["html5"]["output"]["html5"], true);
    assert_eq!(
        steps["read"]["output"]["result"],
        json!([
            "double clicked",
            "context menu",
            "mouse dropped",
            "dropped: html5 payload"
        ])
    );
}

#[test]
fn scrolling_to_the_bottom_until_stable_loads_a_lazy_list_to_its_end() {
    require_browser();
    let server = start_server();
    let (_s, r) = run_steps(
        &server,
        "",
        r##"
  - {id: first, action: browser.count, with: {selector: "#lazy li"}}
  - {id: once, action: browser.scroll, with: {to: bottom}}
  - {id: all, action: browser.scroll, with: {to: bottom, until_stable: true, settle: 1s}}
  - {id: last, action: browser.count, with: {selector: "#lazy li"}}
  - {id: end, action: browser.get_text, with: {selector: "#lazy-end"}}
  - {id: top, action: browser.scroll, with: {to: top}}
  - {id: by, action: browser.scroll, with: {by: [0, 150]}}
  - {id: into_view, action: browser.scroll, with: {by_text: "item 100"}}
"##,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(steps["first"]["output"]["count"], 20);
    assert_eq!(steps["last"]["output"]["count"], 100);
    assert_eq!(steps["end"]["output"]["text"], "end of list");
    assert_eq!(steps["all"]["output"]["stable"], true);
    assert!(steps["all"]["output"]["rounds"].as_u64().unwrap() >= 3);
    assert_eq!(steps["top"]["output"]["y"], 0);
    assert_eq!(steps["by"]["output"]["y"], 150);
    assert!(steps["into_view"]["output"]["y"].as_i64().unwrap() > 1000);
}

#[test]
fn check_and_uncheck_are_idempotent_and_form_state_reads_back() {
    require_browser();
    let server = start_server();
    let (_s, r) = run_steps(
        &server,
        "",
        r##"
  - {id: check, action: browser.check, with: {selector: "#email-me"}}
  - {id: check_again, action: browser.check, with: {by_role: checkbox, by_label: Email me}}
  - {id: uncheck, action: browser.uncheck, with: {selector: "#terms"}}
  - {id: uncheck_again, action: browser.uncheck, with: {selector: "#terms"}}
  - {id: radio, action: browser.check, with: {selector: "#plan-b"}}
  - {id: plan_a, action: browser.get_state, with: {selector: "#plan-a"}}
  - {id: clear, action: browser.clear, with: {selector: "#prefilled"}}
  - {id: cleared, action: browser.get_attribute, with: {selector: "#prefilled", name: value}}
  - {id: disabled, action: browser.get_state, with: {selector: "#disabled"}}
  - {id: hidden, action: browser.get_state, with: {selector: "#hidden-note"}}
  - {id: radio_off, action: browser.uncheck, with: {selector: "#plan-b"}, continue_on_error: true}
  - {id: not_a_box, action: browser.check, with: {selector: "#q"}, continue_on_error: true}
"##,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(
        steps["check"]["output"],
        json!({"changed": true, "checked": true})
    );
    assert_eq!(
        steps["check_again"]["output"],
        json!({"changed": false, "checked": true})
    );
    assert_eq!(
        steps["uncheck"]["output"],
        json!({"changed": true, "checked": false})
    );
    assert_eq!(steps["uncheck_again"]["output"]["changed"], false);
    assert!(
        r.stderr.contains("is already checked; nothing to do"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("is already unchecked; nothing to do"),
        "{}",
        r.stderr
    );
    assert_eq!(steps["radio"]["output"]["changed"], true);
    assert_eq!(steps["plan_a"]["output"]["selected"], false);
    assert_eq!(steps["cleared"]["output"]["value"], "");
    assert_eq!(
        steps["disabled"]["output"],
        json!({"visible": true, "enabled": false, "selected": false})
    );
    assert_eq!(steps["hidden"]["output"]["visible"], false);
    assert!(
        steps["radio_off"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("checking another of its group")
    );
    assert!(
        steps["not_a_box"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a checkbox or a radio button")
    );
}

#[test]
fn queries_answer_at_once_and_page_waits_and_locators_find_what_they_name() {
    require_browser();
    let server = start_server();
    let (_s, r) = run_steps(
        &server,
        "",
        r##"
  - {id: gone, action: browser.wait_for, with: {selector: "#spinner", state: absent, timeout: 10s}}
  - {id: missing, action: browser.exists, with: {selector: "#no-such-thing"}}
  - {id: present, action: browser.exists, with: {by_label: "Close dialog"}}
  - {id: none, action: browser.count, with: {by_text: "no such text anywhere"}}
  - id: only_if
    if: "${steps.missing.output.exists}"
    action: fail
    with: {message: "exists said true for a missing element"}
  - {id: retitle, action: browser.click, with: {by_text: Retitle}}
  - {id: title, action: browser.wait_for_title, with: {matches: "^Report \\d+ ready$", timeout: 10s}}
  - {id: url, action: browser.wait_for_url, with: {contains: "#report-7", timeout: 10s}}
  - {id: greeting, action: browser.get_text, with: {by_text: "Hello world"}}
  - {id: tab, action: browser.click, with: {by_role: tab, by_label: "Second tab"}}
  - {id: tab_status, action: browser.get_text, with: {selector: "#status"}}
  - {id: city, action: browser.type, with: {by_role: textbox, by_label: City, text: Osaka}}
  - {id: city_value, action: browser.get_attribute, with: {selector: "#city", name: value}}
  - {id: save, action: browser.click, with: {by_text_contains: "Save ord"}}
  - {id: save_status, action: browser.get_text, with: {selector: "#status"}}
  - {id: no_title, action: browser.wait_for_title, with: {contains: "never", timeout: 300ms}, continue_on_error: true}
"##,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(steps["gone"]["status"], "success");
    assert_eq!(steps["missing"]["output"]["exists"], false);
    // "At once": far below the 30 s element wait it would take if it waited.
    assert!(steps["missing"]["duration_ms"].as_u64().unwrap() < 10_000);
    assert_eq!(steps["present"]["output"]["exists"], true);
    assert_eq!(steps["none"]["output"]["count"], 0);
    assert_eq!(steps["only_if"]["status"], "skipped");
    assert_eq!(steps["title"]["output"]["title"], "Report 7 ready");
    assert!(
        steps["url"]["output"]["url"]
            .as_str()
            .unwrap()
            .ends_with("#report-7")
    );
    assert_eq!(steps["greeting"]["output"]["text"], "Hello world");
    assert_eq!(steps["tab_status"]["output"]["text"], "tab 2");
    assert_eq!(steps["city_value"]["output"]["value"], "Osaka");
    assert_eq!(steps["save_status"]["output"]["text"], "saved");
    let no_title = steps["no_title"]["error"]["message"].as_str().unwrap();
    assert!(
        no_title.contains("to contain \"never\"") && no_title.contains("Report 7 ready"),
        "{no_title}"
    );
}

#[test]
fn bad_browser_arguments_are_refused_with_the_field_named() {
    let cases = [
        (
            "{id: k, action: browser.press_keys, with: {keys: [Enter, \"Contrl+A\"]}}",
            "steps[0].with.keys[1]",
            "`Contrl` in `Contrl+A` is not a modifier",
        ),
        (
            "{id: k, action: browser.click, with: {selector: \"#a\", by_text: A}}",
            "steps[0].with.by_text",
            "give only one way to find the element",
        ),
        (
            "{id: k, action: browser.drag_and_drop, with: {selector: \"#a\", target: {}}}",
            "steps[0].with.target",
            "missing the element",
        ),
        (
            "{id: k, action: browser.wait_for_url, with: {matches: \"(open\"}}",
            "steps[0].with.matches",
            "not a valid regular expression",
        ),
        (
            "{id: k, action: browser.scroll, with: {by: [0, 10], until_stable: true}}",
            "steps[0].with.until_stable",
            "goes with `to: bottom`",
        ),
        (
            "{id: k, action: browser.count, with: {selector: \"li\", timeout: 5s}}",
            "steps[0].with",
            "timeout",
        ),
    ];
    for (step, field, message) in cases {
        let scratch = Scratch::new();
        let file = scratch.write(
            "flow.yaml",
            &format!("version: 1\nname: bad\nsteps:\n  - {step}\n"),
        );
        let out = tasuki().arg("validate").arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{step} was accepted");
        assert!(
            stderr.contains(field) && stderr.contains(message),
            "{step}: {stderr}"
        );
    }
    let scratch = Scratch::new();
    let file = scratch.write(
        "flow.yaml",
        "version: 1\nname: bad\nbrowser: {unexpected_dialog: sometimes}\nsteps:\n  - {id: a, action: log, with: {message: hi}}\n",
    );
    let out = tasuki().arg("validate").arg(&file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("flow.yaml:3")
            && stderr.contains("browser.unexpected_dialog")
            && stderr.contains(
                "unknown dialog policy `sometimes`; expected one of: fail, accept, dismiss"
            ),
        "{stderr}"
    );
}

#[test]
fn history_moves_back_forward_and_reloads_and_the_workflow_sets_the_element_wait() {
    require_browser();
    let server = start_server();
    let (_s, r) = run_steps(
        &server,
        "browser: {element_timeout: 700ms}\n",
        &format!(
            r##"
  - {{id: type_note, action: browser.type, with: {{selector: "#note", text: "changed", clear: true}}}}
  - {{id: away, action: browser.goto, with: {{url: "{shop}"}}}}
  - {{id: back, action: browser.go_back}}
  - {{id: forward, action: browser.go_forward}}
  - {{id: back_again, action: browser.go_back}}
  - {{id: reload, action: browser.reload}}
  - {{id: note, action: browser.get_attribute, with: {{selector: "#note", name: value}}}}
  - {{id: missing, action: browser.click, with: {{selector: "#no-such"}}, continue_on_error: true}}
"##,
            shop = server.url("/site/index.html")
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert!(
        steps["back"]["output"]["url"]
            .as_str()
            .unwrap()
            .ends_with("/tests/input.html")
    );
    assert_eq!(steps["forward"]["output"]["title"], "Tasuki demo shop");
    assert_eq!(steps["reload"]["output"]["title"], "input");
    // The reload threw the typed text away.
    assert_eq!(steps["note"]["output"]["value"], "nothing");
    let missing = steps["missing"]["error"]["message"].as_str().unwrap();
    assert!(missing.contains("after waiting 700 ms"), "{missing}");
}

#[test]
fn a_dialog_a_page_opens_as_it_loads_meets_the_policy_and_secret_keys_are_typed_as_text() {
    require_browser();
    let server = start_server();
    let onload = server.url("/tests/onload-alert.html");
    let scratch = Scratch::new();
    let run = |header: &str, steps: &str| {
        let file = scratch.write(
            "flow.yaml",
            &format!("version: 1\nname: onload\n{header}steps:\n{steps}"),
        );
        run_json(scratch.path(), &file, &[])
    };
    // Under `accept`: the navigation's own step answers the page's alert
    // and goes on; a step that types once types once.
    let r = run(
        "params:\n  pin: {secret: true, default: \"pass+word\"}\nbrowser: {unexpected_dialog: accept}\n",
        &format!(
            r##"  - {{id: go, action: browser.goto, with: {{url: "{onload}"}}}}
  - {{id: type, action: browser.type, with: {{selector: "#field", text: "once"}}}}
  - {{id: alert_again, action: browser.execute_script, with: {{script: "setTimeout(function () {{ alert('later') }}, 0); return 1"}}}}
  - {{id: wait, action: sleep, with: {{duration: 300ms}}}}
  - {{id: keys, action: browser.press_keys, with: {{selector: "#field", keys: ["${{params.pin}}"]}}}}
  - {{id: value, action: browser.get_attribute, with: {{selector: "#field", name: value}}}}
"##
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(steps["go"]["output"]["title"], "onload alert");
    assert!(
        r.stderr
            .contains("accepted a dialog no step expected: \"Welcome back, operator\""),
        "{}",
        r.stderr
    );
    // The alert left open by the script was answered before press_keys
    // acted, and the secret was typed as text, not read as key names.
    assert!(r.stderr.contains("\"later\""), "{}", r.stderr);
    assert_eq!(steps["value"]["output"]["value"], "once***");
    // Under `fail` (the default): the navigation's step fails quoting it.
    let r = run(
        "",
        &format!("  - {{id: go, action: browser.goto, with: {{url: \"{onload}\"}}}}\n"),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let error = &r.report["steps"]["go"]["error"];
    assert_eq!(error["code"], "unexpected_dialog");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("\"Welcome back, operator\""),
        "{error}"
    );
}
