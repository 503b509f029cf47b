//! `fleet`: one hub, R simulated robots in this process (each its own
//! long-poll loop), and the pickup of sessions queued one at a time.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tasuki_protocol::robot::{LEASE_HEADER, POLL_CLIENT_TIMEOUT_SECONDS};
use tasuki_protocol::{
    FinishSession, HostFacts, PollRequest, PollResponse, RegisterRobot, SessionStatus,
};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::Opts;
use crate::procs::{Bins, Stage, clip, cpu_seconds, mib, status_kb};
use crate::stats::{Dist, ms};

/// What the robots share.
pub struct Shared {
    http: reqwest::Client,
    /// The hubs' URLs: robot i polls hub i mod their number.
    bases: Vec<String>,
    token: String,
    /// The labels every simulated robot registers with.
    labels: Vec<String>,
    /// Robots that have sent their first poll.
    pub polling: AtomicUsize,
    pub polls: AtomicU64,
    pub leases: AtomicU64,
    pub errors: AtomicU64,
    pub first_errors: Mutex<Vec<String>>,
    /// (session id, when the lease arrived, robot index).
    tx: mpsc::UnboundedSender<Lease>,
    registering: Semaphore,
}

/// (session id, when its lease reached the robot, robot index).
pub type Lease = (i64, Instant, usize);

impl Shared {
    /// Stops the robots; returns how many errors they met and the first
    /// few of them.
    pub async fn stop(&self, mut robots: JoinSet<()>) -> (u64, Vec<String>) {
        robots.abort_all();
        while robots.join_next().await.is_some() {}
        let first = self
            .first_errors
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        (self.errors.load(Ordering::Relaxed), first)
    }

    /// Robots for these hubs (robot i polls hub i mod their number), all
    /// with `token` and `labels`; each lease is reported down the channel.
    pub fn new(
        bases: Vec<String>,
        token: String,
        labels: Vec<String>,
    ) -> Result<(Arc<Shared>, mpsc::UnboundedReceiver<Lease>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(300))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .context("build the robots' HTTP client")?;
        let shared = Arc::new(Shared {
            http,
            bases,
            token,
            labels,
            polling: AtomicUsize::new(0),
            polls: AtomicU64::new(0),
            leases: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_errors: Mutex::new(Vec::new()),
            tx,
            registering: Semaphore::new(32),
        });
        Ok((shared, rx))
    }

    /// Starts robots 0..r; returns once every one has sent its first poll
    /// (or fails after `limit`), with the time that took.
    pub async fn start(
        self: &Arc<Self>,
        r: usize,
        tag: &str,
        limit: Duration,
    ) -> Result<(JoinSet<()>, Duration)> {
        let started = Instant::now();
        let mut robots = JoinSet::new();
        for i in 0..r {
            robots.spawn(robot(self.clone(), i));
        }
        let deadline = started + limit;
        let mut last = Instant::now();
        while self.polling.load(Ordering::Relaxed) < r {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {r} robots polling after {limit:?}; the first errors: {:?}",
                    self.polling.load(Ordering::Relaxed),
                    self.first_errors
                        .lock()
                        .map(|v| v.clone())
                        .unwrap_or_default()
                );
            }
            if last.elapsed() > Duration::from_secs(5) {
                eprintln!(
                    "[{tag}] {} of {r} robots polling",
                    self.polling.load(Ordering::Relaxed)
                );
                last = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((robots, started.elapsed()))
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut v) = self.first_errors.lock()
            && v.len() < 5
        {
            v.push(what);
        }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        index: usize,
        method: reqwest::Method,
        path: &str,
        lease: Option<&str>,
        body: &B,
        timeout: Duration,
    ) -> Result<T> {
        let mut r = self
            .http
            .request(
                method.clone(),
                format!("{}{path}", self.bases[index % self.bases.len()]),
            )
            .bearer_auth(&self.token)
            .timeout(timeout)
            .json(body);
        if let Some(lease) = lease {
            r = r.header(LEASE_HEADER, lease);
        }
        let resp = r
            .send()
            .await
            .with_context(|| format!("{method} {path}: no answer"))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{method} {path}: read the answer"))?;
        if !status.is_success() {
            bail!(
                "{method} {path}: {status}: {}",
                clip(&String::from_utf8_lossy(&bytes), 300)
            );
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {path}: the answer is not the JSON expected"))
    }
}

