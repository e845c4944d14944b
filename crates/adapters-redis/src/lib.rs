//! Redis adapter: implements the domain's [`ProfileCache`] and
//! [`RateLimiter`](domain::rate_limit::RateLimiter) ports with redis-rs.
//!
//! - [`RedisCache`]: the cache, built from a [`RedisCacheConfig`] without connecting.
//! - [`RedisRateLimiter`]: fixed-window counters, built from the same configuration without
//!   connecting.
//! - [`config`]: the configuration, its defaults and the build errors.
//!
//! Both reach Redis the same way: through one multiplexed connection (made on first use,
//! shared by all calls, remade after it failed; the cache's invalidations have a second one,
//! see [`servers`]), every call, connecting included, bounded by
//! the configured timeout, and a circuit breaker that skips Redis after consecutive failures.
//! Each has its own connection and breaker, so that one's outage log names what degrades. In
//! a Redis Cluster each has one such connection per node, and a call goes to the master of
//! its keys' slot ([`servers`]); a user's keys then share a hash tag.
//!
//! How the cache port's promises are kept (the limiter's are in its own docs):
//! - **No stale set.** A lookup reads the entry and the user's generation in one `MGET`; a
//!   miss hands out the generation as the [`FillTicket`]. A fill is a Lua script that stores
//!   the bytes only if the generation is still the ticket's. An invalidation sets the
//!   generation to a fresh UUID, with a commit position when a read replica is used
//!   ([`floors`]; never a counter: a generation that expired and was created again can then
//!   never equal an old ticket) and deletes the entry and the configured
//!   downstream keys, for all ids in one script. Each entry also carries the generation it
//!   was filled under and is served only while that is still current, so that writers
//!   running another format version (a rolling deploy) invalidate it too.
//! - **No entry from another server process.** Entries and tickets also carry the `run_id`
//!   of the Redis process they were read from or filled in; one from another process (Redis
//!   restarted empty or from an old snapshot, or failed over) is never served or filled, so
//!   that a restored entry older than a confirmed invalidation stays unused.
//! - **No acknowledged change is followed by a stale read.** An invalidation returns once
//!   Redis confirmed it, and every replica of the server has it (`WAIT`: a replica promoted
//!   later, or already promoted without its old master knowing, a split brain, never lacks
//!   it; see [`connection`]), calling Redis despite the breaker for up to
//!   [`RedisCacheConfig::confirm_wait`]. Past that, it is recorded in the store's
//!   [`InvalidationLedger`] and returns one lease later ([`lease`]): every instance reads the
//!   ledger every [`RedisCacheConfig::lease_renewal`], serves no entry of a listed user, and
//!   serves nothing at all once its last read is older than the lease; any instance that
//!   reaches Redis replays the recorded invalidations and forgets them. Without a ledger, or
//!   when recording fails, the invalidation is [`Invalidation::Unconfirmed`].
//! - **Never a reason to fail a read.** Calls are bounded as above. An invalidation is
//!   queued before it is attempted and forgotten once Redis confirmed it, so that a failed or
//!   abandoned one is retried by a background task; lookups of its ids skip the cache until
//!   then.
//! - **Hot entries are kept in process, never stale.** With a near-cache configured
//!   ([`RedisCacheConfig::near_cache_max_bytes`]), an entry read from Redis is kept in
//!   process and served from there after a shared freshness check; Redis's client-side
//!   caching (`CLIENT TRACKING`) removes it on any change ([`near`] says why that is exact).
//! - **Downstream copies stay deleted.** Clients that fill their own copy of our answer
//!   without a guard may put back a body read before the change; each confirmed
//!   invalidation schedules follow-up deletions of those copies ([`follow_up`]).
//!
//! What must not live here: HTTP, SQL, or the serialization of users (the bytes are opaque).

mod breaker;
pub mod config;
mod connection;
mod floors;
mod follow_up;
mod lease;
mod near;
mod pending;
mod rate_limit;
mod replicas;
mod servers;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::cache::{
    CacheBacklog, CacheHealth, CacheLookup, CachedProfile, CommitPositions, FillTicket, Invalidation,
    InvalidationLedger, LedgerEntry, ProfileCache,
};
use domain::user::UserId;
use redis::Script;
use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;

use crate::connection::{Answer, Breaker, Request, Role, ServerId, Tracking, connected_replicas, info_field};
use crate::floors::ReadFloors;
use crate::follow_up::FollowUps;
use crate::lease::{ReadLease, Renewal};
use crate::near::NearCache;
use crate::pending::PendingInvalidations;
use crate::servers::Servers;

pub use config::{RedisCacheConfig, RedisCacheError, SentinelConfig};
pub use rate_limit::RedisRateLimiter;

/// Stores the entry if the generation is unchanged since the ticket was taken (absent and
/// absent are equal). KEYS: entry, generation. ARGV: value, TTL in ms, "1" when the ticket
/// has a generation, the ticket's generation. Returns 1 when stored.
const GUARDED_FILL: &str = r"
local current = redis.call('GET', KEYS[2])
if ARGV[3] == '1' then
  if current ~= ARGV[4] then return 0 end
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

