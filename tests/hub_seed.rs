//! The AUTORO document's own command lines, run against a real hub with
//! only the base URL and the token's `iss`/`aud` changed (and `sub`, `nbf`
//! and `exp`, which every reader fills in): the JWT is built with
//! `base64` and `openssl dgst -hmac` exactly as the document shows, and the
//! calls are its curl commands. A hub in its AUTORO-compatible mode
//! (`--autoro-compat`) takes them with nothing changed but the base URL, the
//! key and the ids, GNU base64's wrapped lines included; a default hub
//! refuses the wrapped token, saying why.

#[path = "hub_support.rs"]
mod hub_support;

use std::process::{Command, Stdio};

use hub_support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The document's commands are macOS's, whose `base64` writes one line;
/// GNU `base64` wraps at 76 columns. This makes both behave like the
/// document's.
const PRELUDE: &str = r#"set -euo pipefail
base64() { command base64 "$@" | tr -d '\n'; }
"#;

/// Runs a bash script, with base64 made to write one line as on macOS,
/// and returns its stdout.
fn bash(script: &str) -> String {
    bash_as_is(&format!("{PRELUDE}{script}"))
}

/// Runs a bash script with the machine's own tools (GNU base64 wraps at 76
/// columns) and returns its stdout.
fn bash_as_is(script: &str) -> String {
    for tool in ["bash", "openssl", "curl", "base64", "sed", "tr"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is needed to run the AUTORO document's commands; install it (Debian: apt-get install -y curl openssl coreutils sed)"
        );
    }
    let out = Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{script}")])
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "script failed ({}):\n{script}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn the_shell_recipe_reproduces_the_documents_example_signature() {
    // The document's header and signature commands, verbatim, with its
    // example payload and secret.
    let header = bash(r#"echo -n '{"alg":"HS256","typ":"JWT"}' | base64"#);
    assert_eq!(header, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9");
    let payload = bash(
        r#"echo -n '{"iss": "console.autoro.io","sub": "IjoiIiwiZ3JhbnRzIjp7Im","aud": "https://api.autoro.io/","nbf": 1450471147,"exp": 1450473747,"scopes": "session_queue.write session_queue.read access_token.create"}' | \
base64 | \
tr -d '='"#,
    );
    assert_eq!(
        payload,
        "eyJpc3MiOiAiY29uc29sZS5hdXRvcm8uaW8iLCJzdWIiOiAiSWpvaUlpd2laM0poYm5SeklqcDdJbSIsImF1ZCI6ICJodHRwczovL2FwaS5hdXRvcm8uaW8vIiwibmJmIjogMTQ1MDQ3MTE0NywiZXhwIjogMTQ1MDQ3Mzc0Nywic2NvcGVzIjogInNlc3Npb25fcXVldWUud3JpdGUgc2Vzc2lvbl9xdWV1ZS5yZWFkIGFjY2Vzc190b2tlbi5jcmVhdGUifQ"
    );
    let signature = bash(
        r#"echo -n "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiAiY29uc29sZS5hdXRvcm8uaW8iLCJzdWIiOiAiSWpvaUlpd2laM0poYm5SeklqcDdJbSIsImF1ZCI6ICJodHRwczovL2FwaS5hdXRvcm8uaW8vIiwibmJmIjogMTQ1MDQ3MTE0NywiZXhwIjogMTQ1MDQ3Mzc0Nywic2NvcGVzIjogInNlc3Npb25fcXVldWUud3JpdGUgc2Vzc2lvbl9xdWV1ZS5yZWFkIGFjY2Vzc190b2tlbi5jcmVhdGUifQ" | \
openssl dgst -binary -sha256 -hmac "523463041EF9FFA2950D8450FEB34C88BC8692C40C9CF3C99DCDF75E270229E2" | \
base64 | sed "s/+/-/g;s/\//_/g;s/=//g""#,
    );
    assert_eq!(signature, "wwsLIqQjs2LF6WxSrPuTuUms4-sk33AC1-qwz9GjdeY");
}

/// The document's JWT recipe with our `iss`, `aud`, key and times.
fn sign_like_the_document(iss: &str, aud: &str, key: &Key) -> String {
    bash(&jwt_recipe(iss, aud, key))
}

/// The document's JWT recipe, its three commands chained by variables,
/// with our `iss`, `aud`, key and times.
fn jwt_recipe(iss: &str, aud: &str, key: &Key) -> String {
    let nbf = now();
    let exp = nbf + 600;
    format!(
        r#"HEADER=$(echo -n '{{"alg":"HS256","typ":"JWT"}}' | base64)
PAYLOAD=$(echo -n '{{"iss": "{iss}","sub": "{sub}","aud": "{aud}","nbf": {nbf},"exp": {exp},"scopes": "session_queue.write session_queue.read access_token.create"}}' | \
base64 | \
tr -d '=')
SIGNATURE=$(echo -n "$HEADER.$PAYLOAD" | \
openssl dgst -binary -sha256 -hmac "{secret}" | \
base64 | sed "s/+/-/g;s/\//_/g;s/=//g")
echo -n "$HEADER.$PAYLOAD.$SIGNATURE"
"#,
        sub = key.id,
        secret = key.secret,
    )
}

async fn register_seed_workflow(hub: &Hub, key: &Key) -> i64 {
    let api = Api::new(hub, Some(token(key, ALL_SCOPES)));
    let r = api
        .post(
            "/v1/workflows",
            &json!({"yaml": "version: 1\nname: Awesome Workflow.\nparams:\n  var1: \"\"\n  var2: []\nsteps:\n  - id: say\n    action: log\n    with: {message: \"${params.var1}\"}\n"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.body["id"].as_i64().unwrap()
}

#[tokio::test]
async fn the_documents_curl_commands_work_against_the_hub() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let base = hub.url.clone();
    let workflow_id = register_seed_workflow(&hub, &key).await;

    // 実行キューを作成する, with a JWT made on the command line.
    let jwt = sign_like_the_document(ISSUER, AUDIENCE, &key);
    let created = json_of(&bash(&format!(
        r#"curl --location --request POST "{base}/v1/session_queues" \
  --header "Authorization: Bearer {jwt}" \
  --header "content-type: application/json" \
  --data "{{
  \"workflow_id\": {workflow_id},
  \"params\": {{
    \"var1\": \"this is string\",
    \"var2\": [\"this\", \"is\", \"array\"]
  }}
}}""#
    )));
    assert_eq!(created["status"], "queued", "{created}");
    assert_eq!(
        created["workflow"],
        json!({"id": workflow_id, "name": "Awesome Workflow."})
    );
    assert_eq!(
        created["params"],
        json!({"var1": "this is string", "var2": ["this", "is", "array"]})
    );
    assert!(created["robot"].is_null());
    let session_id = created["id"].as_i64().unwrap();

    // トークンを生成する.
    let token = json_of(&bash(&format!(
        r#"curl --location --request POST "{base}/v1/token" \
  --header "content-type: application/json" \
  --data "{{
  \"access_key_id\": \"{id}\",
  \"secret_access_key\": \"{secret}\",
  \"expires\": 3600
}}""#,
        id = key.id,
        secret = key.secret
    )));
    let token = token["token"].as_str().expect("a token").to_string();

    // 実行キューの一覧を取得する: the document's dates are in 2019.
    let list = json_of(&bash(&format!(
        r#"curl --location --request GET "{base}/v1/session_queues?page=1&per_page=3&query=before:2019-10-11%20after:2019-07-01" \
  --header "Authorization: Bearer {token}""#
    )));
    assert_eq!(list, json!({"session_queues": [], "total_count": 0}));
    let list = json_of(&bash(&format!(
        r#"curl --location --request GET "{base}/v1/session_queues?page=1&per_page=10&query=" \
  --header "Authorization: Bearer {token}""#
    )));
    assert_eq!(list["total_count"], 1);
    // A read also says why a queued session waits when no robot could
    // take it (here: there is none); the answer to its creation does not.
    let mut listed = list["session_queues"][0].clone();
    let reason = listed
        .as_object_mut()
        .and_then(|o| o.remove("queued_reason"));
    assert_eq!(reason, Some(json!("no robot is registered on this hub")));
    assert_eq!(listed, created);

    // ワークフロー一覧を取得する.
    let workflows = json_of(&bash(&format!(
        r#"curl --location --request GET "{base}/v1/workflows?page=1&per_page=10" \
  --header "Authorization: Bearer {token}""#
    )));
    assert_eq!(workflows["total_count"], 1);
    assert_eq!(workflows["workflows"][0]["id"], workflow_id);

    // 実行キューをキャンセルする.
    let cancelled = json_of(&bash(&format!(
        r#"curl --location --request DELETE "{base}/v1/session_queues/{session_id}/cancel" \
  --header "Authorization: Bearer {token}" \
  --header "content-type: application/json""#
    )));
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
}

