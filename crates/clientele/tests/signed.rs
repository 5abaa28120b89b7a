//! Signed requests over HTTP (`API.md`, "Authentication"): HMAC-SHA256 over method, path and
//! query, timestamp, nonce and body hash; a 300 s window; each signature accepted once, also
//! across hub processes sharing the database.

use clientele_api::ApiConfig;
use clientele_domain::Role;
use clientele_testkit::{Backend, FailAt, TestHub, assert_problem, call, field_errors, hub_tests};
use reqwest::Method;
use serde_json::json;

hub_tests!(
    a_signed_request_is_accepted_once,
    a_signed_write_creates_and_a_tampered_body_is_refused,
    the_path_and_query_are_signed,
    timestamps_outside_the_window_are_refused,
    missing_or_malformed_headers_are_named,
    a_wrong_secret_or_revoked_key_is_refused,
    signed_requests_keep_the_keys_role,
    a_replay_is_refused_by_another_hub_process,
    nonces_are_purged_only_after_twice_the_window,
    a_server_error_that_changed_nothing_leaves_the_nonce_for_a_retry,
    a_refusal_or_a_failed_commit_spends_the_nonce,
);

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

#[track_caller]
fn assert_refused(reply: &clientele_testkit::Reply, code: &str, header: &str) {
    assert_problem(reply, 401, code);
    let fields = field_errors(reply);
    assert!(
        fields.iter().any(|(field, _)| field == header),
        "{header} named in {fields:?}"
    );
}

async fn a_signed_request_is_accepted_once(hub: TestHub) {
    let key = hub.create_key_pair(Role::Read).await;
    let path = "/v1/customers?limit=10";
    let first = hub.signed_with(&key, Method::GET, path, b"", now(), "nonce-once-1");
    let reply = call(first).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(reply.body["data"].is_array());

    let replay = hub.signed_with(&key, Method::GET, path, b"", now(), "nonce-once-1");
    assert_refused(
        &call(replay).await,
        "signature_replayed",
        "X-Clientele-Nonce",
    );

    // The same nonce under another key is another signature.
    let other = hub.create_key_pair(Role::Read).await;
    let reply = call(hub.signed_with(&other, Method::GET, path, b"", now(), "nonce-once-1")).await;
    assert_eq!(reply.status, 200);

    // A signature beside a bearer key: which counts would be a guess, so neither does (found
    // in an audit: a valid signature with a bad bearer key was accepted).
    let both = hub
        .signed_with(&key, Method::GET, path, b"", now(), "nonce-once-2")
        .bearer_auth("ck_not_a_key");
    assert_problem(&call(both).await, 401, "unauthorized");
}

