//! The change feed (`GET /v1/changes`) over HTTP, on SQLite and PostgreSQL: the event shape for
//! creates, updates and deletes; parameter checks; long polls that wake at once on a change
//! (also across two hub processes on one PostgreSQL database); retention with 410
//! `cursor_expired` and the list's feed position to resync from; the team scope of events; and
//! a stress test where a follower, reading while many writers commit, sees every change exactly
//! once in commit order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clientele_domain::{ChangeQuery, Scope, Timestamp};
use clientele_testkit::{
    ADMIN_SECRET, HubProcess, TestHub, assert_invalid, assert_problem, call, execute,
    fresh_postgres_database, hub_tests,
};
use futures::future::join_all;
use serde_json::{Value, json};

hub_tests!(
    events_carry_each_change_with_the_customer_as_of_it,
    an_erasure_takes_the_customers_documents_out_of_the_feed,
    parameters_are_checked,
    a_long_poll_wakes_at_once_on_a_change,
    a_long_poll_returns_empty_at_its_timeout,
    a_key_revoked_during_a_long_poll_is_shown_nothing,
    a_purged_position_is_expired_and_the_list_position_resyncs,
    list_then_follow_misses_nothing,
    a_team_scope_sees_only_its_teams_changes,
    a_team_scoped_key_follows_only_its_teams_customers,
    concurrent_writers_and_a_follower_see_every_change_once_in_commit_order,
);

/// `GET /v1/changes` with this query, asserting 200; returns the body.
async fn feed(hub: &TestHub, query: &str) -> Value {
    let reply = call(hub.get(&format!("/v1/changes?{query}"))).await;
    assert_eq!(reply.status, 200, "feed failed: {}", reply.body);
    reply.body
}

fn events(page: &Value) -> Vec<Value> {
    page["data"].as_array().expect("data").clone()
}

/// Every event from `after` to the end, in pages of `limit`.
async fn read_all(hub: &TestHub, mut after: i64, limit: u32) -> Vec<Value> {
    let mut all = Vec::new();
    loop {
        let page = feed(hub, &format!("after={after}&limit={limit}")).await;
        let batch = events(&page);
        let next = page["next_after"].as_i64().expect("next_after");
        if batch.is_empty() {
            if next == after {
                return all;
            }
            // A team-scoped key moves past changes it may not see.
            assert!(next > after, "the position never goes back");
            after = next;
            continue;
        }
        let last = batch.last().expect("last")["seq"].as_i64().expect("seq");
        if batch.len() == limit as usize {
            assert_eq!(next, last, "a full page stops at its last event");
        } else {
            assert!(
                next >= last,
                "a short page moves at least to its last event"
            );
        }
        after = next;
        all.extend(batch);
    }
}

