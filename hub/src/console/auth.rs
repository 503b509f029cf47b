//! Signing in to the console, its session cookie, and CSRF tokens.
//!
//! The cookie holds a short-lived HS256 JWT signed with the access key's
//! own secret, with the hub's `iss` and `aud` and the key's scopes, so it
//! is checked by the very code that checks bearer tokens
//! (`api::auth::authenticate_cookie`): deleting or rotating the key ends
//! every console session of it at once, and any hub of the same database
//! accepts it. It also carries a random `nonce`; a state-changing form
//! carries HMAC-SHA256(key secret, nonce) as its CSRF token, which only a
//! page rendered for that cookie can know.

use std::net::SocketAddr;
use std::sync::Arc;

use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use axum::Extension;
use axum::extract::{ConnectInfo, Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use tasuki_protocol::Scope;

use super::layout::{self, PageError};
use crate::api::Hub;
use crate::api::auth::{Caller, authenticate_cookie};
use crate::api::auth_limit::peer_ip;
use crate::api::error::ApiError;

/// The cookie's name; its path is `/ui`, so the API never sees it.
pub const COOKIE: &str = "tasuki_console";
/// How long a sign-in lasts. Short: a cookie cannot be revoked on its own
/// (only with its key), as bearer tokens cannot.
pub const SESSION_SECONDS: i64 = 30 * 60;
/// The form field every state-changing form carries.
pub const CSRF_FIELD: &str = "csrf";
/// Where a sign-in goes when it was not sent from a page.
const HOME: &str = "/ui/sessions";
/// A `next` longer than this is not followed.
const MAX_NEXT: usize = 2000;
/// What the CSRF HMAC is computed over, besides the nonce: a token made
/// for anything else with the same key can never pass as one.
const CSRF_CONTEXT: &[u8] = b"tasuki-console-csrf\0";

/// A signed-in operator: the caller its cookie authenticates, and the
/// CSRF token of its forms.
pub struct Operator {
    pub caller: Caller,
    pub csrf: String,
    secret: Vec<u8>,
    nonce: String,
}

impl Operator {
    /// The scope, or the page that says which one is missing.
    pub fn require(&self, scope: Scope) -> Result<(), PageError> {
        self.caller.require(scope).map_err(|e| {
            PageError::new(
                StatusCode::FORBIDDEN,
                "Not allowed",
                format!(
                    "{} (signed in with the access key `{}`)",
                    e.message, self.caller.key_id
                ),
            )
        })
    }

    pub fn may(&self, scope: Scope) -> bool {
        self.caller.scopes().contains(scope)
    }

    /// A state-changing form's CSRF token, or the 403 page.
    pub fn check_csrf(&self, given: Option<&str>) -> Result<(), PageError> {
        if csrf_matches(&self.secret, &self.nonce, given.unwrap_or("")) {
            return Ok(());
        }
        Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Form refused",
            "this form did not carry a valid CSRF token (it must be sent from a console page \
             of the current sign-in); nothing was changed. Reload the page and try again.",
        ))
    }
}

/// The claims of the cookie's token: a bearer token's, and the nonce.
#[derive(Serialize, Deserialize)]
struct CookieClaims {
    iss: String,
    sub: String,
    aud: String,
    nbf: i64,
    exp: i64,
    scopes: String,
    nonce: String,
}

impl FromRequestParts<Arc<Hub>> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, hub: &Arc<Hub>) -> Result<Self, Response> {
        let here = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or(HOME);
        let Some(token) = cookie(&parts.headers) else {
            return Err(to_login(here, false));
        };
        let peer = peer_ip(&parts.extensions);
        let (caller, secret) = match authenticate_cookie(&token, hub, peer).await {
            Ok(found) => found,
            // Expired, signed by a deleted or rotated key, or forged: sign
            // in again.
            Err(e) if e.status == StatusCode::UNAUTHORIZED => return Err(to_login(here, true)),
            Err(e) => return Err(PageError::from(e).into_response()),
        };
        // The signature was checked above; this only reads the nonce.
        let nonce = jsonwebtoken::dangerous::insecure_decode_claims::<CookieClaims>(&token)
            .map(|c| c.nonce)
            .ok()
            .filter(|n| !n.is_empty());
        let Some(nonce) = nonce else {
            return Err(to_login(here, true));
        };
        Ok(Operator {
            csrf: csrf_token(&secret, &nonce),
            caller,
            secret,
            nonce,
        })
    }
}

