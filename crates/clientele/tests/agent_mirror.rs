//! `clientele pull` and `clientele sync` end to end: the real binary, a real hub on SQLite and
//! PostgreSQL, and a mirror on the same kind of database. Pull with creates, updates and deletes
//! and its position in the mirror; sync pushing local edits and inserts, pulling hub changes,
//! settling conflicts by each policy, and never echoing its own writes; a deletion counted once
//! though its earlier changes come erased on an earlier feed page; a row inserted again
//! with the content of one the hub erased is created again, not answered with an old replay; a
//! create a killed run left pending (the hub applied it, the answer was lost) ends as one row;
//! dry runs create no mirror, and a sync dry run plans what the real run then does.

mod agent_support;

use std::collections::BTreeMap;

use agent_support::*;
use clientele_agent::mirror::Mirror;
use clientele_agent::sync::create_request;
use clientele_testkit::{Backend, TestHub, call, hub_tests};
use serde_json::{Value, json};
use sqlx::Connection;

hub_tests!(
    pull_follows_creates_updates_and_deletes,
    pull_applies_many_pages_in_feed_order,
    pull_resyncs_from_the_list_when_its_position_expired,
    sync_resyncs_from_the_list_keeping_local_edits_and_inserts,
    sync_sends_local_edits_and_inserts_and_never_echoes,
    sync_reads_the_mirror_a_page_at_a_time_and_misses_no_row,
    sync_conflicts_hub_wins,
    sync_conflicts_source_wins,
    sync_conflicts_newest_wins,
    sync_creates_a_row_inserted_again_after_the_hub_erased_it,
    sync_counts_a_deletion_once_though_its_earlier_changes_come_erased,
    sync_finishes_a_create_a_killed_run_left_pending,
    sync_merges_a_pending_create_with_its_pulled_copy,
    sync_sends_the_edit_of_a_pending_create_without_a_twin,
    a_pending_create_without_a_unique_key_survives_an_edit_and_a_vacuum,
    a_mirror_made_by_an_earlier_agent_is_brought_up_to_date,
    a_pending_create_the_hub_forgot_is_bound_by_its_unique_key,
    another_row_in_the_place_of_a_pending_create_is_created_as_itself,
    a_pending_create_is_not_bound_to_a_customer_with_other_keys,
    an_earlier_agents_pending_create_is_finished,
    dry_runs_create_no_mirror,
    a_table_without_the_mirror_columns_is_refused_untouched,
    a_sync_dry_run_plans_what_the_run_does,
);

/// A mirror row: (id, first_name, version, tags as stored).
type MirrorRow = (Option<String>, Option<String>, Option<i64>, Option<String>);
/// The same with the external id in front, as selected.
type KeyedRow = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// Mirror rows by external id.
async fn mirror_rows(url: &str) -> BTreeMap<String, MirrorRow> {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("mirror");
    let rows: Vec<KeyedRow> =
        sqlx::query_as("SELECT external_id, id, first_name, version, tags FROM customers")
            .fetch_all(&mut conn)
            .await
            .expect("rows");
    rows.into_iter()
        .map(|(key, id, first, version, tags)| {
            (key.unwrap_or_default(), (id, first, version, tags))
        })
        .collect()
}

async fn hub_sync(hub: &TestHub, items: Vec<Value>) {
    let reply = hub
        .sync(&json!({"key": "external_id", "customers": items}))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["summary"]["failed"], 0, "{}", reply.body);
}

async fn seed(hub: &TestHub, n: usize) {
    let items: Vec<Value> = (1..=n).map(|i| json!({"external_id": format!("e{i}"), "first_name": format!("First {i}"), "tags": ["t"]})).collect();
    for batch in items.chunks(1000) {
        hub_sync(hub, batch.to_vec()).await;
    }
}

/// More local edits and inserts than one page of the mirror table holds (the push phase reads
/// it a page at a time so that its memory does not grow with the changes; found in an audit:
/// 1.9 GB for 459,000 edited rows): every one of them reaches the hub, once.
async fn sync_reads_the_mirror_a_page_at_a_time_and_misses_no_row(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "newest_wins"));
    seed(&hub, 1200).await;
    agent_ok("sync", &job, &[]).await;
    mirror_sql(
        &url,
        "UPDATE customers SET first_name = 'Edited ' || external_id",
    )
    .await;
    mirror_sql(
        &url,
        "INSERT INTO customers (external_id, first_name) \
         SELECT 'local' || external_id, 'Made here' FROM customers WHERE external_id <= 'e2'",
    )
    .await;
    let inserted = mirror_scalar(&url, "SELECT COUNT(*) FROM customers WHERE id IS NULL").await;
    assert!(inserted > 300, "{inserted}");
    let out = agent_ok("sync", &job, &[]).await;
    counts(
        &out,
        &[
            ("updated", 1200),
            ("created", inserted as u64),
            ("failed", 0),
        ],
    );
    let customers = hub_customers(&hub).await;
    assert_eq!(customers.len(), 1200 + inserted as usize);
    assert!(
        customers
            .iter()
            .filter(|(key, _)| !key.starts_with("local"))
            .all(|(key, customer)| customer["first_name"] == format!("Edited {key}")),
    );
    assert_syncs_move_nothing(&job).await;
}

