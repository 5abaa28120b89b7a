//! `clientele push` killed with SIGKILL at random moments, again and again, with the source
//! changing between some of the kills: the run that finally completes leaves the hub exactly
//! equal to the source, and no write was applied twice (every customer's version counts only
//! the distinct contents its row really had).
//!
//! `clientele sync` killed the same way while local rows are inserted and edited between runs:
//! every local row ends as one customer, bound to its row, with its last edit. `clientele pull`
//! killed while the hub changes: the mirror ends equal to the hub.
//!
//! And killed at the worst moment, deterministically: the hub applied a batch (or a sync's edit)
//! and the agent never heard back (a proxy between them forwards the request and swallows the
//! answer).
//! Whatever the source does next (goes back to the content the state recorded, brings back a row
//! whose delete or archive was applied, drops a row whose create or rename was applied), the
//! next run brings the hub back to the source.

mod agent_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agent_support::*;
use clientele_testkit::{TestHub, hub_tests};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

hub_tests!(
    killed_pushes_resume_to_exactly_the_source,
    batches_applied_but_never_acknowledged_archive,
    batches_applied_but_never_acknowledged_delete,
    a_rename_applied_but_never_acknowledged_then_gone_from_the_source,
    an_archive_that_made_an_erased_customer_again_then_a_kill,
    an_edit_applied_but_never_acknowledged_then_edited_again,
    killed_syncs_create_each_local_row_once_and_keep_every_edit,
    killed_pulls_leave_the_mirror_equal_to_the_hub,
);

/// A small deterministic generator, seeded from the clock (the seed is printed for replays).
struct Lcg(u64);

