//! install → start → status → stop → uninstall of a per-user systemd
//! service, through service-manager, against a stand-in `systemctl` that
//! records its calls and keeps the unit's state in a file.
//!
//! PATH, HOME and XDG_CONFIG_HOME are process-wide, so each scenario runs
//! in a child process (this test binary again, running the ignored
//! `lifecycle_in_child` alone) with its own; the test process's
//! environment is never changed.

#![cfg(target_os = "linux")]

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tasuki_installer::{
    InstallError, Level, ServiceSpec, ServiceState, install, plan_install, render_systemd_unit,
    start, status, stop, uninstall,
};

/// Set for the child: where the stand-in's log is and where the unit
/// should be written.
const LOG_VAR: &str = "STUB_SYSTEMCTL_LOG";
const UNIT_DIR_VAR: &str = "TASUKI_TEST_EXPECTED_UNIT_DIR";

/// Shared with the `tasuki service` test (tests/service.rs).
const STAND_IN_SYSTEMCTL: &str = include_str!("../../tests/fixtures/systemctl");

#[test]
fn user_service_lifecycle_under_xdg_config_home() {
    run_scenario(true);
}

#[test]
fn user_service_lifecycle_under_home_dot_config() {
    run_scenario(false);
}

/// Prepares a stand-in systemctl and a home in a temporary directory (with
/// a space in its path), and runs `lifecycle_in_child` with them.
fn run_scenario(with_xdg_config_home: bool) {
    let root = tempfile::Builder::new()
        .prefix("tasuki installer ")
        .tempdir()
        .expect("a temporary directory");
    let bin = root.path().join("bin");
    let state = root.path().join("state");
    let home = root.path().join("home");
    let config = root.path().join("config");
    for dir in [&bin, &state, &home, &config] {
        std::fs::create_dir_all(dir).expect("create a directory");
    }
    let systemctl = bin.join("systemctl");
    std::fs::write(&systemctl, STAND_IN_SYSTEMCTL).expect("write the stand-in systemctl");
    std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755))
        .expect("make the stand-in executable");

    let mut path = OsString::from(&bin);
    if let Some(inherited) = std::env::var_os("PATH") {
        path.push(":");
        path.push(inherited);
    }
    let unit_dir = if with_xdg_config_home {
        config.join("systemd/user")
    } else {
        home.join(".config/systemd/user")
    };

    let mut child = Command::new(std::env::current_exe().expect("this test binary"));
    child
        .args([
            "lifecycle_in_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PATH", path)
        .env("HOME", &home)
        .env(LOG_VAR, root.path().join("systemctl.log"))
        .env("STUB_SYSTEMCTL_STATE", &state)
        .env(UNIT_DIR_VAR, &unit_dir);
    if with_xdg_config_home {
        child.env("XDG_CONFIG_HOME", &config);
    } else {
        child.env_remove("XDG_CONFIG_HOME");
    }
    let output = child.output().expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child scenario failed:\n{stdout}\n{stderr}"
    );
}

