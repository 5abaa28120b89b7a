//! `/v1/customers`: create, upsert, read, patch, delete (by id or by a unique key), list, and
//! password checks.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::{ETAG, LOCATION};
use axum::response::{IntoResponse, Response};
use clientele_domain::{
    Customer, CustomerDoc, CustomerId, CustomerKey, CustomerWrite, ListQuery, Locator, Patch,
    Precondition, Role, Scope, SortOrder, WriteCommand, WriteOutcome, WriteTarget,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, WriteCaller};
use crate::cursor;
use crate::extract::{IfMatch, NoQuery, Path, StrictJson, StrictQuery, etag};
use crate::idempotency::Idempotency;
use crate::password;
use crate::problem::{ApiError, Problem};
use crate::response::Rendered;
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_customer, list_customers))
        .routes(routes!(get_customer, patch_customer, delete_customer))
        .routes(routes!(
            get_customer_by_key,
            put_customer_by_key,
            patch_customer_by_key,
            delete_customer_by_key
        ))
        .routes(routes!(verify_password))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct CreateParams {
    /// Makes the create an upsert on this key: the body must carry it.
    upsert: Option<CustomerKey>,
}

/// Create a customer, or upsert one on a unique key.
#[utoipa::path(
    post, path = "/v1/customers", tag = "customers",
    params(CreateParams),
    request_body = CustomerWrite,
    responses(
        (status = 201, description = "Created", body = Customer,
         headers(("Location" = String), ("ETag" = String))),
        (status = 200, description = "Upsert: updated or unchanged", body = Customer),
        (status = 409, description = "Another customer has a unique key of the body (codes: `duplicate_key`)", body = Problem),
        (status = 422, description = "Invalid body", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn create_customer(
    State(state): State<AppState>,
    WriteCaller(caller): WriteCaller,
    idempotency: Idempotency,
    StrictQuery(params): StrictQuery<CreateParams>,
    StrictJson(write): StrictJson<CustomerWrite>,
) -> Result<Response, ApiError> {
    let target = match params.upsert {
        Some(key) => WriteTarget::Upsert(key, write.required_key(key)?.to_owned()),
        None => WriteTarget::Create,
    };
    write_customer(&state, &caller, &idempotency, target, write, None).await
}

/// Read a customer by its hub id.
#[utoipa::path(
    get, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path, description = "`cus_…`")),
    responses(
        (status = 200, body = Customer, headers(("ETag" = String))),
        (status = 404, body = Problem),
    ),
    security(("bearer" = []))
)]
async fn get_customer(
    State(state): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    read_customer(&state, &caller, by_id(&id)?).await
}

/// Change some fields of a customer: absent fields stay, `null` clears.
#[utoipa::path(
    patch, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header, description = "`\"<version>\"`")),
    request_body = CustomerWrite,
    responses(
        (status = 200, body = Customer),
        (status = 404, body = Problem),
        (status = 409, description = "Another customer has a unique key of the body (codes: `duplicate_key`)", body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem),
    ),
    security(("bearer" = []))
)]
async fn patch_customer(
    State(state): State<AppState>,
    WriteCaller(caller): WriteCaller,
    _: NoQuery,
    idempotency: Idempotency,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
    StrictJson(write): StrictJson<CustomerWrite>,
) -> Result<Response, ApiError> {
    write_customer(
        &state,
        &caller,
        &idempotency,
        WriteTarget::Update(by_id(&id)?),
        write,
        expected,
    )
    .await
}

/// Erase a customer.
///
/// An erasure: the customer and its memberships are deleted, the change feed records a `deleted`
/// change, and the documents of the customer's earlier changes leave the feed (their `customer`
/// becomes `null`).
#[utoipa::path(
    delete, path = "/v1/customers/{id}", tag = "customers",
    params(("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, description = "Orders reference this customer (codes: `customer_has_orders`)", body = Problem), (status = 412, body = Problem)),
    security(("bearer" = []))
)]
async fn delete_customer(
    State(state): State<AppState>,
    WriteCaller(caller): WriteCaller,
    _: NoQuery,
    idempotency: Idempotency,
    Path(id): Path<String>,
    IfMatch(expected): IfMatch,
) -> Result<StatusCode, ApiError> {
    delete(&state, &caller, &idempotency, &by_id(&id)?, expected).await
}

