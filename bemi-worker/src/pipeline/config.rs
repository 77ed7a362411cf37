//! [`WorkerConfig`] and [`Output`]: what a worker reads, how, and where its changes go.

use std::time::Duration;

use bemi_core::QualifiedName;

use crate::ConnectionOptions;
use crate::sink::jetstream::NatsOptions;
use crate::stitch::context::DEFAULT_MAX_CONTEXT_BYTES;

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

/// What the worker does when the server invalidated its slot (see [`crate::Error::SlotLost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnSlotLost {
    /// Stop, saying what happened and what to run (the default: a gap in an audit trail is for
    /// an operator to accept).
    #[default]
    Stop,
    /// Drop and create the slot again, record the gap (from which position and time to which)
    /// in the source's `bemi.trail_gaps`, say so loudly, and go on from the new slot.
    Recreate,
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
    /// Destination connections storing batches in parallel (default 2): one batch's `COPY`
    /// runs while the one before it is written; batches still commit in stream order. 1
    /// stores one batch at a time. Publishing to JetStream always uses one.
    pub writers: usize,
    /// Longest time a change waits before its batch is stored (default 100 ms).
    pub flush_interval: Duration,
    /// Largest context stored; larger ones become a marker (default 1 MiB).
    pub max_context_bytes: usize,
    /// How often the confirmed position is reported to the server (default 1 s).
    pub status_interval: Duration,
    /// How often progress is logged at info level (default 10 s).
    pub log_interval: Duration,
    /// After this long without a transaction from the source database, the worker writes a
    /// heartbeat through its WAL and confirms it, so that the slot advances while the tracked
    /// tables are idle and other databases of the cluster write (default 60 s; `None`: never).
    pub heartbeat_interval: Option<Duration>,
    /// How often, at most, the worker seals what it stored (default 5 s; `None`: never). See
    /// [`crate::seal`].
    pub seal_interval: Option<Duration>,
    /// An append-only file the worker adds each seal's hash to (one JSON object per line), kept
    /// where the database's administrators cannot rewrite it; `verify --anchor-file` checks the
    /// seals against it.
    pub anchor_file: Option<std::path::PathBuf>,
    /// A NATS JetStream stream each seal's hash is published to, one message per seal: made to
    /// refuse deletion and purging (`stream` and `subject` of the options name it; see
    /// [`crate::seal::DEFAULT_ANCHOR_STREAM`]). `verify` reads it back.
    pub anchor_nats: Option<crate::NatsOptions>,
    /// What to do when the server invalidated the slot (default: stop).
    pub on_slot_lost: OnSlotLost,
    /// The longest wait between reconnection attempts (default 30 s).
    pub max_backoff: Duration,
    /// How long a worker starting on a slot held by another walsender waits for it to be
    /// released before giving up (default 60 s): a crashed worker's walsender lingers until
    /// PostgreSQL notices the lost connection.
    pub slot_release_wait: Duration,
    /// Columns to redact, drop or treat as noise (added to those stored in the source's
    /// `bemi.column_policies`); see `bemi_core::policy`.
    pub column_policies: bemi_core::policy::ColumnPolicies,
    /// Context keys holding personal data (e.g. `user_email`): stored, and erasable per
    /// subject like personal columns (see [`crate::erasure`]).
    pub personal_context: Vec<String>,
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
            writers: 2,
            flush_interval: Duration::from_millis(100),
            max_context_bytes: DEFAULT_MAX_CONTEXT_BYTES,
            status_interval: Duration::from_secs(1),
            log_interval: Duration::from_secs(10),
            heartbeat_interval: Some(Duration::from_secs(60)),
            on_slot_lost: OnSlotLost::Stop,
            seal_interval: Some(Duration::from_secs(5)),
            anchor_file: None,
            anchor_nats: None,
            max_backoff: Duration::from_secs(30),
            slot_release_wait: Duration::from_secs(60),
            column_policies: bemi_core::policy::ColumnPolicies::default(),
            personal_context: Vec::new(),
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
