//! Systems with neither systemd, launchd nor the Windows SCM.

use crate::{InstallError, Level, Plan, ServiceSpec, ServiceState};

pub(crate) fn plan(_spec: &ServiceSpec) -> Result<Plan, InstallError> {
    Err(InstallError::UnsupportedPlatform)
}

pub(crate) fn install(_spec: &ServiceSpec, _plan: &Plan) -> Result<(), InstallError> {
    Err(InstallError::UnsupportedPlatform)
}

pub(crate) fn uninstall(_name: &str, _level: Level) -> Result<(), InstallError> {
    Err(InstallError::UnsupportedPlatform)
}

pub(crate) fn start(_name: &str, _level: Level) -> Result<(), InstallError> {
    Err(InstallError::UnsupportedPlatform)
}

pub(crate) fn stop(_name: &str, _level: Level) -> Result<(), InstallError> {
    Err(InstallError::UnsupportedPlatform)
}

pub(crate) fn status(_name: &str, _level: Level) -> Result<ServiceState, InstallError> {
    Err(InstallError::UnsupportedPlatform)
}
