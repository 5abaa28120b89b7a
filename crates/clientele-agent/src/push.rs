//! `clientele push`: source rows to the hub through `POST /v1/customers/sync`.
//!
//! Before a row is read, the `[source] key` column is checked against the source's columns
//! where the source has a fixed set of them (a table, a query, a CSV header). Rows whose row hash
//! the state holds are dropped unmapped (`compare`); the others are mapped, and those whose item
//! hash and hub key match the state are not sent either (the state just learns their new row
//! hash). A key read a second time in a run is a rejected row; the first row with it is used.
//!
//! Changed rows go out in batches of `batch_size`, `concurrency` at a time. Each batch has an
//! `Idempotency-Key` of its own, `push-<run id>-<batch number>`: the client's retries of that
//! request carry the same key (and get the first attempt's answer, never a second apply), but no
//! other send ever does. A key derived from the batch's content would not do: content that comes
//! back (A → B → A, or archived, back, archived again) would be the same bytes under the same
//! key, and the hub would answer with the replay of the first send and apply nothing.
//!
//! The state records a batch's outcomes only once the hub answered, in one transaction, and
//! before the batch goes out its keys are written down as in flight (see [`crate::state`]).
//! After a kill, the next run first makes the keys of batches in flight dirty, so that whatever
//! the hub applied of them their rows are sent again, under new keys (even a row that went back
//! to the content last acknowledged), and those that left the source get `on_missing` if the
//! hub has them: every item is a keyed upsert of absolute content, an archive or a delete, so
//! applying it again comes back `unchanged` (a delete of a customer already deleted,
//! `not_found`, counts as done), and nothing is applied twice.
//!
//! A batch also ends before its items' JSON passes [`MAX_BATCH_BYTES`], under the hub's default
//! body limit (10 MiB). A hub with a lower limit answers `413 payload_too_large`: the batch is
//! then split in halves, each sent under the batch's key with a suffix (`-a`, `-b`, again for
//! their halves), down to single items; an item too large alone is a rejected row, with the
//! hub's problem, and the rest of the run goes on.
//!
//! The reader marks each key read as seen in this run. Keys that left the source are looked for
//! only when the count of known keys seen falls short of the state's live keys; then the live
//! keys never seen get `on_missing`. A run that read rows of which none had a key stops before
//! that: a key column that is wrong must not make every customer look gone. So does a run with
//! a record it could not read at all (a JSONL line that is not JSON): its key might be any of
//! those not read. A record read but refused (not UTF-8, cells missing) keeps its key.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context;
use clientele_client::{Client, ItemStatus, SyncRequest, SyncResponse};
use clientele_client::{ClientError, SyncResult};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::task::JoinSet;

use crate::compare::{Candidate, Compared};
use crate::job::{HubKey, Job, KeyForm, OnMissing};
use crate::mapping::{Mapper, RowHash};
use crate::progress::{Counters, Progress};
use crate::report::Report;
use crate::source::Source;
use crate::state::{Entry, Outcome, StateReader, StateStore, Vanished};

/// A batch's items end before their JSON passes this many bytes (the hub's default body limit
/// is 10 MiB; the rest is room for the request's envelope and for a limit set a little lower).
const MAX_BATCH_BYTES: usize = 8 << 20;

/// One item planned for the hub, with what the state needs once it is acknowledged.
#[derive(Debug)]
struct Planned {
    key: String,
    row: Option<u64>,
    hub_value: String,
    hash: String,
    /// The row hash of the source row the item came from (none for archives and deletes).
    row_hash: Option<RowHash>,
    action: Action,
    item: Map<String, Value>,
}

/// A planned item in the JSON it is sent as.
#[derive(Debug)]
struct Encoded {
    planned: Planned,
    json: Box<RawValue>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Create,
    Update,
    Archive,
    Delete,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Archive => "archive",
            Action::Delete => "delete",
        }
    }
}

