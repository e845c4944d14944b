//! Consent history: an append-only record of every change to what a user agreed to receive
//! and where they can be reached, so that "was this user opted in when we sent on 3 March
//! at 10:02?" has an answer.
//!
//! A store appends the [`ConsentChange`]s of a write in the write's own transaction, with
//! the old value read under the write's lock ([`preferences_changes`], [`contact_changes`],
//! [`choice_changes`], [`device_change`] compute them). [`ConsentState::undo`] walks the
//! history backwards from today's state to rebuild the state at an earlier instant.

use std::collections::BTreeMap;
use std::fmt;

use time::OffsetDateTime;

use crate::category::{CategoryChoice, CategoryChoices, CategoryKey};
use crate::device::DeviceId;
use crate::error::InvalidValue;
use crate::preferences::{ClockTime, Preferences, QuietHours, TimeZoneName};
use crate::user::{EmailAddress, PhoneNumber, User, UserId, UserProfile};

/// What kind of caller made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    /// The user itself (its access token, or its own registration).
    User,
    /// A service that presented a key.
    Service,
    /// A caller that the network vouches for (`TRUST_INTERNAL_NETWORK`).
    Trusted,
}

impl ActorKind {
    /// The name used in the API and the stores.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Service => "service",
            Self::Trusted => "trusted",
        }
    }

    /// Reads a stored name.
    pub fn from_stored(raw: &str) -> Option<Self> {
        match raw {
            "user" => Some(Self::User),
            "service" => Some(Self::Service),
            "trusted" => Some(Self::Trusted),
            _ => None,
        }
    }
}

/// Who made a change: a kind and a non-secret name (a user id, a service key's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The kind of caller.
    pub kind: ActorKind,
    /// Its name; never a secret.
    pub name: String,
}

impl Actor {
    /// The user itself.
    pub fn user(id: UserId) -> Self {
        Self { kind: ActorKind::User, name: id.to_string() }
    }
}

/// Who asked for a write, and in which request: what each history row of the write says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Provenance {
    /// The caller; `None` is the user the change is about, acting without a credential (its
    /// own registration).
    pub actor: Option<Actor>,
    /// The request's id (`X-Request-Id`), at most 128 printable ASCII characters.
    pub request_id: Option<String>,
}

impl Provenance {
    /// The actor of a change to `user`'s consent.
    pub fn actor_for(&self, user: UserId) -> Actor {
        self.actor.clone().unwrap_or_else(|| Actor::user(user))
    }
}

/// A recorded field of a user's consent or reachability.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConsentField {
    /// The global switch of a channel (`preferences.email`, `preferences.push`).
    Channel(ChannelName),
    /// The quiet window (`preferences.quiet_hours`), written `HH:MM-HH:MM`.
    QuietHours,
    /// The time zone of quiet hours (`preferences.timezone`).
    TimeZone,
    /// The email address (`contact.email`).
    ContactEmail,
    /// The phone number (`contact.phone`).
    ContactPhone,
    /// The user's choice for a channel in a category (`categories.<key>.<channel>`); unset
    /// follows the category's default.
    Category(CategoryKey, ChannelName),
    /// Whether a device of the user is active (`devices.<id>.active`); unset is no such
    /// device (not registered yet, removed, or moved to another user).
    DeviceActive(DeviceId),
}

/// A channel, ordered, for [`ConsentField`] (`eligibility::Channel` converts into it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChannelName {
    /// Email.
    Email,
    /// Push.
    Push,
}

impl ChannelName {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Push => "push",
        }
    }

    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "email" => Some(Self::Email),
            "push" => Some(Self::Push),
            _ => None,
        }
    }
}

impl ConsentField {
    /// Whether the field's values are booleans (else text).
    pub const fn holds_flag(&self) -> bool {
        matches!(self, Self::Channel(_) | Self::Category(..) | Self::DeviceActive(_))
    }

