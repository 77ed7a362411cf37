//! The bemi-rs worker: captures every row change of PostgreSQL from its write-ahead log into the
//! `changes` table, with the application context of the statement that made it, exactly once.
//!
//! # Concepts
//!
//! - **Source**: logical replication with the `pgoutput` plugin (protocol 1, `messages`), over
//!   [`pgwire-replication`](https://docs.rs/pgwire-replication); the row messages are decoded
//!   by [`pgoutput`].
//! - **Attribution**: `_bemi` logical messages set the context of the changes that follow them
//!   in their transaction (the rule is documented in `bemi_core::setup`).
//! - **Values**: converted to JSON without loss (see the `values` table in the README):
//!   NUMERIC and int8 stay exact numbers, json stays structured, arrays become arrays,
//!   timestamps become ISO-8601 UTC; unchanged TOAST values are filled from the old row.
//! - **Exactly once**: batches are written with their progress in one destination transaction;
//!   the slot is confirmed only up to what is stored. After a crash the slot re-delivers and the
//!   progress (and the deterministic change id) absorb the replay.
//! - **Bad data is data**: malformed context, `\u0000`, unknown types and values PostgreSQL
//!   rejects are stored with a marker in `context._bemi`, never dropped, never fatal.
//!
//! # Example
//!
//! ```no_run
//! use bemi_worker::{ConnectionOptions, Worker, WorkerConfig};
//!
//! # async fn example() -> bemi_worker::Result<()> {
//! let source = ConnectionOptions::parse("postgres://bemi:secret@db/app")?;
//! let worker = Worker::new(WorkerConfig::new(source));
//! worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```
//!
//! The `bemi-worker` binary wraps this with `setup`, `run`, `status` and `teardown` commands,
//! and `capture`/`ingest` to scale storage out through NATS JetStream (see [`jetstream`]).

mod admin;
mod change_row;
pub mod console;
pub mod erasure;
mod error;
pub mod ops;
mod pipeline;
mod postgres;
pub mod seal;
mod sink;
mod source;
mod stitch;

pub use admin::archive::{ARCHIVE_FORMAT, ArchiveManifest, Restored, restore_archive};
pub use admin::holds::{LegalHold, legal_holds, place_hold, release_hold};
pub use admin::install::{setup, teardown};
pub use admin::partition::{Conversion, partition_changes};
pub use admin::retention::{
    MIN_KEEP, RetainedPartition, RetentionOptions, RetentionReport, retention,
};
pub use admin::revert::revert;
pub use admin::snapshot::snapshot;
pub use admin::status::{
    ErasureInfo, Health, LagLimits, PartitionInfo, RetentionRun, STATUS_FORMAT, SealInfo, SlotInfo,
    Status, StatusReport, TrailGap, status,
};
pub use change_row::ChangeRow;
pub use erasure::{ErasureOutcome, ErasureRequest, request_erasure};
pub use error::{Error, ErrorKind, Result, error_chain};
pub use pipeline::{Metrics, OnSlotLost, Output, Worker, WorkerConfig};
pub use postgres::connection::{ConnectionOptions, mask_password};
pub use postgres::tls;
pub use seal::{Finding, VerifyOptions, VerifyReport, verify};
pub use sink::jetstream;
pub use sink::jetstream::ingest::{Ingest, IngestConfig};
pub use sink::jetstream::status::{NatsStatus, nats_status};
pub use sink::jetstream::{NatsOptions, Retention};
pub use source::pgoutput;
pub use stitch::context::DEFAULT_MAX_CONTEXT_BYTES;
