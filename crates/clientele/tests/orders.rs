//! Orders over HTTP: create (customer by id or by external id), read, a customer's orders paged,
//! validation, and "a customer with orders cannot be deleted" on every delete path.

use clientele_domain::Role;
use clientele_testkit::{TestHub, assert_invalid, assert_problem, call, hub_tests};
use serde_json::{Value, json};

hub_tests!(
    an_order_is_created_read_and_listed,
    the_customer_may_be_given_by_external_id,
    invalid_orders_name_every_fault,
    an_unknown_customer_is_refused,
    orders_of_a_customer_page_without_repeats,
    a_customer_with_orders_cannot_be_deleted,
    sync_refuses_deleting_customers_with_orders_per_item,
    an_idempotent_order_is_created_once,
    reading_orders_needs_read_and_writing_needs_write,
    a_team_restricted_key_sees_only_orders_of_its_teams,
    orders_racing_deletes_never_leave_an_orphan,
);

async fn order(hub: &TestHub, body: Value) -> Value {
    let reply = call(hub.post("/v1/orders").json(&body)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

async fn an_order_is_created_read_and_listed(hub: TestHub) {
    let customer = hub.create_customer(json!({"external_id": "P-1"})).await;
    let id = customer["id"].as_str().expect("id");
    let reply = call(hub.post("/v1/orders").json(&json!({
        "reference": "SO-1001", "customer_id": id, "total": "19.90", "currency": "eur",
        "status": "paid", "placed_at": "2026-11-20T10:00:00Z"
    })))
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let created = reply.body;
    let order_id = created["id"].as_str().expect("order id");
    assert!(order_id.starts_with("ord_"));
    assert_eq!(
        reply.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/v1/orders/{order_id}").as_str())
    );
    assert_eq!(created["reference"], "SO-1001");
    assert_eq!(created["customer_id"], id);
    assert_eq!(created["total"], 19.9);
    assert_eq!(created["currency"], "EUR");
    assert_eq!(created["status"], "paid");
    assert!(
        created["placed_at"]
            .as_str()
            .expect("placed_at")
            .starts_with("2026-11-20T10:00:00")
    );
    assert!(created["created_at"].is_string());

    let read = call(hub.get(&format!("/v1/orders/{order_id}"))).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body, created);

    let list = call(hub.get(&format!("/v1/customers/{id}/orders"))).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["data"], json!([created]));
    assert_eq!(list.body["next_cursor"], Value::Null);

    for missing in [
        "/v1/orders/ord_01JD3Y6Q4X8K2M5N7P9R1T3V5W",
        "/v1/orders/nonsense",
    ] {
        assert_problem(&call(hub.get(missing)).await, 404, "not_found");
    }
    let missing = "/v1/customers/cus_01JD3Y6Q4X8K2M5N7P9R1T3V5W/orders";
    assert_problem(&call(hub.get(missing)).await, 404, "not_found");
}

async fn the_customer_may_be_given_by_external_id(hub: TestHub) {
    let customer = hub.create_customer(json!({"external_id": "P-7"})).await;
    let created = order(
        &hub,
        json!({"reference": "A", "customer": {"external_id": "P-7"}, "total": 5, "currency": "USD"}),
    )
    .await;
    assert_eq!(created["customer_id"], customer["id"]);
    assert_eq!(created["status"], "placed", "the default status");
    assert_eq!(created["total"], 5.0);
}

