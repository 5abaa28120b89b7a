//! `feed-bench`: the change feed and list/search on a hub holding many customers. See
//! docs/benchmarks.md.
//!
//! Per backend: loads N customers through bulk sync (batches of 1000), then measures reading the
//! whole change feed in pages of 1000; the first page of every list filter and `q` search under
//! every sort, with what the machine read from disk meanwhile (pages of the database the host
//! dropped from its page cache); and a cursor walk, comparing its 1000th page with its first.
//!
//! `--keep DIR` keeps the loaded database (and the hub's files) in `DIR` and reuses it on the
//! next run with the same `DIR`, so that query plans can be compared on the same data without
//! loading a million customers again (the hub applies any new migration to it at start).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use clientele_bench::procfs::disk_read_kib;
use clientele_bench::{backends, database_url, drop_database, peak_rss_mib};
use clientele_testkit::{ADMIN_SECRET, HubProcess};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(name = "feed-bench", about = "Change feed and search on a large hub")]
struct Args {
    /// The `clientele` binary (build it in release mode first).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/clientele"))]
    hub_binary: PathBuf,
    /// `sqlite`, `postgres` or `both`.
    #[arg(long, default_value = "both")]
    backend: String,
    #[arg(long, default_value_t = 1_000_000)]
    customers: usize,
    /// Concurrent clients while loading.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Runs per list query (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Keep the loaded database in this directory (one per backend inside it) and reuse it when
    /// it is there already, instead of loading afresh and dropping it at the end.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Measure only the first pages (not the whole feed nor the cursor walk).
    #[arg(long)]
    pages_only: bool,
    /// Keep the hub that was measured running for this many seconds at the end (its URL is
    /// printed), to look at it in the state the measurement left it in.
    #[arg(long, default_value_t = 0)]
    hold_secs: u64,
}

const SURNAMES: [&str; 40] = [
    "Smith",
    "Johnson",
    "Virtanen",
    "Korhonen",
    "Nieminen",
    "Mäkinen",
    "Hämäläinen",
    "Laine",
    "Heikkinen",
    "Koskinen",
    "Järvinen",
    "Lehtonen",
    "Lehtinen",
    "Saarinen",
    "Salminen",
    "Heinonen",
    "Niemi",
    "Heikkilä",
    "Kinnunen",
    "Salonen",
    "Turunen",
    "Salo",
    "Laitinen",
    "Tuominen",
    "Rantanen",
    "Karjalainen",
    "Jokinen",
    "Mattila",
    "Savolainen",
    "Lahtinen",
    "Ahonen",
    "Brown",
    "Miller",
    "Davis",
    "Garcia",
    "Wilson",
    "Anderson",
    "Taylor",
    "Thomas",
    "Moore",
];
const FIRST_NAMES: [&str; 20] = [
    "Anna", "Matti", "Maria", "Juha", "Liisa", "Timo", "Sari", "Mikko", "Johanna", "Jari", "Emma",
    "Oliver", "Aino", "Leo", "Sofia", "Elias", "Olivia", "Eino", "Helmi", "Onni",
];

/// A customer as a backend would send it. Surnames repeat (a 3-letter prefix selects a few
/// percent), one in fifty is archived, one in three has a company.
fn customer(i: usize) -> Value {
    let spread = i.wrapping_mul(2_654_435_761) >> 7;
    let mut body = json!({
        "external_id": format!("erp-{i:08}"),
        "first_name": FIRST_NAMES[spread % FIRST_NAMES.len()],
        "last_name": format!("{}{}", SURNAMES[(spread / 7) % SURNAMES.len()],
                             if i.is_multiple_of(3) { String::new() } else { format!("-{}", i % 1000) }),
        "email": format!("customer{i}@example.com"),
        "phone": format!("+35840{i:08}"),
        "archived": i.is_multiple_of(50),
        "tags": ["retail"],
        "addresses": [{"title": "Home", "kind": "billing", "line1": format!("Street {}", i % 977),
                       "postal_code": format!("{:05}", i % 99999), "city": "Helsinki", "country": "FI"}]
    });
    if i % 3 == 1 {
        body["company"] = json!(format!("Company {} Oy", i % 20_000));
    }
    body
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.hub_binary.exists(),
        "{} does not exist: build it with cargo build --release -p clientele",
        args.hub_binary.display()
    );
    for backend in backends(&args.backend)? {
        measure(&args, backend).await?;
    }
    Ok(())
}

