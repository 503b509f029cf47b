//! Notifications out: where to POST a signed event when a session ends,
//! and each delivery's attempts (`crate::notify` sends them).
//!
//! Events are made by every hub's sweeper for sessions that ended since it
//! last looked ([`make_events`]): the sessions are locked and marked
//! `notified` in the transaction that stores their deliveries, so each
//! ending makes its events once whichever way it ended. Deliveries are
//! claimed for a while before they are sent ([`claim_due`]), so one hub
//! sends each attempt.

use serde_json::Value;
use tasuki_protocol::{Delivery, DeliveryStatus, Notification};

use super::secret_params::{Owner, open_bytes, seal_bytes};
use super::sql::{Conn, Dialect, Row, params};
use super::{DbError, parse_json, sessions, to_timestamp};
use crate::secrets::MasterKey;

pub struct NewNotification {
    pub workflow_id: Option<i64>,
    pub url: String,
    pub events: Vec<String>,
}

/// Sessions ended further back than this when a hub looks make no events.
const LOOK_BACK_MS: i64 = 10 * 60_000;

pub fn insert(
    conn: &mut Conn<'_>,
    n: &NewNotification,
    secret: &str,
    master: &MasterKey,
    now_ms: i64,
) -> Result<Notification, DbError> {
    let events = to_json(&n.events)?;
    conn.transaction(|tx| {
        let id: i64 = tx.row(
            "INSERT INTO notifications (workflow_id, url, events, secret_sealed, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
            params![n.workflow_id, n.url, events, Vec::<u8>::new(), now_ms],
            |r| r.get(0),
        )?;
        let sealed = seal_bytes(master, Owner::Notification(id), secret.as_bytes())?;
        tx.execute(
            "UPDATE notifications SET secret_sealed = ?2 WHERE id = ?1",
            params![id, sealed],
        )?;
        get(tx, id)?.ok_or_else(|| DbError::Corrupt(format!("notification {id} vanished")))
    })
}

const COLUMNS: &str = "id, url, events, workflow_id, created_at";

pub fn get(conn: &mut Conn<'_>, id: i64) -> Result<Option<Notification>, DbError> {
    conn.opt_row(
        &format!("SELECT {COLUMNS} FROM notifications WHERE id = ?1"),
        params![id],
        read_notification,
    )
}

pub fn list(conn: &mut Conn<'_>) -> Result<Vec<Notification>, DbError> {
    conn.rows(
        &format!("SELECT {COLUMNS} FROM notifications ORDER BY id"),
        params![],
        read_notification,
    )
}

/// Deletes a notification and its deliveries.
pub fn delete(conn: &mut Conn<'_>, id: i64) -> Result<bool, DbError> {
    conn.transaction(|tx| {
        tx.execute(
            "DELETE FROM notification_deliveries WHERE notification_id = ?1",
            params![id],
        )?;
        Ok(tx.execute("DELETE FROM notifications WHERE id = ?1", params![id])? > 0)
    })
}

/// Where a delivery goes, and the secret that signs it.
pub fn target(
    conn: &mut Conn<'_>,
    id: i64,
    master: &MasterKey,
) -> Result<Option<(String, Vec<u8>)>, DbError> {
    let row: Option<(String, Vec<u8>)> = conn.opt_row(
        "SELECT url, secret_sealed FROM notifications WHERE id = ?1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    row.map(|(url, sealed)| {
        let secret = open_bytes(master, Owner::Notification(id), &sealed)?;
        Ok((url, secret))
    })
    .transpose()
}

/// Queues a delivery of `payload` now.
pub fn queue(
    conn: &mut Conn<'_>,
    notification_id: i64,
    session_id: Option<i64>,
    event: &str,
    payload: &Value,
    now_ms: i64,
) -> Result<i64, DbError> {
    conn.row(
        "INSERT INTO notification_deliveries
             (notification_id, session_id, event, payload, status, next_attempt_at, created_at)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5) RETURNING id",
        params![
            notification_id,
            session_id,
            event,
            to_json(payload)?,
            now_ms
        ],
        |r| r.get(0),
    )
}

/// Sessions one batch of [`make_events`] looks at.
const BATCH: usize = 200;

/// Makes the events of sessions that ended lately and have none yet, a
/// batch of them; returns how many deliveries were queued, and whether
/// more sessions may be waiting (the batch was full).
pub fn make_events(conn: &mut Conn<'_>, now_ms: i64) -> Result<(usize, bool), DbError> {
    const ENDED: &str = "FROM session_queues
         WHERE notified IS NULL AND ended_at >= ?1
           AND status IN ('success', 'error', 'cancelled')";
    // A look first, outside any transaction: most seconds nothing ended,
    // and SQLite's one writer need not be taken for that.
    if !conn.exists(ENDED, params![now_ms - LOOK_BACK_MS])? {
        return Ok((0, false));
    }
    let lock = match conn.dialect() {
        Dialect::Sqlite => "",
        Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
    };
    conn.transaction(|tx| {
        let ended: Vec<i64> = tx.rows(
            &format!("SELECT id {ENDED} ORDER BY id LIMIT {BATCH} {lock}"),
            params![now_ms - LOOK_BACK_MS],
            |r| r.get(0),
        )?;
        let full = ended.len() == BATCH;
        if ended.is_empty() {
            return Ok((0, false));
        }
        let targets = list(tx)?;
        let mut queued = 0;
        for id in ended {
            tx.execute(
                "UPDATE session_queues SET notified = 1 WHERE id = ?1",
                params![id],
            )?;
            if targets.is_empty() {
                continue;
            }
            let Some(session) = sessions::get(tx, id)? else {
                continue;
            };
            let status = session.status.as_str();
            let payload = serde_json::json!({
                "event": format!("session.{status}"),
                // The session as the API shows it: secret params as ***.
                "session": session,
            });
            for n in &targets {
                if n.events.iter().any(|e| e == status)
                    && n.workflow_id.is_none_or(|w| w == session.workflow.id)
                {
                    queue(
                        tx,
                        n.id,
                        Some(id),
                        &format!("session.{status}"),
                        &payload,
                        now_ms,
                    )?;
                    queued += 1;
                }
            }
        }
        Ok((queued, full))
    })
}

