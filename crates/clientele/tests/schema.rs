//! The customer schema over HTTP: `GET/PUT /v1/schema`, `required_on_create`, typed custom
//! fields checked on every write path (create, upsert, PATCH, PUT by key, sync items), and
//! stored customers left as they were when the schema changes (a field re-sent as stored is not
//! checked again).

use clientele_api::ApiConfig;
use clientele_domain::Role;
use clientele_testkit::{Backend, TestHub, assert_invalid, assert_problem, call, hub_tests};
use serde_json::{Value, json};

hub_tests!(
    the_schema_is_empty_until_set_and_reads_back,
    an_invalid_schema_is_refused_with_paths,
    only_admins_change_the_schema,
    required_fields_apply_to_creates_only,
    custom_fields_are_checked_on_every_write_path,
    stored_customers_are_not_revalidated,
    another_hub_process_sees_the_new_schema_at_once,
    a_schema_change_and_the_writes_checked_against_it_do_not_overlap,
);

fn example() -> Value {
    json!({
        "required_on_create": ["currency"],
        "custom_fields": {
            "loyalty_tier": {"type": "enum", "values": ["gold", "silver"]},
            "points": {"type": "integer", "min": 0},
            "nick": {"type": "string", "max_length": 5},
            "vip": {"type": "boolean"},
            "since": {"type": "date"},
            "ratio": {"type": "number", "min": 0, "max": 1}
        }
    })
}

async fn put_schema(hub: &TestHub, schema: &Value) {
    let reply = call(hub.put("/v1/schema").json(schema)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

async fn the_schema_is_empty_until_set_and_reads_back(hub: TestHub) {
    let reply = call(hub.get("/v1/schema")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.body,
        json!({"required_on_create": [], "custom_fields": {}})
    );
    let reply = call(hub.put("/v1/schema").json(&example())).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, example());
    let reply = call(hub.get("/v1/schema")).await;
    assert_eq!(reply.body, example());
    // A schema is replaced whole.
    put_schema(&hub, &json!({})).await;
    let reply = call(hub.get("/v1/schema")).await;
    assert_eq!(
        reply.body,
        json!({"required_on_create": [], "custom_fields": {}})
    );
}

async fn an_invalid_schema_is_refused_with_paths(hub: TestHub) {
    let reply = call(hub.put("/v1/schema").json(&json!({
        "required_on_create": ["currency", "shoe_size"],
        "custom_fields": {"points": {"type": "integer", "min": "zero"}, "tier": {"type": "enum"}},
        "version": 2
    })))
    .await;
    assert_invalid(
        &reply,
        &[
            ("version", "unknown_field"),
            ("custom_fields.points.min", "invalid_type"),
            ("custom_fields.tier.values", "invalid_values"),
            ("required_on_create[1]", "unknown_field"),
        ],
    );
    let reply = call(
        hub.put("/v1/schema")
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_problem(&reply, 400, "malformed_json");
    // Found in an audit: 1,001 values were refused as "not distinct", and the cap was named
    // nowhere.
    let values: Vec<String> = (0..1001).map(|i| format!("v{i}")).collect();
    let reply = call(hub.put("/v1/schema").json(&json!({
        "custom_fields": {"e": {"type": "enum", "values": values}}
    })))
    .await;
    assert_invalid(&reply, &[("custom_fields.e.values", "too_many")]);
    assert!(
        reply.body["errors"][0]["message"]
            .as_str()
            .is_some_and(|message| message.contains("1000")),
        "{}",
        reply.body
    );
    let reply = call(hub.get("/v1/schema")).await;
    assert_eq!(reply.body["custom_fields"], json!({}), "nothing was stored");
}

async fn only_admins_change_the_schema(hub: TestHub) {
    let writer = hub.as_key(&hub.create_key(Role::Write).await);
    assert_problem(
        &call(writer.put("/v1/schema").json(&example())).await,
        403,
        "forbidden",
    );
    assert_eq!(call(writer.get("/v1/schema")).await.status, 200);
}

async fn required_fields_apply_to_creates_only(hub: TestHub) {
    put_schema(
        &hub,
        &json!({"required_on_create": ["currency", "email", "custom.tier"],
                "custom_fields": {"tier": {"type": "string"}}}),
    )
    .await;
    let reply = call(
        hub.post("/v1/customers")
            .json(&json!({"external_id": "P-1"})),
    )
    .await;
    assert_invalid(
        &reply,
        &[
            ("currency", "required"),
            ("email", "required"),
            ("custom.tier", "required"),
        ],
    );
    let full = json!({"external_id": "P-1", "currency": "EUR", "email": "p@example.com",
                      "custom": {"tier": "a"}});
    let created = hub.create_customer(full).await;
    let id = created["id"].as_str().expect("id");
    // Updates need none of them, and may even clear them.
    let reply = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"currency": null})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // An upsert that creates needs them; one that updates does not.
    let reply = call(
        hub.put("/v1/customers/external_id/P-2")
            .json(&json!({"first_name": "X"})),
    )
    .await;
    assert_problem(&reply, 422, "validation_failed");
    let reply = call(
        hub.put("/v1/customers/external_id/P-1")
            .json(&json!({"first_name": "X"})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A sync item that creates fails alone.
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "P-3"},
            {"external_id": "P-1", "last_name": "Y"}
        ]}))
        .await;
    assert_eq!(reply.body["results"][0]["status"], "failed");
    assert_eq!(
        reply.body["results"][0]["error"]["errors"][0]["code"],
        "required"
    );
    assert_eq!(reply.body["results"][1]["status"], "updated");
}

