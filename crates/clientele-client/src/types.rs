//! The API's envelopes: problems, bulk sync requests and results, change feed pages.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An RFC 9457 problem as the hub sends it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Problem {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FieldError {
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// The body of `POST /v1/customers/sync`. Items are pre-serialized JSON so a batch's bytes,
/// and with them its idempotency key, are fixed before the first attempt.
#[derive(Debug, Serialize)]
pub struct SyncRequest<'a> {
    pub key: &'a str,
    pub atomic: bool,
    pub customers: &'a [Box<serde_json::value::RawValue>],
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    Created,
    Updated,
    Unchanged,
    Deleted,
    Failed,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SyncResult {
    pub index: usize,
    pub status: ItemStatus,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub version: Option<i64>,
    #[serde(default)]
    pub error: Option<Problem>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct SyncSummary {
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub updated: u64,
    #[serde(default)]
    pub unchanged: u64,
    #[serde(default)]
    pub deleted: u64,
    #[serde(default)]
    pub failed: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SyncResponse {
    pub results: Vec<SyncResult>,
    #[serde(default)]
    pub summary: SyncSummary,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ChangeType {
    Created,
    Updated,
    Deleted,
}

/// One event of the change feed; `customer` is the customer as of the change (`None` on delete).
#[derive(Clone, Debug, Deserialize)]
pub struct Change {
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: ChangeType,
    pub customer_id: String,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub version: Option<i64>,
    #[serde(default)]
    pub at: Option<String>,
    #[serde(default)]
    pub customer: Option<Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ChangePage {
    pub data: Vec<Change>,
    pub next_after: i64,
}
