//! Shipping a session's events to the hub: logs, step states, artifacts
//! and the final report, in that order, never lost and never duplicated.
//!
//! One straight line, one module per job:
//!
//! 1. [`sink`]: the executor's side. Lines go into the session's spool,
//!    step states into a table the sender reads; a step that prints faster
//!    than the hub takes lines is slowed down while the hub keeps up.
//! 2. [`spool`]: the lines between the executor and the hub, and their one
//!    order: **what is on disk first, then what is only in memory** (stated
//!    and tested there). A disk that is full or failing costs memory, up to
//!    a bound past which the session stops as `spool_full`.
//! 3. [`sender`]: one task per session, one part per phase: log batches
//!    (lines leave the spool only once the hub's `high_seq` covers them),
//!    step states, artifacts (streamed from their files, [`artifacts`]),
//!    then the final report ([`report`]), which is also written to the
//!    spool directory first.
//! 4. [`recover`]: spools a killed agent left, delivered by the same sender
//!    when the agent starts again.
//!
//! A lease the hub gave up while the robot was out of touch still gets its
//! lines: the hub takes them, and answers the finish with `lease_lost` once
//! its note on the loss follows them (docs/protocol.md).
//!
//! Nothing here blocks the daemon's thread: disk reads and writes, the
//! artifact listing and recovery run on the blocking pool.

mod artifacts;
pub mod recover;
mod report;
mod sender;
mod sink;
mod spool;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tasuki_protocol::HeldLease;

pub use report::failed_before_start;
pub use sender::{Source, ship};
pub use sink::SpoolSink;

/// The spool's log file, one JSON line per log line.
pub const LOGS_FILE: &str = "logs.jsonl";
/// The lease a spool belongs to, written before anything is shipped.
const LEASE_FILE: &str = "lease.json";
/// The final report, written before it is sent.
const FINISH_FILE: &str = "finish.json";
/// The error code of a session stopped because its spool was full.
pub const SPOOL_FULL: &str = "spool_full";

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

/// Set once a session no longer occupies one of the robot's slots: its
/// final report is on its way (the hub frees the slot the moment the
/// report arrives, and may offer the next session in the same breath), or
/// it is a spool a killed run left, over before this run began. Shared by
/// the sender, which sets it, and the poll loop, which counts slots.
#[derive(Clone, Default)]
pub struct SlotFreed(Arc<AtomicBool>);

impl SlotFreed {
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A session's spool directory and the lease its contents belong to.
pub struct Spool {
    pub dir: PathBuf,
    /// In the directory's `lease.json` too, so that a restarted agent
    /// knows which session and lease its lines belong to.
    pub lease: HeldLease,
    pub slot_freed: SlotFreed,
}

impl Spool {
    /// Creates the spool directory of a session, lease recorded. Blocking.
    pub fn create(root: &Path, lease: HeldLease, slot_freed: SlotFreed) -> std::io::Result<Spool> {
        let dir = root.join(lease.session_id.to_string());
        crate::daemon::private_fs::create_dir_all(&dir)?;
        write_lease(&dir, &lease)?;
        Ok(Spool {
            dir,
            lease,
            slot_freed,
        })
    }

    /// A spool in a directory made ahead (`scratch.rs`); it is recoverable
    /// after a crash once [`Spool::record_lease`] has run.
    pub fn adopt(dir: PathBuf, lease: HeldLease, slot_freed: SlotFreed) -> Spool {
        Spool {
            dir,
            lease,
            slot_freed,
        }
    }

    /// Writes `lease.json`, on the blocking pool. Done before anything is
    /// shipped, so that the spool's removal after the final report can
    /// never come first.
    pub async fn record_lease(&self) -> std::io::Result<()> {
        let (dir, lease) = (self.dir.clone(), self.lease.clone());
        tokio::task::spawn_blocking(move || write_lease(&dir, &lease))
            .await
            .map_err(std::io::Error::other)?
    }
}

/// Writes the session's final report into its spool (`finish.json`) as
/// soon as its run is over, before its last lines are shipped: an agent
/// killed meanwhile and started again sends this report, rather than
/// taking the session for one cut off mid-run (`agent_restarted`, which a
/// workflow's `retry_on` would run again).
pub async fn record_report(sink: &SpoolSink, spool_dir: &Path, lease: &HeldLease) {
    if let Some(report) = sink.final_report(lease) {
        write_report(spool_dir, &report).await;
    }
}

async fn write_report(spool_dir: &Path, report: &tasuki_protocol::FinishSession) {
    if let Ok(text) = serde_json::to_vec(report) {
        let path = spool_dir.join(FINISH_FILE);
        let _ = tokio::task::spawn_blocking(move || crate::daemon::private_fs::write(&path, &text))
            .await;
    }
}

fn write_lease(dir: &Path, lease: &HeldLease) -> std::io::Result<()> {
    let text = serde_json::to_vec(lease).map_err(std::io::Error::other)?;
    crate::daemon::private_fs::write(&dir.join(LEASE_FILE), &text)
}

/// Locks a mutex, taking it over from a task that panicked while holding
/// it (its data is lines and step states, whole at every await).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes a directory and what is in it, on the blocking pool.
async fn remove_dir(dir: &Path) {
    let dir = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir)).await;
}
