//! The browser benchmark (issue 3): the same 10-step browser workflow
//! (open, type, select, click, wait, read, extract, screenshot, URL, close)
//! run three ways, each as a whole process and interleaved run by run:
//!
//! - `tasuki run` of the workflow;
//! - the floor: `tasuki-bench raw-browser`, raw WebDriver HTTP calls to the
//!   same chromedriver (see `webdriver.rs`);
//! - the peer: Robot Framework with SeleniumLibrary (`bench/robot/`).
//!
//! All three use the same chromedriver and Chromium binaries, the same
//! Chromium flags and prefs, a fresh profile, and the demo shop served by
//! this process. Every run is checked (status text, table rows, screenshot,
//! URL, that the page was fetched), and every process a run started must be
//! gone afterwards; stragglers are killed and reported.
//!
//! A second part measures what one browser for a whole session saves:
//! 20 `browser.goto` steps in one browser against the same 20 steps with a
//! `browser.close` after each, so that every step starts its own browser.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::site::Site;
use crate::stats::Samples;
use crate::webdriver::{self, EXPECTED_ROWS, EXPECTED_STATUS, ITEM_VALUE, RawReport, STEP_IDS};
use crate::{Opts, Verdict, ms, progress, row};

/// Issue 3: `tasuki run` takes at most this multiple of the raw floor.
pub const TARGET_RAW_RATIO: f64 = 1.15;
/// Issue 3: `tasuki run` is faster than Robot Framework.
pub const TARGET_ROBOT_RATIO: f64 = 1.0;
/// How long a run's processes may take to go after it ended before they
/// are killed and reported as left behind.
const LINGER_LIMIT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Way {
    Tasuki,
    Raw,
    Robot,
    /// Breakdown: the floor with Chromium's own binary instead of Debian's
    /// `/usr/bin/chromium` wrapper script.
    RawDirect,
    /// A/B test: another `tasuki` binary (`--tasuki-b`).
    TasukiB,
}

impl Way {
    fn label(self) -> &'static str {
        match self {
            Way::Tasuki => "`tasuki run --output json` process",
            Way::Raw => "raw WebDriver floor: `tasuki-bench raw-browser` process",
            Way::Robot => "Robot Framework + SeleniumLibrary: `robot` process",
            Way::RawDirect => {
                "breakdown: raw floor with the Chromium binary itself (no wrapper script)"
            }
            Way::TasukiB => "A/B: `tasuki run` with the `--tasuki-b` binary",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Way::Tasuki => "tasuki",
            Way::Raw => "raw",
            Way::Robot => "robot",
            Way::RawDirect => "raw-direct",
            Way::TasukiB => "tasuki-b",
        }
    }
}

/// Everything the runs share, found once.
struct Setup<'a> {
    site: Site,
    url: String,
    tasuki: &'a Path,
    tasuki_b: Option<PathBuf>,
    me: PathBuf,
    robot: Option<PathBuf>,
    robot_file: PathBuf,
    chromium: PathBuf,
    chromedriver: PathBuf,
    /// The binary the wrapper script execs, when `chromium` is one.
    chromium_direct: Option<PathBuf>,
    dir: &'a Path,
    ten: PathBuf,
    reuse_one: PathBuf,
    reuse_fresh: PathBuf,
}

/// One way's measurements from the 10-step runs.
#[derive(Default)]
struct WayTimes {
    whole: Samples,
    lingered: usize,
    left_behind: Vec<String>,
}

/// What `tasuki run`'s report and log say about its runs.
#[derive(Default)]
struct TasukiTimes {
    start: Samples,
    session: Samples,
    steps: Vec<Samples>,
}

impl TasukiTimes {
    fn new() -> TasukiTimes {
        TasukiTimes {
            steps: vec![Samples::default(); STEP_IDS.len()],
            ..TasukiTimes::default()
        }
    }
}

pub struct BrowserResult {
    runs: usize,
    warmup: usize,
    chromium: PathBuf,
    chromium_direct: Option<PathBuf>,
    ways: Vec<Way>,
    times: Vec<WayTimes>,
    tasuki: TasukiTimes,
    tasuki_b: TasukiTimes,
    raw_start: Samples,
    raw_driver_ready: Samples,
    raw_new_session: Samples,
    raw_session_to_quit: Samples,
    raw_quit: Samples,
    raw_teardown: Samples,
    raw_in_process: Samples,
    raw_steps: Vec<Samples>,
    raw_direct_start: Samples,
    reuse: Option<ReuseResult>,
    /// Chromium or chromedriver processes running anywhere after the benchmark.
    stray: Vec<String>,
}

