//! Users and the value objects that describe how to reach them.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::category::CategoryChoices;
use crate::device::{Device, HeldToken, PushToken};
use crate::error::InvalidValue;
use crate::preferences::{Preferences, PreferencesUpdate};
use unicode_normalization::UnicodeNormalization;

use crate::validate::{
    canonical_uuid, check_length, reject_control_characters, reject_hidden_text, reject_invisible_characters,
};

/// A user's identifier (a UUID; new ones are time-ordered v7 for index locality).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Uuid);

impl UserId {
    /// A fresh, time-ordered identifier.
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// Reads an id written in its one canonical spelling (see [`CANONICAL_ID_FORM`]). Every
    /// other spelling of the same UUID (upper case, no hyphens, braces, `urn:uuid:`) is
    /// refused: a client that caches answers under the id as it spelled it (the seed's
    /// gateway does) could otherwise keep a copy under a key that invalidation never reaches.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        canonical_uuid(raw).map(Self).ok_or(InvalidValue::new(CANONICAL_ID_FORM))
    }

    /// The underlying UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

/// How every id is spelled, in requests and in answers.
pub const CANONICAL_ID_FORM: &str = "must be a UUID in canonical form: 36 characters, lower-case hexadecimal digits \
     in groups of 8-4-4-4-12 separated by hyphens, e.g. 0192f5e4-6c1a-7b3e-9d2f-4a5b6c7d8e9f";

impl From<Uuid> for UserId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A display name: trimmed, 1–100 characters, no control or bidirectional control
/// characters, and at least one visible character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    /// Trims `raw` and checks it.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let trimmed = raw.trim();
        reject_control_characters(trimmed)?;
        reject_hidden_text(trimmed)?;
        check_length(trimmed, 1, 100)?;
        Ok(Self(trimmed.to_owned()))
    }

    /// The name as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address: trimmed, lower-cased, at most 254 characters, with a dotted domain.
/// Lower-casing makes the address compare case-insensitively everywhere, including the
/// database's unique index. The domain is stored in its ASCII form (IDNA, UTS #46):
/// `ada@bücher.de` is stored as `ada@xn--bcher-kva.de`, so both spellings of one mailbox are
/// one address, and every mail server can route it. The local part is normalized (NFKC, lower
/// case): full-width `ＡＤＡ` and decomposed accents are the same mailbox as `ada` and `é`.
/// Invisible or formatting characters and quoted local parts are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// The longest address SMTP can carry (RFC 5321, path limit minus the brackets).
    pub const MAX_LENGTH: usize = 254;

    /// Trims, lower-cases and checks `raw`, and writes its domain in ASCII.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let invalid = InvalidValue::new("must be a valid email address");
        let lowered = raw.trim().to_lowercase();
        reject_control_characters(&lowered)?;
        reject_hidden_text(&lowered)?;
        // Bound the input before the domain is converted: IDNA is linear, but needs no more.
        if lowered.len() > Self::MAX_LENGTH * 4 {
            return Err(InvalidValue::new("must be at most 254 characters"));
        }
        let (local, domain) = lowered.rsplit_once('@').ok_or(invalid.clone())?;
        reject_invisible_characters(local)?;
        if local.contains('"') {
            // `"ada"@example.com` is the mailbox `ada@example.com`: one address, one spelling.
            return Err(InvalidValue::new("must not have a quoted local part"));
        }
        // Compatibility forms (full-width letters, ligatures) and decomposed accents are one
        // spelling of the same mailbox: NFKC, then lower case again.
        let local: String = local.nfkc().collect::<String>().to_lowercase();
        let domain = idna::domain_to_ascii(domain).map_err(|_| invalid.clone())?;
        let normalized = format!("{local}@{domain}");
        if normalized.len() > Self::MAX_LENGTH {
            return Err(InvalidValue::new("must be at most 254 characters"));
        }
        let options = email_address::Options {
            minimum_sub_domains: 2,
            allow_domain_literal: false,
            allow_display_text: false,
            ..email_address::Options::default()
        };
        email_address::EmailAddress::parse_with_options(&normalized, options).map_err(|_| invalid)?;
        Ok(Self(normalized))
    }

    /// The normalized address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number in E.164 form: `+` followed by 8 to 15 digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Trims and checks `raw`; no spaces or punctuation are accepted inside the number.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let trimmed = raw.trim();
        let digits =
            trimmed.strip_prefix('+').ok_or(InvalidValue::new("must be in E.164 format, e.g. +2348012345678"))?;
        let valid = (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
        if !valid {
            return Err(InvalidValue::new("must be in E.164 format, e.g. +2348012345678"));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The number as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A plaintext password, 8–128 characters. Kept in a [`SecretString`] so that it never
/// shows in `Debug` output or logs.
#[derive(Debug, Clone)]
pub struct Password(SecretString);

impl Password {
    /// Checks the length of `raw` (not trimmed: spaces are legitimate password characters).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.contains('\0') {
            return Err(InvalidValue::new("must not contain NUL characters"));
        }
        check_length(raw, 8, 128)?;
        Ok(Self(SecretString::from(raw)))
    }

    /// The plaintext, for the password hasher only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A password hash in PHC string format. Not secret in the way a password is, but still
/// never logged or returned.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a PHC string produced by a password hasher or read from storage.
    pub fn new(phc: String) -> Self {
        Self(phc)
    }

    /// The PHC string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// Who a user is and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The identifier.
    pub id: UserId,
    /// The display name.
    pub name: UserName,
    /// The normalized email address, unique across users.
    pub email: EmailAddress,
    /// The phone number, if the user gave one.
    pub phone: Option<PhoneNumber>,
    /// When the user registered.
    pub created_at: OffsetDateTime,
    /// When the contact details last changed.
    pub updated_at: OffsetDateTime,
}

