//! Notification preferences: per-channel opt-in and quiet hours in the user's time zone.

use std::fmt;

use time::{OffsetDateTime, Time};

use crate::error::InvalidValue;

/// A wall-clock time of day at minute precision, written strictly as `HH:MM`
/// (`00:00`–`23:59`). PostgreSQL would accept `24:00` and `7:5`; this type does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClockTime(Time);

impl ClockTime {
    /// Parses exactly two digits, a colon and two digits.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const INVALID: InvalidValue = InvalidValue::new("must be a time of day written HH:MM, from 00:00 to 23:59");
        let bytes = raw.as_bytes();
        if bytes.len() != 5 || bytes[2] != b':' {
            return Err(INVALID);
        }
        let two_digits = |pair: &[u8]| -> Option<u8> {
            match pair {
                [tens @ b'0'..=b'9', units @ b'0'..=b'9'] => Some((tens - b'0') * 10 + (units - b'0')),
                _ => None,
            }
        };
        let (Some(hour), Some(minute)) = (two_digits(&bytes[0..2]), two_digits(&bytes[3..5])) else {
            return Err(INVALID);
        };
        Time::from_hms(hour, minute, 0).map(Self).map_err(|_| INVALID)
    }

    /// Builds a clock time from a stored time of day, dropping seconds.
    pub fn from_time(time: Time) -> Self {
        Self(Time::from_hms(time.hour(), time.minute(), 0).unwrap_or(time))
    }

    /// The time of day.
    pub const fn as_time(&self) -> Time {
        self.0
    }
}

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0.hour(), self.0.minute())
    }
}

/// A daily window `[start, end)` of local wall-clock time during which nothing is sent.
/// It may wrap midnight (`22:00`–`07:00`); an empty window (`start == end`) is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuietHours {
    start: ClockTime,
    end: ClockTime,
}

impl QuietHours {
    /// Checks that the window is not empty.
    pub fn new(start: ClockTime, end: ClockTime) -> Result<Self, InvalidValue> {
        if start == end {
            return Err(InvalidValue::new("quiet hours must not start and end at the same time"));
        }
        Ok(Self { start, end })
    }

    /// When the window opens.
    pub const fn start(&self) -> ClockTime {
        self.start
    }

    /// When the window closes (exclusive).
    pub const fn end(&self) -> ClockTime {
        self.end
    }

    /// Whether the window spans midnight.
    pub fn wraps_midnight(&self) -> bool {
        self.end < self.start
    }

    /// Whether a local wall-clock time falls inside the window.
    pub fn contains(&self, local: ClockTime) -> bool {
        if self.wraps_midnight() {
            local >= self.start || local < self.end
        } else {
            local >= self.start && local < self.end
        }
    }
}

/// An IANA time zone name (`Africa/Lagos`, `UTC`), checked against the bundled time zone
/// database and stored in its canonical spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TimeZoneName(String);

impl TimeZoneName {
    /// Looks `raw` up in the time zone database.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const UNKNOWN: InvalidValue = InvalidValue::new("must be an IANA time zone name such as Africa/Lagos or UTC");
        // Real names are short ASCII; anything else is not worth a lookup.
        if raw.is_empty() || raw.len() > 64 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(UNKNOWN);
        }
        let zone = jiff::tz::TimeZone::get(raw).map_err(|_| UNKNOWN)?;
        let canonical = zone.iana_name().unwrap_or(raw);
        Ok(Self(canonical.to_owned()))
    }

    /// Coordinated Universal Time, the default.
    pub fn utc() -> Self {
        Self("UTC".to_owned())
    }

    /// The canonical name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TimeZoneName {
    fn default() -> Self {
        Self::utc()
    }
}

/// What a user agreed to receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    /// Email notifications opted in.
    pub email: bool,
    /// Push notifications opted in.
    pub push: bool,
    /// The daily quiet window, if any.
    pub quiet_hours: Option<QuietHours>,
    /// The zone in which quiet hours are read.
    pub timezone: TimeZoneName,
    /// When the preferences last changed.
    pub updated_at: OffsetDateTime,
}

impl Preferences {
    /// The defaults of a new user: every channel on, no quiet hours, UTC.
    pub fn defaults(now: OffsetDateTime) -> Self {
        Self { email: true, push: true, quiet_hours: None, timezone: TimeZoneName::utc(), updated_at: now }
    }

    /// These preferences with `update` applied; omitted fields stay as they are.
    pub fn with_update(mut self, update: &PreferencesUpdate, now: OffsetDateTime) -> Self {
        if let Some(email) = update.email {
            self.email = email;
        }
        if let Some(push) = update.push {
            self.push = push;
        }
        if let Some(quiet_hours) = update.quiet_hours {
            self.quiet_hours = quiet_hours;
        }
        if let Some(timezone) = &update.timezone {
            self.timezone = timezone.clone();
        }
        self.updated_at = now;
        self
    }
}

/// A partial change of preferences; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreferencesUpdate {
    /// Opt in to (or out of) email.
    pub email: Option<bool>,
    /// Opt in to (or out of) push.
    pub push: Option<bool>,
    /// `Some(None)` clears quiet hours; `Some(Some(_))` sets them.
    pub quiet_hours: Option<Option<QuietHours>>,
    /// A new time zone.
    pub timezone: Option<TimeZoneName>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> ClockTime {
        ClockTime::parse(raw).unwrap()
    }

    #[test]
    fn clock_time_accepts_only_strict_hh_mm() {
        assert_eq!(at("00:00").to_string(), "00:00");
        assert_eq!(at("23:59").to_string(), "23:59");
        for bad in ["24:00", "7:5", "07:5", "7:05", "12:60", "12-00", "12:00:00", "", "１２:００", "+1:00"] {
            assert!(ClockTime::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn quiet_hours_reject_an_empty_window() {
        assert!(QuietHours::new(at("22:00"), at("22:00")).is_err());
    }

    #[test]
    fn quiet_hours_contain_start_but_not_end_and_may_wrap_midnight() {
        let night = QuietHours::new(at("22:00"), at("07:00")).unwrap();
        assert!(night.wraps_midnight());
        assert!(night.contains(at("22:00")));
        assert!(night.contains(at("03:00")));
        assert!(!night.contains(at("07:00")));
        assert!(!night.contains(at("12:00")));

        let lunch = QuietHours::new(at("12:00"), at("13:00")).unwrap();
        assert!(!lunch.wraps_midnight());
        assert!(lunch.contains(at("12:30")));
        assert!(!lunch.contains(at("13:00")));
        assert!(!lunch.contains(at("11:59")));
    }

    #[test]
    fn time_zone_names_are_checked_against_the_database() {
        assert_eq!(TimeZoneName::parse("Africa/Lagos").unwrap().as_str(), "Africa/Lagos");
        assert_eq!(TimeZoneName::parse("UTC").unwrap().as_str(), "UTC");
        for bad in ["Mars/Olympus", "", "Africa/Lagos\0", "../../etc/passwd", "UTC "] {
            assert!(TimeZoneName::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn an_update_changes_only_the_fields_it_names() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let update = PreferencesUpdate { push: Some(false), ..PreferencesUpdate::default() };
        let updated = Preferences::defaults(now).with_update(&update, now);
        assert!(updated.email);
        assert!(!updated.push);
        assert_eq!(updated.quiet_hours, None);
    }
}
