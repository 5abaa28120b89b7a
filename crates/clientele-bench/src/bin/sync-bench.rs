//! `sync-bench`: bulk sync throughput (`POST /v1/customers/sync`) of a real hub process, beside
//! a raw upsert of the same rows measured in the same run. See docs/benchmarks.md.
//!
//! Per backend: the raw floor (`INSERT ... ON CONFLICT DO UPDATE`, one transaction, one prepared
//! statement, the hub's own schema) through sqlx and, on SQLite, stepped through rusqlite (no
//! hand-off to a worker thread per statement: SQLite's own cost), then the hub: N customers with one address each, batches of
//! 1000, C concurrent clients; the same N re-sent unchanged; the same N re-sent with a note
//! changed (every item an update, no search term changed); the same N re-sent with a first
//! name changed (every item an update of its search terms); the server's peak RSS; and for each
//! run the CPU time per customer of the process that did the work.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use clientele_bench::procfs::{disk_read_kib, process_cpu_seconds};
use clientele_bench::replay::{self, Replayed, Rows};
use clientele_bench::{backends, database_url, peak_rss_mib};
use clientele_store::sqlite::settings;
use clientele_testkit::{ADMIN_SECRET, HubProcess};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(
    name = "sync-bench",
    about = "Bulk sync throughput of a real hub beside a raw upsert"
)]
struct Args {
    /// The `clientele` binary (build it in release mode first).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/clientele"))]
    hub_binary: PathBuf,
    /// `sqlite`, `postgres` or `both`.
    #[arg(long, default_value = "both")]
    backend: String,
    /// Customers per run.
    #[arg(long, default_value_t = 100_000)]
    customers: usize,
    /// Also sync this many customers on SQLite (the 1,000,000 target); 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    large: usize,
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// On SQLite, also replay the rows the hub wrote in its first send straight through SQLite
    /// (the floor of the hub's own writes; see `clientele_bench::replay`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    replay: bool,
}

/// One measured run.
struct Run {
    what: String,
    items: usize,
    seconds: f64,
    /// CPU time of the process that did the work (the hub; this process for the raw floor),
    /// not of a PostgreSQL server. Unlike the rate, it hardly moves when other work shares
    /// the machine's two cores.
    cpu_seconds: f64,
    /// CPU time of this process as the load client of a hub run: with the hub's, what the run
    /// asks of the machine's two cores per customer. `None` for the raw floor (no hub).
    client_cpu_seconds: Option<f64>,
    /// KiB the machine read from disk during a hub run: pages of the database that the host
    /// had dropped from its page cache, read again. `None` for the raw floor.
    disk_read_kib: Option<u64>,
}

impl Run {
    /// A raw floor's run of `items` rows by this process, which started at `started` with
    /// `cpu_before` seconds of CPU used.
    fn floor(what: &str, items: usize, started: Instant, cpu_before: f64) -> anyhow::Result<Self> {
        Ok(Run {
            what: what.to_owned(),
            items,
            seconds: started.elapsed().as_secs_f64(),
            cpu_seconds: process_cpu_seconds(std::process::id())? - cpu_before,
            client_cpu_seconds: None,
            disk_read_kib: None,
        })
    }

    fn rate(&self) -> f64 {
        self.items as f64 / self.seconds
    }

    fn cpu_micros_per_item(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.items as f64
    }

    fn client_cpu_micros_per_item(&self) -> Option<f64> {
        self.client_cpu_seconds
            .map(|seconds| seconds * 1e6 / self.items as f64)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.hub_binary.exists(),
        "{} does not exist: run scripts/bench.sh",
        args.hub_binary.display()
    );
    for backend in backends(&args.backend)? {
        measure(&args, backend).await?;
    }
    Ok(())
}