pub struct Push {
    job: Arc<Job>,
    client: Client,
    state: StateStore,
    report: Report,
    progress: Progress,
    dry_run: bool,
    /// Tells this run's idempotency keys from every other run's.
    run_id: String,
    /// Batches sent so far in this run: the next one's number.
    batches: u64,
    in_flight: JoinSet<anyhow::Result<()>>,
    pending: Vec<Encoded>,
    /// The JSON bytes of `pending`'s items.
    pending_bytes: usize,
    /// A dry run's creates, by hub value as the hub compares it: the state, which a real run's
    /// acknowledged creates are in, cannot say a customer that left under one key is back under
    /// another ([`Push::holder`]).
    planned_creates: HashSet<String>,
    /// A dry run's copy of the state, removed when the run ends.
    _plan_copy: Option<tempfile::TempDir>,
}

impl Push {
    pub async fn new(
        job: Arc<Job>,
        client: Client,
        report: Report,
        progress: Progress,
        dry_run: bool,
    ) -> anyhow::Result<Push> {
        // A dry run plans on a copy: opening the file brings it up to date, which writes.
        let (state, plan_copy) = if dry_run {
            let (state, copy) = StateStore::open_copy(&job.state_path()).await?;
            (state, Some(copy))
        } else {
            (StateStore::open(&job.state_path()).await?, None)
        };
        state.bind_hub(&job.hub.url, !dry_run).await?;
        if !dry_run {
            // Before anything is compared: a killed run's batches may be on the hub.
            state.recover().await?;
        }
        let run_id = crate::run_id();
        Ok(Push {
            job,
            client,
            state,
            report,
            progress,
            dry_run,
            run_id,
            batches: 0,
            in_flight: JoinSet::new(),
            pending: Vec::new(),
            pending_bytes: 0,
            planned_creates: HashSet::new(),
            _plan_copy: plan_copy,
        })
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        let source = Source::from_job(&self.job)?;
        let source_key = &self.job.source()?.key;
        let columns = source.columns().await.map_err(|error| {
            // A table or query the database refuses is the job file's `table` or `query`.
            let key = match self.job.source() {
                Ok(section) if section.table.is_some() => "table",
                _ => "query",
            };
            anyhow::Error::from(self.job.error("source", key, &format!("{error:#}")))
        })?;
        self.check_columns(columns.as_deref())?;
        // A dry run rewrites no state: it compares keys as the state holds them.
        let key_form = self
            .state
            .settle_key_form(
                KeyForm::of(&self.job, source_key, columns.as_deref()),
                !self.dry_run,
            )
            .await?;
        let mapper = Arc::new(Mapper::new(&self.job, source_key).map_err(anyhow::Error::msg)?);
        let live_before = self.state.live_count().await?;
        let (mut known_seen, mut rows, mut keyed, mut unreadable) = (0u64, 0u64, 0u64, 0u64);
        let (mut chunks, reader) = crate::compare::spawn(
            source.stream(),
            mapper.clone(),
            key_form,
            self.state.reader()?,
        );
        while let Some(chunk) = chunks.recv().await {
            let chunk = chunk?;
            rows += chunk.rows;
            keyed += chunk.keyed;
            unreadable += chunk.unreadable;
            known_seen += self.plan_chunk(chunk).await?;
            self.progress.tick();
        }
        let reader = reader.await.context("the comparing task failed")?;
        if rows > 0 && keyed == 0 {
            // Every row was rejected for want of a key: the key column is surely wrong, and
            // every customer pushed before would look gone.
            self.report.flush();
            return Err(self
                .job
                .error(
                    "source",
                    "key",
                    &format!(
                        "none of the {rows} rows read has a value in the key column `{}`: the run \
                         stops before any customer is archived or deleted as gone",
                        self.job.source()?.key
                    ),
                )
                .into());
        }
        if self.job.sync.on_missing != OnMissing::Ignore && known_seen < live_before {
            // The state holds every acknowledged row of the run before a key is taken as gone:
            // its customer may be another key's now.
            self.finish_batches().await?;
            if unreadable == 0 {
                self.plan_vanished(reader).await?;
            } else {
                // A record that could not be read may hold any of the keys not read: archiving
                // or deleting them could undo a customer that is still in the source.
                self.progress.note(&format!(
                    "{unreadable} source records could not be read (see the report): the \
                     customers whose keys this run did not read are left as they are, not \
                     given `on_missing`, until every record reads"
                ));
            }
        }
        self.finish_batches().await?;
        self.report.flush();
        Ok(())
    }

