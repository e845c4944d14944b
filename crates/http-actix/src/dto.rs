//! Request and response bodies, and their one-step conversion into domain values.
//!
//! Requests refuse unknown fields (`deny_unknown_fields`), so nobody can set `id`,
//! `password_hash` or similar by adding fields. `into_domain` parses every field into the
//! domain's value objects, which hold the rules of each value (once, for every caller of the
//! domain), and reports all invalid ones at once. The rules of a request's shape alone (how
//! many ids a bulk request may name) are declared on the DTO with garde, and checked by
//! [`JsonBody`](crate::extract::JsonBody) into the same `details` list; DTOs without such
//! rules say `#[garde(allow_unvalidated)]`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use apistos::ApiComponent;
use domain::category::{CategoryChoice, CategoryChoices, CategoryKey, ResolvedChoice};
use domain::device::{Device, DeviceRegistration, HeldToken, Platform, PushToken};
use domain::eligibility::{Channel, SendingProfile, Targets};
use domain::ports::ProfileEncoder;
use domain::preferences::{ClockTime, Preferences, PreferencesUpdate, QuietHours, TimeZoneName};
use domain::service::PreferencesOverview;
use domain::user::{ContactUpdate, EmailAddress, NewUser, Password, PhoneNumber, User, UserId, UserName, UserProfile};
use domain::{FieldError, InvalidValue};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::error::ApiError;

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(crate) fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Collects field errors while parsing a request.
#[derive(Default)]
struct Fields {
    errors: Vec<FieldError>,
}

impl Fields {
    /// Parses one field, remembering its error.
    fn parse<T>(&mut self, field: impl Into<Cow<'static, str>>, result: Result<T, InvalidValue>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.push(FieldError::new(field, error));
                None
            }
        }
    }

    /// Parses an optional field.
    fn parse_optional<T>(
        &mut self,
        field: impl Into<Cow<'static, str>>,
        result: Option<Result<T, InvalidValue>>,
    ) -> Option<T> {
        result.and_then(|result| self.parse(field, result))
    }

    /// Fails with every collected error, if any.
    fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() { Ok(()) } else { Err(ApiError::validation(self.errors)) }
    }
}

/// Formats a timestamp as RFC 3339 UTC.
pub(crate) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------

/// Preferences to set; omitted fields keep their value (defaults at registration).
#[derive(Debug, Default, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct PreferencesRequest {
    /// Opt in to email notifications.
    pub email: Option<bool>,
    /// Opt in to push notifications.
    pub push: Option<bool>,
    /// Start of the daily quiet window, `HH:MM` in `timezone`; set together with
    /// `quiet_hours_end`, or both `null` to clear.
    #[serde(default, deserialize_with = "nullable")]
    #[schemars(with = "Option<String>", regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub quiet_hours_start: Option<Option<String>>,
    /// End of the daily quiet window (exclusive), `HH:MM`; may be earlier than the start
    /// (the window wraps midnight), never equal to it.
    #[serde(default, deserialize_with = "nullable")]
    #[schemars(with = "Option<String>", regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub quiet_hours_end: Option<Option<String>>,
    /// IANA time zone name in which quiet hours are read.
    pub timezone: Option<String>,
}

impl PreferencesRequest {
    fn parse_into(self, fields: &mut Fields, prefix: &str) -> PreferencesUpdate {
        let field = |name: &'static str| -> Cow<'static, str> {
            if prefix.is_empty() { Cow::Borrowed(name) } else { Cow::Owned(format!("{prefix}.{name}")) }
        };
        let quiet_hours = match (self.quiet_hours_start, self.quiet_hours_end) {
            (None, None) => None,
            (Some(None), Some(None)) => Some(None),
            (Some(Some(start)), Some(Some(end))) => {
                let start = fields.parse(field("quiet_hours_start"), ClockTime::parse(&start));
                let end = fields.parse(field("quiet_hours_end"), ClockTime::parse(&end));
                match (start, end) {
                    (Some(start), Some(end)) => {
                        fields.parse(field("quiet_hours"), QuietHours::new(start, end)).map(Some)
                    }
                    _ => None,
                }
            }
            _ => {
                fields.errors.push(FieldError::new(
                    field("quiet_hours"),
                    InvalidValue::new("quiet_hours_start and quiet_hours_end must be set together or both null"),
                ));
                None
            }
        };
        PreferencesUpdate {
            email: self.email,
            push: self.push,
            quiet_hours,
            timezone: fields.parse_optional(field("timezone"), self.timezone.as_deref().map(TimeZoneName::parse)),
        }
    }

