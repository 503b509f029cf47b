//! Failed authentication, limited: failed secrets at `POST /v1/token` and
//! failed bearer tokens count per source address and per claimed access
//! key id, in one-minute windows. Past a limit the hub answers 429 with
//! `Retry-After` without checking the credential, so guesses stop being
//! tested.
//!
//! An attempt counts from the moment it starts (and is taken back when it
//! turns out not to be a failed authentication), so a burst of parallel
//! guesses cannot all be tested before the first failure is counted:
//! attempts that could take a source or key past its limit wait for those
//! in flight to end.
//!
//! A source over its limit is refused whatever key it names, except for a
//! key that authenticated from that source in the last ten minutes
//! ([`TRUST_FOR`]): a robot that works keeps working while a neighbour
//! behind the same address (a NAT, a proxy, another local user) fails. A
//! key id over its limit is refused only to sources that have themselves
//! failed in the window: whoever knows a key id (it is no secret) cannot
//! lock out the robots that use that key, while a guesser spread over many
//! addresses still gets one guess per address per minute. A limit of 0
//! turns that limit off.
//!
//! The counters live in memory, in maps of bounded size: expired entries
//! go first, then the oldest. Hubs sharing a database tell each other of
//! every failure and of every pair newly trusted ([`AuthEvent`], carried
//! by `peers.rs`), so that each counts the failures of all and a robot
//! moving to another hub stays trusted there. Attempts in flight are
//! counted per hub: a burst spread over N hubs at once can test N times
//! as many guesses before the first failures are heard of.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{Extensions, StatusCode};
use tokio::sync::{Notify, mpsc};

use super::error::ApiError;
use super::query::shorten;
use crate::peer_limit::source_of;

/// Failed attempts allowed a minute; 0 means no limit.
#[derive(Debug, Clone, Copy)]
pub struct FailureLimits {
    /// From one source (an IPv4 address, or an IPv6 /64, what one host
    /// usually has).
    pub per_source: u32,
    /// Naming one access key id.
    pub per_key: u32,
}

impl Default for FailureLimits {
    fn default() -> FailureLimits {
        FailureLimits {
            per_source: 30,
            per_key: 10,
        }
    }
}
const WINDOW: Duration = Duration::from_secs(60);
/// How long a (source, key id) pair that authenticated stays exempt from
/// the source's and the key's limits: its trust is renewed (and told to
/// the other hubs) by an authentication at least half of this after the
/// last renewal, so it lasts from half of this to all of it past the last
/// authentication. A robot authenticates at least once per poll hold
/// (25 s), so a working robot is never refused.
pub const TRUST_FOR: Duration = Duration::from_secs(600);
/// Entries each map keeps at most.
const MAX_TRACKED: usize = 16 * 1024;
/// Key ids are tracked by at most this many bytes (longer ones name no
/// key anyway).
const MAX_TRACKED_KEY_ID: usize = 128;
/// An attempt that waits for others in flight checks again at least this
/// often, whatever it is told.
const RECHECK: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct AuthLimiter {
    limits: FailureLimits,
    counts: Mutex<Counts>,
    /// Told whenever an attempt in flight ends.
    settled: Notify,
    /// Where the other hubs of a shared database hear of this hub's
    /// failures and trusted pairs; `None` for a lone hub.
    outbox: Option<mpsc::Sender<AuthEvent>>,
}

/// What one hub tells the others of a shared database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthEvent {
    /// An authentication failed.
    Failed {
        source: Option<IpAddr>,
        key: Option<String>,
    },
    /// A pair authenticated, and was not trusted here (or had not been for
    /// half of [`TRUST_FOR`]).
    Trusted { source: IpAddr, key: String },
}

/// Events waiting to be told; past this many (an attack failing faster
/// than the database takes notices) the newest are dropped, and the other
/// hubs count from their own failures alone.
const OUTBOX: usize = 1024;

#[derive(Default)]
struct Counts {
    sources: Windows<IpAddr>,
    keys: Windows<String>,
    /// (source, key id) pairs that authenticated, and when they last did.
    trusted: HashMap<(IpAddr, String), Instant>,
}

