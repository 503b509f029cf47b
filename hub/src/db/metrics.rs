//! What `/metrics` reads from the database at each scrape: the fleet's
//! view, the same on every hub of a shared database.

use super::DbError;
use super::parse_json;
use super::sql::{Conn, params};

pub struct Snapshot {
    /// (status, workflow name, sessions).
    pub sessions: Vec<(String, String, u64)>,
    /// Queued sessions per workflow: (workflow name, the labels its robots
    /// must carry, how many, when the oldest was queued).
    pub queued: Vec<(String, Vec<String>, u64, i64)>,
    /// How long each session that started since the window began waited,
    /// in ms.
    pub pickups_ms: Vec<i64>,
}

pub fn snapshot(conn: &mut Conn<'_>, started_since_ms: i64) -> Result<Snapshot, DbError> {
    let sessions = conn.rows(
        "SELECT s.status, w.name, COUNT(*) FROM session_queues s
         JOIN workflows w ON w.id = s.workflow_id
         GROUP BY s.status, w.name",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get::<i64>(2)? as u64)),
    )?;
    let queued = conn
        .rows(
            "SELECT w.name, w.robot_labels, COUNT(*), MIN(s.created_at) FROM session_queues s
             JOIN workflows w ON w.id = s.workflow_id
             WHERE s.status = 'queued'
             GROUP BY w.id, w.name, w.robot_labels",
            params![],
            |r| {
                Ok((
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<i64>(2)? as u64,
                    r.get::<i64>(3)?,
                ))
            },
        )?
        .into_iter()
        .map(|(name, labels, n, oldest)| {
            let labels = parse_json(&format!("workflow {name}: robot_labels"), &labels)?;
            Ok((name, labels, n, oldest))
        })
        .collect::<Result<_, DbError>>()?;
    let pickups_ms = conn.rows(
        "SELECT started_at - created_at FROM session_queues
         WHERE started_at IS NOT NULL AND started_at >= ?1",
        params![started_since_ms],
        |r| r.get(0),
    )?;
    Ok(Snapshot {
        sessions,
        queued,
        pickups_ms,
    })
}
