//! The write logic, once for both backends: load the stored customers, apply the domain rules,
//! persist the new state, its change records and the idempotent response in one transaction.

use std::collections::HashSet;

use crate::search::{TermChange, TermEdit, TermSource};
use clientele_domain::group::named_codes;
use clientele_domain::schema::Schema;
use clientele_domain::store::{IDEMPOTENCY_LEASE_MICROS, IDEMPOTENCY_TTL_MICROS};
use clientele_domain::sync::{self, ChangeRecord, SyncBatch, SyncReport};
use clientele_domain::write::{Applied, ApplyContext};
use clientele_domain::{
    ChangeKind, ClaimOutcome, Completion, Customer, CustomerId, CustomerKey, DomainError,
    IdempotencyClaim, KnownCodes, Locator, Patch, Precondition, Scope, Timestamp, WriteCommand,
    WriteOutcome, WriteTarget,
};

use crate::directory::DirectoryTx;
use crate::error::is_transient;
use crate::heartbeat::OWNER_STALE_MICROS;
use crate::orders::OrderTx;
use crate::primitives::{BatchTx, ClaimRow, CustomerRow, CustomerTx, Queries};
use crate::schema_store::{self, SchemaTx};
use crate::sql_store::Backend;

/// How often a write is retried when a concurrent transaction took a key it needed first.
const RACE_RETRIES: usize = 3;

