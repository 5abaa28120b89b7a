//! The per-row reads of a push run: a read-only rusqlite connection to the state file, used on
//! the thread that compares source rows with the state, so a probe is a prepared point lookup
//! with no hand-off to a database worker thread.
//!
//! The reader also remembers which keys this run has read. A key read a second time is
//! [`Probe::Repeated`]; the live keys of the state never read are the ones that left the source.
//! The first [`KEYS_IN_MEMORY`] keys are kept as 64-bit hashes in memory (18 MiB at most): a
//! table insert per row doubled the time of a run that finds nothing changed. Two keys of a run
//! share a hash with odds of about n²/2⁶⁵ (3 in 100 million for a million keys); the later row
//! would then be rejected as a repeat and reported, never sent wrongly. Keys past those go to
//! a temporary table of the reader's own connection (`temp.seen`, in SQLite's temporary file,
//! never in the state file, with a bounded page cache), so memory does not grow with the
//! source.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::path::Path;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{Entry, Probe};
use crate::mapping::RowHash;

/// A live key of the state that a run did not read: its row left the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vanished {
    pub key: String,
    pub hub_value: String,
    /// Sent and never acknowledged (empty hash): the hub may or may not have it.
    pub unsure: bool,
    /// The other hub value an unacknowledged rename carried, under which the hub may have it.
    pub sent_value: Option<String>,
    /// The customer's id, once the hub acknowledged it: a rename keeps it.
    pub hub_id: Option<String>,
}

pub struct StateReader {
    conn: Connection,
    /// Hashes of the first keys read in this run, each with the row it was first read in.
    seen: HashMap<u64, u64>,
    /// How many keys `seen` takes before the rest go to `temp.seen`.
    keys_in_memory: usize,
}

/// Keys remembered in memory before the rest go to `temp.seen`: as many as a map of 2²⁰ slots
/// (of 17 bytes) holds at its load factor of 7/8, so it never grows to 2²¹ slots (36 MiB, and
/// 54 MiB while it moves from the old slots to the new).
const KEYS_IN_MEMORY: usize = (1 << 20) / 8 * 7;

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
        Ok(StateReader {
            conn,
            seen: HashMap::new(),
            keys_in_memory: KEYS_IN_MEMORY,
        })
    }

    /// The same reader with another bound on the keys kept in memory (tests of the table).
    #[cfg(test)]
    pub(crate) fn with_keys_in_memory(mut self, keys: usize) -> Self {
        self.keys_in_memory = keys;
        self
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
                "SELECT gone = 0 AND row_hash IS ?2 || hash, hub_value, hash, gone, sent_value,
                     hub_id
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
                let hash = key_hash(key);
                if let Some(&first) = self.seen.get(&hash) {
                    probes.push(Probe::Repeated { first });
                    continue;
                }
                if self.seen.len() < self.keys_in_memory {
                    self.seen.insert(hash, number);
                } else if mark.execute((key, number as i64))? == 0 {
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
                                sent_value: row.get(4)?,
                                hub_id: row.get(5)?,
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

    /// Live keys of the state that this run has not read, `limit` at a time after `after`.
    pub fn vanished_after(&mut self, after: &str, limit: i64) -> anyhow::Result<Vec<Vanished>> {
        // The table knows the keys past the memory's; those in memory are filtered out here,
        // page after page, until some are left or the state ends.
        let mut from = after.to_owned();
        loop {
            let page = self.unseen_in_table_after(&from, limit)?;
            let Some(last) = page.last() else {
                return Ok(page);
            };
            from.clone_from(&last.key);
            let unseen: Vec<_> = page
                .into_iter()
                .filter(|vanished| !self.seen.contains_key(&key_hash(&vanished.key)))
                .collect();
            if !unseen.is_empty() {
                return Ok(unseen);
            }
        }
    }

    /// Whether a live key of the state other than `key` that this run read has the hub value
    /// `hub_value` as the hub compares it (`same`): the customer `key` pointed at is still in
    /// the source, under that key (its key column was renumbered, or two rows fill one
    /// customer), so it must not get `on_missing`. The state must hold this run's
    /// acknowledged batches. Candidates are found through the index of folded hub values
    /// ([`super::folded`]).
    pub fn holder_read_in_run(
        &mut self,
        key: &str,
        hub_value: &str,
        same: impl Fn(&str, &str) -> bool,
    ) -> anyhow::Result<bool> {
        let candidates: Vec<(String, String)> = self
            .conn
            .prepare_cached(
                "SELECT key, hub_value FROM main.pushed
                 WHERE hub_folded = ?1 AND key <> ?2 AND gone = 0",
            )?
            .query_map((super::folded(hub_value), key), |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        for (holder, value) in candidates {
            if same(&value, hub_value) && self.was_read(&holder)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether this run read `key`.
    fn was_read(&mut self, key: &str) -> anyhow::Result<bool> {
        if self.seen.contains_key(&key_hash(key)) {
            return Ok(true);
        }
        let in_table = self
            .conn
            .prepare_cached("SELECT 1 FROM temp.seen WHERE key = ?1")?
            .query_row([key], |_| Ok(()))
            .optional()?;
        Ok(in_table.is_some())
    }

    fn unseen_in_table_after(&mut self, after: &str, limit: i64) -> anyhow::Result<Vec<Vanished>> {
        let mut statement = self.conn.prepare_cached(
            "SELECT key, hub_value, hash = '', sent_value, hub_id FROM main.pushed
             WHERE gone = 0 AND key > ?1 AND key NOT IN (SELECT key FROM temp.seen)
             ORDER BY key LIMIT ?2",
        )?;
        let rows = statement
            .query_map((after, limit), |row| {
                Ok(Vanished {
                    key: row.get(0)?,
                    hub_value: row.get(1)?,
                    unsure: row.get(2)?,
                    sent_value: row.get(3)?,
                    hub_id: row.get(4)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

/// A key's 64-bit hash, the same for the whole run (SipHash with fixed keys).
fn key_hash(key: &str) -> u64 {
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_kept_in_memory_fill_a_map_of_2_20_slots_without_growing_it() {
        let mut seen: HashMap<u64, u64> = HashMap::new();
        for n in 0..KEYS_IN_MEMORY as u64 {
            seen.insert(n.wrapping_mul(0x9E37_79B9_7F4A_7C15), n);
        }
        // 2²⁰ slots hold 7/8 of that many entries; one more and the map would double.
        assert_eq!(seen.capacity(), KEYS_IN_MEMORY);
    }
}
