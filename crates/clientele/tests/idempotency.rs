//! `Idempotency-Key` over HTTP, on SQLite and PostgreSQL: a repeat replays the first response
//! (status, body and headers, marked `Idempotent-Replayed: true`) and changes nothing, for
//! creates, sync batches, PATCH, PUT, DELETE, refusals and API keys; the key with another
//! request is 422; a repeat while the first runs is 409; keys are per API key; GET ignores the
//! header; a request whose key a retry took over commits nothing; and a key holds across a
//! restart and across two hub processes on one database.

use std::path::Path;
use std::time::{Duration, Instant};

use clientele_domain::Role;
use clientele_testkit::{
    ADMIN_SECRET, FailAt, HubProcess, Reply, TestHub, assert_problem, call, column_bytes,
    count_rows, fresh_postgres_database, hub_tests,
};
use reqwest::RequestBuilder;
use serde_json::{Value, json};

hub_tests!(
    a_replayed_create_returns_the_first_response_and_creates_once,
    a_replayed_sync_batch_applies_nothing_twice,
    replayed_patch_put_and_delete_change_nothing,
    a_key_with_another_request_is_refused,
    keys_are_per_api_key,
    a_refusal_is_replayed_too,
    a_refusal_for_want_of_rights_stores_nothing,
    a_password_leaves_no_plain_hash_behind,
    a_repeat_while_the_first_runs_is_409_and_then_replays,
    a_created_api_key_replays_its_secret_which_is_stored_sealed,
    get_ignores_the_header_and_malformed_keys_are_400,
    an_expired_key_is_forgotten,
    claims_expire_and_abandoned_ones_are_taken_over,
    a_request_whose_key_a_retry_took_over_commits_nothing,
    a_request_the_client_abandons_runs_to_its_end_and_replays,
    group_team_and_key_writes_are_never_committed_without_their_response,
);

/// A key past its 24 hours is purged: the same request then runs afresh. Keys claimed after the
/// cut-off stay.
async fn an_expired_key_is_forgotten(hub: TestHub) {
    let body = json!({"note": "once"});
    let send = |key: &str| {
        call(
            hub.post("/v1/customers")
                .header(IDEMPOTENCY_KEY, key)
                .json(&body),
        )
    };
    let first = send("old").await;
    assert_eq!(first.status, 201);
    let cutoff = clientele_domain::Timestamp::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let kept = send("new").await;
    assert_eq!(kept.status, 201);

    let purged = hub
        .state
        .store()
        .purge_idempotency(cutoff)
        .await
        .expect("purge");
    assert_eq!(purged, 1, "only the key claimed before the cut-off");

    let again = send("old").await;
    assert_eq!(again.status, 201);
    assert_eq!(
        again.header(REPLAYED),
        None,
        "an expired key runs the request again"
    );
    assert_ne!(again.body["id"], first.body["id"]);
    let replayed = send("new").await;
    assert_eq!(replayed.header(REPLAYED), Some("true"));
    assert_eq!(replayed.body["id"], kept.body["id"]);
}

/// The claim rules in time: a finished key replays within 24 hours and starts afresh after; an
/// unfinished one is in flight for 10 minutes, then another request may take it over.
async fn claims_expire_and_abandoned_ones_are_taken_over(hub: TestHub) {
    use clientele_domain::{ClaimOutcome, IdempotencyClaim, StoredResponse, Timestamp};
    const MINUTE: i64 = 60 * 1_000_000;
    let store = hub.state.store();
    let api_key = clientele_domain::ApiKeyId::new();
    let claim = |key: &str, fingerprint: u8, minutes: i64| IdempotencyClaim {
        api_key,
        key: key.to_owned(),
        fingerprint: vec![fingerprint],
        at: Timestamp::from_micros(Timestamp::now().as_micros() + minutes * MINUTE),
    };
    let response = StoredResponse {
        status: 201,
        headers: vec![],
        body: b"{}".to_vec(),
    };

    let done = claim("done", 1, 0);
    assert_eq!(
        store.claim_idempotency(&done).await.expect("claim"),
        ClaimOutcome::Claimed
    );
    store
        .complete_idempotency(&done, &response)
        .await
        .expect("complete");
    let later = store
        .claim_idempotency(&claim("done", 1, 23 * 60))
        .await
        .expect("claim");
    assert_eq!(later, ClaimOutcome::Replay(response.clone()));
    let other = store
        .claim_idempotency(&claim("done", 2, 23 * 60))
        .await
        .expect("claim");
    assert_eq!(other, ClaimOutcome::Reused);
    let expired = store
        .claim_idempotency(&claim("done", 2, 25 * 60))
        .await
        .expect("claim");
    assert_eq!(
        expired,
        ClaimOutcome::Claimed,
        "after 24 hours the key is free"
    );

    assert_eq!(
        store
            .claim_idempotency(&claim("running", 1, 0))
            .await
            .expect("claim"),
        ClaimOutcome::Claimed
    );
    let soon = store
        .claim_idempotency(&claim("running", 1, 9))
        .await
        .expect("claim");
    assert_eq!(soon, ClaimOutcome::InFlight);
    let abandoned = store
        .claim_idempotency(&claim("running", 1, 11))
        .await
        .expect("claim");
    assert_eq!(
        abandoned,
        ClaimOutcome::Claimed,
        "a claim unfinished for 10 minutes is taken over"
    );
    let taken = store
        .claim_idempotency(&claim("running", 1, 12))
        .await
        .expect("claim");
    assert_eq!(
        taken,
        ClaimOutcome::InFlight,
        "the new holder's lease runs from its own claim"
    );
}

