//! `tasuki run` and `tasuki validate`: a workflow file run on this machine,
//! with no control plane.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tasuki_actions::language::calls::{Calls, Folder};
use tasuki_actions::language::credentials::bind_credentials;
use tasuki_actions::language::duration::parse_duration;
use tasuki_actions::language::params::{BoundParams, bind_params};
use tasuki_actions::runtime::executor::Start;
use tasuki_actions::runtime::plan::plan;
use tasuki_actions::runtime::wait::Waiter;
use tasuki_actions::{
    ExecOptions, Executor, LoadOptions, Problems, Registry, SessionStatus, Workflow, load_workflow,
};
use tokio_util::sync::CancellationToken;

use crate::display::{Display, Target};
use crate::{EXIT_CANCELLED, EXIT_FAILED, EXIT_INVALID, EXIT_OK, OutputFormat, RunArgs};

/// `call` steps find `NAME.yaml` (`.yml`, `.json`) beside the workflow file.
fn calls_beside(file: &Path) -> Calls {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Calls::new(Arc::new(Folder(dir.to_path_buf())))
}

pub fn validate(
    file: &Path,
    allow_env: Vec<String>,
    allow_file_urls: bool,
    packs: &crate::packs::PackDirs,
) -> u8 {
    let registry = packs.registry();
    match load_workflow(
        file,
        &registry,
        &LoadOptions {
            env_allow: Some(allow_env),
            allow_file_urls: Some(allow_file_urls),
            calls: Some(calls_beside(file)),
            ..LoadOptions::default()
        },
    ) {
        Ok(workflow) => {
            print_warnings(&workflow);
            crate::print_stdout(&format!(
                "{}: ok ({} steps)",
                file.display(),
                workflow.all_steps().len()
            ));
            EXIT_OK
        }
        Err(problems) => report_problems(&problems),
    }
}

/// What validation found unwise, on stderr; the workflow still runs.
fn print_warnings(workflow: &Workflow) {
    for w in workflow.warnings.iter() {
        eprintln!("warning: {w}");
    }
}

