//! `GET /v1/robots`: the registered robots, their state and heartbeat.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use tasuki_protocol::{RobotItem, RobotList, RobotState};

use super::Hub;
use super::auth::{Authorized, need};
use super::error::ApiError;
use super::query::QueryParams;
use crate::db::{leases, robots};
use crate::dispatch::Contact;

/// A robot is online while a poll of its waits on an open connection, and
/// for this long after its last poll began or was answered: a connected
/// robot polls again as soon as it has handled an answer. So a robot shows
/// offline at most this long after its waiting poll's connection closed
/// (hyper ends the request at once, which closes its channel) or after its
/// next poll failed to arrive. On a database shared by several hubs, each
/// hub marks the robots waiting on it as seen every 2 s (`peers.rs`), so a
/// robot waiting on another hub counts as connected here too.
const OFFLINE_AFTER_MS: i64 = 5_000;

/// Whether a robot counts as connected at `now_ms`.
fn online(contact: Contact, last_seen_ms: Option<i64>, now_ms: i64) -> bool {
    contact.waiting
        || [last_seen_ms, contact.answered_at_ms]
            .into_iter()
            .flatten()
            .any(|t| now_ms - t < OFFLINE_AFTER_MS)
}

/// A robot's state at `now_ms`, as `GET /v1/robots` and `/metrics` say it.
pub fn state_of(
    hub: &Hub,
    robot_id: i64,
    last_seen_ms: Option<i64>,
    running: bool,
    now_ms: i64,
) -> RobotState {
    if !online(hub.dispatch.contact(robot_id), last_seen_ms, now_ms) {
        RobotState::Offline
    } else if running {
        RobotState::Busy
    } else {
        RobotState::Idle
    }
}

pub async fn list(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    q: QueryParams,
) -> Result<Json<RobotList>, ApiError> {
    q.finish()?;
    let robots = items(&hub).await?;
    Ok(Json(RobotList {
        total_count: robots.len() as u64,
        robots,
    }))
}

/// Every registered robot as `GET /v1/robots` shows it (the console's
/// robots page too).
pub(crate) async fn items(hub: &Hub) -> Result<Vec<RobotItem>, ApiError> {
    let (rows, running) = hub
        .db
        .call(|conn| Ok((robots::list(conn)?, leases::running_by_robot(conn)?)))
        .await?;
    let mut by_robot: HashMap<i64, Vec<i64>> = HashMap::new();
    for (robot, session) in running {
        by_robot.entry(robot).or_default().push(session);
    }
    let now = crate::db::now_ms();
    let robots: Vec<RobotItem> = rows
        .into_iter()
        .map(|r| {
            let running_sessions = by_robot.remove(&r.id).unwrap_or_default();
            let last_seen = r.last_seen_at.map(|t| t.as_millisecond());
            let state = state_of(hub, r.id, last_seen, !running_sessions.is_empty(), now);
            RobotItem {
                id: r.id,
                name: r.name,
                labels: r.labels,
                version: r.version,
                state,
                max_concurrency: r.max_concurrency,
                draining: r.draining,
                last_heartbeat_at: r.last_seen_at,
                host: r.host,
                metrics: r.metrics,
                running_sessions,
                actions: r.actions,
            }
        })
        .collect();
    Ok(robots)
}
