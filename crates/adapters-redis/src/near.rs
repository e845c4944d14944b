//! The near-cache: hot entries kept in process, so that a cached read costs no Redis read of
//! its own.
//!
//! Kept exact by Redis's server-assisted client-side caching: the cache's connection speaks
//! RESP3 with `CLIENT TRACKING ON`, so Redis remembers every key that connection read and
//! pushes an invalidation on it when the key changes (any instance's write or fill, an
//! expiry, a flush). redis-rs applies each push as it reads it ([`NearCache::apply`]), in the
//! order of the stream, before it hands out any answer that follows it.
//!
//! Pushes alone would not be exact: a push can be late (in a socket buffer, behind a busy
//! thread) or lost with a silent network, and a change acknowledged by another instance
//! would then be followed by a stale read here. Hence:
//! - **A freshness barrier before every hit.** An entry is served only once a `PING` sent on
//!   the tracking connection *after the request arrived* has been answered ([`Barrier`]).
//!   Redis answers it after every push it queued before it, and those were applied before
//!   the answer was handed out: whatever change was acknowledged before the request arrived
//!   has removed the entry by then. One `PING` serves every request waiting when it is sent,
//!   so under load a round trip is shared by many reads and carries no payload.
//! - **Entries belong to one connection.** Each entry names the connection whose tracking
//!   covers it and is served only after a barrier answered on that same connection: once it
//!   is lost (reset, timed out, given up), its entries are never served again, and the next
//!   connection starts empty.
//! - **Pushes must be seen to arrive.** A connection's entries are kept only once a probe
//!   showed that its pushes reach us: a key read, then changed, on that connection, whose
//!   invalidation must arrive before the `PING` behind it ([`NearCache::expect_probe`]). A
//!   proxy that forwards RESP3 but drops pushes, or a Redis user refused `CLIENT TRACKING`,
//!   fails the probe: the cache then works as without a near-cache.
//! - **A push can overtake the read it invalidates** on its way into the map (the answer and
//!   the push arrive in order, but the reader's task stores the answer later): an answer is
//!   stored only if no invalidation of its stripe of ids was applied since its read was sent
//!   ([`NearCache::guard`], [`NearCache::keep`]).
//!
//! The caller still checks the pending invalidations and the ledger's lease before serving an
//! entry, as for a Redis hit. Memory is bounded by bytes (quick_cache, each entry weighed as
//! twice its payload, for what readers decode and keep with it) and each entry is served at
//! most the Redis entry's TTL after its read.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use domain::cache::CachedProfile;
use domain::user::UserId;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{Notify, watch};

/// Stripes of ids that share an invalidation counter: enough that a write to one user rarely
/// keeps another's read out of the map.
const STRIPES: usize = 256;

/// What each entry costs beyond its payload (key, connection, expiry, the map's bookkeeping),
/// for the byte bound: measured as the growth of the process's resident memory over 54,000
/// entries with the map this cache used before (moka); an upper bound for quick_cache's,
/// which keeps no per-entry queue nodes.
const ENTRY_OVERHEAD: usize = 352;

/// [`NearCache::connection`] before any connection answered.
const NO_CONNECTION: u64 = u64::MAX;

/// An entry kept in process.
#[derive(Clone)]
struct NearEntry {
    /// The connection whose tracking covers it.
    connection: u64,
    /// The bytes, and what readers decoded from them (kept with them: decoded once).
    payload: CachedProfile,
    /// When it stops being served: the Redis entry's TTL after it was read.
    expires: Instant,
    /// The flushes applied before its read was sent: once another one is applied, it is
    /// never served, however long clearing the map takes.
    flushes: u64,
}

/// Weighs an entry by its payload's size.
#[derive(Clone)]
struct PayloadWeighter;

impl quick_cache::Weighter<UserId, NearEntry> for PayloadWeighter {
    /// The payload twice: the bytes, and at most about as much again for what readers
    /// decode from them and keep with the entry (both channels' sending projections of a
    /// user with two devices: 0.5–0.7× the bytes). Fixed at insertion, as the map requires.
    fn weight(&self, _: &UserId, entry: &NearEntry) -> u64 {
        let bytes = entry.payload.bytes().len();
        u64::try_from(bytes.saturating_mul(2).saturating_add(ENTRY_OVERHEAD)).unwrap_or(u64::MAX)
    }
}