async fn custom_fields_are_checked_on_every_write_path(hub: TestHub) {
    put_schema(&hub, &json!({"custom_fields": example()["custom_fields"]})).await;
    let bad = json!({"loyalty_tier": "bronze", "points": -1, "nick": "too long", "vip": "yes",
                     "since": "2026-13-01", "ratio": 2, "undeclared": 1});
    let expected = [
        ("custom.loyalty_tier", "invalid_value"),
        ("custom.nick", "too_long"),
        ("custom.points", "out_of_range"),
        ("custom.ratio", "out_of_range"),
        ("custom.since", "invalid_date"),
        ("custom.undeclared", "unknown_custom_field"),
        ("custom.vip", "invalid_type"),
    ];
    let reply = call(
        hub.post("/v1/customers")
            .json(&json!({"external_id": "P-1", "custom": bad})),
    )
    .await;
    assert_invalid(&reply, &expected);

    let good = json!({"loyalty_tier": "gold", "points": 10, "nick": "abc", "vip": true,
                      "since": "2024-02-29", "ratio": 0.5});
    let created = hub
        .create_customer(json!({"external_id": "P-1", "custom": good}))
        .await;
    assert_eq!(created["custom"], good);
    let id = created["id"].as_str().expect("id");

    let reply = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"custom": bad})),
    )
    .await;
    assert_invalid(&reply, &expected);
    let reply = call(
        hub.put("/v1/customers/external_id/P-1")
            .json(&json!({"custom": bad})),
    )
    .await;
    assert_invalid(&reply, &expected);
    let reply = call(
        hub.post("/v1/customers?upsert=external_id")
            .json(&json!({"external_id": "P-1", "custom": bad})),
    )
    .await;
    assert_invalid(&reply, &expected);
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": [{"external_id": "P-1", "custom": bad}]}))
        .await;
    assert_eq!(reply.body["results"][0]["status"], "failed");
    assert_eq!(
        reply.body["results"][0]["error"]["errors"]
            .as_array()
            .map(Vec::len),
        Some(7)
    );

    let read = call(hub.get(&format!("/v1/customers/{id}"))).await;
    assert_eq!(read.body["custom"], good, "nothing bad was stored");
    assert_eq!(read.body["version"], 1);
}

