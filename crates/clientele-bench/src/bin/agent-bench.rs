//! `agent-bench`: the sync agent (`clientele push` / `pull`) against a real SQLite hub, on a
//! SQLite source of N customers (default 1,000,000). See docs/benchmarks.md.
//!
//! Scenarios, in one run: the first push (all new), a second push with nothing changed, a push
//! with 1 % of the rows changed, and a pull of the whole change feed into a fresh mirror. Each
//! is timed as the agent process's wall time, with the agent's peak RSS (sampled `VmHWM`). Beside
//! them, the raw floors: the same rows upserted straight into a SQLite table in one transaction,
//! through sqlx (a hand-off to its worker thread per statement) and stepped through rusqlite
//! (SQLite's own cost).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use clientele_testkit::{ADMIN_SECRET, HubProcess};
use sqlx::{Connection, SqliteConnection};

#[derive(Parser)]
#[command(
    name = "agent-bench",
    about = "The sync agent against a real hub, beside a raw SQLite upsert"
)]
struct Args {
    /// The `clientele` binary (build it in release mode first).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/clientele"))]
    binary: PathBuf,
    /// Rows in the source.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Where the temporary databases go.
    #[arg(long, default_value = "/tmp")]
    work_dir: PathBuf,
    /// Keep the databases and the job file (their directory is printed), e.g. to time or
    /// profile one scenario again by hand on a populated hub and state.
    #[arg(long)]
    keep: bool,
}

/// One timed agent run.
struct Timed {
    what: &'static str,
    seconds: f64,
    peak_rss_mib: f64,
    summary: String,
    target: &'static str,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = args.binary.canonicalize().with_context(|| {
        format!(
            "no binary at {} (cargo build --release -p clientele)",
            args.binary.display()
        )
    })?;
    let dir = tempfile::tempdir_in(&args.work_dir)?;
    let source = dir.path().join("source.db");
    eprintln!("agent-bench: writing a source of {} rows", args.rows);
    write_source(&source, args.rows).await?;

    let rows = read_source(&source).await?;
    let raw_seconds = raw_upsert(&rows, &dir.path().join("raw.db")).await?;
    eprintln!("agent-bench: raw upsert through sqlx {raw_seconds:.2} s");
    let stepped_seconds = raw_upsert_stepped(rows, dir.path().join("stepped.db")).await?;
    eprintln!("agent-bench: raw upsert stepped {stepped_seconds:.2} s");

    let hub_dir = dir.path().join("hub");
    std::fs::create_dir_all(&hub_dir)?;
    let hub_url = format!("sqlite://{}", hub_dir.join("hub.db").display());
    let (hub_binary, hub_db_dir) = (binary.clone(), hub_dir.clone());
    let mut hub =
        tokio::task::spawn_blocking(move || HubProcess::start(&hub_binary, &hub_url, &hub_db_dir))
            .await?;
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "[hub]\nurl = \"{}\"\nkey_env = \"AGENT_BENCH_KEY\"\n\n[source]\nurl = \"sqlite://{}\"\ntable = \"people\"\nkey = \"person_id\"\n\n\
             [sync]\nkey = \"external_id\"\non_missing = \"archive\"\nstate = \"state.db\"\nbatch_size = 1000\nconcurrency = 4\n\n\
             [fields]\nfirst_name = \"fname\"\nlast_name = \"lname\"\n\n[mirror]\nurl = \"sqlite://{}\"\ntable = \"customers\"\n",
            hub.base_url,
            source.display(),
            dir.path().join("mirror.db").display()
        ),
    )?;

    let mut runs = Vec::new();
    runs.push(run_agent(&binary, "push", &job, "first push", "≤ 20 s")?);
    runs.push(run_agent(
        &binary,
        "push",
        &job,
        "second push, nothing changed",
        "≤ 3 s",
    )?);
    let changed = args.rows / 100;
    change_rows(&source, changed).await?;
    runs.push(run_agent(
        &binary,
        "push",
        &job,
        "push with 1 % changed",
        "≤ 4 s",
    )?);
    runs.push(run_agent(
        &binary,
        "pull",
        &job,
        "pull of the whole feed into a new mirror",
        "≤ 15 s (1,000,000 changes)",
    )?);
    hub.terminate();
    if args.keep {
        eprintln!("agent-bench: kept {}", dir.keep().display());
    }

    println!(
        "agent-bench: {} source rows, SQLite hub, batches of 1000, concurrency 4, load average {}",
        args.rows,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "raw SQLite upsert of the same rows (one transaction, prepared statement): \
         {raw_seconds:.2} s through sqlx, {stepped_seconds:.2} s stepped through rusqlite\n"
    );
    println!(
        "| scenario | agent wall time | target | ratio to raw upsert (sqlx / stepped) | agent peak RSS | summary |"
    );
    println!("|---|---|---|---|---|---|");
    for run in &runs {
        println!(
            "| {} | {:.2} s | {} | {:.1}× / {:.1}× | {:.0} MiB | `{}` |",
            run.what,
            run.seconds,
            run.target,
            run.seconds / raw_seconds,
            run.seconds / stepped_seconds,
            run.peak_rss_mib,
            run.summary
        );
    }
    Ok(())
}

