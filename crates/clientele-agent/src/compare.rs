//! Push's comparing stage: on a thread of its own, each source row gets its key and row hash
//! and is probed in the state. A row the state acknowledged with the same row hash is counted
//! and dropped there, unmapped; only the other rows are mapped and handed on to be planned.
//! With nothing changed, a run costs little more than reading the source.
//!
//! The probe also marks the key as read in this run: a key read again (a source holding it
//! twice) is not mapped, it is a rejected row, and the first row with the key is the one used.
//!
//! Keys are compared as the hub compares the hub key they fill ([`KeyForm`]): with
//! `[sync] key = "email"` and the key column filling the email, `A@x.example` and `a@x.example`
//! are one customer on the hub, so they are one key here (in the state, for repeats, and for
//! the keys that left the source). A key column that is some other identifier (the email comes
//! from another column) is compared as written.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::job::KeyForm;
use crate::mapping::{MappedRow, Mapper, RowError, RowHash};
use crate::source::{Chunk, SourceRow};
use crate::state::{Entry, Probe, StateReader};

/// A chunk of source rows after comparing.
pub struct Compared {
    /// Rows read.
    pub rows: u64,
    /// Rows whose key could be read (repeated keys included).
    pub keyed: u64,
    /// Records the source could not read as rows, whose key is unknown (a JSONL line that is
    /// not JSON): any of the keys not read in this run may be theirs.
    pub unreadable: u64,
    /// Rows whose row hash the state holds: not mapped, not sent.
    pub same: u64,
    /// Keys read for the first time in this run that the state knows as live (the `same` ones
    /// included).
    pub live_seen: u64,
    /// The rest, mapped.
    pub candidates: Vec<Candidate>,
}

/// A row that may have to go to the hub: its item decides.
pub struct Candidate {
    pub number: u64,
    pub key: Option<String>,
    pub row_hash: RowHash,
    pub mapped: Result<MappedRow, RowError>,
    pub entry: Option<Entry>,
}

/// Compares chunks as they come from the source; a failure ends the stream with an `Err`.
/// The reader comes back when the stream ends: it knows the keys this run has read.
pub fn spawn(
    mut chunks: mpsc::Receiver<Chunk>,
    mapper: Arc<Mapper>,
    key_form: KeyForm,
    mut state: StateReader,
) -> (
    mpsc::Receiver<anyhow::Result<Compared>>,
    JoinHandle<StateReader>,
) {
    let (sender, receiver) = mpsc::channel(4);
    let done = tokio::task::spawn_blocking(move || {
        let mut buffer = Vec::with_capacity(256);
        while let Some(chunk) = chunks.blocking_recv() {
            let compared =
                chunk.and_then(|rows| compare(rows, &mapper, key_form, &mut state, &mut buffer));
            let failed = compared.is_err();
            if sender.blocking_send(compared).is_err() || failed {
                break;
            }
        }
        state
    });
    (receiver, done)
}

fn compare(
    rows: Vec<SourceRow>,
    mapper: &Mapper,
    key_form: KeyForm,
    state: &mut StateReader,
    buffer: &mut Vec<u8>,
) -> anyhow::Result<Compared> {
    let keyed: Vec<(Option<String>, RowHash)> = rows
        .iter()
        .map(|row| {
            let key = mapper.key_of(row).map(|key| key_form.identity(key));
            (key, mapper.row_hash(row, buffer))
        })
        .collect();
    let probes = state.probe_all(
        keyed
            .iter()
            .zip(&rows)
            .map(|((key, hash), row)| (key.as_deref(), hash, row.number)),
    )?;
    let mut compared = Compared {
        rows: rows.len() as u64,
        keyed: keyed.iter().filter(|(key, _)| key.is_some()).count() as u64,
        unreadable: 0,
        same: 0,
        live_seen: 0,
        candidates: Vec::new(),
    };
    for ((mut row, (key, row_hash)), probe) in rows.into_iter().zip(keyed).zip(probes) {
        let row_number = row.number;
        let invalid = row.invalid.take().map(|message| RowError {
            code: "invalid_row",
            message,
        });
        // A refused record whose key is unknown, or was decoded with replacement characters
        // (so the key the source meant was not read), may hold any key not read.
        let key_unread = || {
            key.as_deref()
                .is_none_or(|key| key.contains(char::REPLACEMENT_CHARACTER))
        };
        compared.unreadable += u64::from(invalid.is_some() && key_unread());
        let (entry, refused) = match probe {
            Probe::Same => {
                compared.live_seen += 1;
                if invalid.is_none() {
                    compared.same += 1;
                    continue;
                }
                (None, invalid)
            }
            Probe::Known(entry) => {
                compared.live_seen += u64::from(!entry.gone);
                (Some(entry), invalid)
            }
            Probe::Unknown => (None, invalid),
            Probe::Repeated { first } => (
                None,
                Some(RowError {
                    code: "duplicate_key_in_source",
                    message: format!(
                        "row {first} has the same key `{}`; only the first row with a key is used",
                        key.as_deref().unwrap_or_default()
                    ),
                }),
            ),
        };
        let mapped = match refused {
            Some(error) => Err(error),
            None => mapper.map(row).map(|mut mapped| {
                mapped.key = key_form.identity(mapped.key);
                mapped
            }),
        };
        compared.candidates.push(Candidate {
            number: row_number,
            key,
            row_hash,
            mapped,
            entry,
        });
    }
    Ok(compared)
}
