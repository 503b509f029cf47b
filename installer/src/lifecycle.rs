//! A service's life under the Windows SCM, kept apart from the SCM so it
//! is tested on every platform: the body runs on its own thread, a stop
//! or shutdown request reaches it once through its [`DrainHandle`] while
//! the SCM is told the stop is pending, and the SCM hears "stopped", with
//! the body's exit code, only when the body returns.

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::Duration;

use crate::{DrainHandle, StopRequest};

/// The exit code reported when the body panics, as a Rust process would.
pub(crate) const EXIT_PANICKED: i32 = 101;
/// The exit code reported when the body could not even be started.
pub(crate) const EXIT_NOT_STARTED: i32 = 1;
/// How long the SCM should wait for the first "running".
const START_WAIT_HINT: Duration = Duration::from_secs(10);

/// The service's body: runs until it is asked to stop (or fails), and
/// returns its exit code.
pub(crate) type Body = Box<dyn FnOnce(DrainHandle) -> i32 + Send + 'static>;

/// What reaches the loop that reports to the SCM.
#[derive(Debug)]
pub(crate) enum Event {
    Control(StopRequest),
    BodyExited(i32),
}

/// What the SCM is told, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    StartPending {
        wait_hint: Duration,
    },
    /// Accepts stop and (pre)shutdown requests.
    Running,
    StopPending {
        checkpoint: u32,
        wait_hint: Duration,
    },
    Stopped {
        exit_code: i32,
    },
}

/// Runs `body` and reports every change of state through `report` until
/// it returns; returns its exit code. `events` carries the SCM's requests
/// (from the control handler, through senders cloned from `events_tx`).
pub(crate) fn run_service(
    body: Body,
    stop_wait_hint: Duration,
    events_tx: Sender<Event>,
    events: Receiver<Event>,
    mut report: impl FnMut(Status),
) -> io::Result<i32> {
    report(Status::StartPending {
        wait_hint: START_WAIT_HINT,
    });
    let (stop_tx, stop_rx) = mpsc::channel();
    let drain = DrainHandle::new(stop_rx);
    let started = thread::Builder::new()
        .name("service-body".into())
        .spawn(move || {
            // A panicking body still tells the SCM it stopped, with a
            // failure code, so the recovery actions restart it.
            let code =
                panic::catch_unwind(AssertUnwindSafe(|| body(drain))).unwrap_or(EXIT_PANICKED);
            let _ = events_tx.send(Event::BodyExited(code));
        });
    if let Err(e) = started {
        report(Status::Stopped {
            exit_code: EXIT_NOT_STARTED,
        });
        return Err(e);
    }
    report(Status::Running);

    let mut stopping = false;
    loop {
        match events.recv() {
            Ok(Event::Control(request)) if !stopping => {
                stopping = true;
                report(Status::StopPending {
                    checkpoint: 1,
                    wait_hint: stop_wait_hint,
                });
                // The body may have dropped its handle: it still stops
                // when it returns.
                let _ = stop_tx.send(request);
            }
            Ok(Event::Control(_)) => {}
            Ok(Event::BodyExited(exit_code)) => {
                report(Status::Stopped { exit_code });
                return Ok(exit_code);
            }
            // Every sender is gone: the body thread ended without a word,
            // which catch_unwind rules out short of an abort.
            Err(mpsc::RecvError) => {
                report(Status::Stopped {
                    exit_code: EXIT_PANICKED,
                });
                return Ok(EXIT_PANICKED);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    const HINT: Duration = Duration::from_secs(630);

    /// The exit code, and every status reported in order.
    type Outcome = (io::Result<i32>, Vec<Status>);

    /// Runs `body` as a service on a thread; returns the sender the SCM's
    /// control handler would use, and the thread.
    fn serve(
        body: impl FnOnce(DrainHandle) -> i32 + Send + 'static,
    ) -> (Sender<Event>, thread::JoinHandle<Outcome>) {
        let (tx, rx) = mpsc::channel();
        let handler = tx.clone();
        let service = thread::spawn(move || {
            let mut reports = Vec::new();
            let code = run_service(Box::new(body), HINT, tx, rx, |s| reports.push(s));
            (code, reports)
        });
        (handler, service)
    }

    #[test]
    fn a_stop_request_drains_and_the_scm_hears_the_exit_code_last() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen_by_body = Arc::clone(&seen);
        let (scm, service) = serve(move |drain| {
            let request = drain.wait();
            seen_by_body.lock().expect("lock").push(request);
            7
        });
        scm.send(Event::Control(StopRequest::Stop)).expect("send");
        // Later requests while the stop is pending change nothing.
        scm.send(Event::Control(StopRequest::Shutdown))
            .expect("send");
        let (code, reports) = service.join().expect("the service thread");
        assert_eq!(code.expect("ran"), 7);
        assert_eq!(
            reports,
            [
                Status::StartPending {
                    wait_hint: START_WAIT_HINT
                },
                Status::Running,
                Status::StopPending {
                    checkpoint: 1,
                    wait_hint: HINT
                },
                Status::Stopped { exit_code: 7 },
            ]
        );
        assert_eq!(*seen.lock().expect("lock"), [Some(StopRequest::Stop)]);
    }

    #[test]
    fn a_body_that_ends_on_its_own_stops_the_service_with_its_code() {
        let (_scm, service) = serve(|_drain| 3);
        let (code, reports) = service.join().expect("the service thread");
        assert_eq!(code.expect("ran"), 3);
        assert_eq!(reports.last(), Some(&Status::Stopped { exit_code: 3 }));
        assert!(
            !reports
                .iter()
                .any(|s| matches!(s, Status::StopPending { .. }))
        );
    }

    #[test]
    fn a_panicking_body_is_reported_as_a_failure() {
        let (_scm, service) = serve(|_drain| panic!("the body failed"));
        let (code, reports) = service.join().expect("the service thread");
        assert_eq!(code.expect("ran"), EXIT_PANICKED);
        assert_eq!(
            reports.last(),
            Some(&Status::Stopped {
                exit_code: EXIT_PANICKED
            })
        );
    }

    #[test]
    fn on_stop_calls_back_once_from_its_own_thread() {
        let (done_tx, done_rx) = mpsc::channel();
        let (scm, service) = serve(move |drain| {
            let (called_tx, called_rx) = mpsc::channel();
            drain
                .on_stop(move |request| {
                    let _ = called_tx.send((request, thread::current().name().map(String::from)));
                })
                .expect("start the waiting thread");
            // The body carries on until the callback has run.
            let called = called_rx.recv().expect("the callback ran");
            done_tx.send(called).expect("send");
            0
        });
        scm.send(Event::Control(StopRequest::Shutdown))
            .expect("send");
        let (code, _) = service.join().expect("the service thread");
        assert_eq!(code.expect("ran"), 0);
        assert_eq!(
            done_rx.recv().expect("reported"),
            (StopRequest::Shutdown, Some("service-stop".to_string()))
        );
    }

    #[test]
    fn a_handle_whose_service_is_gone_stops_waiting() {
        let (tx, rx) = mpsc::channel();
        drop(tx);
        assert_eq!(DrainHandle::new(rx).wait(), None);
    }
}
