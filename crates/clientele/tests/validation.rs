//! Every validation rule over HTTP: each invalid input is a 422 (or 400 for malformed JSON)
//! problem naming the exact field and error code, a rejected write changes nothing, and the
//! normalisations a valid write goes through are visible in what is stored.

use clientele_testkit::{TestHub, assert_invalid, assert_problem, call, hub_tests};
use serde_json::{Value, json};

hub_tests!(
    unknown_top_level_field_is_named,
    unknown_nested_address_field_is_named,
    several_unknown_fields_are_reported_together,
    wrong_types_are_named,
    a_body_that_is_not_an_object_is_refused,
    malformed_json_is_a_bad_request,
    an_empty_body_is_a_bad_request,
    currency_must_be_iso_4217,
    country_must_be_iso_3166,
    discount_must_be_between_0_and_100,
    birthday_must_be_a_real_date,
    email_must_be_plausible,
    unique_keys_must_not_be_empty,
    address_titles_must_be_unique,
    address_remote_ids_must_be_unique,
    an_address_needs_a_title,
    merging_by_remote_id_needs_remote_ids,
    unknown_groups_and_teams_are_refused,
    text_has_a_maximum_length,
    a_weak_password_is_refused,
    an_upsert_needs_its_key_in_the_body,
    an_unknown_upsert_key_is_refused,
    put_body_key_must_match_the_path,
    unknown_query_parameter_is_refused,
    limit_must_be_between_1_and_1000,
    sort_must_be_known,
    a_garbage_cursor_is_refused,
    a_cursor_only_pages_its_own_sort,
    text_must_not_contain_nul,
    one_line_text_must_not_contain_control_characters,
    custom_numbers_beyond_64_bit_integers_are_refused,
    key_values_with_control_characters_name_no_customer,
    a_cursor_with_nul_is_refused,
    a_rejected_write_changes_nothing,
    currency_and_country_are_normalised,
    blank_optional_strings_are_stored_as_null,
    name_is_derived_from_first_and_last_name,
);

/// POSTs `body` to `/v1/customers`.
async fn create(hub: &TestHub, body: Value) -> clientele_testkit::Reply {
    call(hub.post("/v1/customers").json(&body)).await
}

/// POSTs raw bytes as JSON to `/v1/customers`.
async fn create_raw(hub: &TestHub, body: &'static str) -> clientele_testkit::Reply {
    call(
        hub.post("/v1/customers")
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

/// The number of customers stored, as the list endpoint sees them.
async fn customer_count(hub: &TestHub) -> usize {
    let reply = call(hub.get("/v1/customers?limit=1000")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["data"].as_array().map_or(0, Vec::len)
}

async fn unknown_top_level_field_is_named(hub: TestHub) {
    let reply = create(&hub, json!({"frist_name": "Ada", "last_name": "Lovelace"})).await;
    assert_invalid(&reply, &[("frist_name", "unknown_field")]);
    assert_eq!(customer_count(&hub).await, 0, "nothing was created");
}

async fn unknown_nested_address_field_is_named(hub: TestHub) {
    let reply = create(
        &hub,
        json!({"addresses": [{"title": "Home", "strete": "Main St 1"}]}),
    )
    .await;
    assert_invalid(&reply, &[("addresses[0].strete", "unknown_field")]);

    // Deeper in the list, the index is the one of the offending address.
    let reply = create(
        &hub,
        json!({"addresses": [{"title": "Home"}, {"title": "Work", "zip": "00100"}]}),
    )
    .await;
    assert_invalid(&reply, &[("addresses[1].zip", "unknown_field")]);
}

async fn several_unknown_fields_are_reported_together(hub: TestHub) {
    // Raw text, so that the fields arrive in this order: errors follow the body.
    let reply = create_raw(
        &hub,
        r#"{"frist_name": "Ada", "last_name": "Lovelace", "emial": "ada@example.com",
            "addresses": [{"title": "Home", "strete": "Main St 1"}]}"#,
    )
    .await;
    assert_invalid(
        &reply,
        &[
            ("frist_name", "unknown_field"),
            ("emial", "unknown_field"),
            ("addresses[0].strete", "unknown_field"),
        ],
    );
    assert_eq!(customer_count(&hub).await, 0);
}

async fn wrong_types_are_named(hub: TestHub) {
    let reply = create(
        &hub,
        json!({"addresses": [{"title": "Home", "country": 5}]}),
    )
    .await;
    assert_invalid(&reply, &[("addresses[0].country", "invalid_type")]);
    let message = reply.body["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        !message.contains("line"),
        "a field error names the field, not a position: {message}"
    );

    let reply = create(&hub, json!({"archived": "yes"})).await;
    assert_invalid(&reply, &[("archived", "invalid_type")]);

    let reply = create(&hub, json!({"discount_percent": "10"})).await;
    assert_invalid(&reply, &[("discount_percent", "invalid_type")]);

    let reply = create(&hub, json!({"tags": "vip"})).await;
    assert_invalid(&reply, &[("tags", "invalid_type")]);

    let reply = create(
        &hub,
        json!({"addresses": [{"title": "Home", "kind": "castle"}]}),
    )
    .await;
    assert_invalid(&reply, &[("addresses[0].kind", "invalid_type")]);

    // Well-formed JSON that serde_json calls a syntax error is still a field's fault: a
    // non-string where one of a set of words goes, a number beyond a double.
    let reply = create_raw(&hub, r#"{"addresses": [{"title": "Home", "kind": 5}]}"#).await;
    assert_invalid(&reply, &[("addresses[0].kind", "invalid_type")]);
    let reply = create_raw(&hub, r#"{"discount_percent": 1e400}"#).await;
    assert_invalid(&reply, &[("discount_percent", "invalid_type")]);
    let reply = call(
        hub.post("/v1/api-keys")
            .json(&json!({"name": "k", "role": null})),
    )
    .await;
    assert_invalid(&reply, &[("role", "invalid_type")]);
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "k1", "addresses": [{"title": "Home", "kind": 5}]}
        ]}))
        .await;
    let error = &reply.body["results"][0]["error"];
    assert_eq!(
        error["errors"][0]["field"], "addresses[0].kind",
        "{}",
        reply.body
    );
    let reply = hub.sync(&json!({"key": 5, "customers": []})).await;
    assert_invalid(&reply, &[("key", "invalid_type")]);
    assert_eq!(customer_count(&hub).await, 0);
}

