//! `POST /v1/customers/sync`: a backend's batch of customers, each created, updated or deleted by
//! the backend's own key, with a result per item. Each item is parsed on its own, so one bad
//! item fails alone.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clientele_domain::sync::{
    ItemResult, ItemStatus, MAX_ITEMS, SyncBatch, SyncCommand, SyncItem, SyncReport,
};
use clientele_domain::{CustomerKey, CustomerWrite, Patch, Role, ValidationErrors};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::extract::{JsonBytes, NoQuery, parse_json};
use crate::idempotency::Idempotency;
use crate::problem::{ApiError, ErrorCode, Problem};
use crate::response::Rendered;
use crate::routes::customers::hash_password;
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(sync_customers))
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct SyncRequest<'a> {
    /// The key that identifies each item's customer.
    key: CustomerKey,
    /// All items apply, or none does (422 naming the failures).
    #[serde(default)]
    atomic: bool,
    /// At most 1000 items, applied in order.
    /// Borrowed from the request body: each item is parsed on its own, without a copy.
    #[serde(borrow)]
    #[schema(value_type = Vec<SyncItemSchema>)]
    customers: Vec<&'a RawValue>,
}

/// A sync item: a customer body (see `CustomerWrite`) identified by its `key` field.
// Only documents the item: items are parsed one by one from the raw body. `Deserialize` is derived
// for `flatten`, which makes the customer's fields the item's own, as they are on the wire.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)]
pub(crate) struct SyncItemSchema {
    #[serde(flatten)]
    customer: CustomerWrite,
    /// The current value of the key, when the item changes the key itself.
    r#match: Option<String>,
    /// `true` deletes the customer.
    delete: Option<bool>,
    /// The item applies only to this version (else `version_conflict`).
    expected_version: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ItemOutcome {
    index: usize,
    /// `created`, `updated`, `unchanged`, `deleted` or `failed`.
    status: &'static str,
    id: Option<String>,
    version: Option<i64>,
    error: Option<Problem>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct Summary {
    created: usize,
    updated: usize,
    unchanged: usize,
    deleted: usize,
    failed: usize,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct SyncResponse {
    results: Vec<ItemOutcome>,
    summary: Summary,
}

/// Create, update or delete many customers by a key, with a result per item.
#[utoipa::path(
    post, path = "/v1/customers/sync", tag = "customers",
    request_body = SyncRequest,
    responses(
        (status = 200, description = "Applied; failed items are named in `results`", body = SyncResponse),
        (status = 413, description = "More than 1000 items (`too_many_items`)", body = Problem),
        (status = 422, description = "Atomic and an item failed: nothing applied (`sync_failed`, with `results` and `summary`)", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn sync_customers(
    State(state): State<AppState>,
    caller: Caller,
    _: NoQuery,
    idempotency: Idempotency,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    caller.require(Role::Write)?;
    let request: SyncRequest<'_> = parse_json(&body)?;
    if request.customers.len() > MAX_ITEMS {
        return Err(ApiError::new(
            ErrorCode::TooManyItems,
            format!(
                "{} items; send at most {MAX_ITEMS} per request",
                request.customers.len()
            ),
        ));
    }
    let batch = SyncBatch {
        key: request.key,
        atomic: request.atomic,
        items: parse_items(&state, &caller, request.customers).await?,
        scope: caller.scope(),
    };
    let render = |report: &SyncReport| rendered(report).to_stored();
    let report = state
        .store()
        .sync_customers(&batch, idempotency.completion(&render))
        .await?;
    if report.applied {
        idempotency.completed();
    }
    Ok(rendered(&report).into_response())
}

/// Parses each item on its own; passwords are charged to the caller's rate budget, then
/// hashed two at a time (Argon2 is CPU- and memory-bound; `password` bounds how many run at once
/// in the whole process).
async fn parse_items(
    state: &AppState,
    caller: &Caller,
    raw: Vec<&RawValue>,
) -> Result<Vec<SyncItem>, ApiError> {
    let parsed: Vec<Result<CustomerWrite, ApiError>> = raw
        .into_iter()
        .map(|item| parse_json::<CustomerWrite>(item.get().as_bytes()))
        .collect();
    let passwords = parsed
        .iter()
        .filter(|write| matches!(write, Ok(write) if matches!(write.password, Patch::Value(_))))
        .count();
    state
        .rate_limiter()
        .charge_passwords(caller.key.id, passwords)?;
    let hashed = parsed.into_iter().map(|parsed| async move {
        let mut write = match parsed {
            Ok(write) => write,
            Err(error) => return Ok(SyncItem::Invalid(item_errors(error))),
        };
        let password = std::mem::take(&mut write.password);
        let password_hash = match hash_password(password, "password").await {
            Ok(hash) => hash,
            Err(error) if error.code == ErrorCode::ValidationFailed => {
                return Ok(SyncItem::Invalid(item_errors(error)));
            }
            Err(error) => return Err(error),
        };
        Ok(SyncItem::Write(Box::new(SyncCommand {
            write,
            password_hash,
        })))
    });
    futures::stream::iter(hashed)
        .buffered(2)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

pub(crate) fn item_errors(error: ApiError) -> ValidationErrors {
    if error.errors.is_empty() {
        ValidationErrors::single("body", "invalid_type", error.detail)
    } else {
        ValidationErrors(error.errors)
    }
}

/// 200 with per-item results, or the 422 problem of an atomic batch that applied nothing.
fn rendered(report: &SyncReport) -> Rendered {
    let body = SyncResponse {
        results: report.results.iter().enumerate().map(outcome).collect(),
        summary: Summary {
            created: report.count(ItemStatus::Created),
            updated: report.count(ItemStatus::Updated),
            unchanged: report.count(ItemStatus::Unchanged),
            deleted: report.count(ItemStatus::Deleted),
            failed: report.count(ItemStatus::Failed),
        },
    };
    if report.applied {
        return Rendered::serialize(StatusCode::OK, &body);
    }
    #[derive(Serialize)]
    struct FailedSync {
        #[serde(flatten)]
        problem: Problem,
        results: Vec<ItemOutcome>,
        summary: Summary,
    }
    let failed = body.summary.failed;
    let problem = ApiError::new(
        ErrorCode::SyncFailed,
        format!(
            "{failed} of {} items failed; nothing was applied",
            report.results.len()
        ),
    )
    .problem();
    let mut rendered = Rendered::serialize(
        StatusCode::UNPROCESSABLE_ENTITY,
        &FailedSync {
            problem,
            results: body.results,
            summary: body.summary,
        },
    );
    rendered.content_type = "application/problem+json";
    rendered
}

fn outcome((index, result): (usize, &ItemResult)) -> ItemOutcome {
    ItemOutcome {
        index,
        status: result.status.as_str(),
        id: result.id.map(|id| id.to_string()),
        version: result.version,
        error: result.error.as_ref().map(|e| ApiError::from(e).problem()),
    }
}
