//! `shell.run`: runs a program from an argv list, never through a shell,
//! or a script with an explicitly named shell.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::args::{DurationArg, Text};
use super::process::{Tail, Tree, for_each_line, private_temp, step_command};
use crate::runtime::context::ActionContext;
use crate::runtime::event::LogLevel;
use crate::runtime::registry::{ActionError, TypedAction, codes};

/// How much of stdout and stderr the step's output keeps.
const TAIL_BYTES: usize = 64 * 1024;
/// How long to wait for output pipes to close once the tree is gone. A
/// process that escaped the group (setsid) could hold them open forever.
const PIPE_DRAIN: Duration = Duration::from_secs(2);

pub struct ShellRun;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShellArgs {
    /// The program and its arguments. Nothing is interpreted by a shell.
    argv: Option<Vec<Text>>,
    /// A script, run by `shell`. It is written to a private file (in the
    /// session's private directory on a robot), so its text never appears
    /// in a process list; the file is removed when the step ends.
    script: Option<String>,
    /// The shell for `script`: sh, bash, zsh, pwsh, powershell or cmd.
    shell: Option<ShellKind>,
    /// The working directory; the session's work directory by default.
    cwd: Option<String>,
    /// Extra environment variables for the process.
    env: Option<BTreeMap<String, Text>>,
    /// Ends the process tree when it runs longer than this.
    timeout: Option<DurationArg>,
    /// Exit codes that count as success; `[0]` by default.
    ok_exit_codes: Option<Vec<i32>>,
}

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ShellKind {
    Sh,
    Bash,
    Zsh,
    Pwsh,
    Powershell,
    Cmd,
}

impl ShellKind {
    fn command(self, script: &std::path::Path) -> (String, Vec<String>) {
        let path = script.display().to_string();
        match self {
            ShellKind::Sh => ("sh".into(), vec![path]),
            ShellKind::Bash => ("bash".into(), vec![path]),
            ShellKind::Zsh => ("zsh".into(), vec![path]),
            ShellKind::Pwsh | ShellKind::Powershell => (
                if matches!(self, ShellKind::Pwsh) {
                    "pwsh"
                } else {
                    "powershell"
                }
                .into(),
                // Windows PowerShell refuses to run any script file under
                // its default execution policy (Restricted): the workflow
                // author asked for this script, so it runs. A policy set by
                // Group Policy still wins; pwsh ignores the flag off Windows.
                vec![
                    "-NoProfile".into(),
                    "-NonInteractive".into(),
                    "-ExecutionPolicy".into(),
                    "Bypass".into(),
                    "-File".into(),
                    path,
                ],
            ),
            ShellKind::Cmd => ("cmd".into(), vec!["/D".into(), "/C".into(), path]),
        }
    }

    /// The script file's bytes. Windows PowerShell reads a script without
    /// a byte order mark in the system's ANSI code page, which turns every
    /// non-ASCII character (Japanese text, say) into mojibake; with the
    /// UTF-8 BOM both PowerShells read UTF-8.
    fn script_bytes(self, script: &str) -> Vec<u8> {
        const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
        let mut bytes = Vec::with_capacity(UTF8_BOM.len() + script.len());
        if matches!(self, ShellKind::Pwsh | ShellKind::Powershell) {
            bytes.extend_from_slice(UTF8_BOM);
        }
        bytes.extend_from_slice(script.as_bytes());
        bytes
    }

    fn extension(self) -> &'static str {
        match self {
            ShellKind::Pwsh | ShellKind::Powershell => ".ps1",
            ShellKind::Cmd => ".cmd",
            _ => ".sh",
        }
    }
}

impl TypedAction for ShellRun {
    type Args = ShellArgs;

