//! Shared helpers for the end-to-end tests: running the real `tasuki`
//! binary, and a real HTTP server on loopback standing in for third parties.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use serde_json::{Value, json};

pub fn tasuki() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tasuki"))
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("agent/ has a parent")
        .to_path_buf()
}

/// A scratch directory with a workflow file in it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("create a temp dir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write a test file");
        p
    }
}

pub struct RunResult {
    pub code: i32,
    pub report: Value,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tasuki run FILE --output json ARGS...` in `cwd` and parses the report.
pub fn run_json(cwd: &Path, file: &Path, args: &[&str]) -> RunResult {
    let output = tasuki()
        .current_dir(cwd)
        .arg("run")
        .arg(file)
        .args(["--output", "json"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("start tasuki");
    result(output)
}

pub fn result(output: Output) -> RunResult {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    RunResult {
        code: output.status.code().unwrap_or(-1),
        report,
        stdout,
        stderr,
    }
}

/// Runs a workflow given as text, from a fresh scratch directory.
pub fn run_text(workflow: &str, args: &[&str]) -> RunResult {
    let scratch = Scratch::new();
    let file = scratch.write("flow.yaml", workflow);
    run_json(scratch.path(), &file, args)
}

/// Whether a process is alive. A zombie counts as dead: it has exited and
/// only waits for its parent to read its status.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            state != Some("Z") && state != Some("X")
        }
        Err(_) => false,
    }
}

/// Polls until `f` holds or the time is up.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A real HTTP server on 127.0.0.1, on its own runtime thread.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

#[derive(Clone)]
struct ServerState {
    hits: Arc<AtomicUsize>,
    site: PathBuf,
}

pub fn start_server() -> TestServer {
    let hits = Arc::new(AtomicUsize::new(0));
    let state = ServerState {
        hits: hits.clone(),
        site: repo_root().join("examples/site"),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test server runtime");
        runtime.block_on(async move {
            let app = Router::new()
                .route("/json", get(|| async { axum::Json(json!({"items": [{"name": "alpha", "n": 1}, {"name": "beta", "n": 2}], "ok": true})) }))
                .route("/text", get(|| async { "plain text body" }))
                .route("/status/{code}", get(status))
                .route("/echo", any(echo))
                .route("/big", get(|| async { "x".repeat(3 * 1024 * 1024) }))
                .route("/slow", get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }))
                .route("/flaky/{n}", get(flaky))
                .route("/site/{*file}", get(site))
                .route("/tests/{*file}", get(test_page))
                .route("/pages/{name}", get(page))
                .route("/files/report.csv", get(|| async {
                    ([(header::CONTENT_TYPE, "text/csv"), (header::CONTENT_DISPOSITION, "attachment; filename=\"report.csv\"")], "id,total\n1,42\n")
                }))
                .route("/hang", get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    axum::response::Html("<p>late</p>")
                }))
                .with_state(state);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
            tx.send(listener.local_addr().expect("local addr")).expect("report the address");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("test server started");
    TestServer { addr, hits }
}

async fn status(UrlPath(code): UrlPath<u16>) -> impl IntoResponse {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        format!("status {code}"),
    )
}

async fn echo(
    method: axum::http::Method,
    headers: HeaderMap,
    Query(query): Query<std::collections::BTreeMap<String, String>>,
    body: Bytes,
) -> impl IntoResponse {
    let header_map: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let body_text = String::from_utf8_lossy(&body).into_owned();
    axum::Json(json!({
        "method": method.as_str(),
        "headers": header_map,
        "query": query,
        "body": body_text,
        "json": serde_json::from_slice::<Value>(&body).ok(),
    }))
}

/// Fails with 503 until it has been called `n` times, then succeeds.
async fn flaky(State(state): State<ServerState>, UrlPath(n): UrlPath<usize>) -> impl IntoResponse {
    let hit = state.hits.fetch_add(1, Ordering::SeqCst) + 1;
    if hit < n {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not yet ({hit})"))
    } else {
        (StatusCode::OK, format!("ok after {hit}"))
    }
}

async fn site(
    State(state): State<ServerState>,
    UrlPath(file): UrlPath<String>,
) -> impl IntoResponse {
    serve_file(&state.site, &file).await
}

/// The pages in tests/pages, for the browser tests that need more than a
/// few lines of HTML.
async fn test_page(UrlPath(file): UrlPath<String>) -> impl IntoResponse {
    serve_file(&repo_root().join("tests/pages"), &file).await
}

async fn serve_file(
    root: &Path,
    file: &str,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    if file.contains("..") {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            Vec::new(),
        );
    }
    let path = root.join(file);
    let content_type = match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("json") => "application/json",
        Some("js") => "text/javascript",
        Some("css") => "text/css",
        _ => "application/octet-stream",
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, content_type)],
            bytes,
        ),
        Err(_) => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            b"not found".to_vec(),
        ),
    }
}

/// Test pages for the browser tests.
async fn page(UrlPath(name): UrlPath<String>) -> impl IntoResponse {
    let html = match name.as_str() {
        "frames.html" => {
            r#"<!doctype html><title>frames</title>
<h1 id="outer">outer page</h1>
<iframe id="first" src="/pages/inner.html"></iframe>
<iframe id="second" srcdoc="<p id='second-text'>second frame</p>"></iframe>"#
        }
        "inner.html" => {
            r#"<!doctype html><title>inner</title>
<p id="inner-text">inside the frame</p><button id="inner-button" onclick="this.textContent='pressed'">press</button>"#
        }
        "upload.html" => {
            r#"<!doctype html><title>upload</title>
<input id="file" type="file" onchange="document.getElementById('picked').textContent = this.files[0].name + ':' + this.files[0].size">
<p id="picked">nothing</p>"#
        }
        "download.html" => {
            r#"<!doctype html><title>download</title><a id="get" href="/files/report.csv">report</a>"#
        }
        // Reloads itself 25 times, 40 ms apart, then settles: a wait
        // keeps looking while documents are swapped under it.
        "reloading.html" => {
            r#"<!doctype html><title>reloading</title>
<p id="status">loading</p>
<script>var n = Number(sessionStorage.getItem('loads') || 0) + 1;
sessionStorage.setItem('loads', n);
if (n < 25) { document.getElementById('status').textContent = 'load ' + n; setTimeout(function () { location.reload(); }, 40); }
else { document.getElementById('status').textContent = 'settled after ' + n + ' loads'; }</script>"#
        }
        "delayed.html" => {
            r#"<!doctype html><title>delayed</title>
<div id="box"><p id="spinner">loading</p></div>
<script>setTimeout(function () {
  document.getElementById('spinner').remove();
  var p = document.createElement('p'); p.id = 'late'; p.textContent = 'arrived late'; document.getElementById('box').appendChild(p);
}, 1200);</script>"#
        }
        "state.html" => {
            r#"<!doctype html><title>state</title>
<p id="visits"></p>
<script>
  var n = Number(localStorage.getItem('visits') || '0') + 1;
  localStorage.setItem('visits', String(n));
  document.cookie = 'seen=yes; path=/';
  document.getElementById('visits').textContent = 'visit ' + n;
</script>"#
        }
        _ => "<p>no such page</p>",
    };
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html)
}

/// Browser tests need Chromium and chromedriver. They fail, never skip,
/// when those are missing: `.ci/run` installs them, and `test.sh` says how.
pub fn require_browser() {
    let found = |names: &[&str]| {
        std::env::var_os("PATH").is_some_and(|p| {
            std::env::split_paths(&p).any(|d| names.iter().any(|n| d.join(n).is_file()))
        })
    };
    assert!(
        found(&["chromium", "chromium-browser", "google-chrome"]) && found(&["chromedriver"]),
        "the browser tests need Chromium and chromedriver on PATH (Debian/Ubuntu: apt-get install chromium chromium-driver)"
    );
}

/// Processes whose parent is `ppid`, with their command lines.
pub fn children_of(ppid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let parent = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if parent == Some(ppid) && alive(pid) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            out.push((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    out
}

/// Live processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Starts `tasuki run FILE --output json` without waiting for it.
pub fn spawn_run(scratch: &Scratch, workflow: &str, extra: &[&str]) -> Child {
    let file = scratch.write("flow.yaml", workflow);
    tasuki()
        .current_dir(scratch.path())
        .args(["run", file.to_str().unwrap(), "--output", "json"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tasuki")
}

pub fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Waits for a file the workflow writes, holding a pid.
pub fn read_pid(scratch: &Scratch, name: &str) -> u32 {
    let path = scratch.path().join(name);
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&path)
            .is_ok_and(|s| s.trim().parse::<u32>().is_ok())),
        "the workflow never wrote {name}"
    );
    std::fs::read_to_string(&path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

pub fn wait_with_limit(child: Child, limit: Duration) -> RunResult {
    let pid = child.id();
    let start = Instant::now();
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if start.elapsed() > limit {
            signal(pid, "KILL");
            panic!("tasuki did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    result(waiter.join().unwrap().unwrap())
}
