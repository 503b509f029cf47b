//! `POST /v1/robot/robots/{name}/poll`: heartbeat, lease renewal, cancels
//! and new work, in one long poll.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use tasuki_protocol::{HeldLease, PollRequest, PollResponse};

use super::super::Hub;
use super::super::auth::RobotCaller;
use super::super::body::JsonBody;
use super::super::error::ApiError;
use super::super::query::NoQuery;
use super::{own_robot, robot_name};
use crate::db::leases::Withdrawn;
use crate::db::{Conn, leases, now_ms, robots};
use crate::dispatch::{Poll, Wake, Want};

/// Held leases one poll may list, at most.
const MAX_HELD: usize = 1024;

pub async fn poll(
    State(hub): State<Arc<Hub>>,
    RobotCaller(caller): RobotCaller,
    _: NoQuery,
    name: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<PollRequest>,
) -> Result<Json<PollResponse>, ApiError> {
    let name = robot_name(name)?;
    check(&req)?;
    let robot = own_robot(&hub, &caller, &name, &req.instance_id).await?;
    let robot_id = robot.id;
    let held = req.held.clone();
    let poll_seq = req.poll_seq.map(|s| s as i64);
    let answer_now = {
        let hub = hub.clone();
        hub.db
            .clone()
            .call(move |conn| {
                // One robot's polls take turns (on PostgreSQL they may run
                // on several connections, or hubs, at once): a poll sent
                // again with the same id must find the lease that the
                // first sending of it was granted.
                let mut withdrawn = Vec::new();
                let answer = conn.transaction(|conn| {
                    let previous = robots::lock_for_poll(conn, robot_id)?;
                    let now = now_ms();
                    let poll_token = hub.dispatch.poll_token();
                    hub.dispatch
                        .polled(conn, robot_id, previous.as_deref(), now)?;
                    robots::heartbeat(
                        conn,
                        robot_id,
                        req.metrics.as_ref(),
                        req.draining,
                        &poll_token,
                        now,
                    )?;
                    let lost =
                        leases::renew(conn, robot_id, &req.held, now, hub.timings.lease_ttl_ms())?;
                    if let Some(seq) = poll_seq {
                        withdrawn = leases::withdraw_unlisted(conn, robot_id, seq, &req.held, now)?;
                    }
                    let cancel = leases::cancels_for(conn, robot_id, &req.held)?;
                    let mut offered =
                        leases::offered_by_poll(conn, robot_id, &req.poll_id, &hub.master)?;
                    // A draining robot that holds nothing is waiting for nothing:
                    // it has only come back for what an abandoned poll was sent.
                    if !lost.is_empty()
                        || !cancel.is_empty()
                        || !offered.is_empty()
                        || (req.draining && req.held.is_empty())
                    {
                        return Ok(Ok(response(offered, cancel, lost)));
                    }
                    let want = Want {
                        robot_id,
                        name: robot.name,
                        key_id: robot.key_id,
                        instance_id: robot.instance_id,
                        poll_id: req.poll_id,
                        poll_seq,
                        poll_token,
                        free_slots: req.free_slots,
                        max_concurrency: robot.max_concurrency,
                        draining: req.draining,
                    };
                    match hub.dispatch.take_or_wait(conn, want)? {
                        Poll::Leased(lease) => {
                            offered.push(*lease);
                            Ok(Ok(response(offered, cancel, lost)))
                        }
                        Poll::Closed => Ok(Ok(PollResponse::default())),
                        Poll::Wait { rx, seq } => Ok(Err((rx, seq))),
                    }
                })?;
                // After the commit: an offer inside the poll's transaction
                // could reach another robot before the session is queued
                // for anyone else to see.
                offer_withdrawn(&hub, conn, robot_id, &withdrawn);
                Ok(answer)
            })
            .await?
    };
    let (mut rx, seq) = match answer_now {
        Ok(answer) => return Ok(Json(with_timings(answer, &hub))),
        Err(waiting) => waiting,
    };
    let wake = tokio::select! {
        wake = &mut rx => wake.ok(),
        _ = tokio::time::sleep(hold_of(hub.timings.hold_seconds)) => {
            if hub.dispatch.forget(robot_id, seq) {
                None
            } else {
                // Answered just as the hold ran out: whoever took the
                // registration is sending the wake (or dropping the
                // channel) now, and a lease in it must not be dropped.
                rx.await.ok()
            }
        }
    };
    let answer = match wake {
        Some(Wake::Lease(lease, committed)) => match committed.await {
            Ok(()) => response(vec![*lease], Vec::new(), Vec::new()),
            // The grant's transaction failed, perhaps at its commit, whose
            // outcome is then unknown: the robot sends this poll again
            // (same poll id), and gets the lease if it was granted.
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "poll_again",
                    "the hub could not tell whether a session was leased to this poll; send it \
                     again with the same poll_id",
                ));
            }
        },
        Some(Wake::Cancel) => {
            let cancel = hub
                .db
                .call(move |conn| leases::cancels_for(conn, robot_id, &held))
                .await?;
            response(Vec::new(), cancel, Vec::new())
        }
        Some(Wake::Replaced) | Some(Wake::Shutdown) | None => PollResponse::default(),
    };
    Ok(Json(with_timings(answer, &hub)))
}

