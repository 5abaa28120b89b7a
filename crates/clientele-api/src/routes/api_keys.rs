//! `/v1/api-keys`: admins create, list and revoke keys. A secret is shown once, at creation.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use clientele_domain::group::is_valid_code;
use clientele_domain::{ApiKey, ApiKeyId, DomainError, Role, ValidationErrors};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AdminCaller, Caller, new_api_key};
use crate::extract::{NoQuery, Path, StrictJson, StrictQuery};
use crate::idempotency::{Idempotency, sealed};
use crate::problem::{ApiError, Problem};
use crate::response::Rendered;
use crate::routes::name_page::{NamePageParams, paged, visible_page};
use crate::secrets::generate_secret;
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(revoke_api_key))
}

/// Most teams one key may be restricted to.
const MAX_KEY_TEAMS: usize = 100;

#[derive(Deserialize, ToSchema)]
pub(crate) struct NewKeyRequest {
    name: String,
    role: Role,
    /// Restricts the key to customers of these (existing) teams, at most 100: other customers
    /// do not exist for it (404), customers it creates without `teams` get these. An admin key
    /// restricted to teams creates only keys restricted to some of its own teams (another team
    /// is `unknown_team` for it), and a key it creates without `teams` gets its teams.
    #[serde(default)]
    teams: Vec<String>,
}

/// A key as listed; the secret is never shown again after creation.
#[derive(Serialize, ToSchema)]
pub(crate) struct KeyView {
    id: String,
    name: String,
    role: Role,
    teams: Vec<String>,
    created_at: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct CreatedKey {
    id: String,
    /// The bearer secret (and the HMAC secret for signed requests). Shown this once.
    secret: String,
    name: String,
    role: Role,
    teams: Vec<String>,
    created_at: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct KeyList {
    data: Vec<KeyView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

impl From<ApiKey> for KeyView {
    fn from(key: ApiKey) -> Self {
        KeyView {
            id: key.id.to_string(),
            name: key.name,
            role: key.role,
            teams: key.teams,
            created_at: key.created_at.to_string(),
        }
    }
}

/// Create an API key (admin).
#[utoipa::path(
    post, path = "/v1/api-keys", tag = "api-keys",
    request_body = NewKeyRequest,
    responses((status = 201, body = CreatedKey), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
async fn create_api_key(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    _: NoQuery,
    idempotency: Idempotency,
    StrictJson(mut request): StrictJson<NewKeyRequest>,
) -> Result<Rendered, ApiError> {
    if request.teams.is_empty() {
        request.teams.clone_from(&caller.key.teams);
    }
    let mut errors = ValidationErrors::default();
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        errors.push(
            "name",
            "invalid_name",
            "1 to 200 characters, no control characters",
        );
    }
    if request.teams.len() > MAX_KEY_TEAMS {
        errors.push(
            "teams",
            "too_many",
            format!("at most {MAX_KEY_TEAMS} teams"),
        );
    }
    unknown_teams(&state, &caller, &request.teams, &mut errors).await?;
    errors.into_result()?;
    let mut teams = request.teams.clone();
    teams.sort_unstable();
    teams.dedup();
    let secret = generate_secret();
    let new = new_api_key(
        state.master_key(),
        &secret,
        name.to_owned(),
        request.role,
        teams,
    );
    let view = KeyView::from(new.key.clone());
    let created = Rendered::serialize(
        StatusCode::CREATED,
        &CreatedKey {
            id: view.id,
            secret,
            name: view.name,
            role: view.role,
            teams: view.teams,
            created_at: view.created_at,
        },
    );
    // The body holds the secret: an idempotent replay keeps it only encrypted, and it is
    // recorded in the transaction that stores the key.
    let replay = sealed(&state, created.to_stored());
    let render = |(): &()| replay.clone();
    match state
        .store()
        .insert_api_key(&new, idempotency.completion(&render))
        .await
    {
        Ok(()) => {}
        // A team was deleted since the check above: refused as that check would have.
        Err(DomainError::Validation(refused)) => {
            let mut errors = ValidationErrors::default();
            unknown_teams(&state, &caller, &request.teams, &mut errors).await?;
            return Err(if errors.is_empty() { refused } else { errors }.into());
        }
        Err(error) => return Err(error.into()),
    }
    idempotency.completed();
    Ok(created)
}

/// Names each requested team that does not exist for the caller (`teams[i]`, `unknown_team`):
/// one that does not exist, or, for an admin key restricted to teams, one not among its own
/// (a foreign team and a missing one look alike, as for customers).
async fn unknown_teams(
    state: &AppState,
    caller: &Caller,
    requested: &[String],
    errors: &mut ValidationErrors,
) -> Result<(), ApiError> {
    let codes: Vec<String> = requested
        .iter()
        .filter(|code| is_valid_code(code))
        .cloned()
        .collect();
    let known = state.store().known_codes(&[], &codes).await?;
    for (i, team) in requested.iter().enumerate() {
        let own = caller.key.manages_keys_of(std::slice::from_ref(team));
        if !own || !known.teams.contains(team) {
            errors.push(
                format!("teams[{i}]"),
                "unknown_team",
                format!("there is no team {team:?}"),
            );
        }
    }
    Ok(())
}

/// List the live API keys in id order, keyset-paginated (1000 per page unless `limit` says
/// fewer; admin). An admin key restricted to teams sees only the keys restricted to some of its
/// own teams.
#[utoipa::path(
    get, path = "/v1/api-keys", tag = "api-keys",
    params(NamePageParams),
    responses((status = 200, body = KeyList), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
async fn list_api_keys(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    StrictQuery(params): StrictQuery<NamePageParams>,
) -> Result<Json<KeyList>, ApiError> {
    let page = params.page()?;
    let store = state.store();
    let keys = visible_page(
        &page,
        |scan| async move { store.list_api_keys(&scan).await },
        |key: &ApiKey| caller.key.manages_keys_of(&key.teams),
        |key| key.id.to_string(),
    )
    .await?;
    let visible: Vec<KeyView> = keys.into_iter().map(KeyView::from).collect();
    let (data, next_cursor) = paged(visible, &page, |key| &key.id);
    Ok(Json(KeyList { data, next_cursor }))
}

/// Revoke an API key at once (admin; a key outside a restricted admin key's teams does not
/// exist for it: 404).
#[utoipa::path(
    delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = String, Path, description = "`key_…`")),
    responses((status = 204), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
async fn revoke_api_key(
    State(state): State<AppState>,
    AdminCaller(caller): AdminCaller,
    _: NoQuery,
    idempotency: Idempotency,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id: ApiKeyId = id.parse().map_err(|_| ApiError::not_found())?;
    if !caller.key.teams.is_empty() {
        let target = state.store().api_key_by_id(id).await?;
        if !target.is_some_and(|key| caller.key.manages_keys_of(&key.teams)) {
            return Err(ApiError::not_found());
        }
    }
    let render = |(): &()| Rendered::empty(StatusCode::NO_CONTENT).to_stored();
    let now = clientele_domain::Timestamp::now();
    if state
        .store()
        .revoke_api_key(id, now, idempotency.completion(&render))
        .await?
    {
        idempotency.completed();
        state.keys().clear();
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}
