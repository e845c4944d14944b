//! What the SQL stores share, so that `adapters-postgres` and `adapters-sqlite` are not
//! copies of each other:
//!
//! - [`tables!`]: diesel's view of the tables (the two column types that differ between
//!   the backends come from each store);
//! - [`rows`]: the rows both read (backend-generic `Queryable`s) and their conversion to
//!   domain values; [`row_columns!`] declares the column tuples that select them, checked
//!   against the rows' field names at compile time;
//! - [`row_writes!`]: what both write (a new user, contact and preferences changes,
//!   categories, their revisions and users' choices), built from the domain values by
//!   exhaustive destructuring; [`writes::HistoryEntry`]: the consent history's rows;
//! - [`pool`]: deadpool pools with explicit limits and per-connection session settings;
//! - [`profiles`]: profiles assembled from rows, and page arithmetic; [`profile_query!`]: the
//!   one statement that reads one user's profile in both stores;
//! - [`devices`]: registration results and which device a selector names;
//! - [`events`]: the change events a write records (the transactional outbox);
//! - `contract` (feature `contract-tests`): the repository ports' contract test suite, run
//!   against both stores.
//!
//! What must not live here: SQL statements, migrations, error mapping or anything else that
//! differs between the backends, and no dependency on either store (adapters never depend
//! on each other).

mod columns;
pub mod devices;
pub mod events;
pub mod pool;
pub mod profiles;
pub mod rows;
mod schema;
pub mod writes;

#[cfg(feature = "contract-tests")]
pub mod contract;
