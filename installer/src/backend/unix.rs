//! systemd (Linux) and launchd (macOS) through service-manager, which is
//! handed the unit or plist rendered by this crate.
//!
//! What service-manager does, read from its source (0.11): it writes user
//! units to `$XDG_CONFIG_HOME/systemd/user` (else `$HOME/.config/...`) and
//! system units to `/etc/systemd/system`; it runs `systemctl [--user]
//! enable <unit path>` after writing, `disable <unit path>` before
//! removing, `start|stop|status <name>` otherwise, and reads `status` from
//! the exit code alone (0 running, 3 stopped, 4 unknown). It never runs
//! `daemon-reload`, so this module does after every change. Plists go to
//! `/Library/LaunchDaemons` or `$HOME/Library/LaunchAgents`, and are
//! loaded with `launchctl load` at install.

use std::io;

use service_manager::{
    RestartPolicy, ServiceInstallCtx, ServiceManager, ServiceStartCtx, ServiceStatus,
    ServiceStatusCtx, ServiceStopCtx, ServiceUninstallCtx,
};

use crate::{InstallError, Level, Plan, ServiceSpec, ServiceState};

#[cfg(target_os = "linux")]
use systemd as os;

#[cfg(target_os = "macos")]
use launchd as os;

pub(crate) fn plan(spec: &ServiceSpec) -> Result<Plan, InstallError> {
    Ok(Plan {
        path: os::definition_path(&spec.name, spec.level)?,
        contents: os::render(spec),
    })
}

pub(crate) fn install(spec: &ServiceSpec, plan: &Plan) -> Result<(), InstallError> {
    require_root(spec.level, "installing")?;
    if spec.level == Level::System {
        check_account(spec.unix_account())?;
        os::check_system_prerequisites(spec)?;
    }
    let manager = manager(spec.level)?;
    let context = ServiceInstallCtx {
        label: os::label(&spec.name),
        program: spec.program.clone(),
        args: spec.args.clone(),
        // The rendered definition; service-manager's own template would
        // leave arguments unquoted.
        contents: Some(plan.contents.clone()),
        username: (spec.level == Level::System).then(|| spec.unix_account().to_string()),
        working_directory: None,
        environment: None,
        autostart: true,
        restart_policy: RestartPolicy::OnFailure {
            delay_secs: Some(5),
            max_retries: None,
            reset_after_secs: None,
        },
    };
    manager
        .install(context)
        .map_err(|e| manager_error("install the service", e, spec.level))?;
    os::after_change(spec.level)
}

pub(crate) fn uninstall(name: &str, level: Level) -> Result<(), InstallError> {
    require_root(level, "removing")?;
    let manager = manager(level)?;
    let path = os::definition_path(name, level)?;
    if !path.exists() {
        return Err(InstallError::NothingToRemove {
            name: name.to_string(),
            level,
            path,
        });
    }
    if os::needs_stop(state(&*manager, name, level)?) {
        stop_with(&*manager, name, level)?;
    }
    manager
        .uninstall(ServiceUninstallCtx {
            label: os::label(name),
        })
        .map_err(|e| manager_error("remove the service", e, level))?;
    os::after_change(level)
}

pub(crate) fn start(name: &str, level: Level) -> Result<(), InstallError> {
    require_root(level, "starting")?;
    let manager = manager(level)?;
    match state(&*manager, name, level)? {
        ServiceState::NotInstalled => Err(not_installed(name, level)),
        ServiceState::Running => Ok(()),
        _ => manager
            .start(ServiceStartCtx {
                label: os::label(name),
            })
            .map_err(|e| manager_error("start the service", e, level)),
    }
}

pub(crate) fn stop(name: &str, level: Level) -> Result<(), InstallError> {
    require_root(level, "stopping")?;
    let manager = manager(level)?;
    match state(&*manager, name, level)? {
        ServiceState::NotInstalled => Err(not_installed(name, level)),
        state if os::needs_stop(state) => stop_with(&*manager, name, level),
        _ => Ok(()),
    }
}

pub(crate) fn status(name: &str, level: Level) -> Result<ServiceState, InstallError> {
    state(&*manager(level)?, name, level)
}

fn stop_with(manager: &dyn ServiceManager, name: &str, level: Level) -> Result<(), InstallError> {
    manager
        .stop(ServiceStopCtx {
            label: os::label(name),
        })
        .map_err(|e| manager_error("stop the service", e, level))
}

fn state(
    manager: &dyn ServiceManager,
    name: &str,
    level: Level,
) -> Result<ServiceState, InstallError> {
    let status = manager
        .status(ServiceStatusCtx {
            label: os::label(name),
        })
        .map_err(|e| manager_error("query the service", e, level))?;
    Ok(match status {
        ServiceStatus::NotInstalled => os::unloaded_state(name, level)?,
        ServiceStatus::Running => ServiceState::Running,
        ServiceStatus::Stopped(_) => ServiceState::Stopped,
    })
}

