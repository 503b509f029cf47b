//! Notifications out: `POST /v1/notifications` makes one (a URL, the
//! session statuses that send an event, optionally one workflow);
//! `GET /v1/notifications/{id}/deliveries` is its delivery log; `POST
//! /v1/notifications/{id}/test` sends a test event. `crate::notify` sends.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::json;
use tasuki_protocol::{
    CreateNotification, Delivery, DeliveryList, Notification, NotificationList, Scope,
    SessionStatus,
};

use super::Hub;
use super::auth::{Authorized, need};
use super::body::JsonBody;
use super::error::ApiError;
use super::query::{NoQuery, QueryParams, id_in, page, shorten};
use crate::db::notifications::{self, NewNotification};
use crate::db::{audit, now_ms, workflows};
use crate::secrets::new_secret;

const MAX_URL_CHARS: usize = 2000;
/// Notifications a hub may have.
const MAX_NOTIFICATIONS: usize = 200;

pub async fn create(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::WorkflowWrite>,
    _: NoQuery,
    JsonBody(req): JsonBody<CreateNotification>,
) -> Result<(StatusCode, Json<Notification>), ApiError> {
    // Events carry sessions (params, outputs, errors): only for a caller
    // who may read them.
    caller.require(Scope::SessionQueueRead)?;
    if req.url.chars().count() > MAX_URL_CHARS {
        return Err(ApiError::invalid_field(
            "url",
            format!("at most {MAX_URL_CHARS} characters"),
        ));
    }
    match reqwest::Url::parse(&req.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
        _ => {
            return Err(ApiError::invalid_field(
                "url",
                "an http:// or https:// URL with a host",
            ));
        }
    }
    crate::notify::allowed_as_written(&req.url, hub.notify_private_addresses)
        .map_err(|e| ApiError::invalid_field("url", e))?;
    let events = req
        .events
        .unwrap_or_else(|| ["success", "error", "cancelled"].map(String::from).to_vec());
    if events.is_empty() {
        return Err(ApiError::invalid_field(
            "events",
            "name at least one status",
        ));
    }
    for (i, event) in events.iter().enumerate() {
        match event.parse::<SessionStatus>() {
            Ok(status) if status.is_terminal() => {}
            _ => {
                return Err(ApiError::invalid_field(
                    &format!("events[{i}]"),
                    format!(
                        "`{}` is not a status a session ends with: success, error or cancelled",
                        shorten(event)
                    ),
                ));
            }
        }
    }
    if let Some(workflow_id) = req.workflow_id {
        let found = hub
            .db
            .call(move |conn| workflows::params_of(conn, workflow_id))
            .await?;
        if found.is_none() {
            return Err(ApiError::invalid_field(
                "workflow_id",
                format!("there is no workflow {workflow_id}"),
            ));
        }
    }
    let secret = new_secret().map_err(|e| {
        tracing::error!(error = %e, "no randomness for a notification's secret");
        ApiError::internal()
    })?;
    let new = NewNotification {
        workflow_id: req.workflow_id,
        url: req.url,
        events,
    };
    let (master, sealed) = (hub.master.clone(), secret.clone());
    let actor = caller.key_id.clone();
    let made = hub
        .db
        .call(move |conn| {
            if notifications::list(conn)?.len() >= MAX_NOTIFICATIONS {
                return Ok(None);
            }
            conn.transaction(|tx| {
                let now = now_ms();
                let made = notifications::insert(tx, &new, &sealed, &master, now)?;
                let subject = format!("notification {}", made.id);
                // The URL may hold a credential (a chat webhook's): its
                // origin only.
                let detail = json!({"url": shown_url(&made.url), "events": made.events,
                                    "workflow_id": made.workflow_id});
                audit::record(tx, &actor, "notification.create", &subject, detail, now)?;
                Ok(Some(made))
            })
        })
        .await?
        .ok_or_else(|| {
            ApiError::unprocessable(
                "too_many_notifications",
                format!("the hub has {MAX_NOTIFICATIONS} notifications, the most it keeps"),
            )
        })?;
    tracing::info!(notification_id = made.id, key_id = %caller.key_id, "notification created");
    Ok((
        StatusCode::CREATED,
        Json(Notification {
            secret: Some(secret),
            ..made
        }),
    ))
}

pub async fn list(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    _: NoQuery,
) -> Result<Json<NotificationList>, ApiError> {
    let mut notifications = hub.db.call(notifications::list).await?;
    for n in &mut notifications {
        n.url = shown_url(&n.url);
    }
    Ok(Json(NotificationList { notifications }))
}

pub async fn delete(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::WorkflowWrite>,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = id_in(id, "notification")?;
    let actor = caller.key_id.clone();
    if !hub
        .db
        .call(move |conn| {
            conn.transaction(|tx| {
                let deleted = notifications::delete(tx, id)?;
                if deleted {
                    let subject = format!("notification {id}");
                    let detail = json!({});
                    audit::record(
                        tx,
                        &actor,
                        "notification.delete",
                        &subject,
                        detail,
                        now_ms(),
                    )?;
                }
                Ok(deleted)
            })
        })
        .await?
    {
        return Err(not_found(id));
    }
    tracing::info!(notification_id = id, key_id = %caller.key_id, "notification deleted");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn deliveries(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    id: Result<Path<String>, PathRejection>,
    mut q: QueryParams,
) -> Result<Json<DeliveryList>, ApiError> {
    let id = id_in(id, "notification")?;
    let page = page(&mut q, 50, 200)?;
    q.finish()?;
    let found = hub
        .db
        .call(move |conn| {
            if notifications::get(conn, id)?.is_none() {
                return Ok(None);
            }
            notifications::deliveries(conn, id, page.limit, page.offset).map(Some)
        })
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(DeliveryList { deliveries: found }))
}

/// Queues a `test` event to the notification's URL; its delivery is in the
/// log like any other.
pub async fn test(
    State(hub): State<Arc<Hub>>,
    Authorized(caller, _): Authorized<need::WorkflowWrite>,
    _: NoQuery,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Delivery>), ApiError> {
    caller.require(Scope::SessionQueueRead)?;
    let id = id_in(id, "notification")?;
    let delivery = hub
        .db
        .call(move |conn| {
            if notifications::get(conn, id)?.is_none() {
                return Ok(None);
            }
            let now = now_ms();
            let payload = json!({"event": "test", "notification_id": id});
            let delivery = notifications::queue(conn, id, None, "test", &payload, now)?;
            Ok(notifications::deliveries(conn, id, 1, 0)?
                .into_iter()
                .find(|d| d.id == delivery))
        })
        .await?
        .ok_or_else(|| not_found(id))?;
    hub.notifications_wake.notify_one();
    Ok((StatusCode::CREATED, Json(delivery)))
}

/// A receiver's URL as lists show it: its origin, the rest elided, since
/// a webhook URL's path and query are often its credential.
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let origin = u.origin().ascii_serialization();
            if u.path() == "/" && u.query().is_none() {
                origin
            } else {
                format!("{origin}/…")
            }
        }
        Err(_) => "…".to_string(),
    }
}

fn not_found(id: i64) -> ApiError {
    ApiError::not_found(
        "notification_not_found",
        format!("there is no notification {id}"),
    )
}
