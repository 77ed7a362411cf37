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
pub(crate) mod turn;

pub use config::{OnSlotLost, Output, WorkerConfig};
pub use metrics::Metrics;

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::pipeline::batch::Batch;
use crate::pipeline::ports::BatchSink;
use crate::pipeline::turn::Turn;
use crate::sink::store::is_schema_version;
use crate::{Error, Result};
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

impl Stored {
    /// The end position of the last transaction stored whole: every change committed before
    /// it is stored.
    pub(crate) fn lsn(&self) -> u64 {
        self.lsn
    }
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

/// The store task: writes batches over `writers` (one sink each: destination connections),
/// several at a time when there are several, committing them in stream order (see
/// [`turn`]), and reports what is stored, in order.
pub(crate) async fn store_batches<S: BatchSink>(
    writers: Vec<S>,
    mut batches: mpsc::Receiver<Batch>,
    stored_tx: watch::Sender<Stored>,
    metrics: Arc<Metrics>,
) -> Result<Stored> {
    if writers.is_empty() {
        return Err(Error::Config(
            "the store task needs at least one writer".into(),
        ));
    }
    let mut idle = writers;
    let mut in_flight: VecDeque<JoinHandle<Written<S>>> = VecDeque::new();
    let mut stored = Stored::default();
    // The turn of the next batch: after the last one handed to a writer.
    let mut next_turn = Turn::alone();
    let mut receiving = true;
    let result = loop {
        if !receiving && in_flight.is_empty() {
            break Ok(stored);
        }
        tokio::select! {
            // The oldest batch first: its writer is needed again, and its report is next.
            biased;
            written = async { oldest(&mut in_flight).await }, if !in_flight.is_empty() => {
                in_flight.pop_front();
                let written = match written {
                    Some(Ok(written)) => written,
                    Some(Err(source)) => break Err(Error::Internal {
                        action: "write a batch".into(),
                        source,
                    }),
                    None => continue,
                };
                if let Err(error) = written.result {
                    break Err(error);
                }
                report(&written.batch, &mut stored, &metrics);
                stored_tx.send_replace(stored);
                idle.push(written.writer);
            }
            batch = batches.recv(), if receiving && !idle.is_empty() => {
                let Some(batch) = batch else {
                    receiving = false;
                    continue;
                };
                // The branch runs only with a writer idle.
                let Some(writer) = idle.pop() else {
                    break Err(Error::StoreGone);
                };
                let turn = std::mem::replace(&mut next_turn, Turn::alone());
                next_turn = turn.next();
                in_flight.push_back(tokio::spawn(write_batch(writer, batch, turn)));
            }
        }
    };
    // After a failure the batches still in flight cannot commit (their turn fails): stop them.
    for handle in in_flight {
        handle.abort();
    }
    result
}

/// The oldest batch in flight, once written.
async fn oldest<S>(
    in_flight: &mut VecDeque<JoinHandle<Written<S>>>,
) -> Option<std::result::Result<Written<S>, tokio::task::JoinError>> {
    match in_flight.front_mut() {
        Some(handle) => Some(handle.await),
        None => None,
    }
}

/// A batch after its write, with the writer that wrote it.
struct Written<S> {
    writer: S,
    batch: Batch,
    result: Result<()>,
}

/// Writes `batch` with `writer` in its `turn`.
async fn write_batch<S: BatchSink>(mut writer: S, batch: Batch, mut turn: Turn) -> Written<S> {
    let result = if batch.rows.is_empty() && batch.progress.is_none() {
        // Nothing to write: only its place in the order, for the position it confirms.
        turn.wait_committed().await
    } else {
        let started = Instant::now();
        let result = writer.write(&batch.rows, batch.progress, &mut turn).await;
        tracing::debug!(rows = batch.rows.len(), elapsed = ?started.elapsed(), "stored a batch");
        result
    };
    if result.is_ok() {
        turn.prepared();
        turn.committed();
    }
    Written {
        writer,
        batch,
        result,
    }
}

/// Counts a stored batch and moves the stored position to its end.
fn report(batch: &Batch, stored: &mut Stored, metrics: &Metrics) {
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
}