/// What [`AuthLimiter::enter`] decided.
enum Entry {
    Go(Pending),
    /// Only attempts in flight stand between the counts and a limit: wait
    /// for them to end.
    Wait,
}

/// An attempt counted as in flight (unless its pair is trusted).
struct Pending {
    source: Option<IpAddr>,
    key: Option<String>,
    in_flight: bool,
}

impl AuthLimiter {
    pub fn new(limits: FailureLimits) -> AuthLimiter {
        AuthLimiter {
            limits,
            ..AuthLimiter::default()
        }
    }

    /// Makes this hub tell its events to the other hubs of a shared
    /// database: the caller sends what the receiver gets.
    pub fn share(&mut self) -> mpsc::Receiver<AuthEvent> {
        let (tx, rx) = mpsc::channel(OUTBOX);
        self.outbox = Some(tx);
        rx
    }

    /// Counts what another hub of the database told.
    pub fn heard(&self, event: AuthEvent) {
        let now = Instant::now();
        {
            let mut counts = lock(&self.counts);
            match event {
                AuthEvent::Failed { source, key } => {
                    if let Some(ip) = source {
                        counts.sources.end(source_of(ip), false, true, now);
                    }
                    if let Some(key) = key {
                        counts.keys.end(tracked_key(&key), false, true, now);
                    }
                }
                AuthEvent::Trusted { source, key } => {
                    counts.trust(source_of(source), tracked_key(&key), now);
                }
            }
        }
        // Waiting attempts look again (a trusted pair may go now).
        self.settled.notify_waiters();
    }

    /// Runs `attempt` unless the source or the key id has failed too often;
    /// counts its 401 as a failure.
    pub async fn guard<T>(
        &self,
        source: Option<IpAddr>,
        key_id: Option<&str>,
        attempt: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let source = source.map(source_of);
        let key = key_id.map(tracked_key);
        let pending = loop {
            // Made before the check, so that an attempt ending between the
            // check and the wait still wakes it.
            let settled = self.settled.notified();
            match self.enter(source, key.as_deref(), Instant::now())? {
                Entry::Go(pending) => break pending,
                Entry::Wait => {
                    let _ = tokio::time::timeout(RECHECK, settled).await;
                }
            }
        };
        // Settled when dropped: also when the caller goes away mid-attempt.
        let mut settle = Settle {
            limiter: self,
            pending: Some(pending),
            outcome: Outcome::Abandoned,
        };
        let result = attempt.await;
        settle.outcome = match &result {
            Ok(_) => Outcome::Authenticated,
            Err(e) if e.status == StatusCode::UNAUTHORIZED => Outcome::Failed,
            // Refused for another reason (scope, quota, a bad field): not a
            // failed authentication.
            Err(_) => Outcome::Abandoned,
        };
        result
    }

    fn enter(
        &self,
        source: Option<IpAddr>,
        key: Option<&str>,
        now: Instant,
    ) -> Result<Entry, ApiError> {
        let mut counts = lock(&self.counts);
        let trusted = match (source, key) {
            (Some(ip), Some(key)) => counts
                .trusted
                .get(&(ip, key.to_string()))
                .is_some_and(|at| now.duration_since(*at) < TRUST_FOR),
            _ => false,
        };
        if !trusted {
            let mut source_failed = source.is_none();
            let mut source_busy = false;
            let mut must_wait = false;
            if let Some(ip) = source {
                let w = counts.sources.live(&ip, now);
                source_failed = w.failures > 0;
                source_busy = w.in_flight > 0;
                let limit = self.limits.per_source;
                if limit > 0 {
                    if w.failures >= limit {
                        return Err(too_many(
                            format!(
                                "{} failed authentications from {ip} in the last minute (the \
                                 limit is {limit}, --auth-failures-per-source)",
                                w.failures
                            ),
                            w.retry_after(now),
                        ));
                    }
                    must_wait |= w.failures + w.in_flight >= limit;
                }
            }
            let limit = self.limits.per_key;
            if let Some(key) = key
                && limit > 0
            {
                let w = counts.keys.live(key, now);
                if w.failures >= limit {
                    if source_failed {
                        return Err(too_many(
                            format!(
                                "{} failed authentications for the access key `{}` in the \
                                 last minute (the limit is {limit}, --auth-failures-per-key)",
                                w.failures,
                                shorten(key),
                            ),
                            w.retry_after(now),
                        ));
                    }
                    // A source that has not failed gets one attempt at a
                    // time, so a burst from a new address is one guess.
                    must_wait |= source_busy;
                } else if source_failed {
                    must_wait |= w.failures + w.in_flight >= limit;
                }
            }
            if must_wait {
                return Ok(Entry::Wait);
            }
            if let Some(ip) = source {
                counts.sources.entry(ip, now).in_flight += 1;
            }
            if let Some(key) = key {
                counts.keys.entry(key.to_string(), now).in_flight += 1;
            }
        }
        Ok(Entry::Go(Pending {
            source,
            key: key.map(str::to_string),
            in_flight: !trusted,
        }))
    }

