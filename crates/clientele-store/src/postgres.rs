//! PostgreSQL: one pool for reads and writes; write transactions lock the customer row
//! (`SELECT ... FOR UPDATE`) so concurrent writers, in this process or another hub process on the
//! same database, never lose an update.

use async_trait::async_trait;
use clientele_domain::{DomainError, PoolStats};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use clientele_domain::sync::{ChangeRecord, StoredCustomer};
use clientele_domain::{ChangeKind, CustomerId, CustomerKey};
use sqlx::Row;

use crate::directory::Memberships;
use crate::error::db_error;
use crate::postgres_copy::CopyRows;
use crate::primitives::{
    BatchTx, CustomerRow, decode_id, key_column, sql_primitives, stored_customer,
};
use crate::search::{TermEdit, TermRows};
use crate::sql_store::{Backend, SqlStore};
use crate::{StoreConfig, StoreError};

crate::directory::directory_primitives!(
    Postgres,
    share = " FOR SHARE",
    update = " FOR UPDATE",
    serialize_groups = "LOCK TABLE groups IN SHARE ROW EXCLUSIVE MODE",
    insert_memberships = insert_memberships
);
sql_primitives!(
    Postgres,
    lock = " FOR UPDATE",
    dialect = crate::search::Dialect::Postgres
);
crate::search::backfill_primitives!(Postgres);
crate::feed::feed_primitives!(
    Postgres,
    teams_match = "teams::jsonb ?| $3::text[]",
    teams_param = <[String]>::to_vec
);

/// The advisory lock that orders commits of change-recording transactions (`'clnt'`).
const FEED_LOCK: i64 = 0x636c_6e74;

/// The advisory lock every sync batch holds shared, and a batch that keeps losing races for
/// new keys holds alone (`'clsy'`).
const BATCH_LOCK: i64 = 0x636c_7379;

/// Connections in a hub process's pool when `--db-max-connections` is not given: they wait on
/// the network and the server's own processes, not on this machine's cores.
pub(crate) const DEFAULT_POOL_SIZE: u32 = 16;
/// The channel hub processes `LISTEN` on for committed changes.
const FEED_CHANNEL: &str = "clientele_changes";
/// Notified at the commit of every API key revocation, by any hub process.
const KEYS_CHANNEL: &str = "clientele_api_keys";

