#![allow(clippy::unwrap_used)]

use crate::write::apply;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::write::EmptyDirectory;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// When the loaded customers were created.
const LOADED_AT: i64 = 1_700_000_000_000_000;
/// When the batch runs.
const NOW: i64 = LOADED_AT + 3_600_000_000;

fn now() -> Timestamp {
    Timestamp::from_micros(NOW)
}

fn write(body: Value) -> CustomerWrite {
    serde_json::from_value(body).unwrap()
}

fn item(body: Value) -> SyncItem {
    item_with_password(body, Patch::Absent)
}

fn item_with_password(body: Value, password_hash: Patch<String>) -> SyncItem {
    SyncItem::Write(Box::new(SyncCommand {
        write: write(body),
        password_hash,
    }))
}

/// An item that could not be read, failing with one error on `field`.
fn invalid(field: &str) -> (SyncItem, ValidationErrors) {
    let errors = ValidationErrors::single(field, "unknown_field", "no such field");
    (SyncItem::Invalid(errors.clone()), errors)
}

fn batch_on(key: CustomerKey, items: Vec<SyncItem>) -> SyncBatch {
    SyncBatch {
        key,
        atomic: false,
        scope: crate::Scope::All,
        items,
    }
}

/// A batch keyed by `external_id` from item bodies.
fn batch(bodies: Vec<Value>) -> SyncBatch {
    batch_on(
        CustomerKey::ExternalId,
        bodies.into_iter().map(item).collect(),
    )
}

/// A customer as the store loads it: created at `LOADED_AT`, version 1, no password.
fn stored(body: Value) -> StoredCustomer {
    let ctx = ApplyContext {
        now: Timestamp::from_micros(LOADED_AT),
        directory: &EmptyDirectory,
        password: Patch::Absent,
        schema: &crate::schema::NO_SCHEMA,
    };
    match apply(&ctx, None, &write(body)) {
        Ok(Applied::Changed(customer)) => StoredCustomer {
            customer: *customer,
            password_hash: None,
        },
        other => panic!("create failed: {other:?}"),
    }
}

fn run(batch: &SyncBatch, loaded: &[StoredCustomer]) -> Plan {
    run_with_owners(batch, loaded, &[])
}

fn run_with_owners(
    batch: &SyncBatch,
    loaded: &[StoredCustomer],
    owners: &[(CustomerKey, String, CustomerId)],
) -> Plan {
    plan(batch, loaded.to_vec(), owners, now(), &EmptyDirectory)
}

fn statuses(plan: &Plan) -> Vec<ItemStatus> {
    plan.results.iter().map(|r| r.status).collect()
}

/// Checks a successful result and returns its id.
#[track_caller]
fn assert_ok(result: &ItemResult, status: ItemStatus, version: i64) -> CustomerId {
    assert_eq!(result.status, status, "{result:?}");
    assert_eq!(result.version, Some(version), "{result:?}");
    assert!(result.error.is_none(), "{result:?}");
    result.id.unwrap()
}

#[track_caller]
fn assert_result(result: &ItemResult, status: ItemStatus, id: CustomerId, version: i64) {
    assert_eq!(assert_ok(result, status, version), id, "{result:?}");
}

/// The error of a failed result, which names no customer.
#[track_caller]
fn failure(result: &ItemResult) -> &DomainError {
    assert_eq!(result.status, ItemStatus::Failed, "{result:?}");
    assert_eq!(result.id, None, "{result:?}");
    assert_eq!(result.version, None, "{result:?}");
    result.error.as_ref().unwrap()
}

/// The `(field, code)` pairs of a failed result's validation errors.
#[track_caller]
fn validation(result: &ItemResult) -> Vec<(String, &'static str)> {
    match failure(result) {
        DomainError::Validation(errors) => {
            errors.0.iter().map(|e| (e.field.clone(), e.code)).collect()
        }
        other => panic!("expected a validation failure, got {other:?}"),
    }
}

#[track_caller]
fn assert_duplicate(result: &ItemResult, key: CustomerKey) {
    match failure(result) {
        DomainError::DuplicateKey(k) => assert_eq!(*k, key),
        other => panic!("expected a duplicate {key}, got {other:?}"),
    }
}

#[track_caller]
fn assert_conflict(result: &ItemResult, expected: i64, actual: i64) {
    match failure(result) {
        DomainError::VersionConflict {
            expected: e,
            actual: a,
        } => assert_eq!((*e, *a), (expected, actual)),
        other => panic!("expected a version conflict, got {other:?}"),
    }
}

#[track_caller]
fn assert_not_found(result: &ItemResult) {
    match failure(result) {
        DomainError::NotFound => {}
        other => panic!("expected not found, got {other:?}"),
    }
}

/// The change records as `(customer, kind, version)`.
fn changes(plan: &Plan) -> Vec<(CustomerId, ChangeKind, i64)> {
    plan.changes
        .iter()
        .map(|c| (c.customer_id, c.kind, c.version))
        .collect()
}

/// A change record's customer JSON, which must be there.
fn change_doc(change: &ChangeRecord) -> Customer {
    serde_json::from_str(change.customer.as_deref().unwrap()).unwrap()
}

/// Checks that a planned row's doc is its customer's JSON, and returns the customer.
#[track_caller]
fn row(planned: &PlannedRow) -> &Customer {
    let doc: Customer = serde_json::from_str(&planned.doc).unwrap();
    assert_eq!(doc, planned.stored.customer, "the doc of a planned row");
    &planned.stored.customer
}

#[track_caller]
fn assert_writes_nothing(plan: &Plan) {
    assert!(plan.inserts.is_empty(), "inserts: {:?}", plan.inserts);
    assert!(plan.updates.is_empty(), "updates: {:?}", plan.updates);
    assert!(plan.deletes.is_empty(), "deletes: {:?}", plan.deletes);
    assert!(plan.rekeyed.is_empty(), "rekeyed: {:?}", plan.rekeyed);
    assert!(plan.changes.is_empty(), "changes: {:?}", plan.changes);
}

fn ids(rows: &[PlannedRow]) -> Vec<CustomerId> {
    rows.iter().map(|r| r.stored.customer.id).collect()
}

// ---------------------------------------------------------------------------------------------
// Results and rows
// ---------------------------------------------------------------------------------------------

