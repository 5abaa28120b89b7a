//! The raw database floor: the hub's own queries sent straight through sqlx, with no HTTP, no
//! authentication and no domain logic, on a database the hub's own `clientele_store::connect`
//! created (so the schema and migrations are exactly the hub's).
//!
//! The pools mirror the hub's: on SQLite one writer connection (write transactions start with
//! `BEGIN IMMEDIATE`) and a pool of read-only readers, WAL, `synchronous = NORMAL`, and the same
//! pragmas as `clientele-store/src/sqlite.rs`; on PostgreSQL one pool for both.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::database::{Backend, Database};
use crate::load::{self, Counter, Measured, OpFuture, warm_then_measure};
use crate::report::WhatIf;
use crate::workload::{StoredRow, stored_row};
use clientele_bench::procfs::CpuUse;

/// The hub's read of one customer (`customer_doc` in `clientele-store/src/primitives.rs`).
const SELECT_DOC: &str = "SELECT id, version, doc FROM customers WHERE id = $1";
/// A new customer row: what the hub's `insert_many` runs for the one row of a single create.
const INSERT_CUSTOMER: &str = "INSERT INTO customers (id, external_id, email_norm, username, \
     last_name_sort, archived, version, created_at, updated_at, password_hash, doc) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";
/// Its change record (the hub's `record_changes` for one change), in the same transaction.
const INSERT_CHANGE: &str = "INSERT INTO changes (customer_id, external_id, kind, version, at, \
     customer) VALUES ($1, $2, $3, $4, $5, $6)";
/// Rows per transaction while seeding.
const SEED_BATCH: usize = 500;

/// Connection pools on one benchmark database.
#[derive(Clone)]
pub enum RawDb {
    Sqlite {
        writer: SqlitePool,
        readers: SqlitePool,
    },
    Postgres(PgPool),
}

/// Binds a [`StoredRow`] to [`INSERT_CUSTOMER`] and runs it, then its [`INSERT_CHANGE`], in `tx`.
macro_rules! insert_row {
    ($tx:expr, $row:expr) => {{
        let row: &StoredRow = $row;
        sqlx::query(INSERT_CUSTOMER)
            .bind(&row.id)
            .bind(&row.external_id)
            .bind(&row.email_norm)
            .bind(None::<String>)
            .bind(&row.last_name_sort)
            .bind(false)
            .bind(1_i64)
            .bind(row.at_micros)
            .bind(row.at_micros)
            .bind(None::<String>)
            .bind(&row.doc)
            .execute(&mut *$tx)
            .await?;
        sqlx::query(INSERT_CHANGE)
            .bind(&row.id)
            .bind(&row.external_id)
            .bind("created")
            .bind(1_i64)
            .bind(row.at_micros)
            .bind(&row.doc)
            .execute(&mut *$tx)
            .await?;
    }};
}

impl RawDb {
    /// Lets the hub's store create the schema, then opens the benchmark's own pools on it.
    pub async fn open(database: &Database, pool_size: u32) -> anyhow::Result<Self> {
        let mut config = clientele_store::StoreConfig::new(&database.url);
        config.max_connections = Some(pool_size);
        let store = clientele_store::connect(&config)
            .await
            .context("creating the schema with clientele_store::connect")?;
        drop(store);
        Self::connect(database, pool_size, true).await
    }

