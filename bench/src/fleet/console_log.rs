//! `console-log`: the web console's log page while a step prints 10,000
//! lines a second (release build, one hub on SQLite, one agent). Headless
//! Chromium, driven by `tasuki run`, signs in and opens the session's page
//! before the step starts printing; a script in the page measures the
//! longest the page's main thread was busy (a 10 ms timer's lateness) and,
//! for every 100th line, the time from its printing to its appearing on
//! the page. The bench tails the same session through the API meanwhile:
//! its print → read latency is the baseline, in the same run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Opts;
use crate::logs::{self, Page};
use crate::procs::{Bins, Stage, now_nanos, tail};
use crate::stats::{Dist, ms, ratio};

/// The step waits for this file, which the driver touches once the page
/// is open and measuring.
const GO_FILE: &str = "console-log-go";

/// What the page's script gathered (see `MONITOR`).
#[derive(Deserialize)]
struct Seen {
    /// Lines of the step shown, and the highest line number among them.
    shown: u64,
    last: u64,
    /// Print → shown, ms, for every 100th line.
    latency_ms: Vec<f64>,
    /// The 10 ms timer's worst lateness, before the step printed and while
    /// it did.
    idle_stall_ms: f64,
    stall_ms: f64,
    /// Timer ticks over 100 ms late while the step printed.
    long_stalls: u64,
    /// The most log lines the page held at once.
    most_in_page: u64,
    /// First and last of the step's lines shown, ms on the page's clock.
    first_at: f64,
    last_at: f64,
}

/// Installed on the session's page before the step prints. Reads every
/// line the page adds to `#log` (the console's own code adds them) without
/// changing how it adds them.
const MONITOR: &str = r#"
var N = arguments[0];
var log = document.getElementById('log');
var mon = window.__mon = {shown: 0, last: 0, latency_ms: [], idle_stall_ms: 0, stall_ms: 0,
  long_stalls: 0, most_in_page: 0, first_at: 0, last_at: 0, printing: false};
