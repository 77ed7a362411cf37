//! The worker: streams the slot, attributes context, stores batches and confirms what is stored,
//! reconnecting on its own when the source or destination goes away.
//!
//! One session is: connect (catalog, destination, replication), read the stored progress,
//! stream. A store task writes batches in order while the stream is read; the slot is confirmed
//! (standby status update) only up to the end of the last transaction whose changes are all
//! durably stored. A session that fails with a retryable error is replaced by a new one after a
//! capped exponential backoff; the slot re-delivers everything not confirmed and the stored
//! progress skips what was already stored.

pub(crate) mod backoff;
pub(crate) mod batch;
pub(crate) mod progress;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bemi_core::QualifiedName;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};
use tokio::sync::{mpsc, watch};

use crate::admin::install::{SlotState, server_facts, slot_state};
use crate::admin::snapshot::{SnapshotHeader, parse_row};
use crate::change_row::source_hash;
use crate::pipeline::backoff::Backoff;
use crate::pipeline::batch::{Batch, BatchBuilder};
use crate::pipeline::progress::Progress;
use crate::sink::Sink;
use crate::sink::jetstream::{NatsOptions, Publisher};
use crate::sink::store::{Store, is_schema_version};
use crate::source::catalog::{Catalog, RelationInfo};
use crate::source::pgoutput::{self, Message};
use crate::source::recorded_shape::{RecordedShape, relid_of};
use crate::source::xid::XidWidener;
use crate::stitch::context::DEFAULT_MAX_CONTEXT_BYTES;
use crate::stitch::{Stitcher, postgres_time};
use crate::{ConnectionOptions, Error, Result};

/// Where the worker's changes go.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Output {
    /// Stored into a `changes` table (`bemi-worker run`).
    Store {
        /// The database holding the `changes` table (usually the source).
        destination: ConnectionOptions,
        /// The `changes` table (default `bemi.changes`).
        changes_table: QualifiedName,
    },
    /// Published to NATS JetStream (`bemi-worker capture`; `bemi-worker ingest` stores them).
    JetStream(NatsOptions),
}

/// What the worker connects to and how it batches.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// The database whose changes are captured.
    pub source: ConnectionOptions,
    /// Where the changes go (default: `bemi.changes` in the source database).
    pub output: Output,
    /// The replication slot (default `bemi`).
    pub slot: String,
    /// The publication (default `bemi`).
    pub publication: String,
    /// Rows per stored batch (default 5,000). Bounds memory, whatever the transactions' size.
    pub batch_size: usize,
    /// Bytes per stored batch (default 4 MiB): a batch is stored when it reaches `batch_size`
    /// rows or this size, whichever comes first, so wide rows cannot pile up in memory.
    pub batch_bytes: usize,
    /// Longest time a change waits before its batch is stored (default 100 ms).
    pub flush_interval: Duration,
    /// Largest context stored; larger ones become a marker (default 1 MiB).
    pub max_context_bytes: usize,
    /// How often the confirmed position is reported to the server (default 1 s).
    pub status_interval: Duration,
    /// How often progress is logged at info level (default 10 s).
    pub log_interval: Duration,
    /// The longest wait between reconnection attempts (default 30 s).
    pub max_backoff: Duration,
    /// How long a worker starting on a slot held by another walsender waits for it to be
    /// released before giving up (default 60 s): a crashed worker's walsender lingers until
    /// PostgreSQL notices the lost connection.
    pub slot_release_wait: Duration,
    /// Columns to redact, drop or treat as noise (added to those stored in the source's
    /// `bemi.column_policies`); see `bemi_core::policy`.
    pub column_policies: bemi_core::policy::ColumnPolicies,
}

impl WorkerConfig {
    /// Defaults for `source`, storing into the same database.
    pub fn new(source: ConnectionOptions) -> Self {
        Self {
            output: Output::Store {
                destination: source.clone(),
                changes_table: bemi_core::setup::SetupOptions::default()
                    .changes_table_name()
                    .clone(),
            },
            source,
            slot: bemi_core::setup::DEFAULT_SLOT.to_owned(),
            publication: bemi_core::setup::DEFAULT_PUBLICATION.to_owned(),
            batch_size: 5_000,
            batch_bytes: 4 << 20,
            flush_interval: Duration::from_millis(100),
            max_context_bytes: DEFAULT_MAX_CONTEXT_BYTES,
            status_interval: Duration::from_secs(1),
            log_interval: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
            slot_release_wait: Duration::from_secs(60),
            column_policies: bemi_core::policy::ColumnPolicies::default(),
        }
    }

    /// Stores into the `changes` table `changes_table` of `destination`.
    pub fn store_into(&mut self, destination: ConnectionOptions, changes_table: QualifiedName) {
        self.output = Output::Store {
            destination,
            changes_table,
        };
    }
}

/// Counters of a running worker or ingest process, readable while it runs.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) stored_changes: AtomicU64,
    pub(crate) confirmed_lsn: AtomicU64,
    pub(crate) sessions: AtomicU64,
    pub(crate) ignored_messages: AtomicU64,
}

impl Metrics {
    /// Changes stored since the worker started.
    pub fn stored_changes(&self) -> u64 {
        self.stored_changes.load(Ordering::Relaxed)
    }

