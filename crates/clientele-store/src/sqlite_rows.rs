//! Many rows written through one prepared statement run on the SQLite connection's own handle.
//!
//! Through sqlx, every statement is a hand-off to the connection's worker thread and back, so a
//! batch is written as a few large statements. Those cost SQLite more per row than one small
//! prepared statement stepped once per row: the rows arrive as a JSON array to unpack, or as
//! hundreds of bound parameters. Search terms, eleven rows per customer, cost 5.1 µs a row that
//! way and 2.6 µs stepped one at a time (docs/benchmarks.md). sqlx lends out the raw handle for
//! such work ([`SqliteConnection::lock_handle`]): while the lock is held its worker thread makes
//! no call on the connection, and the rows are stepped here, on the caller's thread.
//!
//! The lock is held for the whole write, across yields to the runtime every few hundred rows so
//! that a large batch does not starve other tasks of this worker thread.
//!
//! This is the workspace's only `unsafe` code (the workspace denies it; this module alone allows
//! it): five SQLite C calls (prepare, bind, step, reset, finalize) behind one safe function that
//! takes the SQL as a `&str` and the rows as plain values.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_int};
use std::ptr::{self, NonNull};

use clientele_domain::DomainError;
use libsqlite3_sys as ffi;
use sqlx::SqliteConnection;

use crate::error::{db_error, sqlite_error};

/// A value bound to one parameter of a row.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Param<'a> {
    Null,
    Int(i64),
    Text(&'a str),
}

impl<'a> From<Option<&'a str>> for Param<'a> {
    fn from(text: Option<&'a str>) -> Self {
        text.map_or(Param::Null, Param::Text)
    }
}

impl From<bool> for Param<'_> {
    fn from(flag: bool) -> Self {
        Param::Int(i64::from(flag))
    }
}

