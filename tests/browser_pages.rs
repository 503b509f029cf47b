//! Windows and tabs, cookies, and page output, in real headless Chromium
//! through a real chromedriver, against small pages this file serves on
//! loopback.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, header};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::{Value, json};
use support::{Scratch, require_browser, run_json, tasuki};

/// The session cookie `/login` sets and `/home` wants.
struct Site {
    addr: SocketAddr,
    session: String,
}

impl Site {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

const MAIN: &str = r#"<!doctype html><title>Main page</title>
<p id="marker">main</p>
<a id="open" href="/report.html" target="_blank">the report</a>
<button id="later" onclick="setTimeout(function () { window.open('/report.html?late=1', '_blank'); }, 800)">open later</button>
<button id="two" onclick="window.open('/report.html?n=1', '_blank'); window.open('/report.html?n=2', '_blank')">open two</button>"#;

const REPORT: &str = r#"<!doctype html><title>Quarterly report</title>
<h1 id="heading">Report</h1>"#;

const PLAIN: &str = r#"<!doctype html><title>plain</title><p id="cookies">-</p>
<div id="box"><span class="x">hello &amp; welcome</span></div>
<p style="background: #0a0">a green band</p>"#;

/// Serves the pages of these tests; `session` is the login cookie's value.
fn start_site(session: &str) -> Site {
    let (tx, rx) = std::sync::mpsc::channel();
    let login_cookie = format!("session={session}; Path=/");
    let wanted = format!("session={session}");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("site runtime");
        runtime.block_on(async move {
            let app = Router::new()
                .route("/main.html", get(|| async { Html(MAIN) }))
                .route("/report.html", get(|| async { Html(REPORT) }))
                .route("/plain.html", get(|| async { Html(PLAIN) }))
                .route(
                    "/login",
                    get(move || {
                        let cookie = login_cookie.clone();
                        async move {
                            (
                                [(header::SET_COOKIE, cookie)],
                                Html("<!doctype html><title>login</title><p id=done>logged in</p>"),
                            )
                        }
                    }),
                )
                .route(
                    "/home",
                    get(move |headers: HeaderMap| {
                        let wanted = wanted.clone();
                        async move {
                            let cookies = headers
                                .get(header::COOKIE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("");
                            let known = cookies.split("; ").any(|c| c == wanted);
                            let text = if known {
                                "Welcome back"
                            } else {
                                "Please log in"
                            };
                            Html(format!(
                                "<!doctype html><title>home</title><h1 id=greeting>{text}</h1>"
                            ))
                            .into_response()
                        }
                    }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            tx.send(listener.local_addr().expect("local addr"))
                .expect("report the address");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("site started");
    Site {
        addr,
        session: session.to_string(),
    }
}

/// A value no page or log would hold by chance.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{nanos:x}")
}

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

#[test]
fn tabs_are_reached_by_new_title_url_and_index_listed_and_closed() {
    require_browser();
    let site = start_site("unused");
    let scratch = Scratch::new();
    let r = run_in(
        &scratch,
        &format!(
            r##"
version: 1
name: windows
steps:
  - id: go
    action: browser.goto
    with: {{url: "{main}"}}
  - id: click
    action: browser.click
    with: {{selector: "#open"}}
  - id: to_new
    action: browser.switch_window
    with: {{new: true}}
  - id: in_new
    action: browser.get_text
    with: {{selector: "#heading"}}
  - id: listed
    action: browser.list_windows
  - id: by_index
    action: browser.switch_window
    with: {{index: 0}}
  - id: in_first
    action: browser.get_text
    with: {{selector: "#marker"}}
  - id: by_title
    action: browser.switch_window
    with: {{title: Quarterly}}
  - id: by_url_regex
    action: browser.switch_window
    with: {{url_matches: "/main\\.html$"}}
  - id: by_title_regex
    action: browser.switch_window
    with: {{title_matches: "^Quarterly rep"}}
  - id: by_url
    action: browser.switch_window
    with: {{url: report.html}}
  - id: close
    action: browser.close_window
  - id: after_close
    action: browser.get_text
    with: {{selector: "#marker"}}
  - id: nothing_new
    action: browser.switch_window
    with: {{new: true, timeout: 300ms}}
    continue_on_error: true
  - id: no_such_title
    action: browser.switch_window
    with: {{title: Invoices, timeout: 200ms}}
    continue_on_error: true
  - id: open_later
    action: browser.click
    with: {{selector: "#later"}}
  - id: to_late
    action: browser.switch_window
    with: {{new: true, timeout: 15s}}
  - id: late_url
    action: browser.get_url
  - id: close_late
    action: browser.close_window
  - id: last_one
    action: browser.close_window
    continue_on_error: true
  - id: alone
    action: browser.list_windows
  - id: still_works
    action: browser.get_text
    with: {{selector: "#marker"}}
"##,
            main = site.url("/main.html"),
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    let out = |id: &str| steps[id]["output"].clone();
    let main_url = site.url("/main.html");
    let report_url = site.url("/report.html");

    // The tab the link opened, reached as the one not seen before, and the
    // switch carried over to the next step.
    let report_handle = out("to_new")["handle"].as_str().unwrap().to_string();
    assert!(
        out("to_new")["title"].is_string() && out("to_new")["url"].is_string(),
        "{}",
        out("to_new")
    );
    assert_eq!(out("in_new")["text"], "Report");

    let listed = out("listed");
    assert_eq!(listed["count"], 2, "{listed}");
    let windows = listed["windows"].as_array().unwrap();
    let main_handle = windows[0]["handle"].as_str().unwrap().to_string();
    assert_eq!(
        windows[0],
        json!({"handle": main_handle, "title": "Main page", "url": main_url, "current": false})
    );
    assert_eq!(
        windows[1],
        json!({"handle": report_handle, "title": "Quarterly report", "url": report_url, "current": true})
    );

    assert_eq!(out("by_index")["handle"], main_handle.as_str());
    assert_eq!(out("in_first")["text"], "main");
    assert_eq!(
        out("by_title"),
        json!({"handle": report_handle, "title": "Quarterly report", "url": report_url})
    );
    assert_eq!(out("by_url_regex")["handle"], main_handle.as_str());
    assert_eq!(out("by_title_regex")["handle"], report_handle.as_str());
    assert_eq!(out("by_url")["handle"], report_handle.as_str());

    // Closing the report goes back to the window the session came from,
    // and the next step works there.
    assert_eq!(
        out("close"),
        json!({"closed": report_handle, "handle": main_handle, "title": "Main page", "url": main_url})
    );
    assert_eq!(out("after_close")["text"], "main");

    // Nothing new: every window is seen. No title: the error lists the windows.
    assert_eq!(steps["nothing_new"]["error"]["code"], "window_not_found");
    let err = steps["no_such_title"]["error"].clone();
    assert_eq!(err["code"], "window_not_found");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("no window whose title contains \"Invoices\" after waiting 200 ms")
            && message.contains(&format!("[0] \"Main page\" ({main_url})")),
        "{message}"
    );

    // A tab that opens 800 ms after the click is waited for.
    assert_eq!(out("late_url")["url"], site.url("/report.html?late=1"));
    assert!(
        steps["to_late"]["duration_ms"].as_u64().unwrap() >= 400,
        "{}",
        steps["to_late"]
    );
    assert_eq!(out("close_late")["handle"], main_handle.as_str());

    // The last window is not closed: browser.close is for that.
    let last = steps["last_one"]["error"].clone();
    assert_eq!(last["code"], "invalid_args");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("this is the browser's only window"),
        "{last}"
    );
    assert_eq!(out("alone")["count"], 1);
    assert_eq!(out("alone")["windows"][0]["current"], true);
    assert_eq!(out("still_works")["text"], "main");
}

/// Two tabs opened by one click are reached one `new: true` after the
/// other; a tab its page closed is left for the one the session came from.
#[test]
fn two_new_tabs_in_turn_and_a_tab_that_closed_itself() {
    require_browser();
    let site = start_site("unused");
    let scratch = Scratch::new();
    let r = run_in(
        &scratch,
        &format!(
            r##"
version: 1
name: two
steps:
  - id: go
    action: browser.goto
    with: {{url: "{main}"}}
  - id: click
    action: browser.click
    with: {{selector: "#two"}}
  - id: first
    action: browser.switch_window
    with: {{new: true}}
  - id: first_url
    action: browser.get_url
  - id: second
    action: browser.switch_window
    with: {{new: true}}
  - id: second_url
    action: browser.get_url
  - id: close_itself
    action: browser.execute_script
    with: {{script: "setTimeout(function () {{ window.close(); }}, 0); return null"}}
  - id: wait
    action: sleep
    with: {{duration: 500ms}}
  - id: close
    action: browser.close_window
  - id: back
    action: browser.get_url
"##,
            main = site.url("/main.html"),
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    let out = |id: &str| steps[id]["output"].clone();
    assert_ne!(out("first")["handle"], out("second")["handle"]);
    let mut urls = [
        out("first_url")["url"].as_str().unwrap().to_string(),
        out("second_url")["url"].as_str().unwrap().to_string(),
    ];
    urls.sort();
    assert_eq!(
        urls,
        [site.url("/report.html?n=1"), site.url("/report.html?n=2")]
    );
    // The second tab was gone already: nothing closed, and the session is
    // back on the first new tab, where it came from.
    assert_eq!(out("close")["closed"], Value::Null, "{}", out("close"));
    assert_eq!(out("close")["handle"], out("first")["handle"]);
    assert_eq!(out("back")["url"], out("first_url")["url"]);
}

#[test]
fn cookies_are_added_read_and_deleted_and_their_values_masked() {
    require_browser();
    let site = start_site("unused");
    let scratch = Scratch::new();
    let token = unique("tok");
    // Chromium caps expiry at 400 days ahead.
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 30 * 86_400;
    let r = run_in(
        &scratch,
        &format!(
            r##"
version: 1
name: cookies
steps:
  - id: go
    action: browser.goto
    with: {{url: "{plain}"}}
  - id: add_token
    action: browser.add_cookie
    with: {{name: token, value: "{token}", expiry: {expiry}}}
  - id: add_lang
    action: browser.add_cookie
    with: {{name: lang, value: en, same_site: strict}}
  - id: all
    action: browser.get_cookies
  - id: one
    action: browser.get_cookies
    with: {{name: token}}
  - id: none
    action: browser.get_cookies
    with: {{name: nothing}}
  - id: say
    action: log
    with: {{message: "the token is ${{steps.one.output.cookies[0].value}}"}}
  - id: keep
    action: shell.run
    with:
      argv: [sh, -c, 'printf %s "$1" > seen.txt', sh, "${{steps.one.output.cookies[0].value}}"]
  - id: script
    action: browser.execute_script
    with: {{script: "return document.cookie"}}
  - id: del_lang
    action: browser.delete_cookies
    with: {{name: lang}}
  - id: del_again
    action: browser.delete_cookies
    with: {{name: lang}}
  - id: left
    action: browser.get_cookies
  - id: del_all
    action: browser.delete_cookies
  - id: empty
    action: browser.get_cookies
"##,
            plain = site.url("/plain.html"),
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    let out = |id: &str| steps[id]["output"].clone();

    let all = out("all");
    assert_eq!(all["count"], 2, "{all}");
    let by_name = |name: &str| {
        all["cookies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap()
    };
    // The token's value is masked in the shipped output; the two-letter
    // value is not (masking "en" everywhere would wreck the log).
    // `same_site` is the browser's default when the cookie set none
    // (Chromium says Lax), and what `add_cookie` set otherwise.
    let mut token_cookie = by_name("token");
    let same_site = token_cookie
        .as_object_mut()
        .and_then(|c| c.remove("same_site"))
        .unwrap_or(Value::Null);
    assert!(
        same_site == "Lax" || same_site.is_null(),
        "the token's same_site: {same_site}"
    );
    assert_eq!(
        token_cookie,
        json!({"name": "token", "value": "***", "domain": "127.0.0.1", "path": "/",
               "secure": false, "http_only": false, "expiry": expiry})
    );
    assert_eq!(by_name("lang")["value"], "en");
    assert_eq!(by_name("lang")["same_site"], "Strict", "{all}");
    assert_eq!(out("one")["count"], 1);
    assert_eq!(out("none"), json!({"count": 0, "cookies": []}));
    let script = out("script")["result"].as_str().unwrap().to_string();
    let mut jar: Vec<&str> = script.split("; ").collect();
    jar.sort();
    assert_eq!(jar, ["lang=en", "token=***"], "{script}");

    // The variables kept the real value for later steps.
    assert_eq!(
        std::fs::read_to_string(scratch.path().join("seen.txt")).unwrap(),
        token
    );
    assert!(
        r.stderr.contains("the token is ***"),
        "the log line is missing: {}",
        r.stderr
    );
    // Nowhere in the log or the report.
    assert!(!r.stderr.contains(&token), "{}", r.stderr);
    assert!(!r.stdout.contains(&token), "{}", r.stdout);

    assert_eq!(out("del_lang")["deleted"], 1);
    assert_eq!(out("del_again")["deleted"], 0);
    assert_eq!(out("left")["count"], 1);
    assert_eq!(out("left")["cookies"][0]["name"], "token");
    assert_eq!(out("del_all")["deleted"], 1);
    assert_eq!(out("empty")["count"], 0);
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn cookies_saved_in_one_run_skip_the_login_in_the_next() {
    require_browser();
    let session = unique("S3ss");
    let site = start_site(&session);
    let scratch = Scratch::new();

    // First run: log in, save the cookies.
    let r = run_in(
        &scratch,
        &format!(
            r##"
version: 1
name: login
steps:
  - id: login
    action: browser.goto
    with: {{url: "{login}"}}
  - id: read
    action: browser.get_cookies
  - id: save
    action: browser.save_cookies
    with: {{file: logins/site.json}}
"##,
            login = site.url("/login"),
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let saved = scratch.path().join("logins/site.json");
    assert_eq!(
        r.report["steps"]["save"]["output"],
        json!({"file": saved.canonicalize().unwrap().display().to_string(), "count": 1})
    );
    assert_eq!(
        r.report["steps"]["read"]["output"]["cookies"][0]["value"],
        "***"
    );
    #[cfg(unix)]
    {
        assert_eq!(mode(&saved), 0o600);
        assert_eq!(mode(&scratch.path().join("logins")), 0o700);
    }
    let file: Value = serde_json::from_slice(&std::fs::read(&saved).unwrap()).unwrap();
    assert_eq!(file[0]["name"], "session");
    assert_eq!(file[0]["value"], site.session.as_str());
    assert_eq!(file[0]["domain"], "127.0.0.1");
    assert!(!r.stderr.contains(&session) && !r.stdout.contains(&session));

    // Second run, a fresh browser: the login page is skipped.
    let r = run_in(
        &scratch,
        &format!(
            r##"
version: 1
name: reuse
steps:
  - id: before
    action: browser.goto
    with: {{url: "{home}"}}
  - id: greeting_before
    action: browser.get_text
    with: {{selector: "#greeting"}}
  - id: load
    action: browser.load_cookies
    with: {{file: logins/site.json}}
  - id: script
    action: browser.execute_script
    with: {{script: "return document.cookie"}}
  - id: after
    action: browser.goto
    with: {{url: "{home}"}}
  - id: greeting
    action: browser.get_text
    with: {{selector: "#greeting"}}
"##,
            home = site.url("/home"),
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    assert_eq!(steps["greeting_before"]["output"]["text"], "Please log in");
    assert_eq!(steps["load"]["output"]["loaded"], 1);
    assert_eq!(steps["load"]["output"]["skipped"], 0);
    assert_eq!(steps["greeting"]["output"]["text"], "Welcome back");
    // A value load_cookies saw is masked from then on.
    assert_eq!(steps["script"]["output"]["result"], "session=***");
    assert!(!r.stderr.contains(&session) && !r.stdout.contains(&session));
}

#[test]
fn cookies_for_another_site_say_which_page_to_open_and_missing_files_are_named() {
    require_browser();
    let site = start_site("unused");
    let scratch = Scratch::new();
    std::fs::write(
        scratch.path().join("other.json"),
        r#"[{"name": "sid", "value": "abcdef-123456", "domain": ".shop.example.com", "path": "/"},
            {"name": "old", "value": "x", "domain": "127.0.0.1", "path": "/", "expiry": 1000}]"#,
    )
    .unwrap();
    let r = run_in(
        &scratch,
        &format!(
            r##"
version: 1
name: mismatch
steps:
  - id: go
    action: browser.goto
    with: {{url: "{plain}"}}
  - id: other_site
    action: browser.load_cookies
    with: {{file: other.json}}
    continue_on_error: true
  - id: missing
    action: browser.load_cookies
    with: {{file: logins/missing.json}}
"##,
            plain = site.url("/plain.html"),
        ),
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let steps = &r.report["steps"];
    let other = steps["other_site"]["error"]["message"].as_str().unwrap();
    assert!(
        other.contains("none of the 2 cookies in `other.json` could be loaded")
            && other.contains("open a page of shop.example.com first"),
        "{other}"
    );
    let missing = &steps["missing"]["error"];
    assert_eq!(missing["code"], "invalid_args");
    let message = missing["message"].as_str().unwrap();
    assert!(
        message
            .starts_with("with.file: there is no file `logins/missing.json` in the state folder")
            && message.contains("browser.save_cookies"),
        "{message}"
    );
    // The file's values are masked too, once read.
    assert!(!r.stdout.contains("abcdef-123456") && !r.stderr.contains("abcdef-123456"));
}

#[test]
fn a_cookie_file_outside_the_state_folder_is_refused_at_validation() {
    let scratch = Scratch::new();
    for (file, why) in [
        ("../x.json", "may not contain `..`"),
        ("/etc/x", "is an absolute path"),
    ] {
        for action in ["browser.save_cookies", "browser.load_cookies"] {
            let flow = scratch.write(
                "flow.yaml",
                &format!(
                    "version: 1\nname: bad\nsteps:\n  - id: s\n    action: {action}\n    with: {{file: \"{file}\"}}\n"
                ),
            );
            let out = tasuki().arg("validate").arg(&flow).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{action} {file}: {stderr}");
            assert!(
                stderr.contains(&format!("steps[0].with.file: `{file}` {why}")),
                "{action} {file}: {stderr}"
            );
        }
    }
    // The same path from a template is refused when the step runs.
    let r = run_in(
        &scratch,
        "version: 1\nname: bad\nparams:\n  f: {default: ../escape.json}\nsteps:\n  - id: s\n    action: browser.save_cookies\n    with: {file: \"${params.f}\"}\n",
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let err = &r.report["steps"]["s"]["error"];
    assert_eq!(err["code"], "invalid_args");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("with.file: `../escape.json` may not contain `..`"),
        "{err}"
    );
    assert!(
        !scratch
            .path()
            .parent()
            .unwrap()
            .join("escape.json")
            .exists()
    );
}

#[test]
fn html_of_the_page_and_an_element_and_a_pdf_artifact() {
    require_browser();
    let site = start_site("unused");
    let scratch = Scratch::new();
    let r = run_in(
        &scratch,
        &format!(
            r##"
version: 1
name: output
steps:
  - id: go
    action: browser.goto
    with: {{url: "{plain}"}}
  - id: changed
    action: browser.execute_script
    with: {{script: "document.getElementById('cookies').textContent = 'set by a script'; return null"}}
  - id: page
    action: browser.get_html
  - id: element
    action: browser.get_html
    with: {{selector: "#box"}}
  - id: by_xpath
    action: browser.get_html
    with: {{xpath: "//span[@class='x']"}}
  - id: pdf
    action: browser.print_pdf
  - id: wide
    action: browser.print_pdf
    with: {{path: prints/wide.pdf, landscape: true, background: true}}
"##,
            plain = site.url("/plain.html"),
        ),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let steps = &r.report["steps"];
    let page = steps["page"]["output"]["html"].as_str().unwrap();
    assert!(
        page.contains("<title>plain</title>") && page.contains("set by a script"),
        "{page}"
    );
    assert_eq!(
        steps["element"]["output"]["html"],
        r#"<div id="box"><span class="x">hello &amp; welcome</span></div>"#
    );
    assert_eq!(
        steps["by_xpath"]["output"]["html"],
        r#"<span class="x">hello &amp; welcome</span>"#
    );
    let artifacts = scratch.path().join("artifacts");
    for (id, name) in [("pdf", "pdf.pdf"), ("wide", "prints/wide.pdf")] {
        let out = &steps[id]["output"];
        let path = Path::new(out["path"].as_str().unwrap());
        assert_eq!(path, artifacts.join(name), "{out}");
        let bytes = std::fs::read(path).unwrap();
        assert!(bytes.starts_with(b"%PDF"), "{id} is not a PDF");
        assert_eq!(out["size"], bytes.len());
        let sum = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&sum.stdout).starts_with(out["sha256"].as_str().unwrap()));
    }
    // Letter paper, upright and on its side.
    let media_box = |name: &str| {
        let pdf =
            String::from_utf8_lossy(&std::fs::read(artifacts.join(name)).unwrap()).into_owned();
        let at = pdf.find("/MediaBox [").expect("a MediaBox");
        pdf[at..].split(']').next().unwrap().to_string()
    };
    assert_eq!(media_box("pdf.pdf"), "/MediaBox [0 0 612 792");
    assert_eq!(media_box("prints/wide.pdf"), "/MediaBox [0 0 792 612");
}
