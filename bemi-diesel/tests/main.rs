//! End-to-end tests of the Diesel wrappers: Diesel → PostgreSQL → WAL → worker → `changes`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

#[cfg(feature = "async")]
mod async_connection;
mod schema;
mod sync_connection;
