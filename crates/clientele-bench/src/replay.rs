//! The floor of the hub's own writes: the rows a hub wrote for a bulk sync's first send —
//! customers, search terms, tags, groups, teams and change records — read back from its
//! database and written again into a fresh database of the same schema, straight through
//! SQLite. One prepared statement per table, stepped once per row; one transaction per batch of
//! customers, as the hub commits one per sync request; the hub writer's settings, and a
//! checkpointer beside it as the hub has. No HTTP, no JSON, no planning, no worker thread: what
//! storing exactly those rows costs this machine. A hub cannot commit its batches faster.
//!
//! The rows are read ahead in large parts while the writer and the checkpointer wait, so that
//! memory stays bounded whatever the number of customers and nothing else runs beside them.
//!
//! Written back to back, the batches leave the checkpointer no gap: the writer never begins a
//! transaction on a WAL checkpointed to its end, so the log never starts over, and once it
//! passes the writer's backstop the writer checkpoints at every commit. A hub plans its next
//! batch between commits, and at 1,000,000 customers it outruns its own replay for that reason
//! (docs/benchmarks.md, thirteenth session): the replay is the floor of a batch's writes, as at
//! 100,000 customers, not of a long load.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use clientele_store::sqlite::settings;

use crate::procfs;
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, params_from_iter};

/// Which of the hub's rows a replay writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// Everything a first send wrote.
    All,
    /// Everything but the search terms: what the term index costs, by difference.
    WithoutTerms,
    /// The customer rows alone, with their indexes.
    CustomersOnly,
}

impl Rows {
    fn tables(self) -> &'static [Table] {
        match self {
            Rows::All => TABLES,
            Rows::WithoutTerms => &TABLES[..TABLES.len() - 1],
            Rows::CustomersOnly => &TABLES[..1],
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Rows::All => "hub's rows replayed raw (batch per tx)",
            Rows::WithoutTerms => "hub's rows replayed raw, no term rows",
            Rows::CustomersOnly => "hub's customer rows alone replayed raw",
        }
    }
}

/// A table the hub writes in a first send, and which of its rows belong to it.
struct Table {
    name: &'static str,
    select: Select,
    /// Columns the hub leaves to the database (an autoincremented key).
    generated: &'static [&'static str],
}

/// How a batch's rows of a table are read.
enum Select {
    /// Rows of the batch's customers, in the order the hub wrote them: `?1` is their ids as a
    /// JSON array, in order (an index leads from each id to its rows).
    ByCustomers(&'static str),
    /// The next rows in the order of the table's key, one per customer of the batch: `?1` is
    /// the last key read, `?2` the batch's size. For the change records, which have no index by
    /// customer: each customer of a first send has exactly one creation, recorded in the
    /// transaction, and in the order, of its batch.
    Next {
        sql: &'static str,
        key: &'static str,
    },
}

/// A table whose rows belong to the customer their `column` names.
macro_rules! by_customer {
    ($name:literal, $column:literal) => {
        Table {
            name: $name,
            select: Select::ByCustomers(concat!(
                "SELECT t.* FROM json_each(?1) AS j JOIN ",
                $name,
                " AS t ON t.",
                $column,
                " = j.value ORDER BY j.key"
            )),
            generated: &[],
        }
    };
}

/// In the order the hub writes them; the term rows last, so that [`Rows`] can leave them out.
const TABLES: &[Table] = &[
    by_customer!("customers", "id"),
    by_customer!("customer_tags", "customer_id"),
    by_customer!("customer_groups", "customer_id"),
    by_customer!("customer_teams", "customer_id"),
    // The creations only: a later run of the same hub may have recorded updates too.
    Table {
        name: "changes",
        select: Select::Next {
            sql: "SELECT * FROM changes WHERE seq > ?1 AND kind = 'created' \
                  ORDER BY seq LIMIT ?2",
            key: "seq",
        },
        generated: &["seq"],
    },
    by_customer!("customer_terms", "customer_id"),
];

/// One batch's rows, per table of [`Rows::tables`], each row as its columns' values.
type Batch = Vec<Vec<Vec<Value>>>;

/// What a replay measured.
pub struct Replayed {
    pub rows: Rows,
    pub customers: usize,
    /// The writer's time inside its transactions, from each batch's `BEGIN` to its `COMMIT`
    /// (not the waits for the reader, which a hub's writer does not have either).
    pub seconds: f64,
    /// Time spent stepping each table's rows, in the order of [`Rows::tables`].
    pub tables: Vec<(&'static str, Duration)>,
    pub commits: Duration,
    /// Time the checkpointer spent checkpointing, on its own thread beside the writer.
    pub checkpoints: Duration,
    /// KiB the machine read from disk while the writer wrote (not while it read ahead).
    pub disk_read_kib: u64,
}

impl Replayed {
    pub fn rate(&self) -> f64 {
        self.customers as f64 / self.seconds
    }

