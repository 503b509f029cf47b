//! Workflow names and the access keys they belong to (migration 20).
//!
//! A `call` step runs the newest workflow of its name, and a credential may
//! list the workflows it reaches by name: so a name belongs to the access
//! key that first registered it, and only workflows that key registered
//! count as the name's (`workflows.registered_by`). Another key can neither
//! register the name again nor have its own workflow of that name (one
//! from before names were owned) called or given a credential. The name
//! stays its key's when the key is deleted: only the hub's operator moves
//! it (`tasuki-hub workflows transfer`), with the key's workflows.

use super::DbError;
use super::sql::{Conn, Dialect, params};

/// Whose a workflow name is, asked by a key about to register it.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key's: new to the hub, or its already.
    Yours,
    /// Another key's; `deleted` when that key no longer exists.
    Taken { deleted: bool },
    /// Nobody's, but workflows of that name exist from before names were
    /// owned (older than the audit log), which other keys' workflows may
    /// call: only the operator gives it an owner.
    Unowned,
}

/// Claims `name` for `key_id`, in the transaction that registers the
/// workflow. The name's row is the lock: of two keys claiming a new name
/// at once on PostgreSQL, the second's insert waits for the first's commit
/// and then finds it taken; the owner is read `FOR SHARE`, so a transfer
/// under way finishes first.
pub fn claim(conn: &mut Conn<'_>, name: &str, key_id: &str, now_ms: i64) -> Result<Claim, DbError> {
    let share = match conn.dialect() {
        Dialect::Postgres => " FOR SHARE OF n",
        Dialect::Sqlite => "",
    };
    let owner = |conn: &mut Conn<'_>| -> Result<Option<(String, i64)>, DbError> {
        conn.opt_row(
            &format!(
                "SELECT n.key_id,
                        CASE WHEN EXISTS (SELECT 1 FROM access_keys k WHERE k.id = n.key_id)
                             THEN 1 ELSE 0 END
                 FROM workflow_names n WHERE n.name = ?1{share}"
            ),
            params![name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    };
    let mut found = owner(conn)?;
    if found.is_none() {
        let older = conn.count(
            "SELECT COUNT(*) FROM workflows WHERE name = ?1",
            params![name],
        )?;
        if older > 0 {
            // Workflows, and no owner when we looked: unless a
            // registration committed in between (its name's row and its
            // workflow together), the name is one from before owners.
            found = owner(conn)?;
            if found.is_none() {
                return Ok(Claim::Unowned);
            }
        } else {
            conn.execute(
                "INSERT INTO workflow_names (name, key_id, since) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO NOTHING",
                params![name, key_id, now_ms],
            )?;
            found = owner(conn)?;
        }
    }
    match found {
        Some((owner, _)) if owner == key_id => Ok(Claim::Yours),
        Some((_, exists)) => Ok(Claim::Taken {
            deleted: exists == 0,
        }),
        None => Err(DbError::Corrupt(format!(
            "workflow name {name}: no owner after claiming it"
        ))),
    }
}

/// What `transfer` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Transferred {
    /// No workflow has that name.
    NoSuchName,
    AlreadyThere,
    /// Moved from that key (`None`: the name had no owner, from before
    /// names were owned).
    Moved {
        from: Option<String>,
    },
}

/// Gives the name `name`, and its workflows, to `to_key`: they count as
/// the name's still, calls of it run them, and only `to_key` registers
/// newer ones. A name nobody owns is given with the workflows nobody
/// registered.
pub fn transfer(
    conn: &mut Conn<'_>,
    name: &str,
    to_key: &str,
    now_ms: i64,
) -> Result<Transferred, DbError> {
    let lock = match conn.dialect() {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    let from: Option<String> = conn.opt_row(
        &format!("SELECT key_id FROM workflow_names WHERE name = ?1{lock}"),
        params![name],
        |r| r.get(0),
    )?;
    if from.as_deref() == Some(to_key) {
        return Ok(Transferred::AlreadyThere);
    }
    let workflows = conn.count(
        "SELECT COUNT(*) FROM workflows WHERE name = ?1",
        params![name],
    )?;
    if from.is_none() && workflows == 0 {
        return Ok(Transferred::NoSuchName);
    }
    conn.execute(
        "UPDATE workflows SET registered_by = ?2
         WHERE name = ?1 AND registered_by IS NOT DISTINCT FROM ?3",
        params![name, to_key, from],
    )?;
    conn.execute(
        "INSERT INTO workflow_names (name, key_id, since) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET key_id = excluded.key_id, since = excluded.since",
        params![name, to_key, now_ms],
    )?;
    Ok(Transferred::Moved { from })
}

/// Whether a workflow name has an owner.
pub fn is_owned(conn: &mut Conn<'_>, name: &str) -> Result<bool, DbError> {
    Ok(conn.count(
        "SELECT COUNT(*) FROM workflow_names WHERE name = ?1",
        params![name],
    )? > 0)
}

/// The names `key_id` owns, in order.
pub fn names_of(conn: &mut Conn<'_>, key_id: &str) -> Result<Vec<String>, DbError> {
    conn.rows(
        "SELECT name FROM workflow_names WHERE key_id = ?1 ORDER BY name",
        params![key_id],
        |r| r.get(0),
    )
}

/// A workflow as a credential's `allow.workflows` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowIdentity {
    pub name: String,
    /// Registered by the key that owns its name.
    pub counts_as_its_name: bool,
}