    /// Reads the stored name.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const UNKNOWN: InvalidValue = InvalidValue::new("not a consent field");
        let field = match raw {
            "preferences.email" => Self::Channel(ChannelName::Email),
            "preferences.push" => Self::Channel(ChannelName::Push),
            "preferences.quiet_hours" => Self::QuietHours,
            "preferences.timezone" => Self::TimeZone,
            "contact.email" => Self::ContactEmail,
            "contact.phone" => Self::ContactPhone,
            _ => {
                if let Some(rest) = raw.strip_prefix("categories.") {
                    let (key, channel) = rest.rsplit_once('.').ok_or(UNKNOWN)?;
                    let channel = ChannelName::parse(channel).ok_or(UNKNOWN)?;
                    Self::Category(CategoryKey::parse(key)?, channel)
                } else if let Some(rest) = raw.strip_prefix("devices.") {
                    let id = rest.strip_suffix(".active").ok_or(UNKNOWN)?;
                    Self::DeviceActive(DeviceId::from(uuid::Uuid::try_parse(id).map_err(|_| UNKNOWN)?))
                } else {
                    return Err(UNKNOWN);
                }
            }
        };
        Ok(field)
    }
}

impl fmt::Display for ConsentField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(channel) => write!(f, "preferences.{}", channel.as_str()),
            Self::QuietHours => f.write_str("preferences.quiet_hours"),
            Self::TimeZone => f.write_str("preferences.timezone"),
            Self::ContactEmail => f.write_str("contact.email"),
            Self::ContactPhone => f.write_str("contact.phone"),
            Self::Category(key, channel) => write!(f, "categories.{key}.{}", channel.as_str()),
            Self::DeviceActive(id) => write!(f, "devices.{id}.active"),
        }
    }
}

/// A recorded value: unset, a flag, or text (a time zone, an address, `22:00-07:00`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentValue {
    /// No value (no quiet hours, no phone, the category's default, no such device).
    Unset,
    /// A boolean field's value.
    Flag(bool),
    /// A text field's value.
    Text(String),
}

impl ConsentValue {
    /// The value as a store keeps it (`NULL`, `true`/`false`, the text).
    pub fn to_stored(&self) -> Option<String> {
        match self {
            Self::Unset => None,
            Self::Flag(flag) => Some(flag.to_string()),
            Self::Text(text) => Some(text.clone()),
        }
    }

    /// Reads a stored value of `field`.
    pub fn from_stored(field: &ConsentField, stored: Option<&str>) -> Result<Self, InvalidValue> {
        match stored {
            None => Ok(Self::Unset),
            Some(raw) if field.holds_flag() => match raw {
                "true" => Ok(Self::Flag(true)),
                "false" => Ok(Self::Flag(false)),
                _ => Err(InvalidValue::new("a flag is stored as true or false")),
            },
            Some(raw) => Ok(Self::Text(raw.to_owned())),
        }
    }

    fn flag(value: Option<bool>) -> Self {
        value.map_or(Self::Unset, Self::Flag)
    }

    fn text(value: Option<&str>) -> Self {
        value.map_or(Self::Unset, |text| Self::Text(text.to_owned()))
    }

    fn window(quiet_hours: Option<&QuietHours>) -> Self {
        Self::text(quiet_hours.map(|window| format!("{}-{}", window.start(), window.end())).as_deref())
    }
}

/// One change of one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentChange {
    /// The field.
    pub field: ConsentField,
    /// Its value before.
    pub old: ConsentValue,
    /// Its value after.
    pub new: ConsentValue,
}

impl ConsentChange {
    fn between(field: ConsentField, old: ConsentValue, new: ConsentValue) -> Option<Self> {
        (old != new).then_some(Self { field, old, new })
    }
}

/// A row of a user's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    /// The row's position in the store (increasing with each append; the cursor).
    pub sequence: i64,
    /// When the change was made: never earlier than the user's previous row.
    pub at: OffsetDateTime,
    /// What changed.
    pub change: ConsentChange,
    /// Who changed it.
    pub actor: Actor,
    /// In which request.
    pub request_id: Option<String>,
}

/// A page of a user's history, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// The rows.
    pub records: Vec<ConsentRecord>,
    /// The cursor of the next (older) page, if there is one.
    pub next_cursor: Option<i64>,
}

