//! `tasuki-hub robots ...`: what only the hub's operator may do to a
//! robot. A robot belongs to the access key that registered it; moving it
//! to another key is an operator's decision, never a robot key's.

use anyhow::bail;
use serde_json::json;
use tasuki_protocol::Scope;

use crate::db::robots::{self, Deletion, Transfer};
use crate::db::{audit, leases, now_ms};
use crate::store::{self, StoreArgs};

pub async fn list(store: &StoreArgs) -> anyhow::Result<()> {
    let (db, _) = store::open(store).await?;
    let (rows, running) = db
        .call(|conn| Ok((robots::list(conn)?, leases::running_by_robot(conn)?)))
        .await?;
    let rows: Vec<_> = rows
        .iter()
        .map(|r| {
            let running_sessions: Vec<i64> = running
                .iter()
                .filter(|(robot, _)| *robot == r.id)
                .map(|(_, session)| *session)
                .collect();
            json!({
                "name": r.name,
                "id": r.id,
                "access_key_id": r.key_id,
                "hostname": r.host.hostname,
                "version": r.version,
                "draining": r.draining,
                "last_seen_at": r.last_seen_at.map(tasuki_protocol::time::format),
                "running_sessions": running_sessions,
            })
        })
        .collect();
    println!("{}", serde_json::Value::from(rows));
    Ok(())
}

pub async fn transfer(store: &StoreArgs, name: &str, to_key: &str) -> anyhow::Result<()> {
    let (db, _) = store::open(store).await?;
    crate::keys::require_scope(&db, store, to_key, Scope::Robot, "drive the robot").await?;
    let (robot_name, key_id) = (name.to_owned(), to_key.to_owned());
    let (moved, running) = db
        .call(move |conn| {
            // The transfer and its audit entry commit together.
            conn.transaction(|conn| {
                let moved = robots::transfer(conn, &robot_name, &key_id)?;
                if let Transfer::Moved { from_key_id } = &moved {
                    let detail = json!({"from_key_id": from_key_id, "to_key_id": key_id});
                    let subject = format!("robot {robot_name}");
                    audit::record(
                        conn,
                        audit::OPERATOR,
                        "robot.transfer",
                        &subject,
                        detail,
                        now_ms(),
                    )?;
                }
                let robot = robots::find(conn, &robot_name)?.map(|r| r.id);
                let running = leases::running_by_robot(conn)?
                    .into_iter()
                    .filter(|(r, _)| Some(*r) == robot)
                    .count();
                Ok((moved, running))
            })
        })
        .await?;
    match moved {
        Transfer::NoSuchRobot => bail!(
            "there is no robot `{name}` in {}; `tasuki-hub robots list` shows them",
            store.db
        ),
        Transfer::AlreadyThere => bail!("the robot `{name}` already belongs to `{to_key}`"),
        Transfer::Moved { from_key_id } => {
            eprintln!(
                "moved robot `{name}` from access key {from_key_id} to {to_key}\n\
                 the agent using {from_key_id} is refused from now on and stops; register the \
                 robot with the new key: tasuki register --name {name} --access-key-id {to_key} ..."
            );
            if running > 0 {
                eprintln!(
                    "the robot was running {running} session(s); its old agent can no longer \
                     renew their leases, so they end as robot_lost"
                );
            }
        }
    }
    Ok(())
}

pub async fn delete(store: &StoreArgs, name: &str) -> anyhow::Result<()> {
    let (db, _) = store::open(store).await?;
    let robot_name = name.to_owned();
    match db
        .call(move |conn| {
            // The deletion and its audit entry commit together.
            conn.transaction(|tx| {
                let deleted = robots::delete(tx, &robot_name)?;
                if let Deletion::Done = deleted {
                    let subject = format!("robot {robot_name}");
                    let detail = json!({});
                    audit::record(
                        tx,
                        audit::OPERATOR,
                        "robot.delete",
                        &subject,
                        detail,
                        now_ms(),
                    )?;
                }
                Ok(deleted)
            })
        })
        .await?
    {
        Deletion::Done => {
            eprintln!(
                "deleted robot `{name}`; its agent is refused (robot_deleted) and stops, and the \
                 sessions it ran no longer name a robot; `tasuki register --replace` on its \
                 machine brings it back"
            );
            Ok(())
        }
        Deletion::NoSuchRobot => bail!(
            "there is no robot `{name}` in {}; `tasuki-hub robots list` shows them",
            store.db
        ),
        Deletion::Busy { sessions } => bail!(
            "the robot `{name}` holds the lease of session(s) {}; cancel them \
             (DELETE /v1/session_queues/ID/cancel) or let them end, then delete it (a robot \
             that is gone for good ends them as robot_lost within the lease TTL)",
            sessions
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
