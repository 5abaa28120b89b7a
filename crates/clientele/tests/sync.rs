//! Bulk sync (`POST /v1/customers/sync`) over HTTP, on SQLite and PostgreSQL: create, update,
//! leave unchanged and delete by each unique key; items applied in order; renaming a key with
//! `match`; one bad item failing alone with a full problem; `expected_version`; atomic batches;
//! the request's limits and shape; address modes and tag edits; no change record for an
//! unchanged item; concurrent batches over overlapping keys losing no update; and text with the
//! characters a database's row format reserves (PostgreSQL's `COPY`) stored as sent.

use std::collections::{BTreeMap, BTreeSet};

use clientele_domain::Role;
use clientele_testkit::{Reply, TestHub, assert_problem, call, hub_tests};
use futures::future::join_all;
use serde_json::{Value, json};

hub_tests!(
    malformed_keys_fail_their_item_not_the_batch,
    sync_by_external_id_creates_updates_leaves_unchanged_and_deletes,
    sync_by_email_matches_case_insensitively,
    sync_by_username_creates_updates_leaves_unchanged_and_deletes,
    items_apply_in_order,
    match_renames_the_key_field,
    delete_erases_and_deleting_a_missing_customer_fails_the_item,
    one_bad_item_never_blocks_the_others,
    an_expected_version_mismatch_fails_the_item,
    an_atomic_batch_applies_everything_or_nothing,
    batch_size_and_request_shape_are_checked,
    a_read_key_cannot_sync,
    address_modes_and_tag_edits_in_sync_items,
    address_modes_on_patch_and_put,
    unchanged_items_write_no_change_record,
    concurrent_overlapping_batches_lose_no_update,
    concurrent_batches_deleting_and_recreating_keys_answer_item_by_item,
    batches_crossing_on_a_second_unique_key_both_finish,
    the_documented_item_is_a_customer_body,
    a_sync_update_keeps_the_stored_password,
    a_deleted_customer_leaves_none_of_its_rows,
    text_the_row_formats_reserve_is_stored_as_sent,
);

const STATUSES: [&str; 5] = ["created", "updated", "unchanged", "deleted", "failed"];

/// A sync request body on `key` with these items.
fn batch(key: &str, items: Vec<Value>) -> Value {
    json!({"key": key, "customers": items})
}

/// A sync item: `fields` plus `key: value`.
fn item(key: &str, value: &str, fields: Value) -> Value {
    let mut item = fields;
    item[key] = json!(value);
    item
}

/// Asserts a 200 sync response whose items have exactly these statuses, in order, and returns
/// the results. See [`check_results`].
#[track_caller]
fn assert_results(reply: &Reply, statuses: &[&str]) -> Vec<Value> {
    assert_eq!(reply.status, 200, "sync failed: {}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    check_results(&reply.body, statuses)
}

/// Checks a sync response body: one result per item with exactly `index` (its position),
/// `status`, `id`, `version` and `error`; a success carries its customer's `cus_` id, a
/// version of at least 1 and a null error; a failure carries a problem. The summary counts the
/// statuses. Returns the results.
#[track_caller]
fn check_results(body: &Value, statuses: &[&str]) -> Vec<Value> {
    let results = body["results"].as_array().expect("results").clone();
    let actual: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(actual, statuses, "statuses of {body}");
    for (i, result) in results.iter().enumerate() {
        let members: BTreeSet<&str> = result
            .as_object()
            .expect("a result is an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            members,
            BTreeSet::from(["index", "status", "id", "version", "error"]),
            "members of {result}"
        );
        assert_eq!(result["index"], json!(i), "{result}");
        if result["status"] == "failed" {
            assert!(
                result["error"].is_object(),
                "a failure names its problem: {result}"
            );
        } else {
            assert!(
                result["id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("cus_")),
                "{result}"
            );
            assert!(
                result["version"].as_i64().is_some_and(|v| v >= 1),
                "{result}"
            );
            assert_eq!(result["error"], Value::Null, "{result}");
        }
    }
    let expected: BTreeMap<&str, usize> = STATUSES
        .iter()
        .map(|s| (*s, statuses.iter().filter(|t| *t == s).count()))
        .collect();
    let summary: BTreeMap<&str, usize> = body["summary"]
        .as_object()
        .expect("summary")
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_u64().expect("a count") as usize))
        .collect();
    assert_eq!(summary, expected, "summary of {body}");
    results
}

/// Asserts that a failed item's `error` is a full problem with this status and code.
#[track_caller]
fn assert_item_problem(result: &Value, status: u16, code: &str) {
    assert_eq!(result["status"], "failed", "{result}");
    let error = &result["error"];
    for member in ["type", "title", "detail"] {
        assert!(
            error[member].as_str().is_some_and(|s| !s.is_empty()),
            "an item problem needs a non-empty {member}: {result}"
        );
    }
    assert_eq!(error["status"], json!(status), "{result}");
    assert_eq!(error["code"], json!(code), "{result}");
}