    fn settle(&self, pending: Pending, outcome: Outcome, now: Instant) {
        let event = {
            let mut counts = lock(&self.counts);
            let failed = outcome == Outcome::Failed;
            if let Some(ip) = pending.source {
                counts.sources.end(ip, pending.in_flight, failed, now);
            }
            if let Some(key) = &pending.key {
                counts.keys.end(key.clone(), pending.in_flight, failed, now);
            }
            match (outcome, pending.source, pending.key) {
                (Outcome::Failed, source, key) => Some(AuthEvent::Failed { source, key }),
                (Outcome::Authenticated, Some(ip), Some(key)) => counts
                    .trust(ip, key.clone(), now)
                    .then_some(AuthEvent::Trusted { source: ip, key }),
                _ => None,
            }
        };
        self.settled.notify_waiters();
        if let (Some(outbox), Some(event)) = (&self.outbox, event) {
            let _ = outbox.try_send(event);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Authenticated,
    Failed,
    /// Not an authentication failure, or never finished.
    Abandoned,
}

struct Settle<'a> {
    limiter: &'a AuthLimiter,
    pending: Option<Pending>,
    outcome: Outcome,
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.limiter.settle(pending, self.outcome, Instant::now());
        }
    }
}

impl Counts {
    /// Trusts the pair from `now`; says whether that is news worth telling
    /// the other hubs (a new pair, or one last told of long ago).
    fn trust(&mut self, ip: IpAddr, key: String, now: Instant) -> bool {
        if let Some(at) = self.trusted.get_mut(&(ip, key.clone())) {
            let news = now.duration_since(*at) >= TRUST_FOR / 2;
            if news {
                *at = now;
            }
            return news;
        }
        if self.trusted.len() >= MAX_TRACKED {
            self.trusted
                .retain(|_, at| now.duration_since(*at) < TRUST_FOR);
            if self.trusted.len() >= MAX_TRACKED
                && let Some(oldest) = self
                    .trusted
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone())
            {
                self.trusted.remove(&oldest);
            }
        }
        self.trusted.insert((ip, key), now);
        true
    }
}

/// The caller's address, as the accept loop recorded it.
pub fn peer_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

fn tracked_key(key_id: &str) -> String {
    let mut end = key_id.len().min(MAX_TRACKED_KEY_ID);
    while !key_id.is_char_boundary(end) {
        end -= 1;
    }
    key_id[..end].to_string()
}

fn too_many(why: String, retry_after: u64) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failed_authentications",
        format!("{why}; retry after {retry_after} s"),
    );
    e.retry_after = Some(retry_after);
    e
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters are plain numbers: a panic elsewhere cannot leave them torn.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, Default)]
struct Window {
    started: Option<Instant>,
    failures: u32,
    /// Attempts started and not yet ended, whatever their window.
    in_flight: u32,
}

impl Window {
    fn expired(&self, now: Instant) -> bool {
        self.started
            .is_none_or(|started| now.duration_since(started) >= WINDOW)
    }

