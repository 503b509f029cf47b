//! `tasuki-hub serve`: open the store, listen (plain or TLS), run the
//! accept loop of [`crate::listener`] and the lease sweeper, and shut down
//! gracefully on SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, Hub};
use crate::db::{error_handlers, leases, notifications, now_ms, secret_params, workflows};
use crate::listener::{EdgeLimits, Server};
use crate::store;
use crate::tls::{ReloadableTls, TlsFiles};

/// How long in-flight requests get to finish after SIGINT or SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub store: store::StoreArgs,
    pub issuer: String,
    pub audience: String,
    pub quota_per_robot: u64,
    pub max_robots_per_key: u64,
    pub timings: api::Timings,
    /// A schedule's run later than this was missed.
    pub schedule_missed_after: Duration,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Notifications may go to private addresses.
    pub notify_private_addresses: bool,
    /// `--autoro-compat` (hub/README.md, "AUTORO-compatible mode").
    pub autoro_compat: bool,
    /// Serve the web console at `/ui`.
    pub console: bool,
    pub edge: EdgeLimits,
    /// The allowance of a request body (api/body_deadline.rs).
    pub body_timeout: Duration,
    pub auth_failures: api::FailureLimits,
    pub session_limits: api::SessionLimits,
    pub tls: Option<TlsFiles>,
}

/// Reads again, once, the params of workflows stored before params had
/// types, a page at a time, and says in the log which changed.
async fn reread_params(db: &crate::db::Db) -> anyhow::Result<()> {
    loop {
        let found = db
            .call(|conn| workflows::refresh_param_specs(conn, 200))
            .await?;
        for (id, name) in &found.changed {
            tracing::warn!(
                workflow_id = id,
                %name,
                "this workflow's stored params differ from how this version reads them (params \
                 now have types); its sessions are checked against the new reading, as robots \
                 read it"
            );
        }
        for (id, name) in &found.kept {
            tracing::warn!(
                workflow_id = id,
                %name,
                "this workflow no longer loads cleanly; its stored params are kept as they were"
            );
        }
        if found.read == 0 {
            return Ok(());
        }
    }
}

pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    let (db, master) = store::open(&opts.store).await?;
    let t = opts.timings;
    if t.lease_ttl_seconds < t.hold_seconds + 5 {
        anyhow::bail!(
            "--lease-ttl-seconds ({}) must be at least --hold-seconds ({}) + 5: robots renew \
             their leases once per poll, and a poll may be held that long",
            t.lease_ttl_seconds,
            t.hold_seconds
        );
    }
    let ttl_ms = t.lease_ttl_ms();
    let extended = db
        .call(move |conn| leases::extend_after_restart(conn, now_ms(), ttl_ms))
        .await?;
    if extended > 0 {
        tracing::info!(
            leases = extended,
            "gave the leases of a previous run a fresh deadline"
        );
    }
    reread_params(&db).await?;
    let tls = match opts.tls {
        Some(files) => Some(ReloadableTls::load(files).context("TLS")?),
        None => None,
    };
    let mut hub = Hub::new(db, master, opts.issuer, opts.audience, opts.timings);
    hub.quota = api::Quota::new(opts.quota_per_robot);
    hub.max_robots_per_key = opts.max_robots_per_key;
    hub.session_limits = opts.session_limits;
    hub.auth_limit = api::AuthLimiter::new(opts.auth_failures);
    let auth_events = hub.db.is_shared().then(|| hub.auth_limit.share());
    hub.body_timeout = opts.body_timeout;
    hub.schedule_missed_after = opts.schedule_missed_after;
    hub.notify_private_addresses = opts.notify_private_addresses;
    hub.autoro_compat = opts.autoro_compat;
    hub.tls = tls.is_some();
    hub.console = opts.console;
    let hub = Arc::new(hub);
    let listener_task = crate::peers::listen(hub.clone())
        .await
        .context("listening to the other hubs of the database")?;
    let sweeper = tokio::spawn(sweep_leases(hub.clone()));
    let scheduler = tokio::spawn(crate::schedule::run(hub.clone()));
    let notifier = tokio::spawn(crate::notify::run(hub.clone()));
    if let Some(addr) = opts.metrics_listen {
        let bound = crate::metrics::serve(addr, hub.clone()).await?;
        tracing::info!(addr = %bound, "metrics listening");
    }
    let seen_marker = listener_task
        .is_some()
        .then(|| tokio::spawn(crate::peers::mark_waiting_robots_seen(hub.clone())));
    let auth_teller =
        auth_events.map(|events| tokio::spawn(crate::peers::tell_auth_events(hub.clone(), events)));
    let quota_sync = hub
        .db
        .is_shared()
        .then(|| tokio::spawn(sync_quota(hub.clone())));
    #[cfg(unix)]
    let reloader = match &tls {
        Some(tls) => Some(tls.clone().reload_on_sighup()?),
        None => None,
    };
    let listener = TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("cannot listen on {}", opts.listen))?;
    let addr = listener.local_addr().context("the listening address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    // The one line on stdout: scripts and tests read the port from it.
    println!("listening on {scheme}://{addr}");
    tracing::info!(%addr, scheme, db = %opts.store.db, "tasuki-hub serving");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = Server {
        listener,
        router: api::router(hub.clone()),
        tls,
        limits: opts.edge,
    };
    let server = tokio::spawn(server.run(stop_rx));
    shutdown_signal().await;
    tracing::info!("shutting down");
    sweeper.abort();
    scheduler.abort();
    notifier.abort();
    for task in [listener_task, seen_marker, quota_sync, auth_teller]
        .into_iter()
        .flatten()
    {
        task.abort();
    }
    #[cfg(unix)]
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    // Waiting polls are answered now rather than held to the end of the
    // grace period; robots simply poll again, elsewhere or later.
    hub.dispatch.close();
    hub.closing.send_replace(true);
    let _ = stop_tx.send(true);
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(joined) => joined.context("the server task")?,
        Err(_) => tracing::warn!(
            "requests still open after {} s; stopping anyway",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    Ok(())
}

/// How often expired leases are looked for. Deadlines are tens of seconds,
/// so a second of slack is invisible.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How often the sweeper looks for purged secret params to wipe from the
/// write-ahead log.
const WIPE_EVERY: Duration = Duration::from_secs(5);

/// Running sessions whose robot stopped renewing end as `robot_lost`; and
/// every few seconds, secrets purged since the last look are wiped.
async fn sweep_leases(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wipe = tokio::time::interval(WIPE_EVERY);
    wipe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Unknown at start: the first look checkpoints once.
    let mut wiped_up_to = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wipe.tick() => {
                wiped_up_to = wipe_purged_secrets(&hub, wiped_up_to).await;
                continue;
            }
        }
        if let Err(e) = hub.db.checkpoint().await {
            tracing::warn!(error = %e, "checkpointing the write-ahead log");
        }
        let swept_hub = hub.clone();
        let result = hub
            .db
            .call(move |conn| {
                let now = now_ms();
                let swept = leases::sweep(conn, now, swept_hub.timings.lease_ttl_ms())?;
                for &(session_id, robot_id) in &swept.lost {
                    // One robot's trouble must not keep the others' lost
                    // sessions from being reported below.
                    if let Err(e) = swept_hub.dispatch.session_ended(conn, robot_id, session_id, now) {
                        tracing::warn!(session_queue_id = session_id, robot_id, error = %e, "freeing a lost session's slot");
                    }
                }
                for &(session_id, robot_id) in &swept.requeued {
                    let offered = swept_hub
                        .dispatch
                        .slot_freed(conn, robot_id, now)
                        .and_then(|()| swept_hub.dispatch.offer(conn, session_id, now));
                    if let Err(e) = offered {
                        tracing::warn!(session_queue_id = session_id, error = %e, "offering a session queued again");
                    }
                }
                Ok(swept)
            })
            .await;
        match result {
            Ok(swept) => {
                for (id, robot_id) in swept.requeued {
                    tracing::warn!(
                        session_queue_id = id,
                        robot_id,
                        "lease expired; the workflow's retry_on queued the session again"
                    );
                }
                for (id, robot_id) in swept.lost {
                    tracing::warn!(
                        session_queue_id = id,
                        robot_id,
                        "lease expired; session ended as robot_lost"
                    );
                }
            }
            Err(e) => tracing::error!(error = %e, "sweeping leases"),
        }
        queue_error_handlers(&hub).await;
        crate::api::answer_overdue_waits(&hub).await;
        cancel_overlong_runs(&hub).await;
        make_notification_events(&hub).await;
    }
}