/// The `(field, code)` pairs of a failed item's problem.
fn item_errors(result: &Value) -> Vec<(String, String)> {
    result["error"]["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| {
                    assert!(
                        e["message"].as_str().is_some_and(|m| !m.is_empty()),
                        "every field error needs a message: {e}"
                    );
                    (
                        e["field"].as_str().unwrap_or_default().to_owned(),
                        e["code"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn errors(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(f, c)| ((*f).to_owned(), (*c).to_owned()))
        .collect()
}

/// `GET /v1/customers/{key}/{value}`.
async fn get_by(hub: &TestHub, key: &str, value: &str) -> Reply {
    call(hub.get(&format!("/v1/customers/{key}/{value}"))).await
}

/// The customer under this key, asserting that it exists.
async fn read_by(hub: &TestHub, key: &str, value: &str) -> Value {
    let reply = get_by(hub, key, value).await;
    assert_eq!(reply.status, 200, "{key} {value}: {}", reply.body);
    reply.body
}

/// Asserts that no customer has this key value.
async fn assert_gone(hub: &TestHub, key: &str, value: &str) {
    let reply = get_by(hub, key, value).await;
    assert_problem(&reply, 404, "not_found");
}

fn id_of(result: &Value) -> String {
    result["id"].as_str().expect("id").to_owned()
}

/// The whole lifecycle of customers addressed by `key`: two created, then one updated through
/// `a_respelled` (the same key value, possibly spelled differently), one left unchanged, one
/// created and one deleted in one batch; each readable (or gone) afterwards.
async fn lifecycle_by(hub: &TestHub, key: &str, a: &str, a_respelled: &str, b: &str, c: &str) {
    let first = hub
        .sync(&batch(
            key,
            vec![
                item(
                    key,
                    a,
                    json!({"first_name": "Ann", "last_name": "Lee", "tags": ["t1"]}),
                ),
                item(key, b, json!({"first_name": "Bo", "company": "Bo Oy"})),
            ],
        ))
        .await;
    let results = assert_results(&first, &["created", "created"]);
    assert_eq!(results[0]["version"], 1);
    assert_eq!(results[1]["version"], 1);
    let (a_id, b_id) = (id_of(&results[0]), id_of(&results[1]));
    assert_ne!(a_id, b_id);

    let ann = read_by(hub, key, a).await;
    assert_eq!(ann["id"], json!(a_id));
    assert_eq!(ann[key], json!(a));
    assert_eq!(ann["first_name"], "Ann");
    assert_eq!(ann["last_name"], "Lee");
    assert_eq!(ann["tags"], json!(["t1"]));
    assert_eq!(ann["version"], 1);
    let bo = call(hub.get(&format!("/v1/customers/{b_id}"))).await;
    assert_eq!(bo.status, 200);
    assert_eq!(bo.body[key], json!(b));
    assert_eq!(bo.body["company"], "Bo Oy");

    let second = hub
        .sync(&batch(
            key,
            vec![
                item(key, a_respelled, json!({"last_name": "Lee-Smith"})),
                item(key, b, json!({"first_name": "Bo"})),
                item(key, c, json!({"first_name": "Cy"})),
                item(key, b, json!({"delete": true})),
            ],
        ))
        .await;
    let results = assert_results(&second, &["updated", "unchanged", "created", "deleted"]);
    assert_eq!(results[0]["id"], json!(a_id));
    assert_eq!(results[0]["version"], 2);
    assert_eq!(results[1]["id"], json!(b_id));
    assert_eq!(results[1]["version"], 1, "unchanged keeps the version");
    let c_id = id_of(&results[2]);
    assert!(c_id != a_id && c_id != b_id);
    assert_eq!(results[2]["version"], 1);
    assert_eq!(results[3]["id"], json!(b_id));
    assert_eq!(
        results[3]["version"], 2,
        "a deletion's version is one past the last"
    );

    let ann = read_by(hub, key, a_respelled).await;
    assert_eq!(ann["id"], json!(a_id));
    assert_eq!(ann[key], json!(a_respelled), "the key is stored as given");
    assert_eq!(
        ann["first_name"], "Ann",
        "an absent field is left unchanged"
    );
    assert_eq!(ann["last_name"], "Lee-Smith");
    assert_eq!(ann["tags"], json!(["t1"]));
    assert_eq!(ann["version"], 2);
    assert_eq!(read_by(hub, key, a).await["id"], json!(a_id));
    assert_gone(hub, key, b).await;
    let by_id = call(hub.get(&format!("/v1/customers/{b_id}"))).await;
    assert_problem(&by_id, 404, "not_found");
    let cy = read_by(hub, key, c).await;
    assert_eq!(cy["id"], json!(c_id));
    assert_eq!(cy["first_name"], "Cy");
    assert_eq!(cy["version"], 1);

    let third = hub
        .sync(&batch(
            key,
            vec![
                item(key, a_respelled, json!({"last_name": "Lee-Smith"})),
                item(key, c, json!({"first_name": "Cy"})),
            ],
        ))
        .await;
    let results = assert_results(&third, &["unchanged", "unchanged"]);
    assert_eq!(results[0]["id"], json!(a_id));
    assert_eq!(results[0]["version"], 2);
    assert_eq!(results[1]["id"], json!(c_id));
    assert_eq!(results[1]["version"], 1);
}

async fn sync_by_external_id_creates_updates_leaves_unchanged_and_deletes(hub: TestHub) {
    lifecycle_by(&hub, "external_id", "erp-1", "erp-1", "erp-2", "erp-3").await;
}

async fn sync_by_email_matches_case_insensitively(hub: TestHub) {
    lifecycle_by(
        &hub,
        "email",
        "Ann.Lee@Example.com",
        "ann.lee@EXAMPLE.COM",
        "bo@example.com",
        "cy@example.com",
    )
    .await;

    // A customer created elsewhere is found by any spelling of its email.
    let dee = hub
        .create_customer(json!({"email": "Dee@Example.org", "first_name": "Dee"}))
        .await;
    let reply = hub
        .sync(&batch(
            "email",
            vec![json!({"email": "dee@example.org", "note": "found"})],
        ))
        .await;
    let results = assert_results(&reply, &["updated"]);
    assert_eq!(results[0]["id"], dee["id"]);
    let read = read_by(&hub, "email", "DEE@EXAMPLE.ORG").await;
    assert_eq!(read["note"], "found");
    assert_eq!(read["first_name"], "Dee");
}

async fn sync_by_username_creates_updates_leaves_unchanged_and_deletes(hub: TestHub) {
    lifecycle_by(&hub, "username", "annlee", "annlee", "bo_b", "cy.c").await;
}

async fn items_apply_in_order(hub: TestHub) {
    // The second item sees what the first did.
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![
                json!({"external_id": "o-1", "first_name": "First"}),
                json!({"external_id": "o-1", "last_name": "Second"}),
                json!({"external_id": "o-1", "last_name": "Second"}),
                json!({"external_id": "o-1", "add_tags": ["x"]}),
            ],
        ))
        .await;
    let results = assert_results(&reply, &["created", "updated", "unchanged", "updated"]);
    let id = id_of(&results[0]);
    assert!(
        results.iter().all(|r| r["id"] == json!(id)),
        "{}",
        reply.body
    );
    let versions: Vec<&Value> = results.iter().map(|r| &r["version"]).collect();
    assert_eq!(versions, [&json!(1), &json!(2), &json!(2), &json!(3)]);
    let read = read_by(&hub, "external_id", "o-1").await;
    assert_eq!(read["first_name"], "First");
    assert_eq!(read["last_name"], "Second");
    assert_eq!(read["tags"], json!(["x"]));
    assert_eq!(read["version"], 3);

    // Created, deleted and created again: the last one stands, as a new customer.
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![
                json!({"external_id": "o-2", "note": "one"}),
                json!({"external_id": "o-2", "delete": true}),
                json!({"external_id": "o-2", "note": "two"}),
            ],
        ))
        .await;
    let results = assert_results(&reply, &["created", "deleted", "created"]);
    assert_eq!(results[0]["id"], results[1]["id"]);
    assert_ne!(results[0]["id"], results[2]["id"]);
    let read = read_by(&hub, "external_id", "o-2").await;
    assert_eq!(read["id"], results[2]["id"]);
    assert_eq!(read["note"], "two");
    assert_eq!(read["version"], 1);
    let first = call(hub.get(&format!("/v1/customers/{}", id_of(&results[0])))).await;
    assert_problem(&first, 404, "not_found");

    // An email one item gives up is free for a later item of the same batch.
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![
                json!({"external_id": "o-3", "email": "moving@example.com"}),
                json!({"external_id": "o-3", "email": "other@example.com"}),
                json!({"external_id": "o-4", "email": "Moving@example.com"}),
            ],
        ))
        .await;
    assert_results(&reply, &["created", "updated", "created"]);
    assert_eq!(
        read_by(&hub, "email", "moving@example.com").await["external_id"],
        "o-4"
    );
}

