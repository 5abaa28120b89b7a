//! Groups over HTTP, on SQLite and PostgreSQL: upsert, read, list and delete; codes; the
//! hierarchy (unknown parents, cycles, deleting groups with subgroups or members); bulk group
//! sync; customer memberships on every write path; and the `group` list filter.

use clientele_testkit::{TestHub, assert_invalid, assert_problem, call, hub_tests};
use serde_json::{Value, json};

hub_tests!(
    a_group_is_created_read_changed_listed_and_deleted,
    group_codes_and_bodies_are_validated,
    parents_must_exist_and_never_make_a_cycle,
    a_group_with_subgroups_or_members_is_not_deleted,
    group_sync_applies_items_in_order_with_a_result_each,
    memberships_take_the_group_default_or_an_explicit_subscription,
    memberships_change_on_every_write_path,
    unknown_groups_are_refused_everywhere,
    the_group_filter_lists_members_and_optionally_subgroups,
    concurrent_re_parentings_never_make_a_cycle,
    group_writes_are_idempotent_with_a_key,
);

pub async fn put_group(hub: &TestHub, code: &str, body: Value) -> Value {
    let reply = call(hub.put(&format!("/v1/groups/{code}")).json(&body)).await;
    assert!(
        reply.status == 201 || reply.status == 200,
        "PUT group {code}: {} {}",
        reply.status,
        reply.body
    );
    reply.body
}

fn external_ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|c| c["external_id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn a_group_is_created_read_changed_listed_and_deleted(hub: TestHub) {
    let body = json!({"title": "VIP", "description": "Best customers",
                      "subscribable": true, "subscribe_text": "Join the club"});
    let created = call(hub.put("/v1/groups/vip").json(&body)).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.header("location"), Some("/v1/groups/vip"));
    let group = &created.body;
    for (field, value) in body.as_object().expect("object") {
        assert_eq!(&group[field], value, "{field}");
    }
    assert_eq!(group["code"], "vip");
    assert_eq!(group["parent"], Value::Null);
    assert!(group["created_at"].is_string() && group["updated_at"].is_string());

    let again = call(hub.put("/v1/groups/vip").json(&body)).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, *group, "an equal write changes nothing");

    // Absent keeps, null clears.
    let changed = call(
        hub.put("/v1/groups/vip")
            .json(&json!({"title": "V.I.P.", "description": null})),
    )
    .await;
    assert_eq!(changed.status, 200);
    assert_eq!(changed.body["title"], "V.I.P.");
    assert_eq!(changed.body["description"], Value::Null);
    assert_eq!(changed.body["subscribable"], true);
    assert_eq!(changed.body["subscribe_text"], "Join the club");
    assert_eq!(changed.body["created_at"], group["created_at"]);

    let read = call(hub.get("/v1/groups/vip")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.body, changed.body);

    put_group(&hub, "internal", json!({})).await;
    let list = call(hub.get("/v1/groups")).await;
    assert_eq!(list.status, 200);
    let codes: Vec<&str> = list.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|g| g["code"].as_str().expect("code"))
        .collect();
    assert_eq!(codes, ["internal", "vip"]);
    assert_eq!(
        list.body["data"][0]["subscribable"], false,
        "internal by default"
    );

    let deleted = call(hub.delete("/v1/groups/vip")).await;
    assert_eq!(deleted.status, 204);
    assert_problem(&call(hub.get("/v1/groups/vip")).await, 404, "not_found");
    assert_problem(&call(hub.delete("/v1/groups/vip")).await, 404, "not_found");
}

