//! `pickup`: from `POST /v1/session_queues` returning to the first step's
//! HTTP request reaching a loopback server, on one idle agent.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::extract::{Query, State};
use serde_json::json;
use tokio::sync::mpsc;

use crate::Opts;
use crate::procs::{Bins, Stage};
use crate::stats::{Dist, ms, ratio};

/// The bench's loopback server: `/hit?s=N` reports (N, arrival) down the
/// channel; `/ping` is the baseline's round trip.
pub async fn hit_server() -> Result<(String, mpsc::UnboundedReceiver<(u64, Instant)>)> {
    let (tx, rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the loopback server")?;
    let addr = listener.local_addr().context("the server's address")?;
    let app = axum::Router::new()
        .route(
            "/hit",
            axum::routing::get(
                |State(tx): State<mpsc::UnboundedSender<(u64, Instant)>>,
                 Query(q): Query<HashMap<String, String>>| async move {
                    let at = Instant::now();
                    if let Some(n) = q.get("s").and_then(|s| s.parse().ok()) {
                        let _ = tx.send((n, at));
                    }
                    "ok"
                },
            ),
        )
        .route("/ping", axum::routing::get(|| async { "pong" }))
        .with_state(tx);
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service()).await;
    });
    Ok((format!("http://{addr}"), rx))
}

