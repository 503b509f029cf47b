//! The system side: one backend per kind of service manager, chosen at
//! compile time. Each offers `plan`, `install`, `uninstall`, `start`,
//! `stop` and `status`; Windows also `run_under_scm`.

#[cfg(any(target_os = "linux", target_os = "macos"))]
mod unix;
#[cfg(any(target_os = "linux", target_os = "macos"))]
pub(crate) use unix::{install, plan, start, status, stop, uninstall};

#[cfg(windows)]
mod dispatcher;
#[cfg(windows)]
mod scm;
#[cfg(windows)]
pub(crate) use dispatcher::run_under_scm;
#[cfg(windows)]
pub(crate) use scm::{install, plan, start, status, stop, uninstall};

#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
mod unsupported;
#[cfg(not(any(target_os = "linux", target_os = "macos", windows)))]
pub(crate) use unsupported::{install, plan, start, status, stop, uninstall};
