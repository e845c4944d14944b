//! In-process adapters of the domain's ports, for a service without Redis: each instance of
//! the service then keeps its own state.
//!
//! - [`MemoryCache`] ([`cache`]): the profile cache, used when `REDIS_URL` is unset. Coherent
//!   within one process only, so for a single instance (or embedded use); never a fallback
//!   for a Redis that is down, since other instances' invalidations would not reach it.
//! - [`MemoryRateLimiter`] ([`rate_limit`]): fixed-window counters in a bounded map, also the
//!   fallback while Redis is down.
//! - `contract` (feature `contract-tests`): the ports' contract test suites, run against
//!   these implementations and against the other adapters' ones.
//!
//! What must not live here: I/O of any kind (network, files, databases), or a dependency on
//! another adapter crate.

pub mod cache;
#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
#[cfg(test)]
mod manual_clock;
pub mod rate_limit;

pub use cache::{MemoryCache, MemoryCacheConfig};
pub use rate_limit::MemoryRateLimiter;
