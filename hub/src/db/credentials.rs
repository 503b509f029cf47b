//! Named credentials (migration 14): each one's fields sealed with the
//! master key as access-key secrets are (`secret_params::Owner::Credential`,
//! the id and version as associated data), and the robots it allows. The
//! fields are opened in one place only, [`values_for_lease`], to build a
//! robot's lease; everything else reads metadata.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use tasuki_protocol::{Credential, CredentialAllow};

use super::secret_params::{self, Owner};
use super::sql::{Conn, Dialect, params};
use super::workflow_names::WorkflowIdentity;
use super::{DbError, parse_json, to_timestamp};
use crate::secrets::MasterKey;

/// A credential about to be made.
pub struct NewCredential {
    pub name: String,
    pub kind: String,
    pub fields: Map<String, Value>,
    pub allow: CredentialAllow,
    pub description: String,
}

/// What a change asks; `None` keeps what is stored.
pub struct Change {
    pub fields: Option<Map<String, Value>>,
    pub allow: Option<CredentialAllow>,
    pub description: Option<String>,
}

/// What a workflow declares of a credential (`workflows.credentials`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Declared {
    pub name: String,
    pub kind: String,
}

/// A credential delivered in a lease: what the audit log records.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivered {
    pub name: String,
    pub version: i64,
}

fn json(what: &str, v: &impl serde::Serialize) -> Result<String, DbError> {
    serde_json::to_string(v).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

fn seal_fields(
    master: &MasterKey,
    id: i64,
    version: i64,
    fields: &Map<String, Value>,
) -> Result<Vec<u8>, DbError> {
    secret_params::seal(master, Owner::Credential(id, version), fields)
}

/// Makes a credential; `None` when one of that name exists.
pub fn insert(
    conn: &mut Conn<'_>,
    new: &NewCredential,
    master: &MasterKey,
    actor: &str,
    now_ms: i64,
) -> Result<Option<Credential>, DbError> {
    let names: Vec<&String> = new.fields.keys().collect();
    // The id is known only once the row exists: the blob is sealed for it
    // in a second statement of the same transaction (the caller's).
    let id: Option<i64> = conn.opt_row(
        "INSERT INTO credentials (name, kind, field_names, fields_sealed, allow_robots,
                                  allow_labels, description, version, created_at, created_by,
                                  updated_at, updated_by, allow_workflows)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?9, ?8, ?9, ?10)
         ON CONFLICT (name) DO NOTHING
         RETURNING id",
        params![
            new.name,
            new.kind,
            json("field names", &names)?,
            Vec::<u8>::new(),
            json("allowed robots", &new.allow.robots)?,
            json("allowed labels", &new.allow.labels)?,
            new.description,
            now_ms,
            actor,
            workflows_json(&new.allow)?
        ],
        |r| r.get(0),
    )?;
    let Some(id) = id else {
        return Ok(None);
    };
    let sealed = seal_fields(master, id, 1, &new.fields)?;
    conn.execute(
        "UPDATE credentials SET fields_sealed = ?2 WHERE id = ?1",
        params![id, sealed],
    )?;
    get(conn, &new.name)
}

const COLUMNS: &str = "name, kind, field_names, allow_robots, allow_labels, description, version,
                       created_at, created_by, updated_at, updated_by, allow_workflows";

/// `allow.workflows` as stored: JSON, or NULL for any workflow.
fn workflows_json(allow: &CredentialAllow) -> Result<Option<String>, DbError> {
    allow
        .workflows
        .as_ref()
        .map(|names| json("allowed workflows", names))
        .transpose()
}

/// `allow.workflows` as read from the column.
fn workflows_read(what: &str, stored: Option<String>) -> Result<Option<Vec<String>>, DbError> {
    stored.map(|text| parse_json(what, &text)).transpose()
}

fn read(r: &super::sql::Row<'_>) -> Result<Credential, DbError> {
    let name: String = r.get(0)?;
    let what = |f: &str| format!("credential {name}: {f}");
    Ok(Credential {
        kind: r.get(1)?,
        fields: parse_json(&what("field_names"), &r.get::<String>(2)?)?,
        allow: CredentialAllow {
            robots: parse_json(&what("allow_robots"), &r.get::<String>(3)?)?,
            labels: parse_json(&what("allow_labels"), &r.get::<String>(4)?)?,
            workflows: workflows_read(&what("allow_workflows"), r.get(11)?)?,
        },
        description: r.get(5)?,
        version: r.get(6)?,
        created_at: to_timestamp(r.get(7)?)?,
        created_by: r.get(8)?,
        updated_at: to_timestamp(r.get(9)?)?,
        updated_by: r.get(10)?,
        name,
    })
}