#[tokio::test]
async fn a_hub_can_take_the_documents_own_issuer_and_audience() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(
        &scratch,
        &[
            "--issuer",
            "console.autoro.io",
            "--audience",
            "https://api.autoro.io/",
        ],
    );
    let base = hub.url.clone();
    let api = Api::new(&hub, None);
    // Set up with a token of the configured issuer and audience.
    let mut c = claims(&key, ALL_SCOPES);
    c["iss"] = json!("console.autoro.io");
    c["aud"] = json!("https://api.autoro.io/");
    let setup = Api {
        token: Some(sign(&key.secret, &c)),
        ..api
    };
    let r = setup
        .post(
            "/v1/workflows",
            &json!({"yaml": "version: 1\nname: w\nsteps:\n  - {id: a, action: log, with: {message: hi}}\n"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let workflow_id = r.body["id"].as_i64().unwrap();

    // The document's payload, word for word but for sub, nbf and exp.
    let jwt = sign_like_the_document("console.autoro.io", "https://api.autoro.io/", &key);
    let created = json_of(&bash(&format!(
        r#"curl --location --request POST "{base}/v1/session_queues" \
  --header "Authorization: Bearer {jwt}" \
  --header "content-type: application/json" \
  --data "{{
  \"workflow_id\": {workflow_id}
}}""#
    )));
    assert_eq!(created["status"], "queued", "{created}");

    // The default issuer is now wrong.
    let jwt = sign_like_the_document(ISSUER, "https://api.autoro.io/", &key);
    let refused = json_of(&bash(&format!(
        r#"curl --location --request GET "{base}/v1/workflows" --header "Authorization: Bearer {jwt}""#
    )));
    assert_eq!(refused["error"]["code"], "invalid_issuer", "{refused}");
}