    fn check_args(args: &Map<String, Value>) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        match (args.get("argv"), args.get("script")) {
            (None, None) => problems.push((
                String::new(),
                "give either `argv` (a list: program and arguments) or `script` with `shell`"
                    .into(),
            )),
            (Some(_), Some(_)) => problems.push((
                "script".into(),
                "give either `argv` or `script`, not both".into(),
            )),
            (Some(Value::Array(a)), None) if a.is_empty() => problems.push((
                "argv".into(),
                "`argv` is empty; its first item is the program to run".into(),
            )),
            (None, Some(_)) if !args.contains_key("shell") => problems.push((
                "shell".into(),
                "`script` needs an explicit `shell`, such as `shell: bash`".into(),
            )),
            _ => {}
        }
        if args.contains_key("shell") && !args.contains_key("script") {
            problems.push((
                "shell".into(),
                "`shell` only applies to `script`; `argv` never goes through a shell".into(),
            ));
        }
        problems
    }

    async fn run(&self, ctx: &ActionContext, args: ShellArgs) -> Result<Value, ActionError> {
        let invalid = |m: &str| ActionError::new(codes::INVALID_ARGS, m);
        // Kept alive until the process ends; removed on drop.
        let mut _script_file = None;
        let (program, arguments) = match (args.argv, args.script, args.shell) {
            (Some(argv), None, None) => {
                let mut it = argv.into_iter().map(|t| t.0);
                let program = it.next().ok_or_else(|| invalid("`argv` is empty"))?;
                (program, it.collect::<Vec<_>>())
            }
            (None, Some(script), Some(shell)) => {
                let file = write_script(
                    &shell.script_bytes(&script),
                    shell.extension(),
                    ctx.options().private_dir.as_deref(),
                )
                .map_err(|e| {
                    ActionError::new(
                        codes::SPAWN,
                        format!("cannot write the script to a private file: {e}"),
                    )
                })?;
                let command = shell.command(&file.0);
                _script_file = Some(file);
                command
            }
            _ => return Err(invalid("give either `argv`, or `script` with `shell`")),
        };

        let cwd = match &args.cwd {
            Some(dir) => ctx.options().work_dir.join(dir),
            None => ctx.options().work_dir.clone(),
        };
        let mut command = step_command(&program, ctx.options());
        command
            .args(&arguments)
            .current_dir(&cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        private_temp(&mut command, ctx.options()).map_err(|e| {
            ActionError::new(
                codes::SPAWN,
                format!("cannot make the step's temporary directory: {e}"),
            )
        })?;
        if let Some(env) = &args.env {
            command.envs(env.iter().map(|(k, v)| (k, &v.0)));
        }
        let mut tree =
            Tree::spawn_step(command, ctx.options()).map_err(|e| spawn_error(&program, &cwd, e))?;

        let max_line = ctx.options().max_log_line_bytes;
        let stdout_tail = Arc::new(Mutex::new(Tail::new(TAIL_BYTES)));
        let stderr_tail = Arc::new(Mutex::new(Tail::new(TAIL_BYTES)));
        let stdout = tree.child_mut().stdout().take();
        let stderr = tree.child_mut().stderr().take();
        let unpaced = CancellationToken::new();
        let readers = async {
            let out = async {
                if let Some(pipe) = stdout {
                    let _ = for_each_line(pipe, max_line, ctx, &unpaced, |line| {
                        ctx.log(LogLevel::Info, line);
                        lock(&stdout_tail).push(line);
                    })
                    .await;
                }
            };
            let err = async {
                if let Some(pipe) = stderr {
                    let _ = for_each_line(pipe, max_line, ctx, &unpaced, |line| {
                        ctx.log(LogLevel::Warn, line);
                        lock(&stderr_tail).push(line);
                    })
                    .await;
                }
            };
            tokio::join!(out, err);
        };
        tokio::pin!(readers);

        let deadline = async {
            match args.timeout {
                Some(t) => tokio::time::sleep(t.0).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);

        // Drive the output readers while waiting, so that a chatty process
        // never blocks on a full pipe.
        let mut readers_done = false;
        let ended = loop {
            tokio::select! {
                status = tree.wait() => break Ended::Exited(status),
                _ = &mut readers, if !readers_done => readers_done = true,
                _ = &mut deadline => break Ended::TimedOut,
                _ = ctx.cancel.cancelled() => break Ended::Cancelled,
            }
        };

        // From here on, output is read as fast as it comes: the process
        // has ended or is being stopped, and the time left to read is short.
        unpaced.cancel();
        let grace = ctx.options().cancel_grace;
        let status = match ended {
            Ended::Exited(status) => {
                // The leader is gone; anything it left running in the group
                // is ended now rather than orphaned.
                if tree.any_alive() {
                    let how = terminate_reading(
                        &mut tree,
                        Duration::from_secs(1),
                        &mut readers,
                        &mut readers_done,
                    )
                    .await;
                    // What the processes printed comes before the note.
                    drain(&mut readers, &mut readers_done).await;
                    ctx.log(
                        LogLevel::Warn,
                        &format!("ended processes the step left running ({how})"),
                    );
                }
                status.map_err(|e| {
                    ActionError::new(codes::SPAWN, format!("cannot wait for `{program}`: {e}"))
                })?
            }
            Ended::TimedOut | Ended::Cancelled => {
                let how =
                    terminate_reading(&mut tree, grace, &mut readers, &mut readers_done).await;
                // What the processes printed before they died comes before
                // the note, however late the pipe gives it up.
                drain(&mut readers, &mut readers_done).await;
                ctx.log(LogLevel::Warn, &format!("stopped the process tree ({how})"));
                return Err(match ended {
                    Ended::TimedOut => ActionError::new(
                        codes::TIMEOUT,
                        format!(
                            "`{program}` did not finish within its timeout of {}",
                            crate::language::duration::format_duration(
                                args.timeout.map(|t| t.0).unwrap_or_default()
                            )
                        ),
                    ),
                    _ => ActionError::new(codes::CANCELLED, format!("`{program}` was cancelled")),
                });
            }
        };
        drain(&mut readers, &mut readers_done).await;

        let stdout_text = lock(&stdout_tail).text();
        let stderr_text = lock(&stderr_tail).text();
        let exit_code = status.code();
        let output = json!({
            "exit_code": exit_code,
            "signal": signal_of(&status),
            "stdout": stdout_text,
            "stderr": stderr_text,
        });
        let ok_codes = args.ok_exit_codes.unwrap_or_else(|| vec![0]);
        match exit_code {
            Some(code) if ok_codes.contains(&code) => Ok(output),
            _ => {
                let what = match (exit_code, signal_of(&status)) {
                    (Some(code), _) => format!("exited with code {code}"),
                    (None, Some(sig)) => format!("was killed by signal {sig}"),
                    (None, None) => "ended abnormally".into(),
                };
                let hint = lock(&stderr_tail)
                    .last_line()
                    .map(|l| format!("; last stderr line: {l}"))
                    .unwrap_or_default();
                Err(ActionError::new(
                    codes::EXIT_CODE,
                    format!(
                        "`{program}` {what} (expected {}){hint}",
                        ok_codes
                            .iter()
                            .map(i32::to_string)
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                ))
            }
        }
    }
}

enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Cancelled,
}

/// Stops the process tree while still reading its output, so that a
/// process writing as it shuts down never blocks on a full pipe.
async fn terminate_reading(
    tree: &mut Tree,
    grace: Duration,
    readers: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    readers_done: &mut bool,
) -> &'static str {
    let terminate = tree.terminate(grace);
    tokio::pin!(terminate);
    loop {
        tokio::select! {
            how = &mut terminate => return how,
            _ = readers.as_mut(), if !*readers_done => *readers_done = true,
        }
    }
}

