//! Installing and controlling a Windows service through the SCM's API
//! (windows-service). service-manager's sc.exe backend is not used here:
//! it can set neither the account, the description nor the recovery
//! actions, and its status knows only "running" or not.

use std::ffi::{OsStr, OsString};
use std::io;
use std::thread;
use std::time::{Duration, Instant};

use windows_service::Error as ScmError;
use windows_service::service::{
    Service, ServiceAccess, ServiceAction, ServiceActionType, ServiceErrorControl,
    ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo, ServiceStartType,
    ServiceState as ScmState, ServiceType,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use crate::WindowsStartType;
use crate::{InstallError, Level, Plan, ServiceSpec, ServiceState, windows_service_settings};

const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_SERVICE_ALREADY_RUNNING: i32 = 1056;
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;
const ERROR_SERVICE_EXISTS: i32 = 1073;

/// How often a waiting start or stop asks the SCM again.
const POLL: Duration = Duration::from_millis(500);
/// The least patience with a pending state whose checkpoint does not move,
/// whatever wait hint the service gave.
const MIN_PATIENCE: Duration = Duration::from_secs(30);

pub(crate) fn plan(spec: &ServiceSpec) -> Result<Plan, InstallError> {
    reject_user_level(spec.level)?;
    let settings = windows_service_settings(spec);
    Ok(Plan {
        path: settings.registry_key(),
        contents: settings.describe(),
    })
}

pub(crate) fn install(spec: &ServiceSpec, _plan: &Plan) -> Result<(), InstallError> {
    const ACTION: &str = "installing";
    reject_user_level(spec.level)?;
    let settings = windows_service_settings(spec);
    let manager = connect(
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        ACTION,
    )?;
    let info = ServiceInfo {
        name: OsString::from(&settings.name),
        display_name: OsString::from(&settings.display_name),
        service_type: ServiceType::OWN_PROCESS,
        start_type: match settings.start_type {
            WindowsStartType::Automatic => ServiceStartType::AutoStart,
        },
        error_control: ServiceErrorControl::Normal,
        // windows-service quotes these exactly as `settings.command_line`.
        executable_path: settings.executable.clone(),
        launch_arguments: settings.launch_arguments.clone(),
        dependencies: Vec::new(),
        account_name: settings.account.as_ref().map(OsString::from),
        account_password: None,
    };
    let access = ServiceAccess::QUERY_STATUS | ServiceAccess::CHANGE_CONFIG;
    let service = match manager.create_service(&info, access) {
        Ok(service) => service,
        Err(e) if os_code(&e) == Some(ERROR_SERVICE_EXISTS) => {
            let service = manager
                .open_service(&settings.name, access)
                .map_err(|e| scm_error("open the existing service", e, ACTION))?;
            service
                .change_config(&info)
                .map_err(|e| scm_error("update the existing service", e, ACTION))?;
            service
        }
        Err(e) => return Err(scm_error("create the service", e, ACTION)),
    };

    service
        .set_description(&settings.description)
        .map_err(|e| scm_error("set the service's description", e, ACTION))?;
    let actions = settings
        .recovery
        .restart_delays
        .iter()
        .map(|delay| ServiceAction {
            action_type: ServiceActionType::Restart,
            delay: capped_millis(*delay),
        })
        .collect();
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(capped_secs(
                settings.recovery.reset_period,
            )),
            reboot_msg: None,
            command: None,
            actions: Some(actions),
        })
        .map_err(|e| scm_error("set the recovery actions", e, ACTION))?;
    service
        .set_failure_actions_on_non_crash_failures(settings.recovery.on_error_exit)
        .map_err(|e| scm_error("set the recovery actions", e, ACTION))?;
    service
        .set_preshutdown_timeout(capped_millis(settings.preshutdown_timeout))
        .map_err(|e| scm_error("set the shutdown timeout", e, ACTION))
}

pub(crate) fn uninstall(name: &str, level: Level) -> Result<(), InstallError> {
    const ACTION: &str = "removing";
    reject_user_level(level)?;
    let manager = connect(ServiceManagerAccess::CONNECT, ACTION)?;
    let service = open(
        &manager,
        name,
        ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        ACTION,
    )?;
    stop_and_wait(&service)?;
    service
        .delete()
        .map_err(|e| scm_error("delete the service", e, ACTION))
}

pub(crate) fn start(name: &str, level: Level) -> Result<(), InstallError> {
    const ACTION: &str = "starting";
    reject_user_level(level)?;
    let manager = connect(ServiceManagerAccess::CONNECT, ACTION)?;
    let service = open(
        &manager,
        name,
        ServiceAccess::QUERY_STATUS | ServiceAccess::START,
        ACTION,
    )?;
    match service.start::<&OsStr>(&[]) {
        Ok(()) => {}
        Err(e) if os_code(&e) == Some(ERROR_SERVICE_ALREADY_RUNNING) => return Ok(()),
        Err(e) => return Err(scm_error("start the service", e, ACTION)),
    }
    match wait_while(&service, ScmState::StartPending)? {
        ScmState::Running => Ok(()),
        other => Err(InstallError::ServiceManager {
            action: "start the service".into(),
            detail: format!("it is {} right after starting", describe_state(other)),
            hint: "; its log files (paths.log_dir in the config) say why",
        }),
    }
}