/// The document's own `iss` and `aud`.
const AUTORO_ISSUER: &str = "console.autoro.io";
const AUTORO_AUDIENCE: &str = "https://api.autoro.io/";

/// The document's JWT recipe as it is, GNU base64's line wraps kept: a
/// test of the wrapped token must have one.
fn wrapped_jwt(key: &Key) -> String {
    let jwt = bash_as_is(&jwt_recipe(AUTORO_ISSUER, AUTORO_AUDIENCE, key));
    assert!(
        jwt.contains('\n'),
        "this machine's base64 does not wrap its output (a macOS-like base64?), so the \
         wrapped-token case cannot be run here: {jwt}"
    );
    jwt
}

/// The document's 実行キューを作成する command with its params.
fn create_command(base: &str, jwt: &str, workflow_id: i64) -> String {
    format!(
        r#"curl --location --request POST "{base}/v1/session_queues" \
  --header "Authorization: Bearer {jwt}" \
  --header "content-type: application/json" \
  --data "{{
  \"workflow_id\": {workflow_id},
  \"params\": {{
    \"var1\": \"this is string\",
    \"var2\": [\"this\", \"is\", \"array\"]
  }}
}}""#
    )
}

/// A workflow that declares no params and takes the document's.
const TAKES_UNDECLARED: &str = "version: 1\nname: Awesome Workflow.\naccept_undeclared_params: true\nsteps:\n  - id: say\n    action: log\n    with: {message: \"${params.var1}\"}\n";

#[tokio::test]
async fn in_compat_mode_the_documents_commands_work_as_written_on_linux() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    // The documented flag set: --autoro-compat alone.
    let hub = Hub::start_with(&scratch, &["--autoro-compat"]);
    let base = hub.url.clone();
    let mut c = claims(&key, ALL_SCOPES);
    c["iss"] = json!(AUTORO_ISSUER);
    c["aud"] = json!(AUTORO_AUDIENCE);
    let setup = Api::new(&hub, Some(sign(&key.secret, &c)));
    let r = setup
        .post("/v1/workflows", &json!({"yaml": TAKES_UNDECLARED}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let workflow_id = r.body["id"].as_i64().unwrap();

    // 実行キューを作成する, with the JWT of the document's recipe, wrapped
    // lines and all, and the document's undeclared params.
    let jwt = wrapped_jwt(&key);
    let created = json_of(&bash_as_is(&create_command(&base, &jwt, workflow_id)));
    assert_eq!(created["status"], "queued", "{created}");
    assert_eq!(
        created["workflow"],
        json!({"id": workflow_id, "name": "Awesome Workflow."})
    );
    assert_eq!(
        created["params"],
        json!({"var1": "this is string", "var2": ["this", "is", "array"]})
    );
    let session_id = created["id"].as_i64().unwrap();

    // トークンを生成する: the hub signs it with the document's iss and aud.
    let token = json_of(&bash_as_is(&format!(
        r#"curl --location --request POST "{base}/v1/token" \
  --header "content-type: application/json" \
  --data "{{
  \"access_key_id\": \"{id}\",
  \"secret_access_key\": \"{secret}\",
  \"expires\": 3600
}}""#,
        id = key.id,
        secret = key.secret
    )));
    let token = token["token"].as_str().expect("a token").to_string();
    let issued: Value =
        jsonwebtoken::dangerous::insecure_decode_claims(&token).expect("the token's claims");
    assert_eq!(issued["iss"], AUTORO_ISSUER);
    assert_eq!(issued["aud"], AUTORO_AUDIENCE);

    // 実行キューの一覧を取得する.
    let list = json_of(&bash_as_is(&format!(
        r#"curl --location --request GET "{base}/v1/session_queues?page=1&per_page=3&query=before:2019-10-11%20after:2019-07-01" \
  --header "Authorization: Bearer {token}""#
    )));
    assert_eq!(list, json!({"session_queues": [], "total_count": 0}));
    let list = json_of(&bash_as_is(&format!(
        r#"curl --location --request GET "{base}/v1/session_queues?page=1&per_page=10&query=" \
  --header "Authorization: Bearer {token}""#
    )));
    assert_eq!(list["total_count"], 1, "{list}");
    assert_eq!(list["session_queues"][0]["id"], session_id);

    // ワークフロー一覧を取得する, with the wrapped JWT again.
    let workflows = json_of(&bash_as_is(&format!(
        r#"curl --location --request GET "{base}/v1/workflows?page=1&per_page=10" \
  --header "Authorization: Bearer {jwt}""#
    )));
    assert_eq!(workflows["workflows"][0]["id"], workflow_id, "{workflows}");

    // 実行キューをキャンセルする.
    let cancelled = json_of(&bash_as_is(&format!(
        r#"curl --location --request DELETE "{base}/v1/session_queues/{session_id}/cancel" \
  --header "Authorization: Bearer {token}" \
  --header "content-type: application/json""#
    )));
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

    // A wrapped token signed by another key is still refused, by its
    // signature.
    let mut forged = key.clone();
    forged.secret = "0".repeat(64);
    let jwt = wrapped_jwt(&forged);
    let refused = json_of(&bash_as_is(&create_command(&base, &jwt, workflow_id)));
    assert_eq!(refused["error"]["code"], "invalid_signature", "{refused}");
}

