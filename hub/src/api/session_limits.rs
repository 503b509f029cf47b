//! How much one session may store: a robot key could otherwise fill the
//! hub's disk with artifacts under ever new names and endless log
//! batches. An artifact past a limit is refused with 413 and an error that
//! names the limit and the flag that sets it. A log past a limit (the
//! hub's, or its workflow's `limits.log_bytes`) is cut: the lines that fit
//! are stored, then a line of the hub's saying at which line and by which
//! limit, and later lines are answered as taken and dropped, so the
//! session runs on and its report arrives.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::db::Conn;
use axum::http::StatusCode;
use tasuki_protocol::LogLine;

use super::error::ApiError;
use crate::db::{DbError, artifacts, logs, sessions};

#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub artifacts: u64,
    pub artifact_bytes: u64,
    pub log_lines: u64,
    pub log_bytes: u64,
    /// `--max-session-duration`: how long one run may last on a robot.
    pub duration: Option<std::time::Duration>,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            artifacts: 1000,
            artifact_bytes: 200 * 1024 * 1024,
            log_lines: 1_000_000,
            log_bytes: 1024 * 1024 * 1024,
            duration: None,
        }
    }
}

/// Bytes of log messages stored per session, so that a batch is not
/// checked by summing a million lines: `(highest seq, bytes)` as this hub
/// last stored them. Seeded from the database the first time a session is
/// seen, and again when the database's highest seq is not the one kept
/// (another hub of the same database stored lines meanwhile); forgotten
/// when the session's robot reports it finished, and wholesale should it
/// still grow large (sessions whose robots never finish them; each is then
/// seeded again), which bounds it. Its lock is never held across a
/// database statement.
#[derive(Default)]
pub struct Usage {
    log_bytes: Mutex<HashMap<i64, (u64, u64)>>,
}

impl Usage {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (u64, u64)>> {
        // Each change is one insert or remove: a panic elsewhere cannot
        // leave the map half-changed.
        self.log_bytes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes stored up to `high`, if this hub knows them.
    fn bytes_at(&self, session_id: i64, high: u64) -> Option<u64> {
        match self.lock().get(&session_id) {
            Some(&(known_high, bytes)) if known_high == high => Some(bytes),
            _ => None,
        }
    }

    fn set(&self, session_id: i64, high: u64, bytes: u64) {
        let mut map = self.lock();
        if map.len() >= MAX_TRACKED_SESSIONS {
            map.clear();
        }
        map.insert(session_id, (high, bytes));
    }

    /// Drops a session's entry: its robot finished it.
    pub fn forget(&self, session_id: i64) {
        let mut map = self.lock();
        map.remove(&session_id);
        // A map that once held many sessions keeps its capacity.
        if map.capacity() > 1024 && map.len() < map.capacity() / 4 {
            let len = map.len();
            map.shrink_to(len * 2);
        }
    }
}

const MAX_TRACKED_SESSIONS: usize = 64 * 1024;

impl SessionLimits {
    /// Appends a batch unless the lines it adds would take the session
    /// past a log limit; the highest `seq` stored, numbered as the robot
    /// numbers its run's lines (`logs::LogState::seq_base`), or the refusal. One
    /// transaction with the session's row locked, so that batches cannot
    /// race past a limit, whichever connection or hub they reach.
    pub fn append_logs(
        &self,
        usage: &Usage,
        conn: &mut Conn<'_>,
        session_id: i64,
        lease_id: &str,
        lines: &[LogLine],
    ) -> Result<Result<u64, ApiError>, DbError> {
        conn.transaction(|tx| {
            sessions::lock_row(tx, session_id)?;
            self.append_logs_locked(usage, tx, session_id, lease_id, lines)
        })
    }

