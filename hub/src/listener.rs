//! The accept loop: what a client without credentials can make the hub
//! hold. Each connection gets a permit from a fixed pool (at the cap, the
//! loop stops accepting and new connections wait in the kernel's
//! backlog), must send a complete request head within the header timeout
//! (this also ends idle keep-alive connections: hyper starts the same
//! clock whenever it waits for a head), and a TLS handshake must finish
//! within the same time. One address holds at most so many of the
//! connections ([`crate::peer_limit`]). The peer address goes into every
//! request as axum's `ConnectInfo<SocketAddr>`.
//!
//! A request whose head hyper cannot take (a URI over 65534 bytes, a head
//! over its buffer, bytes that are not HTTP) never reaches the router:
//! hyper answers it itself, 400, 414 or 431 with an empty body, and closes
//! the connection. [`JsonRefusals`] puts the API's JSON error in place of
//! that answer, so that every error the hub sends is one. It also watches
//! the connection's first head as hyper reads it ([`crate::head_watch`]):
//! a header value broken over lines (a JWT from GNU `base64`) is named in
//! that error with its fix, or, with `--autoro-compat`, joined.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tasuki_protocol::{ErrorBody, ErrorDetail};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower_service::Service;

use crate::head_watch::{self, HeadWatch};
use crate::peer_limit::{PerAddress, Slot};
use crate::tls::ReloadableTls;

/// How the loop treats clients.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    /// Open connections at most; past it, new ones wait in the backlog.
    pub max_connections: usize,
    /// From the moment the hub waits for a request head (a new connection,
    /// or a kept-alive one between requests) to the head's last byte; also
    /// bounds a TLS handshake.
    pub header_timeout: Duration,
    /// Open connections from one address at most (0: no cap); past it,
    /// its new connections are closed at once.
    pub max_per_address: usize,
    /// What to do with a header value wrapped over lines in a connection's
    /// first head: explain the refusal, or (`--autoro-compat`) join a
    /// wrapped `Authorization` token.
    pub wrapped_headers: head_watch::Mode,
}

/// After an accept error that is about resources (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM), the loop waits this long before accepting again:
/// connections closing meanwhile give the descriptors back.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// What one read takes from a connection while its first head is watched.
const WATCH_READ: usize = 8 * 1024;

pub struct Server {
    pub listener: TcpListener,
    pub router: Router,
    pub tls: Option<ReloadableTls>,
    pub limits: EdgeLimits,
}

impl Server {
    /// Serves until `stop` turns true, then asks every connection to finish
    /// its request in flight and close; returns once they all have.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let per_address = PerAddress::new(self.limits.max_per_address);
        let mut at_cap_logged = false;
        let mut accept_error_logged = false;
        loop {
            let mut stop_wait = stop.clone();
            // A permit first: at the cap, connections stay in the backlog
            // (costing this process nothing) until one closes, rather than
            // being accepted only to be shut at once.
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if !at_cap_logged {
                        tracing::warn!(
                            max_connections = self.limits.max_connections,
                            "at the connection limit; new connections wait until one closes"
                        );
                        at_cap_logged = true;
                    }
                    tokio::select! {
                        p = permits.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                        _ = stop_wait.wait_for(|s| *s) => break,
                    }
                }
            };
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = stop_wait.wait_for(|s| *s) => break,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    at_cap_logged = false;
                    accept_error_logged = false;
                    // Over its address's cap: closed at once, permit back.
                    let Some(slot) = per_address.enter(peer.ip()) else {
                        continue;
                    };
                    self.spawn_connection(tcp, peer, (permit, slot), stop.clone());
                }
                Err(e) if is_resource_error(&e) => {
                    if !accept_error_logged {
                        tracing::error!(
                            error = %e,
                            "cannot accept connections (out of file descriptors or memory); \
                             retrying; lower --max-connections or raise the limit (ulimit -n)"
                        );
                        accept_error_logged = true;
                    }
                    drop(permit);
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                // ECONNABORTED and the like: that one client's problem.
                Err(e) => tracing::debug!(error = %e, "accept"),
            }
        }
        // Stop listening (new clients are refused rather than left waiting),
        // then wait for every connection: each holds a permit until it closes.
        let all = u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX);
        drop(self);
        let _ = permits.acquire_many(all).await;
    }

    fn spawn_connection(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        permit: (OwnedSemaphorePermit, Slot),
        stop: watch::Receiver<bool>,
    ) {
        // Small request/response exchanges: Nagle's algorithm with delayed
        // ACKs would add 40 ms to some of them.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let router = self.router.clone();
        let tls = self.tls.as_ref().map(ReloadableTls::acceptor);
        let limits = self.limits;
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, peer, router, limits, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, router, limits, stop).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    limits: EdgeLimits,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().call(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let io = JsonRefusals::new(io, limits.wrapped_headers);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => {}
    }
    // Shutting down: the request in flight finishes, then the connection
    // closes instead of waiting for another.
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "connection closed");
    }
}

fn is_resource_error(e: &io::Error) -> bool {
    #[cfg(unix)]
    if matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    ) {
        return true;
    }
    // WSAEMFILE, WSAENOBUFS.
    #[cfg(windows)]
    if matches!(e.raw_os_error(), Some(10024 | 10055)) {
        return true;
    }
    matches!(e.kind(), io::ErrorKind::OutOfMemory)
}