async fn invalid_orders_name_every_fault(hub: TestHub) {
    let reply = call(hub.post("/v1/orders").json(&json!({}))).await;
    assert_invalid(
        &reply,
        &[
            ("reference", "required"),
            ("customer_id", "required"),
            ("total", "required"),
            ("currency", "required"),
        ],
    );
    let customer = hub.create_customer(json!({"external_id": "P-1"})).await;
    let reply = call(hub.post("/v1/orders").json(&json!({
        "reference": "A", "customer_id": customer["id"], "total": -3, "currency": "EURO",
        "status": "Not A Code", "placed_at": "tomorrow"
    })))
    .await;
    assert_invalid(
        &reply,
        &[
            ("total", "invalid_total"),
            ("currency", "invalid_currency"),
            ("status", "invalid_status"),
            ("placed_at", "invalid_timestamp"),
        ],
    );
    let reply = call(hub.post("/v1/orders").json(&json!({
        "reference": "A", "customer_id": customer["id"], "total": 1, "currency": "EUR", "totl": 1
    })))
    .await;
    assert_problem(&reply, 422, "validation_failed");
    assert_eq!(reply.body["errors"][0]["field"], "totl");
    let reply = call(hub.post("/v1/orders").json(&json!({
        "reference": "A", "customer": {"external_id": "P-1", "extrnal": 1}, "total": 1, "currency": "EUR"
    })))
    .await;
    assert_problem(&reply, 422, "validation_failed");
    assert_eq!(reply.body["errors"][0]["field"], "customer.extrnal");
    // PostgreSQL's text cannot hold NUL: refused as input on both backends, never a 500.
    let reply = call(hub.post("/v1/orders").json(&json!({
        "reference": "A\u{0}", "customer": {"external_id": "P\u{0}"}, "total": 1, "currency": "EUR"
    })))
    .await;
    assert_invalid(
        &reply,
        &[
            ("reference", "invalid_characters"),
            ("customer.external_id", "invalid_characters"),
        ],
    );
    // A number with more decimals than allowed is refused as its string is, not rounded (found
    // in an audit: 19.99999999999999999 was stored as 20.0). The body is sent as written.
    let with_total = |total: &str| {
        let body = format!(
            r#"{{"reference": "A", "customer_id": {}, "total": {total}, "currency": "EUR"}}"#,
            customer["id"]
        );
        call(
            hub.post("/v1/orders")
                .header("content-type", "application/json")
                .body(body),
        )
    };
    for total in ["19.99999999999999999", "999999999999999.9999", "1.23456"] {
        assert_invalid(&with_total(total).await, &[("total", "invalid_total")]);
    }
    assert_eq!(hub.count_rows("orders").await, 0);
    let reply = with_total("19.9900").await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["total"], 19.99);
    // A fault elsewhere in a body is still named beside a total kept as written.
    let reply = call(hub.post("/v1/orders").json(&json!({
        "reference": 5, "customer_id": customer["id"], "total": 1.5, "currency": "EUR"
    })))
    .await;
    assert_invalid(&reply, &[("reference", "invalid_type")]);
}

async fn an_unknown_customer_is_refused(hub: TestHub) {
    let reply = call(hub.post("/v1/orders").json(&json!({
        "reference": "A", "customer_id": "cus_01JD3Y6Q4X8K2M5N7P9R1T3V5W", "total": 1, "currency": "EUR"
    })))
    .await;
    assert_invalid(&reply, &[("customer_id", "unknown_customer")]);
    let reply = call(hub.post("/v1/orders").json(&json!({
        "reference": "A", "customer": {"external_id": "nobody"}, "total": 1, "currency": "EUR"
    })))
    .await;
    assert_invalid(&reply, &[("customer.external_id", "unknown_customer")]);
    assert_eq!(hub.count_rows("orders").await, 0);
}

async fn orders_of_a_customer_page_without_repeats(hub: TestHub) {
    let customer = hub.create_customer(json!({"external_id": "P-1"})).await;
    let other = hub.create_customer(json!({"external_id": "P-2"})).await;
    let id = customer["id"].as_str().expect("id");
    let mut expected = Vec::new();
    for n in 0..7 {
        let created = order(
            &hub,
            json!({"reference": format!("R-{n}"), "customer_id": id, "total": n, "currency": "EUR"}),
        )
        .await;
        expected.push(created["id"].clone());
        order(
            &hub,
            json!({"reference": "X", "customer_id": other["id"], "total": 1, "currency": "EUR"}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut path = format!("/v1/customers/{id}/orders?limit=3");
    loop {
        let page = call(hub.get(&path)).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let data = page.body["data"].as_array().expect("data").clone();
        assert!(data.len() <= 3);
        seen.extend(data.iter().map(|o| o["id"].clone()));
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/customers/{id}/orders?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen, expected,
        "oldest first, every order once, only this customer's"
    );

    for bad in ["limit=0", "limit=1001", "cursor=garbage", "sort=id"] {
        let reply = call(hub.get(&format!("/v1/customers/{id}/orders?{bad}"))).await;
        assert_problem(&reply, 422, "validation_failed");
    }
}

async fn a_customer_with_orders_cannot_be_deleted(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"external_id": "P-1", "email": "p1@example.com"}))
        .await;
    let id = customer["id"].as_str().expect("id");
    order(
        &hub,
        json!({"reference": "A", "customer_id": id, "total": 1, "currency": "EUR"}),
    )
    .await;
    for path in [
        format!("/v1/customers/{id}"),
        "/v1/customers/external_id/P-1".to_owned(),
        "/v1/customers/email/p1@example.com".to_owned(),
    ] {
        let reply = call(hub.delete(&path)).await;
        assert_problem(&reply, 409, "customer_has_orders");
    }
    assert_eq!(
        call(hub.get(&format!("/v1/customers/{id}"))).await.status,
        200
    );

    // A customer without orders still goes.
    let free = hub.create_customer(json!({"external_id": "P-2"})).await;
    let reply = call(hub.delete(&format!(
        "/v1/customers/{}",
        free["id"].as_str().expect("id")
    )))
    .await;
    assert_eq!(reply.status, 204);
}

