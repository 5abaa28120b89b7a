//! Team-scoped API keys over HTTP, on SQLite and PostgreSQL. A key restricted to teams sees,
//! lists, searches, changes, deletes, syncs and counts only customers of its teams; every other
//! customer is 404 for it (never 403), on every endpoint that can address a customer. Customers
//! it creates without `teams` get its teams; it cannot name a foreign team, nor leave a customer
//! outside its teams. A restricted admin key lists, creates and revokes only keys restricted to
//! some of its own teams.

use clientele_testkit::{Reply, TestHub, assert_invalid, assert_problem, call, hub_tests};
use serde_json::{Value, json};

hub_tests!(
    a_foreign_customer_does_not_exist_on_any_endpoint,
    a_scoped_key_lists_and_counts_only_its_customers,
    customers_a_scoped_key_creates_join_its_teams,
    a_scoped_key_cannot_name_foreign_teams_or_orphan_a_customer,
    a_scoped_key_syncs_only_its_customers,
    an_unrestricted_key_still_sees_everything,
    a_scoped_admin_key_manages_only_keys_within_its_teams,
    api_keys_are_listed_in_pages_a_scoped_admin_sees_its_own_in_full,
    a_scoped_key_sees_and_changes_only_its_own_teams,
    a_scoped_key_cannot_take_a_shared_customer_from_other_teams,
    shared_settings_need_an_unrestricted_key,
);

const PASSWORD: &str = "correct horse battery";

/// Teams `north`, `south` and `east`; a foreign customer (south) and an own one (north); and a
/// write key restricted to north.
struct World {
    scoped: TestHub,
    foreign: Value,
    own: Value,
}

async fn scoped_key(hub: &TestHub, role: &str, teams: &[&str]) -> TestHub {
    let reply = call(hub.post("/v1/api-keys").json(&json!({
        "name": "scoped", "role": role, "teams": teams
    })))
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let mut sorted = teams.to_vec();
    sorted.sort_unstable();
    assert_eq!(
        reply.body["teams"],
        json!(sorted),
        "key teams are a sorted set"
    );
    hub.as_key(reply.body["secret"].as_str().expect("secret"))
}

async fn world(hub: &TestHub) -> World {
    for team in ["north", "south", "east"] {
        let reply = call(hub.put(&format!("/v1/teams/{team}")).json(&json!({}))).await;
        assert_eq!(reply.status, 201);
    }
    let foreign = hub
        .create_customer(json!({
            "external_id": "foreign", "email": "foreign@example.com", "username": "foreigner",
            "teams": ["south"], "tags": ["secret", "shared"], "password": PASSWORD
        }))
        .await;
    let own = hub
        .create_customer(json!({
            "external_id": "own", "email": "own@example.com", "username": "owner",
            "teams": ["north"], "tags": ["shared"], "password": PASSWORD
        }))
        .await;
    World {
        scoped: scoped_key(hub, "write", &["north"]).await,
        foreign,
        own,
    }
}

fn id(customer: &Value) -> &str {
    customer["id"].as_str().expect("id")
}

/// Asserts the reply is the same 404 a customer that never existed gets.
#[track_caller]
fn assert_absent(reply: &clientele_testkit::Reply, what: &str) {
    assert_problem(reply, 404, "not_found");
    assert!(
        !reply.body.to_string().contains("cus_"),
        "{what}: a 404 reveals an id: {}",
        reply.body
    );
}

