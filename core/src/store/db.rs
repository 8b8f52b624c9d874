//! The store's database engines: one [`Db`] over an SQLite `rusqlite::Connection` or
//! a PostgreSQL `postgres::Client`, with the call surface of the rusqlite subset the
//! store uses (`execute`, `query_row`, [`OptionalExtension::optional`],
//! `prepare`/`query_map`, [`Db::transaction`], `RETURNING`), so store code is written
//! once for both.
//!
//! **Writing a portable query.**
//! - Parameters are `?N` (numbered from 1), bound with [`params!`] or an array; they
//!   become `$N` for PostgreSQL (a `?` inside a '…' string literal stays). Plain `?`
//!   is numbered in order. Values are [`Value`]s: 64-bit integers, text, bytes, NULL;
//!   a `bool` binds as an integer (or as a boolean where PostgreSQL expects one);
//!   test it as `CAST(?N AS BIGINT) <> 0`, never as a bare condition.
//! - A parameter PostgreSQL cannot type from its surroundings (`?1 IS NULL OR x = ?1`
//!   types `?1` twice) gets a cast: `CAST(?1 AS BIGINT) IS NULL OR x = ?1`.
//! - Columns are `BIGINT`/`INTEGER` (SQLite) and `BIGINT` (PostgreSQL) for integers,
//!   `BLOB`/`BYTEA` for bytes: the DDL is per engine (`schema.rs`), the queries not.
//! - `INSERT … ON CONFLICT (…) DO NOTHING`/`DO UPDATE SET x = excluded.x` and
//!   `RETURNING id` (never `last_insert_rowid`, never `INSERT OR IGNORE`).
//! - No SQLite-only functions (`ifnull`, two-argument `max`, `CAST(x AS BLOB)`, `GLOB`)
//!   and no PostgreSQL-only ones; `count(*) FILTER (WHERE …)` works in both. An
//!   aggregate `sum` is `CAST(sum(x) AS BIGINT)` (PostgreSQL sums to NUMERIC).
//! - Order explicitly where NULLs meet (`ORDER BY x IS NULL, x`): the engines sort NULL
//!   at opposite ends.
//!
//! **Transactions.** [`Db::transaction`] is a write transaction that runs alone, as
//! SQLite's `BEGIN IMMEDIATE` does: on PostgreSQL it takes a transaction-scoped
//! advisory lock ([`WRITE_LOCK`]) right after `BEGIN` (READ COMMITTED), so every
//! statement after it sees every earlier write and no other writer (in any process or
//! node) runs until it ends. The store's invariants (a PID never reissued, used only
//! with its device, intent recorded before action) are argued for one writer at a
//! time; this keeps that argument true on PostgreSQL without per-query `FOR UPDATE`
//! audits or serialization-failure retries. Writers wait up to the busy timeout
//! (`lock_timeout`) and then fail with `Busy`, as on SQLite. A single statement
//! outside a transaction (a job's step, a device's last contact) does not take the
//! lock: it is atomic by itself and must not depend on an earlier read — anything
//! that reads to decide a write belongs in a transaction.
//!
//! **Connections.** One `Db` is one connection, owned by one thread (the PostgreSQL
//! client sits in a `RefCell` so that reads take `&self` as with rusqlite). The server
//! keeps its single store thread on both engines: write transactions are serialized
//! either way, reads are short, and extra connections would mostly wait on the write
//! lock; several nodes scale by process. The sync `postgres` client runs its own
//! small runtime: never call it from inside a tokio runtime thread (the store thread
//! and the API's blocking threads are plain threads).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use postgres::types::{IsNull, Type};

/// The advisory lock key every PostgreSQL write transaction holds ("vprv" as ASCII).
pub const WRITE_LOCK: i64 = 0x7670_7276;

/// A value bound to or read from a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Integer(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// A database error, from either engine or from a value that does not fit its type.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("the query returned no rows")]
    NoRows,
    #[error("column {index}: {message}")]
    Column { index: usize, message: String },
}

