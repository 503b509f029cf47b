//! The agent's own telemetry: Prometheus metrics, liveness, and the
//! opt-in listener (`metrics.listen`, loopback by default) that serves
//! `/healthz` and `/metrics`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::json;
use tasuki_actions::builtin::browser::warm::WarmBrowsers;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    pub call: String,
}

/// Every metric the agent keeps, and what `/healthz` reports.
pub struct Metrics {
    registry: Registry,
    pub sessions: Family<StatusLabel, Counter>,
    pub step_seconds: Histogram,
    pub pickup_seconds: Histogram,
    pub cancel_seconds: Histogram,
    pub lines_shipped: Counter,
    pub lines_spooled: Counter,
    /// Always 0: a line the hub cannot take is spooled, never dropped. It
    /// is exported so that dashboards can alert on it all the same.
    pub lines_dropped: Counter,
    pub hub_errors: Family<CallLabel, Counter>,
    /// Bytes of log lines not (yet) on disk: briefly a few KB; more while
    /// a spool's disk refuses lines and the hub has not taken them.
    pub spool_memory_bytes: Gauge,
    /// Sessions whose spool's disk refuses lines now.
    pub spool_disk_failing: Gauge,
    rss_bytes: Gauge,
    running_gauge: Gauge,
    live: Liveness,
    /// The robot's warm browser (`browser.warm`), read at each scrape.
    warm: std::sync::OnceLock<WarmBrowsers>,
    warm_ready: Gauge,
    warm_bytes: Gauge,
    warm_pss_bytes: Gauge,
}