/// More than one feed page: pages read ahead may be applied together, still in feed order, and
/// the position saved is the last applied page's.
async fn pull_applies_many_pages_in_feed_order(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "hub_wins"));
    for start in [1, 1001, 2001] {
        let items = (start..start + 1000)
            .map(|i| json!({"external_id": format!("e{i}"), "first_name": format!("First {i}")}))
            .collect();
        hub_sync(&hub, items).await;
    }
    // Later pages overwrite and delete what earlier pages created.
    hub_sync(
        &hub,
        vec![
            json!({"external_id": "e5", "first_name": "Renamed"}),
            json!({"external_id": "e6", "delete": true}),
        ],
    )
    .await;
    let out = agent_ok("pull", &job, &[]).await;
    counts(
        &out,
        &[
            ("created", 3000),
            ("updated", 1),
            ("deleted", 1),
            ("failed", 0),
        ],
    );
    let rows = mirror_rows(&url).await;
    assert_eq!(rows.len(), 2999);
    assert_eq!(rows["e5"].1.as_deref(), Some("Renamed"));
    assert_eq!(rows["e5"].2, Some(2));
    assert!(!rows.contains_key("e6"));
    assert_eq!(rows["e3000"].1.as_deref(), Some("First 3000"));
    let out = agent_ok("pull", &job, &[]).await;
    counts(&out, &[("created", 0), ("updated", 0), ("deleted", 0)]);
}

async fn pull_follows_creates_updates_and_deletes(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "hub_wins"));
    seed(&hub, 30).await;
    let out = agent_ok("pull", &job, &[]).await;
    counts(&out, &[("created", 30), ("failed", 0)]);
    let rows = mirror_rows(&url).await;
    assert_eq!(rows.len(), 30);
    assert_eq!(rows["e7"].1.as_deref(), Some("First 7"));
    assert_eq!(rows["e7"].2, Some(1));
    assert_eq!(
        serde_json::from_str::<Value>(rows["e7"].3.as_deref().expect("tags")).expect("json"),
        json!(["t"])
    );

    hub_sync(
        &hub,
        vec![
            json!({"external_id": "e1", "first_name": "Changed"}),
            json!({"external_id": "e2", "delete": true}),
            json!({"external_id": "e31", "first_name": "New"}),
        ],
    )
    .await;
    let out = agent_ok("pull", &job, &[]).await;
    counts(&out, &[("created", 1), ("updated", 1), ("deleted", 1)]);
    let rows = mirror_rows(&url).await;
    assert_eq!(rows.len(), 30);
    assert_eq!(rows["e1"].1.as_deref(), Some("Changed"));
    assert_eq!(rows["e1"].2, Some(2));
    assert!(!rows.contains_key("e2"));
    assert_eq!(rows["e31"].1.as_deref(), Some("New"));

    // Nothing new: nothing applied; the position lives in the mirror database.
    let out = agent_ok("pull", &job, &[]).await;
    counts(&out, &[("created", 0), ("updated", 0), ("deleted", 0)]);
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("mirror");
    let position: i64 =
        sqlx::query_scalar("SELECT position FROM _clientele_feed WHERE mirror_table = 'customers'")
            .fetch_one(&mut conn)
            .await
            .expect("position");
    assert!(position > 0);
}

async fn sync_sends_local_edits_and_inserts_and_never_echoes(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "newest_wins"));
    seed(&hub, 5).await;
    agent_ok("sync", &job, &[]).await;
    assert_eq!(mirror_rows(&url).await.len(), 5);

    mirror_sql(
        &url,
        "UPDATE customers SET first_name = 'Edited locally' WHERE external_id = 'e1'",
    )
    .await;
    mirror_sql(&url, "INSERT INTO customers (external_id, first_name, tags) VALUES ('local1', 'Made here', '[\"x\"]')").await;
    hub_sync(
        &hub,
        vec![json!({"external_id": "e2", "first_name": "Edited in the hub"})],
    )
    .await;
    let out = agent_ok("sync", &job, &[]).await;
    counts(&out, &[("created", 1), ("updated", 2), ("failed", 0)]);

    let customers = hub_customers(&hub).await;
    assert_eq!(customers["e1"]["first_name"], "Edited locally");
    assert_eq!(customers["e1"]["version"], 2);
    assert_eq!(customers["local1"]["first_name"], "Made here");
    assert_eq!(customers["local1"]["tags"], json!(["x"]));
    let rows = mirror_rows(&url).await;
    assert_eq!(rows["e2"].1.as_deref(), Some("Edited in the hub"));
    assert_eq!(
        rows["local1"].0.as_deref(),
        customers["local1"]["id"].as_str()
    );
    assert_eq!(rows["e1"].2, Some(2));

    // The agent's own writes come back through the feed and are skipped: nothing moves.
    let changes_before = hub.count_rows("changes").await;
    for _ in 0..2 {
        let out = agent_ok("sync", &job, &[]).await;
        counts(
            &out,
            &[
                ("created", 0),
                ("updated", 0),
                ("deleted", 0),
                ("failed", 0),
            ],
        );
    }
    assert_eq!(hub.count_rows("changes").await, changes_before);
    let customers = hub_customers(&hub).await;
    assert_eq!(customers["e1"]["version"], 2);
    assert_eq!(customers["local1"]["version"], 1);
}

/// Forgets every change the hub holds (as its retention would), so that a feed position before
/// them answers 410 `cursor_expired`.
async fn expire_the_feed(hub: &TestHub) {
    let purged = hub
        .state
        .store()
        .purge_changes(clientele_domain::Timestamp::now())
        .await
        .expect("purge");
    assert!(purged > 0);
    let expired = call(hub.get("/v1/changes?after=0")).await;
    assert_eq!(expired.status, 410, "{}", expired.body);
}

