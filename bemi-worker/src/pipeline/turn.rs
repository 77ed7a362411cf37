//! The order of batches written in parallel.
//!
//! The store task may hand consecutive batches to several destination connections (writers),
//! so that one batch's `COPY` runs while the one before it is still being written. What must
//! stay in stream order is everything another batch or a reader may rely on:
//!
//! - **commits**: a batch commits its rows and the progress it completes only after the batch
//!   before it committed, so the stored progress always names a stored prefix of the stream
//!   (a crash between two commits replays the second batch, which progress then skips or the
//!   idempotent write absorbs), and a reader never sees a change whose context the view takes
//!   from a change not committed yet;
//! - **preparations**: a batch creates the partitions it needs only after the batch before it
//!   did, so two writers never race to create the same partition.
//!
//! Each batch holds a [`Turn`]: it waits for the batch before it at these two points and tells
//! the batch after it when it has passed them. When a batch fails, the batches after it fail
//! too ([`Error::EarlierBatchFailed`]) instead of committing past a gap.

use tokio::sync::watch;

use crate::{Error, Result};

/// How far a batch's write has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Nothing done yet.
    Waiting,
    /// Its partitions are prepared: the next batch may prepare its own and write.
    Prepared,
    /// Committed: the next batch may commit.
    Committed,
}

/// One batch's place in the order of commits (see the module documentation).
#[derive(Debug)]
pub(crate) struct Turn {
    /// The batch before this one, when it may still be in flight.
    previous: Option<watch::Receiver<Stage>>,
    /// What this batch tells the next one. Dropped without [`Stage::Committed`]: this batch
    /// failed.
    own: watch::Sender<Stage>,
}

impl Turn {
    /// The turn of a batch with nothing before it in flight (and no batch after it that
    /// waits: a writer storing one batch at a time).
    pub(crate) fn alone() -> Self {
        Self {
            previous: None,
            own: watch::Sender::new(Stage::Waiting),
        }
    }

    /// The turn of the batch after the one that holds `self`.
    pub(crate) fn next(&self) -> Self {
        Self {
            previous: Some(self.own.subscribe()),
            own: watch::Sender::new(Stage::Waiting),
        }
    }

    /// Waits until the batch before this one prepared its partitions.
    ///
    /// # Errors
    ///
    /// [`Error::EarlierBatchFailed`] when it failed.
    pub(crate) async fn wait_prepared(&mut self) -> Result<()> {
        self.wait_for(Stage::Prepared).await
    }

    /// Tells the next batch that this one prepared its partitions.
    pub(crate) fn prepared(&self) {
        self.own.send_if_modified(|stage| {
            let earlier = *stage < Stage::Prepared;
            if earlier {
                *stage = Stage::Prepared;
            }
            earlier
        });
    }

    /// Waits until the batch before this one committed: call right before committing.
    ///
    /// # Errors
    ///
    /// [`Error::EarlierBatchFailed`] when it failed: this batch must not commit.
    pub(crate) async fn wait_committed(&mut self) -> Result<()> {
        self.wait_for(Stage::Committed).await
    }

    /// Tells the next batch that this one committed.
    pub(crate) fn committed(&self) {
        self.own.send_replace(Stage::Committed);
    }

    async fn wait_for(&mut self, stage: Stage) -> Result<()> {
        let Some(previous) = &mut self.previous else {
            return Ok(());
        };
        // Err: the batch before ended without reaching `stage`.
        let reached = previous
            .wait_for(|reached| *reached >= stage)
            .await
            .map(|_| ())
            .map_err(|_| Error::EarlierBatchFailed);
        if reached.is_ok() && stage == Stage::Committed {
            // Nothing more to wait for.
            self.previous = None;
        }
        reached
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_batch_alone_never_waits() {
        let mut turn = Turn::alone();
        turn.wait_prepared().await.expect("prepared");
        turn.wait_committed().await.expect("committed");
    }

    #[tokio::test]
    async fn the_next_batch_waits_for_each_stage_of_the_one_before() {
        let first = Turn::alone();
        let mut second = first.next();
        let waiting = tokio::time::timeout(Duration::from_millis(20), second.wait_prepared()).await;
        assert!(waiting.is_err(), "must wait for the preparation");
        first.prepared();
        second.wait_prepared().await.expect("prepared");
        let waiting =
            tokio::time::timeout(Duration::from_millis(20), second.wait_committed()).await;
        assert!(waiting.is_err(), "must wait for the commit");
        first.committed();
        second.wait_committed().await.expect("committed");
        // Committed implies prepared, and stays so after the first batch is gone.
        drop(first);
        second.wait_committed().await.expect("still committed");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_the_ones_after_it() {
        let first = Turn::alone();
        let mut second = first.next();
        let mut third = second.next();
        first.prepared();
        second.wait_prepared().await.expect("prepared");
        drop(first);
        assert!(matches!(
            second.wait_committed().await,
            Err(Error::EarlierBatchFailed)
        ));
        drop(second);
        assert!(matches!(
            third.wait_prepared().await,
            Err(Error::EarlierBatchFailed)
        ));
    }

    #[tokio::test]
    async fn a_committed_batch_lets_the_next_prepare_too() {
        let first = Turn::alone();
        let mut second = first.next();
        first.committed();
        drop(first);
        second.wait_prepared().await.expect("prepared");
        second.wait_committed().await.expect("committed");
    }
}
