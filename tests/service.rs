//! `tasuki service` at user level, end to end: the real `tasuki` binary
//! against a stand-in `systemctl` first on PATH that records its calls,
//! with HOME in a temporary directory whose path has a space in it.

#![cfg(target_os = "linux")]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const STAND_IN_SYSTEMCTL: &str = include_str!("fixtures/systemctl");

struct Machine {
    root: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        let root = tempfile::Builder::new()
            .prefix("tasuki service ")
            .tempdir()
            .expect("a temporary directory");
        for dir in ["bin", "state", "home", "robot"] {
            std::fs::create_dir_all(root.path().join(dir)).expect("a directory");
        }
        let systemctl = root.path().join("bin/systemctl");
        std::fs::write(&systemctl, STAND_IN_SYSTEMCTL).expect("the stand-in");
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        Machine { root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn tasuki(&self, args: &[&str]) -> Output {
        self.tasuki_with_env(args, &[])
    }

    fn tasuki_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new(env!("CARGO_BIN_EXE_tasuki"))
            .args(args)
            .envs(env.iter().copied())
            .env("PATH", path)
            .env("HOME", self.path("home"))
            .env_remove("XDG_CONFIG_HOME")
            .env("STUB_SYSTEMCTL_LOG", self.path("systemctl.log"))
            .env("STUB_SYSTEMCTL_STATE", self.path("state"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run tasuki")
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("systemctl.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    /// A registered robot's config and credentials, as `tasuki register`
    /// leaves them.
    fn robot(&self) -> PathBuf {
        let creds = self.path("robot/credentials.toml");
        std::fs::write(
            &creds,
            "access_key_id = \"k\"\nsecret_access_key = \"s\"\ninstance_id = \"i\"\n",
        )
        .expect("credentials");
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = self.path("robot/agent.toml");
        std::fs::write(
            &config,
            format!(
                "[control_plane]\nurl = \"http://127.0.0.1:9\"\nname = \"svc\"\n\n[credentials]\nfile = \"{}\"\n\n[paths]\nwork_dir = \"{}\"\nlog_dir = \"{}\"\n",
                creds.display(),
                self.path("robot/work").display(),
                self.path("robot/logs").display()
            ),
        )
        .expect("config");
        config
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn install_start_status_stop_uninstall_a_user_service() {
    let m = Machine::new();
    let config = m.robot();
    let config_arg = config.display().to_string();
    let unit: PathBuf = m.path("home/.config/systemd/user/tasuki.service");

    // --print: the unit and where it would go; nothing written or run.
    let out = m.tasuki(&[
        "service",
        "install",
        "--user",
        "--config",
        &config_arg,
        "--print",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        printed.starts_with(&format!("# {}\n", unit.display())),
        "{printed}"
    );
    // The config's path has a space in it: quoted as one argument.
    assert!(
        printed.contains(&format!(" agent --config \"{config_arg}\"")),
        "{printed}"
    );
    assert!(printed.contains("Restart=on-failure"), "{printed}");
    assert!(printed.contains("KillMode=mixed"), "{printed}");
    // The drain grace (10 min) plus the margin.
    assert!(printed.contains("TimeoutStopSec=630"), "{printed}");
    assert!(!unit.exists());
    assert!(m.calls().is_empty(), "{:?}", m.calls());

    let out = m.tasuki(&["service", "install", "--user", "--config", &config_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let written = std::fs::read_to_string(&unit).expect("the unit was written");
    assert_eq!(
        format!("# {}\n{written}", unit.display()).trim_end(),
        printed.trim_end()
    );
    assert_eq!(
        m.calls(),
        vec![
            format!("--user enable {}", unit.display()),
            "--user daemon-reload".to_string()
        ]
    );

    let status = |m: &Machine| {
        let out = m.tasuki(&["service", "status", "--user"]);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(status(&m), "tasuki: stopped");
    let out = m.tasuki(&["service", "start", "--user"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&m), "tasuki: running");
    let out = m.tasuki(&["service", "stop", "--user"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(status(&m), "tasuki: stopped");
    let out = m.tasuki(&["service", "uninstall", "--user"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!unit.exists(), "the unit is still there");
    assert_eq!(status(&m), "tasuki: not installed");
    let calls = m.calls();
    for want in [
        "--user start tasuki",
        "--user stop tasuki",
        &format!("--user disable {}", unit.display()),
    ] {
        assert!(calls.iter().any(|c| c == want), "no `{want}` in {calls:?}");
    }
}

/// The service starts with its own environment: a setting given only as
/// its `TASUKI_*` variable in the installing shell is refused, by name, not
/// checked and then missing when the service starts. Other `TASUKI_*`
/// variables (the test run's own among them) are no settings.
#[test]
fn install_refuses_settings_that_only_the_installing_shell_has() {
    let m = Machine::new();
    let config = m.robot().display().to_string();
    let out = m.tasuki_with_env(
        &[
            "service", "install", "--user", "--print", "--config", &config,
        ],
        &[
            ("TASUKI_PATHS_WORK_DIR", "/tmp/elsewhere"),
            ("TASUKI_CONTROL_PLANE_NAME", "someone"),
            // Not a setting: the agent never reads it, so it is no matter.
            ("TASUKI_NOT_A_SETTING", "x"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("TASUKI_CONTROL_PLANE_NAME, TASUKI_PATHS_WORK_DIR set in this shell"),
        "{}",
        text(&out)
    );
    // TASUKI_CONFIG only says where the file is, which the unit records.
    let out = m.tasuki_with_env(
        &["service", "install", "--user", "--print"],
        &[("TASUKI_CONFIG", &config)],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(m.calls().is_empty(), "{:?}", m.calls());
}

#[test]
fn install_refuses_a_missing_or_invalid_config_and_an_unregistered_robot() {
    let m = Machine::new();
    let refused = |args: &[&str], want: &str| {
        let out = m.tasuki(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains(want),
            "{args:?}: missing {want:?} in {}",
            text(&out)
        );
    };
    let missing = m.path("robot/none.toml").display().to_string();
    refused(
        &["service", "install", "--user", "--config", &missing],
        "cannot read the config file",
    );
    let config = m.robot();
    let bad = m.path("robot/bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&config).unwrap() + "\n[behaviour]\ndrain_grace = \"forever\"\n",
    )
    .unwrap();
    refused(
        &[
            "service",
            "install",
            "--user",
            "--config",
            &bad.display().to_string(),
        ],
        "bad.toml:13: `behaviour.drain_grace`",
    );
    std::fs::remove_file(m.path("robot/credentials.toml")).unwrap();
    refused(
        &[
            "service",
            "install",
            "--user",
            "--config",
            &config.display().to_string(),
        ],
        "register the robot first",
    );
    refused(
        &[
            "service",
            "install",
            "--user",
            "--service-user",
            "x",
            "--config",
            &config.display().to_string(),
        ],
        "--service-user is for a system service",
    );
    assert!(m.calls().is_empty(), "{:?}", m.calls());
    assert!(!Path::new(&m.path("home/.config/systemd/user/tasuki.service")).exists());
}
