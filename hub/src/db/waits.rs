//! Sessions stopped at a waiting step (`approval`, `wait_event`).
//!
//! A robot that reaches one suspends the session (`suspend`): its lease
//! ends, the robot's slot is free, and the session is `waiting` with a row
//! here holding what it waits for and the checkpoint (sealed with the
//! master key: it holds the session's variables, secrets among them) that
//! a robot resumes it from. An answer (`answer`: a decision, an event, the
//! deadline, a cancel) queues the session again; the robot that takes it
//! gets the checkpoint and the outcome in its lease (`resumption`). The
//! row stays, with the outcome, until the session waits again or is
//! deleted, so that a run cut off after the resume (`retry_on`) resumes
//! the same way, and the API can say who decided.

use jiff::Timestamp;
use tasuki_protocol::robot::{OnTimeout, Resumption, Suspension, WaitOutcome};
use tasuki_protocol::session::{SessionWait, WaitKind, may_decide};

use super::sql::{Conn, params};
use super::{DbError, parse_json, to_timestamp};
use crate::secrets::MasterKey;

/// The associated data a session's sealed checkpoint opens with.
fn aad(session_id: i64) -> String {
    format!("checkpoint:{session_id}")
}

/// The associated data an event's sealed signing key opens with.
fn callback_aad(session_id: i64) -> String {
    format!("callback:{session_id}")
}

/// The signing key of the event session `session_id` waits for, when its
/// step gave one: `(event name, key)`.
pub fn callback_key(
    conn: &mut Conn<'_>,
    session_id: i64,
    master: &MasterKey,
) -> Result<Option<(String, Vec<u8>)>, DbError> {
    let row: Option<(Option<String>, Option<Vec<u8>>)> = conn.opt_row(
        "SELECT w.event, w.callback_secret FROM session_waits w
         JOIN session_queues s ON s.id = w.session_id
         WHERE w.session_id = ?1 AND w.outcome IS NULL AND s.status = 'waiting'",
        params![session_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some((Some(event), Some(sealed))) = row else {
        return Ok(None);
    };
    let key = master
        .open_blob(&callback_aad(session_id), &sealed)
        .map_err(|e| DbError::Secrets(format!("session queue {session_id}'s signing key: {e}")))?;
    Ok(Some((event, key)))
}

fn kind_str(kind: WaitKind) -> &'static str {
    match kind {
        WaitKind::Approval => "approval",
        WaitKind::Event => "event",
    }
}

/// What became of a robot's suspension.
#[derive(Debug, PartialEq)]
pub enum Suspended {
    /// The session was not running under that lease: nothing changed.
    NotHeld,
    /// It waits, on no robot.
    Waiting,
    /// A cancel had been asked while it ran: its wait is answered
    /// `cancelled` at once, and it is queued to be resumed only to end
    /// (its `finally`); the caller offers it.
    Queued,
}

/// Within the robot's finish transaction, with its lease checked: the
/// session waits, on no robot. Its log gets the hub's note, after which a
/// resumed run's lines follow (`log_seq_base`).
pub fn suspend_in(
    tx: &mut Conn<'_>,
    session_id: i64,
    lease_id: &str,
    suspension: &Suspension,
    steps: &str,
    master: &MasterKey,
    now_ms: i64,
) -> Result<Suspended, DbError> {
    let running: Option<Option<i64>> = tx.opt_row(
        "SELECT cancel_requested_at FROM session_queues
         WHERE id = ?1 AND lease_id = ?2 AND status = 'running'",
        params![session_id, lease_id],
        |r| r.get(0),
    )?;
    let Some(cancel_asked) = running else {
        return Ok(Suspended::NotHeld);
    };
    let wait = &suspension.wait;
    let plain =
        serde_json::to_vec(&suspension.checkpoint).map_err(|e| DbError::Corrupt(e.to_string()))?;
    let sealed = master
        .seal(&aad(session_id), &plain)
        .map_err(|e| DbError::Secrets(format!("session queue {session_id}'s checkpoint: {e}")))?
        .into_blob();
    let deadline = now_ms.saturating_add(i64::try_from(wait.timeout_ms).unwrap_or(i64::MAX));
    let on_timeout = match wait.on_timeout {
        OnTimeout::Approve => "approve",
        OnTimeout::Reject => "reject",
    };
    tx.execute(
        "DELETE FROM session_waits WHERE session_id = ?1",
        params![session_id],
    )?;
    let callback_secret = match &wait.secret {
        Some(secret) => Some(
            master
                .seal(&callback_aad(session_id), secret.as_bytes())
                .map_err(|e| {
                    DbError::Secrets(format!("session queue {session_id}'s signing key: {e}"))
                })?
                .into_blob(),
        ),
        None => None,
    };
    tx.execute(
        "INSERT INTO session_waits (session_id, step_id, kind, message, event, since, deadline,
                                    on_timeout, checkpoint, callback_secret, approvers)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            session_id,
            wait.step_id,
            kind_str(wait.kind),
            wait.message,
            wait.event,
            now_ms,
            deadline,
            on_timeout,
            sealed,
            callback_secret,
            serde_json::Value::from(wait.approvers.clone()).to_string()
        ],
    )?;
    let what = match wait.kind {
        WaitKind::Approval => "an approval".to_string(),
        WaitKind::Event => format!("the event `{}`", wait.event.as_deref().unwrap_or_default()),
    };
    let note = format!(
        "[tasuki-hub] the session waits at step `{}` for {what}; its robot is free meanwhile",
        wait.step_id
    );
    let base = super::logs::append_note(tx, session_id, &note, now_ms)?;
    tx.execute(
        "UPDATE session_queues
         SET status = 'waiting', log_seq_base = ?2, robot_id = NULL,
             lease_id = NULL, lease_poll_id = NULL, lease_poll_seq = NULL,
             lease_expires_at = NULL, lease_confirmed = 0,
             steps = ?3, steps_revision = 0
         WHERE id = ?1",
        params![session_id, base as i64, steps],
    )?;
    if cancel_asked.is_none() {
        return Ok(Suspended::Waiting);
    }
    let cancelled = Answer {
        outcome: WaitOutcome::Cancelled {
            at: now_timestamp(now_ms),
        },
        by: "cancel".into(),
        comment: None,
    };
    // Waiting since the statement above: always taken.
    match answer(tx, session_id, Expect::Any, &cancelled, now_ms)? {
        Ok(()) => Ok(Suspended::Queued),
        Err(refused) => Err(DbError::Corrupt(format!(
            "session queue {session_id}: its wait, just made, refused a cancel: {refused:?}"
        ))),
    }
}

