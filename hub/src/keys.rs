//! `tasuki-hub keys ...`: access keys, made and removed on the hub's own
//! machine. The secret is printed once and never again.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::json;
use tasuki_protocol::Scopes;

use crate::db::{keys, now_ms};
use crate::{secrets, store};

pub fn create(db_path: &Path, scopes: &str) -> anyhow::Result<()> {
    let scopes: Scopes = scopes.parse().context("--scopes")?;
    if scopes.is_empty() {
        bail!(
            "--scopes names no scope; give a space-separated list such as \"session_queue.write session_queue.read\""
        );
    }
    let (db, master) = store::open(db_path)?;
    let id = secrets::new_access_key_id()?;
    let secret = secrets::new_secret()?;
    let sealed = master.seal(&id, secret.as_bytes())?;
    let key = keys::StoredKey {
        id: id.clone(),
        scopes: scopes.to_string(),
        nonce: sealed.nonce,
        sealed: sealed.ciphertext,
    };
    db.with(|conn| keys::insert(conn, &key, now_ms()))?;
    println!(
        "{}",
        json!({"access_key_id": id, "secret_access_key": secret})
    );
    eprintln!(
        "created access key {id} with scopes: {scopes}\n\
         the secret is shown only this once; keep it safe"
    );
    Ok(())
}

pub fn list(db_path: &Path) -> anyhow::Result<()> {
    let (db, _) = store::open(db_path)?;
    let keys = db.with(|conn| keys::list(conn))?;
    let rows: Vec<_> = keys
        .iter()
        .map(|k| {
            json!({
                "access_key_id": k.id,
                "scopes": k.scopes,
                "created_at": tasuki_protocol::time::format(k.created_at),
            })
        })
        .collect();
    println!("{}", serde_json::Value::from(rows));
    Ok(())
}

pub fn delete(db_path: &Path, id: &str) -> anyhow::Result<()> {
    let (db, _) = store::open(db_path)?;
    if !db.with(|conn| keys::delete(conn, id))? {
        bail!("there is no access key `{id}` in {}", db_path.display());
    }
    eprintln!("deleted access key {id}; tokens signed with it no longer work");
    Ok(())
}
