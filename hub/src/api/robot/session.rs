//! Calls about one leased session: release, logs, steps, artifacts, finish.
//! Each carries the lease id in the `tasuki-lease` header, and each is
//! safe to repeat.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use tasuki_protocol::robot::{
    MAX_ARTIFACT_BYTES, MAX_CHECKPOINT_BYTES, MAX_LOG_BATCH, MAX_LOG_MESSAGE_BYTES,
    MAX_OUTPUTS_BYTES, MAX_WAIT_MS, OnTimeout, Suspension, WaitSpec, check_artifact_name,
};
use tasuki_protocol::session::WaitKind;
use tasuki_protocol::{
    FinishSession, LogBatch, LogsStored, SessionQueue, SessionStatus, StepState, StepsStored,
    StepsUpdate,
};

use super::super::Hub;
use super::super::auth::{Caller, RobotCaller};
use super::super::body::JsonBody;
use super::super::error::ApiError;
use super::super::query::{NoQuery, path_id};
use super::{lease_header, lease_lost};
use crate::db::artifacts::{self, Artifact};
use crate::db::leases::{self, Finished, LeaseCheck, Withdrawn};
use crate::db::{now_ms, robots, sessions, workflows};
use tasuki_actions::runtime::wait::{
    OnTimeout as DeclaredOnTimeout, WaitKind as DeclaredKind, declared_waits,
};

const MAX_STEPS: usize = 100_000;

fn session_id(path: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(text) = path.map_err(|e| ApiError::bad_request("invalid_id", e.body_text()))?;
    path_id("session", &text)
}

/// Checks the call's lease against the session, and that the robot
/// holding it was registered with the caller's key; the robot that holds
/// it. A lease id shown with another key is answered as a lost lease, like
/// an unknown one: the answer says nothing about whose it is, and an agent
/// whose robot an operator moved to another key stops working on it.
async fn held(hub: &Hub, caller: &Caller, id: i64, lease: &str) -> Result<LeaseCheck, ApiError> {
    let lease = lease.to_string();
    let (check, owner) = hub
        .db
        .call(move |conn| {
            let check = leases::check(conn, id, &lease)?;
            let owner = match check {
                LeaseCheck::Held { robot_id } => robots::key_of(conn, robot_id)?,
                _ => None,
            };
            Ok((check, owner))
        })
        .await?;
    match check {
        LeaseCheck::NoSession => Err(ApiError::not_found(
            "session_queue_not_found",
            format!("there is no session {id}"),
        )),
        LeaseCheck::NotHeld => Err(lease_lost(
            id,
            "it was never this lease's, or it expired and the session went to another robot \
             or ended",
        )),
        LeaseCheck::Held { robot_id } if owner.as_deref() != Some(caller.key_id.as_str()) => {
            tracing::warn!(
                session_queue_id = id,
                robot_id,
                key_id = %caller.key_id,
                "a lease call with a lease held by another key's robot; refused"
            );
            Err(lease_lost(
                id,
                "it was never this lease's, or it expired and the session went to another robot \
                 or ended",
            ))
        }
        held => Ok(held),
    }
}

/// Hands a lease back unrun (the robot began draining as it arrived): the
/// session is queued again at once, or ends `cancelled` if that was asked
/// for meanwhile. A lease the robot has listed in a poll is not taken back.
pub async fn release(
    State(hub): State<Arc<Hub>>,
    RobotCaller(caller): RobotCaller,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id = session_id(id)?;
    let lease = lease_header(&headers)?;
    held(&hub, &caller, id, &lease).await?;
    let hub2 = hub.clone();
    let withdrawn = hub
        .db
        .call(move |conn| {
            let now = now_ms();
            let withdrawn = leases::withdraw(conn, id, &lease, now)?;
            match withdrawn {
                Withdrawn::Queued => hub2.dispatch.offer(conn, id, now)?,
                Withdrawn::Cancelled => hub2.dispatch.offer_next_waiting(conn, id, now)?,
                Withdrawn::Confirmed | Withdrawn::Gone => {}
            }
            Ok(withdrawn)
        })
        .await?;
    match withdrawn {
        Withdrawn::Queued | Withdrawn::Cancelled => Ok(StatusCode::NO_CONTENT),
        Withdrawn::Confirmed => Err(ApiError::new(
            StatusCode::CONFLICT,
            "lease_confirmed",
            format!(
                "session {id}'s lease was listed in one of this robot's polls, so it may be \
                 running; it cannot be handed back, only finished"
            ),
        )),
        Withdrawn::Gone => Err(lease_lost(id, "the session has ended")),
    }
}

