//! `clientele push` killed with SIGKILL at random moments, again and again, with the source
//! changing between some of the kills: the run that finally completes leaves the hub exactly
//! equal to the source, and no write was applied twice (every customer's version counts only
//! the distinct contents its row really had).

mod agent_support;

use std::collections::BTreeMap;
use std::time::Duration;

use agent_support::*;
use clientele_testkit::{TestHub, hub_tests};

hub_tests!(killed_pushes_resume_to_exactly_the_source);

/// A small deterministic generator, seeded from the clock (the seed is printed for replays).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound
    }
}

async fn killed_pushes_resume_to_exactly_the_source(hub: TestHub) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    eprintln!("kill test seed {seed}");
    let mut random = Lcg(seed);
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
        let mut child = agent_command("push", &job, &[])
            .spawn()
            .expect("spawn agent");
        let delay = 30 + random.next(700);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let finished = child.try_wait().expect("try_wait").is_some();
        child.kill().ok(); // SIGKILL
        child.wait().expect("reap");
        eprintln!("round {round}: killed after {delay} ms (finished first: {finished})");
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
                source_sql(
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
    let out = agent_ok("push", &job, &[]).await;
    counts(
        &out,
        &[
            ("created", 0),
            ("updated", 0),
            ("archived", 0),
            ("unchanged", source.len() as u64),
        ],
    );
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