/// Runs one customer write in its own transaction. An upsert that loses a race to create the same
/// key retries, and then finds and updates the row the winner created.
pub(crate) async fn write_customer<Tx, F, Fut>(
    begin: F,
    command: &WriteCommand,
    completion: Option<Completion<'_, (WriteOutcome, Customer)>>,
) -> Result<(WriteOutcome, Customer), DomainError>
where
    Tx: CustomerTx + BatchTx + DirectoryTx + SchemaTx,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Tx, DomainError>>,
{
    let mut attempt = 0;
    loop {
        let mut tx = begin().await?;
        match write_in(&mut tx, command).await {
            Ok(result) => {
                if let Some(completion) = completion {
                    let response = (completion.render)(&result);
                    tx.complete_idempotency(completion.claim, &response).await?;
                }
                tx.commit().await?;
                return Ok(result);
            }
            Err(DomainError::DuplicateKey(clash))
                if attempt < RACE_RETRIES
                    && matches!(command.target, WriteTarget::Upsert(key, _) if key == clash) =>
            {
                tx.rollback().await?;
                attempt += 1;
            }
            Err(error) if attempt < RACE_RETRIES && is_transient(&error) => {
                tx.rollback().await?;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn write_in(
    tx: &mut (impl CustomerTx + BatchTx + DirectoryTx + SchemaTx),
    command: &WriteCommand,
) -> Result<(WriteOutcome, Customer), DomainError> {
    let schema = schema_store::load(tx).await?;
    let stored = match &command.target {
        WriteTarget::Create => None,
        WriteTarget::Upsert(key, value) => tx.load(&Locator::Key(*key, value.clone())).await?,
        WriteTarget::Update(locator) => Some(tx.load(locator).await?.ok_or(DomainError::NotFound)?),
    };
    // A customer outside the caller's scope does not exist for it, whatever the precondition.
    if stored
        .as_ref()
        .is_some_and(|s| !command.scope.admits(&s.customer))
    {
        return Err(DomainError::NotFound);
    }
    if let Some(precondition) = command.precondition {
        precondition.check(stored.as_ref().map(|s| s.customer.version))?;
    }

    // An upsert that creates takes its key from the target when the body leaves it out.
    let filled = match (&command.target, &stored) {
        (WriteTarget::Upsert(key, value), None) => command.write.for_upsert_create(*key, value),
        _ => None,
    };
    let write = filled.as_ref().unwrap_or(&command.write);
    let (groups, teams) = named_codes(&command.scope, [write]);
    let directory = tx.known_codes(&groups, &teams).await?;
    let applied = {
        let ctx = ApplyContext {
            now: Timestamp::now(),
            directory: &directory,
            password: command.password_hash.clone().map(|_| ()),
            schema: &schema,
        };
        command
            .scope
            .apply(&ctx, stored.as_ref().map(|s| &s.customer), write)
    };
    let next = match applied? {
        Applied::Unchanged => {
            let unchanged = stored.map(|s| s.customer).ok_or(DomainError::NotFound)?;
            return Ok((WriteOutcome::Unchanged, unchanged));
        }
        Applied::Changed(next) => *next,
    };

    let doc = serde_json::to_string(&next).map_err(|e| DomainError::Storage(Box::new(e)))?;
    let password_hash = match &command.password_hash {
        Patch::Absent => stored.as_ref().and_then(|s| s.password_hash.as_deref()),
        Patch::Null => None,
        Patch::Value(hash) => Some(hash.as_str()),
    };
    let row = CustomerRow::new(&next, password_hash, &doc);
    let rows = std::slice::from_ref(&row);
    let (outcome, kind) = match &stored {
        Some(stored) => {
            tx.update_many(rows).await?;
            let change = TermSource::of(&stored.customer).change_to(&next);
            rewrite_terms(tx, [(&row, change)]).await?;
            if !same_memberships(&stored.customer, &next) {
                tx.write_memberships(&[next.id], rows).await?;
            }
            (WriteOutcome::Updated, ChangeKind::Updated)
        }
        None => {
            tx.insert_many(rows).await?;
            tx.write_memberships(&[], rows).await?;
            (WriteOutcome::Created, ChangeKind::Created)
        }
    };
    let mut change = ChangeRecord::of_write(&next, kind, doc);
    if let Some(stored) = &stored {
        change = change.seen_by_teams_left(&stored.customer);
    }
    tx.record_changes(&[change]).await?;
    Ok((outcome, next))
}

/// A customer's tags, groups and teams: what its membership rows hold.
#[derive(PartialEq)]
struct MembershipSet<'a> {
    tags: &'a [String],
    groups: &'a [clientele_domain::GroupMembership],
    teams: &'a [String],
}

impl<'a> MembershipSet<'a> {
    fn of(c: &'a Customer) -> Self {
        Self {
            tags: &c.tags,
            groups: &c.groups,
            teams: &c.teams,
        }
    }

    fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.groups.is_empty() && self.teams.is_empty()
    }
}

fn same_memberships(a: &Customer, b: &Customer) -> bool {
    MembershipSet::of(a) == MembershipSet::of(b)
}

/// Erases a customer and records the deletion (its version one past the last one); its
/// membership rows go with it (`ON DELETE CASCADE`), and the documents of its earlier changes
/// leave the feed. A transaction PostgreSQL aborted to break a deadlock (with the retention
/// purge, over those change rows) is run again.
pub(crate) async fn delete_customer<Tx, F, Fut>(
    begin: F,
    locator: &Locator,
    scope: &Scope,
    precondition: Option<Precondition>,
    completion: Option<Completion<'_, ()>>,
) -> Result<(), DomainError>
where
    Tx: CustomerTx + BatchTx + OrderTx,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Tx, DomainError>>,
{
    let mut attempt = 0;
    loop {
        let tx = begin().await?;
        match delete_in(tx, locator, scope, precondition, completion).await {
            Err(error) if attempt < RACE_RETRIES && is_transient(&error) => attempt += 1,
            result => return result,
        }
    }
}

/// One attempt of [`delete_customer`]; the transaction rolls back when it is dropped uncommitted.
async fn delete_in(
    mut tx: impl CustomerTx + BatchTx + OrderTx,
    locator: &Locator,
    scope: &Scope,
    precondition: Option<Precondition>,
    completion: Option<Completion<'_, ()>>,
) -> Result<(), DomainError> {
    let stored = tx.load(locator).await?.ok_or(DomainError::NotFound)?;
    let customer = &stored.customer;
    if !scope.admits(customer) {
        return Err(DomainError::NotFound);
    }
    if let Some(precondition) = precondition {
        precondition.check(Some(customer.version))?;
    }
    if !tx.customers_with_orders(&[customer.id]).await?.is_empty() {
        return Err(DomainError::CustomerHasOrders);
    }
    tx.delete_many(&[customer.id]).await?;
    let change = ChangeRecord {
        customer_id: customer.id,
        external_id: customer.external_id.clone(),
        kind: ChangeKind::Deleted,
        version: customer.version + 1,
        at: Timestamp::now(),
        customer: None,
        teams: customer.teams.clone(),
    };
    tx.record_changes(&[change]).await?;
    if let Some(completion) = completion {
        let response = (completion.render)(&());
        tx.complete_idempotency(completion.claim, &response).await?;
    }
    tx.commit().await
}

/// What a sync plan was computed from: the addressed customers and the owners of the claimed
/// key values.
struct Inputs {
    loaded: Vec<sync::StoredCustomer>,
    owners: Vec<(CustomerKey, String, CustomerId)>,
    directory: KnownCodes,
    /// The loaded customers that orders reference (read only when the batch deletes).
    with_orders: HashSet<CustomerId>,
    schema: Schema,
}

impl Inputs {
    /// The facts a plan depends on, comparable with a later read.
    fn observed(&self) -> Observed {
        let mut versions: Vec<_> = self
            .loaded
            .iter()
            .map(|s| (s.customer.id, s.customer.version))
            .collect();
        versions.sort_unstable();
        let mut owners = self.owners.clone();
        owners.sort_unstable();
        let mut with_orders: Vec<_> = self.with_orders.iter().copied().collect();
        with_orders.sort_unstable();
        Observed {
            versions,
            owners,
            directory: self.directory.clone(),
            with_orders,
            schema: self.schema.clone(),
        }
    }
}

#[derive(PartialEq)]
struct Observed {
    versions: Vec<(CustomerId, i64)>,
    owners: Vec<(CustomerKey, String, CustomerId)>,
    directory: KnownCodes,
    with_orders: Vec<CustomerId>,
    schema: Schema,
}

/// The group and team codes a batch names.
struct Codes {
    groups: Vec<String>,
    teams: Vec<String>,
}

impl Codes {
    fn of(batch: &SyncBatch) -> Self {
        let writes = batch.items.iter().filter_map(|item| match item {
            sync::SyncItem::Write(command) => Some(&command.write),
            sync::SyncItem::Invalid(_) => None,
        });
        let (groups, teams) = named_codes(&batch.scope, writes);
        Codes { groups, teams }
    }
}

/// Applies a sync batch in one transaction: one load of the addressed customers, one lookup per
/// other unique key, the pure plan, then batched writes.
///
/// Where writes are serialized (SQLite), the batch is planned optimistically on a read snapshot
/// first; under the write lock only the versions and owners it saw are checked again (index
/// lookups), and it is planned afresh only if they moved. A key taken concurrently (possible on
/// PostgreSQL) makes the whole batch retry, which then sees the winner's row; its last retry
/// runs alone among batches ([`BatchTx::lock_batches`]). A batch that still loses (to single
/// writes taking its keys all along) is [`DomainError::Unavailable`]: a race, not an answer
/// to the request, so its `Idempotency-Key` is released and a retry may well succeed.
pub(crate) async fn sync_customers<B: Backend>(
    backend: &B,
    batch: &SyncBatch,
    completion: Option<Completion<'_, SyncReport>>,
) -> Result<SyncReport, DomainError> {
    let addressed = batch.addressed_values();
    let claimed = batch.claimed_values();
    let codes = Codes::of(batch);
    let mut optimistic = match backend.begin_snapshot().await? {
        Some(mut snapshot) => {
            let inputs = read_inputs(&mut snapshot, batch, &addressed, &claimed, &codes).await?;
            let observed = inputs.observed();
            Some((observed, plan(batch, inputs)))
        }
        None => None,
    };
    let mut attempt = 0;
    loop {
        let mut tx = backend.begin_write().await?;
        let attempted = async {
            tx.lock_batches(attempt == RACE_RETRIES).await?;
            let plan = match optimistic.take() {
                Some((observed, plan))
                    if still_observed(&mut tx, batch, &addressed, &claimed, &codes, &observed)
                        .await? =>
                {
                    plan
                }
                _ => plan(
                    batch,
                    read_inputs(&mut tx, batch, &addressed, &claimed, &codes).await?,
                ),
            };
            let applied = !(batch.atomic && plan.plan.results.iter().any(|r| r.error.is_some()));
            if applied {
                write_plan(&mut tx, batch, &plan).await?;
            }
            Ok::<_, DomainError>(SyncReport {
                applied,
                results: plan.plan.results,
            })
        }
        .await;
        match attempted {
            // An atomic batch with failures wrote nothing: the dropped transaction rolls back.
            Ok(report) if !report.applied => return Ok(report),
            Ok(report) => {
                if let Some(completion) = completion {
                    let response = (completion.render)(&report);
                    tx.complete_idempotency(completion.claim, &response).await?;
                }
                tx.commit().await?;
                return Ok(report);
            }
            Err(error)
                if attempt < RACE_RETRIES
                    && (matches!(error, DomainError::DuplicateKey(_)) || is_transient(&error)) =>
            {
                tx.rollback().await?;
                attempt += 1;
            }
            Err(DomainError::DuplicateKey(key)) => {
                return Err(DomainError::Unavailable(
                    format!("concurrent writes kept taking {key} values of the batch").into(),
                ));
            }
            Err(error) => return Err(error),
        }
    }
}

async fn read_inputs<Tx: BatchTx + DirectoryTx + OrderTx + SchemaTx>(
    tx: &mut Tx,
    batch: &SyncBatch,
    addressed: &[String],
    claimed: &[(CustomerKey, Vec<String>)],
    codes: &Codes,
) -> Result<Inputs, DomainError> {
    let loaded = tx.load_many(batch.key, addressed).await?;
    let mut owners = Vec::new();
    for (key, values) in claimed {
        for (value, id) in tx.owners(*key, values).await? {
            owners.push((*key, value, id));
        }
    }
    let directory = tx.known_codes(&codes.groups, &codes.teams).await?;
    let ids: Vec<CustomerId> = loaded.iter().map(|s| s.customer.id).collect();
    let with_orders = with_orders(tx, batch, &ids).await?.into_iter().collect();
    Ok(Inputs {
        loaded,
        owners,
        directory,
        with_orders,
        schema: schema_store::load(tx).await?,
    })
}

/// Which of these customers orders reference, in one query; none is asked for when the batch
/// deletes nothing.
async fn with_orders<Tx: OrderTx>(
    tx: &mut Tx,
    batch: &SyncBatch,
    ids: &[CustomerId],
) -> Result<Vec<CustomerId>, DomainError> {
    let deletes = batch.items.iter().any(
        |item| matches!(item, sync::SyncItem::Write(command) if command.write.delete == Some(true)),
    );
    if !deletes {
        return Ok(Vec::new());
    }
    let mut found = tx.customers_with_orders(ids).await?;
    found.sort_unstable();
    Ok(found)
}

async fn still_observed<Tx: BatchTx + DirectoryTx + OrderTx + SchemaTx>(
    tx: &mut Tx,
    batch: &SyncBatch,
    addressed: &[String],
    claimed: &[(CustomerKey, Vec<String>)],
    codes: &Codes,
    observed: &Observed,
) -> Result<bool, DomainError> {
    // Also locks the named groups and teams where the backend locks rows.
    if tx.known_codes(&codes.groups, &codes.teams).await? != observed.directory {
        return Ok(false);
    }
    let mut versions = tx.versions(batch.key, addressed).await?;
    versions.sort_unstable();
    if versions != observed.versions {
        return Ok(false);
    }
    let ids: Vec<CustomerId> = versions.iter().map(|(id, _)| *id).collect();
    if with_orders(tx, batch, &ids).await? != observed.with_orders
        || schema_store::load(tx).await? != observed.schema
    {
        return Ok(false);
    }
    let mut owners = Vec::new();
    for (key, values) in claimed {
        for (value, id) in tx.owners(*key, values).await? {
            owners.push((*key, value, id));
        }
    }
    owners.sort_unstable();
    Ok(owners == observed.owners)
}

fn plan(batch: &SyncBatch, inputs: Inputs) -> Planned {
    // The stored memberships of customers that have any: an update leaving them as they are
    // writes no membership rows, and one of a customer without any deletes none.
    let stored_memberships = inputs
        .loaded
        .iter()
        .filter(|s| !MembershipSet::of(&s.customer).is_empty())
        .map(|s| {
            let c = &s.customer;
            (c.id, (c.tags.clone(), c.groups.clone(), c.teams.clone()))
        })
        .collect();
    let stored_search = inputs
        .loaded
        .iter()
        .map(|s| (s.customer.id, TermSource::of(&s.customer)))
        .collect();
    let plan = sync::plan_with(
        batch,
        inputs.loaded,
        &inputs.owners,
        Timestamp::now(),
        &inputs.directory,
        &inputs.schema,
        &inputs.with_orders,
    );
    Planned {
        plan,
        stored_memberships,
        stored_search,
    }
}

/// Tags, groups and teams, owned.
type OwnedMemberships = (
    Vec<String>,
    Vec<clientele_domain::GroupMembership>,
    Vec<String>,
);

/// A sync plan and what the write of its membership rows needs to know.
struct Planned {
    plan: sync::Plan,
    stored_memberships: std::collections::HashMap<CustomerId, OwnedMemberships>,
    /// The searchable fields of the stored customers: an update that keeps them keeps its terms.
    stored_search: std::collections::HashMap<CustomerId, TermSource>,
}

impl Planned {
    /// How an updated customer's term rows change.
    fn term_change(&self, customer: &Customer) -> TermChange {
        self.stored_search
            .get(&customer.id)
            .map_or(TermChange::All, |stored| stored.change_to(customer))
    }

    /// Whether an updated customer's membership rows must be replaced (it had some), and
    /// whether they change at all.
    fn membership_change(&self, customer: &Customer) -> (bool, bool) {
        let next = MembershipSet::of(customer);
        match self.stored_memberships.get(&customer.id) {
            None => (false, !next.is_empty()),
            Some((tags, groups, teams)) => {
                let stored = MembershipSet {
                    tags,
                    groups,
                    teams,
                };
                (true, stored != next)
            }
        }
    }
}

async fn write_plan<Tx: CustomerTx + BatchTx + DirectoryTx>(
    tx: &mut Tx,
    batch: &SyncBatch,
    planned: &Planned,
) -> Result<(), DomainError> {
    let plan = &planned.plan;
    tx.delete_many(&plan.deletes).await?;
    tx.clear_keys(&plan.rekeyed).await?;
    let updates = rows(&plan.updates);
    tx.update_many(&updates).await?;
    rewrite_terms(
        tx,
        updates
            .iter()
            .map(|row| (row, planned.term_change(row.customer))),
    )
    .await?;
    // Inserts in key order, so that concurrent batches creating the same keys queue on the
    // unique index in the same order instead of deadlocking.
    let mut inserts = rows(&plan.inserts);
    inserts.sort_by(|a, b| a.customer.key(batch.key).cmp(&b.customer.key(batch.key)));
    tx.insert_many(&inserts).await?;
    let mut replaced = Vec::new();
    let mut changed = Vec::new();
    for row in updates {
        match planned.membership_change(row.customer) {
            (_, false) => {}
            (had_rows, true) => {
                if had_rows {
                    replaced.push(row.customer.id);
                }
                changed.push(row);
            }
        }
    }
    changed.extend(
        inserts
            .into_iter()
            .filter(|row| !MembershipSet::of(row.customer).is_empty()),
    );
    tx.write_memberships(&replaced, &changed).await?;
    tx.record_changes(&plan.changes).await
}

/// Writes the term rows of updated customers as they change: every row anew where the last
/// name's sort key or `archived` changed (each row carries them), only the terms that go and
/// come where another searchable field did.
async fn rewrite_terms<'a, Tx: BatchTx>(
    tx: &mut Tx,
    changes: impl IntoIterator<Item = (&'a CustomerRow<'a>, TermChange)>,
) -> Result<(), DomainError> {
    let mut replaced = Vec::new();
    let mut edits = Vec::new();
    for (row, change) in changes {
        match change {
            TermChange::Kept => {}
            TermChange::All => {
                replaced.push(CustomerRow::new(row.customer, row.password_hash, row.doc))
            }
            TermChange::Terms { removed, added } => edits.push(TermEdit {
                row,
                removed,
                added,
            }),
        }
    }
    if !replaced.is_empty() {
        tx.write_terms(&replaced, true).await?;
    }
    if !edits.is_empty() {
        tx.edit_terms(&edits).await?;
    }
    Ok(())
}

fn rows(planned: &[sync::PlannedRow]) -> Vec<CustomerRow<'_>> {
    planned
        .iter()
        .map(|p| {
            CustomerRow::new(
                &p.stored.customer,
                p.stored.password_hash.as_deref(),
                &p.doc,
            )
        })
        .collect()
}

