//! The hub as an orchestrator, end to end: a real `tasuki-hub` queuing
//! sessions at the times a cron expression names (and killed and started
//! again under a schedule), re-runs, and creates that wait for the end,
//! with real agents running the sessions.
#![cfg(unix)]

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::time::{Duration, Instant};

use fleet_support::*;
use hub_support::*;
use serde_json::{Value, json};

/// The tests read sessions often, far above AUTORO's 60 calls a minute.
const HUB_ARGS: &[&str] = &["--quota-per-robot", "1000000"];

/// A registered robot with its agent running, for `f`'s hub.
fn running_robot(f: &Fleet, name: &str, register: &[&str]) -> (Robot, Agent) {
    let robot = Robot::new(f.scratch.dir.path(), name);
    robot.register_ok(&f.hub, &f.key, register);
    let agent = robot.start(&[]);
    (robot, agent)
}

fn sleeper(name: &str, seconds: u32) -> String {
    format!(
        "version: 1\nname: {name}\nsteps:\n  - id: work\n    action: shell.run\n    with: {{argv: [sleep, \"{seconds}\"]}}\n"
    )
}

async fn create_schedule(api: &Api, workflow_id: i64, body: Value) -> Value {
    let r = api
        .post(&format!("/v1/workflows/{workflow_id}/schedules"), &body)
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    r.body
}

/// Every session the schedule queued, oldest first.
async fn sessions_of(api: &Api, schedule_id: i64) -> Vec<Value> {
    let r = api.get("/v1/session_queues?per_page=50").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let mut found: Vec<Value> = r.body["session_queues"]
        .as_array()
        .expect("session_queues")
        .iter()
        .filter(|s| s["origin"]["schedule_id"].as_i64() == Some(schedule_id))
        .cloned()
        .collect();
    found.sort_by_key(|s| s["id"].as_i64());
    found
}