async fn stored_customers_are_not_revalidated(hub: TestHub) {
    let created = hub
        .create_customer(json!({"external_id": "P-1", "custom": {"legacy": "x"}}))
        .await;
    put_schema(
        &hub,
        &json!({"required_on_create": ["email"],
                             "custom_fields": {"points": {"type": "integer"}}}),
    )
    .await;
    let id = created["id"].as_str().expect("id");
    let read = call(hub.get(&format!("/v1/customers/{id}"))).await;
    assert_eq!(read.body["custom"], json!({"legacy": "x"}));
    // A write that leaves `custom` alone goes through; one that writes it is checked.
    let reply = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"first_name": "A"})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let version = reply.body["version"].clone();
    let reply = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"custom": {"legacy": "y"}})),
    )
    .await;
    assert_invalid(&reply, &[("custom.legacy", "unknown_custom_field")]);
    // A field sent as stored is not checked again: re-sending the customer unchanged is
    // unchanged, not refused (found in an audit: a sync agent re-sending whole records failed
    // once the schema was tightened). A field beside it that changes is checked.
    for path in [
        format!("/v1/customers/{id}"),
        "/v1/customers/external_id/P-1".to_owned(),
    ] {
        let reply = call(hub.patch(&path).json(&json!({"custom": {"legacy": "x"}}))).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["version"], version);
    }
    let sync = json!({"key": "external_id", "customers": [{"external_id": "P-1", "custom": {"legacy": "x"}}]});
    let reply = call(hub.post("/v1/customers/sync").json(&sync)).await;
    assert_eq!(
        reply.body["results"][0]["status"], "unchanged",
        "{}",
        reply.body
    );
    let reply = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"custom": {"legacy": "x", "points": "many"}})),
    )
    .await;
    assert_invalid(&reply, &[("custom.points", "invalid_type")]);
}

async fn another_hub_process_sees_the_new_schema_at_once(hub: TestHub) {
    let other = hub.another_process(ApiConfig::default()).await;
    // Warm the other process up with a write before the schema exists.
    other
        .create_customer(json!({"external_id": "P-0", "custom": {"x": 1}}))
        .await;
    put_schema(
        &hub,
        &json!({"custom_fields": {"points": {"type": "integer"}}}),
    )
    .await;
    let reply = call(
        other
            .post("/v1/customers")
            .json(&json!({"external_id": "P-1", "custom": {"x": 1}})),
    )
    .await;
    assert_invalid(&reply, &[("custom.x", "unknown_custom_field")]);
}

/// The advisory lock of `clientele_store::schema_store` (`'clsc'`).
const SCHEMA_LOCK: i64 = 0x636c_7363;

/// PostgreSQL (SQLite's writers take turns): a schema change waits for the writes that read
/// the schema in force, and writes wait for a schema change. Found in a review: a create could
/// read the schema, a newly required field be set and answered, and the create commit after it
/// without the field. The hub's own transactions are stood in for by ones holding the lock as
/// they do.
async fn a_schema_change_and_the_writes_checked_against_it_do_not_overlap(hub: TestHub) {
    if hub.backend != Backend::Postgres {
        return;
    }
    let pool = sqlx::PgPool::connect(&hub.database_url)
        .await
        .expect("the hub's database");
    let pending = std::time::Duration::from_millis(300);

    let write = holding_schema_lock(&pool, "pg_advisory_xact_lock_shared").await;
    let change = tokio::spawn(call(
        hub.put("/v1/schema")
            .json(&json!({"required_on_create": ["currency"]})),
    ));
    tokio::time::sleep(pending).await;
    assert!(!change.is_finished(), "the change waits for the write");
    write.commit().await.expect("commit");
    assert_eq!(change.await.expect("join").status, 200);

    let change = holding_schema_lock(&pool, "pg_advisory_xact_lock").await;
    let create = tokio::spawn(call(
        hub.post("/v1/customers")
            .json(&json!({"first_name": "Waits", "currency": "EUR"})),
    ));
    tokio::time::sleep(pending).await;
    assert!(!create.is_finished(), "the write waits for the change");
    change.commit().await.expect("commit");
    let created = create.await.expect("join");
    assert_eq!(created.status, 201, "{}", created.body);
    // And a write reads the schema committed before it: the currency is required now.
    let refused = call(
        hub.post("/v1/customers")
            .json(&json!({"first_name": "No currency"})),
    )
    .await;
    assert_invalid(&refused, &[("currency", "required")]);
}

/// A transaction holding the schema lock, taken with `function` (shared or alone).
async fn holding_schema_lock(
    pool: &sqlx::PgPool,
    function: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(&format!("SELECT {function}($1)"))
        .bind(SCHEMA_LOCK)
        .execute(&mut *tx)
        .await
        .expect("lock");
    tx
}