/// A request taken for gone (its process unseen, or its lease over) may still be running when a
/// retry takes its key over. It must then commit nothing: its write rolls back with the
/// recording of its answer, and only the retry's write and answer are kept.
async fn a_request_whose_key_a_retry_took_over_commits_nothing(hub: TestHub) {
    use clientele_domain::{
        ClaimOutcome, Completion, CustomerKey, DomainError, IdempotencyClaim, Locator, Scope,
        StoredResponse, Timestamp,
    };
    const MINUTE: i64 = 60 * 1_000_000;
    let created = call(
        hub.post("/v1/customers")
            .json(&json!({"external_id": "c1"})),
    )
    .await;
    assert_eq!(created.status, 201);
    let store = hub.state.store();
    let api_key = clientele_domain::ApiKeyId::new();
    let claim = |minutes: i64| IdempotencyClaim {
        api_key,
        key: "taken".to_owned(),
        fingerprint: vec![1],
        at: Timestamp::from_micros(Timestamp::now().as_micros() + minutes * MINUTE),
    };
    let (first, retry) = (claim(-11), claim(0));
    for attempt in [&first, &retry] {
        assert_eq!(
            store.claim_idempotency(attempt).await.expect("claim"),
            ClaimOutcome::Claimed,
            "the first claim is past its lease, so the retry takes it over"
        );
    }
    let answer = |status: u16| StoredResponse {
        status,
        headers: vec![],
        body: vec![],
    };
    let render_first = |(): &()| answer(204);
    let render_retry = |(): &()| answer(299);
    let (late, kept) = (
        Completion {
            claim: &first,
            render: &render_first,
        },
        Completion {
            claim: &retry,
            render: &render_retry,
        },
    );
    let c1 = Locator::Key(CustomerKey::ExternalId, "c1".to_owned());

    let late = store
        .delete_customer(&c1, &Scope::All, None, Some(late))
        .await;
    assert!(
        matches!(late, Err(DomainError::IdempotencyKeyTakenOver)),
        "{late:?}"
    );
    let id = created.body["id"].as_str().expect("id");
    assert_eq!(
        call(hub.get(&format!("/v1/customers/{id}"))).await.status,
        200,
        "the request taken over deleted nothing"
    );
    assert!(matches!(
        store.complete_idempotency(&first, &answer(422)).await,
        Err(DomainError::IdempotencyKeyTakenOver)
    ));

    store
        .delete_customer(&c1, &Scope::All, None, Some(kept))
        .await
        .expect("the retry's delete");
    assert_eq!(
        call(hub.get(&format!("/v1/customers/{id}"))).await.status,
        404
    );
    assert_eq!(
        store.claim_idempotency(&claim(1)).await.expect("claim"),
        ClaimOutcome::Replay(answer(299)),
        "the retry's answer is the one kept"
    );
}

const BINARY: &str = env!("CARGO_BIN_EXE_clientele");
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
const REPLAYED: &str = "idempotent-replayed";

fn with_key(request: RequestBuilder, key: &str) -> RequestBuilder {
    request.header(IDEMPOTENCY_KEY, key)
}

/// Asserts that `replay` is `first` again: the same status, body, content type, `Location` and
/// `ETag`, with `Idempotent-Replayed: true` on the replay only.
#[track_caller]
fn assert_replay(first: &Reply, replay: &Reply) {
    assert_eq!(
        first.header(REPLAYED),
        None,
        "the first response is not a replay"
    );
    assert_eq!(replay.status, first.status, "status of {replay:?}");
    assert_eq!(replay.body, first.body, "the replayed body");
    for header in ["content-type", "location", "etag"] {
        assert_eq!(replay.header(header), first.header(header), "{header}");
    }
    assert_eq!(replay.header(REPLAYED), Some("true"), "{replay:?}");
}

