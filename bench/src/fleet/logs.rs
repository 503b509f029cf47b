//! `logs`: a step printing N timestamped lines, tailed at the hub while it
//! runs; against the same program writing to /dev/null.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::json;

use crate::Opts;
use crate::procs::{Bins, Stage, mib, now_nanos, status_kb};
use crate::stats::{Dist, ms, ratio};

/// The hidden `gen-lines N [--per-second R]`: prints `i <unix nanos>` for
/// i in 1..=N, flushing every 1000 lines (every hundredth of a second's
/// worth at a rate) so that the timestamps stay honest.
pub fn gen_lines(n: u64, per_second: Option<u64>) -> Result<()> {
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let flush_every = per_second.map_or(1000, |r| (r / 100).max(1));
    let started = Instant::now();
    for i in 1..=n {
        if let Some(rate) = per_second.filter(|r| *r > 0) {
            // Line i is due at (i - 1) / rate seconds.
            let due = started + Duration::from_secs_f64((i - 1) as f64 / rate as f64);
            let now = Instant::now();
            // Ahead by a millisecond or more: wait (lines go in bursts
            // of a millisecond's worth, not a sleep per line).
            if due > now + Duration::from_millis(1) {
                w.flush().context("flush")?;
                std::thread::sleep(due - now);
            }
        }
        writeln!(w, "{i} {}", now_nanos()).context("write a line")?;
        if i % flush_every == 0 {
            w.flush().context("flush")?;
        }
    }
    w.flush().context("flush")?;
    Ok(())
}

/// A page of `GET /v1/session_queues/{id}/logs`.
#[derive(Deserialize)]
pub struct Page {
    pub logs: Vec<Line>,
    pub status: String,
}

#[derive(Deserialize)]
pub struct Line {
    pub seq: u64,
    pub message: String,
}

/// A `gen-lines` line, `i <unix nanos>`: its number and when it was
/// printed; `None` for any other line.
pub fn gen_line(message: &str) -> Option<(u64, u128)> {
    let mut parts = message.split(' ');
    match (
        parts.next().and_then(|p| p.parse::<u64>().ok()),
        parts.next().and_then(|p| p.parse::<u128>().ok()),
    ) {
        (Some(i), Some(ns)) if parts.next().is_none() => Some((i, ns)),
        _ => None,
    }
}

fn baseline(bins: &Bins, lines: u64) -> Result<Duration> {
    let t = Instant::now();
    let status = Command::new(&bins.bench)
        .args(["gen-lines", &lines.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .context("run gen-lines")?;
    ensure!(status.success(), "gen-lines failed: {status}");
    Ok(t.elapsed())
}

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let n = opts.lines;
    let stage = Stage::new(bins, "logs", opts.keep)?;
    // A fresh agent: its VmHWM is this run's.
    let agent = stage.agent("logs-1", 1).await?;
    let exe = serde_json::to_string(&bins.bench.display().to_string())?;
    let yaml = format!(
        "version: 1\nname: logs-bench\nsteps:\n  - id: gen\n    action: shell.run\n    with:\n      argv: [{exe}, gen-lines, \"{n}\"]\n"
    );
    let wf = stage.workflow(&yaml).await?;
    let mut base = Dist::default();
    for _ in 0..3 {
        base.push(baseline(bins, n)?);
    }
    let tail = stage.api.fresh()?;
    let start = Instant::now();
    let id = stage.api.queue(wf, json!({})).await?;
    let mut after = 0u64;
    let mut gen_seen = 0u64;
    let mut other = 0u64;
    let mut disorder: Vec<String> = Vec::new();
    let mut lat = Dist::default();
    let mut calls = 0u64;
    let limit = Duration::from_secs(900);
    let mut last_report = Instant::now();
    let end = loop {
        let page: Page = tail
            .get_as(&format!("/v1/session_queues/{id}/logs?after_seq={after}"))
            .await?;
        let received = now_nanos();
        calls += 1;
        for l in &page.logs {
            if l.seq != after + 1 && disorder.len() < 5 {
                disorder.push(format!("seq {} after {after}", l.seq));
            }
            after = l.seq;
            match gen_line(&l.message) {
                Some((i, ns)) => {
                    gen_seen += 1;
                    if i != gen_seen && disorder.len() < 5 {
                        disorder.push(format!("line {i} arrived as the {gen_seen}th"));
                    }
                    lat.push_ms(received.saturating_sub(ns) as f64 / 1e6);
                }
                _ => other += 1,
            }
        }
        if page.status == "success" && gen_seen >= n {
            break Instant::now();
        }
        if matches!(page.status.as_str(), "error" | "cancelled") {
            bail!("the log session {id} ended {}", page.status);
        }
        if start.elapsed() > limit {
            bail!(
                "after {limit:?}: {gen_seen} of {n} lines at the hub, session {}",
                page.status
            );
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "[logs] {gen_seen}/{n} lines at the hub, session {}",
                page.status
            );
            last_report = Instant::now();
        }
        if page.logs.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let e2e = end - start;
    // Lines shipped after the answer that ended the loop would be extra.
    let extra: Page = tail
        .get_as(&format!("/v1/session_queues/{id}/logs?after_seq={after}"))
        .await?;
    let hwm = status_kb(agent.pid(), "VmHWM")?;
    let rss = status_kb(agent.pid(), "VmRSS")?;
    let hub_hwm = status_kb(stage.hub.proc.pid(), "VmHWM")?;
    let b = base.pct(50.0);
    let e = e2e.as_secs_f64() * 1e3;
    let mut out = String::new();
    writeln!(out, "## logs\n")?;
    writeln!(
        out,
        "One fresh agent; a `shell.run` step runs `tasuki-fleet-bench gen-lines {n}` (`i \
         <unix nanos>` per line, flushed every 1000 lines). The bench tails `GET …/logs?after_seq` \
         while it runs; a line's latency = the time its page was received − the time printed in \
         it.\n"
    )?;
    writeln!(out, "| measure | value |")?;
    writeln!(out, "|---|---|")?;
    writeln!(
        out,
        "| end to end: POST → `success` and all {n} lines readable | **{}** |",
        ms(e)
    )?;
    writeln!(
        out,
        "| baseline: `gen-lines {n} > /dev/null` (median of 3) | {} |",
        ms(b)
    )?;
    writeln!(out, "| ratio | {} |", ratio(e, b))?;
    writeln!(
        out,
        "| lines arrived / expected | {gen_seen} / {n}{} |",
        if gen_seen == n && disorder.is_empty() && after == n + other {
            ", in order, seq 1..N without gaps"
        } else {
            ""
        }
    )?;
    writeln!(out, "| other lines (not from the step) | {other} |")?;
    writeln!(out, "| lines after the end | {} |", extra.logs.len())?;
    writeln!(
        out,
        "| line latency p50 / p99 / max | {} / {} / {} |",
        ms(lat.pct(50.0)),
        ms(lat.pct(99.0)),
        ms(lat.max())
    )?;
    writeln!(out, "| log GETs by the bench | {calls} |")?;
    writeln!(
        out,
        "| agent peak RSS (VmHWM) / RSS after | **{:.1} MiB** / {:.1} MiB |",
        mib(hwm),
        mib(rss)
    )?;
    writeln!(out, "| hub peak RSS (VmHWM) | {:.1} MiB |", mib(hub_hwm))?;
    if !disorder.is_empty() {
        writeln!(out, "\n**Out of order:** {}", disorder.join("; "))?;
    }
    writeln!(out)?;
    out.push_str(&stage.problems_report(&[&agent]));
    drop(agent);
    Ok(out)
}