    /// Sends what is pending and waits for every batch's answer to be recorded.
    async fn finish_batches(&mut self) -> anyhow::Result<()> {
        self.flush().await?;
        while let Some(done) = self.in_flight.join_next().await {
            done.context("a batch task failed")??;
        }
        Ok(())
    }

    /// A key column that the source does not have would leave every row without a key, a
    /// `[fields]` entry naming a column it does not have (a typo) would leave its field unsent
    /// without a word, and two columns of one name would leave one unread: all refused before
    /// anything is read, wherever the source's columns are known.
    fn check_columns(&self, columns: Option<&[String]>) -> anyhow::Result<()> {
        let key = &self.job.source()?.key;
        let Some(columns) = columns else {
            return Ok(());
        };
        let listed = || {
            if columns.is_empty() {
                "none".to_owned()
            } else {
                columns.join(", ")
            }
        };
        // A row is read into a map by column name: of two columns with one name, one value
        // would be dropped without a word.
        let mut names = std::collections::HashSet::new();
        if let Some(repeated) = columns.iter().find(|column| !names.insert(column.as_str())) {
            return Err(anyhow::anyhow!(
                "the source has two columns named `{repeated}`: rename one (in a query, with AS)"
            ));
        }
        if !columns.iter().any(|column| column == key) {
            return Err(self
                .job
                .error(
                    "source",
                    "key",
                    &format!(
                        "the source has no column `{key}` (its columns: {})",
                        listed()
                    ),
                )
                .into());
        }
        for (field, column) in &self.job.fields {
            if !columns.contains(column) {
                return Err(self
                    .job
                    .error(
                        "fields",
                        field,
                        &format!(
                            "the source has no column `{column}` (its columns: {})",
                            listed()
                        ),
                    )
                    .into());
            }
        }
        Ok(())
    }

    /// Plans the rows of a compared chunk whose items changed, and records the new row hash of
    /// those whose items did not. Returns how many of its keys the state knew as live.
    async fn plan_chunk(&mut self, chunk: Compared) -> anyhow::Result<u64> {
        let counters = self.progress.counters.clone();
        Counters::add(&counters.rows, chunk.rows);
        Counters::add(&counters.unchanged, chunk.same);
        let mut refreshed = Vec::new();
        for Candidate {
            number,
            key,
            row_hash,
            mapped,
            entry,
        } in chunk.candidates
        {
            let mapped = match mapped {
                Ok(mapped) => mapped,
                Err(error) => {
                    Counters::add(&counters.failed, 1);
                    self.report
                        .refused(key.as_deref(), Some(number), error.code, &error.message);
                    continue;
                }
            };
            let hash = hex::encode(mapped.hash);
            let mut item = mapped.item;
            let action = match entry {
                Some(entry)
                    if !entry.gone && entry.hash == hash && entry.hub_value == mapped.hub_value =>
                {
                    Counters::add(&counters.unchanged, 1);
                    refreshed.push(Outcome::Refreshed {
                        key: mapped.key,
                        hash,
                        row_hash,
                    });
                    continue;
                }
                Some(entry) => {
                    if entry.hub_value != mapped.hub_value {
                        let matched = self.current_value(&entry, &mapped.hub_value).await?;
                        item.insert("match".into(), Value::String(matched));
                    }
                    if (entry.gone || entry.hash.is_empty()) && !item.contains_key("archived") {
                        // It was archived when it left the source and it is back, or it was in
                        // a batch of a killed run that may have archived it.
                        item.insert("archived".into(), Value::Bool(false));
                    }
                    Action::Update
                }
                None => Action::Create,
            };
            self.plan(Planned {
                key: mapped.key,
                row: Some(number),
                hub_value: mapped.hub_value,
                hash,
                row_hash: Some(row_hash),
                action,
                item,
            })
            .await?;
        }
        if !refreshed.is_empty() && !self.dry_run {
            self.state.commit(&refreshed).await?;
        }
        Ok(chunk.live_seen)
    }