async fn group_codes_and_bodies_are_validated(hub: TestHub) {
    let long = "x".repeat(65);
    for code in ["bad%20code", "%C3%A4", long.as_str()] {
        let reply = call(hub.put(&format!("/v1/groups/{code}")).json(&json!({}))).await;
        assert_invalid(&reply, &[("code", "invalid_code")]);
    }
    for path in ["/v1/groups/a%00b", "/v1/groups/no%20space"] {
        let reply = call(hub.put(path).json(&json!({}))).await;
        assert_invalid(&reply, &[("code", "invalid_code")]);
        assert_problem(&call(hub.get(path)).await, 404, "not_found");
        assert_problem(&call(hub.delete(path)).await, 404, "not_found");
    }
    let reply = call(
        hub.post("/v1/groups/sync")
            .json(&json!({"groups": [{"code": "a\u{0}b"}, {"code": "ok", "parent": "a\u{0}b"}]})),
    )
    .await;
    assert_eq!(reply.body["summary"]["failed"], 2, "{}", reply.body);
    let reply = call(hub.put("/v1/groups/vip").json(&json!({"code": "other"}))).await;
    assert_invalid(&reply, &[("code", "code_mismatch")]);
    let reply = call(hub.put("/v1/groups/vip").json(&json!({"titel": "typo"}))).await;
    assert_invalid(&reply, &[("titel", "unknown_field")]);
    let reply = call(
        hub.put("/v1/groups/vip")
            .json(&json!({"subscribable": "yes"})),
    )
    .await;
    assert_invalid(&reply, &[("subscribable", "invalid_type")]);
    let reply = call(hub.put("/v1/groups/vip").json(&json!({"title": "a\u{0}b"}))).await;
    assert_invalid(&reply, &[("title", "invalid_characters")]);
    assert_problem(&call(hub.get("/v1/groups/vip")).await, 404, "not_found");

    // The read role reads groups but does not write them.
    let reader = hub.as_key(&hub.create_key(clientele_domain::Role::Read).await);
    put_group(&hub, "vip", json!({})).await;
    assert_eq!(call(reader.get("/v1/groups/vip")).await.status, 200);
    assert_eq!(call(reader.get("/v1/groups")).await.status, 200);
    assert_problem(
        &call(reader.put("/v1/groups/vip").json(&json!({}))).await,
        403,
        "forbidden",
    );
    assert_problem(
        &call(reader.delete("/v1/groups/vip")).await,
        403,
        "forbidden",
    );
    assert_problem(
        &call(reader.post("/v1/groups/sync").json(&json!({"groups": []}))).await,
        403,
        "forbidden",
    );
}

async fn parents_must_exist_and_never_make_a_cycle(hub: TestHub) {
    let reply = call(hub.put("/v1/groups/a").json(&json!({"parent": "missing"}))).await;
    assert_invalid(&reply, &[("parent", "unknown_group")]);
    let reply = call(hub.put("/v1/groups/a").json(&json!({"parent": "a"}))).await;
    assert_invalid(&reply, &[("parent", "parent_cycle")]);

    put_group(&hub, "a", json!({})).await;
    let b = put_group(&hub, "b", json!({"parent": "a"})).await;
    assert_eq!(b["parent"], "a");
    put_group(&hub, "c", json!({"parent": "b"})).await;
    for (code, parent) in [("a", "c"), ("a", "b"), ("b", "c"), ("a", "a")] {
        let reply = call(
            hub.put(&format!("/v1/groups/{code}"))
                .json(&json!({"parent": parent})),
        )
        .await;
        assert_invalid(&reply, &[("parent", "parent_cycle")]);
    }
    // Moving a subtree elsewhere is fine, and so is detaching it.
    put_group(&hub, "d", json!({})).await;
    assert_eq!(
        put_group(&hub, "b", json!({"parent": "d"})).await["parent"],
        "d"
    );
    let detached = put_group(&hub, "b", json!({"parent": null})).await;
    assert_eq!(detached["parent"], Value::Null);
    let reply = call(hub.get("/v1/groups/a")).await;
    assert_eq!(
        reply.body["parent"],
        Value::Null,
        "a refused write changed nothing"
    );
}