fn manager(level: Level) -> Result<Box<dyn ServiceManager>, InstallError> {
    let manager = os::manager(level);
    match manager.available() {
        Ok(true) => Ok(manager),
        Ok(false) => Err(InstallError::ServiceManagerMissing {
            tool: os::TOOL,
            hint: os::TOOL_MISSING_HINT,
        }),
        Err(source) => Err(InstallError::Io {
            action: format!("look for `{}` on PATH", os::TOOL),
            source,
        }),
    }
}

fn require_root(level: Level, action: &'static str) -> Result<(), InstallError> {
    if level == Level::System && !nix::unistd::geteuid().is_root() {
        return Err(InstallError::NeedsRoot { action });
    }
    Ok(())
}

/// The service manager would only fail at the first start, with a code.
fn check_account(account: &str) -> Result<(), InstallError> {
    match nix::unistd::User::from_name(account) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(InstallError::MissingAccount {
            account: account.to_string(),
        }),
        Err(errno) => Err(InstallError::Io {
            action: format!("look up the account {account:?}"),
            source: io::Error::from(errno),
        }),
    }
}

fn not_installed(name: &str, level: Level) -> InstallError {
    InstallError::NotInstalled {
        name: name.to_string(),
        level,
    }
}

fn manager_error(action: &str, error: io::Error, level: Level) -> InstallError {
    if error.kind() == io::ErrorKind::PermissionDenied && level == Level::System {
        return InstallError::NeedsRoot { action: "changing" };
    }
    InstallError::ServiceManager {
        action: action.to_string(),
        detail: error.to_string().trim_end().to_string(),
        hint: os::failure_hint(level),
    }
}

#[cfg(target_os = "linux")]
mod systemd {
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    use service_manager::{ServiceLabel, ServiceManager, SystemdServiceManager};

    use crate::{InstallError, Level, ServiceSpec, ServiceState};

    pub(super) const TOOL: &str = "systemctl";
    pub(super) const TOOL_MISSING_HINT: &str = "this system does not seem to run systemd; start \
        `tasuki agent` from its init system instead";

    pub(super) fn manager(level: Level) -> Box<dyn ServiceManager> {
        Box::new(match level {
            Level::System => SystemdServiceManager::system(),
            Level::User => SystemdServiceManager::user(),
        })
    }

    /// service-manager names the unit after the label's application alone.
    pub(super) fn label(name: &str) -> ServiceLabel {
        ServiceLabel {
            qualifier: None,
            organization: None,
            application: name.to_string(),
        }
    }

    /// Exactly where service-manager writes the unit.
    pub(super) fn definition_path(name: &str, level: Level) -> Result<PathBuf, InstallError> {
        let dir = match level {
            Level::System => service_manager::systemd_global_dir_path(),
            Level::User => service_manager::systemd_user_dir_path()
                .map_err(|_| InstallError::NoHomeDirectory)?,
        };
        Ok(dir.join(format!("{name}.service")))
    }

    pub(super) fn render(spec: &ServiceSpec) -> String {
        crate::render_systemd_unit(spec)
    }

    /// Under `ProtectSystem=strict` the service cannot create its own
    /// directories, and would fail at start without a useful message.
    pub(super) fn check_system_prerequisites(spec: &ServiceSpec) -> Result<(), InstallError> {
        match spec.read_write_paths.iter().find(|p| !p.is_dir()) {
            Some(missing) => Err(InstallError::MissingDirectory {
                path: missing.clone(),
                account: spec.unix_account().to_string(),
            }),
            None => Ok(()),
        }
    }

    /// systemd knows every unit it can load, wherever its file is.
    pub(super) fn unloaded_state(_name: &str, _level: Level) -> Result<ServiceState, InstallError> {
        Ok(ServiceState::NotInstalled)
    }

    /// A unit waiting out `RestartSec` after a crash reads as stopped, yet
    /// starts again unless it is stopped; stopping a stopped unit is
    /// harmless.
    pub(super) fn needs_stop(state: ServiceState) -> bool {
        state != ServiceState::NotInstalled
    }

