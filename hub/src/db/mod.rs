//! The hub's database: the source of truth. Everything the hub knows
//! survives a restart because it is only ever kept here.
//!
//! Two engines behind one handle, [`Db`]: SQLite, the default, one file
//! and one connection behind a mutex (SQLite serialises writers anyway,
//! and the hub's queries are short); or PostgreSQL, a pool of connections
//! that several hubs may share (`pool.rs`). Either way, async code reaches
//! it through [`Db::call`], which runs the closure on tokio's blocking pool
//! so that a slow disk or network never stalls the reactor, with a
//! [`Conn`] that speaks to both (`sql.rs`): every table module is written
//! once.

mod files;
mod migrate;
mod pool;
pub mod sql;

pub mod api_calls;
pub mod artifacts;
pub mod audit;
pub mod concurrency;
pub mod credentials;
pub mod error_handlers;
pub mod keys;
pub mod leases;
pub mod logs;
pub mod metrics;
pub mod notifications;
pub mod robots;
pub mod schedules;
pub mod secret_params;
pub mod sessions;
pub mod triggers;
pub mod waits;
pub mod workflow_names;
pub mod workflows;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

pub use migrate::{SCHEMA_VERSION, schema_version};
pub use pool::Subscription;
pub use sql::{Conn, Dialect};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {}", postgres_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("cannot connect to the database {url}: {}", postgres_message(.source))]
    Connect {
        url: String,
        source: tokio_postgres::Error,
    },
    #[error("cannot create the database {path} readable by its owner only")]
    Files {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the database {path} has schema version {found}, newer than this tasuki-hub knows \
         ({known}); run a newer tasuki-hub"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    /// A stored value that the hub itself wrote does not read back.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("the database task failed: {0}")]
    Task(String),
    #[error("secret params: {0}")]
    Secrets(String),
    #[error("TLS to the database: {0}")]
    Tls(String),
}

impl DbError {
    /// The database itself failed or cannot be reached, rather than the
    /// hub (a row it cannot read back, its master key, a task).
    pub fn is_the_database(&self) -> bool {
        matches!(
            self,
            DbError::Sqlite(_)
                | DbError::Postgres(_)
                | DbError::Open { .. }
                | DbError::Connect { .. }
        )
    }
}

/// tokio-postgres's own text for a server error is only "db error": the
/// server's message is in its source.
fn postgres_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

/// Where the database is: `--db` and `TASUKI_HUB_DB`.
#[derive(Clone)]
pub enum Location {
    /// A file path, or `sqlite:PATH`.
    Sqlite(PathBuf),
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(text: &str) -> Result<Location, String> {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            text.parse::<tokio_postgres::Config>()
                .map_err(|e| format!("not a PostgreSQL URL ({e}): {}", redact(text)))?;
            return Ok(Location::Postgres(text.to_owned()));
        }
        let path = text.strip_prefix("sqlite:").unwrap_or(text);
        if path.is_empty() {
            return Err("give a database file (or sqlite:PATH, or a postgres:// URL)".into());
        }
        Ok(Location::Sqlite(PathBuf::from(path)))
    }
}