impl Lcg {
    /// Seeded from the clock; the seed is printed, for a replay of a failure.
    fn from_clock(test: &str) -> Lcg {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64;
        eprintln!("{test} kill test seed {seed}");
        Lcg(seed)
    }

    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

async fn killed_pushes_resume_to_exactly_the_source(hub: TestHub) {
    let mut random = Lcg::from_clock("push");
    let work = Workdir::new();
    let rows = people(1..2001);
    sqlite_source(&work.path("source.db"), &borrowed(&rows)).await;
    let job = work.job(
        &hub,
        &PEOPLE_JOB.replace("batch_size = 100", "batch_size = 50"),
    );
    // How many distinct contents each key has had; archived keys count one more.
    let mut contents: BTreeMap<i64, u64> = rows.iter().map(|(id, _, _)| (*id, 1)).collect();
    let mut removed: Vec<i64> = Vec::new();

    for round in 0..8 {
        run_killed("push", &job, 30 + random.next(700), round).await;
        if round % 3 == 1 {
            // The source moves on between runs: some rows change, one row leaves.
            let start = 1 + random.next(1900) as i64;
            let changed: Vec<(i64, String, String)> = (start..start + 20)
                .filter(|id| !removed.contains(id))
                .map(|id| {
                    (
                        id,
                        format!("Round {round} {id}"),
                        format!("p{id}@example.com"),
                    )
                })
                .collect();
            for (id, _, _) in &changed {
                *contents.get_mut(id).expect("known") += 1;
            }
            let mut conn = {
                use sqlx::Connection;
                sqlx::SqliteConnection::connect(&format!(
                    "sqlite://{}",
                    work.path("source.db").display()
                ))
                .await
                .expect("source")
            };
            upsert_people(&mut conn, &borrowed(&changed)).await;
            let gone = 1 + random.next(2000) as i64;
            if !removed.contains(&gone) {
                sqlite_sql(
                    &work.path("source.db"),
                    &format!("DELETE FROM people WHERE person_id = {gone}"),
                )
                .await;
                removed.push(gone);
                *contents.get_mut(&gone).expect("known") += 1;
            }
        }
    }
    agent_ok("push", &job, &[]).await;

    // The hub equals the source.
    let source = read_people(&work).await;
    let customers = hub_customers(&hub).await;
    // Keys that left the source before they ever reached the hub are simply absent.
    let archived = removed
        .iter()
        .filter(|id| customers.contains_key(&id.to_string()))
        .count();
    assert_eq!(
        customers.len(),
        source.len() + archived,
        "no customer duplicated or lost"
    );
    for (id, (fname, email)) in &source {
        let customer = &customers[&id.to_string()];
        assert_eq!(
            customer["first_name"].as_str(),
            Some(fname.as_str()),
            "{id}"
        );
        assert_eq!(customer["email"].as_str(), Some(email.as_str()), "{id}");
        assert_eq!(customer["archived"], false, "{id}");
    }
    for id in &removed {
        if let Some(customer) = customers.get(&id.to_string()) {
            assert_eq!(customer["archived"], true, "{id} left the source");
        }
    }
    // Nothing applied twice: a version never exceeds the distinct contents its row had.
    for (id, customer) in &customers {
        let id: i64 = id.parse().expect("numeric key");
        let version = customer["version"].as_u64().expect("version");
        assert!(
            version <= contents[&id],
            "customer {id} has version {version}, its row had {} contents",
            contents[&id]
        );
    }
    // And the state agrees: the next run sends nothing.
    assert_push_sends_nothing(&job, source.len() as u64).await;
}

/// Local rows are inserted (ten a round) and edited (created ones and ones whose create may be
/// pending) between syncs killed at random moments; a run is let finish, and then: each local
/// row is exactly one customer, bound to its row by id, with the row's last edit, and the hub and
/// the mirror hold the same customers.
async fn killed_syncs_create_each_local_row_once_and_keep_every_edit(hub: TestHub) {
    let mut random = Lcg::from_clock("sync");
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "source_wins"));
    let seeded: Vec<serde_json::Value> = (0..50)
        .map(
            |i| serde_json::json!({"external_id": format!("hub{i}"), "first_name": "From the hub"}),
        )
        .collect();
    let reply = hub
        .sync(&serde_json::json!({"key": "external_id", "customers": seeded}))
        .await;
    assert_eq!(reply.body["summary"]["failed"], 0, "{}", reply.body);
    agent_ok("sync", &job, &[]).await;

    // The local rows' external ids and the first name each should end with.
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for round in 0..8 {
        let labels: Vec<String> = expected.keys().cloned().collect();
        for _ in 0..labels.len().min(4) {
            let label = &labels[random.next(labels.len() as u64) as usize];
            let name = format!("Edited in round {round}");
            mirror_sql(
                &url,
                &format!(
                    "UPDATE customers SET first_name = '{name}' WHERE external_id = '{label}'"
                ),
            )
            .await;
            expected.insert(label.clone(), name);
        }
        for i in 0..10 {
            let label = format!("local{round}-{i}");
            let name = format!("Made in round {round}");
            mirror_sql(
                &url,
                &format!(
                    "INSERT INTO customers (external_id, first_name) VALUES ('{label}', '{name}')"
                ),
            )
            .await;
            expected.insert(label, name);
        }
        run_killed("sync", &job, random.next(250), round).await;
    }
    let out = agent_ok("sync", &job, &[]).await;
    counts(&out, &[("failed", 0)]);
    assert_syncs_move_nothing(&job).await;

    let customers = hub_customers(&hub).await;
    assert_eq!(
        customers.len(),
        50 + expected.len(),
        "no customer twice, none lost"
    );
    // Each local row is bound to its customer, which has the row's last edit.
    assert_mirror_equals_hub(&url, &customers).await;
    for (label, name) in &expected {
        assert_eq!(
            customers[label]["first_name"].as_str(),
            Some(name.as_str()),
            "{label}"
        );
    }
}

