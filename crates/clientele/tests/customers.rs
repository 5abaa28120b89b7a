//! The customer lifecycle over HTTP, on SQLite and PostgreSQL: create, upsert, read, patch and
//! delete by id and by each unique key; write semantics; versions and `If-Match`; unique keys;
//! races between writers; keyset listing; and the change records every write leaves.

use std::collections::{BTreeSet, HashSet};

use clientele_testkit::{Backend, TestHub, call, hub_tests, metric_sample};
use futures::future::join_all;
use serde_json::{Value, json};

hub_tests!(
    create_returns_every_field_with_location_and_etag,
    upsert_on_external_id_creates_updates_and_leaves_unchanged,
    put_on_a_key_upserts_and_takes_the_key_from_the_path,
    every_unique_key_reads_patches_and_deletes,
    a_path_key_that_is_not_unique_is_a_documented_404,
    key_values_are_url_decoded,
    key_values_that_are_words_of_other_routes_address_their_customers,
    absent_keeps_null_clears_and_an_equal_write_keeps_the_version,
    if_match_guards_patch_put_and_delete,
    unique_keys_clash_with_409_naming_the_key,
    racing_creates_of_one_key_give_one_customer_and_409s,
    a_burst_of_creates_gets_each_its_own_answer,
    other_writes_get_their_turn_while_creates_keep_coming,
    racing_upserts_of_one_key_give_one_customer,
    racing_patches_lose_no_update,
    deleted_customers_are_gone_and_unknown_ids_are_404,
    listing_pages_by_keyset_in_every_sort_order,
    paging_never_repeats_or_skips_while_others_write,
    every_change_is_recorded_with_the_customer_as_of_it,
    the_longest_valid_names_are_stored_and_sorted,
);

fn gillie_customer() -> Value {
    json!({
        "external_id": "12378907778",
        "first_name": "Matt",
        "last_name": "Smith",
        "phone": "+358509998888",
        "archived": false,
        "addresses": [{"title": "Home", "line1": "Mannerheimintie 1B", "postal_code": "00100",
                       "city": "Helsinki", "country": "FI", "kind": "billing"}]
    })
}

async fn create_returns_every_field_with_location_and_etag(hub: TestHub) {
    let body = json!({
        "external_id": "erp-1", "email": "Ann.Lee@Example.com", "username": "annlee",
        "first_name": "Ann", "last_name": "Lee", "company": "Lee Oy", "phone": "+358 40 1",
        "phone_alt": "+358 40 2", "email_verified": true, "email_opt_out": true,
        "currency": "eur", "discount_percent": 12.5, "payment_terms": "30-days",
        "note": "likes tea", "birthday": "1980-01-31", "tags": ["vip", "b2b", "vip"],
        "custom": {"loyalty": {"tier": "gold"}},
        "addresses": [
            {"title": "Office", "remote_id": "a-1", "kind": "billing", "name": "Ann Lee",
             "company": "Lee Oy", "line1": "Street 1", "line2": "B", "line3": "c/o",
             "city": "Turku", "region": "Varsinais-Suomi", "postal_code": "20100",
             "country": "fi", "phone": "+358 2 1"}
        ]
    });
    let created = call(hub.post("/v1/customers").json(&body)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let customer = &created.body;
    let id = customer["id"].as_str().expect("id");
    assert!(id.starts_with("cus_"), "{id}");
    assert_eq!(
        created.header("location"),
        Some(format!("/v1/customers/{id}").as_str())
    );
    assert_eq!(created.header("etag"), Some("\"1\""));
    assert_eq!(customer["version"], 1);
    assert_eq!(customer["email"], "Ann.Lee@Example.com", "stored as given");
    assert_eq!(customer["name"], "Ann Lee");
    assert_eq!(customer["currency"], "EUR");
    assert_eq!(customer["discount_percent"], 12.5);
    assert_eq!(customer["tags"], json!(["b2b", "vip"]));
    assert_eq!(customer["addresses"][0]["country"], "FI");
    assert_eq!(customer["addresses"][0]["line3"], "c/o");
    assert_eq!(customer["custom"], json!({"loyalty": {"tier": "gold"}}));
    assert_eq!(customer["has_password"], false);
    assert_eq!(customer["groups"], json!([]));
    assert_eq!(customer["teams"], json!([]));
    assert_eq!(customer["created_at"], customer["updated_at"]);
    let created_at = customer["created_at"].as_str().expect("created_at");
    assert!(
        created_at.ends_with('Z') && created_at.contains('.'),
        "{created_at}"
    );

    let read = call(hub.get(&format!("/v1/customers/{id}"))).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.header("etag"), Some("\"1\""));
    assert_eq!(read.header("content-type"), Some("application/json"));
    assert_eq!(
        &read.body, customer,
        "a read returns what the create returned"
    );

    // Every field of the contract is present, null where unset.
    let minimal = hub.create_customer(json!({})).await;
    let fields = [
        "id",
        "external_id",
        "email",
        "username",
        "first_name",
        "last_name",
        "company",
        "name",
        "phone",
        "phone_alt",
        "email_verified",
        "email_opt_out",
        "archived",
        "currency",
        "discount_percent",
        "payment_terms",
        "note",
        "birthday",
        "addresses",
        "tags",
        "groups",
        "teams",
        "custom",
        "has_password",
        "version",
        "created_at",
        "updated_at",
    ];
    let object = minimal.as_object().expect("object");
    for field in fields {
        assert!(object.contains_key(field), "missing {field}");
    }
    assert_eq!(object.len(), fields.len(), "no extra fields: {minimal}");
    assert_eq!(minimal["external_id"], Value::Null);
    assert_eq!(minimal["archived"], false);
}

