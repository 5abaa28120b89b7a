//! Opaque list cursors: the sort order, the last item's sort key and id, base64url-encoded.
//! The order is inside so a cursor used with another `sort` is refused instead of skipping rows.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clientele_domain::{Cursor, SortKey, SortOrder};
use serde::{Deserialize, Serialize};

use crate::problem::ApiError;

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(rename = "o")]
    order: String,
    #[serde(rename = "t", skip_serializing_if = "Option::is_none")]
    time: Option<i64>,
    #[serde(rename = "x", skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    #[serde(rename = "i")]
    id: String,
}

pub fn encode(cursor: &Cursor, order: SortOrder) -> String {
    let (time, text) = match &cursor.key {
        SortKey::Time(t) => (Some(*t), None),
        SortKey::Text(t) => (None, Some(t.clone())),
    };
    let wire = Wire {
        order: order.as_str().to_owned(),
        time,
        text,
        id: cursor.id.to_string(),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wire).unwrap_or_default())
}

pub fn decode(text: &str, order: SortOrder) -> Result<Cursor, ApiError> {
    let invalid = || ApiError::field("cursor", "invalid_cursor", "not a cursor this API returned");
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
    let wire: Wire = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if wire.order != order.as_str() {
        return Err(ApiError::field(
            "cursor",
            "cursor_sort_mismatch",
            format!(
                "this cursor pages the {} order; pass sort={}",
                wire.order, wire.order
            ),
        ));
    }
    let key = match (wire.time, wire.text) {
        (Some(t), None) => SortKey::Time(t),
        // Sort keys come from stored last names, which never hold NUL (nor may a query).
        (None, Some(t)) if !t.contains('\0') => SortKey::Text(t),
        _ => return Err(invalid()),
    };
    let expected_text = order == SortOrder::LastNameAsc;
    if expected_text != matches!(key, SortKey::Text(_)) {
        return Err(invalid());
    }
    Ok(Cursor {
        key,
        id: wire.id.parse().map_err(|_| invalid())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientele_domain::CustomerId;

    #[test]
    fn round_trips_and_refuses_another_order_or_garbage() {
        let cursor = Cursor {
            key: SortKey::Time(42),
            id: CustomerId::new(),
        };
        let text = encode(&cursor, SortOrder::UpdatedDesc);
        assert_eq!(decode(&text, SortOrder::UpdatedDesc).ok(), Some(cursor));
        assert!(decode(&text, SortOrder::CreatedAsc).is_err());
        assert!(decode("nonsense", SortOrder::CreatedAsc).is_err());
        let by_name = Cursor {
            key: SortKey::Text("smith".into()),
            id: CustomerId::new(),
        };
        let text = encode(&by_name, SortOrder::LastNameAsc);
        assert_eq!(decode(&text, SortOrder::LastNameAsc).ok(), Some(by_name));
    }
}
