//! `clientele push`: source rows to the hub through `POST /v1/customers/sync`.
//!
//! Rows whose row hash the state holds are dropped unmapped (`compare`); the others are mapped,
//! and those whose item hash and hub key match the state are not sent either (the state just
//! learns their new row hash). Changed rows go out in batches of `batch_size`, `concurrency` at a time, each batch with
//! an `Idempotency-Key` derived from the job and the batch's bytes. The state records a batch's
//! outcomes only once the hub answered, in one transaction. After a kill, the rows of batches
//! that were acknowledged but not recorded are sent again: keyed upserts of the same content come
//! back `unchanged` (or the hub replays the first answer when the batch is byte-for-byte the same,
//! which it is whenever the batches before it were full), so nothing is applied twice.
//!
//! Keys that left the source are found only when the count of known keys seen in this run falls
//! short of the state's live keys; then a second pass over the source's keys marks them seen,
//! and the rest get `on_missing`.

use std::sync::Arc;

use anyhow::Context;
use clientele_client::{Client, ItemStatus, SyncRequest, SyncResponse};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use crate::compare::{Candidate, Compared};
use crate::job::{Job, OnMissing};
use crate::mapping::{Mapper, RowHash};
use crate::progress::{Counters, Progress};
use crate::report::Report;
use crate::source::Source;
use crate::state::{Outcome, StateStore};

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
    job_id: String,
    /// Tells this run's fallback idempotency keys from every other run's.
    run_id: String,
    in_flight: JoinSet<anyhow::Result<()>>,
    pending: Vec<Planned>,
}

impl Push {
    pub async fn new(
        job: Arc<Job>,
        client: Client,
        report: Report,
        progress: Progress,
        dry_run: bool,
    ) -> anyhow::Result<Push> {
        let state = StateStore::open(&job.state_path()).await?;
        let section = job.source()?;
        // Batches of different jobs never share idempotency keys, even with equal contents.
        let job_id = hex::encode(
            &Sha256::digest(format!(
                "{}\n{}\n{}\n{}\n{}",
                job.hub.url,
                section.url,
                section.table.as_deref().unwrap_or_default(),
                section.query.as_deref().unwrap_or_default(),
                job.state_path().display()
            ))[..12],
        );
        Ok(Push {
            job,
            client,
            state,
            report,
            progress,
            dry_run,
            job_id,
            run_id: run_id(),
            in_flight: JoinSet::new(),
            pending: Vec::new(),
        })
    }

