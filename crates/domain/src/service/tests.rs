//! Unit tests of the use cases, on mocks of the ports.

use futures_util::FutureExt;
use mockall::predicate::eq;
use time::OffsetDateTime;
use time::macros::datetime;

use std::sync::{Arc, Mutex};

use super::*;
use crate::auth::{Authenticated, Credentials};
use crate::cache::{CacheLookup, CachedProfile, CommitPosition, FillTicket, Invalidation, ReadFloor};
use crate::cache::{MockProfileCache, NoCache};
use crate::category::{
    Category, CategoryChoice, CategoryChoices, CategoryKey, CategoryName, ChannelDefaults, ChoiceSource, NewCategory,
    ResolvedChoice,
};
use crate::consent::{
    Actor, ActorKind, ChannelName, ConsentChange, ConsentField, ConsentRecord, ConsentValue, Provenance,
};
use crate::device::DeviceId;
use crate::device::{DeviceRegistration, DeviceSelector, Platform, RegisteredDevice};
use crate::device::{HeldToken, PushToken};
use crate::eligibility::Channel;
use crate::eligibility::{Eligibility, Reason, SendingProfile};
use crate::failure::{CatalogueError, ChoiceError, EligibilityError};
use crate::failure::{ChangeError, ContactError, DeviceError, LoginError, PasswordChangeError, RegisterError};
use crate::idempotency::IdempotentWrite;
use crate::idempotency::{IdempotencyConflict, IdempotencyKey, IdempotencyRecord};
use crate::ports::{CategoryRemoval, ChoiceChange, RecordedSince};
use crate::ports::{CreatedUser, HashError, NewUserRecord};
use crate::ports::{
    MockCategoryRepository, MockClock, MockConsentHistory, MockDeviceRepository, MockIdempotencyRepository,
    MockPasswordHasher, MockProfileEncoder, MockUserRepository,
};
use crate::preferences::{ClockTime, QuietHours};
use crate::preferences::{Preferences, PreferencesUpdate};
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
        categories: Arc::new(MockCategoryRepository::new()),
        history: Arc::new(MockConsentHistory::new()),
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
        categories: CategoryChoices::new(),
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

    let registered = futures_executor::block_on(service(users, MockDeviceRepository::new(), hasher).register(
        new_user(),
        Provenance::default(),
        None,
    ));
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
    let result = futures_executor::block_on(service(users, MockDeviceRepository::new(), hasher).register(
        new_user(),
        Provenance::default(),
        None,
    ));
    assert!(matches!(result, Err(RegisterError::EmailTaken)));
}

#[test]
fn a_saturated_hasher_is_unavailable_and_nothing_is_stored() {
    let mut hasher = MockPasswordHasher::new();
    hasher.expect_hash().returning(|_| Err(HashError::Overloaded));
    let mut users = MockUserRepository::new();
    users.expect_create().never();
    let result = futures_executor::block_on(service(users, MockDeviceRepository::new(), hasher).register(
        new_user(),
        Provenance::default(),
        None,
    ));
    assert!(matches!(result, Err(RegisterError::Unavailable(_))));
}

#[test]
fn an_empty_contact_update_writes_nothing() {
    let mut users = MockUserRepository::new();
    users.expect_update_contact().never();
    users.expect_find_profile().times(1).returning(|_| Ok(None));
    let result = futures_executor::block_on(
        service(users, MockDeviceRepository::new(), MockPasswordHasher::new()).update_contact(
            UserId::generate(),
            ContactUpdate::default(),
            Provenance::default(),
        ),
    );
    assert!(matches!(result, Err(ContactError::UserNotFound)));
}

#[test]
fn a_missing_device_of_an_existing_user_is_device_not_found() {
    let user = UserId::generate();
    let selector = DeviceSelector::parse("fcm_device_token_123").unwrap();
    let mut devices = MockDeviceRepository::new();
    devices.expect_set_active().returning(|_, _, _, _, _| Ok(None));
    let mut users = MockUserRepository::new();
    users.expect_exists().with(eq(user)).returning(|_| Ok(true));
    let result = futures_executor::block_on(service(users, devices, MockPasswordHasher::new()).set_device_active(
        user,
        &selector,
        false,
        Provenance::default(),
    ));
    assert!(matches!(result, Err(DeviceError::DeviceNotFound)));
}

#[test]
fn a_device_of_an_unknown_user_is_user_not_found() {
    let selector = DeviceSelector::parse("fcm_device_token_123").unwrap();
    let mut devices = MockDeviceRepository::new();
    devices.expect_delete().returning(|_, _, _, _| Ok(false));
    let mut users = MockUserRepository::new();
    users.expect_exists().returning(|_| Ok(false));
    let result = futures_executor::block_on(service(users, devices, MockPasswordHasher::new()).delete_device(
        UserId::generate(),
        &selector,
        Provenance::default(),
    ));
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
        categories: CategoryChoices::new(),
        devices: Vec::new(),
    }
}