/// Every customer, through the list endpoint.
async fn all_customers(hub: &TestHub) -> Vec<Value> {
    let list = call(hub.get("/v1/customers?limit=1000")).await;
    assert_eq!(list.status, 200, "{}", list.body);
    list.body["data"].as_array().expect("data").clone()
}

async fn a_replayed_create_returns_the_first_response_and_creates_once(hub: TestHub) {
    let body = json!({"first_name": "Once", "note": "no unique key to stop a second create"});
    let first = call(with_key(hub.post("/v1/customers"), "create-1").json(&body)).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let id = first.body["id"].as_str().expect("id");
    assert_eq!(
        first.header("location"),
        Some(format!("/v1/customers/{id}").as_str())
    );

    for _ in 0..2 {
        let replay = call(with_key(hub.post("/v1/customers"), "create-1").json(&body)).await;
        assert_replay(&first, &replay);
    }
    let customers = all_customers(&hub).await;
    assert_eq!(customers.len(), 1, "the replays created nothing");
    assert_eq!(customers[0]["id"], json!(id));
    assert_eq!(hub.count_rows("changes").await, 1);

    // Without the key, the same request is a new request.
    let again = call(hub.post("/v1/customers").json(&body)).await;
    assert_eq!(again.status, 201);
    assert_ne!(again.body["id"], json!(id));
    assert_eq!(again.header(REPLAYED), None);
}

async fn a_replayed_sync_batch_applies_nothing_twice(hub: TestHub) {
    let body = json!({"key": "external_id", "customers": [
        {"external_id": "s-1", "add_tags": ["once"]},
        {"external_id": "s-2", "first_name": "Two"},
        {"external_id": "s-missing", "delete": true},
    ]});
    let sync = || with_key(hub.post("/v1/customers/sync"), "sync-1").json(&body);
    let first = call(sync()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let statuses: Vec<&Value> = first.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| &r["status"])
        .collect();
    assert_eq!(
        statuses,
        [&json!("created"), &json!("created"), &json!("failed")]
    );
    let changes = hub.count_rows("changes").await;
    assert_eq!(changes, 2);

    let replay = call(sync()).await;
    assert_replay(&first, &replay);
    assert_eq!(
        hub.count_rows("changes").await,
        changes,
        "no new change record"
    );
    let s1 = call(hub.get("/v1/customers/external_id/s-1")).await;
    assert_eq!(s1.body["version"], 1);
    assert_eq!(s1.body["tags"], json!(["once"]));

    // The same batch under another key does run again: everything is unchanged now, which the
    // replay (still `created`) was not.
    let rerun = call(with_key(hub.post("/v1/customers/sync"), "sync-2").json(&body)).await;
    assert_eq!(rerun.status, 200);
    assert_eq!(rerun.header(REPLAYED), None);
    assert_eq!(rerun.body["summary"]["unchanged"], 2, "{}", rerun.body);

    // An atomic batch that applied nothing (422) is replayed as such.
    let atomic = json!({"key": "external_id", "atomic": true, "customers": [
        {"external_id": "s-3"}, {"external_id": "s-4", "archived": "yes"},
    ]});
    let refused = call(with_key(hub.post("/v1/customers/sync"), "sync-3").json(&atomic)).await;
    assert_problem(&refused, 422, "sync_failed");
    let replay = call(with_key(hub.post("/v1/customers/sync"), "sync-3").json(&atomic)).await;
    assert_replay(&refused, &replay);
    let s3 = call(hub.get("/v1/customers/external_id/s-3")).await;
    assert_eq!(s3.status, 404);
    assert_eq!(hub.count_rows("changes").await, changes);
}

