//! The hub's database at rest, read as a local user would read it: its
//! files are the owner's only, and secret params are never in it in clear
//! (sealed while the session may still run, gone once it ended), while the
//! robot still receives them and the API shows `***`.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::path::Path;

use fleet_support::{queue, workflow};
use hub_support::*;
use serde_json::{Value, json};

const HUB_ARGS: &[&str] = &["--hold-seconds", "1"];

const SECRET_YAML: &str = "version: 1
name: secretive
params:
  who: world
  token: {secret: true}
steps:
  - id: work
    action: shell.run
    with: {argv: [\"true\"]}
";

struct Setup {
    scratch: Scratch,
    hub: Hub,
    key: Key,
    api: Api,
    robot: Api,
}

fn setup() -> Setup {
    let scratch = Scratch::sqlite();
    let key = create_key(&scratch, ALL_SCOPES);
    let hub = Hub::start_with(&scratch, HUB_ARGS);
    let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
    let robot = Api::new(&hub, Some(token(&key, "robot")));
    Setup {
        scratch,
        hub,
        key,
        api,
        robot,
    }
}

impl Setup {
    fn restart(self) -> Setup {
        let Setup {
            scratch, hub, key, ..
        } = self;
        assert!(hub.stop().success());
        let hub = Hub::start_with(&scratch, HUB_ARGS);
        let api = Api::new(&hub, Some(token(&key, ALL_SCOPES)));
        let robot = Api::new(&hub, Some(token(&key, "robot")));
        Setup {
            scratch,
            hub,
            key,
            api,
            robot,
        }
    }

    /// `(params, secrets_sealed is set)` of a session, read from the file
    /// with SQLite, as anyone who can read the file could.
    fn stored(&self, session: i64) -> (Value, bool) {
        let conn = rusqlite::Connection::open_with_flags(
            self.scratch.db_file(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the database file");
        conn.query_row(
            "SELECT params, secrets_sealed IS NOT NULL FROM session_queues WHERE id = ?1",
            [session],
            |r| {
                let params: String = r.get(0)?;
                Ok((
                    serde_json::from_str(&params).expect("params are JSON"),
                    r.get(1)?,
                ))
            },
        )
        .expect("the session's row")
    }

    /// The sealed secret params of a session, as stored.
    fn sealed_blob(&self, session: i64) -> Vec<u8> {
        let conn = rusqlite::Connection::open_with_flags(
            self.scratch.db_file(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open the database file");
        conn.query_row(
            "SELECT secrets_sealed FROM session_queues WHERE id = ?1",
            [session],
            |r| r.get(0),
        )
        .expect("the session's sealed params")
    }

    /// Whether `needle` is anywhere in the database's files, byte for byte.
    fn on_disk(&self, needle: impl AsRef<[u8]>) -> bool {
        let needle = needle.as_ref();
        ["", "-wal", "-shm"].iter().any(|suffix| {
            let mut path = self.scratch.db_file().into_os_string();
            path.push(suffix);
            std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
    }

    /// Waits (up to the hub's checkpoint interval, and generously more)
    /// until none of `needles` is in the database's files; whether they
    /// went.
    async fn gone_from_disk(&self, needles: &[&[u8]]) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while needles.iter().any(|n| self.on_disk(n)) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        true
    }

    async fn register(&self, name: &str) {
        let r = self
            .robot
            .send(
                self.robot
                    .request(reqwest::Method::PUT, &format!("/v1/robot/robots/{name}"))
                    .json(&json!({"instance_id": name, "version": "t", "max_concurrency": 4})),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    }

    async fn poll(&self, name: &str, poll_id: &str) -> Value {
        let r = self
            .robot
            .post(
                &format!("/v1/robot/robots/{name}/poll"),
                &json!({"instance_id": name, "poll_id": poll_id, "free_slots": 4}),
            )
            .await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        r.body
    }

    async fn shown_params(&self, session: i64) -> Value {
        let r = self.api.get(&format!("/v1/session_queues/{session}")).await;
        assert_eq!(r.status.as_u16(), 200, "{}", r.body);
        r.body["params"].clone()
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup();
    // Writes, so that the write-ahead log and its index exist.
    let wf = workflow(&s.api, SECRET_YAML, &[]).await;
    queue(&s.api, wf, json!({"token": "t"})).await;
    let files = |s: &Setup| {
        let db = s.scratch.db_file();
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        let mut shm = db.clone().into_os_string();
        shm.push("-shm");
        [db, wal.into(), shm.into(), s.scratch.key_file()]
    };
    for file in files(&s) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }

    // A database an older hub left readable is tightened at start.
    let Setup {
        scratch, hub, key, ..
    } = s;
    assert!(hub.stop().success());
    std::fs::set_permissions(scratch.db_file(), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let hub = Hub::start_with(&scratch, HUB_ARGS);
    assert_eq!(mode(&scratch.db_file()), 0o600);
    assert!(
        hub.stderr().contains("it is now its owner's only"),
        "{}",
        hub.stderr()
    );
    let s = Setup {
        api: Api::new(&hub, Some(token(&key, ALL_SCOPES))),
        robot: Api::new(&hub, Some(token(&key, "robot"))),
        scratch,
        hub,
        key,
    };
    queue(&s.api, wf, json!({"token": "t"})).await;
    for file in files(&s) {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_params_are_sealed_while_queued_and_gone_once_the_session_ends() {
    let s = setup();
    let secret = "TOKEN-5f2a9c-never-in-clear";
    let wf = workflow(&s.api, SECRET_YAML, &[]).await;
    let id = queue(&s.api, wf, json!({"who": "ann", "token": secret})).await;

    // Queued: sealed in the file, masked in answers.
    let (params, sealed) = s.stored(id);
    assert_eq!(params, json!({"who": "ann", "token": "***"}));
    assert!(sealed);
    assert!(!s.on_disk(secret));
    let blob = s.sealed_blob(id);
    assert!(s.on_disk(&blob), "the search finds the sealed bytes");
    assert_eq!(s.shown_params(id).await["token"], "***");

    // The robot receives it in clear, in its lease.
    s.register("r").await;
    let answer = s.poll("r", "p1").await;
    let lease = &answer["leases"][0];
    assert_eq!(lease["session_id"], id, "{answer}");
    assert_eq!(lease["params"], json!({"who": "ann", "token": secret}));
    let (_, sealed) = s.stored(id);
    assert!(sealed, "a running session keeps its sealed params");

    // Once it ends, nothing of it is left.
    let r = s
        .robot
        .send(
            s.robot
                .request(
                    reqwest::Method::POST,
                    &format!("/v1/robot/sessions/{id}/finish"),
                )
                .header(
                    "tasuki-lease",
                    lease["lease_id"].as_str().expect("lease id"),
                )
                .json(&json!({"idempotency_key": "k1", "status": "success",
                              "ended_at": "2026-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    let (params, sealed) = s.stored(id);
    assert_eq!(params["token"], "***");
    assert!(
        !sealed,
        "the sealed params are purged when the session ends"
    );
    assert_eq!(s.shown_params(id).await["token"], "***");

    // A session cancelled while queued loses them too.
    let cancelled = queue(&s.api, wf, json!({"token": secret})).await;
    let cancelled_blob = s.sealed_blob(cancelled);
    let r = s
        .api
        .delete(&format!("/v1/session_queues/{cancelled}/cancel"))
        .await;
    assert_eq!(r.body["status"], "cancelled", "{}", r.body);
    assert!(!s.stored(cancelled).1);

    // And their bytes leave the files: the database (secure_delete) and
    // the write-ahead log's old frames (the hub's next checkpoint).
    assert!(
        s.gone_from_disk(&[&blob, &cancelled_blob]).await,
        "the sealed params of ended sessions are still in {}: db {}, wal {}",
        s.scratch.db_file().display(),
        std::fs::metadata(s.scratch.db_file()).map_or(0, |m| m.len()),
        std::fs::metadata(format!("{}-wal", s.scratch.db_file().display())).map_or(0, |m| m.len()),
    );
    assert!(!s.on_disk(secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_params_an_older_hub_stored_in_clear_are_sealed_at_start() {
    let s = setup();
    let wf = workflow(&s.api, SECRET_YAML, &[]).await;
    let live = queue(&s.api, wf, json!({"token": "x"})).await;
    let ended = queue(&s.api, wf, json!({"token": "x"})).await;
    s.api
        .delete(&format!("/v1/session_queues/{ended}/cancel"))
        .await;
    let Setup {
        scratch, hub, key, ..
    } = s;
    assert!(hub.stop().success());
    // What a hub before schema version 5 left: the values in clear, and
    // migration 5's flag on the rows that have secret params.
    {
        let conn = rusqlite::Connection::open(scratch.db_file()).expect("open");
        for (id, value) in [(live, "CLEAR-live-7e1d"), (ended, "CLEAR-ended-9b3c")] {
            conn.execute(
                "UPDATE session_queues
                 SET params = json_set(params, '$.token', ?2), secrets_sealed = NULL,
                     secrets_in_clear = 1
                 WHERE id = ?1",
                rusqlite::params![id, value],
            )
            .expect("write a clear row");
        }
    }
    let hub = Hub::start_with(&scratch, HUB_ARGS);
    let s = Setup {
        api: Api::new(&hub, Some(token(&key, ALL_SCOPES))),
        robot: Api::new(&hub, Some(token(&key, "robot"))),
        scratch,
        hub,
        key,
    };
    assert_eq!(s.stored(live), (json!({"token": "***"}), true));
    assert_eq!(s.stored(ended), (json!({"token": "***"}), false));
    assert!(!s.on_disk("CLEAR-live-7e1d"));
    assert!(!s.on_disk("CLEAR-ended-9b3c"));

    s.register("r").await;
    let answer = s.poll("r", "p1").await;
    assert_eq!(answer["leases"][0]["session_id"], live, "{answer}");
    assert_eq!(answer["leases"][0]["params"]["token"], "CLEAR-live-7e1d");

    // And a restart changes nothing more.
    let s = s.restart();
    assert_eq!(s.stored(live), (json!({"token": "***"}), true));
}
