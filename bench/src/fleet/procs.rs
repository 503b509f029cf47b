//! The processes under test: `tasuki-hub` and `tasuki agent`, each started
//! from target/release in a scratch folder and killed when its guard is
//! dropped; and what /proc says about them.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

use crate::api::{Api, Key};

/// Every scope the bench uses: the public API's and the robot protocol's.
pub const ALL_SCOPES: &str = "session_queue.write session_queue.read session_queue.delete access_token.create workflow.write robot";

/// The binaries under test and the bench itself.
#[derive(Debug, Clone)]
pub struct Bins {
    pub tasuki: PathBuf,
    pub hub: PathBuf,
    pub bench: PathBuf,
}

impl Bins {
    /// `TASUKI_BIN` and `TASUKI_HUB_BIN`, or the binaries beside this one.
    pub fn locate() -> Result<Bins> {
        let bench = std::env::current_exe().context("find the bench's own executable")?;
        let dir = bench
            .parent()
            .context("the bench executable has no parent directory")?
            .to_path_buf();
        let pick = |var: &str, name: &str, package: &str| -> Result<PathBuf> {
            let path = std::env::var_os(var)
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join(name));
            ensure!(
                path.is_file(),
                "{name} is not at {}; set {var}, or build it with `cargo build --release -p {package}`",
                path.display()
            );
            Ok(path)
        };
        Ok(Bins {
            tasuki: pick("TASUKI_BIN", "tasuki", "tasuki-agent")?,
            hub: pick("TASUKI_HUB_BIN", "tasuki-hub", "tasuki-hub")?,
            bench,
        })
    }
}

/// A child process, killed (SIGKILL) and reaped when dropped. Its stderr
/// goes to `log`.
pub struct Proc {
    child: Option<Child>,
    pub what: String,
    pub log: PathBuf,
    /// Stopped with SIGTERM when dropped (and killed only if it has not
    /// exited within 30 s): an agent that keeps a browser warm ends it
    /// then, where SIGKILL would leave it running.
    pub graceful: bool,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails when the process has exited, with the tail of its log.
    pub fn ensure_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.what);
        };
        if let Some(status) = child.try_wait().context("wait for a child")? {
            bail!(
                "{} exited ({status}); the end of its log:\n{}",
                self.what,
                tail(&self.log_text(), 20)
            );
        }
        Ok(())
    }

    /// Fails when the process is gone (or a zombie), with the tail of its
    /// log; for a shared reference.
    pub fn ensure_alive(&self) -> Result<()> {
        ensure!(
            alive(self.pid()),
            "{} exited; the end of its log:\n{}",
            self.what,
            tail(&self.log_text(), 20)
        );
        Ok(())
    }

    /// WARN and ERROR lines of the log (tracing's format), at most `max`,
    /// and how many there were.
    pub fn problems(&self, max: usize) -> (usize, Vec<String>) {
        let text = self.log_text();
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .take(3)
                    .any(|w| w == "WARN" || w == "ERROR")
                    || l.contains("panicked")
            })
            .collect();
        (
            bad.len(),
            bad.iter().take(max).map(|l| l.to_string()).collect(),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.graceful
                && let Ok(pid) = i32::try_from(child.id())
                && nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                )
                .is_ok()
            {
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[derive(Deserialize)]
struct CreatedKey {
    access_key_id: String,
    secret_access_key: String,
}

/// `tasuki-hub keys create` on a database (before its hubs start, for
/// SQLite); `db` is the `--db ...` (and `--master-key ...`) arguments.
pub fn create_key(bins: &Bins, db: &[OsString], scopes: &str) -> Result<Key> {
    let out = Command::new(&bins.hub)
        .args(["keys", "create", "--scopes", scopes])
        .args(db)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {} keys create", bins.hub.display()))?;
    ensure!(
        out.status.success(),
        "tasuki-hub keys create failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let key: CreatedKey = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "tasuki-hub keys create did not print the key as JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    Ok(Key {
        id: key.access_key_id,
        secret: key.secret_access_key,
    })
}

/// A running `tasuki-hub serve`.
pub struct Hub {
    pub proc: Proc,
    pub url: String,
}

/// Starts `tasuki-hub serve` on the database `db` (its `--db ...`
/// arguments), logging to `dir/<name>.log`; `what` names it in reports.
pub fn start_hub(bins: &Bins, dir: &Path, name: &str, what: &str, db: &[OsString]) -> Result<Hub> {
    let log = dir.join(format!("{name}.log"));
    let stderr = std::fs::File::create(&log).context("create the hub's log")?;
    let mut child = Command::new(&bins.hub)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--quota-per-robot",
            "1000000",
            // All the simulated robots share one key.
            "--max-robots-per-key",
            "1000000",
            // A thousand simulated robots, each with a poll and a shipping
            // connection, past the default cap of 1024.
            "--max-connections",
            "100000",
            // ...all from 127.0.0.1, past the default cap per address.
            "--max-connections-per-address",
            "0",
        ])
        .args(db)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("start {}", bins.hub.display()))?;
    let stdout = child.stdout.take();
    let mut proc = Proc {
        child: Some(child),
        what: what.to_string(),
        log,
        graceful: false,
    };
    let stdout = stdout.context("the hub's stdout is not piped")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
    let Some(url) = line.trim().strip_prefix("listening on ") else {
        proc.ensure_running()?;
        bail!(
            "tasuki-hub did not print `listening on URL` (stdout: {line:?}); its log:\n{}",
            tail(&proc.log_text(), 20)
        );
    };
    Ok(Hub {
        url: url.to_string(),
        proc,
    })
}

