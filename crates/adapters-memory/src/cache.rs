//! [`MemoryCache`]: the domain's [`ProfileCache`] port in the memory of this process, with
//! the guarantees of the Redis one, for a service that runs as a single instance (or is
//! embedded) and has no Redis.
//!
//! **Coherent within one process only.** Invalidations made by another instance never reach
//! this cache, so behind a load balancer an instance would serve a profile that another
//! instance has just changed. With several instances, configure Redis. For the same reason
//! this cache is not a fallback for a Redis that is down.
//!
//! How the port's promises are kept:
//! - **No stale set.** Every user has a generation, a number handed out by a counter that
//!   only grows. A miss hands out the user's current generation as its [`FillTicket`]; an
//!   invalidation gives the user a fresh number and deletes the entry; a fill stores only if
//!   the user's generation still equals the ticket's. Lookup, fill and invalidation of a
//!   user each run under the lock of the user's shard, so the check and the store are one
//!   step.
//! - **Bounded memory.** At most `max_entries` entries, evicting expired entries first, then
//!   the oldest. Generations are kept at least `generation_ttl` after an invalidation and
//!   are bounded in number the same way. A forgotten generation cannot let an old ticket
//!   fill: each shard remembers the highest generation it forgot (its *floor*), and a user
//!   without a generation has the floor as its generation. A generation handed out after a
//!   ticket was taken is higher than the ticket, and so is the floor once that generation is
//!   forgotten, so they never equal it again. Forgetting can at worst refuse a fill that
//!   would have been fresh, which costs one more miss.
//! - **Never a reason to fail, never down.** Nothing here waits for I/O; [`health`] is
//!   always [`CacheHealth::Up`].
//!
//! Lookups are the hot path: the map is split into shards, each behind its own mutex, and a
//! hit shares its entry ([`CachedProfile`]: the bytes and what was decoded from them) without
//! copying. What must not live here: I/O, or any
//! state shared with other instances of the service.
//!
//! [`health`]: ProfileCache::health

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::cache::{CacheHealth, CacheLookup, CachedProfile, FillTicket, Invalidation, ProfileCache};
use domain::user::UserId;

/// How long an entry lives when not configured (`CACHE_TTL`'s default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// The most entries kept when not configured.
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;
/// How long a generation is kept after an invalidation when not configured: far longer than
/// any lookup-load-fill sequence.
pub const DEFAULT_GENERATION_TTL: Duration = Duration::from_secs(600);
/// The number of lock shards when not configured.
pub const DEFAULT_SHARDS: usize = 32;

/// New entries (or generations) of a shard between two sweeps of the expired ones: sweeping
/// is linear in the shard's size, so it is amortized over many insertions.
const SWEEP_EVERY: usize = 1_024;

/// The longest TTL honoured; longer ones are cut to it, so that `now + ttl` cannot overflow.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Where a [`MemoryCache`] reads the time.
type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// How a [`MemoryCache`] is sized. Start from [`MemoryCacheConfig::default`] and override
/// fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryCacheConfig {
    /// How long an entry lives (`CACHE_TTL`). Cut to one year.
    pub ttl: Duration,
    /// The most entries held, expired ones not yet swept included (at least 1). The same
    /// bound applies to generations, which are a few dozen bytes each.
    pub max_entries: usize,
    /// How long a user's generation is kept after its invalidation. Correctness does not
    /// depend on it (see the module documentation); a longer one forgets less often, which
    /// refuses fewer fresh fills. Cut to one year.
    pub generation_ttl: Duration,
    /// The number of independently locked parts of the cache (at least 1, at most
    /// `max_entries`). Each part holds at most its share of `max_entries`, and evicts on its
    /// own when that is reached.
    pub shards: usize,
}

impl Default for MemoryCacheConfig {
    /// TTL 300 s, 100,000 entries, generations kept 10 min, 32 shards.
    fn default() -> Self {
        Self {
            ttl: DEFAULT_TTL,
            max_entries: DEFAULT_MAX_ENTRIES,
            generation_ttl: DEFAULT_GENERATION_TTL,
            shards: DEFAULT_SHARDS,
        }
    }
}

/// A [`ProfileCache`] in process memory, for a single instance of the service (see the
/// [module documentation](self)). Never fails and never waits for I/O.
///
/// Its tickets are decimal generation numbers, meaningful only to the cache that handed them
/// out: a ticket it did not hand out never fills.
pub struct MemoryCache {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a user's shard; seeded once, so that a user always maps to the same shard.
    hasher: RandomState,
    ttl: Duration,
    generation_ttl: Duration,
    /// The most entries, and the most generations, of one shard.
    shard_capacity: usize,
    clock: Clock,
}

