//! Registered robots and their heartbeats.

use super::Cached;
use rusqlite::{Connection, OptionalExtension, params};
use tasuki_protocol::{HostFacts, HostMetrics, RegisterRobot};

use super::{DbError, parse_json, to_timestamp};

/// What the robot protocol needs of a robot on every call.
#[derive(Debug, Clone)]
pub struct RobotRow {
    pub id: i64,
    pub name: String,
    pub instance_id: String,
    pub key_id: String,
    pub max_concurrency: u32,
}

/// Everything `GET /v1/robots` shows, before the live state is added.
pub struct RobotDetails {
    pub id: i64,
    pub name: String,
    pub labels: Vec<String>,
    pub version: String,
    pub max_concurrency: u32,
    pub host: HostFacts,
    pub metrics: Option<HostMetrics>,
    pub draining: bool,
    pub last_seen_at: Option<jiff::Timestamp>,
}

pub enum Registered {
    Ok(RobotRow),
    /// Another instance holds the name.
    Taken {
        holder_host: String,
        last_seen_at: Option<i64>,
    },
}

pub fn find(conn: &Connection, name: &str) -> Result<Option<RobotRow>, DbError> {
    Ok(conn
        .row_cached(
            "SELECT id, name, instance_id, key_id, max_concurrency FROM robots WHERE name = ?1",
            [name],
            |r| {
                Ok(RobotRow {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    instance_id: r.get(2)?,
                    key_id: r.get(3)?,
                    max_concurrency: r.get::<_, i64>(4)?.clamp(0, u32::MAX as i64) as u32,
                })
            },
        )
        .optional()?)
}

/// Registers `name`, or updates it when the same instance registers again
/// (a restart) or `replace` is set.
pub fn register(
    conn: &mut Connection,
    name: &str,
    key_id: &str,
    req: &RegisterRobot,
    now_ms: i64,
) -> Result<Registered, DbError> {
    let tx = conn.transaction()?;
    let labels = to_json(&req.labels)?;
    let host = to_json(&req.host)?;
    let existing: Option<(i64, String, String, Option<i64>)> = tx
        .row_cached(
            "SELECT id, instance_id, host, last_seen_at FROM robots WHERE name = ?1",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    match existing {
        Some((_, instance, host_json, last_seen))
            if instance != req.instance_id && !req.replace =>
        {
            let holder: HostFacts = parse_json("robot host", &host_json).unwrap_or_default();
            return Ok(Registered::Taken {
                holder_host: holder.hostname,
                last_seen_at: last_seen,
            });
        }
        Some((id, ..)) => {
            tx.exec_cached(
                "UPDATE robots SET instance_id = ?2, key_id = ?3, labels = ?4, version = ?5,
                        max_concurrency = ?6, host = ?7, draining = 0, last_seen_at = ?8
                 WHERE id = ?1",
                params![
                    id,
                    req.instance_id,
                    key_id,
                    labels,
                    req.version,
                    req.max_concurrency,
                    host,
                    now_ms
                ],
            )?;
        }
        None => {
            tx.exec_cached(
                "INSERT INTO robots (name, created_at, instance_id, key_id, labels, version,
                                     max_concurrency, host, last_seen_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?2)",
                params![
                    name,
                    now_ms,
                    req.instance_id,
                    key_id,
                    labels,
                    req.version,
                    req.max_concurrency,
                    host
                ],
            )?;
        }
    }
    let row = find(&tx, name)?.ok_or_else(|| DbError::Corrupt(format!("robot {name} vanished")))?;
    tx.commit()?;
    Ok(Registered::Ok(row))
}

/// Records a heartbeat.
pub fn heartbeat(
    conn: &Connection,
    robot_id: i64,
    metrics: Option<&HostMetrics>,
    draining: bool,
    now_ms: i64,
) -> Result<(), DbError> {
    let metrics = metrics.map(to_json).transpose()?;
    conn.exec_cached(
        "UPDATE robots SET last_seen_at = ?2, draining = ?3, metrics = COALESCE(?4, metrics)
         WHERE id = ?1",
        params![robot_id, now_ms, draining, metrics],
    )?;
    Ok(())
}

pub fn list(conn: &Connection) -> Result<Vec<RobotDetails>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, name, labels, version, max_concurrency, host, metrics, draining, last_seen_at
         FROM robots ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Option<String>>(6)?,
            r.get::<_, bool>(7)?,
            r.get::<_, Option<i64>>(8)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name, labels, version, max_concurrency, host, metrics, draining, last_seen) = row?;
        let what = |f: &str| format!("robot {name}: {f}");
        out.push(RobotDetails {
            id,
            labels: parse_json(&what("labels"), &labels)?,
            version,
            max_concurrency: max_concurrency.clamp(0, u32::MAX as i64) as u32,
            host: parse_json(&what("host"), &host)?,
            metrics: metrics
                .map(|m| parse_json(&what("metrics"), &m))
                .transpose()?,
            draining,
            last_seen_at: last_seen.map(to_timestamp).transpose()?,
            name,
        });
    }
    Ok(out)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, DbError> {
    serde_json::to_string(value).map_err(|e| DbError::Corrupt(e.to_string()))
}

/// The access key that registered robot `id` (api/robot/session.rs binds
/// lease calls to it).
pub fn key_of(conn: &Connection, id: i64) -> Result<Option<String>, DbError> {
    Ok(conn
        .row_cached("SELECT key_id FROM robots WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?)
}
