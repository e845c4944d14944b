//! The repository ports' contract test suite: what every store must do, written once and
//! run against each store (PostgreSQL and SQLite).
//!
//! Compiled with the `contract-tests` feature only (enable it from dev-dependencies). Each
//! case is a `pub async fn` taking a [`StoreFixture`]: a store on a fresh, migrated, empty
//! database of its own, plus the few things a case needs to do around the store (count
//! rows with SQL, so that assertions do not rely only on what the store reads back; make a
//! later insert fail). [`repository_contract_tests!`](crate::repository_contract_tests)
//! turns every case into a test, so that a case added here runs against every store.
//!
//! The SQL that cases run themselves is written to mean the same in both dialects
//! (`count(*)`, plain `INSERT`s with text literals for UUIDs and timestamps).
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test code: a failed setup fails the test")]

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use domain::cache::{InvalidationLedger, LedgerEntry};
use domain::device::{Device, DeviceRegistration, DeviceSelector, HeldToken, Platform, PushToken, RegisteredDevice};
use domain::idempotency::{
    IdempotencyConflict, IdempotencyKey, Idempotent, IdempotentRequest, IdempotentWrite, StoredResponse,
};
use domain::ports::{
    CreatedUser, DeviceRepository, IdempotencyRepository, NewUserRecord, RepositoryError, UserRepository,
};
use domain::preferences::{ClockTime, Preferences, PreferencesUpdate, QuietHours, TimeZoneName};
use domain::user::{
    ContactUpdate, EmailAddress, Page, PageRequest, PasswordHash, PhoneNumber, UserId, UserName, UserProfile,
};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use tokio::sync::Barrier;

/// Generates one `#[tokio::test(flavor = "multi_thread")]` per repository contract case, in
/// a module named `repository_contract` of the calling module. `$fixture` is evaluated in
/// each test, inside the runtime (so it may `.await`), with the calling module's items in
/// scope (`use super::*`); it must give a value implementing [`StoreFixture`] on a fresh
/// database. The calling crate needs `tokio` (with `macros` and `rt-multi-thread`).
///
/// ```ignore
/// adapters_sql_common::repository_contract_tests!(PgFixture::new().await);
/// ```
#[macro_export]
macro_rules! repository_contract_tests {
    ($fixture:expr) => {
        $crate::repository_contract_tests!(@cases $fixture;
            create_stores_the_user_preferences_and_initial_device_and_find_profile_returns_them,
            create_without_a_device_stores_default_preferences_and_no_device,
            create_with_a_registered_email_is_email_taken_and_writes_nothing,
            create_with_an_email_stored_in_another_case_is_email_taken,
            create_writes_nothing_when_a_later_insert_of_its_transaction_fails,
            create_with_a_push_token_held_by_another_user_moves_the_token,
            create_that_leaves_held_tokens_registers_the_user_without_one_another_user_holds,
            find_profile_of_an_unknown_id_is_none,
            find_profiles_loads_each_named_user_and_leaves_unknown_ids_out,
            exists_tells_stored_users_from_unknown_ids,
            devices_come_active_first_then_most_recently_seen_first,
            device_order_respects_sub_second_differences,
            list_profiles_pages_by_registration_time_and_reports_the_total,
            list_profiles_attaches_each_device_to_its_owner,
            update_contact_changes_only_the_given_fields,
            update_contact_to_another_users_email_is_email_taken_and_changes_nothing,
            update_contact_of_an_unknown_id_is_none,
            delete_removes_the_user_with_its_preferences_and_devices,
            update_preferences_changes_only_the_given_fields,
            update_preferences_of_an_unknown_id_is_none,
            concurrent_preference_updates_of_different_fields_all_survive,
            credentials_are_found_by_case_insensitive_email_and_by_id,
            replace_password_hash_replaces_the_hash_and_moves_the_token_version_only_when_revoking,
            replace_password_hash_never_overwrites_a_hash_changed_since_it_was_read,
            upsert_of_a_new_token_creates_a_device,
            upsert_of_a_known_token_for_the_same_user_refreshes_the_device,
            upsert_of_a_token_held_by_another_user_moves_it_and_names_the_previous_owner,
            upsert_for_an_unknown_user_is_user_not_found,
            upsert_accepts_a_token_of_the_maximum_length,
            concurrent_upserts_of_one_token_leave_one_row_and_report_one_creation,
            concurrent_registrations_of_different_users_all_succeed,
            concurrent_registrations_of_one_email_create_exactly_one_user,
            set_active_finds_a_device_by_id_or_by_token,
            set_active_finds_a_web_push_token_whose_double_slashes_were_merged,
            set_active_to_the_current_state_leaves_updated_at_unchanged,
            set_active_on_another_users_device_is_none_and_changes_nothing,
            delete_device_removes_only_the_named_device_of_that_user,
            device_list_is_none_for_an_unknown_user_and_empty_for_a_user_without_devices,
            an_idempotent_write_stores_its_answer_and_a_retry_replays_it_without_writing,
            an_idempotent_create_stores_its_answer_and_a_retry_replays_it_without_writing,
            concurrent_idempotent_writes_with_one_key_run_once,
            an_expired_record_no_longer_replays_and_is_purged,
            the_ledger_lists_each_recorded_user_once_oldest_recording_first,
            forgetting_a_recording_keeps_a_newer_recording_of_the_same_user,
            the_ledger_lists_at_most_the_limit_and_forgets_in_any_number,
        );
    };
    (@cases $fixture:expr; $($case:ident),+ $(,)?) => {
        mod repository_contract {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread")]
                async fn $case() {
                    let fixture = $fixture;
                    $crate::contract::$case(&fixture).await;
                }
            )+

            /// A case written in the suite but missing from the list above would never run.
            #[test]
            fn every_case_of_the_suite_runs() {
                $crate::contract::assert_every_case_is_listed(&[$(stringify!($case)),+]);
            }
        }
    };
}

/// The tables of the shared schema, as the migrations of both stores create them.
pub const TABLES: [&str; 5] =
    ["users", "notification_preferences", "devices", "idempotency_records", "cache_invalidation_ledger"];

