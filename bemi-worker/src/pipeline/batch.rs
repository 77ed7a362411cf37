//! Collecting change rows into batches, with the progress and acknowledgement each batch
//! carries once stored.

// The runtime's clock: a paused test clock moves the flush deadline too.
use tokio::time::Instant;

use crate::change_row::ChangeRow;
use crate::pipeline::progress::Progress;

/// Rows to store in one destination transaction, the progress to save with them, and the WAL
/// position to confirm once they are stored.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) rows: Vec<ChangeRow>,
    pub(crate) progress: Option<Progress>,
    /// The end LSN of the newest transaction completed in this batch.
    pub(crate) ack: Option<u64>,
    /// When that transaction committed (microseconds since the PostgreSQL epoch).
    pub(crate) ack_committed_at_micros: Option<i64>,
}

/// Builds batches as the stream is read.
#[derive(Debug)]
pub(crate) struct BatchBuilder {
    batch: Batch,
    /// The rows' size: their JSON and key texts, plus a fixed share for the other columns.
    bytes: usize,
    started: Option<Instant>,
    /// Whether rows of the open transaction were stored or pushed (in this or earlier batches).
    transaction_has_rows: bool,
    transaction_committed_at_micros: i64,
}

impl BatchBuilder {
    pub(crate) fn new() -> Self {
        Self {
            batch: Batch::default(),
            bytes: 0,
            started: None,
            transaction_has_rows: false,
            transaction_committed_at_micros: 0,
        }
    }

    /// When the batch got its first content, if it has any.
    pub(crate) fn started(&self) -> Option<Instant> {
        self.started
    }

    /// The number of rows collected.
    pub(crate) fn len(&self) -> usize {
        self.batch.rows.len()
    }

    /// Whether the batch should be stored now: `rows` rows or `bytes` bytes reached, whichever
    /// comes first (the byte budget bounds memory when rows are wide).
    pub(crate) fn is_full(&self, rows: usize, bytes: usize) -> bool {
        self.len() >= rows || self.bytes >= bytes
    }

    /// Whether there is nothing to store or confirm.
    pub(crate) fn is_empty(&self) -> bool {
        self.started.is_none()
    }

    fn touch(&mut self) {
        self.started.get_or_insert_with(Instant::now);
    }

    /// A transaction begins.
    pub(crate) fn begin(&mut self, committed_at_micros: i64) {
        self.transaction_has_rows = false;
        self.transaction_committed_at_micros = committed_at_micros;
    }

    /// Adds rows of the open transaction (in sequence order) and moves the progress past them.
    pub(crate) fn push(&mut self, rows: Vec<ChangeRow>) {
        let Some(last) = rows.last() else {
            return;
        };
        self.batch.progress = Some(Progress {
            commit_lsn: u64::try_from(last.commit_lsn).unwrap_or_default(),
            stored_changes: u32::try_from(last.sequence).unwrap_or_default() + 1,
            complete: false,
            committed_at_micros: self.transaction_committed_at_micros,
        });
        self.transaction_has_rows = true;
        self.bytes += rows.iter().map(ChangeRow::size).sum::<usize>();
        self.batch.rows.extend(rows);
        self.touch();
    }

    /// The open transaction (commit LSN `commit_lsn`, `changes` changes) committed at `end_lsn`.
    pub(crate) fn commit(&mut self, commit_lsn: u64, changes: u32, end_lsn: u64) {
        if self.transaction_has_rows {
            self.batch.progress = Some(Progress {
                commit_lsn,
                stored_changes: changes,
                complete: true,
                committed_at_micros: self.transaction_committed_at_micros,
            });
        }
        self.batch.ack = Some(end_lsn);
        self.batch.ack_committed_at_micros = Some(self.transaction_committed_at_micros);
        self.transaction_has_rows = false;
        self.touch();
    }

    /// Takes the batch collected so far, leaving an empty one.
    pub(crate) fn take(&mut self) -> Batch {
        self.started = None;
        self.bytes = 0;
        std::mem::take(&mut self.batch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bemi_core::Operation;

    use super::*;

    fn row(commit_lsn: i64, sequence: i32) -> ChangeRow {
        let at = chrono::DateTime::default();
        ChangeRow {
            id: uuid::Uuid::nil(),
            primary_key: None,
            before: "{}".into(),
            after: "{}".into(),
            after_changed: None,
            context: Arc::from("{}"),
            database: Arc::from("db"),
            schema: Arc::from("s"),
            table: Arc::from("t"),
            operation: Operation::Create,
            committed_at: at,
            queued_at: at,
            transaction_id: 1,
            position: 1,
            commit_lsn,
            sequence,
            previous_primary_key: None,
            rejected: None,
            personal: Vec::new(),
        }
    }

    #[test]
    fn partial_transactions_record_the_stored_prefix() {
        let mut builder = BatchBuilder::new();
        assert!(builder.is_empty());
        builder.begin(5);
        builder.push(vec![row(100, 0), row(100, 1)]);
        assert_eq!(builder.len(), 2);
        let first = builder.take();
        assert_eq!(
            first.progress,
            Some(Progress {
                commit_lsn: 100,
                stored_changes: 2,
                complete: false,
                committed_at_micros: 5
            })
        );
        assert_eq!(first.ack, None);
        assert!(builder.is_empty());

        builder.push(vec![row(100, 2)]);
        builder.commit(100, 3, 150);
        let second = builder.take();
        assert_eq!(
            second.progress,
            Some(Progress {
                commit_lsn: 100,
                stored_changes: 3,
                complete: true,
                committed_at_micros: 5
            })
        );
        assert_eq!(second.ack, Some(150));
    }

    #[test]
    fn batches_are_full_at_a_row_count_or_a_byte_budget() {
        let mut builder = BatchBuilder::new();
        builder.begin(1);
        let mut wide = row(100, 0);
        wide.after = "x".repeat(10_000);
        builder.push(vec![row(100, 0)]);
        assert!(!builder.is_full(2, 10_000));
        builder.push(vec![wide]);
        assert!(builder.is_full(5_000, 10_000));
        assert!(builder.is_full(2, usize::MAX));
        builder.take();
        assert!(!builder.is_full(1, 10_000), "empty again");
    }

    #[test]
    fn transactions_without_stored_rows_only_confirm() {
        let mut builder = BatchBuilder::new();
        builder.begin(1);
        builder.commit(200, 4, 250);
        assert!(!builder.is_empty());
        let batch = builder.take();
        assert!(batch.rows.is_empty());
        assert_eq!((batch.progress, batch.ack), (None, Some(250)));
    }
}