/// Runs `sql`, one statement with the parameters `?1` to `?N`, once for each row, in the
/// connection's open transaction; with no rows, nothing (not even a prepare). On an error the
/// rows before it stay written: the caller's transaction, which is rolled back on any error, is
/// what keeps a write all-or-nothing.
pub(crate) async fn execute_per_row<const N: usize>(
    connection: &mut SqliteConnection,
    sql: &str,
    rows: &[[Param<'_>; N]],
) -> Result<(), DomainError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = CString::new(sql).map_err(|e| DomainError::Storage(Box::new(e)))?;
    let sql = sql.as_c_str();
    let mut handle = connection.lock_handle().await.map_err(db_error)?;
    for (slice, part) in rows.chunks(ROWS_BETWEEN_YIELDS).enumerate() {
        if slice > 0 {
            // A bulk sync batch runs for milliseconds on this thread: other tasks get their
            // turn in between (the connection stays locked for this write meanwhile).
            tokio::task::yield_now().await;
        }
        write_all(handle.as_raw_handle(), sql, part)?;
    }
    Ok(())
}

/// Rows written between two yields to the runtime: about a millisecond.
const ROWS_BETWEEN_YIELDS: usize = 512;

fn write_all<const N: usize>(
    db: NonNull<ffi::sqlite3>,
    sql: &CStr,
    rows: &[[Param<'_>; N]],
) -> Result<(), DomainError> {
    let statement = Statement::prepare(db, sql)?;
    rows.iter().try_for_each(|row| statement.run(row))
}

/// A prepared statement on a locked connection, finalized when dropped.
struct Statement {
    db: NonNull<ffi::sqlite3>,
    raw: NonNull<ffi::sqlite3_stmt>,
}

impl Statement {
    fn prepare(db: NonNull<ffi::sqlite3>, sql: &CStr) -> Result<Self, DomainError> {
        let mut raw = ptr::null_mut();
        // SAFETY: `db` is an open connection that this thread holds the lock of for as long
        // as the statement lives; `sql` is NUL-terminated and outlives the call.
        let code = unsafe {
            ffi::sqlite3_prepare_v2(db.as_ptr(), sql.as_ptr(), -1, &mut raw, ptr::null_mut())
        };
        match NonNull::new(raw) {
            Some(raw) if code == ffi::SQLITE_OK => Ok(Self { db, raw }),
            _ => Err(last_error(db)),
        }
    }

    /// Binds one row and steps the statement once; it is reset for the next row either way.
    fn run(&self, row: &[Param<'_>]) -> Result<(), DomainError> {
        let result = self.bind(row).and_then(|()| {
            // SAFETY: the statement is live and its parameters are bound.
            match unsafe { ffi::sqlite3_step(self.raw.as_ptr()) } {
                ffi::SQLITE_DONE => Ok(()),
                _ => Err(last_error(self.db)),
            }
        });
        // SAFETY: the statement is live; resetting keeps it prepared for the next row (its
        // result was read above: reset would repeat it).
        unsafe { ffi::sqlite3_reset(self.raw.as_ptr()) };
        result
    }

    fn bind(&self, row: &[Param<'_>]) -> Result<(), DomainError> {
        for (index, param) in row.iter().enumerate() {
            let index = c_int::try_from(index + 1).unwrap_or(c_int::MAX);
            let statement = self.raw.as_ptr();
            // SAFETY: the statement is live; SQLite copies bound text (SQLITE_TRANSIENT), so
            // nothing it keeps points into `row`.
            let code = unsafe {
                match *param {
                    Param::Null => ffi::sqlite3_bind_null(statement, index),
                    Param::Int(value) => ffi::sqlite3_bind_int64(statement, index, value),
                    Param::Text(text) => ffi::sqlite3_bind_text64(
                        statement,
                        index,
                        text.as_ptr().cast(),
                        text.len() as u64,
                        ffi::SQLITE_TRANSIENT(),
                        ffi::SQLITE_UTF8 as u8,
                    ),
                }
            };
            if code != ffi::SQLITE_OK {
                return Err(last_error(self.db));
            }
        }
        Ok(())
    }
}

impl Drop for Statement {
    fn drop(&mut self) {
        // SAFETY: prepared by `Statement::prepare` on a connection still locked, finalized once.
        unsafe { ffi::sqlite3_finalize(self.raw.as_ptr()) };
    }
}

/// The connection's last error, as the domain sees it.
fn last_error(db: NonNull<ffi::sqlite3>) -> DomainError {
    // SAFETY: `db` is open and locked by this thread; the message is NUL-terminated, owned by
    // SQLite and copied before any other call on the connection.
    let (code, message) = unsafe {
        (
            ffi::sqlite3_extended_errcode(db.as_ptr()),
            CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr()))
                .to_string_lossy()
                .into_owned(),
        )
    };
    sqlite_error(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientele_domain::CustomerKey;
    use sqlx::Connection;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    async fn table() -> Result<SqliteConnection, sqlx::Error> {
        let mut connection = SqliteConnection::connect("sqlite::memory:").await?;
        sqlx::query("CREATE TABLE t (id INTEGER NOT NULL, email_norm TEXT UNIQUE, note TEXT)")
            .execute(&mut connection)
            .await?;
        Ok(connection)
    }

    const INSERT: &str = "INSERT INTO t (id, email_norm, note) VALUES (?1, ?2, ?3)";

    #[tokio::test]
    async fn every_row_is_written_with_its_values_in_the_open_transaction() -> TestResult {
        let mut connection = table().await?;
        let mut tx = connection.begin().await?;
        let rows = [(1, Some("a@x"), "ä"), (2, None, "b"), (3, Some("c@x"), "")];
        execute_per_row(
            &mut tx,
            INSERT,
            &rows.map(|(id, email, note)| [Param::Int(id), email.into(), Param::Text(note)]),
        )
        .await?;
        let written: Vec<(i64, Option<String>, String)> =
            sqlx::query_as("SELECT id, email_norm, note FROM t ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
        let expected: Vec<(i64, Option<String>, String)> = rows
            .iter()
            .map(|(id, email, note)| (*id, email.map(str::to_owned), (*note).to_owned()))
            .collect();
        assert_eq!(written, expected);
        tx.rollback().await?;
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&mut connection)
            .await?;
        assert_eq!(left, 0, "the rows belonged to the transaction");
        Ok(())
    }

    #[tokio::test]
    async fn a_unique_clash_names_the_key_and_a_bad_statement_is_a_storage_error() -> TestResult {
        let mut connection = table().await?;
        let clash = execute_per_row(
            &mut connection,
            INSERT,
            &[1, 2].map(|id| [Param::Int(id), Param::Text("same@x"), Param::Null]),
        )
        .await;
        assert!(
            matches!(clash, Err(DomainError::DuplicateKey(CustomerKey::Email))),
            "{clash:?}"
        );
        let null_id = execute_per_row(
            &mut connection,
            INSERT,
            &[[Param::Null, Param::Null, Param::Null]],
        )
        .await;
        assert!(
            matches!(null_id, Err(DomainError::Storage(_))),
            "{null_id:?}"
        );
        // A foreign key, as on the sqlx path: the backstop of the orders check.
        sqlx::query("CREATE TABLE child (email TEXT NOT NULL REFERENCES t (email_norm))")
            .execute(&mut connection)
            .await?;
        let orphan = execute_per_row(
            &mut connection,
            "INSERT INTO child (email) VALUES (?1)",
            &[[Param::Text("nobody@x")]],
        )
        .await;
        assert!(
            matches!(orphan, Err(DomainError::CustomerHasOrders)),
            "{orphan:?}"
        );
        let bad = execute_per_row(
            &mut connection,
            "INSERT INTO missing VALUES (?1)",
            &[[Param::Int(1)]],
        )
        .await;
        let Err(DomainError::Storage(source)) = bad else {
            panic!("{bad:?}");
        };
        assert!(
            source.to_string().contains("no such table: missing"),
            "{source}"
        );
        // The connection still serves sqlx afterwards.
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM t")
            .fetch_one(&mut connection)
            .await?;
        assert_eq!(rows, 1, "the first row before the clash");
        Ok(())
    }
}
