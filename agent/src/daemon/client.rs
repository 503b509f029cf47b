//! The hub client: signs its own short-lived JWTs, speaks the robot
//! protocol, and retries calmly: jittered exponential backoff for network
//! errors and 5xx (at most 2 s apart for calls about a leased session:
//! [`LEASED_RETRY_MAX`]), `Retry-After` for 429, one immediate re-sign for
//! 401. Artifacts are streamed from their files.
//!
//! A robot may know several hubs of one database (`control_plane.url`,
//! then `control_plane.fallback_urls`): every call goes to the current one
//! ([`HubUrls`]), and an attempt that finds it not answering moves every
//! later attempt to the next. The robot protocol is idempotent
//! (docs/protocol.md), so a call retried at another hub is safe.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tasuki_protocol::robot::{LEASE_HEADER, LEASE_LOST, POLL_CLIENT_TIMEOUT_SECONDS};
use tasuki_protocol::{
    Claims, ErrorBody, FinishSession, LogsStored, PollRequest, PollResponse, RegisterRobot,
    RobotCheck, RobotRegistered, SessionQueue, StepsStored, StepsUpdate,
};
use tokio_util::sync::CancellationToken;

use super::config::Credentials;
use super::health::Metrics;
use crate::settings::Settings;

/// Tokens live this long; DESIGN.md asks for short-lived ones.
const TOKEN_SECONDS: i64 = 600;
/// A token is re-signed when it has less than this left.
const RESIGN_BEFORE_SECONDS: i64 = 60;
/// Any call but a poll gives up after this long without an answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The hub's 403 code for a robot registered under another access key.
pub const ROBOT_OF_ANOTHER_KEY: &str = "robot_of_another_key";
/// A 403 about the key's scopes: the one 403 signing afresh may mend.
const INSUFFICIENT_SCOPE: &str = "insufficient_scope";
/// The hub's 409 code for a robot name registered by another instance.
pub const ROBOT_NAME_TAKEN: &str = "robot_name_taken";

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The network or the hub failed; worth retrying.
    #[error("{0}")]
    Transient(String),
    /// 429: retry after the given time.
    #[error("rate limited; retry after {0:?}")]
    RateLimited(Duration),
    /// 401/403: the key, the clock or the scopes are wrong.
    #[error("the hub refused our credentials: {0}")]
    Auth(String),
    /// 409 lease_lost: stop working on the session.
    #[error("the lease was lost: {0}")]
    LeaseLost(String),
    /// Any other 4xx: this request will never succeed.
    #[error("the hub rejected the request ({status}): {code}: {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    #[error("cancelled")]
    Cancelled,
}

impl CallError {
    fn retryable(&self) -> bool {
        matches!(
            self,
            CallError::Transient(_) | CallError::RateLimited(_) | CallError::Auth(_)
        )
    }
}

/// The hub URLs a robot may call, in order, and which one calls go to now.
/// Shared by every call, so that one call finding a hub gone spares the
/// others the same discovery.
#[derive(Debug)]
pub struct HubUrls {
    /// Never empty; without trailing slashes.
    urls: Vec<String>,
    /// The index in `urls` calls go to now.
    current: AtomicUsize,
}

