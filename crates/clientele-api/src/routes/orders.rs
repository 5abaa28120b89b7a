//! `/v1/orders` and `/v1/customers/{id}/orders`: orders, minimal. A team-restricted key sees
//! only orders of customers in its teams; for it, other customers' orders do not exist (404)
//! and ordering for a customer outside its teams is refused like ordering for an unknown one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clientele_domain::order::{Order, OrderWrite};
use clientele_domain::{DomainError, OrderId, Role, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, WriteCaller};
use crate::extract::{NoQuery, Path, StrictJson, StrictQuery};
use crate::idempotency::Idempotency;
use crate::problem::{ApiError, Problem};
use crate::response::Rendered;
use crate::routes::customers::{by_id, page_limit};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_order))
        .routes(routes!(get_order))
        .routes(routes!(list_customer_orders))
}

/// Record an order for a customer given by `customer_id` or by `customer: {"external_id"}`.
///
/// `total` is a number or a decimal string (at least 0, at most 4 decimals) and comes back as a
/// number; `currency` is ISO 4217; `status` a short code (default `placed`); `placed_at`
/// defaults to now. `reference` need not be unique (use `Idempotency-Key` for safe retries).
#[utoipa::path(
    post, path = "/v1/orders", tag = "orders",
    request_body = OrderWrite,
    responses(
        (status = 201, description = "Created", body = Order, headers(("Location" = String))),
        (status = 422, description = "Invalid body, or no such customer (`unknown_customer`)", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn create_order(
    State(state): State<AppState>,
    WriteCaller(caller): WriteCaller,
    _: NoQuery,
    idempotency: Idempotency,
    StrictJson(write): StrictJson<OrderWrite>,
) -> Result<Response, ApiError> {
    let new = write.validate(Timestamp::now())?;
    let render = |order: &Order| created(order).to_stored();
    let result = state
        .store()
        .create_order(&new, &caller.scope(), idempotency.completion(&render))
        .await;
    let order = match result {
        Err(DomainError::NotFound) => {
            return Err(ApiError::field(
                new.customer_field,
                "unknown_customer",
                "no such customer",
            ));
        }
        other => other?,
    };
    idempotency.completed();
    Ok(created(&order).into_response())
}

fn created(order: &Order) -> Rendered {
    Rendered::serialize(StatusCode::CREATED, order)
        .header(LOCATION, format!("/v1/orders/{}", order.id))
}

/// Read an order.
#[utoipa::path(
    get, path = "/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "`ord_…`")),
    responses((status = 200, body = Order), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    let id: OrderId = id.parse().map_err(|_| ApiError::not_found())?;
    let order = state
        .store()
        .get_order(id, &caller.scope())
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Rendered::serialize(StatusCode::OK, &order).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct OrderListParams {
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of orders, oldest first.
#[derive(Serialize, ToSchema)]
pub(crate) struct OrderList {
    data: Vec<Order>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// List a customer's orders, oldest first, keyset-paginated.
#[utoipa::path(
    get, path = "/v1/customers/{id}/orders", tag = "orders",
    params(("id" = String, Path, description = "`cus_…`"), OrderListParams),
    responses(
        (status = 200, body = OrderList),
        (status = 404, body = Problem),
        (status = 422, body = Problem),
    ),
    security(("bearer" = []))
)]
async fn list_customer_orders(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    StrictQuery(params): StrictQuery<OrderListParams>,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    let limit = page_limit(params.limit)?;
    let after = params.cursor.as_deref().map(decode_cursor).transpose()?;
    let page = state
        .store()
        .customer_orders(&by_id(&id)?, &caller.scope(), after, limit)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let list = OrderList {
        data: page.items,
        next_cursor: page.next.map(encode_cursor),
    };
    Ok(Rendered::serialize(StatusCode::OK, &list).into_response())
}

/// The opaque cursor of an order list: the last order's id, base64url-encoded.
fn encode_cursor(id: OrderId) -> String {
    URL_SAFE_NO_PAD.encode(id.to_string())
}

fn decode_cursor(text: &str) -> Result<OrderId, ApiError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| {
            ApiError::field("cursor", "invalid_cursor", "not a cursor this API returned")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id = OrderId::new();
        assert_eq!(decode_cursor(&encode_cursor(id)).ok(), Some(id));
        assert!(decode_cursor("!!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("cus_01JD3Y6Q4X8K2M5N7P9R1T3V5W")).is_err());
    }
}
