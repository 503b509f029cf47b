//! The sender: one task per session that posts what the session produced,
//! phase by phase, until the hub has its final report.
//!
//! Each round: log batches until the spool has nothing unsent
//! ([`Sender::send_logs`]); then the step states if they changed, the
//! artifacts if a step finished, and the final report once the session
//! has one and everything before it is in ([`Sender::finish`]); then a
//! wait for the executor. A lease the hub no longer honours ends shipping
//! (`Shipped::LeaseLost`); `stop` interrupts it and leaves the spool for
//! the next start (`Shipped::Interrupted`).

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::PathBuf;

use tasuki_protocol::robot::MAX_LOG_BATCH;
use tasuki_protocol::{FinishSession, LogLevel, LogLine};
use tokio_util::sync::CancellationToken;

use super::artifacts::Uploaded;
use super::sink::SpoolSink;
use super::spool::{DISK_RETRY, Reader, Spooled};
use super::{LOGS_FILE, Shipped, Spool, remove_dir, report};
use crate::daemon::client::{CallError, HubClient};
use crate::daemon::health::Metrics;

/// A batch stays well under the hub's 10 MB body limit, however long its
/// lines are.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// What a spool is shipped for.
pub enum Source {
    /// A running session: its sink, and where its steps leave artifacts.
    Live {
        sink: SpoolSink,
        artifacts_dir: PathBuf,
    },
    /// A session that is already over, with its report: one that never
    /// ran, or one a killed agent left (`recover.rs`).
    Ended(Box<FinishSession>),
}

/// Sends a session's spool to the hub until the final report is in.
pub async fn ship(
    client: &HubClient,
    spool: &Spool,
    source: Source,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Shipped {
    let (live, artifacts_dir, report) = match source {
        Source::Live {
            sink,
            artifacts_dir,
        } => (Some(sink), Some(artifacts_dir), None),
        Source::Ended(report) => (None, None, Some(*report)),
    };
    let reader = {
        let path = spool.dir.join(LOGS_FILE);
        let is_live = live.is_some();
        match tokio::task::spawn_blocking(move || Reader::open(&path, is_live)).await {
            Ok(r) => r,
            Err(_) => return Shipped::Interrupted,
        }
    };
    let mut sender = Sender {
        client,
        spool,
        metrics,
        stop,
        live,
        artifacts_dir,
        report,
        reader: Some(reader),
        pending: VecDeque::new(),
        high_seq: 0,
        refusals: 0,
        first_contact: true,
        sent_revision: 0,
        uploaded: Uploaded::default(),
    };
    loop {
        if let ControlFlow::Break(shipped) = sender.round().await {
            return shipped;
        }
    }
}

struct Sender<'a> {
    client: &'a HubClient,
    spool: &'a Spool,
    metrics: &'a Metrics,
    stop: &'a CancellationToken,
    /// `None` for a session that is over.
    live: Option<SpoolSink>,
    artifacts_dir: Option<PathBuf>,
    /// The final report, once there is one.
    report: Option<FinishSession>,
    /// `None` only while it reads on the blocking pool.
    reader: Option<Reader>,
    /// Lines read and not yet acknowledged by the hub, in order.
    pending: VecDeque<Spooled>,
    /// The hub has every line up to this `seq`.
    high_seq: u64,
    /// Batches refused in a row.
    refusals: u32,
    /// No log call made yet: the first, even empty, learns how far the hub
    /// got (a recovered spool may be partly delivered).
    first_contact: bool,
    /// The step states' revision the hub has.
    sent_revision: u64,
    uploaded: Uploaded,
}

/// How a phase ends a round: go on to the next phase, or stop shipping.
type Phase = ControlFlow<Shipped>;

