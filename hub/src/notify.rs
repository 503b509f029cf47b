//! Notifications out: sends the deliveries `db/notifications.rs` queues,
//! signed (`signature.rs`), with retries and back-off. Every hub runs it;
//! a delivery is claimed before it is sent, so one hub sends each attempt.
//! It runs beside everything else and sessions never wait on it: a slow or
//! dead receiver holds only its own delivery's task.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::api::Hub;
use crate::db::notifications::{self, Attempt, Due};
use crate::db::now_ms;
use crate::signature;

/// Attempts per delivery; the waits between them double from 1 s (about
/// two minutes in all).
pub const MAX_ATTEMPTS: u32 = 8;
/// One attempt's limit.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// A claimed delivery is another hub's to take after this.
const CLAIM_MS: i64 = 60_000;
/// Deliveries in flight at once, per hub.
const IN_FLIGHT: usize = 32;
/// The longest the sender sleeps without looking.
const LOOK_EVERY: Duration = Duration::from_millis(500);

/// Sends due deliveries until the hub stops.
pub async fn run(hub: Arc<Hub>) {
    let client = match client(hub.notify_private_addresses) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot make the notifications' HTTP client; none is sent");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let free = slots.available_permits() as i64;
        let now = now_ms();
        let claimed = if free > 0 {
            hub.db
                .call(move |conn| notifications::claim_due(conn, now, now + CLAIM_MS, free))
                .await
        } else {
            Ok(Vec::new())
        };
        match claimed {
            Ok(due) => {
                for delivery in due {
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        return;
                    };
                    let (hub, client) = (hub.clone(), client.clone());
                    tokio::spawn(async move {
                        attempt(&hub, &client, delivery).await;
                        drop(permit);
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "claiming notification deliveries"),
        }
        let next = hub
            .db
            .call(notifications::earliest_due)
            .await
            .ok()
            .flatten();
        let sleep = next
            .map(|due| Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64))
            .unwrap_or(LOOK_EVERY)
            .clamp(Duration::from_millis(20), LOOK_EVERY);
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = hub.notifications_wake.notified() => {}
        }
    }
}

/// Sends one delivery and records what it met.
async fn attempt(hub: &Hub, client: &reqwest::Client, d: Due) {
    let master = hub.master.clone();
    let id = d.notification_id;
    let target = hub
        .db
        .call(move |conn| notifications::target(conn, id, &master))
        .await;
    let result = match target {
        Ok(Some((url, secret))) => send(hub, client, &url, &secret, &d).await,
        Ok(None) => Err((None, "the notification was deleted".to_string())),
        Err(e) => Err((None, e.to_string())),
    };
    let attempts = d.attempts + 1;
    let now = now_ms();
    let recorded = match result {
        Ok(code) => Attempt {
            status_code: Some(code),
            error: None,
            retry_at_ms: None,
            delivered: true,
        },
        Err((code, error)) => {
            tracing::warn!(delivery = d.id, attempts, %error, "a notification was not delivered");
            Attempt {
                status_code: code,
                error: Some(error),
                retry_at_ms: (attempts < MAX_ATTEMPTS)
                    .then(|| now + 1000 * (1i64 << (attempts - 1).min(16))),
                delivered: false,
            }
        }
    };
    let id = d.id;
    if let Err(e) = hub
        .db
        .call(move |conn| notifications::record(conn, id, &recorded, now))
        .await
    {
        tracing::warn!(delivery = id, error = %e, "recording a notification's attempt");
    }
}

/// A 2xx answer's status, or the status (if any) and what went wrong.
async fn send(
    hub: &Hub,
    client: &reqwest::Client,
    url: &str,
    secret: &[u8],
    d: &Due,
) -> Result<u16, (Option<u16>, String)> {
    // An address written in the URL is checked here; a name, by
    // `PublicOnly` as the connection resolves it.
    allowed_as_written(url, hub.notify_private_addresses).map_err(|e| (None, e))?;
    let t = jiff::Timestamp::now().as_second();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header(
            signature::HEADER,
            signature::header_value(secret, t, d.payload.as_bytes()),
        )
        .header("tasuki-delivery", d.id.to_string())
        .header("tasuki-event", d.event.as_str())
        .body(d.payload.clone())
        .send()
        .await
        // Without the URL, which may hold a credential.
        .map_err(|e| (None, with_causes(&e.without_url())))?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        Ok(status)
    } else {
        Err((Some(status), format!("the receiver answered {status}")))
    }
}