impl HubUrls {
    /// `urls` as [`crate::settings::ControlPlane::hub_urls`] gives them:
    /// the first is where calls start.
    pub fn new(urls: Vec<String>) -> anyhow::Result<HubUrls> {
        anyhow::ensure!(!urls.is_empty(), "no hub URL is set");
        Ok(HubUrls {
            urls: urls
                .into_iter()
                .map(|url| url.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
        })
    }

    /// The URL calls go to now, and its index (for [`HubUrls::failed`]).
    fn current(&self) -> (usize, &str) {
        let index = self.current.load(Ordering::SeqCst) % self.urls.len();
        (index, &self.urls[index])
    }

    /// The URL calls go to now, for logs and `/healthz` (mask it).
    pub fn current_url(&self) -> &str {
        self.current().1
    }

    /// The hub at `used` stopped answering an attempt (`why`): later
    /// attempts go to the next URL, wrapping around. Only the first report
    /// about `used` moves: the calls that were under way at the dead hub
    /// all fail there, and each of them moving one step would skip hubs
    /// that work. Returns whether this report moved.
    fn failed(&self, used: usize, why: &str) -> bool {
        if self.urls.len() < 2 {
            return false;
        }
        let next = (used + 1) % self.urls.len();
        let moved = self
            .current
            .compare_exchange(used, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if moved {
            tracing::warn!(
                from = %crate::settings::masked_url(&self.urls[used]),
                to = %crate::settings::masked_url(&self.urls[next]),
                error = %why,
                "the hub stopped answering; moving to the next hub URL"
            );
        }
        moved
    }
}

/// Whether a failed request says the hub is not there to answer (so that
/// another hub of the database should be asked), rather than that it
/// answered badly: it could not be connected to (refused, DNS, TLS), the
/// connection broke (reset, closed mid-answer), or it did not answer in
/// time. A request that could not be built or an answer that does not
/// parse would fail the same at every hub.
fn hub_not_answering(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// Whether an HTTP status says the hub behind it is not answering: 502,
/// 503 and 504 come from a proxy or load balancer in front of a hub that
/// is down or overloaded (tasuki-hub itself sends none of them). A 500 is
/// the hub answering that it failed, most often at the database every hub
/// shares, and a 4xx is about the request: moving would not help either.
fn gateway_without_hub(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

pub struct HubClient {
    http: reqwest::Client,
    hubs: Arc<HubUrls>,
    robot: String,
    signer: Signer,
    /// Counts failed attempts, by call.
    metrics: Arc<Metrics>,
}

struct Signer {
    key_id: String,
    key: EncodingKey,
    issuer: String,
    audience: String,
    cached: Mutex<Option<(String, i64)>>,
}

impl Signer {
    fn token(&self, force: bool) -> Result<String, CallError> {
        let now = jiff::Timestamp::now().as_second();
        let mut cached = self.cached.lock().unwrap_or_else(|p| p.into_inner());
        if !force
            && let Some((token, exp)) = cached.as_ref()
            && exp - now > RESIGN_BEFORE_SECONDS
        {
            return Ok(token.clone());
        }
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: self.key_id.clone(),
            aud: self.audience.clone(),
            nbf: now,
            exp: now + TOKEN_SECONDS,
            scopes: "robot".into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| CallError::Auth(format!("cannot sign a token: {e}")))?;
        *cached = Some((token.clone(), now + TOKEN_SECONDS));
        Ok(token)
    }
}

impl HubClient {
    pub fn new(
        config: &Settings,
        creds: &Credentials,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<HubClient> {
        let http = hub_http(config)
            .map_err(anyhow::Error::msg)?
            // Small request/response exchanges: Nagle plus delayed ACKs
            // would add 40 ms to some.
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("tasuki/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HubClient {
            http,
            hubs: Arc::new(HubUrls::new(config.control_plane.hub_urls())?),
            robot: config.control_plane.name.clone(),
            metrics,
            signer: Signer {
                key_id: creds.access_key_id.clone(),
                key: EncodingKey::from_secret(creds.secret_access_key.expose_secret().as_bytes()),
                issuer: config.control_plane.issuer.clone(),
                audience: config.control_plane.audience.clone(),
                cached: Mutex::new(None),
            },
        })
    }

    /// The hub URL calls go to now.
    pub fn base_url(&self) -> &str {
        self.hubs.current_url()
    }

    /// The hub URLs and which one is in use, shared with `/healthz`.
    pub fn hubs(&self) -> Arc<HubUrls> {
        self.hubs.clone()
    }

    /// The robot's name on the hub.
    pub fn robot(&self) -> &str {
        &self.robot
    }

    /// One attempt of one call.
    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        lease: Option<&str>,
        body: Option<&[u8]>,
        timeout: Duration,
        resign: bool,
    ) -> Result<T, CallError> {
        let result = self
            .attempt(method.clone(), path, lease, body, timeout, resign)
            .await;
        if result.is_err() {
            self.metrics.hub_error(call_name(&method, path));
        }
        result
    }

    async fn attempt<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        lease: Option<&str>,
        body: Option<&[u8]>,
        timeout: Duration,
        resign: bool,
    ) -> Result<T, CallError> {
        let token = self.signer.token(resign)?;
        let (used, base) = self.hubs.current();
        // Transient either way; only a hub not answering moves later
        // attempts to the next hub.
        let transient = |e: &reqwest::Error, why: String| {
            if hub_not_answering(e) {
                self.hubs.failed(used, &why);
            }
            CallError::Transient(why)
        };
        let mut req = self
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(token)
            .timeout(timeout);
        if let Some(lease) = lease {
            req = req.header(LEASE_HEADER, lease);
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let resp = req.send().await.map_err(|e| transient(&e, describe(&e)))?;
        let status = resp.status();
        if status.is_success() {
            if status == StatusCode::NO_CONTENT {
                return serde_json::from_str("null")
                    .map_err(|e| CallError::Transient(e.to_string()));
            }
            return resp
                .json::<T>()
                .await
                .map_err(|e| transient(&e, format!("reading the answer: {}", describe(&e))));
        }
        if gateway_without_hub(status) {
            self.hubs.failed(used, &status.to_string());
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body: Option<ErrorBody> = resp.json().await.ok();
        let (code, message) = body
            .map(|b| (b.error.code, b.error.message))
            .unwrap_or_else(|| (String::new(), status.to_string()));
        Err(match status.as_u16() {
            429 => CallError::RateLimited(Duration::from_secs(retry_after.unwrap_or(1))),
            // Only a missing scope (or no body to say) is about the
            // credentials; any other 403 (the robot is another key's, the
            // key may not give a label, has its most robots) is an answer
            // that signing afresh or waiting cannot change.
            403 if !code.is_empty() && code != INSUFFICIENT_SCOPE => CallError::Rejected {
                status: 403,
                code,
                message,
            },
            401 | 403 => CallError::Auth(format!("{code}: {message}")),
            409 if code == LEASE_LOST => CallError::LeaseLost(message),
            s if status.is_server_error() || s == 408 => {
                CallError::Transient(format!("{status}: {code} {message}"))
            }
            s => CallError::Rejected {
                status: s,
                code,
                message,
            },
        })
    }

    /// A call retried until it succeeds, fails for good, or `stop` fires.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        lease: Option<&str>,
        body: Option<&[u8]>,
        timeout: Duration,
        stop: &CancellationToken,
    ) -> Result<T, CallError> {
        let mut delays = backoff();
        let mut resigned = false;
        loop {
            let attempt = self.send(method.clone(), path, lease, body, timeout, false);
            let result = tokio::select! {
                r = attempt => r,
                _ = stop.cancelled() => return Err(CallError::Cancelled),
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) if !e.retryable() => return Err(e),
                Err(e) => e,
            };
            let delay = match &err {
                // The clock or the key may have changed: sign afresh once
                // before backing off.
                CallError::Auth(_) if !resigned => {
                    resigned = true;
                    let _ = self.signer.token(true);
                    Duration::ZERO
                }
                CallError::RateLimited(after) => *after,
                _ => retry_delay(&mut delays, lease.is_some()),
            };
            tracing::warn!(%path, error = %err, retry_in_ms = delay.as_millis() as u64, "hub call failed");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return Err(CallError::Cancelled),
            }
        }
    }

