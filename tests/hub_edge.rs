//! The hub's network edge, against a real `tasuki-hub`: what a client
//! without credentials can hold open (header timeout, connection cap),
//! TLS with a reload on SIGHUP, lease calls bound to the key that holds
//! the lease, failed authentication limited, per-session storage limits,
//! and callers' text escaped in the hub's log.

#[path = "hub_support.rs"]
mod hub_support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hub_support::*;
use serde_json::{Value, json};

const YAML: &str = "version: 1
name: edge-probe
steps:
  - id: work
    action: shell.run
    with: {argv: [\"true\"]}
";

fn addr_of(hub: &Hub) -> SocketAddr {
    let host_port = hub.url.split("://").nth(1).expect("the url has a scheme");
    host_port.parse().expect("the hub listens on ip:port")
}

/// Whether the hub closed `conn` within `limit`: a read returns end of
/// file or a reset instead of blocking.
fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set a read timeout");
        match conn.read(&mut buf) {
            Ok(0) => return true,
            // Whatever the hub answers (a 408 to a half-sent head, say),
            // then the close.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
    false
}

/// A client bound to `source` (any 127.x address is loopback on Linux),
/// so that one test can speak from several addresses.
fn api_from(hub: &Hub, token: Option<String>, source: [u8; 4]) -> Api {
    Api {
        http: reqwest::Client::builder()
            .local_address(IpAddr::from(source))
            .build()
            .expect("a client"),
        base: hub.url.clone(),
        token,
    }
}

async fn register(api: &Api, name: &str) {
    let r = api
        .send(
            api.request(reqwest::Method::PUT, &format!("/v1/robot/robots/{name}"))
                .json(&json!({"instance_id": name, "version": "test", "max_concurrency": 1})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "register {name}: {}", r.body);
}

async fn poll(api: &Api, name: &str, poll_id: &str) -> Value {
    let r = api
        .post(
            &format!("/v1/robot/robots/{name}/poll"),
            &json!({"instance_id": name, "poll_id": poll_id, "free_slots": 1,
                    "draining": false, "held": []}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "poll of {name}: {}", r.body);
    r.body
}

/// Queues a session of a fresh workflow; its id.
async fn queued_session(api: &Api) -> i64 {
    let r = api.post("/v1/workflows", &json!({"yaml": YAML})).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let wf = r.body["id"].as_i64().expect("workflow id");
    let r = api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": wf, "params": {}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    r.body["id"].as_i64().expect("session id")
}

/// A session leased to the robot `name` of `robot_api`'s key:
/// `(session_id, lease_id)`.
async fn leased(api: &Api, robot_api: &Api, name: &str) -> (i64, String) {
    register(robot_api, name).await;
    let id = queued_session(api).await;
    let answer = poll(robot_api, name, "p1").await;
    let lease = &answer["leases"][0];
    assert_eq!(lease["session_id"].as_i64(), Some(id), "{answer}");
    (
        id,
        lease["lease_id"].as_str().expect("lease_id").to_string(),
    )
}

async fn with_lease(
    api: &Api,
    method: reqwest::Method,
    path: impl AsRef<str>,
    lease: &str,
    body: impl Into<reqwest::Body>,
) -> Reply {
    api.send(
        api.request(method, path.as_ref())
            .header("tasuki-lease", lease)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

fn log_batch(from: u64, messages: &[&str]) -> String {
    let lines: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({"seq": from + i as u64, "ts": "2026-01-01T00:00:00Z", "level": "info",
                   "step_id": null, "message": m})
        })
        .collect();
    json!({ "lines": lines }).to_string()
}

fn assert_refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status.as_u16(), r.code()), (status, code), "{}", r.body);
}

// ---------------------------------------------------------------------
// Item 3: connections without credentials.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed_and_the_api_still_answers() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(
        &scratch,
        &["--max-connections", "16", "--header-timeout-seconds", "2"],
    );
    let addr = addr_of(&hub);
    // Twice the cap: half silent, half stopping in the middle of a head.
    let mut conns: Vec<TcpStream> = (0..32)
        .map(|i| {
            let mut c = TcpStream::connect(addr).expect("connect");
            if i % 2 == 1 {
                c.write_all(b"GET /v1/robots HTTP/1.1\r\nHost: hub\r\nX-Slow: ")
                    .expect("send half a head");
            }
            c
        })
        .collect();

    // A real call gets through: the held connections time out and make
    // room, and the call waits in the backlog meanwhile.
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let r = tokio::time::timeout(Duration::from_secs(30), api.get("/v1/workflows"))
        .await
        .expect("the API answers while the connections are held");
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);

    let conns = tokio::task::spawn_blocking(move || {
        conns
            .iter_mut()
            .map(|c| closed_within(c, Duration::from_secs(20)))
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    assert!(
        conns.iter().all(|&closed| closed),
        "every idle or half-sent connection is closed by the hub: {conns:?}"
    );
    // And again once they are all gone.
    let r = api.get("/v1/workflows").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert!(
        hub.stderr().contains("at the connection limit"),
        "{}",
        hub.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_outlasts_the_header_timeout() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(
        &scratch,
        &["--header-timeout-seconds", "1", "--hold-seconds", "4"],
    );
    let robot_api = Api::new(&hub, Some(token(&key, "robot")));
    register(&robot_api, "patient").await;
    let started = Instant::now();
    let answer = poll(&robot_api, "patient", "p1").await;
    assert_eq!(answer["leases"], json!([]), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the poll was held past the 1 s header timeout ({:?})",
        started.elapsed()
    );
    // The same kept-alive connection serves the next call.
    let answer = poll(&robot_api, "patient", "p2").await;
    assert_eq!(answer["leases"], json!([]), "{answer}");
}

// ---------------------------------------------------------------------
// Item 9: TLS.

fn trusting(ca_pem: &[u8]) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem).expect("a PEM CA")])
        // Every call a new connection, so a reload shows at once.
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client")
}