/// The SQL diesel writes, for `$backend`, to select every column of each table of
/// [`TABLES`]; invoke it where the store's table modules are in scope. Read by
/// [`declared_columns`].
#[macro_export]
macro_rules! select_every_column {
    ($backend:ty) => {
        [
            $crate::select_every_column!(@one $backend, users),
            $crate::select_every_column!(@one $backend, notification_preferences),
            $crate::select_every_column!(@one $backend, devices),
            $crate::select_every_column!(@one $backend, idempotency_records),
            $crate::select_every_column!(@one $backend, cache_invalidation_ledger),
        ]
    };
    (@one $backend:ty, $table:ident) => {
        diesel::debug_query::<$backend, _>(&diesel::QueryDsl::select($table::table, $table::all_columns)).to_string()
    };
}

/// The `(table, column)` pairs the diesel schema declares, read from the statements of
/// [`select_every_column!`](crate::select_every_column) (either backend's quoting).
pub fn declared_columns(selects: &[String]) -> Vec<(String, String)> {
    selects
        .iter()
        .flat_map(|select| {
            let columns = select.trim_start_matches("SELECT ").split(" FROM ").next().unwrap_or_default();
            columns.split(", ").filter_map(|qualified| {
                let unquoted: String = qualified.chars().filter(|c| !matches!(c, '"' | '`')).collect();
                let (table, column) = unquoted.split_once('.')?;
                Some((table.to_owned(), column.to_owned()))
            })
        })
        .collect()
}

/// Fails naming every case of this file (a `pub async fn` taking a fixture) that `listed`
/// leaves out.
pub fn assert_every_case_is_listed(listed: &[&str]) {
    let unlisted: Vec<&str> = include_str!("contract.rs")
        .split("pub async fn ")
        .skip(1)
        .filter_map(|rest| {
            let (name, parameters) = rest.split_once('(')?;
            let parameters = parameters.split_once(')')?.0;
            parameters.contains("StoreFixture").then_some(name.trim())
        })
        .filter(|name| !listed.contains(name))
        .collect();
    assert!(unlisted.is_empty(), "cases missing from repository_contract_tests!: {unlisted:?}");
}

/// A store on a fresh, migrated, empty database, and what cases do around it. The
/// implementations panic on failure (they are test code).
#[async_trait]
pub trait StoreFixture: Send + Sync {
    /// The store under test.
    type Store: UserRepository + DeviceRepository + IdempotencyRepository + InvalidationLedger + Clone + 'static;

    /// The store.
    fn store(&self) -> &Self::Store;

    /// Runs a query that returns one row with one integer column named `count`.
    async fn count(&self, query: &str) -> i64;

    /// Runs SQL statements around the store.
    async fn execute(&self, sql: &str);

    /// Makes every later insert into `devices` fail (a trigger), so that a case can check
    /// that a failed statement rolls its whole transaction back.
    async fn reject_device_inserts(&self);

    /// The store's purge of expired idempotency records.
    async fn purge_expired_idempotency_records(&self, batch: i64) -> usize;
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

/// A fixed instant plus `minutes`.
fn at(minutes: i64) -> OffsetDateTime {
    datetime!(2026-11-25 09:00:00 UTC) + Duration::minutes(minutes)
}

/// An `INSERT` of a user written around the service (which always lower-cases emails), in
/// SQL that both dialects read the same way.
fn insert_user_around_the_service(name: &str, email: &str) -> String {
    format!(
        "INSERT INTO users (id, name, email, password_hash, created_at, updated_at) \
         VALUES ('{}', '{name}', '{email}', 'x', '2026-11-25 08:00:00+00:00', '2026-11-25 08:00:00+00:00')",
        uuid::Uuid::new_v4()
    )
}

/// Creates a user without an idempotency key.
async fn create(store: &impl UserRepository, record: NewUserRecord) -> Result<CreatedUser, RepositoryError> {
    match store.create(record, None).await? {
        Idempotent::Executed(created) => Ok(created),
        Idempotent::Replayed(_) => panic!("a write without a key is never replayed"),
    }
}

/// Registers a device without an idempotency key.
async fn upsert(
    store: &impl DeviceRepository,
    user: UserId,
    registration: DeviceRegistration,
    now: OffsetDateTime,
) -> Result<RegisteredDevice, RepositoryError> {
    match store.upsert(user, registration, now, None).await? {
        Idempotent::Executed(registered) => Ok(registered),
        Idempotent::Replayed(_) => panic!("a write without a key is never replayed"),
    }
}

/// A user to create with `email` at `created_at`: default preferences, no phone, no device.
pub fn record(email: &str, created_at: OffsetDateTime) -> NewUserRecord {
    NewUserRecord {
        id: UserId::generate(),
        name: UserName::parse("John Doe").unwrap(),
        email: EmailAddress::parse(email).unwrap(),
        phone: None,
        password_hash: PasswordHash::new(PASSWORD_HASH.to_owned()),
        preferences: Preferences::defaults(created_at),
        device: None,
        if_token_held: HeldToken::Move,
        created_at,
    }
}

async fn create_user(store: &impl UserRepository, email: &str, created_at: OffsetDateTime) -> UserId {
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

fn tokens(devices: &[Device]) -> Vec<&str> {
    devices.iter().map(|device| device.token.as_str()).collect()
}

/// How many tasks the concurrency cases run at once.
const TASKS: usize = 20;

/// Runs [`TASKS`] tasks made by `task` (given its number) at once: they start together
/// behind a barrier. Returns their results in task order.
async fn all_at_once<T, F>(task: impl Fn(usize) -> F) -> Vec<T>
where
    F: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let barrier = Arc::new(Barrier::new(TASKS));
    let handles: Vec<_> = (0..TASKS)
        .map(|number| {
            let barrier = Arc::clone(&barrier);
            let work = task(number);
            tokio::spawn(async move {
                barrier.wait().await;
                work.await
            })
        })
        .collect();
    let mut results = Vec::with_capacity(TASKS);
    for handle in handles {
        results.push(handle.await.expect("the task ran"));
    }
    results
}

fn emails(page: &Page<UserProfile>) -> Vec<String> {
    page.items.iter().map(|profile| profile.user.email.as_str().to_owned()).collect()
}

// ---------------------------------------------------------------------------------------
// Users: create and find
// ---------------------------------------------------------------------------------------

/// A user, its preferences and its initial device are stored together and read back as
/// one profile.
pub async fn create_stores_the_user_preferences_and_initial_device_and_find_profile_returns_them(
    fixture: &impl StoreFixture,
) {
    let store = fixture.store();
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

    let created = create(store, new_user).await.expect("create").profile;

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

    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    let stored_hash = format!("SELECT count(*) AS count FROM users WHERE password_hash = '{PASSWORD_HASH}'");
    assert_eq!(fixture.count(&stored_hash).await, 1);
}

/// Without a device, a user gets the preferences it was created with and no device.
pub async fn create_without_a_device_stores_default_preferences_and_no_device(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "jane@example.com", at(0)).await;

