//! The agent's failures are clear and non-zero: a bad job file names its line and key (and a
//! missing one says so), an unreachable hub, a refused key, a missing source table, a key column
//! the source lacks (refused before anything is sent), a state file of another hub; and a
//! PostgreSQL source works. An https hub is reached over TLS, trusting the system's store.

mod agent_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use agent_support::*;
use clientele_testkit::TestHub;
use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::PrivatePkcs8KeyDer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_job_file_names_the_line_and_the_key() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    let job = work.job(
        &hub,
        &PEOPLE_JOB.replace("table = \"people\"", "tabel = \"people\""),
    );
    let output = agent("push", &job, &[]).await;
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("line 7") && stderr.contains("`source.tabel`"),
        "{stderr}"
    );
    let job = work.job(
        &hub,
        &PEOPLE_JOB.replace("concurrency = 4", "concurrency = 4\nbogus = 1"),
    );
    let stderr = stderr_of(&agent("push", &job, &[]).await);
    assert!(
        stderr.contains("line 16") && stderr.contains("`sync.bogus`"),
        "{stderr}"
    );

    let job = work.job(
        &hub,
        &PEOPLE_JOB.replace("concurrency = 4", "concurrency = 0"),
    );
    let stderr = stderr_of(&agent("push", &job, &[]).await);
    assert!(
        stderr.contains("line 15") && stderr.contains("sync.concurrency"),
        "{stderr}"
    );

    // A jq program that does not parse or compile: where and what, in words.
    for (program, says) in [
        ("{ external_id: ", "line 1, column 16"),
        ("{ external_id: nosuch(.a) }", "`nosuch/1`"),
    ] {
        let job = work.job(&hub, &format!("{PEOPLE_JOB}transform = '{program}'\n"));
        let stderr = stderr_of(&agent("push", &job, &[]).await);
        assert!(
            stderr.contains("line 19") && stderr.contains("fields.transform"),
            "{stderr}"
        );
        assert!(stderr.contains(says), "{stderr}");
        assert!(
            !stderr.contains("File {") && !stderr.contains("(\""),
            "{stderr}"
        );
    }

    let output = agent("push", &work.path("nowhere.toml"), &[]).await;
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("nowhere.toml: the job file does not exist") && !stderr.contains("line 0"),
        "{stderr}"
    );
}

/// A `[source] key` that names no column of the source is refused before anything is sent:
/// every row would lack a key, and every customer pushed before would look gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_column_the_source_lacks_is_refused_before_anything_is_sent() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    sqlite_source(&work.path("source.db"), &borrowed(&people(1..21))).await;
    let deleting = PEOPLE_JOB.replace("\"archive\"", "\"delete\"");
    agent_ok("push", &work.job(&hub, &deleting), &[]).await;
    std::fs::write(work.path("people.csv"), "person_id,fname\n1,Name 1\n").expect("csv");
    std::fs::write(
        work.path("people.jsonl"),
        "{\"person_id\": 1, \"fname\": \"Name 1\"}\n{\"person_id\": 2}\n",
    )
    .expect("jsonl");
    let wrong_key = deleting.replace("key = \"person_id\"", "key = \"personid\"");
    let file = |name: &str| {
        wrong_key.replace(
            "url = \"sqlite://source.db\"\ntable = \"people\"",
            &format!("url = \"{name}\""),
        )
    };
    let renamed = deleting.replace(
        "table = \"people\"",
        "query = \"SELECT person_id AS personid_, fname FROM people\"",
    );
    for (sections, says) in [
        (wrong_key.clone(), "person_id, fname, email, vip"),
        (renamed, "personid_, fname"),
        (file("people.csv"), "person_id, fname"),
        // A JSONL file has no header: no row yielding a key stops the run.
        (file("people.jsonl"), "none of the 2 rows read"),
    ] {
        let output = agent("push", &work.job(&hub, &sections), &[]).await;
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains("source.key") && stderr.contains(says),
            "{stderr}"
        );
        let customers = hub_customers(&hub).await;
        assert_eq!(customers.len(), 20, "{stderr}");
    }
}

