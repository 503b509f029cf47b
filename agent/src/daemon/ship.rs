//! Shipping a session's events to the hub: logs, step states, artifacts
//! and the final report, in that order, never lost and never duplicated.
//!
//! The executor's lines go into the session's spool ([`SpoolSink`], over
//! `spool.rs`, which owns their one order: what is on disk first, then
//! what is only in memory); a sender task ([`ship`]) posts batches,
//! dropping lines only once the hub's `high_seq` covers them. So a hub
//! that is down or slow costs disk, and lines arrive in order whenever it
//! is back; a disk that is full too costs memory, up to a bound past which
//! the session stops as `spool_full`. While the hub keeps up, a step that
//! prints faster than lines can be shipped is slowed down instead
//! ([`SpoolSink`]'s `log_room`), so a line reaches the hub within about two
//! batches of being printed. The final report is written to the spool
//! directory too, so a restarted agent delivers what it did not get to
//! ([`recover`]). A lease the hub gave up while the robot was out of touch
//! still gets its lines: the hub takes them, and answers the finish with
//! `lease_lost` once its note on the loss follows them (docs/protocol.md).
//!
//! Nothing here blocks the daemon's thread: disk reads and writes, the
//! artifact listing and recovery run on the blocking pool, and artifacts
//! are streamed from their files.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tasuki_actions::{Event, EventSink, LogRoom, SessionReport, StepRecord};
use tasuki_protocol::robot::MAX_LOG_BATCH;
use tasuki_protocol::{
    FinishSession, HeldLease, LogLevel, LogLine, SessionError, SessionStatus, StepState,
    StepStatus, StepsUpdate,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::{CallError, HubClient};
use super::health::Metrics;
use super::spool::{Lines, Reader, Spooled};

pub(super) const LOGS_FILE: &str = "logs.jsonl";
/// The error code of a session stopped because its spool was full.
pub const SPOOL_FULL: &str = "spool_full";
/// A batch stays well under the hub's 10 MB body limit, however long its
/// lines are.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
const LEASE_FILE: &str = "lease.json";
const FINISH_FILE: &str = "finish.json";
/// How far the spool may run ahead of the hub before a step's output is
/// slowed down: two batches, one on the wire and one filling.
const MAX_LAG_LINES: u64 = 2 * MAX_LOG_BATCH as u64;
/// How long a step waits for the hub to take lines before they go to disk
/// unthrottled: the spool is for a hub that is down or stuck.
const STALL_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// The executor's side: appends lines to the spool and keeps the live
/// step states.
pub struct SpoolSink {
    shared: Arc<Shared>,
}

struct Shared {
    lines: Mutex<Lines>,
    live: Mutex<Live>,
    wake: Notify,
    metrics: Arc<Metrics>,
    /// The hub's `high_seq`, as the sender last heard it.
    acked_seq: AtomicU64,
    /// Told each time the hub takes a batch.
    progress: Notify,
    /// The hub took nothing for [`STALL_AFTER`] while lines waited: output
    /// is no longer slowed down until it takes a batch again.
    stalled: AtomicBool,
    /// The `seq` at which lines that neither the disk nor the hub would
    /// take filled the memory allowed them ([`super::spool::MEMORY_LIMIT`]):
    /// the session is stopped and ends `error`, code `spool_full`. Lines
    /// emitted while it stops are still kept, so the log has no gap.
    spool_full: std::sync::OnceLock<u64>,
    /// The session's token, cancelled when the spool is full.
    cancel: CancellationToken,
    /// Enough lines wait in memory to be written out before the timer.
    write_due: Notify,
}

#[derive(Default)]
struct Live {
    steps: Vec<StepState>,
    index: HashMap<String, usize>,
    revision: u64,
    artifacts_changed: bool,
    report: Option<SessionReport>,
}

/// How a session ended on this robot: how its shipping ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Shipped {
    /// Its report reached the hub.
    Finished,
    /// The hub no longer honours the lease; nothing more is sent.
    LeaseLost,
    /// The agent is stopping before the hub could be reached; the spool
    /// stays for the next start.
    Interrupted,
}