/// p50/p99 of one kept-alive loopback GET on the bench's own server.
pub async fn loopback_baseline(server: &str, samples: usize) -> Result<Dist> {
    let client = crate::api::client()?;
    let url = format!("{server}/ping");
    let mut d = Dist::default();
    for i in 0..samples + 20 {
        let t = Instant::now();
        let r = client.get(&url).send().await.context("GET /ping")?;
        r.bytes().await.context("read /ping")?;
        if i >= 20 {
            d.push(t.elapsed());
        }
    }
    Ok(d)
}

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let stage = Stage::new(bins, "pickup", opts.keep)?;
    let agent = stage.agent("pickup-1", 1).await?;
    let (server, mut arrivals) = hit_server().await?;
    let mut baseline = loopback_baseline(&server, 500).await?;
    let yaml = "version: 1\nname: pickup\nparams:\n  url: \"\"\nsteps:\n  - id: hit\n    action: http.request\n    with:\n      url: \"${params.url}\"\n      method: GET\n";
    let wf = stage.workflow(yaml).await?;
    let settle = Duration::from_millis(opts.settle_ms);
    let total = opts.warmup + opts.sessions;
    let mut pickup = Dist::default();
    let mut post_rtt = Dist::default();
    let mut from_sent = Dist::default();
    let mut early = 0usize;
    let mut seen: HashMap<u64, Instant> = HashMap::new();
    // Session id → (POST returned, request arrived), for the breakdown
    // against the agent's "session started" log line.
    let mut timeline: HashMap<i64, (Instant, Instant)> = HashMap::new();
    let clock = (Instant::now(), crate::procs::now_nanos());
    for i in 0..total as u64 {
        let url = format!("{server}/hit?s={i}");
        let sent = Instant::now();
        let id = stage.api.queue(wf, json!({ "url": url })).await?;
        let posted = Instant::now();
        let deadline = posted + Duration::from_secs(30);
        let arrived = loop {
            if let Some(at) = seen.remove(&i) {
                break at;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, arrivals.recv()).await {
                Ok(Some((n, at))) => {
                    seen.insert(n, at);
                }
                Ok(None) => bail!("the loopback server stopped"),
                Err(_) => bail!(
                    "session {id} (#{i}) did not reach the loopback server within 30 s; status {}",
                    stage.api.status(id).await.unwrap_or_default()
                ),
            }
        };
        stage.api.succeeded(id).await?;
        if i as usize >= opts.warmup {
            timeline.insert(id, (posted, arrived));
            post_rtt.push(posted - sent);
            from_sent.push(arrived.saturating_duration_since(sent));
            // The request may arrive before the POST's answer is read.
            if arrived < posted {
                early += 1;
                pickup.push_ms(-((posted - arrived).as_secs_f64() * 1e3));
            } else {
                pickup.push(arrived - posted);
            }
        }
        if (i + 1) % 100 == 0 {
            eprintln!("[pickup] {}/{total}", i + 1);
        }
        tokio::time::sleep(settle).await;
    }
    let (mut to_start, mut start_to_hit) = breakdown(&agent.log_text(), &timeline, clock);
    let mut out = String::new();
    let (p50, p99) = (pickup.pct(50.0), pickup.pct(99.0));
    let (b50, b99) = (baseline.pct(50.0), baseline.pct(99.0));
    writeln!(out, "## pickup\n")?;
    writeln!(
        out,
        "One agent (max_concurrency 1), idle each time: {} sessions ({} warm-up not counted), each \
         queued only after the previous one reached `success` and {} ms more. Pickup = the \
         workflow's first step (`http.request`) reaching the bench's loopback server − `POST \
         /v1/session_queues` returning.\n",
        opts.sessions, opts.warmup, opts.settle_ms
    )?;
    writeln!(out, "| measure | p50 | p99 | max |")?;
    writeln!(out, "|---|---|---|---|")?;
    writeln!(
        out,
        "| pickup | {} | {} | {} |",
        ms(p50),
        ms(p99),
        ms(pickup.max())
    )?;
    writeln!(
        out,
        "| baseline: one kept-alive loopback GET (500) | {} | {} | {} |",
        ms(b50),
        ms(b99),
        ms(baseline.max())
    )?;
    writeln!(
        out,
        "| ratio pickup / baseline | {} | {} | |",
        ratio(p50, b50),
        ratio(p99, b99)
    )?;
    writeln!(
        out,
        "| (for reference) request arriving − POST sent | {} | {} | {} |",
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
    writeln!(
        out,
        "| of which: POST returned → agent logs `session started` (the lease delivered and checked) | {} | {} | {} |",
        ms(to_start.pct(50.0)),
        ms(to_start.pct(99.0)),
        ms(to_start.max())
    )?;
    writeln!(
        out,
        "| of which: `session started` → the step's request arrives | {} | {} | {} |",
        ms(start_to_hit.pct(50.0)),
        ms(start_to_hit.pct(99.0)),
        ms(start_to_hit.max())
    )?;
    if early > 0 {
        writeln!(
            out,
            "\n{early} requests arrived before the POST's answer was read (counted as negative)."
        )?;
    }
    writeln!(out)?;
    out.push_str(&stage.problems_report(&[&agent]));
    drop(agent);
    Ok(out)
}

/// Splits each pickup at the agent's `session started` log line (its
/// wall-clock timestamp, to the microsecond): before it, dispatch and ack;
/// after it, the session's start up to the first step's request.
fn breakdown(
    agent_log: &str,
    timeline: &HashMap<i64, (Instant, Instant)>,
    clock: (Instant, u128),
) -> (Dist, Dist) {
    let wall = |i: Instant| -> f64 {
        let ns = if i >= clock.0 {
            clock.1 + (i - clock.0).as_nanos()
        } else {
            clock.1.saturating_sub((clock.0 - i).as_nanos())
        };
        ns as f64 / 1e6
    };
    let (mut a, mut b) = (Dist::default(), Dist::default());
    for line in agent_log.lines().filter(|l| l.contains("session started")) {
        let Some(ts) = line
            .split_whitespace()
            .next()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        let Some(id) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("session_queue_id="))
            .and_then(|v| v.parse::<i64>().ok())
        else {
            continue;
        };
        let Some(&(posted, arrived)) = timeline.get(&id) else {
            continue;
        };
        let started = ts.as_nanosecond() as f64 / 1e6;
        a.push_ms(started - wall(posted));
        b.push_ms(wall(arrived) - started);
    }
    (a, b)
}
