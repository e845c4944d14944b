//! The SQL migrations of the workspace's `migrations/` folder, embedded in the binary.
//!
//! Instances started together (an autoscaler, `docker compose up --scale`) each apply the
//! pending migrations at start: they take turns on a PostgreSQL advisory lock, so the first
//! applies them and the others find nothing pending, instead of racing on the same `CREATE`.

use diesel::sql_types::{BigInt, Bool};
use diesel::{Connection, QueryableByName, RunQueryDsl, sql_query};
use diesel_async::AsyncMigrationHarness;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use domain::error::BoxError;

use crate::pool::PgPool;

/// Every migration, in order.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// The advisory lock taken around the migrations ("usermigr"): any instance of this service
/// on the database waits for it, nothing else takes it.
const MIGRATION_LOCK_KEY: i64 = 0x7573_6572_6d69_6772;

#[derive(QueryableByName)]
struct LockTaken {
    #[diesel(sql_type = Bool)]
    taken: bool,
}

/// Applies the pending migrations and returns how many ran; waits while another instance
/// applies them.
///
/// All of them run in one transaction that first takes the lock
/// (`pg_advisory_xact_lock`): the lock ends with the transaction whatever happens (an error,
/// a panic, a lost connection), never outlives it in a pooled connection, and holds on one
/// server connection behind a transaction-pooling PgBouncer too. Each migration is a
/// savepoint of it, and an instance waiting for the lock is not cut by the pool's statement
/// timeout (neither is a long migration).
///
/// A migration that locks tables the running writes also lock (a rolling upgrade: the
/// previous version keeps writing) may be chosen as a deadlock's victim: it is then rolled
/// back whole and tried again, a few times, instead of failing the instance's start.
///
/// Needs tokio's multi-thread runtime: the migrations run on the synchronous connection API,
/// blocking in place.
pub async fn run_pending(pool: &PgPool) -> Result<usize, BoxError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match run_pending_once(pool).await {
            Err(error) if attempt < ATTEMPTS && error.to_string().contains("deadlock detected") => {
                tracing::warn!(attempt, "the migrations deadlocked with running writes: trying again");
                tokio::time::sleep(std::time::Duration::from_millis(100) * attempt).await;
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

async fn run_pending_once(pool: &PgPool) -> Result<usize, BoxError> {
    let mut connection: AsyncConnectionWrapper<_> = AsyncConnectionWrapper::from(pool.get().await?);
    tokio::task::block_in_place(|| {
        connection.transaction::<usize, BoxError, _>(|connection| {
            sql_query("SET LOCAL statement_timeout = 0").execute(connection)?;
            let taken: LockTaken = sql_query("SELECT pg_try_advisory_xact_lock($1) AS taken")
                .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
                .get_result(connection)?;
            if !taken.taken {
                // Visible to an operator whose instance is not listening yet, and why.
                tracing::info!("another instance is applying the migrations: waiting for it");
                sql_query("SELECT pg_advisory_xact_lock($1)")
                    .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
                    .execute(connection)?;
            }
            Ok(connection.run_pending_migrations(MIGRATIONS)?.len())
        })
    })
}

/// Reverts every applied migration (what the tests of `down.sql` use).
pub async fn revert_all(pool: &PgPool) -> Result<usize, BoxError> {
    let mut harness = AsyncMigrationHarness::new(pool.get().await?);
    Ok(harness.revert_all_migrations(MIGRATIONS)?.len())
}
