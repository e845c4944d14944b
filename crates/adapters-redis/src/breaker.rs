//! The circuit breaker: after a few consecutive failures Redis is skipped for a cooldown,
//! then one call probes it. A dead or paused Redis thus costs one timeout per cooldown,
//! not one per request.
//!
//! Time is passed in, so that the state machine is tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the breaker says about a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Redis is believed up: call it.
    Closed,
    /// The cooldown is over: this call is the probe.
    Probe,
    /// Skip Redis.
    Denied,
}

/// A state change worth one log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    /// Nothing changed.
    None,
    /// The breaker opened: Redis is skipped from now on.
    Opened,
    /// A call succeeded while the breaker was open: Redis is used again.
    Closed,
}

#[derive(Debug)]
struct State {
    consecutive_failures: u32,
    /// `Some` while open: Redis is skipped until this instant.
    open_until: Option<Instant>,
}

/// A consecutive-failure circuit breaker.
#[derive(Debug)]
pub(crate) struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl CircuitBreaker {
    /// Opens after `threshold` consecutive failures, for `cooldown`.
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self { threshold, cooldown, state: Mutex::new(State { consecutive_failures: 0, open_until: None }) }
    }

    /// Whether a call may go to Redis now.
    pub(crate) fn permit(&self, now: Instant) -> Permit {
        let mut state = self.lock();
        match state.open_until {
            None => Permit::Closed,
            Some(until) if now < until => Permit::Denied,
            Some(_) => {
                // Re-arm before probing rather than marking a probe "in flight": a probe whose
                // caller gives up (a cancelled request) can then never leave the breaker stuck.
                state.open_until = Some(now + self.cooldown);
                Permit::Probe
            }
        }
    }

    /// Records a successful call.
    pub(crate) fn success(&self) -> Transition {
        let mut state = self.lock();
        state.consecutive_failures = 0;
        match state.open_until.take() {
            Some(_) => Transition::Closed,
            None => Transition::None,
        }
    }

    /// Records a failed call (an error or a timeout).
    pub(crate) fn failure(&self, now: Instant) -> Transition {
        let mut state = self.lock();
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        if state.open_until.is_some() {
            // A failed probe: the breaker was re-armed when the probe was let through.
            return Transition::None;
        }
        if state.consecutive_failures >= self.threshold {
            state.open_until = Some(now + self.cooldown);
            return Transition::Opened;
        }
        Transition::None
    }

    /// Whether Redis is being skipped.
    pub(crate) fn is_open(&self) -> bool {
        self.lock().open_until.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain fields, valid after any panic: poisoning carries no meaning.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
