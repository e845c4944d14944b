//! Tests of [`PgStore`] against a real PostgreSQL, one database per test cloned from a
//! migrated template (see [`crate::testing`]): the repository contract suite shared with
//! SQLite (`adapters_sql_common::contract`), then what only PostgreSQL has to show (its
//! migrations' `down.sql`, the advisory lock that reports a key in flight, the races of
//! concurrent writes on its row locks).

use std::sync::Arc;

use adapters_sql_common::contract::{self, StoreFixture};
use async_trait::async_trait;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel_async::SimpleAsyncConnection;
use domain::consent::Provenance;
use domain::device::{DeviceRegistration, DeviceSelector, Platform, PushToken, RegisteredDevice};
use domain::idempotency::{
    IdempotencyConflict, IdempotencyKey, Idempotent, IdempotentRequest, IdempotentWrite, StoredResponse,
};
use domain::ports::{ConsentHistory, CreatedUser, DeviceRepository, NewUserRecord, RepositoryError, UserRepository};
use domain::preferences::PreferencesUpdate;
use domain::user::{ContactUpdate, EmailAddress, UserId};
use time::{Duration, OffsetDateTime};
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::PgStore;
use crate::testing::TestDatabase;

/// A store on a database of its own, for the contract suite.
struct PgFixture {
    db: TestDatabase,
    store: PgStore,
}

impl PgFixture {
    async fn new() -> Self {
        let db = TestDatabase::create().await.expect("create the test database");
        let store = PgStore::new(db.pool().clone()).with_record_clock(crate::RecordClock::Caller);
        Self { db, store }
    }
}

#[async_trait]
impl StoreFixture for PgFixture {
    type Store = PgStore;

    fn store(&self) -> &PgStore {
        &self.store
    }

    async fn count(&self, query: &str) -> i64 {
        self.db.count(query).await.expect("count rows")
    }

    async fn execute(&self, sql: &str) {
        let mut connection = self.db.pool().get().await.expect("a connection");
        connection.batch_execute(sql).await.expect("execute SQL");
    }

    async fn reject_device_inserts(&self) {
        self.execute(
            "CREATE FUNCTION reject_device() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'devices rejected by the test'; END $$; \
             CREATE TRIGGER reject_device BEFORE INSERT ON devices FOR EACH ROW EXECUTE FUNCTION reject_device();",
        )
        .await;
    }

    async fn purge_expired_idempotency_records(&self, batch: i64, now: OffsetDateTime) -> usize {
        self.store.purge_expired_idempotency_records(batch, now).await.expect("purge")
    }
}

adapters_sql_common::repository_contract_tests!(PgFixture::new().await);

fn record(email: &str) -> NewUserRecord {
    contract::record(email, OffsetDateTime::now_utc())
}

