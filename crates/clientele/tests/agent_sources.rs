//! What push makes of its source's rows, end to end: an explicit `[fields]` mapping wins over a
//! column named like its hub field, whatever the columns' order; a JSONL line or a CSV record
//! that is not UTF-8, or a CSV record with another number of cells than its header, is one
//! rejected row (`invalid_row`, with its line number), and the rest of the source goes through;
//! a JSONL line naming a field twice is a rejected row that keeps its key; a source with two
//! columns of one name is refused before anything is read; and an email-keyed job folds the
//! case of its source keys only when the key column fills the email. A refused record keeps its
//! key, and a record that cannot be read at all holds `on_missing` back: neither makes a
//! customer still in the source look gone.

mod agent_support;

use agent_support::*;
use clientele_testkit::TestHub;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_mapping_wins_over_a_column_named_like_its_field() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    let source = work.path("source.db");
    let url = format!("sqlite://{}?mode=rwc", source.display());
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("source");
        // `note` sorts after `company`, `last_name` after `first_name`: the by-name column came
        // last and won before.
        for sql in [
            "CREATE TABLE p7 (pid TEXT, company TEXT, note TEXT, email TEXT, first_name TEXT, last_name TEXT)",
            "INSERT INTO p7 VALUES ('m7', 'ColCompany', 'ColNote', 'M7@X.com', 'Ann', 'ColLast')",
        ] {
            sqlx::query(sql)
                .execute(&mut conn)
                .await
                .expect("source sql");
        }
    }
    let job = work.job(
        &hub,
        "[source]\nurl = \"sqlite://source.db\"\ntable = \"p7\"\nkey = \"email\"\n\n[sync]\nkey = \"email\"\nstate = \"state.db\"\n\n[fields]\nnote = \"company\"\nlast_name = \"first_name\"\n",
    );
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("created", 1), ("failed", 0)]);
    let reply = clientele_testkit::call(hub.get("/v1/customers?limit=10")).await;
    let customer = &reply.body["data"][0];
    assert_eq!(customer["note"], "ColCompany", "{customer}");
    assert_eq!(customer["last_name"], "Ann", "{customer}");
    // A column `[fields]` maps feeds its mapping only.
    assert_eq!(customer["first_name"], Value::Null, "{customer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_that_is_not_utf8_is_a_rejected_row_and_the_rest_goes_through() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    std::fs::write(
        work.path("u.jsonl"),
        b"{\"id\": \"u1\"}\n{\"id\": \"u2\xff\"}\n{\"id\": \"u3\"}\n",
    )
    .expect("jsonl");
    std::fs::write(
        work.path("u.csv"),
        b"id,first_name\nc1,Ann\nc2,B\xffb\nc3,Cy\n",
    )
    .expect("csv");
    for (file, keys, line) in [("u.jsonl", ["u1", "u3"], 2), ("u.csv", ["c1", "c3"], 3)] {
        let job = work.job(
            &hub,
            &format!(
                "[source]\nurl = \"{file}\"\nkey = \"id\"\n\n[sync]\nstate = \"{file}.state.db\"\n"
            ),
        );
        let (out, lines) = push_reporting(&work, &job, &format!("{file}.report.jsonl")).await;
        counts(&out, &[("created", 2), ("failed", 1)]);
        let customers = hub_customers(&hub).await;
        for key in keys {
            assert!(customers.contains_key(key), "{file}: {key} is pushed");
        }
        assert_eq!(lines.len(), 1, "{file}: {lines:?}");
        assert_eq!(lines[0]["row"], 2, "{file}: {lines:?}");
        assert_eq!(
            lines[0]["problem"]["code"], "invalid_row",
            "{file}: {lines:?}"
        );
        let says = lines[0]["problem"]["detail"].to_string();
        assert!(
            says.contains(&format!("line {line}")) && says.contains("UTF-8"),
            "{file}: {lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_record_with_another_number_of_cells_is_a_rejected_row() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    std::fs::write(
        work.path("cells.csv"),
        "id,first_name\nk1,Ann\nk2,Bo,extra\nk3\nk4,Di\n",
    )
    .expect("csv");
    let job = work.job(
        &hub,
        "[source]\nurl = \"cells.csv\"\nkey = \"id\"\n\n[sync]\nstate = \"cells.state.db\"\n",
    );
    let (out, lines) = push_reporting(&work, &job, "cells.report.jsonl").await;
    counts(&out, &[("created", 2), ("failed", 2)]);
    let customers = hub_customers(&hub).await;
    assert!(customers.contains_key("k1") && customers.contains_key("k4"));
    let rows: Vec<&Value> = lines.iter().map(|line| &line["row"]).collect();
    assert_eq!(rows, [2, 3], "{lines:?}");
    for line in &lines {
        assert_eq!(line["problem"]["code"], "invalid_row", "{lines:?}");
        assert!(
            line["problem"]["detail"].to_string().contains("cells"),
            "{lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jsonl_line_naming_a_field_twice_is_refused_and_keeps_its_customer() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    let job = work.job(
        &hub,
        "[source]\nurl = \"d.jsonl\"\nkey = \"id\"\n\n[sync]\non_missing = \"archive\"\nstate = \"d.state.db\"\n",
    );
    std::fs::write(
        work.path("d.jsonl"),
        "{\"id\": \"d1\", \"first_name\": \"Ann\"}\n{\"id\": \"d2\", \"first_name\": \"Bo\"}\n",
    )
    .expect("jsonl");
    counts(&agent_ok("push", &job, &[]).await, &[("created", 2)]);
    // d2 now names its first name twice: which one is meant cannot be told.
    std::fs::write(
        work.path("d.jsonl"),
        "{\"id\": \"d1\", \"first_name\": \"Ann\"}\n{\"id\": \"d2\", \"first_name\": \"Bea\", \"first_name\": \"Bo\"}\n",
    )
    .expect("jsonl");
    let (out, lines) = push_reporting(&work, &job, "d.report.jsonl").await;
    counts(&out, &[("failed", 1), ("archived", 0), ("unchanged", 1)]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["key"], "d2", "{lines:?}");
    assert_eq!(lines[0]["problem"]["code"], "invalid_row", "{lines:?}");
    assert!(
        lines[0]["problem"]["detail"]
            .to_string()
            .contains("`first_name` more than once"),
        "{lines:?}"
    );
    // Still in the source: not archived, and left as it was.
    let d2 = &hub_customers(&hub).await["d2"];
    assert_eq!(d2["archived"], false, "{d2}");
    assert_eq!(d2["first_name"], "Bo", "{d2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_with_two_columns_of_one_name_is_refused_before_reading() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    std::fs::write(
        work.path("twice.csv"),
        "id,first_name,first_name\nt1,Ann,Anna\n",
    )
    .expect("csv");
    std::fs::File::create(work.path("source.db")).expect("source db");
    sqlite_sql(
        &work.path("source.db"),
        "CREATE TABLE a (id TEXT, name TEXT); CREATE TABLE b (id TEXT, name TEXT); \
         INSERT INTO a VALUES ('q1', 'x'); INSERT INTO b VALUES ('q1', 'y');",
    )
    .await;
    for source in [
        "url = \"twice.csv\"".to_owned(),
        "url = \"sqlite://source.db\"\nquery = \"SELECT a.id, a.name AS first_name, b.name AS first_name FROM a JOIN b USING (id)\"".to_owned(),
    ] {
        let job = work.job(
            &hub,
            &format!("[source]\n{source}\nkey = \"id\"\n\n[sync]\nstate = \"twice.state.db\"\n"),
        );
        let output = agent("push", &job, &[]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{source}: {stderr}");
        assert!(
            stderr.contains("two columns named `first_name`"),
            "{source}: {stderr}"
        );
    }
    assert!(hub_customers(&hub).await.is_empty());
}

/// With `[sync] key = "email"`, the key column's case is folded as the hub folds emails only when
/// that column fills the email. Here the email comes from its own column and the key is an ERP
/// id, where `AB1` and `ab1` are two customers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_keyed_job_compares_another_key_column_as_written() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    std::fs::write(
        work.path("erp.csv"),
        "erp_id,email,first_name\nAB1,one@example.com,Ann\nab1,two@example.com,Bo\n",
    )
    .expect("csv");
    let job = work.job(
        &hub,
        "[source]\nurl = \"erp.csv\"\nkey = \"erp_id\"\n\n[sync]\nkey = \"email\"\non_missing = \"archive\"\nstate = \"erp.state.db\"\n",
    );
    counts(
        &agent_ok("push", &job, &[]).await,
        &[("created", 2), ("failed", 0)],
    );
    let again = agent_ok("push", &job, &[]).await;
    counts(&again, &[("unchanged", 2), ("archived", 0), ("failed", 0)]);
    let reply = clientele_testkit::call(hub.get("/v1/customers?limit=10")).await;
    let emails: Vec<&str> = reply.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|customer| customer["email"].as_str())
        .collect();
    assert_eq!(emails.len(), 2, "{}", reply.body);

    // The key column filling the email is folded: two spellings are one customer.
    std::fs::write(
        work.path("mail.csv"),
        "mail,first_name\nCase@Example.com,Cy\ncase@example.com,Di\n",
    )
    .expect("csv");
    let job = work.job(
        &hub,
        "[source]\nurl = \"mail.csv\"\nkey = \"mail\"\n\n[sync]\nkey = \"email\"\nstate = \"mail.state.db\"\n",
    );
    let (out, lines) = push_reporting(&work, &job, "mail.report.jsonl").await;
    counts(&out, &[("created", 1), ("failed", 1)]);
    assert_eq!(
        lines[0]["problem"]["code"], "duplicate_key_in_source",
        "{lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_never_make_their_customers_look_gone() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    let job = work.job(
        &hub,
        "[source]\nurl = \"m.csv\"\nkey = \"id\"\n\n[sync]\non_missing = \"delete\"\nstate = \"m.state.db\"\n",
    );
    std::fs::write(work.path("m.csv"), "id,first_name\nk1,Ann\nk2,Bo\nk3,Cy\n").expect("csv");
    counts(&agent_ok("push", &job, &[]).await, &[("created", 3)]);
    // k2 gets a byte that is not UTF-8, k3 a cell too many: refused, and still in the source.
    std::fs::write(
        work.path("m.csv"),
        b"id,first_name\nk1,Ann\nk2,B\xffo\nk3,Cy,extra\n",
    )
    .expect("csv");
    let (out, lines) = push_reporting(&work, &job, "m.report.jsonl").await;
    counts(&out, &[("failed", 2), ("deleted", 0), ("unchanged", 1)]);
    let keys: Vec<Value> = lines.into_iter().map(|line| line["key"].clone()).collect();
    assert_eq!(keys, [Value::from("k2"), Value::from("k3")]);
    let customers = hub_customers(&hub).await;
    assert!(
        ["k1", "k2", "k3"]
            .iter()
            .all(|k| customers.contains_key(*k)),
        "{customers:?}"
    );
    // A bad byte in the key cell itself: the key read is not the one meant, so it may be any
    // key not read, and nothing is deleted while it is there.
    std::fs::write(
        work.path("m.csv"),
        b"id,first_name\nk1,Ann\nk\xff2,Bo\nk3,Cy\n",
    )
    .expect("csv");
    let output = agent("push", &job, &[]).await;
    assert!(output.status.success());
    counts(
        &String::from_utf8_lossy(&output.stdout),
        &[("failed", 1), ("deleted", 0)],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("could not be read"), "{stderr}");
    assert!(hub_customers(&hub).await.contains_key("k2"));

    // A JSONL line that is not JSON at all may be any row: nothing is deleted while it is there.
    let job = work.job(
        &hub,
        "[source]\nurl = \"j.jsonl\"\nkey = \"id\"\n\n[sync]\non_missing = \"delete\"\nstate = \"j.state.db\"\n",
    );
    std::fs::write(work.path("j.jsonl"), "{\"id\": \"j1\"}\n{\"id\": \"j2\"}\n").expect("jsonl");
    counts(&agent_ok("push", &job, &[]).await, &[("created", 2)]);
    std::fs::write(
        work.path("j.jsonl"),
        "{\"id\": \"j1\"}\n{\"id\": \"j2\", oops}\n",
    )
    .expect("jsonl");
    let output = agent("push", &job, &[]).await;
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    counts(&stdout, &[("failed", 1), ("deleted", 0)]);
    assert!(stderr.contains("could not be read"), "{stderr}");
    assert!(hub_customers(&hub).await.contains_key("j2"));
    // Once every record reads, the key that left is deleted.
    std::fs::write(work.path("j.jsonl"), "{\"id\": \"j1\"}\n").expect("jsonl");
    counts(
        &agent_ok("push", &job, &[]).await,
        &[("deleted", 1), ("failed", 0)],
    );
    assert!(!hub_customers(&hub).await.contains_key("j2"));
}

