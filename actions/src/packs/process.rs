//! One running pack: its process tree, the readers of its standard output
//! and error, and one request at a time over the protocol (`wire.rs`).
//!
//! The readers run as their own tasks for the life of the process, since
//! it outlives single steps; what they read waits in a bounded channel for
//! the step that uses the pack next. The step reads the channel only when
//! its sink wants more lines, so a pack that floods logs blocks on its
//! pipe rather than filling the robot's memory.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::ChildStdin;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::manifest::Manifest;
use super::wire::{self, MAX_LINE_BYTES, PROTOCOL_VERSION, PackMessage, RunContext};
use crate::builtin::process::{Tail, Tree, emit_line, private_temp, step_command};
use crate::language::argcheck;
use crate::language::problem::Problems;
use crate::runtime::context::{ActionContext, SessionShared};
use crate::runtime::event::LogLevel;
use crate::runtime::mask::Masker;
use crate::runtime::registry::{ActionError, codes};

/// How long a pack may take to say `ready`, at most (the step's own
/// timeout may be shorter).
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long a cancelled request has to be answered before the pack is
/// ended (capped at the robot's `cancel_grace`).
const CANCEL_ANSWER: Duration = Duration::from_secs(2);
/// How long a pack has to exit after `shutdown`.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(5);
/// How long a pack that closed its output has to exit before it is ended.
const EXIT_WAIT: Duration = Duration::from_secs(2);
/// Bytes of a stderr line kept past the log-line cut, so that a secret
/// straddling the cut is still masked whole.
const STDERR_MARGIN: usize = 64 * 1024;
/// Stderr lines quoted when a pack fails to start or crashes.
const STDERR_TAIL_BYTES: usize = 4 * 1024;
/// Characters of an offending line quoted in a protocol error.
const QUOTE_CHARS: usize = 200;

pub mod error_codes {
    pub const START_FAILED: &str = "pack_start_failed";
    pub const CRASHED: &str = "pack_crashed";
    pub const PROTOCOL: &str = "pack_protocol_error";
    pub const TOO_LARGE: &str = "pack_output_too_large";
    pub const BAD_OUTPUT: &str = "pack_bad_output";
}
use error_codes::*;

/// What the readers pass on.
enum Incoming {
    /// Lines of standard output read together (see `read_stdout`).
    Stdout(Vec<Line>),
    Stderr {
        bytes: Vec<u8>,
        cut: bool,
    },
    StdoutClosed,
}

enum Line {
    Message(PackMessage),
    Bad { text: String, why: String },
    TooLong,
}

/// What one batch of incoming lines meant for the open request.
enum Outcome {
    Pending,
    Answer(Result<Value, (String, String)>),
    /// The pack broke the protocol: it is ended, and the step fails so.
    Broken(ActionError),
    Closed,
}

pub(crate) struct PackProcess {
    manifest: Arc<Manifest>,
    tree: Tree,
    stdin: Option<ChildStdin>,
    incoming: mpsc::Receiver<Incoming>,
    readers: Vec<JoinHandle<()>>,
    next_id: u64,
    /// The request sent and not yet answered. Still set when a call is
    /// next made means the step that sent it was dropped mid-way: the
    /// pack's state is unknown, and the process is ended.
    pub in_flight: Option<String>,
    /// Set once the process tree has been ended.
    pub ended: bool,
    stderr_tail: Tail,
    /// The values of secret arguments the pack has been sent.
    secrets: Vec<String>,
    masker: Masker,
    /// Where lines go, also between steps and at the session's end.
    shared: Arc<SessionShared>,
    /// The step that used the pack last: lines that name no request are
    /// its.
    step_id: String,
}