#[test]
#[ignore = "run by the user_service_lifecycle_* tests in a child process with its own PATH and HOME"]
fn lifecycle_in_child() {
    let (Some(log), Some(unit_dir)) = (std::env::var_os(LOG_VAR), std::env::var_os(UNIT_DIR_VAR))
    else {
        println!("not started by run_scenario: nothing to do");
        return;
    };
    let mut calls = Calls {
        log: PathBuf::from(log),
        seen: 0,
    };
    let unit_path = PathBuf::from(unit_dir).join("tasuki.service");
    let spec = spec();

    // --print: the unit and where it goes; nothing written, nothing run.
    let plan = plan_install(&spec).expect("plan");
    assert_eq!(plan.path, unit_path);
    assert_eq!(plan.contents, render_systemd_unit(&spec));
    assert!(
        plan.contents
            .contains(r#"ExecStart="/opt/tasuki tools/100%% tasuki" agent"#)
    );
    assert!(!unit_path.exists());
    calls.expect(&[]);

    assert_eq!(install(&spec).expect("install"), plan);
    assert_eq!(
        std::fs::read_to_string(&unit_path).expect("the unit file"),
        plan.contents
    );
    let enable = format!("--user enable {}", unit_path.display());
    let disable = format!("--user disable {}", unit_path.display());
    calls.expect(&[&enable, "--user daemon-reload"]);

    start("tasuki", Level::User).expect("start");
    calls.expect(&["--user status tasuki", "--user start tasuki"]);

    assert_eq!(
        status("tasuki", Level::User).expect("status"),
        ServiceState::Running
    );
    calls.expect(&["--user status tasuki"]);

    stop("tasuki", Level::User).expect("stop");
    calls.expect(&["--user status tasuki", "--user stop tasuki"]);
    assert_eq!(
        status("tasuki", Level::User).expect("status"),
        ServiceState::Stopped
    );
    calls.expect(&["--user status tasuki"]);

    // A stopped unit is stopped again: one waiting to restart after a
    // crash also reads as stopped.
    uninstall("tasuki", Level::User).expect("uninstall");
    calls.expect(&[
        "--user status tasuki",
        "--user stop tasuki",
        &disable,
        "--user daemon-reload",
    ]);
    assert!(!unit_path.exists(), "the unit file is still there");
    assert_eq!(
        status("tasuki", Level::User).expect("status"),
        ServiceState::NotInstalled
    );
    calls.expect(&["--user status tasuki"]);

    // Once removed, starting or removing again says what to do.
    let e = start("tasuki", Level::User).expect_err("start a removed service");
    assert!(matches!(e, InstallError::NotInstalled { .. }), "{e}");
    assert!(
        e.to_string().contains("tasuki service install --user"),
        "{e}"
    );
    let e = uninstall("tasuki", Level::User).expect_err("remove twice");
    assert!(matches!(e, InstallError::NothingToRemove { .. }), "{e}");
    calls.expect(&["--user status tasuki"]);

    install(&spec).expect("install again");
    start("tasuki", Level::User).expect("start again");
    calls.expect(&[
        &enable,
        "--user daemon-reload",
        "--user status tasuki",
        "--user start tasuki",
    ]);
    // Stopping twice asks systemd twice, and is no error.
    stop("tasuki", Level::User).expect("stop");
    stop("tasuki", Level::User).expect("stop a stopped service");
    calls.expect(&[
        "--user status tasuki",
        "--user stop tasuki",
        "--user status tasuki",
        "--user stop tasuki",
    ]);
    start("tasuki", Level::User).expect("start once more");
    calls.expect(&["--user status tasuki", "--user start tasuki"]);
    // Removing a running service stops it first.
    uninstall("tasuki", Level::User).expect("uninstall a running service");
    calls.expect(&[
        "--user status tasuki",
        "--user stop tasuki",
        &disable,
        "--user daemon-reload",
    ]);
    assert!(!unit_path.exists());
}

fn spec() -> ServiceSpec {
    ServiceSpec {
        name: "tasuki".into(),
        display_name: "Tasuki robot agent".into(),
        description: "Tasuki robot agent (test)".into(),
        program: "/opt/tasuki tools/100% tasuki".into(),
        args: vec![
            "agent".into(),
            "--config".into(),
            "/srv/tasuki conf/agent $1.toml".into(),
        ],
        level: Level::User,
        service_user: None,
        read_write_paths: vec!["/srv/tasuki work".into()],
        stop_timeout: Duration::from_secs(630),
    }
}

/// The stand-in's log, read a step at a time.
struct Calls {
    log: PathBuf,
    seen: usize,
}

impl Calls {
    /// Asserts that exactly `expected` were run since the last call.
    #[track_caller]
    fn expect(&mut self, expected: &[&str]) {
        let all = read_lines(&self.log);
        assert_eq!(&all[self.seen..], expected, "systemctl calls");
        self.seen = all.len();
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.lines().map(String::from).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// The .deb ships a unit file; it must be what `tasuki service install`
/// renders for the packaged paths, so that the two ways to install give
/// the same service.
#[test]
fn the_packaged_unit_is_the_rendered_one() {
    let spec = ServiceSpec {
        name: "tasuki".into(),
        display_name: "Tasuki robot agent".into(),
        description: "Tasuki robot agent".into(),
        program: "/usr/bin/tasuki".into(),
        args: ["agent", "--config", "/etc/tasuki/agent.toml"]
            .iter()
            .map(OsString::from)
            .collect(),
        level: Level::System,
        service_user: Some("tasuki".into()),
        read_write_paths: vec!["/var/lib/tasuki".into(), "/var/log/tasuki".into()],
        stop_timeout: Duration::from_secs(630),
    };
    let packaged = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/debian/tasuki.service"),
    )
    .expect("the packaged unit");
    assert_eq!(packaged, render_systemd_unit(&spec));
}