/// Moves the generations of users on and deletes their entries and downstream copies.
/// KEYS: for each user, its generation key then the keys to delete, ARGV[4] keys per user.
/// ARGV: the new generation's unique part, the store's commit position after the change
/// (hex, empty when unknown or not recorded), the generation's TTL in ms, keys per user.
/// The position recorded never goes down: an invalidation that reaches Redis late (sent
/// before a stall, retried, replayed from the ledger) keeps the later position a newer one
/// recorded; a generation without one (unknown) stays without one (see [`floors`]).
const INVALIDATE: &str = r"
local position = ARGV[2]
local per_user = tonumber(ARGV[4])
for first = 1, #KEYS, per_user do
  local generation = ARGV[1]
  if position ~= '' then
    local current = redis.call('GET', KEYS[first])
    local recorded = current and string.match(current, '@(%x+)$')
    if not current or recorded then
      local floor = position
      if recorded and (#recorded > #floor or (#recorded == #floor and recorded > floor)) then
        floor = recorded
      end
      generation = generation .. '@' .. floor
    end
  end
  redis.call('SET', KEYS[first], generation, 'PX', ARGV[3])
  for key = first + 1, first + per_user - 1 do
    redis.call('DEL', KEYS[key])
  end
end
return 1
";

/// What a cache without a fill guard does: stores whatever it loaded as current. KEYS:
/// entry, generation. ARGV: payload, TTL in ms, the server's run_id.
#[cfg(any(test, feature = "test-support"))]
const UNGUARDED_FILL: &str = r"
local current = redis.call('GET', KEYS[2]) or ''
redis.call('SET', KEYS[1], ARGV[3] .. '/' .. current .. '\n' .. ARGV[1], 'PX', ARGV[2])
return 1
";

/// Ids per retried invalidation, to keep one script well under the call timeout.
const RETRY_BATCH: usize = 1_000;

/// Follow-up deletions per round trip, for the same reason.
const FOLLOW_UP_BATCH: usize = 1_000;

/// How often due follow-up deletions are sent: they run at most this late.
const FOLLOW_UP_TICK: Duration = Duration::from_millis(50);

/// How long [`ProfileCache::finish_pending`] waits beyond the last follow-up deletion.
const FINISH_MARGIN: Duration = Duration::from_secs(1);

/// How long a change waiting for Redis pauses between two attempts at its invalidation.
const CONFIRM_RETRY: Duration = Duration::from_millis(25);

/// The most ledger recordings read (and replayed) at once; with more, readers distrust
/// every entry until the ledger is shorter.
const LEDGER_READ_LIMIT: usize = RETRY_BATCH;

/// How long a near-cache probe's key lives (it is only read and changed once).
const PROBE_TTL_MS: u64 = 10_000;

/// How long the task that sends the near-cache's freshness checks waits for a request before
/// it looks whether the cache was dropped.
const BARRIER_IDLE: Duration = Duration::from_secs(1);

/// A [`ProfileCache`] on Redis. Cheap to clone; the clones share the connection, the breaker and
/// the retry queue. The retry task stops when the last clone is dropped.
#[derive(Clone)]
pub struct RedisCache {
    inner: Arc<Inner>,
}

struct Inner {
    servers: Servers,
    keys: Keys,
    ttl_ms: u64,
    generation_ttl_ms: u64,
    pending: PendingInvalidations,
    follow_ups: FollowUps,
    /// How long a change waits for Redis before it is recorded in the ledger.
    confirm_wait: Duration,
    /// Invalidations answered [`Invalidation::Unconfirmed`], until Redis or the ledger
    /// confirms them.
    unconfirmed: Unconfirmed,
    /// Where unconfirmed invalidations are recorded, with the lease that readers hold on
    /// it; `None` for a cache built without a ledger.
    ledger: Option<(Arc<dyn InvalidationLedger>, ReadLease)>,
    /// The commit positions recorded with invalidations and handed to readers of misses
    /// ([`floors`]); `None`: every miss is loaded from the primary.
    floors: Option<ReadFloors>,
    guarded_fill: Script,
    invalidate: Script,
    #[cfg(any(test, feature = "test-support"))]
    unguarded_fill: Script,
    /// Hot entries in process, with the freshness check they are served after; `None` when
    /// turned off.
    near: Option<Arc<NearCache>>,
    /// The longest a read waits for the near-cache's freshness check: one check in flight,
    /// then its own, each bounded by the call timeout.
    barrier_bound: Duration,
    /// Dropped with the last clone, which stops the retry task.
    _shutdown: oneshot::Sender<()>,
    #[cfg(test)]
    retry_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl RedisCache {
    /// Builds the cache with the store's invalidation ledger, which every instance sharing
    /// this Redis must use too, and starts its background task. Does not connect: the first
    /// call does, so the service starts while Redis is down. Must be called inside a Tokio
    /// runtime.
    pub fn build_with_ledger(
        config: RedisCacheConfig,
        ledger: Arc<dyn InvalidationLedger>,
    ) -> Result<Self, RedisCacheError> {
        Self::build_inner(config, Some(ledger), None)
    }

    /// Builds the cache without a ledger: a change whose invalidation Redis does not
    /// confirm within [`RedisCacheConfig::confirm_wait`] is then
    /// [`Invalidation::Unconfirmed`]. Otherwise as [`Self::build_with_ledger`].
    pub fn build(config: RedisCacheConfig) -> Result<Self, RedisCacheError> {
        Self::build_inner(config, None, None)
    }

    /// [`Self::build_with_ledger`], recording the store's commit position with every
    /// invalidation so that misses may be loaded from a read replica that has applied it
    /// ([`floors`]). Every instance sharing this Redis must record them too.
    pub fn build_with_ledger_and_positions(
        config: RedisCacheConfig,
        ledger: Arc<dyn InvalidationLedger>,
        positions: Arc<dyn CommitPositions>,
    ) -> Result<Self, RedisCacheError> {
        Self::build_inner(config, Some(ledger), Some(positions))
    }

    fn build_inner(
        config: RedisCacheConfig,
        ledger: Option<Arc<dyn InvalidationLedger>>,
        positions: Option<Arc<dyn CommitPositions>>,
    ) -> Result<Self, RedisCacheError> {
        config.validate()?;
        if config.cluster.is_some() && positions.is_some() {
            // The floors' epoch is one key of one server (see [`floors`]).
            return Err(RedisCacheError::Invalid(
                "commit positions (a read replica) are not supported with Redis Cluster",
            ));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RedisCacheError::NoRuntime)?;
        let near = (config.near_cache_max_bytes > 0)
            .then(|| Arc::new(NearCache::new(config.near_cache_max_bytes, config.ttl, &config.key_prefix)));
        let tracking = near.clone().map(|near| -> Tracking { Arc::new(move |push| near.apply(push)) });
        let servers = Servers::build(
            &config,
            Role {
                name: "cache",
                degraded: "serving from the store; changes wait for Redis or the invalidation ledger",
                identify_server: true,
            },
            tracking,
        )?;

        let (shutdown, shutdown_received) = oneshot::channel();
        let inner = Arc::new(Inner {
            servers,
            keys: Keys {
                prefix: config.key_prefix.clone(),
                version: config.format_version.clone(),
                extra: config.extra_invalidation_keys.clone(),
                tagged: config.cluster.is_some(),
            },
            ttl_ms: millis(config.ttl),
            generation_ttl_ms: millis(config.generation_ttl),
            // An id dropped from a full queue may leave an entry stale until it expires; entries
            // filled just after it by readers that loaded before the write live one TTL more.
            pending: PendingInvalidations::new(config.max_pending_invalidations, config.ttl * 2, config.timeout),
            follow_ups: {
                let delays = if config.extra_invalidation_keys.is_empty() {
                    Vec::new()
                } else {
                    config.extra_invalidation_delays.clone()
                };
                // As many users as invalidations may wait for, each with every delay.
                let capacity = config.max_pending_invalidations.saturating_mul(delays.len());
                FollowUps::new(delays, capacity)
            },
            confirm_wait: config.confirm_wait,
            unconfirmed: Unconfirmed::default(),
            ledger: ledger.map(|ledger| (ledger, ReadLease::new(config.read_lease))),
            floors: positions.map(|positions| ReadFloors::new(positions, config.generation_ttl, config.confirm_wait)),
            guarded_fill: Script::new(GUARDED_FILL),
            invalidate: Script::new(INVALIDATE),
            #[cfg(any(test, feature = "test-support"))]
            unguarded_fill: Script::new(UNGUARDED_FILL),
            near,
            barrier_bound: config.timeout * 2,
            _shutdown: shutdown,
            #[cfg(test)]
            retry_task: std::sync::Mutex::new(None),
        });
        let task = runtime.spawn(background(Arc::downgrade(&inner), shutdown_received, config.retry_interval));
        if let Some(near) = &inner.near {
            // Detached too: it ends within BARRIER_IDLE of the cache's drop.
            drop(runtime.spawn(send_barriers(Arc::downgrade(&inner), Arc::clone(near))));
        }
        if inner.ledger.is_some() {
            // Detached too: it ends at its first renewal after the cache is dropped.
            drop(runtime.spawn(renew_leases(Arc::downgrade(&inner), config.lease_renewal)));
        }
        #[cfg(test)]
        {
            *inner.retry_task.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(task);
        }
        // Detached: it ends by itself when the cache is dropped.
        #[cfg(not(test))]
        drop(task);
        tracing::debug!(url = %inner.servers.redacted_url(), prefix = %inner.keys.prefix, "Redis cache configured");
        Ok(Self { inner })
    }

    /// How many entries and bytes the near-cache keeps, `None` when it is off (for metrics).
    pub fn near_cache_size(&self) -> Option<(u64, u64)> {
        self.inner.near.as_ref().map(|near| near.size())
    }

    /// How many user ids wait for Redis to confirm their invalidation (for metrics).
    pub fn pending_invalidations(&self) -> usize {
        self.inner.pending.len()
    }

    /// How many follow-up deletions of downstream copies are scheduled (for metrics).
    pub fn scheduled_follow_ups(&self) -> usize {
        self.inner.follow_ups.len()
    }

    /// Whether the circuit breaker currently skips Redis (for metrics).
    pub fn is_bypassed(&self) -> bool {
        self.inner.servers.is_bypassed()
    }

    /// Stores `bytes` as the current entry without checking the ticket's generation: what a
    /// cache without the fill guard would do. Only for tests that show what the guard prevents.
    #[cfg(any(test, feature = "test-support"))]
    pub async fn fill_unguarded(&self, id: UserId, bytes: Vec<u8>) {
        let Some(node) = self.inner.servers.route(&self.inner.keys.entry(id)).await else { return };
        let ping = redis::cmd("PING");
        let Some(Answer { server, .. }) = node.run_identified::<String>(Request::Command(&ping)).await else {
            return;
        };
        let mut invocation = self.inner.unguarded_fill.key(self.inner.keys.entry(id));
        invocation.key(self.inner.keys.generation(id)).arg(bytes).arg(self.inner.ttl_ms).arg(server.as_str());
        let _: Option<i64> = node.run_on(&server, Request::Script(&invocation)).await;
    }

    /// How many users the last read of the ledger listed (for metrics): their cached
    /// entries are not served until an instance replayed their invalidation.
    pub fn deferred_invalidations(&self) -> usize {
        self.inner.ledger.as_ref().map_or(0, |(_, lease)| lease.listed())
    }

    /// The retry task's handle, for tests that check it stops.
    #[cfg(test)]
    fn take_retry_task(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.inner.retry_task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

impl fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCache")
            .field("url", &self.inner.servers.redacted_url())
            .field("prefix", &self.inner.keys.prefix)
            .field("version", &self.inner.keys.version)
            .field("connected", &self.inner.servers.is_connected())
            .field("bypassed", &self.inner.servers.is_bypassed())
            .field("pending_invalidations", &self.inner.pending.len())
            .field("scheduled_follow_ups", &self.inner.follow_ups.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ProfileCache for RedisCache {
    async fn lookup(&self, id: UserId) -> CacheLookup {
        let inner = &self.inner;
        if !inner.may_use(id) {
            return CacheLookup::Unavailable;
        }
        match inner.near_hits(&[id]).await.map(|mut hits| hits.pop().flatten()) {
            Some(Some(payload)) => CacheLookup::Hit(payload),
            // Boxed: this future is itself boxed (and so copied) for every lookup, near-cache
            // hits included, and a Redis read's state would make it several times larger.
            Some(None) => Box::pin(inner.read(&[id])).await.pop().unwrap_or(CacheLookup::Unavailable),
            None => CacheLookup::Unavailable,
        }
    }

    async fn lookup_many(&self, ids: &[UserId]) -> Vec<CacheLookup> {
        let inner = &self.inner;
        let Some(near) = inner.near_hits(ids).await else {
            return vec![CacheLookup::Unavailable; ids.len()];
        };
        let missing: Vec<UserId> = ids.iter().zip(&near).filter(|(_, hit)| hit.is_none()).map(|(id, _)| *id).collect();
        let mut read = inner.read(&missing).await.into_iter();
        near.into_iter()
            .map(|hit| match hit {
                Some(payload) => CacheLookup::Hit(payload),
                None => read.next().unwrap_or(CacheLookup::Unavailable),
            })
            .collect()
    }

    async fn fill(&self, id: UserId, ticket: FillTicket, bytes: Vec<u8>) {
        let inner = &self.inner;
        let Some((server, generation)) = ticket.generation().and_then(parse_stamp) else {
            return;
        };
        if !inner.may_use(id) {
            return;
        }
        let mut invocation = inner.guarded_fill.key(inner.keys.entry(id));
        invocation
            .key(inner.keys.generation(id))
            .arg(encode_entry(ticket.generation().unwrap_or_default(), &bytes))
            .arg(inner.ttl_ms)
            .arg(if generation.is_empty() { "0" } else { "1" })
            .arg(generation);
        // Only in the server process the ticket was read from: in another one (a restart or a
        // failover since, or the slot moved), the generation the ticket names means nothing.
        let Some(node) = inner.servers.route(&inner.keys.entry(id)).await else { return };
        let _: Option<i64> = node.run_on(&server, Request::Script(&invocation)).await;
    }

    async fn invalidate(&self, ids: &[UserId]) -> Invalidation {
        if ids.is_empty() {
            return Invalidation::Confirmed;
        }
        let inner = &self.inner;
        if let Some(near) = &inner.near {
            // At once for this instance's own reads; Redis's pushes do it for the others'.
            near.invalidate(ids);
        }
        // Queued first: if this future is dropped half-way, the retry task still does the work,
        // and meanwhile lookups of these ids skip the cache.
        let batch = inner.pending.queue(ids, Instant::now());
        // Earlier invalidations this instance could not confirm go along: no change is
        // acknowledged here before they hold.
        let carried = inner.unconfirmed.snapshot();
        let mut all: Vec<UserId> = ids.iter().chain(&carried).copied().collect();
        all.sort_unstable();
        all.dedup();
        let generation = inner.new_generation().await;
        if inner.confirm_within(&all, &generation, inner.confirm_wait).await {
            inner.pending.complete(&batch);
            inner.unconfirmed.remove(&carried);
            inner.schedule_follow_ups(&all);
            return Invalidation::Confirmed;
        }
        if inner.pending.give_up_unqueued(&batch, Instant::now()) {
            tracing::warn!(
                capacity = inner.pending.capacity(),
                "too many cache invalidations pending: ids dropped, the cache is bypassed until their entries expire"
            );
        }
        let deferred = inner.defer(&all).await;
        if deferred.is_effective() {
            inner.unconfirmed.remove(&carried);
        } else if inner.ledger.is_some() && inner.unconfirmed.add(ids) {
            // (Without a ledger no reader of ours trusts an unconfirmed entry less for it: the
            // ids only wait in the retry queue.)
            tracing::warn!(
                capacity = MAX_UNCONFIRMED,
                "too many unconfirmed cache invalidations: ids dropped, later changes no longer wait for them"
            );
        }
        deferred
    }

    /// Up when every master answers `PING`.
    async fn health(&self) -> CacheHealth {
        let Some(masters) = self.inner.servers.masters().await else { return CacheHealth::Down };
        let ping = redis::cmd("PING");
        let pings = masters.iter().map(|node| node.run::<String>(Request::Command(&ping)));
        match futures_util::future::join_all(pings).await.iter().all(Option::is_some) {
            true => CacheHealth::Up,
            false => CacheHealth::Down,
        }
    }

    fn backlog(&self) -> CacheBacklog {
        let (near_entries, near_bytes) = self.near_cache_size().unwrap_or_default();
        CacheBacklog {
            pending_invalidations: self.inner.pending.len(),
            scheduled_follow_ups: self.inner.follow_ups.len(),
            deferred_invalidations: self.deferred_invalidations(),
            near_entries,
            near_bytes,
        }
    }

    async fn finish_pending(&self) {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.follow_ups.longest_delay() + FINISH_MARGIN;
        while (inner.pending.len() > 0 || inner.follow_ups.len() > 0) && Instant::now() < deadline {
            inner.retry_pending().await;
            inner.run_due_follow_ups().await;
            tokio::time::sleep(FOLLOW_UP_TICK).await;
        }
        let (pending, follow_ups) = (inner.pending.len(), inner.follow_ups.len());
        if pending > 0 || follow_ups > 0 {
            tracing::warn!(
                pending,
                follow_ups,
                "stopping before Redis confirmed every invalidation and follow-up deletion: cached entries or \
                 downstream copies may stay stale until they expire"
            );
        }
    }
}

impl Inner {
    /// The near-cache's payloads of `ids`, in order (`None` where it has none to serve),
    /// after one freshness check for all of them (see [`near`]); `None` when that check
    /// failed: Redis did not answer within the timeout, or the breaker skips it, so that a
    /// read from Redis would fail too.
    async fn near_hits(&self, ids: &[UserId]) -> Option<Vec<Option<CachedProfile>>> {
        let Some(near) = &self.near else { return Some(vec![None; ids.len()]) };
        let now = std::time::Instant::now();
        let held: Vec<_> = ids.iter().map(|id| near.peek(*id, now)).collect();
        if held.iter().all(Option::is_none) {
            return Some(vec![None; ids.len()]);
        }
        let connection = near.barrier.pass(self.barrier_bound).await?;
        Some(
            ids.iter()
                .zip(held)
                .map(|(&id, held)| {
                    let payload = near.servable(id, held?, connection)?;
                    self.may_use(id).then_some(payload)
                })
                .collect(),
        )
    }

    /// Reads the entries of `ids` from Redis in one round trip (per cluster node), each with
    /// its generation, and keeps the hits in the near-cache.
    async fn read(&self, ids: &[UserId]) -> Vec<CacheLookup> {
        if ids.is_empty() {
            return Vec::new();
        }
        let Some(node) = self.servers.single() else {
            return self.read_in_cluster(ids).await;
        };
        // Before the read is sent: an invalidation applied after it keeps the answer out.
        let guards: Vec<_> =
            self.near.as_ref().map(|near| ids.iter().map(|id| near.guard(*id)).collect()).unwrap_or_default();
        let mut command = redis::cmd("MGET");
        for id in ids {
            command.arg(self.keys.entry(*id)).arg(self.keys.generation(*id));
        }
        // With floors, the epoch of the generations read (see [`floors`]), last.
        if self.floors.is_some() {
            command.arg(self.keys.floors_epoch());
        }
        let Some(Answer { value: mut values, server, connection }) =
            node.run_identified::<Vec<Option<Vec<u8>>>>(Request::Command(&command)).await
        else {
            return vec![CacheLookup::Unavailable; ids.len()];
        };
        let epoch = if self.floors.is_some() { values.pop() } else { None };
        if values.len() != ids.len() * 2 {
            return vec![CacheLookup::Unavailable; ids.len()];
        }
        if let Some(near) = &self.near
            && near.awaits_probe(connection)
        {
            // A new connection: the barrier task probes its pushes before answers are kept.
            near.barrier.request();
        }
        let mut values = values.into_iter();
        let lookups: Vec<CacheLookup> = ids
            .iter()
            .enumerate()
            .map(|(index, &id)| {
                let lookup = self.lookup_of(id, values.next().flatten(), values.next().flatten(), &server);
                if let (CacheLookup::Hit(payload), Some(near), Some(guard)) = (&lookup, &self.near, guards.get(index)) {
                    near.keep(id, *guard, connection, payload);
                }
                lookup
            })
            .collect();
        self.with_floors(lookups, &server, epoch.flatten()).await
    }

    /// [`Self::read`] in a cluster: one pipeline per master, all sent at once, of `INFO
    /// replication` and `INFO stats` (who follows it: see [`crate::replicas`]), `CLUSTER
    /// INFO`, then an `MGET` per user (an entry and its generation share a hash tag). The
    /// replication id read with the entries must still be the connection's: a connection
    /// outlives a node's demotion and promotion back (nothing breaks it, unlike Sentinel's),
    /// and the data may have come back with it from a replica that missed deletions, under
    /// stamps of this process. Otherwise the connection is made again, and asks again. And the
    /// node must see its cluster `ok`: a master cut off in a minority may still answer reads
    /// (`cluster-allow-reads-when-down`) while its replica, promoted, takes the changes.
    async fn read_in_cluster(&self, ids: &[UserId]) -> Vec<CacheLookup> {
        let mut lookups = vec![CacheLookup::Unavailable; ids.len()];
        let grouped = self.servers.group(ids.iter().enumerate().map(|(index, id)| (self.keys.entry(*id), index))).await;
        let reads = grouped.groups.into_iter().map(|(node, indexes)| async move {
            let mut pipeline = redis::pipe();
            pipeline.cmd("INFO").arg("replication").cmd("INFO").arg("stats").cmd("CLUSTER").arg("INFO");
            for &index in &indexes {
                pipeline.cmd("MGET").arg(self.keys.entry(ids[index])).arg(self.keys.generation(ids[index]));
            }
            (node.run_identified::<Vec<redis::Value>>(Request::Pipeline(&pipeline)).await, indexes, node)
        });
        // The three `INFO` answers, then the pairs.
        const INFOS: usize = 3;
        for (answer, indexes, node) in futures_util::future::join_all(reads).await {
            let Some(Answer { value: mut values, server, connection }) = answer else { continue };
            if values.len() != indexes.len() + INFOS {
                continue;
            }
            let pairs = values.split_off(INFOS);
            let mut infos = values.into_iter().map(|info| redis::from_redis_value::<String>(info).ok());
            let (replication, stats, cluster) =
                (infos.next().flatten(), infos.next().flatten(), infos.next().flatten());
            // Who follows it, before anything else: a node whose history started anew still
            // says which replicas it has now (it then fails the check below, and its
            // connection is made again).
            if let Some(replication) = replication.as_deref() {
                let _ = node.saw_replication_on(replication, stats.as_deref(), &server);
            }
            let still = replication.as_deref().is_some_and(|info| {
                info_field(info, "role:") == Some("master")
                    && info_field(info, "master_replid:") == Some(server.replication_id())
            });
            if !still {
                node.distrust(connection);
                continue;
            }
            // Every replica the map names, or that followed it since, still follows it: one
            // that left it may have been promoted, and take the changes, without its knowing
            // (a split brain).
            let connected = replication.as_deref().and_then(connected_replicas);
            let followed = connected.is_some_and(|connected| connected >= node.replicas_to_follow());
            if !followed {
                node.suspect_map();
                continue;
            }
            if cluster.as_deref().and_then(|info| info_field(info, "cluster_state:")) != Some("ok") {
                continue;
            }
            for (index, pair) in indexes.into_iter().zip(pairs) {
                let Ok((entry, generation)) = redis::from_redis_value(pair) else { continue };
                lookups[index] = self.lookup_of(ids[index], entry, generation, &server);
            }
        }
        lookups
    }

    /// What `id`'s entry and generation, read from `server`, make of its lookup.
    fn lookup_of(
        &self,
        id: UserId,
        entry: Option<Vec<u8>>,
        generation: Option<Vec<u8>>,
        server: &ServerId,
    ) -> CacheLookup {
        // An invalidation of this id may be pending (queued, failed while we were asking, or
        // in the ledger).
        if !self.may_use(id) {
            return CacheLookup::Unavailable;
        }
        let generation = generation.as_deref().map(String::from_utf8_lossy);
        match entry.and_then(|entry| current_payload(entry, server, generation.as_deref())) {
            Some(payload) => CacheLookup::Hit(CachedProfile::from(payload)),
            None => CacheLookup::Miss(FillTicket::new(Some(stamp(server, generation.as_deref())))),
        }
    }

    /// `lookups` read from `server`, their misses' tickets with the floor each may be loaded
    /// at ([`floors`]); unchanged without floors or misses (the barrier may cost a round trip
    /// to the store).
    async fn with_floors(
        &self,
        lookups: Vec<CacheLookup>,
        server: &ServerId,
        epoch: Option<Vec<u8>>,
    ) -> Vec<CacheLookup> {
        let Some(floors) = &self.floors else { return lookups };
        if !lookups.iter().any(|lookup| matches!(lookup, CacheLookup::Miss(_))) {
            return lookups;
        }
        let epoch = match epoch {
            Some(epoch) => Some(String::from_utf8_lossy(&epoch).into_owned()),
            None => self.start_floors_epoch(server).await,
        };
        let barrier = match epoch {
            Some(epoch) => floors.barrier(server, &epoch).await,
            None => None,
        };
        lookups
            .into_iter()
            .map(|lookup| match lookup {
                CacheLookup::Miss(ticket) => {
                    let generation = ticket.generation().and_then(parse_stamp).map(|(_, generation)| generation);
                    let floor = floors::floor(generation.filter(|generation| !generation.is_empty()), barrier);
                    CacheLookup::Miss(ticket.with_floor(floor))
                }
                other => other,
            })
            .collect()
    }

    /// Checks that Redis's pushes reach us on `connection`: reads a key of ours, changes it,
    /// then `PING`s, in one round trip; the change's invalidation must have arrived before
    /// the answer. Until a probe passes, no answer read on the connection is kept (see
    /// [`near`]).
    async fn probe_pushes(&self, near: &NearCache, connection: u64) {
        let probe = near.expect_probe();
        let key = format!("{}:near-probe:{probe}", self.keys.prefix);
        let mut pipeline = redis::pipe();
        pipeline
            .cmd("GET")
            .arg(&key)
            .ignore()
            .cmd("SET")
            .arg(&key)
            .arg("1")
            .arg("PX")
            .arg(PROBE_TTL_MS)
            .ignore()
            .cmd("PING")
            .ignore();
        let Some(node) = self.servers.single() else { return };
        let answered = node.run_identified::<()>(Request::Pipeline(&pipeline)).await;
        let on_connection = answered.is_some_and(|answer| answer.connection == connection);
        if on_connection && !near.probe_arrived(probe, connection) {
            tracing::warn!(
                "Redis did not push the invalidation of a key this connection read and changed: the near-cache \
                 stays off on this connection (a proxy that drops RESP3 pushes, or a Redis user without CLIENT \
                 TRACKING); connect to Redis directly to use it"
            );
        }
    }

    /// Whether `id`'s entry may be served or filled now: its invalidation is not pending
    /// here, and the ledger, read within the lease, does not list it.
    fn may_use(&self, id: UserId) -> bool {
        !self.pending.blocks(id) && self.ledger.as_ref().is_none_or(|(_, lease)| lease.trusts(id, Instant::now()))
    }

    /// Sends the invalidation of `ids`, despite the breaker, until Redis confirms it or
    /// `wait` has passed. Returns whether Redis confirmed it.
    async fn confirm_within(&self, ids: &[UserId], generation: &Generation, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.invalidate_now(ids, generation, Breaker::Ignore).await {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep(CONFIRM_RETRY.min(deadline - now)).await;
        }
    }

    /// Records an invalidation Redis did not confirm in the ledger, then waits one lease:
    /// by then every reader has read the ledger since, or stopped trusting the cache.
    async fn defer(&self, ids: &[UserId]) -> Invalidation {
        let Some((ledger, lease)) = &self.ledger else {
            return Invalidation::Unconfirmed;
        };
        match ledger.record(ids).await {
            Ok(()) => {
                tokio::time::sleep(lease.duration()).await;
                Invalidation::Deferred
            }
            Err(error) => {
                tracing::warn!(
                    error = %error,
                    "neither Redis nor the invalidation ledger confirmed a cache invalidation: the change is \
                     saved but not acknowledged"
                );
                Invalidation::Unconfirmed
            }
        }
    }

    /// Reads the ledger: renews the lease, then replays the recorded invalidations if
    /// Redis answers, and forgets those it confirmed. A ledger longer than one read (a long
    /// outage) is worked through batch after batch, for up to half a lease, since until it
    /// is short again no entry is served.
    async fn renew_lease_and_replay(&self) {
        let Some((_, lease)) = &self.ledger else { return };
        let started = Instant::now();
        while self.renew_lease_and_replay_once().await && started.elapsed() < lease.duration() / 2 {}
    }

    /// One read of the ledger, with its replay; returns whether it left more recordings
    /// to replay now (the read was truncated and its batch forgotten).
    async fn renew_lease_and_replay_once(&self) -> bool {
        let Some((ledger, lease)) = &self.ledger else { return false };
        let started = Instant::now();
        // Bounded so that a hung read cannot hold the lease's renewals up beyond the lease.
        let read = tokio::time::timeout(lease.duration() / 2, ledger.recorded(LEDGER_READ_LIMIT + 1)).await;
        let mut listed = match read {
            Ok(Ok(listed)) => listed,
            failed => {
                if lease.renewal_failed() == Renewal::Failing {
                    let error = match failed {
                        Ok(Err(error)) => error.to_string(),
                        _ => "no answer in time".to_owned(),
                    };
                    tracing::warn!(
                        error = %error,
                        "cannot read the cache invalidation ledger: cached users are not served until it can be read"
                    );
                }
                return false;
            }
        };
        let truncated = listed.len() > LEDGER_READ_LIMIT;
        listed.truncate(LEDGER_READ_LIMIT);
        if lease.renew(started, &listed, truncated) == Renewal::Recovered {
            tracing::info!("the cache invalidation ledger is readable again");
        }
        if listed.is_empty() {
            return false;
        }
        let ids: Vec<UserId> = listed.iter().map(|entry: &LedgerEntry| entry.user).collect();
        // Despite the breaker: one call per renewal is cheap even during an outage, and the
        // downstream copies of recorded users are deleted as soon as Redis answers again.
        if !self.invalidate_now(&ids, &self.new_generation().await, Breaker::Ignore).await {
            return false;
        }
        self.schedule_follow_ups(&ids);
        // Bounded as the read is: a later renewal replays and forgets them again.
        match tokio::time::timeout(lease.duration() / 2, ledger.forget(&listed)).await {
            Ok(Ok(())) => truncated,
            Ok(Err(error)) => {
                tracing::debug!(error = %error, "replayed recorded cache invalidations, not yet forgotten");
                false
            }
            Err(_) => {
                tracing::debug!("replayed recorded cache invalidations, not yet forgotten (no answer in time)");
                false
            }
        }
    }

    /// Starts an epoch of the generations on `server` when there is none (the first start, or
    /// the data set emptied: `FLUSHALL`, a restart), or reads the one another instance just
    /// started; `None` when Redis does not answer (misses then load from the primary).
    async fn start_floors_epoch(&self, server: &ServerId) -> Option<String> {
        let mut pipeline = redis::pipe();
        let key = self.keys.floors_epoch();
        pipeline.cmd("SET").arg(&key).arg(uuid::Uuid::new_v4().to_string()).arg("NX").ignore().cmd("GET").arg(&key);
        let (epoch,): (Option<String>,) = self.servers.single()?.run_on(server, Request::Pipeline(&pipeline)).await?;
        epoch
    }

    /// A generation for an invalidation of changes that have committed: fresh (a UUID), and
    /// the store's commit position when floors are recorded and the store answered (hex,
    /// else empty; see [`floors`]). One value serves every id of an invalidation: it only
    /// has to differ from every generation any of them had before.
    async fn new_generation(&self) -> Generation {
        let unique = uuid::Uuid::new_v4().to_string();
        let position = match &self.floors {
            Some(floors) => floors.position_after_commit().await.map(|position| format!("{:x}", position.0)),
            None => None,
        };
        Generation { unique, position: position.unwrap_or_default() }
    }

    /// Moves the generation of `ids` on to `generation` (the recorded position never goes
    /// down, [`INVALIDATE`]) and deletes their entries and downstream copies, in one script.
    /// Returns whether Redis confirmed it, and every replica of the server has it (see
    /// [`Connection::run_replicated`](connection::Connection::run_replicated)).
    async fn invalidate_now(&self, ids: &[UserId], generation: &Generation, breaker: Breaker) -> bool {
        let Some(node) = self.servers.single_for_changes() else {
            return self.invalidate_in_cluster(ids, generation, breaker).await;
        };
        let mut keys = Vec::new();
        let mut per_user = 1;
        for &id in ids {
            let extra = self.keys.extra(id);
            per_user = 2 + extra.len();
            keys.push(self.keys.generation(id));
            keys.push(self.keys.entry(id));
            keys.extend(extra);
        }
        let mut pipeline = redis::pipe();
        // Cheap once loaded, and spares a retry after NOSCRIPT (a restarted server).
        pipeline.cmd("SCRIPT").arg("LOAD").arg(INVALIDATE).ignore();
        pipeline
            .cmd("EVALSHA")
            .arg(self.invalidate.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(&generation.unique)
            .arg(&generation.position)
            .arg(self.generation_ttl_ms)
            .arg(per_user)
            .ignore();
        node.run_replicated(&pipeline, breaker).await
    }

    /// [`Self::invalidate_now`] in a cluster, where a script's keys must share a slot: per
    /// master, one pipeline of [`INVALIDATE`] per user (whose generation and entry share a
    /// hash tag) and a `DEL` per downstream copy it holds, all sent at once. Confirmed when
    /// every master confirmed its part.
    async fn invalidate_in_cluster(&self, ids: &[UserId], generation: &Generation, breaker: Breaker) -> bool {
        enum Step {
            Invalidate(UserId),
            Delete(String),
        }
        let users = ids.iter().map(|&id| (self.keys.entry(id), Step::Invalidate(id)));
        let copies = ids.iter().flat_map(|&id| self.keys.extra(id)).map(|key| (key.clone(), Step::Delete(key)));
        let grouped = self.servers.group_for_changes(users.chain(copies)).await;
        if !grouped.unrouted.is_empty() {
            return false;
        }
        let calls = grouped.groups.into_iter().map(|(node, steps)| async move {
            let mut pipeline = redis::pipe();
            // Cheap once loaded, and spares a retry after NOSCRIPT (a restarted node).
            pipeline.cmd("SCRIPT").arg("LOAD").arg(INVALIDATE).ignore();
            for step in &steps {
                match step {
                    Step::Invalidate(id) => pipeline
                        .cmd("EVALSHA")
                        .arg(self.invalidate.get_hash())
                        .arg(2)
                        .arg(self.keys.generation(*id))
                        .arg(self.keys.entry(*id))
                        .arg(&generation.unique)
                        .arg(&generation.position)
                        .arg(self.generation_ttl_ms)
                        .arg(2)
                        .ignore(),
                    Step::Delete(key) => pipeline.cmd("DEL").arg(key).ignore(),
                };
            }
            node.run_replicated(&pipeline, breaker).await
        });
        futures_util::future::join_all(calls).await.into_iter().all(|confirmed| confirmed)
    }

    /// Retries the pending invalidations, batch by batch, until one fails; records the
    /// unconfirmed ones in the ledger, so that other instances stop serving their entries
    /// even if Redis stays out of this instance's reach.
    async fn retry_pending(&self) {
        if let Some((ledger, _)) = &self.ledger {
            let unconfirmed = self.unconfirmed.snapshot();
            if !unconfirmed.is_empty() && ledger.record(&unconfirmed).await.is_ok() {
                self.unconfirmed.remove(&unconfirmed);
            }
        }
        let passes = self.pending.len().div_ceil(RETRY_BATCH);
        for _ in 0..passes {
            let Some(batch) = self.pending.batch(RETRY_BATCH, Instant::now()) else { break };
            if !self.invalidate_now(&batch.ids, &self.new_generation().await, Breaker::Respect).await {
                break;
            }
            self.pending.complete(&batch);
            self.unconfirmed.remove(&batch.ids);
            self.schedule_follow_ups(&batch.ids);
        }
        if let Some(dropped) = self.pending.end_overflow_if_due(Instant::now()) {
            tracing::info!(dropped, "cache invalidation queue drained: the cache is used again");
        }
    }
}

impl Inner {
    /// Schedules the follow-up deletions of a confirmed invalidation of `ids`.
    fn schedule_follow_ups(&self, ids: &[UserId]) {
        self.follow_ups.schedule(ids, Instant::now());
        let refused = self.follow_ups.take_refused();
        if refused > 0 {
            tracing::warn!(
                refused,
                capacity = self.pending.capacity(),
                "too many follow-up deletions of downstream copies scheduled: some copies may stay stale until they expire"
            );
        }
    }

    /// Sends the follow-up deletions that are due, batch by batch, until one fails (its
    /// deletions stay due).
    async fn run_due_follow_ups(&self) {
        loop {
            let due = self.follow_ups.take_due(FOLLOW_UP_BATCH, Instant::now());
            if due.is_empty() {
                return;
            }
            let mut keys: Vec<String> = due.ids().flat_map(|id| self.keys.extra(id)).collect();
            keys.sort_unstable();
            keys.dedup();
            if !self.delete(keys).await {
                // Dropped unconfirmed: due again on the next tick.
                return;
            }
            due.confirm();
        }
    }

    /// Deletes `keys` (one `DEL`; in a cluster, where one command's keys must share a slot,
    /// one pipeline of `DEL`s per master, all sent at once). Returns whether every server
    /// confirmed it.
    async fn delete(&self, keys: Vec<String>) -> bool {
        if let Some(node) = self.servers.single() {
            let mut command = redis::cmd("DEL");
            command.arg(keys);
            return node.run::<i64>(Request::Command(&command)).await.is_some();
        }
        let grouped = self.servers.group(keys.into_iter().map(|key| (key.clone(), key))).await;
        if !grouped.unrouted.is_empty() {
            return false;
        }
        let calls = grouped.groups.into_iter().map(|(node, keys)| async move {
            let mut pipeline = redis::pipe();
            for key in keys {
                pipeline.cmd("DEL").arg(key).ignore();
            }
            node.run::<()>(Request::Pipeline(&pipeline)).await.is_some()
        });
        futures_util::future::join_all(calls).await.into_iter().all(|deleted| deleted)
    }
}

/// The background task, until the cache is dropped: retries pending invalidations every
/// `retry_interval` and sends due follow-up deletions every [`FOLLOW_UP_TICK`]. Holds the
/// cache only while working, so that dropping it ends the task.
async fn background(cache: Weak<Inner>, mut shutdown: oneshot::Receiver<()>, retry_interval: Duration) {
    let mut retries = tokio::time::interval(retry_interval);
    retries.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut follow_up_ticks = tokio::time::interval(FOLLOW_UP_TICK);
    follow_up_ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = retries.tick() => {
                let Some(cache) = cache.upgrade() else { return };
                if cache.pending.len() > 0 || cache.pending.is_overflowing() || !cache.unconfirmed.is_empty() {
                    cache.retry_pending().await;
                }
            }
            _ = follow_up_ticks.tick() => {
                let Some(cache) = cache.upgrade() else { return };
                if cache.follow_ups.next_due().is_some_and(|at| at <= Instant::now()) {
                    cache.run_due_follow_ups().await;
                }
            }
        }
    }
}

/// Sends the near-cache's freshness checks (`PING`s, see [`near`]) as reads ask for them, one
/// at a time, until the cache is dropped. Holds the cache only while a `PING` is in flight.
async fn send_barriers(cache: Weak<Inner>, near: Arc<NearCache>) {
    loop {
        if !near.barrier.wanted(BARRIER_IDLE).await {
            if cache.strong_count() == 0 {
                return;
            }
            continue;
        }
        let Some(inner) = cache.upgrade() else { return };
        let number = near.barrier.sending();
        let ping = redis::cmd("PING");
        let answered = match inner.servers.single() {
            Some(node) => node.run_identified::<String>(Request::Command(&ping)).await,
            None => None,
        };
        drop(inner);
        let connection = answered.map(|answer| answer.connection);
        if let Some(connection) = connection {
            near.used(connection);
            if near.awaits_probe(connection)
                && let Some(inner) = cache.upgrade()
            {
                inner.probe_pushes(&near, connection).await;
            }
        }
        near.barrier.answer(number, connection);
    }
}

/// Renews the read lease every `lease_renewal` until the cache is dropped, in a task of its
/// own so that no backlog of retries or follow-up deletions holds a renewal up past the
/// lease (which would turn the cache off on this instance).
async fn renew_leases(cache: Weak<Inner>, lease_renewal: Duration) {
    let mut renewals = tokio::time::interval(lease_renewal);
    renewals.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        renewals.tick().await;
        let Some(cache) = cache.upgrade() else { return };
        cache.renew_lease_and_replay().await;
    }
}

/// The most unconfirmed invalidations kept; past it, ids are dropped (with a warning).
const MAX_UNCONFIRMED: usize = 10_000;

/// The users whose invalidation was answered [`Invalidation::Unconfirmed`] (neither Redis
/// nor the ledger confirmed it: the change was answered 503). Every later invalidation of
/// this instance carries them along, and the background task records them in the ledger,
/// until one of them holds: so the retry the 503 asks for, with or without an
/// `Idempotency-Key`, is acknowledged only once they hold too.
#[derive(Debug, Default)]
struct Unconfirmed(Mutex<HashSet<UserId>>);

impl Unconfirmed {
    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn snapshot(&self) -> Vec<UserId> {
        self.lock().iter().copied().collect()
    }

    /// Adds `ids`; returns whether some were dropped for want of room.
    fn add(&self, ids: &[UserId]) -> bool {
        let mut unconfirmed = self.lock();
        let room = MAX_UNCONFIRMED.saturating_sub(unconfirmed.len());
        let dropped = ids.len() > room;
        unconfirmed.extend(ids.iter().take(room));
        dropped
    }

    fn remove(&self, ids: &[UserId]) {
        if ids.is_empty() {
            return;
        }
        let mut unconfirmed = self.lock();
        for id in ids {
            unconfirmed.remove(id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        // Every update leaves the set consistent: poisoning carries no meaning here.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A generation an invalidation sets: its unique part, and the commit position it records
/// (hex, empty when none), joined in Redis by [`INVALIDATE`].
struct Generation {
    unique: String,
    position: String,
}

/// The key names of one cache.
#[derive(Debug)]
struct Keys {
    prefix: String,
    version: String,
    extra: Vec<String>,
    /// In a cluster, the id in a user's keys is a hash tag (`{…}`), so that its entry and its
    /// generation share a slot, which one script or `MGET` of both needs. (Not on one server,
    /// where instances of earlier versions use the keys without braces.)
    tagged: bool,
}

impl Keys {
    fn entry(&self, id: UserId) -> String {
        match self.tagged {
            true => format!("{}:{}:user:{{{id}}}", self.prefix, self.version),
            false => format!("{}:{}:user:{id}", self.prefix, self.version),
        }
    }

    fn generation(&self, id: UserId) -> String {
        match self.tagged {
            true => format!("{}:gen:{{{id}}}", self.prefix),
            false => format!("{}:gen:{id}", self.prefix),
        }
    }

    /// The epoch of the generations in this Redis: it goes when they all go (see [`floors`]).
    fn floors_epoch(&self) -> String {
        format!("{}:floors-epoch", self.prefix)
    }

    fn extra(&self, id: UserId) -> Vec<String> {
        let id = id.to_string();
        self.extra.iter().map(|template| template.replace(config::ID_PLACEHOLDER, &id)).collect()
    }
}

/// What an entry is valid under, and what a fill ticket names: the server process and the
/// user's generation it was read in, as `{run_id}/{generation}` (the generation empty when
/// there was none). Neither contains `/` or a newline (hex digits, UUIDs, `@`).
fn stamp(server: &ServerId, generation: Option<&str>) -> String {
    format!("{}/{}", server.as_str(), generation.unwrap_or_default())
}

/// The server and the generation (empty when none) a stamp names.
fn parse_stamp(stamp: &str) -> Option<(ServerId, &str)> {
    let (server, generation) = stamp.split_once('/')?;
    (!server.is_empty()).then(|| (ServerId::new(server), generation))
}

/// An entry is the stamp it was filled under, a newline, and the payload.
fn encode_entry(stamp: &str, payload: &[u8]) -> Vec<u8> {
    let mut entry = Vec::with_capacity(stamp.len() + 1 + payload.len());
    entry.extend_from_slice(stamp.as_bytes());
    entry.push(b'\n');
    entry.extend_from_slice(payload);
    entry
}

/// The payload of `entry` if it was filled under the stamp of `server` and `generation`
/// (compared in place: a cached read allocates no stamp).
fn current_payload(mut entry: Vec<u8>, server: &ServerId, generation: Option<&str>) -> Option<Vec<u8>> {
    let newline = entry.iter().position(|&byte| byte == b'\n')?;
    let (server, generation) = (server.as_str().as_bytes(), generation.unwrap_or_default().as_bytes());
    let filled_under = entry[..newline].strip_prefix(server)?.strip_prefix(b"/")?;
    if filled_under != generation {
        return None;
    }
    Some(entry.split_off(newline + 1))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