    pub async fn register(
        &self,
        req: &RegisterRobot,
        stop: &CancellationToken,
    ) -> Result<RobotRegistered, CallError> {
        let path = format!("/v1/robot/robots/{}", self.robot);
        let body = json(req)?;
        self.call(Method::PUT, &path, None, Some(&body), CALL_TIMEOUT, stop)
            .await
    }

    /// Whether the robot is registered to this key and machine; one
    /// attempt (for `tasuki doctor`).
    pub async fn check_registration(&self, instance_id: &str) -> Result<RobotCheck, CallError> {
        let path = format!("/v1/robot/robots/{}?instance_id={instance_id}", self.robot);
        self.send(Method::GET, &path, None, None, CALL_TIMEOUT, false)
            .await
    }

    /// One poll, once: the caller owns the retry loop, since what it sends
    /// changes between attempts.
    pub async fn poll_once(&self, req: &PollRequest) -> Result<PollResponse, CallError> {
        let path = format!("/v1/robot/robots/{}/poll", self.robot);
        let timeout = Duration::from_secs(POLL_CLIENT_TIMEOUT_SECONDS);
        let body = json(req)?;
        match self
            .send(Method::POST, &path, None, Some(&body), timeout, false)
            .await
        {
            Err(CallError::Auth(_)) => {
                self.send(Method::POST, &path, None, Some(&body), timeout, true)
                    .await
            }
            other => other,
        }
    }

