//! The column tuples that select the shared [`rows`](crate::rows) from a store's schema.

/// Declares the column tuples that select the shared rows: `USER` ([`UserRow`]),
/// `CREDENTIALS` ([`CredentialsRow`]), `PREFERENCES` ([`PreferencesRow`]), `DEVICE`
/// ([`DeviceRow`]), `RECORD` ([`RecordRow`]), `CATEGORY` ([`CategoryRow`]), `REVISION`
/// ([`RevisionRow`]), `CHOICE` ([`ChoiceRow`]), `HISTORY` ([`HistoryRow`]) and `EVENT` ([`EventRow`]), with the
/// visibility given. Invoke it where the store's table modules are in scope (each store
/// has its own schema, with its own column types).
///
/// Each tuple is checked at compile time against its row's field names
/// ([`selects_fields`]): rows are read by position, so a tuple that names other columns, or
/// the same ones in another order, would read one column into another field.
///
/// [`UserRow`]: crate::rows::UserRow
/// [`EventRow`]: crate::rows::EventRow
/// [`CredentialsRow`]: crate::rows::CredentialsRow
/// [`PreferencesRow`]: crate::rows::PreferencesRow
/// [`DeviceRow`]: crate::rows::DeviceRow
/// [`RecordRow`]: crate::rows::RecordRow
/// [`CategoryRow`]: crate::rows::CategoryRow
/// [`RevisionRow`]: crate::rows::RevisionRow
/// [`ChoiceRow`]: crate::rows::ChoiceRow
/// [`HistoryRow`]: crate::rows::HistoryRow
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
        $crate::row_columns!(@tuple $vis CATEGORY: CategoryRow = notification_categories(
            key, name, description, critical, default_email, default_push, created_at, updated_at
        ));
        $crate::row_columns!(@tuple $vis REVISION: RevisionRow = category_revisions(
            key, at, name, description, critical, default_email, default_push, removed
        ));
        $crate::row_columns!(@tuple $vis CHOICE: ChoiceRow = category_choices(user_id, category_key, email, push));
        $crate::row_columns!(@tuple $vis HISTORY: HistoryRow = consent_history(
            id, at, field, old_value, new_value, actor_kind, actor_name, request_id
        ));
        $crate::row_columns!(@tuple $vis EVENT: EventRow = outbox_events(
            position, id, subject, sequence, event_type, recorded_at, data, feed_position
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
