//! List and search (`GET /v1/customers` with filters) over HTTP, on SQLite and PostgreSQL: every
//! filter alone and combined, under every sort, walked page by page with keyset cursors and
//! compared with the same selection made here from the full list; time windows inclusive after
//! and exclusive before; `q` prefix search; bad filter values named; and cursor walks that
//! neither repeat nor skip a customer while other customers change.

use std::collections::BTreeSet;

use clientele_domain::Timestamp;
use clientele_testkit::{TestHub, assert_invalid, call, column_bytes, execute, hub_tests};
use serde_json::{Value, json};

hub_tests!(
    every_filter_under_every_sort_selects_exactly_its_customers,
    time_windows_include_after_and_exclude_before,
    q_is_a_case_insensitive_prefix_of_names_email_phone_company_and_external_id,
    search_terms_follow_updates_and_deletes,
    an_updated_customer_has_the_term_rows_of_a_new_one_with_its_fields,
    term_rows_of_another_derivation_are_rebuilt_at_start,
    customers_stored_before_the_search_index_are_indexed_at_start,
    a_q_with_many_matches_pages_through_all_of_them,
    a_common_last_name_prefix_is_merged_with_the_other_matches_in_name_order,
    time_windows_on_either_column_page_through_their_customers_under_every_sort,
    bad_filter_values_are_named,
    a_cursor_walk_is_stable_while_other_customers_change,
);

const SORTS: [&str; 5] = [
    "created_at",
    "-created_at",
    "updated_at",
    "-updated_at",
    "last_name",
];

/// Every customer a query selects, walking the pages with `limit`.
async fn walk(hub: &TestHub, query: &str, limit: u32) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/v1/customers?limit={limit}&{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let reply = call(hub.get(&path)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        let data = reply.body["data"].as_array().expect("data");
        assert!(data.len() <= limit as usize);
        all.extend(data.iter().cloned());
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
    }
}

fn ids(customers: &[Value]) -> Vec<String> {
    customers
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect()
}

/// The customers in the order `sort` lists them.
fn sorted(mut customers: Vec<Value>, sort: &str) -> Vec<Value> {
    let key = |c: &Value| -> (String, String) {
        let id = c["id"].as_str().expect("id").to_owned();
        let k = match sort.trim_start_matches('-') {
            "last_name" => c["last_name"].as_str().unwrap_or("").to_lowercase(),
            field => c[field].as_str().expect("timestamp").to_owned(),
        };
        (k, id)
    };
    customers.sort_by_key(key);
    if sort.starts_with('-') {
        customers.reverse();
    }
    customers
}

fn text(c: &Value, field: &str) -> String {
    c[field].as_str().unwrap_or("").to_owned()
}

async fn seed(hub: &TestHub) -> Vec<Value> {
    let people = [
        (
            "Ada",
            "Lovelace",
            "Analytical Engines",
            "ada@example.org",
            "+44 20 1",
            false,
        ),
        (
            "Alan",
            "Turing",
            "Bletchley Park",
            "alan@example.org",
            "+44 20 2",
            true,
        ),
        (
            "Grace",
            "Hopper",
            "Navy",
            "Grace@Example.COM",
            "+1 555 3",
            false,
        ),
        (
            "Edsger",
            "Dijkstra",
            "Eindhoven",
            "ew@example.nl",
            "+31 40 4",
            false,
        ),
        (
            "Barbara",
            "Liskov",
            "MIT",
            "liskov@example.edu",
            "+1 555 5",
            true,
        ),
        (
            "Donald",
            "Knuth",
            "Stanford",
            "knuth@example.edu",
            "+1 650 6",
            false,
        ),
        (
            "Lovisa",
            "Ahlberg",
            "Love Shop",
            "lovisa@example.se",
            "+46 8 7",
            false,
        ),
        (
            "Ken",
            "Thompson",
            "Bell Labs",
            "ken@example.com",
            "+1 908 8",
            false,
        ),
    ];
    let mut customers = Vec::new();
    for (i, (first, last, company, email, phone, archived)) in people.into_iter().enumerate() {
        let created = hub
            .create_customer(json!({
                "external_id": format!("X-{i:03}"), "first_name": first, "last_name": last,
                "company": company, "email": email, "phone": phone, "archived": archived,
                "phone_alt": format!("alt-{i}"),
            }))
            .await;
        customers.push(created);
    }
    // Two without names, so the last_name order has ties broken by id.
    for i in 8..10 {
        customers.push(
            hub.create_customer(json!({"external_id": format!("X-{i:03}")}))
                .await,
        );
    }
    // Some updates, so updated_at order differs from created_at order.
    for i in [2, 0, 5] {
        let id = customers[i]["id"].as_str().expect("id").to_owned();
        let reply = call(
            hub.patch(&format!("/v1/customers/{id}"))
                .json(&json!({"note": "touched"})),
        )
        .await;
        assert_eq!(reply.status, 200);
        customers[i] = reply.body;
    }
    customers
}

