//! Files a session keeps: screenshots, downloads. Kept in the database
//! beside the session, so that a backup of the one file holds everything.

use super::Cached;
use rusqlite::{Connection, OptionalExtension, params};

use super::DbError;

pub struct Artifact {
    pub name: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

/// Stores an artifact under its name; a repeat with the same content is a
/// no-op, new content replaces the old.
pub fn put(
    conn: &Connection,
    session_id: i64,
    artifact: &Artifact,
    sha256: &str,
    now_ms: i64,
) -> Result<(), DbError> {
    conn.exec_cached(
        "INSERT INTO session_artifacts (session_id, name, sha256, content_type, data, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (session_id, name) DO UPDATE
         SET sha256 = excluded.sha256, content_type = excluded.content_type,
             data = excluded.data, created_at = excluded.created_at
         WHERE sha256 <> excluded.sha256",
        params![
            session_id,
            artifact.name,
            sha256,
            artifact.content_type,
            artifact.data,
            now_ms
        ],
    )?;
    Ok(())
}

pub fn get(conn: &Connection, session_id: i64, name: &str) -> Result<Option<Artifact>, DbError> {
    Ok(conn
        .row_cached(
            "SELECT name, content_type, data FROM session_artifacts
             WHERE session_id = ?1 AND name = ?2",
            params![session_id, name],
            |r| {
                Ok(Artifact {
                    name: r.get(0)?,
                    content_type: r.get(1)?,
                    data: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// `(name, size, sha256)` of each artifact, by name.
pub fn list(conn: &Connection, session_id: i64) -> Result<Vec<(String, u64, String)>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, length(data), sha256 FROM session_artifacts
         WHERE session_id = ?1 ORDER BY name",
    )?;
    let rows = stmt
        .query_map([session_id], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// How many artifacts a session has and their total bytes, leaving out
/// `name` (api/session_limits.rs: a new version replaces it).
pub fn usage_except(conn: &Connection, session_id: i64, name: &str) -> Result<(u64, u64), DbError> {
    let (count, bytes): (i64, i64) = conn.row_cached(
        "SELECT COUNT(*), COALESCE(SUM(length(data)), 0) FROM session_artifacts
         WHERE session_id = ?1 AND name <> ?2",
        params![session_id, name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((count.max(0) as u64, bytes.max(0) as u64))
}
