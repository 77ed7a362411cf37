//! Test support for bemi-rs integrations (Diesel, SeaORM, examples): an [`AuditedDatabase`]
//! is a fresh test database with bemi set up and the real worker streaming its WAL into
//! `bemi.changes`, on a runtime of its own so that sync and async tests can use it alike.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use bemi_core::setup::{Setup, SetupOptions};
use bemi_test_harness::TestDatabase;
use bemi_worker::{ConnectionOptions, Worker, WorkerConfig};
use serde_json::Value;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long to wait for changes to be stored.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A test database with bemi set up and the worker running.
#[derive(Debug)]
pub struct AuditedDatabase {
    database: TestDatabase,
    runtime: Option<Runtime>,
    client: std::sync::Arc<tokio_postgres::Client>,
    stop: Option<oneshot::Sender<()>>,
    worker: Option<JoinHandle<bemi_worker::Result<()>>>,
}

/// Creates the [`AuditedDatabase`] of the calling test, with tables from `$schema_sql`.
#[macro_export]
macro_rules! audited_database {
    ($schema_sql:expr) => {{
        fn here() {}
        let path = ::std::any::type_name_of_val(&here);
        $crate::AuditedDatabase::start(path.strip_suffix("::here").unwrap_or(path), $schema_sql)
    }};
}

impl AuditedDatabase {
    /// Creates the database for `test_path`, runs `schema_sql`, sets bemi up (tracking schema
    /// `public`) and starts the worker. Callable from sync and async tests.
    pub fn start(test_path: &str, schema_sql: &str) -> Self {
        let database = TestDatabase::new(test_path);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("build the worker's runtime");
        let url = database.url();
        let slot = database.slot_name().to_owned();
        let schema_sql = schema_sql.to_owned();
        let (client, stop, worker) = blocking(&runtime, async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            if !schema_sql.is_empty() {
                client.batch_execute(&schema_sql).await.unwrap();
            }
            let source = ConnectionOptions::parse(&url).unwrap();
            let setup = Setup::new(SetupOptions::default().slot(&slot)).unwrap();
            bemi_worker::setup(&source, &source, &setup).await.unwrap();
            let mut config = WorkerConfig::new(source);
            config.slot = slot;
            config.flush_interval = Duration::from_millis(20);
            config.status_interval = Duration::from_millis(200);
            config.max_backoff = Duration::from_millis(500);
            let worker = Worker::new(config);
            let (stop, stopped) = oneshot::channel::<()>();
            let handle = tokio::spawn(async move {
                worker
                    .run(async {
                        let _ = stopped.await;
                    })
                    .await
            });
            (client, stop, handle)
        });
        Self {
            database,
            runtime: Some(runtime),
            client: std::sync::Arc::new(client),
            stop: Some(stop),
            worker: Some(worker),
        }
    }

    /// The test database.
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// The database's URL.
    pub fn url(&self) -> String {
        self.database.url()
    }

    /// Runs SQL (untagged) on the database.
    pub fn sql(&self, sql: &str) {
        let client = std::sync::Arc::clone(&self.client);
        let sql = sql.to_owned();
        blocking(self.runtime(), async move {
            client.batch_execute(&sql).await.unwrap()
        });
    }

    /// Runs a query returning one `i64`.
    pub fn query_i64(&self, sql: &str) -> i64 {
        let client = std::sync::Arc::clone(&self.client);
        let sql = sql.to_owned();
        blocking(self.runtime(), async move {
            client.query_one(&sql, &[]).await.unwrap().get(0)
        })
    }

    /// Runs a query returning one text column; returns its values in order.
    pub fn query_texts(&self, sql: &str) -> Vec<String> {
        let client = std::sync::Arc::clone(&self.client);
        let sql = sql.to_owned();
        blocking(self.runtime(), async move {
            client
                .query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect()
        })
    }

    /// Every stored row change (DDL changes left out: see [`AuditedDatabase::ddl_changes`]),
    /// in commit order.
    pub fn changes(&self) -> Vec<Stored> {
        let client = std::sync::Arc::clone(&self.client);
        blocking(
            self.runtime(),
            async move { changes_of(&client, false).await },
        )
    }

    /// Every stored DDL change (operation `DDL`: a change of a table's shape), in commit order.
    pub fn ddl_changes(&self) -> Vec<Stored> {
        let client = std::sync::Arc::clone(&self.client);
        blocking(
            self.runtime(),
            async move { changes_of(&client, true).await },
        )
    }

    /// Waits until at least `count` changes are stored, then until the worker has processed
    /// everything written so far (its slot confirmed the server's current WAL position: a
    /// change stored twice, or one too many, would be there by then), and returns all of them.
    ///
    /// # Panics
    ///
    /// When they do not arrive within [`TIMEOUT`].
    pub fn wait_for(&self, count: usize) -> Vec<Stored> {
        bemi_test_harness::wait_until(format_args!("{count} changes"), TIMEOUT, || {
            (self.changes().len() >= count).then_some(())
        });
        let client = std::sync::Arc::clone(&self.client);
        let slot = self.database.slot_name().to_owned();
        blocking(self.runtime(), async move {
            bemi_test_harness::wait_for_slot_to_catch_up(&client, &slot, TIMEOUT).await
        });
        self.changes()
    }

    /// [`AuditedDatabase::wait_for`] for async tests (does not block the caller's runtime).
    pub async fn wait_for_async(&self, count: usize) -> Vec<Stored> {
        let client = std::sync::Arc::clone(&self.client);
        let slot = self.database.slot_name().to_owned();
        self.runtime()
            .spawn(async move {
                bemi_test_harness::wait_until_async(
                    format!("{count} changes"),
                    TIMEOUT,
                    || async { (changes_of(&client, false).await.len() >= count).then_some(()) },
                )
                .await;
                bemi_test_harness::wait_for_slot_to_catch_up(&client, &slot, TIMEOUT).await;
                changes_of(&client, false).await
            })
            .await
            .unwrap()
    }

    fn runtime(&self) -> &Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the database")
    }
}

