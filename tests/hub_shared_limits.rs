//! Limits that hubs sharing one PostgreSQL database keep together: an
//! access key's API quota, and failed authentications per source. Two real
//! `tasuki-hub` processes on one database; needs the server at
//! `TASUKI_TEST_POSTGRES` whatever `TASUKI_TEST_BACKEND` says.

#[path = "hub_support.rs"]
mod hub_support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hub_support::*;

/// Calls this key made, as the hubs have added them up in the database.
fn shared_calls(scratch: &Scratch, key: &Key) -> u64 {
    let url = scratch.db().into_string().expect("a UTF-8 URL");
    psql(
        &url,
        &format!(
            "SELECT COALESCE(SUM(calls), 0) FROM api_calls WHERE key_id = '{}'",
            key.id
        ),
    )
    .parse()
    .expect("a count")
}

/// Waits, when the clock minute (the quota's window) ends in less than
/// `needed`, for the next one to begin.
async fn a_minute_with_room_for(needed: Duration) {
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        % 60_000;
    let left = Duration::from_millis((60_000 - into) as u64);
    if left < needed {
        tokio::time::sleep(left + Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_s_quota_counts_its_calls_on_every_hub() {
    let scratch = Scratch::postgres();
    let key = create_key(&scratch, ALL_SCOPES);
    let a = Hub::start(&scratch);
    let b = Hub::start(&scratch);
    let on_a = Api::new(&a, Some(token(&key, ALL_SCOPES)));
    let on_b = Api::new(&b, Some(token(&key, ALL_SCOPES)));
    a_minute_with_room_for(Duration::from_secs(25)).await;

    // The key has no robot: 60 calls a minute, across both hubs.
    for i in 0..40 {
        let r = on_a.get("/v1/workflows").await;
        assert_eq!(r.status.as_u16(), 200, "call {i} on A: {}", r.body);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared_calls(&scratch, &key) < 40 {
        assert!(Instant::now() < deadline, "hub A never added its calls up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // B's first call of the minute learns A's 40: 20 more, not 60.
    let mut let_through = 0;
    let refused = loop {
        let r = on_b.get("/v1/workflows").await;
        if r.status.as_u16() != 200 {
            break r;
        }
        let_through += 1;
        assert!(let_through <= 60, "hub B let the key through without limit");
    };
    assert_eq!(let_through, 20, "calls hub B let through after A's 40");
    assert_eq!(
        (refused.status.as_u16(), refused.code()),
        (429, "rate_limited"),
        "{}",
        refused.body
    );
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");

    // A hears of B's calls at its next sync: on its own count it would let
    // 20 more through.
    let mut let_through_on_a = 0;
    loop {
        let r = on_a.get("/v1/workflows").await;
        if r.status.as_u16() == 429 {
            break;
        }
        let_through_on_a += 1;
        assert!(
            let_through_on_a < 10,
            "hub A let {let_through_on_a} calls through after the key's quota was used up on B"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_on_one_hub_count_on_every_hub() {
    let scratch = Scratch::postgres();
    let robot_key = create_key(&scratch, ALL_SCOPES);
    let unused_key = create_key(&scratch, ALL_SCOPES);
    let args = [
        "--auth-failures-per-source",
        "5",
        "--auth-failures-per-key",
        "0",
    ];
    let a = Hub::start_with(&scratch, &args);
    let b = Hub::start_with(&scratch, &args);
    // The robot's key works on A from this address (a trusted pair).
    let r = Api::new(&a, Some(token(&robot_key, ALL_SCOPES)))
        .get("/v1/workflows")
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);

    // Five guesses fail on A, from the same address.
    let stranger = Key {
        id: "AKNOSUCHKEY".into(),
        secret: "guess".into(),
    };
    let guesses_on_a = Api::new(&a, Some(token(&stranger, ALL_SCOPES)));
    for i in 0..5 {
        let r = guesses_on_a.get("/v1/workflows").await;
        assert_eq!(r.status.as_u16(), 401, "guess {i}: {}", r.body);
    }
    let r = guesses_on_a.get("/v1/workflows").await;
    assert_eq!(r.code(), "too_many_failed_authentications", "{}", r.body);
    // The other hub hears of them within moments (a NOTIFY on loopback).
    tokio::time::sleep(Duration::from_secs(1)).await;

    // B refuses the next guess without testing it...
    let r = Api::new(&b, Some(token(&stranger, ALL_SCOPES)))
        .get("/v1/workflows")
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (429, "too_many_failed_authentications"),
        "{}",
        r.body
    );
    // ...and a key that never authenticated from here,
    let r = Api::new(&b, Some(token(&unused_key, ALL_SCOPES)))
        .get("/v1/workflows")
        .await;
    assert_eq!(r.status.as_u16(), 429, "{}", r.body);
    // while the robot's key, trusted on A, keeps working on B.
    let r = Api::new(&b, Some(token(&robot_key, ALL_SCOPES)))
        .get("/v1/workflows")
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
}
