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
    /// Orders reference the customer, which therefore cannot be deleted.
    #[error("orders reference this customer")]
    CustomerHasOrders,
    /// A group or team that is still referenced cannot be deleted.
    #[error("still in use: {0:?}")]
    InUse(InUse),
    #[error("invalid input")]
    Validation(ValidationErrors),
    /// The database is out of reach for now (pool exhausted, connection lost): retrying may help.
    #[error("storage unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("storage failed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<ValidationErrors> for DomainError {
    fn from(errors: ValidationErrors) -> Self {
        DomainError::Validation(errors)
    }
}
