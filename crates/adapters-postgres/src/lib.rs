//! PostgreSQL adapter: implements the domain's [`UserRepository`](domain::ports::UserRepository),
//! [`DeviceRepository`](domain::ports::DeviceRepository),
//! [`CategoryRepository`](domain::ports::CategoryRepository) and
//! [`ConsentHistory`](domain::ports::ConsentHistory) with diesel + diesel-async on a
//! deadpool pool.
//!
//! - [`pool`]: the connection pool, with explicit timeouts and per-connection settings.
//! - [`migrations`]: the embedded SQL migrations of the workspace's `migrations/` folder.
//! - [`PgStore`]: the repositories.
//!
//! Unique and foreign-key violations are mapped to domain errors by constraint name (see
//! [`errors`]), never by message text. Nothing here knows about HTTP.
//!
//! The tables, rows, conversions to domain values, profile assembly and pool construction
//! are shared with the SQLite store through `adapters-sql-common`, and both run its
//! repository contract suite; what stays here is PostgreSQL's own SQL (the token-digest
//! upsert, `regexp_replace`, window counts, advisory locks, the preferences update that
//! returns the old values, the history's append) and its migrations. Every write of a
//! consent appends its history in its own transaction, under the user's consent lock (see
//! the `history` module).

mod categories;
mod dedicated;
mod devices;
mod documents;
pub mod errors;
mod history;
mod idempotency;
mod ledger;
pub mod migrations;
mod outbox;
pub mod pool;
mod prepared;
mod replica;
mod rows;
mod schema;
#[cfg(feature = "test-support")]
pub mod testing;
#[cfg(test)]
mod tests;
mod users;
mod work;

use std::sync::Arc;

use async_trait::async_trait;
use diesel_async::RunQueryDsl;
use domain::error::BoxError;
use domain::ports::HealthProbe;

use crate::dedicated::DedicatedConnection;
pub use pool::{PgPool, PoolSettings, Pooler};
pub use replica::{ReplicaHealth, ReplicaReads};
use work::{Unit, Work, WorkError};

/// Connections of their own, one per use, so that neither queues behind the other.
struct Dedicated {
    health: DedicatedConnection,
    ledger: DedicatedConnection,
}

/// The PostgreSQL-backed repositories, cheap to clone (it holds the pool).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Where health probes and the cache ledger's calls run, when not on the pool.
    dedicated: Option<Arc<Dedicated>>,
    /// Whose clock stamps the consent history and category revisions.
    record_clock: RecordClock,
    /// What each transaction runs first behind a transaction pooler (see [`Pooler`]).
    transaction_setup: Option<Arc<str>>,
    /// Where cache misses whose floor it has applied are read (see [`replica`]).
    replica: Option<Arc<replica::ReadReplica>>,
}

/// Whose clock stamps what the store records (consent history rows, category revisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordClock {
    /// PostgreSQL's, read under the write's locks just before its commit: one clock for
    /// every instance, so that an instance whose clock runs ahead cannot record a change in
    /// the future (nor push the later changes of other instances behind it), and the
    /// recorded instant is as close to the commit that makes the change visible as it gets.
    Database,
    /// The `now` each write is given (the domain's clock): for tests that need known instants.
    Caller,
}

/// The instant a write records, as [`RecordClock`] says: `None` asks the database's clock.
pub(crate) type RecordedAt = Option<time::OffsetDateTime>;

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("pool", &self.pool.status()).finish()
    }
}

