//! Tags over HTTP, on SQLite and PostgreSQL: `GET /v1/tags` counts, kept exact by every write
//! path (create, patch, upsert, sync, delete), and the `tag` list filter combined with others.

use clientele_testkit::{TestHub, call, hub_tests};
use serde_json::{Value, json};

hub_tests!(
    tag_counts_follow_every_write_path,
    tag_counts_page_by_tag,
    the_tag_filter_combines_with_the_others_and_pages,
);

async fn counts(hub: &TestHub) -> Value {
    let reply = call(hub.get("/v1/tags")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["next_cursor"], Value::Null);
    json!({"data": reply.body["data"]})
}

async fn tag_counts_follow_every_write_path(hub: TestHub) {
    assert_eq!(counts(&hub).await, json!({"data": []}));
    let a = hub
        .create_customer(json!({"external_id": "a", "tags": ["vip", "b2b"]}))
        .await;
    hub.create_customer(json!({"external_id": "b", "tags": ["vip"]}))
        .await;
    assert_eq!(
        counts(&hub).await,
        json!({"data": [{"tag": "b2b", "count": 1}, {"tag": "vip", "count": 2}]})
    );
    let id = a["id"].as_str().expect("id");
    let reply = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"add_tags": ["new"], "remove_tags": ["vip"]})),
    )
    .await;
    assert_eq!(reply.status, 200);
    let reply = call(
        hub.put("/v1/customers/external_id/c")
            .json(&json!({"tags": ["new"]})),
    )
    .await;
    assert_eq!(reply.status, 201);
    assert_eq!(
        counts(&hub).await,
        json!({"data": [
            {"tag": "b2b", "count": 1}, {"tag": "new", "count": 2}, {"tag": "vip", "count": 1}
        ]})
    );
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "a", "tags": null},
            {"external_id": "b", "add_tags": ["new"]},
            {"external_id": "d", "tags": ["vip"]},
            {"external_id": "c", "delete": true},
        ]}))
        .await;
    assert_eq!(reply.body["summary"]["failed"], 0, "{}", reply.body);
    assert_eq!(
        counts(&hub).await,
        json!({"data": [{"tag": "new", "count": 1}, {"tag": "vip", "count": 2}]})
    );
    assert_eq!(
        call(hub.delete("/v1/customers/external_id/b")).await.status,
        204
    );
    assert_eq!(
        counts(&hub).await,
        json!({"data": [{"tag": "vip", "count": 1}]})
    );
    // Updates that keep the tags keep the rows; a customer without tags may gain some.
    hub.create_customer(json!({"external_id": "plain"})).await;
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "d", "note": "tags untouched"},
            {"external_id": "plain", "add_tags": ["vip"]},
        ]}))
        .await;
    assert_eq!(reply.body["summary"]["updated"], 2, "{}", reply.body);
    assert_eq!(
        counts(&hub).await,
        json!({"data": [{"tag": "vip", "count": 2}]})
    );
    assert_eq!(
        call(hub.delete("/v1/customers/external_id/plain"))
            .await
            .status,
        204
    );
    // An atomic batch that fails writes no membership rows either.
    let reply = hub
        .sync(&json!({"key": "external_id", "atomic": true, "customers": [
            {"external_id": "e", "tags": ["lost"]},
            {"external_id": "f", "currency": "nope"},
        ]}))
        .await;
    assert_eq!(reply.status, 422);
    assert_eq!(hub.count_rows("customer_tags").await, 1);
}

async fn the_tag_filter_combines_with_the_others_and_pages(hub: TestHub) {
    let reply = call(hub.put("/v1/teams/t").json(&json!({}))).await;
    assert_eq!(reply.status, 201);
    let reply = call(hub.put("/v1/groups/g").json(&json!({}))).await;
    assert_eq!(reply.status, 201);
    for i in 0..12 {
        let mut body =
            json!({"external_id": format!("{i:02}"), "last_name": format!("N{}", 12 - i)});
        if i % 2 == 0 {
            body["tags"] = json!(["even"]);
        }
        if i % 3 == 0 {
            body["teams"] = json!(["t"]);
        }
        if i % 4 == 0 {
            body["groups"] = json!(["g"]);
        }
        hub.create_customer(body).await;
    }
    let ids = |query: String| {
        let request = hub.get(&format!("/v1/customers?{query}"));
        async move {
            let reply = call(request).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            let ids: Vec<String> = reply.body["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|c| c["external_id"].as_str().expect("id").to_owned())
                .collect();
            (ids, reply.body["next_cursor"].as_str().map(str::to_owned))
        }
    };
    assert_eq!(ids("tag=even&team=t".into()).await.0, ["00", "06"]);
    assert_eq!(ids("tag=even&group=g&team=t".into()).await.0, ["00"]);
    assert_eq!(ids("tag=odd".into()).await.0, Vec::<String>::new());
    for sort in ["created_at", "-updated_at", "last_name"] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = format!("tag=even&limit=2&sort={sort}");
            if let Some(c) = &cursor {
                query.push_str(&format!("&cursor={c}"));
            }
            let (page, next) = ids(query).await;
            assert!(page.len() <= 2);
            seen.extend(page);
            match next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen, ["00", "02", "04", "06", "08", "10"], "sort {sort}");
    }
}

async fn tag_counts_page_by_tag(hub: TestHub) {
    let tags: Vec<String> = (0..7).map(|i| format!("t{i}")).collect();
    hub.create_customer(json!({"external_id": "a", "tags": tags}))
        .await;
    hub.create_customer(json!({"external_id": "b", "tags": ["t3"]}))
        .await;
    let mut seen = Vec::new();
    let mut path = "/v1/tags?limit=3".to_owned();
    loop {
        let reply = call(hub.get(&path)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let data = reply.body["data"].as_array().expect("data");
        assert!(data.len() <= 3);
        seen.extend(data.iter().map(|t| (t["tag"].clone(), t["count"].clone())));
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/tags?limit=3&cursor={cursor}"),
            None => break,
        }
    }
    let expected: Vec<(Value, Value)> = (0..7)
        .map(|i| (json!(format!("t{i}")), json!(if i == 3 { 2 } else { 1 })))
        .collect();
    assert_eq!(seen, expected);
    for query in ["limit=0", "limit=1001", "cursor=%21%21", "colour=red"] {
        let reply = call(hub.get(&format!("/v1/tags?{query}"))).await;
        assert_eq!(reply.status, 422, "{query}: {}", reply.body);
    }
}