#[test]
fn items_apply_in_order_with_one_result_each() {
    let ann = stored(json!({"external_id": "k1", "note": "a"}));
    let bob = stored(json!({"external_id": "k2", "note": "b"}));
    let batch = batch(vec![
        json!({"external_id": "k3", "first_name": "Cy"}),
        json!({"external_id": "k1", "note": "changed"}),
        json!({"external_id": "k2", "note": "b"}),
    ]);
    let plan = run(&batch, &[ann.clone(), bob.clone()]);

    assert_eq!(plan.results.len(), 3);
    let cy = assert_ok(&plan.results[0], ItemStatus::Created, 1);
    assert_ne!(cy, ann.customer.id);
    assert_ne!(cy, bob.customer.id);
    assert_result(&plan.results[1], ItemStatus::Updated, ann.customer.id, 2);
    assert_result(&plan.results[2], ItemStatus::Unchanged, bob.customer.id, 1);

    assert_eq!(ids(&plan.inserts), [cy]);
    let inserted = row(&plan.inserts[0]);
    assert_eq!(inserted.external_id.as_deref(), Some("k3"));
    assert_eq!(inserted.first_name.as_deref(), Some("Cy"));
    assert_eq!(inserted.name.as_deref(), Some("Cy"));
    assert_eq!(inserted.version, 1);
    assert_eq!((inserted.created_at, inserted.updated_at), (now(), now()));

    assert_eq!(ids(&plan.updates), [ann.customer.id]);
    let updated = row(&plan.updates[0]);
    assert_eq!(updated.note.as_deref(), Some("changed"));
    assert_eq!(updated.version, 2);
    assert_eq!(updated.created_at, Timestamp::from_micros(LOADED_AT));
    assert_eq!(updated.updated_at, now());
    assert_eq!(plan.updates[0].stored.password_hash, None);

    assert!(plan.deletes.is_empty());
    assert!(plan.rekeyed.is_empty());
    assert_eq!(
        changes(&plan),
        [
            (cy, ChangeKind::Created, 1),
            (ann.customer.id, ChangeKind::Updated, 2),
        ]
    );
    let created = &plan.changes[0];
    assert_eq!(created.external_id.as_deref(), Some("k3"));
    assert_eq!(created.at, now());
    assert_eq!(&change_doc(created), inserted);
    let changed = &plan.changes[1];
    assert_eq!(changed.external_id.as_deref(), Some("k1"));
    assert_eq!(changed.at, now());
    assert_eq!(&change_doc(changed), updated);
}

#[test]
fn create_then_update_of_a_new_key_is_one_insert_with_two_change_records() {
    let batch = batch(vec![
        json!({"external_id": "k1", "note": "first"}),
        json!({"external_id": "k1", "note": "second"}),
    ]);
    let plan = run(&batch, &[]);

    let id = assert_ok(&plan.results[0], ItemStatus::Created, 1);
    assert_result(&plan.results[1], ItemStatus::Updated, id, 2);
    assert_eq!(ids(&plan.inserts), [id]);
    let inserted = row(&plan.inserts[0]);
    assert_eq!(inserted.version, 2);
    assert_eq!(inserted.note.as_deref(), Some("second"));
    assert_eq!(inserted.created_at, now());
    assert!(plan.updates.is_empty());
    assert!(plan.deletes.is_empty());
    assert!(plan.rekeyed.is_empty());
    assert_eq!(
        changes(&plan),
        [(id, ChangeKind::Created, 1), (id, ChangeKind::Updated, 2)]
    );
    // Each change record holds the customer as of that change.
    let first = change_doc(&plan.changes[0]);
    assert_eq!(first.note.as_deref(), Some("first"));
    assert_eq!(first.version, 1);
    assert_eq!(&change_doc(&plan.changes[1]), inserted);
}

#[test]
fn a_loaded_customer_updated_twice_is_one_update_row_with_two_change_records() {
    let ann = stored(json!({"external_id": "k1", "note": "a"}));
    let id = ann.customer.id;
    let batch = batch(vec![
        json!({"external_id": "k1", "note": "b"}),
        json!({"external_id": "k1", "phone": "555"}),
    ]);
    let plan = run(&batch, &[ann]);

    assert_result(&plan.results[0], ItemStatus::Updated, id, 2);
    assert_result(&plan.results[1], ItemStatus::Updated, id, 3);
    assert!(plan.inserts.is_empty());
    assert_eq!(ids(&plan.updates), [id]);
    let updated = row(&plan.updates[0]);
    assert_eq!(updated.version, 3);
    assert_eq!(updated.note.as_deref(), Some("b"));
    assert_eq!(updated.phone.as_deref(), Some("555"));
    assert!(plan.deletes.is_empty());
    assert!(plan.rekeyed.is_empty());
    assert_eq!(
        changes(&plan),
        [(id, ChangeKind::Updated, 2), (id, ChangeKind::Updated, 3)]
    );
    let first = change_doc(&plan.changes[0]);
    assert_eq!(
        (first.note.as_deref(), first.phone.as_deref()),
        (Some("b"), None)
    );
    assert_eq!(&change_doc(&plan.changes[1]), updated);
}

#[test]
fn unchanged_items_write_nothing() {
    let ann = stored(json!({"external_id": "k1", "note": "a", "tags": ["x"]}));
    let id = ann.customer.id;
    let batch = batch(vec![
        json!({"external_id": "k1"}),
        json!({"external_id": "k1", "note": "a"}),
        json!({"external_id": "k1", "tags": ["x"], "add_tags": ["x"], "phone": null}),
        // Read-only fields are ignored.
        json!({"external_id": "k1", "version": 42, "id": "cus_whatever"}),
    ]);
    let plan = run(&batch, &[ann]);

    assert_eq!(plan.results.len(), 4);
    for result in &plan.results {
        assert_result(result, ItemStatus::Unchanged, id, 1);
    }
    assert_writes_nothing(&plan);
}

#[test]
fn a_change_undone_in_the_same_batch_still_counts_both_changes() {
    let ann = stored(json!({"external_id": "k1", "note": "a"}));
    let id = ann.customer.id;
    let batch = batch(vec![
        json!({"external_id": "k1", "note": "b"}),
        json!({"external_id": "k1", "note": "a"}),
        json!({"external_id": "k1", "note": "a"}),
    ]);
    let plan = run(&batch, &[ann]);

    assert_result(&plan.results[0], ItemStatus::Updated, id, 2);
    assert_result(&plan.results[1], ItemStatus::Updated, id, 3);
    assert_result(&plan.results[2], ItemStatus::Unchanged, id, 3);
    assert_eq!(ids(&plan.updates), [id]);
    assert_eq!(row(&plan.updates[0]).version, 3);
    assert_eq!(row(&plan.updates[0]).note.as_deref(), Some("a"));
    assert_eq!(
        changes(&plan),
        [(id, ChangeKind::Updated, 2), (id, ChangeKind::Updated, 3)]
    );
}

