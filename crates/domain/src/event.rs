//! Change events: what every write records in its own transaction (the transactional
//! outbox), so that an event exists if and only if its change committed, and what the relay
//! publishes and the pull feed serves, as CloudEvents 1.0 in structured JSON.
//!
//! A write builds its [`NewEvent`]s from the state it just wrote (the constructors here);
//! the store gives each its per-subject `sequence` and its instant in the same transaction.
//! `data` is the new state of what changed, never a password, hash or key.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::category::{Category, CategoryChoice, CategoryKey};
use crate::device::Device;
use crate::preferences::Preferences;
use crate::user::{User, UserId, UserProfile};

/// The `source` of every event.
pub const SOURCE: &str = "/user-service";

/// What happened. The name is the CloudEvents `type` and the routing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// A user registered (`data`: the profile).
    UserCreated,
    /// A user's name, email address or phone number changed (`data`: the user).
    UserUpdated,
    /// A user was erased, with everything of theirs (`data`: the id).
    UserErased,
    /// A user's channel preferences, quiet hours or time zone changed (`data`: preferences).
    PreferencesChanged,
    /// A user's choice in a category changed (`data`: the category and the choice).
    CategoryChoiceChanged,
    /// A device was registered for the user for the first time (`data`: the device).
    DeviceAdded,
    /// A device the user already had was registered again (`data`: the device).
    DeviceRefreshed,
    /// Another user's device was registered by this user (`data`: the device and `from_user`).
    DeviceMoved,
    /// A device was activated (`data`: the device).
    DeviceActivated,
    /// A device was deactivated, e.g. a dead token reported by a sender (`data`: the device).
    DeviceDeactivated,
    /// A device left the user: deleted, or moved to another user (`data`: id, token, reason).
    DeviceRemoved,
    /// A category was added to the catalogue (`data`: the category).
    CategoryCreated,
    /// A category's name, description, criticality or defaults changed (`data`: the category).
    CategoryUpdated,
    /// A category was removed from the catalogue (`data`: its key).
    CategoryRemoved,
}

impl EventType {
    /// Every type, in the order they are documented.
    pub const ALL: [Self; 14] = [
        Self::UserCreated,
        Self::UserUpdated,
        Self::UserErased,
        Self::PreferencesChanged,
        Self::CategoryChoiceChanged,
        Self::DeviceAdded,
        Self::DeviceRefreshed,
        Self::DeviceMoved,
        Self::DeviceActivated,
        Self::DeviceDeactivated,
        Self::DeviceRemoved,
        Self::CategoryCreated,
        Self::CategoryUpdated,
        Self::CategoryRemoved,
    ];

    /// The CloudEvents `type`, also the routing key on the `user.events` exchange.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::UserCreated => "user.created",
            Self::UserUpdated => "user.updated",
            Self::UserErased => "user.erased",
            Self::PreferencesChanged => "user.preferences.changed",
            Self::CategoryChoiceChanged => "user.category_choice.changed",
            Self::DeviceAdded => "user.device.added",
            Self::DeviceRefreshed => "user.device.refreshed",
            Self::DeviceMoved => "user.device.moved",
            Self::DeviceActivated => "user.device.activated",
            Self::DeviceDeactivated => "user.device.deactivated",
            Self::DeviceRemoved => "user.device.removed",
            Self::CategoryCreated => "category.created",
            Self::CategoryUpdated => "category.updated",
            Self::CategoryRemoved => "category.removed",
        }
    }

    /// The type of this name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// Why a device left a user ([`EventType::DeviceRemoved`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalReason {
    /// The device was deleted.
    Deleted,
    /// Another user registered its token.
    MovedToAnotherUser,
}

impl RemovalReason {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::MovedToAnotherUser => "moved",
        }
    }
}

/// The subject of a catalogue event (`categories/<key>`); a user's events have the user's id.
pub fn category_subject(key: &CategoryKey) -> String {
    format!("categories/{}", key.as_str())
}

/// An event a write records: the store adds its sequence and instant in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The stable id (UUIDv7), by which consumers de-duplicate.
    pub id: Uuid,
    /// What happened.
    pub kind: EventType,
    /// Whose change: a user id, or [`category_subject`].
    pub subject: String,
    /// The new state, as JSON text.
    pub data: String,
}

