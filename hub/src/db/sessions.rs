//! Session queues, as the public API sees them.

use super::sql::{Conn, Dialect, Row, params};
use serde_json::{Map, Value};
use tasuki_protocol::{RobotRef, SessionOrigin, SessionQueue, SessionStatus, WorkflowRef};

use super::concurrency::{self, AtLimit};
use super::secret_params::{self, MASK, Owner};
use super::{DbError, parse_json, to_timestamp};
use crate::secrets::MasterKey;

/// The hub has a single project; AUTORO's `project_id` is always this.
pub const PROJECT_ID: i64 = 1;

pub struct NewSession {
    pub workflow_id: i64,
    pub params: Map<String, Value>,
    /// Names of params the workflow marks `secret: true`.
    pub secret_params: Vec<String>,
    /// Set when the hub queues it itself.
    pub origin: Option<SessionOrigin>,
}

/// Which sessions a list returns. Times are milliseconds since the epoch.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter {
    /// Created strictly before.
    pub before: Option<i64>,
    /// Created at or after.
    pub after: Option<i64>,
    /// Any of these statuses; empty means any status.
    pub statuses: Vec<SessionStatus>,
    /// Of this workflow only (the console's filter).
    pub workflow_id: Option<i64>,
    /// Taken by this robot only (the console's filter).
    pub robot_id: Option<i64>,
}

const SELECT: &str = "
    SELECT s.id, s.status, s.params, s.secret_params, s.created_at, s.started_at,
           s.ended_at, s.cancel_requested_at, s.steps, s.error, s.outputs,
           w.id, w.name, r.id, r.name, s.schedule_id, s.scheduled_for, s.rerun_of,
           s.handles_session, s.trigger_id, s.attempt
    FROM session_queues s
    JOIN workflows w ON w.id = s.workflow_id
    LEFT JOIN robots r ON r.id = s.robot_id";

/// A session stored, and the sessions its workflow's concurrency policy
/// asks to cancel to make room for it (`cancel_oldest`): the caller
/// cancels them once the new one is committed (`api::sessions::announce`).
#[derive(Debug)]
pub struct Queued {
    pub session: SessionQueue,
    pub cancel: Vec<i64>,
}

/// Stores a new queued session, unless its workflow's concurrency policy
/// refuses it (db/concurrency.rs); the values of its secret params are
/// sealed (db/secret_params.rs), never written in clear.
pub fn insert(
    conn: &mut Conn<'_>,
    s: &NewSession,
    master: &MasterKey,
    now_ms: i64,
) -> Result<Result<Queued, AtLimit>, DbError> {
    let mut params = s.params.clone();
    let secrets = secret_params::split(&mut params, &s.secret_params);
    let params_json =
        serde_json::to_string(&params).map_err(|e| DbError::Corrupt(format!("params: {e}")))?;
    let secrets_json = serde_json::to_string(&s.secret_params)
        .map_err(|e| DbError::Corrupt(format!("secret params: {e}")))?;
    // The sealed values name the row's id, known only once it is inserted:
    // one transaction, so that no row is ever seen without them.
    let (mut schedule_id, mut scheduled_for, mut rerun_of, mut handles, mut trigger_id) =
        (None, None, None, None, None);
    match &s.origin {
        None => {}
        Some(SessionOrigin::Schedule {
            schedule_id: id,
            due_at,
        }) => {
            schedule_id = Some(*id);
            scheduled_for = Some(due_at.as_millisecond());
        }
        Some(SessionOrigin::Rerun { session_id }) => rerun_of = Some(*session_id),
        Some(SessionOrigin::ErrorHandler { session_id }) => handles = Some(*session_id),
        Some(SessionOrigin::Trigger { trigger_id: id }) => trigger_id = Some(*id),
    }
    conn.transaction(|tx| {
        let admitted = match concurrency::admit(tx, s.workflow_id, &s.params, s.origin.as_ref())? {
            Ok(admitted) => admitted,
            Err(at_limit) => return Ok(Err(at_limit)),
        };
        let id: i64 = tx.row(
            "INSERT INTO session_queues (workflow_id, status, params, secret_params, created_at,
                                         schedule_id, scheduled_for, rerun_of, handles_session,
                                         trigger_id, concurrency_key)
             VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             RETURNING id",
            params![
                s.workflow_id,
                params_json,
                secrets_json,
                now_ms,
                schedule_id,
                scheduled_for,
                rerun_of,
                handles,
                trigger_id,
                admitted.key
            ],
            |r| r.get(0),
        )?;
        if let Some(secrets) = secrets {
            let sealed = secret_params::seal(master, Owner::Session(id), &secrets)?;
            tx.execute(
                "UPDATE session_queues SET secrets_sealed = ?2 WHERE id = ?1",
                params![id, sealed],
            )?;
        }
        let session =
            get(tx, id)?.ok_or_else(|| DbError::Corrupt(format!("session queue {id} vanished")))?;
        Ok(Ok(Queued {
            session,
            cancel: admitted.cancel,
        }))
    })
}

