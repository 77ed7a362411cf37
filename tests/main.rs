//! End-to-end tests of the `bemi` facade: a request's context, set with the scoping API, reaches
//! the `changes` table through PostgreSQL's WAL and the worker.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod diesel_async_audit;
mod diesel_audit;
mod exact_numbers;
mod request_context;
mod schema_changes;
mod seaorm_audit;
