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

/// A robot not seen for the hold plus this long, and not waiting in a
/// poll, is offline: a connected robot polls at least once per hold.
const OFFLINE_SLACK_SECONDS: i64 = 15;

pub async fn list(
    State(hub): State<Arc<Hub>>,
    _: Authorized<need::SessionQueueRead>,
    q: QueryParams,
) -> Result<Json<RobotList>, ApiError> {
    q.finish()?;
    let (rows, running) = hub
        .db
        .call(|conn| Ok((robots::list(conn)?, leases::running_by_robot(conn)?)))
        .await?;
    let mut by_robot: HashMap<i64, Vec<i64>> = HashMap::new();
    for (robot, session) in running {
        by_robot.entry(robot).or_default().push(session);
    }
    let now = jiff::Timestamp::now();
    let robots: Vec<RobotItem> = rows
        .into_iter()
        .map(|r| {
            let running_sessions = by_robot.remove(&r.id).unwrap_or_default();
            let recently = r.last_seen_at.is_some_and(|t| {
                now.duration_since(t).as_secs()
                    < hub.timings.hold_seconds as i64 + OFFLINE_SLACK_SECONDS
            });
            let state = if !(recently || hub.dispatch.is_waiting(r.id)) {
                RobotState::Offline
            } else if running_sessions.is_empty() {
                RobotState::Idle
            } else {
                RobotState::Busy
            };
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
            }
        })
        .collect();
    Ok(Json(RobotList {
        total_count: robots.len() as u64,
        robots,
    }))
}