async fn upsert_on_external_id_creates_updates_and_leaves_unchanged(hub: TestHub) {
    let path = "/v1/customers?upsert=external_id";
    let first = call(hub.post(path).json(&gillie_customer())).await;
    assert_eq!(first.status, 201, "{}", first.body);
    let id = first.body["id"].clone();

    let mut changed = gillie_customer();
    changed["phone"] = json!("+358501112222");
    let second = call(hub.post(path).json(&changed)).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body["id"], id, "the same customer");
    assert_eq!(second.body["version"], 2);
    assert_eq!(second.body["phone"], "+358501112222");
    assert_eq!(second.header("location"), None);

    let third = call(hub.post(path).json(&changed)).await;
    assert_eq!(third.status, 200);
    assert_eq!(third.body["version"], 2, "an equal write keeps the version");
    assert_eq!(third.body["updated_at"], second.body["updated_at"]);

    // Read back by the hub's id, as Gillie's example does.
    let read = call(hub.get(&format!("/v1/customers/{}", id.as_str().expect("id")))).await;
    assert_eq!(read.body["external_id"], "12378907778");
    assert_eq!(read.body["version"], 2);
}

async fn put_on_a_key_upserts_and_takes_the_key_from_the_path(hub: TestHub) {
    let created = call(
        hub.put("/v1/customers/external_id/p-77")
            .json(&json!({"first_name": "Eve"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(
        created.body["external_id"], "p-77",
        "the key comes from the path"
    );
    assert_eq!(created.header("etag"), Some("\"1\""));

    let updated = call(
        hub.put("/v1/customers/external_id/p-77")
            .json(&json!({"last_name": "Ek"})),
    )
    .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.body["id"], created.body["id"]);
    assert_eq!(
        updated.body["first_name"], "Eve",
        "PUT upserts with write semantics"
    );
    assert_eq!(updated.body["version"], 2);

    let same = call(
        hub.put("/v1/customers/external_id/p-77")
            .json(&json!({"last_name": "Ek"})),
    )
    .await;
    assert_eq!(same.status, 200);
    assert_eq!(same.body["version"], 2);

    // Emails address case-insensitively, and the stored spelling stays.
    let by_email = call(
        hub.put("/v1/customers/email/Eve@Example.com")
            .json(&json!({})),
    )
    .await;
    assert_eq!(by_email.status, 201);
    let again = call(
        hub.put("/v1/customers/email/EVE@example.COM")
            .json(&json!({"note": "hi"})),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["id"], by_email.body["id"]);
    assert_eq!(again.body["email"], "Eve@Example.com");
}

async fn every_unique_key_reads_patches_and_deletes(hub: TestHub) {
    let customer = hub
        .create_customer(
            json!({"external_id": "x-1", "email": "Key@Example.com", "username": "keyuser"}),
        )
        .await;
    for path in [
        "/v1/customers/external_id/x-1",
        "/v1/customers/email/key@example.com",
        "/v1/customers/username/keyuser",
    ] {
        let read = call(hub.get(path)).await;
        assert_eq!(read.status, 200, "{path}");
        assert_eq!(read.body["id"], customer["id"], "{path}");
        assert_eq!(
            read.header("etag"),
            Some(format!("\"{}\"", read.body["version"]).as_str())
        );
    }
    let patched = call(
        hub.patch("/v1/customers/username/keyuser")
            .json(&json!({"note": "via username"})),
    )
    .await;
    assert_eq!(patched.status, 200);
    assert_eq!(patched.body["note"], "via username");
    let patched = call(
        hub.patch("/v1/customers/email/KEY@example.com")
            .json(&json!({"note": "via email"})),
    )
    .await;
    assert_eq!(patched.body["note"], "via email");
    assert_eq!(patched.body["version"], 3);

    let missing = call(
        hub.patch("/v1/customers/external_id/none")
            .json(&json!({"note": "x"})),
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["code"], "not_found");

    let deleted = call(hub.delete("/v1/customers/external_id/x-1")).await;
    assert_eq!(deleted.status, 204);
    for path in [
        "/v1/customers/external_id/x-1",
        "/v1/customers/username/keyuser",
    ] {
        assert_eq!(call(hub.get(path)).await.status, 404, "{path}");
    }
    assert_eq!(
        call(hub.delete("/v1/customers/email/key@example.com"))
            .await
            .status,
        404
    );

    let wrong_key = call(hub.get("/v1/customers/phone/123")).await;
    assert_eq!(wrong_key.status, 404);
    assert_eq!(wrong_key.body["code"], "route_not_found");
}

async fn a_path_key_that_is_not_unique_is_a_documented_404(hub: TestHub) {
    // Found by schemathesis: PUT answered 404 without documenting it.
    let document = call(hub.get("/openapi.json")).await.body;
    let item = &document["paths"]["/v1/customers/{key}/{value}"];
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        let reply = call(
            hub.request(method.clone(), "/v1/customers/phone/123")
                .json(&json!({"note": "n"})),
        )
        .await;
        clientele_testkit::assert_problem(&reply, 404, "route_not_found");
        let operation = &item[method.as_str().to_lowercase()];
        assert!(
            operation["responses"]["404"].is_object(),
            "{method} does not document 404: {operation}"
        );
    }
    assert_eq!(hub.count_rows("customers").await, 0);
}

async fn key_values_are_url_decoded(hub: TestHub) {
    let value = "ERP/42 ä&?";
    let encoded = "ERP%2F42%20%C3%A4%26%3F";
    let created = call(
        hub.put(&format!("/v1/customers/external_id/{encoded}"))
            .json(&json!({})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["external_id"], value);
    let read = call(hub.get(&format!("/v1/customers/external_id/{encoded}"))).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body["id"], created.body["id"]);
}

/// Found in a review: `/v1/customers/{id}/orders` and `.../verify-password` took the key paths
/// whose value is `orders` or `verify-password` (404, or 405 for writes).
async fn key_values_that_are_words_of_other_routes_address_their_customers(hub: TestHub) {
    for (key, value) in [("external_id", "orders"), ("username", "verify-password")] {
        let path = format!("/v1/customers/{key}/{value}");
        let created = call(hub.put(&path).json(&json!({"first_name": "Word"}))).await;
        assert_eq!(created.status, 201, "{path}: {}", created.body);
        assert_eq!(created.body[key], value);
        let read = call(hub.get(&path)).await;
        assert_eq!(read.status, 200, "{path}: {}", read.body);
        assert_eq!(read.body["id"], created.body["id"]);
        let patched = call(
            hub.patch(&path)
                .header("Idempotency-Key", format!("patch-{value}"))
                .json(&json!({"last_name": "Path"})),
        )
        .await;
        assert_eq!(patched.status, 200, "{path}: {}", patched.body);
        assert_eq!(patched.body["last_name"], "Path");
        // A retry is the same request, path as sent and all.
        let again = call(
            hub.patch(&path)
                .header("Idempotency-Key", format!("patch-{value}"))
                .json(&json!({"last_name": "Path"})),
        )
        .await;
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        // The routes of a customer's orders and password check are where they were.
        let id = created.body["id"].as_str().expect("id");
        let orders = call(hub.get(&format!("/v1/customers/{id}/orders"))).await;
        assert_eq!(orders.status, 200, "{}", orders.body);
        let check = call(
            hub.post(&format!("/v1/customers/{id}/verify-password"))
                .json(&json!({"password": "whatever"})),
        )
        .await;
        assert_eq!(check.status, 200, "{}", check.body);
        assert_eq!(call(hub.delete(&path)).await.status, 204, "{path}");
        assert_eq!(call(hub.get(&path)).await.status, 404, "{path}");
    }
}

async fn absent_keeps_null_clears_and_an_equal_write_keeps_the_version(hub: TestHub) {
    let customer = hub
        .create_customer(
            json!({"first_name": "Ann", "last_name": "Lee", "phone": "1", "note": "n",
                                "tags": ["a"], "currency": "SEK"}),
        )
        .await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));

    let patched = call(hub.patch(&path).json(&json!({"phone": null, "note": "m"}))).await;
    assert_eq!(patched.status, 200);
    let body = &patched.body;
    assert_eq!(body["phone"], Value::Null, "null clears");
    assert_eq!(body["note"], "m");
    assert_eq!(body["first_name"], "Ann", "absent keeps");
    assert_eq!(body["tags"], json!(["a"]));
    assert_eq!(body["currency"], "SEK");
    assert_eq!(body["version"], 2);
    assert_eq!(patched.header("etag"), Some("\"2\""));
    assert!(body["updated_at"].as_str() > customer["updated_at"].as_str());

    for unchanged in [
        json!({}),
        json!({"note": "m", "phone": null}),
        json!({"currency": "sek"}),
    ] {
        let reply = call(hub.patch(&path).json(&unchanged)).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["version"], 2, "{unchanged} changes nothing");
        assert_eq!(reply.body["updated_at"], body["updated_at"]);
    }

    // A customer read back whole and written back is unchanged.
    let read = call(hub.get(&path)).await.body;
    let written_back = call(hub.patch(&path).json(&read)).await;
    assert_eq!(written_back.status, 200, "{}", written_back.body);
    assert_eq!(written_back.body["version"], 2);

    let renamed = call(hub.patch(&path).json(&json!({"first_name": "Anna"})))
        .await
        .body;
    assert_eq!(renamed["name"], "Anna Lee", "a derived name follows");
    let named = call(hub.patch(&path).json(&json!({"name": "Dr. Lee"})))
        .await
        .body;
    let renamed = call(hub.patch(&path).json(&json!({"first_name": "Annie"})))
        .await
        .body;
    assert_eq!(named["name"], "Dr. Lee");
    assert_eq!(renamed["name"], "Dr. Lee", "a given name stays");
    let cleared = call(hub.patch(&path).json(&json!({"name": null})))
        .await
        .body;
    assert_eq!(cleared["name"], "Annie Lee");
}