struct ReuseResult {
    runs: usize,
    steps: usize,
    one: WayTimes,
    fresh: WayTimes,
    /// "started Chromium (N ms)" of every browser the fresh runs started.
    fresh_starts: Samples,
    fresh_close: Samples,
    one_goto: Samples,
}

pub fn bench_browser(opts: &Opts, tasuki: &Path, dir: &Path) -> Result<BrowserResult> {
    let setup = Setup::new(opts, tasuki, dir)?;
    let runs = opts.browser_runs();
    let mut ways = vec![Way::Tasuki, Way::Raw];
    if setup.robot.is_some() {
        ways.push(Way::Robot);
    }
    if !opts.no_breakdown && setup.chromium_direct.is_some() {
        ways.push(Way::RawDirect);
    }
    if setup.tasuki_b.is_some() {
        ways.push(Way::TasukiB);
    }
    let mut r = BrowserResult {
        runs,
        warmup: opts.warmup,
        chromium: setup.chromium.clone(),
        chromium_direct: setup.chromium_direct.clone(),
        times: ways.iter().map(|_| WayTimes::default()).collect(),
        ways,
        tasuki: TasukiTimes::new(),
        tasuki_b: TasukiTimes::new(),
        raw_start: Samples::default(),
        raw_driver_ready: Samples::default(),
        raw_new_session: Samples::default(),
        raw_session_to_quit: Samples::default(),
        raw_quit: Samples::default(),
        raw_teardown: Samples::default(),
        raw_in_process: Samples::default(),
        raw_steps: vec![Samples::default(); STEP_IDS.len()],
        raw_direct_start: Samples::default(),
        reuse: None,
        stray: Vec::new(),
    };
    for run in 0..opts.warmup + runs {
        progress("browser", run, opts.warmup, runs);
        let measured = run >= opts.warmup;
        for k in 0..r.ways.len() {
            let index = (run + k) % r.ways.len();
            let way = r.ways[index];
            let rd = setup.run_dir(way.short(), run)?;
            let outcome = setup.measure(way, &rd);
            let sweep = sweep(&rd);
            let _ = std::fs::remove_dir_all(&rd);
            let outcome =
                outcome.with_context(|| format!("browser run {} ({})", run + 1, way.short()))?;
            let t = &mut r.times[index];
            t.lingered += sweep.lingered;
            t.left_behind.extend(sweep.killed);
            if !measured {
                continue;
            }
            t.whole.push(ms(outcome.elapsed));
            match outcome.detail {
                Detail::Tasuki {
                    start,
                    session,
                    steps,
                } => {
                    let t = if way == Way::TasukiB {
                        &mut r.tasuki_b
                    } else {
                        &mut r.tasuki
                    };
                    t.start.push(start);
                    t.session.push(session);
                    for (s, v) in t.steps.iter_mut().zip(steps) {
                        s.push(v);
                    }
                }
                Detail::Raw(raw) if way == Way::Raw => {
                    r.raw_start.push(raw.browser_start_ms());
                    r.raw_driver_ready.push(raw.driver_ready_ms);
                    r.raw_new_session.push(raw.new_session_ms);
                    r.raw_session_to_quit.push(raw.session_to_quit_ms);
                    r.raw_quit.push(raw.quit_ms);
                    r.raw_teardown.push(raw.teardown_ms);
                    r.raw_in_process.push(raw.total_ms);
                    for (s, (_, v)) in r.raw_steps.iter_mut().zip(&raw.steps_ms) {
                        s.push(*v);
                    }
                }
                Detail::Raw(raw) => r.raw_direct_start.push(raw.browser_start_ms()),
                Detail::None => {}
            }
        }
    }
    if !opts.no_reuse {
        r.reuse = Some(bench_reuse(opts, &setup)?);
    }
    // Informative: other users of the machine may run browsers too.
    r.stray = stray_browsers()
        .into_iter()
        .map(|(pid, cmd)| format!("{pid} {cmd}"))
        .collect();
    Ok(r)
}