async fn robot(shared: Arc<Shared>, index: usize) {
    let name = format!("sim-{index:04}");
    let instance_id = format!("bench-instance-{index}");
    let short = Duration::from_secs(30);
    // Register, retrying: a thousand at once may meet a busy hub.
    loop {
        let registered = {
            let _permit = shared.registering.acquire().await;
            let body = RegisterRobot {
                instance_id: instance_id.clone(),
                labels: shared.labels.clone(),
                version: "fleet-bench".into(),
                max_concurrency: 1,
                host: HostFacts::default(),
                replace: false,
                actions: None,
            };
            shared
                .call::<_, serde_json::Value>(
                    index,
                    reqwest::Method::PUT,
                    &format!("/v1/robot/robots/{name}"),
                    None,
                    &body,
                    short,
                )
                .await
        };
        match registered {
            Ok(_) => break,
            Err(e) => {
                shared.error(format!("{name}: register: {e:#}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let poll_path = format!("/v1/robot/robots/{name}/poll");
    let mut n = 0u64;
    let mut first = true;
    loop {
        let req = PollRequest {
            instance_id: instance_id.clone(),
            poll_id: format!("{index}-{n}"),
            free_slots: 1,
            draining: false,
            held: Vec::new(),
            metrics: None,
            poll_seq: None,
        };
        if first {
            shared.polling.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        shared.polls.fetch_add(1, Ordering::Relaxed);
        let answer: Result<PollResponse> = shared
            .call(
                index,
                reqwest::Method::POST,
                &poll_path,
                None,
                &req,
                Duration::from_secs(POLL_CLIENT_TIMEOUT_SECONDS),
            )
            .await;
        let at = Instant::now();
        let resp = match answer {
            Ok(r) => r,
            Err(e) => {
                // The same poll_id again: a lost answer's offers come back.
                shared.error(format!("{name}: poll: {e:#}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        n += 1;
        for lease in resp.leases {
            shared.leases.fetch_add(1, Ordering::Relaxed);
            let _ = shared.tx.send((lease.session_id, at, index));
            let id = lease.session_id;
            let finish = FinishSession {
                idempotency_key: format!("finish-{id}-{}", lease.lease_id),
                status: SessionStatus::Success,
                ended_at: jiff::Timestamp::now(),
                error: None,
                steps: Vec::new(),
                outputs: None,
                suspend: None,
            };
            let done: Result<serde_json::Value> = shared
                .call(
                    index,
                    reqwest::Method::POST,
                    &format!("/v1/robot/sessions/{id}/finish"),
                    Some(&lease.lease_id),
                    &finish,
                    short,
                )
                .await;
            if let Err(e) = done {
                shared.error(format!("{name}: finish {id}: {e:#}"));
            }
        }
    }
}

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let stage = Stage::new(bins, "fleet", opts.keep)?;
    let hub_pid = stage.hub.proc.pid();
    let rss0 = status_kb(hub_pid, "VmRSS")?;
    let wf = stage
        .workflow("version: 1\nname: fleet-bench\nsteps:\n  - id: note\n    action: log\n    with: {message: hello}\n")
        .await?;
    let (shared, mut rx) = Shared::new(
        vec![stage.api.base.clone()],
        stage.api.token.clone(),
        Vec::new(),
    )?;
    let r = opts.robots;
    let (robots, ramp) = shared.start(r, "fleet", Duration::from_secs(300)).await?;
    eprintln!("[fleet] all {r} robots polling after {ramp:.1?}; settling 2 s");
    let (c_settle, t_settle) = (cpu_seconds(hub_pid)?, Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settle_cpu = cpu_seconds(hub_pid)? - c_settle;
    let settle_wall = t_settle.elapsed().as_secs_f64();
    let rss_polling = status_kb(hub_pid, "VmRSS")?;
    let errors_before = shared.errors.load(Ordering::Relaxed);

    let mut pickup = Dist::default();
    let mut from_sent = Dist::default();
    let mut post_rtt = Dist::default();
    let mut seen: HashMap<i64, (Instant, usize)> = HashMap::new();
    let mut by_robot: HashMap<usize, usize> = HashMap::new();
    let mut early = 0usize;
    let cpu0 = cpu_seconds(hub_pid)?;
    let t0 = Instant::now();
    for k in 0..opts.fleet_sessions {
        let sent = Instant::now();
        let id = stage.api.queue(wf, json!({})).await?;
        let posted = Instant::now();
        let limit = posted + Duration::from_secs(30);
        let (at, who) = loop {
            if let Some(hit) = seen.remove(&id) {
                break hit;
            }
            let left = limit.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some((sid, at, who))) => {
                    seen.insert(sid, (at, who));
                }
                Ok(None) => bail!("the robots stopped"),
                Err(_) => bail!(
                    "no robot got session {id} within 30 s (status {})",
                    stage.api.status(id).await.unwrap_or_default()
                ),
            }
        };
        *by_robot.entry(who).or_default() += 1;
        post_rtt.push(posted - sent);
        from_sent.push(at.saturating_duration_since(sent));
        if at < posted {
            early += 1;
            pickup.push_ms(-((posted - at).as_secs_f64() * 1e3));
        } else {
            pickup.push(at - posted);
        }
        if (k + 1) % 100 == 0 {
            eprintln!(
                "[fleet] {}/{} sessions picked up",
                k + 1,
                opts.fleet_sessions
            );
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(hub_pid)? - cpu0;
    let rss1 = status_kb(hub_pid, "VmRSS")?;
    let hwm = status_kb(hub_pid, "VmHWM")?;
    let (errors, first_errors) = shared.stop(robots).await;

    let mut out = String::new();
    writeln!(out, "## fleet\n")?;
    writeln!(
        out,
        "One hub; {r} simulated robots in the bench process (one shared key, free_slots 1, each \
         its own long poll; on a lease: finish `success`, poll again). All polling after \
         {ramp:.1?}, then 2 s of rest, then {} sessions (one `log` step) queued one at a time; \
         pickup = the lease's poll answer reaching its robot − `POST /v1/session_queues` \
         returning.\n",
        opts.fleet_sessions
    )?;
    writeln!(out, "| measure | p50 | p99 | max |")?;
    writeln!(out, "|---|---|---|---|")?;
    writeln!(
        out,
        "| pickup under {r} polling robots | **{}** | **{}** | {} |",
        ms(pickup.pct(50.0)),
        ms(pickup.pct(99.0)),
        ms(pickup.max())
    )?;
    writeln!(
        out,
        "| (for reference) lease reaching its robot − POST sent | {} | {} | {} |",
        ms(from_sent.pct(50.0)),
        ms(from_sent.pct(99.0)),
        ms(from_sent.max())
    )?;
    writeln!(
        out,
        "| (for reference) POST /v1/session_queues round trip | {} | {} | {} |",
        ms(post_rtt.pct(50.0)),
        ms(post_rtt.pct(99.0)),
        ms(post_rtt.max())
    )?;
    writeln!(out)?;
    writeln!(out, "| hub | value |")?;
    writeln!(out, "|---|---|")?;
    writeln!(out, "| RSS before the robots | {:.1} MiB |", mib(rss0))?;
    writeln!(
        out,
        "| RSS with {r} robots polling | {:.1} MiB |",
        mib(rss_polling)
    )?;
    writeln!(
        out,
        "| RSS after the queueing phase (peak VmHWM) | **{:.1} MiB** ({:.1} MiB) |",
        mib(rss1),
        mib(hwm)
    )?;
    writeln!(
        out,
        "| CPU during the queueing phase | **{cpu:.2} s** over {wall:.1} s ({:.0} %) |",
        100.0 * cpu / wall
    )?;
    writeln!(
        out,
        "| CPU while {r} robots wait, nothing queued | {settle_cpu:.2} s over {settle_wall:.1} s |"
    )?;
    writeln!(
        out,
        "\nPolls sent: {}; leases received: {}; sessions spread over {} robots; robot-side errors: \
         {errors} ({} before the queueing phase).{}",
        shared.polls.load(Ordering::Relaxed),
        shared.leases.load(Ordering::Relaxed),
        by_robot.len(),
        errors_before,
        if early > 0 {
            format!(" {early} leases arrived before the POST's answer was read.")
        } else {
            String::new()
        }
    )?;
    for e in &first_errors {
        writeln!(out, "- `{}`", clip(e, 300))?;
    }
    writeln!(out)?;
    out.push_str(&stage.problems_report(&[]));
    Ok(out)
}
