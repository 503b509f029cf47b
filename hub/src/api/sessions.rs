//! Session queues: create, read, list, cancel, and read logs.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tasuki_protocol::{
    CreateSessionQueue, LogsResponse, RerunSessionQueue, Scope, SessionOrigin, SessionQueue,
    SessionQueueList, SessionStatus,
};

use super::auth::{Authorized, need};
use super::body::{JsonBody, OptionalJsonBody};
use super::error::ApiError;
use super::query::{NoQuery, QueryParams, id_in, page, path_id, shorten};
use super::waits::MAX_WAITS_PER_KEY;
use super::{Hub, params, search};
use crate::db::concurrency::{self, AtLimit};
use crate::db::credentials as db_credentials;
use crate::db::secret_params::MASK;
use crate::db::sessions::{self, NewSession, PROJECT_ID, Queued};
use crate::db::workflow_names;
use crate::db::{
    DbError, artifacts as stored_artifacts, audit, leases, logs, now_ms, robots, workflows,
};
use crate::routing;

const DEFAULT_PER_PAGE: i64 = 10;
const MAX_PER_PAGE: i64 = 50;
/// Log lines per response; a reader asks again with the last `seq`.
const LOG_LINES_PER_CALL: i64 = 10_000;

/// The longest `?wait=` a create may ask for.
const MAX_WAIT: Duration = Duration::from_secs(120);
/// A waiting create looks at its session when a session ends on this hub,
/// and at least this often (a session that ended on another hub of the
/// database tells this one nothing).
const WAIT_LOOK_EVERY: Duration = Duration::from_secs(1);

/// `POST /v1/session_queues`; with `?wait=30s` (Schift's `mode=sync`) it
/// answers when the session has ended or the wait is over, whichever
/// comes first, with the session as it then stands.
pub async fn create(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::SessionQueueWrite>,
    mut q: QueryParams,
    JsonBody(req): JsonBody<CreateSessionQueue>,
) -> Result<(StatusCode, Json<SessionQueue>), ApiError> {
    let wait = q.take("wait").map(|w| parse_wait(&w)).transpose()?;
    q.finish()?;
    let workflow_id = req.workflow_id;
    if workflow_id <= 0 {
        return Err(ApiError::invalid_field(
            "workflow_id",
            format!("a workflow id is a positive whole number, not {workflow_id}"),
        ));
    }
    // Counted before anything is queued, so that a refused wait queues
    // nothing.
    let _held = match wait {
        Some(_) => Some(hub.waits.take(&caller.key_id).ok_or_else(too_many_waits)?),
        None => None,
    };
    let given = req.params.unwrap_or_default();
    let new = checked_session(&hub, workflow_id, given, None).await?;
    let session = queue(&hub, new).await?;
    tracing::info!(session_queue_id = session.id, workflow_id, key_id = %caller.key_id, "session queued");
    let session = match wait {
        Some(wait) => until_ended(&hub, session, wait).await?,
        None => session,
    };
    Ok((StatusCode::CREATED, Json(session)))
}

fn too_many_waits() -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_waits",
        format!(
            "this access key already holds {MAX_WAITS_PER_KEY} creates waiting (`?wait=`) on \
             this hub, the most it may; send this one without `wait` and read the session \
             later, or retry once one has been answered"
        ),
    );
    e.retry_after = Some(1);
    e
}

/// `30s`, `500ms`, `2m`, or whole seconds; at most [`MAX_WAIT`].
fn parse_wait(text: &str) -> Result<Duration, ApiError> {
    let text = text.trim();
    let (number, unit_ms) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        (text, 1_000)
    };
    let wait = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_ms))
        .map(Duration::from_millis)
        .filter(|w| *w <= MAX_WAIT)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_parameter",
                format!(
                    "the query parameter `wait` is a duration such as `30s`, `500ms` or `2m`, \
                     at most {} s, not `{}`",
                    MAX_WAIT.as_secs(),
                    shorten(text)
                ),
            )
        })?;
    Ok(wait)
}

