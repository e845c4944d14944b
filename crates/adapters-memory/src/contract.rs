//! Contract test suites: what every implementation of a port must do, written once and run
//! against each implementation (this crate's and the other adapters').
//!
//! - [`profile_cache`]: the [`ProfileCache`](domain::cache::ProfileCache) port, run by
//!   [`profile_cache_contract_tests!`](crate::profile_cache_contract_tests).
//! - [`rate_limiter`]: the [`RateLimiter`](domain::rate_limit::RateLimiter) port, run by
//!   [`rate_limiter_contract_tests!`](crate::rate_limiter_contract_tests).
//!
//! Compiled for this crate's tests and, with the `contract-tests` feature, for other crates'
//! tests (enable it from dev-dependencies only). Each case is a `pub async fn` taking the
//! implementation; a macro turns every case into a `#[tokio::test]`, so that a case added
//! here runs against every implementation. Cases panic (through `assert!`) when the contract
//! is broken, and never call `unwrap` or `expect`: outside `cfg(test)` the workspace lints
//! deny them.

pub mod profile_cache;
pub mod rate_limiter;
