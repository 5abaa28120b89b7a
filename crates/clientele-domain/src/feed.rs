//! The change feed: what a consumer asks for (`after`, `limit`, `wait`, its scope) and what it
//! gets back: events in commit order, each with the customer as of that change.

use std::time::Duration;

use crate::{ChangeKind, CustomerId, DomainError, Scope, Timestamp};

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

impl ChangeEvent {
    /// The event as a caller of `scope` sees it: the customer with only the caller's teams
    /// ([`Scope::shown_document`]). A change that took the customer out of all of
    /// a team-restricted caller's teams is, for that caller, the customer's deletion: from then
    /// on the customer does not exist for it (404), and a mirror it keeps must drop the row
    /// rather than hold the last state it saw. (The store lists such changes for the teams the
    /// customer left; see `ChangeRecord::seen_by_teams_left`.)
    pub fn as_seen_by(mut self, scope: &Scope) -> Result<Self, DomainError> {
        if let Some(customer) = self.customer.take() {
            self.customer = scope.shown_document(customer)?;
            if self.customer.is_none() {
                self.kind = ChangeKind::Deleted;
            }
        }
        Ok(self)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(customer: Option<&str>) -> ChangeEvent {
        ChangeEvent {
            seq: 7,
            kind: ChangeKind::Updated,
            customer_id: CustomerId::new(),
            external_id: Some("a".into()),
            version: 3,
            at: Timestamp::from_micros(1),
            customer: customer.map(str::to_owned),
        }
    }

    #[test]
    fn a_change_that_leaves_a_scopes_teams_is_a_deletion_for_it() {
        let north = Scope::Teams(vec!["north".into()]);
        let moved = event(Some(r#"{"id": "x", "teams": ["south"]}"#));
        let seen = moved.clone().as_seen_by(&north).expect("decodes");
        assert_eq!(
            (seen.kind, seen.customer, seen.version),
            (ChangeKind::Deleted, None, 3)
        );
        // Everyone else sees the update as it is.
        assert_eq!(
            moved.clone().as_seen_by(&Scope::All).ok(),
            Some(moved.clone())
        );
        let south = Scope::Teams(vec!["south".into()]);
        assert_eq!(moved.clone().as_seen_by(&south).ok(), Some(moved));
        let deleted = event(None);
        assert_eq!(deleted.clone().as_seen_by(&north).ok(), Some(deleted));
    }
}