    /// Hands back a lease this robot will not run. Retried like every
    /// call: a lease neither released nor listed in a poll would otherwise
    /// end as `robot_lost` although it never ran.
    pub async fn release(
        &self,
        session: i64,
        lease: &str,
        stop: &CancellationToken,
    ) -> Result<(), CallError> {
        let path = format!("/v1/robot/sessions/{session}/release");
        match self
            .call::<serde_json::Value>(Method::POST, &path, Some(lease), None, CALL_TIMEOUT, stop)
            .await
        {
            // Not ours any more: an earlier attempt whose answer was lost
            // released it.
            Err(CallError::LeaseLost(_)) => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Posts a log batch already serialised as `{"lines": [...]}`: the
    /// spool holds each line as JSON, and passing it through saves a parse
    /// and a serialisation per line.
    pub async fn logs(
        &self,
        session: i64,
        lease: &str,
        batch: &[u8],
        stop: &CancellationToken,
    ) -> Result<LogsStored, CallError> {
        let path = format!("/v1/robot/sessions/{session}/logs");
        self.call(
            Method::POST,
            &path,
            Some(lease),
            Some(batch),
            CALL_TIMEOUT,
            stop,
        )
        .await
    }

    pub async fn steps(
        &self,
        session: i64,
        lease: &str,
        update: &StepsUpdate,
        stop: &CancellationToken,
    ) -> Result<StepsStored, CallError> {
        let path = format!("/v1/robot/sessions/{session}/steps");
        let body = json(update)?;
        self.call(
            Method::PUT,
            &path,
            Some(lease),
            Some(&body),
            CALL_TIMEOUT,
            stop,
        )
        .await
    }

    /// Uploads the file at `path` (`len` bytes), streamed from the disk
    /// rather than read whole: an artifact may be 50 MB.
    pub async fn artifact(
        &self,
        session: i64,
        lease: &str,
        name: &str,
        path: &Path,
        len: u64,
        stop: &CancellationToken,
    ) -> Result<(), CallError> {
        let path_on_hub = format!("/v1/robot/sessions/{session}/artifacts/{name}");
        let mut delays = backoff();
        loop {
            let token = self.signer.token(false)?;
            let (used, base) = self.hubs.current();
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|e| CallError::Rejected {
                    status: 0,
                    code: "unreadable_artifact".into(),
                    message: format!("cannot read {}: {e}", path.display()),
                })?;
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
            let attempt = self
                .http
                .put(format!("{base}{path_on_hub}"))
                .bearer_auth(token)
                .header(LEASE_HEADER, lease)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .timeout(Duration::from_secs(120))
                .body(body)
                .send();
            let result = tokio::select! {
                r = attempt => r,
                _ = stop.cancelled() => return Err(CallError::Cancelled),
            };
            let delay = match result {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => Duration::from_secs(1),
                Ok(r) if r.status().is_client_error() => {
                    let status = r.status().as_u16();
                    let body: Option<ErrorBody> = r.json().await.ok();
                    let (code, message) = body
                        .map(|b| (b.error.code, b.error.message))
                        .unwrap_or_default();
                    if status == 409 && code == LEASE_LOST {
                        return Err(CallError::LeaseLost(message));
                    }
                    return Err(CallError::Rejected {
                        status,
                        code,
                        message,
                    });
                }
                Ok(r) => {
                    if gateway_without_hub(r.status()) {
                        self.hubs.failed(used, &r.status().to_string());
                    }
                    retry_delay(&mut delays, true)
                }
                Err(e) => {
                    if hub_not_answering(&e) {
                        self.hubs.failed(used, &describe(&e));
                    }
                    retry_delay(&mut delays, true)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return Err(CallError::Cancelled),
            }
        }
    }

    pub async fn finish(
        &self,
        session: i64,
        lease: &str,
        report: &FinishSession,
        stop: &CancellationToken,
    ) -> Result<SessionQueue, CallError> {
        let path = format!("/v1/robot/sessions/{session}/finish");
        let body = json(report)?;
        self.call(
            Method::POST,
            &path,
            Some(lease),
            Some(&body),
            CALL_TIMEOUT,
            stop,
        )
        .await
    }
}

/// An HTTP client builder for the hub: the system's trust roots plus
/// `control_plane.ca_file`'s. Certificates are always verified; there is
/// deliberately no way to turn that off.
pub fn hub_http(config: &Settings) -> Result<reqwest::ClientBuilder, String> {
    let builder = reqwest::Client::builder();
    Ok(match &config.ca_file {
        Some(path) => builder.tls_certs_merge(read_ca_file(path)?),
        None => builder,
    })
}

/// The certificates in a PEM file (`control_plane.ca_file`), checked as
/// trust roots.
pub fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let certs = reqwest::Certificate::from_pem_bundle(&bytes).map_err(|e| {
        format!(
            "{shown} is not a PEM file of certificates: {}",
            describe(&e)
        )
    })?;
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no certificate (a PEM file of `-----BEGIN CERTIFICATE-----` blocks)"
        ));
    }
    // Building a client parses each one as a trust root.
    reqwest::Client::builder()
        .tls_certs_merge(certs.clone())
        .build()
        .map_err(|e| {
            format!(
                "{shown}: a certificate in it is not a usable CA: {}",
                describe(&e)
            )
        })?;
    Ok(certs)
}