/// Read a customer by `external_id`, `email` or `username`.
#[utoipa::path(
    get, path = "/v1/customers/{key}/{value}", tag = "customers",
    params(("key" = CustomerKey, Path), ("value" = String, Path, description = "URL-encoded")),
    responses((status = 200, body = Customer), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
async fn get_customer_by_key(
    State(state): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path((key, value)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    read_customer(&state, &caller, lookup_by_key(&key, value)?).await
}

/// Upsert the customer with this key value: 201 created, 200 updated or unchanged.
#[utoipa::path(
    put, path = "/v1/customers/{key}/{value}", tag = "customers",
    params(
        ("key" = CustomerKey, Path), ("value" = String, Path),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"` (`\"0\"`: only if there is no such customer yet), or `*`: only if there is one, so the upsert never creates; otherwise 412 `version_conflict`"),
    ),
    request_body = CustomerWrite,
    responses(
        (status = 201, body = Customer), (status = 200, body = Customer),
        (status = 404, description = "`{key}` is not a unique key (`route_not_found`), or the customer is outside the API key's teams", body = Problem),
        (status = 409, description = "Another customer has a unique key of the body (codes: `duplicate_key`)", body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem),
    ),
    security(("bearer" = []))
)]
async fn put_customer_by_key(
    State(state): State<AppState>,
    WriteCaller(caller): WriteCaller,
    _: NoQuery,
    idempotency: Idempotency,
    Path((key, value)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
    StrictJson(write): StrictJson<CustomerWrite>,
) -> Result<Response, ApiError> {
    let KeyPath(key, value) = by_key(&key, value)?;
    write.bind_key(key, &value)?;
    write_customer(
        &state,
        &caller,
        &idempotency,
        WriteTarget::Upsert(key, value),
        write,
        expected,
    )
    .await
}

/// Change some fields of the customer with this key value.
#[utoipa::path(
    patch, path = "/v1/customers/{key}/{value}", tag = "customers",
    params(("key" = CustomerKey, Path), ("value" = String, Path), ("If-Match" = Option<String>, Header)),
    request_body = CustomerWrite,
    responses(
        (status = 200, body = Customer), (status = 404, body = Problem),
        (status = 409, description = "Another customer has a unique key of the body (codes: `duplicate_key`)", body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem),
    ),
    security(("bearer" = []))
)]
async fn patch_customer_by_key(
    State(state): State<AppState>,
    WriteCaller(caller): WriteCaller,
    _: NoQuery,
    idempotency: Idempotency,
    Path((key, value)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
    StrictJson(write): StrictJson<CustomerWrite>,
) -> Result<Response, ApiError> {
    let locator = lookup_by_key(&key, value)?;
    write_customer(
        &state,
        &caller,
        &idempotency,
        WriteTarget::Update(locator),
        write,
        expected,
    )
    .await
}

/// Erase the customer with this key value.
///
/// An erasure: the customer and its memberships are deleted, the change feed records a `deleted`
/// change, and the documents of the customer's earlier changes leave the feed (their `customer`
/// becomes `null`).
#[utoipa::path(
    delete, path = "/v1/customers/{key}/{value}", tag = "customers",
    params(("key" = CustomerKey, Path), ("value" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, description = "Orders reference this customer (codes: `customer_has_orders`)", body = Problem), (status = 412, body = Problem)),
    security(("bearer" = []))
)]
async fn delete_customer_by_key(
    State(state): State<AppState>,
    WriteCaller(caller): WriteCaller,
    _: NoQuery,
    idempotency: Idempotency,
    Path((key, value)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
) -> Result<StatusCode, ApiError> {
    let locator = lookup_by_key(&key, value)?;
    delete(&state, &caller, &idempotency, &locator, expected).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// `created_at` (default), `-created_at`, `updated_at`, `-updated_at` or `last_name`.
    #[param(pattern = r"^(-?created_at|-?updated_at|last_name)$")]
    sort: Option<String>,
    /// RFC 3339 timestamp; customers created at or after it.
    pub(crate) created_after: Option<String>,
    /// RFC 3339 timestamp; customers created before it.
    pub(crate) created_before: Option<String>,
    /// RFC 3339 timestamp; customers last changed at or after it.
    pub(crate) updated_after: Option<String>,
    /// RFC 3339 timestamp; customers last changed before it.
    pub(crate) updated_before: Option<String>,
    /// Exactly this email, compared case-insensitively.
    pub(crate) email: Option<String>,
    /// Exactly this phone number, as `phone` or `phone_alt`.
    pub(crate) phone: Option<String>,
    /// Exactly this external id.
    pub(crate) external_id: Option<String>,
    /// `true`, `false` or `any` (default).
    pub(crate) archived: Option<String>,
    /// Case-insensitive prefix of a name (first, last, display; or one of their words), the
    /// email, a phone number, the company or the external id.
    pub(crate) q: Option<String>,
    /// Only customers with this tag.
    pub(crate) tag: Option<String>,
    /// Only members of this group (code).
    pub(crate) group: Option<String>,
    /// With `group`: members of its subgroups, at any depth, too.
    pub(crate) include_subgroups: Option<bool>,
    /// Only customers of this team (code).
    pub(crate) team: Option<String>,
}

/// A page of customers.
#[derive(Serialize, ToSchema)]
pub(crate) struct CustomerPage {
    data: Vec<Customer>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
    /// The change-feed position taken before this page was read (also in the
    /// `Clientele-Feed-Position` header): to resync, list every page, then follow
    /// `GET /v1/changes?after=` the first page's position; no change is missed.
    feed_position: i64,
}

/// The response header carrying a list's change-feed position.
pub(crate) const FEED_POSITION: axum::http::HeaderName =
    axum::http::HeaderName::from_static("clientele-feed-position");

pub(crate) const DEFAULT_LIMIT: u32 = 100;
pub(crate) const MAX_LIMIT: u32 = 1000;

/// A list's `limit`: [`DEFAULT_LIMIT`] when absent, 1 to [`MAX_LIMIT`] when given.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::field(
            "limit",
            "out_of_range",
            format!("1 to {MAX_LIMIT}"),
        ))
    }
}

