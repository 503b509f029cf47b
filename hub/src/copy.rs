//! Copying one hub's database into another: `tasuki-hub migrate`, which
//! moves a hub from its SQLite file to a PostgreSQL database.
//!
//! Every table is copied as stored: ids, timestamps, leases, and the
//! sealed secrets' bytes. A sealed secret's associated data is its row's
//! id (the access key id, the session id), so with the ids kept it opens
//! on the target with the same master key file; nothing is decrypted here.
//!
//! Two blocking threads share the work. One reads the source a page at a
//! time in key order, inside one transaction, having first taken the file
//! for this process alone ([`claim`]). The other writes the pages to the
//! target inside one transaction, committed only once every table's count
//! matches the source's. Pages aim at [`PAGE_BYTES`] and the reader waits
//! for the writer, so the memory used does not grow with the database.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, mpsc};

use anyhow::{Context, bail};

use crate::db::sql::{Conn, Param, Row, params};
use crate::db::{self, Db, DbError, Dialect, Location, SCHEMA_VERSION, keys};
use crate::secrets::MasterKey;
use crate::store::{self, StoreArgs};

/// A table of the schema. [`TABLES`] lists them in the order they are
/// copied: a row comes after the rows it refers to.
struct Table {
    name: &'static str,
    /// Its primary key: rows are read in this order, each page starting
    /// after the last key of the one before.
    key: &'static [&'static str],
    /// Rows one page holds at most, whatever their size.
    max_page_rows: usize,
    /// Its `id` is SQLite's AUTOINCREMENT and PostgreSQL's identity, whose
    /// sequence must move past every id the source has given.
    identity: bool,
    /// The target's migration made its rows already (the one counter
    /// row): they are overwritten, not inserted.
    seeded: bool,
}

impl Table {
    const fn new(name: &'static str, key: &'static [&'static str]) -> Table {
        Table {
            name,
            key,
            max_page_rows: MAX_PAGE_ROWS,
            identity: false,
            seeded: false,
        }
    }
}

const TABLES: &[Table] = &[
    Table::new("access_keys", &["id"]),
    Table {
        identity: true,
        ..Table::new("robots", &["id"])
    },
    Table {
        identity: true,
        ..Table::new("workflows", &["id"])
    },
    Table::new("workflow_names", &["name"]),
    Table {
        identity: true,
        ..Table::new("credentials", &["id"])
    },
    Table {
        identity: true,
        ..Table::new("schedules", &["id"])
    },
    Table {
        identity: true,
        ..Table::new("triggers", &["id"])
    },
    Table {
        identity: true,
        ..Table::new("notifications", &["id"])
    },
    Table {
        identity: true,
        ..Table::new("notification_deliveries", &["id"])
    },
    Table {
        identity: true,
        ..Table::new("audit_log", &["id"])
    },
    Table {
        identity: true,
        ..Table::new("session_queues", &["id"])
    },
    Table::new("session_logs", &["session_id", "seq"]),
    // Sealed checkpoints, opened by the same master key on either side.
    Table::new("session_waits", &["session_id"]),
    // An artifact may be 50 MiB: one to a page.
    Table {
        max_page_rows: 1,
        ..Table::new("session_artifacts", &["session_id", "name"])
    },
    Table::new("retired_instances", &["instance_id", "key_id", "name"]),
    Table {
        seeded: true,
        ..Table::new("secret_purges", &["id"])
    },
];

/// The size a page aims at: each page is sized from the rows of the one
/// before it.
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Rows in a table's first page, before their size is known.
const FIRST_PAGE_ROWS: usize = 16;
const MAX_PAGE_ROWS: usize = 1024;
/// PostgreSQL takes at most this many parameters in one statement.
const MAX_STATEMENT_PARAMS: usize = 65_535;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the source must be a SQLite database")]
    SourceNotSqlite,
    #[error("the target must be a PostgreSQL database")]
    TargetNotPostgres,
    #[error(
        "the {side} database's schema is at version {found}; this tasuki-hub copies version \
         {SCHEMA_VERSION} only"
    )]
    SchemaVersion { side: Side, found: i64 },
    #[error(
        "another process has the source database open (a hub still serving it, or another \
         tasuki-hub command): stop it, then migrate again"
    )]
    SourceInUse,
    #[error(
        "the target database is not empty: it holds {0}; migrate only into a database no hub \
         has used (CREATE DATABASE makes one)"
    )]
    TargetNotEmpty(String),
    #[error("the two schemas differ in table {table}: {difference}")]
    Columns {
        table: &'static str,
        difference: String,
    },
    #[error(
        "{table} row {row}: its {column} holds a NUL character, which PostgreSQL's text cannot \
         store"
    )]
    Nul {
        table: &'static str,
        row: String,
        column: String,
    },
    #[error("the copy does not add up, so nothing of it was kept: {0}")]
    CountsDiffer(String),
    /// The other side failed; its error says why.
    #[error("the {0} side of the copy stopped")]
    Stopped(Side),
}

