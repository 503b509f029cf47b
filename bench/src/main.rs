//! `tasuki-bench`: measures the overhead the Tasuki executor and its shell
//! and browser actions add, against the targets of issues 2 and 3.
//!
//! - `executor`: control steps per second on a workflow of 10,000 `set` steps.
//! - `shell`: 200 `shell.run` steps of `true` against 200 bare spawns of
//!   `true`, in-process and as whole processes.
//! - `browser`: a 10-step browser workflow through `tasuki run`, through raw
//!   WebDriver calls (the floor) and through Robot Framework with
//!   SeleniumLibrary (the peer); and what one browser per session saves
//!   over one browser per step.
//! - `packs` (`packs.rs`, issue 13): one action call of a running pack
//!   against a built-in `set` step and a bare JSON round trip through a
//!   pipe; the start-up of three packs beside bare spawns.
//! - `all` (the default): all four (`--no-browser` skips the browser,
//!   `--no-packs` the packs).
//! - `spawn-loop`: the whole-process baseline; spawns and waits for a program
//!   N times, and nothing else.
//! - `raw-browser`: the browser floor as a process of its own.
//!
//! The Markdown report goes to stdout, progress to stderr. Variants that are
//! compared run interleaved, run by run, so that a noisy machine slows them
//! alike; ratios are computed run by run and their median is reported.

mod browser;
mod packs;
mod site;
mod stats;
mod webdriver;
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
use tasuki_actions::{
    ExecOptions, Executor, LoadOptions, Registry, SessionReport, SessionStatus, Workflow,
    parse_workflow,
};
use tokio_util::sync::CancellationToken;

use stats::Samples;

/// Issue 2: the executor runs at least this many control steps per second.
const TARGET_STEPS_PER_SEC: f64 = 50_000.0;
/// Issue 2: a `shell.run` step costs at most this much more than a bare spawn.
const TARGET_SHELL_RATIO: f64 = 1.3;

#[derive(Parser)]
#[command(
    name = "tasuki-bench",
    about = "Overhead benchmarks of the Tasuki executor, shell and browser actions"
)]
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
    /// A 10-step browser workflow: tasuki, raw WebDriver, Robot Framework.
    Browser,
    /// An action pack's call against a `set` step and a bare JSON round trip; packs' start-up.
    Packs,
    /// Every benchmark (the default); `--no-browser` and `--no-packs` leave those out.
    All,
    /// Spawns and waits for PROGRAM COUNT times: the whole-process baseline.
    SpawnLoop {
        #[arg(long, default_value_t = 200)]
        count: usize,
        #[arg(long, default_value = "true")]
        program: String,
    },
    /// The browser benchmark's 10 steps as raw WebDriver HTTP calls; prints
    /// the phase timings as JSON. Uses --chromium and --chromedriver.
    RawBrowser {
        /// The demo shop's page.
        #[arg(long)]
        url: String,
        /// Where the profile and the screenshot go.
        #[arg(long)]
        dir: PathBuf,
        /// How often element waits poll, ms.
        #[arg(long, default_value_t = 50)]
        poll_ms: u64,
    },
}