impl NewEvent {
    fn new(kind: EventType, subject: String, data: &Value) -> Self {
        Self { id: Uuid::now_v7(), kind, subject, data: data.to_string() }
    }

    fn of_user(kind: EventType, user: UserId, data: &Value) -> Self {
        Self::new(kind, user.to_string(), data)
    }

    /// `user.created`: the profile as registered.
    pub fn user_created(profile: &UserProfile) -> Self {
        let devices: Vec<Value> = profile.devices.iter().map(device_data).collect();
        let data = json!({
            "user": user_data(&profile.user),
            "preferences": preferences_data(&profile.preferences),
            "devices": devices,
        });
        Self::of_user(EventType::UserCreated, profile.user.id, &data)
    }

    /// `user.updated`: the user's contact details after the change.
    pub fn user_updated(user: &User) -> Self {
        Self::of_user(EventType::UserUpdated, user.id, &user_data(user))
    }

    /// `user.erased`.
    pub fn user_erased(user: UserId) -> Self {
        Self::of_user(EventType::UserErased, user, &json!({ "id": user.to_string() }))
    }

    /// `user.preferences.changed`: the preferences after the change.
    pub fn preferences_changed(user: UserId, preferences: &Preferences) -> Self {
        Self::of_user(EventType::PreferencesChanged, user, &preferences_data(preferences))
    }

    /// `user.category_choice.changed`: the choice now stored (`null` channels follow the
    /// category's defaults; both `null` when the choice was cleared or dropped).
    pub fn category_choice_changed(user: UserId, category: &CategoryKey, choice: CategoryChoice) -> Self {
        let data = json!({ "category": category.as_str(), "email": choice.email, "push": choice.push });
        Self::of_user(EventType::CategoryChoiceChanged, user, &data)
    }

    /// A device event of `device`'s owner: added, refreshed, activated or deactivated.
    pub fn device(kind: EventType, device: &Device) -> Self {
        Self::of_user(kind, device.user_id, &device_data(device))
    }

    /// `user.device.moved`: `device` (now its new owner's) came from `from`.
    pub fn device_moved(device: &Device, from: UserId) -> Self {
        let mut data = device_data(device);
        data["from_user"] = json!(from.to_string());
        Self::of_user(EventType::DeviceMoved, device.user_id, &data)
    }

    /// `user.device.removed`: `device` left `user` (its owner before the change).
    pub fn device_removed(user: UserId, device: &Device, reason: RemovalReason) -> Self {
        let data = json!({
            "id": device.id.to_string(),
            "token": device.token.as_str(),
            "platform": device.platform.as_str(),
            "reason": reason.as_str(),
        });
        Self::of_user(EventType::DeviceRemoved, user, &data)
    }

    /// `category.created` or `category.updated`: the category now.
    pub fn category(kind: EventType, category: &Category) -> Self {
        let data = json!({
            "key": category.key.as_str(),
            "name": category.name.as_str(),
            "description": category.description.as_ref().map(|description| description.as_str()),
            "critical": category.critical,
            "default": { "email": category.defaults.email, "push": category.defaults.push },
        });
        Self::new(kind, category_subject(&category.key), &data)
    }

    /// `category.removed`.
    pub fn category_removed(key: &CategoryKey) -> Self {
        Self::new(EventType::CategoryRemoved, category_subject(key), &json!({ "key": key.as_str() }))
    }
}