impl Sender<'_> {
    async fn round(&mut self) -> Phase {
        self.read_lines().await?;
        if !self.pending.is_empty() || self.first_contact {
            self.send_logs().await?;
            if !self.pending.is_empty() {
                // More lines first: nothing else goes ahead of them.
                return ControlFlow::Continue(());
            }
        }
        self.send_steps().await?;
        self.send_artifacts().await?;
        self.take_report().await;
        if self.ready_to_finish() {
            return ControlFlow::Break(self.finish().await);
        }
        self.wait().await
    }

    /// Tops `pending` up to a batch: the spool's lines past what the hub
    /// has, disk first, then memory (`spool.rs`). The lines in memory are
    /// taken here; the file is read on the blocking pool.
    async fn read_lines(&mut self) -> Phase {
        let room = MAX_LOG_BATCH.saturating_sub(self.pending.len());
        let Some(mut reader) = self.reader.take() else {
            return ControlFlow::Break(Shipped::Interrupted);
        };
        let caught_up = room == 0
            || self
                .live
                .as_ref()
                .is_some_and(|sink| reader.take_from_memory(sink.lines(), &mut self.pending, room));
        if caught_up {
            self.reader = Some(reader);
            return ControlFlow::Continue(());
        }
        let live = self.live.clone();
        let mut queue = std::mem::take(&mut self.pending);
        let read = tokio::task::spawn_blocking(move || {
            reader.take(live.as_ref().map(|s| s.lines()), &mut queue, room);
            (reader, queue)
        })
        .await;
        match read {
            Ok((reader, queue)) => {
                self.reader = Some(reader);
                self.pending = queue;
                ControlFlow::Continue(())
            }
            Err(e) => {
                tracing::error!(session_queue_id = self.spool.lease.session_id, error = %e, "reading the log spool failed");
                ControlFlow::Break(Shipped::Interrupted)
            }
        }
    }

    /// Posts one batch from `pending`; lines leave it once the hub's
    /// `high_seq` covers them.
    async fn send_logs(&mut self) -> Phase {
        self.first_contact = false;
        let session = self.spool.lease.session_id;
        let mut count = 0;
        let mut bytes = 0;
        for l in self.pending.iter().take(MAX_LOG_BATCH) {
            if count > 0 && bytes + l.json.len() > MAX_BATCH_BYTES {
                break;
            }
            bytes += l.json.len() + 1;
            count += 1;
        }
        let batch = batch_body(self.pending.iter().take(count));
        let lease = &self.spool.lease.lease_id;
        match self.client.logs(session, lease, &batch, self.stop).await {
            Ok(stored) => {
                self.refusals = 0;
                let before = self.pending.len();
                self.high_seq = self.high_seq.max(stored.high_seq);
                let high_seq = self.high_seq;
                if let Some(reader) = self.reader.as_mut() {
                    reader.skip_to(high_seq);
                }
                if let Some(sink) = &self.live {
                    sink.hub_took(high_seq);
                }
                self.pending.retain(|l| l.seq > high_seq);
                self.metrics
                    .lines_shipped
                    .inc_by((before - self.pending.len()) as u64);
                if self.pending.front().is_some_and(|l| l.seq > high_seq + 1) {
                    // The hub lacks lines this agent already dropped (its
                    // database was restored from a backup, say): read the
                    // spool again from the start.
                    tracing::warn!(
                        session_queue_id = session,
                        high_seq,
                        "the hub is missing log lines; resending from the spool"
                    );
                    self.pending.clear();
                    if let Some(reader) = self.reader.as_mut() {
                        reader.rewind(high_seq);
                    }
                }
                ControlFlow::Continue(())
            }
            Err(CallError::LeaseLost(why)) => {
                tracing::warn!(session_queue_id = session, %why, "lease lost; shipping stops");
                ControlFlow::Break(Shipped::LeaseLost)
            }
            Err(CallError::Cancelled) => ControlFlow::Break(Shipped::Interrupted),
            Err(e) => {
                // A batch the hub will never take: its lines are replaced
                // by a note saying so, which keeps `seq` without gaps and
                // every later line deliverable. Placeholders refused too
                // mean the hub will take nothing more for this session.
                self.refusals += 1;
                if self.refusals > 1 {
                    tracing::error!(session_queue_id = session, error = %e, "the hub refuses even placeholder lines; shipping stops");
                    return ControlFlow::Break(Shipped::LeaseLost);
                }
                tracing::error!(session_queue_id = session, error = %e, lines = count, "the hub refused a log batch; sending placeholders");
                let note = format!("[log line refused by the hub: {e}]");
                let note: String = note.chars().take(1024).collect();
                for l in self.pending.iter_mut().take(count) {
                    *l = placeholder(l, &note);
                }
                self.metrics.lines_dropped.inc_by(count as u64);
                ControlFlow::Continue(())
            }
        }
    }

    /// The step states, when they changed. One the hub refuses is not
    /// sent again: the final report carries them all.
    async fn send_steps(&mut self) -> Phase {
        let Some(update) = self
            .live
            .as_ref()
            .and_then(|sink| sink.steps_update(self.sent_revision))
        else {
            return ControlFlow::Continue(());
        };
        let (session, lease) = (self.spool.lease.session_id, &self.spool.lease.lease_id);
        match self.client.steps(session, lease, &update, self.stop).await {
            Ok(_) => {}
            Err(e) => {
                ends_shipping(&e)?;
                tracing::error!(session_queue_id = session, error = %e, "the hub refused the step states");
            }
        }
        self.sent_revision = update.revision;
        ControlFlow::Continue(())
    }

    /// Artifacts new or changed since the last look, when a step finished.
    async fn send_artifacts(&mut self) -> Phase {
        let (Some(sink), Some(dir)) = (&self.live, &self.artifacts_dir) else {
            return ControlFlow::Continue(());
        };
        if !sink.take_artifacts_changed() {
            return ControlFlow::Continue(());
        }
        let uploaded = self
            .uploaded
            .upload_new(self.client, &self.spool.lease, dir, self.stop)
            .await;
        if let Err(e) = uploaded {
            ends_shipping(&e)?;
            tracing::error!(session_queue_id = self.spool.lease.session_id, error = %e, "an artifact upload failed");
        }
        ControlFlow::Continue(())
    }

    /// Takes the live session's report once it ended, and writes it to the
    /// spool directory, so that a restarted agent sends it (`recover.rs`).
    async fn take_report(&mut self) {
        if self.report.is_some() {
            return;
        }
        let Some(report) = self
            .live
            .as_ref()
            .and_then(|sink| sink.final_report(&self.spool.lease))
        else {
            return;
        };
        super::write_report(&self.spool.dir, &report).await;
        self.report = Some(report);
    }

    /// The report may go: every line is in, and no step finished since
    /// the artifacts were last looked at (its files would be missed).
    fn ready_to_finish(&self) -> bool {
        let all_sent = self.pending.is_empty()
            && match &self.live {
                Some(sink) => sink.all_lines_sent(self.high_seq),
                None => self.reader.as_ref().is_some_and(Reader::at_end),
            };
        let artifacts_pending = self.live.as_ref().is_some_and(SpoolSink::artifacts_changed);
        self.report.is_some() && all_sent && !artifacts_pending
    }

    /// Sends the final report; the spool goes once the hub has it.
    async fn finish(&mut self) -> Shipped {
        let Some(report) = &self.report else {
            return Shipped::Interrupted;
        };
        let (session, lease) = (self.spool.lease.session_id, &self.spool.lease.lease_id);
        self.spool.slot_freed.set();
        let shipped = match self.client.finish(session, lease, report, self.stop).await {
            Ok(_) => Shipped::Finished,
            Err(CallError::LeaseLost(_)) => Shipped::LeaseLost,
            Err(CallError::Cancelled) => return Shipped::Interrupted,
            Err(e) => {
                // Too large, most likely (step outputs, a long error): the
                // status and a short error still matter most.
                tracing::error!(session_queue_id = session, error = %e, "the hub refused the final report; sending it without step outputs");
                let trimmed = report::trimmed(report);
                if let Err(e) = self
                    .client
                    .finish(session, lease, &trimmed, self.stop)
                    .await
                {
                    tracing::error!(session_queue_id = session, error = %e, "the hub refused the trimmed final report too");
                }
                Shipped::Finished
            }
        };
        remove_dir(&self.spool.dir).await;
        shipped
    }

    /// Nothing to send now: waits for the executor. Always an await, so
    /// that this task never keeps the daemon's one thread; the timeout
    /// looks again in case lines became readable without a wake (a disk
    /// that works again).
    async fn wait(&self) -> Phase {
        match &self.live {
            Some(sink) => tokio::select! {
                _ = sink.changed() => ControlFlow::Continue(()),
                _ = tokio::time::sleep(DISK_RETRY) => ControlFlow::Continue(()),
                _ = self.stop.cancelled() => ControlFlow::Break(Shipped::Interrupted),
            },
            None => {
                tokio::task::yield_now().await;
                ControlFlow::Continue(())
            }
        }
    }
}

/// The refusals after which nothing more can be sent: the lease is gone,
/// or the agent is stopping.
fn ends_shipping(e: &CallError) -> Phase {
    match e {
        CallError::LeaseLost(_) => ControlFlow::Break(Shipped::LeaseLost),
        CallError::Cancelled => ControlFlow::Break(Shipped::Interrupted),
        _ => ControlFlow::Continue(()),
    }
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
}
