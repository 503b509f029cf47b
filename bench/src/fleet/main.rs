//! `tasuki-fleet-bench`: fleet-mode measurements against real `tasuki-hub`
//! and `tasuki agent` processes, each started from target/release in a
//! scratch folder of its own and killed when done.
//!
//! - `pickup`: queue → the first step's HTTP request, on one idle agent,
//!   against one loopback round trip.
//! - `cancel`: DELETE cancel → the step's process tree dead and the hub
//!   saying `cancelled`; orphans.
//! - `logs`: a million timestamped lines through the agent and the hub,
//!   against the same program writing to /dev/null; the agent's peak RSS.
//! - `idle`: an idle agent's and hub's RSS and CPU over FLEET_IDLE_SECONDS.
//! - `fleet`: one hub, a thousand simulated robots long-polling; pickup
//!   under that load, and the hub's RSS and CPU.
//! - `soak`: many short sessions through one hub and two agents; RSS and
//!   open descriptors of each sampled every second (not part of `all`).
//! - `warm`: two agents, one keeping a browser warm (`browser.warm`), take
//!   turns: enqueue → the end of the first `browser.goto`, and each idle
//!   robot's memory (needs Chromium; not part of `all`).
//! - `pickup-hubs`: `pickup` on SQLite, on PostgreSQL with one hub and
//!   on PostgreSQL with three hubs (POSTs to each hub in turn), side by
//!   side (needs TASUKI_BENCH_POSTGRES; not part of `all`).
//! - `throughput`: sessions per second through six real agents, SQLite's
//!   hub, PostgreSQL's one hub and three hubs (needs
//!   TASUKI_BENCH_POSTGRES; not part of `all`).
//! - `fleet-hubs`: 5,000 simulated robots across three hubs of one
//!   PostgreSQL database, and a real agent among them: each hub's RSS, the
//!   database's connections, pickup (needs TASUKI_BENCH_POSTGRES; not part
//!   of `all`).
//! - `hubs`: `pickup-hubs`, `throughput` and `fleet-hubs`.
//! - `orchestration`: a signed webhook call → the first step, beside a
//!   POST; how late schedules' runs are queued, one and 1,000 (not part
//!   of `all`).
//! - `console`: `/ui/sessions` rendered with 10,000 sessions stored (not
//!   part of `all`).
//! - `console-log`: a session's console page in headless Chromium while
//!   its step prints 10,000 lines a second (needs Chromium; not part of
//!   `all`).
//! - `all` (the default): every one of them but `soak`, `warm` and the
//!   PostgreSQL ones.
//!
//! The Markdown report goes to stdout, progress to stderr. The binaries
//! are found beside this one, or at TASUKI_BIN and TASUKI_HUB_BIN.

mod api;
mod cancel;
mod console;
mod console_log;
mod hubs_fleet;
mod hubs_pickup;
mod idle;
mod logs;
mod orchestration;
mod pickup;
mod procs;
mod resume;
mod soak;
mod stats;
mod swarm;
mod throughput;
mod warm;

use std::io::Write as _;
use std::process::{Command as Process, ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use procs::Bins;

#[derive(Parser)]
#[command(
    name = "tasuki-fleet-bench",
    about = "Fleet-mode benchmarks: real tasuki-hub and tasuki agent processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Queue → first step on one idle agent, against a loopback round trip.
    Pickup,
    /// DELETE cancel → process tree dead and the hub saying `cancelled`.
    Cancel,
    /// A million log lines through the agent and the hub.
    Logs,
    /// An idle agent's and hub's RSS and CPU.
    Idle,
    /// A thousand simulated robots on one hub.
    Fleet,
    /// Many short sessions through one hub and two agents: RSS and
    /// descriptors over time (not part of `all`).
    Soak,
    /// Two agents, with and without `browser.warm`: enqueue → the end of
    /// the first browser step, and idle memory (needs Chromium; not part
    /// of `all`).
    Warm,
    /// `pickup` on SQLite, PostgreSQL with one hub and PostgreSQL with
    /// --hubs hubs, side by side (needs TASUKI_BENCH_POSTGRES).
    PickupHubs,
    /// Sessions per second through --agents real agents: SQLite, and
    /// PostgreSQL with one hub and with --hubs hubs (needs
    /// TASUKI_BENCH_POSTGRES).
    Throughput,
    /// --swarm-robots simulated robots across --hubs hubs of one
    /// PostgreSQL database and a real agent: RSS, connections, pickup
    /// (needs TASUKI_BENCH_POSTGRES).
    FleetHubs,
    /// pickup-hubs, throughput and fleet-hubs.
    Hubs,
    /// Webhook → first step beside a POST; schedules' lateness with one
    /// and 1,000 schedules (not part of `all`).
    Orchestration,
    /// The web console's sessions list with --console-sessions stored
    /// (not part of `all`).
    Console,
    /// A session's console page in headless Chromium while its step
    /// prints --console-log-rate lines a second (needs Chromium; not part
    /// of `all`).
    ConsoleLog,
    /// Approval of a waiting session → its next step, beside a fresh
    /// session's pickup (--reps pairs; not part of `all`).
    Resume,
    /// pickup, cancel, logs, idle and fleet (the default).
    All,
    /// Prints `i <unix nanos>` for i in 1..=N (the log benchmark's step).
    #[command(hide = true)]
    GenLines {
        n: u64,
        /// Spread the lines evenly at this rate instead of printing them
        /// at once.
        #[arg(long)]
        per_second: Option<u64>,
    },
}

