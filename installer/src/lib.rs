//! Installs the Tasuki agent as a service, controls it, and runs it under
//! the Windows service control manager (SCM).
//!
//! Linux gets a systemd unit and macOS a launchd job, both rendered here
//! and installed through the `service-manager` crate; Windows gets an SCM
//! service through `windows-service`. What is rendered is pure and tested
//! on every platform; only `backend/` touches the system.
//!
//! - `spec.rs`: [`ServiceSpec`] and [`Level`], and the checks that keep a
//!   spec writable into every format without change.
//! - `systemd.rs`: [`render_systemd_unit`], with systemd's quoting.
//! - `launchd.rs`: [`render_launchd_plist`], with XML escaping.
//! - `windows_settings.rs`: [`windows_service_settings`], what the SCM is
//!   given: the quoted command line, the account, the recovery actions.
//! - `drain.rs`: [`DrainHandle`], how the service's body hears a stop.
//! - `lifecycle.rs`: the body's life under the SCM (start, drain, exit
//!   code), apart from the SCM so that it is tested everywhere.
//! - `backend/`: the system side. `unix.rs` drives systemctl and launchctl
//!   through service-manager; `scm.rs` installs and controls a Windows
//!   service; `dispatcher.rs` is `run_under_scm` (Windows only).
//! - `error.rs`: [`InstallError`]; every message says what to do.

mod backend;
mod drain;
mod error;
mod launchd;
#[cfg(any(windows, test))]
mod lifecycle;
mod spec;
mod systemd;
mod windows_settings;

use std::fmt;
use std::path::PathBuf;

pub use drain::{DrainHandle, StopRequest};
pub use error::InstallError;
pub use launchd::render_launchd_plist;
pub use spec::{DEFAULT_SERVICE_USER, Level, ServiceSpec};
pub use systemd::{EXIT_DO_NOT_RESTART, render_systemd_unit};
pub use windows_settings::{
    Recovery, WindowsServiceSettings, WindowsStartType, windows_service_settings,
};

/// What installing writes, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The unit or plist file; on Windows, the SCM's registry key.
    pub path: PathBuf,
    /// The file's contents; on Windows, a description of the settings.
    pub contents: String,
}

/// Whether the service is installed and running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    NotInstalled,
    Stopped,
    /// Windows only: start pending.
    Starting,
    Running,
    /// Windows only: stop pending, the agent draining.
    Stopping,
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceState::NotInstalled => "not installed",
            ServiceState::Stopped => "stopped",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::Stopping => "stopping",
        })
    }
}

/// What [`install`] would write and where, without writing anything or
/// needing privileges (`tasuki service install --print`).
pub fn plan_install(spec: &ServiceSpec) -> Result<Plan, InstallError> {
    spec.validate()?;
    backend::plan(spec)
}

/// Installs the service and enables it at boot (or at login, for
/// [`Level::User`]) without starting it. Installing again replaces the
/// definition; a running service keeps running the old one until it is
/// restarted.
pub fn install(spec: &ServiceSpec) -> Result<Plan, InstallError> {
    let plan = plan_install(spec)?;
    backend::install(spec, &plan)?;
    Ok(plan)
}

/// Stops the service if it runs, and removes what [`install`] wrote.
pub fn uninstall(name: &str, level: Level) -> Result<(), InstallError> {
    spec::validate_name(name)?;
    backend::uninstall(name, level)
}

/// Starts the installed service; nothing to do if it already runs.
pub fn start(name: &str, level: Level) -> Result<(), InstallError> {
    spec::validate_name(name)?;
    backend::start(name, level)
}

/// Stops the service and waits until it has (the agent drains first, up
/// to the stop timeout). Stopping a stopped service is no error; under
/// systemd it also cancels a restart that a crash scheduled.
pub fn stop(name: &str, level: Level) -> Result<(), InstallError> {
    spec::validate_name(name)?;
    backend::stop(name, level)
}

pub fn status(name: &str, level: Level) -> Result<ServiceState, InstallError> {
    spec::validate_name(name)?;
    backend::status(name, level)
}

/// Runs `body` as the Windows service `name`, for a process the SCM
/// started: blocks until the body returns. The SCM's stop or shutdown
/// request reaches the body through its [`DrainHandle`]; meanwhile the SCM
/// is told the stop is pending and may take `stop_wait_hint`. The body's
/// return value becomes the service's exit code; a non-zero one counts
/// as a failure, which the recovery actions restart.
///
/// Fails with [`InstallError::NotUnderScm`] when the process was started
/// from a console rather than by the SCM.
#[cfg(windows)]
pub fn run_under_scm(
    name: &str,
    stop_wait_hint: std::time::Duration,
    body: impl FnOnce(DrainHandle) -> i32 + Send + 'static,
) -> Result<(), InstallError> {
    spec::validate_name(name)?;
    backend::run_under_scm(name, stop_wait_hint, Box::new(body))
}
