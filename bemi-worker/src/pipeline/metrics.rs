//! [`Metrics`]: what a running worker (`run`, `capture`) or ingest process counts, readable while
//! it runs and served as Prometheus text by [`crate::ops::serve`].

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::Utc;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::change_row::ChangeRow;
use crate::error::ErrorKind;

/// The label of `bemi_errors_total`: the error's kind (bounded: three values).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

/// Counters and gauges of a running worker or ingest process.
///
/// Named by Prometheus conventions (prefix `bemi_`; see README, "Operations", for each one).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    changes_stored: Counter,
    change_bytes: Counter,
    batches: Counter,
    commit_to_stored: Histogram,
    last_stored_commit: Gauge<f64, AtomicU64>,
    rejected: Counter,
    reconnects: Counter,
    errors: Family<ErrorLabels, Counter>,
    streaming: Gauge,
    ignored_messages: Counter,
    heartbeats: Counter,
    pub(crate) slot: SlotGauges,
    resident_memory: Gauge,
    confirmed_lsn: AtomicU64,
    sessions: AtomicU64,
}

/// What the source says of the slot, polled while the worker runs.
#[derive(Debug, Default)]
pub(crate) struct SlotGauges {
    pub(crate) replication_lag: Gauge,
    pub(crate) retained_wal: Gauge,
    pub(crate) wal_remaining: Gauge,
    pub(crate) lost: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            changes_stored: Counter::default(),
            change_bytes: Counter::default(),
            batches: Counter::default(),
            // 10 ms to about 90 minutes.
            commit_to_stored: Histogram::new(exponential_buckets(0.01, 2.0, 20)),
            last_stored_commit: Gauge::default(),
            rejected: Counter::default(),
            reconnects: Counter::default(),
            errors: Family::default(),
            streaming: Gauge::default(),
            ignored_messages: Counter::default(),
            heartbeats: Counter::default(),
            slot: SlotGauges::default(),
            resident_memory: Gauge::default(),
            confirmed_lsn: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
        };
        metrics.registered()
    }
}

impl Metrics {
    fn registered(mut self) -> Self {
        let mut registry = Registry::default();
        let bemi = registry.sub_registry_with_prefix("bemi");
        bemi.register(
            "changes_stored",
            "Changes stored in the changes table (or published to JetStream by capture)",
            self.changes_stored.clone(),
        );
        bemi.register_with_unit(
            "change",
            "Bytes of the changes stored: keys, images and contexts as text",
            Unit::Bytes,
            self.change_bytes.clone(),
        );
        bemi.register(
            "batches",
            "Batches written (one transaction each)",
            self.batches.clone(),
        );
        bemi.register_with_unit(
            "commit_to_stored",
            "Time from a change's commit on the source to its batch being stored",
            Unit::Seconds,
            self.commit_to_stored.clone(),
        );
        bemi.register(
            "last_stored_commit_timestamp_seconds",
            "Commit time of the newest stored change, as Unix time",
            self.last_stored_commit.clone(),
        );
        bemi.register(
            "rejected",
            "Changes parked in bemi.rejected: refused by the changes table even as text",
            self.rejected.clone(),
        );
        bemi.register(
            "reconnects",
            "Sessions started again after an error",
            self.reconnects.clone(),
        );
        // Every kind present from the start, at 0: a rate over a series that appears only
        // with its first error would miss that error.
        for kind in ["bad_data", "transient", "fatal"] {
            drop(self.errors.get_or_create(&ErrorLabels { kind }));
        }
        bemi.register(
            "errors",
            "Errors that ended a session, by kind (bad_data, transient, fatal)",
            self.errors.clone(),
        );
        bemi.register(
            "streaming",
            "1 while a session streams (or ingests), 0 while connecting or reconnecting",
            self.streaming.clone(),
        );
        bemi.register(
            "ignored_messages",
            "Logical messages under bemi's prefixes ignored as not proven to come from bemi",
            self.ignored_messages.clone(),
        );
        bemi.register(
            "heartbeats",
            "Heartbeats written through the WAL of an idle source so that its slot advances",
            self.heartbeats.clone(),
        );
        bemi.register_with_unit(
            "replication_lag",
            "WAL written on the source since the position the worker confirmed",
            Unit::Bytes,
            self.slot.replication_lag.clone(),
        );
        bemi.register_with_unit(
            "retained_wal",
            "WAL the slot keeps on the source's disk",
            Unit::Bytes,
            self.slot.retained_wal.clone(),
        );
        bemi.register_with_unit(
            "slot_wal_remaining",
            "WAL that can still be written before the server invalidates the slot \
             (max_slot_wal_keep_size); -1 without a limit",
            Unit::Bytes,
            self.slot.wal_remaining.clone(),
        );
        bemi.register(
            "slot_lost",
            "1 when the server invalidated the slot (changes since are not in the trail)",
            self.slot.lost.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the process",
            Unit::Bytes,
            self.resident_memory.clone(),
        );
        self.registry = registry;
        self
    }

