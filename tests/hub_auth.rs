//! Access keys, the token endpoint, and every way a bearer token can fail,
//! against a real `tasuki-hub` process.

#[path = "hub_support.rs"]
mod hub_support;

use hub_support::*;
use jsonwebtoken::Algorithm;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[test]
fn keys_create_prints_the_secret_once_and_stores_it_sealed() {
    // It reads the database's files.
    let scratch = Scratch::sqlite();
    let out = keys_create(&scratch, ALL_SCOPES);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let obj = printed.as_object().expect("an object");
    let mut fields: Vec<&str> = obj.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(fields, ["access_key_id", "secret_access_key"]);
    let id = obj["access_key_id"].as_str().unwrap();
    let secret = obj["secret_access_key"].as_str().unwrap();
    assert!(id.starts_with("TSK") && id.len() == 23, "{id}");
    assert_eq!(secret.len(), 64);

    // Neither the secret nor any long piece of it is in the database files.
    let mut db_bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", scratch.db_file().display());
        if let Ok(b) = std::fs::read(&path) {
            db_bytes.extend(b);
        }
    }
    assert!(!db_bytes.is_empty());
    assert!(
        !contains(&db_bytes, &secret.as_bytes()[..16]),
        "the secret is stored in plaintext"
    );
    assert!(contains(&db_bytes, id.as_bytes()), "the key id is stored");

    // The master key file is private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(scratch.key_file())
            .expect("the key file exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A second key gets a different id and secret.
    let other = create_key(&scratch, "session_queue.read");
    assert_ne!(other.id, id);
    assert_ne!(other.secret, secret);
}

#[test]
fn keys_create_rejects_unknown_or_no_scopes() {
    let scratch = Scratch::new();
    let out = keys_create(&scratch, "session_queue.read sesion_queue.write");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`sesion_queue.write`"), "{err}");
    assert!(out.stdout.is_empty());
    let out = keys_create(&scratch, "  ");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no scope"));
}

#[cfg(unix)]
#[test]
fn the_master_key_file_is_guarded() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    create_key(&scratch, ALL_SCOPES);
    let key_file = scratch.key_file();

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = hub_command()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(scratch.db_args())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");

    // Without the key file, the sealed secrets could never be read: the hub
    // refuses rather than making a new one.
    std::fs::remove_file(&key_file).unwrap();
    let out = hub_command()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(scratch.db_args())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is missing") && err.contains("1 access key"),
        "{err}"
    );
}

