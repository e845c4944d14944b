//! Push devices: the tokens that web, iOS and Android push services deliver to.

use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::InvalidValue;
use crate::user::UserId;
use crate::validate::{canonical_uuid, reject_invisible_characters};

/// A device's identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(Uuid);

impl DeviceId {
    /// A fresh, time-ordered identifier.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// The underlying UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for DeviceId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A push token: 1–4096 characters without whitespace or control characters. For web push
/// it is the subscription's endpoint URL, so `/` and `:` are ordinary characters.
///
/// Shared, not copied, when cloned: a token goes into every answer that names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PushToken(Arc<str>);

impl PushToken {
    /// The longest token accepted; FCM and APNs tokens are far shorter, web-push endpoints
    /// stay well below it.
    pub const MAX_LENGTH: usize = 4096;

    /// Checks `raw` as given (tokens are opaque: nothing is trimmed or re-cased).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() {
            return Err(InvalidValue::new("must not be empty"));
        }
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(InvalidValue::new("must not contain whitespace or control characters"));
        }
        reject_invisible_characters(raw)?;
        if raw.chars().nth(Self::MAX_LENGTH).is_some() {
            return Err(InvalidValue::new("must be at most 4096 characters"));
        }
        Ok(Self(raw.into()))
    }

    /// The token.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The push platform a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Web push (the token is the subscription endpoint).
    Web,
    /// Apple Push Notification service.
    Ios,
    /// Firebase Cloud Messaging.
    Android,
    /// A token given at registration without a platform.
    Unknown,
}

impl Platform {
    /// Parses a platform a caller may register a device with (`unknown` is not one).
    pub fn parse_registrable(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "web" => Ok(Self::Web),
            "ios" => Ok(Self::Ios),
            "android" => Ok(Self::Android),
            _ => Err(InvalidValue::new("must be one of web, ios, android")),
        }
    }

    /// Parses any stored platform name.
    pub fn from_stored(raw: &str) -> Option<Self> {
        match raw {
            "unknown" => Some(Self::Unknown),
            other => Self::parse_registrable(other).ok(),
        }
    }

    /// The lower-case name used in storage and in the API.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Web => "web",
            Self::Ios => "ios",
            Self::Android => "android",
            Self::Unknown => "unknown",
        }
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The identifier.
    pub id: DeviceId,
    /// The owner.
    pub user_id: UserId,
    /// The push token, unique across all users.
    pub token: PushToken,
    /// The platform.
    pub platform: Platform,
    /// Whether pushes may be sent to it.
    pub active: bool,
    /// When the token was first registered.
    pub created_at: OffsetDateTime,
    /// When the device last changed (owner, platform or state).
    pub updated_at: OffsetDateTime,
    /// When the token was last registered or refreshed.
    pub last_seen_at: OffsetDateTime,
}

/// A request to register (or refresh) a token for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRegistration {
    /// The token.
    pub token: PushToken,
    /// Its platform.
    pub platform: Platform,
    /// Whether it may receive pushes.
    pub active: bool,
}

/// What a registration does with a `push_token` that another user holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldToken {
    /// Moves it to the new user: a device changing hands, said so by a caller trusted with
    /// devices (a service with `devices.write`).
    Move,
    /// Leaves it with its owner and registers the user without it: an anonymous caller must
    /// never detach a device from its owner.
    Leave,
}

/// The outcome of registering a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredDevice {
    /// The device as stored after the registration.
    pub device: Device,
    /// Whether the token was new (a row was created) rather than refreshed or moved.
    pub created: bool,
    /// The user that held the token before, when it moved from another user.
    pub previous_owner: Option<UserId>,
}

/// How a path names one of a user's devices: by id or by token. A token that arrived
/// through a proxy that merges `//` into `/` still finds its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSelector {
    id: Option<DeviceId>,
    token: String,
}

impl DeviceSelector {
    /// Reads a path segment. Returns `None` when it can name no device at all (empty,
    /// whitespace, NUL, too long), so that such input never reaches storage.
    pub fn parse(raw: &str) -> Option<Self> {
        let token = PushToken::parse(raw).ok()?;
        // Only the canonical spelling names a device by id; any other is read as a token.
        let id = canonical_uuid(raw).map(DeviceId::from);
        Some(Self { id, token: token.as_str().to_owned() })
    }

    /// The id, when the segment is a UUID (it may still be a token too).
    pub const fn id(&self) -> Option<DeviceId> {
        self.id
    }

    /// The segment as a token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The token with runs of `/` merged, to compare with stored tokens merged the same way.
    pub fn merged_slashes_token(&self) -> String {
        merge_slashes(&self.token)
    }
}

/// Replaces every run of `/` with a single `/`.
pub fn merge_slashes(value: &str) -> String {
    let mut merged = String::with_capacity(value.len());
    for c in value.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_urls_and_reject_whitespace_and_oversize() {
        let endpoint = "https://fcm.googleapis.com/fcm/send/abc:DEF_123";
        assert_eq!(PushToken::parse(endpoint).unwrap().as_str(), endpoint);
        for bad in ["", " ", "abc def", "abc\n", "a\0b"] {
            assert!(PushToken::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(PushToken::parse(&"x".repeat(4096)).is_ok());
        assert!(PushToken::parse(&"x".repeat(4097)).is_err());
    }

    #[test]
    fn only_web_ios_and_android_are_registrable() {
        assert_eq!(Platform::parse_registrable("android").unwrap(), Platform::Android);
        assert!(Platform::parse_registrable("unknown").is_err());
        assert!(Platform::parse_registrable("Android").is_err());
        assert_eq!(Platform::from_stored("unknown"), Some(Platform::Unknown));
    }

    #[test]
    fn selector_reads_ids_and_tokens() {
        let id = Uuid::now_v7();
        let by_id = DeviceSelector::parse(&id.to_string()).unwrap();
        assert_eq!(by_id.id(), Some(DeviceId::from(id)));
        assert_eq!(DeviceSelector::parse(&id.to_string().to_uppercase()).unwrap().id(), None);
        let by_token = DeviceSelector::parse("https://push.example.com//send/x").unwrap();
        assert_eq!(by_token.id(), None);
        assert_eq!(by_token.merged_slashes_token(), "https:/push.example.com/send/x");
        assert!(DeviceSelector::parse("").is_none());
        assert!(DeviceSelector::parse("a\0").is_none());
    }
}
