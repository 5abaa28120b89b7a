//! Bulk sync (`POST /v1/customers/sync`): a batch of items applied in order, each identified by
//! the batch key, with per-item results.
//!
//! [`plan`] is the whole per-item logic, pure: given the customers the store loaded for the
//! batch and who owns the unique-key values the items claim, it applies every item in order to
//! an in-memory working set and returns the per-item results plus the rows to write. The store
//! then persists the plan in one transaction: one read per batch and batched writes, never a
//! query per item.

use std::collections::{HashMap, HashSet};

use crate::schema::{NO_SCHEMA, Schema};
use crate::validation::is_valid_key;
use crate::write::{Applied, ApplyContext};
use crate::{
    ChangeKind, Customer, CustomerId, CustomerKey, CustomerWrite, Directory, DomainError, Patch,
    Scope, Timestamp, ValidationErrors,
};

/// Most items in one sync request.
pub const MAX_ITEMS: usize = 1000;

#[derive(Debug)]
pub struct SyncBatch {
    pub key: CustomerKey,
    /// All items apply, or none does.
    pub atomic: bool,
    pub items: Vec<SyncItem>,
    /// The customers the caller may see: an item addressing another one fails `not_found`.
    pub scope: Scope,
}

#[derive(Debug)]
pub enum SyncItem {
    /// The item could not be read (a wrong type, an unknown field): it fails, the others go on.
    Invalid(ValidationErrors),
    Write(Box<SyncCommand>),
}

#[derive(Debug)]
pub struct SyncCommand {
    pub write: CustomerWrite,
    /// The Argon2id hash of the item's password, hashed before the transaction.
    pub password_hash: Patch<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemStatus {
    Created,
    Updated,
    Unchanged,
    Deleted,
    Failed,
}

impl ItemStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Created => "created",
            ItemStatus::Updated => "updated",
            ItemStatus::Unchanged => "unchanged",
            ItemStatus::Deleted => "deleted",
            ItemStatus::Failed => "failed",
        }
    }
}

#[derive(Debug)]
pub struct ItemResult {
    pub status: ItemStatus,
    pub id: Option<CustomerId>,
    pub version: Option<i64>,
    pub error: Option<DomainError>,
}

impl ItemResult {
    fn failed(error: impl Into<DomainError>) -> Self {
        Self {
            status: ItemStatus::Failed,
            id: None,
            version: None,
            error: Some(error.into()),
        }
    }
}

/// The outcome of a sync request.
#[derive(Debug)]
pub struct SyncReport {
    pub results: Vec<ItemResult>,
    /// False when an atomic batch had a failure and nothing was applied.
    pub applied: bool,
}

impl SyncReport {
    /// Items per status, in the order created, updated, unchanged, deleted, failed.
    pub fn count(&self, status: ItemStatus) -> usize {
        self.results.iter().filter(|r| r.status == status).count()
    }

    pub fn any_failed(&self) -> bool {
        self.results.iter().any(|r| r.status == ItemStatus::Failed)
    }
}

/// A stored customer as a transaction loads it.
#[derive(Clone, Debug)]
pub struct StoredCustomer {
    pub customer: Customer,
    pub password_hash: Option<String>,
}

/// A change record to write, with the customer as of that change.
#[derive(Clone, Debug)]
pub struct ChangeRecord {
    pub customer_id: CustomerId,
    pub external_id: Option<String>,
    pub kind: ChangeKind,
    pub version: i64,
    pub at: Timestamp,
    /// The customer's JSON; `None` for a deletion.
    pub customer: Option<String>,
    /// The customer's teams as of the change (before it, for a deletion): who may see it.
    pub teams: Vec<String>,
}

impl ChangeRecord {
    /// The record of a create or update that left the customer as `customer`, whose JSON is
    /// `doc`.
    pub fn of_write(customer: &Customer, kind: ChangeKind, doc: String) -> Self {
        Self {
            customer_id: customer.id,
            external_id: customer.external_id.clone(),
            kind,
            version: customer.version,
            at: customer.updated_at,
            customer: Some(doc),
            teams: customer.teams.clone(),
        }
    }

    /// Lists the change for the teams the customer had `before` it and left with it too: a
    /// caller restricted to such a team sees it as the customer's deletion
    /// ([`crate::ChangeEvent::as_seen_by`]).
    pub fn seen_by_teams_left(mut self, before: &Customer) -> Self {
        for team in &before.teams {
            if !self.teams.contains(team) {
                self.teams.push(team.clone());
            }
        }
        self
    }
}