    /// The newest WAL position confirmed to the server (always 0 for an ingest process).
    pub fn confirmed_lsn(&self) -> u64 {
        self.confirmed_lsn.load(Ordering::Relaxed)
    }

    /// Replication sessions started (1 + reconnections).
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Logical messages under bemi's prefixes that were ignored: snapshot messages from a
    /// transaction that did not prove it comes from `bemi-worker snapshot` (any role may emit
    /// logical messages), and non-transactional ones.
    pub fn ignored_messages(&self) -> u64 {
        self.ignored_messages.load(Ordering::Relaxed)
    }
}

/// The worker: streams the slot, attributes context, stores batches and confirms what is
/// stored, reconnecting with backoff when the source or destination goes away.
///
/// The slot is confirmed only up to the end of the last transaction whose changes are all
/// durably stored; after a crash the slot re-delivers the rest and the stored progress skips
/// what was already stored.
#[derive(Debug)]
pub struct Worker {
    config: WorkerConfig,
    metrics: Arc<Metrics>,
}

/// What the store task reports after each batch.
#[derive(Debug, Default, Clone, Copy)]
struct Stored {
    batches: u64,
    lsn: u64,
    committed_at_micros: Option<i64>,
}

impl Worker {
    /// A worker with `config`.
    pub fn new(config: WorkerConfig) -> Self {
        Self {
            config,
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// The worker's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Streams until `shutdown` completes, then stores and confirms what was received and
    /// returns `Ok`. Lost connections are retried with backoff.
    ///
    /// # Errors
    ///
    /// Errors that retrying cannot fix: unmet requirements, a missing or foreign-held slot,
    /// missing tables or privileges, bad credentials.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Backoff::new(self.config.max_backoff);
        let mut attempt = 0_u32;
        let mut own_walsender: Option<i32> = None;
        let mut slot_wait_started: Option<Instant> = None;
        loop {
            self.metrics.sessions.fetch_add(1, Ordering::Relaxed);
            let mut streamed = false;
            let outcome = self
                .session(shutdown.as_mut(), &mut own_walsender, &mut streamed)
                .await;
            let error = match outcome {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if streamed {
                slot_wait_started = None;
            }
            // A slot held by another walsender may be our previous session's (ended by now) or a
            // crashed worker's, lingering until PostgreSQL notices the lost connection: wait
            // for its release, for a while, before taking it for another consumer's.
            let retry = error.is_retryable()
                || match error {
                    Error::SlotInUse { pid, .. } => {
                        let waiting = *slot_wait_started.get_or_insert_with(Instant::now);
                        let within = waiting.elapsed() < self.config.slot_release_wait;
                        if within {
                            tracing::warn!(
                                pid,
                                "the slot is held by another walsender: waiting for its release"
                            );
                        }
                        within
                    }
                    _ => false,
                };
            if !retry {
                return Err(error);
            }
            if streamed {
                backoff.reset();
                attempt = 0;
            }
            attempt += 1;
            let error = crate::error_chain(&error);
            tracing::warn!(%error, attempt, retry_in = ?backoff.delay(), "replication session ended: reconnecting");
            if !backoff.wait(shutdown.as_mut()).await {
                return Ok(());
            }
        }
    }

    /// One replication session.
    async fn session<F: Future<Output = ()>>(
        &self,
        shutdown: Pin<&mut F>,
        own_walsender: &mut Option<i32>,
        streamed: &mut bool,
    ) -> Result<()> {
        let config = &self.config;
        let catalog_client = config.source.connect("bemi-worker").await?;
        server_facts(&catalog_client).await?.check_source()?;
        match slot_state(&catalog_client, &config.slot).await? {
            SlotState::Missing => {
                // Created after the publication, so decoding can read it from the slot's start.
                ensure_publication(&catalog_client, config).await?;
                catalog_client
                    .batch_execute(&bemi_core::setup::create_slot_sql(&config.slot))
                    .await
                    .map_err(Error::postgres(format!(
                        "create replication slot {:?}",
                        config.slot
                    )))?;
                tracing::warn!(
                    slot = %config.slot,
                    "the replication slot was missing and is created now: changes made before this moment are not captured"
                );
            }
            SlotState::Active(pid) if Some(pid) == *own_walsender => {
                // Our previous session's walsender has not noticed the lost connection yet.
                tracing::info!(pid, "ending this worker's previous walsender");
                catalog_client
                    .execute("SELECT pg_catalog.pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(Error::postgres("end the previous walsender"))?;
                return Err(Error::SlotInUse {
                    slot: config.slot.clone(),
                    pid,
                });
            }
            SlotState::Active(pid) => {
                return Err(Error::SlotInUse {
                    slot: config.slot.clone(),
                    pid,
                });
            }
            SlotState::Free => {}
        }
        ensure_publication(&catalog_client, config).await?;
        check_source_privileges(&catalog_client).await?;
        // The newest full xid, to epoch-extend the stream's (no xid is assigned by asking).
        let newest_xid: i64 = catalog_client
            .query_one(
                "SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint",
                &[],
            )
            .await
            .map_err(Error::postgres("read the server's next transaction id"))?
            .get(0);
        let newest_xid = u64::try_from(newest_xid).unwrap_or_default();

        let mut replication_config = config
            .source
            .replication_config(&config.slot, &config.publication)?;
        replication_config.status_interval = config.status_interval;
        replication_config.idle_wakeup_interval = config.status_interval;
        let mut replication = ReplicationClient::connect_gated(replication_config)
            .await
            .map_err(Error::Replication)?;
        let system = replication
            .identify_system()
            .await
            .map_err(Error::Replication)?;
        let database = config.source.database().to_owned();
        let incarnation = slot_incarnation(&catalog_client, &config.slot).await?;
        // A slot created again (restore, failover, re-setup) may repeat the commit positions
        // of an earlier one: progress and change ids are kept apart per incarnation. Slots
        // created before incarnations were recorded keep the key and ids they had.
        let (source_key, source_id) = match &incarnation {
            Some(incarnation) => (
                format!(
                    "{}/{database}/{}/{incarnation}",
                    system.system_id, config.slot
                ),
                format!("{}/{incarnation}", system.system_id),
            ),
            None => (
                format!("{}/{database}/{}", system.system_id, config.slot),
                system.system_id.clone(),
            ),
        };
        // The table shapes recorded before this session's start position (see `Stream::
        // recorded_shapes`): from the destination's history, or for `capture`, which has no
        // destination, from the source's table of them.
        let mut recorded_shapes: Vec<(u32, RecordedShape)> = Vec::new();
        // Connected before streaming starts: a missing table or privilege fails the session here.
        let (sink, progress) = match &config.output {
            Output::JetStream(nats) => {
                recorded_shapes.extend(load_source_shapes(&catalog_client, &config.slot).await?);
                (Sink::JetStream(Publisher::connect(nats).await?), None)
            }
            Output::Store {
                destination: options,
                changes_table,
            } => {
                let destination = options.connect("bemi-worker").await?;
                check_destination_privileges(&destination, options, changes_table).await?;
                let store = Store::new(destination, changes_table, source_key.clone());
                let progress = store.load_progress().await?;
                recorded_shapes.extend(store.load_recorded_shapes(&database).await?);
                (Sink::Store(store), progress)
            }
        };
        replication.start().await.map_err(Error::Replication)?;
        replication
            .wait_started()
            .await
            .map_err(Error::Replication)?;
        *streamed = true;
        if let SlotState::Active(pid) = slot_state(&catalog_client, &config.slot).await? {
            *own_walsender = Some(pid);
        }
        tracing::info!(
            source = %config.source,
            slot = %config.slot,
            incarnation = incarnation.as_deref().unwrap_or("-"),
            resume_after = ?progress.map(|progress| Lsn::from_u64(progress.commit_lsn)),
            "streaming"
        );

        let (batches, batches_rx) = mpsc::channel::<Batch>(1);
        let (stored_tx, stored_rx) = watch::channel(Stored::default());
        let store_task = tokio::spawn(store_batches(
            sink,
            batches_rx,
            stored_tx,
            Arc::clone(&self.metrics),
        ));
        let mut stream = Stream {
            config,
            metrics: &self.metrics,
            replication,
            catalog: Catalog::new(catalog_client, config.column_policies.clone()),
            relations: HashMap::new(),
            relation_messages: HashMap::new(),
            recorded_shapes: recorded_shapes.into_iter().collect(),
            schema_relation: None,
            xids: XidWidener::new(newest_xid),
            proof_relation: None,
            policy_relation: None,
            proven: false,
            ignored: 0,
            snapshot: None,
            stitcher: Stitcher::new(
                &database,
                source_hash(&source_id, &database),
                config.max_context_bytes,
            ),
            builder: BatchBuilder::new(),
            progress,
            batches,
            stored: stored_rx,
            sent_batches: 0,
        };
        let streamed_result = stream.run(shutdown).await;
        let Stream {
            mut replication,
            catalog,
            batches,
            ..
        } = stream;
        // Let the store task finish the batches already handed over.
        drop(batches);
        let stored_result = match store_task.await {
            Ok(result) => result,
            Err(source) => Err(Error::Internal {
                action: "the store task".into(),
                source,
            }),
        };
        let final_stored = stored_result.as_ref().ok().copied();
        match (streamed_result, stored_result) {
            (Ok(()), Ok(stored)) => {
                // Shutting down: confirm the last stored position before closing the stream.
                if stored.lsn > 0 {
                    replication.update_applied_lsn(Lsn::from_u64(stored.lsn));
                    self.metrics
                        .confirmed_lsn
                        .fetch_max(stored.lsn, Ordering::Relaxed);
                    wait_for_confirmation(
                        catalog.client(),
                        &config.slot,
                        stored.lsn,
                        config.status_interval * 3,
                    )
                    .await;
                }
                let _ = replication.shutdown().await;
                tracing::info!(stored = self.metrics.stored_changes(), "stopped");
                Ok(())
            }
            // A failed store explains a closed channel better than the stream's error.
            (_, Err(store_error)) => Err(store_error),
            (Err(stream_error), Ok(_)) => {
                if let Some(stored) = final_stored.filter(|stored| stored.lsn > 0) {
                    replication.update_applied_lsn(Lsn::from_u64(stored.lsn));
                }
                replication.abort();
                Err(stream_error)
            }
        }
    }
}

/// The newest incarnation of `slot` (see `bemi_core::setup::create_slot_sql`); `None` for a
/// setup that predates incarnations.
pub(crate) async fn slot_incarnation(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<String>> {
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('bemi.slot_incarnations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(Error::postgres("look for bemi.slot_incarnations"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT incarnation::text FROM bemi.slot_incarnations WHERE slot_name = $1 \
             ORDER BY created_at DESC, created_lsn DESC LIMIT 1",
            &[&slot],
        )
        .await
        .map_err(Error::postgres("read the slot's incarnation"))?;
    Ok(row.map(|row| row.get(0)))
}

/// Refuses to start without the publication, which `bemi-worker setup` creates.
async fn ensure_publication(client: &tokio_postgres::Client, config: &WorkerConfig) -> Result<()> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(Error::postgres("read the publication"))?
        .is_some();
    if exists {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "publication {:?} does not exist in {}: run `bemi-worker setup`",
            config.publication, config.source
        )))
    }
}