/// Claims an idempotency key for the process `incarnation`: a new key is this request's; a
/// finished one replays; one still running is in flight, unless it was abandoned
/// ([`abandoned`]), when this request takes it over; an expired one starts afresh.
pub(crate) async fn claim_idempotency(
    queries: &impl Queries,
    claim: &IdempotencyClaim,
    incarnation: &str,
) -> Result<ClaimOutcome, DomainError> {
    for _ in 0..RACE_RETRIES {
        if queries.insert_claim(claim, incarnation).await? {
            return Ok(ClaimOutcome::Claimed);
        }
        let Some(stored) = queries.load_claim(claim).await? else {
            continue; // purged in between: try to insert again
        };
        let expired = claim.at.as_micros() - stored.created_at > IDEMPOTENCY_TTL_MICROS;
        if expired || abandoned(&stored, claim.at, incarnation) {
            if queries
                .take_over_claim(claim, stored.created_at, expired, incarnation)
                .await?
            {
                return Ok(ClaimOutcome::Claimed);
            }
            continue;
        }
        if stored.fingerprint != claim.fingerprint {
            return Ok(ClaimOutcome::Reused);
        }
        return Ok(match stored.response {
            Some(response) => ClaimOutcome::Replay(response),
            None => ClaimOutcome::InFlight,
        });
    }
    Ok(ClaimOutcome::InFlight)
}

