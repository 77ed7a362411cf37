//! The benchmark's PostgreSQL: a throwaway cluster with durable settings, and bemi set up.

use std::sync::Arc;

use bemi_core::setup::{Setup, SetupOptions};
use bemi_test_harness::{TestCluster, TestDatabase};
use bemi_worker::ConnectionOptions;

/// Server settings for benchmarks: durable (unlike the test defaults), quiet, no automatic
/// checkpoint inside a run.
const SETTINGS: &[&str] = &[
    "fsync=on",
    "synchronous_commit=on",
    "full_page_writes=on",
    "log_statement=none",
    "shared_buffers=256MB",
    "max_wal_size=8GB",
    "min_wal_size=1GB",
    "checkpoint_timeout=30min",
    "wal_sender_timeout=60s",
];

/// A database with bemi set up on a dedicated cluster.
pub(crate) struct Environment {
    pub(crate) cluster: Arc<TestCluster>,
    pub(crate) database: TestDatabase,
    pub(crate) client: tokio_postgres::Client,
}

impl Environment {
    /// Starts the cluster, creates the database and `schema_sql`, and sets bemi up.
    pub(crate) async fn start(name: &str, schema_sql: &str) -> anyhow::Result<Self> {
        let cluster = tokio::task::spawn_blocking(|| TestCluster::dedicated(SETTINGS)).await?;
        Self::in_cluster(cluster, name, schema_sql).await
    }

    /// Starts the cluster and creates the database, with bemi tracking only `tables`.
    pub(crate) async fn start_tracking(
        name: &str,
        schema_sql: &str,
        tables: &[&str],
    ) -> anyhow::Result<Self> {
        let cluster = tokio::task::spawn_blocking(|| TestCluster::dedicated(SETTINGS)).await?;
        let tables = tables
            .iter()
            .map(|table| bemi_core::QualifiedName::new("public", *table))
            .collect::<Result<Vec<_>, _>>()?;
        Self::create(
            cluster,
            name,
            schema_sql,
            SetupOptions::default().tables(tables),
        )
        .await
    }

    /// Creates the database in an existing cluster, tracking schema `public`.
    pub(crate) async fn in_cluster(
        cluster: Arc<TestCluster>,
        name: &str,
        schema_sql: &str,
    ) -> anyhow::Result<Self> {
        Self::create(cluster, name, schema_sql, SetupOptions::default()).await
    }

    async fn create(
        cluster: Arc<TestCluster>,
        name: &str,
        schema_sql: &str,
        options: SetupOptions,
    ) -> anyhow::Result<Self> {
        let database = {
            let cluster = Arc::clone(&cluster);
            let name = format!("bench::{name}");
            tokio::task::spawn_blocking(move || TestDatabase::new_in(&cluster, &name)).await?
        };
        let client = database.connect().await;
        client.batch_execute(schema_sql).await?;
        let source = ConnectionOptions::parse(&database.url())?;
        let setup = Setup::new(options.slot(format!("{}_setup", database.slot_name())))?;
        bemi_worker::setup(&source, &source, &setup).await?;
        // The setup's own slot is not used by the benchmarks.
        client.batch_execute(&setup.drop_slot_sql()).await?;
        Ok(Self {
            cluster,
            database,
            client,
        })
    }

    /// Creates a pgoutput slot.
    pub(crate) async fn create_slot(&self, slot: &str) -> anyhow::Result<()> {
        self.client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await?;
        Ok(())
    }

    /// The size of `bemi.changes_stored` with its indexes and TOAST, summed over its partitions (a
    /// partitioned table has no storage of its own), for reports.
    pub(crate) async fn changes_size(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .query_one(
                "SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) \
                 FROM pg_partition_tree('bemi.changes_stored') WHERE isleaf",
                &[],
            )
            .await?
            .get(0))
    }

    /// The server's current WAL position.
    pub(crate) async fn current_lsn(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0))
    }

    /// `PostgreSQL 15.x` and the number of CPUs, for reports.
    pub(crate) async fn machine(&self) -> anyhow::Result<String> {
        let version: String = self
            .client
            .query_one("SHOW server_version", &[])
            .await?
            .get(0);
        let cores = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
        Ok(format!("{cores} cores, PostgreSQL {version}"))
    }
}
