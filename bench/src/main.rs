//! `tasuki-bench`: measures the overhead the Tasuki executor and its shell
//! action add, against the targets of issue 2.
//!
//! - `executor`: control steps per second on a workflow of 10,000 `set` steps.
//! - `shell`: 200 `shell.run` steps of `true` against 200 bare spawns of
//!   `true`, in-process and as whole processes.
//! - `all` (the default): both.
//! - `spawn-loop`: the whole-process baseline; spawns and waits for a program
//!   N times, and nothing else.
//!
//! The Markdown report goes to stdout, progress to stderr. Variants that are
//! compared run interleaved, run by run, so that a noisy machine slows them
//! alike; ratios are computed run by run and their median is reported.

mod stats;
mod workflows;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, Subcommand};
use tasuki_actions::language::params::{BoundParams, ParamInputs, bind_params};
use tasuki_actions::runtime::event::NullSink;
use tasuki_actions::{ExecOptions, Executor, LoadOptions, Registry, SessionReport, SessionStatus, Workflow, parse_workflow};
use tokio_util::sync::CancellationToken;

use stats::Samples;

/// Issue 2: the executor runs at least this many control steps per second.
const TARGET_STEPS_PER_SEC: f64 = 50_000.0;
/// Issue 2: a `shell.run` step costs at most this much more than a bare spawn.
const TARGET_SHELL_RATIO: f64 = 1.3;

#[derive(Parser)]
#[command(name = "tasuki-bench", about = "Overhead benchmarks of the Tasuki executor and shell action")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand)]
enum Command {
    /// Control steps per second on a workflow of `set` steps.
    Executor,
    /// `shell.run` of `true` against bare spawns of `true`.
    Shell,
    /// Both benchmarks (the default).
    All,
    /// Spawns and waits for PROGRAM COUNT times: the whole-process baseline.
    SpawnLoop {
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long, default_value = "true")]
        program: String,
    },
}

#[derive(clap::Args)]
struct Opts {
    /// Measured runs of every benchmark (overrides --executor-runs and --shell-runs).
    #[arg(long, global = true)]
    runs: Option<usize>,
    /// Measured runs of the executor benchmark.
    #[arg(long, default_value_t = 21, global = true)]
    executor_runs: usize,
    /// Measured runs of the shell benchmark (each run measures all four variants).
    #[arg(long, default_value_t = 15, global = true)]
    shell_runs: usize,
    /// Unmeasured runs of every variant before the measured ones.
    #[arg(long, default_value_t = 2, global = true)]
    warmup: usize,
    /// Steps of the executor workflow.
    #[arg(long, default_value_t = 10_000, global = true)]
    set_steps: usize,
    /// Steps of the shell workflow, and spawns of its baselines.
    #[arg(long, default_value_t = 200, global = true)]
    shell_steps: usize,
    /// The `tasuki` binary to run; `target/release/tasuki` in the workspace by default.
    #[arg(long, env = "TASUKI_BIN", global = true, value_name = "PATH")]
    tasuki: Option<PathBuf>,
    /// Exit with code 1 when a target is missed.
    #[arg(long, global = true)]
    fail_on_miss: bool,
}

impl Opts {
    fn executor_runs(&self) -> usize {
        self.runs.unwrap_or(self.executor_runs).max(1)
    }

    fn shell_runs(&self) -> usize {
        self.runs.unwrap_or(self.shell_runs).max(1)
    }