var tick = performance.now();
setInterval(function () {
  var now = performance.now();
  var late = Math.max(0, now - tick - 10);
  tick = now;
  if (mon.printing) {
    if (late > mon.stall_ms) { mon.stall_ms = late; }
    if (late > 100) { mon.long_stalls++; }
  } else if (late > mon.idle_stall_ms) { mon.idle_stall_ms = late; }
}, 10);
new MutationObserver(function (records) {
  var now = Date.now();
  records.forEach(function (r) {
    r.addedNodes.forEach(function (node) {
      var m = /\] (\d+) (\d+)\n?$/.exec(node.textContent || '');
      if (!m) { return; }
      var i = Number(m[1]);
      mon.shown++;
      if (mon.shown === 1) { mon.first_at = performance.now(); mon.printing = true; }
      if (i > mon.last) { mon.last = i; mon.last_at = performance.now(); }
      if (i % 100 === 0) { mon.latency_ms.push(now - Number(m[2].slice(0, -6))); }
      if (i === N) { mon.printing = false; document.body.setAttribute('data-last-line', '1'); }
    });
  });
  mon.most_in_page = Math.max(mon.most_in_page, log.childElementCount);
}).observe(log, {childList: true});
return null;
"#;

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let (n, rate) = (opts.console_log_lines, opts.console_log_rate);
    ensure!(
        n >= 100 && rate > 0,
        "--console-log-lines ≥ 100, --console-log-rate > 0"
    );
    let stage = Stage::new(bins, "console-log", opts.keep)?;
    let agent = stage.agent("console-log-1", 1).await?;
    let go = stage.dir.join(GO_FILE);
    let exe = serde_json::to_string(&bins.bench.display().to_string())?;
    let go_json = serde_json::to_string(&go.display().to_string())?;
    let yaml = format!(
        "version: 1\nname: console-log-bench\nsteps:\n  \
         - id: ready\n    action: shell.run\n    with: {{argv: [sh, -c, 'while [ ! -e \"$1\" ]; do sleep 0.05; done', sh, {go_json}]}}\n  \
         - id: gen\n    action: shell.run\n    with: {{argv: [{exe}, gen-lines, \"{n}\", --per-second, \"{rate}\"]}}\n  \
         - id: linger\n    action: shell.run\n    with: {{argv: [sleep, \"10\"]}}\n"
    );
    let wf = stage.workflow(&yaml).await?;
    let id = stage.api.queue(wf, json!({})).await?;

    // The API's tail, from before the step prints to its last line.
    let tail_api = stage.api.fresh()?;
    let tail_task = tokio::spawn(async move { api_tail(&tail_api, id, n).await });

    let driver_dir = stage.dir.join("driver");
    std::fs::create_dir_all(&driver_dir).context("the driver's folder")?;
    let driver = driver_yaml(&stage.hub.url, &stage.key.id, id, n, &go);
    let started = Instant::now();
    let report = drive(bins, &driver_dir, &driver, &stage.key.secret).await?;
    let driven = started.elapsed();
    let seen: Seen = serde_json::from_str(
        report["steps"]["stats"]["output"]["result"]
            .as_str()
            .context("the driver's stats step returned no text")?,
    )
    .context("the page's figures")?;
    let mut api = tail_task.await.context("the API tail")??;
    let status = stage
        .api
        .finished(id, Duration::from_millis(100), Duration::from_secs(60))
        .await?;
    ensure!(status == "success", "the printing session ended {status}");

    let mut page = Dist::default();
    for l in &seen.latency_ms {
        page.push_ms(*l);
    }
    let shown_rate =
        (seen.shown.saturating_sub(1)) as f64 / ((seen.last_at - seen.first_at) / 1e3).max(1e-3);
    let mut out = String::new();
    writeln!(out, "## console-log\n")?;
    writeln!(
        out,
        "One agent; a step prints {n} lines at {rate} a second (`tasuki-fleet-bench gen-lines {n} \
         --per-second {rate}`, `i <unix nanos>` per line). Headless Chromium (driven by `tasuki run`, \
         {:.1} s in all) has the session's console page open before the first line. In the page: \
         a 10 ms timer's worst lateness (the longest the main thread was busy), and each 100th \
         line's print → shown time. Baseline in the same run: the bench tailing \
         `GET /v1/session_queues/{{id}}/logs?after_seq` (print → read).\n",
        driven.as_secs_f64()
    )?;
    writeln!(out, "| measure | console page | API tail (baseline) |")?;
    writeln!(out, "|---|---|---|")?;
    writeln!(
        out,
        "| lines of the step shown / read | {} of {n} (last: {}) | {} of {n} |",
        seen.shown, seen.last, api.seen
    )?;
    writeln!(
        out,
        "| print → shown / read, p50 | **{}** | {} |",
        ms(page.pct(50.0)),
        ms(api.latency.pct(50.0))
    )?;
    writeln!(
        out,
        "| print → shown / read, p99 | {} | {} |",
        ms(page.pct(99.0)),
        ms(api.latency.pct(99.0))
    )?;
    writeln!(
        out,
        "| print → shown / read, max | {} | {} |",
        ms(page.max()),
        ms(api.latency.max())
    )?;
    writeln!(
        out,
        "| ratio of p50s (page / API) | {} | |",
        ratio(page.pct(50.0), api.latency.pct(50.0))
    )?;
    writeln!(
        out,
        "| lines shown per second (first → last) | {shown_rate:.0} | |"
    )?;
    writeln!(
        out,
        "| main thread's longest busy spell while printing | **{}** ({} over 100 ms) | |",
        ms(seen.stall_ms),
        seen.long_stalls
    )?;
    writeln!(
        out,
        "| … before the step printed (page open, idle) | {} | |",
        ms(seen.idle_stall_ms)
    )?;
    writeln!(
        out,
        "| most log lines in the page at once | {} | |",
        seen.most_in_page
    )?;
    writeln!(out)?;
    if seen.shown != n || seen.last != n {
        writeln!(
            out,
            "**The page missed lines:** {} of {n} shown.\n",
            seen.shown
        )?;
    }
    out.push_str(&stage.problems_report(&[&agent]));
    drop(agent);
    Ok(out)
}

