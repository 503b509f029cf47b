//! `tasuki-hub keys ...`: access keys, made and removed on the hub's own
//! machine. The secret is printed once and never again.

use anyhow::{Context, bail};
use serde_json::json;
use tasuki_protocol::robot::{MAX_LABELS, check_label};
use tasuki_protocol::{Scope, Scopes};

use crate::db::{audit, keys, now_ms, workflow_names};
use crate::secrets;
use crate::store::{self, StoreArgs};

/// `robot_labels`: `--robot-labels`, the labels the key's robots may
/// carry (space- or comma-separated; `None`: any).
pub async fn create(
    store: &StoreArgs,
    scopes: &str,
    robot_labels: Option<&str>,
) -> anyhow::Result<()> {
    let scopes: Scopes = scopes.parse().context("--scopes")?;
    if scopes.is_empty() {
        bail!(
            "--scopes names no scope; give a space-separated list such as \"session_queue.write session_queue.read\""
        );
    }
    let robot_labels = robot_labels.map(parse_robot_labels).transpose()?;
    if robot_labels.is_some() && !scopes.contains(Scope::Robot) {
        bail!(
            "--robot-labels limits the labels of the key's robots, and the key has no `robot` \
             scope to register any; add it to --scopes, or leave --robot-labels out"
        );
    }
    let (db, master) = store::open(store).await?;
    let id = secrets::new_access_key_id()?;
    let secret = secrets::new_secret()?;
    let sealed = master.seal(&id, secret.as_bytes())?;
    let key = keys::StoredKey {
        id: id.clone(),
        scopes: scopes.to_string(),
        nonce: sealed.nonce,
        sealed: sealed.ciphertext,
        robot_labels: robot_labels.clone(),
    };
    let scopes_shown = scopes.to_string();
    db.call(move |conn| {
        conn.transaction(|tx| {
            let now = now_ms();
            keys::insert(tx, &key, now)?;
            let subject = format!("key {}", key.id);
            let detail = json!({"scopes": scopes_shown, "robot_labels": key.robot_labels});
            audit::record(tx, audit::OPERATOR, "key.create", &subject, detail, now)
        })
    })
    .await?;
    println!(
        "{}",
        json!({"access_key_id": id, "secret_access_key": secret})
    );
    eprintln!(
        "created access key {id} with scopes: {scopes}\n\
         the secret is shown only this once; keep it safe"
    );
    if let Some(labels) = &robot_labels {
        eprintln!(
            "its robots may carry only these labels: {}",
            if labels.is_empty() {
                "none".to_string()
            } else {
                labels.join(", ")
            }
        );
    }
    Ok(())
}

/// `--robot-labels`: labels separated by spaces or commas, each a valid
/// robot label; none at all (`""`) means the key's robots carry none.
fn parse_robot_labels(text: &str) -> anyhow::Result<Vec<String>> {
    let mut labels: Vec<String> = Vec::new();
    for label in text.split([' ', ',']).filter(|l| !l.is_empty()) {
        check_label(label).map_err(|e| anyhow::anyhow!("--robot-labels: `{label}`: {e}"))?;
        if !labels.iter().any(|l| l == label) {
            labels.push(label.to_string());
        }
    }
    if labels.len() > MAX_LABELS {
        bail!("--robot-labels: at most {MAX_LABELS} labels");
    }
    Ok(labels)
}

/// Fails, saying what to do, unless the access key `key_id` exists and
/// has `scope`, without which it could not `purpose` (for messages).
pub async fn require_scope(
    db: &crate::db::Db,
    store: &StoreArgs,
    key_id: &str,
    scope: Scope,
    purpose: &str,
) -> anyhow::Result<()> {
    let id = key_id.to_owned();
    let Some(key) = db.call(move |conn| keys::find(conn, &id)).await? else {
        bail!(
            "there is no access key `{key_id}` in {}; `tasuki-hub keys list` shows them",
            store.db
        );
    };
    let scopes: Scopes = key
        .scopes
        .parse()
        .with_context(|| format!("the stored scopes of access key `{key_id}`"))?;
    if !scopes.contains(scope) {
        bail!(
            "the access key `{key_id}` does not have the `{scope}` scope (it has: {scopes}), so \
             it could not {purpose}; create one with `tasuki-hub keys create --scopes {scope}`"
        );
    }
    Ok(())
}

pub async fn list(store: &StoreArgs) -> anyhow::Result<()> {
    let (db, _) = store::open(store).await?;
    let keys = db.call(keys::list).await?;
    let rows: Vec<_> = keys
        .iter()
        .map(|k| {
            json!({
                "access_key_id": k.id,
                "scopes": k.scopes,
                "created_at": tasuki_protocol::time::format(k.created_at),
                "robot_labels": k.robot_labels,
            })
        })
        .collect();
    println!("{}", serde_json::Value::from(rows));
    Ok(())
}

pub async fn delete(store: &StoreArgs, id: &str) -> anyhow::Result<()> {
    let (db, _) = store::open(store).await?;
    let key_id = id.to_owned();
    let (deleted, names) = db
        .call(move |conn| {
            conn.transaction(|tx| {
                let deleted = keys::delete(tx, &key_id)?;
                let names = workflow_names::names_of(tx, &key_id)?;
                if deleted {
                    let subject = format!("key {key_id}");
                    audit::record(
                        tx,
                        audit::OPERATOR,
                        "key.delete",
                        &subject,
                        json!({}),
                        now_ms(),
                    )?;
                }
                Ok((deleted, names))
            })
        })
        .await?;
    if !deleted {
        bail!("there is no access key `{id}` in {}", store.db);
    }
    eprintln!("deleted access key {id}; tokens signed with it no longer work");
    if !names.is_empty() {
        // Still the deleted key's: its workflows go on counting as the
        // names', and nobody registers newer ones until they are moved.
        eprintln!(
            "it owns {} workflow name(s), which stay its own: {}\nto let another key register \
             newer workflows of one: tasuki-hub workflows transfer NAME --to-key KEY",
            names.len(),
            names.join(", ")
        );
    }
    Ok(())
}