pub async fn logs(
    State(hub): State<Arc<Hub>>,
    RobotCaller(caller): RobotCaller,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    JsonBody(mut batch): JsonBody<LogBatch>,
) -> Result<Json<LogsStored>, ApiError> {
    let id = session_id(id)?;
    // A NUL is a character JSON carries and PostgreSQL's text cannot
    // store: on either database it is kept as U+FFFD, so a step that
    // printed one neither loses its line nor stops the session's log.
    for line in &mut batch.lines {
        for text in std::iter::once(&mut line.message).chain(line.step_id.as_mut()) {
            if text.contains('\0') {
                *text = text.replace('\0', "\u{fffd}");
            }
        }
    }
    let lease = lease_header(&headers)?;
    if batch.lines.len() > MAX_LOG_BATCH {
        return Err(ApiError::invalid_field(
            "lines",
            format!(
                "at most {MAX_LOG_BATCH} lines a batch, not {}",
                batch.lines.len()
            ),
        ));
    }
    for (i, line) in batch.lines.iter().enumerate() {
        if line.seq == 0 {
            return Err(ApiError::invalid_field(
                &format!("lines[{i}].seq"),
                "seq counts from 1",
            ));
        }
        if line.message.len() > MAX_LOG_MESSAGE_BYTES {
            return Err(ApiError::invalid_field(
                &format!("lines[{i}].message"),
                format!("at most {MAX_LOG_MESSAGE_BYTES} bytes"),
            ));
        }
        if line.step_id.as_ref().is_some_and(|s| s.len() > 256) {
            return Err(ApiError::invalid_field(
                &format!("lines[{i}].step_id"),
                "at most 256 bytes",
            ));
        }
    }
    // Logs are accepted for as long as the lease is the session's, even
    // after the finish: they are the robot's record of what ran.
    held(&hub, &caller, id, &lease).await?;
    let hub2 = hub.clone();
    let high_seq = hub
        .db
        .call(move |conn| {
            leases::confirm(conn, id, &lease)?;
            hub2.session_limits
                .append_logs(&hub2.session_usage, conn, id, &lease, &batch.lines)
        })
        .await??;
    hub.logs_stored.send_replace(Some(id));
    Ok(Json(LogsStored { high_seq }))
}

pub async fn steps(
    State(hub): State<Arc<Hub>>,
    RobotCaller(caller): RobotCaller,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    JsonBody(update): JsonBody<StepsUpdate>,
) -> Result<Json<StepsStored>, ApiError> {
    let id = session_id(id)?;
    let lease = lease_header(&headers)?;
    check_steps(&update.steps, "steps")?;
    held(&hub, &caller, id, &lease).await?;
    let revision = hub
        .db
        .call(move |conn| {
            leases::confirm(conn, id, &lease)?;
            leases::update_steps(conn, id, &lease, update.revision, &update.steps)
        })
        .await?;
    Ok(Json(StepsStored { revision }))
}

/// The longest step id a robot may report.
const MAX_STEP_ID_BYTES: usize = 256;

