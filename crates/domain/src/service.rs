//! The use cases: what the REST surface (or any other driver) can ask of the service.

use std::sync::Arc;

use crate::device::{Device, DeviceRegistration, DeviceSelector, Platform, RegisteredDevice};
use crate::error::ServiceError;
use crate::ports::{
    Clock, DeviceRepository, HashError, NewUserRecord, PasswordHasher, RepositoryError, UserRepository,
};
use crate::preferences::{Preferences, PreferencesUpdate};
use crate::user::{ContactUpdate, NewUser, Page, PageRequest, UserId, UserProfile};

impl From<RepositoryError> for ServiceError {
    fn from(error: RepositoryError) -> Self {
        match error {
            RepositoryError::EmailTaken => Self::EmailTaken,
            RepositoryError::UserNotFound => Self::UserNotFound,
            RepositoryError::Unavailable(source) => Self::Unavailable(source),
            RepositoryError::Unexpected(source) => Self::Unexpected(source),
        }
    }
}

impl From<HashError> for ServiceError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::Overloaded => Self::Unavailable(Box::new(HashError::Overloaded)),
            HashError::Unexpected(source) => Self::Unexpected(source),
        }
    }
}

/// The user-service use cases over its ports.
#[derive(Clone)]
pub struct UserService {
    users: Arc<dyn UserRepository>,
    devices: Arc<dyn DeviceRepository>,
    hasher: Arc<dyn PasswordHasher>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for UserService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserService").finish_non_exhaustive()
    }
}

impl UserService {
    /// Wires the use cases to their adapters.
    pub fn new(
        users: Arc<dyn UserRepository>,
        devices: Arc<dyn DeviceRepository>,
        hasher: Arc<dyn PasswordHasher>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { users, devices, hasher, clock }
    }

    /// Registers a user with default preferences (overridden by the caller's choices) and,
    /// when a push token is given, a device of platform `unknown`, all in one transaction.
    pub async fn register(&self, new_user: NewUser) -> Result<UserProfile, ServiceError> {
        let password_hash = self.hasher.hash(new_user.password).await?;
        let now = self.clock.now();
        let record = NewUserRecord {
            id: UserId::generate(),
            name: new_user.name,
            email: new_user.email,
            phone: new_user.phone,
            password_hash,
            preferences: Preferences::defaults(now).with_update(&new_user.preferences, now),
            device: new_user.push_token.map(|token| DeviceRegistration {
                token,
                platform: Platform::Unknown,
                active: true,
            }),
            created_at: now,
        };
        Ok(self.users.create(record).await?)
    }

    /// The user with preferences and devices.
    pub async fn profile(&self, id: UserId) -> Result<UserProfile, ServiceError> {
        self.users.find_profile(id).await?.ok_or(ServiceError::UserNotFound)
    }

    /// A page of users.
    pub async fn list(&self, page: PageRequest) -> Result<Page<UserProfile>, ServiceError> {
        Ok(self.users.list_profiles(page).await?)
    }

    /// Changes name, email or phone and returns the updated profile.
    pub async fn update_contact(&self, id: UserId, update: ContactUpdate) -> Result<UserProfile, ServiceError> {
        if !update.is_empty() {
            self.users.update_contact(id, update, self.clock.now()).await?.ok_or(ServiceError::UserNotFound)?;
        }
        self.profile(id).await
    }

    /// Erases the user, its preferences and its devices.
    pub async fn delete(&self, id: UserId) -> Result<(), ServiceError> {
        if self.users.delete(id).await? { Ok(()) } else { Err(ServiceError::UserNotFound) }
    }

    /// The user's preferences.
    pub async fn preferences(&self, id: UserId) -> Result<Preferences, ServiceError> {
        self.users.find_preferences(id).await?.ok_or(ServiceError::UserNotFound)
    }

    /// Applies a partial preferences change.
    pub async fn update_preferences(&self, id: UserId, update: PreferencesUpdate) -> Result<Preferences, ServiceError> {
        self.users.update_preferences(id, update, self.clock.now()).await?.ok_or(ServiceError::UserNotFound)
    }

    /// Registers or refreshes a push token for the user, moving it from another user if
    /// needed.
    pub async fn register_device(
        &self,
        user: UserId,
        registration: DeviceRegistration,
    ) -> Result<RegisteredDevice, ServiceError> {
        Ok(self.devices.upsert(user, registration, self.clock.now()).await?)
    }

    /// The user's devices.
    pub async fn devices(&self, user: UserId) -> Result<Vec<Device>, ServiceError> {
        self.devices.list(user).await?.ok_or(ServiceError::UserNotFound)
    }

    /// Activates or deactivates one of the user's devices; idempotent.
    pub async fn set_device_active(
        &self,
        user: UserId,
        selector: &DeviceSelector,
        active: bool,
    ) -> Result<Device, ServiceError> {
        match self.devices.set_active(user, selector, active, self.clock.now()).await? {
            Some(device) => Ok(device),
            None => Err(self.missing_device_error(user).await?),
        }
    }

    /// Removes one of the user's devices.
    pub async fn delete_device(&self, user: UserId, selector: &DeviceSelector) -> Result<(), ServiceError> {
        if self.devices.delete(user, selector).await? { Ok(()) } else { Err(self.missing_device_error(user).await?) }
    }

    /// After a device lookup missed: says whether the user or only the device is unknown.
    async fn missing_device_error(&self, user: UserId) -> Result<ServiceError, ServiceError> {
        if self.users.exists(user).await? { Ok(ServiceError::DeviceNotFound) } else { Ok(ServiceError::UserNotFound) }
    }
}

