//! SQLite WAL checkpoints on a connection of their own, off the writer's thread.
//!
//! Left to itself, SQLite checkpoints inside the commit that pushes the WAL past
//! `wal_autocheckpoint` pages: the one writer connection copies pages into the database file
//! while every other write waits for it. Bulk sync spent an eighth of the writer's time there.
//! A `PASSIVE` checkpoint never takes the write lock, so a separate connection can do the copying
//! beside the writer; the writer keeps a high `wal_autocheckpoint` only as a backstop in case
//! this task falls behind.

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};
use tokio::task::JoinHandle;

use crate::sqlite::settings::CHECKPOINT_INTERVAL;

/// The checkpointing task; dropping it stops the task.
pub(crate) struct Checkpointer {
    task: JoinHandle<()>,
}

impl Checkpointer {
    /// Opens the checkpointing connection (it must be able to write the database file) and
    /// starts checkpointing every [`CHECKPOINT_INTERVAL`].
    pub(crate) async fn start(options: SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        let mut connection = options.connect().await?;
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(CHECKPOINT_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                if let Err(error) = checkpoint(&mut connection).await {
                    // The writer's backstop keeps the WAL bounded meanwhile.
                    tracing::warn!(%error, "WAL checkpoint failed");
                    if connection.ping().await.is_err() {
                        match options.connect().await {
                            Ok(fresh) => connection = fresh,
                            Err(error) => tracing::warn!(%error, "reopening the checkpointer"),
                        }
                    }
                }
            }
        });
        Ok(Self { task })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One `PASSIVE` checkpoint: copies what it can without waiting for readers or the writer.
async fn checkpoint(connection: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *connection)
        .await?;
    let (log, copied): (i64, i64) = (row.try_get(1)?, row.try_get(2)?);
    tracing::trace!(log, copied, "WAL checkpoint");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::SqliteJournalMode;
    use std::time::Duration;

    /// Pages a writer commits reach the database file without the writer checkpointing.
    #[tokio::test]
    async fn copies_the_wal_into_the_database_file_beside_the_writer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("wal.db");
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal);
        let mut writer = options
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .connect()
            .await
            .expect("writer");
        sqlx::query("CREATE TABLE t (doc TEXT)")
            .execute(&mut writer)
            .await
            .expect("create");
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) \
             INSERT INTO t SELECT printf('%.1000c', 'x') FROM n",
        )
        .execute(&mut writer)
        .await
        .expect("insert");
        let file_size = || std::fs::metadata(&path).expect("database file").len();
        assert!(file_size() < 100_000, "still in the WAL: {}", file_size());

        let _checkpointer = Checkpointer::start(options).await.expect("start");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while file_size() < 1_000_000 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "never checkpointed: {}",
                file_size()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
