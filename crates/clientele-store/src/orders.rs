//! Orders in the database, once for both backends: the statements are the same text on SQLite
//! and PostgreSQL except for how a list of ids is bound, so one macro instantiates them.

use async_trait::async_trait;
use clientele_domain::order::{NewOrder, Order, OrderPage};
use clientele_domain::{CustomerId, DomainError, Locator, OrderId, Scope};

use crate::primitives::{CustomerTx, Queries, decode_customer};

/// The order writes of a transaction.
#[async_trait]
pub(crate) trait OrderTx: Send {
    async fn insert_order(&mut self, order: &Order, doc: &str) -> Result<(), DomainError>;

    /// Which of these customers orders reference (one query for any number of them).
    async fn customers_with_orders(
        &mut self,
        ids: &[CustomerId],
    ) -> Result<Vec<CustomerId>, DomainError>;
}

/// The order reads, served from the pool.
#[async_trait]
pub(crate) trait OrderQueries: Send + Sync {
    /// The order's document and its customer's document.
    async fn order_with_customer(
        &self,
        id: OrderId,
    ) -> Result<Option<(String, String)>, DomainError>;

    /// Documents of the customer's orders after `after`, in id (creation) order.
    async fn order_docs(
        &self,
        customer: CustomerId,
        after: Option<OrderId>,
        limit: i64,
    ) -> Result<Vec<String>, DomainError>;
}

pub(crate) async fn create_order<Tx: CustomerTx + OrderTx>(
    mut tx: Tx,
    new: &NewOrder,
    scope: &Scope,
    completion: Option<clientele_domain::Completion<'_, Order>>,
) -> Result<Order, DomainError> {
    // The load locks the customer (PostgreSQL), so a concurrent delete waits and then sees
    // the order.
    let customer = tx
        .load(&new.customer)
        .await?
        .map(|stored| stored.customer)
        .filter(|customer| scope.admits(customer))
        .ok_or(DomainError::NotFound)?;
    let order = new.draft.clone().attach(customer.id);
    let doc = serde_json::to_string(&order).map_err(|e| DomainError::Storage(Box::new(e)))?;
    tx.insert_order(&order, &doc).await?;
    if let Some(completion) = completion {
        let response = (completion.render)(&order);
        tx.complete_idempotency(completion.claim, &response).await?;
    }
    tx.commit().await?;
    Ok(order)
}

pub(crate) async fn get_order(
    reads: &impl OrderQueries,
    id: OrderId,
    scope: &Scope,
) -> Result<Option<Order>, DomainError> {
    let Some((order, customer)) = reads.order_with_customer(id).await? else {
        return Ok(None);
    };
    if !scope.admits(&decode_customer(&customer)?) {
        return Ok(None);
    }
    decode_order(&order).map(Some)
}

pub(crate) async fn customer_orders<R: Queries + OrderQueries>(
    reads: &R,
    locator: &Locator,
    scope: &Scope,
    after: Option<OrderId>,
    limit: u32,
) -> Result<Option<OrderPage>, DomainError> {
    let Some(doc) = reads.customer_doc(locator).await? else {
        return Ok(None);
    };
    let customer = decode_customer(&doc.json)?;
    if !scope.admits(&customer) {
        return Ok(None);
    }
    // One row more than asked tells whether there is a next page.
    let docs = reads
        .order_docs(customer.id, after, i64::from(limit) + 1)
        .await?;
    let more = docs.len() > limit as usize;
    let items = docs
        .iter()
        .take(limit as usize)
        .map(|doc| decode_order(doc))
        .collect::<Result<Vec<_>, _>>()?;
    let next = if more {
        items.last().map(|order| order.id)
    } else {
        None
    };
    Ok(Some(OrderPage { items, next }))
}

fn decode_order(doc: &str) -> Result<Order, DomainError> {
    serde_json::from_str(doc).map_err(|e| DomainError::Storage(Box::new(e)))
}

pub(crate) fn decode_ids(texts: Vec<String>) -> Result<Vec<CustomerId>, DomainError> {
    texts
        .iter()
        .map(|text| crate::primitives::decode_id(text))
        .collect()
}

/// Binds ids as one JSON array (SQLite reads it with `json_each`).
pub(crate) fn json_ids(ids: &[CustomerId]) -> String {
    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned())
}

/// Binds ids as a text array (PostgreSQL reads it with `ANY`).
pub(crate) fn array_ids(ids: &[CustomerId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

/// Implements [`OrderTx`] and [`OrderQueries`] for a backend; `$in_ids` is the SQL that
/// matches `customer_id` against the bound list `$1`, `$bind_ids` what binds it.
macro_rules! order_sql {
    ($db:ty, in_ids = $in_ids:literal, bind_ids = $bind_ids:path) => {
        #[async_trait::async_trait]
        impl $crate::orders::OrderTx for sqlx::Transaction<'static, $db> {
            async fn insert_order(
                &mut self,
                order: &clientele_domain::order::Order,
                doc: &str,
            ) -> Result<(), clientele_domain::DomainError> {
                sqlx::query(
                    "INSERT INTO orders (id, customer_id, reference, created_at, doc) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(order.id.to_string())
                .bind(order.customer_id.to_string())
                .bind(&order.reference)
                .bind(order.created_at.as_micros())
                .bind(doc)
                .execute(&mut **self)
                .await
                .map_err($crate::error::db_error)?;
                Ok(())
            }

            async fn customers_with_orders(
                &mut self,
                ids: &[clientele_domain::CustomerId],
            ) -> Result<Vec<clientele_domain::CustomerId>, clientele_domain::DomainError> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = concat!(
                    "SELECT DISTINCT customer_id FROM orders WHERE customer_id ",
                    $in_ids
                );
                let found: Vec<String> = sqlx::query_scalar(sql)
                    .bind($bind_ids(ids))
                    .fetch_all(&mut **self)
                    .await
                    .map_err($crate::error::db_error)?;
                $crate::orders::decode_ids(found)
            }
        }

        #[async_trait::async_trait]
        impl $crate::orders::OrderQueries for sqlx::Pool<$db> {
            async fn order_with_customer(
                &self,
                id: clientele_domain::OrderId,
            ) -> Result<Option<(String, String)>, clientele_domain::DomainError> {
                sqlx::query_as(
                    "SELECT o.doc, c.doc FROM orders o JOIN customers c ON c.id = o.customer_id \
                     WHERE o.id = $1",
                )
                .bind(id.to_string())
                .fetch_optional(self)
                .await
                .map_err($crate::error::db_error)
            }

            async fn order_docs(
                &self,
                customer: clientele_domain::CustomerId,
                after: Option<clientele_domain::OrderId>,
                limit: i64,
            ) -> Result<Vec<String>, clientele_domain::DomainError> {
                // Without a cursor, every id sorts after the empty string.
                let after = after.map(|id| id.to_string()).unwrap_or_default();
                sqlx::query_scalar(
                    "SELECT doc FROM orders WHERE customer_id = $1 AND id > $2 \
                     ORDER BY id LIMIT $3",
                )
                .bind(customer.to_string())
                .bind(after)
                .bind(limit)
                .fetch_all(self)
                .await
                .map_err($crate::error::db_error)
            }
        }
    };
}

order_sql!(
    sqlx::Sqlite,
    in_ids = "IN (SELECT value FROM json_each($1))",
    bind_ids = json_ids
);
order_sql!(sqlx::Postgres, in_ids = "= ANY($1)", bind_ids = array_ids);