async fn measure(args: &Args, backend: &str) -> anyhow::Result<()> {
    let floors = raw_upserts(backend, args.customers).await?;
    let dir = tempfile::tempdir()?;
    let url = database_url(backend, dir.path()).await?;
    let mut hub = HubProcess::start(&args.hub_binary, &url, dir.path());
    let first = sync_all(args, &hub, args.customers, customer, "first send").await?;
    let again = sync_all(args, &hub, args.customers, customer, "unchanged re-send").await?;
    let changed = sync_all(
        args,
        &hub,
        args.customers,
        changed_customer,
        "changed re-send",
    )
    .await?;
    let renamed = sync_all(
        args,
        &hub,
        args.customers,
        renamed_customer,
        "renamed re-send",
    )
    .await?;
    let rss = peak_rss_mib(hub.child.id())?;
    hub.kill_9();
    let replays = replay_first_send(args, backend, dir.path(), args.customers).await?;

    println!(
        "\n== {backend}: bulk sync, {} customers, batches of {}, {} clients",
        args.customers, args.batch, args.clients
    );
    println!(
        "{:<40} {:>12} {:>10} {:>16} {:>19} {:>14}",
        "", "customers/s", "seconds", "CPU µs/customer", "client CPU µs/cust.", "disk read MiB"
    );
    for run in floors.iter().chain([&first, &again, &changed, &renamed]) {
        let client = run
            .client_cpu_micros_per_item()
            .map_or_else(|| "-".to_owned(), |micros| format!("{micros:.1}"));
        let disk = run
            .disk_read_kib
            .map_or_else(|| "-".to_owned(), |kib| (kib / 1024).to_string());
        println!(
            "{:<40} {:>12.0} {:>10.2} {:>16.1} {client:>19} {disk:>14}",
            run.what,
            run.rate(),
            run.seconds,
            run.cpu_micros_per_item()
        );
    }
    for floor in &floors {
        println!(
            "hub time / {} time: {:.2} (target <= 3)",
            floor.what,
            floor.rate() / first.rate()
        );
    }
    print_replays(&replays, &first);
    println!(
        "unchanged re-send {:.2}x as fast as the first (target >= 2); server peak RSS {rss} MiB",
        again.rate() / first.rate()
    );
    let raw = &floors[0];
    let stepped = floors.get(1);
    println!(
        "{}",
        json!({"backend": backend, "scenario": "sync", "customers": args.customers,
               "rps": first.rate().round(), "unchanged_rps": again.rate().round(),
               "raw_rps": raw.rate().round(), "ratio": raw.rate() / first.rate(),
               "changed_rps": changed.rate().round(),
               "cpu_us_per_customer": first.cpu_micros_per_item(),
               "client_cpu_us_per_customer": first.client_cpu_micros_per_item(),
               "changed_cpu_us_per_customer": changed.cpu_micros_per_item(),
               "renamed_rps": renamed.rate().round(),
               "renamed_cpu_us_per_customer": renamed.cpu_micros_per_item(),
               "unchanged_cpu_us_per_customer": again.cpu_micros_per_item(),
               "raw_cpu_us_per_customer": raw.cpu_micros_per_item(),
               "stepped_raw_rps": stepped.map(|floor| floor.rate().round()),
               "stepped_ratio": stepped.map(|floor| floor.rate() / first.rate()),
               "replayed_rps": replayed(&replays, Rows::All).map(|r| r.rate().round()),
               "replayed_without_terms_rps": replayed(&replays, Rows::WithoutTerms).map(|r| r.rate().round()),
               "replayed_customers_only_rps": replayed(&replays, Rows::CustomersOnly).map(|r| r.rate().round()),
               "peak_rss_mib": rss})
    );

    if backend == "sqlite" && args.large > 0 {
        let dir = tempfile::tempdir()?;
        let url = database_url(backend, dir.path()).await?;
        let mut hub = HubProcess::start(&args.hub_binary, &url, dir.path());
        let large = sync_all(args, &hub, args.large, customer, "large first send").await?;
        let rss = peak_rss_mib(hub.child.id())?;
        hub.kill_9();
        let replays = replay_first_send(args, backend, dir.path(), args.large).await?;
        println!(
            "{} customers on sqlite: {:.1} s ({:.0}/s), server peak RSS {rss} MiB, {} MiB read \
             from disk",
            args.large,
            large.seconds,
            large.rate(),
            large.disk_read_kib.unwrap_or(0) / 1024
        );
        print_replays(&replays, &large);
        println!(
            "{}",
            json!({"backend": backend, "scenario": "sync_large", "customers": args.large,
                   "seconds": large.seconds, "rps": large.rate().round(), "peak_rss_mib": rss,
                   "disk_read_kib": large.disk_read_kib,
                   "replayed_seconds": replayed(&replays, Rows::All).map(|r| r.seconds),
                   "replayed_without_terms_seconds": replayed(&replays, Rows::WithoutTerms).map(|r| r.seconds),
                   "replayed_customers_only_seconds": replayed(&replays, Rows::CustomersOnly).map(|r| r.seconds)})
        );
    }
    Ok(())
}

