//! Crash recovery of spools: what a killed agent had not delivered.
//!
//! At start, before this run makes directories of its own, the agent lists
//! the spools an earlier run left ([`leftovers`]). Each one with a lease
//! is delivered by the sender like any session (its lines, then its
//! report; a session cut off mid-run is reported as `agent_restarted`)
//! and removed; the poll lists its lease as held meanwhile, so that the
//! hub keeps it alive while its lines go. One without a lease (made ahead,
//! never used) is removed. (Processes a killed agent left are ended
//! elsewhere: `tasuki_actions::builtin::tree_records`.)

use std::path::{Path, PathBuf};

use tasuki_protocol::{FinishSession, HeldLease};
use tokio_util::sync::CancellationToken;

use super::sender::{Source, ship};
use super::{FINISH_FILE, LEASE_FILE, Shipped, SlotFreed, Spool, report};
use crate::daemon::client::HubClient;
use crate::daemon::health::Metrics;

/// A spool an earlier run left, with the report it is to end with.
pub struct Leftover {
    spool: Spool,
    report: FinishSession,
}

impl Leftover {
    pub fn lease(&self) -> &HeldLease {
        &self.spool.lease
    }

    /// Already set: the session is over, and occupies no slot.
    pub fn slot_freed(&self) -> SlotFreed {
        self.spool.slot_freed.clone()
    }

    /// Delivers the spool's lines and report, then removes it.
    pub async fn deliver(
        self,
        client: &HubClient,
        metrics: &Metrics,
        stop: &CancellationToken,
    ) -> Shipped {
        tracing::info!(
            session_queue_id = self.spool.lease.session_id,
            "delivering a spool left by an earlier run"
        );
        ship(
            client,
            &self.spool,
            Source::Ended(Box::new(self.report)),
            metrics,
            stop,
        )
        .await
    }
}

/// The spools in `root` that an earlier run left, each read with its
/// lease and report. Those without a lease are removed. Blocking.
pub fn leftovers(root: &Path) -> Vec<Leftover> {
    let dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.into_iter().filter_map(read_leftover).collect()
}

/// A leftover spool's lease and final report (made up when it has none:
/// the session was cut off); `None`, with the directory removed, for one
/// without a lease.
fn read_leftover(dir: PathBuf) -> Option<Leftover> {
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
            report::failed_before_start(
                &lease,
                "agent_restarted",
                "the agent stopped while the session ran, and was started again; the \
                 session was not re-run"
                    .into(),
            )
        });
    // Already over: its slot is free as far as the agent is concerned.
    let slot_freed = SlotFreed::default();
    slot_freed.set();
    Some(Leftover {
        spool: Spool::adopt(dir, lease, slot_freed),
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_read_with_their_lease_and_report_and_unused_ones_removed() {
        let root = tempfile::tempdir().unwrap();
        let lease = |id| HeldLease {
            session_id: id,
            lease_id: format!("lease-{id}"),
        };
        // Cut off mid-run: a lease, no report.
        let cut = Spool::create(root.path(), lease(1), SlotFreed::default()).unwrap();
        // Ended before the crash: its report was written.
        let ended = Spool::create(root.path(), lease(2), SlotFreed::default()).unwrap();
        let mut written = report::failed_before_start(&lease(2), "invalid_params", "x".into());
        written.status = tasuki_protocol::SessionStatus::Success;
        written.error = None;
        std::fs::write(
            ended.dir.join(FINISH_FILE),
            serde_json::to_vec(&written).unwrap(),
        )
        .unwrap();
        // Made ahead, never used.
        let unused = root.path().join("3");
        std::fs::create_dir(&unused).unwrap();

        let mut found = leftovers(root.path());
        found.sort_by_key(|l| l.lease().session_id);
        assert_eq!(
            found.iter().map(|l| l.lease().clone()).collect::<Vec<_>>(),
            vec![lease(1), lease(2)]
        );
        let cut_report = &found[0].report;
        assert_eq!(
            cut_report.error.as_ref().map(|e| e.code.as_str()),
            Some("agent_restarted")
        );
        assert_eq!(
            found[1].report.status,
            tasuki_protocol::SessionStatus::Success
        );
        assert!(found.iter().all(|l| l.spool.slot_freed.is_set()));
        assert!(!unused.exists(), "a spool without a lease is removed");
        assert!(cut.dir.exists() && ended.dir.exists());
    }
}
