//! [`Metrics`]: counters of a running worker or ingest process.

use std::sync::atomic::{AtomicU64, Ordering};

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
