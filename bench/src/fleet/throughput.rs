//! `throughput`: sessions per second, sustained, through real agents:
//! SQLite's one hub, PostgreSQL's one hub and PostgreSQL's several hubs,
//! in rounds (each setup once a round, the order reversed every other
//! round) so that the machine's noise falls on all of them alike.
//!
//! Each measurement starts its hubs and N agents afresh (agent i polls hub
//! i mod hubs), queues the sessions (one `log` step) as fast as the API
//! takes them from a few concurrent clients (session k to hub k mod hubs),
//! and takes the time from the first POST being sent to the last session's
//! `ended_at` (the agent's clock, the same machine's).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;
use tokio::task::JoinSet;

use crate::Opts;
use crate::procs::{Backend, Bins, Stage, cpu_seconds, now_nanos, postgres_backend};
use crate::stats::Dist;

const WORKFLOW: &str = "version: 1\nname: throughput\nsteps:\n  - id: note\n    action: log\n    with: {message: hello}\n";
/// Clients queueing at once.
const POSTERS: usize = 8;

/// One measurement.
struct Run {
    /// Sessions that succeeded per second, first POST sent → the last
    /// success's `ended_at`.
    rate: f64,
    /// Seconds, first POST sent → last `ended_at`.
    wall: f64,
    /// Seconds the queueing took (first POST sent → last POST returned).
    queueing: f64,
    /// CPU seconds of all the hubs together over the measurement.
    hub_cpu: f64,
    /// CPU seconds of all the agents together over the measurement.
    agent_cpu: f64,
    /// Sessions that did not succeed, and why.
    failures: Vec<String>,
    problems: String,
}

async fn measure(
    bins: &Bins,
    opts: &Opts,
    label: &str,
    backend: &Backend,
    hubs: usize,
) -> Result<Run> {
    let stage = Stage::with_backend(bins, label, opts.keep, backend, hubs).await?;
    let mut agents = Vec::new();
    for i in 0..opts.agents {
        agents.push(
            stage
                .agent_on(
                    i % hubs,
                    &format!("{label}-{}", i + 1),
                    opts.agent_concurrency,
                    &[],
                )
                .await?,
        );
    }
    let wf = stage.workflow(WORKFLOW).await?;
    let n = opts.throughput_sessions;
    let hub_pids: Vec<u32> = stage.hubs().map(|h| h.proc.pid()).collect();
    let agent_pids: Vec<u32> = agents.iter().map(|a| a.pid()).collect();
    let cpu = |pids: &[u32]| -> Result<f64> { pids.iter().map(|p| cpu_seconds(*p)).sum() };
    let (hub_cpu0, agent_cpu0) = (cpu(&hub_pids)?, cpu(&agent_pids)?);
    let apis = Arc::new(stage.apis.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let wall0 = now_nanos();
    let t0 = Instant::now();
    let mut posters = JoinSet::new();
    for _ in 0..POSTERS {
        let (apis, next) = (apis.clone(), next.clone());
        posters.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                apis[k % apis.len()].queue(wf, json!({})).await?;
            }
        });
    }
    while let Some(r) = posters.join_next().await {
        r.context("a queueing task")??;
    }
    let queueing = t0.elapsed().as_secs_f64();
    let api = &stage.api;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        // A session that does not succeed is reported, not fatal: the
        // rate is of those that did.
        let done = count(api, "is:success is:error is:cancelled").await?;
        if done >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {done} of {n} sessions ended within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (hub_cpu, agent_cpu) = (cpu(&hub_pids)? - hub_cpu0, cpu(&agent_pids)? - agent_cpu0);
    // The last `ended_at`, in milliseconds since the epoch.
    let mut last_end = 0i64;
    let mut seen = 0usize;
    let mut succeeded = 0usize;
    let mut failures = Vec::new();
    for page in 1.. {
        let r = api
            .get(&format!("/v1/session_queues?per_page=50&page={page}"))
            .await?;
        let list = r["session_queues"]
            .as_array()
            .context("a session list without session_queues")?;
        if list.is_empty() {
            break;
        }
        for s in list {
            seen += 1;
            if s["status"] != "success" {
                failures.push(format!(
                    "session {} ended `{}`: {}",
                    s["id"],
                    s["status"].as_str().unwrap_or("?"),
                    crate::procs::clip(&s["error"].to_string(), 200)
                ));
                continue;
            }
            succeeded += 1;
            let end = s["ended_at"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_millisecond())
                .with_context(|| format!("a session without ended_at: {s}"))?;
            last_end = last_end.max(end);
        }
    }
    if seen != n {
        bail!("the hub lists {seen} sessions, not {n}");
    }
    let wall = (last_end as f64 / 1e3 - wall0 as f64 / 1e9).max(1e-3);
    if !failures.is_empty() {
        eprintln!(
            "[throughput] {label}: {} sessions did not succeed",
            failures.len()
        );
    }
    for a in &mut agents {
        a.ensure_running()?;
    }
    for h in stage.hubs() {
        h.proc.ensure_alive()?;
    }
    let refs: Vec<&crate::procs::Proc> = agents.iter().collect();
    Ok(Run {
        rate: succeeded as f64 / wall,
        failures,
        wall,
        queueing,
        hub_cpu,
        agent_cpu,
        problems: stage.problems_report(&refs),
    })
}