/// A mirror whose feed position the hub no longer keeps is reloaded from the customer list:
/// changed rows updated, new ones created, erased ones deleted, and the summary says so.
async fn pull_resyncs_from_the_list_when_its_position_expired(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "hub_wins"));
    seed(&hub, 5).await;
    agent_ok("pull", &job, &[]).await;
    hub_sync(
        &hub,
        vec![
            json!({"external_id": "e1", "first_name": "Changed"}),
            json!({"external_id": "e2", "delete": true}),
            json!({"external_id": "e6", "first_name": "New"}),
        ],
    )
    .await;
    expire_the_feed(&hub).await;

    let dry = agent_ok("pull", &job, &["--dry-run"]).await;
    assert!(dry.contains("resync"), "{dry}");
    let out = agent_ok("pull", &job, &[]).await;
    counts(
        &out,
        &[
            ("created", 1),
            ("updated", 1),
            ("unchanged", 3),
            ("deleted", 1),
            ("failed", 0),
        ],
    );
    let rows = mirror_rows(&url).await;
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        ["e1", "e3", "e4", "e5", "e6"]
    );
    assert_eq!(rows["e1"].1.as_deref(), Some("Changed"));
    assert_eq!(rows["e6"].1.as_deref(), Some("New"));

    // The position is the list's: the feed follows from there.
    hub_sync(
        &hub,
        vec![json!({"external_id": "e3", "first_name": "Later"})],
    )
    .await;
    let out = agent_ok("pull", &job, &[]).await;
    counts(&out, &[("created", 0), ("updated", 1), ("deleted", 0)]);
    assert_eq!(mirror_rows(&url).await["e3"].1.as_deref(), Some("Later"));
}

/// `sync` on a mirror whose feed position expired reads every customer as `pull` does, but as
/// changes: a row edited on both sides is settled by the policy, a local edit and a local
/// insert still go up, and a row the hub erased is deleted. A new mirror on such a hub starts.
async fn sync_resyncs_from_the_list_keeping_local_edits_and_inserts(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "hub_wins"));
    seed(&hub, 5).await;
    agent_ok("sync", &job, &[]).await;
    mirror_sql(
        &url,
        "UPDATE customers SET first_name = 'Local' WHERE external_id IN ('e1', 'e4')",
    )
    .await;
    mirror_sql(
        &url,
        "INSERT INTO customers (external_id, first_name) VALUES ('local1', 'Made here')",
    )
    .await;
    hub_sync(
        &hub,
        vec![
            json!({"external_id": "e1", "first_name": "Hub"}),
            json!({"external_id": "e3", "first_name": "Hub"}),
            json!({"external_id": "e5", "delete": true}),
        ],
    )
    .await;
    expire_the_feed(&hub).await;

    let out = agent_ok("sync", &job, &[]).await;
    // Down: e1 (both edited, the hub wins) and e3; up: e4; created: local1; deleted: e5.
    counts(
        &out,
        &[
            ("created", 1),
            ("updated", 3),
            ("deleted", 1),
            ("failed", 0),
        ],
    );
    let customers = hub_customers(&hub).await;
    assert_eq!(
        customers.keys().collect::<Vec<_>>(),
        ["e1", "e2", "e3", "e4", "local1"]
    );
    assert_eq!(customers["e1"]["first_name"], "Hub");
    assert_eq!(customers["e4"]["first_name"], "Local");
    assert_eq!(customers["local1"]["first_name"], "Made here");
    let rows = mirror_rows(&url).await;
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        customers.keys().collect::<Vec<_>>()
    );
    assert_eq!(rows["e1"].1.as_deref(), Some("Hub"));
    assert_eq!(rows["e3"].1.as_deref(), Some("Hub"));
    assert_syncs_move_nothing(&job).await;

    // A new mirror on a hub whose feed no longer starts at the beginning.
    expire_the_feed(&hub).await;
    let fresh = Workdir::new();
    let fresh_url = mirror_url(&hub, &fresh).await;
    let fresh_job = fresh.job(&hub, &mirror_job(&fresh_url, "hub_wins"));
    let out = agent_ok("sync", &fresh_job, &[]).await;
    counts(&out, &[("created", 5), ("failed", 0)]);
    assert_eq!(mirror_rows(&fresh_url).await, mirror_rows(&url).await);
}

/// A table of the mirror's name made for something else is refused with the columns it lacks,
/// before the agent changes anything in it (it would otherwise be rewritten with the agent's
/// bookkeeping column, then fail on its first row).
async fn a_table_without_the_mirror_columns_is_refused_untouched(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let creating = match hub.backend {
        Backend::Sqlite => format!("{url}?mode=rwc"),
        Backend::Postgres => url.clone(),
    };
    mirror_sql(
        &creating,
        "CREATE TABLE customers (id TEXT PRIMARY KEY, email TEXT, first_name TEXT, extra TEXT)",
    )
    .await;
    mirror_sql(
        &url,
        "INSERT INTO customers (id, extra) VALUES ('mine', 'kept')",
    )
    .await;
    seed(&hub, 2).await;
    for command in ["pull", "sync"] {
        let job = work.job(&hub, &mirror_job(&url, "hub_wins"));
        let output = agent(command, &job, &[]).await;
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains("the table `customers` exists without the columns a mirror needs")
                && stderr.contains("external_id"),
            "{stderr}"
        );
    }
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.expect("mirror");
    assert!(
        sqlx::query("SELECT _clientele_ref FROM customers")
            .fetch_all(&mut conn)
            .await
            .is_err(),
        "the table was rewritten"
    );
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, extra FROM customers")
        .fetch_all(&mut conn)
        .await
        .expect("rows");
    assert_eq!(rows, [("mine".to_owned(), "kept".to_owned())]);
}