/// One session, with its latest wait (lists leave that out: a query a row).
/// The id of the workflow session `id` runs.
pub fn workflow_of(conn: &mut Conn<'_>, id: i64) -> Result<Option<i64>, DbError> {
    conn.opt_row(
        "SELECT workflow_id FROM session_queues WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )
}

pub fn get(conn: &mut Conn<'_>, id: i64) -> Result<Option<SessionQueue>, DbError> {
    let Some(mut session) =
        conn.opt_row(&format!("{SELECT} WHERE s.id = ?1"), params![id], read_row)?
    else {
        return Ok(None);
    };
    session.wait = super::waits::view(conn, id)?;
    session.approval_status = session
        .wait
        .as_ref()
        .and_then(super::waits::approval_status);
    Ok(Some(session))
}

/// One page, newest first, and the count of all that match.
pub fn list(
    conn: &mut Conn<'_>,
    filter: &Filter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<SessionQueue>, u64), DbError> {
    let statuses = (!filter.statuses.is_empty()).then(|| {
        Value::from(
            filter
                .statuses
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
        )
        .to_string()
    });
    // Fixed SQL with optional bounds: a NULL parameter turns its test off.
    let condition = match conn.dialect() {
        Dialect::Sqlite => {
            "(?1 IS NULL OR s.created_at < ?1)
             AND (?2 IS NULL OR s.created_at >= ?2)
             AND (?3 IS NULL OR s.status IN (SELECT value FROM json_each(?3)))
             AND (?4 IS NULL OR s.workflow_id = ?4)
             AND (?5 IS NULL OR s.robot_id = ?5)"
        }
        Dialect::Postgres => {
            "(CAST(?1 AS BIGINT) IS NULL OR s.created_at < ?1)
             AND (CAST(?2 AS BIGINT) IS NULL OR s.created_at >= ?2)
             AND (CAST(?3 AS TEXT) IS NULL
                  OR s.status IN (SELECT jsonb_array_elements_text(CAST(?3 AS JSONB))))
             AND (CAST(?4 AS BIGINT) IS NULL OR s.workflow_id = ?4)
             AND (CAST(?5 AS BIGINT) IS NULL OR s.robot_id = ?5)"
        }
    };
    let total = conn.count(
        &format!("SELECT COUNT(*) FROM session_queues s WHERE {condition}"),
        params![
            filter.before,
            filter.after,
            statuses,
            filter.workflow_id,
            filter.robot_id
        ],
    )?;
    let rows = conn.rows(
        &format!(
            "{SELECT} WHERE {condition} ORDER BY s.created_at DESC, s.id DESC LIMIT ?6 OFFSET ?7"
        ),
        params![
            filter.before,
            filter.after,
            statuses,
            filter.workflow_id,
            filter.robot_id,
            limit,
            offset
        ],
        read_row,
    )?;
    Ok((rows, total))
}

/// Cancels a session: a queued one becomes `cancelled` and will never
/// start; a running one gets `cancel_requested_at`, which the robot acts
/// on; a finished one is left as it is. Repeating it changes nothing.
/// Returns the session after the change and whether anything changed, or
/// `None` when there is no such session.
pub fn cancel(
    conn: &mut Conn<'_>,
    id: i64,
    now_ms: i64,
) -> Result<Option<(SessionQueue, bool)>, DbError> {
    conn.transaction(|tx| {
        let changed = tx.execute(
            "UPDATE session_queues
         SET status = 'cancelled', ended_at = ?2,
             cancel_requested_at = COALESCE(cancel_requested_at, ?2)
         WHERE id = ?1 AND status = 'queued'",
            params![id, now_ms],
        )? + tx.execute(
            "UPDATE session_queues SET cancel_requested_at = ?2
         WHERE id = ?1 AND status = 'running' AND cancel_requested_at IS NULL",
            params![id, now_ms],
        )?;
        let session = get(tx, id)?;
        Ok(session.map(|s| (s, changed > 0)))
    })
}

/// The sessions a schedule queued that are still queued or running.
pub fn active_of_schedule(conn: &mut Conn<'_>, schedule_id: i64) -> Result<Vec<i64>, DbError> {
    conn.rows(
        "SELECT id FROM session_queues
         WHERE schedule_id = ?1 AND status IN ('queued', 'running', 'waiting')
         ORDER BY id",
        params![schedule_id],
        |r| r.get(0),
    )
}

pub fn status_of(conn: &mut Conn<'_>, id: i64) -> Result<Option<SessionStatus>, DbError> {
    let status: Option<String> = conn.opt_row(
        "SELECT status FROM session_queues WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )?;
    status.map(|s| parse_status(id, &s)).transpose()
}

fn parse_status(id: i64, text: &str) -> Result<SessionStatus, DbError> {
    text.parse()
        .map_err(|e| DbError::Corrupt(format!("session queue {id}: {e}")))
}

/// On PostgreSQL, locks a session's row until the transaction ends, for
/// a read-then-write that two hubs might do at once (SQLite's
/// transactions already take turns).
pub fn lock_row(conn: &mut Conn<'_>, id: i64) -> Result<(), DbError> {
    if conn.dialect() == Dialect::Postgres {
        conn.opt_row(
            "SELECT id FROM session_queues WHERE id = ?1 FOR NO KEY UPDATE",
            params![id],
            |_| Ok(()),
        )?;
    }
    Ok(())
}

/// Reads one row of [`SELECT`].
fn read_row(r: &Row<'_>) -> Result<SessionQueue, DbError> {
    let id: i64 = r.get(0)?;
    let status: String = r.get(1)?;
    let params: String = r.get(2)?;
    let secret_params: String = r.get(3)?;
    let created_at: i64 = r.get(4)?;
    let started_at: Option<i64> = r.get(5)?;
    let ended_at: Option<i64> = r.get(6)?;
    let cancel_requested_at: Option<i64> = r.get(7)?;
    let steps: Option<String> = r.get(8)?;
    let error: Option<String> = r.get(9)?;
    let outputs: Option<String> = r.get(10)?;
    let workflow = WorkflowRef {
        id: r.get(11)?,
        name: r.get(12)?,
    };
    let robot = match (r.get::<Option<i64>>(13)?, r.get::<Option<String>>(14)?) {
        (Some(id), Some(name)) => Some(RobotRef { id, name }),
        _ => None,
    };
    let origin = match (
        r.get::<Option<i64>>(15)?,
        r.get::<Option<i64>>(16)?,
        r.get::<Option<i64>>(17)?,
        r.get::<Option<i64>>(18)?,
        r.get::<Option<i64>>(19)?,
    ) {
        (Some(schedule_id), Some(due_at), _, _, _) => Some(SessionOrigin::Schedule {
            schedule_id,
            due_at: to_timestamp(due_at)?,
        }),
        (_, _, Some(session_id), _, _) => Some(SessionOrigin::Rerun { session_id }),
        (_, _, _, Some(session_id), _) => Some(SessionOrigin::ErrorHandler { session_id }),
        (_, _, _, _, Some(trigger_id)) => Some(SessionOrigin::Trigger { trigger_id }),
        _ => None,
    };
    let attempt: i64 = r.get(20)?;
    {
        let what = |field: &str| format!("session queue {id}: {field}");
        let mut params: Map<String, Value> = parse_json(&what("params"), &params)?;
        let secrets: Vec<String> = parse_json(&what("secret_params"), &secret_params)?;
        for name in secrets {
            if let Some(v) = params.get_mut(&name) {
                *v = Value::String(MASK.into());
            }
        }
        let time = |ms: Option<i64>| ms.map(to_timestamp).transpose();
        Ok(SessionQueue {
            id,
            project_id: PROJECT_ID,
            started_at: time(started_at)?,
            ended_at: time(ended_at)?,
            status: parse_status(id, &status)?,
            created_at: to_timestamp(created_at)?,
            workflow,
            params,
            robot,
            steps: steps.map(|s| parse_json(&what("steps"), &s)).transpose()?,
            error: error.map(|s| parse_json(&what("error"), &s)).transpose()?,
            outputs: outputs
                .map(|s| parse_json(&what("outputs"), &s))
                .transpose()?,
            cancel_requested_at: time(cancel_requested_at)?,
            queued_reason: None,
            origin,
            attempt: (attempt > 1).then(|| u32::try_from(attempt).unwrap_or(u32::MAX)),
            wait: None,
            approval_status: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::workflows::{self, NewWorkflow};

    fn setup() -> (rusqlite::Connection, i64) {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::create(&dir.path().join("key")).unwrap();
        let mut raw = crate::db::test_connection();
        let conn = &mut Conn::sqlite(&mut raw);
        let w = workflows::insert(
            conn,
            &NewWorkflow {
                registered_by: "k".into(),
                name: "w".into(),
                description: String::new(),
                single_process_mode: false,
                source_format: "yaml",
                source: String::new(),
                param_specs: Vec::new(),
                accept_undeclared_params: false,
                workflow_robots: Vec::new(),
                required_actions: Vec::new(),
                robot_labels: Vec::new(),
                error_handler_workflow_id: None,
                concurrency: None,
                credentials: Vec::new(),
                retry_on: Vec::new(),
                limit_log_bytes: None,
                limit_artifact_bytes: None,
                calls: Vec::new(),
            },
            0,
        )
        .unwrap();
        let s = insert(
            conn,
            &NewSession {
                workflow_id: w.id,
                params: Map::new(),
                secret_params: Vec::new(),
                origin: None,
            },
            &master,
            1_000,
        )
        .unwrap()
        .unwrap();
        (raw, s.session.id)
    }

    fn set_status(conn: &mut Conn<'_>, id: i64, status: &str) {
        conn.execute(
            "UPDATE session_queues SET status = ?2 WHERE id = ?1",
            params![id, status],
        )
        .unwrap();
    }

    #[test]
    fn cancelling_a_running_session_only_asks() {
        let (mut raw, id) = setup();
        let conn = &mut Conn::sqlite(&mut raw);
        set_status(conn, id, "running");
        let (s, changed) = cancel(conn, id, 2_000).unwrap().unwrap();
        assert!(changed);
        assert_eq!(s.status, SessionStatus::Running);
        assert_eq!(s.cancel_requested_at.unwrap().as_millisecond(), 2_000);
        assert!(s.ended_at.is_none());
        // The first request's time stays.
        let (s, changed) = cancel(conn, id, 3_000).unwrap().unwrap();
        assert!(!changed);
        assert_eq!(s.cancel_requested_at.unwrap().as_millisecond(), 2_000);
    }

    #[test]
    fn cancelling_a_finished_session_changes_nothing() {
        let (mut raw, id) = setup();
        let conn = &mut Conn::sqlite(&mut raw);
        for status in ["success", "error"] {
            set_status(conn, id, status);
            let (s, changed) = cancel(conn, id, 2_000).unwrap().unwrap();
            assert!(!changed);
            assert_eq!(s.status.as_str(), status);
            assert!(s.cancel_requested_at.is_none());
        }
        assert!(cancel(conn, id + 1, 2_000).unwrap().is_none());
    }

    #[test]
    fn lists_filter_by_time_and_status() {
        let (mut raw, id) = setup();
        let conn = &mut Conn::sqlite(&mut raw);
        let all = Filter::default();
        assert_eq!(list(conn, &all, 10, 0).unwrap().1, 1);
        let before = Filter {
            before: Some(1_000),
            ..Filter::default()
        };
        assert_eq!(list(conn, &before, 10, 0).unwrap().1, 0);
        let after = Filter {
            after: Some(1_000),
            statuses: vec![SessionStatus::Queued],
            ..Filter::default()
        };
        let (rows, total) = list(conn, &after, 10, 0).unwrap();
        assert_eq!((rows[0].id, total), (id, 1));
        let running = Filter {
            statuses: vec![SessionStatus::Running],
            ..Filter::default()
        };
        assert_eq!(list(conn, &running, 10, 0).unwrap().1, 0);
    }
}