fn registration(token: &str) -> DeviceRegistration {
    DeviceRegistration { token: PushToken::parse(token).unwrap(), platform: Platform::Web, active: true }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_revert_completely_and_apply_again() {
    const TABLES: &str = "SELECT count(*) AS count FROM pg_tables WHERE schemaname = 'public' \
                          AND tablename IN ('users', 'notification_preferences', 'devices', 'idempotency_records', \
                          'cache_invalidation_ledger', 'notification_categories', 'category_revisions', \
                          'category_choices', 'consent_history', 'profile_documents')";
    const DIGEST_FUNCTION: &str = "SELECT count(*) AS count FROM pg_proc WHERE proname = 'device_token_digest'";
    let embedded = MigrationSource::<Pg>::migrations(&crate::migrations::MIGRATIONS).expect("embedded").len();
    assert!(embedded > 0);
    let fixture = PgFixture::new().await;
    assert_eq!(fixture.count(TABLES).await, 10);

    let reverted = crate::migrations::revert_all(fixture.db.pool()).await.expect("revert every migration");
    assert_eq!(reverted, embedded);
    assert_eq!(fixture.count(TABLES).await, 0);
    assert_eq!(fixture.count(DIGEST_FUNCTION).await, 0);

    let applied = crate::migrations::run_pending(fixture.db.pool()).await.expect("apply every migration");
    assert_eq!(applied, reverted);
    assert_eq!(fixture.count(TABLES).await, 10);
    assert_eq!(fixture.count(DIGEST_FUNCTION).await, 1);
    assert_eq!(crate::migrations::run_pending(fixture.db.pool()).await.expect("nothing pending"), 0);

    let mut new_user = record("john@example.com");
    new_user.device = Some(registration("token"));
    let created = fixture.store.create(new_user, None).await.expect("the schema works again");
    assert!(matches!(created, Idempotent::Executed(created) if created.profile.devices.len() == 1));
}

/// Six instances started at once on an empty database (an autoscaler's first scale-up): each
/// applies the pending migrations at start, on its own pool. They take turns: every one
/// succeeds, and each migration is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_apply_each_migration_once() {
    const INSTANCES: usize = 6;
    let embedded = MigrationSource::<Pg>::migrations(&crate::migrations::MIGRATIONS).expect("embedded").len();
    let fixture = PgFixture::new().await;
    crate::migrations::revert_all(fixture.db.pool()).await.expect("an empty schema");
    let start = Arc::new(Barrier::new(INSTANCES));
    let instances: Vec<_> = (0..INSTANCES)
        .map(|_| {
            let pool = crate::pool::build(&crate::pool::PoolSettings::new(fixture.db.url().to_owned())).expect("pool");
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                let applied = crate::migrations::run_pending(&pool).await.map_err(|error| error.to_string());
                // The pool stays open until the lock is checked below: a lock left in a
                // pooled connection would still be held then.
                (applied, pool)
            })
        })
        .collect();
    let (mut applied, mut pools) = (Vec::new(), Vec::new());
    for instance in instances {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), instance).await;
        let (migrated, pool) = outcome.expect("migrations within a minute").expect("no panic");
        applied.push(migrated.expect("every instance migrates"));
        pools.push(pool);
    }
    assert_eq!(applied.iter().sum::<usize>(), embedded, "each migration applied by one instance: {applied:?}");
    let versions = "SELECT count(*) AS count FROM __diesel_schema_migrations";
    let distinct = "SELECT count(DISTINCT version) AS count FROM __diesel_schema_migrations";
    assert_eq!((fixture.count(versions).await, fixture.count(distinct).await), (embedded as i64, embedded as i64));
    let held = "SELECT count(*) AS count FROM pg_locks WHERE locktype = 'advisory' \
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    assert_eq!(fixture.count(held).await, 0, "the lock is released");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_diesel_schema_declares_exactly_the_columns_the_migrations_create() {
    use crate::schema::{
        cache_invalidation_ledger, category_choices, category_revisions, consent_history, devices, event_sequences,
        idempotency_records, notification_categories, notification_preferences, outbox_events, users,
    };
    let fixture = PgFixture::new().await;
    let declared = contract::declared_columns(&adapters_sql_common::select_every_column!(Pg));
    for (table, column) in &declared {
        let exists = format!(
            "SELECT count(*) AS count FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = '{table}' AND column_name = '{column}'"
        );
        assert_eq!(fixture.count(&exists).await, 1, "{table}.{column} is declared but not migrated");
    }
    for table in contract::TABLES {
        // `devices.token_digest` is PostgreSQL's own: a generated column that only its unique
        // constraint reads, never a query (SQLite's unique constraint is on the token itself).
        let columns = format!(
            "SELECT count(*) AS count FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = '{table}' \
             AND (table_name, column_name) <> ('devices', 'token_digest')"
        );
        let expected = declared.iter().filter(|(declared, _)| declared == table).count();
        assert!(expected > 0, "{table} is not in the schema");
        assert_eq!(fixture.count(&columns).await as usize, expected, "{table} has columns the schema lacks");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_held_by_a_running_transaction_is_in_flight() {
    let fixture = PgFixture::new().await;
    let user = match fixture.store.create(record("busy@example.com"), None).await.expect("create") {
        Idempotent::Executed(created) => created.profile.user.id,
        Idempotent::Replayed(_) => panic!("a write without a key is never replayed"),
    };
    let mut holder = fixture.db.pool().get().await.expect("a connection");
    holder
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('gateway' || chr(31) || 'busy', 0));")
        .await
        .expect("hold the key's lock");
    let write = IdempotentWrite {
        request: IdempotentRequest {
            caller: "gateway".into(),
            key: IdempotencyKey::parse("busy").unwrap(),
            fingerprint: vec![1],
            received_at: OffsetDateTime::now_utc(),
            expires_at: OffsetDateTime::now_utc() + Duration::hours(1),
        },
        render: Box::new(|_: &RegisteredDevice| StoredResponse {
            status: 201,
            body: Vec::new(),
            location: None,
            invalidates: Vec::new(),
        }),
    };

    let result = fixture
        .store
        .upsert(user, registration("busy-token"), OffsetDateTime::now_utc(), &Provenance::default(), Some(write))
        .await;

    assert!(matches!(result, Err(RepositoryError::Idempotency(IdempotencyConflict::InFlight))), "{result:?}");
    holder.batch_execute("ROLLBACK").await.expect("release");
    assert_eq!(fixture.count("SELECT count(*) AS count FROM devices").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consent_history_row_cannot_be_updated_only_erased_with_its_user() {
    let fixture = PgFixture::new().await;
    let user = match fixture.store.create(record("kept@example.com"), None).await.expect("create") {
        Idempotent::Executed(created) => created.profile.user.id,
        Idempotent::Replayed(_) => panic!("a write without a key is never replayed"),
    };
    let mut connection = fixture.db.pool().get().await.expect("a connection");

    let rewritten = connection.batch_execute("UPDATE consent_history SET new_value = 'false'").await;

    let error = rewritten.expect_err("the trigger refuses updates").to_string();
    assert!(error.contains("append-only"), "{error}");
    let unchanged = "SELECT count(*) AS count FROM consent_history WHERE new_value = 'false'";
    assert_eq!(fixture.count(unchanged).await, 0);
    assert!(UserRepository::delete(&fixture.store, user).await.expect("erase the user"));
    assert_eq!(fixture.count("SELECT count(*) AS count FROM consent_history").await, 0);
}

/// The last `(field, old, new)` of `user`'s consent history.
async fn last_change(store: &PgStore, user: UserId) -> (String, Option<String>, Option<String>) {
    let page = ConsentHistory::page(store, user, 1, None).await.expect("read the history").expect("the user exists");
    let record = page.records.into_iter().next().expect("a row");
    (record.change.field.to_string(), record.change.old.to_stored(), record.change.new.to_stored())
}

/// Creates the category `key` (named as its key, not critical, both channels on by default).
async fn create_category(store: &PgStore, key: &str) -> domain::category::CategoryKey {
    use domain::category::{Category, CategoryKey, CategoryName, ChannelDefaults, NewCategory};
    let category = NewCategory {
        key: CategoryKey::parse(key).unwrap(),
        name: CategoryName::parse(key).unwrap(),
        description: None,
        critical: false,
        defaults: ChannelDefaults { email: true, push: true },
    };
    let created = domain::ports::CategoryRepository::create(store, Category::new(category, OffsetDateTime::now_utc()));
    created.await.expect("category").key
}

fn user_of(created: Idempotent<CreatedUser>) -> CreatedUser {
    match created {
        Idempotent::Executed(created) => created,
        Idempotent::Replayed(_) => panic!("a write without a key is never replayed"),
    }
}

/// Inserts `token` for `owner` in a transaction of its own, left open: the store's write
/// that runs next blocks on its conflict until [`commit_when_blocked`] commits it.
async fn insert_uncommitted(fixture: &PgFixture, owner: UserId, token: &str) -> (crate::pool::PgConnection, Uuid) {
    let mut holder = fixture.db.pool().get().await.expect("a connection");
    let device = Uuid::now_v7();
    holder
        .batch_execute(&format!(
            "BEGIN; INSERT INTO devices (id, user_id, token, platform, active, created_at, updated_at, last_seen_at) \
             VALUES ('{device}', '{}', '{token}', 'web', true, now(), now(), now());",
            owner.as_uuid()
        ))
        .await
        .expect("insert the token, uncommitted");
    (holder, device)
}

/// Commits `holder`'s transaction once another backend of the test database waits on a lock.
async fn commit_when_blocked(fixture: &PgFixture, mut holder: crate::pool::PgConnection) {
    const WAITING: &str = "SELECT count(*) AS count FROM pg_stat_activity \
                           WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fixture.count(WAITING).await == 0 {
        assert!(std::time::Instant::now() < deadline, "the store's write never waited on the uncommitted token");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    holder.batch_execute("COMMIT").await.expect("commit the concurrent insert");
}

/// A token that another transaction inserts while a registration of it runs is moved with
/// its owner named (whose profile is then invalidated) and the move in both histories:
/// the owner is read from the row's committed version, not from the registration's snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_inserted_by_a_concurrent_transaction_is_moved_from_its_owner() {
    let fixture = PgFixture::new().await;
    let first = user_of(fixture.store.create(record("first@example.com"), None).await.expect("create")).profile.user.id;
    let second =
        user_of(fixture.store.create(record("second@example.com"), None).await.expect("create")).profile.user.id;
    let (holder, device) = insert_uncommitted(&fixture, first, "raced-token").await;

    let store = fixture.store.clone();
    let upsert = tokio::spawn(async move {
        store.upsert(second, registration("raced-token"), OffsetDateTime::now_utc(), &Provenance::default(), None).await
    });
    commit_when_blocked(&fixture, holder).await;
    let registered = match upsert.await.expect("the task").expect("upsert") {
        Idempotent::Executed(registered) => registered,
        Idempotent::Replayed(_) => panic!("a write without a key is never replayed"),
    };

    assert_eq!((registered.device.id.as_uuid(), registered.created), (device, false));
    assert_eq!(registered.previous_owner, Some(first));
    let field = format!("devices.{device}.active");
    assert_eq!(last_change(&fixture.store, first).await, (field.clone(), Some("true".into()), None));
    assert_eq!(last_change(&fixture.store, second).await, (field, None, Some("true".into())));
}

/// The same race through a registration that moves a held token to the new user.
#[tokio::test(flavor = "multi_thread")]
async fn a_registration_moves_a_token_that_a_concurrent_transaction_inserted_from_its_owner() {
    let fixture = PgFixture::new().await;
    let first = user_of(fixture.store.create(record("first@example.com"), None).await.expect("create")).profile.user.id;
    let (holder, device) = insert_uncommitted(&fixture, first, "raced-token").await;

    let store = fixture.store.clone();
    let mut new_user = record("second@example.com");
    new_user.device = Some(registration("raced-token"));
    let second = new_user.id;
    let create = tokio::spawn(async move { store.create(new_user, None).await });
    commit_when_blocked(&fixture, holder).await;
    let created = user_of(create.await.expect("the task").expect("create"));

    assert_eq!(created.device_moved_from, Some(first));
    assert_eq!(created.profile.devices.iter().map(|device| device.id.as_uuid()).collect::<Vec<_>>(), [device]);
    let field = format!("devices.{device}.active");
    assert_eq!(last_change(&fixture.store, first).await, (field.clone(), Some("true".into()), None));
    assert_eq!(last_change(&fixture.store, second).await, (field, None, Some("true".into())));
}

/// Erasing a user while its device moves away, changes state (set or registered) or is
/// removed, and while its contact changes, never deadlocks (a deadlock is a 503): each write
/// takes the device rows before the consent locks, and erasure takes the devices before its
/// cascade takes the consent lock.
#[tokio::test(flavor = "multi_thread")]
async fn erasing_a_user_while_its_devices_and_contact_change_never_deadlocks() {
    const ROUNDS: usize = 200;
    const WRITES: usize = 6;
    let fixture = PgFixture::new().await;
    let mut deadlocks = Vec::new();
    for round in 0..ROUNDS {
        let token = format!("token-{round}");
        let mut owner = record(&format!("owner-{round}@example.com"));
        owner.device = Some(registration(&token));
        let owner = user_of(fixture.store.create(owner, None).await.expect("create")).profile.user.id;
        let other =
            user_of(fixture.store.create(record(&format!("other-{round}@example.com")), None).await.expect("create"))
                .profile
                .user
                .id;
        let barrier = Arc::new(Barrier::new(WRITES));
        let task = |write: usize| {
            let (store, barrier, token) = (fixture.store.clone(), Arc::clone(&barrier), token.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let (now, by) = (OffsetDateTime::now_utc(), Provenance::default());
                let selector = DeviceSelector::parse(&token).expect("a selector");
                match write {
                    0 => store.upsert(other, registration(&token), now, &by, None).await.map(drop),
                    1 => store.set_active(owner, &selector, false, now, &by).await.map(drop),
                    2 => DeviceRepository::delete(&store, owner, &selector, now, &by).await.map(drop),
                    3 => {
                        let email = EmailAddress::parse(&format!("renamed-{round}@example.com")).expect("an email");
                        let update = ContactUpdate { email: Some(email), ..ContactUpdate::default() };
                        store.update_contact(owner, update, now, &by).await.map(drop)
                    }
                    4 => UserRepository::delete(&store, owner).await.map(drop),
                    _ => {
                        let deactivated = DeviceRegistration { active: false, ..registration(&token) };
                        store.upsert(owner, deactivated, now, &by, None).await.map(drop)
                    }
                }
            })
        };
        let writes: Vec<_> = (0..WRITES).map(task).collect();
        for (write, handle) in writes.into_iter().enumerate() {
            match handle.await.expect("the task") {
                Err(RepositoryError::Unavailable(error)) => {
                    deadlocks.push(format!("round {round}, write {write}: {error:?}"))
                }
                // A write that comes after the erasure finds no user: expected.
                Ok(()) | Err(RepositoryError::UserNotFound) => {}
                Err(error) => panic!("round {round}, write {write}: {error:?}"),
            }
        }
    }
    assert!(deadlocks.is_empty(), "{} writes failed in {ROUNDS} rounds: {deadlocks:#?}", deadlocks.len());
}

