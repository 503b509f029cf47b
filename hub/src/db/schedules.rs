//! Schedules: when each runs next, and what its last due run became. The
//! scheduler (`crate::schedule`) takes due rows one transaction at a time;
//! a run's session and the schedule's next time are written in that same
//! transaction, so a due run starts once, whatever crashes or how many
//! hubs look.

use serde_json::{Map, Value};
use tasuki_protocol::{Missed, Overlap, ScheduleOutcome};

use super::secret_params::{self, MASK, Owner};
use super::sql::{Conn, Dialect, Row, params};
use super::{DbError, parse_json};
use crate::secrets::MasterKey;

pub struct NewSchedule {
    pub workflow_id: i64,
    pub cron: String,
    pub timezone: String,
    /// With secret values, which are sealed.
    pub params: Map<String, Value>,
    pub secret_params: Vec<String>,
    pub overlap: Overlap,
    pub missed: Missed,
    /// `None`: paused.
    pub next_due_at: Option<i64>,
}

/// A schedule as stored; `params` holds `***` for secret values.
#[derive(Debug, Clone)]
pub struct StoredSchedule {
    pub id: i64,
    pub workflow_id: i64,
    pub cron: String,
    pub timezone: String,
    pub params: Map<String, Value>,
    pub secret_params: Vec<String>,
    pub overlap: Overlap,
    pub missed: Missed,
    pub enabled: bool,
    pub next_due_at: Option<i64>,
    pub last_due_at: Option<i64>,
    pub last_outcome: Option<ScheduleOutcome>,
    pub last_session_id: Option<i64>,
    pub created_at: i64,
}

const COLUMNS: &str = "id, workflow_id, cron, timezone, params, secret_params, overlap, missed,
    enabled, next_due_at, last_due_at, last_outcome, last_session_id, created_at";

pub fn insert(
    conn: &mut Conn<'_>,
    s: &NewSchedule,
    master: &MasterKey,
    now_ms: i64,
) -> Result<StoredSchedule, DbError> {
    let mut params = s.params.clone();
    let secrets = secret_params::split(&mut params, &s.secret_params);
    let params_json = to_json(&params)?;
    let names_json = to_json(&s.secret_params)?;
    conn.transaction(|tx| {
        let id: i64 = tx.row(
            "INSERT INTO schedules (workflow_id, cron, timezone, params, secret_params, overlap,
                                    missed, enabled, next_due_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             RETURNING id",
            params![
                s.workflow_id,
                s.cron,
                s.timezone,
                params_json,
                names_json,
                enum_text(&s.overlap)?,
                enum_text(&s.missed)?,
                i64::from(s.next_due_at.is_some()),
                s.next_due_at,
                now_ms
            ],
            |r| r.get(0),
        )?;
        if let Some(secrets) = secrets {
            let sealed = secret_params::seal(master, Owner::Schedule(id), &secrets)?;
            tx.execute(
                "UPDATE schedules SET secrets_sealed = ?2 WHERE id = ?1",
                params![id, sealed],
            )?;
        }
        get(tx, id)?.ok_or_else(|| DbError::Corrupt(format!("schedule {id} vanished")))
    })
}

pub fn get(conn: &mut Conn<'_>, id: i64) -> Result<Option<StoredSchedule>, DbError> {
    conn.opt_row(
        &format!("SELECT {COLUMNS} FROM schedules WHERE id = ?1"),
        params![id],
        read_row,
    )
}

pub fn of_workflow(conn: &mut Conn<'_>, workflow_id: i64) -> Result<Vec<StoredSchedule>, DbError> {
    conn.rows(
        &format!("SELECT {COLUMNS} FROM schedules WHERE workflow_id = ?1 ORDER BY id"),
        params![workflow_id],
        read_row,
    )
}

/// Pauses (`next_due_at` `None`) or resumes a schedule; `false` if there
/// is none.
pub fn set_next(conn: &mut Conn<'_>, id: i64, next_due_at: Option<i64>) -> Result<bool, DbError> {
    Ok(conn.execute(
        "UPDATE schedules SET enabled = ?2, next_due_at = ?3, waiting = 0 WHERE id = ?1",
        params![id, i64::from(next_due_at.is_some()), next_due_at],
    )? > 0)
}

/// Deletes a schedule (its sealed values with it); its sessions stay.
pub fn delete(conn: &mut Conn<'_>, id: i64) -> Result<bool, DbError> {
    Ok(conn.execute("DELETE FROM schedules WHERE id = ?1", params![id])? > 0)
}

/// Schedules with a run due by `?1`, or a run waiting for a previous
/// session that has ended.
const DUE: &str = "FROM schedules
     WHERE enabled = 1
       AND (next_due_at <= ?1
            OR (waiting = 1
                AND NOT EXISTS (SELECT 1 FROM session_queues q
                                WHERE q.schedule_id = schedules.id
                                  AND q.status IN ('queued', 'running', 'waiting'))))";