/// A warning when the hub's URL is plain `http://` to a host that is not
/// this machine: poll answers carry secret params, readable on the way.
pub fn plain_http_warning(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if parsed.scheme() != "http" {
        return None;
    }
    let host = parsed.host_str()?;
    let loopback = match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    (!loopback).then(|| {
        format!(
            "the hub's URL {} is plain http:// to another machine: sessions' secret params and \
             the robot's tokens cross the network unencrypted; use https:// (tasuki-hub's TLS or a \
             reverse proxy), with control_plane.ca_file for a private CA",
            crate::settings::masked_url(url)
        )
    })
}

fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, CallError> {
    serde_json::to_vec(value).map_err(|e| CallError::Rejected {
        status: 0,
        code: "unserialisable".into(),
        message: e.to_string(),
    })
}

/// Longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Longest wait between two attempts while the robot holds a lease (every
/// call about a session; polls while a session runs). The lease dies
/// `lease_ttl_seconds` (60 s) after its last renewal, so retries are kept
/// well inside that: after a network blackout the robot is back in touch
/// within about 2 s, and a blackout of up to the lease's life less the
/// renewal period (agent.rs) and these 2 s costs nothing. At one robot,
/// that is at most one attempt a second for each call under way: little
/// for a hub that is down, and only while a session runs.
pub const LEASED_RETRY_MAX: Duration = Duration::from_secs(2);

/// Jittered exponential backoff, 100 ms doubling to 30 s, forever.
pub fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(MAX_DELAY)
        .without_max_times()
        .build()
}

/// The next wait from `delays`, kept under [`LEASED_RETRY_MAX`] when the
/// robot holds a lease.
pub fn retry_delay(delays: &mut impl Iterator<Item = Duration>, leased: bool) -> Duration {
    let delay = delays.next().unwrap_or(MAX_DELAY);
    if leased {
        delay.min(LEASED_RETRY_MAX)
    } else {
        delay
    }
}

