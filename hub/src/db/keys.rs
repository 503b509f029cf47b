//! Access keys. The secret is stored sealed (see `crate::secrets`); this
//! module only moves the sealed bytes.

use super::Cached;
use rusqlite::{Connection, OptionalExtension, params};

use super::{DbError, to_timestamp};

pub struct StoredKey {
    pub id: String,
    /// The space-separated scope names the key was created with.
    pub scopes: String,
    pub nonce: Vec<u8>,
    pub sealed: Vec<u8>,
}

pub struct KeySummary {
    pub id: String,
    pub scopes: String,
    pub created_at: jiff::Timestamp,
}

pub fn insert(conn: &Connection, key: &StoredKey, now_ms: i64) -> Result<(), DbError> {
    conn.exec_cached(
        "INSERT INTO access_keys (id, scopes, secret_nonce, secret_sealed, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![key.id, key.scopes, key.nonce, key.sealed, now_ms],
    )?;
    Ok(())
}

pub fn find(conn: &Connection, id: &str) -> Result<Option<StoredKey>, DbError> {
    Ok(conn
        .row_cached(
            "SELECT id, scopes, secret_nonce, secret_sealed FROM access_keys WHERE id = ?1",
            [id],
            |r| {
                Ok(StoredKey {
                    id: r.get(0)?,
                    scopes: r.get(1)?,
                    nonce: r.get(2)?,
                    sealed: r.get(3)?,
                })
            },
        )
        .optional()?)
}

pub fn count(conn: &Connection) -> Result<u64, DbError> {
    super::count(conn, "SELECT COUNT(*) FROM access_keys", [])
}

pub fn list(conn: &Connection) -> Result<Vec<KeySummary>, DbError> {
    let mut stmt = conn
        .prepare_cached("SELECT id, scopes, created_at FROM access_keys ORDER BY created_at, id")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    rows.map(|row| {
        let (id, scopes, created) = row?;
        Ok(KeySummary {
            id,
            scopes,
            created_at: to_timestamp(created)?,
        })
    })
    .collect()
}

/// Deletes a key; every token signed with it stops working at once, since
/// each request looks its key up. Returns whether the key existed.
pub fn delete(conn: &Connection, id: &str) -> Result<bool, DbError> {
    Ok(conn.exec_cached("DELETE FROM access_keys WHERE id = ?1", [id])? > 0)
}
