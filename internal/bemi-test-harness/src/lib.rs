//! Test support for bemi-rs: a real PostgreSQL server with `wal_level=logical` and a fresh
//! database per test.
//!
//! - When `BEMI_TEST_DATABASE_URL` is set, tests use that server (it must run with
//!   `wal_level=logical`; the user must be able to create databases and replication slots).
//! - Otherwise the first test of a test binary starts a throwaway cluster from the system's
//!   PostgreSQL binaries (`BEMI_PG_BIN_DIR`, Debian's `/usr/lib/postgresql/<major>/bin`,
//!   `pg_config --bindir` or `PATH`), as the `postgres` OS user when running as root (`initdb`
//!   refuses root), on a free port, with `fsync=off` and every statement logged. A detached
//!   watchdog stops and removes the cluster as soon as the test process is gone, however it ends;
//!   clusters of processes that no longer exist are removed on the next start.
//!
//! ```no_run
//! # async fn example() {
//! let database = bemi_test_harness::test_database!();
//! let client = database.connect().await;
//! client.batch_execute("CREATE TABLE todo (id serial PRIMARY KEY)").await.unwrap();
//! # }
//! ```
//!
//! - With the `testcontainers` feature and `BEMI_TEST_BACKEND=testcontainers`, the shared
//!   cluster is a `postgres` Docker container instead (for machines with Docker; never the
//!   default, and CI does not need it).
//!
//! - [`NatsServer`] starts a throwaway `nats-server -js` for the JetStream tests.
//!
//! Test code is allowed to panic: every failure here is a test failure with a message.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod certificates;
mod cluster;
#[cfg(feature = "testcontainers")]
mod container;
mod database;
mod nats;
mod wait;

pub use cluster::{BACKEND_VARIABLE, BIN_DIR_VARIABLE, DATABASE_URL_VARIABLE, TestCluster};

/// The one command that installs, on Debian, every system package the tests and the
/// quickstart need (the README shows it beside them); each missing piece fails with it.
pub const INSTALL_LINE: &str = "sudo apt-get install -y postgresql postgresql-contrib libpq-dev pkg-config nats-server chromium chromium-driver";
#[cfg(feature = "testcontainers")]
pub use container::IMAGE_TAG_VARIABLE;
pub use database::TestDatabase;
pub use nats::{NATS_SERVER_VARIABLE, NatsServer};
pub use wait::{wait_for_slot_to_catch_up, wait_until, wait_until_async};

/// Creates the [`TestDatabase`] of the calling test, named after the test function's path.
#[macro_export]
macro_rules! test_database {
    () => {{
        fn here() {}
        let path = ::std::any::type_name_of_val(&here);
        $crate::TestDatabase::new(path.strip_suffix("::here").unwrap_or(path))
    }};
}
