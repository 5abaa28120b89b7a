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
mod heartbeat;
mod orders;
mod primitives;
mod schema_store;
mod search;
mod sql_store;
mod unit_of_work;

pub mod postgres;
mod postgres_copy;
pub mod sqlite;
mod sqlite_point_reads;
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
    /// Most connections in the pool (readers on SQLite, beside its one writer); `None` for the
    /// backend's default ([`StoreConfig::pool_size`]).
    pub max_connections: Option<u32>,
    /// How long a request waits for a connection before it fails.
    pub acquire_timeout: Duration,
    pub sqlite_sync: SqliteSync,
}

impl StoreConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: None,
            acquire_timeout: Duration::from_secs(10),
            sqlite_sync: SqliteSync::default(),
        }
    }

    /// The size of the pool: [`StoreConfig::max_connections`], or the backend's default.
    ///
    /// PostgreSQL's connections wait on the network and on the server's own processes, so a
    /// hub process keeps 16. SQLite's readers run their queries on this machine's cores, each
    /// on a thread of its own with a page cache of its own: more readers than twice the cores
    /// only add threads to switch between and caches that are cold for the query they get (the
    /// pool hands out its connections in turn). On two cores, 4 readers served 17–19k GET/s
    /// where 16 served 13k, and the first pages of searches took 5–11 ms instead of 7–14 ms
    /// (docs/benchmarks.md, thirteenth session).
    pub fn pool_size(&self) -> u32 {
        self.max_connections
            .unwrap_or_else(|| match DatabaseKind::of(&self.url) {
                Some(DatabaseKind::Sqlite) => sqlite::settings::default_readers(),
                Some(DatabaseKind::Postgres) | None => postgres::DEFAULT_POOL_SIZE,
            })
    }
}

/// The backend a database URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl DatabaseKind {
    fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// Opens the database named by the URL, runs its migrations and returns the store.
pub async fn connect(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    match DatabaseKind::of(&config.url) {
        Some(DatabaseKind::Sqlite) => Ok(Arc::new(sqlite::SqliteStore::connect(config).await?)),
        Some(DatabaseKind::Postgres) => {
            Ok(Arc::new(postgres::PostgresStore::connect(config).await?))
        }
        None => Err(StoreError::UnsupportedUrl(redact(&config.url))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_is_as_large_as_asked_or_as_its_backend_needs() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as u32;
        let sqlite = StoreConfig::new("sqlite://hub.db");
        assert_eq!(sqlite.pool_size(), (2 * cores).clamp(2, 16));
        assert_eq!(StoreConfig::new("postgres://db/hub").pool_size(), 16);
        assert_eq!(StoreConfig::new("postgresql://db/hub").pool_size(), 16);
        for url in ["sqlite://hub.db", "postgres://db/hub"] {
            let mut config = StoreConfig::new(url);
            config.max_connections = Some(3);
            assert_eq!(config.pool_size(), 3, "{url}");
        }
    }
}
