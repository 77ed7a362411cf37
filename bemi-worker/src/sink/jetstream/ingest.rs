//! `ingest`: stores the changes `capture` published to NATS JetStream. Any number of ingest
//! processes share one durable pull consumer; each stores batches idempotently (the change id
//! is the `changes` table's primary key, so a redelivered change is skipped) and acknowledges a
//! message only after its batch committed. When the destination fails, the batch's messages are
//! negatively acknowledged with a delay and the process reconnects with backoff; messages wait in
//! the stream meanwhile.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use bemi_core::QualifiedName;
use futures_util::StreamExt;
use tracing::Instrument as _;

use crate::pipeline::Metrics;
use crate::pipeline::backoff::Backoff;
use crate::pipeline::turn::Turn;
use crate::sink::jetstream::sealer::Databases;
use crate::sink::jetstream::{NatsOptions, nats_error};
use crate::sink::preflight::check_destination_privileges;
use crate::sink::store::Store;
use crate::{ConnectionOptions, Error, Result};

/// How long a message that is not a bemi change waits before it is offered again (it is never
/// dropped: an operator can inspect and remove it).
const UNREADABLE_REDELIVERY: Duration = Duration::from_secs(300);

/// What an ingest process reads and where it stores.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct IngestConfig {
    /// The stream and consumer to read.
    pub nats: NatsOptions,
    /// The database holding the `changes` table.
    pub destination: ConnectionOptions,
    /// The `changes` table (default `bemi.changes`).
    pub changes_table: QualifiedName,
    /// Changes per stored batch (default 5,000).
    pub batch_size: usize,
    /// Longest time a received change waits before its batch is stored (default 100 ms).
    pub flush_interval: Duration,
    /// How often progress is logged at info level (default 10 s).
    pub log_interval: Duration,
    /// The longest wait between reconnection attempts (default 30 s).
    pub max_backoff: Duration,
    /// How often what the ingest processes stored is sealed (default 5 s; `None`: never). See
    /// `crate::seal`; any of the processes may seal, one at a time.
    pub seal_interval: Option<Duration>,
    /// An append-only file each seal's hash is added to (see `WorkerConfig::anchor_file`).
    pub anchor_file: Option<std::path::PathBuf>,
    /// A JetStream stream each seal's hash is published to (see `WorkerConfig::anchor_nats`).
    pub anchor_nats: Option<NatsOptions>,
}

impl IngestConfig {
    /// Defaults for reading from `nats` and storing into `destination`.
    pub fn new(nats: NatsOptions, destination: ConnectionOptions) -> Self {
        Self {
            nats,
            destination,
            changes_table: bemi_core::setup::SetupOptions::default()
                .changes_table_name()
                .clone(),
            batch_size: 5_000,
            flush_interval: Duration::from_millis(100),
            log_interval: Duration::from_secs(10),
            max_backoff: Duration::from_secs(30),
            seal_interval: Some(Duration::from_secs(5)),
            anchor_file: None,
            anchor_nats: None,
        }
    }
}

/// An ingest process: reads batches from the shared JetStream consumer and stores them.
#[derive(Debug)]
pub struct Ingest {
    config: IngestConfig,
    metrics: Arc<Metrics>,
    /// The source databases this process stored changes of (for the sealer).
    databases: Databases,
}

impl Ingest {
    /// An ingest process with `config`.
    pub fn new(config: IngestConfig) -> Self {
        Self {
            config,
            metrics: Arc::default(),
            databases: Databases::default(),
        }
    }

    /// The process's counters (stored changes include redelivered ones already stored).
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Stores until `shutdown` completes (the batch being collected is stored and
    /// acknowledged first), reconnecting with backoff when NATS or the destination fails.
    ///
    /// # Errors
    ///
    /// Errors that retrying cannot fix: bad credentials, a missing `changes` table or
    /// privileges.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Backoff::new(self.config.max_backoff);
        loop {
            self.metrics.session_started();
            let mut stored_any = false;
            let error = match self
                .session(shutdown.as_mut(), &mut stored_any)
                .instrument(tracing::info_span!("stage", stage = "ingest"))
                .await
            {
                Ok(()) => return Ok(()),
                Err(error) => {
                    self.metrics.session_failed(error.kind());
                    if !error.is_retryable() {
                        return Err(error);
                    }
                    error
                }
            };
            if stored_any {
                backoff.reset();
            }
            let error = crate::error_chain(&error);
            tracing::warn!(%error, retry_in = ?backoff.delay(), "ingest session ended: reconnecting");
            if !backoff.wait(shutdown.as_mut()).await {
                return Ok(());
            }
        }
    }

