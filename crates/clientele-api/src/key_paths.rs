//! Key paths whose value is a word of another customer route: `/v1/customers/{key}/orders` and
//! `/v1/customers/{key}/verify-password`. The router prefers the fixed segment of
//! `/v1/customers/{id}/orders` (and of `.../verify-password`) to the parameter of
//! `/v1/customers/{key}/{value}`, yet a key name is never a customer id: such a path always
//! means the customer whose `external_id`, `email` or `username` is that word.
//!
//! Before routing, the value's first byte is percent-encoded: only `{key}/{value}` matches the
//! path, and the value reads back the same. The URI as sent stays in the request ([`SentUri`])
//! for what is computed over it: request signatures and idempotency fingerprints.

use axum::extract::Request;
use axum::http::Uri;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use clientele_domain::CustomerKey;

/// Fixed segments that follow a customer id in other routes.
const SHADOWED_VALUES: [&str; 2] = ["orders", "verify-password"];

/// The URI of a request whose path was re-encoded for routing, as the client sent it.
#[derive(Clone, Debug)]
pub(crate) struct SentUri(pub Uri);

/// Re-encodes a key path that another route would take (see the module's doc).
pub(crate) async fn route_key_paths(mut request: Request, next: Next) -> Response {
    if let Some(routed) = routed_uri(request.uri()) {
        let sent = std::mem::replace(request.uri_mut(), routed);
        request.extensions_mut().insert(SentUri(sent));
    }
    next.run(request).await
}

/// The path and query the client sent.
pub(crate) fn sent_path_and_query(parts: &Parts) -> &str {
    let uri = parts
        .extensions
        .get::<SentUri>()
        .map_or(&parts.uri, |sent| &sent.0);
    uri.path_and_query().map_or("/", |p| p.as_str())
}

fn routed_uri(uri: &Uri) -> Option<Uri> {
    let (key, value) = uri.path().strip_prefix("/v1/customers/")?.split_once('/')?;
    if !SHADOWED_VALUES.contains(&value) || key.parse::<CustomerKey>().is_err() {
        return None;
    }
    let (first, rest) = value.split_at(1);
    let mut path = format!("/v1/customers/{key}/%{:02X}{rest}", first.as_bytes()[0]);
    if let Some(query) = uri.query() {
        path.push('?');
        path.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(uri: &str) -> Option<String> {
        routed_uri(&uri.parse().expect("uri")).map(|uri| uri.to_string())
    }

    #[test]
    fn only_key_paths_shadowed_by_another_route_are_re_encoded() {
        assert_eq!(
            routed("/v1/customers/external_id/orders").as_deref(),
            Some("/v1/customers/external_id/%6Frders")
        );
        assert_eq!(
            routed("/v1/customers/username/verify-password?x=1").as_deref(),
            Some("/v1/customers/username/%76erify-password?x=1")
        );
        for untouched in [
            "/v1/customers/cus_01M982KZK469J0SQF1K9CHE88E/orders",
            "/v1/customers/external_id/order",
            "/v1/customers/external_id/orders/x",
            "/v1/customers/phone/orders",
            "/v1/orders",
        ] {
            assert_eq!(routed(untouched), None, "{untouched}");
        }
    }
}
