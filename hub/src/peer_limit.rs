//! Open connections per client address. Without a cap one address could
//! take every connection the hub allows (`--max-connections`) and hold
//! them; with it, it takes at most `--max-connections-per-address`, and
//! its connections past that are closed as soon as they are accepted.
//! Loopback counts like any other address, so a hub behind a reverse proxy
//! on the same machine needs the cap raised or turned off (0).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The connections each address has open.
pub struct PerAddress {
    /// 0: no cap.
    max: usize,
    open: Mutex<HashMap<IpAddr, Open>>,
}

#[derive(Default)]
struct Open {
    count: usize,
    /// Whether reaching the cap was logged since the address last had
    /// none open, so that a client hammering at its cap is logged once.
    logged: bool,
}

/// One open connection of `ip`; the count goes down when it is dropped.
pub struct Slot {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    pub fn new(max: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a new connection from `ip`, or `None` at its cap.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = source_of(ip);
        if self.max > 0 {
            let mut open = self.lock();
            let entry = open.entry(ip).or_default();
            if entry.count >= self.max {
                if !entry.logged {
                    entry.logged = true;
                    tracing::warn!(
                        address = %ip,
                        max_connections_per_address = self.max,
                        "an address is at its connection limit; its new connections are closed"
                    );
                }
                return None;
            }
            entry.count += 1;
        }
        Some(Slot {
            owner: self.clone(),
            ip,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Open>> {
        // Plain counts: a panic elsewhere cannot leave them torn.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.owner.max == 0 {
            return;
        }
        let mut open = self.owner.lock();
        if let Some(entry) = open.get_mut(&self.ip) {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What counts as one client: an IPv4 address, or an IPv6 /64 (what one
/// host usually has to choose from).
pub fn source_of(ip: IpAddr) -> IpAddr {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_address_and_gives_slots_back() {
        let limit = PerAddress::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = limit.enter(a).expect("first");
        let _second = limit.enter(a).expect("second");
        assert!(limit.enter(a).is_none());
        assert!(limit.enter(b).is_some());
        drop(first);
        assert!(limit.enter(a).is_some());
        let off = PerAddress::new(0);
        let slots: Vec<_> = (0..1000).map(|_| off.enter(a)).collect();
        assert!(slots.iter().all(Option::is_some));
    }
}