async fn if_match_guards_patch_put_and_delete(hub: TestHub) {
    let customer = hub.create_customer(json!({"external_id": "m-1"})).await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));
    // An upsert by external id under an `If-Match` tag.
    let put_if = |external_id: &str, tag: &str, body: Value| {
        call(
            hub.put(&format!("/v1/customers/external_id/{external_id}"))
                .header("if-match", tag)
                .json(&body),
        )
    };

    let ok = call(
        hub.patch(&path)
            .header("if-match", "\"1\"")
            .json(&json!({"note": "a"})),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["version"], 2);

    let stale = call(
        hub.patch(&path)
            .header("if-match", "\"1\"")
            .json(&json!({"note": "b"})),
    )
    .await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.body["code"], "version_conflict");
    assert_eq!(
        call(hub.get(&path)).await.body["note"],
        "a",
        "a failed write changes nothing"
    );

    let put = put_if("m-1", "\"7\"", json!({})).await;
    assert_eq!(put.status, 412);
    let put = put_if("m-1", "\"2\"", json!({"note": "c"})).await;
    assert_eq!(put.status, 200);
    let absent = put_if("m-2", "\"1\"", json!({})).await;
    assert_eq!(
        absent.status, 412,
        "If-Match on a customer that does not exist fails"
    );
    // `*` asks only that the customer exist: it never creates (found in an audit: it did), and
    // updates whatever the version.
    let star = put_if("m-2", "*", json!({"note": "new"})).await;
    assert_eq!(star.status, 412, "{}", star.body);
    assert_eq!(star.body["code"], "version_conflict");
    assert_eq!(
        call(hub.get("/v1/customers/external_id/m-2")).await.status,
        404
    );
    let star = put_if("m-1", "*", json!({"note": "d"})).await;
    assert_eq!(star.status, 200, "{}", star.body);
    assert_eq!(star.body["version"], 4);
    // `"0"` asks that there be none yet: a create-only upsert.
    let fresh = put_if("m-3", "\"0\"", json!({})).await;
    assert_eq!(fresh.status, 201, "{}", fresh.body);
    let again = put_if("m-3", "\"0\"", json!({"note": "x"})).await;
    assert_eq!(again.status, 412, "{}", again.body);

    // Not an entity tag: a word, or a quote on one side only (found in an audit: `"2` was
    // taken as version 2).
    for tag in ["yesterday", "\"2", "2\""] {
        let bad = call(hub.patch(&path).header("if-match", tag).json(&json!({}))).await;
        assert_eq!(bad.status, 400, "{tag}");
        assert_eq!(bad.body["code"], "invalid_header", "{tag}");
    }

    let delete = call(hub.delete(&path).header("if-match", "\"2\"")).await;
    assert_eq!(delete.status, 412);
    let delete = call(hub.delete(&path).header("if-match", "*")).await;
    assert_eq!(delete.status, 204);
}

