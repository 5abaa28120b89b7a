//! Keyset pages of lists ordered by a name (groups and teams by code, tags by tag, API keys by
//! id): `limit` (1 to 1000, default 1000) and an opaque `cursor` (the last name of the previous
//! page, base64url-encoded); `next_cursor` is `null` on the last page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clientele_domain::{DomainError, NamePage};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::problem::ApiError;

pub(crate) const MAX_NAMES: u32 = 1000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct NamePageParams {
    /// 1 to 1000, default 1000.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl NamePageParams {
    /// The page to ask the store for: one item more than the limit tells whether there is a
    /// next page.
    pub(crate) fn page(&self) -> Result<NamePage, ApiError> {
        let limit = self.limit.unwrap_or(MAX_NAMES);
        if !(1..=MAX_NAMES).contains(&limit) {
            return Err(ApiError::field(
                "limit",
                "out_of_range",
                format!("1 to {MAX_NAMES}"),
            ));
        }
        let after = self.cursor.as_deref().map(decode).transpose()?;
        Ok(NamePage {
            after,
            limit: limit + 1,
        })
    }
}

fn decode(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        // Names never hold NUL (nor may a PostgreSQL query parameter).
        .filter(|name| !name.contains('\0'))
        .ok_or_else(|| {
            ApiError::field("cursor", "invalid_cursor", "not a cursor this API returned")
        })
}

/// The items of a page that a caller sees only some of (a key restricted to teams): reads the
/// store's pages through `fetch` until the page is full (one more than the limit, so that
/// [`paged`] tells whether there is a next) or the items end, keeping those `visible` keeps.
/// The page is whole, and its cursor (the last item kept) skips none of the caller's.
pub(crate) async fn visible_page<T, Fetched>(
    page: &NamePage,
    fetch: impl Fn(NamePage) -> Fetched,
    visible: impl Fn(&T) -> bool,
    name: impl Fn(&T) -> String,
) -> Result<Vec<T>, ApiError>
where
    Fetched: std::future::Future<Output = Result<Vec<T>, DomainError>>,
{
    let mut kept = Vec::new();
    let mut scan = page.clone();
    loop {
        let items = fetch(scan.clone()).await?;
        let ended = items.len() < scan.limit as usize;
        scan.after = items.last().map(&name);
        kept.extend(items.into_iter().filter(|item| visible(item)));
        if ended || kept.len() >= page.limit as usize {
            return Ok(kept);
        }
    }
}

/// The items of the page (at most the asked limit) and the cursor of the next one.
pub(crate) fn paged<T>(
    mut items: Vec<T>,
    page: &NamePage,
    name: impl Fn(&T) -> &str,
) -> (Vec<T>, Option<String>) {
    let limit = page.limit as usize - 1;
    if items.len() <= limit {
        return (items, None);
    }
    items.truncate(limit);
    let next = items.last().map(|last| URL_SAFE_NO_PAD.encode(name(last)));
    (items, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_page_names_the_next_and_the_last_does_not() {
        let params = NamePageParams {
            limit: Some(2),
            cursor: None,
        };
        let page = params.page().expect("a page");
        assert_eq!(page.limit, 3);
        let (items, next) = paged(vec!["a", "b", "c"], &page, |s| s);
        assert_eq!(items, ["a", "b"]);
        let next = next.expect("a next page");
        assert_eq!(decode(&next).expect("decodes"), "b");
        let (items, next) = paged(vec!["c"], &page, |s| s);
        assert_eq!((items, next), (vec!["c"], None));
        assert!(decode("!!").is_err());
        assert!(decode(&URL_SAFE_NO_PAD.encode("a\0")).is_err());
    }
}
