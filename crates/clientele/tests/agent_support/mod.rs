//! Shared by the agent's end-to-end suites: job files, SQLite sources, running the real
//! `clientele` binary against a test hub, and reading the hub's customers back.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clientele_testkit::{ADMIN_SECRET, Backend, TestHub, call};
use serde_json::Value;
use sqlx::Connection;

pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `job.toml` for this hub with the given sections after `[hub]`.
    pub fn job(&self, hub: &TestHub, sections: &str) -> PathBuf {
        self.job_at(&hub.base_url, sections)
    }

    /// [`Workdir::job`] for a hub at `url` (a proxy in front of one, say).
    pub fn job_at(&self, url: &str, sections: &str) -> PathBuf {
        let path = self.path("job.toml");
        let text =
            format!("[hub]\nurl = \"{url}\"\nkey_env = \"CLIENTELE_TEST_AGENT_KEY\"\n\n{sections}");
        std::fs::write(&path, text).expect("write job");
        path
    }
}

pub fn agent_command(command: &str, job: &Path, extra: &[&str]) -> Command {
    let mut process = Command::new(env!("CARGO_BIN_EXE_clientele"));
    process
        .arg(command)
        .arg("--config")
        .arg(job)
        .args(extra)
        .env("CLIENTELE_TEST_AGENT_KEY", ADMIN_SECRET);
    process
}

/// Runs the agent to completion (off the async runtime, which serves the hub).
/// What the agent wrote on stderr.
pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub async fn agent(command: &str, job: &Path, extra: &[&str]) -> Output {
    let mut process = agent_command(command, job, extra);
    tokio::task::spawn_blocking(move || process.output().expect("run clientele"))
        .await
        .expect("join")
}

/// Runs the agent and insists it succeeded; returns its stdout.
pub async fn agent_ok(command: &str, job: &Path, extra: &[&str]) -> String {
    let output = agent(command, job, extra).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "clientele {command} failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The counts of the summary line (`created=1 updated=2 ...`).
pub fn summary(stdout: &str) -> BTreeMap<String, u64> {
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.contains("created=") && line.contains("rows/s"))
        .unwrap_or_else(|| panic!("no summary line in {stdout}"));
    line.split_whitespace()
        .filter_map(|part| part.split_once('='))
        .filter_map(|(name, value)| value.parse().ok().map(|value| (name.to_owned(), value)))
        .collect()
}

/// The lines of a `--report` file.
pub fn report_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("report");
    text.lines()
        .map(|line| serde_json::from_str(line).expect("json line"))
        .collect()
}

/// Runs a push that writes its rejected rows to `report` in the work directory; returns its
/// stdout and the report's lines.
pub async fn push_reporting(work: &Workdir, job: &Path, report: &str) -> (String, Vec<Value>) {
    let report = work.path(report);
    let out = agent_ok("push", job, &["--report", report.to_str().expect("path")]).await;
    (out, report_lines(&report))
}

pub fn counts(stdout: &str, expected: &[(&str, u64)]) {
    let summary = summary(stdout);
    for (name, value) in expected {
        assert_eq!(summary.get(*name), Some(value), "{name} in {stdout}");
    }
}

/// Runs `clientele sync` twice, and neither creates, updates nor fails anything: the mirror
/// and the hub agree, and the agent's own writes do not come back as changes.
pub async fn assert_syncs_move_nothing(job: &Path) {
    for _ in 0..2 {
        let out = agent_ok("sync", job, &[]).await;
        counts(&out, &[("created", 0), ("updated", 0), ("failed", 0)]);
    }
}

/// Runs a push that must find nothing to send: `unchanged` rows, nothing created, updated,
/// archived, deleted or failed (the hub and the state agree with the source).
pub async fn assert_push_sends_nothing(job: &Path, unchanged: u64) {
    let out = agent_ok("push", job, &[]).await;
    counts(
        &out,
        &[
            ("created", 0),
            ("updated", 0),
            ("archived", 0),
            ("deleted", 0),
            ("failed", 0),
            ("unchanged", unchanged),
        ],
    );
}

