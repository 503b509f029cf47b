//! Shared helpers for the hub tests: a real `tasuki-hub` process on a
//! loopback port with its own database, access keys made with the real
//! `keys create`, and a small HTTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const ALL_SCOPES: &str = "session_queue.write session_queue.read session_queue.delete access_token.create workflow.write robot";
pub const ISSUER: &str = "tasuki";
pub const AUDIENCE: &str = "tasuki-hub";

pub fn hub_command() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tasuki-hub"))
}

/// A scratch folder holding one hub's key file and, on SQLite, its
/// database; on PostgreSQL, a database of its own on the test server.
///
/// The backend is the test run's: SQLite unless `TASUKI_TEST_BACKEND` is
/// `postgres`, when the hubs use fresh databases on the server at
/// `TASUKI_TEST_POSTGRES` (an admin URL; `./test.sh` starts a throwaway
/// server and runs the hub's tests on both backends).
pub struct Scratch {
    pub dir: tempfile::TempDir,
    postgres: Option<TestDatabase>,
}

impl Scratch {
    pub fn new() -> Scratch {
        match std::env::var("TASUKI_TEST_BACKEND").as_deref() {
            Ok("postgres") => Scratch::postgres(),
            Ok("sqlite") | Err(_) => Scratch::sqlite(),
            Ok(other) => panic!("TASUKI_TEST_BACKEND is `{other}`; use sqlite or postgres"),
        }
    }

    /// On SQLite whatever the run's backend: for tests of the file itself.
    pub fn sqlite() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("create a temp dir"),
            postgres: None,
        }
    }

    /// On a fresh PostgreSQL database whatever the run's backend.
    pub fn postgres() -> Scratch {
        let admin_url = std::env::var("TASUKI_TEST_POSTGRES").expect(
            "TASUKI_TEST_POSTGRES is not set: run the tests with ./test.sh, which starts a \
             throwaway PostgreSQL server (or set it to an admin URL such as \
             postgres://tasuki@127.0.0.1:5432/postgres)",
        );
        Scratch::postgres_at(&admin_url)
    }

    /// On a fresh database of the PostgreSQL server at `admin_url`.
    pub fn postgres_at(admin_url: &str) -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("create a temp dir"),
            postgres: Some(TestDatabase::create(admin_url)),
        }
    }

    /// `--db`'s value.
    pub fn db(&self) -> std::ffi::OsString {
        match &self.postgres {
            Some(database) => database.url.clone().into(),
            None => self.db_file().into(),
        }
    }

    /// `--db` and, on PostgreSQL, `--master-key`: how a hub or a command
    /// finds this scratch's state.
    pub fn db_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--db".into(), self.db()];
        if self.postgres.is_some() {
            args.push("--master-key".into());
            args.push(self.key_file().into());
        }
        args
    }

    /// The SQLite file.
    pub fn db_file(&self) -> PathBuf {
        assert!(
            self.postgres.is_none(),
            "this test reads the SQLite file: start it with Scratch::sqlite()"
        );
        self.dir.path().join("hub.db")
    }

    pub fn key_file(&self) -> PathBuf {
        self.dir.path().join("hub.db.key")
    }

    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// Drops this scratch's PostgreSQL database under the hubs that use
    /// it, ending their connections: a hub that has lost its database.
    pub fn lose_database(&self) {
        let db = self
            .postgres
            .as_ref()
            .expect("lose_database needs a scratch on PostgreSQL (Scratch::postgres)");
        psql(
            &db.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name),
        );
    }
}

