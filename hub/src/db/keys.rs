//! Access keys. The secret is stored sealed (see `crate::secrets`); this
//! module only moves the sealed bytes.

use super::sql::{Conn, params};

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

pub fn insert(conn: &mut Conn<'_>, key: &StoredKey, now_ms: i64) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO access_keys (id, scopes, secret_nonce, secret_sealed, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![key.id, key.scopes, key.nonce, key.sealed, now_ms],
    )?;
    Ok(())
}

pub fn find(conn: &mut Conn<'_>, id: &str) -> Result<Option<StoredKey>, DbError> {
    conn.opt_row(
        "SELECT id, scopes, secret_nonce, secret_sealed FROM access_keys WHERE id = ?1",
        params![id],
        |r| {
            Ok(StoredKey {
                id: r.get(0)?,
                scopes: r.get(1)?,
                nonce: r.get(2)?,
                sealed: r.get(3)?,
            })
        },
    )
}

pub fn count(conn: &mut Conn<'_>) -> Result<u64, DbError> {
    conn.count("SELECT COUNT(*) FROM access_keys", params![])
}

pub fn list(conn: &mut Conn<'_>) -> Result<Vec<KeySummary>, DbError> {
    conn.rows(
        "SELECT id, scopes, created_at FROM access_keys ORDER BY created_at, id",
        params![],
        |r| {
            Ok(KeySummary {
                id: r.get(0)?,
                scopes: r.get(1)?,
                created_at: to_timestamp(r.get(2)?)?,
            })
        },
    )
}

/// Deletes a key; every token signed with it stops working at once, since
/// each request looks its key up. Returns whether the key existed.
pub fn delete(conn: &mut Conn<'_>, id: &str) -> Result<bool, DbError> {
    Ok(conn.execute("DELETE FROM access_keys WHERE id = ?1", params![id])? > 0)
}
