//! `tasuki service install|uninstall|start|stop|status`: the agent as a
//! systemd unit, a launchd job or a Windows service, through
//! `tasuki-installer`. This side turns the agent's settings into what the
//! installer needs; the installer renders and installs it.

use std::path::PathBuf;
use std::time::Duration;

use tasuki_installer::{Level, ServiceSpec};

use crate::settings::SettingsArgs;
use crate::{EXIT_FAILED, EXIT_INVALID, EXIT_OK};

/// The service's name: the unit `tasuki.service`, the Windows service
/// `tasuki`, the launchd job `com.tasuki.agent`.
pub const SERVICE_NAME: &str = "tasuki";
/// The account a system service runs as on Linux and macOS (the .deb
/// creates it).
const DEFAULT_SERVICE_USER: &str = "tasuki";
/// On top of the drain grace: the cancel grace and the final reports.
const STOP_MARGIN: Duration = Duration::from_secs(30);

#[derive(clap::Subcommand)]
pub enum ServiceCommand {
    /// Install the agent as a service that starts at boot and restarts
    /// after a crash. The config must exist and be valid.
    Install {
        #[command(flatten)]
        settings: SettingsArgs,
        /// A per-user service (systemd --user, a LaunchAgent) instead of a
        /// system one.
        #[arg(long)]
        user: bool,
        /// The account a system service runs as [default: `tasuki` on
        /// Linux and macOS, LocalSystem on Windows].
        #[arg(long, value_name = "NAME")]
        service_user: Option<String>,
        /// Show what would be written, and write nothing.
        #[arg(long)]
        print: bool,
    },
    /// Stop and remove the service.
    Uninstall {
        #[arg(long)]
        user: bool,
    },
    Start {
        #[arg(long)]
        user: bool,
    },
    Stop {
        #[arg(long)]
        user: bool,
    },
    /// Whether the service is installed and running.
    Status {
        #[arg(long)]
        user: bool,
    },
}

fn level(user: bool) -> Level {
    if user { Level::User } else { Level::System }
}