fn report_problems(problems: &Problems) -> u8 {
    eprintln!("{problems}");
    eprintln!(
        "{} problem{} found",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    EXIT_INVALID
}

fn invalid(lines: &[String]) -> u8 {
    for l in lines {
        eprintln!("{l}");
    }
    EXIT_INVALID
}

/// The workflow's credentials from `--credentials-file`. A dry run
/// without the file checks the references only (loading did); with it,
/// the file is checked too.
fn bind_local_credentials(
    workflow: &Workflow,
    args: &RunArgs,
    params: BoundParams,
) -> Result<BoundParams, u8> {
    let given = crate::inputs::credentials(args).map_err(|e| invalid(&[e]))?;
    if workflow.credentials.is_empty() {
        return Ok(params);
    }
    let given = match given {
        Some(g) => g,
        None if args.dry_run => return Ok(params),
        None => {
            let names: Vec<&str> = workflow
                .credentials
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            return Err(invalid(&[format!(
                "the workflow uses the credentials {}; pass them with --credentials-file FILE \
                 ({{NAME: {{FIELD: VALUE}}}})",
                names.join(", ")
            )]));
        }
    };
    let origin = args
        .credentials_file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    bind_credentials(&workflow.credentials, &given, &origin)
        .map(|bound| params.with_credentials(bound))
        .map_err(|problems| report_problems(&problems))
}

pub fn run(args: RunArgs) -> u8 {
    let registry = args.packs.registry();
    let load = LoadOptions {
        env_allow: Some(args.allow_env.clone()),
        allow_file_urls: Some(args.browser.allow_file_urls),
        calls: Some(calls_beside(&args.file)),
        ..LoadOptions::default()
    };
    let workflow = match load_workflow(&args.file, &registry, &load) {
        Ok(w) => w,
        Err(problems) => return report_problems(&problems),
    };
    print_warnings(&workflow);
    let inputs = match crate::inputs::gather(&args) {
        Ok(i) => i,
        Err(errors) => return invalid(&errors),
    };
    if !inputs.flags.is_empty() {
        let secret_flags: Vec<&str> = inputs
            .flags
            .iter()
            .filter(|(k, _)| workflow.param(k).is_some_and(|p| p.secret))
            .map(|(k, _)| k.as_str())
            .collect();
        if !secret_flags.is_empty() {
            eprintln!(
                "warning: secret param{} {} given with --param, where other users can see {}; prefer --secrets-file",
                if secret_flags.len() == 1 { "" } else { "s" },
                secret_flags.join(", "),
                if secret_flags.len() == 1 {
                    "it"
                } else {
                    "them"
                }
            );
        }
    }
    let params = match bind_params(&workflow, &inputs) {
        Ok(p) => p,
        Err(problems) => return report_problems(&problems),
    };
    let params = match bind_local_credentials(&workflow, &args, params) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let cancel_grace = match parse_duration(&args.cancel_grace) {
        Ok(d) => d,
        Err(e) => return invalid(&[format!("--cancel-grace: {e}")]),
    };

    let waiter = match crate::local_wait::LocalWaiter::from_flags(
        &workflow,
        &args.approve,
        &args.reject,
        &args.events,
    ) {
        Ok(w) => Arc::new(w),
        Err(problems) => return invalid(&problems),
    };
    if args.dry_run {
        return print_plan(&workflow, &params, &args, &registry);
    }

    let work_dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
    };
    let options = ExecOptions {
        session_id: format!("local-{}", jiff::Timestamp::now().as_millisecond()),
        // Saved cookies (browser.save_cookies) go beside the workflow's
        // other files, for the next `tasuki run` to load.
        state_dir: work_dir.clone(),
        work_dir,
        artifacts_dir: args.artifacts.clone(),
        env_allow: args.allow_env.clone(),
        env_pass: args.pass_env.clone(),
        cancel_grace,
        browser: args.browser.settings(),
        ..ExecOptions::default()
    };
    let Some(runtime) = runtime() else {
        return EXIT_FAILED;
    };
    // The session runs on a worker thread rather than on this one: process
    // and socket wake-ups then need no hand-over between threads, which
    // BENCHMARKS.md measured at about 50 µs per shell step.
    runtime.block_on(async move {
        tokio::spawn(execute(
            workflow,
            params,
            options,
            args.output,
            registry,
            waiter,
        ))
        .await
        .unwrap_or(EXIT_FAILED)
    })
}

/// The multi-threaded runtime the CLI runs sessions on.
pub fn runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("cannot start the async runtime: {e}"))
        .ok()
}

pub async fn execute(
    workflow: Workflow,
    params: BoundParams,
    options: ExecOptions,
    output: OutputFormat,
    registry: Registry,
    waiter: Arc<dyn Waiter>,
) -> u8 {
    let target = match output {
        OutputFormat::Text => Target::Stdout,
        OutputFormat::Json => Target::Stderr,
    };
    let display = Arc::new(Display::new(target, workflow.reported_step_ids().len()));
    let cancel = CancellationToken::new();
    // Listening before the session starts: a Ctrl-C that came before the
    // watching task first ran would otherwise kill the process outright
    // and leave its steps' processes behind.
    match StopSignals::listen() {
        Ok(signals) => {
            tokio::spawn(watch_signals(cancel.clone(), signals));
        }
        Err(e) => eprintln!("cannot listen for Ctrl-C; it will end tasuki at once: {e}"),
    }

    let executor = Executor::new(registry, options);
    let start = Start {
        waiter,
        resume: None,
    };
    let report = executor
        .run_with(&workflow, &params, display.clone(), cancel, start)
        .await;
    display.finish();

    if output == OutputFormat::Json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => crate::print_stdout(&text.to_string()),
            Err(e) => eprintln!("cannot print the report: {e}"),
        }
    }
    match report.status {
        SessionStatus::Success => EXIT_OK,
        SessionStatus::Cancelled => EXIT_CANCELLED,
        _ => EXIT_FAILED,
    }
}

