//! Bad input of every kind gets a 4xx whose JSON error names the problem,
//! and the hub keeps serving; the quota answers 429 with Retry-After. That
//! holds for heads too broken to reach the router (hyper's own refusals).

#[path = "hub_support.rs"]
mod hub_support;

use hub_support::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn malformed_requests_are_refused_with_the_problem_named() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let mut hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let workflow_id = create_hello(&api).await;

    // (body, status, code, words the message must hold)
    let deep = format!(
        "{{\"workflow_id\": 1, \"params\": {{\"token\": {}1{}}}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let cases: Vec<(String, StatusCode, &str, &str)> = vec![
        ("".into(), StatusCode::BAD_REQUEST, "invalid_json", "empty"),
        (
            "{\"workflow_id\": 1,".into(),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "line 1",
        ),
        (
            format!("{{\"workflow_id\": {workflow_id}}} trailing"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "trailing",
        ),
        (
            "[1, 2]".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "body",
        ),
        (
            format!("{{\"workflow_id\": {workflow_id}, \"parms\": {{}}}}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_field",
            "parms",
        ),
        (
            "{\"workflow_id\": \"1\"}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "workflow_id",
        ),
        (
            "{\"workflow_id\": 1.5}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "workflow_id",
        ),
        (
            "{\"workflow_id\": 0}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "workflow_id",
        ),
        (
            "{\"workflow_id\": 99999999999999999999999}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "workflow_id",
        ),
        (
            format!("{{\"workflow_id\": {workflow_id}, \"params\": [1]}}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "params",
        ),
        (
            "{\"params\": {}}".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "workflow_id",
        ),
        (
            format!("{{\"workflow_id\": {workflow_id}, \"workflow_id\": 2}}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "duplicate field `workflow_id`",
        ),
        (deep, StatusCode::BAD_REQUEST, "invalid_json", "recursion"),
    ];
    for (body, status, code, needle) in cases {
        let shown: String = body.chars().take(60).collect();
        let r = api.post_raw("/v1/session_queues", body.clone()).await;
        assert_eq!(r.status, status, "{shown}: {}", r.body);
        assert_eq!(r.code(), code, "{shown}: {}", r.body);
        assert!(r.message().contains(needle), "{shown}: {}", r.body);
    }

    // Not UTF-8.
    let r = api
        .post_raw("/v1/session_queues", vec![b'{', 0xff, 0xfe, b'}'])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);

    // A body that is not JSON at all, by its content type.
    let r = api
        .send(
            api.request(reqwest::Method::POST, "/v1/session_queues")
                .header("content-type", "application/x-www-form-urlencoded")
                .body("workflow_id=1"),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(r.message().contains("application/json"), "{}", r.body);

    // Over 10 MB, even as valid JSON: refused before it is read whole.
    let big = format!(
        "{{\"workflow_id\": {workflow_id}, \"params\": {{\"who\": \"{}\", \"token\": \"t\"}}}}",
        "x".repeat(10 * 1024 * 1024)
    );
    let r = api.post_raw("/v1/session_queues", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.body);
    assert_eq!(r.code(), "body_too_large");
    assert!(r.message().contains("10 MB"), "{}", r.body);

    // Large params under the limit are fine.
    let r = api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": workflow_id, "params": {"who": "y".repeat(1024 * 1024), "token": "t"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body["error"]);

    // Unknown endpoints and methods answer in JSON too.
    let r = api.get("/v1/sessions").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.message().contains("/v1/sessions"), "{}", r.body);
    let r = api
        .send(api.request(reqwest::Method::PUT, "/v1/workflows"))
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.code(), "method_not_allowed");

    // A bad query string.
    let r = api.get("/v1/session_queues?query=is:").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("is:"), "{}", r.body);
    let r = api
        .get(&format!(
            "/v1/session_queues?query={}",
            "is:queued%20".repeat(300)
        ))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("longer than"), "{}", r.body);

    // After all of that the hub is up and well.
    assert!(hub.is_running());
    assert_eq!(api.get("/v1/workflows").await.status, StatusCode::OK);
    let log = hub.stderr();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn heads_hyper_refuses_get_the_json_error_too() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let mut hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));

    // A 100 KB query: over the 65534-byte URI hyper takes (and reqwest
    // sends), so on a raw connection.
    let request = format!(
        "GET /v1/session_queues?query={} HTTP/1.1\r\nhost: hub\r\n\r\n",
        "x".repeat(100 * 1024)
    );
    let (head, body) = raw_exchange(&hub.url, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 414 "), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body["error"]["code"], "uri_too_long", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("65534 bytes")),
        "{body}"
    );

    // A 600 KB header: over hyper's buffer for a head.
    let r = api
        .send(
            api.request(reqwest::Method::GET, "/v1/workflows")
                .header("x-filler", "y".repeat(600 * 1024)),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{}",
        r.body
    );
    assert_eq!(r.code(), "headers_too_large", "{}", r.body);

    // Not HTTP/1.1 at all, on a raw connection.
    let (head, body) = raw_exchange(&hub.url, b"GET /v1/workflows HTTP/9.9\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert_eq!(body["error"]["code"], "malformed_request", "{body}");

    // The hub serves on.
    assert!(hub.is_running());
    assert_eq!(api.get("/v1/workflows").await.status, StatusCode::OK);
}

/// Writes `request` on a new connection to the hub at `url`, reads the
/// answer until the hub closes the connection, and returns its head and
/// its body as JSON.
async fn raw_exchange(url: &str, request: &[u8]) -> (String, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the hub");
    tcp.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut answer),
    )
    .await
    .expect("the hub closes the connection")
    .expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        panic!("not an HTTP answer: {answer:?}");
    };
    let body = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {answer:?}"));
    (head.to_string(), body)
}

