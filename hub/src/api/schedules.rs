//! Schedules of a workflow: create, list, read, pause, resume, delete
//! (`crate::schedule` runs them). A schedule queues sessions, and with
//! `overlap: cancel_previous` cancels them, on its own later: making or
//! changing one needs the scopes those calls need, besides
//! `workflow.write`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use jiff::Timestamp;
use tasuki_protocol::{CreateSchedule, Overlap, Schedule, ScheduleList, Scope};

use super::Hub;
use super::auth::{Authorized, Caller, need};
use super::body::JsonBody;
use super::error::ApiError;
use super::query::{NoQuery, id_in};
use super::sessions::checked_session;
use crate::db::schedules::{self, NewSchedule, StoredSchedule};
use crate::db::{DbError, audit, now_ms, to_timestamp};
use crate::schedule::{Cron, time_zone};
use serde_json::json;

/// Schedules one workflow may have.
const MAX_PER_WORKFLOW: usize = 100;
/// How many next times an answer lists.
const NEXT_RUNS: usize = 5;
const MAX_CRON_CHARS: usize = 200;

pub async fn create(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::WorkflowWrite>,
    _: NoQuery,
    workflow: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<CreateSchedule>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let workflow_id = id_in(workflow, "workflow")?;
    may_run(&caller, req.overlap)?;
    if req.cron.chars().count() > MAX_CRON_CHARS {
        return Err(ApiError::invalid_field(
            "cron",
            format!("at most {MAX_CRON_CHARS} characters"),
        ));
    }
    let cron =
        Cron::parse(&req.cron).map_err(|e| ApiError::invalid_field("cron", e.to_string()))?;
    let timezone = req.timezone.unwrap_or_else(|| "UTC".to_string());
    let tz = time_zone(&timezone).map_err(|e| ApiError::invalid_field("timezone", e))?;
    let now = now_ms();
    let Some(first) = cron.next_after(to_timestamp(now)?, &tz) else {
        return Err(ApiError::invalid_field(
            "cron",
            format!("`{}` names no time in the next years", req.cron),
        ));
    };
    // The params are checked as a session's would be, now rather than at
    // the first run.
    let session = checked_session(&hub, workflow_id, req.params.unwrap_or_default(), None).await?;
    let new = NewSchedule {
        workflow_id,
        cron: req.cron,
        timezone,
        params: session.params,
        secret_params: session.secret_params,
        overlap: req.overlap,
        missed: req.missed,
        next_due_at: req.enabled.then_some(first.as_millisecond()),
    };
    let master = hub.master.clone();
    let actor = caller.key_id.clone();
    let stored = hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                if schedules::of_workflow(tx, workflow_id)?.len() >= MAX_PER_WORKFLOW {
                    return Ok(None);
                }
                let made = schedules::insert(tx, &new, &master, now)?;
                audit::record(
                    tx,
                    &actor,
                    "schedule.create",
                    &format!("schedule {}", made.id),
                    json!({"workflow_id": made.workflow_id, "cron": made.cron,
                           "timezone": made.timezone, "enabled": made.enabled}),
                    now,
                )?;
                Ok(Some(made))
            })
        })
        .await?
        .ok_or_else(|| {
            ApiError::unprocessable(
                "too_many_schedules",
                format!(
                    "workflow {workflow_id} has {MAX_PER_WORKFLOW} schedules, the most one may have"
                ),
            )
        })?;
    hub.schedules_wake.now();
    tracing::info!(schedule_id = stored.id, workflow_id, key_id = %caller.key_id, "schedule created");
    Ok((StatusCode::CREATED, Json(shown(stored)?)))
}

pub async fn list(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    _: NoQuery,
    workflow: Result<Path<String>, PathRejection>,
) -> Result<Json<ScheduleList>, ApiError> {
    let workflow_id = id_in(workflow, "workflow")?;
    let stored = hub
        .db
        .call(move |conn| schedules::of_workflow(conn, workflow_id))
        .await?;
    Ok(Json(ScheduleList {
        schedules: stored.into_iter().map(shown).collect::<Result<_, _>>()?,
    }))
}

