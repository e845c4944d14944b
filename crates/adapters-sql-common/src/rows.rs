//! Rows as both stores read them, and their conversion to domain values. Stored values are
//! parsed again on the way out, so that a row written around the service surfaces as an
//! error, not as an invalid domain value.
//!
//! The rows derive only `Queryable`, which works for any backend whose column types
//! deserialize into these Rust types; each store selects them with its own column tuples
//! (`Selectable` would tie a row to one store's schema). `Queryable` reads by position, so
//! every row also lists its field names ([`row!`]), and [`row_columns!`] checks at compile
//! time that each store's tuple names the same columns in the same order: a field added to
//! a row and not to the tuple, or two columns of one type swapped, does not build.
//!
//! [`row_columns!`]: crate::row_columns

use diesel::Queryable;
use domain::auth::Credentials;
use domain::device::{Device, Platform, PushToken};
use domain::idempotency::{IdempotencyRecord, StoredResponse};
use domain::ports::RepositoryError;
use domain::preferences::{ClockTime, Preferences, QuietHours, TimeZoneName};
use domain::user::{EmailAddress, PasswordHash, PhoneNumber, User, UserId, UserName};
use time::{OffsetDateTime, Time};
use uuid::Uuid;

/// Reports a stored value that the domain refuses (data written around the service).
pub fn corrupt_row(what: &'static str, detail: impl std::fmt::Display) -> RepositoryError {
    RepositoryError::Unexpected(format!("stored {what} is invalid: {detail}").into())
}

