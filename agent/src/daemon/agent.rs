//! `tasuki agent`: the poll loop and the session supervisor.
//!
//! One poll is always outstanding: it carries the heartbeat and the held
//! leases, brings new sessions when a slot is free, and brings cancels
//! the moment the hub has one. Sessions run in their own tasks; the loop
//! only starts them and tells them to stop. While it holds a lease the
//! loop renews it every sixth of the lease's life and retries within 2 s
//! ([`renew_every`], `client::LEASED_RETRY_MAX`), so a network blackout
//! shorter than the lease ends no session.
//!
//! Shutdown: the first SIGTERM or Ctrl-C drains (no new sessions, the
//! running ones finish and report, for up to the drain grace; a poll given
//! up in flight is sent again before the agent exits, so that a lease the
//! hub granted to it is handed back); the second cancels them; a third
//! kills their process trees and exits at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tasuki_protocol::{HeldLease, Lease, PollRequest, PollResponse, RegisterRobot};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::client::{CallError, ROBOT_NAME_TAKEN, ROBOT_OF_ANOTHER_KEY, backoff, retry_delay};
use super::metrics::Sampler;
use super::session::{self, SessionEnv};
use super::ship::recover::Leftover;
use super::ship::{Shipped, SlotFreed};

/// How long to wait before polling again when the answer only repeated
/// cancels the agent is already carrying out.
const REPEAT_PAUSE: Duration = Duration::from_secs(1);

/// While it holds a lease, the robot renews it this often (a fraction of
/// the lease's life), rather than once a long poll (25 s): it sends the
/// outstanding poll again, with the same poll id. So the lease always has
/// at least five sixths of its life ahead when contact may be lost, and a
/// network blackout shorter than that, less the retry interval
/// ([`super::client::LEASED_RETRY_MAX`]), ends no session: 47 s with the
/// default 60 s lease.
fn renew_every(lease_ttl: Duration) -> Duration {
    (lease_ttl / 6).max(Duration::from_secs(1))
}

pub struct AgentOptions {
    pub max_concurrency: u32,
    /// Run one session, then exit.
    pub once: bool,
    pub register: RegisterRobot,
    /// How long a drain waits for running sessions before cancelling them.
    pub drain_grace: Duration,
}

struct Running {
    lease_id: String,
    /// Stops the session (a live one) or its delivery (a recovered spool).
    cancel: CancellationToken,
    single_process: bool,
    /// When the hub's cancel reached the agent, for the latency metric.
    cancel_requested: Arc<std::sync::OnceLock<std::time::Instant>>,
    slot_freed: SlotFreed,
    /// A spool a killed run left: nothing runs, its lines are delivered.
    recovered: bool,
    /// Listed in the poll's `held`, which renews the lease; no longer once
    /// the hub said the lease is lost (renewing it is pointless), or asked
    /// to cancel a recovered spool (there is nothing to stop). Else every
    /// poll would be answered at once with the same news, and none could
    /// bring new work while the session's lines are still on their way.
    listed: bool,
}

impl Running {
    fn occupies_slot(&self) -> bool {
        !self.slot_freed.is_set()
    }
}

/// Free slots, and whether any occupied one is single-process.
fn slots(running: &HashMap<i64, Running>, max: u32) -> (u32, bool) {
    let occupied: Vec<&Running> = running.values().filter(|r| r.occupies_slot()).collect();
    let exclusive = occupied.iter().any(|r| r.single_process);
    (max.saturating_sub(occupied.len() as u32), exclusive)
}

/// What the loop and the session tasks share.
struct State {
    running: Mutex<HashMap<i64, Running>>,
    /// Sessions taken so far (for `--once`).
    taken: Mutex<u32>,
    draining: AtomicBool,
    /// Cancelled when draining begins.
    drain_started: CancellationToken,
    /// Something the outstanding poll said is out of date: draining began,
    /// a session or a recovered spool ended, or a slot freed.
    changed: Notify,
}

impl State {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub async fn run(env: Arc<SessionEnv>, opts: AgentOptions) -> anyhow::Result<()> {
    let client = env.client.clone();
    // Interrupts hub calls that are being retried: the agent is exiting.
    let stop = CancellationToken::new();
    let state = Arc::new(State {
        running: Mutex::new(HashMap::new()),
        taken: Mutex::new(0),
        draining: AtomicBool::new(false),
        drain_started: CancellationToken::new(),
        changed: Notify::new(),
    });
    tokio::spawn(watch_signals(state.clone()));
    tokio::spawn(bound_drain(state.clone(), opts.drain_grace));