#[test]
fn password_hashes_follow_the_items() {
    let mut ann = stored(json!({"external_id": "k1"}));
    ann.customer.has_password = true;
    ann.password_hash = Some("old-hash".to_owned());
    let bob = stored(json!({"external_id": "k2"}));
    let batch = batch_on(
        CustomerKey::ExternalId,
        vec![
            // No password in the item: the stored hash stays.
            item(json!({"external_id": "k1", "note": "n"})),
            // A new password changes the customer even when nothing else does.
            item_with_password(
                json!({"external_id": "k2"}),
                Patch::Value("new-hash".to_owned()),
            ),
            item_with_password(
                json!({"external_id": "k3"}),
                Patch::Value("k3-hash".to_owned()),
            ),
        ],
    );
    let plan = run(&batch, &[ann.clone(), bob.clone()]);

    assert_result(&plan.results[0], ItemStatus::Updated, ann.customer.id, 2);
    assert_result(&plan.results[1], ItemStatus::Updated, bob.customer.id, 2);
    assert_ok(&plan.results[2], ItemStatus::Created, 1);
    let hashes: Vec<_> = plan
        .updates
        .iter()
        .map(|r| (r.stored.customer.id, r.stored.password_hash.as_deref()))
        .collect();
    assert_eq!(
        hashes,
        [
            (ann.customer.id, Some("old-hash")),
            (bob.customer.id, Some("new-hash")),
        ]
    );
    assert!(plan.updates.iter().all(|r| r.stored.customer.has_password));
    assert_eq!(
        plan.inserts[0].stored.password_hash.as_deref(),
        Some("k3-hash")
    );
    assert!(plan.inserts[0].stored.customer.has_password);

    // Removing the password clears the hash.
    let batch = batch_on(
        CustomerKey::ExternalId,
        vec![item_with_password(
            json!({"external_id": "k1"}),
            Patch::Null,
        )],
    );
    let plan = run(&batch, &[ann.clone()]);
    assert_result(&plan.results[0], ItemStatus::Updated, ann.customer.id, 2);
    assert_eq!(plan.updates[0].stored.password_hash, None);
    assert!(!plan.updates[0].stored.customer.has_password);
}

#[test]
fn a_stored_timestamp_ahead_of_the_clock_is_kept() {
    // The clock went back since the customers were last written.
    let later = Timestamp::from_micros(NOW + 1_000_000);
    let mut ann = stored(json!({"external_id": "k1"}));
    ann.customer.updated_at = later;
    let mut bob = stored(json!({"external_id": "k2"}));
    bob.customer.updated_at = later;
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "note": "n"}),
            json!({"external_id": "k2", "delete": true}),
        ]),
        &[ann, bob],
    );
    assert_eq!(row(&plan.updates[0]).updated_at, later);
    // A change record is dated like the customer it holds; a deletion is dated now.
    let dates: Vec<_> = plan.changes.iter().map(|c| (c.kind, c.at)).collect();
    assert_eq!(
        dates,
        [(ChangeKind::Updated, later), (ChangeKind::Deleted, now())]
    );
}

// ---------------------------------------------------------------------------------------------
// Renames with `match`
// ---------------------------------------------------------------------------------------------

#[test]
fn match_finds_the_customer_by_the_old_value_and_gives_it_the_new_one() {
    let ann = stored(json!({"external_id": "old", "note": "a"}));
    let id = ann.customer.id;
    let batch = batch(vec![json!({"match": "old", "external_id": "new"})]);
    let plan = run(&batch, &[ann]);

    assert_result(&plan.results[0], ItemStatus::Updated, id, 2);
    assert!(plan.inserts.is_empty());
    assert_eq!(ids(&plan.updates), [id]);
    let renamed = row(&plan.updates[0]);
    assert_eq!(renamed.external_id.as_deref(), Some("new"));
    assert_eq!(renamed.note.as_deref(), Some("a"));
    assert_eq!(plan.rekeyed, [id]);
    assert!(plan.deletes.is_empty());
    assert_eq!(changes(&plan), [(id, ChangeKind::Updated, 2)]);
    assert_eq!(plan.changes[0].external_id.as_deref(), Some("new"));
}

#[test]
fn a_renamed_customer_is_found_by_its_new_value_and_its_old_value_is_free() {
    let ann = stored(json!({"external_id": "old"}));
    let id = ann.customer.id;
    let batch = batch(vec![
        json!({"match": "old", "external_id": "new"}),
        json!({"external_id": "new", "note": "n"}),
        json!({"external_id": "old", "note": "someone else"}),
    ]);
    let plan = run(&batch, &[ann]);

    assert_result(&plan.results[0], ItemStatus::Updated, id, 2);
    assert_result(&plan.results[1], ItemStatus::Updated, id, 3);
    let other = assert_ok(&plan.results[2], ItemStatus::Created, 1);
    assert_ne!(other, id);
    assert_eq!(ids(&plan.updates), [id]);
    assert_eq!(row(&plan.updates[0]).external_id.as_deref(), Some("new"));
    assert_eq!(ids(&plan.inserts), [other]);
    assert_eq!(row(&plan.inserts[0]).external_id.as_deref(), Some("old"));
    assert_eq!(plan.rekeyed, [id]);
}

#[test]
fn match_with_an_unknown_old_value_updates_the_holder_of_the_new_one() {
    // The retry of a rename that already went through.
    let ann = stored(json!({"external_id": "new", "note": "a"}));
    let id = ann.customer.id;
    let plan = run(
        &batch(vec![
            json!({"match": "old", "external_id": "new", "note": "a"}),
        ]),
        std::slice::from_ref(&ann),
    );
    assert_result(&plan.results[0], ItemStatus::Unchanged, id, 1);
    assert_writes_nothing(&plan);

    let plan = run(
        &batch(vec![
            json!({"match": "old", "external_id": "new", "note": "b"}),
        ]),
        &[ann],
    );
    assert_result(&plan.results[0], ItemStatus::Updated, id, 2);
    assert_eq!(ids(&plan.updates), [id]);
    assert_eq!(row(&plan.updates[0]).note.as_deref(), Some("b"));
    assert!(plan.inserts.is_empty());
    // The keys did not change.
    assert!(plan.rekeyed.is_empty());
}

#[test]
fn match_with_neither_value_known_creates() {
    let plan = run(
        &batch(vec![json!({"match": "old", "external_id": "new"})]),
        &[],
    );
    let id = assert_ok(&plan.results[0], ItemStatus::Created, 1);
    assert_eq!(ids(&plan.inserts), [id]);
    assert_eq!(row(&plan.inserts[0]).external_id.as_deref(), Some("new"));
    assert!(plan.updates.is_empty());
    assert!(plan.rekeyed.is_empty());
    assert_eq!(changes(&plan), [(id, ChangeKind::Created, 1)]);
}

#[test]
fn match_onto_a_value_another_customer_holds_fails() {
    let ann = stored(json!({"external_id": "k1"}));
    let bob = stored(json!({"external_id": "k2"}));
    let plan = run(
        &batch(vec![json!({"match": "k1", "external_id": "k2"})]),
        &[ann, bob],
    );
    assert_duplicate(&plan.results[0], CustomerKey::ExternalId);
    assert_writes_nothing(&plan);
}

#[test]
fn match_on_an_email_batch_key_ignores_case() {
    let ann = stored(json!({"email": "Ann@Example.com", "note": "a"}));
    let id = ann.customer.id;
    let batch = batch_on(
        CustomerKey::Email,
        vec![
            item(json!({"email": "ANN@example.COM", "note": "b"})),
            item(json!({"match": "ann@EXAMPLE.com", "email": "ann.lee@example.com"})),
        ],
    );
    let plan = run(&batch, &[ann]);

    assert_result(&plan.results[0], ItemStatus::Updated, id, 2);
    assert_result(&plan.results[1], ItemStatus::Updated, id, 3);
    assert!(plan.inserts.is_empty());
    assert_eq!(ids(&plan.updates), [id]);
    let updated = row(&plan.updates[0]);
    assert_eq!(updated.email.as_deref(), Some("ann.lee@example.com"));
    assert_eq!(updated.note.as_deref(), Some("b"));
    assert_eq!(plan.rekeyed, [id]);
}

