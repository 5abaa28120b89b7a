//! PostgreSQL: one pool for reads and writes; write transactions lock the customer row
//! (`SELECT ... FOR UPDATE`) so concurrent writers, in this process or another hub process on the
//! same database, never lose an update.

use async_trait::async_trait;
use clientele_domain::{DomainError, PoolStats};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::error::db_error;
use crate::primitives::sql_primitives;
use crate::sql_store::{Backend, SqlStore};
use crate::{StoreConfig, StoreError};

sql_primitives!(Postgres, lock = " FOR UPDATE");

pub struct PostgresBackend {
    pool: PgPool,
}

pub type PostgresStore = SqlStore<PostgresBackend>;

impl PostgresStore {
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let options: PgConnectOptions = config.url.parse().map_err(StoreError::Connect)?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(2))
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.application_name("clientele"))
            .await
            .map_err(StoreError::Connect)?;
        // sqlx takes an advisory lock, so hub processes starting together migrate once.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(SqlStore::new(PostgresBackend { pool }))
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    type Tx = Transaction<'static, Postgres>;
    type Reader = PgPool;

    const NAME: &'static str = "postgres";

    async fn begin_write(&self) -> Result<Self::Tx, DomainError> {
        self.pool.begin().await.map_err(db_error)
    }

    fn reads(&self) -> &PgPool {
        &self.pool
    }

    fn writes(&self) -> &PgPool {
        &self.pool
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle() as u32,
        }
    }
}