pub struct Spool {
    pub dir: PathBuf,
    /// What the spool is for, in its `lease.json`: written first, so that
    /// a restarted agent knows which session and lease its lines belong to.
    pub lease: HeldLease,
    /// Set just before the final report is sent: from then on the hub may
    /// count the session's slot as free, and so may the agent.
    pub finishing: Arc<AtomicBool>,
}

impl Spool {
    /// Creates the spool directory of a session.
    pub fn create(
        root: &Path,
        lease: HeldLease,
        finishing: Arc<AtomicBool>,
    ) -> std::io::Result<Spool> {
        let dir = root.join(lease.session_id.to_string());
        super::private_fs::create_dir_all(&dir)?;
        write_lease(&dir, &lease)?;
        Ok(Spool::adopt(dir, lease, finishing))
    }

    /// A spool in a directory made ahead (`scratch.rs`); it is recoverable
    /// after a crash once [`write_lease`] has run.
    pub fn adopt(dir: PathBuf, lease: HeldLease, finishing: Arc<AtomicBool>) -> Spool {
        Spool {
            dir,
            lease,
            finishing,
        }
    }

    /// The sink the executor writes into, with every step pending; `file`
    /// is the spool's log file, made ahead and open.
    pub fn sink(
        &self,
        file: File,
        step_ids: &[String],
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) -> SpoolSink {
        let mut live = Live::default();
        for id in step_ids {
            live.index.insert(id.clone(), live.steps.len());
            live.steps.push(StepState {
                id: id.clone(),
                status: StepStatus::Pending,
                started_at: None,
                ended_at: None,
                duration_ms: None,
                output: serde_json::Value::Null,
                error: None,
            });
        }
        SpoolSink {
            shared: Arc::new(Shared {
                lines: Mutex::new(Lines::new(file, metrics.clone())),
                live: Mutex::new(live),
                wake: Notify::new(),
                metrics,
                acked_seq: AtomicU64::new(0),
                progress: Notify::new(),
                stalled: AtomicBool::new(false),
                spool_full: std::sync::OnceLock::new(),
                cancel,
                write_due: Notify::new(),
            }),
        }
    }
}

