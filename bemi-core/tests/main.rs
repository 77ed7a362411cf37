//! Integration tests of `bemi-core` against a real PostgreSQL with `wal_level=logical`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod emission;
mod payload;
mod requirements;
mod setup;
mod support;