/// Edits customer e1 on both sides (the local edit stamped `local_updated_at`) and syncs.
async fn conflict(hub: &TestHub, policy: &str, local_updated_at: Option<&str>) -> (Value, String) {
    let work = Workdir::new();
    let url = mirror_url(hub, &work).await;
    let job = work.job(hub, &mirror_job(&url, policy));
    seed(hub, 2).await;
    agent_ok("sync", &job, &[]).await;
    let stamp = local_updated_at
        .map(|at| format!(", updated_at = '{at}'"))
        .unwrap_or_default();
    mirror_sql(
        &url,
        &format!("UPDATE customers SET first_name = 'Local'{stamp} WHERE external_id = 'e1'"),
    )
    .await;
    hub_sync(hub, vec![json!({"external_id": "e1", "first_name": "Hub"})]).await;
    agent_ok("sync", &job, &[]).await;
    let hub_copy = call(hub.get("/v1/customers/external_id/e1")).await.body;
    let local = mirror_rows(&url).await["e1"].1.clone().unwrap_or_default();
    // Settled for good: another run changes nothing on either side.
    let out = agent_ok("sync", &job, &[]).await;
    counts(&out, &[("created", 0), ("updated", 0)]);
    assert_eq!(
        mirror_rows(&url).await["e1"].1.clone().unwrap_or_default(),
        local
    );
    (hub_copy, local)
}

async fn sync_conflicts_hub_wins(hub: TestHub) {
    let (hub_copy, local) = conflict(&hub, "hub_wins", Some("2999-01-01T00:00:00.000Z")).await;
    assert_eq!(hub_copy["first_name"], "Hub");
    assert_eq!(local, "Hub");
}

async fn sync_conflicts_source_wins(hub: TestHub) {
    let (hub_copy, local) = conflict(&hub, "source_wins", None).await;
    assert_eq!(hub_copy["first_name"], "Local");
    assert_eq!(local, "Local");
}

async fn sync_conflicts_newest_wins(hub: TestHub) {
    // The local edit is stamped later than the hub's: it wins.
    let (hub_copy, local) = conflict(&hub, "newest_wins", Some("2999-01-01T00:00:00.000Z")).await;
    assert_eq!(hub_copy["first_name"], "Local");
    assert_eq!(local, "Local");
    // Unstamped, the local edit is older than the hub's change: the hub wins.
    let other = TestHub::start(hub.backend, Default::default())
        .await
        .expect("hub");
    let (hub_copy, local) = conflict(&other, "newest_wins", None).await;
    assert_eq!(hub_copy["first_name"], "Hub");
    assert_eq!(local, "Hub");
}

/// A local insert the hub erased later, inserted again the same (the same content, and on SQLite
/// the same rowid): a new customer, not the replay of the first create.
async fn sync_creates_a_row_inserted_again_after_the_hub_erased_it(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "newest_wins"));
    agent_ok("sync", &job, &[]).await;
    let insert = "INSERT INTO customers (external_id, first_name) VALUES ('local1', 'Made here')";
    let mut ids = Vec::new();
    for _ in 0..2 {
        if hub.backend == Backend::Postgres {
            // Free the first row's place, so the new row may take its ctid.
            mirror_sql(&url, "VACUUM customers").await;
        }
        mirror_sql(&url, insert).await;
        let out = agent_ok("sync", &job, &[]).await;
        counts(&out, &[("created", 1), ("failed", 0)]);
        let customers = hub_customers(&hub).await;
        let id = customers
            .get("local1")
            .and_then(|customer| customer["id"].as_str())
            .expect("the row is created in the hub")
            .to_owned();
        assert_eq!(
            mirror_rows(&url).await["local1"].0.as_deref(),
            Some(id.as_str())
        );
        ids.push(id);
        // Erased in the hub: the next sync removes the local row.
        hub_sync(&hub, vec![json!({"external_id": "local1", "delete": true})]).await;
        let out = agent_ok("sync", &job, &[]).await;
        counts(&out, &[("deleted", 1)]);
        assert!(mirror_rows(&url).await.is_empty());
    }
    assert_ne!(ids[0], ids[1]);
}

/// A deletion erases the customer's earlier changes in the feed (they come without their
/// document). Such a change on one feed page and the deletion on the next are one deletion in
/// the summary, and the row is gone after the first.
async fn sync_counts_a_deletion_once_though_its_earlier_changes_come_erased(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "newest_wins"));
    seed(&hub, 5).await;
    agent_ok("sync", &job, &[]).await;

    hub_sync(
        &hub,
        vec![json!({"external_id": "e1", "first_name": "Changed, then erased"})],
    )
    .await;
    // A full feed page of other changes between the change and the deletion.
    let page = 1000;
    let others: Vec<Value> = (1..=page)
        .map(|i| json!({"external_id": format!("n{i}"), "first_name": "New"}))
        .collect();
    hub_sync(&hub, others).await;
    hub_sync(&hub, vec![json!({"external_id": "e1", "delete": true})]).await;

    let out = agent_ok("sync", &job, &[]).await;
    counts(
        &out,
        &[
            ("created", page as u64),
            ("updated", 0),
            ("deleted", 1),
            ("failed", 0),
        ],
    );
    let rows = mirror_rows(&url).await;
    assert!(!rows.contains_key("e1"));
    assert_eq!(rows.len(), 4 + page);
    assert_syncs_move_nothing(&job).await;
}

/// Rows in the mirror table, duplicates included.
async fn mirror_count(url: &str) -> i64 {
    mirror_scalar(url, "SELECT COUNT(*) FROM customers").await
}

