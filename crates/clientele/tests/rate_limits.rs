//! Rate limiting per API key over HTTP: a token bucket per key and hub process, 429
//! `rate_limited` with `Retry-After`, the bootstrap key exempt unless configured, and every
//! password hashed or verified charged as a request of its own.

use clientele_domain::Role;
use clientele_testkit::{ADMIN_SECRET, HubProcess, TestHub, assert_problem, call, hub_tests};
use reqwest::Method;

hub_tests!(
    a_key_over_its_burst_gets_429_with_retry_after,
    the_bootstrap_key_is_exempt_unless_configured,
    signed_requests_spend_the_same_bucket,
    the_open_endpoints_are_never_limited,
    passwords_are_charged_one_token_each,
);

/// A hub (on the test's backend) whose keys may make three requests, then one a second.
async fn tiny(hub: &TestHub, limit_bootstrap: bool) -> TestHub {
    TestHub::with_rate_limit(hub.backend, 1.0, 3.0, limit_bootstrap)
        .await
        .expect("a hub with a tiny rate limit")
}

async fn a_key_over_its_burst_gets_429_with_retry_after(hub: TestHub) {
    let hub = tiny(&hub, false).await;
    let secret = hub.create_key(Role::Write).await;
    let limited = hub.as_key(&secret);
    for _ in 0..3 {
        assert_eq!(call(limited.get("/v1/customers")).await.status, 200);
    }
    let reply = call(
        limited
            .post("/v1/customers")
            .json(&serde_json::json!({"first_name": "X"})),
    )
    .await;
    assert_problem(&reply, 429, "rate_limited");
    reply.retry_after_secs();
    assert_eq!(
        hub.count_rows("customers").await,
        0,
        "a limited request does nothing"
    );

    // Another key has its own bucket.
    let other = hub.as_key(&hub.create_key(Role::Read).await);
    assert_eq!(call(other.get("/v1/customers")).await.status, 200);

    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        call(limited.get("/v1/customers")).await.status,
        200,
        "refilled"
    );
}

async fn the_bootstrap_key_is_exempt_unless_configured(hub: TestHub) {
    let exempt = tiny(&hub, false).await;
    for _ in 0..10 {
        assert_eq!(call(exempt.get("/v1/customers")).await.status, 200);
    }
    let strict = tiny(&hub, true).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(call(strict.get("/v1/customers")).await.status);
    }
    assert_eq!(statuses[..3], [200, 200, 200]);
    assert_eq!(statuses[4], 429, "{statuses:?}");
}

async fn signed_requests_spend_the_same_bucket(hub: TestHub) {
    let hub = tiny(&hub, false).await;
    let key = hub.create_key_pair(Role::Read).await;
    let bearer = hub.as_key(&key.secret);
    for _ in 0..3 {
        assert_eq!(call(bearer.get("/v1/customers")).await.status, 200);
    }
    let reply = call(hub.signed(&key, Method::GET, "/v1/customers", b"")).await;
    assert_problem(&reply, 429, "rate_limited");
}

async fn the_open_endpoints_are_never_limited(hub: TestHub) {
    // Found in an audit: a health check that sent a key was refused once the key's bucket ran
    // dry, and a load balancer would have taken the hub out of service.
    let hub = tiny(&hub, false).await;
    let limited = hub.as_key(&hub.create_key(Role::Read).await);
    for _ in 0..5 {
        for path in ["/healthz", "/metrics", "/openapi.json"] {
            assert_eq!(call(limited.get(path)).await.status, 200, "{path}");
        }
    }
    // The open endpoints took nothing from the bucket: its burst of three is all there.
    for _ in 0..3 {
        assert_eq!(call(limited.get("/v1/customers")).await.status, 200);
    }
    assert_problem(
        &call(limited.get("/v1/customers")).await,
        429,
        "rate_limited",
    );
}

async fn passwords_are_charged_one_token_each(hub: TestHub) {
    // Found in a review: a bulk sync of a thousand passwords made a thousand Argon2id hashes for
    // one token.
    let hub = tiny(&hub, false).await;
    let limited = hub.as_key(&hub.create_key(Role::Write).await);
    let batch = serde_json::json!({"key": "external_id", "customers": [
        {"external_id": "a", "password": "correct horse 1"},
        {"external_id": "b", "password": "correct horse 2"},
        {"external_id": "c", "password": "correct horse 3"},
    ]});
    let send = || {
        limited
            .post("/v1/customers/sync")
            .header("Idempotency-Key", "three-passwords")
            .json(&batch)
    };
    assert_eq!(call(limited.get("/v1/customers")).await.status, 200);
    // Its own token leaves one: not enough for three passwords, nor for as many as the
    // bucket can hold beside a request (two).
    let refused = call(send()).await;
    assert_problem(&refused, 429, "rate_limited");
    assert_eq!(refused.retry_after_secs(), 2, "two tokens to come back");
    assert_eq!(
        hub.count_rows("customers").await,
        0,
        "nothing hashed or written"
    );

    // Its Retry-After was enough, and the idempotency key was left unused.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let applied = call(send()).await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    assert_eq!(applied.body["summary"]["created"], 3);
    // Three passwords cost three tokens though two were left: the key is in debt.
    assert_problem(
        &call(limited.get("/v1/customers")).await,
        429,
        "rate_limited",
    );

    // A password verified is charged too: the bucket refilled holds three, the request and its
    // password take two, and a second check finds one.
    tokio::time::sleep(std::time::Duration::from_millis(4100)).await;
    let id = applied.body["results"][0]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let check = || {
        limited
            .post(&format!("/v1/customers/{id}/verify-password"))
            .json(&serde_json::json!({"password": "correct horse 1"}))
    };
    let verdict = call(check()).await;
    assert_eq!(verdict.body["valid"], true, "{}", verdict.body);
    assert_problem(&call(check()).await, 429, "rate_limited");
}

/// The `serve` flags reach the limiter: the real binary with a burst of 2 for every key, the
/// bootstrap key included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_flags_configure_the_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("hub.db").display());
    let flags = [
        "--rate-limit",
        "0.5",
        "--rate-burst",
        "2",
        "--rate-limit-bootstrap",
    ];
    let mut hub = HubProcess::start_with(
        std::path::Path::new(env!("CARGO_BIN_EXE_clientele")),
        &url,
        dir.path(),
        &flags,
    );
    let client = reqwest::Client::new();
    let get = || {
        client
            .get(hub.url("/v1/customers"))
            .bearer_auth(ADMIN_SECRET)
    };
    assert_eq!(call(get()).await.status, 200);
    assert_eq!(call(get()).await.status, 200);
    let reply = call(get()).await;
    assert_problem(&reply, 429, "rate_limited");
    // One token takes 2 s at 0.5/s (less as time passes since the last one was spent).
    let retry = reply.header("retry-after").expect("Retry-After");
    assert!(retry == "2" || retry == "1", "Retry-After {retry}");
    hub.kill_9();
}
