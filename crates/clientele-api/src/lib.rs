//! Clientele's HTTP layer: the axum router, thin handlers (parse, authorize, call the store, map
//! errors), authentication, RFC 9457 problems, metrics and the generated OpenAPI document.

pub mod auth;
mod cursor;
mod detach;
pub mod extract;
pub mod idempotency;
mod key_paths;
mod metrics;
mod openapi;
mod openapi_problems;
pub mod password;
pub mod problem;
pub mod rate_limit;
mod request_limits;
pub mod response;
pub mod retention;
mod routes;
pub mod secrets;
mod serve;
pub mod signed;
mod state;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use state::{ApiConfig, AppState};

use crate::problem::{ApiError, ErrorCode};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The endpoints served without credentials; the rate limiter leaves them alone.
pub(crate) const OPEN_PATHS: [&str; 3] = ["/healthz", "/metrics", "/openapi.json"];

/// The OpenAPI document of every route the router serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes_and_document().1
}

fn routes_and_document() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut document) = api_router().split_for_parts();
    openapi_problems::document_problems(&mut document);
    openapi::require_every_field(&mut document);
    (router, document)
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(routes::customers::router())
        .merge(routes::sync::router())
        .merge(routes::changes::router())
        .merge(routes::orders::router())
        .merge(routes::schema::router())
        .merge(routes::api_keys::router())
        .merge(routes::groups::router())
        .merge(routes::teams::router())
        .merge(routes::tags::router())
        .merge(routes::ops::router())
}

/// The whole application: routes, problem fallbacks, metrics, request ids, tracing and panic
/// containment.
pub fn app(state: AppState) -> Router {
    let (router, document) = routes_and_document();
    let document = std::sync::Arc::new(document);
    let routed = router
        .route(
            "/openapi.json",
            get(move |_: extract::NoQuery| openapi::document(document.clone())),
        )
        .fallback(|| async {
            ApiError::new(ErrorCode::RouteNotFound, "there is no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(ErrorCode::MethodNotAllowed, "this endpoint does not take this method")
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), idempotency::middleware))
        .layer(axum::middleware::from_fn_with_state(state.clone(), rate_limit::middleware))
        .layer(axum::middleware::from_fn_with_state(state.clone(), signed::middleware))
        // Bodies are read by `StrictJson` with the configured limit; lift axum's own default.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(detach::run_to_completion))
        .layer(axum::middleware::from_fn(request_limits::check))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(CatchPanicLayer::custom(panic_response))
        // Responses carry personal data and, once, API key secrets: no cache may keep them.
        .layer(SetResponseHeaderLayer::overriding(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, UlidRequestId))
        .with_state(state);
    // A layer of the router itself runs after routing; this one must run before.
    let key_paths_first = axum::middleware::from_fn(key_paths::route_key_paths);
    Router::new().fallback_service(tower::Layer::layer(&key_paths_first, routed))
}

/// A request id for requests that come without one.
#[derive(Clone, Copy)]
struct UlidRequestId;

impl MakeRequestId for UlidRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        ulid::Ulid::new()
            .to_string()
            .parse()
            .ok()
            .map(RequestId::new)
    }
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %message, "a request handler panicked");
    ApiError::new(ErrorCode::Internal, "internal error").into_response()
}

/// Serves the app until `shutdown` resolves, then lets requests in flight finish (for at most
/// `grace`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let header_read_timeout = state.config().header_read_timeout;
    serve::run(listener, app(state), header_read_timeout, shutdown, grace).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_paths_are_the_documented_operations_without_security() {
        let document = serde_json::to_value(openapi()).expect("the document as JSON");
        // `/openapi.json` is documented (see `openapi::ApiDoc`) though routed in `app`.
        let mut open: Vec<&str> = Vec::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            let operations = item.as_object().expect("a path item");
            if operations
                .values()
                .any(|operation| operation.get("security").is_none())
            {
                open.push(path);
            }
        }
        open.sort_unstable();
        let mut expected = OPEN_PATHS.to_vec();
        expected.sort_unstable();
        assert_eq!(open, expected);
    }
}