/// Refuses to start when the worker's role cannot read the stored column policies (it would store
/// values they redact): names the GRANT to run.
/// The table shapes `bemi.schema_versions` recorded before the slot's confirmed position (what
/// the stream will not show again), oldest first: `capture`'s history of shapes at its start.
/// A shape recorded by a transaction still open at that position is taken a little early (it
/// comes again at its commit).
async fn load_source_shapes(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Vec<(u32, RecordedShape)>> {
    let rows = client
        .query(
            "SELECT pg_catalog.row_to_json(v)::text FROM bemi.schema_versions v \
             WHERE v.recorded_lsn <= (SELECT s.confirmed_flush_lsn FROM pg_catalog.pg_replication_slots s \
                                      WHERE s.slot_name = $1) \
             ORDER BY v.id",
            &[&slot],
        )
        .await
        .map_err(Error::postgres(
            "read the recorded table shapes in bemi.schema_versions (the worker's role needs \
             SELECT on it: see `bemi-worker setup --print-sql --worker-role`)",
        ))?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let version: serde_json::Value = serde_json::from_str(row.get(0)).ok()?;
            RecordedShape::from_version(&version)
        })
        .collect())
}

async fn check_source_privileges(client: &tokio_postgres::Client) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_user::text, c.oid IS NOT NULL, \
                    COALESCE(pg_catalog.has_schema_privilege(n.oid, 'USAGE'), false), \
                    pg_catalog.has_table_privilege(c.oid, 'SELECT'), \
                    COALESCE(pg_catalog.has_table_privilege(i.oid, 'SELECT') \
                             AND pg_catalog.has_table_privilege(i.oid, 'INSERT'), true) \
             FROM (SELECT 1) one \
             LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = 'bemi' \
             LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = 'column_policies' \
             LEFT JOIN pg_catalog.pg_class i ON i.relnamespace = n.oid AND i.relname = 'slot_incarnations'",
            &[],
        )
        .await
        .map_err(Error::postgres("check the worker's privileges in the source"))?;
    let role = bemi_core::quote_ident(&row.get::<_, String>(0))?;
    let exists: bool = row.get(1);
    let usage: bool = row.get(2);
    let select: Option<bool> = row.get(3);
    let incarnations: bool = row.get(4);
    if !exists || (usage && select == Some(true) && incarnations) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !usage {
        missing.push(format!("GRANT USAGE ON SCHEMA \"bemi\" TO {role};"));
    }
    if select != Some(true) {
        missing.push(format!("GRANT SELECT ON bemi.column_policies TO {role};"));
    }
    if !incarnations {
        missing.push(format!(
            "GRANT SELECT, INSERT ON bemi.slot_incarnations TO {role};"
        ));
    }
    Err(Error::Config(format!(
        "the worker's role lacks privileges on bemi's tables in the source (the column policies say which columns to redact or drop; the slot incarnations keep progress apart across restores); run: {}",
        missing.join(" ")
    )))
}