/// In production the database's clock stamps the history, one instant per write, under the
/// write's locks: an instance whose clock is wrong (years behind, or ahead) records neither
/// in the past nor in the future, and a write's rows are one change at one instant.
#[tokio::test(flavor = "multi_thread")]
async fn the_database_clock_stamps_the_history_whatever_the_instances_clocks_say() {
    let fixture = PgFixture::new().await;
    let store = PgStore::new(fixture.db.pool().clone());
    let behind = OffsetDateTime::UNIX_EPOCH + Duration::days(365 * 30);
    let ahead = OffsetDateTime::now_utc() + Duration::days(365);
    let started = OffsetDateTime::now_utc() - Duration::seconds(5);

    let mut new_user = record("clock@example.com");
    new_user.created_at = behind;
    let id = user_of(store.create(new_user, None).await.expect("create")).profile.user.id;
    let several = domain::preferences::PreferencesUpdate {
        email: Some(false),
        push: Some(false),
        timezone: Some(domain::preferences::TimeZoneName::parse("Africa/Lagos").unwrap()),
        ..Default::default()
    };
    store.update_preferences(id, several, ahead, &Provenance::default()).await.expect("update").expect("exists");
    let phone = domain::user::PhoneNumber::parse("+2348012345678").unwrap();
    let contact = ContactUpdate { phone: Some(Some(phone)), ..ContactUpdate::default() };
    store.update_contact(id, contact, behind, &Provenance::default()).await.expect("contact").expect("exists");

    let page = store.page(id, 100, None).await.expect("page").expect("exists");
    let finished = OffsetDateTime::now_utc() + Duration::seconds(5);
    assert!(
        page.records.iter().all(|record| started < record.at && record.at < finished),
        "every row at the database's now, none at the callers' clocks: {:?}",
        page.records.iter().map(|record| record.at).collect::<Vec<_>>()
    );
    let (contact_row, preference_rows) = page.records.split_first().expect("rows");
    assert_eq!(contact_row.change.field.to_string(), "contact.phone");
    let of_the_update: Vec<_> = preference_rows.iter().take(3).map(|record| record.at).collect();
    assert_eq!(of_the_update.len(), 3);
    assert!(of_the_update.iter().all(|at| *at == of_the_update[0]), "one write, one instant: {of_the_update:?}");
    assert!(contact_row.at >= of_the_update[0], "never before the previous row");
}

