//! The accept loop: what a client without credentials can make the hub
//! hold. Each connection gets a permit from a fixed pool (at the cap, the
//! loop stops accepting and new connections wait in the kernel's
//! backlog), must send a complete request head within the header timeout
//! (this also ends idle keep-alive connections: hyper starts the same
//! clock whenever it waits for a head), and a TLS handshake must finish
//! within the same time. One address holds at most so many of the
//! connections ([`crate::peer_limit`]). The peer address goes into every
//! request as axum's `ConnectInfo<SocketAddr>`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower_service::Service;

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
}

/// After an accept error that is about resources (EMFILE, ENFILE,
/// ENOBUFS, ENOMEM), the loop waits this long before accepting again:
/// connections closing meanwhile give the descriptors back.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

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
        let header_timeout = self.limits.header_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, peer, router, header_timeout, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, router, header_timeout, stop).await
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
    header_timeout: Duration,
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
        .header_read_timeout(header_timeout);
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
