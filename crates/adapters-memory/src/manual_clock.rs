//! A clock for tests that moves only when told to, shared by the in-process adapters'
//! tests of expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone)]
pub(crate) struct ManualClock {
    start: Instant,
    elapsed_ms: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at "now".
    pub(crate) fn new() -> Self {
        Self { start: Instant::now(), elapsed_ms: Arc::new(AtomicU64::new(0)) }
    }

    /// Moves the clock on.
    pub(crate) fn advance(&self, by: Duration) {
        self.elapsed_ms.fetch_add(u64::try_from(by.as_millis()).expect("a short step"), Ordering::SeqCst);
    }

    /// The clock's time.
    pub(crate) fn now(&self) -> Instant {
        self.start + Duration::from_millis(self.elapsed_ms.load(Ordering::SeqCst))
    }
}