/// The session once it has ended, or as it stands when `wait` is over.
async fn until_ended(
    hub: &Hub,
    mut session: SessionQueue,
    wait: Duration,
) -> Result<SessionQueue, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let id = session.id;
    while !session.status.is_terminal() {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        // Told when a session ends on this hub; made before the look, so
        // that an end between the look and the wait is not missed.
        let ended = hub.session_ended.notified();
        let _ = tokio::time::timeout((deadline - now).min(WAIT_LOOK_EVERY), ended).await;
        session = hub
            .db
            .call(move |conn| sessions::get(conn, id))
            .await?
            .ok_or_else(|| session_not_found(id))?;
    }
    Ok(session)
}

/// A new session of `workflow_id` with `params`, checked against the
/// workflow's declared params.
pub async fn checked_session(
    hub: &Hub,
    workflow_id: i64,
    params: serde_json::Map<String, serde_json::Value>,
    origin: Option<SessionOrigin>,
) -> Result<NewSession, ApiError> {
    // One trip to the database (this is the pickup's path): the
    // workflow, and the kinds of the credentials it declares, if any.
    let Some((workflow, kinds, identity)) = hub
        .db
        .call(move |conn| {
            let Some(workflow) = workflows::params_of(conn, workflow_id)? else {
                return Ok(None);
            };
            let names: Vec<String> = workflow
                .credentials
                .iter()
                .map(|d| d.name.clone())
                .collect();
            if names.is_empty() {
                return Ok(Some((workflow, Default::default(), None)));
            }
            let kinds = db_credentials::for_session(conn, &names)?;
            let identity = workflow_names::identity(conn, workflow_id)?;
            Ok(Some((workflow, kinds, identity)))
        })
        .await?
    else {
        return Err(workflow_not_found(workflow_id));
    };
    let secret_params = params::check(
        &workflow.name,
        &workflow.params,
        workflow.accept_undeclared_params,
        &params,
    )
    .map_err(|problems| invalid_params(&workflow.name, problems))?;
    if let Some(identity) = identity {
        super::credentials::check_for_session(&identity, &workflow.credentials, &kinds)?;
    }
    Ok(NewSession {
        workflow_id,
        params,
        secret_params,
        origin,
    })
}

fn invalid_params(workflow: &str, problems: Vec<tasuki_protocol::ProblemItem>) -> ApiError {
    ApiError::unprocessable(
        "invalid_params",
        format!(
            "the params do not fit the workflow `{workflow}`: {}",
            problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    )
    .with_problems(problems)
}

/// Stores a new session (unless its workflow's concurrency policy refuses
/// it) and offers it to the waiting robots.
pub(crate) async fn queue(hub: &Arc<Hub>, new: NewSession) -> Result<SessionQueue, ApiError> {
    let dispatch_hub = hub.clone();
    let queued = hub
        .db
        .call(move |conn| {
            let now = now_ms();
            let queued = sessions::insert(conn, &new, &dispatch_hub.master, now)?;
            if let Ok(queued) = &queued {
                announce(conn, &dispatch_hub, queued, now);
            }
            Ok(queued)
        })
        .await?;
    Ok(queued.map_err(at_limit)?.session)
}

/// The answer to a session its workflow's concurrency policy refused.
pub fn at_limit(refused: AtLimit) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "concurrency_limit",
        format!("{refused}; queue it again once one has ended"),
    )
}

/// Makes a session just stored known: cancels the sessions its workflow's
/// policy gave way (`cancel_oldest`), then offers it straight to a waiting
/// robot, if one may take it. The session is stored whatever happens
/// here: an error must not tell the client to queue it again (robots' next
/// polls find it).
pub fn announce(conn: &mut crate::db::Conn<'_>, hub: &Hub, queued: &Queued, now: i64) {
    let id = queued.session.id;
    for &old in &queued.cancel {
        // Each in a transaction of its own, as a client's cancel is, and
        // recorded as the policy's.
        let cancelled = conn.transaction(|tx| {
            let cancelled = cancel_in(tx, hub, old, now)?;
            if let Some((s, true)) = &cancelled {
                let detail = serde_json::json!({
                    "status": s.status,
                    "reason": "concurrency_policy",
                    "for_session_queue": id,
                });
                let subject = format!("session_queue {old}");
                audit::record(tx, "hub", "session_queue.cancel", &subject, detail, now)?;
            }
            Ok(cancelled)
        });
        match cancelled {
            Ok(_) => tracing::info!(
                session_queue_id = old,
                for_session = id,
                "cancelled by its workflow's concurrency policy (cancel_oldest)"
            ),
            Err(e) => tracing::warn!(session_queue_id = old, for_session = id, error = %e,
                "cancelling a session its workflow's concurrency policy gave way"),
        }
    }
    offer(conn, hub, id, now);
}

