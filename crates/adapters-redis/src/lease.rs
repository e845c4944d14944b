//! The read lease: an instance serves cached entries only while it knows, from a recent
//! read of the [`InvalidationLedger`](domain::cache::InvalidationLedger), which users'
//! entries may be stale.
//!
//! Why this is enough: a change whose invalidation Redis did not confirm is recorded in the
//! ledger and acknowledged only one lease duration after the recording committed. A reader
//! whose last ledger read began before that commit holds a lease that ends before the
//! acknowledgement (it counts from the start of its read); a reader whose read began after
//! it sees the user listed. So a read that begins after the acknowledgement never serves the
//! replaced entry, from any instance. The only assumption is that the instances' clocks run
//! at the same rate over one lease (not that they agree on the time).
//!
//! Time is passed in, so that the state machine is tested without sleeping.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use domain::cache::LedgerEntry;
use domain::user::UserId;
use uuid::Uuid;

#[derive(Debug, Default)]
struct State {
    /// When the lease ends; `None` before the first renewal.
    valid_until: Option<Instant>,
    /// The users listed by the read that gave the lease.
    listed: HashSet<Uuid>,
    /// The ledger listed more users than were read: distrust everyone.
    listed_all: bool,
    /// Whether the last renewal failed (so that a lapse is logged once).
    failing: bool,
}

/// What a renewal changed, worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// Nothing worth logging.
    Unchanged,
    /// The first renewal after failures.
    Recovered,
    /// The first failure after renewals.
    Failing,
}

/// The read lease of one cache.
#[derive(Debug)]
pub(crate) struct ReadLease {
    duration: Duration,
    state: Mutex<State>,
}

impl ReadLease {
    /// A lease that lasts `duration` from the start of each ledger read.
    pub(crate) fn new(duration: Duration) -> Self {
        Self { duration, state: Mutex::new(State::default()) }
    }

    /// How long a lease lasts, and so how long a recorded change waits before it is
    /// acknowledged.
    pub(crate) fn duration(&self) -> Duration {
        self.duration
    }

    /// Renews the lease from a ledger read that began at `started` and listed `listed`
    /// (all of the ledger, unless `truncated`).
    pub(crate) fn renew(&self, started: Instant, listed: &[LedgerEntry], truncated: bool) -> Renewal {
        let mut state = self.lock();
        state.valid_until = Some(started + self.duration);
        state.listed = listed.iter().map(|entry| entry.user.as_uuid()).collect();
        state.listed_all = truncated;
        if std::mem::replace(&mut state.failing, false) { Renewal::Recovered } else { Renewal::Unchanged }
    }

    /// Records a failed ledger read: the lease runs out unless a later read succeeds.
    pub(crate) fn renewal_failed(&self) -> Renewal {
        if std::mem::replace(&mut self.lock().failing, true) { Renewal::Unchanged } else { Renewal::Failing }
    }

    /// Whether `id`'s cached entry may be served (and filled) at `now`.
    pub(crate) fn trusts(&self, id: UserId, now: Instant) -> bool {
        let state = self.lock();
        state.valid_until.is_some_and(|until| now < until) && !state.listed_all && !state.listed.contains(&id.as_uuid())
    }

    /// How many users the last read listed (for metrics).
    pub(crate) fn listed(&self) -> usize {
        self.lock().listed.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent: poisoning carries no meaning here.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