#[derive(clap::Args)]
struct Opts {
    /// Measured runs of every benchmark (overrides --executor-runs, --shell-runs, --browser-runs and --packs-runs).
    #[arg(long, global = true)]
    runs: Option<usize>,
    /// Measured runs of the executor benchmark.
    #[arg(long, default_value_t = 21, global = true)]
    executor_runs: usize,
    /// Measured runs of the shell benchmark (each run measures every variant once).
    #[arg(long, default_value_t = 21, global = true)]
    shell_runs: usize,
    /// Measured runs of the 10-step browser benchmark (each run measures every way once).
    #[arg(long, default_value_t = 11, global = true)]
    browser_runs: usize,
    /// Measured runs of the packs benchmark (each run measures every variant once).
    #[arg(long, default_value_t = 21, global = true)]
    packs_runs: usize,
    /// Pack action calls (and `set` steps, and bare round trips) per run of the packs benchmark.
    #[arg(long, default_value_t = 500, global = true)]
    pack_calls: usize,
    /// Runs of the browser reuse comparison (each runs both variants once; no warm-up).
    #[arg(long, default_value_t = 5, global = true)]
    reuse_runs: usize,
    /// Browser steps of the reuse comparison.
    #[arg(long, default_value_t = 20, global = true)]
    reuse_steps: usize,
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
    /// A/B test: a second `tasuki` binary, measured as one more way of the browser benchmark.
    #[arg(long, global = true, value_name = "PATH")]
    tasuki_b: Option<PathBuf>,
    /// Robot Framework's `robot`; `target/bench-venv/bin/robot` in the workspace by default.
    #[arg(long, env = "ROBOT_BIN", global = true, value_name = "PATH")]
    robot: Option<PathBuf>,
    /// The Chromium binary of every browser way; found as `tasuki` finds it by default.
    #[arg(long, env = "TASUKI_CHROMIUM", global = true, value_name = "PATH")]
    chromium: Option<PathBuf>,
    /// The chromedriver binary of every browser way; found as `tasuki` finds it by default.
    #[arg(long, env = "TASUKI_CHROMEDRIVER", global = true, value_name = "PATH")]
    chromedriver: Option<PathBuf>,
    /// Skip the informative breakdown variants of the shell and browser benchmarks.
    #[arg(long, global = true)]
    no_breakdown: bool,
    /// Leave the browser benchmark out of `all`.
    #[arg(long, global = true)]
    no_browser: bool,
    /// Leave the packs benchmark out of `all`.
    #[arg(long, global = true)]
    no_packs: bool,
    /// Leave Robot Framework out of the browser benchmark.
    #[arg(long, global = true)]
    no_robot: bool,
    /// Leave the reuse comparison out of the browser benchmark.
    #[arg(long, global = true)]
    no_reuse: bool,
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

    fn browser_runs(&self) -> usize {
        self.runs.unwrap_or(self.browser_runs).max(1)
    }