async fn events_carry_each_change_with_the_customer_as_of_it(hub: TestHub) {
    let empty = feed(&hub, "").await;
    assert_eq!(empty, json!({"data": [], "next_after": 0}));

    let created = hub
        .create_customer(json!({"external_id": "e-1", "first_name": "Ada"}))
        .await;
    let id = created["id"].as_str().expect("id");
    let patched = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"last_name": "Lovelace"})),
    )
    .await;
    assert_eq!(patched.status, 200);
    // An unchanged write records nothing.
    let same = call(
        hub.patch(&format!("/v1/customers/{id}"))
            .json(&json!({"last_name": "Lovelace"})),
    )
    .await;
    assert_eq!(same.status, 200);
    let before_erasure = events(&feed(&hub, "after=0").await);
    assert_eq!(before_erasure.len(), 2, "{before_erasure:?}");
    assert_eq!(before_erasure[0]["customer"], created);
    assert_eq!(before_erasure[1]["customer"], patched.body);
    assert_eq!(before_erasure[1]["customer"]["last_name"], "Lovelace");
    let deleted = call(hub.delete(&format!("/v1/customers/{id}"))).await;
    assert_eq!(deleted.status, 204);

    let page = feed(&hub, "after=0").await;
    let list = events(&page);
    assert_eq!(list.len(), 3, "{page}");
    let types: Vec<&str> = list
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["created", "updated", "deleted"]);
    for event in &list {
        let keys: BTreeSet<&str> = event
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let expected: BTreeSet<&str> = [
            "seq",
            "type",
            "customer_id",
            "external_id",
            "version",
            "at",
            "customer",
        ]
        .into();
        assert_eq!(keys, expected);
        assert_eq!(event["customer_id"], json!(id));
        assert_eq!(event["external_id"], json!("e-1"));
        assert!(
            Timestamp::parse_rfc3339(event["at"].as_str().expect("at")).is_some(),
            "{event}"
        );
    }
    // The deletion erased the customer: its earlier documents left the feed with it.
    assert!(
        list.iter().all(|event| event["customer"].is_null()),
        "{page}"
    );
    for (event, before) in list.iter().zip(&before_erasure) {
        assert_eq!(event["seq"], before["seq"]);
    }
    let versions: Vec<i64> = list
        .iter()
        .map(|e| e["version"].as_i64().expect("v"))
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    let seqs: Vec<i64> = list
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(page["next_after"], json!(seqs[2]));

    // Paging with limit and after.
    let first = feed(&hub, "limit=2").await;
    assert_eq!(events(&first).len(), 2);
    assert_eq!(first["next_after"], json!(seqs[1]));
    let rest = feed(&hub, &format!("after={}&limit=2", seqs[1])).await;
    assert_eq!(events(&rest), vec![list[2].clone()]);
    let end = feed(&hub, &format!("after={}", seqs[2])).await;
    assert_eq!(end, json!({"data": [], "next_after": seqs[2]}));
}

/// DELETE is an erasure, by id, by key and as a sync item, even of a customer created earlier
/// in the same batch: none of the erased customers' documents stays in the feed, while the
/// events themselves stay (a follower still learns of the deletion), and a customer left alone
/// keeps its documents.
async fn an_erasure_takes_the_customers_documents_out_of_the_feed(hub: TestHub) {
    let sync = |customers: Value| {
        let hub = &hub;
        async move {
            let reply = call(
                hub.post("/v1/customers/sync")
                    .json(&json!({"key": "external_id", "customers": customers})),
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            reply.body
        }
    };
    sync(json!([
        {"external_id": "kept", "email": "kept@example.com"},
        {"external_id": "by-item", "email": "by-item@example.com"},
        {"external_id": "by-key", "email": "by-key@example.com"},
    ]))
    .await;
    sync(json!([{"external_id": "by-item", "first_name": "Erin"}])).await;
    let report = sync(json!([
        {"external_id": "same-batch", "email": "same-batch@example.com"},
        {"external_id": "same-batch", "delete": true},
        {"external_id": "by-item", "delete": true},
    ]))
    .await;
    assert_eq!(report["summary"]["deleted"], 2, "{report}");
    let by_key = call(hub.delete("/v1/customers/external_id/by-key")).await;
    assert_eq!(by_key.status, 204);

    let all = read_all(&hub, 0, 1000).await;
    let text = Value::Array(all.clone()).to_string();
    for erased in ["by-item", "by-key", "same-batch"] {
        assert!(!text.contains(&format!("{erased}@example.com")), "{text}");
        let of_it: Vec<&Value> = all.iter().filter(|e| e["external_id"] == erased).collect();
        assert_eq!(
            of_it.last().expect("events")["type"],
            "deleted",
            "{of_it:?}"
        );
        assert!(of_it.iter().all(|e| e["customer"].is_null()), "{of_it:?}");
    }
    let kept: Vec<&Value> = all.iter().filter(|e| e["external_id"] == "kept").collect();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["customer"]["email"], "kept@example.com");
}