/// Reads what is left in the pipes, for at most [`PIPE_DRAIN`] (a process
/// that escaped the tree may hold them open).
async fn drain(
    readers: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    done: &mut bool,
) {
    if !*done
        && tokio::time::timeout(PIPE_DRAIN, readers.as_mut())
            .await
            .is_ok()
    {
        *done = true;
    }
}

fn lock(tail: &Mutex<Tail>) -> std::sync::MutexGuard<'_, Tail> {
    // A poisoned tail only means a log callback panicked; the text is fine.
    tail.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(unix)]
fn signal_of(status: &std::process::ExitStatus) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    status.signal()
}

#[cfg(not(unix))]
fn signal_of(_status: &std::process::ExitStatus) -> Option<i32> {
    None
}

fn spawn_error(program: &str, cwd: &std::path::Path, e: std::io::Error) -> ActionError {
    let message = match e.kind() {
        std::io::ErrorKind::NotFound if !cwd.is_dir() => format!(
            "cannot start `{program}`: the working directory {} does not exist",
            cwd.display()
        ),
        std::io::ErrorKind::NotFound => {
            format!("cannot start `{program}`: no such program (is it installed and on PATH?)")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot start `{program}`: permission denied")
        }
        _ => format!("cannot start `{program}`: {e}"),
    };
    ActionError::new(codes::SPAWN, message)
}

