//! The one error type of the domain and of the [`crate::Store`] boundary.

use crate::group::InUse;
use crate::{CustomerKey, ValidationErrors};

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("not found")]
    NotFound,
    #[error("another customer already has this {0}")]
    DuplicateKey(CustomerKey),
    #[error("version {actual} does not match the expected {expected}")]
    VersionConflict { expected: i64, actual: i64 },
    /// `If-Match: *`, and no customer is stored.
    #[error("no stored version matches *")]
    NoCurrentVersion,
    /// A change-feed position older than the retained changes: the consumer must resync.
    #[error("changes after {after} are no longer kept (kept from {horizon})")]
    CursorExpired { after: i64, horizon: i64 },
    /// Orders reference the customer, which therefore cannot be deleted.
    #[error("orders reference this customer")]
    CustomerHasOrders,
    /// A group or team that is still referenced cannot be deleted.
    #[error("still in use: {0:?}")]
    InUse(InUse),
    #[error("invalid input")]
    Validation(ValidationErrors),
    /// The request's `Idempotency-Key` was taken over by a retry while it ran (its process was
    /// taken for gone): its write is not committed, and the retry's answer is the one kept.
    #[error("the idempotency key was taken over by a retry of the request")]
    IdempotencyKeyTakenOver,
    /// The database is out of reach for now (pool exhausted, connection lost): retrying may help.
    #[error("storage unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("storage failed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The source of a storage failure raised by a commit: the database may have applied the
/// transaction or not (a connection lost while `COMMIT` ran), so the request that ran it may
/// have had its effect.
#[derive(Debug, thiserror::Error)]
#[error("the commit was not confirmed: {0}")]
pub struct CommitUnconfirmed(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl DomainError {
    /// This failure, raised by a commit: a storage failure is marked as one whose write may
    /// have been applied; any other (a deferred constraint) is kept.
    pub fn commit_unconfirmed(self) -> DomainError {
        match self {
            DomainError::Storage(source) => {
                DomainError::Storage(Box::new(CommitUnconfirmed(source)))
            }
            DomainError::Unavailable(source) => {
                DomainError::Unavailable(Box::new(CommitUnconfirmed(source)))
            }
            other => other,
        }
    }

    /// Whether the write that failed so may have been applied nevertheless (its commit was
    /// not confirmed): its request cannot be taken as one that changed nothing.
    pub fn may_have_applied(&self) -> bool {
        match self {
            DomainError::Storage(source) | DomainError::Unavailable(source) => {
                source.is::<CommitUnconfirmed>()
            }
            _ => false,
        }
    }
}

impl From<ValidationErrors> for DomainError {
    fn from(errors: ValidationErrors) -> Self {
        DomainError::Validation(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_storage_failures_of_a_commit_may_have_applied() {
        let failed = || DomainError::Storage("lost".into());
        assert!(!failed().may_have_applied());
        assert!(failed().commit_unconfirmed().may_have_applied());
        let unavailable = DomainError::Unavailable("lost".into());
        assert!(unavailable.commit_unconfirmed().may_have_applied());
        assert!(
            !DomainError::NotFound
                .commit_unconfirmed()
                .may_have_applied()
        );
    }
}