/// Refuses to start when the `changes` or progress table is missing, or the worker's role
/// cannot write them (naming the GRANT to run).
pub(crate) async fn check_destination_privileges(
    client: &tokio_postgres::Client,
    destination: &ConnectionOptions,
    changes_table: &QualifiedName,
) -> Result<()> {
    let changes = changes_table.to_string();
    let schema_usage = |schema: &str| {
        format!(
            "(SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE') FROM pg_catalog.pg_namespace n \
             WHERE n.nspname = {})",
            bemi_core::quote_literal(schema)
        )
    };
    let row = client
        .query_one(
            &format!(
                "SELECT current_user::text, {}, {}",
                schema_usage(bemi_core::setup::BEMI_SCHEMA),
                schema_usage(changes_table.schema())
            ),
            &[],
        )
        .await
        .map_err(Error::postgres(
            "check the worker's privileges in the destination",
        ))?;
    let role = bemi_core::quote_ident(&row.get::<_, String>(0))?;
    let setup_needed = || {
        Error::Config(format!(
            "{changes} or one of bemi's tables (worker_progress, rejected, schema_history) does not exist in {destination}: run `bemi-worker setup`"
        ))
    };
    let mut missing = Vec::new();
    for (column, schema) in [
        (1, bemi_core::setup::BEMI_SCHEMA),
        (2, changes_table.schema()),
    ] {
        match row.get::<_, Option<bool>>(column) {
            None => return Err(setup_needed()),
            Some(false) => missing.push(format!(
                "GRANT USAGE ON SCHEMA {} TO {role};",
                bemi_core::quote_ident(schema)?
            )),
            Some(true) => {}
        }
    }
    missing.dedup();
    if missing.is_empty() {
        let row = client
            .query_one(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL \
                 AND pg_catalog.to_regclass('bemi.worker_progress') IS NOT NULL \
                 AND pg_catalog.to_regclass('bemi.rejected') IS NOT NULL \
                 AND pg_catalog.to_regclass('bemi.schema_history') IS NOT NULL",
                &[&changes],
            )
            .await
            .map_err(Error::postgres("look for the changes table"))?;
        if !row.get::<_, bool>(0) {
            return Err(setup_needed());
        }
        let row = client
            .query_one(
                "SELECT pg_catalog.has_table_privilege($1, 'INSERT') AND pg_catalog.has_table_privilege($1, 'SELECT'), \
                 pg_catalog.has_table_privilege('bemi.worker_progress', 'INSERT') \
                 AND pg_catalog.has_table_privilege('bemi.worker_progress', 'SELECT') \
                 AND pg_catalog.has_table_privilege('bemi.worker_progress', 'UPDATE'), \
                 pg_catalog.has_table_privilege('bemi.rejected', 'INSERT'), \
                 pg_catalog.has_table_privilege('bemi.schema_history', 'INSERT') \
                 AND pg_catalog.has_table_privilege('bemi.schema_history', 'SELECT')",
                &[&changes],
            )
            .await
            .map_err(Error::postgres("check the worker's privileges on the changes table"))?;
        if !row.get::<_, bool>(0) {
            missing.push(format!("GRANT SELECT, INSERT ON {changes} TO {role};"));
        }
        if !row.get::<_, bool>(1) {
            missing.push(format!(
                "GRANT SELECT, INSERT, UPDATE ON bemi.worker_progress TO {role};"
            ));
        }
        if !row.get::<_, bool>(2) {
            missing.push(format!("GRANT SELECT, INSERT ON bemi.rejected TO {role};"));
        }
        if !row.get::<_, bool>(3) {
            missing.push(format!(
                "GRANT SELECT, INSERT ON bemi.schema_history TO {role};"
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "the worker's role cannot store changes in {destination}: run {}",
            missing.join(" ")
        )))
    }
}

