//! [`Stream`]: the reading side of a session, a state machine over replication events:
//! decode, describe relations, stitch change rows, batch them and hand them to the store task.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use pgwire_replication::{Lsn, ReplicationEvent};
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::admin::snapshot::{SnapshotHeader, parse_row};
use crate::change_row::{ChangeRow, source_hash};
use crate::pipeline::batch::{Batch, BatchBuilder};
use crate::pipeline::ports::{BatchSink, Describe, EventSource, Heartbeat};
use crate::pipeline::progress::Progress;
use crate::pipeline::{Metrics, Stored, WorkerConfig, store_batches};
use crate::source::catalog::RelationInfo;
use crate::source::pgoutput::{self, Message};
use crate::source::recorded_shape::{RecordedShape, relid_of};
use crate::source::xid::XidWidener;
use crate::stitch::{Stitcher, postgres_time};
use crate::{Error, Result};

/// The reading side of a session, over its event source `S` (the replication connection) and
/// its describer `C` (the source's catalog).
pub(crate) struct Stream<'a, S, C> {
    pub(super) config: &'a WorkerConfig,
    pub(super) metrics: &'a Metrics,
    pub(super) replication: S,
    pub(super) catalog: C,
    pub(super) relations: HashMap<u32, Arc<RelationInfo>>,
    /// The Relation messages received, to describe the relations again when the policies
    /// change.
    pub(super) relation_messages: HashMap<u32, pgoutput::Relation>,
    /// Epoch-extends the stream's 32-bit transaction ids.
    pub(super) xids: XidWidener,
    /// The shape (key columns, value kinds) of each tracked relation as last recorded in the
    /// stream (`bemi.schema_versions`): as of the position being read, not as of now.
    pub(super) recorded_shapes: HashMap<u32, RecordedShape>,
    /// The OID of `bemi.schema_versions`, once its Relation message arrived.
    pub(super) schema_relation: Option<u32>,
    /// The OID of `bemi.message_proofs`, once its Relation message arrived.
    pub(super) proof_relation: Option<u32>,
    /// The OID of `bemi.column_policies`, once its Relation message arrived.
    pub(super) policy_relation: Option<u32>,
    /// Whether the current transaction inserted into `bemi.message_proofs`, which only bemi's
    /// own commands can do: only then are its snapshot messages trusted.
    pub(super) proven: bool,
    /// Messages under bemi's prefixes ignored since the last commit (logged at the commit).
    pub(super) ignored: u64,
    /// The table whose snapshot rows are arriving, in the current transaction, and what they
    /// are stored as (SNAPSHOT, or CREATE for the rows of a `CREATE TABLE AS`).
    pub(super) snapshot: Option<(Arc<RelationInfo>, bemi_core::Operation)>,
    pub(super) stitcher: Stitcher,
    pub(super) builder: BatchBuilder,
    pub(super) progress: Option<Progress>,
    pub(super) batches: mpsc::Sender<Batch>,
    pub(super) stored: watch::Receiver<Stored>,
    pub(super) sent_batches: u64,
    /// Whether a transaction began since the last heartbeat tick.
    pub(super) heard: bool,
    /// Lists the personal context values of the rows.
    pub(super) context_values: crate::erasure::ContextValues,
}

/// What a stream starts from: read by the session before streaming.
#[derive(Debug)]
pub(crate) struct StreamStart {
    /// The last stored position: changes at or before it are skipped.
    pub(crate) progress: Option<Progress>,
    /// The table shapes recorded before the start position (see `Stream::recorded_shapes`).
    pub(crate) recorded_shapes: HashMap<u32, RecordedShape>,
    /// The newest full transaction id, to epoch-extend the stream's.
    pub(crate) newest_xid: u64,
    /// The source database's name.
    pub(crate) database: String,
    /// The source's identity in change ids (cluster, and the slot's incarnation).
    pub(crate) source_id: String,
}

