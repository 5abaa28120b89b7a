//! What push remembers between runs, in a SQLite file: per source key, the item hash of what the
//! hub last acknowledged, the row hash of the source row it came from, the hub key's value, the
//! hub id, and whether the key has left the source (archived). A batch's outcomes are committed
//! in one transaction after the hub acknowledged it, so a run killed at any moment leaves the
//! state describing acknowledged writes only.
//!
//! What the state says is acknowledged is not all the hub may have: a batch the hub applied but
//! whose answer never reached a killed run. So before a batch is sent, its keys are written
//! down as *in flight* (one row per batch in `in_flight`, a write-ahead intent), and the
//! transaction that records the batch's outcomes deletes that row. A run that finds intents
//! left by a killed run first makes their keys *dirty* ([`StateStore::recover`]): their item
//! hash becomes empty, which matches no row (so a row that went back to the content last
//! acknowledged is still sent), and a key the state did not know gets an entry with an empty
//! hash (so that if its row left the source, `on_missing` still looks for it on the hub).
//! Writes go through sqlx; the per-row reads of a run
//! go through [`StateReader`], a rusqlite connection on the comparing thread, which also keeps
//! the keys read in the run (to tell a key read twice, and the keys that left the source).
//!
//! The state also records the hub it was written for: what it says was acknowledged was
//! acknowledged by that hub only, so a job aimed at another hub is refused rather than sending
//! that hub nothing.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::job::KeyForm;
use crate::mapping::RowHash;

mod reader;
pub use reader::{StateReader, Vanished};

/// What the state holds for one source key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub hub_value: String,
    pub hash: String,
    pub gone: bool,
    /// The other hub value a rename in flight at a kill carried ([`StateStore::recover`]).
    pub sent_value: Option<String>,
    /// The customer's id, once the hub acknowledged it: a rename keeps it.
    pub hub_id: Option<String>,
}

/// What the state says about a source row, given its key and row hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Live, and acknowledged from a row with this very row hash: the row is unchanged.
    Same,
    /// Known, but the row must be mapped and its item compared.
    Known(Entry),
    Unknown,
    /// The key was already read in this run, in row `first`: this row is not used.
    Repeated {
        first: u64,
    },
}

/// The hub acknowledged an item; what the state records for it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Stored {
        key: String,
        hub_value: String,
        hash: String,
        row_hash: Option<RowHash>,
        hub_id: Option<String>,
    },
    /// The row changed but its item did not (or an older state had no row hash): only the row
    /// hash is new. Guarded by the item hash, so it never vouches for an item the hub lacks.
    ///
    /// A row hash is stored followed by the item hash it was recorded with, and it counts only
    /// while that still is the item hash: an older agent that updates `hash` alone (a
    /// downgrade, then an upgrade) can never leave a row hash that matches a stale item.
    Refreshed {
        key: String,
        hash: String,
        row_hash: RowHash,
    },
    /// Archived under `hub_value` (after a kill, possibly the value of a rename in flight).
    Archived {
        key: String,
        hub_value: String,
    },
    Removed {
        key: String,
    },
}