/// Whether a claim with no response yet was left by a request that no longer runs: its lease
/// ran out, or the process that held it has not been seen for [`OWNER_STALE_MICROS`] (killed,
/// its machine lost; a restarted process is another incarnation). A claim of this very process
/// is running here.
fn abandoned(stored: &ClaimRow, now: Timestamp, incarnation: &str) -> bool {
    if stored.response.is_some() {
        return false;
    }
    let now = now.as_micros();
    if now - stored.created_at > IDEMPOTENCY_LEASE_MICROS {
        return true;
    }
    let Some(owner) = &stored.owner else {
        return false; // claimed before owners were kept: the lease decides
    };
    owner.incarnation != incarnation
        && now - stored.created_at > OWNER_STALE_MICROS
        && owner
            .seen_at
            .is_none_or(|seen_at| now - seen_at > OWNER_STALE_MICROS)
}

#[cfg(test)]
mod tests {
    use clientele_domain::StoredResponse;

    use super::*;
    use crate::primitives::ClaimOwner;

    const SECOND: i64 = 1_000_000;
    const NOW: i64 = 1_000_000 * SECOND;

    /// A claim made `age` seconds ago by `owner`, last seen `unseen` seconds ago.
    fn claim(age: i64, owner: Option<(&str, Option<i64>)>) -> ClaimRow {
        ClaimRow {
            fingerprint: Vec::new(),
            created_at: NOW - age * SECOND,
            response: None,
            owner: owner.map(|(incarnation, unseen)| ClaimOwner {
                incarnation: incarnation.to_owned(),
                seen_at: unseen.map(|unseen| NOW - unseen * SECOND),
            }),
        }
    }

