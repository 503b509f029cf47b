//! The HTTP API: the public, AUTORO-compatible calls, and the robot
//! protocol (docs/protocol.md) under `/v1/robot/` in [`robot`]. Robot calls
//! do not count toward the quota, which only the public API's
//! [`auth::Authorized`] extractor applies.

mod approvals;
mod audit;
pub(crate) mod auth;
pub(crate) mod auth_limit;
mod body;
mod body_deadline;
mod credentials;
pub(crate) mod error;
mod fleet_actions;
mod notifications;
pub(crate) mod params;
pub(crate) mod query;
mod quota;
mod robot;
pub(crate) mod robots;
mod schedules;
pub(crate) mod search;
mod session_limits;
pub(crate) mod sessions;
pub(crate) mod token;
mod triggers;
mod waits;
pub(crate) mod workflows;
mod wrapped_token;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use tasuki_actions::Registry;
use tasuki_protocol::Scopes;
use tower_http::catch_panic::CatchPanicLayer;

use crate::db::{Db, keys, robots as stored_robots};
use crate::dispatch::Dispatcher;
use crate::secrets::MasterKey;
pub(crate) use approvals::{answer_overdue as answer_overdue_waits, decide_as as decide_approval};
pub use auth_limit::{AuthEvent, AuthLimiter, FailureLimits};
pub use error::ApiError;
pub use quota::{DEFAULT_MAX_ROBOTS_PER_KEY, Quota, SYNC_EVERY as QUOTA_SYNC_EVERY};
pub use session_limits::SessionLimits;

/// What every request handler shares.
pub struct Hub {
    pub db: Db,
    pub master: Arc<MasterKey>,
    /// The `iss` and `aud` every token must carry.
    pub issuer: String,
    pub audience: String,
    pub quota: quota::Quota,
    /// Robots one access key may register; each raises its quota.
    pub max_robots_per_key: u64,
    /// The agent's built-ins; workflows are validated against them and the
    /// actions the fleet offers (`fleet_actions.rs`).
    pub registry: Registry,
    /// The robots waiting in a long poll.
    pub dispatch: Dispatcher,
    pub timings: Timings,
    /// Failed authentications, per source and key id.
    pub auth_limit: auth_limit::AuthLimiter,
    /// How much one session may store, and what each has stored.
    pub session_limits: SessionLimits,
    pub session_usage: session_limits::Usage,
    /// How long a request body may take to arrive, before what its size
    /// earns (body_deadline.rs).
    pub body_timeout: Duration,
    /// Told when a schedule is made or resumed here.
    pub schedules_wake: crate::schedule::Wake,
    /// A schedule's run later than this was missed (its `missed` policy
    /// applies).
    pub schedule_missed_after: Duration,
    /// Told whenever a session ends on this hub (for `?wait=`).
    pub session_ended: tokio::sync::Notify,
    /// The `?wait=` creates each key holds open here.
    pub waits: waits::Waits,
    /// This process's counters for `/metrics`.
    pub metrics: crate::metrics::Counters,
    /// Told when notification deliveries are queued here.
    pub notifications_wake: tokio::sync::Notify,
    /// Notifications may go to private addresses (`notify.rs`).
    pub notify_private_addresses: bool,
    /// `--autoro-compat`: a bearer token wrapped over lines, which the
    /// listener then lets through, is read (`wrapped_token.rs`).
    pub autoro_compat: bool,
    /// The hub serves TLS: the console's cookie is marked `Secure`.
    pub tls: bool,
    /// The web console is served at `/ui` (`--no-console` turns it off).
    pub console: bool,
    /// Set when the hub begins to shut down: the console's log streams end
    /// then (the browser reconnects, to this hub or another) rather than
    /// hold the shutdown to its grace period.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// The session whose log lines were stored here last: the console's
    /// log stream of that session looks for them at once rather than at
    /// its next poll (lines stored through another hub are found by that
    /// poll).
    pub logs_stored: tokio::sync::watch::Sender<Option<i64>>,
}

/// How long a poll is held and a lease lives (docs/protocol.md).
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub hold_seconds: u64,
    pub lease_ttl_seconds: u64,
}

impl Timings {
    pub fn lease_ttl_ms(&self) -> i64 {
        self.lease_ttl_seconds as i64 * 1000
    }
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            hold_seconds: tasuki_protocol::robot::HOLD_SECONDS,
            lease_ttl_seconds: tasuki_protocol::robot::LEASE_TTL_SECONDS,
        }
    }
}

/// An access key, ready to verify a signature with.
pub struct KeyMaterial {
    pub secret: Vec<u8>,
    pub scopes: Scopes,
    /// Robots registered by this key, which set its quota.
    pub robots: u64,
}

/// `--body-timeout-seconds`' default.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Access key ids longer than this are not looked up.
const MAX_KEY_ID_LEN: usize = 128;