async fn a_foreign_customer_does_not_exist_on_any_endpoint(hub: TestHub) {
    let World {
        scoped, foreign, ..
    } = world(&hub).await;
    let by_id = format!("/v1/customers/{}", id(&foreign));
    let by_keys = [
        "/v1/customers/external_id/foreign",
        "/v1/customers/email/foreign%40example.com",
        "/v1/customers/username/foreigner",
    ];
    let missing = call(scoped.get("/v1/customers/cus_01JD3Y6Q4X8K2M5N7P9R1T3V5W")).await;
    assert_problem(&missing, 404, "not_found");

    // Read, by id and by every key.
    let reply = call(scoped.get(&by_id)).await;
    assert_absent(&reply, "GET by id");
    assert_eq!(reply.body["detail"], missing.body["detail"]);
    for path in by_keys {
        assert_absent(&call(scoped.get(path)).await, path);
    }
    // Change: PATCH by id and key, PUT by key, with and without If-Match.
    let change = json!({"note": "hijacked"});
    assert_absent(
        &call(scoped.patch(&by_id).json(&change)).await,
        "PATCH by id",
    );
    assert_absent(
        &call(
            scoped
                .patch(&by_id)
                .header("If-Match", "\"7\"")
                .json(&change),
        )
        .await,
        "PATCH by id with If-Match",
    );
    for path in by_keys {
        assert_absent(&call(scoped.patch(path).json(&change)).await, path);
    }
    assert_absent(
        &call(scoped.put(by_keys[0]).json(&change)).await,
        "PUT by external_id",
    );
    assert_absent(
        &call(
            scoped
                .put(by_keys[2])
                .json(&json!({"note": "x", "teams": ["north"]})),
        )
        .await,
        "PUT by username",
    );
    assert_absent(
        &call(
            scoped
                .post("/v1/customers?upsert=external_id")
                .json(&json!({"external_id": "foreign", "note": "x"})),
        )
        .await,
        "POST upsert",
    );
    // Delete, by id and key.
    assert_absent(&call(scoped.delete(&by_id)).await, "DELETE by id");
    for path in by_keys {
        assert_absent(&call(scoped.delete(path)).await, path);
    }
    // Password check.
    assert_absent(
        &call(
            scoped
                .post(&format!("{by_id}/verify-password"))
                .json(&json!({"password": PASSWORD})),
        )
        .await,
        "verify-password",
    );
    // A create clashing with the invisible customer's key: 409 naming the key, not the customer.
    let reply = call(
        scoped
            .post("/v1/customers")
            .json(&json!({"email": "Foreign@Example.com"})),
    )
    .await;
    assert_problem(&reply, 409, "duplicate_key");
    assert!(
        !reply.body.to_string().contains(id(&foreign)),
        "{}",
        reply.body
    );
    // Sync: an update, a key change (`match`) and a delete of the foreign customer all fail.
    let reply = scoped
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "foreign", "note": "x"},
            {"external_id": "renamed", "match": "foreign"},
            {"external_id": "foreign", "delete": true},
        ]}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    for result in reply.body["results"].as_array().expect("results") {
        assert_eq!(result["status"], "failed", "{result}");
        assert_eq!(result["error"]["code"], "not_found", "{result}");
        assert_eq!(result["id"], Value::Null);
    }
    let reply = scoped
        .sync(&json!({"key": "email", "customers": [
            {"email": "FOREIGN@example.com", "note": "x"},
        ]}))
        .await;
    assert_eq!(reply.body["results"][0]["error"]["code"], "not_found");
    // Listing and searching never show it; tag counts never count it.
    for query in ["", "?team=south", "?tag=secret", "?limit=1000"] {
        let reply = call(scoped.get(&format!("/v1/customers{query}"))).await;
        assert_eq!(reply.status, 200);
        assert!(
            !reply.body.to_string().contains(id(&foreign)),
            "list {query}: {}",
            reply.body
        );
    }
    let reply = call(scoped.get("/v1/tags")).await;
    assert_eq!(reply.body["data"], json!([{"tag": "shared", "count": 1}]));

    // Nothing of all that changed it.
    let stored = call(hub.get(&by_id)).await;
    assert_eq!(stored.status, 200);
    assert_eq!(stored.body, foreign);
}

