//! `fleet-hubs`: several hubs on one PostgreSQL database, thousands of
//! simulated robots (swarm.rs) long-polling across them (robot i on hub i
//! mod hubs), and one real agent among them on hub 1. While the robots
//! wait: each hub's RSS and CPU, and the database's connections. Then the
//! pickup of sessions pinned to the real agent (queued on each hub in
//! turn, as in `pickup-hubs`), against the same measured before the
//! robots came; and the lease of sessions for the simulated robots.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::Opts;
use crate::hubs_pickup::{PICKUP_WORKFLOW, Pickups, Probe, TARGET_P99_MS, cell};
use crate::procs::{Bins, Stage, clip, cpu_seconds, mib, postgres_backend, status_kb};
use crate::stats::{Dist, ms, ratio};
use crate::swarm::Shared;

/// The label the simulated robots carry, and the real agent does not.
const SIM_LABEL: &str = "sim";
/// Seconds the robots wait, sampled every second, before anything is
/// queued: one whole hold (the hub's default 25 s) and more, so that the
/// window holds the wave of empty answers to the robots' first polls,
/// which the ramp bunched together, and their next polls.
const WAIT_SECONDS: u64 = 30;
/// The pinned pickups among the robots are spread over at least this
/// long (a hold and more), so that they sample every phase of the
/// robots' poll cycle, the waves of re-polls included.
const SPREAD_SECONDS: u64 = 30;