/// What a sync killed while creating the local row without an id leaves behind: the create
/// recorded as pending under its key (as the agent records it before sending), the hub having
/// applied it (its event in the feed), the answer never written back. Returns the hub's answer.
async fn leave_create_pending(hub: &TestHub, url: &str) -> Value {
    let mirror = Mirror::open(url, "customers").await.expect("mirror");
    let mut local = Vec::new();
    mirror
        .scan(|row, _| {
            if row.fields["id"].is_null() {
                local.push(row);
            }
            Ok(())
        })
        .await
        .expect("scan");
    let [row] = <[_; 1]>::try_from(local).expect("one local row without an id");
    let (body, hash) = create_request(&row.fields);
    // A key of its own each time: tests reuse their hub.
    let fresh = format!(
        "sync-create-killed-run-{}",
        clientele_domain::CustomerId::new()
    );
    let key = mirror
        .create_key(&row.rowref, &hash, &fresh, &body)
        .await
        .expect("pending create");
    let reply = call(
        hub.post("/v1/customers")
            .header("Idempotency-Key", key)
            .json(&body),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

/// Starts a mirror with two customers and a local row, and leaves its create pending.
async fn killed_during_create(
    hub: &TestHub,
    work: &Workdir,
) -> (String, std::path::PathBuf, Value) {
    let url = mirror_url(hub, work).await;
    let job = work.job(hub, &mirror_job(&url, "newest_wins"));
    seed(hub, 2).await;
    agent_ok("sync", &job, &[]).await;
    mirror_sql(
        &url,
        "INSERT INTO customers (external_id, first_name) VALUES ('local1', 'Made here')",
    )
    .await;
    let created = leave_create_pending(hub, &url).await;
    (url, job, created)
}

/// The next sync replays the pending create (not a twin), writes the answer into the local row,
/// skips the create's event as its own write, and later syncs move nothing.
async fn sync_finishes_a_create_a_killed_run_left_pending(hub: TestHub) {
    let work = Workdir::new();
    let (url, job, created) = killed_during_create(&hub, &work).await;
    let out = agent_ok("sync", &job, &[]).await;
    counts(&out, &[("created", 1), ("updated", 0), ("failed", 0)]);
    assert_eq!(mirror_count(&url).await, 3);
    let rows = mirror_rows(&url).await;
    assert_eq!(rows["local1"].0.as_deref(), created["id"].as_str());
    assert_eq!(rows["local1"].2, Some(1));
    let customers = hub_customers(&hub).await;
    assert_eq!(customers.len(), 3);
    assert_eq!(customers["local1"]["id"], created["id"]);
    assert_syncs_move_nothing(&job).await;
    assert_eq!(mirror_count(&url).await, 3);
    assert_eq!(hub_customers(&hub).await["local1"]["version"], 1);
}

/// The hub's copy of the pending create came down first (a `pull` between the runs, here after
/// the hub changed it): the two become one row, the hub's newer copy, and syncs go on working.
async fn sync_merges_a_pending_create_with_its_pulled_copy(hub: TestHub) {
    let work = Workdir::new();
    let (url, job, created) = killed_during_create(&hub, &work).await;
    hub_sync(
        &hub,
        vec![json!({"external_id": "local1", "first_name": "Changed in the hub"})],
    )
    .await;
    agent_ok("pull", &job, &[]).await;
    assert_eq!(
        mirror_count(&url).await,
        4,
        "the local row and its pulled copy"
    );
    let out = agent_ok("sync", &job, &[]).await;
    counts(&out, &[("created", 1), ("failed", 0)]);
    assert_eq!(mirror_count(&url).await, 3);
    let rows = mirror_rows(&url).await;
    assert_eq!(rows["local1"].0.as_deref(), created["id"].as_str());
    assert_eq!(rows["local1"].1.as_deref(), Some("Changed in the hub"));
    assert_eq!(rows["local1"].2, Some(2));
    assert_syncs_move_nothing(&job).await;
    let customers = hub_customers(&hub).await;
    assert_eq!(customers.len(), 3);
    assert_eq!(customers["local1"]["version"], 2);
    assert_eq!(customers["local1"]["first_name"], "Changed in the hub");
}

/// The local row was edited after its create was sent and the run killed (found in a review:
/// the edited row was created again, a twin). Its create is finished as sent, the row is bound
/// to that customer, and the edit goes up as an edit; with the hub's copy pulled in between
/// too, one row remains.
async fn sync_sends_the_edit_of_a_pending_create_without_a_twin(hub: TestHub) {
    for pulled_between in [false, true] {
        let work = Workdir::new();
        let (url, job, created) = killed_during_create(&hub, &work).await;
        if pulled_between {
            agent_ok("pull", &job, &[]).await;
        }
        mirror_sql(
            &url,
            "UPDATE customers SET first_name = 'Edited after the kill' WHERE id IS NULL",
        )
        .await;
        let out = agent_ok("sync", &job, &[]).await;
        counts(&out, &[("created", 1), ("failed", 0)]);
        let rows = mirror_rows(&url).await;
        assert_eq!(
            mirror_count(&url).await,
            3,
            "pulled between: {pulled_between}"
        );
        assert_eq!(rows["local1"].0.as_deref(), created["id"].as_str());
        assert_eq!(rows["local1"].1.as_deref(), Some("Edited after the kill"));
        let customers = hub_customers(&hub).await;
        assert_eq!(
            customers.len(),
            3,
            "no twin; pulled between: {pulled_between}"
        );
        assert_eq!(customers["local1"]["id"], created["id"]);
        assert_eq!(customers["local1"]["first_name"], "Edited after the kill");
        assert_eq!(customers["local1"]["version"], 2);
        assert_eq!(rows["local1"].2, Some(2));
        assert_syncs_move_nothing(&job).await;
        assert_eq!(hub_customers(&hub).await["local1"]["version"], 2);
        erase_every_customer(&hub).await;
    }
}

/// A local row with no unique key (no external_id, email or username), edited after its create
/// was sent and the run killed, and the mirror vacuumed (SQLite renumbers a table's bare rowids
/// then): nothing but the row's reference tells it from a new row, so the reference must be
/// the agent's own column, never reused nor renumbered (found in a review: on SQLite such a row
/// was created again, a twin).
async fn a_pending_create_without_a_unique_key_survives_an_edit_and_a_vacuum(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "newest_wins"));
    seed(&hub, 2).await;
    agent_ok("sync", &job, &[]).await;
    // Rows before it, gone by the vacuum: the row's rowid would be renumbered down.
    for first_name in ["Scratch 1", "Scratch 2", "Nameless"] {
        mirror_sql(
            &url,
            &format!("INSERT INTO customers (first_name) VALUES ('{first_name}')"),
        )
        .await;
    }
    mirror_sql(
        &url,
        "DELETE FROM customers WHERE first_name LIKE 'Scratch%'",
    )
    .await;
    let created = leave_create_pending(&hub, &url).await;
    mirror_sql(
        &url,
        "UPDATE customers SET first_name = 'Named since' WHERE id IS NULL",
    )
    .await;
    mirror_sql(&url, "VACUUM").await;
    let out = agent_ok("sync", &job, &[]).await;
    counts(&out, &[("created", 1), ("failed", 0)]);
    assert_eq!(mirror_count(&url).await, 3);
    let customers = hub_customers_by(&hub, "id").await;
    assert_eq!(customers.len(), 3, "no twin: {customers:?}");
    let id = created["id"].as_str().expect("id");
    assert_eq!(customers[id]["first_name"], "Named since");
    assert_eq!(customers[id]["version"], 2);
    assert_syncs_move_nothing(&job).await;
    assert_eq!(hub_customers_by(&hub, "id").await.len(), 3);
}

