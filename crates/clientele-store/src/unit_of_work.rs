//! The write logic, once for both backends: load the stored customers, apply the domain rules,
//! persist the new state, its change records and the idempotent response in one transaction.

use clientele_domain::store::{IDEMPOTENCY_LEASE_MICROS, IDEMPOTENCY_TTL_MICROS};
use clientele_domain::sync::{self, ChangeRecord, SyncBatch, SyncReport};
use clientele_domain::write::{Applied, ApplyContext, EmptyDirectory, apply};
use clientele_domain::{
    ChangeKind, ClaimOutcome, Completion, Customer, CustomerId, CustomerKey, DomainError,
    IdempotencyClaim, Locator, Patch, Timestamp, WriteCommand, WriteOutcome, WriteTarget,
};

use crate::primitives::{BatchTx, CustomerRow, CustomerTx, Queries};
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
    Tx: CustomerTx + BatchTx,
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
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn write_in(
    tx: &mut (impl CustomerTx + BatchTx),
    command: &WriteCommand,
) -> Result<(WriteOutcome, Customer), DomainError> {
    let stored = match &command.target {
        WriteTarget::Create => None,
        WriteTarget::Upsert(key, value) => tx.load(&Locator::Key(*key, value.clone())).await?,
        WriteTarget::Update(locator) => Some(tx.load(locator).await?.ok_or(DomainError::NotFound)?),
    };
    if let Some(expected) = command.expected_version {
        let actual = stored.as_ref().map_or(0, |s| s.customer.version);
        if actual != expected {
            return Err(DomainError::VersionConflict { expected, actual });
        }
    }

    // An upsert that creates takes its key from the target when the body leaves it out.
    let filled = match (&command.target, &stored) {
        (WriteTarget::Upsert(key, value), None) => command.write.for_upsert_create(*key, value),
        _ => None,
    };
    let write = filled.as_ref().unwrap_or(&command.write);
    let applied = {
        let ctx = ApplyContext {
            now: Timestamp::now(),
            directory: &EmptyDirectory,
            password: command.password_hash.clone().map(|_| ()),
        };
        apply(&ctx, stored.as_ref().map(|s| &s.customer), write)
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
    let (outcome, kind) = if stored.is_some() {
        tx.update_many(std::slice::from_ref(&row)).await?;
        (WriteOutcome::Updated, ChangeKind::Updated)
    } else {
        tx.insert_many(std::slice::from_ref(&row)).await?;
        (WriteOutcome::Created, ChangeKind::Created)
    };
    let change = ChangeRecord {
        customer_id: next.id,
        external_id: next.external_id.clone(),
        kind,
        version: next.version,
        at: next.updated_at,
        customer: Some(doc),
        teams: next.teams.clone(),
    };
    tx.record_changes(&[change]).await?;
    Ok((outcome, next))
}

/// Erases a customer and records the deletion (its version one past the last one).
pub(crate) async fn delete_customer(
    mut tx: impl CustomerTx + BatchTx,
    locator: &Locator,
    expected_version: Option<i64>,
    completion: Option<Completion<'_, ()>>,
) -> Result<(), DomainError> {
    let stored = tx.load(locator).await?.ok_or(DomainError::NotFound)?;
    let customer = &stored.customer;
    if let Some(expected) = expected_version
        && customer.version != expected
    {
        return Err(DomainError::VersionConflict {
            expected,
            actual: customer.version,
        });
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
        Observed { versions, owners }
    }
}

#[derive(PartialEq, Eq)]
struct Observed {
    versions: Vec<(CustomerId, i64)>,
    owners: Vec<(CustomerKey, String, CustomerId)>,
}

/// Applies a sync batch in one transaction: one load of the addressed customers, one lookup per
/// other unique key, the pure plan, then batched writes.
///
/// Where writes are serialized (SQLite), the batch is planned optimistically on a read snapshot
/// first; under the write lock only the versions and owners it saw are checked again (index
/// lookups), and it is planned afresh only if they moved. A key taken concurrently (possible on
/// PostgreSQL) makes the whole batch retry, which then sees the winner's row.
pub(crate) async fn sync_customers<B: Backend>(
    backend: &B,
    batch: &SyncBatch,
    completion: Option<Completion<'_, SyncReport>>,
) -> Result<SyncReport, DomainError> {
    let addressed = batch.addressed_values();
    let claimed = batch.claimed_values();
    let mut optimistic = match backend.begin_snapshot().await? {
        Some(mut snapshot) => {
            let inputs = read_inputs(&mut snapshot, batch, &addressed, &claimed).await?;
            let observed = inputs.observed();
            Some((observed, plan(batch, inputs)))
        }
        None => None,
    };
    let mut attempt = 0;
    loop {
        let mut tx = backend.begin_write().await?;
        let plan = match optimistic.take() {
            Some((observed, plan))
                if still_observed(&mut tx, batch, &addressed, &claimed, &observed).await? =>
            {
                plan
            }
            _ => plan(
                batch,
                read_inputs(&mut tx, batch, &addressed, &claimed).await?,
            ),
        };
        let report = SyncReport {
            applied: !(batch.atomic && plan.results.iter().any(|r| r.error.is_some())),
            results: Vec::new(),
        };
        if !report.applied {
            return Ok(SyncReport {
                results: plan.results,
                ..report
            });
        }
        match write_plan(&mut tx, batch, &plan).await {
            Ok(()) => {
                let report = SyncReport {
                    results: plan.results,
                    ..report
                };
                if let Some(completion) = completion {
                    let response = (completion.render)(&report);
                    tx.complete_idempotency(completion.claim, &response).await?;
                }
                tx.commit().await?;
                return Ok(report);
            }
            Err(DomainError::DuplicateKey(_)) if attempt < RACE_RETRIES => attempt += 1,
            Err(error) => return Err(error),
        }
    }
}

async fn read_inputs<Tx: BatchTx>(
    tx: &mut Tx,
    batch: &SyncBatch,
    addressed: &[String],
    claimed: &[(CustomerKey, Vec<String>)],
) -> Result<Inputs, DomainError> {
    let loaded = tx.load_many(batch.key, addressed).await?;
    let mut owners = Vec::new();
    for (key, values) in claimed {
        for (value, id) in tx.owners(*key, values).await? {
            owners.push((*key, value, id));
        }
    }
    Ok(Inputs { loaded, owners })
}

async fn still_observed<Tx: BatchTx>(
    tx: &mut Tx,
    batch: &SyncBatch,
    addressed: &[String],
    claimed: &[(CustomerKey, Vec<String>)],
    observed: &Observed,
) -> Result<bool, DomainError> {
    let mut versions = tx.versions(batch.key, addressed).await?;
    versions.sort_unstable();
    if versions != observed.versions {
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

fn plan(batch: &SyncBatch, inputs: Inputs) -> sync::Plan {
    sync::plan(
        batch,
        inputs.loaded,
        &inputs.owners,
        Timestamp::now(),
        &EmptyDirectory,
    )
}

async fn write_plan<Tx: CustomerTx + BatchTx>(
    tx: &mut Tx,
    batch: &SyncBatch,
    plan: &sync::Plan,
) -> Result<(), DomainError> {
    tx.delete_many(&plan.deletes).await?;
    tx.clear_keys(&plan.rekeyed).await?;
    tx.update_many(&rows(&plan.updates)).await?;
    // Inserts in key order, so that concurrent batches creating the same keys queue on the
    // unique index in the same order instead of deadlocking.
    let mut inserts = rows(&plan.inserts);
    inserts.sort_by(|a, b| a.customer.key(batch.key).cmp(&b.customer.key(batch.key)));
    tx.insert_many(&inserts).await?;
    tx.record_changes(&plan.changes).await
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

/// Claims an idempotency key: a new key is this request's; a finished one replays; one still
/// running is in flight, unless its lease ran out (its process died), when this request takes
/// it over; an expired one starts afresh.
pub(crate) async fn claim_idempotency(
    queries: &impl Queries,
    claim: &IdempotencyClaim,
) -> Result<ClaimOutcome, DomainError> {
    for _ in 0..RACE_RETRIES {
        if queries.insert_claim(claim).await? {
            return Ok(ClaimOutcome::Claimed);
        }
        let Some(stored) = queries.load_claim(claim).await? else {
            continue; // purged in between: try to insert again
        };
        let age = claim.at.as_micros() - stored.created_at;
        let abandoned = stored.response.is_none() && age > IDEMPOTENCY_LEASE_MICROS;
        if age > IDEMPOTENCY_TTL_MICROS || abandoned {
            if queries.take_over_claim(claim, stored.created_at).await? {
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