async fn a_body_that_is_not_an_object_is_refused(hub: TestHub) {
    for body in ["[]", "[{\"first_name\": \"Ada\"}]", "\"Ada\"", "42", "null"] {
        let reply = create_raw(&hub, body).await;
        assert_invalid(&reply, &[("body", "invalid_type")]);
    }
    assert_eq!(customer_count(&hub).await, 0);
}

async fn malformed_json_is_a_bad_request(hub: TestHub) {
    for body in [
        "{",
        "{\"first_name\": }",
        "{\"first_name\": \"Ada\",}",
        "{\"first_name\": \"Ada\"} {}",
        "[1",
        "first_name=Ada",
    ] {
        let reply = create_raw(&hub, body).await;
        assert_problem(&reply, 400, "malformed_json");
    }
    // JSON is UTF-8: a body that is not is malformed as a whole, in a sync too (found in an
    // audit: 422 `invalid_type` for the field, and for a sync's item).
    let not_utf8 = b"{\"first_name\": \"\xff\xfe\"}".to_vec();
    let reply = call(
        hub.post("/v1/customers")
            .header("content-type", "application/json")
            .body(not_utf8),
    )
    .await;
    assert_problem(&reply, 400, "malformed_json");
    let sync = b"{\"key\": \"external_id\", \"customers\": [{\"external_id\": \"\xc3\"}]}".to_vec();
    let reply = call(
        hub.post("/v1/customers/sync")
            .header("content-type", "application/json")
            .body(sync),
    )
    .await;
    assert_problem(&reply, 400, "malformed_json");
    assert_eq!(customer_count(&hub).await, 0);
}

async fn an_empty_body_is_a_bad_request(hub: TestHub) {
    let reply = create_raw(&hub, "").await;
    assert_problem(&reply, 400, "malformed_json");
    let reply = create_raw(&hub, "  \n ").await;
    assert_problem(&reply, 400, "malformed_json");

    // The same on PATCH.
    let customer = hub.create_customer(json!({"first_name": "Ada"})).await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().unwrap_or(""));
    let reply = call(
        hub.patch(&path)
            .header("content-type", "application/json")
            .body(""),
    )
    .await;
    assert_problem(&reply, 400, "malformed_json");
}

async fn currency_must_be_iso_4217(hub: TestHub) {
    for currency in ["EURO", "XYZ", "EU", "€"] {
        let reply = create(&hub, json!({"currency": currency})).await;
        assert_invalid(&reply, &[("currency", "invalid_currency")]);
    }
    let customer = hub.create_customer(json!({"currency": "SEK"})).await;
    assert_eq!(customer["currency"], "SEK");
}

