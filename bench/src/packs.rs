//! `tasuki-bench packs`: the cost of action packs (issue 13).
//!
//! - Per call, once the pack is running: sessions of 1 + N `echo.echo`
//!   steps against sessions of 1 (their difference over N is one call, the
//!   pack's start-up and shutdown cancelled out), interleaved run by run
//!   with N built-in `set` steps and with N bare JSON round trips through a
//!   pipe to a minimal `python3` loop (the floor). A breakdown variant sends
//!   the same N requests to the echo pack's own program over the same pipe,
//!   without Tasuki, which splits a call's cost between the Python helper
//!   and Tasuki's runtime.
//! - Start-up: a 1-step session of the echo pack (Python helper), the excel
//!   pack (openpyxl) and the shout pack (POSIX shell), from the step's start
//!   to its answer, beside `python3` and `sh` spawned bare.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tasuki_actions::language::params::BoundParams;
use tasuki_actions::packs::Manifest;
use tasuki_actions::runtime::event::{Event, EventSink, NullSink};
use tasuki_actions::{ExecOptions, Executor, Registry, SessionReport, Workflow};
use tokio_util::sync::CancellationToken;

use crate::stats::Samples;
use crate::{Opts, Verdict, bind, check_report, ms, parse, progress, workspace_root};

/// Issue 13: one pack action call, once the pack is running, costs at most
/// this much more than a bare JSON round trip through a pipe, in µs.
pub const TARGET_EXTRA_US: f64 = 1000.0;

/// The floor: what any pack must do for a request, in the least code.
const MINIMAL_LOOP: &str = r#"import json, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
for line in iter(inp.readline, b""):
    m = json.loads(line)
    out.write(json.dumps({"type": "result", "id": m["id"], "output": m["args"]}).encode() + b"\n")
    out.flush()
"#;

const PYTHON: &str = "python3";

