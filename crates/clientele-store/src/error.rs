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
    #[error("cannot index stored customers for search: {0}")]
    Backfill(#[source] clientele_domain::DomainError),
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
        sqlx::Error::Database(ref db) if ends_the_session(db.as_ref()) => {
            DomainError::Unavailable(Box::new(error))
        }
        _ => DomainError::Storage(Box::new(error)),
    }
}

/// Whether PostgreSQL refused or ended the session rather than the statement: an error of
/// severity FATAL or PANIC (a database not accepting connections, too many connections, an
/// administrator's shutdown or termination, a database renamed away), or a connection exception
/// (SQLSTATE class 08). The database is out of reach for now, whatever the request was.
fn ends_the_session(db: &dyn sqlx::error::DatabaseError) -> bool {
    use sqlx::postgres::{PgDatabaseError, PgSeverity};
    let fatal = db
        .try_downcast_ref::<PgDatabaseError>()
        .is_some_and(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic));
    fatal || db.code().is_some_and(|code| code.starts_with("08"))
}

/// A failure of a statement run on a SQLite handle directly (`sqlite_rows`), mapped as
/// [`db_error`] maps sqlx's: `code` is SQLite's extended result code.
pub(crate) fn sqlite_error(code: i32, message: String) -> DomainError {
    use libsqlite3_sys as ffi;
    if matches!(
        code,
        ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    ) && let Some(key) = clashing_key(&message)
    {
        return DomainError::DuplicateKey(key);
    }
    if code == ffi::SQLITE_CONSTRAINT_FOREIGNKEY {
        return DomainError::CustomerHasOrders;
    }
    DomainError::Storage(format!("{message} (SQLite code {code})").into())
}

/// Whether a failed transaction is worth running again as it is: PostgreSQL aborted it to break
/// a deadlock (`40P01`) or a serialization conflict (`40001`) with a concurrent one.
pub(crate) fn is_transient(error: &DomainError) -> bool {
    let DomainError::Storage(source) = error else {
        return false;
    };
    source
        .downcast_ref::<sqlx::Error>()
        .and_then(sqlx::Error::as_database_error)
        .and_then(|db| db.code())
        .is_some_and(|code| code == "40P01" || code == "40001")
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

    /// A database error with a given SQLSTATE, as a driver would return it.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn failed_with(code: &'static str) -> DomainError {
        db_error(sqlx::Error::Database(Box::new(Sqlstate(code))))
    }

    #[test]
    fn deadlocks_and_serialization_failures_are_worth_a_retry_and_nothing_else_is() {
        assert!(is_transient(&failed_with("40P01")));
        assert!(is_transient(&failed_with("40001")));
        assert!(!is_transient(&failed_with("22001")));
        assert!(!is_transient(&db_error(sqlx::Error::RowNotFound)));
        assert!(!is_transient(&DomainError::NotFound));
    }

    #[test]
    fn a_lost_connection_is_unavailable_and_a_statement_error_is_not() {
        assert!(matches!(failed_with("08006"), DomainError::Unavailable(_)));
        assert!(matches!(failed_with("08001"), DomainError::Unavailable(_)));
        assert!(matches!(failed_with("22001"), DomainError::Storage(_)));
    }

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
