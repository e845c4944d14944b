//! The connection pool: explicit sizes and timeouts, so that an exhausted pool or a dead
//! server answers quickly (as "unavailable") instead of hanging requests.

use std::time::Duration;

use adapters_sql_common::pool::PoolLimits;
use diesel_async::AsyncPgConnection;

/// The pool type used by the store.
pub type PgPool = diesel_async::pooled_connection::deadpool::Pool<AsyncPgConnection>;
/// A connection checked out of the pool.
pub type PgConnection = diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>;

/// How to size and time the pool.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// The PostgreSQL URL (`postgres://` or `postgresql://`).
    pub url: String,
    /// The most connections kept open (at least 2).
    pub max_size: usize,
    /// How long a request waits for a free connection before the store reports "unavailable".
    pub wait_timeout: Duration,
    /// How long opening a new connection may take.
    pub connect_timeout: Duration,
    /// The server-side limit for one statement.
    pub statement_timeout: Duration,
    /// The name under which connections show in `pg_stat_activity`.
    pub application_name: String,
    /// Whether connections cache prepared statements (turn off behind PgBouncer in
    /// transaction mode).
    pub prepared_statements: bool,
}

impl PoolSettings {
    /// Defaults suited to a small instance: 16 connections, 2 s wait, 5 s connect, 5 s
    /// statements.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_size: 16,
            wait_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            application_name: "user-service".to_owned(),
            prepared_statements: true,
        }
    }
}

/// The statements every connection runs first: the statement timeout and the name it shows
/// in `pg_stat_activity`.
pub(crate) fn session_setup(settings: &PoolSettings) -> String {
    format!(
        "SET statement_timeout = {}; SET application_name = '{}'",
        settings.statement_timeout.as_millis(),
        settings.application_name.replace('\'', "''"),
    )
}

/// Builds the pool. No connection is opened until the first checkout: with
/// `MIGRATE_ON_STARTUP=false` the service starts (and reports itself unready) while the
/// database is still coming up.
pub fn build(settings: &PoolSettings) -> Result<PgPool, deadpool::managed::BuildError> {
    let session_setup = session_setup(settings);
    let limits = PoolLimits {
        max_size: settings.max_size,
        wait_timeout: settings.wait_timeout,
        connect_timeout: settings.connect_timeout,
        prepared_statements: settings.prepared_statements,
    };
    adapters_sql_common::pool::build(&settings.url, session_setup, limits)
}
