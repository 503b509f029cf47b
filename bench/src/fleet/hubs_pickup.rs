//! `pickup-hubs`: the pickup of `pickup` (one idle real agent; from just
//! before `POST /v1/session_queues` is sent to the first step's HTTP
//! request reaching a loopback server) on SQLite, on PostgreSQL with one
//! hub, and on PostgreSQL with several hubs, side by side in one run: the
//! three setups run at once and take turns, a chunk of sessions each, so
//! that the machine's noise falls on all of them alike.
//!
//! With several hubs the agent polls hub 1 and the POSTs go to each hub in
//! turn: a session queued on hub 2 or 3 reaches the agent through the
//! hubs' NOTIFY (`hub/src/peers.rs`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::sync::mpsc;

use crate::Opts;
use crate::api::Api;
use crate::pickup::{hit_server, loopback_baseline};
use crate::procs::{Backend, Bins, Proc, Stage, postgres_backend};
use crate::stats::{Dist, ms, ratio};

/// Sessions a setup runs before the next one takes its turn.
const CHUNK: usize = 25;
/// The PostgreSQL pickup target at p99, from the POST being sent (ms).
pub const TARGET_P99_MS: f64 = 10.0;

pub const PICKUP_WORKFLOW: &str = "version: 1\nname: pickup\nparams:\n  url: \"\"\nsteps:\n  - id: hit\n    action: http.request\n    with:\n      url: \"${params.url}\"\n      method: GET\n";

/// Pickup samples, in milliseconds.
#[derive(Default)]
pub struct Pickups {
    /// Request arriving − POST sent.
    pub from_sent: Dist,
    /// Request arriving − POST returned (negative when it came first).
    pub from_posted: Dist,
    pub post_rtt: Dist,
    /// From the POST being sent, by the hub the POST went to.
    pub by_hub: Vec<Dist>,
    /// Requests that arrived before the POST's answer was read.
    pub early: usize,
}

/// The bench's loopback server and the sessions sent to it so far.
pub struct Probe {
    pub server: String,
    arrivals: mpsc::UnboundedReceiver<(u64, Instant)>,
    seen: HashMap<u64, Instant>,
    /// Sessions queued so far; the next one's number.
    pub next: u64,
}

impl Probe {
    pub async fn new() -> Result<Probe> {
        let (server, arrivals) = hit_server().await?;
        Ok(Probe {
            server,
            arrivals,
            seen: HashMap::new(),
            next: 0,
        })
    }

    /// Queues one session of `wf` (its `url` param this server's) on the
    /// next hub of `apis` in turn, waits for its step's request, then for
    /// its success; counts it in `into` unless it is among the first
    /// `warmup`.
    pub async fn one(
        &mut self,
        apis: &[Api],
        wf: i64,
        warmup: usize,
        settle: Duration,
        into: &mut Pickups,
    ) -> Result<()> {
        let i = self.next;
        self.next += 1;
        let target = i as usize % apis.len();
        let api = &apis[target];
        let url = format!("{}/hit?s={i}", self.server);
        let sent = Instant::now();
        let id = api.queue(wf, json!({ "url": url })).await?;
        let posted = Instant::now();
        let deadline = posted + Duration::from_secs(30);
        let arrived = loop {
            if let Some(at) = self.seen.remove(&i) {
                break at;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.arrivals.recv()).await {
                Ok(Some((n, at))) => {
                    self.seen.insert(n, at);
                }
                Ok(None) => bail!("the loopback server stopped"),
                Err(_) => bail!(
                    "session {id} (#{i}, queued on hub {}) did not reach the loopback server \
                     within 30 s; status {}",
                    target + 1,
                    api.status(id).await.unwrap_or_default()
                ),
            }
        };
        api.succeeded(id).await?;
        if i as usize >= warmup {
            let d = arrived.saturating_duration_since(sent);
            into.from_sent.push(d);
            if into.by_hub.len() < apis.len() {
                into.by_hub.resize(apis.len(), Dist::default());
            }
            into.by_hub[target].push(d);
            into.post_rtt.push(posted - sent);
            if arrived < posted {
                into.early += 1;
                into.from_posted
                    .push_ms(-((posted - arrived).as_secs_f64() * 1e3));
            } else {
                into.from_posted.push(arrived - posted);
            }
        }
        tokio::time::sleep(settle).await;
        Ok(())
    }
}

/// One setup: its hubs, its agent (on hub 1) and its loopback server.
struct Setup {
    name: String,
    stage: Stage,
    agent: Proc,
    probe: Probe,
    wf: i64,
    got: Pickups,
}

impl Setup {
    async fn new(
        bins: &Bins,
        opts: &Opts,
        name: &str,
        label: &str,
        backend: &Backend,
        hubs: usize,
    ) -> Result<Setup> {
        eprintln!("[pickup-hubs] starting {name}");
        let stage = Stage::with_backend(bins, label, opts.keep, backend, hubs).await?;
        let agent = stage.agent(&format!("{label}-1"), 1).await?;
        let probe = Probe::new().await?;
        let wf = stage.workflow(PICKUP_WORKFLOW).await?;
        Ok(Setup {
            name: name.to_string(),
            stage,
            agent,
            probe,
            wf,
            got: Pickups::default(),
        })
    }