fn check_steps(steps: &[StepState], field: &str) -> Result<(), ApiError> {
    if steps.len() > MAX_STEPS {
        return Err(ApiError::invalid_field(
            field,
            format!("at most {MAX_STEPS} steps"),
        ));
    }
    for (i, s) in steps.iter().enumerate() {
        if s.id.is_empty() || s.id.len() > MAX_STEP_ID_BYTES {
            return Err(ApiError::invalid_field(
                &format!("{field}[{i}].id"),
                format!("a step id has 1 to {MAX_STEP_ID_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

pub async fn artifact(
    State(hub): State<Arc<Hub>>,
    RobotCaller(caller): RobotCaller,
    _: NoQuery,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let Path((id, name)) =
        path.map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
    let id = path_id("session", &id)?;
    check_artifact_name(&name).map_err(|e| ApiError::bad_request("invalid_artifact_name", e))?;
    let lease = lease_header(&headers)?;
    held(&hub, &caller, id, &lease).await?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "artifact_too_large",
                format!("an artifact is at most {MAX_ARTIFACT_BYTES} bytes"),
            )
        } else {
            ApiError::bad_request(
                "unreadable_body",
                format!("cannot read the artifact: {}", rejection.body_text()),
            )
        }
    })?;
    let sha256 = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body).as_ref());
    let artifact = Artifact {
        content_type: content_type_for(&name).to_string(),
        name,
        data: body.to_vec(),
    };
    let limits = hub.session_limits;
    hub.db
        .call(move |conn| {
            // Uploads of one session take turns (on any hub), so that two
            // at once cannot both fit beside the same stored ones.
            conn.transaction(|tx| {
                sessions::lock_row(tx, id)?;
                // Again under the lock: the run may have been queued again
                // since the lease check (`retry_on`).
                if !matches!(leases::check(tx, id, &lease)?, LeaseCheck::Held { .. }) {
                    return Ok(Err(lease_lost(id, "the session was queued again since")));
                }
                leases::confirm(tx, id, &lease)?;
                let size = artifact.data.len() as u64;
                if let Err(refused) = limits.check_artifact(tx, id, &artifact.name, size)? {
                    return Ok(Err(refused));
                }
                artifacts::put(tx, id, &artifact, &sha256, now_ms())?;
                Ok(Ok(()))
            })
        })
        .await??;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn finish(
    State(hub): State<Arc<Hub>>,
    RobotCaller(caller): RobotCaller,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    JsonBody(report): JsonBody<FinishSession>,
) -> Result<Json<SessionQueue>, ApiError> {
    let id = session_id(id)?;
    let lease = lease_header(&headers)?;
    match (report.status, &report.suspend) {
        (SessionStatus::Waiting, Some(suspension)) => check_suspension(suspension)?,
        (SessionStatus::Waiting, None) => {
            return Err(ApiError::invalid_field(
                "suspend",
                "a waiting session says what it waits for and where it goes on from",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::invalid_field(
                "suspend",
                format!(
                    "only a waiting session is suspended, not a {} one",
                    report.status
                ),
            ));
        }
        (status, None) if !status.is_terminal() => {
            return Err(ApiError::invalid_field(
                "status",
                format!("a finished session is success, error, cancelled or waiting, not {status}"),
            ));
        }
        _ => {}
    }
    if report.idempotency_key.is_empty() || report.idempotency_key.len() > 128 {
        return Err(ApiError::invalid_field(
            "idempotency_key",
            "1 to 128 characters",
        ));
    }
    check_steps(&report.steps, "steps")?;
    if let Some(outputs) = &report.outputs {
        let size = outputs.to_string().len();
        if !outputs.is_object() || size > MAX_OUTPUTS_BYTES {
            return Err(ApiError::invalid_field(
                "outputs",
                format!(
                    "an object of at most {MAX_OUTPUTS_BYTES} bytes as JSON (this is {size} bytes)"
                ),
            ));
        }
    }
    if let Some(e) = &report.error
        && (e.code.len() > 128 || e.message.len() > MAX_LOG_MESSAGE_BYTES)
    {
        return Err(ApiError::invalid_field(
            "error",
            "code at most 128 bytes, message at most 64 KiB",
        ));
    }
    // A report sent again gets the first answer, even when the first one
    // let go of the lease (a suspended session is on no robot).
    let key = report.idempotency_key.clone();
    let repeated = hub
        .db
        .call(move |conn| {
            Ok(if leases::reported_with(conn, id, &key)? {
                sessions::get(conn, id)?
            } else {
                None
            })
        })
        .await?;
    if let Some(session) = repeated {
        return Ok(Json(session));
    }
    let LeaseCheck::Held { robot_id, .. } = held(&hub, &caller, id, &lease).await? else {
        return Err(ApiError::internal());
    };
    if let Some(suspension) = &report.suspend {
        check_declared_wait(&hub, id, &suspension.wait).await?;
    }
    let status = report.status;
    let hub2 = hub.clone();
    let (outcome, session) = hub
        .db
        .call(move |conn| {
            let now = now_ms();
            let outcome = leases::finish(conn, id, &lease, &report, &hub2.master, now)?;
            match outcome {
                Finished::Now => hub2.dispatch.session_ended(conn, robot_id, id, now)?,
                Finished::Suspended { queued } => {
                    hub2.dispatch.session_ended(conn, robot_id, id, now)?;
                    if queued {
                        hub2.dispatch.offer(conn, id, now)?;
                    }
                }
                Finished::Requeued => {
                    hub2.dispatch.slot_freed(conn, robot_id, now)?;
                    hub2.dispatch.offer(conn, id, now)?;
                }
                Finished::Already | Finished::AfterLoss | Finished::Conflict { .. } => {}
            }
            Ok((outcome, sessions::get(conn, id)?))
        })
        .await?;
    let session = session.ok_or_else(ApiError::internal)?;
    // Its log is complete: the counter is only a cache of the database,
    // which seeds it again should a late batch still come.
    hub.session_usage.forget(id);
    hub.session_ended.notify_waiters();
    match outcome {
        Finished::Now => {
            tracing::info!(session_queue_id = id, %status, key_id = %caller.key_id, "session finished");
            Ok(Json(session))
        }
        Finished::Already => Ok(Json(session)),
        Finished::Suspended { .. } => {
            tracing::info!(session_queue_id = id, key_id = %caller.key_id, "session waits; its robot is free");
            Ok(Json(session))
        }
        Finished::Requeued => {
            tracing::info!(
                session_queue_id = id,
                "a run cut off by an agent restart; retry_on queued the session again"
            );
            Ok(Json(session))
        }
        Finished::AfterLoss => {
            tracing::info!(session_queue_id = id, %status, "a robot back from a lost lease delivered its session's log");
            Err(lease_lost(
                id,
                "the hub ended it as robot_lost while this robot was out of touch; its log \
                 lines are stored and the hub's note on the loss follows them",
            ))
        }
        Finished::Conflict { status } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!("session {id} has already ended as {status}; this report was not stored"),
        )),
    }
}

