//! Error-handler workflows: when a session of a workflow that names one
//! (`error_handler_workflow_id`) ends in error, the hub queues the handler
//! with the failure's details as params. Every hub's sweeper looks each
//! second for failed sessions without a handler yet ([`queue_due`]), so a
//! failure reported to a robot's finish, found by the lease sweep, or met
//! any other way is handled the same way, once: the failed session is
//! locked while its handler is queued and marked in the same transaction.
//! A handler's own failure queues no handler, so handlers cannot loop.

use serde_json::{Map, Value, json};
use tasuki_protocol::SessionOrigin;

use super::sessions::{self, NewSession};
use super::sql::{Conn, Dialect, params};
use super::workflows::StoredParam;
use super::{DbError, parse_json};
use crate::secrets::MasterKey;

/// Failed sessions further back than this are not looked at: a hub that
/// was down longer leaves theirs unqueued.
const LOOK_BACK_MS: i64 = 10 * 60_000;

/// Failed sessions one batch of [`queue_due`] looks at.
const BATCH: usize = 50;

/// Queues the handlers of a batch of sessions that failed lately and have
/// none; returns each (failed session, handler session) pair, whose
/// handler is to be offered to the robots, and whether more may be waiting
/// (the batch was full).
pub fn queue_due(
    conn: &mut Conn<'_>,
    master: &MasterKey,
    now_ms: i64,
) -> Result<(Vec<(i64, i64)>, bool), DbError> {
    const FAILED: &str = "FROM session_queues s
         JOIN workflows w ON w.id = s.workflow_id
         JOIN workflows h ON h.id = w.error_handler_workflow_id
         WHERE s.status = 'error' AND s.ended_at >= ?1
           AND s.handler_session IS NULL AND s.handles_session IS NULL";
    // A look first, outside any transaction: most seconds nothing failed.
    if !conn.exists(FAILED, params![now_ms - LOOK_BACK_MS])? {
        return Ok((Vec::new(), false));
    }
    let lock = match conn.dialect() {
        Dialect::Sqlite => "",
        Dialect::Postgres => "FOR UPDATE OF s SKIP LOCKED",
    };
    conn.transaction(|tx| {
        let failed = tx.rows(
            &format!(
                "SELECT s.id, w.id, w.name, s.error, s.params, w.error_handler_workflow_id,
                        h.param_specs {FAILED}
                 ORDER BY s.id LIMIT {BATCH} {lock}"
            ),
            params![now_ms - LOOK_BACK_MS],
            |r| {
                Ok(Failed {
                    id: r.get(0)?,
                    workflow_id: r.get(1)?,
                    workflow_name: r.get(2)?,
                    error: r.get(3)?,
                    params: r.get(4)?,
                    handler: r.get(5)?,
                    handler_specs: r.get(6)?,
                })
            },
        )?;
        let full = failed.len() == BATCH;
        let mut queued = Vec::new();
        for Failed {
            id,
            workflow_id,
            workflow_name,
            error,
            params: failed_params,
            handler,
            handler_specs: specs,
        } in failed
        {
            let what = |f: &str| format!("session queue {id}: {f}");
            let error: Value = match error {
                Some(text) => parse_json(&what("error"), &text)?,
                None => Value::Null,
            };
            let failed_params: Value = parse_json(&what("params"), &failed_params)?;
            let details = details(
                id,
                workflow_id,
                &workflow_name,
                error["code"].as_str().unwrap_or("error"),
                error["message"].as_str().unwrap_or(""),
                failed_params,
            );
            let specs: Vec<StoredParam> =
                parse_json(&format!("workflow {handler}: param_specs"), &specs)?;
            let new = NewSession {
                workflow_id: handler,
                params: given(&specs, &details),
                secret_params: specs
                    .iter()
                    .filter(|p| p.secret)
                    .map(|p| p.name.clone())
                    .collect(),
                origin: Some(SessionOrigin::ErrorHandler { session_id: id }),
            };
            // A handler's session waits at its workflow's limit: never
            // refused (db/concurrency.rs).
            let handler_session = match sessions::insert(tx, &new, master, now_ms)? {
                Ok(queued) => queued.session.id,
                Err(at_limit) => {
                    return Err(DbError::Corrupt(format!(
                        "an error handler's session was refused: {at_limit}"
                    )));
                }
            };
            tx.execute(
                "UPDATE session_queues SET handler_session = ?2 WHERE id = ?1",
                params![id, handler_session],
            )?;
            queued.push((id, handler_session));
        }
        Ok((queued, full))
    })
}

/// A session that failed and has no handler yet, with its workflow's
/// handler.
struct Failed {
    id: i64,
    workflow_id: i64,
    workflow_name: String,
    /// JSON.
    error: Option<String>,
    /// JSON, secret values as `***`.
    params: String,
    handler: i64,
    /// JSON: the handler's declared params.
    handler_specs: String,
}

/// What a handler is told of a failure, by param name.
pub fn details(
    session_id: i64,
    workflow_id: i64,
    workflow_name: &str,
    code: &str,
    message: &str,
    failed_params: Value,
) -> Value {
    json!({
        "failed_session_id": session_id,
        "failed_workflow_id": workflow_id,
        "failed_workflow_name": workflow_name,
        "error_code": code,
        "error_message": message,
        // As stored: secret values are `***`, never the values.
        "failed_params": failed_params,
    })
}

/// The details the handler declares, by name: its params.
pub fn given(specs: &[StoredParam], details: &Value) -> Map<String, Value> {
    specs
        .iter()
        .filter_map(|p| Some((p.name.clone(), details.get(&p.name)?.clone())))
        .collect()
}
