//! Invalidations not yet confirmed by Redis: a bounded, deduplicated set of user ids.
//!
//! An id is queued before its invalidation is attempted and forgotten once Redis confirmed
//! it; the retry task takes over the ids whose attempt failed or was abandoned. While an id
//! is queued its cache entry may be stale, so lookups of it skip the cache. When the set is
//! full and an invalidation fails, its extra ids are dropped and the whole cache is
//! distrusted until every entry that may have missed its invalidation has expired.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use domain::user::UserId;
use uuid::Uuid;

/// Ids being invalidated; [`PendingInvalidations::complete`] forgets them after success.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) ids: Vec<UserId>,
    /// Ids queued again at or after this sequence number were invalidated by a later commit
    /// than the one this batch covers, so they stay.
    mark: u64,
    /// How many ids did not fit in the queue.
    unqueued: u64,
}

#[derive(Debug, Clone, Copy)]
struct Queued {
    /// The sequence number of the latest queuing of the id.
    sequence: u64,
    queued_at: Instant,
}

#[derive(Debug)]
struct Overflow {
    dropped: u64,
    last_drop: Instant,
}

#[derive(Debug, Default)]
struct State {
    ids: HashMap<Uuid, Queued>,
    next_sequence: u64,
    overflow: Option<Overflow>,
}

/// The set of user ids whose invalidation Redis has not confirmed.
#[derive(Debug)]
pub(crate) struct PendingInvalidations {
    capacity: usize,
    /// How long after the last dropped id the cache stays distrusted.
    distrust_for: Duration,
    /// How long a first attempt may take: the retry task leaves younger ids to it.
    in_flight_for: Duration,
    state: Mutex<State>,
}

impl PendingInvalidations {
    /// Holds at most `capacity` ids; after a drop, distrusts the cache for `distrust_for`;
    /// retries an id once it has been queued for `in_flight_for` (the call timeout).
    pub(crate) fn new(capacity: usize, distrust_for: Duration, in_flight_for: Duration) -> Self {
        Self { capacity, distrust_for, in_flight_for, state: Mutex::new(State::default()) }
    }

    /// Queues `ids` before their invalidation is attempted, so that a caller who gives up
    /// half-way (a cancelled request) still leaves them to the retry task. Ids that do not
    /// fit are counted in the batch; see [`Self::give_up_unqueued`].
    pub(crate) fn queue(&self, ids: &[UserId], now: Instant) -> Batch {
        let mut state = self.lock();
        let mut unqueued = 0_u64;
        for id in ids {
            let queued = Queued { sequence: state.next_sequence, queued_at: now };
            state.next_sequence += 1;
            let full = state.ids.len() >= self.capacity;
            match state.ids.get_mut(&id.as_uuid()) {
                Some(existing) => *existing = queued,
                None if full => unqueued += 1,
                None => {
                    state.ids.insert(id.as_uuid(), queued);
                }
            }
        }
        Batch { ids: ids.to_vec(), mark: state.next_sequence, unqueued }
    }

    /// Records that the ids of a failed batch that did not fit are lost: the cache is then
    /// distrusted. Returns `true` when this started an overflow (none had been before).
    pub(crate) fn give_up_unqueued(&self, batch: &Batch, now: Instant) -> bool {
        if batch.unqueued == 0 {
            return false;
        }
        let mut state = self.lock();
        match &mut state.overflow {
            Some(overflow) => {
                overflow.dropped += batch.unqueued;
                overflow.last_drop = now;
                false
            }
            None => {
                state.overflow = Some(Overflow { dropped: batch.unqueued, last_drop: now });
                true
            }
        }
    }

    /// Whether the cache must not be used for `id`: its invalidation is not confirmed, or
    /// ids were dropped recently.
    pub(crate) fn blocks(&self, id: UserId) -> bool {
        let state = self.lock();
        state.overflow.is_some() || state.ids.contains_key(&id.as_uuid())
    }

    /// Up to `max` ids to retry: those queued long enough ago that their first attempt has
    /// failed or been abandoned.
    pub(crate) fn batch(&self, max: usize, now: Instant) -> Option<Batch> {
        let state = self.lock();
        let ids: Vec<UserId> = state
            .ids
            .iter()
            .filter(|(_, queued)| queued.queued_at + self.in_flight_for <= now)
            .take(max)
            .map(|(id, _)| UserId::from(*id))
            .collect();
        if ids.is_empty() {
            return None;
        }
        Some(Batch { ids, mark: state.next_sequence, unqueued: 0 })
    }

    /// Forgets the ids of a batch whose invalidation succeeded, unless queued again since
    /// (an id queued before the batch was taken is covered by its success).
    pub(crate) fn complete(&self, batch: &Batch) {
        let mut state = self.lock();
        for id in &batch.ids {
            if state.ids.get(&id.as_uuid()).is_some_and(|queued| queued.sequence < batch.mark) {
                state.ids.remove(&id.as_uuid());
            }
        }
    }

    /// Ends an overflow once nothing is pending and the distrust period has passed; returns
    /// how many ids were dropped during it.
    pub(crate) fn end_overflow_if_due(&self, now: Instant) -> Option<u64> {
        let mut state = self.lock();
        let due = state.ids.is_empty()
            && state.overflow.as_ref().is_some_and(|overflow| now >= overflow.last_drop + self.distrust_for);
        if !due {
            return None;
        }
        state.overflow.take().map(|overflow| overflow.dropped)
    }

    /// Whether ids were dropped and the cache is distrusted.
    pub(crate) fn is_overflowing(&self) -> bool {
        self.lock().overflow.is_some()
    }

    /// The most ids kept.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many ids are pending.
    pub(crate) fn len(&self) -> usize {
        self.lock().ids.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent: poisoning carries no meaning here.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