/// Found in an audit: serde_json read a NUMERIC key beyond 64 bits as a double, so two such
/// keys became one external id and one customer (the second row overwrote the first), and a
/// value beyond a double's range stopped the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_keys_beyond_64_bits_keep_every_digit() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    std::fs::write(
        work.path("n.jsonl"),
        "{\"id\": 123456789012345678901234, \"first_name\": \"Ann\"}\n\
         {\"id\": 123456789012345678901235, \"first_name\": \"Bo\", \"discount_percent\": 12.50}\n\
         {\"id\": 1e400, \"first_name\": \"Cy\"}\n",
    )
    .expect("jsonl");
    let job = work.job(
        &hub,
        "[source]\nurl = \"n.jsonl\"\nkey = \"id\"\n\n[sync]\nstate = \"n.state.db\"\n",
    );
    counts(
        &agent_ok("push", &job, &[]).await,
        &[("created", 3), ("failed", 0)],
    );
    let customers = hub_customers(&hub).await;
    assert_eq!(customers["123456789012345678901234"]["first_name"], "Ann");
    assert_eq!(customers["123456789012345678901235"]["first_name"], "Bo");
    assert_eq!(
        customers["123456789012345678901235"]["discount_percent"],
        12.5
    );
    assert_eq!(customers["1e400"]["first_name"], "Cy");

    let Some(url) = clientele_testkit::fresh_postgres_database().await else {
        return;
    };
    let hub = TestHub::sqlite().await;
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("pg");
        for statement in [
            "CREATE TABLE accounts (account_no NUMERIC PRIMARY KEY, fname TEXT, balance NUMERIC)",
            "INSERT INTO accounts VALUES
                 (123456789012345678901234, 'Ann', 1e400),
                 (123456789012345678901235, 'Bo', 0.1),
                 (7, 'Cy', NULL)",
        ] {
            sqlx::query(statement)
                .execute(&mut conn)
                .await
                .expect("setup");
        }
    }
    let job = work.job(
        &hub,
        &format!(
            "[source]\nurl = \"{url}\"\ntable = \"accounts\"\nkey = \"account_no\"\n\n[sync]\nstate = \"pg.state.db\"\n\n[fields]\nfirst_name = \"fname\"\nnote = \"balance\"\n"
        ),
    );
    counts(
        &agent_ok("push", &job, &[]).await,
        &[("created", 3), ("failed", 0)],
    );
    let customers = hub_customers(&hub).await;
    assert_eq!(customers.len(), 3, "{customers:?}");
    assert_eq!(customers["123456789012345678901234"]["first_name"], "Ann");
    assert_eq!(
        customers["123456789012345678901234"]["note"],
        format!("1{}", "0".repeat(400))
    );
    assert_eq!(customers["123456789012345678901235"]["first_name"], "Bo");
    assert_eq!(customers["123456789012345678901235"]["note"], "0.1");
    assert_eq!(customers["7"]["first_name"], "Cy");
}
