//! Profiles assembled from rows, and the arithmetic of pages: the same whichever store
//! loaded the rows.

use std::collections::HashMap;

use domain::category::CategoryChoices;
use domain::consent::{Provenance, registration_changes};
use domain::ports::{CreatedUser, RepositoryError};
use domain::preferences::Preferences;
use domain::user::{PageRequest, User, UserId, UserProfile};
use uuid::Uuid;

use crate::devices::UpsertedRow;
use crate::rows::{ChoiceRow, DeviceRow, PreferencesRow, UserRow, choices_by_user, devices_from_rows};
use crate::writes::{HistoryEntry, history_entries};

/// A profile from its rows; `devices` must come in profile order (active first, most
/// recently seen first).
pub fn profile_from_rows(
    user: UserRow,
    preferences: PreferencesRow,
    categories: CategoryChoices,
    devices: impl IntoIterator<Item = DeviceRow>,
) -> Result<UserProfile, RepositoryError> {
    Ok(UserProfile {
        user: User::try_from(user)?,
        preferences: Preferences::try_from(preferences)?,
        categories,
        devices: devices_from_rows(devices)?,
    })
}

/// Profiles from the rows of `users ⋈ preferences ⟕ devices`, in which the rows of one user
/// are adjacent and its devices in profile order (a user without devices has one row
/// without a device), with `choices` (of any of them) attached to their owners.
pub fn profiles_from_joined_rows(
    rows: impl IntoIterator<Item = (UserRow, PreferencesRow, Option<DeviceRow>)>,
    choices: impl IntoIterator<Item = ChoiceRow>,
) -> Result<Vec<UserProfile>, RepositoryError> {
    let mut choices = choices_by_user(choices)?;
    let mut profiles = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while let Some((user, preferences, first_device)) = rows.next() {
        let mut devices: Vec<DeviceRow> = first_device.into_iter().collect();
        while let Some((_, _, device)) = rows.next_if(|(next, _, _)| next.id == user.id) {
            devices.extend(device);
        }
        let categories = choices.remove(&user.id).unwrap_or_default();
        profiles.push(profile_from_rows(user, preferences, categories, devices)?);
    }
    Ok(profiles)
}

/// A row of one user's profile read in one statement ([`profile_query!`]): the user and
/// its preferences, with one of its devices and one of its category choices (`None` when it
/// has none).
///
/// [`profile_query!`]: crate::profile_query
pub type ProfileRow = (UserRow, PreferencesRow, Option<DeviceRow>, Option<ChoiceRow>);

/// One user's profile from the rows of [`profile_query!`] (`None` without rows: no such
/// user). The rows pair each of the user's devices with each of its choices (a user without
/// devices or without choices has one row per choice or per device, with `None` for the
/// other): every device is taken from the rows of the first row's choice, in the rows'
/// order, which must be the devices' profile order; every choice from the rows of the first
/// row's device. Each device and each choice is thus read once, whatever their numbers.
///
/// [`profile_query!`]: crate::profile_query
pub fn profile_from_rows_of_one_user(rows: Vec<ProfileRow>) -> Result<Option<UserProfile>, RepositoryError> {
    let mut rows = rows.into_iter();
    let Some((user, preferences, device, choice)) = rows.next() else {
        return Ok(None);
    };
    let first_device = device.as_ref().map(|device| device.id);
    let first_choice = choice.as_ref().map(|choice| choice.category_key.clone());
    let mut devices: Vec<DeviceRow> = device.into_iter().collect();
    let mut choices: Vec<ChoiceRow> = choice.into_iter().collect();
    for (_, _, device, choice) in rows {
        let of_first_choice = choice.as_ref().map(|choice| &choice.category_key) == first_choice.as_ref();
        let of_first_device = device.as_ref().map(|device| device.id) == first_device;
        if of_first_choice {
            devices.extend(device);
        }
        if of_first_device {
            choices.extend(choice);
        }
    }
    let categories = choices_by_user(choices)?.remove(&user.id).unwrap_or_default();
    profile_from_rows(user, preferences, categories, devices).map(Some)
}

/// Profiles of `users`, in their order, with `devices` (of any of them, in profile order)
/// and `choices` (of any of them) attached to their owners.
pub fn profiles_with_devices(
    users: impl IntoIterator<Item = (UserRow, PreferencesRow)>,
    devices: impl IntoIterator<Item = DeviceRow>,
    choices: impl IntoIterator<Item = ChoiceRow>,
) -> Result<Vec<UserProfile>, RepositoryError> {
    let mut devices_by_user: HashMap<Uuid, Vec<DeviceRow>> = HashMap::new();
    for device in devices {
        devices_by_user.entry(device.user_id).or_default().push(device);
    }
    let mut choices = choices_by_user(choices)?;
    users
        .into_iter()
        .map(|(user, preferences)| {
            let devices = devices_by_user.remove(&user.id).unwrap_or_default();
            let categories = choices.remove(&user.id).unwrap_or_default();
            profile_from_rows(user, preferences, categories, devices)
        })
        .collect()
}

/// The initial device of a new user: registered (created or moved), or left with the user
/// who holds its token.
#[derive(Debug, Clone)]
pub enum InitialDevice {
    /// None was given.
    None,
    /// Created, or moved from its previous owner.
    Registered(UpsertedRow),
    /// Another user holds the token, and the registration may not take it.
    LeftWithItsOwner,
}

/// The result of creating a user: its rows and what became of its initial device, with the
/// consent history of the registration (every field set, the initial device, and the
/// device gone from the user it was moved from), made by `by`.
pub fn created_user(
    user: UserRow,
    preferences: PreferencesRow,
    device: InitialDevice,
    by: &Provenance,
) -> Result<(CreatedUser, Vec<HistoryEntry>), RepositoryError> {
    let token_left_with_its_owner = matches!(device, InitialDevice::LeftWithItsOwner);
    let device = match device {
        InitialDevice::Registered(row) => Some(row),
        InitialDevice::None | InitialDevice::LeftWithItsOwner => None,
    };
    let id = UserId::from(user.id);
    let device_moved_from = device.as_ref().and_then(|device| device.moved_from(user.id));
    let device_history = device.as_ref().map(|device| device.history(id, by)).unwrap_or_default();
    // A new user has made no category choice yet.
    let profile = profile_from_rows(user, preferences, CategoryChoices::new(), device.map(|device| device.device))?;
    let mut history = history_entries(id, registration_changes(&profile.user, &profile.preferences), by);
    history.extend(device_history);
    Ok((CreatedUser { profile, device_moved_from, token_left_with_its_owner }, history))
}

/// How many rows precede the page, as SQL's `OFFSET` takes it (saturated: a page beyond
/// `i64::MAX` rows is empty anyway).
pub fn page_offset(page: PageRequest) -> i64 {
    i64::try_from(page.offset()).unwrap_or(i64::MAX)
}

/// A SQL `count(*)` as a page's total.
pub fn page_total(count: i64) -> u64 {
    u64::try_from(count).unwrap_or_default()
}

/// The user ids as UUIDs, for `IN (…)` lists.
pub fn uuids(ids: &[UserId]) -> Vec<Uuid> {
    ids.iter().map(UserId::as_uuid).collect()
}
