//! What the processes that steps start can see on a robot: not the
//! robot's own credentials (Landlock, on Linux), and not the agent's
//! environment beyond PATH, HOME, LANG and the like and what the robot's
//! settings pass on. A real hub, real agents, real Chromium.

#[path = "fleet_support.rs"]
mod fleet_support;
#[path = "hub_support.rs"]
mod hub_support;

use std::time::Duration;

use fleet_support::*;
use hub_support::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

/// A session's record and its log lines joined, for looking for a leak.
async fn everything_shown(api: &Api, id: i64, session: &Value) -> (String, Vec<String>) {
    let logs: Vec<String> = all_logs(api, id)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap_or("").to_string())
        .collect();
    (session.to_string(), logs)
}

fn assert_no_secret(key: &Key, shown: &(String, Vec<String>)) {
    assert!(
        !shown.0.contains(&key.secret),
        "the secret is in the session: {}",
        shown.0
    );
    for line in &shown.1 {
        assert!(
            !line.contains(&key.secret),
            "the secret is in a log line: {line}"
        );
    }
}

fn step<'a>(session: &'a Value, id: &str) -> &'a Value {
    session["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["id"] == id))
        .unwrap_or_else(|| panic!("no step {id} in {session}"))
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_step_cannot_read_copy_link_or_move_the_robots_credentials() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "confined");
    robot.register_ok(&f.hub, &f.key, &[]);
    let agent = robot.start(&[]);
    assert!(
        agent
            .log()
            .contains("steps cannot read the credentials (Landlock)"),
        "{}",
        agent.log()
    );
    let creds = robot.credentials().display().to_string();
    // A hard link must be tried on the credentials' own filesystem, where
    // only Landlock can refuse it (it answers EXDEV, as another filesystem
    // would): a folder beside theirs, made before the step starts.
    let linkdir = tempfile::Builder::new()
        .prefix("link-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a folder for the link");
    {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &std::path::Path| std::fs::metadata(p).expect("stat").dev();
        assert_eq!(dev(linkdir.path()), dev(&robot.credentials()));
    }

    // The issue's reproduction: `cat` of the credentials file.
    let cat = "version: 1\nname: steal\nparams:\n  creds: \"\"\nsteps:\n  - id: cat\n    action: shell.run\n    with:\n      argv: [cat, \"${params.creds}\"]\n";
    let wf = workflow(&f.api, cat, &[]).await;
    let id = queue(&f.api, wf, json!({ "creds": creds })).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "error", "{s}");
    let shown = everything_shown(&f.api, id, &s).await;
    assert!(
        shown.1.iter().any(|l| l.contains("Permission denied")),
        "{:?}",
        shown.1
    );
    assert_no_secret(&f.key, &shown);

    // Nor by a way round: a copy, a hard or symbolic link, a move out of
    // its directory, or a script reading it; each refused for want of
    // permission (EACCES or EPERM), not for some other reason.
    let ops = "C=\"${params.creds}\"\nL=\"${params.linkdir}\"\nfor op in \"cp $C ./copy\" \"ln $C $L/link\" \"ln -s $C ./sym && cat ./sym\" \"mv $C ./moved\" \"dd if=$C\" \"python3 -c 'open(\\\"$C\\\").read()'\"; do\n  if err=$(sh -c \"$op\" 2>&1 >/dev/null); then echo \"ALLOWED: $op\"\n  else case \"$err\" in *ermission*|*\"not permitted\"*|*cross-device*) echo \"denied: $op\";; *) echo \"failed otherwise: $op: $err\";; esac; fi\ndone";
    let yaml = format!(
        "version: 1\nname: ways-round\nparams:\n  creds: \"\"\n  linkdir: \"\"\nsteps:\n  - id: ops\n    action: shell.run\n    with:\n      shell: sh\n      script: |\n{}\n",
        ops.lines()
            .map(|l| format!("        {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let wf = workflow(&f.api, &yaml, &[]).await;
    let linkdir = linkdir.path().display().to_string();
    let id = queue(&f.api, wf, json!({ "creds": creds, "linkdir": linkdir })).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    let shown = everything_shown(&f.api, id, &s).await;
    let denied = shown.1.iter().filter(|l| l.starts_with("denied: ")).count();
    assert_eq!(denied, 6, "{:?}", shown.1);
    assert_no_secret(&f.key, &shown);
    let kept =
        std::fs::read_to_string(robot.credentials()).expect("the credentials are still there");
    assert!(kept.contains(&f.key.secret));
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confined_step_still_works_in_its_work_dir_and_reads_the_system() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "worker");
    robot.register_ok(&f.hub, &f.key, &[]);
    let _agent = robot.start(&[]);
    let script = [
        "echo made > made.txt && cat made.txt",
        "mkdir -p sub/dir && echo deep > sub/dir/f && cat sub/dir/f",
        "test -s /etc/hostname && echo read-hostname",
        "sh -c 'echo from a subshell'",
        "t=$(mktemp) && echo in-tmp > \"$t\" && cat \"$t\"",
        "ls \"${params.secrets}\" > /dev/null && echo listed",
        "echo done > \"${params.dir}/confined-ran\"",
    ]
    .iter()
    .map(|l| format!("        {l}"))
    .collect::<Vec<_>>()
    .join("\n");
    let yaml = format!(
        "version: 1\nname: ordinary\nparams:\n  secrets: \"\"\n  dir: \"\"\nsteps:\n  - id: work\n    action: shell.run\n    with:\n      shell: sh\n      script: |\n{script}\n"
    );
    let wf = workflow(&f.api, &yaml, &[]).await;
    let secrets = robot
        .credentials()
        .parent()
        .expect("dir")
        .display()
        .to_string();
    let out = f.scratch.dir.path().join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    let id = queue(
        &f.api,
        wf,
        json!({ "secrets": secrets, "dir": out.display().to_string() }),
    )
    .await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    let logs: Vec<String> = all_logs(&f.api, id)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap_or("").to_string())
        .collect();
    for expected in [
        "made",
        "deep",
        "read-hostname",
        "from a subshell",
        "in-tmp",
        "listed",
    ] {
        assert!(logs.iter().any(|l| l == expected), "{expected}: {logs:?}");
    }
    assert!(out.join("confined-ran").is_file());
}

