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

use std::sync::Mutex;

use tokio::sync::Semaphore;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{AsyncMessage, NoTls};

use super::sql::{Conn, PgConn};
use super::{DbError, redact};

/// Connections one hub opens at most. A hub's statements are short, and
/// PostgreSQL's default `max_connections` (100) must serve every hub.
pub const POOL_SIZE: usize = 16;

pub struct Pool {
    config: tokio_postgres::Config,
    shown: String,
    idle: Mutex<Vec<PgConn>>,
    permits: Semaphore,
}

impl Pool {
    /// Checks that the server answers, and keeps that first connection.
    pub async fn connect(url: &str) -> Result<Pool, DbError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|source| DbError::Connect {
                url: redact(url),
                source,
            })?;
        config.application_name("tasuki-hub");
        let pool = Pool {
            config,
            shown: redact(url),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(POOL_SIZE),
        };
        let first = pool.open().await?;
        pool.idle().push(first);
        Ok(pool)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<PgConn>> {
        // Each change to the list is one push or pop: a panic elsewhere
        // cannot leave it half-changed.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn open(&self) -> Result<PgConn, DbError> {
        let (client, connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|source| DbError::Connect {
                    url: self.shown.clone(),
                    source,
                })?;
        let shown = self.shown.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(db = %shown, error = %e, "a database connection ended");
            }
        });
        Ok(PgConn::new(client, tokio::runtime::Handle::current()))
    }

    /// A connection of its own that listens on `channel`; its
    /// notifications' payloads arrive on the receiver, which ends (after
    /// an error, when there is one) when the connection does.
    pub async fn listen(&self, channel: &'static str) -> Result<Subscription, DbError> {
        let (client, mut connection) =
            self.config
                .connect(NoTls)
                .await
                .map_err(|source| DbError::Connect {
                    url: self.shown.clone(),
                    source,
                })?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
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
        client.batch_execute(&format!("LISTEN {channel}")).await?;
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
        let _permit = self
            .permits
            .acquire()
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
        let (result, conn) = tokio::task::spawn_blocking(move || {
            let result = f(&mut Conn::postgres(&mut conn));
            (result, conn)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?;
        if !conn.broken && !conn.client.is_closed() {
            self.idle().push(conn);
        }
        result
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
