//! Bounds on a request's head: the length of its path and query, and the number and size of
//! its headers, each refused with a problem document.
//!
//! hyper refuses heads past its own buffers itself, with an empty body. The serving loop sets
//! those buffers well above the bounds here (`serve.rs`), so that a client over a bound learns
//! which one from a `uri_too_long` or `headers_too_large` problem, as from every other 4xx.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::{ApiError, ErrorCode};

/// The longest path and query accepted, in bytes: common proxies' own limit, and far above any
/// list filter's needs.
pub(crate) const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header fields a request may have.
pub(crate) const MAX_HEADER_COUNT: usize = 100;
/// The most bytes of header names and values a request may have.
pub(crate) const MAX_HEADER_BYTES: usize = 32 * 1024;

pub(crate) async fn check(request: Request, next: Next) -> Response {
    match refusal(&request) {
        Some(problem) => problem.into_response(),
        None => next.run(request).await,
    }
}

fn refusal(request: &Request) -> Option<ApiError> {
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |path_and_query| path_and_query.as_str().len());
    if uri_bytes > MAX_URI_BYTES {
        return Some(ApiError::new(
            ErrorCode::UriTooLong,
            format!(
                "the path and query are {uri_bytes} bytes; at most {MAX_URI_BYTES} are accepted"
            ),
        ));
    }
    let headers = request.headers();
    if headers.len() > MAX_HEADER_COUNT {
        return Some(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request has {} header fields; at most {MAX_HEADER_COUNT} are accepted",
                headers.len()
            ),
        ));
    }
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request's headers are {header_bytes} bytes; at most {MAX_HEADER_BYTES} are \
                 accepted"
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderName, HeaderValue};

    fn name(i: usize) -> HeaderName {
        format!("x-h{i}").parse().expect("a header name")
    }

    fn value(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).expect("a header value")
    }

    fn request(uri: &str) -> Request {
        Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .expect("a request")
    }

    #[test]
    fn a_head_within_every_bound_passes() {
        let mut ok = request(&format!("/v1/customers?q={}", "a".repeat(4000)));
        ok.headers_mut()
            .insert("x-big", value(&"b".repeat(16 * 1024)));
        assert!(refusal(&ok).is_none());
    }

    #[test]
    fn each_bound_refuses_with_its_own_code() {
        let long = request(&format!("/v1/customers?q={}", "a".repeat(MAX_URI_BYTES)));
        assert_eq!(refusal(&long).map(|e| e.code), Some(ErrorCode::UriTooLong));

        let mut many = request("/healthz");
        for i in 0..=MAX_HEADER_COUNT {
            many.headers_mut()
                .insert(name(i), HeaderValue::from_static("1"));
        }
        assert_eq!(
            refusal(&many).map(|e| e.code),
            Some(ErrorCode::HeadersTooLarge)
        );

        let mut large = request("/healthz");
        for i in 0..3 {
            large
                .headers_mut()
                .insert(name(i), value(&"c".repeat(MAX_HEADER_BYTES / 3)));
        }
        assert_eq!(
            refusal(&large).map(|e| e.code),
            Some(ErrorCode::HeadersTooLarge)
        );
    }
}