/// The browser is a step's process too: Chromium, started by chromedriver,
/// cannot read the credentials either, while ordinary pages work.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_cannot_read_the_robots_credentials() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "browsing");
    robot.register_ok(&f.hub, &f.key, &[]);
    // The operator allows file: URLs on this robot, so only Landlock stands
    // between Chromium and the credentials.
    let _agent = robot.start(&["--set", "browser.allow_file_urls=true"]);
    let page = page_server().await;
    // Two ways round a robot that refuses shell.run, from the issue: the
    // credentials put in a file input (refused: uploads come from the work
    // dir), and the credentials opened as a file: page. /etc/hostname, read
    // the same way, shows that Chromium reads other files.
    let yaml = r##"version: 1
name: browse
params:
  page: ""
  creds: ""
steps:
  - id: open
    action: browser.open
    with: {url: "${params.page}"}
  - id: title
    action: browser.get_text
    with: {selector: "#title"}
  - id: pick
    action: browser.upload
    continue_on_error: true
    with: {selector: "#f", file: "${params.creds}"}
  - id: hostname
    action: browser.goto
    with: {url: "file:///etc/hostname"}
  - id: hostname_text
    action: browser.execute_script
    with: {script: "return document.body.innerText"}
  - id: creds_page
    action: browser.goto
    continue_on_error: true
    with: {url: "file://${params.creds}"}
  - id: creds_text
    action: browser.execute_script
    with: {script: "return document.body.innerText"}
"##;
    let wf = workflow(&f.api, yaml, &[]).await;
    let creds = robot.credentials().display().to_string();
    let id = queue(&f.api, wf, json!({ "page": page, "creds": creds })).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(step(&s, "title")["status"], "success", "{s}");
    let shown = everything_shown(&f.api, id, &s).await;
    assert!(
        shown.1.iter().any(|l| l.contains("Fleet page")) || shown.0.contains("Fleet page"),
        "the loopback page was read: {s}"
    );
    assert_no_secret(&f.key, &shown);
    // Nor in an artifact (failure screenshots are images, but a page's
    // text could end up in one).
    let list = f
        .api
        .get(&format!("/v1/session_queues/{id}/artifacts"))
        .await;
    for artifact in list.body["artifacts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let name = artifact["name"].as_str().unwrap_or("");
        let bytes = f
            .api
            .request(
                reqwest::Method::GET,
                &format!("/v1/session_queues/{id}/artifacts/{name}"),
            )
            .send()
            .await
            .expect("artifact")
            .bytes()
            .await
            .expect("artifact bytes");
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&f.key.secret),
            "the secret is in artifact {name}"
        );
    }
    let pick = step(&s, "pick");
    assert_eq!(pick["status"], "error", "{s}");
    assert!(
        pick["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("is an absolute path")),
        "the upload is refused: {pick}"
    );
    let hostname = std::fs::read_to_string("/etc/hostname").expect("/etc/hostname");
    assert_eq!(
        step(&s, "hostname_text")["output"]["result"]
            .as_str()
            .map(str::trim),
        Some(hostname.trim()),
        "Chromium reads a file: page that is not protected: {s}"
    );
    // Chromium itself was refused the file: its page is an error page, not
    // the credentials.
    let text = step(&s, "creds_text");
    assert_eq!(text["status"], "success", "{s}");
    let text = text["output"]["result"].as_str().unwrap_or_default();
    assert!(
        text.contains("ERR_ACCESS_DENIED")
            && !text.contains("secret_access_key")
            && !text.contains(&f.key.secret),
        "Chromium could not read the credentials: {text}"
    );
}