fn driver_yaml(base: &str, key_id: &str, id: i64, n: u64, go: &Path) -> String {
    let go = serde_json::to_string(&go.display().to_string()).unwrap_or_default();
    let monitor = serde_json::to_string(MONITOR).unwrap_or_default();
    format!(
        r##"version: 1
name: console-log-driver
params:
  key_secret: {{secret: true}}
steps:
  - id: open
    action: browser.open
    with: {{window_size: [1280, 800]}}
  - id: go
    action: browser.goto
    with: {{url: "{base}/ui/sessions/{id}"}}
  - id: key
    action: browser.type
    with: {{selector: "#access_key_id", text: "{key_id}"}}
  - id: secret
    action: browser.type
    with: {{selector: "#secret_access_key", text: "${{params.key_secret}}"}}
  - id: sign_in
    action: browser.click
    with: {{selector: "#sign-in"}}
  - id: running
    action: browser.wait_for
    with: {{selector: "#session-status", text: "running", timeout: 60s}}
  - id: page
    action: browser.wait_for
    with: {{selector: "#log[data-stream]", state: present}}
  - id: watch
    action: browser.execute_script
    with: {{script: {monitor}, args: [{n}]}}
  - id: idle
    action: shell.run
    with: {{argv: [sleep, "1"]}}
  - id: start
    action: shell.run
    with: {{argv: [touch, {go}]}}
  - id: shown
    action: browser.wait_for
    with: {{selector: "body[data-last-line]", state: present, timeout: 300s}}
  - id: stats
    action: browser.execute_script
    with: {{script: "var m = window.__mon; delete m.printing; return JSON.stringify(m)"}}
  - id: shot
    action: browser.screenshot
    with: {{path: console-log.png}}
"##
    )
}

/// Runs the driver with `tasuki run`, the key's secret in a 0600 params
/// file; its JSON report.
async fn drive(bins: &Bins, dir: &Path, yaml: &str, secret: &str) -> Result<Value> {
    let file = dir.join("driver.yaml");
    std::fs::write(&file, yaml).context("write the driver")?;
    let params = dir.join("params.json");
    write_private(&params, &json!({"key_secret": secret}).to_string())?;
    let out = tokio::process::Command::new(&bins.tasuki)
        .current_dir(dir)
        .arg("run")
        .arg(&file)
        .args(["--output", "json", "--params-file"])
        .arg(&params)
        .arg("--artifacts")
        .arg(dir.join("artifacts"))
        .stdin(Stdio::null())
        .output()
        .await
        .context("start tasuki run")?;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        bail!(
            "the console driver failed ({}): {}\n{}",
            out.status,
            tail(
                &serde_json::to_string_pretty(&report).unwrap_or_default(),
                40
            ),
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        );
    }
    Ok(report)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("write {}", path.display()))
}

struct Tailed {
    seen: u64,
    latency: Dist,
}

/// Reads the session's log through the API as it grows, until the step's
/// `n` lines are in; each 100th line's print → read time.
async fn api_tail(api: &crate::api::Api, id: i64, n: u64) -> Result<Tailed> {
    let mut after = 0u64;
    let mut seen = 0u64;
    let mut latency = Dist::default();
    let limit = Instant::now() + Duration::from_secs(600);
    while seen < n {
        let page: Page = api
            .get_as(&format!("/v1/session_queues/{id}/logs?after_seq={after}"))
            .await?;
        let received = now_nanos();
        for l in &page.logs {
            after = l.seq;
            if let Some((i, ns)) = logs::gen_line(&l.message) {
                seen += 1;
                if i % 100 == 0 {
                    latency.push_ms(received.saturating_sub(ns) as f64 / 1e6);
                }
            }
        }
        if matches!(page.status.as_str(), "error" | "cancelled") {
            bail!("the printing session ended {}", page.status);
        }
        if Instant::now() > limit {
            bail!("the API tail read {seen} of {n} lines in 600 s");
        }
        if page.logs.is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(Tailed { seen, latency })
}