    /// Microseconds per customer of each table's statements and of the commits.
    pub fn breakdown(&self) -> String {
        let micros = |d: &Duration| d.as_secs_f64() * 1e6 / self.customers.max(1) as f64;
        let mut parts: Vec<String> = self
            .tables
            .iter()
            .filter(|(_, spent)| !spent.is_zero())
            .map(|(name, spent)| format!("{name} {:.1}", micros(spent)))
            .collect();
        parts.push(format!("commit {:.1}", micros(&self.commits)));
        parts.push(format!("checkpointer {:.1}", micros(&self.checkpoints)));
        format!(
            "µs/customer: {}; {} MiB read from disk",
            parts.join(", "),
            self.disk_read_kib / 1024
        )
    }
}

/// Customers read ahead of the writer at a time: the rows of a few hundred megabytes.
const READ_AHEAD: usize = 100_000;

/// Replays the first send that `source` (a hub's SQLite file, its hub stopped) holds into
/// `target`, a new database with the hub's schema, `batch` customers per transaction.
///
/// The rows are read [`READ_AHEAD`] customers at a time while the writer and the checkpointer
/// wait, then written: on two cores a reader beside them would take the time of one of the
/// two (it halved the writer's rate), and holding a million customers' rows would take
/// gigabytes.
pub fn replay(source: &Path, target: &Path, batch: usize, rows: Rows) -> anyhow::Result<Replayed> {
    let mut source = Source::open(source, rows)?;
    let mut writer = Writer::open(target, rows)?;
    let checkpointer = Checkpointer::start(target)?;
    let mut written = 0;
    let mut disk_read_kib = 0;
    while written < source.ids.len() {
        let ahead = {
            let _paused = checkpointer.pause();
            source.read(written, READ_AHEAD, batch)?
        };
        let read_before = procfs::disk_read_kib()?;
        for batch in &ahead {
            written += writer.write(batch)?;
        }
        disk_read_kib += procfs::disk_read_kib()? - read_before;
    }
    Ok(Replayed {
        rows,
        customers: written,
        seconds: writer.busy.as_secs_f64(),
        tables: rows
            .tables()
            .iter()
            .map(|t| t.name)
            .zip(writer.spent)
            .collect(),
        commits: writer.commits,
        checkpoints: checkpointer.stop()?,
        disk_read_kib,
    })
}

/// The stopped hub's database, read batch by batch in the order the hub wrote them.
struct Source {
    connection: Connection,
    rows: Rows,
    /// Every customer's id, in the order of insertion.
    ids: Vec<String>,
    /// Per table, the last key a [`Select::Next`] read.
    last_keys: Vec<i64>,
}

impl Source {
    fn open(path: &Path, rows: Rows) -> anyhow::Result<Self> {
        let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", path.display()))?;
        let ids = connection
            .prepare("SELECT id FROM customers ORDER BY rowid")?
            .query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(Self {
            connection,
            rows,
            ids,
            last_keys: vec![0; rows.tables().len()],
        })
    }