    let registered = tokio::select! {
        r = client.register(&opts.register, &stop) => r,
        _ = state.drain_started.cancelled() => return Ok(()),
    };
    if let Err(e) = &registered
        && let Some(displaced) = displacement(client.robot(), e)
    {
        tracing::error!("{displaced}");
        return Err(displaced.into());
    }
    let (mut lease_ttl, mut numbered) = match registered {
        Ok(r) => {
            tracing::info!(robot = %r.name, robot_id = r.robot_id, hub = %crate::settings::masked_url(client.base_url()), "registered; waiting for sessions");
            (Duration::from_secs(r.lease_ttl_seconds), r.poll_seq)
        }
        Err(e) => anyhow::bail!("cannot register with the hub: {e}"),
    };

    // Spools an earlier run left behind are delivered beside new work;
    // they are listed before this run prepares directories of its own.
    {
        // Disk work, on the blocking pool. The folders are the agent's
        // alone, and were made 0755 by versions before 0700.
        let listed = {
            let env = env.clone();
            tokio::task::spawn_blocking(move || {
                super::private_fs::tighten(&env.spool_root());
                super::private_fs::tighten(&env.sessions_root());
                let leftovers = super::ship::recover::leftovers(&env.spool_root());
                super::scratch::remove_leftovers(&env.sessions_root(), &env.artifacts_dir);
                leftovers
            })
            .await
        };
        env.scratch.refill();
        recover(&env, &state, &stop, listed.unwrap_or_default());
    }
    // After the sweep above: what a killed run's warm browser left is gone.
    let warm = env.options.browser.warm.clone();
    if let Some(warm) = &warm {
        warm.start();
    }