/// A forced removal of a category that waits for the erasure of a user with a choice in it
/// (the erasure holds the user's consent lock) removes the category with the other users'
/// choices, and writes no history for the erased user (whose history went with it): it was
/// a 500 and a rolled-back removal.
#[tokio::test(flavor = "multi_thread")]
async fn a_forced_removal_waiting_for_an_erasure_drops_the_other_choices() {
    use domain::category::{Category, CategoryChoice, CategoryKey, CategoryName, ChannelDefaults};
    use domain::ports::{CategoryRemoval, CategoryRepository, ChoiceChange};

    let fixture = PgFixture::new().await;
    let store = &fixture.store;
    let now = OffsetDateTime::now_utc();
    let key = CategoryKey::parse("promo").unwrap();
    let category = Category {
        key: key.clone(),
        name: CategoryName::parse("Promo").unwrap(),
        description: None,
        critical: false,
        defaults: ChannelDefaults { email: true, push: true },
        created_at: now,
        updated_at: now,
    };
    CategoryRepository::create(store, category).await.expect("create");
    let register = async |email| {
        let created = UserRepository::create(store, record(email), None).await.expect("create");
        user_of(created).profile.user.id
    };
    let (erased, kept) = (register("erased@example.com").await, register("kept@example.com").await);
    let opt_out = ChoiceChange::Set(CategoryChoice { email: Some(false), push: None });
    for user in [erased, kept] {
        store.change_choice(user, &key, opt_out, now, &Provenance::default()).await.expect("choose").expect("user");
    }

    let mut eraser = fixture.db.pool().get().await.expect("a connection");
    eraser
        .batch_execute(&format!("BEGIN; DELETE FROM users WHERE id = '{}';", erased.as_uuid()))
        .await
        .expect("erase, uncommitted");
    let removing = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move { store.remove(&key, true, OffsetDateTime::now_utc(), &Provenance::default()).await })
    };
    commit_when_blocked(&fixture, eraser).await;

    let removed = removing.await.expect("the task").expect("the removal succeeds");
    assert_eq!(removed, CategoryRemoval::Removed(vec![kept]));
    assert_eq!(store.find(&key).await.expect("find"), None);
    assert_eq!(last_change(store, kept).await, ("categories.promo.email".to_owned(), Some("false".into()), None));
    let orphans = "SELECT count(*) AS count FROM consent_history WHERE user_id NOT IN (SELECT id FROM users)";
    assert_eq!(fixture.count(orphans).await, 0);
}

/// The hot statements are prepared once per connection and run again (issue 17): the
/// profile read, and the writes' SQL texts (`sql_query`, which diesel never keeps prepared
/// on its own: PostgreSQL would parse and plan them at every call, in a round trip of their
/// own).
#[tokio::test(flavor = "multi_thread")]
async fn the_hot_statements_are_prepared_once_per_connection() {
    const STATEMENTS: [(&str, &str); 5] = [
        ("the profile read", "FROM profile_documents"),
        ("the preferences write", "update_preferences_recorded("),
        ("the history append", "INSERT INTO consent_history"),
        ("the event append", "INSERT INTO event_sequences"),
        ("the device upsert", "WITH owner AS"),
    ];
    let db = TestDatabase::create().await.expect("create the test database");
    let settings = crate::pool::PoolSettings { max_size: 2, ..crate::pool::PoolSettings::new(db.url().to_owned()) };
    let pool = crate::pool::build(&settings).expect("pool");
    let store = PgStore::new(pool.clone());
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            user_of(store.create(record(&format!("prepared-{n}@example.com")), None).await.expect("create"))
                .profile
                .user
                .id,
        );
    }
    for (n, &id) in ids.iter().cycle().take(6).enumerate() {
        let update = PreferencesUpdate { email: Some(n % 2 == 0), ..PreferencesUpdate::default() };
        store.update_preferences(id, update, OffsetDateTime::now_utc(), &Provenance::default()).await.expect("write");
        let profile = store.find_profile(id).await.expect("read").expect("the user");
        assert_eq!(profile.preferences.email, n % 2 == 0);
        let token = format!("prepared-token-{n}");
        store
            .upsert(id, registration(&token), OffsetDateTime::now_utc(), &Provenance::default(), None)
            .await
            .expect("device");
    }
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut connection = pool.get().await.expect("a connection");
        let statements: Vec<PreparedStatement> = diesel_async::RunQueryDsl::load(
            diesel::sql_query(
                "SELECT statement, generic_plans + custom_plans AS runs FROM pg_prepared_statements \
                 WHERE statement NOT LIKE '%pg_prepared%'",
            ),
            &mut connection,
        )
        .await
        .expect("list the prepared statements");
        held.push((connection, statements));
    }
    for (name, text) in STATEMENTS {
        let runs: Vec<Vec<i64>> = held
            .iter()
            .map(|(_, statements)| {
                statements.iter().filter(|row| row.statement.contains(text)).map(|row| row.runs).collect()
            })
            .collect();
        assert!(runs.iter().flatten().any(|&count| count >= 2), "{name} was not prepared once and run again: {runs:?}");
        assert!(runs.iter().all(|texts| texts.len() <= 1), "{name} prepared more than once on a connection: {runs:?}");
    }
}

