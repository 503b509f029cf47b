//! `http.request` and redirects, through the real `tasuki` binary against
//! two real HTTP servers on loopback (two ports, so two origins): what the
//! step's headers reach, and that `Referer` is never sent.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::any;
use serde_json::{Value, json};
use support::run_text;

/// A server that redirects (`/redirect/{status}?to=URL`) and echoes the
/// request it gets (`/echo`).
fn start_origin() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test server runtime");
        runtime.block_on(async move {
            let app = Router::new()
                .route("/redirect/{status}", any(redirect))
                .route("/echo", any(echo));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            tx.send(listener.local_addr().expect("local addr"))
                .expect("report the address");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("test server started")
}

async fn redirect(
    Path(status): Path<u16>,
    Query(query): Query<BTreeMap<String, String>>,
) -> impl IntoResponse {
    let to = query.get("to").cloned().unwrap_or_default();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [(header::LOCATION, to)],
    )
}

async fn echo(method: axum::http::Method, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let headers: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    axum::Json(json!({
        "method": method.as_str(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

/// Runs one `http.request` step from `a` and returns what the last server saw.
fn request_via(first: &str, extra: &str) -> Value {
    let r = run_text(
        &format!(
            r#"
version: 1
name: redirect
params:
  token: {{secret: true, default: tok-secret-123}}
steps:
  - id: call
    action: http.request
    with:
      url: "{first}"
      headers:
        X-Api-Key: "${{params.token}}"
        Authorization: "Bearer ${{params.token}}"
{extra}
"#
        ),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.report["steps"]["call"]["output"]["body"].clone()
}

fn redirect_url(from: SocketAddr, status: u16, to: &str) -> String {
    // The secret in the query is what a `Referer` would carry away.
    format!("http://{from}/redirect/{status}?token=tok-secret-123&to={to}")
}

#[test]
fn a_redirect_to_another_origin_gets_none_of_the_step_headers_and_no_referer() {
    let a = start_origin();
    let b = start_origin();
    let seen = request_via(&redirect_url(a, 302, &format!("http://{b}/echo")), "");
    let headers = seen["headers"].as_object().expect("echoed headers");
    for name in ["x-api-key", "authorization", "referer"] {
        assert!(
            !headers.contains_key(name),
            "the other origin got {name}: {headers:?}"
        );
    }
    // The report masks secrets, so a header that got through shows `***`.
    assert!(!seen.to_string().contains("***"), "{seen}");
}

#[test]
fn a_redirect_within_the_origin_keeps_the_step_headers_but_sends_no_referer() {
    let a = start_origin();
    let seen = request_via(&redirect_url(a, 302, &format!("http://{a}/echo")), "");
    let headers = &seen["headers"];
    // The report masks the secret they carry.
    assert_eq!(headers["x-api-key"], "***");
    assert_eq!(headers["authorization"], "Bearer ***");
    assert!(headers.get("referer").is_none(), "{headers}");
}

#[test]
fn a_307_keeps_method_and_body_within_the_origin_only_and_a_303_becomes_a_get() {
    let a = start_origin();
    let b = start_origin();
    let post = "      method: POST\n      json: {order: 7}";
    let kept = request_via(&redirect_url(a, 307, &format!("http://{a}/echo")), post);
    assert_eq!(kept["method"], "POST");
    assert_eq!(kept["body"], r#"{"order":7}"#);
    assert_eq!(kept["headers"]["content-type"], "application/json");
    assert_eq!(kept["headers"]["x-api-key"], "***", "{kept}");

    // The body may hold the step's secrets: not sent to another origin.
    let r = run_text(
        &format!(
            r#"
version: 1
name: redirect
steps:
  - id: call
    action: http.request
    with:
      url: "{}"
{post}
"#,
            redirect_url(a, 307, &format!("http://{b}/echo"))
        ),
        &[],
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    let call = &r.report["steps"]["call"];
    assert_eq!(call["status"], "error", "{call}");
    let message = call["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("to another origin") && message.contains("not followed"),
        "{message}"
    );

    let got = request_via(&redirect_url(a, 303, &format!("http://{a}/echo")), post);
    assert_eq!(got["method"], "GET");
    assert_eq!(got["body"], "");
    assert_eq!(got["headers"]["x-api-key"], "***");
}

#[test]
fn follow_redirects_false_returns_the_redirect_itself() {
    let a = start_origin();
    let b = start_origin();
    let r = run_text(
        &format!(
            r#"
version: 1
name: no-follow
steps:
  - id: call
    action: http.request
    with:
      url: "{}"
      follow_redirects: false
"#,
            redirect_url(a, 302, &format!("http://{b}/echo"))
        ),
        &[],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = &r.report["steps"]["call"]["output"];
    assert_eq!(out["status"], 302);
    assert_eq!(out["headers"]["location"], format!("http://{b}/echo"));
}