/// A PostgreSQL error with the server's detail (the client's own `Display` says only
/// "db error").
fn postgres_message(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            // The cause says why (e.g. the TLS handshake's certificate error).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

impl Error {
    /// PostgreSQL gave up waiting for a lock (`lock_timeout`) or broke a deadlock.
    pub fn postgres_busy(&self) -> bool {
        matches!(self.sqlstate(), Some("55P03" | "40P01" | "40001"))
    }

    /// The PostgreSQL SQLSTATE, if this is a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Postgres(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// rusqlite's `optional()`: no row becomes `None`.
pub trait OptionalExtension<T> {
    fn optional(self) -> Result<Option<T>>;
}

impl<T> OptionalExtension<T> for Result<T> {
    fn optional(self) -> Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(Error::NoRows) => Ok(None),
            Err(Error::Sqlite(rusqlite::Error::QueryReturnedNoRows)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A Rust value that binds as a [`Value`].
pub trait ToSql {
    fn to_value(&self) -> Value;
}

impl ToSql for Value {
    fn to_value(&self) -> Value {
        self.clone()
    }
}
impl<T: ToSql + ?Sized> ToSql for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToSql> ToSql for Option<T> {
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, T::to_value)
    }
}
impl ToSql for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToSql for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl ToSql for [u8] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToSql for Vec<u8> {
    fn to_value(&self) -> Value {
        Value::Blob(self.clone())
    }
}
impl<const N: usize> ToSql for [u8; N] {
    fn to_value(&self) -> Value {
        Value::Blob(self.to_vec())
    }
}
impl ToSql for bool {
    fn to_value(&self) -> Value {
        Value::Integer(i64::from(*self))
    }
}
macro_rules! int_to_sql {
    ($($t:ty),*) => {$(
        impl ToSql for $t {
            fn to_value(&self) -> Value {
                // Counts and sizes beyond i64 cannot occur; saturate rather than wrap.
                Value::Integer(i64::try_from(*self).unwrap_or(i64::MAX))
            }
        }
    )*};
}
int_to_sql!(i32, i64, u32, u64, usize);

/// A type read from a column.
pub trait FromSql: Sized {
    fn from_value(value: Value) -> Result<Self, String>;
}

impl FromSql for Value {
    fn from_value(value: Value) -> Result<Self, String> {
        Ok(value)
    }
}
impl<T: FromSql> FromSql for Option<T> {
    fn from_value(value: Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}
impl FromSql for String {
    fn from_value(value: Value) -> Result<Self, String> {
        match value {
            Value::Text(s) => Ok(s),
            other => Err(format!("expected text, found {other:?}")),
        }
    }
}
impl FromSql for Vec<u8> {
    fn from_value(value: Value) -> Result<Self, String> {
        match value {
            Value::Blob(b) => Ok(b),
            other => Err(format!("expected bytes, found {other:?}")),
        }
    }
}
impl FromSql for bool {
    fn from_value(value: Value) -> Result<Self, String> {
        i64::from_value(value).map(|n| n != 0)
    }
}
impl FromSql for i64 {
    fn from_value(value: Value) -> Result<Self, String> {
        match value {
            Value::Integer(n) => Ok(n),
            other => Err(format!("expected an integer, found {other:?}")),
        }
    }
}
macro_rules! int_from_sql {
    ($($t:ty),*) => {$(
        impl FromSql for $t {
            fn from_value(value: Value) -> Result<Self, String> {
                let n = i64::from_value(value)?;
                <$t>::try_from(n).map_err(|_| format!("{n} is out of range"))
            }
        }
    )*};
}
int_from_sql!(i32, u32, u64, usize);

/// Parameters of a query: [`params!`], an array of values, or a `Vec<Value>`.
pub trait Params {
    fn values(self) -> Vec<Value>;
}
impl Params for &[&dyn ToSql] {
    fn values(self) -> Vec<Value> {
        self.iter().map(|v| v.to_value()).collect()
    }
}
impl Params for Vec<Value> {
    fn values(self) -> Vec<Value> {
        self
    }
}
impl Params for [&dyn ToSql; 0] {
    fn values(self) -> Vec<Value> {
        Vec::new()
    }
}
macro_rules! array_params {
    ($($n:literal),*) => {$(
        impl<T: ToSql> Params for [T; $n] {
            fn values(self) -> Vec<Value> {
                self.iter().map(ToSql::to_value).collect()
            }
        }
    )*};
}
array_params!(1, 2, 3, 4, 5, 6, 7, 8);

/// rusqlite's `params!`: a list of values of any [`ToSql`] types.
#[macro_export]
macro_rules! store_params {
    () => { &[] as &[&dyn $crate::store::db::ToSql] };
    ($($p:expr),+ $(,)?) => { &[$(&$p as &dyn $crate::store::db::ToSql),+] as &[&dyn $crate::store::db::ToSql] };
}
pub use crate::store_params as params;

/// One result row.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

/// A column index (rusqlite's `get::<_, T>(i)` shape).
pub trait ColumnIndex {
    fn index(self) -> usize;
}
impl ColumnIndex for usize {
    fn index(self) -> usize {
        self
    }
}

impl Row<'_> {
    /// Column `index` (from 0) as `T`.
    pub fn get<I: ColumnIndex, T: FromSql>(&self, index: I) -> Result<T> {
        let index = index.index();
        let value = match self {
            Row::Sqlite(r) => sqlite_value(r.get_ref(index)?),
            Row::Postgres(r) => postgres_value(r, index)?,
        };
        T::from_value(value).map_err(|message| Error::Column { index, message })
    }
}

fn sqlite_value(v: rusqlite::types::ValueRef<'_>) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(n) => Value::Integer(n),
        // The schema has no REAL columns; a stray one reads as its integer part.
        ValueRef::Real(f) => Value::Integer(f as i64),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

fn postgres_value(row: &postgres::Row, index: usize) -> Result<Value> {
    let column_type = row
        .columns()
        .get(index)
        .ok_or_else(|| Error::Column {
            index,
            message: "no such column".into(),
        })?
        .type_()
        .clone();
    let value = match column_type {
        Type::INT8 => row.try_get::<_, Option<i64>>(index)?.map(Value::Integer),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)?
            .map(|n| Value::Integer(n.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)?
            .map(|n| Value::Integer(n.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(index)?
            .map(|b| Value::Integer(b.into())),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(index)?.map(Value::Blob),
        _ => row.try_get::<_, Option<String>>(index)?.map(Value::Text),
    };
    Ok(value.unwrap_or(Value::Null))
}

/// A [`Value`] bound to a PostgreSQL parameter: written in the type the server
/// inferred for it.
#[derive(Debug)]
struct PgValue(Value);

impl postgres::types::ToSql for PgValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match (&self.0, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Integer(n), &Type::INT8) => n.to_sql(ty, out),
            (Value::Integer(n), &Type::INT4) => i32::try_from(*n)?.to_sql(ty, out),
            (Value::Integer(n), &Type::INT2) => i16::try_from(*n)?.to_sql(ty, out),
            (Value::Integer(n), &Type::BOOL) => (*n != 0).to_sql(ty, out),
            (Value::Integer(n), _) => n.to_string().as_str().to_sql(ty, out),
            (Value::Text(s), _) => s.as_str().to_sql(ty, out),
            (Value::Blob(b), _) => b.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// `?N` and `?` placeholders as PostgreSQL's `$N`, leaving string literals, quoted
/// identifiers and comments alone.
pub fn postgres_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut next = 1usize;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                let mut digits = String::new();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(*d);
                    chars.next();
                }
                if digits.is_empty() {
                    digits = next.to_string();
                    next += 1;
                }
                out.push('$');
                out.push_str(&digits);
            }
            _ => out.push(c),
        }
    }
    out
}

