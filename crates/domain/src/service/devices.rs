//! Push devices: registration (and moves between users), activation, removal.

use super::{UserService, Write, log_device_moved};
use crate::consent::Provenance;
use crate::device::{Device, DeviceRegistration, DeviceSelector, RegisteredDevice};
use crate::failure::DeviceError;
use crate::idempotency::{Idempotent, IdempotentWrite};
use crate::user::UserId;

impl UserService {
    /// Registers or refreshes a push token for the user, moving it from another user if
    /// needed.
    pub async fn register_device(
        &self,
        user: UserId,
        registration: DeviceRegistration,
        by: Provenance,
        idempotency: Option<IdempotentWrite<RegisteredDevice>>,
    ) -> Result<Idempotent<RegisteredDevice>, DeviceError> {
        self.detached(move |write| async move {
            let touched = move |registered: &RegisteredDevice| {
                [Some(user), registered.previous_owner].into_iter().flatten().collect()
            };
            let idempotency = idempotency.map(|idempotent| idempotent.invalidating(touched));
            match write.ports.devices.upsert(user, registration, write.now(), &by, idempotency).await {
                Ok(Idempotent::Replayed(replay)) => Ok(write.replayed(replay).await?),
                Ok(Idempotent::Executed(registered)) => {
                    if let Some(previous) = registered.previous_owner {
                        log_device_moved(previous, user);
                    }
                    let ids: Vec<UserId> = touched(&registered);
                    Ok(write.after_write(Ok(Idempotent::Executed(registered)), &ids, |_| true).await?)
                }
                failed => Ok(write.after_write(failed, &[user], |_| true).await?),
            }
        })
        .await
    }

    /// Activates or deactivates one of the user's devices; idempotent.
    pub async fn set_device_active(
        &self,
        user: UserId,
        selector: &DeviceSelector,
        active: bool,
        by: Provenance,
    ) -> Result<Device, DeviceError> {
        let selector = selector.clone();
        self.detached(move |write| async move {
            let result = write.ports.devices.set_active(user, &selector, active, write.now(), &by).await;
            match write.after_write(result, &[user], Option::is_some).await? {
                Some(device) => Ok(device),
                None => Err(write.missing_device_error(user).await?),
            }
        })
        .await
    }

    /// Removes one of the user's devices.
    pub async fn delete_device(
        &self,
        user: UserId,
        selector: &DeviceSelector,
        by: Provenance,
    ) -> Result<(), DeviceError> {
        let selector = selector.clone();
        self.detached(move |write| async move {
            let result = write.ports.devices.delete(user, &selector, write.now(), &by).await;
            // As for a user: nothing deleted may be the retry of a deletion.
            if write.after_write(result, &[user], |_| true).await? {
                Ok(())
            } else {
                Err(write.missing_device_error(user).await?)
            }
        })
        .await
    }
}

impl Write {
    /// After a device lookup missed: says whether the user or only the device is unknown.
    async fn missing_device_error(&self, user: UserId) -> Result<DeviceError, DeviceError> {
        if self.ports.users.exists(user).await? {
            Ok(DeviceError::DeviceNotFound)
        } else {
            Ok(DeviceError::UserNotFound)
        }
    }
}
