//! `orchestration`: what the hub starts on its own.
//!
//! - Webhook → first step: a signed `POST /v1/triggers/{id}` sent → the
//!   workflow's first step (`http.request`) reaching the bench's loopback
//!   server, on one idle agent, taking turns with the same session queued
//!   by `POST /v1/session_queues` (the baseline, in the same run).
//! - Schedules: how late each run's session is queued after its due time
//!   (its `created_at` − its `origin.due_at`, both the hub's clock), with
//!   one schedule firing every second (the baseline) and with 1,000
//!   schedules whose times are spread over each minute (about 17 due each
//!   second), for a minute and more.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::Opts;

use crate::pickup::hit_server;
use crate::procs::{Bins, Stage};
use crate::stats::{Dist, ms, ratio};

const SCHEDULES: usize = 1000;
const SPREAD_RUN: Duration = Duration::from_secs(75);
const BASELINE_RUN: Duration = Duration::from_secs(20);

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let mut out = String::new();
    writeln!(out, "## orchestration\n")?;
    out.push_str(&webhook(bins, opts).await?);
    out.push_str(&schedules(bins, opts).await?);
    Ok(out)
}

async fn webhook(bins: &Bins, opts: &Opts) -> Result<String> {
    let stage = Stage::new(bins, "orchestration-webhook", opts.keep)?;
    let agent = stage.agent("hooked-1", 1).await?;
    let (server, mut arrivals) = hit_server().await?;
    let yaml = "version: 1\nname: hooked\nparams:\n  url: \"\"\nsteps:\n  - id: hit\n    action: http.request\n    with:\n      url: \"${params.url}\"\n      method: GET\n";
    let wf = stage.workflow(yaml).await?;
    let trigger = stage
        .api
        .post(
            &format!("/v1/workflows/{wf}/triggers"),
            &json!({"params_mapping": {"url": "/url"}}),
        )
        .await
        .context("create the trigger")?;
    let path = trigger["path"]
        .as_str()
        .context("the trigger's path")?
        .to_string();
    let secret = trigger["secret"]
        .as_str()
        .context("the trigger's secret")?
        .to_string();
    let client = crate::api::client()?;
    let hook_url = format!("{}{path}", stage.hub.url);
    let settle = Duration::from_millis(opts.settle_ms);
    let n = opts.sessions;
    let (mut by_hook, mut by_post) = (Dist::default(), Dist::default());
    let mut seen: HashMap<u64, Instant> = HashMap::new();
    for i in 0..(opts.warmup + n) as u64 * 2 {
        let hook = i % 2 == 0;
        let url = format!("{server}/hit?s={i}");
        let sent = Instant::now();
        let id = if hook {
            let body = json!({ "url": url }).to_string();
            let t = jiff::Timestamp::now().as_second();
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
            let tag = aws_lc_rs::hmac::sign(&key, format!("{t}.{body}").as_bytes());
            let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            let r = client
                .post(&hook_url)
                .header("content-type", "application/json")
                .header("tasuki-signature", format!("t={t},v1={hex}"))
                .body(body)
                .send()
                .await
                .context("POST the trigger")?;
            let status = r.status();
            let answer: Value = r.json().await.context("the trigger's answer")?;
            if !status.is_success() {
                bail!("the trigger answered {status}: {answer}");
            }
            answer["id"].as_i64().context("the session's id")?
        } else {
            stage.api.queue(wf, json!({ "url": url })).await?
        };
        let arrived = wait_for(&mut arrivals, &mut seen, i, id).await?;
        stage.api.succeeded(id).await?;
        if i >= opts.warmup as u64 * 2 {
            let took = arrived.saturating_duration_since(sent);
            if hook {
                by_hook.push(took)
            } else {
                by_post.push(took)
            }
        }
        tokio::time::sleep(settle).await;
    }
    let mut out = String::new();
    writeln!(
        out,
        "### Webhook → first step\n\nOne idle agent; {n} sessions queued by a signed `POST \
         /v1/triggers/{{id}}` (params mapped from its body) taking turns with {n} queued by \
         `POST /v1/session_queues` ({} warm-up each, not counted), each after the previous \
         one's success and {} ms. From the request sent to the first step's request reaching \
         the bench's loopback server.\n",
        opts.warmup, opts.settle_ms
    )?;
    writeln!(out, "| queued by | p50 | p99 | max |")?;
    writeln!(out, "|---|---|---|---|")?;
    let (h50, h99) = (by_hook.pct(50.0), by_hook.pct(99.0));
    let (p50, p99) = (by_post.pct(50.0), by_post.pct(99.0));
    writeln!(
        out,
        "| **webhook trigger** | **{}** | **{}** | {} |",
        ms(h50),
        ms(h99),
        ms(by_hook.max())
    )?;
    writeln!(
        out,
        "| baseline: `POST /v1/session_queues` | {} | {} | {} |",
        ms(p50),
        ms(p99),
        ms(by_post.max())
    )?;
    writeln!(
        out,
        "| ratio | {} | {} | |\n",
        ratio(h50, p50),
        ratio(h99, p99)
    )?;
    out.push_str(&stage.problems_report(&[&agent]));
    Ok(out)
}