async fn unique_keys_clash_with_409_naming_the_key(hub: TestHub) {
    hub.create_customer(
        json!({"external_id": "u-1", "email": "Same@Example.com", "username": "same"}),
    )
    .await;
    let other = hub.create_customer(json!({"external_id": "u-2"})).await;
    let other_path = format!("/v1/customers/{}", other["id"].as_str().expect("id"));

    for (body, key) in [
        (json!({"external_id": "u-1"}), "external_id"),
        (json!({"email": "same@EXAMPLE.com"}), "email"),
        (json!({"username": "same"}), "username"),
    ] {
        let create = call(hub.post("/v1/customers").json(&body)).await;
        assert_eq!(create.status, 409, "{body}");
        assert_eq!(create.body["code"], "duplicate_key");
        assert_eq!(create.body["errors"][0]["field"], key);
        assert_eq!(
            create.header("content-type"),
            Some("application/problem+json")
        );

        let patch = call(hub.patch(&other_path).json(&body)).await;
        assert_eq!(patch.status, 409, "patch {body}");
        assert_eq!(patch.body["errors"][0]["field"], key);
    }
    let unchanged = call(hub.get(&other_path)).await.body;
    assert_eq!(unchanged["version"], 1, "failed writes change nothing");
    // An upsert on one key clashing on another is a 409 too, not a retry loop.
    let upsert = call(
        hub.put("/v1/customers/external_id/u-3")
            .json(&json!({"username": "same"})),
    )
    .await;
    assert_eq!(upsert.status, 409);
    assert_eq!(upsert.body["errors"][0]["field"], "username");
}

