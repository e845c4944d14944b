//! Maps diesel and pool errors to the domain's [`RepositoryError`], by constraint name.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use domain::ports::RepositoryError;

/// The unique index on `lower(users.email)`.
pub const USERS_EMAIL_UNIQUE: &str = "users_email_lower_key";
/// The foreign key from devices to their owner.
pub const DEVICES_USER_FOREIGN_KEY: &str = "devices_user_id_fkey";

/// Maps a query error.
pub fn from_diesel(error: DieselError) -> RepositoryError {
    match &error {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(USERS_EMAIL_UNIQUE) =>
        {
            RepositoryError::EmailTaken
        }
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info)
            if info.constraint_name() == Some(DEVICES_USER_FOREIGN_KEY) =>
        {
            RepositoryError::UserNotFound
        }
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::UnableToSendCommand,
            _,
        )
        | DieselError::BrokenTransactionManager => RepositoryError::Unavailable(Box::new(error)),
        _ => RepositoryError::Unexpected(Box::new(error)),
    }
}

/// Maps a failure to check a connection out of the pool: always "unavailable" (timeout,
/// server down, too many connections).
pub fn from_pool_error(error: diesel_async::pooled_connection::deadpool::PoolError) -> RepositoryError {
    RepositoryError::Unavailable(Box::new(error))
}

/// Reports a stored value that the domain refuses (data written around the service).
pub use adapters_sql_common::rows::corrupt_row;