    /// Parses a preferences update.
    pub fn into_domain(self) -> Result<PreferencesUpdate, ApiError> {
        let mut fields = Fields::default();
        let update = self.parse_into(&mut fields, "");
        fields.finish()?;
        Ok(update)
    }
}

/// A registration.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct RegisterUserRequest {
    /// Display name, 1–100 characters.
    pub name: String,
    /// Email address, unique (case-insensitively) across users.
    pub email: String,
    /// Password, 8–128 characters; stored only as an argon2id hash.
    pub password: String,
    /// Phone number in E.164 form.
    pub phone: Option<String>,
    /// A push token to register as a device of platform `unknown`. A token that another user
    /// holds is moved here only when a service with `devices.write` registers; otherwise the
    /// user is registered without it (the answer's message says so).
    pub push_token: Option<String>,
    /// Preferences that differ from the defaults (email and push on, no quiet hours, UTC).
    pub preferences: Option<PreferencesRequest>,
}

impl RegisterUserRequest {
    /// Parses every field; `if_token_held` says what to do with a `push_token` another user
    /// holds (it depends on who registers).
    pub fn into_domain(self, if_token_held: HeldToken) -> Result<NewUser, ApiError> {
        let mut fields = Fields::default();
        let name = fields.parse("name", UserName::parse(&self.name));
        let email = fields.parse("email", EmailAddress::parse(&self.email));
        let password = fields.parse("password", Password::parse(&self.password));
        let phone = fields.parse_optional("phone", self.phone.as_deref().map(PhoneNumber::parse));
        let push_token = fields.parse_optional("push_token", self.push_token.as_deref().map(PushToken::parse));
        let preferences = self.preferences.unwrap_or_default().parse_into(&mut fields, "preferences");
        fields.finish()?;
        match (name, email, password) {
            (Some(name), Some(email), Some(password)) => {
                Ok(NewUser { name, email, password, phone, push_token, if_token_held, preferences })
            }
            _ => Err(ApiError::validation(Vec::new())),
        }
    }
}

/// A change of contact details; omitted fields stay as they are.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct UpdateContactRequest {
    /// New display name.
    pub name: Option<String>,
    /// New email address.
    pub email: Option<String>,
    /// New phone number (E.164), or `null` to remove it.
    #[serde(default, deserialize_with = "nullable")]
    #[schemars(with = "Option<String>")]
    pub phone: Option<Option<String>>,
}

impl UpdateContactRequest {
    /// Parses every given field.
    pub fn into_domain(self) -> Result<ContactUpdate, ApiError> {
        let mut fields = Fields::default();
        let name = fields.parse_optional("name", self.name.as_deref().map(UserName::parse));
        let email = fields.parse_optional("email", self.email.as_deref().map(EmailAddress::parse));
        let phone = match self.phone {
            None => None,
            Some(None) => Some(None),
            Some(Some(phone)) => fields.parse("phone", PhoneNumber::parse(&phone)).map(Some),
        };
        fields.finish()?;
        Ok(ContactUpdate { name, email, phone })
    }
}

/// A password change.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct ChangePasswordRequest {
    /// The current password.
    pub current_password: String,
    /// The new password, 8–128 characters.
    pub new_password: String,
}

impl ChangePasswordRequest {
    /// Parses both passwords (lengths are checked before anything is hashed).
    pub fn into_domain(self) -> Result<(Password, Password), ApiError> {
        let mut fields = Fields::default();
        let current = fields.parse("current_password", Password::parse(&self.current_password));
        let new = fields.parse("new_password", Password::parse(&self.new_password));
        fields.finish()?;
        match (current, new) {
            (Some(current), Some(new)) => Ok((current, new)),
            _ => Err(ApiError::validation(Vec::new())),
        }
    }
}

