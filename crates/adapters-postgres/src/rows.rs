//! The rows this store reads and writes (shared with the SQLite store, with their
//! conversion from and to domain values) and the columns that select them.

pub(crate) use adapters_sql_common::rows::{CredentialsRow, DeviceRow, PreferencesRow, RecordRow, UserRow};

use crate::schema::{devices, idempotency_records, notification_preferences, users};

adapters_sql_common::row_columns!(pub(crate));
adapters_sql_common::row_writes!(pub(crate), uuid::Uuid);
