//! The in-memory ports of the pipeline's tests: a scripted event source, a describer that
//! reads only the Relation message, and a sink with failpoints, sharing one [`Ledger`] that
//! checks, at every confirmation, that what is confirmed is stored.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bemi_core::policy::ColumnFlags;
use bytes::Bytes;
use pgwire_replication::{Lsn, ReplicationEvent};
use tokio::sync::{Semaphore, mpsc, watch};
use uuid::Uuid;

use crate::change_row::ChangeRow;
use crate::pipeline::ports::{BatchSink, Describe, EventSource, Heartbeat};
use crate::pipeline::progress::Progress;
use crate::pipeline::turn::Turn;
use crate::source::catalog::RelationInfo;
use crate::source::pgoutput::Relation;
use crate::stitch::values::ValueKind;
use crate::{Error, Result};

/// The OID of the scripted table.
pub(super) const TABLE_ID: u32 = 16_384;

/// One scripted transaction: `rows` inserts into the table, each with a note of `note_bytes`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transaction {
    pub(super) commit_lsn: u64,
    pub(super) end_lsn: u64,
    pub(super) rows: u32,
    pub(super) note_bytes: usize,
}

/// The transactions of a test, with positions as PostgreSQL would give them: transaction `i`
/// (from 1) commits at `1000 i + 900` and ends at `1000 i + 950`.
pub(super) fn transactions(rows: &[u32], note_bytes: usize) -> Vec<Transaction> {
    (1_u64..)
        .zip(rows)
        .map(|(i, &rows)| Transaction {
            commit_lsn: 1_000 * i + 900,
            end_lsn: 1_000 * i + 950,
            rows,
            note_bytes,
        })
        .collect()
}

/// The events the server sends for `transaction` (its Relation message first, as after a
/// reconnection).
pub(super) fn events(transaction: &Transaction) -> Vec<ReplicationEvent> {
    let base = transaction.commit_lsn - 900;
    let xid = u32::try_from(base / 1_000).unwrap_or_default() + 700;
    let micros = i64::try_from(base).unwrap_or_default() * 1_000_000;
    let mut events = vec![ReplicationEvent::Begin {
        final_lsn: Lsn::from_u64(transaction.commit_lsn),
        xid,
        commit_time_micros: micros,
    }];
    events.push(xlog(base + 1, relation_message()));
    for row in 0..transaction.rows {
        let id = (base + u64::from(row)).to_string();
        let note = "n".repeat(transaction.note_bytes);
        events.push(xlog(base + 10 + u64::from(row), insert_message(&id, &note)));
    }
    events.push(ReplicationEvent::Commit {
        lsn: Lsn::from_u64(transaction.commit_lsn),
        end_lsn: Lsn::from_u64(transaction.end_lsn),
        commit_time_micros: micros,
    });
    events
}

fn xlog(position: u64, data: Vec<u8>) -> ReplicationEvent {
    ReplicationEvent::XLogData {
        wal_start: Lsn::from_u64(position),
        wal_end: Lsn::from_u64(position),
        server_time_micros: 0,
        data: Bytes::from(data),
    }
}

fn push_string(message: &mut Vec<u8>, value: &str) {
    message.extend_from_slice(value.as_bytes());
    message.push(0);
}

/// A pgoutput Relation message for `public.items (id int4 key, note text)`.
fn relation_message() -> Vec<u8> {
    let mut message = vec![b'R'];
    message.extend_from_slice(&TABLE_ID.to_be_bytes());
    push_string(&mut message, "public");
    push_string(&mut message, "items");
    message.push(b'd');
    message.extend_from_slice(&2_u16.to_be_bytes());
    for (flags, name, type_id) in [(1_u8, "id", 23_u32), (0, "note", 25)] {
        message.push(flags);
        push_string(&mut message, name);
        message.extend_from_slice(&type_id.to_be_bytes());
        message.extend_from_slice(&(-1_i32).to_be_bytes());
    }
    message
}

/// A pgoutput Insert message of the table.
fn insert_message(id: &str, note: &str) -> Vec<u8> {
    let mut message = vec![b'I'];
    message.extend_from_slice(&TABLE_ID.to_be_bytes());
    message.push(b'N');
    message.extend_from_slice(&2_u16.to_be_bytes());
    for value in [id, note] {
        message.push(b't');
        let len = u32::try_from(value.len()).unwrap_or_default();
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(value.as_bytes());
    }
    message
}