    /// Opens pools on an existing database. `ping` is sqlx's `test_before_acquire`: on (the
    /// sqlx default, which the hub keeps) every pool checkout first pings the connection.
    pub async fn connect(database: &Database, pool_size: u32, ping: bool) -> anyhow::Result<Self> {
        let timeout = clientele_store::StoreConfig::new(&database.url).acquire_timeout;
        match database.backend {
            Backend::Sqlite => Self::connect_sqlite(&database.url, pool_size, ping, timeout).await,
            Backend::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(pool_size)
                    .acquire_timeout(timeout)
                    .test_before_acquire(ping)
                    .connect(&database.url)
                    .await
                    .context("connecting to PostgreSQL")?;
                Ok(RawDb::Postgres(pool))
            }
        }
    }

    async fn connect_sqlite(
        url: &str,
        pool_size: u32,
        ping: bool,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(timeout)
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma("cache_size", "-65536");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(timeout)
            .test_before_acquire(ping)
            .connect_with(options.clone())
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(timeout)
            .test_before_acquire(ping)
            .connect_with(options.read_only(true))
            .await?;
        Ok(RawDb::Sqlite { writer, readers })
    }

    /// Inserts customers `0..count` in batches and returns their ids.
    pub async fn seed(&self, tag: &str, count: u64) -> anyhow::Result<Vec<String>> {
        let rows: Vec<StoredRow> = (0..count).map(|n| stored_row(tag, n)).collect();
        for batch in rows.chunks(SEED_BATCH) {
            self.insert(batch).await?;
        }
        Ok(rows.into_iter().map(|row| row.id).collect())
    }

    /// Inserts rows and their change records in one transaction, as the hub writes a customer.
    pub async fn insert(&self, rows: &[StoredRow]) -> anyhow::Result<()> {
        match self {
            RawDb::Sqlite { writer, .. } => {
                let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
                for row in rows {
                    insert_row!(tx, row);
                }
                tx.commit().await?;
            }
            RawDb::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                for row in rows {
                    insert_row!(tx, row);
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The stored document of a customer, read as the hub reads it.
    pub async fn select_doc(&self, id: &str) -> anyhow::Result<Option<String>> {
        use sqlx::Row;
        let doc = match self {
            RawDb::Sqlite { readers, .. } => {
                let row = sqlx::query(SELECT_DOC)
                    .bind(id)
                    .fetch_optional(readers)
                    .await?;
                row.map(|row| row.try_get::<String, _>(2)).transpose()?
            }
            RawDb::Postgres(pool) => {
                let row = sqlx::query(SELECT_DOC)
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
                row.map(|row| row.try_get::<String, _>(2)).transpose()?
            }
        };
        Ok(doc)
    }

    pub async fn close(self) {
        match self {
            RawDb::Sqlite { writer, readers } => {
                writer.close().await;
                readers.close().await;
            }
            RawDb::Postgres(pool) => pool.close().await,
        }
    }
}

/// How one raw-floor run is shaped.
pub struct RawPlan {
    pub customers: u64,
    /// The hub's `--db-max-connections`, if set: the pools get the size the hub's would.
    pub max_connections: Option<u32>,
    pub read_concurrency: usize,
    pub create_concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Also measure the [`WhatIf`] variants.
    pub what_ifs: bool,
}

/// The raw floor's two measurements.
pub struct RawFloor {
    /// Connections in the pools (readers on SQLite), as many as the hub's.
    pub pool_size: u32,
    pub select: Measured,
    pub select_cpu: CpuUse,
    pub insert: Measured,
    pub insert_cpu: CpuUse,
    pub mean_doc_bytes: usize,
    pub what_ifs: Vec<WhatIf>,
}

/// Customers per transaction in the group-commit variant.
const GROUP_COMMIT: usize = 10;

/// Seeds the database, then measures point selects and single-customer inserts.
pub async fn measure(database: &Database, plan: &RawPlan) -> anyhow::Result<RawFloor> {
    let mut config = clientele_store::StoreConfig::new(&database.url);
    config.max_connections = plan.max_connections;
    let pool_size = config.pool_size();
    let db = RawDb::open(database, pool_size).await?;
    let tag = format!("raw{}", ulid::Ulid::new().to_string().to_lowercase());
    let ids = Arc::new(db.seed(&tag, plan.customers).await?);
    let mean_doc_bytes = mean_doc_bytes(&db, &ids).await?;
    let keys = Counter::starting_at(plan.customers);

    let select = select_op(db.clone(), ids.clone());
    eprintln!("  raw select with {} tasks", plan.read_concurrency);
    let (select, select_cpu) = run(plan, plan.read_concurrency, select).await?;
    let insert = insert_op(db.clone(), tag.clone(), keys.clone(), 1);
    eprintln!("  raw insert with {} tasks", plan.create_concurrency);
    let (insert, insert_cpu) = run(plan, plan.create_concurrency, insert).await?;
    db.close().await;

    let what_ifs = if plan.what_ifs {
        what_ifs(database, plan, pool_size, ids, tag, keys).await?
    } else {
        Vec::new()
    };
    Ok(RawFloor {
        pool_size,
        select,
        select_cpu,
        insert,
        insert_cpu,
        mean_doc_bytes,
        what_ifs,
    })
}

/// The floor without the connection check on each pool checkout, and with group commit.
async fn what_ifs(
    database: &Database,
    plan: &RawPlan,
    pool_size: u32,
    ids: Arc<Vec<String>>,
    tag: String,
    keys: Counter,
) -> anyhow::Result<Vec<WhatIf>> {
    eprintln!("  raw what-ifs");
    let db = RawDb::connect(database, pool_size, false).await?;
    let select = select_op(db.clone(), ids);
    let (select, _) = run(plan, plan.read_concurrency, select).await?;
    let insert = insert_op(db.clone(), tag.clone(), keys.clone(), 1);
    let (insert, _) = run(plan, plan.create_concurrency, insert).await?;
    let batched = insert_op(db.clone(), tag, keys, GROUP_COMMIT);
    let (batched, _) = run(plan, plan.create_concurrency, batched).await?;
    db.close().await;
    Ok(vec![
        WhatIf {
            name: "raw: select without ping on checkout",
            measured: select,
            rows_per_op: 1,
        },
        WhatIf {
            name: "raw: insert without ping on checkout",
            measured: insert,
            rows_per_op: 1,
        },
        WhatIf {
            name: "raw: 10 customers per transaction, no ping (customers)",
            measured: batched,
            rows_per_op: GROUP_COMMIT as u64,
        },
    ])
}

async fn run<F, Fut>(
    plan: &RawPlan,
    concurrency: usize,
    op: F,
) -> anyhow::Result<(Measured, CpuUse)>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    warm_then_measure(None, concurrency, plan.warmup, plan.duration, op).await
}

async fn mean_doc_bytes(db: &RawDb, ids: &[String]) -> anyhow::Result<usize> {
    let sample = ids.iter().step_by((ids.len() / 100).max(1));
    let mut total = 0;
    let mut count = 0;
    for id in sample {
        total += db.select_doc(id).await?.map_or(0, |doc| doc.len());
        count += 1;
    }
    Ok(total / count.max(1))
}

/// A point select of a random seeded customer; a missing row is a failure.
fn select_op(
    db: RawDb,
    ids: Arc<Vec<String>>,
) -> impl Fn() -> OpFuture + Clone + Send + Sync + 'static {
    let counter = Counter::default();
    move || {
        let (db, ids) = (db.clone(), ids.clone());
        let n = counter.next();
        Box::pin(async move {
            let id = &ids[load::spread(n, ids.len())];
            match db.select_doc(id).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err(format!("{id} not found")),
                Err(error) => Err(format!("{error:#}")),
            }
        })
    }
}

/// `batch` new customers and their change records per transaction, with keys from `keys`.
fn insert_op(
    db: RawDb,
    tag: String,
    keys: Counter,
    batch: usize,
) -> impl Fn() -> OpFuture + Clone + Send + Sync + 'static {
    move || {
        let db = db.clone();
        let rows: Vec<StoredRow> = (0..batch).map(|_| stored_row(&tag, keys.next())).collect();
        Box::pin(async move { db.insert(&rows).await.map_err(|error| format!("{error:#}")) })
    }
}
