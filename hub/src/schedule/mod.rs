//! The scheduler: queues each schedule's sessions at the times its cron
//! expression names (`cron.rs`), with the schedule's policies for a run
//! that falls due while the previous one still runs (`Overlap`) and for
//! runs that fell due while no hub ran (`Missed`).
//!
//! Every hub runs it. It sleeps until the earliest due time it knows of
//! (at most [`LOOK_EVERY`], so that schedules another hub made, or
//! sessions that ended, are seen), and is woken at once when this hub
//! changes a schedule. Each due schedule is taken in a transaction of its
//! own (on PostgreSQL `FOR UPDATE SKIP LOCKED`, so one hub takes it), and
//! its session, the outcome and its next time are written in that
//! transaction: a due run is started once, across restarts and hubs. The
//! session is offered to the waiting robots after the commit.

pub mod cron;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use tasuki_protocol::{Missed, Overlap, ScheduleOutcome, SessionOrigin};
use tokio::sync::Notify;

use crate::api::{Hub, sessions as api_sessions};
use crate::db::schedules::{self, Fired, StoredSchedule};
use crate::db::sessions::{self, NewSession, Queued};
use crate::db::{Conn, DbError, now_ms, to_timestamp};

pub use cron::Cron;

/// The longest the scheduler sleeps without looking.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The shortest.
const MIN_SLEEP: Duration = Duration::from_millis(5);

/// A run more than this late was missed (the hubs were down), and follows
/// the schedule's `missed` policy; `serve --schedule-missed-after-seconds`.
pub const MISSED_AFTER: Duration = Duration::from_secs(60);

/// Schedules a pass takes before it lets a waiting caller in; a pass goes
/// on until none is due.
const BATCH: usize = 64;

/// Tells the scheduler to look now (a schedule was made or resumed).
#[derive(Default)]
pub struct Wake(Notify);

impl Wake {
    pub fn now(&self) {
        self.0.notify_one();
    }
}

/// Runs until the hub stops.
pub async fn run(hub: Arc<Hub>) {
    loop {
        let pass_hub = hub.clone();
        let earliest = hub
            .db
            .call(move |conn| pass(conn, &pass_hub))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "running the due schedules");
                None
            });
        // At least a moment: a due schedule another hub holds right now
        // (skipped, locked) must not make this loop spin.
        let sleep = match earliest {
            Some(due) => Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64),
            None => LOOK_EVERY,
        }
        .clamp(MIN_SLEEP, LOOK_EVERY);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = hub.schedules_wake.0.notified() => {}
        }
    }
}

/// Starts every due run; returns the earliest time a schedule is due
/// next.
fn pass(conn: &mut Conn<'_>, hub: &Hub) -> Result<Option<i64>, DbError> {
    for _ in 0..BATCH {
        let now = now_ms();
        // A look first, outside any transaction: SQLite's one writer is
        // not taken each second for nothing.
        if !schedules::any_due(conn, now)? {
            break;
        }
        // Taken and fired in one transaction, which a failure rolls back
        // whole (a cancelled previous run included).
        let mut taken = None;
        let fired = conn.transaction(|tx| {
            let Some(schedule) = schedules::take_due(tx, now, 1)?.pop() else {
                return Ok(None);
            };
            taken = Some(schedule.clone());
            fire(tx, hub, &schedule, now)
        });
        match (fired, taken) {
            (Ok(_), None) => break,
            (Ok(Some(queued)), Some(_)) => {
                api_sessions::announce(conn, hub, &queued, now_ms());
            }
            (Ok(None), Some(_)) => {}
            (Err(e), Some(schedule)) => {
                tracing::error!(schedule_id = schedule.id, error = %e, "a schedule's run failed to start");
                // Not taken again at once: its next time, or a minute.
                let next = next_time(&schedule, now)
                    .ok()
                    .flatten()
                    .unwrap_or(now + MISSED_AFTER.as_millis() as i64);
                conn.execute(
                    "UPDATE schedules SET next_due_at = ?2, waiting = 0 WHERE id = ?1",
                    crate::db::sql::params![schedule.id, next],
                )?;
            }
            (Err(e), None) => return Err(e),
        }
    }
    schedules::earliest_due(conn)
}