async fn a_group_with_subgroups_or_members_is_not_deleted(hub: TestHub) {
    put_group(&hub, "parent", json!({})).await;
    put_group(&hub, "child", json!({"parent": "parent"})).await;
    assert_problem(
        &call(hub.delete("/v1/groups/parent")).await,
        409,
        "group_has_subgroups",
    );
    hub.create_customer(json!({"external_id": "m", "groups": ["child"]}))
        .await;
    assert_problem(
        &call(hub.delete("/v1/groups/child")).await,
        409,
        "group_in_use",
    );
    assert_eq!(call(hub.get("/v1/groups/child")).await.status, 200);

    let reply = call(
        hub.patch("/v1/customers/external_id/m")
            .json(&json!({"remove_groups": ["child"]})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(call(hub.delete("/v1/groups/child")).await.status, 204);
    assert_eq!(call(hub.delete("/v1/groups/parent")).await.status, 204);

    // A deleted member leaves no membership behind.
    put_group(&hub, "gone", json!({})).await;
    hub.create_customer(json!({"external_id": "x", "groups": ["gone"]}))
        .await;
    assert_eq!(
        call(hub.delete("/v1/customers/external_id/x")).await.status,
        204
    );
    assert_eq!(call(hub.delete("/v1/groups/gone")).await.status, 204);
    assert_eq!(hub.count_rows("customer_groups").await, 0);
}

async fn group_sync_applies_items_in_order_with_a_result_each(hub: TestHub) {
    put_group(&hub, "old", json!({"title": "Old"})).await;
    let body = json!({"groups": [
        {"code": "root", "title": "Root", "subscribable": true},
        {"code": "leaf", "parent": "root"},
        {"code": "root", "parent": "leaf"},
        {"code": "old", "title": "Old"},
        {"code": "old", "title": "Renamed"},
        {"title": "no code"},
        {"code": "bad code"},
        {"code": "x", "colour": "red"},
        {"code": "y", "parent": "nowhere"},
        "not an object",
    ]});
    let reply = call(hub.post("/v1/groups/sync").json(&body)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let results = reply.body["results"].as_array().expect("results");
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        [
            "created",
            "created",
            "failed",
            "unchanged",
            "updated",
            "failed",
            "failed",
            "failed",
            "failed",
            "failed"
        ]
    );
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["index"], i);
    }
    assert_eq!(results[0]["code"], "root");
    assert_eq!(results[2]["error"]["errors"][0]["code"], "parent_cycle");
    assert_eq!(results[5]["error"]["errors"][0]["field"], "code");
    assert_eq!(results[6]["error"]["errors"][0]["code"], "invalid_code");
    assert_eq!(results[7]["error"]["errors"][0]["code"], "unknown_field");
    assert_eq!(results[8]["error"]["errors"][0]["code"], "unknown_group");
    assert_eq!(results[9]["error"]["status"], 422);
    assert_eq!(
        reply.body["summary"],
        json!({"created": 2, "updated": 1, "unchanged": 1, "failed": 6})
    );
    assert_eq!(
        call(hub.get("/v1/groups/leaf")).await.body["parent"],
        "root"
    );
    assert_eq!(
        call(hub.get("/v1/groups/root")).await.body["parent"],
        Value::Null
    );
    assert_eq!(
        call(hub.get("/v1/groups/old")).await.body["title"],
        "Renamed"
    );
    assert_problem(&call(hub.get("/v1/groups/y")).await, 404, "not_found");

    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"code": format!("g{i}")}))
        .collect();
    let reply = call(hub.post("/v1/groups/sync").json(&json!({"groups": many}))).await;
    assert_problem(&reply, 413, "too_many_items");
    assert_eq!(
        call(hub.get("/v1/groups")).await.body["data"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}

async fn memberships_take_the_group_default_or_an_explicit_subscription(hub: TestHub) {
    put_group(&hub, "news", json!({"subscribable": true})).await;
    put_group(&hub, "staff", json!({"subscribable": false})).await;
    let customer = hub
        .create_customer(json!({"external_id": "c", "groups": [
            "news", "staff", {"code": "news", "subscribed": false}
        ]}))
        .await;
    // The later reference to the same group wins.
    assert_eq!(
        customer["groups"],
        json!([{"code": "news", "subscribed": false}, {"code": "staff", "subscribed": false}])
    );
    // A bare code keeps a membership's subscription: re-sending the list, or adding the
    // group again, never undoes the opt-out.
    let reply = call(
        hub.patch("/v1/customers/external_id/c")
            .json(&json!({"groups": ["news", {"code": "staff", "subscribed": true}]})),
    )
    .await;
    assert_eq!(
        reply.body["groups"],
        json!([{"code": "news", "subscribed": false}, {"code": "staff", "subscribed": true}])
    );
    for body in [
        json!({"groups": [{"code": "news"}, "staff"]}),
        json!({"add_groups": ["news"]}),
    ] {
        let reply = call(hub.patch("/v1/customers/external_id/c").json(&body)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["version"], 2, "unchanged: {}", reply.body);
    }
    let reply = call(
        hub.patch("/v1/customers/external_id/c")
            .json(&json!({"groups": [{"code": "news", "subscribed": true}]})),
    )
    .await;
    assert_eq!(
        reply.body["groups"],
        json!([{"code": "news", "subscribed": true}])
    );
    // A misspelt field of a membership is refused, not dropped.
    let reply = call(
        hub.patch("/v1/customers/external_id/c")
            .json(&json!({"add_groups": [{"code": "staff", "subscribd": false}]})),
    )
    .await;
    assert_invalid(&reply, &[("add_groups[0].subscribd", "unknown_field")]);
}

async fn memberships_change_on_every_write_path(hub: TestHub) {
    for code in ["a", "b", "c"] {
        put_group(&hub, code, json!({"subscribable": true})).await;
    }
    let groups = |body: &Value| -> Vec<String> {
        body["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .map(|g| g["code"].as_str().expect("code").to_owned())
            .collect()
    };
    let created = hub
        .create_customer(json!({"external_id": "p", "groups": ["a"]}))
        .await;
    assert_eq!(groups(&created), ["a"]);
    let id = created["id"].as_str().expect("id");
    let reply = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"add_groups": ["b", "c"], "remove_groups": ["a"]})),
    )
    .await;
    assert_eq!(groups(&reply.body), ["b", "c"]);
    let reply = call(
        hub.put("/v1/customers/external_id/p")
            .json(&json!({"groups": ["a"]})),
    )
    .await;
    assert_eq!(groups(&reply.body), ["a"]);
    let reply = call(
        hub.post("/v1/customers?upsert=external_id")
            .json(&json!({"external_id": "p", "add_groups": [{"code": "b", "subscribed": false}]})),
    )
    .await;
    assert_eq!(groups(&reply.body), ["a", "b"]);
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "p", "remove_groups": ["a"], "add_groups": ["c"]},
            {"external_id": "q", "groups": ["a", "b"]},
            {"external_id": "q", "groups": null},
        ]}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["summary"]["failed"], 0, "{}", reply.body);
    let p = call(hub.get("/v1/customers/external_id/p")).await;
    assert_eq!(groups(&p.body), ["b", "c"]);
    let q = call(hub.get("/v1/customers/external_id/q")).await;
    assert_eq!(groups(&q.body), Vec::<String>::new());
    // The indexed membership rows follow the documents.
    assert_eq!(hub.count_rows("customer_groups").await, 2);
    let members = call(hub.get("/v1/customers?group=c")).await;
    assert_eq!(external_ids(&members.body), ["p"]);
    let members = call(hub.get("/v1/customers?group=a")).await;
    assert_eq!(external_ids(&members.body), Vec::<String>::new());
}