    let profile = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(profile.preferences, Preferences::defaults(at(0)));
    assert!(profile.devices.is_empty());
    assert_eq!(profile.user.phone, None);
    assert_eq!(store.find_preferences(id).await.expect("find preferences"), Some(Preferences::defaults(at(0))));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 0);
}

/// A taken email refuses the whole registration, device included.
pub async fn create_with_a_registered_email_is_email_taken_and_writes_nothing(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "john@example.com", at(0)).await;

    let mut duplicate = record("john@example.com", at(1));
    duplicate.device = Some(registration("token-of-the-duplicate", Platform::Unknown, true));
    let result = create(store, duplicate).await;

    assert!(matches!(result, Err(RepositoryError::EmailTaken)), "{result:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 0);
}

/// Emails compare case-insensitively in the store itself, not only in the domain.
pub async fn create_with_an_email_stored_in_another_case_is_email_taken(fixture: &impl StoreFixture) {
    let store = fixture.store();
    // Written around the service, which always lower-cases: only the store can catch it.
    fixture.execute(&insert_user_around_the_service("John", "JOHN@Example.com")).await;

    let result = create(store, record("john@example.com", at(0))).await;

    assert!(matches!(result, Err(RepositoryError::EmailTaken)), "{result:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 0);
}

/// A registration is one transaction: a failing device insert leaves no user behind.
pub async fn create_writes_nothing_when_a_later_insert_of_its_transaction_fails(fixture: &impl StoreFixture) {
    let store = fixture.store();
    fixture.reject_device_inserts().await;
    let mut new_user = record("john@example.com", at(0));
    new_user.device = Some(registration("token", Platform::Unknown, true));

    let result = create(store, new_user).await;

    assert!(matches!(result, Err(RepositoryError::Unexpected(_))), "{result:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 0);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 0);
}

/// A token given at registration moves from its previous owner, who is reported.
pub async fn create_with_a_push_token_held_by_another_user_moves_the_token(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let mut first = record("first@example.com", at(0));
    first.device = Some(registration("shared-token", Platform::Unknown, true));
    let first_id = first.id;
    let first_created = create(store, first).await.expect("create the first user");
    assert_eq!(first_created.device_moved_from, None);
    let first_device = first_created.profile.devices[0].clone();

    let mut second = record("second@example.com", at(5));
    second.device = Some(registration("shared-token", Platform::Unknown, true));
    let second_id = second.id;
    let second_created = create(store, second).await.expect("create the second user");
    assert_eq!(second_created.device_moved_from, Some(first_id));
    let second_profile = second_created.profile;

    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    let moved = &second_profile.devices[0];
    assert_eq!((moved.id, moved.user_id), (first_device.id, second_id));
    assert_eq!((moved.created_at, moved.last_seen_at), (at(0), at(5)));
    let first_profile = store.find_profile(first_id).await.expect("find").expect("the first user exists");
    assert!(first_profile.devices.is_empty());
}

/// A registration that may not take devices leaves a held token with its owner, reports it,
/// and still registers a token nobody holds.
pub async fn create_that_leaves_held_tokens_registers_the_user_without_one_another_user_holds(
    fixture: &impl StoreFixture,
) {
    let store = fixture.store();
    let mut owner = record("owner@example.com", at(0));
    owner.device = Some(registration("owned-token", Platform::Ios, true));
    let owner_id = owner.id;
    let owned = create(store, owner).await.expect("create the owner").profile.devices[0].clone();

    let mut thief = record("thief@example.com", at(5));
    thief.device = Some(registration("owned-token", Platform::Unknown, true));
    thief.if_token_held = HeldToken::Leave;
    let created = create(store, thief).await.expect("the user is registered");
    assert!(created.token_left_with_its_owner);
    assert_eq!((created.device_moved_from, created.profile.devices.len()), (None, 0));
    let owner_profile = store.find_profile(owner_id).await.expect("find").expect("the owner exists");
    assert_eq!(owner_profile.devices, vec![owned], "the owner's device is untouched");

    let mut newcomer = record("newcomer@example.com", at(6));
    newcomer.device = Some(registration("fresh-token", Platform::Unknown, true));
    newcomer.if_token_held = HeldToken::Leave;
    let created = create(store, newcomer).await.expect("the user is registered");
    assert!(!created.token_left_with_its_owner);
    assert_eq!(created.profile.devices[0].token.as_str(), "fresh-token");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 2);
}

/// Unknown ids have no profile and no preferences.
pub async fn find_profile_of_an_unknown_id_is_none(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "john@example.com", at(0)).await;

    assert_eq!(store.find_profile(UserId::generate()).await.expect("find"), None);
    assert_eq!(store.find_preferences(UserId::generate()).await.expect("find preferences"), None);
}

/// `find_profiles` returns the same profiles as `find_profile`, one per known id.
pub async fn find_profiles_loads_each_named_user_and_leaves_unknown_ids_out(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let alice = create_user(store, "alice@example.com", at(0)).await;
    let bob = create_user(store, "bob@example.com", at(1)).await;
    let carol = create_user(store, "carol@example.com", at(2)).await;
    upsert(store, alice, registration("alice-old", Platform::Ios, true), at(3)).await.expect("upsert");
    upsert(store, alice, registration("alice-new", Platform::Web, true), at(4)).await.expect("upsert");
    upsert(store, carol, registration("carol-phone", Platform::Android, true), at(5)).await.expect("upsert");

    let profiles = store.find_profiles(&[bob, UserId::generate(), alice]).await.expect("find profiles");

    let mut by_id: HashMap<UserId, UserProfile> =
        profiles.into_iter().map(|profile| (profile.user.id, profile)).collect();
    assert_eq!(by_id.len(), 2, "carol was not asked for and the unknown id has no profile");
    assert_eq!(by_id.remove(&alice), store.find_profile(alice).await.expect("find"));
    assert_eq!(by_id.remove(&bob), store.find_profile(bob).await.expect("find"));
    assert!(store.find_profiles(&[]).await.expect("no ids").is_empty());
}

