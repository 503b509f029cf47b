//! A request body must arrive in time. The accept loop's header timeout
//! ends with the request head; without this, a client could send a head
//! and then a body byte a minute and hold its connection for ever, before
//! any credential is checked (`POST /v1/token` reads its body first).
//!
//! Every body gets the allowance (`--body-timeout-seconds`, 30 s) from the
//! moment its head arrived, plus one second for every 16 KiB received, so
//! a large upload at any reasonable speed (an artifact of 50 MiB at more
//! than 16 KiB/s) is never cut, while a trickle is cut after about the
//! allowance. Past the deadline, reading the body fails with
//! [`BodyTooSlow`], which the JSON extractor answers with 408.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Each this many bytes received add a second to the allowance.
pub const BYTES_PER_SECOND: u64 = 16 * 1024;

/// Reading a body took longer than its allowance.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body did not arrive in time: {received} bytes in {seconds} s (a body gets \
     {allowance} s, plus 1 s for each {BYTES_PER_SECOND} bytes; --body-timeout-seconds)"
)]
pub struct BodyTooSlow {
    received: u64,
    seconds: u64,
    allowance: u64,
}

/// The middleware: puts every request's body under its deadline.
pub async fn deadline(State(allowance): State<Duration>, req: Request, next: Next) -> Response {
    let req = if req.body().is_end_stream() {
        req
    } else {
        req.map(|body| Body::new(Deadlined::new(body, allowance)))
    };
    next.run(req).await
}

struct Deadlined {
    inner: Body,
    started: Instant,
    allowance: Duration,
    received: u64,
    timer: Pin<Box<Sleep>>,
}

impl Deadlined {
    fn new(inner: Body, allowance: Duration) -> Deadlined {
        let started = Instant::now();
        Deadlined {
            inner,
            started,
            allowance,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(started + allowance)),
        }
    }
}

impl HttpBody for Deadlined {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let earned =
                        Duration::from_secs_f64(this.received as f64 / BYTES_PER_SECOND as f64);
                    this.timer
                        .as_mut()
                        .reset(this.started + this.allowance + earned);
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Pending => {}
            done => return done,
        }
        match this.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTooSlow {
                received: this.received,
                seconds: this.started.elapsed().as_secs(),
                allowance: this.allowance.as_secs(),
            })))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The [`BodyTooSlow`] behind a body read's error, if that is what it was.
pub fn too_slow<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BodyTooSlow> {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(slow) = e.downcast_ref::<BodyTooSlow>() {
            return Some(slow);
        }
        next = e.source();
    }
    None
}
