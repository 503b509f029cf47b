//! The hub's SQLite database: the source of truth. Everything the hub
//! knows survives a restart because it is only ever kept here.
//!
//! One connection behind a mutex: SQLite serialises writers anyway, and the
//! hub's queries are short. Async code reaches it through [`Db::call`],
//! which runs the closure on tokio's blocking pool so that a slow disk
//! never stalls the reactor.

mod files;
mod migrate;

pub mod artifacts;
pub mod keys;
pub mod leases;
pub mod logs;
pub mod robots;
pub mod secret_params;
pub mod sessions;
pub mod workflows;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot open the database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
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
}

#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Db, DbError> {
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
        // `tasuki-hub robots|keys` write to the file while a hub serves it.
        // A deferred transaction that reads and then writes would fail at
        // once with SQLITE_BUSY_SNAPSHOT when the other process wrote in
        // between (the busy timeout does not cover it); taking the write
        // lock at BEGIN makes it wait its turn instead.
        conn.set_transaction_behavior(rusqlite::TransactionBehavior::Immediate);
        conn.set_prepared_statement_cache_capacity(128);
        migrate::migrate(&mut conn, &shown)?;
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    pub async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave a half-done
            // write behind (an open transaction rolls back when dropped),
            // so a poisoned lock is still safe to use.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Runs `f` with the connection on this thread, for the command line.
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
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

/// Statements through the connection's prepared-statement cache:
/// compiling SQL costs more than running most of the hub's queries.
pub trait Cached {
    fn exec_cached(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize>;
    fn row_cached<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec_cached(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row_cached<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// A `COUNT(*)` query's answer.
pub fn count(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<u64, DbError> {
    let n: i64 = conn.row_cached(sql, params, |r| r.get(0))?;
    Ok(n.max(0) as u64)
}

pub fn parse_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, DbError> {
    serde_json::from_str(text).map_err(|e| DbError::Corrupt(format!("{what}: {e}")))
}
