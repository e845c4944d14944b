//! The change events both stores record with their writes (the transactional outbox), built
//! from the rows a write produced, and the limits of the relay and the feed.

use domain::event::{EventType, NewEvent, RemovalReason};
use domain::ports::{CreatedUser, RepositoryError};
use domain::user::UserId;

use crate::devices::UpsertedRow;
use crate::rows::DeviceRow;

/// How many events one pruning statement deletes at most (a bounded lock and WAL burst);
/// the caller calls again while it deletes.
pub const PRUNE_BATCH: i64 = 10_000;

/// How many events one relay round gives their feed position at most.
pub const SEQUENCE_BATCH: i64 = 5_000;

/// The events of a registration: the profile, and the device gone from the user it was
/// moved from (whose own consumers must stop pushing to it).
pub fn created_user_events(created: &CreatedUser) -> Vec<NewEvent> {
    let mut events = vec![NewEvent::user_created(&created.profile)];
    if let (Some(from), Some(device)) = (created.device_moved_from, created.profile.devices.first()) {
        events.push(NewEvent::device_removed(from, device, RemovalReason::MovedToAnotherUser));
    }
    events
}

impl UpsertedRow {
    /// The events of `user`'s registration of this device: added (a new token), moved (with
    /// the removal from its previous owner), or, for a token `user` already held, activated,
    /// deactivated or refreshed (on another platform); none when nothing but the times
    /// changed (an app registering its token at every start).
    pub fn events(&self, user: UserId) -> Result<Vec<NewEvent>, RepositoryError> {
        let device = domain::device::Device::try_from(self.device.clone())?;
        if self.created {
            return Ok(vec![NewEvent::device(EventType::DeviceAdded, &device)]);
        }
        if let Some(from) = self.moved_from(user.as_uuid()) {
            return Ok(vec![
                NewEvent::device_removed(from, &device, RemovalReason::MovedToAnotherUser),
                NewEvent::device_moved(&device, from),
            ]);
        }
        let kind = match (self.previous_active, device.active) {
            (Some(false), true) => EventType::DeviceActivated,
            (Some(true), false) => EventType::DeviceDeactivated,
            _ if self.previous_platform.as_deref() != Some(self.device.platform.as_str()) => EventType::DeviceRefreshed,
            _ => return Ok(Vec::new()),
        };
        Ok(vec![NewEvent::device(kind, &device)])
    }
}

/// The events of devices whose state a write set to `active`.
pub fn activation_events(devices: Vec<DeviceRow>, active: bool) -> Result<Vec<NewEvent>, RepositoryError> {
    let kind = if active { EventType::DeviceActivated } else { EventType::DeviceDeactivated };
    devices.into_iter().map(|row| Ok(NewEvent::device(kind, &domain::device::Device::try_from(row)?))).collect()
}

/// The events of `user`'s devices deleted by a write.
pub fn deletion_events(user: UserId, devices: Vec<DeviceRow>) -> Result<Vec<NewEvent>, RepositoryError> {
    devices
        .into_iter()
        .map(|row| {
            let device = domain::device::Device::try_from(row)?;
            Ok(NewEvent::device_removed(user, &device, RemovalReason::Deleted))
        })
        .collect()
}

/// `events` in the order in which a write takes their subjects' sequence locks: by subject
/// (so that two writes that both touch two users never wait for each other in a circle),
/// each subject's events in the order the write made them.
pub fn in_lock_order(mut events: Vec<NewEvent>) -> Vec<NewEvent> {
    events.sort_by(|a, b| a.subject.cmp(&b.subject));
    events
}

/// Where the feed resumes after a cursor event, from the feed position stored for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// After this feed position.
    After(i64),
    /// The event is recorded but not yet in the feed: nothing comes after it yet.
    NothingYet,
    /// No event has this id (never, or pruned).
    UnknownCursor,
}

impl Resume {
    /// From the lookup of the cursor's `feed_position` (`None`: no such row).
    pub fn from_lookup(stored: Option<Option<i64>>) -> Self {
        match stored {
            None => Self::UnknownCursor,
            Some(None) => Self::NothingYet,
            Some(Some(position)) => Self::After(position),
        }
    }
}

/// The rows' feed limit: `limit` clamped to what one page may hold.
pub fn feed_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, MAX_FEED_PAGE))
}

/// The largest page of the pull feed.
pub const MAX_FEED_PAGE: u32 = 1_000;