async fn every_filter_under_every_sort_selects_exactly_its_customers(hub: TestHub) {
    let customers = seed(&hub).await;
    let middle = sorted(customers.clone(), "created_at")[4]["created_at"]
        .as_str()
        .expect("ts")
        .to_owned();
    let recent = sorted(customers.clone(), "updated_at")[6]["updated_at"]
        .as_str()
        .expect("ts")
        .to_owned();
    type Predicate = Box<dyn Fn(&Value) -> bool>;
    let m = middle.clone();
    let m2 = middle.clone();
    let r = recent.clone();
    let r2 = recent.clone();
    let cases: Vec<(String, Predicate)> = vec![
        (String::new(), Box::new(|_| true)),
        (
            format!("created_after={m}"),
            Box::new(move |c| text(c, "created_at") >= m),
        ),
        (
            format!("created_before={m2}"),
            Box::new(move |c| text(c, "created_at") < m2),
        ),
        (
            format!("updated_after={r}"),
            Box::new(move |c| text(c, "updated_at") >= r),
        ),
        (
            format!("updated_before={r2}"),
            Box::new(move |c| text(c, "updated_at") < r2),
        ),
        (
            "email=GRACE@example.com".into(),
            Box::new(|c| text(c, "email") == "Grace@Example.COM"),
        ),
        (
            "phone=%2B1%20555%205".into(),
            Box::new(|c| text(c, "phone") == "+1 555 5"),
        ),
        (
            "phone=alt-3".into(),
            Box::new(|c| text(c, "phone_alt") == "alt-3"),
        ),
        ("phone=%2B1%20555".into(), Box::new(|_| false)),
        (
            "external_id=X-004".into(),
            Box::new(|c| text(c, "external_id") == "X-004"),
        ),
        ("external_id=x-004".into(), Box::new(|_| false)),
        ("archived=true".into(), Box::new(|c| c["archived"] == true)),
        (
            "archived=false".into(),
            Box::new(|c| c["archived"] == false),
        ),
        ("archived=any".into(), Box::new(|_| true)),
        (
            "q=LOV".into(),
            Box::new(|c| {
                ["Lovelace", "Lovisa"].contains(&text(c, "last_name").as_str())
                    || text(c, "first_name") == "Lovisa"
            }),
        ),
        (
            "q=%2B1%20555".into(),
            Box::new(|c| text(c, "phone").starts_with("+1 555")),
        ),
        (
            "q=x-00".into(),
            Box::new(|c| text(c, "external_id").starts_with("X-00")),
        ),
        ("q=example.edu".into(), Box::new(|_| false)),
        (
            format!("archived=false&q=l&created_after={middle}"),
            Box::new(move |c| {
                c["archived"] == false
                    && text(c, "created_at") >= middle
                    && [
                        "first_name",
                        "last_name",
                        "company",
                        "email",
                        "external_id",
                        "name",
                    ]
                    .iter()
                    .any(|f| {
                        let v = text(c, f).to_lowercase();
                        v.starts_with('l') || v.split_whitespace().any(|w| w.starts_with('l'))
                    })
            }),
        ),
    ];
    for (query, predicate) in &cases {
        for sort in SORTS {
            let expected: Vec<Value> = sorted(
                customers.iter().filter(|c| predicate(c)).cloned().collect(),
                sort,
            );
            let got = walk(&hub, &format!("sort={sort}&{query}"), 2).await;
            assert_eq!(ids(&got), ids(&expected), "sort={sort}&{query}");
            assert_eq!(got, expected, "documents of sort={sort}&{query}");
        }
    }
    // The combined case selects something, so it proves the AND.
    assert!(!cases.last().map(|(q, _)| q).expect("case").is_empty());
}