/// What the fakes share: the sink's durable state, the confirmations, and the violations of
/// the pipeline's promises they saw.
#[derive(Debug, Default)]
pub(super) struct LedgerState {
    /// The rows durably written, in order.
    pub(super) stored: Vec<ChangeRow>,
    /// The progress written with the last batch that carried one.
    pub(super) progress: Option<Progress>,
    /// Every batch written: its row count.
    pub(super) batches: Vec<usize>,
    /// Every position confirmed to the source, in order.
    pub(super) confirmed: Vec<u64>,
    /// Broken promises: a confirmation of an unstored transaction, a row stored twice.
    pub(super) violations: Vec<String>,
    /// The scripted transactions, to check confirmations against.
    pub(super) script: Vec<Transaction>,
    /// Writes started and not finished, and the most there were at once.
    pub(super) writing: usize,
    pub(super) most_writing: usize,
    /// Writes started, over every sink of the ledger: numbers writes in batch order.
    pub(super) writes: usize,
    /// Writes that reached their commit (waiting for their turn or past it).
    pub(super) ready_to_commit: usize,
}

/// The state the fakes share, with a change signal for tests waiting on it.
#[derive(Debug, Clone)]
pub(super) struct Ledger {
    state: Arc<Mutex<LedgerState>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Ledger {
    pub(super) fn new(script: Vec<Transaction>) -> Self {
        Self {
            state: Arc::new(Mutex::new(LedgerState {
                script,
                ..LedgerState::default()
            })),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    pub(super) fn state(&self) -> MutexGuard<'_, LedgerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn touch(&self) {
        self.changed.send_modify(|version| *version += 1);
    }

    /// Waits until `condition` holds of the state (the test's timeout bounds the wait).
    pub(super) async fn wait_for(&self, condition: impl Fn(&LedgerState) -> bool) {
        let mut changed = self.changed.subscribe();
        loop {
            if condition(&self.state()) {
                return;
            }
            if changed.changed().await.is_err() {
                return;
            }
        }
    }

    /// The highest position confirmed so far.
    pub(super) fn confirmed(&self) -> u64 {
        self.state()
            .confirmed
            .iter()
            .copied()
            .max()
            .unwrap_or_default()
    }
}

/// A replication source playing the events a test feeds it; it records confirmations and
/// checks each against what the sink holds.
#[derive(Debug)]
pub(super) struct ScriptedSource {
    events: mpsc::UnboundedReceiver<ReplicationEvent>,
    ledger: Ledger,
    /// How many events were handed out, published each time the stream asks for the next one
    /// (so every event before it was handled).
    asked: watch::Sender<usize>,
    handed: usize,
}

impl ScriptedSource {
    /// A source, the sender that feeds it, and how many events the stream has handled.
    pub(super) fn new(
        ledger: &Ledger,
    ) -> (
        Self,
        mpsc::UnboundedSender<ReplicationEvent>,
        watch::Receiver<usize>,
    ) {
        let (feed, events) = mpsc::unbounded_channel();
        let (asked, asked_rx) = watch::channel(0);
        let source = Self {
            events,
            ledger: ledger.clone(),
            asked,
            handed: 0,
        };
        (source, feed, asked_rx)
    }
}

impl EventSource for ScriptedSource {
    async fn recv(&mut self) -> Result<Option<ReplicationEvent>> {
        // Every event handed out so far is handled: a barrier for absence checks.
        self.asked.send_replace(self.handed);
        match self.events.recv().await {
            Some(event) => {
                self.handed += 1;
                Ok(Some(event))
            }
            // The test fed everything it had: the server waits, as for an idle database.
            None => std::future::pending().await,
        }
    }

    fn confirm(&mut self, lsn: Lsn) {
        let lsn = lsn.as_u64();
        {
            let mut state = self.ledger.state();
            let stored_per_commit =
                state
                    .stored
                    .iter()
                    .fold(HashMap::<i64, u32>::new(), |mut counts, row| {
                        *counts.entry(row.commit_lsn).or_default() += 1;
                        counts
                    });
            let unstored: Vec<String> = state
                .script
                .iter()
                .filter(|transaction| transaction.end_lsn <= lsn)
                .filter(|transaction| {
                    let commit = i64::try_from(transaction.commit_lsn).unwrap_or_default();
                    stored_per_commit.get(&commit).copied().unwrap_or_default() < transaction.rows
                })
                .map(|transaction| {
                    format!(
                        "confirmed {lsn} before transaction {} was stored",
                        transaction.commit_lsn
                    )
                })
                .collect();
            state.violations.extend(unstored);
            state.confirmed.push(lsn);
        }
        self.ledger.touch();
    }
}

/// Describes a relation from its Relation message alone: built-in types, the replica
/// identity as key, no policies.
#[derive(Debug, Default)]
pub(super) struct MessageOnlyCatalog;

impl Describe for MessageOnlyCatalog {
    async fn describe(&mut self, relation: &Relation, _xid: Option<u32>) -> Result<RelationInfo> {
        let columns = &relation.columns;
        Ok(RelationInfo {
            id: relation.id,
            schema: Arc::from(relation.namespace.as_str()),
            table: Arc::from(relation.name.as_str()),
            columns: columns.iter().map(|column| column.name.clone()).collect(),
            kinds: columns
                .iter()
                .map(|column| ValueKind::builtin(column.type_id).unwrap_or(ValueKind::Text))
                .collect(),
            types_gone: vec![false; columns.len()],
            key: (0..columns.len())
                .filter(|&position| columns[position].is_key)
                .collect(),
            identity: columns.iter().map(|column| column.is_key).collect(),
            key_unavailable: Vec::new(),
            partition: None,
            flags: vec![ColumnFlags::default(); columns.len()],
        })
    }

    fn forget_policies(&mut self) {}
}

impl Heartbeat for MessageOnlyCatalog {
    async fn heartbeat(&mut self) -> Result<()> {
        Ok(())
    }
}

/// How a failpoint fails a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The write fails and nothing of it is stored (a lost connection before COMMIT).
    Before,
    /// The write is stored but reported failed (a lost connection after COMMIT, before its
    /// acknowledgement arrived).
    After,
}

/// A sink keeping batches in the ledger, with a failpoint and a gate. Clones share the
/// ledger, and so the numbering of writes: one per writer of a session.
#[derive(Debug, Clone)]
pub(super) struct FaultySink {
    ledger: Ledger,
    /// Fails the write with this number (from 1, over all writers).
    pub(super) fail_at: Option<(usize, Failure)>,
    /// When set, each write waits for a permit: the test decides when writes complete.
    pub(super) gate: Option<Arc<Semaphore>>,
    /// When set, only the write with this number waits for a permit.
    pub(super) held: Option<(usize, Arc<Semaphore>)>,
}

impl FaultySink {
    pub(super) fn new(ledger: &Ledger) -> Self {
        Self {
            ledger: ledger.clone(),
            fail_at: None,
            gate: None,
            held: None,
        }
    }