/// No write is acknowledged when its commit fails. A statement outside a transaction commits
/// at the protocol's `Sync`, after its rows and `CommandComplete` were sent; diesel-async's
/// `get_result` returns at the first row and drops the rest, so a failure at that commit (a
/// deferred trigger raising, the backend terminated, as a hostile run did every 0.3 s) was
/// lost and the write answered 200 unsaved (the preferences, the password, a device refresh).
/// Here every table refuses, at commit, every change made to it, and every write path must
/// fail and leave the data as it was.
#[tokio::test(flavor = "multi_thread")]
async fn no_write_is_acknowledged_when_its_commit_fails() {
    use domain::category::CategoryChoice;
    use domain::ports::{CategoryRepository, ChoiceChange};

    const REFUSE_EVERY_COMMIT: &str = r#"
        CREATE FUNCTION refuse_commit() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'commit refused (test)'; END $$;
        DO $$
        DECLARE target text;
        BEGIN
            FOR target IN SELECT tablename FROM pg_tables
                          WHERE schemaname = 'public' AND tablename NOT LIKE '\_\_%' LOOP
                EXECUTE format('CREATE CONSTRAINT TRIGGER refuse_commit AFTER INSERT OR UPDATE OR DELETE ON %I
                                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_commit()', target);
            END LOOP;
        END $$;
    "#;
    let fixture = PgFixture::new().await;
    let store = &fixture.store;
    let (now, by) = (OffsetDateTime::now_utc, Provenance::default());
    let id = user_of(UserRepository::create(store, record("commit@example.com"), None).await.expect("create"))
        .profile
        .user
        .id;
    store.upsert(id, registration("commit-token"), now(), &by, None).await.expect("device");
    let marketing = create_category(store, "marketing").await;
    let before = store.find_profile(id).await.expect("read").expect("the user");
    let hash = store.credentials_of(id).await.expect("credentials").expect("the user").password_hash;
    fixture.execute(REFUSE_EVERY_COMMIT).await;

    let mut acknowledged = Vec::new();
    let update = PreferencesUpdate { email: Some(!before.preferences.email), ..PreferencesUpdate::default() };
    if store.update_preferences(id, update, now(), &by).await.is_ok() {
        acknowledged.push("preferences");
    }
    let new_hash = domain::user::PasswordHash::new(format!("{}-changed", hash.as_str()));
    if store.replace_password_hash(id, hash.clone(), new_hash, true).await.is_ok() {
        acknowledged.push("password");
    }
    if store.upsert(id, registration("commit-token"), now(), &by, None).await.is_ok() {
        acknowledged.push("device refresh");
    }
    if store.upsert(id, registration("commit-token-2"), now(), &by, None).await.is_ok() {
        acknowledged.push("device registration");
    }
    let rename =
        ContactUpdate { name: Some(domain::user::UserName::parse("Renamed").unwrap()), ..ContactUpdate::default() };
    if store.update_contact(id, rename, now(), &by).await.is_ok() {
        acknowledged.push("contact");
    }
    let choice = ChoiceChange::Set(CategoryChoice { email: Some(false), push: None });
    if store.change_choice(id, &marketing, choice, now(), &by).await.is_ok() {
        acknowledged.push("category choice");
    }
    let device = DeviceSelector::parse("commit-token").unwrap();
    if store.set_active(id, &device, false, now(), &by).await.is_ok() {
        acknowledged.push("device activation");
    }
    if UserRepository::create(store, record("second@example.com"), None).await.is_ok() {
        acknowledged.push("registration");
    }
    assert!(acknowledged.is_empty(), "writes acknowledged although their commit failed: {acknowledged:?}");

    let after = store.find_profile(id).await.expect("read").expect("the user");
    assert_eq!(after.preferences.email, before.preferences.email, "the preferences changed");
    assert_eq!(after.user.name, before.user.name, "the name changed");
    assert_eq!(after.devices.len(), before.devices.len(), "the devices changed");
    let stored = store.credentials_of(id).await.expect("credentials").expect("the user");
    assert_eq!(stored.password_hash.as_str(), hash.as_str(), "the password changed");
}

/// No statement of a request's path is parsed and planned at every call (issue 17): each
/// path runs a few times on a pool of two connections, and every statement a connection ran
/// twice must have been kept prepared by its statement cache. Found by this test: diesel never
/// caches an insert of a struct with an `Option` field (`None` becomes `DEFAULT`, so the text
/// may change), which was the registration's user and preferences rows, parsed and planned at
/// every registration in a round trip of their own.
#[tokio::test(flavor = "multi_thread")]
async fn no_statement_of_a_request_path_is_parsed_again_on_its_connection() {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use diesel::connection::{Instrumentation, InstrumentationEvent};
    use diesel_async::{AsyncConnection, AsyncPgConnection};
    use domain::category::CategoryChoice;
    use domain::ports::{CategoryRepository, ChoiceChange, EventOutbox};
    use domain::preferences::{ClockTime, QuietHours};
    use domain::user::PhoneNumber;
    use futures_util::FutureExt;

    /// (connection, started: the statement's text), or (connection, cached: its text).
    static EVENTS: Mutex<Vec<(usize, bool, String)>> = Mutex::new(Vec::new());
    static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
    /// Transaction control, sent as simple queries: nothing to plan.
    const UNPLANNED: [&str; 3] = ["BEGIN", "COMMIT", "ROLLBACK"];

    fn recorder(connection: usize) -> impl Instrumentation {
        move |event: InstrumentationEvent<'_>| {
            let recorded = match event {
                InstrumentationEvent::StartQuery { query, .. } => {
                    let text = query.to_string();
                    (true, text.split(" -- binds: ").next().unwrap_or_default().to_owned())
                }
                InstrumentationEvent::CacheQuery { sql, .. } => (false, sql.to_owned()),
                _ => return,
            };
            EVENTS.lock().unwrap().push((connection, recorded.0, recorded.1));
        }
    }
    fn establish(url: String) -> futures_util::future::BoxFuture<'static, diesel::ConnectionResult<AsyncPgConnection>> {
        async move {
            let mut connection = AsyncPgConnection::establish(&url).await?;
            connection.set_instrumentation(recorder(CONNECTIONS.fetch_add(1, Ordering::Relaxed)));
            Ok(connection)
        }
        .boxed()
    }

    let db = TestDatabase::create().await.expect("create the test database");
    let settings = crate::pool::PoolSettings { max_size: 2, ..crate::pool::PoolSettings::new(db.url().to_owned()) };
    let limits = adapters_sql_common::pool::PoolLimits {
        max_size: settings.max_size,
        wait_timeout: settings.wait_timeout,
        connect_timeout: settings.connect_timeout,
        prepared_statements: true,
    };
    let pool = adapters_sql_common::pool::build_with(db.url(), String::new(), limits, establish).expect("pool");
    let store = PgStore::new(pool);
    let now = OffsetDateTime::now_utc;
    let by = Provenance::default();
    let marketing = create_category(&store, "marketing").await;

    let broker = adapters_sql_common::contract::RecordingPublisher::default();
    // Each path several times: on two connections, one of them runs it at least twice.
    for round in 0..4 {
        // A registration as the gateway sends it (no phone, default preferences), and one with
        // every optional part: a phone, quiet hours, a device.
        let plain = user_of(
            UserRepository::create(&store, record(&format!("plain-{round}@example.com")), None).await.expect("create"),
        );
        let mut full = record(&format!("full-{round}@example.com"));
        full.phone = Some(PhoneNumber::parse("+15555550123").unwrap());
        let window = QuietHours::new(ClockTime::parse("22:00").unwrap(), ClockTime::parse("07:00").unwrap()).unwrap();
        full.preferences.quiet_hours = Some(window);
        full.device = Some(registration(&format!("full-token-{round}")));
        let full = user_of(UserRepository::create(&store, full, None).await.expect("create with every part"));
        let (id, other) = (plain.profile.user.id, full.profile.user.id);

        store.find_profile(id).await.expect("read").expect("the user");
        store.find_profiles(&[id, other]).await.expect("read both");
        assert!(store.exists(id).await.expect("exists"));
        store.token_version(id).await.expect("token version").expect("the user");
        store.credentials_of(id).await.expect("credentials").expect("the user");
        let email = EmailAddress::parse(&format!("plain-{round}@example.com")).unwrap();
        store.find_credentials(&email).await.expect("credentials by email").expect("the user");
        let rename = ContactUpdate {
            name: Some(domain::user::UserName::parse("Jane Doe").unwrap()),
            ..ContactUpdate::default()
        };
        store.update_contact(id, rename, now(), &by).await.expect("contact").expect("the user");
        let update = PreferencesUpdate { email: Some(round % 2 == 0), ..PreferencesUpdate::default() };
        store.update_preferences(id, update, now(), &by).await.expect("preferences").expect("the user");
        let choice = ChoiceChange::Set(CategoryChoice { email: Some(false), push: None });
        store.change_choice(id, &marketing, choice, now(), &by).await.expect("choice").expect("the user");
        let token = format!("plain-token-{round}");
        store.upsert(id, registration(&token), now(), &by, None).await.expect("device");
        DeviceRepository::list(&store, id).await.expect("devices").expect("the user");
        let device = DeviceSelector::parse(&token).unwrap();
        store.set_active(id, &device, false, now(), &by).await.expect("deactivate").expect("the device");
        DeviceRepository::delete(&store, id, &device, now(), &by).await.expect("remove the device");
        UserRepository::delete(&store, other).await.expect("delete");
        // The relay's rounds: without a broker (the feed only), then publishing what they
        // sequenced.
        store.relay(None, 100, now()).await.expect("a relay round");
        let update = PreferencesUpdate { email: Some(round % 2 == 1), ..PreferencesUpdate::default() };
        store.update_preferences(id, update, now(), &by).await.expect("preferences").expect("the user");
        store.relay(Some(&broker), 100, now()).await.expect("a relay round with a broker");
        // And the relay task's backlog count (the prune is planned at each call, on purpose).
        store.backlog(true).await.expect("the backlog");
    }

    let events = std::mem::take(&mut *EVENTS.lock().unwrap());
    let mut started: HashMap<(usize, &str), usize> = HashMap::new();
    let mut cached: HashSet<(usize, &str)> = HashSet::new();
    for (connection, start, text) in &events {
        if *start {
            *started.entry((*connection, text.as_str())).or_default() += 1;
        } else {
            cached.insert((*connection, text.as_str()));
        }
    }
    let mut parsed_again: Vec<&str> = started
        .iter()
        .filter(|((_, text), runs)| **runs >= 2 && !UNPLANNED.contains(text))
        .filter(|(key, _)| !cached.contains(*key))
        .map(|((_, text), _)| *text)
        .collect();
    parsed_again.sort_unstable();
    parsed_again.dedup();
    assert!(started.len() > 10, "the recorder saw the statements: {started:?}");
    assert!(parsed_again.is_empty(), "statements parsed and planned at every call: {parsed_again:#?}");
}

