//! The lease protocol, spoken by hand: a real `tasuki-hub` and raw HTTP
//! calls in a robot's place, nothing mocked. A lease the hub answers a
//! poll with is already `running` on that robot; the robot's next poll
//! lists it in `held`, which confirms it. Until then it can be handed back
//! (`release`) or sent again to a retry of the same poll id; a lease that
//! is never renewed ends its session as `robot_lost`, never re-run.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet_support::{finished, queue, workflow};
use hub_support::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(30);

/// The tests read sessions often, far above AUTORO's 60 calls a minute,
/// and an idle poll is held 1 s instead of 25 so that a poll with nothing
/// to give answers quickly.
const HUB_ARGS: &[&str] = &["--quota-per-robot", "1000000", "--hold-seconds", "1"];

const YAML: &str = "version: 1
name: lease-probe
steps:
  - id: work
    action: shell.run
    with: {argv: [\"true\"]}
";

/// One hub, a public-API client and a client acting as robots (both with
/// the same key: a robot is registered under the key that polls for it).
struct Setup {
    _scratch: Scratch,
    hub: Hub,
    key: Key,
    api: Api,
    robot_api: Api,
}

fn setup_with(hub_args: &[&str]) -> Setup {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, hub_args);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot_api = Api::new(&hub, Some(token(&key, "robot")));
    Setup {
        _scratch: scratch,
        hub,
        key,
        api,
        robot_api,
    }
}

fn setup() -> Setup {
    setup_with(HUB_ARGS)
}

/// A lease in a poll's answer: `(session_id, lease_id)`.
type Lease = (i64, String);

impl Setup {
    /// Registers the robot `name` (one slot), with instance id `name`.
    async fn register(&self, name: &str) {
        let r = self
            .robot_api
            .send(
                self.robot_api
                    .request(reqwest::Method::PUT, &format!("/v1/robot/robots/{name}"))
                    .json(&json!({"instance_id": name, "version": "test", "max_concurrency": 1})),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "register {name}: {}", r.body);
    }

    /// One poll of the robot `name`; the answer, which must be a 200.
    async fn poll(&self, name: &str, poll_id: &str, free_slots: u32, held: &[&Lease]) -> Value {
        poll(&self.robot_api, name, poll_id, free_slots, held).await
    }

    /// A queued session of a fresh workflow.
    async fn queued_session(&self) -> i64 {
        self.queued_of(YAML).await
    }

    /// A queued session of a fresh workflow of this text.
    async fn queued_of(&self, yaml: &str) -> i64 {
        let wf = workflow(&self.api, yaml, &[]).await;
        queue(&self.api, wf, json!({})).await
    }

    async fn session(&self, id: i64) -> Value {
        let r = self.api.get(&format!("/v1/session_queues/{id}")).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        r.body
    }

    /// `POST path` as a robot, carrying `lease` in the `tasuki-lease` header.
    async fn with_lease(&self, path: &str, lease: &str, body: Value) -> Reply {
        self.robot_api
            .send(
                self.robot_api
                    .request(reqwest::Method::POST, path)
                    .header("tasuki-lease", lease)
                    .json(&body),
            )
            .await
    }

    async fn release(&self, lease: &Lease) -> Reply {
        let (id, lease_id) = lease;
        self.with_lease(
            &format!("/v1/robot/sessions/{id}/release"),
            lease_id,
            json!({}),
        )
        .await
    }

    async fn log_line(&self, lease: &Lease) -> Reply {
        let (id, lease_id) = lease;
        self.with_lease(
            &format!("/v1/robot/sessions/{id}/logs"),
            lease_id,
            json!({"lines": [{"seq": 1, "ts": "2026-01-01T00:00:00Z", "level": "info",
                              "step_id": null, "message": "hello"}]}),
        )
        .await
    }
}

async fn poll(api: &Api, name: &str, poll_id: &str, free_slots: u32, held: &[&Lease]) -> Value {
    poll_as(api, name, poll_id, free_slots, held, false).await
}

async fn poll_as(
    api: &Api,
    name: &str,
    poll_id: &str,
    free_slots: u32,
    held: &[&Lease],
    draining: bool,
) -> Value {
    poll_with(api, name, (poll_id, None), free_slots, held, draining).await
}

/// A poll numbered `seq` (`poll_seq`), as agents that number them send.
async fn poll_numbered(
    api: &Api,
    name: &str,
    poll_id: &str,
    seq: u64,
    free_slots: u32,
    held: &[&Lease],
) -> Value {
    poll_with(api, name, (poll_id, Some(seq)), free_slots, held, false).await
}

async fn poll_with(
    api: &Api,
    name: &str,
    (poll_id, poll_seq): (&str, Option<u64>),
    free_slots: u32,
    held: &[&Lease],
    draining: bool,
) -> Value {
    let held: Vec<Value> = held
        .iter()
        .map(|(id, lease)| json!({"session_id": id, "lease_id": lease}))
        .collect();
    let mut body = json!({
        "instance_id": name,
        "poll_id": poll_id,
        "free_slots": free_slots,
        "draining": draining,
        "held": held,
    });
    if let Some(seq) = poll_seq {
        body["poll_seq"] = json!(seq);
    }
    let r = api
        .post(&format!("/v1/robot/robots/{name}/poll"), &body)
        .await;
    assert_eq!(r.status.as_u16(), 200, "poll of {name}: {}", r.body);
    r.body
}

/// The leases in a poll's answer.
fn leases(answer: &Value) -> Vec<Lease> {
    answer["leases"]
        .as_array()
        .unwrap_or_else(|| panic!("a poll answer lists its leases: {answer}"))
        .iter()
        .map(|l| {
            (
                l["session_id"].as_i64().expect("session_id"),
                l["lease_id"].as_str().expect("lease_id").to_string(),
            )
        })
        .collect()
}

/// The one lease in a poll's answer.
fn only_lease(answer: &Value) -> Lease {
    let got = leases(answer);
    assert_eq!(got.len(), 1, "exactly one lease: {answer}");
    got.into_iter().next().expect("one lease")
}

/// A refusal with this status and error code.
fn assert_refused(r: &Reply, status: u16, code: &str) {
    assert_eq!((r.status.as_u16(), r.code()), (status, code), "{}", r.body);
}

/// An answer with nothing in it: no lease, no cancel, nothing lost.
fn assert_empty(answer: &Value) {
    assert_eq!(answer["leases"], json!([]), "{answer}");
    assert_eq!(answer["cancel"], json!([]), "{answer}");
    assert_eq!(answer["lost"], json!([]), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_running_from_the_poll_that_carries_it() {
    let s = setup();
    let id = s.queued_session().await;
    let before = s.session(id).await;
    assert_eq!(before["status"], "queued", "{before}");
    assert!(before["robot"].is_null(), "{before}");
    assert!(before["started_at"].is_null(), "{before}");

    s.register("r1").await;
    let answer = s.poll("r1", "p1", 1, &[]).await;
    let (leased, lease_id) = only_lease(&answer);
    assert_eq!(leased, id);
    assert!(!lease_id.is_empty());
    let lease = &answer["leases"][0];
    assert_eq!(lease["workflow"]["name"], "lease-probe", "{lease}");

    // No ack, no other call: the poll's free slot was the acceptance.
    let now = s.session(id).await;
    assert_eq!(now["status"], "running", "{now}");
    assert_eq!(now["robot"]["name"], "r1", "{now}");
    assert!(now["started_at"].is_string(), "{now}");
    assert!(now["ended_at"].is_null(), "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_poll_answer_is_sent_again_to_the_same_poll_id() {
    let s = setup();
    let id = s.queued_session().await;
    s.register("r1").await;
    let first = only_lease(&s.poll("r1", "p1", 1, &[]).await);
    assert_eq!(first.0, id);

    // The answer was lost: the robot retries the same poll, holding nothing.
    let again = s.poll("r1", "p1", 1, &[]).await;
    assert_eq!(only_lease(&again), first, "the same lease, sent again");

    // The next poll lists it: nothing is repeated, nothing is lost.
    let next = s.poll("r1", "p2", 0, &[&first]).await;
    assert_empty(&next);

    let now = s.session(id).await;
    assert_eq!(now["status"], "running", "{now}");
    assert_eq!(now["robot"]["name"], "r1", "{now}");
    // The lease is still the session's.
    let r = s.log_line(&first).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
}

/// A draining robot that holds nothing comes back only for what a poll it
/// gave up was sent: the hub answers it at once (not after the hold), with
/// that lease, which the robot then hands back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_robot_that_holds_nothing_is_answered_at_once() {
    // The default hold (25 s), which the answer must not wait out.
    let s = setup_with(&["--quota-per-robot", "1000000"]);
    let id = s.queued_session().await;
    s.register("r1").await;
    let first = only_lease(&s.poll("r1", "p1", 1, &[]).await);
    assert_eq!(first.0, id);

    // The robot gave p1 up as its drain began; it asks again, draining.
    let started = std::time::Instant::now();
    let again = poll_as(&s.robot_api, "r1", "p1", 0, &[], true).await;
    assert_eq!(only_lease(&again), first, "the same lease, sent again");
    let r = s.release(&first).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    assert_eq!(s.session(id).await["status"], "queued");

    // Nothing held, nothing more to say: answered at once, not held.
    let last = poll_as(&s.robot_api, "r1", "p2", 0, &[], true).await;
    assert_empty(&last);
    let hold = last["hold_seconds"].as_u64().expect("hold_seconds");
    assert_eq!(hold, 25);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered after {:?} (the hold is {hold} s)",
        started.elapsed()
    );
}

/// A robot has one poll outstanding: a newer poll supersedes an older one
/// that is still open (the robot gave it up, and the hub has not seen its
/// connection close), which is answered empty at once. Were it left
/// waiting, a session queued next could be granted to a poll nobody
/// reads, and would sit `running` until its lease expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_poll_supersedes_an_older_one_still_open() {
    // The default hold (25 s), which the old poll must not wait out.
    let s = setup_with(&["--quota-per-robot", "1000000"]);
    s.register("r1").await;
    let older = {
        let api = Api::new(&s.hub, Some(token(&s.key, "robot")));
        tokio::spawn(async move { poll(&api, "r1", "p1", 1, &[]).await })
    };
    // The older poll is waiting at the hub.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!older.is_finished(), "nothing to say yet: it waits");
    let newer = poll_as(&s.robot_api, "r1", "p2", 0, &[], true).await;
    assert_empty(&newer);
    let answered = tokio::time::timeout(Duration::from_secs(10), older)
        .await
        .expect("the older poll is answered when the newer one comes")
        .expect("the older poll's task");
    assert_empty(&answered);
    // Nobody waits for work now: a new session stays queued.
    let id = s.queued_session().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.session(id).await["status"], "queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_handed_back_before_any_poll_lists_it_goes_to_the_next_robot() {
    let s = setup();
    let id = s.queued_session().await;
    s.register("a").await;
    s.register("b").await;
    let old = only_lease(&s.poll("a", "a1", 1, &[]).await);
    assert_eq!(old.0, id);

    let r = s.release(&old).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    let back = s.session(id).await;
    assert_eq!(back["status"], "queued", "{back}");
    assert!(back["robot"].is_null(), "{back}");
    assert!(back["started_at"].is_null(), "{back}");

    let new = only_lease(&s.poll("b", "b1", 1, &[]).await);
    assert_eq!(new.0, id, "robot b gets the session");
    assert_ne!(new.1, old.1, "under a new lease");
    let now = s.session(id).await;
    assert_eq!(now["status"], "running", "{now}");
    assert_eq!(now["robot"]["name"], "b", "{now}");

    let r = s.log_line(&old).await;
    assert_refused(&r, 409, "lease_lost");
    let r = s.log_line(&new).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
}

/// A robot that numbers its polls (`poll_seq`) lists in each the leases it
/// received in answer to lower-numbered ones. A lease sent to a lower
/// number and not listed never reached it (the answer went to a sending of
/// a poll the robot had given up, which on PostgreSQL can reach the hub
/// after the sending the robot reads): the poll takes it back and the
/// session runs, rather than sitting `running` until its lease expires
/// and ending `robot_lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_next_poll_does_not_list_goes_back_to_the_queue() {
    let s = setup();
    let id = s.queued_session().await;
    s.register("r1").await;
    let unread = only_lease(&poll_numbered(&s.robot_api, "r1", "p1", 1, 1, &[]).await);
    assert_eq!(unread.0, id);

    // The robot never read that answer, and has moved on to a new poll.
    let again = only_lease(&poll_numbered(&s.robot_api, "r1", "p2", 2, 1, &[]).await);
    assert_eq!(again.0, id, "the session comes back to the robot");
    assert_ne!(again.1, unread.1, "under a new lease");
    let r = s.log_line(&unread).await;
    assert_refused(&r, 409, "lease_lost");
    let r = s.log_line(&again).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);

    // A lease the poll does list stays the robot's.
    assert_empty(&poll_numbered(&s.robot_api, "r1", "p3", 3, 0, &[&again]).await);
    let now = s.session(id).await;
    assert_eq!(now["status"], "running", "{now}");
    assert_eq!(now["robot"]["name"], "r1", "{now}");
}