#[test]
fn a_cache_hit_never_reaches_the_repository() {
    let mut cache = MockProfileCache::new();
    cache.expect_lookup().returning(|_| CacheLookup::Hit(b"cached".to_vec().into()));
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
fn a_miss_whose_ticket_names_a_floor_is_loaded_at_or_after_it_and_one_without_from_the_primary() {
    let floor = CommitPosition(0x1_0000_0042);
    let ticket = FillTicket::new(Some("generation-8".into())).with_floor(ReadFloor::AtLeast(floor));
    let mut cache = MockProfileCache::new();
    let lookup_ticket = ticket.clone();
    cache.expect_lookup().times(1).returning(move |_| CacheLookup::Miss(lookup_ticket.clone()));
    cache.expect_fill().withf(move |_, filled, _| *filled == ticket).times(1).return_const(());
    let id = UserId::generate();
    let mut users = MockUserRepository::new();
    users.expect_find_profile().never();
    users
        .expect_find_profiles_at_least()
        .withf(move |wanted| wanted == [(id, floor)])
        .times(1)
        .returning(|_| Ok(vec![john()]));
    let service = service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
    assert_eq!(&*futures_executor::block_on(service.encoded_profile(id)).unwrap(), b"john@example.com");

    // In bulk: the ids with a floor in one load at or after each one's, the rest from the primary.
    let (primary_id, replica_id) = (UserId::generate(), UserId::generate());
    let mut cache = MockProfileCache::new();
    cache.expect_lookup_many().times(1).returning(move |_| {
        vec![
            CacheLookup::Miss(FillTicket::new(Some("g".into()))),
            CacheLookup::Miss(FillTicket::new(None).with_floor(ReadFloor::AtLeast(floor))),
        ]
    });
    cache.expect_fill().return_const(());
    let mut users = MockUserRepository::new();
    users.expect_find_profiles().withf(move |asked| asked == [primary_id]).times(1).returning(|_| Ok(vec![]));
    users
        .expect_find_profiles_at_least()
        .withf(move |wanted| wanted == [(replica_id, floor)])
        .times(1)
        .returning(|_| Ok(vec![]));
    let service = service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
    let found = futures_executor::block_on(service.encoded_profiles(&[primary_id, replica_id])).unwrap();
    assert_eq!(found, vec![(primary_id, None), (replica_id, None)]);
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
    devices.expect_upsert().times(1).returning(move |owner, registration, now, _, _| {
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
    users.expect_update_preferences().returning(|_, _, _, _| Err(RepositoryError::Unavailable("lost".into())));
    let mut cache = MockProfileCache::new();
    cache.expect_invalidate().withf(move |ids| ids == [user, previous]).times(1).return_const(Invalidation::Confirmed);
    cache.expect_invalidate().withf(move |ids| ids == [user]).times(1).return_const(Invalidation::Unconfirmed);
    let service = service_with_cache(users, devices, MockPasswordHasher::new(), Arc::new(cache));
    let registration =
        DeviceRegistration { token: PushToken::parse("moved-token").unwrap(), platform: Platform::Ios, active: true };
    futures_executor::block_on(service.register_device(user, registration, Provenance::default(), None)).unwrap();
    let failed = futures_executor::block_on(service.update_preferences(
        user,
        PreferencesUpdate::default(),
        Provenance::default(),
    ));
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
        users.expect_update_preferences().times(1).returning(|_, _, now, _| Ok(Some(Preferences::defaults(now))));
        let mut cache = MockProfileCache::new();
        cache.expect_invalidate().withf(move |ids| ids == [user]).times(1).return_const(invalidation);
        let service =
            service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
        let outcome = futures_executor::block_on(service.update_preferences(
            user,
            PreferencesUpdate::default(),
            Provenance::default(),
        ));
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
    users.expect_update_preferences().times(1).returning(|_, _, _, _| Ok(None));
    users.expect_update_contact().times(1).returning(|_, _, _, _| Err(RepositoryError::EmailTaken));
    let mut cache = MockProfileCache::new();
    // While Redis is down, a refusal must cost neither the wait nor a ledger row.
    cache.expect_invalidate().never();
    let service = service_with_cache(users, MockDeviceRepository::new(), MockPasswordHasher::new(), Arc::new(cache));
    let missing = futures_executor::block_on(service.update_preferences(
        user,
        PreferencesUpdate::default(),
        Provenance::default(),
    ));
    assert!(matches!(missing, Err(ChangeError::UserNotFound)), "{missing:?}");
    let update = ContactUpdate { email: Some(EmailAddress::parse("taken@example.com").unwrap()), ..Default::default() };
    let taken = futures_executor::block_on(service.update_contact(user, update, Provenance::default()));
    assert!(matches!(taken, Err(ContactError::EmailTaken)), "{taken:?}");
}

#[test]
fn a_contact_change_whose_result_cannot_be_read_back_says_it_is_saved() {
    let user = UserId::generate();
    let mut users = MockUserRepository::new();
    let updated = User {
        id: user,
        name: UserName::parse("Jane").unwrap(),
        email: EmailAddress::parse("jane@example.com").unwrap(),
        phone: None,
        created_at: OffsetDateTime::UNIX_EPOCH,
        updated_at: OffsetDateTime::UNIX_EPOCH,
    };
    users.expect_update_contact().times(1).returning(move |_, _, _, _| Ok(Some(updated.clone())));
    users.expect_find_profiles().returning(|_| Err(RepositoryError::Unavailable("pool timeout".into())));
    users.expect_find_profile().returning(|_| Err(RepositoryError::Unavailable("pool timeout".into())));
    let service = service(users, MockDeviceRepository::new(), MockPasswordHasher::new());
    let update = ContactUpdate { name: Some(UserName::parse("Jane").unwrap()), ..Default::default() };
    let answer = futures_executor::block_on(service.update_contact(user, update, Provenance::default()));
    assert!(matches!(answer, Err(ContactError::SavedButUnread)), "{answer:?}");
}

#[test]
fn a_replayed_device_move_invalidates_every_user_its_first_run_touched() {
    let (user, previous) = (UserId::generate(), UserId::generate());
    let mut devices = MockDeviceRepository::new();
    devices.expect_upsert().times(1).returning(move |_, _, _, _, _| {
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
    let replayed = futures_executor::block_on(service.register_device(user, registration, Provenance::default(), None));
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
        by: &Provenance,
    ) -> Result<Option<User>, RepositoryError> {
        self.0.update_contact(id, update, now, by).await
    }
    async fn delete(&self, id: UserId) -> Result<bool, RepositoryError> {
        self.0.delete(id).await
    }
    async fn update_preferences(
        &self,
        id: UserId,
        update: PreferencesUpdate,
        now: OffsetDateTime,
        by: &Provenance,
    ) -> Result<Option<Preferences>, RepositoryError> {
        self.0.update_preferences(id, update, now, by).await
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
        categories: Arc::new(MockCategoryRepository::new()),
        history: Arc::new(MockConsentHistory::new()),
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
fn a_load_whose_readers_all_went_away_is_dropped_with_them() {
    let ticket = FillTicket::new(Some("g1".into()));
    let service = single_flight_service(vec![ticket.clone(), ticket.clone(), ticket], 1);
    let id = UserId::generate();
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    // Two readers share one load, which waits for the store; then their requests go away.
    let mut first = Box::pin(service.encoded_profile(id));
    let mut second = Box::pin(service.encoded_profile(id));
    assert!(first.as_mut().poll(&mut context).is_pending() && second.as_mut().poll(&mut context).is_pending());
    assert!(!service.reads.no_load_in_flight());
    drop((first, second));
    // Kept in the map, it would never be polled again, holding what it had taken (a cache
    // connection being made, a database connection) for good.
    assert!(service.reads.no_load_in_flight(), "a load that no reader waits for is kept");
    // The next reader loads afresh.
    assert!(futures_executor::block_on(service.encoded_profile(id)).is_ok());
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
        categories: Arc::new(MockCategoryRepository::new()),
        history: Arc::new(MockConsentHistory::new()),
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
    let result = futures_executor::block_on(service.register(
        new_user(),
        Provenance::default(),
        Some(idempotent_registration(&[7])),
    ));
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
    let result = futures_executor::block_on(service.register(
        new_user(),
        Provenance::default(),
        Some(idempotent_registration(&[8])),
    ));
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
            CacheLookup::Hit(b"cached".to_vec().into()),
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
    encoder
        .expect_decode_sending()
        .withf(|bytes, _| bytes == b"cached")
        .times(1)
        .returning(move |_, channel| Some(SendingProfile::of(&decoded, channel)));
    let service = UserService::new(Ports {
        users: Arc::new(users),
        devices: Arc::new(MockDeviceRepository::new()),
        categories: Arc::new(MockCategoryRepository::new()),
        history: Arc::new(MockConsentHistory::new()),
        idempotency: Arc::new(MockIdempotencyRepository::new()),
        hasher: Arc::new(MockPasswordHasher::new()),
        clock: Arc::new(fixed_clock()),
        cache: Arc::new(cache),
        encoder: Arc::new(encoder),
        spawner: Arc::new(ThreadSpawner),
    });

    let decisions =
        futures_executor::block_on(service.eligibilities(&ids, Channel::Email, None, OffsetDateTime::UNIX_EPOCH))
            .unwrap();
    let reasons: Vec<Option<&str>> =
        decisions.iter().map(|(_, decision)| decision.as_ref().map(|d| d.reason.as_str())).collect();
    assert_eq!(reasons, vec![None, Some("ok"), Some("ok"), Some("ok")]);
    assert_eq!(decisions.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
}

#[test]
fn an_entry_the_cache_keeps_in_process_is_decoded_once_per_channel_for_every_later_decision() {
    let mut ada = ada_today();
    ada.devices[0].active = true;
    let id = ada.user.id;
    // What a near-cache hands out: one value per entry, to every reader.
    let entry = CachedProfile::from(b"ada".to_vec());
    let mut cache = MockProfileCache::new();
    let shared = entry.clone();
    cache.expect_lookup_many().returning(move |asked| vec![CacheLookup::Hit(shared.clone()); asked.len()]);
    let shared = entry.clone();
    cache.expect_lookup().returning(move |_| CacheLookup::Hit(shared.clone()));
    let mut encoder = MockProfileEncoder::new();
    encoder
        .expect_decode_sending()
        .withf(|bytes, channel| bytes == b"ada" && *channel == Channel::Email)
        .times(1)
        .returning(move |_, channel| Some(SendingProfile::of(&ada, channel)));
    encoder.expect_decode_sending().withf(|_, channel| *channel == Channel::Push).times(1).returning(|_, _| None);
    let mut users = MockUserRepository::new();
    // Bytes that do not decode are read from the store on every decision, never guessed.
    let mut stored = ada_today();
    stored.devices[0].active = true;
    users.expect_find_profiles().times(2).returning(move |_| Ok(vec![stored.clone()]));
    let mut stored = ada_today();
    stored.devices[0].active = true;
    users.expect_find_profile().times(1).returning(move |_| Ok(Some(stored.clone())));
    let service =
        catalogue_service(users, MockCategoryRepository::new(), MockConsentHistory::new(), Arc::new(cache), encoder);
    let noon = datetime!(2026-03-10 12:00 UTC);

    for _ in 0..3 {
        let bulk = futures_executor::block_on(service.eligibilities(&[id], Channel::Email, None, noon)).unwrap();
        assert_eq!(bulk[0].1.as_ref().map(|decision| decision.reason), Some(Reason::Ok));
    }
    let single = futures_executor::block_on(service.eligibility(id, Channel::Email, None, noon)).unwrap();
    assert_eq!(single.reason, Reason::Ok);
    for _ in 0..2 {
        let bulk = futures_executor::block_on(service.eligibilities(&[id], Channel::Push, None, noon)).unwrap();
        assert_eq!(bulk[0].1.as_ref().map(|decision| decision.reason), Some(Reason::Ok), "from the store");
    }
    let single = futures_executor::block_on(service.eligibility(id, Channel::Push, None, noon)).unwrap();
    assert_eq!(single.reason, Reason::Ok, "from the store");
}

#[test]
fn a_write_runs_to_its_end_and_invalidates_when_its_caller_stops_waiting() {
    let user = UserId::generate();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    let mut users = MockUserRepository::new();
    users.expect_update_preferences().times(1).returning(move |_, _, now, _| {
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
    assert!(
        service.update_preferences(user, PreferencesUpdate::default(), Provenance::default()).now_or_never().is_none()
    );
    release.send(()).unwrap();

    was_invalidated
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the write went on to its invalidation after its caller stopped waiting");
}

// ---- Categories, choices, and eligibility as recorded (service/categories.rs) --------------

fn key(raw: &str) -> CategoryKey {
    CategoryKey::parse(raw).unwrap()
}

/// A non-critical category with these defaults.
fn category(raw: &str, email: bool, push: bool) -> Category {
    Category::new(
        NewCategory {
            key: key(raw),
            name: CategoryName::parse(raw).unwrap(),
            description: None,
            critical: false,
            defaults: ChannelDefaults { email, push },
        },
        REGISTERED,
    )
}

/// An operator removing or changing things on someone's behalf.
fn operator() -> Provenance {
    Provenance {
        actor: Some(Actor { kind: ActorKind::Service, name: "ops-console".into() }),
        request_id: Some("req-42".into()),
    }
}

/// A service over the catalogue, the history, the user store, a cache and an encoder;
/// a port a test does not prepare panics if called.
fn catalogue_service(
    users: MockUserRepository,
    categories: MockCategoryRepository,
    history: MockConsentHistory,
    cache: Arc<dyn ProfileCache>,
    encoder: MockProfileEncoder,
) -> UserService {
    UserService::new(Ports {
        users: Arc::new(users),
        devices: Arc::new(MockDeviceRepository::new()),
        categories: Arc::new(categories),
        history: Arc::new(history),
        idempotency: Arc::new(MockIdempotencyRepository::new()),
        hasher: Arc::new(MockPasswordHasher::new()),
        clock: Arc::new(fixed_clock()),
        cache,
        encoder: Arc::new(encoder),
        spawner: Arc::new(ThreadSpawner),
    })
}

/// When Ada registered: email and push on, no quiet hours, UTC, one active device.
const REGISTERED: OffsetDateTime = datetime!(2026-03-01 09:00 UTC);
const OPTED_OUT_OF_EMAIL: OffsetDateTime = datetime!(2026-03-02 10:00 UTC);
const SET_QUIET_HOURS: OffsetDateTime = datetime!(2026-03-03 10:00 UTC);
const OPTED_BACK_IN_TO_EMAIL: OffsetDateTime = datetime!(2026-03-04 10:00 UTC);
const OPTED_OUT_OF_MARKETING_EMAIL: OffsetDateTime = datetime!(2026-03-05 10:00 UTC);
const DEACTIVATED_HER_PHONE: OffsetDateTime = datetime!(2026-03-06 10:00 UTC);

fn ada_phone() -> DeviceId {
    DeviceId::from(uuid::Uuid::from_u128(7))
}

/// Ada as the store has her today, after every change of [`ada_history`].
fn ada_today() -> UserProfile {
    UserProfile {
        user: User {
            id: UserId::from(uuid::Uuid::from_u128(1)),
            name: UserName::parse("Ada").unwrap(),
            email: EmailAddress::parse("ada@example.com").unwrap(),
            phone: None,
            created_at: REGISTERED,
            updated_at: REGISTERED,
        },
        preferences: Preferences {
            quiet_hours: Some(
                QuietHours::new(ClockTime::parse("22:00").unwrap(), ClockTime::parse("07:00").unwrap()).unwrap(),
            ),
            ..Preferences::defaults(DEACTIVATED_HER_PHONE)
        },
        categories: CategoryChoices::from([(key("marketing"), CategoryChoice { email: Some(false), push: None })]),
        devices: vec![Device {
            id: ada_phone(),
            user_id: UserId::from(uuid::Uuid::from_u128(1)),
            token: PushToken::parse("ada-phone").unwrap(),
            platform: Platform::Android,
            active: false,
            created_at: REGISTERED,
            updated_at: DEACTIVATED_HER_PHONE,
            last_seen_at: DEACTIVATED_HER_PHONE,
        }],
    }
}

/// Ada's history, oldest first: her registration, then one change a day.
fn ada_history() -> Vec<ConsentRecord> {
    let flag = |field: ConsentField, old: Option<bool>, new: bool| ConsentChange {
        field,
        old: old.map_or(ConsentValue::Unset, ConsentValue::Flag),
        new: ConsentValue::Flag(new),
    };
    let changes = [
        (REGISTERED, flag(ConsentField::Channel(ChannelName::Email), None, true)),
        (REGISTERED, flag(ConsentField::Channel(ChannelName::Push), None, true)),
        (REGISTERED, flag(ConsentField::DeviceActive(ada_phone()), None, true)),
        (OPTED_OUT_OF_EMAIL, flag(ConsentField::Channel(ChannelName::Email), Some(true), false)),
        (
            SET_QUIET_HOURS,
            ConsentChange {
                field: ConsentField::QuietHours,
                old: ConsentValue::Unset,
                new: ConsentValue::Text("22:00-07:00".into()),
            },
        ),
        (OPTED_BACK_IN_TO_EMAIL, flag(ConsentField::Channel(ChannelName::Email), Some(false), true)),
        (OPTED_OUT_OF_MARKETING_EMAIL, flag(ConsentField::Category(key("marketing"), ChannelName::Email), None, false)),
        (DEACTIVATED_HER_PHONE, flag(ConsentField::DeviceActive(ada_phone()), Some(true), false)),
    ];
    (1..)
        .zip(changes)
        .map(|(sequence, (at, change))| ConsentRecord {
            sequence,
            at,
            change,
            actor: Actor::user(ada_today().user.id),
            request_id: None,
        })
        .collect()
}

/// What a store answers to `ConsentHistory::since` over `records`.
fn recorded_since(records: &[ConsentRecord], at: OffsetDateTime) -> RecordedSince {
    RecordedSince {
        changes: records.iter().rev().filter(|record| record.at > at).cloned().collect(),
        last_before: records.iter().map(|record| record.at).filter(|recorded| *recorded <= at).max(),
    }
}

/// A history port answering from Ada's recorded rows.
fn ada_history_port() -> MockConsentHistory {
    let mut history = MockConsentHistory::new();
    let records = ada_history();
    history
        .expect_since()
        .withf(|user, _| *user == ada_today().user.id)
        .returning(move |_, at| Ok(recorded_since(&records, at)));
    history
}

/// A store that has Ada, read directly: a cached representation holds only the active
/// devices, so a decision as recorded never reads through the cache.
fn ada_store() -> MockUserRepository {
    let mut users = MockUserRepository::new();
    users.expect_find_profile().returning(|id| Ok((id == ada_today().user.id).then(ada_today)));
    users
}

fn no_cache_reads() -> Arc<dyn ProfileCache> {
    let mut cache = MockProfileCache::new();
    cache.expect_lookup().never();
    cache.expect_lookup_many().never();
    Arc::new(cache)
}

#[test]
fn eligibility_as_recorded_takes_back_every_later_change_to_rebuild_the_consent_at_the_instant() {
    let mut categories = MockCategoryRepository::new();
    categories.expect_find().never();
    categories
        .expect_as_of()
        .withf(|key, _| key.as_str() == "marketing")
        .returning(|_, _| Ok(Some(category("marketing", true, true))));
    let service =
        catalogue_service(ada_store(), categories, ada_history_port(), no_cache_reads(), MockProfileEncoder::new());
    let marketing = key("marketing");

    use Channel::{Email, Push};
    use Reason::{CategoryOptedOut, NoActiveDevice, Ok as Allowed, OptedOut, QuietHours};
    // (instant, channel, category, reason, end of quiet hours, what the answer rests on)
    let cases = [
        (datetime!(2026-03-01 12:00 UTC), Email, None, Allowed, None, REGISTERED),
        (REGISTERED, Email, None, Allowed, None, REGISTERED),
        // A change at the very instant counts: it was made at or before it.
        (OPTED_OUT_OF_EMAIL, Email, None, OptedOut, None, OPTED_OUT_OF_EMAIL),
        // 23:00 UTC is quiet today, but there were no quiet hours yet.
        (datetime!(2026-03-02 23:00 UTC), Email, None, OptedOut, None, OPTED_OUT_OF_EMAIL),
        (datetime!(2026-03-02 23:00 UTC), Push, None, Allowed, None, OPTED_OUT_OF_EMAIL),
        (
            datetime!(2026-03-03 23:00 UTC),
            Push,
            None,
            QuietHours,
            Some(datetime!(2026-03-04 07:00 UTC)),
            SET_QUIET_HOURS,
        ),
        (datetime!(2026-03-04 12:00 UTC), Email, Some(&marketing), Allowed, None, OPTED_BACK_IN_TO_EMAIL),
        (
            datetime!(2026-03-05 12:00 UTC),
            Email,
            Some(&marketing),
            CategoryOptedOut,
            None,
            OPTED_OUT_OF_MARKETING_EMAIL,
        ),
        (datetime!(2026-03-05 12:00 UTC), Push, None, Allowed, None, OPTED_OUT_OF_MARKETING_EMAIL),
        (datetime!(2026-03-07 12:00 UTC), Push, None, NoActiveDevice, None, DEACTIVATED_HER_PHONE),
    ];
    for (at, channel, category, reason, next_allowed_at, rests_on) in cases {
        let recorded =
            futures_executor::block_on(service.eligibility_as_recorded(ada_today().user.id, channel, category, at))
                .unwrap();
        let allowed = reason == Allowed;
        assert_eq!(
            recorded,
            RecordedEligibility {
                eligibility: Eligibility { channel, at, allowed, reason, next_allowed_at, targets: None },
                rests_on,
            },
            "{channel:?} at {at}"
        );
    }
}

#[test]
fn eligibility_as_recorded_before_registration_is_not_yet_registered() {
    let mut categories = MockCategoryRepository::new();
    categories.expect_as_of().never();
    let mut history = MockConsentHistory::new();
    // Nothing recorded by then: before the registration.
    history.expect_since().returning(|_, _| Ok(RecordedSince { changes: Vec::new(), last_before: None }));
    let service = catalogue_service(ada_store(), categories, history, no_cache_reads(), MockProfileEncoder::new());
    let a_second_early = REGISTERED - time::Duration::SECOND;
    let answer = futures_executor::block_on(service.eligibility_as_recorded(
        ada_today().user.id,
        Channel::Email,
        Some(&key("marketing")),
        a_second_early,
    ));
    assert!(matches!(answer, Err(EligibilityError::NotYetRegistered)), "{answer:?}");

    let unknown = futures_executor::block_on(service.eligibility_as_recorded(
        UserId::generate(),
        Channel::Email,
        None,
        REGISTERED,
    ));
    assert!(matches!(unknown, Err(EligibilityError::UserNotFound)), "{unknown:?}");
}

#[test]
fn eligibility_as_recorded_decides_with_the_category_as_the_catalogue_had_it_then() {
    let at = datetime!(2026-03-04 12:00 UTC);
    let mut categories = MockCategoryRepository::new();
    // Today marketing is on by default; on 4 March its email default was off.
    categories.expect_find().never();
    categories
        .expect_as_of()
        .withf(move |key, asked| key.as_str() == "marketing" && *asked == at)
        .times(1)
        .returning(|_, _| Ok(Some(category("marketing", false, true))));
    categories.expect_as_of().withf(|key, _| key.as_str() == "launched-later").times(1).returning(|_, _| Ok(None));
    let service =
        catalogue_service(ada_store(), categories, ada_history_port(), no_cache_reads(), MockProfileEncoder::new());
    let ada = ada_today().user.id;

    let then =
        futures_executor::block_on(service.eligibility_as_recorded(ada, Channel::Email, Some(&key("marketing")), at));
    assert_eq!(then.unwrap().eligibility.reason, Reason::CategoryOptedOut);
    // A category that did not exist at the instant is unknown, as a category that never did.
    let missing = futures_executor::block_on(service.eligibility_as_recorded(
        ada,
        Channel::Email,
        Some(&key("launched-later")),
        at,
    ));
    assert!(matches!(missing, Err(EligibilityError::CategoryNotFound)), "{missing:?}");
}

#[test]
fn eligibility_as_recorded_rests_on_the_registration_when_nothing_was_recorded_before_the_instant() {
    // A user registered before the history existed: no row at or before the instant.
    let mut history = MockConsentHistory::new();
    history.expect_since().times(1).returning(|_, _| Ok(RecordedSince { changes: Vec::new(), last_before: None }));
    let service = catalogue_service(
        ada_store(),
        MockCategoryRepository::new(),
        history,
        no_cache_reads(),
        MockProfileEncoder::new(),
    );
    let at = datetime!(2026-04-01 12:00 UTC);
    let recorded =
        futures_executor::block_on(service.eligibility_as_recorded(ada_today().user.id, Channel::Email, None, at))
            .unwrap();
    assert_eq!(recorded.rests_on, REGISTERED);
    assert_eq!(recorded.eligibility.reason, Reason::Ok);
}

#[test]
fn an_instant_before_created_at_but_after_recorded_rows_is_answered_not_refused() {
    // The registering instance's clock ran ahead of the store's: the registration's rows are
    // recorded a little before `created_at`. An instant between them is after the registration.
    let recorded_registration = REGISTERED - time::Duration::seconds(3);
    let mut history = MockConsentHistory::new();
    history
        .expect_since()
        .returning(move |_, _| Ok(RecordedSince { changes: Vec::new(), last_before: Some(recorded_registration) }));
    let service = catalogue_service(
        ada_store(),
        MockCategoryRepository::new(),
        history,
        no_cache_reads(),
        MockProfileEncoder::new(),
    );
    let between = REGISTERED - time::Duration::seconds(1);
    let recorded =
        futures_executor::block_on(service.eligibility_as_recorded(ada_today().user.id, Channel::Email, None, between))
            .unwrap();
    assert_eq!(recorded.rests_on, recorded_registration);
}

#[test]
fn eligibility_as_recorded_refuses_a_history_row_that_does_not_fit_its_field() {
    let mut history = MockConsentHistory::new();
    history.expect_since().returning(|_, _| {
        Ok(RecordedSince {
            changes: vec![ConsentRecord {
                sequence: 9,
                at: DEACTIVATED_HER_PHONE,
                change: ConsentChange {
                    field: ConsentField::Channel(ChannelName::Email),
                    old: ConsentValue::Text("yes".into()),
                    new: ConsentValue::Flag(true),
                },
                actor: Actor::user(ada_today().user.id),
                request_id: None,
            }],
            last_before: Some(REGISTERED),
        })
    });
    let service = catalogue_service(
        ada_store(),
        MockCategoryRepository::new(),
        history,
        no_cache_reads(),
        MockProfileEncoder::new(),
    );
    let answer = futures_executor::block_on(service.eligibility_as_recorded(
        ada_today().user.id,
        Channel::Email,
        None,
        REGISTERED,
    ));
    assert!(matches!(answer, Err(EligibilityError::Unexpected(_))), "never a guess: {answer:?}");
}

#[test]
fn eligibility_in_an_unknown_category_is_category_not_found_before_any_user_is_read() {
    let mut categories = MockCategoryRepository::new();
    categories.expect_find().withf(|key| key.as_str() == "nope").returning(|_| Ok(None));
    let mut users = MockUserRepository::new();
    users.expect_find_profile().never();
    users.expect_find_profiles().never();
    let service =
        catalogue_service(users, categories, MockConsentHistory::new(), no_cache_reads(), MockProfileEncoder::new());
    let nope = key("nope");

    let single =
        futures_executor::block_on(service.eligibility(UserId::generate(), Channel::Push, Some(&nope), REGISTERED));
    assert!(matches!(single, Err(EligibilityError::CategoryNotFound)), "{single:?}");
    let bulk = futures_executor::block_on(service.eligibilities(
        &[UserId::generate()],
        Channel::Push,
        Some(&nope),
        REGISTERED,
    ));
    assert!(matches!(bulk, Err(EligibilityError::CategoryNotFound)), "{bulk:?}");
}

#[test]
fn eligibility_in_a_category_applies_the_users_choice_from_the_cached_representation() {
    let mut categories = MockCategoryRepository::new();
    categories.expect_find().returning(|_| Ok(Some(category("marketing", true, false))));
    let mut cache = MockProfileCache::new();
    cache.expect_lookup().returning(|_| CacheLookup::Hit(b"cached".to_vec().into()));
    let mut encoder = MockProfileEncoder::new();
    let mut cached = ada_today();
    cached.devices[0].active = true;
    encoder.expect_decode_sending().returning(move |_, channel| Some(SendingProfile::of(&cached, channel)));
    let mut users = MockUserRepository::new();
    users.expect_find_profile().never();
    let service = catalogue_service(users, categories, MockConsentHistory::new(), Arc::new(cache), encoder);
    let marketing = key("marketing");
    let noon = datetime!(2026-03-10 12:00 UTC);
    let reason = |channel| {
        futures_executor::block_on(service.eligibility(ada_today().user.id, channel, Some(&marketing), noon))
            .unwrap()
            .reason
    };
    // Her choice turned email off; push is off by default and she did not choose.
    assert_eq!(reason(Channel::Email), Reason::CategoryOptedOut);
    assert_eq!(reason(Channel::Push), Reason::CategoryOptedOut);
}

#[test]
fn removing_a_category_with_force_invalidates_the_users_whose_choices_were_dropped() {
    let (grace, linus) = (UserId::generate(), UserId::generate());
    let mut categories = MockCategoryRepository::new();
    categories
        .expect_remove()
        .withf(|key, force, _, by| key.as_str() == "marketing" && *force && *by == operator())
        .times(1)
        .returning(move |_, _, _, _| Ok(CategoryRemoval::Removed(vec![grace, linus])));
    let mut cache = MockProfileCache::new();
    cache.expect_invalidate().withf(move |ids| ids == [grace, linus]).times(1).return_const(Invalidation::Confirmed);
    let service = catalogue_service(
        MockUserRepository::new(),
        categories,
        MockConsentHistory::new(),
        Arc::new(cache),
        MockProfileEncoder::new(),
    );
    futures_executor::block_on(service.remove_category(key("marketing"), true, operator())).unwrap();
}

#[test]
fn a_forced_removal_whose_invalidation_is_unconfirmed_is_not_acknowledged() {
    let grace = UserId::generate();
    let mut categories = MockCategoryRepository::new();
    categories.expect_remove().returning(move |_, _, _, _| Ok(CategoryRemoval::Removed(vec![grace])));
    let mut cache = MockProfileCache::new();
    cache.expect_invalidate().withf(move |ids| ids == [grace]).times(1).return_const(Invalidation::Unconfirmed);
    let service = catalogue_service(
        MockUserRepository::new(),
        categories,
        MockConsentHistory::new(),
        Arc::new(cache),
        MockProfileEncoder::new(),
    );
    let removed = futures_executor::block_on(service.remove_category(key("marketing"), true, operator()));
    assert!(matches!(removed, Err(CatalogueError::InvalidationUnconfirmed)), "{removed:?}");
}

#[test]
fn removing_a_category_in_use_without_force_is_category_in_use_and_invalidates_nobody() {
    let mut categories = MockCategoryRepository::new();
    categories
        .expect_remove()
        .withf(|_, force, _, _| !*force)
        .times(1)
        .returning(|_, _, _, _| Ok(CategoryRemoval::InUse(3)));
    categories
        .expect_remove()
        .withf(|key, _, _, _| key.as_str() == "gone")
        .returning(|_, _, _, _| Ok(CategoryRemoval::NotFound));
    categories
        .expect_remove()
        .withf(|key, _, _, _| key.as_str() == "unused")
        .returning(|_, _, _, _| Ok(CategoryRemoval::Removed(Vec::new())));
    let mut cache = MockProfileCache::new();
    cache.expect_invalidate().never();
    let service = catalogue_service(
        MockUserRepository::new(),
        categories,
        MockConsentHistory::new(),
        Arc::new(cache),
        MockProfileEncoder::new(),
    );
    let in_use = futures_executor::block_on(service.remove_category(key("marketing"), false, operator()));
    assert!(matches!(in_use, Err(CatalogueError::CategoryInUse(3))), "{in_use:?}");
    let gone = futures_executor::block_on(service.remove_category(key("gone"), true, operator()));
    assert!(matches!(gone, Err(CatalogueError::CategoryNotFound)), "{gone:?}");
    // Nobody had chosen: nothing cached changed.
    futures_executor::block_on(service.remove_category(key("unused"), true, operator())).unwrap();
}

#[test]
fn changing_a_category_choice_invalidates_the_user_and_answers_the_setting_that_now_applies() {
    let ada = ada_today().user.id;
    let chosen = CategoryChoice { email: None, push: Some(true) };
    let mut categories = MockCategoryRepository::new();
    categories
        .expect_change_choice()
        .withf(move |user, key, change, _, by| {
            *user == ada && key.as_str() == "marketing" && *change == ChoiceChange::Set(chosen) && *by == operator()
        })
        .times(1)
        .returning(move |_, _, _, _, _| Ok(Some(chosen)));
    categories.expect_find().returning(|_| Ok(Some(category("marketing", true, false))));
    let mut cache = MockProfileCache::new();
    cache.expect_invalidate().withf(move |ids| ids == [ada]).times(1).return_const(Invalidation::Confirmed);
    let service = catalogue_service(
        MockUserRepository::new(),
        categories,
        MockConsentHistory::new(),
        Arc::new(cache),
        MockProfileEncoder::new(),
    );
    let (category, resolved) = futures_executor::block_on(service.change_category_choice(
        ada,
        key("marketing"),
        ChoiceChange::Set(chosen),
        operator(),
    ))
    .unwrap();
    assert_eq!(category.key.as_str(), "marketing");
    assert_eq!(resolved, ResolvedChoice { email: true, push: true, source: ChoiceSource::User });
}

#[test]
fn a_choice_refused_for_an_unknown_user_or_category_invalidates_nobody() {
    let mut categories = MockCategoryRepository::new();
    categories
        .expect_change_choice()
        .withf(|_, key, _, _, _| key.as_str() == "marketing")
        .returning(|_, _, _, _, _| Ok(None));
    categories
        .expect_change_choice()
        .withf(|_, key, _, _, _| key.as_str() == "nope")
        .returning(|_, _, _, _, _| Err(RepositoryError::CategoryNotFound));
    let mut cache = MockProfileCache::new();
    cache.expect_invalidate().never();
    let service = catalogue_service(
        MockUserRepository::new(),
        categories,
        MockConsentHistory::new(),
        Arc::new(cache),
        MockProfileEncoder::new(),
    );
    let change = |raw: &str| {
        futures_executor::block_on(service.change_category_choice(
            UserId::generate(),
            key(raw),
            ChoiceChange::Clear,
            Provenance::default(),
        ))
    };
    assert!(matches!(change("marketing"), Err(ChoiceError::UserNotFound)));
    assert!(matches!(change("nope"), Err(ChoiceError::CategoryNotFound)));
}
