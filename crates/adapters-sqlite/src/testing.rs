//! Test support (feature `test-support`): stores on throwaway data directories, one per
//! test, removed when dropped.

use std::path::{Path, PathBuf};

use diesel::QueryableByName;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use domain::error::BoxError;

use crate::{OpenError, SqliteSettings, SqliteStore};

/// A directory of its own under the system's temporary directory, removed (with its
/// contents) when dropped.
#[derive(Debug)]
pub struct TempDataDir {
    path: PathBuf,
}

impl TempDataDir {
    /// Names a fresh directory; it is not created here ([`crate::open`] creates it).
    pub fn new() -> Self {
        let name = format!("user-service-test-{}", uuid::Uuid::new_v4().simple());
        Self { path: std::env::temp_dir().join(name) }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Default for TempDataDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A migrated, empty store of its own for one test.
#[derive(Debug)]
pub struct TestStore {
    store: SqliteStore,
    // Dropped after the store's fields, so that the directory goes last.
    dir: TempDataDir,
}

impl TestStore {
    /// Opens a store on a fresh data directory with the default settings. Needs tokio's
    /// multi-thread runtime.
    pub async fn create() -> Result<Self, OpenError> {
        let dir = TempDataDir::new();
        let store = crate::open(dir.path(), &SqliteSettings::default()).await?;
        Ok(Self { store, dir })
    }

    /// The store.
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs a query returning one integer column named `count`, for assertions.
    pub async fn count(&self, query: &str) -> Result<i64, BoxError> {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            count: i64,
        }
        let mut connection = self.store.pool().get().await?;
        let row: Count = diesel::sql_query(query).get_result(&mut connection).await?;
        Ok(row.count)
    }

    /// Runs SQL statements around the store.
    pub async fn execute(&self, sql: &str) -> Result<(), BoxError> {
        let mut connection = self.store.pool().get().await?;
        connection.batch_execute(sql).await?;
        Ok(())
    }
}
