//! Answers to waiting sessions (`db/waits.rs`): a person's decision on an
//! approval, an outside system's event, and, from the hub itself, a
//! cancel or the wait's deadline. Each queues the session again, to be
//! resumed on a robot from its checkpoint.
//!
//! - `POST /v1/session_queues/{id}/approval` `{decision: approve|reject,
//!   comment?}`, scope `session_queue.write`;
//! - `POST /v1/session_queues/{id}/events/{name}`, the body any JSON (the
//!   payload), scope `session_queue.write`;
//! - `POST /v1/callbacks/{id}/{name}`, the same without an access key,
//!   signed (`Tasuki-Signature`, as webhook triggers are) with the key the
//!   `wait_event` step gave: for a sender outside, which holds no key.

use std::sync::Arc;

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde_json::Value;
use tasuki_protocol::SessionQueue;
use tasuki_protocol::robot::WaitOutcome;
use tasuki_protocol::session::{
    Decide, Decision, MAX_DECISION_COMMENT_BYTES, MAX_EVENT_PAYLOAD_BYTES,
};

use super::Hub;
use super::auth::{Authorized, need};
use super::body::JsonBody;
use super::error::ApiError;
use super::query::{NoQuery, id_in, shorten};
use super::sessions::session_not_found;
use crate::db::waits::{self, Answer, Expect, Refused};
use crate::db::{Conn, DbError, audit, now_ms, sessions};

pub async fn decide(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::SessionQueueWrite>,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
    JsonBody(body): JsonBody<Decide>,
) -> Result<Json<SessionQueue>, ApiError> {
    let id = id_in(id, "session queue")?;
    Ok(Json(decide_as(&hub, id, body, &caller.key_id).await?))
}

/// `key_id`'s decision on session `id`'s approval: the API's and the
/// console's.
pub(crate) async fn decide_as(
    hub: &Arc<Hub>,
    id: i64,
    body: Decide,
    key_id: &str,
) -> Result<SessionQueue, ApiError> {
    if let Some(c) = &body.comment
        && c.len() > MAX_DECISION_COMMENT_BYTES
    {
        return Err(ApiError::invalid_field(
            "comment",
            format!("at most {MAX_DECISION_COMMENT_BYTES} bytes"),
        ));
    }
    let at = waits::now_timestamp(now_ms());
    let (by, comment) = (key_id.to_string(), body.comment.clone());
    let outcome = match body.decision {
        Decision::Approve => WaitOutcome::Approved { by, at, comment },
        Decision::Reject => WaitOutcome::Rejected { by, at, comment },
    };
    let answer = Answer {
        outcome,
        by: key_id.to_string(),
        comment: body.comment,
    };
    let session = answer_and_offer(hub, id, Expected::Approval, answer).await?;
    tracing::info!(session_queue_id = id, decision = ?body.decision, key_id = %key_id, "approval decided");
    Ok(session)
}

pub async fn deliver(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::SessionQueueWrite>,
    _: NoQuery,
    path: Result<Path<(String, String)>, PathRejection>,
    JsonBody(payload): JsonBody<Value>,
) -> Result<Json<SessionQueue>, ApiError> {
    let Ok(Path((id, name))) = path else {
        return Err(ApiError::invalid_field(
            "path",
            "expected /v1/session_queues/{id}/events/{name}",
        ));
    };
    let id: i64 = id.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::invalid_field("id", "a session queue id, a whole number from 1")
    })?;
    let size = payload.to_string().len();
    if size > MAX_EVENT_PAYLOAD_BYTES {
        return Err(ApiError::invalid_field(
            "payload",
            format!("at most {MAX_EVENT_PAYLOAD_BYTES} bytes as JSON (this is {size})"),
        ));
    }
    let answer = Answer {
        outcome: WaitOutcome::Event {
            payload,
            at: waits::now_timestamp(now_ms()),
        },
        by: caller.key_id.clone(),
        comment: None,
    };
    let session = answer_and_offer(&hub, id, Expected::Event(name), answer).await?;
    tracing::info!(session_queue_id = id, key_id = %caller.key_id, "event delivered");
    Ok(Json(session))
}

/// [`Expect`], owned, to travel to the database's thread.
enum Expected {
    Approval,
    Event(String),
}