async fn replayed_patch_put_and_delete_change_nothing(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"external_id": "i-1", "note": "created"}))
        .await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));

    // PATCH: the replay answers as the first time, though the customer changed since.
    let patch = || with_key(hub.patch(&path), "patch-1").json(&json!({"note": "first"}));
    let first = call(patch()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["version"], 2);
    let other = call(hub.patch(&path).json(&json!({"note": "second"}))).await;
    assert_eq!(other.body["version"], 3);
    let changes = hub.count_rows("changes").await;
    let replay = call(patch()).await;
    assert_replay(&first, &replay);
    assert_eq!(replay.body["note"], "first");
    let read = call(hub.get(&path)).await;
    assert_eq!(read.body["note"], "second", "the replay wrote nothing");
    assert_eq!(read.body["version"], 3);
    assert_eq!(hub.count_rows("changes").await, changes);

    // PUT creating: replayed as 201 with its Location, not as a 200 update.
    let put = || {
        with_key(hub.put("/v1/customers/external_id/i-2"), "put-1")
            .json(&json!({"first_name": "Put"}))
    };
    let first = call(put()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert!(first.header("location").is_some());
    let replay = call(put()).await;
    assert_replay(&first, &replay);

    // PUT updating.
    let put = || {
        with_key(hub.put("/v1/customers/external_id/i-1"), "put-2").json(&json!({"note": "third"}))
    };
    let first = call(put()).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["version"], 4);
    let replay = call(put()).await;
    assert_replay(&first, &replay);
    assert_eq!(all_customers(&hub).await.len(), 2);

    // DELETE: the replay is 204 again, not 404.
    let changes = hub.count_rows("changes").await;
    let first = call(with_key(hub.delete(&path), "delete-1")).await;
    assert_eq!(first.status, 204);
    let replay = call(with_key(hub.delete(&path), "delete-1")).await;
    assert_eq!(replay.status, 204);
    assert_eq!(replay.header(REPLAYED), Some("true"));
    assert_eq!(first.header(REPLAYED), None);
    assert_eq!(replay.body, Value::Null, "no body");
    assert_eq!(
        hub.count_rows("changes").await,
        changes + 1,
        "one deletion recorded"
    );
    let unkeyed = call(hub.delete(&path)).await;
    assert_problem(&unkeyed, 404, "not_found");
    let delete = || with_key(hub.delete("/v1/customers/external_id/i-2"), "delete-2");
    let first = call(delete()).await;
    assert_eq!(first.status, 204);
    let replay = call(delete()).await;
    assert_eq!(replay.status, 204);
    assert_eq!(replay.header(REPLAYED), Some("true"));
    assert!(all_customers(&hub).await.is_empty());
}

async fn a_key_with_another_request_is_refused(hub: TestHub) {
    let body = json!({"external_id": "r-1", "first_name": "First"});
    let first = call(with_key(hub.post("/v1/customers"), "reuse").json(&body)).await;
    assert_eq!(first.status, 201);
    let id = first.body["id"].as_str().expect("id").to_owned();

    let other_body = call(
        with_key(hub.post("/v1/customers"), "reuse")
            .json(&json!({"external_id": "r-2", "first_name": "Other"})),
    )
    .await;
    assert_problem(&other_body, 422, "idempotency_key_reused");
    let other_path =
        call(with_key(hub.post("/v1/customers?upsert=external_id"), "reuse").json(&body)).await;
    assert_problem(&other_path, 422, "idempotency_key_reused");
    let other_method =
        call(with_key(hub.put("/v1/customers/external_id/r-1"), "reuse").json(&body)).await;
    assert_problem(&other_method, 422, "idempotency_key_reused");
    let patch = call(
        with_key(hub.patch(&format!("/v1/customers/{id}")), "reuse").json(&json!({"note": "x"})),
    )
    .await;
    assert_problem(&patch, 422, "idempotency_key_reused");
    let sync = call(
        with_key(hub.post("/v1/customers/sync"), "reuse")
            .json(&json!({"key": "external_id", "customers": [{"external_id": "r-3"}]})),
    )
    .await;
    assert_problem(&sync, 422, "idempotency_key_reused");

    // None of them ran, and the original still replays.
    let customers = all_customers(&hub).await;
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0]["version"], 1);
    let replay = call(with_key(hub.post("/v1/customers"), "reuse").json(&body)).await;
    assert_replay(&first, &replay);
}

async fn keys_are_per_api_key(hub: TestHub) {
    let one = hub.as_key(&hub.create_key(Role::Write).await);
    let two = hub.as_key(&hub.create_key(Role::Write).await);
    let body = json!({"first_name": "Twin"});
    let post = |hub: &TestHub| with_key(hub.post("/v1/customers"), "shared").json(&body);

    let first_one = call(post(&one)).await;
    let first_two = call(post(&two)).await;
    assert_eq!(first_one.status, 201);
    assert_eq!(
        first_two.status, 201,
        "another API key's key is not this one's"
    );
    assert_eq!(first_two.header(REPLAYED), None);
    assert_ne!(first_one.body["id"], first_two.body["id"]);
    // The admin may use the same string with another body.
    let admin =
        call(with_key(hub.post("/v1/customers"), "shared").json(&json!({"first_name": "Admin"})))
            .await;
    assert_eq!(admin.status, 201, "{}", admin.body);

    assert_replay(&first_one, &call(post(&one)).await);
    assert_replay(&first_two, &call(post(&two)).await);
    assert_eq!(all_customers(&hub).await.len(), 3);
}