/// A process spawned bare gets the variables a pack's process gets from
/// the robot's environment (the base set of `builtin/step_env.rs` on Unix)
/// and nothing else, so that variables such as `PYTHONDONTWRITEBYTECODE`
/// or `PYTHONUNBUFFERED` apply to neither.
fn bare(program: &str) -> Process {
    const BASE: &[&str] = &[
        "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    ];
    let mut command = Process::new(program);
    command.env_clear();
    for (name, value) in std::env::vars_os() {
        let keep = name
            .to_str()
            .is_some_and(|n| BASE.contains(&n) || n.starts_with("LC_"));
        if keep {
            command.env(name, value);
        }
    }
    command
}

// ---------------------------------------------------------------------------
// Workflows

/// The `with` of every echo (and `set`) step: `{text: hello, n: <n>}`.
fn args(n: i64) -> Value {
    json!({"text": "hello", "n": n})
}

fn header(name: &str) -> String {
    format!("version: 1\nname: {name}\nsteps:\n")
}

/// A `start` step, then `calls` steps `e<i>`, all `echo.echo`.
pub fn echo_steps(calls: usize) -> String {
    let mut y = header("bench-packs");
    y.push_str("  - id: start\n    action: echo.echo\n    with: {text: hello, n: -1}\n");
    for i in 0..calls {
        let _ = writeln!(
            y,
            "  - id: e{i}\n    action: echo.echo\n    with: {{text: hello, n: {i}}}"
        );
    }
    y
}

/// `steps` built-in `set` steps with the echo steps' `with`.
pub fn set_steps(steps: usize) -> String {
    let mut y = header("bench-packs-set");
    for i in 0..steps {
        let _ = writeln!(
            y,
            "  - id: s{i}\n    action: set\n    with: {{text: hello, n: {i}}}"
        );
    }
    y
}

/// One step of `action` with `with`.
fn one_step(action: &str, with: &str) -> String {
    let mut y = header("bench-packs-start");
    let _ = writeln!(y, "  - id: start\n    action: {action}\n    with: {with}");
    y
}

// ---------------------------------------------------------------------------
// Setup

/// The packs this benchmark runs, loaded as a robot loads them.
pub struct Packs {
    pub echo: Arc<Manifest>,
    pub excel: Arc<Manifest>,
    pub shout: Arc<Manifest>,
}

impl Packs {
    pub fn load() -> Result<Packs> {
        let root = workspace_root();
        let load = |dir: PathBuf| -> Result<Arc<Manifest>> {
            tasuki_actions::packs::manifest::load(&dir)
                .map(Arc::new)
                .map_err(|p| anyhow::anyhow!("the pack in {} does not load:\n{p}", dir.display()))
        };
        Ok(Packs {
            echo: load(root.join("bench/packs/echo"))?,
            excel: load(root.join("packs/excel"))?,
            shout: load(root.join("examples/packs/shout"))?,
        })
    }

    pub fn registry(&self) -> Registry {
        let mut registry = Registry::builtin();
        for pack in [&self.echo, &self.excel, &self.shout] {
            registry.register_pack(pack);
        }
        registry
    }
}

/// Checked before anything is measured: `python3` with openpyxl, and `sh`.
pub fn preflight() -> Result<()> {
    let ok = |program: &str, args: &[&str]| {
        Process::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(PYTHON, &["-c", "import openpyxl"]) {
        bail!(
            "the packs benchmark needs `python3` on PATH with openpyxl (the excel pack's \
             start-up): `python3 -m pip install openpyxl`; `--no-packs` leaves it out of `all`"
        );
    }
    ensure!(ok("sh", &["-c", "true"]), "the packs benchmark needs `sh`");
    Ok(())
}

/// Where the sessions run: their work and artifacts directories.
fn options(dir: &Path) -> Result<ExecOptions> {
    let work_dir = dir.join("packs-work");
    let artifacts_dir = dir.join("packs-artifacts");
    for d in [&work_dir, &artifacts_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    // What the excel pack's start-up step reads.
    std::fs::write(work_dir.join("startup.csv"), "name,amount\nwidget,2\n")
        .context("cannot write startup.csv")?;
    Ok(ExecOptions {
        session_id: "bench-packs".into(),
        work_dir,
        artifacts_dir,
        ..ExecOptions::default()
    })
}

/// One in-process session inside `tokio::spawn`, as `tasuki run` runs it;
/// returns the wall time of `Executor::run` (which includes ending the
/// session's packs) and the report.
fn run_session(
    runtime: &tokio::runtime::Runtime,
    registry: &Registry,
    options: &ExecOptions,
    workflow: &Arc<Workflow>,
    params: &Arc<BoundParams>,
    sink: Arc<dyn EventSink>,
) -> Result<(Duration, SessionReport)> {
    let executor = Executor::new(registry.clone(), options.clone());
    let (workflow, params) = (workflow.clone(), params.clone());
    runtime
        .block_on(runtime.spawn(async move {
            let started = Instant::now();
            let report = executor
                .run(&workflow, &params, sink, CancellationToken::new())
                .await;
            (started.elapsed(), report)
        }))
        .context("the executor task failed")
}

/// A parsed workflow with its params.
struct Prepared {
    workflow: Arc<Workflow>,
    params: Arc<BoundParams>,
    steps: usize,
}

impl Prepared {
    fn new(yaml: &str, registry: &Registry) -> Result<Prepared> {
        let workflow = parse(yaml, registry)?;
        let params = bind(&workflow)?;
        Ok(Prepared {
            steps: workflow.steps.len(),
            workflow: Arc::new(workflow),
            params: Arc::new(params),
        })
    }
}

/// Notes when the first step starts and when it is answered.
#[derive(Default)]
struct StepClock {
    started: Mutex<Option<Instant>>,
    finished: Mutex<Option<Instant>>,
}

impl EventSink for StepClock {
    fn emit(&self, event: Event) {
        let now = Instant::now();
        let slot = match event {
            Event::StepStarted { .. } => &self.started,
            Event::StepFinished { .. } => &self.finished,
            _ => return,
        };
        if let Ok(mut slot) = slot.lock() {
            slot.get_or_insert(now);
        }
    }
}

impl StepClock {
    fn step_time(&self) -> Result<Duration> {
        let get = |m: &Mutex<Option<Instant>>| m.lock().ok().and_then(|g| *g);
        match (get(&self.started), get(&self.finished)) {
            (Some(a), Some(b)) => Ok(b.duration_since(a)),
            _ => bail!("the session reported no whole first step"),
        }
    }
}

// ---------------------------------------------------------------------------
// The bare pipe: requests written and answers read from plain Rust

/// A `python3` program on the other end of a pipe, driven with blocking
/// std I/O from this thread.
struct Pipe {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    line: String,
    /// Speaks the protocol: reads `ready` first, gets `shutdown` last.
    pack: bool,
}

impl Pipe {
    /// The minimal loop: read a line, `json.loads`, write the answer, flush.
    /// It has no `ready`: one request is answered before anything is
    /// timed, so that the interpreter's start is not.
    fn minimal(options: &ExecOptions) -> Result<Pipe> {
        let mut pipe = Pipe::spawn(bare(PYTHON).args(["-c", MINIMAL_LOOP]), false)?;
        pipe.round_trips(1, options)?;
        Ok(pipe)
    }

    /// The echo pack's own program, as the manifest starts it; its `ready`
    /// is read before anything is timed.
    fn echo_pack(manifest: &Manifest) -> Result<Pipe> {
        let mut command = bare(&manifest.command[0]);
        command.args(&manifest.command[1..]).envs(&manifest.env);
        Pipe::spawn(&mut command, true)
    }

    fn spawn(command: &mut Process, ready: bool) -> Result<Pipe> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start python3")?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout pipe")?);
        let mut pipe = Pipe {
            child,
            stdin: Some(stdin),
            stdout,
            line: String::new(),
            pack: ready,
        };
        if ready {
            let first = pipe.read()?;
            ensure!(
                first["type"] == "ready",
                "the pack's first line is not `ready`: {first}"
            );
        }
        Ok(pipe)
    }

    fn read(&mut self) -> Result<Value> {
        self.line.clear();
        let n = self
            .stdout
            .read_line(&mut self.line)
            .context("cannot read the answer")?;
        ensure!(n > 0, "python3 closed its output");
        serde_json::from_str(&self.line).with_context(|| format!("not JSON: {}", self.line))
    }

    /// `calls` requests shaped like the runtime's `run`, each serialized,
    /// written, flushed, answered and parsed in turn; the time they took.
    fn round_trips(&mut self, calls: usize, options: &ExecOptions) -> Result<Duration> {
        let started = Instant::now();
        for i in 0..calls {
            let id = (i + 1).to_string();
            let args = args(i as i64);
            let mut request = json!({
                "type": "run",
                "id": id,
                "action": "echo",
                "args": args,
                "context": {
                    "session_id": options.session_id,
                    "step_id": format!("e{i}"),
                    "attempt": 1,
                    "work_dir": options.work_dir,
                    "artifacts_dir": options.artifacts_dir,
                },
            })
            .to_string();
            request.push('\n');
            let stdin = self.stdin.as_mut().context("stdin is closed")?;
            stdin.write_all(request.as_bytes())?;
            stdin.flush()?;
            let answer = self.read()?;
            ensure!(
                answer["type"] == "result"
                    && answer["id"] == id.as_str()
                    && answer["output"] == args,
                "unexpected answer to request {id}: {answer}"
            );
        }
        Ok(started.elapsed())
    }

    /// Asks the program to end (a pack's `shutdown`, then end of input) and
    /// waits.
    fn close(mut self) -> Result<()> {
        if let Some(mut stdin) = self.stdin.take()
            && self.pack
        {
            let _ = stdin.write_all(b"{\"type\":\"shutdown\"}\n");
        }
        let status = self.child.wait().context("cannot wait for python3")?;
        ensure!(status.success(), "python3 ended with {status}");
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Per call

#[derive(Clone, Copy, PartialEq, Eq)]
enum CallVariant {
    /// A session of 1 + N `echo.echo` steps.
    PackLong,
    /// A session of 1 `echo.echo` step.
    PackShort,
    /// A session of N `set` steps.
    Set,
    /// N round trips to the minimal loop.
    Floor,
    /// N round trips to `echo_pack.py`, without Tasuki.
    Helper,
}

const CALL_VARIANTS: [CallVariant; 5] = [
    CallVariant::PackLong,
    CallVariant::PackShort,
    CallVariant::Set,
    CallVariant::Floor,
    CallVariant::Helper,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum StartVariant {
    Echo,
    Excel,
    Shout,
    PythonJson,
    PythonOpenpyxl,
    Sh,
}

const START_VARIANTS: [StartVariant; 6] = [
    StartVariant::Echo,
    StartVariant::Excel,
    StartVariant::Shout,
    StartVariant::PythonJson,
    StartVariant::PythonOpenpyxl,
    StartVariant::Sh,
];

impl StartVariant {
    fn label(self) -> &'static str {
        match self {
            StartVariant::Echo => "`echo` pack (Python helper): `echo.echo`",
            StartVariant::Excel => {
                "`excel` pack (helper + openpyxl): `excel.read_csv` of a 2-line CSV"
            }
            StartVariant::Shout => "`shout` pack (POSIX sh): `shout.upper` of `hi`",
            StartVariant::PythonJson => "baseline: `python3 -c 'import json'` spawned bare",
            StartVariant::PythonOpenpyxl => {
                "baseline (informative): `python3 -c 'import openpyxl'` spawned bare"
            }
            StartVariant::Sh => "baseline: `sh -c true` spawned bare",
        }
    }

    /// The bare spawn a pack's start-up is set against.
    fn baseline(self) -> Option<StartVariant> {
        match self {
            StartVariant::Echo => Some(StartVariant::PythonJson),
            StartVariant::Excel => Some(StartVariant::PythonOpenpyxl),
            StartVariant::Shout => Some(StartVariant::Sh),
            _ => None,
        }
    }
}

/// What the variants need, built once.
pub struct Setup<'a> {
    runtime: &'a tokio::runtime::Runtime,
    registry: Registry,
    options: ExecOptions,
    echo: Arc<Manifest>,
    calls: usize,
    long: Prepared,
    short: Prepared,
    set: Prepared,
    start_echo: Prepared,
    start_excel: Prepared,
    start_shout: Prepared,
}

impl<'a> Setup<'a> {
    pub fn new(runtime: &'a tokio::runtime::Runtime, dir: &Path, calls: usize) -> Result<Self> {
        let packs = Packs::load()?;
        let registry = packs.registry();
        let calls = calls.max(1);
        Ok(Setup {
            runtime,
            options: options(dir)?,
            echo: packs.echo.clone(),
            calls,
            long: Prepared::new(&echo_steps(calls), &registry)?,
            short: Prepared::new(&echo_steps(0), &registry)?,
            set: Prepared::new(&set_steps(calls), &registry)?,
            start_echo: Prepared::new(&one_step("echo.echo", "{text: hello, n: 0}"), &registry)?,
            start_excel: Prepared::new(
                &one_step("excel.read_csv", "{path: startup.csv, header: true}"),
                &registry,
            )?,
            start_shout: Prepared::new(&one_step("shout.upper", "{text: hi}"), &registry)?,
            registry,
        })
    }

    /// Runs a session and checks it succeeded with every step.
    fn session(&self, p: &Prepared, sink: Arc<dyn EventSink>) -> Result<(Duration, SessionReport)> {
        let (elapsed, report) = run_session(
            self.runtime,
            &self.registry,
            &self.options,
            &p.workflow,
            &p.params,
            sink,
        )?;
        check_report(&report, p.steps)?;
        Ok((elapsed, report))
    }

    fn measure_call(&self, variant: CallVariant) -> Result<Duration> {
        let n = self.calls;
        Ok(match variant {
            CallVariant::PackLong => {
                let (elapsed, report) = self.session(&self.long, Arc::new(NullSink))?;
                let last = &report.steps[&format!("e{}", n - 1)].output;
                ensure!(*last == args(n as i64 - 1), "echo answered {last}");
                elapsed
            }
            CallVariant::PackShort => self.session(&self.short, Arc::new(NullSink))?.0,
            CallVariant::Set => {
                let (elapsed, report) = self.session(&self.set, Arc::new(NullSink))?;
                let last = &report.steps[&format!("s{}", n - 1)].output;
                ensure!(*last == args(n as i64 - 1), "set output {last}");
                elapsed
            }
            CallVariant::Floor => {
                let mut pipe = Pipe::minimal(&self.options)?;
                let elapsed = pipe.round_trips(n, &self.options)?;
                pipe.close()?;
                elapsed
            }
            CallVariant::Helper => {
                let mut pipe = Pipe::echo_pack(&self.echo)?;
                let elapsed = pipe.round_trips(n, &self.options)?;
                pipe.close()?;
                elapsed
            }
        })
    }

    /// The first step's start → answer, and the session's wall time; bare
    /// spawns have only the latter.
    fn measure_start(&self, variant: StartVariant) -> Result<(Option<Duration>, Duration)> {
        let pack = |p: &Prepared| -> Result<(Option<Duration>, Duration)> {
            let clock = Arc::new(StepClock::default());
            let (elapsed, _) = self.session(p, clock.clone())?;
            Ok((Some(clock.step_time()?), elapsed))
        };
        let bare = |program: &str, args: &[&str]| -> Result<(Option<Duration>, Duration)> {
            let started = Instant::now();
            let status = bare(program)
                .args(args)
                .current_dir(&self.options.work_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .with_context(|| format!("cannot start {program}"))?;
            let elapsed = started.elapsed();
            ensure!(
                status.success(),
                "`{program} {}` failed: {status}",
                args.join(" ")
            );
            Ok((None, elapsed))
        };
        match variant {
            StartVariant::Echo => pack(&self.start_echo),
            StartVariant::Excel => pack(&self.start_excel),
            StartVariant::Shout => pack(&self.start_shout),
            StartVariant::PythonJson => bare(PYTHON, &["-c", "import json"]),
            StartVariant::PythonOpenpyxl => bare(PYTHON, &["-c", "import openpyxl"]),
            StartVariant::Sh => bare("sh", &["-c", "true"]),
        }
    }
}

// ---------------------------------------------------------------------------
// The benchmark

pub struct PacksResult {
    calls: usize,
    runs: usize,
    warmup: usize,
    /// Wall times in ms, indexed like `CALL_VARIANTS`.
    call_ms: Vec<Samples>,
    /// The first step's start → answer, ms, indexed like `START_VARIANTS`
    /// (empty for the bare spawns).
    start_step_ms: Vec<Samples>,
    /// Session (or bare process) wall times, ms, like `start_step_ms`.
    start_wall_ms: Vec<Samples>,
}

pub fn bench_packs(
    opts: &Opts,
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
) -> Result<PacksResult> {
    let runs = opts.packs_runs();
    let setup = Setup::new(runtime, dir, opts.pack_calls)?;
    let mut result = PacksResult {
        calls: setup.calls,
        runs,
        warmup: opts.warmup,
        call_ms: vec![Samples::default(); CALL_VARIANTS.len()],
        start_step_ms: vec![Samples::default(); START_VARIANTS.len()],
        start_wall_ms: vec![Samples::default(); START_VARIANTS.len()],
    };
    for run in 0..opts.warmup + runs {
        progress("packs (per call)", run, opts.warmup, runs);
        // Rotate the order every run, so no variant always follows another.
        for k in 0..CALL_VARIANTS.len() {
            let index = (run + k) % CALL_VARIANTS.len();
            let elapsed = setup.measure_call(CALL_VARIANTS[index])?;
            if run >= opts.warmup {
                result.call_ms[index].push(ms(elapsed));
            }
        }
    }
    for run in 0..opts.warmup + runs {
        progress("packs (start-up)", run, opts.warmup, runs);
        for k in 0..START_VARIANTS.len() {
            let index = (run + k) % START_VARIANTS.len();
            let (step, wall) = setup.measure_start(START_VARIANTS[index])?;
            if run >= opts.warmup {
                if let Some(step) = step {
                    result.start_step_ms[index].push(ms(step));
                }
                result.start_wall_ms[index].push(ms(wall));
            }
        }
    }
    Ok(result)
}

impl PacksResult {
    fn call(&self, v: CallVariant) -> &Samples {
        let i = CALL_VARIANTS.iter().position(|x| *x == v).unwrap_or(0);
        &self.call_ms[i]
    }

    fn start_index(v: StartVariant) -> usize {
        START_VARIANTS.iter().position(|x| *x == v).unwrap_or(0)
    }

    /// µs per call, run by run: a pack call is the 1 + N session less the
    /// 1-step one, over N; the others are their time over N.
    fn per_call_us(&self, v: CallVariant) -> Samples {
        let n = self.calls as f64;
        match v {
            CallVariant::PackLong => self
                .call(CallVariant::PackLong)
                .paired_diff(self.call(CallVariant::PackShort))
                .map(|t| t * 1e3 / n),
            CallVariant::PackShort => self.call(v).map(|t| t * 1e3),
            _ => self.call(v).map(|t| t * 1e3 / n),
        }
    }

    fn pack_minus_floor_us(&self) -> Samples {
        self.per_call_us(CallVariant::PackLong)
            .paired_diff(&self.per_call_us(CallVariant::Floor))
    }

    pub fn write(&self, md: &mut String) {
        use CallVariant as V;
        let n = self.calls;
        let _ = writeln!(
            md,
            "### Action packs: one call of a running pack, N = {n}\n"
        );
        let _ = writeln!(
            md,
            "{} measured runs after {} warm-up runs; in every run the five variants below run back to \
             back, in an order that rotates from run to run. A pack call is (a session of 1 + N \
             `echo.echo` steps − a session of 1) / N, run by run, so the pack's start-up and shutdown \
             cancel out. Sessions run in-process (`Executor::run` inside `tokio::spawn` on a \
             multi-thread runtime, as in `tasuki run`; NullSink). The round trips are driven from \
             this thread with blocking std pipes; each request is a `run` line like the runtime's, \
             serialized, written, flushed, answered and parsed in turn, and the program's start is \
             not timed. Every step and request carries `{{text: hello, n: <i>}}`.\n",
            self.runs, self.warmup
        );
        let _ = writeln!(md, "| Variant | Median per call (µs) | Min | Max |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        let rows: [(&str, CallVariant); 4] = [
            (
                "**pack action**: an `echo.echo` step, the `echo` pack (Python helper) running",
                V::PackLong,
            ),
            ("**built-in `set` step** with the same `with`", V::Set),
            (
                "**floor: a bare JSON round trip** through a pipe to a minimal `python3` loop (`json.loads`, `json.dumps`, flush)",
                V::Floor,
            ),
            (
                "breakdown: the same round trip to `echo_pack.py` itself (the Python helper, no Tasuki)",
                V::Helper,
            ),
        ];
        for (name, v) in rows {
            let s = self.per_call_us(v);
            let _ = writeln!(
                md,
                "| {name} | {:.1} | {:.1} | {:.1} |",
                s.median(),
                s.min(),
                s.max()
            );
        }
        let _ = writeln!(md);
        let _ = writeln!(md, "| Wall time (ms) | Median | Min | Max |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for (name, v) in [
            (format!("session of 1 + {n} `echo.echo` steps"), V::PackLong),
            ("session of 1 `echo.echo` step".to_string(), V::PackShort),
            (format!("session of {n} `set` steps"), V::Set),
            (format!("{n} round trips, minimal loop"), V::Floor),
            (format!("{n} round trips, `echo_pack.py`"), V::Helper),
        ] {
            crate::row(md, &name, self.call(v), 1);
        }
        let _ = writeln!(md);

        let _ = writeln!(
            md,
            "| Ratio, per call | Median (paired) | Min | Max | Ratio of medians |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        let ratios = [
            ("**pack call / bare round trip**", V::PackLong, V::Floor),
            ("**pack call / `set` step**", V::PackLong, V::Set),
            (
                "breakdown: helper round trip / bare round trip",
                V::Helper,
                V::Floor,
            ),
            (
                "breakdown: pack call / helper round trip",
                V::PackLong,
                V::Helper,
            ),
        ];
        for (name, a, b) in ratios {
            let (sa, sb) = (self.per_call_us(a), self.per_call_us(b));
            let r = sa.paired_ratio(&sb);
            let _ = writeln!(
                md,
                "| {name} | **{:.2}** | {:.2} | {:.2} | {:.2} |",
                r.median(),
                r.min(),
                r.max(),
                sa.median() / sb.median()
            );
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "| Difference, per call (µs) | Median (paired) | Min | Max |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|");
        let diffs = [
            (
                format!(
                    "**pack call − bare round trip** (target ≤ {TARGET_EXTRA_US:.0})"
                ),
                V::PackLong,
                V::Floor,
            ),
            (
                "breakdown: helper − bare round trip (the Python helper's share)".to_string(),
                V::Helper,
                V::Floor,
            ),
            (
                "breakdown: pack call − helper round trip (Tasuki's share: executor, argument and output checks, async pipes and tasks, masking)"
                    .to_string(),
                V::PackLong,
                V::Helper,
            ),
        ];
        for (name, a, b) in diffs {
            let d = self.per_call_us(a).paired_diff(&self.per_call_us(b));
            let _ = writeln!(
                md,
                "| {name} | **{:.1}** | {:.1} | {:.1} |",
                d.median(),
                d.min(),
                d.max()
            );
        }
        let _ = writeln!(md);

        let _ = writeln!(md, "### Action packs: start-up\n");
        let _ = writeln!(
            md,
            "{} measured runs after {} warm-up runs, the six variants back to back in an order that \
             rotates from run to run. A pack's start-up is a 1-step session: \"step\" is from the \
             step's `StepStarted` event to its `StepFinished` (spawn, `ready`, one request, its \
             answer); \"session\" is `Executor::run`'s wall time, which adds ending the pack \
             (`shutdown`, then its exit). A bare spawn is spawn + wait with `std::process::Command`, \
             output thrown away, with the environment a pack gets (the base variables of \
             `builtin/step_env.rs`). The last two columns are paired differences with the pack's \
             baseline (Python helper: `import json`; excel: `import openpyxl`; shout: `sh -c true`). \
             Medians, with the range over the runs in brackets; ms.\n",
            self.runs, self.warmup
        );
        let _ = writeln!(
            md,
            "| Variant | Step | Session / bare process | Step − baseline | Session − baseline |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        let spread = |s: &Samples, bold: bool| {
            if s.is_empty() {
                return "—".to_string();
            }
            let median = if bold {
                format!("**{:.1}**", s.median())
            } else {
                format!("{:.1}", s.median())
            };
            format!("{median} ({:.1}–{:.1})", s.min(), s.max())
        };
        for (i, v) in START_VARIANTS.iter().enumerate() {
            let (step, wall) = (&self.start_step_ms[i], &self.start_wall_ms[i]);
            let over = |s: &Samples| match v.baseline() {
                Some(b) => format!(
                    "{:+.1}",
                    s.paired_diff(&self.start_wall_ms[Self::start_index(b)])
                        .median()
                ),
                None => "—".to_string(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                v.label(),
                spread(step, true),
                spread(wall, step.is_empty()),
                over(step),
                over(wall)
            );
        }
        let _ = writeln!(md);
    }

    pub fn verdicts(&self) -> Vec<Verdict> {
        let extra = self.pack_minus_floor_us().median();
        vec![Verdict {
            name: format!(
                "Packs: one pack action call − a bare JSON round trip (N = {})",
                self.calls
            ),
            measured: format!("{extra:.0} µs"),
            goal: format!("≤ {} µs", crate::thousands(TARGET_EXTRA_US)),
            met: extra <= TARGET_EXTRA_US,
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_workflows_are_valid() {
        let registry = Packs::load().unwrap().registry();
        for n in [0, 1, 3] {
            assert_eq!(
                Prepared::new(&echo_steps(n), &registry).unwrap().steps,
                n + 1
            );
        }
        assert_eq!(Prepared::new(&set_steps(3), &registry).unwrap().steps, 3);
    }

    /// Every variant once, with N = 3: the packs start, answer what they
    /// should, and end.
    #[test]
    fn every_variant_runs() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let setup = Setup::new(&runtime, dir.path(), 3).unwrap();
        for v in CALL_VARIANTS {
            setup.measure_call(v).unwrap();
        }
        for v in START_VARIANTS {
            let (step, _) = setup.measure_start(v).unwrap();
            assert_eq!(step.is_some(), v.baseline().is_some());
        }
    }
}
