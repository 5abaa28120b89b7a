//! Operations endpoints, without authentication: health, metrics, the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::NoQuery;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(metrics))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Health {
    status: &'static str,
    database: &'static str,
}

/// Liveness and database reachability.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Problem))
)]
async fn healthz(State(state): State<AppState>, _: NoQuery) -> Result<Json<Health>, ApiError> {
    state.store().ping().await?;
    Ok(Json(Health {
        status: "ok",
        database: state.store().backend(),
    }))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String))
)]
async fn metrics(State(state): State<AppState>, _: NoQuery) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(&state),
    )
}