#[tokio::test]
async fn token_endpoint_signs_tokens_for_a_key() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, "session_queue.read access_token.create");
    let no_token_scope = create_key(&scratch, "session_queue.read");
    let hub = Hub::start(&scratch);
    let anon = Api::new(&hub, None);

    let r = anon
        .post(
            "/v1/token",
            &json!({"access_key_id": key.id, "secret_access_key": key.secret}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let token = r.body["token"].as_str().expect("token").to_string();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
    assert_eq!(claims["iss"], ISSUER);
    assert_eq!(claims["aud"], AUDIENCE);
    assert_eq!(claims["sub"], key.id.as_str());
    assert_eq!(claims["scopes"], "session_queue.read access_token.create");
    let (nbf, exp) = (
        claims["nbf"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - nbf, 600, "expires defaults to 600");
    assert!((nbf - now()).abs() < 30);
    let expires_at = r.body["expires_at"].as_str().unwrap();
    assert!(expires_at.ends_with(".000Z"), "{expires_at}");

    // The token works.
    let api = Api::new(&hub, Some(token));
    assert_eq!(api.get("/v1/workflows").await.status, StatusCode::OK);

    // expires is honoured and bounded.
    let r = anon
        .post(
            "/v1/token",
            &json!({"access_key_id": key.id, "secret_access_key": key.secret, "expires": 3600}),
        )
        .await;
    let claims: Value =
        jsonwebtoken::dangerous::insecure_decode_claims(r.body["token"].as_str().unwrap()).unwrap();
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["nbf"].as_i64().unwrap(),
        3600
    );
    for bad in [json!(10), json!(100_000), json!("600"), json!(1.5)] {
        let r = anon
            .post(
                "/v1/token",
                &json!({"access_key_id": key.id, "secret_access_key": key.secret, "expires": bad}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}: {}",
            r.body
        );
        assert!(r.message().contains("expires"), "{}", r.body);
    }

    let r = anon
        .post(
            "/v1/token",
            &json!({"access_key_id": key.id, "secret_access_key": no_token_scope.secret}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "invalid_secret");

    let r = anon
        .post(
            "/v1/token",
            &json!({"access_key_id": "TSKNOSUCHKEY", "secret_access_key": key.secret}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.code(), "unknown_access_key");

    let r = anon
        .post(
            "/v1/token",
            &json!({"access_key_id": no_token_scope.id, "secret_access_key": no_token_scope.secret}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.message().contains("access_token.create"), "{}", r.body);

    let r = anon
        .post(
            "/v1/token",
            &json!({"access_key_id": key.id, "secret_access_key": key.secret, "expiry": 600}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.code(), "unknown_field");
    assert!(r.message().contains("expiry"), "{}", r.body);

    let r = anon
        .post("/v1/token", &json!({"access_key_id": key.id}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.message().contains("secret_access_key"), "{}", r.body);

    // Secrets never reach the log.
    let log = hub.stderr();
    assert!(log.contains("/v1/token"), "requests are logged: {log}");
    assert!(!log.contains(&key.secret));
    assert!(!log.contains(&no_token_scope.secret));
}

#[tokio::test]
async fn each_auth_failure_says_which() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let doomed = create_key(&scratch, ALL_SCOPES);
    // Every kind of failure in a row, far past the failed-auth limit.
    let hub = Hub::start_with(
        &scratch,
        &[
            "--auth-failures-per-source",
            "1000",
            "--auth-failures-per-key",
            "1000",
        ],
    );
    let now = now();

    let with = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims(&key, "session_queue.read");
        edit(&mut c);
        c
    };
    let cases: Vec<(&str, Option<String>, &str, &str)> = vec![
        ("no header", None, "missing_token", "Authorization"),
        (
            "wrong signature",
            Some(sign("not-the-secret", &with(&|_| {}))),
            "invalid_signature",
            "signature",
        ),
        (
            "expired",
            Some(sign(
                &key.secret,
                &with(&|c| {
                    c["nbf"] = json!(now - 3600);
                    c["exp"] = json!(now - 600);
                }),
            )),
            "token_expired",
            "expired",
        ),
        (
            "not yet valid",
            Some(sign(
                &key.secret,
                &with(&|c| {
                    c["nbf"] = json!(now + 600);
                    c["exp"] = json!(now + 1200);
                }),
            )),
            "token_not_yet_valid",
            "not valid yet",
        ),
        (
            "wrong issuer",
            Some(sign(
                &key.secret,
                &with(&|c| c["iss"] = json!("console.autoro.io")),
            )),
            "invalid_issuer",
            "console.autoro.io",
        ),
        (
            "wrong audience",
            Some(sign(
                &key.secret,
                &with(&|c| c["aud"] = json!("https://api.autoro.io/")),
            )),
            "invalid_audience",
            "https://api.autoro.io/",
        ),
        (
            "unknown key",
            Some(sign(
                &key.secret,
                &with(&|c| c["sub"] = json!("TSKNOSUCHKEY")),
            )),
            "unknown_access_key",
            "TSKNOSUCHKEY",
        ),
        (
            "lifetime over a day",
            Some(sign(
                &key.secret,
                &with(&|c| c["exp"] = json!(now + 2 * 86_400)),
            )),
            "token_lifetime_too_long",
            "86400",
        ),
        (
            "HS512",
            Some(sign_with(Algorithm::HS512, &key.secret, &with(&|_| {}))),
            "unsupported_algorithm",
            "HS256",
        ),
        (
            "unknown scope",
            Some(sign(
                &key.secret,
                &with(&|c| c["scopes"] = json!("session_queue.read everything")),
            )),
            "invalid_claim",
            "everything",
        ),
        (
            "no exp",
            Some(sign(
                &key.secret,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
            )),
            "missing_claim",
            "exp",
        ),
        (
            "no scopes",
            Some(sign(
                &key.secret,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("scopes");
                }),
            )),
            // Absent like `exp` or `sub`: missing, not malformed.
            "missing_claim",
            "scopes",
        ),
        (
            "scopes not a string",
            Some(sign(&key.secret, &with(&|c| c["scopes"] = json!(5)))),
            "invalid_claim",
            "scopes",
        ),
        (
            "exp not a number",
            Some(sign(&key.secret, &with(&|c| c["exp"] = json!("tomorrow")))),
            "invalid_claim",
            "exp",
        ),
        (
            "no sub",
            Some(sign(
                &key.secret,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("sub");
                }),
            )),
            "missing_claim",
            "sub",
        ),
        (
            "not a JWT",
            Some("not-a-jwt".into()),
            "malformed_token",
            "JWT",
        ),
    ];
    for (what, token, code, needle) in cases {
        let r = Api::new(&hub, token).get("/v1/workflows").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.body);
        assert_eq!(r.code(), code, "{what}: {}", r.body);
        assert!(r.message().contains(needle), "{what}: {}", r.body);
        assert!(r.headers.contains_key("www-authenticate"), "{what}");
    }

    // A scheme other than Bearer.
    let api = Api::new(&hub, None);
    let r = api
        .send(
            api.request(reqwest::Method::GET, "/v1/workflows")
                .header("authorization", format!("Basic {}", key.secret)),
        )
        .await;
    assert_eq!(r.code(), "invalid_authorization");

    // Clock skew within the leeway is tolerated.
    let skewed = sign(
        &key.secret,
        &with(&|c| {
            c["nbf"] = json!(now - 600);
            c["exp"] = json!(now - 10);
        }),
    );
    let r = Api::new(&hub, Some(skewed)).get("/v1/workflows").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Deleting a key ends its tokens at once.
    let doomed_token = token(&doomed, "session_queue.read");
    let doomed_api = Api::new(&hub, Some(doomed_token));
    assert_eq!(doomed_api.get("/v1/workflows").await.status, StatusCode::OK);
    let out = hub_command()
        .args(["keys", "delete", &doomed.id])
        .args(scratch.db_args())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = doomed_api.get("/v1/workflows").await;
    assert_eq!(r.code(), "unknown_access_key", "{}", r.body);
}

