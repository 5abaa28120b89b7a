//! Request parsing that fails as problems: JSON bodies whose unknown fields and wrong types are
//! named by path, query strings with no unknown parameters, and `If-Match`. Axum's own
//! rejections would answer in plain text; these never do.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_TYPE, IF_MATCH};
use axum::http::request::Parts;
use clientele_domain::Precondition;
use serde::de::DeserializeOwned;

use crate::problem::{ApiError, ErrorCode};
use crate::state::AppState;

/// A JSON body parsed strictly: malformed JSON is 400, a wrong type or an unknown field is 422
/// naming the field, a body over the configured limit is 413.
pub struct StrictJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let JsonBytes(bytes) = JsonBytes::from_request(request, state).await?;
        parse_json(&bytes).map(StrictJson)
    }
}

/// A JSON body's bytes (content type checked, size bounded), for handlers that parse types
/// borrowing from the body with [`parse_json`].
pub struct JsonBytes(pub Bytes);

impl FromRequest<AppState> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        check_content_type(request.headers())?;
        let bytes = read_body(request.into_body(), state.config().max_body_bytes).await?;
        // JSON is UTF-8 (RFC 8259): a body that is not is malformed as a whole. Parsers that
        // skip ahead over a raw item (a sync's) would otherwise fail only that item, as a type.
        if let Err(error) = std::str::from_utf8(&bytes) {
            return Err(ApiError::new(
                ErrorCode::MalformedJson,
                format!(
                    "the body is not UTF-8 (an invalid byte at offset {})",
                    error.valid_up_to()
                ),
            ));
        }
        Ok(JsonBytes(bytes))
    }
}

fn check_content_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(value) = values.next() else {
        return Ok(());
    };
    if values.next().is_some() {
        // Which one describes the body would be a guess (RFC 9110 allows the field once).
        return Err(ApiError::header(
            "Content-Type",
            "Content-Type may be given only once",
        ));
    }
    let media_type = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media_type == "application/json" || media_type.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("send the body as application/json, not {media_type}"),
        )
        .naming("Content-Type"))
    }
}

/// How much of an oversized body is read and discarded before the 413 is sent, so that a client
/// still uploading gets the answer instead of a reset connection. Past this the connection is
/// simply closed.
const DRAIN_BYTES: usize = 64 * 1024 * 1024;

/// How long a whole body may take to arrive: 10 MiB at under 400 KB/s. A client that sends
/// its body slower, or announces more than it sends, holds no connection longer.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a whole body of at most `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    tokio::time::timeout(BODY_READ_TIMEOUT, read_body_untimed(body, limit))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the body did not arrive within {} s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            ))
        })
}

async fn read_body_untimed(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use axum::body::HttpBody;
    use futures::StreamExt;

    let announced = body.size_hint().lower();
    if announced > DRAIN_BYTES as u64 {
        // More than would ever be drained: refused before a byte of it is read.
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than {limit} bytes"),
        ));
    }
    let announced = usize::try_from(announced).unwrap_or(limit);
    let mut bytes = Vec::with_capacity(announced.min(limit));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                ErrorCode::MalformedJson,
                format!("the body could not be read: {e}"),
            )
        })?;
        if bytes.len() + chunk.len() > limit {
            let mut drained = bytes.len() + chunk.len();
            while drained < DRAIN_BYTES {
                match stream.next().await {
                    Some(Ok(chunk)) => drained += chunk.len(),
                    _ => break,
                }
            }
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body is larger than {limit} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

/// Parses a JSON object, collecting every field the target type does not know.
pub fn parse_json<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, ApiError> {
    // serde would also build a struct from an array, positionally: only objects are bodies here.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                Ok(_) => ApiError::field("body", "invalid_type", "the body must be a JSON object"),
                Err(e) => ApiError::new(ErrorCode::MalformedJson, e.to_string()),
            },
        );
    }
    let mut unknown = Vec::new();
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path));
    let value = match T::deserialize(serde_ignored::Deserializer::new(&mut json, &mut on_unknown)) {
        Ok(value) => value,
        // Tracking the path costs an allocation per key (about a fifth of a bulk sync item's
        // parse): it is paid only to name the field of an error, by parsing again.
        Err(_) => {
            let mut error = parse_error::<T>(bytes);
            // Unknown fields met before the failure are named beside it: a required field
            // missing because it was misspelt (`nam`) shows the misspelling too.
            if error.code == ErrorCode::ValidationFailed {
                let mut unknown_fields = clientele_domain::ValidationErrors::default();
                push_unknown(&mut unknown_fields, unknown);
                error.errors.extend(unknown_fields.0);
            }
            return Err(error);
        }
    };
    json.end()
        .map_err(|e| ApiError::new(ErrorCode::MalformedJson, e.to_string()))?;
    if unknown.is_empty() {
        return Ok(value);
    }
    let mut errors = clientele_domain::ValidationErrors::default();
    push_unknown(&mut errors, unknown);
    Err(ApiError::invalid(errors))
}