/// `exists` answers for stored users only.
pub async fn exists_tells_stored_users_from_unknown_ids(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

    assert!(store.exists(id).await.expect("exists"));
    assert!(!store.exists(UserId::generate()).await.expect("exists"));
}

/// Every read of devices orders them active first, then most recently seen first.
pub async fn devices_come_active_first_then_most_recently_seen_first(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    for (token, active, seen) in
        [("active-old", true, 1), ("inactive-new", false, 5), ("active-new", true, 3), ("inactive-old", false, 2)]
    {
        upsert(store, id, registration(token, Platform::Android, active), at(seen)).await.expect("upsert");
    }
    let expected = ["active-new", "active-old", "inactive-new", "inactive-old"];

    let profile = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(tokens(&profile.devices), expected);
    assert_eq!(profile.push_token().map(PushToken::as_str), Some("active-new"));
    let listed = store.list(id).await.expect("list").expect("the user exists");
    assert_eq!(tokens(&listed), expected);
    let page = store.list_profiles(PageRequest::new(1, 10).unwrap()).await.expect("list profiles");
    assert_eq!(tokens(&page.items[0].devices), expected);
    let profiles = store.find_profiles(&[id]).await.expect("find profiles");
    assert_eq!(tokens(&profiles[0].devices), expected);
}

/// Sightings a fraction of a second apart still order correctly, whole seconds included
/// (a store that keeps timestamps as text must keep them comparable).
pub async fn device_order_respects_sub_second_differences(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let base = at(1);
    for (token, offset) in
        [("at-250ms", 250_000), ("at-0", 0), ("at-500ms", 500_000), ("at-1us", 1), ("at-1s", 1_000_000)]
    {
        let seen = base + Duration::microseconds(offset);
        upsert(store, id, registration(token, Platform::Web, true), seen).await.expect("upsert");
    }
    let expected = ["at-1s", "at-500ms", "at-250ms", "at-1us", "at-0"];

    let listed = store.list(id).await.expect("list").expect("the user exists");
    assert_eq!(tokens(&listed), expected);
    assert_eq!(listed[3].last_seen_at, base + Duration::microseconds(1), "microseconds are kept");
    let profile = store.find_profile(id).await.expect("find").expect("the user exists");
    assert_eq!(tokens(&profile.devices), expected);
}

// ---------------------------------------------------------------------------------------
// Users: list
// ---------------------------------------------------------------------------------------