impl PackProcess {
    /// Starts the pack and waits for its `ready`.
    pub async fn start(manifest: Arc<Manifest>, ctx: &ActionContext) -> Result<Self, ActionError> {
        let options = ctx.options();
        let program = &manifest.command[0];
        let start_failed = |why: String| {
            ActionError::new(
                START_FAILED,
                format!("pack `{}` did not start: {why}", manifest.name),
            )
        };
        let mut command = step_command(program, options);
        command
            .args(&manifest.command[1..])
            .current_dir(&options.work_dir)
            .envs(&manifest.env)
            .env("TASUKI_PACK_DIR", &manifest.dir)
            .env("TASUKI_PACK_PROTOCOL", PROTOCOL_VERSION.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        private_temp(&mut command, options)
            .map_err(|e| start_failed(format!("cannot make its temporary directory: {e}")))?;
        // The protocol lets a pack write artifacts there from its first request.
        std::fs::create_dir_all(&options.artifacts_dir)
            .map_err(|e| start_failed(format!("cannot make the artifacts folder: {e}")))?;
        let mut tree = Tree::spawn_step(command, options).map_err(|e| {
            start_failed(format!(
                "cannot run `{program}` (from `command` in {}): {e}",
                manifest.file.display()
            ))
        })?;
        let stdin = tree.child_mut().stdin().take();
        let stdout = tree.child_mut().stdout().take();
        let stderr = tree.child_mut().stderr().take();
        let (tx, incoming) = mpsc::channel(64);
        let mut readers = Vec::new();
        // What a log line keeps past the cut, so that a secret across it
        // is still masked whole; the rest of a long line is dropped as it
        // is read, so queued lines stay small.
        let keep = options.max_log_line_bytes + STDERR_MARGIN;
        if let Some(out) = stdout {
            readers.push(tokio::spawn(read_stdout(out, keep, tx.clone())));
        }
        if let Some(err) = stderr {
            readers.push(tokio::spawn(read_stderr(err, keep, tx)));
        }
        let mut process = PackProcess {
            manifest,
            tree,
            stdin,
            incoming,
            readers,
            next_id: 1,
            in_flight: None,
            ended: false,
            stderr_tail: Tail::new(STDERR_TAIL_BYTES),
            secrets: Vec::new(),
            masker: Masker::default(),
            shared: ctx.shared.clone(),
            step_id: ctx.step_id.clone(),
        };
        match process.handshake(ctx).await {
            Ok(()) => Ok(process),
            Err(e) => {
                process.end().await;
                Err(e)
            }
        }
    }

    async fn handshake(&mut self, ctx: &ActionContext) -> Result<(), ActionError> {
        let name = self.manifest.name.clone();
        let failed = |why: String| {
            ActionError::new(START_FAILED, format!("pack `{name}` did not start: {why}"))
        };
        let limit = tokio::time::sleep(START_LIMIT);
        tokio::pin!(limit);
        loop {
            let incoming = tokio::select! {
                incoming = self.next_paced(ctx) => incoming,
                () = ctx.cancel.cancelled() => {
                    return Err(ActionError::new(codes::CANCELLED, format!("pack `{name}` was cancelled while starting")));
                }
                () = &mut limit => {
                    return Err(failed(format!("it did not write `ready` within {} s{}", START_LIMIT.as_secs(), self.stderr_hint())));
                }
            };
            match incoming {
                Some(Incoming::Stderr { bytes, cut }) => self.log_stderr(&bytes, cut),
                Some(Incoming::Stdout(lines)) => {
                    let mut lines = lines.into_iter();
                    match lines.next() {
                        Some(Line::Message(PackMessage::Ready { protocol }))
                            if protocol == PROTOCOL_VERSION => {}
                        Some(Line::Message(PackMessage::Ready { protocol })) => {
                            return Err(failed(format!(
                                "it speaks protocol {protocol}; this Tasuki speaks {PROTOCOL_VERSION} (docs/action-packs.md)"
                            )));
                        }
                        Some(other) => {
                            return Err(failed(format!(
                                "its first line must be {{\"type\":\"ready\",\"protocol\":{PROTOCOL_VERSION}}}, not {}",
                                self.describe(&other)
                            )));
                        }
                        None => continue,
                    }
                    // Anything written with `ready` belongs to no request yet.
                    for line in lines {
                        if let Some(error) = self.stray(line) {
                            return Err(error);
                        }
                    }
                    return Ok(());
                }
                Some(Incoming::StdoutClosed) | None => {
                    let how = self.exit_status().await;
                    self.log_leftovers().await;
                    return Err(failed(format!(
                        "it {how} before writing `ready`{}",
                        self.stderr_hint()
                    )));
                }
            }
        }
    }

    /// Runs one request and returns the action's output or error. Ends the
    /// process (setting `ended`) when it crashed or broke the protocol.
    pub async fn call(
        &mut self,
        ctx: &ActionContext,
        action: &str,
        args: &Value,
    ) -> Result<Value, ActionError> {
        self.learn_secrets(action, args);
        self.step_id = ctx.step_id.clone();
        let id = self.next_id.to_string();
        self.next_id += 1;
        let options = ctx.options();
        // Absolute, as the protocol says: the pack's own working directory
        // need not be the robot's.
        let (work_dir, artifacts_dir) = (
            absolute(&options.work_dir),
            absolute(&options.artifacts_dir),
        );
        let context = RunContext {
            session_id: &options.session_id,
            step_id: &ctx.step_id,
            attempt: ctx.attempt,
            work_dir: &work_dir,
            artifacts_dir: &artifacts_dir,
        };
        let request = wire::run(&id, action, args, &context);
        self.in_flight = Some(id.clone());
        let Some(mut stdin) = self.stdin.take() else {
            return Err(self.crashed(action).await);
        };
        // The request is written while what the pack writes is read: a
        // pack blocked on its own full pipe must not leave both sides
        // waiting on each other.
        let mut write = std::pin::pin!(async move {
            stdin.write_all(request.as_bytes()).await?;
            stdin.flush().await?;
            Ok::<_, std::io::Error>(stdin)
        });
        let mut writing = true;
        loop {
            let incoming = tokio::select! {
                written = write.as_mut(), if writing => {
                    writing = false;
                    match written {
                        Ok(stdin) => self.stdin = Some(stdin),
                        Err(_) => return Err(self.crashed(action).await),
                    }
                    continue;
                }
                incoming = self.next_paced(ctx) => incoming,
                () = ctx.cancel.cancelled() => return Err(self.cancel(ctx, &id).await),
            };
            match self.handle(ctx, incoming, &id) {
                Outcome::Pending => {}
                Outcome::Answer(_) if writing => {
                    self.end().await;
                    return Err(self.protocol_error(&format!(
                        "it answered request `{id}` before reading all of it"
                    )));
                }
                Outcome::Answer(answer) => {
                    self.in_flight = None;
                    return self.finish(action, answer);
                }
                Outcome::Broken(error) => {
                    self.end().await;
                    return Err(error);
                }
                Outcome::Closed => return Err(self.crashed(action).await),
            }
        }
    }

    /// Ends the session's use of the pack: `shutdown` and a wait for it
    /// to exit when `graceful`, then the whole tree ended either way.
    /// Returns whether it exited by itself with code 0.
    pub async fn shutdown(mut self, graceful: bool) -> bool {
        let mut clean = false;
        if graceful && !self.ended {
            let polite = async {
                let _ = self.write(&wire::shutdown()).await;
                self.stdin = None;
                self.tree.wait().await
            };
            clean = matches!(
                tokio::time::timeout(SHUTDOWN_LIMIT, polite).await,
                Ok(Ok(status)) if status.success()
            );
        }
        self.end().await;
        clean
    }

    /// Ends the process tree (interrupt, terminate, kill), then logs what
    /// it wrote that no step read: its last stderr lines often say why it
    /// failed.
    pub async fn end(&mut self) {
        self.stdin = None;
        if !self.ended {
            self.tree
                .terminate(self.shared.options.cancel_grace / 2)
                .await;
            self.ended = true;
        }
        self.log_leftovers().await;
    }

    async fn write(&mut self, line: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await
    }

    /// The next thing the readers passed on, once the sink wants more lines.
    async fn next_paced(&mut self, ctx: &ActionContext) -> Option<Incoming> {
        ctx.log_room().await;
        self.incoming.recv().await
    }

    /// Asks the pack to stop the request. A pack that answers in time
    /// keeps running; one that does not is ended.
    async fn cancel(&mut self, ctx: &ActionContext, id: &str) -> ActionError {
        let name = self.manifest.name.clone();
        let cancelled = ActionError::new(
            codes::CANCELLED,
            format!("the request to pack `{name}` was cancelled"),
        );
        let window = CANCEL_ANSWER.min(self.shared.options.cancel_grace);
        let answered = tokio::time::timeout(window, async {
            if self.write(&wire::cancel(id)).await.is_err() {
                return false;
            }
            loop {
                // Unpaced: the time to answer is short, and lines must not
                // keep the answer waiting.
                let incoming = self.incoming.recv().await;
                match self.handle(ctx, incoming, id) {
                    Outcome::Pending => {}
                    Outcome::Answer(_) => return true,
                    Outcome::Broken(_) | Outcome::Closed => return false,
                }
            }
        })
        .await;
        if answered == Ok(true) {
            self.in_flight = None;
        } else {
            self.end().await;
            ctx.log(
                LogLevel::Warn,
                &format!(
                    "ended pack `{name}`: it did not answer the cancel within {} ms; the next step that uses it starts it again",
                    window.as_millis()
                ),
            );
        }
        cancelled
    }

    /// The pack closed its output (or its input) mid-request.
    async fn crashed(&mut self, action: &str) -> ActionError {
        let how = self.exit_status().await;
        // What it printed as it died is the best clue (`end` logs it); the
        // pipe closes with the process, so the wait is short.
        self.end().await;
        ActionError::new(
            CRASHED,
            format!(
                "pack `{}` {how} while running `{}.{action}`{}",
                self.manifest.name,
                self.manifest.name,
                self.stderr_hint()
            ),
        )
    }

    /// How the process ended, for a message: it is given a moment to exit.
    async fn exit_status(&mut self) -> String {
        match tokio::time::timeout(EXIT_WAIT, self.tree.wait()).await {
            Ok(Ok(status)) => match (status.code(), signal_of(&status)) {
                (Some(code), _) => format!("exited with code {code}"),
                (None, Some(signal)) => format!("was killed by signal {signal}"),
                _ => "exited".into(),
            },
            Ok(Err(e)) => format!("could not be waited for ({e})"),
            Err(_) => "closed its standard output".into(),
        }
    }

    fn stderr_hint(&self) -> String {
        let tail = self.masker.mask(&self.stderr_tail.text());
        if tail.trim().is_empty() {
            "; it wrote nothing to stderr".into()
        } else {
            format!("; the end of its stderr:\n{tail}")
        }
    }

    /// What a batch of incoming lines means for request `id`.
    fn handle(&mut self, ctx: &ActionContext, incoming: Option<Incoming>, id: &str) -> Outcome {
        let lines = match incoming {
            None | Some(Incoming::StdoutClosed) => return Outcome::Closed,
            Some(Incoming::Stderr { bytes, cut }) => {
                self.log_stderr(&bytes, cut);
                return Outcome::Pending;
            }
            Some(Incoming::Stdout(lines)) => lines,
        };
        let mut answer = None;
        for line in lines {
            let (answer_id, this) = match line {
                Line::Message(PackMessage::Result { id: rid, output }) => (rid, Ok(output)),
                Line::Message(PackMessage::Error {
                    id: rid,
                    code,
                    message,
                }) => {
                    if let Err(e) = wire::check_error_code(&code) {
                        return Outcome::Broken(self.protocol_error(&format!(
                            "its error for request {} has the code {}: {e}",
                            self.quote(&rid),
                            self.quote(&code)
                        )));
                    }
                    (rid, Err((code, message)))
                }
                Line::Message(
                    PackMessage::Log { id: Some(lid), .. }
                    | PackMessage::Artifact { id: Some(lid), .. },
                ) if lid != id || answer.is_some() => {
                    return Outcome::Broken(self.not_open(&lid, id));
                }
                Line::Message(PackMessage::Artifact { path, .. }) => {
                    if let Err(e) = self.artifact(ctx, &path) {
                        return Outcome::Broken(e);
                    }
                    continue;
                }
                other => {
                    if let Some(error) = self.stray(other) {
                        return Outcome::Broken(error);
                    }
                    continue;
                }
            };
            if answer_id != id {
                return Outcome::Broken(self.not_open(&answer_id, id));
            }
            if answer.is_some() {
                return Outcome::Broken(self.protocol_error(&format!(
                    "it answered request `{id}` twice; each `run` gets exactly one `result` or `error`"
                )));
            }
            answer = Some(this);
        }
        match answer {
            Some(answer) => Outcome::Answer(answer),
            None => Outcome::Pending,
        }
    }

    /// A line that belongs to no request: a log line is logged; anything
    /// else is a protocol error.
    fn stray(&mut self, line: Line) -> Option<ActionError> {
        match line {
            Line::Message(PackMessage::Log { level, message, .. }) => {
                self.log(level, message.as_bytes(), false);
                None
            }
            Line::Message(PackMessage::Ready { .. }) => {
                Some(self.protocol_error("it wrote `ready` a second time"))
            }
            Line::Message(PackMessage::Result { id, .. } | PackMessage::Error { id, .. })
            | Line::Message(PackMessage::Artifact { id: Some(id), .. }) => {
                Some(self.protocol_error(&format!(
                    "it wrote about request {}, which is not open (no request is)",
                    self.quote(&id)
                )))
            }
            Line::Message(PackMessage::Artifact { id: None, .. }) => {
                Some(self.protocol_error("it reported an artifact while no request was open"))
            }
            Line::Bad { text, why } => Some(self.protocol_error(&format!(
                "it wrote a line that is not a protocol message ({why}): {}",
                self.quote(&text)
            ))),
            Line::TooLong => Some(ActionError::new(
                TOO_LARGE,
                format!(
                    "pack `{}` wrote a line of over {} MiB to its standard output; the limit keeps a runaway pack from exhausting the robot's memory (write big results to a file and report it as an artifact)",
                    self.manifest.name,
                    MAX_LINE_BYTES / (1024 * 1024)
                ),
            )),
        }
    }

    fn not_open(&self, named: &str, open: &str) -> ActionError {
        let what = if named == open {
            format!("it wrote about request `{open}` after answering it")
        } else {
            format!(
                "it wrote about request {}, which is not open (the open request is `{open}`)",
                self.quote(named)
            )
        };
        self.protocol_error(&what)
    }

    fn protocol_error(&self, what: &str) -> ActionError {
        ActionError::new(
            PROTOCOL,
            format!(
                "pack `{}` broke the protocol: {what} (docs/action-packs.md); the pack was ended",
                self.manifest.name
            ),
        )
    }

    fn describe(&self, line: &Line) -> String {
        match line {
            Line::Message(m) => self.quote(&format!("{m:?}")),
            Line::Bad { text, .. } => self.quote(text),
            Line::TooLong => format!("a line over {} MiB", MAX_LINE_BYTES / (1024 * 1024)),
        }
    }

    /// Text from the pack, for a message: every secret masked before it
    /// is cut to [`QUOTE_CHARS`], so no prefix of one survives the cut.
    fn quote(&self, text: &str) -> String {
        let masked = self.shared.masker.mask(&self.masker.mask(text));
        let mut quoted: String = masked.chars().take(QUOTE_CHARS).collect();
        if quoted.len() < masked.len() {
            quoted.push('…');
        }
        format!("`{quoted}`")
    }

    fn log_stderr(&mut self, bytes: &[u8], cut: bool) {
        let text = self.log(LogLevel::Warn, bytes, cut);
        self.stderr_tail.push(&text);
    }

    /// Logs a line from the pack as the current step's, its secrets masked
    /// before a long line is cut; returns the line as logged.
    fn log(&self, level: LogLevel, bytes: &[u8], cut: bool) -> String {
        let masked = self.masker.mask(&String::from_utf8_lossy(bytes));
        let max = self.shared.options.max_log_line_bytes;
        let mut logged = String::new();
        emit_line(
            masked.as_bytes(),
            max,
            cut,
            &self.shared.masker,
            &mut |text| {
                self.shared.log(level, Some(&self.step_id), text);
                logged = text.to_string();
            },
        );
        logged
    }

    /// Logs what the pack wrote that no step read: at the session's end,
    /// the last lines of a pack that was not asked anything since.
    async fn log_leftovers(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(incoming) = self.incoming.recv().await {
                match incoming {
                    Incoming::Stderr { bytes, cut } => self.log_stderr(&bytes, cut),
                    Incoming::Stdout(lines) => {
                        for line in lines {
                            if let Line::Message(PackMessage::Log { level, message, .. }) = line {
                                self.log(level, message.as_bytes(), false);
                            }
                        }
                    }
                    Incoming::StdoutClosed => {}
                }
            }
        })
        .await;
    }

    /// The step's answer: an output checked against the action's schema,
    /// or the pack's error; secrets masked either way.
    fn finish(
        &self,
        action: &str,
        answer: Result<Value, (String, String)>,
    ) -> Result<Value, ActionError> {
        match answer {
            Ok(mut output) => {
                if let Some(schema) = self
                    .manifest
                    .actions
                    .get(action)
                    .and_then(|a| a.output.as_ref())
                {
                    let mut problems = Problems::default();
                    argcheck::check(&output, schema, "output", &mut problems);
                    if !problems.is_empty() {
                        let found: Vec<String> = problems
                            .iter()
                            .take(5)
                            .map(|p| format!("{}: {}", p.path, p.message))
                            .collect();
                        return Err(ActionError::new(
                            BAD_OUTPUT,
                            self.masker.mask(&format!(
                                "the output of `{}.{action}` does not match the `output` schema in {}: {}",
                                self.manifest.name,
                                self.manifest.file.display(),
                                found.join("; ")
                            )),
                        ));
                    }
                }
                self.masker.mask_value(&mut output);
                Ok(output)
            }
            Err((code, message)) => Err(ActionError::new(code, self.masker.mask(&message))),
        }
    }

    /// A file the pack reports: a regular file directly in the session's
    /// artifacts folder, which is what the robot ships. Nothing is copied
    /// and no symbolic link is followed: the robot's own rights must never
    /// read or write a file on behalf of a confined pack.
    fn artifact(&self, ctx: &ActionContext, path: &str) -> Result<(), ActionError> {
        let artifacts = absolute(&ctx.options().artifacts_dir);
        let refuse = |why: &str| {
            self.protocol_error(&format!(
                "its artifact {} {why}; write the file directly into `context.artifacts_dir` and report its name",
                self.quote(path)
            ))
        };
        let given = std::path::Path::new(path);
        let name = if given.is_absolute() {
            match (given.parent(), given.file_name()) {
                (Some(parent), Some(name)) if parent == artifacts => name,
                _ => return Err(refuse("is not directly in the artifacts folder")),
            }
        } else {
            let mut parts = given.components();
            match (parts.next(), parts.next()) {
                (Some(std::path::Component::Normal(name)), None) => name,
                _ => return Err(refuse("is not a plain file name in the artifacts folder")),
            }
        };
        match std::fs::symlink_metadata(artifacts.join(name)) {
            Ok(meta) if meta.file_type().is_file() => {}
            Ok(_) => return Err(refuse("is not a regular file (a link or a folder)")),
            Err(e) => return Err(refuse(&format!("cannot be read ({e})"))),
        }
        ctx.log(
            LogLevel::Info,
            &format!("artifact: {}", self.quote(&name.to_string_lossy())),
        );
        Ok(())
    }

    /// Adds the values of the action's secret arguments to what is masked
    /// in everything this process sends back, from now on.
    fn learn_secrets(&mut self, action: &str, args: &Value) {
        let Some(spec) = self.manifest.actions.get(action) else {
            return;
        };
        let mut learned = false;
        for name in &spec.secrets {
            let value = match args.get(name) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => continue,
                Some(other) => other.to_string(),
            };
            if !value.is_empty() && !self.secrets.contains(&value) {
                self.secrets.push(value);
                learned = true;
            }
        }
        if learned {
            self.masker = Masker::new(&self.secrets);
        }
    }
}

