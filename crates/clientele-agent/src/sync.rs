//! `clientele sync`: both ways between the hub and the mirror table.
//!
//! The shadow table holds, per row, the version and content hash of the hub's copy as the agent
//! last wrote or read it. A row whose content hash differs from its shadow was edited locally; a
//! row without an id was inserted locally. A run first follows the feed: an event whose version
//! the shadow already holds is the agent's own write coming back and is skipped (no echo); an
//! event for a row edited on both sides is settled by `conflict`. Then local edits go up with
//! `If-Match` on the shadow's version (a hub change that slipped in between is a 412, settled
//! the same way) and local inserts are created; what the hub answers is written back with its
//! new shadow, so the next run skips those events.
//!
//! Idempotency keys: an edit's key is the customer id, the version it is sent against and the
//! body. The hub's versions only grow, so that triple names one request against one state of the
//! customer: the same key again is the same request (a retry, or a resend after a kill before the
//! answer was written back), whose replay is right. A create has no such anchor (a row's place
//! and content can recur: the same row is inserted again after the hub erased
//! the first one), so its key is made fresh for each create and recorded in the mirror database
//! until the answer is written back (`Mirror::create_key`): only a create repeated after a kill
//! reuses it, and gets the hub's replay rather than a twin; a row edited since is bound to the
//! customer its recorded request made, and its edit sent as an edit. Such creates are resumed
//! before the feed comes down, so the hub's copy of one is never pulled as a second row.
//!
//! An edit is recorded too before it is sent (`Mirror::record_edit`): a run killed after the hub
//! applied it, before its answer was written back, would otherwise take the hub's copy of its
//! own edit for a hub change, and the row's edits since (even one back to the old content) would
//! give way to it. The next run sends the recorded request again, under its key, before the
//! feed comes down: the hub replays its answer (or applies it now), which becomes the row's
//! shadow with the row's edits since laid over it.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Context;
use clientele_client::{Change, ChangeType, Client, ClientError};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::fields::writable_part;
use crate::job::{Conflict, Job};
use crate::mirror::{LocalRow, Mirror, Shadow, content_hash};
use crate::progress::{Counters, Progress};
use crate::pull::{PAGE, end_resync, last_per_customer, read_list, shadows_of};
use crate::report::Report;

pub async fn run(
    job: &Arc<Job>,
    client: &Client,
    report: &Report,
    progress: &Progress,
    dry_run: bool,
) -> anyhow::Result<()> {
    let section = job.mirror()?;
    let url = job.database_url(&section.url);
    // A dry run changes nothing, not even by creating the mirror.
    let mirror = Mirror::open_for(&url, &section.table, dry_run).await?;
    let syncer = Syncer {
        run_id: crate::run_id(),
        mirror,
        client: client.clone(),
        report: report.clone(),
        progress: progress.clone(),
        conflict: section.conflict,
        dry_run,
    };
    // A create a killed run sent is finished before the feed comes down, so that the hub's copy
    // of it is our own write coming back, not a customer the mirror lacks.
    let resumed = if dry_run {
        HashSet::new()
    } else {
        syncer.resume_edits().await?;
        syncer.resume_creates().await?
    };
    let planned_down = syncer.pull_phase().await?;
    syncer.push_phase(&resumed, &planned_down).await?;
    report.flush();
    Ok(())
}

struct Syncer {
    /// Makes this run's create keys differ from every other run's.
    run_id: String,
    mirror: Mirror,
    client: Client,
    report: Report,
    progress: Progress,
    conflict: Conflict,
    dry_run: bool,
}

/// Which side's copy a conflict keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Winner {
    Hub,
    Local,
}

/// A local edit to send.
struct Edit {
    id: String,
    rowref: String,
    fields: Map<String, Value>,
    base_version: i64,
}

impl Syncer {
    fn counters(&self) -> &Counters {
        &self.progress.counters
    }