async fn time_windows_include_after_and_exclude_before(hub: TestHub) {
    let customers = seed(&hub).await;
    let third = &sorted(customers, "created_at")[3];
    let at = third["created_at"].as_str().expect("ts");
    let encoded = at.replace('+', "%2B");
    let from = walk(&hub, &format!("created_after={encoded}"), 100).await;
    assert_eq!(from[0]["id"], third["id"], "after is inclusive");
    let before = walk(&hub, &format!("created_before={encoded}"), 100).await;
    assert_eq!(before.len(), 3, "before is exclusive");
    assert!(!ids(&before).contains(&third["id"].as_str().expect("id").to_owned()));
    let exactly = walk(
        &hub,
        &format!(
            "created_after={encoded}&created_before={}",
            Timestamp::from_micros(Timestamp::parse_rfc3339(at).expect("ts").as_micros() + 1)
        ),
        100,
    )
    .await;
    assert_eq!(ids(&exactly), [third["id"].as_str().expect("id")]);
    // Any offset is accepted and means the same instant.
    let shifted = walk(&hub, "updated_after=2000-01-01T02:00:00%2B02:00", 100).await;
    assert_eq!(shifted.len(), 10);
    let none = walk(&hub, "updated_before=2000-01-01T00:00:00Z", 100).await;
    assert!(none.is_empty());
}

async fn q_is_a_case_insensitive_prefix_of_names_email_phone_company_and_external_id(hub: TestHub) {
    seed(&hub).await;
    let names = |list: Vec<Value>| -> BTreeSet<String> {
        list.iter().map(|c| text(c, "last_name")).collect()
    };
    let q = |term: &'static str| {
        let hub = &hub;
        async move { names(walk(hub, &format!("q={term}"), 100).await) }
    };
    let set =
        |items: &[&str]| -> BTreeSet<String> { items.iter().map(|s| s.to_string()).collect() };
    assert_eq!(q("ada").await, set(&["Lovelace"]), "first name");
    assert_eq!(q("TUR").await, set(&["Turing"]), "last name");
    assert_eq!(q("bell").await, set(&["Thompson"]), "company");
    assert_eq!(q("labs").await, set(&["Thompson"]), "a word of the company");
    assert_eq!(q("grace%40ex").await, set(&["Hopper"]), "email");
    assert_eq!(q("%2B46").await, set(&["Ahlberg"]), "phone");
    assert_eq!(q("alt-6").await, set(&["Ahlberg"]), "second phone");
    assert_eq!(q("x-007").await, set(&["Thompson"]), "external id");
    assert_eq!(
        q("love").await,
        set(&["Lovelace", "Ahlberg"]),
        "name and company word"
    );
    assert_eq!(q("ovelace").await, set(&[]), "a prefix, not an infix");
    assert_eq!(q("zzz").await, set(&[]));
    // An empty q is no filter.
    assert_eq!(walk(&hub, "q=", 100).await.len(), 10);
}

async fn search_terms_follow_updates_and_deletes(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"external_id": "s-1", "last_name": "Before"}))
        .await;
    let id = customer["id"].as_str().expect("id");
    assert_eq!(walk(&hub, "q=before", 10).await.len(), 1);
    let reply = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"last_name": "After"})),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(walk(&hub, "q=before", 10).await.is_empty());
    assert_eq!(walk(&hub, "q=after", 10).await.len(), 1);
    // An update of fields no term is made of leaves the terms as they are.
    let reply = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"note": "not searchable", "tags": ["t"]})),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(walk(&hub, "q=after", 10).await.len(), 1);
    assert_eq!(hub.count_rows("customer_terms").await, 2, "s-1 and after");
    // Each term row carries whether its customer is archived (`archived=true` reads those
    // rows only), so archiving and restoring rewrite them.
    for (archived, found_archived, found_active) in [(true, 1, 0), (false, 0, 1)] {
        let reply = call(
            hub.patch(&format!("/v1/customers/{id}"))
                .json(&json!({"archived": archived})),
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            walk(&hub, "q=after&archived=true", 10).await.len(),
            found_archived
        );
        assert_eq!(
            walk(&hub, "q=after&archived=false", 10).await.len(),
            found_active
        );
    }
    assert_eq!(hub.count_rows("customer_terms").await, 2);
    // The sync path maintains them too.
    let synced = hub
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "s-1", "last_name": "Synced"},
            {"external_id": "s-2", "company": "Synced Company"},
        ]}))
        .await;
    assert_eq!(synced.status, 200, "{}", synced.body);
    assert!(walk(&hub, "q=after", 10).await.is_empty());
    assert_eq!(walk(&hub, "q=synced", 10).await.len(), 2);
    let synced = hub
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "s-2", "note": "not searchable"},
        ]}))
        .await;
    assert_eq!(
        synced.body["results"][0]["status"], "updated",
        "{}",
        synced.body
    );
    assert_eq!(walk(&hub, "q=synced", 10).await.len(), 2);
    // Archived by sync, an update of no searchable field.
    let synced = hub
        .sync(&json!({"key": "external_id", "customers": [
            {"external_id": "s-2", "archived": true},
        ]}))
        .await;
    assert_eq!(synced.status, 200, "{}", synced.body);
    let archived = walk(&hub, "q=synced&archived=true", 10).await;
    assert_eq!(text(&archived[0], "external_id"), "s-2");
    assert_eq!(archived.len(), 1);
    let reply = call(hub.delete(&format!("/v1/customers/{id}"))).await;
    assert_eq!(reply.status, 204);
    assert_eq!(walk(&hub, "q=synced", 10).await.len(), 1);
    // Left: "s-2", "synced company", "synced", "company".
    assert_eq!(
        hub.count_rows("customer_terms").await,
        4,
        "no terms of erased customers"
    );
}