async fn get_status(client: &reqwest::Client, url: &str) -> Result<u16, reqwest::Error> {
    client.get(url).send().await.map(|r| r.status().as_u16())
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_and_a_sighup_loads_the_new_certificate() {
    let scratch = Scratch::new();
    let dir = scratch.dir.path();
    let (ca1, cert1, key1) = make_ca_and_cert(dir, "one");
    let (ca2, cert2, key2) = make_ca_and_cert(dir, "two");
    let cert_path = dir.join("hub-cert.pem");
    let key_path = dir.join("hub-key.pem");
    std::fs::write(&cert_path, &cert1).expect("write the cert");
    std::fs::write(&key_path, &key1).expect("write the key");
    let hub = Hub::start_with(
        &scratch,
        &[
            "--tls-cert",
            cert_path.to_str().expect("utf-8"),
            "--tls-key",
            key_path.to_str().expect("utf-8"),
        ],
    );
    assert!(hub.url.starts_with("https://127.0.0.1:"), "{}", hub.url);
    let url = format!("{}/v1/workflows", hub.url);

    // No token: a 401 from the API is the proof the TLS exchange worked.
    assert_eq!(get_status(&trusting(&ca1), &url).await.ok(), Some(401));
    assert!(
        get_status(&trusting(&ca2), &url).await.is_err(),
        "a client that trusts another CA is refused"
    );
    let plain = format!("http://{}/v1/workflows", addr_of(&hub));
    assert!(
        get_status(&reqwest::Client::new(), &plain).await.is_err(),
        "plain HTTP to the TLS port gets no answer"
    );

    // A new pair, then SIGHUP: new connections see the new certificate.
    std::fs::write(&cert_path, &cert2).expect("write the new cert");
    std::fs::write(&key_path, &key2).expect("write the new key");
    let pid = hub_pid(&hub);
    sighup(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_status(&trusting(&ca2), &url).await.ok() != Some(401) {
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served after SIGHUP: {}",
            hub.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        get_status(&trusting(&ca1), &url).await.is_err(),
        "the old certificate is no longer served"
    );

    // A broken pair keeps the one in service, and says why in the log.
    std::fs::write(&key_path, b"not a key").expect("break the key");
    sighup(pid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hub.stderr().contains("still serving the previous pair") {
        assert!(
            Instant::now() < deadline,
            "no error logged: {}",
            hub.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get_status(&trusting(&ca2), &url).await.ok(), Some(401));
    assert!(hub.stop().success());
}

#[cfg(unix)]
fn hub_pid(hub: &Hub) -> i32 {
    hub.pid().expect("the hub is running") as i32
}

#[cfg(unix)]
fn sighup(pid: i32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    kill(Pid::from_raw(pid), Signal::SIGHUP).expect("signal the hub");
}

#[test]
fn a_certificate_that_does_not_load_stops_serve_with_the_reason() {
    let scratch = Scratch::new();
    let cert = scratch.dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").expect("write");
    let out = hub_command()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(scratch.db_args())
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&cert)
        .output()
        .expect("run tasuki-hub");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("holds no PEM certificate") && stderr.contains("cert.pem"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------
// Item 10: lease calls bound to the key.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_key_cannot_use_a_lease_it_does_not_hold() {
    let scratch = Scratch::new();
    let key_a = create_key(&scratch, ALL_SCOPES);
    let key_b = create_key(&scratch, "robot");
    let hub = Hub::start_with(&scratch, &["--hold-seconds", "1"]);
    let api = Api::new(&hub, Some(token(&key_a, ALL_SCOPES)));
    let robot_a = Api::new(&hub, Some(token(&key_a, "robot")));
    let robot_b = Api::new(&hub, Some(token(&key_b, "robot")));
    register(&robot_b, "robot-b").await;
    let (id, lease) = leased(&api, &robot_a, "robot-a").await;

    let base = format!("/v1/robot/sessions/{id}");
    use reqwest::Method;
    let calls: [(Method, String, String); 5] = [
        (
            Method::POST,
            format!("{base}/logs"),
            log_batch(1, &["forged"]),
        ),
        (
            Method::PUT,
            format!("{base}/steps"),
            json!({"revision": 99, "steps": []}).to_string(),
        ),
        (
            Method::PUT,
            format!("{base}/artifacts/forged.txt"),
            "forged".into(),
        ),
        (
            Method::POST,
            format!("{base}/finish"),
            json!({"status": "error", "idempotency_key": "forged", "ended_at": "2026-01-01T00:00:00Z", "steps": []}).to_string(),
        ),
        (Method::POST, format!("{base}/release"), "{}".into()),
    ];
    for (method, path, body) in calls {
        let r = with_lease(&robot_b, method, &path, &lease, body).await;
        assert_refused(&r, 409, "lease_lost");
    }

    // A's session is as it was: running on robot-a, nothing of B's stored.
    let s = api.get(&format!("/v1/session_queues/{id}")).await;
    assert_eq!(s.body["status"], "running", "{}", s.body);
    assert_eq!(s.body["robot"]["name"], "robot-a", "{}", s.body);
    let logs = api.get(&format!("/v1/session_queues/{id}/logs")).await;
    assert!(!logs.body.to_string().contains("forged"), "{}", logs.body);
    let arts = api.get(&format!("/v1/session_queues/{id}/artifacts")).await;
    assert!(!arts.body.to_string().contains("forged"), "{}", arts.body);
    // And A's own calls still work.
    let r = with_lease(
        &robot_a,
        reqwest::Method::POST,
        &format!("{base}/logs"),
        &lease,
        log_batch(1, &["mine"]),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = with_lease(
        &robot_a,
        reqwest::Method::POST,
        &format!("{base}/finish"),
        &lease,
        json!({"status": "success", "idempotency_key": "k1", "ended_at": "2026-01-01T00:00:00Z", "steps": []}).to_string(),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["status"], "success", "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_report_with_outputs_no_robot_makes_is_refused() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, &["--hold-seconds", "1"]);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = Api::new(&hub, Some(token(&key, "robot")));
    let (id, lease) = leased(&api, &robot, "outputs").await;
    let finish = format!("/v1/robot/sessions/{id}/finish");
    // Too large, or not an object: refused, naming the field.
    for outputs in [json!({"big": "x".repeat(70 * 1024)}), json!([1, 2])] {
        let report = json!({"status": "success", "idempotency_key": "k0",
            "ended_at": "2026-01-01T00:00:00Z", "steps": [], "outputs": outputs});
        let r = with_lease(
            &robot,
            reqwest::Method::POST,
            &finish,
            &lease,
            report.to_string(),
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (422, "invalid_field"),
            "{}",
            r.body
        );
        assert_eq!(r.body["error"]["problems"][0]["path"], "outputs");
    }
    let r = api.get(&format!("/v1/session_queues/{id}")).await;
    assert_eq!(r.body["status"], "running", "{}", r.body);
    let report = json!({"status": "success", "idempotency_key": "k1",
        "ended_at": "2026-01-01T00:00:00Z", "steps": [], "outputs": {"n": 1}});
    let r = with_lease(
        &robot,
        reqwest::Method::POST,
        &finish,
        &lease,
        report.to_string(),
    )
    .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["outputs"], json!({"n": 1}), "{}", r.body);
}

// ---------------------------------------------------------------------
// Item 11: failed authentication.

async fn token_call(api: &Api, key: &Key, secret: &str) -> Reply {
    api.post(
        "/v1/token",
        &json!({"access_key_id": key.id, "secret_access_key": secret}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_secrets_are_limited_per_key_and_source_but_not_the_key_holder() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let guesser = api_from(&hub, None, [127, 0, 0, 1]);
    for i in 0..10 {
        let r = token_call(&guesser, &key, &format!("guess-{i}")).await;
        assert_refused(&r, 401, "invalid_secret");
    }
    // The 11th guess is not tested, even if right.
    let r = token_call(&guesser, &key, &key.secret).await;
    assert_refused(&r, 429, "too_many_failed_authentications");
    let retry: u64 = r.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(r.message().contains(&key.id), "{}", r.message());

    // The key's holder, elsewhere, is not locked out by someone else's
    // guesses...
    let holder = api_from(&hub, None, [127, 0, 0, 2]);
    let r = token_call(&holder, &key, &key.secret).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    // ...but a second address that guesses gets one guess.
    let second = api_from(&hub, None, [127, 0, 0, 3]);
    assert_refused(&token_call(&second, &key, "x").await, 401, "invalid_secret");
    assert_refused(
        &token_call(&second, &key, "y").await,
        429,
        "too_many_failed_authentications",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_bearer_tokens_are_limited_per_source_and_success_is_not_counted() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, &["--quota-per-robot", "1000000"]);
    let good = api_from(&hub, Some(token(&key, ALL_SCOPES)), [127, 0, 0, 1]);
    // Successes are never counted.
    for _ in 0..40 {
        assert_eq!(good.get("/v1/workflows").await.status.as_u16(), 200);
    }
    // Thirty tokens with made-up key ids, then the source is refused.
    for i in 0..30 {
        let forged = Key {
            id: format!("AK-made-up-{i}"),
            secret: "x".into(),
        };
        let bad = api_from(&hub, Some(token(&forged, ALL_SCOPES)), [127, 0, 0, 4]);
        assert_refused(&bad.get("/v1/workflows").await, 401, "unknown_access_key");
    }
    let bad = api_from(&hub, Some("not.a.jwt".into()), [127, 0, 0, 4]);
    let r = bad.get("/v1/workflows").await;
    assert_refused(&r, 429, "too_many_failed_authentications");
    assert!(r.headers.contains_key("retry-after"));
    assert!(r.message().contains("127.0.0.4"), "{}", r.message());
    // Robot calls go through the same check: this key never authenticated
    // from 127.0.0.4, so nothing tells it from a guess.
    let robot = api_from(&hub, Some(token(&key, "robot")), [127, 0, 0, 4]);
    let r = robot.get("/v1/robot/robots/nobody").await;
    assert_refused(&r, 429, "too_many_failed_authentications");
    // Other sources are unaffected.
    assert_eq!(good.get("/v1/workflows").await.status.as_u16(), 200);
}

/// A bad `/v1/token` call (an unknown key id each time, so that only the
/// source's limit applies) from `source`.
async fn bad_token_call(hub: &Hub, source: [u8; 4], i: usize) -> Reply {
    let api = api_from(hub, None, source);
    api.post(
        "/v1/token",
        &json!({"access_key_id": format!("AK-guess-{i}"), "secret_access_key": "x"}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_authenticated_from_an_address_keeps_working_while_the_address_fails() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let stranger = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let shared = [127, 0, 0, 7];
    // A robot at work on the shared address.
    let robot = api_from(&hub, Some(token(&key, "robot")), shared);
    register(&robot, "neighbour").await;
    // A neighbour behind the same address fails past the limit...
    for i in 0..35 {
        let r = bad_token_call(&hub, shared, i).await;
        let expected = if i < 30 {
            (401, "unknown_access_key")
        } else {
            (429, "too_many_failed_authentications")
        };
        assert_eq!(
            (r.status.as_u16(), r.code()),
            expected,
            "attempt {i}: {}",
            r.body
        );
    }
    // ...and the robot's key keeps working from there, for robot calls and
    // for tokens, while a key that never authenticated from there is
    // refused.
    assert_eq!(poll(&robot, "neighbour", "p1").await["leases"], json!([]));
    let r = token_call(&api_from(&hub, None, shared), &key, &key.secret).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let r = token_call(&api_from(&hub, None, shared), &stranger, &stranger.secret).await;
    assert_refused(&r, 429, "too_many_failed_authentications");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_failed_attempts_are_counted_before_they_run_and_the_limit_can_be_off() {
    let scratch = Scratch::new();
    let _key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, &["--auth-failures-per-source", "5"]);
    let hub = std::sync::Arc::new(hub);
    let burst = |hub: std::sync::Arc<Hub>, source: [u8; 4]| async move {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..40 {
            let hub = hub.clone();
            calls.spawn(async move { bad_token_call(&hub, source, i).await });
        }
        let mut codes = Vec::new();
        while let Some(r) = calls.join_next().await {
            let r = r.expect("join");
            codes.push((r.status.as_u16(), r.code().to_string()));
        }
        codes
    };
    let codes = burst(hub.clone(), [127, 0, 0, 8]).await;
    let tested = codes.iter().filter(|(s, _)| *s == 401).count();
    let refused = codes
        .iter()
        .filter(|(s, c)| *s == 429 && c == "too_many_failed_authentications")
        .count();
    assert_eq!(
        (tested, refused),
        (5, 35),
        "forty guesses at once: only the limit's worth tested: {codes:?}"
    );

    // Behind a proxy the per-source limit is turned off with 0.
    let scratch = Scratch::new();
    let hub = std::sync::Arc::new(Hub::start_with(
        &scratch,
        &["--auth-failures-per-source", "0"],
    ));
    let codes = burst(hub, [127, 0, 0, 8]).await;
    assert!(codes.iter().all(|(s, _)| *s == 401), "{codes:?}");
}

// ---------------------------------------------------------------------
// Review H2: slow bodies and connections per address.

/// Sends `head`, then `body` in `chunk`-byte pieces `pause` apart (stopping
/// when the hub has answered or closed), and reads the answer: `(the
/// answer as text, how long from the head to the answer)`.
fn paced_request(
    addr: SocketAddr,
    head: &str,
    body: &[u8],
    chunk: usize,
    pause: Duration,
) -> (String, Duration) {
    let mut conn = TcpStream::connect(addr).expect("connect");
    let started = Instant::now();
    conn.write_all(head.as_bytes()).expect("send the head");
    conn.set_read_timeout(Some(Duration::from_millis(10)))
        .expect("a read timeout");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let mut answered_at = None;
    let mut pieces = body.chunks(chunk);
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answered_at.get_or_insert_with(|| started.elapsed());
                answer.extend_from_slice(&buf[..n]);
                // The rest of the answer follows at once, or never.
                conn.set_read_timeout(Some(Duration::from_millis(500)))
                    .expect("a read timeout");
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if answered_at.is_some() {
                    break;
                }
            }
            Err(_) => break,
        }
        match pieces.next() {
            Some(piece) => {
                if conn.write_all(piece).is_err() {
                    continue;
                }
                std::thread::sleep(pause);
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no answer within a minute"
        );
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        answered_at.unwrap_or_else(|| started.elapsed()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_off_while_paced_uploads_and_long_polls_are_not() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(
        &scratch,
        &["--body-timeout-seconds", "2", "--hold-seconds", "4"],
    );
    let addr = addr_of(&hub);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));

    // A token request whose body comes a byte every half second, before
    // any credential is checked: cut off after the 2 s allowance.
    let trickle = tokio::task::spawn_blocking(move || {
        paced_request(
            addr,
            "POST /v1/token HTTP/1.1\r\nHost: hub\r\ncontent-type: application/json\r\n\
             content-length: 100\r\n\r\n",
            &[b' '; 100],
            1,
            Duration::from_millis(500),
        )
    });
    // Others are answered meanwhile.
    let r = api.get("/v1/workflows").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let (answer, after) = trickle.await.expect("join");
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("body_timeout"),
        "{answer}"
    );
    assert!(
        after < Duration::from_secs(10),
        "the trickle was cut off after {after:?}"
    );

    // A token request is small: a large one is refused past 4 KiB.
    let r = api.post_raw("/v1/token", vec![b' '; 5000]).await;
    assert_refused(&r, 413, "body_too_large");
    assert!(r.message().contains("4096 bytes"), "{}", r.message());

    // A long poll is held past the allowance: the deadline is the body's.
    let robot = Api::new(&hub, Some(token(&key, "robot")));
    let (id, lease) = leased(&api, &robot, "paced").await;
    let started = Instant::now();
    let answer = poll(&robot, "paced", "p2").await;
    assert!(started.elapsed() >= Duration::from_secs(3), "{answer}");

    // An upload that takes longer than the allowance, at a reasonable
    // speed (6 MiB at about 2 MiB/s), earns the time it needs.
    let token = robot.token.clone().expect("a token");
    let data = vec![7u8; 6 * 1024 * 1024];
    let head = format!(
        "PUT /v1/robot/sessions/{id}/artifacts/paced.bin HTTP/1.1\r\nHost: hub\r\n\
         authorization: Bearer {token}\r\ntasuki-lease: {lease}\r\n\
         content-length: {}\r\n\r\n",
        data.len()
    );
    let (answer, after) = tokio::task::spawn_blocking(move || {
        paced_request(addr, &head, &data, 256 * 1024, Duration::from_millis(125))
    })
    .await
    .expect("join");
    assert!(answer.starts_with("HTTP/1.1 2"), "{answer}");
    assert!(after > Duration::from_secs(2), "the upload took {after:?}");
}

/// A connection to `addr` from the local address `source`.
async fn connect_from(addr: SocketAddr, source: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind the source address");
    let stream = socket.connect(addr).await.expect("connect");
    let stream = stream.into_std().expect("a std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_no_more_than_its_share_of_connections() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(
        &scratch,
        &[
            "--max-connections-per-address",
            "4",
            "--header-timeout-seconds",
            "30",
        ],
    );
    let addr = addr_of(&hub);
    let hog = [127, 0, 0, 9];
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(addr, hog).await);
    }
    // The fifth is closed at once, and so is an API call from there...
    let mut fifth = connect_from(addr, hog).await;
    let closed =
        tokio::task::spawn_blocking(move || closed_within(&mut fifth, Duration::from_secs(5)))
            .await
            .expect("join");
    assert!(closed, "the fifth connection of one address is closed");
    let token = token(&key, ALL_SCOPES);
    let from_hog = api_from(&hub, Some(token.clone()), hog);
    let r = from_hog
        .request(reqwest::Method::GET, "/v1/workflows")
        .send()
        .await;
    assert!(r.is_err(), "{r:?}");
    // ...while another address is served,
    let other = api_from(&hub, Some(token.clone()), [127, 0, 0, 10]);
    assert_eq!(other.get("/v1/workflows").await.status.as_u16(), 200);
    // and the address is served again once its connections close.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = api_from(&hub, Some(token.clone()), hog);
        match fresh
            .request(reqwest::Method::GET, "/v1/workflows")
            .send()
            .await
        {
            Ok(r) => {
                assert_eq!(r.status().as_u16(), 200);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        hub.stderr().contains("at its connection limit"),
        "{}",
        hub.stderr()
    );
}

/// Uploads sent at once (on PostgreSQL, on connections of their own) take
/// turns: together they cannot pass the limit each one alone fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_uploaded_at_once_stay_within_a_session_s_limit() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(
        &scratch,
        &["--hold-seconds", "1", "--max-session-artifacts", "3"],
    );
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = std::sync::Arc::new(Api::new(&hub, Some(token(&key, "robot"))));
    let (id, lease) = leased(&api, &robot, "uploader").await;
    let mut uploads = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (robot, lease) = (robot.clone(), lease.clone());
        uploads.spawn(async move {
            with_lease(
                &robot,
                reqwest::Method::PUT,
                format!("/v1/robot/sessions/{id}/artifacts/part-{i}.txt"),
                &lease,
                vec![b'x'; 100],
            )
            .await
        });
    }
    let replies = uploads.join_all().await;
    let stored = replies.iter().filter(|r| r.status.as_u16() == 204).count();
    assert_eq!(
        stored,
        3,
        "{:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    for r in replies.iter().filter(|r| r.status.as_u16() != 204) {
        assert_refused(r, 413, "session_artifact_limit");
    }
    let listed = api.get(&format!("/v1/session_queues/{id}/artifacts")).await;
    assert_eq!(
        listed.body["artifacts"].as_array().map(Vec::len),
        Some(3),
        "{}",
        listed.body
    );
}

// ---------------------------------------------------------------------
// Item 18: per-session limits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stores_no_more_than_its_limits() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(
        &scratch,
        &[
            "--hold-seconds",
            "1",
            "--max-session-artifacts",
            "2",
            "--max-session-artifact-bytes",
            "1000",
            "--max-session-log-lines",
            "5",
            "--max-session-log-bytes",
            "100",
        ],
    );
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = Api::new(&hub, Some(token(&key, "robot")));
    let (id, lease) = leased(&api, &robot, "filler").await;
    let put = |name: &str, size: usize| {
        with_lease(
            &robot,
            reqwest::Method::PUT,
            format!("/v1/robot/sessions/{id}/artifacts/{name}"),
            &lease,
            vec![b'x'; size],
        )
    };
    assert_eq!(put("a.txt", 400).await.status.as_u16(), 204);
    assert_eq!(put("b.txt", 400).await.status.as_u16(), 204);
    let r = put("c.txt", 1).await;
    assert_refused(&r, 413, "session_artifact_limit");
    assert!(
        r.message().contains("--max-session-artifacts"),
        "{}",
        r.message()
    );
    // A new version of a stored artifact replaces it: counted once.
    assert_eq!(put("a.txt", 500).await.status.as_u16(), 204);
    let r = put("a.txt", 700).await;
    assert_refused(&r, 413, "session_artifact_limit");
    assert!(
        r.message().contains("--max-session-artifact-bytes"),
        "{}",
        r.message()
    );

    let logs = |body: String| {
        with_lease(
            &robot,
            reqwest::Method::POST,
            format!("/v1/robot/sessions/{id}/logs"),
            &lease,
            body,
        )
    };
    let forty = "x".repeat(40);
    let r = logs(log_batch(1, &[&forty, &forty])).await;
    assert_eq!(r.body["high_seq"], 2, "{}", r.body);
    // A resent batch is not counted twice.
    let r = logs(log_batch(1, &[&forty, &forty, "a", "b"])).await;
    assert_eq!(r.body["high_seq"], 4, "{}", r.body);
    // Past a limit the log is cut, not refused: the lines that fit, then
    // the hub's line saying where and why; the robot is told the whole
    // batch was taken, so it carries on and its report arrives.
    let r = logs(log_batch(5, &[&"y".repeat(30), "z"])).await;
    assert_eq!(r.body["high_seq"], 6, "{}", r.body);
    let r = logs(log_batch(8, &["later"])).await;
    assert_eq!(r.body["high_seq"], 8, "{}", r.body);
    let stored = api.get(&format!("/v1/session_queues/{id}/logs")).await;
    let lines = stored.body["logs"].as_array().expect("logs").clone();
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(messages.len(), 5, "{messages:?}");
    assert_eq!(&messages[..4], [&*forty, &*forty, "a", "b"]);
    assert_eq!(
        messages[4],
        "[tasuki-hub] the log stops here, at line 5: this session reached the hub's \
         --max-session-log-bytes (100 bytes of messages); the lines after it were not stored"
    );
    assert_eq!(lines[4]["seq"], 5);

    // The line limit cuts the same way.
    let (id, lease) = leased(&api, &robot, "chatty").await;
    let r = with_lease(
        &robot,
        reqwest::Method::POST,
        format!("/v1/robot/sessions/{id}/logs"),
        &lease,
        log_batch(1, &["1", "2", "3", "4", "5", "6", "7"]),
    )
    .await;
    assert_eq!(r.body["high_seq"], 7, "{}", r.body);
    let stored = api.get(&format!("/v1/session_queues/{id}/logs")).await;
    let last = stored.body["logs"][5]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        last.contains("at line 6") && last.contains("--max-session-log-lines (5 lines)"),
        "{}",
        stored.body
    );
}