/// On SQLite (unless `--replay false`), the first send of the stopped hub whose database is in
/// `dir` replayed raw: all of its rows, then without the term rows, then the customer rows
/// alone, each into a new database with the hub's schema, in transactions of one batch.
async fn replay_first_send(
    args: &Args,
    backend: &str,
    dir: &Path,
    customers: usize,
) -> anyhow::Result<Vec<Replayed>> {
    if backend != "sqlite" || !args.replay {
        return Ok(Vec::new());
    }
    let mut replays = Vec::new();
    for rows in [Rows::All, Rows::WithoutTerms, Rows::CustomersOnly] {
        let target_dir = tempfile::tempdir()?;
        let target = sqlite_path(&hub_schema(backend, target_dir.path()).await?)?;
        let source = dir.join("hub.db");
        let batch = args.batch;
        let replayed =
            tokio::task::spawn_blocking(move || replay::replay(&source, &target, batch, rows))
                .await??;
        anyhow::ensure!(
            replayed.customers == customers,
            "replayed {} customers of {customers}",
            replayed.customers
        );
        replays.push(replayed);
    }
    Ok(replays)
}

/// Each replay beside the hub run it replays.
fn print_replays(replays: &[Replayed], hub: &Run) {
    for replayed in replays {
        println!(
            "{:<40} {:>12.0} {:>10.2}   {}",
            replayed.rows.describe(),
            replayed.rate(),
            replayed.seconds,
            replayed.breakdown()
        );
    }
    if let Some(all) = replayed(replays, Rows::All) {
        println!(
            "hub time / its own rows replayed raw: {:.2}",
            all.rate() / hub.rate()
        );
    }
}

fn replayed(replays: &[Replayed], rows: Rows) -> Option<&Replayed> {
    replays.iter().find(|replayed| replayed.rows == rows)
}

/// The file of a `sqlite://` URL.
fn sqlite_path(url: &str) -> anyhow::Result<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .with_context(|| format!("not a SQLite URL: {url}"))?;
    Ok(PathBuf::from(path))
}

/// A customer as a backend would send it: names, contact data, a tag and one address.
fn customer(i: usize) -> Value {
    json!({
        "external_id": format!("erp-{i:08}"),
        "first_name": format!("First{i}"),
        "last_name": format!("Last{}", i % 5000),
        "email": format!("customer{i}@example.com"),
        "phone": format!("+35840{i:08}"),
        "tags": ["retail"],
        "addresses": [{"title": "Home", "kind": "billing", "line1": format!("Street {}", i % 977),
                       "postal_code": format!("{:05}", i % 99999), "city": "Helsinki", "country": "FI"}]
    })
}

/// [`customer`] after a change in the source: every one is an update, of a field that is not
/// searched (the search terms stay as they are).
fn changed_customer(i: usize) -> Value {
    let mut body = customer(i);
    body["note"] = json!(format!("changed in the source, {i}"));
    body
}

/// [`changed_customer`] with another first name: every one is an update of its search terms
/// (those of the first and display name go and come; the rest stay).
fn renamed_customer(i: usize) -> Value {
    let mut body = changed_customer(i);
    body["first_name"] = json!(format!("Renamed{i}"));
    body
}

