//! Supervising a child process tree: spawning it in its own process group
//! (a Job Object on Windows), streaming its output line by line, and ending
//! the whole tree, interrupt, then terminate, then kill, so that no
//! grandchild outlives its step. A step's tree is started by
//! [`step_command`] and [`Tree::spawn_step`]: a clean environment
//! (`step_env.rs`), the protected files out of reach (`confine.rs`), and a
//! record for a restarted agent (`tree_records.rs`); `shell.run` also gets
//! a temporary directory of the session's own ([`private_temp`]).

use std::collections::VecDeque;
use std::process::ExitStatus;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use process_wrap::tokio::{ChildWrapper, CommandWrap};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

#[cfg(windows)]
use super::job_object::Job;
use super::tree_records::Record;
use crate::runtime::context::ExecOptions;

/// The variables that name the temporary directory.
#[cfg(unix)]
const TEMP_VARS: &[&str] = &["TMPDIR"];
#[cfg(windows)]
const TEMP_VARS: &[&str] = &["TEMP", "TMP"];

/// Process groups that are alive right now, so that a forced exit can still
/// end them (a forced exit skips destructors).
#[cfg(unix)]
static LIVE_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

#[cfg(unix)]
fn live_groups() -> std::sync::MutexGuard<'static, Vec<i32>> {
    LIVE_GROUPS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The jobs of the trees that are alive right now. A forced exit closes
/// their handles, which kills their processes anyway (kill on close), but
/// `kill_all_trees` ends them first so that the files they hold open can be
/// removed.
#[cfg(windows)]
static LIVE_JOBS: std::sync::Mutex<Vec<std::sync::Arc<Job>>> = std::sync::Mutex::new(Vec::new());

#[cfg(windows)]
fn live_jobs() -> std::sync::MutexGuard<'static, Vec<std::sync::Arc<Job>>> {
    LIVE_JOBS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kills every process tree the actions have started and not yet ended,
