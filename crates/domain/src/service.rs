//! The use cases: what the REST surface (or any other driver) can ask of the service.
//!
//! Every committed change invalidates the cached representations of the users it touched
//! (a moved device touches two). Reads of the representation go through the cache with a
//! fill guard, and concurrent misses of one user on one instance share a single load.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use time::OffsetDateTime;

use crate::auth::Authenticated;
use crate::cache::{CacheLookup, FillTicket, ProfileCache};
use crate::device::{Device, DeviceRegistration, DeviceSelector, Platform, RegisteredDevice};
use crate::eligibility::{Channel, Eligibility, decide};
use crate::error::ServiceError;
use crate::idempotency::{Idempotent, IdempotentRequest, IdempotentWrite, StoredResponse};
use crate::ports::{
    Clock, CreatedUser, DeviceRepository, HashError, IdempotencyRepository, NewUserRecord, PasswordHasher,
    ProfileEncoder, RepositoryError, UserRepository,
};
use crate::preferences::{Preferences, PreferencesUpdate};
use crate::user::{
    ContactUpdate, EmailAddress, NewUser, Page, PageRequest, Password, PasswordHash, UserId, UserProfile,
};

impl From<RepositoryError> for ServiceError {
    fn from(error: RepositoryError) -> Self {
        match error {
            RepositoryError::EmailTaken => Self::EmailTaken,
            RepositoryError::UserNotFound => Self::UserNotFound,
            RepositoryError::Idempotency(conflict) => Self::Idempotency(conflict),
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

/// A serialized user representation, shared between concurrent readers.
pub type EncodedProfile = Arc<[u8]>;

/// The outcome of one load, shareable between the readers that wait for it.
type SharedLoad = Shared<BoxFuture<'static, Result<EncodedProfile, Arc<ServiceError>>>>;

/// In-flight loads by user and the cache generation their reader observed: a reader joins
/// a load only if it observed the same generation, so it never receives data loaded
/// before a write that it observed as invalidated.
type InflightLoads = Mutex<HashMap<(UserId, FillTicket), SharedLoad>>;

/// Records that a device changed hands (both owners, never the token): moving a token is
/// what a phone passed to another user looks like, and what a stolen token would too.
fn log_device_moved(from: UserId, to: UserId) {
    tracing::info!(from_user = %from, to_user = %to, "a push token moved to another user");
}

/// Re-creates a shared error for one reader.
fn unshare(error: &ServiceError) -> ServiceError {
    match error {
        ServiceError::UserNotFound => ServiceError::UserNotFound,
        ServiceError::DeviceNotFound => ServiceError::DeviceNotFound,
        ServiceError::EmailTaken => ServiceError::EmailTaken,
        ServiceError::InvalidCredentials => ServiceError::InvalidCredentials,
        ServiceError::CurrentPasswordMismatch => ServiceError::CurrentPasswordMismatch,
        ServiceError::Idempotency(conflict) => ServiceError::Idempotency(*conflict),
        ServiceError::InvalidationUnconfirmed => ServiceError::InvalidationUnconfirmed,
        ServiceError::Unavailable(source) => ServiceError::Unavailable(source.to_string().into()),
        ServiceError::Unexpected(source) => ServiceError::Unexpected(source.to_string().into()),
    }
}

/// The adapters the use cases run on.
#[derive(Clone)]
#[expect(missing_debug_implementations, reason = "trait objects of the ports have no Debug")]
pub struct Ports {
    /// Users and preferences.
    pub users: Arc<dyn UserRepository>,
    /// Devices.
    pub devices: Arc<dyn DeviceRepository>,
    /// Stored answers of idempotent requests.
    pub idempotency: Arc<dyn IdempotencyRepository>,
    /// Password hashing.
    pub hasher: Arc<dyn PasswordHasher>,
    /// The time.
    pub clock: Arc<dyn Clock>,
    /// The representation cache ([`crate::cache::NoCache`] when none is configured).
    pub cache: Arc<dyn ProfileCache>,
    /// How representations are serialized for readers and the cache.
    pub encoder: Arc<dyn ProfileEncoder>,
}

/// The user-service use cases over its ports.
#[derive(Clone)]
pub struct UserService {
    ports: Ports,
    inflight: Arc<InflightLoads>,
}

impl std::fmt::Debug for UserService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserService").finish_non_exhaustive()
    }
}

impl UserService {
    /// Wires the use cases to their adapters.
    pub fn new(ports: Ports) -> Self {
        Self { ports, inflight: Arc::default() }
    }

    /// The current time of the service's [`Clock`]: what every time-based
    /// decision of a caller (token lifetimes, record expiry, "now" in eligibility) must use.
    pub fn now(&self) -> OffsetDateTime {
        self.ports.clock.now()
    }

    /// Invalidates the cached representations of the users a write touched, once the write
    /// returned, if it may have changed them: `changed` says so of a result, a failure of
    /// the store may still have committed, and a refused write changed nothing (so that
    /// refusals cost no wait and no ledger row while Redis is down). Answers with the
    /// write's result: its own error first, then an invalidation the cache could not
    /// confirm, since a change is acknowledged only once no reader can be served what it
    /// replaced.
    async fn after_write<T>(
        &self,
        written: Result<T, RepositoryError>,
        ids: &[UserId],
        changed: impl FnOnce(&T) -> bool,
    ) -> Result<T, ServiceError> {
        let may_have_changed = match &written {
            Ok(value) => changed(value),
            Err(RepositoryError::Unavailable(_) | RepositoryError::Unexpected(_)) => true,
            Err(RepositoryError::EmailTaken | RepositoryError::UserNotFound | RepositoryError::Idempotency(_)) => false,
        };
        if !may_have_changed || ids.is_empty() {
            return Ok(written?);
        }
        let invalidation = self.ports.cache.invalidate(ids).await;
        let value = written?;
        if invalidation.is_effective() { Ok(value) } else { Err(ServiceError::InvalidationUnconfirmed) }
    }

