//! The executor's side of shipping: [`SpoolSink`] takes the executor's
//! events, puts log lines into the spool (`spool.rs`) and keeps the live
//! step states and the final report for the sender (`sender.rs`), which
//! reads them through the `pub(super)` methods below.
//!
//! While the hub keeps up, a step that prints faster than lines can be
//! shipped is slowed down ([`EventSink::log_room`]), so a line reaches the
//! hub within about two batches of being printed; once the hub stalls,
//! lines go to the spool unthrottled, since the spool is for a hub that is
//! down or stuck.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tasuki_actions::{Event, EventSink, LogRoom, SessionReport};
use tasuki_protocol::robot::MAX_LOG_BATCH;
use tasuki_protocol::{
    FinishSession, HeldLease, LogLevel, LogLine, SessionError, SessionStatus, StepState,
    StepStatus, StepsUpdate,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::spool::{Lines, MEMORY_LIMIT, Spooled};
use super::{SPOOL_FULL, lock, report};
use crate::daemon::health::Metrics;

/// How far the spool may run ahead of the hub before a step's output is
/// slowed down: two batches, one on the wire and one filling.
const MAX_LAG_LINES: u64 = 2 * MAX_LOG_BATCH as u64;
/// How long a step waits for the hub to take lines before they go to disk
/// unthrottled.
const STALL_AFTER: std::time::Duration = std::time::Duration::from_millis(500);

/// A live session's events on their way to the hub. Cheap to clone: the
/// executor holds one, the sender another.
#[derive(Clone)]
pub struct SpoolSink {
    shared: Arc<Shared>,
}

struct Shared {
    lines: Mutex<Lines>,
    live: Mutex<Live>,
    /// Told whenever there is something new to send.
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
    /// take filled the memory allowed them ([`MEMORY_LIMIT`]): the session
    /// is stopped and ends `error`, code `spool_full`. Lines emitted while
    /// it stops are still kept, so the log has no gap.
    spool_full: OnceLock<u64>,
    /// The session's token, cancelled when the spool is full.
    cancel: CancellationToken,
    /// Enough lines wait in memory to be written out before the timer.
    write_due: Notify,
}

/// Step states as the hub should see them, and what changed since the
/// sender last looked.
#[derive(Default)]
struct Live {
    steps: Vec<StepState>,
    index: HashMap<String, usize>,
    revision: u64,
    artifacts_changed: bool,
    report: Option<SessionReport>,
}

impl SpoolSink {
    /// A sink with every step pending; `file` is the spool's log file,
    /// made ahead and open. `cancel` is the session's token, which a full
    /// spool cancels.
    pub fn new(
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
                spool_full: OnceLock::new(),
                cancel,
                write_due: Notify::new(),
            }),
        }
    }

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

    // What the sender reads and tells.

    pub(super) fn lines(&self) -> &Mutex<Lines> {
        &self.shared.lines
    }

    /// The hub has every line up to `high_seq`: they may leave memory,
    /// and a step slowed down for it may go on.
    pub(super) fn hub_took(&self, high_seq: u64) {
        let shared = &self.shared;
        lock(&shared.lines).acked(high_seq);
        shared.acked_seq.store(high_seq, Ordering::SeqCst);
        shared.stalled.store(false, Ordering::SeqCst);
        shared.progress.notify_waiters();
    }

    /// Whether the hub has every line emitted so far.
    pub(super) fn all_lines_sent(&self, high_seq: u64) -> bool {
        lock(&self.shared.lines).emitted_seq() <= high_seq
    }

    /// The step states, if they changed since `sent_revision` and the
    /// session is still running (the final report carries the last ones).
    pub(super) fn steps_update(&self, sent_revision: u64) -> Option<StepsUpdate> {
        let live = lock(&self.shared.live);
        (live.revision > sent_revision && live.report.is_none()).then(|| StepsUpdate {
            revision: live.revision,
            steps: live.steps.clone(),
        })
    }

    /// Whether a step finished since the last call, and so may have left
    /// artifacts.
    pub(super) fn take_artifacts_changed(&self) -> bool {
        std::mem::take(&mut lock(&self.shared.live).artifacts_changed)
    }

    /// A step finished while artifacts were uploading: the last scan may
    /// have missed its files.
    pub(super) fn artifacts_changed(&self) -> bool {
        lock(&self.shared.live).artifacts_changed
    }

    /// The report the hub gets once the session ended: the executor's,
    /// unless the spool filled up.
    pub(super) fn final_report(&self, lease: &HeldLease) -> Option<FinishSession> {
        let live = lock(&self.shared.live);
        let mut report = report::finish_report(lease, live.report.as_ref()?);
        if let Some(seq) = self.shared.spool_full.get() {
            report.status = SessionStatus::Error;
            report.error = Some(SessionError {
                code: SPOOL_FULL.into(),
                message: format!(
                    "the robot's log spool was full at line {seq}: its disk refused lines and \
                     the hub had not taken the {} MiB kept in memory, so the session was \
                     stopped; every line it produced is in the log",
                    MEMORY_LIMIT / (1024 * 1024)
                ),
                step_id: None,
            });
        }
        Some(report)
    }

    /// Until there may be something new to send.
    pub(super) async fn changed(&self) {
        self.shared.wake.notified().await
    }
}

