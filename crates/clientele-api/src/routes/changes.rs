//! `GET /v1/changes`: the change feed. Events come in commit order; a consumer that keeps
//! passing `next_after` sees every committed change exactly once. `wait` long-polls.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clientele_domain::{ChangeEvent, ChangePage, ChangeQuery, Role};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Caller;
use crate::extract::StrictQuery;
use crate::problem::{ApiError, Problem};
use crate::response::Rendered;
use crate::routes::customers::page_limit;
use crate::state::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_changes))
}

/// Longest long poll, in seconds.
const MAX_WAIT: u32 = 60;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ChangesParams {
    /// The last `seq` seen: `next_after` of the previous page; 0 (default) from the start.
    after: Option<u64>,
    /// 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Seconds (0 to 60, default 0) to wait for a first change when there is none yet.
    #[param(minimum = 0, maximum = 60)]
    wait: Option<u32>,
}

/// One change of one customer.
#[derive(Serialize, ToSchema)]
pub(crate) struct ChangeEventDoc {
    /// Strictly increasing, in commit order.
    seq: i64,
    /// `created`, `updated` or `deleted`.
    #[serde(rename = "type")]
    kind: String,
    customer_id: String,
    external_id: Option<String>,
    /// The customer's version after the change (one past the last one for a deletion).
    version: i64,
    /// When the change was made.
    at: String,
    /// The customer as of this change; `null` for `deleted`, and for every change of a customer
    /// erased since (a deletion takes the customer's documents out of the feed).
    #[schema(value_type = Option<clientele_domain::Customer>)]
    customer: Option<serde_json::Value>,
}

/// A page of the change feed.
#[derive(Serialize, ToSchema)]
pub(crate) struct ChangesPage {
    data: Vec<ChangeEventDoc>,
    /// Pass as `after` next: the position the page read up to. That is the last `seq`
    /// returned, or, for a key restricted to teams, possibly a later one (changes of customers
    /// outside its teams are read past, not shown); the `after` given when nothing was read.
    next_after: i64,
}

/// Changes after a position, in commit order; optionally waits for the first one.
///
/// A team-restricted key sees only changes of customers in its teams (as of the change). A
/// position older than the changes kept (see `--change-retention`) is 410 `cursor_expired`:
/// resync by listing the customers, then follow the feed from the list's `feed_position`.
#[utoipa::path(
    get, path = "/v1/changes", tag = "changes",
    params(ChangesParams),
    responses(
        (status = 200, body = ChangesPage),
        (status = 410, description = "The position is older than the changes kept", body = Problem),
        (status = 422, body = Problem),
    ),
    security(("bearer" = []))
)]
async fn list_changes(
    State(state): State<AppState>,
    caller: Caller,
    StrictQuery(params): StrictQuery<ChangesParams>,
) -> Result<Response, ApiError> {
    caller.require(Role::Read)?;
    let limit = page_limit(params.limit)?;
    let wait = params.wait.unwrap_or(0);
    if wait > MAX_WAIT {
        return Err(ApiError::field(
            "wait",
            "out_of_range",
            format!("0 to {MAX_WAIT} seconds"),
        ));
    }
    let after = i64::try_from(params.after.unwrap_or(0))
        .map_err(|_| ApiError::field("after", "out_of_range", "too large"))?;
    let page = state
        .store()
        .changes(&ChangeQuery {
            after,
            limit,
            wait: Duration::from_secs(u64::from(wait)),
            scope: caller.scope(),
        })
        .await?;
    if wait > 0 && !page.events.is_empty() {
        // A key revoked while the request waited sees nothing written meanwhile. One point
        // read per page of up to 1,000 events; the key cache's revocation notice would spare
        // it, but only while the process's notification listener is up.
        if state.store().api_key_by_id(caller.key.id).await?.is_none() {
            return Err(crate::auth::unauthorized(
                "the API key was revoked while the request waited",
            ));
        }
    }
    Ok(Rendered::json(StatusCode::OK, page_json(&page)).into_response())
}

/// The page as JSON, with each stored customer document copied in as is (no re-encoding).
fn page_json(page: &ChangePage) -> String {
    let size: usize = page
        .events
        .iter()
        .map(|e| e.customer.as_ref().map_or(0, String::len) + 200)
        .sum();
    let mut body = String::with_capacity(size + 48);
    body.push_str("{\"data\":[");
    for (i, event) in page.events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        push_event(&mut body, event);
    }
    body.push_str("],\"next_after\":");
    body.push_str(&page.next_after.to_string());
    body.push('}');
    body
}

fn push_event(body: &mut String, event: &ChangeEvent) {
    use std::fmt::Write;
    let external_id = serde_json::to_string(&event.external_id).unwrap_or_else(|_| "null".into());
    let _ = write!(
        body,
        "{{\"seq\":{},\"type\":\"{}\",\"customer_id\":\"{}\",\"external_id\":{},\"version\":{},\
         \"at\":\"{}\",\"customer\":{}}}",
        event.seq,
        event.kind.as_str(),
        event.customer_id,
        external_id,
        event.version,
        event.at,
        event.customer.as_deref().unwrap_or("null"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientele_domain::{ChangeKind, CustomerId, Timestamp};

    #[test]
    fn events_render_as_the_contract_shape() {
        let id = CustomerId::new();
        let page = ChangePage::new(
            vec![
                ChangeEvent {
                    seq: 7,
                    kind: ChangeKind::Updated,
                    customer_id: id,
                    external_id: Some("a\"b".into()),
                    version: 2,
                    at: Timestamp::from_micros(1_000_000),
                    customer: Some("{\"id\":1}".into()),
                },
                ChangeEvent {
                    seq: 9,
                    kind: ChangeKind::Deleted,
                    customer_id: id,
                    external_id: None,
                    version: 3,
                    at: Timestamp::from_micros(2_000_000),
                    customer: None,
                },
            ],
            5,
        );
        let value: serde_json::Value = serde_json::from_str(&page_json(&page)).expect("json");
        assert_eq!(value["next_after"], 9);
        assert_eq!(value["data"][0]["external_id"], "a\"b");
        assert_eq!(value["data"][0]["customer"]["id"], 1);
        assert_eq!(value["data"][0]["at"], "1970-01-01T00:00:01.000000Z");
        assert_eq!(value["data"][1]["type"], "deleted");
        assert!(value["data"][1]["customer"].is_null());
        let keys: Vec<&String> = value["data"][1]
            .as_object()
            .expect("object")
            .keys()
            .collect();
        assert_eq!(keys.len(), 7);
        let empty = ChangePage::new(Vec::new(), 5);
        assert_eq!(page_json(&empty), "{\"data\":[],\"next_after\":5}");
    }
}