pub(crate) fn stop(name: &str, level: Level) -> Result<(), InstallError> {
    const ACTION: &str = "stopping";
    reject_user_level(level)?;
    let manager = connect(ServiceManagerAccess::CONNECT, ACTION)?;
    let service = open(
        &manager,
        name,
        ServiceAccess::QUERY_STATUS | ServiceAccess::STOP,
        ACTION,
    )?;
    stop_and_wait(&service)
}

pub(crate) fn status(name: &str, level: Level) -> Result<ServiceState, InstallError> {
    const ACTION: &str = "querying";
    reject_user_level(level)?;
    let manager = connect(ServiceManagerAccess::CONNECT, ACTION)?;
    let service = match manager.open_service(name, ServiceAccess::QUERY_STATUS) {
        Ok(service) => service,
        Err(e) if os_code(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
            return Ok(ServiceState::NotInstalled);
        }
        Err(e) => return Err(scm_error("open the service", e, ACTION)),
    };
    let status = service
        .query_status()
        .map_err(|e| scm_error("query the service", e, ACTION))?;
    Ok(match status.current_state {
        ScmState::Stopped => ServiceState::Stopped,
        ScmState::StartPending | ScmState::ContinuePending => ServiceState::Starting,
        ScmState::Running | ScmState::PausePending | ScmState::Paused => ServiceState::Running,
        ScmState::StopPending => ServiceState::Stopping,
    })
}

/// Asks a running service to stop (it drains) and waits for it, as
/// `systemctl stop` does.
fn stop_and_wait(service: &Service) -> Result<(), InstallError> {
    match service.stop() {
        Ok(_) => {}
        Err(e) if os_code(&e) == Some(ERROR_SERVICE_NOT_ACTIVE) => return Ok(()),
        Err(e) => return Err(scm_error("stop the service", e, "stopping")),
    }
    wait_while(service, ScmState::StopPending).map(drop)
}

/// Waits for the service to leave `pending`, for as long as it keeps
/// within the wait hint it reported or keeps moving its checkpoint.
fn wait_while(service: &Service, pending: ScmState) -> Result<ScmState, InstallError> {
    let mut checkpoint = None;
    let mut progress_at = Instant::now();
    loop {
        let status = service
            .query_status()
            .map_err(|e| scm_error("query the service", e, "waiting for"))?;
        if status.current_state != pending {
            return Ok(status.current_state);
        }
        if checkpoint != Some(status.checkpoint) {
            checkpoint = Some(status.checkpoint);
            progress_at = Instant::now();
        }
        let patience = status.wait_hint.max(MIN_PATIENCE);
        if progress_at.elapsed() > patience {
            return Err(InstallError::ServiceManager {
                action: "wait for the service".into(),
                detail: format!(
                    "it is still {} after {} s",
                    describe_state(pending),
                    patience.as_secs()
                ),
                hint: "; it may still finish: check with `tasuki service status`",
            });
        }
        thread::sleep(POLL);
    }
}

fn connect(
    access: ServiceManagerAccess,
    action: &'static str,
) -> Result<ServiceManager, InstallError> {
    ServiceManager::local_computer(None::<&str>, access)
        .map_err(|e| scm_error("connect to the service control manager", e, action))
}

fn open(
    manager: &ServiceManager,
    name: &str,
    access: ServiceAccess,
    action: &'static str,
) -> Result<Service, InstallError> {
    manager.open_service(name, access).map_err(|e| {
        if os_code(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST) {
            InstallError::NotInstalled {
                name: name.to_string(),
                level: Level::System,
            }
        } else {
            scm_error("open the service", e, action)
        }
    })
}

fn reject_user_level(level: Level) -> Result<(), InstallError> {
    match level {
        Level::System => Ok(()),
        Level::User => Err(InstallError::UserLevelUnsupported),
    }
}

fn os_code(error: &ScmError) -> Option<i32> {
    match error {
        ScmError::Winapi(e) => e.raw_os_error(),
        _ => None,
    }
}

fn scm_error(what: &str, error: ScmError, action: &'static str) -> InstallError {
    if os_code(&error) == Some(ERROR_ACCESS_DENIED) {
        return InstallError::NeedsAdministrator { action };
    }
    match error {
        ScmError::Winapi(source) => InstallError::Io {
            action: what.to_string(),
            source,
        },
        other => InstallError::Io {
            action: what.to_string(),
            source: io::Error::other(other.to_string()),
        },
    }
}

fn describe_state(state: ScmState) -> &'static str {
    match state {
        ScmState::Stopped => "stopped",
        ScmState::StartPending => "starting",
        ScmState::StopPending => "stopping",
        ScmState::Running => "running",
        ScmState::ContinuePending => "resuming",
        ScmState::PausePending => "pausing",
        ScmState::Paused => "paused",
    }
}

/// The SCM counts delays in milliseconds in a u32 (windows-service panics
/// past that).
fn capped_millis(d: Duration) -> Duration {
    d.min(Duration::from_millis(u64::from(u32::MAX)))
}

fn capped_secs(d: Duration) -> Duration {
    d.min(Duration::from_secs(u64::from(u32::MAX)))
}
