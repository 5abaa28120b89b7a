//! The SQL both backends share, as primitives the unit of work is written against.
//!
//! The statements are the same text on SQLite and PostgreSQL (`$n` placeholders work on both);
//! only the sqlx types and the row lock differ, so one macro instantiates them per backend.

use async_trait::async_trait;
use clientele_domain::sync::{ChangeRecord, StoredCustomer};
use clientele_domain::{
    ApiKey, ApiKeyId, Customer, CustomerDoc, CustomerId, CustomerKey, DomainError,
    IdempotencyClaim, ListQuery, Locator, NamePage, NewApiKey, Page, StoredResponse, Timestamp,
};

use crate::search::TermEdit;

/// The columns of one `customers` row.
pub(crate) struct CustomerRow<'a> {
    pub customer: &'a Customer,
    pub email_norm: Option<String>,
    pub last_name_sort: String,
    pub password_hash: Option<&'a str>,
    pub doc: &'a str,
}

impl<'a> CustomerRow<'a> {
    pub fn new(customer: &'a Customer, password_hash: Option<&'a str>, doc: &'a str) -> Self {
        Self {
            customer,
            email_norm: customer.email.as_deref().map(str::to_lowercase),
            last_name_sort: sort_key(customer.last_name.as_deref()),
            password_hash,
            doc,
        }
    }
}

/// The writes of one transaction. Loads lock the row where the backend can (PostgreSQL
/// `FOR UPDATE`); SQLite serializes write transactions instead.
#[async_trait]
pub(crate) trait CustomerTx: Send {
    async fn load(&mut self, locator: &Locator) -> Result<Option<StoredCustomer>, DomainError>;
    async fn commit(self) -> Result<(), DomainError>;
    /// Ends the transaction now, releasing its locks before a retry (a dropped transaction
    /// would keep them until its connection is next used).
    async fn rollback(self) -> Result<(), DomainError>;

    /// Stores an API key. With `restore`, a key with the same lookup hash (the same secret)
    /// is made live again as given instead (role, teams, encrypted secret; id, name and
    /// creation time stay); says whether a new row was stored.
    async fn insert_api_key(&mut self, key: &NewApiKey, restore: bool)
    -> Result<bool, DomainError>;

    /// Revokes a live key; `false` when there is none with this id.
    async fn revoke_api_key(&mut self, id: ApiKeyId, at: Timestamp) -> Result<bool, DomainError>;

    /// Records the response of the claim's request, in this transaction; fails with
    /// [`DomainError::IdempotencyKeyTakenOver`] when the claim is no longer the request's.
    async fn complete_idempotency(
        &mut self,
        claim: &IdempotencyClaim,
        response: &StoredResponse,
    ) -> Result<(), DomainError>;
}

/// The batch writes of a sync, where the backends differ most: SQLite runs cached prepared
/// statements row by row inside the one transaction (cheap in-process); PostgreSQL sends each
/// kind of write as one statement over arrays, so a batch costs a handful of round trips.
#[async_trait]
pub(crate) trait BatchTx: Send {
    /// Where concurrent batches can race to create the same key (PostgreSQL, where a key no
    /// row holds cannot be locked), takes the batch lock as the transaction's first step:
    /// shared by every batch, or held `alone` by a batch that lost such a race on every retry,
    /// so that its last attempt cannot lose to another batch. Nothing where writes are
    /// serialized anyway (SQLite).
    async fn lock_batches(&mut self, alone: bool) -> Result<(), DomainError> {
        let _ = alone;
        Ok(())
    }

    /// The customers holding these batch-key values (normalized), locked for the transaction
    /// where the backend locks rows, in id order so concurrent batches cannot deadlock.
    async fn load_many(
        &mut self,
        key: CustomerKey,
        values: &[String],
    ) -> Result<Vec<StoredCustomer>, DomainError>;

    /// The ids and versions of the customers holding these batch-key values (normalized): what
    /// an optimistic plan checks is still so.
    async fn versions(
        &mut self,
        key: CustomerKey,
        values: &[String],
    ) -> Result<Vec<(CustomerId, i64)>, DomainError>;

    /// Which customers hold these values (normalized) of a unique key.
    async fn owners(
        &mut self,
        key: CustomerKey,
        values: &[String],
    ) -> Result<Vec<(String, CustomerId)>, DomainError>;

    async fn delete_many(&mut self, ids: &[CustomerId]) -> Result<(), DomainError>;

    /// Clears the unique keys of these customers before their updates set them again.
    async fn clear_keys(&mut self, ids: &[CustomerId]) -> Result<(), DomainError>;

