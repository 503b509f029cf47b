//! `POST /v1/token`: a JWT signed by the hub, for clients that do not sign
//! their own. The only call authenticated by the secret itself.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tasuki_protocol::auth::DEFAULT_TOKEN_SECONDS;
use tasuki_protocol::{Claims, Scope, TokenRequest, TokenResponse};

use super::body::JsonBody;
use super::error::ApiError;
use super::query::{NoQuery, shorten};
use super::{Hub, auth};

/// A token request is two short strings and a number: a body this size
/// is read before any credential is checked, so it is kept small.
const TOKEN_BODY_BYTES: usize = 4 * 1024;

/// The shortest and longest lifetimes a client may ask for, in seconds.
const MIN_EXPIRES: i64 = 60;
const MAX_EXPIRES: i64 = auth::MAX_TOKEN_SECONDS;

pub async fn create(
    State(hub): State<Arc<Hub>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    _: NoQuery,
    JsonBody(req): JsonBody<TokenRequest, TOKEN_BODY_BYTES>,
) -> Result<Json<TokenResponse>, ApiError> {
    // Failed secrets are limited per source and key id (auth_limit.rs).
    hub.auth_limit
        .guard(
            peer.map(|Extension(ConnectInfo(addr))| addr.ip()),
            Some(&req.access_key_id),
            issue(&hub, &req),
        )
        .await
        .map(Json)
}

async fn issue(hub: &Hub, req: &TokenRequest) -> Result<TokenResponse, ApiError> {
    let expires = req.expires.unwrap_or(DEFAULT_TOKEN_SECONDS);
    if !(MIN_EXPIRES..=MAX_EXPIRES).contains(&expires) {
        return Err(ApiError::invalid_field(
            "expires",
            format!(
                "the token lifetime must be from {MIN_EXPIRES} to {MAX_EXPIRES} seconds, not {expires}"
            ),
        ));
    }
    if req.access_key_id.is_empty() {
        return Err(ApiError::invalid_field(
            "access_key_id",
            "must not be empty",
        ));
    }
    let key = check_secret(hub, &req.access_key_id, &req.secret_access_key).await?;
    if !key.scopes.contains(Scope::AccessTokenCreate) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!(
                "the access key `{}` does not have the scope `{}`, which POST /v1/token needs",
                req.access_key_id,
                Scope::AccessTokenCreate
            ),
        ));
    }
    let now = jiff::Timestamp::now().as_second();
    let claims = Claims {
        iss: hub.issuer.clone(),
        sub: req.access_key_id.clone(),
        aud: hub.audience.clone(),
        nbf: now,
        exp: now + expires,
        scopes: key.scopes.to_string(),
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&key.secret),
    )
    .map_err(|e| {
        tracing::error!(error = %e, "cannot sign a token");
        ApiError::internal()
    })?;
    let expires_at = jiff::Timestamp::from_second(claims.exp).map_err(|_| ApiError::internal())?;
    Ok(TokenResponse { token, expires_at })
}

/// The key `key_id`, once `secret` is found to be its secret; the call is
/// counted toward the key's quota. The console's sign-in checks a secret
/// with this too. (Callers run it under `hub.auth_limit`.)
pub(crate) async fn check_secret(
    hub: &Hub,
    key_id: &str,
    secret: &str,
) -> Result<super::KeyMaterial, ApiError> {
    let Some(key) = hub.key_material(key_id).await? else {
        return Err(auth::unknown_key(key_id));
    };
    // Constant time, so that the time taken says nothing about how much of
    // a guess was right.
    if aws_lc_rs::constant_time::verify_slices_are_equal(secret.as_bytes(), &key.secret).is_err() {
        return Err(ApiError::unauthorized(
            "invalid_secret",
            format!(
                "the secret access key is not the one of access key `{}`",
                shorten(key_id)
            ),
        ));
    }
    auth::count_call(hub, key_id, key.robots).await?;
    Ok(key)
}
