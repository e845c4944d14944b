//! Diesel's view of the tables created by `migrations/` (declared together with the SQLite
//! store's by [`adapters_sql_common::tables!`]), and the PostgreSQL functions queries use.

/// `users.id`, `devices.id`, … are `uuid`.
type StoredUuid = diesel::sql_types::Uuid;
/// Every timestamp is a `timestamptz`.
type StoredTimestamp = diesel::sql_types::Timestamptz;

adapters_sql_common::tables!();

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
