//! Send eligibility: may a notification go to this user on this channel now, and if not,
//! when?
//!
//! [`decide`] reads a [`UserProfile`] at one instant and answers with an [`Eligibility`]:
//! whether sending is allowed, why (a [`Reason`]), where to send ([`Targets`]) and, when only
//! quiet hours hold the notification back, when they end ([`quiet_window_end`]).
//!
//! Quiet hours are local wall-clock times, so their end is computed with the bundled IANA
//! time zone database of `jiff`, transition by transition; no offset is ever written by hand.
//! This module is pure: no clock is read here, the caller passes the instant.

use jiff::Timestamp;
use jiff::civil::{DateTime, Time};
use jiff::tz::{Offset, TimeZone};
use time::OffsetDateTime;

use crate::category::{Category, CategoryChoice, CategoryChoices};
use crate::consent::{ChannelName, ConsentState};
use crate::device::{Platform, PushToken};
use crate::error::InvalidValue;
use crate::preferences::{ClockTime, Preferences, QuietHours, TimeZoneName};
use crate::user::{EmailAddress, UserProfile};

/// A delivery channel a user can opt in to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Email to the user's address.
    Email,
    /// Push to the user's active devices.
    Push,
}

impl Channel {
    /// Parses the lower-case channel name (`email`, `push`).
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        match raw {
            "email" => Ok(Self::Email),
            "push" => Ok(Self::Push),
            _ => Err(InvalidValue::new("must be one of email, push")),
        }
    }

    /// The lower-case name used in the API.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Push => "push",
        }
    }
}

impl From<Channel> for ChannelName {
    fn from(channel: Channel) -> Self {
        match channel {
            Channel::Email => Self::Email,
            Channel::Push => Self::Push,
        }
    }
}

/// Why sending is allowed or not. When several reasons apply, the first in declaration
/// order wins: nowhere to send beats everything, a critical category beats every opt-out
/// and quiet hours, and an opted-out user is never reported as merely in quiet hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Email channel, but the user has no email address.
    NoAddress,
    /// Push channel, but the user has no active device.
    NoActiveDevice,
    /// The category is critical: sent whatever the user opted out of, quiet hours included.
    Critical,
    /// The user turned the channel off.
    OptedOut,
    /// The user turned the channel off in this category (or its default is off).
    CategoryOptedOut,
    /// The user's quiet hours are in progress; see [`Eligibility::next_allowed_at`].
    QuietHours,
    /// Nothing holds the notification back.
    Ok,
}

impl Reason {
    /// The snake-case code used in the API.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::NoAddress => "no_address",
            Self::NoActiveDevice => "no_active_device",
            Self::Critical => "critical",
            Self::OptedOut => "opted_out",
            Self::CategoryOptedOut => "category_opted_out",
            Self::QuietHours => "quiet_hours",
            Self::Ok => "ok",
        }
    }
}

/// Where a notification on a channel would go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// The user's email address.
    Email(EmailAddress),
    /// The tokens of the active devices with their platforms, most recently seen first.
    Tokens(Vec<(PushToken, Platform)>),
}

/// The answer to "may I send to this user on this channel now, and if not, when?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eligibility {
    /// The channel asked about.
    pub channel: Channel,
    /// The instant the decision is for.
    pub at: OffsetDateTime,
    /// Whether a notification may be sent at `at`.
    pub allowed: bool,
    /// Why (`Ok` or `Critical` exactly when `allowed`).
    pub reason: Reason,
    /// When quiet hours end, for [`Reason::QuietHours`] only; `None` otherwise, including
    /// when waiting would not help (opted out, nowhere to send).
    pub next_allowed_at: Option<OffsetDateTime>,
    /// Where to send, when allowed or held back only by quiet hours; `None` otherwise.
    pub targets: Option<Targets>,
}

/// What a send decision on one channel reads of a user: their consent, and where that
/// channel would send. Bulk decisions read it from cached representations without decoding
/// (and checking again) the rest of each user: name, phone, times, the other channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendingProfile {
    /// What they agreed to receive.
    pub preferences: Preferences,
    /// Their own choices in notification categories.
    pub categories: CategoryChoices,
    /// Where the channel would send (the address; the active devices' tokens, most recently
    /// seen first); `None` when nowhere.
    pub targets: Option<Targets>,
}

impl SendingProfile {
    /// The part of `profile` a decision on `channel` reads.
    pub fn of(profile: &UserProfile, channel: Channel) -> Self {
        Self {
            preferences: profile.preferences.clone(),
            categories: profile.categories.clone(),
            targets: targets(profile, channel),
        }
    }
}

/// Where `channel` would send to `profile`.
fn targets(profile: &UserProfile, channel: Channel) -> Option<Targets> {
    match channel {
        Channel::Email => email_address(profile).map(Targets::Email),
        Channel::Push => {
            let tokens: Vec<_> =
                profile.active_devices().map(|device| (device.token.clone(), device.platform)).collect();
            (!tokens.is_empty()).then_some(Targets::Tokens(tokens))
        }
    }
}

/// Decides whether `profile` may receive a notification on `channel` at `at`, in
/// `category` if one is given (the profile's own choice in it applies).
///
/// Precedence ([`Reason`]): no address (email) or no active device (push); then a critical
/// category allows; then the global channel switch, the category, quiet hours; then ok.
pub fn decide(profile: &UserProfile, channel: Channel, category: Option<&Category>, at: OffsetDateTime) -> Eligibility {
    let targets = targets(profile, channel);
    let in_category = category.map(|category| (category, profile.categories.get(&category.key)));
    let reachable = targets.is_some();
    decide_on(&profile.preferences, in_category, channel, at, reachable, || targets)
}

/// [`decide`] from the part of a profile it reads ([`SendingProfile::of`] the profile and
/// `channel`): the same answer. Borrows it, so that one decoded projection serves many
/// decisions; the targets are copied only into an answer that names them.
pub fn decide_sending(
    sending: &SendingProfile,
    channel: Channel,
    category: Option<&Category>,
    at: OffsetDateTime,
) -> Eligibility {
    let in_category = category.map(|category| (category, sending.categories.get(&category.key)));
    let reachable = sending.targets.is_some();
    decide_on(&sending.preferences, in_category, channel, at, reachable, || sending.targets.clone())
}

/// Decides from a state rebuilt from the consent history (what the user had agreed to at
/// `at`, with the category as the catalogue had it then). Names no targets: it answers
/// whether a send was allowed, not where one would go today.
pub fn decide_as_recorded(
    state: &ConsentState,
    channel: Channel,
    category: Option<&Category>,
    at: OffsetDateTime,
) -> Eligibility {
    let reachable = match channel {
        Channel::Email => state.email.is_some(),
        Channel::Push => state.has_active_device(),
    };
    let in_category = category.map(|category| (category, state.categories.get(&category.key)));
    decide_on(&state.preferences, in_category, channel, at, reachable, || None)
}

