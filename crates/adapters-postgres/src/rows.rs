//! Row structs and their conversion to domain values. Stored values are parsed again on
//! the way out, so that a row written around the service surfaces as an error, not as an
//! invalid domain value.

use diesel::prelude::*;
use domain::device::{Device, Platform, PushToken};
use domain::ports::RepositoryError;
use domain::preferences::{ClockTime, Preferences, QuietHours, TimeZoneName};
use domain::user::{EmailAddress, PhoneNumber, User, UserName};
use time::{OffsetDateTime, Time};
use uuid::Uuid;

use crate::errors::corrupt_row;
use crate::schema::{devices, notification_preferences, users};

/// The public columns of `users` (never the password hash).
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub(crate) struct UserRow {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub phone: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
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

/// A row of `notification_preferences`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = notification_preferences, check_for_backend(diesel::pg::Pg))]
pub(crate) struct PreferencesRow {
    pub user_id: Uuid,
    pub email_enabled: bool,
    pub push_enabled: bool,
    pub quiet_hours_start: Option<Time>,
    pub quiet_hours_end: Option<Time>,
    pub timezone: String,
    pub updated_at: OffsetDateTime,
}

impl PreferencesRow {
    pub(crate) fn new(user_id: Uuid, preferences: &Preferences) -> Self {
        Self {
            user_id,
            email_enabled: preferences.email,
            push_enabled: preferences.push,
            quiet_hours_start: preferences.quiet_hours.map(|window| window.start().as_time()),
            quiet_hours_end: preferences.quiet_hours.map(|window| window.end().as_time()),
            timezone: preferences.timezone.as_str().to_owned(),
            updated_at: preferences.updated_at,
        }
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

/// A row of `devices`.
#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = devices, check_for_backend(diesel::pg::Pg))]
pub(crate) struct DeviceRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub token: String,
    pub platform: String,
    pub active: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
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
pub(crate) fn devices_from_rows(rows: impl IntoIterator<Item = DeviceRow>) -> Result<Vec<Device>, RepositoryError> {
    rows.into_iter().map(Device::try_from).collect()
}
