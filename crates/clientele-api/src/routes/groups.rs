//! `/v1/groups`: customer groups and their hierarchy: upsert one (`PUT`), many in order
//! (`POST /v1/groups/sync`, a parent may be created earlier in the same batch), read, list and
//! delete (refused while the group has subgroups or members). Written with the `write` role,
//! read with `read`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use clientele_domain::group::{MAX_SYNC_GROUPS, is_valid_code};
use clientele_domain::{DomainError, Group, GroupResults, GroupWrite, Role, WriteOutcome};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, SharedWriteCaller};
use crate::extract::{JsonBytes, NoQuery, Path, StrictJson, StrictQuery, parse_json};
use crate::idempotency::Idempotency;
use crate::problem::{ApiError, ErrorCode, Problem};
use crate::response::Rendered;
use crate::routes::name_page::{NamePageParams, paged};
use crate::routes::sync::item_errors;
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_groups))
        .routes(routes!(sync_groups))
        .routes(routes!(put_group, get_group, delete_group))
}

/// A page of groups, by code.
#[derive(Serialize, ToSchema)]
pub(crate) struct GroupList {
    data: Vec<Group>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// The group or team code of a path that reads or deletes: a code that cannot exist names
/// nothing (404), without handing the database a value it may not accept.
pub(crate) fn existing_code(code: &str) -> Result<&str, ApiError> {
    if is_valid_code(code) {
        Ok(code)
    } else {
        Err(ApiError::not_found())
    }
}

/// The status of a written group or team: 201 created, else 200.
pub(crate) fn status_of(outcome: WriteOutcome) -> StatusCode {
    if outcome == WriteOutcome::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// Create or change a group: absent fields keep their value (on create: `subscribable` false,
/// the rest `null`), `null` clears. A `parent` must exist and must not make a cycle (422
/// `parent_cycle`).
#[utoipa::path(
    put, path = "/v1/groups/{code}", tag = "groups",
    params(("code" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$", description = "1 to 64 characters of `[A-Za-z0-9_.-]`")),
    request_body = GroupWrite,
    responses(
        (status = 201, description = "Created", body = Group, headers(("Location" = String))),
        (status = 200, description = "Updated or unchanged", body = Group),
        (status = 422, description = "Invalid code or field, unknown parent, or a cycle", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn put_group(
    State(state): State<AppState>,
    _caller: SharedWriteCaller,
    _: NoQuery,
    idempotency: Idempotency,
    Path(code): Path<String>,
    StrictJson(mut write): StrictJson<GroupWrite>,
) -> Result<Rendered, ApiError> {
    if write.code.as_ref().is_some_and(|c| *c != code) {
        return Err(ApiError::field(
            "code",
            "code_mismatch",
            "the body's code differs from the one in the path",
        ));
    }
    write.code = Some(code);
    let render = |results: &GroupResults| put_answer(results).to_stored();
    let results = state
        .store()
        .write_groups(&[Ok(write)], idempotency.completion(&render))
        .await?;
    idempotency.completed();
    Ok(put_answer(&results))
}

/// The answer to `PUT`, a batch of one: the group, or the problem of its one item.
fn put_answer(results: &GroupResults) -> Rendered {
    match results.first() {
        Some(Ok((outcome, group))) => {
            let rendered = Rendered::serialize(status_of(*outcome), group);
            if *outcome == WriteOutcome::Created {
                rendered.header(LOCATION, format!("/v1/groups/{}", group.code))
            } else {
                rendered
            }
        }
        Some(Err(error)) => ApiError::from(error).rendered(),
        None => ApiError::new(ErrorCode::Internal, "internal error").rendered(),
    }
}

/// Read a group.
#[utoipa::path(
    get, path = "/v1/groups/{code}", tag = "groups",
    params(("code" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$")),
    responses((status = 200, body = Group), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
async fn get_group(
    State(state): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(code): Path<String>,
) -> Result<Json<Group>, ApiError> {
    caller.require(Role::Read)?;
    state
        .store()
        .get_group(existing_code(&code)?)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

/// List groups by code, keyset-paginated (1000 per page unless `limit` says fewer).
#[utoipa::path(
    get, path = "/v1/groups", tag = "groups",
    params(NamePageParams),
    responses((status = 200, body = GroupList), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
async fn list_groups(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(params): StrictQuery<NamePageParams>,
) -> Result<Json<GroupList>, ApiError> {
    caller.require(Role::Read)?;
    let page = params.page()?;
    let groups = state.store().list_groups(&page).await?;
    let (data, next_cursor) = paged(groups, &page, |g| &g.code);
    Ok(Json(GroupList { data, next_cursor }))
}

/// Delete a group: 409 `group_has_subgroups` while it has subgroups, 409 `group_in_use` while
/// customers are members (customers are never rewritten behind the caller's back).
#[utoipa::path(
    delete, path = "/v1/groups/{code}", tag = "groups",
    params(("code" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$")),
    responses(
        (status = 204), (status = 404, body = Problem),
        (status = 409, description = "The group has subgroups, or members (codes: `group_has_subgroups`, `group_in_use`)", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn delete_group(
    State(state): State<AppState>,
    _caller: SharedWriteCaller,
    _: NoQuery,
    idempotency: Idempotency,
    Path(code): Path<String>,
) -> Result<StatusCode, ApiError> {
    let code = existing_code(&code)?;
    let render = |(): &()| Rendered::empty(StatusCode::NO_CONTENT).to_stored();
    state
        .store()
        .delete_group(code, idempotency.completion(&render))
        .await?;
    idempotency.completed();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
pub(crate) struct GroupSyncRequest<'a> {
    /// At most 1000 groups (each a `GroupWrite` with its `code`), applied in order.
    #[serde(borrow)]
    #[schema(value_type = Vec<GroupWrite>)]
    groups: Vec<&'a RawValue>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct GroupOutcome {
    index: usize,
    /// `created`, `updated`, `unchanged` or `failed`.
    status: &'static str,
    code: Option<String>,
    error: Option<Problem>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct GroupSummary {
    created: usize,
    updated: usize,
    unchanged: usize,
    failed: usize,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct GroupSyncResponse {
    results: Vec<GroupOutcome>,
    summary: GroupSummary,
}

/// Create or change many groups in order, with a result per item; one bad item fails alone.
#[utoipa::path(
    post, path = "/v1/groups/sync", tag = "groups",
    request_body = GroupSyncRequest,
    responses(
        (status = 200, body = GroupSyncResponse),
        (status = 413, description = "More than 1000 items (`too_many_items`)", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn sync_groups(
    State(state): State<AppState>,
    _caller: SharedWriteCaller,
    _: NoQuery,
    idempotency: Idempotency,
    JsonBytes(body): JsonBytes,
) -> Result<Rendered, ApiError> {
    let request: GroupSyncRequest<'_> = parse_json(&body)?;
    if request.groups.len() > MAX_SYNC_GROUPS {
        return Err(ApiError::new(
            ErrorCode::TooManyItems,
            format!("send at most {MAX_SYNC_GROUPS} groups per request"),
        ));
    }
    let items: Vec<_> = request
        .groups
        .iter()
        .map(|raw| parse_json::<GroupWrite>(raw.get().as_bytes()).map_err(item_errors))
        .collect();
    let codes: Vec<Option<String>> = items
        .iter()
        .map(|item| item.as_ref().ok().and_then(|w| w.code.clone()))
        .collect();
    let answer = |results: &GroupResults| {
        Rendered::serialize(StatusCode::OK, &sync_response(results, &codes))
    };
    let render = |results: &GroupResults| answer(results).to_stored();
    let results = state
        .store()
        .write_groups(&items, idempotency.completion(&render))
        .await?;
    idempotency.completed();
    Ok(answer(&results))
}

/// The per-item results of a group sync and their summary; `codes` are the items' codes.
fn sync_response(results: &GroupResults, codes: &[Option<String>]) -> GroupSyncResponse {
    let mut summary = GroupSummary {
        created: 0,
        updated: 0,
        unchanged: 0,
        failed: 0,
    };
    let results = results
        .iter()
        .zip(codes)
        .enumerate()
        .map(|(index, (result, code))| {
            let (status, error) = match result {
                Ok((WriteOutcome::Created, _)) => (("created", &mut summary.created), None),
                Ok((WriteOutcome::Updated, _)) => (("updated", &mut summary.updated), None),
                Ok((WriteOutcome::Unchanged, _)) => (("unchanged", &mut summary.unchanged), None),
                Err(error) => (("failed", &mut summary.failed), Some(item_problem(error))),
            };
            *status.1 += 1;
            GroupOutcome {
                index,
                status: status.0,
                code: code.clone(),
                error,
            }
        })
        .collect();
    GroupSyncResponse { results, summary }
}

fn item_problem(error: &DomainError) -> Problem {
    ApiError::from(error).problem()
}
