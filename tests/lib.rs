//! Shared nothing yet.
