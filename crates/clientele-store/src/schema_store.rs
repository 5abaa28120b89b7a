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
    tx.save_schema_doc(&doc).await?;
    if let Some(completion) = completion {
        let response = (completion.render)(schema);
        tx.complete_idempotency(completion.claim, &response).await?;
    }
    tx.commit().await
}

macro_rules! schema_sql {
    ($db:ty) => {
        #[async_trait::async_trait]
        impl $crate::schema_store::SchemaTx for sqlx::Transaction<'static, $db> {
            async fn schema_doc(
                &mut self,
            ) -> Result<Option<String>, clientele_domain::DomainError> {
                sqlx::query_scalar("SELECT doc FROM customer_schema WHERE id = 1")
                    .fetch_optional(&mut **self)
                    .await
                    .map_err($crate::error::db_error)
            }

            async fn save_schema_doc(
                &mut self,
                doc: &str,
            ) -> Result<(), clientele_domain::DomainError> {
                sqlx::query(
                    "INSERT INTO customer_schema (id, doc, updated_at) VALUES (1, $1, $2) \
                     ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, \
                     updated_at = excluded.updated_at",
                )
                .bind(doc)
                .bind(clientele_domain::Timestamp::now().as_micros())
                .execute(&mut **self)
                .await
                .map_err($crate::error::db_error)?;
                Ok(())
            }
        }
    };
}

schema_sql!(sqlx::Sqlite);
schema_sql!(sqlx::Postgres);