#[derive(clap::Args, Clone)]
pub struct Opts {
    /// pickup: sessions measured.
    #[arg(long, global = true, default_value_t = 500)]
    pub sessions: usize,
    /// pickup: warm-up sessions, not counted.
    #[arg(long, global = true, default_value_t = 20)]
    pub warmup: usize,
    /// pickup: pause after a session's success before queueing the next,
    /// so that the agent is back in its idle long poll.
    #[arg(long, global = true, default_value_t = 50)]
    pub settle_ms: u64,
    /// cancel: repetitions.
    #[arg(long, global = true, default_value_t = 30)]
    pub reps: usize,
    /// logs: lines the step prints.
    #[arg(long, global = true, default_value_t = 1_000_000)]
    pub lines: u64,
    /// idle: seconds to watch the idle agent.
    #[arg(long, global = true, env = "FLEET_IDLE_SECONDS", default_value_t = 300)]
    pub idle_seconds: u64,
    /// fleet: simulated robots.
    #[arg(long, global = true, default_value_t = 1000)]
    pub robots: usize,
    /// fleet: sessions queued one at a time.
    #[arg(long, global = true, default_value_t = 500)]
    pub fleet_sessions: usize,
    /// soak: sessions run.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub soak_sessions: usize,
    /// soak: sessions that end before growth is measured (default: a tenth).
    #[arg(long, global = true)]
    pub soak_warmup: Option<usize>,
    /// warm: rounds measured (one session for each robot a round).
    #[arg(long, global = true, default_value_t = 40)]
    pub warm_sessions: usize,
    /// warm: warm-up rounds, not counted.
    #[arg(long, global = true, default_value_t = 3)]
    pub warm_warmup: usize,
    /// pickup-hubs, throughput, fleet-hubs: the admin URL of a PostgreSQL
    /// server, on which a database is created for each measurement and
    /// dropped afterwards.
    #[arg(long, global = true, env = "TASUKI_BENCH_POSTGRES")]
    pub postgres: Option<String>,
    /// pickup-hubs, throughput, fleet-hubs: hubs of the PostgreSQL
    /// database in the multi-hub setup (at least 2).
    #[arg(long, global = true, default_value_t = 3)]
    pub hubs: usize,
    /// throughput: real agents.
    #[arg(long, global = true, default_value_t = 6)]
    pub agents: usize,
    /// throughput: each agent's max_concurrency.
    #[arg(long, global = true, default_value_t = 4)]
    pub agent_concurrency: u32,
    /// throughput: sessions queued per measurement.
    #[arg(long, global = true, default_value_t = 600)]
    pub throughput_sessions: usize,
    /// throughput: rounds (each setup measured once a round).
    #[arg(long, global = true, default_value_t = 3)]
    pub throughput_rounds: usize,
    /// fleet-hubs: simulated robots.
    #[arg(long, global = true, default_value_t = 5000)]
    pub swarm_robots: usize,
    /// fleet-hubs: sessions for the real agent, before and among the
    /// robots, and for the simulated robots.
    #[arg(long, global = true, default_value_t = 100)]
    pub swarm_sessions: usize,
    /// console: sessions stored.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub console_sessions: usize,
    /// console: requests timed per page.
    #[arg(long, global = true, default_value_t = 200)]
    pub console_requests: usize,
    /// console-log: lines the step prints.
    #[arg(long, global = true, default_value_t = 100_000)]
    pub console_log_lines: u64,
    /// console-log: lines a second.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub console_log_rate: u64,
    /// console: requests per page before timing.
    #[arg(long, global = true, default_value_t = 10)]
    pub console_warmup: usize,
    /// Keep each run's scratch folder (databases, logs) and print its path.
    #[arg(long, global = true)]
    pub keep: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::All);
    if let Command::GenLines { n, per_second } = command {
        return match logs::gen_lines(n, per_second) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gen-lines: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tasuki-fleet-bench: a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command, &cli.opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tasuki-fleet-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the report as it goes; false when a benchmark failed.
async fn run(command: Command, opts: &Opts) -> Result<bool> {
    let (soft, hard) = procs::raise_nofile()?;
    let bins = Bins::locate()?;
    let mut header = machine(&bins, soft, hard);
    if let Some(url) = opts.postgres.as_deref() {
        let version = procs::postgres_version(url)
            .await
            .unwrap_or_else(|e| format!("unknown ({e:#})"));
        header.push_str(&format!(
            "| PostgreSQL (TASUKI_BENCH_POSTGRES) | {version} |\n"
        ));
    }
    emit(&format!("# Tasuki fleet benchmarks\n\n{header}"));
    let all = [
        Command::Pickup,
        Command::Cancel,
        Command::Logs,
        Command::Idle,
        Command::Fleet,
    ];
    let todo: Vec<Command> = match command {
        Command::All => all.to_vec(),
        Command::Hubs => vec![Command::PickupHubs, Command::Throughput, Command::FleetHubs],
        c => vec![c],
    };
    let mut ok = true;
    for c in todo {
        let (name, result) = match c {
            Command::Pickup => ("pickup", pickup::run(&bins, opts).await),
            Command::Cancel => ("cancel", cancel::run(&bins, opts).await),
            Command::Logs => ("logs", logs::run(&bins, opts).await),
            Command::Idle => ("idle", idle::run(&bins, opts).await),
            Command::Fleet => ("fleet", swarm::run(&bins, opts).await),
            Command::Soak => ("soak", soak::run(&bins, opts).await),
            Command::Warm => ("warm", warm::run(&bins, opts).await),
            Command::PickupHubs => ("pickup-hubs", hubs_pickup::run(&bins, opts).await),
            Command::Throughput => ("throughput", throughput::run(&bins, opts).await),
            Command::FleetHubs => ("fleet-hubs", hubs_fleet::run(&bins, opts).await),
            Command::Orchestration => ("orchestration", orchestration::run(&bins, opts).await),
            Command::Console => ("console", console::run(&bins, opts).await),
            Command::ConsoleLog => ("console-log", console_log::run(&bins, opts).await),
            Command::Resume => ("resume", resume::run(&bins, opts).await),
            Command::All | Command::Hubs | Command::GenLines { .. } => continue,
        };
        eprintln!("[{name}] done");
        match result {
            Ok(section) => emit(&section),
            Err(e) => {
                ok = false;
                eprintln!("[{name}] failed: {e:#}");
                emit(&format!("## {name}\n\n**Failed:** {e:#}\n"));
            }
        }
    }
    Ok(ok)
}

fn emit(section: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{section}");
    let _ = out.flush();
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Process::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine(bins: &Bins, soft: u64, hard: u64) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = command_line("uname", &["-r"]).unwrap_or_else(|| "unknown".into());
    let rustc = command_line("rustc", &["--version"]).unwrap_or_else(|| "not found".into());
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .map_or("unknown".into(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1048576.0)
        });
    format!(
        "## machine\n\n\
         | | |\n|---|---|\n\
         | nproc | {cpus} |\n\
         | CPU | {model} |\n\
         | memory | {total} |\n\
         | kernel | {kernel} |\n\
         | rustc | {rustc} |\n\
         | open files (soft/hard) | {soft} / {hard} |\n\
         | tasuki | {} |\n\
         | tasuki-hub | {} |\n",
        bins.tasuki.display(),
        bins.hub.display()
    )
}