async fn a_refusal_is_replayed_too(hub: TestHub) {
    let invalid = json!({"external_id": "bad", "addresses": [{"title": "Home", "country": "XX"}]});
    let post = |body: &Value| with_key(hub.post("/v1/customers"), "refused").json(body);
    let first = call(post(&invalid)).await;
    assert_problem(&first, 422, "validation_failed");
    let replay = call(post(&invalid)).await;
    assert_replay(&first, &replay);
    // The key belongs to that (refused) request: a corrected body needs a new key.
    let fixed = json!({"external_id": "bad", "addresses": [{"title": "Home", "country": "FI"}]});
    assert_problem(&call(post(&fixed)).await, 422, "idempotency_key_reused");
    assert_eq!(
        call(hub.get("/v1/customers/external_id/bad")).await.status,
        404
    );

    // A conflict is replayed even once the conflict is gone: the replay does not run again.
    let owner = hub
        .create_customer(json!({"email": "taken@example.com"}))
        .await;
    let clash = json!({"email": "Taken@Example.com"});
    let conflict = call(with_key(hub.post("/v1/customers"), "clash").json(&clash)).await;
    assert_problem(&conflict, 409, "duplicate_key");
    let deleted = call(hub.delete(&format!(
        "/v1/customers/{}",
        owner["id"].as_str().expect("id")
    )))
    .await;
    assert_eq!(deleted.status, 204);
    let replay = call(with_key(hub.post("/v1/customers"), "clash").json(&clash)).await;
    assert_replay(&conflict, &replay);
    assert!(all_customers(&hub).await.is_empty());

    // A wrong Content-Type is not kept: the fingerprint does not cover headers, so the same
    // body sent again as JSON under the same key runs.
    let body = r#"{"external_id": "typed"}"#;
    let as_text = with_key(hub.post("/v1/customers"), "typed")
        .header("content-type", "text/plain")
        .body(body);
    assert_problem(&call(as_text).await, 415, "unsupported_media_type");
    let as_json = with_key(hub.post("/v1/customers"), "typed")
        .header("content-type", "application/json")
        .body(body);
    let reply = call(as_json).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.header("idempotent-replayed"), None);
}

/// Group and team writes and key revocations record their idempotent response in their own
/// transaction: when the
/// record cannot be stored, the write is not committed either (a 5xx, and the key is free for
/// the retry), instead of a write done whose retry finds no response to replay.
async fn group_team_and_key_writes_are_never_committed_without_their_response(hub: TestHub) {
    assert_eq!(
        call(hub.put("/v1/groups/old").json(&json!({})))
            .await
            .status,
        201
    );
    assert_eq!(
        call(hub.put("/v1/teams/old").json(&json!({}))).await.status,
        201
    );
    let group_sync = json!({"groups": [{"code": "synced", "title": "Synced"}]});
    /// What is written, the request (built anew for each send), and where to read the result.
    type Write<'a> = (&'a str, Box<dyn Fn() -> RequestBuilder + 'a>, &'a str);
    let writes: Vec<Write<'_>> = vec![
        (
            "PUT group",
            Box::new(|| hub.put("/v1/groups/new").json(&json!({"title": "New"}))),
            "/v1/groups/new",
        ),
        (
            "group sync",
            Box::new(|| hub.post("/v1/groups/sync").json(&group_sync)),
            "/v1/groups/synced",
        ),
        (
            "DELETE group",
            Box::new(|| hub.delete("/v1/groups/old")),
            "/v1/groups/old",
        ),
        (
            "PUT team",
            Box::new(|| hub.put("/v1/teams/new").json(&json!({"name": "New"}))),
            "/v1/teams/new",
        ),
        (
            "DELETE team",
            Box::new(|| hub.delete("/v1/teams/old")),
            "/v1/teams/old",
        ),
    ];
    for (what, request, read) in &writes {
        let before = call(hub.get(read)).await.status;
        // Recording the idempotent response (the claim's completing `UPDATE`) fails, as a crash
        // between a write and its record would leave it.
        hub.refuse_writes("idempotency_keys", "UPDATE", FailAt::Statement)
            .await;
        let failed = call(with_key(request(), what)).await;
        hub.allow_writes("idempotency_keys").await;
        assert!(
            failed.status >= 500,
            "{what}: a write whose response cannot be recorded fails: {failed:?}"
        );
        assert_eq!(
            call(hub.get(read)).await.status,
            before,
            "{what}: nothing was committed"
        );

        let first = call(with_key(request(), what)).await;
        assert!(first.status < 300, "{what}: the retry runs: {first:?}");
        assert_ne!(call(hub.get(read)).await.status, before, "{what} applied");
        let replay = call(with_key(request(), what)).await;
        assert_eq!(replay.status, first.status, "{what}");
        assert_eq!(replay.body, first.body, "{what}");
        assert_eq!(replay.header(REPLAYED), Some("true"), "{what}");
    }

    let created = call(
        hub.post("/v1/api-keys")
            .json(&json!({"name": "k", "role": "read"})),
    )
    .await;
    let revoked = hub.as_key(created.body["secret"].as_str().expect("secret"));
    let path = format!("/v1/api-keys/{}", created.body["id"].as_str().expect("id"));
    let revoke = || call(with_key(hub.delete(&path), "revoke"));
    // Recording the idempotent response (the claim's completing `UPDATE`) fails, as a crash
    // between a write and its record would leave it.
    hub.refuse_writes("idempotency_keys", "UPDATE", FailAt::Statement)
        .await;
    let failed = revoke().await;
    hub.allow_writes("idempotency_keys").await;
    assert!(failed.status >= 500, "{failed:?}");
    assert_eq!(
        call(revoked.get("/v1/customers")).await.status,
        200,
        "not revoked"
    );
    let first = revoke().await;
    assert_eq!(first.status, 204, "{first:?}");
    assert_eq!(call(revoked.get("/v1/customers")).await.status, 401);
    let replay = revoke().await;
    assert_eq!(replay.status, 204);
    assert_eq!(replay.header(REPLAYED), Some("true"));
}

