//! Device registration results and device selection, the same whichever store ran them.

use domain::consent::{Provenance, device_change};
use domain::device::{Device, DeviceId, DeviceSelector, RegisteredDevice};
use domain::ports::RepositoryError;
use domain::user::UserId;
use uuid::Uuid;

use crate::rows::DeviceRow;
use crate::writes::HistoryEntry;

/// The device row an upsert produced, before conversion.
#[derive(Debug, Clone)]
pub struct UpsertedRow {
    /// The device as stored after the upsert.
    pub device: DeviceRow,
    /// Whether the upsert created the row (rather than refreshing or moving it).
    pub created: bool,
    /// The owner before the upsert, if the token was known.
    pub previous_owner: Option<Uuid>,
    /// Whether the device was active before the upsert, if the token was known.
    pub previous_active: Option<bool>,
    /// The device's platform before the upsert, if the token was known.
    pub previous_platform: Option<String>,
}

impl UpsertedRow {
    /// The user the token was moved from, when it belonged to someone other than `user`.
    pub fn moved_from(&self, user: Uuid) -> Option<UserId> {
        self.previous_owner.filter(|owner| *owner != user).map(UserId::from)
    }

    /// The consent history of the registration by `user`: its device's state for `user`
    /// (from none, or from the state before), and for the user it was moved from, the
    /// device gone. Both rows name the registering caller (`by`, else `user`) as the actor.
    pub fn history(&self, user: UserId, by: &Provenance) -> Vec<HistoryEntry> {
        let actor = by.actor_for(user);
        let device = DeviceId::from(self.device.id);
        let moved_from = self.moved_from(user.as_uuid());
        let before = if moved_from.is_some() { None } else { self.previous_active };
        let mut entries: Vec<HistoryEntry> = device_change(device, before, Some(self.device.active))
            .map(|change| HistoryEntry::new(user, change, &actor, by))
            .into_iter()
            .collect();
        if let Some(previous_owner) = moved_from {
            entries.extend(
                device_change(device, self.previous_active, None)
                    .map(|change| HistoryEntry::new(previous_owner, change, &actor, by)),
            );
        }
        entries
    }

    /// The registration as the port reports it to `user`.
    pub fn into_registered(self, user: UserId) -> Result<RegisteredDevice, RepositoryError> {
        let previous_owner = self.moved_from(user.as_uuid());
        Ok(RegisteredDevice { device: Device::try_from(self.device)?, created: self.created, previous_owner })
    }
}

/// Which of a user's devices a [`DeviceSelector`] names: the device with its id, or the
/// devices whose token equals it once runs of `/` are merged on both sides (what some
/// proxies do to web-push endpoints in paths; an exact token is the same case).
#[derive(Debug, Clone)]
pub struct DeviceMatcher {
    id: Option<Uuid>,
    merged_token: String,
}

impl DeviceMatcher {
    /// The matcher of `selector`.
    pub fn new(selector: &DeviceSelector) -> Self {
        Self { id: selector.id().map(|id| id.as_uuid()), merged_token: selector.merged_slashes_token() }
    }

    /// Whether the device with `id` and `token` is named.
    pub fn matches(&self, id: Uuid, token: &str) -> bool {
        self.id == Some(id) || domain::device::merge_slashes(token) == self.merged_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_names_a_device_by_id_exact_token_or_merged_token() {
        let id = Uuid::now_v7();
        let by_id = DeviceMatcher::new(&DeviceSelector::parse(&id.to_string()).unwrap());
        assert!(by_id.matches(id, "anything"));
        assert!(!by_id.matches(Uuid::now_v7(), "anything"));

        let endpoint = "https://push.example.com//wp/abc";
        let exact = DeviceMatcher::new(&DeviceSelector::parse(endpoint).unwrap());
        assert!(exact.matches(Uuid::now_v7(), endpoint));
        let merged = DeviceMatcher::new(&DeviceSelector::parse("https:/push.example.com/wp/abc").unwrap());
        assert!(merged.matches(Uuid::now_v7(), endpoint));
        assert!(!merged.matches(Uuid::now_v7(), "https://push.example.com/wp/abcd"));
    }
}
