//! The cache port: serialized user representations kept close to readers, never stale.
//!
//! Readers use cache-aside with a fill guard: [`ProfileCache::lookup`] returns either the
//! cached bytes or a [`FillTicket`] naming the user's cache generation *before* the reader
//! loads from the store; [`ProfileCache::fill`] stores the loaded bytes only if no writer
//! invalidated the user since. Writers call [`ProfileCache::invalidate`] after every commit,
//! which bumps the generation and deletes the entry. A reader that loaded an old row can
//! therefore never put it back after a writer's invalidation.
//!
//! The cache is never a reason to fail: its methods do not return errors. Implementations
//! bound every call with a short timeout, stop calling a dead cache for a while (circuit
//! breaker) and retry failed invalidations until they succeed.

use std::fmt;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;

use crate::eligibility::{Channel, SendingProfile};
use crate::ports::RepositoryError;
use crate::user::UserId;

/// A point in the store's sequence of commits (PostgreSQL: a WAL position), ordered: a copy
/// of the store (a read replica) that has applied a position shows every change committed
/// before that position was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitPosition(pub u64);

/// Which copies of the store a reader may load a miss from without being served data older
/// than a change it must see (a change acknowledged before its lookup, on any instance).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReadFloor {
    /// The primary only: nothing says which changes the reader must see.
    Primary,
    /// Any copy that has applied this position, else the primary.
    AtLeast(CommitPosition),
}

/// The cache generation a reader observed before loading from the store (opaque), and how
/// fresh the copy of the store it loads from must be ([`ReadFloor`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FillTicket {
    generation: Option<String>,
    floor: ReadFloor,
}

impl FillTicket {
    /// A ticket for the observed generation (`None` when the user has none yet), to be
    /// loaded from the primary.
    pub fn new(generation: Option<String>) -> Self {
        Self { generation, floor: ReadFloor::Primary }
    }

    /// The same ticket, loaded from any copy of the store that has applied `floor`.
    #[must_use]
    pub fn with_floor(self, floor: ReadFloor) -> Self {
        Self { floor, ..self }
    }

    /// The observed generation.
    pub fn generation(&self) -> Option<&str> {
        self.generation.as_deref()
    }

    /// How fresh the copy of the store the miss is loaded from must be.
    pub fn floor(&self) -> ReadFloor {
        self.floor
    }
}

/// The store's commit positions, for a cache that records with each invalidation the
/// position readers must load the user at or after (see [`ReadFloor`]).
///
/// Errors: [`RepositoryError::Unavailable`] when the store cannot serve now;
/// [`RepositoryError::Unexpected`] otherwise.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait CommitPositions: Send + Sync {
    /// A position at or after every commit that returned before this call (on the primary).
    async fn current(&self) -> Result<CommitPosition, RepositoryError>;
}

/// What became of an invalidation: whether the change it follows may be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Invalidation {
    /// The cache deleted the entries: no reader anywhere is served them any more.
    Confirmed,
    /// The cache did not answer in time, but the invalidation is in the
    /// [`InvalidationLedger`] and every reader has since stopped trusting these entries,
    /// until an instance confirms it with the cache.
    Deferred,
    /// Neither: a reader elsewhere may still be served an old entry. It is retried in the
    /// background; the change must not be acknowledged.
    Unconfirmed,
}

impl Invalidation {
    /// Whether no reader can be served the replaced value any more, so that the change may
    /// be acknowledged.
    pub fn is_effective(self) -> bool {
        !matches!(self, Self::Unconfirmed)
    }
}

/// One recording in the [`InvalidationLedger`]. A user recorded again gets a new mark, so
/// that forgetting an older recording never forgets a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Whose entries may be stale in the cache.
    pub user: UserId,
    /// Which recording this is.
    pub mark: uuid::Uuid,
}

/// Invalidations a shared cache could not confirm, kept in the store so that every
/// instance sees them: readers do not trust the cached entries of a recorded user, and any
/// instance that reaches the cache replays the invalidation and forgets the recording. It
/// is what lets a write be acknowledged while the cache is unreachable from its instance
/// and perhaps reachable from others.
///
/// Errors: [`RepositoryError::Unavailable`] when the store cannot serve now;
/// [`RepositoryError::Unexpected`] otherwise.
#[async_trait]
pub trait InvalidationLedger: Send + Sync {
    /// Records `users` (duplicates allowed), each with a new mark; durable once it returns.
    async fn record(&self, users: &[UserId]) -> Result<(), RepositoryError>;

