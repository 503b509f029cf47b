//! `tasuki-hub workflows ...`: what only the hub's operator may do to a
//! workflow name. A name belongs to the access key that first registered
//! it (db/workflows.rs `claim_name`); moving it to another key is an
//! operator's decision, never a key's.

use anyhow::bail;
use serde_json::json;
use tasuki_protocol::Scope;

use crate::db::{audit, now_ms, workflows};
use crate::store::{self, StoreArgs};

pub async fn transfer(store: &StoreArgs, name: &str, to_key: &str) -> anyhow::Result<()> {
    let (db, _) = store::open(store).await?;
    crate::keys::require_scope(
        &db,
        store,
        to_key,
        Scope::WorkflowWrite,
        "register workflows",
    )
    .await?;
    let (workflow_name, key_id) = (name.to_owned(), to_key.to_owned());
    let from = db
        .call(move |conn| {
            // The move and its audit entry commit together.
            conn.transaction(|tx| {
                let Some(from) = workflows::owner_of(tx, &workflow_name)? else {
                    return Ok(None);
                };
                if from != key_id {
                    workflows::give_name(tx, &workflow_name, &key_id, now_ms())?;
                    audit::record(
                        tx,
                        audit::OPERATOR,
                        "workflow.transfer",
                        &format!("workflow name {workflow_name}"),
                        json!({"from_key_id": from, "to_key_id": key_id}),
                        now_ms(),
                    )?;
                }
                Ok(Some(from))
            })
        })
        .await?;
    match from {
        None => bail!(
            "no workflow is registered under the name `{name}` in {}; `GET /v1/workflows` lists \
             them",
            store.db
        ),
        Some(from) if from == to_key => {
            bail!("the workflow name `{name}` already belongs to `{to_key}`")
        }
        Some(from) => eprintln!(
            "moved the workflow name `{name}` from access key {from} to {to_key}: only {to_key} \
             may register newer workflows of that name from now on (those registered already \
             stay as they are)"
        ),
    }
    Ok(())
}
