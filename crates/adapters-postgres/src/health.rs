//! A connection of its own for health probes, apart from the pool.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use domain::error::BoxError;
use tokio::sync::Mutex;

use crate::pool::{PoolSettings, session_setup};

/// One connection for health probes, made on first use and made again after any failure.
/// Probes queue for it; callers bound each probe with their own timeout.
pub(crate) struct HealthConnection {
    url: String,
    session_setup: String,
    connect_timeout: std::time::Duration,
    connection: Mutex<Option<AsyncPgConnection>>,
}

impl HealthConnection {
    pub(crate) fn new(settings: &PoolSettings) -> Self {
        Self {
            url: settings.url.clone(),
            session_setup: session_setup(settings),
            connect_timeout: settings.connect_timeout,
            connection: Mutex::new(None),
        }
    }

    /// `SELECT 1` on the probe connection.
    pub(crate) async fn check(&self) -> Result<(), BoxError> {
        let mut slot = self.connection.lock().await;
        // Taken out while in use: a probe abandoned half-way (its caller timed out) leaves
        // no connection in an unknown state behind, and the next probe connects again.
        let mut connection = match slot.take() {
            Some(connection) => connection,
            None => {
                let mut connection =
                    tokio::time::timeout(self.connect_timeout, AsyncPgConnection::establish(&self.url)).await??;
                connection.batch_execute(&self.session_setup).await?;
                connection
            }
        };
        diesel::sql_query("SELECT 1").execute(&mut connection).await?;
        *slot = Some(connection);
        Ok(())
    }
}
