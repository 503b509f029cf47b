//! `tasuki`: the robot agent's command line.
//!
//! Exit codes: 0 success, 1 the workflow failed, 2 invalid input,
//! 3 the robot was given to another key or machine (`tasuki agent`; service
//! managers do not restart it), 130 cancelled.

mod daemon;
mod demo;
mod display;
mod doctor;
mod inputs;
mod local_run;
mod local_wait;
mod log_escape;
mod logging;
mod packs;
mod service;
mod settings;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "tasuki", version, about = "A self-hosted RPA robot agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workflow file locally, with no control plane.
    Run(RunArgs),
    /// Check a workflow file and report every problem in it.
    Validate {
        file: PathBuf,
        /// An environment variable `${env.NAME}` may read (repeatable).
        #[arg(long = "allow-env", value_name = "NAME")]
        allow_env: Vec<String>,
        /// Accept browser steps that open local files (see `run --allow-file-urls`).
        #[arg(long)]
        allow_file_urls: bool,
        #[command(flatten)]
        packs: packs::PackDirs,
    },
    /// Print the JSON Schema of the workflow format, for editors (with the
    /// actions of the packs found).
    Schema {
        #[command(flatten)]
        packs: packs::PackDirs,
    },
    /// Action packs: list those installed, or check one.
    Packs {
        #[command(subcommand)]
        command: packs::PacksCommand,
    },
    /// Register this machine as a robot with a hub, and write its config
    /// and credentials.
    Register(daemon::RegisterArgs),
    /// Run the robot daemon: take sessions from the hub and run them.
    Agent(daemon::AgentArgs),
    /// Inspect the agent's settings.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Install the agent as a service (systemd, launchd, Windows SCM), or
    /// start, stop, query or remove it.
    Service {
        #[command(subcommand)]
        command: service::ServiceCommand,
    },
    /// Check this robot's setup (config, credentials, hub, token, clock,
    /// browser, disk) and say how to fix what is wrong.
    Doctor(settings::SettingsArgs),
    /// Run the built-in quickstart against the built-in demo shop.
    Demo {
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
        /// Where the demo's screenshot goes.
        #[arg(long, value_name = "DIR", default_value = "tasuki-artifacts")]
        artifacts: PathBuf,
        #[command(flatten)]
        browser: BrowserArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the effective settings (file, then TASUKI_* variables, then
    /// --set flags), secrets masked, each with where it came from.
    Show(settings::SettingsArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The workflow file (YAML, or JSON when it ends in .json).
    pub file: PathBuf,
    /// Set a param (repeatable). Secrets belong in --secrets-file instead,
    /// because the command line is visible to every user of the machine.
    #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// A JSON or YAML file of param values.
    #[arg(long, value_name = "FILE")]
    pub params_file: Option<PathBuf>,
    /// A JSON or YAML file of secret param values; they are masked everywhere.
    #[arg(long, value_name = "FILE")]
    pub secrets_file: Option<PathBuf>,
    /// A JSON or YAML file of the credentials the workflow declares under
    /// `credentials:`, as `{NAME: {FIELD: VALUE}}`; masked everywhere.
    /// `--dry-run` checks it when given and does without it otherwise.
    #[arg(long, value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// `text` shows progress; `json` prints one final report on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Where the session's artifacts go.
    #[arg(long, value_name = "DIR", default_value = "tasuki-artifacts")]
    pub artifacts: PathBuf,
    /// The working directory of shell steps; the current directory by default.
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Validate, bind params and print the plan, without running anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Approve the `approval` step STEP when it is reached (repeatable);
    /// without it or --reject, the step asks on the terminal.
    #[arg(long, value_name = "STEP")]
    pub approve: Vec<String>,
    /// Reject the `approval` step STEP when it is reached (repeatable).
    #[arg(long, value_name = "STEP")]
    pub reject: Vec<String>,
    /// Deliver the event NAME, with a JSON payload, to the `wait_event`
    /// step that waits for it (repeatable).
    #[arg(long = "event", value_name = "NAME=JSON")]
    pub events: Vec<String>,
    /// An environment variable `${env.NAME}` may read (repeatable).
    #[arg(long = "allow-env", value_name = "NAME")]
    pub allow_env: Vec<String>,
    /// An environment variable passed on to the processes steps start,
    /// beyond PATH, HOME, LANG and the like; a name or a glob such as
    /// `AWS_*` (repeatable).
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// How long a cancelled process tree gets before it is killed.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub cancel_grace: String,
    #[command(flatten)]
    pub browser: BrowserArgs,
    #[command(flatten)]
    pub packs: packs::PackDirs,
}

/// Where browser steps find their browser.
#[derive(clap::Args, Clone, Default)]
pub struct BrowserArgs {
    /// Show the browser window (needs a desktop).
    #[arg(long)]
    pub headed: bool,
    /// The Chromium or Chrome binary; found on PATH otherwise.
    #[arg(long, value_name = "PATH", env = "TASUKI_CHROMIUM")]
    pub chromium: Option<PathBuf>,
    /// The chromedriver binary; found on PATH otherwise.
    #[arg(long, value_name = "PATH", env = "TASUKI_CHROMEDRIVER")]
    pub chromedriver: Option<PathBuf>,
    /// Use a remote WebDriver (such as Selenium Grid) instead of a local driver.
    #[arg(long, value_name = "URL", env = "TASUKI_REMOTE_WEBDRIVER")]
    pub remote_webdriver: Option<String>,
    /// Let browser steps open file: and view-source: URLs, which read local
    /// files.
    #[arg(long)]
    pub allow_file_urls: bool,
}

impl BrowserArgs {
    pub fn settings(&self) -> tasuki_actions::runtime::context::BrowserSettings {
        tasuki_actions::runtime::context::BrowserSettings {
            chromium: self.chromium.clone(),
            chromedriver: self.chromedriver.clone(),
            remote_url: self.remote_webdriver.clone(),
            headless: !self.headed,
            allow_file_urls: self.allow_file_urls,
            ..Default::default()
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Writes a line to stdout, ignoring a closed pipe (`tasuki ... | head`):
/// `println!` would panic there.
pub fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
/// The hub gave the robot to another access key or another machine:
/// restarting cannot help, so the installed units do not restart on it.
pub const EXIT_DISPLACED: u8 = tasuki_installer::EXIT_DO_NOT_RESTART;
pub const EXIT_CANCELLED: u8 = 130;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                EXIT_INVALID
            } else {
                EXIT_OK
            });
        }
    };
    let code = match cli.command {
        Command::Run(args) => local_run::run(args),
        Command::Validate {
            file,
            allow_env,
            allow_file_urls,
            packs,
        } => local_run::validate(&file, allow_env, allow_file_urls, &packs),
        Command::Packs { command } => packs::run(command),
        Command::Demo {
            output,
            browser,
            artifacts,
        } => demo::run(output, &browser, &artifacts),
        Command::Register(args) => daemon::register(args),
        Command::Agent(args) => daemon::agent(args),
        Command::Doctor(args) => doctor::run(&args),
        Command::Service { command } => service::run(command),
        Command::Config {
            command: ConfigCommand::Show(args),
        } => match args.load() {
            Ok(effective) => {
                print_stdout(effective.show().trim_end());
                EXIT_OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_INVALID
            }
        },
        Command::Schema { packs } => {
            let schema = tasuki_actions::language::schema::workflow_schema(&packs.registry());
            crate::print_stdout(
                &serde_json::to_string_pretty(&schema)
                    .unwrap_or_default()
                    .to_string(),
            );
            EXIT_OK
        }
    };
    ExitCode::from(code)
}