async fn country_must_be_iso_3166(hub: TestHub) {
    for country in ["UK", "XX", "FIN", "Finland"] {
        let reply = create(
            &hub,
            json!({"addresses": [{"title": "Home", "country": country}]}),
        )
        .await;
        assert_invalid(&reply, &[("addresses[0].country", "invalid_country")]);
    }
    let reply = create(
        &hub,
        json!({"addresses": [
            {"title": "Home", "country": "FI"},
            {"title": "Work", "country": "ZZ"},
        ]}),
    )
    .await;
    assert_invalid(&reply, &[("addresses[1].country", "invalid_country")]);

    let customer = hub
        .create_customer(json!({"addresses": [{"title": "Home", "country": "GB"}]}))
        .await;
    assert_eq!(customer["addresses"][0]["country"], "GB");
}

async fn discount_must_be_between_0_and_100(hub: TestHub) {
    for discount in [json!(-1), json!(100.01), json!(-0.001), json!(1000)] {
        let reply = create(&hub, json!({"discount_percent": discount})).await;
        assert_invalid(&reply, &[("discount_percent", "out_of_range")]);
    }
    assert_eq!(customer_count(&hub).await, 0);
    // Stored exactly as sent, to the last digit.
    for discount in [
        0.0,
        100.0,
        12.5,
        94.527_069_555_392_23,
        99.999_999_999_999_99,
    ] {
        let customer = hub
            .create_customer(json!({"discount_percent": discount}))
            .await;
        assert_eq!(customer["discount_percent"].as_f64(), Some(discount));
    }
}

async fn birthday_must_be_a_real_date(hub: TestHub) {
    for birthday in [
        "2023-02-29",
        "2024-13-01",
        "2024-04-31",
        "24-01-01",
        "2024-1-1",
        "01.02.2024",
        "yesterday",
    ] {
        let reply = create(&hub, json!({"birthday": birthday})).await;
        assert_invalid(&reply, &[("birthday", "invalid_date")]);
    }
    let customer = hub.create_customer(json!({"birthday": "2024-02-29"})).await;
    assert_eq!(customer["birthday"], "2024-02-29");
}

async fn email_must_be_plausible(hub: TestHub) {
    for email in [
        "not-an-email",
        "ada@",
        "@example.com",
        "ada@example",
        "a da@example.com",
    ] {
        let reply = create(&hub, json!({"email": email})).await;
        assert_invalid(&reply, &[("email", "invalid_email")]);
    }
    let customer = hub
        .create_customer(json!({"email": "Ada.Lovelace@Example.COM"}))
        .await;
    assert_eq!(
        customer["email"], "Ada.Lovelace@Example.COM",
        "stored as given"
    );
}

async fn unique_keys_must_not_be_empty(hub: TestHub) {
    for key in ["external_id", "email", "username"] {
        let reply = create(&hub, json!({ key: "" })).await;
        assert_invalid(&reply, &[(key, "empty")]);
    }
    let reply = create(&hub, json!({"external_id": "", "username": ""})).await;
    assert_invalid(&reply, &[("external_id", "empty"), ("username", "empty")]);
    assert_eq!(customer_count(&hub).await, 0);
}

async fn address_titles_must_be_unique(hub: TestHub) {
    let reply = create(
        &hub,
        json!({"addresses": [
            {"title": "Home", "city": "Helsinki"},
            {"title": "Home", "city": "Espoo"},
        ]}),
    )
    .await;
    assert_invalid(&reply, &[("addresses[1].title", "duplicate_title")]);

    // Merging two addresses with one title in one body is refused the same way.
    let customer = hub.create_customer(json!({"first_name": "Ada"})).await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().unwrap_or(""));
    let reply = call(hub.patch(&path).json(&json!({
        "addresses_mode": "merge",
        "addresses": [{"title": "Home"}, {"title": "Home"}],
    })))
    .await;
    assert_invalid(&reply, &[("addresses[1].title", "duplicate_title")]);
}

async fn address_remote_ids_must_be_unique(hub: TestHub) {
    let reply = create(
        &hub,
        json!({"addresses": [
            {"title": "Home", "remote_id": "a1"},
            {"title": "Work", "remote_id": "a1"},
        ]}),
    )
    .await;
    assert_invalid(&reply, &[("addresses[1].remote_id", "duplicate_remote_id")]);
    assert_eq!(customer_count(&hub).await, 0);
}

async fn an_address_needs_a_title(hub: TestHub) {
    let reply = create(&hub, json!({"addresses": [{"city": "Helsinki"}]})).await;
    assert_invalid(&reply, &[("addresses[0].title", "required")]);

    let reply = create(
        &hub,
        json!({"addresses": [{"title": "Home"}, {"title": null, "city": "Espoo"}]}),
    )
    .await;
    assert_invalid(&reply, &[("addresses[1].title", "required")]);

    let reply = create(&hub, json!({"addresses": [{"title": ""}]})).await;
    assert_invalid(&reply, &[("addresses[0].title", "empty")]);
    assert_eq!(customer_count(&hub).await, 0);
}

