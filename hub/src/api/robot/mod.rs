//! The robot protocol (docs/protocol.md), under `/v1/robot/`. Every call
//! needs the `robot` scope and none counts toward the public quota.

mod poll;
mod register;
mod session;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{post, put};
use tasuki_protocol::robot::{LEASE_HEADER, LEASE_LOST, MAX_ARTIFACT_BYTES, check_robot_name};

use super::Hub;
use super::auth::Caller;
use super::error::ApiError;
use crate::db::robots::{self, RobotRow};

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route(
            "/v1/robot/robots/{name}",
            put(register::register).get(register::check_registration),
        )
        .route("/v1/robot/robots/{name}/poll", post(poll::poll))
        .route("/v1/robot/sessions/{id}/release", post(session::release))
        .route("/v1/robot/sessions/{id}/logs", post(session::logs))
        .route("/v1/robot/sessions/{id}/steps", put(session::steps))
        .route(
            "/v1/robot/sessions/{id}/artifacts/{name}",
            put(session::artifact).layer(DefaultBodyLimit::max(MAX_ARTIFACT_BYTES)),
        )
        .route("/v1/robot/sessions/{id}/finish", post(session::finish))
}

fn robot_name(
    path: Result<axum::extract::Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    let axum::extract::Path(name) =
        path.map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
    check_robot_name(&name).map_err(|e| ApiError::bad_request("invalid_robot_name", e))?;
    Ok(name)
}

/// The registered robot `name`, which must be this caller's and this
/// instance's. The agent stops on `robot_of_another_key`,
/// `robot_name_taken` and `robot_deleted`, so their messages say what
/// happened.
async fn own_robot(
    hub: &Hub,
    caller: &Caller,
    name: &str,
    instance_id: &str,
) -> Result<RobotRow, ApiError> {
    let lookup = name.to_string();
    let Some(robot) = hub.db.call(move |conn| robots::find(conn, &lookup)).await? else {
        let (instance, key, lookup) = (
            instance_id.to_string(),
            caller.key_id.clone(),
            name.to_string(),
        );
        let retired = hub
            .db
            .call(move |conn| robots::is_retired(conn, &instance, &key, &lookup))
            .await?;
        if retired {
            return Err(deleted(name));
        }
        return Err(ApiError::not_found(
            "robot_not_registered",
            format!("there is no robot `{name}` on this hub; run `tasuki register` first"),
        ));
    };
    if robot.key_id != caller.key_id {
        let moved_from_caller = robot.moved_from_key_id.as_deref() == Some(&caller.key_id);
        return Err(another_key(name, moved_from_caller));
    }
    if robot.instance_id.is_empty() {
        // Moved to this key by an operator, and not registered since: the
        // agent registers on this answer.
        return Err(ApiError::not_found(
            "robot_not_registered",
            format!(
                "the robot `{name}` was moved to this access key by a hub operator and no \
                 machine has registered it since; run `tasuki register`"
            ),
        ));
    }
    if robot.instance_id != instance_id {
        let host = if robot.hostname.is_empty() {
            "another machine".to_string()
        } else {
            format!("another machine (host `{}`)", robot.hostname)
        };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "robot_name_taken",
            format!(
                "this robot name `{name}` was taken over by {host} with --replace; this machine \
                 no longer gets its work. Register this machine under another name, or take \
                 the name back with `tasuki register --replace`"
            ),
        ));
    }
    Ok(robot)
}

/// The robot belongs to another access key. Only a hub operator moves a
/// robot between keys, so `--replace` is no way out.
fn another_key(name: &str, moved_from_caller: bool) -> ApiError {
    let what = if moved_from_caller {
        format!(
            "this robot `{name}` was moved to another access key by a hub operator \
             (`tasuki-hub robots transfer`); this key can no longer drive it"
        )
    } else {
        format!(
            "the robot name `{name}` belongs to another access key, and a robot is driven only \
             by the key that registered it (--replace does not change that); only a hub \
             operator can move it to this key, with `tasuki-hub robots transfer {name} \
             --to-key <access_key_id>`, or choose another name"
        )
    };
    ApiError::new(StatusCode::FORBIDDEN, "robot_of_another_key", what)
}

/// An operator deleted the robot this machine had registered. The agent
/// would register it again on `robot_not_registered`; on this it stops.
/// 410: no retry or new token changes it (an agent takes a 403 for a
/// credentials problem).
fn deleted(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "robot_deleted",
        format!(
            "a hub operator deleted robot `{name}` (tasuki-hub robots delete); register this \
             machine again to bring it back: tasuki register --name {name} --replace ..."
        ),
    )
}

fn name_taken(name: &str, by: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "robot_name_taken",
        format!(
            "the robot name `{name}` is registered by {by}; choose another name, or pass \
             --replace to take the name over (the other machine then stops getting work)"
        ),
    )
}

/// The lease id every session call carries in the `tasuki-lease` header.
fn lease_header(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get(LEASE_HEADER).ok_or_else(|| {
        ApiError::bad_request(
            "missing_lease",
            format!("calls about a session carry its lease id in the `{LEASE_HEADER}` header"),
        )
    })?;
    let text = value
        .to_str()
        .ok()
        .filter(|t| !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_lease",
                format!("the `{LEASE_HEADER}` header must hold a lease id (hex digits)"),
            )
        })?;
    Ok(text.to_string())
}

pub(crate) fn lease_lost(session_id: i64, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        LEASE_LOST,
        format!("the lease on session {session_id} is no longer honoured: {why}"),
    )
}
