//! The store the service runs on: PostgreSQL when `DATABASE_URL` is set, else the embedded
//! SQLite file under `DATA_DIR`. Both implement the same ports; this is the one place that
//! knows which is in use.

use std::sync::Arc;

use adapters_postgres::{PgStore, PoolSettings, Pooler};
use adapters_sqlite::{SqliteSettings, SqliteStore};
use domain::cache::{CommitPositions, InvalidationLedger};
use domain::ports::{
    CategoryRepository, ConsentHistory, DeviceRepository, EventOutbox, HealthProbe, IdempotencyRepository,
    RepositoryError, UserRepository,
};

use crate::config::{DatabasePooler, DatabaseSettings};

/// Declares one method per port, each handing out the open store as that port.
macro_rules! ports {
    ($($(#[$doc:meta])* $name:ident: $port:ident,)*) => {$(
        $(#[$doc])*
        pub fn $name(&self) -> Arc<dyn $port> {
            match self {
                Self::Postgres(store) => Arc::new(store.clone()),
                Self::Sqlite(store) => Arc::new(store.clone()),
            }
        }
    )*};
}

/// The open store.
#[derive(Clone, Debug)]
pub enum Store {
    /// PostgreSQL (production).
    Postgres(PgStore),
    /// SQLite in a local file (the embedded default).
    Sqlite(SqliteStore),
}

impl Store {
    /// Opens the configured store. PostgreSQL migrates when `migrate` is set; the SQLite
    /// file is always created and migrated (it belongs to this process alone).
    pub async fn open(settings: &DatabaseSettings, migrate: bool) -> anyhow::Result<Self> {
        match &settings.url {
            Some(url) => {
                let pool_settings = PoolSettings {
                    max_size: settings.pool_size,
                    wait_timeout: settings.pool_timeout,
                    statement_timeout: settings.statement_timeout,
                    prepared_statements: settings.prepared_statements,
                    pooler: match settings.pooler {
                        DatabasePooler::None => Pooler::None,
                        DatabasePooler::Transaction => Pooler::Transaction,
                    },
                    ..PoolSettings::new(url.clone())
                };
                let pool = adapters_postgres::pool::build(&pool_settings)?;
                if migrate {
                    let applied = adapters_postgres::migrations::run_pending(&pool)
                        .await
                        .map_err(|error| anyhow::anyhow!("running migrations failed: {error}"))?;
                    tracing::info!(applied, "database migrations up to date");
                }
                let pooler = match settings.pooler {
                    DatabasePooler::None => "none",
                    DatabasePooler::Transaction => "transaction: every unit of work in a transaction of its own",
                };
                tracing::info!(store = "postgresql", pooler, "storing users in PostgreSQL");
                let store = PgStore::new(pool).for_pooler(&pool_settings).with_dedicated_connections(&pool_settings);
                let Some(read_url) = &settings.read_url else { return Ok(Self::Postgres(store)) };
                // A replica that does not answer at once is skipped for a while: reads do not
                // wait long for it, they go to the primary.
                let replica_settings = PoolSettings {
                    connect_timeout: pool_settings.connect_timeout.min(std::time::Duration::from_secs(1)),
                    wait_timeout: pool_settings.wait_timeout.min(std::time::Duration::from_millis(500)),
                    ..PoolSettings { url: read_url.clone(), ..pool_settings.clone() }
                };
                let replica = adapters_postgres::pool::build(&replica_settings)?;
                tracing::info!(
                    replica = %adapters_redis::config::redact_url(read_url),
                    "reading cache misses from the replica at DATABASE_READ_URL once it has applied the changes \
                     they must see, else from the primary"
                );
                Ok(Self::Postgres(store.with_read_replica(replica)))
            }
            None => {
                let sqlite = SqliteSettings { wait_timeout: settings.pool_timeout, ..SqliteSettings::default() };
                let store = adapters_sqlite::open(&settings.data_dir, &sqlite).await?;
                let location = std::path::absolute(&settings.data_dir).unwrap_or_else(|_| settings.data_dir.clone());
                tracing::info!(
                    store = "sqlite",
                    data_file = %location.join(adapters_sqlite::DATA_FILE_NAME).display(),
                    "no DATABASE_URL: storing users in the embedded SQLite file"
                );
                Ok(Self::Sqlite(store))
            }
        }
    }

    ports! {
        /// The users port.
        users: UserRepository,
        /// The devices port.
        devices: DeviceRepository,
        /// The category catalogue and users' choices in it.
        categories: CategoryRepository,
        /// Users' consent history.
        consent_history: ConsentHistory,
        /// The cache's invalidation ledger, shared by every instance on this store.
        invalidation_ledger: InvalidationLedger,
        /// The idempotency-records port.
        idempotency: IdempotencyRepository,
        /// The change events' outbox.
        events: EventOutbox,
        /// The health probe.
        probe: HealthProbe,
    }

    /// The store's commit positions, when misses may be read from a replica (the cache
    /// records them with its invalidations).
    pub fn commit_positions(&self) -> Option<Arc<dyn CommitPositions>> {
        match self {
            Self::Postgres(store) if store.replica_reads().is_some() => Some(Arc::new(store.clone())),
            _ => None,
        }
    }

    /// The read replica's health probe, if there is one.
    pub fn replica_probe(&self) -> Option<Arc<dyn HealthProbe>> {
        match self {
            Self::Postgres(store) => store.replica_health().map(|probe| Arc::new(probe) as Arc<dyn HealthProbe>),
            Self::Sqlite(_) => None,
        }
    }

    /// What the read replica did, for metrics.
    pub fn replica_reads(&self) -> Option<adapters_postgres::ReplicaReads> {
        match self {
            Self::Postgres(store) => store.replica_reads(),
            Self::Sqlite(_) => None,
        }
    }

    /// The connection pool's state, for metrics.
    pub fn pool_status(&self) -> deadpool::Status {
        match self {
            Self::Postgres(store) => store.pool().status(),
            Self::Sqlite(store) => store.pool().status(),
        }
    }

    /// Deletes expired idempotency records, at most `batch`.
    pub async fn purge_expired_idempotency_records(
        &self,
        batch: i64,
        now: time::OffsetDateTime,
    ) -> Result<usize, RepositoryError> {
        match self {
            Self::Postgres(store) => store.purge_expired_idempotency_records(batch, now).await,
            Self::Sqlite(store) => store.purge_expired_idempotency_records(batch, now).await,
        }
    }

    /// Closes the pool (no new connections, idle ones dropped) and, for the embedded store,
    /// releases its data directory.
    pub fn close(&self) {
        match self {
            Self::Postgres(store) => store.pool().close(),
            Self::Sqlite(store) => store.close(),
        }
    }
}