#[derive(Default)]
struct Liveness {
    connected: AtomicBool,
    last_poll: Mutex<Option<jiff::Timestamp>>,
    running: Mutex<BTreeMap<i64, (String, jiff::Timestamp)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // 1 ms to ~65 s for latencies; 10 ms to ~3 h for steps.
        let latency = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let mut m = Metrics {
            registry: Registry::with_prefix("tasuki"),
            sessions: Family::default(),
            step_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 21)),
            pickup_seconds: latency(),
            cancel_seconds: latency(),
            lines_shipped: Counter::default(),
            lines_spooled: Counter::default(),
            lines_dropped: Counter::default(),
            hub_errors: Family::default(),
            spool_memory_bytes: Gauge::default(),
            spool_disk_failing: Gauge::default(),
            rss_bytes: Gauge::default(),
            running_gauge: Gauge::default(),
            live: Liveness::default(),
            warm: std::sync::OnceLock::new(),
            warm_ready: Gauge::default(),
            warm_bytes: Gauge::default(),
            warm_pss_bytes: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "sessions",
            "Sessions that ended on this robot, by final status",
            m.sessions.clone(),
        );
        r.register(
            "step_duration_seconds",
            "How long steps ran",
            m.step_seconds.clone(),
        );
        r.register(
            "pickup_latency_seconds",
            "From a lease reaching the agent to its session starting",
            m.pickup_seconds.clone(),
        );
        r.register(
            "cancel_latency_seconds",
            "From a cancel reaching the agent to its session having stopped",
            m.cancel_seconds.clone(),
        );
        r.register(
            "log_lines_shipped",
            "Log lines the hub has taken",
            m.lines_shipped.clone(),
        );
        r.register(
            "log_lines_spooled",
            "Log lines the sessions produced, for the spool",
            m.lines_spooled.clone(),
        );
        r.register(
            "log_lines_dropped",
            "Log lines the hub refused, sent as placeholders instead (a line the hub cannot take yet waits in the spool)",
            m.lines_dropped.clone(),
        );
        r.register(
            "spool_memory_bytes",
            "Log lines held in memory, not on disk: more than a few KB means a spool's disk refuses lines and the hub has not taken them",
            m.spool_memory_bytes.clone(),
        );
        r.register(
            "spool_disk_failing",
            "Sessions whose log spool's disk refuses writes (full or failing)",
            m.spool_disk_failing.clone(),
        );
        r.register(
            "hub_request_errors",
            "Failed attempts of calls to the hub, by call",
            m.hub_errors.clone(),
        );
        r.register(
            "resident_memory_bytes",
            "The agent's resident memory",
            m.rss_bytes.clone(),
        );
        r.register(
            "sessions_running",
            "Sessions running now",
            m.running_gauge.clone(),
        );
        r.register(
            "warm_browser_ready",
            "1 while a browser started ahead (browser.warm) waits for the next session",
            m.warm_ready.clone(),
        );
        r.register(
            "warm_browser_bytes",
            "Memory the waiting warm browser holds: resident memory summed over chromedriver, Chromium and its helpers (shared pages counted in each); 0 when none waits",
            m.warm_bytes.clone(),
        );
        r.register(
            "warm_browser_pss_bytes",
            "The same memory proportionally: each shared page divided among the processes that map it, what the warm browser really takes (Linux); 0 when none waits",
            m.warm_pss_bytes.clone(),
        );
        m
    }

    /// The warm browser whose state `/metrics` reports; once, at start.
    pub fn set_warm(&self, warm: Option<WarmBrowsers>) {
        if let Some(warm) = warm {
            let _ = self.warm.set(warm);
        }
    }

    pub fn session_ended(&self, status: &str) {
        self.sessions
            .get_or_create(&StatusLabel {
                status: status.to_string(),
            })
            .inc();
    }

    pub fn hub_error(&self, call: &str) {
        self.hub_errors
            .get_or_create(&CallLabel {
                call: call.to_string(),
            })
            .inc();
    }

    pub fn poll_answered(&self) {
        self.live.connected.store(true, Ordering::SeqCst);
        *lock(&self.live.last_poll) = Some(jiff::Timestamp::now());
    }

    pub fn poll_failed(&self) {
        self.live.connected.store(false, Ordering::SeqCst);
    }

    pub fn session_started(&self, id: i64, workflow: &str) {
        let mut running = lock(&self.live.running);
        running.insert(id, (workflow.to_string(), jiff::Timestamp::now()));
        self.running_gauge.set(running.len() as i64);
    }

    pub fn session_left(&self, id: i64) {
        let mut running = lock(&self.live.running);
        running.remove(&id);
        self.running_gauge.set(running.len() as i64);
    }

    /// Reads /proc (the agent's and the warm browser's memory): call it on
    /// the blocking pool.
    fn encode(&self) -> String {
        self.rss_bytes.set(own_rss_bytes() as i64);
        if let Some(warm) = self.warm.get() {
            let memory = warm.memory(true);
            self.warm_ready.set(i64::from(warm.is_ready()));
            self.warm_bytes
                .set(memory.map_or(0, |m| m.rss_bytes) as i64);
            self.warm_pss_bytes
                .set(memory.and_then(|m| m.pss_bytes).unwrap_or(0) as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The `/healthz` document, and whether the agent is healthy: it is
    /// connected to the hub (its last poll was answered).
    fn health(&self, hub: &str, robot: &str) -> (bool, serde_json::Value) {
        let connected = self.live.connected.load(Ordering::SeqCst);
        let last_poll = *lock(&self.live.last_poll);
        let now = jiff::Timestamp::now();
        let running: Vec<serde_json::Value> = lock(&self.live.running)
            .iter()
            .map(|(id, (workflow, since))| {
                json!({
                    "session_queue_id": id,
                    "workflow": workflow,
                    "started_at": since.to_string(),
                    "running_seconds": (now - *since).get_seconds(),
                })
            })
            .collect();
        let doc = json!({
            "status": if connected { "ok" } else { "disconnected" },
            "connected": connected,
            "hub": hub,
            "robot": robot,
            "version": env!("CARGO_PKG_VERSION"),
            "last_poll_at": last_poll.map(|t| t.to_string()),
            "last_poll_age_seconds": last_poll.map(|t| (now - t).get_seconds()),
            "running_sessions": running,
        });
        (connected, doc)
    }
}

fn own_rss_bytes() -> u64 {
    let Ok(pid) = sysinfo::get_current_pid() else {
        return 0;
    };
    let Ok(mut system) = sysinfo::System::new() else {
        return 0;
    };
    system.refresh_processes_specifics(
        sysinfo::ProcessesToUpdate::Some(&[pid]),
        true,
        sysinfo::ProcessRefreshKind::nothing().with_memory(),
    );
    system.process(pid).map_or(0, |p| p.memory())
}

struct Served {
    metrics: Arc<Metrics>,
    /// `/healthz` names the hub in use, which changes when one stops
    /// answering.
    hubs: Arc<super::client::HubUrls>,
    robot: String,
}

/// Binds the listener now, so that a taken port fails the start with a
/// clear error, and serves it in the background.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    hubs: Arc<super::client::HubUrls>,
    robot: String,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} for metrics.listen: {e}; pick another address or unset it"
        )
    })?;
    let bound = listener.local_addr()?;
    let state = Arc::new(Served {
        metrics,
        hubs,
        robot,
    });
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/metrics", axum::routing::get(metrics_text))
        .with_state(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the health listener stopped");
        }
    });
    Ok(bound)
}

async fn healthz(State(s): State<Arc<Served>>) -> impl IntoResponse {
    let hub = crate::settings::masked_url(s.hubs.current_url());
    let (healthy, doc) = s.metrics.health(&hub, &s.robot);
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
}

async fn metrics_text(State(s): State<Arc<Served>>) -> impl IntoResponse {
    let metrics = s.metrics.clone();
    let text = tokio::task::spawn_blocking(move || metrics.encode())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Seconds since `since`, for the latency histograms.
pub fn seconds_since(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}
