//! `warm`: the warm browser (`browser.warm`, issue 14). Two real agents on
//! one hub, one with a browser kept warm and one without, take turns: the
//! time from the client's enqueue call (`POST /v1/session_queues`) to the
//! end of the session's first browser step, a `browser.goto` of a page on
//! the bench's loopback server; and each idle robot's memory (the agent
//! and every process it started).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use axum::extract::{Query, State};
use serde_json::json;
use tokio::sync::mpsc;

use crate::Opts;
use crate::procs::{Bins, Proc, Stage, mib};
use crate::stats::{Dist, ms};

/// A loopback page, `/page?s=N`, that reports (N, arrival).
async fn page_server() -> Result<(String, mpsc::UnboundedReceiver<(u64, Instant)>)> {
    let (tx, rx) = mpsc::unbounded_channel::<(u64, Instant)>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the loopback server")?;
    let addr = listener.local_addr().context("the server's address")?;
    let app = axum::Router::new()
        .route(
            "/page",
            axum::routing::get(
                |State(tx): State<mpsc::UnboundedSender<(u64, Instant)>>,
                 Query(q): Query<HashMap<String, String>>| async move {
                    let at = Instant::now();
                    if let Some(n) = q.get("s").and_then(|s| s.parse().ok()) {
                        let _ = tx.send((n, at));
                    }
                    axum::response::Html(
                        "<!doctype html><html><head><title>bench</title></head><body><h1 id=t>bench</h1></body></html>",
                    )
                },
            ),
        )
        .with_state(tx);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app.into_make_service()).await;
    });
    Ok((format!("http://{addr}"), rx))
}

/// One variant: a robot and the workflow pinned to it.
struct Variant {
    name: &'static str,
    agent: Proc,
    workflow: i64,
    /// POST sent → the step's `ended_at` (the agent's clock, in ms).
    to_step_end: Dist,
    /// POST sent → the page's request reaching the loopback server.
    to_page: Dist,
    /// The page's request → the step's end.
    page_to_end: Dist,
    /// POST sent → the step's log saying it has its browser (attached to
    /// the warm one, or started one): the session's log line, to the ms.
    to_browser: Dist,
    attached: usize,
    launched: usize,
}

