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

use std::collections::HashMap;

use diesel::Queryable;
use domain::auth::Credentials;
use domain::category::{
    Category, CategoryChoice, CategoryChoices, CategoryDescription, CategoryKey, CategoryName, ChannelDefaults,
};
use domain::consent::{Actor, ActorKind, ConsentChange, ConsentField, ConsentRecord, ConsentValue, HistoryPage};
use domain::device::{Device, Platform, PushToken};
use domain::event::ChangeEvent;
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

row! {
/// A row of `notification_categories`.
#[derive(Debug, Clone)]
pub struct CategoryRow {
    /// The stable key.
    pub key: String,
    /// The display name.
    pub name: String,
    /// The optional description.
    pub description: Option<String>,
    /// Sent whatever the user opted out of.
    pub critical: bool,
    /// Email for users who did not choose.
    pub default_email: bool,
    /// Push for users who did not choose.
    pub default_push: bool,
    /// When the category was created.
    pub created_at: OffsetDateTime,
    /// When it last changed.
    pub updated_at: OffsetDateTime,
}
}

impl TryFrom<CategoryRow> for Category {
    type Error = RepositoryError;

    fn try_from(row: CategoryRow) -> Result<Self, Self::Error> {
        Ok(Self {
            key: CategoryKey::parse(&row.key).map_err(|e| corrupt_row("category key", e))?,
            name: CategoryName::parse(&row.name).map_err(|e| corrupt_row("category name", e))?,
            description: row
                .description
                .as_deref()
                .map(CategoryDescription::parse)
                .transpose()
                .map_err(|e| corrupt_row("category description", e))?,
            critical: row.critical,
            defaults: ChannelDefaults { email: row.default_email, push: row.default_push },
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// Converts a list of category rows.
pub fn categories_from_rows(rows: impl IntoIterator<Item = CategoryRow>) -> Result<Vec<Category>, RepositoryError> {
    rows.into_iter().map(Category::try_from).collect()
}

row! {
/// A row of `category_revisions`: what a category was from `at` on (or that it was removed).
#[derive(Debug, Clone)]
pub struct RevisionRow {
    /// The category's key.
    pub key: String,
    /// When the revision was made.
    pub at: OffsetDateTime,
    /// The display name.
    pub name: String,
    /// The optional description.
    pub description: Option<String>,
    /// Sent whatever the user opted out of.
    pub critical: bool,
    /// Email for users who did not choose.
    pub default_email: bool,
    /// Push for users who did not choose.
    pub default_push: bool,
    /// Whether this revision removed the category.
    pub removed: bool,
}
}

/// The category as its revisions (one key's, up to an instant, oldest first) leave it:
/// `None` when it did not exist then or the last revision removed it. Its creation time is
/// that of the first revision since it was last removed (a key can be created again).
pub fn category_from_revisions(
    revisions: impl IntoIterator<Item = RevisionRow>,
) -> Result<Option<Category>, RepositoryError> {
    let mut current: Option<CategoryRow> = None;
    for revision in revisions {
        if revision.removed {
            current = None;
            continue;
        }
        let created_at = current.as_ref().map_or(revision.at, |category| category.created_at);
        current = Some(CategoryRow {
            key: revision.key,
            name: revision.name,
            description: revision.description,
            critical: revision.critical,
            default_email: revision.default_email,
            default_push: revision.default_push,
            created_at,
            updated_at: revision.at,
        });
    }
    current.map(Category::try_from).transpose()
}

row! {
/// A row of `category_choices`: a user's own choice in one category.
#[derive(Debug, Clone)]
pub struct ChoiceRow {
    /// The user.
    pub user_id: Uuid,
    /// The category.
    pub category_key: String,
    /// Email in this category, `None` for the default.
    pub email: Option<bool>,
    /// Push in this category, `None` for the default.
    pub push: Option<bool>,
}
}

impl ChoiceRow {
    /// The choice the row stores.
    pub fn choice(&self) -> CategoryChoice {
        CategoryChoice { email: self.email, push: self.push }
    }
}

/// The choices of each user among `rows` (rows of empty choices are left out).
pub fn choices_by_user(
    rows: impl IntoIterator<Item = ChoiceRow>,
) -> Result<HashMap<Uuid, CategoryChoices>, RepositoryError> {
    let mut by_user: HashMap<Uuid, CategoryChoices> = HashMap::new();
    for row in rows {
        let choice = row.choice();
        if choice.is_empty() {
            continue;
        }
        let key = CategoryKey::parse(&row.category_key).map_err(|e| corrupt_row("category key", e))?;
        by_user.entry(row.user_id).or_default().insert(key, choice);
    }
    Ok(by_user)
}

row! {
/// A row of `consent_history` (its user is known to the reader).
#[derive(Debug, Clone)]
pub struct HistoryRow {
    /// The row's position: the cursor.
    pub id: i64,
    /// When the change was made.
    pub at: OffsetDateTime,
    /// The field's stored name (`preferences.email`).
    pub field: String,
    /// The value before.
    pub old_value: Option<String>,
    /// The value after.
    pub new_value: Option<String>,
    /// `user`, `service` or `trusted`.
    pub actor_kind: String,
    /// The actor's name.
    pub actor_name: String,
    /// The request's id.
    pub request_id: Option<String>,
}
}

impl TryFrom<HistoryRow> for ConsentRecord {
    type Error = RepositoryError;

    fn try_from(row: HistoryRow) -> Result<Self, Self::Error> {
        let field = ConsentField::parse(&row.field).map_err(|e| corrupt_row("consent field", e))?;
        let value = |stored: Option<&str>| {
            ConsentValue::from_stored(&field, stored).map_err(|e| corrupt_row("consent value", e))
        };
        let (old, new) = (value(row.old_value.as_deref())?, value(row.new_value.as_deref())?);
        let kind = ActorKind::from_stored(&row.actor_kind).ok_or_else(|| corrupt_row("actor kind", &row.actor_kind))?;
        Ok(Self {
            sequence: row.id,
            at: row.at,
            change: ConsentChange { field, old, new },
            actor: Actor { kind, name: row.actor_name },
            request_id: row.request_id,
        })
    }
}

/// Converts a list of history rows; a row the domain refuses is an error, never skipped.
pub fn records_from_rows(rows: impl IntoIterator<Item = HistoryRow>) -> Result<Vec<ConsentRecord>, RepositoryError> {
    rows.into_iter().map(ConsentRecord::try_from).collect()
}

/// A page of history from up to `limit + 1` rows read newest first: the extra row only
/// says that there is a next page, which starts below the page's last row.
pub fn history_page(mut rows: Vec<HistoryRow>, limit: u32) -> Result<HistoryPage, RepositoryError> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let records = records_from_rows(rows)?;
    let next_cursor = if more { records.last().map(|record| record.sequence) } else { None };
    Ok(HistoryPage { records, next_cursor })
}

row! {
/// A row of `outbox_events`, as the relay and the pull feed read it.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// The insertion order.
    pub position: i64,
    /// The event's id.
    pub id: Uuid,
    /// A user id, or `categories/<key>`.
    pub subject: String,
    /// The subject's sequence number.
    pub sequence: i64,
    /// The CloudEvents `type`.
    pub event_type: String,
    /// When the change was recorded.
    pub recorded_at: OffsetDateTime,
    /// The new state, as JSON text.
    pub data: String,
    /// The place in the pull feed, once the relay gave it one.
    pub feed_position: Option<i64>,
}
}

impl From<EventRow> for ChangeEvent {
    fn from(row: EventRow) -> Self {
        let EventRow { position: _, id, subject, sequence, event_type, recorded_at, data, feed_position: _ } = row;
        Self { id, kind: event_type, subject, sequence, time: recorded_at, data }
    }
}