    /// The `tasuki` binary, which must exist.
    fn tasuki_bin(&self) -> Result<PathBuf> {
        let path = match &self.tasuki {
            Some(p) => p.clone(),
            None => workspace_root().join("target/release/tasuki"),
        };
        if !path.is_file() {
            bail!(
                "the tasuki binary was not found at {}\n\
                 build it with `cargo build --release -p tasuki-agent`, \
                 or name it with --tasuki PATH or the TASUKI_BIN environment variable",
                path.display()
            );
        }
        Ok(path)
    }
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::All) {
        Command::SpawnLoop { count, program } => spawn_loop(&program, count).map(|()| true),
        Command::Executor => run_benchmarks(&cli.opts, true, false),
        Command::Shell => run_benchmarks(&cli.opts, false, true),
        Command::All => run_benchmarks(&cli.opts, true, true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("tasuki-bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Returns whether every target was met (always true without --fail-on-miss).
fn run_benchmarks(opts: &Opts, executor: bool, shell: bool) -> Result<bool> {
    // Checked first, so a missing binary fails before minutes of measuring.
    let tasuki = if shell { Some(opts.tasuki_bin()?) } else { opts.tasuki_bin().ok() };
    let dir = tempfile::Builder::new().prefix("tasuki-bench-").tempdir().context("cannot create a temporary directory")?;
    // Like `tasuki run`: a multi-threaded runtime, the future driven by block_on.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;

    let mut md = String::new();
    let mut verdicts = Vec::new();
    if executor {
        let r = bench_executor(opts, &runtime, tasuki.as_deref(), dir.path())?;
        r.write(&mut md, opts);
        verdicts.extend(r.verdicts());
    }
    if shell {
        let tasuki = tasuki.as_deref().context("no tasuki binary")?;
        let r = bench_shell(opts, &runtime, tasuki, dir.path())?;
        r.write(&mut md, opts);
        verdicts.extend(r.verdicts());
    }
    write_verdicts(&mut md, &verdicts);
    print!("{md}");
    let all_met = verdicts.iter().all(|v| v.met);
    Ok(all_met || !opts.fail_on_miss)
}

// ---------------------------------------------------------------------------
// Shared helpers

fn parse(yaml: &str, registry: &Registry) -> Result<Workflow> {
    parse_workflow(yaml, "bench.yaml", registry, &LoadOptions::default()).map_err(|p| anyhow::anyhow!("the generated workflow is invalid:\n{p}"))
}

fn bind(workflow: &Workflow) -> Result<BoundParams> {
    bind_params(workflow, &ParamInputs::default()).map_err(|p| anyhow::anyhow!("cannot bind params:\n{p}"))
}

/// One in-process session; returns its wall time (of `Executor::run` only)
/// and its report.
fn run_session(runtime: &tokio::runtime::Runtime, registry: &Registry, workflow: &Workflow, params: &BoundParams) -> (Duration, SessionReport) {
    let executor = Executor::new(registry.clone(), ExecOptions::default());
    runtime.block_on(async {
        let started = Instant::now();
        let report = executor.run(workflow, params, Arc::new(NullSink), CancellationToken::new()).await;
        (started.elapsed(), report)
    })
}

fn check_report(report: &SessionReport, steps: usize) -> Result<()> {
    ensure!(
        report.status == SessionStatus::Success,
        "the session ended with {:?}: {:?}",
        report.status,
        report.error
    );
    ensure!(report.steps.len() == steps, "the report has {} steps, expected {steps}", report.steps.len());
    Ok(())
}

/// Spawns `program` and waits for it, `count` times, from a plain Rust loop.
fn spawn_loop(program: &str, count: usize) -> Result<()> {
    for _ in 0..count {
        let status = Process::new(program)
            .spawn()
            .with_context(|| format!("cannot start `{program}`"))?
            .wait()
            .with_context(|| format!("cannot wait for `{program}`"))?;
        ensure!(status.success(), "`{program}` failed: {status}");
    }
    Ok(())
}

/// Runs a whole process with its output thrown away, and times it.
fn time_process(program: &Path, args: &[&str], cwd: &Path) -> Result<Duration> {
    let started = Instant::now();
    let status = Process::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let elapsed = started.elapsed();
    ensure!(status.success(), "`{} {}` failed: {status}", program.display(), args.join(" "));
    Ok(elapsed)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn progress(what: &str, run: usize, warmup: usize, runs: usize) {
    if run < warmup {
        eprintln!("{what}: warm-up {}/{warmup}", run + 1);
    } else {
        eprintln!("{what}: run {}/{runs}", run - warmup + 1);
    }
}

// ---------------------------------------------------------------------------
// Executor overhead

struct ExecutorResult {
    steps: usize,
    runs: usize,
    /// `Executor::run` wall time, ms.
    run_ms: Samples,
    /// Parsing and validating the workflow, ms (not part of the target).
    parse_ms: Samples,
    /// `tasuki run` of the same workflow, ms, when the binary is there.
    process_ms: Option<Samples>,
}

fn bench_executor(opts: &Opts, runtime: &tokio::runtime::Runtime, tasuki: Option<&Path>, dir: &Path) -> Result<ExecutorResult> {
    let steps = opts.set_steps.max(1);
    let runs = opts.executor_runs();
    let yaml = workflows::set_steps(steps);
    let file = dir.join("set-steps.yaml");
    std::fs::write(&file, &yaml).with_context(|| format!("cannot write {}", file.display()))?;
    let file = file.to_string_lossy().into_owned();
    let registry = Registry::builtin();
    let workflow = parse(&yaml, &registry)?;
    let params = bind(&workflow)?;
    let last_id = format!("s{}", steps - 1);
    let expected = workflows::last_set_output(steps);

    let mut result = ExecutorResult {
        steps,
        runs,
        run_ms: Samples::default(),
        parse_ms: Samples::default(),
        process_ms: tasuki.map(|_| Samples::default()),
    };
    for run in 0..opts.warmup + runs {
        progress("executor", run, opts.warmup, runs);
        let measured = run >= opts.warmup;

        let started = Instant::now();
        let parsed = parse(&yaml, &registry)?;
        let parse_time = started.elapsed();
        drop(parsed);

        let (elapsed, report) = run_session(runtime, &registry, &workflow, &params);
        check_report(&report, steps)?;
        let got = &report.steps[&last_id].output;
        ensure!(*got == expected, "step {last_id} output {got}, expected {expected}");
        drop(report);

        let process_time = match tasuki {
            Some(bin) => Some(time_process(bin, &["run", &file, "--output", "json"], dir)?),
            None => None,
        };
        if measured {
            result.run_ms.push(ms(elapsed));
            result.parse_ms.push(ms(parse_time));
            if let (Some(s), Some(t)) = (&mut result.process_ms, process_time) {
                s.push(ms(t));
            }
        }
    }
    Ok(result)
}

impl ExecutorResult {
    fn steps_per_sec(&self) -> Samples {
        let n = self.steps as f64;
        self.run_ms.map(|t| n / (t / 1e3))
    }

    fn write(&self, md: &mut String, opts: &Opts) {
        let n = self.steps as f64;
        let rate = self.steps_per_sec();
        let per_step = self.run_ms.map(|t| t * 1e3 / n);
        let _ = writeln!(md, "### Executor overhead: {} `set` steps\n", thousands(n));
        let _ = writeln!(
            md,
            "{} measured runs after {} warm-up runs. Each step sets one or two variables; three in five \
             use a template reading a previous variable or step output. Steps/s is steps divided by the \
             wall time of `Executor::run` (NullSink, multi-threaded tokio runtime as in `tasuki run`).\n",
            self.runs, opts.warmup
        );
        let _ = writeln!(md, "| Measure | Median | Min | Max |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        let _ = writeln!(
            md,
            "| **Steps per second** (`Executor::run`) | **{}** | {} | {} |",
            thousands(rate.median()),
            thousands(rate.min()),
            thousands(rate.max())
        );
        row(md, "`Executor::run` wall time (ms)", &self.run_ms, 1);
        row(md, "Executor time per step (µs)", &per_step, 2);
        row(md, "Parse + validate the workflow (ms, not in the target)", &self.parse_ms, 1);
        if let Some(p) = &self.process_ms {
            row(md, "`tasuki run --output json` whole process (ms, informative)", p, 1);
            let e2e = p.map(|t| n / (t / 1e3));
            let _ = writeln!(
                md,
                "| `tasuki run` end-to-end steps per second (informative) | {} | {} | {} |",
                thousands(e2e.median()),
                thousands(e2e.min()),
                thousands(e2e.max())
            );
        }
        let _ = writeln!(md);
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let rate = self.steps_per_sec().median();
        vec![Verdict {
            name: format!("Executor: control steps/s on {} `set` steps", thousands(self.steps as f64)),
            measured: format!("{} steps/s", thousands(rate)),
            goal: format!("≥ {} steps/s", thousands(TARGET_STEPS_PER_SEC)),
            met: rate >= TARGET_STEPS_PER_SEC,
        }]
    }
}

// ---------------------------------------------------------------------------
// Shell step overhead

#[derive(Clone, Copy)]
enum ShellVariant {
    RustLoop,
    Executor,
    BaselineProcess,
    TasukiProcess,
}

const SHELL_VARIANTS: [ShellVariant; 4] = [
    ShellVariant::RustLoop,
    ShellVariant::Executor,
    ShellVariant::BaselineProcess,
    ShellVariant::TasukiProcess,
];

struct ShellResult {
    steps: usize,
    runs: usize,
    /// Indexed like `SHELL_VARIANTS`; wall times in ms.
    times: [Samples; 4],
}

fn bench_shell(opts: &Opts, runtime: &tokio::runtime::Runtime, tasuki: &Path, dir: &Path) -> Result<ShellResult> {
    let steps = opts.shell_steps.max(1);
    let runs = opts.shell_runs();
    let yaml = workflows::shell_true(steps);
    let file = dir.join("shell-true.yaml");
    std::fs::write(&file, &yaml).with_context(|| format!("cannot write {}", file.display()))?;
    let file = file.to_string_lossy().into_owned();
    let registry = Registry::builtin();
    let workflow = parse(&yaml, &registry)?;
    let params = bind(&workflow)?;
    let me = std::env::current_exe().context("cannot find the tasuki-bench binary")?;
    let count = steps.to_string();

    let mut times: [Samples; 4] = Default::default();
    for run in 0..opts.warmup + runs {
        progress("shell", run, opts.warmup, runs);
        // Rotate the order every run, so no variant always follows another.
        for k in 0..SHELL_VARIANTS.len() {
            let index = (run + k) % SHELL_VARIANTS.len();
            let elapsed = match SHELL_VARIANTS[index] {
                ShellVariant::RustLoop => {
                    let started = Instant::now();
                    spawn_loop("true", steps)?;
                    started.elapsed()
                }
                ShellVariant::Executor => {
                    let (elapsed, report) = run_session(runtime, &registry, &workflow, &params);
                    check_report(&report, steps)?;
                    elapsed
                }
                ShellVariant::BaselineProcess => time_process(&me, &["spawn-loop", "--count", &count], dir)?,
                ShellVariant::TasukiProcess => time_process(tasuki, &["run", &file, "--output", "json"], dir)?,
            };
            if run >= opts.warmup {
                times[index].push(ms(elapsed));
            }
        }
    }
    Ok(ShellResult { steps, runs, times })
}

impl ShellResult {
    fn get(&self, v: ShellVariant) -> &Samples {
        &self.times[v as usize]
    }

    fn in_process_ratio(&self) -> Samples {
        self.get(ShellVariant::Executor).paired_ratio(self.get(ShellVariant::RustLoop))
    }

    fn process_ratio(&self) -> Samples {
        self.get(ShellVariant::TasukiProcess).paired_ratio(self.get(ShellVariant::BaselineProcess))
    }

    fn write(&self, md: &mut String, opts: &Opts) {
        let n = self.steps as f64;
        let _ = writeln!(md, "### Shell step overhead: {} × `true`\n", self.steps);
        let _ = writeln!(
            md,
            "{} measured runs after {} warm-up runs; in every run the four variants run back to back, \
             in an order that rotates from run to run. Ratios are taken run by run (paired) and their \
             median is reported; the ratio of the medians is shown as a cross-check.\n",
            self.runs, opts.warmup
        );
        let _ = writeln!(md, "| Variant | Median (ms) | Min (ms) | Max (ms) | Median per spawn (µs) |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        let names = [
            (ShellVariant::RustLoop, "Rust loop, in-process (`std::process::Command` spawn + wait)"),
            (ShellVariant::Executor, "Executor, in-process (`shell.run` steps)"),
            (ShellVariant::BaselineProcess, "`tasuki-bench spawn-loop` process (baseline)"),
            (ShellVariant::TasukiProcess, "`tasuki run --output json` process"),
        ];
        for (v, name) in names {
            let s = self.get(v);
            let _ = writeln!(
                md,
                "| {name} | {:.1} | {:.1} | {:.1} | {:.0} |",
                s.median(),
                s.min(),
                s.max(),
                s.median() * 1e3 / n
            );
        }
        let _ = writeln!(md);
        let _ = writeln!(md, "| Ratio | Median (paired) | Min | Max | Ratio of medians | Extra per step (µs) |");
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        let pairs = [
            ("(a) in-process: Executor / Rust loop", ShellVariant::Executor, ShellVariant::RustLoop, self.in_process_ratio()),
            (
                "(b) whole process: `tasuki run` / spawn-loop",
                ShellVariant::TasukiProcess,
                ShellVariant::BaselineProcess,
                self.process_ratio(),
            ),
        ];
        for (name, a, b, ratio) in pairs {
            let (a, b) = (self.get(a), self.get(b));
            let extra = (a.median() - b.median()) * 1e3 / n;
            let _ = writeln!(
                md,
                "| {name} | **{:.3}** | {:.3} | {:.3} | {:.3} | {:.0} |",
                ratio.median(),
                ratio.min(),
                ratio.max(),
                a.median() / b.median(),
                extra
            );
        }
        let _ = writeln!(md);
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let verdict = |name: &str, r: f64| Verdict {
            name: name.to_string(),
            measured: format!("{r:.3}"),
            goal: format!("≤ {TARGET_SHELL_RATIO:.2}"),
            met: r <= TARGET_SHELL_RATIO,
        };
        vec![
            verdict("Shell (a) in-process: Executor / Rust loop", self.in_process_ratio().median()),
            verdict("Shell (b) whole process: `tasuki run` / spawn-loop", self.process_ratio().median()),
        ]
    }
}

// ---------------------------------------------------------------------------
// Markdown

struct Verdict {
    name: String,
    measured: String,
    goal: String,
    met: bool,
}

fn write_verdicts(md: &mut String, verdicts: &[Verdict]) {
    let _ = writeln!(md, "### Targets (issue 2)\n");
    let _ = writeln!(md, "| Target | Measured (median) | Goal | Result |");
    let _ = writeln!(md, "|---|---:|---:|---|");
    for v in verdicts {
        let result = if v.met { "✅ pass" } else { "❌ **miss**" };
        let _ = writeln!(md, "| {} | {} | {} | {result} |", v.name, v.measured, v.goal);
    }
}

fn row(md: &mut String, name: &str, s: &Samples, decimals: usize) {
    let _ = writeln!(
        md,
        "| {name} | {:.d$} | {:.d$} | {:.d$} |",
        s.median(),
        s.min(),
        s.max(),
        d = decimals
    );
}

/// `1234567.8` as `1,234,568`.
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.8), "1,234,568");
        assert_eq!(thousands(-50000.0), "-50,000");
    }

    #[test]
    fn generated_workflows_are_valid() {
        let registry = Registry::builtin();
        for n in [1, 2, 3, 4, 5, 6, 12] {
            parse(&workflows::set_steps(n), &registry).unwrap();
        }
        parse(&workflows::shell_true(3), &registry).unwrap();
    }

    #[test]
    fn set_workflow_computes_what_it_should() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let registry = Registry::builtin();
        for n in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] {
            let wf = parse(&workflows::set_steps(n), &registry).unwrap();
            let params = bind(&wf).unwrap();
            let (_, report) = run_session(&runtime, &registry, &wf, &params);
            check_report(&report, n).unwrap();
            assert_eq!(report.steps[&format!("s{}", n - 1)].output, workflows::last_set_output(n), "n = {n}");
        }
    }
}