impl Drop for PackProcess {
    fn drop(&mut self) {
        for reader in &self.readers {
            reader.abort();
        }
        // The tree's own drop kills what is left of the process.
    }
}

/// `path` made absolute against the robot's working directory (lexically:
/// it need not exist yet).
fn absolute(path: &std::path::Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(unix)]
fn signal_of(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn signal_of(_status: &std::process::ExitStatus) -> Option<i32> {
    None
}

/// Reads protocol lines. Lines that arrived together are passed on
/// together, so that a second answer written with the first is seen with
/// it (docs/action-packs.md).
async fn read_stdout<R: AsyncRead + Unpin>(pipe: R, keep: usize, tx: mpsc::Sender<Incoming>) {
    let mut lines = CappedLines::new(pipe, MAX_LINE_BYTES);
    let mut batch = Vec::new();
    loop {
        match lines.next().await {
            Some((bytes, cut)) => {
                if cut {
                    batch.push(Line::TooLong);
                } else if let Some(line) = parse_line(&bytes, keep) {
                    batch.push(line);
                }
                if lines.has_whole_line() {
                    continue;
                }
                if !batch.is_empty()
                    && tx
                        .send(Incoming::Stdout(std::mem::take(&mut batch)))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            None => {
                if !batch.is_empty() {
                    let _ = tx.send(Incoming::Stdout(batch)).await;
                }
                let _ = tx.send(Incoming::StdoutClosed).await;
                return;
            }
        }
    }
}

/// A protocol line, with a log message cut to `keep` bytes and a bad line
/// to what a message quotes.
fn parse_line(bytes: &[u8], keep: usize) -> Option<Line> {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(match PackMessage::parse(bytes) {
        Ok(PackMessage::Log {
            id,
            level,
            mut message,
        }) => {
            if message.len() > keep {
                let mut end = keep;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            Line::Message(PackMessage::Log { id, level, message })
        }
        Ok(message) => Line::Message(message),
        Err(why) => {
            let start = &bytes[..bytes.len().min(4 * QUOTE_CHARS)];
            Line::Bad {
                text: String::from_utf8_lossy(start).into_owned(),
                why,
            }
        }
    })
}

async fn read_stderr<R: AsyncRead + Unpin>(pipe: R, keep: usize, tx: mpsc::Sender<Incoming>) {
    let mut lines = CappedLines::new(pipe, keep);
    while let Some((bytes, cut)) = lines.next().await {
        if tx.send(Incoming::Stderr { bytes, cut }).await.is_err() {
            return;
        }
    }
}

/// Lines of at most `cap` bytes. A longer line comes back cut as soon as
/// the cap is reached (a writer that never ends its line must not hang the
/// step), and the rest of it is skipped.
struct CappedLines<R> {
    reader: BufReader<R>,
    cap: usize,
    /// Inside a line that came back cut.
    skipping: bool,
}

impl<R: AsyncRead + Unpin> CappedLines<R> {
    fn new(pipe: R, cap: usize) -> Self {
        CappedLines {
            reader: BufReader::with_capacity(64 * 1024, pipe),
            cap,
            skipping: false,
        }
    }

    /// Whether a whole line is already buffered.
    fn has_whole_line(&self) -> bool {
        self.reader.buffer().contains(&b'\n')
    }

    /// The next line without its `\n`, and whether it was cut; `None` at
    /// the end (or a read error).
    async fn next(&mut self) -> Option<(Vec<u8>, bool)> {
        let mut line = Vec::new();
        loop {
            let available = self.reader.fill_buf().await.ok()?;
            if available.is_empty() {
                return (!line.is_empty()).then_some((line, false));
            }
            let (chunk, newline) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (&available[..i], true),
                None => (available, false),
            };
            let consumed = chunk.len() + usize::from(newline);
            if self.skipping {
                self.skipping = !newline;
                self.reader.consume(consumed);
                continue;
            }
            let room = self.cap.saturating_sub(line.len());
            if chunk.len() > room {
                line.extend_from_slice(&chunk[..room]);
                self.reader.consume(consumed);
                self.skipping = !newline;
                return Some((line, true));
            }
            line.extend_from_slice(chunk);
            self.reader.consume(consumed);
            if newline {
                return Some((line, false));
            }
        }
    }
}
