//! What the benchmark binaries share: backend selection, fresh databases, and figures of
//! processes from `/proc`.

use anyhow::{Context, bail};

pub mod procfs;
pub mod replay;

/// The backends a `--backend` value names: `sqlite`, `postgres` or `both`.
pub fn backends(name: &str) -> anyhow::Result<&'static [&'static str]> {
    Ok(match name {
        "both" => &["sqlite", "postgres"],
        "sqlite" => &["sqlite"],
        "postgres" => &["postgres"],
        other => bail!("unknown backend {other}"),
    })
}

/// A fresh database: a file in `dir` for SQLite, a new database for PostgreSQL.
pub async fn database_url(backend: &str, dir: &std::path::Path) -> anyhow::Result<String> {
    if backend == "sqlite" {
        return Ok(format!("sqlite://{}", dir.join("hub.db").display()));
    }
    clientele_testkit::fresh_postgres_database()
        .await
        .context("set CLIENTELE_TEST_POSTGRES_URL to a PostgreSQL server")
}

/// The peak resident memory of a process, in MiB.
pub fn peak_rss_mib(pid: u32) -> anyhow::Result<u64> {
    Ok(procfs::peak_rss_kib(pid)? / 1024)
}

/// Drops a database [`database_url`] created for PostgreSQL (a SQLite file goes with its
/// directory): a 1,000,000-customer run leaves gigabytes otherwise.
pub async fn drop_database(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        return Ok(());
    }
    let name = url.rsplit('/').next().context("a database name")?;
    let server = clientele_testkit::postgres_server_url().context("a PostgreSQL server")?;
    let mut admin = sqlx::PgConnection::connect(&server).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    Ok(())
}
