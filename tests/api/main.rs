//! Black-box tests of the HTTP API: one binary, each test with its own database.
#![expect(clippy::unwrap_used, reason = "test helpers fail the test on any unexpected error")]

mod abuse;
mod auth;
mod cache;
mod categories;
mod clients;
mod cluster;
mod deploy;
mod devices;
mod eligibility;
mod embedded;
mod events;
mod failover;
mod hostile;
mod idempotency;
mod operations;
mod operations_scale;
mod pooler;
mod preferences;
mod redis_faults;
mod replica;
mod seed;
mod sentinel;
mod split_brain;
mod users;