/// A lease taken back that way goes to the robot that waits for work when
/// the robot whose poll took it back has no room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_taken_back_by_a_poll_goes_to_a_waiting_robot() {
    // Polls held 5 s: robot b's waits until it is offered the session,
    // and is answered empty (failing the test) if that offer never comes.
    let s = setup_with(&["--quota-per-robot", "1000000", "--hold-seconds", "5"]);
    let id = s.queued_session().await;
    s.register("a").await;
    s.register("b").await;
    let unread = only_lease(&poll_numbered(&s.robot_api, "a", "a1", 1, 1, &[]).await);
    assert_eq!(unread.0, id);
    let b = {
        let api = Api::new(&s.hub, Some(token(&s.key, "robot")));
        tokio::spawn(async move { poll(&api, "b", "b1", 1, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "robot b waits for work");

    // Robot a polls again, full (another session took its slot), holding
    // nothing: the unread lease is taken back and offered to robot b.
    let a_again = poll_numbered(&s.robot_api, "a", "a2", 2, 0, &[]).await;
    assert_empty(&a_again);
    let b_got = tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .expect("robot b is offered the session taken back")
        .expect("robot b's poll");
    let got = only_lease(&b_got);
    assert_eq!(got.0, id);
    let now = s.session(id).await;
    assert_eq!(now["status"], "running", "{now}");
    assert_eq!(now["robot"]["name"], "b", "{now}");
}

/// A sending of an older poll that reaches the hub late (the robot gave it
/// up long ago) takes back nothing sent to a newer poll: the robot may be
/// running it. A poll without a number (an agent older than `poll_seq`)
/// takes back nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_sending_of_an_older_poll_takes_back_nothing_newer() {
    let s = setup();
    let id = s.queued_session().await;
    s.register("r1").await;
    let received = only_lease(&poll_numbered(&s.robot_api, "r1", "p5", 5, 1, &[]).await);
    assert_eq!(received.0, id);

    // Poll 4, given up before poll 5 was sent, arrives now, listing
    // nothing; then an unnumbered poll listing nothing.
    assert_empty(&poll_numbered(&s.robot_api, "r1", "p4", 4, 0, &[]).await);
    assert_empty(&s.poll("r1", "p-old", 0, &[]).await);
    let r = s.log_line(&received).await;
    assert_eq!(
        r.status.as_u16(),
        200,
        "the lease is still the session's: {}",
        r.body
    );
    let now = s.session(id).await;
    assert_eq!(now["status"], "running", "{now}");
    assert_eq!(now["robot"]["name"], "r1", "{now}");

    // A number the hub cannot store is refused, naming the field.
    let r = s
        .robot_api
        .post(
            "/v1/robot/robots/r1/poll",
            &json!({"instance_id": "r1", "poll_id": "p-big", "free_slots": 0,
                    "poll_seq": u64::MAX}),
        )
        .await;
    assert_refused(&r, 422, "invalid_field");
    assert_eq!(
        r.body["error"]["problems"][0]["path"], "poll_seq",
        "{}",
        r.body
    );

    // Poll 6 lists it: confirmed, and never taken back after.
    assert_empty(&poll_numbered(&s.robot_api, "r1", "p6", 6, 0, &[&received]).await);
    assert_empty(&poll_numbered(&s.robot_api, "r1", "p7", 7, 0, &[]).await);
    let r = s.log_line(&received).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
}

/// Two more ways a robot shows it may hold a lease no poll listed: a call
/// carrying it (its log lines), and its agent starting again (it
/// registers; the run before may have begun the session and died before
/// a poll listed it). Neither lease is taken back by a later poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_used_or_sent_to_an_earlier_run_is_not_taken_back() {
    let s = setup();
    s.register("r1").await;
    let first = s.queued_session().await;
    let used = only_lease(&poll_numbered(&s.robot_api, "r1", "p1", 1, 1, &[]).await);
    assert_eq!(used.0, first);
    let r = s.log_line(&used).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_empty(&poll_numbered(&s.robot_api, "r1", "p2", 2, 0, &[]).await);
    assert_eq!(s.session(first).await["status"], "running");
    let r = s.log_line(&used).await;
    assert_eq!(r.status.as_u16(), 200, "still the session's: {}", r.body);

    s.register("r2").await;
    let second = s.queued_session().await;
    let unheard = only_lease(&poll_numbered(&s.robot_api, "r2", "q1", 1, 1, &[]).await);
    assert_eq!(unheard.0, second);
    // The agent starts again: it registers, and its polls number on.
    s.register("r2").await;
    assert_empty(&poll_numbered(&s.robot_api, "r2", "q2", 2, 0, &[]).await);
    let now = s.session(second).await;
    assert_eq!(now["status"], "running", "{now}");
    assert_eq!(now["robot"]["name"], "r2", "{now}");
}

