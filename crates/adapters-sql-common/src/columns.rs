//! The column tuples that select the shared [`rows`](crate::rows) from a store's schema.

/// Declares the column tuples that select the shared rows: `USER` ([`UserRow`]),
/// `CREDENTIALS` ([`CredentialsRow`]), `PREFERENCES` ([`PreferencesRow`]), `DEVICE`
/// ([`DeviceRow`]) and `RECORD` ([`RecordRow`]), with the visibility given. Invoke it where
/// the store's `users`, `notification_preferences`, `devices` and `idempotency_records`
/// table modules are in scope (each store has its own schema, with its own column types).
///
/// Each tuple is checked at compile time against its row's field names
/// ([`selects_fields`]): rows are read by position, so a tuple that names other columns, or
/// the same ones in another order, would read one column into another field.
///
/// [`UserRow`]: crate::rows::UserRow
/// [`CredentialsRow`]: crate::rows::CredentialsRow
/// [`PreferencesRow`]: crate::rows::PreferencesRow
/// [`DeviceRow`]: crate::rows::DeviceRow
/// [`RecordRow`]: crate::rows::RecordRow
/// [`selects_fields`]: crate::rows::selects_fields
#[macro_export]
macro_rules! row_columns {
    ($vis:vis) => {
        $crate::row_columns!(@tuple $vis USER: UserRow = users(id, name, email, phone, created_at, updated_at));
        $crate::row_columns!(@tuple $vis CREDENTIALS: CredentialsRow = users(id, password_hash, token_version));
        $crate::row_columns!(@tuple $vis PREFERENCES: PreferencesRow = notification_preferences(
            user_id, email_enabled, push_enabled, quiet_hours_start, quiet_hours_end, timezone, updated_at
        ));
        $crate::row_columns!(@tuple $vis DEVICE: DeviceRow = devices(
            id, user_id, token, platform, active, created_at, updated_at, last_seen_at
        ));
        $crate::row_columns!(@tuple $vis RECORD: RecordRow = idempotency_records(
            request_fingerprint, response_status, response_body, response_location, invalidates
        ));
    };
    (@tuple $vis:vis $name:ident: $row:ident = $table:ident($($column:ident),* $(,)?)) => {
        #[doc = concat!("The columns of `", stringify!($table), "` that [`", stringify!($row), "`] reads, in its field order.")]
        $vis const $name: ($($table::$column,)*) = ($($table::$column,)*);

        const _: () = assert!(
            $crate::rows::selects_fields(
                &[$(<$table::$column as diesel::Column>::NAME),*],
                $crate::rows::$row::COLUMNS,
            ),
            concat!(stringify!($name), " must name the fields of ", stringify!($row), ", in order"),
        );
    };
}