/// Where a stage keeps its state.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file in the scratch folder.
    Sqlite,
    /// A fresh database on this PostgreSQL server (its admin URL), dropped
    /// when the stage is.
    Postgres { admin_url: String },
}

/// The environment variable with the PostgreSQL server's admin URL.
pub const POSTGRES_ENV: &str = "TASUKI_BENCH_POSTGRES";

/// The PostgreSQL backend, from [`POSTGRES_ENV`]; a clear error without it.
pub fn postgres_backend(admin_url: Option<&str>) -> Result<Backend> {
    match admin_url {
        Some(url) if !url.trim().is_empty() => Ok(Backend::Postgres {
            admin_url: url.trim().to_string(),
        }),
        _ => bail!(
            "this benchmark measures PostgreSQL too: set {POSTGRES_ENV} (or --postgres) to the \
             admin URL of a PostgreSQL server (e.g. postgres://user@127.0.0.1:5432/postgres), \
             on which the bench creates, and drops afterwards, a database per measurement"
        ),
    }
}

/// A database the bench made on a PostgreSQL server; dropped (WITH
/// (FORCE)) with this guard.
pub struct PgDb {
    admin_url: String,
    pub name: String,
    /// The database's own URL, for `--db`.
    pub url: String,
}

impl PgDb {
    pub async fn create(admin_url: &str, label: &str) -> Result<PgDb> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(
            "tasuki_bench_{}_{}_{n}",
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id()
        );
        let client = pg_connect(admin_url).await?;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name} on {}", redact(admin_url)))?;
        Ok(PgDb {
            admin_url: admin_url.to_string(),
            url: with_dbname(admin_url, &name)?,
            name,
        })
    }

    /// Server processes connected to this database (`pg_stat_activity`),
    /// and of them those whose application is `tasuki-hub`.
    pub async fn connections(&self) -> Result<(i64, i64)> {
        let client = pg_connect(&self.admin_url).await?;
        let row = client
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE application_name = 'tasuki-hub') \
                 FROM pg_stat_activity WHERE datname = $1",
                &[&self.name],
            )
            .await
            .context("count the database's connections")?;
        Ok((row.get(0), row.get(1)))
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        // Its own thread and runtime: this may run inside the bench's.
        let dropped = std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = pg_connect(&admin).await?;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop the database {}", self.name);
        }
    }
}

