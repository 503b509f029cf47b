//! Public API calls per access key and clock minute, summed over every hub
//! of a shared database (`api/quota.rs` decides with them). Only hubs on
//! PostgreSQL write here; the one hub of a SQLite file counts in memory.
//! The table is UNLOGGED there: a crash of the database server forgets the
//! current minute's counts, which only ever errs toward letting calls
//! through.

use super::DbError;
use super::sql::{Conn, params};

/// Adds `calls` made on this hub to `key_id`'s count for `minute` (minutes
/// since the Unix epoch) and returns the count every hub has added.
pub fn add(conn: &mut Conn<'_>, key_id: &str, minute: i64, calls: i64) -> Result<u64, DbError> {
    let total: i64 = conn.row(
        "INSERT INTO api_calls (key_id, minute, calls) VALUES (?1, ?2, ?3)
         ON CONFLICT (key_id, minute) DO UPDATE SET calls = api_calls.calls + EXCLUDED.calls
         RETURNING calls",
        params![key_id, minute, calls],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(total).unwrap_or(0))
}

/// Forgets the minutes before `minute`.
pub fn forget_before(conn: &mut Conn<'_>, minute: i64) -> Result<u64, DbError> {
    conn.execute("DELETE FROM api_calls WHERE minute < ?1", params![minute])
}