    pub async fn run(mut self) -> anyhow::Result<()> {
        let source = Source::from_job(&self.job)?;
        let mapper =
            Arc::new(Mapper::new(&self.job, &self.job.source()?.key).map_err(anyhow::Error::msg)?);
        let live_before = self.state.live_count().await?;
        let mut known_seen = 0u64;
        let mut chunks =
            crate::compare::spawn(source.stream(), mapper.clone(), self.state.reader()?);
        while let Some(chunk) = chunks.recv().await {
            known_seen += self.plan_chunk(chunk?).await?;
            self.progress.tick();
        }
        if self.job.sync.on_missing != OnMissing::Ignore && known_seen < live_before {
            self.plan_vanished(&source, &mapper).await?;
        }
        self.flush().await?;
        while let Some(done) = self.in_flight.join_next().await {
            done.context("a batch task failed")??;
        }
        self.report.flush();
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
                        item.insert("match".into(), Value::String(entry.hub_value.clone()));
                    }
                    if entry.gone && !item.contains_key("archived") {
                        // It was archived when it left the source; it is back.
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

    /// Second pass: every key of the source is marked seen; live keys left unseen get `on_missing`.
    async fn plan_vanished(&mut self, source: &Source, mapper: &Mapper) -> anyhow::Result<()> {
        self.state.clear_seen().await?;
        let mut chunks = source.stream();
        while let Some(chunk) = chunks.recv().await {
            let keys: Vec<String> = chunk?.iter().filter_map(|row| mapper.key_of(row)).collect();
            self.state.add_seen(&keys).await?;
        }
        let hub_field = self.job.sync.key.field();
        let (action, flag) = match self.job.sync.on_missing {
            OnMissing::Delete => (Action::Delete, "delete"),
            _ => (Action::Archive, "archived"),
        };
        let mut after = String::new();
        loop {
            let page = self.state.vanished_after(&after, 1000).await?;
            let Some((last, _, _)) = page.last() else {
                break;
            };
            after = last.clone();
            for (key, hub_value, pending) in page {
                if pending && !self.customer_exists(&hub_value).await? {
                    // Sent once, never acknowledged, and gone from the source: nothing to undo.
                    if !self.dry_run {
                        self.state.commit(&[Outcome::Removed { key }]).await?;
                    }
                    continue;
                }
                let mut item = Map::new();
                item.insert(hub_field.into(), Value::String(hub_value.clone()));
                item.insert(flag.into(), Value::Bool(true));
                self.plan(Planned {
                    key,
                    row: None,
                    hub_value,
                    hash: String::new(),
                    row_hash: None,
                    action,
                    item,
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn customer_exists(&self, hub_value: &str) -> anyhow::Result<bool> {
        let path = format!(
            "/v1/customers/{}/{}",
            self.job.sync.key.field(),
            clientele_client::encode_segment(hub_value)
        );
        match self
            .client
            .request::<Value>(reqwest::Method::GET, &path, None, None)
            .await
        {
            Ok(_) => Ok(true),
            Err(error) if error.status() == Some(404) => Ok(false),
            Err(error) => Err(error).context("cannot look up a customer that left the source"),
        }
    }

    async fn plan(&mut self, planned: Planned) -> anyhow::Result<()> {
        if self.dry_run {
            println!("{} {}", planned.action.verb(), planned.key);
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
        self.pending.push(planned);
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
        let first_sends: Vec<Outcome> = batch
            .iter()
            .filter(|planned| planned.action == Action::Create)
            .map(|planned| Outcome::Pending {
                key: planned.key.clone(),
                hub_value: planned.hub_value.clone(),
            })
            .collect();
        if !first_sends.is_empty() {
            self.state.commit(&first_sends).await?;
        }
        let sender = BatchSender {
            client: self.client.clone(),
            state: self.state.clone(),
            report: self.report.clone(),
            progress: self.progress.clone(),
            hub_key: self.job.sync.key.field(),
            job_id: self.job_id.clone(),
            run_id: self.run_id.clone(),
        };
        self.in_flight.spawn(sender.send(batch));
        Ok(())
    }
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let digest = Sha256::digest(format!("{nanos}/{}", std::process::id()));
    hex::encode(&digest[..8])
}

struct BatchSender {
    client: Client,
    state: StateStore,
    report: Report,
    progress: Progress,
    hub_key: &'static str,
    job_id: String,
    run_id: String,
}

impl BatchSender {
    async fn send(self, batch: Vec<Planned>) -> anyhow::Result<()> {
        let mut items = Vec::with_capacity(batch.len());
        let mut digest = Sha256::new();
        digest.update(self.job_id.as_bytes());
        for planned in &batch {
            let raw = RawValue::from_string(serde_json::to_string(&planned.item)?)?;
            digest.update(b"\n");
            digest.update(raw.get().as_bytes());
            items.push(raw);
        }
        let idempotency_key = format!("push-{}", hex::encode(&digest.finalize()[..20]));
        let request = SyncRequest {
            key: self.hub_key,
            atomic: false,
            customers: &items,
        };
        // A killed run leaves its last batches claimed on the hub until the claim's lease ends.
        // Every item is a keyed upsert of absolute content (or an archive or delete), so applying
        // the batch again under a fresh key cannot duplicate anything: it comes back unchanged.
        // The fallback key is this run's own, so no claim of an earlier run can block it.
        let response = match self.client.sync_customers(&request, &idempotency_key).await {
            Err(error) if error.is_idempotency_in_flight() => {
                let key = format!("{idempotency_key}-{}", self.run_id);
                self.client.sync_customers(&request, &key).await
            }
            outcome => outcome,
        }
        .context("the hub did not take a batch")?;
        self.settle(batch, response.body).await
    }

    /// Counts, reports and records the hub's answer for every item of the batch.
    async fn settle(&self, batch: Vec<Planned>, response: SyncResponse) -> anyhow::Result<()> {
        let counters = &self.progress.counters;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut results = response.results;
        results.sort_by_key(|result| result.index);
        if results.len() != batch.len() {
            anyhow::bail!(
                "the hub answered {} results for a batch of {}",
                results.len(),
                batch.len()
            );
        }
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
                (Action::Archive, _) => {
                    Counters::add(&counters.archived, 1);
                    outcomes.push(Outcome::Archived { key: planned.key });
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
        self.state.commit(&outcomes).await?;
        self.progress.tick();
        Ok(())
    }
}
