//! The audit log: who changed what on the hub. Each change is recorded by
//! the call that made it, with the access key that asked (or `operator`,
//! the command line on the hub's machine); `GET /v1/audit_log` reads it.
//! Nothing in it is secret: details name things, never values.

use serde_json::Value;
use tasuki_protocol::AuditEntry;

use super::sql::{Conn, params};
use super::{DbError, parse_json, to_timestamp};

/// The actor of changes made with the `tasuki-hub` command line.
pub const OPERATOR: &str = "operator";

pub fn record(
    conn: &mut Conn<'_>,
    actor: &str,
    action: &str,
    subject: &str,
    detail: Value,
    now_ms: i64,
) -> Result<(), DbError> {
    let detail = serde_json::to_string(&detail).map_err(|e| DbError::Corrupt(e.to_string()))?;
    conn.execute(
        "INSERT INTO audit_log (at, actor, action, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![now_ms, actor, action, subject, detail],
    )?;
    Ok(())
}

/// Newest first.
pub fn page(conn: &mut Conn<'_>, limit: i64, offset: i64) -> Result<Vec<AuditEntry>, DbError> {
    conn.rows(
        "SELECT id, at, actor, action, subject, detail FROM audit_log
         ORDER BY id DESC LIMIT ?1 OFFSET ?2",
        params![limit, offset],
        |r| {
            let id: i64 = r.get(0)?;
            Ok(AuditEntry {
                id,
                at: to_timestamp(r.get(1)?)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                subject: r.get(4)?,
                detail: parse_json(&format!("audit entry {id}"), &r.get::<String>(5)?)?,
            })
        },
    )
}
