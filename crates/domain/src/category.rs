//! Notification categories: kinds of message (`marketing`, `security`) that users opt in to
//! or out of per channel, on top of the global channel switches.
//!
//! The catalogue is operator-managed ([`Category`]); each user's own choices
//! ([`CategoryChoice`]) say only what differs from a category's defaults, so that a user who
//! never chose follows the catalogue when its defaults change. A *critical* category (a
//! password reset, a fraud alert) is sent whatever the user opted out of.

use std::collections::BTreeMap;
use std::fmt;

use time::OffsetDateTime;

use crate::error::InvalidValue;
use crate::validate::{check_length, reject_control_characters, reject_hidden_text};

/// A category's key: a slug of 1–64 characters, lower-case letters, digits, `-` and `_`,
/// starting with a letter or digit. Stable: users' choices and history refer to it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CategoryKey(String);

impl CategoryKey {
    /// The longest key.
    pub const MAX_LENGTH: usize = 64;

    /// Checks that `raw` is a slug.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        const INVALID: InvalidValue = InvalidValue::new(
            "must be a slug of 1-64 characters: lower-case letters, digits, - and _, starting with a letter or digit",
        );
        let bytes = raw.as_bytes();
        let slug = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LENGTH
            && bytes[0].is_ascii_alphanumeric()
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_');
        if slug { Ok(Self(raw.to_owned())) } else { Err(INVALID) }
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CategoryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A category's display name, 1–100 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryName(String);

impl CategoryName {
    /// Trims and checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Ok(Self(bounded_text(raw, 100)?))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A category's description for operators and settings pages, 1–500 characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryDescription(String);

impl CategoryDescription {
    /// Trims and checks `raw`.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        Ok(Self(bounded_text(raw, 500)?))
    }

    /// The description.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Trimmed text of 1 to `max` characters, checked as a user's name is: no control
/// characters, no bidirectional overrides (which would show a settings page something other
/// than what is stored), and something visible.
fn bounded_text(raw: &str, max: usize) -> Result<String, InvalidValue> {
    let trimmed = raw.trim();
    reject_control_characters(trimmed)?;
    reject_hidden_text(trimmed)?;
    check_length(trimmed, 1, max)?;
    Ok(trimmed.to_owned())
}

/// What a user receives in a category on each channel until they choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelDefaults {
    /// Email on by default.
    pub email: bool,
    /// Push on by default.
    pub push: bool,
}

/// A category of the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Category {
    /// The stable key.
    pub key: CategoryKey,
    /// The display name.
    pub name: CategoryName,
    /// An optional description.
    pub description: Option<CategoryDescription>,
    /// Sent whatever the user opted out of, quiet hours included (security, legal notices).
    pub critical: bool,
    /// What users who did not choose receive.
    pub defaults: ChannelDefaults,
    /// When the category was created.
    pub created_at: OffsetDateTime,
    /// When it last changed.
    pub updated_at: OffsetDateTime,
}

impl Category {
    /// A new category, created at `now`.
    pub fn new(new: NewCategory, now: OffsetDateTime) -> Self {
        let NewCategory { key, name, description, critical, defaults } = new;
        Self { key, name, description, critical, defaults, created_at: now, updated_at: now }
    }

    /// What `choice` (the user's, if any) amounts to in this category.
    pub fn resolve(&self, choice: Option<&CategoryChoice>) -> ResolvedChoice {
        match choice {
            Some(choice) if !choice.is_empty() => ResolvedChoice {
                email: choice.email.unwrap_or(self.defaults.email),
                push: choice.push.unwrap_or(self.defaults.push),
                source: ChoiceSource::User,
            },
            _ => ResolvedChoice { email: self.defaults.email, push: self.defaults.push, source: ChoiceSource::Default },
        }
    }
}

/// A category to add to the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCategory {
    /// The stable key.
    pub key: CategoryKey,
    /// The display name.
    pub name: CategoryName,
    /// An optional description.
    pub description: Option<CategoryDescription>,
    /// Sent whatever the user opted out of.
    pub critical: bool,
    /// What users who did not choose receive.
    pub defaults: ChannelDefaults,
}

/// A change of a category; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CategoryPatch {
    /// A new name.
    pub name: Option<CategoryName>,
    /// `Some(None)` removes the description.
    pub description: Option<Option<CategoryDescription>>,
    /// Whether it is critical.
    pub critical: Option<bool>,
    /// A new email default.
    pub default_email: Option<bool>,
    /// A new push default.
    pub default_push: Option<bool>,
}