/// The schedule's next time after `now`.
fn next_time(s: &StoredSchedule, now: i64) -> Result<Option<i64>, DbError> {
    let cron = Cron::parse(&s.cron)
        .map_err(|e| DbError::Corrupt(format!("schedule {}: cron: {e}", s.id)))?;
    let tz =
        time_zone(&s.timezone).map_err(|e| DbError::Corrupt(format!("schedule {}: {e}", s.id)))?;
    Ok(cron
        .next_after(to_timestamp(now)?, &tz)
        .map(Timestamp::as_millisecond))
}

/// A time zone by its IANA name.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    // The default needs no time zone database.
    if name == "UTC" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(name).map_err(|e| {
        format!(
            "`{name}` is not a time zone this hub knows ({e}); use an IANA name such as \
             `Europe/Berlin` or `UTC` (the hub reads the system's time zone database, \
             /usr/share/zoneinfo: the tzdata package)"
        )
    })
}

/// Decides and starts `s`'s due (or waiting) run; the new session.
fn fire(
    tx: &mut Conn<'_>,
    hub: &Hub,
    s: &StoredSchedule,
    now: i64,
) -> Result<Option<Queued>, DbError> {
    let active = sessions::active_of_schedule(tx, s.id)?;
    let due = s.next_due_at.filter(|due| *due <= now);
    let Some(due) = due else {
        // Only a waiting run (take_due found the previous session ended).
        let queued = start(tx, hub, s, s.last_due_at.unwrap_or(now), now)?;
        schedules::record(
            tx,
            s.id,
            &Fired {
                next_due_at: s.next_due_at,
                waiting: false,
                due_at: None,
                outcome: outcome_of(&queued, ScheduleOutcome::Started),
                session_id: queued.as_ref().map(|q| q.session.id),
            },
        )?;
        return Ok(queued);
    };
    // Times passed while no hub ran fold into this one.
    let next_due_at = next_time(s, now)?;
    let missed = now - due > hub.schedule_missed_after.as_millis() as i64;
    let outcome = if missed && s.missed == Missed::Skip {
        ScheduleOutcome::Missed
    } else if active.is_empty() {
        ScheduleOutcome::Started
    } else {
        match s.overlap {
            Overlap::Skip => ScheduleOutcome::Skipped,
            Overlap::Queue => ScheduleOutcome::Waiting,
            Overlap::CancelPrevious => {
                for id in &active {
                    api_sessions::cancel_in(tx, hub, *id, now)?;
                }
                ScheduleOutcome::CancelledPrevious
            }
        }
    };
    let (outcome, queued) = match outcome {
        ScheduleOutcome::Started | ScheduleOutcome::CancelledPrevious => {
            let queued = start(tx, hub, s, due, now)?;
            (outcome_of(&queued, outcome), queued)
        }
        _ => (outcome, None),
    };
    let session_id = queued.as_ref().map(|q| q.session.id);
    tracing::info!(
        schedule_id = s.id,
        workflow_id = s.workflow_id,
        due_at = %to_timestamp(due)?,
        late_ms = now - due,
        ?outcome,
        session_queue_id = session_id,
        "a schedule's run fell due"
    );
    schedules::record(
        tx,
        s.id,
        &Fired {
            next_due_at,
            waiting: outcome == ScheduleOutcome::Waiting,
            due_at: Some(due),
            outcome,
            session_id,
        },
    )?;
    Ok(queued)
}

/// `started` as the run's outcome, unless the workflow's concurrency
/// policy refused its session.
fn outcome_of(queued: &Option<Queued>, started: ScheduleOutcome) -> ScheduleOutcome {
    match queued {
        Some(_) => started,
        None => ScheduleOutcome::AtLimit,
    }
}

/// Queues the schedule's session for the run due at `due`; `None` when
/// the workflow's concurrency policy refused it.
fn start(
    tx: &mut Conn<'_>,
    hub: &Hub,
    s: &StoredSchedule,
    due: i64,
    now: i64,
) -> Result<Option<Queued>, DbError> {
    let new = NewSession {
        workflow_id: s.workflow_id,
        params: schedules::params_with_secrets(tx, s, &hub.master)?,
        secret_params: s.secret_params.clone(),
        origin: Some(SessionOrigin::Schedule {
            schedule_id: s.id,
            due_at: to_timestamp(due)?,
        }),
    };
    Ok(sessions::insert(tx, &new, &hub.master, now)?.ok())
}
