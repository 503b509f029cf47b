//! PostgreSQL connections, pooled.
//!
//! The table modules are synchronous (they are shared with SQLite), so a
//! call takes a connection and runs on tokio's blocking pool, where each
//! statement blocks on the connection's future. A semaphore bounds the
//! calls in flight to the pool's size *before* a blocking thread is taken,
//! so a burst of requests waits here, asynchronously, not in threads.
//! A connection that broke (the server restarted, the network dropped, a
//! transaction that could not even roll back) is not put back; the next
//! call connects afresh, so the hub recovers by itself.
//!
//! The connections' own tasks (reading and writing their sockets) run on
//! a small runtime of the pool's, not on the hub's: a statement blocks its
//! thread until its connection task answers, and that task must never
//! wait for a hub worker that is itself waiting (a lock held across a
//! statement starved both of the hub's two workers once, and every
//! statement of the hub stopped).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::AsyncMessage;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A connection's driving half, as `tokio_postgres::connect` returns it.
type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

use super::sql::{Conn, PgConn};
use super::{DbError, redact};

/// Connections one hub opens at most. A hub's statements are short, and
/// PostgreSQL's default `max_connections` (100) must serve every hub.
pub const POOL_SIZE: usize = 16;

pub struct Pool {
    /// Where the connections' tasks run; taken only by `Drop`.
    driver: Option<tokio::runtime::Runtime>,
    config: tokio_postgres::Config,
    /// TLS when the server offers it (`sslmode=prefer`, the default) or
    /// the URL asks for it (`sslmode=require`): the server's certificate
    /// is always verified, against the system's roots or `--db-ca-file`.
    tls: MakeRustlsConnect,
    shown: String,
    /// Shared with the blocking threads, which put their connection back
    /// themselves: a caller that goes away mid-call does not take it along.
    idle: Arc<Mutex<Vec<PgConn>>>,
    /// One per connection in use; held by the blocking thread until it has
    /// put its connection back, so the pool never exceeds its size.
    permits: Arc<Semaphore>,
}

impl Pool {
    /// Checks that the server answers, and keeps that first connection.
    pub async fn connect(url: &str, ca_file: Option<&Path>) -> Result<Pool, DbError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|source| DbError::Connect {
                url: redact(url),
                source,
            })?;
        config.application_name("tasuki-hub");
        // A server or network that stops answering must not hold the hub
        // (or a robot's row, for every hub) for the kernel's two hours:
        // dead connections are noticed within about half a minute, a
        // statement waits for a row lock 10 s at most, and a transaction
        // this hub left open (a thread that died in it) is ended.
        config
            .connect_timeout(Duration::from_secs(5))
            .keepalives_idle(Duration::from_secs(15))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .options("-c lock_timeout=10s -c idle_in_transaction_session_timeout=60s");
        let driver = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tasuki-db")
            .enable_all()
            .build()
            .map_err(|e| DbError::Task(format!("cannot start the database runtime: {e}")))?;
        let pool = Pool {
            driver: Some(driver),
            tls: tls(ca_file)?,
            config,
            shown: redact(url),
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(Semaphore::new(POOL_SIZE)),
        };
        let first = pool.open().await?;
        pool.idle().push(first);
        Ok(pool)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<PgConn>> {
        lock_idle(&self.idle)
    }

    fn driver(&self) -> &tokio::runtime::Handle {
        match &self.driver {
            Some(runtime) => runtime.handle(),
            None => unreachable!("the pool's runtime goes only when the pool does"),
        }
    }

    /// A new connection, and the future that drives it (to be spawned on
    /// the driver runtime).
    async fn connection(&self) -> Result<(tokio_postgres::Client, Connection), DbError> {
        let (config, tls) = (self.config.clone(), self.tls.clone());
        self.driver()
            .spawn(async move { config.connect(tls).await })
            .await
            .map_err(|e| DbError::Task(e.to_string()))?
            .map_err(|source| DbError::Connect {
                url: self.shown.clone(),
                source,
            })
    }

    async fn open(&self) -> Result<PgConn, DbError> {
        let (client, connection) = self.connection().await?;
        let shown = self.shown.clone();
        self.driver().spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(db = %shown, error = %e, "a database connection ended");
            }
        });
        Ok(PgConn::new(client, self.driver().clone()))
    }

    /// A connection of its own that listens on `channel`; its
    /// notifications' payloads arrive on the receiver, which ends (after
    /// an error, when there is one) when the connection does.
    pub async fn listen(&self, channel: &'static str) -> Result<Subscription, DbError> {
        let (client, mut connection) = self.connection().await?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.driver().spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(Ok(n.payload().to_owned())).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let _ = tx.send(Err(DbError::Postgres(e)));
                        return;
                    }
                    None => return,
                }
            }
        });
        let listen = format!("LISTEN {channel}");
        let client = self
            .driver()
            .spawn(async move {
                client.batch_execute(&listen).await?;
                Ok::<_, tokio_postgres::Error>(client)
            })
            .await
            .map_err(|e| DbError::Task(e.to_string()))??;
        Ok(Subscription {
            _client: client,
            payloads: rx,
        })
    }

    /// Runs `f` with a connection of the pool, on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Conn<'_>) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| DbError::Task(e.to_string()))?;
        let idle = loop {
            match self.idle().pop() {
                Some(conn) if conn.client.is_closed() => continue,
                other => break other,
            }
        };
        let mut conn = match idle {
            Some(conn) => conn,
            None => self.open().await?,
        };
        let idle = self.idle.clone();
        tokio::task::spawn_blocking(move || {
            let result = f(&mut Conn::postgres(&mut conn));
            if !conn.broken && !conn.client.is_closed() {
                lock_idle(&idle).push(conn);
            }
            drop(permit);
            result
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }
}

fn lock_idle(idle: &Mutex<Vec<PgConn>>) -> std::sync::MutexGuard<'_, Vec<PgConn>> {
    // Each change to the list is one push or pop: a panic elsewhere cannot
    // leave it half-changed.
    idle.lock().unwrap_or_else(|p| p.into_inner())
}

/// The TLS client: rustls on the aws-lc-rs provider, as the hub's own TLS.
fn tls(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, DbError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |e: String| DbError::Tls(format!("--db-ca-file {}: {e}", path.display()));
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                roots
                    .add(cert.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
        }
        None => {
            // Unreadable system certificates leave those roots out; a
            // server they would have vouched for is then refused, saying
            // why, when a connection is made.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl Drop for Pool {
    /// The hub may drop its last handle inside its own runtime, where a
    /// runtime cannot be dropped in the ordinary (blocking) way.
    fn drop(&mut self) {
        if let Some(runtime) = self.driver.take() {
            runtime.shutdown_background();
        }
    }
}

/// A listening connection (`Pool::listen`).
pub struct Subscription {
    /// Dropping it would close the connection.
    _client: tokio_postgres::Client,
    payloads: UnboundedReceiver<Result<String, DbError>>,
}

impl Subscription {
    /// The next notification's payload; `None` once the connection ended.
    pub async fn next(&mut self) -> Option<Result<String, DbError>> {
        self.payloads.recv().await
    }
}