/// Pulls of a feed of several pages are killed at random moments while the hub creates,
/// updates and deletes customers between them; a pull let finish leaves the mirror holding
/// exactly the hub's customers, each as the hub has it.
async fn killed_pulls_leave_the_mirror_equal_to_the_hub(hub: TestHub) {
    let mut random = Lcg::from_clock("pull");
    let work = Workdir::new();
    let url = mirror_url(&hub, &work).await;
    let job = work.job(&hub, &mirror_job(&url, "hub_wins"));
    let mut next = 0;
    for round in 0..6 {
        // New customers, and changes and deletes of earlier ones.
        let mut items: Vec<serde_json::Value> = (next..next + 700)
            .map(|i| serde_json::json!({"external_id": format!("c{i}"), "first_name": "New"}))
            .collect();
        next += 700;
        for _ in 0..50 {
            let i = random.next(next);
            items.push(serde_json::json!({"external_id": format!("c{i}"), "first_name": format!("Round {round}")}));
        }
        for _ in 0..10 {
            let i = random.next(next);
            items.push(serde_json::json!({"external_id": format!("c{i}"), "delete": true}));
        }
        for batch in items.chunks(1000) {
            // An item may delete a customer already gone, or update one deleted: it fails alone.
            let reply = hub
                .sync(&serde_json::json!({"key": "external_id", "customers": batch}))
                .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        run_killed("pull", &job, random.next(300), round).await;
    }
    agent_ok("pull", &job, &[]).await;

    assert_mirror_equals_hub(&url, &hub_customers(&hub).await).await;
}

/// The mirror holds exactly the hub's `customers` (by external id), each with the hub's id and
/// first name.
async fn assert_mirror_equals_hub(url: &str, customers: &BTreeMap<String, serde_json::Value>) {
    let rows = mirror_rows_by_external_id(url).await;
    assert_eq!(
        rows.len(),
        customers.len(),
        "the mirror holds the hub's customers"
    );
    for (key, customer) in customers {
        let (id, first_name) = rows.get(key).unwrap_or_else(|| panic!("{key} is missing"));
        assert_eq!(id.as_deref(), customer["id"].as_str(), "{key}");
        assert_eq!(
            first_name.as_deref(),
            customer["first_name"].as_str(),
            "{key}"
        );
    }
}

/// Runs `clientele command` and kills it with SIGKILL after `delay` milliseconds (unless it
/// finished first).
async fn run_killed(command: &str, job: &std::path::Path, delay: u64, round: usize) {
    let mut child = agent_command(command, job, &[])
        .spawn()
        .expect("spawn agent");
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let finished = child.try_wait().expect("try_wait").is_some();
    child.kill().ok(); // SIGKILL
    child.wait().expect("reap");
    eprintln!("{command} round {round}: killed after {delay} ms (finished first: {finished})");
}

/// The mirror's rows by external id: (id, first name).
async fn mirror_rows_by_external_id(
    url: &str,
) -> BTreeMap<String, (Option<String>, Option<String>)> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.expect("mirror");
    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT external_id, id, first_name FROM customers")
            .fetch_all(&mut conn)
            .await
            .expect("rows");
    let count = rows.len();
    let keyed: BTreeMap<_, _> = rows
        .into_iter()
        .map(|(key, id, first_name)| (key, (id, first_name)))
        .collect();
    assert_eq!(keyed.len(), count, "one mirror row per external id");
    keyed
}

async fn read_people(work: &Workdir) -> BTreeMap<i64, (String, String)> {
    use sqlx::Connection;
    let mut conn =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", work.path("source.db").display()))
            .await
            .expect("source");
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT person_id, fname, email FROM people")
            .fetch_all(&mut conn)
            .await
            .expect("rows");
    rows.into_iter()
        .map(|(id, fname, email)| (id, (fname, email)))
        .collect()
}

/// An HTTP/1.1 proxy in front of the hub, one request per connection. While `swallow` is set,
/// a request whose head starts with `swallowed` (`POST /v1/customers/sync `, say) is forwarded
/// and the hub's answer read (the request is applied), then the test is told and the agent
/// never gets the answer.
struct SwallowingProxy {
    url: String,
    swallow: Arc<AtomicBool>,
    applied: mpsc::UnboundedReceiver<()>,
}