    fn append_logs_locked(
        &self,
        usage: &Usage,
        conn: &mut Conn<'_>,
        session_id: i64,
        lease_id: &str,
        lines: &[LogLine],
    ) -> Result<Result<u64, ApiError>, DbError> {
        let state = logs::state(conn, session_id)?;
        // The lease again, under the lock: a run queued again since the
        // call's lease check (`retry_on`) numbers its lines afresh, and an
        // older run's batch must not take their places.
        if state.lease_id.as_deref() != Some(lease_id) {
            return Ok(Err(super::robot::lease_lost(
                session_id,
                "the session was queued again since",
            )));
        }
        let base = state.seq_base;
        // The batch's lines as the robot numbers them are all dealt with
        // once the log is cut: answered as taken, never stored.
        let batch_high = lines.iter().map(|l| l.seq).max().unwrap_or(0);
        if state.cut_at.is_some() {
            return Ok(Ok(batch_high));
        }
        let high = logs::high_seq(conn, session_id)?;
        let stored = match usage.bytes_at(session_id, high) {
            Some(bytes) => bytes,
            None => logs::stored_bytes(conn, session_id)?,
        };
        let (byte_limit, byte_limit_named) = match state.workflow_log_bytes {
            Some(w) if w < self.log_bytes => (w, "its workflow's limits.log_bytes"),
            _ => (self.log_bytes, "the hub's --max-session-log-bytes"),
        };
        // What logs::append will store: lines after the highest, without
        // gaps, while they fit.
        let mut next = high + 1;
        let mut added_bytes = 0u64;
        let mut fitting = Vec::new();
        let mut passed = None;
        for line in lines {
            let seq = line.seq.saturating_add(base);
            if seq < next {
                continue;
            }
            if seq != next {
                break;
            }
            let bytes = line.message.len() as u64;
            if next > self.log_lines {
                passed = Some(("the hub's --max-session-log-lines", self.log_lines, "lines"));
                break;
            }
            if stored + added_bytes + bytes > byte_limit {
                passed = Some((byte_limit_named, byte_limit, "bytes of messages"));
                break;
            }
            added_bytes += bytes;
            fitting.push(line.clone());
            next += 1;
        }
        let stored_high = if fitting.is_empty() {
            high
        } else {
            logs::append(conn, session_id, base, &fitting)?
        };
        usage.set(session_id, stored_high, stored + added_bytes);
        let Some((limit, value, unit)) = passed else {
            return Ok(Ok(stored_high.saturating_sub(base)));
        };
        let note = format!(
            "[tasuki-hub] the log stops here, at line {}: this session reached {limit} ({value} \
             {unit}); the lines after it were not stored",
            stored_high + 1
        );
        let cut = logs::append_note(conn, session_id, &note, crate::db::now_ms())?;
        logs::cut(conn, session_id, cut)?;
        tracing::warn!(
            session_queue_id = session_id,
            line = cut,
            limit,
            "a session's log reached its limit and was cut"
        );
        Ok(Ok(batch_high))
    }

    /// Whether an artifact `name` of `size` bytes fits beside the others
    /// (a new version of a stored one replaces it, so it is not counted
    /// twice).
    pub fn check_artifact(
        &self,
        conn: &mut Conn<'_>,
        session_id: i64,
        name: &str,
        size: u64,
    ) -> Result<Result<(), ApiError>, DbError> {
        let (count, bytes) = artifacts::usage_except(conn, session_id, name)?;
        if count + 1 > self.artifacts {
            return Ok(Err(too_much(
                "session_artifact_limit",
                format!(
                    "session {session_id} may store at most {} artifacts (--max-session-artifacts), \
                     and has that many",
                    self.artifacts
                ),
            )));
        }
        let workflows: Option<Option<i64>> = conn.opt_row(
            "SELECT w.limit_artifact_bytes FROM session_queues s
             JOIN workflows w ON w.id = s.workflow_id WHERE s.id = ?1",
            crate::db::sql::params![session_id],
            |r| r.get(0),
        )?;
        let (limit, named) = match workflows.flatten().and_then(|w| u64::try_from(w).ok()) {
            Some(w) if w < self.artifact_bytes => (w, "its workflow's limits.artifact_bytes"),
            _ => (
                self.artifact_bytes,
                "the hub's --max-session-artifact-bytes",
            ),
        };
        if bytes + size > limit {
            return Ok(Err(too_much(
                "session_artifact_limit",
                format!(
                    "session {session_id}'s artifacts may total at most {limit} bytes \
                     ({named}); it has {bytes}, and this one is {size}"
                ),
            )));
        }
        Ok(Ok(()))
    }
}

fn too_much(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_session_is_forgotten_and_the_table_shrinks_back() {
        let usage = Usage::default();
        {
            let mut map = usage.log_bytes.lock().unwrap();
            for id in 0..10_000 {
                map.insert(id, (1, 1));
            }
        }
        for id in 0..9_990 {
            usage.forget(id);
        }
        let map = usage.log_bytes.lock().unwrap();
        assert_eq!(map.len(), 10);
        assert!(!map.contains_key(&0) && map.contains_key(&9_999));
        assert!(map.capacity() < 2048, "capacity {}", map.capacity());
    }
}