#[tokio::test]
async fn the_quota_answers_429_with_retry_after() {
    let scratch = Scratch::new();
    let busy = create_key(&scratch, ALL_SCOPES);
    let other = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&busy, ALL_SCOPES)));

    // No robots are registered, so the limit is the minimum: 60 a minute.
    for i in 0..60 {
        let r = api.get("/v1/workflows").await;
        assert_eq!(r.status, StatusCode::OK, "call {i}: {}", r.body);
    }
    let r = api.get("/v1/workflows").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.code(), "rate_limited");
    let retry: u64 = r
        .headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .expect("whole seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(r.message().contains("60"), "{}", r.body);

    // The quota is per key.
    let other_api = Api::new(&hub, Some(token(&other, ALL_SCOPES)));
    assert_eq!(other_api.get("/v1/workflows").await.status, StatusCode::OK);
    // Calls that fail authentication do not count, nor get a 429 first.
    let forged = Api::new(&hub, Some(sign("wrong", &claims(&busy, ALL_SCOPES))));
    assert_eq!(
        forged.get("/v1/workflows").await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// Every call refuses a query parameter it does not take, naming it (a
/// misspelt `?wait=` or AUTORO's `?mode=sync` must not silently mean
/// nothing); `POST /v1/session_queues` still takes `?wait=`.
#[tokio::test]
async fn unknown_query_parameters_are_refused_on_every_call() {
    let scratch = Scratch::new();
    let scopes = format!("{ALL_SCOPES} audit.read");
    let key = create_key(&scratch, &scopes);
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, &scopes)));
    let workflow_id = create_hello(&api).await;

    let r = api
        .post(
            "/v1/session_queues?mode=sync",
            &json!({"workflow_id": workflow_id, "params": {"token": "t"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    assert_eq!(r.code(), "unknown_parameter", "{}", r.body);
    assert!(r.message().contains("`mode`"), "{}", r.body);
    let r = api
        .post(
            "/v1/session_queues?wait=100ms",
            &json!({"workflow_id": workflow_id, "params": {"token": "t"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let session_id = r.body["id"].as_i64().unwrap();
    let r = api
        .post(
            "/v1/session_queues?wait=100ms&mode=sync",
            &json!({"workflow_id": workflow_id, "params": {"token": "t"}}),
        )
        .await;
    assert_eq!(r.code(), "unknown_parameter", "{}", r.body);

    use reqwest::Method;
    let s = session_id;
    let w = workflow_id;
    let calls: Vec<(Method, String)> = vec![
        (Method::POST, "/v1/token".into()),
        (Method::GET, format!("/v1/session_queues/{s}")),
        (Method::DELETE, format!("/v1/session_queues/{s}/cancel")),
        (Method::GET, format!("/v1/session_queues/{s}/artifacts")),
        (
            Method::GET,
            format!("/v1/session_queues/{s}/artifacts/a.png"),
        ),
        (Method::POST, format!("/v1/session_queues/{s}/rerun")),
        (Method::POST, "/v1/workflows".into()),
        (Method::GET, format!("/v1/workflows/{w}/schedules")),
        (Method::POST, format!("/v1/workflows/{w}/schedules")),
        (Method::GET, "/v1/schedules/1".into()),
        (Method::DELETE, "/v1/schedules/1".into()),
        (Method::POST, "/v1/schedules/1/pause".into()),
        (Method::POST, "/v1/schedules/1/resume".into()),
        (Method::GET, format!("/v1/workflows/{w}/triggers")),
        (Method::POST, format!("/v1/workflows/{w}/triggers")),
        (Method::POST, "/v1/triggers/1".into()),
        (Method::DELETE, "/v1/triggers/1".into()),
        (Method::GET, "/v1/notifications".into()),
        (Method::POST, "/v1/notifications".into()),
        (Method::DELETE, "/v1/notifications/1".into()),
        (Method::POST, "/v1/notifications/1/test".into()),
        (Method::GET, "/v1/robots".into()),
        (Method::PUT, "/v1/robot/robots/r1".into()),
        (Method::GET, "/v1/robot/robots/r1?instance_id=i".into()),
        (Method::POST, "/v1/robot/robots/r1/poll".into()),
        (Method::POST, format!("/v1/robot/sessions/{s}/release")),
        (Method::POST, format!("/v1/robot/sessions/{s}/logs")),
        (Method::PUT, format!("/v1/robot/sessions/{s}/steps")),
        (
            Method::PUT,
            format!("/v1/robot/sessions/{s}/artifacts/a.png"),
        ),
        (Method::POST, format!("/v1/robot/sessions/{s}/finish")),
        // The calls that take some refuse the others.
        (Method::GET, "/v1/session_queues".into()),
        (Method::GET, format!("/v1/session_queues/{s}/logs")),
        (Method::GET, "/v1/workflows".into()),
        (Method::GET, "/v1/audit_log".into()),
        (Method::GET, "/v1/notifications/1/deliveries".into()),
    ];
    for (method, path) in calls {
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = api
            .send(
                api.request(method.clone(), &format!("{path}{sep}mode=sync"))
                    .header("content-type", "application/json")
                    .body("{}"),
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::BAD_REQUEST, "unknown_parameter"),
            "{method} {path}: {}",
            r.body
        );
        assert!(
            r.message().contains("`mode`"),
            "{method} {path}: {}",
            r.body
        );
    }
}