async fn measure(args: &Args, backend: &str) -> anyhow::Result<()> {
    let temporary = tempfile::tempdir()?;
    let dir = match &args.keep {
        Some(keep) => keep.join(backend),
        None => temporary.path().to_owned(),
    };
    std::fs::create_dir_all(&dir)?;
    // A kept database is named in this file; it exists once the load has finished.
    let kept = dir.join("database_url");
    let reused = args.keep.is_some() && kept.exists();
    let url = if reused {
        std::fs::read_to_string(&kept)?.trim().to_owned()
    } else {
        database_url(backend, &dir).await?
    };
    let mut hub = HubProcess::start(&args.hub_binary, &url, &dir);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    println!("\n== {backend}: {} customers", args.customers);

    let mut load_seconds = 0.0;
    if reused {
        println!("reusing the database loaded in {}", dir.display());
    } else {
        let started = Instant::now();
        load(args, &hub).await?;
        load_seconds = started.elapsed().as_secs_f64();
        println!(
            "load through sync: {load_seconds:.1} s ({:.0} customers/s)",
            args.customers as f64 / load_seconds
        );
        if backend == "postgres" {
            // What autovacuum does shortly after a bulk load: statistics, and the visibility
            // map that lets index-only scans skip the table.
            let pool = sqlx::PgPool::connect(&url).await?;
            sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
            pool.close().await;
        }
        if args.keep.is_some() {
            std::fs::write(&kept, &url)?;
        }
    }

    // The whole feed, pages of 1000.
    let feed_rate = if args.pages_only {
        0.0
    } else {
        read_feed(&client, &hub).await?
    };

    let report = first_pages(args, &client, &hub).await?;

    let walks = if args.pages_only {
        Vec::new()
    } else {
        cursor_walks(args, &client, &hub).await?
    };
    let rss = peak_rss_mib(hub.child.id())?;
    if args.hold_secs > 0 {
        eprintln!(
            "holding the hub at {} (bearer {ADMIN_SECRET}) for {} s",
            hub.url(""),
            args.hold_secs
        );
        tokio::time::sleep(Duration::from_secs(args.hold_secs)).await;
    }
    hub.kill_9();
    if args.keep.is_none() {
        drop_database(&url).await?;
    }
    println!(
        "{}",
        json!({"backend": backend, "scenario": "feed_search", "customers": args.customers,
               "load_seconds": load_seconds, "feed_events_per_s": feed_rate.round(),
               "slowest_first_page_ms": report.worst.0, "slowest_query": report.worst.1,
               "slowest_disk_read_kib": report.worst_disk_read_kib,
               "first_pages_disk_read_kib": report.disk_read_kib,
               "first_pages": report.rows, "walks": walks, "peak_rss_mib": rss})
    );
    Ok(())
}

/// Reads the whole change feed in pages of 1000; returns events per second.
async fn read_feed(client: &reqwest::Client, hub: &HubProcess) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut after = 0_i64;
    let mut events = 0_usize;
    loop {
        let body = get(
            client,
            hub,
            &format!("/v1/changes?after={after}&limit=1000"),
        )
        .await?;
        let count = body.matches("{\"seq\":").count();
        let next = body
            .rsplit("\"next_after\":")
            .next()
            .and_then(|rest| rest.trim_end_matches('}').parse::<i64>().ok())
            .context("next_after")?;
        if count == 0 {
            break;
        }
        events += count;
        after = next;
    }
    let feed_seconds = started.elapsed().as_secs_f64();
    let feed_rate = events as f64 / feed_seconds;
    println!(
        "whole feed: {events} events in {feed_seconds:.2} s = {feed_rate:.0} events/s (target >= 100000)"
    );
    Ok(feed_rate)
}

/// The first-page medians of every filter under every sort, and the slowest of them.
struct FirstPages {
    rows: Vec<Value>,
    worst: (f64, String),
    /// KiB the machine read from disk during the slowest one's runs, and during all of them.
    worst_disk_read_kib: u64,
    disk_read_kib: u64,
}

