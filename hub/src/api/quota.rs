//! The public API quota: per access key, 60 calls a minute for each robot
//! that key registered, and never fewer than 60 (AUTORO's rule: the quota
//! follows the robots one has). Since robots raise the quota, a key may
//! register only so many ([`DEFAULT_MAX_ROBOTS_PER_KEY`] unless the
//! operator says).
//!
//! Calls are counted per key and clock minute, so that every hub of a
//! shared database counts the same window. A lone hub (SQLite) counts in
//! memory. Hubs sharing PostgreSQL add what they counted to the key's row
//! of `api_calls` ([`Quota::sync`], every [`SYNC_EVERY`]) and learn what
//! the others added; a key's first call of a minute on a hub adds itself
//! at once, so that a hub starts a minute knowing the others' count
//! (calls arriving while it does count on this hub's own until then). A
//! key can therefore pass its quota only by the calls the other hubs let
//! through within one sync, and a restart forgets only this hub's unsynced
//! calls: both err toward letting calls through, never toward refusing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use crate::db::{Db, api_calls, now_ms};

pub const CALLS_PER_ROBOT_PER_MINUTE: u64 = 60;
/// Robots one access key may register unless `serve --max-robots-per-key`
/// says otherwise.
pub const DEFAULT_MAX_ROBOTS_PER_KEY: u64 = 100;
const MINUTE_MS: i64 = 60_000;
/// How often hubs sharing a database add up their counts.
pub const SYNC_EVERY: Duration = Duration::from_millis(250);

/// Windows are pruned once this many keys are tracked; it only bounds
/// memory, since only existing keys get a window.
const PRUNE_ABOVE: usize = 4096;

pub struct Quota {
    windows: Mutex<HashMap<String, Window>>,
    per_robot: u64,
    /// The minute whose predecessors' shared rows were last forgotten.
    forgotten: AtomicI64,
}

/// One key's calls in one clock minute.
struct Window {
    /// Minutes since the Unix epoch.
    minute: i64,
    /// Calls let through here and added to the shared count (or being
    /// added).
    synced: u64,
    /// Calls let through here and not added yet.
    unsynced: u64,
    /// Calls the other hubs had added when this hub last looked; within a
    /// minute it only grows.
    elsewhere: u64,
}

impl Window {
    fn total(&self) -> u64 {
        self.synced + self.unsynced + self.elsewhere
    }

    /// `shared` is the key's count as the database returned it, which
    /// holds at most `synced` of this hub's calls.
    fn learn(&mut self, shared: u64) {
        self.elsewhere = self.elsewhere.max(shared.saturating_sub(self.synced));
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub limit: u64,
    /// Whole seconds until the minute ends, at least 1.
    pub retry_after: u64,
}

/// How a call was counted.
enum Counted {
    /// This hub's first call of the key this minute: it is to be added to
    /// the shared count before the answer.
    First {
        minute: i64,
    },
    Again,
}

pub fn limit_for(per_robot: u64, robots: u64) -> u64 {
    per_robot.saturating_mul(robots.max(1))
}

impl Quota {
    /// `per_robot` calls a minute per robot of the key; the hub's default
    /// is [`CALLS_PER_ROBOT_PER_MINUTE`], and it is never set lower.
    pub fn new(per_robot: u64) -> Quota {
        Quota {
            windows: Mutex::new(HashMap::new()),
            per_robot: per_robot.max(CALLS_PER_ROBOT_PER_MINUTE),
            forgotten: AtomicI64::new(0),
        }
    }

    pub fn per_robot(&self) -> u64 {
        self.per_robot
    }

    /// Counts one call by `key_id`, which has registered `robots`, or says
    /// when it may call again.
    pub async fn check(&self, db: &Db, key_id: &str, robots: u64) -> Result<(), Exceeded> {
        let now = now_ms();
        let limit = limit_for(self.per_robot, robots);
        let Counted::First { minute } = self.count(key_id, limit, now)? else {
            return Ok(());
        };
        if !db.is_shared() {
            return Ok(());
        }
        let key = key_id.to_string();
        let shared = db
            .call(move |conn| api_calls::add(conn, &key, minute, 1))
            .await;
        match shared {
            Ok(shared) => {
                if let Some(w) = self.lock().get_mut(key_id).filter(|w| w.minute == minute) {
                    w.learn(shared);
                }
                if shared > limit {
                    return Err(exceeded(limit, now));
                }
            }
            // The call goes through on this hub's count alone.
            Err(e) => tracing::warn!(error = %e, "reading the API calls the other hubs counted"),
        }
        Ok(())
    }

