//! Helpers for the worker's end-to-end tests: a database with bemi set up, a worker running
//! in-process or as the real binary, and whole `changes` rows to assert on.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bemi_core::setup::{Setup, SetupOptions};
use bemi_core::{CommentEncoder, Context};
use bemi_test_harness::{TestDatabase, wait_until_async};
use bemi_worker::{ConnectionOptions, Metrics, Worker, WorkerConfig};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long the tests wait for changes to arrive.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A test database with tables and bemi set up.
pub struct Fixture {
    pub database: TestDatabase,
    pub client: tokio_postgres::Client,
    pub source: ConnectionOptions,
    pub setup: Setup,
}

impl Fixture {
    /// Creates the login role `<database>_<suffix>` (password `bemi-test`, `attributes` such as
    /// `REPLICATION`), dropping a leftover one; returns its name.
    pub async fn role(&self, suffix: &str, attributes: &str) -> String {
        let role = format!("{}_{suffix}", self.database.name());
        self.sql(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN {attributes} PASSWORD 'bemi-test';"
        ))
        .await;
        role
    }
}

/// Sends the worker's logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// Creates the tables of `schema_sql`, then sets bemi up tracking schema `public`.
pub async fn fixture(database: TestDatabase, schema_sql: &str) -> Fixture {
    fixture_with(database, schema_sql, SetupOptions::default()).await
}

/// Like [`fixture`], with setup options (the slot is always the test's own).
pub async fn fixture_with(
    database: TestDatabase,
    schema_sql: &str,
    options: SetupOptions,
) -> Fixture {
    init_logging();
    let client = database.connect().await;
    if !schema_sql.is_empty() {
        client.batch_execute(schema_sql).await.unwrap();
    }
    let source = ConnectionOptions::parse(&database.url()).unwrap();
    let setup = Setup::new(options.slot(database.slot_name())).unwrap();
    bemi_worker::setup(&source, &source, &setup).await.unwrap();
    Fixture {
        database,
        client,
        source,
        setup,
    }
}

impl Fixture {
    /// A worker configuration for this fixture, tuned for fast tests.
    pub fn config(&self) -> WorkerConfig {
        let mut config = WorkerConfig::new(self.source.clone());
        config.slot = self.setup.options().slot_name().to_owned();
        config.publication = self.setup.options().publication_name().to_owned();
        config.store_into(
            self.source.clone(),
            self.setup.options().changes_table_name().clone(),
        );
        config.flush_interval = Duration::from_millis(20);
        config.status_interval = Duration::from_millis(200);
        config.max_backoff = Duration::from_millis(500);
        config.slot_release_wait = Duration::from_secs(2);
        config
    }

    /// Runs `sql` with `context` appended as a bemi comment, as the ORM wrappers do.
    pub async fn tagged(&self, sql: &str, context: Value) {
        let context = Context::try_from(context).unwrap();
        let tagged = CommentEncoder::default().tag(sql, &context);
        self.client.batch_execute(&tagged).await.unwrap();
    }

    /// Runs untagged SQL.
    pub async fn sql(&self, sql: &str) {
        self.client.batch_execute(sql).await.unwrap();
    }

    /// Waits until at least `count` changes are stored and returns all of them.
    pub async fn wait_for(&self, count: usize) -> Vec<Stored> {
        wait_for_changes(&self.client, &self.setup, count).await
    }
}

/// A worker running on the test's runtime.
pub struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<bemi_worker::Result<()>>,
    pub metrics: Arc<Metrics>,
}

impl RunningWorker {
    pub fn start(config: WorkerConfig) -> Self {
        init_logging();
        let worker = Worker::new(config);
        let metrics = worker.metrics();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            worker
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            stop: Some(stop),
            task,
            metrics,
        }
    }

    /// Stops the worker gracefully and returns how its run ended.
    pub async fn stop(mut self) -> bemi_worker::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(TIMEOUT, &mut self.task)
            .await
            .expect("the worker stops in time")
            .unwrap()
    }

    /// Waits for the worker to end on its own (an error it cannot retry).
    pub async fn ended(mut self) -> bemi_worker::Result<()> {
        tokio::time::timeout(TIMEOUT, &mut self.task)
            .await
            .expect("the worker ends in time")
            .unwrap()
    }
}

/// One stored change, with the columns the tests compare.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub table: String,
    pub operation: String,
    pub primary_key: Option<String>,
    pub before: Value,
    pub after: Value,
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

