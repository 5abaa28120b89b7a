//! The problem responses every operation shares, written into the OpenAPI document once instead
//! of in every handler's annotation: the extractors and middleware that refuse a request (auth,
//! strict JSON and query parsing, `If-Match`, `Idempotency-Key`, rate limits, the database being
//! busy) run for many routes, so the document must say so for each of them. Also makes every
//! error response `application/problem+json`, which is what the hub sends, describes the
//! response headers that middleware adds (`Retry-After` on 429, `Idempotent-Replayed` on
//! replays) and lets signed requests authenticate wherever a bearer secret does.

use std::collections::BTreeSet;

use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{
    Content, HttpMethod, OpenApi, Ref, RefOr, Required, Response, ResponseBuilder, Schema,
};

use crate::problem::ErrorCode;

const PROBLEM_JSON: &str = "application/problem+json";
const RETRY_AFTER: &str = "Retry-After";
const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// Completes the document's error responses; see the module documentation.
pub(crate) fn document_problems(openapi: &mut OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        let operations = [
            (HttpMethod::Get, &mut item.get),
            (HttpMethod::Put, &mut item.put),
            (HttpMethod::Post, &mut item.post),
            (HttpMethod::Delete, &mut item.delete),
            (HttpMethod::Patch, &mut item.patch),
        ];
        for (method, operation) in operations {
            if let Some(operation) = operation {
                complete(method, operation);
            }
        }
    }
}

fn complete(method: HttpMethod, operation: &mut Operation) {
    let secured = operation
        .security
        .as_ref()
        .is_some_and(|requirements| !requirements.is_empty());
    let has_body = operation.request_body.is_some();
    let has = |location: ParameterIn| {
        operation
            .parameters
            .iter()
            .flatten()
            .any(|p| p.parameter_in == location)
    };
    let has_query = has(ParameterIn::Query);
    let has_path = has(ParameterIn::Path);
    let has_if_match = operation
        .parameters
        .iter()
        .flatten()
        .any(|p| p.name.eq_ignore_ascii_case("if-match"));
    let write = matches!(
        method,
        HttpMethod::Post | HttpMethod::Put | HttpMethod::Patch | HttpMethod::Delete
    );

    // `request_limits` bounds every request's head.
    let mut codes: Vec<ErrorCode> = vec![ErrorCode::UriTooLong, ErrorCode::HeadersTooLarge];
    if has_body {
        codes.extend([
            ErrorCode::MalformedJson,
            ErrorCode::PayloadTooLarge,
            ErrorCode::RequestTimeout,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::ValidationFailed,
        ]);
    }
    // Every endpoint refuses a query parameter it does not take (`unknown_parameter`), also
    // one that takes none.
    codes.push(ErrorCode::ValidationFailed);
    if has_if_match {
        codes.push(ErrorCode::InvalidHeader);
    }
    if has_path {
        codes.push(ErrorCode::InvalidPath);
    }
    if secured {
        crate::openapi::allow_signed(operation);
        codes.extend([
            ErrorCode::Unauthorized,
            ErrorCode::SignatureMissing,
            ErrorCode::SignatureInvalid,
            ErrorCode::SignatureExpired,
            ErrorCode::SignatureReplayed,
            ErrorCode::Forbidden,
            ErrorCode::RateLimited,
            ErrorCode::Unavailable,
        ]);
        if write {
            codes.extend([
                ErrorCode::InvalidHeader,
                ErrorCode::IdempotencyInFlight,
                ErrorCode::IdempotencyKeyReused,
            ]);
            add_idempotency_key(operation);
        }
    }

    // What the handler answers (its annotated responses and its extractors' refusals) is
    // recorded for an `Idempotency-Key` and replayed. The middleware in front of it refuses
    // before the key is claimed (401, 429, a bad key, a body too large or too slow: it reads
    // the body), and 415s and server errors release the key: those are never replayed.
    let mut replayable: BTreeSet<String> = operation.responses.responses.keys().cloned().collect();
    let handler_refusals = [
        (has_body, ErrorCode::MalformedJson),
        (has_body || has_query, ErrorCode::ValidationFailed),
        (has_if_match, ErrorCode::InvalidHeader),
        (has_path, ErrorCode::InvalidPath),
        (secured, ErrorCode::Forbidden),
    ];
    replayable.extend(
        handler_refusals
            .iter()
            .filter(|(refuses, _)| *refuses)
            .map(|(_, code)| code.status().as_u16().to_string()),
    );
    replayable.retain(|status| {
        !["401", "408", "415", "429"].contains(&status.as_str()) && !status.starts_with('5')
    });

    let responses = &mut operation.responses.responses;
    for code in codes {
        let status = code.status().as_u16().to_string();
        if !responses.contains_key(&status) {
            responses.insert(status.clone(), problem_response(code).into());
        }
        if let Some(RefOr::T(response)) = responses.get_mut(&status) {
            mention(response, code);
        }
    }
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else {
            continue;
        };
        if status.starts_with(['4', '5']) {
            as_problem(response);
        }
        if status == "429" || status == "503" {
            response
                .headers
                .insert(RETRY_AFTER.to_owned(), retry_after());
        }
        if secured && write && replayable.contains(status) {
            response
                .headers
                .insert(IDEMPOTENT_REPLAYED.to_owned(), idempotent_replayed());
        }
    }
}

