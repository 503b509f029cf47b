//! HTTP clients: the hub's public API with a signed token, and the bench's
//! own clients (TCP_NODELAY, kept-alive connections).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tasuki_protocol::Claims;

#[derive(Debug, Clone)]
pub struct Key {
    pub id: String,
    pub secret: String,
}

/// A client for loopback: no proxy, TCP_NODELAY, connections kept alive.
pub fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(300))
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("build an HTTP client")
}

/// An HS256 token for `key` with `scopes`, valid for twelve hours.
pub fn sign(key: &Key, scopes: &str) -> Result<String> {
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        iss: "tasuki".into(),
        sub: key.id.clone(),
        aud: "tasuki-hub".into(),
        nbf: now - 5,
        exp: now + 12 * 3600,
        scopes: scopes.into(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.secret.as_bytes()),
    )
    .context("sign a token")
}

/// The public API of one hub.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Api {
    pub fn new(base: &str, key: &Key, scopes: &str) -> Result<Api> {
        Ok(Api {
            http: client()?,
            base: base.trim_end_matches('/').to_string(),
            token: sign(key, scopes)?,
        })
    }

    /// The same hub and token over a client of its own (its own connection).
    pub fn fresh(&self) -> Result<Api> {
        Ok(Api {
            http: client()?,
            base: self.base.clone(),
            token: self.token.clone(),
        })
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(60))
    }

    /// Sends, fails on a non-2xx answer (naming it), parses the JSON body.
    pub async fn send_as<T: DeserializeOwned>(
        &self,
        what: &str,
        r: reqwest::RequestBuilder,
    ) -> Result<T> {
        let resp = r
            .send()
            .await
            .with_context(|| format!("{what}: no answer"))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{what}: read the answer"))?;
        if !status.is_success() {
            bail!("{what}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{what}: the answer is not the JSON expected: {}",
                crate::procs::clip(&String::from_utf8_lossy(&bytes), 500)
            )
        })
    }

    pub async fn get_as<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send_as(
            &format!("GET {path}"),
            self.request(reqwest::Method::GET, path),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.get_as(path).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.send_as(
            &format!("POST {path}"),
            self.request(reqwest::Method::POST, path).json(body),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Result<Value> {
        self.send_as(
            &format!("DELETE {path}"),
            self.request(reqwest::Method::DELETE, path),
        )
        .await
    }

    /// Queues a session and returns its id.
    pub async fn queue(&self, workflow_id: i64, params: Value) -> Result<i64> {
        let r = self
            .post(
                "/v1/session_queues",
                &serde_json::json!({"workflow_id": workflow_id, "params": params}),
            )
            .await?;
        r["id"]
            .as_i64()
            .with_context(|| format!("POST /v1/session_queues answered without an id: {r}"))
    }

    /// A session's status.
    pub async fn status(&self, id: i64) -> Result<String> {
        let r = self.get(&format!("/v1/session_queues/{id}")).await?;
        r["status"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("session {id} has no status: {r}"))
    }

    /// Waits (polling every `every`) until the session ends; its status.
    pub async fn finished(&self, id: i64, every: Duration, limit: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let status = self.status(id).await?;
            if matches!(status.as_str(), "success" | "error" | "cancelled") {
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("session {id} did not end within {limit:?} (still {status})");
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Waits for session `id` to end (looking every 5 ms, for at most
    /// 30 s), which must be in success.
    pub async fn succeeded(&self, id: i64) -> Result<()> {
        let status = self
            .finished(id, Duration::from_millis(5), Duration::from_secs(30))
            .await?;
        if status != "success" {
            bail!("session {id} ended {status}");
        }
        Ok(())
    }
}