/// Records whose spool `dir` is, for an agent that starts after a crash.
pub fn write_lease(dir: &Path, lease: &HeldLease) -> std::io::Result<()> {
    let text = serde_json::to_vec(lease).map_err(std::io::Error::other)?;
    super::private_fs::write(&dir.join(LEASE_FILE), &text)
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventSink for SpoolSink {
    fn emit(&self, event: Event) {
        match event {
            Event::Log(line) => {
                let line = LogLine {
                    seq: line.seq,
                    ts: line.ts,
                    level: LogLevel::parse(line.level.as_str()).unwrap_or(LogLevel::Info),
                    step_id: line.step_id,
                    message: line.message,
                };
                let Some(line) = Spooled::from_line(&line) else {
                    return;
                };
                let seq = line.seq;
                let (full, due) = {
                    let mut lines = lock(&self.shared.lines);
                    lines.push(line);
                    (lines.full(), lines.write_out_due())
                };
                if due {
                    self.shared.write_due.notify_one();
                }
                if full && self.shared.spool_full.set(seq).is_ok() {
                    tracing::error!(
                        seq,
                        limit_bytes = super::spool::MEMORY_LIMIT,
                        "the log spool is full: its disk refuses lines and the hub has not taken them; stopping the session"
                    );
                    self.shared.cancel.cancel();
                }
                self.shared.metrics.lines_spooled.inc();
            }
            Event::StepStarted {
                step_id,
                started_at,
                ..
            } => {
                let mut live = lock(&self.shared.live);
                if let Some(&i) = live.index.get(&step_id) {
                    let s = &mut live.steps[i];
                    s.status = StepStatus::Running;
                    s.started_at = Some(started_at);
                    s.ended_at = None;
                    s.error = None;
                    live.revision += 1;
                }
            }
            Event::StepFinished { step_id, record } => {
                if let Some(ms) = record.duration_ms {
                    self.shared.metrics.step_seconds.observe(ms as f64 / 1000.0);
                }
                let mut live = lock(&self.shared.live);
                if let Some(&i) = live.index.get(&step_id) {
                    live.steps[i] = step_state(&step_id, &record);
                    live.revision += 1;
                }
                live.artifacts_changed = true;
            }
            Event::SessionFinished(report) => {
                let mut live = lock(&self.shared.live);
                live.artifacts_changed = true;
                live.report = Some(*report);
            }
            Event::SessionStarted { .. } => return,
        }
        self.shared.wake.notify_one();
    }

    fn log_room(&self) -> LogRoom<'_> {
        Box::pin(async move {
            let shared = &self.shared;
            loop {
                if shared.stalled.load(Ordering::SeqCst) {
                    return;
                }
                // Registered before the check, so a batch taken in between
                // is not missed.
                let progressed = shared.progress.notified();
                let written = lock(&shared.lines).emitted_seq();
                if written.saturating_sub(shared.acked_seq.load(Ordering::SeqCst)) <= MAX_LAG_LINES
                {
                    return;
                }
                shared.wake.notify_one();
                if tokio::time::timeout(STALL_AFTER, progressed).await.is_err() {
                    tracing::debug!("the hub is not taking log lines; spooling them unthrottled");
                    shared.stalled.store(true, Ordering::SeqCst);
                    return;
                }
            }
        })
    }
}

impl SpoolSink {
    /// Puts the lines held in memory on disk, on the blocking pool.
    pub async fn flush(&self) {
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || super::spool::write_out(&shared.lines)).await;
    }

    /// Puts lines on disk every `period`, or sooner when 64 KB wait, so a
    /// line is on disk within that period, whatever the hub does (and the
    /// disk permitting: spool.rs). Runs until dropped.
    pub async fn keep_flushed(&self, period: std::time::Duration) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.shared.write_due.notified() => {}
            }
            self.flush().await;
        }
    }

    pub fn shipper(&self) -> Shipper {
        Shipper {
            shared: Some(self.shared.clone()),
        }
    }
}

impl Shared {
    /// The report the hub gets: the executor's, unless the spool filled up.
    fn final_report(&self, lease: &HeldLease, report: &SessionReport) -> FinishSession {
        let mut report = finish_report(lease, report);
        if let Some(seq) = self.spool_full.get() {
            report.status = SessionStatus::Error;
            report.error = Some(SessionError {
                code: SPOOL_FULL.into(),
                message: format!(
                    "the robot's log spool was full at line {seq}: its disk refused lines and \
                     the hub had not taken the {} MiB kept in memory, so the session was \
                     stopped; every line it produced is in the log",
                    super::spool::MEMORY_LIMIT / (1024 * 1024)
                ),
                step_id: None,
            });
        }
        report
    }
}

/// The sender's handle on a live session; `None` for a recovered spool.
pub struct Shipper {
    shared: Option<Arc<Shared>>,
}

impl Shipper {
    /// For a spool with no live session behind it.
    pub fn none() -> Shipper {
        Shipper { shared: None }
    }
}

fn step_state(id: &str, r: &StepRecord) -> StepState {
    StepState {
        id: id.to_string(),
        status: match r.status {
            tasuki_actions::StepStatus::Pending => StepStatus::Pending,
            tasuki_actions::StepStatus::Running => StepStatus::Running,
            tasuki_actions::StepStatus::Success => StepStatus::Success,
            tasuki_actions::StepStatus::Error => StepStatus::Error,
            tasuki_actions::StepStatus::Skipped => StepStatus::Skipped,
            tasuki_actions::StepStatus::Cancelled => StepStatus::Cancelled,
        },
        started_at: r.started_at,
        ended_at: r.ended_at,
        duration_ms: r.duration_ms,
        output: r.output.clone(),
        error: r.error.as_ref().map(|e| SessionError {
            code: e.code.clone(),
            message: e.message.clone(),
            step_id: e.step_id.clone(),
        }),
    }
}

