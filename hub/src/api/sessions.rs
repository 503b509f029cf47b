//! Session queues: create, read, list, cancel, and read logs.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tasuki_protocol::{CreateSessionQueue, LogsResponse, SessionQueue, SessionQueueList};

use super::auth::{Authorized, need};
use super::body::JsonBody;
use super::error::ApiError;
use super::query::{QueryParams, page, path_id};
use super::{Hub, params, search};
use crate::db::sessions::{self, NewSession, PROJECT_ID};
use crate::db::{logs, now_ms, workflows};

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
    let session = hub
        .db
        .call(move |conn| sessions::insert(conn, &new, now_ms()))
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
        .call(move |conn| sessions::get(conn, id))
        .await?
        .map(Json)
        .ok_or_else(|| session_not_found(id))
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
        .call(move |conn| sessions::list(conn, &filter, page.limit, page.offset))
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
    let (session, changed) = hub
        .db
        .call(move |conn| sessions::cancel(conn, id, now_ms()))
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