    /// systemd reads unit files again only when told to.
    pub(super) fn after_change(level: Level) -> Result<(), InstallError> {
        let mut command = Command::new(TOOL);
        if level == Level::User {
            command.arg("--user");
        }
        let output = command
            .arg("daemon-reload")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| InstallError::Io {
                action: format!("run `{TOOL} daemon-reload`"),
                source,
            })?;
        if output.status.success() {
            return Ok(());
        }
        Err(InstallError::ServiceManager {
            action: "reload systemd's units".into(),
            detail: String::from_utf8_lossy(&output.stderr)
                .trim_end()
                .to_string(),
            hint: failure_hint(level),
        })
    }

    pub(super) fn failure_hint(level: Level) -> &'static str {
        match level {
            Level::System => "",
            Level::User => {
                "; a per-user service needs your systemd user instance: log in directly \
                 (not through su or sudo), and run `loginctl enable-linger` once so it \
                 also runs while you are logged out"
            }
        }
    }
}

#[cfg(target_os = "macos")]
mod launchd {
    use std::path::PathBuf;

    use service_manager::{LaunchdServiceManager, ServiceLabel, ServiceManager};

    use crate::launchd::launchd_label;
    use crate::{InstallError, Level, ServiceSpec, ServiceState};

    pub(super) const TOOL: &str = "launchctl";
    pub(super) const TOOL_MISSING_HINT: &str =
        "launchd's `launchctl` should be in /bin; check PATH";

    pub(super) fn manager(level: Level) -> Box<dyn ServiceManager> {
        Box::new(match level {
            Level::System => LaunchdServiceManager::system(),
            Level::User => LaunchdServiceManager::user(),
        })
    }

    /// `com.<name>.agent`, which service-manager uses whole.
    pub(super) fn label(name: &str) -> ServiceLabel {
        ServiceLabel {
            qualifier: Some("com".into()),
            organization: Some(name.to_string()),
            application: "agent".into(),
        }
    }

    /// Exactly where service-manager writes the plist.
    pub(super) fn definition_path(name: &str, level: Level) -> Result<PathBuf, InstallError> {
        let dir = match level {
            Level::System => PathBuf::from("/Library/LaunchDaemons"),
            Level::User => std::env::home_dir()
                .ok_or(InstallError::NoHomeDirectory)?
                .join("Library/LaunchAgents"),
        };
        Ok(dir.join(format!("{}.plist", launchd_label(name))))
    }

    pub(super) fn render(spec: &ServiceSpec) -> String {
        crate::render_launchd_plist(spec)
    }

    /// launchd has no filesystem sandbox to prepare.
    pub(super) fn check_system_prerequisites(_spec: &ServiceSpec) -> Result<(), InstallError> {
        Ok(())
    }

    /// An installed job stays unloaded (`Disabled`) until its first
    /// start, and launchd does not know it until then.
    pub(super) fn unloaded_state(name: &str, level: Level) -> Result<ServiceState, InstallError> {
        Ok(if definition_path(name, level)?.exists() {
            ServiceState::Stopped
        } else {
            ServiceState::NotInstalled
        })
    }

    /// `launchctl stop` fails on a job that is not loaded.
    pub(super) fn needs_stop(state: ServiceState) -> bool {
        state == ServiceState::Running
    }

    /// `launchctl load` already read the new plist.
    pub(super) fn after_change(_level: Level) -> Result<(), InstallError> {
        Ok(())
    }

    pub(super) fn failure_hint(_level: Level) -> &'static str {
        ""
    }
}

/// A system-level install is refused, before anything is written, when
/// the service could only fail at its first start. As root the checks run;
/// as anyone else root is asked for first. (A spec that would pass them is
/// never used here: it would install into /etc/systemd/system.)
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use crate::spec::example_spec;

    fn refusal(spec: &ServiceSpec) -> InstallError {
        let plan = plan(spec).expect("plan");
        match install(spec, &plan) {
            Ok(()) => panic!("installed a service that cannot start"),
            Err(e) => e,
        }
    }

    fn as_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn a_missing_service_account_is_refused() {
        let mut spec = example_spec(Level::System);
        spec.service_user = Some("tasuki-no-such-account".into());
        match refusal(&spec) {
            InstallError::MissingAccount { account } if as_root() => {
                assert_eq!(account, "tasuki-no-such-account");
            }
            InstallError::NeedsRoot { action } if !as_root() => {
                assert_eq!(action, "installing");
            }
            other => panic!("unexpected refusal: {other}"),
        }
    }

    #[test]
    fn a_missing_writable_directory_is_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("work dir");
        let mut spec = example_spec(Level::System);
        spec.service_user = Some("root".into());
        spec.read_write_paths = vec![dir.path().to_path_buf(), missing.clone()];
        match refusal(&spec) {
            InstallError::MissingDirectory { path, account } if as_root() => {
                assert_eq!((path, account.as_str()), (missing, "root"));
            }
            InstallError::NeedsRoot { .. } if !as_root() => {}
            other => panic!("unexpected refusal: {other}"),
        }
    }
}
