//! Secret params at rest. The values of params a workflow marks
//! `secret: true` never reach the database in clear: `params` holds `***`
//! in their place, and `secrets_sealed` holds them sealed with the master
//! key (as access-key secrets are, `crate::secrets`), with the session id
//! as associated data. They are opened only to build the lease a robot
//! receives, and a trigger drops the sealed blob when the session ends
//! (migrations 5 and 7), so an ended session keeps no secret at all. The
//! blob's old page images leave the write-ahead log at the next
//! checkpoint, which the serve loop runs within seconds of a purge
//! ([`checkpoint`]).

use super::sql::{Conn, params};
use serde_json::{Map, Value};

use super::{DbError, parse_json};
use crate::secrets::MasterKey;

/// What the database and every answer show in place of a secret value.
pub const MASK: &str = "***";

/// What sealed values belong to: the associated data they are sealed
/// with, so that a blob copied onto another row does not open.
#[derive(Clone, Copy)]
pub enum Owner {
    Session(i64),
    /// A schedule keeps its sessions' secret values until it is deleted.
    Schedule(i64),
    /// A webhook trigger's signing secret.
    Trigger(i64),
    /// A notification's signing secret.
    Notification(i64),
    /// A named credential's fields: its id, and its version, so that an
    /// older version's blob copied back does not open.
    Credential(i64, i64),
}

impl Owner {
    fn aad(self) -> String {
        match self {
            Owner::Session(id) => format!("session_queue {id} secret params"),
            Owner::Schedule(id) => format!("schedule {id} secret params"),
            Owner::Trigger(id) => format!("trigger {id} secret"),
            Owner::Notification(id) => format!("notification {id} secret"),
            Owner::Credential(id, version) => format!("credential {id} version {version} fields"),
        }
    }

    fn what(self) -> String {
        match self {
            Owner::Session(id) => format!("session queue {id}"),
            Owner::Schedule(id) => format!("schedule {id}"),
            Owner::Trigger(id) => format!("trigger {id}"),
            Owner::Notification(id) => format!("notification {id}"),
            Owner::Credential(id, _) => format!("credential {id}"),
        }
    }
}

/// Splits the secret values out of `params`, leaving `***` in their
/// place. `None` when no secret param was given.
pub fn split(
    params: &mut Map<String, Value>,
    secret_names: &[String],
) -> Option<Map<String, Value>> {
    let mut secrets = Map::new();
    for name in secret_names {
        if let Some(value) = params.get_mut(name) {
            secrets.insert(name.clone(), std::mem::replace(value, Value::from(MASK)));
        }
    }
    (!secrets.is_empty()).then_some(secrets)
}

pub fn seal(
    master: &MasterKey,
    owner: Owner,
    secrets: &Map<String, Value>,
) -> Result<Vec<u8>, DbError> {
    let plain = serde_json::to_vec(secrets).map_err(|e| DbError::Corrupt(e.to_string()))?;
    seal_bytes(master, owner, &plain)
}

/// Seals `plain` for `owner`'s row.
pub fn seal_bytes(master: &MasterKey, owner: Owner, plain: &[u8]) -> Result<Vec<u8>, DbError> {
    let sealed = master
        .seal(&owner.aad(), plain)
        .map_err(|e| DbError::Secrets(format!("{}: {e}", owner.what())))?;
    Ok(sealed.into_blob())
}

/// Opens what [`seal_bytes`] sealed for `owner`.
pub fn open_bytes(master: &MasterKey, owner: Owner, blob: &[u8]) -> Result<Vec<u8>, DbError> {
    master.open_blob(&owner.aad(), blob).map_err(|_| {
        DbError::Secrets(format!(
            "{}: the sealed secret does not open with the master key; is <db>.key the one \
             this database was created with?",
            owner.what()
        ))
    })
}

/// Puts the sealed values back into `params`: for a robot's lease, or a
/// schedule's new session.
pub fn open_into(
    master: &MasterKey,
    owner: Owner,
    blob: &[u8],
    params: &mut Map<String, Value>,
) -> Result<(), DbError> {
    let plain = open_bytes(master, owner, blob)?;
    let secrets: Map<String, Value> = serde_json::from_slice(&plain)
        .map_err(|e| DbError::Corrupt(format!("{}: secret params: {e}", owner.what())))?;
    params.extend(secrets);
    Ok(())
}

