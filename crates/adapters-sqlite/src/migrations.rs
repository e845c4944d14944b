//! The SQLite migrations of this crate's `migrations/` folder, embedded in the binary (they
//! are SQLite's own: PostgreSQL's live in the workspace's `migrations/`).

use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use domain::error::BoxError;

use crate::pool::SqlitePool;

/// Every migration, in order.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Applies the pending migrations and returns how many ran.
pub async fn run_pending(pool: &SqlitePool) -> Result<usize, BoxError> {
    let mut connection = pool.get().await?;
    // The whole run happens on one blocking thread, on the synchronous connection.
    connection
        .spawn_blocking(|connection| Ok(connection.run_pending_migrations(MIGRATIONS).map(|applied| applied.len())))
        .await?
}

/// Reverts every applied migration (what the tests of `down.sql` use).
pub async fn revert_all(pool: &SqlitePool) -> Result<usize, BoxError> {
    let mut connection = pool.get().await?;
    connection
        .spawn_blocking(|connection| Ok(connection.revert_all_migrations(MIGRATIONS).map(|reverted| reverted.len())))
        .await?
}