/// Waits until the schedule has queued `n` sessions.
async fn until_sessions(api: &Api, schedule_id: i64, n: usize, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let found = sessions_of(api, schedule_id).await;
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "schedule {schedule_id} queued {} sessions of {n} in {limit:?}",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (started, ended) of each session that ran, in ms.
fn spans(sessions: &[Value]) -> Vec<(i64, i64)> {
    sessions
        .iter()
        .filter(|s| !s["started_at"].is_null())
        .map(|s| {
            let end = if s["ended_at"].is_null() {
                i64::MAX
            } else {
                ms(&s["ended_at"])
            };
            (ms(&s["started_at"]), end)
        })
        .collect()
}

fn assert_no_overlap(sessions: &[Value]) {
    let spans = spans(sessions);
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "two sessions of one schedule ran at once: {pair:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_starts_sessions_on_time_and_a_paused_one_starts_none() {
    let f = Fleet::start();
    let _agent = running_robot(&f, "clock", &[]);
    let workflow_id = workflow(&f.api, &sleeper("tick", 0), &[]).await;
    let schedule = create_schedule(
        &f.api,
        workflow_id,
        json!({"cron": "*/2 * * * * *", "timezone": "Europe/Berlin"}),
    )
    .await;
    let id = schedule["id"].as_i64().expect("schedule id");
    // The next five runs, two seconds apart, on even seconds.
    let next: Vec<i64> = schedule["next_runs"]
        .as_array()
        .expect("next_runs")
        .iter()
        .map(ms)
        .collect();
    assert_eq!(next.len(), 5, "{schedule}");
    for pair in next.windows(2) {
        assert_eq!(pair[1] - pair[0], 2_000, "{schedule}");
    }
    assert!(next.iter().all(|t| t % 2_000 == 0), "{schedule}");

    let sessions = until_sessions(&f.api, id, 3, Duration::from_secs(20)).await;
    let mut due: Vec<i64> = Vec::new();
    for s in &sessions[..3] {
        let due_at = ms(&s["origin"]["due_at"]);
        assert_eq!(due_at % 2_000, 0, "{s}");
        // Queued within a second of its time (it is asleep until then).
        let late = ms(&s["created_at"]) - due_at;
        assert!(
            (0..1_000).contains(&late),
            "queued {late} ms after its time: {s}"
        );
        due.push(due_at);
        let done = finished(
            &f.api,
            s["id"].as_i64().expect("id"),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(done["status"], "success", "{done}");
    }
    due.dedup();
    assert_eq!(due.len(), 3, "one session per due time: {due:?}");

    let paused = f
        .api
        .post(&format!("/v1/schedules/{id}/pause"), &json!({}))
        .await;
    assert_eq!(paused.status.as_u16(), 200, "{}", paused.body);
    assert_eq!(paused.body["enabled"], false);
    assert_eq!(paused.body["next_runs"], json!([]));
    let count = sessions_of(&f.api, id).await.len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sessions_of(&f.api, id).await.len(),
        count,
        "a paused schedule queued a session"
    );

    let resumed = f
        .api
        .post(&format!("/v1/schedules/{id}/resume"), &json!({}))
        .await;
    assert_eq!(resumed.status.as_u16(), 200, "{}", resumed.body);
    until_sessions(&f.api, id, count + 1, Duration::from_secs(10)).await;

    let gone = f.api.delete(&format!("/v1/schedules/{id}")).await;
    assert_eq!(gone.status.as_u16(), 204, "{}", gone.body);
    let r = f.api.get(&format!("/v1/schedules/{id}")).await;
    assert_eq!((r.status.as_u16(), r.code()), (404, "schedule_not_found"));
}

/// Each overlap policy, with a robot that could run two at once: the
/// policy, not the robot's capacity, keeps a schedule's runs apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlap_policies_skip_wait_or_cancel_the_previous_run() {
    let f = Fleet::start();
    let _agent = running_robot(&f, "busy", &["--max-concurrency", "2"]);

    // skip: runs every second, each lasting 3 s, never side by side.
    let slow = workflow(&f.api, &sleeper("slow", 3), &[]).await;
    let skip = create_schedule(
        &f.api,
        slow,
        json!({"cron": "* * * * * *", "overlap": "skip"}),
    )
    .await;
    let skip_id = skip["id"].as_i64().expect("id");
    let mut saw_skipped = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sessions_of(&f.api, skip_id).await.len() < 2 {
        let r = f.api.get(&format!("/v1/schedules/{skip_id}")).await;
        saw_skipped |= r.body["last_outcome"] == "skipped";
        assert!(Instant::now() < deadline, "the skip schedule stalled");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    f.api
        .post(&format!("/v1/schedules/{skip_id}/pause"), &json!({}))
        .await;
    let skipped = sessions_of(&f.api, skip_id).await;
    for s in &skipped {
        finished(
            &f.api,
            s["id"].as_i64().expect("id"),
            Duration::from_secs(20),
        )
        .await;
    }
    let skipped = sessions_of(&f.api, skip_id).await;
    assert!(saw_skipped, "no run was skipped");
    assert_no_overlap(&skipped);

    // queue: a run due while one runs starts when it ends.
    let queue = create_schedule(
        &f.api,
        slow,
        json!({"cron": "* * * * * *", "overlap": "queue"}),
    )
    .await;
    let queue_id = queue["id"].as_i64().expect("id");
    let queued = until_sessions(&f.api, queue_id, 3, Duration::from_secs(30)).await;
    f.api
        .post(&format!("/v1/schedules/{queue_id}/pause"), &json!({}))
        .await;
    for s in &queued {
        finished(
            &f.api,
            s["id"].as_i64().expect("id"),
            Duration::from_secs(20),
        )
        .await;
    }
    let queued = sessions_of(&f.api, queue_id).await;
    assert_no_overlap(&queued);
    for pair in queued.windows(2) {
        // The next one was queued as soon as the hub saw the previous end.
        let gap = ms(&pair[1]["created_at"]) - ms(&pair[0]["ended_at"]);
        assert!(
            gap < 2_500,
            "the waiting run was queued {gap} ms after the previous ended"
        );
    }

    // cancel_previous: each run cancels the one before.
    let endless = workflow(&f.api, &sleeper("endless", 60), &[]).await;
    let cancel = create_schedule(
        &f.api,
        endless,
        json!({"cron": "*/2 * * * * *", "overlap": "cancel_previous"}),
    )
    .await;
    let cancel_id = cancel["id"].as_i64().expect("id");
    let runs = until_sessions(&f.api, cancel_id, 3, Duration::from_secs(30)).await;
    f.api
        .post(&format!("/v1/schedules/{cancel_id}/pause"), &json!({}))
        .await;
    for s in &runs[..2] {
        let done = finished(
            &f.api,
            s["id"].as_i64().expect("id"),
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(done["status"], "cancelled", "{done}");
    }
    let r = f.api.get(&format!("/v1/schedules/{cancel_id}")).await;
    assert_eq!(r.body["last_outcome"], "cancelled_previous", "{}", r.body);
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_run_starts_once_across_a_hub_killed_and_started_again() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, HUB_ARGS);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let w = workflow(&api, &sleeper("nobody-runs-it", 0), &[]).await;
    // No robot: each run cancels the queued one before it, so every due
    // time leaves exactly one session.
    let s = create_schedule(
        &api,
        w,
        json!({"cron": "* * * * * *", "overlap": "cancel_previous"}),
    )
    .await;
    let id = s["id"].as_i64().expect("id");
    until_sessions(&api, id, 3, Duration::from_secs(20)).await;
    kill(
        Pid::from_raw(hub.pid().expect("pid") as i32),
        Signal::SIGKILL,
    )
    .expect("SIGKILL");
    drop(hub);
    let hub = Hub::start_with(&scratch, HUB_ARGS);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let before = sessions_of(&api, id).await.len();
    until_sessions(&api, id, before + 3, Duration::from_secs(20)).await;

    let sessions = sessions_of(&api, id).await;
    let due: Vec<i64> = sessions
        .iter()
        .map(|s| ms(&s["origin"]["due_at"]))
        .collect();
    for pair in due.windows(2) {
        assert!(
            pair[0] < pair[1],
            "a due time started twice, or out of order: {due:?}"
        );
    }
    // Only the newest may still be queued.
    for s in &sessions[..sessions.len() - 1] {
        assert_eq!(s["status"], "cancelled", "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_runs_the_same_workflow_and_params_with_its_secret_given_again() {
    let f = Fleet::start();
    let _agent = running_robot(&f, "again", &[]);
    let yaml = "version: 1
name: checked
params:
  who: {}
  token: {secret: true}
steps:
  - id: check
    action: shell.run
    with:
      shell: sh
      env: {WHO: \"${params.who}\", TOKEN: \"${params.token}\"}
      script: test \"$WHO\" = ada && test \"$TOKEN\" = s3cret-value
";
    let w = workflow(&f.api, yaml, &[]).await;
    let first = queue(&f.api, w, json!({"who": "ada", "token": "s3cret-value"})).await;
    let done = finished(&f.api, first, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "success", "{done}");

    // Without the secret, which the ended session no longer keeps.
    let r = f
        .api
        .post_raw(&format!("/v1/session_queues/{first}/rerun"), "")
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "invalid_field"),
        "{}",
        r.body
    );
    assert!(r.message().contains("params.token"), "{}", r.body);
    // A param that is not secret cannot be changed.
    let r = f
        .api
        .post(
            &format!("/v1/session_queues/{first}/rerun"),
            &json!({"params": {"who": "bob", "token": "s3cret-value"}}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "invalid_field"),
        "{}",
        r.body
    );

    let r = f
        .api
        .post(
            &format!("/v1/session_queues/{first}/rerun"),
            &json!({"params": {"token": "s3cret-value"}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(
        r.body["origin"],
        json!({"type": "rerun", "session_id": first})
    );
    assert_eq!(r.body["params"], json!({"who": "ada", "token": "***"}));
    let again = r.body["id"].as_i64().expect("id");
    let done = finished(&f.api, again, Duration::from_secs(30)).await;
    assert_eq!(
        done["status"], "success",
        "the re-run got other params: {done}"
    );
    assert!(!done.to_string().contains("s3cret-value"), "{done}");

    // A session still running is not re-run.
    let slow = workflow(&f.api, &sleeper("slow-rerun", 30), &[]).await;
    let running_id = queue(&f.api, slow, json!({})).await;
    running(&f.api, running_id, Duration::from_secs(30)).await;
    let r = f
        .api
        .post_raw(&format!("/v1/session_queues/{running_id}/rerun"), "")
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "session_not_ended"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_missed_while_the_hub_was_down_run_once_or_not_at_all() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    // Later than 2 s is missed (60 s unless told).
    let args = [
        "--quota-per-robot",
        "1000000",
        "--schedule-missed-after-seconds",
        "2",
    ];
    let hub = Hub::start_with(&scratch, &args);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let w = workflow(&api, &sleeper("nobody-runs-it", 0), &[]).await;
    let every_second = |missed: &str| json!({"cron": "* * * * * *", "overlap": "cancel_previous", "missed": missed});
    let once = create_schedule(&api, w, every_second("run_once")).await["id"]
        .as_i64()
        .expect("id");
    let skip = create_schedule(&api, w, every_second("skip")).await["id"]
        .as_i64()
        .expect("id");
    until_sessions(&api, once, 1, Duration::from_secs(10)).await;
    until_sessions(&api, skip, 1, Duration::from_secs(10)).await;
    assert!(hub.stop().success(), "the hub did not stop cleanly");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restarted = jiff::Timestamp::now().as_millisecond();
    let hub = Hub::start_with(&scratch, &args);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let before_once = sessions_of(&api, once).await.len();
    let before_skip = sessions_of(&api, skip).await.len();
    until_sessions(&api, once, before_once + 2, Duration::from_secs(10)).await;
    until_sessions(&api, skip, before_skip + 2, Duration::from_secs(10)).await;

    // Late by more than 2 s: a run due while the hub was down.
    let late = |s: &Value| ms(&s["created_at"]) - ms(&s["origin"]["due_at"]) > 2_000;
    let after_restart = |sessions: Vec<Value>| -> Vec<Value> {
        sessions
            .into_iter()
            .filter(|s| ms(&s["created_at"]) >= restarted)
            .collect()
    };
    let once_late = after_restart(sessions_of(&api, once).await)
        .into_iter()
        .filter(late)
        .count();
    assert_eq!(
        once_late, 1,
        "missed: run_once makes one run for the runs missed"
    );
    let skip_late = after_restart(sessions_of(&api, skip).await)
        .into_iter()
        .filter(late)
        .count();
    assert_eq!(
        skip_late, 0,
        "missed: skip makes no run for the runs missed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_waits_answers_with_the_final_state() {
    let f = Fleet::start();
    let _agent = running_robot(&f, "sync", &[]);
    let quick = workflow(&f.api, &sleeper("quick", 1), &[]).await;
    let r = f
        .api
        .post(
            "/v1/session_queues?wait=30s",
            &json!({"workflow_id": quick}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(r.body["status"], "success", "{}", r.body);
    assert!(!r.body["ended_at"].is_null(), "{}", r.body);

    // A wait that runs out first answers with the session as it stands.
    let slow = workflow(&f.api, &sleeper("slow-sync", 30), &[]).await;
    let started = Instant::now();
    let r = f
        .api
        .post(
            "/v1/session_queues?wait=1500ms",
            &json!({"workflow_id": slow}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert!(
        matches!(r.body["status"].as_str(), Some("queued" | "running")),
        "{}",
        r.body
    );
    assert!(started.elapsed() >= Duration::from_millis(1_500));

    for bad in ["forever", "-1s", "10m", "1h"] {
        let r = f
            .api
            .post(
                &format!("/v1/session_queues?wait={bad}"),
                &json!({"workflow_id": quick}),
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (400, "invalid_parameter"),
            "{bad}: {}",
            r.body
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_holds_at_most_sixteen_waiting_creates_at_once() {
    // No robot: every session stays queued, and every wait holds.
    let f = Fleet::start();
    let idle = workflow(&f.api, &sleeper("nobody-runs-it", 0), &[]).await;
    let body = json!({"workflow_id": idle});
    let mut waiting = Vec::new();
    for _ in 0..16 {
        let api = f.api.clone();
        let body = body.clone();
        waiting.push(tokio::spawn(async move {
            api.post("/v1/session_queues?wait=60s", &body).await
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while f.api.get("/v1/session_queues").await.body["total_count"] != 16 {
        assert!(
            Instant::now() < deadline,
            "the sixteen waits were not all queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = f.api.post("/v1/session_queues?wait=5s", &body).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (429, "too_many_waits"),
        "{}",
        r.body
    );
    assert_eq!(r.headers["retry-after"], "1");
    // Refused before anything was queued; a create without `wait` is not
    // counted.
    assert_eq!(
        f.api.get("/v1/session_queues").await.body["total_count"],
        16
    );
    let r = f.api.post("/v1/session_queues", &body).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    // A wait answered frees its place.
    f.api.delete("/v1/session_queues/1/cancel").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = f.api.post("/v1/session_queues?wait=100ms", &body).await;
        if r.status.as_u16() == 201 {
            break;
        }
        assert_eq!(r.code(), "too_many_waits", "{}", r.body);
        assert!(Instant::now() < deadline, "no place was freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in 2..=16 {
        f.api
            .delete(&format!("/v1/session_queues/{id}/cancel"))
            .await;
    }
    for w in waiting {
        let r = w.await.expect("a wait");
        assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_refuse_bad_input_and_callers_without_the_scopes_their_runs_need() {
    let f = Fleet::start();
    let yaml = "version: 1\nname: typed\nparams:\n  count: {default: 1}\nsteps:\n  - id: s\n    action: shell.run\n    with: {argv: [\"true\"]}\n";
    let w = workflow(&f.api, yaml, &[]).await;
    let path = format!("/v1/workflows/{w}/schedules");
    for (body, field, says) in [
        (json!({"cron": "61 * * * *"}), "cron", "61 is out of range"),
        (json!({"cron": "* * * *"}), "cron", "5 fields"),
        (json!({"cron": "0 0 30 2 *"}), "cron", "names no time"),
        (
            json!({"cron": "* * * * *", "timezone": "Mars/Olympus"}),
            "timezone",
            "IANA",
        ),
    ] {
        let r = f.api.post(&path, &body).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (422, "invalid_field"),
            "{body}: {}",
            r.body
        );
        assert_eq!(r.body["error"]["problems"][0]["path"], field, "{}", r.body);
        assert!(r.message().contains(says), "{body}: {}", r.body);
    }
    let r = f
        .api
        .post(
            &path,
            &json!({"cron": "* * * * *", "params": {"count": "three"}}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "invalid_params"),
        "{}",
        r.body
    );
    let r = f
        .api
        .post(&path, &json!({"cron": "* * * * *", "overlap": "sometimes"}))
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert!(r.message().contains("overlap"), "{}", r.body);
    let r = f
        .api
        .post("/v1/workflows/999/schedules", &json!({"cron": "* * * * *"}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (404, "workflow_not_found"),
        "{}",
        r.body
    );
    let r = f.api.get("/v1/schedules/12345").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (404, "schedule_not_found"),
        "{}",
        r.body
    );
    let r = f.api.get("/v1/schedules/zero").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "invalid_id"),
        "{}",
        r.body
    );

    // A key that may write workflows but not queue sessions cannot queue
    // them through a schedule, nor cancel them through one.
    let writer = create_key(&f.scratch, "workflow.write session_queue.read");
    let writer = Api::new(
        &f.hub,
        Some(token(&writer, "workflow.write session_queue.read")),
    );
    let r = writer.post(&path, &json!({"cron": "* * * * *"})).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "insufficient_scope"),
        "{}",
        r.body
    );
    assert!(r.message().contains("session_queue.write"), "{}", r.body);
    let queuer = create_key(&f.scratch, "workflow.write session_queue.write");
    let queuer = Api::new(
        &f.hub,
        Some(token(&queuer, "workflow.write session_queue.write")),
    );
    let r = queuer
        .post(
            &path,
            &json!({"cron": "* * * * *", "overlap": "cancel_previous"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "insufficient_scope"),
        "{}",
        r.body
    );
    assert!(r.message().contains("session_queue.delete"), "{}", r.body);
    let r = queuer
        .post(&path, &json!({"cron": "* * * * *", "enabled": false}))
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(r.body["next_runs"], json!([]), "{}", r.body);
}

/// `serve --metrics-listen`'s address, from the hub's log.
async fn metrics_url(hub: &Hub) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = hub.stderr();
        if let Some(line) = log.lines().find(|l| l.contains("metrics listening")) {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .unwrap_or_else(|| panic!("no addr= in {line}"));
            return format!("http://{addr}/metrics");
        }
        assert!(Instant::now() < deadline, "no metrics listener: {log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One sample's value, by its name and labels as the text shows them.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_move_as_sessions_queue_and_run() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, &["--metrics-listen", "127.0.0.1:0"]);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let url = metrics_url(&hub).await;
    let scrape = || async {
        reqwest::get(&url)
            .await
            .expect("scrape")
            .text()
            .await
            .expect("the text")
    };
    let yaml = "version: 1\nname: metered\nsteps:\n  - id: s\n    action: shell.run\n    with: {argv: [\"true\"]}\n";
    let r = api
        .post(
            "/v1/workflows",
            &json!({"yaml": yaml, "robot_labels": ["gpu"]}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let w = r.body["id"].as_i64().expect("id");
    queue(&api, w, json!({})).await;
    queue(&api, w, json!({})).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let text = scrape().await;
    assert_eq!(
        sample(&text, "tasuki_hub_queue_depth{workflow=\"metered\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "tasuki_hub_queue_depth_by_robot_label{label=\"gpu\"}"
        ),
        Some(2.0),
        "{text}"
    );
    let waited = sample(
        &text,
        "tasuki_hub_queue_oldest_wait_seconds{workflow=\"metered\"}",
    );
    assert!(waited.is_some_and(|s| s >= 1.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "tasuki_hub_sessions{status=\"queued\",workflow=\"metered\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tasuki_hub_robots{state=\"idle\"}"),
        Some(0.0),
        "{text}"
    );
    let posts = "tasuki_hub_api_requests_total{route=\"/v1/session_queues\",status=\"201\"}";
    assert_eq!(sample(&text, posts), Some(2.0), "{text}");

    // A robot with the label takes them.
    let robot = Robot::new(scratch.dir.path(), "metered");
    robot.register_ok(&hub, &key, &["--labels", "gpu"]);
    let _agent = robot.start(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = scrape().await;
        if sample(
            &text,
            "tasuki_hub_sessions{status=\"success\",workflow=\"metered\"}",
        ) == Some(2.0)
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the sessions never succeeded: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        sample(&text, "tasuki_hub_queue_depth{workflow=\"metered\"}"),
        None,
        "{text}"
    );
    assert_eq!(
        sample(&text, "tasuki_hub_robots{state=\"idle\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "tasuki_hub_recent_pickups"),
        Some(2.0),
        "{text}"
    );
    assert!(
        sample(&text, "tasuki_hub_recent_pickup_seconds{quantile=\"0.5\"}").is_some(),
        "{text}"
    );

    // Past the quota (60 calls a minute for a key without robots).
    let reader = create_key(&scratch, "session_queue.read");
    let reader = Api::new(&hub, Some(token(&reader, "session_queue.read")));
    let mut refused = false;
    for _ in 0..70 {
        refused |= reader.get("/v1/workflows").await.status.as_u16() == 429;
    }
    assert!(refused);
    let text = scrape().await;
    assert!(
        sample(&text, "tasuki_hub_quota_refusals_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
}

/// A workflow with an error handler, by id; its sessions end in error.
async fn upload(api: &Api, yaml: &str, handler: Option<i64>) -> Reply {
    let mut body = json!({ "yaml": yaml });
    if let Some(handler) = handler {
        body["error_handler_workflow_id"] = json!(handler);
    }
    api.post("/v1/workflows", &body).await
}

fn failing(name: &str) -> String {
    format!(
        "version: 1\nname: {name}\nparams:\n  token: {{secret: true, default: none}}\nsteps:\n  - id: fail\n    action: shell.run\n    with: {{argv: [sh, -c, \"exit 3\"]}}\n"
    )
}

/// The session that handles `failed`, once the hub has queued it.
async fn handler_of(api: &Api, failed: i64, limit: Duration) -> Option<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let r = api.get("/v1/session_queues?per_page=50").await;
        let found = r.body["session_queues"]
            .as_array()
            .expect("session_queues")
            .iter()
            .find(|s| s["origin"] == json!({"type": "error_handler", "session_id": failed}))
            .cloned();
        if found.is_some() || Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_session_queues_its_error_handler_once_and_handlers_do_not_chain() {
    let f = Fleet::start();
    let _agent = running_robot(&f, "handler", &[]);
    let handler_yaml = "version: 1
name: on-failure
params:
  failed_session_id: {default: 0}
  error_code: {default: \"\"}
  failed_params: {default: {}}
steps:
  - id: note
    action: shell.run
    with: {argv: [\"true\"]}
";
    let r = upload(&f.api, handler_yaml, None).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let handler = r.body["id"].as_i64().expect("id");

    // A handler that itself fails, whose own handler is `handler`.
    let r = upload(&f.api, &failing("failing-handler"), Some(handler)).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(r.body["error_handler_workflow_id"], handler, "{}", r.body);
    let failing_handler = r.body["id"].as_i64().expect("id");
    let r = upload(&f.api, &failing("fails"), Some(failing_handler)).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let fails = r.body["id"].as_i64().expect("id");

    // A session of `failing-handler` run directly: its handler runs with
    // the failure's details, the secret as ***.
    let direct = queue(&f.api, failing_handler, json!({"token": "t0ps3cret"})).await;
    let done = finished(&f.api, direct, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "error", "{done}");
    let handled = handler_of(&f.api, direct, Duration::from_secs(15))
        .await
        .expect("the handler was not queued");
    assert_eq!(
        handled["params"],
        json!({
            "failed_session_id": direct,
            "error_code": done["error"]["code"],
            "failed_params": {"token": "***"},
        }),
        "{handled}"
    );
    let handled_done = finished(
        &f.api,
        handled["id"].as_i64().expect("id"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(handled_done["status"], "success", "{handled_done}");
    assert!(!handled_done.to_string().contains("t0ps3cret"));

    // `fails` → its handler `failing-handler` runs and fails → no handler
    // for a handler's failure.
    let first = queue(&f.api, fails, json!({})).await;
    finished(&f.api, first, Duration::from_secs(30)).await;
    let as_handler = handler_of(&f.api, first, Duration::from_secs(15))
        .await
        .expect("the handler was not queued");
    assert_eq!(as_handler["workflow"]["id"], failing_handler);
    let as_handler_id = as_handler["id"].as_i64().expect("id");
    let done = finished(&f.api, as_handler_id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "error", "{done}");
    assert!(
        handler_of(&f.api, as_handler_id, Duration::from_secs(3))
            .await
            .is_none(),
        "a handler's failure queued another handler"
    );
    // Exactly one handler for each failure.
    let r = f.api.get("/v1/session_queues?per_page=50").await;
    let handlers_of_first = r.body["session_queues"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|s| s["origin"]["session_id"] == first)
        .count();
    assert_eq!(handlers_of_first, 1);

    // A key that cannot queue sessions cannot have the hub queue them.
    let writer = create_key(&f.scratch, "workflow.write");
    let writer = Api::new(&f.hub, Some(token(&writer, "workflow.write")));
    let r = upload(&writer, &failing("sneaky"), Some(handler)).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "insufficient_scope"),
        "{}",
        r.body
    );
    // Refused: no such handler; a handler that requires another param.
    let r = upload(&f.api, &failing("orphan"), Some(9_999)).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "invalid_field"),
        "{}",
        r.body
    );
    assert_eq!(
        r.body["error"]["problems"][0]["path"],
        "error_handler_workflow_id"
    );
    let needy = "version: 1\nname: needy\nparams:\n  customer: {}\nsteps:\n  - id: s\n    action: shell.run\n    with: {argv: [\"true\"]}\n";
    let needy = upload(&f.api, needy, None).await.body["id"]
        .as_i64()
        .expect("id");
    let r = upload(&f.api, &failing("picky"), Some(needy)).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "invalid_field"),
        "{}",
        r.body
    );
    assert!(r.message().contains("customer"), "{}", r.body);
}

/// `Tasuki-Signature` for `body` at unix time `t`.
fn signed(secret: &str, t: i64, body: &str) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = aws_lc_rs::hmac::sign(&key, format!("{t}.{body}").as_bytes());
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

async fn deliver(api: &Api, path: &str, signature: Option<&str>, body: &str) -> Reply {
    let mut r = api
        .http
        .post(format!("{}{path}", api.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(signature) = signature {
        r = r.header("Tasuki-Signature", signature);
    }
    api.send(r).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_queues_a_session_with_mapped_params_once() {
    let f = Fleet::start();
    let _agent = running_robot(&f, "hooked", &[]);
    let yaml = "version: 1
name: hooked
params:
  customer: {default: nobody}
  token: {secret: true}
steps:
  - id: check
    action: shell.run
    with:
      shell: sh
      env: {C: \"${params.customer}\", T: \"${params.token}\"}
      script: test \"$C\" = c-42 && test \"$T\" = t0k3n
";
    let w = workflow(&f.api, yaml, &[]).await;
    let r = f
        .api
        .post(
            &format!("/v1/workflows/{w}/triggers"),
            &json!({"params_mapping": {"customer": "/data/customer/id", "token": "/auth/token"}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let secret = r.body["secret"]
        .as_str()
        .expect("the secret, once")
        .to_string();
    let path = r.body["path"].as_str().expect("path").to_string();
    // Listed without its secret.
    let listed = f.api.get(&format!("/v1/workflows/{w}/triggers")).await;
    assert!(
        listed.body["triggers"][0].get("secret").is_none(),
        "{}",
        listed.body
    );
    assert!(!listed.body.to_string().contains(&secret));

    let anon = Api::new(&f.hub, None);
    let now = jiff::Timestamp::now().as_second();
    let body = r#"{"data": {"customer": {"id": "c-42"}}, "auth": {"token": "t0k3n"}}"#;
    let signature = signed(&secret, now, body);
    let r = deliver(&anon, &path, Some(&signature), body).await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(
        r.body["params"],
        json!({"customer": "c-42", "token": "***"}),
        "{}",
        r.body
    );
    let trigger_id = r.body["origin"]["trigger_id"].as_i64().expect("origin");
    assert_eq!(r.body["origin"]["type"], "trigger");
    assert!(path.ends_with(&format!("/{trigger_id}")));
    let done = finished(
        &f.api,
        r.body["id"].as_i64().expect("id"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        done["status"], "success",
        "the mapped params did not arrive: {done}"
    );

    // The same request again: taken once.
    let r = deliver(&anon, &path, Some(&signature), body).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (409, "replayed"),
        "{}",
        r.body
    );
    // Sent twice at once: one session.
    let twice = signed(&secret, now + 1, body);
    let (a, b) = tokio::join!(
        deliver(&anon, &path, Some(&twice), body),
        deliver(&anon, &path, Some(&twice), body)
    );
    let mut codes = [a.status.as_u16(), b.status.as_u16()];
    codes.sort();
    assert_eq!(codes, [201, 409], "{} / {}", a.body, b.body);

    // Refusals, each naming what is wrong.
    let r = deliver(
        &anon,
        &path,
        Some(&signed("not-the-secret", now, body)),
        body,
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (401, "invalid_signature"),
        "{}",
        r.body
    );
    let r = deliver(&anon, &path, Some(&signed(&secret, now - 600, body)), body).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (401, "stale_signature"),
        "{}",
        r.body
    );
    let r = deliver(&anon, &path, None, body).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "invalid_signature_header"),
        "{}",
        r.body
    );
    let r = deliver(&anon, &path, Some("t=1,v1=zz"), body).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "invalid_signature_header"),
        "{}",
        r.body
    );
    let r = deliver(&anon, "/v1/triggers/9999", Some(&signature), body).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (401, "invalid_signature"),
        "{}",
        r.body
    );
    // A body without the secret param: the params check names it, and the
    // request may be sent again once fixed (its signature was not taken).
    let lacking = r#"{"data": {"customer": {"id": "c-42"}}}"#;
    let r = deliver(
        &anon,
        &path,
        Some(&signed(&secret, now + 2, lacking)),
        lacking,
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "invalid_params"),
        "{}",
        r.body
    );
    assert!(r.message().contains("token"), "{}", r.body);
    let r = deliver(
        &anon,
        &path,
        Some(&signed(&secret, now + 2, "not json")),
        "not json",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (400, "invalid_json"),
        "{}",
        r.body
    );

    // Bad mappings when it is made.
    for (mapping, says) in [
        (json!({"nobody": "/x"}), "declares no param"),
        (json!({"customer": "x"}), "JSON Pointer"),
        (json!({"customer": 3}), "JSON Pointer"),
    ] {
        let r = f
            .api
            .post(
                &format!("/v1/workflows/{w}/triggers"),
                &json!({"params_mapping": mapping}),
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (422, "invalid_field"),
            "{}",
            r.body
        );
        assert!(r.message().contains(says), "{}", r.body);
    }
    // Deleted: refused as unknown.
    let r = f.api.delete(&path).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    let r = deliver(&anon, &path, Some(&signed(&secret, now + 3, body)), body).await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (401, "invalid_signature"),
        "{}",
        r.body
    );
}

/// A receiver of notifications on loopback: records each request, and
/// answers with the statuses it is given, then 200.
struct Receiver {
    url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
}

async fn receiver(statuses: Vec<u16>) -> Receiver {
    use std::sync::{Arc, Mutex};
    let got: Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>> = Arc::default();
    let answers = Arc::new(Mutex::new(statuses.into_iter()));
    let app = {
        let got = got.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let (got, answers) = (got.clone(), answers.clone());
                async move {
                    got.lock().unwrap().push((headers, body));
                    let status = answers.lock().unwrap().next().unwrap_or(200);
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url: format!("http://{addr}/hook"),
        got,
    }
}

async fn deliveries_of(api: &Api, id: i64) -> Vec<Value> {
    let r = api.get(&format!("/v1/notifications/{id}/deliveries")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    r.body["deliveries"].as_array().expect("deliveries").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_arrive_signed_and_are_retried_after_a_receiver_error() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(
        &scratch,
        &["--quota-per-robot", "1000000", "--notify-private-addresses"],
    );
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = Robot::new(scratch.dir.path(), "notified");
    robot.register_ok(&hub, &key, &[]);
    let _agent = robot.start(&[]);
    let yaml = "version: 1\nname: told\nparams:\n  token: {secret: true}\nsteps:\n  - id: s\n    action: shell.run\n    with: {argv: [\"true\"]}\n";
    let w = workflow(&api, yaml, &[]).await;
    // The receiver fails the first request: the hub tries again.
    let rx = receiver(vec![500]).await;
    let r = api
        .post(
            "/v1/notifications",
            &json!({"url": rx.url, "events": ["success", "error"], "workflow_id": w}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let id = r.body["id"].as_i64().expect("id");
    let secret = r.body["secret"].as_str().expect("secret").to_string();
    let listed = api.get("/v1/notifications").await;
    assert!(
        !listed.body.to_string().contains(&secret),
        "{}",
        listed.body
    );
    // The URL as its origin: a webhook URL's path is often its credential.
    let origin = rx.url.trim_end_matches("/hook");
    assert_eq!(
        listed.body["notifications"][0]["url"],
        format!("{origin}/…")
    );
    // Its events carry sessions: a key that cannot read them cannot make one.
    let writer = create_key(&scratch, "workflow.write");
    let writer = Api::new(&hub, Some(token(&writer, "workflow.write")));
    let r = writer
        .post("/v1/notifications", &json!({"url": rx.url}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "insufficient_scope"),
        "{}",
        r.body
    );

    let session = queue(&api, w, json!({"token": "n0tify-s3cret"})).await;
    let done = finished(&api, session, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "success");
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        let log = deliveries_of(&api, id).await;
        if log.first().is_some_and(|d| d["status"] == "delivered") {
            break log;
        }
        assert!(Instant::now() < deadline, "not delivered: {log:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let d = &delivered[0];
    assert_eq!(d["event"], "session.success");
    assert_eq!(d["session_id"], session);
    assert_eq!(d["attempts"], 2, "{d}");
    assert_eq!(d["last_status_code"], 200, "{d}");

    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "one failed attempt, one delivered");
    for (headers, body) in &got {
        let header = headers["tasuki-signature"].to_str().expect("ASCII");
        let t: i64 = header
            .split(',')
            .find_map(|p| p.strip_prefix("t="))
            .and_then(|t| t.parse().ok())
            .expect("t=");
        assert_eq!(
            header,
            signed(&secret, t, body),
            "the signature does not verify"
        );
        let event: Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(event["event"], "session.success");
        assert_eq!(event["session"]["id"], session);
        assert_eq!(event["session"]["params"]["token"], "***");
        assert!(!body.contains("n0tify-s3cret"));
    }

    // A test event, through the same log.
    let r = api
        .post(&format!("/v1/notifications/{id}/test"), &json!({}))
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    assert_eq!(r.body["event"], "test");
    let deadline = Instant::now() + Duration::from_secs(10);
    while deliveries_of(&api, id).await[0]["status"] != "delivered" {
        assert!(
            Instant::now() < deadline,
            "the test event was not delivered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_never_delays_sessions_and_private_addresses_are_refused() {
    let f = Fleet::start();
    // Without --notify-private-addresses: loopback is refused.
    let r = f
        .api
        .post(
            "/v1/notifications",
            &json!({"url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (422, "invalid_field"),
        "{}",
        r.body
    );
    assert!(r.message().contains("private"), "{}", r.body);
    for (body, field) in [
        (json!({"url": "ftp://example.com/x"}), "url"),
        (json!({"url": "http://localhost:9/x"}), "url"),
        (json!({"url": "http://[::1]:9/x"}), "url"),
        // A public address, never sent to (no session ends on this hub).
        (
            json!({"url": "https://192.0.2.10/x", "events": ["queued"]}),
            "events[0]",
        ),
        (
            json!({"url": "https://192.0.2.10/x", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://192.0.2.10/x", "workflow_id": 999}),
            "workflow_id",
        ),
    ] {
        let r = f.api.post("/v1/notifications", &body).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (422, "invalid_field"),
            "{body}: {}",
            r.body
        );
        assert_eq!(r.body["error"]["problems"][0]["path"], field, "{}", r.body);
    }
    // A receiver that accepts and never answers, on a hub that allows it.
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(
        &scratch,
        &["--quota-per-robot", "1000000", "--notify-private-addresses"],
    );
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_url = format!("http://{}/hook", silent.local_addr().expect("addr"));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = accepted.clone();
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            open.push(conn);
        }
    });
    let r = api
        .post("/v1/notifications", &json!({"url": silent_url}))
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let notification = r.body["id"].as_i64().expect("id");
    let robot = Robot::new(scratch.dir.path(), "unbothered");
    robot.register_ok(&hub, &key, &[]);
    let _agent = robot.start(&[]);
    let w = workflow(&api, &sleeper("unbothered", 0), &[]).await;
    // A first session's notification goes to the silent receiver, and
    // waits there (up to 10 s an attempt).
    let first = queue(&api, w, json!({})).await;
    finished(&api, first, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the hub never called the receiver"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Meanwhile, sessions start and end one after another.
    let started = Instant::now();
    for _ in 0..5 {
        let id = queue(&api, w, json!({})).await;
        let done = finished(&api, id, Duration::from_secs(20)).await;
        assert_eq!(done["status"], "success");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "five one-step sessions took {:?} beside a silent receiver",
        started.elapsed()
    );
    // The first notification was still waiting on the receiver all along.
    let log = deliveries_of(&api, notification).await;
    let first_delivery = log
        .iter()
        .find(|d| d["session_id"] == first)
        .expect("the first session's delivery");
    assert_eq!(first_delivery["status"], "pending", "{first_delivery}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_records_each_change_and_who_made_it() {
    let f = Fleet::start();
    let auditor = create_key(&f.scratch, "audit.read");
    let auditor = Api::new(&f.hub, Some(token(&auditor, "audit.read")));
    let w = workflow(&f.api, &sleeper("audited", 60), &[]).await;
    let schedule = create_schedule(&f.api, w, json!({"cron": "0 0 1 1 *"})).await["id"]
        .as_i64()
        .expect("id");
    f.api
        .post(&format!("/v1/schedules/{schedule}/pause"), &json!({}))
        .await;
    f.api
        .post(&format!("/v1/schedules/{schedule}/resume"), &json!({}))
        .await;
    assert_eq!(
        f.api
            .delete(&format!("/v1/schedules/{schedule}"))
            .await
            .status
            .as_u16(),
        204
    );
    let trigger = f
        .api
        .post(&format!("/v1/workflows/{w}/triggers"), &json!({}))
        .await;
    let trigger_secret = trigger.body["secret"].as_str().expect("secret").to_string();
    let trigger = trigger.body["id"].as_i64().expect("id");
    assert_eq!(
        f.api
            .delete(&format!("/v1/triggers/{trigger}"))
            .await
            .status
            .as_u16(),
        204
    );
    let session = queue(&f.api, w, json!({})).await;
    let r = f
        .api
        .delete(&format!("/v1/session_queues/{session}/cancel"))
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);

    // Without audit.read: refused.
    let r = f.api.get("/v1/audit_log").await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (403, "insufficient_scope"),
        "{}",
        r.body
    );
    let r = auditor.get("/v1/audit_log?per_page=100").await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let entries = r.body["entries"].as_array().expect("entries");
    let seen: Vec<(String, String, String)> = entries
        .iter()
        .rev()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("").to_string(),
                e["action"].as_str().unwrap_or("").to_string(),
                e["subject"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let by = |action: &str, subject: String| (f.key.id.clone(), action.to_string(), subject);
    // The two keys were made on the command line, by the operator.
    assert_eq!(
        seen[0],
        (
            "operator".to_string(),
            "key.create".to_string(),
            format!("key {}", f.key.id)
        ),
        "{seen:?}"
    );
    assert_eq!(
        (seen[1].0.as_str(), seen[1].1.as_str()),
        ("operator", "key.create"),
        "{seen:?}"
    );
    assert_eq!(
        seen[2..].to_vec(),
        vec![
            by("workflow.create", format!("workflow {w}")),
            by("schedule.create", format!("schedule {schedule}")),
            by("schedule.pause", format!("schedule {schedule}")),
            by("schedule.resume", format!("schedule {schedule}")),
            by("schedule.delete", format!("schedule {schedule}")),
            by("trigger.create", format!("trigger {trigger}")),
            by("trigger.delete", format!("trigger {trigger}")),
            by("session_queue.cancel", format!("session_queue {session}")),
        ],
        "{seen:?}"
    );
    assert!(!r.body.to_string().contains(&trigger_secret), "{}", r.body);
    assert!(!r.body.to_string().contains(&f.key.secret), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_outputs_appear_in_the_session() {
    let f = Fleet::start();
    let _agent = running_robot(&f, "outputs", &[]);
    let yaml = "version: 1
name: totals
params:
  token: {secret: true}
steps:
  - id: sum
    action: set
    with: {n: 42}
outputs:
  total: ${steps.sum.output.n}
  echoed: \"${params.token}\"
";
    let w = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, w, json!({"token": "0utput-s3cret"})).await;
    let done = finished(&f.api, id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(
        done["outputs"],
        json!({"total": 42, "echoed": "***"}),
        "{done}"
    );
    assert!(!done.to_string().contains("0utput-s3cret"));
}

/// The AUTORO document's undeclared params reach the robot as their JSON
/// values, for a workflow that takes them; one the session was not given
/// fails the step that reads it.
#[tokio::test]
async fn a_robot_reads_undeclared_params_as_given() {
    let f = Fleet::start();
    let (_robot, _agent) = running_robot(&f, "undeclared-bot", &[]);
    let workflow_id = workflow(
        &f.api,
        "version: 1\nname: Awesome Workflow.\naccept_undeclared_params: true\nsteps:\n  - id: say\n    action: log\n    with: {message: \"${params.var1}\"}\noutputs:\n  text: \"${params.var1}\"\n  list: \"${params.var2}\"\n  second: \"${params.var2[1]}\"\n",
        &[],
    )
    .await;
    let id = queue(
        &f.api,
        workflow_id,
        json!({"var1": "this is string", "var2": ["this", "is", "array"]}),
    )
    .await;
    let done = finished(&f.api, id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(
        done["outputs"],
        json!({"text": "this is string", "list": ["this", "is", "array"], "second": "is"}),
        "{done}"
    );

    let id = queue(&f.api, workflow_id, json!({"var2": []})).await;
    let done = finished(&f.api, id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "error", "{done}");
    let message = done["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no field `var1`"), "{done}");
}
