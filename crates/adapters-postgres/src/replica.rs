//! A streaming read replica for cache misses, and the commit positions that say when it may
//! serve one.
//!
//! A cache that records with each invalidation the primary's WAL position after the change
//! committed ([`CommitPositions`], `pg_current_wal_insert_lsn()`) hands every reader of a miss
//! that position as its floor ([`domain::cache::ReadFloor`]). Here a miss is loaded from the
//! replica only once `pg_last_wal_replay_lsn()`, read on the same server connection just
//! before the load, has reached the floor: the load's snapshot, taken after, then shows the
//! change. Everything else goes to the primary: users the replica has not reached, users it
//! does not know (they may be newer than it), and every user while the replica fails (it rests
//! for [`REST_AFTER_FAILURE`], then is tried again).

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use adapters_sql_common::profiles::{profiles_from_joined_rows, uuids};
use async_trait::async_trait;
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable};
use diesel_async::RunQueryDsl;
use domain::cache::{CommitPosition, CommitPositions};
use domain::error::{BoxError, error_chain};
use domain::ports::{HealthProbe, RepositoryError};
use domain::user::{UserId, UserProfile};

use crate::PgStore;
use crate::users::load_profile_rows;
use crate::work::{Unit, Work};

/// How long the replica is left alone after it failed: reads go to the primary meanwhile,
/// instead of each waiting for a replica that does not answer.
const REST_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// The longest a read waits for the replica (its check and its load together) before it
/// goes to the primary: a replica that hangs (frozen, a network partition) neither refuses
/// nor answers, and the statement timeout only bounds a server that still runs.
const REPLICA_READ_LIMIT: Duration = Duration::from_secs(1);

#[derive(QueryableByName)]
struct Position {
    #[diesel(sql_type = Nullable<BigInt>)]
    position: Option<i64>,
}

/// A WAL position as a number (`pg_lsn` minus `0/0`); NULL where the server has none (the
/// replay position of a server that is not a standby).
const CURRENT_POSITION: &str = "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint AS position";
/// NULL once the server is no longer a standby: a promoted replica keeps its last replay
/// position, but follows the primary no more.
const REPLAYED_POSITION: &str = "SELECT CASE WHEN pg_is_in_recovery() \
     THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint END AS position";

/// The primary's position: at or after the commit record of every transaction that
/// committed before the call (the insert position, so also with `synchronous_commit=off`).
#[async_trait]
impl CommitPositions for PgStore {
    async fn current(&self) -> Result<CommitPosition, RepositoryError> {
        let row: Position = self
            .run(Unit::Statements, async |connection| diesel::sql_query(CURRENT_POSITION).get_result(connection).await)
            .await?;
        row.position
            .and_then(|position| u64::try_from(position).ok())
            .map(CommitPosition)
            .ok_or_else(|| RepositoryError::Unexpected("the primary reported no WAL position".into()))
    }
}

/// How many users each kind of replica read loaded, since the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaReads {
    /// Loaded from the replica.
    pub served: u64,
    /// Sent to the primary: the replica had not applied their floor yet, or did not have them
    /// yet.
    pub behind: u64,
    /// Sent to the primary: the replica failed, or rested after failing.
    pub unavailable: u64,
}

/// The read replica: a store on its own pool, and what it did.
pub(crate) struct ReadReplica {
    store: PgStore,
    resting_until: Mutex<Option<Instant>>,
    /// Whether the last use failed: an outage is logged when it starts and when it ends.
    failing: std::sync::atomic::AtomicBool,
    served: AtomicU64,
    behind: AtomicU64,
    unavailable: AtomicU64,
}

impl ReadReplica {
    pub(crate) fn new(store: PgStore) -> Self {
        Self {
            store,
            resting_until: Mutex::new(None),
            failing: std::sync::atomic::AtomicBool::new(false),
            served: AtomicU64::new(0),
            behind: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
        }
    }

    pub(crate) fn reads(&self) -> ReplicaReads {
        ReplicaReads {
            served: AtomicU64::load(&self.served, Ordering::Relaxed),
            behind: AtomicU64::load(&self.behind, Ordering::Relaxed),
            unavailable: AtomicU64::load(&self.unavailable, Ordering::Relaxed),
        }
    }