/// The first Ctrl-C (or SIGTERM) cancels gracefully: the running step is
/// interrupted and its processes are ended. A second one exits at once.
async fn watch_signals(cancel: CancellationToken, mut signals: StopSignals) {
    let mut received = 0;
    loop {
        if signals.next().await.is_none() {
            return;
        }
        received += 1;
        if received == 1 {
            eprintln!("cancelling: stopping the running step (press Ctrl-C again to force)");
            cancel.cancel();
        } else {
            eprintln!("forced exit: killing the running process trees");
            tasuki_actions::builtin::kill_all_trees();
            std::process::exit(i32::from(EXIT_CANCELLED));
        }
    }
}

/// The next Ctrl-C or SIGTERM (Ctrl-Break on Windows).
pub async fn wait_for_signal() -> std::io::Result<()> {
    StopSignals::listen()?
        .next()
        .await
        .ok_or_else(|| std::io::Error::other("the signal listener closed"))
}

/// Ctrl-C and SIGTERM, listened for from the moment this is made: one
/// that comes before the first `next` is kept, not handed to the default
/// action (which ends the process at once).
#[cfg(unix)]
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    pub fn listen() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal; `None` once the listener is gone.
    pub async fn next(&mut self) -> Option<()> {
        tokio::select! {
            r = self.interrupt.recv() => r,
            r = self.terminate.recv() => r,
        }
    }
}

/// Ctrl-C, or Ctrl-Break, the console event that a supervisor can send to
/// a process group it started (GenerateConsoleCtrlEvent): as near as Windows
/// comes to SIGTERM. Closing the console is left to Windows' default, as
/// SIGHUP is on Unix: the agent ends at once, and the job objects of its
/// steps end their process trees.
#[cfg(not(unix))]
pub struct StopSignals {
    ctrl_c: tokio::signal::windows::CtrlC,
    ctrl_break: tokio::signal::windows::CtrlBreak,
}

#[cfg(not(unix))]
impl StopSignals {
    pub fn listen() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            ctrl_c: tokio::signal::windows::ctrl_c()?,
            ctrl_break: tokio::signal::windows::ctrl_break()?,
        })
    }

    /// The next signal; `None` once the listener is gone.
    pub async fn next(&mut self) -> Option<()> {
        tokio::select! {
            r = self.ctrl_c.recv() => r,
            r = self.ctrl_break.recv() => r,
        }
    }
}

fn print_plan(
    workflow: &Workflow,
    params: &BoundParams,
    args: &RunArgs,
    registry: &Registry,
) -> u8 {
    let steps = plan(workflow, params, &args.allow_env, registry);
    match args.output {
        OutputFormat::Json => {
            let doc = serde_json::json!({
                "workflow": workflow.name,
                "params": params.masked(),
                "steps": steps,
            });
            crate::print_stdout(
                &serde_json::to_string_pretty(&doc)
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        OutputFormat::Text => {
            crate::print_stdout(&format!(
                "dry run of \"{}\": {} steps, nothing will be executed",
                workflow.name,
                steps.len()
            ));
            crate::print_stdout(&format!("params: {}", params.masked()));
            for step in &steps {
                let indent = "  ".repeat(step.depth);
                crate::print_stdout(&format!(
                    "{indent}{} {} ({})",
                    step.path, step.id, step.action
                ));
                if let Some(c) = &step.condition {
                    crate::print_stdout(&format!("{indent}    if: {c}"));
                }
                if step.with.as_object().is_some_and(|m| !m.is_empty()) {
                    crate::print_stdout(&format!("{indent}    with: {}", step.with));
                }
            }
        }
    }
    EXIT_OK
}
