//! SQLite adapter, the embedded default store: implements the domain's
//! [`UserRepository`](domain::ports::UserRepository),
//! [`DeviceRepository`](domain::ports::DeviceRepository),
//! [`IdempotencyRepository`](domain::ports::IdempotencyRepository),
//! [`CategoryRepository`](domain::ports::CategoryRepository) and
//! [`ConsentHistory`](domain::ports::ConsentHistory) on one data file,
//! `{data_dir}/user-service.sqlite3`, with SQLite compiled in (no system library).
//!
//! - [`open`]: creates the data directory, builds the pool, applies the migrations.
//! - [`pool`]: synchronous diesel connections behind diesel-async's `SyncConnectionWrapper`
//!   on a deadpool pool, with explicit timeouts and per-connection pragmas (WAL,
//!   `foreign_keys`, `busy_timeout`, `synchronous = NORMAL`).
//! - [`migrations`]: this crate's own SQL migrations (SQLite dialect), embedded.
//! - [`SqliteStore`]: the repositories.
//!
//! # Concurrency
//!
//! Each unit of work (a port call) runs as one closure on a blocking thread, on the
//! synchronous connection; once started it runs to the end even if the request is dropped,
//! so no transaction is left open. Readers run in parallel (WAL). Every change runs in a
//! `BEGIN IMMEDIATE` transaction, which takes SQLite's single write lock up front, so that a
//! transaction never has to upgrade a read lock (the case where SQLite fails with
//! `SQLITE_BUSY` instead of waiting). Within the process, writers also queue on an async
//! mutex first, so that they wait their turn without polling SQLite's lock; `busy_timeout`
//! covers other processes on the same file.
//!
//! Because writers are serialized, checks made inside a write transaction hold until it
//! commits: a taken email and an unknown owner are found by a query rather than by the
//! violated constraint (SQLite does not name it, see [`errors`]) as are a taken category key
//! and an unknown category, an idempotency key is claimed by looking for its record, and
//! the consent history's old values and latest time are read without any lock of their own.
//! No idempotent write can be "in flight" when another
//! one with the same key starts its transaction: the second waits for the first to commit,
//! then replays its answer.
//!
//! Needs tokio's multi-thread runtime (diesel-async's blocking wrapper uses
//! `block_in_place` when a request is dropped mid-statement). Nothing here logs secrets:
//! only the data file's path and migration counts are logged.

mod categories;
mod devices;
pub mod errors;
mod history;
mod idempotency;
mod ledger;
pub mod migrations;
mod outbox;
pub mod pool;
mod schema;
#[cfg(feature = "test-support")]
pub mod testing;
#[cfg(test)]
mod tests;
mod users;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use diesel::SqliteConnection;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel_async::RunQueryDsl as _;
use domain::error::BoxError;
use domain::ports::{HealthProbe, RepositoryError};

use crate::errors::{StoreError, from_diesel, from_pool_error};
pub use crate::pool::{SqlitePool, SqliteSettings};

/// The data file's name inside the data directory.
pub const DATA_FILE_NAME: &str = "user-service.sqlite3";

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory could not be created.
    #[error("cannot create the data directory {}", path.display())]
    DataDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another process has the data directory open: the embedded store is one process's
    /// (its cache and its event relay are in process).
    #[error(
        "another user-service process uses the data directory {} (its lock file is held); \
         run one process per DATA_DIR, or PostgreSQL (DATABASE_URL) for several instances",
        path.display()
    )]
    InUse {
        /// The data directory.
        path: PathBuf,
    },
    /// SQLite takes file names as UTF-8.
    #[error("the data file path {} is not valid UTF-8", .0.display())]
    NonUtf8Path(PathBuf),
    /// The pool could not be built.
    #[error("cannot build the SQLite connection pool")]
    Pool(#[source] deadpool::managed::BuildError),
    /// The data file could not be opened or migrated.
    #[error("cannot open or migrate the data file {}", path.display())]
    Migrations {
        /// The data file.
        path: PathBuf,
        /// Why.
        #[source]
        source: BoxError,
    },
}

/// Opens the store in `data_dir` (created if missing, with its parents): the data file is
/// `{data_dir}/user-service.sqlite3`, created and migrated if needed.
pub async fn open(data_dir: &Path, settings: &SqliteSettings) -> Result<SqliteStore, OpenError> {
    // Start-up only, and quick: not worth a blocking thread.
    std::fs::create_dir_all(data_dir)
        .map_err(|source| OpenError::DataDirectory { path: data_dir.to_owned(), source })?;
    let lock = lock_data_dir(data_dir)?;
    let data_file = data_dir.join(DATA_FILE_NAME);
    let path = data_file.to_str().ok_or_else(|| OpenError::NonUtf8Path(data_file.clone()))?;
    let pool = pool::build(path, settings).map_err(OpenError::Pool)?;
    let applied = migrations::run_pending(&pool)
        .await
        .map_err(|source| OpenError::Migrations { path: data_file.clone(), source })?;
    tracing::info!(data_file = %data_file.display(), applied, "SQLite store open, migrations up to date");
    Ok(SqliteStore {
        data_dir_lock: Arc::new(std::sync::Mutex::new(Some(lock))),
        ..SqliteStore::new(pool, settings.wait_timeout)
    })
}