async fn racing_creates_of_one_key_give_one_customer_and_409s(hub: TestHub) {
    let attempts = (0..16).map(|i| {
        call(
            hub.post("/v1/customers")
                .json(&json!({"email": "race@example.com", "note": i.to_string()})),
        )
    });
    let replies = join_all(attempts).await;
    let created = replies.iter().filter(|r| r.status == 201).count();
    let clashed = replies.iter().filter(|r| r.status == 409).count();
    assert_eq!(
        (created, clashed),
        (1, 15),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(
        replies
            .iter()
            .filter(|r| r.status == 409)
            .all(|r| r.body["errors"][0]["field"] == "email")
    );
}

/// Concurrent creates are written in groups (one transaction for many): each still gets the
/// answer it would get alone, and only the accepted ones are stored and recorded.
async fn a_burst_of_creates_gets_each_its_own_answer(hub: TestHub) {
    hub.create_customer(json!({"external_id": "taken"})).await;
    let group = call(hub.put("/v1/groups/vip").json(&json!({"title": "VIP"}))).await;
    assert_eq!(group.status, 201, "{}", group.body);
    // (body, expected status, field of the error)
    let mut cases: Vec<(Value, u16, Option<&str>)> = Vec::new();
    for i in 0..12 {
        let body = json!({"external_id": format!("ok-{i}"), "email": format!("ok{i}@example.com"),
                          "first_name": "Burst", "tags": ["burst"], "groups": ["vip"]});
        cases.push((body, 201, None));
    }
    for i in 0..6 {
        cases.push((
            json!({"external_id": "taken", "note": i.to_string()}),
            409,
            Some("external_id"),
        ));
        cases.push((
            json!({"username": "u", "country": "XX"}),
            422,
            Some("country"),
        ));
        cases.push((json!({"groups": ["no-such-group"]}), 422, Some("groups[0]")));
    }
    let replies = join_all(
        cases
            .iter()
            .map(|(body, _, _)| call(hub.post("/v1/customers").json(body))),
    )
    .await;
    for ((body, status, field), reply) in cases.iter().zip(&replies) {
        assert_eq!(reply.status, *status, "{body} -> {}", reply.body);
        if let Some(field) = field {
            assert_eq!(reply.body["errors"][0]["field"], *field, "{}", reply.body);
        }
    }
    // Creates racing for one new email within the burst: exactly one wins.
    let same = join_all((0..8).map(|i| {
        call(
            hub.post("/v1/customers")
                .json(&json!({"email": "Same@Example.com", "note": i.to_string()})),
        )
    }))
    .await;
    let statuses: Vec<u16> = same.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        7,
        "{statuses:?}"
    );

    let created: Vec<&Value> = replies
        .iter()
        .chain(&same)
        .filter(|r| r.status == 201)
        .map(|r| &r.body)
        .collect();
    for customer in &created {
        let id = customer["id"].as_str().expect("id");
        let stored = call(hub.get(&format!("/v1/customers/{id}"))).await;
        assert_eq!(stored.body, **customer, "stored as answered");
    }
    let vip = call(hub.get("/v1/customers?group=vip&limit=100")).await;
    assert_eq!(vip.body["data"].as_array().expect("data").len(), 12);
    let rows = change_rows(&hub).await;
    assert_eq!(
        rows.len(),
        1 + created.len(),
        "one record per stored customer"
    );
    assert!(rows.iter().all(|r| r.0 == "created" && r.1 == 1));

    // The burst was written in groups: every create of it counted, and fewer transactions.
    let metrics = hub.metrics().await;
    let counter = |name| {
        metric_sample(&metrics, name, &[]).unwrap_or_else(|| panic!("{name} in {metrics}")) as u64
    };
    let groups = counter("db_create_groups_total");
    let grouped = counter("db_grouped_creates_total");
    // Every create that reached the store; an invalid country is refused before it does.
    let stored = 1
        + cases
            .iter()
            .filter(|(_, _, f)| *f != Some("country"))
            .count()
        + same.len();
    assert_eq!(grouped, stored as u64, "{metrics}");
    assert!(
        groups < grouped,
        "some group held several creates: {metrics}"
    );
}