/// The changes of a preferences write.
pub fn preferences_changes(old: &Preferences, new: &Preferences) -> Vec<ConsentChange> {
    let Preferences { email, push, quiet_hours, timezone, updated_at: _ } = new;
    [
        ConsentChange::between(
            ConsentField::Channel(ChannelName::Email),
            ConsentValue::Flag(old.email),
            ConsentValue::Flag(*email),
        ),
        ConsentChange::between(
            ConsentField::Channel(ChannelName::Push),
            ConsentValue::Flag(old.push),
            ConsentValue::Flag(*push),
        ),
        ConsentChange::between(
            ConsentField::QuietHours,
            ConsentValue::window(old.quiet_hours.as_ref()),
            ConsentValue::window(quiet_hours.as_ref()),
        ),
        ConsentChange::between(
            ConsentField::TimeZone,
            ConsentValue::text(Some(old.timezone.as_str())),
            ConsentValue::text(Some(timezone.as_str())),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The changes of a contact write (the name is not a consent).
pub fn contact_changes(old: &User, new: &User) -> Vec<ConsentChange> {
    [
        ConsentChange::between(
            ConsentField::ContactEmail,
            ConsentValue::text(Some(old.email.as_str())),
            ConsentValue::text(Some(new.email.as_str())),
        ),
        ConsentChange::between(
            ConsentField::ContactPhone,
            ConsentValue::text(old.phone.as_ref().map(PhoneNumber::as_str)),
            ConsentValue::text(new.phone.as_ref().map(PhoneNumber::as_str)),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The changes of a user's choice in a category (`CategoryChoice::default()` is "no choice").
pub fn choice_changes(key: &CategoryKey, old: CategoryChoice, new: CategoryChoice) -> Vec<ConsentChange> {
    [
        ConsentChange::between(
            ConsentField::Category(key.clone(), ChannelName::Email),
            ConsentValue::flag(old.email),
            ConsentValue::flag(new.email),
        ),
        ConsentChange::between(
            ConsentField::Category(key.clone(), ChannelName::Push),
            ConsentValue::flag(old.push),
            ConsentValue::flag(new.push),
        ),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The change of a device's state for one user (`None`: the user has no such device).
pub fn device_change(device: DeviceId, old: Option<bool>, new: Option<bool>) -> Option<ConsentChange> {
    ConsentChange::between(ConsentField::DeviceActive(device), ConsentValue::flag(old), ConsentValue::flag(new))
}

/// The changes that a registration makes: every field set, from unset to its first value.
pub fn registration_changes(user: &User, preferences: &Preferences) -> Vec<ConsentChange> {
    let Preferences { email, push, quiet_hours, timezone, updated_at: _ } = preferences;
    [
        (ConsentField::Channel(ChannelName::Email), ConsentValue::Flag(*email)),
        (ConsentField::Channel(ChannelName::Push), ConsentValue::Flag(*push)),
        (ConsentField::QuietHours, ConsentValue::window(quiet_hours.as_ref())),
        (ConsentField::TimeZone, ConsentValue::text(Some(timezone.as_str()))),
        (ConsentField::ContactEmail, ConsentValue::text(Some(user.email.as_str()))),
        (ConsentField::ContactPhone, ConsentValue::text(user.phone.as_ref().map(PhoneNumber::as_str))),
    ]
    .into_iter()
    .filter_map(|(field, first)| ConsentChange::between(field, ConsentValue::Unset, first))
    .collect()
}

/// What a user agreed to and where they could be reached, at one instant: today's state,
/// or one rebuilt from the history by [`ConsentState::undo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentState {
    /// Channel switches, quiet hours and time zone (`updated_at` is not rebuilt).
    pub preferences: Preferences,
    /// The user's own category choices.
    pub categories: CategoryChoices,
    /// The email address.
    pub email: Option<EmailAddress>,
    /// The phone number.
    pub phone: Option<PhoneNumber>,
    /// The user's devices and whether each is active.
    pub devices: BTreeMap<DeviceId, bool>,
}

impl ConsentState {
    /// Today's state of a profile read from the store (every device, active or not).
    pub fn of(profile: &UserProfile) -> Self {
        Self {
            preferences: profile.preferences.clone(),
            categories: profile.categories.clone(),
            email: Some(profile.user.email.clone()),
            phone: profile.user.phone.clone(),
            devices: profile.devices.iter().map(|device| (device.id, device.active)).collect(),
        }
    }

    /// Whether any device was active.
    pub fn has_active_device(&self) -> bool {
        self.devices.values().any(|active| *active)
    }

    /// Takes back one change: the field gets the change's old value. Undoing every change
    /// made after an instant, newest first, gives the state at that instant.
    pub fn undo(&mut self, change: &ConsentChange) -> Result<(), InvalidValue> {
        const CORRUPT: InvalidValue = InvalidValue::new("a recorded value does not fit its field");
        let old = &change.old;
        let flag = || match old {
            ConsentValue::Unset => Ok(None),
            ConsentValue::Flag(flag) => Ok(Some(*flag)),
            ConsentValue::Text(_) => Err(CORRUPT),
        };
        let text = || match old {
            ConsentValue::Unset => Ok(None),
            ConsentValue::Text(text) => Ok(Some(text.as_str())),
            ConsentValue::Flag(_) => Err(CORRUPT),
        };
        match &change.field {
            // An unset switch is a time before registration: nothing was allowed then.
            ConsentField::Channel(ChannelName::Email) => self.preferences.email = flag()?.unwrap_or(false),
            ConsentField::Channel(ChannelName::Push) => self.preferences.push = flag()?.unwrap_or(false),
            ConsentField::QuietHours => self.preferences.quiet_hours = text()?.map(parse_window).transpose()?,
            ConsentField::TimeZone => {
                self.preferences.timezone = text()?.map(TimeZoneName::parse).transpose()?.unwrap_or_default();
            }
            ConsentField::ContactEmail => self.email = text()?.map(EmailAddress::parse).transpose()?,
            ConsentField::ContactPhone => self.phone = text()?.map(PhoneNumber::parse).transpose()?,
            ConsentField::Category(key, channel) => {
                let choice = self.categories.entry(key.clone()).or_default();
                match channel {
                    ChannelName::Email => choice.email = flag()?,
                    ChannelName::Push => choice.push = flag()?,
                }
                if choice.is_empty() {
                    self.categories.remove(key);
                }
            }
            ConsentField::DeviceActive(device) => match flag()? {
                Some(active) => {
                    self.devices.insert(*device, active);
                }
                None => {
                    self.devices.remove(device);
                }
            },
        }
        Ok(())
    }
}

/// Reads `HH:MM-HH:MM`.
fn parse_window(raw: &str) -> Result<QuietHours, InvalidValue> {
    let (start, end) = raw.split_once('-').ok_or(InvalidValue::new("a quiet window is written HH:MM-HH:MM"))?;
    QuietHours::new(ClockTime::parse(start)?, ClockTime::parse(end)?)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn preferences() -> Preferences {
        Preferences::defaults(datetime!(2026-01-01 00:00 UTC))
    }

    fn window(raw: &str) -> QuietHours {
        parse_window(raw).unwrap()
    }

    #[test]
    fn fields_round_trip_through_their_stored_names() {
        let fields = [
            ConsentField::Channel(ChannelName::Email),
            ConsentField::Channel(ChannelName::Push),
            ConsentField::QuietHours,
            ConsentField::TimeZone,
            ConsentField::ContactEmail,
            ConsentField::ContactPhone,
            ConsentField::Category(CategoryKey::parse("order-updates").unwrap(), ChannelName::Push),
            ConsentField::DeviceActive(DeviceId::generate()),
        ];
        for field in fields {
            assert_eq!(ConsentField::parse(&field.to_string()).unwrap(), field);
        }
        for bad in ["", "preferences.sms", "categories.Marketing.email", "categories.x.sms", "devices.nope.active"] {
            assert!(ConsentField::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let flag = ConsentField::Channel(ChannelName::Email);
        assert_eq!(ConsentValue::from_stored(&flag, Some("false")).unwrap(), ConsentValue::Flag(false));
        assert!(ConsentValue::from_stored(&flag, Some("no")).is_err());
        assert_eq!(ConsentValue::from_stored(&ConsentField::TimeZone, None).unwrap(), ConsentValue::Unset);
    }

    #[test]
    fn a_preferences_write_records_only_the_fields_it_changed() {
        let old = preferences();
        let mut new = old.clone();
        new.push = false;
        new.quiet_hours = Some(window("22:00-07:00"));
        let changes = preferences_changes(&old, &new);
        assert_eq!(
            changes,
            [
                ConsentChange {
                    field: ConsentField::Channel(ChannelName::Push),
                    old: ConsentValue::Flag(true),
                    new: ConsentValue::Flag(false),
                },
                ConsentChange {
                    field: ConsentField::QuietHours,
                    old: ConsentValue::Unset,
                    new: ConsentValue::Text("22:00-07:00".into()),
                },
            ]
        );
        assert!(preferences_changes(&new, &new).is_empty());
    }

    #[test]
    fn undoing_the_changes_newest_first_rebuilds_the_earlier_state() {
        let key = CategoryKey::parse("marketing").unwrap();
        let device = DeviceId::generate();
        let start = ConsentState {
            preferences: preferences(),
            categories: CategoryChoices::new(),
            email: Some(EmailAddress::parse("ada@example.com").unwrap()),
            phone: None,
            devices: BTreeMap::from([(device, true)]),
        };
        let mut later = start.clone();
        later.preferences.email = false;
        later.preferences.quiet_hours = Some(window("23:00-06:00"));
        later.preferences.timezone = TimeZoneName::parse("Europe/Berlin").unwrap();
        later.categories.insert(key.clone(), CategoryChoice { email: None, push: Some(false) });
        later.phone = Some(PhoneNumber::parse("+2348012345678").unwrap());
        later.devices.insert(device, false);

        let mut changes = preferences_changes(&start.preferences, &later.preferences);
        changes.extend(choice_changes(&key, CategoryChoice::default(), later.categories[&key]));
        changes.push(ConsentChange {
            field: ConsentField::ContactPhone,
            old: ConsentValue::Unset,
            new: ConsentValue::Text("+2348012345678".into()),
        });
        changes.extend(device_change(device, Some(true), Some(false)));

        let mut rebuilt = later.clone();
        for change in changes.iter().rev() {
            rebuilt.undo(change).unwrap();
        }
        assert_eq!(rebuilt, start);
    }

    #[test]
    fn a_registration_records_every_field_from_unset() {
        let now = datetime!(2026-01-01 00:00 UTC);
        let user = User {
            id: UserId::generate(),
            name: crate::user::UserName::parse("Ada").unwrap(),
            email: EmailAddress::parse("ada@example.com").unwrap(),
            phone: None,
            created_at: now,
            updated_at: now,
        };
        let changes = registration_changes(&user, &preferences());
        let fields: Vec<String> = changes.iter().map(|change| change.field.to_string()).collect();
        assert_eq!(fields, ["preferences.email", "preferences.push", "preferences.timezone", "contact.email"]);
        assert!(changes.iter().all(|change| change.old == ConsentValue::Unset));
    }

    #[test]
    fn a_value_that_does_not_fit_its_field_is_an_error_not_a_guess() {
        let mut state = ConsentState {
            preferences: preferences(),
            categories: CategoryChoices::new(),
            email: None,
            phone: None,
            devices: BTreeMap::new(),
        };
        let corrupt = ConsentChange {
            field: ConsentField::Channel(ChannelName::Email),
            old: ConsentValue::Text("yes".into()),
            new: ConsentValue::Flag(true),
        };
        assert!(state.undo(&corrupt).is_err());
        let bad_window = ConsentChange {
            field: ConsentField::QuietHours,
            old: ConsentValue::Text("22:00".into()),
            new: ConsentValue::Unset,
        };
        assert!(state.undo(&bad_window).is_err());
    }
}
