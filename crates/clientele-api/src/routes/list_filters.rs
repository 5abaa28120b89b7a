//! The filters of `GET /v1/customers`, parsed into the domain's [`CustomerFilter`]. A bad value
//! is a 422 naming its parameter.

use clientele_domain::{CustomerFilter, Timestamp};

use crate::problem::ApiError;
use crate::routes::customers::ListParams;

impl ListParams {
    pub(crate) fn filter(&self) -> Result<CustomerFilter, ApiError> {
        Ok(CustomerFilter {
            created_after: timestamp("created_after", &self.created_after)?,
            created_before: timestamp("created_before", &self.created_before)?,
            updated_after: timestamp("updated_after", &self.updated_after)?,
            updated_before: timestamp("updated_before", &self.updated_before)?,
            email: text("email", &self.email)?,
            phone: text("phone", &self.phone)?,
            external_id: text("external_id", &self.external_id)?,
            archived: archived(self.archived.as_deref())?,
            q: text("q", &self.q)?.filter(|q| !q.trim().is_empty()),
            tag: self.tag.clone(),
            group: self.group.clone(),
            include_subgroups: self.include_subgroups.unwrap_or(false),
            team: self.team.clone(),
        })
    }
}

fn timestamp(name: &str, value: &Option<String>) -> Result<Option<Timestamp>, ApiError> {
    value
        .as_deref()
        .map(|text| {
            Timestamp::parse_rfc3339_bound(text).ok_or_else(|| {
                ApiError::field(
                    name,
                    "invalid_timestamp",
                    "an RFC 3339 timestamp, e.g. 2026-11-23T18:00:00Z",
                )
            })
        })
        .transpose()
}

/// A text filter; control characters are no stored value (writes refuse them) and some
/// databases cannot take them as parameters.
fn text(name: &str, value: &Option<String>) -> Result<Option<String>, ApiError> {
    match value {
        Some(text) if text.chars().any(char::is_control) => Err(ApiError::field(
            name,
            "invalid_value",
            "must not contain control characters",
        )),
        Some(text) if text.len() > 1000 => {
            Err(ApiError::field(name, "too_long", "at most 1000 bytes"))
        }
        other => Ok(other.clone()),
    }
}

fn archived(value: Option<&str>) -> Result<Option<bool>, ApiError> {
    match value {
        None | Some("any") => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::field(
            "archived",
            "invalid_value",
            "one of true, false, any",
        )),
    }
}