    let mut sampler = Sampler::new(&env.work_dir);
    let mut sessions = JoinSet::new();
    let mut poll_id = new_id();
    // Numbers this run's poll ids in order (`PollRequest::poll_seq`), from
    // the clock at its start so that they also follow an earlier run's.
    let mut poll_seq = first_poll_seq();
    // The poll with this id was given up before its answer came (see
    // `state.changed` below): the hub may have leased it a session.
    let mut abandoned = false;
    let mut delays = backoff();
    loop {
        while let Some(done) = sessions.try_join_next() {
            if let Err(e) = done {
                tracing::error!(error = %e, "a session task failed");
            }
        }
        // The poll built below says how things stand now; a change stored
        // before this point must not make the agent give it up the moment
        // it is sent (each such give-up sends the poll twice).
        forget_stored_change(&state.changed);
        let taken = *state.taken.lock().unwrap_or_else(|p| p.into_inner());
        // `--once` with its session taken wants no more work: to the hub
        // that is a drain.
        let draining = state.draining.load(Ordering::SeqCst) || (opts.once && taken > 0);
        let (held, free, idle) = {
            let running = state.running();
            let held: Vec<HeldLease> = running
                .iter()
                .filter(|(_, r)| r.listed)
                .map(|(&session_id, r)| HeldLease {
                    session_id,
                    lease_id: r.lease_id.clone(),
                })
                .collect();
            let (free, exclusive) = slots(&running, opts.max_concurrency);
            let free = if draining || exclusive { 0 } else { free };
            (held, free, running.is_empty())
        };
        // A browser is kept warm while the robot could take a session.
        if let Some(warm) = &warm {
            warm.want(free > 0);
        }
        // A drain ends once nothing runs or delivers, and once a poll given
        // up in flight has been sent again and answered: a lease granted to
        // it is then released rather than left running until it expires.
        // (A re-sent poll that fails counts as answered: the hub is out of
        // reach, and the agent exits rather than wait for it.)
        if draining && idle && !abandoned {
            break;
        }
        let metrics = sampler.as_mut().map(|s| s.metrics());
        let req = PollRequest {
            instance_id: opts.register.instance_id.clone(),
            poll_id: poll_id.clone(),
            free_slots: free,
            draining,
            held,
            metrics,
            poll_seq: numbered.then_some(poll_seq),
        };
        let holding = !req.held.is_empty();
        let renewal_due = async {
            if holding {
                tokio::time::sleep(renew_every(lease_ttl)).await
            } else {
                std::future::pending().await
            }
        };
        let answer = tokio::select! {
            r = client.poll_once(&req) => Some(r),
            // Renew the held leases now (see `renew_every`).
            _ = renewal_due => None,
            // The poll in flight says something no longer true: ask again
            // with the same poll id, so that a lease it was answered with
            // comes back rather than waiting out its ack deadline.
            _ = state.changed.notified() => None,
        };
        abandoned = answer.is_none();
        match answer {
            None => continue,
            Some(Ok(resp)) => {
                env.metrics.poll_answered();
                lease_ttl = Duration::from_secs(resp.lease_ttl_seconds);
                poll_id = new_id();
                poll_seq += 1;
                delays = backoff();
                let repeats_only = !resp.cancel.is_empty() || !resp.lost.is_empty();
                let news = handle(&env, &state, &opts, &stop, &mut sessions, resp);
                if news {
                    // Let the sessions just started reach their first step
                    // before the next poll is built and sent.
                    tokio::task::yield_now().await;
                }
                if repeats_only && !news {
                    // The hub answers at once while a session it asked us
                    // to stop (or has finished) is still in `held`; that is
                    // no news, so do not poll hot while it winds down.
                    tokio::select! {
                        _ = tokio::time::sleep(REPEAT_PAUSE) => {}
                        _ = state.changed.notified() => {}
                    }
                }
            }
            Some(Err(e)) => {
                env.metrics.poll_failed();
                // A hub older than `poll_seq` behind the same address as
                // the one that said it reads it (hubs being upgraded one
                // by one): poll without it, at once.
                if numbered
                    && matches!(&e, CallError::Rejected { message, .. } if message.contains("poll_seq"))
                {
                    tracing::warn!(error = %e, "the hub refused poll_seq; polling without it");
                    numbered = false;
                    continue;
                }
                let (e, registered_again) = match e {
                    CallError::Rejected { ref code, .. } if code == "robot_not_registered" => {
                        // The hub lost the robot (a new database): register again.
                        match client.register(&opts.register, &stop).await {
                            Ok(r) => {
                                numbered = r.poll_seq;
                                (e, true)
                            }
                            Err(again) => (again, false),
                        }
                    }
                    e => (e, false),
                };
                if let Some(displaced) = displacement(client.robot(), &e) {
                    tracing::error!("{displaced}");
                    wind_down(&state, &mut sessions, &stop, opts.drain_grace).await;
                    env.scratch.clear();
                    return Err(displaced.into());
                }
                let delay = match &e {
                    _ if registered_again => Duration::ZERO,
                    CallError::RateLimited(d) => *d,
                    _ => retry_delay(&mut delays, holding),
                };
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "poll failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = state.changed.notified() => {}
                }
            }
        }
    }
    tracing::info!("no sessions left to run; exiting");
    while let Some(done) = sessions.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a session task failed");
        }
    }
    env.scratch.clear();
    stop.cancel();
    Ok(())
}

/// Takes the wake-up that `Notify::notify_one` stores when nobody is
/// waiting, if there is one.
fn forget_stored_change(changed: &Notify) {
    use std::future::Future;
    use std::task::{Context, Waker};
    let mut notified = std::pin::pin!(changed.notified());
    let _ = notified
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()));
}

/// The hub gave this robot to someone else: no answer to a poll will
/// change, so the agent stops (with `crate::EXIT_DISPLACED`) instead of
/// retrying for ever.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Displaced {
    /// The hub's own message says whether an operator moved the robot or
    /// the name was another key's all along.
    #[error(
        "robot `{robot}` is not this access key's: {hub_says}; register this machine under \
         another name or ask the hub's operator; this agent stops"
    )]
    ToAnotherKey { robot: String, hub_says: String },
    #[error("robot `{0}` was registered from another machine with --replace; this agent stops")]
    ByAnotherInstance(String),
    #[error(
        "a hub operator deleted robot `{0}` (tasuki-hub robots delete); register this machine \
         again with `tasuki register --replace` to bring it back; this agent stops"
    )]
    Deleted(String),
}