pub async fn get_one(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Schedule>, ApiError> {
    let id = id_in(id, "schedule")?;
    let stored = hub.db.call(move |conn| schedules::get(conn, id)).await?;
    Ok(Json(shown(stored.ok_or_else(|| not_found(id))?)?))
}

pub async fn pause(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::WorkflowWrite>,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Schedule>, ApiError> {
    let id = id_in(id, "schedule")?;
    let actor = caller.key_id.clone();
    let stored = hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                if !schedules::set_next(tx, id, None)? {
                    return Ok(None);
                }
                let subject = format!("schedule {id}");
                audit::record(tx, &actor, "schedule.pause", &subject, json!({}), now_ms())?;
                schedules::get(tx, id)
            })
        })
        .await?
        .ok_or_else(|| not_found(id))?;
    tracing::info!(schedule_id = id, key_id = %caller.key_id, "schedule paused");
    Ok(Json(shown(stored)?))
}

pub async fn resume(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::WorkflowWrite>,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Schedule>, ApiError> {
    let id = id_in(id, "schedule")?;
    let Some(current) = hub.db.call(move |conn| schedules::get(conn, id)).await? else {
        return Err(not_found(id));
    };
    may_run(&caller, current.overlap)?;
    // From now: runs due while it was paused are not made up.
    let next = next_runs(&current, now_ms(), 1)?
        .first()
        .map(|t| t.as_millisecond());
    let actor = caller.key_id.clone();
    let stored = hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                if !schedules::set_next(tx, id, next)? {
                    return Ok(None);
                }
                let subject = format!("schedule {id}");
                audit::record(tx, &actor, "schedule.resume", &subject, json!({}), now_ms())?;
                schedules::get(tx, id)
            })
        })
        .await?
        .ok_or_else(|| not_found(id))?;
    hub.schedules_wake.now();
    tracing::info!(schedule_id = id, key_id = %caller.key_id, "schedule resumed");
    Ok(Json(shown(stored)?))
}

pub async fn delete(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::WorkflowWrite>,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = id_in(id, "schedule")?;
    let actor = caller.key_id.clone();
    let deleted = hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                let deleted = schedules::delete(tx, id)?;
                if deleted {
                    let subject = format!("schedule {id}");
                    audit::record(tx, &actor, "schedule.delete", &subject, json!({}), now_ms())?;
                }
                Ok(deleted)
            })
        })
        .await?;
    if !deleted {
        return Err(not_found(id));
    }
    tracing::info!(schedule_id = id, key_id = %caller.key_id, "schedule deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// A schedule queues sessions (and may cancel them) on its own: only a
/// caller who may do that makes or resumes one.
fn may_run(caller: &Caller, overlap: Overlap) -> Result<(), ApiError> {
    caller.require(Scope::SessionQueueWrite)?;
    if overlap == Overlap::CancelPrevious {
        caller.require(Scope::SessionQueueDelete)?;
    }
    Ok(())
}

fn next_runs(s: &StoredSchedule, after: i64, n: usize) -> Result<Vec<Timestamp>, ApiError> {
    // Stored only once both parsed: a failure here is the database's.
    let cron = Cron::parse(&s.cron).map_err(|e| corrupt(s.id, e.to_string()))?;
    let tz = time_zone(&s.timezone).map_err(|e| corrupt(s.id, e))?;
    Ok(cron.upcoming(to_timestamp(after)?, &tz, n))
}

fn corrupt(id: i64, why: String) -> ApiError {
    ApiError::from(DbError::Corrupt(format!("schedule {id}: {why}")))
}

fn shown(s: StoredSchedule) -> Result<Schedule, ApiError> {
    // The next runs follow the stored next time (a run due and not yet
    // taken is listed first).
    let next_runs = match s.next_due_at {
        Some(next) if s.enabled => {
            let mut runs = vec![to_timestamp(next)?];
            runs.extend(next_runs(&s, next, NEXT_RUNS - 1)?);
            runs
        }
        _ => Vec::new(),
    };
    Ok(Schedule {
        id: s.id,
        workflow_id: s.workflow_id,
        cron: s.cron,
        timezone: s.timezone,
        params: s.params,
        overlap: s.overlap,
        missed: s.missed,
        enabled: s.enabled,
        next_runs,
        last_due_at: s.last_due_at.map(to_timestamp).transpose()?,
        last_outcome: s.last_outcome,
        last_session_id: s.last_session_id,
        created_at: to_timestamp(s.created_at)?,
    })
}

fn not_found(id: i64) -> ApiError {
    ApiError::not_found("schedule_not_found", format!("there is no schedule {id}"))
}