/// An RFC 3339 instant, as the API writes them.
fn instant(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

fn user_data(user: &User) -> Value {
    json!({
        "id": user.id.to_string(),
        "name": user.name.as_str(),
        "email": user.email.as_str(),
        "phone": user.phone.as_ref().map(|phone| phone.as_str()),
        "created_at": instant(user.created_at),
        "updated_at": instant(user.updated_at),
    })
}

/// The preferences without their `updated_at` (the event's `time` says when). PostgreSQL's
/// `update_preferences_recorded` builds the same object in SQL; the repository contract
/// suite compares the two stores' events.
pub fn preferences_data(preferences: &Preferences) -> Value {
    json!({
        "email": preferences.email,
        "push": preferences.push,
        "quiet_hours_start": preferences.quiet_hours.map(|window| window.start().to_string()),
        "quiet_hours_end": preferences.quiet_hours.map(|window| window.end().to_string()),
        "timezone": preferences.timezone.as_str(),
    })
}

fn device_data(device: &Device) -> Value {
    json!({
        "id": device.id.to_string(),
        "token": device.token.as_str(),
        "platform": device.platform.as_str(),
        "active": device.active,
        "created_at": instant(device.created_at),
        "updated_at": instant(device.updated_at),
        "last_seen_at": instant(device.last_seen_at),
    })
}

/// An event as recorded: what the relay publishes and the feed serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The stable id (UUIDv7).
    pub id: Uuid,
    /// The CloudEvents `type` ([`EventType::as_str`]), kept as stored.
    pub kind: String,
    /// A user id, or [`category_subject`].
    pub subject: String,
    /// The subject's sequence number: 1 for its first event, one more for each next.
    pub sequence: i64,
    /// When the change was recorded.
    pub time: OffsetDateTime,
    /// The new state, as JSON text.
    pub data: String,
}

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: String,
    source: &'static str,
    #[serde(rename = "type")]
    kind: &'a str,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    /// The sequence extension: a string that sorts as the number does.
    sequence: String,
    data: &'a RawValue,
}

impl ChangeEvent {
    /// The event as CloudEvents 1.0 structured JSON (`application/cloudevents+json`);
    /// `Err` when the stored data is not JSON.
    pub fn to_cloudevent(&self) -> Result<Vec<u8>, serde_json::Error> {
        let data: &RawValue = serde_json::from_str(&self.data)?;
        serde_json::to_vec(&CloudEvent {
            specversion: "1.0",
            id: self.id.to_string(),
            source: SOURCE,
            kind: &self.kind,
            subject: &self.subject,
            time: instant(self.time),
            datacontenttype: "application/json",
            sequence: format!("{:020}", self.sequence),
            data,
        })
    }
}

/// How far the outbox is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Events not yet published (with a broker) or not yet in the feed (without).
    pub pending: u64,
    /// When the oldest of them was recorded.
    pub oldest: Option<OffsetDateTime>,
}

/// What one relay round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRound {
    /// Another instance holds the relay; this one waits.
    Busy,
    /// This instance relayed.
    Relayed {
        /// Events given their feed position.
        sequenced: u64,
        /// Events published and confirmed by the broker.
        published: u64,
        /// Whether more are waiting (run again at once).
        more: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_parses_back_from_its_name() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventType::parse("user.password.changed"), None);
    }

    #[test]
    fn a_cloudevent_carries_the_envelope_and_the_data_as_json() {
        let event = ChangeEvent {
            id: Uuid::now_v7(),
            kind: "user.preferences.changed".into(),
            subject: "0190d7c2-0000-7000-8000-000000000001".into(),
            sequence: 42,
            time: OffsetDateTime::UNIX_EPOCH,
            data: r#"{"email":false}"#.into(),
        };
        let bytes = event.to_cloudevent().unwrap_or_default();
        let parsed: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        assert_eq!(parsed["specversion"], "1.0");
        assert_eq!(parsed["source"], "/user-service");
        assert_eq!(parsed["type"], "user.preferences.changed");
        assert_eq!(parsed["sequence"], "00000000000000000042");
        assert_eq!(parsed["time"], "1970-01-01T00:00:00Z");
        assert_eq!(parsed["data"], json!({ "email": false }));
        assert_eq!(parsed["id"], event.id.to_string());
    }

    #[test]
    fn stored_data_that_is_not_json_is_an_error_not_a_broken_event() {
        let event = ChangeEvent {
            id: Uuid::now_v7(),
            kind: "user.erased".into(),
            subject: "x".into(),
            sequence: 1,
            time: OffsetDateTime::UNIX_EPOCH,
            data: "{not json".into(),
        };
        assert!(event.to_cloudevent().is_err());
    }
}