impl<'a, S: EventSource, C: Describe + Heartbeat> Stream<'a, S, C> {
    /// Starts a stream reading `replication` and its store task writing with `writers` (one
    /// sink each, at least one); the task ends with what it stored once the stream (its batch
    /// sender) is dropped.
    pub(crate) fn start<K: BatchSink>(
        config: &'a WorkerConfig,
        metrics: &'a Arc<Metrics>,
        replication: S,
        catalog: C,
        writers: Vec<K>,
        start: StreamStart,
    ) -> (Self, tokio::task::JoinHandle<Result<Stored>>) {
        let (batches, batches_rx) = mpsc::channel::<Batch>(1);
        let (stored_tx, stored_rx) = watch::channel(Stored::default());
        let store_task = tokio::spawn(
            store_batches(writers, batches_rx, stored_tx, Arc::clone(metrics))
                .instrument(tracing::info_span!("stage", stage = "store")),
        );
        let stream = Stream {
            config,
            metrics,
            replication,
            catalog,
            relations: HashMap::new(),
            relation_messages: HashMap::new(),
            recorded_shapes: start.recorded_shapes,
            schema_relation: None,
            xids: XidWidener::new(start.newest_xid),
            proof_relation: None,
            policy_relation: None,
            proven: false,
            ignored: 0,
            snapshot: None,
            stitcher: Stitcher::new(
                &start.database,
                source_hash(&start.source_id, &start.database),
                config.max_context_bytes,
            ),
            builder: BatchBuilder::new(),
            progress: start.progress,
            batches,
            stored: stored_rx,
            sent_batches: 0,
            heard: false,
            context_values: crate::erasure::ContextValues::new(config.personal_context.clone()),
        };
        (stream, store_task)
    }
    /// What the store task reports, for the sealer.
    pub(crate) fn stored_receiver(&self) -> watch::Receiver<Stored> {
        self.stored.clone()
    }

    pub(crate) async fn run<F: Future<Output = ()>>(
        &mut self,
        mut shutdown: Pin<&mut F>,
    ) -> Result<()> {
        let mut log_tick = tokio::time::interval(self.config.log_interval);
        log_tick.tick().await;
        let heartbeats = self.config.heartbeat_interval;
        let mut heartbeat_tick =
            tokio::time::interval(heartbeats.unwrap_or(Duration::from_secs(3600)));
        heartbeat_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat_tick.tick().await;
        let mut logged = (Instant::now(), self.metrics.stored_changes());
        loop {
            let flush_at = self
                .builder
                .started()
                .map(|started| started + self.config.flush_interval);
            tokio::select! {
                biased;
                () = shutdown.as_mut() => {
                    self.flush().await?;
                    return Ok(());
                }
                changed = self.stored.changed() => {
                    if changed.is_err() {
                        return Err(Error::StoreGone);
                    }
                    let stored = *self.stored.borrow_and_update();
                    if stored.lsn > 0 {
                        self.replication.confirm(Lsn::from_u64(stored.lsn));
                        self.metrics.confirmed(stored.lsn);
                    }
                }
                () = sleep_until(flush_at) => self.flush().await?,
                _ = heartbeat_tick.tick(), if heartbeats.is_some() => self.heartbeat().await,
                _ = log_tick.tick() => {
                    let stored = self.metrics.stored_changes();
                    let rate = (stored - logged.1) as f64 / logged.0.elapsed().as_secs_f64().max(0.001);
                    let lag = self.stored.borrow().committed_at_micros.map(|micros| {
                        (chrono::Utc::now() - postgres_time(micros)).num_milliseconds() as f64 / 1000.0
                    });
                    tracing::info!(stored, changes_per_second = rate.round(), lag_seconds = ?lag, "progress");
                    logged = (Instant::now(), stored);
                }
                event = self.replication.recv() => {
                    match event? {
                        Some(event) => self.handle(event).await?,
                        None => return Err(Error::Replication(pgwire_replication::PgWireError::Task(
                            "the replication stream ended".into(),
                        ))),
                    }
                }
            }
        }
    }

