//! What push remembers between runs, in a SQLite file: per source key, the hash of what the hub
//! last acknowledged, the hub key's value, the hub id, and whether the key has left the source
//! (archived). A batch's outcomes are committed in one transaction after the hub acknowledged
//! it, so a run killed at any moment leaves the state describing acknowledged writes only.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use anyhow::Context;
use futures::TryStreamExt;
use serde_json::{Value, json};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// What the state holds for one source key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub hub_value: String,
    pub hash: String,
    pub gone: bool,
}

/// The hub acknowledged an item; what the state records for it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// About to be sent for the first time: known from now on, so that if the hub takes it and
    /// the run dies before recording that, a later run still knows the key (its hash is empty
    /// and matches nothing, so the row is sent again; if it left the source meanwhile, the hub
    /// is asked whether the customer exists before `on_missing` applies).
    Pending {
        key: String,
        hub_value: String,
    },
    Stored {
        key: String,
        hub_value: String,
        hash: String,
        hub_id: Option<String>,
    },
    Archived {
        key: String,
    },
    Removed {
        key: String,
    },
}

#[derive(Clone, Debug)]
pub struct StateStore {
    pool: SqlitePool,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS pushed (
        key TEXT PRIMARY KEY,
        hub_value TEXT NOT NULL,
        hash TEXT NOT NULL,
        hub_id TEXT,
        gone INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID",
    // Scratch space for the keys of one run, to find the keys that left the source.
    "CREATE TABLE IF NOT EXISTS seen (key TEXT PRIMARY KEY) WITHOUT ROWID",
];

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
        Ok(StateStore { pool })
    }

    /// Keys that are in the hub and in the source as far as the state knows.
    pub async fn live_count(&self) -> anyhow::Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM pushed WHERE gone = 0")
            .fetch_one(&self.pool)
            .await?;
        Ok(count as u64)
    }

    /// The entries of these keys, in one statement.
    pub async fn lookup(&self, keys: &[&str]) -> anyhow::Result<HashMap<String, Entry>> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let keys = serde_json::to_string(keys)?;
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "SELECT key, hub_value, hash, gone FROM pushed
             WHERE key IN (SELECT value FROM json_each(?1))",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(key, hub_value, hash, gone)| {
                (
                    key,
                    Entry {
                        hub_value,
                        hash,
                        gone: gone != 0,
                    },
                )
            })
            .collect())
    }

    /// Records one acknowledged batch, all of it or nothing.
    pub async fn commit(&self, outcomes: &[Outcome]) -> anyhow::Result<()> {
        let mut stored = Vec::new();
        let mut archived = Vec::new();
        let mut removed = Vec::new();
        let mut pending = Vec::new();
        for outcome in outcomes {
            match outcome {
                Outcome::Pending { key, hub_value } => pending.push(json!([key, hub_value])),
                Outcome::Stored {
                    key,
                    hub_value,
                    hash,
                    hub_id,
                } => stored.push(json!([key, hub_value, hash, hub_id])),
                Outcome::Archived { key } => archived.push(Value::String(key.clone())),
                Outcome::Removed { key } => removed.push(Value::String(key.clone())),
            }
        }
        let mut tx = self.pool.begin().await?;
        if !pending.is_empty() {
            sqlx::query(
                "INSERT INTO pushed (key, hub_value, hash, hub_id, gone)
                 SELECT value ->> 0, value ->> 1, '', NULL, 0 FROM json_each(?1) WHERE true
                 ON CONFLICT (key) DO NOTHING",
            )
            .bind(Value::Array(pending).to_string())
            .execute(&mut *tx)
            .await?;
        }
        if !stored.is_empty() {
            sqlx::query(
                "INSERT INTO pushed (key, hub_value, hash, hub_id, gone)
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, 0 FROM json_each(?1)
                 WHERE true
                 ON CONFLICT (key) DO UPDATE SET hub_value = excluded.hub_value,
                     hash = excluded.hash, hub_id = coalesce(excluded.hub_id, pushed.hub_id), gone = 0",
            )
            .bind(Value::Array(stored).to_string())
            .execute(&mut *tx)
            .await?;
        }
        if !archived.is_empty() {
            sqlx::query(
                "UPDATE pushed SET gone = 1 WHERE key IN (SELECT value FROM json_each(?1))",
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
        tx.commit().await?;
        Ok(())
    }

    pub async fn clear_seen(&self) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM seen").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn add_seen(&self, keys: &[String]) -> anyhow::Result<()> {
        sqlx::query("INSERT OR IGNORE INTO seen (key) SELECT value FROM json_each(?1)")
            .bind(serde_json::to_string(keys)?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Live keys not seen in this run, as (key, hub value, pending), `limit` at a time after `after`.
    pub async fn vanished_after(
        &self,
        after: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<(String, String, bool)>> {
        let rows = sqlx::query_as(
            "SELECT key, hub_value, hash = '' FROM pushed
             WHERE gone = 0 AND key > ?1 AND key NOT IN (SELECT key FROM seen)
             ORDER BY key LIMIT ?2",
        )
        .bind(after)
        .bind(limit)
        .fetch(&self.pool)
        .try_collect()
        .await?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outcomes_are_recorded_and_vanished_keys_found() {
        let dir = tempfile::tempdir().expect("dir");
        let state = StateStore::open(&dir.path().join("s.db"))
            .await
            .expect("open");
        let stored = |key: &str| Outcome::Stored {
            key: key.into(),
            hub_value: format!("h{key}"),
            hash: "00".into(),
            hub_id: Some(format!("cus_{key}")),
        };
        state
            .commit(&[stored("a"), stored("b"), stored("c")])
            .await
            .expect("commit");
        assert_eq!(state.live_count().await.expect("count"), 3);
        let found = state.lookup(&["a", "z"]).await.expect("lookup");
        assert_eq!(found.len(), 1);
        assert_eq!(
            found["a"],
            Entry {
                hub_value: "ha".into(),
                hash: "00".into(),
                gone: false
            }
        );

        state.clear_seen().await.expect("clear");
        state.add_seen(&["a".into()]).await.expect("seen");
        let vanished = state.vanished_after("", 10).await.expect("vanished");
        assert_eq!(
            vanished,
            vec![
                ("b".into(), "hb".into(), false),
                ("c".into(), "hc".into(), false)
            ]
        );
        state
            .commit(&[
                Outcome::Pending {
                    key: "d".into(),
                    hub_value: "hd".into(),
                },
                Outcome::Pending {
                    key: "a".into(),
                    hub_value: "x".into(),
                },
            ])
            .await
            .expect("pending");
        let a = &state.lookup(&["a"]).await.expect("lookup")["a"];
        assert_eq!(a.hash, "00", "pending never overwrites");
        let vanished = state.vanished_after("c", 10).await.expect("vanished");
        assert_eq!(vanished, vec![("d".into(), "hd".into(), true)]);
        state
            .commit(&[Outcome::Removed { key: "d".into() }])
            .await
            .expect("commit");

        state
            .commit(&[
                Outcome::Archived { key: "b".into() },
                Outcome::Removed { key: "c".into() },
            ])
            .await
            .expect("commit");
        assert_eq!(state.live_count().await.expect("count"), 1);
        assert!(state.lookup(&["b"]).await.expect("lookup")["b"].gone);
        assert!(state.lookup(&["c"]).await.expect("lookup").is_empty());
    }
}