/// Whether [`take_due`] would find a schedule: a read, in no transaction.
pub fn any_due(conn: &mut Conn<'_>, now_ms: i64) -> Result<bool, DbError> {
    conn.exists(DUE, params![now_ms])
}

/// Enabled schedules with a run due by `now_ms` or waiting for the
/// previous session, locked until the transaction ends (on PostgreSQL,
/// skipping rows another hub holds); at most `limit`.
pub fn take_due(
    conn: &mut Conn<'_>,
    now_ms: i64,
    limit: i64,
) -> Result<Vec<StoredSchedule>, DbError> {
    let lock = match conn.dialect() {
        Dialect::Sqlite => "",
        Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
    };
    conn.rows(
        &format!("SELECT {COLUMNS} {DUE} ORDER BY next_due_at LIMIT ?2 {lock}"),
        params![now_ms, limit],
        read_row,
    )
}

/// The earliest time an enabled schedule is due, if any.
pub fn earliest_due(conn: &mut Conn<'_>) -> Result<Option<i64>, DbError> {
    conn.row(
        "SELECT MIN(next_due_at) FROM schedules WHERE enabled = 1",
        params![],
        |r| r.get(0),
    )
}

/// What a due run became, and when the schedule runs next.
pub struct Fired {
    pub next_due_at: Option<i64>,
    pub waiting: bool,
    /// The due run's time (`None` when only a waiting run was let go).
    pub due_at: Option<i64>,
    pub outcome: ScheduleOutcome,
    pub session_id: Option<i64>,
}

pub fn record(conn: &mut Conn<'_>, id: i64, f: &Fired) -> Result<(), DbError> {
    conn.execute(
        "UPDATE schedules
         SET next_due_at = ?2, waiting = ?3, last_due_at = COALESCE(?4, last_due_at),
             last_outcome = ?5, last_session_id = COALESCE(?6, last_session_id)
         WHERE id = ?1",
        params![
            id,
            f.next_due_at,
            i64::from(f.waiting),
            f.due_at,
            enum_text(&f.outcome)?,
            f.session_id
        ],
    )?;
    Ok(())
}

/// The schedule's params with their secret values, for a new session.
pub fn params_with_secrets(
    conn: &mut Conn<'_>,
    s: &StoredSchedule,
    master: &MasterKey,
) -> Result<Map<String, Value>, DbError> {
    let mut params = s.params.clone();
    let sealed: Option<Vec<u8>> = conn.row(
        "SELECT secrets_sealed FROM schedules WHERE id = ?1",
        params![s.id],
        |r| r.get(0),
    )?;
    if let Some(sealed) = sealed {
        secret_params::open_into(master, Owner::Schedule(s.id), &sealed, &mut params)?;
    }
    Ok(params)
}

fn read_row(r: &Row<'_>) -> Result<StoredSchedule, DbError> {
    let id: i64 = r.get(0)?;
    let what = |field: &str| format!("schedule {id}: {field}");
    let mut params: Map<String, Value> = parse_json(&what("params"), &r.get::<String>(4)?)?;
    let secret_params: Vec<String> = parse_json(&what("secret_params"), &r.get::<String>(5)?)?;
    for name in &secret_params {
        if let Some(v) = params.get_mut(name) {
            *v = Value::String(MASK.into());
        }
    }
    Ok(StoredSchedule {
        id,
        workflow_id: r.get(1)?,
        cron: r.get(2)?,
        timezone: r.get(3)?,
        params,
        secret_params,
        overlap: from_text(&what("overlap"), &r.get::<String>(6)?)?,
        missed: from_text(&what("missed"), &r.get::<String>(7)?)?,
        enabled: r.get::<i64>(8)? != 0,
        next_due_at: r.get(9)?,
        last_due_at: r.get(10)?,
        last_outcome: r
            .get::<Option<String>>(11)?
            .map(|t| from_text(&what("last_outcome"), &t))
            .transpose()?,
        last_session_id: r.get(12)?,
        created_at: r.get(13)?,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, DbError> {
    serde_json::to_string(value).map_err(|e| DbError::Corrupt(e.to_string()))
}

/// A unit enum variant's name as serde writes it (`cancel_previous`).
fn enum_text<T: serde::Serialize>(value: &T) -> Result<String, DbError> {
    match serde_json::to_value(value) {
        Ok(Value::String(text)) => Ok(text),
        _ => Err(DbError::Corrupt("an enum that is not a name".into())),
    }
}

fn from_text<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, DbError> {
    serde_json::from_value(Value::String(text.to_string()))
        .map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}