    async fn handle(&mut self, event: ReplicationEvent) -> Result<()> {
        // The event's kind and position only: its data holds row values, which policies may
        // redact and which no log may hold.
        if tracing::enabled!(tracing::Level::TRACE) {
            tracing::trace!(event = event_summary(&event), "replication event");
        }
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.heard = true;
                self.snapshot = None;
                self.proven = false;
                self.stitcher
                    .begin(self.xids.widen(xid), final_lsn.as_u64(), commit_time_micros);
                self.builder.begin(commit_time_micros);
            }
            ReplicationEvent::Message {
                transactional,
                prefix,
                content,
                lsn,
            } => {
                self.push_pending();
                if prefix == bemi_core::setup::MESSAGE_PREFIX && transactional {
                    // A context: a claim of the writer, whoever it is.
                    self.stitcher.message(transactional, &prefix, &content);
                } else if !prefix.starts_with(bemi_core::setup::MESSAGE_PREFIX) {
                    // Another application's messages.
                } else if prefix == bemi_core::setup::HEARTBEAT_PREFIX && !transactional {
                    // Ours, or anyone's: it only confirms an idle stream, as a keepalive does.
                    self.confirm_if_idle(lsn);
                } else if !transactional || !self.proven {
                    // Costs a comparison: a flood of forged messages cannot stall the trail.
                    self.ignore_message();
                } else if prefix == bemi_core::setup::SNAPSHOT_PREFIX {
                    self.start_snapshot(&content).await?;
                } else if prefix == bemi_core::setup::SNAPSHOT_ROW_PREFIX {
                    self.snapshot_row(&content, lsn.as_u64()).await?;
                } else {
                    self.ignore_message();
                }
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                let mut message = match pgoutput::decode(&data) {
                    Ok(message) => message,
                    Err(error) => {
                        return self
                            .park_unrenderable(&data, wal_start.as_u64(), &error.to_string())
                            .await;
                    }
                };
                if self.is_proof(&mut message) {
                    return Ok(());
                }
                match &message {
                    Message::Relation(relation) => {
                        if relation.namespace == bemi_core::setup::BEMI_SCHEMA
                            && relation.name == "column_policies"
                        {
                            self.policy_relation = Some(relation.id);
                        }
                        if relation.namespace == bemi_core::setup::BEMI_SCHEMA
                            && relation.name == "schema_versions"
                        {
                            self.schema_relation = Some(relation.id);
                        }
                        let info = self.describe(relation).await?;
                        self.relations.insert(relation.id, Arc::new(info));
                        self.relation_messages.insert(relation.id, relation.clone());
                    }
                    Message::Insert { .. }
                    | Message::Update { .. }
                    | Message::Delete { .. }
                    | Message::Truncate { .. } => {
                        let policies_changed =
                            self.policy_relation.is_some_and(|policies| match &message {
                                Message::Insert { relation_id, .. }
                                | Message::Update { relation_id, .. }
                                | Message::Delete { relation_id, .. } => *relation_id == policies,
                                Message::Truncate { relation_ids, .. } => {
                                    relation_ids.contains(&policies)
                                }
                                _ => false,
                            });
                        let progress = self.progress;
                        let mut rows = match self.stitcher.change(
                            &message,
                            wal_start.as_u64(),
                            &self.relations,
                            |position| !progress.is_some_and(|progress| progress.covers(position)),
                        ) {
                            Ok(rows) => rows,
                            // A change of a relation never described (its Relation message
                            // was unreadable): parked, like the message itself.
                            Err(Error::Protocol(reason)) if self.stitcher.in_transaction() => {
                                return self
                                    .park_unrenderable(&data, wal_start.as_u64(), &reason)
                                    .await;
                            }
                            Err(error) => return Err(error),
                        };
                        if let Some(schemas) = self.schema_relation
                            && matches!(&message, Message::Insert { relation_id, .. } if *relation_id == schemas)
                        {
                            // The DDL change takes the next number, whether this delivery
                            // builds it or it was stored before a restart.
                            let derived = self.stitcher.next_derived(|position| {
                                !progress.is_some_and(|progress| progress.covers(position))
                            });
                            let events = self.record_schema_versions(&rows);
                            if let Some((id, sequence)) = derived {
                                rows.extend(events.into_iter().map(|mut event| {
                                    event.id = id;
                                    event.sequence = sequence;
                                    event
                                }));
                            }
                        }
                        self.push_rows(rows).await?;
                        if policies_changed {
                            self.reload_policies().await?;
                        }
                    }
                    Message::Type { .. } | Message::Origin { .. } | Message::Other { .. } => {}
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => {
                self.push_pending();
                if self.ignored > 0 {
                    tracing::warn!(
                        xid = ?self.stitcher.xid(),
                        ignored = self.ignored,
                        "ignored logical messages under bemi's prefixes from a transaction that \
                         does not prove it comes from bemi (forged snapshot or unknown messages)"
                    );
                    self.ignored = 0;
                }
                let commit_lsn = self.stitcher.commit_lsn().unwrap_or_default();
                let changes = self.stitcher.commit();
                self.builder.commit(commit_lsn, changes, end_lsn.as_u64());
                if self
                    .builder
                    .is_full(self.config.batch_size, self.config.batch_bytes)
                {
                    self.flush().await?;
                }
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => self.confirm_if_idle(wal_end),
            ReplicationEvent::StoppedAt { .. } => {}
        }
        Ok(())
    }

    /// Confirms `lsn` when nothing received is unstored: everything up to the server's
    /// position is done (transactions touching no tracked table send nothing), so the server
    /// may recycle that WAL. Inside a transaction or with a batch in flight, nothing.
    fn confirm_if_idle(&mut self, lsn: Lsn) {
        let idle = !self.stitcher.in_transaction()
            && self.builder.is_empty()
            && self.stored.borrow().batches == self.sent_batches;
        if idle && lsn.as_u64() > 0 {
            self.replication.confirm(lsn);
            self.metrics.confirmed(lsn.as_u64());
        }
    }

    /// On a heartbeat tick: writes a heartbeat when no transaction came since the last tick.
    /// A failure is logged, not fatal (a read-only source cannot write one).
    async fn heartbeat(&mut self) {
        if std::mem::take(&mut self.heard) || self.stitcher.in_transaction() {
            return;
        }
        match self.catalog.heartbeat().await {
            Ok(()) => self.metrics.heartbeat_written(),
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "cannot write a heartbeat: an idle slot may not advance");
            }
        }
    }

    /// Describes every known relation again with the stored column policies as they are now:
    /// the stream just showed `bemi.column_policies` change, so the changes after this one (in
    /// this transaction too) are rendered with the new policies, and none in plaintext.
    async fn reload_policies(&mut self) -> Result<()> {
        self.catalog.forget_policies();
        let relations: Vec<pgoutput::Relation> = self.relation_messages.values().cloned().collect();
        for relation in relations {
            let info = self.describe(&relation).await?;
            self.relations.insert(relation.id, Arc::new(info));
        }
        tracing::info!(
            relations = self.relation_messages.len(),
            "the column policies changed: applied from this change on"
        );
        Ok(())
    }

    /// Parks a replication message that cannot be rendered in `bemi.rejected` (with its raw
    /// bytes, position and transaction): bad data never stops capture, and is never dropped.
    async fn park_unrenderable(&mut self, data: &[u8], position: u64, reason: &str) -> Result<()> {
        self.push_pending();
        tracing::error!(
            position = %Lsn::from_u64(position),
            xid = ?self.stitcher.xid(),
            reason,
            "a replication message cannot be rendered: parked in bemi.rejected"
        );
        let progress = self.progress;
        let row = self.stitcher.unrenderable(data, position, reason, |here| {
            !progress.is_some_and(|progress| progress.covers(here))
        })?;
        if let Some(row) = row {
            self.push_rows(vec![row]).await?;
        }
        Ok(())
    }

    /// Adds rows to the batch, storing it when full.
    async fn push_rows(&mut self, mut rows: Vec<ChangeRow>) -> Result<()> {
        for row in &mut rows {
            self.context_values.add(row);
        }
        self.builder.push(rows);
        if self
            .builder
            .is_full(self.config.batch_size, self.config.batch_bytes)
        {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands a DELETE the stitcher held (see `Stitcher::change`) to the batch, before anything
    /// that follows it.
    fn push_pending(&mut self) {
        if let Some(mut row) = self.stitcher.take_pending() {
            self.context_values.add(&mut row);
            self.builder.push(vec![row]);
        }
    }

    /// Describes a relation from its Relation message (names and types as of its position), the
    /// catalog (types, policies, partitions), and the key recorded for it in the stream, which
    /// holds as of this position where the catalog may have moved on (a renamed key column, a
    /// dropped table).
    async fn describe(&mut self, relation: &pgoutput::Relation) -> Result<RelationInfo> {
        let mut info = self.catalog.describe(relation, self.stitcher.xid()).await?;
        if let Some(shape) = self.recorded_shapes.get(&relation.id) {
            info.apply_recorded_shape(shape, relation);
        }
        Ok(info)
    }

    /// Takes the table shapes the stream just recorded (rows inserted into
    /// `bemi.schema_versions`, which only bemi's setup and its superuser-owned event triggers
    /// write): the keys they name hold from here on.
    /// Returns the DDL changes of the versions DDL recorded (see `stitch::ddl`).
    fn record_schema_versions(&mut self, rows: &[ChangeRow]) -> Vec<ChangeRow> {
        let mut events = Vec::new();
        for row in rows {
            let Ok(after) = serde_json::from_str::<serde_json::Value>(&row.after) else {
                continue;
            };
            let previous = relid_of(&after).and_then(|relid| self.recorded_shapes.get(&relid));
            events.extend(crate::stitch::ddl::ddl_change(row, &after, previous));
            // A drop records nothing: changes before it keep the last shape recorded.
            if let Some((relid, shape)) = RecordedShape::from_version(&after) {
                self.recorded_shapes.insert(relid, shape);
            }
        }
        events
    }

    /// Counts a message under bemi's prefixes that is not trusted (logged once, at the next
    /// commit).
    fn ignore_message(&mut self) {
        self.ignored += 1;
        self.metrics.message_ignored();
    }

    /// Handles what concerns `bemi.message_proofs` (its Relation message, an insert proving the
    /// transaction), which is never stored as a change; returns whether `message` was consumed.
    fn is_proof(&mut self, message: &mut Message<'_>) -> bool {
        match message {
            Message::Relation(relation) => {
                let is_proof = relation.namespace == bemi_core::setup::BEMI_SCHEMA
                    && relation.name == bemi_core::setup::PROOF_TABLE;
                if is_proof {
                    self.proof_relation = Some(relation.id);
                }
                is_proof
            }
            Message::Insert { relation_id, .. } if Some(*relation_id) == self.proof_relation => {
                self.proven = true;
                true
            }
            Message::Update { relation_id, .. } | Message::Delete { relation_id, .. } => {
                Some(*relation_id) == self.proof_relation
            }
            Message::Truncate { relation_ids, .. } => {
                relation_ids.retain(|id| Some(*id) != self.proof_relation);
                relation_ids.is_empty()
            }
            _ => false,
        }
    }

    /// Starts a table's snapshot: describes the table as the snapshot's transaction saw it.
    /// A malformed header is logged and its rows skipped (bad data never stops the stream).
    async fn start_snapshot(&mut self, content: &[u8]) -> Result<()> {
        self.snapshot = match SnapshotHeader::parse(content) {
            Ok(header) => match self
                .catalog
                .describe(&header.relation(), self.stitcher.xid())
                .await
            {
                Ok(info) => Some((Arc::new(info), header.operation())),
                Err(error) if error.is_bad_data() => {
                    let error = crate::error_chain(&error);
                    tracing::warn!(%error, "snapshot header the catalog cannot describe: its rows are skipped");
                    None
                }
                Err(error) => return Err(error),
            },
            Err(error) => {
                tracing::warn!(%error, "malformed snapshot header: its rows are skipped");
                None
            }
        };
        Ok(())
    }

    /// Stores one snapshotted row as a SNAPSHOT change.
    async fn snapshot_row(&mut self, content: &[u8], position: u64) -> Result<()> {
        let Some((info, operation)) = self.snapshot.clone() else {
            tracing::warn!("snapshot row without a valid header: skipped");
            return Ok(());
        };
        let values = match parse_row(content) {
            Ok(values) => values,
            Err(error) => {
                tracing::warn!(%error, table = %info.table, "malformed snapshot row: skipped");
                return Ok(());
            }
        };
        let progress = self.progress;
        let row =
            match self
                .stitcher
                .snapshot_row(&info, &values, position, operation, |position| {
                    !progress.is_some_and(|progress| progress.covers(position))
                }) {
                Ok(row) => row,
                Err(error) => {
                    tracing::warn!(%error, "snapshot row skipped");
                    return Ok(());
                }
            };
        if let Some(row) = row {
            self.push_rows(vec![row]).await?;
        }
        Ok(())
    }

    /// Hands the batch collected so far to the store task.
    async fn flush(&mut self) -> Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let batch = self.builder.take();
        self.batches
            .send(batch)
            .await
            .map_err(|_| Error::StoreGone)?;
        self.sent_batches += 1;
        Ok(())
    }
}

/// A replication event without its data: kind, position and size.
fn event_summary(event: &ReplicationEvent) -> String {
    match event {
        ReplicationEvent::Begin { final_lsn, xid, .. } => {
            format!("begin xid {xid} commit {final_lsn}")
        }
        ReplicationEvent::Message {
            transactional,
            prefix,
            content,
            lsn,
        } => format!(
            "message {prefix:?} at {lsn} ({} bytes, transactional: {transactional})",
            content.len()
        ),
        ReplicationEvent::XLogData {
            wal_start, data, ..
        } => format!(
            "{} at {wal_start} ({} bytes)",
            data.first().map_or('?', |tag| char::from(*tag)),
            data.len()
        ),
        ReplicationEvent::Commit { end_lsn, .. } => format!("commit, next {end_lsn}"),
        ReplicationEvent::KeepAlive { wal_end, .. } => format!("keepalive at {wal_end}"),
        ReplicationEvent::StoppedAt { .. } => "stopped".to_owned(),
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
