//! Errors of opening a store, and the mapping of database errors to domain errors.

use clientele_domain::{CustomerKey, DomainError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0}: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("cannot open the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A database failure as the domain sees it: unique-key clashes become
/// [`DomainError::DuplicateKey`] here, in one place, for both backends.
pub(crate) fn db_error(error: sqlx::Error) -> DomainError {
    if let sqlx::Error::Database(db) = &error
        && db.is_unique_violation()
        // PostgreSQL names the constraint; SQLite names the column in the message.
        && let Some(key) = clashing_key(db.constraint().unwrap_or_else(|| db.message()))
    {
        return DomainError::DuplicateKey(key);
    }
    // The backstop of the orders check: deleting a customer orders reference.
    if let sqlx::Error::Database(db) = &error
        && db.is_foreign_key_violation()
    {
        return DomainError::CustomerHasOrders;
    }
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            DomainError::Unavailable(Box::new(error))
        }
        _ => DomainError::Storage(Box::new(error)),
    }
}

fn clashing_key(text: &str) -> Option<CustomerKey> {
    if text.contains("external_id") {
        Some(CustomerKey::ExternalId)
    } else if text.contains("email_norm") {
        Some(CustomerKey::Email)
    } else if text.contains("username") {
        Some(CustomerKey::Username)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_key_from_either_backends_message() {
        assert_eq!(
            clashing_key("UNIQUE constraint failed: customers.email_norm"),
            Some(CustomerKey::Email)
        );
        assert_eq!(
            clashing_key("customers_external_id_key"),
            Some(CustomerKey::ExternalId)
        );
        assert_eq!(
            clashing_key("customers_username_key"),
            Some(CustomerKey::Username)
        );
        assert_eq!(clashing_key("api_keys_lookup_hash_key"), None);
    }
}