    fn make_durable(&self, rows: &[ChangeRow], progress: Option<Progress>) {
        {
            let mut state = self.ledger.state();
            let known: HashSet<Uuid> = state.stored.iter().map(|row| row.id).collect();
            let duplicates: Vec<String> = rows
                .iter()
                .filter(|row| known.contains(&row.id))
                .map(|row| format!("stored twice: {} #{}", row.commit_lsn, row.sequence))
                .collect();
            state.violations.extend(duplicates);
            state.stored.extend_from_slice(rows);
            state.batches.push(rows.len());
            if progress.is_some() {
                state.progress = progress;
            }
        }
        self.ledger.touch();
    }
}

impl BatchSink for FaultySink {
    async fn write(
        &mut self,
        rows: &[ChangeRow],
        progress: Option<Progress>,
        turn: &mut Turn,
    ) -> Result<()> {
        let write = {
            let mut state = self.ledger.state();
            state.writes += 1;
            state.writing += 1;
            state.most_writing = state.most_writing.max(state.writing);
            state.writes
        };
        let result = self.write_numbered(write, rows, progress, turn).await;
        self.ledger.state().writing -= 1;
        self.ledger.touch();
        result
    }
}

impl FaultySink {
    /// Write number `write`: prepares in turn, waits at the gate (the COPY), commits in turn.
    async fn write_numbered(
        &self,
        write: usize,
        rows: &[ChangeRow],
        progress: Option<Progress>,
        turn: &mut Turn,
    ) -> Result<()> {
        turn.wait_prepared().await?;
        turn.prepared();
        self.ledger.touch();
        if let Some(gate) = &self.gate {
            gate.acquire()
                .await
                .map_err(|_| Error::Protocol("the gate closed".into()))?
                .forget();
        }
        if let Some((_, gate)) = self.held.as_ref().filter(|(at, _)| *at == write) {
            gate.acquire()
                .await
                .map_err(|_| Error::Protocol("the gate closed".into()))?
                .forget();
        }
        let failure = self
            .fail_at
            .filter(|(at, _)| *at == write)
            .map(|(_, failure)| failure);
        if failure == Some(Failure::Before) {
            return Err(Error::Protocol(format!(
                "failpoint: write {write} failed before it was durable"
            )));
        }
        self.ledger.state().ready_to_commit += 1;
        self.ledger.touch();
        turn.wait_committed().await?;
        self.make_durable(rows, progress);
        match failure {
            Some(failure) => Err(Error::Protocol(format!(
                "failpoint: write {write} failed ({failure:?} it was durable)"
            ))),
            None => Ok(()),
        }
    }
}