/// A user with everything a notification sender needs: preferences and devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserProfile {
    /// Who the user is.
    pub user: User,
    /// What they agreed to receive.
    pub preferences: Preferences,
    /// Their own choices in notification categories (the catalogue's defaults apply to the
    /// categories not named).
    pub categories: CategoryChoices,
    /// Where to push: active devices first, most recently seen first. A profile read back
    /// from a representation holds the active devices only.
    pub devices: Vec<Device>,
}

impl UserProfile {
    /// The devices pushes may go to, most recently seen first: all that a representation
    /// shows, so that any client's "first device" is a sendable one.
    pub fn active_devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.iter().filter(|device| device.active)
    }

    /// The tokens of the active devices, most recently seen first.
    pub fn active_push_tokens(&self) -> impl Iterator<Item = &PushToken> {
        self.active_devices().map(|device| &device.token)
    }

    /// The token a sender should push to: the most recently seen active device's.
    pub fn push_token(&self) -> Option<&PushToken> {
        self.active_push_tokens().next()
    }
}

/// A registration request, validated.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The display name.
    pub name: UserName,
    /// The email address.
    pub email: EmailAddress,
    /// The plaintext password, hashed by the use case.
    pub password: Password,
    /// An optional phone number.
    pub phone: Option<PhoneNumber>,
    /// An optional push token, registered as a device of platform `unknown`.
    pub push_token: Option<PushToken>,
    /// What to do when another user holds `push_token`.
    pub if_token_held: HeldToken,
    /// Preferences that differ from the defaults.
    pub preferences: PreferencesUpdate,
}

/// A change of contact details; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactUpdate {
    /// A new display name.
    pub name: Option<UserName>,
    /// A new email address.
    pub email: Option<EmailAddress>,
    /// `Some(None)` clears the phone number; `Some(Some(_))` sets it.
    pub phone: Option<Option<PhoneNumber>>,
}

impl ContactUpdate {
    /// Whether the update changes nothing.
    pub fn is_empty(&self) -> bool {
        let Self { name, email, phone } = self;
        name.is_none() && email.is_none() && phone.is_none()
    }
}

/// Which page of users to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    page: u32,
    limit: u32,
}

impl PageRequest {
    /// The largest page a caller may ask for.
    pub const MAX_LIMIT: u32 = 100;

    /// Checks that `page` ≥ 1 and 1 ≤ `limit` ≤ 100.
    pub fn new(page: u32, limit: u32) -> Result<Self, (&'static str, InvalidValue)> {
        if page == 0 {
            return Err(("page", InvalidValue::new("must be at least 1")));
        }
        if limit == 0 || limit > Self::MAX_LIMIT {
            return Err(("limit", InvalidValue::new("must be between 1 and 100")));
        }
        Ok(Self { page, limit })
    }

    /// The 1-based page number.
    pub const fn page(&self) -> u32 {
        self.page
    }

    /// How many items a page holds.
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// How many items precede this page.
    pub const fn offset(&self) -> u64 {
        (self.page as u64 - 1) * self.limit as u64
    }
}