/// A sync batch slow enough to watch in flight: every item sets a password, which Argon2id
/// hashes before the batch is applied.
fn slow_batch() -> Value {
    let items: Vec<Value> = (0..50)
        .map(|i| json!({"external_id": format!("slow-{i}"), "password": "a long enough password"}))
        .collect();
    json!({"key": "external_id", "customers": items})
}

/// Waits until the database holds the idempotency key `key` claimed but not yet answered.
async fn wait_until_in_flight(
    database_url: &str,
    key: &str,
    first: &tokio::task::JoinHandle<Reply>,
) {
    let sql =
        format!("SELECT key FROM idempotency_keys WHERE key = '{key}' AND response_status IS NULL");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            !first.is_finished(),
            "the first request finished before it was seen in flight"
        );
        if !column_bytes(database_url, &sql).await.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "the key was never claimed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn a_repeat_while_the_first_runs_is_409_and_then_replays(hub: TestHub) {
    let body = slow_batch();
    let send = || call(with_key(hub.post("/v1/customers/sync"), "slow").json(&body));
    let first = tokio::spawn(send());
    wait_until_in_flight(&hub.database_url, "slow", &first).await;

    let repeat = send().await;
    assert_problem(&repeat, 409, "idempotency_in_flight");

    let first = first.await.expect("join");
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["summary"]["created"], 50, "{}", first.body);
    let replay = send().await;
    assert_replay(&first, &replay);
    assert_eq!(hub.count_rows("customers").await, 50);
    assert_eq!(hub.count_rows("changes").await, 50);
}