impl SwallowingProxy {
    async fn start(hub: &str, swallowed: &'static str) -> SwallowingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let upstream = hub.trim_start_matches("http://").to_owned();
        let swallow = Arc::new(AtomicBool::new(false));
        let (tell, applied) = mpsc::unbounded_channel();
        let swallowing = swallow.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, swallowing, tell) =
                    (upstream.clone(), swallowing.clone(), tell.clone());
                tokio::spawn(async move {
                    let _ = forward(client, &upstream, swallowed, &swallowing, &tell).await;
                });
            }
        });
        SwallowingProxy {
            url,
            swallow,
            applied,
        }
    }

    /// Runs the agent's `command`, killed once the hub has applied its first swallowed request.
    async fn killed_after_apply(&mut self, command: &str, job: &std::path::Path) {
        self.swallow.store(true, Ordering::SeqCst);
        let mut child = agent_command(command, job, &[])
            .spawn()
            .expect("spawn agent");
        let applied = tokio::time::timeout(Duration::from_secs(60), self.applied.recv()).await;
        child.kill().ok(); // SIGKILL
        child.wait().expect("reap");
        self.swallow.store(false, Ordering::SeqCst);
        assert!(
            matches!(applied, Ok(Some(()))),
            "the agent sent no request to swallow"
        );
    }
}

async fn forward(
    client: TcpStream,
    upstream: &str,
    swallowed: &str,
    swallow: &AtomicBool,
    applied: &mpsc::UnboundedSender<()>,
) -> std::io::Result<()> {
    let mut client = BufReader::new(client);
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if client.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("content-length:") {
            length = value.trim().parse().expect("content-length");
        }
        // One request per upstream connection: the hub closes it after answering.
        if !lower.starts_with("connection:") {
            head.push_str(&line);
        }
    }
    head.push_str("connection: close\r\n\r\n");
    let mut body = vec![0; length];
    client.read_exact(&mut body).await?;
    let mut hub = TcpStream::connect(upstream).await?;
    hub.write_all(head.as_bytes()).await?;
    hub.write_all(&body).await?;
    let mut answer = Vec::new();
    hub.read_to_end(&mut answer).await?;
    if swallow.load(Ordering::SeqCst) && head.starts_with(swallowed) {
        let _ = applied.send(());
        // Never answer: the agent waits until it is killed.
        std::future::pending::<()>().await;
    }
    client.get_mut().write_all(&answer).await?;
    client.get_mut().shutdown().await
}

async fn batches_applied_but_never_acknowledged_archive(hub: TestHub) {
    batches_applied_but_never_acknowledged(hub, "archive").await;
}

async fn batches_applied_but_never_acknowledged_delete(hub: TestHub) {
    batches_applied_but_never_acknowledged(hub, "delete").await;
}

