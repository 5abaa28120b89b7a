//! SQLite, the embedded default: WAL mode, one writer connection (SQLite runs one write
//! transaction at a time anyway; queuing in-process avoids busy-retry storms) and a pool of
//! readers that never block on it.

use std::str::FromStr;

use async_trait::async_trait;
use clientele_domain::{DomainError, PoolStats};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use clientele_domain::sync::{ChangeRecord, StoredCustomer};
use clientele_domain::{ChangeKind, Customer, CustomerDoc, CustomerId, CustomerKey, Locator};

use crate::checkpoint::Checkpointer;
use crate::directory::Memberships;
use crate::error::db_error;
use crate::primitives::{BatchTx, CustomerRow, Queries, decode_id, key_column, sql_primitives};
use crate::search::{TermEdit, TermRows};
use crate::sql_store::{Backend, SqlStore};
use crate::sqlite_point_reads::PointReads;
use crate::sqlite_rows::{Param, execute_per_row};
use crate::{SqliteSync, StoreConfig, StoreError};

/// How the hub runs SQLite: its connections' page caches and how its WAL is checkpointed. The
/// benchmarks' raw floors apply the same settings, so that a floor measures SQLite under the
/// hub's own regime (docs/benchmarks.md).
pub mod settings {
    use std::time::Duration;

    /// The one writer's page cache, in KiB.
    pub const WRITER_CACHE_KIB: u32 = 65_536;
    /// Each reader's page cache, in KiB: 8 MiB each bounds the process (16 readers: 128 MiB)
    /// while the OS page cache still holds the whole file for all of them.
    pub const READER_CACHE_KIB: u32 = 8_192;
    /// The checkpointer's page cache, in KiB: it only copies pages from the WAL.
    pub const CHECKPOINTER_CACHE_KIB: u32 = 2_048;
    /// How often a connection of its own copies the WAL back (a `PASSIVE` checkpoint). Each
    /// checkpoint ends in an fsync that holds up the writer's own writes while it lasts, so
    /// small and frequent ones beat large and rare ones: against 200 ms and 1 s, 50 ms gave
    /// single creates the lowest p99 and bulk sync its best rate.
    pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(50);
    /// WAL pages past which the writer checkpoints itself after all (64 MiB of 4 KiB pages),
    /// in case the checkpointer falls behind.
    pub const WRITER_BACKSTOP_PAGES: u32 = 16_384;

    /// Readers opened when `--db-max-connections` is not given: twice the CPU cores, 2 to 16
    /// ([`crate::StoreConfig::pool_size`] says why).
    pub fn default_readers() -> u32 {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        u32::try_from(2 * cores).unwrap_or(u32::MAX).clamp(2, 16)
    }

    /// A page cache size as SQLite's `cache_size` pragma takes it (negative: KiB).
    pub fn cache_size(kib: u32) -> String {
        format!("-{kib}")
    }
}

crate::directory::directory_primitives!(
    Sqlite,
    share = "",
    update = "",
    serialize_groups = "",
    insert_memberships = insert_memberships
);
sql_primitives!(Sqlite, lock = "", dialect = crate::search::Dialect::Sqlite);
crate::search::backfill_primitives!(Sqlite);
crate::feed::feed_primitives!(
    Sqlite,
    teams_match = "EXISTS (SELECT 1 FROM json_each(changes.teams) AS t \
                   WHERE t.value IN (SELECT value FROM json_each($3)))",
    teams_param = json_list
);

