//! Leases: how a session moves from the queue to exactly one robot and on
//! to its end. Every transition is one UPDATE guarded by the state it
//! expects, so two robots (or a robot and the sweeper) can never both win.

use super::sql::{Conn, Dialect, params};
use serde_json::{Map, Value};
use tasuki_protocol::robot::{AGENT_RESTARTED, ROBOT_LOST};
use tasuki_protocol::{
    FinishSession, HeldLease, Lease, LeasedWorkflow, SessionError, SessionStatus, StepState,
};

use super::{DbError, audit, concurrency, credentials, parse_json, secret_params};
use crate::routing::{CredentialNeed, Needs};
use crate::secrets::MasterKey;

/// The sessions a robot holds leases on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub active: u32,
    /// One of them is single-process: the robot takes nothing else.
    pub exclusive: bool,
}

impl Load {
    /// Whether a robot of `max_concurrency` slots with this load may take
    /// one more session (a single-process one only when it runs nothing).
    pub fn has_room(self, max_concurrency: u32, single_process: bool) -> bool {
        !self.exclusive && self.active < max_concurrency && !(single_process && self.active > 0)
    }
}

pub fn load_of(conn: &mut Conn<'_>, robot_id: i64) -> Result<Load, DbError> {
    let (active, exclusive): (i64, i64) = conn.row(
        "SELECT COUNT(*), COALESCE(MAX(w.single_process_mode), 0)
         FROM session_queues s JOIN workflows w ON w.id = s.workflow_id
         WHERE s.robot_id = ?1 AND s.lease_id IS NOT NULL AND s.status IN ('queued', 'running')",
        params![robot_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Load {
        active: active.clamp(0, u32::MAX as i64) as u32,
        exclusive: exclusive != 0,
    })
}

/// [`next_for`]'s statement on SQLite: `?1` the robot's name, `?2` its
/// active leases, `?3` its id.
const NEXT_FOR: &str = concat!(
    "
    SELECT s.id FROM session_queues s JOIN workflows w ON w.id = s.workflow_id
    WHERE s.status = 'queued' AND s.lease_id IS NULL
      AND ",
    crate::under_limit!("s"),
    "
      AND (w.workflow_robots = '[]'
           OR EXISTS (SELECT 1 FROM json_each(w.workflow_robots) WHERE value = ?1))
      AND (w.single_process_mode = 0 OR ?2 = 0)
      AND (w.required_actions = '[]'
           OR (SELECT actions IS NULL FROM robots WHERE id = ?3)
           OR NOT EXISTS (
               SELECT 1 FROM json_each(w.required_actions) needed
               WHERE needed.value NOT IN (
                   SELECT json_extract(offer.value, '$.name')
                   FROM robots r, json_each(r.actions) offer
                   WHERE r.id = ?3 AND json_extract(offer.value, '$.name') IS NOT NULL)))
      AND (w.robot_labels = '[]'
           OR NOT EXISTS (
               SELECT 1 FROM json_each(w.robot_labels) needed
               WHERE needed.value NOT IN (
                   SELECT label.value FROM robots r, json_each(r.labels) label
                   WHERE r.id = ?3)))
      -- BEGIN credentials (migration 14): every credential the workflow
      -- uses exists and allows this robot, by name or by one of its labels
      -- (routing::CredentialNeed).
      AND (w.credentials = '[]'
           OR NOT EXISTS (
               SELECT 1 FROM json_each(w.credentials) used
               WHERE NOT EXISTS (
                   SELECT 1 FROM credentials c
                   WHERE c.name = json_extract(used.value, '$.name')
                     AND (EXISTS (SELECT 1 FROM json_each(c.allow_robots) allowed
                                  WHERE allowed.value = ?1)
                          OR EXISTS (
                              SELECT 1 FROM json_each(c.allow_labels) allowed,
                                            robots r, json_each(r.labels) label
                              WHERE r.id = ?3 AND label.value = allowed.value)))))
      -- END credentials
    ORDER BY s.id LIMIT 1"
);

/// The oldest queued session the robot `robot_id` (named `robot_name`)
/// may take, given its load: what `routing::Needs::fits` says, in SQL.
/// The robot's action names and labels are read once per statement (the
/// `IN` subqueries depend on no row of the outer query, so SQLite builds
/// each once, as an index), whatever the number of sessions it passes over.
pub fn next_for(
    conn: &mut Conn<'_>,
    robot_id: i64,
    robot_name: &str,
    load: Load,
) -> Result<Option<i64>, DbError> {
    let active = i64::from(load.active);
    let sql = match conn.dialect() {
        Dialect::Sqlite => NEXT_FOR,
        Dialect::Postgres => NEXT_FOR_POSTGRES,
    };
    conn.opt_row(sql, params![robot_name, active, robot_id], |r| r.get(0))
}

/// [`NEXT_FOR`] on PostgreSQL: the same tests, with JSON containment.
/// Another hub's grant may hold the row it would pick: `SKIP LOCKED`
/// passes over it to the next (`grant_next`).
const NEXT_FOR_POSTGRES: &str = concat!(
    "
    SELECT s.id FROM session_queues s JOIN workflows w ON w.id = s.workflow_id
    WHERE s.status = 'queued' AND s.lease_id IS NULL
      AND ",
    crate::under_limit!("s"),
    "
      AND (w.workflow_robots = '[]'
           OR CAST(w.workflow_robots AS JSONB) @> jsonb_build_array(CAST(?1 AS TEXT)))
      AND (w.single_process_mode = 0 OR CAST(?2 AS BIGINT) = 0)
      AND (w.required_actions = '[]'
           OR (SELECT actions IS NULL FROM robots WHERE id = ?3)
           OR (SELECT COALESCE(jsonb_agg(offer -> 'name'), '[]')
               FROM robots r, jsonb_array_elements(CAST(r.actions AS JSONB)) offer
               WHERE r.id = ?3) @> CAST(w.required_actions AS JSONB))
      AND (w.robot_labels = '[]'
           OR (SELECT CAST(labels AS JSONB) FROM robots WHERE id = ?3)
              @> CAST(w.robot_labels AS JSONB))
      -- BEGIN credentials (migration 14): as on SQLite.
      AND (w.credentials = '[]'
           OR NOT EXISTS (
               SELECT 1 FROM jsonb_array_elements(CAST(w.credentials AS JSONB)) used
               WHERE NOT EXISTS (
                   SELECT 1 FROM credentials c
                   WHERE c.name = used ->> 'name'
                     AND (CAST(c.allow_robots AS JSONB) @> jsonb_build_array(CAST(?1 AS TEXT))
                          OR EXISTS (
                              SELECT 1
                              FROM jsonb_array_elements_text(CAST(c.allow_labels AS JSONB))
                                   allowed(label)
                              WHERE (SELECT CAST(labels AS JSONB) FROM robots WHERE id = ?3)
                                    @> jsonb_build_array(allowed.label))))))
      -- END credentials
    ORDER BY s.id LIMIT 1
    FOR UPDATE OF s SKIP LOCKED"
);

/// Leases the oldest queued session the robot may take (`next_for`) to
/// it, as [`grant`] does. On PostgreSQL the pick and the grant are one
/// transaction with the picked row locked, so hubs granting at once each
/// get a different session rather than one of them getting none while
/// work waits; on SQLite the connection is the hub's only one, so nothing
/// comes between them.
pub fn grant_next(
    conn: &mut Conn<'_>,
    poller: &Poller<'_>,
    load: Load,
    lease_id: &str,
    master: &MasterKey,
    ttl_ms: i64,
) -> Result<Option<Lease>, DbError> {
    conn.transaction(|tx| {
        let Some(session_id) = next_for(tx, poller.robot_id, poller.name, load)? else {
            return Ok(None);
        };
        grant(tx, session_id, poller, lease_id, master, ttl_ms)
    })
}

/// What a queued, unleased session needs of a robot; `None` when it is not
/// waiting for one (a session waiting for its workflow's concurrency limit
/// waits for a running one to end, not for a robot).
pub fn needs_of(conn: &mut Conn<'_>, session_id: i64) -> Result<Option<Needs>, DbError> {
    let row: Option<(String, bool, String, String, String)> = conn.opt_row(
        concat!(
            "SELECT w.workflow_robots, w.single_process_mode, w.required_actions, w.robot_labels,
                    w.credentials
             FROM session_queues s JOIN workflows w ON w.id = s.workflow_id
             WHERE s.id = ?1 AND s.status = 'queued' AND s.lease_id IS NULL AND ",
            crate::under_limit!("s")
        ),
        params![session_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )?;
    let Some((pins, single_process, actions, labels, declared)) = row else {
        return Ok(None);
    };
    let what = |field: &str| format!("session {session_id}: its workflow's {field}");
    let declared: Vec<credentials::Declared> = parse_json(&what("credentials"), &declared)?;
    let names: Vec<String> = declared.into_iter().map(|d| d.name).collect();
    let credentials = credentials::allows(conn, &names)?
        .into_iter()
        .map(|(name, allow)| CredentialNeed { name, allow })
        .collect();
    Ok(Some(Needs {
        pins: parse_json(&what("workflow_robots"), &pins)?,
        single_process,
        actions: parse_json(&what("required_actions"), &actions)?,
        labels: parse_json(&what("robot_labels"), &labels)?,
        credentials,
    }))
}

/// The robot a poll speaks for, as it was when the poll was checked.
pub struct Poller<'a> {
    pub robot_id: i64,
    pub name: &'a str,
    pub key_id: &'a str,
    pub instance_id: &'a str,
    pub poll_id: &'a str,
    /// The poll's number (`PollRequest::poll_seq`), when the robot sends one.
    pub poll_seq: Option<i64>,
}

/// Leases a queued session to a robot, in answer to its poll: the session
/// is `running` on that robot from now on, because the poll's free slot
/// was the robot's acceptance. `None` when someone else got it first, or
/// when the robot is no longer the poller's (an operator moved it to
/// another key, another machine took the name over, or it was deleted
/// while the poll waited).
pub fn grant(
    conn: &mut Conn<'_>,
    session_id: i64,
    poller: &Poller<'_>,
    lease_id: &str,
    master: &MasterKey,
    ttl_ms: i64,
) -> Result<Option<Lease>, DbError> {
    // Counted after the workflow's lock, so that hubs granting at once
    // never both see room for one (db/concurrency.rs). The session's row
    // is locked first, as `grant_next`'s pick locks it, so that every
    // grant takes the two in one order: another hub's grant holding it
    // means someone else is getting it.
    if conn.dialect() == Dialect::Postgres {
        let free: Option<(i64, bool)> = conn.opt_row(
            "SELECT s.workflow_id, w.concurrency_limit IS NOT NULL
             FROM session_queues s JOIN workflows w ON w.id = s.workflow_id
             WHERE s.id = ?1 AND s.status = 'queued' AND s.lease_id IS NULL
             FOR UPDATE OF s SKIP LOCKED",
            params![session_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        match free {
            None => return Ok(None),
            Some((workflow_id, true)) => concurrency::lock(conn, workflow_id)?,
            Some((_, false)) => {}
        }
    }
    // The session starts now, read after the locks: a caller's clock
    // reading may be older than the grant by a wait for a lock, a pool
    // connection or an earlier grant of the same request, and a start
    // stamped before the session it waited for ended would read as over
    // its workflow's limit.
    let now_ms = super::now_ms();
    let changed = conn.execute(
        concat!(
            "UPDATE session_queues
         SET status = 'running', started_at = COALESCE(started_at, ?5), run_started_at = ?5,
             lease_id = ?3, lease_poll_id = ?4,
             lease_poll_seq = ?9, robot_id = ?2, lease_confirmed = 0, lease_expires_at = ?6
         WHERE id = ?1 AND status = 'queued' AND lease_id IS NULL
           AND EXISTS (SELECT 1 FROM robots
                       WHERE id = ?2 AND key_id = ?7 AND instance_id = ?8)
           AND EXISTS (SELECT 1 FROM workflows w
                       WHERE w.id = session_queues.workflow_id AND ",
            crate::under_limit!("session_queues"),
            ")"
        ),
        params![
            session_id,
            poller.robot_id,
            lease_id,
            poller.poll_id,
            now_ms,
            now_ms + ttl_ms,
            poller.key_id,
            poller.instance_id,
            poller.poll_seq
        ],
    )?;
    if changed == 0 {
        return Ok(None);
    }
    let Some((lease, delivered)) = lease_of(conn, session_id, master)? else {
        return Ok(None);
    };
    if !delivered.is_empty() {
        // Which session received which credential, on which robot: in the
        // grant's own transaction, so a lease that is sent was recorded.
        let list: Vec<Value> = delivered
            .iter()
            .map(|d| serde_json::json!({"name": d.name, "version": d.version}))
            .collect();
        audit::record(
            conn,
            poller.key_id,
            "credential.deliver",
            &format!("session_queue {session_id}"),
            serde_json::json!({"session_queue_id": session_id, "robot": poller.name,
                               "robot_id": poller.robot_id, "credentials": list}),
            now_ms,
        )?;
    }
    Ok(Some(lease))
}

/// What became of a session whose lease was taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawn {
    /// Back in the queue, for the next robot.
    Queued,
    /// Its cancel was asked for meanwhile: it ends without running.
    Cancelled,
    /// Not taken back: the robot has listed the lease as its own, so it
    /// may be running.
    Confirmed,
    /// Not taken back: the session has ended, or the lease is not its own.
    Gone,
}

/// Takes back a lease the robot never had (its poll had gone) or handed
/// back unrun (`release`). Only a lease no poll has listed since can be
/// taken back: a listed one may be running.
pub fn withdraw(
    conn: &mut Conn<'_>,
    session_id: i64,
    lease_id: &str,
    now_ms: i64,
) -> Result<Withdrawn, DbError> {
    let status: Option<String> = conn.opt_row(
        "UPDATE session_queues
             SET status = CASE WHEN cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END,
                 started_at = NULL,
                 ended_at = CASE WHEN cancel_requested_at IS NULL THEN NULL
                            ELSE CAST(?3 AS BIGINT) END,
                 lease_id = NULL, lease_poll_id = NULL, lease_poll_seq = NULL, robot_id = NULL,
                 lease_expires_at = NULL
             WHERE id = ?1 AND lease_id = ?2 AND lease_confirmed = 0 AND status = 'running'
             RETURNING status",
        params![session_id, lease_id, now_ms],
        |r| r.get(0),
    )?;
    Ok(match status.as_deref() {
        Some("queued") => Withdrawn::Queued,
        Some(_) => Withdrawn::Cancelled,
        None => {
            let running = conn.opt_row(
                "SELECT 1 FROM session_queues
                     WHERE id = ?1 AND lease_id = ?2 AND status = 'running'",
                params![session_id, lease_id],
                |_| Ok(()),
            )?;
            if running.is_some() {
                Withdrawn::Confirmed
            } else {
                Withdrawn::Gone
            }
        }
    })
}

/// Takes back the leases of `robot_id` that were sent in answer to a poll
/// numbered lower than `poll_seq` and that this poll does not list in
/// `held`. A robot lists in every poll the leases it received in answer to
/// the polls before it and still runs (`PollRequest::poll_seq`), so these
/// never reached it: the answer carrying them went to a sending of a poll
/// that the robot had given up (on PostgreSQL such a sending can reach the
/// robot's row after the newer one and be granted work). Left alone they
/// would sit `running` until the lease expired and end `robot_lost`. This
/// holds however late the poll arrives: a lease granted to a higher
/// number is never touched. Returns each session with what became of it.
pub fn withdraw_unlisted(
    conn: &mut Conn<'_>,
    robot_id: i64,
    poll_seq: i64,
    held: &[HeldLease],
    now_ms: i64,
) -> Result<Vec<(i64, Withdrawn)>, DbError> {
    let unconfirmed: Vec<(i64, String)> = conn.rows(
        "SELECT id, lease_id FROM session_queues
         WHERE robot_id = ?1 AND status = 'running' AND lease_confirmed = 0
           AND lease_poll_seq < ?2
         ORDER BY id",
        params![robot_id, poll_seq],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut withdrawn = Vec::new();
    for (session_id, lease_id) in unconfirmed {
        let listed = held
            .iter()
            .any(|h| h.session_id == session_id && h.lease_id == lease_id);
        if !listed {
            withdrawn.push((session_id, withdraw(conn, session_id, &lease_id, now_ms)?));
        }
    }
    Ok(withdrawn)
}

/// A robot registers as its agent starts: the polls of the agent that ran
/// before (killed, perhaps after it received a lease and before a poll
/// listed it) are over, and nothing this run lists can say whether that
/// agent began one of their leases. So their unconfirmed leases lose their
/// poll numbers, and `withdraw_unlisted` leaves them alone: they are
/// listed by the new run (a spool it delivers) or end `robot_lost`.
pub fn forget_poll_numbers(conn: &mut Conn<'_>, robot_id: i64) -> Result<(), DbError> {
    conn.execute(
        "UPDATE session_queues SET lease_poll_seq = NULL
         WHERE robot_id = ?1 AND status = 'running' AND lease_confirmed = 0
           AND lease_poll_seq IS NOT NULL",
        params![robot_id],
    )?;
    Ok(())
}

/// Leases sent in answer to the poll `poll_id` that the robot has not
/// listed since: what it gets again when it retries a poll whose answer it
/// lost.
pub fn offered_by_poll(
    conn: &mut Conn<'_>,
    robot_id: i64,
    poll_id: &str,
    master: &MasterKey,
) -> Result<Vec<Lease>, DbError> {
    let ids: Vec<i64> = conn.rows(
        "SELECT id FROM session_queues
         WHERE robot_id = ?1 AND lease_poll_id = ?2 AND lease_confirmed = 0
           AND status = 'running'
         ORDER BY id",
        params![robot_id, poll_id],
        |r| r.get(0),
    )?;
    let mut leases = Vec::new();
    for id in ids {
        // The same lease again, its answer lost: the credentials as they
        // are now (a rotation since reaches it too), recorded at the grant.
        leases.extend(lease_of(conn, id, master)?.map(|(lease, _)| lease));
    }
    Ok(leases)
}

/// The lease as the robot receives it, and the credentials it carries:
/// the one place secret params and credentials are opened.
fn lease_of(
    conn: &mut Conn<'_>,
    session_id: i64,
    master: &MasterKey,
) -> Result<Option<(Lease, Vec<credentials::Delivered>)>, DbError> {
    let row = conn.opt_row(
        "SELECT s.lease_id, s.params, s.secrets_sealed, w.id, w.name,
                    w.single_process_mode, w.source_format, w.source, w.credentials, s.robot_id
             FROM session_queues s JOIN workflows w ON w.id = s.workflow_id
             WHERE s.id = ?1 AND s.lease_id IS NOT NULL",
        params![session_id],
        |r| {
            Ok((
                (
                    r.get::<String>(0)?,
                    r.get::<String>(1)?,
                    r.get::<Option<Vec<u8>>>(2)?,
                    r.get::<Option<i64>>(9)?,
                ),
                (
                    r.get::<i64>(3)?,
                    r.get::<String>(4)?,
                    r.get::<bool>(5)?,
                    r.get::<String>(6)?,
                    r.get::<String>(7)?,
                    r.get::<String>(8)?,
                ),
            ))
        },
    )?;
    let Some(((lease_id, params, sealed, robot_id), (wid, wname, spm, format, source, declared))) =
        row
    else {
        return Ok(None);
    };
    let declared: Vec<credentials::Declared> = parse_json(
        &format!("session queue {session_id}: its workflow's credentials"),
        &declared,
    )?;
    // A leased session has its robot; without one, no credential goes.
    let (credential_values, delivered) = match robot_id {
        Some(robot_id) if !declared.is_empty() => {
            let workflow = super::workflow_names::identity(conn, wid)?.ok_or_else(|| {
                DbError::Corrupt(format!(
                    "session queue {session_id}: workflow {wid} is gone"
                ))
            })?;
            credentials::values_for_lease(conn, &declared, &workflow, robot_id, master)?
        }
        Some(_) => Default::default(),
        None => Default::default(),
    };
    let mut params: Map<String, Value> =
        parse_json(&format!("session queue {session_id}: params"), &params)?;
    if let Some(sealed) = sealed {
        secret_params::open_into(
            master,
            secret_params::Owner::Session(session_id),
            &sealed,
            &mut params,
        )?;
    }
    let lease = Lease {
        session_id,
        lease_id,
        workflow: LeasedWorkflow {
            id: wid,
            name: wname,
            single_process_mode: spm,
            format,
            source,
            called: super::workflows::calls_of(conn, wid)?,
        },
        params,
        credentials: credential_values,
        resume: super::waits::resumption(conn, session_id, master)?,
    };
    Ok(Some((lease, delivered)))
}

/// Renews the leases a robot says it holds, which confirms that it
/// received them. Returns the sessions whose lease the hub no longer
/// honours.
pub fn renew(
    conn: &mut Conn<'_>,
    robot_id: i64,
    held: &[HeldLease],
    now_ms: i64,
    ttl_ms: i64,
) -> Result<Vec<i64>, DbError> {
    let mut lost = Vec::new();
    // In session order, as every statement that locks several sessions.
    let mut held: Vec<&HeldLease> = held.iter().collect();
    held.sort_by_key(|h| h.session_id);
    for h in held {
        let renewed = conn.execute(
            "UPDATE session_queues SET lease_expires_at = ?4, lease_confirmed = 1
             WHERE id = ?1 AND robot_id = ?2 AND lease_id = ?3 AND status = 'running'",
            params![h.session_id, robot_id, h.lease_id, now_ms + ttl_ms],
        )?;
        if renewed == 0 {
            lost.push(h.session_id);
        }
    }
    Ok(lost)
}

/// Running sessions among `held` whose cancellation was asked for.
pub fn cancels_for(
    conn: &mut Conn<'_>,
    robot_id: i64,
    held: &[HeldLease],
) -> Result<Vec<i64>, DbError> {
    let mut out = Vec::new();
    for h in held {
        let asked: Option<Option<i64>> = conn.opt_row(
            "SELECT cancel_requested_at FROM session_queues
                 WHERE id = ?1 AND robot_id = ?2 AND lease_id = ?3 AND status = 'running'",
            params![h.session_id, robot_id, h.lease_id],
            |r| r.get(0),
        )?;
        if matches!(asked, Some(Some(_))) {
            out.push(h.session_id);
        }
    }
    Ok(out)
}

/// A call carrying the lease (log lines, steps, an artifact) shows that
/// the robot received it: the lease is confirmed as a poll listing it
/// would, and is never taken back (`withdraw`, `withdraw_unlisted`).
pub fn confirm(conn: &mut Conn<'_>, session_id: i64, lease_id: &str) -> Result<(), DbError> {
    conn.execute(
        "UPDATE session_queues SET lease_confirmed = 1
         WHERE id = ?1 AND lease_id = ?2 AND lease_confirmed = 0",
        params![session_id, lease_id],
    )?;
    Ok(())
}

/// Where a lease stands, for calls that carry one.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseCheck {
    NoSession,
    /// The session exists but this lease is not (or no longer) its own.
    NotHeld,
    Held {
        robot_id: i64,
    },
}

pub fn check(conn: &mut Conn<'_>, session_id: i64, lease_id: &str) -> Result<LeaseCheck, DbError> {
    let row = conn.opt_row(
        "SELECT lease_id, robot_id FROM session_queues WHERE id = ?1",
        params![session_id],
        |r| Ok((r.get::<Option<String>>(0)?, r.get::<Option<i64>>(1)?)),
    )?;
    let Some((lease, robot)) = row else {
        return Ok(LeaseCheck::NoSession);
    };
    match (lease, robot) {
        (Some(l), Some(robot_id)) if l == lease_id => Ok(LeaseCheck::Held { robot_id }),
        _ => Ok(LeaseCheck::NotHeld),
    }
}

/// Stores a steps update unless a newer one is already stored. Returns the
/// stored revision.
pub fn update_steps(
    conn: &mut Conn<'_>,
    session_id: i64,
    lease_id: &str,
    revision: u64,
    steps: &[StepState],
) -> Result<u64, DbError> {
    let json = serde_json::to_string(steps).map_err(|e| DbError::Corrupt(e.to_string()))?;
    let revision = revision.min(i64::MAX as u64) as i64;
    // The lease again, in the statement: a run queued again since the
    // call's lease check (`retry_on`) must not take an older run's steps.
    conn.execute(
        "UPDATE session_queues SET steps = ?2, steps_revision = ?3
         WHERE id = ?1 AND steps_revision < ?3 AND status = 'running' AND lease_id = ?4",
        params![session_id, json, revision, lease_id],
    )?;
    let stored: i64 = conn.row(
        "SELECT steps_revision FROM session_queues WHERE id = ?1",
        params![session_id],
        |r| r.get(0),
    )?;
    Ok(stored.max(0) as u64)
}

pub enum Finished {
    /// This call finished the session.
    Now,
    /// An earlier call with the same key did.
    Already,
    /// The session ended otherwise (a lost lease, another key).
    Conflict { status: SessionStatus },
    /// The hub had ended the session as `robot_lost` while this robot
    /// was out of touch; the robot is back and has delivered what it
    /// produced under the lease. The log now ends with the hub's line
    /// saying so; the verdict stands.
    AfterLoss,
    /// The report said the run was cut off (`agent_restarted`), and the
    /// workflow's `retry_on` queued the session again: the caller offers
    /// it.
    Requeued,
    /// The session stopped at a waiting step (`db/waits.rs`): its robot's
    /// slot is free, and it waits on no robot; or, `queued`, a cancel asked
    /// while it ran answered its wait at once, and the caller offers it.
    Suspended { queued: bool },
}

/// Ends a running session with the robot's report.
pub fn finish(
    conn: &mut Conn<'_>,
    session_id: i64,
    lease_id: &str,
    report: &FinishSession,
    master: &MasterKey,
    now_ms: i64,
) -> Result<Finished, DbError> {
    conn.transaction(|tx| finish_in(tx, session_id, lease_id, report, master, now_ms))
}

fn finish_in(
    tx: &mut Conn<'_>,
    session_id: i64,
    lease_id: &str,
    report: &FinishSession,
    master: &MasterKey,
    now_ms: i64,
) -> Result<Finished, DbError> {
    if let (SessionStatus::Waiting, Some(suspension)) = (report.status, &report.suspend) {
        super::sessions::lock_row(tx, session_id)?;
        let steps =
            serde_json::to_string(&report.steps).map_err(|e| DbError::Corrupt(e.to_string()))?;
        let suspended =
            super::waits::suspend_in(tx, session_id, lease_id, suspension, &steps, master, now_ms)?;
        if suspended != super::waits::Suspended::NotHeld {
            tx.execute(
                "UPDATE session_queues SET finish_key = ?2 WHERE id = ?1",
                params![session_id, report.idempotency_key],
            )?;
            return Ok(Finished::Suspended {
                queued: suspended == super::waits::Suspended::Queued,
            });
        }
    }
    if report
        .error
        .as_ref()
        .is_some_and(|e| e.code == AGENT_RESTARTED)
        && report.status == SessionStatus::Error
        && requeue_for_retry(
            tx,
            session_id,
            Still::Leased(lease_id),
            AGENT_RESTARTED,
            "its agent was stopped in the middle of it and started again",
            now_ms,
        )?
    {
        return Ok(Finished::Requeued);
    }
    // A cancel the hub asked for a limit ends the session as that limit's
    // failure, not as a cancel someone chose.
    let reason: Option<Option<String>> = tx.opt_row(
        "SELECT cancel_reason FROM session_queues WHERE id = ?1 AND lease_id = ?2",
        params![session_id, lease_id],
        |r| r.get(0),
    )?;
    let limited;
    let report = match reason.flatten().as_deref() {
        Some(DURATION_REASON) if report.status == SessionStatus::Cancelled => {
            limited = FinishSession {
                status: SessionStatus::Error,
                error: Some(SessionError {
                    code: DURATION_LIMIT.into(),
                    message: "the run lasted longer than the hub's --max-session-duration; the \
                              hub cancelled it"
                        .into(),
                    step_id: report.error.as_ref().and_then(|e| e.step_id.clone()),
                }),
                ..report.clone()
            };
            &limited
        }
        _ => report,
    };
    let steps =
        serde_json::to_string(&report.steps).map_err(|e| DbError::Corrupt(e.to_string()))?;
    let error = report
        .error
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| DbError::Corrupt(e.to_string()))?;
    let outputs = report
        .outputs
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| DbError::Corrupt(e.to_string()))?;
    // The robot's clock says when it ended, but never before the start
    // nor after the hub's now.
    let ended = report.ended_at.as_millisecond().min(now_ms);
    let changed = tx.execute(
        "UPDATE session_queues
         SET status = ?3,
             ended_at = CASE WHEN started_at > ?4 THEN started_at ELSE ?4 END, error = ?5,
             -- A report without steps (the session never started on the
             -- robot) keeps what the robot sent before.
             steps = CASE WHEN ?6 = '[]' THEN steps ELSE ?6 END,
             steps_revision = steps_revision + 1, outputs = ?7, finish_key = ?8,
             lease_expires_at = NULL
         WHERE id = ?1 AND lease_id = ?2 AND status = 'running'",
        params![
            session_id,
            lease_id,
            report.status.as_str(),
            ended,
            error,
            steps,
            outputs,
            report.idempotency_key
        ],
    )?;
    let outcome = if changed > 0 {
        Finished::Now
    } else {
        let (status, key, error, ended, lease): (
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
        ) = tx.row(
            "SELECT status, finish_key, error, ended_at, lease_id FROM session_queues WHERE id = ?1", params![session_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
        let lost = error
            .as_deref()
            .and_then(|e| serde_json::from_str::<SessionError>(e).ok())
            .is_some_and(|e| e.code == ROBOT_LOST);
        if key.as_deref() == Some(report.idempotency_key.as_str()) {
            Finished::Already
        } else if lost && key.is_none() && lease.as_deref() == Some(lease_id) {
            let ended = ended.map_or_else(
                || "?".to_string(),
                |ms| super::to_timestamp(ms).map_or_else(|_| ms.to_string(), |t| t.to_string()),
            );
            let note = format!(
                "[tasuki-hub] contact with the robot was lost: its lease ran out and the hub \
                 ended the session as robot_lost at {ended}; the robot came back and delivered \
                 the lines above, produced under that lease; its own report said {}",
                report.status.as_str()
            );
            super::logs::append_note(tx, session_id, &note, now_ms)?;
            tx.execute(
                "UPDATE session_queues SET finish_key = ?2 WHERE id = ?1",
                params![session_id, report.idempotency_key],
            )?;
            Finished::AfterLoss
        } else {
            Finished::Conflict {
                status: status
                    .parse()
                    .map_err(|e| DbError::Corrupt(format!("session queue {session_id}: {e}")))?,
            }
        }
    };
    Ok(outcome)
}

/// Whether the session's last report was sent with this idempotency key
/// (the agent's are `finish-<session>-<lease>`, known to the robot that
/// held the lease alone).
pub fn reported_with(conn: &mut Conn<'_>, session_id: i64, key: &str) -> Result<bool, DbError> {
    Ok(conn
        .opt_row(
            "SELECT id FROM session_queues WHERE id = ?1 AND finish_key = ?2",
            params![session_id, key],
            |r| r.get::<i64>(0),
        )?
        .is_some())
}

/// `cancel_reason` of a cancel `--max-session-duration` asked.
const DURATION_REASON: &str = "duration";
/// The error code of a session ended by `--max-session-duration`.
pub const DURATION_LIMIT: &str = "session_duration_limit";

/// Running sessions whose run has lasted longer than `max_ms`: the hub
/// asks their cancel (once), noting why in their log. `(session, robot)`,
/// for the caller to tell the robots.
pub fn over_duration(
    conn: &mut Conn<'_>,
    now_ms: i64,
    max_ms: i64,
) -> Result<Vec<(i64, i64)>, DbError> {
    let due: Vec<(i64, i64)> = conn.rows(
        "SELECT id, robot_id FROM session_queues
         WHERE status = 'running' AND cancel_requested_at IS NULL
           AND run_started_at IS NOT NULL AND run_started_at <= ?1 AND robot_id IS NOT NULL
         ORDER BY id LIMIT 1000",
        params![now_ms - max_ms],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut asked = Vec::new();
    for (id, robot) in due {
        let changed = conn.transaction(|tx| {
            let changed = tx.execute(
                "UPDATE session_queues SET cancel_requested_at = ?2, cancel_reason = ?3
                 WHERE id = ?1 AND status = 'running' AND cancel_requested_at IS NULL",
                params![id, now_ms, DURATION_REASON],
            )?;
            if changed > 0 {
                super::logs::append_note(
                    tx,
                    id,
                    &format!(
                        "[tasuki-hub] the run has lasted longer than the hub's \
                         --max-session-duration ({} s); the hub cancels it",
                        max_ms / 1000
                    ),
                    now_ms,
                )?;
            }
            Ok(changed)
        })?;
        if changed > 0 {
            asked.push((id, robot));
        }
    }
    Ok(asked)
}

/// What must still hold when `requeue_for_retry` looks at a session.
pub enum Still<'a> {
    /// Its lease ran out before this time (the sweep).
    Expired(i64),
    /// This lease is its own (a robot's report).
    Leased(&'a str),
}

/// How many times `retry_on` queues one session again: four runs at most.
pub const MAX_RETRIES: i64 = 3;

/// Queues a running session again, when its workflow's `retry_on` names
/// `code` (how its run ended without finishing: `robot_lost`,
/// `agent_restarted`), no cancel was asked for, and it has runs left. Its
/// lease, robot, steps and report are cleared; its log keeps what the run
/// sent and a line of the hub's saying why it runs again, and the next
/// run's lines follow (`logs::LogState::seq_base`). The caller offers it. False,
/// with nothing changed, otherwise.
pub fn requeue_for_retry(
    conn: &mut Conn<'_>,
    session_id: i64,
    still: Still<'_>,
    code: &str,
    why: &str,
    now_ms: i64,
) -> Result<bool, DbError> {
    conn.transaction(|tx| {
        super::sessions::lock_row(tx, session_id)?;
        const RUNS: &str = "SELECT s.attempt, w.retry_on
             FROM session_queues s JOIN workflows w ON w.id = s.workflow_id
             WHERE s.id = ?1 AND s.status = 'running' AND s.cancel_requested_at IS NULL";
        let read = |r: &super::sql::Row<'_>| Ok((r.get(0)?, r.get(1)?));
        let row: Option<(i64, String)> = match still {
            Still::Expired(now) => tx.opt_row(
                &format!("{RUNS} AND s.lease_expires_at < ?2"),
                params![session_id, now],
                read,
            )?,
            Still::Leased(lease) => tx.opt_row(
                &format!("{RUNS} AND s.lease_id = ?2"),
                params![session_id, lease],
                read,
            )?,
        };
        let Some((attempt, retry_on)) = row else {
            return Ok(false);
        };
        let retry_on: Vec<String> = parse_json(
            &format!("session queue {session_id}: its workflow's retry_on"),
            &retry_on,
        )?;
        if !retry_on.iter().any(|c| c == code) || attempt > MAX_RETRIES {
            return Ok(false);
        }
        let note = format!(
            "[tasuki-hub] run {attempt} ended {code}: {why}; the workflow's retry_on queues the \
             session again (run {} of at most {})",
            attempt + 1,
            MAX_RETRIES + 1
        );
        let base = super::logs::append_note(tx, session_id, &note, now_ms)?;
        tx.execute(
            "UPDATE session_queues
             SET status = 'queued', attempt = attempt + 1, log_seq_base = ?2,
                 started_at = NULL, ended_at = NULL, robot_id = NULL,
                 lease_id = NULL, lease_poll_id = NULL, lease_poll_seq = NULL,
                 lease_expires_at = NULL, lease_confirmed = 0,
                 steps = NULL, steps_revision = 0,
                 error = NULL, outputs = NULL, finish_key = NULL
             WHERE id = ?1 AND status = 'running'",
            params![session_id, base as i64],
        )?;
        Ok(true)
    })
}

/// Running sessions whose robot stopped renewing their lease:
/// `(session, robot)`.
#[derive(Debug, Default)]
pub struct Swept {
    pub lost: Vec<(i64, i64)>,
    /// Queued again instead, by their workflow's `retry_on`.
    pub requeued: Vec<(i64, i64)>,
}

/// Ends every session whose lease ran out as `robot_lost`. A lease the
/// robot never listed may not have reached it, but nobody can know that
/// it did not start, so it is not queued again either.
pub fn sweep(conn: &mut Conn<'_>, now_ms: i64, ttl_ms: i64) -> Result<Swept, DbError> {
    // Each session is ended by a statement of its own (guarded, so that of
    // hubs sweeping at once only one ends it), in id order: no transaction
    // holds many rows while a robot's poll renews them in its own order.
    let mut swept = Swept::default();
    let rows: Vec<(i64, Option<i64>, String, bool)> = conn.rows(
        "SELECT id, robot_id, status, lease_confirmed FROM session_queues
         WHERE lease_expires_at IS NOT NULL AND lease_expires_at < ?1
         ORDER BY id",
        params![now_ms],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    for (id, robot, status, confirmed) in rows {
        if status != "running" {
            conn.execute(
                "UPDATE session_queues SET lease_expires_at = NULL
                 WHERE id = ?1 AND status <> 'running'",
                params![id],
            )?;
            continue;
        }
        let ttl_s = ttl_ms / 1000;
        let why = format!("its robot stopped renewing the lease for {ttl_s} s");
        if requeue_for_retry(conn, id, Still::Expired(now_ms), ROBOT_LOST, &why, now_ms)? {
            swept.requeued.push((id, robot.unwrap_or(0)));
            continue;
        }
        let high = super::logs::high_seq(conn, id)?;
        let message = if confirmed {
            format!(
                "the robot stopped renewing its lease for {ttl_s} s (it died, or lost the \
                 network); the session was not re-run; the hub then had its log up to line \
                 {high}, and takes the rest should the robot come back"
            )
        } else {
            format!(
                "the robot was sent the session and did not poll again within {ttl_s} s \
                 (it died, or lost the network); it may have started, so the session was \
                 not re-run"
            )
        };
        let error = SessionError {
            code: ROBOT_LOST.into(),
            message,
            step_id: None,
        };
        let error = serde_json::to_string(&error).map_err(|e| DbError::Corrupt(e.to_string()))?;
        let ended = conn.execute(
            "UPDATE session_queues
             SET status = 'error', ended_at = ?2, error = ?3, lease_expires_at = NULL
             WHERE id = ?1 AND status = 'running' AND lease_expires_at < ?2",
            params![id, now_ms, error],
        )?;
        if ended > 0 {
            swept.lost.push((id, robot.unwrap_or(0)));
        }
    }
    Ok(swept)
}

/// On start, every live lease gets a fresh deadline: while the hub was
/// down no robot could renew, and that must not count against them.
pub fn extend_after_restart(conn: &mut Conn<'_>, now_ms: i64, ttl_ms: i64) -> Result<u64, DbError> {
    conn.execute(
        "UPDATE session_queues SET lease_expires_at = ?1
         WHERE lease_expires_at IS NOT NULL AND lease_expires_at < ?1 AND status = 'running'",
        params![now_ms + ttl_ms],
    )
}

/// The robot holding a running session, for pushing a cancel to it.
pub fn robot_of(conn: &mut Conn<'_>, session_id: i64) -> Result<Option<i64>, DbError> {
    Ok(conn
        .opt_row(
            "SELECT robot_id FROM session_queues WHERE id = ?1 AND lease_id IS NOT NULL",
            params![session_id],
            |r| r.get::<Option<i64>>(0),
        )?
        .flatten())
}

/// Running sessions per robot, for `GET /v1/robots`.
pub fn running_by_robot(conn: &mut Conn<'_>) -> Result<Vec<(i64, i64)>, DbError> {
    conn.rows(
        "SELECT robot_id, id FROM session_queues
         WHERE status = 'running' AND robot_id IS NOT NULL ORDER BY id",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::robots::{self, Registered};
    use crate::db::sessions::{self, NewSession};
    use crate::db::workflows::{self, NewWorkflow};
    use tasuki_protocol::{ActionOffer, RegisterRobot};

    fn robot(conn: &mut Conn<'_>, name: &str, actions: Option<&[&str]>, labels: &[&str]) -> i64 {
        let req = RegisterRobot {
            instance_id: format!("i-{name}"),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            version: "t".into(),
            max_concurrency: 1,
            host: Default::default(),
            replace: false,
            actions: actions.map(|a| {
                a.iter()
                    .map(|n| ActionOffer {
                        name: n.to_string(),
                        pack: None,
                        version: "t".into(),
                        schema_sha256: "0".repeat(64),
                    })
                    .collect()
            }),
        };
        match robots::register(conn, name, "key", &req, 100, 0).unwrap() {
            Registered::Ok(r) => r.id,
            _ => panic!("registered"),
        }
    }

    fn session(conn: &mut Conn<'_>, master: &MasterKey, needs: &Needs) -> i64 {
        let w = workflows::insert(
            conn,
            &NewWorkflow {
                registered_by: "k".into(),
                name: "w".into(),
                description: String::new(),
                single_process_mode: needs.single_process,
                source_format: "yaml",
                source: String::new(),
                param_specs: Vec::new(),
                accept_undeclared_params: false,
                workflow_robots: needs.pins.clone(),
                required_actions: needs.actions.clone(),
                robot_labels: needs.labels.clone(),
                error_handler_workflow_id: None,
                concurrency: None,
                credentials: needs
                    .credentials
                    .iter()
                    .map(|c| credentials::Declared {
                        name: c.name.clone(),
                        kind: "token".into(),
                    })
                    .collect(),
                retry_on: Vec::new(),
                limit_log_bytes: None,
                limit_artifact_bytes: None,
                calls: Vec::new(),
            },
            0,
        )
        .unwrap();
        sessions::insert(
            conn,
            &NewSession {
                workflow_id: w.id,
                params: Map::new(),
                secret_params: Vec::new(),
                origin: None,
            },
            master,
            0,
        )
        .unwrap()
        .unwrap()
        .session
        .id
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// `next_for` (SQL) and `Needs::fits` (the dispatcher's, in memory)
    /// pick the same session for every robot.
    #[test]
    fn next_for_agrees_with_needs_fits() {
        let dir = tempfile::tempdir().unwrap();
        let master = MasterKey::create(&dir.path().join("key")).unwrap();
        let mut raw = crate::db::test_connection();
        let conn = &mut Conn::sqlite(&mut raw);
        let robot_ids = [
            robot(conn, "plain", Some(&["log", "shell.run"]), &[]),
            robot(conn, "packs", Some(&["log", "probe.hello"]), &["gpu"]),
            robot(conn, "old", None, &[]),
            robot(conn, "bare", Some(&[]), &["gpu", "ssd"]),
        ];
        // Credentials that allow by label, by name, nobody; and one that
        // does not exist.
        let allows = [
            ("by_gpu", Some((vec![], vec!["gpu"]))),
            ("by_name", Some((vec!["plain", "old"], vec![]))),
            ("nobody", Some((vec![], vec![]))),
            ("gone", None),
        ];
        let mut cred = std::collections::HashMap::new();
        for (name, allow) in allows {
            let allow = allow.map(|(robots, labels)| tasuki_protocol::CredentialAllow {
                robots: strings(&robots),
                labels: strings(&labels),
                workflows: None,
            });
            if let Some(allow) = &allow {
                let new = credentials::NewCredential {
                    name: name.into(),
                    kind: "token".into(),
                    fields: serde_json::json!({"token": "t"})
                        .as_object()
                        .unwrap()
                        .clone(),
                    allow: allow.clone(),
                    description: String::new(),
                };
                credentials::insert(conn, &new, &master, "k", 0)
                    .unwrap()
                    .unwrap();
            }
            cred.insert(
                name,
                CredentialNeed {
                    name: name.into(),
                    allow,
                },
            );
        }
        let all_needs = [
            Needs {
                credentials: vec![cred["by_gpu"].clone()],
                ..Needs::default()
            },
            Needs {
                credentials: vec![cred["by_gpu"].clone(), cred["by_name"].clone()],
                ..Needs::default()
            },
            Needs {
                actions: strings(&["log"]),
                credentials: vec![cred["by_name"].clone()],
                ..Needs::default()
            },
            Needs {
                credentials: vec![cred["nobody"].clone()],
                ..Needs::default()
            },
            Needs {
                credentials: vec![cred["gone"].clone()],
                ..Needs::default()
            },
            Needs {
                actions: strings(&["probe.hello", "log"]),
                ..Needs::default()
            },
            Needs {
                labels: strings(&["gpu", "ssd"]),
                ..Needs::default()
            },
            Needs {
                actions: strings(&["shell.run"]),
                labels: strings(&["gpu"]),
                ..Needs::default()
            },
            Needs {
                pins: strings(&["old"]),
                actions: strings(&["x.y"]),
                ..Needs::default()
            },
            Needs {
                actions: strings(&["log"]),
                ..Needs::default()
            },
            Needs::default(),
        ];
        // Each robot in turn sees the queue with the sessions before the
        // one it takes still there: start from every offset.
        for skip in 0..all_needs.len() {
            let ids: Vec<(i64, &Needs)> = all_needs[skip..]
                .iter()
                .map(|n| (session(conn, &master, n), n))
                .collect();
            for &robot_id in &robot_ids {
                let caps = robots::capabilities(conn, robot_id).unwrap().unwrap();
                let expected = ids.iter().find(|(_, n)| n.fits(&caps)).map(|(id, _)| *id);
                let got = next_for(conn, robot_id, &caps.name, Load::default()).unwrap();
                assert_eq!(got, expected, "robot {} from {skip}", caps.name);
                for (id, needs) in &ids {
                    let stored = needs_of(conn, *id).unwrap().unwrap();
                    assert_eq!(stored.fits(&caps), needs.fits(&caps));
                }
            }
            conn.execute("UPDATE session_queues SET status = 'cancelled'", params![])
                .unwrap();
        }
    }

    /// The robot's catalog is read once per statement, not once per
    /// session passed over.
    #[test]
    fn next_for_reads_the_robots_catalog_once() {
        let conn = crate::db::test_connection();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {NEXT_FOR}"))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params!["r", 0, 1], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let lists: Vec<&String> = plan
            .iter()
            .filter(|l| l.contains("LIST SUBQUERY"))
            .collect();
        assert_eq!(lists.len(), 2, "{plan:#?}");
        assert!(lists.iter().all(|l| !l.contains("CORRELATED")), "{plan:#?}");
    }
}