pub async fn deliver_signed(
    State(hub): State<Arc<Hub>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    _: NoQuery,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SessionQueue>, ApiError> {
    let Ok(Path((id, name))) = path else {
        return Err(ApiError::invalid_field(
            "path",
            "expected /v1/callbacks/{id}/{name}",
        ));
    };
    let id: i64 = id.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::invalid_field("id", "a session queue id, a whole number from 1")
    })?;
    let (t, signature) = super::triggers::signature_header(&headers)?;
    super::triggers::check_time(t)?;
    // A wrong signature counts as a failed authentication of the address
    // (auth_limit.rs), as at a trigger.
    let source = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let what = format!("callback {id}");
    let verify = async {
        let master = hub.master.clone();
        let key = hub
            .db
            .call(move |conn| waits::callback_key(conn, id, &master))
            .await?;
        // No such wait is refused as a wrong signature is, after the same
        // work, so that sessions cannot be probed.
        let (event, key) = key.unwrap_or_else(|| (String::new(), b"no such wait".to_vec()));
        let matches = crate::signature::matches(&key, t, &body, &signature);
        if !matches || event != name {
            return Err(ApiError::unauthorized(
                "invalid_signature",
                format!(
                    "the signature does not match a wait of session {id} for the event `{}`: v1 \
                     is the hex HMAC-SHA256 of `{t}.` followed by the body as sent, keyed with \
                     the step's signing key",
                    shorten(&name)
                ),
            ));
        }
        Ok(())
    };
    hub.auth_limit.guard(source, Some(&what), verify).await?;
    if body.len() > MAX_EVENT_PAYLOAD_BYTES {
        return Err(ApiError::invalid_field(
            "payload",
            format!(
                "at most {MAX_EVENT_PAYLOAD_BYTES} bytes as JSON (this is {})",
                body.len()
            ),
        ));
    }
    let payload: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}")))?;
    let answer = Answer {
        outcome: WaitOutcome::Event {
            payload,
            at: waits::now_timestamp(now_ms()),
        },
        by: "callback".into(),
        comment: None,
    };
    let session = answer_and_offer(&hub, id, Expected::Event(name), answer).await?;
    tracing::info!(
        session_queue_id = id,
        "event delivered by a signed callback"
    );
    Ok(Json(session))
}

async fn answer_and_offer(
    hub: &Arc<Hub>,
    id: i64,
    expected: Expected,
    answer: Answer,
) -> Result<SessionQueue, ApiError> {
    let hub2 = hub.clone();
    let result = hub
        .db
        .call(move |conn| {
            let now = now_ms();
            let action = format!("session_queue.{}", answer.outcome.name());
            let detail = serde_json::json!({"by": answer.by});
            let expect = match &expected {
                Expected::Approval => Expect::Approval { by: &answer.by },
                Expected::Event(name) => Expect::Event(name),
            };
            let result = answer_in(conn, &hub2, id, expect, &answer, now)?;
            // A decision the approvers list refused is kept too: someone
            // tried to decide what is not theirs.
            let action = match &result {
                Ok(()) => Some(action),
                Err(Refused::NotAnApprover(_)) => {
                    Some("session_queue.approval_refused".to_string())
                }
                Err(_) => None,
            };
            if let Some(action) = action {
                audit::record(
                    conn,
                    &answer.by,
                    &action,
                    &format!("session_queue {id}"),
                    detail,
                    now,
                )?;
            }
            match result {
                Ok(()) => Ok(Ok(sessions::get(conn, id)?)),
                Err(refused) => Ok(Err(refused)),
            }
        })
        .await?;
    match result {
        Ok(Some(session)) => Ok(session),
        Ok(None) | Err(Refused::NoSuchSession) => Err(session_not_found(id)),
        Err(Refused::NotWaiting(why)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_waiting", why))
        }
        Err(Refused::NotAnApprover(why)) => {
            tracing::warn!(session_queue_id = id, "an approval refused: {why}");
            Err(ApiError::new(StatusCode::FORBIDDEN, "not_an_approver", why))
        }
    }
}

/// Answers session `id`'s wait and offers it to a robot, in one go: what
/// the API, a cancel and the deadline sweep share.
pub(crate) fn answer_in(
    conn: &mut Conn<'_>,
    hub: &Hub,
    id: i64,
    expect: Expect<'_>,
    answer: &Answer,
    now: i64,
) -> Result<Result<(), Refused>, DbError> {
    let answered = waits::answer(conn, id, expect, answer, now)?;
    if answered.is_ok() {
        hub.dispatch.offer(conn, id, now)?;
    }
    Ok(answered)
}

/// Answers every wait whose deadline has passed, as its timeout says.
pub(crate) async fn answer_overdue(hub: &Arc<Hub>) {
    let hub2 = hub.clone();
    let result = hub
        .db
        .call(move |conn| {
            let now = now_ms();
            let mut answered = Vec::new();
            for id in waits::overdue(conn, now)? {
                if let Some(outcome) = waits::answer_overdue(conn, id, now)? {
                    hub2.dispatch.offer(conn, id, now)?;
                    answered.push((id, outcome.name()));
                }
            }
            Ok(answered)
        })
        .await;
    match result {
        Ok(answered) => {
            for (id, outcome) in answered {
                tracing::info!(
                    session_queue_id = id,
                    outcome,
                    "a wait reached its deadline"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "answering overdue waits"),
    }
}