    /// The hub value a row's customer is found by, for a row whose value changed to `new`:
    /// the recorded one, unless a killed run sent a rename to another value (`sent_value`)
    /// that the hub may have applied. The hub finds a rename to `new` by itself (no customer
    /// under the old value, one under the new); for a rename to a third value the customer is
    /// looked up, by its id where the state has it (which no chain of renames and kills
    /// changes), or else under the values recorded. Matching the wrong value would create
    /// the row again beside its customer.
    async fn current_value(&self, entry: &Entry, new: &str) -> anyhow::Result<String> {
        match &entry.sent_value {
            Some(sent) if sent != new => {
                let on_hub = match &entry.hub_id {
                    Some(id) => self.by_id(id).await?.map(|(value, _)| value),
                    None => self
                        .first_on_hub(std::iter::once(&entry.hub_value).chain(Some(sent)))
                        .await?
                        .map(|(value, _)| value),
                };
                Ok(on_hub.unwrap_or_else(|| entry.hub_value.clone()))
            }
            _ => Ok(entry.hub_value.clone()),
        }
    }

    /// The customer with this id and its hub key's value, `None` when the hub has no such
    /// customer (erased).
    async fn by_id(&self, id: &str) -> anyhow::Result<Option<(String, Value)>> {
        let customer = found(self.client.get_customer(id).await)?;
        Ok(customer.and_then(|customer| {
            let value = customer
                .get(self.job.sync.key.field())?
                .as_str()?
                .to_owned();
            Some((value, customer))
        }))
    }

