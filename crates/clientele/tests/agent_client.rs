//! The typed client (`clientele-client`) against a real hub: signed requests are accepted (the
//! client builds exactly the string to sign of API.md), a wrong secret is 401, a bulk sync with
//! an idempotency key is replayed, the agent itself can run on a signed key, and clients wait
//! out 429s, all of them getting through when many are limited at once.

mod agent_support;

use agent_support::*;
use clientele_client::{Client, ClientError, Credentials, SyncRequest};
use clientele_testkit::{ADMIN_SECRET, TestHub, call, hub_tests};
use reqwest::Method;
use serde_json::{Value, json};

hub_tests!(
    signed_requests_sync_and_replay,
    the_agent_pushes_with_a_signed_key,
    the_client_waits_out_429_as_retry_after_says,
    clients_rate_limited_together_all_get_through
);

async fn signed_key(hub: &TestHub) -> (String, String) {
    let reply = call(
        hub.post("/v1/api-keys")
            .json(&json!({"name": "signed", "role": "write"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    (
        reply.body["id"].as_str().expect("id").to_owned(),
        reply.body["secret"].as_str().expect("secret").to_owned(),
    )
}

async fn signed_requests_sync_and_replay(hub: TestHub) {
    let (key_id, secret) = signed_key(&hub).await;
    let client = Client::new(
        &hub.base_url,
        Credentials::Signed {
            key_id: key_id.clone(),
            secret: secret.clone(),
        },
    )
    .expect("client");
    let page: Value = client
        .request(Method::GET, "/v1/customers?limit=10", None, None)
        .await
        .expect("a signed GET is accepted")
        .body;
    assert!(page["data"].is_array());

    let items = vec![
        serde_json::value::RawValue::from_string(
            json!({"external_id": "s1", "first_name": "Signed"}).to_string(),
        )
        .expect("raw"),
    ];
    let request = SyncRequest {
        key: "external_id",
        atomic: false,
        customers: &items,
    };
    let first = client
        .sync_customers(&request, "client-test-batch-1")
        .await
        .expect("signed sync");
    assert_eq!(first.body.summary.created, 1);
    assert!(!first.replayed);
    let again = client
        .sync_customers(&request, "client-test-batch-1")
        .await
        .expect("replay");
    assert!(again.replayed, "the same key and body are replayed");
    assert_eq!(
        again.body.summary.created, 1,
        "the first answer, not a second apply"
    );
    assert_eq!(hub_customers(&hub).await["s1"]["version"], 1);

    let wrong = Client::new(
        &hub.base_url,
        Credentials::Signed {
            key_id,
            secret: format!("{secret}x"),
        },
    )
    .expect("client");
    let error = wrong
        .request::<Value>(Method::GET, "/v1/customers", None, None)
        .await
        .expect_err("refused");
    assert!(
        matches!(error, ClientError::Problem { status: 401, .. }),
        "{error}"
    );
}

async fn the_agent_pushes_with_a_signed_key(hub: TestHub) {
    let (key_id, secret) = signed_key(&hub).await;
    let work = Workdir::new();
    sqlite_source(&work.path("source.db"), &borrowed(&people(1..31))).await;
    let job = work.job(&hub, PEOPLE_JOB);
    let text = std::fs::read_to_string(&job)
        .expect("job")
        .replace("key_env =", &format!("key_id = \"{key_id}\"\nkey_env ="));
    std::fs::write(&job, text).expect("job");
    let mut command = agent_command("push", &job, &[]);
    command.env("CLIENTELE_TEST_AGENT_KEY", &secret);
    let output = tokio::task::spawn_blocking(move || command.output().expect("run"))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    counts(&stdout, &[("created", 30), ("failed", 0)]);
    assert_eq!(hub_customers(&hub).await.len(), 30);
}

async fn the_client_waits_out_429_as_retry_after_says(hub: TestHub) {
    // One request a second, a burst of two, and the bootstrap key limited too.
    let hub = TestHub::with_rate_limit(hub.backend, 1.0, 2.0, true)
        .await
        .expect("a rate-limited hub");
    let mut limited = false;
    for _ in 0..10 {
        let reply = call(hub.get("/v1/customers?limit=1")).await;
        if reply.status == 429 {
            limited = true;
            break;
        }
    }
    assert!(limited, "the hub never limited the key");

    let client =
        Client::new(&hub.base_url, Credentials::Bearer(ADMIN_SECRET.to_owned())).expect("client");
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let page: Value = client
            .request(Method::GET, "/v1/customers?limit=1", None, None)
            .await
            .expect("the client retries after 429 until the bucket refills")
            .body;
        assert!(page["data"].is_array());
    }
    // The bucket was empty: three requests at one a second cannot all pass at once.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1500),
        "the client did not wait for the bucket: {:?}",
        started.elapsed()
    );
}

/// Many clients limited at once (an agent's concurrent workers): sent away with the same
/// `Retry-After`, they must not all come back in the same instant, where the same ones lose
/// again until their retries are spent. Two requests a second for 24 clients take about 12 s,
/// beyond the eight retries that count failures.
async fn clients_rate_limited_together_all_get_through(hub: TestHub) {
    let hub = TestHub::with_rate_limit(hub.backend, 2.0, 1.0, true)
        .await
        .expect("a rate-limited hub");
    let client =
        Client::new(&hub.base_url, Credentials::Bearer(ADMIN_SECRET.to_owned())).expect("client");
    let requests = (0..24).map(|_| {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request::<Value>(Method::GET, "/v1/customers?limit=1", None, None)
                .await
                .map(|reply| reply.status)
        })
    });
    for request in futures::future::join_all(requests).await {
        let outcome = request.expect("join");
        assert!(
            matches!(outcome, Ok(200)),
            "a client gave up under the rate limit: {outcome:?}"
        );
    }
}