    async fn one(&mut self, warmup: usize, settle: Duration) -> Result<()> {
        self.probe
            .one(&self.stage.apis, self.wf, warmup, settle, &mut self.got)
            .await
            .with_context(|| self.name.clone())
    }
}

pub fn cell(d: &mut Dist) -> String {
    format!(
        "{} / {} / {}",
        ms(d.pct(50.0)),
        ms(d.pct(99.0)),
        ms(d.max())
    )
}

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let pg = postgres_backend(opts.postgres.as_deref())?;
    let hubs = opts.hubs.max(2);
    let mut setups = vec![
        Setup::new(
            bins,
            opts,
            "SQLite, one hub",
            "pk-sqlite",
            &Backend::Sqlite,
            1,
        )
        .await?,
        Setup::new(bins, opts, "PostgreSQL, one hub", "pk-pg1", &pg, 1).await?,
        Setup::new(
            bins,
            opts,
            &format!("PostgreSQL, {hubs} hubs"),
            &format!("pk-pg{hubs}"),
            &pg,
            hubs,
        )
        .await?,
    ];
    let mut baseline = loopback_baseline(&setups[0].probe.server, 500).await?;
    let settle = Duration::from_millis(opts.settle_ms);
    let total = opts.warmup + opts.sessions;
    let mut round = 0usize;
    while setups.iter().any(|s| (s.probe.next as usize) < total) {
        // Each round starts with another setup.
        let n = setups.len();
        for k in 0..n {
            let s = &mut setups[(round + k) % n];
            for _ in 0..CHUNK {
                if s.probe.next as usize >= total {
                    break;
                }
                s.one(opts.warmup, settle).await?;
            }
        }
        round += 1;
        eprintln!(
            "[pickup-hubs] {}/{total} sessions on each setup",
            setups[0].probe.next.min(total as u64)
        );
    }
    for s in &mut setups {
        for h in s.stage.hubs() {
            h.proc.ensure_alive()?;
        }
        s.agent.ensure_running()?;
    }

    let mut out = String::new();
    writeln!(out, "## pickup-hubs\n")?;
    writeln!(
        out,
        "One idle agent (max_concurrency 1) per setup, polling hub 1; the three setups run at \
         once and take turns, {CHUNK} sessions each, rotating which goes first. Per setup: {} \
         sessions ({} warm-up not counted), each queued only after the previous one reached \
         `success` and {} ms more. With {hubs} hubs the POSTs go to hub 1, 2, 3, 1, ... so two \
         in three pickups cross hubs through NOTIFY. Pickup = the workflow's first step \
         (`http.request`) reaching the bench's loopback server − just before `POST \
         /v1/session_queues` is sent (as in `pickup`'s reference row); beside it, from the POST \
         returning.\n",
        opts.sessions, opts.warmup, opts.settle_ms
    )?;
    writeln!(
        out,
        "| setup | pickup from POST sent, p50 / p99 / max | from POST returned, p50 / p99 / max | POST round trip, p50 / p99 / max | p50, p99 vs SQLite |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    let (s50, s99) = (
        setups[0].got.from_sent.pct(50.0),
        setups[0].got.from_sent.pct(99.0),
    );
    for s in &mut setups {
        let (p50, p99) = (s.got.from_sent.pct(50.0), s.got.from_sent.pct(99.0));
        writeln!(
            out,
            "| {} | **{}** | {} | {} | {}, {} |",
            s.name,
            cell(&mut s.got.from_sent),
            cell(&mut s.got.from_posted),
            cell(&mut s.got.post_rtt),
            ratio(p50, s50),
            ratio(p99, s99)
        )?;
    }
    writeln!(
        out,
        "| baseline: one kept-alive loopback GET (500) | {} | | | |",
        cell(&mut baseline)
    )?;
    let multi = &mut setups[2];
    writeln!(
        out,
        "\n{}, by the hub the POST went to (pickup from POST sent, p50 / p99 / max):\n",
        multi.name
    )?;
    writeln!(out, "| POST to | sessions | pickup |")?;
    writeln!(out, "|---|---|---|")?;
    for (h, d) in multi.got.by_hub.iter_mut().enumerate() {
        writeln!(
            out,
            "| hub {}{} | {} | {} |",
            h + 1,
            if h == 0 {
                " (the agent's: no NOTIFY)"
            } else {
                " (crosses hubs)"
            },
            d.len(),
            cell(d)
        )?;
    }
    writeln!(out)?;
    for s in &mut setups[1..] {
        let p99 = s.got.from_sent.pct(99.0);
        writeln!(
            out,
            "- Target, {}: p99 ≤ {TARGET_P99_MS} ms from the POST sent: {} ({}; {} of {} above).",
            s.name,
            if p99 <= TARGET_P99_MS {
                "**met**"
            } else {
                "**missed**"
            },
            ms(p99),
            s.got.from_sent.count_above(TARGET_P99_MS),
            s.got.from_sent.len()
        )?;
    }
    for s in &setups {
        if s.got.early > 0 {
            writeln!(
                out,
                "- {}: {} requests arrived before the POST's answer was read (counted as negative).",
                s.name, s.got.early
            )?;
        }
    }
    writeln!(out)?;
    for s in &setups {
        writeln!(out, "{}:\n", s.name)?;
        out.push_str(&s.stage.problems_report(&[&s.agent]));
        writeln!(out)?;
    }
    Ok(out)
}
