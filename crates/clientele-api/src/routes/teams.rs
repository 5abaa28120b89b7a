//! `/v1/teams`: the teams customers and API keys belong to. A team-restricted key sees only
//! customers of its teams, and only its own teams: any other is absent for it (404), and it
//! may not create or change one (403, whether the team exists or not, so it learns nothing of
//! other teams). Written with the `write` role, read with `read`; a team is deleted only when
//! no customer and no live API key belongs to it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use clientele_domain::group::check_code;
use clientele_domain::{Role, Team, TeamWrite, ValidationErrors, WriteOutcome};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, WriteCaller};
use crate::extract::{NoQuery, Path, StrictJson, StrictQuery};
use crate::idempotency::Idempotency;
use crate::problem::{ApiError, ErrorCode, Problem};
use crate::response::Rendered;
use crate::routes::groups::{existing_code, status_of};
use crate::routes::name_page::{NamePageParams, paged};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_teams))
        .routes(routes!(put_team, get_team, delete_team))
}

/// A page of teams, by code.
#[derive(Serialize, ToSchema)]
pub(crate) struct TeamList {
    data: Vec<Team>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// Create or rename a team: absent `name` keeps it, `null` clears it. A key restricted to
/// teams may rename only its own teams, and creates none.
#[utoipa::path(
    put, path = "/v1/teams/{code}", tag = "teams",
    params(("code" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$", description = "1 to 64 characters of `[A-Za-z0-9_.-]`")),
    request_body = TeamWrite,
    responses(
        (status = 201, description = "Created", body = Team, headers(("Location" = String))),
        (status = 200, description = "Updated or unchanged", body = Team),
        (status = 403, description = "The key's role is below `write`, or the key is restricted to teams and this is not one of them", body = Problem),
        (status = 422, body = Problem),
    ),
    security(("bearer" = []))
)]
async fn put_team(
    State(state): State<AppState>,
    WriteCaller(caller): WriteCaller,
    _: NoQuery,
    idempotency: Idempotency,
    Path(code): Path<String>,
    StrictJson(write): StrictJson<TeamWrite>,
) -> Result<Rendered, ApiError> {
    // Refused before the store reads it: PostgreSQL text cannot hold every string a path can.
    let mut errors = ValidationErrors::default();
    check_code(&mut errors, "code", &code);
    errors.into_result()?;
    if !caller.key.sees_team(&code) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a key restricted to teams creates and changes only its own teams",
        ));
    }
    let render = |result: &(WriteOutcome, Team)| written(result).to_stored();
    let result = state
        .store()
        .write_team(&code, &write, idempotency.completion(&render))
        .await?;
    idempotency.completed();
    Ok(written(&result))
}

/// The answer to a team write: 201 with `Location` when created, else 200.
fn written((outcome, team): &(WriteOutcome, Team)) -> Rendered {
    let rendered = Rendered::serialize(status_of(*outcome), team);
    if *outcome == WriteOutcome::Created {
        rendered.header(LOCATION, format!("/v1/teams/{}", team.code))
    } else {
        rendered
    }
}

/// Read a team.
#[utoipa::path(
    get, path = "/v1/teams/{code}", tag = "teams",
    params(("code" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$")),
    responses((status = 200, body = Team), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
async fn get_team(
    State(state): State<AppState>,
    caller: Caller,
    _: NoQuery,
    Path(code): Path<String>,
) -> Result<Json<Team>, ApiError> {
    caller.require(Role::Read)?;
    let code = existing_code(&code)?;
    if !caller.key.sees_team(code) {
        return Err(ApiError::not_found());
    }
    state
        .store()
        .get_team(code)
        .await?
        .map(Json)
        .ok_or_else(ApiError::not_found)
}

/// List teams by code, keyset-paginated (1000 per page unless `limit` says fewer).
#[utoipa::path(
    get, path = "/v1/teams", tag = "teams",
    params(NamePageParams),
    responses((status = 200, body = TeamList), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
async fn list_teams(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(params): StrictQuery<NamePageParams>,
) -> Result<Json<TeamList>, ApiError> {
    caller.require(Role::Read)?;
    let page = params.page()?;
    // A restricted key sees its own teams only.
    let among = (!caller.key.teams.is_empty()).then_some(caller.key.teams.as_slice());
    let visible = state.store().list_teams(&page, among).await?;
    let (data, next_cursor) = paged(visible, &page, |t| &t.code);
    Ok(Json(TeamList { data, next_cursor }))
}

/// Delete a team: 409 `team_in_use` while customers or live API keys belong to it.
#[utoipa::path(
    delete, path = "/v1/teams/{code}", tag = "teams",
    params(("code" = String, Path, pattern = r"^[A-Za-z0-9_.-]{1,64}$")),
    responses(
        (status = 204), (status = 404, body = Problem),
        (status = 409, description = "Customers or API keys still belong to the team (codes: `team_in_use`)", body = Problem),
    ),
    security(("bearer" = []))
)]
async fn delete_team(
    State(state): State<AppState>,
    WriteCaller(caller): WriteCaller,
    _: NoQuery,
    idempotency: Idempotency,
    Path(code): Path<String>,
) -> Result<StatusCode, ApiError> {
    let code = existing_code(&code)?;
    if !caller.key.sees_team(code) {
        return Err(ApiError::not_found());
    }
    let render = |(): &()| Rendered::empty(StatusCode::NO_CONTENT).to_stored();
    state
        .store()
        .delete_team(code, idempotency.completion(&render))
        .await?;
    idempotency.completed();
    Ok(StatusCode::NO_CONTENT)
}