/// Each hub's VmRSS, kB.
fn rss(stage: &Stage) -> Result<Vec<u64>> {
    stage
        .hubs()
        .map(|h| status_kb(h.proc.pid(), "VmRSS"))
        .collect()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn list_mib(kb: &[u64]) -> String {
    kb.iter()
        .map(|k| format!("{:.1}", mib(*k)))
        .collect::<Vec<_>>()
        .join(" / ")
}

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let pg = postgres_backend(opts.postgres.as_deref())?;
    let hubs = opts.hubs.max(2);
    let r = opts.swarm_robots;
    let stage = Stage::with_backend(bins, "fleet-hubs", opts.keep, &pg, hubs).await?;
    let db = stage
        .pg
        .as_ref()
        .context("a PostgreSQL stage without its database")?;
    let pids: Vec<u32> = stage.hubs().map(|h| h.proc.pid()).collect();
    let rss_start = rss(&stage)?;
    let conns_start = db.connections().await?;
    let agent = stage.agent_on(0, "real-1", 1, &[]).await?;
    let mut probe = Probe::new().await?;
    let pinned = stage
        .workflow_with(PICKUP_WORKFLOW, json!({ "workflow_robots": ["real-1"] }))
        .await?;
    let sim_wf = stage
        .workflow_with(
            "version: 1\nname: fleet-bench\nsteps:\n  - id: note\n    action: log\n    with: {message: hello}\n",
            json!({ "robot_labels": [SIM_LABEL] }),
        )
        .await?;
    let settle = Duration::from_millis(opts.settle_ms);
    let k = opts.swarm_sessions;

    // The real agent's pickup with no simulated robots.
    eprintln!("[fleet-hubs] {k} pinned pickups before the robots");
    let warm = 10usize;
    let mut before = Pickups::default();
    for _ in 0..warm + k {
        probe
            .one(&stage.apis, pinned, warm, settle, &mut before)
            .await
            .context("pinned pickup, no simulated robots")?;
    }
    let rss_agent_only = rss(&stage)?;

    let (shared, mut leases) = Shared::new(
        stage.apis.iter().map(|a| a.base.clone()).collect(),
        stage.api.token.clone(),
        vec![SIM_LABEL.to_string()],
    )?;
    let (robots, ramp) = shared
        .start(r, "fleet-hubs", Duration::from_secs(300))
        .await?;
    eprintln!("[fleet-hubs] all {r} robots polling after {ramp:.1?}; waiting {WAIT_SECONDS} s");
    let errors_ramp = shared.errors.load(Ordering::Relaxed);
    let polls_before_wait = shared.polls.load(Ordering::Relaxed);
    let cpu0: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    let mut conns_max = (0i64, 0i64);
    let mut conns_seen = Vec::new();
    for _ in 0..WAIT_SECONDS {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let c = db.connections().await?;
        conns_seen.push(c.0);
        conns_max = (conns_max.0.max(c.0), conns_max.1.max(c.1));
    }
    let wait_wall = t0.elapsed().as_secs_f64();
    let wait_cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| cpu_seconds(*p).map(|c| c - c0))
        .collect::<Result<_>>()?;
    let rss_waiting = rss(&stage)?;
    let fds_waiting: Vec<usize> = pids.iter().map(|p| open_fds(*p)).collect();
    let bench_fds = open_fds(std::process::id());
    let polls_waiting = shared.polls.load(Ordering::Relaxed);

    // The real agent's pickup among them.
    eprintln!("[fleet-hubs] {k} pinned pickups among {r} robots");
    let mut during = Pickups::default();
    let skip = probe.next as usize + warm;
    let spread = settle.max(Duration::from_millis(
        SPREAD_SECONDS * 1000 / k.max(1) as u64,
    ));
    let t_during = Instant::now();
    for _ in 0..warm + k {
        probe
            .one(&stage.apis, pinned, skip, spread, &mut during)
            .await
            .context("pinned pickup among the simulated robots")?;
    }

    let during_wall = t_during.elapsed().as_secs_f64();
    // Sessions for the simulated robots, queued on each hub in turn.
    eprintln!("[fleet-hubs] {k} sessions for the simulated robots");
    let mut sim_sent = Dist::default();
    let mut sim_posted = Dist::default();
    let mut sim_by_hub = vec![Dist::default(); hubs];
    let mut seen: HashMap<i64, Instant> = HashMap::new();
    let mut early = 0usize;
    for i in 0..k {
        let target = i % hubs;
        let api = &stage.apis[target];
        let sent = Instant::now();
        let id = api.queue(sim_wf, json!({})).await?;
        let posted = Instant::now();
        let limit = posted + Duration::from_secs(30);
        let at = loop {
            if let Some(at) = seen.remove(&id) {
                break at;
            }
            let left = limit.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, leases.recv()).await {
                Ok(Some((sid, at, _))) => {
                    seen.insert(sid, at);
                }
                Ok(None) => bail!("the simulated robots stopped"),
                Err(_) => bail!(
                    "no simulated robot got session {id} (queued on hub {}) within 30 s (status {})",
                    target + 1,
                    api.status(id).await.unwrap_or_default()
                ),
            }
        };
        let d = at.saturating_duration_since(sent);
        sim_sent.push(d);
        sim_by_hub[target].push(d);
        if at < posted {
            early += 1;
            sim_posted.push_ms(-((posted - at).as_secs_f64() * 1e3));
        } else {
            sim_posted.push(at - posted);
        }
    }
    let rss_end = rss(&stage)?;
    let hwm: Vec<u64> = pids
        .iter()
        .map(|p| status_kb(*p, "VmHWM"))
        .collect::<Result<_>>()?;
    let conns_end = db.connections().await?;
    let (errors, first_errors) = shared.stop(robots).await;
    for h in stage.hubs() {
        h.proc.ensure_alive()?;
    }

    let mut out = String::new();
    writeln!(out, "## fleet-hubs\n")?;
    writeln!(
        out,
        "{hubs} hubs on one PostgreSQL database; {r} simulated robots in the bench process (one \
         shared key, label `{SIM_LABEL}`, free_slots 1, robot i long-polling hub i mod {hubs}; on \
         a lease: finish `success`, poll again), and one real agent (`real-1`, max_concurrency \
         1) polling hub 1. All robots polling after {ramp:.1?}; then {WAIT_SECONDS} s of waiting, \
         sampled every second; then {k} sessions pinned to the real agent (`workflow_robots`, \
         one `http.request` step to the bench's loopback server) queued on hub 1, 2, 3, ... in \
         turn, one at a time, as in `pickup-hubs` ({warm} warm-up not counted), {} ms apart so that \
         they span {during_wall:.0} s, more than a hold (25 s) and so every phase of the \
         robots' poll cycle, against the same measured before the simulated robots came ({} ms \
         apart); then {k} sessions for the simulated robots \
         (`robot_labels: [{SIM_LABEL}]`, one `log` step), queued on each hub in turn, one at a \
         time.\n",
        spread.as_millis(),
        settle.as_millis()
    )?;
    writeln!(
        out,
        "| while the robots wait | hub 1 / hub 2 / ... |\n|---|---|"
    )?;
    writeln!(
        out,
        "| RSS at start (no robot) | {} MiB |",
        list_mib(&rss_start)
    )?;
    writeln!(
        out,
        "| RSS with the real agent only | {} MiB |",
        list_mib(&rss_agent_only)
    )?;
    writeln!(
        out,
        "| **RSS with {r} robots waiting** | **{} MiB** |",
        list_mib(&rss_waiting)
    )?;
    writeln!(
        out,
        "| RSS at the end (peak VmHWM) | {} MiB ({} MiB) |",
        list_mib(&rss_end),
        list_mib(&hwm)
    )?;
    writeln!(
        out,
        "| CPU over the {wait_wall:.1} s of waiting | {} s |",
        wait_cpu
            .iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    )?;
    writeln!(
        out,
        "| polls answered (all hubs) over the waiting | {} |",
        polls_waiting - polls_before_wait
    )?;
    writeln!(
        out,
        "| open descriptors while waiting | {} (the bench: {bench_fds}) |",
        fds_waiting
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    )?;
    writeln!(
        out,
        "\n| database `{}` (`pg_stat_activity` where `datname` is it) | connections (of which `tasuki-hub`'s) |\n|---|---|",
        db.name
    )?;
    writeln!(
        out,
        "| {hubs} hubs started, no robot | {} ({}) |",
        conns_start.0, conns_start.1
    )?;
    writeln!(
        out,
        "| **while {r} robots wait**: max of {WAIT_SECONDS} samples (each) | **{} ({})** ({}) |",
        conns_max.0,
        conns_max.1,
        conns_seen
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(out, "| at the end | {} ({}) |", conns_end.0, conns_end.1)?;
    writeln!(
        out,
        "\n| pickup (p50 / p99 / max) | from POST sent | from POST returned | POST round trip |\n|---|---|---|---|"
    )?;
    let (b50, b99) = (before.from_sent.pct(50.0), before.from_sent.pct(99.0));
    let (d50, d99) = (during.from_sent.pct(50.0), during.from_sent.pct(99.0));
    writeln!(
        out,
        "| real agent, no simulated robots ({} sessions) | {} | {} | {} |",
        before.from_sent.len(),
        cell(&mut before.from_sent),
        cell(&mut before.from_posted),
        cell(&mut before.post_rtt)
    )?;
    writeln!(
        out,
        "| **real agent among {r} waiting robots** ({} sessions) | **{}** | {} | {} |",
        during.from_sent.len(),
        cell(&mut during.from_sent),
        cell(&mut during.from_posted),
        cell(&mut during.post_rtt)
    )?;
    writeln!(
        out,
        "| ratio among / before (p50, p99) | {}, {} | | |",
        ratio(d50, b50),
        ratio(d99, b99)
    )?;
    writeln!(
        out,
        "| a simulated robot's lease, its poll's answer arriving ({k} sessions) | {} | {} | |",
        cell(&mut sim_sent),
        cell(&mut sim_posted)
    )?;
    writeln!(
        out,
        "\nBy the hub the POST went to (from POST sent, p50 / p99 / max): real agent among the \
         robots: {}; simulated robots: {}.",
        during
            .by_hub
            .iter_mut()
            .enumerate()
            .map(|(h, d)| format!("hub {} {}", h + 1, cell(d)))
            .collect::<Vec<_>>()
            .join("; "),
        sim_by_hub
            .iter_mut()
            .enumerate()
            .map(|(h, d)| format!("hub {} {}", h + 1, cell(d)))
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    writeln!(
        out,
        "\n- Target p99 ≤ {TARGET_P99_MS} ms (real agent, among the robots, from POST sent): {} ({}).",
        if d99 <= TARGET_P99_MS {
            "**met**"
        } else {
            "**missed**"
        },
        ms(d99)
    )?;
    writeln!(
        out,
        "- Polls sent: {} ({polls_waiting} by the end of the waiting); leases to simulated \
         robots: {}; robot-side errors: {errors} ({errors_ramp} during the ramp).{}",
        shared.polls.load(Ordering::Relaxed),
        shared.leases.load(Ordering::Relaxed),
        if early > 0 {
            format!(" {early} simulated leases arrived before the POST's answer was read.")
        } else {
            String::new()
        }
    )?;
    for e in &first_errors {
        writeln!(out, "  - `{}`", clip(e, 300))?;
    }
    writeln!(out)?;
    out.push_str(&stage.problems_report(&[&agent]));
    Ok(out)
}