impl fmt::Display for Location {
    /// A URL's password never shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

/// `url` with `password` as its password, whatever it had: as a
/// `password=` parameter, which the URL form takes whatever the password's
/// characters.
pub fn with_password(url: &str, password: &str) -> String {
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}password={encoded}")
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, and a
/// `password=` parameter likewise.
pub fn redact(url: &str) -> String {
    let mut shown = url.to_owned();
    if let Some(scheme_end) = shown.find("://") {
        let rest = scheme_end + 3;
        if let Some(at) = shown[rest..].find('@').map(|i| rest + i)
            && let Some(colon) = shown[rest..at].find(':').map(|i| rest + i)
        {
            shown.replace_range(colon + 1..at, "***");
        }
    }
    // Every `password=`: a URL may carry one and --db-password-file add
    // another.
    let mut from = 0;
    while let Some(start) = shown[from..].find("password=").map(|i| from + i) {
        let value = start + "password=".len();
        let end = shown[value..].find('&').map_or(shown.len(), |i| value + i);
        shown.replace_range(value..end, "***");
        from = value + 3;
    }
    shown
}

#[derive(Clone)]
pub struct Db {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite {
        conn: Arc<Mutex<Connection>>,
        /// A second connection that only checkpoints ([`Db::checkpoint`]).
        checkpointer: Arc<Mutex<Connection>>,
    },
    Postgres(Arc<pool::Pool>),
}

impl Db {
    /// Opens (creating if needed) and migrates the database. `ca_file`
    /// vouches for a PostgreSQL server's TLS certificate (else the
    /// system's roots do).
    pub async fn open(location: &Location, ca_file: Option<&Path>) -> Result<Db, DbError> {
        match location {
            Location::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || Db::open_sqlite(&path))
                    .await
                    .map_err(|e| DbError::Task(e.to_string()))?
            }
            Location::Postgres(url) => {
                let pool = pool::Pool::connect(url, ca_file).await?;
                let db = Db {
                    backend: Backend::Postgres(Arc::new(pool)),
                };
                let shown = redact(url);
                db.call(move |conn| migrate::migrate_postgres(conn, &shown))
                    .await?;
                Ok(db)
            }
        }
    }

    fn open_sqlite(path: &Path) -> Result<Db, DbError> {
        let shown = path.display().to_string();
        files::make_private(path).map_err(|source| DbError::Files {
            path: shown.clone(),
            source,
        })?;
        let open_err = |source| DbError::Open {
            path: shown.clone(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        // WAL lets readers (a `keys create` in another process, a backup)
        // work beside the running hub. synchronous=NORMAL is durable across
        // a crash of the hub process, which is the failure the tests and
        // operators see; only a power cut can lose the last commits.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        // Deleted and overwritten content (a purged sealed secret, a row
        // sealed at start) is zeroed rather than left in free space.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(open_err)?;
        // A checkpoint leaves the write-ahead log's file at its size, old
        // frames and all, until new ones overwrite them; past this size it
        // is cut back. (The serve loop empties it after secrets are purged.)
        conn.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)
            .map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        // A commit that fills the write-ahead log past its threshold
        // checkpoints it, fsyncs and all, inside the request that made it:
        // a pickup's slowest percent. Checkpoints run from a connection of
        // their own instead, off every request's path (`Db::checkpoint`).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(open_err)?;
        // (`Conn::transaction` begins IMMEDIATE, for `tasuki-hub robots|keys`
        // writing to the file while a hub serves it.)
        conn.set_prepared_statement_cache_capacity(128);
        migrate::migrate(&mut conn, &shown)?;
        let checkpointer = Connection::open(path).map_err(open_err)?;
        checkpointer
            .busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        Ok(Db {
            backend: Backend::Sqlite {
                conn: Arc::new(Mutex::new(conn)),
                checkpointer: Arc::new(Mutex::new(checkpointer)),
            },
        })
    }

    /// Copies what the write-ahead log holds into the database file
    /// without waiting for readers or writers (SQLite's PASSIVE
    /// checkpoint), on a connection that serves no request; the serve loop
    /// calls it every second. Nothing to do on PostgreSQL.
    pub async fn checkpoint(&self) -> Result<(), DbError> {
        let Backend::Sqlite { checkpointer, .. } = &self.backend else {
            return Ok(());
        };
        let checkpointer = checkpointer.clone();
        tokio::task::spawn_blocking(move || {
            let conn = checkpointer.lock().unwrap_or_else(|p| p.into_inner());
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
            Ok(())
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// A connection that listens on `channel`: on PostgreSQL only, where
    /// several hubs may share the database; `None` on SQLite, which has
    /// one hub.
    pub async fn listen(&self, channel: &'static str) -> Option<Result<Subscription, DbError>> {
        match &self.backend {
            Backend::Sqlite { .. } => None,
            Backend::Postgres(pool) => Some(pool.listen(channel).await),
        }
    }

    /// Whether several hubs may share this database (PostgreSQL), so that
    /// what one hub counts in memory must be summed with the others'.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Runs `f` with a connection, on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Conn<'_>) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        match &self.backend {
            Backend::Sqlite { conn, .. } => {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || {
                    // A panic while holding the lock cannot leave a
                    // half-done write behind (an open transaction rolls
                    // back when dropped), so a poisoned lock is still safe
                    // to use.
                    let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
                    if !guard.is_autocommit() {
                        // A closure that panicked inside a transaction.
                        guard.execute_batch("ROLLBACK")?;
                    }
                    f(&mut Conn::sqlite(&mut guard))
                })
                .await
                .map_err(|e| DbError::Task(e.to_string()))?
            }
            Backend::Postgres(pool) => pool.call(f).await,
        }
    }
}

/// Milliseconds since the Unix epoch, the unit every timestamp column uses.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

pub fn to_timestamp(ms: i64) -> Result<jiff::Timestamp, DbError> {
    jiff::Timestamp::from_millisecond(ms)
        .map_err(|e| DbError::Corrupt(format!("timestamp {ms} ms is out of range: {e}")))
}

/// A migrated SQLite database in memory, for the table modules' tests.
#[cfg(test)]
pub fn test_connection() -> Connection {
    let mut conn = Connection::open_in_memory().expect("an in-memory database");
    migrate::migrate(&mut conn, "mem").expect("the migrations");
    conn
}

pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_urls_passwords_never_show() {
        assert_eq!(
            redact("postgres://hub:s3cret@db/tasuki?password=other&sslmode=require&password=x"),
            "postgres://hub:***@db/tasuki?password=***&sslmode=require&password=***"
        );
        assert_eq!(
            redact("postgres://hub@db/tasuki"),
            "postgres://hub@db/tasuki"
        );
        let url = with_password("postgres://hub@db/tasuki?sslmode=require", "p&w=1");
        assert!(!redact(&url).contains("p%26w"), "{}", redact(&url));
        assert!(url.parse::<tokio_postgres::Config>().is_ok());
    }
}