    fn packs_runs(&self) -> usize {
        self.runs.unwrap_or(self.packs_runs).max(1)
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
    let opts = &cli.opts;
    let result = match cli.command.unwrap_or(Command::All) {
        Command::SpawnLoop { count, program } => spawn_loop(&program, count).map(|()| true),
        Command::RawBrowser { url, dir, poll_ms } => {
            browser::raw_browser(opts, &url, &dir, poll_ms).map(|()| true)
        }
        Command::Executor => run_benchmarks(opts, Which::only(|w| w.executor = true)),
        Command::Shell => run_benchmarks(opts, Which::only(|w| w.shell = true)),
        Command::Browser => run_benchmarks(opts, Which::only(|w| w.browser = true)),
        Command::Packs => run_benchmarks(opts, Which::only(|w| w.packs = true)),
        Command::All => run_benchmarks(
            opts,
            Which {
                executor: true,
                shell: true,
                browser: !opts.no_browser,
                packs: !opts.no_packs,
            },
        ),
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

/// The benchmarks a command runs.
#[derive(Default)]
struct Which {
    executor: bool,
    shell: bool,
    browser: bool,
    packs: bool,
}

impl Which {
    fn only(set: impl FnOnce(&mut Which)) -> Which {
        let mut which = Which::default();
        set(&mut which);
        which
    }
}

/// Returns whether every target was met (always true without --fail-on-miss).
fn run_benchmarks(opts: &Opts, which: Which) -> Result<bool> {
    let Which {
        executor,
        shell,
        browser,
        packs,
    } = which;
    // Checked first, so a missing binary fails before minutes of measuring.
    let tasuki = if shell || browser {
        Some(opts.tasuki_bin()?)
    } else {
        opts.tasuki_bin().ok()
    };
    if browser {
        browser::preflight(opts)?;
    }
    if packs {
        packs::preflight()?;
    }
    let dir = tempfile::Builder::new()
        .prefix("tasuki-bench-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    // Like `tasuki run`: a multi-threaded runtime; sessions run in `tokio::spawn`.
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
        bench_branches(opts, &runtime)?.write(&mut md, opts);
    }
    if shell {
        let tasuki = tasuki.as_deref().context("no tasuki binary")?;
        let r = bench_shell(opts, &runtime, tasuki, dir.path())?;
        r.write(&mut md, opts);
        verdicts.extend(r.verdicts());
    }
    if packs {
        let r = packs::bench_packs(opts, &runtime, dir.path())?;
        r.write(&mut md);
        verdicts.extend(r.verdicts());
    }
    drop(runtime);
    if browser {
        let tasuki = tasuki.as_deref().context("no tasuki binary")?;
        let r = browser::bench_browser(opts, tasuki, dir.path())?;
        r.write(&mut md);
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
    parse_workflow(yaml, "bench.yaml", registry, &LoadOptions::default())
        .map_err(|p| anyhow::anyhow!("the generated workflow is invalid:\n{p}"))
}

fn bind(workflow: &Workflow) -> Result<BoundParams> {
    bind_params(workflow, &ParamInputs::default())
        .map_err(|p| anyhow::anyhow!("cannot bind params:\n{p}"))
}

/// How an in-process session is driven.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drive {
    /// Inside `tokio::spawn`, on a runtime worker, as `tasuki run` does.
    Spawned,
    /// By `block_on` on the calling thread, as `tasuki run` did before 68933e3.
    BlockOn,
}

/// One in-process session; returns its wall time (of `Executor::run` only)
/// and its report.
fn run_session(
    runtime: &tokio::runtime::Runtime,
    registry: &Registry,
    workflow: &Arc<Workflow>,
    params: &Arc<BoundParams>,
    drive: Drive,
) -> Result<(Duration, SessionReport)> {
    let executor = Executor::new(registry.clone(), ExecOptions::default());
    let (workflow, params) = (workflow.clone(), params.clone());
    let session = async move {
        let started = Instant::now();
        let report = executor
            .run(
                &workflow,
                &params,
                Arc::new(NullSink),
                CancellationToken::new(),
            )
            .await;
        (started.elapsed(), report)
    };
    match drive {
        Drive::Spawned => runtime
            .block_on(runtime.spawn(session))
            .context("the executor task failed"),
        Drive::BlockOn => Ok(runtime.block_on(session)),
    }
}

fn check_report(report: &SessionReport, steps: usize) -> Result<()> {
    ensure!(
        report.status == SessionStatus::Success,
        "the session ended with {:?}: {:?}",
        report.status,
        report.error
    );
    ensure!(
        report.steps.len() == steps,
        "the report has {} steps, expected {steps}",
        report.steps.len()
    );
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
    ensure!(
        status.success(),
        "`{} {}` failed: {status}",
        program.display(),
        args.join(" ")
    );
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

fn bench_executor(
    opts: &Opts,
    runtime: &tokio::runtime::Runtime,
    tasuki: Option<&Path>,
    dir: &Path,
) -> Result<ExecutorResult> {
    let steps = opts.set_steps.max(1);
    let runs = opts.executor_runs();
    let yaml = workflows::set_steps(steps);
    let file = dir.join("set-steps.yaml");
    std::fs::write(&file, &yaml).with_context(|| format!("cannot write {}", file.display()))?;
    let file = file.to_string_lossy().into_owned();
    let registry = Registry::builtin();
    let workflow = Arc::new(parse(&yaml, &registry)?);
    let params = Arc::new(bind(&workflow)?);
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

        let (elapsed, report) =
            run_session(runtime, &registry, &workflow, &params, Drive::Spawned)?;
        check_report(&report, steps)?;
        let got = &report.steps[&last_id].output;
        ensure!(
            *got == expected,
            "step {last_id} output {got}, expected {expected}"
        );
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
             wall time of `Executor::run` (NullSink, multi-threaded tokio runtime, inside `tokio::spawn` as \
             in `tasuki run`).\n",
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
        row(
            md,
            "Parse + validate the workflow (ms, not in the target)",
            &self.parse_ms,
            1,
        );
        if let Some(p) = &self.process_ms {
            row(
                md,
                "`tasuki run --output json` whole process (ms, informative)",
                p,
                1,
            );
            let e2e = p.map(|t| n / (t / 1e3));
            let _ = writeln!(
                md,
                "| `tasuki run` end-to-end steps per second (informative) | {} | {} | {} |",
                thousands(e2e.median()),
                thousands(e2e.min()),
                thousands(e2e.max())
            );
        } else {
            let _ = writeln!(
                md,
                "\n(The `tasuki run` rows are skipped: no `tasuki` binary was found.)"
            );
        }
        let _ = writeln!(md);
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let rate = self.steps_per_sec().median();
        vec![Verdict {
            name: format!(
                "Executor: control steps/s on {} `set` steps",
                thousands(self.steps as f64)
            ),
            measured: format!("{} steps/s", thousands(rate)),
            goal: format!("≥ {} steps/s", thousands(TARGET_STEPS_PER_SEC)),
            met: rate >= TARGET_STEPS_PER_SEC,
        }]
    }
}

// ---------------------------------------------------------------------------
// A `parallel` step's overhead

/// Branches of the `parallel` step measured.
const BRANCHES: usize = 100;

struct BranchesResult {
    runs: usize,
    /// `Executor::run` wall time of the same 100 `set` steps in a row, ms.
    sequential_ms: Samples,
    /// ... and as one `parallel` step of 100 one-step branches, ms.
    parallel_ms: Samples,
}

/// One `parallel` step of [`BRANCHES`] branches of one `set` step each,
/// against the same steps one after another, in the same runs.
fn bench_branches(opts: &Opts, runtime: &tokio::runtime::Runtime) -> Result<BranchesResult> {
    let registry = Registry::builtin();
    let mut sequential = String::from("version: 1\nname: bench-sequential\nsteps:\n");
    let mut parallel = String::from(
        "version: 1\nname: bench-branches\nsteps:\n  - id: fan\n    action: parallel\n    branches:\n",
    );
    for i in 0..BRANCHES {
        let _ = writeln!(
            sequential,
            "  - id: s{i}\n    action: set\n    with: {{n: {i}}}"
        );
        let _ = writeln!(
            parallel,
            "      b{i}:\n        - id: s{i}\n          action: set\n          with: {{n: {i}}}"
        );
    }
    let sequential = Arc::new(parse(&sequential, &registry)?);
    let parallel = Arc::new(parse(&parallel, &registry)?);
    let (seq_params, par_params) = (Arc::new(bind(&sequential)?), Arc::new(bind(&parallel)?));
    let runs = opts.executor_runs();
    let mut result = BranchesResult {
        runs,
        sequential_ms: Samples::default(),
        parallel_ms: Samples::default(),
    };
    for run in 0..opts.warmup + runs {
        progress("branches", run, opts.warmup, runs);
        let (seq, report) =
            run_session(runtime, &registry, &sequential, &seq_params, Drive::Spawned)?;
        check_report(&report, BRANCHES)?;
        let (par, report) =
            run_session(runtime, &registry, &parallel, &par_params, Drive::Spawned)?;
        check_report(&report, BRANCHES + 1)?;
        if run >= opts.warmup {
            result.sequential_ms.push(ms(seq));
            result.parallel_ms.push(ms(par));
        }
    }
    Ok(result)
}

impl BranchesResult {
    fn write(&self, md: &mut String, opts: &Opts) {
        let _ = writeln!(
            md,
            "### A `parallel` step with {BRANCHES} branches\n\n{} measured runs after {} warm-up \
             runs, taking turns: one `parallel` step of {BRANCHES} branches of one `set` step each, \
             against the same {BRANCHES} `set` steps one after another (the baseline). Wall time of \
             `Executor::run`.\n",
            self.runs, opts.warmup
        );
        let _ = writeln!(md, "| Measure | Median | Min | Max |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        row(md, "100 `set` steps in a row (ms)", &self.sequential_ms, 2);
        row(
            md,
            "one `parallel` step, 100 branches (ms)",
            &self.parallel_ms,
            2,
        );
        let (p, s) = (self.parallel_ms.median(), self.sequential_ms.median());
        let _ = writeln!(
            md,
            "\nRatio of the medians: {:.2}×; the branch step's own cost: {:.1} µs a branch.\n",
            p / s,
            (p - s) * 1e3 / BRANCHES as f64
        );
    }
}

// ---------------------------------------------------------------------------
// Shell step overhead

#[derive(Clone, Copy, PartialEq, Eq)]
enum ShellVariant {
    RustLoop,
    Executor,
    BaselineProcess,
    TasukiProcess,
    TokioLoop,
    TokioLikeShellRun,
    ExecutorBlockOn,
    ExecutorCurrentThread,
}

impl ShellVariant {
    /// The variants the targets are computed from.
    const CORE: [ShellVariant; 4] = [
        ShellVariant::RustLoop,
        ShellVariant::Executor,
        ShellVariant::BaselineProcess,
        ShellVariant::TasukiProcess,
    ];
    /// Informative variants that split the in-process overhead into parts.
    const BREAKDOWN: [ShellVariant; 4] = [
        ShellVariant::TokioLoop,
        ShellVariant::TokioLikeShellRun,
        ShellVariant::ExecutorBlockOn,
        ShellVariant::ExecutorCurrentThread,
    ];

    fn label(self) -> &'static str {
        match self {
            ShellVariant::RustLoop => {
                "Rust loop, in-process (`std::process::Command` spawn + wait)"
            }
            ShellVariant::Executor => {
                "Executor, in-process (`shell.run` steps; inside `tokio::spawn` on a multi-thread runtime, as in `tasuki run`)"
            }
            ShellVariant::BaselineProcess => "`tasuki-bench spawn-loop` process (baseline)",
            ShellVariant::TasukiProcess => "`tasuki run --output json` process",
            ShellVariant::TokioLoop => {
                "breakdown: `tokio::process` spawn + wait loop (inside `tokio::spawn`, multi-thread)"
            }
            ShellVariant::TokioLikeShellRun => {
                "breakdown: tokio loop doing what `shell.run` does to a process (own group, stdin null, stdout/stderr piped and read to EOF)"
            }
            ShellVariant::ExecutorBlockOn => {
                "breakdown: Executor driven by `block_on` (not a worker thread; `tasuki run` before 68933e3)"
            }
            ShellVariant::ExecutorCurrentThread => {
                "breakdown: Executor on a current-thread runtime"
            }
        }
    }
}

struct ShellResult {
    steps: usize,
    runs: usize,
    variants: Vec<ShellVariant>,
    /// Indexed like `variants`; wall times in ms.
    times: Vec<Samples>,
}

/// What the shell variants need, built once.
struct ShellSetup<'a> {
    steps: usize,
    runtime: &'a tokio::runtime::Runtime,
    current_thread: tokio::runtime::Runtime,
    registry: Registry,
    workflow: Arc<Workflow>,
    params: Arc<BoundParams>,
    file: String,
    me: PathBuf,
    tasuki: &'a Path,
    dir: &'a Path,
}

fn bench_shell(
    opts: &Opts,
    runtime: &tokio::runtime::Runtime,
    tasuki: &Path,
    dir: &Path,
) -> Result<ShellResult> {
    let steps = opts.shell_steps.max(1);
    let runs = opts.shell_runs();
    let yaml = workflows::shell_true(steps);
    let file = dir.join("shell-true.yaml");
    std::fs::write(&file, &yaml).with_context(|| format!("cannot write {}", file.display()))?;
    let registry = Registry::builtin();
    let workflow = parse(&yaml, &registry)?;
    let params = bind(&workflow)?;
    let setup = ShellSetup {
        steps,
        runtime,
        current_thread: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the tokio runtime")?,
        registry,
        workflow: Arc::new(workflow),
        params: Arc::new(params),
        file: file.to_string_lossy().into_owned(),
        me: std::env::current_exe().context("cannot find the tasuki-bench binary")?,
        tasuki,
        dir,
    };

    let mut variants = ShellVariant::CORE.to_vec();
    if !opts.no_breakdown {
        variants.extend(ShellVariant::BREAKDOWN);
    }
    let mut times = vec![Samples::default(); variants.len()];
    for run in 0..opts.warmup + runs {
        progress("shell", run, opts.warmup, runs);
        // Rotate the order every run, so no variant always follows another.
        for k in 0..variants.len() {
            let index = (run + k) % variants.len();
            let elapsed = setup.measure(variants[index])?;
            if run >= opts.warmup {
                times[index].push(ms(elapsed));
            }
        }
    }
    Ok(ShellResult {
        steps,
        runs,
        variants,
        times,
    })
}

impl ShellSetup<'_> {
    fn measure(&self, variant: ShellVariant) -> Result<Duration> {
        let steps = self.steps;
        Ok(match variant {
            ShellVariant::RustLoop => {
                let started = Instant::now();
                spawn_loop("true", steps)?;
                started.elapsed()
            }
            ShellVariant::Executor => self.session(self.runtime, Drive::Spawned)?,
            ShellVariant::ExecutorBlockOn => self.session(self.runtime, Drive::BlockOn)?,
            ShellVariant::ExecutorCurrentThread => {
                self.session(&self.current_thread, Drive::BlockOn)?
            }
            ShellVariant::TokioLoop => self
                .runtime
                .block_on(self.runtime.spawn(tokio_loop(steps, false)))
                .context("the loop task failed")??,
            ShellVariant::TokioLikeShellRun => self
                .runtime
                .block_on(self.runtime.spawn(tokio_loop(steps, true)))
                .context("the loop task failed")??,
            ShellVariant::BaselineProcess => time_process(
                &self.me,
                &["spawn-loop", "--count", &steps.to_string()],
                self.dir,
            )?,
            ShellVariant::TasukiProcess => time_process(
                self.tasuki,
                &["run", &self.file, "--output", "json"],
                self.dir,
            )?,
        })
    }

    fn session(&self, runtime: &tokio::runtime::Runtime, drive: Drive) -> Result<Duration> {
        let (elapsed, report) =
            run_session(runtime, &self.registry, &self.workflow, &self.params, drive)?;
        check_report(&report, self.steps)?;
        Ok(elapsed)
    }
}

/// Spawns `true` `count` times through `tokio::process`. With `like_shell_run`,
/// each process is set up as `shell.run` sets it up (minus the executor):
/// its own process group, a working directory, stdin from /dev/null, and
/// stdout and stderr piped and read to their end while waiting.
async fn tokio_loop(count: usize, like_shell_run: bool) -> Result<Duration> {
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    for _ in 0..count {
        let mut command = tokio::process::Command::new("true");
        if like_shell_run {
            command
                .process_group(0)
                .current_dir(".")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        }
        let mut child = command.spawn().context("cannot start `true`")?;
        let status = if like_shell_run {
            let mut stdout = child.stdout.take().context("no stdout pipe")?;
            let mut stderr = child.stderr.take().context("no stderr pipe")?;
            let (mut out, mut err) = (Vec::new(), Vec::new());
            let (status, o, e) = tokio::join!(
                child.wait(),
                stdout.read_to_end(&mut out),
                stderr.read_to_end(&mut err)
            );
            o?;
            e?;
            status?
        } else {
            child.wait().await?
        };
        ensure!(status.success(), "`true` failed: {status}");
    }
    Ok(started.elapsed())
}

impl ShellResult {
    fn get(&self, v: ShellVariant) -> Option<&Samples> {
        self.variants
            .iter()
            .position(|x| *x == v)
            .map(|i| &self.times[i])
    }

