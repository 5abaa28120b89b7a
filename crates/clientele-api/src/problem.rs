//! The one place errors become HTTP: every failure is an RFC 9457 problem
//! (`application/problem+json`) with a stable `code` and, where a field is at fault, its path.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clientele_domain::{DomainError, FieldError, ValidationErrors};
use serde::Serialize;
use utoipa::ToSchema;

use crate::response::Rendered;

macro_rules! error_codes {
    ($($variant:ident => $status:ident, $code:literal, $title:literal;)*) => {
        /// Every error code the API returns, with its status: a code can never drift from its status.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ErrorCode { $($variant),* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status),* }
            }

            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code),* }
            }

            pub fn title(self) -> &'static str {
                match self { $(ErrorCode::$variant => $title),* }
            }
        }
    };
}

error_codes! {
    MalformedJson => BAD_REQUEST, "malformed_json", "The body is not well-formed JSON";
    InvalidHeader => BAD_REQUEST, "invalid_header", "A request header is malformed";
    InvalidPath => BAD_REQUEST, "invalid_path", "A path segment does not decode";
    UriTooLong => URI_TOO_LONG, "uri_too_long", "The request's path and query are too long";
    HeadersTooLarge => REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", "The request's headers are too many or too large";
    Unauthorized => UNAUTHORIZED, "unauthorized", "Missing or invalid credentials";
    SignatureMissing => UNAUTHORIZED, "signature_missing", "A signed request lacks one of its headers";
    SignatureInvalid => UNAUTHORIZED, "signature_invalid", "The request signature does not verify";
    SignatureExpired => UNAUTHORIZED, "signature_expired", "The signed request's timestamp is outside the 300 s window";
    SignatureReplayed => UNAUTHORIZED, "signature_replayed", "This signed request was accepted before";
    Forbidden => FORBIDDEN, "forbidden", "The API key's role does not allow this";
    NotFound => NOT_FOUND, "not_found", "No such resource";
    RouteNotFound => NOT_FOUND, "route_not_found", "No such endpoint";
    MethodNotAllowed => METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed on this endpoint";
    DuplicateKey => CONFLICT, "duplicate_key", "Another customer already has this key";
    GroupHasSubgroups => CONFLICT, "group_has_subgroups", "The group has subgroups";
    GroupInUse => CONFLICT, "group_in_use", "Customers are still members of the group";
    TeamInUse => CONFLICT, "team_in_use", "Customers or API keys still belong to the team";
    IdempotencyInFlight => CONFLICT, "idempotency_in_flight", "A request with this Idempotency-Key is still running";
    IdempotencyKeyReused => UNPROCESSABLE_ENTITY, "idempotency_key_reused", "The Idempotency-Key was used with a different request";
    CustomerHasOrders => CONFLICT, "customer_has_orders", "Orders reference this customer";
    RateLimited => TOO_MANY_REQUESTS, "rate_limited", "Too many requests for this API key";
    TooManyItems => PAYLOAD_TOO_LARGE, "too_many_items", "Too many items in one request";
    SyncFailed => UNPROCESSABLE_ENTITY, "sync_failed", "An atomic sync had failing items; nothing was applied";
    VersionConflict => PRECONDITION_FAILED, "version_conflict", "The stored version differs from the expected one";
    CursorExpired => GONE, "cursor_expired", "The change-feed position is older than the changes kept";
    PayloadTooLarge => PAYLOAD_TOO_LARGE, "payload_too_large", "The request body is too large";
    RequestTimeout => REQUEST_TIMEOUT, "request_timeout", "The request body did not arrive in time";
    UnsupportedMediaType => UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "The body must be application/json";
    ValidationFailed => UNPROCESSABLE_ENTITY, "validation_failed", "The request is not valid";
    Internal => INTERNAL_SERVER_ERROR, "internal_error", "Internal server error";
    Unavailable => SERVICE_UNAVAILABLE, "unavailable", "The service is temporarily unavailable";
}

/// The `Retry-After` of a 503: the database was busy or unreachable, or the server is
/// stopping (another hub behind the same address can answer a second later).
pub const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