/// Whether the hub's refusal of a poll or registration means the robot
/// is no longer this agent's.
pub fn displacement(robot: &str, e: &CallError) -> Option<Displaced> {
    match e {
        CallError::Rejected { code, message, .. } if code == ROBOT_OF_ANOTHER_KEY => {
            Some(Displaced::ToAnotherKey {
                robot: robot.to_string(),
                hub_says: message.trim_end_matches('.').to_string(),
            })
        }
        CallError::Rejected { code, .. } if code == ROBOT_NAME_TAKEN => {
            Some(Displaced::ByAnotherInstance(robot.to_string()))
        }
        CallError::Rejected { code, .. } if code == "robot_deleted" => {
            Some(Displaced::Deleted(robot.to_string()))
        }
        _ => None,
    }
}

/// How long a lease that arrived during a drain may take to be handed back.
const RELEASE_WITHIN: Duration = Duration::from_secs(10);

/// How long sessions still shipping get once the drain grace is over.
const SHIP_GRACE: Duration = Duration::from_secs(30);

/// Takes no more work and lets the running sessions end as the hub
/// answers them (a drain: past its grace they are cancelled); sessions
/// whose reports the hub still refuses after that are abandoned.
async fn wind_down(
    state: &State,
    sessions: &mut JoinSet<()>,
    stop: &CancellationToken,
    grace: Duration,
) {
    let running = state.running().len();
    if running > 0 {
        tracing::info!(
            sessions = running,
            "waiting for the running sessions to end"
        );
    }
    state.draining.store(true, Ordering::SeqCst);
    state.drain_started.cancel();
    let all_ended = async {
        while let Some(done) = sessions.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a session task failed");
            }
        }
    };
    tokio::select! {
        _ = all_ended => {}
        _ = tokio::time::sleep(grace + SHIP_GRACE) => {
            stop.cancel();
            while sessions.join_next().await.is_some() {}
        }
    }
    stop.cancel();
}

fn handle(
    env: &Arc<SessionEnv>,
    state: &Arc<State>,
    opts: &AgentOptions,
    stop: &CancellationToken,
    sessions: &mut JoinSet<()>,
    resp: PollResponse,
) -> bool {
    let mut news = !resp.leases.is_empty();
    {
        let mut running = state.running();
        for id in resp.cancel.iter().chain(&resp.lost) {
            let lost = resp.lost.contains(id);
            let Some(r) = running.get_mut(id) else {
                continue;
            };
            if lost || r.recovered {
                news |= r.listed;
                r.listed = false;
            }
            if !r.recovered && !r.cancel.is_cancelled() {
                news = true;
                let _ = r.cancel_requested.set(std::time::Instant::now());
                if r.occupies_slot() {
                    tracing::info!(session_queue_id = id, lost, "cancelling the session");
                } else {
                    // Its run is over and its report on the way or there: a
                    // lease the hub has ended with the report is no news.
                    tracing::debug!(
                        session_queue_id = id,
                        lost,
                        "the hub ended the lease of a session that has already run"
                    );
                }
                r.cancel.cancel();
            }
        }
    }
    for lease in resp.leases {
        let take = {
            // Judged now, not by what the poll said when it left: a slot
            // may have freed meanwhile, or a drain begun.
            let running = state.running();
            let (free, exclusive) = slots(&running, opts.max_concurrency);
            let taken = *state.taken.lock().unwrap_or_else(|p| p.into_inner());
            let busy = free < opts.max_concurrency;
            let done_taking = state.draining.load(Ordering::SeqCst) || (opts.once && taken > 0);
            let cannot_fit = free == 0 || exclusive || (lease.workflow.single_process_mode && busy);
            match running.get(&lease.session_id) {
                // A repeat of a lease already running here: the next poll
                // lists it, which is all the hub needs to hear.
                Some(r) if r.lease_id == lease.lease_id => continue,
                // The session's next run (its workflow's `retry_on`), sent
                // while this agent still delivers the run before: handed
                // back, and offered again once that one is gone.
                Some(_) => false,
                None => !(done_taking || cannot_fit),
            }
        };
        if take {
            start(env, state, opts, stop, sessions, lease);
        } else {
            // Not for us now (a drain began as it arrived): hand it straight
            // back, before any poll lists it, so that another robot runs it.
            // In `sessions`, so that an agent about to exit waits for it.
            // Bounded: a hub out of reach ends the lease itself, later.
            let client = env.client.clone();
            let stop = stop.clone();
            sessions.spawn(async move {
                let released = tokio::time::timeout(
                    RELEASE_WITHIN,
                    client.release(lease.session_id, &lease.lease_id, &stop),
                )
                .await;
                match released {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(session_queue_id = lease.session_id, error = %e, "cannot release a lease")
                    }
                    Err(_) => {
                        tracing::warn!(session_queue_id = lease.session_id, "the hub did not take back a lease in time; it will expire")
                    }
                }
            });
        }
    }
    news
}

