//! Authentication and authorisation over HTTP: bearer secrets, roles, the API key endpoints, how
//! secrets and passwords are stored (read back from the database itself), and password checks.

use std::collections::BTreeMap;

use clientele_api::ApiConfig;
use clientele_domain::Role;
use clientele_testkit::{
    ADMIN_SECRET, Backend, Reply, TestHub, assert_invalid, assert_problem, call, hub_tests,
};
use serde_json::{Value, json};

hub_tests!(
    requests_without_valid_credentials_are_unauthorized,
    the_bootstrap_admin_key_works,
    a_read_key_reads_but_writes_nothing,
    a_write_key_writes_customers_but_not_keys,
    an_admin_key_does_everything,
    a_created_key_shows_its_secret_once,
    a_revoked_key_is_refused_at_once,
    revoking_a_missing_key_is_not_found,
    invalid_key_bodies_are_refused,
    key_secrets_are_not_stored_in_plain_text,
    passwords_are_write_only,
    verify_password_checks_the_password,
    passwords_are_stored_as_argon2id_hashes,
    a_null_password_removes_it,
);

const PASSWORD: &str = "correct horse battery";

/// A well-formed customer id that no customer has.
const MISSING_CUSTOMER: &str = "cus_01JD3Y6Q4X8K2M5N7P9R1T3V5W";

