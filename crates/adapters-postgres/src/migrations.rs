//! The SQL migrations of the workspace's `migrations/` folder, embedded in the binary.
//!
//! Instances started together (an autoscaler, `docker compose up --scale`) each apply the
//! pending migrations at start: they take turns on a PostgreSQL advisory lock, so the first
//! applies them and the others find nothing pending, instead of racing on the same `CREATE`.

use diesel::sql_query;
use diesel::sql_types::BigInt;
use diesel_async::{AsyncMigrationHarness, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use domain::error::BoxError;

use crate::pool::PgPool;

/// Every migration, in order.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// The session advisory lock held while migrations run ("usermigr"): any instance of this
/// service on the database waits for it, nothing else takes it.
const MIGRATION_LOCK_KEY: i64 = 0x7573_6572_6d69_6772;

/// Applies the pending migrations and returns how many ran; waits while another instance
/// applies them.
///
/// Needs tokio's multi-thread runtime: the harness blocks in place.
pub async fn run_pending(pool: &PgPool) -> Result<usize, BoxError> {
    let mut connection = pool.get().await?;
    sql_query("SELECT pg_advisory_lock($1)").bind::<BigInt, _>(MIGRATION_LOCK_KEY).execute(&mut connection).await?;
    let mut harness = AsyncMigrationHarness::new(connection);
    let applied = harness.run_pending_migrations(MIGRATIONS).map(|applied| applied.len());
    let mut connection = harness.into_inner();
    let unlocked =
        sql_query("SELECT pg_advisory_unlock($1)").bind::<BigInt, _>(MIGRATION_LOCK_KEY).execute(&mut connection).await;
    if unlocked.is_err() {
        // A connection that may still hold the lock never goes back to the pool: closing it
        // releases the lock, where a pooled one would keep every other instance waiting.
        drop(deadpool::managed::Object::take(connection));
    }
    applied
}

/// Reverts every applied migration (what the tests of `down.sql` use).
pub async fn revert_all(pool: &PgPool) -> Result<usize, BoxError> {
    let mut harness = AsyncMigrationHarness::new(pool.get().await?);
    Ok(harness.revert_all_migrations(MIGRATIONS)?.len())
}