fn bench_reuse(opts: &Opts, setup: &Setup) -> Result<ReuseResult> {
    let runs = opts.reuse_runs.max(1);
    let steps = opts.reuse_steps.max(1);
    let mut r = ReuseResult {
        runs,
        steps,
        one: WayTimes::default(),
        fresh: WayTimes::default(),
        fresh_starts: Samples::default(),
        fresh_close: Samples::default(),
        one_goto: Samples::default(),
    };
    for run in 0..runs {
        progress("browser reuse", run + opts.warmup, opts.warmup, runs);
        for k in 0..2 {
            let fresh = (run + k) % 2 == 1;
            let rd = setup.run_dir(if fresh { "fresh" } else { "one" }, run)?;
            let file = if fresh {
                &setup.reuse_fresh
            } else {
                &setup.reuse_one
            };
            let pages = setup.site.pages_served();
            let done = setup.tasuki(file, &rd);
            let sweep = sweep(&rd);
            let _ = std::fs::remove_dir_all(&rd);
            let (elapsed, report, stderr) = done.with_context(|| {
                format!(
                    "reuse run {} ({})",
                    run + 1,
                    if fresh { "fresh" } else { "one" }
                )
            })?;
            let expected_steps = if fresh { 2 * steps } else { steps + 1 };
            check_steps(&report, expected_steps)?;
            for i in 0..steps {
                let want = format!("{}?step={i}", setup.url);
                ensure!(
                    report["steps"][format!("goto{i}")]["output"]["url"] == want.as_str(),
                    "goto{i} did not reach {want}"
                );
            }
            ensure!(
                setup.site.pages_served() - pages == steps,
                "the site served {} pages, expected {steps}",
                setup.site.pages_served() - pages
            );
            let starts = started_chromium_ms(&stderr);
            let want_starts = if fresh { steps } else { 1 };
            ensure!(
                starts.len() == want_starts,
                "{} browsers started, expected {want_starts}",
                starts.len()
            );
            let t = if fresh { &mut r.fresh } else { &mut r.one };
            t.whole.push(ms(elapsed));
            t.lingered += sweep.lingered;
            t.left_behind.extend(sweep.killed);
            if fresh {
                starts.into_iter().for_each(|s| r.fresh_starts.push(s));
                for i in 0..steps {
                    r.fresh_close.push(step_ms(&report, &format!("close{i}"))?);
                }
            } else {
                for i in 1..steps {
                    r.one_goto.push(step_ms(&report, &format!("goto{i}"))?);
                }
            }
        }
    }
    Ok(r)
}

/// What a measured run returns besides its wall time.
enum Detail {
    Tasuki {
        start: f64,
        session: f64,
        steps: Vec<f64>,
    },
    Raw(RawReport),
    None,
}

struct Outcome {
    elapsed: Duration,
    detail: Detail,
}

impl<'a> Setup<'a> {
    fn new(opts: &'a Opts, tasuki: &'a Path, dir: &'a Path) -> Result<Setup<'a>> {
        let (chromium, chromedriver) = binaries(opts)?;
        let chromium_direct = wrapped_binary(&chromium);
        let robot = robot_path(opts)?;
        let site = Site::start(&crate::workspace_root().join("examples/site"))?;
        let url = site.url("/index.html");
        let write = |name: &str, text: String| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        };
        let ten = write("bench-browser.yaml", crate::workflows::browser_ten(&url))?;
        let reuse_one = write(
            "bench-browser-reuse.yaml",
            crate::workflows::browser_gotos(&url, opts.reuse_steps.max(1), false),
        )?;
        let reuse_fresh = write(
            "bench-browser-fresh.yaml",
            crate::workflows::browser_gotos(&url, opts.reuse_steps.max(1), true),
        )?;
        Ok(Setup {
            site,
            url,
            tasuki,
            tasuki_b: opts.tasuki_b.clone(),
            me: std::env::current_exe().context("cannot find the tasuki-bench binary")?,
            robot,
            robot_file: crate::workspace_root().join("bench/robot/bench-browser.robot"),
            chromium,
            chromedriver,
            chromium_direct,
            dir,
            ten,
            reuse_one,
            reuse_fresh,
        })
    }

    /// A fresh directory for one run, with `tmp/` to serve as its TMPDIR.
    fn run_dir(&self, what: &str, run: usize) -> Result<PathBuf> {
        let rd = self.dir.join(format!("{what}-{run}"));
        let _ = std::fs::remove_dir_all(&rd);
        std::fs::create_dir_all(rd.join("tmp"))
            .with_context(|| format!("cannot create {}", rd.display()))?;
        Ok(rd)
    }

