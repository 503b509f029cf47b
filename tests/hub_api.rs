//! Workflows and session queues through the public API of a real
//! `tasuki-hub`, and the hub keeping everything across a restart.

#[path = "hub_support.rs"]
mod hub_support;

use hub_support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The fields of the AUTORO Workflow schema, in its order.
const WORKFLOW_FIELDS: [&str; 11] = [
    "id",
    "name",
    "description",
    "vpn_option_id",
    "debug_mode",
    "robot_type",
    "single_process_mode",
    "error_handler_workflow_id",
    "color",
    "receiver_infos",
    "workflow_robots",
];

/// The fields of the AUTORO Session Queue schema, in its order.
const SESSION_FIELDS: [&str; 9] = [
    "id",
    "project_id",
    "started_at",
    "ended_at",
    "status",
    "created_at",
    "workflow",
    "params",
    "robot",
];

fn fields(v: &Value) -> Vec<&str> {
    v.as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn ids(list: &Value) -> Vec<i64> {
    list.as_array()
        .expect("an array")
        .iter()
        .map(|v| v["id"].as_i64().expect("an id"))
        .collect()
}

#[tokio::test]
async fn workflows_are_created_from_yaml_or_json_and_listed() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));

    let r = api
        .post(
            "/v1/workflows",
            &json!({"yaml": HELLO_YAML, "workflow_robots": ["standard-1", "sunaba-2"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(fields(&r.body), WORKFLOW_FIELDS);
    assert_eq!(r.body["name"], "hello");
    assert_eq!(r.body["description"], "says hello");
    assert_eq!(r.body["single_process_mode"], false);
    assert_eq!(r.body["workflow_robots"], json!(["standard-1", "sunaba-2"]));
    assert!(r.body["vpn_option_id"].is_null());
    let yaml_id = r.body["id"].as_i64().unwrap();

    let r = api
        .post(
            "/v1/workflows",
            &json!({
                "workflow": {
                    "version": 1,
                    "name": "json flow",
                    "single_process_mode": true,
                    "params": {"url": "http://127.0.0.1:1/"},
                    "steps": [{"id": "say", "action": "log", "with": {"message": "${params.url}"}}]
                },
                "description": "given as JSON"
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["name"], "json flow");
    assert_eq!(r.body["description"], "given as JSON");
    assert_eq!(r.body["single_process_mode"], true);
    assert_eq!(r.body["workflow_robots"], json!([]));
    let json_id = r.body["id"].as_i64().unwrap();
    assert!(json_id > yaml_id);

    let r = api.get("/v1/workflows").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(fields(&r.body), ["workflows", "total_count"]);
    assert_eq!(r.body["total_count"], 2);
    assert_eq!(ids(&r.body["workflows"]), [yaml_id, json_id]);
    for w in r.body["workflows"].as_array().unwrap() {
        assert_eq!(fields(w), WORKFLOW_FIELDS);
    }
}

#[tokio::test]
async fn an_invalid_workflow_gets_every_problem_with_its_place() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));

    let yaml = "version: 1\nname: broken\nsteps:\n  - id: a\n    action: shell.rnu\n  - id: a\n    action: log\n    with: {message: \"${steps.nope.output}\"}\n";
    let r = api.post("/v1/workflows", &json!({"yaml": yaml})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(r.code(), "invalid_workflow");
    let problems = r.body["error"]["problems"].as_array().expect("problems");
    assert!(problems.len() >= 3, "{}", r.body);
    let paths: Vec<&str> = problems
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"steps[0].action"), "{paths:?}");
    assert!(paths.contains(&"steps[1].id"), "{paths:?}");
    let action = problems
        .iter()
        .find(|p| p["path"] == "steps[0].action")
        .unwrap();
    assert_eq!(action["line"], 5, "{action}");
    assert!(action["column"].as_u64().is_some());
    assert!(action["message"].as_str().unwrap().contains("shell.rnu"));

    // YAML that does not parse: the line is given.
    let r = api
        .post(
            "/v1/workflows",
            &json!({"yaml": "version: 1\nname: x\nsteps: [\n"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(
        r.body["error"]["problems"][0]["line"].as_u64().is_some(),
        "{}",
        r.body
    );

    // JSON: field paths; an unknown field is named.
    let r = api
        .post(
            "/v1/workflows",
            &json!({"workflow": {"version": 1, "name": "", "stepz": [], "steps": []}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    let text = r.body.to_string();
    assert!(
        text.contains("stepz") && text.contains("\"path\":\"name\""),
        "{text}"
    );

    // The envelope itself.
    for (body, needle) in [
        (json!({}), "`yaml`"),
        (json!({"yaml": HELLO_YAML, "workflow": {}}), "not both"),
        (json!({"workflow": "version: 1"}), "JSON object"),
        (json!({"yaml": 1}), "yaml"),
        (
            json!({"yaml": HELLO_YAML, "workflow_robots": ["bad name"]}),
            "workflow_robots[0]",
        ),
        (
            json!({"yaml": HELLO_YAML, "workflow_robots": ["a", "a"]}),
            "workflow_robots[1]",
        ),
        (json!({"yaml": HELLO_YAML, "colour": "#fff"}), "colour"),
    ] {
        let r = api.post("/v1/workflows", &body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        assert!(r.message().contains(needle), "{body}: {}", r.body);
    }

    // Nothing invalid was stored.
    assert_eq!(api.get("/v1/workflows").await.body["total_count"], 0);
}

/// A workflow name belongs to the access key that first registered it: a
/// `call` step runs the newest of its name, so another key registering a
/// newer one would change what the first key's workflows run. Another key
/// is refused (and stores nothing) until the operator moves the name; a
/// deleted key's names stay its own until then.
#[tokio::test]
async fn a_workflow_name_belongs_to_the_key_that_first_registered_it() {
    const WRITER: &str = "workflow.write session_queue.read";
    let scratch = Scratch::new();
    let first = create_key(&scratch, ALL_SCOPES);
    let other = create_key(&scratch, WRITER);
    let reader = create_key(&scratch, "session_queue.read");
    let hub = Hub::start(&scratch);
    let by_first = Api::new(&hub, Some(token(&first, ALL_SCOPES)));
    let by_other = Api::new(&hub, Some(token(&other, WRITER)));
    let stamp = |says: &str| {
        json!({"yaml": format!(
            "version: 1\nname: stamp\nsteps:\n  - id: a\n    action: log\n    with: {{message: {says}}}\n"
        )})
    };
    let count = |api: &Api| {
        let api = api.clone();
        async move { api.get("/v1/workflows").await.body["total_count"].clone() }
    };
    let cli = |args: &[&str]| {
        hub_command()
            .arg("workflows")
            .args(args)
            .args(scratch.db_args())
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run tasuki-hub workflows")
    };

    for says in ["one", "two"] {
        let r = by_first.post("/v1/workflows", &stamp(says)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = by_other.post("/v1/workflows", &stamp("mine now")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert_eq!(r.code(), "name_taken", "{}", r.body);
    assert!(
        r.message()
            .contains("`stamp` belongs to another access key, which registered it first"),
        "{}",
        r.body
    );
    assert!(!r.message().contains(&first.id), "{}", r.body);
    assert_eq!(count(&by_first).await, 2, "nothing stored");
    // Two keys claiming a new name at once (at the same time on
    // PostgreSQL): one gets it, and every registration of the other is
    // refused.
    let racing = |api: &Api| {
        let api = api.clone();
        tokio::spawn(async move {
            api.post(
                "/v1/workflows",
                &json!({"yaml": "version: 1\nname: raced\nsteps:\n  - id: a\n    action: log\n    with: {message: hi}\n"}),
            )
            .await
            .status
        })
    };
    let tries: Vec<_> = (0..8)
        .map(|i| racing(if i % 2 == 0 { &by_first } else { &by_other }))
        .collect();
    let mut won = [0, 0];
    for (i, t) in tries.into_iter().enumerate() {
        match t.await.expect("a registration") {
            StatusCode::CREATED => won[i % 2] += 1,
            StatusCode::CONFLICT => {}
            other => panic!("a registration answered {other}"),
        }
    }
    assert!(won.contains(&4) && won.contains(&0), "{won:?}");
    // Calling a name is not registering it.
    let caller = json!({"yaml": "version: 1\nname: caller\nsteps:\n  - id: c\n    action: call\n    with: {workflow: stamp}\n"});
    let r = by_other.post("/v1/workflows", &caller).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // The operator moves the name; bad requests say what is wrong.
    for (args, expected) in [
        (
            vec!["transfer", "stamp", "--to-key", "TSKNOSUCHKEY"],
            "there is no access key `TSKNOSUCHKEY`",
        ),
        (
            vec!["transfer", "stamp", "--to-key", &reader.id],
            "does not have the `workflow.write` scope",
        ),
        (
            vec!["transfer", "no-such-flow", "--to-key", &other.id],
            "no workflow is registered under the name `no-such-flow`",
        ),
        (
            vec!["transfer", "stamp", "--to-key", &first.id],
            "already belongs to",
        ),
    ] {
        let out = cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let out = cli(&["transfer", "stamp", "--to-key", &other.id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = by_other.post("/v1/workflows", &stamp("mine now")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = by_first.post("/v1/workflows", &stamp("three")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    let auditor = create_key(&scratch, "audit.read");
    let audit = Api::new(&hub, Some(token(&auditor, "audit.read")))
        .get("/v1/audit_log")
        .await;
    let entry = audit.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["action"] == "workflow.transfer")
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["subject"], "workflow name stamp", "{}", audit.body);
    assert_eq!(entry["detail"]["to_key_id"], other.id.as_str(), "{entry}");

    // A deleted key's names stay its own (nobody else's workflows take
    // their place) until the operator moves them; the deletion says so.
    let out = hub_command()
        .args(["keys", "delete", &other.id])
        .args(scratch.db_args())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tasuki-hub keys delete");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // (`raced` is its own too if it won the race above.)
    assert!(
        stderr.contains("workflow name(s), which stay its own: caller, ")
            && stderr.contains("stamp\n"),
        "{stderr}"
    );
    let r = by_first.post("/v1/workflows", &stamp("back")).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.body);
    assert!(
        r.message()
            .contains("belongs to an access key that was deleted"),
        "{}",
        r.body
    );
    let out = cli(&["transfer", "stamp", "--to-key", &first.id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = by_first.post("/v1/workflows", &stamp("back")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}

#[tokio::test]
async fn workflow_pages_and_their_bounds() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(create_hello(&api).await);
    }

    let page = |q: &'static str| {
        let api = &api;
        async move { api.get(&format!("/v1/workflows?{q}")).await }
    };
    let r = page("").await;
    assert_eq!(
        ids(&r.body["workflows"]),
        created,
        "per_page defaults to 300"
    );
    let r = page("page=1&per_page=2").await;
    assert_eq!(ids(&r.body["workflows"]), created[..2]);
    assert_eq!(r.body["total_count"], 5);
    let r = page("page=3&per_page=2").await;
    assert_eq!(ids(&r.body["workflows"]), created[4..]);
    let r = page("page=4&per_page=2").await;
    assert_eq!(ids(&r.body["workflows"]), Vec::<i64>::new());
    assert_eq!(r.body["total_count"], 5);
    assert_eq!(page("per_page=1000").await.status, StatusCode::OK);

    for (q, needle) in [
        ("per_page=1001", "per_page"),
        ("per_page=0", "per_page"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("per_page=ten", "per_page"),
        ("page=1&page=2", "page"),
        ("pages=2", "pages"),
    ] {
        let r = page(q).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.body);
        assert!(
            r.message().contains(&format!("`{needle}`")),
            "{q}: {}",
            r.body
        );
    }
}

#[tokio::test]
async fn session_queues_are_created_read_listed_and_searched() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let workflow_id = create_hello(&api).await;

    let r = api
        .post(
            "/v1/session_queues",
            &json!({
                "workflow_id": workflow_id,
                "params": {"who": "robots", "tags": ["a", "b"], "token": "s3cr3t-value"}
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let first = r.body.clone();
    assert_eq!(fields(&first), SESSION_FIELDS);
    assert_eq!(first["project_id"], 1);
    assert_eq!(first["status"], "queued");
    assert!(first["robot"].is_null());
    assert!(first["started_at"].is_null() && first["ended_at"].is_null());
    assert_eq!(
        first["workflow"],
        json!({"id": workflow_id, "name": "hello"})
    );
    // The given params, with the secret one masked.
    assert_eq!(
        first["params"],
        json!({"who": "robots", "tags": ["a", "b"], "token": "***"})
    );
    let created_at = first["created_at"].as_str().unwrap();
    assert!(
        created_at.len() == 24 && created_at.ends_with('Z'),
        "{created_at}"
    );

    let id = first["id"].as_i64().unwrap();
    let r = api.get(&format!("/v1/session_queues/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    // A read also says why the session waits, when no robot could take
    // it (tests/hub_catalog.rs); the answer to its creation does not.
    let mut read = r.body.clone();
    let reason = read.as_object_mut().and_then(|o| o.remove("queued_reason"));
    assert_eq!(reason, Some(json!("no robot is registered on this hub")));
    assert_eq!(read, first);
    assert!(!hub.stderr().contains("s3cr3t-value"));

    // Eleven more, so that the default page (10) is full.
    let mut all = vec![id];
    for i in 0..11 {
        let r = api
            .post(
                "/v1/session_queues",
                &json!({"workflow_id": workflow_id, "params": {"times": i, "token": "t"}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        all.push(r.body["id"].as_i64().unwrap());
    }
    let newest_first: Vec<i64> = all.iter().rev().copied().collect();

    let r = api.get("/v1/session_queues").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(fields(&r.body), ["session_queues", "total_count"]);
    assert_eq!(r.body["total_count"], 12);
    assert_eq!(ids(&r.body["session_queues"]), newest_first[..10]);
    let r = api.get("/v1/session_queues?page=2").await;
    assert_eq!(ids(&r.body["session_queues"]), newest_first[10..]);
    let r = api.get("/v1/session_queues?page=2&per_page=5").await;
    assert_eq!(ids(&r.body["session_queues"]), newest_first[5..10]);
    assert_eq!(
        api.get("/v1/session_queues?per_page=50").await.status,
        StatusCode::OK
    );
    let r = api.get("/v1/session_queues?per_page=51").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("`per_page`"), "{}", r.body);

    // Search: status and UTC days.
    let cancelled = all[3];
    let r = api
        .delete(&format!("/v1/session_queues/{cancelled}/cancel"))
        .await;
    assert_eq!(r.body["status"], "cancelled");
    let today = &created_at[..10];
    let day = |offset: i64| {
        let date: jiff::civil::Date = today.parse().unwrap();
        date.checked_add(jiff::Span::new().days(offset))
            .unwrap()
            .to_string()
    };
    let search = |query: String| {
        let api = &api;
        async move {
            let q = query.replace(' ', "%20");
            api.get(&format!("/v1/session_queues?per_page=50&query={q}"))
                .await
        }
    };
    let r = search("is:cancelled".into()).await;
    assert_eq!(ids(&r.body["session_queues"]), [cancelled]);
    assert_eq!(r.body["total_count"], 1);
    let r = search("is:queued".into()).await;
    assert_eq!(r.body["total_count"], 11);
    let r = search("is:queued is:cancelled".into()).await;
    assert_eq!(r.body["total_count"], 12);
    let r = search(format!("after:{today} before:{}", day(1))).await;
    assert_eq!(r.body["total_count"], 12);
    let r = search(format!("before:{today}")).await;
    assert_eq!(r.body["total_count"], 0);
    let r = search(format!("after:{}", day(1))).await;
    assert_eq!(r.body["total_count"], 0);
    let r = search(format!("is:running after:{}", day(-30))).await;
    assert_eq!(r.body["total_count"], 0);
    for (query, needle) in [
        ("is:done", "done"),
        ("before:2019-02-30", "before:2019-02-30"),
        ("after:07/01/2019", "after:07/01/2019"),
        ("workflow_id:3", "workflow_id:3"),
    ] {
        let r = search(query.into()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.body);
        assert!(r.message().contains(needle), "{query}: {}", r.body);
    }
    // Another project has no sessions here.
    let r = api.get("/v1/session_queues?project_id=2").await;
    assert_eq!(r.body["total_count"], 0);
}

#[tokio::test]
async fn session_params_must_fit_the_workflow() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let workflow_id = create_hello(&api).await;

    let r = api
        .post("/v1/session_queues", &json!({"workflow_id": 999}))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "workflow_not_found");
    assert!(r.message().contains("999"));

    for (params, path, needle) in [
        (
            json!({"token": "t", "whom": "x"}),
            "params.whom",
            "unknown param",
        ),
        (json!({"token": "t", "who": 3}), "params.who", "string"),
        (
            json!({"token": "t", "times": "3"}),
            "params.times",
            "expected a number, found a string",
        ),
        (json!({"token": "t", "tags": "a,b"}), "params.tags", "list"),
        (json!({}), "params.token", "no default"),
        (
            json!({"token": "t", "who": "this is ${var1}"}),
            "params.who",
            "${...}",
        ),
        (
            json!({"token": "t", "tags": ["ok", "${x}"]}),
            "params.tags[1]",
            "${...}",
        ),
    ] {
        let r = api
            .post(
                "/v1/session_queues",
                &json!({"workflow_id": workflow_id, "params": params}),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{params}: {}",
            r.body
        );
        assert_eq!(r.code(), "invalid_params", "{params}");
        let problem = r.body["error"]["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["path"] == path)
            .unwrap_or_else(|| panic!("{params}: no problem at {path}: {}", r.body))
            .clone();
        assert!(
            problem["message"].as_str().unwrap().contains(needle),
            "{params}: {problem}"
        );
    }
    assert_eq!(api.get("/v1/session_queues").await.body["total_count"], 0);
}

#[tokio::test]
async fn cancelling_a_queued_session_is_final_and_idempotent() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let workflow_id = create_hello(&api).await;
    let r = api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": workflow_id, "params": {"token": "t"}}),
        )
        .await;
    let id = r.body["id"].as_i64().unwrap();

    let r = api.get(&format!("/v1/session_queues/{id}/logs")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"logs": [], "status": "queued"}));

    let first = api.delete(&format!("/v1/session_queues/{id}/cancel")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["status"], "cancelled");
    assert!(first.body["ended_at"].is_string());
    assert!(first.body["started_at"].is_null());
    assert!(first.body["cancel_requested_at"].is_string());

    let again = api.delete(&format!("/v1/session_queues/{id}/cancel")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, first.body, "a second cancel changes nothing");
    let r = api.get(&format!("/v1/session_queues/{id}")).await;
    assert_eq!(r.body, first.body);

    let r = api
        .get(&format!("/v1/session_queues/{id}/logs?after_seq=0"))
        .await;
    assert_eq!(r.body, json!({"logs": [], "status": "cancelled"}));
    let r = api
        .get(&format!("/v1/session_queues/{id}/logs?after_seq=-1"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.message().contains("after_seq"));

    let r = api.delete("/v1/session_queues/424242/cancel").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "session_queue_not_found");
    let r = api.get("/v1/session_queues/424242/logs").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    for bad in ["0", "-3", "abc", "99999999999999999999"] {
        let r = api
            .delete(&format!("/v1/session_queues/{bad}/cancel"))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.message().contains(bad), "{bad}: {}", r.body);
    }
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let workflow_id = create_hello(&api).await;
    let mut sessions = Vec::new();
    for who in ["a", "b"] {
        let r = api
            .post(
                "/v1/session_queues",
                &json!({"workflow_id": workflow_id, "params": {"who": who, "token": "t"}}),
            )
            .await;
        sessions.push(r.body["id"].as_i64().unwrap());
    }
    api.delete(&format!("/v1/session_queues/{}/cancel", sessions[0]))
        .await;
    let workflows_before = api.get("/v1/workflows").await.body;
    let sessions_before = api.get("/v1/session_queues").await.body;
    let status = hub.stop();
    assert!(status.success(), "SIGTERM ends the hub cleanly: {status:?}");

    let hub = Hub::start(&scratch);
    // The same token still verifies: the key and its sealed secret are
    // read back with the same master key.
    let api = Api::new(&hub, Some(api.token.clone().unwrap()));
    assert_eq!(api.get("/v1/workflows").await.body, workflows_before);
    assert_eq!(api.get("/v1/session_queues").await.body, sessions_before);
    let r = api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": workflow_id, "params": {"token": "t"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(
        r.body["id"].as_i64().unwrap() > sessions[1],
        "ids are never reused"
    );
    assert!(hub.stop().success());
}

/// A hub that stored a workflow before params had types read `kind: {type:
/// string}` as an object default; this version reads it as a required
/// string param, as its robots do. At its start the hub reads the stored
/// params again, says which workflows changed, and checks sessions as a
/// robot will run them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_reads_stored_params_again_as_robots_now_read_them() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let r = api
        .post(
            "/v1/workflows",
            &json!({"yaml": "version: 1\nname: older\nparams:\n  kind: {type: string}\n  n: 1\nsteps:\n  - {id: a, action: log, with: {message: hi}}\n"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let id = r.body["id"].as_i64().expect("id");
    assert!(hub.stop().success());
    // As the hub before typed params stored it (migration 18 marks such
    // rows `params_read = 0`).
    let older = r#"[{"name":"kind","default":{"type":"string"}},{"name":"n","default":1}]"#;
    let sql =
        format!("UPDATE workflows SET param_specs = '{older}', params_read = 0 WHERE id = {id}");
    if scratch.is_postgres() {
        psql(scratch.db().to_str().expect("a UTF-8 URL"), &sql);
    } else {
        let conn = rusqlite::Connection::open(scratch.db_file()).expect("open");
        conn.execute(&sql, []).expect("update");
    }

    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let r = api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": id, "params": {"n": 2}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert!(r.body.to_string().contains("params.kind"), "{}", r.body);
    let r = api
        .post(
            "/v1/session_queues",
            &json!({"workflow_id": id, "params": {"kind": "x", "n": 2.5}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let log = hub.stderr();
    assert!(
        log.contains("stored params differ from how this version reads them")
            && log.contains("older"),
        "{log}"
    );
    // Read once: a second start says nothing of it.
    assert!(hub.stop().success());
    let hub = Hub::start(&scratch);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    assert_eq!(api.get("/v1/workflows").await.status, StatusCode::OK);
    assert!(
        !hub.stderr().contains("stored params differ"),
        "{}",
        hub.stderr()
    );
}