    fn retry_after(&self, now: Instant) -> u64 {
        let elapsed = self.started.map_or(WINDOW, |s| now.duration_since(s));
        let left = WINDOW.saturating_sub(elapsed);
        left.as_secs() + u64::from(left.subsec_nanos() > 0)
    }
}

struct Windows<K> {
    map: HashMap<K, Window>,
}

impl<K> Default for Windows<K> {
    fn default() -> Self {
        Windows {
            map: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> Windows<K> {
    /// The counts as they stand now: failures of an expired window are
    /// gone.
    fn live<Q>(&self, key: &Q, now: Instant) -> Window
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut w = self.map.get(key).copied().unwrap_or_default();
        if w.expired(now) {
            w.failures = 0;
        }
        w
    }

    /// The entry of `key`, made (room being made first) if there is none,
    /// its failures reset if its window is over.
    fn entry(&mut self, key: K, now: Instant) -> &mut Window {
        if !self.map.contains_key(&key) && self.map.len() >= MAX_TRACKED {
            self.map.retain(|_, w| w.in_flight > 0 || !w.expired(now));
            if self.map.len() >= MAX_TRACKED
                && let Some(oldest) = self
                    .map
                    .iter()
                    .min_by_key(|(_, w)| w.started)
                    .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
        let w = self.map.entry(key).or_default();
        if w.expired(now) {
            w.started = Some(now);
            w.failures = 0;
        }
        w
    }

    /// An attempt ended: it leaves the in-flight count (if it was in it),
    /// and a failure is counted.
    fn end(&mut self, key: K, was_in_flight: bool, failed: bool, now: Instant) {
        if failed {
            self.entry(key.clone(), now).failures += 1;
        }
        if was_in_flight && let Some(w) = self.map.get_mut(&key) {
            w.in_flight = w.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(limiter: &AuthLimiter, source: IpAddr, key: &str, now: Instant) {
        match limiter.enter(Some(source), Some(key), now) {
            Ok(Entry::Go(p)) => limiter.settle(p, Outcome::Failed, now),
            _ => panic!("the attempt was let through"),
        }
    }

    #[test]
    fn stays_bounded() {
        let mut w = Windows::<u32>::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            w.end(i, false, true, now);
        }
        assert_eq!(w.map.len(), MAX_TRACKED);
    }

    #[test]
    fn a_key_over_its_limit_is_refused_only_to_failing_sources() {
        let limiter = AuthLimiter::default();
        let now = Instant::now();
        let guesser: IpAddr = [10, 0, 0, 1].into();
        let robot: IpAddr = [10, 0, 0, 2].into();
        for _ in 0..limiter.limits.per_key {
            fail(&limiter, guesser, "AK", now);
        }
        assert!(limiter.enter(Some(guesser), Some("AK"), now).is_err());
        assert!(matches!(
            limiter.enter(Some(robot), Some("AK"), now),
            Ok(Entry::Go(_))
        ));
        assert!(matches!(
            limiter.enter(Some(guesser), Some("AK"), now + WINDOW),
            Ok(Entry::Go(_))
        ));
    }

    #[test]
    fn attempts_in_flight_count_and_a_limit_of_zero_is_off() {
        let limiter = AuthLimiter::new(FailureLimits {
            per_source: 2,
            per_key: 0,
        });
        let now = Instant::now();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let Ok(Entry::Go(a)) = limiter.enter(Some(ip), Some("A"), now) else {
            panic!("first")
        };
        let Ok(Entry::Go(_b)) = limiter.enter(Some(ip), Some("B"), now) else {
            panic!("second")
        };
        assert!(matches!(
            limiter.enter(Some(ip), Some("C"), now),
            Ok(Entry::Wait)
        ));
        // A success is taken back, and trusts its pair.
        limiter.settle(a, Outcome::Authenticated, now);
        assert!(matches!(
            limiter.enter(Some(ip), Some("C"), now),
            Ok(Entry::Go(_))
        ));
        let off = AuthLimiter::new(FailureLimits {
            per_source: 0,
            per_key: 0,
        });
        for _ in 0..100 {
            fail(&off, ip, "A", now);
        }
    }
}
