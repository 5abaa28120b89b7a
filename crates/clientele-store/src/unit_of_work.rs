//! The write logic, once for both backends: load the stored customer, apply the domain rules,
//! persist the new state and its change record in the same transaction.

use clientele_domain::write::{Applied, ApplyContext, EmptyDirectory, apply};
use clientele_domain::{
    ChangeKind, Customer, DomainError, Locator, Patch, Timestamp, WriteCommand, WriteOutcome,
    WriteTarget,
};

use crate::primitives::{ChangeRow, CustomerRow, CustomerTx};

/// How often an upsert is retried when a concurrent transaction created the same key first.
const UPSERT_RACE_RETRIES: usize = 3;

/// Runs one customer write in its own transaction. An upsert that loses a race to create the same
/// key retries, and then finds and updates the row the winner created.
pub(crate) async fn write_customer<Tx, F, Fut>(
    begin: F,
    command: &WriteCommand,
) -> Result<(WriteOutcome, Customer), DomainError>
where
    Tx: CustomerTx,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Tx, DomainError>>,
{
    let mut attempt = 0;
    loop {
        let mut tx = begin().await?;
        match write_in(&mut tx, command).await {
            Ok(result) => {
                tx.commit().await?;
                return Ok(result);
            }
            Err(DomainError::DuplicateKey(clash))
                if attempt < UPSERT_RACE_RETRIES
                    && matches!(command.target, WriteTarget::Upsert(key, _) if key == clash) =>
            {
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

async fn write_in(
    tx: &mut impl CustomerTx,
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
        tx.update(&row).await?;
        (WriteOutcome::Updated, ChangeKind::Updated)
    } else {
        tx.insert(&row).await?;
        (WriteOutcome::Created, ChangeKind::Created)
    };
    tx.record_change(&ChangeRow {
        customer_id: next.id,
        external_id: next.external_id.as_deref(),
        kind,
        version: next.version,
        at: next.updated_at,
        customer: Some(&doc),
    })
    .await?;
    Ok((outcome, next))
}

/// Erases a customer and records the deletion (its version one past the last one).
pub(crate) async fn delete_customer(
    mut tx: impl CustomerTx,
    locator: &Locator,
    expected_version: Option<i64>,
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
    tx.delete(customer.id).await?;
    tx.record_change(&ChangeRow {
        customer_id: customer.id,
        external_id: customer.external_id.as_deref(),
        kind: ChangeKind::Deleted,
        version: customer.version + 1,
        at: Timestamp::now(),
        customer: None,
    })
    .await?;
    tx.commit().await
}
