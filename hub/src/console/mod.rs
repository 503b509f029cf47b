//! The web console at `/ui`: server-rendered pages (maud, escaped by
//! default) over the same database functions the API uses, never HTTP
//! calls to the hub itself. Signed in with an access key; what a page
//! shows and allows follows the key's scopes as the API's calls do.
//!
//! Every `/ui` answer carries a Content-Security-Policy that allows only
//! this origin's scripts, styles and images (and `data:` images): no
//! inline script or style is ever rendered.

mod auth;
mod layout;
mod robots;
mod session;
mod sessions;
mod workflows;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::api::Hub;

const CSP: &str = "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; \
     frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/sessions") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/sessions") }))
        .route("/ui/login", get(auth::login_page).post(auth::login))
        .route("/ui/logout", post(auth::logout))
        .route("/ui/sessions", get(sessions::list))
        .route("/ui/sessions/{id}", get(session::page))
        .route("/ui/sessions/{id}/log/stream", get(session::log_stream))
        .route("/ui/sessions/{id}/log.txt", get(session::log_text))
        .route("/ui/sessions/{id}/cancel", post(session::cancel))
        .route("/ui/sessions/{id}/rerun", post(session::rerun))
        .route("/ui/sessions/{id}/approval", post(session::approval))
        .route("/ui/sessions/{id}/artifacts/{name}", get(session::artifact))
        .route("/ui/robots", get(robots::list))
        .route("/ui/workflows", get(workflows::list))
        .route("/ui/workflows/{id}", get(workflows::page))
        .route("/ui/workflows/{id}/queue", post(workflows::queue))
        .route("/ui/static/console.css", get(css))
        .route("/ui/static/console.js", get(js))
        .layer(middleware::from_fn(headers))
}

/// Headers every console answer carries: the CSP above, no framing, no
/// caching of pages that may show a session's data, no sniffing.
async fn headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}