/// `retry_on: [agent_restarted]`, spoken by hand: the report of a run cut
/// off by an agent restart queues the session again; the old lease is
/// refused from then on; the next run's steps start from revision 1 and
/// its log lines, numbered from 1 by its robot, follow the first run's and
/// the hub's note.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cut_off_by_a_restart_is_queued_again_under_retry_on() {
    let s = setup();
    let wf = workflow(
        &s.api,
        &YAML.replace(
            "name: lease-probe\n",
            "name: lease-probe\nretry_on: [agent_restarted]\n",
        ),
        &[],
    )
    .await;
    let id = queue(&s.api, wf, json!({})).await;
    s.register("r1").await;
    let first = only_lease(&poll_numbered(&s.robot_api, "r1", "p1", 1, 1, &[]).await);
    assert_eq!(first.0, id);
    let steps = |revision: u64| json!({"revision": revision, "steps": [{"id": "work", "status": "running"}]});
    let put_steps = |lease: &str, revision: u64| {
        s.robot_api.send(
            s.robot_api
                .request(
                    reqwest::Method::PUT,
                    &format!("/v1/robot/sessions/{id}/steps"),
                )
                .header("tasuki-lease", lease)
                .json(&steps(revision)),
        )
    };
    let r = put_steps(&first.1, 5).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(s.log_line(&first).await.status.as_u16(), 200);
    let r = s
        .with_lease(
            &format!("/v1/robot/sessions/{id}/finish"),
            &first.1,
            json!({"status": "error", "idempotency_key": "k1", "ended_at": "2026-01-01T00:00:00Z",
                   "steps": [], "error": {"code": "agent_restarted", "message": "cut off"}}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let now = s.session(id).await;
    assert_eq!(now["status"], "queued", "{now}");
    assert_eq!(now["attempt"], 2, "{now}");
    // The first run's lease is not the session's any more.
    assert_refused(&s.log_line(&first).await, 409, "lease_lost");

    let second = only_lease(&poll_numbered(&s.robot_api, "r1", "p2", 2, 1, &[]).await);
    assert_eq!(second.0, id);
    assert_ne!(second.1, first.1);
    let r = put_steps(&second.1, 1).await;
    assert_eq!(
        r.body["revision"], 1,
        "the new run's steps are taken: {}",
        r.body
    );
    let r = s.log_line(&second).await;
    assert_eq!(
        r.body["high_seq"], 1,
        "numbered as the robot numbers: {}",
        r.body
    );
    let logs = s.api.get(&format!("/v1/session_queues/{id}/logs")).await;
    let lines = logs.body["logs"].as_array().expect("logs");
    let text: Vec<(i64, &str)> = lines
        .iter()
        .map(|l| {
            (
                l["seq"].as_i64().unwrap_or(0),
                l["message"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert_eq!(text[0], (1, "hello"));
    assert!(
        text[1].0 == 2
            && text[1]
                .1
                .starts_with("[tasuki-hub] run 1 ended agent_restarted: its agent was stopped"),
        "{text:?}"
    );
    assert_eq!(text[2], (3, "hello"));
}

/// `retry_on` runs a session at most four times: the fourth run cut off
/// ends it, with the code it ended with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_runs_a_session_at_most_four_times() {
    let s = setup();
    let wf = workflow(
        &s.api,
        &YAML.replace(
            "name: lease-probe\n",
            "name: lease-probe\nretry_on: [agent_restarted]\n",
        ),
        &[],
    )
    .await;
    let id = queue(&s.api, wf, json!({})).await;
    s.register("r1").await;
    for run in 1..=4u64 {
        let lease =
            only_lease(&poll_numbered(&s.robot_api, "r1", &format!("p{run}"), run, 1, &[]).await);
        assert_eq!(lease.0, id, "run {run}");
        let r = s
            .with_lease(
                &format!("/v1/robot/sessions/{id}/finish"),
                &lease.1,
                json!({"status": "error", "idempotency_key": format!("k{run}"),
                       "ended_at": "2026-01-01T00:00:00Z", "steps": [],
                       "error": {"code": "agent_restarted", "message": "cut off"}}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        let now = s.session(id).await;
        if run < 4 {
            assert_eq!(now["status"], "queued", "after run {run}: {now}");
            assert_eq!(now["attempt"], run + 1, "{now}");
        } else {
            assert_eq!(now["status"], "error", "after run 4: {now}");
            assert_eq!(now["error"]["code"], "agent_restarted", "{now}");
            assert_eq!(now["attempt"], 4, "{now}");
        }
    }
    assert_empty(&poll_numbered(&s.robot_api, "r1", "p5", 5, 1, &[]).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_lease_cannot_be_handed_back() {
    let s = setup();
    let id = s.queued_session().await;
    s.register("r1").await;
    let lease = only_lease(&s.poll("r1", "p1", 1, &[]).await);
    assert_empty(&s.poll("r1", "p2", 0, &[&lease]).await);

    let r = s.release(&lease).await;
    assert_refused(&r, 409, "lease_confirmed");
    let now = s.session(id).await;
    assert_eq!(now["status"], "running", "{now}");
    assert_eq!(now["robot"]["name"], "r1", "{now}");
    let r = s.log_line(&lease).await;
    assert_eq!(
        r.status.as_u16(),
        200,
        "the lease is still the session's: {}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_cancelled_then_handed_back_ends_cancelled_and_never_runs() {
    let s = setup();
    let id = s.queued_session().await;
    s.register("a").await;
    s.register("b").await;
    let lease = only_lease(&s.poll("a", "a1", 1, &[]).await);
    assert_eq!(lease.0, id);

    let r = s
        .api
        .delete(&format!("/v1/session_queues/{id}/cancel"))
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["status"], "running", "the robot has it: {}", r.body);
    assert!(r.body["cancel_requested_at"].is_string(), "{}", r.body);

    let r = s.release(&lease).await;
    assert_eq!(r.status.as_u16(), 204, "{}", r.body);
    let now = s.session(id).await;
    assert_eq!(now["status"], "cancelled", "{now}");
    assert!(now["ended_at"].is_string(), "{now}");

    // A repeated release (its answer was lost) finds the lease gone.
    let r = s.release(&lease).await;
    assert_refused(&r, 409, "lease_lost");

    // Nobody gets it: neither another robot nor the one that handed it back.
    assert_empty(&s.poll("b", "b1", 1, &[]).await);
    assert_empty(&s.poll("a", "a2", 1, &[]).await);
    let now = s.session(id).await;
    assert_eq!(now["status"], "cancelled", "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_lease_that_is_never_renewed_ends_robot_lost_and_is_not_rerun() {
    // The shortest timings the hub takes: polls held 1 s, a lease living
    // 6 s without a renewal.
    let mut args = HUB_ARGS.to_vec();
    args.extend(["--lease-ttl-seconds", "6"]);
    let s = setup_with(&args);
    let id = s.queued_session().await;
    s.register("a").await;
    s.register("b").await;
    let lease = only_lease(&s.poll("a", "a1", 1, &[]).await);
    assert_eq!(lease.0, id);
    // Robot a never polls again. Robot b polls all along, with a free slot.
    let stop = Arc::new(AtomicBool::new(false));
    let b_api = Api::new(&s.hub, Some(token(&s.key, "robot")));
    let b = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut got: Vec<Lease> = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let held: Vec<&Lease> = got.iter().collect();
                let answer = poll(&b_api, "b", &format!("b{n}"), 1, &held).await;
                got.extend(leases(&answer));
            }
            (got, n)
        }
    });

    let ended = finished(&s.api, id, LIMIT).await;
    stop.store(true, Ordering::SeqCst);
    let (b_got, b_polls) = b.await.expect("robot b's polls");
    assert_eq!(ended["status"], "error", "{ended}");
    assert_eq!(ended["error"]["code"], "robot_lost", "{ended}");
    let message = ended["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("was sent the session and did not poll again"),
        "{ended}"
    );
    assert_eq!(ended["robot"]["name"], "a", "{ended}");
    assert!(b_polls > 1, "robot b polled while the lease ran out");
    assert!(b_got.is_empty(), "robot b was given {b_got:?}");

    // And not later either: the session stays ended.
    assert_empty(&s.poll("b", "b-after", 1, &[]).await);
    let now = s.session(id).await;
    assert_eq!(now["status"], "error", "{now}");
    assert_eq!(now["robot"]["name"], "a", "{now}");

    // A release that comes too late is told the session has ended, which
    // a robot takes as done; it brings nothing back to the queue.
    let r = s.release(&lease).await;
    assert_refused(&r, 409, "lease_lost");
    assert_eq!(s.session(id).await["status"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ack_call_is_gone() {
    let s = setup();
    let id = s.queued_session().await;
    s.register("r1").await;
    let (leased, lease_id) = only_lease(&s.poll("r1", "p1", 1, &[]).await);
    assert_eq!(leased, id);

    let r = s
        .with_lease(
            &format!("/v1/robot/sessions/{id}/ack"),
            &lease_id,
            json!({}),
        )
        .await;
    assert_refused(&r, 404, "not_found");
    // The session runs on regardless.
    let now = s.session(id).await;
    assert_eq!(now["status"], "running", "{now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_a_log_line_is_kept_as_a_replacement_character_on_either_database() {
    let s = setup();
    let id = s.queued_session().await;
    s.register("r1").await;
    let (_, lease_id) = only_lease(&s.poll("r1", "p1", 1, &[]).await);
    let r = s
        .with_lease(
            &format!("/v1/robot/sessions/{id}/logs"),
            &lease_id,
            json!({"lines": [
                {"seq": 1, "ts": "2026-01-01T00:00:00Z", "level": "info",
                 "step_id": "a\u{0}b", "message": "before\u{0}after"},
                {"seq": 2, "ts": "2026-01-01T00:00:00Z", "level": "info",
                 "step_id": null, "message": "next"}
            ]}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["high_seq"], 2, "{}", r.body);
    let logs = s
        .api
        .get(&format!("/v1/session_queues/{id}/logs"))
        .await
        .body;
    assert_eq!(logs["logs"][0]["message"], "before\u{fffd}after", "{logs}");
    assert_eq!(logs["logs"][0]["step_id"], "a\u{fffd}b", "{logs}");
    assert_eq!(logs["logs"][1]["message"], "next", "{logs}");
}

/// A workflow that stops at an approval step, `work`.
const PAUSING_YAML: &str = "version: 1
name: pausing
steps:
  - id: work
    action: approval
    with: {message: go?, timeout: 1h}
  - id: after
    action: shell.run
    with: {argv: [\"true\"]}
";

/// A robot's report that its session stopped at `PAUSING_YAML`'s approval
/// step.
fn suspend_report(key: &str) -> Value {
    let wait = json!({"step_id": "work", "kind": "approval", "message": "go?",
                      "timeout_ms": 3_600_000, "on_timeout": "reject"});
    json!({"idempotency_key": key, "status": "waiting", "ended_at": "2026-01-01T00:00:00Z",
           "steps": [{"id": "work", "status": "running"}],
           "suspend": {"wait": wait,
                       "checkpoint": {"wait": wait, "vars": {"secret-ish": "s3cr3t"}}}})
}

/// A suspend sent again (its answer lost) gets the first answer, though
/// the first one let go of the lease; a cancel asked while the session
/// still ran is not lost when the robot then suspends it: the wait is
/// answered `cancelled` at once, and the next robot resumes it only to
/// end it. Once it ends, its checkpoint is gone from the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspend_sent_again_is_answered_alike_and_a_cancel_before_it_is_kept() {
    let s = setup();
    s.register("pauser").await;
    let id = s.queued_of(PAUSING_YAML).await;
    let (_, lease) = only_lease(&s.poll("pauser", "p1", 1, &[]).await);
    let finish = format!("/v1/robot/sessions/{id}/finish");
    let first = s.with_lease(&finish, &lease, suspend_report("k1")).await;
    assert_eq!(first.status.as_u16(), 200, "{}", first.body);
    assert_eq!(first.body["status"], "waiting", "{}", first.body);
    let again = s.with_lease(&finish, &lease, suspend_report("k1")).await;
    assert_eq!(again.status.as_u16(), 200, "{}", again.body);
    assert_eq!(again.body["status"], "waiting", "{}", again.body);
    // Another report under the lease it let go of is refused.
    let other = s.with_lease(&finish, &lease, suspend_report("k2")).await;
    assert_refused(&other, 409, "lease_lost");

    // Cancel asked while the robot still runs it, then the robot suspends.
    let id = s.queued_of(PAUSING_YAML).await;
    let answer = s.poll("pauser", "p2", 1, &[]).await;
    let (got, lease) = only_lease(&answer);
    assert_eq!(got, id);
    let r = s
        .api
        .delete(&format!("/v1/session_queues/{id}/cancel"))
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let finish = format!("/v1/robot/sessions/{id}/finish");
    let r = s.with_lease(&finish, &lease, suspend_report("k3")).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let session = s.session(id).await;
    assert_eq!(session["status"], "queued", "{session}");
    assert_eq!(session["wait"]["outcome"], "cancelled", "{session}");
    // The next lease resumes it, cancelled, to run its cleanup and end.
    let answer = s.poll("pauser", "p3", 1, &[]).await;
    let (got, lease) = only_lease(&answer);
    assert_eq!(got, id);
    assert_eq!(
        answer["leases"][0]["resume"]["outcome"]["outcome"], "cancelled",
        "{answer}"
    );
    let r = s
        .with_lease(
            &finish,
            &lease,
            json!({"idempotency_key": "k4", "status": "cancelled", "ended_at": "2026-01-01T00:00:01Z"}),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    assert_eq!(r.body["wait"]["outcome"], "cancelled", "{}", r.body);
    drop(s.hub);
    let left = match s._scratch.is_postgres() {
        true => psql(
            s._scratch.db().to_str().expect("a UTF-8 URL"),
            &format!(
                "SELECT COUNT(*) FROM session_waits WHERE checkpoint IS NOT NULL AND session_id = {id}"
            ),
        ),
        false => {
            let conn = rusqlite::Connection::open(s._scratch.db_file()).expect("open");
            conn.query_row(
                "SELECT COUNT(*) FROM session_waits WHERE checkpoint IS NOT NULL AND session_id = ?1",
                [id],
                |r| r.get::<_, i64>(0),
            )
            .expect("count")
            .to_string()
        }
    };
    assert_eq!(left.trim(), "0", "the ended session's checkpoint is purged");
}

/// What a robot says a session waits for must be a waiting step of its
/// workflow as written: a step that does not wait, another kind, another
/// event, another timeout or `on_timeout`, a signing key the step does not
/// give, a checkpoint that would resume from another wait, are each refused
/// at their field, and the session stays the robot's, running. The report
/// as written is then taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_unlike_the_workflows_waiting_step_is_refused() {
    let s = setup();
    s.register("pauser").await;
    let id = s.queued_of(PAUSING_YAML).await;
    let (_, lease) = only_lease(&s.poll("pauser", "p1", 1, &[]).await);
    let finish = format!("/v1/robot/sessions/{id}/finish");
    let good = suspend_report("k-good");
    let approval = good["suspend"]["wait"].clone();
    // The wait reported, and the same in the checkpoint a robot resumes
    // from.
    let forged = |key: &str, wait: Value| {
        let mut report = suspend_report(key);
        report["suspend"]["wait"] = wait.clone();
        report["suspend"]["checkpoint"]["wait"] = wait;
        report
    };
    let with = |changes: Value| {
        let mut wait = approval.clone();
        for (k, v) in changes.as_object().expect("changes") {
            wait[k] = v.clone();
        }
        wait
    };
    for (n, (wait, field)) in [
        (with(json!({"step_id": "after"})), "suspend.wait.step_id"),
        (with(json!({"step_id": "nowhere"})), "suspend.wait.step_id"),
        (
            with(json!({"kind": "event", "event": "paid", "message": null})),
            "suspend.wait.kind",
        ),
        (
            with(json!({"timeout_ms": 2_592_000_000u64})),
            "suspend.wait.timeout_ms",
        ),
        (
            with(json!({"on_timeout": "approve"})),
            "suspend.wait.on_timeout",
        ),
        // Approvers of the robot's choosing, for a step that lists none.
        (
            with(json!({"approvers": [s.key.id]})),
            "suspend.wait.approvers",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let r = s
            .with_lease(&finish, &lease, forged(&format!("k-bad-{n}"), wait.clone()))
            .await;
        assert_eq!(r.status.as_u16(), 422, "{wait}: {}", r.body);
        assert!(
            r.message().contains(field) || r.body.to_string().contains(field),
            "{wait}: expected {field}: {}",
            r.body
        );
        assert_eq!(s.session(id).await["status"], "running", "{wait}");
    }
    // The wait reported is the workflow's, but the checkpoint would resume
    // from another: refused, or approving the first would pass the second.
    let mut two_faced = suspend_report("k-two-faced");
    two_faced["suspend"]["checkpoint"]["wait"]["on_timeout"] = json!("approve");
    let r = s.with_lease(&finish, &lease, two_faced).await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert!(
        r.body.to_string().contains("suspend.checkpoint.wait"),
        "{}",
        r.body
    );
    let mut no_wait = suspend_report("k-no-wait");
    no_wait["suspend"]["checkpoint"]
        .as_object_mut()
        .expect("an object")
        .remove("wait");
    let r = s.with_lease(&finish, &lease, no_wait).await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert_eq!(s.session(id).await["status"], "running");

    let r = s.with_lease(&finish, &lease, good).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["status"], "waiting", "{}", r.body);

    // An event step without a signing key: a robot cannot add one (and
    // so open a callback signed with a key of its choosing).
    let id = s
        .queued_of(
            "version: 1\nname: evented\nsteps:\n  - id: paid\n    action: wait_event\n    with: {event: payment-done, timeout: 2h}\n",
        )
        .await;
    let (_, lease) = only_lease(&s.poll("pauser", "p2", 1, &[]).await);
    let finish = format!("/v1/robot/sessions/{id}/finish");
    let event = json!({"step_id": "paid", "kind": "event", "event": "payment-done",
                       "timeout_ms": 7_200_000, "on_timeout": "reject"});
    let mut keyed = event.clone();
    keyed["secret"] = json!("a-key-the-robot-chose-itself");
    let mut other_event = event.clone();
    other_event["event"] = json!("refund-done");
    for (n, (wait, field)) in [
        (keyed, "suspend.wait.secret"),
        (other_event, "suspend.wait.event"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = s
            .with_lease(&finish, &lease, forged(&format!("k-ev-{n}"), wait.clone()))
            .await;
        assert_eq!(r.status.as_u16(), 422, "{wait}: {}", r.body);
        assert!(r.body.to_string().contains(field), "{wait}: {}", r.body);
    }
    let r = s
        .with_lease(&finish, &lease, forged("k-ev-ok", event))
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["status"], "waiting", "{}", r.body);
    assert!(r.body["wait"]["callback"].is_null(), "{}", r.body);

    // An approval that lists its approvers: a robot that leaves them out
    // (so that any key could decide) is refused.
    let id = s
        .queued_of(&format!(
            "version: 1\nname: listed\nsteps:\n  - id: work\n    action: approval\n    \
             with: {{message: go?, timeout: 1h, approvers: [{}]}}\n",
            s.key.id
        ))
        .await;
    let (_, lease) = only_lease(&s.poll("pauser", "p3", 1, &[]).await);
    let finish = format!("/v1/robot/sessions/{id}/finish");
    let r = s
        .with_lease(&finish, &lease, forged("k-listed-none", approval.clone()))
        .await;
    assert_eq!(r.status.as_u16(), 422, "{}", r.body);
    assert!(
        r.body.to_string().contains("suspend.wait.approvers"),
        "{}",
        r.body
    );
    let r = s
        .with_lease(
            &finish,
            &lease,
            forged("k-listed", with(json!({"approvers": [s.key.id]}))),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["wait"]["approvers"], json!([s.key.id]), "{}", r.body);
}
