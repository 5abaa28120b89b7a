//! The change feed: what a consumer asks for (`after`, `limit`, `wait`, its scope) and what it
//! gets back: events in commit order, each with the customer as of that change.

use std::time::Duration;

use crate::{ChangeKind, CustomerId, Scope, Timestamp};

/// One page of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeQuery {
    /// The last sequence number the consumer has seen (0 to start at the beginning).
    pub after: i64,
    pub limit: u32,
    /// How long to wait for a first change when there is none yet (long poll).
    pub wait: Duration,
    /// A team scope sees only changes of customers in its teams (as of the change).
    pub scope: Scope,
}

/// One committed change of one customer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeEvent {
    pub seq: i64,
    pub kind: ChangeKind,
    pub customer_id: CustomerId,
    pub external_id: Option<String>,
    pub version: i64,
    pub at: Timestamp,
    /// The customer's response JSON as of the change; `None` for a deletion.
    pub customer: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangePage {
    pub events: Vec<ChangeEvent>,
    /// The seq to pass as `after` next: the last one returned, or the query's `after`; for a
    /// team-scoped reader whose page is not full, at least the last change it was shown past.
    pub next_after: i64,
}

impl ChangePage {
    pub fn new(events: Vec<ChangeEvent>, after: i64) -> Self {
        let next_after = events.last().map_or(after, |e| e.seq);
        Self { events, next_after }
    }
}

impl ChangeKind {
    pub fn parse(text: &str) -> Option<ChangeKind> {
        match text {
            "created" => Some(ChangeKind::Created),
            "updated" => Some(ChangeKind::Updated),
            "deleted" => Some(ChangeKind::Deleted),
            _ => None,
        }
    }
}