/// One independently locked part of the cache.
#[derive(Debug, Default)]
struct Shard {
    entries: HashMap<UserId, Entry>,
    generations: HashMap<UserId, Generation>,
    /// The highest generation this shard forgot: the generation of every user without one.
    floor: u64,
    /// The last generation this shard handed out. Generations are compared only within their
    /// shard (a user never changes shards), so a counter per shard is as good as a global
    /// one and shares no cache line between shards.
    last_generation: u64,
    /// New entries since expired entries were last swept.
    filled_since_sweep: usize,
    /// New generations since expired generations were last swept.
    invalidated_since_sweep: usize,
}

/// A cached representation.
#[derive(Debug)]
struct Entry {
    /// Shared with every reader of the entry, with what they decoded from it.
    cached: CachedProfile,
    expires: Instant,
}

/// A user's generation since its last invalidation.
#[derive(Debug, Clone, Copy)]
struct Generation {
    value: u64,
    /// Kept at least until then.
    forgettable_after: Instant,
}

impl MemoryCache {
    /// A cache sized by `config` (out-of-range values are brought into range, see
    /// [`MemoryCacheConfig`]), on the system clock.
    pub fn new(config: MemoryCacheConfig) -> Self {
        let max_entries = config.max_entries.max(1);
        let shards = config.shards.clamp(1, max_entries);
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            ttl: config.ttl.min(MAX_TTL),
            generation_ttl: config.generation_ttl.min(MAX_TTL),
            // Rounded down, so that all shards together hold at most `max_entries`.
            shard_capacity: max_entries / shards,
            clock: Arc::new(Instant::now),
        }
    }

    /// The same cache reading the time from `clock`, so that tests can move time on without
    /// sleeping.
    #[must_use]
    pub fn with_clock(self, clock: impl Fn() -> Instant + Send + Sync + 'static) -> Self {
        Self { clock: Arc::new(clock), ..self }
    }

    /// How many entries are held, expired ones not yet swept included (for metrics).
    pub fn cached_entries(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).entries.len()).sum()
    }

    /// How many user generations are held (for metrics).
    pub fn tracked_generations(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).generations.len()).sum()
    }

    fn shard(&self, id: UserId) -> MutexGuard<'_, Shard> {
        let count = self.shards.len() as u64;
        // The remainder is below the shard count, which is a `usize`.
        let index = (self.hasher.hash_one(id) % count) as usize;
        lock(&self.shards[index])
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Every update leaves the maps valid (whole entries, whole generations, a floor that only
    // grows): poisoning carries no meaning.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new(MemoryCacheConfig::default())
    }
}

impl fmt::Debug for MemoryCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCache")
            .field("ttl", &self.ttl)
            .field("generation_ttl", &self.generation_ttl)
            .field("shards", &self.shards.len())
            .field("max_entries", &(self.shard_capacity * self.shards.len()))
            .field("cached_entries", &self.cached_entries())
            .field("tracked_generations", &self.tracked_generations())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ProfileCache for MemoryCache {
    async fn lookup(&self, id: UserId) -> CacheLookup {
        let now = (self.clock)();
        let (found, expired) = {
            let mut shard = self.shard(id);
            match shard.entries.get(&id) {
                Some(entry) if now < entry.expires => (Ok(entry.cached.clone()), None),
                Some(_) => {
                    let expired = shard.entries.remove(&id);
                    (Err(shard.generation(id)), expired)
                }
                None => (Err(shard.generation(id)), None),
            }
        };
        // Freed outside the lock.
        drop(expired);
        match found {
            Ok(cached) => CacheLookup::Hit(cached),
            Err(generation) => CacheLookup::Miss(FillTicket::new(Some(generation.to_string()))),
        }
    }

    async fn fill(&self, id: UserId, ticket: FillTicket, bytes: Vec<u8>) {
        let Some(ticket) = ticket.generation().and_then(|generation| generation.parse::<u64>().ok()) else {
            return;
        };
        let now = (self.clock)();
        let entry = Entry { cached: bytes.into(), expires: now + self.ttl };
        let (replaced, evicted) = {
            let mut shard = self.shard(id);
            if shard.generation(id) != ticket {
                return;
            }
            let evicted = if shard.entries.contains_key(&id) {
                Vec::new()
            } else {
                shard.make_room_for_entry(now, self.shard_capacity)
            };
            (shard.entries.insert(id, entry), evicted)
        };
        // Freed outside the lock.
        drop((replaced, evicted));
    }

    async fn invalidate(&self, ids: &[UserId]) -> Invalidation {
        let now = (self.clock)();
        let forgettable_after = now + self.generation_ttl;
        for &id in ids {
            let deleted = {
                let mut shard = self.shard(id);
                if !shard.generations.contains_key(&id) {
                    shard.make_room_for_generation(now, self.shard_capacity);
                }
                shard.last_generation += 1;
                let value = shard.last_generation;
                shard.generations.insert(id, Generation { value, forgettable_after });
                shard.entries.remove(&id)
            };
            // Freed outside the lock.
            drop(deleted);
        }
        // In process: every reader shares this memory, so the deletion is the confirmation.
        Invalidation::Confirmed
    }

    async fn health(&self) -> CacheHealth {
        CacheHealth::Up
    }
}

