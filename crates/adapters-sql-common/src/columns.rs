//! The column tuples that select the shared [`rows`](crate::rows) from a store's schema.

/// Declares the column tuples that select the shared rows: `USER` ([`UserRow`]),
/// `CREDENTIALS` ([`CredentialsRow`]), `PREFERENCES` ([`PreferencesRow`]), `DEVICE`
/// ([`DeviceRow`]) and `RECORD` ([`RecordRow`]), with the visibility given. Invoke it where
/// the store's `users`, `notification_preferences`, `devices` and `idempotency_records`
/// table modules are in scope (each store has its own schema, with its own column types).
///
/// [`UserRow`]: crate::rows::UserRow
/// [`CredentialsRow`]: crate::rows::CredentialsRow
/// [`PreferencesRow`]: crate::rows::PreferencesRow
/// [`DeviceRow`]: crate::rows::DeviceRow
/// [`RecordRow`]: crate::rows::RecordRow
#[macro_export]
macro_rules! row_columns {
    ($vis:vis) => {
        /// What `UserRow` reads of `users` (never the password hash).
        $vis const USER: (users::id, users::name, users::email, users::phone, users::created_at, users::updated_at) =
            (users::id, users::name, users::email, users::phone, users::created_at, users::updated_at);

        /// What `CredentialsRow` reads of `users`.
        $vis const CREDENTIALS: (users::id, users::password_hash, users::token_version) =
            (users::id, users::password_hash, users::token_version);

        /// Every column of `notification_preferences`, as `PreferencesRow` reads them.
        $vis const PREFERENCES: <notification_preferences::table as diesel::Table>::AllColumns =
            notification_preferences::all_columns;

        /// Every column of `devices`, as `DeviceRow` reads them.
        $vis const DEVICE: <devices::table as diesel::Table>::AllColumns = devices::all_columns;

        /// What `RecordRow` reads of `idempotency_records`.
        $vis const RECORD: (
            idempotency_records::request_fingerprint,
            idempotency_records::response_status,
            idempotency_records::response_body,
            idempotency_records::response_location,
            idempotency_records::invalidates,
        ) = (
            idempotency_records::request_fingerprint,
            idempotency_records::response_status,
            idempotency_records::response_body,
            idempotency_records::response_location,
            idempotency_records::invalidates,
        );
    };
}
