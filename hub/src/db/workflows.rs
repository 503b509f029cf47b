//! Stored workflows.

use super::sql::{Conn, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tasuki_actions::ParamSpec;
use tasuki_actions::language::params::ParamType;
use tasuki_protocol::robot::CalledWorkflow;
use tasuki_protocol::{Concurrency, WorkflowItem};

use super::concurrency::{self, Columns};
use super::credentials::Declared;
use super::{DbError, parse_json};

/// What the hub keeps of a declared param, to check the params of a
/// session without parsing the workflow again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredParam {
    pub name: String,
    /// `Some(null)` is a default of `null` (the param is optional), not
    /// the absence of a default.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub default: Option<Value>,
    #[serde(default)]
    pub secret: bool,
    /// `type:`, as declared (the default's type is found from the default).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub declared_type: Option<ParamType>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl StoredParam {
    /// What the hub keeps of a declaration.
    pub fn from_spec(p: &ParamSpec) -> StoredParam {
        StoredParam {
            name: p.name.clone(),
            default: p.default.clone(),
            secret: p.secret,
            declared_type: p.declared_type,
            choices: p.choices.clone(),
            description: p.description.clone(),
        }
    }
}

/// The reading of a workflow's params that `param_specs` stored now
/// hold (`workflows.params_read`): 1 since params have types.
pub const PARAMS_READING: i64 = 1;

/// What reading stored params again found, for the hub's log.
#[derive(Debug, Default)]
pub struct Reread {
    /// Workflows read so far (0: none were left).
    pub read: usize,
    /// Those whose params now read differently: `(id, name)`.
    pub changed: Vec<(i64, String)>,
    /// Those whose source no longer loads cleanly: their params are kept.
    pub kept: Vec<(i64, String)>,
}

/// Reads again the params of up to `limit` workflows stored under an
/// older reading, stores what changed, and marks them read. A hub that
/// stored a workflow before params had types read `{type: string}` as an
/// object default; a robot now reads a declaration, and the hub must check
/// sessions as the robot will. Called until it reads none: each workflow
/// is read once.
pub fn refresh_param_specs(conn: &mut Conn<'_>, limit: i64) -> Result<Reread, DbError> {
    conn.transaction(|tx| {
        let rows: Vec<(i64, String, String, String, String)> = tx.rows(
            "SELECT id, name, source_format, source, param_specs FROM workflows
             WHERE params_read < ?1 ORDER BY id LIMIT ?2",
            params![PARAMS_READING, limit],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
        let mut found = Reread {
            read: rows.len(),
            ..Reread::default()
        };
        for (id, name, format, source, stored) in rows {
            let origin = if format == "json" {
                "workflow.json"
            } else {
                "workflow.yaml"
            };
            match tasuki_actions::language::declared_params(&source, origin) {
                None => found.kept.push((id, name)),
                Some(params) => {
                    let now: Vec<StoredParam> = params.iter().map(StoredParam::from_spec).collect();
                    // Unreadable specs are replaced by the fresh reading.
                    let before = serde_json::from_str::<Vec<StoredParam>>(&stored).ok();
                    let same = before.is_some_and(|b| {
                        serde_json::to_value(&b).ok() == serde_json::to_value(&now).ok()
                    });
                    if !same {
                        let specs = serde_json::to_string(&now)
                            .map_err(|e| DbError::Corrupt(e.to_string()))?;
                        tx.execute(
                            "UPDATE workflows SET param_specs = ?2 WHERE id = ?1",
                            params![id, specs],
                        )?;
                        found.changed.push((id, name));
                    }
                }
            }
            tx.execute(
                "UPDATE workflows SET params_read = ?2 WHERE id = ?1",
                params![id, PARAMS_READING],
            )?;
        }
        Ok(found)
    })
}

/// A field that is there, `null` included, is `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    <Value as serde::Deserialize>::deserialize(d).map(Some)
}

pub struct NewWorkflow {
    pub name: String,
    /// The access key registering it (`db/workflow_names.rs`).
    pub registered_by: String,
    pub description: String,
    pub single_process_mode: bool,
    /// `yaml` or `json`: how `source` is to be read.
    pub source_format: &'static str,
    pub source: String,
    pub param_specs: Vec<StoredParam>,
    /// `accept_undeclared_params: true`: sessions may give other params.
    pub accept_undeclared_params: bool,
    pub workflow_robots: Vec<String>,
    /// The actions its steps use: a session goes only to a robot that
    /// offers them all.
    pub required_actions: Vec<String>,
    /// Labels a robot must carry, every one, to run its sessions.
    pub robot_labels: Vec<String>,
    /// Queued when one of its sessions ends in error (`error_handlers.rs`).
    pub error_handler_workflow_id: Option<i64>,
    /// How many of its sessions run at once (`concurrency.rs`).
    pub concurrency: Option<Concurrency>,
    /// The credentials it declares: its sessions go only to robots every
    /// one of them allows, and their leases carry the values.
    pub credentials: Vec<Declared>,
    /// `retry_on:`: the ends after which a session is queued again
    /// (`leases::requeue_for_retry`).
    pub retry_on: Vec<String>,
    /// `limits.log_bytes`: its sessions' logs are cut past it
    /// (api/session_limits.rs), or past the hub's own limit if lower.
    pub limit_log_bytes: Option<u64>,
    /// `limits.artifact_bytes`: its sessions' artifacts may total no more
    /// (api/session_limits.rs), nor more than the hub's own limit.
    pub limit_artifact_bytes: Option<u64>,
    /// The names its `call` steps run (`calls_of` follows them).
    pub calls: Vec<String>,
}