/// The hub's words for a session's end, from the executor's report.
pub fn finish_report(lease: &HeldLease, report: &SessionReport) -> FinishSession {
    FinishSession {
        idempotency_key: finish_key(lease),
        status: match report.status {
            tasuki_actions::SessionStatus::Success => SessionStatus::Success,
            tasuki_actions::SessionStatus::Cancelled => SessionStatus::Cancelled,
            _ => SessionStatus::Error,
        },
        ended_at: report.ended_at,
        error: report.error.as_ref().map(|e| SessionError {
            code: e.code.clone(),
            message: e.message.clone(),
            step_id: e.step_id.clone(),
        }),
        steps: report
            .steps
            .iter()
            .map(|(id, r)| step_state(id, r))
            .collect(),
        outputs: None,
    }
}

/// One key per lease: a restarted agent sending the same report again
/// gets the first answer.
pub fn finish_key(lease: &HeldLease) -> String {
    format!("finish-{}-{}", lease.session_id, lease.lease_id)
}

/// A session that ended before it ran (its workflow or params did not
/// check out on this robot).
pub fn failed_before_start(lease: &HeldLease, code: &str, message: String) -> FinishSession {
    FinishSession {
        idempotency_key: finish_key(lease),
        status: SessionStatus::Error,
        ended_at: jiff::Timestamp::now(),
        error: Some(SessionError {
            code: code.into(),
            message,
            step_id: None,
        }),
        steps: Vec::new(),
        outputs: None,
    }
}