/// A sync resumed after the hub forgot the pending create's key (it keeps them 24 hours): the
/// create sent again is refused for its external_id, taken by the customer it made, and the row
/// is bound to that customer (found in a review: it failed on every run). Unedited, edited, and
/// with the hub's copy pulled in between.
async fn a_pending_create_the_hub_forgot_is_bound_by_its_unique_key(hub: TestHub) {
    for (edited, pulled_between) in [(false, false), (true, false), (false, true)] {
        let case = format!("edited: {edited}, pulled between: {pulled_between}");
        let work = Workdir::new();
        let (url, job, created) = killed_during_create(&hub, &work).await;
        if pulled_between {
            agent_ok("pull", &job, &[]).await;
        }
        if edited {
            mirror_sql(
                &url,
                "UPDATE customers SET first_name = 'Edited' WHERE id IS NULL",
            )
            .await;
        }
        clientele_testkit::execute(&hub.database_url, "DELETE FROM idempotency_keys").await;
        // Changed in the hub meanwhile: an edit of the row takes only its own fields over it.
        let id = created["id"].as_str().expect("id");
        let reply = call(
            hub.patch(&format!("/v1/customers/{id}"))
                .json(&json!({"last_name": "From the hub"})),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let out = agent_ok("sync", &job, &[]).await;
        counts(&out, &[("failed", 0)]);
        assert_eq!(mirror_count(&url).await, 3, "{case}");
        let rows = mirror_rows(&url).await;
        assert_eq!(
            rows["local1"].0.as_deref(),
            created["id"].as_str(),
            "{case}"
        );
        let customers = hub_customers(&hub).await;
        assert_eq!(customers.len(), 3, "{case}");
        let expected = if edited { "Edited" } else { "Made here" };
        assert_eq!(customers["local1"]["first_name"], expected, "{case}");
        assert_eq!(customers["local1"]["last_name"], "From the hub", "{case}");
        assert_eq!(rows["local1"].1.as_deref(), Some(expected), "{case}");
        assert_syncs_move_nothing(&job).await;
        erase_every_customer(&hub).await;
    }
}

/// The row of a pending create was deleted and another inserted in its place (SQLite gives the
/// new row the rowid of the row inserted last once it is deleted): the other row is created as
/// itself, not bound to the first one's customer (found in a review), and the first one's
/// customer comes down as a row.
async fn another_row_in_the_place_of_a_pending_create_is_created_as_itself(hub: TestHub) {
    let work = Workdir::new();
    let (url, job, created) = killed_during_create(&hub, &work).await;
    mirror_sql(&url, "DELETE FROM customers WHERE id IS NULL").await;
    mirror_sql(
        &url,
        "INSERT INTO customers (external_id, first_name) VALUES ('other', 'Someone else')",
    )
    .await;
    let out = agent_ok("sync", &job, &[]).await;
    // Created: the other row up, the first one's customer down.
    counts(&out, &[("created", 2), ("failed", 0)]);
    let customers = hub_customers(&hub).await;
    assert_eq!(customers.len(), 4);
    assert_eq!(customers["local1"]["id"], created["id"]);
    assert_eq!(customers["local1"]["first_name"], "Made here");
    assert_eq!(customers["local1"]["version"], 1);
    assert_eq!(customers["other"]["first_name"], "Someone else");
    let rows = mirror_rows(&url).await;
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows["other"].0.as_deref(),
        customers["other"]["id"].as_str()
    );
}