/// A row of `pg_prepared_statements`.
#[derive(diesel::QueryableByName)]
struct PreparedStatement {
    #[diesel(sql_type = diesel::sql_types::Text)]
    statement: String,
    /// How many times it ran (its plans, custom and generic).
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    runs: i64,
}

/// A schema change that alters the result type of a statement a connection keeps prepared
/// (a newer release's migration, during a rolling deploy) fails that statement once, as a
/// retryable outage; the connection is then dropped, and the next call prepares it again on
/// a new one (diesel's statement cache never forgets an entry: kept, the connection would
/// fail that write until it closed).
#[tokio::test(flavor = "multi_thread")]
async fn a_statement_whose_result_type_a_migration_changed_fails_once_then_works() {
    let db = TestDatabase::create().await.expect("create the test database");
    let settings = crate::pool::PoolSettings { max_size: 2, ..crate::pool::PoolSettings::new(db.url().to_owned()) };
    let store = PgStore::new(crate::pool::build(&settings).expect("pool"));
    let user = user_of(store.create(record("stale@example.com"), None).await.expect("create")).profile.user.id;
    let register = async |token: &str| {
        store.upsert(user, registration(token), OffsetDateTime::now_utc(), &Provenance::default(), None).await
    };
    register("warm-token").await.expect("prepares the upsert");
    let mut connection = db.pool().get().await.expect("a connection");
    connection.batch_execute("ALTER TABLE devices ALTER COLUMN platform TYPE varchar(32)").await.expect("alter");
    drop(connection);
    let first = register("after-the-change").await;
    assert!(matches!(first, Err(RepositoryError::Unavailable(_)) | Ok(_)), "a retryable outage at most: {first:?}");
    register("again").await.expect("a new connection prepares the statement on the new schema");
    register("and-again").await.expect("and keeps working");
}

