//! `tasuki-hub workflows ...`: what only the hub's operator may do to a
//! workflow name. A name belongs to the access key that first registered
//! it (db/workflow_names.rs); moving it to another key is an operator's
//! decision, never a key's.

use anyhow::bail;
use serde_json::json;
use tasuki_protocol::Scope;

use crate::db::workflow_names::{self, Transferred};
use crate::db::{audit, now_ms};
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
    let done = db
        .call(move |conn| {
            // The move and its audit entry commit together.
            conn.transaction(|tx| {
                let now = now_ms();
                let done = workflow_names::transfer(tx, &workflow_name, &key_id, now)?;
                if let Transferred::Moved { from } = &done {
                    audit::record(
                        tx,
                        audit::OPERATOR,
                        "workflow.transfer",
                        &format!("workflow name {workflow_name}"),
                        json!({"from_key_id": from, "to_key_id": key_id}),
                        now,
                    )?;
                }
                Ok(done)
            })
        })
        .await?;
    match done {
        Transferred::NoSuchName => bail!(
            "no workflow is registered under the name `{name}` in {}; `GET /v1/workflows` lists \
             them",
            store.db
        ),
        Transferred::AlreadyThere => {
            bail!("the workflow name `{name}` already belongs to `{to_key}`")
        }
        Transferred::Moved { from } => eprintln!(
            "moved the workflow name `{name}` from {} to access key {to_key}, with the \
             workflows of that name {} registered: they still count as the name's, and only \
             {to_key} may register newer ones",
            from.as_deref()
                .map_or("no owner".to_string(), |k| format!("access key {k}")),
            from.as_deref().unwrap_or("nobody")
        ),
    }
    Ok(())
}
