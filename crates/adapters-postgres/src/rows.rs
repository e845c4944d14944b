//! The rows this store reads and writes (shared with the SQLite store, with their
//! conversion from and to domain values) and the columns that select them.

pub(crate) use adapters_sql_common::rows::{ChoiceRow, CredentialsRow, DeviceRow, PreferencesRow, RecordRow, UserRow};

use crate::schema::{
    category_choices, category_revisions, consent_history, devices, idempotency_records, notification_categories,
    notification_preferences, outbox_events, users,
};

adapters_sql_common::row_columns!(pub(crate));
adapters_sql_common::row_writes!(pub(crate), uuid::Uuid);