/// A customer's term rows, each as one text: the term and every column the search reads.
async fn term_rows_of(hub: &TestHub, id: &str) -> Vec<String> {
    let sql = format!(
        "SELECT term || '|' || multiword || '|' || name_prefix || '|' || name_bucket || '|' \
         || last_name_sort || '|' || archived FROM customer_terms WHERE customer_id = '{id}'"
    );
    let mut rows: Vec<String> = column_bytes(&hub.database_url, &sql)
        .await
        .into_iter()
        .map(|row| String::from_utf8(row.expect("not null")).expect("text"))
        .collect();
    rows.sort();
    rows
}

/// After any update of a searchable field, a customer's term rows are exactly the rows a new
/// customer with the same fields gets, whichever field changed: whether the update rewrites
/// every row (the last name, `archived`) or only the terms that go and come.
async fn an_updated_customer_has_the_term_rows_of_a_new_one_with_its_fields(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"username": "ada", "first_name": "Ada",
            "last_name": "Lovelace", "company": "Analytical Engines", "phone": "+44 20 1234"}))
        .await;
    let id = customer["id"].as_str().expect("id").to_owned();
    let steps = [
        (
            "a first name of two words",
            json!({"first_name": "Augusta Ada"}),
        ),
        (
            "another last name: every row moves",
            json!({"last_name": "King"}),
        ),
        ("archived: every row carries it", json!({"archived": true})),
        ("restored", json!({"archived": false})),
        ("a company word less", json!({"company": "Engines"})),
        ("a phone cleared", json!({"phone": null})),
        (
            "a first name gone and a company word more",
            json!({"first_name": null, "company": "Engines of Difference"}),
        ),
    ];
    for (n, (step, patch)) in steps.into_iter().enumerate() {
        let reply = call(hub.patch(&format!("/v1/customers/{id}")).json(&patch)).await;
        assert_eq!(reply.status, 200, "{step}: {}", reply.body);
        assert_eq!(
            term_rows_of(&hub, &id).await,
            term_rows_of_a_twin(&hub, &reply.body, &format!("twin-{n}")).await,
            "{step}"
        );
    }
    // The same through bulk sync, by a key that is no term, in one batch with a customer whose
    // every row changes (another last name) and one whose terms stay (a note).
    let grace = hub
        .create_customer(json!({"username": "grace", "first_name": "Grace",
            "last_name": "Hopper", "company": "Navy"}))
        .await;
    let linus = hub
        .create_customer(json!({"username": "linus", "last_name": "Torvalds"}))
        .await;
    let synced = hub
        .sync(&json!({"key": "username", "customers": [
            {"username": "ada", "first_name": "Ada", "company": "Difference Engines"},
            {"username": "grace", "last_name": "Murray Hopper"},
            {"username": "linus", "note": "not searchable"},
        ]}))
        .await;
    let statuses: Vec<&Value> = (0..3)
        .map(|i| &synced.body["results"][i]["status"])
        .collect();
    assert_eq!(statuses, [&json!("updated"); 3], "{}", synced.body);
    for (customer, expected) in [
        (
            &customer,
            json!({"first_name": "Ada", "company": "Difference Engines"}),
        ),
        (&grace, json!({"last_name": "Murray Hopper"})),
        (&linus, json!({"note": "not searchable"})),
    ] {
        let id = customer["id"].as_str().expect("id");
        let stored = call(hub.get(&format!("/v1/customers/{id}"))).await.body;
        for (field, value) in expected.as_object().expect("fields") {
            assert_eq!(&stored[field], value, "{field} of {id}");
        }
        let username = stored["username"].as_str().expect("username");
        assert_eq!(
            term_rows_of(&hub, id).await,
            term_rows_of_a_twin(&hub, &stored, &format!("twin-sync-{username}")).await,
            "bulk sync, {username}"
        );
    }
}