/// Every row of `sql`'s result, as column name → value bytes (text as UTF-8, integers and
/// booleans as text, `None` for NULL), read straight from the hub's database.
async fn rows(hub: &TestHub, sql: &str) -> Vec<BTreeMap<String, Option<Vec<u8>>>> {
    use sqlx::{Column as _, Row as _};

    fn value<R: sqlx::Row>(row: &R, i: usize) -> Option<Vec<u8>>
    where
        usize: sqlx::ColumnIndex<R>,
        for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Option<bool>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Option<Vec<u8>>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
            return v.map(|v| v.to_string().into_bytes());
        }
        if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
            return v.map(|v| v.to_string().into_bytes());
        }
        if let Ok(v) = row.try_get::<Option<String>, _>(i) {
            return v.map(String::into_bytes);
        }
        match row.try_get::<Option<Vec<u8>>, _>(i) {
            Ok(v) => v,
            Err(e) => panic!("column {i} is not an integer, boolean, text or bytes: {e}"),
        }
    }

    match hub.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&hub.database_url)
                .await
                .expect("open the SQLite database");
            let rows = sqlx::query(sql).fetch_all(&pool).await.expect("query");
            let result = rows
                .iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| (row.column(i).name().to_owned(), value(row, i)))
                        .collect()
                })
                .collect();
            pool.close().await;
            result
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&hub.database_url)
                .await
                .expect("open the PostgreSQL database");
            let rows = sqlx::query(sql).fetch_all(&pool).await.expect("query");
            // Text arrays (the change feed's `teams`) are joined with commas.
            let cell = |row: &sqlx::postgres::PgRow, i: usize| {
                if sqlx::TypeInfo::name(row.column(i).type_info()).ends_with("[]") {
                    let items: Option<Vec<String>> = row.try_get(i).expect("a text array");
                    items.map(|items| items.join(",").into_bytes())
                } else {
                    value(row, i)
                }
            };
            let result = rows
                .iter()
                .map(|row| {
                    (0..row.len())
                        .map(|i| (row.column(i).name().to_owned(), cell(row, i)))
                        .collect()
                })
                .collect();
            pool.close().await;
            result
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates a key through the API and returns the whole 201 body.
async fn create_key(hub: &TestHub, body: Value) -> Value {
    let reply = call(hub.post("/v1/api-keys").json(&body)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.body
}

async fn key_count(hub: &TestHub) -> usize {
    let reply = call(hub.get("/v1/api-keys")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["data"].as_array().map_or(0, Vec::len)
}

fn customer_path(customer: &Value) -> String {
    format!(
        "/v1/customers/{}",
        customer["id"].as_str().expect("a customer id")
    )
}

async fn requests_without_valid_credentials_are_unauthorized(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"external_id": "P-1", "first_name": "Ada"}))
        .await;
    let path = customer_path(&customer);
    let anonymous = &hub.client;
    let routes = [
        ("GET", "/v1/customers".to_owned()),
        ("POST", "/v1/customers".to_owned()),
        ("GET", path.clone()),
        ("PATCH", path.clone()),
        ("DELETE", path.clone()),
        ("GET", "/v1/customers/external_id/P-1".to_owned()),
        ("PUT", "/v1/customers/external_id/P-1".to_owned()),
        ("POST", format!("{path}/verify-password")),
        ("GET", "/v1/api-keys".to_owned()),
        ("POST", "/v1/api-keys".to_owned()),
        (
            "DELETE",
            "/v1/api-keys/key_01JD3Y6Q4X8K2M5N7P9R1T3V5W".to_owned(),
        ),
        // Even a customer that does not exist is 401 first, not 404.
        ("GET", format!("/v1/customers/{MISSING_CUSTOMER}")),
    ];
    for (method, route) in &routes {
        let method: reqwest::Method = method.parse().expect("method");
        let url = hub.url(route);
        let body =
            json!({"first_name": "Mallory", "password": "12345678", "name": "k", "role": "admin"});
        let attempts = [
            ("no Authorization", anonymous.request(method.clone(), &url)),
            (
                "a wrong secret",
                anonymous
                    .request(method.clone(), &url)
                    .bearer_auth("ck_not_a_real_secret"),
            ),
            (
                "a prefix of the admin secret",
                anonymous
                    .request(method.clone(), &url)
                    .bearer_auth(&ADMIN_SECRET[..ADMIN_SECRET.len() - 1]),
            ),
            (
                "Basic credentials",
                anonymous
                    .request(method.clone(), &url)
                    .basic_auth("admin", Some(ADMIN_SECRET)),
            ),
            (
                "the secret without a scheme",
                anonymous
                    .request(method.clone(), &url)
                    .header("authorization", ADMIN_SECRET),
            ),
            (
                "an empty bearer",
                anonymous
                    .request(method.clone(), &url)
                    .header("authorization", "Bearer "),
            ),
        ];
        for (what, request) in attempts {
            let reply = call(request.json(&body)).await;
            assert_eq!(reply.status, 401, "{method} {route} with {what}: {reply:?}");
            assert_problem(&reply, 401, "unauthorized");
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Bearer realm=\"clientele\""),
                "a 401 names its scheme"
            );
        }
    }
    // None of that changed anything.
    let stored = call(hub.get(&path)).await;
    assert_eq!(stored.body, customer);
    assert_eq!(key_count(&hub).await, 1, "only the bootstrap key exists");

    // The scheme is case-insensitive (RFC 9110).
    let reply = call(
        anonymous
            .get(hub.url("/v1/customers"))
            .header("authorization", format!("bearer {ADMIN_SECRET}")),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

async fn the_bootstrap_admin_key_works(hub: TestHub) {
    let admin = hub.as_key(ADMIN_SECRET);
    let reply = call(admin.get("/v1/api-keys")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let keys = reply.body["data"].as_array().expect("data").clone();
    assert_eq!(keys.len(), 1, "{}", reply.body);
    assert_eq!(keys[0]["role"], "admin");
    assert!(
        keys[0]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("key_"))
    );

    let created = admin.create_customer(json!({"first_name": "Ada"})).await;
    let reply = call(admin.delete(&customer_path(&created))).await;
    assert_eq!(reply.status, 204);
    let key = create_key(&admin, json!({"name": "made by bootstrap", "role": "read"})).await;
    assert_eq!(key["role"], "read");

    // Revoked, it comes back live at the next start that is given its secret: an operator
    // cannot lock themselves out for good.
    let bootstrap_id = keys[0]["id"].as_str().expect("id");
    let other = create_key(&admin, json!({"name": "second admin", "role": "admin"})).await;
    let other = hub.as_key(other["secret"].as_str().expect("secret"));
    let reply = call(other.delete(&format!("/v1/api-keys/{bootstrap_id}"))).await;
    assert_eq!(reply.status, 204);
    assert_problem(&call(admin.get("/v1/api-keys")).await, 401, "unauthorized");
    let restarted = hub.another_process(ApiConfig::default()).await;
    let reply = call(restarted.as_key(ADMIN_SECRET).get("/v1/api-keys")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let ids = reply.data_ids();
    assert!(
        ids.contains(&bootstrap_id),
        "the same key, live again: {ids:?}"
    );
}

async fn a_read_key_reads_but_writes_nothing(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"external_id": "P-1", "first_name": "Ada", "password": PASSWORD}))
        .await;
    let path = customer_path(&customer);
    let read = hub.as_key(&hub.create_key(Role::Read).await);

    // Reads.
    let reply = call(read.get("/v1/customers")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["data"][0]["id"], customer["id"]);
    let reply = call(read.get(&path)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, customer);
    let reply = call(read.get("/v1/customers/external_id/P-1")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["id"], customer["id"]);
    let reply = call(
        read.post(&format!("{path}/verify-password"))
            .json(&json!({"password": PASSWORD})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, json!({"valid": true}));

    // Writes: 403, whatever the body (a key without the role learns nothing from validation).
    let valid = json!({"first_name": "Grace"});
    let invalid = json!({"frist_name": 1, "currency": "XYZ"});
    for body in [&valid, &invalid] {
        let attempts = [
            ("POST /v1/customers", read.post("/v1/customers")),
            (
                "POST /v1/customers?upsert",
                read.post("/v1/customers?upsert=external_id"),
            ),
            ("PATCH by id", read.patch(&path)),
            ("PATCH by key", read.patch("/v1/customers/external_id/P-1")),
            ("PUT existing", read.put("/v1/customers/external_id/P-1")),
            ("PUT new", read.put("/v1/customers/external_id/P-2")),
            ("POST /v1/api-keys", read.post("/v1/api-keys")),
        ];
        for (what, request) in attempts {
            let reply = call(request.json(body)).await;
            assert_eq!(reply.status, 403, "{what} with {body}: {}", reply.body);
            assert_problem(&reply, 403, "forbidden");
        }
    }
    let attempts = [
        ("DELETE by id", read.delete(&path)),
        (
            "DELETE by key",
            read.delete("/v1/customers/external_id/P-1"),
        ),
        (
            "DELETE with a bad If-Match",
            read.delete(&path).header("if-match", "garbage"),
        ),
        ("GET /v1/api-keys", read.get("/v1/api-keys")),
        (
            "DELETE /v1/api-keys/{id}",
            read.delete("/v1/api-keys/key_01JD3Y6Q4X8K2M5N7P9R1T3V5W"),
        ),
        (
            "DELETE /v1/api-keys/{bad id}",
            read.delete("/v1/api-keys/nonsense"),
        ),
    ];
    for (what, request) in attempts {
        let reply = call(request).await;
        assert_eq!(reply.status, 403, "{what}: {}", reply.body);
        assert_problem(&reply, 403, "forbidden");
    }

    // Nothing changed.
    let stored = call(hub.get(&path)).await;
    assert_eq!(stored.body, customer);
    let list = call(hub.get("/v1/customers")).await;
    assert_eq!(list.body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(key_count(&hub).await, 2);
}

async fn a_write_key_writes_customers_but_not_keys(hub: TestHub) {
    let write = hub.as_key(&hub.create_key(Role::Write).await);

    let reply = call(
        write
            .post("/v1/customers")
            .json(&json!({"external_id": "P-1", "first_name": "Ada"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let path = customer_path(&reply.body);
    let reply = call(write.patch(&path).json(&json!({"last_name": "Lovelace"}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["version"], 2);
    let reply = call(
        write
            .patch("/v1/customers/external_id/P-1")
            .json(&json!({"note": "hi"})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = call(
        write
            .put("/v1/customers/external_id/P-2")
            .json(&json!({"first_name": "Grace"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let reply = call(write.get("/v1/customers")).await;
    assert_eq!(reply.body["data"].as_array().map(Vec::len), Some(2));
    let reply = call(write.delete("/v1/customers/external_id/P-2")).await;
    assert_eq!(reply.status, 204);
    let reply = call(write.delete(&path)).await;
    assert_eq!(reply.status, 204);

    for body in [
        json!({"name": "escalate", "role": "admin"}),
        json!({"name": "", "role": "root", "colour": "red"}),
    ] {
        let reply = call(write.post("/v1/api-keys").json(&body)).await;
        assert_problem(&reply, 403, "forbidden");
    }
    let reply = call(write.get("/v1/api-keys")).await;
    assert_problem(&reply, 403, "forbidden");
    let keys = call(hub.get("/v1/api-keys")).await;
    let bootstrap = keys.body["data"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["role"] == "admin"))
        .and_then(|k| k["id"].as_str())
        .expect("the admin key")
        .to_owned();
    let reply = call(write.delete(&format!("/v1/api-keys/{bootstrap}"))).await;
    assert_problem(&reply, 403, "forbidden");
    assert_eq!(key_count(&hub).await, 2, "the write key created no key");
    let reply = call(hub.get("/v1/customers")).await;
    assert_eq!(reply.status, 200, "the admin key still works");
}

async fn an_admin_key_does_everything(hub: TestHub) {
    let key = create_key(&hub, json!({"name": "second admin", "role": "admin"})).await;
    let admin = hub.as_key(key["secret"].as_str().expect("secret"));

    let customer = admin
        .create_customer(json!({"external_id": "P-1", "password": PASSWORD}))
        .await;
    let path = customer_path(&customer);
    assert_eq!(call(admin.get(&path)).await.status, 200);
    assert_eq!(call(admin.get("/v1/customers")).await.status, 200);
    let reply = call(admin.patch(&path).json(&json!({"first_name": "Ada"}))).await;
    assert_eq!(reply.status, 200);
    let reply = call(
        admin
            .put("/v1/customers/external_id/P-1")
            .json(&json!({"last_name": "Lovelace"})),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = call(
        admin
            .post(&format!("{path}/verify-password"))
            .json(&json!({"password": PASSWORD})),
    )
    .await;
    assert_eq!(reply.body, json!({"valid": true}));
    assert_eq!(call(admin.delete(&path)).await.status, 204);

    let other = create_key(&admin, json!({"name": "reader", "role": "read"})).await;
    assert_eq!(call(admin.get("/v1/api-keys")).await.status, 200);
    let reply = call(admin.delete(&format!(
        "/v1/api-keys/{}",
        other["id"].as_str().expect("id")
    )))
    .await;
    assert_eq!(reply.status, 204);

    // An admin may even revoke its own key; it stops working at once.
    let reply =
        call(admin.delete(&format!("/v1/api-keys/{}", key["id"].as_str().expect("id")))).await;
    assert_eq!(reply.status, 204);
    assert_problem(&call(admin.get("/v1/customers")).await, 401, "unauthorized");
}

async fn a_created_key_shows_its_secret_once(hub: TestHub) {
    let reply = call(
        hub.post("/v1/api-keys")
            .json(&json!({"name": "  web shop  ", "role": "write"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let key = reply.body;
    let id = key["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("key_") && id.len() > 4, "{id}");
    let secret = key["secret"].as_str().expect("secret").to_owned();
    assert!(
        secret.len() >= 32,
        "a secret long enough to guess never: {secret}"
    );
    assert_eq!(key["name"], "web shop", "the name is trimmed");
    assert_eq!(key["role"], "write");
    assert_eq!(key["teams"], json!([]));
    let created_at = key["created_at"].as_str().expect("created_at");
    assert!(
        created_at.ends_with('Z') && created_at.contains('T') && created_at.contains('.'),
        "RFC 3339 UTC with fractions: {created_at}"
    );
    let fields: Vec<&str> = key
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        ["created_at", "id", "name", "role", "secret", "teams"]
    );

    // Two keys never share a secret or an id.
    let second = create_key(&hub, json!({"name": "web shop", "role": "write"})).await;
    assert_ne!(second["secret"], key["secret"]);
    assert_ne!(second["id"], key["id"]);

    // The secret works as a bearer, with the key's role.
    let shop = hub.as_key(&secret);
    let reply = call(
        shop.post("/v1/customers")
            .json(&json!({"first_name": "Ada"})),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);

    // The list shows the key without its secret.
    let response = hub.get("/v1/api-keys").send().await.expect("list");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(!text.contains(&secret), "the list shows a secret: {text}");
    assert!(
        !text.contains(ADMIN_SECRET),
        "the list shows a secret: {text}"
    );
    assert!(
        !text.contains("secret"),
        "the list has a secret field: {text}"
    );
    let list: Value = serde_json::from_str(&text).expect("json");
    let keys = list["data"].as_array().expect("data");
    assert_eq!(keys.len(), 3, "{text}");
    let listed = keys
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("the new key is listed");
    assert_eq!(
        listed,
        &json!({
            "id": id,
            "name": "web shop",
            "role": "write",
            "teams": [],
            "created_at": key["created_at"],
        })
    );
}

async fn a_revoked_key_is_refused_at_once(hub: TestHub) {
    let key = create_key(&hub, json!({"name": "leaked", "role": "write"})).await;
    let id = key["id"].as_str().expect("id");
    let leaked = hub.as_key(key["secret"].as_str().expect("secret"));
    assert_eq!(call(leaked.get("/v1/customers")).await.status, 200);

    let response = hub
        .delete(&format!("/v1/api-keys/{id}"))
        .send()
        .await
        .expect("revoke");
    assert_eq!(response.status(), 204);
    assert!(response.bytes().await.expect("body").is_empty());

    // Refused on the very next request, for reads and writes alike.
    assert_problem(
        &call(leaked.get("/v1/customers")).await,
        401,
        "unauthorized",
    );
    let reply = call(
        leaked
            .post("/v1/customers")
            .json(&json!({"first_name": "Eve"})),
    )
    .await;
    assert_problem(&reply, 401, "unauthorized");
    let list = call(hub.get("/v1/api-keys")).await;
    let ids = list.data_ids();
    assert!(!ids.contains(&id), "a revoked key is not listed: {ids:?}");
    let customers = call(hub.get("/v1/customers")).await;
    assert_eq!(customers.body["data"], json!([]));

    // Revoking again: it is gone.
    let reply = call(hub.delete(&format!("/v1/api-keys/{id}"))).await;
    assert_problem(&reply, 404, "not_found");

    if hub.backend == Backend::Postgres {
        revoked_through_one_hub_is_refused_at_once_by_another(&hub).await;
    }
}

/// Hub processes on one PostgreSQL database: a key that another process has just used (so it
/// holds it in its one-second cache) is refused there as soon as the first revokes it.
async fn revoked_through_one_hub_is_refused_at_once_by_another(hub: &TestHub) {
    let other = hub.another_process(ApiConfig::default()).await;
    let key = create_key(hub, json!({"name": "shared", "role": "read"})).await;
    let secret = key["secret"].as_str().expect("secret");
    let there = other.as_key(secret);
    assert_eq!(call(there.get("/v1/customers")).await.status, 200);
    let id = key["id"].as_str().expect("id");
    assert_eq!(
        call(hub.delete(&format!("/v1/api-keys/{id}"))).await.status,
        204
    );
    // The notification crosses in milliseconds; the cache alone would keep the key for 1 s.
    let started = std::time::Instant::now();
    while call(there.get("/v1/customers")).await.status == 200 {
        assert!(
            started.elapsed() < std::time::Duration::from_millis(500),
            "the other hub still took the revoked key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn revoking_a_missing_key_is_not_found(hub: TestHub) {
    for id in [
        "nonsense",
        "key_",
        "key_not-a-ulid",
        MISSING_CUSTOMER,
        "key_01JD3Y6Q4X8K2M5N7P9R1T3V5W",
    ] {
        let reply = call(hub.delete(&format!("/v1/api-keys/{id}"))).await;
        assert_problem(&reply, 404, "not_found");
    }
    assert_eq!(key_count(&hub).await, 1);
}

async fn invalid_key_bodies_are_refused(hub: TestHub) {
    let post = |body: Value| call(hub.post("/v1/api-keys").json(&body));

    let reply = post(json!({"name": "k", "role": "root"})).await;
    assert_invalid(&reply, &[("role", "invalid_type")]);
    let reply = post(json!({"name": "k", "role": "Admin"})).await;
    assert_invalid(&reply, &[("role", "invalid_type")]);
    for name in ["", "   ", "a\u{0}b"] {
        let reply = post(json!({"name": name, "role": "read"})).await;
        assert_invalid(&reply, &[("name", "invalid_name")]);
    }
    let reply = post(json!({"name": "x".repeat(201), "role": "read"})).await;
    assert_invalid(&reply, &[("name", "invalid_name")]);
    let reply = post(json!({"name": "k", "role": "read", "colour": "red"})).await;
    assert_invalid(&reply, &[("colour", "unknown_field")]);
    let reply = post(json!({"name": "k", "role": "read", "teams": ["north"]})).await;
    assert_invalid(&reply, &[("teams[0]", "unknown_team")]);
    let reply = post(json!({"name": "k", "role": "read", "teams": "north"})).await;
    assert_invalid(&reply, &[("teams", "invalid_type")]);
    let reply = post(json!({"role": "read"})).await;
    assert_problem(&reply, 422, "validation_failed");
    let reply = call(
        hub.post("/v1/api-keys")
            .header("content-type", "application/json")
            .body("{\"name\": \"k\", "),
    )
    .await;
    assert_problem(&reply, 400, "malformed_json");

    assert_eq!(key_count(&hub).await, 1, "no key was created");
    let reply = post(json!({"name": "x".repeat(200), "role": "read"})).await;
    assert_eq!(reply.status, 201, "200 characters are fine: {}", reply.body);
}

async fn key_secrets_are_not_stored_in_plain_text(hub: TestHub) {
    let key = create_key(&hub, json!({"name": "stored", "role": "read"})).await;
    let secret = key["secret"].as_str().expect("secret");
    let id = key["id"].as_str().expect("id");

    let stored = rows(&hub, "SELECT * FROM api_keys").await;
    assert_eq!(stored.len(), 2, "the bootstrap key and the new one");
    for row in &stored {
        for (column, value) in row {
            let Some(value) = value else { continue };
            for plain in [secret, ADMIN_SECRET] {
                assert!(
                    !contains(value, plain.as_bytes()),
                    "api_keys.{column} holds a secret in plain text"
                );
                assert!(
                    !contains(value, hex(plain.as_bytes()).as_bytes()),
                    "api_keys.{column} holds a secret in hex"
                );
            }
        }
    }
    let row = stored
        .iter()
        .find(|row| row.get("id") == Some(&Some(id.as_bytes().to_vec())))
        .expect("the new key's row");
    let lookup = row["lookup_hash"].as_deref().expect("a lookup hash");
    let encrypted = row["secret_encrypted"]
        .as_deref()
        .expect("an encrypted secret");
    assert_ne!(lookup, secret.as_bytes());
    assert_ne!(encrypted, secret.as_bytes());
    assert_ne!(lookup, encrypted);
    assert!(lookup.len() >= 32, "a full-length keyed hash");
    assert!(
        encrypted.len() > secret.len(),
        "nonce and tag around the ciphertext"
    );
    // The two keys' stored values differ as their secrets do.
    let other = stored
        .iter()
        .find(|r| *r != row)
        .expect("the bootstrap row");
    assert_ne!(other["lookup_hash"], row["lookup_hash"]);
    assert_ne!(other["secret_encrypted"], row["secret_encrypted"]);
}

async fn passwords_are_write_only(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"email": "ada@example.com", "password": PASSWORD}))
        .await;
    assert_eq!(customer["has_password"], true);
    let path = customer_path(&customer);

    let mut replies: Vec<Reply> = vec![
        call(hub.get(&path)).await,
        call(hub.get("/v1/customers/email/ada@example.com")).await,
        call(hub.get("/v1/customers")).await,
        call(hub.patch(&path).json(&json!({"first_name": "Ada"}))).await,
        call(
            hub.put("/v1/customers/email/ada@example.com")
                .json(&json!({"password": "another secret"})),
        )
        .await,
        call(
            hub.post("/v1/customers?upsert=email")
                .json(&json!({"email": "ada@example.com", "last_name": "Lovelace"})),
        )
        .await,
    ];
    replies.push(
        call(
            hub.post("/v1/customers")
                .json(&json!({"email": "grace@example.com", "password": PASSWORD})),
        )
        .await,
    );
    for reply in &replies {
        assert!(reply.status == 200 || reply.status == 201, "{reply:?}");
        let text = reply.body.to_string();
        assert!(!text.contains("\"password\""), "a password field: {text}");
        assert!(!text.contains(PASSWORD), "the password: {text}");
        assert!(!text.contains("another secret"), "the password: {text}");
        assert!(!text.contains("$argon2"), "the hash: {text}");
    }
    let stored = call(hub.get(&path)).await;
    assert_eq!(stored.body["has_password"], true);
    assert_eq!(stored.body["first_name"], "Ada");
    assert_eq!(stored.body["last_name"], "Lovelace");
}

async fn verify_password_checks_the_password(hub: TestHub) {
    let with = hub
        .create_customer(json!({"first_name": "Ada", "password": PASSWORD}))
        .await;
    let without = hub.create_customer(json!({"first_name": "Grace"})).await;
    let verify = |customer_path: String, body: Value| {
        call(
            hub.post(&format!("{customer_path}/verify-password"))
                .json(&body),
        )
    };

    let reply = verify(customer_path(&with), json!({"password": PASSWORD})).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.body, json!({"valid": true}));
    for wrong in [
        "correct horse battery!",
        "Correct horse battery",
        "correct horse batter",
        "",
    ] {
        let reply = verify(customer_path(&with), json!({"password": wrong})).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, json!({"valid": false}), "{wrong:?}");
    }
    let reply = verify(customer_path(&without), json!({"password": PASSWORD})).await;
    assert_eq!(reply.body, json!({"valid": false}));
    let reply = verify(customer_path(&without), json!({"password": ""})).await;
    assert_eq!(reply.body, json!({"valid": false}));

    let reply = verify(
        format!("/v1/customers/{MISSING_CUSTOMER}"),
        json!({"password": PASSWORD}),
    )
    .await;
    assert_problem(&reply, 404, "not_found");
    let reply = verify(
        "/v1/customers/nonsense".to_owned(),
        json!({"password": PASSWORD}),
    )
    .await;
    assert_problem(&reply, 404, "not_found");

    let reply = verify(
        customer_path(&with),
        json!({"password": PASSWORD, "pasword": PASSWORD}),
    )
    .await;
    assert_invalid(&reply, &[("pasword", "unknown_field")]);
    let reply = verify(customer_path(&with), json!({"password": 12345678})).await;
    assert_invalid(&reply, &[("password", "invalid_type")]);
    let reply = verify(customer_path(&with), json!({})).await;
    assert_problem(&reply, 422, "validation_failed");

    // Checking a password changes nothing.
    let stored = call(hub.get(&customer_path(&with))).await;
    assert_eq!(stored.body, with);
}

async fn passwords_are_stored_as_argon2id_hashes(hub: TestHub) {
    let ada = hub
        .create_customer(json!({"first_name": "Ada", "password": PASSWORD}))
        .await;
    let grace = hub
        .create_customer(json!({"first_name": "Grace", "password": PASSWORD}))
        .await;
    let stored = rows(&hub, "SELECT id, password_hash FROM customers").await;
    let hash_of = |customer: &Value| -> String {
        let id = customer["id"].as_str().expect("id").as_bytes().to_vec();
        let row = stored
            .iter()
            .find(|row| row["id"].as_ref() == Some(&id))
            .expect("the customer's row");
        String::from_utf8(row["password_hash"].clone().expect("a hash")).expect("text")
    };
    let (ada_hash, grace_hash) = (hash_of(&ada), hash_of(&grace));
    for hash in [&ada_hash, &grace_hash] {
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains(PASSWORD));
    }
    assert_ne!(ada_hash, grace_hash, "each hash has its own salt");

    // The password is in no other column of any customer or change record.
    for table in ["customers", "changes"] {
        for row in rows(&hub, &format!("SELECT * FROM {table}")).await {
            for (column, value) in row {
                assert!(
                    !value.is_some_and(|v| contains(&v, PASSWORD.as_bytes())),
                    "{table}.{column} holds the password"
                );
            }
        }
    }
}

async fn a_null_password_removes_it(hub: TestHub) {
    let customer = hub
        .create_customer(json!({"first_name": "Ada", "password": PASSWORD}))
        .await;
    let path = customer_path(&customer);
    let verify = || {
        call(
            hub.post(&format!("{path}/verify-password"))
                .json(&json!({"password": PASSWORD})),
        )
    };
    assert_eq!(verify().await.body, json!({"valid": true}));

    let reply = call(hub.patch(&path).json(&json!({"password": null}))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["has_password"], false);
    assert_eq!(reply.body["version"], 2);
    assert_eq!(call(hub.get(&path)).await.body["has_password"], false);
    assert_eq!(verify().await.body, json!({"valid": false}));
    let stored = rows(&hub, "SELECT id, password_hash FROM customers").await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["password_hash"], None, "the hash is gone");

    // Removing it again changes nothing; setting a new one works.
    let reply = call(hub.patch(&path).json(&json!({"password": null}))).await;
    assert_eq!(reply.body["version"], 2);
    let reply = call(
        hub.patch(&path)
            .json(&json!({"password": "a new password"})),
    )
    .await;
    assert_eq!(reply.body["has_password"], true);
    assert_eq!(reply.body["version"], 3);
    assert_eq!(verify().await.body, json!({"valid": false}));
    let reply = call(
        hub.post(&format!("{path}/verify-password"))
            .json(&json!({"password": "a new password"})),
    )
    .await;
    assert_eq!(reply.body, json!({"valid": true}));
}

/// The bootstrap key is an admin exempt from rate limits: a short, guessable secret is refused
/// before the hub serves anything.
/// The contract makes an admin key of whatever `CLIENTELE_BOOTSTRAP_KEY` holds: a short one is
/// taken too (it used to stop the hub), with a warning that it may be guessed.
#[test]
fn a_short_bootstrap_secret_is_taken_with_a_warning() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("dir");
    let mut hub = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--database")
        .arg(format!("sqlite://{}", dir.path().join("hub.db").display()))
        .arg("--master-key-file")
        .arg(dir.path().join("master.key"))
        .env("CLIENTELE_BOOTSTRAP_KEY", "hunter2")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run clientele");
    let stdout = std::io::BufReader::new(hub.stdout.take().expect("stdout"));
    let mut seen = Vec::new();
    let mut warned = false;
    for line in stdout.lines() {
        let line = line.expect("line");
        warned |= line.contains("CLIENTELE_BOOTSTRAP_KEY is shorter than 32 characters");
        let ready = line.contains("listening");
        seen.push(line);
        if ready {
            break;
        }
    }
    let running = hub.try_wait().expect("wait").is_none();
    hub.kill().ok();
    hub.wait().ok();
    assert!(running, "the hub stopped: {seen:?}");
    assert!(warned, "{seen:?}");
}

/// The SQLite database holds personal data and password hashes: created readable by its owner
/// only, whatever the umask.
#[cfg(unix)]
#[tokio::test]
async fn a_new_sqlite_database_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let hub = TestHub::sqlite().await;
    let path = hub
        .database_url
        .strip_prefix("sqlite://")
        .expect("a SQLite URL");
    let path = path.split('?').next().unwrap_or(path);
    let mode = std::fs::metadata(path)
        .expect("database file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{path}: {mode:o}");
}