async fn a_request_the_client_abandons_runs_to_its_end_and_replays(hub: TestHub) {
    let body = slow_batch();
    let send = || call(with_key(hub.post("/v1/customers/sync"), "abandoned").json(&body));
    let first = tokio::spawn(send());
    wait_until_in_flight(&hub.database_url, "abandoned", &first).await;
    // The client goes away mid-request; the server must neither cancel the batch halfway nor
    // leave its key claimed without an answer.
    first.abort();

    let deadline = Instant::now() + Duration::from_secs(30);
    let retry = loop {
        let retry = send().await;
        if retry.status != 409 {
            break retry;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned request never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body["summary"]["created"], 50, "{}", retry.body);
    assert_eq!(hub.count_rows("customers").await, 50);
    assert_eq!(hub.count_rows("changes").await, 50);
    // The writer is left in a clean state: the next write goes through.
    let next = hub
        .sync(&json!({"key": "external_id", "customers": [{"external_id": "next"}]}))
        .await;
    assert_eq!(next.status, 200, "{}", next.body);
    assert_eq!(next.body["summary"]["created"], 1, "{}", next.body);
}

async fn a_created_api_key_replays_its_secret_which_is_stored_sealed(hub: TestHub) {
    let body = json!({"name": "replayed key", "role": "write"});
    let post = || with_key(hub.post("/v1/api-keys"), "new-key").json(&body);
    let first = call(post()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let secret = first.body["secret"].as_str().expect("secret").to_owned();
    let replay = call(post()).await;
    assert_replay(&first, &replay);
    assert_eq!(replay.body["secret"], json!(secret));

    let keys = call(hub.get("/v1/api-keys")).await;
    let named: Vec<&Value> = keys.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|k| k["name"] == "replayed key")
        .collect();
    assert_eq!(named.len(), 1, "the replay created no second key");
    assert_eq!(named[0]["id"], first.body["id"]);
    let writer = hub.as_key(&secret);
    assert_eq!(call(writer.get("/v1/customers")).await.status, 200);

    let stored = column_bytes(
        &hub.database_url,
        "SELECT response_body FROM idempotency_keys",
    )
    .await;
    assert_eq!(stored.len(), 1);
    for body in stored.iter().flatten() {
        assert!(
            !body.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the secret is stored in plain text in idempotency_keys"
        );
    }
    let headers = column_bytes(
        &hub.database_url,
        "SELECT response_headers FROM idempotency_keys",
    )
    .await;
    for headers in headers.iter().flatten() {
        assert!(
            !headers
                .windows(secret.len())
                .any(|w| w == secret.as_bytes())
        );
    }
}

async fn get_ignores_the_header_and_malformed_keys_are_400(hub: TestHub) {
    let customer = hub.create_customer(json!({"first_name": "Read"})).await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));
    for key in ["k-get", "", &"x".repeat(300)] {
        let read = call(with_key(hub.get(&path), key)).await;
        assert_eq!(read.status, 200, "GET with key {key:?}: {}", read.body);
        assert_eq!(read.header(REPLAYED), None);
    }
    assert_eq!(
        hub.count_rows("idempotency_keys").await,
        0,
        "GET claims no key"
    );

    // The key a GET carried is still free for a write.
    let body = json!({"first_name": "Write"});
    let write = call(with_key(hub.post("/v1/customers"), "k-get").json(&body)).await;
    assert_eq!(write.status, 201);
    assert_eq!(write.header(REPLAYED), None);

    for key in [String::new(), "y".repeat(256)] {
        let reply = call(with_key(hub.post("/v1/customers"), &key).json(&body)).await;
        assert_problem(&reply, 400, "invalid_header");
    }
    let non_ascii = call(
        hub.post("/v1/customers")
            .header(
                IDEMPOTENCY_KEY,
                reqwest::header::HeaderValue::from_bytes("kéy".as_bytes()).expect("header"),
            )
            .json(&body),
    )
    .await;
    assert_problem(&non_ascii, 400, "invalid_header");
    assert_eq!(
        all_customers(&hub).await.len(),
        2,
        "refused keys created nothing"
    );

    // 255 characters is allowed.
    let longest = "z".repeat(255);
    let first = call(with_key(hub.post("/v1/customers"), &longest).json(&body)).await;
    assert_eq!(first.status, 201);
    let replay = call(with_key(hub.post("/v1/customers"), &longest).json(&body)).await;
    assert_replay(&first, &replay);
    assert_eq!(all_customers(&hub).await.len(), 3);
}

// --- Across processes: the real binary, killed and restarted, or two of them at once. ---

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("hub.db").display())
}