/// Offers again the sessions whose leases this robot never received
/// (`leases::withdraw_unlisted`). A failure here loses nothing: each
/// session is queued, and the next poll that may take it finds it.
fn offer_withdrawn(hub: &Hub, conn: &mut Conn<'_>, robot_id: i64, withdrawn: &[(i64, Withdrawn)]) {
    for &(session_id, outcome) in withdrawn {
        if matches!(outcome, Withdrawn::Confirmed | Withdrawn::Gone) {
            continue;
        }
        tracing::warn!(
            robot_id,
            session_queue_id = session_id,
            ?outcome,
            "a lease sent to an earlier poll never reached its robot; taken back"
        );
        let now = now_ms();
        let offered = match outcome {
            Withdrawn::Queued => hub.dispatch.offer(conn, session_id, now),
            Withdrawn::Cancelled => {
                hub.session_ended.notify_waiters();
                hub.dispatch.offer_next_waiting(conn, session_id, now)
            }
            Withdrawn::Confirmed | Withdrawn::Gone => Ok(()),
        };
        if let Err(e) = offered {
            tracing::warn!(session_queue_id = session_id, error = %e, "cannot offer a session taken back");
        }
    }
}

/// The hold of one poll: the configured hold, less up to a fifth at
/// random. Robots that started together would otherwise come back in the
/// same second at every hold, and thousands of polls arriving at once slow
/// every call of the hub for seconds.
fn hold_of(hold_seconds: u64) -> Duration {
    use std::hash::BuildHasher;
    let full_ms = hold_seconds.saturating_mul(1000);
    // Each RandomState is seeded afresh: a cheap, good enough spread.
    let draw = std::collections::hash_map::RandomState::new().hash_one(full_ms);
    Duration::from_millis(full_ms - draw % (full_ms / 5 + 1))
}

fn response(leases: Vec<tasuki_protocol::Lease>, cancel: Vec<i64>, lost: Vec<i64>) -> PollResponse {
    PollResponse {
        leases,
        cancel,
        lost,
        ..PollResponse::default()
    }
}

fn with_timings(mut r: PollResponse, hub: &Hub) -> PollResponse {
    r.hold_seconds = hub.timings.hold_seconds;
    r.lease_ttl_seconds = hub.timings.lease_ttl_seconds;
    r
}

fn check(req: &PollRequest) -> Result<(), ApiError> {
    let id = |field: &str, text: &str| {
        if text.is_empty() || text.len() > 64 || text.chars().any(|c| c.is_control()) {
            Err(ApiError::invalid_field(
                field,
                "1 to 64 bytes of printable text",
            ))
        } else {
            Ok(())
        }
    };
    id("instance_id", &req.instance_id)?;
    id("poll_id", &req.poll_id)?;
    if req.poll_seq.is_some_and(|s| s > i64::MAX as u64) {
        return Err(ApiError::invalid_field(
            "poll_seq",
            format!("at most {}", i64::MAX),
        ));
    }
    if req.free_slots > 1024 {
        return Err(ApiError::invalid_field(
            "free_slots",
            format!("at most 1024, not {}", req.free_slots),
        ));
    }
    if req.held.len() > MAX_HELD {
        return Err(ApiError::invalid_field(
            "held",
            format!("at most {MAX_HELD} leases"),
        ));
    }
    for (i, HeldLease { lease_id, .. }) in req.held.iter().enumerate() {
        if lease_id.is_empty() || lease_id.len() > 64 {
            return Err(ApiError::invalid_field(
                &format!("held[{i}].lease_id"),
                "a lease id has 1 to 64 characters",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_is_spread_over_its_last_fifth() {
        let holds: Vec<Duration> = (0..200).map(|_| hold_of(25)).collect();
        assert!(
            holds
                .iter()
                .all(|h| *h >= Duration::from_secs(20) && *h <= Duration::from_secs(25))
        );
        let distinct: std::collections::HashSet<_> = holds.iter().collect();
        assert!(
            distinct.len() > 100,
            "{} distinct holds of 200",
            distinct.len()
        );
    }
}