/// A `[fields]` entry naming a column the source lacks (a typo) is refused, naming the entry
/// and the source's columns: the field would otherwise go unsent, or stay stale in the hub,
/// without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fields_column_the_source_lacks_is_refused_before_anything_is_sent() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    sqlite_source(&work.path("source.db"), &borrowed(&people(1..6))).await;
    std::fs::write(work.path("people.csv"), "person_id,fname\n1,Name 1\n").expect("csv");
    let typo = PEOPLE_JOB.replace("first_name = \"fname\"", "first_name = \"fnmae\"");
    let csv = typo.replace(
        "url = \"sqlite://source.db\"\ntable = \"people\"",
        "url = \"people.csv\"",
    );
    for (sections, says) in [
        (typo, "person_id, fname, email, vip"),
        (csv, "person_id, fname"),
    ] {
        let output = agent("push", &work.job(&hub, &sections), &[]).await;
        let stderr = stderr_of(&output);
        assert!(!output.status.success(), "{stderr}");
        assert!(
            stderr.contains("fields.first_name")
                && stderr.contains("no column `fnmae`")
                && stderr.contains(says),
            "{stderr}"
        );
        assert!(hub_customers(&hub).await.is_empty(), "{stderr}");
    }
}

/// A state file remembers the hub it pushed to: the same job aimed at another hub would send
/// nothing there, so it is refused with what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_of_another_hub_is_refused() {
    let hub = TestHub::sqlite().await;
    let other = TestHub::sqlite().await;
    let work = Workdir::new();
    sqlite_source(&work.path("source.db"), &borrowed(&people(1..11))).await;
    agent_ok("push", &work.job(&hub, PEOPLE_JOB), &[]).await;

    let output = agent("push", &work.job(&other, PEOPLE_JOB), &[]).await;
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&hub.base_url)
            && stderr.contains(&other.base_url)
            && stderr.contains("state.db"),
        "{stderr}"
    );
    assert!(hub_customers(&other).await.is_empty());

    // A state file of its own starts the job over on the other hub.
    let fresh = PEOPLE_JOB.replace("state = \"state.db\"", "state = \"other.state.db\"");
    let out = agent_ok("push", &work.job(&other, &fresh), &[]).await;
    counts(&out, &[("created", 10)]);
    let out = agent_ok("push", &work.job(&hub, PEOPLE_JOB), &[]).await;
    counts(&out, &[("unchanged", 10)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_hub_a_bad_key_and_a_missing_table_are_clear_errors() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    sqlite_source(&work.path("source.db"), &borrowed(&people(1..3))).await;

    let job = work.job(&hub, PEOPLE_JOB);
    let text = std::fs::read_to_string(&job)
        .expect("job")
        .replace(&hub.base_url, "http://127.0.0.1:9");
    std::fs::write(&job, text).expect("job");
    let output = agent("push", &job, &[]).await;
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("unreachable"),
        "{}",
        stderr_of(&output)
    );

    let job = work.job(&hub, PEOPLE_JOB);
    let mut command = agent_command("push", &job, &[]);
    command.env("CLIENTELE_TEST_AGENT_KEY", "ck_not_a_real_key");
    let output = tokio::task::spawn_blocking(move || command.output().expect("run"))
        .await
        .expect("join");
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("refused the API key"),
        "{}",
        stderr_of(&output)
    );

    let mut command = agent_command("push", &job, &[]);
    command.env_remove("CLIENTELE_TEST_AGENT_KEY");
    let output = tokio::task::spawn_blocking(move || command.output().expect("run"))
        .await
        .expect("join");
    assert!(
        stderr_of(&output).contains("hub.key_env"),
        "{}",
        stderr_of(&output)
    );

    let job = work.job(
        &hub,
        &PEOPLE_JOB.replace("table = \"people\"", "table = \"persons\""),
    );
    let output = agent("push", &job, &[]).await;
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("no such table: persons") && stderr.contains("source.table"),
        "{stderr}"
    );
    assert!(hub_customers(&hub).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_source_table_and_query() {
    let Some(url) = clientele_testkit::fresh_postgres_database().await else {
        return;
    };
    let hub = TestHub::sqlite().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("pg");
    for statement in [
        "CREATE TABLE people (person_id BIGINT PRIMARY KEY, fname TEXT, email TEXT, vip BOOLEAN, discount NUMERIC(5,2), born DATE)",
        "INSERT INTO people VALUES (1, 'Ann', 'ann@example.com', true, 12.50, '1990-05-01'), (2, 'Bo', NULL, false, NULL, NULL)",
    ] {
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .expect("setup");
    }
    let work = Workdir::new();
    let sections = format!(
        "[source]\nurl = \"{url}\"\ntable = \"people\"\nkey = \"person_id\"\n\n[sync]\nstate = \"pg.state.db\"\n\n[fields]\nfirst_name = \"fname\"\nemail_verified = \"vip\"\ndiscount_percent = \"discount\"\nbirthday = \"born\"\n"
    );
    let job = work.job(&hub, &sections);
    let out = agent_ok("push", &job, &[]).await;
    counts(&out, &[("created", 2), ("failed", 0)]);
    let customers = hub_customers(&hub).await;
    assert_eq!(customers["1"]["email_verified"], true);
    assert_eq!(customers["1"]["discount_percent"], 12.5);
    assert_eq!(customers["1"]["birthday"], "1990-05-01");
    assert_eq!(customers["2"]["first_name"], "Bo");

    sqlx::query("UPDATE people SET fname = 'Bob' WHERE person_id = 2")
        .execute(&mut conn)
        .await
        .expect("update");
    let job = work.job(
        &hub,
        &sections.replace(
            "table = \"people\"",
            // A statement ended as a terminal would have it (found in an audit: refused).
            "query = \"SELECT person_id, fname, vip, discount, born FROM people \
             WHERE person_id = 2 ; \"",
        ),
    );
    let out = agent_ok("push", &job, &[]).await;
    // The query sees one row: Bob is updated; the other row left this source and is archived.
    counts(&out, &[("updated", 1), ("archived", 1)]);
    let customers = hub_customers(&hub).await;
    assert_eq!(customers["2"]["first_name"], "Bob");
    assert_eq!(customers["1"]["archived"], true);

    // A key column the query does not have: refused, with the columns it does have.
    let job = work.job(
        &hub,
        &sections.replace("key = \"person_id\"", "key = \"id\""),
    );
    let output = agent("push", &job, &[]).await;
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("source.key") && stderr.contains("person_id, fname, email, vip"),
        "{stderr}"
    );
    assert_eq!(hub_customers(&hub).await["2"]["archived"], false);
}

