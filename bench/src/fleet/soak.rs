//! `soak`: many short sessions through one hub and two agents, with the
//! RSS and open file descriptors of each process sampled every second, to
//! show that nothing grows with the number of sessions served.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::Opts;
use crate::procs::{Bins, Proc, Stage, alive, mib, status_kb, tail};

/// Each agent's max_concurrency; the bench keeps twice the fleet's slots
/// queued or running, so that an agent never waits for the bench.
const SLOTS_PER_AGENT: u32 = 2;
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One second's look at a process.
#[derive(Clone, Copy)]
struct Sample {
    rss_kb: u64,
    fds: u64,
}

/// Every sample of one process, with how many sessions had ended then.
struct Series {
    what: String,
    pid: u32,
    samples: Vec<(usize, Sample)>,
}

fn fd_count(pid: u32) -> Result<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("list /proc/{pid}/fd"))?;
    Ok(dir.count() as u64)
}

fn look(pid: u32) -> Result<Sample> {
    Ok(Sample {
        rss_kb: status_kb(pid, "VmRSS")?,
        fds: fd_count(pid)?,
    })
}

fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// Growth after warm-up: the median of the last tenth of the samples taken
/// after `warmup` sessions ended, against the median of the first tenth.
struct Growth {
    start: u64,
    end: u64,
    max: u64,
    /// The median of each fifth of the samples, to show the shape.
    fifths: Vec<u64>,
}

impl Growth {
    fn of(series: &Series, warmup: usize, field: fn(&Sample) -> u64) -> Growth {
        let after: Vec<u64> = series
            .samples
            .iter()
            .filter(|(done, _)| *done >= warmup)
            .map(|(_, s)| field(s))
            .collect();
        let tenth = (after.len() / 10).max(1).min(after.len());
        let fifth = (after.len() / 5).max(1);
        Growth {
            start: median(after[..tenth].to_vec()),
            end: median(after[after.len() - tenth..].to_vec()),
            max: after.iter().copied().max().unwrap_or(0),
            fifths: after
                .chunks(fifth)
                .take(5)
                .map(|c| median(c.to_vec()))
                .collect(),
        }
    }

    fn percent(&self) -> f64 {
        if self.start == 0 {
            return f64::NAN;
        }
        100.0 * (self.end as f64 - self.start as f64) / self.start as f64
    }
}