async fn match_renames_the_key_field(hub: TestHub) {
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![
                json!({"external_id": "old-1", "first_name": "Renamed"}),
                json!({"external_id": "s-a", "first_name": "A"}),
                json!({"external_id": "s-b", "first_name": "B"}),
                json!({"external_id": "held", "first_name": "Holder"}),
            ],
        ))
        .await;
    let created = assert_results(&reply, &["created"; 4]);

    let reply = hub
        .sync(&batch(
            "external_id",
            vec![json!({"external_id": "new-1", "match": "old-1", "note": "renamed"})],
        ))
        .await;
    let results = assert_results(&reply, &["updated"]);
    assert_eq!(results[0]["id"], created[0]["id"], "the same customer");
    assert_eq!(results[0]["version"], 2);
    assert_gone(&hub, "external_id", "old-1").await;
    let read = read_by(&hub, "external_id", "new-1").await;
    assert_eq!(read["id"], created[0]["id"]);
    assert_eq!(read["external_id"], "new-1");
    assert_eq!(read["first_name"], "Renamed");
    assert_eq!(read["note"], "renamed");

    // Two customers swap their keys in one batch, through a temporary value.
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![
                json!({"external_id": "tmp", "match": "s-a"}),
                json!({"external_id": "s-a", "match": "s-b"}),
                json!({"external_id": "s-b", "match": "tmp"}),
            ],
        ))
        .await;
    let results = assert_results(&reply, &["updated", "updated", "updated"]);
    assert_eq!(results[0]["id"], created[1]["id"]);
    assert_eq!(results[1]["id"], created[2]["id"]);
    assert_eq!(results[2]["id"], created[1]["id"]);
    assert_eq!(results[2]["version"], 3);
    let a = read_by(&hub, "external_id", "s-a").await;
    assert_eq!(a["id"], created[2]["id"]);
    assert_eq!(a["first_name"], "B");
    let b = read_by(&hub, "external_id", "s-b").await;
    assert_eq!(b["id"], created[1]["id"]);
    assert_eq!(b["first_name"], "A");
    assert_gone(&hub, "external_id", "tmp").await;

    // Renaming onto a value another customer holds fails that item only.
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![
                json!({"external_id": "held", "match": "new-1"}),
                json!({"external_id": "new-1", "note": "still here"}),
            ],
        ))
        .await;
    let results = assert_results(&reply, &["failed", "updated"]);
    assert_item_problem(&results[0], 409, "duplicate_key");
    assert_eq!(item_errors(&results[0])[0].0, "external_id");
    assert_eq!(
        read_by(&hub, "external_id", "held").await["id"],
        created[3]["id"]
    );
    assert_eq!(
        read_by(&hub, "external_id", "new-1").await["note"],
        "still here"
    );
}

async fn delete_erases_and_deleting_a_missing_customer_fails_the_item(hub: TestHub) {
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![
                json!({"external_id": "d-1", "note": "doomed"}),
                json!({"external_id": "d-2"}),
            ],
        ))
        .await;
    let created = assert_results(&reply, &["created", "created"]);
    let changes_before = hub.count_rows("changes").await;

    let reply = hub
        .sync(&batch(
            "external_id",
            vec![
                json!({"external_id": "d-1", "delete": true}),
                json!({"external_id": "missing", "delete": true}),
                json!({"external_id": "d-2", "note": "kept"}),
            ],
        ))
        .await;
    let results = assert_results(&reply, &["deleted", "failed", "updated"]);
    assert_eq!(results[0]["id"], created[0]["id"]);
    assert_eq!(results[0]["version"], 2);
    assert_item_problem(&results[1], 404, "not_found");
    assert_eq!(
        hub.count_rows("changes").await,
        changes_before + 2,
        "a deletion and an update are recorded, the failure is not"
    );

    assert_gone(&hub, "external_id", "d-1").await;
    let by_id = call(hub.get(&format!("/v1/customers/{}", id_of(&created[0])))).await;
    assert_problem(&by_id, 404, "not_found");
    assert_gone(&hub, "external_id", "missing").await;
    assert_eq!(read_by(&hub, "external_id", "d-2").await["note"], "kept");

    // Gone for good: deleting it again is not found.
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![json!({"external_id": "d-1", "delete": true})],
        ))
        .await;
    let results = assert_results(&reply, &["failed"]);
    assert_item_problem(&results[0], 404, "not_found");
}

async fn one_bad_item_never_blocks_the_others(hub: TestHub) {
    let owner = hub
        .create_customer(json!({"email": "taken@example.com"}))
        .await;
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![
                json!({"external_id": "g-0", "first_name": "Good"}),
                json!({"external_id": "g-1", "archived": "yes"}),
                json!({"external_id": "g-2", "first_name": "Good"}),
                json!({"external_id": "g-3", "frist_name": "Typo"}),
                json!({"external_id": "g-4", "addresses": [{"title": "Home", "country": "XX"}]}),
                json!({"first_name": "No key"}),
                json!({"external_id": "g-6", "email": "Taken@Example.com"}),
                json!({"external_id": "g-7", "first_name": "Good"}),
                json!(42),
            ],
        ))
        .await;
    let results = assert_results(
        &reply,
        &[
            "created", "failed", "created", "failed", "failed", "failed", "failed", "created",
            "failed",
        ],
    );
    assert_item_problem(&results[1], 422, "validation_failed");
    assert_eq!(
        item_errors(&results[1]),
        errors(&[("archived", "invalid_type")])
    );
    assert_item_problem(&results[3], 422, "validation_failed");
    assert_eq!(
        item_errors(&results[3]),
        errors(&[("frist_name", "unknown_field")])
    );
    assert_item_problem(&results[4], 422, "validation_failed");
    assert_eq!(
        item_errors(&results[4]),
        errors(&[("addresses[0].country", "invalid_country")])
    );
    assert_item_problem(&results[5], 422, "validation_failed");
    assert_eq!(
        item_errors(&results[5]),
        errors(&[("external_id", "required")])
    );
    assert_item_problem(&results[6], 409, "duplicate_key");
    assert_eq!(item_errors(&results[6])[0].0, "email");
    assert_item_problem(&results[8], 422, "validation_failed");
    assert_eq!(item_errors(&results[8]).len(), 1, "{}", results[8]);

    for good in ["g-0", "g-2", "g-7"] {
        assert_eq!(
            read_by(&hub, "external_id", good).await["first_name"],
            "Good"
        );
    }
    for bad in ["g-1", "g-3", "g-4", "g-6"] {
        assert_gone(&hub, "external_id", bad).await;
    }
    let taken = read_by(&hub, "email", "taken@example.com").await;
    assert_eq!(taken["id"], owner["id"]);
    assert_eq!(taken["external_id"], Value::Null, "the owner is untouched");
    assert_eq!(taken["version"], 1);
}