/// A device registration (an upsert by token).
#[derive(Debug, Deserialize, JsonSchema, ApiComponent, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct RegisterDeviceRequest {
    /// The push token (for web push, the subscription endpoint URL), 1–4096 characters.
    pub token: String,
    /// `web`, `ios` or `android`.
    #[schemars(schema_with = "platform_schema")]
    pub platform: String,
    /// Whether pushes may be sent to it (default true).
    pub active: Option<bool>,
}

impl RegisterDeviceRequest {
    /// Parses every field.
    pub fn into_domain(self) -> Result<DeviceRegistration, ApiError> {
        let mut fields = Fields::default();
        let token = fields.parse("token", PushToken::parse(&self.token));
        let platform = fields.parse("platform", Platform::parse_registrable(&self.platform));
        fields.finish()?;
        match (token, platform) {
            (Some(token), Some(platform)) => {
                Ok(DeviceRegistration { token, platform, active: self.active.unwrap_or(true) })
            }
            _ => Err(ApiError::validation(Vec::new())),
        }
    }
}

/// The platforms a caller may register, as an enum in the schema.
fn platform_schema(_generator: &mut schemars::r#gen::SchemaGenerator) -> schemars::schema::Schema {
    string_enum(&["web", "ios", "android"])
}

/// `?active=` of the device list.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent)]
#[serde(deny_unknown_fields)]
pub struct DeviceListQuery {
    /// `true` lists the active devices only, `false` the inactive ones only; omitted lists
    /// all.
    pub active: Option<bool>,
}

/// A user id in a request body, accepted only in canonical spelling (as in paths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserIdField(pub UserId);

impl<'de> Deserialize<'de> for UserIdField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Cow::<'de, str>::deserialize(deserializer)?;
        UserId::parse(&raw).map(Self).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for UserIdField {
    fn schema_name() -> String {
        "UserId".to_owned()
    }

    fn json_schema(_generator: &mut schemars::r#gen::SchemaGenerator) -> schemars::schema::Schema {
        crate::extract::canonical_id_schema()
    }
}

/// `?page=&limit=` of list routes.
#[derive(Debug, Deserialize, JsonSchema, ApiComponent)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Page number, from 1 (default 1).
    pub page: Option<u32>,
    /// Items per page, 1–100 (default 20).
    pub limit: Option<u32>,
}

// ---------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------

/// What a user agreed to receive.
#[derive(Debug, Serialize, Deserialize, JsonSchema, ApiComponent)]
pub struct PreferencesView {
    /// Email opt-in.
    pub email: bool,
    /// Push opt-in.
    pub push: bool,
    /// Start of the quiet window (`HH:MM`), or null.
    pub quiet_hours_start: Option<String>,
    /// End of the quiet window (`HH:MM`, exclusive), or null.
    pub quiet_hours_end: Option<String>,
    /// IANA time zone of the quiet window.
    pub timezone: String,
    /// When the preferences last changed (RFC 3339).
    pub updated_at: String,
}

impl From<&Preferences> for PreferencesView {
    fn from(preferences: &Preferences) -> Self {
        let Preferences { email, push, quiet_hours, timezone, updated_at } = preferences;
        Self {
            email: *email,
            push: *push,
            quiet_hours_start: quiet_hours.map(|window| window.start().to_string()),
            quiet_hours_end: quiet_hours.map(|window| window.end().to_string()),
            timezone: timezone.as_str().to_owned(),
            updated_at: rfc3339(*updated_at),
        }
    }
}

/// A user's own choice in one category.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, ApiComponent)]
pub struct CategoryChoiceView {
    /// Email in this category, or null for the category's default.
    pub email: Option<bool>,
    /// Push in this category, or null for the category's default.
    pub push: Option<bool>,
}

/// A category's setting as it applies to the user.
#[derive(Debug, Serialize, JsonSchema, ApiComponent)]
pub struct ResolvedChoiceView {
    /// Email in this category.
    pub email: bool,
    /// Push in this category.
    pub push: bool,
    /// `user` when the user chose (at least one channel), `default` when the category's
    /// defaults apply.
    #[schemars(schema_with = "choice_source_schema")]
    pub source: &'static str,
}

impl From<ResolvedChoice> for ResolvedChoiceView {
    fn from(resolved: ResolvedChoice) -> Self {
        Self { email: resolved.email, push: resolved.push, source: resolved.source.as_str() }
    }
}