    /// Answers a retry from the first request's record, after invalidating again the users
    /// that request's change touched: the first answer may have been cut short before their
    /// invalidation held (a 503 `change_not_confirmed` asks for exactly this retry).
    async fn replayed<T>(&self, replay: StoredResponse) -> Result<Idempotent<T>, ServiceError> {
        let ids = replay.invalidates.clone();
        self.after_write(Ok(Idempotent::Replayed(replay)), &ids, |_| true).await
    }

    /// Registers a user with default preferences (overridden by the caller's choices) and,
    /// when a push token is given, a device of platform `unknown`, all in one transaction; a
    /// token another user holds is moved or left with its owner as `new_user` says. With
    /// `idempotency`, a retry of a completed request is answered from its record before any
    /// password is hashed.
    pub async fn register(
        &self,
        new_user: NewUser,
        idempotency: Option<IdempotentWrite<CreatedUser>>,
    ) -> Result<Idempotent<CreatedUser>, ServiceError> {
        if let Some(write) = &idempotency
            && let Some(replay) = self.stored_answer(&write.request).await?
        {
            return self.replayed(replay).await;
        }
        // Exhaustive: a field added to `NewUser` does not build until it is stored or refused here.
        let NewUser { name, email, password, phone, push_token, if_token_held, preferences } = new_user;
        let password_hash = self.ports.hasher.hash(password).await?;
        let now = self.ports.clock.now();
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
        };
        // A new user has no cached entry; the previous owner of its token does.
        let idempotency = idempotency
            .map(|write| write.invalidating(|created: &CreatedUser| created.device_moved_from.into_iter().collect()));
        match self.ports.users.create(record, idempotency).await? {
            Idempotent::Executed(created) => {
                let Some(previous_owner) = created.device_moved_from else {
                    return Ok(Idempotent::Executed(created));
                };
                log_device_moved(previous_owner, created.profile.user.id);
                self.after_write(Ok(Idempotent::Executed(created)), &[previous_owner], |_| true).await
            }
            Idempotent::Replayed(replay) => self.replayed(replay).await,
        }
    }

    /// The answer stored for a completed idempotent request, if any.
    async fn stored_answer(&self, request: &IdempotentRequest) -> Result<Option<StoredResponse>, ServiceError> {
        match self.ports.idempotency.find_record(&request.caller, &request.key).await? {
            Some(record) => Ok(Some(record.replay_for(&request.fingerprint)?)),
            None => Ok(None),
        }
    }

    /// The user with preferences and devices.
    pub async fn profile(&self, id: UserId) -> Result<UserProfile, ServiceError> {
        self.ports.users.find_profile(id).await?.ok_or(ServiceError::UserNotFound)
    }

    /// The user's representation as the encoder serializes it, from the cache when warm.
    pub async fn encoded_profile(&self, id: UserId) -> Result<EncodedProfile, ServiceError> {
        let ticket = match self.ports.cache.lookup(id).await {
            CacheLookup::Hit(bytes) => return Ok(bytes.into()),
            CacheLookup::Miss(ticket) => ticket,
            // Without a ticket a load could not be joined safely: load alone, don't fill.
            CacheLookup::Unavailable => {
                let profile = self.profile(id).await?;
                return Ok(self.ports.encoder.encode(&profile).into());
            }
        };
        let key = (id, ticket.clone());
        let load = {
            let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            inflight
                .entry(key.clone())
                .or_insert_with(|| {
                    let service = self.clone();
                    async move { service.load_and_fill(id, ticket).await.map_err(Arc::new) }.boxed().shared()
                })
                .clone()
        };
        let result = load.clone().await;
        let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
        if inflight.get(&key).is_some_and(|current| current.ptr_eq(&load)) {
            inflight.remove(&key);
        }
        result.map_err(|error| unshare(&error))
    }

    /// Whether `user` may be sent to on `channel` at `at`, decided from the cached profile
    /// when warm.
    pub async fn eligibility(
        &self,
        user: UserId,
        channel: Channel,
        at: OffsetDateTime,
    ) -> Result<Eligibility, ServiceError> {
        let encoded = self.encoded_profile(user).await?;
        let profile = match self.ports.encoder.decode(&encoded) {
            Some(profile) => profile,
            None => self.profile(user).await?,
        };
        Ok(decide(&profile, channel, at))
    }

    /// The serialized representations of many users, in the order of `ids` (`None` for
    /// unknown users): cache hits in one cache round trip, misses in one store query.
    pub async fn encoded_profiles(
        &self,
        ids: &[UserId],
    ) -> Result<Vec<(UserId, Option<EncodedProfile>)>, ServiceError> {
        let loaded = self.load_many(ids).await?;
        Ok(ids.iter().map(|id| (*id, loaded.get(id).map(|(encoded, _)| Arc::clone(encoded)))).collect())
    }

    /// Send eligibility of many users on one channel at one instant, in the order of `ids`
    /// (`None` for unknown users).
    pub async fn eligibilities(
        &self,
        ids: &[UserId],
        channel: Channel,
        at: OffsetDateTime,
    ) -> Result<Vec<(UserId, Option<Eligibility>)>, ServiceError> {
        let loaded = self.load_many(ids).await?;
        let mut undecodable = Vec::new();
        let mut decisions: HashMap<UserId, Eligibility> = HashMap::with_capacity(loaded.len());
        for (id, (encoded, profile)) in &loaded {
            match profile.clone().or_else(|| self.ports.encoder.decode(encoded)) {
                Some(profile) => {
                    decisions.insert(*id, decide(&profile, channel, at));
                }
                None => undecodable.push(*id),
            }
        }
        // Bytes that do not decode (another format version) are read from the store.
        if !undecodable.is_empty() {
            for profile in self.ports.users.find_profiles(&undecodable).await? {
                decisions.insert(profile.user.id, decide(&profile, channel, at));
            }
        }
        Ok(ids.iter().map(|id| (*id, decisions.get(id).cloned())).collect())
    }

