//! SQLite, the embedded default: WAL mode, one writer connection (SQLite runs one write
//! transaction at a time anyway; queuing in-process avoids busy-retry storms) and a pool of
//! readers that never block on it.

use std::str::FromStr;

use async_trait::async_trait;
use clientele_domain::{DomainError, PoolStats};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use crate::error::db_error;
use crate::primitives::sql_primitives;
use crate::sql_store::{Backend, SqlStore};
use crate::{SqliteSync, StoreConfig, StoreError};

sql_primitives!(Sqlite, lock = "");

pub struct SqliteBackend {
    writer: SqlitePool,
    readers: SqlitePool,
}

pub type SqliteStore = SqlStore<SqliteBackend>;

impl SqliteStore {
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let synchronous = match config.sqlite_sync {
            SqliteSync::Normal => SqliteSynchronous::Normal,
            SqliteSync::Full => SqliteSynchronous::Full,
        };
        let options = SqliteConnectOptions::from_str(&config.url)
            .map_err(StoreError::Connect)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(config.acquire_timeout)
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-65536");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.clone())
            .await
            .map_err(StoreError::Connect)?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.read_only(true))
            .await
            .map_err(StoreError::Connect)?;
        Ok(SqlStore::new(SqliteBackend { writer, readers }))
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    type Tx = Transaction<'static, Sqlite>;
    type Reader = SqlitePool;

    const NAME: &'static str = "sqlite";

    async fn begin_write(&self) -> Result<Self::Tx, DomainError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)
    }

    fn reads(&self) -> &SqlitePool {
        &self.readers
    }

    fn writes(&self) -> &SqlitePool {
        &self.writer
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.readers.size() + self.writer.size(),
            idle: (self.readers.num_idle() + self.writer.num_idle()) as u32,
        }
    }
}
