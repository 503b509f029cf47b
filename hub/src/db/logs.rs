//! Session log lines. Robots append them (the robot protocol); the public
//! API reads them.

use super::Cached;
use rusqlite::{Connection, params};
use tasuki_protocol::{LogLevel, LogLine, SessionStatus};

use super::{DbError, sessions, to_timestamp};

/// The lines after `after_seq`, at most `limit` of them, in order, with the
/// session's status; `None` when there is no such session.
pub fn after(
    conn: &Connection,
    session_id: i64,
    after_seq: i64,
    limit: i64,
) -> Result<Option<(Vec<LogLine>, SessionStatus)>, DbError> {
    let Some(status) = sessions::status_of(conn, session_id)? else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT seq, ts, level, step_id, message FROM session_logs
         WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![session_id, after_seq, limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut lines = Vec::new();
    for row in rows {
        let (seq, ts, level, step_id, message) = row?;
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

/// Appends a batch: lines at or below the stored highest `seq` are
/// repeats and skipped; a line past highest + 1 is a gap, and it and the
/// rest are not stored (the robot resends from the answer). Returns the
/// highest `seq` stored.
pub fn append(conn: &mut Connection, session_id: i64, lines: &[LogLine]) -> Result<u64, DbError> {
    let tx = conn.transaction()?;
    let mut high = high_seq(&tx, session_id)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO session_logs (session_id, seq, ts, level, step_id, message)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for line in lines {
            if line.seq <= high {
                continue;
            }
            if line.seq != high + 1 {
                break;
            }
            insert.execute(params![
                session_id,
                line.seq as i64,
                line.ts.as_millisecond(),
                line.level.as_str(),
                line.step_id,
                line.message
            ])?;
            high = line.seq;
        }
    }
    tx.commit()?;
    Ok(high)
}

/// Appends the hub's own line after the robot's last (a `warn` with no
/// step): nothing the robot sends later can take its `seq`, since the hub
/// writes one only once the robot has said it has sent everything.
pub fn append_note(
    conn: &Connection,
    session_id: i64,
    message: &str,
    now_ms: i64,
) -> Result<u64, DbError> {
    let seq = high_seq(conn, session_id)? + 1;
    conn.exec_cached(
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

pub fn high_seq(conn: &Connection, session_id: i64) -> Result<u64, DbError> {
    let high: i64 = conn.row_cached(
        "SELECT COALESCE(MAX(seq), 0) FROM session_logs WHERE session_id = ?1",
        [session_id],
        |r| r.get(0),
    )?;
    Ok(high.max(0) as u64)
}

/// Bytes of log messages stored for a session (api/session_limits.rs).
pub fn stored_bytes(conn: &Connection, session_id: i64) -> Result<u64, DbError> {
    let bytes: i64 = conn.row_cached(
        "SELECT COALESCE(SUM(length(CAST(message AS BLOB))), 0) FROM session_logs WHERE session_id = ?1",
        [session_id],
        |r| r.get(0),
    )?;
    Ok(bytes.max(0) as u64)
}