#[derive(Clone, Debug)]
pub struct StateStore {
    pool: SqlitePool,
    path: PathBuf,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS pushed (
        key TEXT PRIMARY KEY,
        hub_value TEXT NOT NULL,
        hash TEXT NOT NULL,
        hub_id TEXT,
        gone INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID",
    // What the state is bound to (`hub_url`).
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    // Older agents kept the keys of a run here; the run's reader keeps them now (`temp.seen`).
    "DROP TABLE IF EXISTS seen",
    // Batches sent and not yet recorded: the batch's id and its `[[key, hub value], ...]`.
    "CREATE TABLE IF NOT EXISTS in_flight (batch TEXT PRIMARY KEY, keys TEXT NOT NULL) WITHOUT ROWID",
];

/// Made after [`LATER_COLUMNS`] (an index names their columns' table as it then is): the keys
/// by hub value in lower case ([`folded`]), for [`StateReader::holder_read_in_run`]. The first
/// such index folded as SQLite's `lower()` does, ASCII only, and is dropped.
const LATER_INDEXES: &[&str] = &[
    "DROP INDEX IF EXISTS pushed_by_hub_value",
    "CREATE INDEX IF NOT EXISTS pushed_by_hub_folded ON pushed (hub_folded)",
];

/// Columns later than the first state files, which gain them empty: the row hash (empty matches
/// no row), the hub value a batch in flight at a kill carried where it was not the one recorded
/// (a rename the hub may have applied; see [`StateStore::recover`]), and the hub value in lower
/// case ([`folded`]; filled in when the state is opened).
const LATER_COLUMNS: &[(&str, &str)] = &[
    ("row_hash", "ALTER TABLE pushed ADD COLUMN row_hash TEXT"),
    (
        "sent_value",
        "ALTER TABLE pushed ADD COLUMN sent_value TEXT",
    ),
    (
        "hub_folded",
        "ALTER TABLE pushed ADD COLUMN hub_folded TEXT",
    ),
];

/// A hub value in lower case, as Rust folds it (all of Unicode): whatever the hub key, two values
/// the hub takes for one customer fold alike (it compares emails in lower case, and other keys
/// exactly), so the index on it finds every candidate, and the caller compares them exactly.
/// SQLite's `lower()` folds ASCII only.
pub fn folded(hub_value: &str) -> String {
    hub_value.to_lowercase()
}

impl StateStore {
    pub async fn open(path: &Path) -> anyhow::Result<StateStore> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL survives a killed process (only a power cut may lose the last commit).
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the state file {}", path.display()))?;
        for statement in SCHEMA {
            sqlx::query(statement).execute(&pool).await?;
        }
        for (column, add) in LATER_COLUMNS {
            let has: bool = sqlx::query_scalar(
                "SELECT count(*) > 0 FROM pragma_table_info('pushed') WHERE name = ?1",
            )
            .bind(column)
            .fetch_one(&pool)
            .await?;
            if !has {
                sqlx::query(add).execute(&pool).await?;
            }
        }
        for statement in LATER_INDEXES {
            sqlx::query(statement).execute(&pool).await?;
        }
        let state = StateStore {
            pool,
            path: path.to_owned(),
        };
        state.fold_missing().await?;
        Ok(state)
    }

    /// Fills in the folded hub value of the keys without one: every key of a state written
    /// before the column, and the keys of batches such a state left in flight.
    async fn fold_missing(&self) -> anyhow::Result<()> {
        loop {
            let unfolded: Vec<(String, String)> = sqlx::query_as(
                "SELECT key, hub_value FROM pushed WHERE hub_folded IS NULL LIMIT 10000",
            )
            .fetch_all(&self.pool)
            .await?;
            if unfolded.is_empty() {
                return Ok(());
            }
            let rows: Vec<Value> = unfolded
                .iter()
                .map(|(key, hub_value)| json!([key, folded(hub_value)]))
                .collect();
            sqlx::query(
                "UPDATE pushed SET hub_folded = f.value ->> 1 FROM json_each(?1) AS f
                 WHERE pushed.key = f.value ->> 0",
            )
            .bind(Value::Array(rows).to_string())
            .execute(&self.pool)
            .await?;
        }
    }

    /// The state for a dry run, which must write nothing: a private copy of the state file at
    /// `path` (made by `VACUUM INTO` on a read-only connection, so a run writing meanwhile is
    /// read as of one moment), or an empty state when there is none, in a temporary directory
    /// that goes with the returned guard. The copy may be brought up to date (columns, indexes)
    /// without touching the file.
    pub async fn open_copy(path: &Path) -> anyhow::Result<(StateStore, tempfile::TempDir)> {
        let dir = tempfile::tempdir().context("cannot make a directory for the dry run's state")?;
        let copy = dir.path().join("state.db");
        if path.exists() {
            let (source, target) = (path.to_owned(), copy.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let conn = rusqlite::Connection::open_with_flags(
                    &source,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                conn.busy_timeout(std::time::Duration::from_secs(30))?;
                conn.execute("VACUUM INTO ?1", [target.to_string_lossy()])?;
                Ok(())
            })
            .await
            .context("the state copy failed")?
            .with_context(|| format!("cannot read the state file {}", path.display()))?;
        }
        Ok((StateStore::open(&copy).await?, dir))
    }