async fn merging_by_remote_id_needs_remote_ids(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"addresses": [{"title": "Home", "remote_id": "a1"}]}))
        .await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().unwrap_or(""));
    let reply = call(hub.patch(&path).json(&json!({
        "addresses_mode": "merge",
        "addresses_key": "remote_id",
        "addresses": [{"remote_id": "a1", "city": "Turku"}, {"title": "Work"}],
    })))
    .await;
    assert_invalid(&reply, &[("addresses[1].remote_id", "required")]);

    // With every remote_id given the same merge goes through.
    let reply = call(hub.patch(&path).json(&json!({
        "addresses_mode": "merge",
        "addresses_key": "remote_id",
        "addresses": [{"remote_id": "a1", "city": "Turku"}, {"title": "Work", "remote_id": "a2"}],
    })))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["addresses"][0]["title"], "Home");
    assert_eq!(reply.body["addresses"][0]["city"], "Turku");
    assert_eq!(reply.body["addresses"][1]["title"], "Work");
}

async fn unknown_groups_and_teams_are_refused(hub: TestHub) {
    // No group and no team exists yet: every code is unknown.
    let reply = create(&hub, json!({"groups": ["vip"]})).await;
    assert_invalid(&reply, &[("groups[0]", "unknown_group")]);
    let reply = create(
        &hub,
        json!({"groups": [{"code": "vip", "subscribed": true}]}),
    )
    .await;
    assert_invalid(&reply, &[("groups[0]", "unknown_group")]);
    let reply = create(&hub, json!({"add_groups": ["vip"]})).await;
    assert_invalid(&reply, &[("add_groups[0]", "unknown_group")]);
    let reply = create(&hub, json!({"teams": ["north"]})).await;
    assert_invalid(&reply, &[("teams[0]", "unknown_team")]);
    let reply = create(&hub, json!({"add_teams": ["north"]})).await;
    assert_invalid(&reply, &[("add_teams[0]", "unknown_team")]);
    let reply = create(&hub, json!({"groups": ["vip"], "teams": ["north"]})).await;
    assert_invalid(
        &reply,
        &[("teams[0]", "unknown_team"), ("groups[0]", "unknown_group")],
    );
    assert_eq!(customer_count(&hub).await, 0);
}

async fn text_has_a_maximum_length(hub: TestHub) {
    let reply = create(&hub, json!({"first_name": "a".repeat(1001)})).await;
    assert_invalid(&reply, &[("first_name", "too_long")]);
    // Characters, not bytes: 1000 two-byte characters are fine, 1001 are not.
    let reply = create(&hub, json!({"last_name": "é".repeat(1001)})).await;
    assert_invalid(&reply, &[("last_name", "too_long")]);
    let reply = create(
        &hub,
        json!({"addresses": [{"title": "Home", "line1": "x".repeat(1001)}]}),
    )
    .await;
    assert_invalid(&reply, &[("addresses[0].line1", "too_long")]);
    let reply = create(&hub, json!({"external_id": "k".repeat(256)})).await;
    assert_invalid(&reply, &[("external_id", "too_long")]);

    let customer = hub
        .create_customer(json!({"first_name": "a".repeat(1000), "last_name": "é".repeat(1000)}))
        .await;
    assert_eq!(customer["first_name"].as_str().map(str::len), Some(1000));
}

async fn a_weak_password_is_refused(hub: TestHub) {
    let reply = create(&hub, json!({"first_name": "Ada", "password": "short"})).await;
    assert_invalid(&reply, &[("password", "weak_password")]);
    let reply = create(&hub, json!({"password": "x".repeat(1025)})).await;
    assert_invalid(&reply, &[("password", "weak_password")]);
    assert_eq!(customer_count(&hub).await, 0);
    let customer = hub.create_customer(json!({"password": "12345678"})).await;
    assert_eq!(customer["has_password"], true);
}

async fn an_upsert_needs_its_key_in_the_body(hub: TestHub) {
    let reply = call(
        hub.post("/v1/customers?upsert=email")
            .json(&json!({"first_name": "Ada"})),
    )
    .await;
    assert_invalid(&reply, &[("email", "required")]);
    let reply = call(
        hub.post("/v1/customers?upsert=external_id")
            .json(&json!({"external_id": null, "email": "ada@example.com"})),
    )
    .await;
    assert_invalid(&reply, &[("external_id", "required")]);
    assert_eq!(customer_count(&hub).await, 0);
}