async fn batches_applied_but_never_acknowledged(hub: TestHub, on_missing: &str) {
    let mut proxy = SwallowingProxy::start(&hub.base_url, BATCH).await;
    let work = Workdir::new();
    let csv = work.path("source.csv");
    let job = work.job_at(
        &proxy.url,
        &format!(
            "[source]\nurl = \"source.csv\"\nkey = \"id\"\n\n[sync]\nkey = \"external_id\"\n\
             on_missing = \"{on_missing}\"\nstate = \"state.db\"\n"
        ),
    );
    let source = |rows: &[(&str, &str)]| {
        let mut text = String::from("id,first_name\n");
        for (id, name) in rows {
            text.push_str(&format!("{id},{name}\n"));
        }
        std::fs::write(&csv, text).expect("csv");
    };
    let present = |customers: &BTreeMap<String, serde_json::Value>, id: &str| {
        customers
            .get(id)
            .is_some_and(|customer| customer["archived"] == false)
    };

    // Content that goes back to what the state recorded, after an update the hub applied.
    source(&[("r1", "Orig"), ("d1", "Del"), ("k1", "Keep")]);
    agent_ok("push", &job, &[]).await;
    source(&[("r1", "Edited"), ("d1", "Del"), ("k1", "Keep")]);
    proxy.killed_after_apply("push", &job).await;
    assert_eq!(hub_customers(&hub).await["r1"]["first_name"], "Edited");
    source(&[("r1", "Orig"), ("d1", "Del"), ("k1", "Keep")]);
    agent_ok("push", &job, &[]).await;
    agent_ok("push", &job, &[]).await;
    assert_eq!(
        hub_customers(&hub).await["r1"]["first_name"],
        "Orig",
        "the hub keeps content the source no longer has"
    );

    // A row whose archive or delete the hub applied comes back as it was.
    source(&[("r1", "Orig"), ("k1", "Keep")]);
    proxy.killed_after_apply("push", &job).await;
    assert!(!present(&hub_customers(&hub).await, "d1"), "applied");
    source(&[("r1", "Orig"), ("d1", "Del"), ("k1", "Keep")]);
    agent_ok("push", &job, &[]).await;
    let customers = hub_customers(&hub).await;
    assert!(
        present(&customers, "d1"),
        "d1 is back in the source: {customers:?}"
    );
    assert_eq!(customers["d1"]["first_name"], "Del");

    // A row whose create the hub applied leaves the source.
    source(&[("r1", "Orig"), ("d1", "Del"), ("k1", "Keep"), ("n1", "New")]);
    proxy.killed_after_apply("push", &job).await;
    assert!(present(&hub_customers(&hub).await, "n1"), "applied");
    source(&[("r1", "Orig"), ("d1", "Del"), ("k1", "Keep")]);
    agent_ok("push", &job, &[]).await;
    let customers = hub_customers(&hub).await;
    assert!(
        !present(&customers, "n1"),
        "n1 left the source: {customers:?}"
    );
    if on_missing == "delete" {
        assert!(!customers.contains_key("n1"), "deleted");
    }

    // The hub equals the source, and the state agrees: the next run sends nothing.
    for (id, name) in [("r1", "Orig"), ("d1", "Del"), ("k1", "Keep")] {
        assert!(present(&customers, id), "{id}");
        assert_eq!(customers[id]["first_name"], name, "{id}");
    }
    assert_push_sends_nothing(&job, 3).await;
}

/// What the pushes' proxies swallow the answer of: a batch.
const BATCH: &str = "POST /v1/customers/sync ";

/// A push of `source.csv`, keyed by its `id` column, that archives the customers of rows that
/// leave it.
const CSV_ARCHIVING: &str = "[source]\nurl = \"source.csv\"\nkey = \"id\"\n\n[sync]\n\
    key = \"external_id\"\non_missing = \"archive\"\nstate = \"state.db\"\n";

/// A `sync` killed after the hub applied a local edit it sent, before the answer was written
/// back, and the row edited again before the next run, back to what it was or on to something
/// new: that edit reaches the hub, whatever the conflict policy (found in an audit: the hub's
/// copy of the agent's own edit was taken for a hub change, and the later edit lost).
async fn an_edit_applied_but_never_acknowledged_then_edited_again(hub: TestHub) {
    let mut proxy = SwallowingProxy::start(&hub.base_url, "PATCH /v1/customers/").await;
    for (conflict, edited_again) in [
        ("source_wins", "A"),
        ("hub_wins", "A"),
        ("hub_wins", "C"),
        ("newest_wins", "C"),
    ] {
        let work = Workdir::new();
        let url = mirror_url(&hub, &work).await;
        let job = work.job_at(&proxy.url, &mirror_job(&url, conflict));
        let label = format!("kr-{conflict}-{edited_again}");
        hub.create_customer(serde_json::json!({"external_id": label, "note": "A"}))
            .await;
        agent_ok("sync", &job, &[]).await;
        let set_note = |note: &str| {
            format!(
                "UPDATE customers SET note = '{note}', updated_at = '2999-01-01T00:00:00Z' \
                 WHERE external_id = '{label}'"
            )
        };
        mirror_sql(&url, &set_note("B")).await;
        proxy.killed_after_apply("sync", &job).await;
        assert_eq!(hub_customers(&hub).await[&label]["note"], "B", "applied");
        mirror_sql(&url, &set_note(edited_again)).await;

        let out = agent_ok("sync", &job, &[]).await;
        counts(&out, &[("failed", 0)]);
        let customers = hub_customers(&hub).await;
        let customer = &customers[&label];
        assert_eq!(customer["note"], edited_again, "{conflict}: {customer}");
        assert_eq!(customer["version"], 3, "{conflict}: {customer}");
        assert_syncs_move_nothing(&job).await;
        assert_mirror_equals_hub(&url, &customers).await;
        let kept = format!(
            "SELECT count(*) FROM customers WHERE external_id = '{label}' \
             AND note = '{edited_again}' AND version = 3"
        );
        assert_eq!(mirror_scalar(&url, &kept).await, 1, "{conflict}");
    }
}