/// The average entry assumed to size the map (a cached user with two devices is about 1.2 KB).
const TYPICAL_ENTRY_BYTES: u64 = 1536;

/// An entry looked up before the freshness barrier (see [`NearCache::peek`]).
pub(crate) struct Held {
    guard: FillGuard,
    entry: NearEntry,
}

/// Taken before a Redis read whose answer may be kept: the invalidations applied so far.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FillGuard {
    stripe: u64,
    flushes: u64,
}

/// The in-process entries and the invalidations Redis pushes for them (see the module docs).
pub(crate) struct NearCache {
    /// Bounded by bytes; evicts by its own rule (a CLOCK variant that keeps entries read
    /// more than once); a read is a lookup under a shard's read lock.
    entries: quick_cache::sync::Cache<UserId, NearEntry, PayloadWeighter>,
    /// How long an entry is served at most.
    ttl: Duration,
    /// Invalidations applied, per stripe of ids.
    stripes: Vec<AtomicU64>,
    /// Per stripe: taken by a fill around its check and insertion, and by an invalidation
    /// around its removal, so that no answer read before an invalidation is stored after it.
    stripe_locks: Vec<Mutex<()>>,
    /// Flushes applied (everything dropped: a `FLUSHALL`, a lost connection).
    flushes: AtomicU64,
    /// The connection that last answered, to drop the entries of an older one.
    connection: AtomicU64,
    /// The connection whose pushes a probe saw arrive: the only one whose answers are kept.
    verified: AtomicU64,
    /// The last connection probed: each is probed once.
    probed: AtomicU64,
    /// The probe in flight (its key's id) and whether its invalidation arrived.
    probe: Mutex<Option<(uuid::Uuid, bool)>>,
    /// `{prefix}:`: both the entry keys and the generation keys start with it and end with
    /// `:{id}`.
    key_start: String,
    pub(crate) barrier: Barrier,
}

impl NearCache {
    /// A near-cache of at most `max_bytes` whose entries are served at most `ttl` after
    /// their read, for the keys of `key_prefix`.
    pub(crate) fn new(max_bytes: u64, ttl: Duration, key_prefix: &str) -> Self {
        Self {
            entries: quick_cache::sync::Cache::with_weighter(
                usize::try_from(max_bytes / TYPICAL_ENTRY_BYTES).unwrap_or(usize::MAX).clamp(16, 1 << 24),
                max_bytes,
                PayloadWeighter,
            ),
            ttl,
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            stripe_locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            flushes: AtomicU64::new(0),
            connection: AtomicU64::new(NO_CONNECTION),
            verified: AtomicU64::new(NO_CONNECTION),
            probed: AtomicU64::new(NO_CONNECTION),
            probe: Mutex::new(None),
            key_start: format!("{key_prefix}:"),
            barrier: Barrier::new(),
        }
    }

    /// `id`'s entry, if any, with the invalidations applied before it was looked up: taken
    /// before the freshness barrier, served after it only if [`Self::servable`] agrees.
    /// `now` is the time of the lookup (an expired entry is dropped, not served).
    pub(crate) fn peek(&self, id: UserId, now: Instant) -> Option<Held> {
        let guard = self.guard(id);
        let entry = self.entries.get(&id)?;
        if now >= entry.expires {
            self.entries.remove_if(&id, |entry| now >= entry.expires);
            return None;
        }
        Some(Held { guard, entry })
    }

    /// The payload of `held` if it belongs to `connection`, on which a barrier was just
    /// answered, and no invalidation of its stripe (nor a flush) was applied since it was
    /// looked up: every push that came before the barrier's answer has been applied by then,
    /// so one lookup per hit suffices.
    pub(crate) fn servable(&self, id: UserId, held: Held, connection: u64) -> Option<CachedProfile> {
        let entry = held.entry;
        let current = entry.connection == connection && entry.flushes == self.flushes.load(Ordering::SeqCst);
        (current && self.unchanged_since(id, held.guard)).then_some(entry.payload)
    }

