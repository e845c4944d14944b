//! Tests of [`SqliteStore`]: the repository contract suite shared with PostgreSQL
//! (`adapters_sql_common::contract`), then what only the embedded store has to show (its
//! data directory, connection settings, migrations, and writers that wait for SQLite's lock
//! instead of failing). Each test opens a store in a fresh temporary directory.

use std::time::{Duration, Instant};

use adapters_sql_common::contract::{self, StoreFixture};
use async_trait::async_trait;
use diesel::{Connection, QueryableByName};
use domain::idempotency::Idempotent;
use domain::ports::{NewUserRecord, RepositoryError, UserRepository};
use domain::user::UserId;
use time::OffsetDateTime;

use crate::testing::{TempDataDir, TestStore};
use crate::{DATA_FILE_NAME, SqliteSettings, SqliteStore};

/// A store on a fresh data directory, for the contract suite.
struct SqliteFixture(TestStore);

impl SqliteFixture {
    async fn new() -> Self {
        Self(TestStore::create().await.expect("open a store in a temporary directory"))
    }
}

#[async_trait]
impl StoreFixture for SqliteFixture {
    type Store = SqliteStore;

    fn store(&self) -> &SqliteStore {
        self.0.store()
    }

    async fn count(&self, query: &str) -> i64 {
        self.0.count(query).await.expect("count rows")
    }

    async fn execute(&self, sql: &str) {
        self.0.execute(sql).await.expect("execute SQL");
    }

    async fn reject_device_inserts(&self) {
        StoreFixture::execute(
            self,
            "CREATE TRIGGER reject_device BEFORE INSERT ON devices \
             BEGIN SELECT RAISE(ABORT, 'devices rejected by the test'); END;",
        )
        .await;
    }

    async fn purge_expired_idempotency_records(&self, batch: i64, now: OffsetDateTime) -> usize {
        self.0.store().purge_expired_idempotency_records(batch, now).await.expect("purge")
    }
}

adapters_sql_common::repository_contract_tests!(SqliteFixture::new().await);

fn record(email: &str) -> NewUserRecord {
    contract::record(email, OffsetDateTime::now_utc())
}

async fn create(store: &SqliteStore, email: &str) -> Result<UserId, RepositoryError> {
    match store.create(record(email), None).await? {
        Idempotent::Executed(created) => Ok(created.profile.user.id),
        Idempotent::Replayed(_) => panic!("a write without a key is never replayed"),
    }
}

/// Holds SQLite's write lock from a connection outside the store (as another process would)
/// for `hold`, on a thread of its own; returns once the lock is taken.
fn hold_write_lock(data_file: std::path::PathBuf, hold: Duration) -> std::thread::JoinHandle<()> {
    let (taken, wait_taken) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let mut other = diesel::SqliteConnection::establish(data_file.to_str().unwrap()).expect("open the file");
        diesel::connection::SimpleConnection::batch_execute(&mut other, "BEGIN IMMEDIATE").expect("take the lock");
        taken.send(()).expect("signal");
        std::thread::sleep(hold);
        diesel::connection::SimpleConnection::batch_execute(&mut other, "COMMIT").expect("release the lock");
    });
    wait_taken.recv().expect("the lock is taken");
    holder
}

