//! SQLite, the embedded default: WAL mode, one writer connection (SQLite runs one write
//! transaction at a time anyway; queuing in-process avoids busy-retry storms) and a pool of
//! readers that never block on it.

use std::str::FromStr;

use async_trait::async_trait;
use clientele_domain::{DomainError, PoolStats};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use clientele_domain::sync::{ChangeRecord, StoredCustomer};
use clientele_domain::{CustomerId, CustomerKey};
use sqlx::Row;

use crate::error::db_error;
use crate::primitives::{
    BatchTx, CustomerRow, CustomerTx, change_row, decode_id, key_column, sql_primitives,
    stored_customer,
};
use crate::sql_store::{Backend, SqlStore};
use crate::{SqliteSync, StoreConfig, StoreError};

sql_primitives!(Sqlite, lock = "");

/// Binds a list as one JSON array parameter, read back with `json_each`: one statement for
/// any number of values, and one cached prepared statement.
fn json_list(values: &[String]) -> String {
    serde_json::to_string(values).unwrap_or_else(|_| "[]".to_owned())
}

#[async_trait]
impl BatchTx for Transaction<'static, Sqlite> {
    async fn load_many(
        &mut self,
        key: CustomerKey,
        values: &[String],
    ) -> Result<Vec<StoredCustomer>, DomainError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT doc, password_hash FROM customers \
             WHERE {} IN (SELECT value FROM json_each($1))",
            key_column(key)
        );
        let rows = sqlx::query(&sql)
            .bind(json_list(values))
            .fetch_all(&mut **self)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                stored_customer(
                    row.try_get(0).map_err(db_error)?,
                    row.try_get(1).map_err(db_error)?,
                )
            })
            .collect()
    }

    async fn owners(
        &mut self,
        key: CustomerKey,
        values: &[String],
    ) -> Result<Vec<(String, CustomerId)>, DomainError> {
        let column = key_column(key);
        let sql = format!(
            "SELECT {column}, id FROM customers WHERE {column} IN (SELECT value FROM json_each($1))"
        );
        let rows = sqlx::query(&sql)
            .bind(json_list(values))
            .fetch_all(&mut **self)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get(0).map_err(db_error)?,
                    decode_id(row.try_get(1).map_err(db_error)?)?,
                ))
            })
            .collect()
    }

    async fn delete_many(&mut self, ids: &[CustomerId]) -> Result<(), DomainError> {
        for id in ids {
            CustomerTx::delete(self, *id).await?;
        }
        Ok(())
    }

    async fn clear_keys(&mut self, ids: &[CustomerId]) -> Result<(), DomainError> {
        for id in ids {
            sqlx::query(
                "UPDATE customers SET external_id = NULL, email_norm = NULL, username = NULL \
                 WHERE id = $1",
            )
            .bind(id.to_string())
            .execute(&mut **self)
            .await
            .map_err(db_error)?;
        }
        Ok(())
    }

    async fn update_many(&mut self, rows: &[CustomerRow<'_>]) -> Result<(), DomainError> {
        for row in rows {
            CustomerTx::update(self, row).await?;
        }
        Ok(())
    }

    async fn insert_many(&mut self, rows: &[CustomerRow<'_>]) -> Result<(), DomainError> {
        for row in rows {
            CustomerTx::insert(self, row).await?;
        }
        Ok(())
    }

    async fn record_changes(&mut self, changes: &[ChangeRecord]) -> Result<(), DomainError> {
        for change in changes {
            self.record_change(&change_row(change)).await?;
        }
        Ok(())
    }
}

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
