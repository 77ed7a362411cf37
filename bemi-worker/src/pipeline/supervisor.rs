//! [`Supervisor`]: runs a worker's replication sessions one after another. It owns what one
//! session leaves the next (the walsender it started, whether it streamed, the backoff), and a
//! session is three steps: [`Supervisor::prepare`] (checks, slot, sink, progress, replication
//! started), [`Supervisor::stream`] (the store task and the stream state machine) and
//! [`Supervisor::finish`] (let the store task drain, confirm what is stored).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwire_replication::{Lsn, ReplicationClient};
use tracing::Instrument as _;

use crate::admin::install::{SlotState, server_facts, slot_state};
use crate::pipeline::backoff::Backoff;
use crate::pipeline::stream::{Stream, StreamStart};
use crate::pipeline::{Metrics, OnSlotLost, Output, Stored, WorkerConfig};
use crate::seal::written::Written;
use crate::sink::Sink;
use crate::sink::jetstream::Publisher;
use crate::sink::preflight::check_destination_privileges;
use crate::sink::store::Store;
use crate::source::catalog::Catalog;
use crate::source::preflight::{
    check_source_privileges, ensure_publication, load_source_shapes, slot_incarnation,
};
use crate::source::recorded_shape::RecordedShape;
use crate::{Error, Result};

/// Runs sessions until shutdown or an error retrying cannot fix.
pub(crate) struct Supervisor<'w> {
    config: &'w WorkerConfig,
    metrics: &'w Arc<Metrics>,
    /// The walsender the last session started: if it lingers after a lost connection, the next
    /// session ends it rather than waiting for PostgreSQL to notice.
    own_walsender: Option<i32>,
    /// Since when the slot has been held by another walsender, while waiting for its release.
    slot_wait_started: Option<Instant>,
    backoff: Backoff,
    attempt: u32,
}

/// What a session prepared before streaming.
struct Prepared {
    catalog_client: tokio_postgres::Client,
    replication: ReplicationClient,
    /// One sink per writer.
    sinks: Vec<Sink>,
    start: StreamStart,
    /// The transactions the writers store changes in, for the sealer (when it seals).
    written: Option<Arc<Written>>,
}

/// How a session's stream ended.
struct Streamed<'a> {
    stream: Stream<'a, ReplicationClient, Catalog>,
    result: Result<()>,
    store_task: tokio::task::JoinHandle<Result<Stored>>,
}