pub async fn run(bins: &Bins, opts: &Opts) -> Result<String> {
    let total = opts.soak_sessions;
    let warmup = opts.soak_warmup.unwrap_or(total / 10);
    if warmup >= total {
        bail!("--soak-warmup ({warmup}) must be below --soak-sessions ({total})");
    }
    let stage = Stage::new(bins, "soak", opts.keep)?;
    let agents = [
        stage.agent("soak-1", SLOTS_PER_AGENT).await?,
        stage.agent("soak-2", SLOTS_PER_AGENT).await?,
    ];
    // A log step and a shell step with a few lines of output: each session
    // makes a spool, a work dir, a child process and its pipes.
    let wf = stage
        .workflow(
            "version: 1\nname: soak\nsteps:\n  - id: note\n    action: log\n    with: {message: hello}\n  - id: sh\n    action: shell.run\n    with:\n      shell: sh\n      script: |\n        echo one\n        echo two\n        echo three\n",
        )
        .await?;

    let procs: Vec<(&str, &Proc)> = vec![
        ("hub", &stage.hub.proc),
        ("agent soak-1", &agents[0]),
        ("agent soak-2", &agents[1]),
    ];
    let series: Arc<Mutex<Vec<Series>>> = Arc::new(Mutex::new(
        procs
            .iter()
            .map(|(what, p)| Series {
                what: what.to_string(),
                pid: p.pid(),
                samples: Vec::new(),
            })
            .collect(),
    ));
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let (series, done) = (series.clone(), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let n = done.load(std::sync::atomic::Ordering::Relaxed);
                let Ok(mut all) = series.lock() else { return };
                for s in all.iter_mut() {
                    // A process that has gone is caught by ensure_running.
                    if let Ok(sample) = look(s.pid) {
                        s.samples.push((n, sample));
                    }
                }
            }
        })
    };

    let in_flight_max = 2 * 2 * SLOTS_PER_AGENT as usize;
    let mut in_flight: VecDeque<i64> = VecDeque::new();
    let mut queued = 0usize;
    let mut failed: Vec<(i64, String)> = Vec::new();
    let t0 = Instant::now();
    let mut last_report = Instant::now();
    let mut last_alive_check = Instant::now();
    while done.load(std::sync::atomic::Ordering::Relaxed) < total {
        while in_flight.len() < in_flight_max && queued < total {
            in_flight.push_back(stage.api.queue(wf, json!({})).await?);
            queued += 1;
        }
        let mut still = VecDeque::with_capacity(in_flight.len());
        for id in in_flight.drain(..) {
            let status = stage.api.status(id).await?;
            match status.as_str() {
                "success" => {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                "queued" | "running" => still.push_back(id),
                _ => {
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    failed.push((id, status));
                }
            }
        }
        in_flight = still;
        if last_alive_check.elapsed() > Duration::from_secs(5) {
            for (what, p) in &procs {
                if !alive(p.pid()) {
                    bail!(
                        "the {what} exited; the end of its log:\n{}",
                        tail(&p.log_text(), 20)
                    );
                }
            }
            last_alive_check = Instant::now();
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "[soak] {}/{total} sessions ended after {:.0?}",
                done.load(std::sync::atomic::Ordering::Relaxed),
                t0.elapsed()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wall = t0.elapsed();
    // One more second of samples with the fleet idle again.
    tokio::time::sleep(SAMPLE_EVERY * 2).await;
    sampler.abort();
    let series = series
        .lock()
        .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;

    let mut out = String::new();
    writeln!(out, "## soak\n")?;
    writeln!(
        out,
        "One hub, two agents (max_concurrency {SLOTS_PER_AGENT} each); {total} sessions (a `log` \
         step and a `shell.run` step printing three lines), at most {in_flight_max} queued or \
         running at a time, each polled until it ends. RSS (VmRSS) and open descriptors \
         (/proc/PID/fd) of each process sampled every second; growth = the median of the last \
         tenth of the samples taken after the first {warmup} sessions (warm-up) against the \
         median of the first tenth.\n"
    )?;
    writeln!(
        out,
        "{total} sessions in {:.0} s ({:.1} sessions/s); {} ended other than `success`.\n",
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64(),
        failed.len()
    )?;
    for (id, status) in failed.iter().take(5) {
        writeln!(out, "- session {id}: `{status}`")?;
    }
    writeln!(
        out,
        "| process | samples | RSS after warm-up → end (max) | RSS growth | fds after warm-up → end (max) | fd growth |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for s in series.iter() {
        let rss = Growth::of(s, warmup, |x| x.rss_kb);
        let fds = Growth::of(s, warmup, |x| x.fds);
        writeln!(
            out,
            "| {} | {} | {:.1} → {:.1} MiB ({:.1}) | **{:+.1} %** | {} → {} ({}) | **{:+.1} %** |",
            s.what,
            s.samples.len(),
            mib(rss.start),
            mib(rss.end),
            mib(rss.max),
            rss.percent(),
            fds.start,
            fds.end,
            fds.max,
            fds.percent()
        )?;
    }
    writeln!(
        out,
        "\nRSS (MiB) and descriptors after warm-up, the median of each fifth of the samples:\n"
    )?;
    writeln!(out, "| process | RSS by fifth | fds by fifth |")?;
    writeln!(out, "|---|---|---|")?;
    for s in series.iter() {
        let rss = Growth::of(s, warmup, |x| x.rss_kb);
        let fds = Growth::of(s, warmup, |x| x.fds);
        let show = |v: &[u64], f: &dyn Fn(u64) -> String| {
            v.iter().map(|&x| f(x)).collect::<Vec<_>>().join(" → ")
        };
        writeln!(
            out,
            "| {} | {} | {} |",
            s.what,
            show(&rss.fifths, &|kb| format!("{:.1}", mib(kb))),
            show(&fds.fifths, &|n| n.to_string())
        )?;
    }
    writeln!(out)?;
    let agent_refs: Vec<&Proc> = agents.iter().collect();
    out.push_str(&stage.problems_report(&agent_refs));
    Ok(out)
}