/// What the target holds once the copy is committed.
pub struct Summary {
    /// Rows per table, in the order they were copied.
    pub tables: Vec<(&'static str, u64)>,
    pub artifact_bytes: u64,
}

/// Copies every table of `source` (SQLite) into `target` (PostgreSQL),
/// which must hold no rows. Nothing is kept on the target unless all of it
/// is; the source is only read, and kept from every other process until
/// this one exits.
pub async fn copy(source: &Db, target: &Db) -> Result<Summary, CopyError> {
    if source.call(|conn| Ok(conn.dialect())).await? != Dialect::Sqlite {
        return Err(CopyError::SourceNotSqlite);
    }
    if target.call(|conn| Ok(conn.dialect())).await? != Dialect::Postgres {
        return Err(CopyError::TargetNotPostgres);
    }
    // Both were migrated when opened, so an older schema cannot be here;
    // a newer one was refused then. Checked all the same: the copy is
    // column for column.
    for (side, db) in [(Side::Source, source), (Side::Target, target)] {
        let found = db.call(db::schema_version).await?;
        if found != SCHEMA_VERSION {
            return Err(CopyError::SchemaVersion { side, found });
        }
    }
    claim(source).await?;
    let plans = Arc::new(plans(source, target).await?);

    // A rendezvous: the reader reads the next page while the writer
    // writes one, then waits for the writer to take it. Two pages are in
    // memory at most (an artifact may be 50 MiB, and each driver holds a
    // copy of it too).
    let (pages, received) = mpsc::sync_channel(0);
    let reading = {
        let plans = plans.clone();
        source.call(move |conn| Ok(read_source(conn, &plans, pages)))
    };
    let writing = {
        let plans = plans.clone();
        target.call(move |conn| Ok(write_target(conn, &plans, received)))
    };
    let (read, written) = tokio::join!(reading, writing);
    match (
        read.map_err(CopyError::from)?,
        written.map_err(CopyError::from)?,
    ) {
        (Ok(()), Ok(summary)) => Ok(summary),
        // Each side stops when the other does: the error that says why is
        // the other's.
        (Err(CopyError::Stopped(_)), Err(e)) | (Err(e), Err(CopyError::Stopped(_))) => Err(e),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// Takes the source file for this process alone until it exits, or finds
/// another process using it. In SQLite's exclusive locking mode a write
/// transaction takes the file's exclusive lock and keeps it; taking it
/// waits (the busy timeout, 5 s) for every other connection to let go. A
/// hub holds its file open all the while it serves it, so this fails while
/// one runs, and a hub started during the copy cannot read the file.
async fn claim(source: &Db) -> Result<(), CopyError> {
    source
        .call(|conn| {
            let Some(sqlite) = conn.as_sqlite() else {
                return Ok(Err(CopyError::SourceNotSqlite));
            };
            sqlite.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
            match conn.transaction(|_| Ok(())) {
                Ok(()) => Ok(Ok(())),
                Err(e) if is_busy(&e) => Ok(Err(CopyError::SourceInUse)),
                Err(e) => Err(e),
            }
        })
        .await?
}

fn is_busy(e: &DbError) -> bool {
    matches!(
        e,
        DbError::Sqlite(rusqlite::Error::SqliteFailure(failure, _))
            if failure.code == rusqlite::ErrorCode::DatabaseBusy
    )
}

/// How a column's values are read and bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Text,
    Blob,
}

impl Kind {
    /// A type as a STRICT table declares it.
    fn of_sqlite(declared: &str) -> Option<Kind> {
        match declared.to_ascii_uppercase().as_str() {
            "INTEGER" => Some(Kind::Integer),
            "TEXT" => Some(Kind::Text),
            "BLOB" => Some(Kind::Blob),
            _ => None,
        }
    }

    /// A type as `information_schema.columns.data_type` names it.
    fn of_postgres(data_type: &str) -> Option<Kind> {
        match data_type {
            "bigint" => Some(Kind::Integer),
            "text" => Some(Kind::Text),
            "bytea" => Some(Kind::Blob),
            _ => None,
        }
    }
}

/// One stored value, typed as its column is: PostgreSQL checks the type
/// of a NULL too.
#[derive(Debug, Clone)]
enum Field {
    Integer(Option<i64>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

impl Field {
    fn read(row: &Row<'_>, idx: usize, kind: Kind) -> Result<Field, DbError> {
        Ok(match kind {
            Kind::Integer => Field::Integer(row.get(idx)?),
            Kind::Text => Field::Text(row.get(idx)?),
            Kind::Blob => Field::Blob(row.get(idx)?),
        })
    }

    /// About the memory it takes, to size pages.
    fn size(&self) -> usize {
        match self {
            Field::Integer(_) => 8,
            Field::Text(text) => text.as_ref().map_or(0, String::len),
            Field::Blob(blob) => blob.as_ref().map_or(0, Vec::len),
        }
    }
}

impl fmt::Display for Field {
    /// As a row's key is named in an error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Integer(Some(n)) => write!(f, "{n}"),
            Field::Text(Some(text)) => write!(f, "{text:?}"),
            Field::Blob(Some(blob)) => write!(f, "<{} bytes>", blob.len()),
            Field::Integer(None) | Field::Text(None) | Field::Blob(None) => f.write_str("NULL"),
        }
    }
}

impl Param for Field {
    fn sqlite(&self) -> &dyn rusqlite::ToSql {
        match self {
            Field::Integer(value) => value,
            Field::Text(value) => value,
            Field::Blob(value) => value,
        }
    }

    fn postgres(&self) -> &(dyn tokio_postgres::types::ToSql + Sync) {
        match self {
            Field::Integer(value) => value,
            Field::Text(value) => value,
            Field::Blob(value) => value,
        }
    }
}

type Page = Vec<Vec<Field>>;

/// A table as both databases have it, and the statements that copy it.
struct Plan {
    table: &'static Table,
    columns: Vec<(String, Kind)>,
    /// Where the key's columns are among `columns`.
    key_positions: Vec<usize>,
    first_page: String,
    next_page: String,
}

impl Plan {
    fn new(table: &'static Table, columns: Vec<(String, Kind)>) -> Result<Plan, CopyError> {
        let key_positions = table
            .key
            .iter()
            .map(|key| {
                columns
                    .iter()
                    .position(|(name, _)| name == key)
                    .ok_or_else(|| CopyError::Columns {
                        table: table.name,
                        difference: format!("its key column {key} is missing"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let names = columns
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let key = table.key.join(", ");
        let key_params = (1..=table.key.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let after_key = table.key.len() + 1;
        Ok(Plan {
            first_page: format!("SELECT {names} FROM {} ORDER BY {key} LIMIT ?1", table.name),
            // A row value comparison: SQLite pages through the primary key
            // with it, an index seek per page.
            next_page: format!(
                "SELECT {names} FROM {} WHERE ({key}) > ({key_params}) ORDER BY {key} \
                 LIMIT ?{after_key}",
                table.name
            ),
            table,
            columns,
            key_positions,
        })
    }

    /// The rows one INSERT takes at most: a power of two (see [`insert`]),
    /// within PostgreSQL's limit on parameters.
    fn max_insert_rows(&self) -> usize {
        let fit = (MAX_STATEMENT_PARAMS / self.columns.len().max(1)).clamp(1, MAX_PAGE_ROWS);
        1 << fit.ilog2()
    }

    fn insert_sql(&self, rows: usize) -> String {
        let width = self.columns.len();
        let names: Vec<&str> = self.columns.iter().map(|(name, _)| name.as_str()).collect();
        let values: Vec<String> = (0..rows)
            .map(|row| {
                let row_params: Vec<String> = (1..=width)
                    .map(|column| format!("?{}", row * width + column))
                    .collect();
                format!("({})", row_params.join(", "))
            })
            .collect();
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES {}",
            self.table.name,
            names.join(", "),
            values.join(", ")
        );
        if self.table.seeded {
            let updates: Vec<String> = names
                .iter()
                .filter(|name| !self.table.key.contains(name))
                .map(|name| format!("{name} = excluded.{name}"))
                .collect();
            sql.push_str(&format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                self.table.key.join(", "),
                updates.join(", ")
            ));
        }
        sql
    }

    fn key_of(&self, row: &[Field]) -> Vec<Field> {
        self.key_positions.iter().map(|&i| row[i].clone()).collect()
    }

    /// Refuses what the target could not store, naming the row.
    fn check_storable(&self, row: &[Field]) -> Result<(), CopyError> {
        for (field, (column, _)) in row.iter().zip(&self.columns) {
            if let Field::Text(Some(text)) = field
                && text.contains('\0')
            {
                let key: Vec<String> = self.key_of(row).iter().map(Field::to_string).collect();
                return Err(CopyError::Nul {
                    table: self.table.name,
                    row: format!("({})", key.join(", ")),
                    column: column.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Each table's columns on both sides, which must be the same.
async fn plans(source: &Db, target: &Db) -> Result<Vec<Plan>, CopyError> {
    let source_columns = source
        .call(|conn| {
            TABLES
                .iter()
                .map(|table| {
                    conn.rows(
                        "SELECT name, type FROM pragma_table_info(?1) ORDER BY cid",
                        params![table.name],
                        |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
                    )
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let target_columns = target
        .call(|conn| {
            TABLES
                .iter()
                .map(|table| {
                    conn.rows(
                        "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT)
                         FROM information_schema.columns
                         WHERE table_schema = current_schema() AND CAST(table_name AS TEXT) = ?1
                         ORDER BY ordinal_position",
                        params![table.name],
                        |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
                    )
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    TABLES
        .iter()
        .zip(source_columns.into_iter().zip(target_columns))
        .map(|(table, (source, target))| {
            Plan::new(table, same_columns(table.name, &source, &target)?)
        })
        .collect()
}

/// The source's columns with their kinds, if the target has the same ones
/// of the same kinds.
fn same_columns(
    table: &'static str,
    source: &[(String, String)],
    target: &[(String, String)],
) -> Result<Vec<(String, Kind)>, CopyError> {
    let differ = |difference: String| CopyError::Columns { table, difference };
    if source.is_empty() || target.is_empty() {
        let missing = if source.is_empty() {
            "source"
        } else {
            "target"
        };
        return Err(differ(format!("the {missing} has no such table")));
    }
    let mut problems = Vec::new();
    let mut columns = Vec::new();
    for (name, declared) in source {
        let Some(kind) = Kind::of_sqlite(declared) else {
            problems.push(format!("{name} is of type {declared} in the source"));
            continue;
        };
        match target.iter().find(|(other, _)| other == name) {
            None => problems.push(format!("{name} is in the source only")),
            Some((_, data_type)) if Kind::of_postgres(data_type) != Some(kind) => problems.push(
                format!("{name} is {declared} in the source, {data_type} in the target"),
            ),
            Some(_) => columns.push((name.clone(), kind)),
        }
    }
    for (name, _) in target {
        if !source.iter().any(|(other, _)| other == name) {
            problems.push(format!("{name} is in the target only"));
        }
    }
    if problems.is_empty() {
        Ok(columns)
    } else {
        Err(differ(problems.join("; ")))
    }
}

enum Message {
    Page {
        table: usize,
        rows: Page,
    },
    /// Every row was sent: what the source holds, and the highest id each
    /// identity table has given.
    End {
        held: Totals,
        ids_given: Vec<i64>,
    },
}

/// What a database holds: rows per table, in [`TABLES`]'s order, and the
/// bytes of its artifacts.
struct Totals {
    rows: Vec<u64>,
    artifact_bytes: u64,
}

fn totals(conn: &mut Conn<'_>, plans: &[Plan]) -> Result<Totals, DbError> {
    let rows = plans
        .iter()
        .map(|plan| {
            conn.count(
                &format!("SELECT COUNT(*) FROM {}", plan.table.name),
                params![],
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let artifact_bytes = conn.count(
        "SELECT CAST(COALESCE(SUM(octet_length(data)), 0) AS BIGINT) FROM session_artifacts",
        params![],
    )?;
    Ok(Totals {
        rows,
        artifact_bytes,
    })
}

/// The reading side: every table a page at a time, in one transaction.
fn read_source(
    conn: &mut Conn<'_>,
    plans: &[Plan],
    pages: mpsc::SyncSender<Message>,
) -> Result<(), CopyError> {
    let send = |message| {
        pages
            .send(message)
            .map_err(|_| CopyError::Stopped(Side::Target))
    };
    in_transaction(conn, |src| {
        for (table, plan) in plans.iter().enumerate() {
            let mut limit = FIRST_PAGE_ROWS.min(plan.table.max_page_rows);
            let mut after: Option<Vec<Field>> = None;
            loop {
                let rows = read_page(src, plan, after.as_deref(), limit)?;
                let last_page = rows.len() < limit;
                if let Some(last) = rows.last() {
                    after = Some(plan.key_of(last));
                    let bytes: usize = rows.iter().flatten().map(Field::size).sum();
                    limit =
                        (PAGE_BYTES * rows.len() / bytes.max(1)).clamp(1, plan.table.max_page_rows);
                    send(Message::Page { table, rows })?;
                }
                if last_page {
                    break;
                }
            }
        }
        send(Message::End {
            held: totals(src, plans)?,
            ids_given: ids_given(src, plans)?,
        })
    })
}

/// The highest id each identity table (0 for the others) has ever given,
/// deleted rows' included: SQLite's AUTOINCREMENT never gives one again,
/// and nor shall the target.
fn ids_given(conn: &mut Conn<'_>, plans: &[Plan]) -> Result<Vec<i64>, DbError> {
    plans
        .iter()
        .map(|plan| {
            if !plan.table.identity {
                return Ok(0);
            }
            let given = conn.opt_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                params![plan.table.name],
                |r| r.get::<i64>(0),
            )?;
            Ok(given.unwrap_or(0))
        })
        .collect()
}

fn read_page(
    conn: &mut Conn<'_>,
    plan: &Plan,
    after: Option<&[Field]>,
    limit: usize,
) -> Result<Page, CopyError> {
    let limit = limit as i64;
    let (sql, mut bound): (&str, Vec<&dyn Param>) = match after {
        None => (&plan.first_page, Vec::new()),
        Some(key) => (
            &plan.next_page,
            key.iter().map(|field| field as &dyn Param).collect(),
        ),
    };
    bound.push(&limit);
    let rows = conn.rows(sql, &bound, |row| {
        plan.columns
            .iter()
            .enumerate()
            .map(|(i, (_, kind))| Field::read(row, i, *kind))
            .collect::<Result<Vec<_>, _>>()
    })?;
    for row in &rows {
        plan.check_storable(row)?;
    }
    Ok(rows)
}

/// The writing side: every page, in one transaction, committed once the
/// counts match.
fn write_target(
    conn: &mut Conn<'_>,
    plans: &[Plan],
    pages: mpsc::Receiver<Message>,
) -> Result<Summary, CopyError> {
    in_transaction(conn, |dst| {
        // A hub on the target (there should be none) waits until the copy
        // is committed or rolled back rather than write beside it.
        let names: Vec<&str> = plans.iter().map(|plan| plan.table.name).collect();
        dst.batch(&format!(
            "LOCK TABLE {} IN EXCLUSIVE MODE",
            names.join(", ")
        ))?;
        refuse_unless_empty(dst, plans)?;
        let mut copied = vec![0u64; plans.len()];
        loop {
            match pages.recv() {
                Ok(Message::Page { table, rows }) => {
                    copied[table] += insert(dst, &plans[table], &rows)?;
                }
                Ok(Message::End { held, ids_given }) => {
                    for (plan, given) in plans.iter().zip(ids_given) {
                        if plan.table.identity {
                            move_identity_past_ids(dst, plan.table.name, given)?;
                        }
                    }
                    let target = totals(dst, plans)?;
                    check_counts(plans, &held, &copied, &target)?;
                    return Ok(Summary {
                        tables: names.iter().copied().zip(target.rows).collect(),
                        artifact_bytes: target.artifact_bytes,
                    });
                }
                Err(mpsc::RecvError) => return Err(CopyError::Stopped(Side::Source)),
            }
        }
    })
}

fn refuse_unless_empty(conn: &mut Conn<'_>, plans: &[Plan]) -> Result<(), CopyError> {
    let mut found = Vec::new();
    for plan in plans.iter().filter(|plan| !plan.table.seeded) {
        let rows = conn.count(
            &format!("SELECT COUNT(*) FROM {}", plan.table.name),
            params![],
        )?;
        if rows > 0 {
            let s = if rows == 1 { "" } else { "s" };
            found.push(format!("{rows} row{s} in {}", plan.table.name));
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(CopyError::TargetNotEmpty(found.join(", ")))
    }
}

/// Inserts a page, a few rows to a statement; returns the rows written.
fn insert(conn: &mut Conn<'_>, plan: &Plan, rows: &[Vec<Field>]) -> Result<u64, DbError> {
    let most = plan.max_insert_rows();
    let mut written = 0;
    let mut rest = rows;
    while !rest.is_empty() {
        // Statements of power-of-two sizes only: whatever the pages' sizes,
        // the connection prepares and keeps a handful per table.
        let n = 1 << rest.len().min(most).ilog2();
        let (chunk, next) = rest.split_at(n);
        let bound: Vec<&dyn Param> = chunk
            .iter()
            .flatten()
            .map(|field| field as &dyn Param)
            .collect();
        written += conn.execute(&plan.insert_sql(n), &bound)?;
        rest = next;
    }
    Ok(written)
}

/// The identity's next value is one past both the highest copied id and the
/// highest the source ever gave (`given`), so that new rows neither collide
/// with copied ones nor take a deleted row's id. (1 for a table that never
/// had a row: a sequence cannot be set to 0.)
fn move_identity_past_ids(conn: &mut Conn<'_>, table: &str, given: i64) -> Result<(), DbError> {
    conn.row(
        &format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'), \
             GREATEST(COALESCE(MAX(id), 0), ?1) + 1, false) FROM {table}"
        ),
        params![given],
        |r| r.get::<i64>(0),
    )?;
    Ok(())
}

fn check_counts(
    plans: &[Plan],
    source: &Totals,
    copied: &[u64],
    target: &Totals,
) -> Result<(), CopyError> {
    let mut differences = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let (held, copied, now) = (source.rows[i], copied[i], target.rows[i]);
        if held != copied || copied != now {
            differences.push(format!(
                "{}: {held} rows in the source, {copied} copied, {now} in the target",
                plan.table.name
            ));
        }
    }
    if source.artifact_bytes != target.artifact_bytes {
        differences.push(format!(
            "artifacts: {} bytes in the source, {} in the target",
            source.artifact_bytes, target.artifact_bytes
        ));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(CopyError::CountsDiffer(differences.join("; ")))
    }
}

/// [`Conn::transaction`] for work that fails with a [`CopyError`]: any
/// failure rolls the transaction back, and comes back as it was.
fn in_transaction<T>(
    conn: &mut Conn<'_>,
    f: impl FnOnce(&mut Conn<'_>) -> Result<T, CopyError>,
) -> Result<T, CopyError> {
    let mut failure = None;
    let result = conn.transaction(|tx| {
        f(tx).map_err(|e| match e {
            CopyError::Db(e) => e,
            other => {
                failure = Some(other);
                DbError::Task("the copy failed".into())
            }
        })
    });
    match failure {
        Some(failure) => Err(failure),
        None => result.map_err(CopyError::from),
    }
}

/// `tasuki-hub migrate`: copies the SQLite database of a stopped hub
/// (`source`, with its master key file) into an empty PostgreSQL database.
pub async fn migrate(
    source: &StoreArgs,
    target: &Location,
    target_password_file: Option<&Path>,
    target_ca_file: Option<&Path>,
) -> anyhow::Result<()> {
    let Location::Sqlite(file) = &source.db else {
        bail!(
            "--from is the hub's SQLite database (a file, or sqlite:PATH), not {}; migrate copies \
             from SQLite into PostgreSQL",
            source.db
        );
    };
    if !matches!(target, Location::Postgres(_)) {
        bail!(
            "--to is the PostgreSQL database to copy into (postgres://user@host/db), not \
             {target}; migrate copies from SQLite into PostgreSQL"
        );
    }
    // Opening a missing file would make a new, empty database, and copy that.
    match std::fs::metadata(file) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => bail!("the source {} is not a database file", file.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("there is no database {} to migrate", file.display())
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the source {}", file.display()));
        }
    }
    let key_file = source.key_file()?;
    let (source_db, master) = store::open(source)
        .await
        .with_context(|| format!("cannot open the source {}", source.db))?;
    check_master_key(&source_db, &master, &key_file).await?;
    let target_location =
        store::with_password_file(target, target_password_file, "--to-password-file")?;
    let target_db = Db::open(&target_location, target_ca_file)
        .await
        .with_context(|| format!("cannot open the target {target}"))?;

    eprintln!("copying {} into {target}", source.db);
    let summary = copy(&source_db, &target_db)
        .await
        .with_context(|| format!("cannot migrate {} into {target}", source.db))?;

    let width = TABLES.iter().map(|t| t.name.len()).max().unwrap_or(0);
    eprintln!("copied, every table's count checked against the source's:");
    for (table, rows) in &summary.tables {
        let artifacts = if *table == "session_artifacts" {
            format!(" ({} bytes)", summary.artifact_bytes)
        } else {
            String::new()
        };
        let s = if *rows == 1 { "" } else { "s" };
        eprintln!("  {table:<width$} {rows:>9} row{s}{artifacts}");
    }
    let key_file = std::path::absolute(&key_file).unwrap_or(key_file);
    let password_file = target_password_file
        .map(|file| format!(" --db-password-file {}", file.display()))
        .unwrap_or_default();
    eprintln!(
        "The secrets (access keys, secret params) were copied sealed with the master key in {key}: \
         start every hub of the new database with\n  \
         tasuki-hub serve --db {target}{password_file} --master-key {key}\n\
         and keep that file (and a copy of it somewhere safe): the secrets open with it only.",
        key = key_file.display()
    );
    Ok(())
}

/// Every access key's secret must open with the master key: with another
/// key file the copy would hold secrets no hub could open.
async fn check_master_key(db: &Db, master: &MasterKey, key_file: &Path) -> anyhow::Result<()> {
    let sealed = db
        .call(|conn| {
            let mut sealed = Vec::new();
            for summary in keys::list(conn)? {
                sealed.extend(keys::find(conn, &summary.id)?);
            }
            Ok(sealed)
        })
        .await?;
    for key in sealed {
        if master.open(&key.id, &key.nonce, &key.sealed).is_err() {
            bail!(
                "the master key file {} does not open the secret of access key {}: it is not the \
                 key this database was sealed with; give that one with --master-key",
                key_file.display(),
                key.id
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, ty)| (name.to_string(), ty.to_string()))
            .collect()
    }

    #[test]
    fn the_schemas_must_have_the_same_columns() {
        let source = columns(&[("id", "INTEGER"), ("name", "TEXT"), ("data", "BLOB")]);
        let target = columns(&[("id", "bigint"), ("name", "text"), ("data", "bytea")]);
        let same = same_columns("t", &source, &target).unwrap();
        assert_eq!(
            same.iter().map(|(_, kind)| *kind).collect::<Vec<_>>(),
            [Kind::Integer, Kind::Text, Kind::Blob]
        );

        let target = columns(&[("id", "bigint"), ("name", "bytea"), ("extra", "text")]);
        let err = same_columns("t", &source, &target).unwrap_err().to_string();
        assert!(
            err.contains("name is TEXT in the source, bytea in the target"),
            "{err}"
        );
        assert!(err.contains("data is in the source only"), "{err}");
        assert!(err.contains("extra is in the target only"), "{err}");
    }

    /// Tables of the schema that are not copied: `api_calls` holds the
    /// current minute's quota counts of hubs sharing a database, which a
    /// lone SQLite hub never writes; `trigger_deliveries` the signatures
    /// of the last minutes, refused again within them.
    const NOT_COPIED: &[&str] = &["api_calls", "trigger_deliveries"];

    #[test]
    fn every_table_of_the_schema_is_copied() {
        let conn = db::test_connection();
        let mut statement = conn
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' ORDER BY name",
            )
            .unwrap();
        let mut schema: Vec<String> = statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        schema.sort();
        let mut known: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
        known.extend(NOT_COPIED);
        known.sort();
        assert_eq!(
            schema, known,
            "a new table needs its place in TABLES (or NOT_COPIED)"
        );
    }

    #[test]
    fn inserts_stay_within_the_parameter_limit() {
        let wide: Vec<(String, Kind)> =
            (0..100).map(|i| (format!("c{i}"), Kind::Integer)).collect();
        let plan = Plan::new(&TABLES[0], {
            let mut cols = vec![("id".to_string(), Kind::Text)];
            cols.extend(wide);
            cols
        })
        .unwrap();
        let rows = plan.max_insert_rows();
        assert!(rows.is_power_of_two());
        assert!(rows * plan.columns.len() <= MAX_STATEMENT_PARAMS);
        assert!(plan.insert_sql(2).ends_with(&format!("?{})", 2 * 101)));
    }

    #[test]
    fn the_counter_row_is_overwritten() {
        let counter = TABLES.iter().find(|t| t.name == "secret_purges").unwrap();
        let plan = Plan::new(
            counter,
            vec![
                ("id".to_string(), Kind::Integer),
                ("count".to_string(), Kind::Integer),
            ],
        )
        .unwrap();
        assert_eq!(
            plan.insert_sql(1),
            "INSERT INTO secret_purges (id, count) VALUES (?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET count = excluded.count"
        );
    }
}
