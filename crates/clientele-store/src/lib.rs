//! Clientele's storage: the domain [`Store`] trait on SQLite (the embedded default) and
//! PostgreSQL (for several stateless hub processes on one database).
//!
//! Layout: [`unit_of_work`] holds the write logic once, over the [`unit_of_work::CustomerTx`]
//! primitives that [`primitives`] implements for both backends from the same SQL; [`sqlite`] and
//! [`postgres`] own connection set-up, migrations and the read paths.

mod checkpoint;
mod directory;
mod error;
mod feed;
mod group_commit;
mod orders;
mod primitives;
mod schema_store;
mod search;
mod sql_store;
mod unit_of_work;

pub mod postgres;
pub mod sqlite;
mod sqlite_rows;

pub use sql_store::SqlStore;

use std::sync::Arc;
use std::time::Duration;

use clientele_domain::Store;

pub use error::StoreError;

/// How SQLite makes commits durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqliteSync {
    /// WAL with `synchronous = NORMAL`: a commit survives a crash or kill of the server process;
    /// the last commits may be lost on power failure or an OS crash.
    #[default]
    Normal,
    /// `synchronous = FULL`: every commit is fsynced, surviving power failure too, at the cost
    /// of one fsync per write transaction.
    Full,
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://...`.
    pub url: String,
    /// Most connections in the pool (readers on SQLite; there is one writer).
    pub max_connections: u32,
    /// How long a request waits for a connection before it fails.
    pub acquire_timeout: Duration,
    pub sqlite_sync: SqliteSync,
}

impl StoreConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
            sqlite_sync: SqliteSync::default(),
        }
    }
}

/// Opens the database named by the URL, runs its migrations and returns the store.
pub async fn connect(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    let url = config.url.as_str();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(config).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::connect(config).await?))
    } else {
        Err(StoreError::UnsupportedUrl(redact(url)))
    }
}

/// The URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