    /// The batches of the `count` customers from the `from`th on.
    fn read(&mut self, from: usize, count: usize, batch: usize) -> anyhow::Result<Vec<Batch>> {
        let end = (from + count).min(self.ids.len());
        let mut batches = Vec::new();
        for chunk in self.ids[from..end].chunks(batch) {
            let list = serde_json::to_string(chunk)?;
            let mut tables = Vec::new();
            for (table, last_key) in self.rows.tables().iter().zip(&mut self.last_keys) {
                let (sql, params, key) = match &table.select {
                    Select::ByCustomers(sql) => (*sql, vec![Value::Text(list.clone())], None),
                    Select::Next { sql, key } => (
                        *sql,
                        vec![
                            Value::Integer(*last_key),
                            Value::Integer(chunk.len() as i64),
                        ],
                        Some(*key),
                    ),
                };
                let mut select = self.connection.prepare_cached(sql)?;
                let columns: Vec<String> = select
                    .column_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                let key_column = key.and_then(|key| columns.iter().position(|c| c == key));
                let mut found = Vec::new();
                let mut selected = select.query(params_from_iter(&params))?;
                while let Some(row) = selected.next()? {
                    if let Some(i) = key_column {
                        *last_key = row.get(i)?;
                    }
                    let values = (0..columns.len())
                        .filter(|&i| !table.generated.contains(&columns[i].as_str()))
                        .map(|i| row.get::<_, Value>(i))
                        .collect::<Result<Vec<Value>, _>>()?;
                    found.push(values);
                }
                tables.push(found);
            }
            batches.push(tables);
        }
        Ok(batches)
    }
}

/// The hub's writer: its settings, one transaction per batch.
struct Writer {
    connection: Connection,
    /// Per table, its `INSERT`.
    inserts: Vec<String>,
    /// Per table, the time spent stepping its rows.
    spent: Vec<Duration>,
    commits: Duration,
    /// Time inside the transactions.
    busy: Duration,
}

impl Writer {
    fn open(path: &Path, rows: Rows) -> anyhow::Result<Self> {
        let connection = Connection::open(path)?;
        connection.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA temp_store = memory; PRAGMA cache_size = {}; PRAGMA wal_autocheckpoint = {};",
            settings::cache_size(settings::WRITER_CACHE_KIB),
            settings::WRITER_BACKSTOP_PAGES,
        ))?;
        let inserts: Vec<String> = rows
            .tables()
            .iter()
            .map(|table| insert_sql(&connection, table))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            connection,
            spent: vec![Duration::ZERO; inserts.len()],
            inserts,
            commits: Duration::ZERO,
            busy: Duration::ZERO,
        })
    }

    /// Writes one batch in one transaction; the number of its customers.
    fn write(&mut self, batch: &Batch) -> anyhow::Result<usize> {
        let began = Instant::now();
        let tx = self
            .connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for ((sql, rows), spent) in self.inserts.iter().zip(batch).zip(&mut self.spent) {
            let clock = Instant::now();
            let mut insert = tx.prepare_cached(sql)?;
            for row in rows {
                insert.execute(params_from_iter(row))?;
            }
            *spent += clock.elapsed();
        }
        let clock = Instant::now();
        tx.commit()?;
        self.commits += clock.elapsed();
        self.busy += began.elapsed();
        Ok(batch.first().map_or(0, Vec::len))
    }
}

/// `INSERT INTO table (...) VALUES (?, ...)` over the columns the hub binds.
fn insert_sql(connection: &Connection, table: &Table) -> anyhow::Result<String> {
    let mut info = connection.prepare(&format!("PRAGMA table_info({})", table.name))?;
    let columns: Vec<String> = info
        .query_map([], |row| row.get::<_, String>(1))?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|name| !table.generated.contains(&name.as_str()))
        .collect();
    anyhow::ensure!(!columns.is_empty(), "no table {}", table.name);
    let marks = vec!["?"; columns.len()].join(", ");
    Ok(format!(
        "INSERT INTO {} ({}) VALUES ({marks})",
        table.name,
        columns.join(", ")
    ))
}

/// The hub's checkpointer: a `PASSIVE` checkpoint every [`settings::CHECKPOINT_INTERVAL`] on a
/// connection of its own.
struct Checkpointer {
    stop: Arc<AtomicBool>,
    /// Held around each checkpoint, and by [`Checkpointer::pause`].
    turn: Arc<Mutex<()>>,
    thread: thread::JoinHandle<anyhow::Result<Duration>>,
}