#[tokio::test(flavor = "multi_thread")]
async fn open_creates_the_data_directory_and_a_reopened_store_keeps_its_data() {
    let dir = TempDataDir::new();
    let nested = dir.path().join("nested").join("data");
    assert!(!nested.exists());

    let store = crate::open(&nested, &SqliteSettings::default()).await.expect("open");
    assert!(nested.join(DATA_FILE_NAME).is_file());
    let id = create(&store, "ada@example.com").await.expect("create");
    drop(store);

    let reopened = crate::open(&nested, &SqliteSettings::default()).await.expect("reopen");
    assert!(reopened.exists(id).await.expect("exists"), "the user survived the reopening");
    let applied = crate::migrations::run_pending(reopened.pool()).await.expect("migrations");
    assert_eq!(applied, 0, "nothing was pending after the first open");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_store_on_a_data_directory_in_use_is_refused_until_the_first_is_gone() {
    let dir = TempDataDir::new();
    let first = crate::open(dir.path(), &SqliteSettings::default()).await.expect("open");
    let second = crate::open(dir.path(), &SqliteSettings::default()).await;
    assert!(matches!(second, Err(crate::OpenError::InUse { .. })), "{second:?}");
    let clone = first.clone();
    drop(first);
    assert!(crate::open(dir.path(), &SqliteSettings::default()).await.is_err(), "a clone keeps the lock");
    drop(clone);
    let third = crate::open(dir.path(), &SqliteSettings::default()).await.expect("free again once the store is gone");
    let kept = third.clone();
    third.close();
    crate::open(dir.path(), &SqliteSettings::default()).await.expect("free once closed, whatever clones remain");
    drop(kept);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_pooled_connection_uses_wal_foreign_keys_busy_timeout_and_normal_sync() {
    use diesel_async::RunQueryDsl;

    #[derive(QueryableByName)]
    struct Pragmas {
        #[diesel(sql_type = diesel::sql_types::Text)]
        journal_mode: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        foreign_keys: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        busy_timeout: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        synchronous: i64,
    }
    let test = TestStore::create().await.expect("open");
    // Two connections at once, so that the second is not the first one recycled.
    let mut first = test.store().pool().get().await.expect("a connection");
    let mut second = test.store().pool().get().await.expect("another connection");
    for connection in [&mut first, &mut second] {
        let pragmas: Pragmas = diesel::sql_query(
            "SELECT (SELECT journal_mode FROM pragma_journal_mode) AS journal_mode, \
             (SELECT foreign_keys FROM pragma_foreign_keys) AS foreign_keys, \
             (SELECT timeout FROM pragma_busy_timeout) AS busy_timeout, \
             (SELECT synchronous FROM pragma_synchronous) AS synchronous",
        )
        .get_result(connection)
        .await
        .expect("read the pragmas");
        assert_eq!(pragmas.journal_mode, "wal");
        assert_eq!(pragmas.foreign_keys, 1);
        assert_eq!(pragmas.busy_timeout, 5_000);
        assert_eq!(pragmas.synchronous, 1, "NORMAL");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_revert_completely_and_apply_again() {
    const TABLES: &str = "SELECT count(*) AS count FROM sqlite_schema WHERE type = 'table' \
                          AND name IN ('users', 'notification_preferences', 'devices', 'idempotency_records', \
                          'cache_invalidation_ledger', 'notification_categories', 'category_revisions', \
                          'category_choices', 'consent_history')";
    let test = TestStore::create().await.expect("open");
    assert_eq!(test.count(TABLES).await.expect("count"), 9);

    let reverted = crate::migrations::revert_all(test.store().pool()).await.expect("revert every migration");
    assert!(reverted > 0);
    assert_eq!(test.count(TABLES).await.expect("count"), 0);

    let applied = crate::migrations::run_pending(test.store().pool()).await.expect("apply every migration");
    assert_eq!(applied, reverted);
    assert_eq!(test.count(TABLES).await.expect("count"), 9);
    create(test.store(), "ada@example.com").await.expect("the schema works again");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_diesel_schema_declares_exactly_the_columns_the_migrations_create() {
    use crate::schema::{
        cache_invalidation_ledger, category_choices, category_revisions, consent_history, devices, event_sequences,
        idempotency_records, notification_categories, notification_preferences, outbox_events, users,
    };
    let test = TestStore::create().await.expect("open");
    let declared = adapters_sql_common::contract::declared_columns(&adapters_sql_common::select_every_column!(
        diesel::sqlite::Sqlite
    ));
    for (table, column) in &declared {
        let exists = format!("SELECT count(*) AS count FROM pragma_table_info('{table}') WHERE name = '{column}'");
        assert_eq!(test.count(&exists).await.expect("count"), 1, "{table}.{column} is declared but not migrated");
    }
    for table in adapters_sql_common::contract::TABLES {
        let columns = format!("SELECT count(*) AS count FROM pragma_table_info('{table}')");
        let expected = declared.iter().filter(|(declared, _)| declared == table).count();
        assert!(expected > 0, "{table} is not in the schema");
        let migrated = test.count(&columns).await.expect("count");
        assert_eq!(usize::try_from(migrated).unwrap(), expected, "{table} has columns the schema lacks");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_waits_for_a_lock_held_by_another_connection_instead_of_failing() {
    let test = TestStore::create().await.expect("open");
    let started = Instant::now();
    let holder = hold_write_lock(test.data_dir().join(DATA_FILE_NAME), Duration::from_millis(300));

    let created = create(test.store(), "ada@example.com").await;

    assert!(created.is_ok(), "{created:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "the write waited for the lock");
    holder.join().expect("the holder finished");
    assert_eq!(test.count("SELECT count(*) AS count FROM users").await.expect("count"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_unavailable_when_another_connection_keeps_the_lock_beyond_the_busy_timeout() {
    let dir = TempDataDir::new();
    let settings = SqliteSettings { busy_timeout: Duration::from_millis(100), ..SqliteSettings::default() };
    let store = crate::open(dir.path(), &settings).await.expect("open");
    let holder = hold_write_lock(dir.path().join(DATA_FILE_NAME), Duration::from_millis(1_000));

    let result = create(&store, "ada@example.com").await;

    assert!(matches!(result, Err(RepositoryError::Unavailable(_))), "{result:?}");
    holder.join().expect("the holder finished");
    create(&store, "ada@example.com").await.expect("the store writes again once the lock is free");
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_dropped_midway_leave_no_transaction_open() {
    const TASKS: usize = 20;
    let test = TestStore::create().await.expect("open");
    let handles: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = test.store().clone();
            tokio::spawn(async move { create(&store, &format!("user{task}@example.com")).await })
        })
        .collect();
    // Requests that go away while queued or while their statement runs.
    for handle in handles.iter().step_by(2) {
        handle.abort();
    }
    for handle in handles {
        let _ = handle.await;
    }

    create(test.store(), "after@example.com").await.expect("the store still writes");
    let users = test.count("SELECT count(*) AS count FROM users").await.expect("count");
    let preferences = test.count("SELECT count(*) AS count FROM notification_preferences").await.expect("count");
    assert_eq!(users, preferences, "every user was written whole or not at all");
    assert!(users > TASKS as i64 / 2, "the requests that stayed were all served");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_directory_that_cannot_be_created_is_reported() {
    let dir = TempDataDir::new();
    std::fs::create_dir_all(dir.path()).expect("create the directory");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"not a directory").expect("write a file");

    let result = crate::open(&blocker.join("data"), &SqliteSettings::default()).await;

    assert!(matches!(result, Err(crate::OpenError::DataDirectory { .. })), "{result:?}");
}

#[test]
fn timestamps_are_stored_as_text_that_sorts_chronologically() {
    use diesel::RunQueryDsl;

    // The device order relies on it: whole seconds carry no fraction, and `+` sorts before
    // `.` and digits, so a shorter text is never later than a longer one with its prefix.
    let mut connection = diesel::SqliteConnection::establish(":memory:").expect("an in-memory database");
    #[derive(QueryableByName)]
    struct Text {
        #[diesel(sql_type = diesel::sql_types::Text)]
        text: String,
    }
    let base = time::macros::datetime!(2026-11-25 09:00:00 UTC);
    let offsets = [0, 1, 250_000, 500_000, 1_000_000];
    let mut stored = Vec::new();
    for offset in offsets {
        let value = base + time::Duration::microseconds(offset);
        let row: Text = diesel::sql_query("SELECT CAST(? AS TEXT) AS text")
            .bind::<diesel::sql_types::TimestamptzSqlite, _>(value)
            .get_result(&mut connection)
            .expect("format");
        stored.push(row.text);
    }
    assert_eq!(stored[0], "2026-11-25 09:00:00+00:00");
    let mut sorted = stored.clone();
    sorted.sort();
    assert_eq!(sorted, stored);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consent_history_row_cannot_be_updated_only_erased_with_its_user() {
    let test = TestStore::create().await.expect("open");
    let user = create(test.store(), "kept@example.com").await.expect("create");

    let rewritten = test.execute("UPDATE consent_history SET new_value = 'false'").await;

    let error = rewritten.expect_err("the trigger refuses updates").to_string();
    assert!(error.contains("append-only"), "{error}");
    let unchanged = "SELECT count(*) AS count FROM consent_history WHERE new_value = 'false'";
    assert_eq!(test.count(unchanged).await.expect("count"), 0);
    assert!(UserRepository::delete(test.store(), user).await.expect("erase the user"));
    assert_eq!(test.count("SELECT count(*) AS count FROM consent_history").await.expect("count"), 0);
}
