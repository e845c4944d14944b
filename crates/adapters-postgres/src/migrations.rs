//! The SQL migrations of the workspace's `migrations/` folder, embedded in the binary.

use diesel_async::AsyncMigrationHarness;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use domain::error::BoxError;

use crate::pool::PgPool;

/// Every migration, in order.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Applies the pending migrations and returns how many ran.
///
/// Needs tokio's multi-thread runtime: the harness blocks in place.
pub async fn run_pending(pool: &PgPool) -> Result<usize, BoxError> {
    let mut harness = AsyncMigrationHarness::new(pool.get().await?);
    Ok(harness.run_pending_migrations(MIGRATIONS)?.len())
}

/// Reverts every applied migration (what the tests of `down.sql` use).
pub async fn revert_all(pool: &PgPool) -> Result<usize, BoxError> {
    let mut harness = AsyncMigrationHarness::new(pool.get().await?);
    Ok(harness.revert_all_migrations(MIGRATIONS)?.len())
}