/// and removes the temporary files and directories still registered (a
/// script with secrets in it, a browser profile with cookies). For a forced
/// exit, which skips destructors and has no time to be polite.
pub fn kill_all_trees() {
    #[cfg(unix)]
    for pgid in live_groups().iter() {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(*pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    #[cfg(windows)]
    {
        let jobs = live_jobs().clone();
        for job in &jobs {
            let _ = job.terminate();
        }
        // Termination is asynchronous, and a process that is still exiting
        // keeps its files open: removing the script or profile below would
        // fail.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while jobs
            .iter()
            .any(|job| job.active_processes().is_ok_and(|n| n > 0))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let paths = std::mem::take(&mut *temp_paths());
    for path in paths {
        kill_processes_mentioning(&path);
        if path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Temporary paths that must not outlive the process, even a forced exit.
static TEMP_PATHS: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

fn temp_paths() -> std::sync::MutexGuard<'static, Vec<std::path::PathBuf>> {
    TEMP_PATHS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a temporary path for `kill_all_trees`; its owner still removes
/// it normally, then calls `forget_temp_path`.
pub fn register_temp_path(path: &std::path::Path) {
    temp_paths().push(path.to_path_buf());
}

pub fn forget_temp_path(path: &std::path::Path) {
    temp_paths().retain(|p| p != path);
}
/// A command for a process a step starts: `program`, with the clean
/// environment of `step_env.rs` and the variables `options.env_pass` lets
/// through. The caller adds its own variables, then spawns it with
/// [`Tree::spawn_step`].
pub fn step_command(program: impl AsRef<std::ffi::OsStr>, options: &ExecOptions) -> Command {
    let mut command = Command::new(program);
    super::step_env::apply(&mut command, &options.env_pass);
    command
}

/// Points `command`'s temporary directory into the session's private
/// directory, when it has one: what a step leaves there goes with the
/// session, and is never in a directory other users share. Not for the
/// browser: Chromium's sockets there would pass the 108 bytes a socket's
/// path may have.
pub fn private_temp(command: &mut Command, options: &ExecOptions) -> std::io::Result<()> {
    if let Some(private) = &options.private_dir {
        let tmp = private.join("tmp");
        private_dir_all(&tmp)?;
        for var in TEMP_VARS {
            command.env(var, &tmp);
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents, private to this account (0700).
pub fn private_dir_all(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `contents` to `path`, made readable by its owner only (0600 on
/// Unix; elsewhere the folder's ACL).
pub fn write_private_file(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

/// A spawned process tree. Dropping it kills the tree, so a panic or a
/// dropped future cannot leave processes behind.
pub struct Tree {
    child: Box<dyn ChildWrapper>,
    #[cfg(unix)]
    pgid: nix::unistd::Pid,
    #[cfg(windows)]
    job: std::sync::Arc<Job>,
    finished: bool,
    /// Removed once the tree is gone; see `tree_records.rs`.
    record: Option<Record>,
}

impl Tree {
    /// Starts a step's process tree (see [`step_command`]): marked and
    /// recorded for a restarted agent, and confined away from
    /// `options.protected_paths`. Fails rather than start a process that
    /// the protection should cover but cannot.
    pub fn spawn_step(mut command: Command, options: &ExecOptions) -> std::io::Result<Tree> {
        let marker = super::tree_records::new_marker();
        command.env(super::tree_records::MARKER_VAR, &marker);
        #[cfg_attr(not(unix), allow(unused_mut))]
        let mut record = match &options.private_dir {
            Some(private) => Some(Record::create(private, &marker)?),
            None => None,
        };
        let sandbox = super::confine::Sandbox::build(&options.protected_paths)
            .map_err(std::io::Error::other)?;
        if let Some(sandbox) = &sandbox {
            sandbox.install(&mut command);
        }
        let mut tree = Tree::spawn(command)?;
        #[cfg(unix)]
        if let Some(record) = &mut record {
            record.set_group(tree.pgid.as_raw());
        }
        tree.record = record;
        Ok(tree)
    }

    /// Starts `command` as the leader of a new process group.
    #[cfg(unix)]
    pub fn spawn(command: Command) -> std::io::Result<Tree> {
        let mut wrapped = CommandWrap::from(command);
        wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
        let child = wrapped.spawn()?;
        // Without a pid there is no group to supervise, and pgid 0 would
        // mean our own group: refuse rather than guess.
        let pgid = match child.id().and_then(|id| i32::try_from(id).ok()) {
            Some(id) if id > 0 => nix::unistd::Pid::from_raw(id),
            _ => {
                return Err(std::io::Error::other(
                    "the child exited before its process group could be recorded",
                ));
            }
        };
        live_groups().push(pgid.as_raw());
        Ok(Tree {
            child,
            pgid,
            finished: false,
            record: None,
        })
    }

    /// Starts `command` as the first process of a new job. This sets the
    /// command's creation flags (see `windows_creation_flags`).
    #[cfg(windows)]
    pub fn spawn(mut command: Command) -> std::io::Result<Tree> {
        command.creation_flags(windows_creation_flags());
        let mut child = CommandWrap::from(command).spawn()?;
        let job = match join_new_job(child.as_ref()) {
            Ok(job) => std::sync::Arc::new(job),
            Err(e) => {
                // Still suspended and in no job: end it, and say why.
                let _ = child.start_kill();
                return Err(e);
            }
        };
        live_jobs().push(job.clone());
        Ok(Tree {
            child,
            job,
            finished: false,
            record: None,
        })
    }

    /// Moves the tree's record (see `tree_records.rs`) into another
    /// private directory, that of the tree's new owner.
    pub fn move_record(&mut self, private_dir: &std::path::Path) -> std::io::Result<()> {
        match &mut self.record {
            Some(record) => record.move_into(private_dir),
            None => Ok(()),
        }
    }

    /// Records a temporary directory of the tree's (a browser profile), for
    /// a restarted agent to remove once it has ended the tree (see
    /// `tree_records.rs`).
    pub fn record_temp_dir(&mut self, dir: &std::path::Path) {
        if let Some(record) = &mut self.record {
            record.add_temp_dir(dir);
        }
    }

    /// The id of the tree's first process, which leads its process group
    /// on Unix; `None` once it has been reaped.
    pub fn leader(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Box<dyn ChildWrapper> {
        &mut self.child
    }

    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Whether any process of the tree is still alive.
    #[cfg(unix)]
    pub fn any_alive(&mut self) -> bool {
        // Reap our own child first: a zombie leader still counts as a member.
        let _ = self.child.try_wait();
        let alive = match nix::sys::signal::killpg(self.pgid, None) {
            Ok(()) => group_has_live_member(self.pgid.as_raw()),
            Err(nix::errno::Errno::EPERM) => true,
            Err(_) => false,
        };
        // Once the group is empty its id may be reused by an unrelated
        // group, so it must never be signalled again (not even on drop).
        if !alive {
            self.finished = true;
            self.record = None;
            live_groups().retain(|g| *g != self.pgid.as_raw());
        }
        alive
    }

    #[cfg(unix)]
    fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::killpg(self.pgid, signal);
    }

    /// Ends every process of the tree: SIGINT, then SIGTERM after half the
    /// grace period, then SIGKILL after the other half. Returns which signal
    /// finished the job, for the log.
    #[cfg(unix)]
    pub async fn terminate(&mut self, grace: Duration) -> &'static str {
        use nix::sys::signal::Signal;
        if !self.any_alive() {
            return "none";
        }
        let half = grace / 2;
        for (signal, name, wait) in [
            (Signal::SIGINT, "SIGINT", half),
            (Signal::SIGTERM, "SIGTERM", half),
            (Signal::SIGKILL, "SIGKILL", Duration::from_secs(5)),
        ] {
            self.signal(signal);
            // Waiting out the grace for processes that ignore the signal
            // only delays the next one: a non-interactive shell starts its
            // background jobs with SIGINT ignored, for instance.
            let ignored = (signal == Signal::SIGINT).then_some(SIGINT_BIT);
            if self.wait_gone(wait, ignored).await {
                self.finished = true;
                return name;
            }
        }
        "SIGKILL (some processes did not exit)"
    }

    /// Waits until the group is empty, or `limit` passes, or every member
    /// left ignores the signal whose bit is `ignored` (then false at once).
    /// Polls as `poll_pause` says.
    #[cfg(unix)]
    async fn wait_gone(&mut self, limit: Duration, ignored: Option<u64>) -> bool {
        let start = tokio::time::Instant::now();
        let deadline = start + limit;
        loop {
            if !self.any_alive() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            if let Some(bit) = ignored
                && all_members_ignore(self.pgid.as_raw(), bit)
            {
                return false;
            }
            tokio::time::sleep(poll_pause(start.elapsed())).await;
        }
    }

    /// Ends every process of the tree and returns how, for the log.
    ///
    /// Windows has no signal that a supervisor can send to a tree to ask it
    /// to stop: console control events reach only the processes that share
    /// the sender's console (a tree has a console of its own, see
    /// `windows_creation_flags`), and WM_CLOSE only reaches windows. So the
    /// grace period does not apply: the job is ended at once, like SIGKILL.
    #[cfg(windows)]
    pub async fn terminate(&mut self, _grace: Duration) -> &'static str {
        if !self.any_alive() {
            return "none";
        }
        let _ = self.job.terminate();
        let start = tokio::time::Instant::now();
        while self.any_alive() {
            if start.elapsed() >= Duration::from_secs(5) {
                return "TerminateJobObject (some processes did not exit)";
            }
            tokio::time::sleep(poll_pause(start.elapsed())).await;
        }
        // The root is gone: collect its exit status so that nothing waits on it.
        let _ = self.child.try_wait();
        "TerminateJobObject"
    }

    /// Whether any process of the tree is still alive, not counting the
    /// console host that Windows started for the tree's console: it ends by
    /// itself once its last client has, a few milliseconds after the root.
    /// When the job cannot be asked, it is taken as alive, so that it is
    /// ended rather than left.
    #[cfg(windows)]
    pub fn any_alive(&mut self) -> bool {
        let alive = match self.job.active_processes() {
            Ok(0) => false,
            Ok(_) => self
                .job
                .process_names()
                .map_or(true, |names| names.iter().any(|n| !is_console_host(n))),
            Err(_) => true,
        };
        if !alive {
            self.finished = true;
            self.record = None;
        }
        alive
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        if !self.finished {
            #[cfg(unix)]
            self.signal(nix::sys::signal::Signal::SIGKILL);
            #[cfg(windows)]
            let _ = self.job.terminate();
        }
        #[cfg(unix)]
        live_groups().retain(|g| *g != self.pgid.as_raw());
        // The job's handle closes with its last `Arc`, which kills whatever
        // is left in it.
        #[cfg(windows)]
        live_jobs().retain(|job| !std::sync::Arc::ptr_eq(job, &self.job));
    }
}

/// How long to pause between two looks at a tree that is ending: every
/// millisecond at first, since most trees end within a few, then every 10 ms.
fn poll_pause(elapsed: Duration) -> Duration {
    if elapsed < Duration::from_millis(50) {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(10)
    }
}

/// The creation flags of a tree's root on Windows.
///
/// - `CREATE_SUSPENDED`: the root must join its job before it can start
///   anything, or a grandchild started at once would escape the job;
///   `join_new_job` resumes it.
/// - `CREATE_NO_WINDOW`: a console program gets a console of its own,
///   without a window. Otherwise it would share the agent's console, and a
///   Ctrl-C there would reach it directly, before the agent could cancel
///   the step in order (on Unix the process group sees to that); and an
///   agent without a console (a service, a scheduled task) would open a
///   console window on the desktop for every step. Programs with windows
///   are not affected.
#[cfg(windows)]
fn windows_creation_flags() -> u32 {
    use windows_sys::Win32::System::Threading::{CREATE_NO_WINDOW, CREATE_SUSPENDED};
    CREATE_SUSPENDED | CREATE_NO_WINDOW
}

/// Whether a process is the console host that Windows starts for a new
/// console (the tree's own, see `windows_creation_flags`), from its
/// executable name.
#[cfg(any(windows, test))]
fn is_console_host(exe_name: &str) -> bool {
    exe_name.eq_ignore_ascii_case("conhost.exe")
}

/// Puts the suspended root of a new tree in a new job, then lets it run.
#[cfg(windows)]
fn join_new_job(child: &dyn ChildWrapper) -> std::io::Result<Job> {
    let handle = child
        .process_handle()
        .ok_or_else(|| std::io::Error::other("the child has no process handle"))?;
    let pid = child
        .id()
        .ok_or_else(|| std::io::Error::other("the child has no process id"))?;
    let job = Job::new()?;
    job.assign(handle)?;
    super::job_object::resume_suspended(pid)?;
    Ok(job)
}

/// The last bytes of a stream, kept for the step's output.
pub struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
    limit: usize,
}

impl Tail {
    pub fn new(limit: usize) -> Self {
        Tail {
            lines: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    pub fn push(&mut self, line: &str) {
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_string());
        while self.bytes > self.limit && self.lines.len() > 1 {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len() + 1;
            }
        }
    }

    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.bytes);
        for (i, l) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(l);
        }
        out
    }

    pub fn last_line(&self) -> Option<&str> {
        self.lines.back().map(String::as_str)
    }
}

/// Reads lines of at most `max` bytes. A longer line is cut, with a marker,
/// and the rest of it is skipped, so one runaway line cannot exhaust memory.
/// The cut masks secrets first (see [`emit_line`]).
/// Before each read from the pipe it waits for the session's sink to want
/// more lines (see [`crate::EventSink::log_room`]), until `unpaced` is
/// cancelled: once the process has ended (or is being stopped), what is
/// left in the pipe is read at full speed, so that none of it is lost to
/// the time limit on reading it.
pub async fn for_each_line<R: AsyncRead + Unpin>(
    reader: R,
    max: usize,
    ctx: &crate::runtime::context::ActionContext,
    unpaced: &CancellationToken,
    mut on_line: impl FnMut(&str),
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(16 * 1024, reader);
    let mut line: Vec<u8> = Vec::new();
    let mut truncated = false;
    // Kept past the cut so that a secret straddling it is masked whole.
    let keep = max + ctx.mask_cut_margin();
    loop {
        if reader.buffer().is_empty() && !unpaced.is_cancelled() {
            tokio::select! {
                () = ctx.log_room() => {}
                () = unpaced.cancelled() => {}
            }
        }
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            if !line.is_empty() || truncated {
                emit_line(&line, max, truncated, &ctx.shared.masker, &mut on_line);
            }
            return Ok(());
        }
        let (chunk, found_newline) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..i], Some(i)),
            None => (available, None),
        };
        let room = keep.saturating_sub(line.len());
        if chunk.len() > room {
            line.extend_from_slice(&chunk[..room]);
            truncated = true;
        } else {
            line.extend_from_slice(chunk);
        }
        let consumed = found_newline.map(|i| i + 1).unwrap_or(available.len());
        reader.consume(consumed);
        if found_newline.is_some() {
            emit_line(&line, max, truncated, &ctx.shared.masker, &mut on_line);
            line.clear();
            truncated = false;
        }
    }
}

/// Hands a line on, cut to `max` bytes if it is longer. Secrets are masked
/// before the cut: masking after it would leak the start of a secret that
/// straddles it (the line holds
/// [`crate::runtime::context::ActionContext::mask_cut_margin`] bytes past
/// `max` for that).
pub(crate) fn emit_line(
    line: &[u8],
    max: usize,
    truncated: bool,
    masker: &crate::runtime::mask::SessionMasker,
    on_line: &mut impl FnMut(&str),
) {
    let line = if truncated {
        line
    } else {
        line.strip_suffix(b"\r").unwrap_or(line)
    };
    let cut = truncated || line.len() > max;
    let mut text = if cut {
        masker.mask_cut(line, max)
    } else {
        String::from_utf8_lossy(line).into_owned()
    };
    if cut {
        text.push_str(" …[line truncated]");
    }
    on_line(&text);
}

/// Whether process group `pgid` has a member that is not a zombie.
/// `killpg(pgid, 0)` also succeeds on zombies, and orphaned members are
/// reaped by init, which may take seconds (or never, in a container without
/// an init); waiting for that made every browser close take 1.6 s longer.
#[cfg(target_os = "linux")]
fn group_has_live_member(pgid: i32) -> bool {
    live_members(pgid).is_none_or(|members| !members.is_empty())
}

/// The /proc directories of the group's members that are not zombies;
/// `None` when /proc cannot be read.
#[cfg(target_os = "linux")]
fn live_members(pgid: i32) -> Option<Vec<std::path::PathBuf>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let mut members = Vec::new();
    for entry in entries.flatten() {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name in parentheses may hold anything; fields start after it.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, _ppid, group) = (fields.next(), fields.next(), fields.next());
        let dead = matches!(state, Some("Z") | Some("X"));
        if !dead && group.and_then(|g| g.parse::<i32>().ok()) == Some(pgid) {
            members.push(entry.path());
        }
    }
    Some(members)
}

