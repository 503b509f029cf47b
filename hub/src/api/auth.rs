//! Bearer-token authentication: HS256 JWTs signed with an access key's
//! secret, claims as in the AUTORO document. Every failure says which
//! check failed.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tasuki_protocol::{Claims, Scope, Scopes};

use super::auth_limit;
use super::error::ApiError;
use super::query::shorten;
use super::quota;
use super::wrapped_token;
use super::{Hub, KeyMaterial};

/// Clock skew allowed between the signer and the hub.
pub const LEEWAY_SECONDS: u64 = 30;
/// The longest lifetime (`exp - nbf`) a token may have. Tokens cannot be
/// revoked one by one (only with their key), so they are kept short.
pub const MAX_TOKEN_SECONDS: i64 = 24 * 60 * 60;
/// Longer bearer values are refused before any parsing.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// An authenticated caller, counted against its key's quota.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub key_scopes: Scopes,
    pub token_scopes: Scopes,
}

impl Caller {
    /// Effective scopes: those of both the key and the token.
    pub fn scopes(&self) -> Scopes {
        self.key_scopes.intersection(self.token_scopes)
    }

    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes().contains(scope) {
            return Ok(());
        }
        let why = if !self.key_scopes.contains(scope) {
            format!("the access key `{}` does not have it", self.key_id)
        } else {
            format!(
                "the token's `scopes` claim does not include it (it has: {})",
                if self.token_scopes.is_empty() {
                    "none".to_string()
                } else {
                    self.token_scopes.to_string()
                }
            )
        };
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            format!("this call needs the scope `{scope}`, and {why}"),
        ))
    }
}

/// A caller that holds the scope `R` names; use it as a handler argument
/// so that the scope is checked before the body is read.
pub struct Authorized<R>(pub Caller, pub PhantomData<R>);

pub trait RequiredScope {
    const SCOPE: Scope;
}

pub mod need {
    use super::{RequiredScope, Scope};

    pub struct SessionQueueWrite;
    pub struct SessionQueueRead;
    pub struct SessionQueueDelete;
    pub struct WorkflowWrite;
    pub struct AuditRead;
    pub struct CredentialRead;
    pub struct CredentialWrite;

    impl RequiredScope for SessionQueueWrite {
        const SCOPE: Scope = Scope::SessionQueueWrite;
    }
    impl RequiredScope for SessionQueueRead {
        const SCOPE: Scope = Scope::SessionQueueRead;
    }
    impl RequiredScope for SessionQueueDelete {
        const SCOPE: Scope = Scope::SessionQueueDelete;
    }
    impl RequiredScope for WorkflowWrite {
        const SCOPE: Scope = Scope::WorkflowWrite;
    }
    impl RequiredScope for AuditRead {
        const SCOPE: Scope = Scope::AuditRead;
    }
    impl RequiredScope for CredentialRead {
        const SCOPE: Scope = Scope::CredentialRead;
    }
    impl RequiredScope for CredentialWrite {
        const SCOPE: Scope = Scope::CredentialWrite;
    }
}

impl<R: RequiredScope> FromRequestParts<Arc<Hub>> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, ApiError> {
        let caller = limited(parts, hub, Metering::Counted).await?;
        caller.require(R::SCOPE)?;
        Ok(Authorized(caller, PhantomData))
    }
}

/// A caller of the robot protocol: it holds the `robot` scope, and its
/// calls do not count toward the public API's quota.
pub struct RobotCaller(pub Caller);

