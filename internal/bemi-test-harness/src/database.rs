//! One fresh database per test, dropped with its replication slots when the test ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::TestCluster;

/// A database of its own for one test, named after the test.
///
/// Creating it first drops whatever a crashed earlier run of the same test left behind (the
/// database and its replication slots); dropping it terminates its connections (including
/// replication connections), drops its slots and drops the database.
#[derive(Debug)]
pub struct TestDatabase {
    cluster: Arc<TestCluster>,
    name: String,
}

impl TestDatabase {
    /// Creates the database for the test called `test_path` (any unique string; the
    /// [`test_database!`](crate::test_database) macro passes the test function's path).
    pub fn new(test_path: &str) -> TestDatabase {
        Self::new_in(&TestCluster::shared(), test_path)
    }

    /// Creates the database for `test_path` in `cluster` (e.g. a
    /// [`TestCluster::dedicated`] one).
    pub fn new_in(cluster: &Arc<TestCluster>, test_path: &str) -> TestDatabase {
        let cluster = Arc::clone(cluster);
        let name = database_name(test_path);
        let database = TestDatabase { cluster, name };
        database.drop_leftovers();
        let create = format!("CREATE DATABASE \"{}\"", database.name);
        database
            .cluster
            .with_admin(|client| client.batch_execute(&create))
            .unwrap_or_else(|error| panic!("create test database {}: {error}", database.name));
        database
    }

    /// The database's name (also a valid, unquoted identifier).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A replication slot name unique to this test (the database's name).
    pub fn slot_name(&self) -> &str {
        &self.name
    }

    /// The URL of the database.
    pub fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    /// The URL of the database for another user (e.g. a role created by the test).
    pub fn url_for_user(&self, user: &str, password: Option<&str>) -> String {
        self.cluster.url_for_user(&self.name, user, password)
    }

    /// The server.
    pub fn cluster(&self) -> &TestCluster {
        &self.cluster
    }

    /// Connects with tokio-postgres; the connection runs on a spawned task.
    ///
    /// # Panics
    ///
    /// When the connection fails, or outside a tokio runtime.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|error| panic!("connect to {}: {error}", self.name));
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }

    /// Connects with the synchronous `postgres` client (not inside an async runtime).
    pub fn connect_sync(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls)
            .unwrap_or_else(|error| panic!("connect to {}: {error}", self.name))
    }

    /// The statements the server logged for this database so far (throwaway clusters log every
    /// statement), or `None` when the server is not a throwaway cluster.
    pub fn logged_statements(&self) -> Option<Vec<String>> {
        let log = std::fs::read_to_string(self.cluster.server_log()?).ok()?;
        let marker = format!(" {} LOG:  ", self.name);
        let mut statements: Vec<String> = Vec::new();
        // Whether the previous log line started a statement of this database: only
        // then do the tab-indented lines that follow belong to it (other sessions'
        // multi-line statements interleave in the same log).
        let mut continuing = false;
        for line in log.lines() {
            if let Some(continued) = line.strip_prefix('\t') {
                if continuing && let Some(last) = statements.last_mut() {
                    last.push('\n');
                    last.push_str(continued);
                }
                continue;
            }
            continuing = false;
            let Some(at) = line.find(&marker) else {
                continue;
            };
            let message = &line[at + marker.len()..];
            let statement = if let Some(sql) = message.strip_prefix("statement: ") {
                Some(sql)
            } else if message.starts_with("execute ") {
                message.split_once(": ").map(|(_, sql)| sql)
            } else {
                None
            };
            if let Some(statement) = statement {
                statements.push(statement.to_owned());
                continuing = true;
            }
        }
        Some(statements)
    }

    fn drop_leftovers(&self) {
        let name = self.name.clone();
        self.cluster
            .with_admin(move |client| drop_database(client, &name));
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.cluster
                .with_admin(move |client| drop_database(client, &name));
        }));
        if result.is_err() && !std::thread::panicking() {
            eprintln!("warning: could not drop test database {}", self.name);
        }
    }
}

/// Terminates the database's sessions, drops its replication slots, then the database.
fn drop_database(client: &mut postgres::Client, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let _ = client.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&name],
        );
        let _ = client.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE database = $1 AND active_pid IS NOT NULL",
            &[&name],
        );
        let dropped = client.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE database = $1 AND NOT active",
            &[&name],
        );
        let remaining: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE database = $1",
                &[&name],
            )
            .map(|row| row.get(0))
            .unwrap_or(1);
        if dropped.is_ok() && remaining == 0 {
            break;
        }
        if Instant::now() > deadline {
            panic!("replication slots of {name} stay active");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .unwrap_or_else(|error| panic!("drop test database {name}: {error}"));
}

/// `bemi_t_<readable tail of the path>_<hash of the path>`: deterministic, unique, at most 63
/// bytes, lower case, and valid unquoted.
fn database_name(test_path: &str) -> String {
    let cleaned: String = test_path
        .replace("::{{closure}}", "")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let tail: String = cleaned
        .trim_matches('_')
        .chars()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!(
        "bemi_t_{}_{:08x}",
        tail.trim_start_matches('_'),
        fnv1a(test_path)
    )
}

fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_short_and_distinct() {
        let a = database_name("bemi_core::tests::setup::{{closure}}::installs_everything");
        assert_eq!(
            a,
            database_name("bemi_core::tests::setup::{{closure}}::installs_everything")
        );
        assert!(a.len() <= 63, "{a}");
        assert!(a.starts_with("bemi_t_"));
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        );
        assert_ne!(
            a,
            database_name("bemi_core::tests::setup::installs_everything2")
        );
        let long = database_name(&"x".repeat(500));
        assert!(long.len() <= 63, "{long}");
    }
}
