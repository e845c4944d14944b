//! Profiles read from their documents: one row per user in `profile_documents`, which the
//! database rewrites at the commit of every write of a row a profile shows (see the
//! migration `create_profile_documents`). A read that misses the cache reads that one row by
//! its primary key instead of joining four tables and sorting the devices; a user without a
//! document is read with the join.

use adapters_sql_common::profiles::profile_from_rows;
use adapters_sql_common::rows::{ChoiceRow, DeviceRow, PreferencesRow, UserRow, choices_by_user, corrupt_row};
use diesel::QueryableByName;
use diesel::sql_types::Text;
use domain::ports::RepositoryError;
use domain::user::UserProfile;
use serde::Deserialize;
use time::{OffsetDateTime, Time};
use uuid::Uuid;

/// One user's document, by id (`$1`).
pub(crate) const READ_DOCUMENT: &str = "SELECT document FROM profile_documents WHERE user_id = $1";

/// A row of [`READ_DOCUMENT`].
#[derive(QueryableByName)]
pub(crate) struct StoredDocument {
    #[diesel(sql_type = Text)]
    document: String,
}

/// What `profile_document` builds: the columns of the profile's rows, instants and clock
/// times as integer microseconds.
#[derive(Deserialize)]
struct Document {
    id: Uuid,
    name: String,
    email: String,
    phone: Option<String>,
    created_at: i64,
    updated_at: i64,
    preferences: PreferencesDocument,
    devices: Vec<DeviceDocument>,
    choices: Vec<ChoiceDocument>,
}

#[derive(Deserialize)]
struct PreferencesDocument {
    email_enabled: bool,
    push_enabled: bool,
    quiet_hours_start: Option<i64>,
    quiet_hours_end: Option<i64>,
    timezone: String,
    updated_at: i64,
}

#[derive(Deserialize)]
struct DeviceDocument {
    id: Uuid,
    token: String,
    platform: String,
    active: bool,
    created_at: i64,
    updated_at: i64,
    last_seen_at: i64,
}

#[derive(Deserialize)]
struct ChoiceDocument {
    category_key: String,
    email: Option<bool>,
    push: Option<bool>,
}

impl StoredDocument {
    /// The profile the document holds, checked as the rows it was built from would be.
    pub(crate) fn into_profile(self) -> Result<UserProfile, RepositoryError> {
        let document: Document =
            serde_json::from_str(&self.document).map_err(|error| corrupt_row("profile document", error))?;
        let user_id = document.id;
        let user = UserRow {
            id: user_id,
            name: document.name,
            email: document.email,
            phone: document.phone,
            created_at: instant(document.created_at)?,
            updated_at: instant(document.updated_at)?,
        };
        let preferences = document.preferences;
        let preferences = PreferencesRow {
            user_id,
            email_enabled: preferences.email_enabled,
            push_enabled: preferences.push_enabled,
            quiet_hours_start: preferences.quiet_hours_start.map(clock_time).transpose()?,
            quiet_hours_end: preferences.quiet_hours_end.map(clock_time).transpose()?,
            timezone: preferences.timezone,
            updated_at: instant(preferences.updated_at)?,
        };
        let devices = document
            .devices
            .into_iter()
            .map(|device| {
                Ok(DeviceRow {
                    id: device.id,
                    user_id,
                    token: device.token,
                    platform: device.platform,
                    active: device.active,
                    created_at: instant(device.created_at)?,
                    updated_at: instant(device.updated_at)?,
                    last_seen_at: instant(device.last_seen_at)?,
                })
            })
            .collect::<Result<Vec<_>, RepositoryError>>()?;
        let choices = document.choices.into_iter().map(|choice| ChoiceRow {
            user_id,
            category_key: choice.category_key,
            email: choice.email,
            push: choice.push,
        });
        let categories = choices_by_user(choices)?.remove(&user_id).unwrap_or_default();
        profile_from_rows(user, preferences, categories, devices)
    }
}

/// An instant from its microseconds since the Unix epoch, in UTC as the join reads it.
fn instant(micros: i64) -> Result<OffsetDateTime, RepositoryError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000).map_err(|e| corrupt_row("instant", e))
}

/// A clock time from its microseconds since midnight. PostgreSQL's `time` also holds
/// `24:00`, which reads as midnight (as the join reads it).
fn clock_time(micros: i64) -> Result<Time, RepositoryError> {
    const DAY: u64 = 86_400_000_000;
    let out_of_range = || corrupt_row("clock time", micros);
    let micros = u64::try_from(micros).map_err(|_| out_of_range())?;
    let micros = if micros == DAY { 0 } else { micros };
    let (seconds, micro) = (micros / 1_000_000, micros % 1_000_000);
    let (hour, minute, second) = (seconds / 3_600, seconds / 60 % 60, seconds % 60);
    let part = |value: u64| u8::try_from(value).map_err(|_| out_of_range());
    let micro = u32::try_from(micro).map_err(|_| out_of_range())?;
    Time::from_hms_micro(part(hour)?, part(minute)?, part(second)?, micro).map_err(|e| corrupt_row("clock time", e))
}

#[cfg(test)]
mod tests {
    use super::{clock_time, instant};

    #[test]
    fn instants_and_clock_times_are_read_exactly_and_out_of_range_ones_refused() {
        assert_eq!(instant(1_796_290_741_528_975).expect("instant").unix_timestamp_nanos(), 1_796_290_741_528_975_000);
        assert_eq!(clock_time(27_015_500_000).expect("time"), time::macros::time!(07:30:15.5));
        assert_eq!(clock_time(0).expect("midnight"), time::Time::MIDNIGHT);
        assert_eq!(clock_time(86_400_000_000).expect("24:00"), time::Time::MIDNIGHT);
        assert!(clock_time(86_400_000_001).is_err());
        assert!(clock_time(-1).is_err());
    }
}