async fn parameters_are_checked(hub: TestHub) {
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("wait=61", "wait"),
    ] {
        let reply = call(hub.get(&format!("/v1/changes?{query}"))).await;
        assert_invalid(&reply, &[(field, "out_of_range")]);
    }
    for (query, field) in [
        ("after=-1", "after"),
        ("after=abc", "after"),
        ("after=1.5", "after"),
        ("limit=x", "limit"),
        ("wait=-1", "wait"),
        ("since=3", "since"),
    ] {
        let reply = call(hub.get(&format!("/v1/changes?{query}"))).await;
        assert_problem(&reply, 422, "validation_failed");
        assert_eq!(reply.body["errors"][0]["field"], json!(field), "{query}");
    }
    let ok = feed(&hub, "limit=1000&wait=0&after=0").await;
    assert_eq!(ok["next_after"], 0);
    let anonymous = call(hub.client.get(hub.url("/v1/changes"))).await;
    assert_problem(&anonymous, 401, "unauthorized");
}

/// Sends `poll` (a long poll), runs `write` 1.3 s later (when a once-a-second re-check would
/// answer only 0.7 s after it), and returns how long after the write the poll answered, and
/// the poll's body.
async fn wake_latency(
    poll: reqwest::RequestBuilder,
    write: impl Future<Output = ()>,
) -> (Duration, Value) {
    let write = async {
        tokio::time::sleep(Duration::from_millis(1300)).await;
        write.await;
        Instant::now()
    };
    let ((reply, answered), written) = tokio::join!(
        async {
            let reply = call(poll).await;
            (reply, Instant::now())
        },
        write
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    (answered.saturating_duration_since(written), reply.body)
}

async fn a_long_poll_wakes_at_once_on_a_change(hub: TestHub) {
    let write = async {
        hub.create_customer(json!({"external_id": "wake-me"})).await;
    };
    let (latency, body) = wake_latency(hub.get("/v1/changes?after=0&wait=30"), write).await;
    assert_eq!(events(&body).len(), 1, "{body}");
    assert_eq!(body["data"][0]["external_id"], "wake-me");
    assert!(
        latency < Duration::from_millis(500),
        "woke {latency:?} after the write"
    );
}

/// A key revoked while its long poll waits is refused when the poll wakes, not shown what was
/// written after the revocation (found in an audit).
async fn a_key_revoked_during_a_long_poll_is_shown_nothing(hub: TestHub) {
    let key = call(
        hub.post("/v1/api-keys")
            .json(&json!({"name": "poller", "role": "read"})),
    )
    .await;
    assert_eq!(key.status, 201, "{}", key.body);
    let poller = hub.as_key(key.body["secret"].as_str().expect("secret"));
    let id = key.body["id"].as_str().expect("id").to_owned();
    let write = async {
        // The poll is waiting by now (its answer would come at once otherwise).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let revoked = call(hub.delete(&format!("/v1/api-keys/{id}"))).await;
        assert_eq!(revoked.status, 204, "{}", revoked.body);
        hub.create_customer(json!({"external_id": "secret"})).await;
    };
    let (reply, ()) = tokio::join!(call(poller.get("/v1/changes?after=0&wait=15")), write);
    assert_problem(&reply, 401, "unauthorized");
}

async fn a_long_poll_returns_empty_at_its_timeout(hub: TestHub) {
    let started = Instant::now();
    let body = feed(&hub, "wait=1").await;
    let took = started.elapsed();
    assert_eq!(body, json!({"data": [], "next_after": 0}));
    assert!(
        took >= Duration::from_millis(950),
        "returned after {took:?}"
    );
    assert!(took < Duration::from_secs(5), "returned after {took:?}");
}

/// The list's feed position, checking that header and field agree.
async fn list_position(hub: &TestHub, query: &str) -> (Value, i64) {
    let reply = call(hub.get(&format!("/v1/customers?{query}"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let field = reply.body["feed_position"].as_i64().expect("feed_position");
    let header: i64 = reply
        .header("clientele-feed-position")
        .expect("Clientele-Feed-Position")
        .parse()
        .expect("a number");
    assert_eq!(field, header);
    (reply.body, field)
}

async fn a_purged_position_is_expired_and_the_list_position_resyncs(hub: TestHub) {
    let old = hub.create_customer(json!({"external_id": "old"})).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    hub.create_customer(json!({"external_id": "new"})).await;
    let all = read_all(&hub, 0, 100).await;
    assert_eq!(all.len(), 2);
    let first_seq = all[0]["seq"].as_i64().expect("seq");

    let purged = hub
        .state
        .store()
        .purge_changes(cutoff)
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    assert_eq!(hub.count_rows("changes").await, 1);
    let expired = call(hub.get("/v1/changes?after=0")).await;
    assert_problem(&expired, 410, "cursor_expired");
    assert_eq!(expired.body["errors"][0]["field"], "after");
    assert!(
        expired.body["detail"]
            .as_str()
            .expect("detail")
            .contains("feed_position"),
        "the detail says how to resync: {}",
        expired.body
    );
    // From the last purged change on, nothing is missing.
    let rest = read_all(&hub, first_seq, 100).await;
    assert_eq!(rest, all[1..].to_vec());

    // Purging everything still leaves a position to resync from.
    let purged = hub
        .state
        .store()
        .purge_changes(Timestamp::from_micros(
            Timestamp::now().as_micros() + 1_000_000,
        ))
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    let (list, position) = list_position(&hub, "").await;
    assert_eq!(list["data"].as_array().expect("data").len(), 2);
    assert_eq!(list["data"][0]["id"], old["id"]);
    assert_eq!(position, all[1]["seq"].as_i64().expect("seq"));
    let expired = call(hub.get(&format!("/v1/changes?after={}", position - 1))).await;
    assert_problem(&expired, 410, "cursor_expired");
    assert_eq!(
        feed(&hub, &format!("after={position}")).await["data"],
        json!([])
    );
    hub.create_customer(json!({"external_id": "newer"})).await;
    let next = read_all(&hub, position, 100).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0]["external_id"], "newer");
    // Nothing left to purge.
    assert_eq!(
        hub.state
            .store()
            .purge_changes(cutoff)
            .await
            .expect("purge"),
        0
    );
}

async fn list_then_follow_misses_nothing(hub: TestHub) {
    for i in 0..5 {
        hub.create_customer(json!({"external_id": format!("l-{i}")}))
            .await;
    }
    let (first, position) = list_position(&hub, "limit=2").await;
    assert_eq!(position, 5);
    // Changes while paging through the list come through the feed from the position.
    let late = hub.create_customer(json!({"external_id": "late"})).await;
    let mut cursor = first["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let (page, later_position) = list_position(&hub, &format!("limit=2&cursor={c}")).await;
        assert!(later_position >= position);
        cursor = page["next_cursor"].as_str().map(str::to_owned);
    }
    let followed = read_all(&hub, position, 10).await;
    assert_eq!(followed.len(), 1);
    assert_eq!(followed[0]["customer"], late);
}

/// The SQL scope filter of the feed, on change rows recorded with teams (the teams API that
/// puts customers in teams is another issue; the filter is exercised on the rows directly).
async fn a_team_scope_sees_only_its_teams_changes(hub: TestHub) {
    for i in 0..4 {
        hub.create_customer(json!({"external_id": format!("t-{i}")}))
            .await;
    }
    let (north, both) = (r#"'["north"]'"#, r#"'["south","north"]'"#);
    let url = hub.database_url.clone();
    execute(
        &url,
        &format!("UPDATE changes SET teams = {north} WHERE external_id = 't-1'"),
    )
    .await;
    execute(
        &url,
        &format!("UPDATE changes SET teams = {both} WHERE external_id = 't-3'"),
    )
    .await;
    let store = hub.state.store();
    let query = |scope: Scope| ChangeQuery {
        after: 0,
        limit: 100,
        wait: Duration::ZERO,
        scope,
    };
    let seen = |page: clientele_domain::ChangePage| -> Vec<String> {
        page.events
            .into_iter()
            .map(|e| e.external_id.expect("external id"))
            .collect()
    };
    let north_page = store
        .changes(&query(Scope::Teams(vec!["north".into()])))
        .await
        .expect("feed");
    assert_eq!(seen(north_page), ["t-1", "t-3"]);
    let south_page = store
        .changes(&query(Scope::Teams(vec!["west".into(), "south".into()])))
        .await
        .expect("feed");
    assert_eq!(south_page.next_after, 4);
    assert_eq!(seen(south_page), ["t-3"]);
    let none = store
        .changes(&query(Scope::Teams(vec!["east".into()])))
        .await
        .expect("feed");
    assert_eq!(none.events.len(), 0);
    // It still moves past what it may not see, so it does not rescan it on the next poll.
    assert_eq!(none.next_after, 4);
    let all = store.changes(&query(Scope::All)).await.expect("feed");
    assert_eq!(all.events.len(), 4);
}

/// What writers were told: every (customer, version) they created, updated or deleted.
type Acknowledged = Vec<(String, i64)>;

async fn writer(hub: Arc<TestHub>, writer: usize, shared: Arc<Vec<String>>) -> Acknowledged {
    let mut acknowledged = Vec::new();
    for i in 0..30 {
        match i % 5 {
            // Contended updates of the same customers by every writer.
            0 | 1 => {
                let id = &shared[(writer + i) % shared.len()];
                let reply = call(
                    hub.patch(&format!("/v1/customers/{id}"))
                        .json(&json!({"note": format!("w{writer} i{i}")})),
                )
                .await;
                assert_eq!(reply.status, 200, "{}", reply.body);
                acknowledged.push((id.clone(), reply.body["version"].as_i64().expect("v")));
            }
            2 => {
                let body = hub
                    .create_customer(json!({"external_id": format!("w{writer}-{i}")}))
                    .await;
                acknowledged.push((body["id"].as_str().expect("id").to_owned(), 1));
            }
            // Sync batches: new customers, and contended shared ones by external id.
            3 => {
                let items: Vec<Value> = (0..10)
                    .map(|n| json!({"external_id": format!("w{writer}-{i}-{n}")}))
                    .chain((0..3).map(|n| {
                        json!({"external_id": format!("shared-{n}"), "note": format!("s{writer}{i}")})
                    }))
                    .collect();
                let reply = hub
                    .sync(&json!({"key": "external_id", "customers": items}))
                    .await;
                assert_eq!(reply.status, 200, "{}", reply.body);
                for result in reply.body["results"].as_array().expect("results") {
                    assert_ne!(result["status"], "failed", "{result}");
                    if result["status"] != "unchanged" {
                        acknowledged.push((
                            result["id"].as_str().expect("id").to_owned(),
                            result["version"].as_i64().expect("v"),
                        ));
                    }
                }
            }
            // Create and delete one.
            _ => {
                let body = hub
                    .create_customer(json!({"external_id": format!("gone-{writer}-{i}")}))
                    .await;
                let id = body["id"].as_str().expect("id").to_owned();
                let reply = call(hub.delete(&format!("/v1/customers/{id}"))).await;
                assert_eq!(reply.status, 204);
                acknowledged.push((id.clone(), 1));
                acknowledged.push((id, 2));
            }
        }
    }
    acknowledged
}

async fn concurrent_writers_and_a_follower_see_every_change_once_in_commit_order(hub: TestHub) {
    let hub = Arc::new(hub);
    let mut shared = Vec::new();
    let mut acknowledged: Acknowledged = Vec::new();
    for n in 0..3 {
        let body = hub
            .create_customer(json!({"external_id": format!("shared-{n}")}))
            .await;
        let id = body["id"].as_str().expect("id").to_owned();
        acknowledged.push((id.clone(), 1));
        shared.push(id);
    }
    let shared = Arc::new(shared);
    let done = Arc::new(AtomicBool::new(false));

    // The follower reads while the writers commit, in small pages, long-polling when idle.
    let follower = {
        let hub = hub.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut after = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let page = feed(&hub, &format!("after={after}&limit=7&wait=1")).await;
                let batch = events(&page);
                after = page["next_after"].as_i64().expect("next_after");
                if batch.is_empty() && finished {
                    return seen;
                }
                seen.extend(batch);
            }
        })
    };
    let writers = (0..6).map(|w| tokio::spawn(writer(hub.clone(), w, shared.clone())));
    for result in join_all(writers).await {
        acknowledged.extend(result.expect("writer"));
    }
    done.store(true, Ordering::SeqCst);
    let followed = follower.await.expect("follower");

    // The follower saw exactly what a reader after the fact sees: no change skipped. (It may
    // have read a document that a later erasure took out of the feed.)
    let full = read_all(&hub, 0, 1000).await;
    let erased: BTreeSet<String> = full
        .iter()
        .filter(|e| e["type"] == "deleted")
        .map(|e| text_of(e, "customer_id"))
        .collect();
    let followed: Vec<Value> = followed
        .into_iter()
        .map(|mut e| {
            if erased.contains(&text_of(&e, "customer_id")) {
                e["customer"] = Value::Null;
            }
            e
        })
        .collect();
    assert_eq!(followed.len(), full.len());
    assert!(
        followed == full,
        "the follower's feed differs from the full feed"
    );
    let seqs: Vec<i64> = full
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq strictly increases"
    );

    // Every acknowledged change is there exactly once, and nothing else.
    let mut in_feed: Vec<(String, i64)> = full
        .iter()
        .map(|e| {
            (
                e["customer_id"].as_str().expect("id").to_owned(),
                e["version"].as_i64().expect("version"),
            )
        })
        .collect();
    in_feed.sort();
    acknowledged.sort();
    assert_eq!(in_feed, acknowledged);

    // Commit order: each customer's changes come version after version, ending with the delete.
    let mut versions: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for event in &full {
        let id = event["customer_id"].as_str().expect("id").to_owned();
        let version = event["version"].as_i64().expect("version");
        if let Some(customer) = event["customer"].as_object() {
            assert_eq!(customer["version"], json!(version));
        }
        versions.entry(id).or_default().push(version);
    }
    for (id, list) in versions {
        let expected: Vec<i64> = (1..=list.len() as i64).collect();
        assert_eq!(list, expected, "versions of {id} in feed order");
    }
}