async fn unknown_groups_are_refused_everywhere(hub: TestHub) {
    put_group(&hub, "known", json!({})).await;
    let reply = call(
        hub.post("/v1/customers")
            .json(&json!({"external_id": "u", "groups": ["known", "nope"]})),
    )
    .await;
    assert_invalid(&reply, &[("groups[1]", "unknown_group")]);
    hub.create_customer(json!({"external_id": "u"})).await;
    let reply = call(
        hub.patch("/v1/customers/external_id/u")
            .json(&json!({"add_groups": [{"code": "nope", "subscribed": true}]})),
    )
    .await;
    assert_invalid(&reply, &[("add_groups[0]", "unknown_group")]);
    // Removing an unknown code is refused too: a misspelt removal must not pass as done.
    let reply = call(
        hub.patch("/v1/customers/external_id/u")
            .json(&json!({"remove_groups": ["known", "nope"], "remove_teams": ["nope"]})),
    )
    .await;
    assert_invalid(
        &reply,
        &[
            ("remove_teams[0]", "unknown_team"),
            ("remove_groups[1]", "unknown_group"),
        ],
    );
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "u", "groups": ["nope"]},
            {"external_id": "v", "groups": ["known"]},
        ]}))
        .await;
    assert_eq!(reply.body["results"][0]["status"], "failed");
    assert_eq!(
        reply.body["results"][0]["error"]["errors"][0]["code"],
        "unknown_group"
    );
    assert_eq!(reply.body["results"][1]["status"], "created");
    let u = call(hub.get("/v1/customers/external_id/u")).await;
    assert_eq!(u.body["groups"], json!([]));
    assert_eq!(u.body["version"], 1);
}