/// What answered a wait, and who.
#[derive(Debug, Clone)]
pub struct Answer {
    pub outcome: WaitOutcome,
    /// An access key id, or `timeout`.
    pub by: String,
    pub comment: Option<String>,
}

/// Why an answer was not taken.
#[derive(Debug, PartialEq)]
pub enum Refused {
    NoSuchSession,
    /// The session is not waiting (its status), or waits for something
    /// else (what it waits for).
    NotWaiting(String),
    /// The approval lists its approvers, and the key deciding is not one
    /// (why).
    NotAnApprover(String),
}

/// What a wait must be for an answer to be taken.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// Any wait (a cancel).
    Any,
    /// An approval, decided by this access key: one of its approvers when
    /// its step lists them.
    Approval { by: &'a str },
    /// The event of this name.
    Event(&'a str),
}

/// Answers a waiting session's wait and queues it again, to be resumed;
/// the caller offers it. Refused, with nothing changed, when the session
/// is not waiting or waits for something else than `expect`, or when the
/// approval lists its approvers and `expect`'s key is not one.
pub fn answer(
    conn: &mut Conn<'_>,
    session_id: i64,
    expect: Expect<'_>,
    answer: &Answer,
    now_ms: i64,
) -> Result<Result<(), Refused>, DbError> {
    let fits = |row: &WaitRow| match (expect, row.kind, row.event.as_deref()) {
        (Expect::Any, _, _) => Ok(()),
        (Expect::Approval { by }, WaitKind::Approval, _) if may_decide(&row.approvers, by) => {
            Ok(())
        }
        (Expect::Approval { by }, WaitKind::Approval, _) => Err(Refused::NotAnApprover(format!(
            "the access key `{by}` is not an approver of step `{}` of session {session_id}; \
             its approvers are {}",
            row.step_id,
            row.approvers
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        (Expect::Event(name), WaitKind::Event, Some(e)) if e == name => Ok(()),
        (Expect::Event(name), WaitKind::Event, e) => Err(Refused::NotWaiting(format!(
            "session {session_id} waits for the event `{}`, not `{name}`",
            e.unwrap_or_default()
        ))),
        (Expect::Event(_), WaitKind::Approval, _) => Err(Refused::NotWaiting(format!(
            "session {session_id} waits for an approval, not for an event"
        ))),
        (Expect::Approval { .. }, WaitKind::Event, _) => Err(Refused::NotWaiting(format!(
            "session {session_id} waits for an event, not for an approval"
        ))),
    };
    let taken = record_answer(conn, session_id, fits, |_| Some(answer.clone()), now_ms)?;
    Ok(taken.map(|_| ()))
}

/// Answers a wait whose deadline has passed, as its `on_timeout` says,
/// decided on the locked row: a wait answered meanwhile (or a newer wait
/// of the same session, not yet due) is left alone. Whether it answered.
pub fn answer_overdue(
    conn: &mut Conn<'_>,
    session_id: i64,
    now_ms: i64,
) -> Result<Option<WaitOutcome>, DbError> {
    let at = now_timestamp(now_ms);
    let taken = record_answer(
        conn,
        session_id,
        |_| Ok(()),
        |row: &WaitRow| {
            if row.deadline > now_ms {
                return None;
            }
            let outcome = match (row.kind, row.on_timeout.as_str()) {
                (WaitKind::Event, _) => WaitOutcome::TimedOut { at },
                (WaitKind::Approval, "approve") => WaitOutcome::Approved {
                    by: "timeout".into(),
                    at,
                    comment: None,
                },
                (WaitKind::Approval, _) => WaitOutcome::Rejected {
                    by: "timeout".into(),
                    at,
                    comment: None,
                },
            };
            Some(Answer {
                outcome,
                by: "timeout".into(),
                comment: None,
            })
        },
        now_ms,
    )?;
    Ok(taken.ok().map(|a| a.outcome))
}

/// The unanswered wait of a session, as `record_answer` reads it locked.
struct WaitRow {
    step_id: String,
    kind: WaitKind,
    event: Option<String>,
    deadline: i64,
    on_timeout: String,
    approvers: Vec<String>,
}

/// The one way a wait is answered: on the locked session row, the wait
/// checked by `fits`, the answer chosen by `choose` (none: leave it).
fn record_answer(
    conn: &mut Conn<'_>,
    session_id: i64,
    fits: impl Fn(&WaitRow) -> Result<(), Refused>,
    choose: impl FnOnce(&WaitRow) -> Option<Answer>,
    now_ms: i64,
) -> Result<Result<Answer, Refused>, DbError> {
    conn.transaction(|tx| {
        super::sessions::lock_row(tx, session_id)?;
        let status: Option<String> = tx.opt_row(
            "SELECT status FROM session_queues WHERE id = ?1",
            params![session_id],
            |r| r.get(0),
        )?;
        let Some(status) = status else {
            return Ok(Err(Refused::NoSuchSession));
        };
        type Columns = (String, String, Option<String>, i64, String, String);
        let row: Option<Columns> = tx.opt_row(
            "SELECT step_id, kind, event, deadline, on_timeout, approvers FROM session_waits
             WHERE session_id = ?1 AND outcome IS NULL",
            params![session_id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )?;
        let (step_id, kind, event, deadline, on_timeout, approvers) = match (status.as_str(), row) {
            ("waiting", Some(row)) => row,
            _ => {
                return Ok(Err(Refused::NotWaiting(format!(
                    "session {session_id} is {status}, not waiting"
                ))));
            }
        };
        let row = WaitRow {
            step_id,
            kind: parse_kind(session_id, &kind)?,
            event,
            deadline,
            on_timeout,
            approvers: parse_json(
                &format!("session queue {session_id}'s approvers"),
                &approvers,
            )?,
        };
        if let Err(refused) = fits(&row) {
            return Ok(Err(refused));
        }
        let Some(answer) = choose(&row) else {
            return Ok(Err(Refused::NotWaiting(format!(
                "session {session_id}'s wait is not due"
            ))));
        };
        let outcome =
            serde_json::to_string(&answer.outcome).map_err(|e| DbError::Corrupt(e.to_string()))?;
        tx.execute(
            "UPDATE session_waits SET outcome = ?2, decided_by = ?3, decided_at = ?4, comment = ?5
             WHERE session_id = ?1",
            params![session_id, outcome, answer.by, now_ms, answer.comment],
        )?;
        let said = match &answer.outcome {
            WaitOutcome::Approved { .. } => format!("approved by {}", answer.by),
            WaitOutcome::Rejected { .. } => format!("rejected by {}", answer.by),
            WaitOutcome::Event { .. } => format!(
                "the event `{}` came",
                row.event.as_deref().unwrap_or_default()
            ),
            WaitOutcome::TimedOut { .. } => "the wait timed out".into(),
            WaitOutcome::Cancelled { .. } => "the session was cancelled while it waited".into(),
        };
        let note = format!("[tasuki-hub] {said}; the session is queued to go on");
        let base = super::logs::append_note(tx, session_id, &note, now_ms)?;
        tx.execute(
            "UPDATE session_queues SET status = 'queued', log_seq_base = ?2 WHERE id = ?1",
            params![session_id, base as i64],
        )?;
        Ok(Ok(answer))
    })
}

fn parse_kind(session_id: i64, kind: &str) -> Result<WaitKind, DbError> {
    match kind {
        "approval" => Ok(WaitKind::Approval),
        "event" => Ok(WaitKind::Event),
        other => Err(DbError::Corrupt(format!(
            "session queue {session_id}: wait kind `{other}`"
        ))),
    }
}

/// Sessions whose wait's deadline has passed unanswered, oldest first;
/// `answer_overdue` answers each.
pub fn overdue(conn: &mut Conn<'_>, now_ms: i64) -> Result<Vec<i64>, DbError> {
    conn.rows(
        "SELECT w.session_id
         FROM session_waits w JOIN session_queues s ON s.id = w.session_id
         WHERE w.outcome IS NULL AND w.deadline <= ?1 AND s.status = 'waiting'
         ORDER BY w.deadline LIMIT 1000",
        params![now_ms],
        |r| r.get(0),
    )
}

/// The resumption a lease of this session carries: its checkpoint opened,
/// and the outcome, once its wait is answered.
pub fn resumption(
    conn: &mut Conn<'_>,
    session_id: i64,
    master: &MasterKey,
) -> Result<Option<Resumption>, DbError> {
    let row: Option<(Option<Vec<u8>>, String)> = conn.opt_row(
        "SELECT checkpoint, outcome FROM session_waits
         WHERE session_id = ?1 AND outcome IS NOT NULL",
        params![session_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    // No checkpoint: the session has ended, and is never leased again.
    let Some((Some(sealed), outcome)) = row else {
        return Ok(None);
    };
    let what = format!("session queue {session_id}'s checkpoint");
    let plain = master
        .open_blob(&aad(session_id), &sealed)
        .map_err(|e| DbError::Secrets(format!("{what}: {e}")))?;
    let checkpoint =
        serde_json::from_slice(&plain).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))?;
    let outcome = parse_json(&format!("{what}'s outcome"), &outcome)?;
    Ok(Some(Resumption {
        checkpoint,
        outcome,
    }))
}

/// The session's latest wait, as the API shows it.
pub fn view(conn: &mut Conn<'_>, session_id: i64) -> Result<Option<SessionWait>, DbError> {
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        i64,
        i64,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<String>,
        i64,
        String,
    );
    let row: Option<Row> = conn.opt_row(
        "SELECT step_id, kind, message, event, since, deadline, outcome, decided_by, decided_at,
                comment, CASE WHEN callback_secret IS NULL THEN 0 ELSE 1 END, approvers
         FROM session_waits WHERE session_id = ?1",
        params![session_id],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
            ))
        },
    )?;
    let Some((
        step_id,
        kind,
        message,
        event,
        since,
        deadline,
        outcome,
        by,
        at,
        comment,
        signed,
        approvers,
    )) = row
    else {
        return Ok(None);
    };
    let callback = match (&event, signed, &outcome) {
        (Some(name), 1, None) => Some(format!("/v1/callbacks/{session_id}/{name}")),
        _ => None,
    };
    let outcome = outcome
        .map(|o| parse_json::<WaitOutcome>(&format!("session queue {session_id}'s wait"), &o))
        .transpose()?;
    Ok(Some(SessionWait {
        step_id,
        kind: parse_kind(session_id, &kind)?,
        message,
        event,
        since: to_timestamp(since)?,
        deadline: to_timestamp(deadline)?,
        outcome: outcome.map(|o| o.name().to_string()),
        decided_by: by,
        decided_at: at.map(to_timestamp).transpose()?,
        comment,
        callback,
        approvers: parse_json(
            &format!("session queue {session_id}'s approvers"),
            &approvers,
        )?,
    }))
}

/// `approved` or `rejected`, from a wait's outcome, for `approval_status`.
pub fn approval_status(wait: &SessionWait) -> Option<String> {
    match (wait.kind, wait.outcome.as_deref()) {
        (WaitKind::Approval, Some(o @ ("approved" | "rejected"))) => Some(o.to_string()),
        _ => None,
    }
}

/// Now, for answers.
pub fn now_timestamp(now_ms: i64) -> Timestamp {
    to_timestamp(now_ms).unwrap_or_else(|_| Timestamp::now())
}