#[cfg(all(unix, not(target_os = "linux")))]
fn group_has_live_member(_pgid: i32) -> bool {
    true
}

/// SIGINT's bit in the `SigIgn` mask of /proc/PID/status (signal 2).
#[cfg(unix)]
const SIGINT_BIT: u64 = 1 << (2 - 1);

/// Whether every live member of the group ignores the signal whose bit is
/// `bit`; false when the group has no live member or cannot be read.
#[cfg(target_os = "linux")]
fn all_members_ignore(pgid: i32, bit: u64) -> bool {
    let Some(members) = live_members(pgid) else {
        return false;
    };
    !members.is_empty()
        && members.iter().all(|dir| {
            std::fs::read_to_string(dir.join("status"))
                .ok()
                .and_then(|status| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("SigIgn:"))
                        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                })
                .is_some_and(|mask| mask & bit != 0)
        })
}

#[cfg(all(unix, not(target_os = "linux")))]
fn all_members_ignore(_pgid: i32, _bit: u64) -> bool {
    false
}

/// Kills every process whose command line mentions `path`: the processes a
/// browser started that left its process group (Chromium's crash handler
/// daemonizes). The path is a fresh temporary directory, so nothing else
/// mentions it.
#[cfg(target_os = "linux")]
pub fn kill_processes_mentioning(path: &std::path::Path) {
    let needle = path.as_os_str().as_encoded_bytes();
    if needle.len() < 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
pub fn kill_processes_mentioning(_path: &std::path::Path) {}

/// Nothing to do on Windows: a process started by a member of the tree
/// cannot leave the job (it does not allow breakaway), so Chromium's crash
/// handler ends with the rest of the tree.
#[cfg(windows)]
pub fn kill_processes_mentioning(_path: &std::path::Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_often_at_first_then_less() {
        assert_eq!(poll_pause(Duration::ZERO), Duration::from_millis(1));
        assert_eq!(
            poll_pause(Duration::from_millis(49)),
            Duration::from_millis(1)
        );
        assert_eq!(
            poll_pause(Duration::from_millis(50)),
            Duration::from_millis(10)
        );
        assert_eq!(
            poll_pause(Duration::from_secs(3)),
            Duration::from_millis(10)
        );
    }

    #[test]
    fn only_the_console_host_is_left_out_of_a_live_tree() {
        assert!(is_console_host("conhost.exe"));
        assert!(is_console_host("ConHost.EXE"));
        for name in ["cmd.exe", "conhost", "conhost.exe.exe", "chrome.exe", ""] {
            assert!(!is_console_host(name), "{name}");
        }
    }
}

/// The Job Object behaviour, on Windows itself. `ping -n N 127.0.0.1` is
/// the batch way to wait about N-1 seconds.
#[cfg(all(test, windows))]
mod windows_tests {
    use super::*;

    fn cmd(line: &str) -> Command {
        let mut command = Command::new("cmd");
        command
            .args(["/D", "/C", line])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    }

    /// Waits until the job has at least `n` live processes.
    async fn until_active(tree: &Tree, n: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tree.job.active_processes().unwrap() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never had {n} processes"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_short_command_runs_and_leaves_nothing() {
        let mut tree = Tree::spawn(cmd("exit 3")).unwrap();
        let status = tree.wait().await.unwrap();
        assert_eq!(status.code(), Some(3));
        assert!(!tree.any_alive());
        assert_eq!(tree.terminate(Duration::from_secs(1)).await, "none");
    }

    #[tokio::test]
    async fn terminate_ends_the_root_and_its_grandchildren() {
        let mut tree = Tree::spawn(cmd(
            "start /b ping -n 30 127.0.0.1 >nul & ping -n 30 127.0.0.1 >nul",
        ))
        .unwrap();
        until_active(&tree, 3).await;
        let started = std::time::Instant::now();
        assert_eq!(
            tree.terminate(Duration::from_secs(10)).await,
            "TerminateJobObject"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!tree.any_alive());
        assert_eq!(tree.job.active_processes().unwrap(), 0);
    }

    #[tokio::test]
    async fn what_the_root_leaves_running_is_still_seen() {
        let mut tree = Tree::spawn(cmd("start /b ping -n 30 127.0.0.1 >nul")).unwrap();
        until_active(&tree, 2).await;
        tree.wait().await.unwrap();
        assert!(tree.any_alive(), "the grandchild outlives the root");
        assert_eq!(
            tree.terminate(Duration::from_secs(1)).await,
            "TerminateJobObject"
        );
        assert!(!tree.any_alive());
    }

    #[tokio::test]
    async fn a_big_tree_is_listed_whole() {
        let mut tree = Tree::spawn(cmd(
            "for /l %i in (1,1,20) do @start /b ping -n 30 127.0.0.1 >nul",
        ))
        .unwrap();
        // More than the first guess of room in the list (16).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let names = tree.job.process_names().unwrap();
            let pings = names.iter().filter(|n| n.eq_ignore_ascii_case("ping.exe"));
            if pings.count() == 20 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{names:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            tree.terminate(Duration::from_secs(1)).await,
            "TerminateJobObject"
        );
    }

    #[tokio::test]
    async fn dropping_the_tree_ends_it() {
        let tree = Tree::spawn(cmd("ping -n 30 127.0.0.1 >nul")).unwrap();
        until_active(&tree, 2).await;
        let job = tree.job.clone();
        assert!(live_jobs().iter().any(|j| std::sync::Arc::ptr_eq(j, &job)));
        drop(tree);
        assert!(!live_jobs().iter().any(|j| std::sync::Arc::ptr_eq(j, &job)));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while job.active_processes().unwrap() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the tree outlived its drop"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
