//! The customer schema in the database: one row, read in the transaction of every customer
//! write (a primary-key lookup), so that every hub process checks writes against the schema
//! committed last, with no cache to invalidate across processes.

use async_trait::async_trait;
use clientele_domain::schema::Schema;
use clientele_domain::{Completion, DomainError};

use crate::primitives::CustomerTx;

#[async_trait]
pub(crate) trait SchemaTx: Send {
    /// The stored schema document (`None` when none was ever set).
    async fn schema_doc(&mut self) -> Result<Option<String>, DomainError>;
    /// Waits until no other transaction reads the schema, and keeps them waiting until this one
    /// ends; a backend whose writers take turns anyway has nothing to do.
    async fn hold_schema_alone(&mut self) -> Result<(), DomainError> {
        Ok(())
    }
    async fn save_schema_doc(&mut self, doc: &str) -> Result<(), DomainError>;
}

/// The schema in force, in this transaction.
pub(crate) async fn load(tx: &mut impl SchemaTx) -> Result<Schema, DomainError> {
    match tx.schema_doc().await? {
        None => Ok(Schema::default()),
        Some(doc) => serde_json::from_str(&doc).map_err(|e| DomainError::Storage(Box::new(e))),
    }
}

pub(crate) async fn get(mut tx: impl CustomerTx + SchemaTx) -> Result<Schema, DomainError> {
    let schema = load(&mut tx).await?;
    tx.commit().await?;
    Ok(schema)
}

pub(crate) async fn put(
    mut tx: impl CustomerTx + SchemaTx,
    schema: &Schema,
    completion: Option<Completion<'_, Schema>>,
) -> Result<(), DomainError> {
    let doc = serde_json::to_string(schema).map_err(|e| DomainError::Storage(Box::new(e)))?;
    tx.hold_schema_alone().await?;
    tx.save_schema_doc(&doc).await?;
    if let Some(completion) = completion {
        let response = (completion.render)(schema);
        tx.complete_idempotency(completion.claim, &response).await?;
    }
    tx.commit().await
}

const SCHEMA_SQL: &str = "SELECT doc FROM customer_schema WHERE id = 1";

const SAVE_SQL: &str = "INSERT INTO customer_schema (id, doc, updated_at) VALUES (1, $1, $2) \
                        ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, \
                        updated_at = excluded.updated_at";

/// SQLite: a write transaction holds the database's one write lock from its start, so the schema
/// it reads stays the schema in force until it commits.
#[async_trait]
impl SchemaTx for sqlx::Transaction<'static, sqlx::Sqlite> {
    async fn schema_doc(&mut self) -> Result<Option<String>, DomainError> {
        sqlx::query_scalar(SCHEMA_SQL)
            .fetch_optional(&mut **self)
            .await
            .map_err(crate::error::db_error)
    }

    async fn save_schema_doc(&mut self, doc: &str) -> Result<(), DomainError> {
        let now = clientele_domain::Timestamp::now().as_micros();
        let save = sqlx::query(SAVE_SQL).bind(doc).bind(now);
        save.execute(&mut **self)
            .await
            .map_err(crate::error::db_error)?;
        Ok(())
    }
}

/// PostgreSQL: a transaction that reads the schema holds [`SCHEMA_LOCK`] shared until it ends,
/// and a schema change holds it alone. Without it a write could read the schema, a change (a
/// newly required field, say) commit and be answered, and the write commit later against the
/// schema it read. The lock is taken in the statement before the read, in the same round trip:
/// each statement of a READ COMMITTED transaction reads the data committed before it began.
#[async_trait]
impl SchemaTx for sqlx::Transaction<'static, sqlx::Postgres> {
    async fn schema_doc(&mut self) -> Result<Option<String>, DomainError> {
        use sqlx::{Executor as _, Row as _};
        // Through the connection's `fetch_all`: `RawSql::fetch_all` is not `Send` enough for
        // `async_trait` (sqlx issue 3591).
        let connection: &mut sqlx::PgConnection = self;
        let rows = connection
            .fetch_all(sqlx::raw_sql(PG_LOCKED_SCHEMA_SQL))
            .await
            .map_err(crate::error::db_error)?;
        // The lock's row, then the schema's if there is one.
        match rows.get(1) {
            Some(row) => row.try_get("doc").map_err(crate::error::db_error),
            None => Ok(None),
        }
    }

    async fn hold_schema_alone(&mut self) -> Result<(), DomainError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(SCHEMA_LOCK)
            .execute(&mut **self)
            .await
            .map_err(crate::error::db_error)?;
        Ok(())
    }

    async fn save_schema_doc(&mut self, doc: &str) -> Result<(), DomainError> {
        let now = clientele_domain::Timestamp::now().as_micros();
        let save = sqlx::query(SAVE_SQL).bind(doc).bind(now);
        save.execute(&mut **self)
            .await
            .map_err(crate::error::db_error)?;
        Ok(())
    }
}

/// The advisory lock between schema changes and the transactions that check writes against
/// the schema (`'clsc'`).
const SCHEMA_LOCK: i64 = 0x636c_7363;

/// [`SCHEMA_SQL`] after the shared [`SCHEMA_LOCK`], as one simple query (a literal: the
/// statements of a simple query take no parameters).
const PG_LOCKED_SCHEMA_SQL: &str =
    "SELECT pg_advisory_xact_lock_shared(1668051811); SELECT doc FROM customer_schema WHERE id = 1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_locked_read_takes_the_schema_lock_then_reads_the_schema() {
        assert_eq!(
            PG_LOCKED_SCHEMA_SQL,
            format!("SELECT pg_advisory_xact_lock_shared({SCHEMA_LOCK}); {SCHEMA_SQL}")
        );
    }
}