/// Term rows written by another derivation than this hub's (an older version's) are rebuilt
/// at start: updates delete the rows of the terms they remove by this hub's derivation.
async fn term_rows_of_another_derivation_are_rebuilt_at_start(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"first_name": "Ada", "last_name": "Lovelace"}))
        .await;
    let id = customer["id"].as_str().expect("id");
    let rows = term_rows_of(&hub, id).await;
    execute(
        &hub.database_url,
        &format!(
            "INSERT INTO customer_terms (term, customer_id, multiword, name_prefix, \
             last_name_sort, name_bucket, archived) \
             VALUES ('stale', '{id}', 1 = 0, 1 = 0, 'lovelace', 0, 1 = 0)"
        ),
    )
    .await;
    let reopen = || async {
        drop(
            clientele_store::connect(&clientele_store::StoreConfig::new(&hub.database_url))
                .await
                .expect("reopen"),
        );
    };
    reopen().await;
    assert_eq!(
        term_rows_of(&hub, id).await.len(),
        rows.len() + 1,
        "rows of this derivation are left alone"
    );
    execute(
        &hub.database_url,
        "UPDATE customer_terms_backfill SET version = 0",
    )
    .await;
    reopen().await;
    assert_eq!(term_rows_of(&hub, id).await, rows);
    let reply = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"first_name": "Augusta"})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        term_rows_of(&hub, id).await,
        term_rows_of_a_twin(&hub, &reply.body, "twin").await
    );
}

/// The term rows of a new customer created with the searchable fields and the `archived` of
/// `customer` (as the API returns it), under another username (no term).
async fn term_rows_of_a_twin(hub: &TestHub, customer: &Value, username: &str) -> Vec<String> {
    let mut twin = json!({"username": username});
    for field in ["first_name", "last_name", "company", "phone", "archived"] {
        twin[field] = customer[field].clone();
    }
    let twin = hub.create_customer(twin).await;
    term_rows_of(hub, twin["id"].as_str().expect("id")).await
}

async fn bad_filter_values_are_named(hub: TestHub) {
    for (query, field, code) in [
        (
            "created_after=yesterday",
            "created_after",
            "invalid_timestamp",
        ),
        (
            "created_before=2026-13-01T00:00:00Z",
            "created_before",
            "invalid_timestamp",
        ),
        (
            "updated_after=2026-01-01",
            "updated_after",
            "invalid_timestamp",
        ),
        ("updated_before=", "updated_before", "invalid_timestamp"),
        ("archived=yes", "archived", "invalid_value"),
        ("q=a%00b", "q", "invalid_value"),
        ("email=%01", "email", "invalid_value"),
        ("phone=%0a", "phone", "invalid_value"),
        ("external_id=%00", "external_id", "invalid_value"),
        ("sort=first_name", "sort", "invalid_sort"),
        ("limit=1001", "limit", "out_of_range"),
    ] {
        let reply = call(hub.get(&format!("/v1/customers?{query}"))).await;
        assert_invalid(&reply, &[(field, code)]);
    }
    let long = "x".repeat(1001);
    let reply = call(hub.get(&format!("/v1/customers?q={long}"))).await;
    assert_invalid(&reply, &[("q", "too_long")]);
}