#[cfg(test)]
mod tests {
    use mockall::predicate::eq;
    use time::OffsetDateTime;

    use super::*;
    use crate::device::PushToken;
    use crate::ports::{MockClock, MockDeviceRepository, MockPasswordHasher, MockUserRepository};
    use crate::user::{EmailAddress, Password, PasswordHash, User, UserName};

    fn fixed_clock() -> MockClock {
        let mut clock = MockClock::new();
        clock.expect_now().return_const(OffsetDateTime::UNIX_EPOCH);
        clock
    }

    fn service(users: MockUserRepository, devices: MockDeviceRepository, hasher: MockPasswordHasher) -> UserService {
        UserService::new(Arc::new(users), Arc::new(devices), Arc::new(hasher), Arc::new(fixed_clock()))
    }

    fn profile_of(record: &NewUserRecord) -> UserProfile {
        UserProfile {
            user: User {
                id: record.id,
                name: record.name.clone(),
                email: record.email.clone(),
                phone: record.phone.clone(),
                created_at: record.created_at,
                updated_at: record.created_at,
            },
            preferences: record.preferences.clone(),
            devices: Vec::new(),
        }
    }

    fn new_user() -> NewUser {
        NewUser {
            name: UserName::parse("John Doe").unwrap(),
            email: EmailAddress::parse("john@example.com").unwrap(),
            password: Password::parse("StrongPass123!").unwrap(),
            phone: None,
            push_token: Some(PushToken::parse("fcm_device_token_123").unwrap()),
            preferences: PreferencesUpdate { push: Some(false), ..PreferencesUpdate::default() },
        }
    }

    #[test]
    fn register_stores_the_hash_defaults_with_choices_and_an_unknown_platform_device() {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_hash().times(1).returning(|_| Ok(PasswordHash::new("$argon2id$hash".into())));
        let mut users = MockUserRepository::new();
        users
            .expect_create()
            .withf(|record| {
                record.password_hash.as_str() == "$argon2id$hash"
                    && record.preferences.email
                    && !record.preferences.push
                    && record.preferences.timezone.as_str() == "UTC"
                    && record
                        .device
                        .as_ref()
                        .is_some_and(|device| device.platform == Platform::Unknown && device.active)
            })
            .times(1)
            .returning(|record| Ok(profile_of(&record)));

        let profile =
            futures_executor::block_on(service(users, MockDeviceRepository::new(), hasher).register(new_user()))
                .unwrap();
        assert_eq!(profile.user.email.as_str(), "john@example.com");
        assert!(!profile.preferences.push);
    }

    #[test]
    fn register_reports_a_taken_email() {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_hash().returning(|_| Ok(PasswordHash::new("h".into())));
        let mut users = MockUserRepository::new();
        users.expect_create().returning(|_| Err(RepositoryError::EmailTaken));
        let result =
            futures_executor::block_on(service(users, MockDeviceRepository::new(), hasher).register(new_user()));
        assert!(matches!(result, Err(ServiceError::EmailTaken)));
    }

    #[test]
    fn a_saturated_hasher_is_unavailable_and_nothing_is_stored() {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_hash().returning(|_| Err(HashError::Overloaded));
        let mut users = MockUserRepository::new();
        users.expect_create().never();
        let result =
            futures_executor::block_on(service(users, MockDeviceRepository::new(), hasher).register(new_user()));
        assert!(matches!(result, Err(ServiceError::Unavailable(_))));
    }

    #[test]
    fn an_empty_contact_update_writes_nothing() {
        let mut users = MockUserRepository::new();
        users.expect_update_contact().never();
        users.expect_find_profile().times(1).returning(|_| Ok(None));
        let result = futures_executor::block_on(
            service(users, MockDeviceRepository::new(), MockPasswordHasher::new())
                .update_contact(UserId::generate(), ContactUpdate::default()),
        );
        assert!(matches!(result, Err(ServiceError::UserNotFound)));
    }

    #[test]
    fn a_missing_device_of_an_existing_user_is_device_not_found() {
        let user = UserId::generate();
        let selector = DeviceSelector::parse("fcm_device_token_123").unwrap();
        let mut devices = MockDeviceRepository::new();
        devices.expect_set_active().returning(|_, _, _, _| Ok(None));
        let mut users = MockUserRepository::new();
        users.expect_exists().with(eq(user)).returning(|_| Ok(true));
        let result = futures_executor::block_on(
            service(users, devices, MockPasswordHasher::new()).set_device_active(user, &selector, false),
        );
        assert!(matches!(result, Err(ServiceError::DeviceNotFound)));
    }

    #[test]
    fn a_device_of_an_unknown_user_is_user_not_found() {
        let selector = DeviceSelector::parse("fcm_device_token_123").unwrap();
        let mut devices = MockDeviceRepository::new();
        devices.expect_delete().returning(|_, _| Ok(false));
        let mut users = MockUserRepository::new();
        users.expect_exists().returning(|_| Ok(false));
        let result = futures_executor::block_on(
            service(users, devices, MockPasswordHasher::new()).delete_device(UserId::generate(), &selector),
        );
        assert!(matches!(result, Err(ServiceError::UserNotFound)));
    }

    #[test]
    fn store_outages_surface_as_unavailable() {
        let mut users = MockUserRepository::new();
        users.expect_find_profile().returning(|_| Err(RepositoryError::Unavailable("pool timed out".into())));
        let result = futures_executor::block_on(
            service(users, MockDeviceRepository::new(), MockPasswordHasher::new()).profile(UserId::generate()),
        );
        assert!(matches!(result, Err(ServiceError::Unavailable(_))));
    }
}
