//! Where a session's batches go: the `changes` table (`run`), or NATS JetStream (`capture`, with
//! `ingest` storing them). The decoding and attribution before, and the confirmation of the slot
//! after, are the same for both: only the transport differs.

pub mod jetstream;
pub(crate) mod partitions;
pub(crate) mod preflight;
pub(crate) mod store;

use crate::Result;
use crate::change_row::ChangeRow;
use crate::pipeline::progress::Progress;
use crate::pipeline::turn::Turn;
use crate::sink::jetstream::Publisher;
use crate::sink::store::Store;

/// The destination of a session's batches.
#[derive(Debug)]
pub(crate) enum Sink {
    /// Store into the `changes` table, with the progress in the same transaction.
    Store(Store),
    /// Publish to JetStream. No progress is kept: a replay after a restart is absorbed by
    /// JetStream's duplicate window and by the change id's uniqueness where ingest stores it.
    JetStream(Publisher),
}

impl Sink {
    /// Writes one batch in its `turn`; returns once it is durable at the destination.
    pub(crate) async fn write(
        &mut self,
        rows: &[ChangeRow],
        progress: Option<Progress>,
        turn: &mut Turn,
    ) -> Result<()> {
        match self {
            Sink::Store(store) => store.write(rows, progress, turn).await,
            Sink::JetStream(publisher) => {
                // One publisher per session: nothing before it is in flight.
                turn.wait_committed().await?;
                publisher.publish(rows).await
            }
        }
    }
}
