//! Access keys. The secret is stored sealed (see `crate::secrets`); this
//! module only moves the sealed bytes.

use super::sql::{Conn, params};

use super::{DbError, parse_json, to_timestamp};

pub struct StoredKey {
    pub id: String,
    /// The space-separated scope names the key was created with.
    pub scopes: String,
    pub nonce: Vec<u8>,
    pub sealed: Vec<u8>,
    /// The labels its robots may carry (`keys create --robot-labels`);
    /// `None`: any.
    pub robot_labels: Option<Vec<String>>,
}

pub struct KeySummary {
    pub id: String,
    pub scopes: String,
    pub created_at: jiff::Timestamp,
    pub robot_labels: Option<Vec<String>>,
}

pub fn insert(conn: &mut Conn<'_>, key: &StoredKey, now_ms: i64) -> Result<(), DbError> {
    let labels = key
        .robot_labels
        .as_ref()
        .map(|l| serde_json::Value::from(l.clone()).to_string());
    conn.execute(
        "INSERT INTO access_keys (id, scopes, secret_nonce, secret_sealed, created_at,
                                  robot_labels)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![key.id, key.scopes, key.nonce, key.sealed, now_ms, labels],
    )?;
    Ok(())
}

/// A key's `robot_labels` column.
fn labels_of(id: &str, stored: Option<String>) -> Result<Option<Vec<String>>, DbError> {
    stored
        .map(|text| parse_json(&format!("access key {id}: robot_labels"), &text))
        .transpose()
}

pub fn find(conn: &mut Conn<'_>, id: &str) -> Result<Option<StoredKey>, DbError> {
    conn.opt_row(
        "SELECT id, scopes, secret_nonce, secret_sealed, robot_labels FROM access_keys
         WHERE id = ?1",
        params![id],
        |r| {
            let id: String = r.get(0)?;
            Ok(StoredKey {
                scopes: r.get(1)?,
                nonce: r.get(2)?,
                sealed: r.get(3)?,
                robot_labels: labels_of(&id, r.get(4)?)?,
                id,
            })
        },
    )
}

/// The labels the robots of key `id` may carry: `None` when any. A key
/// deleted meanwhile may give none.
pub fn robot_labels_of(conn: &mut Conn<'_>, id: &str) -> Result<Option<Vec<String>>, DbError> {
    let stored: Option<Option<String>> = conn.opt_row(
        "SELECT robot_labels FROM access_keys WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )?;
    match stored {
        None => Ok(Some(Vec::new())),
        Some(stored) => labels_of(id, stored),
    }
}

pub fn count(conn: &mut Conn<'_>) -> Result<u64, DbError> {
    conn.count("SELECT COUNT(*) FROM access_keys", params![])
}

pub fn list(conn: &mut Conn<'_>) -> Result<Vec<KeySummary>, DbError> {
    conn.rows(
        "SELECT id, scopes, created_at, robot_labels FROM access_keys ORDER BY created_at, id",
        params![],
        |r| {
            let id: String = r.get(0)?;
            Ok(KeySummary {
                scopes: r.get(1)?,
                created_at: to_timestamp(r.get(2)?)?,
                robot_labels: labels_of(&id, r.get(3)?)?,
                id,
            })
        },
    )
}

/// Deletes a key; every token signed with it stops working at once, since
/// each request looks its key up. Returns whether the key existed.
pub fn delete(conn: &mut Conn<'_>, id: &str) -> Result<bool, DbError> {
    Ok(conn.execute("DELETE FROM access_keys WHERE id = ?1", params![id])? > 0)
}