    fn settle(&self, local: &Map<String, Value>, hub: &Map<String, Value>) -> Winner {
        match self.conflict {
            Conflict::HubWins => Winner::Hub,
            Conflict::SourceWins => Winner::Local,
            Conflict::NewestWins => {
                let stamp = local.get("updated_at").filter(|stamp| !stamp.is_null());
                let local_at = stamp.and_then(parse_time);
                if let (Some(stamp), None) = (stamp, local_at) {
                    // Said aloud: the local edit is about to give way.
                    self.progress.note(&format!(
                        "the local row of {} has updated_at {stamp}, which is not a time: the \
                         hub's copy wins (write RFC 3339, e.g. 2026-12-07T13:45:00Z)",
                        hub.get("id")
                            .and_then(Value::as_str)
                            .unwrap_or("a customer"),
                    ));
                }
                let hub_at = hub.get("updated_at").and_then(parse_time);
                match (local_at, hub_at) {
                    (Some(local_at), Some(hub_at)) if local_at > hub_at => Winner::Local,
                    _ => Winner::Hub,
                }
            }
        }
    }

    /// Hub changes down, page by page, each page with its feed position in one transaction.
    /// A position the hub no longer keeps (410 `cursor_expired`) is recovered by a resync from
    /// the customer list ([`Syncer::resync`]).
    /// A dry run writes nothing, so it returns the ids whose hub copy a real run would have
    /// written (and whose local edit it would thereby have settled), for the plan of the push
    /// phase to follow the same rule; a real run returns none.
    async fn pull_phase(&self) -> anyhow::Result<HashSet<String>> {
        let mut planned_down = HashSet::new();
        let mut position = self.mirror.position().await?;
        loop {
            let page = match self.client.changes(position, PAGE, None).await {
                Ok(page) => page,
                Err(error) if error.status() == Some(410) => {
                    eprintln!(
                        "sync: the hub no longer has changes after {position}; reading every \
                         customer"
                    );
                    position = self.resync(&mut planned_down).await?;
                    continue;
                }
                Err(error) => return Err(error).context("cannot read the change feed"),
            };
            if page.data.is_empty() {
                return Ok(planned_down);
            }
            Counters::add(&self.counters().rows, page.data.len() as u64);
            let changes = last_per_customer(&page.data, |change| &change.customer_id);
            self.apply_hub_changes(&changes, Some(page.next_after), &mut planned_down)
                .await?;
            position = page.next_after;
            self.progress.tick();
        }
    }

    /// Reads every customer from the list as if each were a change (so the no-echo rule and
    /// the conflict policy apply as to feed events), then ends the resync ([`end_resync`]):
    /// rows the hub no longer has deleted, the position the list's. Returns that position.
    async fn resync(&self, planned_down: &mut HashSet<String>) -> anyhow::Result<i64> {
        let (position, listed) = read_list(&self.client, async |customers: Vec<Value>| {
            Counters::add(&self.counters().rows, customers.len() as u64);
            let changes: Vec<Change> = customers
                .into_iter()
                .filter_map(|customer| {
                    Some(Change {
                        seq: 0,
                        kind: ChangeType::Created,
                        customer_id: customer["id"].as_str()?.to_owned(),
                        external_id: None,
                        version: customer["version"].as_i64(),
                        at: None,
                        customer: Some(customer),
                    })
                })
                .collect();
            let changes: Vec<&Change> = changes.iter().collect();
            self.apply_hub_changes(&changes, None, planned_down).await?;
            self.progress.tick();
            Ok(())
        })
        .await?;
        if self.dry_run {
            println!("resync: rows the hub no longer has would be deleted");
        } else {
            let deleted = end_resync(&self.mirror, &listed, position).await?;
            Counters::add(&self.counters().deleted, deleted);
        }
        Ok(position)
    }