/// A customer row to write, with its response JSON.
#[derive(Clone, Debug)]
pub struct PlannedRow {
    pub stored: StoredCustomer,
    pub doc: String,
}

/// What the store must write for a batch.
#[derive(Debug, Default)]
pub struct Plan {
    pub results: Vec<ItemResult>,
    pub inserts: Vec<PlannedRow>,
    pub updates: Vec<PlannedRow>,
    /// Updated customers whose unique keys change: cleared first, so that values moving between
    /// customers of the batch never clash mid-write.
    pub rekeyed: Vec<CustomerId>,
    pub deletes: Vec<CustomerId>,
    pub changes: Vec<ChangeRecord>,
}

impl SyncBatch {
    /// The batch-key values the store must load (normalized): every item's key and `match`.
    /// Malformed values are left out: no customer has them, and their items fail validation.
    pub fn addressed_values(&self) -> Vec<String> {
        let mut values: Vec<String> = self
            .commands()
            .flat_map(|c| [c.write.key(self.key).value(), c.write.match_value.as_ref()])
            .flatten()
            .filter(|v| is_valid_key(v))
            .map(|v| self.key.normalize(v))
            .collect();
        values.sort_unstable();
        values.dedup();
        values
    }

    /// For each other unique key, the values items set (normalized), whose owners the store
    /// must look up.
    pub fn claimed_values(&self) -> Vec<(CustomerKey, Vec<String>)> {
        CustomerKey::ALL
            .into_iter()
            .filter(|k| *k != self.key)
            .map(|key| {
                let mut values: Vec<String> = self
                    .commands()
                    .filter_map(|c| c.write.key(key).value())
                    .filter(|v| is_valid_key(v))
                    .map(|v| key.normalize(v))
                    .collect();
                values.sort_unstable();
                values.dedup();
                (key, values)
            })
            .filter(|(_, values)| !values.is_empty())
            .collect()
    }

    fn commands(&self) -> impl Iterator<Item = &SyncCommand> {
        self.items.iter().filter_map(|item| match item {
            SyncItem::Write(command) => Some(command.as_ref()),
            SyncItem::Invalid(_) => None,
        })
    }
}

/// A unique-key value owner: a customer of the working set, or one the batch does not touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Row(usize),
    Elsewhere(CustomerId),
}

struct Row {
    stored: StoredCustomer,
    /// The JSON of the latest change, written with the row.
    doc: Option<String>,
    existed: bool,
    deleted: bool,
    dirty: bool,
    rekeyed: bool,
}

struct WorkingSet<'a> {
    key: CustomerKey,
    rows: Vec<Row>,
    owners: HashMap<(CustomerKey, String), Owner>,
    ctx: ApplyContext<'a>,
    scope: &'a Scope,
    plan: Plan,
    /// Stored customers that orders reference: deleting them fails the item.
    with_orders: &'a HashSet<CustomerId>,
}

/// Applies a batch in order to the loaded customers. `owners` lists, for the other unique keys,
/// which stored customer holds each claimed value.
pub fn plan(
    batch: &SyncBatch,
    loaded: Vec<StoredCustomer>,
    owners: &[(CustomerKey, String, CustomerId)],
    now: Timestamp,
    directory: &dyn Directory,
) -> Plan {
    plan_with(
        batch,
        loaded,
        owners,
        now,
        directory,
        &NO_SCHEMA,
        &HashSet::new(),
    )
}

/// [`plan`], with items checked against `schema`, and where deleting one of the `with_orders`
/// customers fails its item with [`DomainError::CustomerHasOrders`].
pub fn plan_with(
    batch: &SyncBatch,
    loaded: Vec<StoredCustomer>,
    owners: &[(CustomerKey, String, CustomerId)],
    now: Timestamp,
    directory: &dyn Directory,
    schema: &Schema,
    with_orders: &HashSet<CustomerId>,
) -> Plan {
    let mut set = WorkingSet {
        with_orders,
        key: batch.key,
        rows: Vec::with_capacity(loaded.len() + batch.items.len()),
        owners: HashMap::with_capacity(loaded.len() * 2 + owners.len()),
        ctx: ApplyContext {
            now,
            directory,
            password: Patch::Absent,
            schema,
        },
        scope: &batch.scope,
        plan: Plan::default(),
    };
    let mut row_of = HashMap::with_capacity(loaded.len());
    for stored in loaded {
        let id = stored.customer.id;
        row_of.insert(id, set.add_row(stored, true));
    }
    for (key, value, id) in owners {
        let owner = row_of
            .get(id)
            .map_or(Owner::Elsewhere(*id), |row| Owner::Row(*row));
        set.owners.entry((*key, value.clone())).or_insert(owner);
    }
    for item in &batch.items {
        let result = match item {
            SyncItem::Invalid(errors) => ItemResult::failed(errors.clone()),
            SyncItem::Write(command) => set.apply_item(command),
        };
        set.plan.results.push(result);
    }
    set.finish()
}