    fn measure(&self, way: Way, rd: &Path) -> Result<Outcome> {
        let pages = self.site.pages_served();
        let outcome = match way {
            Way::Tasuki | Way::TasukiB => {
                let bin = match way {
                    Way::TasukiB => self.tasuki_b.as_deref().context("no --tasuki-b")?,
                    _ => self.tasuki,
                };
                let (elapsed, report, stderr) = self.tasuki_with(bin, &self.ten, rd)?;
                let steps = check_tasuki_ten(&report, &self.url)?;
                let starts = started_chromium_ms(&stderr);
                ensure!(
                    starts.len() == 1,
                    "expected one \"started Chromium\" line, found {}",
                    starts.len()
                );
                Outcome {
                    elapsed,
                    detail: Detail::Tasuki {
                        start: starts[0],
                        session: report["duration_ms"].as_f64().unwrap_or(f64::NAN),
                        steps,
                    },
                }
            }
            Way::Raw | Way::RawDirect => {
                let chromium = match way {
                    Way::RawDirect => self.chromium_direct.as_deref().unwrap_or(&self.chromium),
                    _ => &self.chromium,
                };
                let mut cmd = Command::new(&self.me);
                cmd.arg("raw-browser")
                    .arg("--url")
                    .arg(&self.url)
                    .arg("--dir")
                    .arg(rd)
                    .arg("--chromium")
                    .arg(chromium)
                    .arg("--chromedriver")
                    .arg(&self.chromedriver);
                let done = run_captured(&mut cmd, rd)?;
                let v: Value = serde_json::from_str(done.stdout.trim())
                    .context("raw-browser printed no JSON report")?;
                let raw = RawReport::from_json(&v)?;
                ensure!(
                    raw.status_text == EXPECTED_STATUS,
                    "raw: wrong status text {:?}",
                    raw.status_text
                );
                ensure!(raw.rows == EXPECTED_ROWS, "raw: {} table rows", raw.rows);
                ensure!(raw.url == self.url, "raw: URL {}", raw.url);
                check_png(&raw.screenshot)?;
                Outcome {
                    elapsed: done.elapsed,
                    detail: Detail::Raw(raw),
                }
            }
            Way::Robot => {
                let robot = self.robot.as_deref().context("no robot binary")?;
                let shot = rd.join("robot-shot.png");
                let var = |k: &str, v: &Path| format!("{k}:{}", v.display());
                let mut cmd = Command::new(robot);
                cmd.env("SE_OFFLINE", "true")
                    .env("XDG_CONFIG_HOME", rd.join("config"))
                    .args(["--output", "NONE", "--report", "NONE", "--log", "NONE"])
                    .arg("--variable")
                    .arg(format!("URL:{}", self.url))
                    .arg("--variable")
                    .arg(var("PROFILE", &rd.join("profile")))
                    .arg("--variable")
                    .arg(var("DOWNLOADS", &rd.join("downloads")))
                    .arg("--variable")
                    .arg(var("SHOT", &shot))
                    .arg("--variable")
                    .arg(var("CHROMIUM", &self.chromium))
                    .arg("--variable")
                    .arg(var("CHROMEDRIVER", &self.chromedriver))
                    .arg(&self.robot_file);
                let done = run_captured(&mut cmd, rd)?;
                ensure!(
                    done.stdout.contains("1 test, 1 passed, 0 failed"),
                    "robot did not pass:\n{}",
                    tail(&done.stdout)
                );
                check_png(&shot)?;
                Outcome {
                    elapsed: done.elapsed,
                    detail: Detail::None,
                }
            }
        };
        let served = self.site.pages_served() - pages;
        ensure!(
            served == 1,
            "{}: the site served the page {served} times, expected once",
            way.short()
        );
        Ok(outcome)
    }

    /// `tasuki run FILE --output json`: wall time, report, stderr.
    fn tasuki(&self, file: &Path, rd: &Path) -> Result<(Duration, Value, String)> {
        self.tasuki_with(self.tasuki, file, rd)
    }

    fn tasuki_with(&self, bin: &Path, file: &Path, rd: &Path) -> Result<(Duration, Value, String)> {
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg(file)
            .args(["--output", "json", "--artifacts"])
            .arg(rd.join("artifacts"))
            .arg("--chromium")
            .arg(&self.chromium)
            .arg("--chromedriver")
            .arg(&self.chromedriver);
        let done = run_captured(&mut cmd, rd)?;
        let report: Value =
            serde_json::from_str(&done.stdout).context("tasuki printed no JSON report")?;
        Ok((done.elapsed, report, done.stderr))
    }
}

struct Captured {
    elapsed: Duration,
    stdout: String,
    stderr: String,
}