    /// Loads many users: each found user's bytes, and its profile when it was read from the
    /// store. Misses are loaded in one query and filled with their tickets.
    async fn load_many(
        &self,
        ids: &[UserId],
    ) -> Result<HashMap<UserId, (EncodedProfile, Option<UserProfile>)>, ServiceError> {
        let mut unique = Vec::with_capacity(ids.len());
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        unique.extend(ids.iter().copied().filter(|id| seen.insert(*id)));

        let lookups = self.ports.cache.lookup_many(&unique).await;
        let mut loaded = HashMap::with_capacity(unique.len());
        let mut tickets: HashMap<UserId, Option<FillTicket>> = HashMap::new();
        for (id, lookup) in unique.iter().zip(lookups) {
            match lookup {
                CacheLookup::Hit(bytes) => {
                    loaded.insert(*id, (EncodedProfile::from(bytes), None));
                }
                CacheLookup::Miss(ticket) => {
                    tickets.insert(*id, Some(ticket));
                }
                CacheLookup::Unavailable => {
                    tickets.insert(*id, None);
                }
            }
        }
        if tickets.is_empty() {
            return Ok(loaded);
        }
        let missing: Vec<UserId> = tickets.keys().copied().collect();
        let profiles = self.ports.users.find_profiles(&missing).await?;
        let mut fills = Vec::new();
        for profile in profiles {
            let id = profile.user.id;
            let bytes = self.ports.encoder.encode(&profile);
            if let Some(Some(ticket)) = tickets.remove(&id) {
                fills.push(self.ports.cache.fill(id, ticket, bytes.clone()));
            }
            loaded.insert(id, (EncodedProfile::from(bytes), Some(profile)));
        }
        futures_util::future::join_all(fills).await;
        Ok(loaded)
    }

    async fn load_and_fill(&self, id: UserId, ticket: FillTicket) -> Result<EncodedProfile, ServiceError> {
        let profile = self.profile(id).await?;
        let bytes = self.ports.encoder.encode(&profile);
        self.ports.cache.fill(id, ticket, bytes.clone()).await;
        Ok(bytes.into())
    }

    /// A page of users.
    pub async fn list(&self, page: PageRequest) -> Result<Page<UserProfile>, ServiceError> {
        Ok(self.ports.users.list_profiles(page).await?)
    }

    /// Changes name, email or phone and returns the updated profile.
    pub async fn update_contact(&self, id: UserId, update: ContactUpdate) -> Result<UserProfile, ServiceError> {
        if !update.is_empty() {
            let result = self.ports.users.update_contact(id, update, self.ports.clock.now()).await;
            self.after_write(result, &[id], Option::is_some).await?.ok_or(ServiceError::UserNotFound)?;
        }
        self.profile(id).await
    }

    /// Erases the user, its preferences and its devices.
    pub async fn delete(&self, id: UserId) -> Result<(), ServiceError> {
        let result = self.ports.users.delete(id).await;
        // Nothing deleted still invalidates: it may be the retry of a deletion whose first
        // answer was cut short before its invalidation held.
        if self.after_write(result, &[id], |_| true).await? { Ok(()) } else { Err(ServiceError::UserNotFound) }
    }

    /// The user's preferences.
    pub async fn preferences(&self, id: UserId) -> Result<Preferences, ServiceError> {
        self.ports.users.find_preferences(id).await?.ok_or(ServiceError::UserNotFound)
    }

    /// Applies a partial preferences change.
    pub async fn update_preferences(&self, id: UserId, update: PreferencesUpdate) -> Result<Preferences, ServiceError> {
        let result = self.ports.users.update_preferences(id, update, self.ports.clock.now()).await;
        self.after_write(result, &[id], Option::is_some).await?.ok_or(ServiceError::UserNotFound)
    }

    /// Registers or refreshes a push token for the user, moving it from another user if
    /// needed.
    pub async fn register_device(
        &self,
        user: UserId,
        registration: DeviceRegistration,
        idempotency: Option<IdempotentWrite<RegisteredDevice>>,
    ) -> Result<Idempotent<RegisteredDevice>, ServiceError> {
        let touched = move |registered: &RegisteredDevice| {
            [Some(user), registered.previous_owner].into_iter().flatten().collect()
        };
        let idempotency = idempotency.map(|write| write.invalidating(touched));
        match self.ports.devices.upsert(user, registration, self.ports.clock.now(), idempotency).await {
            Ok(Idempotent::Replayed(replay)) => self.replayed(replay).await,
            Ok(Idempotent::Executed(registered)) => {
                if let Some(previous) = registered.previous_owner {
                    log_device_moved(previous, user);
                }
                let ids: Vec<UserId> = touched(&registered);
                self.after_write(Ok(Idempotent::Executed(registered)), &ids, |_| true).await
            }
            failed => self.after_write(failed, &[user], |_| true).await,
        }
    }

    /// The user's devices.
    pub async fn devices(&self, user: UserId) -> Result<Vec<Device>, ServiceError> {
        self.ports.devices.list(user).await?.ok_or(ServiceError::UserNotFound)
    }

    /// Activates or deactivates one of the user's devices; idempotent.
    pub async fn set_device_active(
        &self,
        user: UserId,
        selector: &DeviceSelector,
        active: bool,
    ) -> Result<Device, ServiceError> {
        let result = self.ports.devices.set_active(user, selector, active, self.ports.clock.now()).await;
        match self.after_write(result, &[user], Option::is_some).await? {
            Some(device) => Ok(device),
            None => Err(self.missing_device_error(user).await?),
        }
    }