impl FromRequestParts<Arc<Hub>> for RobotCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, ApiError> {
        let caller = limited(parts, hub, Metering::Exempt).await?;
        caller.require(Scope::Robot)?;
        Ok(RobotCaller(caller))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Metering {
    Counted,
    Exempt,
}

/// The claims read before the signature is checked: only to find the key,
/// and to word the errors of checks that run after the signature.
#[derive(Deserialize)]
struct Unverified {
    sub: Option<serde_json::Value>,
    iss: Option<serde_json::Value>,
    aud: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
}

impl Unverified {
    fn get(&self, claim: &str) -> Option<&serde_json::Value> {
        match claim {
            "sub" => self.sub.as_ref(),
            "iss" => self.iss.as_ref(),
            "aud" => self.aud.as_ref(),
            "nbf" => self.nbf.as_ref(),
            "exp" => self.exp.as_ref(),
            _ => None,
        }
    }
}

/// [`authenticate`], with failures limited per source and key id
/// (`auth_limit.rs`).
async fn limited(parts: &Parts, hub: &Arc<Hub>, metering: Metering) -> Result<Caller, ApiError> {
    let claimed = bearer(parts)
        .ok()
        .map(|t| wrapped_token::joined(t, hub.autoro_compat))
        .and_then(|t| jsonwebtoken::dangerous::insecure_decode_claims::<Unverified>(&*t).ok())
        .and_then(|c| match c.sub {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        });
    hub.auth_limit
        .guard(
            auth_limit::peer_ip(&parts.extensions),
            claimed.as_deref(),
            authenticate(parts, hub, metering),
        )
        .await
}

async fn authenticate(
    parts: &Parts,
    hub: &Arc<Hub>,
    metering: Metering,
) -> Result<Caller, ApiError> {
    let presented = bearer(parts)?;
    authenticate_token(presented, hub, metering)
        .await
        .map(|(caller, _)| caller)
}

/// The console's session cookie: a token checked exactly as a bearer
/// token is, with failures limited the same way (`auth_limit.rs`), and
/// not counted toward the API's quota (a page's refreshes are not API
/// calls). Also returns the key's secret, which the console's CSRF tokens
/// are derived with.
pub(crate) async fn authenticate_cookie(
    token: &str,
    hub: &Arc<Hub>,
    peer: Option<std::net::IpAddr>,
) -> Result<(Caller, Vec<u8>), ApiError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ApiError::unauthorized(
            "malformed_token",
            format!("the session cookie is longer than {MAX_TOKEN_BYTES} bytes"),
        ));
    }
    let claimed = jsonwebtoken::dangerous::insecure_decode_claims::<Unverified>(token)
        .ok()
        .and_then(|c| match c.sub {
            Some(serde_json::Value::String(s)) => Some(s),
            _ => None,
        });
    hub.auth_limit
        .guard(
            peer,
            claimed.as_deref(),
            authenticate_token(token, hub, Metering::Exempt),
        )
        .await
}

/// A token, wherever it came from (a bearer header, the console's cookie):
/// the caller it authenticates and its key's secret.
async fn authenticate_token(
    presented: &str,
    hub: &Arc<Hub>,
    metering: Metering,
) -> Result<(Caller, Vec<u8>), ApiError> {
    // A token wrapped over lines, let through by compat mode: its parts
    // are read joined; its signature is checked below, once the key is
    // known (wrapped_token.rs).
    let joined = wrapped_token::joined(presented, hub.autoro_compat);
    let was_wrapped = matches!(joined, std::borrow::Cow::Owned(_));
    let token: &str = &joined;
    let header = jsonwebtoken::decode_header(token).map_err(|e| {
        ApiError::unauthorized(
            "malformed_token",
            format!("the bearer token is not a JWT (base64url header.payload.signature): {e}"),
        )
    })?;
    if header.alg != Algorithm::HS256 {
        return Err(ApiError::unauthorized(
            "unsupported_algorithm",
            format!(
                "the token is signed with {:?}; this hub accepts only HS256",
                header.alg
            ),
        ));
    }
    if let Some(typ) = header.typ.as_deref()
        && typ != "JWT"
    {
        return Err(ApiError::unauthorized(
            "malformed_token",
            format!("the token's header has typ `{typ}`; it must be `JWT`"),
        ));
    }
    let unverified: Unverified =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|e| {
            ApiError::unauthorized(
                "malformed_token",
                format!("the token's payload is not a JSON object of claims: {e}"),
            )
        })?;
    let key_id = match &unverified.sub {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => {
            return Err(ApiError::unauthorized(
                "invalid_claim",
                "the token's `sub` claim must be an access key id (a string)",
            ));
        }
        None => {
            return Err(ApiError::unauthorized(
                "missing_claim",
                "the token has no `sub` claim; set it to your access key id",
            ));
        }
    };
    let material = hub.key_material(&key_id).await?;
    let Some(material) = material else {
        return Err(unknown_key(&key_id));
    };
    let resigned;
    let token = if was_wrapped {
        resigned = wrapped_token::canonical(presented, &material.secret);
        resigned.as_str()
    } else {
        token
    };
    let claims = verify(token, &material, hub, &unverified)?;
    let token_scopes: Scopes = claims.scopes.parse().map_err(|e| {
        ApiError::unauthorized("invalid_claim", format!("the token's `scopes` claim: {e}"))
    })?;
    if metering == Metering::Counted {
        count_call(hub, &key_id, material.robots).await?;
    }
    Ok((
        Caller {
            key_id,
            key_scopes: material.scopes,
            token_scopes,
        },
        material.secret,
    ))
}