/// Offers a stored session straight to a waiting robot, if one may take
/// it; an error is logged (see [`announce`]).
pub fn offer(conn: &mut crate::db::Conn<'_>, hub: &Hub, session_id: i64, now: i64) {
    if let Err(e) = hub.dispatch.offer(conn, session_id, now) {
        tracing::warn!(session_queue_id = session_id, error = %e, "offering a new session to the waiting robots");
    }
}

/// `POST /v1/session_queues/{id}/rerun`: a new session of the same
/// workflow with the same params. Secret values are not kept once a
/// session ends (docs/security.md), so the body gives them again:
/// `{"params": {"<secret param>": "..."}}`.
pub async fn rerun(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::SessionQueueWrite>,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
    OptionalJsonBody(body): OptionalJsonBody<RerunSessionQueue>,
) -> Result<(StatusCode, Json<SessionQueue>), ApiError> {
    // It copies the original's params, which reading needs.
    caller.require(Scope::SessionQueueRead)?;
    let id = session_id(id)?;
    let given = body.params.unwrap_or_default();
    let session = rerun_session(&hub, id, given).await?;
    tracing::info!(session_queue_id = session.id, rerun_of = id, key_id = %caller.key_id, "session re-run");
    Ok((StatusCode::CREATED, Json(session)))
}

/// Queues a re-run of session `id` with its params, the values of its
/// secret params `given` again (the console's Re-run form uses this too).
pub(crate) async fn rerun_session(
    hub: &Arc<Hub>,
    id: i64,
    given: serde_json::Map<String, serde_json::Value>,
) -> Result<SessionQueue, ApiError> {
    let original = hub
        .db
        .call(move |conn| sessions::get(conn, id))
        .await?
        .ok_or_else(|| session_not_found(id))?;
    if !original.status.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_not_ended",
            format!(
                "session queue {id} is {}; a session is re-run once it has ended",
                original.status
            ),
        ));
    }
    let workflow_id = original.workflow.id;
    let secret: Vec<String> = hub
        .db
        .call(move |conn| workflows::params_of(conn, workflow_id))
        .await?
        .map(|w| {
            w.params
                .into_iter()
                .filter(|p| p.secret)
                .map(|p| p.name)
                .collect()
        })
        .unwrap_or_default();
    let mut params = original.params;
    for (name, value) in given {
        if !secret.contains(&name) {
            return Err(ApiError::invalid_field(
                &format!("params.{name}"),
                format!(
                    "a re-run keeps session {id}'s params; only its secret params, whose values \
                     are not kept once it ended, are given again, and `{name}` is not one"
                ),
            ));
        }
        params.insert(name, value);
    }
    // Asked for before the params are checked: a `***` left in place of a
    // secret that is a number would be refused as a string, which says
    // nothing of what to do.
    if let Some(missing) = secret
        .iter()
        .find(|name| params.get(*name).and_then(|v| v.as_str()) == Some(MASK))
    {
        return Err(ApiError::invalid_field(
            &format!("params.{missing}"),
            format!(
                "`{missing}` is a secret param, whose value is not kept once session {id} \
                 ended; give it again: {{\"params\": {{\"{missing}\": \"...\"}}}}"
            ),
        ));
    }
    let new = checked_session(
        hub,
        workflow_id,
        params,
        Some(SessionOrigin::Rerun { session_id: id }),
    )
    .await?;
    queue(hub, new).await
}

