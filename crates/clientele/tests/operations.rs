//! Operations and the HTTP frame: health, metrics, the OpenAPI document, problems for unknown
//! routes, wrong methods, wrong media types and oversized bodies, and request ids.

use std::collections::BTreeSet;

use clientele_api::ApiConfig;
use clientele_domain::Role;
use clientele_testkit::{
    Reply, TestHub, assert_invalid, assert_problem, call, hub_tests, metric_sample,
};
use serde_json::{Value, json};

hub_tests!(
    healthz_answers_without_credentials,
    metrics_are_prometheus_text_by_route_template,
    openapi_document_is_openapi_3_1,
    openapi_documents_every_route,
    documented_operations_are_served,
    documented_errors_are_the_problems_sent,
    documented_parameter_bounds_are_the_enforced_ones,
    documented_conflicts_name_their_codes,
    authenticated_operations_take_a_bearer_key_or_a_signature,
    documented_response_headers_are_the_headers_sent,
    an_unknown_route_is_a_problem,
    a_path_segment_that_does_not_decode_is_a_problem,
    a_head_over_its_bounds_is_a_problem,
    a_header_given_twice_where_once_is_allowed_is_a_problem,
    a_wrong_method_is_a_problem,
    unknown_methods_share_one_metrics_label,
    a_body_that_is_not_json_is_unsupported,
    a_body_over_the_limit_is_refused,
    a_client_that_never_finishes_its_headers_is_cut_off,
    every_response_carries_a_request_id,
    a_given_request_id_is_echoed,
);

/// A well-formed customer id that no customer has.
const MISSING_CUSTOMER: &str = "cus_01JD3Y6Q4X8K2M5N7P9R1T3V5W";

/// Every problem in this file also has an absolute URI as its `type`.
#[track_caller]
fn assert_problem_here(reply: &Reply, status: u16, code: &str) {
    assert_problem(reply, status, code);
    let kind = reply.body["type"].as_str().unwrap_or_default();
    assert!(
        kind.contains(':') && !kind.contains(' '),
        "type is a URI: {kind}"
    );
}

