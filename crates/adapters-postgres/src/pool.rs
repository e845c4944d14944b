//! The connection pool: explicit sizes and timeouts, so that an exhausted pool or a dead
//! server answers quickly (as "unavailable") instead of hanging requests.

use std::time::Duration;

use adapters_sql_common::pool::PoolLimits;
use diesel::{ConnectionError, ConnectionResult};
use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};
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
    /// Whether connections cache prepared statements (off behind a transaction pooler).
    pub prepared_statements: bool,
    /// What stands between the service and PostgreSQL.
    pub pooler: Pooler,
}

/// What stands between the service and PostgreSQL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pooler {
    /// Nothing, or a pooler that gives each client connection one server connection for
    /// its whole session (PgBouncer's `pool_mode=session`).
    #[default]
    None,
    /// A pooler that lends a server connection for one transaction at a time (PgBouncer's
    /// `pool_mode=transaction`): nothing may outlive a transaction. So every unit of work runs
    /// in a transaction of its own, reads included, because diesel prepares a statement in
    /// one round trip and runs it in the next, which would otherwise reach another server
    /// connection ("prepared statement sN does not exist"); no statement is cached across
    /// transactions; the statement timeout is set with `SET LOCAL` in each transaction, never
    /// for a session (a session `SET` would stay on a server connection that other clients
    /// then use); locks are transaction-scoped (migrations, the outbox relay).
    Transaction,
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
            pooler: Pooler::None,
        }
    }
}

/// The statements every connection runs first: the statement timeout and the name it shows
/// in `pg_stat_activity`. None behind a transaction pooler, where a session setting would
/// stay on a server connection that other clients then use ([`transaction_setup`] instead).
pub(crate) fn session_setup(settings: &PoolSettings) -> String {
    match settings.pooler {
        Pooler::None => format!(
            "SET statement_timeout = {}; SET application_name = '{}'",
            settings.statement_timeout.as_millis(),
            settings.application_name.replace('\'', "''"),
        ),
        Pooler::Transaction => String::new(),
    }
}

/// The least time a transaction may sit idle behind a transaction pooler (see
/// [`transaction_setup`]).
const MIN_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(30);

/// The statements every transaction runs first behind a transaction pooler (one round
/// trip): the statement timeout, for this transaction only; and a limit on how long it may
/// sit idle, so that a transaction whose request was abandoned half-way (the connection then
/// waits in the pool to be found broken and dropped) does not hold its locks and its server
/// connection for ever. The limit is far above the statement timeout (4×, at least 30 s): a
/// healthy transaction waits between its statements while the service is short of CPU, and
/// reaching the limit kills the server connection. `None` without a pooler (the session has
/// the statement timeout).
pub(crate) fn transaction_setup(settings: &PoolSettings) -> Option<String> {
    (settings.pooler == Pooler::Transaction).then(|| {
        let statement = settings.statement_timeout.as_millis();
        let idle = (settings.statement_timeout * 4).max(MIN_IDLE_IN_TRANSACTION).as_millis();
        format!("SET LOCAL statement_timeout = {statement}; SET LOCAL idle_in_transaction_session_timeout = {idle}")
    })
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
        prepared_statements: settings.prepared_statements && settings.pooler == Pooler::None,
    };
    match settings.pooler {
        Pooler::None => adapters_sql_common::pool::build(&settings.url, session_setup, limits),
        Pooler::Transaction => {
            adapters_sql_common::pool::build_with(&connection_url(settings), session_setup, limits, |url| {
                async move { establish_behind_transaction_pooler(&url).await }.boxed()
            })
        }
    }
}

/// The URL connections are opened with: behind a transaction pooler it names the
/// application as a startup parameter, which PgBouncer keeps for the client (a session `SET`
/// would stay on one server connection), unless the URL names one already.
pub(crate) fn connection_url(settings: &PoolSettings) -> String {
    let url = &settings.url;
    let name = &settings.application_name;
    let plain = !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_.".contains(&byte));
    if settings.pooler == Pooler::None || url.contains("application_name=") || !plain {
        return url.clone();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={name}")
}

/// Opens a connection behind a transaction pooler. diesel-async runs set-up statements of
/// its own on every new connection (`SET TIME ZONE 'UTC'`, `SET CLIENT_ENCODING`), each
/// prepared in one round trip and run in the next: outside a transaction they would reach
/// different server connections ("prepared statement sN does not exist", or a statement
/// left behind on a server connection for the next client to collide with). So they run
/// inside a transaction opened first, on one server connection, and are closed before it
/// commits; the two settings are ones PgBouncer tracks and sets again on every server
/// connection it lends this client.
pub(crate) async fn establish_behind_transaction_pooler(url: &str) -> ConnectionResult<AsyncPgConnection> {
    let bad = |error: tokio_postgres::Error| ConnectionError::BadConnection(error.to_string());
    let config: tokio_postgres::Config = url.parse().map_err(bad)?;
    let (client, connection) = config.connect(tokio_postgres::NoTls).await.map_err(bad)?;
    // Ends when the client is dropped (or the server goes away: the client then fails).
    drop(tokio::spawn(connection));
    client.batch_execute("BEGIN").await.map_err(bad)?;
    let mut connection = AsyncPgConnection::try_from(client).await?;
    connection.batch_execute("COMMIT").await.map_err(ConnectionError::CouldntSetupConfiguration)?;
    Ok(connection)
}