impl PgStore {
    /// Wraps a pool built by [`pool::build`]; health probes and ledger reads borrow a
    /// pooled connection.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, dedicated: None, record_clock: RecordClock::Database, transaction_setup: None, replica: None }
    }

    /// Runs every unit of work as `settings.pooler` needs (see [`Pooler`]); the pool must
    /// have been built with the same settings.
    #[must_use]
    pub fn for_pooler(self, settings: &PoolSettings) -> Self {
        Self { transaction_setup: pool::transaction_setup(settings).map(Arc::from), ..self }
    }

    /// Reads cache misses on the streaming replica behind `pool` when it has applied their
    /// floor (see [`replica`]); the pool must have been built with the same pooler settings.
    #[must_use]
    pub fn with_read_replica(self, pool: PgPool) -> Self {
        // Behind a transaction pooler the replica's statements share a transaction: it must
        // take a snapshot per statement, so that the load sees what the replay position read
        // before it promised, whatever the server's default isolation.
        let transaction_setup = self
            .transaction_setup
            .as_deref()
            .map(|setup| Arc::from(format!("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; {setup}")));
        let store = Self { pool, dedicated: None, replica: None, transaction_setup, ..self.clone() };
        Self { replica: Some(Arc::new(replica::ReadReplica::new(store))), ..self }
    }

    /// What the read replica did, if there is one.
    pub fn replica_reads(&self) -> Option<ReplicaReads> {
        self.replica.as_ref().map(|replica| replica.reads())
    }

    /// The read replica's health probe, if there is one.
    pub fn replica_health(&self) -> Option<ReplicaHealth> {
        self.replica.as_ref().map(|replica| ReplicaHealth(Arc::clone(replica)))
    }

    /// Stamps what the store records with `clock` (the default is [`RecordClock::Database`]).
    #[must_use]
    pub fn with_record_clock(self, clock: RecordClock) -> Self {
        Self { record_clock: clock, ..self }
    }

    /// What a write given `now` records as its instant.
    pub(crate) fn recorded_at(&self, now: time::OffsetDateTime) -> RecordedAt {
        match self.record_clock {
            RecordClock::Database => None,
            RecordClock::Caller => Some(now),
        }
    }

    /// Runs health probes, and the reads and forgetting of the cache's invalidation ledger,
    /// each on a connection of its own made with `settings`: a pool busy with requests is
    /// not a database that does not answer. Readiness must not fail (taking every replica
    /// out of its load balancer at once) because of load, nor must the cache be bypassed
    /// because of it.
    #[must_use]
    pub fn with_dedicated_connections(self, settings: &PoolSettings) -> Self {
        let dedicated =
            Dedicated { health: DedicatedConnection::new(settings), ledger: DedicatedConnection::new(settings) };
        Self { dedicated: Some(Arc::new(dedicated)), ..self }
    }

    /// The underlying pool (for health reporting and metrics).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn connection(&self) -> Result<pool::PgConnection, domain::ports::RepositoryError> {
        self.pool.get().await.map_err(errors::from_pool_error)
    }

    /// Runs `work` on a pooled connection as `unit` says (behind a transaction pooler,
    /// always in a transaction that first sets the statement timeout).
    async fn run<R, E, F>(&self, unit: Unit, work: F) -> Result<R, domain::ports::RepositoryError>
    where
        R: Send,
        E: WorkError,
        for<'r> F: AsyncFnOnce(&'r mut diesel_async::AsyncPgConnection) -> Result<R, E>
            + Work<&'r mut diesel_async::AsyncPgConnection, Result<R, E>, Fut: Send>
            + Send,
    {
        let mut connection = self.connection().await?;
        let setup = self.transaction_setup.as_deref();
        let error = match work::run_on(&mut connection, setup, unit, work).await {
            Ok(value) => return Ok(value),
            Err(error) => error.into_repository(),
        };
        if errors::is_stale_statement(&error) {
            // Out of the pool: a new connection prepares its statements on the new schema.
            drop(deadpool::managed::Object::take(connection));
        }
        Err(error)
    }
}

#[async_trait]
impl HealthProbe for PgStore {
    async fn check(&self) -> Result<(), BoxError> {
        if let Some(dedicated) = &self.dedicated {
            return dedicated
                .health
                .run(async |connection| diesel::sql_query("SELECT 1").execute(connection).await)
                .await
                .map(drop);
        }
        self.run(Unit::Statements, async |connection| diesel::sql_query("SELECT 1").execute(connection).await).await?;
        Ok(())
    }
}
