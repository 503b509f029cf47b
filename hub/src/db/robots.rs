//! Registered robots and their heartbeats.

use std::collections::HashSet;

use super::sql::{Conn, Dialect, Row, params};
use tasuki_protocol::{ActionOffer, HostFacts, HostMetrics, RegisterRobot};

use super::{DbError, parse_json, to_timestamp};
use crate::routing::Capabilities;

/// What the robot protocol needs of a robot on every call.
#[derive(Debug, Clone)]
pub struct RobotRow {
    pub id: i64,
    pub name: String,
    /// The machine that registered it last; empty after an operator moved
    /// it to another key, until that key's agent registers it.
    pub instance_id: String,
    /// The access key that owns it: the only one that may drive it.
    pub key_id: String,
    /// The key a hub operator moved it from, so that key's agent is told
    /// what happened.
    pub moved_from_key_id: Option<String>,
    /// The registering machine's host name, for messages.
    pub hostname: String,
    pub max_concurrency: u32,
}

/// Everything `GET /v1/robots` shows, before the live state is added.
pub struct RobotDetails {
    pub id: i64,
    pub name: String,
    pub key_id: String,
    pub labels: Vec<String>,
    pub version: String,
    pub max_concurrency: u32,
    pub host: HostFacts,
    pub metrics: Option<HostMetrics>,
    pub draining: bool,
    pub last_seen_at: Option<jiff::Timestamp>,
    /// The catalog of its last registration; `None` when it sent none.
    pub actions: Option<Vec<ActionOffer>>,
}

pub enum Registered {
    Ok(RobotRow),
    /// Another instance of the same key holds the name.
    Taken {
        holder_host: String,
        last_seen_at: Option<i64>,
    },
    /// Another access key owns the name; only an operator can move it.
    OtherKey {
        /// The caller's key is the one it was moved away from.
        moved_from_caller: bool,
    },
    /// The key already has `limit` robots.
    LimitReached {
        limit: u64,
    },
    /// An operator deleted this machine's robot of that name; only a
    /// registration with `replace` brings it back.
    Deleted,
}

pub fn find(conn: &mut Conn<'_>, name: &str) -> Result<Option<RobotRow>, DbError> {
    conn.opt_row(
        "SELECT id, name, instance_id, key_id, moved_from_key_id, host, max_concurrency
         FROM robots WHERE name = ?1",
        params![name],
        |r| {
            let name: String = r.get(1)?;
            let host: HostFacts = parse_json(&format!("robot {name}: host"), &r.get::<String>(5)?)?;
            Ok(RobotRow {
                id: r.get(0)?,
                instance_id: r.get(2)?,
                key_id: r.get(3)?,
                moved_from_key_id: r.get(4)?,
                hostname: host.hostname,
                max_concurrency: r.get::<i64>(6)?.clamp(0, u32::MAX as i64) as u32,
                name,
            })
        },
    )
}

/// On PostgreSQL, locks a robot's row until the transaction ends, so that
/// the robot's polls and grants take turns whichever connection or hub
/// serves them (SQLite's transactions already do). `NO KEY`: a grant's
/// foreign-key check on the robot (a key share) does not wait for it, so
/// a transaction that holds a session row and then checks its robot never
/// deadlocks with one that holds the robot and then updates the session.
pub fn lock_row(conn: &mut Conn<'_>, id: i64) -> Result<(), DbError> {
    if conn.dialect() == Dialect::Postgres {
        conn.opt_row(
            "SELECT id FROM robots WHERE id = ?1 FOR NO KEY UPDATE",
            params![id],
            |_| Ok(()),
        )?;
    }
    Ok(())
}

/// [`lock_row`] for a poll, which returns the token of the robot's latest
/// poll before this one (`None` on SQLite, whose one hub knows it).
pub fn lock_for_poll(conn: &mut Conn<'_>, id: i64) -> Result<Option<String>, DbError> {
    if conn.dialect() != Dialect::Postgres {
        return Ok(None);
    }
    let token: Option<Option<String>> = conn.opt_row(
        "SELECT poll_token FROM robots WHERE id = ?1 FOR NO KEY UPDATE",
        params![id],
        |r| r.get(0),
    )?;
    Ok(token.flatten())
}

/// Robots registered by `key_id`, which set its API quota and its limit.
pub fn count_of_key(conn: &mut Conn<'_>, key_id: &str) -> Result<u64, DbError> {
    conn.count(
        "SELECT COUNT(*) FROM robots WHERE key_id = ?1",
        params![key_id],
    )
}