/// A `people` table: person_id, fname, lname, email, written in one transaction.
async fn write_source(path: &Path, rows: u64) -> anyhow::Result<()> {
    let mut conn =
        SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", path.display())).await?;
    sqlx::query(
        "CREATE TABLE people (person_id INTEGER PRIMARY KEY, fname TEXT, lname TEXT, email TEXT)",
    )
    .execute(&mut conn)
    .await?;
    // A recursive CTE writes a million rows in SQLite itself, in a second or two.
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO people SELECT i, 'First' || i, 'Last' || (i % 977), 'person' || i || '@example.com' FROM n",
    )
    .bind(rows as i64)
    .execute(&mut conn)
    .await?;
    Ok(())
}

async fn change_rows(path: &Path, count: u64) -> anyhow::Result<()> {
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", path.display())).await?;
    // Spread over the table: every 100th row.
    sqlx::query("UPDATE people SET fname = fname || ' changed' WHERE person_id % 100 = 0 AND person_id / 100 <= ?1")
        .bind(count as i64)
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// A source row: person id, first and last name, email.
type SourceRow = (i64, String, String, String);

async fn read_source(source: &Path) -> anyhow::Result<Vec<SourceRow>> {
    let mut reader = SqliteConnection::connect(&format!("sqlite://{}", source.display())).await?;
    Ok(
        sqlx::query_as("SELECT person_id, fname, lname, email FROM people")
            .fetch_all(&mut reader)
            .await?,
    )
}

/// The floors' table, and the upsert both run once per row.
const RAW_TABLE: &str = "CREATE TABLE customers (external_id TEXT PRIMARY KEY, first_name TEXT, \
     last_name TEXT, email TEXT UNIQUE)";
const RAW_UPSERT: &str = "INSERT INTO customers (external_id, first_name, last_name, email) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (external_id) DO UPDATE SET \
     first_name = excluded.first_name, last_name = excluded.last_name, email = excluded.email";

/// The floor through sqlx: every source row upserted with one prepared statement in one
/// transaction.
async fn raw_upsert(rows: &[SourceRow], target: &Path) -> anyhow::Result<f64> {
    let mut conn =
        SqliteConnection::connect(&format!("sqlite://{}?mode=rwc", target.display())).await?;
    sqlx::query(RAW_TABLE).execute(&mut conn).await?;
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    for (id, first, last, email) in rows {
        sqlx::query(RAW_UPSERT)
            .bind(id.to_string())
            .bind(first)
            .bind(last)
            .bind(email)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(started.elapsed().as_secs_f64())
}

/// The same floor stepped through rusqlite, with no hand-off to a worker thread per statement.
async fn raw_upsert_stepped(rows: Vec<SourceRow>, target: PathBuf) -> anyhow::Result<f64> {
    tokio::task::spawn_blocking(move || {
        let mut conn = rusqlite::Connection::open(&target)?;
        conn.execute_batch(RAW_TABLE)?;
        let started = Instant::now();
        let tx = conn.transaction()?;
        {
            let mut upsert = tx.prepare(RAW_UPSERT)?;
            for (id, first, last, email) in &rows {
                upsert.execute(rusqlite::params![id.to_string(), first, last, email])?;
            }
        }
        tx.commit()?;
        Ok(started.elapsed().as_secs_f64())
    })
    .await?
}

/// Runs one agent command to completion, sampling its peak RSS while it runs.
fn run_agent(
    binary: &Path,
    command: &str,
    job: &Path,
    what: &'static str,
    target: &'static str,
) -> anyhow::Result<Timed> {
    eprintln!("agent-bench: {what}");
    let started = Instant::now();
    let mut child = Command::new(binary)
        .arg(command)
        .arg("--config")
        .arg(job)
        .env("AGENT_BENCH_KEY", ADMIN_SECRET)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Some(kib) = std::fs::read_to_string(&status_path)
            .ok()
            .and_then(|text| vm_hwm_kib(&text))
        {
            peak_kib = peak_kib.max(kib);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let seconds = started.elapsed().as_secs_f64();
    let output = child.wait_with_output()?;
    if !status.success() {
        bail!("clientele {command} failed: {status}");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout.lines().last().unwrap_or_default().to_owned();
    eprintln!(
        "  {seconds:.2} s, peak RSS {} MiB: {summary}",
        peak_kib / 1024
    );
    Ok(Timed {
        what,
        seconds,
        peak_rss_mib: peak_kib as f64 / 1024.0,
        summary,
        target,
    })
}

fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
