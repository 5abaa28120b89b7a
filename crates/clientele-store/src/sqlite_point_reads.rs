//! Reads of one customer by id or unique key, run on the calling thread.
//!
//! Through sqlx, every query is a hand-off to its connection's worker thread and back: two
//! cross-thread wake-ups, which on this kind of machine cost more than the read itself (a
//! profile of `GET /v1/customers/{id}` spent most of its time in the scheduler's wake-up and
//! switch paths; docs/benchmarks.md). A lookup by a unique index takes a few microseconds on
//! cached pages, so it runs right on the request's thread, on a read-only connection of its
//! own (rusqlite, the same bundled SQLite as sqlx's), as the write path steps its rows.
//!
//! Such a read never waits: its connection has no busy timeout. Where SQLite would make it
//! wait, or anything else goes wrong, [`PointReads::customer_doc`] returns `None` and the
//! caller takes the pooled path, which waits on a thread of its own and reports any error.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clientele_domain::{CustomerDoc, Locator};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::primitives::{decode_id, locator_column};
use crate::sqlite::settings;

/// Idle connections kept for point reads. A read holds its connection for its whole (short,
/// synchronous) run, so no more are ever busy at once than the runtime has worker threads.
pub(crate) struct PointReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
}

impl PointReads {
    /// Point reads of the database file at `path`; `None` for a database that is not a file
    /// (an in-memory one), which other connections could not open.
    pub(crate) fn new(path: &Path) -> Option<Self> {
        path.is_file().then(|| Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            keep: std::thread::available_parallelism().map_or(1, usize::from),
        })
    }

    /// The customer `locator` names, as stored, or `None` when this read could not run here
    /// (the caller reads it through the pool instead).
    pub(crate) fn customer_doc(&self, locator: &Locator) -> Option<Option<CustomerDoc>> {
        let connection = match self.take() {
            Ok(connection) => connection,
            Err(error) => {
                tracing::debug!(%error, "no connection for a point read");
                return None;
            }
        };
        match read_customer(&connection, locator) {
            Ok(doc) => {
                self.give_back(connection);
                Some(doc)
            }
            Err(error) => {
                // Dropped: a connection that failed is not trusted with the next read.
                tracing::debug!(%error, "a point read fell back to the pool");
                None
            }
        }
    }

    fn take(&self) -> Result<Connection, rusqlite::Error> {
        if let Some(connection) = self.idle().pop() {
            return Ok(connection);
        }
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_PRIVATE_CACHE,
        )?;
        connection.pragma_update(
            None,
            "cache_size",
            settings::cache_size(settings::READER_CACHE_KIB),
        )?;
        Ok(connection)
    }

    fn give_back(&self, connection: Connection) {
        let mut idle = self.idle();
        if idle.len() < self.keep {
            idle.push(connection);
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        // The list stays whole whatever panicked while it was locked: a push or a pop.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The customer `locator` names, as the pooled path reads it.
fn read_customer(
    connection: &Connection,
    locator: &Locator,
) -> Result<Option<CustomerDoc>, ReadError> {
    let (column, value) = locator_column(locator);
    let mut statement = connection.prepare_cached(&format!(
        "SELECT id, version, doc FROM customers WHERE {column} = ?1"
    ))?;
    let row = statement
        .query_row([&value], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .optional()?;
    row.map(|(id, version, json)| {
        Ok(CustomerDoc {
            id: decode_id(&id).map_err(|e| ReadError::Stored(e.to_string()))?,
            version,
            json,
        })
    })
    .transpose()
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("a stored customer id is not valid: {0}")]
    Stored(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientele_domain::{CustomerId, CustomerKey};

    fn database(dir: &Path) -> PathBuf {
        let path = dir.join("point.db");
        let connection = Connection::open(&path).expect("open");
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE customers (id TEXT NOT NULL UNIQUE, external_id TEXT UNIQUE,
                     email_norm TEXT UNIQUE, username TEXT UNIQUE, version INTEGER NOT NULL,
                     doc TEXT NOT NULL);",
            )
            .expect("schema");
        path
    }

    fn insert(path: &Path, id: CustomerId, email: &str, version: i64) {
        Connection::open(path)
            .expect("open")
            .execute(
                "INSERT INTO customers (id, email_norm, version, doc) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![
                    id.to_string(),
                    email,
                    version,
                    format!("{{\"v\":{version}}}")
                ],
            )
            .expect("insert");
    }

    #[test]
    fn reads_by_id_and_by_key_and_sees_each_later_commit() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = database(dir.path());
        let reads = PointReads::new(&path).expect("a file");
        let id = CustomerId::new();
        assert_eq!(
            reads.customer_doc(&Locator::Id(id)).map(|d| d.is_none()),
            Some(true)
        );

        insert(&path, id, "ada@example.com", 1);
        let by_id = reads
            .customer_doc(&Locator::Id(id))
            .expect("ran")
            .expect("found");
        assert_eq!(
            (by_id.id, by_id.version, by_id.json.as_str()),
            (id, 1, "{\"v\":1}")
        );
        let by_email = reads
            .customer_doc(&Locator::Key(CustomerKey::Email, "ADA@example.com".into()))
            .expect("ran")
            .expect("found");
        assert_eq!(by_email.id, id);
        assert_eq!(
            reads.idle().len(),
            1,
            "one connection, kept for the next read"
        );
    }

    #[test]
    fn a_read_that_cannot_run_here_is_handed_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(PointReads::new(&dir.path().join("missing.db")).is_none());

        let path = database(dir.path());
        let reads = PointReads::new(&path).expect("a file");
        Connection::open(&path)
            .expect("open")
            .execute_batch("DROP TABLE customers")
            .expect("drop");
        assert!(
            reads
                .customer_doc(&Locator::Id(CustomerId::new()))
                .is_none()
        );
        assert!(reads.idle().is_empty(), "the failed connection is not kept");
    }
}
