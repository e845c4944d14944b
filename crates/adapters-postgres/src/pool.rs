//! The connection pool: explicit sizes and timeouts, so that an exhausted pool or a dead
//! server answers quickly (as "unavailable") instead of hanging requests.

use std::time::Duration;

use deadpool::Runtime;
use diesel_async::AsyncPgConnection;
use diesel_async::SimpleAsyncConnection;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod};
use futures_util::FutureExt;

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
        }
    }
}

/// Builds the pool. No connection is opened until the first request, so the service can
/// start (and report itself unready) while the database is still coming up.
pub fn build(settings: &PoolSettings) -> Result<PgPool, deadpool::managed::BuildError> {
    let session_setup = format!(
        "SET statement_timeout = {}; SET application_name = '{}'",
        settings.statement_timeout.as_millis(),
        settings.application_name.replace('\'', "''"),
    );
    let mut config = ManagerConfig::default();
    // `Verified` would add a round trip to every checkout; a broken connection is detected
    // on use and discarded by diesel-async instead.
    config.recycling_method = RecyclingMethod::Fast;
    config.custom_setup = Box::new(move |url| {
        let session_setup = session_setup.clone();
        let url = url.to_owned();
        async move {
            use diesel_async::AsyncConnection;
            let mut connection = AsyncPgConnection::establish(&url).await?;
            connection
                .batch_execute(&session_setup)
                .await
                .map_err(|error| diesel::ConnectionError::BadConnection(error.to_string()))?;
            Ok(connection)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(&settings.url, config);
    diesel_async::pooled_connection::deadpool::Pool::builder(manager)
        .max_size(settings.max_size.max(2))
        .wait_timeout(Some(settings.wait_timeout))
        .create_timeout(Some(settings.connect_timeout))
        .recycle_timeout(Some(settings.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
}