/// A suspension's fields, each checked: the hub shows the wait and keeps
/// the checkpoint until the answer comes.
fn check_suspension(s: &Suspension) -> Result<(), ApiError> {
    let wait = &s.wait;
    if wait.step_id.is_empty() || wait.step_id.len() > MAX_STEP_ID_BYTES {
        return Err(ApiError::invalid_field(
            "suspend.wait.step_id",
            format!("a step id has 1 to {MAX_STEP_ID_BYTES} bytes"),
        ));
    }
    if wait
        .message
        .as_ref()
        .is_some_and(|m| m.len() > MAX_LOG_MESSAGE_BYTES)
    {
        return Err(ApiError::invalid_field(
            "suspend.wait.message",
            "at most 64 KiB",
        ));
    }
    match (wait.kind, &wait.event) {
        (WaitKind::Event, Some(name)) => {
            let fine = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !fine {
                return Err(ApiError::invalid_field(
                    "suspend.wait.event",
                    "1 to 64 letters, digits, `_` or `-`",
                ));
            }
        }
        (WaitKind::Event, None) => {
            return Err(ApiError::invalid_field(
                "suspend.wait.event",
                "an event wait names its event",
            ));
        }
        (WaitKind::Approval, Some(_)) => {
            return Err(ApiError::invalid_field(
                "suspend.wait.event",
                "an approval waits for no event",
            ));
        }
        (WaitKind::Approval, None) => {}
    }
    match (&wait.secret, wait.kind) {
        (Some(secret), WaitKind::Event) if (16..=1024).contains(&secret.len()) => {}
        (Some(_), WaitKind::Event) => {
            return Err(ApiError::invalid_field(
                "suspend.wait.secret",
                "a signing key has 16 to 1024 bytes",
            ));
        }
        (Some(_), WaitKind::Approval) => {
            return Err(ApiError::invalid_field(
                "suspend.wait.secret",
                "an approval takes no signing key",
            ));
        }
        (None, _) => {}
    }
    if wait.timeout_ms == 0 || wait.timeout_ms > MAX_WAIT_MS {
        return Err(ApiError::invalid_field(
            "suspend.wait.timeout_ms",
            format!("1 to {MAX_WAIT_MS} (30 days)"),
        ));
    }
    let size = s.checkpoint.to_string().len();
    if !s.checkpoint.is_object() || size > MAX_CHECKPOINT_BYTES {
        return Err(ApiError::invalid_field(
            "suspend.checkpoint",
            format!("an object of at most {MAX_CHECKPOINT_BYTES} bytes as JSON (this is {size})"),
        ));
    }
    // A resumed run goes on from the checkpoint's wait, so it must be the
    // wait reported (and checked against the workflow), nothing else.
    let inner = s
        .checkpoint
        .get("wait")
        .cloned()
        .and_then(|w| serde_json::from_value::<WaitSpec>(w).ok());
    if inner.as_ref() != Some(wait) {
        return Err(ApiError::invalid_field(
            "suspend.checkpoint.wait",
            "the checkpoint resumes from the wait the suspension reports, and only that one",
        ));
    }
    Ok(())
}

