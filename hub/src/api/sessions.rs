//! Session queues: create, read, list, cancel, and read logs.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tasuki_protocol::{
    CreateSessionQueue, LogsResponse, SessionQueue, SessionQueueList, SessionStatus,
};

use super::auth::{Authorized, need};
use super::body::JsonBody;
use super::error::ApiError;
use super::query::{QueryParams, page, path_id, shorten};
use super::{Hub, params, search};
use crate::db::sessions::{self, NewSession, PROJECT_ID};
use crate::db::{DbError, artifacts as stored_artifacts, leases, logs, now_ms, robots, workflows};
use crate::routing;

const DEFAULT_PER_PAGE: i64 = 10;
const MAX_PER_PAGE: i64 = 50;
/// Log lines per response; a reader asks again with the last `seq`.
const LOG_LINES_PER_CALL: i64 = 10_000;

pub async fn create(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::SessionQueueWrite>,
    JsonBody(req): JsonBody<CreateSessionQueue>,
) -> Result<(StatusCode, Json<SessionQueue>), ApiError> {
    let workflow_id = req.workflow_id;
    if workflow_id <= 0 {
        return Err(ApiError::invalid_field(
            "workflow_id",
            format!("a workflow id is a positive whole number, not {workflow_id}"),
        ));
    }
    let given = req.params.unwrap_or_default();
    let Some(workflow) = hub
        .db
        .call(move |conn| workflows::params_of(conn, workflow_id))
        .await?
    else {
        return Err(workflow_not_found(workflow_id));
    };
    let secret_params =
        params::check(&workflow.name, &workflow.params, &given).map_err(|problems| {
            ApiError::unprocessable(
                "invalid_params",
                format!(
                    "the params do not fit the workflow `{}`: {}",
                    workflow.name,
                    problems
                        .iter()
                        .map(|p| format!("{}: {}", p.path, p.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            )
            .with_problems(problems)
        })?;
    let new = NewSession {
        workflow_id,
        params: given,
        secret_params,
    };
    let dispatch_hub = hub.clone();
    let session = hub
        .db
        .call(move |conn| {
            let now = now_ms();
            let session = sessions::insert(conn, &new, &dispatch_hub.master, now)?;
            // Straight to a waiting robot, if one may take it. The session
            // is stored whatever happens here: an error must not tell the
            // client to queue it again (robots' next polls find it).
            if let Err(e) = dispatch_hub.dispatch.offer(conn, session.id, now) {
                tracing::warn!(session_queue_id = session.id, error = %e, "offering a new session to the waiting robots");
            }
            Ok(session)
        })
        .await?;
    tracing::info!(session_queue_id = session.id, workflow_id, key_id = %caller.key_id, "session queued");
    Ok((StatusCode::CREATED, Json(session)))
}

pub async fn get_one(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionQueue>, ApiError> {
    let id = session_id(id)?;
    hub.db
        .call(move |conn| {
            let mut session = sessions::get(conn, id)?;
            if let Some(session) = &mut session {
                explain_wait(conn, session)?;
            }
            Ok(session)
        })
        .await?
        .map(Json)
        .ok_or_else(|| session_not_found(id))
}

/// Sets `queued_reason` on a queued session that no registered robot
/// could ever take. (Not on the answer to its creation, which keeps
/// AUTORO's shape and the pickup's path short: a read says it.)
fn explain_wait(conn: &mut crate::db::Conn<'_>, session: &mut SessionQueue) -> Result<(), DbError> {
    if session.status != SessionStatus::Queued {
        return Ok(());
    }
    let Some(needs) = leases::needs_of(conn, session.id)? else {
        return Ok(());
    };
    let robots = robots::all_capabilities(conn)?;
    session.queued_reason = routing::queued_reason(&needs, &robots);
    Ok(())
}

pub async fn list(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    mut q: QueryParams,
) -> Result<Json<SessionQueueList>, ApiError> {
    let page = page(&mut q, DEFAULT_PER_PAGE, MAX_PER_PAGE)?;
    let filter = search::parse(&q.take("query").unwrap_or_default())?;
    // AUTORO scopes lists by project or organisation; the hub has one of
    // each, so another project simply has no sessions.
    let project_id = q.int("project_id", PROJECT_ID, 1, i64::MAX)?;
    q.int("organization_id", 1, 1, i64::MAX)?;
    q.finish()?;
    if project_id != PROJECT_ID {
        return Ok(Json(SessionQueueList {
            session_queues: Vec::new(),
            total_count: 0,
        }));
    }
    let (session_queues, total_count) = hub
        .db
        .call(move |conn| {
            let (mut page, total) = sessions::list(conn, &filter, page.limit, page.offset)?;
            for session in &mut page {
                explain_wait(conn, session)?;
            }
            Ok((page, total))
        })
        .await?;
    Ok(Json(SessionQueueList {
        session_queues,
        total_count,
    }))
}

pub async fn cancel(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::SessionQueueDelete>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionQueue>, ApiError> {
    let id = session_id(id)?;
    let wake_hub = hub.clone();
    let (session, changed) = hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                // The robot's row first (as a poll takes it): a poll of
                // its that is looking now either sees this cancel or is
                // waiting, to be answered, by the time this commits.
                let robot = leases::robot_of(tx, id)?;
                if let Some(robot_id) = robot {
                    robots::lock_row(tx, robot_id)?;
                }
                let cancelled = sessions::cancel(tx, id, now_ms())?;
                if let Some((s, true)) = &cancelled
                    && s.status == SessionStatus::Running
                    // (Granted since the look above: its robot, unlocked.)
                    && let Some(robot_id) = robot.or(s.robot.as_ref().map(|r| r.id))
                {
                    // Answer the robot's waiting poll now: that is how a
                    // cancel reaches it within a second.
                    wake_hub.dispatch.cancel(tx, robot_id)?;
                }
                Ok(cancelled)
            })
        })
        .await?
        .ok_or_else(|| session_not_found(id))?;
    if changed {
        tracing::info!(session_queue_id = id, status = %session.status, key_id = %caller.key_id, "cancel requested");
    }
    Ok(Json(session))
}

pub async fn logs(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    id: Result<Path<String>, PathRejection>,
    mut q: QueryParams,
) -> Result<Json<LogsResponse>, ApiError> {
    let id = session_id(id)?;
    let after_seq = q.int("after_seq", 0, 0, i64::MAX)?;
    q.finish()?;
    let (logs, status) = hub
        .db
        .call(move |conn| logs::after(conn, id, after_seq, LOG_LINES_PER_CALL))
        .await?
        .ok_or_else(|| session_not_found(id))?;
    Ok(Json(LogsResponse { logs, status }))
}

#[derive(serde::Serialize)]
pub struct ArtifactItem {
    name: String,
    size: u64,
    sha256: String,
    url: String,
}

#[derive(serde::Serialize)]
pub struct ArtifactList {
    artifacts: Vec<ArtifactItem>,
}

pub async fn artifacts(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ArtifactList>, ApiError> {
    let id = session_id(id)?;
    let (exists, list) = hub
        .db
        .call(move |conn| {
            Ok((
                sessions::status_of(conn, id)?.is_some(),
                stored_artifacts::list(conn, id)?,
            ))
        })
        .await?;
    if !exists {
        return Err(session_not_found(id));
    }
    Ok(Json(ArtifactList {
        artifacts: list
            .into_iter()
            .map(|(name, size, sha256)| ArtifactItem {
                url: format!("/v1/session_queues/{id}/artifacts/{name}"),
                name,
                size,
                sha256,
            })
            .collect(),
    }))
}

pub async fn artifact(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((id, name)) =
        path.map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
    let id = path_id("session queue", &id)?;
    let lookup = name.clone();
    let found = hub
        .db
        .call(move |conn| stored_artifacts::get(conn, id, &lookup))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(
                "artifact_not_found",
                format!("session queue {id} has no artifact `{}`", shorten(&name)),
            )
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, found.content_type),
            // Served as data, never rendered as a page of this origin.
            (
                header::CONTENT_DISPOSITION,
                format!("inline; filename=\"{}\"", found.name),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
        ],
        found.data,
    )
        .into_response())
}

fn session_id(path: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::bad_request("invalid_id", e.body_text()))?;
    path_id("session queue", &text)
}

fn session_not_found(id: i64) -> ApiError {
    ApiError::not_found(
        "session_queue_not_found",
        format!("there is no session queue {id}"),
    )
}

fn workflow_not_found(id: i64) -> ApiError {
    ApiError::not_found(
        "workflow_not_found",
        format!("there is no workflow {id}; GET /v1/workflows lists them"),
    )
}