async fn sync_refuses_deleting_customers_with_orders_per_item(hub: TestHub) {
    let kept = hub.create_customer(json!({"external_id": "P-1"})).await;
    hub.create_customer(json!({"external_id": "P-2"})).await;
    order(
        &hub,
        json!({"reference": "A", "customer_id": kept["id"], "total": 1, "currency": "EUR"}),
    )
    .await;
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "P-1", "delete": true},
            {"external_id": "P-2", "delete": true},
            {"external_id": "P-3", "first_name": "New"},
        ]}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let results = reply.body["results"].as_array().expect("results");
    assert_eq!(results[0]["status"], "failed");
    assert_eq!(results[0]["error"]["code"], "customer_has_orders");
    assert_eq!(results[0]["error"]["status"], 409);
    assert_eq!(results[1]["status"], "deleted");
    assert_eq!(results[2]["status"], "created");
    assert_eq!(
        call(hub.get("/v1/customers/external_id/P-1")).await.status,
        200
    );
    assert_eq!(
        call(hub.get("/v1/customers/external_id/P-2")).await.status,
        404
    );

    // Atomic: the refused delete stops the whole batch.
    hub.create_customer(json!({"external_id": "P-4"})).await;
    let reply = hub
        .sync(&json!({"key": "external_id", "atomic": true, "customers": [
            {"external_id": "P-4", "delete": true},
            {"external_id": "P-1", "delete": true},
        ]}))
        .await;
    assert_problem(&reply, 422, "sync_failed");
    assert_eq!(
        call(hub.get("/v1/customers/external_id/P-4")).await.status,
        200
    );
}

async fn an_idempotent_order_is_created_once(hub: TestHub) {
    let customer = hub.create_customer(json!({"external_id": "P-1"})).await;
    let body =
        json!({"reference": "A", "customer_id": customer["id"], "total": 1, "currency": "EUR"});
    let first = call(
        hub.post("/v1/orders")
            .header("Idempotency-Key", "o-1")
            .json(&body),
    )
    .await;
    assert_eq!(first.status, 201);
    let again = call(
        hub.post("/v1/orders")
            .header("Idempotency-Key", "o-1")
            .json(&body),
    )
    .await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);
    assert_eq!(hub.count_rows("orders").await, 1);
}

async fn reading_orders_needs_read_and_writing_needs_write(hub: TestHub) {
    let customer = hub.create_customer(json!({"external_id": "P-1"})).await;
    let created = order(
        &hub,
        json!({"reference": "A", "customer_id": customer["id"], "total": 1, "currency": "EUR"}),
    )
    .await;
    let reader = hub.as_key(&hub.create_key(Role::Read).await);
    let path = format!("/v1/orders/{}", created["id"].as_str().expect("id"));
    assert_eq!(call(reader.get(&path)).await.status, 200);
    let reply = call(reader.post("/v1/orders").json(&json!({"reference": "B"}))).await;
    assert_problem(&reply, 403, "forbidden");
    let anonymous = hub.as_key("ck_not_a_key");
    assert_problem(&call(anonymous.get(&path)).await, 401, "unauthorized");
}

/// A write key restricted to `teams` (created through the API; the teams must exist).
async fn team_key(hub: &TestHub, teams: &[&str]) -> TestHub {
    let reply = call(hub.post("/v1/api-keys").json(&json!({
        "name": "team key", "role": "write", "teams": teams
    })))
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    hub.as_key(reply.body["secret"].as_str().expect("secret"))
}