/// The session cookie's value, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// To the sign-in page, back to `here` after; `clear` drops a cookie that
/// no longer works.
fn to_login(here: &str, clear: bool) -> Response {
    let next = valid_next(here).unwrap_or(HOME);
    let mut response =
        Redirect::to(&format!("/ui/login?next={}", layout::encode(next))).into_response();
    if clear && let Ok(v) = HeaderValue::from_str(&clear_cookie()) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// `next` when it is a console page of this hub, so that a link to the
/// sign-in page can never send the operator elsewhere once signed in.
pub fn valid_next(next: &str) -> Option<&str> {
    let rest = next.strip_prefix("/ui")?;
    let local = rest.is_empty() || rest.starts_with('/') || rest.starts_with('?');
    let plain = !next
        .chars()
        .any(|c| c == '\\' || c.is_control() || c.is_whitespace());
    // `/ui//host` is a path here, but never let a doubled slash through:
    // some clients read it as another host.
    (local && plain && !next.contains("//") && next.len() <= MAX_NEXT).then_some(next)
}

pub fn csrf_token(secret: &[u8], nonce: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut data = CSRF_CONTEXT.to_vec();
    data.extend_from_slice(nonce.as_bytes());
    layout::hex(hmac::sign(&key, &data).as_ref())
}

/// Whether `given` is the CSRF token of `nonce`, compared in constant time.
pub fn csrf_matches(secret: &[u8], nonce: &str, given: &str) -> bool {
    let Some(tag) = layout::unhex(given) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut data = CSRF_CONTEXT.to_vec();
    data.extend_from_slice(nonce.as_bytes());
    hmac::verify(&key, &data, &tag).is_ok()
}

fn session_cookie(token: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{}",
        if secure { "; Secure" } else { "" }
    )
}

fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn login_page(Query(q): Query<NextQuery>) -> Markup {
    login_form(q.next.as_deref().and_then(valid_next), None, None)
}

fn login_form(next: Option<&str>, key_id: Option<&str>, problem: Option<&str>) -> Markup {
    layout::bare(
        "Sign in",
        html! {
            main class="narrow" {
                h1 { "Sign in to Tasuki" }
                p { "Use an access key of this hub (" code { "tasuki-hub keys create" } "). What you may see and do follows its scopes." }
                @if let Some(problem) = problem {
                    p class="problem" role="alert" id="problem" { (problem) }
                }
                form method="post" action="/ui/login" {
                    input type="hidden" name="next" value=(next.unwrap_or(HOME));
                    label for="access_key_id" { "Access key id" }
                    input id="access_key_id" name="access_key_id" type="text" required autocomplete="username" autofocus value=(key_id.unwrap_or(""));
                    label for="secret_access_key" { "Secret access key" }
                    input id="secret_access_key" name="secret_access_key" type="password" required autocomplete="current-password";
                    button type="submit" id="sign-in" { "Sign in" }
                }
            }
        },
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    access_key_id: String,
    #[serde(default)]
    secret_access_key: String,
    #[serde(default)]
    next: String,
}

pub async fn login(
    State(hub): State<Arc<Hub>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = valid_next(&form.next).unwrap_or(HOME);
    let key_id = form.access_key_id.trim();
    if key_id.is_empty() || form.secret_access_key.is_empty() {
        let page = login_form(
            Some(next),
            Some(key_id),
            Some("Give both the access key id and its secret."),
        );
        return (StatusCode::UNPROCESSABLE_ENTITY, page).into_response();
    }
    // Failed sign-ins count per source and key id as failed
    // `POST /v1/token` calls do, and are refused alike past the limit.
    let signed = hub
        .auth_limit
        .guard(
            peer.map(|Extension(ConnectInfo(addr))| addr.ip()),
            Some(key_id),
            sign_in(&hub, key_id, &form.secret_access_key),
        )
        .await;
    match signed {
        Ok(token) => {
            tracing::info!(key_id = %key_id, "signed in to the console");
            let mut response = Redirect::to(next).into_response();
            match HeaderValue::from_str(&session_cookie(&token, hub.tls)) {
                Ok(v) => {
                    response.headers_mut().insert(header::SET_COOKIE, v);
                    response
                }
                Err(_) => PageError::internal().into_response(),
            }
        }
        Err(e) => {
            let page = login_form(Some(next), Some(key_id), Some(&e.message));
            (e.status, page).into_response()
        }
    }
}

/// The cookie's token, once the secret is found to be the key's.
async fn sign_in(hub: &Hub, key_id: &str, secret: &str) -> Result<String, ApiError> {
    let key = crate::api::token::check_secret(hub, key_id, secret).await?;
    let mut nonce = [0u8; 16];
    SystemRandom::new().fill(&mut nonce).map_err(|_| {
        tracing::error!("no randomness for a console session's nonce");
        ApiError::internal()
    })?;
    let now = jiff::Timestamp::now().as_second();
    let claims = CookieClaims {
        iss: hub.issuer.clone(),
        sub: key_id.to_string(),
        aud: hub.audience.clone(),
        nbf: now,
        exp: now + SESSION_SECONDS,
        scopes: key.scopes.to_string(),
        nonce: layout::hex(&nonce),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&key.secret),
    )
    .map_err(|e| {
        tracing::error!(error = %e, "cannot sign a console session");
        ApiError::internal()
    })
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
}