/// reqwest's errors nest their causes; the innermost says what happened.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// The call a robot-protocol path is, for the error counter's label:
/// `/v1/robot/sessions/7/logs` is `logs`, `PUT /v1/robot/robots/r` is
/// `register`.
fn call_name(method: &Method, path: &str) -> &'static str {
    let last = path.rsplit('/').next().unwrap_or("");
    match last {
        "poll" => "poll",
        "ack" => "ack",
        "release" => "release",
        "logs" => "logs",
        "steps" => "steps",
        "finish" => "finish",
        _ if path.contains("/artifacts") => "artifacts",
        _ if *method == Method::PUT => "register",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer {
            key_id: "TSKTEST".into(),
            key: EncodingKey::from_secret(b"secret"),
            issuer: "tasuki".into(),
            audience: "tasuki-hub".into(),
            cached: Mutex::new(None),
        }
    }

    fn claims_of(token: &str) -> Claims {
        jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(token).expect("a JWT")
    }

    #[test]
    fn plain_http_is_warned_about_unless_the_hub_is_this_machine() {
        for quiet in [
            "http://127.0.0.1:8080",
            "http://127.8.9.1",
            "http://localhost:8080/",
            "http://[::1]:8080",
            "https://hub.example.com",
            "https://10.0.0.5:8443",
        ] {
            assert_eq!(plain_http_warning(quiet), None, "{quiet}");
        }
        for loud in [
            "http://hub.example.com",
            "http://10.0.0.5:8080",
            "http://[2001:db8::1]:8080",
            "http://localhost.example.com",
        ] {
            let w = plain_http_warning(loud).unwrap_or_default();
            assert!(
                w.contains("plain http://") && w.contains("https://"),
                "{loud}: {w}"
            );
        }
        let w = plain_http_warning("http://robot:hunter2@hub.example.com").unwrap_or_default();
        assert!(
            w.contains("***@hub.example.com") && !w.contains("hunter2"),
            "{w}"
        );
    }

    fn hubs(urls: &[&str]) -> HubUrls {
        HubUrls::new(urls.iter().map(|u| u.to_string()).collect()).expect("some URLs")
    }

    #[test]
    fn failures_seen_on_one_hub_move_calls_one_step_and_wrap_around() {
        let h = hubs(&["http://a", "http://b/", "http://c"]);
        assert_eq!(h.current(), (0, "http://a"));
        // Two calls under way at `a` both fail there: one step, not two.
        assert!(h.failed(0, "connection refused"));
        assert!(!h.failed(0, "connection reset"));
        assert_eq!(h.current(), (1, "http://b"), "trailing slash trimmed");
        // A late failure from `a` after `b` is in use leaves `b` alone.
        assert!(!h.failed(0, "timed out"));
        assert_eq!(h.current_url(), "http://b");
        assert!(h.failed(1, "connection refused"));
        assert!(h.failed(2, "connection refused"));
        assert_eq!(h.current(), (0, "http://a"), "wraps around");
    }

    #[test]
    fn a_single_hub_url_never_moves() {
        let h = hubs(&["http://a"]);
        assert!(!h.failed(0, "connection refused"));
        assert_eq!(h.current(), (0, "http://a"));
        assert!(HubUrls::new(Vec::new()).is_err());
    }

    #[test]
    fn only_gateway_statuses_say_the_hub_is_not_answering() {
        for moves in [502, 503, 504] {
            let status = StatusCode::from_u16(moves).expect("a status");
            assert!(gateway_without_hub(status), "{moves}");
        }
        for stays in [400, 401, 403, 404, 408, 409, 429, 500] {
            let status = StatusCode::from_u16(stays).expect("a status");
            assert!(!gateway_without_hub(status), "{stays}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_counts_as_the_hub_not_answering() {
        // A port that was just free: nothing listens there.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let e = reqwest::Client::new()
            .get(format!("http://{closed}/v1/robot"))
            .send()
            .await
            .expect_err("nothing listens");
        assert!(hub_not_answering(&e), "{e:?}");
    }

    #[test]
    fn tokens_are_short_lived_and_reused_until_near_expiry() {
        let s = signer();
        let first = s.token(false).unwrap();
        let c = claims_of(&first);
        assert_eq!(c.exp - c.nbf, TOKEN_SECONDS);
        assert_eq!((c.sub.as_str(), c.scopes.as_str()), ("TSKTEST", "robot"));
        assert_eq!(s.token(false).unwrap(), first, "reused while fresh");
        // Near its expiry, a new one is signed.
        let now = jiff::Timestamp::now().as_second();
        *s.cached.lock().unwrap() = Some((first.clone(), now + RESIGN_BEFORE_SECONDS - 1));
        let second = s.token(false).unwrap();
        assert!(claims_of(&second).exp >= now + TOKEN_SECONDS);
        let cached_exp = s.cached.lock().unwrap().as_ref().map(|(_, exp)| *exp);
        assert!(
            cached_exp >= Some(now + TOKEN_SECONDS),
            "the fresh token replaced the old one in the cache"
        );
    }
}