/// Registers `name` for `key_id`, or updates it when the same instance
/// registers again (a restart), when `replace` is set, or when an operator
/// has just moved it to this key (its instance id is then empty). A name
/// owned by another key is never taken over, whatever the request says; a
/// new name is refused once the key has `max_robots` robots; a machine
/// whose robot an operator deleted is refused unless `replace` is set.
pub fn register(
    conn: &mut Conn<'_>,
    name: &str,
    key_id: &str,
    req: &RegisterRobot,
    max_robots: u64,
    now_ms: i64,
) -> Result<Registered, DbError> {
    conn.transaction(|tx| register_in(tx, name, key_id, req, max_robots, now_ms))
}

fn register_in(
    tx: &mut Conn<'_>,
    name: &str,
    key_id: &str,
    req: &RegisterRobot,
    max_robots: u64,
    now_ms: i64,
) -> Result<Registered, DbError> {
    if is_retired(tx, &req.instance_id, key_id, name)? {
        if !req.replace {
            return Ok(Registered::Deleted);
        }
        tx.execute(
            "DELETE FROM retired_instances WHERE instance_id = ?1 AND key_id = ?2 AND name = ?3",
            params![req.instance_id, key_id, name],
        )?;
    }
    if tx.dialect() == Dialect::Postgres {
        // One key's registrations take turns (on SQLite every write
        // transaction does), so that its robot count holds against
        // `max_robots` and one machine's name is not registered twice at
        // once.
        // The lock's first half, 29282, is "rb" in ASCII: this lock's
        // space; the second is the key id's hash.
        tx.execute(
            "SELECT pg_advisory_xact_lock(29282, hashtext(?1))",
            params![key_id],
        )?;
    }
    let existing = match find(tx, name)? {
        Some(existing) => existing,
        None => match insert(tx, name, key_id, req, max_robots, now_ms)? {
            Inserted::Now(row) => return Ok(Registered::Ok(row)),
            Inserted::LimitReached => {
                return Ok(Registered::LimitReached { limit: max_robots });
            }
            // Another key registered the name at the same moment: it is
            // that key's, as if it had been there first.
            Inserted::Already(row) => row,
        },
    };
    if existing.key_id != key_id {
        return Ok(Registered::OtherKey {
            moved_from_caller: existing.moved_from_key_id.as_deref() == Some(key_id),
        });
    }
    if !existing.instance_id.is_empty() && existing.instance_id != req.instance_id && !req.replace {
        let last_seen_at: Option<i64> = tx.row(
            "SELECT last_seen_at FROM robots WHERE id = ?1",
            params![existing.id],
            |r| r.get(0),
        )?;
        return Ok(Registered::Taken {
            holder_host: existing.hostname,
            last_seen_at,
        });
    }
    let labels = to_json(&req.labels)?;
    let host = to_json(&req.host)?;
    let actions = req.actions.as_ref().map(to_json).transpose()?;
    tx.execute(
        "UPDATE robots SET instance_id = ?2, labels = ?3, version = ?4, max_concurrency = ?5,
                host = ?6, draining = 0, last_seen_at = ?7, actions = ?8
         WHERE id = ?1",
        params![
            existing.id,
            req.instance_id,
            labels,
            req.version,
            i64::from(req.max_concurrency),
            host,
            now_ms,
            actions
        ],
    )?;
    let row = find(tx, name)?.ok_or_else(|| DbError::Corrupt(format!("robot {name} vanished")))?;
    Ok(Registered::Ok(row))
}

enum Inserted {
    Now(RobotRow),
    LimitReached,
    /// The name was registered meanwhile, by another key.
    Already(RobotRow),
}

/// Registers the new robot `name` unless the key has `max_robots`.
fn insert(
    tx: &mut Conn<'_>,
    name: &str,
    key_id: &str,
    req: &RegisterRobot,
    max_robots: u64,
    now_ms: i64,
) -> Result<Inserted, DbError> {
    if count_of_key(tx, key_id)? >= max_robots {
        return Ok(Inserted::LimitReached);
    }
    let inserted = tx.execute(
        "INSERT INTO robots (name, created_at, instance_id, key_id, labels, version,
                             max_concurrency, host, last_seen_at, actions)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?2, ?9)
         ON CONFLICT (name) DO NOTHING",
        params![
            name,
            now_ms,
            req.instance_id,
            key_id,
            to_json(&req.labels)?,
            req.version,
            i64::from(req.max_concurrency),
            to_json(&req.host)?,
            req.actions.as_ref().map(to_json).transpose()?
        ],
    )?;
    let row = find(tx, name)?.ok_or_else(|| DbError::Corrupt(format!("robot {name} vanished")))?;
    Ok(if inserted == 1 {
        Inserted::Now(row)
    } else {
        Inserted::Already(row)
    })
}

