//! Unit tests of the use cases, on mocks of the ports.

use futures_util::FutureExt;
use mockall::predicate::eq;
use time::OffsetDateTime;

use std::sync::{Arc, Mutex};

use super::*;
use crate::auth::{Authenticated, Credentials};
use crate::cache::{CacheLookup, FillTicket, Invalidation};
use crate::cache::{MockProfileCache, NoCache};
use crate::device::{DeviceRegistration, DeviceSelector, Platform, RegisteredDevice};
use crate::device::{HeldToken, PushToken};
use crate::eligibility::Channel;
use crate::failure::{ChangeError, ContactError, DeviceError, LoginError, PasswordChangeError, RegisterError};
use crate::idempotency::IdempotentWrite;
use crate::idempotency::{IdempotencyConflict, IdempotencyKey, IdempotencyRecord};
use crate::ports::{CreatedUser, HashError, NewUserRecord};
use crate::ports::{
    MockClock, MockDeviceRepository, MockIdempotencyRepository, MockPasswordHasher, MockProfileEncoder,
    MockUserRepository,
};
use crate::preferences::PreferencesUpdate;
use crate::user::{ContactUpdate, NewUser};
use crate::user::{EmailAddress, Password, PasswordHash, User, UserName};

/// Runs each write on a thread of its own, to its end, as the runtime would.
struct ThreadSpawner;

impl Spawner for ThreadSpawner {
    fn spawn(&self, task: futures_util::future::BoxFuture<'static, ()>) {
        std::thread::spawn(move || futures_executor::block_on(task));
    }
}

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
        spawner: Arc::new(ThreadSpawner),
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
                && record.device.as_ref().is_some_and(|device| device.platform == Platform::Unknown && device.active)
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
    assert!(matches!(result, Err(RegisterError::EmailTaken)));
}

#[test]
fn a_saturated_hasher_is_unavailable_and_nothing_is_stored() {
    let mut hasher = MockPasswordHasher::new();
    hasher.expect_hash().returning(|_| Err(HashError::Overloaded));
    let mut users = MockUserRepository::new();
    users.expect_create().never();
    let result =
        futures_executor::block_on(service(users, MockDeviceRepository::new(), hasher).register(new_user(), None));
    assert!(matches!(result, Err(RegisterError::Unavailable(_))));
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
    assert!(matches!(result, Err(ContactError::UserNotFound)));
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
    assert!(matches!(result, Err(DeviceError::DeviceNotFound)));
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
    assert!(matches!(result, Err(DeviceError::UserNotFound)));
}