/// Asks the cancel of every run past `--max-session-duration`, and tells
/// its robot at once.
async fn cancel_overlong_runs(hub: &Arc<Hub>) {
    let Some(max) = hub.session_limits.duration else {
        return;
    };
    let max_ms = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
    let told = hub.clone();
    let result = hub
        .db
        .call(move |conn| {
            let asked = leases::over_duration(conn, now_ms(), max_ms)?;
            for &(_, robot_id) in &asked {
                told.dispatch.cancel(conn, robot_id)?;
            }
            Ok(asked)
        })
        .await;
    match result {
        Ok(asked) => {
            for (id, robot_id) in asked {
                tracing::warn!(
                    session_queue_id = id,
                    robot_id,
                    "a run passed --max-session-duration; cancel asked"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "cancelling runs past --max-session-duration"),
    }
}

/// Makes the notification events of sessions that ended since the last
/// look (db/notifications.rs), and wakes the sender.
async fn make_notification_events(hub: &Arc<Hub>) {
    // Batch after batch until the sessions that ended are all seen.
    match hub
        .db
        .call(|conn| {
            let mut made = 0;
            loop {
                let (batch, more) = notifications::make_events(conn, now_ms())?;
                made += batch;
                if !more {
                    return Ok(made);
                }
            }
        })
        .await
    {
        Ok(0) => {}
        Ok(_) => hub.notifications_wake.notify_one(),
        Err(e) => tracing::error!(error = %e, "making notification events"),
    }
}

/// Queues the error-handler workflows of sessions that failed since the
/// last look (db/error_handlers.rs), and offers them to the robots.
async fn queue_error_handlers(hub: &Arc<Hub>) {
    let offering = hub.clone();
    let result = hub
        .db
        .call(move |conn| {
            let now = now_ms();
            // Batch after batch until every failure is seen.
            let mut queued = Vec::new();
            loop {
                let (batch, more) = error_handlers::queue_due(conn, &offering.master, now)?;
                queued.extend(batch);
                if !more {
                    break;
                }
            }
            for &(_, handler) in &queued {
                api::sessions::offer(conn, &offering, handler, now);
            }
            Ok(queued)
        })
        .await;
    match result {
        Ok(queued) => {
            for (failed, handler) in queued {
                tracing::info!(
                    session_queue_id = handler,
                    handles = failed,
                    "queued the error handler of a failed session"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "queueing error handlers"),
    }
}

/// Adds this hub's API calls to the counts the hubs of a shared database
/// keep together, and learns theirs (`api/quota.rs`).
async fn sync_quota(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(api::QUOTA_SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = hub.quota.sync(&hub.db).await {
            tracing::warn!(error = %e, "adding up the API calls of the hubs");
        }
    }
}

/// Checkpoints the database when secret params were purged since
/// `wiped_up_to` (the purge count the last checkpoint covered), so that
/// their sealed bytes leave the write-ahead log; returns the count covered
/// now.
async fn wipe_purged_secrets(hub: &Hub, wiped_up_to: Option<i64>) -> Option<i64> {
    let result = hub
        .db
        .call(move |conn| {
            let purges = secret_params::purges(conn)?;
            if Some(purges) == wiped_up_to {
                return Ok(Some(purges));
            }
            Ok(secret_params::checkpoint(conn)?.then_some(purges))
        })
        .await;
    match result {
        Ok(Some(purges)) => Some(purges),
        Ok(None) => {
            tracing::warn!(
                "a reader kept the write-ahead log from being emptied; purged secret params \
                 stay in it until the next try"
            );
            wiped_up_to
        }
        Err(e) => {
            tracing::error!(error = %e, "checkpointing after purged secret params");
            wiped_up_to
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