/// A PostgreSQL connection and its prepared statements (by the store's SQL text).
pub struct PgConn {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

impl PgConn {
    pub fn new(client: postgres::Client) -> PgConn {
        PgConn {
            client,
            statements: HashMap::new(),
        }
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let statement = self.client.prepare(&postgres_sql(sql))?;
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

enum Engine {
    Sqlite(rusqlite::Connection),
    // Boxed: the client is several times the size of an SQLite connection.
    Postgres(Box<RefCell<PgConn>>),
}

/// One database connection of either engine. See the module docs.
pub struct Db {
    engine: Engine,
    busy_timeout: Duration,
}

impl Db {
    pub fn sqlite(conn: rusqlite::Connection, busy_timeout: Duration) -> Db {
        Db {
            engine: Engine::Sqlite(conn),
            busy_timeout,
        }
    }

    /// Whether this is a PostgreSQL connection the server has closed.
    pub fn connection_lost(&self) -> bool {
        match &self.engine {
            Engine::Sqlite(_) => false,
            Engine::Postgres(pg) => pg.borrow().client.is_closed(),
        }
    }

    /// How long a writer waits for another's write transaction.
    pub fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    pub fn postgres(client: postgres::Client, busy_timeout: Duration) -> Db {
        Db {
            engine: Engine::Postgres(Box::new(RefCell::new(PgConn::new(client)))),
            busy_timeout,
        }
    }

    /// The SQLite connection, for SQLite-only settings (pragmas); `None` on PostgreSQL.
    pub fn as_sqlite(&self) -> Option<&rusqlite::Connection> {
        match &self.engine {
            Engine::Sqlite(c) => Some(c),
            Engine::Postgres(_) => None,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.engine, Engine::Postgres(_))
    }

    /// Runs one statement; returns the number of rows it changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize> {
        let values = params.values();
        match &self.engine {
            Engine::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(values.iter().map(sqlite_bind)))?),
            Engine::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let statement = pg.statement(sql)?;
                let binds: Vec<PgValue> = values.into_iter().map(PgValue).collect();
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = binds
                    .iter()
                    .map(|v| v as &(dyn postgres::types::ToSql + Sync))
                    .collect();
                Ok(pg.client.execute(&statement, &refs)? as usize)
            }
        }
    }

    /// Runs several statements without parameters (DDL).
    pub fn execute_batch(&self, sql: &str) -> Result<()> {
        match &self.engine {
            Engine::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Engine::Postgres(pg) => Ok(pg.borrow_mut().client.batch_execute(sql)?),
        }
    }

    /// Calls `f` with each row in turn (streamed, not collected); stops at its first
    /// error. `f` must not use this `Db`.
    pub fn query_each<P, E>(
        &self,
        sql: &str,
        params: P,
        mut f: impl FnMut(&Row<'_>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        P: Params,
        E: From<Error>,
    {
        let values = params.values();
        match &self.engine {
            Engine::Sqlite(c) => {
                let mut statement = c.prepare_cached(sql).map_err(Error::from)?;
                let mut rows = statement
                    .query(rusqlite::params_from_iter(values.iter().map(sqlite_bind)))
                    .map_err(Error::from)?;
                while let Some(row) = rows.next().map_err(Error::from)? {
                    f(&Row::Sqlite(row))?;
                }
                Ok(())
            }
            Engine::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let statement = pg.statement(sql)?;
                let binds: Vec<PgValue> = values.into_iter().map(PgValue).collect();
                let mut rows = pg
                    .client
                    .query_raw(&statement, binds.iter())
                    .map_err(Error::from)?;
                while let Some(row) = postgres::fallible_iterator::FallibleIterator::next(&mut rows)
                    .map_err(Error::from)?
                {
                    f(&Row::Postgres(&row))?;
                }
                Ok(())
            }
        }
    }

    /// Every row mapped by `f`.
    pub fn query_map<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.query_each(sql, params, |r| {
            out.push(f(r)?);
            Ok::<(), Error>(())
        })?;
        Ok(out)
    }

    /// The first row mapped by `f`; [`Error::NoRows`] if there is none.
    pub fn query_row<T, P: Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut f = Some(f);
        let mut out = None;
        self.query_each(sql, params, |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok::<(), Error>(())
        })?;
        out.ok_or(Error::NoRows)
    }

    /// A statement to run later: rusqlite's `prepare` shape.
    pub fn prepare<'d>(&'d self, sql: &str) -> Result<Statement<'d>> {
        Ok(Statement {
            db: self,
            sql: sql.to_string(),
        })
    }

    /// Starts a write transaction that runs alone (see the module docs), waiting for
    /// another writer up to the busy timeout.
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        match &self.engine {
            Engine::Sqlite(_) => self.execute_batch("BEGIN IMMEDIATE")?,
            Engine::Postgres(_) => {
                self.execute_batch(&format!(
                    "BEGIN ISOLATION LEVEL READ COMMITTED; SET LOCAL lock_timeout = {}",
                    self.busy_timeout.as_millis().max(1)
                ))?;
                if let Err(e) =
                    self.query_row("SELECT pg_advisory_xact_lock(?1)", [WRITE_LOCK], |_| Ok(()))
                {
                    let _ = self.execute_batch("ROLLBACK");
                    return Err(e);
                }
            }
        }
        Ok(Transaction {
            db: self,
            open: true,
        })
    }
}