impl Shard {
    /// The user's generation: its own, or the floor when it has none (never invalidated, or
    /// forgotten).
    fn generation(&self, id: UserId) -> u64 {
        self.generations.get(&id).map_or(self.floor, |generation| generation.value)
    }

    /// Sweeps expired entries when due, then evicts the oldest entries if the shard is still
    /// full, so that one more fits. Returns what it removed, to be freed outside the lock.
    fn make_room_for_entry(&mut self, now: Instant, capacity: usize) -> Vec<Entry> {
        self.filled_since_sweep += 1;
        let mut removed = Vec::new();
        if self.entries.len() >= capacity || self.filled_since_sweep >= SWEEP_EVERY {
            self.filled_since_sweep = 0;
            remove_where(&mut self.entries, &mut removed, |entry| entry.expires <= now);
        }
        if self.entries.len() >= capacity {
            // Entries all live one TTL, so the oldest expire first. A tenth at once, so that a
            // full shard pays the linear scan once per many fills.
            if let Some(cutoff) = nth_smallest(self.entries.values().map(|entry| entry.expires), a_tenth(capacity) - 1)
            {
                remove_where(&mut self.entries, &mut removed, |entry| entry.expires <= cutoff);
            }
        }
        removed
    }

    /// Forgets generations past their retention when due, then the oldest ones if the shard
    /// still holds `capacity`, raising the floor to the highest one forgotten.
    fn make_room_for_generation(&mut self, now: Instant, capacity: usize) {
        self.invalidated_since_sweep += 1;
        let mut forgotten = Vec::new();
        if self.generations.len() >= capacity || self.invalidated_since_sweep >= SWEEP_EVERY {
            self.invalidated_since_sweep = 0;
            remove_where(&mut self.generations, &mut forgotten, |generation| generation.forgettable_after <= now);
        }
        if self.generations.len() >= capacity {
            // Generations are handed out in increasing order: the lowest are the oldest.
            let values = self.generations.values().map(|generation| generation.value);
            if let Some(cutoff) = nth_smallest(values, a_tenth(capacity) - 1) {
                remove_where(&mut self.generations, &mut forgotten, |generation| generation.value <= cutoff);
            }
        }
        if let Some(highest) = forgotten.iter().map(|generation| generation.value).max() {
            self.floor = self.floor.max(highest);
        }
    }
}

/// How many entries (or generations) a full shard evicts at once: a tenth, at least one.
fn a_tenth(capacity: usize) -> usize {
    (capacity / 10).max(1)
}

/// Moves the values of `map` that satisfy `condition` to `removed`.
fn remove_where<V>(map: &mut HashMap<UserId, V>, removed: &mut Vec<V>, condition: impl Fn(&V) -> bool) {
    let doomed: Vec<UserId> = map.iter().filter(|(_, value)| condition(value)).map(|(id, _)| *id).collect();
    removed.extend(doomed.iter().filter_map(|id| map.remove(id)));
}

/// The `index`-th smallest of `values` (counting from 0, clamped to the largest); `None` when
/// there are none.
fn nth_smallest<T: Ord + Copy>(values: impl Iterator<Item = T>, index: usize) -> Option<T> {
    let mut values: Vec<T> = values.collect();
    let index = index.min(values.len().checked_sub(1)?);
    Some(*values.select_nth_unstable(index).1)
}

#[cfg(test)]
mod tests {
    use crate::manual_clock::ManualClock;

    use super::*;

    crate::profile_cache_contract_tests!(|ttl| MemoryCache::new(MemoryCacheConfig {
        ttl,
        ..MemoryCacheConfig::default()
    }));