    /// Removes one of the user's devices.
    pub async fn delete_device(&self, user: UserId, selector: &DeviceSelector) -> Result<(), ServiceError> {
        let result = self.ports.devices.delete(user, selector).await;
        // As for a user: nothing deleted may be the retry of a deletion.
        if self.after_write(result, &[user], |_| true).await? {
            Ok(())
        } else {
            Err(self.missing_device_error(user).await?)
        }
    }

    /// Checks an email and password. Unknown accounts are verified against a dummy hash so
    /// that they take as long to refuse as wrong passwords; a correct password stored under
    /// weaker hashing parameters is re-hashed.
    pub async fn login(&self, email: &EmailAddress, password: Password) -> Result<Authenticated, ServiceError> {
        let Some(credentials) = self.ports.users.find_credentials(email).await? else {
            self.ports.hasher.verify(password, self.ports.hasher.dummy_hash()).await?;
            return Err(ServiceError::InvalidCredentials);
        };
        let stored = credentials.password_hash.clone();
        if !self.ports.hasher.verify(password.clone(), stored).await? {
            return Err(ServiceError::InvalidCredentials);
        }
        if self.ports.hasher.needs_rehash(&credentials.password_hash) {
            self.upgrade_hash(credentials.user_id, credentials.password_hash.clone(), password).await;
        }
        Ok(Authenticated { user_id: credentials.user_id, token_version: credentials.token_version })
    }

    /// Replaces a weak hash, unless the password changed meanwhile; a failure only delays the
    /// upgrade to the next login.
    async fn upgrade_hash(&self, user: UserId, weak: PasswordHash, password: Password) {
        let upgraded = match self.ports.hasher.hash(password).await {
            Ok(hash) => self
                .ports
                .users
                .replace_password_hash(user, weak, hash, false)
                .await
                .map(|_| ())
                .map_err(ServiceError::from),
            Err(error) => Err(ServiceError::from(error)),
        };
        if let Err(error) = upgraded {
            tracing::warn!(%user, error = %error, "password hash upgrade failed; it is retried at the next login");
        }
    }

    /// Changes the user's password after checking the current one; every access token
    /// issued before stops working. Returns the new token version.
    pub async fn change_password(&self, user: UserId, current: Password, new: Password) -> Result<i32, ServiceError> {
        let credentials = self.ports.users.credentials_of(user).await?.ok_or(ServiceError::UserNotFound)?;
        if !self.ports.hasher.verify(current, credentials.password_hash.clone()).await? {
            return Err(ServiceError::CurrentPasswordMismatch);
        }
        let hash = self.ports.hasher.hash(new).await?;
        // A concurrent change (or erasure) in between: the password checked is no longer the
        // current one, and this change is refused rather than silently lost.
        self.ports
            .users
            .replace_password_hash(user, credentials.password_hash, hash, true)
            .await?
            .ok_or(ServiceError::CurrentPasswordMismatch)
    }

    /// The token version access tokens of `user` must carry; `None` when the user is gone.
    pub async fn token_version(&self, user: UserId) -> Result<Option<i32>, ServiceError> {
        Ok(self.ports.users.token_version(user).await?)
    }

    /// After a device lookup missed: says whether the user or only the device is unknown.
    async fn missing_device_error(&self, user: UserId) -> Result<ServiceError, ServiceError> {
        if self.ports.users.exists(user).await? {
            Ok(ServiceError::DeviceNotFound)
        } else {
            Ok(ServiceError::UserNotFound)
        }
    }
}

#[cfg(test)]
mod tests {
    use mockall::predicate::eq;
    use time::OffsetDateTime;

    use super::*;
    use crate::auth::Credentials;
    use crate::cache::{CacheLookup, FillTicket, Invalidation};
    use crate::cache::{MockProfileCache, NoCache};
    use crate::device::{HeldToken, PushToken};
    use crate::eligibility::Channel;
    use crate::idempotency::{IdempotencyConflict, IdempotencyKey, IdempotencyRecord};
    use crate::ports::{
        MockClock, MockDeviceRepository, MockIdempotencyRepository, MockPasswordHasher, MockProfileEncoder,
        MockUserRepository,
    };
    use crate::user::{EmailAddress, Password, PasswordHash, User, UserName};

    fn fixed_clock() -> MockClock {
        let mut clock = MockClock::new();
        clock.expect_now().return_const(OffsetDateTime::UNIX_EPOCH);
        clock
    }

    fn service(users: MockUserRepository, devices: MockDeviceRepository, hasher: MockPasswordHasher) -> UserService {
        service_with_cache(users, devices, hasher, Arc::new(NoCache))
    }

    fn service_with_cache(
        users: MockUserRepository,
        devices: MockDeviceRepository,
        hasher: MockPasswordHasher,
        cache: Arc<dyn ProfileCache>,
    ) -> UserService {
        let mut encoder = MockProfileEncoder::new();
        encoder.expect_encode().returning(|profile| profile.user.email.as_str().as_bytes().to_vec());
        UserService::new(Ports {
            users: Arc::new(users),
            devices: Arc::new(devices),
            idempotency: Arc::new(MockIdempotencyRepository::new()),
            hasher: Arc::new(hasher),
            clock: Arc::new(fixed_clock()),
            cache,
            encoder: Arc::new(encoder),
        })
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
            if_token_held: HeldToken::Leave,
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
            .withf(|record, _| {
                record.password_hash.as_str() == "$argon2id$hash"
                    && record.preferences.email
                    && !record.preferences.push
                    && record.preferences.timezone.as_str() == "UTC"
                    && record
                        .device
                        .as_ref()
                        .is_some_and(|device| device.platform == Platform::Unknown && device.active)
                    && record.if_token_held == HeldToken::Leave
            })
            .times(1)
            .returning(|record, _| {
                Ok(Idempotent::Executed(CreatedUser {
                    profile: profile_of(&record),
                    device_moved_from: None,
                    token_left_with_its_owner: false,
                }))
            });

        let registered =
            futures_executor::block_on(service(users, MockDeviceRepository::new(), hasher).register(new_user(), None));
        let Ok(Idempotent::Executed(CreatedUser { profile, .. })) = registered else {
            panic!("a fresh registration executes: {registered:?}");
        };
        assert_eq!(profile.user.email.as_str(), "john@example.com");
        assert!(!profile.preferences.push);
    }

