//! Tests of [`PgStore`] against a real PostgreSQL: one database per test, cloned from a
//! migrated template (see [`crate::testing`]). Rows are counted with SQL so that the
//! assertions do not rely only on what the adapter itself reads back.

use std::sync::Arc;

use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel_async::SimpleAsyncConnection;
use domain::device::RegisteredDevice;
use domain::device::{DeviceRegistration, DeviceSelector, Platform, PushToken};
use domain::idempotency::{
    IdempotencyConflict, IdempotencyKey, Idempotent, IdempotentRequest, IdempotentWrite, StoredResponse,
};
use domain::ports::{
    CreatedUser, DeviceRepository, IdempotencyRepository, NewUserRecord, RepositoryError, UserRepository,
};
use domain::preferences::{ClockTime, Preferences, PreferencesUpdate, QuietHours, TimeZoneName};
use domain::user::{ContactUpdate, EmailAddress, PageRequest, PasswordHash, PhoneNumber, UserId, UserName};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use tokio::sync::Barrier;

use crate::PgStore;
use crate::testing::TestDatabase;

/// Creates a user without an idempotency key.
async fn create(store: &PgStore, record: NewUserRecord) -> Result<CreatedUser, RepositoryError> {
    match UserRepository::create(store, record, None).await? {
        Idempotent::Executed(created) => Ok(created),
        Idempotent::Replayed(_) => panic!("a write without a key is never replayed"),
    }
}

/// Registers a device without an idempotency key.
async fn upsert(
    store: &PgStore,
    user: UserId,
    registration: DeviceRegistration,
    now: OffsetDateTime,
) -> Result<RegisteredDevice, RepositoryError> {
    match DeviceRepository::upsert(store, user, registration, now, None).await? {
        Idempotent::Executed(registered) => Ok(registered),
        Idempotent::Replayed(_) => panic!("a write without a key is never replayed"),
    }
}

const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

/// A fixed instant plus `minutes`, at microsecond precision like PostgreSQL's timestamps.
fn at(minutes: i64) -> OffsetDateTime {
    datetime!(2026-11-25 09:00:00 UTC) + Duration::minutes(minutes)
}

async fn setup() -> (TestDatabase, PgStore) {
    let db = TestDatabase::create().await.expect("create the test database");
    let store = PgStore::new(db.pool().clone());
    (db, store)
}

async fn count(db: &TestDatabase, query: &str) -> i64 {
    db.count(query).await.expect("count rows")
}

/// Runs SQL around the adapter (to set up states the domain types cannot express).
async fn execute(db: &TestDatabase, sql: &str) {
    let mut connection = db.pool().get().await.expect("a connection");
    connection.batch_execute(sql).await.expect("execute SQL");
}

fn record(email: &str, created_at: OffsetDateTime) -> NewUserRecord {
    NewUserRecord {
        id: UserId::generate(),
        name: UserName::parse("John Doe").unwrap(),
        email: EmailAddress::parse(email).unwrap(),
        phone: None,
        password_hash: PasswordHash::new(PASSWORD_HASH.to_owned()),
        preferences: Preferences::defaults(created_at),
        device: None,
        created_at,
    }
}

async fn create_user(store: &PgStore, email: &str, created_at: OffsetDateTime) -> UserId {
    create(store, record(email, created_at)).await.expect("create a user").profile.user.id
}

fn registration(token: &str, platform: Platform, active: bool) -> DeviceRegistration {
    DeviceRegistration { token: PushToken::parse(token).unwrap(), platform, active }
}

fn selector(raw: &str) -> DeviceSelector {
    DeviceSelector::parse(raw).expect("a valid selector")
}

fn quiet_hours(start: &str, end: &str) -> QuietHours {
    QuietHours::new(ClockTime::parse(start).unwrap(), ClockTime::parse(end).unwrap()).unwrap()
}

fn tokens(devices: &[domain::device::Device]) -> Vec<&str> {
    devices.iter().map(|device| device.token.as_str()).collect()
}