fn sqlite_bind(v: &Value) -> rusqlite::types::ToSqlOutput<'_> {
    use rusqlite::types::{ToSqlOutput, ValueRef};
    ToSqlOutput::Borrowed(match v {
        Value::Null => ValueRef::Null,
        Value::Integer(n) => ValueRef::Integer(*n),
        Value::Text(s) => ValueRef::Text(s.as_bytes()),
        Value::Blob(b) => ValueRef::Blob(b),
    })
}

/// A prepared statement (rusqlite's shape: `query_map`, `execute`).
pub struct Statement<'d> {
    db: &'d Db,
    sql: String,
}

impl Statement<'_> {
    pub fn execute<P: Params>(&mut self, params: P) -> Result<usize> {
        self.db.execute(&self.sql, params)
    }

    pub fn query_row<T, P: Params>(
        &mut self,
        params: P,
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.db.query_row(&self.sql, params, f)
    }

    pub fn query_map<T, P: Params>(
        &mut self,
        params: P,
        f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<std::vec::IntoIter<Result<T>>> {
        let rows = self.db.query_map(&self.sql, params, f)?;
        Ok(rows.into_iter().map(Ok).collect::<Vec<_>>().into_iter())
    }
}

/// A write transaction: rolled back when dropped without [`Transaction::commit`].
pub struct Transaction<'d> {
    db: &'d Db,
    open: bool,
}

impl Transaction<'_> {
    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        // PostgreSQL: announce the change to every listener (`store/changes.rs`); sent
        // with the COMMIT (one round trip), delivered when it is visible.
        let result = match self.db.engine {
            Engine::Sqlite(_) => self.db.execute_batch("COMMIT"),
            Engine::Postgres(_) => self
                .db
                .execute_batch(&format!("NOTIFY {}; COMMIT", super::changes::CHANNEL)),
        };
        if result.is_err() {
            // A commit that failed (SQLite busy) leaves the transaction open.
            let _ = self.db.execute_batch("ROLLBACK");
        }
        result
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Db;
    fn deref(&self) -> &Db {
        self.db
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.db.execute_batch("ROLLBACK");
        }
    }
}