/// Declares a `Queryable` row and `COLUMNS`, its field names in order (the names of the
/// columns it must be selected with).
macro_rules! row {
    ($(#[$meta:meta])* pub struct $row:ident { $($(#[$field_meta:meta])* $vis:vis $field:ident: $type:ty,)* }) => {
        $(#[$meta])*
        #[derive(Queryable)]
        pub struct $row {
            $($(#[$field_meta])* $vis $field: $type,)*
        }

        impl $row {
            /// The columns this row is read from, in the order of its fields.
            pub const COLUMNS: &'static [&'static str] = &[$(stringify!($field)),*];
        }
    };
}

/// Whether a store's column tuple (`selected`, column names) reads a row's fields
/// (`fields`): the same names in the same order. `const`, for the check in `row_columns!`.
pub const fn selects_fields(selected: &[&str], fields: &[&str]) -> bool {
    if selected.len() != fields.len() {
        return false;
    }
    let mut index = 0;
    while index < selected.len() {
        let (column, field) = (selected[index].as_bytes(), fields[index].as_bytes());
        if column.len() != field.len() {
            return false;
        }
        let mut byte = 0;
        while byte < column.len() {
            if column[byte] != field[byte] {
                return false;
            }
            byte += 1;
        }
        index += 1;
    }
    true
}

row! {
/// The public columns of `users` (never the password hash).
#[derive(Debug, Clone)]
pub struct UserRow {
    /// `users.id`.
    pub id: Uuid,
    /// `users.name`.
    pub name: String,
    /// `users.email`.
    pub email: String,
    /// `users.phone`.
    pub phone: Option<String>,
    /// `users.created_at`.
    pub created_at: OffsetDateTime,
    /// `users.updated_at`.
    pub updated_at: OffsetDateTime,
}
}

impl TryFrom<UserRow> for User {
    type Error = RepositoryError;

    fn try_from(row: UserRow) -> Result<Self, Self::Error> {
        Ok(Self {
            id: row.id.into(),
            name: UserName::parse(&row.name).map_err(|e| corrupt_row("user name", e))?,
            email: EmailAddress::parse(&row.email).map_err(|e| corrupt_row("email", e))?,
            phone: row.phone.as_deref().map(PhoneNumber::parse).transpose().map_err(|e| corrupt_row("phone", e))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

row! {
/// A row of `notification_preferences`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferencesRow {
    /// `notification_preferences.user_id`.
    pub user_id: Uuid,
    /// Email opted in.
    pub email_enabled: bool,
    /// Push opted in.
    pub push_enabled: bool,
    /// The quiet window's start, set together with its end.
    pub quiet_hours_start: Option<Time>,
    /// The quiet window's end.
    pub quiet_hours_end: Option<Time>,
    /// The IANA time zone name.
    pub timezone: String,
    /// When the preferences last changed.
    pub updated_at: OffsetDateTime,
}
}

impl TryFrom<PreferencesRow> for Preferences {
    type Error = RepositoryError;

    fn try_from(row: PreferencesRow) -> Result<Self, Self::Error> {
        let quiet_hours = match (row.quiet_hours_start, row.quiet_hours_end) {
            (Some(start), Some(end)) => Some(
                QuietHours::new(ClockTime::from_time(start), ClockTime::from_time(end))
                    .map_err(|e| corrupt_row("quiet hours", e))?,
            ),
            _ => None,
        };
        Ok(Self {
            email: row.email_enabled,
            push: row.push_enabled,
            quiet_hours,
            timezone: TimeZoneName::parse(&row.timezone).map_err(|e| corrupt_row("time zone", e))?,
            updated_at: row.updated_at,
        })
    }
}

row! {
/// A row of `devices`.
#[derive(Debug, Clone)]
pub struct DeviceRow {
    /// `devices.id`.
    pub id: Uuid,
    /// The owner.
    pub user_id: Uuid,
    /// The push token.
    pub token: String,
    /// The platform's stored name.
    pub platform: String,
    /// Whether pushes may be sent to it.
    pub active: bool,
    /// When the token was first registered.
    pub created_at: OffsetDateTime,
    /// When the device last changed.
    pub updated_at: OffsetDateTime,
    /// When the token was last registered or refreshed.
    pub last_seen_at: OffsetDateTime,
}
}

impl TryFrom<DeviceRow> for Device {
    type Error = RepositoryError;

    fn try_from(row: DeviceRow) -> Result<Self, Self::Error> {
        Ok(Self {
            id: row.id.into(),
            user_id: row.user_id.into(),
            token: PushToken::parse(&row.token).map_err(|e| corrupt_row("push token", e))?,
            platform: Platform::from_stored(&row.platform).ok_or_else(|| corrupt_row("platform", &row.platform))?,
            active: row.active,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_seen_at: row.last_seen_at,
        })
    }
}

/// Converts a list of device rows.
pub fn devices_from_rows(rows: impl IntoIterator<Item = DeviceRow>) -> Result<Vec<Device>, RepositoryError> {
    rows.into_iter().map(Device::try_from).collect()
}

row! {
/// What login reads of a user: `users.id`, `password_hash`, `token_version`.
pub struct CredentialsRow {
    id: Uuid,
    password_hash: String,
    token_version: i32,
}
}

impl std::fmt::Debug for CredentialsRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsRow").field("id", &self.id).finish_non_exhaustive()
    }
}

impl From<CredentialsRow> for Credentials {
    fn from(row: CredentialsRow) -> Self {
        Self {
            user_id: row.id.into(),
            password_hash: PasswordHash::new(row.password_hash),
            token_version: row.token_version,
        }
    }
}

row! {
/// What replaying reads of an idempotency record: `request_fingerprint`, `response_status`,
/// `response_body`, `response_location`, `invalidates`.
#[derive(Debug)]
pub struct RecordRow {
    request_fingerprint: Vec<u8>,
    response_status: i16,
    response_body: Vec<u8>,
    response_location: Option<String>,
    invalidates: String,
}
}

impl TryFrom<RecordRow> for IdempotencyRecord {
    type Error = RepositoryError;

    /// An unreadable user id is an error, never skipped: a replay must invalidate every user
    /// its first run touched.
    fn try_from(row: RecordRow) -> Result<Self, Self::Error> {
        let invalidates = row
            .invalidates
            .split_whitespace()
            .map(|id| id.parse::<Uuid>().map(UserId::from).map_err(|e| corrupt_row("invalidated user id", e)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            fingerprint: row.request_fingerprint,
            response: StoredResponse {
                status: u16::try_from(row.response_status).unwrap_or_default(),
                body: row.response_body,
                location: row.response_location,
                invalidates,
            },
        })
    }
}

/// The stored form of [`StoredResponse::invalidates`]: space-separated UUIDs.
pub fn stored_user_ids(ids: &[UserId]) -> String {
    ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

/// The stored form of an HTTP status (`smallint`): statuses are three digits, so the
/// saturation never happens in practice.
pub fn stored_status(status: u16) -> i16 {
    i16::try_from(status).unwrap_or(i16::MAX)
}
