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
use tasuki_protocol::session::{SessionWait, WaitKind};

use super::sql::{Conn, params};
use super::{DbError, parse_json, to_timestamp};
use crate::secrets::MasterKey;

/// The associated data a session's sealed checkpoint opens with.
fn aad(session_id: i64) -> String {
    format!("checkpoint:{session_id}")
}

fn kind_str(kind: WaitKind) -> &'static str {
    match kind {
        WaitKind::Approval => "approval",
        WaitKind::Event => "event",
    }
}

/// Within the robot's finish transaction, with its lease checked: the
/// session waits, on no robot. Its log gets the hub's note, after which a
/// resumed run's lines follow (`log_seq_base`). False if the session was
/// not running under `lease_id`.
pub fn suspend_in(
    tx: &mut Conn<'_>,
    session_id: i64,
    lease_id: &str,
    suspension: &Suspension,
    steps: &str,
    master: &MasterKey,
    now_ms: i64,
) -> Result<bool, DbError> {
    let running: Option<i64> = tx.opt_row(
        "SELECT id FROM session_queues WHERE id = ?1 AND lease_id = ?2 AND status = 'running'",
        params![session_id, lease_id],
        |r| r.get(0),
    )?;
    if running.is_none() {
        return Ok(false);
    }
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
    tx.execute(
        "INSERT INTO session_waits (session_id, step_id, kind, message, event, since, deadline,
                                    on_timeout, checkpoint)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            session_id,
            wait.step_id,
            kind_str(wait.kind),
            wait.message,
            wait.event,
            now_ms,
            deadline,
            on_timeout,
            sealed
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
    Ok(true)
}

/// What answered a wait, and who.
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
}

/// Answers a waiting session's wait and queues it again, to be resumed;
/// the caller offers it. `fits` says whether this answer is for what the
/// session waits for (an approval, or the event of this name).
pub fn answer(
    conn: &mut Conn<'_>,
    session_id: i64,
    fits: impl Fn(WaitKind, Option<&str>) -> Result<(), String>,
    answer: &Answer,
    now_ms: i64,
) -> Result<Result<(), Refused>, DbError> {
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
        let row: Option<(String, Option<String>)> = tx.opt_row(
            "SELECT kind, event FROM session_waits WHERE session_id = ?1 AND outcome IS NULL",
            params![session_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (kind, event) = match (status.as_str(), row) {
            ("waiting", Some(row)) => row,
            _ => {
                return Ok(Err(Refused::NotWaiting(format!(
                    "session {session_id} is {status}, not waiting"
                ))));
            }
        };
        let kind = parse_kind(session_id, &kind)?;
        if let Err(why) = fits(kind, event.as_deref()) {
            return Ok(Err(Refused::NotWaiting(why)));
        }
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
            WaitOutcome::Event { .. } => format!("the event `{}` came", event.unwrap_or_default()),
            WaitOutcome::TimedOut { .. } => "the wait timed out".into(),
            WaitOutcome::Cancelled { .. } => format!("cancelled by {}", answer.by),
        };
        let note = format!("[tasuki-hub] {said}; the session is queued to go on");
        let base = super::logs::append_note(tx, session_id, &note, now_ms)?;
        tx.execute(
            "UPDATE session_queues SET status = 'queued', log_seq_base = ?2 WHERE id = ?1",
            params![session_id, base as i64],
        )?;
        Ok(Ok(()))
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

/// Waits whose deadline has passed unanswered, with what their timeout
/// decides: `(session, outcome)`.
pub fn overdue(conn: &mut Conn<'_>, now_ms: i64) -> Result<Vec<(i64, WaitOutcome)>, DbError> {
    let rows: Vec<(i64, String, String)> = conn.rows(
        "SELECT w.session_id, w.kind, w.on_timeout
         FROM session_waits w JOIN session_queues s ON s.id = w.session_id
         WHERE w.outcome IS NULL AND w.deadline <= ?1 AND s.status = 'waiting'
         ORDER BY w.deadline LIMIT 1000",
        params![now_ms],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let at = to_timestamp(now_ms)?;
    let (by, comment) = ("timeout".to_string(), None);
    rows.into_iter()
        .map(|(id, kind, on_timeout)| {
            let outcome = match (parse_kind(id, &kind)?, on_timeout.as_str()) {
                (WaitKind::Event, _) => WaitOutcome::TimedOut { at },
                (WaitKind::Approval, "approve") => WaitOutcome::Approved {
                    by: by.clone(),
                    at,
                    comment: comment.clone(),
                },
                (WaitKind::Approval, _) => WaitOutcome::Rejected {
                    by: by.clone(),
                    at,
                    comment: comment.clone(),
                },
            };
            Ok((id, outcome))
        })
        .collect()
}

/// The resumption a lease of this session carries: its checkpoint opened,
/// and the outcome, once its wait is answered.
pub fn resumption(
    conn: &mut Conn<'_>,
    session_id: i64,
    master: &MasterKey,
) -> Result<Option<Resumption>, DbError> {
    let row: Option<(Vec<u8>, String)> = conn.opt_row(
        "SELECT checkpoint, outcome FROM session_waits
         WHERE session_id = ?1 AND outcome IS NOT NULL",
        params![session_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let Some((sealed, outcome)) = row else {
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
    );
    let row: Option<Row> = conn.opt_row(
        "SELECT step_id, kind, message, event, since, deadline, outcome, decided_by, decided_at,
                comment
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
            ))
        },
    )?;
    let Some((step_id, kind, message, event, since, deadline, outcome, by, at, comment)) = row
    else {
        return Ok(None);
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