fn start(
    env: &Arc<SessionEnv>,
    state: &Arc<State>,
    opts: &AgentOptions,
    stop: &CancellationToken,
    sessions: &mut JoinSet<()>,
    lease: Lease,
) {
    let id = lease.session_id;
    let cancel = CancellationToken::new();
    let slot_freed = SlotFreed::default();
    let cancel_requested = Arc::new(std::sync::OnceLock::new());
    state.running().insert(
        id,
        Running {
            lease_id: lease.lease_id.clone(),
            cancel: cancel.clone(),
            single_process: lease.workflow.single_process_mode,
            cancel_requested: cancel_requested.clone(),
            slot_freed: slot_freed.clone(),
            recovered: false,
            listed: true,
        },
    );
    env.metrics.session_started(id, &lease.workflow.name);
    *state.taken.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    // Before the session's first step can take the warm browser: a robot
    // with no slot left warms no other meanwhile (the loop wants one again
    // once a slot frees).
    if let Some(warm) = &env.options.browser.warm {
        let (free, exclusive) = slots(&state.running(), opts.max_concurrency);
        warm.want(free > 0 && !exclusive && !opts.once);
    }
    let env = env.clone();
    let state = state.clone();
    let stop = stop.clone();
    sessions.spawn(async move {
        let metrics = env.metrics.clone();
        let outcome = session::run(env, lease, cancel, stop, slot_freed).await;
        metrics.session_left(id);
        if let Some(at) = cancel_requested.get() {
            metrics
                .cancel_seconds
                .observe(super::health::seconds_since(*at));
        }
        if outcome != Shipped::Finished {
            tracing::info!(session_queue_id = id, ?outcome, "session closed");
        }
        state.running().remove(&id);
        // The outstanding poll still lists it and may carry a stale slot
        // count (a session that never started frees no slot on the hub):
        // poll again with the same poll id.
        state.changed.notify_one();
    });
}

/// Delivers the spools a killed run left, one after the other, in a task
/// of their own, beside new work. Their leases are held meanwhile (listed
/// in every poll, so the hub keeps them alive while their lines go),
/// occupying no slot. Each has its own token, which a drain past its grace
/// (or a second signal) cancels like a session's: its spool then stays for
/// the next start.
fn recover(
    env: &Arc<SessionEnv>,
    state: &Arc<State>,
    stop: &CancellationToken,
    leftovers: Vec<Leftover>,
) {
    if leftovers.is_empty() {
        return;
    }
    let mut delivering = Vec::new();
    {
        let mut running = state.running();
        for leftover in leftovers {
            let lease = leftover.lease();
            let cancel = stop.child_token();
            running.insert(
                lease.session_id,
                Running {
                    lease_id: lease.lease_id.clone(),
                    cancel: cancel.clone(),
                    single_process: false,
                    cancel_requested: Arc::default(),
                    slot_freed: leftover.slot_freed(),
                    recovered: true,
                    listed: true,
                },
            );
            delivering.push((leftover, cancel));
        }
    }
    let (env, state) = (env.clone(), state.clone());
    tokio::spawn(async move {
        // Should this task end early (a panic), the drain must not wait for
        // what it will never deliver.
        let _forget = Forget {
            state: state.clone(),
            ids: delivering
                .iter()
                .map(|(l, _)| l.lease().session_id)
                .collect(),
        };
        for (leftover, cancel) in delivering {
            let id = leftover.lease().session_id;
            let outcome = leftover.deliver(&env.client, &env.metrics, &cancel).await;
            if outcome == Shipped::Interrupted {
                tracing::info!(
                    session_queue_id = id,
                    "a recovered spool stays for the next start"
                );
            }
            state.running().remove(&id);
            state.changed.notify_one();
        }
    });
}

/// Removes recovered spools from the running sessions when dropped.
struct Forget {
    state: Arc<State>,
    ids: Vec<i64>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        let mut running = self.state.running();
        for id in &self.ids {
            if running.get(id).is_some_and(|r| r.recovered) {
                running.remove(id);
            }
        }
        drop(running);
        self.state.changed.notify_one();
    }
}