pub async fn get_one(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    _: NoQuery,
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
pub(crate) fn explain_wait(
    conn: &mut crate::db::Conn<'_>,
    session: &mut SessionQueue,
) -> Result<(), DbError> {
    if session.status != SessionStatus::Queued {
        return Ok(());
    }
    if let Some(AtLimit { limit, key, .. }) = concurrency::waiting_for_limit(conn, session.id)? {
        session.queued_reason = Some(match key {
            Some((param, value)) => format!(
                "{limit} session(s) of this workflow with {param} `{value}` are running, its \
                 concurrency limit; it starts when one ends"
            ),
            None => format!(
                "{limit} session(s) of this workflow are running, its concurrency limit; it \
                 starts when one ends"
            ),
        });
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
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionQueue>, ApiError> {
    let id = session_id(id)?;
    let session = cancel_session(&hub, id, &caller.key_id).await?;
    Ok(Json(session))
}

/// Cancels session `id` for `actor` (a key id), audited; the session after
/// the change. The console's Cancel form uses this too.
pub(crate) async fn cancel_session(
    hub: &Arc<Hub>,
    id: i64,
    actor: &str,
) -> Result<SessionQueue, ApiError> {
    let wake_hub = hub.clone();
    let actor = actor.to_string();
    let key_id = actor.clone();
    let (session, changed) = hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                let now = now_ms();
                let cancelled = cancel_in(tx, &wake_hub, id, now)?;
                if let Some((s, true)) = &cancelled {
                    let detail = serde_json::json!({"status": s.status});
                    let subject = format!("session_queue {id}");
                    audit::record(tx, &actor, "session_queue.cancel", &subject, detail, now)?;
                }
                Ok(cancelled)
            })
        })
        .await?
        .ok_or_else(|| session_not_found(id))?;
    if changed {
        tracing::info!(session_queue_id = id, status = %session.status, key_id = %key_id, "cancel requested");
    }
    Ok(session)
}

/// Cancels a session inside the caller's transaction, and tells its robot
/// at once; the session after the change and whether anything changed, or
/// `None` when there is no such session.
pub fn cancel_in(
    tx: &mut crate::db::Conn<'_>,
    hub: &Hub,
    id: i64,
    now: i64,
) -> Result<Option<(SessionQueue, bool)>, DbError> {
    // The robot's row first (as a poll takes it): a poll of its that is
    // looking now either sees this cancel or is waiting, to be answered,
    // by the time this commits.
    let robot = leases::robot_of(tx, id)?;
    if let Some(robot_id) = robot {
        robots::lock_row(tx, robot_id)?;
    }
    // A waiting session is on no robot: its wait is answered `cancelled`,
    // and a robot resumes it only to end it, running its `finally` steps.
    sessions::lock_row(tx, id)?;
    if sessions::status_of(tx, id)? == Some(SessionStatus::Waiting) {
        tx.execute(
            "UPDATE session_queues SET cancel_requested_at = COALESCE(cancel_requested_at, ?2)
             WHERE id = ?1",
            crate::db::sql::params![id, now],
        )?;
        let answer = crate::db::waits::Answer {
            outcome: tasuki_protocol::robot::WaitOutcome::Cancelled {
                at: crate::db::waits::now_timestamp(now),
            },
            by: "cancel".into(),
            comment: None,
        };
        let answered =
            super::approvals::answer_in(tx, hub, id, crate::db::waits::Expect::Any, &answer, now)?;
        return Ok(sessions::get(tx, id)?.map(|s| (s, answered.is_ok())));
    }
    let cancelled = sessions::cancel(tx, id, now)?;
    if let Some((s, true)) = &cancelled
        && s.status == SessionStatus::Running
        // (Granted since the look above: its robot, unlocked.)
        && let Some(robot_id) = robot.or(s.robot.as_ref().map(|r| r.id))
    {
        // Answer the robot's waiting poll now: that is how a cancel
        // reaches it within a second.
        hub.dispatch.cancel(tx, robot_id)?;
    }
    Ok(cancelled)
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
    _: NoQuery,
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
    _: NoQuery,
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
    id_in(path, "session queue")
}

pub(crate) fn session_not_found(id: i64) -> ApiError {
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
