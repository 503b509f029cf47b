//! Several hubs on one PostgreSQL database.
//!
//! Each hub keeps the robots whose long poll waits on it (`dispatch.rs`).
//! When something changes that a poll waiting on *another* hub must hear
//! of (a session to run, a cancel, a freed slot, a newer poll of the same
//! robot), the hub that made the change tells the others with
//! `pg_notify` on one channel, and each hub's listener (here) acts on it
//! for its own waiters exactly as it would for a local change. Grants are
//! guarded in the database (`db/leases.rs`), so two hubs acting on one
//! notice cannot both win.
//!
//! A notice can be missed only while a hub's listening connection is
//! down. When it comes back, the hub answers every poll waiting on it
//! (empty, as when a hold runs out): each robot polls again at once, and a
//! poll looks at everything afresh (leases, cancels, the queue). So no
//! robot waits longer than the outage for something it missed.
//!
//! On SQLite there is one hub, and nothing here runs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::api::{AuthEvent, Hub};
use crate::db::sql::params;
use crate::db::{Conn, DbError, Dialect, now_ms};
use crate::dispatch::Wake;

/// The one channel every hub of a database listens on.
const CHANNEL: &str = "tasuki_hub";

/// What one hub tells the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A session is queued (new, or handed back) and no robot waiting on
    /// the hub that queued it took it.
    Queued { session_id: i64 },
    /// A session running on this robot was asked to cancel.
    Cancel { robot_id: i64 },
    /// This robot has a free slot again (a session ended).
    SlotFreed { robot_id: i64 },
    /// This robot polled: its polls waiting elsewhere are superseded.
    Polled { robot_id: i64 },
    /// An authentication failed or a pair became trusted
    /// (`api/auth_limit.rs`).
    Auth(AuthEvent),
}

impl Notice {
    /// `<origin> <kind> <fields>`: fields never hold a space (a key id,
    /// which may, is sent in hex; an absent one is `-`).
    fn encode(&self, origin: &str) -> String {
        match self {
            Notice::Queued { session_id } => format!("{origin} q {session_id}"),
            Notice::Cancel { robot_id } => format!("{origin} c {robot_id}"),
            Notice::SlotFreed { robot_id } => format!("{origin} f {robot_id}"),
            Notice::Polled { robot_id } => format!("{origin} p {robot_id}"),
            Notice::Auth(AuthEvent::Failed { source, key }) => format!(
                "{origin} a {} {}",
                source.map_or("-".to_string(), |ip| ip.to_string()),
                key.as_deref().map_or("-".to_string(), to_hex)
            ),
            Notice::Auth(AuthEvent::Trusted { source, key }) => {
                format!("{origin} t {source} {}", to_hex(key))
            }
        }
    }

    /// The notice and the hub it came from; `None` for a payload no hub
    /// of this version sends.
    fn decode(payload: &str) -> Option<(&str, Notice)> {
        let parts: Vec<&str> = payload.split(' ').collect();
        let id = |field: &str| field.parse::<i64>().ok();
        let notice = match parts[..] {
            [_, "q", n] => Notice::Queued { session_id: id(n)? },
            [_, "c", n] => Notice::Cancel { robot_id: id(n)? },
            [_, "f", n] => Notice::SlotFreed { robot_id: id(n)? },
            [_, "p", n] => Notice::Polled { robot_id: id(n)? },
            [_, "a", source, key] => Notice::Auth(AuthEvent::Failed {
                source: match source {
                    "-" => None,
                    ip => Some(ip.parse().ok()?),
                },
                key: match key {
                    "-" => None,
                    hex => Some(from_hex(hex)?),
                },
            }),
            [_, "t", source, key] => Notice::Auth(AuthEvent::Trusted {
                source: source.parse().ok()?,
                key: from_hex(key)?,
            }),
            _ => return None,
        };
        Some((parts[0], notice))
    }
}

fn to_hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) || !hex.is_ascii() {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// This hub's voice on the channel.
pub struct Peers {
    /// Random per process: a hub skips its own notices, which it has
    /// already acted on.
    origin: String,
}

impl Peers {
    pub fn new() -> Peers {
        let origin = crate::secrets::new_lease_id().unwrap_or_else(|_| {
            // Only the randomness source failing; a clash would merely
            // make this hub skip another's notices.
            format!("hub-{}", std::process::id())
        });
        Peers { origin }
    }

    fn is_own(&self, origin: &str) -> bool {
        origin == self.origin
    }

    /// `<this hub> <n>`: unique across the hubs of a database.
    pub fn token(&self, n: u64) -> String {
        format!("{} {n}", self.origin)
    }

    /// Whether this hub made `token` ([`Peers::token`]).
    pub fn made(&self, token: &str) -> bool {
        token.split(' ').next() == Some(self.origin.as_str())
    }

    /// Tells the other hubs of the database; nothing on SQLite.
    pub fn tell(&self, conn: &mut Conn<'_>, notice: Notice) -> Result<(), DbError> {
        if conn.dialect() != Dialect::Postgres {
            return Ok(());
        }
        conn.execute(
            "SELECT pg_notify(?1, ?2)",
            params![CHANNEL, notice.encode(&self.origin)],
        )?;
        Ok(())
    }
}

/// Tells the other hubs of this hub's failed authentications and newly
/// trusted pairs, as the limiter reports them, until the hub stops.
pub async fn tell_auth_events(hub: Arc<Hub>, mut events: mpsc::Receiver<AuthEvent>) {
    let mut batch = Vec::new();
    // Whatever came while the last batch was told goes in one call.
    while events.recv_many(&mut batch, 64).await > 0 {
        let notices: Vec<Notice> = batch.drain(..).map(Notice::Auth).collect();
        let told = hub.clone();
        let result = hub
            .db
            .call(move |conn| {
                notices
                    .into_iter()
                    .try_for_each(|notice| told.dispatch.peers.tell(conn, notice))
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "telling the other hubs of failed authentications");
        }
    }
}

/// Listens for the other hubs' notices until the hub stops; on SQLite it
/// returns at once. The first connection is made before this returns
/// (so that `serve` fails at start rather than serving deaf), and a lost
/// one is made again with back-off.
pub async fn listen(hub: Arc<Hub>) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(first) = hub.db.listen(CHANNEL).await else {
        return Ok(None);
    };
    let mut subscription = first?;
    Ok(Some(tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            while let Some(payload) = subscription.next().await {
                match payload {
                    Ok(payload) => act(&hub, &payload).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "the connection listening to the other hubs failed");
                        break;
                    }
                }
            }
            subscription = loop {
                tokio::time::sleep(backoff).await;
                match hub.db.listen(CHANNEL).await {
                    Some(Ok(subscription)) => break subscription,
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cannot listen to the other hubs yet");
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                    None => return,
                }
            };
            backoff = Duration::from_millis(100);
            // Notices sent while it was down are lost: every poll waiting
            // here looks afresh.
            let answered = hub.dispatch.answer_all();
            tracing::info!(
                polls = answered,
                "listening to the other hubs again; answered the waiting polls so that they look afresh"
            );
        }
    })))
}

