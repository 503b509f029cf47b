//! Helpers for the fleet tests: real `tasuki register` and `tasuki agent`
//! processes against a real hub (see hub_support.rs), and a loopback page
//! for browser steps.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::hub_support::{ALL_SCOPES, Api, Hub, Key, Reply, Scratch, create_key, token};

/// The `tasuki` binary, built beside `tasuki-hub` by `cargo test --workspace`.
pub fn tasuki_bin() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_tasuki-hub"))
        .with_file_name(format!("tasuki{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "the fleet tests need the agent binary at {}; build it with `cargo build -p tasuki-agent` \
         (or run `cargo test --workspace`, which does)",
        path.display()
    );
    path
}

/// One robot machine: its config and work dir in `dir`, its credentials
/// in a directory of their own outside the test's scratch folder, as a
/// system install has them in /etc/tasuki. (Steps cannot use files made
/// after they start in the directories above the credentials, see
/// actions/src/builtin/confine.rs; tests hand steps the scratch folder.)
pub struct Robot {
    pub name: String,
    pub dir: PathBuf,
    credentials: PathBuf,
    /// The credentials' own folder, removed with the robot.
    _secrets: Option<tempfile::TempDir>,
}

impl Robot {
    pub fn new(root: &Path, name: &str) -> Robot {
        let dir = root.join(format!("robot-{name}"));
        std::fs::create_dir_all(&dir).expect("robot dir");
        let secrets = tempfile::Builder::new()
            .prefix("robot-secrets-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("the credentials dir");
        Robot {
            name: name.into(),
            dir,
            credentials: secrets.path().join("credentials.toml"),
            _secrets: Some(secrets),
        }
    }

    /// A robot whose credentials sit beside its config, in `root` (a
    /// scratch folder under /tmp): what `tasuki register` does by default,
    /// and the README's fleet example.
    pub fn with_credentials_beside_config(root: &Path, name: &str) -> Robot {
        let dir = root.join(format!("robot-{name}"));
        std::fs::create_dir_all(&dir).expect("robot dir");
        Robot {
            name: name.into(),
            credentials: dir.join("credentials.toml"),
            dir,
            _secrets: None,
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    pub fn credentials(&self) -> PathBuf {
        self.credentials.clone()
    }

    /// `tasuki register`, the secret given through a file.
    pub fn register(&self, hub: &Hub, key: &Key, extra: &[&str]) -> Output {
        self.register_at(&hub.url, key, extra)
    }

    /// `tasuki register` with the hub at `url` (a proxy in front of it,
    /// say).
    pub fn register_at(&self, url: &str, key: &Key, extra: &[&str]) -> Output {
        let secret = self.dir.join("secret.txt");
        std::fs::write(&secret, &key.secret).expect("write the secret file");
        let out = Command::new(tasuki_bin())
            .args(["register", "--url", url, "--name", &self.name])
            .args(["--access-key-id", &key.id, "--secret-access-key-file"])
            .arg(&secret)
            .arg("--config")
            .arg(self.config())
            .arg("--credentials")
            .arg(self.credentials())
            .arg("--work-dir")
            .arg(self.dir.join("work"))
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("run tasuki register");
        let _ = std::fs::remove_file(&secret);
        out
    }

    pub fn register_ok(&self, hub: &Hub, key: &Key, extra: &[&str]) {
        let out = self.register(hub, key, extra);
        assert!(
            out.status.success(),
            "tasuki register failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `tasuki agent` and waits until it has registered.
    pub fn start(&self, extra: &[&str]) -> Agent {
        self.start_with_env(extra, &[])
    }

    /// `start`, with these variables added to the agent's environment.
    pub fn start_with_env(&self, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        self.launch(extra, env, true)
    }

    /// Starts `tasuki agent` without waiting for it to register.
    pub fn spawn(&self, extra: &[&str]) -> Agent {
        self.launch(extra, &[], false)
    }

    fn launch(&self, extra: &[&str], env: &[(&str, &str)], wait_registered: bool) -> Agent {
        let stderr_path = self.dir.join(format!(
            "agent-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("agent log");
        let child = Command::new(tasuki_bin())
            .arg("agent")
            .arg("--config")
            .arg(self.config())
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start tasuki agent");
        let agent = Agent {
            child: Some(child),
            stderr_path,
        };
        if wait_registered {
            let ok = eventually(Duration::from_secs(20), || {
                agent.log().contains("waiting for sessions")
            });
            assert!(ok, "the agent did not register:\n{}", agent.log());
        }
        agent
    }
}

/// A running `tasuki agent`; killed when dropped.
pub struct Agent {
    child: Option<Child>,
    pub stderr_path: PathBuf,
}

impl Agent {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the agent") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Registers a workflow (YAML) and returns its id.
pub async fn workflow(api: &Api, yaml: &str, robots: &[&str]) -> i64 {
    let r = api
        .post(
            "/v1/workflows",
            &json!({"yaml": yaml, "workflow_robots": robots}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    r.body["id"].as_i64().expect("workflow id")
}

/// `POST /v1/workflows` of `yaml` for robots that carry every label in
/// `robot_labels`, answered as it was.
pub async fn upload_labelled(api: &Api, yaml: &str, robot_labels: &[&str]) -> Reply {
    api.post(
        "/v1/workflows",
        &json!({"yaml": yaml, "robot_labels": robot_labels}),
    )
    .await
}

/// [`upload_labelled`], which must succeed; returns the workflow's id.
pub async fn workflow_labelled(api: &Api, yaml: &str, robot_labels: &[&str]) -> i64 {
    let r = upload_labelled(api, yaml, robot_labels).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    r.body["id"].as_i64().expect("workflow id")
}

/// A hub (its quota out of the way), a key with every scope, and a client
/// for it: what a fleet test starts from.
pub struct Fleet {
    pub scratch: Scratch,
    pub hub: Hub,
    pub key: Key,
    pub api: Api,
}

impl Fleet {
    pub fn start() -> Fleet {
        let scratch = Scratch::new();
        let key = create_key(&scratch, ALL_SCOPES);
        // Fleet tests read sessions often, far above AUTORO's 60 calls a minute.
        let hub = Hub::start_with(&scratch, &["--quota-per-robot", "1000000"]);
        let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
        Fleet {
            scratch,
            hub,
            key,
            api,
        }
    }
}

/// Queues a session and returns its id.
pub async fn queue(api: &Api, workflow_id: i64, params: Value) -> i64 {
    let r = api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": workflow_id, "params": params}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    r.body["id"].as_i64().expect("session id")
}

/// Waits until the session reaches a final status, and returns it.
pub async fn finished(api: &Api, id: i64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let r = api.get(&format!("/v1/session_queues/{id}")).await;
        let status = r.body["status"].as_str().unwrap_or("").to_string();
        if matches!(status.as_str(), "success" | "error" | "cancelled") {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "session {id} did not finish within {limit:?}: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the session is running.
pub async fn running(api: &Api, id: i64, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let r = api.get(&format!("/v1/session_queues/{id}")).await;
        if r.body["status"] == "running" {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "session {id} did not start within {limit:?}: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every log line of a session, read page by page with `after_seq`.
pub async fn all_logs(api: &Api, id: i64) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let after = out.last().map_or(0, |l| l["seq"].as_i64().unwrap_or(0));
        let r = api
            .get(&format!("/v1/session_queues/{id}/logs?after_seq={after}"))
            .await;
        let page = r.body["logs"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// The messages of log lines, in order.
pub fn messages(logs: &[Value]) -> Vec<String> {
    logs.iter()
        .map(|l| l["message"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Seqs 1.. without a gap: a later run's lines follow an earlier run's
/// and the hub's notes between them.
pub fn assert_numbered_in_order(logs: &[Value]) {
    let seqs: Vec<i64> = logs
        .iter()
        .map(|l| l["seq"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as i64).collect::<Vec<_>>(),
        "{logs:?}"
    );
}

/// Whether a process is alive (a zombie counts as dead).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

/// A time the API gave (`started_at`, ...), in ms since the epoch.
pub fn ms(value: &Value) -> i64 {
    let text = value.as_str().unwrap_or_else(|| panic!("a time: {value}"));
    text.parse::<jiff::Timestamp>()
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .as_millisecond()
}

/// The most of these ended sessions that ran at one instant, by the hub's
/// `started_at` and `ended_at`.
pub fn most_at_once(sessions: &[Value]) -> usize {
    let mut edges: Vec<(i64, i32)> = Vec::new();
    for s in sessions {
        edges.push((ms(&s["started_at"]), 1));
        edges.push((ms(&s["ended_at"]), -1));
    }
    // An end before a start at the same instant: the slot was free.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}