/// Waits until the slot's confirmed position reaches `lsn`, or `timeout` passes (the stored
/// progress makes a re-delivery harmless either way).
async fn wait_for_confirmation(
    client: &tokio_postgres::Client,
    slot: &str,
    lsn: u64,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let target = Lsn::from_u64(lsn).to_string();
    loop {
        let confirmed = client
            .query_opt(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot, &target],
            )
            .await;
        match confirmed {
            Ok(Some(row)) if row.get::<_, Option<bool>>(0) == Some(true) => return,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            _ => {
                tracing::warn!(lsn = %target, "the server did not confirm the last position in time: it will be re-delivered and skipped");
                return;
            }
        }
    }
}

/// The store task: writes batches in order and reports what is stored.
async fn store_batches(
    mut sink: Sink,
    mut batches: mpsc::Receiver<Batch>,
    stored_tx: watch::Sender<Stored>,
    metrics: Arc<Metrics>,
) -> Result<Stored> {
    let mut stored = Stored::default();
    while let Some(batch) = batches.recv().await {
        if !batch.rows.is_empty() || batch.progress.is_some() {
            let started = Instant::now();
            sink.write(&batch.rows, batch.progress).await?;
            tracing::debug!(rows = batch.rows.len(), elapsed = ?started.elapsed(), "stored a batch");
        }
        // Changes stored in `changes`: not parked ones, not recorded table shapes.
        let stored_changes = batch
            .rows
            .iter()
            .filter(|row| row.rejected.is_none() && !is_schema_version(row))
            .count();
        metrics
            .stored_changes
            .fetch_add(stored_changes as u64, Ordering::Relaxed);
        stored.batches += 1;
        if let Some(lsn) = batch.ack {
            stored.lsn = stored.lsn.max(lsn);
            stored.committed_at_micros = batch.ack_committed_at_micros;
        }
        stored_tx.send_replace(stored);
    }
    Ok(stored)
}

/// The reading side of a session.
struct Stream<'a> {
    config: &'a WorkerConfig,
    metrics: &'a Metrics,
    replication: ReplicationClient,
    catalog: Catalog,
    relations: HashMap<u32, Arc<RelationInfo>>,
    /// The Relation messages received, to describe the relations again when the policies
    /// change.
    relation_messages: HashMap<u32, pgoutput::Relation>,
    /// Epoch-extends the stream's 32-bit transaction ids.
    xids: XidWidener,
    /// The shape (key columns, value kinds) of each tracked relation as last recorded in the
    /// stream (`bemi.schema_versions`): as of the position being read, not as of now.
    recorded_shapes: HashMap<u32, RecordedShape>,
    /// The OID of `bemi.schema_versions`, once its Relation message arrived.
    schema_relation: Option<u32>,
    /// The OID of `bemi.message_proofs`, once its Relation message arrived.
    proof_relation: Option<u32>,
    /// The OID of `bemi.column_policies`, once its Relation message arrived.
    policy_relation: Option<u32>,
    /// Whether the current transaction inserted into `bemi.message_proofs`, which only bemi's
    /// own commands can do: only then are its snapshot messages trusted.
    proven: bool,
    /// Messages under bemi's prefixes ignored since the last commit (logged at the commit).
    ignored: u64,
    /// The table whose snapshot rows are arriving, in the current transaction, and what they
    /// are stored as (SNAPSHOT, or CREATE for the rows of a `CREATE TABLE AS`).
    snapshot: Option<(Arc<RelationInfo>, bemi_core::Operation)>,
    stitcher: Stitcher,
    builder: BatchBuilder,
    progress: Option<Progress>,
    batches: mpsc::Sender<Batch>,
    stored: watch::Receiver<Stored>,
    sent_batches: u64,
}