/// While a stream of creates keeps the create writer busy, every other kind of write (a patch,
/// a bulk sync, an idempotency claim) still gets its turn at the writing connection, and does
/// not wait for the creates to stop.
async fn other_writes_get_their_turn_while_creates_keep_coming(hub: TestHub) {
    let customer = hub.create_customer(json!({"external_id": "patched"})).await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let creators = join_all((0..12).map(|task| {
        let (hub, stop) = (&hub, &stop);
        async move {
            let mut created = 0_u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let body = json!({"external_id": format!("stream-{task}-{created}")});
                let reply = call(hub.post("/v1/customers").json(&body)).await;
                assert_eq!(reply.status, 201, "{}", reply.body);
                created += 1;
            }
            created
        }
    }));
    let others = async {
        for i in 0..10 {
            let patched = call(hub.patch(&path).json(&json!({"note": format!("n{i}")}))).await;
            assert_eq!(patched.status, 200, "{}", patched.body);
            let synced = call(hub.post("/v1/customers/sync").json(&json!({
                "key": "external_id",
                "customers": [{"external_id": format!("synced-{i}")}]
            })))
            .await;
            assert_eq!(synced.status, 200, "{}", synced.body);
            let claimed = call(
                hub.post("/v1/customers")
                    .header("idempotency-key", format!("once-{i}"))
                    .json(&json!({"external_id": format!("once-{i}")})),
            )
            .await;
            assert_eq!(claimed.status, 201, "{}", claimed.body);
        }
        // Had these waited for the creates to stop, they would never have finished.
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let (created, ()) = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        futures::future::join(creators, others),
    )
    .await
    .expect("the other writes were served while creates kept coming");
    assert!(created.iter().all(|n| *n > 0), "{created:?}");
    let stored = call(hub.get(&path)).await.body;
    assert_eq!(stored["note"], "n9");
}