/// How often a hub of a shared database marks the robots waiting on it as
/// seen: well inside `api/robots.rs`'s 5 s, so that a robot waiting on
/// one hub never shows offline on another.
const SEEN_EVERY: Duration = Duration::from_secs(2);

/// Marks the robots whose poll waits here as seen, every [`SEEN_EVERY`],
/// for the other hubs' `GET /v1/robots`; one statement for them all. On
/// SQLite, the one hub knows its waiting polls in memory, and this
/// returns at once.
pub async fn mark_waiting_robots_seen(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(SEEN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let waiting = hub.dispatch.waiting_robots();
        if waiting.is_empty() {
            continue;
        }
        let ids = serde_json::Value::from(waiting).to_string();
        let result = hub
            .db
            .call(move |conn| {
                if conn.dialect() != Dialect::Postgres {
                    return Ok(false);
                }
                // In id order, as every statement that locks several
                // robots must be, so that two hubs never deadlock.
                conn.execute(
                    "UPDATE robots SET last_seen_at = ?1
                     WHERE id IN (SELECT id FROM robots
                                  WHERE id IN (SELECT CAST(value AS BIGINT)
                                               FROM jsonb_array_elements_text(CAST(CAST(?2 AS TEXT) AS JSONB)))
                                  ORDER BY id FOR NO KEY UPDATE)",
                    params![now_ms(), ids],
                )?;
                Ok(true)
            })
            .await;
        match result {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(error = %e, "marking the robots waiting here as seen"),
        }
    }
}

/// Acts on another hub's notice for the polls waiting here.
async fn act(hub: &Arc<Hub>, payload: &str) {
    let Some((origin, notice)) = Notice::decode(payload) else {
        tracing::warn!(
            payload,
            "a notice on the hubs' channel that this hub does not know"
        );
        return;
    };
    if hub.dispatch.peers.is_own(origin) {
        return;
    }
    let result = match notice.clone() {
        Notice::Auth(event) => {
            hub.auth_limit.heard(event);
            Ok(())
        }
        Notice::Cancel { robot_id } => {
            hub.dispatch.wake(robot_id, Wake::Cancel);
            Ok(())
        }
        Notice::Polled { robot_id } => {
            hub.dispatch.superseded_elsewhere(robot_id, now_ms());
            Ok(())
        }
        Notice::Queued { session_id } => {
            let hub = hub.clone();
            hub.db
                .clone()
                .call(move |conn| {
                    hub.dispatch.offer_here(conn, session_id, now_ms())?;
                    Ok(())
                })
                .await
        }
        Notice::SlotFreed { robot_id } => {
            let hub = hub.clone();
            hub.db
                .clone()
                .call(move |conn| {
                    hub.dispatch
                        .slot_freed_here(conn, robot_id, now_ms())
                        .map(drop)
                })
                .await
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, ?notice, "acting on another hub's notice");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_read_back_and_strangers_are_refused() {
        for notice in [
            Notice::Queued { session_id: 7 },
            Notice::Cancel { robot_id: 8 },
            Notice::SlotFreed { robot_id: 9 },
            Notice::Polled { robot_id: 10 },
            Notice::Auth(AuthEvent::Failed {
                source: Some("10.0.0.1".parse().unwrap()),
                key: Some("AK with spaces é".into()),
            }),
            Notice::Auth(AuthEvent::Failed {
                source: None,
                key: None,
            }),
            Notice::Auth(AuthEvent::Trusted {
                source: "::1".parse().unwrap(),
                key: "AK".into(),
            }),
        ] {
            assert_eq!(Notice::decode(&notice.encode("abc")), Some(("abc", notice)));
        }
        for stranger in [
            "",
            "abc",
            "abc q",
            "abc q x",
            "abc z 1",
            "abc q 1 2",
            "abc a - 4",
            "abc a x -",
            "abc t - 41",
            "abc a - ff",
        ] {
            assert_eq!(Notice::decode(stranger), None, "{stranger:?}");
        }
    }
}