/// A connection whose writes are hyper's, except that hyper's own answer
/// to a head it could not parse is replaced by the API's JSON error; and
/// whose first head is read through a [`HeadWatch`].
///
/// That answer is recognised by its exact shape: hyper writes it alone,
/// as the connection's last write, with a status of 400, 414 or 431 and
/// no headers but `content-length: 0`, `date` and perhaps `connection`.
/// The router never sends such a response (every error it sends has a
/// JSON body). Writes are not vectored, so that hyper hands each flush
/// over as one buffer.
struct JsonRefusals<I> {
    inner: I,
    /// The JSON answer being written in place of hyper's, and the length
    /// of hyper's, which is reported written once the JSON one is.
    replacing: Option<(Vec<u8>, usize)>,
    watch: HeadWatch,
    /// Bytes read and watched, not yet handed to hyper.
    ready: Vec<u8>,
}

impl<I> JsonRefusals<I> {
    fn new(inner: I, mode: head_watch::Mode) -> JsonRefusals<I> {
        JsonRefusals {
            inner,
            replacing: None,
            watch: HeadWatch::new(mode),
            ready: Vec::new(),
        }
    }
}

/// The JSON answer to write instead of `buf`, when `buf` is hyper's
/// answer to an unparsable head; `wrapped` names the header whose value
/// came broken over lines, if one did.
fn json_refusal(buf: &[u8], wrapped: Option<&str>) -> Option<Vec<u8>> {
    let head = std::str::from_utf8(buf).ok()?.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line.strip_prefix("HTTP/1.")?;
    let (_, rest) = rest.split_once(' ')?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let status: u16 = code.parse().ok()?;
    let mut empty = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => empty = value.trim() == "0",
            "date" | "connection" => {}
            _ => return None,
        }
    }
    if !empty {
        return None;
    }
    let body = match (status, wrapped) {
        (400, Some(header)) => error_body("line_break_in_header", &line_break_message(header)),
        _ => unparsed_request(status)?,
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

/// The API's JSON error for a head hyper refused with `status`.
fn unparsed_request(status: u16) -> Option<Vec<u8>> {
    let (code, message) = match status {
        400 => (
            "malformed_request",
            "the request's head is not valid HTTP/1.1 (its method, URI, a header or the version)",
        ),
        414 => (
            "uri_too_long",
            "the request's URI is longer than 65534 bytes; send long inputs in a request body",
        ),
        431 => (
            "headers_too_large",
            "the request's head (request line and headers) is too large",
        ),
        _ => return None,
    };
    Some(error_body(code, message))
}

/// Why a head with a wrapped value was refused, and the fix.
fn line_break_message(header: &str) -> String {
    let header = if header.is_empty() { "a" } else { header };
    format!(
        "the value of the `{header}` header is broken over several lines (a line feed inside \
         it, followed by a line with no `:`), which is not valid HTTP. GNU `base64` wraps its \
         output every 76 characters: build the token with `base64 -w0`, or pipe base64's \
         output through `tr -d '\\n'`, so that the value is one line (a hub started with \
         --autoro-compat joins a wrapped Authorization token)"
    )
}

fn error_body(code: &str, message: &str) -> Vec<u8> {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message: message.into(),
            problems: Vec::new(),
        },
    };
    // Serialising this struct of strings cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

impl<I: AsyncRead + Unpin> AsyncRead for JsonRefusals<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.drain(..n);
                return Poll::Ready(Ok(()));
            }
            if this.watch.done() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            // Still in the first head: read, and let the watch pass on
            // what hyper is to see (it may hold the end back for a while).
            let mut scratch = [0u8; WATCH_READ];
            let mut read = ReadBuf::new(&mut scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.watch.end(&mut this.ready);
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.watch.feed(read.filled(), &mut this.ready);
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for JsonRefusals<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none()
            && let Some(json) = json_refusal(buf, this.watch.unjoined())
        {
            this.replacing = Some((json, buf.len()));
        }
        let Some((json, replaced)) = this.replacing.as_mut() else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        while !json.is_empty() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, json))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            json.drain(..n);
        }
        let replaced = *replaced;
        this.replacing = None;
        Poll::Ready(Ok(replaced.min(buf.len())))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::json_refusal;

    #[test]
    fn only_hyper_s_own_empty_refusals_are_replaced() {
        let hyper_414 =
            b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 15:00:00 GMT\r\n\r\n";
        let json = String::from_utf8(json_refusal(hyper_414, None).expect("replaced")).unwrap();
        assert!(json.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{json}");
        assert!(json.contains("content-type: application/json"), "{json}");
        assert!(json.ends_with("}"), "{json}");
        assert!(json.contains("\"uri_too_long\""), "{json}");
        // A router response, a body, or another status stay as they are.
        for other in [
            &b"HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
            b"{\"robots\": []}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore",
        ] {
            assert!(json_refusal(other, None).is_none(), "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn a_refused_head_with_a_wrapped_value_says_so() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let json =
            String::from_utf8(json_refusal(hyper_400, Some("Authorization")).unwrap()).unwrap();
        assert!(json.contains("\"line_break_in_header\""), "{json}");
        assert!(json.contains("`Authorization` header"), "{json}");
        assert!(json.contains("base64 -w0"), "{json}");
        // Other refusals are what they were.
        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let json =
            String::from_utf8(json_refusal(hyper_431, Some("Authorization")).unwrap()).unwrap();
        assert!(json.contains("\"headers_too_large\""), "{json}");
    }
}