#[test]
fn rekeyed_lists_the_loaded_customers_whose_unique_keys_change() {
    let ann = stored(json!({"external_id": "k1", "email": "ann@x.fi"}));
    let bob = stored(json!({"external_id": "k2", "email": "bob@x.fi", "username": "bob"}));
    let cy = stored(json!({"external_id": "k3", "email": "cy@x.fi"}));
    let dan = stored(json!({"external_id": "k4", "username": "dan"}));
    let batch = batch(vec![
        // Another email.
        json!({"external_id": "k1", "email": "ann@y.fi"}),
        // Only the case of the email: the same unique value.
        json!({"external_id": "k2", "email": "BOB@x.fi"}),
        // Not a key.
        json!({"external_id": "k3", "note": "n"}),
        // A username cleared.
        json!({"external_id": "k4", "username": null}),
        // A new customer is inserted, never rekeyed.
        json!({"external_id": "k5", "email": "eve@x.fi"}),
    ]);
    let plan = run(&batch, &[ann.clone(), bob.clone(), cy.clone(), dan.clone()]);

    assert_eq!(
        statuses(&plan),
        [
            ItemStatus::Updated,
            ItemStatus::Updated,
            ItemStatus::Updated,
            ItemStatus::Updated,
            ItemStatus::Created,
        ]
    );
    assert_eq!(plan.rekeyed, [ann.customer.id, dan.customer.id]);
    assert_eq!(
        ids(&plan.updates),
        [
            ann.customer.id,
            bob.customer.id,
            cy.customer.id,
            dan.customer.id
        ]
    );
    assert_eq!(row(&plan.updates[1]).email.as_deref(), Some("BOB@x.fi"));
}

#[test]
fn unique_values_can_move_between_customers_of_a_batch() {
    let ann = stored(json!({"external_id": "k1", "email": "a@x.fi"}));
    let bob = stored(json!({"external_id": "k2", "email": "b@x.fi"}));
    let owners = [
        (CustomerKey::Email, "a@x.fi".to_owned(), ann.customer.id),
        (CustomerKey::Email, "b@x.fi".to_owned(), bob.customer.id),
    ];
    let batch = batch(vec![
        // A direct swap clashes while the other still holds the value...
        json!({"external_id": "k1", "email": "b@x.fi"}),
        // ...a swap through a temporary value does not.
        json!({"external_id": "k1", "email": "tmp@x.fi"}),
        json!({"external_id": "k2", "email": "a@x.fi"}),
        json!({"external_id": "k1", "email": "b@x.fi"}),
    ]);
    let plan = run_with_owners(&batch, &[ann.clone(), bob.clone()], &owners);

    assert_duplicate(&plan.results[0], CustomerKey::Email);
    assert_result(&plan.results[1], ItemStatus::Updated, ann.customer.id, 2);
    assert_result(&plan.results[2], ItemStatus::Updated, bob.customer.id, 2);
    assert_result(&plan.results[3], ItemStatus::Updated, ann.customer.id, 3);
    assert_eq!(plan.rekeyed, [ann.customer.id, bob.customer.id]);
    let emails: Vec<_> = plan
        .updates
        .iter()
        .map(|r| (row(r).id, row(r).email.as_deref()))
        .collect();
    assert_eq!(
        emails,
        [
            (ann.customer.id, Some("b@x.fi")),
            (bob.customer.id, Some("a@x.fi")),
        ]
    );
    assert_eq!(plan.changes.len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Deletes
// ---------------------------------------------------------------------------------------------

#[test]
fn deleting_a_loaded_customer() {
    let ann = stored(json!({"external_id": "k1", "note": "a"}));
    let id = ann.customer.id;
    let plan = run(
        &batch(vec![json!({"external_id": "k1", "delete": true})]),
        &[ann],
    );

    assert_result(&plan.results[0], ItemStatus::Deleted, id, 2);
    assert_eq!(plan.deletes, [id]);
    assert!(plan.inserts.is_empty());
    assert!(plan.updates.is_empty());
    assert!(plan.rekeyed.is_empty());
    assert_eq!(changes(&plan), [(id, ChangeKind::Deleted, 2)]);
    let change = &plan.changes[0];
    assert_eq!(change.customer, None);
    assert_eq!(change.external_id.as_deref(), Some("k1"));
    assert_eq!(change.at, now());
}

#[test]
fn deleting_a_missing_key_fails_not_found() {
    let ann = stored(json!({"external_id": "k1"}));
    let plan = run(
        &batch(vec![
            json!({"external_id": "nobody", "delete": true}),
            json!({"match": "nobody", "external_id": "nobody-either", "delete": true}),
        ]),
        &[ann],
    );
    assert_not_found(&plan.results[0]);
    assert_not_found(&plan.results[1]);
    assert_writes_nothing(&plan);
}

#[test]
fn deleting_by_match_deletes_the_customer_holding_the_old_value() {
    let ann = stored(json!({"external_id": "old"}));
    let id = ann.customer.id;
    let plan = run(
        &batch(vec![
            json!({"match": "old", "external_id": "new", "delete": true}),
        ]),
        &[ann],
    );
    assert_result(&plan.results[0], ItemStatus::Deleted, id, 2);
    assert_eq!(plan.deletes, [id]);
    assert_eq!(changes(&plan), [(id, ChangeKind::Deleted, 2)]);
}

#[test]
fn a_customer_deleted_once_cannot_be_deleted_again() {
    let ann = stored(json!({"external_id": "k1"}));
    let id = ann.customer.id;
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "delete": true}),
            json!({"external_id": "k1", "delete": true}),
        ]),
        &[ann],
    );
    assert_result(&plan.results[0], ItemStatus::Deleted, id, 2);
    assert_not_found(&plan.results[1]);
    assert_eq!(plan.deletes, [id]);
    assert_eq!(changes(&plan), [(id, ChangeKind::Deleted, 2)]);
}

#[test]
fn deleting_a_customer_updated_earlier_in_the_batch() {
    let ann = stored(json!({"external_id": "k1", "email": "a@x.fi"}));
    let id = ann.customer.id;
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "email": "b@x.fi"}),
            json!({"external_id": "k1", "delete": true}),
        ]),
        &[ann],
    );
    assert_result(&plan.results[0], ItemStatus::Updated, id, 2);
    assert_result(&plan.results[1], ItemStatus::Deleted, id, 3);
    assert_eq!(plan.deletes, [id]);
    assert!(plan.updates.is_empty());
    assert!(plan.rekeyed.is_empty());
    assert_eq!(
        changes(&plan),
        [(id, ChangeKind::Updated, 2), (id, ChangeKind::Deleted, 3)]
    );
}

