//! Session log lines. Robots append them (the robot protocol); the public
//! API reads them.

use super::sql::{Conn, params};
use tasuki_protocol::{LogLevel, LogLine, SessionStatus};

use super::{DbError, sessions, to_timestamp};

/// The lines after `after_seq`, at most `limit` of them, in order, with the
/// session's status; `None` when there is no such session.
pub fn after(
    conn: &mut Conn<'_>,
    session_id: i64,
    after_seq: i64,
    limit: i64,
) -> Result<Option<(Vec<LogLine>, SessionStatus)>, DbError> {
    let Some(status) = sessions::status_of(conn, session_id)? else {
        return Ok(None);
    };
    let rows = conn.rows(
        "SELECT seq, ts, level, step_id, message FROM session_logs
         WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        params![session_id, after_seq, limit],
        |r| {
            Ok((
                r.get::<i64>(0)?,
                r.get::<i64>(1)?,
                r.get::<String>(2)?,
                r.get::<Option<String>>(3)?,
                r.get::<String>(4)?,
            ))
        },
    )?;
    let mut lines = Vec::new();
    for (seq, ts, level, step_id, message) in rows {
        lines.push(LogLine {
            seq: seq.max(0) as u64,
            ts: to_timestamp(ts)?,
            level: LogLevel::parse(&level).ok_or_else(|| {
                DbError::Corrupt(format!(
                    "session queue {session_id}, log line {seq}: level `{level}`"
                ))
            })?,
            step_id,
            message,
        });
    }
    Ok(Some((lines, status)))
}

/// What a session's log may still take.
pub struct LogState {
    /// Where the run under way's lines go: its robot numbers them from 1,
    /// and line `n` is stored as `seq_base + n`, after the lines of the
    /// runs before it (`retry_on`, leases::requeue_for_retry); 0 for a
    /// first run.
    pub seq_base: u64,
    /// The line of the hub's note where the log was cut at a limit.
    pub cut_at: Option<u64>,
    /// Its workflow's `limits.log_bytes`.
    pub workflow_log_bytes: Option<u64>,
    /// The lease it is held under now.
    pub lease_id: Option<String>,
}

pub fn state(conn: &mut Conn<'_>, session_id: i64) -> Result<LogState, DbError> {
    let unsigned = |v: i64| v.max(0) as u64;
    let state = conn.opt_row(
        "SELECT s.log_seq_base, s.log_cut_at, w.limit_log_bytes, s.lease_id
         FROM session_queues s JOIN workflows w ON w.id = s.workflow_id WHERE s.id = ?1",
        params![session_id],
        |r| {
            Ok(LogState {
                seq_base: unsigned(r.get(0)?),
                cut_at: r.get::<Option<i64>>(1)?.map(unsigned),
                workflow_log_bytes: r.get::<Option<i64>>(2)?.map(unsigned),
                lease_id: r.get(3)?,
            })
        },
    )?;
    Ok(state.unwrap_or(LogState {
        seq_base: 0,
        cut_at: None,
        workflow_log_bytes: None,
        lease_id: None,
    }))
}

/// Marks the log cut at `line` (the hub's note): nothing more is stored.
pub fn cut(conn: &mut Conn<'_>, session_id: i64, line: u64) -> Result<(), DbError> {
    conn.execute(
        "UPDATE session_queues SET log_cut_at = ?2 WHERE id = ?1",
        params![session_id, line as i64],
    )?;
    Ok(())
}

/// Appends a batch of the run under way, whose lines are stored from
/// `base` on ([`LogState::seq_base`]): lines at or below the stored highest `seq`
/// are repeats and skipped; a line past highest + 1 is a gap, and it and
/// the rest are not stored (the robot resends from the answer). Returns
/// the highest `seq` stored.
pub fn append(
    conn: &mut Conn<'_>,
    session_id: i64,
    base: u64,
    lines: &[LogLine],
) -> Result<u64, DbError> {
    conn.transaction(|tx| {
        // Two batches of one session at once (a robot's retry through
        // another hub) take turns here on PostgreSQL; SQLite's
        // transactions already do.
        super::sessions::lock_row(tx, session_id)?;
        let mut high = high_seq(tx, session_id)?;
        for line in lines {
            let seq = line.seq.saturating_add(base);
            if seq <= high {
                continue;
            }
            if seq != high + 1 {
                break;
            }
            tx.execute(
                "INSERT INTO session_logs (session_id, seq, ts, level, step_id, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    session_id,
                    seq as i64,
                    line.ts.as_millisecond(),
                    line.level.as_str(),
                    line.step_id,
                    line.message
                ],
            )?;
            high = seq;
        }
        Ok(high)
    })
}

/// Appends the hub's own line after the robot's last (a `warn` with no
/// step): nothing the robot sends later can take its `seq`, since the hub
/// writes one only once the robot has said it has sent everything.
pub fn append_note(
    conn: &mut Conn<'_>,
    session_id: i64,
    message: &str,
    now_ms: i64,
) -> Result<u64, DbError> {
    super::sessions::lock_row(conn, session_id)?;
    let seq = high_seq(conn, session_id)? + 1;
    conn.execute(
        "INSERT INTO session_logs (session_id, seq, ts, level, step_id, message)
         VALUES (?1, ?2, ?3, ?4, NULL, ?5)",
        params![
            session_id,
            seq as i64,
            now_ms,
            LogLevel::Warn.as_str(),
            message
        ],
    )?;
    Ok(seq)
}

pub fn high_seq(conn: &mut Conn<'_>, session_id: i64) -> Result<u64, DbError> {
    let high: i64 = conn.row(
        "SELECT COALESCE(MAX(seq), 0) FROM session_logs WHERE session_id = ?1",
        params![session_id],
        |r| r.get(0),
    )?;
    Ok(high.max(0) as u64)
}

/// Bytes of log messages stored for a session (api/session_limits.rs).
pub fn stored_bytes(conn: &mut Conn<'_>, session_id: i64) -> Result<u64, DbError> {
    let bytes: i64 = conn.row(
        "SELECT CAST(COALESCE(SUM(octet_length(message)), 0) AS BIGINT) FROM session_logs WHERE session_id = ?1", params![session_id],
        |r| r.get(0),
    )?;
    Ok(bytes.max(0) as u64)
}