/// Sends a session's spool to the hub until the final report is in.
/// `stop` interrupts (the agent is exiting); the spool then stays.
pub async fn ship(
    client: &HubClient,
    spool: &Spool,
    shipper: Shipper,
    artifacts_dir: Option<&Path>,
    mut final_report: Option<FinishSession>,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Shipped {
    let session = spool.lease.session_id;
    let lease = spool.lease.lease_id.as_str();
    let live = shipper.shared.as_deref();
    let mut reader = {
        let path = spool.dir.join(LOGS_FILE);
        let is_live = live.is_some();
        match tokio::task::spawn_blocking(move || Reader::open(&path, is_live)).await {
            Ok(r) => r,
            Err(_) => return Shipped::Interrupted,
        }
    };
    let mut pending: VecDeque<Spooled> = VecDeque::new();
    // Batches refused in a row; placeholders refused too mean the hub
    // will take nothing more for this session.
    let mut refusals = 0;
    let mut high_seq = 0u64;
    let mut sent_revision = 0u64;
    let mut uploaded: HashMap<String, (u64, std::time::SystemTime)> = HashMap::new();
    let mut first_contact = true;
    loop {
        // 1. Logs: the spool's lines past what the hub has, disk first,
        //    then memory (spool.rs).
        let room = MAX_LOG_BATCH.saturating_sub(pending.len());
        let caught_up = room == 0
            || live.is_some_and(|s| reader.take_from_memory(&s.lines, &mut pending, room));
        if !caught_up {
            // The file has lines to read: on the blocking pool.
            let shared = shipper.shared.clone();
            let mut queue = std::mem::take(&mut pending);
            let read = tokio::task::spawn_blocking(move || {
                reader.take(shared.as_deref().map(|s| &s.lines), &mut queue, room);
                (reader, queue)
            })
            .await;
            match read {
                Ok((r, q)) => (reader, pending) = (r, q),
                Err(e) => {
                    tracing::error!(session_queue_id = session, error = %e, "reading the log spool failed");
                    return Shipped::Interrupted;
                }
            }
        }
        if !pending.is_empty() || first_contact {
            // The first call, even empty, learns how far the hub got (a
            // recovered spool may be partly delivered).
            first_contact = false;
            let mut count = 0;
            let mut bytes = 0;
            for l in pending.iter().take(MAX_LOG_BATCH) {
                if count > 0 && bytes + l.json.len() > MAX_BATCH_BYTES {
                    break;
                }
                bytes += l.json.len() + 1;
                count += 1;
            }
            let batch = batch_body(pending.iter().take(count));
            match client.logs(session, lease, &batch, stop).await {
                Ok(stored) => {
                    refusals = 0;
                    let before = pending.len();
                    high_seq = high_seq.max(stored.high_seq);
                    reader.skip_to(high_seq);
                    if let Some(shared) = live {
                        lock(&shared.lines).acked(high_seq);
                        shared.acked_seq.store(high_seq, Ordering::SeqCst);
                        shared.stalled.store(false, Ordering::SeqCst);
                        shared.progress.notify_waiters();
                    }
                    pending.retain(|l| l.seq > high_seq);
                    metrics
                        .lines_shipped
                        .inc_by((before - pending.len()) as u64);
                    if pending.front().is_some_and(|l| l.seq > high_seq + 1) {
                        // The hub lacks lines this agent already dropped
                        // (its database was restored from a backup, say):
                        // read the spool again from the start.
                        tracing::warn!(
                            session_queue_id = session,
                            high_seq,
                            "the hub is missing log lines; resending from the spool"
                        );
                        pending.clear();
                        reader.rewind(high_seq);
                    }
                }
                Err(CallError::LeaseLost(why)) => {
                    tracing::warn!(session_queue_id = session, %why, "lease lost; shipping stops");
                    return Shipped::LeaseLost;
                }
                Err(CallError::Cancelled) => return Shipped::Interrupted,
                Err(e) => {
                    // A batch the hub will never take: its lines are
                    // replaced by a note saying so, which keeps `seq`
                    // without gaps and every later line deliverable.
                    refusals += 1;
                    if refusals > 1 {
                        tracing::error!(session_queue_id = session, error = %e, "the hub refuses even placeholder lines; shipping stops");
                        return Shipped::LeaseLost;
                    }
                    tracing::error!(session_queue_id = session, error = %e, lines = count, "the hub refused a log batch; sending placeholders");
                    let note = format!("[log line refused by the hub: {e}]");
                    let note: String = note.chars().take(1024).collect();
                    for l in pending.iter_mut().take(count) {
                        *l = placeholder(l, &note);
                    }
                    metrics.lines_dropped.inc_by(count as u64);
                }
            }
            if !pending.is_empty() {
                continue;
            }
        }

        // 2. Step states, when they changed.
        if let Some(shared) = live {
            let update = {
                let state = lock(&shared.live);
                (state.revision > sent_revision && state.report.is_none()).then(|| StepsUpdate {
                    revision: state.revision,
                    steps: state.steps.clone(),
                })
            };
            if let Some(update) = update {
                match client.steps(session, lease, &update, stop).await {
                    Ok(_) => sent_revision = update.revision,
                    Err(CallError::LeaseLost(_)) => return Shipped::LeaseLost,
                    Err(CallError::Cancelled) => return Shipped::Interrupted,
                    Err(e) => {
                        tracing::error!(session_queue_id = session, error = %e, "the hub refused the step states");
                        sent_revision = update.revision;
                    }
                }
            }
        }

        // 3. Artifacts new since the last look.
        let look = match live {
            Some(shared) => std::mem::take(&mut lock(&shared.live).artifacts_changed),
            None => true,
        };
        if look && let Some(dir) = artifacts_dir {
            match upload_new(client, spool, dir, &mut uploaded, stop).await {
                Ok(()) => {}
                Err(CallError::LeaseLost(_)) => return Shipped::LeaseLost,
                Err(CallError::Cancelled) => return Shipped::Interrupted,
                Err(e) => {
                    tracing::error!(session_queue_id = session, error = %e, "an artifact upload failed")
                }
            }
        }

        // 4. The final report, once everything before it is in.
        let ended = match live {
            Some(shared) if final_report.is_none() => lock(&shared.live)
                .report
                .as_ref()
                .map(|report| shared.final_report(&spool.lease, report)),
            _ => None,
        };
        if let Some(report) = ended {
            if let Ok(text) = serde_json::to_vec(&report) {
                let path = spool.dir.join(FINISH_FILE);
                let _ = tokio::task::spawn_blocking(move || super::private_fs::write(&path, &text))
                    .await;
            }
            final_report = Some(report);
        }
        let all_sent = pending.is_empty()
            && match live {
                Some(shared) => lock(&shared.lines).emitted_seq() <= high_seq,
                None => reader.at_end(),
            };
        // A step that finished while artifacts were uploading may have left
        // a file that the last scan did not see: scan again first.
        let artifacts_pending = live.is_some_and(|shared| lock(&shared.live).artifacts_changed);
        if let Some(report) = &final_report
            && all_sent
            && !artifacts_pending
        {
            spool.finishing.store(true, Ordering::SeqCst);
            return match client.finish(session, lease, report, stop).await {
                Ok(_) => {
                    remove_dir(&spool.dir).await;
                    Shipped::Finished
                }
                Err(CallError::LeaseLost(_)) => {
                    remove_dir(&spool.dir).await;
                    Shipped::LeaseLost
                }
                Err(CallError::Cancelled) => Shipped::Interrupted,
                Err(e) => {
                    // Too large, most likely (step outputs, a long error):
                    // the status and a short error still matter most.
                    tracing::error!(session_queue_id = session, error = %e, "the hub refused the final report; sending it without step outputs");
                    let trimmed = trimmed_report(report);
                    if let Err(e) = client.finish(session, lease, &trimmed, stop).await {
                        tracing::error!(session_queue_id = session, error = %e, "the hub refused the trimmed final report too");
                    }
                    remove_dir(&spool.dir).await;
                    Shipped::Finished
                }
            };
        }

        // 5. Nothing to send now: wait for the executor. Always an await,
        //    so that this task never keeps the daemon's one thread; the
        //    timeout looks again in case lines became readable without a
        //    wake (a disk that works again).
        match live {
            Some(shared) => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep(super::spool::DISK_RETRY) => {}
                    _ = stop.cancelled() => return Shipped::Interrupted,
                }
            }
            // A recovered spool with nothing left to send but no report:
            // cannot happen, since recovery always makes one.
            None if final_report.is_none() => return Shipped::Interrupted,
            None => tokio::task::yield_now().await,
        }
    }
}