#[tokio::test]
async fn scopes_are_those_of_both_the_key_and_the_token() {
    let scratch = Scratch::new();
    let reader = create_key(&scratch, "session_queue.read");
    let full = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);

    // The token claims more than the key has: the key's scopes win.
    let api = Api::new(&hub, Some(token(&reader, ALL_SCOPES)));
    assert_eq!(api.get("/v1/session_queues").await.status, StatusCode::OK);
    let r = api
        .post("/v1/session_queues", &json!({"workflow_id": 1}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(r.code(), "insufficient_scope");
    assert!(
        r.message().contains("session_queue.write") && r.message().contains("access key"),
        "{}",
        r.body
    );

    // The key has everything, the token asks for less: the token's win.
    let api = Api::new(&hub, Some(token(&full, "session_queue.read")));
    assert_eq!(api.get("/v1/workflows").await.status, StatusCode::OK);
    let r = api
        .post("/v1/workflows", &json!({"yaml": HELLO_YAML}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert!(
        r.message().contains("workflow.write") && r.message().contains("token"),
        "{}",
        r.body
    );
    let r = api.delete("/v1/session_queues/1/cancel").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.message().contains("session_queue.delete"), "{}", r.body);

    // The scope is checked before the body is read.
    let r = api.post_raw("/v1/session_queues", "{not json").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);

    // A token with no scopes at all can do nothing.
    let api = Api::new(&hub, Some(token(&full, "")));
    let r = api.get("/v1/workflows").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.message().contains("none"), "{}", r.body);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