    /// Binds the state to the hub at `url`, or checks that it is bound to it. A state written
    /// before states were bound takes the job's hub (it cannot tell another). `record` false
    /// (a dry run) checks without writing.
    pub async fn bind_hub(&self, url: &str, record: bool) -> anyhow::Result<()> {
        let url = url.trim_end_matches('/');
        let bound: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'hub_url'")
                .fetch_optional(&self.pool)
                .await?;
        match bound {
            Some(bound) if bound == url => Ok(()),
            Some(bound) => Err(anyhow::anyhow!(
                "the state file {path} belongs to the hub at {bound}, not to {url} (this job's \
                 [hub] url): it records what that hub has, so this run would send {url} only \
                 what changed since. To push everything to {url}, give the job a new state file \
                 ([sync] state) or delete {path}; if {url} is the same hub under another \
                 address, delete the state file too (the next run then re-sends every row, \
                 which the hub answers as unchanged)",
                path = self.path.display()
            )),
            None if record => {
                sqlx::query(
                    "INSERT INTO meta (name, value) VALUES ('hub_url', ?1)
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(url)
                .execute(&self.pool)
                .await?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Settles the form of this state's keys (see [`KeyForm`]) and returns the one to use.
    ///
    /// Once a state's keys are folded as emails they stay so, whatever the job says since:
    /// keys cannot be unfolded, and keys in another form would all look gone from the source,
    /// and `on_missing` would delete or archive their customers. A state whose keys were written
    /// as the source has them and whose job now wants emails is rewritten, once (also a state
    /// written before keys had forms): two keys that become one were one customer on the hub, and
    /// the one kept is made dirty, so its row is sent again. `record` false (a dry run) rewrites
    /// nothing: keys not folded yet are then compared as the state holds them.
    pub async fn settle_key_form(&self, wanted: KeyForm, record: bool) -> anyhow::Result<KeyForm> {
        const FOLDED: &str = "email-lowercase";
        let mut tx = self.pool.begin().await?;
        let form: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'key_form'")
                .fetch_optional(&mut *tx)
                .await?;
        if form.as_deref() == Some(FOLDED) {
            return Ok(KeyForm::Email);
        }
        if wanted == KeyForm::AsWritten || !record {
            return Ok(KeyForm::AsWritten);
        }
        // SQLite's lower() folds ASCII only; the hub folds Unicode: the keys are read out, a
        // page at a time. A key moved ahead of the page is met again, already in its form.
        let mut after = String::new();
        loop {
            let keys: Vec<String> = sqlx::query_scalar(
                "SELECT key FROM pushed WHERE key > ?1 ORDER BY key LIMIT 10000",
            )
            .bind(&after)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = keys.last() else {
                break;
            };
            after.clone_from(last);
            for key in keys {
                let identity = KeyForm::Email.identity(key.clone());
                if identity == key {
                    continue;
                }
                let moved = sqlx::query("UPDATE OR IGNORE pushed SET key = ?2 WHERE key = ?1")
                    .bind(&key)
                    .bind(&identity)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if moved == 0 {
                    sqlx::query(
                        "UPDATE pushed SET hash = '', row_hash = NULL,
                         gone = min(gone, (SELECT gone FROM pushed WHERE key = ?1))
                     WHERE key = ?2",
                    )
                    .bind(&key)
                    .bind(&identity)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM pushed WHERE key = ?1")
                        .bind(&key)
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ('key_form', ?1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )
        .bind(FOLDED)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(KeyForm::Email)
    }

    /// A reader for the per-row probes of a run, on a connection of its own.
    pub fn reader(&self) -> anyhow::Result<StateReader> {
        StateReader::open(&self.path)
    }

    /// Keys that are in the hub and in the source as far as the state knows.
    pub async fn live_count(&self) -> anyhow::Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM pushed WHERE gone = 0")
            .fetch_one(&self.pool)
            .await?;
        Ok(count as u64)
    }

    /// Makes the keys of batches that a killed run sent and never recorded dirty, in one
    /// transaction, and forgets those batches. Returns how many keys were in flight.
    ///
    /// The hub may or may not have applied such a batch. A dirty key's empty hash matches no
    /// item, so its row is sent again (an upsert of absolute content: applied twice it comes
    /// back unchanged) and, since an archive may have been applied, with `archived: false`; a
    /// dirty key whose row left the source is looked up on the hub before `on_missing` applies.
    /// It is live again (`gone = 0`) for the same reason: an un-archive may have been applied.
    ///
    /// A key sent with another hub value than the one recorded was a rename (`match`): the hub
    /// may have the customer under either. The recorded value stays the one a resent item
    /// matches (the hub finds a rename it applied under the new value), and the sent one is kept
    /// beside it (`sent_value`), so that a row that left the source meanwhile is looked for
    /// under both.
    pub async fn recover(&self) -> anyhow::Result<u64> {
        let mut tx = self.pool.begin().await?;
        let batches: i64 = sqlx::query_scalar("SELECT count(*) FROM in_flight")
            .fetch_one(&mut *tx)
            .await?;
        if batches == 0 {
            return Ok(0);
        }
        let keys = sqlx::query(
            "INSERT INTO pushed (key, hub_value, hash, row_hash, hub_id, gone, hub_folded)
             SELECT k.value ->> 0, k.value ->> 1, '', NULL, NULL, 0, k.value ->> 2
             FROM in_flight, json_each(in_flight.keys) AS k WHERE true
             ON CONFLICT (key) DO UPDATE SET hash = '', row_hash = NULL, gone = 0,
                 sent_value = CASE WHEN excluded.hub_value IS NOT pushed.hub_value
                     THEN excluded.hub_value ELSE pushed.sent_value END",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM in_flight")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // Batches an earlier agent left in flight carry no folded values.
        self.fold_missing().await?;
        Ok(keys)
    }

    /// Writes down that the batch `batch` is about to be sent with these `(key, hub value)`s,
    /// before it is: see the module doc. [`StateStore::commit_batch`] takes it back.
    pub async fn begin_batch<'a>(
        &self,
        batch: &str,
        keys: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> anyhow::Result<()> {
        let keys: Vec<Value> = keys
            .map(|(key, hub_value)| json!([key, hub_value, folded(hub_value)]))
            .collect();
        sqlx::query("INSERT OR REPLACE INTO in_flight (batch, keys) VALUES (?1, ?2)")
            .bind(batch)
            .bind(Value::Array(keys).to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the outcomes of an acknowledged batch and drops its intent, in one transaction.
    pub async fn commit_batch(&self, batch: &str, outcomes: &[Outcome]) -> anyhow::Result<()> {
        self.commit_with(Some(batch), outcomes).await
    }

    /// Records outcomes that no batch sent (new row hashes of unchanged items, or keys found
    /// gone from the hub), all of them or nothing.
    pub async fn commit(&self, outcomes: &[Outcome]) -> anyhow::Result<()> {
        self.commit_with(None, outcomes).await
    }

    async fn commit_with(&self, batch: Option<&str>, outcomes: &[Outcome]) -> anyhow::Result<()> {
        let mut stored = Vec::new();
        let mut archived = Vec::new();
        let mut removed = Vec::new();
        let mut refreshed = Vec::new();
        for outcome in outcomes {
            match outcome {
                Outcome::Stored {
                    key,
                    hub_value,
                    hash,
                    row_hash,
                    hub_id,
                } => stored.push(json!([
                    key,
                    hub_value,
                    hash,
                    row_hash.map(hex::encode),
                    hub_id,
                    folded(hub_value)
                ])),
                Outcome::Refreshed {
                    key,
                    hash,
                    row_hash,
                } => refreshed.push(json!([key, hash, hex::encode(row_hash)])),
                Outcome::Archived { key, hub_value } => {
                    archived.push(json!([key, hub_value, folded(hub_value)]));
                }
                Outcome::Removed { key } => removed.push(Value::String(key.clone())),
            }
        }
        let mut tx = self.pool.begin().await?;
        if !stored.is_empty() {
            sqlx::query(
                "INSERT INTO pushed (key, hub_value, hash, row_hash, hub_id, gone, hub_folded)
                 SELECT value ->> 0, value ->> 1, value ->> 2, (value ->> 3) || (value ->> 2),
                     value ->> 4, 0, value ->> 5
                 FROM json_each(?1) WHERE true
                 ON CONFLICT (key) DO UPDATE SET hub_value = excluded.hub_value,
                     hub_folded = excluded.hub_folded,
                     hash = excluded.hash, row_hash = excluded.row_hash,
                     hub_id = coalesce(excluded.hub_id, pushed.hub_id), gone = 0,
                     sent_value = NULL",
            )
            .bind(Value::Array(stored).to_string())
            .execute(&mut *tx)
            .await?;
        }
        if !refreshed.is_empty() {
            sqlx::query(
                "UPDATE pushed SET row_hash = (r.value ->> 2) || pushed.hash FROM json_each(?1) AS r
                 WHERE pushed.key = r.value ->> 0 AND pushed.hash = r.value ->> 1",
            )
            .bind(Value::Array(refreshed).to_string())
            .execute(&mut *tx)
            .await?;
        }
        if !archived.is_empty() {
            sqlx::query(
                "UPDATE pushed SET gone = 1, hub_value = a.value ->> 1,
                     hub_folded = a.value ->> 2, sent_value = NULL
                 FROM json_each(?1) AS a WHERE pushed.key = a.value ->> 0",
            )
            .bind(Value::Array(archived).to_string())
            .execute(&mut *tx)
            .await?;
        }
        if !removed.is_empty() {
            sqlx::query("DELETE FROM pushed WHERE key IN (SELECT value FROM json_each(?1))")
                .bind(Value::Array(removed).to_string())
                .execute(&mut *tx)
                .await?;
        }
        if let Some(batch) = batch {
            sqlx::query("DELETE FROM in_flight WHERE batch = ?1")
                .bind(batch)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW: RowHash = [7; 16];

    /// A new state file in a directory of its own, which lives as long as the returned guard.
    async fn new_state() -> (tempfile::TempDir, StateStore) {
        let dir = tempfile::tempdir().expect("dir");
        let state = StateStore::open(&dir.path().join("s.db"))
            .await
            .expect("open");
        (dir, state)
    }

    /// What the state says of `key`, its hub id aside (see [`hub_id_of`]).
    fn probe(state: &StateStore, key: &str) -> Probe {
        match probe_with_id(state, key) {
            Probe::Known(entry) => Probe::Known(Entry {
                hub_id: None,
                ..entry
            }),
            other => other,
        }
    }

    fn probe_with_id(state: &StateStore, key: &str) -> Probe {
        let mut reader = state.reader().expect("reader");
        let mut probes = reader
            .probe_all([(Some(key), &ROW, 1)].into_iter())
            .expect("probe");
        probes.pop().expect("one probe")
    }

    /// The hub id the state holds for `key`.
    fn hub_id_of(state: &StateStore, key: &str) -> Option<String> {
        match probe_with_id(state, key) {
            Probe::Known(entry) => entry.hub_id,
            other => panic!("{key} is {other:?}"),
        }
    }

    /// The vanished key `key`, with hub value `h{key}` and no rename in flight.
    fn gone(key: &str, unsure: bool) -> Vanished {
        Vanished {
            key: key.into(),
            hub_value: format!("h{key}"),
            unsure,
            sent_value: None,
            hub_id: None,
        }
    }

    fn known(hub_value: &str, hash: &str, gone: bool) -> Probe {
        Probe::Known(Entry {
            hub_value: hub_value.into(),
            hash: hash.into(),
            gone,
            sent_value: None,
            hub_id: None,
        })
    }

    /// Repeats and vanished keys come out the same whether the run's keys are remembered in
    /// memory, in the scratch table, or some in each.
    #[tokio::test]
    async fn keys_read_are_remembered_in_memory_and_past_it_in_a_table() {
        let (_dir, state) = new_state().await;
        let stored: Vec<Outcome> = ["a", "b", "c", "d", "e"]
            .into_iter()
            .map(|key| Outcome::Stored {
                key: key.into(),
                hub_value: format!("h{key}"),
                hash: "00".into(),
                row_hash: Some(ROW),
                hub_id: Some(format!("cus_{key}")),
            })
            .collect();
        state.commit(&stored).await.expect("commit");
        for keys_in_memory in [0, 1, 2, 100] {
            let mut run = state
                .reader()
                .expect("reader")
                .with_keys_in_memory(keys_in_memory);
            let rows = [("d", 1), ("a", 2), ("d", 3), ("a", 4), ("x", 5), ("x", 6)];
            let probes = run
                .probe_all(rows.iter().map(|(key, row)| (Some(*key), &ROW, *row)))
                .expect("probe");
            assert_eq!(
                probes,
                vec![
                    Probe::Same,
                    Probe::Same,
                    Probe::Repeated { first: 1 },
                    Probe::Repeated { first: 2 },
                    Probe::Unknown,
                    Probe::Repeated { first: 5 },
                ],
                "{keys_in_memory} keys in memory"
            );
            let mut vanished = Vec::new();
            let mut after = String::new();
            loop {
                let page = run.vanished_after(&after, 1).expect("vanished");
                let Some(last) = page.last() else {
                    break;
                };
                after.clone_from(&last.key);
                vanished.extend(page.into_iter().map(|vanished| vanished.key));
            }
            assert_eq!(vanished, ["b", "c", "e"], "{keys_in_memory} keys in memory");
        }
    }

    #[tokio::test]
    async fn outcomes_are_recorded_and_vanished_keys_found() {
        let (_dir, state) = new_state().await;
        let stored = |key: &str| Outcome::Stored {
            key: key.into(),
            hub_value: format!("h{key}"),
            hash: "00".into(),
            row_hash: (key == "a").then_some(ROW),
            hub_id: Some(format!("cus_{key}")),
        };
        state
            .commit(&[stored("a"), stored("b"), stored("c")])
            .await
            .expect("commit");
        assert_eq!(state.live_count().await.expect("count"), 3);
        assert_eq!(probe(&state, "a"), Probe::Same);
        assert_eq!(probe(&state, "b"), known("hb", "00", false));
        assert_eq!(hub_id_of(&state, "b").as_deref(), Some("cus_b"));
        assert_eq!(probe(&state, "z"), Probe::Unknown);

        // A new row hash for an unchanged item; a guard on a stale item hash records nothing.
        state
            .commit(&[
                Outcome::Refreshed {
                    key: "b".into(),
                    hash: "00".into(),
                    row_hash: ROW,
                },
                Outcome::Refreshed {
                    key: "c".into(),
                    hash: "ff".into(),
                    row_hash: ROW,
                },
            ])
            .await
            .expect("refresh");
        assert_eq!(probe(&state, "b"), Probe::Same);
        assert_eq!(probe(&state, "c"), known("hc", "00", false));

        // A run reads "a" twice (the second time is no use) and nothing else.
        let mut run = state.reader().expect("reader");
        let probes = run
            .probe_all([(Some("a"), &ROW, 1), (None, &ROW, 2), (Some("a"), &ROW, 3)].into_iter())
            .expect("probe");
        assert_eq!(
            probes,
            vec![Probe::Same, Probe::Unknown, Probe::Repeated { first: 1 }]
        );
        let vanished = run.vanished_after("", 10).expect("vanished");
        let acknowledged = |key: &str| Vanished {
            hub_id: Some(format!("cus_{key}")),
            ..gone(key, false)
        };
        assert_eq!(vanished, vec![acknowledged("b"), acknowledged("c")]);
        // A batch with a new key "d" was sent, and the run that sent it was killed.
        state
            .begin_batch("b0", [("d", "hd")].into_iter())
            .await
            .expect("intent");
        assert_eq!(state.recover().await.expect("recover"), 1);
        let vanished = run.vanished_after("c", 10).expect("vanished");
        assert_eq!(vanished, vec![gone("d", true)]);
        state
            .commit(&[Outcome::Removed { key: "d".into() }])
            .await
            .expect("commit");

        state
            .commit(&[
                Outcome::Archived {
                    key: "a".into(),
                    hub_value: "ha".into(),
                },
                Outcome::Removed { key: "c".into() },
            ])
            .await
            .expect("commit");
        assert_eq!(state.live_count().await.expect("count"), 1);
        // An archived key is never the same, whatever its row hash: it must be un-archived.
        assert_eq!(probe(&state, "a"), known("ha", "00", true));
        assert_eq!(probe(&state, "c"), Probe::Unknown);
    }

    /// The keys of a batch sent and never recorded are dirty for the next run: whatever the hub
    /// applied of it, their rows are sent again, or looked up on the hub if they left.
    #[tokio::test]
    async fn keys_in_flight_when_a_run_died_are_dirty_for_the_next() {
        let (_dir, state) = new_state().await;
        let stored = |key: &str| Outcome::Stored {
            key: key.into(),
            hub_value: format!("h{key}"),
            hash: "00".into(),
            row_hash: Some(ROW),
            hub_id: None,
        };
        state
            .commit(&[stored("a"), stored("b"), stored("c"), stored("r")])
            .await
            .expect("commit");
        state
            .commit(&[Outcome::Archived {
                key: "c".into(),
                hub_value: "hc".into(),
            }])
            .await
            .expect("archive");
        // An acknowledged batch leaves no intent behind.
        state
            .begin_batch("b0", [("b", "hb")].into_iter())
            .await
            .expect("intent");
        state
            .commit_batch("b0", &[stored("b")])
            .await
            .expect("recorded");
        // Two batches die in flight: an update of "a", an un-archive of "c", a create of "n".
        state
            .begin_batch("b1", [("a", "ha"), ("n", "hn")].into_iter())
            .await
            .expect("intent");
        state
            .begin_batch("b2", [("c", "hc")].into_iter())
            .await
            .expect("intent");
        // And a rename of "r"'s hub value, which the hub may or may not have applied.
        state
            .begin_batch("b3", [("r", "renamed")].into_iter())
            .await
            .expect("intent");
        assert_eq!(state.recover().await.expect("recover"), 4);
        // A resent item matches the recorded value (the hub finds an applied rename anyway).
        // The value it carried is kept beside it, to be looked up if the row changes again.
        let Probe::Known(entry) = probe(&state, "r") else {
            panic!("r is known");
        };
        assert_eq!(
            (entry.hub_value.as_str(), entry.sent_value.as_deref()),
            ("hr", Some("renamed"))
        );
        assert_eq!(probe(&state, "a"), known("ha", "", false));
        assert_eq!(probe(&state, "b"), Probe::Same);
        assert_eq!(probe(&state, "c"), known("hc", "", false));
        assert_eq!(probe(&state, "n"), known("hn", "", false));
        assert_eq!(
            state.recover().await.expect("again"),
            0,
            "intents are dropped"
        );
        // Keys that left the source are listed as unsure (empty hash): the hub is asked.
        let mut run = state.reader().expect("reader");
        run.probe_all([(Some("b"), &ROW, 1)].into_iter())
            .expect("probe");
        let renamed = Vanished {
            sent_value: Some("renamed".into()),
            ..gone("r", true)
        };
        assert_eq!(
            run.vanished_after("", 10).expect("vanished"),
            vec![gone("a", true), gone("c", true), gone("n", true), renamed]
        );
        // Archived under the value the hub had: that is the one recorded, the other forgotten.
        state
            .commit(&[Outcome::Archived {
                key: "r".into(),
                hub_value: "renamed".into(),
            }])
            .await
            .expect("archive");
        assert_eq!(probe(&state, "r"), known("renamed", "", true));
        // A rename acknowledged leaves nothing to look for under another value.
        state
            .begin_batch("b4", [("a", "ha2")].into_iter())
            .await
            .expect("intent");
        state.recover().await.expect("recover");
        state
            .commit(&[Outcome::Stored {
                key: "a".into(),
                hub_value: "ha2".into(),
                hash: "01".into(),
                row_hash: None,
                hub_id: None,
            }])
            .await
            .expect("stored");
        let mut run = state.reader().expect("reader");
        let vanished = run.vanished_after("", 10).expect("vanished");
        assert_eq!(vanished[0].key, "a");
        assert_eq!(vanished[0].sent_value, None);
    }

    /// A state written when email keys kept their case: rewritten once, so no key looks gone;
    /// two spellings of one email (one customer on the hub) become one dirty key.
    #[tokio::test]
    async fn email_keys_of_an_older_state_take_the_hubs_form_once() {
        let (_dir, state) = new_state().await;
        let stored = |key: &str| Outcome::Stored {
            key: key.into(),
            hub_value: key.into(),
            hash: "00".into(),
            row_hash: Some(ROW),
            hub_id: None,
        };
        state
            .commit(&[
                stored("Case.One@Example.com"),
                stored("other@example.com"),
                stored("Twin@Example.com"),
                stored("twin@example.com"),
                stored("ÄNNE@example.com"),
            ])
            .await
            .expect("commit");
        let form = state
            .settle_key_form(KeyForm::AsWritten, true)
            .await
            .expect("keys as written");
        assert_eq!(form, KeyForm::AsWritten);
        assert_eq!(probe(&state, "Case.One@Example.com"), Probe::Same);
        // A dry run rewrites nothing: the keys are compared as the state holds them.
        let form = state
            .settle_key_form(KeyForm::Email, false)
            .await
            .expect("dry run");
        assert_eq!(form, KeyForm::AsWritten);
        assert_eq!(probe(&state, "Case.One@Example.com"), Probe::Same);
        let form = state
            .settle_key_form(KeyForm::Email, true)
            .await
            .expect("rewrite");
        assert_eq!(form, KeyForm::Email);
        assert_eq!(probe(&state, "Case.One@Example.com"), Probe::Unknown);
        assert_eq!(probe(&state, "case.one@example.com"), Probe::Same);
        assert_eq!(probe(&state, "other@example.com"), Probe::Same);
        assert_eq!(probe(&state, "änne@example.com"), Probe::Same);
        assert_eq!(
            probe(&state, "twin@example.com"),
            known("twin@example.com", "", false)
        );
        assert_eq!(state.live_count().await.expect("count"), 4);
        // Once: a key stored since in another form (it cannot be, but) is left alone.
        state
            .commit(&[stored("Later@Example.com")])
            .await
            .expect("commit");
        state
            .settle_key_form(KeyForm::Email, true)
            .await
            .expect("again");
        assert_eq!(probe(&state, "Later@Example.com"), Probe::Same);
        // Folded keys stay folded, whatever the job wants since.
        let form = state
            .settle_key_form(KeyForm::AsWritten, true)
            .await
            .expect("settled");
        assert_eq!(form, KeyForm::Email);
    }

    #[tokio::test]
    async fn a_state_is_bound_to_one_hub() {
        let (_dir, state) = new_state().await;
        let hub = "http://127.0.0.1:8080";
        state
            .bind_hub("http://elsewhere", false)
            .await
            .expect("a dry run records nothing");
        state.bind_hub(hub, true).await.expect("binds");
        state
            .bind_hub(&format!("{hub}/"), true)
            .await
            .expect("the same hub");
        let error = state
            .bind_hub("http://127.0.0.1:9090", false)
            .await
            .expect_err("another hub");
        let message = error.to_string();
        assert!(
            message.contains(hub) && message.contains("s.db"),
            "{message}"
        );
    }

    /// A state file as the first agents wrote it, with `rows` run in it, in a directory of its
    /// own that lives as long as the returned guard.
    fn first_state_file(rows: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("old.db");
        let conn = rusqlite::Connection::open(&path).expect("create");
        conn.execute_batch(&format!(
            "CREATE TABLE pushed (key TEXT PRIMARY KEY, hub_value TEXT NOT NULL,
                 hash TEXT NOT NULL, hub_id TEXT, gone INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
             {rows}"
        ))
        .expect("old schema");
        (dir, path)
    }

    async fn folded_of(state: &StateStore, key: &str) -> Option<String> {
        sqlx::query_scalar("SELECT hub_folded FROM pushed WHERE key = ?1")
            .bind(key)
            .fetch_one(&state.pool)
            .await
            .expect("folded")
    }

    /// Keys written before the folded column, or by an earlier agent's batch left in flight,
    /// are folded when the state is opened or recovered: the holder lookup finds them.
    #[tokio::test]
    async fn folded_hub_values_are_filled_in_for_keys_written_without_them() {
        let (_dir, path) = first_state_file(
            "INSERT INTO pushed VALUES ('k', 'ÄB@X.fi', 'ab', 'cus_k', 0);
             CREATE TABLE in_flight (batch TEXT PRIMARY KEY, keys TEXT NOT NULL) WITHOUT ROWID;
             INSERT INTO in_flight VALUES ('b0', '[[\"n\", \"ÖN@x.fi\"]]');",
        );
        let state = StateStore::open(&path).await.expect("open");
        assert_eq!(folded_of(&state, "k").await.as_deref(), Some("äb@x.fi"));
        assert_eq!(state.recover().await.expect("recover"), 1);
        assert_eq!(folded_of(&state, "n").await.as_deref(), Some("ön@x.fi"));
        // Written from now on with the folded value beside it.
        state
            .commit(&[Outcome::Archived {
                key: "k".into(),
                hub_value: "ÉB@x.fi".into(),
            }])
            .await
            .expect("archive");
        assert_eq!(folded_of(&state, "k").await.as_deref(), Some("éb@x.fi"));
    }

    #[tokio::test]
    async fn a_state_file_without_row_hashes_gains_the_column() {
        let (_dir, path) =
            first_state_file("INSERT INTO pushed VALUES ('k', 'hk', 'ab', 'cus_k', 0);");
        let state = StateStore::open(&path).await.expect("open");
        assert_eq!(probe(&state, "k"), known("hk", "ab", false));
        state
            .commit(&[Outcome::Refreshed {
                key: "k".into(),
                hash: "ab".into(),
                row_hash: ROW,
            }])
            .await
            .expect("refresh");
        assert_eq!(probe(&state, "k"), Probe::Same);
        drop(state);

        // An older agent records a new item and leaves the row hash as it was.
        let conn = rusqlite::Connection::open(&path).expect("open");
        conn.execute("UPDATE pushed SET hash = 'cd' WHERE key = 'k'", [])
            .expect("older agent");
        let state = StateStore::open(&path).await.expect("opens again");
        assert_eq!(probe(&state, "k"), known("hk", "cd", false));
    }
}