impl<'w> Supervisor<'w> {
    pub(crate) fn new(config: &'w WorkerConfig, metrics: &'w Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            own_walsender: None,
            slot_wait_started: None,
            backoff: Backoff::new(config.max_backoff),
            attempt: 0,
        }
    }

    /// Runs sessions until `shutdown` completes (then `Ok`) or one ends with an error that
    /// retrying cannot fix.
    pub(crate) async fn run<F: Future<Output = ()>>(
        mut self,
        mut shutdown: Pin<&mut F>,
    ) -> Result<()> {
        loop {
            self.metrics.session_started();
            // Each line of a stage says so (`stage` in the log's spans).
            let prepare = tracing::info_span!("stage", stage = "prepare");
            let (streamed, outcome) = match self.prepare().instrument(prepare).await {
                Ok(prepared) => {
                    let stream = tracing::info_span!("stage", stage = "stream");
                    (
                        true,
                        self.stream(prepared, shutdown.as_mut())
                            .instrument(stream)
                            .await,
                    )
                }
                Err(error) => (false, Err(error)),
            };
            let error = match outcome {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            self.metrics.session_failed(error.kind());
            if !self.should_retry(&error, streamed) {
                return Err(error);
            }
            self.attempt += 1;
            let error = crate::error_chain(&error);
            tracing::warn!(%error, attempt = self.attempt, retry_in = ?self.backoff.delay(), "replication session ended: reconnecting");
            if !self.backoff.wait(shutdown.as_mut()).await {
                return Ok(());
            }
        }
    }

    /// Whether to start another session after `error`; a session that streamed resets the
    /// backoff.
    fn should_retry(&mut self, error: &Error, streamed: bool) -> bool {
        if streamed {
            self.slot_wait_started = None;
        }
        // A slot held by another walsender may be our previous session's (ended by now) or a
        // crashed worker's, lingering until PostgreSQL notices the lost connection: wait for
        // its release, for a while, before taking it for another consumer's.
        let retry = error.is_retryable()
            || match error {
                Error::SlotInUse { pid, .. } => {
                    let waiting = *self.slot_wait_started.get_or_insert_with(Instant::now);
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
        if retry && streamed {
            self.backoff.reset();
            self.attempt = 0;
        }
        retry
    }

    /// Checks the source, takes the slot, connects the sink, reads the stored progress and the
    /// recorded table shapes, and starts replication.
    async fn prepare(&mut self) -> Result<Prepared> {
        let config = self.config;
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
            SlotState::Active(pid) if Some(pid) == self.own_walsender => {
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
            SlotState::Lost {
                confirmed_flush_lsn,
            } => {
                self.metrics.slot.lost.set(1);
                match config.on_slot_lost {
                    OnSlotLost::Stop => {
                        return Err(Error::SlotLost {
                            slot: config.slot.clone(),
                            lost_after: confirmed_flush_lsn,
                        });
                    }
                    OnSlotLost::Recreate => {
                        ensure_publication(&catalog_client, config).await?;
                        crate::source::lost_slot::recreate(
                            &catalog_client,
                            config,
                            confirmed_flush_lsn.as_deref(),
                        )
                        .await?;
                        self.metrics.slot.lost.set(0);
                    }
                }
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
        let (sinks, progress, written) = match &config.output {
            Output::JetStream(nats) => {
                recorded_shapes.extend(load_source_shapes(&catalog_client, &config.slot).await?);
                (
                    vec![Sink::JetStream(Publisher::connect(nats).await?)],
                    None,
                    None,
                )
            }
            Output::Store {
                destination: options,
                changes_table,
            } => {
                let destination = options.connect("bemi-worker").await?;
                check_destination_privileges(&destination, options, changes_table).await?;
                let mut store = Store::new(destination, changes_table, source_key.clone());
                let progress = store.load_progress().await?;
                recorded_shapes.extend(store.load_recorded_shapes(&database).await?);
                // The sealer seals the row versions this session's transactions write; what was
                // stored before it (up to its progress) is sealed as found.
                let written = match config.seal_interval {
                    Some(_) => Some(Arc::new(Written::new(match progress {
                        Some(progress) => crate::change_row::change_id(
                            0,
                            progress.commit_lsn.saturating_add(1),
                            0,
                        ),
                        None => store.id_above_stored(&database).await?,
                    }))),
                    None => None,
                };
                if let Some(written) = &written {
                    store.record_written_in(Arc::clone(written));
                }
                let mut sinks = vec![Sink::Store(store)];
                for _ in 1..config.writers {
                    let destination = options.connect("bemi-worker").await?;
                    let mut store = Store::new(destination, changes_table, source_key.clone());
                    if let Some(written) = &written {
                        store.record_written_in(Arc::clone(written));
                    }
                    sinks.push(Sink::Store(store));
                }
                (sinks, progress, written)
            }
        };
        replication.start().await.map_err(Error::Replication)?;
        replication
            .wait_started()
            .await
            .map_err(Error::Replication)?;
        tracing::info!(
            source = %config.source,
            slot = %config.slot,
            incarnation = incarnation.as_deref().unwrap_or("-"),
            resume_after = ?progress.map(|progress| Lsn::from_u64(progress.commit_lsn)),
            "streaming"
        );
        Ok(Prepared {
            catalog_client,
            replication,
            sinks,
            written,
            start: StreamStart {
                progress,
                recorded_shapes: recorded_shapes.into_iter().collect(),
                newest_xid,
                database,
                source_id,
            },
        })
    }

    /// Streams until `shutdown` or an error: the store task writes batches while the stream
    /// state machine reads; then [`Supervisor::finish`].
    async fn stream<F: Future<Output = ()>>(
        &mut self,
        prepared: Prepared,
        shutdown: Pin<&mut F>,
    ) -> Result<()> {
        let config = self.config;
        if let SlotState::Active(pid) = slot_state(&prepared.catalog_client, &config.slot).await? {
            self.own_walsender = Some(pid);
        }
        let database = prepared.start.database.clone();
        let written = prepared.written.clone();
        let (mut stream, store_task) = Stream::start(
            config,
            self.metrics,
            prepared.replication,
            Catalog::new(prepared.catalog_client, config.column_policies.clone()),
            prepared.sinks,
            prepared.start,
        );
        // The sealer follows what the store task stores, on its own connection.
        let sealer = match (&config.output, config.seal_interval) {
            (
                Output::Store {
                    destination,
                    changes_table,
                },
                Some(interval),
            ) => Some(tokio::spawn(
                crate::seal::sealer::run(
                    destination.clone(),
                    bemi_core::setup::stored_changes_table(changes_table).to_string(),
                    database,
                    stream.stored_receiver(),
                    interval,
                    crate::seal::sealer::Anchors::new(
                        config.anchor_file.clone(),
                        config.anchor_nats.clone(),
                    ),
                    written,
                )
                .instrument(tracing::info_span!("stage", stage = "seal")),
            )),
            _ => None,
        };
        self.metrics.set_streaming(true);
        let result = stream.run(shutdown).await;
        if let Some(sealer) = sealer {
            sealer.abort();
        }
        self.metrics.set_streaming(false);
        self.finish(Streamed {
            stream,
            result,
            store_task,
        })
        .await
    }

    /// Lets the store task finish the batches already handed over, then confirms the last
    /// stored position: on shutdown, waiting for the server to take it; after an error, as the
    /// replication connection is dropped.
    async fn finish(&self, streamed: Streamed<'_>) -> Result<()> {
        let Streamed {
            stream,
            result: streamed_result,
            store_task,
        } = streamed;
        let Stream {
            mut replication,
            catalog,
            batches,
            ..
        } = stream;
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
                    self.metrics.confirmed(stored.lsn);
                    wait_for_confirmation(
                        catalog.client(),
                        &self.config.slot,
                        stored.lsn,
                        self.config.status_interval * 3,
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