/// What a robot says the session waits for must be a waiting step of the
/// session's workflow, as written there: its step at the top level, its
/// kind, event, timeout and `on_timeout`, and a signing key only when the
/// step gives one, and an approval's approvers (`check_suspension` has
/// made the checkpoint's wait this one). A robot key can then neither
/// invent a wait, nor choose the key a callback is signed with for a step
/// that takes none, nor who may approve. (The message and
/// the key's value are rendered on the robot: only their size is checked.)
async fn check_declared_wait(hub: &Hub, id: i64, wait: &WaitSpec) -> Result<(), ApiError> {
    let source = hub
        .db
        .call(move |conn| match sessions::workflow_of(conn, id)? {
            Some(workflow_id) => workflows::source_of(conn, workflow_id),
            None => Ok(None),
        })
        .await?
        .ok_or_else(ApiError::internal)?;
    let origin = if source.format == "json" {
        "workflow.json"
    } else {
        "workflow.yaml"
    };
    let declared = tokio::task::spawn_blocking(move || declared_waits(&source.text, origin))
        .await
        .map_err(|_| ApiError::internal())?;
    let Some(step) = declared.iter().find(|d| d.step_id == wait.step_id) else {
        return Err(ApiError::invalid_field(
            "suspend.wait.step_id",
            format!(
                "the session's workflow has no waiting step `{}` at its top level",
                wait.step_id
            ),
        ));
    };
    let kind = match step.kind {
        DeclaredKind::Approval => WaitKind::Approval,
        DeclaredKind::Event => WaitKind::Event,
    };
    let unlike = |field: &str, what: &str| {
        Err(ApiError::invalid_field(
            &format!("suspend.wait.{field}"),
            format!("the workflow's step `{}` {what}", step.step_id),
        ))
    };
    if wait.kind != kind {
        return unlike("kind", "is another kind of wait");
    }
    if wait.event != step.event {
        return unlike("event", "waits for another event");
    }
    if wait.timeout_ms != step.timeout_ms {
        return unlike("timeout_ms", &format!("waits {} ms", step.timeout_ms));
    }
    let on_timeout = match step.on_timeout {
        DeclaredOnTimeout::Approve => OnTimeout::Approve,
        DeclaredOnTimeout::Reject => OnTimeout::Reject,
    };
    if kind == WaitKind::Approval && wait.on_timeout != on_timeout {
        return unlike("on_timeout", "decides otherwise when nobody does");
    }
    if wait.approvers != step.approvers {
        return unlike("approvers", "lists other approvers");
    }
    if wait.secret.is_some() != step.secret.is_some() {
        return unlike(
            "secret",
            if step.secret.is_some() {
                "gives a signing key"
            } else {
                "gives no signing key"
            },
        );
    }
    Ok(())
}

/// The content type an artifact is served with, from its extension.
pub fn content_type_for(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("txt" | "log") => "text/plain; charset=utf-8",
        Some("csv") => "text/csv",
        Some("json") => "application/json",
        Some("html" | "htm") => "text/plain; charset=utf-8",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
