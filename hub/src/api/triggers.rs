//! Webhook triggers: `POST /v1/triggers/{id}` with a signed JSON body
//! queues a session of the trigger's workflow, its params taken from the
//! body through the trigger's mapping. The caller is a third party with
//! no access key: the signature is its credential.
//!
//! `Tasuki-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`. A request is refused when the header is missing or
//! malformed (400), when `t` is more than [`REPLAY_WINDOW`] from the hub's
//! clock (401), when the signature does not match (401, counted as a
//! failed authentication of its address), and when the same signature was
//! taken before (409): a sender's retry of one request is taken once.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Map, Value};
use tasuki_actions::language::model::is_identifier;
use tasuki_protocol::{CreateTrigger, Scope, SessionOrigin, SessionQueue, Trigger, TriggerList};

use super::Hub;
use super::auth::{Authorized, need};
use super::body::JsonBody;
use super::error::ApiError;
use super::query::{NoQuery, id_in, shorten};
use super::sessions::{announce, at_limit, checked_session};
use crate::db::{audit, now_ms, sessions, to_timestamp, triggers, workflows};
use crate::secrets::new_secret;
use crate::signature;

/// How far a request's `t` may be from the hub's clock, either way; and
/// how long its signature is remembered.
pub const REPLAY_WINDOW_MS: i64 = 5 * 60_000;
/// Mappings a trigger may have.
const MAX_MAPPINGS: usize = 64;

pub async fn create(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::WorkflowWrite>,
    _: NoQuery,
    workflow: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<CreateTrigger>,
) -> Result<(StatusCode, Json<Trigger>), ApiError> {
    // A trigger queues sessions: only for who may.
    caller.require(Scope::SessionQueueWrite)?;
    let workflow_id = id_in(workflow, "workflow")?;
    let Some(workflow) = hub
        .db
        .call(move |conn| workflows::params_of(conn, workflow_id))
        .await?
    else {
        return Err(ApiError::not_found(
            "workflow_not_found",
            format!("there is no workflow {workflow_id}; GET /v1/workflows lists them"),
        ));
    };
    if req.params_mapping.len() > MAX_MAPPINGS {
        return Err(ApiError::invalid_field(
            "params_mapping",
            format!("at most {MAX_MAPPINGS} params"),
        ));
    }
    for (name, pointer) in &req.params_mapping {
        let field = format!("params_mapping.{}", shorten(name));
        // A workflow that takes undeclared params takes them from a
        // trigger too (the call's params are checked again at delivery).
        let declared = workflow.params.iter().any(|p| &p.name == name);
        let taken = declared || (workflow.accept_undeclared_params && is_identifier(name));
        if !taken {
            return Err(ApiError::invalid_field(
                &field,
                format!(
                    "workflow `{}` declares no param `{}`{}",
                    workflow.name,
                    shorten(name),
                    if workflow.accept_undeclared_params {
                        " (it takes undeclared params, but this name is not an identifier)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        match pointer.as_str() {
            Some(p) if p.is_empty() || p.starts_with('/') => {}
            _ => {
                return Err(ApiError::invalid_field(
                    &field,
                    "a JSON Pointer into the request's body, such as `/data/customer/id` (`\"\"` \
                     is the whole body)",
                ));
            }
        }
    }
    let secret = new_secret().map_err(|e| {
        tracing::error!(error = %e, "no randomness for a trigger's secret");
        ApiError::internal()
    })?;
    let master = hub.master.clone();
    let (mapping, sealed_secret) = (req.params_mapping, secret.clone());
    let actor = caller.key_id.clone();
    let stored = hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                let now = now_ms();
                let made =
                    triggers::insert(tx, workflow_id, &mapping, &sealed_secret, &master, now)?;
                let subject = format!("trigger {}", made.id);
                let detail = serde_json::json!({"workflow_id": workflow_id});
                audit::record(tx, &actor, "trigger.create", &subject, detail, now)?;
                Ok(made)
            })
        })
        .await?;
    tracing::info!(trigger_id = stored.id, workflow_id, key_id = %caller.key_id, "trigger created");
    let mut shown = shown(stored)?;
    shown.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(shown)))
}

pub async fn list(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    _: NoQuery,
    workflow: Result<Path<String>, PathRejection>,
) -> Result<Json<TriggerList>, ApiError> {
    let workflow_id = id_in(workflow, "workflow")?;
    let stored = hub
        .db
        .call(move |conn| triggers::of_workflow(conn, workflow_id))
        .await?;
    Ok(Json(TriggerList {
        triggers: stored.into_iter().map(shown).collect::<Result<_, _>>()?,
    }))
}