/// The decision itself, in [`Reason`]'s order; `targets` is called for an answer that names
/// them (allowed, or held back by quiet hours only).
fn decide_on(
    preferences: &Preferences,
    category: Option<(&Category, Option<&CategoryChoice>)>,
    channel: Channel,
    at: OffsetDateTime,
    reachable: bool,
    targets: impl FnOnce() -> Option<Targets>,
) -> Eligibility {
    let refused = |reason| Eligibility { channel, at, allowed: false, reason, next_allowed_at: None, targets: None };
    if !reachable {
        return refused(match channel {
            Channel::Email => Reason::NoAddress,
            Channel::Push => Reason::NoActiveDevice,
        });
    }
    if category.is_some_and(|(category, _)| category.critical) {
        return Eligibility {
            channel,
            at,
            allowed: true,
            reason: Reason::Critical,
            next_allowed_at: None,
            targets: targets(),
        };
    }
    let opted_in = match channel {
        Channel::Email => preferences.email,
        Channel::Push => preferences.push,
    };
    if !opted_in {
        return refused(Reason::OptedOut);
    }
    if let Some((category, choice)) = category {
        let resolved = category.resolve(choice);
        let opted_in = match channel {
            Channel::Email => resolved.email,
            Channel::Push => resolved.push,
        };
        if !opted_in {
            return refused(Reason::CategoryOptedOut);
        }
    }
    let quiet = match &preferences.quiet_hours {
        Some(quiet) => quiet_window_end(quiet, &preferences.timezone, at),
        None => Ok(None),
    };
    let (allowed, reason, next_allowed_at) = match quiet {
        Ok(None) => (true, Reason::Ok, None),
        Ok(Some(end)) => (false, Reason::QuietHours, Some(end)),
        // Fails closed: a wrong "yes" is the worst answer this service can give.
        Err(WindowEndUnknown) => (false, Reason::QuietHours, None),
    };
    Eligibility { channel, at, allowed, reason, next_allowed_at, targets: targets() }
}

/// The address to email. Every user has one today; the `Option` keeps [`Reason::NoAddress`]
/// right the day it becomes optional.
fn email_address(profile: &UserProfile) -> Option<EmailAddress> {
    Some(profile.user.email.clone())
}

/// The end of a quiet window that cannot be computed: a zone missing from the bundled
/// database (unreachable: names are checked against it), or an end beyond the year 9999,
/// which neither `time` nor `jiff` can represent. [`decide`] then treats the instant as quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowEndUnknown;

