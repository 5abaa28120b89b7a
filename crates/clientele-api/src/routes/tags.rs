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
use crate::extract::StrictQuery;
use crate::problem::{ApiError, Problem};
use crate::routes::name_page::{NamePageParams, paged};
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

/// A page of the tags in use, by tag.
#[derive(Serialize, ToSchema)]
pub(crate) struct TagList {
    data: Vec<TagCount>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// List tags with customer counts, keyset-paginated (1000 per page unless `limit` says fewer).
#[utoipa::path(
    get, path = "/v1/tags", tag = "customers",
    params(NamePageParams),
    responses((status = 200, body = TagList), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = []))
)]
async fn list_tags(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(params): StrictQuery<NamePageParams>,
) -> Result<Json<TagList>, ApiError> {
    caller.require(Role::Read)?;
    let page = params.page()?;
    let counts = state.store().tag_counts(&caller.scope(), &page).await?;
    let (counts, next_cursor) = paged(counts, &page, |c| &c.tag);
    Ok(Json(TagList {
        data: counts
            .into_iter()
            .map(|c| TagCount {
                tag: c.tag,
                count: c.count,
            })
            .collect(),
        next_cursor,
    }))
}