/// Pages follow registration time and carry the total, also beyond the last page.
pub async fn list_profiles_pages_by_registration_time_and_reports_the_total(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let empty = store.list_profiles(PageRequest::new(1, 10).unwrap()).await.expect("list");
    assert!(empty.items.is_empty());
    assert_eq!(empty.total, 0);

    // Inserted out of order: the listing follows `created_at`, not insertion order.
    for minute in [4, 0, 3, 1, 2] {
        create_user(store, &format!("user{minute}@example.com"), at(minute)).await;
    }

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

/// Each listed profile carries its own devices and no one else's.
pub async fn list_profiles_attaches_each_device_to_its_owner(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let alice = create_user(store, "alice@example.com", at(0)).await;
    let bob = create_user(store, "bob@example.com", at(1)).await;
    let carol = create_user(store, "carol@example.com", at(2)).await;
    upsert(store, alice, registration("alice-phone", Platform::Ios, true), at(3)).await.expect("upsert");
    upsert(store, carol, registration("carol-browser", Platform::Web, true), at(4)).await.expect("upsert");
    upsert(store, alice, registration("alice-tablet", Platform::Android, true), at(5)).await.expect("upsert");

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

/// A contact change touches the named fields and `updated_at` only; a phone can be cleared.
pub async fn update_contact_changes_only_the_given_fields(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let mut new_user = record("john@example.com", at(0));
    new_user.phone = Some(PhoneNumber::parse("+2348012345678").unwrap());
    let id = new_user.id;
    create(store, new_user).await.expect("create");

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

/// Moving to another user's email (in any case) is refused and changes nothing; a user's
/// own email is not taken.
pub async fn update_contact_to_another_users_email_is_email_taken_and_changes_nothing(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "taken@example.com", at(0)).await;
    let id = create_user(store, "john@example.com", at(1)).await;
    fixture.execute(&insert_user_around_the_service("Upper", "UPPER@Example.com")).await;

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

    let own =
        ContactUpdate { email: Some(EmailAddress::parse("john@example.com").unwrap()), ..ContactUpdate::default() };
    assert!(store.update_contact(id, own, at(3)).await.expect("update").is_some());
}

/// Updating an unknown id is `None` and writes nothing.
pub async fn update_contact_of_an_unknown_id_is_none(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "john@example.com", at(0)).await;
    let update = ContactUpdate { name: Some(UserName::parse("Nobody").unwrap()), ..ContactUpdate::default() };

    assert_eq!(store.update_contact(UserId::generate(), update, at(1)).await.expect("update"), None);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users WHERE name = 'Nobody'").await, 0);
}

/// Deleting a user takes its preferences and devices along, and nothing else.
pub async fn delete_removes_the_user_with_its_preferences_and_devices(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let doomed = create_user(store, "doomed@example.com", at(0)).await;
    let kept = create_user(store, "kept@example.com", at(1)).await;
    upsert(store, doomed, registration("doomed-1", Platform::Ios, true), at(2)).await.expect("upsert");
    upsert(store, doomed, registration("doomed-2", Platform::Web, false), at(3)).await.expect("upsert");
    upsert(store, kept, registration("kept-1", Platform::Android, true), at(4)).await.expect("upsert");

    assert!(UserRepository::delete(store, doomed).await.expect("delete"));

    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices WHERE token = 'kept-1'").await, 1);
    assert_eq!(store.find_profile(doomed).await.expect("find"), None);
    assert!(store.find_profile(kept).await.expect("find").is_some());

    assert!(!UserRepository::delete(store, doomed).await.expect("delete again"));
    assert!(!UserRepository::delete(store, UserId::generate()).await.expect("delete unknown"));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
}

// ---------------------------------------------------------------------------------------
// Preferences
// ---------------------------------------------------------------------------------------

/// A partial preferences change keeps the omitted fields; quiet hours can be cleared.
pub async fn update_preferences_changes_only_the_given_fields(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

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

/// Updating the preferences of an unknown id is `None` and writes nothing.
pub async fn update_preferences_of_an_unknown_id_is_none(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "john@example.com", at(0)).await;
    let update = PreferencesUpdate { email: Some(false), ..PreferencesUpdate::default() };

    assert_eq!(store.update_preferences(UserId::generate(), update, at(1)).await.expect("update"), None);
    assert_eq!(
        fixture.count("SELECT count(*) AS count FROM notification_preferences WHERE NOT email_enabled").await,
        0
    );
}

/// Concurrent partial updates of different fields are all applied (no lost update).
pub async fn concurrent_preference_updates_of_different_fields_all_survive(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

    let results = all_at_once(|task| {
        let store = store.clone();
        let update = match task % 4 {
            0 => PreferencesUpdate { email: Some(false), ..PreferencesUpdate::default() },
            1 => PreferencesUpdate { push: Some(false), ..PreferencesUpdate::default() },
            2 => PreferencesUpdate { quiet_hours: Some(Some(quiet_hours("22:00", "07:00"))), ..Default::default() },
            _ => PreferencesUpdate { timezone: Some(TimeZoneName::parse("Asia/Tokyo").unwrap()), ..Default::default() },
        };
        async move { store.update_preferences(id, update, at(1)).await }
    })
    .await;
    for result in results {
        result.expect("every update succeeds").expect("the user exists");
    }

    let preferences = store.find_preferences(id).await.expect("find").expect("the user exists");
    assert!(!preferences.email && !preferences.push, "{preferences:?}");
    assert_eq!(preferences.quiet_hours, Some(quiet_hours("22:00", "07:00")));
    assert_eq!(preferences.timezone.as_str(), "Asia/Tokyo");
}

// ---------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------

/// Login finds an account by email in any stored case, and by id; unknown ones are `None`.
pub async fn credentials_are_found_by_case_insensitive_email_and_by_id(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    fixture.execute(&insert_user_around_the_service("Upper", "UPPER@Example.com")).await;

    let by_email = store.find_credentials(&EmailAddress::parse("john@example.com").unwrap()).await.expect("find");
    let by_email = by_email.expect("the account exists");
    assert_eq!((by_email.user_id, by_email.password_hash.as_str(), by_email.token_version), (id, PASSWORD_HASH, 0));
    assert_eq!(store.credentials_of(id).await.expect("find"), Some(by_email));

    let upper = store.find_credentials(&EmailAddress::parse("upper@example.com").unwrap()).await.expect("find");
    assert!(upper.is_some(), "an address stored in another case is found");
    let unknown = EmailAddress::parse("nobody@example.com").unwrap();
    assert_eq!(store.find_credentials(&unknown).await.expect("find"), None);
    assert_eq!(store.credentials_of(UserId::generate()).await.expect("find"), None);
}

fn hash(phc: &str) -> PasswordHash {
    PasswordHash::new(phc.to_owned())
}

/// A new password hash is stored; the token version moves on only when tokens are revoked.
pub async fn replace_password_hash_replaces_the_hash_and_moves_the_token_version_only_when_revoking(
    fixture: &impl StoreFixture,
) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    assert_eq!(store.token_version(id).await.expect("version"), Some(0));

    let kept = store.replace_password_hash(id, hash(PASSWORD_HASH), hash("$argon2id$second"), false).await;
    assert_eq!(kept.expect("update"), Some(0));
    let credentials = store.credentials_of(id).await.expect("find").expect("the account exists");
    assert_eq!(credentials.password_hash.as_str(), "$argon2id$second");

    let revoked = store.replace_password_hash(id, hash("$argon2id$second"), hash("$argon2id$third"), true).await;
    assert_eq!(revoked.expect("update"), Some(1));
    assert_eq!(store.token_version(id).await.expect("version"), Some(1));
    let credentials = store.credentials_of(id).await.expect("find").expect("the account exists");
    assert_eq!((credentials.password_hash.as_str(), credentials.token_version), ("$argon2id$third", 1));

    let unknown = UserId::generate();
    assert_eq!(store.token_version(unknown).await.expect("version"), None);
    let result = store.replace_password_hash(unknown, hash(PASSWORD_HASH), hash("$argon2id$x"), true).await;
    assert_eq!(result.expect("update"), None);
}

/// Two changes that read the same hash: the second finds it replaced and writes nothing.
pub async fn replace_password_hash_never_overwrites_a_hash_changed_since_it_was_read(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let first = store.replace_password_hash(id, hash(PASSWORD_HASH), hash("$argon2id$first"), true).await;
    assert_eq!(first.expect("update"), Some(1));
    let second = store.replace_password_hash(id, hash(PASSWORD_HASH), hash("$argon2id$second"), true).await;
    assert_eq!(second.expect("update"), None);
    let credentials = store.credentials_of(id).await.expect("find").expect("the account exists");
    assert_eq!((credentials.password_hash.as_str(), credentials.token_version), ("$argon2id$first", 1));
}

// ---------------------------------------------------------------------------------------
// Devices: upsert
// ---------------------------------------------------------------------------------------

/// A new token creates a device.
pub async fn upsert_of_a_new_token_creates_a_device(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

    let registered = upsert(store, id, registration("new-token", Platform::Ios, false), at(1)).await.expect("upsert");

    assert!(registered.created);
    assert_eq!(registered.previous_owner, None);
    let device = &registered.device;
    assert_eq!((device.user_id, device.token.as_str(), device.platform), (id, "new-token", Platform::Ios));
    assert!(!device.active);
    assert_eq!((device.created_at, device.updated_at, device.last_seen_at), (at(1), at(1), at(1)));
    assert_eq!(store.list(id).await.expect("list"), Some(vec![registered.device.clone()]));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
}

