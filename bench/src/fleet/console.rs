//! `console`: how long the web console takes to render `/ui/sessions` with
//! 10,000 sessions stored (one hub on SQLite, release build): the first
//! page, a page filtered by status, the last page, and the API's first page
//! beside them. Each timed request is sequential, over a kept-alive
//! connection, signed in with a cookie as a browser is.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde_json::json;

use crate::Opts;
use crate::procs::{Bins, Stage};
use crate::stats::{Dist, ms};

/// Sessions queued at once while filling the database.
const FILL_IN_FLIGHT: usize = 16;

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let stage = Stage::new(bins, "console", opts.keep)?;
    let wf = stage
        .workflow("version: 1\nname: console-bench\nparams:\n  who: world\nsteps:\n  - id: hi\n    action: log\n    with: {message: hi}\n")
        .await?;
    // No robot: every session stays queued, which is what the list pays
    // most for (it refreshes faster while something is queued).
    let n = opts.console_sessions;
    eprintln!("[console] queueing {n} sessions");
    let started = Instant::now();
    let mut queued = 0;
    while queued < n {
        let batch = FILL_IN_FLIGHT.min(n - queued);
        let mut tasks = Vec::new();
        for _ in 0..batch {
            let api = stage.api.clone();
            tasks.push(tokio::spawn(async move {
                api.queue(wf, json!({"who": "bench"})).await
            }));
        }
        for t in tasks {
            t.await.context("a queueing task")??;
        }
        queued += batch;
    }
    let fill = started.elapsed();

    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("an HTTP client")?;
    let base = &stage.hub.url;
    let body = format!(
        "access_key_id={}&secret_access_key={}",
        stage.key.id, stage.key.secret
    );
    let signed = client
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .context("sign in")?;
    ensure!(
        signed.status().as_u16() == 303,
        "sign-in answered {}",
        signed.status()
    );
    let cookie = signed
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("the sign-in set no cookie")?
        .to_string();

    let last_page = n.div_ceil(25).max(1);
    let pages = [
        (
            "/ui/sessions (first page)",
            "/ui/sessions".to_string(),
            true,
        ),
        (
            "/ui/sessions?status=queued",
            "/ui/sessions?status=queued".to_string(),
            true,
        ),
        (
            "/ui/sessions, last page",
            format!("/ui/sessions?page={last_page}"),
            true,
        ),
        (
            "GET /v1/session_queues (API, 10 a page)",
            "/v1/session_queues".to_string(),
            false,
        ),
    ];
    let token = crate::api::sign(&stage.key, "session_queue.read")?;
    let mut out = String::new();
    writeln!(out, "## console\n")?;
    writeln!(
        out,
        "{n} sessions stored (queued through the API in {:.1} s, {FILL_IN_FLIGHT} at a time); each page fetched {} times in a row after {} unmeasured, one connection.\n",
        fill.as_secs_f64(),
        opts.console_requests,
        opts.console_warmup
    )?;
    writeln!(out, "| page | p50 | p95 | max | bytes |")?;
    writeln!(out, "|---|---|---|---|---|")?;
    for (label, path, console) in pages {
        let mut dist = Dist::default();
        let mut bytes = 0;
        for i in 0..opts.console_warmup + opts.console_requests {
            let request = client.get(format!("{base}{path}"));
            let request = if console {
                request.header("cookie", &cookie)
            } else {
                request.bearer_auth(&token)
            };
            let t = Instant::now();
            let resp = request
                .send()
                .await
                .with_context(|| format!("GET {path}"))?;
            let status = resp.status();
            let text = resp.text().await.with_context(|| format!("GET {path}"))?;
            let took = t.elapsed();
            ensure!(status.is_success(), "GET {path} answered {status}: {text}");
            if i >= opts.console_warmup {
                dist.push(took);
                bytes = text.len();
            }
        }
        writeln!(
            out,
            "| {label} | {} | {} | {} | {bytes} |",
            ms(dist.pct(50.0)),
            ms(dist.pct(95.0)),
            ms(dist.max())
        )?;
    }
    writeln!(out)?;
    Ok(out)
}
