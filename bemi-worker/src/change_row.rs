//! [`ChangeRow`]: one change ready to store, and its deterministic id.

use std::sync::Arc;

use bemi_core::Operation;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One change ready to be stored in the `changes` table; JSON columns are JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    /// Identifies the change; derived from its source, commit LSN and sequence, so it is the
    /// same every time the change is delivered.
    pub id: Uuid,
    /// The primary key (see `bemi_core::Change::primary_key`).
    pub primary_key: Option<String>,
    /// The row before, as a JSON object.
    pub before: String,
    /// The row after, as a JSON object.
    pub after: String,
    /// For an UPDATE whose old row is complete: only the columns whose value changed, as a
    /// JSON object (`before` merged with it is `after`). Stored instead of `after`.
    pub after_changed: Option<String>,
    /// The context, as a JSON object.
    pub context: Arc<str>,
    /// The source database.
    pub database: Arc<str>,
    /// The table's schema.
    pub schema: Arc<str>,
    /// The table.
    pub table: Arc<str>,
    /// What happened.
    pub operation: Operation,
    /// When the transaction committed.
    pub committed_at: DateTime<Utc>,
    /// When the worker received the transaction.
    pub queued_at: DateTime<Utc>,
    /// The source transaction id, epoch-extended to 64 bits.
    pub transaction_id: i64,
    /// The change's WAL position.
    pub position: i64,
    /// The WAL position of the transaction's commit.
    pub commit_lsn: i64,
    /// The change's index within its transaction.
    pub sequence: i32,
    /// The key before an UPDATE that changed it (see `bemi_core::Change::previous_primary_key`).
    pub previous_primary_key: Option<String>,
    /// Why the change could not be rendered (a replication message the decoder cannot read,
    /// a change of a relation never described): it is parked in `bemi.rejected` with this
    /// reason and its raw bytes (in `after`) instead of being stored in `changes`.
    pub rejected: Option<Arc<str>>,
    /// The change's personal values (columns and context keys declared personal), each with
    /// its salt: stored in the `personal` column, erasable later (see [`crate::erasure`]).
    pub personal: Vec<crate::erasure::PersonalValue>,
}

impl ChangeRow {
    /// About what the row takes in memory, in bytes: its texts, plus a fixed share for the
    /// other columns (the context is counted whole, though rows of a statement share it).
    pub(crate) fn size(&self) -> usize {
        self.before.len()
            + self.after.len()
            + self.after_changed.as_ref().map_or(0, String::len)
            + self.context.len()
            + self.primary_key.as_ref().map_or(0, String::len)
            + self.previous_primary_key.as_ref().map_or(0, String::len)
            + 256
    }
}

/// The id of a change: a UUID (version 8) whose bits are, in order, the commit LSN (64 bits),
/// the sequence within the transaction (32 bits) and 26 bits of a hash of the source (cluster
/// system identifier and database). Ids sort in commit order, which keeps the primary-key index
/// append-mostly, and are unique per source by construction.
pub(crate) fn change_id(source_hash: u32, commit_lsn: u64, sequence: u32) -> Uuid {
    // RFC 9562 layout: 48 bits | version (4) | 12 bits | variant (2) | 62 bits.
    let high = (commit_lsn >> 16) << 16 | 0x8 << 12 | ((commit_lsn >> 4) & 0xfff);
    let low = 0b10 << 62
        | (commit_lsn & 0xf) << 58
        | u64::from(sequence) << 26
        | u64::from(source_hash & 0x03ff_ffff);
    Uuid::from_u64_pair(high, low)
}

/// A 32-bit FNV-1a hash of the source's identity.
pub(crate) fn source_hash(system_id: &str, database: &str) -> u32 {
    format!("{system_id}/{database}")
        .bytes()
        .fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ids_are_version_8_and_ordered_by_commit_then_sequence() {
        let id = change_id(7, 0x0000_0001_6B37_4D48, 3);
        assert_eq!(id.get_version_num(), 8);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        let a = change_id(1, 100, 5);
        let b = change_id(1, 100, 6);
        let c = change_id(1, 101, 0);
        assert!(a < b && b < c);
        assert_eq!(change_id(1, 100, 5), a, "deterministic");
        assert_ne!(change_id(2, 100, 5), a, "sources differ");
    }

    proptest! {
        #[test]
        fn distinct_positions_give_distinct_ids(
            positions in prop::collection::hash_set((any::<u64>(), any::<u32>()), 1..200),
            hash in any::<u32>(),
        ) {
            let ids: HashSet<Uuid> = positions.iter().map(|(lsn, seq)| change_id(hash, *lsn, *seq)).collect();
            prop_assert_eq!(ids.len(), positions.len());
        }

        #[test]
        fn order_follows_positions(a in (any::<u64>(), any::<u32>()), b in (any::<u64>(), any::<u32>())) {
            prop_assert_eq!(a.cmp(&b), change_id(9, a.0, a.1).cmp(&change_id(9, b.0, b.1)));
        }
    }
}
