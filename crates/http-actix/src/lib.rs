//! The user-service HTTP adapter and composition root.
//!
//! - [`config`]: settings from the environment.
//! - [`startup`]: [`startup::Application`], which wires adapters into the domain's use cases
//!   and serves them; [`state`]: the [`state::AppState`] it gives every handler.
//! - [`routes`], [`dto`], [`extract`], [`envelope`], [`error`]: the REST surface, its bodies,
//!   and the envelope every response uses.
//!
//! Business rules live in the `domain` crate; the ports' implementations in the `adapters-*`
//! crates (PostgreSQL, SQLite, Redis, in-process, argon2).

pub mod abuse;
pub mod auth;
pub mod config;
pub mod dto;
pub mod envelope;
pub mod error;
pub mod events;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod middleware;
pub mod routes;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