    async fn session<F: Future<Output = ()>>(
        &self,
        mut shutdown: Pin<&mut F>,
        stored_any: &mut bool,
    ) -> Result<()> {
        let config = &self.config;
        let client = crate::sink::jetstream::connect(&config.nats).await?;
        let context = jetstream::new(client.clone());
        let stream = crate::sink::jetstream::stream(&context, &config.nats).await?;
        let consumer = crate::sink::jetstream::consumer(&stream, &config.nats).await?;
        // Ends with the session (a new session starts its own).
        let _sealer = config.seal_interval.map(|interval| {
            AbortOnDrop(tokio::spawn(
                crate::sink::jetstream::sealer::run(
                    context.clone(),
                    config.nats.clone(),
                    config.destination.clone(),
                    bemi_core::setup::stored_changes_table(&config.changes_table).to_string(),
                    Arc::clone(&self.databases),
                    interval,
                    crate::seal::sealer::Anchors::new(
                        config.anchor_file.clone(),
                        config.anchor_nats.clone(),
                    ),
                )
                .instrument(tracing::info_span!("stage", stage = "seal")),
            ))
        });
        let destination = config.destination.connect("bemi-worker ingest").await?;
        check_destination_privileges(&destination, &config.destination, &config.changes_table)
            .await?;
        // No progress key: ingest writes batches without progress (redeliveries are skipped by
        // the change id), so the key is never used.
        let mut store = Store::new(destination, &config.changes_table, String::new());
        let batch_size = config.batch_size.max(1);
        // Idle heartbeats from the server: without them, a pull that a restarted server forgot
        // waits forever and the session never notices; with them, two missed in a row end the
        // session and the next one pulls again.
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(batch_size)
            .expires(Duration::from_secs(30))
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(nats_error("read from the JetStream consumer"))?;
        tracing::info!(
            nats = %config.nats.display_url(),
            stream = %config.nats.stream,
            consumer = %config.nats.consumer,
            destination = %config.destination,
            "ingesting"
        );
        self.metrics.set_streaming(true);
        let mut logged = (Instant::now(), self.metrics.stored_changes());
        let mut stopping = false;
        while !stopping {
            let mut batch = Vec::new();
            tokio::select! {
                biased;
                () = shutdown.as_mut() => stopping = true,
                next = messages.next() => batch.push(received(next)?),
            }
            let deadline = tokio::time::Instant::now() + config.flush_interval;
            while !stopping && !batch.is_empty() && batch.len() < batch_size {
                tokio::select! {
                    biased;
                    () = shutdown.as_mut() => stopping = true,
                    () = tokio::time::sleep_until(deadline) => break,
                    next = messages.next() => batch.push(received(next)?),
                }
            }
            if batch.is_empty() {
                continue;
            }
            let stored = self.store(&mut store, batch).await?;
            *stored_any |= stored > 0;
            if logged.0.elapsed() >= config.log_interval {
                let total = self.metrics.stored_changes();
                let rate = (total - logged.1) as f64 / logged.0.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    stored = total,
                    changes_per_second = rate.round(),
                    "progress"
                );
                logged = (Instant::now(), total);
            }
        }
        client
            .flush()
            .await
            .map_err(nats_error("send the last acknowledgements"))?;
        tracing::info!(stored = self.metrics.stored_changes(), "stopped");
        Ok(())
    }

    /// Stores one batch and acknowledges its messages; on failure, asks for redelivery later.
    async fn store(&self, store: &mut Store, batch: Vec<jetstream::Message>) -> Result<usize> {
        let mut rows = Vec::with_capacity(batch.len());
        let mut readable = Vec::with_capacity(batch.len());
        for message in batch {
            match crate::sink::jetstream::wire::decode(&message.payload) {
                Ok(row) => {
                    rows.push(row);
                    readable.push(message);
                }
                Err(error) => {
                    let sequence = message.info().map(|info| info.stream_sequence).ok();
                    tracing::error!(
                        %error, ?sequence, subject = %message.subject,
                        "a message in the stream is not a bemi change: left in the stream, offered again in 5 minutes"
                    );
                    message
                        .ack_with(AckKind::Nak(Some(UNREADABLE_REDELIVERY)))
                        .await
                        .map_err(|source| Error::Nats {
                            action: "return an unreadable message to the stream".into(),
                            source,
                        })?;
                }
            }
        }
        if rows.is_empty() {
            return Ok(0);
        }
        if let Ok(mut databases) = self.databases.lock() {
            for row in &rows {
                if !databases.contains(&*row.database) {
                    databases.insert(row.database.to_string());
                }
            }
        }
        if let Err(error) = store.write(&rows, None, &mut Turn::alone()).await {
            for message in &readable {
                // Best effort: unacknowledged messages come back after the ack wait anyway.
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
            return Err(error);
        }
        for message in &readable {
            message.ack().await.map_err(|source| Error::Nats {
                action: "acknowledge a stored change".into(),
                source,
            })?;
        }
        let rejected = rows.iter().filter(|row| row.rejected.is_some()).count();
        self.metrics.batch_stored(
            rows.iter().filter(|row| {
                row.rejected.is_none() && !crate::sink::store::is_schema_version(row)
            }),
            rejected,
        );
        Ok(rows.len())
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The next message of the consumer's stream, or why there is none.
fn received<E>(
    next: Option<std::result::Result<jetstream::Message, E>>,
) -> Result<jetstream::Message>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match next {
        Some(Ok(message)) => Ok(message),
        Some(Err(error)) => Err(nats_error("receive from the JetStream consumer")(error)),
        None => Err(Error::Nats {
            action: "receive from the JetStream consumer".into(),
            source: "the consumer's stream ended".into(),
        }),
    }
}
