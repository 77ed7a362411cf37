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
mod config;
mod metrics;
pub(crate) mod progress;
mod stream;

pub use config::{Output, WorkerConfig};
pub use metrics::Metrics;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgwire_replication::{Lsn, ReplicationClient};
use tokio::sync::{mpsc, watch};

use crate::admin::install::{SlotState, server_facts, slot_state};
use crate::change_row::source_hash;
use crate::pipeline::backoff::Backoff;
use crate::pipeline::batch::{Batch, BatchBuilder};
use crate::sink::Sink;
use crate::sink::jetstream::Publisher;
use crate::sink::preflight::check_destination_privileges;
use crate::sink::store::{Store, is_schema_version};
use crate::source::catalog::Catalog;
use crate::source::preflight::{
    check_source_privileges, ensure_publication, load_source_shapes, slot_incarnation,
};
use crate::source::recorded_shape::RecordedShape;
use crate::source::xid::XidWidener;
use crate::stitch::Stitcher;
use crate::{Error, Result};
use stream::Stream;

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
pub(crate) struct Stored {
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
