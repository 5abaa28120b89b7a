//! Test support: a real hub (the production router and store) served on `127.0.0.1:0` over a
//! fresh SQLite file or a fresh PostgreSQL database, with an HTTP client holding an admin key.
//!
//! PostgreSQL tests use `CLIENTELE_TEST_POSTGRES_URL` (a server URL whose user may create
//! databases). Without it they are skipped with a message, except under CI (`CI` set), where a
//! missing PostgreSQL fails the run.

mod process;
mod signing;

use std::sync::Arc;
use std::time::Duration;

use clientele_api::secrets::MasterKey;
use clientele_api::{ApiConfig, AppState};
use clientele_domain::Role;
use clientele_store::StoreConfig;
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

pub use process::HubProcess;
pub use signing::KeyPair;

/// The admin secret every test hub is bootstrapped with.
pub const ADMIN_SECRET: &str = "ck_test_admin_secret_for_the_test_hub_only";

/// Which database a test hub runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running hub for one test.
pub struct TestHub {
    pub backend: Backend,
    pub base_url: String,
    pub database_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    secret: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: Arc<tempfile::TempDir>,
}

impl TestHub {
    pub async fn sqlite() -> TestHub {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("hub.db").display());
        Self::start_on(
            Backend::Sqlite,
            url,
            ApiConfig::default(),
            Arc::new(dir),
            random_key(),
        )
        .await
    }

    /// A hub on a new PostgreSQL database, or `None` (with a message) when none is configured.
    pub async fn postgres() -> Option<TestHub> {
        Self::postgres_with(ApiConfig::default()).await
    }

    pub async fn postgres_with(config: ApiConfig) -> Option<TestHub> {
        let url = fresh_postgres_database().await?;
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Some(Self::start_on(Backend::Postgres, url, config, dir, random_key()).await)
    }

    pub async fn start(backend: Backend, config: ApiConfig) -> Option<TestHub> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("hub.db").display());
                Some(Self::start_on(backend, url, config, Arc::new(dir), random_key()).await)
            }
            Backend::Postgres => Self::postgres_with(config).await,
        }
    }

    /// A hub whose ordinary keys may make `burst` requests at once, then `per_second`; with
    /// `limit_bootstrap` the test admin key is limited too.
    pub async fn with_rate_limit(
        backend: Backend,
        per_second: f64,
        burst: f64,
        limit_bootstrap: bool,
    ) -> Option<TestHub> {
        let config = ApiConfig {
            rate_limit: Some(clientele_api::rate_limit::RateLimit { per_second, burst }),
            rate_limit_bootstrap: limit_bootstrap,
            ..ApiConfig::default()
        };
        Self::start(backend, config).await
    }

    async fn start_on(
        backend: Backend,
        database_url: String,
        config: ApiConfig,
        dir: Arc<tempfile::TempDir>,
        master_key: MasterKey,
    ) -> TestHub {
        show_hub_warnings_in_test_output();
        let mut store_config = StoreConfig::new(&database_url);
        store_config.max_connections = Some(8);
        let store = clientele_store::connect(&store_config)
            .await
            .expect("open the test database");
        let state = AppState::new(store, master_key, config);
        clientele_api::auth::bootstrap(&state, Some(ADMIN_SECRET))
            .await
            .expect("bootstrap key");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("address"));
        let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        tokio::spawn(async move {
            let stop = async {
                let _ = stop.await;
            };
            let _ = clientele_api::serve(listener, served, stop, Duration::from_secs(5)).await;
        });
        TestHub {
            backend,
            base_url,
            database_url,
            client: reqwest::Client::new(),
            state,
            secret: ADMIN_SECRET.to_owned(),
            shutdown: Some(shutdown),
            _dir: dir,
        }
    }

    /// A second hub process on the same database and master key (its own pool, caches and
    /// rate limits), as when several hubs serve one PostgreSQL database.
    pub async fn another_process(&self, config: ApiConfig) -> TestHub {
        let master_key = self.state.master_key().clone();
        Self::start_on(
            self.backend,
            self.database_url.clone(),
            config,
            self._dir.clone(),
            master_key,
        )
        .await
    }

    /// The same hub seen through another API key.
    pub fn as_key(&self, secret: &str) -> TestHub {
        TestHub {
            backend: self.backend,
            base_url: self.base_url.clone(),
            database_url: self.database_url.clone(),
            client: self.client.clone(),
            state: self.state.clone(),
            secret: secret.to_owned(),
            shutdown: None,
            _dir: self._dir.clone(),
        }
    }

    /// Creates a key with this role and returns its secret.
    pub async fn create_key(&self, role: Role) -> String {
        self.create_key_pair(role).await.secret
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// The text of this hub's `GET /metrics`.
    pub async fn metrics(&self) -> String {
        metrics_text(&self.client, &self.base_url).await
    }

    /// A request with this hub's key as bearer.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(&self.secret)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    pub fn put(&self, path: &str) -> RequestBuilder {
        self.request(Method::PUT, path)
    }

    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.request(Method::PATCH, path)
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.request(Method::DELETE, path)
    }

    /// `POST /v1/customers/sync` with this body, read whole.
    pub async fn sync(&self, body: &Value) -> Reply {
        call(self.post("/v1/customers/sync").json(body)).await
    }

    /// The number of rows in `table`, counted in the hub's database itself.
    pub async fn count_rows(&self, table: &str) -> i64 {
        count_rows(&self.database_url, table).await
    }

    /// Makes every `event` (`INSERT`, `UPDATE`) on `table` fail with an error, by a trigger in
    /// the hub's database, until [`Self::allow_writes`]: a server-side failure for tests of what
    /// a failed request leaves behind. [`FailAt::Commit`] exists on PostgreSQL only.
    pub async fn refuse_writes(&self, table: &str, event: &str, at: FailAt) {
        let url = &self.database_url;
        let name = format!("refuse_{table}");
        match self.backend {
            Backend::Sqlite => {
                assert_eq!(at, FailAt::Statement, "SQLite has no deferred triggers");
                let sql = format!(
                    "CREATE TRIGGER {name} BEFORE {event} ON {table} \
                     BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                );
                execute(url, &sql).await;
            }
            Backend::Postgres => {
                let function = format!(
                    "CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS \
                     $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
                );
                execute(url, &function).await;
                let trigger = match at {
                    FailAt::Statement => format!(
                        "CREATE TRIGGER {name} BEFORE {event} ON {table} \
                         FOR EACH ROW EXECUTE FUNCTION {name}()"
                    ),
                    FailAt::Commit => format!(
                        "CREATE CONSTRAINT TRIGGER {name} AFTER {event} ON {table} \
                         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}()"
                    ),
                };
                execute(url, &trigger).await;
            }
        }
    }

    /// Lets the writes refused by [`Self::refuse_writes`] on `table` succeed again.
    pub async fn allow_writes(&self, table: &str) {
        let url = &self.database_url;
        let name = format!("refuse_{table}");
        match self.backend {
            Backend::Sqlite => execute(url, &format!("DROP TRIGGER {name}")).await,
            Backend::Postgres => {
                execute(url, &format!("DROP TRIGGER {name} ON {table}")).await;
                execute(url, &format!("DROP FUNCTION {name}")).await;
            }
        }
    }

    /// Creates a customer from `body`, asserting 201, and returns it.
    pub async fn create_customer(&self, body: Value) -> Value {
        let response = self
            .post("/v1/customers")
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = response.status();
        let json: Value = response.json().await.expect("json");
        assert_eq!(status, 201, "create failed: {json}");
        json
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn random_key() -> MasterKey {
    MasterKey::from_bytes(rand::random())
}

/// A response read whole: status, headers and the JSON body (`Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The `id` of each item of a list's `data`, in order.
    pub fn data_ids(&self) -> Vec<&str> {
        self.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|item| item["id"].as_str())
            .collect()
    }

    /// The whole seconds of a 429's `Retry-After`, asserting it is there and at least 1.
    #[track_caller]
    pub fn retry_after_secs(&self) -> u64 {
        let retry: u64 = self
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("whole seconds");
        assert!(retry >= 1, "Retry-After {retry}");
        retry
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request and reads the whole response.
pub async fn call(request: RequestBuilder) -> Reply {
    let response = request.send().await.expect("send the request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("read the body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

/// Asserts that `reply` is an RFC 9457 problem with this HTTP status and `code`: content type
/// `application/problem+json` and a body with a `type`, a `title`, a `detail`, the `code` and a
/// `status` equal to the HTTP status.
#[track_caller]
pub fn assert_problem(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "status of {reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json"),
        "content type of {reply:?}"
    );
    let body = &reply.body;
    for member in ["type", "title", "detail"] {
        assert!(
            body[member].as_str().is_some_and(|s| !s.is_empty()),
            "a problem needs a non-empty {member}: {body}"
        );
    }
    assert_eq!(body["status"], json!(status), "problem status: {body}");
    assert_eq!(body["code"], json!(code), "problem code: {body}");
}

/// The `(field, code)` pairs of a problem's `errors`, in order.
pub fn field_errors(reply: &Reply) -> Vec<(String, String)> {
    reply.body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    (
                        e["field"].as_str().unwrap_or_default().to_owned(),
                        e["code"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that `reply` is a 422 `validation_failed` problem naming exactly these
/// `(field, code)` errors, in this order, each with a message.
#[track_caller]
pub fn assert_invalid(reply: &Reply, expected: &[(&str, &str)]) {
    assert_problem(reply, 422, "validation_failed");
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(field, code)| ((*field).to_owned(), (*code).to_owned()))
        .collect();
    assert_eq!(
        field_errors(reply),
        expected,
        "field errors of {}",
        reply.body
    );
    let errors = reply.body["errors"].as_array().cloned().unwrap_or_default();
    assert!(
        errors
            .iter()
            .all(|e| e["message"].as_str().is_some_and(|m| !m.is_empty())),
        "every field error needs a message: {}",
        reply.body
    );
}

/// The text of `GET /metrics` of the hub at `base_url`.
pub async fn metrics_text(client: &reqwest::Client, base_url: &str) -> String {
    client
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text")
}

/// The value of the Prometheus sample whose name is `name` and whose labels include all of
/// `labels` (each written `key="value"`), in the text of `GET /metrics`.
pub fn metric_sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// The number of rows in `table` of the SQLite or PostgreSQL database at `database_url`, read
/// straight from the database (not through the hub).
pub async fn count_rows(database_url: &str, table: &str) -> i64 {
    let sql = format!("SELECT COUNT(*) FROM {table}");
    if database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(database_url)
            .await
            .expect("open the SQLite database");
        let (count,): (i64,) = sqlx::query_as(&sql)
            .fetch_one(&pool)
            .await
            .expect("count rows");
        pool.close().await;
        count
    } else {
        let pool = sqlx::PgPool::connect(database_url)
            .await
            .expect("open the PostgreSQL database");
        let (count,): (i64,) = sqlx::query_as(&sql)
            .fetch_one(&pool)
            .await
            .expect("count rows");
        pool.close().await;
        count
    }
}

/// The first column of every row `sql` selects, as bytes (`None` for NULL): a `BLOB`/`BYTEA`
/// column as stored, a text column as UTF-8. Read straight from the SQLite or PostgreSQL
/// database at `database_url`.
pub async fn column_bytes(database_url: &str, sql: &str) -> Vec<Option<Vec<u8>>> {
    use sqlx::Row as _;
    if database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(database_url)
            .await
            .expect("open the SQLite database");
        let rows = sqlx::query(sql).fetch_all(&pool).await.expect("query");
        let values = rows
            .iter()
            .map(|row| {
                row.try_get::<Option<Vec<u8>>, _>(0)
                    .or_else(|_| {
                        row.try_get::<Option<String>, _>(0)
                            .map(|s| s.map(String::into_bytes))
                    })
                    .expect("a bytes or text column")
            })
            .collect();
        pool.close().await;
        values
    } else {
        let pool = sqlx::PgPool::connect(database_url)
            .await
            .expect("open the PostgreSQL database");
        let rows = sqlx::query(sql).fetch_all(&pool).await.expect("query");
        let values = rows
            .iter()
            .map(|row| {
                row.try_get::<Option<Vec<u8>>, _>(0)
                    .or_else(|_| {
                        row.try_get::<Option<String>, _>(0)
                            .map(|s| s.map(String::into_bytes))
                    })
                    .expect("a bytes or text column")
            })
            .collect();
        pool.close().await;
        values
    }
}

/// When a write refused by [`TestHub::refuse_writes`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailAt {
    /// The statement that writes fails.
    Statement,
    /// The transaction's commit fails, after every statement succeeded (PostgreSQL only).
    Commit,
}

/// Waits (at most 30 s) until the hub on `database_url` holds the `Idempotency-Key` `key` in
/// flight: claimed, with no response recorded yet. Tests that interrupt a keyed request wait
/// for this instead of for a fixed time, which a busy machine may outlast.
pub async fn wait_for_claim_in_flight(database_url: &str, key: &str) {
    let sql = "SELECT COUNT(*) FROM idempotency_keys WHERE key = $1 AND response_status IS NULL";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let held: i64 = if database_url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(database_url).await.expect("open");
            let held = sqlx::query_scalar(sql).bind(key).fetch_one(&pool).await;
            pool.close().await;
            held.expect("read the claims")
        } else {
            let pool = sqlx::PgPool::connect(database_url).await.expect("open");
            let held = sqlx::query_scalar(sql).bind(key).fetch_one(&pool).await;
            pool.close().await;
            held.expect("read the claims")
        };
        if held > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the key {key} was not claimed within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs one SQL statement straight on the SQLite or PostgreSQL database at `database_url`.
pub async fn execute(database_url: &str, sql: &str) {
    if database_url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(database_url)
            .await
            .expect("open the SQLite database");
        sqlx::query(sql).execute(&pool).await.expect("execute");
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(database_url)
            .await
            .expect("open the PostgreSQL database");
        sqlx::query(sql).execute(&pool).await.expect("execute");
        pool.close().await;
    }
}

