//! `serve --metrics-listen ADDR`: Prometheus metrics on a listener of
//! their own (off unless asked for; give it a loopback or private
//! address), what autoscalers and alerts read.
//!
//! Two kinds. Counters of this process (`tasuki_hub_api_requests_total`,
//! `tasuki_hub_quota_refusals_total`): with several hubs, sum them. And
//! the fleet's state, read from the database at each scrape (sessions,
//! queues, robots, recent pickups): the same on every hub of a database,
//! so take it from one (or `max` it).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tasuki_protocol::RobotState;

use crate::api::{Hub, robots::state_of};
use crate::db::{leases, metrics, now_ms, robots};

/// Pickups of the sessions that started in this window are summarised.
const PICKUP_WINDOW_MS: i64 = 5 * 60_000;

/// The counters this process keeps.
#[derive(Default)]
pub struct Counters {
    api_requests: Family<RouteLabels, Counter>,
    pub quota_refusals: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    /// The route's pattern (`/v1/session_queues/{id}`), never the path
    /// itself, so that ids do not make a series each.
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionLabels {
    status: String,
    workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowLabel {
    workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RobotLabel {
    label: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuantileLabel {
    quantile: String,
}

/// Counts each request of a route of the API by its pattern and status
/// (a route layer: requests that match no route are not counted).
pub async fn count_request(hub: State<Arc<Hub>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(String::new, |p| p.as_str().to_string());
    let response = next.run(req).await;
    hub.metrics
        .api_requests
        .get_or_create(&RouteLabels {
            route,
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

/// Binds now, so that a taken port fails the start, and serves
/// `/metrics` in the background.
pub async fn serve(addr: SocketAddr, hub: Arc<Hub>) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} for --metrics-listen: {e}; pick another address")
    })?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(hub);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    });
    Ok(bound)
}

async fn scrape(State(hub): State<Arc<Hub>>) -> Response {
    match encode(&hub).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the metrics");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the hub cannot read its database\n",
            )
                .into_response()
        }
    }
}

async fn encode(hub: &Arc<Hub>) -> anyhow::Result<String> {
    let now = now_ms();
    let (snapshot, robot_rows, running) = hub
        .db
        .call(move |conn| {
            Ok((
                metrics::snapshot(conn, now - PICKUP_WINDOW_MS)?,
                robots::list(conn)?,
                leases::running_by_robot(conn)?,
            ))
        })
        .await?;
    let mut registry = Registry::with_prefix("tasuki_hub");
    registry.register(
        "api_requests",
        "API requests answered by this hub, by route and status",
        hub.metrics.api_requests.clone(),
    );
    registry.register(
        "quota_refusals",
        "API calls this hub refused with 429 for the key's quota",
        hub.metrics.quota_refusals.clone(),
    );

    let sessions = Family::<SessionLabels, Gauge>::default();
    for (status, workflow, n) in &snapshot.sessions {
        sessions
            .get_or_create(&SessionLabels {
                status: status.clone(),
                workflow: workflow.clone(),
            })
            .set(*n as i64);
    }
    registry.register("sessions", "Sessions by status and workflow", sessions);

    let depth = Family::<WorkflowLabel, Gauge>::default();
    let oldest = Family::<WorkflowLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let label_depth = Family::<RobotLabel, Gauge>::default();
    let label_oldest = Family::<RobotLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for (workflow, labels, n, queued_at) in &snapshot.queued {
        let wait = (now - queued_at).max(0) as f64 / 1000.0;
        let key = WorkflowLabel {
            workflow: workflow.clone(),
        };
        depth.get_or_create(&key).inc_by(*n as i64);
        let old = oldest.get_or_create(&key);
        old.set(old.get().max(wait));
        for label in labels {
            let key = RobotLabel {
                label: label.clone(),
            };
            label_depth.get_or_create(&key).inc_by(*n as i64);
            let old = label_oldest.get_or_create(&key);
            old.set(old.get().max(wait));
        }
    }
    registry.register("queue_depth", "Queued sessions by workflow", depth);
    registry.register(
        "queue_oldest_wait_seconds",
        "How long the oldest queued session of each workflow has waited",
        oldest,
    );
    registry.register(
        "queue_depth_by_robot_label",
        "Queued sessions whose workflow needs robots with this label",
        label_depth,
    );
    registry.register(
        "queue_oldest_wait_by_robot_label_seconds",
        "How long the oldest queued session needing this robot label has waited",
        label_oldest,
    );

    let mut by_robot = std::collections::HashSet::new();
    for (robot, _) in running {
        by_robot.insert(robot);
    }
    let states = Family::<StateLabel, Gauge>::default();
    for state in [RobotState::Idle, RobotState::Busy, RobotState::Offline] {
        states.get_or_create(&state_label(state)).set(0);
    }
    for r in robot_rows {
        let last_seen = r.last_seen_at.map(|t| t.as_millisecond());
        let state = state_of(hub, r.id, last_seen, by_robot.contains(&r.id), now);
        states.get_or_create(&state_label(state)).inc();
    }
    registry.register("robots", "Registered robots by state", states);

    let pickup = Family::<QuantileLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let mut waits = snapshot.pickups_ms;
    waits.sort_unstable();
    for q in [0.5, 0.9, 0.99] {
        if let Some(ms) = nearest_rank(&waits, q) {
            pickup
                .get_or_create(&QuantileLabel {
                    quantile: q.to_string(),
                })
                .set(ms as f64 / 1000.0);
        }
    }
    registry.register(
        "recent_pickup_seconds",
        "Queued to started, for the sessions started in the last 5 minutes, by quantile",
        pickup,
    );
    let count = Gauge::<i64>::default();
    count.set(waits.len() as i64);
    registry.register(
        "recent_pickups",
        "Sessions started in the last 5 minutes",
        count,
    );

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

fn state_label(state: RobotState) -> StateLabel {
    StateLabel {
        state: state.to_string(),
    }
}

/// The nearest-rank quantile of sorted values.
fn nearest_rank(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}