/// When the quiet window in progress at `at` ends, or `None` if the local wall clock at `at`
/// (read in `zone`) is outside `quiet`.
///
/// The end is the first instant at or after `at` at which the local wall clock is outside
/// the window. Usually that is the window's end time; around time zone transitions it is
/// whatever the clock really does:
/// - an end time skipped by a spring-forward gap ends the window at the transition (window
///   until 02:30, clocks jump 02:00 → 03:00: the window ends at 03:00, the jump);
/// - a fall-back transition that moves the clock back out of the window ends it at the
///   transition (window 01:30–03:00, clocks fall back from 02:00 to 01:00: it ends when the
///   clock shows 01:00 again), and a repeated end time ends the window the first time it is
///   reached (the repeated part is a new quiet spell of its own).
pub fn quiet_window_end(
    quiet: &QuietHours,
    zone: &TimeZoneName,
    at: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, WindowEndUnknown> {
    let zone = TimeZone::get(zone.as_str()).map_err(|_| WindowEndUnknown)?;
    let at = Timestamp::from_nanosecond(at.unix_timestamp_nanos()).map_err(|_| WindowEndUnknown)?;
    let Some(end) = window_end(quiet, &zone, at).map_err(|_| WindowEndUnknown)? else {
        return Ok(None);
    };
    OffsetDateTime::from_unix_timestamp_nanos(end.as_nanosecond()).map(Some).map_err(|_| WindowEndUnknown)
}

/// Walks the zone's offset segments from `at`: within a segment the wall clock runs
/// continuously, so the only way out of the window is reaching its end time; at a
/// transition the clock jumps, possibly out of the window.
fn window_end(quiet: &QuietHours, zone: &TimeZone, at: Timestamp) -> Result<Option<Timestamp>, jiff::Error> {
    let mut local = zone.to_datetime(at);
    if !is_quiet(quiet, local.time()) {
        return Ok(None);
    }
    let end = quiet.end().as_time();
    let end = Time::new(end.hour() as i8, end.minute() as i8, 0, 0)?;
    let mut offset = zone.to_offset(at);
    for transition in zone.following(at) {
        let reaches_end = reach(offset, local, end)?;
        if reaches_end < transition.timestamp() {
            return Ok(Some(reaches_end));
        }
        local = transition.offset().to_datetime(transition.timestamp());
        if !is_quiet(quiet, local.time()) {
            return Ok(Some(transition.timestamp()));
        }
        offset = transition.offset();
    }
    reach(offset, local, end).map(Some)
}

/// The instant at which a clock showing `local` and running at `offset` next shows `end`.
fn reach(offset: Offset, local: DateTime, end: Time) -> Result<Timestamp, jiff::Error> {
    let mut next = local.date().to_datetime(end);
    if next <= local {
        next = local.date().tomorrow()?.to_datetime(end);
    }
    offset.to_timestamp(next)
}

/// Whether a local time of day (seconds and all) is inside the window. Window bounds are
/// whole minutes, so reading the time at minute precision decides exactly.
fn is_quiet(quiet: &QuietHours, local: Time) -> bool {
    let minutes = i64::from(local.hour()) * 60 + i64::from(local.minute());
    quiet.contains(ClockTime::from_time(time::Time::MIDNIGHT + time::Duration::minutes(minutes)))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;
    use uuid::Uuid;

    use super::*;
    use crate::category::{CategoryChoices, CategoryKey};
    use crate::device::{Device, DeviceId};
    use crate::preferences::Preferences;
    use crate::user::{User, UserId, UserName};

    fn window(start: &str, end: &str) -> QuietHours {
        QuietHours::new(ClockTime::parse(start).unwrap(), ClockTime::parse(end).unwrap()).unwrap()
    }

    fn zone(name: &str) -> TimeZoneName {
        TimeZoneName::parse(name).unwrap()
    }

    fn end_of(quiet: &str, zone_name: &str, at: OffsetDateTime) -> Option<OffsetDateTime> {
        let (start, end) = quiet.split_once('-').unwrap();
        quiet_window_end(&window(start, end), &zone(zone_name), at).expect("an end before the year 9999")
    }

    fn device(token: &str, platform: Platform, active: bool, seen: OffsetDateTime) -> Device {
        Device {
            id: DeviceId::generate(),
            user_id: UserId::from(Uuid::nil()),
            token: PushToken::parse(token).unwrap(),
            platform,
            active,
            created_at: seen,
            updated_at: seen,
            last_seen_at: seen,
        }
    }

    /// Opted in to everything, one active Android device, quiet 22:00–07:00 in Lagos (UTC+1).
    fn profile() -> UserProfile {
        let now = datetime!(2026-01-01 00:00 UTC);
        UserProfile {
            user: User {
                id: UserId::from(Uuid::nil()),
                name: UserName::parse("Ada").unwrap(),
                email: EmailAddress::parse("ada@example.com").unwrap(),
                phone: None,
                created_at: now,
                updated_at: now,
            },
            preferences: Preferences {
                email: true,
                push: true,
                quiet_hours: Some(window("22:00", "07:00")),
                timezone: zone("Africa/Lagos"),
                updated_at: now,
            },
            categories: CategoryChoices::new(),
            devices: vec![device("fcm-token", Platform::Android, true, now)],
        }
    }

    const NOON_IN_LAGOS: OffsetDateTime = datetime!(2026-06-01 11:00 UTC);
    const MIDNIGHT_IN_LAGOS: OffsetDateTime = datetime!(2026-06-01 23:00 UTC);

    #[test]
    fn channels_and_reasons_have_stable_names() {
        assert_eq!(Channel::parse("email").unwrap(), Channel::Email);
        assert_eq!(Channel::parse("push").unwrap().as_str(), "push");
        for bad in ["Email", "sms", "", "push "] {
            assert!(Channel::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let names: Vec<_> = EVERY_REASON.iter().map(Reason::as_str).collect();
        assert_eq!(
            names,
            ["no_address", "no_active_device", "critical", "opted_out", "category_opted_out", "quiet_hours", "ok"]
        );
    }

    #[test]
    fn an_opted_in_reachable_user_outside_quiet_hours_may_be_emailed() {
        let decision = decide(&profile(), Channel::Email, None, NOON_IN_LAGOS);
        assert_eq!(
            decision,
            Eligibility {
                channel: Channel::Email,
                at: NOON_IN_LAGOS,
                allowed: true,
                reason: Reason::Ok,
                next_allowed_at: None,
                targets: Some(Targets::Email(EmailAddress::parse("ada@example.com").unwrap())),
            }
        );
    }

    #[test]
    fn push_targets_are_the_active_devices_most_recently_seen_first() {
        let mut profile = profile();
        profile.devices = vec![
            device("newest", Platform::Ios, true, datetime!(2026-05-03 00:00 UTC)),
            device("inactive", Platform::Web, false, datetime!(2026-05-02 00:00 UTC)),
            device("older", Platform::Android, true, datetime!(2026-05-01 00:00 UTC)),
        ];
        let decision = decide(&profile, Channel::Push, None, NOON_IN_LAGOS);
        assert!(decision.allowed);
        assert_eq!(decision.reason, Reason::Ok);
        assert_eq!(
            decision.targets,
            Some(Targets::Tokens(vec![
                (PushToken::parse("newest").unwrap(), Platform::Ios),
                (PushToken::parse("older").unwrap(), Platform::Android),
            ]))
        );
    }

    #[test]
    fn quiet_hours_hold_back_but_keep_the_targets_and_say_when_to_retry() {
        let decision = decide(&profile(), Channel::Push, None, MIDNIGHT_IN_LAGOS);
        assert!(!decision.allowed);
        assert_eq!(decision.reason, Reason::QuietHours);
        assert_eq!(decision.next_allowed_at, Some(datetime!(2026-06-02 06:00 UTC)));
        assert!(matches!(decision.targets, Some(Targets::Tokens(tokens)) if tokens.len() == 1));
    }

    #[test]
    fn a_user_without_quiet_hours_may_be_reached_at_any_time() {
        let mut profile = profile();
        profile.preferences.quiet_hours = None;
        assert_eq!(decide(&profile, Channel::Email, None, MIDNIGHT_IN_LAGOS).reason, Reason::Ok);
    }

    #[test]
    fn a_missing_device_wins_over_opting_out_and_quiet_hours() {
        // Nowhere to send comes first since categories (issue 15); it used to be opted_out.
        let mut profile = profile();
        profile.preferences.push = false;
        profile.devices.clear();
        let decision = decide(&profile, Channel::Push, None, MIDNIGHT_IN_LAGOS);
        assert_eq!((decision.allowed, decision.reason), (false, Reason::NoActiveDevice));
        assert_eq!((decision.next_allowed_at, decision.targets), (None, None));

        // Opting out still wins over quiet hours.
        profile.preferences.email = false;
        let decision = decide(&profile, Channel::Email, None, MIDNIGHT_IN_LAGOS);
        assert_eq!((decision.allowed, decision.reason), (false, Reason::OptedOut));
        assert_eq!((decision.next_allowed_at, decision.targets), (None, None));
    }

    #[test]
    fn opting_out_of_one_channel_leaves_the_other_open() {
        let mut profile = profile();
        profile.preferences.email = false;
        assert_eq!(decide(&profile, Channel::Push, None, NOON_IN_LAGOS).reason, Reason::Ok);
        assert_eq!(decide(&profile, Channel::Email, None, NOON_IN_LAGOS).reason, Reason::OptedOut);
    }

    #[test]
    fn no_active_device_wins_over_quiet_hours() {
        let mut profile = profile();
        profile.devices = vec![device("inactive", Platform::Web, false, NOON_IN_LAGOS)];
        let decision = decide(&profile, Channel::Push, None, MIDNIGHT_IN_LAGOS);
        assert_eq!((decision.allowed, decision.reason), (false, Reason::NoActiveDevice));
        assert_eq!((decision.next_allowed_at, decision.targets), (None, None));
        // The email channel does not need a device.
        assert_eq!(decide(&profile, Channel::Email, None, NOON_IN_LAGOS).reason, Reason::Ok);
    }

    // ---- Categories: a domain table of decisions -------------------------------------------

    /// Every reason, in declaration (precedence) order.
    const EVERY_REASON: [Reason; 7] = [
        Reason::NoAddress,
        Reason::NoActiveDevice,
        Reason::Critical,
        Reason::OptedOut,
        Reason::CategoryOptedOut,
        Reason::QuietHours,
        Reason::Ok,
    ];

    fn category(key: &str, critical: bool, email: bool, push: bool) -> Category {
        let now = datetime!(2026-01-01 00:00 UTC);
        Category::new(
            crate::category::NewCategory {
                key: CategoryKey::parse(key).unwrap(),
                name: crate::category::CategoryName::parse(key).unwrap(),
                description: None,
                critical,
                defaults: crate::category::ChannelDefaults { email, push },
            },
            now,
        )
    }

    /// Critical, on by default: password resets, fraud alerts.
    fn security() -> Category {
        category("security", true, true, true)
    }

    /// Email on, push off by default.
    fn marketing() -> Category {
        category("marketing", false, true, false)
    }

    /// On by default on both channels.
    fn order_updates() -> Category {
        category("order-updates", false, true, true)
    }

    /// [`profile`] changed by `change`.
    fn profile_with(change: impl FnOnce(&mut UserProfile)) -> UserProfile {
        let mut profile = profile();
        change(&mut profile);
        profile
    }

    /// Records the user's own choice in the category `key`.
    fn choose(profile: &mut UserProfile, key: &str, email: Option<bool>, push: Option<bool>) {
        profile.categories.insert(CategoryKey::parse(key).unwrap(), CategoryChoice { email, push });
    }

    /// [`profile`] with quiet hours `quiet` (`HH:MM-HH:MM`) in `zone_name`.
    fn quiet_in(zone_name: &str, quiet: &str) -> UserProfile {
        let (start, end) = quiet.split_once('-').unwrap();
        profile_with(|profile| {
            profile.preferences.timezone = zone(zone_name);
            profile.preferences.quiet_hours = Some(window(start, end));
        })
    }

    /// Where `decide` should send when it names targets.
    fn targets_of(profile: &UserProfile, channel: Channel) -> Targets {
        match channel {
            Channel::Email => Targets::Email(profile.user.email.clone()),
            Channel::Push => Targets::Tokens(
                profile.active_devices().map(|device| (device.token.clone(), device.platform)).collect(),
            ),
        }
    }

    /// One decision: who, on which channel, in which category, when, and the expected
    /// reason and end of quiet hours (`allowed` and the targets follow from the reason).
    struct Row {
        case: &'static str,
        profile: UserProfile,
        channel: Channel,
        category: Option<Category>,
        at: OffsetDateTime,
        reason: Reason,
        next_allowed_at: Option<OffsetDateTime>,
    }

    /// Berlin, 2026-03-29: 02:00 CET (01:00Z) jumps to 03:00 CEST.
    const BERLIN_SPRING_FORWARD: OffsetDateTime = datetime!(2026-03-29 01:00 UTC);
    /// Berlin, 2026-10-25: 03:00 CEST (01:00Z) falls back to 02:00 CET.
    const BERLIN_FALL_BACK: OffsetDateTime = datetime!(2026-10-25 01:00 UTC);
    /// New York, 2026-03-08: 02:00 EST (07:00Z) jumps to 03:00 EDT.
    const NEW_YORK_SPRING_FORWARD: OffsetDateTime = datetime!(2026-03-08 07:00 UTC);
    /// New York, 2026-11-01: 02:00 EDT (06:00Z) falls back to 01:00 EST.
    const NEW_YORK_FALL_BACK: OffsetDateTime = datetime!(2026-11-01 06:00 UTC);

    /// The table. The base profile is opted in to both channels, has an email address and
    /// one active Android device, and is quiet 22:00–07:00 in Lagos (no DST).
    ///
    /// `no_address` has no row: every user has an email address today, so `decide` cannot
    /// answer it (see `email_address`); a state rebuilt from the history can, see
    /// `as_recorded_email_needs_an_address_on_record`.
    fn decision_table() -> Vec<Row> {
        use Channel::{Email, Push};
        use Reason::{CategoryOptedOut, Critical, NoActiveDevice, Ok, OptedOut, QuietHours};
        let lagos_morning = Some(datetime!(2026-06-02 06:00 UTC));
        let without_active_device = |profile: &mut UserProfile| {
            profile.devices = vec![device("inactive", Platform::Web, false, NOON_IN_LAGOS)];
        };
        let row = |case, profile, channel, category, at, reason, next_allowed_at| Row {
            case,
            profile,
            channel,
            category,
            at,
            reason,
            next_allowed_at,
        };
        vec![
            // Nowhere to send comes first, before a critical category and before opt-outs.
            row(
                "no device, critical category",
                profile_with(without_active_device),
                Push,
                Some(security()),
                NOON_IN_LAGOS,
                NoActiveDevice,
                None,
            ),
            row(
                "no device beats opt-out and quiet hours",
                profile_with(|profile| {
                    without_active_device(profile);
                    profile.preferences.push = false;
                }),
                Push,
                Some(marketing()),
                MIDNIGHT_IN_LAGOS,
                NoActiveDevice,
                None,
            ),
            row(
                "only inactive devices, no category",
                profile_with(without_active_device),
                Push,
                None,
                NOON_IN_LAGOS,
                NoActiveDevice,
                None,
            ),
            // A critical category allows whatever the user opted out of.
            row("critical, nothing in the way", profile(), Email, Some(security()), NOON_IN_LAGOS, Critical, None),
            row("critical beats quiet hours", profile(), Push, Some(security()), MIDNIGHT_IN_LAGOS, Critical, None),
            row(
                "critical beats the global switch",
                profile_with(|profile| profile.preferences.email = false),
                Email,
                Some(security()),
                NOON_IN_LAGOS,
                Critical,
                None,
            ),
            row(
                "critical beats the user's choice in it",
                profile_with(|profile| choose(profile, "security", Some(false), Some(false))),
                Push,
                Some(security()),
                NOON_IN_LAGOS,
                Critical,
                None,
            ),
            row(
                "critical with defaults off",
                profile(),
                Email,
                Some(category("legal", true, false, false)),
                NOON_IN_LAGOS,
                Critical,
                None,
            ),
            row(
                "critical beats every opt-out and quiet hours at once",
                profile_with(|profile| {
                    profile.preferences.push = false;
                    choose(profile, "security", None, Some(false));
                }),
                Push,
                Some(security()),
                MIDNIGHT_IN_LAGOS,
                Critical,
                None,
            ),
            // The global switch, then the category, then quiet hours.
            row(
                "opted out, no category",
                profile_with(|profile| profile.preferences.email = false),
                Email,
                None,
                NOON_IN_LAGOS,
                OptedOut,
                None,
            ),
            row(
                "the global switch beats a category the user opted in to",
                profile_with(|profile| {
                    profile.preferences.email = false;
                    choose(profile, "order-updates", Some(true), None);
                }),
                Email,
                Some(order_updates()),
                NOON_IN_LAGOS,
                OptedOut,
                None,
            ),
            row(
                "the global switch beats a category off by default and quiet hours",
                profile_with(|profile| profile.preferences.push = false),
                Push,
                Some(marketing()),
                MIDNIGHT_IN_LAGOS,
                OptedOut,
                None,
            ),
            row("category off by default", profile(), Push, Some(marketing()), NOON_IN_LAGOS, CategoryOptedOut, None),
            row(
                "category off beats quiet hours",
                profile(),
                Push,
                Some(marketing()),
                MIDNIGHT_IN_LAGOS,
                CategoryOptedOut,
                None,
            ),
            row(
                "the user's choice turns on a channel off by default",
                profile_with(|profile| choose(profile, "marketing", None, Some(true))),
                Push,
                Some(marketing()),
                NOON_IN_LAGOS,
                Ok,
                None,
            ),
            row(
                "the user's choice turns off a channel on by default",
                profile_with(|profile| choose(profile, "marketing", Some(false), None)),
                Email,
                Some(marketing()),
                NOON_IN_LAGOS,
                CategoryOptedOut,
                None,
            ),
            row(
                "a choice naming only email: email off",
                profile_with(|profile| choose(profile, "order-updates", Some(false), None)),
                Email,
                Some(order_updates()),
                NOON_IN_LAGOS,
                CategoryOptedOut,
                None,
            ),
            row(
                "a choice naming only email: push follows its default (on)",
                profile_with(|profile| choose(profile, "order-updates", Some(false), None)),
                Push,
                Some(order_updates()),
                NOON_IN_LAGOS,
                Ok,
                None,
            ),
            row(
                "a choice naming only push: email follows its default (on)",
                profile_with(|profile| choose(profile, "marketing", None, Some(true))),
                Email,
                Some(marketing()),
                NOON_IN_LAGOS,
                Ok,
                None,
            ),
            row(
                "a choice in another category does not apply",
                profile_with(|profile| choose(profile, "marketing", Some(false), Some(false))),
                Email,
                Some(order_updates()),
                NOON_IN_LAGOS,
                Ok,
                None,
            ),
            row(
                "without a category, category choices do not apply",
                profile_with(|profile| choose(profile, "marketing", Some(false), Some(false))),
                Email,
                None,
                NOON_IN_LAGOS,
                Ok,
                None,
            ),
            row("quiet hours, no category", profile(), Email, None, MIDNIGHT_IN_LAGOS, QuietHours, lagos_morning),
            row(
                "quiet hours, category on by default",
                profile(),
                Push,
                Some(order_updates()),
                MIDNIGHT_IN_LAGOS,
                QuietHours,
                lagos_morning,
            ),
            row(
                "quiet hours, category turned on by the user",
                profile_with(|profile| choose(profile, "marketing", None, Some(true))),
                Push,
                Some(marketing()),
                MIDNIGHT_IN_LAGOS,
                QuietHours,
                lagos_morning,
            ),
            row("ok, no category", profile(), Push, None, NOON_IN_LAGOS, Ok, None),
            row("ok, category on by default", profile(), Email, Some(order_updates()), NOON_IN_LAGOS, Ok, None),
            // DST edges with categories: quiet hours end when the local clock really leaves them.
            row(
                "Berlin spring-forward: an end in the gap ends at the jump",
                quiet_in("Europe/Berlin", "22:00-02:30"),
                Email,
                Some(order_updates()),
                datetime!(2026-03-29 00:30 UTC), // 01:30 CET
                QuietHours,
                Some(BERLIN_SPRING_FORWARD),
            ),
            row(
                "Berlin spring-forward: after the jump the gap's end is past",
                quiet_in("Europe/Berlin", "22:00-02:30"),
                Email,
                Some(order_updates()),
                BERLIN_SPRING_FORWARD, // 03:00 CEST
                Ok,
                None,
            ),
            row(
                "Berlin spring-forward: a night window ends at 07:00 CEST, an hour early in UTC",
                quiet_in("Europe/Berlin", "23:00-07:00"),
                Push,
                Some(order_updates()),
                datetime!(2026-03-29 00:30 UTC), // 01:30 CET
                QuietHours,
                Some(datetime!(2026-03-29 05:00 UTC)),
            ),
            row(
                "Berlin fall-back: a night window ends at 07:00 CET, an hour late in UTC",
                quiet_in("Europe/Berlin", "23:00-07:00"),
                Push,
                Some(order_updates()),
                datetime!(2026-10-25 00:30 UTC), // 02:30 CEST
                QuietHours,
                Some(datetime!(2026-10-25 06:00 UTC)),
            ),
            row(
                "Berlin fall-back: the clock falling back out of the window ends it",
                {
                    let mut profile = quiet_in("Europe/Berlin", "02:30-04:00");
                    choose(&mut profile, "marketing", None, Some(true));
                    profile
                },
                Push,
                Some(marketing()),
                datetime!(2026-10-25 00:40 UTC), // 02:40 CEST
                QuietHours,
                Some(BERLIN_FALL_BACK),
            ),
            row(
                "Berlin fall-back: the repeated 02:00-02:30 is outside the window",
                quiet_in("Europe/Berlin", "02:30-04:00"),
                Email,
                Some(marketing()),
                datetime!(2026-10-25 01:15 UTC), // 02:15 CET
                Ok,
                None,
            ),
            row(
                "Berlin fall-back: a category off by default still says no, with no time to wait for",
                quiet_in("Europe/Berlin", "02:30-04:00"),
                Push,
                Some(marketing()),
                datetime!(2026-10-25 00:40 UTC),
                CategoryOptedOut,
                None,
            ),
            row(
                "New York spring-forward: critical during quiet hours at the edge",
                quiet_in("America/New_York", "22:00-07:00"),
                Push,
                Some(security()),
                datetime!(2026-03-08 06:30 UTC), // 01:30 EST
                Critical,
                None,
            ),
            row(
                "New York spring-forward: the same instant, not critical",
                quiet_in("America/New_York", "22:00-07:00"),
                Push,
                Some(order_updates()),
                datetime!(2026-03-08 06:30 UTC),
                QuietHours,
                Some(datetime!(2026-03-08 11:00 UTC)), // 07:00 EDT
            ),
            row(
                "New York spring-forward: critical right after the jump",
                quiet_in("America/New_York", "01:00-02:30"),
                Email,
                Some(security()),
                NEW_YORK_SPRING_FORWARD,
                Critical,
                None,
            ),
            row(
                "New York spring-forward: an end in the gap ends at the jump",
                quiet_in("America/New_York", "01:00-02:30"),
                Email,
                Some(order_updates()),
                datetime!(2026-03-08 06:59 UTC), // 01:59 EST
                QuietHours,
                Some(NEW_YORK_SPRING_FORWARD),
            ),
            row(
                "New York fall-back: critical in the repeated hour",
                quiet_in("America/New_York", "22:00-07:00"),
                Email,
                Some(security()),
                datetime!(2026-11-01 06:30 UTC), // 01:30 EST, the second time
                Critical,
                None,
            ),
            row(
                "New York fall-back: the window lasts the repeated hour longer",
                quiet_in("America/New_York", "22:00-07:00"),
                Email,
                Some(order_updates()),
                datetime!(2026-11-01 05:30 UTC), // 01:30 EDT, the first time
                QuietHours,
                Some(datetime!(2026-11-01 12:00 UTC)), // 07:00 EST
            ),
            row(
                "New York fall-back: an end reached before the fall-back ends the window",
                quiet_in("America/New_York", "00:00-01:30"),
                Push,
                Some(order_updates()),
                datetime!(2026-11-01 05:10 UTC), // 01:10 EDT
                QuietHours,
                Some(datetime!(2026-11-01 05:30 UTC)),
            ),
            row(
                "New York fall-back: the repeated hour starts a new quiet spell",
                quiet_in("America/New_York", "00:00-01:30"),
                Push,
                Some(order_updates()),
                NEW_YORK_FALL_BACK, // 01:00 EST
                QuietHours,
                Some(datetime!(2026-11-01 06:30 UTC)),
            ),
        ]
    }

    #[test]
    fn the_table_of_decisions() {
        let mut seen = std::collections::HashSet::new();
        for Row { case, profile, channel, category, at, reason, next_allowed_at } in decision_table() {
            let decision = decide(&profile, channel, category.as_ref(), at);
            let allowed = matches!(reason, Reason::Ok | Reason::Critical);
            let targets = matches!(reason, Reason::Ok | Reason::Critical | Reason::QuietHours)
                .then(|| targets_of(&profile, channel));
            assert_eq!(decision, Eligibility { channel, at, allowed, reason, next_allowed_at, targets }, "{case}");
            // The same decision from the part of the profile a bulk decision reads.
            let sending = decide_sending(&SendingProfile::of(&profile, channel), channel, category.as_ref(), at);
            assert_eq!(sending, decision, "{case}, from the sending profile");
            // The same decision from the same consent as a state, without targets.
            let recorded = decide_as_recorded(&ConsentState::of(&profile), channel, category.as_ref(), at);
            assert_eq!(recorded, Eligibility { targets: None, ..decision }, "{case}, as recorded");
            seen.insert(reason);
        }
        for reason in EVERY_REASON {
            // Exhaustive: a new reason does not build until the table says how it is covered.
            match reason {
                Reason::NoAddress => assert!(!seen.contains(&reason), "no_address became reachable: add rows"),
                Reason::NoActiveDevice
                | Reason::Critical
                | Reason::OptedOut
                | Reason::CategoryOptedOut
                | Reason::QuietHours
                | Reason::Ok => assert!(seen.contains(&reason), "no row decides {reason:?}"),
            }
        }
    }

    /// A state rebuilt from the history: the base profile's consent, with one device.
    fn recorded_state() -> ConsentState {
        ConsentState::of(&profile())
    }

    #[test]
    fn as_recorded_email_needs_an_address_on_record() {
        let mut state = recorded_state();
        let decision = decide_as_recorded(&state, Channel::Email, None, NOON_IN_LAGOS);
        assert_eq!((decision.allowed, decision.reason), (true, Reason::Ok));

        state.email = None;
        for category in [None, Some(security()), Some(order_updates())] {
            let decision = decide_as_recorded(&state, Channel::Email, category.as_ref(), MIDNIGHT_IN_LAGOS);
            assert_eq!(
                decision,
                Eligibility {
                    channel: Channel::Email,
                    at: MIDNIGHT_IN_LAGOS,
                    allowed: false,
                    reason: Reason::NoAddress,
                    next_allowed_at: None,
                    targets: None,
                },
                "{category:?}"
            );
        }
        // Push does not need an address.
        assert_eq!(decide_as_recorded(&state, Channel::Push, None, NOON_IN_LAGOS).reason, Reason::Ok);
    }

    #[test]
    fn as_recorded_push_needs_a_device_that_was_active_then() {
        let mut state = recorded_state();
        let reason =
            |state: &ConsentState| decide_as_recorded(state, Channel::Push, Some(&security()), NOON_IN_LAGOS).reason;
        assert_eq!(reason(&state), Reason::Critical);

        let (inactive, active) = (DeviceId::generate(), DeviceId::generate());
        state.devices = std::collections::BTreeMap::from([(inactive, false)]);
        assert_eq!(reason(&state), Reason::NoActiveDevice);
        state.devices.clear();
        assert_eq!(reason(&state), Reason::NoActiveDevice);
        state.devices.extend([(inactive, false), (active, true)]);
        assert_eq!(reason(&state), Reason::Critical);
        // Email does not need a device.
        state.devices.clear();
        assert_eq!(decide_as_recorded(&state, Channel::Email, None, NOON_IN_LAGOS).reason, Reason::Ok);
    }

    #[test]
    fn as_recorded_decisions_name_no_targets_but_keep_the_end_of_quiet_hours() {
        let state = recorded_state();
        for (channel, category, at, reason, next_allowed_at) in [
            (Channel::Email, None, NOON_IN_LAGOS, Reason::Ok, None),
            (Channel::Push, Some(security()), MIDNIGHT_IN_LAGOS, Reason::Critical, None),
            (Channel::Push, None, MIDNIGHT_IN_LAGOS, Reason::QuietHours, Some(datetime!(2026-06-02 06:00 UTC))),
        ] {
            let decision = decide_as_recorded(&state, channel, category.as_ref(), at);
            assert_eq!((decision.reason, decision.next_allowed_at), (reason, next_allowed_at));
            assert_eq!(decision.targets, None, "{reason:?}");
        }
    }

    #[test]
    fn as_recorded_decisions_use_the_recorded_choices_and_switches() {
        let mut state = recorded_state();
        let marketing = marketing();
        let push = |state: &ConsentState| decide_as_recorded(state, Channel::Push, Some(&marketing), NOON_IN_LAGOS);
        assert_eq!(push(&state).reason, Reason::CategoryOptedOut);
        state.categories.insert(marketing.key.clone(), CategoryChoice { email: None, push: Some(true) });
        assert_eq!(push(&state).reason, Reason::Ok);
        state.preferences.push = false;
        assert_eq!(push(&state).reason, Reason::OptedOut);
    }

    #[test]
    fn a_window_whose_end_cannot_be_represented_holds_the_notification_back() {
        // Quiet 22:00–07:00 in Lagos; jiff's instants end on 9999-12-30 at 22:00 UTC. A window
        // that starts before and ends after that, and an instant beyond it, are undecidable:
        // never a wrong "yes".
        for at in [datetime!(9999-12-30 21:30 UTC), datetime!(9999-12-31 23:30 UTC)] {
            let decision = decide(&profile(), Channel::Email, None, at);
            assert_eq!((decision.allowed, decision.reason), (false, Reason::QuietHours), "{at}");
            assert_eq!(decision.next_allowed_at, None);
            assert!(decision.targets.is_some());
        }
        // Outside the window on such a day, the answer is still ok.
        assert_eq!(decide(&profile(), Channel::Email, None, datetime!(9999-12-30 10:00 UTC)).reason, Reason::Ok);
    }

    #[test]
    fn a_non_wrapping_window_is_quiet_from_its_start_instant_and_open_at_its_end_instant() {
        let lunch = "12:00-13:00";
        assert_eq!(end_of(lunch, "Africa/Lagos", datetime!(2026-06-01 10:59 UTC)), None);
        assert_eq!(
            end_of(lunch, "Africa/Lagos", datetime!(2026-06-01 11:00 UTC)),
            Some(datetime!(2026-06-01 12:00 UTC))
        );
        assert_eq!(
            end_of(lunch, "Africa/Lagos", datetime!(2026-06-01 11:59:59.999 UTC)),
            Some(datetime!(2026-06-01 12:00 UTC))
        );
        assert_eq!(end_of(lunch, "Africa/Lagos", datetime!(2026-06-01 12:00 UTC)), None);
    }

    #[test]
    fn a_wrapping_window_spans_midnight_in_the_users_zone() {
        let night = "22:00-07:00";
        let ends = Some(datetime!(2026-06-02 06:00 UTC));
        assert_eq!(end_of(night, "Africa/Lagos", datetime!(2026-06-01 20:59 UTC)), None);
        assert_eq!(end_of(night, "Africa/Lagos", datetime!(2026-06-01 21:00 UTC)), ends);
        assert_eq!(end_of(night, "Africa/Lagos", datetime!(2026-06-01 23:30 UTC)), ends);
        assert_eq!(end_of(night, "Africa/Lagos", datetime!(2026-06-02 05:59:30 UTC)), ends);
        assert_eq!(end_of(night, "Africa/Lagos", datetime!(2026-06-02 06:00 UTC)), None);
        // The offset of `at` is irrelevant: only the instant counts.
        assert_eq!(end_of(night, "Africa/Lagos", datetime!(2026-06-01 16:00 -07:00)), ends);
    }

    #[test]
    fn a_window_ending_in_a_spring_forward_gap_ends_at_the_jump() {
        // New York, 2026-03-08: 02:00 EST (07:00Z) jumps to 03:00 EDT.
        let jump = Some(datetime!(2026-03-08 07:00 UTC));
        assert_eq!(end_of("01:00-02:30", "America/New_York", datetime!(2026-03-08 06:30 UTC)), jump);
        assert_eq!(end_of("22:00-02:30", "America/New_York", datetime!(2026-03-08 04:00 UTC)), jump);
        // A night window across the short night ends at 07:00 EDT, an hour early in UTC.
        assert_eq!(
            end_of("22:00-07:00", "America/New_York", datetime!(2026-03-08 04:00 UTC)),
            Some(datetime!(2026-03-08 11:00 UTC))
        );
        // London, 2026-03-29: 01:00 GMT (01:00Z) jumps to 02:00 BST.
        assert_eq!(
            end_of("00:30-01:30", "Europe/London", datetime!(2026-03-29 00:45 UTC)),
            Some(datetime!(2026-03-29 01:00 UTC))
        );
    }

    #[test]
    fn a_window_whose_start_is_skipped_begins_right_after_the_jump() {
        // New York, 2026-03-08: 02:15 never happens; 03:00 EDT is already inside 02:15–06:00.
        assert_eq!(end_of("02:15-06:00", "America/New_York", datetime!(2026-03-08 06:59 UTC)), None);
        assert_eq!(
            end_of("02:15-06:00", "America/New_York", datetime!(2026-03-08 07:00 UTC)),
            Some(datetime!(2026-03-08 10:00 UTC))
        );
    }

    #[test]
    fn a_fall_back_ends_a_window_at_the_first_moment_the_clock_is_outside_it() {
        // New York, 2026-11-01: 02:00 EDT (06:00Z) falls back to 01:00 EST.
        let ny = "America/New_York";
        // 01:30 is reached first in EDT; the repeated 01:00–01:30 EST is a new quiet spell.
        assert_eq!(end_of("00:00-01:30", ny, datetime!(2026-11-01 04:30 UTC)), Some(datetime!(2026-11-01 05:30 UTC)));
        assert_eq!(end_of("00:00-01:30", ny, datetime!(2026-11-01 05:45 UTC)), None);
        assert_eq!(end_of("00:00-01:30", ny, datetime!(2026-11-01 06:10 UTC)), Some(datetime!(2026-11-01 06:30 UTC)));
        // Falling back to 01:00 leaves 01:30–03:00 for half an hour.
        assert_eq!(end_of("01:30-03:00", ny, datetime!(2026-11-01 05:40 UTC)), Some(datetime!(2026-11-01 06:00 UTC)));
        assert_eq!(end_of("01:30-03:00", ny, datetime!(2026-11-01 06:15 UTC)), None);
        assert_eq!(end_of("01:30-03:00", ny, datetime!(2026-11-01 06:30 UTC)), Some(datetime!(2026-11-01 08:00 UTC)));
        // A window containing the whole repeated hour simply lasts an hour longer.
        assert_eq!(end_of("22:00-07:00", ny, datetime!(2026-11-01 03:00 UTC)), Some(datetime!(2026-11-01 12:00 UTC)));

        // London, 2026-10-25: 02:00 BST (01:00Z) falls back to 01:00 GMT.
        let london = "Europe/London";
        assert_eq!(
            end_of("01:00-01:30", london, datetime!(2026-10-25 00:10 UTC)),
            Some(datetime!(2026-10-25 00:30 UTC))
        );
        assert_eq!(end_of("01:00-01:30", london, datetime!(2026-10-25 00:45 UTC)), None);
        assert_eq!(
            end_of("01:00-01:30", london, datetime!(2026-10-25 01:00 UTC)),
            Some(datetime!(2026-10-25 01:30 UTC))
        );
    }

    #[test]
    fn southern_hemisphere_zones_shift_in_april_and_october() {
        // Sydney, 2026-10-04: 02:00 AEST (16:00Z the day before) jumps to 03:00 AEDT.
        let sydney = "Australia/Sydney";
        assert_eq!(
            end_of("22:00-02:30", sydney, datetime!(2026-10-03 13:00 UTC)),
            Some(datetime!(2026-10-03 16:00 UTC))
        );
        // Sydney, 2026-04-05: 03:00 AEDT (16:00Z the day before) falls back to 02:00 AEST.
        assert_eq!(
            end_of("02:00-02:45", sydney, datetime!(2026-04-04 15:10 UTC)),
            Some(datetime!(2026-04-04 15:45 UTC))
        );
        assert_eq!(end_of("02:00-02:45", sydney, datetime!(2026-04-04 15:50 UTC)), None);
        assert_eq!(
            end_of("02:00-02:45", sydney, datetime!(2026-04-04 16:00 UTC)),
            Some(datetime!(2026-04-04 16:45 UTC))
        );
        // Adelaide (+09:30/+10:30), 2026-10-04: 02:00 ACST (16:30Z the day before) jumps to 03:00.
        assert_eq!(
            end_of("01:00-02:30", "Australia/Adelaide", datetime!(2026-10-03 16:15 UTC)),
            Some(datetime!(2026-10-03 16:30 UTC))
        );
    }

    #[test]
    fn lord_howe_shifts_by_half_an_hour() {
        let lord_howe = "Australia/Lord_Howe";
        // 2026-10-04: 02:00 (+10:30, 15:30Z the day before) jumps to 02:30 (+11).
        assert_eq!(
            end_of("01:00-02:15", lord_howe, datetime!(2026-10-03 15:00 UTC)),
            Some(datetime!(2026-10-03 15:30 UTC))
        );
        // 2026-04-05: 02:00 (+11, 15:00Z the day before) falls back to 01:30 (+10:30).
        assert_eq!(
            end_of("01:00-01:45", lord_howe, datetime!(2026-04-04 14:40 UTC)),
            Some(datetime!(2026-04-04 14:45 UTC))
        );
        assert_eq!(end_of("01:00-01:45", lord_howe, datetime!(2026-04-04 14:50 UTC)), None);
        assert_eq!(
            end_of("01:00-01:45", lord_howe, datetime!(2026-04-04 15:00 UTC)),
            Some(datetime!(2026-04-04 15:15 UTC))
        );
    }

    #[test]
    fn half_and_quarter_hour_offsets_are_respected() {
        // Kolkata is +05:30: 22:00–07:00 local is 16:30Z–01:30Z.
        let night = "22:00-07:00";
        assert_eq!(end_of(night, "Asia/Kolkata", datetime!(2026-06-01 16:29 UTC)), None);
        assert_eq!(
            end_of(night, "Asia/Kolkata", datetime!(2026-06-01 16:30 UTC)),
            Some(datetime!(2026-06-02 01:30 UTC))
        );
        assert_eq!(end_of(night, "Asia/Kolkata", datetime!(2026-06-02 01:30 UTC)), None);
        // Kathmandu is +05:45: 13:00–14:00 local is 07:15Z–08:15Z.
        let lunch = "13:00-14:00";
        assert_eq!(end_of(lunch, "Asia/Kathmandu", datetime!(2026-06-01 07:14 UTC)), None);
        assert_eq!(
            end_of(lunch, "Asia/Kathmandu", datetime!(2026-06-01 07:15 UTC)),
            Some(datetime!(2026-06-01 08:15 UTC))
        );
        assert_eq!(end_of(lunch, "Asia/Kathmandu", datetime!(2026-06-01 08:15 UTC)), None);
    }

    #[test]
    fn a_zone_without_daylight_saving_keeps_the_same_utc_window_all_year() {
        for (at, end) in [
            (datetime!(2026-03-08 21:30 UTC), datetime!(2026-03-09 06:00 UTC)),
            (datetime!(2026-11-01 21:30 UTC), datetime!(2026-11-02 06:00 UTC)),
        ] {
            assert_eq!(end_of("22:00-07:00", "Africa/Lagos", at), Some(end));
        }
    }

    /// The zones of the sweep: DST in both hemispheres, at 00:00, 01:00, 02:00 and 03:00
    /// local, by 30 minutes (Lord Howe), at quarter-hour offsets (Chatham), negative DST
    /// (Dublin); and zones without DST.
    const SWEPT_ZONES: [&str; 20] = [
        "America/New_York",
        "America/Los_Angeles",
        "America/St_Johns",
        "America/Havana",
        "America/Santiago",
        "Europe/London",
        "Europe/Dublin",
        "Europe/Berlin",
        "Africa/Cairo",
        "Asia/Beirut",
        "Asia/Jerusalem",
        "Australia/Sydney",
        "Australia/Adelaide",
        "Australia/Lord_Howe",
        "Pacific/Auckland",
        "Pacific/Chatham",
        "Asia/Kolkata",
        "Asia/Kathmandu",
        "Africa/Lagos",
        "UTC",
    ];

    /// Windows around the usual transition hours (touching gaps and repeated hours from
    /// either side), wrapping ones, and nearly full days.
    const SWEPT_WINDOWS: [&str; 22] = [
        "22:00-07:00",
        "23:30-00:30",
        "21:00-00:00",
        "00:00-01:00",
        "00:00-01:30",
        "00:30-02:30",
        "01:00-02:00",
        "01:15-01:45",
        "01:30-02:15",
        "01:30-03:00",
        "01:59-02:01",
        "02:00-02:30",
        "02:00-03:00",
        "02:15-02:45",
        "02:30-03:30",
        "02:45-03:45",
        "03:00-04:00",
        "03:15-02:45",
        "12:00-13:00",
        "00:00-23:59",
        "23:59-23:58",
        "04:00-03:00",
    ];

    /// The instants of the 2026 transitions of `zone`.
    fn transitions_in_2026(zone: &TimeZone) -> Vec<Timestamp> {
        let year_start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let year_end: Timestamp = "2027-01-01T00:00:00Z".parse().unwrap();
        zone.following(year_start).map(|t| t.timestamp()).take_while(|t| *t < year_end).collect()
    }

    fn to_time(timestamp: Timestamp) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(timestamp.as_nanosecond()).unwrap()
    }

    /// Compares `quiet_window_end` with stepping the wall clock minute by minute, for
    /// minutes of the 48 hours around each 2026 transition of many zones.
    ///
    /// The reference reads the local hour and minute at each UTC minute over the swept
    /// 48 hours and the 48 hours after them; "the first minute at or after `at` outside the
    /// window" is then computed for every `at` at once, scanning backwards.
    #[test]
    fn quiet_window_end_matches_a_minute_by_minute_walk_around_every_transition() {
        const SWEEP: i64 = 48 * 60;
        const LOOKAHEAD: i64 = 48 * 60;
        let (mut checked, mut quiet_instants, mut cut_by_a_transition) = (0_usize, 0_usize, 0_usize);
        let mut zones_with_transitions = 0;
        for zone_name in SWEPT_ZONES {
            let name = zone(zone_name);
            let tz = TimeZone::get(zone_name).unwrap();
            let mut days = transitions_in_2026(&tz);
            if days.is_empty() {
                days.push("2026-06-15T00:00:00Z".parse().unwrap());
            } else {
                zones_with_transitions += 1;
            }
            for transition in days {
                let first = transition.as_second() - 24 * 3600;
                let minute = |i: i64| Timestamp::from_second(first + i * 60).unwrap();
                let clock: Vec<ClockTime> = (0..SWEEP + LOOKAHEAD)
                    .map(|i| {
                        let local = tz.to_datetime(minute(i));
                        let hh_mm = time::Time::from_hms(local.hour() as u8, local.minute() as u8, 0).unwrap();
                        ClockTime::from_time(hh_mm)
                    })
                    .collect();
                for (phase, raw) in (0..).zip(SWEPT_WINDOWS) {
                    let (start, end) = raw.split_once('-').unwrap();
                    let quiet = window(start, end);
                    let mut first_outside = vec![None; clock.len() + 1];
                    for i in (0..clock.len()).rev() {
                        first_outside[i] = if quiet.contains(clock[i]) { first_outside[i + 1] } else { Some(i) };
                    }
                    // Every minute of the two hours around the transition, every 11th
                    // minute (a different residue for each window) elsewhere.
                    let sampled = (0..SWEEP).filter(|i| (i - SWEEP / 2).abs() <= 60 || (i + phase) % 11 == 0);
                    for i in sampled {
                        let at = minute(i);
                        let index = i as usize;
                        let expected = match first_outside[index] {
                            Some(j) if j == index => None,
                            Some(j) => Some(to_time(minute(j as i64))),
                            None => panic!("{raw} in {zone_name} does not end within 48 hours of {at}"),
                        };
                        let actual = quiet_window_end(&quiet, &name, to_time(at)).expect("representable");
                        assert_eq!(actual, expected, "{raw} in {zone_name} at {at} ({})", tz.to_datetime(at));
                        // Transitions fall on whole minutes, so any instant within the minute
                        // gets the same answer.
                        let within = to_time(at) + time::Duration::nanoseconds((i % 60) * 1_000_000_007 + 1);
                        assert_eq!(
                            quiet_window_end(&quiet, &name, within).expect("representable"),
                            expected,
                            "{raw} in {zone_name} at {within}"
                        );
                        checked += 1;
                        quiet_instants += usize::from(expected.is_some());
                        cut_by_a_transition += usize::from(expected == Some(to_time(transition)));
                    }
                }
            }
        }
        assert!(zones_with_transitions >= 15, "only {zones_with_transitions} zones have transitions in 2026");
        assert!(checked > 200_000, "only {checked} instants checked");
        assert!(quiet_instants > checked / 10, "only {quiet_instants} of {checked} instants are quiet");
        assert!(cut_by_a_transition > 1_000, "only {cut_by_a_transition} windows end at a transition");
    }
}