/// Rows an older hub stored with secret params in clear (migration 5 flags
/// them): a live session's are sealed, an ended one's are dropped. Runs at
/// every start, once the master key is at hand; returns how many rows
/// changed.
pub fn seal_rows_left_in_clear(conn: &mut Conn<'_>, master: &MasterKey) -> Result<usize, DbError> {
    let count = conn.transaction(|tx| seal_in_clear(tx, master))?;
    if count > 0 && !checkpoint(conn)? {
        tracing::warn!(
            "the database is busy; the clear values stay in the write-ahead log until the next \
             checkpoint"
        );
        conn.execute(
            "UPDATE secret_purges SET count = count + 1 WHERE id = 1",
            params![],
        )?;
    }
    Ok(count)
}

fn seal_in_clear(tx: &mut Conn<'_>, master: &MasterKey) -> Result<usize, DbError> {
    let rows: Vec<(i64, String, String, String)> = tx.rows(
        "SELECT id, status, params, secret_params FROM session_queues
         WHERE secrets_in_clear = 1",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    for (id, status, params_json, names_json) in &rows {
        let what = |f: &str| format!("session queue {id}: {f}");
        let mut params: Map<String, Value> = parse_json(&what("params"), params_json)?;
        let names: Vec<String> = parse_json(&what("secret_params"), names_json)?;
        let secrets = split(&mut params, &names);
        let live = matches!(status.as_str(), "queued" | "running" | "waiting");
        let sealed = match secrets {
            Some(secrets) if live => Some(seal(master, Owner::Session(*id), &secrets)?),
            _ => None,
        };
        let params_json =
            serde_json::to_string(&params).map_err(|e| DbError::Corrupt(e.to_string()))?;
        tx.execute(
            "UPDATE session_queues
             SET params = ?2, secrets_sealed = ?3, secrets_in_clear = 0
             WHERE id = ?1",
            params![id, params_json, sealed],
        )?;
    }
    Ok(rows.len())
}

pub fn purges(conn: &mut Conn<'_>) -> Result<i64, DbError> {
    conn.row(
        "SELECT count FROM secret_purges WHERE id = 1",
        params![],
        |r| r.get(0),
    )
}

/// Copies the write-ahead log into the database and empties it, so that
/// the old page images it holds (sealed secret params among them) are
/// gone from the disk; `secure_delete` has zeroed them in the database.
/// `false` when a reader kept the log from being emptied.
pub fn checkpoint(conn: &mut Conn<'_>) -> Result<bool, DbError> {
    // PostgreSQL has no such file to empty here: its old row versions go
    // with VACUUM (docs/security.md).
    let Some(sqlite) = conn.as_sqlite() else {
        return Ok(true);
    };
    let busy: i64 = sqlite.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    Ok(busy == 0)
}

/// Sessions holding sealed secret params: a new master key must not be
/// made while there are any.
pub fn sealed_count(conn: &mut Conn<'_>) -> Result<u64, DbError> {
    conn.count(
        "SELECT COUNT(*) FROM session_queues WHERE secrets_sealed IS NOT NULL",
        params![],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sealed_values_open_only_for_their_session() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::create(&dir.path().join("key")).unwrap();
        let mut params = json!({"who": "ann", "token": "s3cret"})
            .as_object()
            .unwrap()
            .clone();
        let secrets = split(&mut params, &["token".into(), "absent".into()]).unwrap();
        assert_eq!(
            Value::from(params.clone()),
            json!({"who": "ann", "token": MASK})
        );
        let blob = seal(&master, Owner::Session(7), &secrets).unwrap();
        assert!(!String::from_utf8_lossy(&blob).contains("s3cret"));
        let mut other = params.clone();
        assert!(open_into(&master, Owner::Session(8), &blob, &mut other).is_err());
        open_into(&master, Owner::Session(7), &blob, &mut params).unwrap();
        assert_eq!(
            Value::from(params),
            json!({"who": "ann", "token": "s3cret"})
        );
        // No secret param given: nothing to seal.
        let mut plain = json!({"who": "bo"}).as_object().unwrap().clone();
        assert!(split(&mut plain, &["token".into()]).is_none());
    }
}