pub fn get(conn: &mut Conn<'_>, name: &str) -> Result<Option<Credential>, DbError> {
    conn.opt_row(
        &format!("SELECT {COLUMNS} FROM credentials WHERE name = ?1"),
        params![name],
        read,
    )
}

/// [`get`], the row locked until the caller's transaction ends (on
/// PostgreSQL; SQLite's writer is one already): a change built on what it
/// read cannot undo another made meanwhile.
pub fn get_for_update(conn: &mut Conn<'_>, name: &str) -> Result<Option<Credential>, DbError> {
    let lock = match conn.dialect() {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    conn.opt_row(
        &format!("SELECT {COLUMNS} FROM credentials WHERE name = ?1{lock}"),
        params![name],
        read,
    )
}

pub fn list(conn: &mut Conn<'_>) -> Result<Vec<Credential>, DbError> {
    conn.rows(
        &format!("SELECT {COLUMNS} FROM credentials ORDER BY name"),
        params![],
        read,
    )
}

pub fn count(conn: &mut Conn<'_>) -> Result<u64, DbError> {
    conn.count("SELECT COUNT(*) FROM credentials", params![])
}

/// Applies `change`; new fields seal a new version. `None` when there is
/// no such credential.
pub fn update(
    conn: &mut Conn<'_>,
    name: &str,
    change: &Change,
    master: &MasterKey,
    actor: &str,
    now_ms: i64,
) -> Result<Option<Credential>, DbError> {
    // Locked until the caller's transaction ends: two hubs rotating at
    // once seal versions one after the other, never the same number twice.
    let lock = match conn.dialect() {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    let row: Option<(i64, i64)> = conn.opt_row(
        &format!("SELECT id, version FROM credentials WHERE name = ?1{lock}"),
        params![name],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some((id, version)) = row else {
        return Ok(None);
    };
    if let Some(fields) = &change.fields {
        let next = version + 1;
        let sealed = seal_fields(master, id, next, fields)?;
        let names: Vec<&String> = fields.keys().collect();
        conn.execute(
            "UPDATE credentials SET fields_sealed = ?2, field_names = ?3, version = ?4
             WHERE id = ?1",
            params![id, sealed, json("field names", &names)?, next],
        )?;
    }
    if let Some(allow) = &change.allow {
        conn.execute(
            "UPDATE credentials SET allow_robots = ?2, allow_labels = ?3, allow_workflows = ?4
             WHERE id = ?1",
            params![
                id,
                json("allowed robots", &allow.robots)?,
                json("allowed labels", &allow.labels)?,
                workflows_json(allow)?
            ],
        )?;
    }
    if let Some(description) = &change.description {
        conn.execute(
            "UPDATE credentials SET description = ?2 WHERE id = ?1",
            params![id, description],
        )?;
    }
    conn.execute(
        "UPDATE credentials SET updated_at = ?2, updated_by = ?3 WHERE id = ?1",
        params![id, now_ms, actor],
    )?;
    get(conn, name)
}

/// Deletes it; whether there was one. Its sealed fields go with the row.
pub fn delete(conn: &mut Conn<'_>, name: &str) -> Result<bool, DbError> {
    Ok(conn.execute("DELETE FROM credentials WHERE name = ?1", params![name])? > 0)
}

/// What a new session needs to know of a credential its workflow uses.
pub struct ForSession {
    pub kind: String,
    /// `allow.workflows`.
    pub workflows: Option<Vec<String>>,
}

/// The named credentials that exist, by name, as a new session needs them.
pub fn for_session(
    conn: &mut Conn<'_>,
    names: &[String],
) -> Result<BTreeMap<String, ForSession>, DbError> {
    let mut out = BTreeMap::new();
    for name in names {
        let row: Option<(String, Option<String>)> = conn.opt_row(
            "SELECT kind, allow_workflows FROM credentials WHERE name = ?1",
            params![name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if let Some((kind, workflows)) = row {
            let what = format!("credential {name}: allow_workflows");
            let workflows = workflows_read(&what, workflows)?;
            out.insert(name.clone(), ForSession { kind, workflows });
        }
    }
    Ok(out)
}

/// The allow lists of the named credentials, `None` for one that does not
/// exist (which allows no robot): what routing needs.
pub fn allows(
    conn: &mut Conn<'_>,
    names: &[String],
) -> Result<Vec<(String, Option<CredentialAllow>)>, DbError> {
    let mut out = Vec::new();
    for name in names {
        let row: Option<(String, String, Option<String>)> = conn.opt_row(
            "SELECT allow_robots, allow_labels, allow_workflows FROM credentials WHERE name = ?1",
            params![name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let allow = row
            .map(|(robots, labels, workflows)| {
                let what = |f: &str| format!("credential {name}: {f}");
                Ok::<_, DbError>(CredentialAllow {
                    robots: parse_json(&what("allow_robots"), &robots)?,
                    labels: parse_json(&what("allow_labels"), &labels)?,
                    workflows: workflows_read(&what("allow_workflows"), workflows)?,
                })
            })
            .transpose()?;
        out.push((name.clone(), allow));
    }
    Ok(out)
}

/// Queued, unleased sessions whose workflow uses the credential `name`
/// (oldest first, at most `limit`): offered to the waiting robots again
/// when the credential is made or whom it allows changes.
pub fn queued_sessions_using(
    conn: &mut Conn<'_>,
    name: &str,
    limit: i64,
) -> Result<Vec<i64>, DbError> {
    // Narrowed in SQL to workflows whose declarations mention the name
    // (as a JSON string), so that the limit counts likely sessions; the
    // declarations are then read exactly.
    let mentioned = format!("%{}%", serde_json::Value::String(name.to_string()));
    let rows: Vec<(i64, String)> = conn.rows(
        "SELECT s.id, w.credentials FROM session_queues s JOIN workflows w ON w.id = s.workflow_id
         WHERE s.status = 'queued' AND s.lease_id IS NULL AND w.credentials LIKE ?2
         ORDER BY s.id LIMIT ?1",
        params![limit, mentioned],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut out = Vec::new();
    for (id, declared) in rows {
        let declared: Vec<Declared> = parse_json(
            &format!("session queue {id}: its workflow's credentials"),
            &declared,
        )?;
        if declared.iter().any(|d| d.name == name) {
            out.push(id);
        }
    }
    Ok(out)
}

/// The values of `declared` for a lease of a session of `workflow` to the
/// robot `robot_id`, opened now: so a rotation
/// reaches the next lease granted. Only credentials that allow that robot
/// and that workflow are opened, whatever routed the session there (the
/// one place values leave the database, so the rule holds even if a
/// change raced the routing or the session's queueing): one deleted, or no
/// longer allowing either, is left out, and the robot fails the session,
/// naming it.
pub fn values_for_lease(
    conn: &mut Conn<'_>,
    declared: &[Declared],
    workflow: &WorkflowIdentity,
    robot_id: i64,
    master: &MasterKey,
) -> Result<(Map<String, Value>, Vec<Delivered>), DbError> {
    let mut values = Map::new();
    let mut delivered = Vec::new();
    if declared.is_empty() {
        return Ok((values, delivered));
    }
    let robot: Option<(String, String)> = conn.opt_row(
        "SELECT name, labels FROM robots WHERE id = ?1",
        params![robot_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some((robot_name, labels)) = robot else {
        return Ok((values, delivered));
    };
    let labels: Vec<String> = parse_json(&format!("robot {robot_id}: labels"), &labels)?;
    for d in declared {
        type Row = (i64, i64, Vec<u8>, String, String, Option<String>);
        let row: Option<Row> = conn.opt_row(
            "SELECT id, version, fields_sealed, allow_robots, allow_labels, allow_workflows
             FROM credentials WHERE name = ?1",
            params![d.name],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )?;
        let Some((id, version, sealed, allow_robots, allow_labels, allow_workflows)) = row else {
            continue;
        };
        let what = |f: &str| format!("credential {}: {f}", d.name);
        let allow = CredentialAllow {
            robots: parse_json(&what("allow_robots"), &allow_robots)?,
            labels: parse_json(&what("allow_labels"), &allow_labels)?,
            workflows: workflows_read(&what("allow_workflows"), allow_workflows)?,
        };
        if !allow.robots.contains(&robot_name) && !allow.labels.iter().any(|l| labels.contains(l)) {
            tracing::warn!(credential = %d.name, robot = %robot_name, "a lease went to a robot the credential does not allow (it changed meanwhile); its values are left out");
            continue;
        }
        if !workflow.may_receive(allow.workflows.as_deref()) {
            tracing::warn!(credential = %d.name, workflow = %workflow.name, "a session of a workflow the credential does not allow (it changed since the session was queued) was leased; its values are left out");
            continue;
        }
        let mut fields = Map::new();
        secret_params::open_into(master, Owner::Credential(id, version), &sealed, &mut fields)?;
        values.insert(d.name.clone(), Value::Object(fields));
        delivered.push(Delivered {
            name: d.name.clone(),
            version,
        });
    }
    Ok((values, delivered))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_sealed_and_rotation_raises_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::create(&dir.path().join("key")).unwrap();
        let mut raw = crate::db::test_connection();
        let mut conn = Conn::sqlite(&mut raw);
        let robot = |conn: &mut Conn<'_>, name: &str| {
            let req = tasuki_protocol::RegisterRobot {
                instance_id: format!("i-{name}"),
                labels: vec![],
                version: "t".into(),
                max_concurrency: 1,
                host: Default::default(),
                replace: false,
                actions: None,
            };
            match crate::db::robots::register(conn, name, "key", &req, 100, 0).unwrap() {
                crate::db::robots::Registered::Ok(r) => r.id,
                _ => panic!("registered"),
            }
        };
        let r1 = robot(&mut conn, "r1");
        let r2 = robot(&mut conn, "r2");
        let fields = json!({"token": "tok-one"}).as_object().unwrap().clone();
        let new = NewCredential {
            name: "api".into(),
            kind: "token".into(),
            fields,
            allow: CredentialAllow {
                robots: vec!["r1".into()],
                labels: vec![],
                workflows: Some(vec!["billing".into()]),
            },
            description: String::new(),
        };
        let made = insert(&mut conn, &new, &master, "k", 1000)
            .unwrap()
            .unwrap();
        assert_eq!(
            (made.version, made.fields.clone()),
            (1, vec!["token".into()])
        );
        assert!(
            insert(&mut conn, &new, &master, "k", 1000)
                .unwrap()
                .is_none()
        );
        let blob: Vec<u8> = conn
            .row("SELECT fields_sealed FROM credentials", params![], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(!String::from_utf8_lossy(&blob).contains("tok-one"));
        let declared = [Declared {
            name: "api".into(),
            kind: "token".into(),
        }];
        let billing = WorkflowIdentity {
            name: "billing".into(),
            counts_as_its_name: true,
        };
        // Of a listed name, but not registered by the key that owns it.
        let copy = WorkflowIdentity {
            counts_as_its_name: false,
            ..billing.clone()
        };
        let change = Change {
            fields: Some(json!({"token": "tok-two"}).as_object().unwrap().clone()),
            allow: None,
            description: None,
        };
        let changed = update(&mut conn, "api", &change, &master, "k2", 2000)
            .unwrap()
            .unwrap();
        assert_eq!((changed.version, changed.updated_by.as_str()), (2, "k2"));
        assert_eq!(
            get(&mut conn, "api").unwrap().unwrap().allow.workflows,
            Some(vec!["billing".to_string()])
        );
        let (values, delivered) =
            values_for_lease(&mut conn, &declared, &billing, r1, &master).unwrap();
        assert_eq!(Value::Object(values), json!({"api": {"token": "tok-two"}}));
        assert_eq!(
            delivered,
            [Delivered {
                name: "api".into(),
                version: 2
            }]
        );
        // A robot the credential does not allow gets nothing, whatever
        // routed the session to it.
        let (values, delivered) =
            values_for_lease(&mut conn, &declared, &billing, r2, &master).unwrap();
        assert!(values.is_empty() && delivered.is_empty());
        // Nor does a workflow of a listed name that its owner did not
        // register, on a robot it allows.
        let (values, delivered) =
            values_for_lease(&mut conn, &declared, &copy, r1, &master).unwrap();
        assert!(values.is_empty() && delivered.is_empty());
        assert!(delete(&mut conn, "api").unwrap());
        let (values, _) = values_for_lease(&mut conn, &declared, &billing, r1, &master).unwrap();
        assert!(values.is_empty());
    }
}