async fn an_expected_version_mismatch_fails_the_item(hub: TestHub) {
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![json!({"external_id": "v-1", "note": "v1"})],
        ))
        .await;
    assert_results(&reply, &["created"]);

    let reply = hub
        .sync(&batch(
            "external_id",
            vec![
                json!({"external_id": "v-1", "expected_version": 3, "note": "stale"}),
                json!({"external_id": "v-1", "expected_version": 1, "note": "v2"}),
                json!({"external_id": "v-1", "expected_version": 1, "note": "stale again"}),
                json!({"external_id": "v-1", "expected_version": 1, "delete": true}),
                json!({"external_id": "v-new", "expected_version": 1, "note": "absent"}),
                json!({"external_id": "v-1", "expected_version": 2, "note": "v3"}),
            ],
        ))
        .await;
    let results = assert_results(
        &reply,
        &["failed", "updated", "failed", "failed", "failed", "updated"],
    );
    for failed in [0, 2, 3, 4] {
        assert_item_problem(&results[failed], 412, "version_conflict");
    }
    assert_eq!(results[1]["version"], 2);
    assert_eq!(results[5]["version"], 3);

    let read = read_by(&hub, "external_id", "v-1").await;
    assert_eq!(read["note"], "v3");
    assert_eq!(read["version"], 3);
    assert_gone(&hub, "external_id", "v-new").await;

    // The right version deletes.
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![json!({"external_id": "v-1", "expected_version": 3, "delete": true})],
        ))
        .await;
    assert_results(&reply, &["deleted"]);
    assert_gone(&hub, "external_id", "v-1").await;
}

async fn an_atomic_batch_applies_everything_or_nothing(hub: TestHub) {
    let before = hub
        .create_customer(json!({"external_id": "at-1", "note": "before"}))
        .await;
    let changes_before = hub.count_rows("changes").await;
    let items = vec![
        json!({"external_id": "at-1", "note": "after"}),
        json!({"external_id": "at-new", "first_name": "New"}),
        json!({"external_id": "at-bad", "addresses": [{"title": "Home", "country": "XX"}]}),
        json!({"external_id": "at-new2", "first_name": "New"}),
    ];
    let reply = hub
        .sync(&json!({"key": "external_id", "atomic": true, "customers": items}))
        .await;
    assert_problem(&reply, 422, "sync_failed");
    let results = check_results(&reply.body, &["updated", "created", "failed", "created"]);
    assert_item_problem(&results[2], 422, "validation_failed");
    assert_eq!(
        item_errors(&results[2]),
        errors(&[("addresses[0].country", "invalid_country")])
    );

    // Nothing applied.
    let read = read_by(&hub, "external_id", "at-1").await;
    assert_eq!(read, before, "the update was not applied");
    for key in ["at-new", "at-bad", "at-new2"] {
        assert_gone(&hub, "external_id", key).await;
    }
    assert_eq!(hub.count_rows("changes").await, changes_before);
    assert_eq!(hub.count_rows("customers").await, 1);

    // A failure the store finds (a duplicate) fails the atomic batch too.
    hub.create_customer(json!({"email": "mine@example.com"}))
        .await;
    let reply = hub
        .sync(&json!({"key": "external_id", "atomic": true, "customers": [
            {"external_id": "at-1", "note": "after"},
            {"external_id": "at-dup", "email": "MINE@example.com"},
        ]}))
        .await;
    assert_problem(&reply, 422, "sync_failed");
    let results = check_results(&reply.body, &["updated", "failed"]);
    assert_item_problem(&results[1], 409, "duplicate_key");
    assert_eq!(read_by(&hub, "external_id", "at-1").await, before);

    // All good: 200, and everything applied.
    let good = vec![
        json!({"external_id": "at-1", "note": "after"}),
        json!({"external_id": "at-new", "first_name": "New"}),
        json!({"external_id": "at-new2", "first_name": "New"}),
    ];
    let reply = hub
        .sync(&json!({"key": "external_id", "atomic": true, "customers": good}))
        .await;
    let results = assert_results(&reply, &["updated", "created", "created"]);
    assert_eq!(results[0]["id"], before["id"]);
    let read = read_by(&hub, "external_id", "at-1").await;
    assert_eq!(read["note"], "after");
    assert_eq!(read["version"], 2);
    for key in ["at-new", "at-new2"] {
        assert_eq!(read_by(&hub, "external_id", key).await["first_name"], "New");
    }
}

async fn batch_size_and_request_shape_are_checked(hub: TestHub) {
    let items = |prefix: &str, n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"external_id": format!("{prefix}-{i}"), "note": "bulk"}))
            .collect()
    };
    let reply = hub.sync(&batch("external_id", items("n", 1000))).await;
    let results = assert_results(&reply, &["created"; 1000]);
    assert_eq!(results[999]["index"], 999);
    assert_eq!(hub.count_rows("customers").await, 1000);
    assert_eq!(read_by(&hub, "external_id", "n-999").await["note"], "bulk");

    let reply = hub.sync(&batch("external_id", items("m", 1001))).await;
    assert_problem(&reply, 413, "too_many_items");
    assert_gone(&hub, "external_id", "m-0").await;
    assert_eq!(hub.count_rows("customers").await, 1000);

    let empty = hub.sync(&batch("external_id", vec![])).await;
    assert_results(&empty, &[]);

    let field_of = |reply: &Reply| reply.body["errors"][0]["field"].clone();
    let no_key = hub
        .sync(&json!({"customers": [{"external_id": "x"}]}))
        .await;
    assert_problem(&no_key, 422, "validation_failed");
    let bad_key = hub
        .sync(&json!({"key": "phone", "customers": [{"external_id": "x", "phone": "1"}]}))
        .await;
    assert_problem(&bad_key, 422, "validation_failed");
    assert_eq!(field_of(&bad_key), "key", "{}", bad_key.body);
    let not_array = hub
        .sync(&json!({"key": "external_id", "customers": {"external_id": "x"}}))
        .await;
    assert_problem(&not_array, 422, "validation_failed");
    assert_eq!(field_of(&not_array), "customers", "{}", not_array.body);
    let no_customers = hub.sync(&json!({"key": "external_id"})).await;
    assert_problem(&no_customers, 422, "validation_failed");
    let unknown = hub
        .sync(&json!({"key": "external_id", "atomc": true, "customers": []}))
        .await;
    assert_problem(&unknown, 422, "validation_failed");
    assert_eq!(field_of(&unknown), "atomc", "{}", unknown.body);
    let malformed = call(
        hub.post("/v1/customers/sync")
            .header("content-type", "application/json")
            .body(r#"{"key": "external_id", "customers": [{"#),
    )
    .await;
    assert_problem(&malformed, 400, "malformed_json");
    assert_gone(&hub, "external_id", "x").await;
}