const BINARY: &str = env!("CARGO_BIN_EXE_clientele");

/// Two hub processes on one PostgreSQL database: a long poll on one wakes at once when a change
/// is committed through the other (LISTEN/NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_long_poll_wakes_on_a_change_through_another_hub_process() {
    let Some(url) = fresh_postgres_database().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let first = HubProcess::start(Path::new(BINARY), &url, dir.path());
    let second = HubProcess::start(Path::new(BINARY), &url, dir.path());
    let client = reqwest::Client::new();
    let poll = client
        .get(first.url("/v1/changes?after=0&wait=30"))
        .bearer_auth(ADMIN_SECRET);
    let write = async {
        let create = client
            .post(second.url("/v1/customers"))
            .bearer_auth(ADMIN_SECRET)
            .json(&json!({"external_id": "wake-me"}));
        let reply = call(create).await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    };
    let (latency, body) = wake_latency(poll, write).await;
    assert_eq!(body["data"][0]["external_id"], "wake-me", "{body}");
    assert!(
        latency < Duration::from_millis(500),
        "woke {latency:?} after the write"
    );
}

/// A key restricted to teams sees the changes of customers that were in one of its teams as of
/// each change (for a deletion: before it), over HTTP.
async fn a_team_scoped_key_follows_only_its_teams_customers(hub: TestHub) {
    for team in ["north", "south"] {
        let reply = call(
            hub.put(&format!("/v1/teams/{team}"))
                .json(&json!({"name": team})),
        )
        .await;
        assert_eq!(reply.status, 201, "{}", reply.body);
    }
    let key = |teams: Value| {
        let hub = &hub;
        async move {
            let reply = call(
                hub.post("/v1/api-keys")
                    .json(&json!({"name": "scoped", "role": "read", "teams": teams})),
            )
            .await;
            assert_eq!(reply.status, 201, "{}", reply.body);
            hub.as_key(reply.body["secret"].as_str().expect("secret"))
        }
    };
    let north = key(json!(["north"])).await;
    let south = key(json!(["south"])).await;
    let both = key(json!(["north", "south"])).await;

    let a = hub
        .create_customer(json!({"external_id": "a", "teams": ["north"]}))
        .await;
    let b = hub
        .create_customer(json!({"external_id": "b", "teams": ["south"]}))
        .await;
    hub.create_customer(json!({"external_id": "c"})).await;
    let a_id = a["id"].as_str().expect("id");
    let moved = call(
        hub.patch(&format!("/v1/customers/{a_id}"))
            .json(&json!({"teams": ["south"]})),
    )
    .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    let b_id = b["id"].as_str().expect("id");
    assert_eq!(
        call(hub.delete(&format!("/v1/customers/{b_id}")))
            .await
            .status,
        204
    );

    let seen = |events: Vec<Value>| -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| (text_of(e, "external_id"), text_of(e, "type")))
            .collect()
    };
    let pair = |id: &str, kind: &str| (id.to_owned(), kind.to_owned());
    // Moved out of north, `a` is deleted as far as north can tell: it is 404 for it now, and a
    // mirror kept with that key must drop it.
    let north_events = read_all(&north, 0, 2).await;
    assert_eq!(
        seen(north_events.clone()),
        [pair("a", "created"), pair("a", "deleted")]
    );
    assert_eq!(north_events[1]["customer"], Value::Null);
    assert_eq!(north_events[1]["version"], 2);
    assert_eq!(
        seen(read_all(&south, 0, 2).await),
        [
            pair("b", "created"),
            pair("a", "updated"),
            pair("b", "deleted")
        ]
    );
    assert_eq!(seen(read_all(&both, 0, 1).await).len(), 4);
    assert_eq!(seen(read_all(&hub, 0, 100).await).len(), 5);
    // A scoped key moves past the changes it may not see, so its next poll does not rescan
    // them; a full page stops at its last event, since more may follow.
    let page = feed(&north, "after=4&limit=100").await;
    assert_eq!(page["data"], json!([]));
    assert_eq!(page["next_after"], 5);
    let full = feed(&south, "after=0&limit=1").await;
    assert_eq!(full["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(full["next_after"], full["data"][0]["seq"]);

    // Moved back by a bulk sync: north sees it again, whole; south sees it go.
    let reply = hub
        .sync(
            &json!({"key": "external_id", "customers": [{"external_id": "a", "teams": ["north"]}]}),
        )
        .await;
    assert_eq!(reply.body["summary"]["updated"], 1, "{}", reply.body);
    let back = events(&feed(&north, "after=5").await);
    assert_eq!(seen(back.clone()), [pair("a", "updated")]);
    assert_eq!(back[0]["customer"]["teams"], json!(["north"]));
    let gone = events(&feed(&south, "after=5").await);
    assert_eq!(seen(gone.clone()), [pair("a", "deleted")]);
    assert_eq!(gone[0]["customer"], Value::Null);
    assert_eq!(
        seen(events(&feed(&both, "after=5").await)),
        [pair("a", "updated")]
    );
}

fn text_of(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_default().to_owned()
}