async fn a_team_restricted_key_sees_only_orders_of_its_teams(hub: TestHub) {
    for team in ["north", "south"] {
        let reply = call(hub.put(&format!("/v1/teams/{team}")).json(&json!({}))).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let foreign = hub
        .create_customer(json!({"external_id": "F-1", "teams": ["south"]}))
        .await;
    let own = hub
        .create_customer(json!({"external_id": "O-1", "teams": ["north"]}))
        .await;
    let teamless = hub.create_customer(json!({"external_id": "T-1"})).await;
    let mut orders = Vec::new();
    for customer in [&foreign, &own, &teamless] {
        let created = order(
            &hub,
            json!({"reference": "A", "customer_id": customer["id"], "total": 1, "currency": "EUR"}),
        )
        .await;
        orders.push(format!(
            "/v1/orders/{}",
            created["id"].as_str().expect("id")
        ));
    }
    let north = team_key(&hub, &["north"]).await;

    // Its own customer's orders: readable, listable, and it may order for it.
    assert_eq!(call(north.get(&orders[1])).await.status, 200);
    let own_id = own["id"].as_str().expect("id");
    let list = call(north.get(&format!("/v1/customers/{own_id}/orders"))).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.body["data"].as_array().map(Vec::len), Some(1));
    let reply = call(north.post("/v1/orders").json(&json!({
        "reference": "B", "customer": {"external_id": "O-1"}, "total": 2, "currency": "EUR"
    })))
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);

    // Everything outside its teams does not exist for it.
    for (customer, path) in [(&foreign, &orders[0]), (&teamless, &orders[2])] {
        assert_problem(&call(north.get(path)).await, 404, "not_found");
        let id = customer["id"].as_str().expect("id");
        let list = format!("/v1/customers/{id}/orders");
        assert_problem(&call(north.get(&list)).await, 404, "not_found");
        let reply = call(north.post("/v1/orders").json(&json!({
            "reference": "B", "customer_id": id, "total": 1, "currency": "EUR"
        })))
        .await;
        assert_invalid(&reply, &[("customer_id", "unknown_customer")]);
    }
    let reply = call(north.post("/v1/orders").json(&json!({
        "reference": "B", "customer": {"external_id": "F-1"}, "total": 1, "currency": "EUR"
    })))
    .await;
    assert_invalid(&reply, &[("customer.external_id", "unknown_customer")]);
    assert_eq!(hub.count_rows("orders").await, 4);
    // The unrestricted key still sees them all.
    for path in &orders {
        assert_eq!(call(hub.get(path)).await.status, 200);
    }
}

/// An order and a delete of its customer racing: either the order is stored and the delete is
/// refused, or the delete wins and the order is refused as for an unknown customer. Never an
/// order without its customer, never a 500.
async fn orders_racing_deletes_never_leave_an_orphan(hub: TestHub) {
    let mut ids = Vec::new();
    for n in 0..20 {
        let customer = hub
            .create_customer(json!({"external_id": format!("R-{n}")}))
            .await;
        ids.push(customer["id"].as_str().expect("id").to_owned());
    }
    let races = ids.iter().enumerate().map(|(n, id)| {
        let hub = &hub;
        async move {
            let order = call(hub.post("/v1/orders").json(&json!({
                "reference": "race", "customer_id": id, "total": 1, "currency": "EUR"
            })));
            let delete = async {
                if n % 2 == 0 {
                    call(hub.delete(&format!("/v1/customers/{id}"))).await
                } else {
                    hub.sync(&json!({"key": "external_id",
                                     "customers": [{"external_id": format!("R-{n}"), "delete": true}]}))
                        .await
                }
            };
            let (order, delete) = tokio::join!(order, delete);
            (id, order, delete)
        }
    });
    for (id, order, delete) in futures::future::join_all(races).await {
        let deleted = match delete.status {
            204 => true,
            409 => false,
            200 => delete.body["results"][0]["status"] == "deleted",
            other => panic!("delete answered {other}: {}", delete.body),
        };
        let exists = call(hub.get(&format!("/v1/customers/{id}"))).await.status == 200;
        assert_eq!(exists, !deleted);
        if deleted {
            assert_invalid(&order, &[("customer_id", "unknown_customer")]);
        } else {
            assert_eq!(order.status, 201, "{}", order.body);
        }
    }
}