/// What an operator's `robots transfer` did.
pub enum Transfer {
    Moved { from_key_id: String },
    NoSuchRobot,
    AlreadyThere,
}

/// Gives the robot `name` to `to_key_id`. Its instance id is cleared, so
/// the old key's agent is refused at once and the new key's agent can
/// register the name without `replace`.
pub fn transfer(conn: &mut Conn<'_>, name: &str, to_key_id: &str) -> Result<Transfer, DbError> {
    conn.transaction(|tx| {
        let Some(robot) = find(tx, name)? else {
            return Ok(Transfer::NoSuchRobot);
        };
        if robot.key_id == to_key_id {
            return Ok(Transfer::AlreadyThere);
        }
        // Its labels were the old key's to give: the new key's agent
        // gives them again when it registers the robot (checked then).
        tx.execute(
            "UPDATE robots SET key_id = ?2, moved_from_key_id = key_id, instance_id = '',
                draining = 0, labels = '[]'
         WHERE id = ?1",
            params![robot.id, to_key_id],
        )?;
        Ok(Transfer::Moved {
            from_key_id: robot.key_id,
        })
    })
}

/// What an operator's `robots delete` did.
pub enum Deletion {
    Done,
    NoSuchRobot,
    /// It holds leases on these sessions, which may be running.
    Busy {
        sessions: Vec<i64>,
    },
}

/// Deletes the robot `name` unless it holds a lease. Ended sessions it ran
/// keep their history but no longer name a robot. Its machine is
/// remembered, so that its agent is refused rather than registering it
/// again.
pub fn delete(conn: &mut Conn<'_>, name: &str) -> Result<Deletion, DbError> {
    conn.transaction(|tx| {
        let Some(robot) = find(tx, name)? else {
            return Ok(Deletion::NoSuchRobot);
        };
        // A grant or a poll (which lock the robot) cannot give it a session
        // between the look below and the delete.
        lock_row(tx, robot.id)?;
        let sessions: Vec<i64> = tx.rows(
            "SELECT id FROM session_queues
         WHERE robot_id = ?1 AND lease_id IS NOT NULL AND status IN ('queued', 'running')
         ORDER BY id",
            params![robot.id],
            |r| r.get(0),
        )?;
        if !sessions.is_empty() {
            return Ok(Deletion::Busy { sessions });
        }
        tx.execute(
            "UPDATE session_queues SET robot_id = NULL WHERE robot_id = ?1",
            params![robot.id],
        )?;
        tx.execute("DELETE FROM robots WHERE id = ?1", params![robot.id])?;
        if !robot.instance_id.is_empty() {
            tx.execute(
                "INSERT INTO retired_instances (instance_id, key_id, name, at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (instance_id, key_id, name) DO UPDATE SET at = excluded.at",
                params![robot.instance_id, robot.key_id, robot.name, super::now_ms()],
            )?;
        }
        Ok(Deletion::Done)
    })
}

/// Whether an operator deleted the robot `name` that this machine
/// (`instance_id`, of `key_id`) had registered, and it has not been
/// registered again with `replace` since.
pub fn is_retired(
    conn: &mut Conn<'_>,
    instance_id: &str,
    key_id: &str,
    name: &str,
) -> Result<bool, DbError> {
    Ok(conn
        .opt_row(
            "SELECT 1 FROM retired_instances WHERE instance_id = ?1 AND key_id = ?2 AND name = ?3",
            params![instance_id, key_id, name],
            |_| Ok(()),
        )?
        .is_some())
}

/// Records a heartbeat, and `poll_token` as the robot's latest poll.
pub fn heartbeat(
    conn: &mut Conn<'_>,
    robot_id: i64,
    metrics: Option<&HostMetrics>,
    draining: bool,
    poll_token: &str,
    now_ms: i64,
) -> Result<(), DbError> {
    let metrics = metrics.map(to_json).transpose()?;
    conn.execute(
        "UPDATE robots SET last_seen_at = ?2, draining = ?3, metrics = COALESCE(?4, metrics),
                poll_token = ?5
         WHERE id = ?1",
        params![robot_id, now_ms, i64::from(draining), metrics, poll_token],
    )?;
    Ok(())
}

/// Whether `poll_token` is still the robot's latest poll.
pub fn is_latest_poll(
    conn: &mut Conn<'_>,
    robot_id: i64,
    poll_token: &str,
) -> Result<bool, DbError> {
    let latest: Option<Option<String>> = conn.opt_row(
        "SELECT poll_token FROM robots WHERE id = ?1",
        params![robot_id],
        |r| r.get(0),
    )?;
    Ok(latest.flatten().as_deref() == Some(poll_token))
}