/// List customers, keyset-paginated.
#[utoipa::path(
    get, path = "/v1/customers", tag = "customers",
    params(ListParams),
    responses(
        (status = 200, body = CustomerPage, headers(("Clientele-Feed-Position" = i64))),
        (status = 422, body = Problem),
    ),
    security(("bearer" = []))
)]
async fn list_customers(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(params): StrictQuery<ListParams>,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    let limit = page_limit(params.limit)?;
    let sort = match params.sort.as_deref() {
        None => SortOrder::default(),
        Some(name) => SortOrder::parse(name).ok_or_else(|| {
            ApiError::field(
                "sort",
                "invalid_sort",
                "one of created_at, -created_at, updated_at, -updated_at, last_name",
            )
        })?,
    };
    for (field, value) in [
        ("tag", &params.tag),
        ("group", &params.group),
        ("team", &params.team),
    ] {
        // No stored tag or code holds control characters (and PostgreSQL text cannot hold NUL).
        if value
            .as_deref()
            .is_some_and(|v| v.chars().any(char::is_control) || v.len() > 1000)
        {
            return Err(ApiError::field(
                field,
                "invalid_parameter",
                "not a tag or code",
            ));
        }
    }
    let after = params
        .cursor
        .as_deref()
        .map(|c| cursor::decode(c, sort))
        .transpose()?;
    // Taken before the page is read: every change after it reaches the feed from this
    // position, every change up to it is in the list.
    let feed_position = state.store().feed_position().await?;
    let page = state
        .store()
        .list_customers(&ListQuery {
            limit,
            sort,
            after,
            filter: params.filter()?,
            scope: caller.scope(),
        })
        .await?;
    let next_cursor = page.next.as_ref().map(|c| cursor::encode(c, sort));
    let mut items = page.items;
    let scope = caller.scope();
    if scope != Scope::All {
        // The store lists only the customers the scope admits; what is shown of each is the
        // domain's rule.
        let listed = std::mem::take(&mut items);
        for mut doc in listed {
            if let Some(shown) = scope.shown_document(doc.json)? {
                doc.json = shown;
                items.push(doc);
            }
        }
    }
    Ok(Rendered::json(
        StatusCode::OK,
        page_json(&items, next_cursor.as_deref(), feed_position),
    )
    .header(FEED_POSITION, feed_position.to_string())
    .into_response())
}