pub fn unknown_key(key_id: &str) -> ApiError {
    ApiError::unauthorized(
        "unknown_access_key",
        format!("there is no access key `{}` on this hub", shorten(key_id)),
    )
}

/// Counts one public API call of `key_id` (which has registered
/// `robots`) against its quota, or refuses it with 429.
pub async fn count_call(hub: &Hub, key_id: &str, robots: u64) -> Result<(), ApiError> {
    hub.quota.check(&hub.db, key_id, robots).await.map_err(|e| {
        hub.metrics.quota_refusals.inc();
        rate_limited(e, robots, hub.quota.per_robot())
    })
}

fn rate_limited(e: quota::Exceeded, robots: u64, per_robot: u64) -> ApiError {
    let mut err = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "this access key made {} API calls in the last minute, the limit \
             ({} per robot this key registered, {robots} registered, at least {}); retry \
             after {} s",
            e.limit, per_robot, per_robot, e.retry_after
        ),
    );
    err.retry_after = Some(e.retry_after);
    err
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing_token",
            "this call needs an `Authorization: Bearer <JWT>` header; sign a JWT with your \
             access key, or get one from POST /v1/token",
        ));
    };
    let malformed = || {
        ApiError::unauthorized(
            "invalid_authorization",
            "the Authorization header must be `Bearer <JWT>`",
        )
    };
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = text.trim().split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed());
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(ApiError::unauthorized(
            "malformed_token",
            format!("the bearer token is longer than {MAX_TOKEN_BYTES} bytes"),
        ));
    }
    Ok(token)
}

fn verify(
    token: &str,
    key: &KeyMaterial,
    hub: &Hub,
    unverified: &Unverified,
) -> Result<Claims, ApiError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.set_issuer(&[&hub.issuer]);
    validation.set_audience(&[&hub.audience]);
    // Decoded as a plain value first, so that a missing claim is reported
    // by name by the validation rather than as a deserialisation error.
    let data = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &DecodingKey::from_secret(&key.secret),
        &validation,
    )
    .map_err(|e| claim_error(e.kind(), hub, unverified))?;
    // `scopes` is not one of the JWT's registered claims, so the
    // validation above does not require it; absent, it is missing like
    // the others, not malformed.
    if data.claims.get("scopes").is_none() {
        return Err(ApiError::unauthorized(
            "missing_claim",
            "the token has no `scopes` claim; set it to the space-separated scopes the token \
             may use, such as \"session_queue.write session_queue.read\"",
        ));
    }
    let claims: Claims = serde_json::from_value(data.claims).map_err(|e| {
        ApiError::unauthorized(
            "invalid_claim",
            format!(
                "the token's claims do not read (iss, sub, aud: strings; nbf, exp: whole \
                 numbers; scopes: a space-separated string): {e}"
            ),
        )
    })?;
    let lifetime = claims.exp.saturating_sub(claims.nbf);
    if lifetime <= 0 {
        return Err(ApiError::unauthorized(
            "invalid_claim",
            format!(
                "the token's `exp` ({}) is not after its `nbf` ({})",
                claims.exp, claims.nbf
            ),
        ));
    }
    if lifetime > MAX_TOKEN_SECONDS {
        return Err(ApiError::unauthorized(
            "token_lifetime_too_long",
            format!(
                "the token is valid for {lifetime} s (from `nbf` to `exp`); this hub accepts \
                 at most {MAX_TOKEN_SECONDS} s, so sign short-lived tokens"
            ),
        ));
    }
    Ok(claims)
}