async fn a_scoped_key_lists_and_counts_only_its_customers(hub: TestHub) {
    let World { scoped, own, .. } = world(&hub).await;
    let shared = hub
        .create_customer(json!({"external_id": "shared", "teams": ["south", "north"],
                                "tags": ["shared"]}))
        .await;
    hub.create_customer(json!({"external_id": "nobody's"}))
        .await;
    let reader = scoped_key(&hub, "read", &["north", "east"]).await;
    for key in [&scoped, &reader] {
        let reply = call(key.get("/v1/customers")).await;
        let ids: Vec<&str> = reply.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|c| c["external_id"].as_str().expect("external_id"))
            .collect();
        assert_eq!(ids, ["own", "shared"]);
        // Paging through the scope one by one sees the same.
        let first = call(key.get("/v1/customers?limit=1")).await;
        let cursor = first.body["next_cursor"].as_str().expect("a next page");
        let second = call(key.get(&format!("/v1/customers?limit=1&cursor={cursor}"))).await;
        assert_eq!(second.body["data"][0]["external_id"], "shared");
        assert_eq!(second.body["next_cursor"], Value::Null);
        let reply = call(key.get("/v1/tags")).await;
        assert_eq!(reply.body["data"], json!([{"tag": "shared", "count": 2}]));
        assert_eq!(
            call(key.get(&format!("/v1/customers/{}", id(&own))))
                .await
                .status,
            200
        );
        assert_eq!(
            call(key.get(&format!("/v1/customers/{}", id(&shared))))
                .await
                .status,
            200
        );
        let reply = call(
            key.post(&format!("/v1/customers/{}/verify-password", id(&own)))
                .json(&json!({"password": PASSWORD})),
        )
        .await;
        assert_eq!(reply.body, json!({"valid": true}));
    }
    // The admin sees all four.
    let all = call(hub.get("/v1/customers")).await;
    assert_eq!(all.body["data"].as_array().map(Vec::len), Some(4));
    let all = call(hub.get("/v1/tags")).await;
    assert_eq!(
        all.body["data"],
        json!([{"tag": "secret", "count": 1}, {"tag": "shared", "count": 3}])
    );
}