/// `{"data": [...], "next_cursor": ...}` from stored documents, without re-encoding them.
fn page_json(items: &[CustomerDoc], next_cursor: Option<&str>, feed_position: i64) -> String {
    let size = items.iter().map(|d| d.json.len() + 1).sum::<usize>() + 64;
    let mut body = String::with_capacity(size);
    body.push_str("{\"data\":[");
    for (i, doc) in items.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&doc.json);
    }
    body.push_str("],\"next_cursor\":");
    match next_cursor {
        Some(cursor) => body.push_str(&serde_json::Value::from(cursor).to_string()),
        None => body.push_str("null"),
    }
    body.push_str(",\"feed_position\":");
    body.push_str(&feed_position.to_string());
    body.push('}');
    body
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct PasswordCheck {
    password: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct PasswordVerdict {
    valid: bool,
}

/// Check a customer's password (a web shop's login); `valid` is false when none is set.
#[utoipa::path(
    post, path = "/v1/customers/{id}/verify-password", tag = "customers",
    params(("id" = String, Path)),
    request_body = PasswordCheck,
    responses((status = 200, body = PasswordVerdict), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
async fn verify_password(
    State(state): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(id): Path<String>,
    StrictJson(check): StrictJson<PasswordCheck>,
) -> Result<Json<PasswordVerdict>, ApiError> {
    caller.require(Role::Read)?;
    let locator = by_id(&id)?;
    if caller.scope() != Scope::All {
        visible_customer(&state, &caller, &locator).await?;
    }
    let (_, hash) = state
        .store()
        .password_hash(&locator)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let valid = match hash {
        Some(hash) => {
            state.rate_limiter().charge_passwords(caller.key.id, 1)?;
            password::verify_password(check.password, hash).await
        }
        None => false,
    };
    Ok(Json(PasswordVerdict { valid }))
}

/// Hashes the password (off the async threads), runs the write, and answers with the customer;
/// an idempotency key is completed in the write's own transaction.
async fn write_customer(
    state: &AppState,
    caller: &Caller,
    idempotency: &Idempotency,
    target: WriteTarget,
    mut write: CustomerWrite,
    precondition: Option<Precondition>,
) -> Result<Response, ApiError> {
    write.reject_sync_directives()?;
    let password = std::mem::take(&mut write.password);
    if matches!(password, Patch::Value(_)) {
        state.rate_limiter().charge_passwords(caller.key.id, 1)?;
    }
    let command = WriteCommand {
        target,
        write,
        password_hash: hash_password(password, "password").await?,
        precondition,
        scope: caller.scope(),
    };
    let scope = caller.scope();
    let render = |result: &(WriteOutcome, Customer)| written(result, &scope).to_stored();
    let result = state
        .store()
        .write_customer(command, idempotency.completion(&render))
        .await?;
    idempotency.completed();
    Ok(written(&result, &scope).into_response())
}

/// Checks and hashes a password given in a write (`field` names it in errors).
pub(crate) async fn hash_password(
    password: Patch<String>,
    field: &str,
) -> Result<Patch<String>, ApiError> {
    Ok(match password {
        Patch::Value(plain) => {
            password::check_password(&plain)
                .map_err(|reason| ApiError::field(field, "weak_password", reason))?;
            let hash = password::hash_password(plain).await.map_err(|e| {
                tracing::error!(error = %e, "password hashing failed");
                ApiError::new(crate::problem::ErrorCode::Internal, "internal error")
            })?;
            Patch::Value(hash)
        }
        Patch::Null => Patch::Null,
        Patch::Absent => Patch::Absent,
    })
}

/// The answer to a customer write: 201 with `Location` when created, else 200; `ETag` always.
/// The customer as the caller's `scope` shows it.
fn written((outcome, customer): &(WriteOutcome, Customer), scope: &Scope) -> Rendered {
    let status = match outcome {
        WriteOutcome::Created => StatusCode::CREATED,
        WriteOutcome::Updated | WriteOutcome::Unchanged => StatusCode::OK,
    };
    let rendered = Rendered::serialize(status, scope.shown(customer).as_ref())
        .header(ETAG, etag(customer.version));
    if *outcome == WriteOutcome::Created {
        rendered.header(LOCATION, format!("/v1/customers/{}", customer.id))
    } else {
        rendered
    }
}

async fn delete(
    state: &AppState,
    caller: &Caller,
    idempotency: &Idempotency,
    locator: &Locator,
    precondition: Option<Precondition>,
) -> Result<StatusCode, ApiError> {
    let render = |(): &()| Rendered::empty(StatusCode::NO_CONTENT).to_stored();
    state
        .store()
        .delete_customer(
            locator,
            &caller.scope(),
            precondition,
            idempotency.completion(&render),
        )
        .await?;
    idempotency.completed();
    Ok(StatusCode::NO_CONTENT)
}

async fn read_customer(
    state: &AppState,
    caller: &Caller,
    locator: Locator,
) -> Result<Response, ApiError> {
    let doc = visible_customer(state, caller, &locator).await?;
    Ok(Rendered::json(StatusCode::OK, doc.json)
        .header(ETAG, etag(doc.version))
        .into_response())
}

/// The stored customer, if the caller may see it, as its scope shows it: one outside a
/// team-restricted key's teams is 404 like a missing one.
pub(crate) async fn visible_customer(
    state: &AppState,
    caller: &Caller,
    locator: &Locator,
) -> Result<CustomerDoc, ApiError> {
    let mut doc = state
        .store()
        .get_customer(locator)
        .await?
        .ok_or_else(ApiError::not_found)?;
    doc.json = caller
        .scope()
        .shown_document(doc.json)?
        .ok_or_else(ApiError::not_found)?;
    Ok(doc)
}

/// An id that cannot be a customer id names no customer: 404, like any unknown id.
pub(crate) fn by_id(id: &str) -> Result<Locator, ApiError> {
    id.parse::<CustomerId>()
        .map(Locator::Id)
        .map_err(|_| ApiError::not_found())
}

struct KeyPath(CustomerKey, String);

impl From<KeyPath> for Locator {
    fn from(KeyPath(key, value): KeyPath) -> Self {
        Locator::Key(key, value)
    }
}

/// The customer a key path names, for reads, updates and deletes. A value with control
/// characters is no stored key (writes refuse them), so it names no customer: 404, without
/// handing the database a value it may not accept (PostgreSQL text cannot hold NUL).
fn lookup_by_key(key: &str, value: String) -> Result<Locator, ApiError> {
    let path = by_key(key, value)?;
    if path.1.chars().any(char::is_control) {
        return Err(ApiError::not_found());
    }
    Ok(path.into())
}

fn by_key(key: &str, value: String) -> Result<KeyPath, ApiError> {
    let key = key.parse::<CustomerKey>().map_err(|()| {
        ApiError::new(
            crate::problem::ErrorCode::RouteNotFound,
            "address customers by external_id, email or username",
        )
    })?;
    Ok(KeyPath(key, value))
}
