//! `clientele-bench`: measures a real hub process's throughput and latency under concurrent
//! load, beside the raw database floor measured in the same run. See docs/benchmarks.md.
//!
//! For each backend it measures, in order:
//! 1. the raw floor: the hub's own SQL through sqlx on a fresh database (point selects, then
//!    one-customer insert transactions);
//! 2. the hub: `clientele serve` on another fresh database, seeded through the API, then the
//!    `get_by_id` and `create` scenarios over keep-alive HTTP/1.1.
//!
//! It builds nothing: the hub binary must exist (`scripts/bench.sh` builds both).

mod database;
mod hub;
mod load;
mod raw;
mod report;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};

use crate::database::{Backend, Place, with_fresh};
use crate::hub::{Hub, Plan};
use crate::raw::{RawFloor, RawPlan};
use crate::report::{BackendExtras, Scenario};
use clientele_bench::procfs::{self, CpuWindow};

/// `CLIENTELE_DB_MAX_CONNECTIONS`, which the hub process inherits from this one: `None` leaves
/// each backend its default (`StoreConfig::pool_size`, the `clientele serve` default), and the
/// raw floor sizes its pools the same way.
fn hub_db_connections() -> anyhow::Result<Option<u32>> {
    match std::env::var("CLIENTELE_DB_MAX_CONNECTIONS") {
        Ok(value) if !value.is_empty() => value
            .parse()
            .map(Some)
            .context("CLIENTELE_DB_MAX_CONNECTIONS is not a number"),
        _ => Ok(None),
    }
}

#[derive(Parser)]
#[command(
    name = "clientele-bench",
    about = "Throughput and latency of a real hub beside the raw database floor"
)]
struct Args {
    /// The `clientele` binary to run (build it in release mode first).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/clientele"))]
    hub_binary: PathBuf,
    /// Which database(s) to measure.
    #[arg(long, value_enum, default_value_t = Choice::Both)]
    backend: Choice,
    /// A PostgreSQL server URL whose user may create databases.
    #[arg(
        long,
        env = "CLIENTELE_TEST_POSTGRES_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// Measured seconds per scenario (after the warm-up).
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Warm-up seconds before each measured run (not counted).
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Concurrent connections for both scenarios (overrides the two below).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Concurrent connections (and raw-floor tasks) for reads.
    #[arg(long, default_value_t = 64)]
    read_concurrency: usize,
    /// Concurrent connections (and raw-floor tasks) for creates.
    #[arg(long, default_value_t = 32)]
    create_concurrency: usize,
    /// Customers created before the scenarios run.
    #[arg(long, default_value_t = 10_000)]
    customers: u64,
    /// Directory for the SQLite files and the hub's working directory (default: the system's
    /// temporary directory). E.g. /dev/shm takes the disk out of the measurement.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Also measure raw-floor variants the hub does not use (no connection ping on pool
    /// checkout; 10 customers per transaction), to show what such changes would buy, and hub
    /// requests that isolate parts of the read path.
    #[arg(long)]
    what_ifs: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum Choice {
    Sqlite,
    Postgres,
    Both,
}

impl Args {
    fn backends(&self) -> Vec<Backend> {
        match self.backend {
            Choice::Sqlite => vec![Backend::Sqlite],
            Choice::Postgres => vec![Backend::Postgres],
            Choice::Both => vec![Backend::Sqlite, Backend::Postgres],
        }
    }

    fn read_plan(&self) -> Plan {
        self.plan(self.concurrency.unwrap_or(self.read_concurrency))
    }

    fn create_plan(&self) -> Plan {
        self.plan(self.concurrency.unwrap_or(self.create_concurrency))
    }

    fn plan(&self, concurrency: usize) -> Plan {
        Plan {
            concurrency: concurrency.max(1),
            warmup: Duration::from_secs(self.warmup_secs),
            duration: Duration::from_secs(self.duration_secs.max(1)),
        }
    }

    fn place(&self) -> Place {
        Place {
            postgres_server: self.postgres_url.clone(),
            work_dir: self.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        }
    }

    fn raw_plan(&self) -> anyhow::Result<RawPlan> {
        Ok(RawPlan {
            customers: self.customers,
            max_connections: hub_db_connections()?,
            read_concurrency: self.read_plan().concurrency,
            create_concurrency: self.create_plan().concurrency,
            warmup: Duration::from_secs(self.warmup_secs),
            duration: Duration::from_secs(self.duration_secs.max(1)),
            what_ifs: self.what_ifs,
        })
    }
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    // Fail before minutes of raw-floor measurements, not after.
    args.hub_binary = args.hub_binary.canonicalize().with_context(|| {
        format!(
            "no hub binary at {} (build it with `cargo build --release -p clientele`)",
            args.hub_binary.display()
        )
    })?;
    let idle = CpuWindow::start(None)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_machine_cores = idle.finish()?.machine;