#[tokio::test]
async fn a_default_hub_says_which_header_is_broken_over_lines_and_how_to_fix_it() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(
        &scratch,
        &["--issuer", AUTORO_ISSUER, "--audience", AUTORO_AUDIENCE],
    );
    let jwt = wrapped_jwt(&key);
    let answer = bash_as_is(&format!(
        "{} --silent --write-out '\n%{{http_code}} %{{content_type}}'",
        create_command(&hub.url, &jwt, 1)
    ));
    let (body, status) = answer.rsplit_once('\n').expect("a status line");
    assert_eq!(status, "400 application/json", "{answer}");
    let body = json_of(body);
    assert_eq!(body["error"]["code"], "line_break_in_header", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    for needle in [
        "`Authorization` header",
        "broken over several lines",
        "line feed",
        "base64 -w0",
        "tr -d",
    ] {
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
}

#[tokio::test]
async fn without_the_opt_in_a_workflow_refuses_undeclared_params_even_in_compat_mode() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, &["--autoro-compat"]);
    let mut c = claims(&key, ALL_SCOPES);
    c["iss"] = json!(AUTORO_ISSUER);
    c["aud"] = json!(AUTORO_AUDIENCE);
    let api = Api::new(&hub, Some(sign(&key.secret, &c)));
    let strict = api
        .post(
            "/v1/workflows",
            &json!({"yaml": "version: 1\nname: strict\nsteps:\n  - {id: a, action: log, with: {message: hi}}\n"}),
        )
        .await;
    assert_eq!(strict.status, StatusCode::CREATED, "{}", strict.body);
    let r = api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": strict.body["id"], "params": {"var1": "this is string"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.code(), "invalid_params", "{}", r.body);
    assert_eq!(
        r.body["error"]["problems"][0]["path"], "params.var1",
        "{}",
        r.body
    );
    assert!(
        r.message().contains("accept_undeclared_params"),
        "{}",
        r.body
    );

    // A template reference to an undeclared param is refused without it too.
    let r = api
        .post(
            "/v1/workflows",
            &json!({"yaml": TAKES_UNDECLARED.replace("accept_undeclared_params: true\n", "")}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.message().contains("no param named `var1`"), "{}", r.body);

    // With it, a `${...}` literal in an undeclared param's value is refused,
    // as in a declared one's.
    let open = api
        .post("/v1/workflows", &json!({"yaml": TAKES_UNDECLARED}))
        .await;
    assert_eq!(open.status, StatusCode::CREATED, "{}", open.body);
    let r = api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": open.body["id"], "params": {"var1": "this is ${var1}", "var2": [{"k": "${x}"}]}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.code(), "invalid_params", "{}", r.body);
    let paths: Vec<&str> = r.body["error"]["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["path"].as_str())
        .collect();
    assert_eq!(paths, ["params.var1", "params.var2[0].k"], "{}", r.body);
    assert!(r.message().contains("`${...}` literal"), "{}", r.body);
}