pub fn run(command: ServiceCommand) -> u8 {
    let result = match command {
        ServiceCommand::Install {
            settings,
            user,
            service_user,
            print,
        } => return install(&settings, user, service_user, print),
        ServiceCommand::Uninstall { user } => {
            tasuki_installer::uninstall(SERVICE_NAME, level(user)).map(|()| "uninstalled".into())
        }
        ServiceCommand::Start { user } => {
            tasuki_installer::start(SERVICE_NAME, level(user)).map(|()| "started".into())
        }
        ServiceCommand::Stop { user } => {
            tasuki_installer::stop(SERVICE_NAME, level(user)).map(|()| "stopped".into())
        }
        ServiceCommand::Status { user } => {
            tasuki_installer::status(SERVICE_NAME, level(user)).map(|s| s.to_string())
        }
    };
    match result {
        Ok(text) => {
            crate::print_stdout(&format!("{SERVICE_NAME}: {text}"));
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

fn install(args: &SettingsArgs, user: bool, service_user: Option<String>, print: bool) -> u8 {
    let service_user = match (user, service_user) {
        (true, Some(_)) => {
            eprintln!("error: --service-user is for a system service; a --user one runs as you");
            return EXIT_INVALID;
        }
        (true, None) => None,
        (false, Some(u)) => Some(u),
        (false, None) if cfg!(windows) => None,
        (false, None) => Some(DEFAULT_SERVICE_USER.to_string()),
    };
    let spec = match spec(args, user, service_user) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let result = if print {
        tasuki_installer::plan_install(&spec)
    } else {
        tasuki_installer::install(&spec)
    };
    match result {
        Ok(plan) if print => {
            crate::print_stdout(&format!("# {}\n{}", plan.path.display(), plan.contents));
            EXIT_OK
        }
        Ok(plan) => {
            crate::print_stdout(&format!(
                "installed {SERVICE_NAME} ({}); start it with `tasuki service start{}`",
                plan.path.display(),
                if user { " --user" } else { "" }
            ));
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

/// The service for this config. Refused when the config is missing or
/// invalid, or the robot is not registered yet (no credentials): such a
/// service would only restart in a loop.
fn spec(
    args: &SettingsArgs,
    user: bool,
    service_user: Option<String>,
) -> anyhow::Result<ServiceSpec> {
    let config_path = std::path::absolute(args.config_path())?;
    if !args.set.is_empty() {
        anyhow::bail!(
            "--set is not recorded in the service; put the settings in {} instead",
            config_path.display()
        );
    }
    // The service starts with its own environment, not this shell's: a
    // setting that only holds here would pass this check and fail there.
    // (Only the variables that are settings: others, a test harness's
    // TASUKI_TEST_* say, the agent never reads.)
    let settings_vars: std::collections::HashSet<String> = crate::settings::schema::KEYS
        .iter()
        .map(|key| crate::settings::schema::env_name(key.name))
        .collect();
    let mut from_env: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| settings_vars.contains(name))
        .collect();
    if !from_env.is_empty() {
        from_env.sort();
        anyhow::bail!(
            "{} set in this shell, and the service would not see it; put the settings in {} \
             and unset the variables",
            from_env.join(", "),
            config_path.display()
        );
    }
    let effective = args
        .load()
        .map_err(|e| anyhow::anyhow!("the config is not usable, so nothing was installed:\n{e}"))?;
    let settings = effective.settings();
    effective.allowed_actions(&tasuki_actions::Registry::builtin())?;
    if !settings.credentials_file.is_file() {
        anyhow::bail!(
            "there is no credentials file at {}: register the robot first (`tasuki register \
             --config {} ...`)",
            settings.credentials_file.display(),
            config_path.display()
        );
    }
    let program = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| anyhow::anyhow!("cannot find this program's path: {e}"))?;
    let mut writable: Vec<PathBuf> = vec![settings.work_dir.clone()];
    writable.push(settings.artifacts_dir.clone());
    if let Some(logs) = &settings.log_dir {
        writable.push(logs.clone());
    }
    let mut args: Vec<std::ffi::OsString> =
        vec!["agent".into(), "--config".into(), config_path.into()];
    if cfg!(windows) {
        args.push("--windows-service".into());
    }
    Ok(ServiceSpec {
        name: SERVICE_NAME.into(),
        display_name: "Tasuki robot agent".into(),
        description: description(&settings.control_plane.name, &settings.control_plane.url),
        program,
        args,
        level: level(user),
        service_user,
        read_write_paths: without_nested(writable),
        stop_timeout: settings.drain_grace + STOP_MARGIN,
    })
}

/// Drops paths inside another one of the list (and repeats): the unit
/// lists each writable tree once.
fn without_nested(mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    paths.sort();
    paths.dedup();
    let all = paths.clone();
    paths.retain(|p| !all.iter().any(|q| q != p && p.starts_with(q)));
    paths
}

/// The unit's description, which any local user can read: a password in
/// the hub's URL never shows.
fn description(robot: &str, hub_url: &str) -> String {
    format!(
        "Tasuki robot agent `{robot}` for {}",
        crate::settings::masked_url(hub_url)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_masks_a_password_in_the_hub_url() {
        let text = description("r1", "https://robot:s3cret@hub.example:8443/");
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("hub.example:8443"), "{text}");
    }

    #[test]
    fn nested_writable_paths_are_listed_once() {
        let paths = without_nested(vec![
            "/var/lib/tasuki".into(),
            "/var/lib/tasuki/artifacts".into(),
            "/var/log/tasuki".into(),
            "/var/lib/tasuki".into(),
            "/var/lib/tasuki-other".into(),
        ]);
        assert_eq!(
            paths,
            vec![
                PathBuf::from("/var/lib/tasuki"),
                PathBuf::from("/var/lib/tasuki-other"),
                PathBuf::from("/var/log/tasuki")
            ]
        );
    }
}