async fn first_pages(
    args: &Args,
    client: &reqwest::Client,
    hub: &HubProcess,
) -> anyhow::Result<FirstPages> {
    let sorts = [
        "created_at",
        "-created_at",
        "updated_at",
        "-updated_at",
        "last_name",
    ];
    let n = args.customers;
    let mid = first_customer_field(
        client,
        hub,
        &format!("sort=created_at&external_id=erp-{:08}", n / 2),
        "created_at",
    )
    .await?;
    let filters = vec![
        String::new(),
        format!("email=CUSTOMER{}@example.com", n / 3),
        format!("phone=%2B35840{:08}", n / 4),
        format!("external_id=erp-{:08}", n / 5),
        "archived=true".into(),
        "archived=false".into(),
        format!("created_after={mid}"),
        format!("created_before={mid}"),
        format!("updated_after={mid}"),
        format!("updated_before={mid}"),
        "q=s".into(),
        "q=sa".into(),
        "q=vir".into(),
        "q=virtanen-12".into(),
        "q=customer12345".into(),
        "q=company%201".into(),
        format!("q=erp-{:05}", n / 700),
        "q=zzz".into(),
        "q=mäk".into(),
        format!("archived=false&q=ko&created_after={mid}"),
        "archived=true&q=smi".into(),
    ];
    let mut worst = (0.0_f64, String::new());
    let mut worst_disk_read_kib = 0;
    let disk_before = disk_read_kib()?;
    println!(
        "{:<44} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "first page, ms (median)", sorts[0], sorts[1], sorts[2], sorts[3], sorts[4]
    );
    let mut rows = Vec::new();
    for filter in &filters {
        let mut row = Vec::new();
        for sort in sorts {
            let query = format!("/v1/customers?sort={sort}&{filter}");
            let read_before = disk_read_kib()?;
            let ms = median_ms(args.runs, || get(client, hub, &query)).await?;
            if ms > worst.0 {
                worst = (ms, query.clone());
                worst_disk_read_kib = disk_read_kib()? - read_before;
            }
            row.push(ms);
        }
        let label = if filter.is_empty() {
            "(none)"
        } else {
            filter.as_str()
        };
        println!(
            "{:<44} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            label, row[0], row[1], row[2], row[3], row[4]
        );
        rows.push(json!({"filter": filter, "ms": row}));
    }
    println!(
        "slowest first page: {:.2} ms for {} (target <= 20); the machine read {} KiB from disk \
         during its runs",
        worst.0, worst.1, worst_disk_read_kib
    );
    let disk_read_kib = disk_read_kib()? - disk_before;
    println!(
        "read from disk during the first pages: {} MiB (page cache the host had dropped)",
        disk_read_kib / 1024
    );
    Ok(FirstPages {
        rows,
        worst,
        worst_disk_read_kib,
        disk_read_kib,
    })
}

/// A cursor walk per sort: page 1 against page 1000 (limit 100).
async fn cursor_walks(
    args: &Args,
    client: &reqwest::Client,
    hub: &HubProcess,
) -> anyhow::Result<Vec<Value>> {
    let mut walks = Vec::new();
    for sort in ["created_at", "-updated_at", "last_name"] {
        let first = format!("/v1/customers?sort={sort}&limit=100");
        let mut path = first.clone();
        for _ in 1..1000 {
            let body: Value = serde_json::from_str(&get(client, hub, &path).await?)?;
            let cursor = body["next_cursor"].as_str().context("a next page")?;
            path = format!("{first}&cursor={cursor}");
        }
        let page1 = median_ms(args.runs, || get(client, hub, &first)).await?;
        let page1000 = median_ms(args.runs, || get(client, hub, &path)).await?;
        println!("cursor walk sort={sort}: page 1 {page1:.2} ms, page 1000 {page1000:.2} ms");
        walks.push(json!({"sort": sort, "page1_ms": page1, "page1000_ms": page1000}));
    }
    Ok(walks)
}

async fn get(client: &reqwest::Client, hub: &HubProcess, path: &str) -> anyhow::Result<String> {
    let response = client
        .get(hub.url(path))
        .bearer_auth(ADMIN_SECRET)
        .send()
        .await?;
    let status = response.status();
    let body = response.text().await?;
    if status != 200 {
        bail!("{path}: {status} {body}");
    }
    Ok(body)
}

async fn first_customer_field(
    client: &reqwest::Client,
    hub: &HubProcess,
    query: &str,
    field: &str,
) -> anyhow::Result<String> {
    let body: Value =
        serde_json::from_str(&get(client, hub, &format!("/v1/customers?{query}")).await?)?;
    body["data"][0][field]
        .as_str()
        .map(str::to_owned)
        .context("no such customer")
}

async fn median_ms<F, Fut>(runs: usize, mut call: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
{
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        call().await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Loads the customers through bulk sync, batches of 1000 over concurrent clients.
async fn load(args: &Args, hub: &HubProcess) -> anyhow::Result<()> {
    let batches = args.customers.div_ceil(1000);
    let next = Arc::new(AtomicUsize::new(0));
    let url = hub.url("/v1/customers/sync");
    let n = args.customers;
    let workers = (0..args.clients).map(|_| {
        let (next, url) = (next.clone(), url.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= batches {
                    return anyhow::Ok(());
                }
                let items: Vec<Value> = (index * 1000..((index + 1) * 1000).min(n))
                    .map(customer)
                    .collect();
                let body = json!({"key": "external_id", "customers": items});
                let response = client
                    .post(&url)
                    .bearer_auth(ADMIN_SECRET)
                    .json(&body)
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
    Ok(())
}