fn choice_source_schema(_generator: &mut schemars::r#gen::SchemaGenerator) -> schemars::schema::Schema {
    string_enum(&["user", "default"])
}

/// A string schema with these values only.
pub(crate) fn string_enum(values: &[&str]) -> schemars::schema::Schema {
    schemars::schema::SchemaObject {
        instance_type: Some(schemars::schema::InstanceType::String.into()),
        enum_values: Some(values.iter().map(|value| (*value).into()).collect()),
        ..Default::default()
    }
    .into()
}

/// Preferences with every category of the catalogue resolved for the user.
#[derive(Debug, Serialize, JsonSchema, ApiComponent)]
pub struct PreferencesOverviewView {
    /// The global channel switches, quiet hours and time zone.
    #[serde(flatten)]
    pub preferences: PreferencesView,
    /// Every category by key, with the user's setting in it.
    pub categories: BTreeMap<String, ResolvedChoiceView>,
}

impl From<&PreferencesOverview> for PreferencesOverviewView {
    fn from(overview: &PreferencesOverview) -> Self {
        Self {
            preferences: PreferencesView::from(&overview.preferences),
            categories: overview
                .categories
                .iter()
                .map(|(category, resolved)| (category.key.as_str().to_owned(), ResolvedChoiceView::from(*resolved)))
                .collect(),
        }
    }
}

/// A push device.
#[derive(Debug, Serialize, Deserialize, JsonSchema, ApiComponent)]
pub struct DeviceView {
    /// Device id.
    pub id: Uuid,
    /// Push token.
    pub token: String,
    /// `web`, `ios`, `android`, or `unknown` (given at registration without a platform).
    pub platform: Cow<'static, str>,
    /// Whether pushes may be sent to it.
    pub active: bool,
    /// First registration (RFC 3339).
    pub created_at: String,
    /// Last change of owner, platform or state (RFC 3339).
    pub updated_at: String,
    /// Last registration or refresh of the token (RFC 3339).
    pub last_seen_at: String,
}

impl From<&Device> for DeviceView {
    fn from(device: &Device) -> Self {
        Self {
            id: device.id.as_uuid(),
            token: device.token.as_str().to_owned(),
            platform: Cow::Borrowed(device.platform.as_str()),
            active: device.active,
            created_at: rfc3339(device.created_at),
            updated_at: rfc3339(device.updated_at),
            last_seen_at: rfc3339(device.last_seen_at),
        }
    }
}

/// A user as senders need it. Never contains the password or its hash.
#[derive(Debug, Serialize, Deserialize, JsonSchema, ApiComponent)]
pub struct UserView {
    /// User id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Email address (lower-case).
    pub email: String,
    /// Phone number (E.164) or null.
    pub phone: Option<String>,
    /// Notification preferences.
    pub preferences: PreferencesView,
    /// The token of the most recently seen active device, or null.
    pub push_token: Option<String>,
    /// Tokens of all active devices, most recently seen first.
    pub push_tokens: Vec<String>,
    /// The active devices only, most recently seen first, so that any client's first device
    /// is one it may push to; `GET /api/v1/users/{id}/devices` lists all of them with their
    /// state.
    pub devices: Vec<DeviceView>,
    /// The user's own choices in notification categories, by category key (`null` on a
    /// channel: the category's default applies); categories not named follow their defaults.
    /// `GET /api/v1/users/{id}/preferences` resolves every category.
    pub category_choices: BTreeMap<String, CategoryChoiceView>,
    /// Registration time (RFC 3339).
    pub created_at: String,
    /// Last change of contact details (RFC 3339).
    pub updated_at: String,
}