pub fn list(conn: &mut Conn<'_>) -> Result<Vec<RobotDetails>, DbError> {
    let rows = conn.rows(
        "SELECT id, name, labels, version, max_concurrency, host, metrics, draining, last_seen_at,
                key_id, actions
         FROM robots ORDER BY name",
        params![],
        |r| {
            Ok((
                r.get::<i64>(0)?,
                r.get::<String>(1)?,
                r.get::<String>(2)?,
                r.get::<String>(3)?,
                r.get::<i64>(4)?,
                r.get::<String>(5)?,
                r.get::<Option<String>>(6)?,
                r.get::<bool>(7)?,
                r.get::<Option<i64>>(8)?,
                r.get::<String>(9)?,
                r.get::<Option<String>>(10)?,
            ))
        },
    )?;
    let mut out = Vec::new();
    for row in rows {
        let (
            id,
            name,
            labels,
            version,
            max_concurrency,
            host,
            metrics,
            draining,
            last_seen,
            key_id,
            actions,
        ) = row;
        let what = |f: &str| format!("robot {name}: {f}");
        out.push(RobotDetails {
            id,
            labels: parse_json(&what("labels"), &labels)?,
            version,
            max_concurrency: max_concurrency.clamp(0, u32::MAX as i64) as u32,
            host: parse_json(&what("host"), &host)?,
            metrics: metrics
                .map(|m| parse_json(&what("metrics"), &m))
                .transpose()?,
            draining,
            last_seen_at: last_seen.map(to_timestamp).transpose()?,
            actions: actions
                .map(|a| parse_json(&what("actions"), &a))
                .transpose()?,
            name,
            key_id,
        });
    }
    Ok(out)
}

/// What robot `id` offers, for matching it with sessions while its poll
/// waits; `None` when there is no such robot.
pub fn capabilities(conn: &mut Conn<'_>, id: i64) -> Result<Option<Capabilities>, DbError> {
    conn.opt_row(
        "SELECT name, labels, actions FROM robots WHERE id = ?1",
        params![id],
        read_capabilities,
    )
}

/// Every registered robot, by name, with its catalog and labels
/// (a session's `queued_reason`).
pub fn all_capabilities(conn: &mut Conn<'_>) -> Result<Vec<Capabilities>, DbError> {
    conn.rows(
        "SELECT name, labels, actions FROM robots ORDER BY name",
        params![],
        read_capabilities,
    )
}

/// `name, labels, actions` into what routing compares. The catalog is
/// read here rather than in SQL, so that both engines share it.
fn read_capabilities(r: &Row<'_>) -> Result<Capabilities, DbError> {
    let name: String = r.get(0)?;
    let what = |f: &str| format!("robot {name}: {f}");
    let labels = parse_json(&what("labels"), &r.get::<String>(1)?)?;
    let actions = match r.get::<Option<String>>(2)? {
        None => None,
        Some(text) => {
            let offers: Vec<ActionOffer> = parse_json(&what("actions"), &text)?;
            Some(offers.into_iter().map(|o| o.name).collect())
        }
    };
    Ok(Capabilities {
        name,
        labels,
        actions,
    })
}

/// What the fleet offers, for validating a workflow on upload.
#[derive(Debug, Default)]
pub struct FleetCatalog {
    /// Every action name some robot offers.
    pub actions: HashSet<String>,
    /// `(pack, version, robot)` for every pack some robot offers, in that
    /// order.
    pub packs: Vec<(String, String, String)>,
    /// Robots that sent no catalog (agents older than catalogs), by name.
    pub unknown: Vec<String>,
}

pub fn fleet_catalog(conn: &mut Conn<'_>) -> Result<FleetCatalog, DbError> {
    let robots: Vec<(String, Option<String>)> = conn.rows(
        "SELECT name, actions FROM robots ORDER BY name",
        params![],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let mut catalog = FleetCatalog::default();
    let mut packs = std::collections::BTreeSet::new();
    for (name, actions) in robots {
        let Some(actions) = actions else {
            catalog.unknown.push(name);
            continue;
        };
        let offers: Vec<ActionOffer> = parse_json(&format!("robot {name}: actions"), &actions)?;
        for offer in offers {
            if let Some(pack) = offer.pack {
                packs.insert((pack, offer.version, name.clone()));
            }
            catalog.actions.insert(offer.name);
        }
    }
    catalog.packs = packs.into_iter().collect();
    Ok(catalog)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, DbError> {
    serde_json::to_string(value).map_err(|e| DbError::Corrupt(e.to_string()))
}

/// The access key that registered robot `id` (api/robot/session.rs binds
/// lease calls to it).
pub fn key_of(conn: &mut Conn<'_>, id: i64) -> Result<Option<String>, DbError> {
    conn.opt_row(
        "SELECT key_id FROM robots WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )
}
