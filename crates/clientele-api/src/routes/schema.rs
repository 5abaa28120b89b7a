//! `/v1/schema`: the customer schema (required fields on create, typed custom fields). Writes
//! read it in their own transaction, so a new schema applies to every hub process at once;
//! customers stored before it are not revalidated.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clientele_domain::Role;
use clientele_domain::schema::{FieldType, Schema};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, SharedAdminCaller};
use crate::extract::{NoQuery, StrictJson};
use crate::idempotency::Idempotency;
use crate::problem::{ApiError, Problem};
use crate::response::Rendered;
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_schema, put_schema))
}

/// The customer schema in force (empty lists when none was set).
#[utoipa::path(
    get, path = "/v1/schema", tag = "schema",
    responses((status = 200, body = Schema)),
    security(("bearer" = []))
)]
async fn get_schema(
    State(state): State<AppState>,
    caller: Caller,
    _: NoQuery,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    let schema = state.store().get_schema().await?;
    Ok(Rendered::serialize(StatusCode::OK, &schema).into_response())
}

/// The body of `PUT /v1/schema`: the whole schema, which replaces the stored one. A member left
/// out (or `null`) is empty, so `{}` declares nothing; answered with the schema as stored. Only
/// described here: the body is read by `Schema::parse`, which names every fault by its path.
#[derive(ToSchema)]
#[allow(dead_code)]
struct SchemaWrite {
    /// Fields a create must set; empty when left out.
    required_on_create: Option<Vec<String>>,
    /// The declared custom fields by name; none when left out.
    custom_fields: Option<BTreeMap<String, FieldType>>,
}

/// Replace the customer schema (admin only).
///
/// `required_on_create` names top-level customer fields (or `custom.<declared field>`) a create
/// must set; `custom_fields` declares typed custom fields: `string` (`max_length`), `integer` and
/// `number` (`min`, `max`), `boolean`, `date` (`YYYY-MM-DD`), `enum` (`values`). Once any custom
/// field is declared, undeclared ones are refused on every write. Stored customers are not
/// revalidated.
#[utoipa::path(
    put, path = "/v1/schema", tag = "schema",
    request_body = SchemaWrite,
    responses((status = 200, body = Schema), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
async fn put_schema(
    State(state): State<AppState>,
    _caller: SharedAdminCaller,
    _: NoQuery,
    idempotency: Idempotency,
    StrictJson(document): StrictJson<Value>,
) -> Result<Response, ApiError> {
    let schema = Schema::parse(&document)?;
    let render = |schema: &Schema| Rendered::serialize(StatusCode::OK, schema).to_stored();
    state
        .store()
        .put_schema(&schema, idempotency.completion(&render))
        .await?;
    idempotency.completed();
    Ok(Rendered::serialize(StatusCode::OK, &schema).into_response())
}