pub async fn logout(op: Operator, Form(form): Form<CsrfForm>) -> Result<Response, PageError> {
    op.check_csrf(form.csrf.as_deref())?;
    let mut response = Redirect::to("/ui/login").into_response();
    let v = HeaderValue::from_str(&clear_cookie()).map_err(|_| PageError::internal())?;
    response.headers_mut().insert(header::SET_COOKIE, v);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_console() {
        for ok in [
            "/ui",
            "/ui/sessions",
            "/ui/sessions?status=running&page=2",
            "/ui?x=1",
        ] {
            assert_eq!(valid_next(ok), Some(ok), "{ok}");
        }
        for bad in [
            "https://evil.example/ui",
            "//evil.example/ui",
            "/uix",
            "/ui//evil.example",
            "/ui/\\evil",
            "/ui/a\nb",
            "/ui/a b",
            "/v1/session_queues",
            "",
            "ui/sessions",
            "/ui@evil.example",
        ] {
            assert_eq!(valid_next(bad), None, "{bad:?}");
        }
        assert_eq!(valid_next(&format!("/ui/{}", "a".repeat(MAX_NEXT))), None);
    }

    #[test]
    fn csrf_token_belongs_to_its_nonce_and_key() {
        let secret = b"the key's secret";
        let token = csrf_token(secret, "nonce-1");
        assert!(csrf_matches(secret, "nonce-1", &token));
        assert!(!csrf_matches(secret, "nonce-2", &token));
        assert!(!csrf_matches(b"another secret", "nonce-1", &token));
        assert!(!csrf_matches(secret, "nonce-1", ""));
        assert!(!csrf_matches(secret, "nonce-1", "not hex"));
        assert!(!csrf_matches(secret, "nonce-1", &token[..token.len() - 2]));
        let mut flipped = token.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert!(!csrf_matches(
            secret,
            "nonce-1",
            &String::from_utf8(flipped).unwrap()
        ));
    }

    #[test]
    fn cookie_is_read_among_others_and_its_flags_are_set() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tasuki_console=abc.def.ghi; b=2"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("abc.def.ghi"));
        headers.insert(header::COOKIE, HeaderValue::from_static("tasuki_console="));
        assert_eq!(cookie(&headers), None);
        let set = session_cookie("t", false);
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=1800"] {
            assert!(set.contains(flag), "{set}");
        }
        assert!(!set.contains("Secure"));
        assert!(session_cookie("t", true).ends_with("; Secure"));
    }
}