/// Every customer of the hub, archived or not, by external id.
pub async fn hub_customers(hub: &TestHub) -> BTreeMap<String, Value> {
    hub_customers_by(hub, "external_id").await
}

/// Every customer of the hub, archived or not, by `field`: a key every customer holds, once
/// (two without it would both be `""`, and the helper says so).
pub async fn hub_customers_by(hub: &TestHub, field: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/v1/customers?limit=1000&cursor={cursor}"),
            None => "/v1/customers?limit=1000".to_owned(),
        };
        let reply = call(hub.get(&path)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        for customer in reply.body["data"].as_array().expect("data") {
            let key = customer[field].as_str().unwrap_or_default().to_owned();
            assert!(
                out.insert(key.clone(), customer.clone()).is_none(),
                "duplicate {field} {key}"
            );
        }
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return out,
        }
    }
}

/// A SQLite source database with a `people` table.
pub async fn sqlite_source(path: &Path, rows: &[(i64, &str, &str)]) {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("source db");
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS people (person_id INTEGER PRIMARY KEY, fname TEXT, email TEXT, vip INTEGER DEFAULT 0)",
    )
    .execute(&mut conn)
    .await
    .expect("create table");
    upsert_people(&mut conn, rows).await;
}

pub async fn upsert_people(conn: &mut sqlx::SqliteConnection, rows: &[(i64, &str, &str)]) {
    let mut tx = conn.begin().await.expect("tx");
    for (id, fname, email) in rows {
        sqlx::query("INSERT INTO people (person_id, fname, email) VALUES (?, ?, ?) ON CONFLICT (person_id) DO UPDATE SET fname = excluded.fname, email = excluded.email")
            .bind(id)
            .bind(fname)
            .bind(email)
            .execute(&mut *tx)
            .await
            .expect("insert");
    }
    tx.commit().await.expect("commit");
}

/// Runs one statement on one of a test's SQLite files: a source, or the agent's state.
pub async fn sqlite_sql(path: &Path, sql: &str) {
    let url = format!("sqlite://{}", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url)
        .await
        .expect("sqlite file");
    sqlx::query(sql)
        .execute(&mut conn)
        .await
        .expect("sqlite statement");
}

/// `n` people: person_id i, fname "Name i", email "pi@example.com".
pub fn people(range: std::ops::Range<i64>) -> Vec<(i64, String, String)> {
    range
        .map(|i| (i, format!("Name {i}"), format!("p{i}@example.com")))
        .collect()
}

pub fn borrowed(rows: &[(i64, String, String)]) -> Vec<(i64, &str, &str)> {
    rows.iter()
        .map(|(id, a, b)| (*id, a.as_str(), b.as_str()))
        .collect()
}

pub const PEOPLE_JOB: &str = "[source]\nurl = \"sqlite://source.db\"\ntable = \"people\"\nkey = \"person_id\"\n\n[sync]\nkey = \"external_id\"\non_missing = \"archive\"\nstate = \"state.db\"\nbatch_size = 100\nconcurrency = 4\n\n[fields]\nfirst_name = \"fname\"\n";

/// A mirror database of the hub's kind: a SQLite file, or a fresh PostgreSQL database.
pub async fn mirror_url(hub: &TestHub, work: &Workdir) -> String {
    match hub.backend {
        Backend::Sqlite => format!("sqlite://{}", work.path("mirror.db").display()),
        Backend::Postgres => clientele_testkit::fresh_postgres_database()
            .await
            .expect("postgres"),
    }
}

pub fn mirror_job(url: &str, conflict: &str) -> String {
    format!("[mirror]\nurl = \"{url}\"\ntable = \"customers\"\nconflict = \"{conflict}\"\n")
}

async fn mirror_connection(url: &str) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(url).await.expect("mirror")
}

pub async fn mirror_sql(url: &str, sql: &str) {
    sqlx::query(sql)
        .execute(&mut mirror_connection(url).await)
        .await
        .expect("mirror sql");
}

/// One number read from the mirror database.
pub async fn mirror_scalar(url: &str, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&mut mirror_connection(url).await)
        .await
        .expect("mirror scalar")
}