/// Registering a token again refreshes its device in place.
pub async fn upsert_of_a_known_token_for_the_same_user_refreshes_the_device(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let first = upsert(store, id, registration("token", Platform::Web, true), at(1)).await.expect("upsert");

    let again = upsert(store, id, registration("token", Platform::Android, false), at(7)).await.expect("upsert again");

    assert!(!again.created);
    assert_eq!(again.previous_owner, None, "the token did not change hands");
    assert_eq!(again.device.id, first.device.id);
    assert_eq!(again.device.user_id, id);
    assert_eq!(again.device.platform, Platform::Android);
    assert!(!again.device.active);
    assert_eq!(again.device.created_at, at(1));
    assert_eq!(again.device.last_seen_at, at(7));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
}

/// Another user's token moves to the registering user, and back.
pub async fn upsert_of_a_token_held_by_another_user_moves_it_and_names_the_previous_owner(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let first = create_user(store, "first@example.com", at(0)).await;
    let second = create_user(store, "second@example.com", at(1)).await;
    let original = upsert(store, first, registration("token", Platform::Ios, true), at(2)).await.expect("upsert");

    let moved = upsert(store, second, registration("token", Platform::Ios, true), at(3)).await.expect("move");

    assert!(!moved.created);
    assert_eq!(moved.previous_owner, Some(first));
    assert_eq!(moved.device.id, original.device.id);
    assert_eq!(moved.device.user_id, second);
    assert_eq!(moved.device.last_seen_at, at(3));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    assert_eq!(store.list(first).await.expect("list"), Some(Vec::new()));
    assert_eq!(store.list(second).await.expect("list"), Some(vec![moved.device.clone()]));

    let back = upsert(store, first, registration("token", Platform::Ios, true), at(4)).await.expect("move back");
    assert_eq!(back.previous_owner, Some(second));
    assert_eq!(back.device.user_id, first);
}

/// A device cannot be registered for a user that does not exist.
pub async fn upsert_for_an_unknown_user_is_user_not_found(fixture: &impl StoreFixture) {
    let store = fixture.store();
    create_user(store, "john@example.com", at(0)).await;

    let result = upsert(store, UserId::generate(), registration("token", Platform::Web, true), at(1)).await;

    assert!(matches!(result, Err(RepositoryError::UserNotFound)), "{result:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 0);
}

/// Tokens of the maximum length (8 kB of UTF-8 here) are stored, unique, moved and found.
pub async fn upsert_accepts_a_token_of_the_maximum_length(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let first = create_user(store, "first@example.com", at(0)).await;
    let second = create_user(store, "second@example.com", at(1)).await;
    // Far above what a PostgreSQL B-tree entry holds (~2.7 kB).
    let token = format!("https://push.example.com/{}", "é".repeat(PushToken::MAX_LENGTH - 25));
    assert_eq!(token.chars().count(), PushToken::MAX_LENGTH);

    let created = upsert(store, first, registration(&token, Platform::Web, true), at(2)).await.expect("upsert");
    assert!(created.created);
    assert_eq!(created.device.token.as_str(), token);
    let moved = upsert(store, second, registration(&token, Platform::Web, true), at(3)).await.expect("move");
    assert!(!moved.created);
    assert_eq!(moved.previous_owner, Some(first));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);

    let device = store.set_active(second, &selector(&token), false, at(4)).await.expect("set active");
    assert_eq!(device.map(|device| device.id), Some(created.device.id));
}

/// Twenty concurrent registrations of one token converge on one row, created once, and
/// none of them fails (no deadlock, no "database is locked").
pub async fn concurrent_upserts_of_one_token_leave_one_row_and_report_one_creation(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let users =
        [create_user(store, "first@example.com", at(0)).await, create_user(store, "second@example.com", at(1)).await];

    let results: Vec<RegisteredDevice> = all_at_once(|task| {
        let store = store.clone();
        let user = users[task % 2];
        let seen = at(10 + task as i64);
        async move { upsert(&store, user, registration("contended-token", Platform::Android, true), seen).await }
    })
    .await
    .into_iter()
    .map(|result| result.expect("every upsert succeeds"))
    .collect();

    assert_eq!(results.iter().filter(|registered| registered.created).count(), 1);
    let id = results[0].device.id;
    assert!(results.iter().all(|registered| registered.device.id == id), "all upserts hit one row");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    let owners: usize = [
        store.list(users[0]).await.expect("list").expect("exists").len(),
        store.list(users[1]).await.expect("list").expect("exists").len(),
    ]
    .iter()
    .sum();
    assert_eq!(owners, 1);
}

/// Twenty concurrent registrations of different users, each with a device, all succeed.
pub async fn concurrent_registrations_of_different_users_all_succeed(fixture: &impl StoreFixture) {
    let store = fixture.store();

    let results = all_at_once(|task| {
        let store = store.clone();
        let mut new_user = record(&format!("user{task}@example.com"), at(task as i64));
        new_user.device = Some(registration(&format!("token-{task}"), Platform::Unknown, true));
        async move { create(&store, new_user).await }
    })
    .await;
    for result in results {
        assert_eq!(result.expect("every registration succeeds").profile.devices.len(), 1);
    }

    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, TASKS as i64);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, TASKS as i64);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, TASKS as i64);
}

