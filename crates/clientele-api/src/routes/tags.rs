//! `GET /v1/tags`: every tag with the number of customers carrying it; a team-restricted key
//! counts only the customers it may see.

use axum::Json;
use axum::extract::State;
use clientele_domain::Role;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_tags))
}

#[derive(Serialize, ToSchema)]
pub(crate) struct TagCount {
    tag: String,
    /// Customers (visible to the caller) with this tag.
    count: i64,
}

/// Every tag in use, by tag.
#[derive(Serialize, ToSchema)]
pub(crate) struct TagList {
    data: Vec<TagCount>,
}

/// List tags with customer counts.
#[utoipa::path(
    get, path = "/v1/tags", tag = "customers",
    responses((status = 200, body = TagList), (status = 403, body = Problem)),
    security(("bearer" = []))
)]
async fn list_tags(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TagList>, ApiError> {
    caller.require(Role::Read)?;
    let counts = state.store().tag_counts(&caller.scope()).await?;
    Ok(Json(TagList {
        data: counts
            .into_iter()
            .map(|c| TagCount {
                tag: c.tag,
                count: c.count,
            })
            .collect(),
    }))
}