/// `Retry-After` as the hub sends it: on a 429, when this key's rate limit accepts a request
/// again; on a 503, a short pause before a retry.
fn retry_after() -> Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1)),
        )
        .description(Some(
            "Whole seconds to wait before retrying: on 429, until this API key's rate limit \
             accepts a request again; on 503, a short pause while the database is busy or the \
             server restarts",
        ))
        .build()
}

/// `Idempotent-Replayed`, on the responses a request with an `Idempotency-Key` may get again.
fn idempotent_replayed() -> Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["true"])),
        )
        .description(Some(
            "`true` when this response is the recorded answer to an earlier request with the \
             same `Idempotency-Key` (same method, path and body, within 24 hours), sent again \
             without changing anything; absent on a request handled now",
        ))
        .build()
}

fn problem_response(code: ErrorCode) -> Response {
    ResponseBuilder::new()
        .description(code.title())
        .content(PROBLEM_JSON, problem_content())
        .build()
}

/// Names `code` in the response's description, so readers see every code a status may carry.
fn mention(response: &mut Response, code: ErrorCode) {
    let tag = format!("`{}`", code.as_str());
    let description = &mut response.description;
    if description.contains(&tag) {
        return;
    }
    if description.is_empty() {
        code.title().clone_into(description);
    }
    match description
        .strip_suffix(')')
        .filter(|d| d.contains("(codes: "))
    {
        Some(listed) => *description = format!("{listed}, {tag})"),
        None => description.push_str(&format!(" (codes: {tag})")),
    }
}

/// The hub sends every 4xx and 5xx as `application/problem+json`.
fn as_problem(response: &mut Response) {
    if let Some(content) = response.content.shift_remove("application/json") {
        response.content.insert(PROBLEM_JSON.to_owned(), content);
    }
    if response.content.is_empty() {
        response
            .content
            .insert(PROBLEM_JSON.to_owned(), problem_content());
    }
}

fn problem_content() -> Content {
    Content::new(Some(RefOr::<Schema>::Ref(Ref::from_schema_name("Problem"))))
}

fn add_idempotency_key(operation: &mut Operation) {
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    if parameters
        .iter()
        .any(|p| p.name.eq_ignore_ascii_case("idempotency-key"))
    {
        return;
    }
    parameters.push(idempotency_key());
}

fn idempotency_key() -> Parameter {
    ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "Up to 255 characters: for 24 hours a repeat of the same request gets the first \
             response again (`Idempotent-Replayed: true`) and changes nothing",
        ))
        .schema(Some(
            utoipa::openapi::ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::Type::String)
                .min_length(Some(1))
                .max_length(Some(255)),
        ))
        .build()
}
