//! The stream's three ports: where replication events come from ([`EventSource`]), how a
//! relation is described ([`Describe`]) and where batches go ([`BatchSink`]).
//!
//! In production they are the replication connection, the source's catalog and the `changes`
//! table or JetStream; the pipeline's own tests plug in a scripted source and a sink with
//! failpoints (`pipeline::tests`), so confirmation, batching, keepalives and restarts are
//! tested in milliseconds beside the real-process tests.

use std::future::Future;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationEvent};

use crate::change_row::ChangeRow;
use crate::pipeline::progress::Progress;
use crate::pipeline::turn::Turn;
use crate::sink::Sink;
use crate::source::catalog::{Catalog, RelationInfo};
use crate::source::pgoutput::Relation;
use crate::{Error, Result};

/// Where a stream's replication events come from, and where it confirms what is stored.
pub(crate) trait EventSource: Send {
    /// The next event; `None` when the stream ended.
    fn recv(&mut self) -> impl Future<Output = Result<Option<ReplicationEvent>>> + Send;

    /// Confirms that everything up to `lsn` is stored: the server may recycle that WAL.
    fn confirm(&mut self, lsn: Lsn);
}

impl EventSource for ReplicationClient {
    async fn recv(&mut self) -> Result<Option<ReplicationEvent>> {
        ReplicationClient::recv(self)
            .await
            .map_err(Error::Replication)
    }

    fn confirm(&mut self, lsn: Lsn) {
        self.update_applied_lsn(lsn);
    }
}

/// Describes relations from their Relation messages.
pub(crate) trait Describe: Send {
    /// Describes `relation` as transaction `xid` (the one being streamed) left it.
    fn describe(
        &mut self,
        relation: &Relation,
        xid: Option<u32>,
    ) -> impl Future<Output = Result<RelationInfo>> + Send;

    /// Forgets the stored column policies: the next description reads them again.
    fn forget_policies(&mut self);
}

impl Describe for Catalog {
    async fn describe(&mut self, relation: &Relation, xid: Option<u32>) -> Result<RelationInfo> {
        Catalog::describe(self, relation, xid).await
    }

    fn forget_policies(&mut self) {
        Catalog::forget_policies(self);
    }
}

/// Writes heartbeats through the source's WAL (see [`crate::WorkerConfig::heartbeat_interval`]).
pub(crate) trait Heartbeat: Send {
    /// Writes one heartbeat (an empty non-transactional logical message under
    /// [`bemi_core::setup::HEARTBEAT_PREFIX`]).
    fn heartbeat(&mut self) -> impl Future<Output = Result<()>> + Send;
}

impl Heartbeat for Catalog {
    async fn heartbeat(&mut self) -> Result<()> {
        self.client()
            .execute(
                "SELECT pg_catalog.pg_logical_emit_message(false, $1::text, ''::text)",
                &[&bemi_core::setup::HEARTBEAT_PREFIX],
            )
            .await
            .map(|_| ())
            .map_err(Error::postgres("write a heartbeat"))
    }
}

/// Where the store task writes batches.
pub(crate) trait BatchSink: Send + 'static {
    /// Writes one batch (with the progress it completes, where the sink keeps progress);
    /// returns once it is durable. The sink keeps the batch's `turn`: it prepares what the
    /// batch needs after [`Turn::wait_prepared`] (then says [`Turn::prepared`]) and commits
    /// only after [`Turn::wait_committed`], as batches before it may be written in parallel.
    fn write(
        &mut self,
        rows: &[ChangeRow],
        progress: Option<Progress>,
        turn: &mut Turn,
    ) -> impl Future<Output = Result<()>> + Send;
}

impl BatchSink for Sink {
    async fn write(
        &mut self,
        rows: &[ChangeRow],
        progress: Option<Progress>,
        turn: &mut Turn,
    ) -> Result<()> {
        Sink::write(self, rows, progress, turn).await
    }
}
