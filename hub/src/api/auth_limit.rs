//! Failed authentication, limited: failed secrets at `POST /v1/token` and
//! failed bearer tokens count per source address and per claimed access
//! key id, in one-minute windows. Past a limit the hub answers 429 with
//! `Retry-After` without checking the credential, so guesses stop being
//! tested. Successful calls are never counted or slowed.
//!
//! A source over its limit is refused whatever key it names. A key id over
//! its limit is refused only to sources that have themselves failed in the
//! window: whoever knows a key id (it is no secret) cannot lock out the
//! robots that use that key, while a guesser spread over many addresses
//! still gets one guess per address per minute.
//!
//! The counters live in memory, in maps of bounded size: expired entries
//! go first, then the oldest window.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{Extensions, StatusCode};

use super::error::ApiError;
use super::query::shorten;

/// Failed attempts allowed a minute.
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
/// Entries each map keeps at most.
const MAX_TRACKED: usize = 16 * 1024;
/// Key ids are tracked by at most this many bytes (longer ones name no
/// key anyway).
const MAX_TRACKED_KEY_ID: usize = 128;

#[derive(Default)]
pub struct AuthLimiter {
    limits: FailureLimits,
    sources: Mutex<Windows<IpAddr>>,
    keys: Mutex<Windows<String>>,
}

impl AuthLimiter {
    pub fn new(limits: FailureLimits) -> AuthLimiter {
        AuthLimiter {
            limits,
            ..AuthLimiter::default()
        }
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
        self.check(source, key.as_deref(), Instant::now())?;
        let result = attempt.await;
        if let Err(e) = &result
            && e.status == StatusCode::UNAUTHORIZED
        {
            self.failed(source, key, Instant::now());
        }
        result
    }

    fn check(
        &self,
        source: Option<IpAddr>,
        key: Option<&str>,
        now: Instant,
    ) -> Result<(), ApiError> {
        let mut source_failed = source.is_none();
        if let Some(ip) = source {
            let sources = lock(&self.sources);
            if let Some(w) = sources.live(&ip, now) {
                source_failed = w.failures > 0;
                if w.failures >= self.limits.per_source {
                    return Err(too_many(
                        format!(
                            "{} failed authentications from {ip} in the last minute (the limit is \
                             {}, --auth-failures-per-source)",
                            w.failures, self.limits.per_source
                        ),
                        w.retry_after(now),
                    ));
                }
            }
        }
        if let Some(key) = key
            && source_failed
        {
            let keys = lock(&self.keys);
            if let Some(w) = keys.live(key, now)
                && w.failures >= self.limits.per_key
            {
                return Err(too_many(
                    format!(
                        "{} failed authentications for the access key `{}` in the last minute \
                         (the limit is {}, --auth-failures-per-key)",
                        w.failures,
                        shorten(key),
                        self.limits.per_key
                    ),
                    w.retry_after(now),
                ));
            }
        }
        Ok(())
    }

    fn failed(&self, source: Option<IpAddr>, key: Option<String>, now: Instant) {
        if let Some(ip) = source {
            lock(&self.sources).count(ip, now);
        }
        if let Some(key) = key {
            lock(&self.keys).count(key, now);
        }
    }
}

/// The caller's address, as the accept loop recorded it.
pub fn peer_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// IPv6 hosts get a /64 each, so one host counts as one source.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
        v4 => v4,
    }
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

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

impl Window {
    fn retry_after(&self, now: Instant) -> u64 {
        let left = WINDOW.saturating_sub(now.duration_since(self.started));
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
    fn live<Q>(&self, key: &Q, now: Instant) -> Option<Window>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .get(key)
            .copied()
            .filter(|w| now.duration_since(w.started) < WINDOW)
    }

    fn count(&mut self, key: K, now: Instant) {
        if !self.map.contains_key(&key) && self.map.len() >= MAX_TRACKED {
            self.map
                .retain(|_, w| now.duration_since(w.started) < WINDOW);
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
        let w = self.map.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(w.started) >= WINDOW {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded() {
        let mut w = Windows::<u32>::default();
        let now = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 100) {
            w.count(i, now);
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
            limiter.failed(Some(guesser), Some("AK".into()), now);
        }
        assert!(limiter.check(Some(guesser), Some("AK"), now).is_err());
        assert!(limiter.check(Some(robot), Some("AK"), now).is_ok());
        assert!(
            limiter
                .check(Some(guesser), Some("AK"), now + WINDOW)
                .is_ok()
        );
    }
}