/// The lock file of the data directory, held (an exclusive advisory lock) for as long as
/// the store lives: a second process on the same directory would run a second in-process
/// cache and a second event relay over one file, neither of which sees the other's.
const LOCK_FILE_NAME: &str = "user-service.lock";

fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, OpenError> {
    let path = data_dir.join(LOCK_FILE_NAME);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OpenError::DataDirectory { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::InUse { path: data_dir.to_owned() }),
        Err(std::fs::TryLockError::Error(source)) => Err(OpenError::DataDirectory { path, source }),
    }
}

/// The SQLite-backed repositories, cheap to clone (it holds the pool).
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Writers of this process take turns here before `BEGIN IMMEDIATE` (see the crate docs).
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Held by this process's event relay round (one at a time).
    relay: Arc<tokio::sync::Mutex<()>>,
    /// The data directory's lock (see [`open`]), released by [`SqliteStore::close`] or when
    /// the last clone goes.
    data_dir_lock: Arc<std::sync::Mutex<Option<std::fs::File>>>,
    wait_timeout: Duration,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("pool", &self.pool.status()).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Wraps a pool built by [`pool::build`] on a migrated data file; writers wait at most
    /// `wait_timeout` for their turn. [`open`] does all of it.
    pub fn new(pool: SqlitePool, wait_timeout: Duration) -> Self {
        Self {
            pool,
            writer: Arc::new(tokio::sync::Mutex::new(())),
            relay: Arc::new(tokio::sync::Mutex::new(())),
            data_dir_lock: Arc::default(),
            wait_timeout,
        }
    }

    /// The underlying pool (for health reporting and metrics).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes the pool and releases the data directory for another process, whatever
    /// clones of the store still exist (they can no longer reach the file).
    pub fn close(&self) {
        self.pool.close();
        if let Ok(mut lock) = self.data_dir_lock.lock() {
            lock.take();
        }
    }

    /// Runs `query` on a pooled connection, on a blocking thread. Queries that read more
    /// than once wrap themselves in a (deferred) transaction to read one snapshot.
    async fn read<R: Send + 'static>(
        &self,
        query: impl FnOnce(&mut SqliteConnection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, RepositoryError> {
        let mut connection = self.pool.get().await.map_err(from_pool_error)?;
        let outcome = connection.spawn_blocking(move |connection| Ok(query(connection))).await.map_err(from_diesel)?;
        Ok(outcome?)
    }

    /// Runs `change` in a `BEGIN IMMEDIATE` transaction on a pooled connection, on a
    /// blocking thread, after this process's previous writers.
    async fn write<R: Send + 'static>(
        &self,
        change: impl FnOnce(&mut SqliteConnection) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, RepositoryError> {
        // Held until the transaction ended: dropping the future waits for the blocking task.
        let _turn = tokio::time::timeout(self.wait_timeout, self.writer.lock())
            .await
            .map_err(|_| RepositoryError::Unavailable("timed out waiting for the SQLite write lock".into()))?;
        let mut connection = self.pool.get().await.map_err(from_pool_error)?;
        let outcome = connection
            .spawn_blocking(move |connection| Ok(immediate_transaction(connection, change)))
            .await
            .map_err(from_diesel)?;
        Ok(outcome?)
    }
}

/// Runs `change` in a `BEGIN IMMEDIATE` transaction: committed when it succeeds, rolled back
/// when it fails.
fn immediate_transaction<R>(
    connection: &mut SqliteConnection,
    change: impl FnOnce(&mut SqliteConnection) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    // Failing to begin means the write lock stayed taken for the whole busy timeout (by
    // another process): the store is busy, not broken.
    AnsiTransactionManager::begin_transaction_sql(connection, "BEGIN IMMEDIATE")
        .map_err(|error| RepositoryError::Unavailable(Box::new(error)))?;
    match change(connection) {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(connection)?;
            Ok(value)
        }
        Err(error) => {
            // The change's error is the one to report; a failed rollback leaves the
            // connection marked broken, and the pool discards it.
            let _ = AnsiTransactionManager::rollback_transaction(connection);
            Err(error)
        }
    }
}

#[async_trait]
impl HealthProbe for SqliteStore {
    async fn check(&self) -> Result<(), BoxError> {
        let mut connection = self.pool.get().await?;
        diesel::sql_query("SELECT 1").execute(&mut connection).await?;
        Ok(())
    }
}