async fn an_unknown_upsert_key_is_refused(hub: TestHub) {
    let reply = call(
        hub.post("/v1/customers?upsert=nonsense")
            .json(&json!({"first_name": "Ada"})),
    )
    .await;
    assert_invalid(&reply, &[("upsert", "invalid_parameter")]);
    assert_eq!(customer_count(&hub).await, 0);
}

async fn put_body_key_must_match_the_path(hub: TestHub) {
    let reply = call(
        hub.put("/v1/customers/external_id/A")
            .json(&json!({"external_id": "B", "first_name": "Ada"})),
    )
    .await;
    assert_invalid(&reply, &[("external_id", "key_mismatch")]);
    let reply = call(
        hub.put("/v1/customers/external_id/A")
            .json(&json!({"external_id": null})),
    )
    .await;
    assert_invalid(&reply, &[("external_id", "key_mismatch")]);
    assert_eq!(customer_count(&hub).await, 0);

    // The same key in path and body is fine (emails compare case-insensitively).
    let reply = call(
        hub.put("/v1/customers/email/ada@example.com")
            .json(&json!({"email": "Ada@Example.com"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
}

async fn unknown_query_parameter_is_refused(hub: TestHub) {
    let reply = call(hub.get("/v1/customers?tags=x")).await;
    assert_invalid(&reply, &[("tags", "unknown_parameter")]);
    let reply = call(hub.get("/v1/customers?limit=10&lmit=5")).await;
    assert_invalid(&reply, &[("lmit", "unknown_parameter")]);
    let reply = call(
        hub.post("/v1/customers?upsret=email")
            .json(&json!({"email": "ada@example.com"})),
    )
    .await;
    assert_invalid(&reply, &[("upsret", "unknown_parameter")]);
    // Endpoints that take no parameters refuse any (found in an audit: a sync sent with
    // `?atomic=true` was applied item by item).
    let sync = json!({"key": "external_id", "customers": [{"external_id": "e1"}]});
    let reply = call(hub.post("/v1/customers/sync?atomic=true").json(&sync)).await;
    assert_invalid(&reply, &[("atomic", "unknown_parameter")]);
    // Credentials come first: without them the answer is 401, whatever the query.
    let anonymous = hub.client.post(hub.url("/v1/customers/sync?atomic=true"));
    assert_problem(&call(anonymous.json(&sync)).await, 401, "unauthorized");
    let reply = call(
        hub.put("/v1/customers/external_id/e1?upsert=email")
            .json(&json!({"first_name": "Ada"})),
    )
    .await;
    assert_invalid(&reply, &[("upsert", "unknown_parameter")]);
    let reply = call(hub.get("/v1/schema?version=2")).await;
    assert_invalid(&reply, &[("version", "unknown_parameter")]);
    // A parameter given twice is named.
    let reply = call(hub.get("/v1/customers?limit=1&limit=2")).await;
    assert_invalid(&reply, &[("limit", "invalid_parameter")]);
    // Bytes that are not UTF-8 are refused, not searched for as U+FFFD.
    for (path, field) in [
        ("/v1/customers?q=%FF", "q"),
        ("/v1/customers?limit=10&email=a%C3", "email"),
        ("/v1/changes?after=0&wait=%FE", "wait"),
    ] {
        let reply = call(hub.get(path)).await;
        assert_invalid(&reply, &[(field, "invalid_parameter")]);
    }
    assert_eq!(customer_count(&hub).await, 0);
}

async fn limit_must_be_between_1_and_1000(hub: TestHub) {
    for limit in ["0", "1001", "1000000"] {
        let reply = call(hub.get(&format!("/v1/customers?limit={limit}"))).await;
        assert_invalid(&reply, &[("limit", "out_of_range")]);
    }
    for limit in ["1", "1000"] {
        let reply = call(hub.get(&format!("/v1/customers?limit={limit}"))).await;
        assert_eq!(reply.status, 200, "limit={limit}: {}", reply.body);
    }
    let reply = call(hub.get("/v1/customers?limit=ten")).await;
    assert_invalid(&reply, &[("limit", "invalid_parameter")]);
    let reply = call(hub.get("/v1/customers?limit=-1")).await;
    assert_invalid(&reply, &[("limit", "invalid_parameter")]);
}

async fn sort_must_be_known(hub: TestHub) {
    for sort in ["name", "created", "+created_at", "-last_name", ""] {
        let reply = call(hub.get(&format!("/v1/customers?sort={sort}"))).await;
        assert_invalid(&reply, &[("sort", "invalid_sort")]);
    }
    for sort in [
        "created_at",
        "-created_at",
        "updated_at",
        "-updated_at",
        "last_name",
    ] {
        let reply = call(hub.get(&format!("/v1/customers?sort={sort}"))).await;
        assert_eq!(reply.status, 200, "sort={sort}: {}", reply.body);
    }
}

async fn a_garbage_cursor_is_refused(hub: TestHub) {
    // Not base64, base64 of not-JSON, base64 of JSON of the wrong shape, an empty cursor.
    for cursor in ["garbage!", "bm90IGpzb24", "eyJhIjoxfQ", ""] {
        let reply = call(hub.get(&format!("/v1/customers?cursor={cursor}"))).await;
        assert_invalid(&reply, &[("cursor", "invalid_cursor")]);
    }
}

async fn a_cursor_only_pages_its_own_sort(hub: TestHub) {
    hub.create_customer(json!({"last_name": "A"})).await;
    hub.create_customer(json!({"last_name": "B"})).await;
    let first = call(hub.get("/v1/customers?sort=created_at&limit=1")).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let cursor = first.body["next_cursor"]
        .as_str()
        .expect("a first page of 1 of 2 has a next cursor")
        .to_owned();

    let reply = call(hub.get(&format!(
        "/v1/customers?sort=updated_at&limit=1&cursor={cursor}"
    )))
    .await;
    assert_invalid(&reply, &[("cursor", "cursor_sort_mismatch")]);
    // The default order is created_at: the same cursor without `sort` is fine.
    let reply = call(hub.get(&format!("/v1/customers?limit=1&cursor={cursor}"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["data"][0]["last_name"], "B");
}

async fn a_rejected_write_changes_nothing(hub: TestHub) {
    let created = hub
        .create_customer(json!({
            "external_id": "P-1",
            "first_name": "Ada",
            "currency": "EUR",
            "addresses": [{"title": "Home", "country": "FI"}],
        }))
        .await;
    let id = created["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/customers/{id}");
    let before = call(hub.get(&path)).await;
    assert_eq!(before.status, 200);

    // A valid field next to an invalid one: neither is applied.
    let reply = call(hub.patch(&path).json(&json!({
        "first_name": "Grace",
        "currency": "XYZ",
    })))
    .await;
    assert_invalid(&reply, &[("currency", "invalid_currency")]);
    let reply = call(hub.patch(&path).json(&json!({
        "first_name": "Grace",
        "addresses": [{"title": "Home", "country": "XX"}],
    })))
    .await;
    assert_invalid(&reply, &[("addresses[0].country", "invalid_country")]);
    let reply = call(hub.patch(&path).json(&json!({
        "first_name": "Grace",
        "password": "short",
    })))
    .await;
    assert_invalid(&reply, &[("password", "weak_password")]);
    let reply = call(hub.patch(&path).json(&json!({
        "first_name": "Grace",
        "frist_name": "Grace",
    })))
    .await;
    assert_invalid(&reply, &[("frist_name", "unknown_field")]);
    let reply = call(
        hub.put("/v1/customers/external_id/P-1")
            .json(&json!({"first_name": "Grace", "birthday": "2023-02-29"})),
    )
    .await;
    assert_invalid(&reply, &[("birthday", "invalid_date")]);

    let after = call(hub.get(&path)).await;
    assert_eq!(after.status, 200);
    assert_eq!(
        after.body, before.body,
        "a rejected write changed the customer"
    );
    assert_eq!(after.body["version"], 1);
    assert_eq!(after.body["first_name"], "Ada");
    assert_eq!(after.header("etag"), Some("\"1\""));
}

async fn currency_and_country_are_normalised(hub: TestHub) {
    let customer = hub
        .create_customer(json!({
            "currency": "eur",
            "addresses": [{"title": "Home", "country": "fi"}],
        }))
        .await;
    assert_eq!(customer["currency"], "EUR");
    assert_eq!(customer["addresses"][0]["country"], "FI");
    let path = format!("/v1/customers/{}", customer["id"].as_str().unwrap_or(""));
    let stored = call(hub.get(&path)).await;
    assert_eq!(stored.body["currency"], "EUR");
    assert_eq!(stored.body["addresses"][0]["country"], "FI");

    // Writing the same code in lower case changes nothing.
    let reply = call(hub.patch(&path).json(&json!({"currency": "eur"}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["version"], 1);
    assert_eq!(reply.body["currency"], "EUR");
}

async fn blank_optional_strings_are_stored_as_null(hub: TestHub) {
    let customer = hub
        .create_customer(json!({
            "first_name": "Ada",
            "note": "",
            "company": "   ",
            "phone": "",
            "currency": "",
            "birthday": "",
            "addresses": [{"title": "Home", "city": "", "country": ""}],
        }))
        .await;
    for field in ["note", "company", "phone", "currency", "birthday"] {
        assert_eq!(customer[field], Value::Null, "{field}");
    }
    assert_eq!(customer["addresses"][0]["city"], Value::Null);
    assert_eq!(customer["addresses"][0]["country"], Value::Null);

    // Blanking a set value clears it.
    let path = format!("/v1/customers/{}", customer["id"].as_str().unwrap_or(""));
    let reply = call(hub.patch(&path).json(&json!({"note": "call first"}))).await;
    assert_eq!(reply.body["note"], "call first");
    assert_eq!(reply.body["version"], 2);
    let reply = call(hub.patch(&path).json(&json!({"note": ""}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["note"], Value::Null);
    assert_eq!(reply.body["version"], 3);
    let stored = call(hub.get(&path)).await;
    assert_eq!(stored.body["note"], Value::Null);
}

async fn name_is_derived_from_first_and_last_name(hub: TestHub) {
    let both = hub
        .create_customer(json!({"first_name": "Ada", "last_name": "Lovelace"}))
        .await;
    assert_eq!(both["name"], "Ada Lovelace");
    let first = hub.create_customer(json!({"first_name": "Ada"})).await;
    assert_eq!(first["name"], "Ada");
    let last = hub.create_customer(json!({"last_name": "Lovelace"})).await;
    assert_eq!(last["name"], "Lovelace");
    let none = hub.create_customer(json!({"company": "Acme"})).await;
    assert_eq!(none["name"], Value::Null);
    let given = hub
        .create_customer(json!({"first_name": "Ada", "last_name": "Lovelace", "name": "Countess"}))
        .await;
    assert_eq!(given["name"], "Countess");

    // A derived name follows the names it comes from; a given one stays.
    let path = format!("/v1/customers/{}", both["id"].as_str().unwrap_or(""));
    let reply = call(hub.patch(&path).json(&json!({"last_name": "King"}))).await;
    assert_eq!(reply.body["name"], "Ada King");
    let path = format!("/v1/customers/{}", given["id"].as_str().unwrap_or(""));
    let reply = call(hub.patch(&path).json(&json!({"last_name": "King"}))).await;
    assert_eq!(reply.body["name"], "Countess");
    // Clearing the given name derives it again.
    let reply = call(hub.patch(&path).json(&json!({"name": null}))).await;
    assert_eq!(reply.body["name"], "Ada King");
}

// PostgreSQL text cannot hold NUL while SQLite can: such input used to be a 500 on PostgreSQL
// only. It is refused (or names nothing) on both.

async fn text_must_not_contain_nul(hub: TestHub) {
    for field in [
        "first_name",
        "last_name",
        "company",
        "name",
        "note",
        "phone",
    ] {
        let reply = create(&hub, json!({ field: "a\u{0}b" })).await;
        assert_invalid(&reply, &[(field, "invalid_characters")]);
    }
    let reply = create(
        &hub,
        json!({"addresses": [{"title": "Home", "line1": "Main\u{0}St"}]}),
    )
    .await;
    assert_invalid(&reply, &[("addresses[0].line1", "invalid_characters")]);
    for key in ["external_id", "email", "username"] {
        let reply = create(&hub, json!({ key: "a\u{0}@example.com" })).await;
        assert_problem(&reply, 422, "validation_failed");
        assert_eq!(
            clientele_testkit::field_errors(&reply)[0],
            (key.to_owned(), "invalid_characters".to_owned())
        );
    }
    assert_eq!(customer_count(&hub).await, 0);

    // A note may have lines and tabs.
    let customer = hub
        .create_customer(json!({"last_name": "O'Brien", "note": "line 1\n\tline 2"}))
        .await;
    assert_eq!(customer["note"], "line 1\n\tline 2");
}

/// A tab, a line break or an escape sequence in a name breaks lists, labels and exports, and an
/// escape can drive the terminal that shows it: one-line text takes no control characters. A
/// note keeps its tabs and line breaks, and nothing else of the kind.
async fn one_line_text_must_not_contain_control_characters(hub: TestHub) {
    for (field, value) in [
        ("first_name", "Ada\tKing"),
        ("last_name", "King\r\n"),
        ("name", "\u{1b}[2JAda"),
        ("company", "Acme\u{7}"),
        ("phone", "+358\u{85}40"),
        ("note", "bell\u{7}"),
    ] {
        let reply = create(&hub, json!({ field: value })).await;
        assert_invalid(&reply, &[(field, "invalid_characters")]);
    }
    let reply = create(
        &hub,
        json!({"addresses": [{"title": "Home", "city": "Oulu\n"}]}),
    )
    .await;
    assert_invalid(&reply, &[("addresses[0].city", "invalid_characters")]);
    let reply = call(hub.post("/v1/customers/sync").json(&json!({
        "key": "external_id",
        "customers": [
            {"external_id": "tab", "first_name": "A\tB"},
            {"external_id": "ok", "first_name": "A B"},
        ],
    })))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let results = &reply.body["results"];
    assert_eq!(results[0]["status"], "failed");
    assert_eq!(results[0]["error"]["errors"][0]["field"], "first_name");
    assert_eq!(
        results[0]["error"]["errors"][0]["code"],
        "invalid_characters"
    );
    assert_eq!(results[1]["status"], "created");
    assert_eq!(customer_count(&hub).await, 1);
}

/// serde_json reads an integer past 64 bits as a double: stored, it would come back as another
/// number. Refused, with the field (and where in it) named.
async fn custom_numbers_beyond_64_bit_integers_are_refused(hub: TestHub) {
    let reply = create_raw(
        &hub,
        r#"{"last_name": "Big", "custom": {"account": 123456789012345678901234567890, "ok": 1}}"#,
    )
    .await;
    assert_invalid(&reply, &[("custom.account", "out_of_range")]);
    let reply = create_raw(
        &hub,
        r#"{"last_name": "Big", "custom": {"ids": [1, -18446744073709551616]}}"#,
    )
    .await;
    assert_invalid(&reply, &[("custom.ids[1]", "out_of_range")]);
    assert_eq!(customer_count(&hub).await, 0);
    // The whole range of 64-bit integers is kept exactly.
    let reply = create_raw(&hub, r#"{"last_name": "Big", "custom": {"max": 18446744073709551615, "min": -9223372036854775808}}"#).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap_or_default();
    let stored = call(hub.get(&format!("/v1/customers/{id}"))).await;
    assert_eq!(stored.body["custom"]["max"], json!(u64::MAX));
    assert_eq!(stored.body["custom"]["min"], json!(i64::MIN));
}

async fn key_values_with_control_characters_name_no_customer(hub: TestHub) {
    hub.create_customer(json!({"external_id": "a"})).await;
    for path in [
        "/v1/customers/external_id/a%00b",
        "/v1/customers/email/a%00%40example.com",
        "/v1/customers/username/a%0Ab",
    ] {
        assert_problem(&call(hub.get(path)).await, 404, "not_found");
        let reply = call(hub.patch(path).json(&json!({"note": "x"}))).await;
        assert_problem(&reply, 404, "not_found");
        assert_problem(&call(hub.delete(path)).await, 404, "not_found");
    }
    let reply = call(
        hub.put("/v1/customers/external_id/a%00b")
            .json(&json!({"first_name": "Ada"})),
    )
    .await;
    assert_invalid(&reply, &[("external_id", "invalid_characters")]);
    let reply = call(
        hub.post("/v1/customers?upsert=external_id")
            .json(&json!({"external_id": "a\u{0}b"})),
    )
    .await;
    assert_invalid(&reply, &[("external_id", "invalid_characters")]);
    let reply = call(
        hub.post("/v1/customers?upsert=email")
            .json(&json!({"email": ""})),
    )
    .await;
    assert_invalid(&reply, &[("email", "empty")]);
    assert_eq!(customer_count(&hub).await, 1);
}

async fn a_cursor_with_nul_is_refused(hub: TestHub) {
    hub.create_customer(json!({"last_name": "a"})).await;
    // base64url of {"o":"last_name","x":"a\u0000","i":"cus_01JD3Y6Q4X8K2M5N7P9R1T3V5W"}: the
    // shape of a real last_name cursor, with a NUL in its sort key.
    let forged = "eyJvIjoibGFzdF9uYW1lIiwieCI6ImFcdTAwMDAiLCJpIjoiY3VzXzAxSkQzWTZRNFg4SzJNNU43UDlSMVQzVjVXIn0";
    let reply = call(hub.get(&format!("/v1/customers?sort=last_name&cursor={forged}"))).await;
    assert_invalid(&reply, &[("cursor", "invalid_cursor")]);
    // The same cursor without the NUL is accepted.
    let clean =
        "eyJvIjoibGFzdF9uYW1lIiwieCI6ImEiLCJpIjoiY3VzXzAxSkQzWTZRNFg4SzJNNU43UDlSMVQzVjVXIn0";
    let reply = call(hub.get(&format!("/v1/customers?sort=last_name&cursor={clean}"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}
