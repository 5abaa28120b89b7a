//! Fresh, empty databases for one measurement: a SQLite file in a temporary directory, or a new
//! PostgreSQL database `clientele_bench_<purpose>_<ulid>` that is dropped afterwards.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sqlx::Connection;

/// Which database a measurement runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// A database that exists for one measurement, with a working directory beside it (the SQLite
/// file lives there; the hub keeps its master key file there).
pub struct Database {
    pub backend: Backend,
    pub url: String,
    dir: tempfile::TempDir,
    /// For PostgreSQL: the server URL to drop the database from, and its name.
    postgres: Option<(String, String)>,
}

impl Database {
    /// Creates an empty database, its directory under `place.work_dir`.
    pub async fn fresh(backend: Backend, purpose: &str, place: &Place) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir_in(&place.work_dir)
            .with_context(|| format!("creating a directory in {}", place.work_dir.display()))?;
        let postgres_server = place.postgres_server.as_str();
        match backend {
            Backend::Sqlite => Ok(Self {
                backend,
                url: format!(
                    "sqlite://{}",
                    dir.path().join(format!("{purpose}.db")).display()
                ),
                dir,
                postgres: None,
            }),
            Backend::Postgres => {
                let name = format!(
                    "clientele_bench_{purpose}_{}",
                    ulid::Ulid::new().to_string().to_lowercase()
                );
                admin_statement(postgres_server, &format!("CREATE DATABASE {name}")).await?;
                let mut url = reqwest::Url::parse(postgres_server)
                    .context("the PostgreSQL server URL is not a URL")?;
                url.set_path(&name);
                Ok(Self {
                    backend,
                    url: url.to_string(),
                    dir,
                    postgres: Some((postgres_server.to_owned(), name)),
                })
            }
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Drops the PostgreSQL database (closing any sessions left on it) or deletes the SQLite file.
    pub async fn remove(self) -> anyhow::Result<()> {
        if let Some((server, name)) = &self.postgres {
            admin_statement(
                server,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            )
            .await?;
        }
        self.dir.close().context("removing the temporary directory")
    }
}

/// Runs one statement on the PostgreSQL server's maintenance database.
async fn admin_statement(server: &str, sql: &str) -> anyhow::Result<()> {
    let mut admin = sqlx::PgConnection::connect(server)
        .await
        .with_context(|| format!("connecting to {}", clientele_store::redact(server)))?;
    sqlx::query(sql)
        .execute(&mut admin)
        .await
        .with_context(|| format!("running `{sql}`"))?;
    admin.close().await.ok();
    Ok(())
}

/// Where databases are made.
pub struct Place {
    /// A PostgreSQL server URL whose user may create databases.
    pub postgres_server: String,
    /// The directory for SQLite files and the hub's working directories.
    pub work_dir: PathBuf,
}

/// Runs `measure` on a fresh database and removes the database afterwards, whatever happened.
pub async fn with_fresh<T>(
    backend: Backend,
    purpose: &str,
    place: &Place,
    measure: impl AsyncFnOnce(&Database) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let database = Database::fresh(backend, purpose, place).await?;
    let result = measure(&database).await;
    let removed = database.remove().await;
    match (result, removed) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(error)) => Err(error),
        (Err(error), Ok(())) => Err(error),
        (Err(error), Err(cleanup)) => {
            Err(error.context(format!("and cleaning up failed: {cleanup:#}")))
        }
    }
}