#[test]
fn deleting_a_customer_created_in_the_same_batch_writes_only_change_records() {
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "note": "a"}),
            json!({"external_id": "k1", "delete": true}),
        ]),
        &[],
    );
    let id = assert_ok(&plan.results[0], ItemStatus::Created, 1);
    assert_result(&plan.results[1], ItemStatus::Deleted, id, 2);
    assert!(plan.inserts.is_empty());
    assert!(plan.updates.is_empty());
    assert!(plan.deletes.is_empty());
    assert!(plan.rekeyed.is_empty());
    assert_eq!(
        changes(&plan),
        [(id, ChangeKind::Created, 1), (id, ChangeKind::Deleted, 2)]
    );
    assert_eq!(change_doc(&plan.changes[0]).note.as_deref(), Some("a"));
    assert_eq!(plan.changes[1].customer, None);
    assert_eq!(plan.changes[1].external_id.as_deref(), Some("k1"));
}

#[test]
fn recreating_a_deleted_key_gives_a_new_customer() {
    let ann = stored(json!({"external_id": "k1", "note": "a"}));
    let old = ann.customer.id;
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "delete": true}),
            json!({"external_id": "k1", "note": "a"}),
            json!({"external_id": "k1", "delete": true}),
            json!({"external_id": "k1", "note": "b"}),
        ]),
        &[ann],
    );
    assert_result(&plan.results[0], ItemStatus::Deleted, old, 2);
    let second = assert_ok(&plan.results[1], ItemStatus::Created, 1);
    assert_result(&plan.results[2], ItemStatus::Deleted, second, 2);
    let third = assert_ok(&plan.results[3], ItemStatus::Created, 1);
    assert_eq!(
        BTreeSet::from([old, second, third]).len(),
        3,
        "every creation has its own id"
    );
    assert_eq!(plan.deletes, [old]);
    assert_eq!(ids(&plan.inserts), [third]);
    let inserted = row(&plan.inserts[0]);
    assert_eq!(inserted.external_id.as_deref(), Some("k1"));
    assert_eq!(inserted.note.as_deref(), Some("b"));
    assert_eq!(inserted.version, 1);
    assert!(plan.updates.is_empty());
    assert_eq!(
        changes(&plan),
        [
            (old, ChangeKind::Deleted, 2),
            (second, ChangeKind::Created, 1),
            (second, ChangeKind::Deleted, 2),
            (third, ChangeKind::Created, 1),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Expected versions
// ---------------------------------------------------------------------------------------------

#[test]
fn a_mismatched_expected_version_fails_and_writes_nothing() {
    let ann = stored(json!({"external_id": "k1", "note": "a"}));
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "note": "b", "expected_version": 3}),
            json!({"external_id": "k1", "expected_version": 0, "delete": true}),
        ]),
        &[ann],
    );
    assert_conflict(&plan.results[0], 3, 1);
    assert_conflict(&plan.results[1], 0, 1);
    assert_writes_nothing(&plan);
}

#[test]
fn a_matching_expected_version_applies_and_follows_the_batch() {
    let ann = stored(json!({"external_id": "k1", "note": "a"}));
    let id = ann.customer.id;
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "note": "b", "expected_version": 1}),
            // The first item moved the customer to version 2.
            json!({"external_id": "k1", "note": "c", "expected_version": 1}),
            json!({"external_id": "k1", "note": "c", "expected_version": 2}),
            json!({"external_id": "k1", "note": "c", "expected_version": 3}),
            json!({"external_id": "k1", "delete": true, "expected_version": 3}),
        ]),
        &[ann],
    );
    assert_result(&plan.results[0], ItemStatus::Updated, id, 2);
    assert_conflict(&plan.results[1], 1, 2);
    assert_result(&plan.results[2], ItemStatus::Updated, id, 3);
    assert_result(&plan.results[3], ItemStatus::Unchanged, id, 3);
    assert_result(&plan.results[4], ItemStatus::Deleted, id, 4);
    assert_eq!(plan.deletes, [id]);
    assert_eq!(
        changes(&plan),
        [
            (id, ChangeKind::Updated, 2),
            (id, ChangeKind::Updated, 3),
            (id, ChangeKind::Deleted, 4),
        ]
    );
}

#[test]
fn an_expected_version_on_a_missing_customer_conflicts_with_version_0() {
    let plan = run(
        &batch(vec![json!({"external_id": "k1", "expected_version": 1})]),
        &[],
    );
    assert_conflict(&plan.results[0], 1, 0);
    assert_writes_nothing(&plan);

    // Version 0 is what a missing customer has: the item creates it.
    let plan = run(
        &batch(vec![json!({"external_id": "k1", "expected_version": 0})]),
        &[],
    );
    let id = assert_ok(&plan.results[0], ItemStatus::Created, 1);
    assert_eq!(ids(&plan.inserts), [id]);
}

// ---------------------------------------------------------------------------------------------
// Unique keys of the other fields
// ---------------------------------------------------------------------------------------------

#[test]
fn an_email_owned_outside_the_batch_is_refused() {
    let ann = stored(json!({"external_id": "k1"}));
    let other = CustomerId::new();
    let owners = [(CustomerKey::Email, "x@y.fi".to_owned(), other)];
    let plan = run_with_owners(
        &batch(vec![
            json!({"external_id": "k2", "email": "x@y.fi"}),
            json!({"external_id": "k1", "email": "X@Y.fi"}),
            json!({"external_id": "k3", "email": "z@y.fi"}),
        ]),
        &[ann],
        &owners,
    );
    assert_duplicate(&plan.results[0], CustomerKey::Email);
    assert_duplicate(&plan.results[1], CustomerKey::Email);
    let id = assert_ok(&plan.results[2], ItemStatus::Created, 1);
    assert_eq!(ids(&plan.inserts), [id]);
    assert!(plan.updates.is_empty());
    assert_eq!(changes(&plan), [(id, ChangeKind::Created, 1)]);
}

#[test]
fn a_username_owned_outside_the_batch_is_refused() {
    let owners = [(CustomerKey::Username, "ann".to_owned(), CustomerId::new())];
    let plan = run_with_owners(
        &batch(vec![
            json!({"external_id": "k1", "username": "ann"}),
            // Usernames compare exactly.
            json!({"external_id": "k2", "username": "Ann"}),
        ]),
        &[],
        &owners,
    );
    assert_duplicate(&plan.results[0], CustomerKey::Username);
    assert_ok(&plan.results[1], ItemStatus::Created, 1);
}

#[test]
fn an_email_a_loaded_customer_keeps_is_refused() {
    let ann = stored(json!({"external_id": "k1", "email": "Ann@x.fi"}));
    let plan = run(
        &batch(vec![json!({"external_id": "k2", "email": "ann@X.fi"})]),
        &[ann],
    );
    assert_duplicate(&plan.results[0], CustomerKey::Email);
    assert_writes_nothing(&plan);
}