fn ids(ids: &[CustomerId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

/// The columns of customer rows as parallel arrays, for `UNNEST`.
#[derive(Default)]
struct Columns {
    id: Vec<String>,
    external_id: Vec<Option<String>>,
    email_norm: Vec<Option<String>>,
    username: Vec<Option<String>>,
    last_name_sort: Vec<String>,
    archived: Vec<bool>,
    version: Vec<i64>,
    created_at: Vec<i64>,
    updated_at: Vec<i64>,
    password_hash: Vec<Option<String>>,
    doc: Vec<String>,
}

impl Columns {
    fn of(rows: &[CustomerRow<'_>]) -> Self {
        let mut columns = Columns::default();
        for row in rows {
            let c = row.customer;
            columns.id.push(c.id.to_string());
            columns.external_id.push(c.external_id.clone());
            columns.email_norm.push(row.email_norm.clone());
            columns.username.push(c.username.clone());
            columns.last_name_sort.push(row.last_name_sort.clone());
            columns.archived.push(c.archived);
            columns.version.push(c.version);
            columns.created_at.push(c.created_at.as_micros());
            columns.updated_at.push(c.updated_at.as_micros());
            columns
                .password_hash
                .push(row.password_hash.map(str::to_owned));
            columns.doc.push(row.doc.to_owned());
        }
        columns
    }
}

#[async_trait]
impl BatchTx for Transaction<'static, Postgres> {
    async fn lock_batches(&mut self, alone: bool) -> Result<(), DomainError> {
        let sql = if alone {
            "SELECT pg_advisory_xact_lock($1)"
        } else {
            "SELECT pg_advisory_xact_lock_shared($1)"
        };
        sqlx::query(sql)
            .bind(BATCH_LOCK)
            .execute(&mut **self)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn load_many(
        &mut self,
        key: CustomerKey,
        values: &[String],
    ) -> Result<Vec<StoredCustomer>, DomainError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT doc, password_hash FROM customers WHERE {} = ANY($1) ORDER BY id FOR UPDATE",
            key_column(key)
        );
        let rows = sqlx::query(&sql)
            .bind(values)
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

    async fn versions(
        &mut self,
        key: CustomerKey,
        values: &[String],
    ) -> Result<Vec<(CustomerId, i64)>, DomainError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, version FROM customers WHERE {} = ANY($1)",
            key_column(key)
        );
        let rows = sqlx::query(&sql)
            .bind(values)
            .fetch_all(&mut **self)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok((
                    decode_id(row.try_get(0).map_err(db_error)?)?,
                    row.try_get(1).map_err(db_error)?,
                ))
            })
            .collect()
    }

    async fn owners(
        &mut self,
        key: CustomerKey,
        values: &[String],
    ) -> Result<Vec<(String, CustomerId)>, DomainError> {
        let column = key_column(key);
        let sql = format!("SELECT {column}, id FROM customers WHERE {column} = ANY($1)");
        let rows = sqlx::query(&sql)
            .bind(values)
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

    async fn delete_many(&mut self, list: &[CustomerId]) -> Result<(), DomainError> {
        if list.is_empty() {
            return Ok(());
        }
        // A customer's own rows have no foreign keys (their per-row checks cost bulk sync more
        // than the rows themselves; migrations 0012 and 0014): they go here, with it.
        sqlx::query(
            "WITH terms AS (DELETE FROM customer_terms WHERE customer_id = ANY($1)), \
                  tags AS (DELETE FROM customer_tags WHERE customer_id = ANY($1)), \
                  groups AS (DELETE FROM customer_groups WHERE customer_id = ANY($1)), \
                  teams AS (DELETE FROM customer_teams WHERE customer_id = ANY($1)) \
             DELETE FROM customers WHERE id = ANY($1)",
        )
        .bind(ids(list))
        .execute(&mut **self)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn clear_keys(&mut self, list: &[CustomerId]) -> Result<(), DomainError> {
        if list.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE customers SET external_id = NULL, email_norm = NULL, username = NULL \
             WHERE id = ANY($1)",
        )
        .bind(ids(list))
        .execute(&mut **self)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn update_many(&mut self, rows: &[CustomerRow<'_>]) -> Result<(), DomainError> {
        if rows.is_empty() {
            return Ok(());
        }
        let c = Columns::of(rows);
        sqlx::query(
            "UPDATE customers AS c SET external_id = u.external_id, email_norm = u.email_norm, \
             username = u.username, last_name_sort = u.last_name_sort, archived = u.archived, \
             version = u.version, updated_at = u.updated_at, password_hash = u.password_hash, \
             doc = u.doc \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bool[], \
                         $7::int8[], $8::int8[], $9::text[], $10::text[]) \
               AS u(id, external_id, email_norm, username, last_name_sort, archived, version, \
                    updated_at, password_hash, doc) \
             WHERE c.id = u.id",
        )
        .bind(c.id)
        .bind(c.external_id)
        .bind(c.email_norm)
        .bind(c.username)
        .bind(c.last_name_sort)
        .bind(c.archived)
        .bind(c.version)
        .bind(c.updated_at)
        .bind(c.password_hash)
        .bind(c.doc)
        .execute(&mut **self)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn insert_many(&mut self, rows: &[CustomerRow<'_>]) -> Result<(), DomainError> {
        if rows.is_empty() {
            return Ok(());
        }
        let c = Columns::of(rows);
        sqlx::query(
            "INSERT INTO customers (id, external_id, email_norm, username, last_name_sort, \
             archived, version, created_at, updated_at, password_hash, doc) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                  $6::bool[], $7::int8[], $8::int8[], $9::int8[], $10::text[], \
                                  $11::text[])",
        )
        .bind(c.id)
        .bind(c.external_id)
        .bind(c.email_norm)
        .bind(c.username)
        .bind(c.last_name_sort)
        .bind(c.archived)
        .bind(c.version)
        .bind(c.created_at)
        .bind(c.updated_at)
        .bind(c.password_hash)
        .bind(c.doc)
        .execute(&mut **self)
        .await
        .map_err(db_error)?;
        self.write_terms(rows, false).await
    }

    async fn write_terms(
        &mut self,
        rows: &[CustomerRow<'_>],
        replace: bool,
    ) -> Result<(), DomainError> {
        store_terms(self, rows, replace).await
    }

    async fn edit_terms(&mut self, edits: &[TermEdit<'_>]) -> Result<(), DomainError> {
        edit_terms(self, edits).await
    }

    async fn record_changes(&mut self, changes: &[ChangeRecord]) -> Result<(), DomainError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut customer_id = Vec::with_capacity(changes.len());
        let mut external_id = Vec::with_capacity(changes.len());
        let mut kind = Vec::with_capacity(changes.len());
        let mut version = Vec::with_capacity(changes.len());
        let mut at = Vec::with_capacity(changes.len());
        let mut customer = Vec::with_capacity(changes.len());
        let mut teams = Vec::with_capacity(changes.len());
        for change in changes {
            customer_id.push(change.customer_id.to_string());
            external_id.push(change.external_id.clone());
            kind.push(change.kind.as_str());
            version.push(change.version);
            at.push(change.at.as_micros());
            customer.push(change.customer.clone());
            teams.push(serde_json::to_string(&change.teams).unwrap_or_else(|_| "[]".into()));
        }
        // Sequence numbers handed out before commit could become visible out of order. So the
        // seqs are drawn last, under a lock held until commit: whoever draws after us commits
        // after us, and seq order is commit order (docs/change-feed.md). The notification is
        // delivered at commit, to every hub process listening.
        sqlx::query("SELECT pg_advisory_xact_lock($1), pg_notify($2, '')")
            .bind(FEED_LOCK)
            .bind(FEED_CHANNEL)
            .execute(&mut **self)
            .await
            .map_err(db_error)?;
        // WITH ORDINALITY keeps the batch's order in the sequence numbers.
        sqlx::query(
            "INSERT INTO changes (customer_id, external_id, kind, version, at, customer, teams) \
             SELECT customer_id, external_id, kind, version, at, customer, teams \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::text[], \
                         $7::text[]) \
               WITH ORDINALITY AS u(customer_id, external_id, kind, version, at, customer, teams, n) \
             ORDER BY n",
        )
        .bind(customer_id)
        .bind(external_id)
        .bind(kind)
        .bind(version)
        .bind(at)
        .bind(customer)
        .bind(teams)
        .execute(&mut **self)
        .await
        .map_err(db_error)?;
        let erased: Vec<String> = changes
            .iter()
            .filter(|change| change.kind == ChangeKind::Deleted)
            .map(|change| change.customer_id.to_string())
            .collect();
        if !erased.is_empty() {
            // A deletion is an erasure: the documents of the customer's earlier changes leave
            // the feed with it. Rows are locked in seq order, as the retention purge's range
            // delete mostly meets them; a deadlock with it is retried as any other.
            sqlx::query(
                "UPDATE changes SET customer = NULL WHERE seq IN ( \
                   SELECT seq FROM changes \
                   WHERE customer_id = ANY($1) AND customer IS NOT NULL \
                   ORDER BY seq FOR UPDATE)",
            )
            .bind(erased)
            .execute(&mut **self)
            .await
            .map_err(db_error)?;
        }
        Ok(())
    }
}

/// Writes the search terms of these rows, replacing their old ones when `replace`.
async fn store_terms(
    tx: &mut Transaction<'static, Postgres>,
    rows: &[CustomerRow<'_>],
    replace: bool,
) -> Result<(), DomainError> {
    if replace {
        let list: Vec<String> = rows.iter().map(|r| r.customer.id.to_string()).collect();
        sqlx::query("DELETE FROM customer_terms WHERE customer_id = ANY($1)")
            .bind(list)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
    }
    insert_terms(tx, crate::search::term_rows(rows), replace).await
}

/// Deletes the rows of the terms these updates remove, by `(customer_id, term)`, and inserts
/// the added ones.
async fn edit_terms(
    tx: &mut Transaction<'static, Postgres>,
    edits: &[TermEdit<'_>],
) -> Result<(), DomainError> {
    let (ids, terms) = TermEdit::removed_rows(edits);
    if !ids.is_empty() {
        sqlx::query(
            "DELETE FROM customer_terms WHERE (customer_id, term) IN \
             (SELECT * FROM UNNEST($1::text[], $2::text[]))",
        )
        .bind(ids)
        .bind(terms)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    }
    insert_terms(tx, TermEdit::added_rows(edits), true).await
}

/// Inserts term rows; `may_exist` where the customer is not new.
async fn insert_terms(
    tx: &mut Transaction<'static, Postgres>,
    rows: TermRows<'_>,
    may_exist: bool,
) -> Result<(), DomainError> {
    if rows.terms.is_empty() {
        return Ok(());
    }
    // New customers' ids are new, so their terms are copied in plainly. Terms replaced may meet
    // the same rows written by a concurrent backfill (two hub processes starting together), so
    // they take `ON CONFLICT`, which `COPY` has not.
    if !may_exist {
        let mut copy = CopyRows::with_capacity(rows.terms.len(), 80);
        for i in 0..rows.terms.len() {
            copy.text(&rows.terms[i])
                .text(&rows.ids[i])
                .bool(rows.multiword[i])
                .bool(rows.name_prefix[i])
                .text(rows.last_name_sort[i])
                .int(rows.name_bucket[i])
                .bool(rows.archived[i])
                .end_row();
        }
        return copy
            .copy_in(
                tx,
                "COPY customer_terms (term, customer_id, multiword, name_prefix, last_name_sort, \
                 name_bucket, archived) FROM STDIN",
            )
            .await;
    }
    sqlx::query(
        "INSERT INTO customer_terms \
         (term, customer_id, multiword, name_prefix, last_name_sort, name_bucket, archived) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::bool[], $5::text[], \
         $6::int8[], $7::bool[]) ON CONFLICT DO NOTHING",
    )
    .bind(rows.terms)
    .bind(rows.ids)
    .bind(rows.multiword)
    .bind(rows.name_prefix)
    .bind(rows.last_name_sort)
    .bind(rows.name_bucket)
    .bind(rows.archived)
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Inserts membership rows, one statement over arrays per table that has any.
async fn insert_memberships(
    tx: &mut Transaction<'static, Postgres>,
    all: &Memberships,
) -> Result<(), DomainError> {
    insert_pairs(
        tx,
        "INSERT INTO customer_tags (customer_id, tag) \
         SELECT * FROM UNNEST($1::text[], $2::text[])",
        &all.tags,
    )
    .await?;
    insert_pairs(
        tx,
        "INSERT INTO customer_teams (customer_id, team_code) \
         SELECT * FROM UNNEST($1::text[], $2::text[])",
        &all.teams,
    )
    .await?;
    if all.groups.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(all.groups.len());
    let mut codes = Vec::with_capacity(all.groups.len());
    let mut subscribed = Vec::with_capacity(all.groups.len());
    for (id, code, flag) in &all.groups {
        ids.push(id.as_str());
        codes.push(code.as_str());
        subscribed.push(*flag);
    }
    sqlx::query(
        "INSERT INTO customer_groups (customer_id, group_code, subscribed) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bool[])",
    )
    .bind(ids)
    .bind(codes)
    .bind(subscribed)
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Runs `sql`, whose `$1` and `$2` are text arrays, over the two columns of `rows`, if any.
async fn insert_pairs(
    tx: &mut Transaction<'static, Postgres>,
    sql: &str,
    rows: &[(String, String)],
) -> Result<(), DomainError> {
    if rows.is_empty() {
        return Ok(());
    }
    let (first, second): (Vec<&str>, Vec<&str>) =
        rows.iter().map(|(a, b)| (a.as_str(), b.as_str())).unzip();
    sqlx::query(sql)
        .bind(first)
        .bind(second)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

pub struct PostgresBackend {
    pool: PgPool,
}

pub type PostgresStore = SqlStore<PostgresBackend>;

impl PostgresStore {
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let options: PgConnectOptions = config.url.parse().map_err(StoreError::Connect)?;
        // No ping on every checkout (a network round trip per query): a connection that died
        // fails its query with a retryable 503 and leaves the pool; idle ones are recycled.
        let pool = PgPoolOptions::new()
            .max_connections(config.pool_size().max(2))
            .test_before_acquire(false)
            .idle_timeout(std::time::Duration::from_secs(60))
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.application_name("clientele"))
            .await
            .map_err(StoreError::Connect)?;
        // sqlx takes an advisory lock, so hub processes starting together migrate once.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let backend = PostgresBackend { pool: pool.clone() };
        crate::search::backfill_terms(&backend)
            .await
            .map_err(StoreError::Backfill)?;
        let store = SqlStore::new(backend);
        tokio::spawn(listen(
            pool,
            store.feed_signal().clone(),
            store.key_revoked().clone(),
        ));
        Ok(store)
    }
}

/// Forwards `NOTIFY clientele_changes` (sent at the commit of every change, by any hub process
/// on this database) to this process's long polls, and `NOTIFY clientele_api_keys` (at the
/// commit of every key revocation) to its key caches; reconnects when the connection drops.
/// Until it is back, long polls still look again every second and cached keys live a second.
async fn listen(
    pool: PgPool,
    signal: crate::feed::FeedSignal,
    key_revoked: crate::sql_store::KeyRevoked,
) {
    loop {
        match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                if let Err(error) = listener.listen_all([FEED_CHANNEL, KEYS_CHANNEL]).await {
                    tracing::warn!(error = %error, "cannot LISTEN for changes");
                } else {
                    // A change or a revocation may have been committed while no one listened.
                    signal.notify();
                    key_revoked.notify();
                    loop {
                        match listener.recv().await {
                            Ok(notice) if notice.channel() == KEYS_CHANNEL => key_revoked.notify(),
                            Ok(_) => signal.notify(),
                            Err(error) => {
                                tracing::warn!(error = %error, "change listener lost");
                                break;
                            }
                        }
                    }
                }
            }
            Err(error) => tracing::warn!(error = %error, "cannot connect the change listener"),
        }
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
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

    async fn begin_snapshot(&self) -> Result<Option<Self::Tx>, DomainError> {
        Ok(None)
    }

    fn reads(&self) -> &PgPool {
        &self.pool
    }

    fn writes(&self) -> &PgPool {
        &self.pool
    }

    async fn announce_key_revocation(&self, tx: &mut Self::Tx) -> Result<(), DomainError> {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(KEYS_CHANNEL)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle() as u32,
        }
    }
}