#[test]
fn store_outages_surface_as_unavailable() {
    let mut users = MockUserRepository::new();
    users.expect_find_profile().returning(|_| Err(RepositoryError::Unavailable("pool timed out".into())));
    let result = futures_executor::block_on(
        service(users, MockDeviceRepository::new(), MockPasswordHasher::new()).profile(UserId::generate()),
    );
    assert!(matches!(result, Err(ReadError::Unavailable(_))));
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
    let service = service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
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
    let service = service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
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
    let service = service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
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
    cache.expect_invalidate().withf(move |ids| ids == [user, previous]).times(1).return_const(Invalidation::Confirmed);
    cache.expect_invalidate().withf(move |ids| ids == [user]).times(1).return_const(Invalidation::Unconfirmed);
    let service = service_with_cache(users, devices, MockPasswordHasher::new(), Arc::new(cache));
    let registration =
        DeviceRegistration { token: PushToken::parse("moved-token").unwrap(), platform: Platform::Ios, active: true };
    futures_executor::block_on(service.register_device(user, registration, None)).unwrap();
    let failed = futures_executor::block_on(service.update_preferences(user, PreferencesUpdate::default()));
    // The write's own error comes first.
    assert!(matches!(failed, Err(ChangeError::Unavailable(_))));
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
            Err(ChangeError::InvalidationUnconfirmed) => assert!(!acknowledged, "{invalidation:?} refused"),
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
    let service = service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
    let missing = futures_executor::block_on(service.update_preferences(user, PreferencesUpdate::default()));
    assert!(matches!(missing, Err(ChangeError::UserNotFound)), "{missing:?}");
    let update = ContactUpdate { email: Some(EmailAddress::parse("taken@example.com").unwrap()), ..Default::default() };
    let taken = futures_executor::block_on(service.update_contact(user, update));
    assert!(matches!(taken, Err(ContactError::EmailTaken)), "{taken:?}");
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
    cache.expect_invalidate().withf(move |ids| ids == [user, previous]).times(1).return_const(Invalidation::Deferred);
    let service = service_with_cache(MockUserRepository::new(), devices, MockPasswordHasher::new(), Arc::new(cache));
    let registration =
        DeviceRegistration { token: PushToken::parse("moved-token").unwrap(), platform: Platform::Ios, active: true };
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
        spawner: Arc::new(ThreadSpawner),
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
    assert!(service.reads.no_load_in_flight());
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
            received_at: OffsetDateTime::UNIX_EPOCH,
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
    idempotency.expect_find_record().returning(move |_, _, _| Ok(record.clone()));
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
        spawner: Arc::new(ThreadSpawner),
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
    assert!(matches!(result, Err(RegisterError::Idempotency(IdempotencyConflict::KeyReused))));
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

fn login(service: &UserService, password: &str) -> Result<Authenticated, LoginError> {
    let email = EmailAddress::parse("john@example.com").unwrap();
    futures_executor::block_on(service.login(&email, Password::parse(password).unwrap()))
}

#[test]
fn an_unknown_account_is_verified_against_the_dummy_hash_and_refused_like_a_wrong_password() {
    let mut hasher = MockPasswordHasher::new();
    hasher.expect_dummy_hash().times(1).returning(|| PasswordHash::new("$argon2id$dummy".into()));
    hasher.expect_verify().withf(|_, hash| hash.as_str() == "$argon2id$dummy").times(1).returning(|_, _| Ok(false));
    let unknown = login(&login_service(None, hasher, MockUserRepository::new()), "StrongPass123!");
    assert!(matches!(unknown, Err(LoginError::InvalidCredentials)));

    let mut hasher = MockPasswordHasher::new();
    hasher.expect_verify().times(1).returning(|_, _| Ok(false));
    let wrong = login(
        &login_service(Some(stored_credentials("$argon2id$real")), hasher, MockUserRepository::new()),
        "WrongPass123!",
    );
    assert!(matches!(wrong, Err(LoginError::InvalidCredentials)));
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
    assert!(matches!(change("Wrong1234!"), Err(PasswordChangeError::CurrentPasswordMismatch)));
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
    assert!(matches!(changed, Err(PasswordChangeError::CurrentPasswordMismatch)), "{changed:?}");
}

#[test]
fn bulk_eligibility_reads_hits_from_the_cache_and_all_misses_in_one_query() {
    let hit = john();
    let miss = UserProfile {
        user: User { id: UserId::generate(), email: EmailAddress::parse("miss@example.com").unwrap(), ..john().user },
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
        spawner: Arc::new(ThreadSpawner),
    });

    let decisions =
        futures_executor::block_on(service.eligibilities(&ids, Channel::Email, OffsetDateTime::UNIX_EPOCH)).unwrap();
    let reasons: Vec<Option<&str>> =
        decisions.iter().map(|(_, decision)| decision.as_ref().map(|d| d.reason.as_str())).collect();
    assert_eq!(reasons, vec![None, Some("ok"), Some("ok"), Some("ok")]);
    assert_eq!(decisions.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
}

#[test]
fn a_write_runs_to_its_end_and_invalidates_when_its_caller_stops_waiting() {
    let user = UserId::generate();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    let mut users = MockUserRepository::new();
    users.expect_update_preferences().times(1).returning(move |_, _, now| {
        // The store answers only after the caller is gone (a write run by the caller itself
        // would wait here, inside the caller's first poll, and fail the test).
        released
            .lock()
            .unwrap()
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("released after the caller left");
        Ok(Some(Preferences::defaults(now)))
    });
    let (invalidated, was_invalidated) = std::sync::mpsc::channel();
    let mut cache = MockProfileCache::new();
    cache.expect_invalidate().withf(move |ids| ids == [user]).times(1).returning(move |_| {
        invalidated.send(()).unwrap();
        Invalidation::Confirmed
    });
    let service = service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));

    // Polled once (the write starts), then dropped, as actix drops a closed connection's handler.
    assert!(service.update_preferences(user, PreferencesUpdate::default()).now_or_never().is_none());
    release.send(()).unwrap();

    was_invalidated
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the write went on to its invalidation after its caller stopped waiting");
}