#[test]
fn a_customer_may_keep_its_own_email_in_another_case() {
    let ann = stored(json!({"external_id": "k1", "email": "ann@x.fi"}));
    let id = ann.customer.id;
    let owners = [(CustomerKey::Email, "ann@x.fi".to_owned(), id)];
    let plan = run_with_owners(
        &batch(vec![json!({"external_id": "k1", "email": "ANN@x.fi"})]),
        &[ann],
        &owners,
    );
    assert_result(&plan.results[0], ItemStatus::Updated, id, 2);
    assert_eq!(row(&plan.updates[0]).email.as_deref(), Some("ANN@x.fi"));
}

#[test]
fn two_items_claiming_the_same_new_email_the_second_fails() {
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "email": "New@x.fi"}),
            json!({"external_id": "k2", "email": "new@X.FI"}),
            json!({"external_id": "k2", "email": "other@x.fi"}),
        ]),
        &[],
    );
    let first = assert_ok(&plan.results[0], ItemStatus::Created, 1);
    assert_duplicate(&plan.results[1], CustomerKey::Email);
    let second = assert_ok(&plan.results[2], ItemStatus::Created, 1);
    assert_eq!(ids(&plan.inserts), [first, second]);
    assert_eq!(row(&plan.inserts[0]).email.as_deref(), Some("New@x.fi"));
    assert_eq!(row(&plan.inserts[1]).email.as_deref(), Some("other@x.fi"));
}

#[test]
fn an_email_freed_by_an_item_can_be_taken_by_a_later_one() {
    let ann = stored(json!({"external_id": "k1", "email": "a@x.fi"}));
    let id = ann.customer.id;
    // The store reports the owner of a claimed value even when it is loaded.
    let owners = [(CustomerKey::Email, "a@x.fi".to_owned(), id)];
    let plan = run_with_owners(
        &batch(vec![
            json!({"external_id": "k2", "email": "a@x.fi"}),
            json!({"external_id": "k1", "email": "a2@x.fi"}),
            json!({"external_id": "k2", "email": "A@X.fi"}),
        ]),
        &[ann],
        &owners,
    );
    assert_duplicate(&plan.results[0], CustomerKey::Email);
    assert_result(&plan.results[1], ItemStatus::Updated, id, 2);
    let bob = assert_ok(&plan.results[2], ItemStatus::Created, 1);
    assert_eq!(plan.rekeyed, [id]);
    assert_eq!(ids(&plan.updates), [id]);
    assert_eq!(ids(&plan.inserts), [bob]);
    assert_eq!(row(&plan.inserts[0]).email.as_deref(), Some("A@X.fi"));
}

#[test]
fn an_email_freed_by_a_clear_or_a_delete_can_be_taken() {
    let ann = stored(json!({"external_id": "k1", "email": "a@x.fi"}));
    let bob = stored(json!({"external_id": "k2", "email": "b@x.fi"}));
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "email": null}),
            json!({"external_id": "k2", "delete": true}),
            json!({"external_id": "k3", "email": "a@x.fi"}),
            json!({"external_id": "k4", "email": "b@x.fi"}),
        ]),
        &[ann.clone(), bob.clone()],
    );
    assert_eq!(
        statuses(&plan),
        [
            ItemStatus::Updated,
            ItemStatus::Deleted,
            ItemStatus::Created,
            ItemStatus::Created,
        ]
    );
    assert_eq!(plan.rekeyed, [ann.customer.id]);
    assert_eq!(plan.deletes, [bob.customer.id]);
    assert_eq!(plan.inserts.len(), 2);
}

#[test]
fn an_email_taken_by_a_customer_created_and_deleted_in_the_batch_is_free_again() {
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "email": "a@x.fi"}),
            json!({"external_id": "k1", "delete": true}),
            json!({"external_id": "k2", "email": "a@x.fi"}),
        ]),
        &[],
    );
    let first = assert_ok(&plan.results[0], ItemStatus::Created, 1);
    assert_result(&plan.results[1], ItemStatus::Deleted, first, 2);
    let second = assert_ok(&plan.results[2], ItemStatus::Created, 1);
    assert_eq!(ids(&plan.inserts), [second]);
}

// ---------------------------------------------------------------------------------------------
// Failing items
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unreadable_item_fails_with_its_errors_and_the_others_go_on() {
    let ann = stored(json!({"external_id": "k1"}));
    let (bad, errors) = invalid("nickname");
    let batch = batch_on(
        CustomerKey::ExternalId,
        vec![
            item(json!({"external_id": "k1", "note": "a"})),
            bad,
            item(json!({"external_id": "k1", "note": "b"})),
            item(json!({"external_id": "k2"})),
        ],
    );
    let plan = run(&batch, std::slice::from_ref(&ann));

    assert_eq!(plan.results.len(), 4);
    assert_result(&plan.results[0], ItemStatus::Updated, ann.customer.id, 2);
    match failure(&plan.results[1]) {
        DomainError::Validation(got) => assert_eq!(got, &errors),
        other => panic!("{other:?}"),
    }
    assert_result(&plan.results[2], ItemStatus::Updated, ann.customer.id, 3);
    let bob = assert_ok(&plan.results[3], ItemStatus::Created, 1);
    assert_eq!(ids(&plan.updates), [ann.customer.id]);
    assert_eq!(ids(&plan.inserts), [bob]);
    assert_eq!(plan.changes.len(), 3);
}

#[test]
fn an_item_the_write_rules_refuse_fails_and_changes_nothing() {
    let ann = stored(json!({"external_id": "k1", "note": "a"}));
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "note": "b", "email": "not-an-email"}),
            json!({"external_id": "k2", "currency": "XXQ"}),
            json!({"external_id": "k1", "note": "a"}),
        ]),
        std::slice::from_ref(&ann),
    );
    assert_eq!(
        validation(&plan.results[0]),
        [("email".to_owned(), "invalid_email")]
    );
    assert_eq!(
        validation(&plan.results[1]),
        [("currency".to_owned(), "invalid_currency")]
    );
    // The refused change to note was not applied.
    assert_result(&plan.results[2], ItemStatus::Unchanged, ann.customer.id, 1);
    assert_writes_nothing(&plan);
}

#[test]
fn an_item_without_the_batch_key_fails_as_required() {
    let ann = stored(json!({"external_id": "k1", "email": "a@x.fi"}));
    let plan = run(
        &batch(vec![
            json!({"note": "n"}),
            json!({"external_id": null, "note": "n"}),
            json!({"match": "k1", "note": "n"}),
        ]),
        std::slice::from_ref(&ann),
    );
    for result in &plan.results {
        assert_eq!(validation(result), [("external_id".to_owned(), "required")]);
    }
    assert_writes_nothing(&plan);

    let plan = run(
        &batch_on(
            CustomerKey::Email,
            vec![item(json!({"external_id": "k1", "note": "n"}))],
        ),
        &[ann],
    );
    assert_eq!(
        validation(&plan.results[0]),
        [("email".to_owned(), "required")]
    );
    assert_writes_nothing(&plan);
}