    /// The live keys of the state that this run never read get `on_missing`.
    async fn plan_vanished(&mut self, mut reader: StateReader) -> anyhow::Result<()> {
        let hub_field = self.job.sync.key.field();
        let (action, flag) = match self.job.sync.on_missing {
            OnMissing::Delete => (Action::Delete, "delete"),
            _ => (Action::Archive, "archived"),
        };
        let mut after = String::new();
        loop {
            let from = after.clone();
            let hub_key = self.job.sync.key;
            let (back, page) = tokio::task::spawn_blocking(move || {
                let page = reader.vanished_after(&from, 1000).and_then(|page| {
                    page.into_iter()
                        .map(|vanished| {
                            let held = Push::holder(&mut reader, hub_key, &vanished)?;
                            Ok((vanished, held))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                });
                (reader, page)
            })
            .await
            .context("the state reader failed")?;
            reader = back;
            let page = page?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = last.key.clone();
            // Keys with nothing to undo, forgotten together at the end of the page.
            let mut forgotten = Vec::new();
            for (vanished, held) in page {
                let values = std::iter::once(&vanished.hub_value).chain(&vanished.sent_value);
                let created = values
                    .map(|value| hub_key.identity(value))
                    .any(|value| self.planned_creates.contains(&value));
                if held || created {
                    // Its customer is another key's now: that key's row keeps it.
                    forgotten.push(Outcome::Removed { key: vanished.key });
                    continue;
                }
                let (hub_value, action, flag) = if vanished.unsure {
                    match self.customer_on_hub(&vanished).await? {
                        Some((value, customer)) if is_ghost(&customer, &vanished) => {
                            self.progress.note(&format!(
                                "the customer of {} had been erased in the hub, and a killed \
                                 run's archive made it again: erased again",
                                vanished.key
                            ));
                            (value, Action::Delete, "delete")
                        }
                        Some((value, _)) => (value, action, flag),
                        None => {
                            // In a batch never acknowledged, not on the hub, and gone from the
                            // source: nothing to undo.
                            forgotten.push(Outcome::Removed { key: vanished.key });
                            continue;
                        }
                    }
                } else {
                    (vanished.hub_value, action, flag)
                };
                let mut item = Map::new();
                item.insert(hub_field.into(), Value::String(hub_value.clone()));
                item.insert(flag.into(), Value::Bool(true));
                self.plan(Planned {
                    key: vanished.key,
                    row: None,
                    hub_value,
                    hash: String::new(),
                    row_hash: None,
                    action,
                    item,
                })
                .await?;
            }
            if !forgotten.is_empty() && !self.dry_run {
                self.state.commit(&forgotten).await?;
            }
        }
        Ok(())
    }

    /// Whether a key that left the source pointed at a customer that another key this run read
    /// holds (under the recorded hub value, or the one a rename in flight carried).
    fn holder(
        reader: &mut StateReader,
        hub_key: HubKey,
        vanished: &Vanished,
    ) -> anyhow::Result<bool> {
        let same = |a: &str, b: &str| hub_key.identity(a) == hub_key.identity(b);
        for value in std::iter::once(&vanished.hub_value).chain(&vanished.sent_value) {
            if reader.holder_read_in_run(&vanished.key, value, same)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The hub value under which the hub has a customer whose key left the source while a
    /// batch carrying it was unacknowledged, and that customer: after a rename in flight, the
    /// value the customer with the recorded id has; else the recorded one, or the one the rename
    /// carried; `None` when the hub has none of them.
    async fn customer_on_hub(
        &self,
        vanished: &Vanished,
    ) -> anyhow::Result<Option<(String, Value)>> {
        if vanished.sent_value.is_some()
            && let Some(id) = &vanished.hub_id
        {
            return self.by_id(id).await;
        }
        self.first_on_hub(std::iter::once(&vanished.hub_value).chain(&vanished.sent_value))
            .await
    }

    /// The first of `candidates` the hub has a customer under, and that customer.
    async fn first_on_hub(
        &self,
        candidates: impl Iterator<Item = &String>,
    ) -> anyhow::Result<Option<(String, Value)>> {
        let field = self.job.sync.key.field();
        for value in candidates {
            if let Some(customer) = found(self.client.get_customer_by(field, value).await)? {
                return Ok(Some((value.clone(), customer)));
            }
        }
        Ok(None)
    }

    async fn plan(&mut self, planned: Planned) -> anyhow::Result<()> {
        if self.dry_run {
            println!("{} {}", planned.action.verb(), planned.key);
            if planned.action == Action::Create {
                let value = self.job.sync.key.identity(&planned.hub_value);
                self.planned_creates.insert(value);
            }
            let counters = &self.progress.counters;
            let counter = match planned.action {
                Action::Create => &counters.created,
                Action::Update => &counters.updated,
                Action::Archive => &counters.archived,
                Action::Delete => &counters.deleted,
            };
            Counters::add(counter, 1);
            return Ok(());
        }
        let json = RawValue::from_string(serde_json::to_string(&planned.item)?)?;
        let bytes = json.get().len() + 1;
        if !self.pending.is_empty() && self.pending_bytes + bytes > MAX_BATCH_BYTES {
            self.flush().await?;
        }
        self.pending.push(Encoded { planned, json });
        self.pending_bytes += bytes;
        if self.pending.len() >= self.job.sync.batch_size {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the pending items as one batch, waiting first while `concurrency` batches are out.
    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        while self.in_flight.len() >= self.job.sync.concurrency {
            if let Some(done) = self.in_flight.join_next().await {
                done.context("a batch task failed")??;
            }
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let idempotency_key = format!("push-{}-{}", self.run_id, self.batches);
        // Written down before the hub can apply any of it (see `crate::state`).
        self.state
            .begin_batch(
                &idempotency_key,
                batch.iter().map(|Encoded { planned, .. }| {
                    (planned.key.as_str(), planned.hub_value.as_str())
                }),
            )
            .await?;
        let sender = BatchSender {
            client: self.client.clone(),
            state: self.state.clone(),
            report: self.report.clone(),
            progress: self.progress.clone(),
            hub_key: self.job.sync.key.field(),
            idempotency_key,
        };
        self.batches += 1;
        self.in_flight.spawn(sender.send(batch));
        Ok(())
    }
}

struct BatchSender {
    client: Client,
    state: StateStore,
    report: Report,
    progress: Progress,
    hub_key: &'static str,
    /// This batch's own key: the same for the client's retries of it, and for nothing else.
    /// It also names the batch's intent in the state.
    idempotency_key: String,
}

impl BatchSender {
    /// Sends the batch, in parts if the hub finds it too large, and settles every item.
    async fn send(self, batch: Vec<Encoded>) -> anyhow::Result<()> {
        let (batch, items): (Vec<Planned>, Vec<Box<RawValue>>) = batch
            .into_iter()
            .map(|Encoded { planned, json }| (planned, json))
            .unzip();
        let mut results: Vec<Option<SyncResult>> = vec![None; items.len()];
        // Parts still to send: a range of the batch and its idempotency key.
        let mut parts = vec![(0..items.len(), self.idempotency_key.clone())];
        while let Some((range, key)) = parts.pop() {
            match self.post(&items[range.clone()], &key).await {
                Ok(response) => {
                    for result in response.results {
                        let Some(slot) = results.get_mut(range.start + result.index) else {
                            anyhow::bail!("the hub answered for item {} of a batch", result.index);
                        };
                        *slot = Some(result);
                    }
                }
                Err(error) if is_too_large(&error) && range.len() > 1 => {
                    // Halves under keys of their own: each is another request, and a retry of
                    // one must not get the other's (or the whole batch's) answer.
                    let middle = range.start + range.len() / 2;
                    parts.push((middle..range.end, format!("{key}-b")));
                    parts.push((range.start..middle, format!("{key}-a")));
                }
                Err(error) if is_too_large(&error) => {
                    // One item the hub will never take: a rejected row, not a stopped run.
                    results[range.start] = Some(SyncResult {
                        index: range.start,
                        status: ItemStatus::Failed,
                        id: None,
                        version: None,
                        error: error.problem().cloned(),
                    });
                }
                Err(error) => return Err(error).context("the hub did not take a batch"),
            }
        }
        let results = results
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .context("the hub answered for only some items of a batch")?;
        self.settle(batch, results).await
    }

    /// One `POST /v1/customers/sync` of `items` under `key`.
    async fn post(&self, items: &[Box<RawValue>], key: &str) -> Result<SyncResponse, ClientError> {
        let request = SyncRequest {
            key: self.hub_key,
            atomic: false,
            customers: items,
        };
        // Still in flight after the client's waits: an attempt of this very request whose
        // connection was lost is still running on the hub. Every item is a keyed upsert of
        // absolute content (or an archive or delete), so sending it again under another key
        // cannot apply anything twice: whichever runs second comes back unchanged.
        let response = match self.client.sync_customers(&request, key).await {
            Err(error) if error.is_idempotency_in_flight() => {
                let key = format!("{key}-again");
                self.client.sync_customers(&request, &key).await
            }
            outcome => outcome,
        }?;
        Ok(response.body)
    }

    /// Counts, reports and records the hub's answer for every item of the batch.
    /// `results` are the batch's, in its order.
    async fn settle(&self, batch: Vec<Planned>, results: Vec<SyncResult>) -> anyhow::Result<()> {
        let counters = &self.progress.counters;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut made_again = Vec::new();
        for (planned, result) in batch.into_iter().zip(results) {
            let not_found = result
                .error
                .as_ref()
                .is_some_and(|problem| problem.code.as_deref() == Some("not_found"));
            let gone_already = result.status == ItemStatus::Failed && not_found;
            if planned.action == Action::Delete
                && (result.status == ItemStatus::Deleted || gone_already)
            {
                // Deleting what is already gone (a resumed run) reaches the same end state.
                Counters::add(&counters.deleted, 1);
                outcomes.push(Outcome::Removed { key: planned.key });
                continue;
            }
            match (planned.action, result.status) {
                (_, ItemStatus::Failed) | (_, ItemStatus::Deleted) => {
                    Counters::add(&counters.failed, 1);
                    let problem = result.error.unwrap_or_default();
                    self.report
                        .rejected(Some(&planned.key), planned.row, &problem);
                }
                (Action::Archive, ItemStatus::Created) => {
                    // Erased in the hub since it was pushed: the archive, an upsert, made it
                    // again, with nothing but its key. It is erased again below.
                    made_again.push(planned);
                }
                (Action::Archive, _) => {
                    Counters::add(&counters.archived, 1);
                    outcomes.push(Outcome::Archived {
                        key: planned.key,
                        hub_value: planned.hub_value,
                    });
                }
                (_, status) => {
                    let counter = match status {
                        ItemStatus::Created => &counters.created,
                        ItemStatus::Updated => &counters.updated,
                        _ => &counters.unchanged,
                    };
                    Counters::add(counter, 1);
                    outcomes.push(Outcome::Stored {
                        key: planned.key,
                        hub_value: planned.hub_value,
                        hash: planned.hash,
                        row_hash: planned.row_hash,
                        hub_id: result.id,
                    });
                }
            }
        }
        if !made_again.is_empty() {
            outcomes.extend(self.erase_again(made_again).await?);
        }
        self.state
            .commit_batch(&self.idempotency_key, &outcomes)
            .await?;
        self.progress.tick();
        Ok(())
    }

    /// Erases the customers an archive made again (they had been erased in the hub after their
    /// rows were pushed), so the hub is left as it was: without them. Their keys are forgotten.
    /// A kill before this leaves the batch in flight: the next run finds the customer, archived,
    /// and erases it then (`is_ghost`).
    async fn erase_again(&self, made_again: Vec<Planned>) -> anyhow::Result<Vec<Outcome>> {
        let items = made_again
            .iter()
            .map(|planned| {
                let item = serde_json::json!({self.hub_key: planned.hub_value, "delete": true});
                RawValue::from_string(item.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key = format!("{}-erased", self.idempotency_key);
        let response = self
            .post(&items, &key)
            .await
            .context("the hub did not take the erasure of customers an archive made again")?;
        let mut results: Vec<Option<SyncResult>> = vec![None; made_again.len()];
        for result in response.results {
            let Some(slot) = results.get_mut(result.index) else {
                anyhow::bail!("the hub answered for item {} of a batch", result.index);
            };
            *slot = Some(result);
        }
        let results = results
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .context("the hub answered for only some items of a batch")?;
        let mut outcomes = Vec::with_capacity(made_again.len());
        for (planned, result) in made_again.into_iter().zip(results) {
            if result.status == ItemStatus::Deleted {
                outcomes.push(Outcome::Removed { key: planned.key });
            } else {
                Counters::add(&self.progress.counters.failed, 1);
                let problem = result.error.unwrap_or_default();
                self.report
                    .rejected(Some(&planned.key), planned.row, &problem);
            }
        }
        self.progress.note(&format!(
            "{} customers whose rows left the source had been erased in the hub: left erased",
            outcomes.len()
        ));
        Ok(outcomes)
    }
}

/// Whether `customer`, found under the hub value of a key that left the source while a killed
/// run's batch carried it, is one that batch's archive made: the customer the state recorded
/// for the key had been erased in the hub, so the archive, an upsert, created another with
/// nothing but the key, and the kill came before [`BatchSender::erase_again`] erased it. Such a
/// customer is archived, at its first version, and not the one recorded.
fn is_ghost(customer: &Value, vanished: &Vanished) -> bool {
    let Some(recorded) = &vanished.hub_id else {
        return false;
    };
    customer.get("id").and_then(Value::as_str) != Some(recorded.as_str())
        && customer.get("archived") == Some(&Value::Bool(true))
        && customer.get("version").and_then(Value::as_i64) == Some(1)
}

/// A customer looked up for what a killed run may have done to it: `None` when the hub has none.
fn found(lookup: Result<Value, ClientError>) -> anyhow::Result<Option<Value>> {
    match lookup {
        Ok(customer) => Ok(Some(customer)),
        Err(error) if error.status() == Some(404) => Ok(None),
        Err(error) => Err(error).context("cannot look up a customer a killed run sent"),
    }
}

/// The hub refused the request's body as too large (`413 payload_too_large`).
fn is_too_large(error: &ClientError) -> bool {
    error.status() == Some(413)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_ghost_is_an_archived_first_version_that_is_not_the_recorded_customer() {
        let vanished = |hub_id: Option<&str>| Vanished {
            key: "e1".into(),
            hub_value: "e1".into(),
            unsure: true,
            sent_value: None,
            hub_id: hub_id.map(str::to_owned),
        };
        let ghost = json!({"id": "c_new", "archived": true, "version": 1});
        assert!(is_ghost(&ghost, &vanished(Some("c_old"))));
        // The recorded customer itself, archived by the killed run.
        assert!(!is_ghost(&ghost, &vanished(Some("c_new"))));
        // Nothing recorded to tell it from: left alone.
        assert!(!is_ghost(&ghost, &vanished(None)));
        // Made again with content (an update's upsert), or changed since: not an archive's.
        let live = json!({"id": "c_new", "archived": false, "version": 1});
        assert!(!is_ghost(&live, &vanished(Some("c_old"))));
        let changed = json!({"id": "c_new", "archived": true, "version": 2});
        assert!(!is_ghost(&changed, &vanished(Some("c_old"))));
    }
}
