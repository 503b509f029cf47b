//! A displaced agent stops: when its robot's name is registered by another
//! machine (`tasuki register --replace`) or moved to another key by an
//! operator (`tasuki-hub robots transfer`), the old agent's polls are refused
//! for good, and it exits with its own code and says why, instead of
//! retrying for ever. So does an agent whose robot an operator deleted
//! (`tasuki-hub robots delete`), until the machine is registered again.
//! Real hub, real agents.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::time::Duration;

use fleet_support::*;
use hub_support::*;

/// `tasuki`'s exit code for a robot given to another key or machine
/// (agent/src/main.rs), which systemd does not restart.
const EXIT_DISPLACED: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_robot_is_registered_elsewhere_with_replace_exits_with_its_code() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    // Polls held 2 s: the one outstanding when the name moves ends soon.
    let hub = Hub::start_with(
        &scratch,
        &["--quota-per-robot", "1000000", "--hold-seconds", "2"],
    );
    let first = Robot::new(scratch.dir.path(), "moving");
    first.register_ok(&hub, &key, &[]);
    let mut agent = first.start(&[]);

    let other_machine = scratch.dir.path().join("other-machine");
    let second = Robot::new(&other_machine, "moving");
    second.register_ok(&hub, &key, &["--replace"]);

    let status = agent.wait(Duration::from_secs(15));
    let log = agent.log();
    let status = status.unwrap_or_else(|| panic!("the displaced agent kept running:\n{log}"));
    assert_eq!(status.code(), Some(EXIT_DISPLACED), "{log}");
    assert!(
        log.contains(
            "robot `moving` was registered from another machine with --replace; this agent stops"
        ),
        "{log}"
    );
    assert_eq!(
        log.matches("this agent stops").count(),
        1,
        "said once:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_robot_an_operator_moved_to_another_key_exits_with_its_code() {
    let scratch = Scratch::new();
    let old_key = create_key(&scratch, "robot");
    let new_key = create_key(&scratch, "robot");
    let hub = Hub::start_with(
        &scratch,
        &["--quota-per-robot", "1000000", "--hold-seconds", "2"],
    );
    let robot = Robot::new(scratch.dir.path(), "moved");
    robot.register_ok(&hub, &old_key, &[]);
    let mut agent = robot.start(&[]);

    let transfer = hub_command()
        .args(["robots", "transfer", "moved", "--to-key", &new_key.id])
        .args(scratch.db_args())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tasuki-hub robots transfer");
    assert!(transfer.status.success(), "{transfer:?}");

    let status = agent.wait(Duration::from_secs(15));
    let log = agent.log();
    let status = status.unwrap_or_else(|| panic!("the displaced agent kept running:\n{log}"));
    assert_eq!(status.code(), Some(EXIT_DISPLACED), "{log}");
    assert!(
        log.contains("was moved to another access key by a hub operator"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_robot_an_operator_deleted_exits_and_a_register_brings_it_back() {
    let scratch = Scratch::new();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(
        &scratch,
        &["--quota-per-robot", "1000000", "--hold-seconds", "2"],
    );
    let robot = Robot::new(scratch.dir.path(), "deleted");
    robot.register_ok(&hub, &key, &[]);
    let mut agent = robot.start(&[]);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let wf = workflow(
        &api,
        "version: 1\nname: back\nsteps:\n  - id: s\n    action: shell.run\n    with: {argv: [\"true\"]}\n",
        &["deleted"],
    )
    .await;
    let id = queue(&api, wf, serde_json::json!({})).await;
    assert_eq!(
        finished(&api, id, Duration::from_secs(30)).await["status"],
        "success"
    );

    let delete = hub_command()
        .args(["robots", "delete", "deleted"])
        .args(scratch.db_args())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tasuki-hub robots delete");
    assert!(delete.status.success(), "{delete:?}");

    // The agent does not register the robot again: it stops, and says why.
    let status = agent.wait(Duration::from_secs(15));
    let log = agent.log();
    let status =
        status.unwrap_or_else(|| panic!("the agent of a deleted robot kept running:\n{log}"));
    assert_eq!(status.code(), Some(EXIT_DISPLACED), "{log}");
    assert!(
        log.contains("a hub operator deleted robot `deleted`")
            && log.contains("tasuki register --replace"),
        "{log}"
    );
    let robots = api.get("/v1/robots").await;
    assert_eq!(robots.body["total_count"], 0, "{}", robots.body);
    // Its operator brings it back on purpose, and it runs work again.
    let out = robot.register(&hub, &key, &[]);
    assert!(!out.status.success(), "without --replace: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deleted robot `deleted`"),
        "{out:?}"
    );
    robot.register_ok(&hub, &key, &["--replace"]);
    let _agent = robot.start(&[]);
    let id = queue(&api, wf, serde_json::json!({})).await;
    assert_eq!(
        finished(&api, id, Duration::from_secs(30)).await["status"],
        "success"
    );
}

/// A key limited to some labels (`keys create --robot-labels`): `tasuki
/// register` with another label fails at once with the hub's reason, not
/// after retrying as if the key's secret were wrong, and with a label it
/// may give it registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_with_a_label_the_key_may_not_give_fails_at_once_naming_it() {
    let scratch = Scratch::new();
    let hub = Hub::start_with(&scratch, &["--quota-per-robot", "1000000"]);
    let out = hub_command()
        .args([
            "keys",
            "create",
            "--scopes",
            "robot",
            "--robot-labels",
            "eu",
        ])
        .args(scratch.db_args())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tasuki-hub keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let key = Key {
        id: made["access_key_id"].as_str().expect("id").into(),
        secret: made["secret_access_key"].as_str().expect("secret").into(),
    };
    let robot = Robot::new(scratch.dir.path(), "limited");
    let started = std::time::Instant::now();
    let out = robot.register(&hub, &key, &["--labels", "eu,vault"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("label_not_allowed") && text.contains("`vault`"),
        "{text}"
    );
    assert!(!text.contains("credentials"), "not an auth failure: {text}");
    // A generous bound: a retried auth failure takes 30 s.
    assert!(started.elapsed() < Duration::from_secs(20), "{text}");
    robot.register_ok(&hub, &key, &["--labels", "eu"]);
}