    #[test]
    fn register_reports_a_taken_email() {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_hash().returning(|_| Ok(PasswordHash::new("h".into())));
        let mut users = MockUserRepository::new();
        users.expect_create().returning(|_, _| Err(RepositoryError::EmailTaken));
        let result =
            futures_executor::block_on(service(users, MockDeviceRepository::new(), hasher).register(new_user(), None));
        assert!(matches!(result, Err(ServiceError::EmailTaken)));
    }

    #[test]
    fn a_saturated_hasher_is_unavailable_and_nothing_is_stored() {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_hash().returning(|_| Err(HashError::Overloaded));
        let mut users = MockUserRepository::new();
        users.expect_create().never();
        let result =
            futures_executor::block_on(service(users, MockDeviceRepository::new(), hasher).register(new_user(), None));
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

    fn john() -> UserProfile {
        let now = OffsetDateTime::UNIX_EPOCH;
        UserProfile {
            user: User {
                id: UserId::generate(),
                name: UserName::parse("John Doe").unwrap(),
                email: EmailAddress::parse("john@example.com").unwrap(),
                phone: None,
                created_at: now,
                updated_at: now,
            },
            preferences: Preferences::defaults(now),
            devices: Vec::new(),
        }
    }

    #[test]
    fn a_cache_hit_never_reaches_the_repository() {
        let mut cache = MockProfileCache::new();
        cache.expect_lookup().returning(|_| CacheLookup::Hit(b"cached".to_vec()));
        cache.expect_fill().never();
        let mut users = MockUserRepository::new();
        users.expect_find_profile().never();
        let service =
            service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
        let bytes = futures_executor::block_on(service.encoded_profile(UserId::generate())).unwrap();
        assert_eq!(&*bytes, b"cached");
    }

    #[test]
    fn a_miss_loads_encodes_and_fills_with_the_ticket_taken_before_loading() {
        let ticket = FillTicket::new(Some("generation-7".into()));
        let mut cache = MockProfileCache::new();
        let lookup_ticket = ticket.clone();
        cache.expect_lookup().returning(move |_| CacheLookup::Miss(lookup_ticket.clone()));
        cache
            .expect_fill()
            .withf(move |_, filled_ticket, bytes| *filled_ticket == ticket && bytes == b"john@example.com")
            .times(1)
            .return_const(());
        let mut users = MockUserRepository::new();
        users.expect_find_profile().times(1).returning(|_| Ok(Some(john())));
        let service =
            service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
        let bytes = futures_executor::block_on(service.encoded_profile(UserId::generate())).unwrap();
        assert_eq!(&*bytes, b"john@example.com");
    }

    #[test]
    fn an_unavailable_cache_is_read_around_and_not_filled() {
        let mut cache = MockProfileCache::new();
        cache.expect_lookup().returning(|_| CacheLookup::Unavailable);
        cache.expect_fill().never();
        let mut users = MockUserRepository::new();
        users.expect_find_profile().times(1).returning(|_| Ok(Some(john())));
        let service =
            service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
        assert!(futures_executor::block_on(service.encoded_profile(UserId::generate())).is_ok());
    }

    #[test]
    fn a_moved_device_invalidates_both_owners_and_a_failed_write_still_invalidates() {
        let user = UserId::generate();
        let previous = UserId::generate();
        let mut devices = MockDeviceRepository::new();
        devices.expect_upsert().times(1).returning(move |owner, registration, now, _| {
            Ok(Idempotent::Executed(RegisteredDevice {
                device: Device {
                    id: crate::device::DeviceId::generate(),
                    user_id: owner,
                    token: registration.token,
                    platform: registration.platform,
                    active: registration.active,
                    created_at: now,
                    updated_at: now,
                    last_seen_at: now,
                },
                created: false,
                previous_owner: Some(previous),
            }))
        });
        let mut users = MockUserRepository::new();
        users.expect_update_preferences().returning(|_, _, _| Err(RepositoryError::Unavailable("lost".into())));
        let mut cache = MockProfileCache::new();
        cache
            .expect_invalidate()
            .withf(move |ids| ids == [user, previous])
            .times(1)
            .return_const(Invalidation::Confirmed);
        cache.expect_invalidate().withf(move |ids| ids == [user]).times(1).return_const(Invalidation::Unconfirmed);
        let service = service_with_cache(users, devices, MockPasswordHasher::new(), Arc::new(cache));
        let registration = DeviceRegistration {
            token: PushToken::parse("moved-token").unwrap(),
            platform: Platform::Ios,
            active: true,
        };
        futures_executor::block_on(service.register_device(user, registration, None)).unwrap();
        let failed = futures_executor::block_on(service.update_preferences(user, PreferencesUpdate::default()));
        // The write's own error comes first.
        assert!(matches!(failed, Err(ServiceError::Unavailable(_))));
    }

    #[test]
    fn a_change_is_acknowledged_only_once_its_invalidation_is_confirmed_or_deferred() {
        let user = UserId::generate();
        for (invalidation, acknowledged) in
            [(Invalidation::Confirmed, true), (Invalidation::Deferred, true), (Invalidation::Unconfirmed, false)]
        {
            let mut users = MockUserRepository::new();
            users.expect_update_preferences().times(1).returning(|_, _, now| Ok(Some(Preferences::defaults(now))));
            let mut cache = MockProfileCache::new();
            cache.expect_invalidate().withf(move |ids| ids == [user]).times(1).return_const(invalidation);
            let service =
                service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
            let outcome = futures_executor::block_on(service.update_preferences(user, PreferencesUpdate::default()));
            match outcome {
                Ok(_) => assert!(acknowledged, "{invalidation:?} acknowledged"),
                Err(ServiceError::InvalidationUnconfirmed) => assert!(!acknowledged, "{invalidation:?} refused"),
                Err(other) => panic!("{invalidation:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_write_that_changed_nothing_invalidates_nothing() {
        let user = UserId::generate();
        let mut users = MockUserRepository::new();
        users.expect_update_preferences().times(1).returning(|_, _, _| Ok(None));
        users.expect_update_contact().times(1).returning(|_, _, _| Err(RepositoryError::EmailTaken));
        let mut cache = MockProfileCache::new();
        // While Redis is down, a refusal must cost neither the wait nor a ledger row.
        cache.expect_invalidate().never();
        let service =
            service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
        let missing = futures_executor::block_on(service.update_preferences(user, PreferencesUpdate::default()));
        assert!(matches!(missing, Err(ServiceError::UserNotFound)), "{missing:?}");
        let update =
            ContactUpdate { email: Some(EmailAddress::parse("taken@example.com").unwrap()), ..Default::default() };
        let taken = futures_executor::block_on(service.update_contact(user, update));
        assert!(matches!(taken, Err(ServiceError::EmailTaken)), "{taken:?}");
    }

    #[test]
    fn a_replayed_device_move_invalidates_every_user_its_first_run_touched() {
        let (user, previous) = (UserId::generate(), UserId::generate());
        let mut devices = MockDeviceRepository::new();
        devices.expect_upsert().times(1).returning(move |_, _, _, _| {
            Ok(Idempotent::Replayed(StoredResponse {
                status: 200,
                body: Vec::new(),
                location: None,
                invalidates: vec![user, previous],
            }))
        });
        let mut cache = MockProfileCache::new();
        cache
            .expect_invalidate()
            .withf(move |ids| ids == [user, previous])
            .times(1)
            .return_const(Invalidation::Deferred);
        let service =
            service_with_cache(MockUserRepository::new(), devices, MockPasswordHasher::new(), Arc::new(cache));
        let registration = DeviceRegistration {
            token: PushToken::parse("moved-token").unwrap(),
            platform: Platform::Ios,
            active: true,
        };
        let replayed = futures_executor::block_on(service.register_device(user, registration, None));
        assert!(matches!(replayed, Ok(Idempotent::Replayed(_))), "{replayed:?}");
    }

    /// A repository whose profile loads take a moment, so that readers overlap.
    struct SlowProfiles(MockUserRepository);

    /// Returns `Pending` a few times, then `Ready`: lets the other readers start meanwhile.
    struct YieldTimes(u8);

    impl std::future::Future for YieldTimes {
        type Output = ();
        fn poll(mut self: std::pin::Pin<&mut Self>, context: &mut std::task::Context<'_>) -> std::task::Poll<()> {
            if self.0 == 0 {
                std::task::Poll::Ready(())
            } else {
                self.0 -= 1;
                context.waker().wake_by_ref();
                std::task::Poll::Pending
            }
        }
    }

    #[async_trait::async_trait]
    impl UserRepository for SlowProfiles {
        async fn create(
            &self,
            user: NewUserRecord,
            idempotency: Option<IdempotentWrite<CreatedUser>>,
        ) -> Result<Idempotent<CreatedUser>, RepositoryError> {
            self.0.create(user, idempotency).await
        }
        async fn find_profile(&self, id: UserId) -> Result<Option<UserProfile>, RepositoryError> {
            YieldTimes(5).await;
            self.0.find_profile(id).await
        }
        async fn list_profiles(&self, page: PageRequest) -> Result<Page<UserProfile>, RepositoryError> {
            self.0.list_profiles(page).await
        }
        async fn exists(&self, id: UserId) -> Result<bool, RepositoryError> {
            self.0.exists(id).await
        }
        async fn update_contact(
            &self,
            id: UserId,
            update: ContactUpdate,
            now: OffsetDateTime,
        ) -> Result<Option<User>, RepositoryError> {
            self.0.update_contact(id, update, now).await
        }
        async fn delete(&self, id: UserId) -> Result<bool, RepositoryError> {
            self.0.delete(id).await
        }
        async fn find_preferences(&self, id: UserId) -> Result<Option<Preferences>, RepositoryError> {
            self.0.find_preferences(id).await
        }
        async fn update_preferences(
            &self,
            id: UserId,
            update: PreferencesUpdate,
            now: OffsetDateTime,
        ) -> Result<Option<Preferences>, RepositoryError> {
            self.0.update_preferences(id, update, now).await
        }

        async fn find_credentials(&self, email: &EmailAddress) -> Result<Option<Credentials>, RepositoryError> {
            self.0.find_credentials(email).await
        }
        async fn credentials_of(&self, id: UserId) -> Result<Option<Credentials>, RepositoryError> {
            self.0.credentials_of(id).await
        }
        async fn token_version(&self, id: UserId) -> Result<Option<i32>, RepositoryError> {
            self.0.token_version(id).await
        }
        async fn replace_password_hash(
            &self,
            id: UserId,
            current: PasswordHash,
            new: PasswordHash,
            revoke_tokens: bool,
        ) -> Result<Option<i32>, RepositoryError> {
            self.0.replace_password_hash(id, current, new, revoke_tokens).await
        }
    }

    fn single_flight_service(tickets: Vec<FillTicket>, expected_loads: usize) -> UserService {
        let tickets = Mutex::new(tickets.into_iter());
        let mut cache = MockProfileCache::new();
        cache
            .expect_lookup()
            .returning(move |_| CacheLookup::Miss(tickets.lock().unwrap().next().unwrap_or(FillTicket::new(None))));
        cache.expect_fill().return_const(());
        let mut users = MockUserRepository::new();
        users.expect_find_profile().times(expected_loads).returning(|_| Ok(Some(john())));
        let mut encoder = MockProfileEncoder::new();
        encoder.expect_encode().returning(|_| b"encoded".to_vec());
        UserService::new(Ports {
            users: Arc::new(SlowProfiles(users)),
            devices: Arc::new(MockDeviceRepository::new()),
            idempotency: Arc::new(MockIdempotencyRepository::new()),
            hasher: Arc::new(MockPasswordHasher::new()),
            clock: Arc::new(fixed_clock()),
            cache: Arc::new(cache),
            encoder: Arc::new(encoder),
        })
    }

    #[test]
    fn concurrent_misses_with_the_same_generation_share_one_load() {
        let ticket = FillTicket::new(Some("g1".into()));
        let service = single_flight_service(vec![ticket.clone(), ticket.clone(), ticket], 1);
        let id = UserId::generate();
        let (a, b, c) = futures_executor::block_on(futures_util::future::join3(
            service.encoded_profile(id),
            service.encoded_profile(id),
            service.encoded_profile(id),
        ));
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert!(service.inflight.lock().unwrap().is_empty());
    }

    #[test]
    fn a_reader_that_saw_a_newer_generation_does_not_join_an_older_load() {
        let service = single_flight_service(
            vec![FillTicket::new(Some("before-write".into())), FillTicket::new(Some("after-write".into()))],
            2,
        );
        let id = UserId::generate();
        let (a, b) = futures_executor::block_on(futures_util::future::join(
            service.encoded_profile(id),
            service.encoded_profile(id),
        ));
        assert!(a.is_ok() && b.is_ok());
    }

    fn idempotent_registration(fingerprint: &[u8]) -> IdempotentWrite<CreatedUser> {
        IdempotentWrite {
            request: IdempotentRequest {
                caller: "gateway".into(),
                key: IdempotencyKey::parse("signup-1").unwrap(),
                fingerprint: fingerprint.to_vec(),
                expires_at: OffsetDateTime::UNIX_EPOCH,
            },
            render: Box::new(|_| StoredResponse {
                status: 201,
                body: b"fresh".to_vec(),
                location: None,
                invalidates: Vec::new(),
            }),
        }
    }

    fn service_with_records(record: Option<IdempotencyRecord>, hasher: MockPasswordHasher) -> UserService {
        let mut idempotency = MockIdempotencyRepository::new();
        idempotency.expect_find_record().returning(move |_, _| Ok(record.clone()));
        let mut users = MockUserRepository::new();
        users.expect_create().never();
        let mut encoder = MockProfileEncoder::new();
        encoder.expect_encode().never();
        UserService::new(Ports {
            users: Arc::new(users),
            devices: Arc::new(MockDeviceRepository::new()),
            idempotency: Arc::new(idempotency),
            hasher: Arc::new(hasher),
            clock: Arc::new(fixed_clock()),
            cache: Arc::new(NoCache),
            encoder: Arc::new(encoder),
        })
    }

    #[test]
    fn a_completed_idempotent_registration_is_replayed_without_hashing() {
        let stored = StoredResponse {
            status: 201,
            body: b"first answer".to_vec(),
            location: Some("/x".into()),
            invalidates: Vec::new(),
        };
        let record = IdempotencyRecord { fingerprint: vec![7], response: stored.clone() };
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_hash().never();
        let service = service_with_records(Some(record), hasher);
        let result = futures_executor::block_on(service.register(new_user(), Some(idempotent_registration(&[7]))));
        assert_eq!(result.unwrap(), Idempotent::Replayed(stored));
    }

    #[test]
    fn a_key_reused_with_another_body_is_refused_without_hashing() {
        let record = IdempotencyRecord {
            fingerprint: vec![7],
            response: StoredResponse { status: 201, body: Vec::new(), location: None, invalidates: Vec::new() },
        };
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_hash().never();
        let service = service_with_records(Some(record), hasher);
        let result = futures_executor::block_on(service.register(new_user(), Some(idempotent_registration(&[8]))));
        assert!(matches!(result, Err(ServiceError::Idempotency(IdempotencyConflict::KeyReused))));
    }

    fn login_service(
        credentials: Option<Credentials>,
        hasher: MockPasswordHasher,
        users: MockUserRepository,
    ) -> UserService {
        let mut users = users;
        users.expect_find_credentials().returning(move |_| Ok(credentials.clone()));
        service(users, MockDeviceRepository::new(), hasher)
    }

    fn stored_credentials(hash: &str) -> Credentials {
        Credentials { user_id: UserId::generate(), password_hash: PasswordHash::new(hash.into()), token_version: 3 }
    }

    fn login(service: &UserService, password: &str) -> Result<Authenticated, ServiceError> {
        let email = EmailAddress::parse("john@example.com").unwrap();
        futures_executor::block_on(service.login(&email, Password::parse(password).unwrap()))
    }

    #[test]
    fn an_unknown_account_is_verified_against_the_dummy_hash_and_refused_like_a_wrong_password() {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_dummy_hash().times(1).returning(|| PasswordHash::new("$argon2id$dummy".into()));
        hasher.expect_verify().withf(|_, hash| hash.as_str() == "$argon2id$dummy").times(1).returning(|_, _| Ok(false));
        let unknown = login(&login_service(None, hasher, MockUserRepository::new()), "StrongPass123!");
        assert!(matches!(unknown, Err(ServiceError::InvalidCredentials)));

        let mut hasher = MockPasswordHasher::new();
        hasher.expect_verify().times(1).returning(|_, _| Ok(false));
        let wrong = login(
            &login_service(Some(stored_credentials("$argon2id$real")), hasher, MockUserRepository::new()),
            "WrongPass123!",
        );
        assert!(matches!(wrong, Err(ServiceError::InvalidCredentials)));
    }

    #[test]
    fn a_correct_password_under_weak_parameters_is_rehashed_without_revoking_tokens() {
        let credentials = stored_credentials("$argon2id$v=19$m=4096,t=1,p=1$weak");
        let user = credentials.user_id;
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_verify().returning(|_, _| Ok(true));
        hasher.expect_needs_rehash().returning(|_| true);
        hasher.expect_hash().times(1).returning(|_| Ok(PasswordHash::new("$argon2id$strong".into())));
        let mut users = MockUserRepository::new();
        users
            .expect_replace_password_hash()
            .withf(move |id, current, new, revoke| {
                *id == user && current.as_str().ends_with("$weak") && new.as_str() == "$argon2id$strong" && !revoke
            })
            .times(1)
            .returning(|_, _, _, _| Ok(Some(3)));
        let authenticated = login(&login_service(Some(credentials), hasher, users), "StrongPass123!").unwrap();
        assert_eq!(authenticated, Authenticated { user_id: user, token_version: 3 });
    }

    #[test]
    fn a_password_change_checks_the_current_password_and_revokes_tokens() {
        let credentials = stored_credentials("$argon2id$current");
        let user = credentials.user_id;
        let mut users = MockUserRepository::new();
        let stored = credentials.clone();
        users.expect_credentials_of().returning(move |_| Ok(Some(stored.clone())));
        users
            .expect_replace_password_hash()
            .withf(|_, current, _, revoke| current.as_str() == "$argon2id$current" && *revoke)
            .times(1)
            .returning(|_, _, _, _| Ok(Some(4)));
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_verify().returning(|password, _| Ok(password.expose() == "Current123!"));
        hasher.expect_hash().times(1).returning(|_| Ok(PasswordHash::new("$argon2id$new".into())));
        let service = service(users, MockDeviceRepository::new(), hasher);
        let change = |current: &str| {
            futures_executor::block_on(service.change_password(
                user,
                Password::parse(current).unwrap(),
                Password::parse("NewPass123!").unwrap(),
            ))
        };
        assert!(matches!(change("Wrong1234!"), Err(ServiceError::CurrentPasswordMismatch)));
        assert_eq!(change("Current123!").unwrap(), 4);
    }

    #[test]
    fn a_password_change_that_lost_a_race_is_refused_not_silently_dropped() {
        let credentials = stored_credentials("$argon2id$current");
        let user = credentials.user_id;
        let mut users = MockUserRepository::new();
        users.expect_credentials_of().returning(move |_| Ok(Some(credentials.clone())));
        // Another change replaced the hash between the check and this write.
        users.expect_replace_password_hash().times(1).returning(|_, _, _, _| Ok(None));
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_verify().returning(|_, _| Ok(true));
        hasher.expect_hash().returning(|_| Ok(PasswordHash::new("$argon2id$new".into())));
        let service = service(users, MockDeviceRepository::new(), hasher);
        let changed = futures_executor::block_on(service.change_password(
            user,
            Password::parse("Current123!").unwrap(),
            Password::parse("Another456!").unwrap(),
        ));
        assert!(matches!(changed, Err(ServiceError::CurrentPasswordMismatch)), "{changed:?}");
    }

    #[test]
    fn bulk_eligibility_reads_hits_from_the_cache_and_all_misses_in_one_query() {
        let hit = john();
        let miss = UserProfile {
            user: User {
                id: UserId::generate(),
                email: EmailAddress::parse("miss@example.com").unwrap(),
                ..john().user
            },
            ..john()
        };
        let unknown = UserId::generate();
        let ids = vec![unknown, miss.user.id, hit.user.id, miss.user.id];

        let mut cache = MockProfileCache::new();
        let (hit_id, miss_id) = (hit.user.id, miss.user.id);
        cache.expect_lookup_many().times(1).returning(move |asked| {
            assert_eq!(asked, [unknown, miss_id, hit_id], "each id once, in order");
            vec![
                CacheLookup::Miss(FillTicket::new(None)),
                CacheLookup::Miss(FillTicket::new(Some("g".into()))),
                CacheLookup::Hit(b"cached".to_vec()),
            ]
        });
        cache.expect_fill().withf(move |id, _, _| *id == miss_id).times(1).return_const(());
        let mut users = MockUserRepository::new();
        let stored = miss.clone();
        users
            .expect_find_profiles()
            .withf(move |asked| asked.len() == 2 && asked.contains(&unknown) && asked.contains(&miss_id))
            .times(1)
            .returning(move |_| Ok(vec![stored.clone()]));
        let mut encoder = MockProfileEncoder::new();
        encoder.expect_encode().returning(|_| b"encoded".to_vec());
        let decoded = hit.clone();
        encoder.expect_decode().withf(|bytes| bytes == b"cached").times(1).returning(move |_| Some(decoded.clone()));
        let service = UserService::new(Ports {
            users: Arc::new(users),
            devices: Arc::new(MockDeviceRepository::new()),
            idempotency: Arc::new(MockIdempotencyRepository::new()),
            hasher: Arc::new(MockPasswordHasher::new()),
            clock: Arc::new(fixed_clock()),
            cache: Arc::new(cache),
            encoder: Arc::new(encoder),
        });

        let decisions =
            futures_executor::block_on(service.eligibilities(&ids, Channel::Email, OffsetDateTime::UNIX_EPOCH))
                .unwrap();
        let reasons: Vec<Option<&str>> =
            decisions.iter().map(|(_, decision)| decision.as_ref().map(|d| d.reason.as_str())).collect();
        assert_eq!(reasons, vec![None, Some("ok"), Some("ok"), Some("ok")]);
        assert_eq!(decisions.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
    }
}
