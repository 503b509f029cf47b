//! `tasuki-hub robots ...`: what only the hub's operator may do to a
//! robot. A robot belongs to the access key that registered it; moving it
//! to another key is an operator's decision, never a robot key's.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::json;
use tasuki_protocol::{Scope, Scopes};

use crate::db::robots::{self, Deletion, Transfer};
use crate::db::{keys, leases};
use crate::store;

pub fn list(db_path: &Path) -> anyhow::Result<()> {
    let (db, _) = store::open(db_path)?;
    let (rows, running) =
        db.with(|conn| Ok((robots::list(conn)?, leases::running_by_robot(conn)?)))?;
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

pub fn transfer(db_path: &Path, name: &str, to_key: &str) -> anyhow::Result<()> {
    let (db, _) = store::open(db_path)?;
    let Some(key) = db.with(|conn| keys::find(conn, to_key))? else {
        bail!(
            "there is no access key `{to_key}` in {}; `tasuki-hub keys list` shows them",
            db_path.display()
        );
    };
    let scopes: Scopes = key
        .scopes
        .parse()
        .with_context(|| format!("the stored scopes of access key `{to_key}`"))?;
    if !scopes.contains(Scope::Robot) {
        bail!(
            "the access key `{to_key}` does not have the `robot` scope (it has: {scopes}), so it \
             could not drive the robot; create one with `tasuki-hub keys create --scopes robot`"
        );
    }
    let (moved, running) = db.with(|conn| {
        let moved = robots::transfer(conn, name, to_key)?;
        let robot = robots::find(conn, name)?.map(|r| r.id);
        let running = leases::running_by_robot(conn)?
            .into_iter()
            .filter(|(r, _)| Some(*r) == robot)
            .count();
        Ok((moved, running))
    })?;
    match moved {
        Transfer::NoSuchRobot => bail!(
            "there is no robot `{name}` in {}; `tasuki-hub robots list` shows them",
            db_path.display()
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

pub fn delete(db_path: &Path, name: &str) -> anyhow::Result<()> {
    let (db, _) = store::open(db_path)?;
    match db.with(|conn| robots::delete(conn, name))? {
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
            db_path.display()
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