/// The agent's `/metrics` address, from its log.
fn metrics_url(agent: &Proc) -> Option<String> {
    agent
        .log_text()
        .lines()
        .find(|l| l.contains("serving /healthz and /metrics"))
        .and_then(|l| l.split("bound=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(|addr| format!("http://{addr}/metrics"))
}

/// A series' value in a Prometheus text page.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits until the agent's warm browser waits for a session.
async fn warm_ready(http: &reqwest::Client, url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = http
            .get(url)
            .send()
            .await
            .context("GET /metrics")?
            .text()
            .await
            .context("read /metrics")?;
        if series(&text, "tasuki_warm_browser_ready") == Some(1.0) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "no warm browser ready within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An instant as milliseconds of wall-clock time, through `clock` (an
/// instant and the wall clock then, in ns).
fn wall_ms(i: Instant, clock: (Instant, u128)) -> f64 {
    let ns = if i >= clock.0 {
        clock.1 + (i - clock.0).as_nanos()
    } else {
        clock.1.saturating_sub((clock.0 - i).as_nanos())
    };
    ns as f64 / 1e6
}

/// Resident and proportional memory of an agent and every process it
/// started: its descendants, and the processes outside its tree that name
/// one of their browser profiles (Chromium's crash handlers daemonize).
struct TreeMemory {
    rss_kb: u64,
    pss_kb: u64,
    processes: usize,
}

fn tree_memory(root: u32) -> Result<TreeMemory> {
    let mut procs: Vec<(u32, u32, String)> = Vec::new();
    for entry in std::fs::read_dir("/proc").context("read /proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        if state == "Z" || state == "X" {
            continue;
        }
        let parent = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        procs.push((
            pid,
            parent,
            String::from_utf8_lossy(&cmdline).replace('\0', " "),
        ));
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(procs.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    let profiles: Vec<String> = procs
        .iter()
        .filter(|p| tree.contains(&p.0))
        .flat_map(|p| {
            p.2.split_whitespace()
                .filter_map(|a| a.strip_prefix("--user-data-dir="))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    for p in &procs {
        if !tree.contains(&p.0) && profiles.iter().any(|prof| p.2.contains(prof.as_str())) {
            tree.push(p.0);
        }
    }
    let field = |pid: u32, file: &str, name: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    Ok(TreeMemory {
        rss_kb: tree.iter().map(|p| field(*p, "status", "VmRSS:")).sum(),
        pss_kb: tree.iter().map(|p| field(*p, "smaps_rollup", "Pss:")).sum(),
        processes: tree.len(),
    })
}

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let stage = Stage::new(bins, "warm", opts.keep)?;
    let mut warm_agent = stage
        .agent_with(
            "warm-1",
            1,
            &[
                "--set",
                "browser.warm=true",
                "--set",
                "metrics.listen=127.0.0.1:0",
            ],
        )
        .await?;
    // Stopped with SIGTERM however the bench ends, so that the warm
    // browser is ended with the agent.
    warm_agent.graceful = true;
    let cold_agent = stage.agent_with("cold-1", 1, &[]).await?;
    let (server, mut arrivals) = page_server().await?;
    let yaml = "version: 1\nname: warm-bench\nparams:\n  url: \"\"\nsteps:\n  - id: go\n    action: browser.goto\n    with:\n      url: \"${params.url}\"\n";
    let pinned = |robot: &str| {
        let body = json!({ "yaml": yaml, "workflow_robots": [robot] });
        let api = stage.api.clone();
        async move {
            let r = api.post("/v1/workflows", &body).await?;
            r["id"]
                .as_i64()
                .with_context(|| format!("POST /v1/workflows answered without an id: {r}"))
        }
    };
    let http = crate::api::client()?;
    let warm_metrics = metrics_url(&warm_agent).context("the warm agent's /metrics")?;
    let mut variants = [
        Variant {
            name: "warm",
            workflow: pinned("warm-1").await?,
            agent: warm_agent,
            to_step_end: Dist::default(),
            to_page: Dist::default(),
            page_to_end: Dist::default(),
            to_browser: Dist::default(),
            attached: 0,
            launched: 0,
        },
        Variant {
            name: "cold",
            workflow: pinned("cold-1").await?,
            agent: cold_agent,
            to_step_end: Dist::default(),
            to_page: Dist::default(),
            page_to_end: Dist::default(),
            to_browser: Dist::default(),
            attached: 0,
            launched: 0,
        },
    ];
    let settle = Duration::from_millis(opts.settle_ms.max(200));
    let rounds = opts.warm_warmup + opts.warm_sessions;
    let clock = (Instant::now(), crate::procs::now_nanos());
    let mut seen: HashMap<u64, Instant> = HashMap::new();
    let mut n = 0u64;
    for round in 0..rounds {
        // Alternate which goes first, so that neither always follows the other.
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for v in order {
            // The warm robot has its next browser ready (so it is not
            // starting one beside the session measured), and the last
            // session's browser is gone.
            warm_ready(&http, &warm_metrics).await?;
            tokio::time::sleep(settle).await;
            let variant = &mut variants[v];
            n += 1;
            let url = format!("{server}/page?s={n}");
            let sent = Instant::now();
            let id = stage
                .api
                .queue(variant.workflow, json!({ "url": url }))
                .await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let arrived = loop {
                if let Some(at) = seen.remove(&n) {
                    break at;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, arrivals.recv()).await {
                    Ok(Some((k, at))) => {
                        seen.insert(k, at);
                    }
                    Ok(None) => bail!("the loopback server stopped"),
                    Err(_) => bail!("session {id} never requested its page"),
                }
            };
            let status = stage
                .api
                .finished(id, Duration::from_millis(25), Duration::from_secs(60))
                .await?;
            ensure!(
                status == "success",
                "session {id} ({}) ended {status}",
                variant.name
            );
            let session = stage.api.get(&format!("/v1/session_queues/{id}")).await?;
            let ended = session["steps"][0]["ended_at"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .with_context(|| format!("session {id} has no step end: {session}"))?;
            let ended_ms = ended.as_millisecond() as f64;
            let logs = stage
                .api
                .get(&format!("/v1/session_queues/{id}/logs"))
                .await?;
            let attached = logs.to_string().contains("attached to the warm browser");
            let has_browser = logs["logs"].as_array().and_then(|lines| {
                lines.iter().find_map(|l| {
                    let m = l["message"].as_str().unwrap_or("");
                    (m.starts_with("attached to the warm browser") || m.starts_with("started "))
                        .then(|| l["ts"].as_str()?.parse::<jiff::Timestamp>().ok())
                        .flatten()
                })
            });
            if round >= opts.warm_warmup {
                variant.to_step_end.push_ms(ended_ms - wall_ms(sent, clock));
                variant
                    .to_page
                    .push(arrived.saturating_duration_since(sent));
                variant
                    .page_to_end
                    .push_ms(ended_ms - wall_ms(arrived, clock));
                if let Some(at) = has_browser {
                    variant
                        .to_browser
                        .push_ms(at.as_millisecond() as f64 - wall_ms(sent, clock));
                }
                if attached {
                    variant.attached += 1;
                } else {
                    variant.launched += 1;
                }
            }
        }
        eprintln!("[warm] {}/{rounds}", round + 1);
    }

    // Idle memory: both robots idle, the warm one with its browser waiting.
    warm_ready(&http, &warm_metrics).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut memory: Vec<(&str, Vec<TreeMemory>)> = Vec::new();
    for v in &variants {
        let mut samples = Vec::new();
        for _ in 0..5 {
            samples.push(tree_memory(v.agent.pid())?);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        memory.push((v.name, samples));
    }
    let gauge = {
        let text = http.get(&warm_metrics).send().await?.text().await?;
        series(&text, "tasuki_warm_browser_bytes").unwrap_or(f64::NAN)
    };
    let median = |mut v: Vec<u64>| -> u64 {
        v.sort_unstable();
        v[v.len() / 2]
    };

    let mut out = String::new();
    writeln!(out, "## warm\n")?;
    writeln!(
        out,
        "Two agents (max_concurrency 1) on one hub: `warm-1` with `browser.warm = true`, \
         `cold-1` without. {} rounds ({} warm-up rounds not counted); in each, one session \
         for each robot, in alternating order, each queued once the warm robot's next browser \
         was ready (its `tasuki_warm_browser_ready`) and {} ms more. The workflow is one \
         `browser.goto` of a page on the bench's loopback server. Measured from the client's \
         `POST /v1/session_queues` being sent; the step's end is its `ended_at` (the agent's \
         clock, to the millisecond).\n",
        opts.warm_sessions,
        opts.warm_warmup,
        settle.as_millis()
    )?;
    writeln!(
        out,
        "| measure | warm p50 | warm p99 | cold p50 | cold p99 | warm / cold at p50 |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    let [warm, cold] = &mut variants;
    for (what, w, c) in [
        (
            "**enqueue → end of the first browser step**",
            &mut warm.to_step_end,
            &mut cold.to_step_end,
        ),
        (
            "of which: enqueue → the step has its browser (attached, or started: its log line, to the ms)",
            &mut warm.to_browser,
            &mut cold.to_browser,
        ),
        (
            "of which: enqueue → the page's request arrives",
            &mut warm.to_page,
            &mut cold.to_page,
        ),
        (
            "of which: the page's request → the step's end",
            &mut warm.page_to_end,
            &mut cold.page_to_end,
        ),
    ] {
        let (w50, w99, c50, c99) = (w.pct(50.0), w.pct(99.0), c.pct(50.0), c.pct(99.0));
        writeln!(
            out,
            "| {what} | {} | {} | {} | {} | {} |",
            ms(w50),
            ms(w99),
            ms(c50),
            ms(c99),
            times(w50, c50)
        )?;
    }
    writeln!(
        out,
        "\nFirst browser steps ending more than 1 s after the enqueue: warm {} of {}, cold {} of {}.",
        warm.to_step_end.count_above(1000.0),
        warm.to_step_end.len(),
        cold.to_step_end.count_above(1000.0),
        cold.to_step_end.len(),
    )?;
    writeln!(
        out,
        "\nSessions whose first step attached to a warm browser: warm robot {} of {}, cold robot {} of {}.\n",
        warm.attached,
        warm.attached + warm.launched,
        cold.attached,
        cold.attached + cold.launched
    )?;
    writeln!(
        out,
        "Idle memory, each robot idle (median of 5 samples, 0.5 s apart, 5 s after the warm \
         browser was ready): the agent and every process it started (its descendants, and \
         Chromium's crash handlers, which leave the tree but name its profile).\n"
    )?;
    writeln!(out, "| robot | processes | RSS summed | PSS summed |")?;
    writeln!(out, "|---|---|---|---|")?;
    let mut pss = Vec::new();
    for (name, samples) in memory {
        let procs = median(samples.iter().map(|s| s.processes as u64).collect());
        let rss = median(samples.iter().map(|s| s.rss_kb).collect());
        let p = median(samples.iter().map(|s| s.pss_kb).collect());
        pss.push((rss, p));
        writeln!(
            out,
            "| {name} | {procs} | {:.1} MiB | {:.1} MiB |",
            mib(rss),
            mib(p)
        )?;
    }
    if let [(wr, wp), (cr, cp)] = pss[..] {
        writeln!(
            out,
            "| difference: the warm browser | | **{:.1} MiB** | **{:.1} MiB** |",
            mib(wr.saturating_sub(cr)),
            mib(wp.saturating_sub(cp))
        )?;
    }
    writeln!(
        out,
        "\nThe warm robot's `tasuki_warm_browser_bytes` at the end: {:.1} MiB (RSS summed over \
         the browser's processes, as `/metrics` and `tasuki doctor` report it).\n",
        gauge / (1024.0 * 1024.0)
    )?;
    let [warm, cold] = &variants;
    out.push_str(&stage.problems_report(&[&warm.agent, &cold.agent]));
    Ok(out)
}

/// `a / b` with two decimals, for ratios well under 1.
fn times(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b == 0.0 {
        "n/a".into()
    } else {
        format!("{:.2}×", a / b)
    }
}