    fn is_abandoned(claim: &ClaimRow) -> bool {
        abandoned(claim, Timestamp::from_micros(NOW), "this-process")
    }

    #[test]
    fn a_claim_is_abandoned_when_its_process_is_gone_or_its_lease_ran_out() {
        // Another process, unseen for longer than the staleness bound, or forgotten.
        assert!(is_abandoned(&claim(31, Some(("other", Some(31))))));
        assert!(is_abandoned(&claim(31, Some(("other", None)))));
        // Any claim past its lease.
        assert!(is_abandoned(&claim(601, Some(("this-process", Some(0))))));
        assert!(is_abandoned(&claim(601, None)));
    }

    #[test]
    fn a_claim_of_a_live_process_or_a_young_one_is_in_flight() {
        assert!(!is_abandoned(&claim(300, Some(("other", Some(4))))));
        // This process runs it; a claim made before its owner's first heartbeat was written.
        assert!(!is_abandoned(&claim(300, Some(("this-process", None)))));
        assert!(!is_abandoned(&claim(29, Some(("other", None)))));
        // Claimed before owners were kept: the lease alone decides.
        assert!(!is_abandoned(&claim(300, None)));
    }

    #[test]
    fn a_finished_claim_is_never_abandoned() {
        let mut finished = claim(3600, Some(("other", None)));
        finished.response = Some(StoredResponse {
            status: 200,
            headers: Vec::new(),
            body: Vec::new(),
        });
        assert!(!is_abandoned(&finished));
    }
}
