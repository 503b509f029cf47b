//! The processes under test: `tasuki-hub` and `tasuki agent`, each started
//! from target/release in a scratch folder and killed when its guard is
//! dropped; and what /proc says about them.

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

/// `tasuki-hub keys create` on a database that is not being served.
pub fn create_key(bins: &Bins, db: &Path, scopes: &str) -> Result<Key> {
    let out = Command::new(&bins.hub)
        .args(["keys", "create", "--scopes", scopes, "--db"])
        .arg(db)
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

pub fn start_hub(bins: &Bins, dir: &Path) -> Result<Hub> {
    let log = dir.join("hub.log");
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
        .arg("--db")
        .arg(dir.join("hub.db"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("start {}", bins.hub.display()))?;
    let stdout = child.stdout.take();
    let mut proc = Proc {
        child: Some(child),
        what: "tasuki-hub".into(),
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

/// One hub with its database, key and a public API client, in a scratch
/// folder of its own.
pub struct Stage {
    pub bins: Bins,
    pub dir: PathBuf,
    pub key: Key,
    pub api: Api,
    pub hub: Hub,
    // Last: removed after the processes are gone.
    _scratch: Option<tempfile::TempDir>,
}

impl Stage {
    pub fn new(bins: &Bins, label: &str, keep: bool) -> Result<Stage> {
        let scratch = tempfile::Builder::new()
            .prefix(&format!("tasuki-fleet-{label}-"))
            .tempdir()
            .context("create a scratch folder")?;
        let dir = scratch.path().to_path_buf();
        let scratch = if keep {
            eprintln!("[{label}] keeping {}", dir.display());
            let _ = scratch.keep();
            None
        } else {
            Some(scratch)
        };
        let key = create_key(bins, &dir.join("hub.db"), ALL_SCOPES)?;
        let hub = start_hub(bins, &dir)?;
        let api = Api::new(&hub.url, &key, ALL_SCOPES)?;
        Ok(Stage {
            bins: bins.clone(),
            dir,
            key,
            api,
            hub,
            _scratch: scratch,
        })
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
        let dir = self.dir.join(format!("robot-{name}"));
        std::fs::create_dir_all(&dir).context("create the robot's folder")?;
        let secret = dir.join("secret.txt");
        std::fs::write(&secret, &self.key.secret).context("write the secret file")?;
        let config = dir.join("agent.toml");
        let out = Command::new(&self.bins.tasuki)
            .args(["register", "--url", &self.hub.url, "--name", name])
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
        let r = self
            .api
            .post("/v1/workflows", &serde_json::json!({ "yaml": yaml }))
            .await
            .context("register the workflow")?;
        r["id"]
            .as_i64()
            .with_context(|| format!("POST /v1/workflows answered without an id: {r}"))
    }

    /// The hub's and agents' WARN/ERROR lines, as report lines.
    pub fn problems_report(&self, agents: &[&Proc]) -> String {
        let mut out = String::new();
        for p in std::iter::once(&self.hub.proc).chain(agents.iter().copied()) {
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