fn claim_error(kind: &ErrorKind, hub: &Hub, claims: &Unverified) -> ApiError {
    let show = |v: &Option<serde_json::Value>| match v {
        Some(v) => shorten(&v.to_string()),
        None => "absent".into(),
    };
    let now = jsonwebtoken::get_current_timestamp();
    match kind {
        ErrorKind::InvalidSignature => ApiError::unauthorized(
            "invalid_signature",
            "the token's signature does not match: sign `header.payload` with HMAC-SHA256, \
             keyed with the access key's secret",
        ),
        ErrorKind::ExpiredSignature => ApiError::unauthorized(
            "token_expired",
            format!(
                "the token expired: its `exp` is {}, and it is now {now} (leeway {LEEWAY_SECONDS} s)",
                show(&claims.exp)
            ),
        ),
        ErrorKind::ImmatureSignature => ApiError::unauthorized(
            "token_not_yet_valid",
            format!(
                "the token is not valid yet: its `nbf` is {}, and it is now {now} (leeway {LEEWAY_SECONDS} s)",
                show(&claims.nbf)
            ),
        ),
        ErrorKind::InvalidIssuer => ApiError::unauthorized(
            "invalid_issuer",
            format!(
                "the token's `iss` is {}; this hub expects \"{}\"",
                show(&claims.iss),
                hub.issuer
            ),
        ),
        ErrorKind::InvalidAudience => ApiError::unauthorized(
            "invalid_audience",
            format!(
                "the token's `aud` is {}; this hub expects \"{}\"",
                show(&claims.aud),
                hub.audience
            ),
        ),
        // jsonwebtoken also says "missing" of a claim of the wrong type.
        ErrorKind::MissingRequiredClaim(claim) => match claims.get(claim) {
            Some(value) => ApiError::unauthorized(
                "invalid_claim",
                format!(
                    "the token's `{claim}` claim is {}; it must be {}",
                    shorten(&value.to_string()),
                    if matches!(claim.as_str(), "exp" | "nbf") {
                        "a whole number of Unix seconds"
                    } else {
                        "a string"
                    }
                ),
            ),
            None => {
                ApiError::unauthorized("missing_claim", format!("the token has no `{claim}` claim"))
            }
        },
        ErrorKind::InvalidClaimFormat(claim) => ApiError::unauthorized(
            "invalid_claim",
            format!("the token's `{claim}` claim must be a whole number of Unix seconds"),
        ),
        ErrorKind::Json(e) => ApiError::unauthorized(
            "invalid_claim",
            format!(
                "the token's claims do not read (iss, sub, aud: strings; nbf, exp: numbers; \
                 scopes: a space-separated string): {e}"
            ),
        ),
        ErrorKind::InvalidAlgorithm => ApiError::unauthorized(
            "unsupported_algorithm",
            "this hub accepts only HS256 tokens",
        ),
        other => ApiError::unauthorized(
            "malformed_token",
            format!("the bearer token is not a valid JWT: {other:?}"),
        ),
    }
}