impl Hub {
    pub fn new(
        db: Db,
        master: Arc<MasterKey>,
        issuer: String,
        audience: String,
        timings: Timings,
    ) -> Hub {
        Hub {
            db,
            dispatch: Dispatcher::new(timings.lease_ttl_ms(), master.clone()),
            master,
            issuer,
            audience,
            quota: quota::Quota::new(quota::CALLS_PER_ROBOT_PER_MINUTE),
            max_robots_per_key: quota::DEFAULT_MAX_ROBOTS_PER_KEY,
            registry: Registry::builtin(),
            timings,
            auth_limit: auth_limit::AuthLimiter::default(),
            session_limits: SessionLimits::default(),
            session_usage: session_limits::Usage::default(),
            body_timeout: DEFAULT_BODY_TIMEOUT,
            schedules_wake: Default::default(),
            schedule_missed_after: crate::schedule::MISSED_AFTER,
            session_ended: tokio::sync::Notify::new(),
            waits: Default::default(),
            metrics: Default::default(),
            notifications_wake: tokio::sync::Notify::new(),
            notify_private_addresses: false,
            autoro_compat: false,
            tls: false,
            console: true,
            closing: tokio::sync::watch::Sender::new(false),
            logs_stored: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The key's secret and scopes, or `None` for an unknown key. Looked up
    /// on every call, so a deleted key stops working at once.
    async fn key_material(&self, key_id: &str) -> Result<Option<KeyMaterial>, ApiError> {
        if key_id.len() > MAX_KEY_ID_LEN {
            return Ok(None);
        }
        let id = key_id.to_string();
        let found = self
            .db
            .call(move |conn| {
                let key = keys::find(conn, &id)?;
                let robots = stored_robots::count_of_key(conn, &id)?;
                Ok(key.map(|k| (k, robots)))
            })
            .await?;
        let Some((key, robots)) = found else {
            return Ok(None);
        };
        let secret = self
            .master
            .open(&key.id, &key.nonce, &key.sealed)
            .map_err(|e| {
                tracing::error!(key_id = %key.id, error = %e, "cannot open an access key's secret; is <db>.key the one this database was created with?");
                ApiError::internal()
            })?;
        let scopes = key.scopes.parse().map_err(|e| {
            tracing::error!(key_id = %key.id, error = %e, "stored scopes do not parse");
            ApiError::internal()
        })?;
        Ok(Some(KeyMaterial {
            secret,
            scopes,
            robots,
        }))
    }
}

pub fn router(hub: Arc<Hub>) -> Router {
    let console = if hub.console {
        crate::console::routes()
    } else {
        Router::new()
    };
    Router::new()
        .route("/v1/token", post(token::create))
        .route(
            "/v1/workflows",
            get(workflows::list).post(workflows::create),
        )
        .route(
            "/v1/session_queues",
            get(sessions::list).post(sessions::create),
        )
        .route("/v1/session_queues/{id}", get(sessions::get_one))
        .route("/v1/session_queues/{id}/cancel", delete(sessions::cancel))
        .route("/v1/session_queues/{id}/approval", post(approvals::decide))
        .route(
            "/v1/session_queues/{id}/events/{event}",
            post(approvals::deliver),
        )
        .route(
            "/v1/callbacks/{id}/{event}",
            post(approvals::deliver_signed),
        )
        .route("/v1/session_queues/{id}/logs", get(sessions::logs))
        .route(
            "/v1/session_queues/{id}/artifacts",
            get(sessions::artifacts),
        )
        .route(
            "/v1/session_queues/{id}/artifacts/{name}",
            get(sessions::artifact),
        )
        .route(
            "/v1/session_queues/{id}/rerun",
            axum::routing::post(sessions::rerun),
        )
        .route(
            "/v1/workflows/{id}/schedules",
            get(schedules::list).post(schedules::create),
        )
        .route(
            "/v1/schedules/{id}",
            get(schedules::get_one).delete(schedules::delete),
        )
        .route(
            "/v1/schedules/{id}/pause",
            axum::routing::post(schedules::pause),
        )
        .route(
            "/v1/schedules/{id}/resume",
            axum::routing::post(schedules::resume),
        )
        .route(
            "/v1/workflows/{id}/triggers",
            get(triggers::list).post(triggers::create),
        )
        .route(
            "/v1/triggers/{id}",
            axum::routing::post(triggers::deliver).delete(triggers::delete),
        )
        .route(
            "/v1/notifications",
            get(notifications::list).post(notifications::create),
        )
        .route("/v1/notifications/{id}", delete(notifications::delete))
        .route(
            "/v1/notifications/{id}/deliveries",
            get(notifications::deliveries),
        )
        .route(
            "/v1/notifications/{id}/test",
            axum::routing::post(notifications::test),
        )
        .route(
            "/v1/credentials",
            get(credentials::list).post(credentials::create),
        )
        .route(
            "/v1/credentials/{name}",
            get(credentials::get_one)
                .put(credentials::update)
                .delete(credentials::delete),
        )
        .route("/v1/audit_log", get(audit::list))
        .route("/v1/robots", get(robots::list))
        .merge(robot::routes())
        .merge(console)
        .route_layer(middleware::from_fn_with_state(
            hub.clone(),
            crate::metrics::count_request,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body::MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            hub.body_timeout,
            body_deadline::deadline,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            ApiError::internal().into_response()
        }))
        .layer(middleware::from_fn(log_request))
        .with_state(hub)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found("not_found", format!("there is no endpoint {}", uri.path()))
}

async fn method_not_allowed(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} does not take this method", uri.path()),
    )
}

/// One line per request. Only the method, path and status: headers carry
/// tokens and bodies carry secrets, so neither is ever logged.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let us = start.elapsed().as_micros() as u64;
    if response.status().is_server_error() {
        tracing::warn!(%method, %path, status, us, "request");
    } else {
        tracing::info!(%method, %path, status, us, "request");
    }
    response
}