/// What queueing a session needs to know of its workflow.
pub struct WorkflowParams {
    pub name: String,
    pub params: Vec<StoredParam>,
    /// Sessions may give params it does not declare.
    pub accept_undeclared_params: bool,
    /// The credentials it declares (`credentials.rs`).
    pub credentials: Vec<Declared>,
}

// Fields AUTORO has and Tasuki does not use; see `WorkflowItem`.
const ROBOT_TYPE: &str = "tasuki";
const COLOR: &str = "#000000";

pub fn insert(conn: &mut Conn<'_>, w: &NewWorkflow, now_ms: i64) -> Result<WorkflowItem, DbError> {
    let specs = serde_json::to_string(&w.param_specs)
        .map_err(|e| DbError::Corrupt(format!("param specs: {e}")))?;
    let json = |what: &str, list: &[String]| {
        serde_json::to_string(list).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
    };
    let robots = json("workflow robots", &w.workflow_robots)?;
    let actions = json("required actions", &w.required_actions)?;
    let labels = json("robot labels", &w.robot_labels)?;
    let retry_on = json("retry_on", &w.retry_on)?;
    let c = w.concurrency.as_ref();
    let credentials = serde_json::to_string(&w.credentials)
        .map_err(|e| DbError::Corrupt(format!("credentials: {e}")))?;
    let id: i64 = conn.row(
        "INSERT INTO workflows (name, description, single_process_mode, source_format, source,
                                param_specs, workflow_robots, created_at, required_actions,
                                robot_labels, error_handler_workflow_id, concurrency_limit,
                                concurrency_on_limit, concurrency_key_param,
                                accept_undeclared_params, credentials, retry_on,
                                limit_log_bytes, limit_artifact_bytes, calls, params_read,
                                registered_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                 ?18, ?19, ?20, ?21, ?22)
         RETURNING id",
        params![
            w.name,
            w.description,
            i64::from(w.single_process_mode),
            w.source_format,
            w.source,
            specs,
            robots,
            now_ms,
            actions,
            labels,
            w.error_handler_workflow_id,
            c.map(|c| i64::from(c.limit)),
            c.map(|c| concurrency::on_limit_text(c.on_limit)),
            c.and_then(|c| c.key.clone()),
            i64::from(w.accept_undeclared_params),
            credentials,
            retry_on,
            w.limit_log_bytes
                .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            w.limit_artifact_bytes
                .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
            serde_json::to_string(&w.calls).map_err(|e| DbError::Corrupt(e.to_string()))?,
            PARAMS_READING,
            w.registered_by
        ],
        |r| r.get(0),
    )?;
    Ok(item(
        id,
        Listed {
            name: w.name.clone(),
            description: w.description.clone(),
            single_process_mode: w.single_process_mode,
            workflow_robots: w.workflow_robots.clone(),
            robot_labels: w.robot_labels.clone(),
            error_handler_workflow_id: w.error_handler_workflow_id,
            concurrency: w.concurrency.clone(),
        },
    ))
}

/// What a workflow's item shows of it.
struct Listed {
    name: String,
    description: String,
    single_process_mode: bool,
    workflow_robots: Vec<String>,
    robot_labels: Vec<String>,
    error_handler_workflow_id: Option<i64>,
    concurrency: Option<Concurrency>,
}

fn item(id: i64, w: Listed) -> WorkflowItem {
    WorkflowItem {
        id,
        name: w.name,
        description: w.description,
        vpn_option_id: None,
        debug_mode: false,
        robot_type: ROBOT_TYPE.into(),
        single_process_mode: w.single_process_mode,
        error_handler_workflow_id: w.error_handler_workflow_id,
        color: COLOR.into(),
        receiver_infos: String::new(),
        workflow_robots: w.workflow_robots,
        robot_labels: w.robot_labels,
        concurrency: w.concurrency,
    }
}

/// One page in id order, and the count of all workflows.
pub fn list(
    conn: &mut Conn<'_>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<WorkflowItem>, u64), DbError> {
    let total = conn.count("SELECT COUNT(*) FROM workflows", params![])?;
    let rows = conn.rows(
        "SELECT id, name, description, single_process_mode, workflow_robots, robot_labels,
                error_handler_workflow_id, concurrency_limit, concurrency_on_limit,
                concurrency_key_param
         FROM workflows ORDER BY id LIMIT ?1 OFFSET ?2",
        params![limit, offset],
        |r| {
            let columns: Columns = (r.get(7)?, r.get(8)?, r.get(9)?);
            Ok((
                r.get::<i64>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<bool>(3)?,
                r.get::<String>(4)?,
                r.get::<String>(5)?,
                r.get::<Option<i64>>(6)?,
                columns,
            ))
        },
    )?;
    let mut items = Vec::new();
    for (id, name, description, spm, robots, labels, handler, columns) in rows {
        items.push(item(
            id,
            Listed {
                name,
                description,
                single_process_mode: spm,
                workflow_robots: parse_json(&format!("workflow {id}: workflow_robots"), &robots)?,
                robot_labels: parse_json(&format!("workflow {id}: robot_labels"), &labels)?,
                error_handler_workflow_id: handler,
                concurrency: concurrency::from_columns(id, columns)?,
            },
        ));
    }
    Ok((items, total))
}