/// A delivery to attempt now.
pub struct Due {
    pub id: i64,
    pub notification_id: i64,
    pub event: String,
    pub payload: String,
    pub attempts: u32,
}

/// Takes up to `limit` deliveries due by `now_ms` for this hub to send,
/// holding them until `held_until_ms` (another hub takes them after that,
/// should this one die sending).
pub fn claim_due(
    conn: &mut Conn<'_>,
    now_ms: i64,
    held_until_ms: i64,
    limit: i64,
) -> Result<Vec<Due>, DbError> {
    const DUE: &str = "FROM notification_deliveries
         WHERE status = 'pending' AND next_attempt_at <= ?1";
    // A look first, outside any transaction (see `make_events`).
    if !conn.exists(DUE, params![now_ms])? {
        return Ok(Vec::new());
    }
    let lock = match conn.dialect() {
        Dialect::Sqlite => "",
        Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
    };
    conn.transaction(|tx| {
        let due = tx.rows(
            &format!(
                "SELECT id, notification_id, event, payload, attempts {DUE}
                 ORDER BY next_attempt_at LIMIT ?2 {lock}"
            ),
            params![now_ms, limit],
            |r| {
                Ok(Due {
                    id: r.get(0)?,
                    notification_id: r.get(1)?,
                    event: r.get(2)?,
                    payload: r.get(3)?,
                    attempts: r.get::<i64>(4)? as u32,
                })
            },
        )?;
        for d in &due {
            tx.execute(
                "UPDATE notification_deliveries SET next_attempt_at = ?2 WHERE id = ?1",
                params![d.id, held_until_ms],
            )?;
        }
        Ok(due)
    })
}

/// What one attempt met.
pub struct Attempt {
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// `None`: delivered, or given up; else when to try again.
    pub retry_at_ms: Option<i64>,
    pub delivered: bool,
}

pub fn record(conn: &mut Conn<'_>, id: i64, a: &Attempt, now_ms: i64) -> Result<(), DbError> {
    let status = if a.delivered {
        "delivered"
    } else if a.retry_at_ms.is_some() {
        "pending"
    } else {
        "failed"
    };
    conn.execute(
        "UPDATE notification_deliveries
         SET status = ?2, attempts = attempts + 1, next_attempt_at = COALESCE(?3, next_attempt_at),
             last_status_code = ?4, last_error = ?5,
             delivered_at = CASE WHEN ?2 = 'delivered' THEN ?6 ELSE delivered_at END
         WHERE id = ?1",
        params![
            id,
            status,
            a.retry_at_ms,
            a.status_code.map(i64::from),
            a.error.clone(),
            now_ms
        ],
    )?;
    Ok(())
}

/// The earliest time a pending delivery is due.
pub fn earliest_due(conn: &mut Conn<'_>) -> Result<Option<i64>, DbError> {
    conn.row(
        "SELECT MIN(next_attempt_at) FROM notification_deliveries WHERE status = 'pending'",
        params![],
        |r| r.get(0),
    )
}

/// A notification's deliveries, newest first.
pub fn deliveries(
    conn: &mut Conn<'_>,
    notification_id: i64,
    limit: i64,
    offset: i64,
) -> Result<Vec<Delivery>, DbError> {
    conn.rows(
        "SELECT id, notification_id, session_id, event, status, attempts, next_attempt_at,
                last_status_code, last_error, created_at, delivered_at
         FROM notification_deliveries WHERE notification_id = ?1
         ORDER BY id DESC LIMIT ?2 OFFSET ?3",
        params![notification_id, limit, offset],
        read_delivery,
    )
}

fn read_delivery(r: &Row<'_>) -> Result<Delivery, DbError> {
    let id: i64 = r.get(0)?;
    let status: String = r.get(4)?;
    let status = match status.as_str() {
        "pending" => DeliveryStatus::Pending,
        "delivered" => DeliveryStatus::Delivered,
        "failed" => DeliveryStatus::Failed,
        other => return Err(DbError::Corrupt(format!("delivery {id}: status {other}"))),
    };
    let time = |ms: Option<i64>| ms.map(to_timestamp).transpose();
    Ok(Delivery {
        id,
        notification_id: r.get(1)?,
        session_id: r.get(2)?,
        event: r.get(3)?,
        status,
        attempts: r.get::<i64>(5)? as u32,
        next_attempt_at: if status == DeliveryStatus::Pending {
            time(r.get(6)?)?
        } else {
            None
        },
        last_status_code: r.get::<Option<i64>>(7)?.map(|c| c as u16),
        last_error: r.get(8)?,
        created_at: to_timestamp(r.get(9)?)?,
        delivered_at: time(r.get(10)?)?,
    })
}

fn read_notification(r: &Row<'_>) -> Result<Notification, DbError> {
    let id: i64 = r.get(0)?;
    Ok(Notification {
        id,
        url: r.get(1)?,
        events: parse_json(&format!("notification {id}: events"), &r.get::<String>(2)?)?,
        workflow_id: r.get(3)?,
        secret: None,
        created_at: to_timestamp(r.get(4)?)?,
    })
}

fn to_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, DbError> {
    serde_json::to_string(value).map_err(|e| DbError::Corrupt(e.to_string()))
}