    /// Up to `limit` recordings, oldest first.
    async fn recorded(&self, limit: usize) -> Result<Vec<LedgerEntry>, RepositoryError>;

    /// Forgets these recordings; a user recorded again since keeps its newer one.
    async fn forget(&self, entries: &[LedgerEntry]) -> Result<(), RepositoryError>;
}

/// A cached user representation: its bytes, shared without copying, and the sending
/// projections decoded from them, kept beside them. A cache that keeps this value in process
/// (a near-cache, the in-memory cache) hands the same one to every reader of the entry, so a
/// warm bulk decision decodes each user once per entry rather than once per request. A
/// projection is a function of the bytes alone, so it can never be fresher or staler than
/// they are: it goes when the entry goes.
#[derive(Clone)]
pub struct CachedProfile {
    bytes: Arc<[u8]>,
    /// By channel ([`Self::slot`]): `Some(None)` once the bytes were found not to decode.
    sending: Arc<[OnceLock<Option<Arc<SendingProfile>>>; 2]>,
}

impl CachedProfile {
    /// The representation `bytes`, nothing decoded yet.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        Self { bytes: bytes.into(), sending: Arc::default() }
    }

    /// The serialized representation.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// What a decision on `channel` reads of these bytes: decoded by `decode` (given the
    /// bytes and the channel) on the first call for the channel, remembered for every later
    /// one (`None`: they do not decode).
    pub fn sending(
        &self,
        channel: Channel,
        decode: impl FnOnce(&[u8], Channel) -> Option<SendingProfile>,
    ) -> Option<Arc<SendingProfile>> {
        self.sending[Self::slot(channel)].get_or_init(|| decode(&self.bytes, channel).map(Arc::new)).clone()
    }

    const fn slot(channel: Channel) -> usize {
        match channel {
            Channel::Email => 0,
            Channel::Push => 1,
        }
    }
}

impl From<Vec<u8>> for CachedProfile {
    fn from(bytes: Vec<u8>) -> Self {
        Self::new(bytes)
    }
}

/// Equal when the bytes are: what was decoded from them follows from them.
impl PartialEq for CachedProfile {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for CachedProfile {}

impl fmt::Debug for CachedProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Its length only: the bytes hold addresses and tokens.
        f.debug_struct("CachedProfile").field("bytes", &self.bytes.len()).finish_non_exhaustive()
    }
}

/// The result of a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLookup {
    /// The cached representation.
    Hit(CachedProfile),
    /// Not cached: load from the store, then `fill` with this ticket.
    Miss(FillTicket),
    /// The cache cannot answer now (down, slow, disabled): load from the store, don't fill.
    Unavailable,
}

/// The state of the cache for `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheHealth {
    /// Answering.
    Up,
    /// Configured but not answering.
    Down,
    /// Not configured.
    Disabled,
}

/// Work a cache still owes Redis (for metrics): invalidations not yet confirmed, and
/// follow-up deletions of downstream copies not yet done; and what it keeps in process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheBacklog {
    /// Users whose invalidation is not confirmed.
    pub pending_invalidations: usize,
    /// Follow-up deletions scheduled or being sent.
    pub scheduled_follow_ups: usize,
    /// Users listed in the invalidation ledger at its last read.
    pub deferred_invalidations: usize,
    /// Entries kept in process in front of the shared cache (a near-cache), and their bytes.
    pub near_entries: u64,
    /// See `near_entries`.
    pub near_bytes: u64,
}