/// Of concurrent registrations of one email, exactly one succeeds; the others are told the
/// email is taken.
pub async fn concurrent_registrations_of_one_email_create_exactly_one_user(fixture: &impl StoreFixture) {
    let store = fixture.store();

    let results = all_at_once(|task| {
        let store = store.clone();
        let new_user = record("contended@example.com", at(task as i64));
        async move { create(&store, new_user).await }
    })
    .await;
    let mut created = 0;
    for result in results {
        match result {
            Ok(_) => created += 1,
            Err(RepositoryError::EmailTaken) => {}
            Err(other) => panic!("a registration failed otherwise than as taken: {other:?}"),
        }
    }

    assert_eq!(created, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM notification_preferences").await, 1);
}

// ---------------------------------------------------------------------------------------
// Devices: set_active, delete, list
// ---------------------------------------------------------------------------------------

/// A device is named by its id or by its token; a state change is not a sighting.
pub async fn set_active_finds_a_device_by_id_or_by_token(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let device =
        upsert(store, id, registration("plain-token", Platform::Ios, true), at(1)).await.expect("upsert").device;
    let other =
        upsert(store, id, registration("other-token", Platform::Ios, true), at(1)).await.expect("upsert").device;

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

/// A web-push endpoint whose `//` a proxy merged into `/` still names its device.
pub async fn set_active_finds_a_web_push_token_whose_double_slashes_were_merged(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    let endpoint = "https://push.example.com//wp/abc:DEF_123";
    let device = upsert(store, id, registration(endpoint, Platform::Web, true), at(1)).await.expect("upsert").device;

    let merged = store.set_active(id, &selector("https:/push.example.com/wp/abc:DEF_123"), false, at(2)).await;
    let merged = merged.expect("set active").expect("found by the merged token");

    assert_eq!(merged.id, device.id);
    assert_eq!(merged.token.as_str(), endpoint, "the stored token keeps its slashes");
    assert!(!merged.active);
}

/// Setting the state a device already has keeps its `updated_at`.
pub async fn set_active_to_the_current_state_leaves_updated_at_unchanged(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;
    upsert(store, id, registration("token", Platform::Android, true), at(1)).await.expect("upsert");

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

/// Another user's device is out of reach, by token and by id.
pub async fn set_active_on_another_users_device_is_none_and_changes_nothing(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let owner = create_user(store, "owner@example.com", at(0)).await;
    let intruder = create_user(store, "intruder@example.com", at(1)).await;
    let device = upsert(store, owner, registration("token", Platform::Ios, true), at(2)).await.expect("upsert").device;

    let by_token = store.set_active(intruder, &selector("token"), false, at(3)).await.expect("by token");
    let by_id = store.set_active(intruder, &selector(&device.id.to_string()), false, at(3)).await.expect("by id");
    let unknown_user = store.set_active(UserId::generate(), &selector("token"), false, at(3)).await.expect("unknown");

    assert_eq!((by_token, by_id, unknown_user), (None, None, None));
    assert_eq!(store.list(owner).await.expect("list").expect("exists"), vec![device]);
}

/// Deleting a device by id, token or merged token removes that device of that user only.
pub async fn delete_device_removes_only_the_named_device_of_that_user(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let owner = create_user(store, "owner@example.com", at(0)).await;
    let other = create_user(store, "other@example.com", at(1)).await;
    upsert(store, owner, registration("by-token", Platform::Ios, true), at(2)).await.expect("upsert");
    let by_id = upsert(store, owner, registration("by-id", Platform::Ios, true), at(3)).await.expect("upsert").device;
    upsert(store, owner, registration("https://push.example.com//wp/x", Platform::Web, true), at(4))
        .await
        .expect("upsert");
    let kept = upsert(store, owner, registration("kept", Platform::Android, true), at(5)).await.expect("upsert").device;

    assert!(!DeviceRepository::delete(store, other, &selector("by-token")).await.expect("delete as another user"));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 4);

    assert!(DeviceRepository::delete(store, owner, &selector("by-token")).await.expect("delete by token"));
    assert!(DeviceRepository::delete(store, owner, &selector(&by_id.id.to_string())).await.expect("delete by id"));
    assert!(DeviceRepository::delete(store, owner, &selector("https:/push.example.com/wp/x")).await.expect("merged"));
    assert!(!DeviceRepository::delete(store, owner, &selector("by-token")).await.expect("delete again"));

    assert_eq!(store.list(owner).await.expect("list"), Some(vec![kept]));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
}

/// `list` tells an unknown user (`None`) from a user without devices (empty).
pub async fn device_list_is_none_for_an_unknown_user_and_empty_for_a_user_without_devices(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let id = create_user(store, "john@example.com", at(0)).await;

    assert_eq!(store.list(UserId::generate()).await.expect("list unknown"), None);
    assert_eq!(store.list(id).await.expect("list"), Some(Vec::new()));
}

// ---------------------------------------------------------------------------------------
// Idempotency records
// ---------------------------------------------------------------------------------------

fn idempotent_request(key: &str, fingerprint: u8, expires_at: OffsetDateTime) -> IdempotentRequest {
    IdempotentRequest {
        caller: "gateway".into(),
        key: IdempotencyKey::parse(key).unwrap(),
        fingerprint: vec![fingerprint],
        expires_at,
    }
}

fn idempotent_device_write(
    key: &str,
    fingerprint: u8,
    expires_at: OffsetDateTime,
) -> IdempotentWrite<RegisteredDevice> {
    IdempotentWrite {
        request: idempotent_request(key, fingerprint, expires_at),
        render: Box::new(|registered: &RegisteredDevice| StoredResponse {
            status: if registered.created { 201 } else { 200 },
            body: registered.device.id.to_string().into_bytes(),
            location: Some("/somewhere".into()),
            invalidates: Vec::new(),
        }),
    }
}

fn far_future() -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::hours(1)
}

/// A keyed write stores its answer; a retry gets it back without writing; another request
/// with the key is refused.
pub async fn an_idempotent_write_stores_its_answer_and_a_retry_replays_it_without_writing(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let user = create_user(store, "idem@example.com", at(0)).await;
    let first = store
        .upsert(
            user,
            registration("idem-token", Platform::Ios, true),
            at(1),
            Some(idempotent_device_write("k", 1, far_future())),
        )
        .await
        .expect("first write");
    let Idempotent::Executed(registered) = first else { panic!("the first write executes") };
    assert!(registered.created);

    let retry = store
        .upsert(
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
        invalidates: Vec::new(),
    };
    assert_eq!(retry, Idempotent::Replayed(expected.clone()));
    // The retry changed nothing: the platform is still the first one.
    let devices = store.list(user).await.expect("list").expect("the user exists");
    assert_eq!(devices[0].platform, Platform::Ios);
    let key = IdempotencyKey::parse("k").unwrap();
    let found = store.find_record("gateway", &key).await.expect("find").expect("the record exists");
    assert_eq!((found.fingerprint, found.response), (vec![1], expected));
    assert_eq!(store.find_record("someone-else", &key).await.expect("find"), None, "keys are scoped by caller");

    let reused = store
        .upsert(
            user,
            registration("idem-token", Platform::Ios, true),
            at(3),
            Some(idempotent_device_write("k", 2, far_future())),
        )
        .await;
    assert!(matches!(reused, Err(RepositoryError::Idempotency(IdempotencyConflict::KeyReused))), "{reused:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM idempotency_records").await, 1);
}

