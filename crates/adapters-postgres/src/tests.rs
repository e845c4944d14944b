//! Tests of [`PgStore`] against a real PostgreSQL, one database per test cloned from a
//! migrated template (see [`crate::testing`]): the repository contract suite shared with
//! SQLite (`adapters_sql_common::contract`), then what only PostgreSQL has to show (its
//! migrations' `down.sql`, the advisory lock that reports a key in flight).

use adapters_sql_common::contract::{self, StoreFixture};
use async_trait::async_trait;
use diesel::migration::MigrationSource;
use diesel::pg::Pg;
use diesel_async::SimpleAsyncConnection;
use domain::consent::Provenance;
use domain::device::{DeviceRegistration, Platform, PushToken, RegisteredDevice};
use domain::idempotency::{
    IdempotencyConflict, IdempotencyKey, Idempotent, IdempotentRequest, IdempotentWrite, StoredResponse,
};
use domain::ports::{DeviceRepository, NewUserRecord, RepositoryError, UserRepository};
use time::{Duration, OffsetDateTime};

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
        let store = PgStore::new(db.pool().clone());
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
                          'category_choices', 'consent_history')";
    const DIGEST_FUNCTION: &str = "SELECT count(*) AS count FROM pg_proc WHERE proname = 'device_token_digest'";
    let embedded = MigrationSource::<Pg>::migrations(&crate::migrations::MIGRATIONS).expect("embedded").len();
    assert!(embedded > 0);
    let fixture = PgFixture::new().await;
    assert_eq!(fixture.count(TABLES).await, 9);

    let reverted = crate::migrations::revert_all(fixture.db.pool()).await.expect("revert every migration");
    assert_eq!(reverted, embedded);
    assert_eq!(fixture.count(TABLES).await, 0);
    assert_eq!(fixture.count(DIGEST_FUNCTION).await, 0);

    let applied = crate::migrations::run_pending(fixture.db.pool()).await.expect("apply every migration");
    assert_eq!(applied, reverted);
    assert_eq!(fixture.count(TABLES).await, 9);
    assert_eq!(fixture.count(DIGEST_FUNCTION).await, 1);
    assert_eq!(crate::migrations::run_pending(fixture.db.pool()).await.expect("nothing pending"), 0);

    let mut new_user = record("john@example.com");
    new_user.device = Some(registration("token"));
    let created = fixture.store.create(new_user, None).await.expect("the schema works again");
    assert!(matches!(created, Idempotent::Executed(created) if created.profile.devices.len() == 1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_diesel_schema_declares_exactly_the_columns_the_migrations_create() {
    use crate::schema::{
        cache_invalidation_ledger, category_choices, category_revisions, consent_history, devices, idempotency_records,
        notification_categories, notification_preferences, users,
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