/// A drain that outlasts `grace` cancels the sessions still running, so
/// that a service manager's stop timeout (set to match) is rarely hit.
async fn bound_drain(state: Arc<State>, grace: Duration) {
    state.drain_started.cancelled().await;
    tokio::time::sleep(grace).await;
    let running = state.running();
    if !running.is_empty() {
        tracing::warn!(
            grace_s = grace.as_secs(),
            sessions = running.len(),
            "the drain grace is over; cancelling the sessions still running"
        );
        for r in running.values() {
            r.cancel.cancel();
        }
    }
}

/// Stop requests from outside the process's signals (the Windows service
/// control manager's Stop): each counts as one signal.
static STOP_REQUESTS: Notify = Notify::const_new();

/// Asks the agent to stop, from any thread, as SIGTERM does: the first
/// request drains, the second cancels, the third kills.
#[cfg_attr(not(windows), allow(dead_code))]
pub fn request_stop() {
    STOP_REQUESTS.notify_one();
}

/// The first signal drains, the second cancels, the third kills.
async fn watch_signals(state: Arc<State>) {
    static RECEIVED: AtomicU8 = AtomicU8::new(0);
    loop {
        tokio::select! {
            r = crate::local_run::wait_for_signal() => if r.is_err() {
                // No signal handling here: a stop request is the only way.
                STOP_REQUESTS.notified().await;
            },
            _ = STOP_REQUESTS.notified() => {}
        }
        match RECEIVED.fetch_add(1, Ordering::SeqCst) {
            0 => {
                tracing::info!(
                    "draining: running sessions finish, no new ones are taken (signal again to cancel them)"
                );
                state.draining.store(true, Ordering::SeqCst);
                state.drain_started.cancel();
                state.changed.notify_one();
            }
            1 => {
                tracing::warn!(
                    "cancelling the running sessions (signal again to kill them at once)"
                );
                for r in state.running().values() {
                    r.cancel.cancel();
                }
            }
            _ => {
                tracing::error!("forced exit: killing the running process trees");
                tasuki_actions::builtin::kill_all_trees();
                std::process::exit(i32::from(crate::EXIT_CANCELLED));
            }
        }
    }
}

/// The first poll number of this run: microseconds since the epoch, so a
/// restarted agent's polls number above its last run's (a clock set back
/// meanwhile only makes the hub take back less: never a lease it holds).
fn first_poll_seq() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_microsecond()).unwrap_or(1)
}

/// 128 random bits as hex: poll ids and instance ids.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // The system generator failed; ids then only need to differ.
        let nanos = jiff::Timestamp::now().as_nanosecond();
        bytes.copy_from_slice(&nanos.to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(status: u16, code: &str) -> CallError {
        CallError::Rejected {
            status,
            code: code.into(),
            message: "the hub's words".into(),
        }
    }

    #[tokio::test]
    async fn a_stored_change_is_forgotten_and_a_later_one_still_wakes() {
        let changed = Notify::new();
        changed.notify_one();
        forget_stored_change(&changed);
        let woke = tokio::time::timeout(Duration::from_millis(50), changed.notified()).await;
        assert!(woke.is_err(), "the stored wake-up was taken");
        // Nothing stored: forgetting takes nothing from a later change.
        forget_stored_change(&changed);
        changed.notify_one();
        let woke = tokio::time::timeout(Duration::from_secs(5), changed.notified()).await;
        assert!(woke.is_ok(), "a change after it wakes the poll");
    }

    #[test]
    fn a_robot_given_to_another_key_or_machine_is_displaced() {
        let moved = Displaced::ToAnotherKey {
            robot: "r1".into(),
            hub_says: "the hub's words".into(),
        };
        assert_eq!(
            displacement("r1", &rejected(403, "robot_of_another_key")),
            Some(moved.clone())
        );
        assert_eq!(
            displacement("r1", &rejected(409, "robot_name_taken")),
            Some(Displaced::ByAnotherInstance("r1".into()))
        );
        let to_key = moved.to_string();
        assert!(
            to_key.contains("the hub's words") && to_key.contains("another name"),
            "{to_key}"
        );
        for passing in [
            rejected(404, "robot_not_registered"),
            rejected(409, "lease_lost"),
            CallError::Auth("invalid_token: expired".into()),
            CallError::Transient("connection refused".into()),
        ] {
            assert_eq!(displacement("r1", &passing), None, "{passing}");
        }
    }
}