impl From<&UserProfile> for UserView {
    fn from(profile: &UserProfile) -> Self {
        // Exhaustive: a field added to `User` does not build until it is shown or left out here.
        let User { id, name, email, phone, created_at, updated_at } = &profile.user;
        let category_choices = profile
            .categories
            .iter()
            .map(|(key, choice)| {
                (key.as_str().to_owned(), CategoryChoiceView { email: choice.email, push: choice.push })
            })
            .collect();
        Self {
            id: id.as_uuid(),
            name: name.as_str().to_owned(),
            email: email.as_str().to_owned(),
            phone: phone.as_ref().map(|phone| phone.as_str().to_owned()),
            preferences: PreferencesView::from(&profile.preferences),
            push_token: profile.push_token().map(|token| token.as_str().to_owned()),
            push_tokens: profile.active_push_tokens().map(|token| token.as_str().to_owned()).collect(),
            devices: profile.active_devices().map(DeviceView::from).collect(),
            category_choices,
            created_at: rfc3339(*created_at),
            updated_at: rfc3339(*updated_at),
        }
    }
}

/// The version of the cached representation's format: change it whenever what
/// [`UserView`] serializes changes (fields or meaning), so that no instance ever serves an
/// entry written by code with another idea of it (`v2`: `devices` holds active devices only;
/// `v3`: `category_choices`).
pub const CACHE_FORMAT_VERSION: &str = "v3";

/// Serializes profiles as [`UserView`] JSON: what `GET /api/v1/users/{id}` puts in `data`
/// and what the cache stores.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonProfileEncoder;

impl ProfileEncoder for JsonProfileEncoder {
    fn encode(&self, profile: &UserProfile) -> Vec<u8> {
        // A struct of strings, numbers and booleans always serializes.
        serde_json::to_vec(&UserView::from(profile)).unwrap_or_default()
    }

    fn decode(&self, bytes: &[u8]) -> Option<UserProfile> {
        serde_json::from_slice::<UserView>(bytes).ok()?.into_domain()
    }

    fn decode_sending(&self, bytes: &[u8], channel: Channel) -> Option<SendingProfile> {
        serde_json::from_slice::<SendingView>(bytes).ok()?.into_domain(channel)
    }
}

/// The part of a [`UserView`] a send decision reads ([`SendingProfile`]): the other fields
/// are skipped unparsed, and only the asked channel's targets are checked, so that a bulk
/// decision over 1,000 cached users does not check 1,000 names and email addresses again.
/// Its strings are borrowed from the bytes where they hold no escape, as they nearly always
/// do: no allocation per device or address that a decision may not even read.
#[derive(Deserialize)]
struct SendingView<'a> {
    #[serde(borrow)]
    email: Cow<'a, str>,
    preferences: PreferencesView,
    #[serde(borrow)]
    devices: Vec<SendingDeviceView<'a>>,
    category_choices: BTreeMap<String, CategoryChoiceView>,
}

/// The part of a [`DeviceView`] a push decision reads.
#[derive(Deserialize)]
struct SendingDeviceView<'a> {
    #[serde(borrow)]
    token: Cow<'a, str>,
    #[serde(borrow)]
    platform: Cow<'a, str>,
    active: bool,
}

impl SendingView<'_> {
    fn into_domain(self, channel: Channel) -> Option<SendingProfile> {
        let targets = match channel {
            Channel::Email => Some(Targets::Email(EmailAddress::parse(&self.email).ok()?)),
            Channel::Push => {
                let tokens = self
                    .devices
                    .into_iter()
                    .filter(|device| device.active)
                    .map(|device| {
                        Some((PushToken::parse(&device.token).ok()?, Platform::from_stored(&device.platform)?))
                    })
                    .collect::<Option<Vec<_>>>()?;
                (!tokens.is_empty()).then_some(Targets::Tokens(tokens))
            }
        };
        Some(SendingProfile {
            preferences: self.preferences.into_domain()?,
            categories: category_choices(self.category_choices)?,
            targets,
        })
    }
}

fn parse_time(raw: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(raw, &Rfc3339).ok()
}

