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
use domain::category::{
    Category, CategoryChoice, CategoryDescription, CategoryKey, CategoryName, CategoryPatch, ChannelDefaults,
    NewCategory,
};
use domain::consent::{Actor, ActorKind, ConsentRecord, Provenance};
use domain::device::{Device, DeviceRegistration, DeviceSelector, HeldToken, Platform, PushToken, RegisteredDevice};
use domain::idempotency::{
    IdempotencyConflict, IdempotencyKey, Idempotent, IdempotentRequest, IdempotentWrite, StoredResponse,
};
use domain::ports::{
    CategoryRemoval, CategoryRepository, ChoiceChange, ConsentHistory, CreatedUser, DeviceRepository,
    IdempotencyRepository, NewUserRecord, RepositoryError, UserRepository,
};
use domain::preferences::{ClockTime, Preferences, PreferencesUpdate, QuietHours, TimeZoneName};
use domain::user::{
    ContactUpdate, EmailAddress, Page, PageRequest, PasswordHash, PhoneNumber, UserId, UserName, UserProfile,
};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use tokio::sync::Barrier;

mod categories;
mod devices;
mod events;
mod history;
mod idempotency;
mod ledger;
mod users;

pub use categories::*;
pub use devices::*;
pub use events::*;
pub use history::*;
pub use idempotency::*;
pub use ledger::*;
pub use users::*;

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
            every_preferences_update_is_stored_as_the_domain_rule_applies_it,
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
            concurrent_registrations_of_a_new_token_record_every_move_in_both_histories,
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
            a_record_with_an_unreadable_touched_user_is_an_error_not_a_partial_replay,
            the_ledger_lists_each_recorded_user_once_oldest_recording_first,
            forgetting_a_recording_keeps_a_newer_recording_of_the_same_user,
            the_ledger_lists_at_most_the_limit_and_forgets_in_any_number,
            categories_are_created_listed_and_found_and_a_taken_key_is_category_exists,
            update_changes_what_the_patch_names_and_an_unknown_key_is_none,
            remove_refuses_a_category_in_use_and_force_drops_the_choices_with_their_history,
            as_of_answers_what_a_category_was_at_an_instant,
            change_choice_sets_channels_partially_and_clear_returns_to_the_defaults,
            change_choice_in_an_unknown_category_is_category_not_found_and_for_an_unknown_user_is_none,
            profiles_carry_the_users_category_choices,
            a_profile_has_each_device_and_each_choice_once_whatever_their_numbers,
            registration_records_every_field_set_and_the_initial_device,
            a_registration_that_moves_a_token_records_it_in_both_histories,
            preferences_updates_record_only_the_fields_they_change,
            contact_updates_record_email_and_phone_but_not_the_name,
            device_registrations_record_new_refreshed_changed_and_moved_devices,
            set_active_and_delete_record_the_device_state,
            pages_come_newest_first_with_a_working_cursor,
            a_change_never_gets_an_earlier_time_than_the_previous_row,
            since_splits_the_history_at_the_instant,
            erasing_a_user_erases_its_history,
            concurrent_preference_updates_leave_a_consistent_history,
            a_history_row_the_domain_refuses_is_an_error_not_skipped,
            every_write_records_its_events_numbered_per_subject,
            a_failed_or_empty_write_records_no_event,
            the_feed_pages_in_commit_order_and_an_unknown_cursor_is_none,
            the_relay_publishes_in_feed_order_and_marks_only_what_the_broker_confirmed,
            pruning_deletes_only_done_events_older_than_the_cutoff,
            concurrent_writes_of_one_user_are_numbered_in_commit_order,
            one_relay_runs_at_a_time,
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
pub const TABLES: [&str; 11] = [
    "users",
    "notification_preferences",
    "devices",
    "idempotency_records",
    "cache_invalidation_ledger",
    "notification_categories",
    "category_revisions",
    "category_choices",
    "consent_history",
    "event_sequences",
    "outbox_events",
];

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
            $crate::select_every_column!(@one $backend, notification_categories),
            $crate::select_every_column!(@one $backend, category_revisions),
            $crate::select_every_column!(@one $backend, category_choices),
            $crate::select_every_column!(@one $backend, consent_history),
            $crate::select_every_column!(@one $backend, event_sequences),
            $crate::select_every_column!(@one $backend, outbox_events),
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

/// Fails naming every case of the suite (a `pub async fn` taking a fixture, in this module's
/// files) that `listed` leaves out.
pub fn assert_every_case_is_listed(listed: &[&str]) {
    let sources = [
        include_str!("mod.rs"),
        include_str!("users.rs"),
        include_str!("devices.rs"),
        include_str!("idempotency.rs"),
        include_str!("ledger.rs"),
        include_str!("categories.rs"),
        include_str!("history.rs"),
        include_str!("events.rs"),
    ];
    let unlisted: Vec<&str> = sources
        .iter()
        .flat_map(|source| source.split("pub async fn ").skip(1))
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
    type Store: UserRepository
        + DeviceRepository
        + IdempotencyRepository
        + InvalidationLedger
        + CategoryRepository
        + ConsentHistory
        + domain::ports::EventOutbox
        + Clone
        + 'static;

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
    async fn purge_expired_idempotency_records(&self, batch: i64, now: OffsetDateTime) -> usize;
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

/// A fixed instant plus `minutes`.
/// The stored preferences of `id` (`None`: no such user), read as senders read them: with
/// the profile.
async fn preferences_of(store: &impl UserRepository, id: UserId) -> Option<Preferences> {
    store.find_profile(id).await.expect("find the profile").map(|profile| profile.preferences)
}

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
    match store.upsert(user, registration, now, &by(), None).await? {
        Idempotent::Executed(registered) => Ok(registered),
        Idempotent::Replayed(_) => panic!("a write without a key is never replayed"),
    }
}

/// Who the cases' writes are made by: a service, in a request with an id.
fn by() -> Provenance {
    Provenance {
        actor: Some(Actor { kind: ActorKind::Service, name: "gateway".to_owned() }),
        request_id: Some("request-1".to_owned()),
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
        provenance: Provenance::default(),
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

/// A category of the catalogue, created at `now`.
fn category(key: &str, critical: bool, email: bool, push: bool, now: OffsetDateTime) -> Category {
    Category::new(
        NewCategory {
            key: CategoryKey::parse(key).unwrap(),
            name: CategoryName::parse(&format!("The {key} category")).unwrap(),
            description: None,
            critical,
            defaults: ChannelDefaults { email, push },
        },
        now,
    )
}

fn key(raw: &str) -> CategoryKey {
    CategoryKey::parse(raw).unwrap()
}

/// The whole history of `user`, oldest first, read page by page.
async fn history_of(store: &impl ConsentHistory, user: UserId) -> Vec<ConsentRecord> {
    let mut records = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.page(user, 7, cursor).await.expect("read a page").expect("the user exists");
        records.extend(page.records);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    records.reverse();
    records
}

/// The history of `user` as `(field, old, new)`, oldest first, from `skip` rows on.
async fn changes_of(
    store: &impl ConsentHistory,
    user: UserId,
    skip: usize,
) -> Vec<(String, Option<String>, Option<String>)> {
    history_of(store, user)
        .await
        .into_iter()
        .skip(skip)
        .map(|record| (record.change.field.to_string(), record.change.old.to_stored(), record.change.new.to_stored()))
        .collect()
}

/// `(field, old, new)` as [`changes_of`] gives them.
fn change(field: &str, old: Option<&str>, new: Option<&str>) -> (String, Option<String>, Option<String>) {
    (field.to_owned(), old.map(str::to_owned), new.map(str::to_owned))
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