/// Users whose stored document is missing or is not what their rows say now: must be none.
const STALE_DOCUMENTS: &str = "SELECT count(*) AS count FROM users AS u \
                               LEFT JOIN profile_documents AS d ON d.user_id = u.id \
                               WHERE d.document IS DISTINCT FROM profile_document(u.id)";

/// Every user has a document, it is what its rows say now, and the profile read from it is
/// the profile the join reads.
async fn assert_documents_current(fixture: &PgFixture, users: &[UserId], after: &str) {
    assert_eq!(fixture.count(STALE_DOCUMENTS).await, 0, "a document is missing or behind its rows after {after}");
    for &id in users {
        let read = fixture.store.find_profile(id).await.expect("read");
        let joined = fixture.store.find_profiles(&[id]).await.expect("join").pop();
        assert_eq!(read, joined, "the document and the join disagree after {after}");
    }
}

/// Issue 17's profile documents: a read that misses the cache reads one row, which the
/// database rewrites at the commit of every write of what a profile shows. After each kind
/// of write (through the store, and around it in SQL, as an operator or another service
/// version would), every document is current and reads as the join does.
#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_write_leaves_the_profile_documents_current() {
    use domain::category::{Category, CategoryChoice, CategoryKey, CategoryName, ChannelDefaults};
    use domain::ports::{CategoryRepository, ChoiceChange};
    use domain::preferences::{ClockTime, QuietHours, TimeZoneName};
    use domain::user::{PhoneNumber, UserName};

    let fixture = PgFixture::new().await;
    let store = &fixture.store;
    let by = Provenance::default();
    let now = OffsetDateTime::now_utc();
    let mut with_device = record("first@example.com");
    with_device.device = Some(registration("doc-token-1"));
    let first = user_of(UserRepository::create(store, with_device, None).await.expect("create")).profile.user.id;
    let second = user_of(UserRepository::create(store, record("second@example.com"), None).await.expect("create"))
        .profile
        .user
        .id;
    let users = [first, second];
    assert_documents_current(&fixture, &users, "registrations").await;
    assert_eq!(fixture.count("SELECT count(*) AS count FROM profile_documents").await, 2);

    let contact = ContactUpdate {
        name: Some(UserName::parse("Renamed").unwrap()),
        email: Some(EmailAddress::parse("renamed@example.com").unwrap()),
        phone: Some(Some(PhoneNumber::parse("+2348012345678").unwrap())),
    };
    store.update_contact(first, contact, now, &by).await.expect("contact").expect("user");
    assert_documents_current(&fixture, &users, "a contact change").await;

    let window = QuietHours::new(ClockTime::parse("22:15").unwrap(), ClockTime::parse("07:45").unwrap()).unwrap();
    let update = PreferencesUpdate {
        email: Some(false),
        push: Some(false),
        quiet_hours: Some(Some(window)),
        timezone: Some(TimeZoneName::parse("Africa/Lagos").unwrap()),
    };
    store.update_preferences(first, update, now, &by).await.expect("preferences").expect("user");
    assert_documents_current(&fixture, &users, "a preferences change").await;

    store.upsert(first, registration("doc-token-2"), now, &by, None).await.expect("a second device");
    store.upsert(first, registration("doc-token-1"), now + Duration::seconds(1), &by, None).await.expect("a refresh");
    assert_documents_current(&fixture, &users, "a registration and a refresh").await;
    store.upsert(second, registration("doc-token-2"), now, &by, None).await.expect("moved to the second user");
    assert_documents_current(&fixture, &users, "a token moving to another user").await;
    // Back: the owners' UUIDs the other way round (the trigger refreshes the smaller first).
    store.upsert(first, registration("doc-token-2"), now + Duration::seconds(2), &by, None).await.expect("moved back");
    assert_documents_current(&fixture, &users, "a token moving back").await;
    store.upsert(second, registration("doc-token-2"), now + Duration::seconds(3), &by, None).await.expect("and over");
    assert_documents_current(&fixture, &users, "a token moving over again").await;
    let selector = DeviceSelector::parse("doc-token-1").unwrap();
    store.set_active(first, &selector, false, now, &by).await.expect("deactivate").expect("the device");
    assert_documents_current(&fixture, &users, "a deactivation").await;
    assert!(DeviceRepository::delete(store, first, &selector, now, &by).await.expect("delete the device"));
    assert_documents_current(&fixture, &users, "a device's deletion").await;

    let key = CategoryKey::parse("digest").unwrap();
    let category = Category {
        key: key.clone(),
        name: CategoryName::parse("Digest").unwrap(),
        description: None,
        critical: false,
        defaults: ChannelDefaults { email: true, push: true },
        created_at: now,
        updated_at: now,
    };
    CategoryRepository::create(store, category).await.expect("a category");
    let opt_out = ChoiceChange::Set(CategoryChoice { email: Some(false), push: None });
    for user in users {
        store.change_choice(user, &key, opt_out, now, &by).await.expect("choose").expect("user");
    }
    assert_documents_current(&fixture, &users, "category choices").await;
    store.remove(&key, true, now, &by).await.expect("a forced removal drops the choices");
    assert_documents_current(&fixture, &users, "a category's removal").await;

    // Around the service: one statement, no transaction of its own, several users at once.
    fixture
        .execute(
            "UPDATE devices SET platform = 'ios', last_seen_at = last_seen_at + interval '1 hour'; \
             UPDATE notification_preferences SET quiet_hours_start = '23:59:59.999999', quiet_hours_end = '00:00'; \
             UPDATE users SET phone = NULL",
        )
        .await;
    assert_documents_current(&fixture, &users, "statements run around the service").await;
    let read = store.find_profile(second).await.expect("read").expect("the user");
    assert_eq!(read.devices.iter().map(|device| device.platform).collect::<Vec<_>>(), [Platform::Ios]);
    // PostgreSQL's `time` holds 24:00, which both reads take for midnight.
    fixture.execute("UPDATE notification_preferences SET quiet_hours_start = '24:00', quiet_hours_end = '07:00'").await;
    assert_documents_current(&fixture, &users, "a quiet window starting at 24:00").await;
    // A session replaying changes as a replica (logical replication's apply, sync tools).
    fixture
        .execute(
            "SET session_replication_role = replica;              UPDATE notification_preferences SET email_enabled = NOT email_enabled;              RESET session_replication_role",
        )
        .await;
    assert_documents_current(&fixture, &users, "changes applied as a replica").await;
    // TRUNCATE fires no row trigger.
    fixture.execute("TRUNCATE devices").await;
    assert_documents_current(&fixture, &users, "a TRUNCATE of the devices").await;
    assert!(store.find_profile(second).await.expect("read").expect("the user").devices.is_empty());

    assert!(UserRepository::delete(store, first).await.expect("erase"));
    assert_documents_current(&fixture, &[second], "an erasure").await;
    assert_eq!(store.find_profile(first).await.expect("read"), None);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM profile_documents").await, 1);
}