/// Every stored row change (DDL changes, which `ChangeQuery` selects, left out), in commit
/// order.
pub async fn changes(client: &tokio_postgres::Client, setup: &Setup) -> Vec<Stored> {
    client
        .query(
            &format!(
                "SELECT \"table\", operation, primary_key, \"before\", \"after\", context \
                 FROM {} WHERE operation <> 'DDL' ORDER BY commit_lsn, sequence",
                setup.options().changes_table_name()
            ),
            &[],
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

/// Waits until at least `count` changes are stored; returns them all.
pub async fn wait_for_changes(
    client: &tokio_postgres::Client,
    setup: &Setup,
    count: usize,
) -> Vec<Stored> {
    wait_until_async(&format!("{count} stored changes"), TIMEOUT, || async {
        let all = changes(client, setup).await;
        (all.len() >= count).then_some(all)
    })
    .await
}

/// Waits until every stored change is sealed (at least one).
/// `verify` of the fixture's trail with `options`.
pub async fn verify_with(
    fixture: &Fixture,
    options: &bemi_worker::VerifyOptions,
) -> bemi_worker::VerifyReport {
    bemi_worker::verify(
        &fixture.source,
        fixture.setup.options().changes_table_name(),
        options,
    )
    .await
    .unwrap()
}

/// `verify` of the fixture's trail, every chain and block, no anchors.
pub async fn verify(fixture: &Fixture) -> bemi_worker::VerifyReport {
    verify_with(fixture, &bemi_worker::VerifyOptions::new()).await
}

pub async fn wait_all_sealed(fixture: &Fixture) {
    wait_until_async("every stored change sealed", TIMEOUT, || async {
        let row = fixture
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM bemi.changes_stored), \
                 (SELECT coalesce(sum(changes), 0)::int8 FROM bemi.seals)",
                &[],
            )
            .await
            .ok()?;
        let (stored, sealed): (i64, i64) = (row.get(0), row.get(1));
        (stored > 0 && sealed == stored).then_some(())
    })
    .await;
}

/// The first column of every row `sql` returns.
pub async fn first_column<T>(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query(sql, params)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The number of stored row changes (DDL changes left out, as in [`changes`]).
pub async fn count(client: &tokio_postgres::Client, setup: &Setup) -> i64 {
    client
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE operation <> 'DDL'",
                setup.options().changes_table_name()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Arguments of `bemi-worker run` on `url` and `slot` with small, quick batches (for tests
/// that kill the binary mid-stream).
pub fn quick_run_args(url: &str, slot: &str) -> Vec<String> {
    [
        "run",
        "--database-url",
        url,
        "--slot",
        slot,
        "--batch-size",
        "50",
        "--flush-interval-ms",
        "5",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Sends SIGTERM to a spawned binary and waits for it to exit; returns its exit status.
pub async fn terminate(mut child: Child) -> std::process::ExitStatus {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -TERM {}", child.id());
    tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
}

/// Starts the real `bemi-worker` binary with `args`, logging to a file under the test's temp
/// directory; returns the child and the log's path.
pub fn spawn_binary(args: &[&str], log_name: &str) -> (Child, std::path::PathBuf) {
    let log = std::env::temp_dir().join(format!("{log_name}-{}.log", std::process::id()));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_bemi-worker"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    (child, log)
}

/// Asserts every stored change is there once: `expected` rows, no two with the same primary
/// key and operation, each with its batch's context.
pub async fn assert_exactly_once(client: &tokio_postgres::Client, expected: i64) {
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT (primary_key, operation)), count(DISTINCT id), \
             count(*) FILTER (WHERE context->>'batch' IS DISTINCT FROM \"after\"->>'batch') \
             FROM bemi.changes",
            &[],
        )
        .await
        .unwrap();
    let (total, distinct_keys, distinct_ids, wrong_context): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(total, expected, "stored changes");
    assert_eq!(distinct_keys, expected, "each row change once");
    assert_eq!(distinct_ids, expected, "distinct ids");
    assert_eq!(wrong_context, 0, "every change carries its batch's context");
}

/// Inserts `rows` rows in one transaction tagged with `{"batch": batch}`.
pub async fn insert_batch(client: &tokio_postgres::Client, batch: i32, rows: i32) {
    let sql = format!(
        "INSERT INTO todo (task, batch) SELECT 'task ' || i, {batch} FROM generate_series(1, {rows}) AS i \
         /*Bemi {{\"batch\":\"{batch}\"}} Bemi*/"
    );
    client.batch_execute(&sql).await.unwrap();
}
