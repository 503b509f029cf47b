//! Several hubs on one PostgreSQL database, with real agents: work queued
//! through any hub runs exactly once on a robot polling any hub, every log
//! line arrives once and in order, and the fleet rides out PostgreSQL
//! restarting. (A hub killed mid-run is `fleet_hubs.rs`.)

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::collections::HashMap;
use std::time::Duration;

use fleet_support::*;
use hub_support::*;
use serde_json::{Value, json};

const HUB_ARGS: &[&str] = &["--quota-per-robot", "1000000"];

/// A session's three lines, from a step that also records that it ran.
const WORKFLOW: &str = r#"version: 1
name: counted
params:
  n: 0
  dir: ""
steps:
  - id: work
    action: shell.run
    with:
      shell: sh
      script: |
        echo "${params.n}" >> "${params.dir}/runs.txt"
        echo "n=${params.n} line 1"
        echo "n=${params.n} line 2"
        echo "n=${params.n} line 3"
"#;

/// Hubs sharing one database, a key, and a client for each hub.
struct Hubs {
    scratch: Scratch,
    hubs: Vec<Hub>,
    key: Key,
    apis: Vec<Api>,
}

impl Hubs {
    fn start(scratch: Scratch, count: usize) -> Hubs {
        let key = create_key(&scratch, ALL_SCOPES);
        let hubs: Vec<Hub> = (0..count)
            .map(|_| Hub::start_with(&scratch, HUB_ARGS))
            .collect();
        let apis = hubs
            .iter()
            .map(|hub| Api::new(hub, Some(token(&key, ALL_SCOPES))))
            .collect();
        Hubs {
            scratch,
            hubs,
            key,
            apis,
        }
    }

    /// A robot registered with hub `i`, whose agent polls that hub.
    fn agent(&self, i: usize, name: &str, register: &[&str]) -> (Robot, Agent) {
        let robot = Robot::new(self.scratch.dir.path(), name);
        robot.register_ok(&self.hubs[i], &self.key, register);
        let agent = robot.start(&[]);
        (robot, agent)
    }
}

/// Asserts that a session's log is whole: seq 1, 2, 3... with no gap and
/// no repeat, and the step's three lines once each, in order.
fn assert_whole_log(n: i64, logs: &[Value]) {
    let seqs: Vec<i64> = logs.iter().filter_map(|l| l["seq"].as_i64()).collect();
    assert_eq!(
        seqs,
        (1..=logs.len() as i64).collect::<Vec<_>>(),
        "session n={n}: seq numbers"
    );
    let ours: Vec<&str> = logs
        .iter()
        .filter_map(|l| l["message"].as_str())
        .filter(|m| m.starts_with(&format!("n={n} line")))
        .collect();
    assert_eq!(
        ours,
        [1, 2, 3].map(|k| format!("n={n} line {k}")),
        "session n={n}: its lines"
    );
}

