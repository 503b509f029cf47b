//! `resume`: from the start of the `POST .../approval` call that approves
//! a waiting session to the next step's HTTP request reaching a loopback
//! server, on one idle agent; beside it, in the same run, a fresh
//! session's pickup measured the same way (from the start of its `POST
//! /v1/session_queues` call to its first step's request). A resume is a
//! pickup plus the checkpoint: the ratio says what the checkpoint costs.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;
use tokio::sync::mpsc;

use crate::Opts;
use crate::pickup::hit_server;
use crate::procs::Stage;
use crate::stats::{Dist, ms, ratio};

/// Waits for the loopback server to report request `n`, keeping others.
async fn arrival(
    n: u64,
    arrivals: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    seen: &mut HashMap<u64, Instant>,
) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(at) = seen.remove(&n) {
            return Ok(at);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, arrivals.recv()).await {
            Ok(Some((m, at))) => {
                seen.insert(m, at);
            }
            Ok(None) => bail!("the loopback server stopped"),
            Err(_) => bail!("request {n} did not reach the loopback server within 30 s"),
        }
    }
}

/// The time from `sent` to session `id`'s request `n` reaching the
/// loopback server; the session must then end in success.
async fn reached(
    stage: &Stage,
    id: i64,
    n: u64,
    sent: Instant,
    arrivals: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    seen: &mut HashMap<u64, Instant>,
) -> Result<Duration> {
    let arrived = arrival(n, arrivals, seen).await?;
    stage.api.succeeded(id).await?;
    Ok(arrived.saturating_duration_since(sent))
}

pub async fn run(bins: &crate::procs::Bins, opts: &Opts) -> Result<String> {
    let stage = Stage::new(bins, "resume", opts.keep)?;
    let agent = stage.agent("resume-1", 1).await?;
    let (server, mut arrivals) = hit_server().await?;
    let waiting_yaml = "version: 1\nname: resume\nparams:\n  url: \"\"\nsteps:\n  - id: ok\n    action: approval\n    with: {message: go?}\n  - id: hit\n    action: http.request\n    with: {url: \"${params.url}\", method: GET}\n";
    let fresh_yaml = "version: 1\nname: fresh\nparams:\n  url: \"\"\nsteps:\n  - id: hit\n    action: http.request\n    with: {url: \"${params.url}\", method: GET}\n";
    let waiting_wf = stage.workflow(waiting_yaml).await?;
    let fresh_wf = stage.workflow(fresh_yaml).await?;
    let settle = Duration::from_millis(opts.settle_ms);
    let reps = opts.reps.max(1);
    let warmup = 5;
    let (mut resume, mut pickup) = (Dist::default(), Dist::default());
    let mut seen = HashMap::new();
    for i in 0..(warmup + reps) as u64 {
        // A fresh session: the baseline.
        let n = 2 * i;
        let sent = Instant::now();
        let id = stage
            .api
            .queue(fresh_wf, json!({"url": format!("{server}/hit?s={n}")}))
            .await?;
        let took = reached(&stage, id, n, sent, &mut arrivals, &mut seen).await?;
        if i as usize >= warmup {
            pickup.push(took);
        }
        tokio::time::sleep(settle).await;

        // A session that waits, then is approved.
        let n = 2 * i + 1;
        let id = stage
            .api
            .queue(waiting_wf, json!({"url": format!("{server}/hit?s={n}")}))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while stage.api.status(id).await? != "waiting" {
            if Instant::now() > deadline {
                bail!("session {id} never waited");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The robot is back in its idle long poll, as for the baseline.
        tokio::time::sleep(settle).await;
        let sent = Instant::now();
        stage
            .api
            .post(
                &format!("/v1/session_queues/{id}/approval"),
                &json!({"decision": "approve"}),
            )
            .await?;
        let took = reached(&stage, id, n, sent, &mut arrivals, &mut seen).await?;
        if i as usize >= warmup {
            resume.push(took);
        }
        tokio::time::sleep(settle).await;
    }
    let mut out = String::new();
    writeln!(out, "## resume\n")?;
    writeln!(
        out,
        "One agent (max_concurrency 1), idle each time: {reps} sessions that wait at an \
         `approval` step and are approved, each beside a fresh session ({warmup} warm-up pairs \
         not counted). Resume = the step after the approval (`http.request`) reaching the \
         bench's loopback server − the start of the `POST .../approval` call. Pickup, the \
         baseline = the first step's request reaching it − the start of the `POST \
         /v1/session_queues` call.\n"
    )?;
    writeln!(out, "| measure | p50 | p99 | max |")?;
    writeln!(out, "|---|---|---|---|")?;
    let (r50, r99) = (resume.pct(50.0), resume.pct(99.0));
    let (p50, p99) = (pickup.pct(50.0), pickup.pct(99.0));
    writeln!(
        out,
        "| resume (approval → next step) | {} | {} | {} |",
        ms(r50),
        ms(r99),
        ms(resume.max())
    )?;
    writeln!(
        out,
        "| baseline: pickup (queue → first step) | {} | {} | {} |",
        ms(p50),
        ms(p99),
        ms(pickup.max())
    )?;
    writeln!(
        out,
        "| ratio resume / pickup | {} | {} | |",
        ratio(r50, p50),
        ratio(r99, p99)
    )?;
    writeln!(out)?;
    out.push_str(&stage.problems_report(&[&agent]));
    drop(agent);
    Ok(out)
}