/// Whether SQLite was built with `SQLITE_ENABLE_MEMORY_MANAGEMENT`, which gives every
/// connection's page cache one budget shared with all the others (.cargo/config.toml says why
/// the hub is built without it).
async fn shares_one_page_cache(pool: &SqlitePool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pragma_compile_options \
         WHERE compile_options = 'ENABLE_MEMORY_MANAGEMENT'",
    )
    .fetch_one(pool)
    .await
    .map(|found| found > 0)
}

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
        // The stored documents are JSON already: concatenated, not parsed and written again
        // as `json(doc)` would (7 % of the hub's time in a profile of bulk sync).
        let rows: Vec<(Customer, Option<String>)> = self
            .aggregate(
                "'[' || coalesce(group_concat('[' || doc || ',' || \
                 coalesce(json_quote(password_hash), 'null') || ']', ','), '') || ']'",
                key_column(key),
                values,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|(customer, password_hash)| StoredCustomer {
                customer,
                password_hash,
            })
            .collect())
    }

    async fn versions(
        &mut self,
        key: CustomerKey,
        values: &[String],
    ) -> Result<Vec<(CustomerId, i64)>, DomainError> {
        let rows: Vec<(String, i64)> = self
            .aggregate(
                "json_group_array(json_array(id, version))",
                key_column(key),
                values,
            )
            .await?;
        rows.into_iter()
            .map(|(id, version)| Ok((decode_id(&id)?, version)))
            .collect()
    }

    async fn owners(
        &mut self,
        key: CustomerKey,
        values: &[String],
    ) -> Result<Vec<(String, CustomerId)>, DomainError> {
        let column = key_column(key);
        let rows: Vec<(String, String)> = self
            .aggregate(
                &format!("json_group_array(json_array({column}, id))"),
                column,
                values,
            )
            .await?;
        rows.into_iter()
            .map(|(value, id)| Ok((value, decode_id(&id)?)))
            .collect()
    }

    async fn delete_many(&mut self, ids: &[CustomerId]) -> Result<(), DomainError> {
        self.for_ids(
            "DELETE FROM customers WHERE id IN (SELECT value FROM json_each($1))",
            ids,
        )
        .await
    }

    async fn clear_keys(&mut self, ids: &[CustomerId]) -> Result<(), DomainError> {
        let sql = "UPDATE customers SET external_id = NULL, email_norm = NULL, username = NULL \
                   WHERE id IN (SELECT value FROM json_each($1))";
        self.for_ids(sql, ids).await
    }

    async fn update_many(&mut self, rows: &[CustomerRow<'_>]) -> Result<(), DomainError> {
        // `created_at` (?8) never changes.
        let sql = "UPDATE customers SET external_id = ?2, email_norm = ?3, username = ?4, \
                   last_name_sort = ?5, archived = ?6, version = ?7, updated_at = ?9, \
                   password_hash = ?10, doc = ?11 WHERE id = ?1";
        write_customer_rows(self, sql, rows).await
    }

    async fn insert_many(&mut self, rows: &[CustomerRow<'_>]) -> Result<(), DomainError> {
        let sql = "INSERT INTO customers (id, external_id, email_norm, username, last_name_sort, \
                   archived, version, created_at, updated_at, password_hash, doc) \
                   VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
        write_customer_rows(self, sql, rows).await?;
        self.write_terms(rows, false).await
    }

    async fn write_terms(
        &mut self,
        rows: &[CustomerRow<'_>],
        replace: bool,
    ) -> Result<(), DomainError> {
        if replace {
            let ids: Vec<CustomerId> = rows.iter().map(|r| r.customer.id).collect();
            JsonLists::for_ids(
                self,
                "DELETE FROM customer_terms WHERE customer_id IN (SELECT value FROM json_each($1))",
                &ids,
            )
            .await?;
        }
        insert_terms(self, crate::search::term_rows(rows)).await
    }

    async fn edit_terms(&mut self, edits: &[TermEdit<'_>]) -> Result<(), DomainError> {
        let (ids, terms) = TermEdit::removed_rows(edits);
        let params: Vec<[Param<'_>; 2]> = ids
            .iter()
            .zip(&terms)
            .map(|(id, term)| [Param::Text(id), Param::Text(term)])
            .collect();
        // The index by customer finds the row, whatever the flags beside its term.
        execute_per_row(
            &mut **self,
            "DELETE FROM customer_terms WHERE customer_id = ?1 AND term = ?2",
            &params,
        )
        .await?;
        insert_terms(self, TermEdit::added_rows(edits)).await
    }

    async fn record_changes(&mut self, changes: &[ChangeRecord]) -> Result<(), DomainError> {
        // Owned text the rows bind: ids and team lists as stored.
        let owned: Vec<(String, String)> = changes
            .iter()
            .map(|change| (change.customer_id.to_string(), json_list(&change.teams)))
            .collect();
        let params: Vec<[Param<'_>; 7]> = changes
            .iter()
            .zip(&owned)
            .map(|(change, (id, teams))| {
                [
                    Param::Text(id),
                    change.external_id.as_deref().into(),
                    Param::Text(change.kind.as_str()),
                    Param::Int(change.version),
                    Param::Int(change.at.as_micros()),
                    change.customer.as_deref().into(),
                    Param::Text(teams),
                ]
            })
            .collect();
        // In the batch's order: the sequence numbers follow it.
        execute_per_row(
            &mut **self,
            "INSERT INTO changes (customer_id, external_id, kind, version, at, customer, teams) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            &params,
        )
        .await?;
        let erased: Vec<[Param<'_>; 1]> = changes
            .iter()
            .zip(&owned)
            .filter(|(change, _)| change.kind == ChangeKind::Deleted)
            .map(|(_, (id, _))| [Param::Text(id)])
            .collect();
        execute_per_row(&mut **self, ERASE_SNAPSHOTS, &erased).await
    }
}

/// A deletion is an erasure: the documents of the customer's earlier changes leave the feed with
/// it (their `customer` becomes null), in the deletion's transaction. Found through
/// `changes_by_customer`.
const ERASE_SNAPSHOTS: &str =
    "UPDATE changes SET customer = NULL WHERE customer_id = ?1 AND customer IS NOT NULL";

/// Two text columns of each row, as a statement's parameters.
fn text_pairs(rows: &[(String, String)]) -> Vec<[Param<'_>; 2]> {
    rows.iter()
        .map(|(a, b)| [Param::Text(a), Param::Text(b)])
        .collect()
}

/// Inserts membership rows, each table's stepped through one prepared statement.
async fn insert_memberships(
    tx: &mut Transaction<'static, Sqlite>,
    all: &Memberships,
) -> Result<(), DomainError> {
    let groups: Vec<[Param<'_>; 3]> = all
        .groups
        .iter()
        .map(|(id, code, subscribed)| [Param::Text(id), Param::Text(code), (*subscribed).into()])
        .collect();
    for (sql, rows) in [
        (
            "INSERT INTO customer_tags (customer_id, tag) VALUES (?1, ?2)",
            text_pairs(&all.tags),
        ),
        (
            "INSERT INTO customer_teams (customer_id, team_code) VALUES (?1, ?2)",
            text_pairs(&all.teams),
        ),
    ] {
        execute_per_row(tx, sql, &rows).await?;
    }
    execute_per_row(
        tx,
        "INSERT INTO customer_groups (customer_id, group_code, subscribed) VALUES (?1, ?2, ?3)",
        &groups,
    )
    .await
}

/// Inserts term rows, skipping any the customer has already.
async fn insert_terms(
    tx: &mut Transaction<'static, Sqlite>,
    rows: TermRows<'_>,
) -> Result<(), DomainError> {
    let params: Vec<[Param<'_>; 7]> = (0..rows.terms.len())
        .map(|i| {
            [
                Param::Text(&rows.terms[i]),
                Param::Text(&rows.ids[i]),
                rows.multiword[i].into(),
                rows.name_prefix[i].into(),
                Param::Text(rows.last_name_sort[i]),
                Param::Int(rows.name_bucket[i]),
                rows.archived[i].into(),
            ]
        })
        .collect();
    execute_per_row(
        tx,
        "INSERT OR IGNORE INTO customer_terms \
         (term, customer_id, multiword, name_prefix, last_name_sort, name_bucket, archived) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        &params,
    )
    .await
}

/// Set-at-a-time statements over JSON lists.
trait JsonLists {
    /// Runs a statement whose `$1` is a JSON list of customer ids.
    async fn for_ids(&mut self, sql: &str, ids: &[CustomerId]) -> Result<(), DomainError>;

    /// `array`, an aggregate that makes one JSON array (`json_group_array(...)`), over the
    /// customers whose `column` is one of `values`, decoded: the whole result crosses from the
    /// connection's worker thread as one value instead of a message per row, which dominates
    /// the cost of reading a batch.
    async fn aggregate<T: serde::de::DeserializeOwned>(
        &mut self,
        array: &str,
        column: &str,
        values: &[String],
    ) -> Result<Vec<T>, DomainError>;
}

impl JsonLists for Transaction<'static, Sqlite> {
    async fn aggregate<T: serde::de::DeserializeOwned>(
        &mut self,
        array: &str,
        column: &str,
        values: &[String],
    ) -> Result<Vec<T>, DomainError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {array} FROM customers \
             WHERE {column} IN (SELECT value FROM json_each($1))"
        );
        let json: String = sqlx::query_scalar(&sql)
            .bind(json_list(values))
            .fetch_one(&mut **self)
            .await
            .map_err(db_error)?;
        serde_json::from_str(&json).map_err(|e| DomainError::Storage(Box::new(e)))
    }

    async fn for_ids(&mut self, sql: &str, ids: &[CustomerId]) -> Result<(), DomainError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        sqlx::query(sql)
            .bind(json_list(&ids))
            .execute(&mut **self)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

/// Runs `sql`, whose parameters are a customer row's columns (`?1` to `?11`, in the order of
/// [`row_params`]), once for each row.
async fn write_customer_rows(
    tx: &mut Transaction<'static, Sqlite>,
    sql: &str,
    rows: &[CustomerRow<'_>],
) -> Result<(), DomainError> {
    let ids: Vec<String> = rows.iter().map(|r| r.customer.id.to_string()).collect();
    let params: Vec<_> = rows.iter().zip(&ids).map(row_params).collect();
    execute_per_row(tx, sql, &params).await
}

/// A customer row's values for one statement run per row ([`execute_per_row`]).
fn row_params<'a>((row, id): (&'a CustomerRow<'_>, &'a String)) -> [Param<'a>; 11] {
    let c = row.customer;
    [
        Param::Text(id),
        c.external_id.as_deref().into(),
        row.email_norm.as_deref().into(),
        c.username.as_deref().into(),
        Param::Text(&row.last_name_sort),
        c.archived.into(),
        Param::Int(c.version),
        Param::Int(c.created_at.as_micros()),
        Param::Int(c.updated_at.as_micros()),
        row.password_hash.into(),
        Param::Text(row.doc),
    ]
}

/// Creates a missing database file readable by its owner only (SQLite would follow the umask):
/// it holds personal data and password hashes. SQLite gives its `-wal` and `-shm` files the
/// database file's permissions.
fn create_private(path: &std::path::Path) -> Result<(), StoreError> {
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" || path.exists() {
        return Ok(());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            // Another process created it meanwhile: that one is used as it is.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(StoreError::Connect(sqlx::Error::Io(error))),
        }
    }
    Ok(())
}

pub struct SqliteBackend {
    writer: SqlitePool,
    readers: SqlitePool,
    /// Reads of one customer on the request's thread; `None` for an in-memory database.
    point_reads: Option<PointReads>,
    /// Copies the WAL back into the database file beside the writer; stops with the store.
    _checkpointer: Checkpointer,
}

pub type SqliteStore = SqlStore<SqliteBackend>;

impl SqliteStore {
    pub async fn connect(config: &StoreConfig) -> Result<Self, StoreError> {
        let synchronous = match config.sqlite_sync {
            SqliteSync::Normal => SqliteSynchronous::Normal,
            SqliteSync::Full => SqliteSynchronous::Full,
        };
        let options = SqliteConnectOptions::from_str(&config.url).map_err(StoreError::Connect)?;
        if !config.url.contains("mode=memory") {
            create_private(options.get_filename())?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(config.acquire_timeout)
            .foreign_keys(true)
            .pragma("temp_store", "memory");
        // sqlx pings a connection on every checkout by default: one more round trip to the
        // connection's worker thread per query, for a local file that cannot drop the link.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(
                options
                    .clone()
                    .pragma(
                        "cache_size",
                        settings::cache_size(settings::WRITER_CACHE_KIB),
                    )
                    .pragma(
                        "wal_autocheckpoint",
                        settings::WRITER_BACKSTOP_PAGES.to_string(),
                    ),
            )
            .await
            .map_err(StoreError::Connect)?;
        // A diagnosis only: a SQLite that cannot list its compile options still serves.
        match shares_one_page_cache(&writer).await {
            Ok(false) => {}
            Ok(true) => tracing::warn!(
                "this SQLite was built with SQLITE_ENABLE_MEMORY_MANAGEMENT: all connections \
                 share one page cache, which a bulk load can leave to the writer alone, and \
                 searches then read the same pages again and again; build the hub in its \
                 workspace, whose .cargo/config.toml leaves the option out"
            ),
            Err(error) => tracing::debug!(%error, "SQLite's compile options could not be read"),
        }
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(config.pool_size().max(1))
            .test_before_acquire(false)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(
                options
                    .clone()
                    .pragma(
                        "cache_size",
                        settings::cache_size(settings::READER_CACHE_KIB),
                    )
                    .read_only(true),
            )
            .await
            .map_err(StoreError::Connect)?;
        let checkpointer = Checkpointer::start(options.clone().pragma(
            "cache_size",
            settings::cache_size(settings::CHECKPOINTER_CACHE_KIB),
        ))
        .await
        .map_err(StoreError::Connect)?;
        let backend = SqliteBackend {
            writer,
            readers,
            point_reads: PointReads::new(options.get_filename()),
            _checkpointer: checkpointer,
        };
        crate::search::backfill_terms(&backend)
            .await
            .map_err(StoreError::Backfill)?;
        Ok(SqlStore::new(backend))
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

    async fn begin_snapshot(&self) -> Result<Option<Self::Tx>, DomainError> {
        self.readers.begin().await.map(Some).map_err(db_error)
    }

    fn reads(&self) -> &SqlitePool {
        &self.readers
    }

    async fn customer_doc(&self, locator: &Locator) -> Result<Option<CustomerDoc>, DomainError> {
        if let Some(doc) = self
            .point_reads
            .as_ref()
            .and_then(|p| p.customer_doc(locator))
        {
            return Ok(doc);
        }
        self.readers.customer_doc(locator).await
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on a database file reads customers on the request's thread; the fallback to
    /// the pool would hide a store that never does.
    #[tokio::test]
    async fn a_store_on_a_file_makes_point_reads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let store = SqliteStore::connect(&StoreConfig::new(url))
            .await
            .expect("store");
        assert!(store.sql_backend().point_reads.is_some());
    }

    /// A request taken for gone may finish between a retry's reading of its claim and the
    /// retry's take-over: the finished record is then kept (the retry replays it), not
    /// replaced by a second run of the request. An expired record is replaced whatever it holds.
    #[tokio::test]
    async fn a_claim_finished_since_it_was_read_is_not_taken_over() {
        use clientele_domain::{ApiKeyId, IdempotencyClaim, StoredResponse, Timestamp};

        use crate::primitives::CustomerTx;

        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        let store = SqliteStore::connect(&StoreConfig::new(url))
            .await
            .expect("store");
        let backend = store.sql_backend();
        let claim = |micros: i64| IdempotencyClaim {
            api_key: ApiKeyId::new(),
            key: "k".to_owned(),
            fingerprint: vec![1],
            at: Timestamp::from_micros(micros),
        };
        let first = claim(1_000);
        let retry = IdempotencyClaim {
            api_key: first.api_key,
            ..claim(2_000)
        };
        let taken_over = |expired| {
            backend
                .writes()
                .take_over_claim(&retry, 1_000, expired, "b")
        };

        assert!(
            backend
                .writes()
                .insert_claim(&first, "a")
                .await
                .expect("claim")
        );
        let mut tx = backend.begin_write().await.expect("begin");
        let answer = StoredResponse {
            status: 201,
            headers: vec![],
            body: vec![],
        };
        tx.complete_idempotency(&first, &answer)
            .await
            .expect("complete");
        tx.commit().await.expect("commit");

        assert!(!taken_over(false).await.expect("take over"));
        let kept = backend.writes().load_claim(&first).await.expect("load");
        assert_eq!(kept.and_then(|row| row.response), Some(answer));
        assert!(taken_over(true).await.expect("take over"));
    }

    /// The workspace's .cargo/config.toml builds SQLite with a page cache per connection; a
    /// build that lost it would let a bulk load starve the readers' caches.
    #[tokio::test]
    async fn each_connection_keeps_a_page_cache_of_its_own() {
        let pool = SqlitePool::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        assert!(
            !shares_one_page_cache(&pool).await.expect("compile options"),
            "SQLite was built with SQLITE_ENABLE_MEMORY_MANAGEMENT"
        );
    }
}
