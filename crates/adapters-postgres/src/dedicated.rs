//! A connection of its own, apart from the pool, for the calls that must answer while the
//! pool is busy: health probes, and the reads of the cache's invalidation ledger (a reader
//! that cannot renew its lease stops using the cache, which a busy pool must not cause).

use diesel::QueryResult;
use diesel::connection::CacheSize;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use domain::error::BoxError;
use tokio::sync::Mutex;

use crate::pool::{
    PoolSettings, Pooler, connection_url, establish_behind_transaction_pooler, session_setup, transaction_setup,
};
use crate::work::{Unit, Work, run_on};

/// One connection, made on first use and made again after any failure. Calls queue for it;
/// callers bound each call with their own timeout.
pub(crate) struct DedicatedConnection {
    url: String,
    pooler: Pooler,
    session_setup: String,
    /// What each call runs first, in a transaction of its own, behind a transaction pooler.
    transaction_setup: Option<String>,
    /// Whether statements may be cached on the connection (not behind a transaction pooler).
    cache_statements: bool,
    connect_timeout: std::time::Duration,
    connection: Mutex<Option<AsyncPgConnection>>,
}

impl DedicatedConnection {
    pub(crate) fn new(settings: &PoolSettings) -> Self {
        Self {
            url: connection_url(settings),
            pooler: settings.pooler,
            session_setup: session_setup(settings),
            transaction_setup: transaction_setup(settings),
            cache_statements: settings.prepared_statements && settings.pooler == Pooler::None,
            connect_timeout: settings.connect_timeout,
            connection: Mutex::new(None),
        }
    }

    /// Runs `query` on the connection, connecting first if there is none.
    pub(crate) async fn run<T, F>(&self, query: F) -> Result<T, BoxError>
    where
        T: Send,
        for<'r> F: AsyncFnOnce(&'r mut AsyncPgConnection) -> QueryResult<T>
            + Work<&'r mut AsyncPgConnection, QueryResult<T>, Fut: Send>
            + Send,
    {
        let mut slot = self.connection.lock().await;
        // Taken out while in use: a call abandoned half-way (its caller timed out) leaves no
        // connection in an unknown state behind, and the next call connects again.
        let mut connection = match slot.take() {
            Some(connection) => connection,
            None => {
                let establish = async {
                    match self.pooler {
                        Pooler::None => AsyncPgConnection::establish(&self.url).await,
                        Pooler::Transaction => establish_behind_transaction_pooler(&self.url).await,
                    }
                };
                let mut connection = tokio::time::timeout(self.connect_timeout, establish).await??;
                if !self.cache_statements {
                    connection.set_prepared_statement_cache_size(CacheSize::Disabled);
                }
                if !self.session_setup.is_empty() {
                    connection.batch_execute(&self.session_setup).await?;
                }
                connection
            }
        };
        let value = run_on(&mut connection, self.transaction_setup.as_deref(), Unit::Statements, query).await?;
        *slot = Some(connection);
        Ok(value)
    }
}