async fn a_read_key_cannot_sync(hub: TestHub) {
    let body = batch("external_id", vec![json!({"external_id": "r-1"})]);
    let reader = hub.as_key(&hub.create_key(Role::Read).await);
    let reply = reader.sync(&body).await;
    assert_problem(&reply, 403, "forbidden");
    assert_gone(&hub, "external_id", "r-1").await;

    let writer = hub.as_key(&hub.create_key(Role::Write).await);
    assert_results(&writer.sync(&body).await, &["created"]);
}

/// The addresses of a customer by `remote_id` (or title, when it has none).
fn addresses_by_remote_id(customer: &Value) -> BTreeMap<String, Value> {
    customer["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .map(|a| {
            let key = a["remote_id"]
                .as_str()
                .or(a["title"].as_str())
                .expect("remote_id or title")
                .to_owned();
            (key, a.clone())
        })
        .collect()
}

/// Syncs one item on `external_id`.
async fn sync_item(hub: &TestHub, external_id: &str, fields: Value) -> Reply {
    hub.sync(&batch(
        "external_id",
        vec![item("external_id", external_id, fields)],
    ))
    .await
}

fn two_addresses() -> Value {
    json!([
        {"title": "Home", "remote_id": "r1", "kind": "billing", "line1": "Street 1",
         "city": "Helsinki", "postal_code": "00100", "country": "FI"},
        {"title": "Office", "remote_id": "r2", "kind": "shipping", "line1": "Road 2",
         "city": "Espoo", "country": "FI"},
    ])
}

async fn address_modes_and_tag_edits_in_sync_items(hub: TestHub) {
    let sync_one = |fields: Value| sync_item(&hub, "ad-1", fields);
    let reply = sync_one(json!({"addresses": two_addresses(), "tags": ["a", "b"]})).await;
    assert_results(&reply, &["created"]);

    // Merge by remote_id: r1 updated (its other fields kept), r2 kept, r3 added.
    let reply = sync_one(json!({
        "addresses_mode": "merge", "addresses_key": "remote_id",
        "addresses": [
            {"remote_id": "r1", "city": "Tampere", "postal_code": "33100"},
            {"remote_id": "r3", "title": "Cabin", "city": "Lahti", "country": "fi"},
        ]
    }))
    .await;
    assert_eq!(assert_results(&reply, &["updated"])[0]["version"], 2);
    let customer = read_by(&hub, "external_id", "ad-1").await;
    let addresses = addresses_by_remote_id(&customer);
    assert_eq!(
        addresses.keys().collect::<Vec<_>>(),
        ["r1", "r2", "r3"],
        "{customer}"
    );
    let home = &addresses["r1"];
    assert_eq!(home["title"], "Home");
    assert_eq!(home["city"], "Tampere");
    assert_eq!(home["postal_code"], "33100");
    assert_eq!(
        home["line1"], "Street 1",
        "a merged address keeps what it was not given"
    );
    assert_eq!(home["kind"], "billing");
    assert_eq!(home["country"], "FI");
    assert_eq!(addresses["r2"], full_address(two_addresses()[1].clone()));
    assert_eq!(addresses["r3"]["title"], "Cabin");
    assert_eq!(addresses["r3"]["country"], "FI");

    // The same merge again changes nothing.
    let reply = sync_one(json!({
        "addresses_mode": "merge", "addresses_key": "remote_id",
        "addresses": [{"remote_id": "r1", "city": "Tampere"}]
    }))
    .await;
    assert_eq!(assert_results(&reply, &["unchanged"])[0]["version"], 2);

    // Merge by title (the default key).
    let reply = sync_one(json!({
        "addresses_mode": "merge",
        "addresses": [{"title": "Office", "phone": "+358 9 1"}]
    }))
    .await;
    assert_results(&reply, &["updated"]);
    let customer = read_by(&hub, "external_id", "ad-1").await;
    let addresses = addresses_by_remote_id(&customer);
    assert_eq!(addresses.len(), 3);
    assert_eq!(addresses["r2"]["phone"], "+358 9 1");
    assert_eq!(addresses["r2"]["city"], "Espoo");

    // Replace (the default mode): the list becomes exactly the given one.
    let reply =
        sync_one(json!({"addresses": [{"title": "Only", "city": "Oulu", "country": "FI"}]})).await;
    assert_results(&reply, &["updated"]);
    let customer = read_by(&hub, "external_id", "ad-1").await;
    let addresses = customer["addresses"].as_array().expect("addresses");
    assert_eq!(addresses.len(), 1, "{customer}");
    assert_eq!(addresses[0]["title"], "Only");
    assert_eq!(addresses[0]["remote_id"], Value::Null);
    assert_eq!(addresses[0]["line1"], Value::Null);
    assert_eq!(addresses[0]["city"], "Oulu");

    // Tags: added and removed incrementally; adding a present tag or removing an absent one
    // changes nothing.
    let reply = sync_one(json!({"add_tags": ["c"], "remove_tags": ["a"]})).await;
    assert_results(&reply, &["updated"]);
    assert_eq!(
        read_by(&hub, "external_id", "ad-1").await["tags"],
        json!(["b", "c"])
    );
    let reply = sync_one(json!({"add_tags": ["b"], "remove_tags": ["zzz"]})).await;
    assert_results(&reply, &["unchanged"]);
    let reply = sync_one(json!({"tags": ["c", "b", "c"]})).await;
    assert_results(&reply, &["unchanged"]);
    let reply = sync_one(json!({"tags": ["d"]})).await;
    assert_results(&reply, &["updated"]);
    let customer = read_by(&hub, "external_id", "ad-1").await;
    assert_eq!(customer["tags"], json!(["d"]));
    assert_eq!(customer["version"], 6);
}

/// An address as the API returns it: every field present, `null` where unset.
fn full_address(given: Value) -> Value {
    let mut full = json!({
        "title": null, "remote_id": null, "kind": null, "name": null, "company": null,
        "line1": null, "line2": null, "line3": null, "city": null, "region": null,
        "postal_code": null, "country": null, "phone": null
    });
    for (k, v) in given.as_object().expect("an address") {
        full[k] = v.clone();
    }
    full
}