impl Stream<'_> {
    async fn run<F: Future<Output = ()>>(&mut self, mut shutdown: Pin<&mut F>) -> Result<()> {
        let mut log_tick = tokio::time::interval(self.config.log_interval);
        log_tick.tick().await;
        let mut logged = (Instant::now(), self.metrics.stored_changes());
        loop {
            let flush_at = self
                .builder
                .started()
                .map(|started| started + self.config.flush_interval);
            tokio::select! {
                biased;
                () = shutdown.as_mut() => {
                    self.flush().await?;
                    return Ok(());
                }
                changed = self.stored.changed() => {
                    if changed.is_err() {
                        return Err(Error::StoreGone);
                    }
                    let stored = *self.stored.borrow_and_update();
                    if stored.lsn > 0 {
                        self.replication.update_applied_lsn(Lsn::from_u64(stored.lsn));
                        self.metrics.confirmed_lsn.fetch_max(stored.lsn, Ordering::Relaxed);
                    }
                }
                () = sleep_until(flush_at) => self.flush().await?,
                _ = log_tick.tick() => {
                    let stored = self.metrics.stored_changes();
                    let rate = (stored - logged.1) as f64 / logged.0.elapsed().as_secs_f64().max(0.001);
                    let lag = self.stored.borrow().committed_at_micros.map(|micros| {
                        (chrono::Utc::now() - postgres_time(micros)).num_milliseconds() as f64 / 1000.0
                    });
                    tracing::info!(stored, changes_per_second = rate.round(), lag_seconds = ?lag, "progress");
                    logged = (Instant::now(), stored);
                }
                event = self.replication.recv() => {
                    match event.map_err(Error::Replication)? {
                        Some(event) => self.handle(event).await?,
                        None => return Err(Error::Replication(pgwire_replication::PgWireError::Task(
                            "the replication stream ended".into(),
                        ))),
                    }
                }
            }
        }
    }

    async fn handle(&mut self, event: ReplicationEvent) -> Result<()> {
        // The event's kind and position only: its data holds row values, which policies may
        // redact and which no log may hold.
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(event = event_summary(&event), "replication event");
        }
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.snapshot = None;
                self.proven = false;
                self.stitcher
                    .begin(self.xids.widen(xid), final_lsn.as_u64(), commit_time_micros);
                self.builder.begin(commit_time_micros);
            }
            ReplicationEvent::Message {
                transactional,
                prefix,
                content,
                lsn,
            } => {
                self.push_pending();
                if prefix == bemi_core::setup::MESSAGE_PREFIX && transactional {
                    // A context: a claim of the writer, whoever it is.
                    self.stitcher.message(transactional, &prefix, &content);
                } else if !prefix.starts_with(bemi_core::setup::MESSAGE_PREFIX) {
                    // Another application's messages.
                } else if !transactional || !self.proven {
                    // Costs a comparison: a flood of forged messages cannot stall the trail.
                    self.ignore_message();
                } else if prefix == bemi_core::setup::SNAPSHOT_PREFIX {
                    self.start_snapshot(&content).await?;
                } else if prefix == bemi_core::setup::SNAPSHOT_ROW_PREFIX {
                    self.snapshot_row(&content, lsn.as_u64()).await?;
                } else {
                    self.ignore_message();
                }
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                let mut message = match pgoutput::decode(&data) {
                    Ok(message) => message,
                    Err(error) => {
                        return self
                            .park_unrenderable(&data, wal_start.as_u64(), &error.to_string())
                            .await;
                    }
                };
                if self.is_proof(&mut message) {
                    return Ok(());
                }
                match &message {
                    Message::Relation(relation) => {
                        if relation.namespace == bemi_core::setup::BEMI_SCHEMA
                            && relation.name == "column_policies"
                        {
                            self.policy_relation = Some(relation.id);
                        }
                        if relation.namespace == bemi_core::setup::BEMI_SCHEMA
                            && relation.name == "schema_versions"
                        {
                            self.schema_relation = Some(relation.id);
                        }
                        let info = self.describe(relation).await?;
                        self.relations.insert(relation.id, Arc::new(info));
                        self.relation_messages.insert(relation.id, relation.clone());
                    }
                    Message::Insert { .. }
                    | Message::Update { .. }
                    | Message::Delete { .. }
                    | Message::Truncate { .. } => {
                        let policies_changed =
                            self.policy_relation.is_some_and(|policies| match &message {
                                Message::Insert { relation_id, .. }
                                | Message::Update { relation_id, .. }
                                | Message::Delete { relation_id, .. } => *relation_id == policies,
                                Message::Truncate { relation_ids, .. } => {
                                    relation_ids.contains(&policies)
                                }
                                _ => false,
                            });
                        let progress = self.progress;
                        let mut rows = match self.stitcher.change(
                            &message,
                            wal_start.as_u64(),
                            &self.relations,
                            |position| !progress.is_some_and(|progress| progress.covers(position)),
                        ) {
                            Ok(rows) => rows,
                            // A change of a relation never described (its Relation message
                            // was unreadable): parked, like the message itself.
                            Err(Error::Protocol(reason)) if self.stitcher.in_transaction() => {
                                return self
                                    .park_unrenderable(&data, wal_start.as_u64(), &reason)
                                    .await;
                            }
                            Err(error) => return Err(error),
                        };
                        if let Some(schemas) = self.schema_relation
                            && matches!(&message, Message::Insert { relation_id, .. } if *relation_id == schemas)
                        {
                            // The DDL change takes the next number, whether this delivery
                            // builds it or it was stored before a restart.
                            let derived = self.stitcher.next_derived(|position| {
                                !progress.is_some_and(|progress| progress.covers(position))
                            });
                            let events = self.record_schema_versions(&rows);
                            if let Some((id, sequence)) = derived {
                                rows.extend(events.into_iter().map(|mut event| {
                                    event.id = id;
                                    event.sequence = sequence;
                                    event
                                }));
                            }
                        }
                        self.builder.push(rows);
                        if policies_changed {
                            self.reload_policies().await?;
                        }
                        if self
                            .builder
                            .is_full(self.config.batch_size, self.config.batch_bytes)
                        {
                            self.flush().await?;
                        }
                    }
                    Message::Type { .. } | Message::Origin { .. } | Message::Other { .. } => {}
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.push_pending();
                if self.ignored > 0 {
                    tracing::warn!(
                        xid = ?self.stitcher.xid(),
                        ignored = self.ignored,
                        "ignored logical messages under bemi's prefixes from a transaction that \
                         does not prove it comes from bemi (forged snapshot or unknown messages)"
                    );
                    self.ignored = 0;
                }
                let commit_lsn = self.stitcher.commit_lsn().unwrap_or_default();
                let changes = self.stitcher.commit();
                self.builder.commit(commit_lsn, changes, end_lsn.as_u64());
                if self
                    .builder
                    .is_full(self.config.batch_size, self.config.batch_bytes)
                {
                    self.flush().await?;
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // Nothing received is unstored: everything up to the server's position is done
                // (transactions touching no tracked table send nothing), so confirm it and let
                // the server recycle that WAL.
                let idle = !self.stitcher.in_transaction()
                    && self.builder.is_empty()
                    && self.stored.borrow().batches == self.sent_batches;
                if idle && wal_end.as_u64() > 0 {
                    self.replication.update_applied_lsn(wal_end);
                    self.metrics
                        .confirmed_lsn
                        .fetch_max(wal_end.as_u64(), Ordering::Relaxed);
                }
            }
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    /// Describes every known relation again with the stored column policies as they are now:
    /// the stream just showed `bemi.column_policies` change, so the changes after this one (in
    /// this transaction too) are rendered with the new policies, and none in plaintext.
    async fn reload_policies(&mut self) -> Result<()> {
        self.catalog.forget_policies();
        let relations: Vec<pgoutput::Relation> = self.relation_messages.values().cloned().collect();
        for relation in relations {
            let info = self.describe(&relation).await?;
            self.relations.insert(relation.id, Arc::new(info));
        }
        tracing::info!(
            relations = self.relation_messages.len(),
            "the column policies changed: applied from this change on"
        );
        Ok(())
    }

    /// Parks a replication message that cannot be rendered in `bemi.rejected` (with its raw
    /// bytes, position and transaction): bad data never stops capture, and is never dropped.
    async fn park_unrenderable(&mut self, data: &[u8], position: u64, reason: &str) -> Result<()> {
        self.push_pending();
        tracing::error!(
            position = %Lsn::from_u64(position),
            xid = ?self.stitcher.xid(),
            reason,
            "a replication message cannot be rendered: parked in bemi.rejected"
        );
        let progress = self.progress;
        let row = self.stitcher.unrenderable(data, position, reason, |here| {
            !progress.is_some_and(|progress| progress.covers(here))
        })?;
        if let Some(row) = row {
            self.builder.push(vec![row]);
            if self
                .builder
                .is_full(self.config.batch_size, self.config.batch_bytes)
            {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Hands a DELETE the stitcher held (see `Stitcher::change`) to the batch, before anything
    /// that follows it.
    fn push_pending(&mut self) {
        if let Some(row) = self.stitcher.take_pending() {
            self.builder.push(vec![row]);
        }
    }

    /// Describes a relation from its Relation message (names and types as of its position), the
    /// catalog (types, policies, partitions), and the key recorded for it in the stream, which
    /// holds as of this position where the catalog may have moved on (a renamed key column, a
    /// dropped table).
    async fn describe(&mut self, relation: &pgoutput::Relation) -> Result<RelationInfo> {
        let mut info = self.catalog.describe(relation, self.stitcher.xid()).await?;
        if let Some(shape) = self.recorded_shapes.get(&relation.id) {
            info.apply_recorded_shape(shape, relation);
        }
        Ok(info)
    }

    /// Takes the table shapes the stream just recorded (rows inserted into
    /// `bemi.schema_versions`, which only bemi's setup and its superuser-owned event triggers
    /// write): the keys they name hold from here on.
    /// Returns the DDL changes of the versions DDL recorded (see `stitch::ddl`).
    fn record_schema_versions(
        &mut self,
        rows: &[crate::change_row::ChangeRow],
    ) -> Vec<crate::change_row::ChangeRow> {
        let mut events = Vec::new();
        for row in rows {
            let Ok(after) = serde_json::from_str::<serde_json::Value>(&row.after) else {
                continue;
            };
            let previous = relid_of(&after).and_then(|relid| self.recorded_shapes.get(&relid));
            events.extend(crate::stitch::ddl::ddl_change(row, &after, previous));
            // A drop records nothing: changes before it keep the last shape recorded.
            if let Some((relid, shape)) = RecordedShape::from_version(&after) {
                self.recorded_shapes.insert(relid, shape);
            }
        }
        events
    }

    /// Counts a message under bemi's prefixes that is not trusted (logged once, at the next
    /// commit).
    fn ignore_message(&mut self) {
        self.ignored += 1;
        self.metrics
            .ignored_messages
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Handles what concerns `bemi.message_proofs` (its Relation message, an insert proving the
    /// transaction), which is never stored as a change; returns whether `message` was consumed.
    fn is_proof(&mut self, message: &mut Message<'_>) -> bool {
        match message {
            Message::Relation(relation) => {
                let is_proof = relation.namespace == bemi_core::setup::BEMI_SCHEMA
                    && relation.name == bemi_core::setup::PROOF_TABLE;
                if is_proof {
                    self.proof_relation = Some(relation.id);
                }
                is_proof
            }
            Message::Insert { relation_id, .. } if Some(*relation_id) == self.proof_relation => {
                self.proven = true;
                true
            }
            Message::Update { relation_id, .. } | Message::Delete { relation_id, .. } => {
                Some(*relation_id) == self.proof_relation
            }
            Message::Truncate { relation_ids, .. } => {
                relation_ids.retain(|id| Some(*id) != self.proof_relation);
                relation_ids.is_empty()
            }
            _ => false,
        }
    }

    /// Starts a table's snapshot: describes the table as the snapshot's transaction saw it.
    /// A malformed header is logged and its rows skipped (bad data never stops the stream).
    async fn start_snapshot(&mut self, content: &[u8]) -> Result<()> {
        self.snapshot = match SnapshotHeader::parse(content) {
            Ok(header) => match self
                .catalog
                .describe(&header.relation(), self.stitcher.xid())
                .await
            {
                Ok(info) => Some((Arc::new(info), header.operation())),
                Err(error) if error.is_bad_data() => {
                    let error = crate::error_chain(&error);
                    tracing::warn!(%error, "snapshot header the catalog cannot describe: its rows are skipped");
                    None
                }
                Err(error) => return Err(error),
            },
            Err(error) => {
                tracing::warn!(%error, "malformed snapshot header: its rows are skipped");
                None
            }
        };
        Ok(())
    }

    /// Stores one snapshotted row as a SNAPSHOT change.
    async fn snapshot_row(&mut self, content: &[u8], position: u64) -> Result<()> {
        let Some((info, operation)) = self.snapshot.clone() else {
            tracing::warn!("snapshot row without a valid header: skipped");
            return Ok(());
        };
        let values = match parse_row(content) {
            Ok(values) => values,
            Err(error) => {
                tracing::warn!(%error, table = %info.table, "malformed snapshot row: skipped");
                return Ok(());
            }
        };
        let progress = self.progress;
        let row =
            match self
                .stitcher
                .snapshot_row(&info, &values, position, operation, |position| {
                    !progress.is_some_and(|progress| progress.covers(position))
                }) {
                Ok(row) => row,
                Err(error) => {
                    tracing::warn!(%error, "snapshot row skipped");
                    return Ok(());
                }
            };
        if let Some(row) = row {
            self.builder.push(vec![row]);
            if self
                .builder
                .is_full(self.config.batch_size, self.config.batch_bytes)
            {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Hands the batch collected so far to the store task.
    async fn flush(&mut self) -> Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let batch = self.builder.take();
        self.batches
            .send(batch)
            .await
            .map_err(|_| Error::StoreGone)?;
        self.sent_batches += 1;
        Ok(())
    }
}

/// A replication event without its data: kind, position and size.
fn event_summary(event: &ReplicationEvent) -> String {
    match event {
        ReplicationEvent::Begin { final_lsn, xid, .. } => {
            format!("begin xid {xid} commit {final_lsn}")
        }
        ReplicationEvent::Message {
            transactional,
            prefix,
            content,
            lsn,
        } => format!(
            "message {prefix:?} at {lsn} ({} bytes, transactional: {transactional})",
            content.len()
        ),
        ReplicationEvent::XLogData {
            wal_start, data, ..
        } => format!(
            "{} at {wal_start} ({} bytes)",
            data.first().map_or('?', |tag| char::from(*tag)),
            data.len()
        ),
        ReplicationEvent::Commit { end_lsn, .. } => format!("commit, next {end_lsn}"),
        ReplicationEvent::KeepAlive { wal_end, .. } => format!("keepalive at {wal_end}"),
        ReplicationEvent::StoppedAt { .. } => "stopped".to_owned(),
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