/// Runs a whole process in `rd` with TMPDIR `rd/tmp`, its output going to
/// files (a pipe could be held open by a daemonized grandchild), and
/// times it from spawn to exit. Fails unless it exits with 0.
fn run_captured(cmd: &mut Command, rd: &Path) -> Result<Captured> {
    let out_path = rd.join("stdout.txt");
    let err_path = rd.join("stderr.txt");
    let out = std::fs::File::create(&out_path)?;
    let err = std::fs::File::create(&err_path)?;
    cmd.current_dir(rd)
        .env("TMPDIR", rd.join("tmp"))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let elapsed = started.elapsed();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "{:?} failed ({status}):\n{}\n{}",
            cmd.get_program(),
            tail(&stdout),
            tail(&stderr)
        );
    }
    Ok(Captured {
        elapsed,
        stdout,
        stderr,
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// What was still running after a run ended.
struct Sweep {
    /// Processes that were still there when the run's process exited, but
    /// went by themselves within [`LINGER_LIMIT`].
    lingered: usize,
    /// Processes killed after [`LINGER_LIMIT`]: left behind.
    killed: Vec<String>,
}

/// Finds the processes a run started (they have its TMPDIR, or name its
/// directory), waits for them to go, and kills whatever does not.
fn sweep(rd: &Path) -> Sweep {
    let mut tmpdir = format!("TMPDIR={}", rd.join("tmp").display()).into_bytes();
    tmpdir.push(0);
    let needle = rd.as_os_str().as_encoded_bytes().to_vec();
    let find = || {
        webdriver::processes_where(|_, cmdline, environ| {
            environ
                .windows(tmpdir.len())
                .any(|w| w == tmpdir.as_slice())
                || cmdline
                    .windows(needle.len())
                    .any(|w| w == needle.as_slice())
        })
    };
    let deadline = Instant::now() + LINGER_LIMIT;
    let first = find();
    let mut left = first.clone();
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        left = find();
    }
    for (pid, _) in &left {
        webdriver::signal_process(*pid, 9);
    }
    Sweep {
        lingered: first.len() - left.len().min(first.len()),
        killed: left
            .into_iter()
            .map(|(pid, cmd)| format!("{pid} {cmd}"))
            .collect(),
    }
}

/// Live chromium or chromedriver processes on the machine.
fn stray_browsers() -> Vec<(i32, String)> {
    webdriver::processes_where(|_, cmdline, _| {
        let first = cmdline.split(|b| *b == 0).next().unwrap_or(&[]);
        let name = Path::new(std::ffi::OsStr::new(
            std::str::from_utf8(first).unwrap_or(""),
        ))
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
        name.starts_with("chrom")
    })
}

/// The times in "started Chromium ... (N ms)" lines.
fn started_chromium_ms(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter(|l| l.contains("started Chromium"))
        .filter_map(|l| {
            let inner = l.rsplit_once('(')?.1;
            inner.strip_suffix(" ms)")?.trim().parse().ok()
        })
        .collect()
}

/// If `chromium` is Debian's launcher script, the binary it runs.
fn wrapped_binary(chromium: &Path) -> Option<PathBuf> {
    let text = std::fs::read(chromium).ok()?;
    if !text.starts_with(b"#!") {
        return None;
    }
    let name = chromium.file_name()?;
    let direct = Path::new("/usr/lib").join(name).join(name);
    direct.is_file().then_some(direct)
}

fn check_steps(report: &Value, steps: usize) -> Result<()> {
    ensure!(
        report["status"] == "success",
        "the session ended with {}: {}",
        report["status"],
        report["error"]
    );
    let got = report["steps"].as_object().map_or(0, |m| m.len());
    ensure!(got == steps, "the report has {got} steps, expected {steps}");
    Ok(())
}

fn step_ms(report: &Value, id: &str) -> Result<f64> {
    report["steps"][id]["duration_ms"]
        .as_f64()
        .with_context(|| format!("step {id} has no duration"))
}

/// Checks the 10-step report's outputs; returns the steps' times.
fn check_tasuki_ten(report: &Value, url: &str) -> Result<Vec<f64>> {
    check_steps(report, STEP_IDS.len())?;
    let out = |id: &str| &report["steps"][id]["output"];
    ensure!(
        out("status")["text"] == EXPECTED_STATUS,
        "tasuki: wrong status text {}",
        out("status")["text"]
    );
    ensure!(
        out("orders")["count"] == EXPECTED_ROWS
            && out("orders")["rows"][EXPECTED_ROWS - 1]["Customer"] == webdriver::CUSTOMER,
        "tasuki: wrong table {}",
        out("orders")
    );
    ensure!(
        out("item")["value"] == ITEM_VALUE,
        "tasuki: wrong selection"
    );
    ensure!(
        out("url")["url"] == url,
        "tasuki: wrong URL {}",
        out("url")["url"]
    );
    ensure!(
        out("close")["closed"] == true,
        "tasuki: the browser was not closed"
    );
    check_png(Path::new(out("shot")["path"].as_str().unwrap_or("")))?;
    STEP_IDS.iter().map(|id| step_ms(report, id)).collect()
}

fn check_png(path: &Path) -> Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("no screenshot at {}", path.display()))?;
    ensure!(
        bytes.len() > 1000 && bytes.starts_with(b"\x89PNG"),
        "{} is not a screenshot",
        path.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Report

impl BrowserResult {
    fn get(&self, way: Way) -> Option<&WayTimes> {
        self.ways
            .iter()
            .position(|w| *w == way)
            .map(|i| &self.times[i])
    }

    fn ratio(&self, a: Way, b: Way) -> Option<(Samples, f64)> {
        let (sa, sb) = (&self.get(a)?.whole, &self.get(b)?.whole);
        Some((sa.paired_ratio(sb), sa.median() / sb.median()))
    }

    pub fn write(&self, md: &mut String) {
        let _ = writeln!(md, "### Browser: the same 10-step workflow three ways\n");
        let _ = writeln!(
            md,
            "{} measured runs after {} warm-up runs; in every run each way runs once, as a whole \
             process, in an order that rotates from run to run. Steps: open the demo shop, type the \
             customer, select an item, click submit, wait for \"Thank you\" in `#status`, read \
             `#status`, extract `#orders`, take a screenshot, read the URL, close. Each run is checked \
             (status text, 4 table rows, PNG screenshot, URL, page fetched once). Chromium: `{}`. \
             Ratios are taken run by run (paired); the ratio of the medians is a cross-check.\n",
            self.runs,
            self.warmup,
            self.chromium.display()
        );
        if let Some(direct) = &self.chromium_direct
            && self.get(Way::RawDirect).is_some()
        {
            let _ = writeln!(
                md,
                "`{}` is a launcher script; the breakdown row runs the floor with `{}`, the binary it \
                 starts, instead.\n",
                self.chromium.display(),
                direct.display()
            );
        }
        let _ = writeln!(md, "| Way | Median (ms) | Min (ms) | Max (ms) |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for (w, t) in self.ways.iter().zip(&self.times) {
            row(md, w.label(), &t.whole, 0);
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "| Ratio | Median (paired) | Min | Max | Ratio of medians |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for (name, a, b) in [
            ("**tasuki / raw floor**", Way::Tasuki, Way::Raw),
            ("**tasuki / Robot Framework**", Way::Tasuki, Way::Robot),
            ("raw floor / Robot Framework", Way::Raw, Way::Robot),
            (
                "breakdown: raw floor without wrapper / raw floor",
                Way::RawDirect,
                Way::Raw,
            ),
            ("A/B: tasuki-b / raw floor", Way::TasukiB, Way::Raw),
            ("A/B: tasuki-b / tasuki", Way::TasukiB, Way::Tasuki),
            ("A/B: tasuki-b / Robot Framework", Way::TasukiB, Way::Robot),
        ] {
            if let Some((r, of_medians)) = self.ratio(a, b) {
                let _ = writeln!(
                    md,
                    "| {name} | **{:.3}** | {:.3} | {:.3} | {of_medians:.3} |",
                    r.median(),
                    r.min(),
                    r.max()
                );
            }
        }
        let _ = writeln!(md);

        let _ = writeln!(md, "#### Browser start and phases\n");
        let _ = writeln!(md, "| Measure | Median (ms) | Min (ms) | Max (ms) |");
        let _ = writeln!(md, "|---|---:|---:|---:|");
        row(
            md,
            "**Browser start, tasuki** (\"started Chromium … (N ms)\": find binaries, profile, chromedriver, new session)",
            &self.tasuki.start,
            0,
        );
        if !self.tasuki_b.start.is_empty() {
            row(md, "A/B: browser start, tasuki-b", &self.tasuki_b.start, 0);
        }
        row(
            md,
            "**Browser start, raw floor** (spawn chromedriver → listening → `POST /session` done)",
            &self.raw_start,
            0,
        );
        row(
            md,
            "raw: chromedriver spawned and listening",
            &self.raw_driver_ready,
            0,
        );
        row(
            md,
            "raw: `POST /session` (Chromium starting)",
            &self.raw_new_session,
            0,
        );
        if !self.raw_direct_start.is_empty() {
            row(
                md,
                "breakdown: raw browser start with the Chromium binary itself",
                &self.raw_direct_start,
                0,
            );
        }
        row(
            md,
            "raw: session start to quit (`POST /session` returned … `DELETE /session` returned)",
            &self.raw_session_to_quit,
            0,
        );
        row(md, "raw: `DELETE /session` (quit)", &self.raw_quit, 0);
        row(
            md,
            "raw: teardown after the quit (kill the driver group and stragglers, remove the profile)",
            &self.raw_teardown,
            0,
        );
        row(
            md,
            "raw: inside the process, first to last instruction",
            &self.raw_in_process,
            0,
        );
        row(
            md,
            "tasuki: session (`duration_ms` of the report)",
            &self.tasuki.session,
            0,
        );
        if let Some(t) = self.get(Way::Tasuki) {
            let outside = t.whole.paired_diff(&self.tasuki.session);
            row(
                md,
                "tasuki: whole process minus session (start, parse, exit)",
                &outside,
                0,
            );
        }
        if let Some(t) = self.get(Way::Raw) {
            let outside = t.whole.paired_diff(&self.raw_in_process);
            row(
                md,
                "raw: whole process minus inside the process",
                &outside,
                0,
            );
        }
        let _ = writeln!(md);

        let _ = writeln!(md, "#### Per step (medians, ms)\n");
        let _ = writeln!(
            md,
            "tasuki's times are the steps' `duration_ms` in the JSON report (whole milliseconds); the \
             raw floor times the same steps with `Instant`. Step `open` includes the browser start; \
             `close` includes the quit and the teardown.\n"
        );
        let ab = !self.tasuki_b.session.is_empty();
        let _ = writeln!(
            md,
            "| Step | tasuki | raw floor | tasuki − raw |{}",
            if ab {
                " tasuki-b | tasuki-b − raw |"
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "|---|---:|---:|---:|{}",
            if ab { "---:|---:|" } else { "" }
        );
        let (mut sum_t, mut sum_r, mut sum_b) = (0.0, 0.0, 0.0);
        for (i, id) in STEP_IDS.iter().enumerate() {
            let (t, r) = (self.tasuki.steps[i].median(), self.raw_steps[i].median());
            let b = self.tasuki_b.steps[i].median();
            sum_t += t;
            sum_r += r;
            sum_b += b;
            let extra = if ab {
                format!(" {b:.0} | {:+.0} |", b - r)
            } else {
                String::new()
            };
            let _ = writeln!(md, "| `{id}` | {t:.0} | {r:.1} | {:+.0} |{extra}", t - r);
        }
        let extra = if ab {
            format!(" {sum_b:.0} | {:+.0} |", sum_b - sum_r)
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| sum of the medians | {sum_t:.0} | {sum_r:.0} | {:+.0} |{extra}",
            sum_t - sum_r
        );
        let _ = writeln!(md);

        if let Some(reuse) = &self.reuse {
            reuse.write(md);
        }

        let _ = writeln!(md, "#### Processes left behind\n");
        let _ = writeln!(
            md,
            "After every run, the bench looks for processes with the run's TMPDIR or directory. \
             \"Lingered\" went by themselves within {} s of the run's process exiting; \"left behind\" \
             were still there and were killed.\n",
            LINGER_LIMIT.as_secs()
        );
        let _ = writeln!(md, "| Way | Lingered (sum over runs) | Left behind |");
        let _ = writeln!(md, "|---|---:|---|");
        let mut all: Vec<(String, &WayTimes)> = self
            .ways
            .iter()
            .zip(&self.times)
            .map(|(w, t)| (w.short().to_string(), t))
            .collect();
        if let Some(reuse) = &self.reuse {
            all.push((
                format!("tasuki, {} steps, one browser", reuse.steps),
                &reuse.one,
            ));
            all.push((
                format!("tasuki, {} steps, a browser each", reuse.steps),
                &reuse.fresh,
            ));
        }
        for (name, t) in all {
            let left = if t.left_behind.is_empty() {
                "none".to_string()
            } else {
                format!("{}: {}", t.left_behind.len(), t.left_behind.join("; "))
            };
            let _ = writeln!(md, "| {name} | {} | {left} |", t.lingered);
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "Chromium or chromedriver processes running on the machine after the benchmark \
             (`pgrep`-style scan, zombies excluded): {}.\n",
            if self.stray.is_empty() {
                "none".to_string()
            } else {
                self.stray.join("; ")
            }
        );
    }

    pub fn verdicts(&self) -> Vec<Verdict> {
        let mut v = Vec::new();
        if let Some((r, _)) = self.ratio(Way::Tasuki, Way::Raw) {
            let m = r.median();
            v.push(Verdict {
                name: "Browser: `tasuki run` / raw WebDriver floor, whole process".into(),
                measured: format!("{m:.3}"),
                goal: format!("≤ {TARGET_RAW_RATIO:.2}"),
                met: m <= TARGET_RAW_RATIO,
            });
        }
        if let Some((r, _)) = self.ratio(Way::Tasuki, Way::Robot) {
            let m = r.median();
            v.push(Verdict {
                name: "Browser: `tasuki run` / Robot Framework, whole process".into(),
                measured: format!("{m:.3}"),
                goal: format!("< {TARGET_ROBOT_RATIO:.2} (faster)"),
                met: m < TARGET_ROBOT_RATIO,
            });
        }
        v
    }
}

impl ReuseResult {
    fn write(&self, md: &mut String) {
        let n = self.steps as f64;
        let _ = writeln!(
            md,
            "#### Single-process reuse: {} browser steps\n",
            self.steps
        );
        let _ = writeln!(
            md,
            "{} runs, no warm-up, the two variants alternating. \"One browser\": {} `browser.goto` \
             steps with `single_process_mode: true`, then `browser.close`. \"A browser each\": the same \
             gotos with a `browser.close` after each, so every goto starts its own chromedriver and \
             Chromium. Both `tasuki run` whole processes; the page is fetched {} times in each.\n",
            self.runs, self.steps, self.steps
        );
        let _ = writeln!(
            md,
            "| Variant | Median (ms) | Min (ms) | Max (ms) | Per step (ms) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|---:|");
        for (name, s) in [
            ("One browser for the session", &self.one.whole),
            ("A browser for each step", &self.fresh.whole),
        ] {
            let _ = writeln!(
                md,
                "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
                s.median(),
                s.min(),
                s.max(),
                s.median() / n
            );
        }
        let saved = self.fresh.whole.paired_diff(&self.one.whole);
        let ratio = self.fresh.whole.paired_ratio(&self.one.whole);
        let _ = writeln!(
            md,
            "| **Saved by reuse** (paired difference) | **{:.0}** | {:.0} | {:.0} | **{:.0}** |",
            saved.median(),
            saved.min(),
            saved.max(),
            saved.median() / n
        );
        let _ = writeln!(
            md,
            "| A browser each / one browser (paired ratio) | {:.2}× | {:.2}× | {:.2}× | |",
            ratio.median(),
            ratio.min(),
            ratio.max()
        );
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "| Inside the runs | Median (ms) | Min (ms) | Max (ms) |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|");
        row(
            md,
            "Browser start (\"started Chromium\", every browser of the fresh runs)",
            &self.fresh_starts,
            0,
        );
        row(
            md,
            "`browser.close` step (fresh runs)",
            &self.fresh_close,
            0,
        );
        row(
            md,
            "`browser.goto` step on the shared browser (one-browser runs, steps 2…)",
            &self.one_goto,
            0,
        );
        let _ = writeln!(md);
    }
}

/// `tasuki-bench raw-browser`: the floor, as its own process.
pub fn raw_browser(opts: &Opts, url: &str, dir: &Path, poll_ms: u64) -> Result<()> {
    let (chromium, chromedriver) = binaries(opts)?;
    let report = webdriver::run_raw(
        url,
        dir,
        &chromium,
        &chromedriver,
        Duration::from_millis(poll_ms.max(1)),
    )?;
    println!("{}", report.to_json());
    Ok(())
}

/// Checks that the browser benchmark's programs are there, so that a
/// missing one fails before minutes of other benchmarks.
pub fn preflight(opts: &Opts) -> Result<()> {
    binaries(opts)?;
    robot_path(opts)?;
    Ok(())
}

/// Robot Framework's `robot`, unless `--no-robot`; it must exist.
fn robot_path(opts: &Opts) -> Result<Option<PathBuf>> {
    if opts.no_robot {
        return Ok(None);
    }
    let path = opts
        .robot
        .clone()
        .unwrap_or_else(|| crate::workspace_root().join("target/bench-venv/bin/robot"));
    ensure!(
        path.is_file(),
        "Robot Framework was not found at {}\n\
         bench/run.sh installs it into target/bench-venv (python3 -m venv, then \
         pip install -r bench/robot/requirements.txt); or name it with --robot PATH \
         or ROBOT_BIN, or skip it with --no-robot",
        path.display()
    );
    Ok(Some(path))
}

/// Chromium and chromedriver, found as `tasuki` finds them.
fn binaries(opts: &Opts) -> Result<(PathBuf, PathBuf)> {
    use tasuki_actions::builtin::browser::{find_chromedriver, find_chromium};
    use tasuki_actions::runtime::context::BrowserSettings;
    let settings = BrowserSettings {
        chromium: opts.chromium.clone(),
        chromedriver: opts.chromedriver.clone(),
        ..BrowserSettings::default()
    };
    let chromium = find_chromium(&settings).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let chromedriver =
        find_chromedriver(&settings).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok((chromium, chromedriver))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_browser_start_line() {
        let stderr = "  open │ started Chromium /usr/bin/chromium via chromedriver on port 1, headless (623 ms)\n✓ open (1024 ms)\n";
        assert_eq!(started_chromium_ms(stderr), vec![623.0]);
    }
}