impl UserView {
    /// Reads a view back into the domain (for cached representations); `None` if any value
    /// is not one this service writes.
    fn into_domain(self) -> Option<UserProfile> {
        let user_id = UserId::from(self.id);
        let devices = self
            .devices
            .into_iter()
            .map(|device| {
                Some(Device {
                    id: device.id.into(),
                    user_id,
                    token: PushToken::parse(&device.token).ok()?,
                    platform: Platform::from_stored(&device.platform)?,
                    active: device.active,
                    created_at: parse_time(&device.created_at)?,
                    updated_at: parse_time(&device.updated_at)?,
                    last_seen_at: parse_time(&device.last_seen_at)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let categories = category_choices(self.category_choices)?;
        Some(UserProfile {
            user: User {
                id: user_id,
                name: UserName::parse(&self.name).ok()?,
                email: EmailAddress::parse(&self.email).ok()?,
                phone: self.phone.as_deref().map(PhoneNumber::parse).transpose().ok()?,
                created_at: parse_time(&self.created_at)?,
                updated_at: parse_time(&self.updated_at)?,
            },
            preferences: self.preferences.into_domain()?,
            categories,
            devices,
        })
    }
}

impl PreferencesView {
    /// Reads a view back into the domain; `None` if any value is not one this service writes.
    fn into_domain(self) -> Option<Preferences> {
        let quiet_hours = match (self.quiet_hours_start, self.quiet_hours_end) {
            (Some(start), Some(end)) => {
                Some(QuietHours::new(ClockTime::parse(&start).ok()?, ClockTime::parse(&end).ok()?).ok()?)
            }
            _ => None,
        };
        Some(Preferences {
            email: self.email,
            push: self.push,
            quiet_hours,
            timezone: TimeZoneName::parse(&self.timezone).ok()?,
            updated_at: parse_time(&self.updated_at)?,
        })
    }
}

/// Reads category choices back into the domain; `None` if a key is not one this service writes.
fn category_choices(views: BTreeMap<String, CategoryChoiceView>) -> Option<CategoryChoices> {
    views
        .into_iter()
        .map(|(key, choice)| {
            Some((CategoryKey::parse(&key).ok()?, CategoryChoice { email: choice.email, push: choice.push }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use domain::device::DeviceId;
    use domain::eligibility::{Channel, SendingProfile};
    use time::macros::datetime;

    use super::*;

    fn profile() -> UserProfile {
        let id = UserId::generate();
        let at = datetime!(2026-03-01 09:30:00.123456 UTC);
        let device = |token: &str, platform, active| Device {
            id: DeviceId::generate(),
            user_id: id,
            token: PushToken::parse(token).unwrap(),
            platform,
            active,
            created_at: at,
            updated_at: at,
            last_seen_at: at,
        };
        UserProfile {
            user: User {
                id,
                name: UserName::parse("Ada Lovelace").unwrap(),
                email: EmailAddress::parse("ada@example.com").unwrap(),
                phone: None,
                created_at: at,
                updated_at: at,
            },
            preferences: Preferences {
                email: true,
                push: false,
                quiet_hours: Some(
                    QuietHours::new(ClockTime::parse("22:00").unwrap(), ClockTime::parse("07:00").unwrap()).unwrap(),
                ),
                timezone: TimeZoneName::parse("Europe/Berlin").unwrap(),
                updated_at: at,
            },
            categories: [(CategoryKey::parse("marketing").unwrap(), CategoryChoice { email: Some(false), push: None })]
                .into_iter()
                .collect(),
            devices: vec![
                device("token-seen-last", Platform::Ios, true),
                device("token-inactive", Platform::Android, false),
                // Quotes and a backslash are escaped in JSON: the borrowed view takes an owned copy.
                device(r#"token-seen-first/"quoted"\path"#, Platform::Web, true),
            ],
        }
    }

    #[test]
    fn a_cached_representation_decodes_to_the_same_sending_profile_as_the_whole_profile() {
        let profile = profile();
        let bytes = JsonProfileEncoder.encode(&profile);
        let decoded = JsonProfileEncoder.decode(&bytes).expect("decodes");
        for channel in [Channel::Email, Channel::Push] {
            let sending = JsonProfileEncoder.decode_sending(&bytes, channel).expect("decodes narrowly");
            assert_eq!(sending, SendingProfile::of(&decoded, channel), "{channel:?}");
            assert_eq!(sending, SendingProfile::of(&profile, channel), "{channel:?}");
        }
        // Bytes another format wrote are not guessed at.
        assert_eq!(JsonProfileEncoder.decode_sending(b"{\"email\":\"ada@example.com\"}", Channel::Email), None);
        let foreign = String::from_utf8(bytes).unwrap().replace("Europe/Berlin", "Mars/Olympus");
        assert_eq!(JsonProfileEncoder.decode_sending(foreign.as_bytes(), Channel::Push), None);
    }
}