async fn a_signed_write_creates_and_a_tampered_body_is_refused(hub: TestHub) {
    let key = hub.create_key_pair(Role::Write).await;
    let body =
        serde_json::to_vec(&json!({"external_id": "S-1", "first_name": "Ada"})).expect("json");
    let reply = call(hub.signed(&key, Method::POST, "/v1/customers", &body)).await;
    assert_eq!(reply.status, 201, "{:?}", reply.body);
    assert_eq!(reply.body["first_name"], "Ada");

    let signed_body = serde_json::to_vec(&json!({"external_id": "S-2"})).expect("json");
    let tampered = hub
        .signed(&key, Method::POST, "/v1/customers", &signed_body)
        .body(r#"{"external_id": "S-3"}"#);
    assert_refused(
        &call(tampered).await,
        "signature_invalid",
        "X-Clientele-Signature",
    );
    let reply = call(hub.get("/v1/customers/external_id/S-3")).await;
    assert_eq!(reply.status, 404, "the tampered request wrote nothing");
    assert_eq!(hub.count_rows("customers").await, 1);
}

async fn the_path_and_query_are_signed(hub: TestHub) {
    let key = hub.create_key_pair(Role::Read).await;
    let signed = hub.signed(&key, Method::GET, "/v1/customers?limit=10", b"");
    // Sent to another query than the one signed.
    let mut request = signed.build().expect("request");
    request.url_mut().set_query(Some("limit=11"));
    let reply = call_built(&hub, request).await;
    assert_refused(&reply, "signature_invalid", "X-Clientele-Signature");
    // A key path routed under another encoding is checked against the path as sent.
    let reply = call(hub.signed(&key, Method::GET, "/v1/customers/external_id/orders", b"")).await;
    assert_eq!(
        reply.status, 404,
        "no such customer, and a valid signature: {}",
        reply.body
    );
    assert_eq!(reply.body["code"], "not_found");
}

async fn call_built(hub: &TestHub, request: reqwest::Request) -> clientele_testkit::Reply {
    let response = hub.client.execute(request).await.expect("send");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    clientele_testkit::Reply {
        status,
        headers,
        body,
    }
}

async fn timestamps_outside_the_window_are_refused(hub: TestHub) {
    let key = hub.create_key_pair(Role::Read).await;
    let path = "/v1/customers";
    for (offset, nonce) in [(-301, "too-old-1"), (301, "too-new-1")] {
        let reply =
            call(hub.signed_with(&key, Method::GET, path, b"", now() + offset, nonce)).await;
        assert_refused(&reply, "signature_expired", "X-Clientele-Timestamp");
    }
    for (offset, nonce) in [(-290, "old-but-ok"), (290, "new-but-ok")] {
        let reply =
            call(hub.signed_with(&key, Method::GET, path, b"", now() + offset, nonce)).await;
        assert_eq!(reply.status, 200, "{offset} s is inside the window");
    }
}

async fn missing_or_malformed_headers_are_named(hub: TestHub) {
    let key = hub.create_key_pair(Role::Read).await;
    let path = "/v1/customers";
    let without_signature = hub
        .client
        .get(hub.url(path))
        .header("X-Clientele-Key", &key.id)
        .header("X-Clientele-Timestamp", now().to_string())
        .header("X-Clientele-Nonce", "abcdefgh");
    assert_refused(
        &call(without_signature).await,
        "signature_missing",
        "X-Clientele-Signature",
    );

    for (nonce, why) in [("short", "too short"), ("has.dots.in.it", "bad characters")] {
        let reply = call(hub.signed_with(&key, Method::GET, path, b"", now(), nonce)).await;
        assert_eq!(reply.status, 401, "{why}");
        assert_refused(&reply, "signature_invalid", "X-Clientele-Nonce");
    }

    let request = hub
        .signed(&key, Method::GET, path, b"")
        .header("X-Clientele-Timestamp", "soon");
    assert_refused(
        &call(request).await,
        "signature_invalid",
        "X-Clientele-Timestamp",
    );
}

async fn a_wrong_secret_or_revoked_key_is_refused(hub: TestHub) {
    let key = hub.create_key_pair(Role::Read).await;
    let mut forged = key.clone();
    forged.secret.push('x');
    let reply = call(hub.signed(&forged, Method::GET, "/v1/customers", b"")).await;
    assert_refused(&reply, "signature_invalid", "X-Clientele-Signature");

    let unknown = clientele_testkit::KeyPair {
        id: "key_01JD3Y6Q4X8K2M5N7P9R1T3V5W".into(),
        secret: key.secret.clone(),
    };
    let reply = call(hub.signed(&unknown, Method::GET, "/v1/customers", b"")).await;
    assert_refused(&reply, "signature_invalid", "X-Clientele-Key");

    let reply = call(hub.delete(&format!("/v1/api-keys/{}", key.id))).await;
    assert_eq!(reply.status, 204);
    let reply = call(hub.signed(&key, Method::GET, "/v1/customers", b"")).await;
    assert_refused(&reply, "signature_invalid", "X-Clientele-Key");
}

async fn signed_requests_keep_the_keys_role(hub: TestHub) {
    let key = hub.create_key_pair(Role::Read).await;
    let body = br#"{"first_name": "Ada"}"#;
    let reply = call(hub.signed(&key, Method::POST, "/v1/customers", body)).await;
    assert_problem(&reply, 403, "forbidden");
    // With an Idempotency-Key too, the signed caller is the one the middleware sees.
    let reply = call(
        hub.signed(&key, Method::POST, "/v1/customers", body)
            .header("Idempotency-Key", "signed-1"),
    )
    .await;
    assert_problem(&reply, 403, "forbidden");
    assert_eq!(hub.count_rows("customers").await, 0);
}

async fn a_replay_is_refused_by_another_hub_process(hub: TestHub) {
    let key = hub.create_key_pair(Role::Read).await;
    let other = hub.another_process(ApiConfig::default()).await;
    let timestamp = now();
    let send = |to: &TestHub| {
        let request = to.signed_with(
            &key,
            Method::GET,
            "/v1/customers",
            b"",
            timestamp,
            "shared-1",
        );
        call(request)
    };
    assert_eq!(send(&hub).await.status, 200);
    assert_refused(
        &send(&other).await,
        "signature_replayed",
        "X-Clientele-Nonce",
    );
}

async fn nonces_are_purged_only_after_twice_the_window(hub: TestHub) {
    use clientele_domain::Timestamp;
    let key = hub.create_key_pair(Role::Read).await;
    let reply =
        call(hub.signed_with(&key, Method::GET, "/v1/customers", b"", now(), "purge-me-1")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(hub.count_rows("request_nonces").await, 1);

    let store = hub.state.store();
    let window_ago = Timestamp::from_micros(Timestamp::now().as_micros() - 600 * 1_000_000);
    assert_eq!(store.purge_nonces(window_ago).await.expect("purge"), 0);
    let replay = hub.signed_with(&key, Method::GET, "/v1/customers", b"", now(), "purge-me-1");
    assert_refused(
        &call(replay).await,
        "signature_replayed",
        "X-Clientele-Nonce",
    );

    let later = Timestamp::from_micros(Timestamp::now().as_micros() + 1_000_000);
    assert_eq!(store.purge_nonces(later).await.expect("purge"), 1);
    assert_eq!(hub.count_rows("request_nonces").await, 0);
}

/// Sends `body` as a signed `POST /v1/customers` with this timestamp and nonce.
async fn signed_create(
    hub: &TestHub,
    key: &clientele_testkit::KeyPair,
    body: &[u8],
    timestamp: i64,
    nonce: &str,
) -> clientele_testkit::Reply {
    call(hub.signed_with(key, Method::POST, "/v1/customers", body, timestamp, nonce)).await
}

/// A signed request that failed on the server side without changing anything (its write
/// rolled back) does not spend its nonce: the very same signed request, sent again, runs; once
/// it succeeded, its nonce is spent.
async fn a_server_error_that_changed_nothing_leaves_the_nonce_for_a_retry(hub: TestHub) {
    let key = hub.create_key_pair(Role::Write).await;
    let body = serde_json::to_vec(&json!({"external_id": "retried"})).expect("json");
    let timestamp = now();
    let send = || signed_create(&hub, &key, &body, timestamp, "retry-nonce-1");
    hub.refuse_writes("customers", "INSERT", FailAt::Statement)
        .await;
    let failed = send().await;
    hub.allow_writes("customers").await;
    assert_problem(&failed, 500, "internal_error");
    assert_eq!(hub.count_rows("customers").await, 0);
    assert_eq!(
        hub.count_rows("request_nonces").await,
        0,
        "the nonce is free"
    );

    let retried = send().await;
    assert_eq!(retried.status, 201, "{:?}", retried.body);
    assert_refused(&send().await, "signature_replayed", "X-Clientele-Nonce");
    assert_eq!(hub.count_rows("customers").await, 1);
}

/// A refusal (4xx) is a final answer: its nonce stays spent, since a replay might succeed once
/// the state changed. So does a server error raised by a commit, which may have applied.
async fn a_refusal_or_a_failed_commit_spends_the_nonce(hub: TestHub) {
    let key = hub.create_key_pair(Role::Write).await;
    let path = "/v1/customers/external_id/later";
    let patch = serde_json::to_vec(&json!({"note": "changed"})).expect("json");
    let timestamp = now();
    let send = || call(hub.signed_with(&key, Method::PATCH, path, &patch, timestamp, "refused-1"));
    assert_problem(&send().await, 404, "not_found");
    hub.create_customer(json!({"external_id": "later"})).await;
    assert_refused(&send().await, "signature_replayed", "X-Clientele-Nonce");
    assert_eq!(
        call(hub.get(path)).await.body["note"],
        serde_json::Value::Null
    );

    if hub.backend == Backend::Sqlite {
        return; // no way to fail a commit from outside
    }
    let body = serde_json::to_vec(&json!({"external_id": "unconfirmed"})).expect("json");
    let send = || signed_create(&hub, &key, &body, timestamp, "commit-1");
    hub.refuse_writes("customers", "INSERT", FailAt::Commit)
        .await;
    let failed = send().await;
    hub.allow_writes("customers").await;
    assert_eq!(failed.status, 500, "{:?}", failed.body);
    assert_refused(&send().await, "signature_replayed", "X-Clientele-Nonce");
}