async fn racing_upserts_of_one_key_give_one_customer(hub: TestHub) {
    let attempts = (0..16).map(|i| {
        call(
            hub.put("/v1/customers/external_id/racer")
                .json(&json!({"add_tags": [format!("t{i}")]})),
        )
    });
    let replies = join_all(attempts).await;
    assert!(
        replies.iter().all(|r| r.status == 200 || r.status == 201),
        "{:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    assert_eq!(replies.iter().filter(|r| r.status == 201).count(), 1);
    let ids: HashSet<_> = replies.iter().map(|r| r.body["id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "every upsert found the same customer");
    let stored = call(hub.get("/v1/customers/external_id/racer")).await.body;
    assert_eq!(
        stored["tags"].as_array().expect("tags").len(),
        16,
        "no upsert was lost: {stored}"
    );
    assert_eq!(stored["version"], 16);
}

async fn racing_patches_lose_no_update(hub: TestHub) {
    let customer = hub.create_customer(json!({"external_id": "busy"})).await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));
    let writers = (0..24).map(|i| {
        call(
            hub.patch(&path)
                .json(&json!({"add_tags": [format!("w{i:02}")]})),
        )
    });
    let replies = join_all(writers).await;
    assert!(replies.iter().all(|r| r.status == 200));
    let versions: BTreeSet<_> = replies
        .iter()
        .map(|r| r.body["version"].as_i64().expect("version"))
        .collect();
    assert_eq!(
        versions,
        (2..=25).collect(),
        "each write saw the one before it"
    );
    let stored = call(hub.get(&path)).await.body;
    assert_eq!(stored["tags"].as_array().expect("tags").len(), 24);
    assert_eq!(stored["version"], 25);

    // Guarded writers racing on one version: exactly one wins.
    let guarded = (0..8).map(|i| {
        call(
            hub.patch(&path)
                .header("if-match", "\"25\"")
                .json(&json!({"note": format!("n{i}")})),
        )
    });
    let replies = join_all(guarded).await;
    assert_eq!(replies.iter().filter(|r| r.status == 200).count(), 1);
    assert_eq!(replies.iter().filter(|r| r.status == 412).count(), 7);
}

async fn deleted_customers_are_gone_and_unknown_ids_are_404(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"external_id": "gone", "email": "gone@example.com"}))
        .await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));
    assert_eq!(call(hub.delete(&path)).await.status, 204);
    let read = call(hub.get(&path)).await;
    assert_eq!(read.status, 404);
    assert_eq!(read.body["code"], "not_found");
    assert_eq!(call(hub.delete(&path)).await.status, 404);
    assert_eq!(call(hub.patch(&path).json(&json!({}))).await.status, 404);
    // The keys are free again.
    hub.create_customer(json!({"external_id": "gone", "email": "gone@example.com"}))
        .await;

    for id in [
        "cus_01ARZ3NDEKTSV4RRFFQ69G5FAV",
        "nonsense",
        "cus_",
        "key_01ARZ3NDEKTSV4RRFFQ69G5FAV",
    ] {
        let reply = call(hub.get(&format!("/v1/customers/{id}"))).await;
        assert_eq!(reply.status, 404, "{id}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
    }
}

/// The ids of a whole listing, walked page by page with `limit`.
async fn walk(hub: &TestHub, query: &str, limit: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/customers?limit={limit}{query}");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = call(hub.get(&path)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let data = page.body["data"].as_array().expect("data").clone();
        assert!(data.len() <= limit);
        seen.extend(data);
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return seen,
        }
    }
}