async fn a_cursor_walk_is_stable_while_other_customers_change(hub: TestHub) {
    let mut stable = Vec::new();
    for i in 0..12 {
        let c = hub
            .create_customer(
                json!({"external_id": format!("keep-{i}"), "last_name": format!("K{i}")}),
            )
            .await;
        stable.push(c["id"].as_str().expect("id").to_owned());
    }
    let mut churn = Vec::new();
    for i in 0..12 {
        let c = hub
            .create_customer(
                json!({"external_id": format!("churn-{i}"), "last_name": format!("C{i}")}),
            )
            .await;
        churn.push(c["id"].as_str().expect("id").to_owned());
    }
    for sort in SORTS {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut step = 0;
        loop {
            let mut path = format!("/v1/customers?limit=3&sort={sort}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let reply = call(hub.get(&path)).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            seen.extend(ids(reply.body["data"].as_array().expect("data")));
            // Between pages: other customers are updated, renamed, deleted and created.
            let victim = &churn[step % churn.len()];
            let _ = call(
                hub.patch(&format!("/v1/customers/{victim}"))
                    .json(&json!({"last_name": format!("A{step}")})),
            )
            .await;
            if step % 3 == 0 {
                let gone = churn.remove(0);
                let _ = call(hub.delete(&format!("/v1/customers/{gone}"))).await;
                let c = hub
                    .create_customer(
                        json!({"external_id": format!("new-{sort}-{step}"), "last_name": "N"}),
                    )
                    .await;
                churn.push(c["id"].as_str().expect("id").to_owned());
            }
            step += 1;
            match reply.body["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        // Modified customers may move (by updated_at or name); unmodified ones come once.
        for id in &stable {
            let times = seen.iter().filter(|s| *s == id).count();
            assert_eq!(times, 1, "sort={sort}: unmodified {id} came {times} times");
        }
    }
}

async fn customers_stored_before_the_search_index_are_indexed_at_start(hub: TestHub) {
    // 1007 customers: the backfill takes more than one page of 1000.
    for i in 0..7 {
        hub.create_customer(json!({"external_id": format!("old-{i}"), "last_name": "Early"}))
            .await;
    }
    let sync: Vec<Value> = (0..1000)
        .map(|i| json!({"external_id": format!("bulk-{i}"), "last_name": "Bulk"}))
        .collect();
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": sync}))
        .await;
    assert_eq!(reply.status, 200);
    // As a database from before the index: no terms, and the backfill still due.
    execute(&hub.database_url, "DELETE FROM customer_terms").await;
    execute(
        &hub.database_url,
        "UPDATE customer_terms_backfill SET done = (1 = 0)",
    )
    .await;
    assert!(walk(&hub, "q=early", 100).await.is_empty());
    let store = clientele_store::connect(&clientele_store::StoreConfig::new(&hub.database_url))
        .await
        .expect("reopen");
    drop(store);
    assert_eq!(walk(&hub, "q=early", 100).await.len(), 7);
    assert_eq!(walk(&hub, "q=bulk", 1000).await.len(), 1000);
    let before = hub.count_rows("customer_terms").await;
    // Done once: a second start indexes nothing again.
    execute(
        &hub.database_url,
        "DELETE FROM customer_terms WHERE term = 'early'",
    )
    .await;
    drop(
        clientele_store::connect(&clientele_store::StoreConfig::new(&hub.database_url))
            .await
            .expect("reopen"),
    );
    assert_eq!(hub.count_rows("customer_terms").await, before - 7);
}

/// From 3,000 matching terms on, the search walks the sort order and probes terms instead of
/// sorting every match; the pages are the same either way.
async fn a_q_with_many_matches_pages_through_all_of_them(hub: TestHub) {
    for batch in 0..11 {
        let items: Vec<Value> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                json!({"external_id": format!("m-{n:05}"), "last_name": format!("Many{}", n % 7),
                       "archived": n >= 10_995})
            })
            .collect();
        let reply = hub
            .sync(&json!({"key": "external_id", "customers": items}))
            .await;
        assert_eq!(reply.status, 200);
    }
    for sort in ["created_at", "-updated_at", "last_name"] {
        let all = walk(&hub, &format!("q=many&sort={sort}"), 1000).await;
        assert_eq!(all.len(), 11_000, "sort={sort}");
        let unique: BTreeSet<String> = ids(&all).into_iter().collect();
        assert_eq!(unique.len(), 11_000);
        assert_eq!(all, sorted(all.clone(), sort), "sort={sort}");
    }
    // A wide time window on another column than the sort key walks the sort order instead.
    let all = walk(&hub, "sort=created_at", 1000).await;
    let since = all[500]["updated_at"]
        .as_str()
        .expect("ts")
        .replace('+', "%2B");
    let expected: Vec<Value> = sorted(
        all.iter()
            .filter(|c| text(c, "updated_at") >= text(&all[500], "updated_at"))
            .cloned()
            .collect(),
        "-created_at",
    );
    let got = walk(
        &hub,
        &format!("updated_after={since}&sort=-created_at"),
        1000,
    )
    .await;
    assert_eq!(ids(&got), ids(&expected));
    // Matches too rare in the sort order for the probing window: the terms decide.
    let archived = walk(&hub, "q=many&archived=true", 100).await;
    assert_eq!(archived.len(), 5);
    let one = walk(&hub, "q=m-10997", 100).await;
    assert_eq!(one.len(), 1);
}

/// Whether `q` is a prefix of one of the customer's terms (docs/search.md), computed here.
fn matches_q(c: &Value, q: &str) -> bool {
    let q = q.to_lowercase();
    [
        "first_name",
        "last_name",
        "name",
        "company",
        "email",
        "phone",
        "phone_alt",
        "external_id",
    ]
    .iter()
    .any(|field| {
        let value = text(c, field).to_lowercase();
        !value.is_empty()
            && (value.starts_with(&q) || value.split_whitespace().any(|w| w.starts_with(&q)))
    })
}

/// With 3,000 matching terms and more under `sort=last_name`, the customers whose last name
/// starts with `q` are read by seeking the sort order to the prefix and merged with the other
/// matches (probed in the sort order when they are many, read through their terms when few);
/// the pages must be those of the plain selection, across cursors that cross from one part to
/// the other.
async fn a_common_last_name_prefix_is_merged_with_the_other_matches_in_name_order(hub: TestHub) {
    let last_names = ["Aalto", "Malm", "Mann-", "Mann", "Zorn"];
    for batch in 0..10 {
        let items: Vec<Value> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i;
                let mut last = last_names[n % 5].to_owned();
                if last.ends_with('-') {
                    last.push_str(&(n % 50).to_string());
                }
                let mut item = json!({
                    "external_id": format!("n-{n:05}"),
                    "first_name": if n % 2 == 0 { "Mats" } else { "Anna" },
                    "last_name": last,
                    "archived": n % 10 == 3,
                });
                if n % 97 == 0 {
                    item["company"] = json!("Mango Oy");
                }
                item
            })
            .collect();
        let reply = hub
            .sync(&json!({"key": "external_id", "customers": items}))
            .await;
        assert_eq!(reply.status, 200);
    }
    // Some renames, so that a term's flag and bucket of the last-name order must follow its
    // customer's new last name, into buckets before, between and after the others: no last name,
    // a digit, a letter beyond ASCII.
    let all = walk(&hub, "sort=created_at", 1000).await;
    let renames = [json!("Aaltonen"), json!(null), json!("3rd"), json!("Öberg")];
    for (n, c) in all.iter().step_by(101).enumerate() {
        let id = c["id"].as_str().expect("id");
        let reply = call(
            hub.patch(&format!("/v1/customers/{id}"))
                .json(&json!({"last_name": renames[n % renames.len()]})),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let all = walk(&hub, "sort=created_at", 1000).await;
    let middle = text(&all[all.len() / 2], "created_at");
    // "ma": 6,000 in the range and 2,000+ matches before and after it ("Mats Aalto", "Mats
    // Zorn"); "man": 4,000 in the range, the rest few ("Mango Oy"); "mal": no others.
    for query in [
        "q=ma".to_owned(),
        "q=man".to_owned(),
        "q=mal".to_owned(),
        "q=mats".to_owned(),
        // Whole values of several words only ("Mats Zorn"), not the words of any.
        "q=mats z".to_owned(),
        "q=ma&archived=true".to_owned(),
        "q=man&archived=false".to_owned(),
        format!("q=ma&created_after={}", middle.replace('+', "%2B")),
    ] {
        let (q, rest) = query[2..].split_once('&').unwrap_or((&query[2..], ""));
        let expected: Vec<Value> = all
            .iter()
            .filter(|c| matches_q(c, q))
            .filter(|c| match rest {
                "archived=true" => c["archived"] == true,
                "archived=false" => c["archived"] == false,
                "" => true,
                _ => text(c, "created_at") >= middle,
            })
            .cloned()
            .collect();
        assert!(expected.len() > 100, "{query}");
        let expected = sorted(expected, "last_name");
        for limit in [700, 1000] {
            let got = walk(&hub, &format!("sort=last_name&{query}"), limit).await;
            assert_eq!(
                ids(&got),
                ids(&expected),
                "sort=last_name&{query}, limit {limit}"
            );
        }
    }
}

/// Sends `customers` by sync, asserting that every one was written.
async fn sync_all(hub: &TestHub, customers: Vec<Value>) {
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": customers}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// A wide time window (3,000 customers or more) on one time column sorted by the other is split
/// at the window's edge: the customers whose sort key lies inside it, through the sort order's
/// index, and the ones modified since their creation past it, through the partial index of
/// modified customers (docs/search.md). Generated windows on both columns, alone and with
/// `archived` and a `q` common enough to be probed, walked page by page under every sort, must
/// be exactly the customers selected here.
async fn time_windows_on_either_column_page_through_their_customers_under_every_sort(hub: TestHub) {
    // Eight batches of 1,000 (one creation time each), with modifications between them of
    // customers of earlier batches, some twice: modified customers are updated at the creation
    // time of later ones, on both sides of every edge.
    let modifications: [&[(usize, usize)]; 8] = [
        &[],
        &[],
        &[(0, 5)],
        &[],
        &[(1, 4), (2, 9)],
        &[],
        &[(3, 3), (0, 6)],
        &[(5, 7), (4, 2)],
    ];
    for (batch, modified) in modifications.iter().enumerate() {
        for &(earlier, every) in *modified {
            let items = (0..1000)
                .step_by(every)
                .map(|i| json!({"external_id": format!("w-{earlier}-{i:03}"), "note": format!("in {batch}")}))
                .collect();
            sync_all(&hub, items).await;
        }
        let items = (0..1000)
            .map(|i| {
                let last_name = if i % 4 == 0 {
                    "Other".to_owned()
                } else {
                    format!("Win{}", i % 3)
                };
                json!({"external_id": format!("w-{batch}-{i:03}"), "last_name": last_name,
                       "archived": i % 10 == 0})
            })
            .collect();
        sync_all(&hub, items).await;
    }
    let all = walk(&hub, "sort=created_at", 1000).await;
    assert_eq!(all.len(), 8000);
    let modified = all
        .iter()
        .filter(|c| text(c, "updated_at") > text(c, "created_at"))
        .count();
    assert!(modified > 1000, "{modified} modified");
    let mut instants: Vec<String> = all
        .iter()
        .flat_map(|c| [text(c, "created_at"), text(c, "updated_at")])
        .collect();
    instants.sort();
    instants.dedup();

    // The two pages of the benchmarks: at the middle customer's creation. And a window whose
    // edge is the instant of the last modifications: customers updated exactly at the edge.
    let middle = text(&all[4000], "created_at");
    let last_modified = all
        .iter()
        .filter(|c| text(c, "updated_at") > text(c, "created_at"))
        .map(|c| text(c, "updated_at"))
        .max()
        .expect("modified customers");
    let mut cases: Vec<[Option<String>; 4]> = vec![
        [None, Some(middle.clone()), None, None],
        [None, None, Some(middle.clone()), None],
        [None, Some(last_modified.clone()), None, None],
        [None, None, Some(last_modified), None],
    ];
    // Generated: per column no window, one bound, or both in order; each bound one of the
    // instants (a modified customer's updated_at among them, so that an edge falls on one).
    let mut seed: u64 = 0x5eed_0f71;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize % n
    };
    for _ in 0..20 {
        let mut window = || {
            let (a, b) = (next(instants.len()), next(instants.len()));
            let (from, before) = (instants[a.min(b)].clone(), instants[a.max(b)].clone());
            match next(4) {
                0 => [None, None],
                1 => [Some(from), None],
                2 => [None, Some(before)],
                _ => [Some(from), Some(before)],
            }
        };
        let ([ca, cb], [ua, ub]) = (window(), window());
        cases.push([ca, cb, ua, ub]);
    }
    let names = [
        "created_after",
        "created_before",
        "updated_after",
        "updated_before",
    ];
    let mut split_with_modified = 0;
    for (n, bounds) in cases.iter().enumerate() {
        let extra = ["", "&archived=false", "&q=win", "&archived=true&q=win"][n % 4];
        let limit = [400, 97, 1000][n % 3];
        let selects = |c: &Value| {
            let (created, updated) = (text(c, "created_at"), text(c, "updated_at"));
            let times = [&created, &created, &updated, &updated];
            let within = bounds
                .iter()
                .zip(times)
                .enumerate()
                .all(|(i, (bound, time))| {
                    bound
                        .as_ref()
                        .is_none_or(|b| if i % 2 == 0 { time >= b } else { time < b })
                });
            within
                && (!extra.contains("archived=false") || c["archived"] == false)
                && (!extra.contains("archived=true") || c["archived"] == true)
                && (!extra.contains("q=win") || text(c, "last_name").starts_with("Win"))
        };
        let query: String = bounds
            .iter()
            .zip(names)
            .filter_map(|(bound, name)| bound.as_ref().map(|b| format!("&{name}={b}")))
            .collect::<String>()
            + extra;
        let selected: Vec<Value> = all.iter().filter(|c| selects(c)).cloned().collect();
        // Matches past an edge that only modified customers cross: what the split's second
        // part must find.
        let past_edge = |sort_col: &str, other: usize, before: bool| {
            bounds[other].as_ref().is_some_and(|edge| {
                selected.iter().any(|c| {
                    let key = text(c, sort_col);
                    if before { key >= *edge } else { key < *edge }
                })
            })
        };
        if past_edge("updated_at", 1, true) || past_edge("created_at", 2, false) {
            split_with_modified += 1;
        }
        for sort in SORTS {
            let expected = sorted(selected.clone(), sort);
            let got = walk(&hub, &format!("sort={sort}{query}"), limit).await;
            assert_eq!(
                ids(&got),
                ids(&expected),
                "case {n}: sort={sort}{query}, limit {limit}"
            );
        }
    }
    assert!(
        split_with_modified >= 6,
        "{split_with_modified} cases cross an edge"
    );
}