    fn ratio(&self, a: ShellVariant, b: ShellVariant) -> Option<(Samples, f64, f64)> {
        let (sa, sb) = (self.get(a)?, self.get(b)?);
        Some((
            sa.paired_ratio(sb),
            sa.median() / sb.median(),
            (sa.median() - sb.median()) * 1e3 / self.steps as f64,
        ))
    }

    fn write(&self, md: &mut String, opts: &Opts) {
        let n = self.steps as f64;
        let _ = writeln!(md, "### Shell step overhead: {} × `true`\n", self.steps);
        let _ = writeln!(
            md,
            "{} measured runs after {} warm-up runs; in every run all {} variants run back to back, \
             in an order that rotates from run to run. Ratios are taken run by run (paired) and their \
             median is reported; the ratio of the medians is shown as a cross-check. Rows marked \
             \"breakdown\" are informative and split the in-process overhead into parts.\n",
            self.runs,
            opts.warmup,
            self.variants.len()
        );
        let _ = writeln!(
            md,
            "| Variant | Median (ms) | Min (ms) | Max (ms) | Median per spawn (µs) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for (v, s) in self.variants.iter().zip(&self.times) {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {:.1} | {:.1} | {:.0} |",
                v.label(),
                s.median(),
                s.min(),
                s.max(),
                s.median() * 1e3 / n
            );
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "| Ratio | Median (paired) | Min | Max | Ratio of medians | Extra per step (µs) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
        use ShellVariant as V;
        let pairs = [
            (
                "**(a) in-process: Executor / Rust loop**",
                V::Executor,
                V::RustLoop,
            ),
            (
                "**(b) whole process: `tasuki run` / spawn-loop**",
                V::TasukiProcess,
                V::BaselineProcess,
            ),
            (
                "breakdown: tokio loop / Rust loop (async wait, wake-ups)",
                V::TokioLoop,
                V::RustLoop,
            ),
            (
                "breakdown: shell.run-like tokio loop / tokio loop (group, pipes, /dev/null)",
                V::TokioLikeShellRun,
                V::TokioLoop,
            ),
            (
                "breakdown: Executor / shell.run-like tokio loop (executor, action, events)",
                V::Executor,
                V::TokioLikeShellRun,
            ),
            (
                "breakdown: Executor driven by `block_on` / Rust loop",
                V::ExecutorBlockOn,
                V::RustLoop,
            ),
            (
                "breakdown: Executor on current-thread runtime / Rust loop",
                V::ExecutorCurrentThread,
                V::RustLoop,
            ),
        ];
        for (name, a, b) in pairs {
            if let Some((ratio, of_medians, extra)) = self.ratio(a, b) {
                let _ = writeln!(
                    md,
                    "| {name} | **{:.3}** | {:.3} | {:.3} | {of_medians:.3} | {extra:.0} |",
                    ratio.median(),
                    ratio.min(),
                    ratio.max(),
                );
            }
        }
        let _ = writeln!(md);
    }