async fn the_group_filter_lists_members_and_optionally_subgroups(hub: TestHub) {
    put_group(&hub, "all", json!({})).await;
    put_group(&hub, "mid", json!({"parent": "all"})).await;
    put_group(&hub, "low", json!({"parent": "mid"})).await;
    put_group(&hub, "other", json!({})).await;
    for (id, group) in [
        ("1", "all"),
        ("2", "mid"),
        ("3", "low"),
        ("4", "other"),
        ("5", "low"),
    ] {
        hub.create_customer(json!({"external_id": id, "groups": [group]}))
            .await;
    }
    hub.create_customer(json!({"external_id": "6"})).await;
    let list = |query: &str| {
        let request = hub.get(&format!("/v1/customers?{query}"));
        async move {
            let reply = call(request).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            external_ids(&reply.body)
        }
    };
    assert_eq!(list("group=all").await, ["1"]);
    assert_eq!(list("group=all&include_subgroups=false").await, ["1"]);
    assert_eq!(
        list("group=all&include_subgroups=true").await,
        ["1", "2", "3", "5"]
    );
    assert_eq!(
        list("group=mid&include_subgroups=true").await,
        ["2", "3", "5"]
    );
    assert_eq!(
        list("group=low&include_subgroups=true&sort=-created_at").await,
        ["5", "3"]
    );
    assert_eq!(
        list("group=nope&include_subgroups=true").await,
        Vec::<String>::new()
    );

    // Keyset paging stays intact under the filter.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("group=all&include_subgroups=true&limit=1&cursor={c}"),
            None => "group=all&include_subgroups=true&limit=1".to_owned(),
        };
        let page = call(hub.get(&format!("/v1/customers?{query}"))).await;
        assert_eq!(page.status, 200, "{}", page.body);
        seen.extend(external_ids(&page.body));
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["1", "2", "3", "5"]);
    let reply = call(hub.get("/v1/customers?include_subgroups=maybe")).await;
    assert_eq!(reply.status, 422);
    let reply = call(hub.get("/v1/customers?group=a%00b")).await;
    assert_invalid(&reply, &[("group", "invalid_parameter")]);
}

async fn concurrent_re_parentings_never_make_a_cycle(hub: TestHub) {
    let codes = ["a", "b", "c"];
    for _ in 0..5 {
        for code in codes {
            put_group(&hub, code, json!({"parent": null})).await;
        }
        // Each group asks for the next one as its parent, all at once: any two would be fine,
        // all three close a cycle, so at least one must be refused.
        let requests = codes
            .iter()
            .zip(codes.iter().cycle().skip(1))
            .map(|(code, parent)| {
                call(
                    hub.put(&format!("/v1/groups/{code}"))
                        .json(&json!({"parent": parent})),
                )
            });
        let replies = futures::future::join_all(requests).await;
        let refused = replies.iter().filter(|r| r.status == 422).count();
        assert!(replies.iter().all(|r| r.status == 200 || r.status == 422));
        assert!(refused >= 1, "{replies:?}");
        let list = call(hub.get("/v1/groups")).await;
        let with_parent = list.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter(|g| !g["parent"].is_null())
            .count();
        assert_eq!(with_parent, 3 - refused, "{}", list.body);
        assert!(with_parent < 3, "a cycle: {}", list.body);
    }
}

async fn group_writes_are_idempotent_with_a_key(hub: TestHub) {
    let put = || {
        call(
            hub.put("/v1/groups/once")
                .header("Idempotency-Key", "group-once")
                .json(&json!({"title": "Once"})),
        )
    };
    let first = put().await;
    assert_eq!(first.status, 201, "{}", first.body);
    // Changed in between: the replay still answers the first response and changes nothing.
    put_group(&hub, "once", json!({"title": "Changed"})).await;
    let replay = put().await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body, first.body);
    assert_eq!(
        call(hub.get("/v1/groups/once")).await.body["title"],
        "Changed"
    );
    let reused = call(
        hub.put("/v1/groups/other")
            .header("Idempotency-Key", "group-once")
            .json(&json!({})),
    )
    .await;
    assert_problem(&reused, 422, "idempotency_key_reused");
}