/// A workflow's `limits.artifact_bytes` below the hub's own: the artifact
/// past it is refused, naming the workflow's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_s_artifact_limit_refuses_the_artifact_past_it() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, &["--hold-seconds", "1"]);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = Api::new(&hub, Some(token(&key, "robot")));
    register(&robot, "shooter").await;
    let yaml = format!("{YAML}limits: {{artifact_bytes: 1000}}\n");
    let r = api.post("/v1/workflows", &json!({"yaml": yaml})).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let wf = r.body["id"].as_i64().expect("workflow id");
    let r = api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": wf, "params": {}}),
        )
        .await;
    let id = r.body["id"].as_i64().expect("session id");
    let answer = poll(&robot, "shooter", "p1").await;
    let lease = answer["leases"][0]["lease_id"]
        .as_str()
        .expect("a lease")
        .to_string();
    let put = |name: &str, size: usize| {
        with_lease(
            &robot,
            reqwest::Method::PUT,
            format!("/v1/robot/sessions/{id}/artifacts/{name}"),
            &lease,
            vec![b'x'; size],
        )
    };
    assert_eq!(put("a.png", 600).await.status.as_u16(), 204);
    let r = put("b.png", 600).await;
    assert_refused(&r, 413, "session_artifact_limit");
    assert!(
        r.message()
            .contains("at most 1000 bytes (its workflow's limits.artifact_bytes)"),
        "{}",
        r.message()
    );
    assert_eq!(put("b.png", 400).await.status.as_u16(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_size_artifact_gets_a_json_error() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, &["--hold-seconds", "1"]);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = Api::new(&hub, Some(token(&key, "robot")));
    let (id, lease) = leased(&api, &robot, "big").await;
    let r = with_lease(
        &robot,
        reqwest::Method::PUT,
        &format!("/v1/robot/sessions/{id}/artifacts/huge.bin"),
        &lease,
        vec![0u8; 50 * 1024 * 1024 + 1],
    )
    .await;
    assert_refused(&r, 413, "artifact_too_large");
}

// ---------------------------------------------------------------------
// Item 12: callers' text in the hub's log.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_bidi_characters_in_a_workflow_name_are_escaped_in_the_log() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let name = "evil\nFORGED LINE\r\u{1b}[31mred\u{202e}desrever";
    let r = api
        .post(
            "/v1/workflows",
            &json!({"workflow": {"version": 1, "name": name, "steps": [
                {"id": "s", "action": "log", "with": {"message": "hi"}}]}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hub.stderr().contains("workflow registered") {
        assert!(Instant::now() < deadline, "{}", hub.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = hub.stderr();
    assert!(
        log.contains(r"evil\nFORGED LINE\r\u{1b}[31mred\u{202e}desrever"),
        "{log}"
    );
    assert!(!log.contains("\nFORGED"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
    assert!(!log.contains('\u{202e}'), "{log}");
    assert!(!log.contains('\r'), "{log}");
}
