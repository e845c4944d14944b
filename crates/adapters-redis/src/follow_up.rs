//! Follow-up deletions of downstream copies (`CACHE_INVALIDATE_EXTRA_KEYS`).
//!
//! A client that fills its copy of our answer without a guard (the seed's gateway reads
//! `GET /users/{id}`, works for a while, then `SET`s `usercache:{id}`) can write a body it read
//! before a change *after* our invalidation deleted its copy. Deleting the copy again at fixed
//! delays after each confirmed invalidation removes every such fill that lands within the
//! longest delay.
//!
//! The schedule lives in process memory, apart from the request that caused it, and is
//! bounded. A deletion that fails (Redis paused, restarting, the breaker open) stays due and
//! is tried again on the next tick; at shutdown the service waits for the schedule to empty
//! (see `ProfileCache::finish_pending`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use domain::user::UserId;

/// One scheduled deletion: when, a sequence number (to keep equal instants apart), and whose.
type Entry = Reverse<(Instant, u64, UserId)>;

#[derive(Debug, Default)]
struct State {
    due: BinaryHeap<Entry>,
    /// Deletions taken by a [`Sending`] and not yet confirmed or put back.
    sending: usize,
    next_sequence: u64,
    /// Deletions refused since the last warning because the schedule was full.
    refused: u64,
}

/// The scheduled follow-up deletions.
#[derive(Debug)]
pub(crate) struct FollowUps {
    delays: Vec<Duration>,
    capacity: usize,
    state: Mutex<State>,
}

impl FollowUps {
    /// Deletes again after each of `delays` (none: no follow-ups), keeping at most `capacity`
    /// scheduled deletions (one per user and delay).
    pub(crate) fn new(delays: Vec<Duration>, capacity: usize) -> Self {
        Self { delays, capacity, state: Mutex::new(State::default()) }
    }

    /// Schedules the follow-ups of an invalidation of `ids` confirmed at `now`. Returns how
    /// many deletions did not fit (each may leave a stale downstream copy until it expires).
    pub(crate) fn schedule(&self, ids: &[UserId], now: Instant) -> u64 {
        if self.delays.is_empty() {
            return 0;
        }
        let mut state = self.lock();
        let mut refused = 0;
        for delay in &self.delays {
            for id in ids {
                if state.due.len() + state.sending >= self.capacity {
                    refused += 1;
                    continue;
                }
                let sequence = state.next_sequence;
                state.next_sequence += 1;
                state.due.push(Reverse((now + *delay, sequence, *id)));
            }
        }
        state.refused += refused;
        refused
    }

    /// Takes up to `max` deletions due at `now` to send. They still count as scheduled until
    /// [`Sending::confirm`]; dropped unconfirmed (the call failed or was abandoned), they are
    /// due again.
    pub(crate) fn take_due(&self, max: usize, now: Instant) -> Sending<'_> {
        let mut state = self.lock();
        let mut entries = Vec::new();
        while entries.len() < max && state.due.peek().is_some_and(|Reverse((at, _, _))| *at <= now) {
            if let Some(Reverse(entry)) = state.due.pop() {
                entries.push(entry);
            }
        }
        state.sending += entries.len();
        Sending { follow_ups: self, entries }
    }

    /// How many deletions were refused for lack of room since the last call (for a warning).
    pub(crate) fn take_refused(&self) -> u64 {
        std::mem::take(&mut self.lock().refused)
    }

    /// When the next deletion is due, if any is scheduled.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.lock().due.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The longest delay (zero without follow-ups).
    pub(crate) fn longest_delay(&self) -> Duration {
        self.delays.iter().max().copied().unwrap_or_default()
    }

    /// How many deletions are scheduled, those being sent included.
    pub(crate) fn len(&self) -> usize {
        let state = self.lock();
        state.due.len() + state.sending
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent: poisoning carries no meaning here.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Deletions taken from the schedule to be sent; due again when dropped unconfirmed.
#[derive(Debug)]
pub(crate) struct Sending<'a> {
    follow_ups: &'a FollowUps,
    entries: Vec<(Instant, u64, UserId)>,
}

impl Sending<'_> {
    /// Whether nothing was due.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The users whose copies to delete.
    pub(crate) fn ids(&self) -> impl Iterator<Item = UserId> + '_ {
        self.entries.iter().map(|(_, _, id)| *id)
    }

    /// Redis confirmed the deletions: they leave the schedule.
    pub(crate) fn confirm(mut self) {
        let confirmed = std::mem::take(&mut self.entries).len();
        self.follow_ups.lock().sending -= confirmed;
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if self.entries.is_empty() {
            return;
        }
        let mut state = self.follow_ups.lock();
        state.sending -= self.entries.len();
        state.due.extend(self.entries.drain(..).map(Reverse));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletions_come_due_at_each_delay_after_the_confirmation() {
        let follow_ups = FollowUps::new(vec![Duration::from_millis(250), Duration::from_secs(1)], 100);
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let start = Instant::now();
        assert_eq!(follow_ups.schedule(&[alice, bob], start), 0);
        assert_eq!(follow_ups.len(), 4);
        assert!(follow_ups.take_due(10, start + Duration::from_millis(249)).is_empty());
        let first = follow_ups.take_due(10, start + Duration::from_millis(250));
        assert_eq!(first.ids().collect::<Vec<_>>(), [alice, bob]);
        // Being sent, they still count until Redis confirms them.
        assert_eq!(follow_ups.len(), 4);
        first.confirm();
        assert_eq!(follow_ups.len(), 2);
        assert_eq!(follow_ups.next_due(), Some(start + Duration::from_secs(1)));
        // A deletion whose call failed (dropped unconfirmed) is due again.
        let second = follow_ups.take_due(1, start + Duration::from_secs(2));
        assert_eq!(second.ids().count(), 1);
        drop(second);
        assert_eq!(follow_ups.len(), 2);
        let both = follow_ups.take_due(10, start + Duration::from_secs(2));
        assert_eq!(both.ids().count(), 2);
        both.confirm();
        assert_eq!(follow_ups.len(), 0);
    }

    #[test]
    fn the_schedule_is_bounded_and_counts_what_it_refused() {
        let follow_ups = FollowUps::new(vec![Duration::from_secs(1), Duration::from_secs(2)], 3);
        let ids: Vec<UserId> = (0..2).map(|_| UserId::generate()).collect();
        assert_eq!(follow_ups.schedule(&ids, Instant::now()), 1);
        assert_eq!(follow_ups.len(), 3);
        assert_eq!(follow_ups.take_refused(), 1);
        assert_eq!(follow_ups.take_refused(), 0);
    }

    #[test]
    fn without_delays_nothing_is_scheduled() {
        let follow_ups = FollowUps::new(Vec::new(), 10);
        assert_eq!(follow_ups.schedule(&[UserId::generate()], Instant::now()), 0);
        assert_eq!(follow_ups.next_due(), None);
    }
}
