//! How the service's body hears that it should stop: the handle that
//! `run_under_scm` gives it (see `lifecycle.rs` for the other end).

use std::io;
use std::sync::mpsc::Receiver;
use std::thread;

/// Why the service is being asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// `tasuki service stop`, `sc stop`, the Services console.
    Stop,
    /// Windows is shutting down.
    Shutdown,
}

/// The body's end of a stop request: drain when it arrives, then return.
/// It arrives at most once: the SCM sends nothing more while the stop is
/// pending, so there is no second request to escalate with.
#[derive(Debug)]
pub struct DrainHandle {
    requests: Receiver<StopRequest>,
}

impl DrainHandle {
    #[cfg(any(windows, test))]
    pub(crate) fn new(requests: Receiver<StopRequest>) -> Self {
        Self { requests }
    }

    /// Blocks until a stop is requested. `None` means none ever will be.
    pub fn wait(&self) -> Option<StopRequest> {
        self.requests.recv().ok()
    }

    /// Calls `on_request` on a thread of its own when a stop is requested,
    /// for a body that cannot block (one that runs an async runtime, say).
    pub fn on_stop(self, on_request: impl FnOnce(StopRequest) + Send + 'static) -> io::Result<()> {
        thread::Builder::new()
            .name("service-stop".into())
            .spawn(move || {
                if let Ok(request) = self.requests.recv() {
                    on_request(request);
                }
            })
            .map(drop)
    }
}