/// The README's fleet example keeps a robot's credentials beside its config
/// under /tmp, so /tmp is one of the folders Landlock freezes for steps.
/// Chromium's temporary files go in its profile, made before the spawn, so
/// browser steps still run; shell steps write in their private TMPDIR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_with_its_credentials_under_tmp_still_runs_browser_and_shell_steps() {
    let f = Fleet::start();
    assert!(
        f.scratch.dir.path().starts_with(std::env::temp_dir()),
        "the scratch folder is under the system's temporary folder"
    );
    let robot = Robot::with_credentials_beside_config(f.scratch.dir.path(), "in-tmp");
    robot.register_ok(&f.hub, &f.key, &[]);
    let _agent = robot.start(&[]);
    let page = page_server().await;
    let yaml = r##"version: 1
name: tmp-robot
params:
  page: ""
steps:
  - id: open
    action: browser.open
    with: {url: "${params.page}"}
  - id: title
    action: browser.get_text
    with: {selector: "#title"}
  - id: temp
    action: shell.run
    with:
      shell: sh
      script: |
        f=$(mktemp)
        echo written > "$f"
        cat "$f"
"##;
    let wf = workflow(&f.api, yaml, &[]).await;
    let id = queue(&f.api, wf, json!({ "page": page })).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    assert_eq!(step(&s, "title")["output"]["text"], "Fleet page", "{s}");
    assert_eq!(step(&s, "temp")["output"]["stdout"], "written", "{s}");
}

/// A page for the browser step, on loopback.
async fn page_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async {
            axum::response::Html(
                "<html><body><h1 id=title>Fleet page</h1><input type=file id=f></body></html>",
            )
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/")
}

const ENV_YAML: &str = "version: 1\nname: environment\nsteps:\n  - id: env\n    action: shell.run\n    with:\n      argv: [env]\n      env:\n        FROM_THE_STEP: mine\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_sees_only_the_base_environment_and_what_the_robot_passes_on() {
    let f = Fleet::start();
    let robot = Robot::new(f.scratch.dir.path(), "env");
    robot.register_ok(&f.hub, &f.key, &[]);
    let _agent = robot.start_with_env(
        &["--set", "behaviour.env_pass=TASUKI_TEST_ALLOWED_*"],
        &[
            ("TASUKI_TEST_SECRET_ENV", "hidden-from-steps"),
            ("TASUKI_TEST_ALLOWED_ENV", "passed-on"),
        ],
    );
    let wf = workflow(&f.api, ENV_YAML, &[]).await;
    let id = queue(&f.api, wf, json!({})).await;
    let s = finished(&f.api, id, LIMIT).await;
    assert_eq!(s["status"], "success", "{s}");
    let logs: Vec<String> = all_logs(&f.api, id)
        .await
        .iter()
        .map(|l| l["message"].as_str().unwrap_or("").to_string())
        .collect();
    let has = |entry: &str| logs.iter().any(|l| l == entry);
    let has_name = |name: &str| logs.iter().any(|l| l.starts_with(&format!("{name}=")));
    assert!(!has_name("TASUKI_TEST_SECRET_ENV"), "{logs:?}");
    assert!(
        !has_name("RUST_LOG"),
        "the agent's own settings stay with it: {logs:?}"
    );
    assert!(has("TASUKI_TEST_ALLOWED_ENV=passed-on"), "{logs:?}");
    assert!(has("FROM_THE_STEP=mine"), "{logs:?}");
    assert!(has_name("PATH") && has_name("HOME"), "{logs:?}");

    // `config show` shows the setting, with where it came from.
    let shown = std::process::Command::new(tasuki_bin())
        .args(["config", "show", "--config"])
        .arg(robot.config())
        .args(["--set", "behaviour.env_pass=TASUKI_TEST_ALLOWED_*"])
        .output()
        .expect("config show");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.lines()
            .any(|l| l.contains("env_pass") && l.contains("TASUKI_TEST_ALLOWED_*")),
        "{text}"
    );
}

#[test]
fn tasuki_run_gives_steps_the_base_environment_and_what_pass_env_names() {
    let scratch = Scratch::new();
    let file = scratch.dir.path().join("env.yaml");
    std::fs::write(&file, ENV_YAML).expect("workflow");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(tasuki_bin())
            .arg("run")
            .arg(&file)
            .arg("--work-dir")
            .arg(scratch.dir.path())
            .args(extra)
            .env("TASUKI_TEST_SECRET_ENV", "hidden-from-steps")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("tasuki run");
        assert!(out.status.success(), "{out:?}");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let hidden = run(&[]);
    assert!(hidden.contains("FROM_THE_STEP=mine"), "{hidden}");
    assert!(!hidden.contains("TASUKI_TEST_SECRET_ENV"), "{hidden}");
    let passed = run(&["--pass-env", "TASUKI_TEST_SECRET_ENV"]);
    assert!(
        passed.contains("TASUKI_TEST_SECRET_ENV=hidden-from-steps"),
        "{passed}"
    );
}