/// A cache of serialized user representations.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ProfileCache: Send + Sync {
    /// Looks a user up. Never blocks longer than the implementation's timeout.
    async fn lookup(&self, id: UserId) -> CacheLookup;

    /// Looks many users up, answering in the order of `ids`. The default asks one by one;
    /// implementations override it with a single round trip.
    async fn lookup_many(&self, ids: &[UserId]) -> Vec<CacheLookup> {
        let mut lookups = Vec::with_capacity(ids.len());
        for id in ids {
            lookups.push(self.lookup(*id).await);
        }
        lookups
    }

    /// Stores `bytes` for `id` unless the user was invalidated after `ticket` was taken.
    async fn fill(&self, id: UserId, ticket: FillTicket, bytes: Vec<u8>);

    /// Called after a committed change of these users: deletes their entries (and any
    /// downstream copies) and moves their generation on. Returns once no reader can be
    /// served the replaced value any more, or once a bound of the implementation's has
    /// passed without that ([`Invalidation::Unconfirmed`]): the change must not be
    /// acknowledged before, or another instance could serve the value it replaced. An
    /// unconfirmed invalidation is retried in the background until it succeeds.
    async fn invalidate(&self, ids: &[UserId]) -> Invalidation;

    /// Probes the cache for `/health`.
    async fn health(&self) -> CacheHealth;

    /// What the cache still owes its store of entries (for metrics). Nothing by default.
    fn backlog(&self) -> CacheBacklog {
        CacheBacklog::default()
    }

    /// Called once before the process exits: finishes, within a bound of the
    /// implementation's, the work that outlives the writes that asked for it (invalidations
    /// not yet confirmed, follow-up deletions of downstream copies). Nothing by default.
    async fn finish_pending(&self) {}
}

/// The cache used when none is configured: every lookup is `Unavailable`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCache;

#[async_trait]
impl ProfileCache for NoCache {
    async fn lookup(&self, _id: UserId) -> CacheLookup {
        CacheLookup::Unavailable
    }

    async fn fill(&self, _id: UserId, _ticket: FillTicket, _bytes: Vec<u8>) {}

    async fn invalidate(&self, _ids: &[UserId]) -> Invalidation {
        Invalidation::Confirmed
    }

    async fn health(&self) -> CacheHealth {
        CacheHealth::Disabled
    }
}

/// Invalidations without caching: every lookup is `Unavailable`, so every read goes to the
/// store, while invalidations still reach `inner`. With caching switched off, the downstream
/// copies `inner` deletes on every change (another service's cache of our answers) stay as
/// exact as with caching on. An invalidation is always [`Invalidation::Confirmed`] here: no
/// reader of ours can be served a cached entry, so a cache that cannot be reached is never a
/// reason to refuse a change (the downstream copies are deleted as soon as it can be).
#[derive(Clone)]
pub struct InvalidationsOnly(pub Arc<dyn ProfileCache>);

impl std::fmt::Debug for InvalidationsOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvalidationsOnly").finish_non_exhaustive()
    }
}

#[async_trait]
impl ProfileCache for InvalidationsOnly {
    async fn lookup(&self, _id: UserId) -> CacheLookup {
        CacheLookup::Unavailable
    }

    async fn lookup_many(&self, ids: &[UserId]) -> Vec<CacheLookup> {
        vec![CacheLookup::Unavailable; ids.len()]
    }

    async fn fill(&self, _id: UserId, _ticket: FillTicket, _bytes: Vec<u8>) {}

    async fn invalidate(&self, ids: &[UserId]) -> Invalidation {
        let _deleted_downstream_or_retried = self.0.invalidate(ids).await;
        Invalidation::Confirmed
    }

    async fn health(&self) -> CacheHealth {
        self.0.health().await
    }

    fn backlog(&self) -> CacheBacklog {
        self.0.backlog()
    }

    async fn finish_pending(&self) {
        self.0.finish_pending().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_only_reads_nothing_from_the_cache_and_passes_every_invalidation_on() {
        let user = UserId::generate();
        let mut inner = MockProfileCache::new();
        inner.expect_lookup().never();
        inner.expect_fill().never();
        inner.expect_invalidate().withf(move |ids| ids == [user]).times(1).return_const(Invalidation::Unconfirmed);
        inner.expect_finish_pending().times(1).return_const(());
        let cache = InvalidationsOnly(Arc::new(inner));
        futures_executor::block_on(async {
            assert_eq!(cache.lookup(user).await, CacheLookup::Unavailable);
            assert_eq!(cache.lookup_many(&[user, user]).await, vec![CacheLookup::Unavailable; 2]);
            cache.fill(user, FillTicket::new(None), b"ignored".to_vec()).await;
            assert_eq!(cache.invalidate(&[user]).await, Invalidation::Confirmed);
            cache.finish_pending().await;
        });
    }
}