pub async fn delete(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::WorkflowWrite>,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = id_in(id, "trigger")?;
    let actor = caller.key_id.clone();
    let deleted = hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                let deleted = triggers::delete(tx, id)?;
                if deleted {
                    let subject = format!("trigger {id}");
                    let detail = serde_json::json!({});
                    audit::record(tx, &actor, "trigger.delete", &subject, detail, now_ms())?;
                }
                Ok(deleted)
            })
        })
        .await?;
    if !deleted {
        return Err(not_found(id));
    }
    tracing::info!(trigger_id = id, key_id = %caller.key_id, "trigger deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/triggers/{id}`: a signed request from the outside.
pub async fn deliver(
    State(hub): State<Arc<Hub>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SessionQueue>), ApiError> {
    let id = id_in(id, "trigger")?;
    let (t, signature) = signature_header(&headers)?;
    // A bad signature counts as a failed authentication of the address
    // (auth_limit.rs), so a guesser is slowed as at /v1/token.
    let source = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    let trigger_key = format!("trigger {id}");
    let (trigger, params) = hub
        .auth_limit
        .guard(
            source,
            Some(&trigger_key),
            verify(&hub, id, t, &signature, &body),
        )
        .await?;
    let new = checked_session(
        &hub,
        trigger.workflow_id,
        params,
        Some(SessionOrigin::Trigger { trigger_id: id }),
    )
    .await?;
    // The signature is taken and the session stored in one transaction:
    // the same request sent twice at once queues one session, and a
    // request refused above may be sent again.
    let queuing = hub.clone();
    let session = hub
        .db
        .call(move |conn| {
            let now = now_ms();
            let session = conn.transaction(|tx| {
                if !triggers::first_delivery(tx, id, &signature, now, now - 2 * REPLAY_WINDOW_MS)? {
                    return Ok(None);
                }
                let queued = sessions::insert(tx, &new, &queuing.master, now)?;
                if queued.is_err() {
                    triggers::forget_delivery(tx, id, &signature)?;
                }
                Ok(Some(queued))
            })?;
            if let Some(Ok(queued)) = &session {
                announce(conn, &queuing, queued, now);
            }
            Ok(session)
        })
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "replayed",
                format!("this signed request was taken before by trigger {id}; it is taken once"),
            )
        })?
        .map_err(at_limit)?
        .session;
    tracing::info!(
        session_queue_id = session.id,
        trigger_id = id,
        "session queued by a trigger"
    );
    Ok((StatusCode::CREATED, Json(session)))
}

/// Checks the request against the trigger's secret, and maps its body to
/// params.
async fn verify(
    hub: &Hub,
    id: i64,
    t: i64,
    signature: &str,
    body: &[u8],
) -> Result<(triggers::StoredTrigger, Map<String, Value>), ApiError> {
    let master = hub.master.clone();
    let found = hub
        .db
        .call(move |conn| triggers::get(conn, id, &master))
        .await?;
    check_time(t)?;
    // An unknown trigger is refused as a wrong signature is, after the
    // same work, so that ids cannot be probed.
    let (trigger, secret) = match found {
        Some((trigger, secret)) => (Some(trigger), secret),
        None => (None, b"no such trigger".to_vec()),
    };
    let matches = signature::matches(&secret, t, body, signature);
    let Some(trigger) = trigger.filter(|_| matches) else {
        return Err(ApiError::unauthorized(
            "invalid_signature",
            format!(
                "the signature does not match: v1 is the hex HMAC-SHA256 of `{t}.` followed by \
                 the body as sent, keyed with trigger {id}'s secret"
            ),
        ));
    };
    let document: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("the body is not JSON: {e}")))?;
    // What the body lacks is left out: the param's default applies, or
    // the params check names it.
    let mut params = Map::new();
    for (name, pointer) in &trigger.mapping {
        let pointer = pointer.as_str().unwrap_or_default();
        if let Some(value) = document.pointer(pointer) {
            params.insert(name.clone(), value.clone());
        }
    }
    Ok((trigger, params))
}

/// A signature's time `t` within [`REPLAY_WINDOW_MS`] of the hub's clock.
pub(crate) fn check_time(t: i64) -> Result<(), ApiError> {
    let off_by = t
        .checked_mul(1000)
        .and_then(|t_ms| now_ms().checked_sub(t_ms))
        .map(i64::unsigned_abs);
    if off_by.is_none_or(|off| off > REPLAY_WINDOW_MS as u64) {
        return Err(ApiError::unauthorized(
            "stale_signature",
            format!(
                "the signature's time t={t} is more than {} s from the hub's clock; sign each \
                 request when it is sent",
                REPLAY_WINDOW_MS / 1000
            ),
        ));
    }
    Ok(())
}

/// `t=<seconds>,v1=<hex>`.
pub(crate) fn signature_header(headers: &HeaderMap) -> Result<(i64, String), ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(
            "invalid_signature_header",
            format!(
                "the `Tasuki-Signature` header {why}; it is `t=<unix seconds>,v1=<hex HMAC-SHA256>`"
            ),
        )
    };
    let value = headers
        .get(signature::HEADER)
        .ok_or_else(|| bad("is missing"))?
        .to_str()
        .map_err(|_| bad("is not ASCII"))?;
    let (mut t, mut v1) = (None, None);
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("t", n)) => t = n.parse::<i64>().ok(),
            Some(("v1", hex)) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                v1 = Some(hex.to_ascii_lowercase());
            }
            _ => {}
        }
    }
    match (t, v1) {
        (Some(t), Some(v1)) => Ok((t, v1)),
        (None, _) => Err(bad("has no `t=` (whole seconds)")),
        (_, None) => Err(bad("has no `v1=` (64 hex digits)")),
    }
}

fn shown(t: triggers::StoredTrigger) -> Result<Trigger, ApiError> {
    Ok(Trigger {
        id: t.id,
        workflow_id: t.workflow_id,
        path: format!("/v1/triggers/{}", t.id),
        params_mapping: t.mapping,
        secret: None,
        created_at: to_timestamp(t.created_at)?,
    })
}

fn not_found(id: i64) -> ApiError {
    ApiError::not_found("trigger_not_found", format!("there is no trigger {id}"))
}