/// The hub forgot a pending create's key and a customer with its external_id but another
/// email exists (made by another system, the create never having arrived): the row is not
/// bound to it, and is reported as the duplicate it is.
async fn a_pending_create_is_not_bound_to_a_customer_with_other_keys(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "newest_wins"));
    agent_ok("sync", &job, &[]).await;
    mirror_sql(
        &url,
        "INSERT INTO customers (external_id, email, first_name) \
         VALUES ('local1', 'mine@example.com', 'Made here')",
    )
    .await;
    // Left pending without reaching the hub; then another system takes the external_id.
    let mirror = Mirror::open(&url, "customers").await.expect("mirror");
    let [row] = <[_; 1]>::try_from(mirror.rows_without_id().await.expect("rows")).expect("one");
    let (body, hash) = create_request(&row.fields);
    mirror
        .create_key(&row.rowref, &hash, "sync-create-never-sent", &body)
        .await
        .expect("pending create");
    let theirs = hub
        .create_customer(json!({"external_id": "local1", "email": "theirs@example.com"}))
        .await;
    let report = work.path("report.jsonl");
    let out = agent_ok("sync", &job, &["--report", report.to_str().expect("path")]).await;
    // Created: their customer, down.
    counts(&out, &[("created", 1), ("failed", 1)]);
    let lines = report_lines(&report);
    assert_eq!(lines[0]["problem"]["code"], "duplicate_key", "{lines:?}");
    // The line names the row: its key, and its reference in the mirror table (found in an
    // audit: both were null).
    assert_eq!(lines[0]["key"], "local1", "{lines:?}");
    let row = lines[0]["row"].as_i64().expect("the row's reference");
    let named =
        format!("SELECT COUNT(*) FROM customers WHERE _clientele_ref = {row} AND id IS NULL");
    assert_eq!(mirror_scalar(&url, &named).await, 1, "{lines:?}");
    let customers = hub_customers(&hub).await;
    assert_eq!(customers.len(), 1);
    assert_eq!(customers["local1"]["email"], "theirs@example.com");
    assert_eq!(customers["local1"]["id"], theirs["id"]);
}

/// A create pending in a mirror an earlier agent made, recorded without its request and, on
/// PostgreSQL, under the row's `ctid` (found in a review: the record named no row once the
/// table had its identity column, and the row was created again). It is found by its content
/// and finished: no twin.
async fn an_earlier_agents_pending_create_is_finished(hub: TestHub) {
    let work = Workdir::new();
    let (url, job, created) = killed_during_create(&hub, &work).await;
    if hub.backend == Backend::Postgres {
        mirror_sql(
            &url,
            "UPDATE _clientele_pending_create \
             SET rowref = (SELECT ctid::text FROM customers WHERE id IS NULL)",
        )
        .await;
    }
    make_mirror_as_an_earlier_agent(&hub, &url).await;
    mirror_sql(
        &url,
        "ALTER TABLE _clientele_pending_create DROP COLUMN body",
    )
    .await;
    let out = agent_ok("sync", &job, &[]).await;
    counts(&out, &[("created", 1), ("failed", 0)]);
    assert_eq!(mirror_count(&url).await, 3);
    let rows = mirror_rows(&url).await;
    assert_eq!(rows["local1"].0.as_deref(), created["id"].as_str());
    assert_eq!(hub_customers(&hub).await.len(), 3);
    assert_syncs_move_nothing(&job).await;
}

/// A mirror an earlier agent made: on PostgreSQL without the identity column that names a row
/// through its edits (rows were named by `ctid`), and without the pending create's body. A dry
/// run plans on it as it is; a run adds what is missing and syncs.
async fn a_mirror_made_by_an_earlier_agent_is_brought_up_to_date(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "newest_wins"));
    seed(&hub, 2).await;
    agent_ok("sync", &job, &[]).await;
    make_mirror_as_an_earlier_agent(&hub, &url).await;
    // What users add to their mirror survives the table's rewrite.
    for statement in [
        "CREATE INDEX customers_by_first_name ON customers (first_name)",
        "CREATE VIEW named_customers AS SELECT id, first_name FROM customers",
    ] {
        mirror_sql(&url, statement).await;
    }
    mirror_sql(
        &url,
        "ALTER TABLE _clientele_pending_create DROP COLUMN body",
    )
    .await;
    mirror_sql(
        &url,
        "INSERT INTO customers (external_id, first_name) VALUES ('local1', 'Made here')",
    )
    .await;
    let plan = agent_ok("sync", &job, &["--dry-run"]).await;
    assert!(plan.contains("create row"), "{plan}");
    let out = agent_ok("sync", &job, &[]).await;
    counts(&out, &[("created", 1), ("failed", 0)]);
    assert_eq!(mirror_count(&url).await, 3);
    assert_eq!(hub_customers(&hub).await.len(), 3);
    // The edit of a row goes up as before.
    mirror_sql(
        &url,
        "UPDATE customers SET first_name = 'Edited' WHERE external_id = 'local1'",
    )
    .await;
    let out = agent_ok("sync", &job, &[]).await;
    counts(&out, &[("created", 0), ("updated", 1), ("failed", 0)]);
    assert_eq!(hub_customers(&hub).await["local1"]["first_name"], "Edited");
    let kept = match hub.backend {
        Backend::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE name IN \
             ('customers_by_first_name', 'named_customers')"
        }
        Backend::Postgres => {
            "SELECT (to_regclass('customers_by_first_name') IS NOT NULL)::int \
             + (to_regclass('named_customers') IS NOT NULL)::int"
        }
    };
    assert_eq!(mirror_scalar(&url, kept).await, 2, "index and view kept");
    assert_eq!(
        mirror_scalar(
            &url,
            "SELECT COUNT(*) FROM named_customers WHERE first_name = 'Edited'"
        )
        .await,
        1
    );
    // Rows are named by the agent's column, given to a new row past every old one.
    let ref_column = "SELECT COUNT(DISTINCT _clientele_ref) FROM customers";
    assert_eq!(mirror_scalar(&url, ref_column).await, 3);
}