// ---------------------------------------------------------------------------------------------
// What the store must load
// ---------------------------------------------------------------------------------------------

#[test]
fn addressed_values_are_the_normalized_keys_and_matches() {
    let (bad, _) = invalid("email");
    let batch = batch_on(
        CustomerKey::Email,
        vec![
            item(json!({"email": "Bob@x.fi"})),
            item(json!({"email": "ann@x.fi", "match": "OLD@x.fi"})),
            bad,
            item(json!({"email": "bob@X.FI", "delete": true})),
            item(json!({"email": null, "external_id": "k1"})),
            item(json!({"match": "old@X.fi"})),
        ],
    );
    assert_eq!(
        batch.addressed_values(),
        ["ann@x.fi", "bob@x.fi", "old@x.fi"]
    );

    // Other keys keep their case.
    let batch = batch_on(
        CustomerKey::ExternalId,
        vec![
            item(json!({"external_id": "K1", "email": "Z@x.fi"})),
            item(json!({"external_id": "k1"})),
            item(json!({"external_id": "k1", "match": "K0"})),
        ],
    );
    assert_eq!(batch.addressed_values(), ["K0", "K1", "k1"]);

    assert!(
        batch_on(CustomerKey::Username, vec![invalid("x").0])
            .addressed_values()
            .is_empty()
    );
}

#[test]
fn claimed_values_are_the_other_keys_normalized_sorted_and_deduplicated() {
    let (bad, _) = invalid("email");
    let batch = batch_on(
        CustomerKey::ExternalId,
        vec![
            item(json!({"external_id": "k1", "email": "Zed@x.fi", "username": "zed"})),
            item(json!({"external_id": "k2", "email": "amy@x.fi", "username": "Amy"})),
            bad,
            item(json!({"external_id": "k3", "email": "ZED@X.FI", "username": "zed"})),
            item(json!({"external_id": "k4", "email": null, "username": null})),
        ],
    );
    assert_eq!(
        batch.claimed_values(),
        [
            (
                CustomerKey::Email,
                vec!["amy@x.fi".to_owned(), "zed@x.fi".to_owned()]
            ),
            (
                CustomerKey::Username,
                vec!["Amy".to_owned(), "zed".to_owned()]
            ),
        ]
    );

    // The batch key is never claimed; keys no item sets are left out.
    let batch = batch_on(
        CustomerKey::Email,
        vec![
            item(json!({"email": "a@x.fi", "external_id": "E2"})),
            item(json!({"email": "b@x.fi", "external_id": "E1"})),
            item(json!({"email": "c@x.fi", "external_id": "E2"})),
        ],
    );
    assert_eq!(
        batch.claimed_values(),
        [(
            CustomerKey::ExternalId,
            vec!["E1".to_owned(), "E2".to_owned()]
        )]
    );
    assert!(
        batch_on(CustomerKey::Email, vec![invalid("x").0])
            .claimed_values()
            .is_empty()
    );
}

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

#[test]
fn the_report_counts_statuses_and_failures() {
    let ann = stored(json!({"external_id": "k1"}));
    let bob = stored(json!({"external_id": "k2"}));
    let cy = stored(json!({"external_id": "k3"}));
    let plan = run(
        &batch(vec![
            json!({"external_id": "k1", "note": "n"}),
            json!({"external_id": "k2"}),
            json!({"external_id": "k3", "delete": true}),
            json!({"external_id": "k4"}),
            json!({"external_id": "k5"}),
            json!({"external_id": "k6", "delete": true}),
            json!({"note": "no key"}),
        ]),
        &[ann, bob, cy],
    );
    let report = SyncReport {
        results: plan.results,
        applied: true,
    };
    let counts: Vec<_> = [
        ItemStatus::Created,
        ItemStatus::Updated,
        ItemStatus::Unchanged,
        ItemStatus::Deleted,
        ItemStatus::Failed,
    ]
    .into_iter()
    .map(|s| (s.as_str(), report.count(s)))
    .collect();
    assert_eq!(
        counts,
        [
            ("created", 2),
            ("updated", 1),
            ("unchanged", 1),
            ("deleted", 1),
            ("failed", 2),
        ]
    );
    assert!(report.any_failed());

    let mut results = report.results;
    results.retain(|r| r.status != ItemStatus::Failed);
    let report = SyncReport {
        results,
        applied: true,
    };
    assert_eq!(report.count(ItemStatus::Failed), 0);
    assert_eq!(report.count(ItemStatus::Created), 2);
    assert!(!report.any_failed());

    let empty = SyncReport {
        results: Vec::new(),
        applied: true,
    };
    assert_eq!(empty.count(ItemStatus::Created), 0);
    assert!(!empty.any_failed());
}

// ---------------------------------------------------------------------------------------------
// Property: the planner against a model
// ---------------------------------------------------------------------------------------------

const KEYS: [&str; 5] = ["k0", "k1", "k2", "k3", "k4"];
const NOTES: [Option<&str>; 3] = [None, Some("a"), Some("b")];

#[derive(Clone, Debug)]
enum Op {
    /// Upsert `KEYS[to]` with `NOTES[note]`, renaming `KEYS[from]` when given.
    Write {
        from: Option<usize>,
        to: usize,
        note: usize,
    },
    Delete(usize),
}

impl Op {
    fn body(&self) -> Value {
        match self {
            Op::Write { from, to, note } => {
                let mut body = json!({"external_id": KEYS[*to], "note": NOTES[*note]});
                if let Some(from) = from {
                    body["match"] = json!(KEYS[*from]);
                }
                body
            }
            Op::Delete(key) => json!({"external_id": KEYS[*key], "delete": true}),
        }
    }
}

/// Who a customer of the model is: a loaded one (by index) or the one an item created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Loaded(usize),
    CreatedBy(usize),
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    who: Who,
    note: Option<&'static str>,
    version: i64,
}

/// The expected outcome of an item.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outcome {
    Done(ItemStatus, Who, i64),
    NotFound,
    Duplicate,
}