/// A script on disk, registered so that even a forced exit removes it: it
/// may hold secrets substituted into it. Only its path is kept: on Windows
/// our open handle, which has write access, would keep out a shell that
/// opens the file without sharing write access (a sharing violation).
struct ScriptFile(tempfile::TempPath);

impl Drop for ScriptFile {
    fn drop(&mut self) {
        super::process::forget_temp_path(&self.0);
    }
}

/// Writes the script in `private_dir`'s `scripts` (0700), or else in the
/// system's temporary directory: a robot's session has a private directory,
/// which a restarted agent removes, should it have been killed before it
/// could remove the script.
fn write_script(
    script: &[u8],
    extension: &str,
    private_dir: Option<&std::path::Path>,
) -> std::io::Result<ScriptFile> {
    use std::io::Write;
    let mut builder = tempfile::Builder::new();
    builder.prefix("tasuki-script-").suffix(extension);
    // tempfile creates the file with mode 0600 on Unix.
    let mut file = match private_dir {
        Some(dir) => {
            let scripts = dir.join("scripts");
            super::process::private_dir_all(&scripts)?;
            builder.tempfile_in(scripts)?
        }
        None => builder.tempfile()?,
    };
    file.write_all(script)?;
    file.flush()?;
    super::process::register_temp_path(file.path());
    Ok(ScriptFile(file.into_temp_path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powershell_scripts_run_whatever_the_execution_policy() {
        for (kind, program) in [
            (ShellKind::Powershell, "powershell"),
            (ShellKind::Pwsh, "pwsh"),
        ] {
            let (got, args) = kind.command(std::path::Path::new("s.ps1"));
            assert_eq!(got, program);
            assert_eq!(
                args,
                [
                    "-NoProfile",
                    "-NonInteractive",
                    "-ExecutionPolicy",
                    "Bypass",
                    "-File",
                    "s.ps1"
                ]
            );
        }
        let (program, args) = ShellKind::Cmd.command(std::path::Path::new("s.cmd"));
        assert_eq!(
            (program.as_str(), args),
            ("cmd", vec!["/D".into(), "/C".into(), "s.cmd".to_string()])
        );
    }

    #[test]
    fn only_powershell_scripts_get_a_byte_order_mark() {
        let script = "Write-Output '完了'";
        for kind in [ShellKind::Pwsh, ShellKind::Powershell] {
            let bytes = kind.script_bytes(script);
            assert_eq!(&bytes[..3], b"\xEF\xBB\xBF");
            assert_eq!(&bytes[3..], script.as_bytes());
        }
        for kind in [
            ShellKind::Sh,
            ShellKind::Bash,
            ShellKind::Zsh,
            ShellKind::Cmd,
        ] {
            assert_eq!(kind.script_bytes("echo 完了"), "echo 完了".as_bytes());
        }
    }

    #[test]
    fn a_script_file_holds_the_script_and_goes_when_dropped() {
        let file = write_script(b"echo hi\n", ".sh", None).unwrap();
        let path = file.0.to_path_buf();
        assert!(path.to_string_lossy().ends_with(".sh"));
        assert_eq!(std::fs::read(&path).unwrap(), b"echo hi\n");
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn with_a_private_dir_the_script_goes_there_in_a_private_folder() {
        let root = tempfile::tempdir().unwrap();
        let private = root.path().join("session.private");
        let file = write_script(b"echo hi\n", ".sh", Some(&private)).unwrap();
        let path = file.0.to_path_buf();
        assert_eq!(path.parent(), Some(private.join("scripts").as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&private), 0o700);
            assert_eq!(mode(&private.join("scripts")), 0o700);
            assert_eq!(mode(&path), 0o600);
        }
        drop(file);
        assert!(!path.exists());
    }
}