/// Each field of a body that no field of its type takes, as an error.
fn push_unknown(errors: &mut clientele_domain::ValidationErrors, fields: Vec<String>) {
    for field in fields {
        errors.push(field, "unknown_field", "this field does not exist");
    }
}

/// The problem for a body that does not parse as `T`, naming the field at fault.
fn parse_error<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> ApiError {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let Err(error) = serde_path_to_error::deserialize::<_, T>(&mut json) else {
        // Unreachable: the same bytes just failed to parse as `T`.
        return ApiError::new(ErrorCode::MalformedJson, "the body does not parse");
    };
    let field = error.path().to_string();
    let inner = error.into_inner();
    match inner.classify() {
        serde_json::error::Category::Data => {
            let message = strip_position(&inner.to_string());
            let child = |name: &str| {
                if field == "." {
                    name.to_owned()
                } else {
                    format!("{field}.{name}")
                }
            };
            if let Some(name) = missing_field(&message) {
                ApiError::field(child(name), "required", format!("{name} is required"))
            } else if let Some(name) = duplicate_field(&message) {
                ApiError::field(child(name), "duplicate_field", "given more than once")
            } else {
                ApiError::field(field_or_body(&field), "invalid_type", message)
            }
        }
        // Well-formed JSON that serde_json still reports as a syntax error: a value other than
        // a string for a field that takes one of a set of words ("expected value"), or a number
        // beyond a double's range. The body is fine; the field's value is not.
        _ if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
            let message = strip_position(&inner.to_string());
            let message = if message == "number out of range" {
                "the number is out of range".to_owned()
            } else {
                "not a value this field takes (see the schema of this request)".to_owned()
            };
            ApiError::field(field_or_body(&field), "invalid_type", message)
        }
        _ => ApiError::new(ErrorCode::MalformedJson, inner.to_string()),
    }
}

/// The field serde names in "missing field `name`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.strip_suffix('`')
}

/// The field serde names in "duplicate field `name`".
fn duplicate_field(message: &str) -> Option<&str> {
    message.strip_prefix("duplicate field `")?.strip_suffix('`')
}

fn field_or_body(path: &str) -> &str {
    if path == "." || path.is_empty() {
        "body"
    } else {
        path
    }
}

/// `invalid type: ... at line 1 column 20`: the position means nothing once the field is named.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// `addresses[0].street` from serde_ignored's path.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

/// A query string parsed strictly: an unknown parameter is 422, since silently ignoring a
/// misspelt filter would return the wrong customers.
pub struct StrictQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        check_utf8(query)?;
        let mut unknown = Vec::new();
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(field_path(&path));
        let tracked = serde_ignored::Deserializer::new(deserializer, &mut on_unknown);
        let value = serde_path_to_error::deserialize(tracked).map_err(|error| {
            let field = error.path().to_string();
            let message = error.into_inner().to_string();
            let field = if field == "." {
                // serde names a parameter given twice only in its message.
                duplicate_field(&message).unwrap_or("query").to_owned()
            } else {
                field
            };
            ApiError::field(field, "invalid_parameter", message)
        })?;
        if let Some(name) = unknown.into_iter().next() {
            return Err(ApiError::field(
                name,
                "unknown_parameter",
                "this query parameter does not exist",
            ));
        }
        Ok(StrictQuery(value))
    }
}

/// No query parameters: an endpoint that takes none refuses any, as [`StrictQuery`] refuses
/// unknown ones (422 `unknown_parameter`), since ignoring one silently would do something else
/// than asked (`POST /v1/customers/sync?atomic=true` applied item by item, say).
pub type NoQuery = StrictQuery<NoParameters>;