    fn count(&self, key_id: &str, limit: u64, now_ms: i64) -> Result<Counted, Exceeded> {
        let minute = now_ms.div_euclid(MINUTE_MS);
        let mut windows = self.lock();
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, w| w.minute == minute);
        }
        let window = windows.entry(key_id.to_string()).or_insert(Window {
            minute: minute - 1,
            synced: 0,
            unsynced: 0,
            elsewhere: 0,
        });
        if window.minute != minute {
            *window = Window {
                minute,
                synced: 1,
                unsynced: 0,
                elsewhere: 0,
            };
            return Ok(Counted::First { minute });
        }
        if window.total() >= limit {
            return Err(exceeded(limit, now_ms));
        }
        window.unsynced += 1;
        Ok(Counted::Again)
    }

    /// Adds this hub's unsynced calls of the current minute to the shared
    /// counts and learns the other hubs' (for [`Db::is_shared`] databases;
    /// the serve loop calls it every [`SYNC_EVERY`]). Windows of past
    /// minutes are dropped here, and the table's are forgotten.
    pub async fn sync(&self, db: &Db) -> Result<(), crate::db::DbError> {
        let minute = now_ms().div_euclid(MINUTE_MS);
        let due: Vec<(String, i64)> = {
            let mut windows = self.lock();
            windows.retain(|_, w| w.minute == minute);
            windows
                .iter_mut()
                .filter(|(_, w)| w.unsynced > 0)
                .map(|(key, w)| {
                    let calls = std::mem::take(&mut w.unsynced);
                    w.synced += calls;
                    (key.clone(), calls as i64)
                })
                .collect()
        };
        let forget = self.forgotten.swap(minute, Ordering::Relaxed) != minute;
        if due.is_empty() && !forget {
            return Ok(());
        }
        let shared = db
            .call(move |conn| {
                if forget {
                    // Rows of minutes before the last are no longer read.
                    api_calls::forget_before(conn, minute - 1)?;
                }
                due.into_iter()
                    .map(|(key, calls)| {
                        let shared = api_calls::add(conn, &key, minute, calls)?;
                        Ok((key, shared))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let mut windows = self.lock();
        for (key, shared) in shared {
            if let Some(w) = windows.get_mut(&key).filter(|w| w.minute == minute) {
                w.learn(shared);
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Window>> {
        // Counters are plain numbers: a panic elsewhere cannot leave them
        // torn.
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn exceeded(limit: u64, now_ms: i64) -> Exceeded {
    let left_ms = MINUTE_MS - now_ms.rem_euclid(MINUTE_MS);
    Exceeded {
        limit,
        retry_after: (left_ms as u64).div_ceil(1000).max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn let_through(q: &Quota, key: &str, limit: u64, at: i64) -> bool {
        q.count(key, limit, at).is_ok()
    }

    #[test]
    fn sixty_a_minute_per_robot_at_least_sixty() {
        let q = Quota::new(CALLS_PER_ROBOT_PER_MINUTE);
        let minute = 29_000_000 * MINUTE_MS;
        let limit = limit_for(q.per_robot(), 0);
        for _ in 0..60 {
            assert!(let_through(&q, "k", limit, minute));
        }
        let Err(e) = q.count("k", limit, minute + 15_000) else {
            panic!("the 61st call of the minute was let through");
        };
        assert_eq!(
            e,
            Exceeded {
                limit: 60,
                retry_after: 45
            }
        );
        // Another key has its own window.
        assert!(let_through(&q, "other", limit, minute));
        // Two robots double the limit.
        let doubled = limit_for(q.per_robot(), 2);
        for _ in 0..60 {
            assert!(let_through(&q, "k", doubled, minute + 16_000));
        }
        assert!(!let_through(&q, "k", doubled, minute + 16_000));
        // The next clock minute starts afresh.
        assert!(let_through(&q, "k", limit, minute + MINUTE_MS));
    }

    #[test]
    fn the_other_hubs_calls_count() {
        let q = Quota::new(CALLS_PER_ROBOT_PER_MINUTE);
        let at = 29_000_000 * MINUTE_MS + 1;
        assert!(let_through(&q, "k", 60, at));
        // The database says 50 calls, this hub's first among them.
        q.lock().get_mut("k").unwrap().learn(50);
        for _ in 0..10 {
            assert!(let_through(&q, "k", 60, at));
        }
        assert!(!let_through(&q, "k", 60, at));
        // An older, smaller count never lowers what is known.
        q.lock().get_mut("k").unwrap().learn(20);
        assert!(!let_through(&q, "k", 60, at));
    }
}