/// One page of results and the total count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// How many items exist in all pages.
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_are_read_only_in_canonical_spelling() {
        let id = UserId::generate();
        let canonical = id.to_string();
        assert_eq!(UserId::parse(&canonical), Ok(id));
        let uuid = id.as_uuid();
        for other in [
            canonical.to_uppercase(),
            uuid.simple().to_string(),
            uuid.braced().to_string(),
            uuid.urn().to_string(),
            format!(" {canonical}"),
            format!("{canonical}\n"),
            format!("%{:02X}{}", canonical.as_bytes()[0], &canonical[1..]),
            String::new(),
            "../api/v1/users".to_owned(),
        ] {
            let error = UserId::parse(&other).unwrap_err();
            assert!(error.message().contains("lower-case"), "{other:?}: {error}");
        }
    }

    #[test]
    fn email_is_trimmed_and_lower_cased() {
        let email = EmailAddress::parse("  John@Example.COM ").unwrap();
        assert_eq!(email.as_str(), "john@example.com");
    }

    #[test]
    fn text_that_hides_itself_is_rejected_in_names_and_addresses() {
        for name in [
            "Alice\u{202E}eciN",
            "\u{2066}Bob\u{2069}",
            "Eve\u{200F}",
            "\u{200B}\u{200B}",
            "\u{3164}",
            "\u{2800}\u{2800}",
        ] {
            assert!(UserName::parse(name).is_err(), "{name:?} should be rejected");
        }
        for hidden in [
            "alice\u{202E}",
            "\u{200B}",
            "bo\u{200D}b",
            "\u{FEFF}bob",
            "bob\u{00AD}",
            "\u{FFF9}",
            "\u{13430}",
            "bob\u{3000}",
        ] {
            assert!(EmailAddress::parse(&format!("{hidden}@example.com")).is_err(), "{hidden:?}");
        }
        for hidden in ["\u{FFF9}\u{FFFA}", "\u{13430}", "\u{1D159}"] {
            assert!(UserName::parse(hidden).is_err(), "{hidden:?}");
        }
        // Visible text with a joiner (emoji sequences) or an accent stays valid.
        assert!(UserName::parse("Zoë \u{1F469}\u{200D}\u{1F4BB}").is_ok());
    }

    #[test]
    fn email_domains_are_stored_in_ascii_so_both_spellings_are_one_address() {
        let unicode = EmailAddress::parse("Ada@Bücher.DE").unwrap();
        assert_eq!(unicode.as_str(), "ada@xn--bcher-kva.de");
        assert_eq!(EmailAddress::parse("ada@xn--bcher-kva.de").unwrap(), unicode);
        assert_eq!(EmailAddress::parse("ünï@example.com").unwrap().as_str(), "ünï@example.com");
        // One mailbox, one spelling: composed and decomposed accents, full-width letters.
        assert_eq!(
            EmailAddress::parse("jose\u{301}@example.com").unwrap(),
            EmailAddress::parse("josé@example.com").unwrap()
        );
        assert_eq!(EmailAddress::parse("ＡＤＡ@example.com").unwrap().as_str(), "ada@example.com");
        assert!(EmailAddress::parse("\"ada\"@example.com").is_err());
        assert!(EmailAddress::parse("ada@exa mple.com").is_err());
        assert!(EmailAddress::parse("ada@-bad-.com").is_err());
    }

    #[test]
    fn email_without_a_dotted_domain_or_too_long_is_rejected() {
        assert!(EmailAddress::parse("john@localhost").is_err());
        assert!(EmailAddress::parse("not-an-email").is_err());
        assert!(EmailAddress::parse("a\0b@example.com").is_err());
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(EmailAddress::parse(&long).is_err());
    }

    #[test]
    fn phone_must_be_e164() {
        assert!(PhoneNumber::parse("+2348012345678").is_ok());
        for bad in ["2348012345678", "+234 801 234", "+1234567", "+1234567890123456", "+12345abc90"] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn name_is_trimmed_and_bounded() {
        assert_eq!(UserName::parse("  John Doe ").unwrap().as_str(), "John Doe");
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse(&"é".repeat(100)).is_ok());
        assert!(UserName::parse(&"é".repeat(101)).is_err());
        assert!(UserName::parse("John\u{7}Doe").is_err());
    }

    #[test]
    fn password_length_is_checked_and_never_printed() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse(&"x".repeat(129)).is_err());
        let password = Password::parse("StrongPass123!").unwrap();
        assert!(!format!("{password:?}").contains("StrongPass123!"));
        assert!(!format!("{:?}", PasswordHash::new("$argon2id$secret".into())).contains("secret"));
    }

    #[test]
    fn page_request_bounds() {
        assert!(PageRequest::new(0, 10).is_err());
        assert!(PageRequest::new(1, 0).is_err());
        assert!(PageRequest::new(1, 101).is_err());
        assert_eq!(PageRequest::new(3, 20).unwrap().offset(), 40);
    }
}
