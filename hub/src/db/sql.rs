//! One way to speak SQL to either database, so that every table module is
//! written once: the statements, the guards in their WHERE clauses and the
//! transactions they need are the same facts on SQLite and on PostgreSQL.
//!
//! [`Conn`] is a connection of either kind, used from a blocking thread
//! (`Db::call`). Statements are written with SQLite's `?1` placeholders
//! and turned into PostgreSQL's `$1` once per connection, when first
//! prepared. Parameters are the few types both drivers read alike
//! ([`Param`]), and columns are read through [`Column`], which accepts
//! any integer width PostgreSQL gives (a `CASE ... THEN 1` is an `int4`
//! there, an `INTEGER` here). Where the engines really differ (JSON
//! functions, `FOR UPDATE SKIP LOCKED`), a module asks [`Conn::dialect`].

use std::collections::HashMap;

use tokio_postgres::types::{ToSql, Type};

use super::DbError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value both drivers bind the same way. Booleans are not among them:
/// flags are integer columns (0 or 1) in both schemas, so that statements
/// that compare them read the same.
pub trait Param {
    fn sqlite(&self) -> &dyn rusqlite::ToSql;
    fn postgres(&self) -> &(dyn ToSql + Sync);
}

macro_rules! both_drivers {
    ($($t:ty),* $(,)?) => {$(
        impl Param for $t {
            fn sqlite(&self) -> &dyn rusqlite::ToSql {
                self
            }
            fn postgres(&self) -> &(dyn ToSql + Sync) {
                self
            }
        }
    )*};
}

both_drivers!(
    i64,
    f64,
    String,
    &str,
    Vec<u8>,
    &[u8],
    Option<i64>,
    Option<String>,
    Option<&str>,
    Option<Vec<u8>>,
    Option<&[u8]>,
);

/// A parameter borrowed (rows iterated by reference).
impl<T: Param> Param for &T {
    fn sqlite(&self) -> &dyn rusqlite::ToSql {
        (**self).sqlite()
    }
    fn postgres(&self) -> &(dyn ToSql + Sync) {
        (**self).postgres()
    }
}

/// `params![a, b]`: a statement's parameters, in `?1`, `?2` order.
macro_rules! params {
    ($($p:expr),* $(,)?) => {
        &[$(&$p as &dyn $crate::db::sql::Param),*] as &[&dyn $crate::db::sql::Param]
    };
}
pub(crate) use params;

/// A column's value as either driver hands it over.
pub enum Value<'r> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'r str),
    Blob(&'r [u8]),
}

impl Value<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real",
            Value::Text(_) => "text",
            Value::Blob(_) => "a blob",
        }
    }
}

/// A Rust type a column is read into.
pub trait Column: Sized {
    fn from_value(value: Value<'_>) -> Result<Self, String>;
}

fn wrong(what: &str, value: &Value<'_>) -> String {
    format!("expected {what}, found {}", value.kind())
}

impl Column for i64 {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Int(n) => Ok(n),
            other => Err(wrong("an integer", &other)),
        }
    }
}

macro_rules! narrow_integer {
    ($($t:ty),*) => {$(
        impl Column for $t {
            fn from_value(value: Value<'_>) -> Result<Self, String> {
                let n = i64::from_value(value)?;
                <$t>::try_from(n).map_err(|_| format!("{n} is out of range for {}", stringify!($t)))
            }
        }
    )*};
}
narrow_integer!(u64, u32, i32, usize);

impl Column for bool {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        Ok(i64::from_value(value)? != 0)
    }
}

impl Column for f64 {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Real(x) => Ok(x),
            Value::Int(n) => Ok(n as f64),
            other => Err(wrong("a real", &other)),
        }
    }
}

impl Column for String {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Text(s) => Ok(s.to_owned()),
            other => Err(wrong("text", &other)),
        }
    }
}

impl Column for Vec<u8> {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Blob(b) => Ok(b.to_vec()),
            other => Err(wrong("a blob", &other)),
        }
    }
}

impl<T: Column> Column for Option<T> {
    fn from_value(value: Value<'_>) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

/// One row of a result, from either driver.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r tokio_postgres::Row),
}

impl Row<'_> {
    pub fn get<T: Column>(&self, idx: usize) -> Result<T, DbError> {
        let corrupt = |e: String| DbError::Corrupt(format!("column {idx}: {e}"));
        match self {
            Row::Sqlite(row) => {
                use rusqlite::types::ValueRef;
                let value = match row.get_ref(idx)? {
                    ValueRef::Null => Value::Null,
                    ValueRef::Integer(n) => Value::Int(n),
                    ValueRef::Real(x) => Value::Real(x),
                    ValueRef::Text(t) => {
                        Value::Text(std::str::from_utf8(t).map_err(|e| corrupt(e.to_string()))?)
                    }
                    ValueRef::Blob(b) => Value::Blob(b),
                };
                T::from_value(value).map_err(corrupt)
            }
            Row::Postgres(row) => T::from_value(pg_value(row, idx)?).map_err(corrupt),
        }
    }
}