/// A customer erased in the hub whose row then leaves the source: the archive, an upsert, makes
/// it again, and the run is killed before it erases it again (found in a review: the next run
/// archived it again and left it). The next run erases it and forgets its key, and a customer
/// archived as usual beside it stays archived.
async fn an_archive_that_made_an_erased_customer_again_then_a_kill(hub: TestHub) {
    let mut proxy = SwallowingProxy::start(&hub.base_url, BATCH).await;
    let work = Workdir::new();
    let csv = work.path("source.csv");
    let job = work.job_at(&proxy.url, CSV_ARCHIVING);
    std::fs::write(&csv, "id,first_name\ne1,Erased\na1,Archived\nk1,Keep\n").expect("csv");
    agent_ok("push", &job, &[]).await;
    let reply = clientele_testkit::call(hub.delete("/v1/customers/external_id/e1")).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    std::fs::write(&csv, "id,first_name\nk1,Keep\n").expect("csv");
    proxy.killed_after_apply("push", &job).await;
    let customers = hub_customers(&hub).await;
    assert_eq!(
        customers["e1"]["archived"], true,
        "made again: {customers:?}"
    );

    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("failed", 0)]);
    let customers = hub_customers(&hub).await;
    assert!(!customers.contains_key("e1"), "{customers:?}");
    assert_eq!(customers["a1"]["archived"], true, "{customers:?}");
    assert_eq!(customers["a1"]["first_name"], "Archived");
    assert_eq!(customers["k1"]["archived"], false);
    assert_push_sends_nothing(&job, 1).await;
    assert!(!hub_customers(&hub).await.contains_key("e1"));
}

/// A row's hub value changed (a rename, sent with `match`), the hub applied it and the agent
/// never heard back, and then the row left the source: the customer is found under its new
/// value, and archived.
async fn a_rename_applied_but_never_acknowledged_then_gone_from_the_source(hub: TestHub) {
    let mut proxy = SwallowingProxy::start(&hub.base_url, BATCH).await;
    let work = Workdir::new();
    let csv = work.path("source.csv");
    let job = work.job_at(
        &proxy.url,
        &format!("{CSV_ARCHIVING}\n[fields]\nexternal_id = \"code\"\n"),
    );
    let source = |rows: &str| {
        std::fs::write(&csv, format!("id,code,first_name\n{rows}")).expect("csv");
    };
    source("p1,C-OLD,Ann\nk1,K-1,Keep\n");
    agent_ok("push", &job, &[]).await;
    source("p1,C-NEW,Ann\nk1,K-1,Keep\n");
    proxy.killed_after_apply("push", &job).await;
    let customers = hub_customers(&hub).await;
    assert!(
        customers.contains_key("C-NEW") && !customers.contains_key("C-OLD"),
        "the rename was applied: {customers:?}"
    );
    source("k1,K-1,Keep\n");
    counts(
        &agent_ok("push", &job, &[]).await,
        &[("archived", 1), ("failed", 0)],
    );
    let customers = hub_customers(&hub).await;
    assert_eq!(customers["C-NEW"]["archived"], true, "{customers:?}");
    assert_eq!(customers["K-1"]["archived"], false, "{customers:?}");
    assert_push_sends_nothing(&job, 1).await;
    // Back in the source under its new value: un-archived, not created again.
    source("p1,C-NEW,Ann\nk1,K-1,Keep\n");
    counts(
        &agent_ok("push", &job, &[]).await,
        &[("created", 0), ("updated", 1)],
    );
    let customers = hub_customers(&hub).await;
    assert_eq!(customers.len(), 2, "{customers:?}");
    assert_eq!(customers["C-NEW"]["archived"], false, "{customers:?}");
}
