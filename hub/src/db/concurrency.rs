//! Concurrency policies: at most `limit` sessions of a workflow run at
//! once, per value of one of its params when the policy has a `key`.
//!
//! Two places keep the limit, and each is enough for its half:
//!
//! - **Starting** ([`UNDER_LIMIT`], in every statement that picks or grants a
//!   session, `leases.rs`): a session is leased only while fewer than
//!   `limit` of its workflow's sessions with its key are `running`. So the
//!   limit holds whatever queued the sessions, whatever the policy says.
//! - **Queueing** ([`admit`], when a session is stored): what a session
//!   that arrives at the limit does: `wait` (queued, started by the rule
//!   above when one ends), `refuse`, or `cancel_oldest` (queued, and the
//!   oldest queued or running sessions of its key are cancelled, which the
//!   caller does once the new one is stored: `api::sessions::announce`).
//!
//! On PostgreSQL, where several hubs grant and queue at once, both take the
//! workflow's advisory lock ([`lock`]) before they count, so two hubs never
//! both see room for one. Locks are taken in one order, a session row
//! (picked `FOR UPDATE`) before the workflow's, never the other way round:
//! `admit` locks no session row, and cancellations happen after its
//! transaction.

use serde_json::{Map, Value};
use tasuki_protocol::{Concurrency, OnLimit, SessionOrigin};

use super::sql::{Conn, Dialect, params};
use super::workflows::StoredParam;
use super::{DbError, parse_json};

/// The SQL that says a queued session `s` of workflow `w` may start now:
/// fewer than the limit of its workflow's sessions with its key run. Used
/// (through `concat!`) by every statement that picks or grants a session,
/// which must agree.
#[macro_export]
macro_rules! under_limit {
    ($s:literal) => {
        concat!(
            "(w.concurrency_limit IS NULL
              OR (SELECT COUNT(*) FROM session_queues running
                  WHERE running.workflow_id = w.id AND running.status = 'running'
                    AND running.concurrency_key = ",
            $s,
            ".concurrency_key) < w.concurrency_limit)"
        )
    };
}

/// On PostgreSQL, takes the lock that serialises counting a workflow's
/// sessions against its limit, until the transaction ends; nothing on
/// SQLite, whose one connection serialises everything. A caller that
/// holds session rows took them first (the lock order).
pub fn lock(tx: &mut Conn<'_>, workflow_id: i64) -> Result<(), DbError> {
    if tx.dialect() == Dialect::Postgres {
        // 29283: this lock's class (registrations take 29282, robots.rs);
        // the other number is the workflow's id.
        tx.execute(
            "SELECT pg_advisory_xact_lock(29283, CAST(CAST(?1 AS BIGINT) % 2147483647 AS INTEGER))",
            params![workflow_id],
        )?;
    }
    Ok(())
}

/// A workflow's policy as stored; `None` when it has none.
pub fn policy_of(conn: &mut Conn<'_>, workflow_id: i64) -> Result<Option<Concurrency>, DbError> {
    let row: Option<Columns> = conn.opt_row(
        "SELECT concurrency_limit, concurrency_on_limit, concurrency_key_param
         FROM workflows WHERE id = ?1",
        params![workflow_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    match row {
        Some(columns) => from_columns(workflow_id, columns),
        None => Ok(None),
    }
}

/// A workflow's `concurrency_limit`, `concurrency_on_limit` and
/// `concurrency_key_param`, in that order.
pub type Columns = (Option<i64>, Option<String>, Option<String>);

/// The policy a workflow row's [`Columns`] hold.
pub fn from_columns(
    workflow_id: i64,
    (limit, on_limit, key): Columns,
) -> Result<Option<Concurrency>, DbError> {
    let Some(limit) = limit else {
        return Ok(None);
    };
    let on_limit = match on_limit.as_deref() {
        None | Some("wait") => OnLimit::Wait,
        Some("refuse") => OnLimit::Refuse,
        Some("cancel_oldest") => OnLimit::CancelOldest,
        Some(other) => {
            return Err(DbError::Corrupt(format!(
                "workflow {workflow_id}: concurrency_on_limit `{other}`"
            )));
        }
    };
    Ok(Some(Concurrency {
        limit: limit.clamp(0, i64::from(u32::MAX)) as u32,
        on_limit,
        key,
    }))
}

/// The text a policy's `on_limit` is stored as.
pub fn on_limit_text(on_limit: OnLimit) -> &'static str {
    match on_limit {
        OnLimit::Wait => "wait",
        OnLimit::Refuse => "refuse",
        OnLimit::CancelOldest => "cancel_oldest",
    }
}

/// A session that may be stored, with its key and the sessions its policy
/// cancels to make room.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The session's `concurrency_key`.
    pub key: String,
    /// Queued or running sessions to cancel (`cancel_oldest`), oldest first.
    pub cancel: Vec<i64>,
}

/// A workflow (or one value of its key) at its limit: what a session
/// refused there (`refuse`), or waiting there, is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtLimit {
    pub workflow_id: i64,
    pub limit: u32,
    /// The key param's name and the session's value of it.
    pub key: Option<(String, String)>,
}