async fn customers_a_scoped_key_creates_join_its_teams(hub: TestHub) {
    let World { scoped, .. } = world(&hub).await;
    let created = call(
        scoped
            .post("/v1/customers")
            .json(&json!({"external_id": "n1"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["teams"], json!(["north"]));
    let created = call(
        scoped
            .put("/v1/customers/external_id/n2")
            .json(&json!({"first_name": "Ann"})),
    )
    .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["teams"], json!(["north"]));
    let created = call(
        scoped
            .post("/v1/customers?upsert=external_id")
            .json(&json!({"external_id": "n3"})),
    )
    .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.body["teams"], json!(["north"]));
    let multi = scoped_key(&hub, "write", &["north", "east"]).await;
    let created = call(
        multi
            .post("/v1/customers")
            .json(&json!({"external_id": "n4"})),
    )
    .await;
    assert_eq!(created.body["teams"], json!(["east", "north"]));
    let created = call(
        multi
            .post("/v1/customers")
            .json(&json!({"external_id": "n5", "teams": ["east"]})),
    )
    .await;
    assert_eq!(
        created.body["teams"],
        json!(["east"]),
        "given teams are kept"
    );
    // An update without teams keeps the customer's teams.
    let reply = call(
        scoped
            .patch("/v1/customers/external_id/n1")
            .json(&json!({"note": "hi"})),
    )
    .await;
    assert_eq!(reply.body["teams"], json!(["north"]));
    let reply = call(scoped.delete("/v1/customers/external_id/n1")).await;
    assert_eq!(reply.status, 204);
}

async fn a_scoped_key_cannot_name_foreign_teams_or_orphan_a_customer(hub: TestHub) {
    let World { scoped, own, .. } = world(&hub).await;
    // A foreign team and a missing one look alike.
    for team in ["south", "ghost"] {
        let reply = call(
            scoped
                .post("/v1/customers")
                .json(&json!({"external_id": "x", "teams": ["north", team]})),
        )
        .await;
        assert_invalid(&reply, &[("teams[1]", "unknown_team")]);
    }
    let path = format!("/v1/customers/{}", id(&own));
    let reply = call(scoped.patch(&path).json(&json!({"add_teams": ["south"]}))).await;
    assert_invalid(&reply, &[("add_teams[0]", "unknown_team")]);
    for body in [
        json!({"teams": []}),
        json!({"teams": null}),
        json!({"remove_teams": ["north"]}),
    ] {
        let reply = call(scoped.patch(&path).json(&body)).await;
        assert_invalid(&reply, &[("teams", "outside_scope")]);
    }
    let reply = call(
        scoped
            .post("/v1/customers")
            .json(&json!({"external_id": "y", "teams": []})),
    )
    .await;
    assert_invalid(&reply, &[("teams", "outside_scope")]);
    let stored = call(hub.get(&path)).await;
    assert_eq!(stored.body, own, "refused writes changed nothing");
    assert_eq!(
        call(hub.get("/v1/customers?limit=1000")).await.body["data"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
}

async fn a_scoped_key_syncs_only_its_customers(hub: TestHub) {
    let World { scoped, .. } = world(&hub).await;
    let reply = scoped
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "own", "note": "mine"},
            {"external_id": "new"},
            {"external_id": "new2", "teams": ["south"]},
            {"external_id": "new3", "teams": []},
            {"external_id": "foreign", "note": "theirs"},
        ]}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let statuses: Vec<&str> = reply.body["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["status"].as_str().expect("status"))
        .collect();
    assert_eq!(
        statuses,
        ["updated", "created", "failed", "failed", "failed"]
    );
    assert_eq!(
        reply.body["results"][2]["error"]["errors"][0]["field"],
        "teams[0]"
    );
    assert_eq!(
        reply.body["results"][3]["error"]["errors"][0]["code"],
        "outside_scope"
    );
    let new = call(hub.get("/v1/customers/external_id/new")).await;
    assert_eq!(new.body["teams"], json!(["north"]));
    let foreign = call(hub.get("/v1/customers/external_id/foreign")).await;
    assert_eq!(foreign.body["note"], Value::Null);
    assert_eq!(foreign.body["version"], 1);
    // Atomic: the foreign item fails the whole batch.
    let reply = scoped
        .sync(&json!({"key": "external_id", "atomic": true, "customers": [
            {"external_id": "own", "note": "again"},
            {"external_id": "foreign", "delete": true},
        ]}))
        .await;
    assert_problem(&reply, 422, "sync_failed");
    assert_eq!(reply.body["results"][1]["error"]["code"], "not_found");
    let own = call(hub.get("/v1/customers/external_id/own")).await;
    assert_eq!(own.body["note"], "mine");
}

async fn an_unrestricted_key_still_sees_everything(hub: TestHub) {
    let World { foreign, own, .. } = world(&hub).await;
    let writer = hub.as_key(&hub.create_key(clientele_domain::Role::Write).await);
    for customer in [&foreign, &own] {
        let reply = call(writer.get(&format!("/v1/customers/{}", id(customer)))).await;
        assert_eq!(reply.status, 200);
    }
    let created = call(
        writer
            .post("/v1/customers")
            .json(&json!({"external_id": "free"})),
    )
    .await;
    assert_eq!(created.body["teams"], json!([]), "no teams unless given");
    let reply = call(
        writer
            .patch(&format!("/v1/customers/{}", id(&foreign)))
            .json(&json!({"teams": ["north", "south"]})),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["teams"], json!(["north", "south"]));
}

async fn a_scoped_admin_key_manages_only_keys_within_its_teams(hub: TestHub) {
    world(&hub).await;
    let admin = scoped_key(&hub, "admin", &["north", "south"]).await;
    let key_ids = |reply: &Reply| -> Vec<String> {
        let mut ids = listed_ids(reply);
        ids.sort_unstable();
        ids
    };
    let everyone = key_ids(&call(hub.get("/v1/api-keys")).await);

    // A key it creates without teams gets its teams; it cannot hand out more than it has.
    let reply = call(
        admin
            .post("/v1/api-keys")
            .json(&json!({"name": "n", "role": "admin"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["teams"], json!(["north", "south"]));
    let created = reply.body["id"].as_str().expect("id").to_owned();
    for (teams, field) in [
        (json!(["east"]), "teams[0]"),
        (json!(["north", "east"]), "teams[1]"),
    ] {
        let reply = call(
            admin
                .post("/v1/api-keys")
                .json(&json!({"name": "x", "role": "read", "teams": teams})),
        )
        .await;
        assert_invalid(&reply, &[(field, "unknown_team")]);
    }

    // It lists only the keys within its teams: not the unrestricted bootstrap key.
    let listed = key_ids(&call(admin.get("/v1/api-keys")).await);
    let all = key_ids(&call(hub.get("/v1/api-keys")).await);
    assert_eq!(all.len(), everyone.len() + 1, "the one it created");
    let outside: Vec<&String> = all.iter().filter(|id| !listed.contains(id)).collect();
    assert_eq!(
        outside.len(),
        1,
        "only the bootstrap key is outside: {outside:?}"
    );

    // A key outside its teams does not exist for it; one within them it revokes.
    let reply = call(admin.delete(&format!("/v1/api-keys/{}", outside[0]))).await;
    assert_problem(&reply, 404, "not_found");
    assert_eq!(
        call(hub.get("/v1/api-keys")).await.status,
        200,
        "still live"
    );
    let reply = call(admin.delete(&format!("/v1/api-keys/{created}"))).await;
    assert_eq!(reply.status, 204);
}

/// The ids of a list reply's `data`, in order.
fn listed_ids(reply: &Reply) -> Vec<String> {
    reply.data_ids().into_iter().map(str::to_owned).collect()
}

/// Every id of `GET /v1/api-keys` as `hub` pages through it `limit` at a time.
async fn key_pages(hub: &TestHub, limit: u32) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut path = format!("/v1/api-keys?limit={limit}");
    loop {
        let reply = call(hub.get(&path)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        let ids = listed_ids(&reply);
        assert!(ids.len() <= limit as usize, "{path}: {}", reply.body);
        pages.push(ids);
        match reply.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/api-keys?limit={limit}&cursor={cursor}"),
            None => return pages,
        }
    }
}

async fn api_keys_are_listed_in_pages_a_scoped_admin_sees_its_own_in_full(hub: TestHub) {
    // Found in an audit: the key list had no bound and ignored unknown parameters.
    world(&hub).await;
    let admin = scoped_key(&hub, "admin", &["north"]).await;
    // Interleave keys it manages with many it does not, so that a page of its own needs
    // several reads of the store.
    let mut its_own = Vec::new();
    for round in 0..4 {
        for _ in 0..5 {
            scoped_key(&hub, "read", &["south"]).await;
        }
        let reply = call(
            hub.post("/v1/api-keys")
                .json(&json!({"name": format!("own-{round}"), "role": "read", "teams": ["north"]})),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
        its_own.push(reply.body["id"].as_str().expect("id").to_owned());
    }

    let whole = listed_ids(&call(hub.get("/v1/api-keys")).await);
    assert_eq!(
        whole.len(),
        1 + 1 + 1 + 20 + 4,
        "bootstrap, world's key, scoped admin, south keys, own keys"
    );
    let mut sorted = whole.clone();
    sorted.sort_unstable();
    assert_eq!(whole, sorted, "listed in id order");
    let pages = key_pages(&hub, 7).await;
    assert_eq!(pages.len(), 4, "27 keys, 7 a page: {pages:?}");
    assert_eq!(pages.concat(), whole, "every key once, in order");

    // The scoped admin sees the north keys (world's, its own and itself), whole pages of them.
    let visible = listed_ids(&call(admin.get("/v1/api-keys")).await);
    assert_eq!(visible.len(), 4 + 2, "{visible:?}");
    assert!(its_own.iter().all(|id| visible.contains(id)), "{visible:?}");
    let pages = key_pages(&admin, 2).await;
    assert_eq!(pages.concat(), visible, "{pages:?}");
    assert!(pages.iter().all(|page| page.len() == 2), "{pages:?}");

    for (query, field, code) in [
        ("?limit=0", "limit", "out_of_range"),
        ("?limit=1001", "limit", "out_of_range"),
        ("?cursor=!!!", "cursor", "invalid_cursor"),
        ("?role=admin", "role", "unknown_parameter"),
    ] {
        let reply = call(hub.get(&format!("/v1/api-keys{query}"))).await;
        assert_invalid(&reply, &[(field, code)]);
    }
}

async fn a_scoped_key_sees_and_changes_only_its_own_teams(hub: TestHub) {
    // Found in an audit: a key restricted to north listed, read, renamed and deleted south.
    let World { scoped, .. } = world(&hub).await;
    for team in ["alpha", "omega"] {
        let reply = call(hub.put(&format!("/v1/teams/{team}")).json(&json!({}))).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let codes = |reply: &Reply| -> Vec<String> {
        reply.body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|team| team["code"].as_str().expect("code").to_owned())
            .collect()
    };
    let listed = call(scoped.get("/v1/teams")).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert_eq!(codes(&listed), ["north"]);
    // Pages of one, with its team amid others: whole, and no page after it.
    let page = call(scoped.get("/v1/teams?limit=1")).await;
    assert_eq!(codes(&page), ["north"]);
    assert!(page.body["next_cursor"].is_null(), "{}", page.body);
    assert_eq!(codes(&call(hub.get("/v1/teams")).await).len(), 5);
    // A key of two teams pages through them, and only them.
    let two = scoped_key(&hub, "read", &["omega", "east"]).await;
    assert_eq!(codes(&call(two.get("/v1/teams")).await), ["east", "omega"]);
    let first = call(two.get("/v1/teams?limit=1")).await;
    assert_eq!(codes(&first), ["east"]);
    let cursor = first.body["next_cursor"].as_str().expect("a next page");
    let second = call(two.get(&format!("/v1/teams?limit=1&cursor={cursor}"))).await;
    assert_eq!(codes(&second), ["omega"]);
    assert!(second.body["next_cursor"].is_null(), "{}", second.body);

    assert_eq!(call(scoped.get("/v1/teams/north")).await.status, 200);
    for path in ["/v1/teams/south", "/v1/teams/nowhere"] {
        assert_absent(&call(scoped.get(path)).await, path);
        assert_absent(&call(scoped.delete(path)).await, path);
    }
    // Renaming another team or creating one is refused alike, whether it exists or not.
    for path in ["/v1/teams/south", "/v1/teams/newteam"] {
        let reply = call(scoped.put(path).json(&json!({"name": "mine now"}))).await;
        assert_problem(&reply, 403, "forbidden");
    }
    let south = call(hub.get("/v1/teams/south")).await;
    assert!(south.body["name"].is_null(), "{}", south.body);
    assert_absent(&call(hub.get("/v1/teams/newteam")).await, "newteam");

    // Its own team it may rename.
    let reply = call(
        scoped
            .put("/v1/teams/north")
            .json(&json!({"name": "The North"})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["name"], "The North");
}

/// Found in an audit: a key restricted to north took a customer shared with south away from
/// south (by replacing its teams, or removing south), and learnt which team codes exist.
async fn a_scoped_key_cannot_take_a_shared_customer_from_other_teams(hub: TestHub) {
    let World { scoped, .. } = world(&hub).await;
    let shared = hub
        .create_customer(json!({"external_id": "shared", "teams": ["north", "south"]}))
        .await;
    let path = format!("/v1/customers/{}", id(&shared));
    for team in ["south", "ghost"] {
        let reply = call(scoped.patch(&path).json(&json!({"remove_teams": [team]}))).await;
        assert_invalid(&reply, &[("remove_teams[0]", "unknown_team")]);
    }
    // Replacing the team set keeps the teams the key is not in.
    let reply = call(
        scoped
            .patch(&path)
            .json(&json!({"teams": ["north"], "note": "x"})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let stored = call(hub.get(&path)).await;
    let mut teams: Vec<String> =
        serde_json::from_value(stored.body["teams"].clone()).expect("teams");
    teams.sort();
    assert_eq!(teams, ["north", "south"]);
    let south = scoped_key(&hub, "read", &["south"]).await;
    assert_eq!(call(south.get(&path)).await.status, 200);

    // It sees only its own teams of the customer: by id, in the list, in a write's answer and
    // in the change feed; the hub and the other team see them all.
    let only_north = json!(["north"]);
    assert_eq!(call(scoped.get(&path)).await.body["teams"], only_north);
    let listed = call(scoped.get("/v1/customers?limit=100")).await;
    let entry = listed.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .find(|customer| customer["id"] == shared["id"])
        .cloned()
        .expect("listed");
    assert_eq!(entry["teams"], only_north);
    let written = call(scoped.patch(&path).json(&json!({"note": "y"}))).await;
    assert_eq!(written.body["teams"], only_north, "{}", written.body);
    let feed = call(scoped.get("/v1/changes?limit=1000")).await;
    let shown: Vec<&Value> = feed.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter(|event| event["customer_id"] == shared["id"] && !event["customer"].is_null())
        .collect();
    assert!(!shown.is_empty(), "{}", feed.body);
    for event in shown {
        assert_eq!(event["customer"]["teams"], only_north, "{event}");
    }
    // Nor does filtering by another team tell which of its customers that team shares.
    let filtered = call(scoped.get("/v1/customers?team=south")).await;
    assert_eq!(filtered.status, 200, "{}", filtered.body);
    assert_eq!(filtered.body["data"], json!([]), "{}", filtered.body);
    let filtered = call(scoped.get("/v1/customers?team=north")).await;
    assert_eq!(filtered.body["data"].as_array().map(Vec::len), Some(2));
    let full = call(hub.get(&path)).await.body["teams"].clone();
    assert_eq!(full, json!(["north", "south"]));
    assert_eq!(call(south.get(&path)).await.body["teams"], json!(["south"]));
}

/// The schema and the groups apply to every team: a key restricted to teams may read them, not
/// change them (and a delete refused for members it cannot see would tell it they exist).
async fn shared_settings_need_an_unrestricted_key(hub: TestHub) {
    let World { .. } = world(&hub).await;
    let admin = scoped_key(&hub, "admin", &["north"]).await;
    let writer = scoped_key(&hub, "write", &["north"]).await;
    let reply = call(
        admin
            .put("/v1/schema")
            .json(&json!({"required_on_create": ["currency"]})),
    )
    .await;
    assert_problem(&reply, 403, "forbidden");
    assert_eq!(call(admin.get("/v1/schema")).await.status, 200);
    let reply = call(
        hub.put("/v1/groups/southvip")
            .json(&json!({"title": "South VIP"})),
    )
    .await;
    assert!(reply.status == 201 || reply.status == 200, "{}", reply.body);
    for key in [&admin, &writer] {
        let reply = call(
            key.put("/v1/groups/southvip")
                .json(&json!({"title": "pwned"})),
        )
        .await;
        assert_problem(&reply, 403, "forbidden");
        assert_problem(
            &call(key.delete("/v1/groups/southvip")).await,
            403,
            "forbidden",
        );
        let reply = call(
            key.post("/v1/groups/sync")
                .json(&json!({"groups": [{"code": "x", "title": "x"}]})),
        )
        .await;
        assert_problem(&reply, 403, "forbidden");
        assert_eq!(call(key.get("/v1/groups/southvip")).await.status, 200);
    }
    let group = call(hub.get("/v1/groups/southvip")).await;
    assert_eq!(group.body["title"], "South VIP");
}