impl CategoryPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        let Self { name, description, critical, default_email, default_push } = self;
        name.is_none()
            && description.is_none()
            && critical.is_none()
            && default_email.is_none()
            && default_push.is_none()
    }

    /// `category` with the patch applied; `updated_at` becomes `now` only if something else
    /// changed (a patch that restates the category leaves it as it was: the stores then
    /// write nothing, no revision and no change event).
    pub fn apply(&self, category: Category, now: OffsetDateTime) -> Category {
        let before = category.clone();
        let mut category = category;
        let Self { name, description, critical, default_email, default_push } = self;
        if let Some(name) = name {
            category.name = name.clone();
        }
        if let Some(description) = description {
            category.description = description.clone();
        }
        if let Some(critical) = critical {
            category.critical = *critical;
        }
        if let Some(email) = default_email {
            category.defaults.email = *email;
        }
        if let Some(push) = default_push {
            category.defaults.push = *push;
        }
        if category != before {
            category.updated_at = now;
        }
        category
    }
}

/// A user's own choice in one category; `None` on a channel follows the category's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CategoryChoice {
    /// Email in this category, or the default.
    pub email: Option<bool>,
    /// Push in this category, or the default.
    pub push: Option<bool>,
}

impl CategoryChoice {
    /// Whether the choice says nothing (the user follows the defaults).
    pub const fn is_empty(&self) -> bool {
        self.email.is_none() && self.push.is_none()
    }

    /// This choice with `update` applied: a channel the update names is set, the others stay.
    pub fn with_update(self, update: CategoryChoice) -> Self {
        Self { email: update.email.or(self.email), push: update.push.or(self.push) }
    }
}

/// The choices a user made, by category; categories not named follow their defaults.
pub type CategoryChoices = BTreeMap<CategoryKey, CategoryChoice>;

/// Where a resolved category setting comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChoiceSource {
    /// The user chose (at least one channel).
    User,
    /// The category's defaults.
    Default,
}

impl ChoiceSource {
    /// The name used in the API.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Default => "default",
        }
    }
}

/// A category setting as it applies to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolvedChoice {
    /// Email in this category.
    pub email: bool,
    /// Push in this category.
    pub push: bool,
    /// Whether the user chose or the defaults apply.
    pub source: ChoiceSource,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn category(email: bool, push: bool) -> Category {
        Category {
            key: CategoryKey::parse("marketing").unwrap(),
            name: CategoryName::parse("Marketing").unwrap(),
            description: None,
            critical: false,
            defaults: ChannelDefaults { email, push },
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn keys_are_slugs() {
        for good in ["marketing", "a", "order-updates", "x_1", "9lives", &"a".repeat(64)] {
            assert!(CategoryKey::parse(good).is_ok(), "{good:?} should be accepted");
        }
        for bad in ["", "Marketing", "-lead", "_lead", "with space", "émoji", "a/b", "a.b", &"a".repeat(65), "a\0"] {
            assert!(CategoryKey::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn names_and_descriptions_are_bounded_and_trimmed() {
        assert_eq!(CategoryName::parse("  Deals ").unwrap().as_str(), "Deals");
        assert!(CategoryName::parse("   ").is_err());
        assert!(CategoryName::parse(&"n".repeat(101)).is_err());
        assert!(CategoryDescription::parse(&"d".repeat(500)).is_ok());
        assert!(CategoryDescription::parse(&"d".repeat(501)).is_err());
        assert!(CategoryName::parse("a\u{7}b").is_err());
        assert!(CategoryName::parse("Deals\u{202e}txt.exe").is_err(), "a bidirectional override");
        assert!(CategoryDescription::parse("\u{200b}\u{200b}").is_err(), "nothing visible");
    }

    #[test]
    fn a_choice_overrides_only_the_channels_it_names() {
        let marketing = category(true, false);
        assert_eq!(marketing.resolve(None), ResolvedChoice { email: true, push: false, source: ChoiceSource::Default });
        let choice = CategoryChoice { email: Some(false), push: None };
        assert_eq!(
            marketing.resolve(Some(&choice)),
            ResolvedChoice { email: false, push: false, source: ChoiceSource::User }
        );
        assert_eq!(marketing.resolve(Some(&CategoryChoice::default())).source, ChoiceSource::Default);
        let updated = choice.with_update(CategoryChoice { email: None, push: Some(true) });
        assert_eq!(updated, CategoryChoice { email: Some(false), push: Some(true) });
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1);
        let patch = CategoryPatch { critical: Some(true), default_push: Some(true), ..CategoryPatch::default() };
        let patched = patch.apply(category(true, false), now);
        assert!(patched.critical);
        assert_eq!(patched.defaults, ChannelDefaults { email: true, push: true });
        assert_eq!(patched.name.as_str(), "Marketing");
        assert_eq!(patched.updated_at, now);
        assert!(CategoryPatch::default().is_empty());
    }
}
