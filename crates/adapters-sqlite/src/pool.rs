//! The connection pool: synchronous SQLite connections behind diesel-async's
//! `SyncConnectionWrapper` (each statement runs on tokio's blocking threads), with explicit
//! sizes and timeouts and the same settings on every connection.

use std::time::Duration;

use adapters_sql_common::pool::PoolLimits;
use diesel::SqliteConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;

/// A SQLite connection usable from async code.
pub type AsyncSqliteConnection = SyncConnectionWrapper<SqliteConnection>;
/// The pool type used by the store.
pub type SqlitePool = diesel_async::pooled_connection::deadpool::Pool<AsyncSqliteConnection>;
/// A connection checked out of the pool.
pub type PooledSqliteConnection = diesel_async::pooled_connection::deadpool::Object<AsyncSqliteConnection>;

/// How to size and time the pool.
#[derive(Debug, Clone)]
pub struct SqliteSettings {
    /// The most connections kept open (at least 2). Readers run in parallel (WAL); writers
    /// take turns whatever the size.
    pub max_size: usize,
    /// How long a request waits for a free connection, or for its turn to write, before the
    /// store reports "unavailable".
    pub wait_timeout: Duration,
    /// How long opening (or recycling) a connection may take.
    pub open_timeout: Duration,
    /// How long SQLite itself waits for a lock held by another process on the same file
    /// (`PRAGMA busy_timeout`) before a statement fails.
    pub busy_timeout: Duration,
}

impl Default for SqliteSettings {
    /// 8 connections, 2 s wait, 5 s open, 5 s busy timeout.
    fn default() -> Self {
        Self {
            max_size: 8,
            wait_timeout: Duration::from_secs(2),
            open_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// The statements run on every new connection. `busy_timeout` comes first so that the
/// others wait for a lock instead of failing; WAL lets readers run beside the writer;
/// `synchronous = NORMAL` is durable across crashes of the process in WAL mode (only a
/// power loss can lose the last commits); foreign keys are off by default in SQLite.
pub fn session_setup(settings: &SqliteSettings) -> String {
    format!(
        "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        settings.busy_timeout.as_millis()
    )
}

/// Builds the pool on the data file at `path` (created on first connection if missing). No
/// connection is opened until the first request.
pub fn build(path: &str, settings: &SqliteSettings) -> Result<SqlitePool, deadpool::managed::BuildError> {
    let limits = PoolLimits {
        max_size: settings.max_size,
        wait_timeout: settings.wait_timeout,
        connect_timeout: settings.open_timeout,
        prepared_statements: true,
    };
    adapters_sql_common::pool::build(path, session_setup(settings), limits)
}
