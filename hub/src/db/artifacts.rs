//! Files a session keeps: screenshots, downloads. Kept in the database
//! beside the session, so that a backup of the one file holds everything.

use super::sql::{Conn, params};

use super::DbError;

pub struct Artifact {
    pub name: String,
    pub content_type: String,
    pub data: Vec<u8>,
}

/// Stores an artifact under its name; a repeat with the same content is a
/// no-op, new content replaces the old.
pub fn put(
    conn: &mut Conn<'_>,
    session_id: i64,
    artifact: &Artifact,
    sha256: &str,
    now_ms: i64,
) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO session_artifacts (session_id, name, sha256, content_type, data, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (session_id, name) DO UPDATE
         SET sha256 = excluded.sha256, content_type = excluded.content_type,
             data = excluded.data, created_at = excluded.created_at
         WHERE session_artifacts.sha256 <> excluded.sha256",
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

pub fn get(conn: &mut Conn<'_>, session_id: i64, name: &str) -> Result<Option<Artifact>, DbError> {
    conn.opt_row(
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
}

/// `(name, size, sha256)` of each artifact, by name.
pub fn list(conn: &mut Conn<'_>, session_id: i64) -> Result<Vec<(String, u64, String)>, DbError> {
    conn.rows(
        "SELECT name, octet_length(data), sha256 FROM session_artifacts
         WHERE session_id = ?1 ORDER BY name",
        params![session_id],
        |r| Ok((r.get(0)?, r.get::<i64>(1)?.max(0) as u64, r.get(2)?)),
    )
}

/// How many artifacts a session has and their total bytes, leaving out
/// `name` (api/session_limits.rs: a new version replaces it).
pub fn usage_except(
    conn: &mut Conn<'_>,
    session_id: i64,
    name: &str,
) -> Result<(u64, u64), DbError> {
    let (count, bytes): (i64, i64) = conn.row(
        "SELECT COUNT(*), CAST(COALESCE(SUM(octet_length(data)), 0) AS BIGINT) FROM session_artifacts
         WHERE session_id = ?1 AND name <> ?2",
        params![session_id, name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((count.max(0) as u64, bytes.max(0) as u64))
}
