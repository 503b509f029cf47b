//! `PUT /v1/robot/robots/{name}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tasuki_protocol::robot::{MAX_ACTION_OFFERS, MAX_LABELS, check_label};
use tasuki_protocol::{ProblemItem, RegisterRobot, RobotCheck, RobotRegistered};

use super::super::Hub;
use super::super::auth::RobotCaller;
use super::super::body::JsonBody;
use super::super::error::ApiError;
use super::super::query::{NoQuery, QueryParams};
use super::{another_key, deleted, name_taken, own_robot, robot_name};
use crate::db::robots::{self, Registered};
use crate::db::{keys, now_ms};

/// Sessions a robot may run side by side, at most.
const MAX_CONCURRENCY: u32 = 256;

pub async fn register(
    State(hub): State<Arc<Hub>>,
    RobotCaller(caller): RobotCaller,
    _: NoQuery,
    name: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<RegisterRobot>,
) -> Result<Json<RobotRegistered>, ApiError> {
    let name = robot_name(name)?;
    check(&req)?;
    check_labels_of_key(&hub, &caller.key_id, &req.labels).await?;
    let key_id = caller.key_id.clone();
    let lookup = name.clone();
    let max_robots = hub.max_robots_per_key;
    let outcome = hub
        .db
        .call(move |conn| {
            let outcome = robots::register(conn, &lookup, &key_id, &req, max_robots, now_ms())?;
            if let Registered::Ok(robot) = &outcome {
                crate::db::leases::forget_poll_numbers(conn, robot.id)?;
            }
            Ok(outcome)
        })
        .await?;
    match outcome {
        Registered::Ok(robot) => {
            tracing::info!(robot = %robot.name, robot_id = robot.id, key_id = %caller.key_id, "robot registered");
            Ok(Json(RobotRegistered {
                robot_id: robot.id,
                name: robot.name,
                hold_seconds: hub.timings.hold_seconds,
                lease_ttl_seconds: hub.timings.lease_ttl_seconds,
                key_scopes: caller.key_scopes.iter().map(|s| s.to_string()).collect(),
                poll_seq: true,
            }))
        }
        Registered::OtherKey { moved_from_caller } => {
            tracing::warn!(robot = %name, key_id = %caller.key_id, "refused to register a robot of another key");
            Err(another_key(&name, moved_from_caller))
        }
        Registered::Deleted => {
            tracing::warn!(robot = %name, key_id = %caller.key_id, "refused to register a deleted robot again without replace");
            Err(deleted(&name))
        }
        Registered::LimitReached { limit } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "robot_limit_reached",
            format!(
                "the access key `{}` already has {limit} robots, the most one key may register \
                 on this hub (`tasuki-hub serve --max-robots-per-key`); delete one with \
                 `tasuki-hub robots delete NAME`, or use another key",
                caller.key_id
            ),
        )),
        Registered::Taken {
            holder_host,
            last_seen_at,
        } => {
            let seen = last_seen_at
                .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
                .map(|t| format!(", last seen {}", tasuki_protocol::time::format(t)))
                .unwrap_or_default();
            let host = if holder_host.is_empty() {
                "another machine".to_string()
            } else {
                format!("another machine (host `{holder_host}`{seen})")
            };
            Err(name_taken(&name, &host))
        }
    }
}

/// `GET /v1/robot/robots/{name}?instance_id=…`: is the robot registered to
/// this key and this machine? Changes nothing.
pub async fn check_registration(
    State(hub): State<Arc<Hub>>,
    RobotCaller(caller): RobotCaller,
    name: Result<Path<String>, PathRejection>,
    mut q: QueryParams,
) -> Result<Json<RobotCheck>, ApiError> {
    let name = robot_name(name)?;
    let instance_id = q.take("instance_id").unwrap_or_default();
    q.finish()?;
    if instance_id.is_empty() || instance_id.len() > 64 {
        return Err(ApiError::invalid_field(
            "instance_id",
            "the query needs the robot's instance id (1 to 64 bytes)",
        ));
    }
    let robot = own_robot(&hub, &caller, &name, &instance_id).await?;
    Ok(Json(RobotCheck {
        robot_id: robot.id,
        name: robot.name,
        server_time: tasuki_protocol::time::format(jiff::Timestamp::now()),
    }))
}

/// A key made with `--robot-labels` gives its robots those labels at
/// most: a credential allowed by a label then reaches only robots of the
/// keys that may give it.
async fn check_labels_of_key(hub: &Hub, key_id: &str, labels: &[String]) -> Result<(), ApiError> {
    if labels.is_empty() {
        return Ok(());
    }
    let id = key_id.to_owned();
    let Some(allowed) = hub
        .db
        .call(move |conn| keys::robot_labels_of(conn, &id))
        .await?
    else {
        return Ok(());
    };
    for (i, label) in labels.iter().enumerate() {
        if !allowed.contains(label) {
            let path = format!("labels[{i}]");
            let why = format!(
                "the access key `{key_id}` may not give its robots the label `{label}` (it may \
                 give: {}); the hub's operator chooses a key's labels with `tasuki-hub keys \
                 create --robot-labels`",
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            );
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "label_not_allowed",
                format!("{path}: {why}"),
            )
            .with_problems(vec![ProblemItem {
                path,
                line: None,
                column: None,
                message: why,
            }]));
        }
    }
    Ok(())
}

fn check(req: &RegisterRobot) -> Result<(), ApiError> {
    let plain = |field: &str, text: &str, max: usize| {
        if text.len() > max || text.chars().any(char::is_control) {
            Err(ApiError::invalid_field(
                field,
                format!("at most {max} bytes of printable text"),
            ))
        } else {
            Ok(())
        }
    };
    if req.instance_id.is_empty() {
        return Err(ApiError::invalid_field("instance_id", "cannot be empty"));
    }
    plain("instance_id", &req.instance_id, 64)?;
    plain("version", &req.version, 64)?;
    plain("host.hostname", &req.host.hostname, 255)?;
    plain("host.os", &req.host.os, 128)?;
    plain("host.arch", &req.host.arch, 64)?;
    if !(1..=MAX_CONCURRENCY).contains(&req.max_concurrency) {
        return Err(ApiError::invalid_field(
            "max_concurrency",
            format!("from 1 to {MAX_CONCURRENCY}, not {}", req.max_concurrency),
        ));
    }
    if req.labels.len() > MAX_LABELS {
        return Err(ApiError::invalid_field(
            "labels",
            format!("at most {MAX_LABELS} labels"),
        ));
    }
    for (i, label) in req.labels.iter().enumerate() {
        check_label(label).map_err(|e| ApiError::invalid_field(&format!("labels[{i}]"), e))?;
    }
    if let Some(offers) = &req.actions {
        check_catalog(offers)?;
    }
    Ok(())
}

/// The robot's action catalog: what workflows are validated against and
/// sessions routed by, so each name must be one a step could use, once.
fn check_catalog(offers: &[tasuki_protocol::ActionOffer]) -> Result<(), ApiError> {
    if offers.len() > MAX_ACTION_OFFERS {
        return Err(ApiError::invalid_field(
            "actions",
            format!("at most {MAX_ACTION_OFFERS} actions, not {}", offers.len()),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, offer) in offers.iter().enumerate() {
        offer
            .check()
            .map_err(|(field, e)| ApiError::invalid_field(&format!("actions[{i}].{field}"), e))?;
        if !seen.insert(offer.name.as_str()) {
            return Err(ApiError::invalid_field(
                &format!("actions[{i}].name"),
                format!("`{}` is listed twice", offer.name),
            ));
        }
    }
    Ok(())
}
