//! In-process adapters used when Redis is not configured, and as the fallback while it is
//! down: each instance of the service then keeps its own state.
//!
//! - [`MemoryRateLimiter`] ([`rate_limit`]): fixed-window counters in a bounded map.
//! - `contract` (feature `contract-tests`): the ports' contract test suites, run against
//!   these implementations and against the other adapters' ones.
//!
//! What must not live here: I/O of any kind (network, files, databases), or a dependency on
//! another adapter crate.

#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
pub mod rate_limit;

pub use rate_limit::MemoryRateLimiter;