    /// [`Self::peek`] then [`Self::servable`], for tests.
    #[cfg(test)]
    fn get(&self, id: UserId, connection: u64) -> Option<CachedProfile> {
        self.peek(id, Instant::now()).and_then(|held| self.servable(id, held, connection))
    }

    /// Taken before the Redis read of `id` whose answer [`Self::keep`] may store.
    pub(crate) fn guard(&self, id: UserId) -> FillGuard {
        FillGuard { stripe: self.stripe(id).load(Ordering::SeqCst), flushes: self.flushes.load(Ordering::SeqCst) }
    }

    /// Stores `payload`, read on `connection` after `guard` was taken, unless an invalidation
    /// of its stripe (or a flush) was applied since: then the answer may be older than it.
    pub(crate) fn keep(&self, id: UserId, guard: FillGuard, connection: u64, payload: &CachedProfile) {
        self.used(connection);
        if !self.is_verified(connection) {
            return;
        }
        // The check and the insertion under the stripe's lock: an invalidation comes
        // wholly before (the check fails) or wholly after (it removes what was stored).
        let _stripe = self.stripe_lock(id);
        if !self.unchanged_since(id, guard) {
            return;
        }
        let entry = NearEntry {
            connection,
            payload: payload.clone(),
            expires: Instant::now() + self.ttl,
            flushes: guard.flushes,
        };
        self.entries.insert(id, entry);
    }

    fn unchanged_since(&self, id: UserId, guard: FillGuard) -> bool {
        self.stripe(id).load(Ordering::SeqCst) == guard.stripe && self.flushes.load(Ordering::SeqCst) == guard.flushes
    }

    /// Drops `ids`' entries (this instance changed them; Redis's pushes follow).
    pub(crate) fn invalidate(&self, ids: &[UserId]) {
        for &id in ids {
            self.invalidate_one(id);
        }
    }

    fn invalidate_one(&self, id: UserId) {
        let _stripe = self.stripe_lock(id);
        // Counted before the removal, so that a read in flight never stores what it read
        // before this; and after it, so that a lookup that read the count in between and
        // still found the entry is not served it.
        self.stripe(id).fetch_add(1, Ordering::SeqCst);
        self.entries.remove(&id);
        self.stripe(id).fetch_add(1, Ordering::SeqCst);
    }