fn pg_value(row: &tokio_postgres::Row, idx: usize) -> Result<Value<'_>, DbError> {
    let ty = row
        .columns()
        .get(idx)
        .ok_or_else(|| DbError::Corrupt(format!("no column {idx}")))?
        .type_()
        .clone();
    let value = match ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(idx)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(idx)?
            .map(|n| Value::Int(n.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(idx)?
            .map(|n| Value::Int(n.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(idx)?
            .map(|b| Value::Int(b.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(idx)?.map(Value::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(idx)?
            .map(|x| Value::Real(x.into())),
        Type::BYTEA => row.try_get::<_, Option<&[u8]>>(idx)?.map(Value::Blob),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            row.try_get::<_, Option<&str>>(idx)?.map(Value::Text)
        }
        other => {
            return Err(DbError::Corrupt(format!(
                "column {idx} has the type {other}, which the hub does not read"
            )));
        }
    };
    Ok(value.unwrap_or(Value::Null))
}

/// A PostgreSQL connection of the pool, with the statements it has
/// prepared (a statement is parsed once per connection, as SQLite's
/// cache does).
pub struct PgConn {
    pub(super) client: tokio_postgres::Client,
    statements: HashMap<String, tokio_postgres::Statement>,
    /// The runtime whose tasks drive the connection; statements block on
    /// it from the blocking pool.
    handle: tokio::runtime::Handle,
    /// Inside a transaction that failed: the pool must not take it back.
    pub(super) broken: bool,
}

impl PgConn {
    pub fn new(client: tokio_postgres::Client, handle: tokio::runtime::Handle) -> PgConn {
        PgConn {
            client,
            statements: HashMap::new(),
            handle,
            broken: false,
        }
    }

    fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, DbError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let translated = dollar_placeholders(sql);
        let statement = self.handle.block_on(self.client.prepare(&translated))?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, DbError> {
        let client = &self.client;
        self.handle.block_on(f(client)).map_err(DbError::from)
    }
}

/// `?1` → `$1`, outside quoted text and identifiers.
fn dollar_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' => {
                out.push('$');
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

enum Inner<'a> {
    Sqlite(&'a mut rusqlite::Connection),
    Postgres(&'a mut PgConn),
}

/// A connection of either kind, lent to one `Db::call`.
pub struct Conn<'a> {
    inner: Inner<'a>,
    in_transaction: bool,
}

impl<'a> Conn<'a> {
    pub(super) fn sqlite(conn: &'a mut rusqlite::Connection) -> Conn<'a> {
        Conn {
            inner: Inner::Sqlite(conn),
            in_transaction: false,
        }
    }

    pub(super) fn postgres(conn: &'a mut PgConn) -> Conn<'a> {
        Conn {
            inner: Inner::Postgres(conn),
            in_transaction: false,
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self.inner {
            Inner::Sqlite(_) => Dialect::Sqlite,
            Inner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The SQLite connection itself, for what only SQLite has (pragmas,
    /// checkpoints); `None` on PostgreSQL.
    pub fn as_sqlite(&mut self) -> Option<&mut rusqlite::Connection> {
        match &mut self.inner {
            Inner::Sqlite(conn) => Some(conn),
            Inner::Postgres(_) => None,
        }
    }

    /// Runs a statement; returns the rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbError> {
        match &mut self.inner {
            Inner::Sqlite(conn) => {
                let params: Vec<&dyn rusqlite::ToSql> = params.iter().map(|p| p.sqlite()).collect();
                Ok(conn.prepare_cached(sql)?.execute(&params[..])? as u64)
            }
            Inner::Postgres(pg) => {
                let statement = pg.statement(sql)?;
                let params: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p.postgres()).collect();
                pg.run(async |client| client.execute(&statement, &params).await)
            }
        }
    }

    /// Every row of a query, each through `f`.
    pub fn rows<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        match &mut self.inner {
            Inner::Sqlite(conn) => {
                let params: Vec<&dyn rusqlite::ToSql> = params.iter().map(|p| p.sqlite()).collect();
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query(&params[..])?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(f(&Row::Sqlite(row))?);
                }
                Ok(out)
            }
            Inner::Postgres(pg) => {
                let statement = pg.statement(sql)?;
                let params: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p.postgres()).collect();
                let rows = pg.run(async |client| client.query(&statement, &params).await)?;
                rows.iter().map(|row| f(&Row::Postgres(row))).collect()
            }
        }
    }

    /// The first row of a query, if there is one.
    pub fn opt_row<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<Option<T>, DbError> {
        match &mut self.inner {
            Inner::Sqlite(conn) => {
                let params: Vec<&dyn rusqlite::ToSql> = params.iter().map(|p| p.sqlite()).collect();
                let mut statement = conn.prepare_cached(sql)?;
                let mut rows = statement.query(&params[..])?;
                match rows.next()? {
                    Some(row) => f(&Row::Sqlite(row)).map(Some),
                    None => Ok(None),
                }
            }
            Inner::Postgres(pg) => {
                let statement = pg.statement(sql)?;
                let params: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| p.postgres()).collect();
                let rows = pg.run(async |client| client.query(&statement, &params).await)?;
                match rows.first() {
                    Some(row) => f(&Row::Postgres(row)).map(Some),
                    None => Ok(None),
                }
            }
        }
    }

    /// The first row of a query, which must have one.
    pub fn row<T>(
        &mut self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        self.opt_row(sql, params, f)?
            .ok_or_else(|| DbError::Corrupt(format!("no row from: {}", first_line(sql))))
    }

    /// A `COUNT(*)`-like query's one integer.
    pub fn count(&mut self, sql: &str, params: &[&dyn Param]) -> Result<u64, DbError> {
        let n: i64 = self.row(sql, params, |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// Whether the rows `from_where` (`FROM … WHERE …`) names include one.
    pub fn exists(&mut self, from_where: &str, params: &[&dyn Param]) -> Result<bool, DbError> {
        Ok(self
            .opt_row(
                &format!("SELECT 1 {from_where} LIMIT 1"),
                params,
                |_| Ok(()),
            )?
            .is_some())
    }

    /// Statements without parameters or results, one after another.
    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match &mut self.inner {
            Inner::Sqlite(conn) => Ok(conn.execute_batch(sql)?),
            Inner::Postgres(pg) => pg.run(async |client| client.batch_execute(sql).await),
        }
    }

    /// Runs `f` in a transaction: committed if it returns `Ok`, rolled
    /// back otherwise. On SQLite the write lock is taken at the start
    /// (`BEGIN IMMEDIATE`): a transaction that reads and then writes would
    /// otherwise fail at once when another process (`tasuki-hub robots`)
    /// wrote in between. Nested calls join the outer transaction.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Conn<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        if self.in_transaction {
            return f(self);
        }
        let begin = match self.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        };
        self.batch(begin)?;
        self.in_transaction = true;
        let result = f(self);
        self.in_transaction = false;
        match result {
            Ok(value) => {
                if let Err(e) = self.batch("COMMIT") {
                    self.abandon();
                    return Err(e);
                }
                Ok(value)
            }
            Err(e) => {
                self.abandon();
                Err(e)
            }
        }
    }

    /// Rolls back after a failure; a connection that cannot even do that
    /// is not given back to the pool.
    fn abandon(&mut self) {
        if self.batch("ROLLBACK").is_err()
            && let Inner::Postgres(pg) = &mut self.inner
        {
            pg.broken = true;
        }
    }
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            dollar_placeholders("SELECT a FROM t WHERE b = ?1 AND c = '?2' AND \"d?\" = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = '?2' AND \"d?\" = $12"
        );
    }

    #[test]
    fn rows_read_through_the_column_types() {
        let mut raw = rusqlite::Connection::open_in_memory().unwrap();
        let mut conn = Conn::sqlite(&mut raw);
        conn.batch("CREATE TABLE t (n INTEGER, s TEXT, b BLOB)")
            .unwrap();
        conn.execute(
            "INSERT INTO t (n, s, b) VALUES (?1, ?2, ?3)",
            params![7i64, "seven", vec![7u8]],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO t (n, s, b) VALUES (?1, ?2, ?3)",
            params![None::<i64>, None::<String>, None::<Vec<u8>>],
        )
        .unwrap();
        let rows = conn
            .rows("SELECT n, s, b FROM t ORDER BY n IS NULL", params![], |r| {
                Ok((
                    r.get::<Option<i64>>(0)?,
                    r.get::<Option<String>>(1)?,
                    r.get::<Option<Vec<u8>>>(2)?,
                ))
            })
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (Some(7), Some("seven".to_owned()), Some(vec![7])),
                (None, None, None)
            ]
        );
        let err = conn
            .row("SELECT s FROM t WHERE n = 7", params![], |r| {
                r.get::<i64>(0)
            })
            .unwrap_err();
        assert!(err.to_string().contains("expected an integer"), "{err}");
    }

    #[test]
    fn a_failed_transaction_is_rolled_back() {
        let mut raw = rusqlite::Connection::open_in_memory().unwrap();
        let mut conn = Conn::sqlite(&mut raw);
        conn.batch("CREATE TABLE t (n INTEGER)").unwrap();
        let failed: Result<(), DbError> = conn.transaction(|tx| {
            tx.execute("INSERT INTO t (n) VALUES (1)", params![])?;
            Err(DbError::Corrupt("stop".into()))
        });
        assert!(failed.is_err());
        assert_eq!(conn.count("SELECT COUNT(*) FROM t", params![]).unwrap(), 0);
        conn.transaction(|tx| tx.execute("INSERT INTO t (n) VALUES (2)", params![]))
            .unwrap();
        assert_eq!(conn.count("SELECT COUNT(*) FROM t", params![]).unwrap(), 1);
    }
}
