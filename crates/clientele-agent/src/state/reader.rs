//! The per-row reads of a push run: a read-only rusqlite connection to the state file, used on
//! the thread that compares source rows with the state, so a probe is a prepared point lookup
//! with no hand-off to a database worker thread.
//!
//! The reader also remembers which keys this run has read, in a temporary table of its own
//! connection (`temp.seen`, in SQLite's temporary file, never in the state file, with a bounded
//! page cache: memory does not grow with the source). A key read a second time is
//! [`Probe::Repeated`]; the live keys of the state never read are the ones that left the source.

use std::path::Path;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{Entry, Probe};
use crate::mapping::RowHash;

pub struct StateReader {
    conn: Connection,
}

/// One row to probe: its key (none when it has none), its row hash and its row number.
pub type ProbeRow<'a> = (Option<&'a str>, &'a RowHash, u64);

impl StateReader {
    /// Opens the state file that [`super::StateStore::open`] created (and keeps open).
    pub(super) fn open(path: &Path) -> anyhow::Result<StateReader> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot read the state file {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        // The keys of this run: on disk (a temporary file), 16 MiB of cache at most.
        conn.execute_batch(
            "PRAGMA temp_store = FILE;
             PRAGMA temp.cache_size = -16384;
             CREATE TEMP TABLE seen (key TEXT PRIMARY KEY, row INTEGER NOT NULL) WITHOUT ROWID;",
        )
        .context("cannot make the run's scratch table")?;
        Ok(StateReader { conn })
    }

    /// Probes each `(key, row hash, row number)` and marks its key as read in this run; a row
    /// without a key is [`Probe::Unknown`]. One transaction for them all: one snapshot of the
    /// state, and the WAL read lock is taken once.
    pub fn probe_all<'a>(
        &mut self,
        rows: impl Iterator<Item = ProbeRow<'a>>,
    ) -> anyhow::Result<Vec<Probe>> {
        let tx = self.conn.transaction()?;
        let mut probes = Vec::with_capacity(rows.size_hint().0);
        {
            // The row hash is stored bound to the item hash it vouches for (see `Outcome`).
            let mut statement = tx.prepare_cached(
                "SELECT gone = 0 AND row_hash IS ?2 || hash, hub_value, hash, gone
                 FROM main.pushed WHERE key = ?1",
            )?;
            let mut mark = tx.prepare_cached(
                "INSERT INTO temp.seen (key, row) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
            )?;
            let mut first = tx.prepare_cached("SELECT row FROM temp.seen WHERE key = ?1")?;
            let mut hex = [0u8; 32];
            for (key, row_hash, number) in rows {
                let Some(key) = key else {
                    probes.push(Probe::Unknown);
                    continue;
                };
                if mark.execute((key, number as i64))? == 0 {
                    let first: i64 = first.query_row([key], |row| row.get(0))?;
                    probes.push(Probe::Repeated {
                        first: first as u64,
                    });
                    continue;
                }
                hex::encode_to_slice(row_hash, &mut hex)?;
                let found = statement
                    .query_row((key, std::str::from_utf8(&hex)?), |row| {
                        Ok(if row.get::<_, bool>(0)? {
                            Probe::Same
                        } else {
                            Probe::Known(Entry {
                                hub_value: row.get(1)?,
                                hash: row.get(2)?,
                                gone: row.get::<_, i64>(3)? != 0,
                            })
                        })
                    })
                    .optional()?;
                probes.push(found.unwrap_or(Probe::Unknown));
            }
        }
        tx.commit()?;
        Ok(probes)
    }

    /// Live keys of the state that this run has not read, as (key, hub value, pending),
    /// `limit` at a time after `after`.
    pub fn vanished_after(
        &mut self,
        after: &str,
        limit: i64,
    ) -> anyhow::Result<Vec<(String, String, bool)>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT key, hub_value, hash = '' FROM main.pushed
             WHERE gone = 0 AND key > ?1 AND key NOT IN (SELECT key FROM temp.seen)
             ORDER BY key LIMIT ?2",
        )?;
        let rows = statement
            .query_map((after, limit), |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}
