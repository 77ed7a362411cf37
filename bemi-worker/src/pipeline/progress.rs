//! How far the worker has stored the stream, kept in the destination with the data itself.
//!
//! Each stored batch updates `bemi.worker_progress` in the same transaction as its rows, so the
//! progress row is exactly as durable as the data. After a restart the slot re-delivers every
//! transaction not yet confirmed; the changes at or before the stored progress are skipped, so
//! nothing is stored twice (the deterministic change id is the second line of defence).

use crate::stitch::Position;

/// The last stored position of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The commit LSN of the last transaction with stored changes.
    pub(crate) commit_lsn: u64,
    /// How many of its changes (a prefix, by sequence) are stored.
    pub(crate) stored_changes: u32,
    /// Whether all its changes are stored.
    pub(crate) complete: bool,
    /// When it committed (microseconds since the PostgreSQL epoch).
    pub(crate) committed_at_micros: i64,
}

impl Progress {
    /// Whether the change at `position` is already stored.
    pub(crate) fn covers(&self, position: Position) -> bool {
        position.commit_lsn < self.commit_lsn
            || (position.commit_lsn == self.commit_lsn
                && (self.complete || position.sequence < self.stored_changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(commit_lsn: u64, sequence: u32) -> Position {
        Position {
            commit_lsn,
            sequence,
        }
    }

    #[test]
    fn covers_earlier_commits_and_the_stored_prefix() {
        let partial = Progress {
            commit_lsn: 100,
            stored_changes: 3,
            complete: false,
            committed_at_micros: 0,
        };
        assert!(partial.covers(at(99, 1_000)));
        assert!(partial.covers(at(100, 2)));
        assert!(!partial.covers(at(100, 3)));
        assert!(!partial.covers(at(101, 0)));
        let complete = Progress {
            complete: true,
            ..partial
        };
        assert!(complete.covers(at(100, 3_000)));
        assert!(!complete.covers(at(101, 0)));
    }
}
