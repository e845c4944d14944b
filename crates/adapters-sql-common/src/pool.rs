//! Connection pools built the same way for every store: explicit sizes and timeouts, so
//! that an exhausted pool or an unreachable database answers quickly (as "unavailable")
//! instead of hanging requests, and the same session settings on every connection.

use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{BuildError, Manager};
use diesel::ConnectionResult;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, PoolError, RecyclingMethod};
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

/// How big a pool is and how long its callers wait.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// The most connections kept open (raised to 2 if lower).
    pub max_size: usize,
    /// How long a caller waits for a free connection.
    pub wait_timeout: Duration,
    /// How long opening (or recycling) a connection may take.
    pub connect_timeout: Duration,
    /// Whether connections cache prepared statements. Off behind PgBouncer in transaction
    /// mode, where a statement prepared on one server connection is unknown to the next.
    pub prepared_statements: bool,
}

/// Opens one connection to a URL.
pub type Establish<C> = fn(String) -> BoxFuture<'static, ConnectionResult<C>>;

/// Builds a pool of `C` on `url` that runs `session_setup` (SQL statements) on every new
/// connection. No connection is opened until the first checkout, so a service can start
/// (and report itself unready) while its database is unreachable.
pub fn build<C>(url: &str, session_setup: String, limits: PoolLimits) -> Result<Pool<C>, BuildError>
where
    C: AsyncConnection + SimpleAsyncConnection + 'static,
    AsyncDieselConnectionManager<C>: Manager<Type = C, Error = PoolError>,
{
    build_with(url, session_setup, limits, |url| async move { C::establish(&url).await }.boxed())
}

/// [`build`] with connections opened by `establish` rather than `C::establish`.
pub fn build_with<C>(
    url: &str,
    session_setup: String,
    limits: PoolLimits,
    establish: Establish<C>,
) -> Result<Pool<C>, BuildError>
where
    C: AsyncConnection + SimpleAsyncConnection + 'static,
    AsyncDieselConnectionManager<C>: Manager<Type = C, Error = PoolError>,
{
    let mut config = ManagerConfig::default();
    // `Verified` would run a query on every checkout; a broken connection (lost, or left
    // inside a transaction) is detected without it and discarded.
    config.recycling_method = RecyclingMethod::Fast;
    let prepared_statements = limits.prepared_statements;
    config.custom_setup = Box::new(move |url| {
        let session_setup = session_setup.clone();
        let url = url.to_owned();
        async move {
            let mut connection = establish(url).await?;
            if !prepared_statements {
                connection.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
            }
            if !session_setup.is_empty() {
                connection
                    .batch_execute(&session_setup)
                    .await
                    .map_err(|error| diesel::ConnectionError::BadConnection(error.to_string()))?;
            }
            Ok(connection)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<C>::new_with_config(url, config);
    Pool::builder(manager)
        .max_size(limits.max_size.max(2))
        .wait_timeout(Some(limits.wait_timeout))
        .create_timeout(Some(limits.connect_timeout))
        .recycle_timeout(Some(limits.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
}