    fn verdicts(&self) -> Vec<Verdict> {
        let verdict = |name: &str, a, b| {
            let r = self
                .ratio(a, b)
                .map(|(r, _, _)| r.median())
                .unwrap_or(f64::NAN);
            Verdict {
                name: name.to_string(),
                measured: format!("{r:.3}"),
                goal: format!("≤ {TARGET_SHELL_RATIO:.2}"),
                met: r <= TARGET_SHELL_RATIO,
            }
        };
        vec![
            verdict(
                "Shell (a) in-process: Executor / Rust loop",
                ShellVariant::Executor,
                ShellVariant::RustLoop,
            ),
            verdict(
                "Shell (b) whole process: `tasuki run` / spawn-loop",
                ShellVariant::TasukiProcess,
                ShellVariant::BaselineProcess,
            ),
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
    let _ = writeln!(md, "### Targets\n");
    let _ = writeln!(md, "| Target | Measured (median) | Goal | Result |");
    let _ = writeln!(md, "|---|---:|---:|---|");
    for v in verdicts {
        let result = if v.met { "✅ pass" } else { "❌ **miss**" };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {result} |",
            v.name, v.measured, v.goal
        );
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
        let url = "http://127.0.0.1:1/index.html";
        let ten = parse(&workflows::browser_ten(url), &registry).unwrap();
        let ids: Vec<&str> = ten.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, webdriver::STEP_IDS);
        let one = parse(&workflows::browser_gotos(url, 20, false), &registry).unwrap();
        assert_eq!(one.steps.len(), 21);
        assert!(one.single_process_mode);
        let fresh = parse(&workflows::browser_gotos(url, 20, true), &registry).unwrap();
        assert_eq!(fresh.steps.len(), 40);
    }

    #[test]
    fn set_workflow_computes_what_it_should() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let registry = Registry::builtin();
        for n in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] {
            let wf = Arc::new(parse(&workflows::set_steps(n), &registry).unwrap());
            let params = Arc::new(bind(&wf).unwrap());
            let (_, report) =
                run_session(&runtime, &registry, &wf, &params, Drive::BlockOn).unwrap();
            check_report(&report, n).unwrap();
            assert_eq!(
                report.steps[&format!("s{}", n - 1)].output,
                workflows::last_set_output(n),
                "n = {n}"
            );
        }
    }
}
