//! Registration, contact details, preferences and erasure.

use super::{UserService, log_device_moved};
use crate::consent::Provenance;
use crate::device::{DeviceRegistration, Platform};
use crate::failure::{ChangeError, ContactError, ReadError, RegisterError, ServiceError};
use crate::idempotency::{Idempotent, IdempotentWrite};
use crate::ports::{CreatedUser, NewUserRecord};
use crate::preferences::{Preferences, PreferencesUpdate};
use crate::user::{ContactUpdate, NewUser, UserId, UserProfile};

impl UserService {
    /// Registers a user with default preferences (overridden by the caller's choices) and,
    /// when a push token is given, a device of platform `unknown`, all in one transaction; a
    /// token another user holds is moved or left with its owner as `new_user` says. With
    /// `idempotency`, a retry of a completed request is answered from its record before any
    /// password is hashed.
    pub async fn register(
        &self,
        new_user: NewUser,
        by: Provenance,
        idempotency: Option<IdempotentWrite<CreatedUser>>,
    ) -> Result<Idempotent<CreatedUser>, RegisterError> {
        self.detached(move |write| async move {
            if let Some(idempotent) = &idempotency
                && let Some(replay) = write.stored_answer(&idempotent.request).await?
            {
                return Ok(write.replayed(replay).await?);
            }
            // Exhaustive: a field added to `NewUser` does not build until it is stored or refused here.
            let NewUser { name, email, password, phone, push_token, if_token_held, preferences } = new_user;
            let password_hash = write.ports.hasher.hash(password).await?;
            let now = write.now();
            let record = NewUserRecord {
                id: UserId::generate(),
                name,
                email,
                phone,
                password_hash,
                preferences: Preferences::defaults(now).with_update(&preferences, now),
                device: push_token.map(|token| DeviceRegistration { token, platform: Platform::Unknown, active: true }),
                if_token_held,
                created_at: now,
                provenance: by,
            };
            // A new user has no cached entry; the previous owner of its token does.
            let idempotency = idempotency.map(|idempotent| {
                idempotent.invalidating(|created: &CreatedUser| created.device_moved_from.into_iter().collect())
            });
            match write.ports.users.create(record, idempotency).await? {
                Idempotent::Executed(created) => {
                    let Some(previous_owner) = created.device_moved_from else {
                        return Ok(Idempotent::Executed(created));
                    };
                    log_device_moved(previous_owner, created.profile.user.id);
                    Ok(write.after_write(Ok(Idempotent::Executed(created)), &[previous_owner], |_| true).await?)
                }
                Idempotent::Replayed(replay) => Ok(write.replayed(replay).await?),
            }
        })
        .await
    }

    /// Changes name, email or phone and returns the updated profile.
    pub async fn update_contact(
        &self,
        id: UserId,
        update: ContactUpdate,
        by: Provenance,
    ) -> Result<UserProfile, ContactError> {
        let changed = !update.is_empty();
        if changed {
            self.detached(move |write| async move {
                let result = write.ports.users.update_contact(id, update, write.now(), &by).await;
                write.after_write(result, &[id], Option::is_some).await?.ok_or(ContactError::UserNotFound)
            })
            .await?;
        }
        match self.profile(id).await {
            Ok(profile) => Ok(profile),
            // Committed: an unavailable read must not look like a refused change.
            Err(ReadError::Unavailable(_)) if changed => Err(ContactError::SavedButUnread),
            Err(error) => Err(ServiceError::from(error).into()),
        }
    }

    /// Erases the user, its preferences, its devices, its category choices and its consent
    /// history (the right to erasure wins over the record).
    pub async fn delete(&self, id: UserId) -> Result<(), ChangeError> {
        self.detached(move |write| async move {
            let result = write.ports.users.delete(id).await;
            // Nothing deleted still invalidates: it may be the retry of a deletion whose first
            // answer was cut short before its invalidation held.
            if write.after_write(result, &[id], |_| true).await? { Ok(()) } else { Err(ChangeError::UserNotFound) }
        })
        .await
    }

    /// Applies a partial preferences change.
    pub async fn update_preferences(
        &self,
        id: UserId,
        update: PreferencesUpdate,
        by: Provenance,
    ) -> Result<Preferences, ChangeError> {
        self.detached(move |write| async move {
            let result = write.ports.users.update_preferences(id, update, write.now(), &by).await;
            write.after_write(result, &[id], Option::is_some).await?.ok_or(ChangeError::UserNotFound)
        })
        .await
    }
}