    /// Drops every entry: none kept before is served from the moment the count moves
    /// (each entry names the flushes before its read); clearing frees their memory.
    fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        self.entries.clear();
    }

    fn stripe_lock(&self, id: UserId) -> std::sync::MutexGuard<'_, ()> {
        self.stripe_locks[self.stripe_index(id)].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that `connection` answered a read or a barrier: once another one did, the
    /// entries of the one before can never be served again, so their memory is freed.
    pub(crate) fn used(&self, connection: u64) {
        let previous = self.connection.swap(connection, Ordering::SeqCst);
        if previous != connection && previous != NO_CONNECTION {
            self.flush();
        }
    }

    /// Whether a probe saw `connection`'s pushes arrive.
    pub(crate) fn is_verified(&self, connection: u64) -> bool {
        self.verified.load(Ordering::SeqCst) == connection
    }

    /// Whether `connection` was not probed yet.
    pub(crate) fn awaits_probe(&self, connection: u64) -> bool {
        self.probed.load(Ordering::SeqCst) != connection
    }

    /// Starts a probe of the connection's pushes: returns the id to name in the probe's key
    /// (`{prefix}:near-probe:{id}`), whose invalidation [`Self::probe_arrived`] then reports.
    pub(crate) fn expect_probe(&self) -> uuid::Uuid {
        let id = uuid::Uuid::new_v4();
        *self.probe.lock().unwrap_or_else(PoisonError::into_inner) = Some((id, false));
        id
    }

    /// Ends the probe `id` made on `connection`: trusts the connection's pushes if the
    /// probe's invalidation arrived. Returns whether it did.
    pub(crate) fn probe_arrived(&self, id: uuid::Uuid, connection: u64) -> bool {
        self.probed.store(connection, Ordering::SeqCst);
        let arrived = self.probe.lock().unwrap_or_else(PoisonError::into_inner).take() == Some((id, true));
        if arrived {
            self.verified.store(connection, Ordering::SeqCst);
        }
        arrived
    }

    /// Applies one message Redis pushed on the tracking connection: an invalidation of some
    /// keys, of everything (`null`: a flush), or the loss of the connection.
    pub(crate) fn apply(&self, push: &PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        match key {
                            Value::BulkString(key) => self.invalidate_key(key),
                            _ => self.flush(),
                        }
                    }
                }
                _ => self.flush(),
            },
            // A connection lost: which one is not said, so drop everything.
            PushKind::Disconnection => self.flush(),
            _ => {}
        }
    }

    /// Drops the entry a key names (`{prefix}:...:{id}`); a key of ours that names no id
    /// drops everything, as being safe costs only misses.
    fn invalidate_key(&self, key: &[u8]) {
        let Some(rest) = key.strip_prefix(self.key_start.as_bytes()) else {
            // Not ours: this connection only reads our keys, so nothing to do.
            return;
        };
        let id = rest
            .rsplit(|&byte| byte == b':')
            .next()
            .and_then(|id| std::str::from_utf8(id).ok())
            .and_then(|id| id.parse::<uuid::Uuid>().ok());
        match id {
            Some(id) => {
                if let Some((probe, arrived)) = &mut *self.probe.lock().unwrap_or_else(PoisonError::into_inner)
                    && *probe == id
                {
                    *arrived = true;
                }
                self.invalidate_one(UserId::from(id));
            }
            None => self.flush(),
        }
    }

    /// How many entries and bytes are kept (for metrics), once the expired ones are dropped.
    pub(crate) fn size(&self) -> (u64, u64) {
        let now = Instant::now();
        self.entries.retain(|_, entry| now < entry.expires);
        (u64::try_from(self.entries.len()).unwrap_or(u64::MAX), self.entries.weight())
    }

    fn stripe(&self, id: UserId) -> &AtomicU64 {
        &self.stripes[self.stripe_index(id)]
    }

    fn stripe_index(&self, id: UserId) -> usize {
        let bits = id.as_uuid().as_u128();
        // The low bits of a v4 UUID (or a v7's random tail) are random.
        (bits as usize) % STRIPES
    }
}

/// The freshness barrier: [`Barrier::pass`] returns once a `PING` sent after it was called has
/// been answered, and names the connection that answered. A task of the cache's sends the
/// `PING`s on demand, one at a time: every caller that arrives while one is in flight waits
/// for the next, which then serves them all.
///
/// Callers on one thread that want the same `PING` wait as a [`Group`]: the first subscribes
/// to the answers and releases the others, so that an answer wakes each thread once rather
/// than each waiting read (a wake-up across threads costs a system call, an `eventfd` write;
/// one within the thread costs none).
pub(crate) struct Barrier {
    /// The number of the last `PING` sent.
    sent: AtomicU64,
    answered: watch::Sender<Round>,
    wanted: Notify,
}

/// The last `PING` answered (or failed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Round {
    number: u64,
    /// The connection that answered; `None` when the `PING` failed or was skipped.
    connection: Option<u64>,
}

/// The callers on one thread that want the same `PING` (the same first number sent after
/// they arrived): any answer that releases one releases them all, since that `PING` was sent
/// after each of them arrived.
struct Group {
    /// The barrier's address: groups of different barriers never mix.
    barrier: usize,
    wanted: u64,
    outcome: OnceLock<Outcome>,
    finished: Notify,
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// The `PING` was answered (`Some`: on that connection) or failed (`None`).
    Answered(Option<u64>),
    /// The first caller stopped waiting first (cancelled or timed out): each other caller
    /// waits on its own, within its own bound.
    Abandoned,
}

thread_local! {
    /// This thread's groups still waiting; finished ones are dropped at the next arrival.
    static GROUPS: RefCell<Vec<Arc<Group>>> = const { RefCell::new(Vec::new()) };
}

/// Ends a group as its first caller stops waiting, however it stops.
struct Leading(Arc<Group>);

impl Leading {
    fn finish(&self, outcome: Outcome) {
        if self.0.outcome.set(outcome).is_ok() {
            self.0.finished.notify_waiters();
        }
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.finish(Outcome::Abandoned);
    }
}

