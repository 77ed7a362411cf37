//! End-to-end tests of the worker against a real PostgreSQL: real WAL, the real worker (in
//! process, and the binary where crashes and signals matter).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

mod attribution;
mod cli;
mod console;
mod console_browser;
mod ddl_torture;
mod decoder_fuzz;
mod durability;
mod erasure;
mod history;
mod layout;
mod monitoring;
mod nats;
mod operations;
mod partitions;
mod retention;
mod schema;
mod seals;
mod security;
mod startup;
mod support;
mod tls;
mod trust;
mod values;
