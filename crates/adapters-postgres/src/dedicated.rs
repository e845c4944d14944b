//! A connection of its own, apart from the pool, for the calls that must answer while the
//! pool is busy: health probes, and the reads of the cache's invalidation ledger (a reader
//! that cannot renew its lease stops using the cache, which a busy pool must not cause).

use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use domain::error::BoxError;
use tokio::sync::Mutex;

use crate::pool::{PoolSettings, session_setup};

/// One connection, made on first use and made again after any failure. Calls queue for it;
/// callers bound each call with their own timeout.
pub(crate) struct DedicatedConnection {
    url: String,
    session_setup: String,
    connect_timeout: std::time::Duration,
    connection: Mutex<Option<AsyncPgConnection>>,
}

impl DedicatedConnection {
    pub(crate) fn new(settings: &PoolSettings) -> Self {
        Self {
            url: settings.url.clone(),
            session_setup: session_setup(settings),
            connect_timeout: settings.connect_timeout,
            connection: Mutex::new(None),
        }
    }

    /// Runs `query` on the connection, connecting first if there is none.
    pub(crate) async fn run<T>(
        &self,
        query: impl AsyncFnOnce(&mut AsyncPgConnection) -> QueryResult<T>,
    ) -> Result<T, BoxError> {
        let mut slot = self.connection.lock().await;
        // Taken out while in use: a call abandoned half-way (its caller timed out) leaves no
        // connection in an unknown state behind, and the next call connects again.
        let mut connection = match slot.take() {
            Some(connection) => connection,
            None => {
                let mut connection =
                    tokio::time::timeout(self.connect_timeout, AsyncPgConnection::establish(&self.url)).await??;
                connection.batch_execute(&self.session_setup).await?;
                connection
            }
        };
        let value = query(&mut connection).await?;
        *slot = Some(connection);
        Ok(value)
    }
}