async fn address_modes_on_patch_and_put(hub: TestHub) {
    let created = hub
        .create_customer(json!({"external_id": "pa-1", "addresses": two_addresses()}))
        .await;
    let id = created["id"].as_str().expect("id");

    let reply = call(hub.patch(&format!("/v1/customers/{id}")).json(&json!({
        "addresses_mode": "merge", "addresses_key": "remote_id",
        "addresses": [
            {"remote_id": "r2", "city": "Vantaa"},
            {"remote_id": "r3", "title": "Cabin", "country": "SE"},
        ]
    })))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["version"], 2);
    let addresses = addresses_by_remote_id(&reply.body);
    assert_eq!(addresses.keys().collect::<Vec<_>>(), ["r1", "r2", "r3"]);
    assert_eq!(addresses["r1"], full_address(two_addresses()[0].clone()));
    assert_eq!(addresses["r2"]["city"], "Vantaa");
    assert_eq!(addresses["r2"]["title"], "Office");
    assert_eq!(addresses["r2"]["line1"], "Road 2");
    assert_eq!(addresses["r3"]["country"], "SE");

    let reply = call(hub.put("/v1/customers/external_id/pa-1").json(&json!({
        "addresses_mode": "merge",
        "addresses": [{"title": "Home", "postal_code": "00200"}]
    })))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["version"], 3);
    let addresses = addresses_by_remote_id(&reply.body);
    assert_eq!(addresses.len(), 3);
    assert_eq!(addresses["r1"]["postal_code"], "00200");
    assert_eq!(addresses["r1"]["city"], "Helsinki");

    let reply = call(hub.patch(&format!("/v1/customers/{id}")).json(&json!({
        "addresses": [{"title": "Only", "country": "SE"}]
    })))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["version"], 4);
    assert_eq!(
        reply.body["addresses"],
        json!([full_address(json!({"title": "Only", "country": "SE"}))])
    );

    let reply = call(hub.put("/v1/customers/external_id/pa-1").json(&json!({
        "addresses_mode": "replace",
        "addresses": [{"title": "Only", "country": "se"}]
    })))
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["version"], 4, "an equal replace changes nothing");

    // Merging by remote_id needs a remote_id on every given address.
    let reply = call(hub.patch(&format!("/v1/customers/{id}")).json(&json!({
        "addresses_mode": "merge", "addresses_key": "remote_id",
        "addresses": [{"title": "Only", "city": "Malmö"}]
    })))
    .await;
    assert_problem(&reply, 422, "validation_failed");
    assert_eq!(reply.body["errors"][0]["field"], "addresses[0].remote_id");
    let read = call(hub.get(&format!("/v1/customers/{id}"))).await;
    assert_eq!(read.body["version"], 4);
}

async fn unchanged_items_write_no_change_record(hub: TestHub) {
    let items: Vec<Value> = (0..20)
        .map(|i| {
            json!({
                "external_id": format!("u-{i}"),
                "email": format!("User{i}@Example.com"),
                "first_name": "User", "last_name": format!("Number {i}"),
                "tags": ["x", format!("t{i}")],
                "discount_percent": 5, "currency": "eur", "birthday": "1990-05-01",
                "custom": {"n": i},
                "addresses": [{"title": "Home", "remote_id": format!("h{i}"), "country": "fi",
                               "city": "Turku"}]
            })
        })
        .collect();
    let body = batch("external_id", items.clone());
    let first = hub.sync(&body).await;
    let created = assert_results(&first, &["created"; 20]);
    let changes = hub.count_rows("changes").await;
    assert_eq!(changes, 20, "one change per created customer");

    let again = hub.sync(&body).await;
    let results = assert_results(&again, &["unchanged"; 20]);
    for (created, unchanged) in created.iter().zip(&results) {
        assert_eq!(unchanged["id"], created["id"]);
        assert_eq!(unchanged["version"], 1);
    }
    assert_eq!(hub.count_rows("changes").await, changes);

    // Equal in meaning, written differently: still unchanged.
    let respelled: Vec<Value> = (0..20)
        .map(|i| {
            json!({
                "external_id": format!("u-{i}"),
                "tags": [format!("t{i}"), "x", "x"],
                "add_tags": ["x"],
                "remove_tags": ["absent"],
                "currency": "EUR",
                "addresses_mode": "merge", "addresses_key": "remote_id",
                "addresses": [{"remote_id": format!("h{i}"), "city": "Turku"}]
            })
        })
        .collect();
    let reply = hub.sync(&batch("external_id", respelled)).await;
    assert_results(&reply, &["unchanged"; 20]);
    assert_eq!(hub.count_rows("changes").await, changes);

    // One real change among unchanged items: exactly one record more.
    let mut mixed = items;
    mixed[7]["note"] = json!("changed");
    let reply = hub.sync(&batch("external_id", mixed)).await;
    let mut statuses = vec!["unchanged"; 20];
    statuses[7] = "updated";
    let results = assert_results(&reply, &statuses);
    assert_eq!(results[7]["version"], 2);
    assert_eq!(hub.count_rows("changes").await, changes + 1);
    let read = read_by(&hub, "external_id", "u-7").await;
    assert_eq!(read["version"], 2);
    assert_eq!(read["note"], "changed");
    assert_eq!(read_by(&hub, "external_id", "u-8").await["version"], 1);
}

/// Two batches keyed by external id whose new customers claim the same emails in opposite
/// orders: inserts follow the batch key, so on PostgreSQL each batch can end up waiting on the
/// other's email index entry (when both inserts run at the same moment), a lock cycle the
/// database breaks by aborting one. Whichever way they interleave, the loser runs again and
/// finds the other's customers: each email is created exactly once, and the items that lost it
/// fail with `duplicate_key` on `email`, never the request.
async fn batches_crossing_on_a_second_unique_key_both_finish(hub: TestHub) {
    const ITEMS: usize = 1000;
    for round in 0..3 {
        let email = |n: usize| format!("r{round}-{n:03}@example.com");
        let one: Vec<Value> = (0..ITEMS)
            .map(|n| json!({"external_id": format!("r{round}-a{n:03}"), "email": email(n)}))
            .collect();
        let other: Vec<Value> = (0..ITEMS)
            .map(|n| json!({"external_id": format!("r{round}-b{n:03}"), "email": email(ITEMS - 1 - n)}))
            .collect();
        let (one, other) = (batch("external_id", one), batch("external_id", other));
        let (first, second) = futures::join!(hub.sync(&one), hub.sync(&other));
        let mut created = 0;
        for reply in [&first, &second] {
            assert_eq!(reply.status, 200, "a batch failed: {}", reply.body);
            created += reply.body["summary"]["created"].as_u64().expect("count");
            for result in reply.body["results"].as_array().expect("results") {
                if result["status"] == "failed" {
                    assert_eq!(
                        result["error"]["errors"][0]["code"], "duplicate_key",
                        "{result}"
                    );
                    assert_eq!(result["error"]["errors"][0]["field"], "email", "{result}");
                }
            }
        }
        assert_eq!(created, ITEMS as u64, "each email is created exactly once");
    }
}

