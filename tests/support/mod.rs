//! Shared helpers for the end-to-end tests: running the real `tasuki`
//! binary, and a real HTTP server on loopback standing in for third parties.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
    if file.contains("..") {
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            Vec::new(),
        );
    }
    let path = state.site.join(&file);
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
