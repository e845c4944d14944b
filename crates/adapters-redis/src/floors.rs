//! Read floors: how fresh a copy of the store a reader of a miss may load from (see
//! [`ReadFloor`]), so that a read replica never serves, nor lets into the cache, data older
//! than a change acknowledged before the lookup.
//!
//! - **Recorded with the invalidation.** Each invalidation asks the store for its commit
//!   position, after the change committed (the write returned first), and stores it in the
//!   users' generations as `{uuid}@{position}`: a reader's lookup reads the generation anyway
//!   (the fill ticket), so it learns the floor in the same round trip. The position recorded
//!   never goes down (the invalidation script keeps the greater): an invalidation that
//!   reaches Redis after a newer one (sent before a stall, retried, replayed) cannot lower a
//!   user's floor below a change already acknowledged.
//! - **Where the generation says nothing.** A user without a generation was not changed
//!   while its generation would have lived, or not since the generations were lost (a
//!   restart, a failover, a `FLUSHALL`). Lost generations are seen through the *epoch*, a key
//!   every read fetches with the generations (`{prefix}:floors-epoch`, no TTL): it goes with
//!   them, and the first reader to find it missing starts a new one (`SET NX`). The user's
//!   floor is then the *barrier*: a position of the primary observed after this instance
//!   first saw the current Redis process and epoch, and less than one generation lifetime
//!   ago, so after every change whose generation may be missing.
//!   Observations are renewed every quarter of a lifetime; the barrier is the older of the
//!   last two while it is young enough, so that a replica slightly behind still serves.
//! - **Unknown means the primary.** A generation without a position (written by an older
//!   version, or when the store did not answer), or no barrier (the store did not answer),
//!   gives [`ReadFloor::Primary`]; such a generation keeps no position until it expires,
//!   since the change it followed may be later than any position recorded after it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use domain::cache::{CommitPosition, CommitPositions, ReadFloor};

use crate::connection::ServerId;

/// Separates a generation's unique part from the position it records.
const POSITION_SEPARATOR: char = '@';

/// The floors of one cache.
pub(crate) struct ReadFloors {
    positions: Arc<dyn CommitPositions>,
    /// The longest a change's invalidation, or a reader, waits for the store's position: a
    /// primary that does not answer must not hold acknowledgements or the ledger's lease up
    /// (without a position, readers use the primary).
    wait: Duration,
    /// How long a generation lives: a barrier observed longer ago may be below a change whose
    /// generation expired since.
    lifetime: Duration,
    observed: Mutex<Observed>,
}

/// The primary's positions observed for the Redis process and epoch last seen.
#[derive(Default)]
struct Observed {
    source: Option<(ServerId, String)>,
    older: Option<(Instant, CommitPosition)>,
    newer: Option<(Instant, CommitPosition)>,
}

impl ReadFloors {
    pub(crate) fn new(positions: Arc<dyn CommitPositions>, generation_lifetime: Duration, wait: Duration) -> Self {
        Self { positions, wait, lifetime: generation_lifetime, observed: Mutex::default() }
    }

    /// The store's position, within [`Self::wait`].
    async fn current(&self) -> Result<CommitPosition, domain::ports::RepositoryError> {
        tokio::time::timeout(self.wait, self.positions.current())
            .await
            .unwrap_or_else(|_| Err(domain::ports::RepositoryError::Unavailable("no commit position in time".into())))
    }

    /// The store's position now, for an invalidation of committed changes; `None` when the
    /// store does not answer (the users' readers then load from the primary).
    pub(crate) async fn position_after_commit(&self) -> Option<CommitPosition> {
        match self.current().await {
            Ok(position) => Some(position),
            Err(error) => {
                tracing::debug!(error = %error, "no commit position for an invalidation: its readers use the primary");
                None
            }
        }
    }

    /// The barrier for tickets read from `server` in `epoch` (see the module's documentation);
    /// `None` when the store does not answer.
    pub(crate) async fn barrier(&self, server: &ServerId, epoch: &str) -> Option<CommitPosition> {
        let renew_after = self.lifetime / 4;
        let same_source = |observed: &Observed| {
            observed.source.as_ref().is_some_and(|(seen, seen_epoch)| seen == server && seen_epoch == epoch)
        };
        {
            let observed = self.lock();
            if same_source(&observed) && observed.newer.is_some_and(|(at, _)| at.elapsed() < renew_after) {
                return self.barrier_of(&observed);
            }
        }
        // Before the question: the observation is at least as old as the position it holds.
        let now = Instant::now();
        let position = self.current().await.ok()?;
        let mut observed = self.lock();
        if same_source(&observed) {
            if observed.newer.is_none_or(|(at, _)| at.elapsed() >= renew_after) {
                observed.older = observed.newer.take();
                observed.newer = Some((now, position));
            }
        } else {
            *observed = Observed {
                source: Some((server.clone(), epoch.to_owned())),
                older: None,
                newer: Some((now, position)),
            };
        }
        self.barrier_of(&observed)
    }