async fn concurrent_overlapping_batches_lose_no_update(hub: TestHub) {
    const CLIENTS: usize = 8;
    const BATCHES: usize = 5;
    const KEYS: usize = 300;
    let keys_of = |client: usize| (client * 50..client * 50 + 100).map(|n| n % KEYS);
    let key = |n: usize| format!("k{n:03}");

    let clients = (0..CLIENTS).map(|client| {
        let hub = &hub;
        async move {
            let mut replies = Vec::new();
            for round in 0..BATCHES {
                let items: Vec<Value> = keys_of(client)
                    .map(|n| json!({"external_id": key(n), "add_tags": [format!("c{client}-b{round}")]}))
                    .collect();
                replies.push(hub.sync(&batch("external_id", items)).await);
            }
            replies
        }
    });
    let replies: Vec<Reply> = join_all(clients).await.into_iter().flatten().collect();

    let mut created = 0;
    for reply in &replies {
        assert_eq!(reply.status, 200, "a batch failed: {}", reply.body);
        assert_eq!(reply.body["summary"]["failed"], 0, "{}", reply.body);
        assert_eq!(reply.body["summary"]["unchanged"], 0, "{}", reply.body);
        created += reply.body["summary"]["created"].as_u64().expect("count");
    }
    assert_eq!(created, KEYS as u64, "each key is created exactly once");

    let mut expected: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for client in 0..CLIENTS {
        for n in keys_of(client) {
            for round in 0..BATCHES {
                expected
                    .entry(key(n))
                    .or_default()
                    .insert(format!("c{client}-b{round}"));
            }
        }
    }
    assert_eq!(expected.len(), KEYS);

    let list = call(hub.get("/v1/customers?limit=1000")).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let customers = list.body["data"].as_array().expect("data");
    assert_eq!(customers.len(), KEYS);
    for customer in customers {
        let external_id = customer["external_id"].as_str().expect("external_id");
        let tags: BTreeSet<String> = customer["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .map(|t| t.as_str().expect("tag").to_owned())
            .collect();
        let want = &expected[external_id];
        assert_eq!(&tags, want, "tags of {external_id}: lost an update");
        assert_eq!(
            customer["version"],
            json!(want.len()),
            "version of {external_id}: created once, then one more per batch"
        );
    }
    let total: usize = expected.values().map(BTreeSet::len).sum();
    assert_eq!(
        hub.count_rows("changes").await,
        total as i64,
        "one change per item"
    );
}

async fn concurrent_batches_deleting_and_recreating_keys_answer_item_by_item(hub: TestHub) {
    // Found in an audit, on PostgreSQL: batches racing to create keys that others delete lost
    // every retry and answered 409 duplicate_key for the whole batch, and a retry with the
    // same Idempotency-Key replayed that 409 for ever.
    const CLIENTS: u64 = 4;
    const ROUNDS: u64 = 50;
    const KEYS: u64 = 10;
    let clients = (0..CLIENTS).map(|client| {
        let hub = &hub;
        async move {
            // A fixed pseudo-random walk per client: the same items on every run.
            let mut state = 0x9E37_79B9_7F4A_7C15_u64 ^ client;
            let mut next = move |bound: u64| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 33) % bound
            };
            let mut replies = Vec::new();
            for round in 0..ROUNDS {
                let items: Vec<Value> = (0..1 + next(20))
                    .map(|_| {
                        let key = format!("race-{}", next(KEYS));
                        if next(10) == 0 {
                            json!({"external_id": key, "delete": true})
                        } else {
                            json!({"external_id": key, "first_name": format!("c{client}r{round}")})
                        }
                    })
                    .collect();
                let request = hub
                    .post("/v1/customers/sync")
                    .header("idempotency-key", format!("race-{client}-{round}"))
                    .json(&batch("external_id", items));
                replies.push(call(request).await);
            }
            replies
        }
    });
    let replies: Vec<Reply> = join_all(clients).await.into_iter().flatten().collect();
    for reply in &replies {
        assert_eq!(reply.status, 200, "a whole batch failed: {}", reply.body);
        for result in reply.body["results"].as_array().expect("results") {
            assert_ne!(
                result["error"]["code"], "duplicate_key",
                "a race reached an item: {}",
                reply.body
            );
        }
    }
    // No key was ever held by two customers.
    let listed = call(hub.get("/v1/customers?limit=100")).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    let keys: BTreeSet<&str> = listed.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|customer| customer["external_id"].as_str().expect("external_id"))
        .collect();
    assert_eq!(keys.len(), listed.data_ids().len(), "{}", listed.body);
    assert!(keys.len() <= KEYS as usize, "{}", listed.body);
}

/// Key values are looked up for the whole batch before items are validated: a value the
/// database cannot hold (a NUL character) must fail its item, not the batch.
async fn malformed_keys_fail_their_item_not_the_batch(hub: TestHub) {
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "ok-1"},
            {"external_id": "bad\0id"},
            {"external_id": "ok-2", "match": "old\0id"},
            {"external_id": "ok-3", "email": "a\0@example.com"},
            {"external_id": "ok-4"}
        ]}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let statuses: Vec<_> = reply.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        statuses,
        ["created", "failed", "failed", "failed", "created"]
    );
    assert_eq!(
        reply.body["results"][2]["error"]["errors"][0]["field"],
        "match"
    );
}

/// The property names a schema admits, through `$ref` and `allOf`.
fn property_names(document: &Value, schema: &Value, names: &mut BTreeSet<String>) {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        property_names(document, &document["components"]["schemas"][name], names);
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        property_names(document, part, names);
    }
    names.extend(
        schema["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k.clone()),
    );
}

async fn the_documented_item_is_a_customer_body(hub: TestHub) {
    // Found by schemathesis: the document nested the customer's fields under a required
    // `customer` property, which the hub refuses as an unknown field; an item is the customer
    // body itself, plus `match`, `delete` and `expected_version`.
    let document = call(hub.get("/openapi.json")).await.body;
    let items =
        &document["components"]["schemas"]["SyncRequest"]["properties"]["customers"]["items"];
    let mut names = BTreeSet::new();
    property_names(&document, items, &mut names);
    for name in [
        "external_id",
        "email",
        "addresses",
        "match",
        "delete",
        "expected_version",
    ] {
        assert!(names.contains(name), "{name} is not documented: {names:?}");
    }
    assert!(!names.contains("customer"), "{names:?}");
    let required: Vec<&Value> = document["components"]["schemas"]["SyncItemSchema"]
        .pointer("/allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|part| part["required"].as_array())
        .flatten()
        .collect();
    assert!(required.is_empty(), "nothing is required: {required:?}");

    // The documented shape is the one the hub takes.
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![json!({"external_id": "doc-1", "email": "doc-1@example.com"})],
        ))
        .await;
    assert_eq!(
        reply.body["results"][0]["status"], "created",
        "{:?}",
        reply.body
    );
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![json!({"customer": {"external_id": "doc-2"}})],
        ))
        .await;
    assert_eq!(
        reply.body["results"][0]["status"], "failed",
        "{:?}",
        reply.body
    );
}

