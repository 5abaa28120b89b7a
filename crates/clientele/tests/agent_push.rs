//! `clientele push` end to end, on a SQLite and a PostgreSQL hub: the real binary against a real
//! hub. New, changed and vanished rows (archive and delete), nothing sent when nothing changed,
//! rejected rows in the report without stopping the run, CSV, JSONL and PostgreSQL sources, a jq
//! transform, the dry run, and clear errors for a bad job file, hub, key or table. Content that
//! comes back (A → B → A, archived → back → archived) reaches the hub every time, and a key that
//! the source holds twice is used once. Email keys are one key whatever their case, as on the hub.
//! A batch over the hub's body limit is split; a row too large alone is rejected, not fatal.

mod agent_support;

use agent_support::*;
use clientele_testkit::{TestHub, hub_tests};

hub_tests!(
    push_creates_changes_and_archives_and_skips_what_is_unchanged,
    on_missing_delete_erases_and_ignore_leaves_alone,
    rejected_rows_go_to_the_report_and_the_rest_goes_through,
    csv_and_jsonl_sources_with_a_transform,
    a_dry_run_prints_the_plan_and_changes_nothing,
    every_repeats_the_run,
    content_that_comes_back_is_sent_again,
    a_key_twice_in_the_source_is_rejected_the_second_time,
    email_keys_compare_as_the_hub_compares_them,
    a_customer_whose_row_took_another_key_is_not_given_on_missing,
    a_rename_a_killed_run_sent_is_found_when_the_row_changes_again,
    archiving_a_customer_erased_in_the_hub_leaves_it_erased,
    batches_too_large_for_the_hub_are_split_and_a_row_too_large_is_rejected,
);

async fn change_count(hub: &TestHub) -> usize {
    // The hub's change records are the proof that nothing was re-applied.
    hub.count_rows("changes").await as usize
}

async fn push_creates_changes_and_archives_and_skips_what_is_unchanged(hub: TestHub) {
    let work = Workdir::new();
    let rows = people(1..251);
    sqlite_source(&work.path("source.db"), &borrowed(&rows)).await;
    let job = work.job(&hub, PEOPLE_JOB);

    let out = agent_ok("push", &job, &[]).await;
    counts(
        &out,
        &[
            ("created", 250),
            ("updated", 0),
            ("unchanged", 0),
            ("failed", 0),
        ],
    );
    let customers = hub_customers(&hub).await;
    assert_eq!(customers.len(), 250);
    assert_eq!(customers["7"]["first_name"], "Name 7");
    assert_eq!(customers["7"]["email"], "p7@example.com");
    assert_eq!(customers["7"]["archived"], false);

    // Nothing changed: nothing is sent, so the hub records no change at all.
    let changes_before = change_count(&hub).await;
    let out = agent_ok("push", &job, &[]).await;
    counts(
        &out,
        &[
            ("created", 0),
            ("updated", 0),
            ("unchanged", 250),
            ("archived", 0),
        ],
    );
    assert_eq!(change_count(&hub).await, changes_before);

    // Three changed, two gone, one new.
    let mut conn = sqlite_conn(&work).await;
    upsert_people(
        &mut conn,
        &[
            (1, "Renamed 1", "p1@example.com"),
            (2, "Name 2", "new2@example.com"),
            (3, "Renamed 3", "p3@example.com"),
            (999, "Newcomer", "n@example.com"),
        ],
    )
    .await;
    sqlite_sql(
        &work.path("source.db"),
        "DELETE FROM people WHERE person_id IN (10, 11)",
    )
    .await;
    let out = agent_ok("push", &job, &[]).await;
    counts(
        &out,
        &[
            ("created", 1),
            ("updated", 3),
            ("unchanged", 245),
            ("archived", 2),
            ("deleted", 0),
            ("failed", 0),
        ],
    );
    let customers = hub_customers(&hub).await;
    assert_eq!(customers.len(), 251);
    assert_eq!(customers["1"]["first_name"], "Renamed 1");
    assert_eq!(customers["2"]["email"], "new2@example.com");
    assert_eq!(customers["999"]["first_name"], "Newcomer");
    assert_eq!(customers["10"]["archived"], true);
    assert_eq!(customers["11"]["archived"], true);
    assert_eq!(customers["12"]["archived"], false);

    // Archived once, not again; and a row that comes back is un-archived.
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("created", 0), ("updated", 0), ("archived", 0)]);
    upsert_people(&mut conn, &[(10, "Name 10", "p10@example.com")]).await;
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("updated", 1), ("archived", 0)]);
    assert_eq!(hub_customers(&hub).await["10"]["archived"], false);
}