fn post_as_admin(
    client: &reqwest::Client,
    hub: &HubProcess,
    path: &str,
    key: &str,
) -> RequestBuilder {
    with_key(client.post(hub.url(path)), key).bearer_auth(ADMIN_SECRET)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_key_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    a_key_survives_a_restart(&sqlite_url(dir.path()), dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_key_survives_a_restart() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    a_key_survives_a_restart(&url, dir.path()).await;
}

/// A create and an API key (whose replay is sealed under the master key) are answered, the
/// process is killed, and a new process on the same database replays both.
async fn a_key_survives_a_restart(database_url: &str, dir: &Path) {
    let client = reqwest::Client::new();
    let body = json!({"first_name": "Durable"});
    let key_body = json!({"name": "durable key", "role": "read"});
    let mut hub = HubProcess::start(Path::new(BINARY), database_url, dir);
    let first = call(post_as_admin(&client, &hub, "/v1/customers", "restart").json(&body)).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let first_key =
        call(post_as_admin(&client, &hub, "/v1/api-keys", "restart-key").json(&key_body)).await;
    assert_eq!(first_key.status, 201, "{}", first_key.body);
    hub.kill_9();

    let restarted = HubProcess::start(Path::new(BINARY), database_url, dir);
    let replay =
        call(post_as_admin(&client, &restarted, "/v1/customers", "restart").json(&body)).await;
    assert_replay(&first, &replay);
    let replay_key =
        call(post_as_admin(&client, &restarted, "/v1/api-keys", "restart-key").json(&key_body))
            .await;
    assert_replay(&first_key, &replay_key);
    assert_eq!(count_rows(database_url, "customers").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_hubs_on_one_database_share_keys() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    // One working directory, so both processes use the same master key file.
    let dir = tempfile::tempdir().expect("temp dir");
    let a = HubProcess::start(Path::new(BINARY), &url, dir.path());
    let b = HubProcess::start(Path::new(BINARY), &url, dir.path());
    let client = reqwest::Client::new();

    let body = json!({"external_id": "shared-1"});
    let first = call(post_as_admin(&client, &a, "/v1/customers", "two-hubs").json(&body)).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let replay = call(post_as_admin(&client, &b, "/v1/customers", "two-hubs").json(&body)).await;
    assert_replay(&first, &replay);
    let reused = call(
        post_as_admin(&client, &b, "/v1/customers", "two-hubs")
            .json(&json!({"external_id": "shared-2"})),
    )
    .await;
    assert_problem(&reused, 422, "idempotency_key_reused");

    // While hub A runs a slow batch, hub B refuses the same request with 409, then replays A's
    // answer.
    let batch = slow_batch();
    let send = |hub: &HubProcess| {
        call(post_as_admin(&client, hub, "/v1/customers/sync", "slow").json(&batch))
    };
    let on_a = tokio::spawn(send(&a));
    wait_until_in_flight(&url, "slow", &on_a).await;
    let on_b = send(&b).await;
    assert_problem(&on_b, 409, "idempotency_in_flight");
    let on_a = on_a.await.expect("join");
    assert_eq!(on_a.status, 200, "{}", on_a.body);
    assert_replay(&on_a, &send(&b).await);
    assert_eq!(count_rows(&url, "customers").await, 51);
}

/// A key that may not do something must not fill the table with its refused attempts: a 403
/// keeps no idempotency key.
async fn a_refusal_for_want_of_rights_stores_nothing(hub: TestHub) {
    let reader = hub.as_key(&hub.create_key(Role::Read).await);
    for attempt in 0..3 {
        let reply = call(
            with_key(reader.post("/v1/customers"), &format!("refused-{attempt}"))
                .json(&json!({"first_name": "Ann"})),
        )
        .await;
        assert_problem(&reply, 403, "forbidden");
    }
    let stored = column_bytes(
        &hub.database_url,
        "SELECT key FROM idempotency_keys WHERE key LIKE 'refused-%'",
    )
    .await;
    assert!(stored.is_empty(), "{} kept", stored.len());
}

/// The stored fingerprint of a request is keyed: a body that carries a password does not leave
/// a plain SHA-256 of it behind, which would let a reader of the database test guesses at hash
/// speed instead of Argon2's.
async fn a_password_leaves_no_plain_hash_behind(hub: TestHub) {
    use sha2::{Digest, Sha256};
    let customer = hub.create_customer(json!({"first_name": "Ann"})).await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));
    let body = r#"{"password":"Summer2026!"}"#;
    let reply = call(
        with_key(hub.patch(&path), "pw-1")
            .header("content-type", "application/json")
            .body(body),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let stored = column_bytes(
        &hub.database_url,
        "SELECT fingerprint FROM idempotency_keys WHERE key = 'pw-1'",
    )
    .await;
    let fingerprint = stored[0].clone().expect("a fingerprint");
    assert_eq!(fingerprint.len(), 32);
    for framing in [
        format!("PATCH\n{path}\n{body}"),
        format!("PATCH\n{path}\n{body}\n"),
    ] {
        assert_ne!(fingerprint, Sha256::digest(framing.as_bytes()).to_vec());
    }
    // And it still tells a repeat from another request.
    let repeat = call(
        with_key(hub.patch(&path), "pw-1")
            .header("content-type", "application/json")
            .body(body),
    )
    .await;
    assert_eq!(repeat.header(REPLAYED), Some("true"));
    let other = call(
        with_key(hub.patch(&path), "pw-1")
            .header("content-type", "application/json")
            .body(r#"{"password":"Winter2026!"}"#),
    )
    .await;
    assert_problem(&other, 422, "idempotency_key_reused");
}
