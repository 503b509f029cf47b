//! The public API quota: per access key, 60 calls a minute for each robot
//! that key registered, and never fewer than 60 (AUTORO's rule: the quota
//! follows the robots one has). A fixed one-minute window per key, in
//! memory: a restart forgets the counts, which only ever errs toward
//! letting calls through. Since robots raise the quota, a key may register
//! only so many ([`DEFAULT_MAX_ROBOTS_PER_KEY`] unless the operator says).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const CALLS_PER_ROBOT_PER_MINUTE: u64 = 60;
/// Robots one access key may register unless `serve --max-robots-per-key`
/// says otherwise.
pub const DEFAULT_MAX_ROBOTS_PER_KEY: u64 = 100;
const WINDOW: Duration = Duration::from_secs(60);

/// Windows are pruned once this many keys are tracked; it only bounds
/// memory, since only existing keys get a window.
const PRUNE_ABOVE: usize = 4096;

pub struct Quota {
    windows: Mutex<HashMap<String, Window>>,
    per_robot: u64,
}

struct Window {
    start: Instant,
    calls: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub limit: u64,
    /// Whole seconds until the window ends, at least 1.
    pub retry_after: u64,
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
        }
    }

    pub fn per_robot(&self) -> u64 {
        self.per_robot
    }

    /// Counts one call by `key_id`, which has registered `robots`, or says
    /// when it may call again.
    pub fn check(&self, key_id: &str, robots: u64) -> Result<(), Exceeded> {
        self.check_at(key_id, robots, Instant::now())
    }

    fn check_at(&self, key_id: &str, robots: u64, now: Instant) -> Result<(), Exceeded> {
        let limit = limit_for(self.per_robot, robots);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, w| now.duration_since(w.start) < WINDOW);
        }
        let window = windows.entry(key_id.to_string()).or_insert(Window {
            start: now,
            calls: 0,
        });
        if now.duration_since(window.start) >= WINDOW {
            window.start = now;
            window.calls = 0;
        }
        if window.calls >= limit {
            let left = WINDOW.saturating_sub(now.duration_since(window.start));
            return Err(Exceeded {
                limit,
                retry_after: left.as_secs_f64().ceil().max(1.0) as u64,
            });
        }
        window.calls += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixty_a_minute_per_robot_at_least_sixty() {
        let q = Quota::new(CALLS_PER_ROBOT_PER_MINUTE);
        let t0 = Instant::now();
        for _ in 0..60 {
            q.check_at("k", 0, t0).unwrap();
        }
        let e = q
            .check_at("k", 0, t0 + Duration::from_secs(15))
            .unwrap_err();
        assert_eq!(
            e,
            Exceeded {
                limit: 60,
                retry_after: 45
            }
        );
        // Another key has its own window.
        q.check_at("other", 0, t0).unwrap();
        // Two robots double the limit.
        for _ in 0..60 {
            q.check_at("k", 2, t0 + Duration::from_secs(16)).unwrap();
        }
        assert!(q.check_at("k", 2, t0 + Duration::from_secs(16)).is_err());
        // A new window starts afresh.
        q.check_at("k", 0, t0 + WINDOW).unwrap();
    }
}
