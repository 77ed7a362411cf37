//! End-to-end tests of the SeaORM wrapper: SeaORM → PostgreSQL → WAL → worker → `changes`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod entities;
mod writes;