/// Writers of one user at once that share no lock of their own (a token's refresh locks its
/// device's row, a preferences change the preferences' row): whatever order their commits
/// take, the document is the one the last commit's rows make (each builds it under the
/// document's lock, at commit, from a snapshot holding every write before it). Without that
/// lock two writers each build it without the other's change and one of them wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_of_one_user_leave_its_document_current() {
    const WRITERS: usize = 6;
    const ROUNDS: usize = 40;
    let fixture = PgFixture::new().await;
    let store = fixture.store.clone();
    let user = user_of(UserRepository::create(&store, record("racing@example.com"), None).await.expect("create"))
        .profile
        .user
        .id;
    let token = |writer: usize| format!("race-token-{writer}");
    for writer in 0..WRITERS {
        store
            .upsert(user, registration(&token(writer)), OffsetDateTime::now_utc(), &Provenance::default(), None)
            .await
            .expect("a device");
    }
    for round in 0..ROUNDS {
        let start = Arc::new(Barrier::new(WRITERS));
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (store, start, token) = (store.clone(), Arc::clone(&start), token(writer));
                tokio::spawn(async move {
                    start.wait().await;
                    let now = OffsetDateTime::now_utc();
                    if writer == 0 {
                        let update = PreferencesUpdate { email: Some(round % 2 == 0), ..PreferencesUpdate::default() };
                        store.update_preferences(user, update, now, &Provenance::default()).await.map(drop)
                    } else {
                        store.upsert(user, registration(&token), now, &Provenance::default(), None).await.map(drop)
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.expect("the task").expect("the write");
        }
        assert_documents_current(&fixture, &[user], &format!("round {round} of concurrent writes")).await;
    }
}

/// Users registered before the documents' migration get theirs when it is applied (its
/// backfill), and read as the join does; its `down.sql` removes everything it made.
#[tokio::test(flavor = "multi_thread")]
async fn the_documents_migration_writes_a_document_for_every_user_already_there() {
    const DOWN: &str = include_str!("../../../migrations/2026-12-03-000002_create_profile_documents/down.sql");
    let fixture = PgFixture::new().await;
    fixture.execute(&format!("{DOWN}; DELETE FROM __diesel_schema_migrations WHERE version = '20261203000002'")).await;
    let tables = "SELECT count(*) AS count FROM pg_tables WHERE tablename = 'profile_documents'";
    assert_eq!(fixture.count(tables).await, 0);
    let mut users = Vec::new();
    for n in 0..3 {
        let mut new_user = record(&format!("before-{n}@example.com"));
        new_user.device = Some(registration(&format!("before-token-{n}")));
        users.push(
            user_of(UserRepository::create(&fixture.store, new_user, None).await.expect("create")).profile.user.id,
        );
    }
    let applied = crate::migrations::run_pending(fixture.db.pool()).await.expect("apply the documents' migration");
    assert_eq!(applied, 1);
    assert_eq!(fixture.count("SELECT count(*) AS count FROM profile_documents").await, 3);
    assert_documents_current(&fixture, &users, "the migration").await;
}

/// A rolling upgrade: the previous version keeps writing while an instance of this one
/// applies the documents' migration, which locks the four tables. A running write that
/// holds one of them and then wants another closes a cycle with it; PostgreSQL aborts the
/// migration, which is then tried again: the instance starts, and the write commits.
#[tokio::test(flavor = "multi_thread")]
async fn the_documents_migration_deadlocked_by_a_running_write_is_tried_again() {
    const DOWN: &str = include_str!("../../../migrations/2026-12-03-000002_create_profile_documents/down.sql");
    const WAITING: &str = "SELECT count(*) AS count FROM pg_stat_activity \
                           WHERE datname = current_database() AND wait_event_type = 'Lock'";
    let fixture = PgFixture::new().await;
    fixture.execute(&format!("{DOWN}; DELETE FROM __diesel_schema_migrations WHERE version = '20261203000002'")).await;
    let user =
        user_of(UserRepository::create(&fixture.store, record("upgrade@example.com"), None).await.expect("create"))
            .profile
            .user
            .id;
    let id = user.as_uuid();
    let first_statement =
        format!("UPDATE notification_preferences SET push_enabled = NOT push_enabled WHERE user_id = '{id}'");
    let second_statement = format!("UPDATE users SET name = 'Upgraded' WHERE id = '{id}'; COMMIT");
    let mut writer = fixture.db.pool().get().await.expect("a connection");
    writer.batch_execute(&format!("BEGIN; {first_statement}")).await.expect("the previous version's write, under way");
    let migrating = {
        let pool = fixture.db.pool().clone();
        tokio::spawn(async move { crate::migrations::run_pending(&pool).await.map_err(|error| error.to_string()) })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fixture.count(WAITING).await == 0 {
        assert!(std::time::Instant::now() < deadline, "the migration never waited for the running write");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // PostgreSQL checks a wait for a deadlock once, a second after it began: the migration's
    // check finds the cycle and the migration tries again, unless (on a loaded machine) the
    // write came later than that; the write's own check then finds it, and the write fails
    // as any write may: tried again, it succeeds, the migration applied.
    if let Err(error) = writer.batch_execute(&second_statement).await {
        assert!(error.to_string().contains("deadlock"), "the running write failed: {error}");
        writer.batch_execute("ROLLBACK").await.expect("the failed write rolls back");
        let write = format!("BEGIN; {first_statement}; {second_statement}");
        writer.batch_execute(&write).await.expect("the write, tried again");
    }
    assert_eq!(migrating.await.expect("the task"), Ok(1), "the migration is applied once, after its deadlock");
    assert_documents_current(&fixture, &[user], "a migration that deadlocked").await;
}