    /// Rewrites these customers' rows; their terms are the caller's to rewrite where they
    /// changed ([`BatchTx::write_terms`], [`BatchTx::edit_terms`]), since most updates leave
    /// them alone.
    async fn update_many(&mut self, rows: &[CustomerRow<'_>]) -> Result<(), DomainError>;

    async fn insert_many(&mut self, rows: &[CustomerRow<'_>]) -> Result<(), DomainError>;

    async fn record_changes(&mut self, changes: &[ChangeRecord]) -> Result<(), DomainError>;

    /// Writes the search terms of these rows (`q`), replacing their old ones when `replace`.
    async fn write_terms(
        &mut self,
        rows: &[CustomerRow<'_>],
        replace: bool,
    ) -> Result<(), DomainError>;

    /// Deletes the rows of the terms these updates remove and inserts those of the terms they
    /// add, leaving the rest of each customer's rows in place.
    async fn edit_terms(&mut self, edits: &[TermEdit<'_>]) -> Result<(), DomainError>;
}

/// A stored idempotency record, as the claim logic needs it.
pub(crate) struct ClaimRow {
    pub fingerprint: Vec<u8>,
    pub created_at: i64,
    pub response: Option<StoredResponse>,
    /// The hub process that claimed it, and when that process was last seen.
    pub owner: Option<ClaimOwner>,
}

pub(crate) struct ClaimOwner {
    pub incarnation: String,
    pub seen_at: Option<i64>,
}

/// The reads, served from the pool outside write transactions.
#[async_trait]
pub(crate) trait Queries: Send + Sync {
    async fn customer_doc(&self, locator: &Locator) -> Result<Option<CustomerDoc>, DomainError>;
    async fn customer_page(&self, query: &ListQuery) -> Result<Page, DomainError>;
    async fn password_hash(
        &self,
        locator: &Locator,
    ) -> Result<Option<(CustomerId, Option<String>)>, DomainError>;
    async fn api_key_where(
        &self,
        column: KeyColumn,
        value: KeyValue<'_>,
    ) -> Result<Option<ApiKey>, DomainError>;
    /// A page of the live keys in id order, after `page.after`.
    async fn api_keys(&self, page: &NamePage) -> Result<Vec<ApiKey>, DomainError>;
    async fn count_api_keys(&self) -> Result<i64, DomainError>;
    async fn ping(&self) -> Result<(), DomainError>;

    /// Inserts a claim held by the process `owner` unless the key has a record; says whether
    /// it inserted.
    async fn insert_claim(
        &self,
        claim: &IdempotencyClaim,
        owner: &str,
    ) -> Result<bool, DomainError>;
    async fn load_claim(&self, claim: &IdempotencyClaim) -> Result<Option<ClaimRow>, DomainError>;
    /// Replaces the record created at `created_at` with this claim, held by `owner`: an
    /// `expired` record whatever it holds, else only one still without a response. False if it
    /// changed since.
    async fn take_over_claim(
        &self,
        claim: &IdempotencyClaim,
        created_at: i64,
        expired: bool,
        owner: &str,
    ) -> Result<bool, DomainError>;
    /// Records that the process `incarnation` is alive at `now`, and forgets processes not seen
    /// since `forget_before`.
    async fn heartbeat(
        &self,
        incarnation: &str,
        now: Timestamp,
        forget_before: Timestamp,
    ) -> Result<(), DomainError>;
    async fn release_claim(&self, claim: &IdempotencyClaim) -> Result<(), DomainError>;
    async fn purge_claims(&self, before: Timestamp) -> Result<u64, DomainError>;

    /// Records a signed request's nonce; false when the key used it already (a replay).
    async fn insert_nonce(
        &self,
        key: ApiKeyId,
        nonce: &str,
        at: Timestamp,
    ) -> Result<bool, DomainError>;
    /// Forgets a recorded nonce, so that the same signed request may be sent again.
    async fn delete_nonce(&self, key: ApiKeyId, nonce: &str) -> Result<(), DomainError>;
    async fn purge_nonces(&self, before: Timestamp) -> Result<u64, DomainError>;
}

pub(crate) fn encode_headers(response: &StoredResponse) -> String {
    serde_json::to_string(&response.headers).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn decode_claim(
    (fingerprint, created_at, status, headers, body, owner, seen_at): ClaimColumns,
) -> ClaimRow {
    let response = status.map(|status| StoredResponse {
        status: u16::try_from(status).unwrap_or(500),
        headers: headers
            .and_then(|h| serde_json::from_str(&h).ok())
            .unwrap_or_default(),
        body: body.unwrap_or_default(),
    });
    ClaimRow {
        fingerprint,
        created_at,
        response,
        owner: owner.map(|incarnation| ClaimOwner {
            incarnation,
            seen_at,
        }),
    }
}

/// The columns [`decode_claim`] reads, in the order the claim's query selects them.
pub(crate) type ClaimColumns = (
    Vec<u8>,
    i64,
    Option<i32>,
    Option<String>,
    Option<Vec<u8>>,
    Option<String>,
    Option<i64>,
);

#[derive(Clone, Copy)]
pub(crate) enum KeyColumn {
    Id,
    LookupHash,
}

#[derive(Clone, Copy)]
pub(crate) enum KeyValue<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// Characters of a last name the sort index holds: a name may have 1000 characters (4000 bytes),
/// more than a PostgreSQL B-tree entry may; names equal this far are ordered by id.
const SORT_KEY_CHARS: usize = 100;

/// The lower-cased prefix of a last name that `sort=last_name` orders by.
pub(crate) fn sort_key(last_name: Option<&str>) -> String {
    last_name
        .unwrap_or("")
        .chars()
        .take(SORT_KEY_CHARS)
        .flat_map(char::to_lowercase)
        .collect()
}

/// The `WHERE` column a locator selects on, and the value to bind.
pub(crate) fn locator_column(locator: &Locator) -> (&'static str, String) {
    match locator {
        Locator::Id(id) => ("id", id.to_string()),
        Locator::Key(key, value) => (key_column(*key), key.normalize(value)),
    }
}

/// The column holding a unique key's normalized value.
pub(crate) fn key_column(key: CustomerKey) -> &'static str {
    match key {
        CustomerKey::ExternalId => "external_id",
        CustomerKey::Email => "email_norm",
        CustomerKey::Username => "username",
    }
}

/// Decodes `(doc, password_hash)` rows.
pub(crate) fn stored_customer(
    doc: &str,
    password_hash: Option<String>,
) -> Result<StoredCustomer, DomainError> {
    Ok(StoredCustomer {
        customer: decode_customer(doc)?,
        password_hash,
    })
}

pub(crate) fn decode_customer(doc: &str) -> Result<Customer, DomainError> {
    serde_json::from_str(doc).map_err(|e| DomainError::Storage(Box::new(e)))
}

pub(crate) fn decode_id(text: &str) -> Result<CustomerId, DomainError> {
    text.parse()
        .map_err(|e: clientele_domain::id::InvalidId| DomainError::Storage(Box::new(e)))
}

pub(crate) fn decode_api_key(
    id: &str,
    name: String,
    role: &str,
    teams: &str,
    secret_encrypted: Vec<u8>,
    created_at: i64,
) -> Result<ApiKey, DomainError> {
    let corrupt = |what: &str| DomainError::Storage(format!("corrupt api key {id}: {what}").into());
    Ok(ApiKey {
        id: id.parse().map_err(|_| corrupt("id"))?,
        name,
        role: clientele_domain::Role::parse(role).ok_or_else(|| corrupt("role"))?,
        teams: serde_json::from_str(teams).map_err(|_| corrupt("teams"))?,
        created_at: Timestamp::from_micros(created_at),
        secret_encrypted,
    })
}

/// Implements [`CustomerTx`] for a backend's transaction and [`Queries`] for its pool.
macro_rules! sql_primitives {
    ($db:ty, lock = $lock:literal, dialect = $dialect:expr) => {
        #[async_trait::async_trait]
        impl $crate::primitives::CustomerTx for sqlx::Transaction<'static, $db> {
            async fn load(
                &mut self,
                locator: &clientele_domain::Locator,
            ) -> Result<Option<clientele_domain::sync::StoredCustomer>, clientele_domain::DomainError>
            {
                use sqlx::Row;
                let (column, value) = $crate::primitives::locator_column(locator);
                let sql = format!(
                    "SELECT doc, password_hash FROM customers WHERE {column} = $1{}",
                    $lock
                );
                let row = sqlx::query(&sql)
                    .bind(value)
                    .fetch_optional(&mut **self)
                    .await
                    .map_err($crate::error::db_error)?;
                row.map(|row| {
                    let doc: &str = row.try_get(0).map_err($crate::error::db_error)?;
                    Ok(clientele_domain::sync::StoredCustomer {
                        customer: $crate::primitives::decode_customer(doc)?,
                        password_hash: row.try_get(1).map_err($crate::error::db_error)?,
                    })
                })
                .transpose()
            }

            async fn commit(self) -> Result<(), clientele_domain::DomainError> {
                sqlx::Transaction::commit(self)
                    .await
                    .map_err(|error| $crate::error::db_error(error).commit_unconfirmed())
            }

            async fn rollback(self) -> Result<(), clientele_domain::DomainError> {
                sqlx::Transaction::rollback(self)
                    .await
                    .map_err($crate::error::db_error)
            }

            async fn insert_api_key(
                &mut self,
                new: &clientele_domain::NewApiKey,
                restore: bool,
            ) -> Result<bool, clientele_domain::DomainError> {
                let key = &new.key;
                let teams = serde_json::to_string(&key.teams)
                    .map_err(|e| clientele_domain::DomainError::Storage(Box::new(e)))?;
                let conflict = if restore {
                    " ON CONFLICT (lookup_hash) DO UPDATE SET revoked_at = NULL, \
                     role = excluded.role, teams = excluded.teams, \
                     secret_encrypted = excluded.secret_encrypted"
                } else {
                    ""
                };
                let sql = format!(
                    "INSERT INTO api_keys (id, name, role, teams, lookup_hash, secret_encrypted, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6, $7){conflict}"
                );
                let done = sqlx::query(&sql)
                    .bind(key.id.to_string())
                    .bind(&key.name)
                    .bind(key.role.as_str())
                    .bind(teams)
                    .bind(&new.lookup_hash)
                    .bind(&key.secret_encrypted)
                    .bind(key.created_at.as_micros())
                    .execute(&mut **self)
                    .await
                    .map_err($crate::error::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn revoke_api_key(
                &mut self,
                id: clientele_domain::ApiKeyId,
                at: clientele_domain::Timestamp,
            ) -> Result<bool, clientele_domain::DomainError> {
                let done = sqlx::query(
                    "UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id.to_string())
                .bind(at.as_micros())
                .execute(&mut **self)
                .await
                .map_err($crate::error::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn complete_idempotency(
                &mut self,
                claim: &clientele_domain::IdempotencyClaim,
                response: &clientele_domain::StoredResponse,
            ) -> Result<(), clientele_domain::DomainError> {
                // Only while the claim is still this request's (its `created_at`, no response
                // yet): a retry that took the key over runs the request itself, so this
                // transaction must not commit its write beside it.
                let done = sqlx::query(
                    "UPDATE idempotency_keys SET response_status = $3, response_headers = $4, \
                     response_body = $5, completed_at = $6 WHERE api_key_id = $1 AND key = $2 \
                     AND created_at = $7 AND response_status IS NULL",
                )
                    .bind(claim.api_key.to_string())
                    .bind(&claim.key)
                    .bind(i32::from(response.status))
                    .bind($crate::primitives::encode_headers(response))
                    .bind(&response.body)
                    .bind(clientele_domain::Timestamp::now().as_micros())
                    .bind(claim.at.as_micros())
                    .execute(&mut **self)
                    .await
                    .map_err($crate::error::db_error)?;
                if done.rows_affected() == 0 {
                    return Err(clientele_domain::DomainError::IdempotencyKeyTakenOver);
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::primitives::Queries for sqlx::Pool<$db> {
            async fn customer_doc(
                &self,
                locator: &clientele_domain::Locator,
            ) -> Result<Option<clientele_domain::CustomerDoc>, clientele_domain::DomainError> {
                use sqlx::Row;
                let (column, value) = $crate::primitives::locator_column(locator);
                let sql = format!("SELECT id, version, doc FROM customers WHERE {column} = $1");
                let row = sqlx::query(&sql)
                    .bind(value)
                    .fetch_optional(self)
                    .await
                    .map_err($crate::error::db_error)?;
                row.map(|row| {
                    let id: &str = row.try_get(0).map_err($crate::error::db_error)?;
                    Ok(clientele_domain::CustomerDoc {
                        id: $crate::primitives::decode_id(id)?,
                        version: row.try_get(1).map_err($crate::error::db_error)?,
                        json: row.try_get(2).map_err($crate::error::db_error)?,
                    })
                })
                .transpose()
            }

            async fn customer_page(
                &self,
                query: &clientele_domain::ListQuery,
            ) -> Result<clientele_domain::Page, clientele_domain::DomainError> {
                use clientele_domain::{Cursor, CustomerDoc, SortKey, SortOrder};
                use sqlx::Row;
                use $crate::search::{Bind, PageSql, Part, Plan, Strategy};
                fn bind_all<'q>(
                    mut statement: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
                    binds: Vec<Bind>,
                ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>> {
                    for bind in binds {
                        statement = match bind {
                            Bind::Int(value) => statement.bind(value),
                            Bind::Text(value) => statement.bind(value),
                        };
                    }
                    statement
                }
                async fn fetch(
                    conn: &mut <$db as sqlx::Database>::Connection,
                    page: PageSql,
                ) -> Result<Vec<<$db as sqlx::Database>::Row>, clientele_domain::DomainError> {
                    bind_all(sqlx::query(&page.sql), page.binds)
                        .fetch_all(conn)
                        .await
                        .map_err($crate::error::db_error)
                }
                /// Whether a capped count reaches its cap.
                async fn reaches(
                    conn: &mut <$db as sqlx::Database>::Connection,
                    count: Option<(PageSql, i64)>,
                ) -> Result<bool, clientele_domain::DomainError> {
                    let Some((page, cap)) = count else {
                        return Ok(false);
                    };
                    let rows = fetch(conn, page).await?;
                    let counted: i64 = match rows.first() {
                        Some(row) => row.try_get(0).map_err($crate::error::db_error)?,
                        None => 0,
                    };
                    Ok(counted >= cap)
                }
                /// A page of one part of the matches: probing within a window of the sort
                /// order, or if that window does not fill the page, from the term index.
                async fn probe_or_terms(
                    conn: &mut <$db as sqlx::Database>::Connection,
                    query: &clientele_domain::ListQuery,
                    plan: Plan,
                ) -> Result<Vec<<$db as sqlx::Database>::Row>, clientele_domain::DomainError> {
                    let rows = fetch(&mut *conn, $crate::search::page_sql(query, $dialect, plan)).await?;
                    if plan.q == Strategy::Probe && rows.len() <= query.limit as usize {
                        // Unless the window reached the end of the walk: then the probe has
                        // seen every candidate. Asked only of the modified customers past a
                        // window's edge, a part usually walked whole (the term index would
                        // fetch and sort every match of `q` for nothing); elsewhere a window
                        // that leaves the page unfilled was usually cut short, and asking
                        // would cost a second walk of it.
                        if plan.part == Part::ModifiedOutsideWindow {
                            if let Some(end) = $crate::search::window_end_sql(query, $dialect, plan.part) {
                                if fetch(&mut *conn, end).await?.is_empty() {
                                    return Ok(rows);
                                }
                            }
                        }
                        let terms = Plan { q: Strategy::Terms, ..plan };
                        return fetch(conn, $crate::search::page_sql(query, $dialect, terms)).await;
                    }
                    Ok(rows)
                }
                /// The first `count` candidates of a [`Strategy::NameOrder`] round after `from`,
                /// bucket by bucket of the last-name order from the cursor's: they usually lie
                /// in the first bucket read.
                async fn candidates(
                    conn: &mut <$db as sqlx::Database>::Connection,
                    query: &clientele_domain::ListQuery,
                    from: Option<(&str, &str)>,
                    count: i64,
                ) -> Result<Vec<<$db as sqlx::Database>::Row>, clientele_domain::DomainError> {
                    let mut found = Vec::new();
                    for buckets in $crate::search::Buckets::groups_from(from.map(|(key, _)| key)) {
                        let left = count - found.len() as i64;
                        let Some(sql) = $crate::search::name_order_candidates_sql(
                            query, $dialect, from, &buckets, left,
                        ) else {
                            break;
                        };
                        found.extend(fetch(&mut *conn, sql).await?);
                        if found.len() as i64 >= count {
                            break;
                        }
                    }
                    Ok(found)
                }
                /// A [`Strategy::NameOrder`] page of the matches outside the last-name range:
                /// candidates in last-name order from the term index, then the customers among
                /// them that pass the other filters, in rounds of growing size while those
                /// filters leave the page unfilled; after the last round, the term index decides.
                async fn name_order(
                    conn: &mut <$db as sqlx::Database>::Connection,
                    query: &clientele_domain::ListQuery,
                    plan: Plan,
                ) -> Result<Vec<<$db as sqlx::Database>::Row>, clientele_domain::DomainError> {
                    use $crate::search::{NAME_ORDER_GROWTH, NAME_ORDER_ROUNDS};
                    let db = $crate::error::db_error;
                    let Some(q) = query.filter.q.as_deref() else {
                        return Ok(Vec::new());
                    };
                    let (low, high) = clientele_domain::search::prefix_range(q);
                    let wanted = query.limit as usize + 1;
                    let mut rows = Vec::new();
                    let mut after = query.after.as_ref().and_then(|cursor| match &cursor.key {
                        SortKey::Text(key) => Some((key.clone(), cursor.id.to_string())),
                        SortKey::Time(_) => None,
                    });
                    let mut count = wanted as i64;
                    for _ in 0..NAME_ORDER_ROUNDS {
                        let from = after.as_ref().map(|(key, id)| (key.as_str(), id.as_str()));
                        let found = candidates(&mut *conn, query, from, count).await?;
                        let mut ids: Vec<String> = Vec::with_capacity(found.len());
                        let mut last = None;
                        for row in &found {
                            let key: String = row.try_get(0).map_err(db)?;
                            let id: String = row.try_get(1).map_err(db)?;
                            // A customer's entries are next to each other in this order; one in
                            // the last-name range belongs to the other part of the page.
                            let in_range = key.as_str() >= low.as_str() && key.as_str() < high.as_str();
                            if ids.last() != Some(&id) && !in_range {
                                ids.push(id.clone());
                            }
                            last = Some((key, id));
                        }
                        if !ids.is_empty() {
                            let list = serde_json::to_string(&ids)
                                .map_err(|e| clientele_domain::DomainError::Storage(Box::new(e)))?;
                            let left = (wanted - rows.len()) as i64;
                            let page = $crate::search::name_order_page_sql(query, $dialect, plan, list, left);
                            rows.extend(fetch(&mut *conn, page).await?);
                        }
                        if rows.len() >= wanted || (found.len() as i64) < count {
                            return Ok(rows);
                        }
                        after = last;
                        count *= NAME_ORDER_GROWTH;
                    }
                    let terms = Plan { q: Strategy::Terms, ..plan };
                    fetch(conn, $crate::search::page_sql(query, $dialect, terms)).await
                }
                // One read transaction for the counts and the page queries: the plan is chosen
                // on the snapshot the page is read from, and on PostgreSQL the queries stay
                // serial — the planner goes parallel for an index walk with a large estimate,
                // and starting workers cost more (10–20 ms measured) than any walk this
                // planner chooses saves.
                let mut tx = self.begin().await.map_err($crate::error::db_error)?;
                if $dialect == $crate::search::Dialect::Postgres {
                    sqlx::query("SET LOCAL max_parallel_workers_per_gather = 0")
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::error::db_error)?;
                }
                let conn: &mut <$db as sqlx::Database>::Connection = &mut tx;
                let matches = |part| $crate::search::count_matches_sql(query, $dialect, part);
                let strategy = |many| if many { Strategy::Probe } else { Strategy::Terms };
                let plan = Plan {
                    q: strategy(reaches(&mut *conn, matches(Part::All)).await?),
                    wide_window: reaches(&mut *conn, $crate::search::window_count_sql(query)).await?,
                    part: Part::All,
                };
                // The query asks for one row more than the limit: whether there is a next page.
                let rows = if plan.splits_by_name(query) {
                    // The matches in the prefix range of the sort key, and the others: each
                    // part's first rows, merged in sort order (the parts are disjoint).
                    let range = Plan { part: Part::NameRange, ..plan };
                    let mut rows = fetch(&mut *conn, $crate::search::page_sql(query, $dialect, range))
                        .await?;
                    // The other matches: many are read in last-name order from the term index
                    // (walking the sort order would meet them only where their customers' last
                    // names happen to be), few are all read and sorted.
                    let many = reaches(&mut *conn, matches(Part::OutsideNameRange)).await?;
                    let others = Plan {
                        q: if many { Strategy::NameOrder } else { Strategy::Terms },
                        part: Part::OutsideNameRange,
                        ..plan
                    };
                    rows.extend(match others.q {
                        Strategy::NameOrder => name_order(&mut *conn, query, others).await?,
                        _ => fetch(&mut *conn, $crate::search::page_sql(query, $dialect, others)).await?,
                    });
                    let mut keyed = rows
                        .into_iter()
                        .map(|row| {
                            let key: (String, String) = (
                                row.try_get(5).map_err($crate::error::db_error)?,
                                row.try_get(0).map_err($crate::error::db_error)?,
                            );
                            Ok((key, row))
                        })
                        .collect::<Result<Vec<_>, clientele_domain::DomainError>>()?;
                    keyed.sort_by(|a, b| a.0.cmp(&b.0));
                    keyed.truncate(query.limit as usize + 1);
                    keyed.into_iter().map(|(_, row)| row).collect()
                } else if let Some(parts) = plan.window_parts(query) {
                    // Two ranges of the sort key, in the order of the walk: the second part is
                    // read only when the first leaves the page unfilled.
                    let mut rows = Vec::new();
                    for part in parts {
                        if rows.len() > query.limit as usize {
                            break;
                        }
                        rows.extend(probe_or_terms(&mut *conn, query, Plan { part, ..plan }).await?);
                    }
                    rows.truncate(query.limit as usize + 1);
                    rows
                } else {
                    probe_or_terms(&mut *conn, query, plan).await?
                };
                tx.commit().await.map_err($crate::error::db_error)?;
                let more = rows.len() > query.limit as usize;
                let mut items = Vec::with_capacity(rows.len().min(query.limit as usize));
                let mut next = None;
                for row in rows.iter().take(query.limit as usize) {
                    let db = $crate::error::db_error;
                    let id = $crate::primitives::decode_id(row.try_get(0).map_err(db)?)?;
                    if more {
                        let key = match query.sort {
                            SortOrder::CreatedAsc | SortOrder::CreatedDesc => {
                                SortKey::Time(row.try_get(3).map_err(db)?)
                            }
                            SortOrder::UpdatedAsc | SortOrder::UpdatedDesc => {
                                SortKey::Time(row.try_get(4).map_err(db)?)
                            }
                            SortOrder::LastNameAsc => SortKey::Text(row.try_get(5).map_err(db)?),
                        };
                        next = Some(Cursor { key, id });
                    }
                    items.push(CustomerDoc {
                        id,
                        version: row.try_get(1).map_err(db)?,
                        json: row.try_get(2).map_err(db)?,
                    });
                }
                Ok(clientele_domain::Page { items, next })
            }

            async fn password_hash(
                &self,
                locator: &clientele_domain::Locator,
            ) -> Result<
                Option<(clientele_domain::CustomerId, Option<String>)>,
                clientele_domain::DomainError,
            > {
                use sqlx::Row;
                let (column, value) = $crate::primitives::locator_column(locator);
                let sql = format!("SELECT id, password_hash FROM customers WHERE {column} = $1");
                let row = sqlx::query(&sql)
                    .bind(value)
                    .fetch_optional(self)
                    .await
                    .map_err($crate::error::db_error)?;
                row.map(|row| {
                    let id: &str = row.try_get(0).map_err($crate::error::db_error)?;
                    Ok((
                        $crate::primitives::decode_id(id)?,
                        row.try_get(1).map_err($crate::error::db_error)?,
                    ))
                })
                .transpose()
            }

            async fn api_key_where(
                &self,
                column: $crate::primitives::KeyColumn,
                value: $crate::primitives::KeyValue<'_>,
            ) -> Result<Option<clientele_domain::ApiKey>, clientele_domain::DomainError> {
                use sqlx::Row;
                use $crate::primitives::{KeyColumn, KeyValue};
                let column = match column {
                    KeyColumn::Id => "id",
                    KeyColumn::LookupHash => "lookup_hash",
                };
                let sql = format!(
                    "SELECT id, name, role, teams, secret_encrypted, created_at FROM api_keys \
                     WHERE {column} = $1 AND revoked_at IS NULL"
                );
                let statement = sqlx::query(&sql);
                let statement = match value {
                    KeyValue::Text(text) => statement.bind(text),
                    KeyValue::Bytes(bytes) => statement.bind(bytes),
                };
                let row = statement
                    .fetch_optional(self)
                    .await
                    .map_err($crate::error::db_error)?;
                row.map(|row| {
                    let db = $crate::error::db_error;
                    $crate::primitives::decode_api_key(
                        row.try_get(0).map_err(db)?,
                        row.try_get(1).map_err(db)?,
                        row.try_get(2).map_err(db)?,
                        row.try_get(3).map_err(db)?,
                        row.try_get(4).map_err(db)?,
                        row.try_get(5).map_err(db)?,
                    )
                })
                .transpose()
            }

            async fn api_keys(
                &self,
                page: &clientele_domain::NamePage,
            ) -> Result<Vec<clientele_domain::ApiKey>, clientele_domain::DomainError> {
                use sqlx::Row;
                let rows = sqlx::query(
                    "SELECT id, name, role, teams, secret_encrypted, created_at FROM api_keys \
                     WHERE revoked_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
                )
                .bind(page.after.as_deref().unwrap_or(""))
                .bind(i64::from(page.limit))
                .fetch_all(self)
                .await
                .map_err($crate::error::db_error)?;
                rows.iter()
                    .map(|row| {
                        let db = $crate::error::db_error;
                        $crate::primitives::decode_api_key(
                            row.try_get(0).map_err(db)?,
                            row.try_get(1).map_err(db)?,
                            row.try_get(2).map_err(db)?,
                            row.try_get(3).map_err(db)?,
                            row.try_get(4).map_err(db)?,
                            row.try_get(5).map_err(db)?,
                        )
                    })
                    .collect()
            }

            async fn count_api_keys(&self) -> Result<i64, clientele_domain::DomainError> {
                sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL")
                    .fetch_one(self)
                    .await
                    .map_err($crate::error::db_error)
            }

            async fn ping(&self) -> Result<(), clientele_domain::DomainError> {
                sqlx::query("SELECT 1")
                    .execute(self)
                    .await
                    .map(|_| ())
                    .map_err($crate::error::db_error)
            }

            async fn insert_claim(
                &self,
                claim: &clientele_domain::IdempotencyClaim,
                owner: &str,
            ) -> Result<bool, clientele_domain::DomainError> {
                let done = sqlx::query(
                    "INSERT INTO idempotency_keys (api_key_id, key, fingerprint, created_at, owner) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (api_key_id, key) DO NOTHING",
                )
                .bind(claim.api_key.to_string())
                .bind(&claim.key)
                .bind(&claim.fingerprint)
                .bind(claim.at.as_micros())
                .bind(owner)
                .execute(self)
                .await
                .map_err($crate::error::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn load_claim(
                &self,
                claim: &clientele_domain::IdempotencyClaim,
            ) -> Result<Option<$crate::primitives::ClaimRow>, clientele_domain::DomainError> {
                let row: Option<$crate::primitives::ClaimColumns> = sqlx::query_as(
                    "SELECT k.fingerprint, k.created_at, k.response_status, k.response_headers, \
                     k.response_body, k.owner, p.seen_at FROM idempotency_keys AS k \
                     LEFT JOIN hub_processes AS p ON p.incarnation = k.owner \
                     WHERE k.api_key_id = $1 AND k.key = $2",
                )
                .bind(claim.api_key.to_string())
                .bind(&claim.key)
                .fetch_optional(self)
                .await
                .map_err($crate::error::db_error)?;
                Ok(row.map($crate::primitives::decode_claim))
            }

            async fn take_over_claim(
                &self,
                claim: &clientele_domain::IdempotencyClaim,
                created_at: i64,
                expired: bool,
                owner: &str,
            ) -> Result<bool, clientele_domain::DomainError> {
                // An abandoned claim only while it still has no response: the request taken
                // for gone may have finished since it was read (and then replays).
                let done = sqlx::query(
                    "UPDATE idempotency_keys SET fingerprint = $3, created_at = $4, \
                     completed_at = NULL, response_status = NULL, response_headers = NULL, \
                     response_body = NULL, owner = $6 \
                     WHERE api_key_id = $1 AND key = $2 AND created_at = $5 \
                     AND (response_status IS NULL OR $7)",
                )
                .bind(claim.api_key.to_string())
                .bind(&claim.key)
                .bind(&claim.fingerprint)
                .bind(claim.at.as_micros())
                .bind(created_at)
                .bind(owner)
                .bind(expired)
                .execute(self)
                .await
                .map_err($crate::error::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn heartbeat(
                &self,
                incarnation: &str,
                now: clientele_domain::Timestamp,
                forget_before: clientele_domain::Timestamp,
            ) -> Result<(), clientele_domain::DomainError> {
                sqlx::query(
                    "INSERT INTO hub_processes (incarnation, seen_at) VALUES ($1, $2) \
                     ON CONFLICT (incarnation) DO UPDATE SET seen_at = excluded.seen_at",
                )
                .bind(incarnation)
                .bind(now.as_micros())
                .execute(self)
                .await
                .map_err($crate::error::db_error)?;
                sqlx::query("DELETE FROM hub_processes WHERE seen_at < $1")
                    .bind(forget_before.as_micros())
                    .execute(self)
                    .await
                    .map_err($crate::error::db_error)?;
                Ok(())
            }

            async fn release_claim(
                &self,
                claim: &clientele_domain::IdempotencyClaim,
            ) -> Result<(), clientele_domain::DomainError> {
                // This claim's row only (`created_at` is the claim's time): a release tried
                // again late must not give back a claim another request took over since.
                sqlx::query(
                    "DELETE FROM idempotency_keys WHERE api_key_id = $1 AND key = $2 \
                     AND created_at = $3 AND response_status IS NULL",
                )
                .bind(claim.api_key.to_string())
                .bind(&claim.key)
                .bind(claim.at.as_micros())
                .execute(self)
                .await
                .map_err($crate::error::db_error)?;
                Ok(())
            }

            async fn purge_claims(
                &self,
                before: clientele_domain::Timestamp,
            ) -> Result<u64, clientele_domain::DomainError> {
                sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                    .bind(before.as_micros())
                    .execute(self)
                    .await
                    .map(|done| done.rows_affected())
                    .map_err($crate::error::db_error)
            }

            async fn insert_nonce(
                &self,
                key: clientele_domain::ApiKeyId,
                nonce: &str,
                at: clientele_domain::Timestamp,
            ) -> Result<bool, clientele_domain::DomainError> {
                let done = sqlx::query(
                    "INSERT INTO request_nonces (api_key_id, nonce, seen_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (api_key_id, nonce) DO NOTHING",
                )
                .bind(key.to_string())
                .bind(nonce)
                .bind(at.as_micros())
                .execute(self)
                .await
                .map_err($crate::error::db_error)?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_nonce(
                &self,
                key: clientele_domain::ApiKeyId,
                nonce: &str,
            ) -> Result<(), clientele_domain::DomainError> {
                sqlx::query("DELETE FROM request_nonces WHERE api_key_id = $1 AND nonce = $2")
                    .bind(key.to_string())
                    .bind(nonce)
                    .execute(self)
                    .await
                    .map(|_| ())
                    .map_err($crate::error::db_error)
            }

            async fn purge_nonces(
                &self,
                before: clientele_domain::Timestamp,
            ) -> Result<u64, clientele_domain::DomainError> {
                sqlx::query("DELETE FROM request_nonces WHERE seen_at < $1")
                    .bind(before.as_micros())
                    .execute(self)
                    .await
                    .map(|done| done.rows_affected())
                    .map_err($crate::error::db_error)
            }
        }
    };
}

pub(crate) use sql_primitives;