/// The parameters of an endpoint that takes none ([`NoQuery`]).
#[derive(serde::Deserialize)]
pub struct NoParameters {}

/// Path parameters, as axum's `Path` extracts them; a segment that does not decode (percent-
/// encoded bytes that are not UTF-8, say) is a 400 problem naming the parameter, as every
/// other client error is a problem document.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        use axum::extract::path::{ErrorKind, FailedToDeserializePathParams};
        use axum::extract::rejection::PathRejection;
        let rejection = match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => return Ok(Path(value)),
            Err(rejection) => rejection,
        };
        let field = match &rejection {
            PathRejection::FailedToDeserializePathParams(failed) => {
                match FailedToDeserializePathParams::kind(failed) {
                    ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::ParseErrorAtKey { key, .. } => Some(key.clone()),
                    _ => None,
                }
            }
            _ => None,
        };
        let message = rejection.body_text();
        let mut error = ApiError::new(ErrorCode::InvalidPath, message.clone());
        if let Some(field) = field {
            error.errors.push(clientele_domain::FieldError {
                field,
                code: "invalid_path",
                message,
            });
        }
        Err(error)
    }
}

/// Refuses a query whose names or values are not UTF-8 once percent-decoded: the query parser
/// would replace such bytes with U+FFFD, and `q=%FF` would search for that instead of failing.
fn check_utf8(query: &str) -> Result<(), ApiError> {
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decodes = |text: &str| {
            percent_encoding::percent_decode_str(text)
                .decode_utf8()
                .is_ok()
        };
        if !decodes(name) || !decodes(value) {
            let field = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
            return Err(ApiError::field(
                field,
                "invalid_parameter",
                "not UTF-8 once percent-decoded",
            ));
        }
    }
    Ok(())
}

/// What an `If-Match` header requires: a version, `"3"` (or a bare `3`), or `*`, that the
/// customer exists (so a `PUT` upsert with it never creates).
pub struct IfMatch(pub Option<Precondition>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(IF_MATCH).iter();
        let Some(value) = values.next() else {
            return Ok(IfMatch(None));
        };
        if values.next().is_some() {
            return Err(ApiError::header(
                "If-Match",
                "If-Match may be given only once, with one version",
            ));
        }
        let text = value.to_str().unwrap_or_default().trim();
        if text == "*" {
            return Ok(IfMatch(Some(Precondition::Exists)));
        }
        let tag = text.strip_prefix("W/").unwrap_or(text);
        // Quoted on both sides, or not at all: `"1` is no entity tag.
        let unquoted = match tag.strip_prefix('"') {
            Some(rest) => rest.strip_suffix('"').unwrap_or(tag),
            None => tag,
        };
        unquoted
            .parse()
            .map(|version| IfMatch(Some(Precondition::Version(version))))
            .map_err(|_| {
                ApiError::header(
                    "If-Match",
                    "If-Match must be a version as the ETag gives it, e.g. \"3\"",
                )
            })
    }
}

