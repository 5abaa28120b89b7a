//! The per-row reads of a push run: a read-only rusqlite connection to the state file, used on
//! the thread that compares source rows with the state, so a probe is a prepared point lookup
//! with no hand-off to a database worker thread.

use std::path::Path;

use anyhow::Context;
use rusqlite::{Connection, OpenFlags};

use super::{Entry, Probe};
use crate::mapping::RowHash;

pub struct StateReader {
    conn: Connection,
}

impl StateReader {
    /// Opens the state file that [`super::StateStore::open`] created (and keeps open).
    pub(super) fn open(path: &Path) -> anyhow::Result<StateReader> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot read the state file {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        Ok(StateReader { conn })
    }

    /// Probes each `(key, row hash)`; a row without a key is [`Probe::Unknown`]. One read
    /// transaction for them all: one snapshot, and the WAL read lock is taken once.
    pub fn probe_all<'a>(
        &mut self,
        rows: impl Iterator<Item = (Option<&'a str>, &'a RowHash)>,
    ) -> anyhow::Result<Vec<Probe>> {
        let tx = self.conn.transaction()?;
        let mut probes = Vec::with_capacity(rows.size_hint().0);
        {
            // The row hash is stored bound to the item hash it vouches for (see `Outcome`).
            let mut statement = tx.prepare_cached(
                "SELECT gone = 0 AND row_hash IS ?2 || hash, hub_value, hash, gone
                 FROM pushed WHERE key = ?1",
            )?;
            let mut hex = [0u8; 32];
            for (key, row_hash) in rows {
                let Some(key) = key else {
                    probes.push(Probe::Unknown);
                    continue;
                };
                hex::encode_to_slice(row_hash, &mut hex)?;
                let mut found = statement.query((key, std::str::from_utf8(&hex)?))?;
                let probe = match found.next()? {
                    None => Probe::Unknown,
                    Some(row) if row.get::<_, bool>(0)? => Probe::Same,
                    Some(row) => Probe::Known(Entry {
                        hub_value: row.get(1)?,
                        hash: row.get(2)?,
                        gone: row.get::<_, i64>(3)? != 0,
                    }),
                };
                probes.push(probe);
            }
        }
        tx.commit()?;
        Ok(probes)
    }
}
