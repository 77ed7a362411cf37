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
pub(crate) mod ports;
pub(crate) mod progress;
mod stream;
mod supervisor;
#[cfg(test)]
mod tests;

pub use config::{OnSlotLost, Output, WorkerConfig};
pub use metrics::Metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use crate::Result;
use crate::pipeline::batch::Batch;
use crate::pipeline::ports::BatchSink;
use crate::sink::store::is_schema_version;
use supervisor::Supervisor;

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
        let shutdown = std::pin::pin!(shutdown);
        Supervisor::new(&self.config, &self.metrics)
            .run(shutdown)
            .await
    }
}

/// The store task: writes batches in order and reports what is stored.
pub(crate) async fn store_batches<S: BatchSink>(
    mut sink: S,
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
        let rejected = batch
            .rows
            .iter()
            .filter(|row| row.rejected.is_some())
            .count();
        metrics.batch_stored(
            batch
                .rows
                .iter()
                .filter(|row| row.rejected.is_none() && !is_schema_version(row)),
            rejected,
        );
        stored.batches += 1;
        if let Some(lsn) = batch.ack {
            stored.lsn = stored.lsn.max(lsn);
            stored.committed_at_micros = batch.ack_committed_at_micros;
        }
        stored_tx.send_replace(stored);
    }
    Ok(stored)
}