impl Drop for Scratch {
    /// What the hubs said is most of what explains a failed test.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("hub-stderr-") {
                let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- the last lines of {name} ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// A database of its own on the test server, dropped afterwards.
struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    fn create(admin_url: &str) -> TestDatabase {
        let admin_url = admin_url.to_owned();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(
            "tasuki_test_{}_{n}_{}",
            std::process::id(),
            now_nanos() % 1_000_000
        );
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let url = match admin_url.rfind('/') {
            Some(slash) if slash > "postgres://".len() => {
                let (base, rest) = admin_url.split_at(slash);
                let query = rest.find('?').map_or("", |q| &rest[q..]);
                format!("{base}/{name}{query}")
            }
            _ => panic!("TASUKI_TEST_POSTGRES ({admin_url}) names no database"),
        };
        TestDatabase {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        psql(
            &self.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
}

/// Runs one statement with `psql`, which comes with the server.
pub fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run psql (scripts/need-postgres.sh installs it)");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A running `tasuki-hub serve`.
pub struct Hub {
    child: Option<Child>,
    pub url: String,
    pub stderr_path: PathBuf,
}

impl Hub {
    pub fn start(scratch: &Scratch) -> Hub {
        Hub::start_with(scratch, &[])
    }

    pub fn start_with(scratch: &Scratch, extra: &[&str]) -> Hub {
        Hub::start_at(scratch, "127.0.0.1:0", extra)
    }

    /// Starts on a given address: a restart keeps the port its robots know.
    pub fn start_at(scratch: &Scratch, listen: &str, extra: &[&str]) -> Hub {
        Hub::spawn(scratch, listen, scratch.db_args(), extra)
    }

    /// Starts on `scratch`'s database with the master key in `key_file`
    /// (a database copied from another hub's opens with that hub's key).
    pub fn start_with_master_key(
        scratch: &Scratch,
        key_file: &std::path::Path,
        extra: &[&str],
    ) -> Hub {
        let db_args = vec![
            "--db".into(),
            scratch.db(),
            "--master-key".into(),
            key_file.into(),
        ];
        Hub::spawn(scratch, "127.0.0.1:0", db_args, extra)
    }

    fn spawn(
        scratch: &Scratch,
        listen: &str,
        db_args: Vec<std::ffi::OsString>,
        extra: &[&str],
    ) -> Hub {
        let stderr_path = scratch.dir.path().join(format!(
            "hub-stderr-{}.log",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        ));
        let stderr = std::fs::File::create(&stderr_path).expect("create the stderr log");
        let mut child = hub_command()
            .args(["serve", "--listen", listen])
            .args(db_args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start tasuki-hub");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let Some(url) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "tasuki-hub did not print `listening on`; stdout: {line:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        };
        Hub {
            url: url.to_string(),
            child: Some(child),
            stderr_path,
        }
    }

    /// The process id, to signal it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the hub is running");
        #[cfg(unix)]
        {
            use nix::sys::signal::{Signal, kill};
            use nix::unistd::Pid;
            kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("signal the hub");
        }
        #[cfg(not(unix))]
        child.kill().expect("stop the hub");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the hub") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("tasuki-hub did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still alive (it must survive bad input).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().expect("poll the hub").is_none(),
            None => false,
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Key {
    pub id: String,
    pub secret: String,
}

pub fn keys_create(scratch: &Scratch, scopes: &str) -> Output {
    hub_command()
        .args(["keys", "create", "--scopes", scopes])
        .args(scratch.db_args())
        .stdin(Stdio::null())
        .output()
        .expect("run tasuki-hub keys create")
}

pub fn create_key(scratch: &Scratch, scopes: &str) -> Key {
    let out = keys_create(scratch, scopes);
    assert!(
        out.status.success(),
        "keys create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("keys create prints JSON");
    Key {
        id: v["access_key_id"].as_str().expect("access_key_id").into(),
        secret: v["secret_access_key"]
            .as_str()
            .expect("secret_access_key")
            .into(),
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Standard claims for `key`, valid now for ten minutes.
pub fn claims(key: &Key, scopes: &str) -> Value {
    let now = now();
    json!({
        "iss": ISSUER,
        "sub": key.id,
        "aud": AUDIENCE,
        "nbf": now,
        "exp": now + 600,
        "scopes": scopes,
    })
}

pub fn sign(secret: &str, claims: &Value) -> String {
    sign_with(Algorithm::HS256, secret, claims)
}

pub fn sign_with(alg: Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a token")
}

/// A token for `key` with `scopes`.
pub fn token(key: &Key, scopes: &str) -> String {
    sign(&key.secret, &claims(key, scopes))
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The error code of an error reply.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
    /// An error reply's problems, each as (path, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        self.body["error"]["problems"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["path"].as_str().unwrap_or("").to_string(),
                    p["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

/// A client for one hub, sending `token` when it has one.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub fn new(hub: &Hub, token: Option<String>) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: hub.url.clone(),
            token,
        }
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    pub async fn send(&self, r: reqwest::RequestBuilder) -> Reply {
        let resp = r.send().await.expect("the hub answers");
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("read the reply");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "the reply ({status}) is not JSON: {e}: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    /// POSTs raw bytes as JSON.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        self.send(
            self.request(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }
}

/// A workflow with params of several types, as YAML.
pub const HELLO_YAML: &str = r#"version: 1
name: hello
description: says hello
params:
  who: world
  times: 1
  tags: []
  token: {secret: true}
steps:
  - id: greet
    action: shell.run
    with: {argv: [echo, "hello ${params.who}"]}
"#;

/// Registers `HELLO_YAML` and returns its id.
pub async fn create_hello(api: &Api) -> i64 {
    let r = api
        .post("/v1/workflows", &json!({"yaml": HELLO_YAML}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_i64().expect("workflow id")
}

/// A CA and a certificate for 127.0.0.1 it signed, as PEM files in `dir`:
/// `(ca.pem, cert.pem, key.pem)`.
pub fn make_ca_and_cert(dir: &Path, name: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl (the tests need the openssl CLI)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let cert = format!("{name}.pem");
    let ext = format!("{name}.ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-keyout", &ca_key, "-out", &ca, "-days", "2"]);
    let ca_subject = format!("/CN={name} test CA");
    args.extend(["-subj", &ca_subject]);
    openssl(&args);
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"]);
    openssl(&args);
    std::fs::write(
        dir.join(&ext),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
         extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write the extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-set_serial",
        "7",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &ext,
    ]);
    let read = |f: &str| std::fs::read(dir.join(f)).expect("read a PEM file");
    (read(&ca), read(&cert), read(&key))
}
