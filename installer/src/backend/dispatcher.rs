//! Running under the SCM: the service dispatcher, the control handler,
//! and the status reports that `lifecycle.rs` decides.

use std::ffi::OsString;
use std::sync::{Mutex, PoisonError, mpsc};
use std::time::Duration;

use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState as ScmState, ServiceStatus,
    ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::{define_windows_service, service_dispatcher};

use crate::InstallError;
use crate::StopRequest;
use crate::lifecycle::{self, Body, Event, Status};

/// The process was started from a console, not by the SCM.
const ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: i32 = 1063;

/// What `service_main`, which the SCM calls with no context of ours,
/// needs: handed over through a static.
struct Pending {
    name: String,
    stop_wait_hint: Duration,
    body: Body,
}

static PENDING: Mutex<Option<Pending>> = Mutex::new(None);
static OUTCOME: Mutex<Option<Result<(), InstallError>>> = Mutex::new(None);

define_windows_service!(ffi_service_main, service_main);

pub(crate) fn run_under_scm(
    name: &str,
    stop_wait_hint: Duration,
    body: Body,
) -> Result<(), InstallError> {
    *PENDING.lock().unwrap_or_else(PoisonError::into_inner) = Some(Pending {
        name: name.to_string(),
        stop_wait_hint,
        body,
    });
    // Blocks until the service has stopped.
    service_dispatcher::start(name, ffi_service_main).map_err(|e| match e {
        windows_service::Error::Winapi(e)
            if e.raw_os_error() == Some(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) =>
        {
            InstallError::NotUnderScm
        }
        other => InstallError::Io {
            action: "connect to the service control manager".into(),
            source: std::io::Error::other(other.to_string()),
        },
    })?;
    OUTCOME
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or(Ok(()))
}

/// Called by the SCM on a thread of its own.
fn service_main(_arguments: Vec<OsString>) {
    let pending = PENDING
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(pending) = pending {
        let outcome = serve(pending);
        *OUTCOME.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
    }
}

fn serve(pending: Pending) -> Result<(), InstallError> {
    let (events_tx, events) = mpsc::channel();
    let to_service = events_tx.clone();
    let handler = move |control| {
        let request = match control {
            ServiceControl::Stop => StopRequest::Stop,
            ServiceControl::Preshutdown | ServiceControl::Shutdown => StopRequest::Shutdown,
            ServiceControl::Interrogate => return ServiceControlHandlerResult::NoError,
            _ => return ServiceControlHandlerResult::NotImplemented,
        };
        // Answer at once; the drain happens on the body's thread.
        let _ = to_service.send(Event::Control(request));
        ServiceControlHandlerResult::NoError
    };
    let status_handle = service_control_handler::register(&pending.name, handler).map_err(|e| {
        InstallError::Io {
            action: "register with the service control manager".into(),
            source: std::io::Error::other(e.to_string()),
        }
    })?;

    let mut report_failure = None;
    lifecycle::run_service(
        pending.body,
        pending.stop_wait_hint,
        events_tx,
        events,
        |status| {
            if let Err(e) = status_handle.set_service_status(scm_status(status)) {
                report_failure.get_or_insert(e);
            }
        },
    )
    .map_err(|source| InstallError::Io {
        action: "start the service's thread".into(),
        source,
    })?;
    match report_failure {
        None => Ok(()),
        Some(e) => Err(InstallError::Io {
            action: "report the service's state to the service control manager".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

fn scm_status(status: Status) -> ServiceStatus {
    let none = ServiceControlAccept::empty();
    let (current_state, controls_accepted, checkpoint, wait_hint, exit_code) = match status {
        Status::StartPending { wait_hint } => (
            ScmState::StartPending,
            none,
            1,
            wait_hint,
            ServiceExitCode::NO_ERROR,
        ),
        // PRESHUTDOWN rather than SHUTDOWN: Windows then waits for the
        // drain up to the preshutdown timeout set at install.
        Status::Running => (
            ScmState::Running,
            ServiceControlAccept::STOP | ServiceControlAccept::PRESHUTDOWN,
            0,
            Duration::ZERO,
            ServiceExitCode::NO_ERROR,
        ),
        Status::StopPending {
            checkpoint,
            wait_hint,
        } => (
            ScmState::StopPending,
            none,
            checkpoint,
            wait_hint,
            ServiceExitCode::NO_ERROR,
        ),
        Status::Stopped { exit_code } => (
            ScmState::Stopped,
            none,
            0,
            Duration::ZERO,
            if exit_code == 0 {
                ServiceExitCode::NO_ERROR
            } else {
                ServiceExitCode::ServiceSpecific(exit_code.cast_unsigned())
            },
        ),
    };
    ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state,
        controls_accepted,
        exit_code,
        checkpoint,
        // windows-service panics past u32::MAX milliseconds.
        wait_hint: wait_hint.min(Duration::from_millis(u64::from(u32::MAX))),
        process_id: None,
    }
}