/// A sync update reads each stored customer back with its password hash: the hash must come
/// back exactly, for customers with and without one, so that an update leaves it alone.
async fn a_sync_update_keeps_the_stored_password(hub: TestHub) {
    let with = hub
        .create_customer(json!({"external_id": "pw-1", "password": "s3cret-Pass"}))
        .await;
    hub.create_customer(json!({"external_id": "pw-2"})).await;
    let reply = call(hub.post("/v1/customers/sync").json(&batch(
        "external_id",
        vec![
            json!({"external_id": "pw-1", "note": "updated"}),
            json!({"external_id": "pw-2", "note": "updated"}),
        ],
    )))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let statuses: Vec<&Value> = (0..2)
        .map(|i| &reply.body["results"][i]["status"])
        .collect();
    assert_eq!(statuses, ["updated", "updated"], "{}", reply.body);

    let id = with["id"].as_str().expect("id");
    for (password, valid) in [("s3cret-Pass", true), ("wrong", false)] {
        let check = call(
            hub.post(&format!("/v1/customers/{id}/verify-password"))
                .json(&json!({"password": password})),
        )
        .await;
        assert_eq!(check.status, 200, "{}", check.body);
        assert_eq!(check.body["valid"], valid, "{password}");
    }
    assert_eq!(
        read_by(&hub, "external_id", "pw-1").await["has_password"],
        true
    );
    assert_eq!(
        read_by(&hub, "external_id", "pw-2").await["has_password"],
        false
    );
}

/// Deleting a customer, alone or in a batch, deletes its search terms, tags, groups and teams
/// with it (on PostgreSQL by the delete itself, these rows having no foreign key).
async fn a_deleted_customer_leaves_none_of_its_rows(hub: TestHub) {
    const OWN_ROWS: [&str; 4] = [
        "customer_terms",
        "customer_tags",
        "customer_groups",
        "customer_teams",
    ];
    for (path, body) in [
        ("/v1/teams/north", json!({"name": "North"})),
        ("/v1/groups/members", json!({})),
    ] {
        let reply = call(hub.put(path).json(&body)).await;
        assert_eq!(reply.status, 201, "{path}: {}", reply.body);
    }
    let customer = |external_id: &str| {
        json!({"external_id": external_id, "first_name": "Ada", "last_name": "Lovelace",
               "tags": ["vip"], "groups": ["members"], "teams": ["north"]})
    };
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![customer("alone"), customer("batched")],
        ))
        .await;
    assert_results(&reply, &["created", "created"]);
    for table in OWN_ROWS {
        assert!(
            hub.count_rows(table).await > 0,
            "{table} holds the customers' rows"
        );
    }

    let reply = call(hub.delete("/v1/customers/external_id/alone")).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let reply = hub
        .sync(&batch(
            "external_id",
            vec![json!({"external_id": "batched", "delete": true})],
        ))
        .await;
    assert_results(&reply, &["deleted"]);
    for table in OWN_ROWS {
        assert_eq!(
            hub.count_rows(table).await,
            0,
            "{table} kept a deleted customer's rows"
        );
    }
    // Nothing left holds the team or the group.
    for path in ["/v1/teams/north", "/v1/groups/members"] {
        assert_eq!(call(hub.delete(path)).await.status, 204, "{path}");
    }
}

/// Tabs, line breaks, backslashes and what would read as `COPY`'s NULL or end-of-data marker
/// (`\\N`, `\\.`), in every text a create writes: the customer row, its search terms, its tags
/// and its change record. Through bulk sync and through a single create, each read back as sent.
/// (Names take no tabs or line breaks; a note and custom fields do.)
async fn text_the_row_formats_reserve_is_stored_as_sent(hub: TestHub) {
    let fields = |n: usize| {
        json!({
            "first_name": format!("Ada\\tTab{n}"),
            "last_name": format!("Back\\slash\\r\\nLine{n}"),
            "company": "\\N",
            "note": "\\.\n\\N\t\\\\",
            "tags": ["tag\\with\\backslashes", "\\N", "\\."],
            "custom": {"path": "C:\\temp\\new\tfile"},
        })
    };
    let synced = sync_item(&hub, "erp\\N\\.1", fields(1)).await;
    let synced_id = id_of(&assert_results(&synced, &["created"])[0]);
    let mut created = fields(2);
    created["external_id"] = json!("erp\\N\\.2");
    let created_id = hub.create_customer(created).await["id"]
        .as_str()
        .expect("id")
        .to_owned();

    for (n, id) in [(1, &synced_id), (2, &created_id)] {
        let reply = call(hub.get(&format!("/v1/customers/{id}"))).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let stored = reply.body;
        let sent = fields(n);
        for field in ["first_name", "last_name", "company", "note", "custom"] {
            assert_eq!(stored[field], sent[field], "{field} of customer {n}");
        }
        assert_eq!(stored["external_id"], json!(format!("erp\\N\\.{n}")));
        let tags: BTreeSet<&str> = stored["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            tags,
            BTreeSet::from(["tag\\with\\backslashes", "\\N", "\\."])
        );
    }
    let by_tag = call(hub.get("/v1/customers?tag=%5CN")).await;
    assert_eq!(by_tag.status, 200, "{}", by_tag.body);
    assert_eq!(by_tag.body["data"].as_array().map(Vec::len), Some(2));

    // The search terms: a word of the last name, with its backslash, finds both.
    let found = call(hub.get("/v1/customers?q=back%5Cslash")).await;
    assert_eq!(found.status, 200, "{}", found.body);
    let ids: BTreeSet<&str> = found.data_ids().into_iter().collect();
    assert_eq!(
        ids,
        BTreeSet::from([synced_id.as_str(), created_id.as_str()])
    );

    // The change records hold the documents as stored.
    let feed = call(hub.get("/v1/changes?limit=10")).await;
    assert_eq!(feed.status, 200, "{}", feed.body);
    let changes = feed.body["data"].as_array().expect("changes");
    assert_eq!(changes.len(), 2);
    for (n, change) in changes.iter().enumerate() {
        let sent = fields(n + 1);
        assert_eq!(change["customer"]["note"], sent["note"]);
        assert_eq!(change["customer"]["last_name"], sent["last_name"]);
        assert_eq!(change["external_id"], json!(format!("erp\\N\\.{}", n + 1)));
    }
}
