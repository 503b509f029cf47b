//! The hub's request parsing on arbitrary bytes: the first byte picks a
//! JSON body type of the public or the robot API (parsed by `body::parse`,
//! as the `JsonBody` extractor does) or a query string (read by
//! `QueryParams`, then as `GET /v1/session_queues` reads it: page,
//! `query` search terms, ids, leftovers refused).
//!
//! Beyond "no panic": every refusal is a 4xx JSON error with a code and a
//! message, and a field error names its field; a body that parses,
//! serialised and parsed again, is the same; a session's params are then
//! checked against fixed declared params, and every problem names a path
//! under `params`.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::extract::FromRequestParts;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tasuki_fuzz::api::error::ApiError;
use tasuki_fuzz::api::query::{QueryParams, page, path_id};
use tasuki_fuzz::api::{body, params, search};
use tasuki_fuzz::db::workflows::StoredParam;
use tasuki_protocol as p;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 9 {
        0 => {
            if let Some(req) = body_round_trip::<p::CreateSessionQueue>(rest) {
                check_session_params(&req);
            }
        }
        1 => {
            body_round_trip::<p::CreateWorkflow>(rest);
        }
        2 => {
            body_round_trip::<p::TokenRequest>(rest);
        }
        3 => {
            body_round_trip::<p::RegisterRobot>(rest);
        }
        4 => {
            body_round_trip::<p::PollRequest>(rest);
        }
        5 => {
            body_round_trip::<p::LogBatch>(rest);
        }
        6 => {
            body_round_trip::<p::StepsUpdate>(rest);
        }
        7 => {
            body_round_trip::<p::FinishSession>(rest);
        }
        _ => query(rest),
    }
});

fn body_round_trip<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Option<T> {
    match body::parse::<T>(bytes) {
        Ok(value) => {
            let text = serde_json::to_vec(&value).expect("a parsed body serialises");
            let again: T = body::parse(&text).unwrap_or_else(|e| {
                panic!(
                    "{} does not parse again: {e:?}",
                    String::from_utf8_lossy(&text)
                )
            });
            assert_eq!(
                serde_json::to_value(&value).ok(),
                serde_json::to_value(&again).ok()
            );
            Some(value)
        }
        Err(e) => {
            check_error(&e);
            if e.code == "invalid_field" {
                let field = &e
                    .problems
                    .first()
                    .expect("a field error names its field")
                    .path;
                assert!(!field.is_empty(), "{e:?}");
                assert!(e.message.contains(field.as_str()), "{e:?}");
            }
            None
        }
    }
}

fn check_session_params(req: &p::CreateSessionQueue) {
    let specs = [
        StoredParam {
            name: "who".into(),
            default: Some(json!("world")),
            secret: false,
            ..Default::default()
        },
        StoredParam {
            name: "count".into(),
            default: Some(json!(3)),
            secret: false,
            ..Default::default()
        },
        StoredParam {
            name: "list".into(),
            default: Some(json!([])),
            secret: false,
            ..Default::default()
        },
        StoredParam {
            name: "token".into(),
            default: None,
            secret: true,
            ..Default::default()
        },
    ];
    let given = req.params.clone().unwrap_or_default();
    match params::check("fuzz", &specs, false, &given) {
        Ok(secrets) => assert_eq!(secrets, ["token"]),
        Err(problems) => {
            assert!(!problems.is_empty());
            for problem in problems {
                assert!(problem.path.starts_with("params"), "{problem:?}");
                assert!(!problem.message.is_empty(), "{problem:?}");
                assert!(problem.message.len() < 4096, "a long echo: {problem:?}");
            }
        }
    }
}

fn query(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    // Only what reaches the extractor: hyper refuses a URI that does not parse.
    let Ok(request) = Request::builder()
        .uri(format!("/v1/session_queues?{text}"))
        .body(())
    else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let mut q = match ready(QueryParams::from_request_parts(&mut parts, &())) {
        Ok(q) => q,
        Err(e) => return check_error(&e),
    };
    let result = (|| {
        let page = page(&mut q, 20, 100)?;
        assert!((1..=100).contains(&page.limit) && page.offset >= 0);
        search::parse(&q.take("query").unwrap_or_default())?;
        if let Some(id) = q.take("workflow_id") {
            assert!(path_id("workflow", &id)? > 0);
        }
        q.int("project_id", 1, 1, i64::MAX)?;
        q.finish()
    })();
    if let Err(e) = result {
        check_error(&e);
        assert!(e.message.len() < 4096, "a long echo: {e:?}");
    }
}

fn check_error(e: &ApiError) {
    assert!(
        e.status.is_client_error() || e.status == StatusCode::PAYLOAD_TOO_LARGE,
        "{e:?}"
    );
    assert!(!e.code.is_empty() && !e.message.is_empty(), "{e:?}");
    let response = ApiError {
        problems: e.problems.clone(),
        message: e.message.clone(),
        ..*e
    }
    .into_response();
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
}

/// The extractors never wait; they are async only by their trait.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("an extractor waited"),
    }
}
