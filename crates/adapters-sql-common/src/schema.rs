//! The tables both stores declare to diesel.

/// Declares diesel's view of the tables both stores create (each with migrations in its own
/// dialect): `users`, `notification_preferences`, `devices`, `idempotency_records`,
/// `cache_invalidation_ledger`, `notification_categories`, `category_revisions`,
/// `category_choices`, `consent_history`, `event_sequences`, `outbox_events`, and how they join. Declared once so that the stores cannot drift apart.
///
/// The two SQL types that differ between backends come from the invoking module, which
/// must name them `StoredUuid` and `StoredTimestamp` (PostgreSQL: `Uuid` and
/// `Timestamptz`; SQLite: a UUID-as-text type and `TimestamptzSqlite`). Everything else is
/// a type both backends have.
#[macro_export]
macro_rules! tables {
    () => {
        diesel::table! {
            use diesel::sql_types::*;
            use super::{StoredTimestamp, StoredUuid};

            users (id) {
                id -> StoredUuid,
                name -> Text,
                email -> Text,
                phone -> Nullable<Text>,
                password_hash -> Text,
                created_at -> StoredTimestamp,
                updated_at -> StoredTimestamp,
                token_version -> Integer,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;
            use super::{StoredTimestamp, StoredUuid};

            notification_preferences (user_id) {
                user_id -> StoredUuid,
                email_enabled -> Bool,
                push_enabled -> Bool,
                quiet_hours_start -> Nullable<Time>,
                quiet_hours_end -> Nullable<Time>,
                timezone -> Text,
                updated_at -> StoredTimestamp,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;
            use super::{StoredTimestamp, StoredUuid};

            devices (id) {
                id -> StoredUuid,
                user_id -> StoredUuid,
                token -> Text,
                platform -> Text,
                active -> Bool,
                created_at -> StoredTimestamp,
                updated_at -> StoredTimestamp,
                last_seen_at -> StoredTimestamp,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;
            use super::StoredTimestamp;

            idempotency_records (caller, key) {
                caller -> Text,
                key -> Text,
                request_fingerprint -> Binary,
                response_status -> SmallInt,
                response_body -> Binary,
                response_location -> Nullable<Text>,
                created_at -> StoredTimestamp,
                expires_at -> StoredTimestamp,
                invalidates -> Text,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;
            use super::{StoredTimestamp, StoredUuid};

            cache_invalidation_ledger (user_id) {
                user_id -> StoredUuid,
                mark -> StoredUuid,
                recorded_at -> StoredTimestamp,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;
            use super::StoredTimestamp;

            notification_categories (key) {
                key -> Text,
                name -> Text,
                description -> Nullable<Text>,
                critical -> Bool,
                default_email -> Bool,
                default_push -> Bool,
                created_at -> StoredTimestamp,
                updated_at -> StoredTimestamp,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;
            use super::StoredTimestamp;

            category_revisions (id) {
                id -> BigInt,
                key -> Text,
                at -> StoredTimestamp,
                name -> Text,
                description -> Nullable<Text>,
                critical -> Bool,
                default_email -> Bool,
                default_push -> Bool,
                removed -> Bool,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;
            use super::{StoredTimestamp, StoredUuid};

            category_choices (user_id, category_key) {
                user_id -> StoredUuid,
                category_key -> Text,
                email -> Nullable<Bool>,
                push -> Nullable<Bool>,
                updated_at -> StoredTimestamp,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;
            use super::{StoredTimestamp, StoredUuid};

            consent_history (id) {
                id -> BigInt,
                user_id -> StoredUuid,
                at -> StoredTimestamp,
                field -> Text,
                old_value -> Nullable<Text>,
                new_value -> Nullable<Text>,
                actor_kind -> Text,
                actor_name -> Text,
                request_id -> Nullable<Text>,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;

            event_sequences (subject) {
                subject -> Text,
                last_sequence -> BigInt,
            }
        }

        diesel::table! {
            use diesel::sql_types::*;
            use super::{StoredTimestamp, StoredUuid};

            outbox_events (position) {
                position -> BigInt,
                id -> StoredUuid,
                subject -> Text,
                sequence -> BigInt,
                event_type -> Text,
                recorded_at -> StoredTimestamp,
                data -> Text,
                feed_position -> Nullable<BigInt>,
                published_at -> Nullable<StoredTimestamp>,
            }
        }

        diesel::joinable!(notification_preferences -> users (user_id));
        diesel::joinable!(devices -> users (user_id));
        diesel::joinable!(category_choices -> users (user_id));
        diesel::joinable!(category_choices -> notification_categories (category_key));
        diesel::joinable!(consent_history -> users (user_id));
        diesel::allow_tables_to_appear_in_same_query!(
            users,
            notification_preferences,
            devices,
            notification_categories,
            category_revisions,
            category_choices,
            consent_history,
        );
    };
}

/// The order of a user's devices, the one rule both stores sort by: active first, most
/// recently seen first, then the newest id (so that equal timestamps never reorder). The
/// representation's `devices[0]` and `push_token` are the first of this order. Invoke it
/// where the store's `devices` table module is in scope.
#[macro_export]
macro_rules! device_order {
    () => {
        (devices::active.desc(), devices::last_seen_at.desc(), devices::id.desc())
    };
}

/// The one statement that reads one user's profile, `id` being the bound user id in the
/// store's type: `users ⋈ notification_preferences ⟕ devices ⟕ category_choices`, in
/// profile order, selecting [`ProfileRow`]s for [`profile_from_rows_of_one_user`].
///
/// One statement rather than one per table: a single snapshot, and on PostgreSQL a single
/// transaction and answer, where two pipelined statements were two of each (diesel-async
/// syncs after every statement); that cost PostgreSQL about 40% more CPU per read (issue
/// 17). Prepared once per connection, it runs on a cached generic plan (the id is a scalar
/// parameter). Devices are joined before choices so that SQLite reads them from its
/// `devices_user_id_order_idx` in profile order, without a sort. The rows are the user's
/// devices × its choices (one row when it has neither): users have few of either. Invoke it
/// where the store's table modules and its `USER`, `PREFERENCES`, `DEVICE` and `CHOICE`
/// column tuples are in scope.
///
/// [`ProfileRow`]: crate::profiles::ProfileRow
/// [`profile_from_rows_of_one_user`]: crate::profiles::profile_from_rows_of_one_user
#[macro_export]
macro_rules! profile_query {
    ($id:expr) => {
        users::table
            .inner_join(notification_preferences::table)
            .left_join(devices::table)
            .left_join(category_choices::table)
            .filter(users::id.eq($id))
            .order($crate::device_order!())
            .select((USER, PREFERENCES, DEVICE.nullable(), CHOICE.nullable()))
    };
}
