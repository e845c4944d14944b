//! Diesel's view of the tables created by `migrations/`.

diesel::table! {
    users (id) {
        id -> Uuid,
        name -> Text,
        email -> Text,
        phone -> Nullable<Text>,
        password_hash -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        token_version -> Integer,
    }
}

diesel::table! {
    notification_preferences (user_id) {
        user_id -> Uuid,
        email_enabled -> Bool,
        push_enabled -> Bool,
        quiet_hours_start -> Nullable<Time>,
        quiet_hours_end -> Nullable<Time>,
        timezone -> Text,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    devices (id) {
        id -> Uuid,
        user_id -> Uuid,
        token -> Text,
        platform -> Text,
        active -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        last_seen_at -> Timestamptz,
    }
}

diesel::joinable!(notification_preferences -> users (user_id));
diesel::joinable!(devices -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(users, notification_preferences, devices);

#[diesel::declare_sql_function]
extern "SQL" {
    /// PostgreSQL's `lower`, to use the case-insensitive email index.
    fn lower(value: diesel::sql_types::Text) -> diesel::sql_types::Text;

    /// PostgreSQL's `regexp_replace(source, pattern, replacement, flags)`.
    fn regexp_replace(
        source: diesel::sql_types::Text,
        pattern: diesel::sql_types::Text,
        replacement: diesel::sql_types::Text,
        flags: diesel::sql_types::Text,
    ) -> diesel::sql_types::Text;
}

diesel::table! {
    idempotency_records (caller, key) {
        caller -> Text,
        key -> Text,
        request_fingerprint -> Binary,
        response_status -> SmallInt,
        response_body -> Binary,
        response_location -> Nullable<Text>,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}