    /// The older observation while younger than three quarters of a generation's lifetime
    /// (a margin for Redis's clock, which expires the generations), else the newer.
    fn barrier_of(&self, observed: &Observed) -> Option<CommitPosition> {
        match observed.older {
            Some((at, position)) if at.elapsed() < self.lifetime - self.lifetime / 4 => Some(position),
            _ => observed.newer.map(|(_, position)| position),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The floor of a ticket whose generation is `generation` (`None`: the user has none), given
/// the `barrier` of the Redis process it was read from.
pub(crate) fn floor(generation: Option<&str>, barrier: Option<CommitPosition>) -> ReadFloor {
    let Some(barrier) = barrier else { return ReadFloor::Primary };
    let Some(generation) = generation else { return ReadFloor::AtLeast(barrier) };
    generation
        .rsplit_once(POSITION_SEPARATOR)
        .and_then(|(_, position)| u64::from_str_radix(position, 16).ok())
        .map_or(ReadFloor::Primary, |position| ReadFloor::AtLeast(barrier.max(CommitPosition(position))))
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use domain::ports::RepositoryError;

    use super::*;

    /// The store's answers to [`CommitPositions::current`], in order (`None`: it fails).
    struct Answers(Mutex<Vec<Option<u64>>>);

    #[async_trait]
    impl CommitPositions for Answers {
        async fn current(&self) -> Result<CommitPosition, RepositoryError> {
            match self.0.lock().unwrap().remove(0) {
                Some(position) => Ok(CommitPosition(position)),
                None => Err(RepositoryError::Unavailable("down".into())),
            }
        }
    }

    impl Answers {
        fn new(answers: &[Option<u64>]) -> Arc<Self> {
            Arc::new(Self(Mutex::new(answers.to_vec())))
        }

        fn all_given(&self) -> bool {
            self.0.lock().unwrap().is_empty()
        }
    }

    #[test]
    fn a_ticket_is_floored_at_its_generations_position_or_the_barrier_whichever_is_later() {
        let barrier = Some(CommitPosition(0x100));
        assert_eq!(floor(Some("5f0c@2a0"), barrier), ReadFloor::AtLeast(CommitPosition(0x2a0)));
        assert_eq!(floor(Some("5f0c@20"), barrier), ReadFloor::AtLeast(CommitPosition(0x100)));
        assert_eq!(floor(None, barrier), ReadFloor::AtLeast(CommitPosition(0x100)));
        // Said nothing, or could not be read: the primary.
        assert_eq!(floor(Some("5f0c-older-version"), barrier), ReadFloor::Primary);
        assert_eq!(floor(Some("5f0c@not-hex"), barrier), ReadFloor::Primary);
        assert_eq!(floor(Some("5f0c@2a0"), None), ReadFloor::Primary);
        assert_eq!(floor(None, None), ReadFloor::Primary);
    }

    #[tokio::test]
    async fn the_barrier_is_observed_again_for_a_new_redis_process_or_epoch_and_none_when_the_store_fails() {
        let answers = Answers::new(&[Some(7), None, Some(9), Some(5)]);
        let floors = ReadFloors::new(answers.clone(), Duration::from_secs(3600), Duration::from_secs(1));
        let (first, second) = (ServerId::new("run-a"), ServerId::new("run-b"));
        assert_eq!(floors.barrier(&first, "e1").await, Some(CommitPosition(7)));
        // Observed once per process and epoch, not per read.
        assert_eq!(floors.barrier(&first, "e1").await, Some(CommitPosition(7)));
        assert_eq!(floors.barrier(&second, "e1").await, None, "the store did not answer");
        assert_eq!(floors.barrier(&second, "e1").await, Some(CommitPosition(9)));
        assert_eq!(floors.barrier(&second, "e2").await, Some(CommitPosition(5)), "a new epoch: observed again");
        assert!(answers.all_given());
    }

    #[tokio::test]
    async fn a_barrier_near_a_generations_lifetime_is_observed_again() {
        let answers = Answers::new(&[Some(1), Some(2), Some(3)]);
        let floors = ReadFloors::new(answers.clone(), Duration::from_millis(400), Duration::from_secs(1));
        let server = ServerId::new("run-a");
        assert_eq!(floors.barrier(&server, "e1").await, Some(CommitPosition(1)));
        // A quarter of a lifetime later: a new observation; the older one stays the barrier.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(floors.barrier(&server, "e1").await, Some(CommitPosition(1)));
        // Past three quarters of a lifetime, the older one could be below a change whose
        // generation expired.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(floors.barrier(&server, "e1").await, Some(CommitPosition(3)));
        assert!(answers.all_given());
    }
}