/// The arrival of request `i` (session `id`) at the loopback server.
async fn wait_for(
    arrivals: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
    seen: &mut HashMap<u64, Instant>,
    i: u64,
    id: i64,
) -> Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(at) = seen.remove(&i) {
            return Ok(at);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, arrivals.recv()).await {
            Ok(Some((n, at))) => {
                seen.insert(n, at);
            }
            Ok(None) => bail!("the loopback server stopped"),
            Err(_) => bail!("session {id} did not reach the loopback server within 30 s"),
        }
    }
}

async fn schedules(bins: &Bins, opts: &Opts) -> Result<String> {
    let mut out = String::new();
    writeln!(
        out,
        "### Schedules: a run's session queued after its due time\n\nNo robot: every schedule \
         has `overlap: cancel_previous`, so each due run queues one session (cancelling the \
         run before). Lateness = the session's `created_at` − its `origin.due_at`.\n"
    )?;
    writeln!(out, "| setup | runs | p50 | p99 | max | over 50 ms |")?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    let mut baseline = lateness(bins, opts, 1, BASELINE_RUN).await?;
    let mut spread = lateness(bins, opts, SCHEDULES, SPREAD_RUN).await?;
    for (name, d) in [
        ("baseline: 1 schedule, every second, 20 s", &mut baseline),
        (
            "**1,000 schedules**, spread over each minute, 75 s",
            &mut spread,
        ),
    ] {
        writeln!(
            out,
            "| {name} | {} | {} | **{}** | {} | {} |",
            d.len(),
            ms(d.pct(50.0)),
            ms(d.pct(99.0)),
            ms(d.max()),
            d.count_above(50.0)
        )?;
    }
    let (b50, b99, s50, s99) = (
        baseline.pct(50.0),
        baseline.pct(99.0),
        spread.pct(50.0),
        spread.pct(99.0),
    );
    writeln!(
        out,
        "| ratio 1,000 : 1 | | {} | {} | | |\n",
        ratio(s50, b50),
        ratio(s99, b99)
    )?;
    writeln!(
        out,
        "- Target p99 ≤ 50 ms with 1,000 schedules: **{}** ({}).\n",
        if s99 <= 50.0 { "met" } else { "missed" },
        ms(s99)
    )?;
    Ok(out)
}

/// Runs `count` schedules (100 a workflow) for `run` on a fresh hub; each
/// run's lateness.
async fn lateness(bins: &Bins, opts: &Opts, count: usize, run: Duration) -> Result<Dist> {
    let stage = Stage::new(bins, "orchestration-schedules", opts.keep)?;
    // A workflow has at most 100 schedules: 1,000 take ten workflows.
    let mut workflows = Vec::new();
    for w in 0..count.div_ceil(100) {
        workflows.push(
            stage
                .workflow(&format!(
                    "version: 1\nname: scheduled-{w}\nsteps:\n  - id: s\n    action: shell.run\n    with: {{argv: [\"true\"]}}\n"
                ))
                .await?,
        );
    }
    for i in 0..count {
        let wf = workflows[i / 100];
        let cron = if count == 1 {
            "* * * * * *".to_string()
        } else {
            format!("{} * * * * *", i % 60)
        };
        stage
            .api
            .post(
                &format!("/v1/workflows/{wf}/schedules"),
                &json!({"cron": cron, "overlap": "cancel_previous"}),
            )
            .await
            .with_context(|| format!("create schedule {i}"))?;
    }
    let created = Instant::now();
    tokio::time::sleep(run).await;
    let mut d = Dist::default();
    let mut page = 1;
    loop {
        let r = stage
            .api
            .get(&format!("/v1/session_queues?per_page=50&page={page}"))
            .await?;
        let sessions = r["session_queues"].as_array().cloned().unwrap_or_default();
        if sessions.is_empty() {
            break;
        }
        for s in &sessions {
            let (Some(created_at), Some(due)) =
                (s["created_at"].as_str(), s["origin"]["due_at"].as_str())
            else {
                continue;
            };
            let created_at: jiff::Timestamp = created_at.parse()?;
            let due: jiff::Timestamp = due.parse()?;
            d.push_ms((created_at.as_millisecond() - due.as_millisecond()) as f64);
        }
        page += 1;
    }
    if d.len() == 0 {
        bail!("no schedule ran in {:?}", created.elapsed());
    }
    stage.hub.proc.ensure_alive()?;
    Ok(d)
}