/// Removes a directory and what is in it, on the blocking pool.
pub async fn remove_dir(dir: &Path) {
    let dir = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}

/// The report without step outputs and with a short error message.
fn trimmed_report(report: &FinishSession) -> FinishSession {
    let mut trimmed = report.clone();
    for step in &mut trimmed.steps {
        step.output = serde_json::Value::Null;
        if let Some(e) = step.error.as_mut() {
            e.message = e.message.chars().take(1024).collect();
        }
    }
    if let Some(e) = trimmed.error.as_mut() {
        e.message = e.message.chars().take(1024).collect();
    }
    trimmed.outputs = None;
    trimmed
}

/// The same `seq` and time, with `note` for its message.
fn placeholder(line: &Spooled, note: &str) -> Spooled {
    let ts = serde_json::from_str::<LogLine>(&line.json)
        .map(|l| l.ts)
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let note = LogLine {
        seq: line.seq,
        ts,
        level: LogLevel::Warn,
        step_id: None,
        message: note.to_string(),
    };
    Spooled::from_line(&note).unwrap_or(Spooled {
        seq: line.seq,
        json: String::new(),
    })
}

/// `{"lines": [...]}` from spooled JSON lines, without parsing them again.
fn batch_body<'a>(lines: impl Iterator<Item = &'a Spooled>) -> Vec<u8> {
    let mut body = Vec::with_capacity(256 * 1024);
    body.extend_from_slice(b"{\"lines\":[");
    for (i, l) in lines.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(l.json.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

/// Uploads regular files in `dir` that are new or changed. The listing is
/// made on the blocking pool, and each file is streamed from the disk.
async fn upload_new(
    client: &HubClient,
    spool: &Spool,
    dir: &Path,
    uploaded: &mut HashMap<String, (u64, std::time::SystemTime)>,
    stop: &CancellationToken,
) -> Result<(), CallError> {
    let listed = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || list_files(&dir)).await
    };
    let Ok(listed) = listed else {
        return Ok(());
    };
    let mut files: Vec<(String, PathBuf, u64, std::time::SystemTime)> = listed
        .into_iter()
        .filter(|(name, _, len, modified)| uploaded.get(name) != Some(&(*len, *modified)))
        .collect();
    files.sort();
    for (name, path, len, modified) in files {
        match client
            .artifact(
                spool.lease.session_id,
                &spool.lease.lease_id,
                &name,
                &path,
                len,
                stop,
            )
            .await
        {
            Ok(()) => {}
            // This file will never be taken (too large, unreadable): the
            // others still go, and it is not offered again unless it
            // changes.
            Err(CallError::Rejected {
                status, message, ..
            }) => {
                tracing::error!(artifact = %name, status, %message, "the hub refused an artifact");
            }
            Err(e) => return Err(e),
        }
        uploaded.insert(name, (len, modified));
    }
    Ok(())
}

