//! Webhook triggers: a workflow's URL whose signed requests queue one of
//! its sessions (`api/triggers.rs` checks the signature). The signing
//! secret is sealed with the master key (the trigger's id as associated
//! data) and opened only to check a request; signatures taken within the
//! replay window are recorded, so each is taken once, by any hub.

use serde_json::{Map, Value};

use super::secret_params::{Owner, open_bytes, seal_bytes};
use super::sql::{Conn, params};
use super::{DbError, parse_json};
use crate::secrets::MasterKey;

#[derive(Debug, Clone)]
pub struct StoredTrigger {
    pub id: i64,
    pub workflow_id: i64,
    /// Param name → JSON Pointer into a request's body.
    pub mapping: Map<String, Value>,
    pub created_at: i64,
}

pub fn insert(
    conn: &mut Conn<'_>,
    workflow_id: i64,
    mapping: &Map<String, Value>,
    secret: &str,
    master: &MasterKey,
    now_ms: i64,
) -> Result<StoredTrigger, DbError> {
    let mapping_json =
        serde_json::to_string(mapping).map_err(|e| DbError::Corrupt(e.to_string()))?;
    conn.transaction(|tx| {
        // The sealed secret names the row's id: a placeholder until then,
        // in the same transaction.
        let id: i64 = tx.row(
            "INSERT INTO triggers (workflow_id, mapping, secret_sealed, created_at)
             VALUES (?1, ?2, ?3, ?4) RETURNING id",
            params![workflow_id, mapping_json, Vec::<u8>::new(), now_ms],
            |r| r.get(0),
        )?;
        let sealed = seal_bytes(master, Owner::Trigger(id), secret.as_bytes())?;
        tx.execute(
            "UPDATE triggers SET secret_sealed = ?2 WHERE id = ?1",
            params![id, sealed],
        )?;
        Ok(StoredTrigger {
            id,
            workflow_id,
            mapping: mapping.clone(),
            created_at: now_ms,
        })
    })
}

/// The trigger and its signing secret.
pub fn get(
    conn: &mut Conn<'_>,
    id: i64,
    master: &MasterKey,
) -> Result<Option<(StoredTrigger, Vec<u8>)>, DbError> {
    let row = conn.opt_row(
        "SELECT id, workflow_id, mapping, created_at, secret_sealed FROM triggers WHERE id = ?1",
        params![id],
        |r| Ok((read_row(r)?, r.get::<Vec<u8>>(4)?)),
    )?;
    let Some((trigger, sealed)) = row else {
        return Ok(None);
    };
    let secret = open_bytes(master, Owner::Trigger(id), &sealed)?;
    Ok(Some((trigger, secret)))
}

pub fn of_workflow(conn: &mut Conn<'_>, workflow_id: i64) -> Result<Vec<StoredTrigger>, DbError> {
    conn.rows(
        "SELECT id, workflow_id, mapping, created_at FROM triggers
         WHERE workflow_id = ?1 ORDER BY id",
        params![workflow_id],
        read_row,
    )
}

pub fn delete(conn: &mut Conn<'_>, id: i64) -> Result<bool, DbError> {
    conn.execute(
        "DELETE FROM trigger_deliveries WHERE trigger_id = ?1",
        params![id],
    )?;
    Ok(conn.execute("DELETE FROM triggers WHERE id = ?1", params![id])? > 0)
}

/// Records a request's signature; `false` if it was taken before (a
/// replay). Signatures older than `forget_before_ms` are dropped first:
/// requests that old are refused for their time anyway.
pub fn first_delivery(
    conn: &mut Conn<'_>,
    trigger_id: i64,
    signature: &str,
    now_ms: i64,
    forget_before_ms: i64,
) -> Result<bool, DbError> {
    conn.execute(
        "DELETE FROM trigger_deliveries WHERE trigger_id = ?1 AND at < ?2",
        params![trigger_id, forget_before_ms],
    )?;
    Ok(conn.execute(
        "INSERT INTO trigger_deliveries (trigger_id, signature, at) VALUES (?1, ?2, ?3)
         ON CONFLICT (trigger_id, signature) DO NOTHING",
        params![trigger_id, signature, now_ms],
    )? == 1)
}

/// Takes back [`first_delivery`]'s record of a request that queued
/// nothing after all (its workflow's concurrency policy refused it), so
/// that the same signed request may be sent again.
pub fn forget_delivery(
    conn: &mut Conn<'_>,
    trigger_id: i64,
    signature: &str,
) -> Result<(), DbError> {
    conn.execute(
        "DELETE FROM trigger_deliveries WHERE trigger_id = ?1 AND signature = ?2",
        params![trigger_id, signature],
    )?;
    Ok(())
}

fn read_row(r: &super::sql::Row<'_>) -> Result<StoredTrigger, DbError> {
    let id: i64 = r.get(0)?;
    Ok(StoredTrigger {
        id,
        workflow_id: r.get(1)?,
        mapping: parse_json(&format!("trigger {id}: mapping"), &r.get::<String>(2)?)?,
        created_at: r.get(3)?,
    })
}