    /// Hub changes (the last per customer) into the mirror, with the feed `position` after
    /// them when there is one, in one transaction: each skipped when the shadow already holds
    /// its version (no echo), settled by the conflict policy when the row was edited locally
    /// too, and deleted when the hub erased the customer.
    async fn apply_hub_changes(
        &self,
        changes: &[&Change],
        position: Option<i64>,
        planned_down: &mut HashSet<String>,
    ) -> anyhow::Result<()> {
        let ids: Vec<&str> = changes
            .iter()
            .map(|change| change.customer_id.as_str())
            .collect();
        let shadows = self.mirror.shadows(&ids).await?;
        let locals = self.mirror.rows_by_id(&ids).await?;
        let mut deleted = Vec::new();
        let mut upserts: Vec<&Value> = Vec::new();
        let mut kept_local: Vec<(String, Shadow)> = Vec::new();
        for change in changes {
            let id = change.customer_id.as_str();
            let shadow = shadows.get(id);
            if let (Some(shadow), Some(version)) = (shadow, change.version)
                && shadow.version >= version
            {
                // Our own write (or one we already hold) coming back: no echo.
                continue;
            }
            let local = locals.get(id);
            let edited = match (local, shadow) {
                (Some(local), Some(shadow)) => content_hash(&local.fields) != shadow.hash,
                _ => false,
            };
            let customer = match (&change.kind, &change.customer) {
                (ChangeType::Deleted, _) | (_, None) => {
                    // An erasure in the hub is final, edited locally or not. A change
                    // without its document is of a customer erased since (its deletion
                    // follows in the feed, and is counted there).
                    deleted.push(id);
                    if change.kind == ChangeType::Deleted {
                        Counters::add(&self.counters().deleted, 1);
                    }
                    if self.dry_run {
                        println!("delete {id}");
                        planned_down.insert(id.to_owned());
                    }
                    continue;
                }
                (_, Some(customer)) => customer,
            };
            let winner = match (edited, local, customer.as_object()) {
                (true, Some(local), Some(hub)) => self.settle(&local.fields, hub),
                _ => Winner::Hub,
            };
            if winner == Winner::Local {
                // Keep the local edit; it goes up against the hub's new version.
                let old_hash = shadow.map(|shadow| shadow.hash.clone()).unwrap_or_default();
                kept_local.push((
                    id.to_owned(),
                    Shadow {
                        version: change.version.unwrap_or(0),
                        hash: old_hash,
                    },
                ));
                continue;
            }
            let counter = if change.kind == ChangeType::Created && local.is_none() {
                &self.counters().created
            } else {
                &self.counters().updated
            };
            Counters::add(counter, 1);
            if self.dry_run {
                println!("down {id}");
                planned_down.insert(id.to_owned());
            }
            upserts.push(customer);
        }
        if !self.dry_run {
            let mut tx = self.mirror.begin().await?;
            self.mirror.delete(&mut tx, &deleted).await?;
            self.mirror.upsert(&mut tx, &upserts).await?;
            let mut shadows = shadows_of(&upserts);
            shadows.extend(kept_local);
            self.mirror.set_shadows(&mut tx, &shadows).await?;
            if let Some(position) = position {
                self.mirror.set_position(&mut tx, position).await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Finishes the edits a killed run left pending (see the module doc): each is sent again as
    /// it was, under its key. The hub's copy it answers (replayed, or made now) becomes the
    /// row's shadow, and the row takes it with the edits made since the send laid over it, so
    /// those are what the push phase sends. A refusal (412: the hub moved on without it; 404;
    /// 422) says it was never applied: the row is left as it is, for the usual rules.
    async fn resume_edits(&self) -> anyhow::Result<()> {
        for pending in self.mirror.pending_edits().await? {
            let key = idempotency_key("edit", &pending.id, pending.base_version, &pending.body);
            let answer = self
                .client
                .patch_customer(&pending.id, &pending.body, Some(pending.base_version), &key)
                .await;
            let row = self.mirror.row_at(&pending.rowref).await?;
            let mut tx = self.mirror.begin().await?;
            match answer {
                Ok(response) => {
                    // A row deleted locally since is left to come back with the feed.
                    let row = row.filter(|row| row.fields.get("id") == response.body.get("id"));
                    if let Some(row) = row {
                        let bound = with_edits_since(&response.body, &row.fields, &pending.body);
                        self.mirror
                            .overwrite_row(&mut tx, &row.rowref, &bound)
                            .await?;
                        self.mirror
                            .set_shadows(&mut tx, &shadows_of(&[&response.body]))
                            .await?;
                    }
                }
                Err(error) if is_refusal(&error) => {}
                Err(error) => {
                    return Err(error).context("cannot finish an edit a killed run sent");
                }
            }
            self.mirror.forget_edit(&mut tx, &pending.id).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Finishes the creates a killed run left pending (the row still where it was, without an
    /// id): each is sent again as it was, under its key, and the row bound to the customer it
    /// made ([`Syncer::finish_pending`]). Returns the rows so handled, which the push phase
    /// creates no more.
    async fn resume_creates(&self) -> anyhow::Result<HashSet<String>> {
        let mut resumed = HashSet::new();
        for pending in self.mirror.pending_creates().await? {
            let row = match self.mirror.row_at(&pending.rowref).await? {
                Some(row) => Some(row),
                // Recorded by an earlier agent under a row reference of another form (a
                // PostgreSQL `ctid`): the row is the one still as it was sent.
                None if !self.mirror.is_row_ref(&pending.rowref) => self
                    .mirror
                    .rows_without_id()
                    .await?
                    .into_iter()
                    .find(|row| create_request(&row.fields).1 == pending.hash),
                None => None,
            };
            let Some(row) = row.filter(|row| row.fields.get("id").is_none_or(Value::is_null))
            else {
                // The row is gone or has an id: nothing of it is left to create.
                self.forget_create(&pending.rowref).await?;
                continue;
            };
            Counters::add(&self.counters().rows, 1);
            let (body, hash) = create_request(&row.fields);
            if row.rowref != pending.rowref {
                self.forget_create(&pending.rowref).await?;
                self.mirror
                    .create_key(&row.rowref, &hash, &pending.key, &body)
                    .await?;
            }
            resumed.insert(row.rowref.clone());
            match pending.body {
                _ if hash == pending.hash => {
                    let sent = pending.body.unwrap_or(body);
                    self.finish_pending(row, &pending.key, &sent, false).await?;
                }
                // The row, edited since: a row's reference is never another row's.
                Some(sent) => self.finish_pending(row, &pending.key, &sent, true).await?,
                // An edited row whose request an earlier agent did not keep (sent again under
                // its key with other content, it would be refused as a reused key): created as
                // it is now, under a key of its own.
                None => self.send_insert(row).await?,
            }
        }
        Ok(resumed)
    }

    /// A create a killed run sent (`sent`, under `key`), sent again: the hub replays what it did
    /// or does it now, and the row is bound to that customer, keeping its edits if it was
    /// `edited` since. If the hub forgot the key (it keeps them 24 hours) and the create had
    /// been applied, its unique key is taken (409 `duplicate_key`): the customer holding every
    /// unique key the create set is the row's. A create refused made nothing: an edited
    /// row is created as it is now, an unedited one reported. Answers that refuse nothing
    /// (429, a create still in flight) keep it pending for the next run.
    async fn finish_pending(
        &self,
        row: LocalRow,
        key: &str,
        sent: &Value,
        edited: bool,
    ) -> anyhow::Result<()> {
        let customer = match self.client.create_customer(sent, key).await {
            Ok(response) => response.body,
            Err(error) => match self.holder_of_keys(&error, sent).await? {
                Some(customer) => customer,
                None if is_refusal(&error) && edited => {
                    // Created as it is now, under a key of its own (its content is not the
                    // refused create's). Boxed: `send_insert` may finish a pending create.
                    return Box::pin(self.send_insert(row)).await;
                }
                None => {
                    let rejected = self.rejected(&row.fields, &row.rowref, error);
                    if rejected.is_ok() {
                        self.forget_create(&row.rowref).await?;
                    }
                    return rejected;
                }
            },
        };
        Counters::add(&self.counters().created, 1);
        self.bind_created(row, &customer, sent, edited).await
    }

    /// The customer holding the unique key a create was refused for (409 `duplicate_key`), if
    /// it holds every unique key the create set: a customer another system made with one of
    /// them and another value of the next is not the row's.
    async fn holder_of_keys(
        &self,
        error: &ClientError,
        sent: &Value,
    ) -> anyhow::Result<Option<Value>> {
        let ClientError::Problem {
            status: 409,
            problem,
            ..
        } = error
        else {
            return Ok(None);
        };
        let field = problem.errors.first().and_then(|e| e.field.as_deref());
        let (Some(field), Some("duplicate_key")) = (field, problem.code.as_deref()) else {
            return Ok(None);
        };
        let Some(value) = sent.get(field).and_then(Value::as_str) else {
            return Ok(None);
        };
        let holder = match self.client.get_customer_by(field, value).await {
            Ok(customer) => customer,
            Err(ClientError::Problem { status: 404, .. }) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let holds_every_key = UNIQUE_KEYS.iter().all(|key| {
            let Some(sent) = sent.get(*key).and_then(Value::as_str) else {
                // A key the create did not set may have been given since.
                return true;
            };
            let held = holder.get(*key).and_then(Value::as_str);
            // As the hub compares them (emails case-insensitively).
            let identity = |value: &str| match key.parse::<clientele_domain::CustomerKey>() {
                Ok(customer_key) => customer_key.normalize(value),
                Err(()) => value.to_owned(),
            };
            held.is_some_and(|held| identity(held) == identity(sent))
        });
        Ok(holds_every_key.then_some(holder))
    }

    /// Binds the local row of a finished create to the hub's `customer`. A row `edited` since
    /// the create was `sent` takes the hub's copy with its edits (the fields where it differs
    /// from what was sent) over it, and the hub's copy as its shadow, so its edits are what the
    /// push phase sends. An unedited row is what the create sent, so the hub's copy (the same
    /// or newer) replaces it. Either way a copy of the customer a `pull` brought down in
    /// between gives way: one row remains.
    async fn bind_created(
        &self,
        row: LocalRow,
        customer: &Value,
        sent: &Value,
        edited: bool,
    ) -> anyhow::Result<()> {
        let Some(id) = customer["id"].as_str() else {
            anyhow::bail!("the hub answered a create without an id");
        };
        let pulled = self
            .mirror
            .rows_by_id(&[id])
            .await?
            .remove(id)
            .filter(|pulled| pulled.rowref != row.rowref);
        let mut tx = self.mirror.begin().await?;
        match (edited, pulled) {
            (true, pulled) => {
                if let Some(pulled) = pulled {
                    self.mirror.delete_at(&mut tx, &pulled.rowref).await?;
                }
                let bound = with_edits_since(customer, &row.fields, sent);
                self.mirror
                    .overwrite_row(&mut tx, &row.rowref, &bound)
                    .await?;
                self.mirror
                    .set_shadows(&mut tx, &shadows_of(&[customer]))
                    .await?;
            }
            (false, Some(_)) => self.mirror.delete_at(&mut tx, &row.rowref).await?,
            (false, None) => self.write_back_in(&mut tx, &row.rowref, customer).await?,
        }
        self.mirror.forget_create(&mut tx, &row.rowref).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn forget_create(&self, rowref: &str) -> anyhow::Result<()> {
        let mut tx = self.mirror.begin().await?;
        self.mirror.forget_create(&mut tx, rowref).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Local inserts and edits up (except the rows `resumed` already created, and, in a dry
    /// run, the edits the pull phase's plan settled for the hub's copy), a page of the mirror
    /// table at a time: memory holds one page, however many rows changed.
    async fn push_phase(
        &self,
        resumed: &HashSet<String>,
        planned_down: &HashSet<String>,
    ) -> anyhow::Result<()> {
        let mut after = 0;
        loop {
            let page = self.mirror.scan_page(after, SCAN_PAGE_ROWS).await?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = last.rowref.parse().unwrap_or(i64::MAX);
            self.push_page(page, resumed, planned_down).await?;
        }
    }

    /// The local inserts and edits of one page of the mirror table, sent up.
    async fn push_page(
        &self,
        page: Vec<(LocalRow, Option<Shadow>)>,
        resumed: &HashSet<String>,
        planned_down: &HashSet<String>,
    ) -> anyhow::Result<()> {
        let mut inserts: Vec<LocalRow> = Vec::new();
        let mut edits: Vec<Edit> = Vec::new();
        let mut first_seen: Vec<(String, Shadow)> = Vec::new();
        for (row, shadow) in page {
            let id = row
                .fields
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned);
            match (id, shadow) {
                (None, _) if resumed.contains(&row.rowref) => {}
                (None, _) => inserts.push(row),
                (Some(id), Some(shadow)) => {
                    if content_hash(&row.fields) != shadow.hash && !planned_down.contains(&id) {
                        edits.push(Edit {
                            id,
                            rowref: row.rowref,
                            fields: row.fields,
                            base_version: shadow.version,
                        });
                    }
                }
                (Some(id), None) => {
                    // A row pulled before sync kept shadows: take it as the hub's copy.
                    let version = row
                        .fields
                        .get("version")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    first_seen.push((
                        id,
                        Shadow {
                            version,
                            hash: content_hash(&row.fields),
                        },
                    ));
                }
            }
        }
        if !first_seen.is_empty() && !self.dry_run {
            let mut tx = self.mirror.begin().await?;
            self.mirror.set_shadows(&mut tx, &first_seen).await?;
            tx.commit().await?;
        }
        for edit in edits {
            Counters::add(&self.counters().rows, 1);
            if self.dry_run {
                println!("up {}", edit.id);
                Counters::add(&self.counters().updated, 1);
                continue;
            }
            self.send_edit(edit).await?;
            self.progress.tick();
        }
        for row in inserts {
            Counters::add(&self.counters().rows, 1);
            if self.dry_run {
                println!("create row {}", row.rowref);
                Counters::add(&self.counters().created, 1);
                continue;
            }
            self.send_insert(row).await?;
            self.progress.tick();
        }
        Ok(())
    }

    async fn send_edit(&self, edit: Edit) -> anyhow::Result<()> {
        let body = Value::Object(writable_part(&edit.fields));
        let mut expected = edit.base_version;
        // At most twice: a 412 settled for the local side is retried once against the new version.
        for _ in 0..2 {
            let key = idempotency_key("edit", &edit.id, expected, &body);
            self.mirror
                .record_edit(&edit.id, &edit.rowref, expected, &body)
                .await?;
            match self
                .client
                .patch_customer(&edit.id, &body, Some(expected), &key)
                .await
            {
                Ok(response) => {
                    let unchanged = response.body["version"].as_i64() == Some(expected);
                    let counter = if unchanged {
                        &self.counters().unchanged
                    } else {
                        &self.counters().updated
                    };
                    Counters::add(counter, 1);
                    return self.finish_edit(&edit, Some(&response.body)).await;
                }
                Err(ClientError::Problem { status: 412, .. }) => {
                    let hub = self.client.get_customer(&edit.id).await?;
                    let winner = hub
                        .as_object()
                        .map(|hub| self.settle(&edit.fields, hub))
                        .unwrap_or(Winner::Hub);
                    match (winner, hub["version"].as_i64()) {
                        (Winner::Local, Some(version)) => expected = version,
                        _ => {
                            Counters::add(&self.counters().updated, 1);
                            return self.finish_edit(&edit, Some(&hub)).await;
                        }
                    }
                }
                Err(ClientError::Problem { status: 404, .. }) => {
                    // Erased in the hub: the erasure wins.
                    Counters::add(&self.counters().deleted, 1);
                    return self.finish_edit(&edit, None).await;
                }
                Err(error) => {
                    if is_refusal(&error) {
                        // An answer too: nothing was applied.
                        self.forget_edit(&edit.id).await?;
                    }
                    return self.rejected(&edit.fields, &edit.rowref, error);
                }
            }
        }
        // Refused twice by a hub that moved on (412): nothing was applied; the next run tries
        // again against what it pulls.
        self.forget_edit(&edit.id).await
    }

    async fn forget_edit(&self, id: &str) -> anyhow::Result<()> {
        let mut tx = self.mirror.begin().await?;
        self.mirror.forget_edit(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Settles an edit the hub answered: the row takes the hub's copy `customer` as its content
    /// and shadow, or is deleted with `None` (erased in the hub), and the edit is pending no
    /// more, in one transaction.
    async fn finish_edit(&self, edit: &Edit, customer: Option<&Value>) -> anyhow::Result<()> {
        let mut tx = self.mirror.begin().await?;
        match customer {
            Some(customer) => self.write_back_in(&mut tx, &edit.rowref, customer).await?,
            None => self.mirror.delete(&mut tx, &[edit.id.as_str()]).await?,
        }
        self.mirror.forget_edit(&mut tx, &edit.id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Creates a local row in the hub, under a key recorded before it is sent (a kill before
    /// the answer is written back leaves the create pending, for the next run to finish).
    async fn send_insert(&self, row: LocalRow) -> anyhow::Result<()> {
        let (body, hash) = create_request(&row.fields);
        // A key no other create shares: this run's, for this row.
        let fresh = format!("sync-create-{}-{}", self.run_id, row.rowref);
        let key = self
            .mirror
            .create_key(&row.rowref, &hash, &fresh, &body)
            .await?;
        if key != fresh {
            // This very row and content were sent before, and the answer lost.
            return self.finish_pending(row, &key, &body, false).await;
        }
        match self.client.create_customer(&body, &key).await {
            Ok(response) => {
                Counters::add(&self.counters().created, 1);
                let mut tx = self.mirror.begin().await?;
                self.write_back_in(&mut tx, &row.rowref, &response.body)
                    .await?;
                self.mirror.forget_create(&mut tx, &row.rowref).await?;
                tx.commit().await?;
                Ok(())
            }
            Err(error) => {
                let rejected = self.rejected(&row.fields, &row.rowref, error);
                if rejected.is_ok() {
                    // A refusal is an answer too: the row is tried afresh next run.
                    self.forget_create(&row.rowref).await?;
                }
                rejected
            }
        }
    }

    /// Writes the hub's answer into the row and records it as the shadow.
    async fn write_back_in(
        &self,
        tx: &mut sqlx::AnyConnection,
        rowref: &str,
        customer: &Value,
    ) -> anyhow::Result<()> {
        self.mirror.overwrite_row(tx, rowref, customer).await?;
        self.mirror.set_shadows(tx, &shadows_of(&[customer])).await
    }

    /// Reports a local row the hub refused, named by its id (or, not created yet, its first
    /// unique key) and its row reference; an error that refuses no row stops the run.
    fn rejected(
        &self,
        fields: &Map<String, Value>,
        rowref: &str,
        error: ClientError,
    ) -> anyhow::Result<()> {
        match error {
            ClientError::Problem { ref problem, .. } if is_refusal(&error) => {
                Counters::add(&self.counters().failed, 1);
                let key = std::iter::once("id")
                    .chain(UNIQUE_KEYS)
                    .find_map(|field| fields.get(field).and_then(Value::as_str));
                self.report.rejected(key, rowref.parse().ok(), problem);
                Ok(())
            }
            error => Err(error.into()),
        }
    }
}

/// The hub's copy of a customer a request `sent` by a killed run made, as its local row now
/// should be: with the fields the row changed since (those where it differs from what was
/// sent) laid over it, so that they are what goes up next.
fn with_edits_since(customer: &Value, row: &Map<String, Value>, sent: &Value) -> Value {
    let mut bound = customer.as_object().cloned().unwrap_or_default();
    let edits = writable_part(row)
        .into_iter()
        .filter(|(field, value)| sent.get(field).unwrap_or(&Value::Null) != value);
    bound.extend(edits);
    Value::Object(bound)
}

/// Rows of the mirror table `sync` holds at once while it looks for local changes.
const SCAN_PAGE_ROWS: i64 = 1000;

/// The unique keys a customer may be found by.
const UNIQUE_KEYS: [&str; 3] = ["external_id", "email", "username"];

/// Whether the hub refused the request itself, which is reported and never stops a run: a 4xx
/// other than for the key's credentials, its rate (429, after the client's retries) or its
/// idempotency key (in flight, or used with another request), which say nothing of the row.
fn is_refusal(error: &ClientError) -> bool {
    let ClientError::Problem {
        status, problem, ..
    } = error
    else {
        return false;
    };
    (400..500).contains(status)
        && ![401, 403, 429].contains(status)
        && !matches!(
            problem.code.as_deref(),
            Some("idempotency_in_flight" | "idempotency_key_reused")
        )
}

/// The body of the create of a local row (its writable fields that have a value) and the hash
/// its pending create is recorded under.
pub fn create_request(fields: &Map<String, Value>) -> (Value, String) {
    let body: Map<String, Value> = writable_part(fields)
        .into_iter()
        .filter(|(_, value)| !value.is_null())
        .collect();
    let body = Value::Object(body);
    let hash = hex::encode(&Sha256::digest(body.to_string().as_bytes())[..16]);
    (body, hash)
}

fn idempotency_key(kind: &str, row: &str, version: i64, body: &Value) -> String {
    let mut digest = Sha256::new();
    digest.update(format!("{kind}\n{row}\n{version}\n{body}").as_bytes());
    format!("sync-{}", hex::encode(&digest.finalize()[..20]))
}

/// A row's `updated_at` as a local edit stamps it: RFC 3339, or as databases write times
/// (SQLite's `datetime('now')`, `2026-12-07 13:45:00`, in UTC; PostgreSQL's `now()::text`,
/// `2026-12-07 13:45:00.123456+00`), or Unix seconds, as a number or as its text (the mirror's
/// `updated_at` column is text, so a number written to it is read back as digits).
fn parse_time(stamp: &Value) -> Option<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    let unix = |seconds: f64| {
        let nanos = (seconds * 1e9) as i128;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
    };
    let text = match stamp {
        Value::String(text) => text.trim(),
        Value::Number(seconds) => return unix(seconds.as_f64()?),
        _ => return None,
    };
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return unix(text.parse().ok()?);
    }
    if let Ok(at) = time::OffsetDateTime::parse(text, &Rfc3339) {
        return Some(at);
    }
    // A space for the `T`; an offset of hours alone (`+00`), or none (UTC).
    let mut text = text.replacen(' ', "T", 1);
    let offset_at = text
        .char_indices()
        .skip(10)
        .find(|(_, c)| matches!(c, '+' | '-' | 'Z' | 'z'))
        .map(|(at, _)| at);
    match offset_at {
        None => text.push('Z'),
        Some(at) if text.len() - at == 3 => text.push_str(":00"),
        Some(_) => {}
    }
    time::OffsetDateTime::parse(&text, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Found in an audit: stamps as databases write them were not read, so `newest_wins` gave
    /// newer local edits away to the hub.
    #[test]
    fn local_stamps_are_read_as_databases_write_them() {
        let utc = |text: &str| {
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .expect("rfc 3339")
        };
        for (stamp, expected) in [
            (json!("2026-12-07T13:45:00Z"), "2026-12-07T13:45:00Z"),
            (json!("2026-12-07 13:45:00"), "2026-12-07T13:45:00Z"),
            (json!("2026-12-07 13:45:00.5+00"), "2026-12-07T13:45:00.5Z"),
            (json!("2026-12-07 15:45:00+02"), "2026-12-07T13:45:00Z"),
            (json!("2026-12-07 19:15:00+05:30"), "2026-12-07T13:45:00Z"),
            (json!(1_796_651_100), "2026-12-07T13:45:00Z"),
            // Found in an audit: Unix seconds in the text column were never read.
            (json!("1796651100"), "2026-12-07T13:45:00Z"),
            (json!(" 1796651100.5 "), "2026-12-07T13:45:00.5Z"),
        ] {
            assert_eq!(parse_time(&stamp), Some(utc(expected)), "{stamp}");
        }
        for stamp in [
            json!("yesterday"),
            json!("2026-13-07 10:00:00"),
            json!("1.2.3"),
            json!(true),
        ] {
            assert_eq!(parse_time(&stamp), None, "{stamp}");
        }
    }
}