    /// The metrics as Prometheus text (OpenMetrics).
    pub fn encode(&self) -> String {
        if let Some(bytes) = resident_memory_bytes() {
            self.resident_memory.set(bytes);
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Changes stored since the process started.
    pub fn stored_changes(&self) -> u64 {
        self.changes_stored.get()
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
        self.ignored_messages.get()
    }

    /// Whether a session is streaming now.
    pub fn is_streaming(&self) -> bool {
        self.streaming.get() == 1
    }

    /// WAL behind the server, as last polled (`None` before the first poll or without a slot).
    pub fn replication_lag_bytes(&self) -> Option<i64> {
        let lag = self.slot.replication_lag.get();
        (self.confirmed_lsn() > 0 || lag > 0).then_some(lag)
    }

    /// Heartbeats written since the process started.
    pub fn heartbeats(&self) -> u64 {
        self.heartbeats.get()
    }

    /// Counts a session starting; every one after the first is a reconnect.
    pub(crate) fn session_started(&self) {
        if self.sessions.fetch_add(1, Ordering::Relaxed) > 0 {
            self.reconnects.inc();
        }
    }

    /// Says whether a session streams.
    pub(crate) fn set_streaming(&self, streaming: bool) {
        self.streaming.set(i64::from(streaming));
    }

    /// Counts an error that ended a session.
    pub(crate) fn session_failed(&self, kind: ErrorKind) {
        let kind = match kind {
            ErrorKind::BadData => "bad_data",
            ErrorKind::Transient => "transient",
            ErrorKind::Fatal => "fatal",
        };
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
        self.set_streaming(false);
    }

    /// Counts a stored batch: its changes (`stored` of `rows`, the others parked or recorded
    /// shapes), their bytes, their time from commit, and the changes parked.
    pub(crate) fn batch_stored<'a>(
        &self,
        stored: impl Iterator<Item = &'a ChangeRow>,
        rejected: usize,
    ) {
        let now = Utc::now();
        let (mut count, mut bytes, mut newest) = (0_u64, 0_u64, None);
        for row in stored {
            count += 1;
            bytes += row.size() as u64;
            let micros = (now - row.committed_at)
                .num_microseconds()
                .unwrap_or(i64::MAX);
            self.commit_to_stored.observe((micros.max(0) as f64) / 1e6);
            newest = newest.max(Some(row.committed_at));
        }
        // The shared counters once per batch, not once per change.
        self.changes_stored.inc_by(count);
        self.change_bytes.inc_by(bytes);
        if let Some(newest) = newest {
            let seconds = newest.timestamp_micros() as f64 / 1e6;
            if seconds > self.last_stored_commit.get() {
                self.last_stored_commit.set(seconds);
            }
        }
        self.rejected.inc_by(rejected as u64);
        self.batches.inc();
    }

    /// Records a position confirmed to the server.
    pub(crate) fn confirmed(&self, lsn: u64) {
        self.confirmed_lsn.fetch_max(lsn, Ordering::Relaxed);
    }

    /// Counts an ignored logical message.
    pub(crate) fn message_ignored(&self) {
        self.ignored_messages.inc();
    }

    /// Counts a heartbeat written.
    pub(crate) fn heartbeat_written(&self) {
        self.heartbeats.inc();
    }
}

/// The process's resident memory, from `VmRSS` in `/proc/self/status` (Linux; `None` elsewhere).
fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kilobytes: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}