async fn listing_pages_by_keyset_in_every_sort_order(hub: TestHub) {
    let last_names = [
        "Oja", "aalto", "Virtanen", "Korhonen", "Mäkinen", "Nieminen", "Laine",
    ];
    let mut created = Vec::new();
    for (i, last_name) in last_names.iter().enumerate() {
        created.push(
            hub.create_customer(json!({"external_id": format!("l-{i}"), "last_name": last_name}))
                .await,
        );
    }
    // Touch the first so that updated_at order differs from created_at order.
    let first = created[0]["id"].as_str().expect("id");
    call(
        hub.patch(&format!("/v1/customers/{first}"))
            .json(&json!({"note": "touched"})),
    )
    .await;

    let ids = |list: &[Value]| {
        list.iter()
            .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let created_ids = ids(&created);

    let by_created = walk(&hub, "", 2).await;
    assert_eq!(ids(&by_created), created_ids);
    let mut reversed = created_ids.clone();
    reversed.reverse();
    assert_eq!(ids(&walk(&hub, "&sort=-created_at", 3).await), reversed);

    let by_updated = ids(&walk(&hub, "&sort=updated_at", 2).await);
    assert_eq!(by_updated.last(), Some(&created_ids[0]));
    assert_eq!(by_updated[..6], created_ids[1..]);
    let by_updated_desc = ids(&walk(&hub, "&sort=-updated_at", 4).await);
    assert_eq!(by_updated_desc.first(), Some(&created_ids[0]));

    let by_name: Vec<_> = walk(&hub, "&sort=last_name", 2)
        .await
        .iter()
        .map(|c| c["last_name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        by_name,
        [
            "aalto", "Korhonen", "Laine", "Mäkinen", "Nieminen", "Oja", "Virtanen"
        ],
        "case-insensitive"
    );

    let one_page = call(hub.get("/v1/customers?limit=1000")).await.body;
    assert_eq!(one_page["data"].as_array().map(Vec::len), Some(7));
    assert_eq!(one_page["next_cursor"], Value::Null);
    let default_page = call(hub.get("/v1/customers")).await.body;
    assert_eq!(default_page["data"].as_array().map(Vec::len), Some(7));
}

async fn paging_never_repeats_or_skips_while_others_write(hub: TestHub) {
    let mut originals = BTreeSet::new();
    for i in 0..30 {
        let customer = hub
            .create_customer(json!({"external_id": format!("p-{i:02}")}))
            .await;
        originals.insert(customer["id"].as_str().expect("id").to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut round = 0;
    loop {
        let mut path = "/v1/customers?limit=4".to_owned();
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = call(hub.get(&path)).await.body;
        for customer in page["data"].as_array().expect("data") {
            seen.push(customer["id"].as_str().expect("id").to_owned());
        }
        // Others write between pages: new customers, and an original deleted.
        hub.create_customer(json!({"external_id": format!("new-{round}")}))
            .await;
        round += 1;
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no customer repeated");
    assert!(originals.is_subset(&unique), "no original skipped");
}

async fn every_change_is_recorded_with_the_customer_as_of_it(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"external_id": "c-1", "note": "one"}))
        .await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));
    call(hub.patch(&path).json(&json!({"note": "two"}))).await;
    call(hub.patch(&path).json(&json!({"note": "two"}))).await; // unchanged: no record
    call(hub.patch(&path).json(&json!({"bad_field": 1}))).await; // refused: no record

    let rows = change_rows(&hub).await;
    let kinds: Vec<_> = rows.iter().map(|r| (r.0.as_str(), r.1)).collect();
    assert_eq!(kinds, [("created", 1), ("updated", 2)]);
    let first: Value = serde_json::from_str(rows[0].2.as_deref().expect("customer")).expect("json");
    let second: Value =
        serde_json::from_str(rows[1].2.as_deref().expect("customer")).expect("json");
    assert_eq!(first["note"], "one");
    assert_eq!(second["note"], "two");
    assert_eq!(second["version"], 2);

    // An erasure: the deletion carries no customer, and the earlier records no longer do.
    assert_eq!(call(hub.delete(&path)).await.status, 204);
    let rows = change_rows(&hub).await;
    let kinds: Vec<_> = rows.iter().map(|r| (r.0.as_str(), r.1)).collect();
    assert_eq!(kinds, [("created", 1), ("updated", 2), ("deleted", 3)]);
    assert!(rows.iter().all(|r| r.2.is_none()), "{rows:?}");
    assert!(
        rows.iter().all(|r| r.3.as_deref() == Some("c-1")),
        "each record names the external id"
    );
}

async fn the_longest_valid_names_are_stored_and_sorted(hub: TestHub) {
    // 1000 characters is the limit; 4-byte characters make 4000 bytes, past PostgreSQL's
    // largest B-tree entry if the sort column held the whole name.
    // Varied characters, so that PostgreSQL cannot compress the index entry below its limit.
    let long: String = (0..1000u32)
        .filter_map(|i| char::from_u32(0x1F300 + (i * 7919) % 0x2FF))
        .collect();
    assert_eq!(long.chars().count(), 1000);
    let created = call(hub.post("/v1/customers").json(&json!({"last_name": long}))).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["last_name"], long.as_str());
    let other = format!("{long}x");
    let refused = call(hub.post("/v1/customers").json(&json!({"last_name": other}))).await;
    assert_eq!(refused.status, 422);
    let sorted = walk(&hub, "&sort=last_name", 1).await;
    assert_eq!(sorted.len(), 1);
    assert_eq!(sorted[0]["last_name"], long.as_str());
}

/// `(kind, version, customer, external_id)` of every change record, in order.
async fn change_rows(hub: &TestHub) -> Vec<(String, i64, Option<String>, Option<String>)> {
    let sql = "SELECT kind, version, customer, external_id FROM changes ORDER BY seq";
    match hub.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&hub.database_url)
                .await
                .expect("open");
            sqlx::query_as(sql).fetch_all(&pool).await.expect("changes")
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&hub.database_url)
                .await
                .expect("open");
            sqlx::query_as(sql).fetch_all(&pool).await.expect("changes")
        }
    }
}