    fn is_resting(&self) -> bool {
        let mut resting = self.resting_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match *resting {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                *resting = None;
                false
            }
            None => false,
        }
    }

    /// Rests the replica after a failure; says so once per outage.
    fn failed(&self, error: &dyn std::error::Error) {
        let mut resting = self.resting_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *resting = Some(Instant::now() + REST_AFTER_FAILURE);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %error_chain(error),
                "the read replica failed: cache misses are read from the primary, and the replica is tried again \
                 every {}s until it answers",
                REST_AFTER_FAILURE.as_secs()
            );
        }
    }

    /// Notes that the replica answered; says so when an outage ends.
    fn answered(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("the read replica answers again: cache misses are read there again");
        }
    }

    /// Runs `work` on the replica within [`REPLICA_READ_LIMIT`].
    async fn run<R, F>(&self, work: F) -> Result<R, RepositoryError>
    where
        R: Send,
        for<'r> F: AsyncFnOnce(&'r mut diesel_async::AsyncPgConnection) -> Result<R, diesel::result::Error>
            + Work<&'r mut diesel_async::AsyncPgConnection, Result<R, diesel::result::Error>, Fut: Send>
            + Send,
    {
        tokio::time::timeout(REPLICA_READ_LIMIT, self.store.run(Unit::Statements, work))
            .await
            .unwrap_or_else(|_| Err(RepositoryError::Unavailable("the read replica did not answer in time".into())))
    }

    /// Loads the profiles of the users whose floor the replica has applied; returns them, and
    /// the ids left for the primary (not applied yet, unknown to the replica, or all of them
    /// when the replica fails).
    pub(crate) async fn load_profiles(&self, wanted: &[(UserId, CommitPosition)]) -> (Vec<UserProfile>, Vec<UserId>) {
        let all = || wanted.iter().map(|(id, _)| *id).collect::<Vec<_>>();
        if self.is_resting() {
            self.unavailable.fetch_add(wanted.len() as u64, Ordering::Relaxed);
            return (Vec::new(), all());
        }
        let loaded = self
            .run(async |connection| {
                let replayed: Position = diesel::sql_query(REPLAYED_POSITION).get_result(connection).await?;
                // NULL: not a standby (a misconfigured URL); nothing is read from it then.
                let Some(replayed) = replayed.position.and_then(|position| u64::try_from(position).ok()) else {
                    return Ok(None);
                };
                let ready: Vec<UserId> =
                    wanted.iter().filter(|(_, floor)| replayed >= floor.0).map(|(id, _)| *id).collect();
                if ready.is_empty() {
                    return Ok(Some((Vec::new(), Vec::new())));
                }
                // After the replay position was read: this statement's snapshot shows at
                // least what had been applied then.
                let (rows, choices) = load_profile_rows(connection, &uuids(&ready)).await?;
                Ok::<_, diesel::result::Error>(Some((rows, choices)))
            })
            .await;
        let (rows, choices) = match loaded {
            Ok(Some(loaded)) => loaded,
            Ok(None) => {
                self.failed(&NotAStandby);
                self.unavailable.fetch_add(wanted.len() as u64, Ordering::Relaxed);
                return (Vec::new(), all());
            }
            Err(error) => {
                self.failed(&error);
                self.unavailable.fetch_add(wanted.len() as u64, Ordering::Relaxed);
                return (Vec::new(), all());
            }
        };
        let profiles = match profiles_from_joined_rows(rows, choices) {
            Ok(profiles) => profiles,
            Err(error) => {
                self.failed(&error);
                self.unavailable.fetch_add(wanted.len() as u64, Ordering::Relaxed);
                return (Vec::new(), all());
            }
        };
        let found: HashSet<UserId> = profiles.iter().map(|profile| profile.user.id).collect();
        self.answered();
        self.served.fetch_add(found.len() as u64, Ordering::Relaxed);
        // Not applied yet, or not there yet (a user newer than the replica): the primary.
        self.behind.fetch_add((wanted.len() - found.len()) as u64, Ordering::Relaxed);
        let for_the_primary = wanted.iter().map(|(id, _)| *id).filter(|id| !found.contains(id)).collect();
        (profiles, for_the_primary)
    }
}

/// The replica's health, for `/health`: a failed probe also rests it.
pub struct ReplicaHealth(pub(crate) std::sync::Arc<ReadReplica>);

impl std::fmt::Debug for ReplicaHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ReplicaHealth").field(&self.0.reads()).finish()
    }
}

#[async_trait]
impl HealthProbe for ReplicaHealth {
    async fn check(&self) -> Result<(), BoxError> {
        let probed = self
            .0
            .run(async |connection| diesel::sql_query(REPLAYED_POSITION).get_result::<Position>(connection).await)
            .await;
        match probed {
            Ok(Position { position: Some(_) }) => {
                self.0.answered();
                Ok(())
            }
            Ok(Position { position: None }) => {
                self.0.failed(&NotAStandby);
                Err(NotAStandby.into())
            }
            Err(error) => {
                self.0.failed(&error);
                Err(error.into())
            }
        }
    }
}

/// A server without a replay position is not read from: it is not a standby (a promoted
/// replica, a misconfigured URL).
#[derive(Debug, thiserror::Error)]
#[error("the read replica's server is not a standby (not in recovery: promoted, or not a replica)")]
struct NotAStandby;