impl Drop for AuditedDatabase {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let (Some(worker), Some(runtime)) = (self.worker.take(), self.runtime.as_ref()) {
            let outcome = blocking(runtime, async move {
                tokio::time::timeout(TIMEOUT, worker).await
            });
            if !std::thread::panicking() {
                match outcome {
                    Ok(Ok(Ok(()))) => {}
                    other => panic!("the worker did not stop cleanly: {other:?}"),
                }
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on `runtime` from any context (also inside another runtime) and waits for it.
fn blocking<F>(runtime: &Runtime, future: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = runtime.handle().clone();
    std::thread::scope(|scope| {
        scope
            .spawn(move || handle.block_on(future))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// One stored change, with the columns tests compare.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The table.
    pub table: String,
    /// `CREATE`, `UPDATE`, `DELETE`, `TRUNCATE`, `SNAPSHOT` or `DDL`.
    pub operation: String,
    /// The primary key.
    pub primary_key: Option<String>,
    /// The row before.
    pub before: Value,
    /// The row after.
    pub after: Value,
    /// The context.
    pub context: Value,
}

/// An expected change.
pub fn stored(
    table: &str,
    operation: &str,
    primary_key: Option<&str>,
    before: Value,
    after: Value,
    context: Value,
) -> Stored {
    Stored {
        table: table.to_owned(),
        operation: operation.to_owned(),
        primary_key: primary_key.map(str::to_owned),
        before,
        after,
        context,
    }
}

/// The stored row changes (`ddl` false) or DDL changes (`ddl` true), in commit order.
async fn changes_of(client: &tokio_postgres::Client, ddl: bool) -> Vec<Stored> {
    client
        .query(
            "SELECT \"table\", operation, primary_key, \"before\", \"after\", context \
             FROM bemi.changes WHERE (operation = 'DDL') = $1 ORDER BY commit_lsn, sequence",
            &[&ddl],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|row| Stored {
            table: row.get(0),
            operation: row.get(1),
            primary_key: row.get(2),
            before: row.get(3),
            after: row.get(4),
            context: row.get(5),
        })
        .collect()
}
