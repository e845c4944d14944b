//! Maps diesel and pool errors to the domain's [`RepositoryError`].
//!
//! SQLite does not name the constraint a statement violated, so the store never relies on
//! a violation to detect a taken email or an unknown owner: it checks them first, inside
//! the write transaction that already excludes every other writer. A violation that still
//! happens is unexpected.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use domain::idempotency::IdempotencyConflict;
use domain::ports::RepositoryError;

/// Maps a query error.
pub fn from_diesel(error: DieselError) -> RepositoryError {
    match &error {
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand, _)
        | DieselError::BrokenTransactionManager => RepositoryError::Unavailable(Box::new(error)),
        _ => RepositoryError::Unexpected(Box::new(error)),
    }
}

/// Maps a failure to check a connection out of the pool: always "unavailable" (timeout,
/// the data file cannot be opened).
pub fn from_pool_error(error: diesel_async::pooled_connection::deadpool::PoolError) -> RepositoryError {
    RepositoryError::Unavailable(Box::new(error))
}

/// An error inside a unit of work run on a connection.
#[derive(Debug)]
pub(crate) enum StoreError {
    /// A statement failed.
    Database(DieselError),
    /// The domain's answer (email taken, unknown user, a stored value it refuses, …).
    Repository(RepositoryError),
}

impl From<DieselError> for StoreError {
    fn from(error: DieselError) -> Self {
        Self::Database(error)
    }
}

impl From<RepositoryError> for StoreError {
    fn from(error: RepositoryError) -> Self {
        Self::Repository(error)
    }
}

impl From<IdempotencyConflict> for StoreError {
    fn from(conflict: IdempotencyConflict) -> Self {
        Self::Repository(RepositoryError::Idempotency(conflict))
    }
}

impl From<StoreError> for RepositoryError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Database(error) => from_diesel(error),
            StoreError::Repository(error) => error,
        }
    }
}