impl WorkflowIdentity {
    /// Whether a credential that lists `listed` in `allow.workflows` (`None`:
    /// lists none, so any workflow) reaches this workflow's sessions: one of
    /// those names, registered by the key that owns it.
    pub fn may_receive(&self, listed: Option<&[String]>) -> bool {
        match listed {
            None => true,
            Some(names) => self.counts_as_its_name && names.contains(&self.name),
        }
    }
}

/// Workflow `id` as a credential sees it; `None` when there is no such
/// workflow.
pub fn identity(conn: &mut Conn<'_>, id: i64) -> Result<Option<WorkflowIdentity>, DbError> {
    let row: Option<(String, i64)> = conn.opt_row(
        "SELECT w.name,
                CASE WHEN w.registered_by IS NOT NULL AND w.registered_by = n.key_id
                     THEN 1 ELSE 0 END
         FROM workflows w LEFT JOIN workflow_names n ON n.name = w.name
         WHERE w.id = ?1",
        params![id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(row.map(|(name, its)| WorkflowIdentity {
        name,
        counts_as_its_name: its == 1,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::workflows::newest_named;

    fn workflow(conn: &mut Conn<'_>, name: &str, source: &str, by: Option<&str>) -> i64 {
        conn.row(
            "INSERT INTO workflows (name, description, single_process_mode, source_format,
                                    source, param_specs, workflow_robots, created_at,
                                    registered_by)
             VALUES (?1, '', 0, 'yaml', ?2, '[]', '[]', 0, ?3) RETURNING id",
            params![name, source, by],
            |r| r.get(0),
        )
        .unwrap()
    }

    fn source(conn: &mut Conn<'_>, name: &str) -> Option<String> {
        newest_named(conn, name)
            .unwrap()
            .map(|(_, source, _)| source)
    }

    /// Of a name's workflows, only its owner's count: calls run the
    /// newest of those, and only they may receive a credential that lists
    /// the name. A transfer moves the owner's workflows with the name.
    #[test]
    fn only_the_owners_workflows_count_as_the_names() {
        let mut raw = crate::db::test_connection();
        let mut conn = Conn::sqlite(&mut raw);
        let conn = &mut conn;
        // From before names were owned: two keys registered `stamp`.
        let owners = workflow(conn, "stamp", "owner's", Some("TSKOWNER"));
        let other = workflow(conn, "stamp", "another's", Some("TSKOTHER"));
        // Nobody owns it yet: the newest runs, as before, and no key may
        // claim it by registering.
        assert_eq!(source(conn, "stamp").as_deref(), Some("another's"));
        assert_eq!(claim(conn, "stamp", "TSKOTHER", 1).unwrap(), Claim::Unowned);
        // As migration 20 gives it to its first known registrant.
        conn.execute(
            "INSERT INTO workflow_names (name, key_id, since) VALUES ('stamp', 'TSKOWNER', 1)",
            params![],
        )
        .unwrap();
        assert_eq!(claim(conn, "stamp", "TSKOWNER", 1).unwrap(), Claim::Yours);
        assert_eq!(source(conn, "stamp").as_deref(), Some("owner's"));
        // A new name is the first claimer's.
        assert_eq!(claim(conn, "fresh", "TSKOTHER", 1).unwrap(), Claim::Yours);
        assert_eq!(
            claim(conn, "fresh", "TSKOWNER", 1).unwrap(),
            Claim::Taken { deleted: true }
        );
        let listed = Some(&["stamp".to_string()][..]);
        let of = |conn: &mut Conn<'_>, id| identity(conn, id).unwrap().unwrap();
        assert!(of(conn, owners).may_receive(listed));
        assert!(!of(conn, other).may_receive(listed));
        assert!(of(conn, other).may_receive(None));
        assert_eq!(
            claim(conn, "stamp", "TSKOTHER", 2).unwrap(),
            Claim::Taken { deleted: true }
        );

        assert_eq!(
            transfer(conn, "stamp", "TSKNEW", 3).unwrap(),
            Transferred::Moved {
                from: Some("TSKOWNER".into())
            }
        );
        assert_eq!(source(conn, "stamp").as_deref(), Some("owner's"));
        assert!(of(conn, owners).may_receive(listed));
        assert!(!of(conn, other).may_receive(listed));
        assert_eq!(names_of(conn, "TSKNEW").unwrap(), ["stamp"]);
        assert_eq!(
            transfer(conn, "stamp", "TSKNEW", 4).unwrap(),
            Transferred::AlreadyThere
        );
        assert_eq!(
            transfer(conn, "nothing", "TSKNEW", 4).unwrap(),
            Transferred::NoSuchName
        );
        // A name nobody owns moves with the workflows nobody registered.
        let unknown = workflow(conn, "old", "unknown's", None);
        assert_eq!(
            transfer(conn, "old", "TSKNEW", 5).unwrap(),
            Transferred::Moved { from: None }
        );
        assert!(of(conn, unknown).may_receive(Some(&["old".to_string()][..])));
    }
}