/// The notifications' HTTP client: no redirects, a time limit, and, unless
/// `private_ok`, names resolved by [`PublicOnly`] and no proxy.
fn client(private_ok: bool) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tasuki-hub/", env!("CARGO_PKG_VERSION")));
    if !private_ok {
        // Straight to the receiver: through a proxy (HTTPS_PROXY, ...) the
        // resolver would only ever see the proxy's name, and the proxy
        // would reach the private names it must not.
        builder = builder.dns_resolver(PublicOnly).no_proxy();
    }
    builder.build()
}

/// The resolver of the notifications' client while private receivers are
/// refused: a key holder must not turn the hub into a client of what only
/// the hub's network can reach. The addresses it checks are the ones the
/// connection then uses, from one lookup, so a name cannot resolve to a
/// public address for the check and a private one for the connection (DNS
/// rebinding). (reqwest does not resolve an address written in the URL:
/// [`allowed_as_written`] checks those.)
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .collect();
            for addr in &addresses {
                refuse_private(&host, addr.ip())?;
            }
            let addresses: reqwest::dns::Addrs = Box::new(addresses.into_iter());
            Ok(addresses)
        })
    }
}

/// An error and what caused it, as one line: reqwest's own says only
/// "error sending request".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Refuses a receiver whose URL names a private address (or `localhost`)
/// unless the hub allows them: when a notification is made, and before
/// each attempt (a name is checked as it is resolved, by `PublicOnly`).
pub fn allowed_as_written(url: &str, private_ok: bool) -> Result<(), String> {
    if private_ok {
        return Ok(());
    }
    let (host, _) = host_of(url)?;
    if host.eq_ignore_ascii_case("localhost") {
        return refuse_private(&host, IpAddr::from([127, 0, 0, 1]));
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => refuse_private(&host, ip),
        Err(_) => Ok(()),
    }
}

fn host_of(url: &str) -> Result<(String, u16), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("the URL does not parse: {e}"))?;
    let host = parsed.host_str().ok_or("the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, parsed.port_or_known_default().unwrap_or(443)))
}

fn refuse_private(host: &str, ip: IpAddr) -> Result<(), String> {
    if private(ip) {
        return Err(format!(
            "{host} is {ip}, a private address; the hub sends notifications to public \
             addresses only unless started with --notify-private-addresses"
        ));
    }
    Ok(())
}

fn private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                // 0.0.0.0/8 ("this network"), 240.0.0.0/4 (reserved).
                || a == 0
                || a >= 240
                // 100.64.0.0/10, carrier-grade NAT.
                || (a == 100 && (b & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // An IPv4 address inside: mapped (::ffff:a.b.c.d), compatible
            // (::a.b.c.d), NAT64 (64:ff9b::/96), 6to4 (2002:ab.cd::/16).
            let inner = if s[0] == 0x2002 {
                Some(std::net::Ipv4Addr::new(
                    (s[1] >> 8) as u8,
                    s[1] as u8,
                    (s[2] >> 8) as u8,
                    s[2] as u8,
                ))
            } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0; 6] {
                Some(std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                ))
            } else {
                v6.to_ipv4_mapped()
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link-local.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || inner.is_some_and(|v4| private(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name that resolves to a private address is refused by the lookup
    /// the connection uses: nothing connects to the listener.
    #[tokio::test]
    async fn a_name_that_resolves_to_a_private_address_is_never_connected_to() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let error = client(false)
            .unwrap()
            .post(format!("http://localhost:{port}/hook"))
            .send()
            .await
            .expect_err("refused");
        let text = with_causes(&error.without_url());
        assert!(
            text.contains("localhost is 127.0.0.1, a private address"),
            "{text}"
        );
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "the hub connected to a private address");
        // Allowed, the same name is connected to.
        let sent = tokio::spawn(async move {
            client(true)
                .unwrap()
                .post(format!("http://localhost:{port}/hook"))
                .send()
                .await
        });
        let accepted = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await;
        assert!(
            matches!(accepted, Ok(Ok(_))),
            "not connected to when allowed"
        );
        sent.abort();
    }

    #[test]
    fn private_addresses_are_known() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "100.128.0.1",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
        ] {
            assert!(!private(ip.parse().unwrap()), "{ip}");
        }
    }
}