pub fn params_of(conn: &mut Conn<'_>, id: i64) -> Result<Option<WorkflowParams>, DbError> {
    let row = conn.opt_row(
        "SELECT name, param_specs, accept_undeclared_params, credentials
         FROM workflows WHERE id = ?1",
        params![id],
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<String>(1)?,
                r.get::<bool>(2)?,
                r.get::<String>(3)?,
            ))
        },
    )?;
    let Some((name, specs, accept_undeclared_params, credentials)) = row else {
        return Ok(None);
    };
    Ok(Some(WorkflowParams {
        name,
        params: parse_json(&format!("workflow {id}: param_specs"), &specs)?,
        accept_undeclared_params,
        credentials: parse_json(&format!("workflow {id}: credentials"), &credentials)?,
    }))
}

/// A workflow as the console shows it: name, description, source format
/// and source text.
pub struct Source {
    pub name: String,
    pub description: String,
    pub format: String,
    pub text: String,
}

pub fn source_of(conn: &mut Conn<'_>, id: i64) -> Result<Option<Source>, DbError> {
    conn.opt_row(
        "SELECT name, description, source_format, source FROM workflows WHERE id = ?1",
        params![id],
        |r| {
            Ok(Source {
                name: r.get(0)?,
                description: r.get(1)?,
                format: r.get(2)?,
                text: r.get(3)?,
            })
        },
    )
}

/// The newest workflow of this name that counts as its name's (registered
/// by the key that owns the name, `db/workflow_names.rs`; any, for a name
/// nobody owns): `(format, source, the names it calls)`. A `call` step
/// runs it.
pub fn newest_named(
    conn: &mut Conn<'_>,
    name: &str,
) -> Result<Option<(String, String, Vec<String>)>, DbError> {
    let row: Option<(i64, String, String, String)> = conn.opt_row(
        "SELECT w.id, w.source_format, w.source, w.calls
         FROM workflows w LEFT JOIN workflow_names n ON n.name = w.name
         WHERE w.name = ?1 AND (n.key_id IS NULL OR w.registered_by = n.key_id)
         ORDER BY w.id DESC LIMIT 1",
        params![name],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    row.map(|(id, format, source, calls)| {
        Ok((
            format,
            source,
            parse_json(&format!("workflow {id}: calls"), &calls)?,
        ))
    })
    .transpose()
}

/// Every workflow that workflow `id`'s `call` steps reach, each once, by
/// name (the newest of each): what a lease carries for the robot.
pub fn calls_of(conn: &mut Conn<'_>, id: i64) -> Result<Vec<CalledWorkflow>, DbError> {
    let calls: Option<String> = conn.opt_row(
        "SELECT calls FROM workflows WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )?;
    let mut pending: Vec<String> = match calls {
        Some(c) => parse_json(&format!("workflow {id}: calls"), &c)?,
        None => Vec::new(),
    };
    let mut found: Vec<CalledWorkflow> = Vec::new();
    // Bounded: names repeat only once found, and the language's depth
    // limit bounds chains; a cycle registered since stops at the seen set.
    while let Some(name) = pending.pop() {
        if found.iter().any(|c| c.name == name) || found.len() >= MAX_CALLED {
            continue;
        }
        if let Some((format, source, calls)) = newest_named(conn, &name)? {
            pending.extend(calls);
            found.push(CalledWorkflow {
                name,
                format,
                source,
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The most workflows one lease carries for its `call` steps.
const MAX_CALLED: usize = 100;

#[cfg(test)]
mod tests {
    use super::StoredParam;
    use serde_json::json;

    /// Rows written before params had types still read, and a `null`
    /// default stays a default (the param is optional), apart from none.
    #[test]
    fn stored_params_read_old_rows_and_keep_a_null_default() {
        let old: Vec<StoredParam> = serde_json::from_value(json!([
            {"name": "who", "default": "world"},
            {"name": "token", "secret": true},
            {"name": "maybe", "default": null},
        ]))
        .expect("old rows read");
        assert_eq!(old[0].default, Some(json!("world")));
        assert!(old[0].declared_type.is_none() && old[0].choices.is_empty());
        assert_eq!(old[1].default, None);
        assert!(old[1].secret);
        assert_eq!(old[2].default, Some(serde_json::Value::Null));
        let again: Vec<StoredParam> =
            serde_json::from_value(serde_json::to_value(&old).expect("json")).expect("read back");
        assert_eq!(again[2].default, Some(serde_json::Value::Null));
        assert_eq!(again[1].default, None);
    }
}