impl Barrier {
    fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            answered: watch::Sender::new(Round { number: 0, connection: None }),
            wanted: Notify::new(),
        }
    }

    /// Waits, at most `bound`, for a `PING` sent after this call to be answered; returns the
    /// connection it was answered on, or `None` when it failed or took too long.
    pub(crate) async fn pass(&self, bound: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + bound;
        // Any PING numbered above the last one sent now is sent after this point.
        let wanted = self.sent.load(Ordering::SeqCst) + 1;
        match self.join(wanted) {
            Ok(leading) => {
                let connection = self.wait(wanted, deadline).await?;
                leading.finish(Outcome::Answered(connection));
                connection
            }
            Err(group) => {
                let finished = group.finished.notified();
                let outcome = match group.outcome.get() {
                    Some(&outcome) => outcome,
                    None => {
                        tokio::time::timeout_at(deadline, finished).await.ok()?;
                        *group.outcome.get()?
                    }
                };
                match outcome {
                    Outcome::Answered(connection) => connection,
                    Outcome::Abandoned => self.wait(wanted, deadline).await?,
                }
            }
        }
    }

    /// This thread's group waiting for `wanted`: `Ok` when this caller starts it (and asks
    /// for a `PING`), `Err` with the group it joins.
    fn join(&self, wanted: u64) -> Result<Leading, Arc<Group>> {
        let barrier = std::ptr::from_ref(self) as usize;
        GROUPS.with_borrow_mut(|groups| {
            groups.retain(|group| group.outcome.get().is_none());
            if let Some(group) = groups.iter().find(|group| group.barrier == barrier && group.wanted == wanted) {
                return Err(Arc::clone(group));
            }
            let group = Arc::new(Group { barrier, wanted, outcome: OnceLock::new(), finished: Notify::new() });
            groups.push(Arc::clone(&group));
            self.wanted.notify_one();
            Ok(Leading(group))
        })
    }

    /// Waits until `deadline` for an answer to a `PING` numbered `wanted` or above: `None`
    /// when none came in time; `Some` with the connection that answered, `None` if it failed.
    async fn wait(&self, wanted: u64, deadline: tokio::time::Instant) -> Option<Option<u64>> {
        let mut answers = self.answered.subscribe();
        let round =
            tokio::time::timeout_at(deadline, answers.wait_for(|round| round.number >= wanted)).await.ok()?.ok()?;
        Some(round.connection)
    }

    /// Asks for a `PING` without waiting for it (a new connection to probe).
    pub(crate) fn request(&self) {
        self.wanted.notify_one();
    }

    /// Waits until a caller wants a `PING`, at most `idle`; returns whether one does.
    pub(crate) async fn wanted(&self, idle: Duration) -> bool {
        tokio::time::timeout(idle, self.wanted.notified()).await.is_ok()
    }

    /// Numbers the `PING` about to be sent.
    pub(crate) fn sending(&self) -> u64 {
        self.sent.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Publishes the outcome of `PING` number `number`.
    pub(crate) fn answer(&self, number: u64, connection: Option<u64>) {
        self.answered.send_replace(Round { number, connection });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A near-cache whose connection 1 passed its probe.
    fn near() -> NearCache {
        let near = NearCache::new(1024 * 1024, Duration::from_secs(60), "prefix");
        verify(&near, 1);
        near
    }

    fn verify(near: &NearCache, connection: u64) {
        let probe = near.expect_probe();
        near.apply(&invalidation(&[format!("prefix:near-probe:{probe}")]));
        assert!(near.probe_arrived(probe, connection));
    }

    #[test]
    fn nothing_is_kept_for_a_connection_whose_pushes_were_not_seen_to_arrive() {
        let near = NearCache::new(1024 * 1024, Duration::from_secs(60), "prefix");
        let id = UserId::generate();
        near.keep(id, near.guard(id), 1, &b"payload".to_vec().into());
        assert!(near.get(id, 1).is_none(), "kept before any probe");
        // A probe whose push never came (a proxy dropping pushes, tracking refused).
        let probe = near.expect_probe();
        assert!(!near.probe_arrived(probe, 1));
        near.keep(id, near.guard(id), 1, &b"payload".to_vec().into());
        assert!(near.get(id, 1).is_none(), "kept after a failed probe");
        // Another key's push does not pass for the probe's.
        let probe = near.expect_probe();
        near.apply(&invalidation(&[format!("prefix:near-probe:{}", uuid::Uuid::new_v4())]));
        assert!(!near.probe_arrived(probe, 1));
        verify(&near, 1);
        near.keep(id, near.guard(id), 1, &b"payload".to_vec().into());
        assert!(near.get(id, 1).is_some());
    }

    fn invalidation(keys: &[String]) -> PushInfo {
        let keys = keys.iter().map(|key| Value::BulkString(key.clone().into_bytes())).collect();
        PushInfo { kind: PushKind::Invalidate, data: vec![Value::Array(keys)] }
    }

    #[test]
    fn an_answer_read_before_an_invalidation_is_not_kept() {
        let near = near();
        let id = UserId::generate();
        let guard = near.guard(id);
        // The push for a change made after the read was sent is applied before the answer is stored.
        near.apply(&invalidation(&[format!("prefix:gen:{id}")]));
        near.keep(id, guard, 1, &b"old".to_vec().into());
        assert_eq!(near.get(id, 1), None);
        // A read sent after it is kept.
        near.keep(id, near.guard(id), 1, &b"new".to_vec().into());
        assert_eq!(near.get(id, 1), Some(b"new".to_vec().into()));
    }

    #[test]
    fn an_entry_read_before_a_flush_is_never_served_even_while_the_map_still_holds_it() {
        let near = near();
        let id = UserId::generate();
        let before = near.guard(id);
        near.flush();
        // As if the flush's clearing had not reached this entry's shard yet.
        let payload = CachedProfile::from(b"old".to_vec());
        let stale = NearEntry {
            connection: 1,
            payload,
            expires: Instant::now() + Duration::from_secs(60),
            flushes: before.flushes,
        };
        near.entries.insert(id, stale);
        assert!(near.get(id, 1).is_none(), "served an entry read before a flush");
        near.keep(id, near.guard(id), 1, &b"new".to_vec().into());
        assert_eq!(near.get(id, 1), Some(b"new".to_vec().into()));
    }

    #[test]
    fn an_expired_entry_is_not_served_and_leaves_the_counts() {
        let near = NearCache::new(1024 * 1024, Duration::from_millis(20), "prefix");
        verify(&near, 1);
        let id = UserId::generate();
        near.keep(id, near.guard(id), 1, &b"payload".to_vec().into());
        assert!(near.get(id, 1).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(near.get(id, 1).is_none(), "served past its TTL");
        let other = UserId::generate();
        near.keep(other, near.guard(other), 1, &b"payload".to_vec().into());
        assert_eq!(near.size().0, 1);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(near.size(), (0, 0), "expired entries are counted");
    }

    #[test]
    fn pushes_drop_the_named_entries_and_a_null_or_a_lost_connection_drops_all() {
        let near = near();
        let (first, second) = (UserId::generate(), UserId::generate());
        for id in [first, second] {
            near.keep(id, near.guard(id), 1, &b"payload".to_vec().into());
        }
        near.apply(&invalidation(&[format!("prefix:v1:user:{first}"), "someone-else:key".to_owned()]));
        assert_eq!((near.get(first, 1).is_some(), near.get(second, 1).is_some()), (false, true));

        near.apply(&PushInfo { kind: PushKind::Invalidate, data: vec![Value::Nil] });
        assert!(near.get(second, 1).is_none(), "a flush keeps nothing");

        near.keep(second, near.guard(second), 1, &b"payload".to_vec().into());
        near.apply(&PushInfo { kind: PushKind::Disconnection, data: vec![] });
        assert!(near.get(second, 1).is_none(), "a lost connection keeps nothing");
    }

    #[test]
    fn entries_are_served_only_for_the_connection_that_tracks_them() {
        let near = near();
        let id = UserId::generate();
        near.keep(id, near.guard(id), 1, &b"payload".to_vec().into());
        assert!(near.get(id, 2).is_none(), "served for another connection");
        // Once another connection answered, the older one's entries are gone for good.
        near.used(2);
        assert!(near.get(id, 1).is_none());
        let guard = near.guard(id);
        near.used(3);
        verify(&near, 3);
        near.keep(id, guard, 3, &b"payload".to_vec().into());
        assert!(near.get(id, 3).is_none(), "an answer read across a change of connection was kept");
    }

    #[tokio::test]
    async fn a_barrier_waits_for_a_ping_sent_after_it_began() {
        let barrier = Arc::new(Barrier::new());
        // A PING in flight when the caller arrives does not count.
        let in_flight = barrier.sending();
        let waiting = tokio::spawn({
            let barrier = Arc::clone(&barrier);
            async move { barrier.pass(Duration::from_secs(5)).await }
        });
        assert!(barrier.wanted(Duration::from_secs(5)).await, "the caller asked for a PING");
        barrier.answer(in_flight, Some(7));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "released by a PING sent before it arrived");
        let next = barrier.sending();
        barrier.answer(next, Some(8));
        assert_eq!(waiting.await.expect("joined"), Some(8));
        // A failed PING releases its callers with no connection.
        let failing = tokio::spawn({
            let barrier = Arc::clone(&barrier);
            async move { barrier.pass(Duration::from_secs(5)).await }
        });
        assert!(barrier.wanted(Duration::from_secs(5)).await);
        let number = barrier.sending();
        barrier.answer(number, None);
        assert_eq!(failing.await.expect("joined"), None);
    }

    /// Starts `count` callers of `barrier.pass` on this thread (a current-thread test
    /// runtime) and lets them run until they wait.
    async fn callers(barrier: &Arc<Barrier>, count: usize) -> Vec<tokio::task::JoinHandle<Option<u64>>> {
        let callers = (0..count)
            .map(|_| {
                let barrier = Arc::clone(barrier);
                tokio::spawn(async move { barrier.pass(Duration::from_secs(5)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        callers
    }

    #[tokio::test]
    async fn callers_on_one_thread_wanting_the_same_ping_wait_as_one() {
        let barrier = Arc::new(Barrier::new());
        let waiting = callers(&barrier, 3).await;
        assert_eq!(barrier.answered.receiver_count(), 1, "each caller subscribed to the answers");
        assert!(barrier.wanted(Duration::from_secs(5)).await);
        let number = barrier.sending();
        barrier.answer(number, Some(4));
        for caller in waiting {
            assert_eq!(caller.await.expect("joined"), Some(4));
        }
    }

    #[tokio::test]
    async fn a_caller_arriving_after_a_ping_was_sent_waits_for_the_next_one() {
        let barrier = Arc::new(Barrier::new());
        let first = callers(&barrier, 1).await;
        let in_flight = barrier.sending();
        let second = callers(&barrier, 1).await;
        assert_eq!(barrier.answered.receiver_count(), 2, "a later caller joined a group that wants an older PING");
        barrier.answer(in_flight, Some(1));
        assert_eq!(first.into_iter().next().expect("one").await.expect("joined"), Some(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = second.into_iter().next().expect("one");
        assert!(!second.is_finished(), "released by a PING sent before it arrived");
        let next = barrier.sending();
        barrier.answer(next, Some(2));
        assert_eq!(second.await.expect("joined"), Some(2));
    }

    #[tokio::test]
    async fn when_the_first_caller_stops_waiting_the_others_wait_on_their_own() {
        let barrier = Arc::new(Barrier::new());
        let mut waiting = callers(&barrier, 3).await;
        // The first caller is cancelled (its request went away).
        waiting.remove(0).abort();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(barrier.answered.receiver_count(), 2, "the others subscribed themselves");
        assert!(waiting.iter().all(|caller| !caller.is_finished()), "released without an answer");
        let number = barrier.sending();
        barrier.answer(number, Some(9));
        for caller in waiting {
            assert_eq!(caller.await.expect("joined"), Some(9));
        }

        // The first caller's bound ran out: a later caller keeps its own.
        let leader = {
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move { barrier.pass(Duration::from_millis(50)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = callers(&barrier, 1).await.remove(0);
        assert_eq!(leader.await.expect("joined"), None);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!follower.is_finished(), "gave up with the first caller");
        let number = barrier.sending();
        barrier.answer(number, Some(10));
        assert_eq!(follower.await.expect("joined"), Some(10));
    }
}