// ---------------------------------------------------------------------------------------
// Users: create and find
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn create_stores_the_user_preferences_and_initial_device_and_find_profile_returns_them() {
    let (db, store) = setup().await;
    let mut new_user = record("john@example.com", at(0));
    new_user.phone = Some(PhoneNumber::parse("+2348012345678").unwrap());
    new_user.preferences = Preferences {
        email: true,
        push: false,
        quiet_hours: Some(quiet_hours("22:00", "07:00")),
        timezone: TimeZoneName::parse("Africa/Lagos").unwrap(),
        updated_at: at(0),
    };
    new_user.device = Some(registration("fcm-token-1", Platform::Unknown, true));
    let id = new_user.id;
    let expected_preferences = new_user.preferences.clone();

    let created = create(&store, new_user).await.expect("create").profile;

    assert_eq!(created.user.id, id);
    assert_eq!(created.user.name.as_str(), "John Doe");
    assert_eq!(created.user.email.as_str(), "john@example.com");
    assert_eq!(created.user.phone.as_ref().map(PhoneNumber::as_str), Some("+2348012345678"));
    assert_eq!((created.user.created_at, created.user.updated_at), (at(0), at(0)));
    assert_eq!(created.preferences, expected_preferences);
    assert_eq!(created.devices.len(), 1);
    let device = &created.devices[0];
    assert_eq!((device.user_id, device.token.as_str(), device.platform), (id, "fcm-token-1", Platform::Unknown));
    assert!(device.active);
    assert_eq!((device.created_at, device.updated_at, device.last_seen_at), (at(0), at(0), at(0)));

    let found = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(found, created);
    assert_eq!(found.push_token().map(PushToken::as_str), Some("fcm-token-1"));

    assert_eq!(count(&db, "SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM notification_preferences").await, 1);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 1);
    let stored_hash = format!("SELECT count(*) AS count FROM users WHERE password_hash = '{PASSWORD_HASH}'");
    assert_eq!(count(&db, &stored_hash).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_without_a_device_stores_default_preferences_and_no_device() {
    let (db, store) = setup().await;
    let id = create_user(&store, "jane@example.com", at(0)).await;

    let profile = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(profile.preferences, Preferences::defaults(at(0)));
    assert!(profile.devices.is_empty());
    assert_eq!(profile.user.phone, None);
    assert_eq!(store.find_preferences(id).await.expect("find preferences"), Some(Preferences::defaults(at(0))));
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_with_a_registered_email_is_email_taken_and_writes_nothing() {
    let (db, store) = setup().await;
    create_user(&store, "john@example.com", at(0)).await;

    let mut duplicate = record("john@example.com", at(1));
    duplicate.device = Some(registration("token-of-the-duplicate", Platform::Unknown, true));
    let result = create(&store, duplicate).await;

    assert!(matches!(result, Err(RepositoryError::EmailTaken)), "{result:?}");
    assert_eq!(count(&db, "SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM notification_preferences").await, 1);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_with_an_email_stored_in_another_case_is_email_taken() {
    let (db, store) = setup().await;
    // Written around the service, which always lower-cases: only the index can catch it.
    execute(
        &db,
        "INSERT INTO users (id, name, email, password_hash, created_at, updated_at) \
         VALUES (gen_random_uuid(), 'John', 'JOHN@Example.com', 'x', now(), now())",
    )
    .await;

    let result = create(&store, record("john@example.com", at(0))).await;

    assert!(matches!(result, Err(RepositoryError::EmailTaken)), "{result:?}");
    assert_eq!(count(&db, "SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM notification_preferences").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_writes_nothing_when_a_later_insert_of_its_transaction_fails() {
    let (db, store) = setup().await;
    execute(
        &db,
        "CREATE FUNCTION reject_device() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'devices rejected by the test'; END $$; \
         CREATE TRIGGER reject_device BEFORE INSERT ON devices FOR EACH ROW EXECUTE FUNCTION reject_device();",
    )
    .await;
    let mut new_user = record("john@example.com", at(0));
    new_user.device = Some(registration("token", Platform::Unknown, true));

    let result = create(&store, new_user).await;

    assert!(matches!(result, Err(RepositoryError::Unexpected(_))), "{result:?}");
    assert_eq!(count(&db, "SELECT count(*) AS count FROM users").await, 0);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM notification_preferences").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_with_a_push_token_held_by_another_user_moves_the_token() {
    let (db, store) = setup().await;
    let mut first = record("first@example.com", at(0));
    first.device = Some(registration("shared-token", Platform::Unknown, true));
    let first_id = first.id;
    let first_created = create(&store, first).await.expect("create the first user");
    assert_eq!(first_created.device_moved_from, None);
    let first_device = first_created.profile.devices[0].clone();

    let mut second = record("second@example.com", at(5));
    second.device = Some(registration("shared-token", Platform::Unknown, true));
    let second_id = second.id;
    let second_created = create(&store, second).await.expect("create the second user");
    assert_eq!(second_created.device_moved_from, Some(first_id));
    let second_profile = second_created.profile;

    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 1);
    let moved = &second_profile.devices[0];
    assert_eq!((moved.id, moved.user_id), (first_device.id, second_id));
    assert_eq!((moved.created_at, moved.last_seen_at), (at(0), at(5)));
    let first_profile = store.find_profile(first_id).await.expect("find").expect("the first user exists");
    assert!(first_profile.devices.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn find_profile_of_an_unknown_id_is_none() {
    let (_db, store) = setup().await;
    create_user(&store, "john@example.com", at(0)).await;

    assert_eq!(store.find_profile(UserId::generate()).await.expect("find"), None);
    assert_eq!(store.find_preferences(UserId::generate()).await.expect("find preferences"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn exists_tells_stored_users_from_unknown_ids() {
    let (_db, store) = setup().await;
    let id = create_user(&store, "john@example.com", at(0)).await;

    assert!(store.exists(id).await.expect("exists"));
    assert!(!store.exists(UserId::generate()).await.expect("exists"));
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_come_active_first_then_most_recently_seen_first() {
    let (_db, store) = setup().await;
    let id = create_user(&store, "john@example.com", at(0)).await;
    for (token, active, seen) in
        [("active-old", true, 1), ("inactive-new", false, 5), ("active-new", true, 3), ("inactive-old", false, 2)]
    {
        upsert(&store, id, registration(token, Platform::Android, active), at(seen)).await.expect("upsert");
    }
    let expected = ["active-new", "active-old", "inactive-new", "inactive-old"];

    let profile = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(tokens(&profile.devices), expected);
    assert_eq!(profile.push_token().map(PushToken::as_str), Some("active-new"));
    let listed = store.list(id).await.expect("list").expect("the user exists");
    assert_eq!(tokens(&listed), expected);
    let page = store.list_profiles(PageRequest::new(1, 10).unwrap()).await.expect("list profiles");
    assert_eq!(tokens(&page.items[0].devices), expected);
}

// ---------------------------------------------------------------------------------------
// Users: list
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn list_profiles_pages_by_registration_time_and_reports_the_total() {
    let (_db, store) = setup().await;
    let empty = store.list_profiles(PageRequest::new(1, 10).unwrap()).await.expect("list");
    assert!(empty.items.is_empty());
    assert_eq!(empty.total, 0);

    // Inserted out of order: the listing follows `created_at`, not insertion order.
    for minute in [4, 0, 3, 1, 2] {
        create_user(&store, &format!("user{minute}@example.com"), at(minute)).await;
    }
    let emails = |page: &domain::user::Page<domain::user::UserProfile>| -> Vec<String> {
        page.items.iter().map(|profile| profile.user.email.as_str().to_owned()).collect()
    };

    let first = store.list_profiles(PageRequest::new(1, 2).unwrap()).await.expect("page 1");
    assert_eq!(emails(&first), ["user0@example.com", "user1@example.com"]);
    assert_eq!(first.total, 5);
    let second = store.list_profiles(PageRequest::new(2, 2).unwrap()).await.expect("page 2");
    assert_eq!(emails(&second), ["user2@example.com", "user3@example.com"]);
    assert_eq!(second.total, 5);
    let last = store.list_profiles(PageRequest::new(3, 2).unwrap()).await.expect("page 3");
    assert_eq!(emails(&last), ["user4@example.com"]);
    assert_eq!(last.total, 5);
    let beyond = store.list_profiles(PageRequest::new(4, 2).unwrap()).await.expect("page 4");
    assert!(beyond.items.is_empty());
    assert_eq!(beyond.total, 5);
    let far_beyond = store.list_profiles(PageRequest::new(u32::MAX, 100).unwrap()).await.expect("last page");
    assert!(far_beyond.items.is_empty());
    assert_eq!(far_beyond.total, 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_profiles_attaches_each_device_to_its_owner() {
    let (_db, store) = setup().await;
    let alice = create_user(&store, "alice@example.com", at(0)).await;
    let bob = create_user(&store, "bob@example.com", at(1)).await;
    let carol = create_user(&store, "carol@example.com", at(2)).await;
    upsert(&store, alice, registration("alice-phone", Platform::Ios, true), at(3)).await.expect("upsert");
    upsert(&store, carol, registration("carol-browser", Platform::Web, true), at(4)).await.expect("upsert");
    upsert(&store, alice, registration("alice-tablet", Platform::Android, true), at(5)).await.expect("upsert");

    let page = store.list_profiles(PageRequest::new(1, 10).unwrap()).await.expect("list");

    assert_eq!(page.total, 3);
    let ids: Vec<UserId> = page.items.iter().map(|profile| profile.user.id).collect();
    assert_eq!(ids, [alice, bob, carol]);
    assert_eq!(tokens(&page.items[0].devices), ["alice-tablet", "alice-phone"]);
    assert!(page.items[1].devices.is_empty());
    assert_eq!(tokens(&page.items[2].devices), ["carol-browser"]);
    for profile in &page.items {
        assert!(profile.devices.iter().all(|device| device.user_id == profile.user.id));
    }
}

// ---------------------------------------------------------------------------------------
// Users: update contact, delete
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn update_contact_changes_only_the_given_fields() {
    let (_db, store) = setup().await;
    let mut new_user = record("john@example.com", at(0));
    new_user.phone = Some(PhoneNumber::parse("+2348012345678").unwrap());
    let id = new_user.id;
    create(&store, new_user).await.expect("create");

    let renamed = ContactUpdate { name: Some(UserName::parse("Johnny").unwrap()), ..ContactUpdate::default() };
    let user = store.update_contact(id, renamed, at(1)).await.expect("update").expect("the user exists");
    assert_eq!(user.name.as_str(), "Johnny");
    assert_eq!(user.email.as_str(), "john@example.com");
    assert_eq!(user.phone.as_ref().map(PhoneNumber::as_str), Some("+2348012345678"));
    assert_eq!((user.created_at, user.updated_at), (at(0), at(1)));

    let cleared = ContactUpdate { phone: Some(None), ..ContactUpdate::default() };
    let user = store.update_contact(id, cleared, at(2)).await.expect("update").expect("the user exists");
    assert_eq!(user.phone, None);
    assert_eq!(user.name.as_str(), "Johnny");

    let moved = ContactUpdate {
        email: Some(EmailAddress::parse("johnny@example.com").unwrap()),
        phone: Some(Some(PhoneNumber::parse("+15551234567").unwrap())),
        ..ContactUpdate::default()
    };
    let user = store.update_contact(id, moved, at(3)).await.expect("update").expect("the user exists");
    assert_eq!(user.email.as_str(), "johnny@example.com");
    assert_eq!(user.phone.as_ref().map(PhoneNumber::as_str), Some("+15551234567"));
    assert_eq!(user.name.as_str(), "Johnny");
    assert_eq!(user.updated_at, at(3));

    let stored = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(stored.user, user);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_contact_to_another_users_email_is_email_taken_and_changes_nothing() {
    let (db, store) = setup().await;
    create_user(&store, "taken@example.com", at(0)).await;
    let id = create_user(&store, "john@example.com", at(1)).await;
    execute(
        &db,
        "INSERT INTO users (id, name, email, password_hash, created_at, updated_at) \
         VALUES (gen_random_uuid(), 'Upper', 'UPPER@Example.com', 'x', now(), now())",
    )
    .await;

    for email in ["taken@example.com", "upper@example.com"] {
        let update = ContactUpdate {
            name: Some(UserName::parse("Someone Else").unwrap()),
            email: Some(EmailAddress::parse(email).unwrap()),
            ..ContactUpdate::default()
        };
        let result = store.update_contact(id, update, at(2)).await;
        assert!(matches!(result, Err(RepositoryError::EmailTaken)), "{email}: {result:?}");
    }
    let stored = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(stored.user.email.as_str(), "john@example.com");
    assert_eq!(stored.user.name.as_str(), "John Doe");
    assert_eq!(stored.user.updated_at, at(1));

    // A user's own address is not "taken".
    let own =
        ContactUpdate { email: Some(EmailAddress::parse("john@example.com").unwrap()), ..ContactUpdate::default() };
    assert!(store.update_contact(id, own, at(3)).await.expect("update").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn update_contact_of_an_unknown_id_is_none() {
    let (db, store) = setup().await;
    create_user(&store, "john@example.com", at(0)).await;
    let update = ContactUpdate { name: Some(UserName::parse("Nobody").unwrap()), ..ContactUpdate::default() };

    assert_eq!(store.update_contact(UserId::generate(), update, at(1)).await.expect("update"), None);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM users WHERE name = 'Nobody'").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_removes_the_user_with_its_preferences_and_devices() {
    let (db, store) = setup().await;
    let doomed = create_user(&store, "doomed@example.com", at(0)).await;
    let kept = create_user(&store, "kept@example.com", at(1)).await;
    upsert(&store, doomed, registration("doomed-1", Platform::Ios, true), at(2)).await.expect("upsert");
    upsert(&store, doomed, registration("doomed-2", Platform::Web, false), at(3)).await.expect("upsert");
    upsert(&store, kept, registration("kept-1", Platform::Android, true), at(4)).await.expect("upsert");

    assert!(UserRepository::delete(&store, doomed).await.expect("delete"));

    assert_eq!(count(&db, "SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM notification_preferences").await, 1);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 1);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices WHERE token = 'kept-1'").await, 1);
    assert_eq!(store.find_profile(doomed).await.expect("find"), None);
    assert!(store.find_profile(kept).await.expect("find").is_some());

    assert!(!UserRepository::delete(&store, doomed).await.expect("delete again"));
    assert!(!UserRepository::delete(&store, UserId::generate()).await.expect("delete unknown"));
    assert_eq!(count(&db, "SELECT count(*) AS count FROM users").await, 1);
}

// ---------------------------------------------------------------------------------------
// Preferences
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn update_preferences_changes_only_the_given_fields() {
    let (_db, store) = setup().await;
    let id = create_user(&store, "john@example.com", at(0)).await;

    let push_off = PreferencesUpdate { push: Some(false), ..PreferencesUpdate::default() };
    let preferences = store.update_preferences(id, push_off, at(1)).await.expect("update").expect("exists");
    assert_eq!(
        preferences,
        Preferences { push: false, updated_at: at(1), ..Preferences::defaults(at(0)) },
        "only push and updated_at change"
    );

    let night = PreferencesUpdate {
        quiet_hours: Some(Some(quiet_hours("22:30", "06:45"))),
        timezone: Some(TimeZoneName::parse("Africa/Lagos").unwrap()),
        ..PreferencesUpdate::default()
    };
    let preferences = store.update_preferences(id, night, at(2)).await.expect("update").expect("exists");
    assert!(preferences.email);
    assert!(!preferences.push, "an omitted field keeps its stored value");
    assert_eq!(preferences.quiet_hours, Some(quiet_hours("22:30", "06:45")));
    assert_eq!(preferences.timezone.as_str(), "Africa/Lagos");
    assert_eq!(preferences.updated_at, at(2));

    let cleared = PreferencesUpdate { quiet_hours: Some(None), ..PreferencesUpdate::default() };
    let preferences = store.update_preferences(id, cleared, at(3)).await.expect("update").expect("exists");
    assert_eq!(preferences.quiet_hours, None);
    assert_eq!(preferences.timezone.as_str(), "Africa/Lagos");
    assert!(!preferences.push);

    assert_eq!(store.find_preferences(id).await.expect("find"), Some(preferences.clone()));
    let profile = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(profile.preferences, preferences);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_preferences_of_an_unknown_id_is_none() {
    let (db, store) = setup().await;
    create_user(&store, "john@example.com", at(0)).await;
    let update = PreferencesUpdate { email: Some(false), ..PreferencesUpdate::default() };

    assert_eq!(store.update_preferences(UserId::generate(), update, at(1)).await.expect("update"), None);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM notification_preferences WHERE NOT email_enabled").await, 0);
}

// ---------------------------------------------------------------------------------------
// Devices: upsert
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn upsert_of_a_new_token_creates_a_device() {
    let (db, store) = setup().await;
    let id = create_user(&store, "john@example.com", at(0)).await;

    let registered = upsert(&store, id, registration("new-token", Platform::Ios, false), at(1)).await.expect("upsert");

    assert!(registered.created);
    assert_eq!(registered.previous_owner, None);
    let device = &registered.device;
    assert_eq!((device.user_id, device.token.as_str(), device.platform), (id, "new-token", Platform::Ios));
    assert!(!device.active);
    assert_eq!((device.created_at, device.updated_at, device.last_seen_at), (at(1), at(1), at(1)));
    assert_eq!(store.list(id).await.expect("list"), Some(vec![registered.device.clone()]));
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_of_a_known_token_for_the_same_user_refreshes_the_device() {
    let (db, store) = setup().await;
    let id = create_user(&store, "john@example.com", at(0)).await;
    let first = upsert(&store, id, registration("token", Platform::Web, true), at(1)).await.expect("upsert");

    let again = upsert(&store, id, registration("token", Platform::Android, false), at(7)).await.expect("upsert again");

    assert!(!again.created);
    assert_eq!(again.previous_owner, None, "the token did not change hands");
    assert_eq!(again.device.id, first.device.id);
    assert_eq!(again.device.user_id, id);
    assert_eq!(again.device.platform, Platform::Android);
    assert!(!again.device.active);
    assert_eq!(again.device.created_at, at(1));
    assert_eq!(again.device.last_seen_at, at(7));
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_of_a_token_held_by_another_user_moves_it_and_names_the_previous_owner() {
    let (db, store) = setup().await;
    let first = create_user(&store, "first@example.com", at(0)).await;
    let second = create_user(&store, "second@example.com", at(1)).await;
    let original = upsert(&store, first, registration("token", Platform::Ios, true), at(2)).await.expect("upsert");

    let moved = upsert(&store, second, registration("token", Platform::Ios, true), at(3)).await.expect("move");

    assert!(!moved.created);
    assert_eq!(moved.previous_owner, Some(first));
    assert_eq!(moved.device.id, original.device.id);
    assert_eq!(moved.device.user_id, second);
    assert_eq!(moved.device.last_seen_at, at(3));
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 1);
    assert_eq!(store.list(first).await.expect("list"), Some(Vec::new()));
    assert_eq!(store.list(second).await.expect("list"), Some(vec![moved.device.clone()]));

    let back = upsert(&store, first, registration("token", Platform::Ios, true), at(4)).await.expect("move back");
    assert_eq!(back.previous_owner, Some(second));
    assert_eq!(back.device.user_id, first);
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_for_an_unknown_user_is_user_not_found() {
    let (db, store) = setup().await;
    create_user(&store, "john@example.com", at(0)).await;

    let result = upsert(&store, UserId::generate(), registration("token", Platform::Web, true), at(1)).await;

    assert!(matches!(result, Err(RepositoryError::UserNotFound)), "{result:?}");
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_accepts_a_token_of_the_maximum_length() {
    let (db, store) = setup().await;
    let first = create_user(&store, "first@example.com", at(0)).await;
    let second = create_user(&store, "second@example.com", at(1)).await;
    // Far above what a B-tree entry holds (~2.7 kB): uniqueness must come from the digest.
    let token = format!("https://push.example.com/{}", "é".repeat(PushToken::MAX_LENGTH - 25));
    assert_eq!(token.chars().count(), PushToken::MAX_LENGTH);

    let created = upsert(&store, first, registration(&token, Platform::Web, true), at(2)).await.expect("upsert");
    assert!(created.created);
    assert_eq!(created.device.token.as_str(), token);
    let moved = upsert(&store, second, registration(&token, Platform::Web, true), at(3)).await.expect("move");
    assert!(!moved.created);
    assert_eq!(moved.previous_owner, Some(first));
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 1);

    let device = store.set_active(second, &selector(&token), false, at(4)).await.expect("set active");
    assert_eq!(device.map(|device| device.id), Some(created.device.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_upserts_of_one_token_leave_one_row_and_report_one_creation() {
    const TASKS: i64 = 20;
    let (db, store) = setup().await;
    let users =
        [create_user(&store, "first@example.com", at(0)).await, create_user(&store, "second@example.com", at(1)).await];
    let barrier = Arc::new(Barrier::new(TASKS as usize));

    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            let barrier = Arc::clone(&barrier);
            let user = users[(task % 2) as usize];
            tokio::spawn(async move {
                barrier.wait().await;
                upsert(&store, user, registration("contended-token", Platform::Android, true), at(10 + task)).await
            })
        })
        .collect();
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.expect("the task ran").expect("every upsert succeeds"));
    }

    assert_eq!(results.iter().filter(|registered| registered.created).count(), 1);
    let id = results[0].device.id;
    assert!(results.iter().all(|registered| registered.device.id == id), "all upserts hit one row");
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 1);
    let owners: usize = [
        store.list(users[0]).await.expect("list").expect("exists").len(),
        store.list(users[1]).await.expect("list").expect("exists").len(),
    ]
    .iter()
    .sum();
    assert_eq!(owners, 1);
}

// ---------------------------------------------------------------------------------------
// Devices: set_active, delete, list
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn set_active_finds_a_device_by_id_or_by_token() {
    let (_db, store) = setup().await;
    let id = create_user(&store, "john@example.com", at(0)).await;
    let device =
        upsert(&store, id, registration("plain-token", Platform::Ios, true), at(1)).await.expect("upsert").device;
    let other =
        upsert(&store, id, registration("other-token", Platform::Ios, true), at(1)).await.expect("upsert").device;

    let by_id = store.set_active(id, &selector(&device.id.to_string()), false, at(2)).await.expect("by id");
    let by_id = by_id.expect("found by id");
    assert_eq!(by_id.id, device.id);
    assert!(!by_id.active);
    assert_eq!(by_id.updated_at, at(2));
    assert_eq!(by_id.last_seen_at, at(1), "a state change is not a sighting");

    let by_token = store.set_active(id, &selector("plain-token"), true, at(3)).await.expect("by token");
    let by_token = by_token.expect("found by token");
    assert_eq!(by_token.id, device.id);
    assert!(by_token.active);
    assert_eq!(by_token.updated_at, at(3));

    let untouched = store.list(id).await.expect("list").expect("exists");
    let untouched = untouched.iter().find(|listed| listed.id == other.id).expect("the other device");
    assert_eq!(untouched, &other);

    let unknown = store.set_active(id, &selector("no-such-token"), false, at(4)).await.expect("unknown");
    assert_eq!(unknown, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn set_active_finds_a_web_push_token_whose_double_slashes_were_merged() {
    let (_db, store) = setup().await;
    let id = create_user(&store, "john@example.com", at(0)).await;
    let endpoint = "https://push.example.com//wp/abc:DEF_123";
    let device = upsert(&store, id, registration(endpoint, Platform::Web, true), at(1)).await.expect("upsert").device;

    let merged = store.set_active(id, &selector("https:/push.example.com/wp/abc:DEF_123"), false, at(2)).await;
    let merged = merged.expect("set active").expect("found by the merged token");

    assert_eq!(merged.id, device.id);
    assert_eq!(merged.token.as_str(), endpoint, "the stored token keeps its slashes");
    assert!(!merged.active);
}

#[tokio::test(flavor = "multi_thread")]
async fn set_active_to_the_current_state_leaves_updated_at_unchanged() {
    let (_db, store) = setup().await;
    let id = create_user(&store, "john@example.com", at(0)).await;
    upsert(&store, id, registration("token", Platform::Android, true), at(1)).await.expect("upsert");

    let still_active = store.set_active(id, &selector("token"), true, at(2)).await.expect("set").expect("found");
    assert!(still_active.active);
    assert_eq!(still_active.updated_at, at(1));

    let deactivated = store.set_active(id, &selector("token"), false, at(3)).await.expect("set").expect("found");
    assert_eq!(deactivated.updated_at, at(3));
    let again = store.set_active(id, &selector("token"), false, at(4)).await.expect("set").expect("found");
    assert!(!again.active);
    assert_eq!(again.updated_at, at(3));
    assert_eq!(store.list(id).await.expect("list").expect("exists"), vec![again]);
}

#[tokio::test(flavor = "multi_thread")]
async fn set_active_on_another_users_device_is_none_and_changes_nothing() {
    let (_db, store) = setup().await;
    let owner = create_user(&store, "owner@example.com", at(0)).await;
    let intruder = create_user(&store, "intruder@example.com", at(1)).await;
    let device = upsert(&store, owner, registration("token", Platform::Ios, true), at(2)).await.expect("upsert").device;

    let by_token = store.set_active(intruder, &selector("token"), false, at(3)).await.expect("by token");
    let by_id = store.set_active(intruder, &selector(&device.id.to_string()), false, at(3)).await.expect("by id");
    let unknown_user = store.set_active(UserId::generate(), &selector("token"), false, at(3)).await.expect("unknown");

    assert_eq!((by_token, by_id, unknown_user), (None, None, None));
    assert_eq!(store.list(owner).await.expect("list").expect("exists"), vec![device]);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_device_removes_only_the_named_device_of_that_user() {
    let (db, store) = setup().await;
    let owner = create_user(&store, "owner@example.com", at(0)).await;
    let other = create_user(&store, "other@example.com", at(1)).await;
    upsert(&store, owner, registration("by-token", Platform::Ios, true), at(2)).await.expect("upsert");
    let by_id = upsert(&store, owner, registration("by-id", Platform::Ios, true), at(3)).await.expect("upsert").device;
    upsert(&store, owner, registration("https://push.example.com//wp/x", Platform::Web, true), at(4))
        .await
        .expect("upsert");
    let kept =
        upsert(&store, owner, registration("kept", Platform::Android, true), at(5)).await.expect("upsert").device;

    assert!(!DeviceRepository::delete(&store, other, &selector("by-token")).await.expect("delete as another user"));
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 4);

    assert!(DeviceRepository::delete(&store, owner, &selector("by-token")).await.expect("delete by token"));
    assert!(DeviceRepository::delete(&store, owner, &selector(&by_id.id.to_string())).await.expect("delete by id"));
    assert!(DeviceRepository::delete(&store, owner, &selector("https:/push.example.com/wp/x")).await.expect("merged"));
    assert!(!DeviceRepository::delete(&store, owner, &selector("by-token")).await.expect("delete again"));

    assert_eq!(store.list(owner).await.expect("list"), Some(vec![kept]));
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn device_list_is_none_for_an_unknown_user_and_empty_for_a_user_without_devices() {
    let (_db, store) = setup().await;
    let id = create_user(&store, "john@example.com", at(0)).await;

    assert_eq!(store.list(UserId::generate()).await.expect("list unknown"), None);
    assert_eq!(store.list(id).await.expect("list"), Some(Vec::new()));
}

// ---------------------------------------------------------------------------------------
// Migrations
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn migrations_revert_completely_and_apply_again() {
    const TABLES: &str = "SELECT count(*) AS count FROM pg_tables WHERE schemaname = 'public' \
                          AND tablename IN ('users', 'notification_preferences', 'devices')";
    const DIGEST_FUNCTION: &str = "SELECT count(*) AS count FROM pg_proc WHERE proname = 'device_token_digest'";
    let embedded = MigrationSource::<Pg>::migrations(&crate::migrations::MIGRATIONS).expect("embedded").len();
    assert!(embedded > 0);
    let db = TestDatabase::create().await.expect("create the test database");
    assert_eq!(count(&db, TABLES).await, 3);

    let reverted = crate::migrations::revert_all(db.pool()).await.expect("revert every migration");
    assert_eq!(reverted, embedded);
    assert_eq!(count(&db, TABLES).await, 0);
    assert_eq!(count(&db, DIGEST_FUNCTION).await, 0);

    let applied = crate::migrations::run_pending(db.pool()).await.expect("apply every migration");
    assert_eq!(applied, reverted);
    assert_eq!(count(&db, TABLES).await, 3);
    assert_eq!(count(&db, DIGEST_FUNCTION).await, 1);
    assert_eq!(crate::migrations::run_pending(db.pool()).await.expect("nothing pending"), 0);

    let store = PgStore::new(db.pool().clone());
    let mut new_user = record("john@example.com", at(0));
    new_user.device = Some(registration("token", Platform::Unknown, true));
    let profile = create(&store, new_user).await.expect("the schema works again").profile;
    assert_eq!(profile.devices.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Idempotency records
// ---------------------------------------------------------------------------------------

fn idempotent_device_write(
    key: &str,
    fingerprint: u8,
    expires_at: OffsetDateTime,
) -> IdempotentWrite<RegisteredDevice> {
    IdempotentWrite {
        request: IdempotentRequest {
            caller: "gateway".into(),
            key: IdempotencyKey::parse(key).unwrap(),
            fingerprint: vec![fingerprint],
            expires_at,
        },
        render: Box::new(|registered: &RegisteredDevice| StoredResponse {
            status: if registered.created { 201 } else { 200 },
            body: registered.device.id.to_string().into_bytes(),
            location: Some("/somewhere".into()),
        }),
    }
}

fn far_future() -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::hours(1)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotent_write_stores_its_answer_and_a_retry_replays_it_without_writing() {
    let (db, store) = setup().await;
    let user = create_user(&store, "idem@example.com", at(0)).await;
    let first = DeviceRepository::upsert(
        &store,
        user,
        registration("idem-token", Platform::Ios, true),
        at(1),
        Some(idempotent_device_write("k", 1, far_future())),
    )
    .await
    .expect("first write");
    let Idempotent::Executed(registered) = first else { panic!("the first write executes") };
    assert!(registered.created);

    let retry = DeviceRepository::upsert(
        &store,
        user,
        registration("idem-token", Platform::Android, false),
        at(2),
        Some(idempotent_device_write("k", 1, far_future())),
    )
    .await
    .expect("retry");
    let expected = StoredResponse {
        status: 201,
        body: registered.device.id.to_string().into_bytes(),
        location: Some("/somewhere".into()),
    };
    assert_eq!(retry, Idempotent::Replayed(expected));
    // The retry changed nothing: the platform is still the first one.
    let devices = store.list(user).await.expect("list").expect("the user exists");
    assert_eq!(devices[0].platform, Platform::Ios);

    let reused = DeviceRepository::upsert(
        &store,
        user,
        registration("idem-token", Platform::Ios, true),
        at(3),
        Some(idempotent_device_write("k", 2, far_future())),
    )
    .await;
    assert!(matches!(reused, Err(RepositoryError::Idempotency(IdempotencyConflict::KeyReused))));
    assert_eq!(count(&db, "SELECT count(*) AS count FROM idempotency_records").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_held_by_a_running_transaction_is_in_flight() {
    let (db, store) = setup().await;
    let user = create_user(&store, "busy@example.com", at(0)).await;
    let mut holder = db.pool().get().await.expect("a connection");
    holder
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('gateway' || chr(31) || 'busy', 0));")
        .await
        .expect("hold the key's lock");
    let result = DeviceRepository::upsert(
        &store,
        user,
        registration("busy-token", Platform::Web, true),
        at(1),
        Some(idempotent_device_write("busy", 1, far_future())),
    )
    .await;
    assert!(matches!(result, Err(RepositoryError::Idempotency(IdempotencyConflict::InFlight))), "{result:?}");
    holder.batch_execute("ROLLBACK").await.expect("release");
    assert_eq!(count(&db, "SELECT count(*) AS count FROM devices").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_record_no_longer_replays_and_is_purged() {
    let (db, store) = setup().await;
    let user = create_user(&store, "expired@example.com", at(0)).await;
    let past = OffsetDateTime::now_utc() - Duration::minutes(1);
    let first = DeviceRepository::upsert(
        &store,
        user,
        registration("old-token", Platform::Web, true),
        at(1),
        Some(idempotent_device_write("old", 1, past)),
    )
    .await
    .expect("first write");
    assert!(matches!(first, Idempotent::Executed(_)));
    let key = IdempotencyKey::parse("old").unwrap();
    assert_eq!(store.find_record("gateway", &key).await.expect("find"), None);

    // The same key runs again (the device is refreshed, not replayed) and its record is replaced.
    let again = DeviceRepository::upsert(
        &store,
        user,
        registration("old-token", Platform::Web, true),
        at(2),
        Some(idempotent_device_write("old", 1, far_future())),
    )
    .await
    .expect("second write");
    assert!(matches!(again, Idempotent::Executed(RegisteredDevice { created: false, .. })));
    assert!(store.find_record("gateway", &key).await.expect("find").is_some());

    DeviceRepository::upsert(
        &store,
        user,
        registration("other-token", Platform::Web, true),
        at(3),
        Some(idempotent_device_write("stale", 1, past)),
    )
    .await
    .expect("third write");
    assert_eq!(store.purge_expired_idempotency_records(100).await.expect("purge"), 1);
    assert_eq!(count(&db, "SELECT count(*) AS count FROM idempotency_records").await, 1);
}