/// Sends customers `0..n`, made by `make`, in batches over `clients` concurrent keep-alive
/// connections. Bodies are encoded before the clock starts, so the client's JSON work is not
/// measured.
async fn sync_all(
    args: &Args,
    hub: &HubProcess,
    n: usize,
    make: fn(usize) -> Value,
    what: &str,
) -> anyhow::Result<Run> {
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..n)
            .step_by(args.batch)
            .map(|start| {
                let items: Vec<Value> = (start..(start + args.batch).min(n)).map(make).collect();
                json!({"key": "external_id", "customers": items}).to_string()
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let url = hub.url("/v1/customers/sync");
    let cpu_before = process_cpu_seconds(hub.child.id())?;
    let client_cpu_before = process_cpu_seconds(std::process::id())?;
    let disk_read_before = disk_read_kib()?;
    let started = Instant::now();
    let workers = (0..args.clients).map(|_| {
        let (bodies, next, url) = (bodies.clone(), next.clone(), url.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(120))
                .build()?;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(index) else {
                    return anyhow::Ok(());
                };
                let response = client
                    .post(&url)
                    .bearer_auth(ADMIN_SECRET)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                let status = response.status();
                let report: Value = response.json().await?;
                if status != 200 || report["summary"]["failed"] != 0 {
                    bail!("batch {index}: {status} {}", report["summary"]);
                }
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Run {
        what: format!("hub sync, {what}"),
        items: n,
        seconds,
        cpu_seconds: process_cpu_seconds(hub.child.id())? - cpu_before,
        client_cpu_seconds: Some(process_cpu_seconds(std::process::id())? - client_cpu_before),
        disk_read_kib: Some(disk_read_kib()? - disk_read_before),
    })
}

/// The upsert both floors run: a customer row of the hub's own `customers` table.
const RAW_UPSERT: &str = "INSERT INTO customers (id, external_id, email_norm, username, \
     last_name_sort, archived, version, created_at, updated_at, password_hash, doc) \
     VALUES ($1, $2, $3, NULL, $4, $5, 1, $6, $6, NULL, $7) \
     ON CONFLICT (external_id) DO UPDATE SET email_norm = excluded.email_norm, \
     last_name_sort = excluded.last_name_sort, archived = excluded.archived, \
     version = customers.version + 1, updated_at = excluded.updated_at, doc = excluded.doc";

/// A row of [`RAW_UPSERT`]: id, external id, email, last-name sort key and document.
type RawRow = (String, String, String, String, String);

/// A fixed `created_at` and `updated_at` for the floors' rows.
const RAW_AT: i64 = 1_795_000_000_000_000;

/// The floors: the same number of rows upserted into the hub's own `customers` table with one
/// prepared `INSERT ... ON CONFLICT DO UPDATE` in one transaction, docs of the hub's size, each
/// on a new database the hub's migrations made. Through sqlx, as a program using its ordinary
/// API writes, on both backends; and on SQLite also stepped through rusqlite, with no hand-off
/// to a worker thread per statement: SQLite's own cost of the rows.
async fn raw_upserts(backend: &str, n: usize) -> anyhow::Result<Vec<Run>> {
    let rows: Vec<RawRow> = (0..n)
        .map(|i| {
            (
                format!("cus_{}", ulid::Ulid::new()),
                format!("erp-{i:08}"),
                format!("customer{i}@example.com"),
                format!("last{}", i % 5000),
                customer(i).to_string(),
            )
        })
        .collect();
    let mut floors = vec![raw_upsert_sqlx(backend, &rows).await?];
    if backend == "sqlite" {
        floors.push(raw_upsert_stepped(rows).await?);
    }
    Ok(floors)
}

/// A new database with the hub's migrations and settings, in `dir`.
async fn hub_schema(backend: &str, dir: &std::path::Path) -> anyhow::Result<String> {
    let url = database_url(backend, dir).await?;
    drop(clientele_store::connect(&clientele_store::StoreConfig::new(&url)).await?);
    Ok(url)
}

async fn raw_upsert_sqlx(backend: &str, rows: &[RawRow]) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let url = hub_schema(backend, dir.path()).await?;
    let cpu_before = process_cpu_seconds(std::process::id())?;
    let started = Instant::now();
    macro_rules! upsert_all {
        ($pool:expr) => {{
            let mut tx = $pool.begin().await?;
            for (id, external_id, email, last_name, doc) in rows {
                sqlx::query(RAW_UPSERT)
                    .bind(id)
                    .bind(external_id)
                    .bind(email)
                    .bind(last_name)
                    .bind(false)
                    .bind(RAW_AT)
                    .bind(doc)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }};
    }
    if backend == "sqlite" {
        let pool = sqlx::SqlitePool::connect(&url).await?;
        upsert_all!(pool);
    } else {
        let pool = sqlx::PgPool::connect(&url).await?;
        upsert_all!(pool);
    }
    Run::floor(
        "raw upsert, sqlx (one tx, prepared)",
        rows.len(),
        started,
        cpu_before,
    )
}

/// [`RAW_UPSERT`] stepped once per row through rusqlite, with the hub writer's journal,
/// durability, foreign-key and cache settings (its checkpoints run elsewhere; here SQLite's
/// own, at the commit, are part of the floor). The floor of the hub's own rows, batch by batch
/// and with its checkpointer, is [`replay_first_send`].
async fn raw_upsert_stepped(rows: Vec<RawRow>) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let url = hub_schema("sqlite", dir.path()).await?;
    let path = sqlite_path(&url)?;
    tokio::task::spawn_blocking(move || {
        let mut conn = rusqlite::Connection::open(&path)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA foreign_keys = ON; PRAGMA cache_size = {};",
            settings::cache_size(settings::WRITER_CACHE_KIB)
        ))?;
        let cpu_before = process_cpu_seconds(std::process::id())?;
        let started = Instant::now();
        let tx = conn.transaction()?;
        {
            let mut upsert = tx.prepare(RAW_UPSERT)?;
            for (id, external_id, email, last_name, doc) in &rows {
                upsert.execute(rusqlite::params![
                    id,
                    external_id,
                    email,
                    last_name,
                    false,
                    RAW_AT,
                    doc
                ])?;
            }
        }
        tx.commit()?;
        Run::floor(
            "raw upsert, stepped (one tx, prepared)",
            rows.len(),
            started,
            cpu_before,
        )
    })
    .await?
}
