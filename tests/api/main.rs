//! Black-box tests of the HTTP API: one binary, each test with its own database.

mod devices;
mod hostile;
mod idempotency;
mod operations;
mod preferences;
mod seed;
mod users;
