//! `idle`: what one registered agent with nothing to do costs, and its hub.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::Opts;
use crate::procs::{Bins, Proc, Stage, cpu_seconds, mib, status_kb};

struct Sample {
    rss_kb: u64,
    cpu: f64,
}

fn sample(p: &Proc) -> Result<Sample> {
    Ok(Sample {
        rss_kb: status_kb(p.pid(), "VmRSS")?,
        cpu: cpu_seconds(p.pid())?,
    })
}

fn poll_lines(hub: &Proc) -> usize {
    hub.log_text()
        .lines()
        .filter(|l| l.contains("/poll"))
        .count()
}

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let stage = Stage::new(bins, "idle", opts.keep)?;
    let agent = stage.agent("idle-1", 1).await?;
    let secs = opts.idle_seconds;
    let (a0, h0) = (sample(&agent)?, sample(&stage.hub.proc)?);
    let polls0 = poll_lines(&stage.hub.proc);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    while Instant::now() < end {
        let left = end.saturating_duration_since(Instant::now());
        eprintln!("[idle] {} s to go", left.as_secs());
        tokio::time::sleep(left.min(Duration::from_secs(30))).await;
    }
    let window = t0.elapsed().as_secs_f64();
    let (a1, h1) = (sample(&agent)?, sample(&stage.hub.proc)?);
    let polls = poll_lines(&stage.hub.proc).saturating_sub(polls0);
    let mut out = String::new();
    writeln!(out, "## idle\n")?;
    writeln!(
        out,
        "One registered agent, no sessions, for {window:.0} s (FLEET_IDLE_SECONDS={secs}).\n"
    )?;
    writeln!(
        out,
        "| process | RSS at start | RSS at end | CPU seconds over the window | CPU % |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for (what, s0, s1) in [("agent", &a0, &a1), ("hub", &h0, &h1)] {
        let cpu = s1.cpu - s0.cpu;
        writeln!(
            out,
            "| {what} | {:.1} MiB | **{:.1} MiB** | **{cpu:.2} s** | {:.3} % |",
            mib(s0.rss_kb),
            mib(s1.rss_kb),
            100.0 * cpu / window
        )?;
    }
    writeln!(
        out,
        "\nPoll requests in the hub's log during the window: {polls} (one per {} s; the hold is 25 s).\n",
        if polls > 0 {
            format!("{:.1}", window / polls as f64)
        } else {
            "—".into()
        }
    )?;
    out.push_str(&stage.problems_report(&[&agent]));
    drop(agent);
    Ok(out)
}