/// The `ETag` of a version.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientele_domain::CustomerWrite;

    fn error_of(json: &str) -> ApiError {
        match parse_json::<CustomerWrite>(json.as_bytes()) {
            Ok(_) => panic!("{json} parsed"),
            Err(e) => e,
        }
    }

    /// Found in an audit: `{"nam": "x"}` for a body that needs `name` named only the missing
    /// field, not the misspelt one beside it.
    #[test]
    fn a_missing_field_is_named_with_the_unknown_ones_beside_it() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Named {
            name: String,
        }
        let Err(error) = parse_json::<Named>(br#"{"nam": "x"}"#) else {
            panic!("parsed");
        };
        let fields: Vec<_> = error
            .errors
            .iter()
            .map(|e| (e.field.as_str(), e.code))
            .collect();
        assert_eq!(fields, [("name", "required"), ("nam", "unknown_field")]);
    }

    #[test]
    fn names_unknown_fields_at_any_depth() {
        let error = error_of(r#"{"frist_name":"A","addresses":[{"title":"x","strete":"y"}]}"#);
        assert_eq!(error.code, ErrorCode::ValidationFailed);
        let fields: Vec<_> = error.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["frist_name", "addresses[0].strete"]);
        assert!(error.errors.iter().all(|e| e.code == "unknown_field"));
    }

    #[test]
    fn names_a_field_given_twice() {
        // Found in an audit: the top-level one was `invalid_type` on `body`, and in `custom`
        // the last of the two won silently.
        for (json, field) in [
            (r#"{"first_name":"a","first_name":"b"}"#, "first_name"),
            (
                r#"{"addresses":[{"title":"x","title":"y"}]}"#,
                "addresses[0].title",
            ),
            (r#"{"custom":{"a":1,"a":2}}"#, "custom.a"),
            // Found in a review: inside `custom`, the last of two still won.
            (r#"{"custom":{"a":{"b":1,"b":2}}}"#, "custom.a.b"),
            (
                r#"{"custom":{"a":[1,{"c":{"d":1,"d":1}}]}}"#,
                "custom.a[1].c.d",
            ),
        ] {
            let error = error_of(json);
            assert_eq!(error.code, ErrorCode::ValidationFailed, "{json}");
            assert_eq!(error.errors[0].field, field, "{json}");
            assert_eq!(error.errors[0].code, "duplicate_field", "{json}");
        }
        // One of each is fine, in custom too.
        let write = parse_json::<CustomerWrite>(
            br#"{"custom":{"a":1,"b":{"a":2,"n":[1.5,-3,18446744073709551615,1e300,null,true,"s"]}}}"#,
        )
        .expect("no field twice");
        // Read as `serde_json::Value` reads it.
        let expected: serde_json::Value = serde_json::from_str(
            r#"{"a":1,"b":{"a":2,"n":[1.5,-3,18446744073709551615,1e300,null,true,"s"]}}"#,
        )
        .expect("JSON");
        assert_eq!(
            write
                .custom
                .value()
                .map(|c| serde_json::Value::Object(c.clone())),
            Some(expected)
        );
    }

    #[test]
    fn names_the_field_of_a_wrong_type() {
        let error = error_of(r#"{"addresses":[{"title":"x","country":5}]}"#);
        assert_eq!(error.code, ErrorCode::ValidationFailed);
        assert_eq!(error.errors[0].field, "addresses[0].country");
        assert_eq!(error.errors[0].code, "invalid_type");
        assert!(!error.errors[0].message.contains("line"));
    }

    #[test]
    fn a_non_string_for_a_word_field_or_a_huge_number_is_invalid_not_malformed() {
        for (json, field) in [
            (
                r#"{"addresses":[{"title":"h","kind":5}]}"#,
                "addresses[0].kind",
            ),
            (r#"{"addresses_mode":3}"#, "addresses_mode"),
            (r#"{"discount_percent":1e400}"#, "discount_percent"),
        ] {
            let error = error_of(json);
            assert_eq!(error.code, ErrorCode::ValidationFailed, "{json}");
            assert_eq!(error.errors[0].field, field, "{json}");
            assert_eq!(error.errors[0].code, "invalid_type", "{json}");
        }
        // Malformed JSON stays malformed.
        assert_eq!(error_of(r#"{"kind": }"#).code, ErrorCode::MalformedJson);
    }

    #[test]
    fn a_missing_required_field_is_named() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Key {
            name: String,
            role: String,
        }
        let error = match parse_json::<Key>(br#"{"name":"x"}"#) {
            Ok(key) => panic!("parsed {key:?}"),
            Err(error) => error,
        };
        assert_eq!(error.errors[0].field, "role");
        assert_eq!(error.errors[0].code, "required");
    }

    #[test]
    fn malformed_json_is_a_bad_request() {
        for body in ["{", "", "{\"a\":}", "{} {}", "[1"] {
            assert_eq!(error_of(body).code, ErrorCode::MalformedJson, "{body}");
        }
    }

    #[test]
    fn a_non_object_body_is_a_type_error() {
        assert_eq!(error_of("[]").code, ErrorCode::ValidationFailed);
    }
}

/// Sync items are parsed one by one from raw JSON slices of the envelope.
#[cfg(test)]
mod raw_items {
    #[derive(serde::Deserialize)]
    struct Envelope {
        items: Vec<Box<serde_json::value::RawValue>>,
    }

    #[test]
    fn raw_items_pass_through_the_strict_parser_untouched() {
        let parsed: Envelope = super::parse_json(br#"{"items":[{"a":1}, [2], "x"]}"#)
            .unwrap_or_else(|e| panic!("{:?}", e.detail));
        assert_eq!(parsed.items[0].get(), r#"{"a":1}"#);
        assert_eq!(parsed.items.len(), 3);
    }
}