impl WorkingSet<'_> {
    fn add_row(&mut self, stored: StoredCustomer, existed: bool) -> usize {
        let index = self.rows.len();
        for key in CustomerKey::ALL {
            if let Some(value) = stored.customer.key(key) {
                self.owners
                    .insert((key, key.normalize(value)), Owner::Row(index));
            }
        }
        self.rows.push(Row {
            stored,
            doc: None,
            existed,
            deleted: false,
            dirty: false,
            rekeyed: false,
        });
        index
    }

    /// The live row holding this batch-key value.
    fn find(&self, value: &str) -> Option<usize> {
        match self.owners.get(&(self.key, self.key.normalize(value))) {
            Some(Owner::Row(index)) if !self.rows[*index].deleted => Some(*index),
            _ => None,
        }
    }

    fn apply_item(&mut self, command: &SyncCommand) -> ItemResult {
        let write = &command.write;
        let field = self.key.as_str();
        if write
            .match_value
            .as_deref()
            .is_some_and(|v| !is_valid_key(v))
        {
            return ItemResult::failed(ValidationErrors::single(
                "match",
                "invalid_key",
                "match must be a key value: 1 to 255 characters, no control characters",
            ));
        }
        let by_match = write.match_value.as_deref().and_then(|v| self.find(v));
        let key_value = write.key(self.key).value();
        let found = by_match.or_else(|| key_value.and_then(|v| self.find(v)));

        if key_value.is_none() && write.match_value.is_none() {
            return ItemResult::failed(ValidationErrors::single(
                field,
                "required",
                format!("each item needs the batch key {field}"),
            ));
        }
        // A customer outside the caller's scope does not exist for it.
        if found.is_some_and(|i| !self.scope.admits(&self.rows[i].stored.customer)) {
            return ItemResult::failed(DomainError::NotFound);
        }
        if write.delete == Some(true) {
            return match found {
                Some(index) => self.delete(index, write.expected_version),
                None => ItemResult::failed(DomainError::NotFound),
            };
        }
        if key_value.is_none() {
            return ItemResult::failed(ValidationErrors::single(
                field,
                "required",
                format!("an item that is not a delete needs the batch key {field}"),
            ));
        }
        let current = found.map(|i| &self.rows[i].stored);
        if let Some(expected) = write.expected_version {
            let actual = current.map_or(0, |s| s.customer.version);
            if actual != expected {
                return ItemResult::failed(DomainError::VersionConflict { expected, actual });
            }
        }
        self.ctx.password = command.password_hash.clone().map(|_| ());
        let next = match self
            .scope
            .apply(&self.ctx, current.map(|s| &s.customer), write)
        {
            Err(errors) => return ItemResult::failed(errors),
            // Only a stored customer can be unchanged.
            Ok(Applied::Unchanged) => {
                return match current {
                    Some(stored) => ItemResult {
                        status: ItemStatus::Unchanged,
                        id: Some(stored.customer.id),
                        version: Some(stored.customer.version),
                        error: None,
                    },
                    None => ItemResult::failed(DomainError::NotFound),
                };
            }
            Ok(Applied::Changed(next)) => *next,
        };
        if let Some(clash) = self.clash(found, &next) {
            return ItemResult::failed(DomainError::DuplicateKey(clash));
        }
        let password_hash = match &command.password_hash {
            Patch::Absent => current.and_then(|s| s.password_hash.clone()),
            Patch::Null => None,
            Patch::Value(hash) => Some(hash.clone()),
        };
        let mut before = None;
        let (index, kind) = match found {
            Some(index) => {
                self.release_keys(index);
                let row = &mut self.rows[index];
                row.rekeyed |= row.existed && keys_differ(&row.stored.customer, &next);
                let previous = std::mem::replace(
                    &mut row.stored,
                    StoredCustomer {
                        customer: next,
                        password_hash,
                    },
                );
                before = Some(previous.customer);
                row.dirty = true;
                self.claim_keys(index);
                (index, ChangeKind::Updated)
            }
            None => {
                let stored = StoredCustomer {
                    customer: next,
                    password_hash,
                };
                (self.add_row(stored, false), ChangeKind::Created)
            }
        };
        let customer = &self.rows[index].stored.customer;
        let result = ItemResult {
            status: if kind == ChangeKind::Created {
                ItemStatus::Created
            } else {
                ItemStatus::Updated
            },
            id: Some(customer.id),
            version: Some(customer.version),
            error: None,
        };
        self.record(index, kind, before.as_ref());
        result
    }

    fn delete(&mut self, index: usize, expected_version: Option<i64>) -> ItemResult {
        let version = self.rows[index].stored.customer.version;
        let row = &self.rows[index];
        if row.existed && self.with_orders.contains(&row.stored.customer.id) {
            return ItemResult::failed(DomainError::CustomerHasOrders);
        }
        if let Some(expected) = expected_version
            && expected != version
        {
            return ItemResult::failed(DomainError::VersionConflict {
                expected,
                actual: version,
            });
        }
        self.release_keys(index);
        let row = &mut self.rows[index];
        row.deleted = true;
        row.stored.customer.version = version + 1;
        let id = row.stored.customer.id;
        self.record(index, ChangeKind::Deleted, None);
        ItemResult {
            status: ItemStatus::Deleted,
            id: Some(id),
            version: Some(version + 1),
            error: None,
        }
    }

    /// The first unique key whose new value another customer holds.
    fn clash(&self, row: Option<usize>, next: &Customer) -> Option<CustomerKey> {
        CustomerKey::ALL.into_iter().find(|key| {
            let Some(value) = next.key(*key) else {
                return false;
            };
            match self.owners.get(&(*key, key.normalize(value))) {
                None => false,
                Some(Owner::Row(owner)) => Some(*owner) != row && !self.rows[*owner].deleted,
                Some(Owner::Elsewhere(_)) => true,
            }
        })
    }

    fn release_keys(&mut self, index: usize) {
        for key in CustomerKey::ALL {
            if let Some(value) = self.rows[index].stored.customer.key(key) {
                let slot = (key, key.normalize(value));
                if self.owners.get(&slot) == Some(&Owner::Row(index)) {
                    self.owners.remove(&slot);
                }
            }
        }
    }

    fn claim_keys(&mut self, index: usize) {
        for key in CustomerKey::ALL {
            if let Some(value) = self.rows[index].stored.customer.key(key) {
                self.owners
                    .insert((key, key.normalize(value)), Owner::Row(index));
            }
        }
    }

    /// Records the change of row `index`; `before`, the customer as it was before an update.
    fn record(&mut self, index: usize, kind: ChangeKind, before: Option<&Customer>) {
        let row = &mut self.rows[index];
        let doc = match kind {
            ChangeKind::Deleted => None,
            _ => Some(serde_json::to_string(&row.stored.customer).unwrap_or_default()),
        };
        row.doc.clone_from(&doc);
        let customer = &row.stored.customer;
        let change = ChangeRecord {
            customer_id: customer.id,
            external_id: customer.external_id.clone(),
            kind,
            version: customer.version,
            at: if kind == ChangeKind::Deleted {
                self.ctx.now
            } else {
                customer.updated_at
            },
            customer: doc,
            teams: customer.teams.clone(),
        };
        self.plan.changes.push(match before {
            Some(before) => change.seen_by_teams_left(before),
            None => change,
        });
    }

    fn finish(mut self) -> Plan {
        for row in self.rows {
            let id = row.stored.customer.id;
            let planned = |row: Row| PlannedRow {
                doc: row.doc.unwrap_or_default(),
                stored: row.stored,
            };
            match (row.existed, row.deleted) {
                (true, true) => self.plan.deletes.push(id),
                (true, false) if row.dirty => {
                    if row.rekeyed {
                        self.plan.rekeyed.push(id);
                    }
                    self.plan.updates.push(planned(row));
                }
                (false, false) => self.plan.inserts.push(planned(row)),
                _ => {}
            }
        }
        self.plan
    }
}

fn keys_differ(a: &Customer, b: &Customer) -> bool {
    CustomerKey::ALL
        .into_iter()
        .any(|key| a.key(key).map(|v| key.normalize(v)) != b.key(key).map(|v| key.normalize(v)))
}

#[cfg(test)]
mod tests;