/// How many sessions the query matches (`total_count`).
async fn count(api: &crate::api::Api, query: &str) -> Result<usize> {
    let r = api
        .get(&format!(
            "/v1/session_queues?per_page=1&query={}",
            query.replace(' ', "%20").replace(':', "%3A")
        ))
        .await?;
    r["total_count"]
        .as_u64()
        .map(|c| c as usize)
        .with_context(|| format!("a session list without total_count: {r}"))
}

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let pg = postgres_backend(opts.postgres.as_deref())?;
    let hubs = opts.hubs.max(2);
    let setups: [(String, &str, &Backend, usize); 3] = [
        ("SQLite, one hub".into(), "tp-sqlite", &Backend::Sqlite, 1),
        ("PostgreSQL, one hub".into(), "tp-pg1", &pg, 1),
        (format!("PostgreSQL, {hubs} hubs"), "tp-pgn", &pg, hubs),
    ];
    let mut runs: Vec<Vec<Run>> = setups.iter().map(|_| Vec::new()).collect();
    for round in 0..opts.throughput_rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1, 2]
        } else {
            vec![2, 1, 0]
        };
        for i in order {
            let (name, label, backend, h) = &setups[i];
            eprintln!("[throughput] round {}: {name}", round + 1);
            let r = measure(bins, opts, label, backend, *h).await?;
            eprintln!(
                "[throughput] round {}: {name}: {:.1} sessions/s ({:.2} s)",
                round + 1,
                r.rate,
                r.wall
            );
            runs[i].push(r);
        }
    }

    let median = |v: &[f64]| -> f64 {
        let mut d = Dist::default();
        for x in v {
            d.push_ms(*x);
        }
        d.pct(50.0)
    };
    let mut out = String::new();
    writeln!(out, "## throughput\n")?;
    writeln!(
        out,
        "{} sessions (one `log` step) per measurement, queued by {POSTERS} concurrent clients as \
         fast as the API takes them (session k to hub k mod hubs); {} real agents, \
         max_concurrency {}, agent i polling hub i mod hubs; hubs and agents started afresh for \
         each measurement. Rate = sessions that succeeded ÷ (the last success's `ended_at` − the \
         first POST sent); any that did not succeed are listed below the ratios. {} rounds, each setup once a round (order reversed every other round); the \
         median of the rounds.\n",
        opts.throughput_sessions, opts.agents, opts.agent_concurrency, opts.throughput_rounds
    )?;
    writeln!(
        out,
        "| setup | sessions/s, median (each round) | first POST → last end, median | queueing took, median | hubs' CPU, median | agents' CPU, median |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    let mut rates = Vec::new();
    for ((name, ..), rs) in setups.iter().zip(&runs) {
        let each: Vec<f64> = rs.iter().map(|r| r.rate).collect();
        let rate = median(&each);
        rates.push(rate);
        writeln!(
            out,
            "| {name} | **{rate:.1}** ({}) | {:.2} s | {:.2} s | {:.2} s | {:.2} s |",
            each.iter()
                .map(|r| format!("{r:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            median(&rs.iter().map(|r| r.wall).collect::<Vec<_>>()),
            median(&rs.iter().map(|r| r.queueing).collect::<Vec<_>>()),
            median(&rs.iter().map(|r| r.hub_cpu).collect::<Vec<_>>()),
            median(&rs.iter().map(|r| r.agent_cpu).collect::<Vec<_>>()),
        )?;
    }
    // Paired by round: the ratio of each round's two figures.
    let paired = |a: usize, b: usize| -> f64 {
        median(
            &runs[a]
                .iter()
                .zip(&runs[b])
                .map(|(x, y)| x.rate / y.rate)
                .collect::<Vec<_>>(),
        )
    };
    writeln!(
        out,
        "\n| ratio | of the medians | median of the rounds' ratios |\n|---|---|---|"
    )?;
    writeln!(
        out,
        "| **PostgreSQL {hubs} hubs : PostgreSQL one hub** | **{:.2}×** | {:.2}× |",
        rates[2] / rates[1],
        paired(2, 1)
    )?;
    writeln!(
        out,
        "| PostgreSQL one hub : SQLite one hub | {:.2}× | {:.2}× |",
        rates[1] / rates[0],
        paired(1, 0)
    )?;
    writeln!(
        out,
        "| PostgreSQL {hubs} hubs : SQLite one hub | {:.2}× | {:.2}× |\n",
        rates[2] / rates[0],
        paired(2, 0)
    )?;
    for ((name, ..), rs) in setups.iter().zip(&runs) {
        for (round, r) in rs.iter().enumerate() {
            for f in &r.failures {
                writeln!(out, "- **{name}, round {}: {f}**", round + 1)?;
            }
        }
    }
    writeln!(out)?;
    for ((name, ..), rs) in setups.iter().zip(&runs) {
        if let Some(last) = rs.last() {
            writeln!(out, "{name}, last round's logs:\n")?;
            out.push_str(&last.problems);
            writeln!(out)?;
        }
    }
    Ok(out)
}