/// Makes a mirror table as an agent before `_clientele_ref` made it: on PostgreSQL without the
/// column (its rows were named by `ctid`), on SQLite keyed by `id` and named by bare rowids
/// (kept as they were).
async fn make_mirror_as_an_earlier_agent(hub: &TestHub, url: &str) {
    if hub.backend == Backend::Postgres {
        mirror_sql(url, "ALTER TABLE customers DROP COLUMN _clientele_ref").await;
        return;
    }
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("mirror");
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, type FROM pragma_table_info('customers') \
         WHERE name NOT IN ('id', '_clientele_ref') ORDER BY cid",
    )
    .fetch_all(&mut conn)
    .await
    .expect("columns");
    let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
    let names = names.join(", ");
    let declared: Vec<String> = columns
        .iter()
        .map(|(name, declared)| format!("{name} {declared}"))
        .collect();
    for statement in [
        format!(
            "CREATE TABLE legacy (id TEXT PRIMARY KEY, {})",
            declared.join(", ")
        ),
        format!(
            "INSERT INTO legacy (rowid, id, {names}) SELECT _clientele_ref, id, {names} FROM customers"
        ),
        "DROP TABLE customers".to_owned(),
        "ALTER TABLE legacy RENAME TO customers".to_owned(),
    ] {
        sqlx::query(&statement)
            .execute(&mut conn)
            .await
            .expect("legacy mirror");
    }
}

/// Erases every customer of the hub: the next round of a test starts from an empty hub.
async fn erase_every_customer(hub: &TestHub) {
    for (_, customer) in hub_customers(hub).await {
        let id = customer["id"].as_str().expect("id");
        let reply = call(hub.delete(&format!("/v1/customers/{id}"))).await;
        assert_eq!(reply.status, 204, "{}", reply.body);
    }
}

/// The tables in a PostgreSQL mirror database.
async fn postgres_tables(url: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("mirror");
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .fetch_one(&mut conn)
    .await
    .expect("tables")
}

/// `pull --dry-run` and `sync --dry-run` on a mirror not there yet plan to create every
/// customer, and create neither the database file nor any table.
async fn dry_runs_create_no_mirror(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "newest_wins"));
    seed(&hub, 3).await;
    for (command, verb) in [("pull", "upsert "), ("sync", "down ")] {
        let out = agent_ok(command, &job, &["--dry-run"]).await;
        counts(&out, &[("created", 3)]);
        assert_eq!(out.matches(verb).count(), 3, "{out}");
        match hub.backend {
            Backend::Sqlite => assert!(!work.path("mirror.db").exists(), "{command}"),
            Backend::Postgres => assert_eq!(postgres_tables(&url).await, 0, "{command}"),
        }
    }
    // Once there, the mirror is read as it stands, and still left alone.
    agent_ok("sync", &job, &[]).await;
    hub_sync(
        &hub,
        vec![json!({"external_id": "e1", "first_name": "Hub"})],
    )
    .await;
    for command in ["pull", "sync"] {
        let out = agent_ok(command, &job, &["--dry-run"]).await;
        counts(&out, &[("created", 0), ("updated", 1)]);
    }
    assert_eq!(mirror_rows(&url).await["e1"].1.as_deref(), Some("First 1"));
}

/// A local edit the hub's newer change beats is planned as `down` only, as the run then does;
/// a local edit without a hub change is planned `up`.
async fn a_sync_dry_run_plans_what_the_run_does(hub: TestHub) {
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "newest_wins"));
    seed(&hub, 3).await;
    agent_ok("sync", &job, &[]).await;
    mirror_sql(
        &url,
        "UPDATE customers SET first_name = 'Local', updated_at = '2020-01-01T00:00:00.000Z' \
         WHERE external_id = 'e1'",
    )
    .await;
    mirror_sql(
        &url,
        "UPDATE customers SET first_name = 'Local' WHERE external_id = 'e2'",
    )
    .await;
    hub_sync(
        &hub,
        vec![
            json!({"external_id": "e1", "first_name": "Hub"}),
            json!({"external_id": "e3", "first_name": "Hub"}),
        ],
    )
    .await;
    let rows = mirror_rows(&url).await;
    let id = |key: &str| rows[key].0.clone().unwrap_or_default();
    let plan = agent_ok("sync", &job, &["--dry-run"]).await;
    let mut lines: Vec<&str> = plan
        .lines()
        .filter(|line| line.starts_with("down ") || line.starts_with("up "))
        .collect();
    lines.sort_unstable();
    let mut expected = vec![
        format!("down {}", id("e1")),
        format!("down {}", id("e3")),
        format!("up {}", id("e2")),
    ];
    expected.sort_unstable();
    assert_eq!(lines, expected, "{plan}");
    counts(&plan, &[("updated", 3)]);
    let out = agent_ok("sync", &job, &[]).await;
    counts(&out, &[("updated", 3), ("failed", 0)]);
    let customers = hub_customers(&hub).await;
    assert_eq!(customers["e1"]["first_name"], "Hub");
    assert_eq!(customers["e2"]["first_name"], "Local");
    assert_eq!(mirror_rows(&url).await["e1"].1.as_deref(), Some("Hub"));
}
