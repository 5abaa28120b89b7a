//! What push makes of its source's rows, end to end: an explicit `[fields]` mapping wins over a
//! column named like its hub field, whatever the columns' order; a JSONL line or a CSV record
//! that is not UTF-8, or a CSV record with another number of cells than its header, is one
//! rejected row (`invalid_row`, with its line number), and the rest of the source goes through.

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
        let report = work.path(&format!("{file}.report.jsonl"));
        let out = agent_ok("push", &job, &["--report", report.to_str().expect("path")]).await;
        counts(&out, &[("created", 2), ("failed", 1)]);
        let customers = hub_customers(&hub).await;
        for key in keys {
            assert!(customers.contains_key(key), "{file}: {key} is pushed");
        }
        let lines = report_lines(&report);
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
    let report = work.path("cells.report.jsonl");
    let out = agent_ok("push", &job, &["--report", report.to_str().expect("path")]).await;
    counts(&out, &[("created", 2), ("failed", 2)]);
    let customers = hub_customers(&hub).await;
    assert!(customers.contains_key("k1") && customers.contains_key("k4"));
    let lines = report_lines(&report);
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