    /// A cache reading `clock`.
    fn cache_on(clock: &ManualClock, config: MemoryCacheConfig) -> MemoryCache {
        let clock = clock.clone();
        MemoryCache::new(config).with_clock(move || clock.now())
    }

    /// One shard, so that eviction order is exact.
    fn single_shard(max_entries: usize) -> MemoryCacheConfig {
        MemoryCacheConfig { max_entries, shards: 1, ..MemoryCacheConfig::default() }
    }

    async fn miss(cache: &MemoryCache, id: UserId) -> FillTicket {
        match cache.lookup(id).await {
            CacheLookup::Miss(ticket) => ticket,
            other => panic!("expected a miss, got {other:?}"),
        }
    }

    async fn warm(cache: &MemoryCache, id: UserId, bytes: &[u8]) {
        let ticket = miss(cache, id).await;
        cache.fill(id, ticket, bytes.to_vec()).await;
        assert_eq!(cache.lookup(id).await, CacheLookup::Hit(bytes.to_vec().into()));
    }

    #[test]
    fn the_defaults_are_those_of_the_issue() {
        let config = MemoryCacheConfig::default();
        assert_eq!(config.ttl, Duration::from_secs(300));
        assert_eq!(config.max_entries, 100_000);
        assert_eq!(config.generation_ttl, Duration::from_secs(600));
        assert_eq!(config.shards, 32);
        let output = format!("{:?}", MemoryCache::default());
        assert!(output.contains("max_entries: 100000") && output.contains("shards: 32"), "{output}");
    }

    #[tokio::test]
    async fn a_full_cache_evicts_expired_entries_first_then_the_oldest() {
        let clock = ManualClock::new();
        let cache = cache_on(&clock, MemoryCacheConfig { ttl: Duration::from_secs(60), ..single_shard(10) });
        let ids: Vec<UserId> = (0..10).map(|_| UserId::generate()).collect();
        for &id in &ids[..3] {
            warm(&cache, id, b"expires first").await;
        }
        clock.advance(Duration::from_secs(30));
        for &id in &ids[3..] {
            warm(&cache, id, b"live").await;
            clock.advance(Duration::from_secs(1));
        }
        // The first three expired; the other seven are live.
        clock.advance(Duration::from_secs(25));

        warm(&cache, UserId::generate(), b"new").await;
        assert_eq!(cache.cached_entries(), 8, "only the expired entries made room");
        for &id in &ids[3..] {
            assert_eq!(cache.lookup(id).await, CacheLookup::Hit(b"live".to_vec().into()));
        }

        for _ in 0..3 {
            warm(&cache, UserId::generate(), b"new").await;
        }
        assert_eq!(cache.cached_entries(), 10, "the eleventh fill evicted one entry");
        assert!(matches!(cache.lookup(ids[3]).await, CacheLookup::Miss(_)), "the oldest live entry was evicted");
        assert_eq!(cache.lookup(ids[4]).await, CacheLookup::Hit(b"live".to_vec().into()));
    }

    #[tokio::test]
    async fn the_entries_never_exceed_the_bound_across_shards() {
        let cache = MemoryCache::new(MemoryCacheConfig { max_entries: 1_000, ..MemoryCacheConfig::default() });
        for _ in 0..5_000 {
            let id = UserId::generate();
            let ticket = miss(&cache, id).await;
            cache.fill(id, ticket, b"bytes".to_vec()).await;
        }
        assert!(cache.cached_entries() <= 1_000, "{} entries", cache.cached_entries());
        assert!(cache.cached_entries() >= 800, "{} entries: the shards evict a tenth at once", cache.cached_entries());
    }

    #[tokio::test]
    async fn an_expired_entry_is_dropped_when_looked_up() {
        let clock = ManualClock::new();
        let cache = cache_on(&clock, MemoryCacheConfig::default());
        let id = UserId::generate();
        warm(&cache, id, b"bytes").await;
        clock.advance(Duration::from_millis(299_999));
        assert_eq!(cache.lookup(id).await, CacheLookup::Hit(b"bytes".to_vec().into()));
        clock.advance(Duration::from_millis(1));
        assert!(matches!(cache.lookup(id).await, CacheLookup::Miss(_)));
        assert_eq!(cache.cached_entries(), 0);
    }

