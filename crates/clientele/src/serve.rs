//! `clientele serve`: configuration from flags and `CLIENTELE_*` variables, start-up (migrations,
//! master key, bootstrap key), and graceful shutdown on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use clientele_api::auth::{Bootstrap, bootstrap};
use clientele_api::rate_limit::RateLimit;
use clientele_api::secrets::{MasterKey, MasterKeySource};
use clientele_api::{ApiConfig, AppState};
use clientele_store::{SqliteSync, StoreConfig};
use tracing_subscriber::EnvFilter;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CLIENTELE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// `sqlite://PATH` (created if missing) or `postgres://user@host/db`.
    #[arg(
        long,
        env = "CLIENTELE_DATABASE_URL",
        default_value = "sqlite://clientele.db"
    )]
    database: String,
    /// File holding the master key that encrypts API key secrets (created, mode 0600, if
    /// missing). `CLIENTELE_MASTER_KEY` (64 hex characters) takes precedence.
    #[arg(
        long,
        env = "CLIENTELE_MASTER_KEY_FILE",
        default_value = "clientele.key"
    )]
    master_key_file: PathBuf,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "CLIENTELE_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Most database connections per hub process: on SQLite the readers beside its one writer
    /// (default: twice the CPU cores, 2 to 16), on PostgreSQL the pool (default: 16).
    #[arg(long, env = "CLIENTELE_DB_MAX_CONNECTIONS")]
    db_max_connections: Option<u32>,
    /// SQLite durability: `normal` survives a crash of the server process, `full` also power loss.
    #[arg(long, env = "CLIENTELE_SQLITE_SYNCHRONOUS", value_enum, default_value_t = Synchronous::Normal)]
    sqlite_synchronous: Synchronous,
    /// How long change records are kept for the change feed (`30d`, `12h`, `90m`, `45s`). A
    /// consumer further behind gets 410 `cursor_expired` and resyncs from the list.
    #[arg(long, env = "CLIENTELE_CHANGE_RETENTION", default_value = "30d",
          value_parser = clientele_api::retention::parse_duration)]
    change_retention: Duration,
    /// Requests per second each API key may make, per hub process (a token bucket; several
    /// processes each grant it). 0 turns rate limiting off.
    #[arg(long, env = "CLIENTELE_RATE_LIMIT", default_value_t = 1000.0)]
    rate_limit: f64,
    /// Requests an API key may make at once above its rate (the bucket's size).
    #[arg(long, env = "CLIENTELE_RATE_BURST", default_value_t = 2000)]
    rate_burst: u32,
    /// Rate-limit the `CLIENTELE_BOOTSTRAP_KEY` key too (it is exempt by default).
    #[arg(long, env = "CLIENTELE_RATE_LIMIT_BOOTSTRAP")]
    rate_limit_bootstrap: bool,
    /// Log format.
    #[arg(long, env = "CLIENTELE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum Synchronous {
    Normal,
    Full,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// How long requests in flight may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);

    let master_key_source = MasterKeySource::from_env(Some(args.master_key_file.clone()));
    let master_key = tokio::task::spawn_blocking(move || MasterKey::load(&master_key_source))
        .await?
        .context("loading the master key")?;

    let mut store_config = StoreConfig::new(&args.database);
    store_config.max_connections = args.db_max_connections;
    store_config.sqlite_sync = match args.sqlite_synchronous {
        Synchronous::Normal => SqliteSync::Normal,
        Synchronous::Full => SqliteSync::Full,
    };
    let store = clientele_store::connect(&store_config)
        .await
        .with_context(|| format!("opening {}", clientele_store::redact(&args.database)))?;

    let config = ApiConfig {
        max_body_bytes: args.max_body_bytes,
        rate_limit: (args.rate_limit > 0.0).then_some(RateLimit {
            per_second: args.rate_limit,
            burst: f64::from(args.rate_burst.max(1)),
        }),
        rate_limit_bootstrap: args.rate_limit_bootstrap,
        ..ApiConfig::default()
    };
    let state = AppState::new(store, master_key, config);
    let bootstrap_secret = std::env::var("CLIENTELE_BOOTSTRAP_KEY").ok();
    // The contract takes any value; one that could be guessed is still taken and said aloud
    // (nothing in the hub can stop guesses at a secret), and gets no exemption (`bootstrap`).
    if let Some(secret) = bootstrap_secret.as_deref().filter(|s| !s.is_empty())
        && !clientele_api::auth::is_strong_secret(secret)
    {
        tracing::warn!(
            "CLIENTELE_BOOTSTRAP_KEY is shorter than {} characters, so it may be guessed: use \
             a random secret (`ck_` and 43 characters, as the hub makes them). It is not \
             exempt from rate limits",
            clientele_api::auth::STRONG_SECRET_CHARS
        );
    }
    match bootstrap(
        &state,
        bootstrap_secret.as_deref().filter(|s| !s.is_empty()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating the bootstrap key: {}", e.detail))?
    {
        Bootstrap::Generated(secret) => {
            // Shown once, on the terminal only: it is never logged or stored in plain text.
            println!(
                "Created the first admin API key. Its secret is shown only this once:\n\n    {secret}\n"
            );
        }
        Bootstrap::FromEnvironment => {
            tracing::info!("bootstrap admin key from CLIENTELE_BOOTSTRAP_KEY is ready")
        }
        Bootstrap::Nothing => {}
    }

    tokio::spawn(clientele_api::signed::purge_expired(
        state.clone(),
        Duration::from_secs(60),
    ));
    tokio::spawn(clientele_api::idempotency::purge_expired(
        state.clone(),
        Duration::from_secs(600),
    ));

    tokio::spawn(clientele_api::retention::purge_old_changes(
        state.clone(),
        args.change_retention,
        (args.change_retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(600)),
    ));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(
        address = %listener.local_addr()?,
        database = %clientele_store::redact(&args.database),
        "clientele hub listening"
    );
    clientele_api::serve(listener, state, shutdown_signal(), SHUTDOWN_GRACE).await?;
    tracing::info!("stopped");
    Ok(())
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