impl std::fmt::Display for AtLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "workflow {} allows {} session(s) at once",
            self.workflow_id, self.limit
        )?;
        if let Some((param, value)) = &self.key {
            write!(f, " per value of its param `{param}`, and `{value}` has")?;
        } else {
            write!(f, ", and has")?;
        }
        write!(
            f,
            " {} queued or running; its policy is to refuse the next (on_limit: refuse)",
            self.limit
        )
    }
}

/// Decides whether a new session of `workflow_id` with `params` may be
/// stored, inside the transaction that stores it. Sessions the hub queues
/// to handle another's error are never refused nor cancel others: they
/// wait.
pub fn admit(
    tx: &mut Conn<'_>,
    workflow_id: i64,
    params: &Map<String, Value>,
    origin: Option<&SessionOrigin>,
) -> Result<Result<Admitted, AtLimit>, DbError> {
    let Some(policy) = policy_of(tx, workflow_id)? else {
        return Ok(Ok(Admitted::default()));
    };
    let key = match &policy.key {
        Some(param) => key_value(tx, workflow_id, param, params)?,
        None => String::new(),
    };
    let on_limit = match origin {
        Some(SessionOrigin::ErrorHandler { .. }) => OnLimit::Wait,
        _ => policy.on_limit,
    };
    if on_limit == OnLimit::Wait {
        return Ok(Ok(Admitted {
            key,
            cancel: vec![],
        }));
    }
    lock(tx, workflow_id)?;
    // Sessions on their way out (a cancel asked) make no room yet, but
    // are not counted against a newcomer either.
    let active: Vec<i64> = tx.rows(
        "SELECT id FROM session_queues
         WHERE workflow_id = ?1 AND concurrency_key = ?2
           AND status IN ('queued', 'running') AND cancel_requested_at IS NULL
         ORDER BY id",
        params![workflow_id, key],
        |r| r.get(0),
    )?;
    let limit = policy.limit as usize;
    if active.len() < limit {
        return Ok(Ok(Admitted {
            key,
            cancel: vec![],
        }));
    }
    if on_limit == OnLimit::Refuse {
        return Ok(Err(AtLimit {
            workflow_id,
            limit: policy.limit,
            key: policy.key.map(|param| (param, key)),
        }));
    }
    let surplus = active.len() + 1 - limit;
    Ok(Ok(Admitted {
        key,
        cancel: active.into_iter().take(surplus).collect(),
    }))
}

/// The session's value of the key param, as text: a string as it is,
/// anything else as JSON; the param's default when the session gives none.
fn key_value(
    tx: &mut Conn<'_>,
    workflow_id: i64,
    param: &str,
    params: &Map<String, Value>,
) -> Result<String, DbError> {
    let value = match params.get(param) {
        Some(v) => v.clone(),
        None => {
            let specs: String = tx.row(
                "SELECT param_specs FROM workflows WHERE id = ?1",
                params![workflow_id],
                |r| r.get(0),
            )?;
            let specs: Vec<StoredParam> =
                parse_json(&format!("workflow {workflow_id}: param_specs"), &specs)?;
            specs
                .into_iter()
                .find(|s| s.name == param)
                .and_then(|s| s.default)
                .unwrap_or(Value::Null)
        }
    };
    Ok(match value {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// The oldest queued session that `ended`'s end may have made room for:
/// of the same workflow and key, when that workflow has a limit.
pub fn next_waiting(conn: &mut Conn<'_>, ended: i64) -> Result<Option<i64>, DbError> {
    conn.opt_row(
        "SELECT s.id FROM session_queues e
         JOIN workflows w ON w.id = e.workflow_id AND w.concurrency_limit IS NOT NULL
         JOIN session_queues s ON s.workflow_id = e.workflow_id
                               AND s.concurrency_key = e.concurrency_key
         WHERE e.id = ?1 AND s.status = 'queued' AND s.lease_id IS NULL
         ORDER BY s.id LIMIT 1",
        params![ended],
        |r| r.get(0),
    )
}

/// The limit a queued session waits for, rather than for a robot (its
/// workflow's, with the key param and the session's value of it); `None`
/// when it does not wait for one.
pub fn waiting_for_limit(conn: &mut Conn<'_>, session_id: i64) -> Result<Option<AtLimit>, DbError> {
    let row: Option<(i64, i64, Option<String>, String)> = conn.opt_row(
        concat!(
            "SELECT w.id, w.concurrency_limit, w.concurrency_key_param, s.concurrency_key
             FROM session_queues s JOIN workflows w ON w.id = s.workflow_id
             WHERE s.id = ?1 AND s.status = 'queued' AND s.lease_id IS NULL
               AND NOT ",
            under_limit!("s")
        ),
        params![session_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    Ok(row.map(|(workflow_id, limit, param, key)| AtLimit {
        workflow_id,
        limit: limit.clamp(0, i64::from(u32::MAX)) as u32,
        key: param.map(|p| (p, key)),
    }))
}