    let mut scenarios = Vec::new();
    let mut extras = Vec::new();
    for backend in args.backends() {
        let (mut measured, extra) = measure_backend(&args, backend).await?;
        scenarios.append(&mut measured);
        extras.push(extra);
    }
    report::print(&scenarios, &extras, idle_machine_cores);

    let failing: Vec<&Scenario> = scenarios.iter().filter(|s| s.too_many_errors()).collect();
    for s in &failing {
        eprintln!(
            "ERROR: {} {} failed {} of {} hub requests and {} raw operations (more than {}%); samples: {:?} {:?}",
            s.backend,
            s.scenario,
            s.hub.failed,
            s.hub.ok + s.hub.failed,
            s.raw.failed,
            report::MAX_ERROR_RATE * 100.0,
            s.hub.failure_samples,
            s.raw.failure_samples,
        );
    }
    Ok(if failing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The raw floor, then the hub, each on its own fresh database.
async fn measure_backend(
    args: &Args,
    backend: Backend,
) -> anyhow::Result<(Vec<Scenario>, BackendExtras)> {
    let load_average_before = procfs::load_average();
    let (raw_plan, place) = (args.raw_plan()?, args.place());
    progress(
        backend,
        &format!("raw floor (load average {load_average_before})"),
    );
    let mut floor = with_fresh(backend, "raw", &place, async |db| {
        raw::measure(db, &raw_plan).await
    })
    .await?;

    progress(backend, "hub");
    let mut hub = with_fresh(backend, "hub", &place, async |db| {
        measure_hub(args, db).await
    })
    .await?;
    let extras = BackendExtras {
        backend: backend.name(),
        db_connections: floor.pool_size,
        peak_rss_kib: hub.peak_rss_kib,
        hub_doc_bytes: hub.doc_bytes,
        raw_doc_bytes: floor.mean_doc_bytes,
        seed_per_second: hub.seed_per_second,
        load_average_before,
        what_ifs: std::mem::take(&mut floor.what_ifs)
            .into_iter()
            .chain(std::mem::take(&mut hub.diagnostics))
            .collect(),
    };
    Ok((scenarios(args, backend, floor, hub), extras))
}

/// What the hub's run measured.
struct HubRun {
    get: (load::Measured, procfs::CpuUse),
    create: (load::Measured, procfs::CpuUse),
    peak_rss_kib: u64,
    doc_bytes: usize,
    seed_per_second: f64,
    diagnostics: Vec<report::WhatIf>,
}

async fn measure_hub(args: &Args, db: &database::Database) -> anyhow::Result<HubRun> {
    let (read, create) = (args.read_plan(), args.create_plan());
    let mut hub = Hub::start(
        &args.hub_binary,
        db,
        read.concurrency.max(create.concurrency),
    )
    .await?;
    let tag = format!("hub{}", ulid::Ulid::new().to_string().to_lowercase());
    progress(
        db.backend,
        &format!("seeding {} customers through the API", args.customers),
    );
    let seeded = hub.seed(&tag, args.customers, create.concurrency).await?;
    progress(
        db.backend,
        &format!("get_by_id with {} connections", read.concurrency),
    );
    let get = hub.get_by_id(&seeded, &read).await?;
    hub.ensure_running()?;
    progress(
        db.backend,
        &format!("create with {} connections", create.concurrency),
    );
    let created = hub.create(&tag, args.customers, &create).await?;
    hub.ensure_running()?;
    let diagnostics = if args.what_ifs {
        progress(db.backend, "diagnostics");
        hub.diagnostics(&read).await?
    } else {
        Vec::new()
    };
    hub.ensure_running()?;
    let peak_rss_kib = hub.peak_rss_kib()?;
    if !hub.stop() {
        eprintln!("warning: the hub did not exit cleanly on SIGTERM");
    }
    Ok(HubRun {
        get,
        create: created,
        peak_rss_kib,
        doc_bytes: seeded.mean_doc_bytes,
        seed_per_second: seeded.per_second,
        diagnostics,
    })
}

/// The two scenarios, the hub's figures beside the raw floor's.
fn scenarios(args: &Args, backend: Backend, floor: RawFloor, hub: HubRun) -> Vec<Scenario> {
    vec![
        Scenario {
            backend: backend.name(),
            scenario: "get_by_id",
            concurrency: args.read_plan().concurrency,
            hub: hub.get.0,
            hub_cpu: hub.get.1,
            raw: floor.select,
            raw_cpu: floor.select_cpu,
        },
        Scenario {
            backend: backend.name(),
            scenario: "create",
            concurrency: args.create_plan().concurrency,
            hub: hub.create.0,
            hub_cpu: hub.create.1,
            raw: floor.insert,
            raw_cpu: floor.insert_cpu,
        },
    ]
}

fn progress(backend: Backend, what: &str) {
    eprintln!("[{}] {what}", backend.name());
}