async fn sqlite_conn(work: &Workdir) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", work.path("source.db").display()))
        .await
        .expect("source")
}

async fn on_missing_delete_erases_and_ignore_leaves_alone(hub: TestHub) {
    let work = Workdir::new();
    sqlite_source(&work.path("source.db"), &borrowed(&people(1..21))).await;
    let job = work.job(&hub, &PEOPLE_JOB.replace("\"archive\"", "\"delete\""));
    agent_ok("push", &job, &[]).await;
    sqlite_sql(
        &work.path("source.db"),
        "DELETE FROM people WHERE person_id <= 5",
    )
    .await;
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("deleted", 5), ("archived", 0), ("failed", 0)]);
    let customers = hub_customers(&hub).await;
    assert_eq!(customers.len(), 15);
    assert!(!customers.contains_key("3"));

    let job = work.job(&hub, &PEOPLE_JOB.replace("\"archive\"", "\"ignore\""));
    sqlite_sql(
        &work.path("source.db"),
        "DELETE FROM people WHERE person_id <= 10",
    )
    .await;
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("deleted", 0), ("archived", 0)]);
    assert_eq!(hub_customers(&hub).await.len(), 15);
}

async fn rejected_rows_go_to_the_report_and_the_rest_goes_through(hub: TestHub) {
    let work = Workdir::new();
    sqlite_source(
        &work.path("source.db"),
        &[
            (1, "Ann", "ann@example.com"),
            (2, "Bad", "not-an-email"),
            (3, "Cid", "cid@example.com"),
        ],
    )
    .await;
    sqlite_sql(
        &work.path("source.db"),
        "INSERT INTO people (person_id, fname, email) VALUES (NULL, 'Nokey', 'x@example.com')",
    )
    .await;
    // Row 1 gets an invalid currency, row 2 has a bad e-mail, row 4 has no key.
    let job = work.job(&hub, &PEOPLE_JOB.replace("table = \"people\"", "query = \"SELECT CASE WHEN person_id = 4 THEN NULL ELSE person_id END AS person_id, fname, email, CASE WHEN person_id = 1 THEN 'XYZ' ELSE 'EUR' END AS currency FROM people ORDER BY fname\""));
    let (out, lines) = push_reporting(&work, &job, "report.jsonl").await;
    let text = format!("{lines:#?}");
    let failed = summary(&out)["failed"];
    assert_eq!(failed as usize, lines.len(), "{text}");
    assert_eq!(failed, 3, "{out}\n{text}");
    let currency = lines
        .iter()
        .find(|line| line["key"] == "1")
        .expect("row 1 reported");
    assert_eq!(currency["problem"]["status"], 422);
    assert!(currency["problem"]["code"].is_string());
    assert!(currency["row"].is_u64());
    assert_eq!(currency["problem"]["errors"][0]["field"], "currency");
    let email = lines
        .iter()
        .find(|line| line["key"] == "2")
        .expect("row 2 reported");
    assert_eq!(email["problem"]["errors"][0]["field"], "email");
    assert_eq!(email["row"], 2);
    assert!(
        lines
            .iter()
            .any(|line| line["key"].is_null() && line["problem"]["code"] == "missing_key"),
        "{text}"
    );
    let customers = hub_customers(&hub).await;
    assert_eq!(customers["3"]["first_name"], "Cid");
    assert!(!customers.contains_key("1"));
    // Rejected rows are retried on the next run (their state was never recorded), and fail again.
    let out = agent_ok("push", &job, &[]).await;
    assert_eq!(summary(&out)["failed"], failed);
}