/// An RFC 9457 problem document.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:clientele:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable snake_case machine-readable code.
    pub code: String,
    /// The fields at fault, when the problem is about the input.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// The error of every handler.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    pub errors: Vec<FieldError>,
    /// A write failed in its commit, so it may have been applied: the response carries
    /// [`OutcomeUnknown`].
    pub outcome_unknown: bool,
    /// Whole seconds a client should wait before it retries (`Retry-After`), for a 429.
    pub retry_after: Option<u64>,
}

/// Marks (in its extensions) an error response to a request whose write may have been applied
/// although it failed; every other 5xx changed nothing.
#[derive(Clone, Copy, Debug)]
pub struct OutcomeUnknown;

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            errors: Vec::new(),
            outcome_unknown: false,
            retry_after: None,
        }
    }

    /// 429 `rate_limited`: the caller's key is over its rate, and may retry in `wait` seconds.
    pub fn rate_limited(wait: u64) -> Self {
        Self {
            retry_after: Some(wait),
            ..Self::new(
                ErrorCode::RateLimited,
                format!("this API key is over its request rate; retry in {wait} s"),
            )
        }
    }

    pub fn invalid(errors: ValidationErrors) -> Self {
        let detail = match errors.0.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        Self {
            code: ErrorCode::ValidationFailed,
            detail,
            errors: errors.0,
            outcome_unknown: false,
            retry_after: None,
        }
    }

    pub fn field(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self::invalid(ValidationErrors::single(field, code, message))
    }

    /// A request header that is malformed (or given more than once where it may appear only
    /// once), named in `errors[0].field` as the header's name.
    pub fn header(name: &str, detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidHeader, detail).naming(name)
    }

    /// Names the field (or header) at fault in `errors`, under the problem's own code.
    pub fn naming(mut self, field: &str) -> Self {
        self.errors.push(FieldError {
            field: field.to_owned(),
            code: self.code.as_str(),
            message: self.detail.clone(),
        });
        self
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such resource")
    }

    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("urn:clientele:problem:{}", self.code.as_str()),
            title: self.code.title().to_owned(),
            status: self.code.status().as_u16(),
            detail: self.detail.clone(),
            code: self.code.as_str().to_owned(),
            errors: self.errors.clone(),
        }
    }
}

impl From<ValidationErrors> for ApiError {
    fn from(errors: ValidationErrors) -> Self {
        ApiError::invalid(errors)
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        ApiError::from(&error)
    }
}

impl From<&DomainError> for ApiError {
    fn from(error: &DomainError) -> Self {
        let mut api = ApiError::of_domain(error);
        api.outcome_unknown = error.may_have_applied();
        api
    }
}

