//! Approvals and waits through a real hub and real agents
//! (docs/workflow-language.md, *Waiting*): a session stopped at an
//! `approval` or `wait_event` step frees its robot, survives a hub
//! restart, and resumes on a robot with its variables once it is answered:
//! by a person, an outside event, its deadline or a cancel.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::time::{Duration, Instant};

use fleet_support::*;
use hub_support::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

/// Waits until the session is `waiting`, and returns it.
async fn waiting(api: &Api, id: i64) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let r = api.get(&format!("/v1/session_queues/{id}")).await;
        if r.body["status"] == "waiting" {
            return r.body;
        }
        assert!(
            Instant::now() < deadline,
            "session {id} never waited: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const APPROVED_FLOW: &str = r#"version: 1
name: ship-it
steps:
  - id: prepare
    action: set
    with: {release: "v42", count: 3}
  - id: before
    action: shell.run
    with: {argv: [echo, "prepared ${release}"]}
  - id: label
    action: call
    with: {workflow: make-label, params: {release: "${release}"}}
  - id: ok
    action: approval
    with: {message: "ship ${release}?", timeout: 1h}
  - id: after
    action: shell.run
    with: {argv: [sh, -c, 'sleep 1; echo "$0"', "shipping ${release} x${count} as ${steps.label.output.label}, approved by ${steps.ok.output.by}: ${steps.ok.output.comment}"]}
finally:
  - id: tidy
    action: log
    with: {message: "tidied up"}
"#;

/// Called by `APPROVED_FLOW` before it waits.
const LABEL_FLOW: &str = r#"version: 1
name: make-label
params:
  release: {}
steps:
  - id: stamp
    action: set
    with: {label: "box-${params.release}"}
outputs:
  label: "${label}"
"#;

const QUICK_FLOW: &str = r#"version: 1
name: quick
steps:
  - id: hello
    action: shell.run
    with: {argv: [echo, quick-one]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_session_frees_its_robot_survives_a_hub_restart_and_resumes_with_its_variables()
{
    let Fleet {
        scratch,
        hub,
        key,
        api,
    } = Fleet::start();
    let robot = Robot::new(scratch.dir.path(), "only-one");
    // One slot: the other session can only run if the waiting one let go.
    robot.register_ok(&hub, &key, &["--max-concurrency", "1"]);
    let agent = robot.start(&[]);
    workflow(&api, LABEL_FLOW, &[]).await;
    let approved = workflow(&api, APPROVED_FLOW, &[]).await;
    let quick = workflow(&api, QUICK_FLOW, &[]).await;

    let id = queue(&api, approved, json!({})).await;
    let s = waiting(&api, id).await;
    assert_eq!(s["wait"]["kind"], "approval", "{s}");
    assert_eq!(s["wait"]["step_id"], "ok", "{s}");
    assert_eq!(s["wait"]["message"], "ship v42?", "{s}");
    assert!(
        s["robot"].is_null(),
        "a waiting session is on no robot: {s}"
    );
    assert!(s.get("approval_status").is_none(), "{s}");
    let steps = s["steps"].as_array().cloned().unwrap_or_default();
    let before = steps.iter().find(|st| st["id"] == "before").cloned();
    assert_eq!(
        before.map(|b| b["status"].clone()),
        Some(json!("success")),
        "{s}"
    );

    // Measured: while it waits, its robot (one slot) runs another session.
    let started = Instant::now();
    let other = queue(&api, quick, json!({})).await;
    let o = finished(&api, other, LIMIT).await;
    let meanwhile = started.elapsed();
    assert_eq!(o["status"], "success", "{o}\n{}", agent.log());
    assert_eq!(o["robot"]["name"], "only-one", "{o}");
    assert_eq!(
        api.get(&format!("/v1/session_queues/{id}")).await.body["status"],
        "waiting"
    );
    eprintln!(
        "another session ran start to end on the robot in {meanwhile:?} while the first waited"
    );

    // The hub restarts while the session waits; nothing is lost.
    let listen = hub.url.trim_start_matches("http://").to_string();
    drop(hub);
    let hub = Hub::start_at(&scratch, &listen, &["--quota-per-robot", "1000000"]);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    assert_eq!(
        api.get(&format!("/v1/session_queues/{id}")).await.body["status"],
        "waiting"
    );

    let r = api
        .post(
            &format!("/v1/session_queues/{id}/approval"),
            &json!({"decision": "approve", "comment": "go ahead"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    // Queued again, or already taken by the robot waiting in its poll.
    assert!(
        r.body["status"] == "queued" || r.body["status"] == "running",
        "{}",
        r.body
    );
    // While the resumed run works, the steps of the first run still show
    // as they ended.
    let deadline = Instant::now() + LIMIT;
    loop {
        let s = api.get(&format!("/v1/session_queues/{id}")).await.body;
        let steps = s["steps"].as_array().cloned().unwrap_or_default();
        let status = |id: &str| {
            steps
                .iter()
                .find(|st| st["id"] == id)
                .map(|st| st["status"].clone())
        };
        if status("after") == Some(json!("running")) {
            assert_eq!(status("before"), Some(json!("success")), "{s}");
            assert_eq!(status("ok"), Some(json!("success")), "{s}");
            break;
        }
        assert!(
            s["status"] != "success" && Instant::now() < deadline,
            "never saw the resumed run's step running: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = finished(&api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}\n{}", agent.log());
    assert_eq!(s["approval_status"], "approved", "{s}");
    assert_eq!(s["wait"]["outcome"], "approved", "{s}");
    assert_eq!(s["wait"]["decided_by"], key.id.as_str(), "{s}");
    assert_eq!(s["wait"]["comment"], "go ahead", "{s}");

    let logs = all_logs(&api, id).await;
    assert_numbered_in_order(&logs);
    let text = messages(&logs);
    let expected_after = format!(
        "shipping v42 x3 as box-v42, approved by {}: go ahead",
        key.id
    );
    let at = |needle: &str| text.iter().position(|m| m.contains(needle));
    let order = [
        at("prepared v42"),
        at("[tasuki-hub] the session waits at step `ok` for an approval"),
        at(&format!("[tasuki-hub] approved by {}", key.id)),
        at(&expected_after),
        at("tidied up"),
    ];
    assert!(
        order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]),
        "first run, the hub's notes, the resumed run, its finally, in order: {text:?}"
    );
    assert_eq!(
        text.iter().filter(|m| m.contains("prepared v42")).count(),
        1,
        "the steps before the wait ran once: {text:?}"
    );
    let steps = s["steps"].as_array().cloned().unwrap_or_default();
    let ok = steps
        .iter()
        .find(|st| st["id"] == "ok")
        .cloned()
        .unwrap_or_default();
    assert_eq!(ok["status"], "success", "{s}");
    assert_eq!(ok["output"]["decision"], "approved", "{s}");
    // The called workflow's step, run before the wait, is still reported.
    let stamp = steps
        .iter()
        .find(|st| st["id"] == "label.stamp")
        .cloned()
        .unwrap_or_default();
    assert_eq!(stamp["status"], "success", "{s}");
}

const DECIDED_FLOW: &str = r#"version: 1
name: decided
steps:
  - id: ok
    action: approval
    with: {message: "go?", timeout: "TIMEOUT", on_timeout: ON_TIMEOUT}
  - id: after
    action: log
    with: {message: "went on after ${steps.ok.output.by}"}
finally:
  - id: tidy
    action: log
    with: {message: "tidied up"}
"#;

fn decided_flow(timeout: &str, on_timeout: &str) -> String {
    DECIDED_FLOW
        .replace(
            "name: decided",
            &format!("name: decided-{on_timeout}-{timeout}"),
        )
        .replace("ON_TIMEOUT", on_timeout)
        .replace("TIMEOUT", timeout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_or_timed_out_approval_ends_as_it_says_and_runs_finally() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "decider");
    robot.register_ok(&f.hub, &f.key, &["--max-concurrency", "4"]);
    let agent = robot.start(&[]);
    let by_hand = workflow(&f.api, &decided_flow("1h", "reject"), &[]).await;
    let timed_reject = workflow(&f.api, &decided_flow("1s", "reject"), &[]).await;
    let timed_approve = workflow(&f.api, &decided_flow("1s", "approve"), &[]).await;

    let rejected = queue(&f.api, by_hand, json!({})).await;
    let lapsed = queue(&f.api, timed_reject, json!({})).await;
    let waved = queue(&f.api, timed_approve, json!({})).await;
    waiting(&f.api, rejected).await;
    let r = f
        .api
        .post(
            &format!("/v1/session_queues/{rejected}/approval"),
            &json!({"decision": "reject", "comment": "not today"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);

    let s = finished(&f.api, rejected, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}\n{}", agent.log());
    assert_eq!(s["error"]["code"], "approval_rejected", "{s}");
    assert_eq!(s["error"]["step_id"], "ok", "{s}");
    assert!(
        s["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not today"),
        "{s}"
    );
    assert_eq!(s["approval_status"], "rejected", "{s}");
    let text = messages(&all_logs(&f.api, rejected).await);
    assert!(text.iter().any(|m| m == "tidied up"), "{text:?}");
    assert!(!text.iter().any(|m| m.starts_with("went on")), "{text:?}");

    let s = finished(&f.api, lapsed, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    assert_eq!(s["error"]["code"], "approval_rejected", "{s}");
    assert_eq!(s["wait"]["decided_by"], "timeout", "{s}");
    assert!(
        s["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("nobody decided within 1s"),
        "{s}"
    );

    let s = finished(&f.api, waved, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    assert_eq!(s["approval_status"], "approved", "{s}");
    let text = messages(&all_logs(&f.api, waved).await);
    assert!(
        text.iter().any(|m| m == "went on after timeout"),
        "{text:?}"
    );
}

const EVENT_FLOW: &str = r#"version: 1
name: paid
steps:
  - id: invoice
    action: set
    with: {invoice: "INV-7"}
  - id: hook
    action: wait_event
    with: {event: payment-done, timeout: 1h}
  - id: after
    action: shell.run
    with: {argv: [echo, "${invoice} paid ${steps.hook.output.payload.amount} ${steps.hook.output.payload.currency}"]}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_delivered_through_the_hub_resumes_the_session_with_its_payload() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "listener");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = robot.start(&[]);
    let wf = workflow(&f.api, EVENT_FLOW, &[]).await;
    let id = queue(&f.api, wf, json!({})).await;
    let s = waiting(&f.api, id).await;
    assert_eq!(s["wait"]["kind"], "event", "{s}");
    assert_eq!(s["wait"]["event"], "payment-done", "{s}");

    // The wrong event, an approval, and a key without the scope are refused.
    let r = f
        .api
        .post(
            &format!("/v1/session_queues/{id}/events/refund"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.body);
    assert!(r.message().contains("payment-done"), "{}", r.body);
    let r = f
        .api
        .post(
            &format!("/v1/session_queues/{id}/approval"),
            &json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.body);
    let reader = create_key(&f.scratch, "session_queue.read");
    let r = Api::new(&f.hub, Some(token(&reader, "session_queue.read")))
        .post(
            &format!("/v1/session_queues/{id}/events/payment-done"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 403, "{}", r.body);

    let r = f
        .api
        .post(
            &format!("/v1/session_queues/{id}/events/payment-done"),
            &json!({"amount": 1200, "currency": "JPY"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}\n{}", agent.log());
    assert_eq!(s["wait"]["outcome"], "event", "{s}");
    let text = messages(&all_logs(&f.api, id).await);
    assert!(text.iter().any(|m| m == "INV-7 paid 1200 JPY"), "{text:?}");

    // Delivered twice: the second finds nothing waiting.
    let r = f
        .api
        .post(
            &format!("/v1/session_queues/{id}/events/payment-done"),
            &json!({"amount": 1}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 409, "{}", r.body);
    assert_eq!(r.code(), "not_waiting", "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cancelled_while_it_waits_runs_its_finally_steps_and_ends_cancelled() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "canceller");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = robot.start(&[]);
    let wf = workflow(&f.api, &decided_flow("1h", "reject"), &[]).await;
    let id = queue(&f.api, wf, json!({})).await;
    waiting(&f.api, id).await;
    let r = f
        .api
        .delete(&format!("/v1/session_queues/{id}/cancel"))
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "cancelled", "{s}\n{}", agent.log());
    assert_eq!(s["wait"]["outcome"], "cancelled", "{s}");
    let text = messages(&all_logs(&f.api, id).await);
    assert!(text.iter().any(|m| m == "tidied up"), "{text:?}");
    assert!(!text.iter().any(|m| m.starts_with("went on")), "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_and_misplaced_waits_are_refused_by_field() {
    let f = Fleet::start();
    let quick = workflow(&f.api, QUICK_FLOW, &[]).await;
    // Queued, with no robot: not waiting.
    let id = queue(&f.api, quick, json!({})).await;
    for (path, body, status, code) in [
        (
            format!("/v1/session_queues/{id}/approval"),
            json!({"decision": "approve"}),
            409,
            "not_waiting",
        ),
        (
            format!("/v1/session_queues/{id}/approval"),
            json!({"decision": "maybe"}),
            422,
            "invalid_field",
        ),
        (
            format!("/v1/session_queues/{id}/approval"),
            json!({"decision": "approve", "comment": "x".repeat(5000)}),
            422,
            "invalid_field",
        ),
        (
            "/v1/session_queues/999999/approval".to_string(),
            json!({"decision": "approve"}),
            404,
            "session_queue_not_found",
        ),
        (
            format!("/v1/session_queues/{id}/events/{}", "e".repeat(3)),
            json!({"blob": "x".repeat(70_000)}),
            422,
            "invalid_field",
        ),
    ] {
        let r = f.api.post(&path, &body).await;
        assert_eq!(r.status.as_u16(), status, "{path}: {}", r.body);
        assert_eq!(r.code(), code, "{path}: {}", r.body);
    }

    // A wait inside a `try` is refused at upload, at its field.
    let nested = r#"version: 1
name: nested
steps:
  - id: guard
    action: try
    steps:
      - id: ok
        action: approval
        with: {message: "inside?"}
"#;
    let r = f.api.post("/v1/workflows", &json!({"yaml": nested})).await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert!(
        r.body.to_string().contains("steps[0].steps[0].action"),
        "{}",
        r.body
    );
}

/// An approval that lists its approvers: the hub refuses every other key's
/// decision (with the robot's word for the list checked against the
/// workflow), shows the list, and takes a listed key's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_listed_approver_decides_an_approval_that_lists_them() {
    let f = Fleet::start();
    let approver = create_key(&f.scratch, "session_queue.write session_queue.read");
    let reader = create_key(&f.scratch, "session_queue.read");
    let flow = |approvers: &str| {
        format!(
            "version: 1\nname: four-eyes\nsteps:\n  - id: sign_off\n    action: approval\n    \
             with: {{message: \"pay 42?\", timeout: 1h, approvers: [{approvers}]}}\n  \
             - id: after\n    action: log\n    with: {{message: \"paid, by ${{steps.sign_off.output.by}}\"}}\n"
        )
    };

    // Registering: each approver must be a key of this hub that may decide.
    let r = f
        .api
        .post(
            "/v1/workflows",
            &json!({"yaml": flow(&format!("{}, TSKNOSUCHKEY, {}", approver.id, reader.id))}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    let problems = r.problems();
    assert_eq!(problems.len(), 2, "{}", r.body);
    assert_eq!(problems[0].0, "steps[0].with.approvers[1]", "{}", r.body);
    assert_eq!(
        problems[0].1, "there is no access key `TSKNOSUCHKEY` on this hub",
        "{}",
        r.body
    );
    assert_eq!(problems[1].0, "steps[0].with.approvers[2]", "{}", r.body);
    assert!(
        problems[1]
            .1
            .contains("does not have the scope `session_queue.write`"),
        "{}",
        r.body
    );

    let workflow_id = workflow(&f.api, &flow(&approver.id), &[]).await;
    let robot = Robot::new(f.scratch.dir.path(), "four-eyes");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = robot.start(&[]);
    let id = queue(&f.api, workflow_id, json!({})).await;
    let s = waiting(&f.api, id).await;
    assert_eq!(s["wait"]["approvers"], json!([approver.id]), "{s}");

    // The fleet's key may write sessions, and is still not an approver:
    // refused, naming the step and who may decide; the session still waits.
    let r = f
        .api
        .post(
            &format!("/v1/session_queues/{id}/approval"),
            &json!({"decision": "approve"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "not_an_approver"),
        "{}",
        r.body
    );
    assert!(
        r.message().contains(&format!(
            "the access key `{}` is not an approver of step `sign_off`",
            f.key.id
        )) && r.message().contains(&approver.id),
        "{}",
        r.body
    );
    let s = f.api.get(&format!("/v1/session_queues/{id}")).await.body;
    assert_eq!(s["status"], "waiting", "{s}");
    assert!(s["wait"]["decided_by"].is_null(), "{s}");
    // The attempt is in the audit log.
    let auditor = create_key(&f.scratch, "audit.read");
    let audit = Api::new(&f.hub, Some(token(&auditor, "audit.read")))
        .get("/v1/audit_log")
        .await;
    let refused: Vec<&Value> = audit.body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "session_queue.approval_refused")
        .collect();
    assert_eq!(refused.len(), 1, "{}", audit.body);
    assert_eq!(refused[0]["actor"], f.key.id.as_str(), "{}", audit.body);
    assert_eq!(
        refused[0]["subject"],
        format!("session_queue {id}"),
        "{}",
        audit.body
    );

    let listed = Api::new(
        &f.hub,
        Some(token(&approver, "session_queue.write session_queue.read")),
    );
    let r = listed
        .post(
            &format!("/v1/session_queues/{id}/approval"),
            &json!({"decision": "approve", "comment": "checked"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}\n{}", agent.log());
    assert_eq!(s["wait"]["decided_by"], approver.id.as_str(), "{s}");
    let text = messages(&all_logs(&f.api, id).await);
    assert!(
        text.contains(&format!("paid, by {}", approver.id)),
        "{text:?}"
    );
}

/// `t=<seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, as a sender
/// outside signs a callback.
fn signature(secret: &str, t: i64, body: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, format!("{t}.{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// A sender that holds no access key delivers the event signed with the
/// key the step gave (a secret param here): a wrong or stale signature is
/// refused, the right one resumes the session, and the key is on no page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_callback_delivers_the_event_without_an_access_key() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "callee");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = robot.start(&[]);
    let wf = workflow(
        &f.api,
        r#"version: 1
name: signed-hook
params:
  hook_key: {secret: true}
steps:
  - id: hook
    action: wait_event
    with: {event: shipped, secret: "${params.hook_key}"}
  - id: after
    action: log
    with: {message: "tracking ${steps.hook.output.payload.tracking}"}
"#,
        &[],
    )
    .await;
    let key = "k3y-0f-the-partner-2026";
    let id = queue(&f.api, wf, json!({"hook_key": key})).await;
    let s = waiting(&f.api, id).await;
    let callback = s["wait"]["callback"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(callback, format!("/v1/callbacks/{id}/shipped"), "{s}");

    let http = reqwest::Client::new();
    let post = |sig: String, body: &'static str| {
        http.post(format!("{}{callback}", f.hub.url))
            .header("tasuki-signature", sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let body = r#"{"tracking": "JP-4711"}"#;
    let now = jiff::Timestamp::now().as_second();
    let r = post(signature("a-wrong-key-of-16b", now, body), body)
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 401);
    let r = post(signature(key, now - 3600, body), body)
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 401, "a stale signature");
    let r = post(signature(key, now, body), body).await.expect("answer");
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}\n{}", agent.log());
    assert_eq!(s["wait"]["decided_by"], "callback", "{s}");
    let text = messages(&all_logs(&f.api, id).await);
    assert!(text.iter().any(|m| m == "tracking JP-4711"), "{text:?}");
    // The same request again finds nothing waiting.
    let r = post(signature(key, now, body), body).await.expect("answer");
    assert_eq!(r.status().as_u16(), 401, "taken once");
    assert!(!s.to_string().contains(key), "{s}");
    assert!(!text.iter().any(|m| m.contains(key)), "{text:?}");
    assert!(!f.hub.stderr().contains(key), "the hub's log holds the key");

    // A key written in the workflow file is refused.
    let r = f
        .api
        .post(
            "/v1/workflows",
            &json!({"yaml": "version: 1\nname: leaky\nsteps:\n  - id: hook\n    action: wait_event\n    with: {event: e, secret: written-in-the-file}\n"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert!(
        r.body.to_string().contains("steps[0].with.secret"),
        "{}",
        r.body
    );
}