impl Checkpointer {
    fn start(path: &Path) -> anyhow::Result<Self> {
        let connection = Connection::open(path)?;
        connection.execute_batch(&format!(
            "PRAGMA cache_size = {};",
            settings::cache_size(settings::CHECKPOINTER_CACHE_KIB)
        ))?;
        let stop = Arc::new(AtomicBool::new(false));
        let turn = Arc::new(Mutex::new(()));
        let thread = {
            let (stop, turn) = (stop.clone(), turn.clone());
            thread::spawn(move || {
                let mut spent = Duration::ZERO;
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(settings::CHECKPOINT_INTERVAL);
                    let _turn = turn.lock().unwrap_or_else(PoisonError::into_inner);
                    let clock = Instant::now();
                    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))?;
                    spent += clock.elapsed();
                }
                Ok(spent)
            })
        };
        Ok(Self { stop, turn, thread })
    }

    /// No checkpoint starts while the guard lives.
    fn pause(&self) -> MutexGuard<'_, ()> {
        self.turn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops checkpointing; the time spent checkpointing.
    fn stop(self) -> anyhow::Result<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the checkpointer panicked"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientele_testkit::TestHub;
    use serde_json::json;

    const BATCHES: usize = 3;
    const BATCH: usize = 4;

    /// Every row of `table` but its generated columns, in an order that does not depend on how
    /// the rows were inserted; `kind = 'created'` only, for the change records.
    fn dump(path: &Path, table: &Table) -> Vec<Vec<Value>> {
        let connection = Connection::open(path).expect("open");
        let columns: Vec<String> = connection
            .prepare(&format!("PRAGMA table_info({})", table.name))
            .expect("table_info")
            .query_map([], |row| row.get::<_, String>(1))
            .expect("columns")
            .collect::<Result<Vec<_>, _>>()
            .expect("columns")
            .into_iter()
            .filter(|name| !table.generated.contains(&name.as_str()))
            .collect();
        let filter = if table.name == "changes" {
            " WHERE kind = 'created'"
        } else {
            ""
        };
        let list = columns.join(", ");
        let sql = format!("SELECT {list} FROM {}{filter} ORDER BY {list}", table.name);
        let mut select = connection.prepare(&sql).expect("select");
        select
            .query_map([], |row| {
                (0..columns.len())
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// A hub's first send of `BATCHES` batches, with an update of one customer between the
    /// first two (a change record amid the creations, which the replay must leave out).
    async fn hub_after_a_first_send() -> (TestHub, std::path::PathBuf) {
        let hub = TestHub::sqlite().await;
        for (path, body) in [
            ("/v1/groups/vip", json!({"title": "VIP"})),
            ("/v1/teams/north", json!({"name": "North"})),
        ] {
            let reply = clientele_testkit::call(hub.put(path).json(&body)).await;
            assert_eq!(reply.status, 201, "{}", reply.body);
        }
        for batch in 0..BATCHES {
            let items: Vec<_> = (0..BATCH)
                .map(|i| {
                    let n = batch * BATCH + i;
                    json!({"external_id": format!("erp-{n}"), "first_name": format!("First{n}"),
                           "last_name": "Virtanen", "email": format!("c{n}@example.com"),
                           "tags": ["retail", format!("batch-{batch}")],
                           "groups": if n.is_multiple_of(2) { json!(["vip"]) } else { json!([]) },
                           "teams": ["north"],
                           "addresses": [{"title": "Home", "line1": "Street 1",
                                          "city": "Helsinki", "country": "FI"}]})
                })
                .collect();
            let reply = hub
                .sync(&json!({"key": "external_id", "customers": items}))
                .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            if batch == 0 {
                let update = json!({"key": "external_id",
                                    "customers": [{"external_id": "erp-0", "first_name": "Renamed"}]});
                let reply = hub.sync(&update).await;
                assert_eq!(reply.status, 200, "{}", reply.body);
            }
        }
        let path = hub
            .database_url
            .strip_prefix("sqlite://")
            .expect("a SQLite hub")
            .into();
        (hub, path)
    }

    #[tokio::test]
    async fn replays_exactly_the_rows_of_the_first_send_that_it_is_asked_for() {
        let (_hub, source) = hub_after_a_first_send().await;
        for table in TABLES {
            assert!(
                !dump(&source, table).is_empty(),
                "no {} to replay",
                table.name
            );
        }
        let changes = TABLES
            .iter()
            .find(|t| t.name == "changes")
            .expect("changes");
        assert_eq!(dump(&source, changes).len(), BATCHES * BATCH);
        let all = [
            "customers",
            "customer_tags",
            "customer_groups",
            "customer_teams",
            "changes",
            "customer_terms",
        ];
        for (rows, asked) in [
            (Rows::All, &all[..]),
            (Rows::WithoutTerms, &all[..5]),
            (Rows::CustomersOnly, &all[..1]),
        ] {
            let dir = tempfile::tempdir().expect("temp dir");
            let target = dir.path().join("replay.db");
            let url = format!("sqlite://{}", target.display());
            drop(
                clientele_store::connect(&clientele_store::StoreConfig::new(&url))
                    .await
                    .expect("the hub's schema"),
            );
            let (from, to) = (source.clone(), target.clone());
            let replayed = tokio::task::spawn_blocking(move || replay(&from, &to, BATCH, rows))
                .await
                .expect("join")
                .expect("replay");
            assert_eq!(replayed.customers, BATCHES * BATCH, "{rows:?}");
            assert!(replayed.seconds > 0.0, "{rows:?}");
            for table in TABLES {
                let written = dump(&target, table);
                if asked.contains(&table.name) {
                    assert_eq!(written, dump(&source, table), "{rows:?}: {}", table.name);
                } else {
                    assert!(written.is_empty(), "{rows:?}: {} written", table.name);
                }
            }
            let timed: Vec<_> = replayed.tables.iter().map(|(name, _)| *name).collect();
            assert_eq!(timed, asked, "{rows:?}");
        }
    }
}