/// The server URL for PostgreSQL tests, if configured; panics under CI when it is not.
pub fn postgres_server_url() -> Option<String> {
    match std::env::var("CLIENTELE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI needs PostgreSQL: set CLIENTELE_TEST_POSTGRES_URL (see .ci/run)")
        }
        _ => {
            eprintln!(
                "skipping a PostgreSQL test: CLIENTELE_TEST_POSTGRES_URL is not set \
                 (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
            );
            None
        }
    }
}

/// Creates an empty database named `clientele_test_<ulid>` and returns its URL.
pub async fn fresh_postgres_database() -> Option<String> {
    use sqlx::Connection;
    let server = postgres_server_url()?;
    let name = format!(
        "clientele_test_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .expect("connect to CLIENTELE_TEST_POSTGRES_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create a test database");
    let mut url = reqwest::Url::parse(&server).expect("CLIENTELE_TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    Some(url.to_string())
}

/// Runs each listed `async fn(TestHub)` as two tests: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! hub_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::TestHub::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(hub) = $crate::TestHub::postgres().await {
                        super::$name(hub).await;
                    }
                }
            )*
        }
    };
}

/// Sends the hub's warnings and errors (a storage failure behind a 500, say) to the test's
/// captured output, so a failing test shows why the hub failed.
fn show_hub_warnings_in_test_output() {
    // Another test of the same binary may have installed it already.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .try_init();
}