/// The regular files in `dir`: (artifact name, path, length, modified).
fn list_files(dir: &Path) -> Vec<(String, PathBuf, u64, std::time::SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            meta.is_file().then(|| {
                (
                    artifact_name(&entry.file_name().to_string_lossy()),
                    entry.path(),
                    meta.len(),
                    meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                )
            })
        })
        .collect()
}

/// A file name the hub accepts: plain characters, at most 128 of them.
fn artifact_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.insert(0, 'a');
    }
    name.chars().take(128).collect()
}

/// The spool directories an earlier run left, listed before this run
/// makes any of its own.
pub fn leftover_spools(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// A leftover spool's directory, lease and final report (made up when it
/// has none: the session was cut off); `None`, with the directory
/// removed, for one without a lease (made ahead, never used). Blocking.
fn read_leftover(dir: PathBuf) -> Option<(PathBuf, HeldLease, FinishSession)> {
    let Some(lease) = std::fs::read(dir.join(LEASE_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<HeldLease>(&b).ok())
    else {
        let _ = std::fs::remove_dir_all(&dir);
        return None;
    };
    let report = std::fs::read(dir.join(FINISH_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<FinishSession>(&b).ok())
        .unwrap_or_else(|| {
            failed_before_start(
                &lease,
                "agent_restarted",
                "the agent stopped while the session ran, and was started again; the \
                 session was not re-run"
                    .into(),
            )
        });
    Some((dir, lease, report))
}

/// Spools left by an earlier run of the agent: each is delivered (its
/// lines, then its report; a session cut off mid-run is reported as an
/// error) and removed. One without a lease (made ahead, never used) is
/// removed.
pub async fn recover(
    client: &HubClient,
    leftovers: Vec<PathBuf>,
    metrics: &Metrics,
    stop: &CancellationToken,
) {
    for dir in leftovers {
        let read = tokio::task::spawn_blocking(move || read_leftover(dir)).await;
        let Ok(Some((dir, lease, report))) = read else {
            continue;
        };
        tracing::info!(
            session_queue_id = lease.session_id,
            "delivering a spool left by an earlier run"
        );
        let spool = Spool {
            dir,
            lease,
            finishing: Arc::default(),
        };
        let outcome = ship(
            client,
            &spool,
            Shipper::none(),
            None,
            Some(report),
            metrics,
            stop,
        )
        .await;
        if outcome == Shipped::Interrupted {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spooled_lines_pass_through_as_a_valid_batch() {
        let line = |seq| LogLine {
            seq,
            ts: jiff::Timestamp::UNIX_EPOCH,
            level: LogLevel::Info,
            step_id: Some("s".into()),
            message: format!("line \"{seq}\""),
        };
        let spooled: Vec<Spooled> = (1..=3)
            .map(|i| Spooled::from_line(&line(i)).unwrap())
            .collect();
        let batch: tasuki_protocol::LogBatch =
            serde_json::from_slice(&batch_body(spooled.iter())).unwrap();
        assert_eq!(batch.lines, vec![line(1), line(2), line(3)]);
        let empty: tasuki_protocol::LogBatch =
            serde_json::from_slice(&batch_body([].iter())).unwrap();
        assert!(empty.lines.is_empty());
        let note = placeholder(&spooled[1], "[refused]");
        let back: LogLine = serde_json::from_str(&note.json).unwrap();
        assert_eq!(
            (back.seq, back.message.as_str(), back.ts),
            (2, "[refused]", line(2).ts)
        );
    }

    /// Issue 12: lines that neither the disk nor the hub takes fill the
    /// memory allowed them; the session is then stopped and reported as
    /// `spool_full`, and no line is dropped.
    #[test]
    fn a_spool_full_in_memory_stops_the_session_as_spool_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOGS_FILE);
        File::create(&path).unwrap();
        let lease = HeldLease {
            session_id: 7,
            lease_id: "l".into(),
        };
        let spool = Spool::adopt(dir.path().into(), lease.clone(), Arc::default());
        let cancel = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        // A file that refuses every write: the disk is full.
        let sink = spool.sink(
            File::open(&path).unwrap(),
            &[],
            metrics.clone(),
            cancel.clone(),
        );
        let big = "x".repeat(1024 * 1024);
        let mut seq = 0;
        while !cancel.is_cancelled() {
            seq += 1;
            assert!(seq < 100, "never full");
            sink.emit(Event::Log(tasuki_actions::LogLine {
                seq,
                ts: jiff::Timestamp::UNIX_EPOCH,
                level: tasuki_actions::LogLevel::Info,
                step_id: None,
                message: big.clone(),
            }));
            super::super::spool::write_out(&sink.shared.lines);
        }
        assert!(seq >= 32, "full only past the limit: {seq}");
        assert_eq!(metrics.spool_disk_failing.get(), 1);
        assert!(metrics.spool_memory_bytes.get() >= super::super::spool::MEMORY_LIMIT as i64);
        let report = SessionReport {
            status: tasuki_actions::SessionStatus::Cancelled,
            started_at: jiff::Timestamp::UNIX_EPOCH,
            ended_at: jiff::Timestamp::UNIX_EPOCH,
            duration_ms: 0,
            params: serde_json::Value::Null,
            steps: Default::default(),
            error: None,
        };
        let finish = sink.shared.final_report(&lease, &report);
        assert_eq!(finish.status, SessionStatus::Error);
        let error = finish.error.unwrap();
        assert_eq!(error.code, "spool_full");
        assert!(
            error.message.contains(&format!("line {seq}")),
            "{}",
            error.message
        );
        drop(sink);
        assert_eq!(metrics.spool_memory_bytes.get(), 0);
        assert_eq!(metrics.spool_disk_failing.get(), 0);
    }

    #[test]
    fn artifact_names_are_made_plain() {
        assert_eq!(artifact_name("shot 1.png"), "shot_1.png");
        assert_eq!(artifact_name(".hidden"), "a.hidden");
        assert_eq!(artifact_name(&"x".repeat(200)).len(), 128);
    }
}