/// The session numbers in runs.txt, sorted: each session appends its
/// number once per run.
fn runs(scratch: &Scratch) -> Vec<i64> {
    let text = std::fs::read_to_string(scratch.dir.path().join("runs.txt")).unwrap_or_default();
    let mut seen: Vec<i64> = text
        .lines()
        .map(|l| l.trim().parse().expect("a session number"))
        .collect();
    seen.sort();
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_queued_across_three_hubs_run_once_each_with_every_line() {
    const SESSIONS: i64 = 1000;
    let f = Hubs::start(Scratch::postgres(), 3);
    // Ten robots, each polling one of the three hubs.
    let agents: Vec<(Robot, Agent)> = (0..10)
        .map(|r| f.agent(r % 3, &format!("many-{r}"), &["--max-concurrency", "2"]))
        .collect();
    let workflow_id = workflow(&f.apis[0], WORKFLOW, &[]).await;
    let dir = f.scratch.dir.path().display().to_string();
    let mut ids = Vec::new();
    for n in 1..=SESSIONS {
        // Round the hubs: a session and the robot that runs it meet on
        // different hubs two times in three.
        let api = &f.apis[(n % 3) as usize];
        ids.push((
            n,
            queue(api, workflow_id, json!({"n": n, "dir": dir})).await,
        ));
    }
    let mut by_robot: HashMap<String, usize> = HashMap::new();
    for (i, &(n, id)) in ids.iter().enumerate() {
        // Read each through another hub than the one that queued it.
        let api = &f.apis[i % 3];
        let session = finished(api, id, Duration::from_secs(300)).await;
        assert_eq!(session["status"], "success", "n={n}: {session}");
        *by_robot
            .entry(session["robot"]["name"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
        assert_whole_log(n, &all_logs(api, id).await);
    }
    assert_eq!(
        runs(&f.scratch),
        (1..=SESSIONS).collect::<Vec<_>>(),
        "each session ran exactly once"
    );
    // Work went to robots of every hub, not only to those of the hub it
    // was queued through.
    assert_eq!(by_robot.values().sum::<usize>(), SESSIONS as usize);
    assert!(by_robot.len() >= 6, "{by_robot:?}");
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workflow_s_concurrency_limit_holds_across_hubs() {
    let f = Hubs::start(Scratch::postgres(), 3);
    // Room for twelve at once, on robots polling all three hubs.
    let agents: Vec<(Robot, Agent)> = (0..6)
        .map(|r| f.agent(r % 3, &format!("limited-{r}"), &["--max-concurrency", "2"]))
        .collect();
    let r = f.apis[0]
        .post(
            "/v1/workflows",
            &json!({
                "yaml": "version: 1\nname: two-at-once\nsteps:\n  - id: work\n    action: shell.run\n    with: {argv: [sleep, \"1\"]}\n",
                "concurrency": {"limit": 2},
            }),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let workflow_id = r.body["id"].as_i64().expect("workflow id");
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(queue(&f.apis[n % 3], workflow_id, json!({})).await);
    }
    let mut done = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        let session = finished(&f.apis[n % 3], *id, Duration::from_secs(120)).await;
        assert_eq!(session["status"], "success", "{session}");
        done.push(session);
    }
    assert_eq!(most_at_once(&done), 2, "{done:#?}");
    drop(agents);

    // Refused at the limit: creates sent at once through all three hubs
    // (no robot runs them now, so each stays queued and counts) store
    // exactly the limit.
    let r = f.apis[0]
        .post(
            "/v1/workflows",
            &json!({
                "yaml": "version: 1\nname: two-or-none\nsteps:\n  - id: work\n    action: log\n    with: {message: hi}\n",
                "concurrency": {"limit": 2, "on_limit": "refuse"},
            }),
        )
        .await;
    assert_eq!(r.status.as_u16(), 201, "{}", r.body);
    let refusing = r.body["id"].as_i64().expect("workflow id");
    let creates = (0..12).map(|n| {
        let api = f.apis[n % 3].clone();
        tokio::spawn(async move {
            api.post("/v1/session_queues", &json!({"workflow_id": refusing}))
                .await
        })
    });
    let mut stored = 0;
    for create in creates.collect::<Vec<_>>() {
        let r = create.await.expect("a create");
        match r.status.as_u16() {
            201 => stored += 1,
            409 => assert_eq!(r.code(), "concurrency_limit", "{}", r.body),
            other => panic!("{other}: {}", r.body),
        }
    }
    assert_eq!(stored, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_waiting_on_one_hub_shows_online_on_the_others() {
    let f = Hubs::start(Scratch::postgres(), 2);
    let (_robot, _agent) = f.agent(0, "seen-elsewhere", &[]);
    // Longer than the 5 s a robot counts as connected after its poll
    // began: only the waiting poll on hub 0 keeps it online on hub 1.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let list = f.apis[1].get("/v1/robots").await;
    let robot = &list.body["robots"][0];
    assert_eq!(robot["name"], "seen-elsewhere", "{}", list.body);
    assert_eq!(robot["state"], "idle", "{}", list.body);
}

/// A PostgreSQL server of this test's own, in a temporary folder on a free
/// loopback port, so that it can be restarted without touching the server
/// other tests share. Stopped and removed when dropped.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
    /// Serving TLS only, with this certificate and key (PEM).
    tls: bool,
}

impl PrivatePostgres {
    fn start() -> PrivatePostgres {
        PrivatePostgres::start_with(None)
    }

    /// A server that takes TLS connections only: plain ones are refused
    /// (pg_hba.conf), so a client that got in used TLS.
    fn start_tls_only(cert_pem: &[u8], key_pem: &[u8]) -> PrivatePostgres {
        PrivatePostgres::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&[u8], &[u8])>) -> PrivatePostgres {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().expect("a temp dir");
        #[cfg(unix)]
        if nix::unistd::Uid::effective().is_root() {
            // PostgreSQL refuses to run as root (scripts/throwaway-postgres.sh).
            let status = std::process::Command::new("chown")
                .args(["postgres:", &dir.path().display().to_string()])
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = PrivatePostgres {
            dir,
            bin,
            port,
            tls: tls.is_some(),
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data(),
                "-U",
                "tasuki",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        if let Some((cert, key)) = tls {
            let data = server.dir.path().join("data");
            std::fs::write(data.join("server.crt"), cert).expect("write the certificate");
            std::fs::write(data.join("server.key"), key).expect("write the key");
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 127.0.0.1/32 reject\n",
            )
            .expect("write pg_hba.conf");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let key = data.join("server.key");
                std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod the key");
                if is_root() {
                    let status = std::process::Command::new("chown")
                        .args(["-R", "postgres:", &data.display().to_string()])
                        .status()
                        .expect("chown");
                    assert!(status.success());
                }
            }
        }
        server.pg_ctl("start");
        server
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn admin_url(&self) -> String {
        format!("postgres://tasuki@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl(&self, action: &str) {
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        if self.tls {
            options.push_str(" -c ssl=on");
        }
        let log = self.dir.path().join("server.log").display().to_string();
        let data = self.data();
        let mut args = vec!["-D", &data, "-l", &log, "-w", "-t", "60"];
        if action == "restart" || action == "stop" {
            args.extend(["-m", "fast"]);
        }
        if action != "stop" {
            args.extend(["-o", &options]);
        }
        args.push(action);
        self.run("pg_ctl", &args);
    }

    /// Runs one of the server's programs, as `postgres` when root.
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = if cfg!(unix) && is_root() {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            std::process::Command::new(&path)
        };
        let out = command
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.pg_ctl("stop");
    }
}

fn is_root() -> bool {
    #[cfg(unix)]
    {
        nix::unistd::Uid::effective().is_root()
    }
    #[cfg(not(unix))]
    {
        false
    }
}

/// The folder of initdb and pg_ctl: $PG_BIN (scripts/need-postgres.sh
/// sets it), else Debian's newest /usr/lib/postgresql/*/bin.
fn postgres_bin() -> std::path::PathBuf {
    if let Some(bin) = std::env::var_os("PG_BIN") {
        return bin.into();
    }
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().expect(
        "PostgreSQL's server programs (initdb, pg_ctl) are missing: run ./test.sh, which \
         installs them (scripts/need-postgres.sh), or set PG_BIN to their folder",
    )
}

/// A session's lines come slowly, so that PostgreSQL restarts under it.
const SLOW_WORKFLOW: &str = r#"version: 1
name: slow
params:
  n: 0
  dir: ""
steps:
  - id: work
    action: shell.run
    with:
      shell: sh
      script: |
        echo "${params.n}" >> "${params.dir}/runs.txt"
        for k in 1 2 3; do
          echo "n=${params.n} line $k"
          sleep 0.4
        done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarting_mid_run_loses_nothing_and_work_goes_on_after() {
    let server = PrivatePostgres::start();
    let f = Hubs::start(Scratch::postgres_at(&server.admin_url()), 2);
    let _agents: Vec<(Robot, Agent)> = (0..2)
        .map(|r| f.agent(r, &format!("ride-{r}"), &["--max-concurrency", "2"]))
        .collect();
    let workflow_id = workflow(&f.apis[0], SLOW_WORKFLOW, &[]).await;
    let dir = f.scratch.dir.path().display().to_string();
    let mut ids = Vec::new();
    for n in 1..=4 {
        let api = &f.apis[(n % 2) as usize];
        ids.push((
            n,
            queue(api, workflow_id, json!({"n": n, "dir": dir})).await,
        ));
    }
    running(&f.apis[0], ids[0].1, Duration::from_secs(30)).await;
    server.pg_ctl("restart");
    // Queued after the restart, through both hubs: their pools and their
    // listeners have to come back for these to run.
    for n in 5..=8 {
        let api = &f.apis[(n % 2) as usize];
        let id = loop {
            let r = api
                .post(
                    "/v1/session_queues",
                    &json!({"workflow_id": workflow_id, "params": {"n": n, "dir": dir}}),
                )
                .await;
            if r.status.as_u16() == 201 {
                break r.body["id"].as_i64().expect("an id");
            }
            // The first call after the restart may meet a broken pooled
            // connection (500); the next one connects afresh.
            assert_eq!(r.status.as_u16(), 500, "{}", r.body);
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        ids.push((n, id));
    }
    for &(n, id) in &ids {
        let api = &f.apis[(n % 2) as usize];
        let session = finished(api, id, Duration::from_secs(120)).await;
        assert_eq!(session["status"], "success", "n={n}: {session}");
        assert_whole_log(n, &all_logs(api, id).await);
    }
    assert_eq!(
        runs(&f.scratch),
        (1..=8).collect::<Vec<_>>(),
        "each session ran exactly once"
    );
}

/// `tasuki-hub keys list` on the database at `url`: a one-shot command
/// that connects through the same pool as `serve`.
fn keys_list(scratch: &Scratch, url: &str, extra: &[&std::ffi::OsStr]) -> std::process::Output {
    hub_command()
        .args(["keys", "list", "--db", url, "--master-key"])
        .arg(scratch.key_file())
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run tasuki-hub keys list")
}

#[test]
fn the_database_servers_tls_certificate_is_verified_against_the_ca_given() {
    let certs = tempfile::tempdir().expect("a temp dir");
    let (ca, cert, key) = make_ca_and_cert(certs.path(), "db");
    let (other_ca, _, _) = make_ca_and_cert(certs.path(), "stranger");
    let server = PrivatePostgres::start_tls_only(&cert, &key);
    let scratch = Scratch::postgres_at(&server.admin_url());
    let url = scratch.db().into_string().expect("a URL");
    let ca_file = certs.path().join("db-ca.pem");
    let other_ca_file = certs.path().join("stranger-ca.pem");
    std::fs::write(&ca_file, &ca).expect("write");
    std::fs::write(&other_ca_file, &other_ca).expect("write");

    let required = format!("{url}?sslmode=require");
    let ok = keys_list(
        &scratch,
        &required,
        &["--db-ca-file".as_ref(), ca_file.as_os_str()],
    );
    assert!(
        ok.status.success(),
        "TLS with the server's CA: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // Another CA's word is not taken, nor the system's (which never signed it).
    for ca in [Some(other_ca_file.as_os_str()), None] {
        let mut extra: Vec<&std::ffi::OsStr> = Vec::new();
        if let Some(ca) = ca {
            extra.extend(["--db-ca-file".as_ref(), ca]);
        }
        let refused = keys_list(&scratch, &required, &extra);
        assert!(
            !refused.status.success(),
            "a certificate no trusted CA signed was accepted"
        );
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("certificate"), "{err}");
    }

    // The server takes TLS only: the connection that worked was TLS.
    let plain = keys_list(
        &scratch,
        &format!("{url}?sslmode=disable"),
        &["--db-ca-file".as_ref(), ca_file.as_os_str()],
    );
    assert!(
        !plain.status.success(),
        "the server took a plain connection"
    );
}