    #[tokio::test]
    async fn generations_are_kept_their_retention_then_forgotten() {
        let clock = ManualClock::new();
        let cache = cache_on(&clock, single_shard(1_000_000));
        let id = UserId::generate();
        assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
        clock.advance(DEFAULT_GENERATION_TTL - Duration::from_millis(1));
        for _ in 0..SWEEP_EVERY {
            assert_eq!(cache.invalidate(&[UserId::generate()]).await, Invalidation::Confirmed);
        }
        assert!(lock(&cache.shards[0]).generations.contains_key(&id), "kept for its retention");

        clock.advance(Duration::from_millis(1));
        for _ in 0..SWEEP_EVERY {
            assert_eq!(cache.invalidate(&[UserId::generate()]).await, Invalidation::Confirmed);
        }
        assert!(!lock(&cache.shards[0]).generations.contains_key(&id), "forgotten after it");
        assert_eq!(lock(&cache.shards[0]).floor, 1, "the floor is the forgotten generation");
    }

    #[tokio::test]
    async fn generations_are_bounded_in_number_like_entries() {
        let cache = MemoryCache::new(single_shard(100));
        let oldest = UserId::generate();
        assert_eq!(cache.invalidate(&[oldest]).await, Invalidation::Confirmed);
        for _ in 0..1_000 {
            assert_eq!(cache.invalidate(&[UserId::generate()]).await, Invalidation::Confirmed);
        }
        assert!(cache.tracked_generations() <= 100, "{} generations", cache.tracked_generations());
        assert!(!lock(&cache.shards[0]).generations.contains_key(&oldest), "the oldest were forgotten");
    }

    #[tokio::test]
    async fn a_forgotten_generation_never_lets_an_older_ticket_fill() {
        // Forgotten by count: newer generations of other users push it out.
        let cache = MemoryCache::new(single_shard(10));
        let id = UserId::generate();
        let never_invalidated = miss(&cache, id).await;
        assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
        let after_one_write = miss(&cache, id).await;
        assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
        for _ in 0..20 {
            assert_eq!(cache.invalidate(&[UserId::generate()]).await, Invalidation::Confirmed);
        }
        assert!(!lock(&cache.shards[0]).generations.contains_key(&id));
        for stale in [never_invalidated, after_one_write] {
            cache.fill(id, stale.clone(), b"stale".to_vec()).await;
            assert!(matches!(cache.lookup(id).await, CacheLookup::Miss(_)), "{stale:?} filled");
        }
        warm(&cache, id, b"fresh").await;

        // Forgotten by age, with nothing newer forgotten: the ticket taken after the write
        // still fills, the one from before it does not.
        let clock = ManualClock::new();
        let cache = cache_on(&clock, single_shard(1_000_000));
        let id = UserId::generate();
        let before = miss(&cache, id).await;
        assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
        let after = miss(&cache, id).await;
        clock.advance(DEFAULT_GENERATION_TTL);
        for _ in 0..SWEEP_EVERY {
            assert_eq!(cache.invalidate(&[UserId::generate()]).await, Invalidation::Confirmed);
        }
        assert!(!lock(&cache.shards[0]).generations.contains_key(&id));
        cache.fill(id, before, b"stale".to_vec()).await;
        assert!(matches!(cache.lookup(id).await, CacheLookup::Miss(_)), "the ticket from before the write filled");
        cache.fill(id, after, b"fresh".to_vec()).await;
        assert_eq!(cache.lookup(id).await, CacheLookup::Hit(b"fresh".to_vec().into()));
    }

    #[tokio::test]
    async fn a_ticket_this_cache_did_not_hand_out_never_fills() {
        let cache = MemoryCache::default();
        let id = UserId::generate();
        for ticket in [None, Some("not a generation"), Some("-1"), Some("1"), Some("18446744073709551615")] {
            cache.fill(id, FillTicket::new(ticket.map(str::to_owned)), b"foreign".to_vec()).await;
            assert!(matches!(cache.lookup(id).await, CacheLookup::Miss(_)), "{ticket:?} filled");
        }
    }

    #[tokio::test]
    async fn out_of_range_settings_are_brought_into_range() {
        let cache = MemoryCache::new(MemoryCacheConfig {
            ttl: Duration::MAX,
            max_entries: 0,
            generation_ttl: Duration::MAX,
            shards: 0,
        });
        let id = UserId::generate();
        warm(&cache, id, b"bytes").await;
        assert_eq!(cache.invalidate(&[id]).await, Invalidation::Confirmed);
        warm(&cache, UserId::generate(), b"bytes").await;
        assert_eq!(cache.cached_entries(), 1);
        assert_eq!(cache.shards.len(), 1);

        let cache = MemoryCache::new(MemoryCacheConfig { max_entries: 4, shards: 32, ..MemoryCacheConfig::default() });
        assert_eq!((cache.shards.len(), cache.shard_capacity), (4, 1), "never more shards than entries");
    }
}