impl EventSink for SpoolSink {
    fn emit(&self, event: Event) {
        let shared = &self.shared;
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
                    let mut lines = lock(&shared.lines);
                    lines.push(line);
                    (lines.full(), lines.write_out_due())
                };
                if due {
                    shared.write_due.notify_one();
                }
                if full && shared.spool_full.set(seq).is_ok() {
                    tracing::error!(
                        seq,
                        limit_bytes = MEMORY_LIMIT,
                        "the log spool is full: its disk refuses lines and the hub has not taken them; stopping the session"
                    );
                    shared.cancel.cancel();
                }
                shared.metrics.lines_spooled.inc();
            }
            Event::StepStarted {
                step_id,
                started_at,
                ..
            } => {
                let mut live = lock(&shared.live);
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
                    shared.metrics.step_seconds.observe(ms as f64 / 1000.0);
                }
                let mut live = lock(&shared.live);
                if let Some(&i) = live.index.get(&step_id) {
                    live.steps[i] = report::step_state(&step_id, &record);
                    live.revision += 1;
                }
                live.artifacts_changed = true;
            }
            Event::SessionFinished(report) => {
                let mut live = lock(&shared.live);
                live.artifacts_changed = true;
                live.report = Some(*report);
            }
            Event::SessionStarted { .. } => return,
        }
        shared.wake.notify_one();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: lines that neither the disk nor the hub takes fill the
    /// memory allowed them; the session is then stopped and reported as
    /// `spool_full`, and no line is dropped.
    #[test]
    fn a_spool_full_in_memory_stops_the_session_as_spool_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(super::super::LOGS_FILE);
        File::create(&path).unwrap();
        let lease = HeldLease {
            session_id: 7,
            lease_id: "l".into(),
        };
        let cancel = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        // A file that refuses every write: the disk is full.
        let sink = SpoolSink::new(
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
            super::super::spool::write_out(sink.lines());
        }
        assert!(seq >= 32, "full only past the limit: {seq}");
        assert_eq!(metrics.spool_disk_failing.get(), 1);
        assert!(metrics.spool_memory_bytes.get() >= MEMORY_LIMIT as i64);
        assert!(sink.final_report(&lease).is_none(), "not ended yet");
        sink.emit(Event::SessionFinished(Box::new(SessionReport {
            status: tasuki_actions::SessionStatus::Cancelled,
            started_at: jiff::Timestamp::UNIX_EPOCH,
            ended_at: jiff::Timestamp::UNIX_EPOCH,
            duration_ms: 0,
            params: serde_json::Value::Null,
            steps: Default::default(),
            error: None,
            outputs: None,
            checkpoint: None,
        })));
        let finish = sink.final_report(&lease).unwrap();
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
}