/// A keyed registration stores its answer with the user; a retry replays it and creates
/// no second user.
pub async fn an_idempotent_create_stores_its_answer_and_a_retry_replays_it_without_writing(
    fixture: &impl StoreFixture,
) {
    let store = fixture.store();
    let write = || IdempotentWrite {
        request: idempotent_request("signup", 7, far_future()),
        render: Box::new(|created: &CreatedUser| StoredResponse {
            status: 201,
            body: created.profile.user.id.to_string().into_bytes(),
            location: Some(format!("/api/v1/users/{}", created.profile.user.id)),
            invalidates: vec![created.profile.user.id, UserId::from(uuid::Uuid::nil())],
        }),
    };
    let new_user = record("idem@example.com", at(0));
    let id = new_user.id;

    let first = store.create(new_user, Some(write())).await.expect("first write");
    assert!(matches!(first, Idempotent::Executed(ref created) if created.profile.user.id == id), "{first:?}");
    // The retry carries a fresh id, as a retried request would: it must not be used.
    let retry = store.create(record("idem@example.com", at(1)), Some(write())).await.expect("retry");

    let expected = StoredResponse {
        status: 201,
        body: id.to_string().into_bytes(),
        location: Some(format!("/api/v1/users/{id}")),
        invalidates: vec![id, UserId::from(uuid::Uuid::nil())],
    };
    assert!(matches!(retry, Idempotent::Replayed(ref response) if *response == expected), "{retry:?}");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM users").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM idempotency_records").await, 1);
}

/// Concurrent keyed writes with one key run once: the others replay its answer or are told
/// it is in flight.
pub async fn concurrent_idempotent_writes_with_one_key_run_once(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let user = create_user(store, "idem@example.com", at(0)).await;

    let results = all_at_once(|task| {
        let store = store.clone();
        let write = idempotent_device_write("once", 1, far_future());
        let registration = registration(&format!("token-{task}"), Platform::Web, true);
        async move { store.upsert(user, registration, at(1), Some(write)).await }
    })
    .await;
    let (mut executed, mut replayed) = (Vec::new(), Vec::new());
    for result in results {
        match result {
            Ok(Idempotent::Executed(registered)) => executed.push(registered),
            Ok(Idempotent::Replayed(response)) => replayed.push(response),
            Err(RepositoryError::Idempotency(IdempotencyConflict::InFlight)) => {}
            Err(other) => panic!("a keyed write failed otherwise than as in flight: {other:?}"),
        }
    }

    assert_eq!(executed.len(), 1, "exactly one write ran");
    let body = executed[0].device.id.to_string().into_bytes();
    assert!(replayed.iter().all(|response| response.body == body), "every replay is the first answer");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM idempotency_records").await, 1);
}

/// An expired record is ignored (the key runs again and its record is replaced) and purged.
pub async fn an_expired_record_no_longer_replays_and_is_purged(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let user = create_user(store, "expired@example.com", at(0)).await;
    let past = OffsetDateTime::now_utc() - Duration::minutes(1);
    let first = store
        .upsert(
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
    let again = store
        .upsert(
            user,
            registration("old-token", Platform::Web, true),
            at(2),
            Some(idempotent_device_write("old", 1, far_future())),
        )
        .await
        .expect("second write");
    assert!(matches!(again, Idempotent::Executed(RegisteredDevice { created: false, .. })));
    assert!(store.find_record("gateway", &key).await.expect("find").is_some());

    store
        .upsert(
            user,
            registration("other-token", Platform::Web, true),
            at(3),
            Some(idempotent_device_write("stale", 1, past)),
        )
        .await
        .expect("third write");
    assert_eq!(fixture.purge_expired_idempotency_records(100).await, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM idempotency_records").await, 1);
}

// ---------------------------------------------------------------------------------------
// The cache's invalidation ledger
// ---------------------------------------------------------------------------------------

/// The users the ledger lists.
fn users_of(entries: &[LedgerEntry]) -> Vec<UserId> {
    entries.iter().map(|entry| entry.user).collect()
}

/// A user recorded twice in one call is listed once; a user recorded again gets a new mark
/// and moves behind the others.
pub async fn the_ledger_lists_each_recorded_user_once_oldest_recording_first(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let (first, second) = (UserId::generate(), UserId::generate());
    assert!(store.recorded(10).await.expect("list").is_empty());

    store.record(&[first, first]).await.expect("record");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.record(&[second]).await.expect("record");
    let listed = store.recorded(10).await.expect("list");
    assert_eq!(users_of(&listed), [first, second]);

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.record(&[first]).await.expect("record again");
    let relisted = store.recorded(10).await.expect("list");
    assert_eq!(users_of(&relisted), [second, first]);
    assert_ne!(relisted[1].mark, listed[0].mark, "a new recording has a new mark");
    assert_eq!(relisted[0], listed[1]);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM cache_invalidation_ledger").await, 2);
}

/// Forgetting the recording a replay confirmed keeps the recording a later write made.
pub async fn forgetting_a_recording_keeps_a_newer_recording_of_the_same_user(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let user = UserId::generate();
    store.record(&[user]).await.expect("record");
    let replayed = store.recorded(10).await.expect("list");
    store.record(&[user]).await.expect("a later write records the user again");

    store.forget(&replayed).await.expect("forget");
    let left = store.recorded(10).await.expect("list");
    assert_eq!(users_of(&left), [user]);
    assert_ne!(left[0].mark, replayed[0].mark);

    store.forget(&left).await.expect("forget");
    assert!(store.recorded(10).await.expect("list").is_empty());
    store.forget(&left).await.expect("forgetting twice is no error");
    store.forget(&[]).await.expect("forgetting nothing is no error");
    store.record(&[]).await.expect("recording nothing is no error");
}

/// Listing stops at the limit; forgetting takes more recordings than one statement binds.
pub async fn the_ledger_lists_at_most_the_limit_and_forgets_in_any_number(fixture: &impl StoreFixture) {
    let store = fixture.store();
    let users: Vec<UserId> = (0..1_200).map(|_| UserId::generate()).collect();
    store.record(&users).await.expect("record");
    assert_eq!(store.recorded(3).await.expect("list").len(), 3);
    let all = store.recorded(5_000).await.expect("list");
    assert_eq!(all.len(), 1_200);

    store.forget(&all).await.expect("forget");
    assert!(store.recorded(5_000).await.expect("list").is_empty());
}
