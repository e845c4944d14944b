//! Maps diesel and pool errors to the domain's [`RepositoryError`], by constraint name.

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use domain::ports::RepositoryError;

/// The unique index on `lower(users.email)`.
pub const USERS_EMAIL_UNIQUE: &str = "users_email_lower_key";
/// The foreign key from devices to their owner.
pub const DEVICES_USER_FOREIGN_KEY: &str = "devices_user_id_fkey";
/// The primary key of the category catalogue.
pub const CATEGORIES_KEY: &str = "notification_categories_pkey";
/// The foreign key from users' choices to their category.
pub const CHOICES_CATEGORY_FOREIGN_KEY: &str = "category_choices_category_key_fkey";
/// The foreign key from users' choices to their owner's preferences.
pub const CHOICES_USER_FOREIGN_KEY: &str = "category_choices_user_id_fkey";
/// The foreign key from the consent history to its user's preferences.
pub const HISTORY_USER_FOREIGN_KEY: &str = "consent_history_user_id_fkey";

/// Maps a query error.
pub fn from_diesel(error: DieselError) -> RepositoryError {
    match &error {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(USERS_EMAIL_UNIQUE) =>
        {
            RepositoryError::EmailTaken
        }
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(CATEGORIES_KEY) =>
        {
            RepositoryError::CategoryExists
        }
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info)
            if matches!(
                info.constraint_name(),
                Some(DEVICES_USER_FOREIGN_KEY | CHOICES_USER_FOREIGN_KEY | HISTORY_USER_FOREIGN_KEY)
            ) =>
        {
            RepositoryError::UserNotFound
        }
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info)
            if info.constraint_name() == Some(CHOICES_CATEGORY_FOREIGN_KEY) =>
        {
            RepositoryError::CategoryNotFound
        }
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::ReadOnlyTransaction,
            _,
        )
        | DieselError::BrokenTransactionManager => RepositoryError::Unavailable(Box::new(error)),
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) if is_transient(info.message()) => {
            RepositoryError::Unavailable(Box::new(error))
        }
        _ => RepositoryError::Unexpected(Box::new(error)),
    }
}

/// PostgreSQL's errors for a plan a connection keeps whose types a schema change altered (a
/// migration by a newer release, say): a prepared statement's result type, or the parameter
/// types of a plan that a PL/pgSQL function (`update_preferences_recorded`) cached in the
/// session, for a call that waited on the migration's lock.
const STALE_PLANS: [&str; 2] =
    ["cached plan must not change result type", "does not match that when preparing the plan"];

/// Whether a server error is a plan the schema changed under ([`STALE_PLANS`]).
fn is_stale_plan(message: &str) -> bool {
    STALE_PLANS.iter().any(|stale| message.contains(stale))
}

/// Whether `error` is a plan the schema changed under: its connection must be dropped, since
/// neither diesel's statement cache nor the session's PL/pgSQL plans forget it; the next
/// connection plans again on the new schema.
pub(crate) fn is_stale_statement(error: &RepositoryError) -> bool {
    matches!(error, RepositoryError::Unavailable(source) if is_stale_plan(&source.to_string()))
}

/// Whether a server error is an overload or failover condition worth a retry (503), not a
/// bug (500): statement timeouts and cancellations (57014), deadlocks (40P01), shutdowns
/// (57P01–57P03). diesel-async does not expose the SQLSTATE of these, so the server's
/// (stable, English by default) message prefix is the only signal.
fn is_transient(message: &str) -> bool {
    const TRANSIENT: [&str; 12] = [
        "canceling statement due to",
        // What the statement after a timed-out one meets when the timeout's error reached the
        // server after the client had its rows (a race of very short statement timeouts).
        "current transaction is aborted",
        "deadlock detected",
        "terminating connection due to",
        "the database system is",
        "cannot execute",
        // PgBouncer's own: no server connection free within its query_wait_timeout, its
        // server connection lost, its client limit reached, PostgreSQL out of its reach.
        "query_wait_timeout",
        "server conn crashed",
        "no more connections allowed",
        "pgbouncer cannot connect to server",
        "server login has been failing",
        "database removed",
    ];
    // A stale plan: the store drops the connection ([`is_stale_statement`]), so a retry works.
    TRANSIENT.iter().any(|prefix| message.starts_with(prefix)) || is_stale_plan(message)
}

/// Maps a failure to check a connection out of the pool: always "unavailable" (timeout,
/// server down, too many connections).
pub fn from_pool_error(error: diesel_async::pooled_connection::deadpool::PoolError) -> RepositoryError {
    RepositoryError::Unavailable(Box::new(error))
}

/// Reports a stored value that the domain refuses (data written around the service).
pub use adapters_sql_common::rows::corrupt_row;

#[cfg(test)]
mod transient_tests {
    use super::is_transient;

    #[test]
    fn timeouts_deadlocks_and_shutdowns_are_transient_and_bugs_are_not() {
        assert!(is_transient("canceling statement due to statement timeout"));
        assert!(is_transient("current transaction is aborted, commands ignored until end of transaction block"));
        assert!(is_transient("deadlock detected"));
        assert!(is_transient("the database system is shutting down"));
        assert!(is_transient("cannot execute UPDATE in a read-only transaction"));
        // PgBouncer's: a queue for a server connection that timed out, a lost server
        // connection, its client limit, PostgreSQL out of its reach.
        assert!(is_transient("query_wait_timeout"));
        assert!(is_transient("server conn crashed?"));
        assert!(is_transient("no more connections allowed (max_client_conn)"));
        assert!(is_transient("pgbouncer cannot connect to server"));
        // A plan the schema changed under, in a prepared statement or a PL/pgSQL function.
        assert!(is_transient("cached plan must not change result type"));
        assert!(is_transient(
            "type of parameter 32 (character varying) does not match that when preparing the plan (text)"
        ));
        assert!(!is_transient("syntax error at or near \"SELEC\""));
        assert!(!is_transient("column \"nope\" does not exist"));
    }
}