/// A TLS endpoint in front of a test hub, as a reverse proxy would be: its certificate, made for
/// the test and issued to 127.0.0.1, is in `certificate` (PEM), and every handshake it completes
/// is counted.
struct TlsFront {
    url: String,
    handshakes: Arc<AtomicUsize>,
}

impl TlsFront {
    async fn start(hub: &TestHub, certificate: &Path) -> TlsFront {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
            .expect("a certificate");
        std::fs::write(certificate, made.cert.pem()).expect("certificate file");
        let key = PrivatePkcs8KeyDer::from(made.key_pair.serialize_der());
        // rustls's provider from its crate features: ring, the one this workspace builds.
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![made.cert.der().clone()], key.into())
            .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("address"));
        let upstream = hub.base_url.trim_start_matches("http://").to_owned();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, upstream, counted) =
                    (acceptor.clone(), upstream.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let mut hub = TcpStream::connect(&upstream).await.expect("the hub");
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut hub).await;
                });
            }
        });
        TlsFront { url, handshakes }
    }
}

/// Found in an audit: the client had no TLS at all, and said "scheme is not http". A hub behind
/// TLS whose certificate the system does not trust is refused, saying why; trusted (here through
/// `SSL_CERT_FILE`, as an operator's private CA would be), it is reached over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_hub_is_reached_over_tls() {
    let hub = TestHub::sqlite().await;
    let work = Workdir::new();
    let certificate = work.path("hub.pem");
    let front = TlsFront::start(&hub, &certificate).await;
    sqlite_source(&work.path("source.db"), &borrowed(&people(1..3))).await;
    let job = work.job_at(&front.url, PEOPLE_JOB);

    let mut command = agent_command("push", &job, &[]);
    command
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    let output = tokio::task::spawn_blocking(move || command.output().expect("run"))
        .await
        .expect("join");
    let stderr = stderr_of(&output);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(hub_customers(&hub).await.is_empty());

    let mut command = agent_command("push", &job, &[]);
    command.env("SSL_CERT_FILE", &certificate);
    let output = tokio::task::spawn_blocking(move || command.output().expect("run"))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", stderr_of(&output));
    counts(&stdout, &[("created", 2), ("failed", 0)]);
    assert!(front.handshakes.load(Ordering::SeqCst) >= 1);
    assert_eq!(hub_customers(&hub).await.len(), 2);
}