impl ApiError {
    fn of_domain(error: &DomainError) -> Self {
        match error {
            DomainError::NotFound => ApiError::not_found(),
            &DomainError::DuplicateKey(key) => ApiError {
                code: ErrorCode::DuplicateKey,
                detail: format!("another customer already has this {key}"),
                errors: vec![FieldError {
                    field: key.as_str().to_owned(),
                    code: "duplicate_key",
                    message: format!("{key} must be unique"),
                }],
                outcome_unknown: false,
                retry_after: None,
            },
            &DomainError::VersionConflict { expected, actual } => ApiError::new(
                ErrorCode::VersionConflict,
                format!("expected version {expected}, the stored version is {actual}"),
            ),
            DomainError::NoCurrentVersion => ApiError::new(
                ErrorCode::VersionConflict,
                "If-Match: * requires a stored customer, and there is none",
            ),
            &DomainError::CursorExpired { after, horizon } => ApiError {
                code: ErrorCode::CursorExpired,
                detail: format!(
                    "changes up to seq {horizon} are no longer kept, so the feed cannot continue \
                     after {after}. Resync: page through GET /v1/customers, then follow the feed \
                     from the feed_position that list response reported"
                ),
                errors: vec![FieldError {
                    field: "after".to_owned(),
                    code: "cursor_expired",
                    message: format!("must be at least {horizon}"),
                }],
                outcome_unknown: false,
                retry_after: None,
            },
            DomainError::CustomerHasOrders => ApiError::new(
                ErrorCode::CustomerHasOrders,
                "orders reference this customer; it cannot be deleted",
            ),
            DomainError::Validation(errors) => ApiError::invalid(errors.clone()),
            DomainError::IdempotencyKeyTakenOver => ApiError::new(
                ErrorCode::IdempotencyInFlight,
                "a retry of this request took over its Idempotency-Key while it ran; this \
                 request applied nothing, and the retry's answer is the one kept",
            ),
            &DomainError::InUse(what) => {
                use clientele_domain::InUse;
                let (code, detail) = match what {
                    InUse::GroupHasSubgroups => (
                        ErrorCode::GroupHasSubgroups,
                        "delete or move the group's subgroups first",
                    ),
                    InUse::GroupHasMembers => (
                        ErrorCode::GroupInUse,
                        "remove the group from its customers first",
                    ),
                    InUse::TeamHasMembers => (
                        ErrorCode::TeamInUse,
                        "remove the team from its customers first",
                    ),
                    InUse::TeamHasKeys => (
                        ErrorCode::TeamInUse,
                        "revoke the API keys restricted to the team first",
                    ),
                };
                ApiError::new(code, detail)
            }
            DomainError::Unavailable(source) => {
                tracing::warn!(error = %source, "storage unavailable");
                ApiError::new(
                    ErrorCode::Unavailable,
                    "the database is busy or unreachable; retry",
                )
            }
            DomainError::Storage(source) => {
                tracing::error!(error = %source, details = ?source, "storage failed");
                ApiError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl ApiError {
    /// The problem response, as sent and as kept for idempotent replays.
    pub fn rendered(&self) -> Rendered {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        Rendered {
            content_type: "application/problem+json",
            ..Rendered::json(self.code.status(), body)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.rendered().into_response();
        if self.code.status() == StatusCode::UNAUTHORIZED {
            // RFC 9110 §15.5.2: a 401 names the scheme that would authenticate. Signed
            // requests are this API's own scheme, so the challenge offers the bearer one.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"clientele\""),
            );
        }
        if self.code.status() == StatusCode::SERVICE_UNAVAILABLE {
            // Busy or shutting down: worth a retry soon, and a client that honours
            // `Retry-After` (as the SDK does) need not guess how soon.
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(UNAVAILABLE_RETRY_AFTER_SECS),
            );
        }
        if let Some(wait) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(wait),
            );
        }
        if self.outcome_unknown {
            response.extensions_mut().insert(OutcomeUnknown);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_errors_are_4xx_or_5xx() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{} twice", code.as_str());
            assert!(
                code.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }

    #[test]
    fn a_503_says_when_to_retry_and_other_errors_do_not() {
        let busy = ApiError::new(ErrorCode::Unavailable, "busy").into_response();
        assert_eq!(busy.status(), 503);
        assert_eq!(
            busy.headers()[axum::http::header::RETRY_AFTER],
            UNAVAILABLE_RETRY_AFTER_SECS.to_string()
        );
        let internal = ApiError::new(ErrorCode::Internal, "bug").into_response();
        assert!(
            !internal
                .headers()
                .contains_key(axum::http::header::RETRY_AFTER)
        );
    }

    #[test]
    fn a_header_problem_names_the_header() {
        let problem = ApiError::header("If-Match", "not a version").problem();
        assert_eq!(problem.status, 400);
        assert_eq!(problem.code, "invalid_header");
        assert_eq!(problem.errors[0].field, "If-Match");
        assert_eq!(problem.errors[0].code, "invalid_header");
    }

    #[test]
    fn a_duplicate_key_names_the_key() {
        let error = ApiError::from(DomainError::DuplicateKey(
            clientele_domain::CustomerKey::Email,
        ));
        let problem = error.problem();
        assert_eq!(problem.status, 409);
        assert_eq!(problem.code, "duplicate_key");
        assert_eq!(problem.errors[0].field, "email");
    }
}