/// The batch semantics applied naively, item by item, to a map from key to customer.
#[derive(Default)]
struct Model(BTreeMap<&'static str, Entry>);

impl Model {
    fn apply(&mut self, index: usize, op: &Op) -> Outcome {
        match op {
            Op::Delete(key) => match self.0.remove(KEYS[*key]) {
                Some(entry) => Outcome::Done(ItemStatus::Deleted, entry.who, entry.version + 1),
                None => Outcome::NotFound,
            },
            Op::Write { from, to, note } => {
                let (to, note) = (KEYS[*to], NOTES[*note]);
                let found = from
                    .map(|f| KEYS[f])
                    .filter(|f| self.0.contains_key(f))
                    .or_else(|| self.0.contains_key(to).then_some(to));
                match found {
                    None => {
                        let who = Who::CreatedBy(index);
                        let version = 1;
                        self.0.insert(to, Entry { who, note, version });
                        Outcome::Done(ItemStatus::Created, who, version)
                    }
                    Some(found) if found != to && self.0.contains_key(to) => Outcome::Duplicate,
                    Some(found) => {
                        let entry = self.0.remove(found).unwrap();
                        if found == to && entry.note == note {
                            let outcome =
                                Outcome::Done(ItemStatus::Unchanged, entry.who, entry.version);
                            self.0.insert(to, entry);
                            return outcome;
                        }
                        let entry = Entry {
                            note,
                            version: entry.version + 1,
                            ..entry
                        };
                        let outcome = Outcome::Done(ItemStatus::Updated, entry.who, entry.version);
                        self.0.insert(to, entry);
                        outcome
                    }
                }
            }
        }
    }
}

fn op(renames: bool) -> BoxedStrategy<Op> {
    let from = if renames {
        proptest::option::of(0..KEYS.len()).boxed()
    } else {
        Just(None).boxed()
    };
    prop_oneof![
        3 => (from, 0..KEYS.len(), 0..NOTES.len())
            .prop_map(|(from, to, note)| Op::Write { from, to, note }),
        1 => (0..KEYS.len()).prop_map(Op::Delete),
    ]
    .boxed()
}

/// For each key, the note and version of the customer loaded with it, if any.
fn initial() -> impl Strategy<Value = Vec<Option<(usize, i64)>>> {
    proptest::collection::vec(proptest::option::of((0..NOTES.len(), 1..4_i64)), KEYS.len())
}

fn check_against_model(initial: &[Option<(usize, i64)>], ops: &[Op]) {
    let mut loaded = Vec::new();
    let mut model = Model::default();
    for (key, slot) in KEYS.iter().zip(initial) {
        if let Some((note, version)) = slot {
            let mut customer = stored(json!({"external_id": key, "note": NOTES[*note]}));
            customer.customer.version = *version;
            model.0.insert(
                key,
                Entry {
                    who: Who::Loaded(loaded.len()),
                    note: NOTES[*note],
                    version: *version,
                },
            );
            loaded.push(customer);
        }
    }
    let batch = batch(ops.iter().map(Op::body).collect());
    let plan = run(&batch, &loaded);
    assert_eq!(plan.results.len(), ops.len());

    // The ids of the customers the model knows, as the planner assigned them.
    let mut created: BTreeMap<usize, CustomerId> = BTreeMap::new();
    let id_of = |who: Who, created: &BTreeMap<usize, CustomerId>| match who {
        Who::Loaded(i) => loaded[i].customer.id,
        Who::CreatedBy(i) => created[&i],
    };
    let mut expected_changes = Vec::new();
    for (index, (op, result)) in ops.iter().zip(&plan.results).enumerate() {
        let context = format!("item {index} {op:?}: {result:?}");
        match model.apply(index, op) {
            Outcome::Done(status, who, version) => {
                assert_eq!(result.status, status, "{context}");
                assert_eq!(result.version, Some(version), "{context}");
                if status == ItemStatus::Created {
                    let id = result.id.unwrap();
                    assert!(
                        !loaded.iter().any(|s| s.customer.id == id)
                            && !created.values().any(|c| *c == id),
                        "a created customer reuses an id: {context}"
                    );
                    created.insert(index, id);
                }
                let id = id_of(who, &created);
                assert_eq!(result.id, Some(id), "{context}");
                let kind = match status {
                    ItemStatus::Created => Some(ChangeKind::Created),
                    ItemStatus::Updated => Some(ChangeKind::Updated),
                    ItemStatus::Deleted => Some(ChangeKind::Deleted),
                    _ => None,
                };
                if let Some(kind) = kind {
                    expected_changes.push((id, kind, version));
                }
            }
            Outcome::NotFound => assert_not_found(result),
            Outcome::Duplicate => assert_duplicate(result, CustomerKey::ExternalId),
        }
    }
    let changing = plan
        .results
        .iter()
        .filter(|r| {
            matches!(
                r.status,
                ItemStatus::Created | ItemStatus::Updated | ItemStatus::Deleted
            )
        })
        .count();
    assert_eq!(plan.changes.len(), changing);
    assert_eq!(changes(&plan), expected_changes);

    // The rows to write are consistent: each customer at most once, updates and deletes only of
    // loaded customers, inserts only of new ones, rekeyed only among the updates.
    let loaded_ids: BTreeSet<_> = loaded.iter().map(|s| s.customer.id).collect();
    let updates: BTreeSet<_> = ids(&plan.updates).into_iter().collect();
    let deletes: BTreeSet<_> = plan.deletes.iter().copied().collect();
    let inserts: BTreeSet<_> = ids(&plan.inserts).into_iter().collect();
    assert_eq!(updates.len(), plan.updates.len());
    assert_eq!(deletes.len(), plan.deletes.len());
    assert_eq!(inserts.len(), plan.inserts.len());
    assert!(updates.is_subset(&loaded_ids) && deletes.is_subset(&loaded_ids));
    assert!(updates.is_disjoint(&deletes));
    assert!(inserts.is_disjoint(&loaded_ids));
    let rekeyed: BTreeSet<_> = plan.rekeyed.iter().copied().collect();
    assert_eq!(rekeyed.len(), plan.rekeyed.len());
    assert!(rekeyed.is_subset(&updates));
    for planned in plan.updates.iter().chain(&plan.inserts) {
        row(planned);
    }
    for planned in &plan.updates {
        let before = &loaded
            .iter()
            .find(|s| s.customer.id == row(planned).id)
            .unwrap();
        let key_changed = before.customer.external_id != row(planned).external_id;
        assert!(!key_changed || rekeyed.contains(&row(planned).id));
    }

    // The final state: the loaded rows, updated, minus the deleted ones, plus the inserted ones.
    let mut state: BTreeMap<CustomerId, Customer> = loaded
        .iter()
        .map(|s| (s.customer.id, s.customer.clone()))
        .collect();
    for id in &plan.deletes {
        state.remove(id);
    }
    for planned in plan.updates.iter().chain(&plan.inserts) {
        state.insert(planned.stored.customer.id, planned.stored.customer.clone());
    }
    let mut by_key = BTreeMap::new();
    for customer in state.values() {
        let key = customer.external_id.clone().unwrap();
        let previous = by_key.insert(key, (customer.id, customer.note.clone(), customer.version));
        assert!(previous.is_none(), "two customers with one key: {state:?}");
    }
    let expected: BTreeMap<_, _> = model
        .0
        .iter()
        .map(|(key, entry)| {
            let id = id_of(entry.who, &created);
            (
                (*key).to_owned(),
                (id, entry.note.map(str::to_owned), entry.version),
            )
        })
        .collect();
    assert_eq!(by_key, expected);
}

proptest! {
    #[test]
    fn upserts_and_deletes_match_the_model(
        initial in initial(),
        ops in proptest::collection::vec(op(false), 0..24),
    ) {
        check_against_model(&initial, &ops);
    }

    #[test]
    fn renames_upserts_and_deletes_match_the_model(
        initial in initial(),
        ops in proptest::collection::vec(op(true), 0..24),
    ) {
        check_against_model(&initial, &ops);
    }
}