async fn csv_and_jsonl_sources_with_a_transform(hub: TestHub) {
    let work = Workdir::new();
    std::fs::write(
        work.path("people.csv"),
        "code,first,mail,tags,street,zip\nc1,Ann,ANN@Example.com,\"[\"\"vip\"\"]\",Main 1,00100\nc2,Bo,bo@example.com,,Side 2,00200\n",
    )
    .expect("csv");
    let transform = r#"transform = '''
{ external_id: .code, first_name: .first, email: (.mail | ascii_downcase), tags: (.tags // []),
  addresses: [{title: "Primary address", kind: "billing", line1: .street, postal_code: .zip, country: "FI"}] }
'''
"#;
    let job = work.job(
        &hub,
        &format!("[source]\nurl = \"people.csv\"\nkey = \"code\"\n\n[sync]\nstate = \"csv.state.db\"\n\n[fields]\n{transform}"),
    );
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("created", 2), ("failed", 0)]);
    let customers = hub_customers(&hub).await;
    assert_eq!(customers["c1"]["email"], "ann@example.com");
    assert_eq!(customers["c1"]["tags"], serde_json::json!(["vip"]));
    assert_eq!(customers["c2"]["addresses"][0]["postal_code"], "00200");
    assert_eq!(customers["c2"]["addresses"][0]["country"], "FI");
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("created", 0), ("updated", 0), ("unchanged", 2)]);

    // The rows did not change but the transform did: what it now gives differently is sent.
    let edited = transform.replace("(.tags // [])", "(.tags // [\"new\"])");
    let with_transform = |transform: &str| {
        format!(
            "[source]\nurl = \"people.csv\"\nkey = \"code\"\n\n[sync]\nstate = \"csv.state.db\"\n\n[fields]\n{transform}"
        )
    };
    let job = work.job(&hub, &with_transform(&edited));
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("updated", 1), ("unchanged", 1), ("failed", 0)]);
    assert_eq!(
        hub_customers(&hub).await["c2"]["tags"],
        serde_json::json!(["new"])
    );
    // An edit that changes no item sends nothing, and neither does the run after it.
    let job = work.job(
        &hub,
        &with_transform(&edited.replace("{ external_id", "{external_id")),
    );
    for _ in 0..2 {
        let out = agent_ok("push", &job, &[]).await;
        counts(&out, &[("updated", 0), ("unchanged", 2)]);
    }

    std::fs::write(
        work.path("people.jsonl"),
        "{\"id\": \"j1\", \"first_name\": \"Jo\", \"tags\": [\"a\", \"b\"], \"email_opt_out\": true}\n\n{\"id\": \"j2\", \"first_name\": \"Ky\"}\nnot json\n[1, 2]\n",
    )
    .expect("jsonl");
    let job = work.job(
        &hub,
        "[source]\nurl = \"people.jsonl\"\nkey = \"id\"\n\n[sync]\nstate = \"jsonl.state.db\"\n",
    );
    let (out, lines) = push_reporting(&work, &job, "jsonl-report.jsonl").await;
    counts(&out, &[("created", 2), ("failed", 2)]);
    let customers = hub_customers(&hub).await;
    assert_eq!(customers["j1"]["email_opt_out"], true);
    assert_eq!(customers["j1"]["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(customers["j2"]["first_name"], "Ky");
    // A line that is not JSON, or not an object, is reported as such, with its line number.
    let text = format!("{lines:?}");
    assert_eq!(lines.len(), 2, "{text}");
    for (line, (row, says)) in lines.iter().zip([(3, "line 4"), (4, "line 5")]) {
        assert_eq!(line["row"], row, "{text}");
        assert_eq!(line["problem"]["code"], "invalid_row", "{text}");
        let detail = line["problem"]["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{text}");
    }
    assert!(
        lines[0]["problem"]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not valid JSON"),
        "{text}"
    );
    assert!(
        lines[1]["problem"]["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("not an object"),
        "{text}"
    );
}

async fn a_dry_run_prints_the_plan_and_changes_nothing(hub: TestHub) {
    let work = Workdir::new();
    sqlite_source(&work.path("source.db"), &borrowed(&people(1..6))).await;
    let job = work.job(&hub, PEOPLE_JOB);
    let out = agent_ok("push", &job, &["--dry-run"]).await;
    counts(&out, &[("created", 5)]);
    assert!(out.lines().any(|line| line == "create 3"), "{out}");
    assert!(hub_customers(&hub).await.is_empty());
    // Not even a state file (found in an audit: one was created, its tables made).
    assert!(!work.path("state.db").exists());
    agent_ok("push", &job, &[]).await;
    // An existing state file is left as it was, to the byte.
    let state_bytes = || {
        ["state.db", "state.db-wal"].map(|name| std::fs::read(work.path(name)).unwrap_or_default())
    };
    let before = state_bytes();
    sqlite_sql(
        &work.path("source.db"),
        "DELETE FROM people WHERE person_id = 2",
    )
    .await;
    sqlite_sql(
        &work.path("source.db"),
        "UPDATE people SET fname = 'X' WHERE person_id = 4",
    )
    .await;
    let out = agent_ok("push", &job, &["--dry-run"]).await;
    counts(&out, &[("created", 0), ("updated", 1), ("archived", 1)]);
    assert!(out.lines().any(|line| line == "archive 2"), "{out}");
    assert!(out.lines().any(|line| line == "update 4"), "{out}");
    assert!(
        before == state_bytes(),
        "the dry run changed the state file"
    );
    let customers = hub_customers(&hub).await;
    assert_eq!(customers["2"]["archived"], false);
    assert_eq!(customers["4"]["first_name"], "Name 4");
}

async fn every_repeats_the_run(hub: TestHub) {
    let work = Workdir::new();
    sqlite_source(&work.path("source.db"), &borrowed(&people(1..11))).await;
    let job = work.job(&hub, PEOPLE_JOB);
    let mut child = agent_command("push", &job, &["--every", "1s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
    // A row added while it repeats is picked up by a later run.
    upsert_people(
        &mut sqlite_conn(&work).await,
        &[(50, "Late", "late@example.com")],
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    child.kill().expect("kill");
    let output = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summaries: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("push: created="))
        .collect();
    assert!(summaries.len() >= 3, "{stdout}");
    assert!(summaries[0].contains("created=10"), "{stdout}");
    assert!(
        summaries[1].contains("created=0") && summaries[1].contains("unchanged=10"),
        "{stdout}"
    );
    assert_eq!(hub_customers(&hub).await["50"]["first_name"], "Late");
}

/// Every send is applied: a row whose content returns to an earlier one (within the hub's
/// idempotency window) is not answered with the replay of the first send.
async fn content_that_comes_back_is_sent_again(hub: TestHub) {
    let work = Workdir::new();
    sqlite_source(&work.path("source.db"), &[(1, "A", "p1@example.com")]).await;
    let job = work.job(&hub, PEOPLE_JOB);
    let mut conn = sqlite_conn(&work).await;
    counts(&agent_ok("push", &job, &[]).await, &[("created", 1)]);
    for name in ["B", "A"] {
        upsert_people(&mut conn, &[(1, name, "p1@example.com")]).await;
        let out = agent_ok("push", &job, &[]).await;
        counts(&out, &[("updated", 1), ("failed", 0)]);
        assert_eq!(hub_customers(&hub).await["1"]["first_name"], name, "{out}");
    }

    // Leaves, comes back, leaves again: archived, un-archived, archived.
    for (archived, row) in [(true, None), (false, Some("A")), (true, None)] {
        match row {
            Some(name) => upsert_people(&mut conn, &[(1, name, "p1@example.com")]).await,
            None => {
                sqlite_sql(
                    &work.path("source.db"),
                    "DELETE FROM people WHERE person_id = 1",
                )
                .await
            }
        }
        let out = agent_ok("push", &job, &[]).await;
        counts(&out, &[("failed", 0)]);
        assert_eq!(
            hub_customers(&hub).await["1"]["archived"],
            archived,
            "{out}"
        );
    }
}

/// The second row with a key already read in this run is rejected; the first one is used.
async fn a_key_twice_in_the_source_is_rejected_the_second_time(hub: TestHub) {
    let work = Workdir::new();
    sqlite_source(&work.path("source.db"), &borrowed(&people(1..6))).await;
    let job = work.job(
        &hub,
        &PEOPLE_JOB.replace(
            "table = \"people\"",
            "query = \"SELECT person_id, fname, email FROM people UNION ALL SELECT person_id, 'Twin', email FROM people WHERE person_id = 2\"",
        ),
    );
    let report = work.path("report.jsonl");
    let report_arg = ["--report", report.to_str().expect("path")];
    for run in 0..2 {
        let out = agent_ok("push", &job, &report_arg).await;
        let (created, unchanged) = if run == 0 { (5, 0) } else { (0, 5) };
        counts(
            &out,
            &[
                ("created", created),
                ("unchanged", unchanged),
                ("updated", 0),
                ("failed", 1),
            ],
        );
        let lines = report_lines(&report);
        let text = format!("{lines:#?}");
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["key"], "2", "{text}");
        assert_eq!(lines[0]["row"], 6, "{text}");
        assert_eq!(
            lines[0]["problem"]["code"], "duplicate_key_in_source",
            "{text}"
        );
        assert_eq!(hub_customers(&hub).await["2"]["first_name"], "Name 2");
    }

    // A key that left the source is noticed even while another key is there twice.
    sqlite_sql(
        &work.path("source.db"),
        "DELETE FROM people WHERE person_id = 3",
    )
    .await;
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("archived", 1), ("failed", 1), ("unchanged", 4)]);
    assert_eq!(hub_customers(&hub).await["3"]["archived"], true);
}

/// The hub's customers by email (lowercased), with their first names.
async fn customers_by_email(hub: &TestHub) -> std::collections::BTreeMap<String, String> {
    hub_customers_by(hub, "email")
        .await
        .into_iter()
        .map(|(email, customer)| {
            let first_name = customer["first_name"].as_str().unwrap_or_default();
            (email.to_lowercase(), first_name.to_owned())
        })
        .collect()
}

/// With `[sync] key = "email"`, a key whose case changed is the same customer (the hub matches
/// emails case-insensitively): it is updated, never created and then deleted as gone. Two rows
/// whose emails differ only by case are one key twice. A state written by an agent that kept
/// the case of email keys is rewritten once, and no customer looks gone.
async fn email_keys_compare_as_the_hub_compares_them(hub: TestHub) {
    let work = Workdir::new();
    let csv = work.path("source.csv");
    let job = work.job(
        &hub,
        "[source]\nurl = \"source.csv\"\nkey = \"email\"\n\n[sync]\nkey = \"email\"\n\
         on_missing = \"delete\"\nstate = \"state.db\"\n",
    );
    let source = |rows: &[&str]| {
        std::fs::write(&csv, format!("email,first_name\n{}\n", rows.join("\n"))).expect("csv");
    };
    source(&["Case.One@Example.com,A", "other@example.com,B"]);
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("created", 2), ("failed", 0)]);

    source(&["case.one@example.com,A", "other@example.com,B"]);
    let out = agent_ok("push", &job, &["--dry-run"]).await;
    assert!(
        !out.lines().any(|line| line.starts_with("delete ")),
        "{out}"
    );
    let out = agent_ok("push", &job, &[]).await;
    counts(
        &out,
        &[
            ("created", 0),
            ("updated", 1),
            ("deleted", 0),
            ("unchanged", 1),
        ],
    );
    let customers = customers_by_email(&hub).await;
    assert_eq!(customers.len(), 2, "{customers:?}");
    assert_eq!(customers["case.one@example.com"], "A");

    // The same email twice, in two cases: the second row is rejected, nothing is deleted.
    source(&[
        "case.one@example.com,A",
        "other@example.com,B",
        "OTHER@example.com,C",
    ]);
    let (out, lines) = push_reporting(&work, &job, "report.jsonl").await;
    counts(&out, &[("failed", 1), ("deleted", 0), ("unchanged", 2)]);
    let text = format!("{lines:?}");
    assert!(text.contains("duplicate_key_in_source"), "{text}");
    assert_eq!(customers_by_email(&hub).await["other@example.com"], "B");

    // A state file an older agent wrote, its keys in the source's case.
    source(&["Mixed.Case@Example.com,M"]);
    std::fs::remove_file(work.path("state.db")).expect("fresh state");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(work.path(&format!("state.db{suffix}")));
    }
    agent_ok("push", &job, &[]).await;
    for sql in [
        "DELETE FROM meta WHERE name = 'key_form'",
        "UPDATE pushed SET key = 'Mixed.Case@Example.com'",
    ] {
        sqlite_sql(&work.path("state.db"), sql).await;
    }
    let out = agent_ok("push", &job, &[]).await;
    counts(
        &out,
        &[
            ("created", 0),
            ("updated", 0),
            ("deleted", 0),
            ("unchanged", 1),
        ],
    );
    assert_eq!(
        customers_by_email(&hub).await["mixed.case@example.com"],
        "M"
    );
}

/// The job keys customers by email, the source by `person_id`. The table is reloaded with new
/// ids (the same people), and two rows come to share one email: the customers are the new keys'
/// now, so no key that left gets `on_missing` (found in an audit: `delete` erased them all, and
/// every later run said `unchanged`), in the plan of a dry run neither. A customer whose every
/// row left still gets it.
async fn a_customer_whose_row_took_another_key_is_not_given_on_missing(hub: TestHub) {
    for on_missing in ["delete", "archive"] {
        let work = Workdir::new();
        let path = work.path("source.db");
        let prefix = format!("{on_missing}.");
        let email = |name: &str| format!("{prefix}{name}@example.com");
        sqlite_source(
            &path,
            &[
                (1, "Ann", &email("ann")),
                (2, "Bo", &email("bö")),
                (3, "Cy", &email("cy")),
            ],
        )
        .await;
        let job = work.job(
            &hub,
            &PEOPLE_JOB
                .replace("key = \"external_id\"", "key = \"email\"")
                .replace("\"archive\"", &format!("\"{on_missing}\"")),
        );
        agent_ok("push", &job, &[]).await;
        sqlite_sql(&path, "DELETE FROM people").await;
        // Reloaded: new ids; Bo's email is now also Dee's (in another case, of a letter beyond
        // ASCII, which SQLite's `lower()` does not fold: found in a review), Cy is gone.
        sqlite_source(
            &path,
            &[
                (11, "Ann", &email("ann")),
                (12, "Bo", &email("bö")),
                (13, "Dee", &email("BÖ")),
            ],
        )
        .await;
        let (verb, gone) = match on_missing {
            "delete" => ("delete", "deleted"),
            _ => ("archive", "archived"),
        };
        let plan = agent_ok("push", &job, &["--dry-run"]).await;
        let planned: Vec<&str> = plan.lines().filter(|line| line.starts_with(verb)).collect();
        assert_eq!(planned, vec![format!("{verb} 3")], "{plan}");
        let out = agent_ok("push", &job, &[]).await;
        counts(&out, &[(gone, 1), ("failed", 0)]);
        // Emails as the hub compares them (Dee's row sent Bo's in another case).
        let customers: std::collections::BTreeMap<String, serde_json::Value> =
            hub_customers_by(&hub, "email")
                .await
                .into_iter()
                .map(|(email, customer)| (email.to_lowercase(), customer))
                .collect();
        let mine: Vec<_> = customers
            .keys()
            .filter(|email| email.starts_with(&prefix))
            .collect();
        let live = |name: &str| {
            customers
                .get(&email(name))
                .is_some_and(|customer| customer["archived"] == false)
        };
        assert!(live("ann") && live("bö"), "{on_missing}: {mine:?}");
        assert!(!live("cy"), "{on_missing}: {mine:?}");
        assert_push_sends_nothing(&job, 3).await;
        // Dee's row leaves: Bo's row still holds the customer.
        sqlite_sql(&path, "DELETE FROM people WHERE person_id = 13").await;
        let out = agent_ok("push", &job, &[]).await;
        counts(&out, &[(gone, 0), ("failed", 0)]);
        let bo = hub_customers_by(&hub, "email").await[&email("BÖ")].clone();
        assert_eq!(bo["archived"], false, "{on_missing}");
    }
}

/// A run killed after the hub applied a rename (`match`) it sent, and the row's hub key changed
/// again before the next run: the customer is found under the value the rename gave it, not
/// created again beside it (found in an audit: a second customer, and the first orphaned),
/// even after another killed run's rename that never reached the hub.
async fn a_rename_a_killed_run_sent_is_found_when_the_row_changes_again(hub: TestHub) {
    let work = Workdir::new();
    let path = work.path("source.db");
    sqlite_source(&path, &[(1, "Ann", "ren-a@example.com")]).await;
    let job = work.job(
        &hub,
        &PEOPLE_JOB.replace("key = \"external_id\"", "key = \"email\""),
    );
    agent_ok("push", &job, &[]).await;
    // What the killed run left: the rename to ren-b applied on the hub, its batch in flight.
    let reply = clientele_testkit::call(hub.post("/v1/customers/sync").json(&serde_json::json!({
        "key": "email",
        "customers": [{"email": "ren-b@example.com", "match": "ren-a@example.com"}],
    })))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // And a later killed run's rename to ren-x, never sent: the state keeps only the last value
    // in flight, so only the customer's id still finds it under ren-b.
    sqlite_sql(
        &work.path("state.db"),
        "INSERT INTO in_flight (batch, keys) VALUES \
         ('killed-1', '[[\"1\", \"ren-b@example.com\"]]'), \
         ('killed-2', '[[\"1\", \"ren-x@example.com\"]]')",
    )
    .await;
    // The row changes again, before the next run.
    sqlite_sql(
        &path,
        "UPDATE people SET email = 'ren-c@example.com' WHERE person_id = 1",
    )
    .await;
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("created", 0), ("updated", 1), ("failed", 0)]);
    let customers = hub_customers_by(&hub, "email").await;
    assert_eq!(
        customers.keys().collect::<Vec<_>>(),
        vec!["ren-c@example.com"],
        "one customer, renamed twice"
    );
    assert_push_sends_nothing(&job, 1).await;
}

/// A customer erased in the hub whose row then leaves the source: `archive`, an upsert, made
/// it again, an archived customer with nothing but its key (found in an audit). It is erased
/// again, and its key forgotten.
async fn archiving_a_customer_erased_in_the_hub_leaves_it_erased(hub: TestHub) {
    let work = Workdir::new();
    let path = work.path("source.db");
    sqlite_source(&path, &borrowed(&people(1..4))).await;
    let job = work.job(&hub, PEOPLE_JOB);
    agent_ok("push", &job, &[]).await;
    let reply = clientele_testkit::call(hub.delete("/v1/customers/external_id/2")).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    sqlite_sql(&path, "DELETE FROM people WHERE person_id IN (2, 3)").await;
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("archived", 1), ("failed", 0)]);
    let customers = hub_customers(&hub).await;
    assert!(!customers.contains_key("2"), "{customers:?}");
    assert_eq!(customers["3"]["archived"], true);
    assert_push_sends_nothing(&job, 1).await;
    assert!(!hub_customers(&hub).await.contains_key("2"));
}

/// A hub whose body limit is 32 KiB: a batch of 40 rows with 5 KB notes is refused whole
/// (413) and goes through in parts; a row whose 40 KB note is too large alone is a rejected row,
/// reported with the hub's problem, and every other row goes through.
async fn batches_too_large_for_the_hub_are_split_and_a_row_too_large_is_rejected(hub: TestHub) {
    let config = clientele_api::ApiConfig {
        max_body_bytes: 32 * 1024,
        ..clientele_api::ApiConfig::default()
    };
    let hub = TestHub::start(hub.backend, config)
        .await
        .expect("a hub like the test's");
    let work = Workdir::new();
    let mut csv = String::from("id,first_name,note\n");
    for i in 0..40 {
        csv.push_str(&format!("n{i},Name {i},{}\n", "x".repeat(5000)));
    }
    csv.push_str(&format!("huge,Huge,{}\n", "y".repeat(40_000)));
    std::fs::write(work.path("source.csv"), csv).expect("csv");
    let job = work.job(
        &hub,
        "[source]\nurl = \"source.csv\"\nkey = \"id\"\n\n[sync]\nkey = \"external_id\"\n\
         state = \"state.db\"\nbatch_size = 1000\n",
    );
    let report = work.path("report.jsonl");
    let report_arg = ["--report", report.to_str().expect("path")];
    let out = agent_ok("push", &job, &report_arg).await;
    counts(&out, &[("created", 40), ("failed", 1)]);
    let customers = hub_customers(&hub).await;
    assert_eq!(customers.len(), 40);
    assert_eq!(customers["n7"]["note"].as_str().map(str::len), Some(5000));
    assert!(!customers.contains_key("huge"));
    let lines = report_lines(&report);
    let text = format!("{lines:#?}");
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(lines[0]["key"], "huge", "{text}");
    assert_eq!(lines[0]["row"], 41, "{text}");
    assert_eq!(lines[0]["problem"]["code"], "payload_too_large", "{text}");

    // The next run sends the rejected row alone, and it is rejected again; nothing else moves.
    let out = agent_ok("push", &job, &report_arg).await;
    counts(
        &out,
        &[
            ("created", 0),
            ("updated", 0),
            ("unchanged", 40),
            ("failed", 1),
        ],
    );
}