async fn healthz_answers_without_credentials(hub: TestHub) {
    let reply = call(hub.client.get(hub.url("/healthz"))).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.body["status"], "ok");
    let backend = match hub.backend {
        clientele_testkit::Backend::Sqlite => "sqlite",
        clientele_testkit::Backend::Postgres => "postgres",
    };
    assert_eq!(reply.body["database"], backend);

    // Credentials, good or bad, do not matter to it.
    let reply = call(
        hub.client
            .get(hub.url("/healthz"))
            .bearer_auth("ck_not_a_real_secret"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(call(hub.get("/healthz")).await.status, 200);
}

async fn metrics_are_prometheus_text_by_route_template(hub: TestHub) {
    let customer = hub.create_customer(json!({"first_name": "Ada"})).await;
    let id = customer["id"].as_str().expect("id").to_owned();
    for _ in 0..3 {
        assert_eq!(
            call(hub.get(&format!("/v1/customers/{id}"))).await.status,
            200
        );
    }
    let missing = call(hub.get(&format!("/v1/customers/{MISSING_CUSTOMER}"))).await;
    assert_problem_here(&missing, 404, "not_found");
    let unknown = call(hub.get("/v1/no-such-thing/12345")).await;
    assert_problem_here(&unknown, 404, "route_not_found");

    let response = hub
        .client
        .get(hub.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain"),
        "Prometheus text format: {content_type}"
    );
    let text = response.text().await.expect("text");

    assert!(
        text.contains("# TYPE http_requests_total counter"),
        "{text}"
    );
    let route = r#"route="/v1/customers/{id}""#;
    assert_eq!(
        metric_sample(
            &text,
            "http_requests_total",
            &[route, r#"method="GET""#, r#"status="200""#]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric_sample(
            &text,
            "http_requests_total",
            &[route, r#"method="GET""#, r#"status="404""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_sample(
            &text,
            "http_requests_total",
            &[
                r#"route="/v1/customers""#,
                r#"method="POST""#,
                r#"status="201""#
            ]
        ),
        Some(1.0),
        "{text}"
    );
    // Every request above has its answer: none is in flight any more.
    assert_eq!(
        metric_sample(
            &text,
            "http_requests_in_flight",
            &[route, r#"method="GET""#]
        ),
        Some(0.0),
        "{text}"
    );
    assert!(
        text.contains("# TYPE http_request_duration_seconds histogram"),
        "{text}"
    );
    assert_eq!(
        metric_sample(
            &text,
            "http_request_duration_seconds_bucket",
            &[route, r#"method="GET""#, r#"le="+Inf""#]
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric_sample(
            &text,
            "http_request_duration_seconds_count",
            &[route, r#"method="GET""#]
        ),
        Some(4.0),
        "{text}"
    );
    let pool = metric_sample(&text, "db_pool_connections", &[]).expect("db_pool_connections");
    assert!(pool >= 1.0, "the pool has a connection: {text}");
    assert!(text.contains("db_pool_idle_connections"), "{text}");

    // Labels are route templates: no ids, no unknown paths (label cardinality stays bounded).
    assert!(!text.contains(&id), "a customer id became a label: {text}");
    assert!(!text.contains(MISSING_CUSTOMER), "{text}");
    assert!(!text.contains("no-such-thing"), "{text}");
}

async fn openapi_json(hub: &TestHub) -> Value {
    let reply = call(hub.client.get(hub.url("/openapi.json"))).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    reply.body
}

async fn openapi_document_is_openapi_3_1(hub: TestHub) {
    let document = openapi_json(&hub).await;
    let version = document["openapi"].as_str().expect("openapi");
    assert!(version.starts_with("3.1"), "{version}");
    assert!(
        document["info"]["title"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert!(document["info"]["version"].is_string());
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for schema in ["Problem", "Customer", "FieldError"] {
        assert!(
            document["components"]["schemas"][schema].is_object(),
            "schema {schema} is documented"
        );
    }
    // A customer, as served, has every field (null where unset): all are required.
    let customer = &document["components"]["schemas"]["Customer"];
    let mut properties: Vec<&String> = customer["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .collect();
    let mut required: Vec<&str> = customer["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    properties.sort();
    required.sort();
    assert_eq!(
        required, properties,
        "every field of a customer is always present"
    );
    // An order's total is a number or a decimal string (found in an audit: an object).
    let order = &document["components"]["schemas"]["OrderWrite"];
    let total = &order["properties"]["total"]["oneOf"];
    assert_eq!(total[0]["type"], "number", "{order}");
    assert_eq!(total[1]["type"], "string", "{order}");
    for field in ["reference", "total", "currency"] {
        assert!(
            order["required"]
                .as_array()
                .is_some_and(|required| required.iter().any(|name| name == field)),
            "{field} is required: {order}"
        );
    }
    // The same document every time: generated from the code, not from the request.
    assert_eq!(openapi_json(&hub).await, document);
}

/// Every route of the contract implemented so far, with the methods it takes.
const ROUTES: &[(&str, &[&str])] = &[
    ("/v1/customers", &["get", "post"]),
    ("/v1/customers/{id}", &["get", "patch", "delete"]),
    (
        "/v1/customers/{key}/{value}",
        &["get", "put", "patch", "delete"],
    ),
    ("/v1/customers/{id}/verify-password", &["post"]),
    ("/v1/customers/sync", &["post"]),
    ("/v1/changes", &["get"]),
    ("/v1/api-keys", &["get", "post"]),
    ("/v1/api-keys/{id}", &["delete"]),
    ("/v1/groups", &["get"]),
    ("/v1/groups/sync", &["post"]),
    ("/v1/groups/{code}", &["get", "put", "delete"]),
    ("/v1/teams", &["get"]),
    ("/v1/teams/{code}", &["get", "put", "delete"]),
    ("/v1/tags", &["get"]),
    ("/healthz", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
];

/// The routes that need no credentials.
const UNAUTHENTICATED: &[&str] = &["/healthz", "/metrics", "/openapi.json"];

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

async fn openapi_documents_every_route(hub: TestHub) {
    let document = openapi_json(&hub).await;
    let paths = document["paths"].as_object().expect("paths");
    for (path, methods) in ROUTES {
        let item = paths
            .get(*path)
            .unwrap_or_else(|| panic!("{path} is not documented"));
        let documented: BTreeSet<&str> = item
            .as_object()
            .expect("a path item")
            .keys()
            .map(String::as_str)
            .filter(|k| HTTP_METHODS.contains(k))
            .collect();
        for method in *methods {
            assert!(
                documented.contains(method),
                "{method} {path} is not documented (documented: {documented:?})"
            );
            let operation = &item[*method];
            let responses = operation["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} has no responses"));
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} documents no success"
            );
            if UNAUTHENTICATED.contains(path) {
                assert!(
                    operation["security"].is_null(),
                    "{method} {path} needs no credentials: {}",
                    operation["security"]
                );
            } else {
                assert!(
                    responses.keys().any(|s| s.starts_with('4')),
                    "{method} {path} documents no 4xx response: {:?}",
                    responses.keys().collect::<Vec<_>>()
                );
                assert!(
                    operation["security"].is_array(),
                    "{method} {path} documents no security requirement"
                );
            }
            // Path parameters are declared.
            for param in path.split('/').filter(|s| s.starts_with('{')) {
                let name = param.trim_matches(['{', '}']);
                let declared = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .chain(item["parameters"].as_array().into_iter().flatten())
                    .any(|p| p["name"] == name && p["in"] == "path");
                assert!(declared, "{method} {path} does not declare {name}");
            }
        }
    }
    // The document describes itself: served by `app()` outside the routers that contribute
    // the other paths, it was missing.
    let itself = &paths["/openapi.json"]["get"];
    assert_eq!(itself["tags"], json!(["operations"]), "{itself}");
    assert!(
        itself["responses"]["200"]["content"]["application/json"].is_object(),
        "{itself}"
    );
}

async fn documented_operations_are_served(hub: TestHub) {
    // The other way round: whatever the document promises, the server answers (not a 404
    // route_not_found or a 405).
    let document = openapi_json(&hub).await;
    let paths = document["paths"].as_object().expect("paths");
    assert!(paths.len() >= ROUTES.len());
    for (path, item) in paths {
        let concrete = concrete_path(path);
        for method in item
            .as_object()
            .expect("a path item")
            .keys()
            .filter(|k| HTTP_METHODS.contains(&k.as_str()))
        {
            let method: reqwest::Method = method.to_uppercase().parse().expect("a method");
            let reply = call(
                hub.request(method.clone(), &concrete)
                    .json(&json!({"password": "x"})),
            )
            .await;
            assert_ne!(reply.status, 405, "{method} {concrete}: {:?}", reply.body);
            assert_ne!(
                reply.body["code"], "route_not_found",
                "{method} {concrete}: {:?}",
                reply.body
            );
            assert!(reply.status < 500, "{method} {concrete}: {:?}", reply.body);
            if reply.status >= 400 {
                let code = reply.body["code"].as_str().unwrap_or_default().to_owned();
                assert_problem_here(&reply, reply.status, &code);
            }
        }
    }
}

/// A concrete path for a documented template, naming things that do not exist.
fn concrete_path(template: &str) -> String {
    template
        .replace("{id}/", &format!("{MISSING_CUSTOMER}/"))
        .replace("{key}", "external_id")
        .replace("{value}", "nobody")
        .replace("{code}", "nothing")
        .replace("{id}", MISSING_CUSTOMER)
}

/// Asserts the operation documents `status` as a problem, and only as a problem.
#[track_caller]
fn assert_documents_problem(operation: &Value, status: u16, what: &str) {
    let response = &operation["responses"][status.to_string()];
    let content = response["content"]
        .as_object()
        .unwrap_or_else(|| panic!("{what} does not document {status}: {operation}"));
    assert_eq!(
        content.keys().collect::<Vec<_>>(),
        ["application/problem+json"],
        "{what} {status}"
    );
    assert_eq!(
        content["application/problem+json"]["schema"]["$ref"], "#/components/schemas/Problem",
        "{what} {status}"
    );
}

async fn documented_errors_are_the_problems_sent(hub: TestHub) {
    // Found by schemathesis (scripts/fuzz-api.sh): the document said problems were
    // application/json and left out the 400/401/403/413/415 that extractors and middleware send
    // on every route, so a client generated from it could not expect them.
    let document = openapi_json(&hub).await;
    let paths = document["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item") {
            if !HTTP_METHODS.contains(&method.as_str()) {
                continue;
            }
            let what = format!("{method} {path}");
            for (status, response) in operation["responses"].as_object().expect("responses") {
                if status.starts_with(['4', '5']) {
                    assert_documents_problem(operation, status.parse().expect("a status"), &what);
                    assert!(response["description"].is_string(), "{what} {status}");
                }
            }
            let method: reqwest::Method = method.to_uppercase().parse().expect("a method");
            let concrete = concrete_path(path);

            // Every operation bounds the request's head: documented 414 and 431.
            let reply = call(hub.request(
                method.clone(),
                &format!("{concrete}?padding={}", "p".repeat(9000)),
            ))
            .await;
            assert_problem_here(&reply, 414, "uri_too_long");
            assert_documents_problem(operation, 414, &what);
            let mut crowded = hub.request(method.clone(), &concrete);
            for i in 0..120 {
                crowded = crowded.header(format!("x-padding-{i}"), "p");
            }
            assert_problem_here(&call(crowded).await, 431, "headers_too_large");
            assert_documents_problem(operation, 431, &what);

            // A query parameter the operation does not take, even one that takes none: a
            // documented 422 naming it (found in an audit: undocumented on the GETs without
            // parameters, and accepted by the open endpoints).
            let reply = call(
                hub.request(method.clone(), &format!("{concrete}?not_a_parameter=1"))
                    .json(&json!({})),
            )
            .await;
            assert_invalid(&reply, &[("not_a_parameter", "unknown_parameter")]);
            assert_documents_problem(operation, 422, &what);

            if !operation["security"].is_array() {
                continue;
            }

            // Without credentials: a documented 401.
            let reply = call(hub.client.request(method.clone(), hub.url(&concrete))).await;
            assert_problem_here(&reply, 401, "unauthorized");
            assert_documents_problem(operation, 401, &what);
            assert_documents_problem(operation, 403, &what);
            assert_documents_problem(operation, 429, &what);
            let unauthorized = operation["responses"]["401"]["description"]
                .as_str()
                .unwrap_or_default();
            assert!(
                unauthorized.contains("`signature_invalid`"),
                "{what}: {unauthorized}"
            );

            if operation["requestBody"].is_object() {
                // A body that is not JSON: a documented 400.
                let reply = call(
                    hub.request(method.clone(), &concrete)
                        .header("content-type", "application/json")
                        .body("{\"unterminated"),
                )
                .await;
                assert_problem_here(&reply, 400, "malformed_json");
                for status in [400, 413, 415, 422] {
                    assert_documents_problem(operation, status, &what);
                }
            }
            if method != reqwest::Method::GET {
                let declared = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header");
                assert!(declared, "{what} does not declare Idempotency-Key");
                // An Idempotency-Key that is too long: a documented 400.
                let reply = call(
                    hub.request(method.clone(), &concrete)
                        .header("idempotency-key", "k".repeat(256))
                        .json(&json!({})),
                )
                .await;
                assert_problem_here(&reply, 400, "invalid_header");
                assert_documents_problem(operation, 400, &what);
            }
        }
    }
}

/// The conflicts a handler answers are named in its 409's description, beside the idempotency
/// key's (found in an audit: only `idempotency_in_flight` was).
async fn documented_conflicts_name_their_codes(hub: TestHub) {
    let document = openapi_json(&hub).await;
    for (method, path, codes) in [
        ("post", "/v1/customers", &["duplicate_key"][..]),
        ("patch", "/v1/customers/{id}", &["duplicate_key"]),
        ("put", "/v1/customers/{key}/{value}", &["duplicate_key"]),
        ("patch", "/v1/customers/{key}/{value}", &["duplicate_key"]),
        ("delete", "/v1/customers/{id}", &["customer_has_orders"]),
        (
            "delete",
            "/v1/customers/{key}/{value}",
            &["customer_has_orders"],
        ),
        (
            "delete",
            "/v1/groups/{code}",
            &["group_has_subgroups", "group_in_use"],
        ),
        ("delete", "/v1/teams/{code}", &["team_in_use"]),
    ] {
        let description = document["paths"][path][method]["responses"]["409"]["description"]
            .as_str()
            .unwrap_or_default();
        for code in codes.iter().chain(&["idempotency_in_flight"]) {
            assert!(
                description.contains(&format!("`{code}`")),
                "{method} {path}: {description}"
            );
        }
    }
}

/// Whether the method changes something (and so takes `Idempotency-Key`).
fn mutating(method: &str) -> bool {
    ["post", "put", "patch", "delete"].contains(&method)
}

/// The documented operations, as (path, method, operation).
fn operations(document: &Value) -> Vec<(&str, &str, &Value)> {
    let paths = document["paths"].as_object().expect("paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("a path item") {
            if HTTP_METHODS.contains(&method.as_str()) {
                operations.push((path.as_str(), method.as_str(), operation));
            }
        }
    }
    operations
}

async fn authenticated_operations_take_a_bearer_key_or_a_signature(hub: TestHub) {
    // Found in an audit: the `signed` scheme was declared but no operation listed it, so a
    // client generated from the document could only send bearer secrets.
    let document = openapi_json(&hub).await;
    let signed = &document["components"]["securitySchemes"]["signed"];
    assert_eq!(signed["type"], "apiKey", "{signed}");
    assert_eq!(signed["in"], "header", "{signed}");
    let description = signed["description"].as_str().unwrap_or_default();
    for header in [
        "X-Clientele-Key",
        "X-Clientele-Timestamp",
        "X-Clientele-Nonce",
        "X-Clientele-Signature",
    ] {
        assert!(
            signed["name"] == header || description.contains(header),
            "the signed scheme names {header}: {signed}"
        );
    }

    let key = hub.create_key_pair(Role::Admin).await;
    let mut authenticated = 0;
    for (path, method, operation) in operations(&document) {
        let what = format!("{method} {path}");
        if operation["security"].is_null() {
            assert!(
                UNAUTHENTICATED.contains(&path),
                "{what} needs no credentials"
            );
            continue;
        }
        authenticated += 1;
        // Either alternative suffices (a list of requirements is an "or").
        assert_eq!(
            operation["security"],
            json!([{"bearer": []}, {"signed": []}]),
            "{what}"
        );
        // And so it is: a signed request is authenticated there.
        let body: &[u8] = if ["post", "put", "patch"].contains(&method) {
            br#"{"password": "x"}"#
        } else {
            b""
        };
        let concrete = concrete_path(path);
        let method: reqwest::Method = method.to_uppercase().parse().expect("a method");
        let reply = call(hub.signed(&key, method, &concrete, body)).await;
        assert!(
            reply.status != 401 && reply.status < 500,
            "{what} signed: {} {:?}",
            reply.status,
            reply.body
        );
    }
    assert!(authenticated >= ROUTES.len() - UNAUTHENTICATED.len());
}

/// The response header `name` the operation documents for `status`, if any (header names are
/// case-insensitive).
fn documented_header<'a>(operation: &'a Value, status: u16, name: &str) -> Option<&'a Value> {
    operation["responses"][status.to_string()]["headers"]
        .as_object()?
        .iter()
        .find(|(header, _)| header.eq_ignore_ascii_case(name))
        .map(|(_, header)| header)
}

/// Asserts the operation documents `Idempotent-Replayed: true` on its `status` responses.
#[track_caller]
fn assert_documents_replayed(operation: &Value, status: u16, what: &str) {
    let header = documented_header(operation, status, "Idempotent-Replayed")
        .unwrap_or_else(|| panic!("{what} {status} does not document Idempotent-Replayed"));
    assert_eq!(header["schema"]["type"], "string", "{what} {status}");
    assert_eq!(header["schema"]["enum"], json!(["true"]), "{what} {status}");
    assert!(header["description"].is_string(), "{what} {status}");
}

/// Asserts the operation documents `Retry-After` (whole seconds) on its `status` responses.
#[track_caller]
fn assert_documents_retry_after(operation: &Value, status: u16, what: &str) {
    let header = documented_header(operation, status, "Retry-After")
        .unwrap_or_else(|| panic!("{what} {status} does not document Retry-After"));
    assert_eq!(header["schema"]["type"], "integer", "{what} {status}");
    assert_eq!(header["schema"]["minimum"], 1, "{what} {status}");
}

async fn documented_response_headers_are_the_headers_sent(hub: TestHub) {
    // Found in an audit: neither `Idempotent-Replayed` on replays of writes nor `Retry-After`
    // on 429 was in the document.
    let document = openapi_json(&hub).await;
    for (path, method, operation) in operations(&document) {
        let what = format!("{method} {path}");
        let authenticated = operation["security"].is_array();
        for status in operation["responses"]
            .as_object()
            .expect("responses")
            .keys()
        {
            let status: u16 = status.parse().expect("a status");
            let replayed = documented_header(operation, status, "Idempotent-Replayed");
            if authenticated && mutating(method) && (200..300).contains(&status) {
                assert_documents_replayed(operation, status, &what);
            }
            // Refused before the key is claimed, or released: never a replay.
            if !authenticated || !mutating(method) || [401, 414, 415, 429, 431].contains(&status) {
                assert!(replayed.is_none(), "{what} {status} is never replayed");
            }
            if status >= 500 {
                assert!(replayed.is_none(), "{what} {status} is never replayed");
            }
        }
        if authenticated {
            assert_documents_retry_after(operation, 429, &what);
            assert_documents_retry_after(operation, 503, &what);
        }
    }

    // Replays, of successes and of refusals, carry the header where the document says so.
    hub.create_customer(json!({"first_name": "Ada", "external_id": "ada"}))
        .await;
    for (method, path, template, body, status) in [
        (
            "post",
            "/v1/customers",
            "/v1/customers",
            json!({"first_name": "Bo"}),
            201,
        ),
        (
            "post",
            "/v1/customers",
            "/v1/customers",
            json!({"no_such_field": 1}),
            422,
        ),
        (
            "put",
            "/v1/groups/vip",
            "/v1/groups/{code}",
            json!({"title": "VIP"}),
            201,
        ),
        (
            "patch",
            "/v1/customers/external_id/ada",
            "/v1/customers/{key}/{value}",
            json!({"last_name": "L"}),
            200,
        ),
        (
            "delete",
            "/v1/teams/nothing",
            "/v1/teams/{code}",
            json!({}),
            404,
        ),
    ] {
        let what = format!("{method} {path}");
        let send = || {
            let request = hub
                .request(method.to_uppercase().parse().expect("a method"), path)
                .header(
                    "idempotency-key",
                    format!("replay-{method}-{path}-{status}"),
                );
            if method == "delete" {
                request
            } else {
                request.json(&body)
            }
        };
        let first = call(send()).await;
        assert_eq!(first.status, status, "{what}: {:?}", first.body);
        assert_eq!(first.header("idempotent-replayed"), None, "{what}");
        let again = call(send()).await;
        assert_eq!(again.status, status, "{what}: {:?}", again.body);
        assert_eq!(again.header("idempotent-replayed"), Some("true"), "{what}");
        assert_documents_replayed(&document["paths"][template][method], status, &what);
    }

    // A key over its rate gets `Retry-After` where the document says so.
    let limited = TestHub::with_rate_limit(hub.backend, 1.0, 1.0, false)
        .await
        .expect("a hub with a tiny rate limit");
    let limited = limited.as_key(&limited.create_key(Role::Read).await);
    assert_eq!(call(limited.get("/v1/tags")).await.status, 200);
    let reply = call(limited.get("/v1/tags")).await;
    assert_problem_here(&reply, 429, "rate_limited");
    reply.retry_after_secs();
    assert_documents_retry_after(&document["paths"]["/v1/tags"]["get"], 429, "get /v1/tags");
}

/// The schema of a documented parameter.
fn parameter_schema<'a>(document: &'a Value, path: &str, method: &str, name: &str) -> &'a Value {
    document["paths"][path][method]["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .map(|p| &p["schema"])
        .unwrap_or_else(|| panic!("{method} {path} does not declare {name}"))
}

async fn documented_parameter_bounds_are_the_enforced_ones(hub: TestHub) {
    // Found by schemathesis: the document allowed `limit=0`, any `sort` and any group or team
    // code, so most generated requests were refused with 422 and tested little.
    let document = openapi_json(&hub).await;
    let customer = hub.create_customer(json!({"external_id": "bounds"})).await;
    let orders = format!(
        "/v1/customers/{}/orders",
        customer["id"].as_str().expect("id")
    );
    // Found in an audit: the feed's and a customer's orders' `limit` were documented from 0.
    for (path, documented) in [
        ("/v1/customers", "/v1/customers"),
        ("/v1/groups", "/v1/groups"),
        ("/v1/teams", "/v1/teams"),
        ("/v1/tags", "/v1/tags"),
        ("/v1/changes", "/v1/changes"),
        (orders.as_str(), "/v1/customers/{id}/orders"),
    ] {
        let limit = parameter_schema(&document, documented, "get", "limit");
        assert_eq!(
            (&limit["minimum"], &limit["maximum"]),
            (&json!(1), &json!(1000)),
            "{path}"
        );
        for (value, status) in [("0", 422), ("1", 200), ("1000", 200), ("1001", 422)] {
            let reply = call(hub.get(&format!("{path}?limit={value}"))).await;
            assert_eq!(
                reply.status, status,
                "{path}?limit={value}: {:?}",
                reply.body
            );
        }
    }

    let wait = parameter_schema(&document, "/v1/changes", "get", "wait");
    assert_eq!(
        (&wait["minimum"], &wait["maximum"]),
        (&json!(0), &json!(60))
    );
    for (value, status) in [("0", 200), ("61", 422)] {
        let reply = call(hub.get(&format!("/v1/changes?after=999999&wait={value}"))).await;
        assert_eq!(reply.status, status, "wait={value}: {:?}", reply.body);
    }

    // The documented patterns, and what the hub accepts: the values each pattern admits
    // (checked by hand; the test keeps the two in step).
    assert_eq!(
        parameter_schema(&document, "/v1/customers", "get", "sort")["pattern"],
        "^(-?created_at|-?updated_at|last_name)$"
    );
    for (value, accepted) in [
        ("created_at", true),
        ("-created_at", true),
        ("updated_at", true),
        ("-updated_at", true),
        ("last_name", true),
        ("-last_name", false),
        ("created_at ", false),
        ("email", false),
    ] {
        let reply = call(hub.get("/v1/customers").query(&[("sort", value)])).await;
        assert_eq!(
            reply.status == 200,
            accepted,
            "sort {value:?}: {:?}",
            reply.body
        );
    }

    for path in ["/v1/groups/{code}", "/v1/teams/{code}"] {
        for method in ["get", "put", "delete"] {
            assert_eq!(
                parameter_schema(&document, path, method, "code")["pattern"],
                "^[A-Za-z0-9_.-]{1,64}$",
                "{method} {path}"
            );
        }
        let body = if path.starts_with("/v1/groups") {
            json!({"title": "t"})
        } else {
            json!({"name": "n"})
        };
        let long = "x".repeat(64);
        for code in ["vip", "A-b_c.9", long.as_str()] {
            let reply = call(hub.put(&path.replace("{code}", code)).json(&body)).await;
            assert_eq!(reply.status, 201, "{path} {code:?}: {:?}", reply.body);
        }
        for code in ["x".repeat(65).as_str(), "a%20b", "%C3%A9", "a%2Fb"] {
            let reply = call(hub.put(&path.replace("{code}", code)).json(&body)).await;
            assert!(
                [404, 422].contains(&reply.status),
                "{path} {code:?}: {:?}",
                reply.body
            );
        }
    }
}

async fn an_unknown_route_is_a_problem(hub: TestHub) {
    for path in [
        "/",
        "/v1",
        "/v2/customers",
        "/v1/customer",
        "/v1/customers/external_id/A/extra",
        "/openapi.yaml",
    ] {
        let reply = call(hub.get(path)).await;
        assert_problem_here(&reply, 404, "route_not_found");
        // Without credentials too: an unknown route is not a secret.
        let reply = call(hub.client.get(hub.url(path))).await;
        assert_problem_here(&reply, 404, "route_not_found");
    }
    // Customers are addressed by external_id, email or username only.
    for path in ["/v1/customers/phone/123", "/v1/customers/id/x"] {
        let reply = call(hub.get(path)).await;
        assert_problem_here(&reply, 404, "route_not_found");
        let reply = call(hub.put(path).json(&json!({}))).await;
        assert_problem_here(&reply, 404, "route_not_found");
    }
    let reply = call(hub.post("/v1/nothing").json(&json!({}))).await;
    assert_problem_here(&reply, 404, "route_not_found");
}

async fn a_path_segment_that_does_not_decode_is_a_problem(hub: TestHub) {
    for (path, field) in [
        ("/v1/customers/%FF", "id"),
        ("/v1/customers/external_id/%FF%FE", "value"),
        ("/v1/groups/%C3", "code"),
        ("/v1/teams/%FF", "code"),
        ("/v1/orders/%FF", "id"),
    ] {
        let reply = call(hub.get(path)).await;
        assert_problem_here(&reply, 400, "invalid_path");
        assert_eq!(
            reply.body["errors"][0]["field"], field,
            "{path}: {}",
            reply.body
        );
    }
    let reply = call(hub.delete("/v1/api-keys/%FF")).await;
    assert_problem_here(&reply, 400, "invalid_path");
}

async fn a_head_over_its_bounds_is_a_problem(hub: TestHub) {
    // Found in an audit: hyper refused these itself, with an empty body.
    let query = format!("/v1/customers?q={}", "a".repeat(9 * 1024));
    let reply = call(hub.get(&query)).await;
    assert_problem_here(&reply, 414, "uri_too_long");

    let mut many = hub.get("/v1/customers");
    for i in 0..150 {
        many = many.header(format!("x-extra-{i}"), "1");
    }
    assert_problem_here(&call(many).await, 431, "headers_too_large");

    let large = hub
        .get("/v1/customers")
        .header("x-large-a", "a".repeat(20 * 1024))
        .header("x-large-b", "b".repeat(20 * 1024));
    assert_problem_here(&call(large).await, 431, "headers_too_large");

    // Within the bounds, the same shapes are served.
    let within = hub
        .get(&format!("/v1/customers?q={}", "a".repeat(200)))
        .header("x-large-a", "a".repeat(10 * 1024));
    assert_eq!(call(within).await.status, 200);
}

async fn a_header_given_twice_where_once_is_allowed_is_a_problem(hub: TestHub) {
    // Found in an audit: of two Authorization headers the first counted, silently.
    let secret = hub.create_key(Role::Read).await;
    let reply = call(
        hub.client
            .get(hub.url("/v1/customers"))
            .header("authorization", format!("Bearer {secret}"))
            .header("authorization", "Bearer ck_someone_else"),
    )
    .await;
    assert_header_problem(&reply, "Authorization");

    let customer = hub.create_customer(json!({"first_name": "Ada"})).await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));
    let reply = call(
        hub.patch(&path)
            .json(&json!({"last_name": "L"}))
            .header("if-match", "\"1\"")
            .header("if-match", "\"2\""),
    )
    .await;
    assert_header_problem(&reply, "If-Match");

    let reply = call(
        hub.post("/v1/customers")
            .json(&json!({"first_name": "Bo"}))
            .header("idempotency-key", "one")
            .header("idempotency-key", "two"),
    )
    .await;
    assert_header_problem(&reply, "Idempotency-Key");
    let reply = call(
        hub.post("/v1/customers")
            .json(&json!({"first_name": "Cy"}))
            .header("content-type", "text/plain"),
    )
    .await;
    assert_header_problem(&reply, "Content-Type");
    // Nothing was written: the customer list holds only Ada.
    assert_eq!(call(hub.get("/v1/customers")).await.data_ids().len(), 1);

    // A malformed header is named too.
    let reply = call(
        hub.patch(&path)
            .json(&json!({"last_name": "M"}))
            .header("if-match", "soon"),
    )
    .await;
    assert_header_problem(&reply, "If-Match");
}

/// Asserts a 400 `invalid_header` naming `header` as the field at fault.
#[track_caller]
fn assert_header_problem(reply: &Reply, header: &str) {
    assert_problem_here(reply, 400, "invalid_header");
    assert_eq!(reply.body["errors"][0]["field"], header, "{}", reply.body);
}

async fn unknown_methods_share_one_metrics_label(hub: TestHub) {
    for method in ["RANDM1X", "BREW", &"M".repeat(300)] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a token");
        let reply = call(hub.client.request(method, hub.url("/healthz"))).await;
        assert_problem_here(&reply, 405, "method_not_allowed");
    }
    let response = hub.client.get(hub.url("/metrics")).send().await;
    let text = response.expect("metrics").text().await.expect("text");
    assert!(
        !text.contains("RANDM1X") && !text.contains("MMMM"),
        "{text}"
    );
    assert_eq!(
        metric_sample(
            &text,
            "http_requests_total",
            &[r#"method="other""#, r#"status="405""#]
        ),
        Some(3.0),
        "{text}"
    );
}

async fn a_wrong_method_is_a_problem(hub: TestHub) {
    let attempts = [
        hub.client.delete(hub.url("/healthz")),
        hub.client.post(hub.url("/healthz")),
        hub.client.post(hub.url("/metrics")),
        hub.client.put(hub.url("/openapi.json")),
        hub.put("/v1/customers"),
        hub.delete("/v1/customers"),
        hub.post(&format!("/v1/customers/{MISSING_CUSTOMER}")),
        hub.get(&format!("/v1/customers/{MISSING_CUSTOMER}/verify-password")),
        hub.delete("/v1/api-keys"),
        hub.get("/v1/api-keys/key_01JD3Y6Q4X8K2M5N7P9R1T3V5W"),
    ];
    for request in attempts {
        let reply = call(request).await;
        assert_problem_here(&reply, 405, "method_not_allowed");
    }
}

async fn a_body_that_is_not_json_is_unsupported(hub: TestHub) {
    let customer = hub.create_customer(json!({"first_name": "Ada"})).await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));
    let body = r#"{"first_name": "Grace"}"#;
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
    ] {
        let attempts = [
            hub.post("/v1/customers"),
            hub.patch(&path),
            hub.put("/v1/customers/external_id/P-1"),
            hub.post("/v1/api-keys"),
        ];
        for request in attempts {
            let reply = call(request.header("content-type", content_type).body(body)).await;
            assert_problem_here(&reply, 415, "unsupported_media_type");
        }
    }
    // Nothing was written.
    let list = call(hub.get("/v1/customers")).await;
    assert_eq!(list.body["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(list.body["data"][0]["first_name"], "Ada");

    // JSON with a charset, or a +json type, is JSON.
    let reply = call(
        hub.patch(&path)
            .header("content-type", "application/json; charset=utf-8")
            .body(body),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["first_name"], "Grace");
    let reply = call(
        hub.patch(&path)
            .header("content-type", "application/merge-patch+json")
            .body(r#"{"last_name": "Hopper"}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["last_name"], "Hopper");
}

async fn a_body_over_the_limit_is_refused(hub: TestHub) {
    let small = TestHub::start(
        hub.backend,
        ApiConfig {
            max_body_bytes: 1024,
            ..ApiConfig::default()
        },
    )
    .await
    .expect("a second hub on the same backend");
    let big = json!({"first_name": "Ada", "note": "n".repeat(2000)});
    let fits = json!({"first_name": "Ada", "note": "n".repeat(900)});
    assert!(serde_json::to_vec(&fits).expect("json").len() < 1024);

    let reply = call(small.post("/v1/customers").json(&big)).await;
    assert_problem_here(&reply, 413, "payload_too_large");
    let reply = call(small.post("/v1/api-keys").json(&big)).await;
    assert_problem_here(&reply, 413, "payload_too_large");
    let reply = call(small.put("/v1/customers/external_id/P-1").json(&big)).await;
    assert_problem_here(&reply, 413, "payload_too_large");
    // A body far over the limit too.
    let huge = json!({"note": "n".repeat(4 * 1024 * 1024)});
    let reply = call(small.post("/v1/customers").json(&huge)).await;
    assert_problem_here(&reply, 413, "payload_too_large");

    let list = call(small.get("/v1/customers")).await;
    assert_eq!(list.body["data"], json!([]), "nothing was written");
    let reply = call(small.post("/v1/customers").json(&fits)).await;
    assert_eq!(reply.status, 201, "a body under the limit: {}", reply.body);

    // The default limit takes the same body.
    let reply = call(hub.post("/v1/customers").json(&big)).await;
    assert_eq!(reply.status, 201, "{}", reply.body);

    // A body announced far larger than will ever be read is refused before it is sent, not
    // waited for.
    let head = raw_exchange(
        &hub,
        "POST /v1/customers HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n\
         Content-Length: 99999999999\r\n",
        "{}",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

async fn a_client_that_never_finishes_its_headers_is_cut_off(hub: TestHub) {
    let impatient = TestHub::start(
        hub.backend,
        ApiConfig {
            header_read_timeout: std::time::Duration::from_millis(500),
            ..ApiConfig::default()
        },
    )
    .await
    .expect("a second hub on the same backend");
    let address = impatient.base_url.trim_start_matches("http://");
    assert!(
        closed_within_10_s(address, b"GET /healthz HTTP/1.1\r\nHost: hub\r\n").await,
        "the connection was still open after 10 s"
    );
    // Over HTTP/2 (prior knowledge), a peer that sends the preface and its settings and then
    // answers nothing, not even a PING, is cut off too.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    assert!(
        closed_within_10_s(address, preface).await,
        "the HTTP/2 connection was still open after 10 s"
    );
    // A complete request on a new connection is served as ever.
    let reply = call(impatient.client.get(impatient.url("/healthz"))).await;
    assert_eq!(reply.status, 200);
}

/// Whether the hub closes a connection on which `sent` is all it gets, within 10 s.
async fn closed_within_10_s(address: &str, sent: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(sent).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .is_ok()
}

/// Sends `head` (request line and headers, without the blank line) with the admin bearer key
/// and `body`, and returns what the hub answers within 10 s.
async fn raw_exchange(hub: &TestHub, head: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = hub.base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!(
        "{head}Authorization: Bearer {}\r\n\r\n{body}",
        clientele_testkit::ADMIN_SECRET
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = vec![0; 4096];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    String::from_utf8_lossy(&answer[..read]).into_owned()
}

/// And `Cache-Control: no-store`.
async fn every_response_carries_a_request_id(hub: TestHub) {
    let customer = hub.create_customer(json!({"first_name": "Ada"})).await;
    let path = format!("/v1/customers/{}", customer["id"].as_str().expect("id"));
    let requests = [
        hub.client.get(hub.url("/healthz")),
        hub.client.get(hub.url("/metrics")),
        hub.client.get(hub.url("/openapi.json")),
        hub.get(&path),
        hub.post("/v1/customers")
            .json(&json!({"first_name": "Grace"})),
        hub.delete(&path),
        hub.get(&path),
        hub.client.get(hub.url("/v1/customers")),
        hub.post("/v1/customers").json(&json!({"frist_name": "x"})),
        hub.post("/v1/customers")
            .header("content-type", "application/json")
            .body("{"),
        hub.get("/v1/nowhere"),
        hub.client.delete(hub.url("/healthz")),
        hub.post("/v1/customers")
            .header("content-type", "text/plain")
            .body("x"),
    ];
    let mut ids = BTreeSet::new();
    for request in requests {
        let reply = call(request).await;
        let id = reply
            .header("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id on a {} response", reply.status))
            .to_owned();
        assert!(!id.is_empty());
        assert!(ids.insert(id.clone()), "request id {id} was given twice");
        // Responses carry personal data (and, once, key secrets): no cache may keep any.
        assert_eq!(
            reply.header("cache-control"),
            Some("no-store"),
            "{}",
            reply.status
        );
        if reply.status >= 400 {
            // Every 4xx here is a problem document.
            let code = reply.body["code"].as_str().unwrap_or_default().to_owned();
            assert_problem_here(&reply, reply.status, &code);
        }
    }
}

async fn a_given_request_id_is_echoed(hub: TestHub) {
    let reply = call(hub.get("/v1/customers").header("x-request-id", "abc")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-request-id"), Some("abc"));
    let reply = call(
        hub.client
            .get(hub.url("/healthz"))
            .header("x-request-id", "abc"),
    )
    .await;
    assert_eq!(reply.header("x-request-id"), Some("abc"));
    // On problems too.
    let reply = call(
        hub.client
            .get(hub.url("/v1/customers"))
            .header("x-request-id", "abc"),
    )
    .await;
    assert_problem_here(&reply, 401, "unauthorized");
    assert_eq!(reply.header("x-request-id"), Some("abc"));
    let reply = call(hub.get("/v1/nowhere").header("x-request-id", "req-42")).await;
    assert_problem_here(&reply, 404, "route_not_found");
    assert_eq!(reply.header("x-request-id"), Some("req-42"));
}

/// A test hub's PostgreSQL database, for the tests of a database that refuses the hub.
struct Database {
    server: String,
    name: String,
}

impl Database {
    fn of(hub: &TestHub) -> Database {
        let name = hub
            .database_url
            .rsplit('/')
            .next()
            .expect("a database name");
        Database {
            server: clientele_testkit::postgres_server_url().expect("postgres"),
            name: name.to_owned(),
        }
    }

    /// Refuses new sessions and ends the open ones, but `spare`'s.
    async fn close(&self, spare: Option<i32>) {
        let name = &self.name;
        let sql = format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false");
        clientele_testkit::execute(&self.server, &sql).await;
        let spare = spare.unwrap_or(0);
        let sql = format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid NOT IN (pg_backend_pid(), {spare})"
        );
        clientele_testkit::execute(&self.server, &sql).await;
    }

    async fn open(&self) {
        let sql = format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", self.name);
        clientele_testkit::execute(&self.server, &sql).await;
    }
}

/// Found in an audit: a PostgreSQL that refuses the hub's sessions (its database closed to new
/// connections, the open ones ended) made every endpoint answer 500, `/healthz` included. It is
/// 503 `unavailable` with `Retry-After`, what load balancers and the client's retries act on,
/// and the hub answers again once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_refusing_sessions_is_unavailable_and_the_hub_recovers() {
    let Some(hub) = TestHub::postgres().await else {
        return;
    };
    let database = Database::of(&hub);
    assert_eq!(call(hub.get("/healthz")).await.status, 200);
    database.close(None).await;
    for request in [
        hub.get("/healthz"),
        hub.get("/v1/groups"),
        hub.put("/v1/teams/north").json(&json!({"name": "North"})),
    ] {
        let reply = call(request).await;
        assert_problem_here(&reply, 503, "unavailable");
        assert!(reply.retry_after_secs() >= 1, "{:?}", reply.body);
    }
    database.open().await;
    let mut status = 0;
    for _ in 0..50 {
        status = call(hub.get("/healthz")).await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "back once the database is");
}

/// Found in an audit: a request whose key was claimed, then failed with 503 because PostgreSQL
/// ended the hub's sessions, could not give its `Idempotency-Key` back while the database
/// refused them, and every retry with the key was 409 "in flight" until the claim's 10-minute
/// lease ran out. The release is tried again until it goes through, so a retry soon runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_claimed_by_a_request_the_database_ended_is_given_back_once_it_returns() {
    use sqlx::Connection as _;

    let Some(hub) = TestHub::postgres().await else {
        return;
    };
    let database = Database::of(&hub);
    // The write waits on a lock, so it is running, its key claimed, when the sessions end.
    let mut locker = sqlx::PgConnection::connect(&hub.database_url)
        .await
        .expect("connect");
    let locker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut locker)
        .await
        .expect("pid");
    sqlx::raw_sql("BEGIN; LOCK TABLE teams IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .expect("lock");
    let put = || {
        hub.put("/v1/teams/north")
            .header("Idempotency-Key", "north-once")
            .json(&json!({"name": "North"}))
    };
    let first = tokio::spawn(call(put()));
    clientele_testkit::wait_for_claim_in_flight(&hub.database_url, "north-once").await;
    database.close(Some(locker_pid)).await;
    let first = first.await.expect("request");
    assert_problem_here(&first, 503, "unavailable");
    sqlx::query("ROLLBACK")
        .execute(&mut locker)
        .await
        .expect("unlock");
    database.open().await;

    let mut retried = call(put()).await;
    for _ in 0..50 {
        if retried.status != 409 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        retried = call(put()).await;
    }
    assert_eq!(retried.status, 201, "{:?}", retried.body);
    assert_eq!(retried.header("idempotent-replayed"), None);
}