/// The server's `server_version`.
pub async fn postgres_version(admin_url: &str) -> Result<String> {
    let client = pg_connect(admin_url).await?;
    let row = client
        .query_one("SHOW server_version", &[])
        .await
        .context("SHOW server_version")?;
    Ok(row.get(0))
}

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connect to PostgreSQL at {}", redact(url)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The URL with its password (if any) hidden.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = &url[s + 3..at];
            match user.split_once(':') {
                Some((u, _)) => format!("{}{u}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// `postgres://auth@host:port/db?query` with another database name.
fn with_dbname(url: &str, name: &str) -> Result<String> {
    let start = url
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("{} is not a postgres:// URL", redact(url)))?;
    let (head, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_end = head[start..].find('/').map_or(head.len(), |i| start + i);
    Ok(format!("{}/{name}{query}", &head[..authority_end]))
}

/// Hubs on one database, with a key and a public API client per hub, in a
/// scratch folder of their own.
pub struct Stage {
    pub bins: Bins,
    pub dir: PathBuf,
    pub key: Key,
    /// Hub 1's API (the same as `apis[0]`).
    pub api: Api,
    /// Hub 1.
    pub hub: Hub,
    /// Hubs 2.. (PostgreSQL only).
    pub others: Vec<Hub>,
    /// One client per hub, hub 1 first.
    pub apis: Vec<Api>,
    // After the hubs: dropped once they are gone.
    pub pg: Option<PgDb>,
    // Last: removed after the processes are gone.
    _scratch: Option<tempfile::TempDir>,
}

impl Stage {
    /// One hub on SQLite.
    pub fn new(bins: &Bins, label: &str, keep: bool) -> Result<Stage> {
        let (dir, scratch) = scratch(label, keep)?;
        let db = vec![OsString::from("--db"), dir.join("hub.db").into_os_string()];
        Stage::start(bins, dir, scratch, None, &db, 1)
    }

    /// `hubs` hubs on `backend` (more than one only on PostgreSQL).
    pub async fn with_backend(
        bins: &Bins,
        label: &str,
        keep: bool,
        backend: &Backend,
        hubs: usize,
    ) -> Result<Stage> {
        match backend {
            Backend::Sqlite => {
                ensure!(hubs == 1, "SQLite has one hub");
                Stage::new(bins, label, keep)
            }
            Backend::Postgres { admin_url } => {
                let (dir, scratch) = scratch(label, keep)?;
                let pg = PgDb::create(admin_url, label).await?;
                let db = vec![
                    OsString::from("--db"),
                    OsString::from(&pg.url),
                    OsString::from("--master-key"),
                    dir.join("master.key").into_os_string(),
                ];
                Stage::start(bins, dir, scratch, Some(pg), &db, hubs)
            }
        }
    }

    fn start(
        bins: &Bins,
        dir: PathBuf,
        scratch: Option<tempfile::TempDir>,
        pg: Option<PgDb>,
        db: &[OsString],
        hubs: usize,
    ) -> Result<Stage> {
        let key = create_key(bins, db, ALL_SCOPES)?;
        let hub = start_hub(bins, &dir, "hub", "tasuki-hub", db)?;
        let mut others = Vec::new();
        for i in 2..=hubs {
            others.push(start_hub(
                bins,
                &dir,
                &format!("hub-{i}"),
                &format!("tasuki-hub {i}"),
                db,
            )?);
        }
        let mut apis = vec![Api::new(&hub.url, &key, ALL_SCOPES)?];
        for h in &others {
            apis.push(Api::new(&h.url, &key, ALL_SCOPES)?);
        }
        Ok(Stage {
            bins: bins.clone(),
            dir,
            key,
            api: apis[0].clone(),
            hub,
            others,
            apis,
            pg,
            _scratch: scratch,
        })
    }

    /// Every hub, hub 1 first.
    pub fn hubs(&self) -> impl Iterator<Item = &Hub> {
        std::iter::once(&self.hub).chain(self.others.iter())
    }

    /// `tasuki register`, then `tasuki agent`; returns once the agent logs
    /// that it waits for sessions.
    pub async fn agent(&self, name: &str, max_concurrency: u32) -> Result<Proc> {
        self.agent_with(name, max_concurrency, &[]).await
    }

    /// [`agent`](Self::agent), with these arguments added to `tasuki
    /// agent`'s (`--set table.key=value`, say).
    pub async fn agent_with(
        &self,
        name: &str,
        max_concurrency: u32,
        extra: &[&str],
    ) -> Result<Proc> {
        self.agent_on(0, name, max_concurrency, extra).await
    }

    /// [`agent_with`](Self::agent_with), registered with (and polling)
    /// hub `hub` (0 is hub 1).
    pub async fn agent_on(
        &self,
        hub: usize,
        name: &str,
        max_concurrency: u32,
        extra: &[&str],
    ) -> Result<Proc> {
        let url = &self
            .hubs()
            .nth(hub)
            .with_context(|| format!("the stage has no hub {}", hub + 1))?
            .url;
        let dir = self.dir.join(format!("robot-{name}"));
        std::fs::create_dir_all(&dir).context("create the robot's folder")?;
        let secret = dir.join("secret.txt");
        std::fs::write(&secret, &self.key.secret).context("write the secret file")?;
        let config = dir.join("agent.toml");
        let out = Command::new(&self.bins.tasuki)
            .args(["register", "--url", url, "--name", name])
            .args(["--access-key-id", &self.key.id, "--secret-access-key-file"])
            .arg(&secret)
            .arg("--config")
            .arg(&config)
            .arg("--work-dir")
            .arg(dir.join("work"))
            .args(["--max-concurrency", &max_concurrency.to_string()])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {} register", self.bins.tasuki.display()))?;
        let _ = std::fs::remove_file(&secret);
        ensure!(
            out.status.success(),
            "tasuki register failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let log = dir.join(format!("agent-{}.log", now_nanos()));
        let stderr = std::fs::File::create(&log).context("create the agent's log")?;
        let child = Command::new(&self.bins.tasuki)
            .arg("agent")
            .arg("--config")
            .arg(&config)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("start {} agent", self.bins.tasuki.display()))?;
        let mut agent = Proc {
            child: Some(child),
            what: format!("tasuki agent `{name}`"),
            log,
            graceful: false,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.log_text().contains("waiting for sessions") {
            agent.ensure_running()?;
            ensure!(
                Instant::now() < deadline,
                "{} did not register within 30 s; its log:\n{}",
                agent.what,
                tail(&agent.log_text(), 20)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(agent)
    }

    /// Registers a workflow and returns its id.
    pub async fn workflow(&self, yaml: &str) -> Result<i64> {
        self.workflow_with(yaml, serde_json::json!({})).await
    }

    /// Registers a workflow with these fields beside its `yaml`
    /// (`workflow_robots`, `robot_labels`) and returns its id.
    pub async fn workflow_with(&self, yaml: &str, fields: serde_json::Value) -> Result<i64> {
        let mut body = serde_json::json!({ "yaml": yaml });
        if let (Some(b), Some(f)) = (body.as_object_mut(), fields.as_object()) {
            b.extend(f.clone());
        }
        let r = self
            .api
            .post("/v1/workflows", &body)
            .await
            .context("register the workflow")?;
        r["id"]
            .as_i64()
            .with_context(|| format!("POST /v1/workflows answered without an id: {r}"))
    }

    /// The hub's and agents' WARN/ERROR lines, as report lines.
    pub fn problems_report(&self, agents: &[&Proc]) -> String {
        let mut out = String::new();
        for p in self.hubs().map(|h| &h.proc).chain(agents.iter().copied()) {
            let (n, first) = p.problems(3);
            if n == 0 {
                out.push_str(&format!("- {}: no WARN/ERROR lines in its log\n", p.what));
            } else {
                out.push_str(&format!(
                    "- {}: **{n} WARN/ERROR lines** in its log; the first:\n",
                    p.what
                ));
                for l in first {
                    out.push_str(&format!("  - `{}`\n", clip(&l, 300)));
                }
            }
        }
        out
    }
}

/// A scratch folder: its path, and its guard unless it is kept.
fn scratch(label: &str, keep: bool) -> Result<(PathBuf, Option<tempfile::TempDir>)> {
    let scratch = tempfile::Builder::new()
        .prefix(&format!("tasuki-fleet-{label}-"))
        .tempdir()
        .context("create a scratch folder")?;
    let dir = scratch.path().to_path_buf();
    if keep {
        eprintln!("[{label}] keeping {}", dir.display());
        let _ = scratch.keep();
        return Ok((dir, None));
    }
    Ok((dir, Some(scratch)))
}

pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

pub fn now_nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// A field of /proc/PID/status in kB (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .with_context(|| format!("/proc/{pid}/status has no {field}"))?;
    line[field.len() + 1..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot read {line:?}"))
}

pub fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// User plus system CPU seconds of a process, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name, in parentheses, may hold spaces: count from after it.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat has no field {}", i + 3))
    };
    Ok((field(11)? + field(12)?) as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// Whether a process is alive; a zombie counts as dead.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/status")) {
        Ok(status) => !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z')),
        Err(_) => false,
    }
}

pub fn kill(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Raises the soft limit on open files to the hard limit; returns both.
pub fn raise_nofile() -> Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(NOFILE)")?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    Ok((soft, hard))
}
