//! What `verify` reports: the findings and the counts.

use std::fmt;

use uuid::Uuid;

/// Something `verify` found that the seals do not account for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finding {
    /// A seal does not match itself (its leaves, root or hash were changed) or does not chain
    /// to the block before it (blocks rewritten, removed or inserted).
    SealBroken {
        /// The source database of the chain.
        database: String,
        /// The block.
        block: i64,
        /// What does not match.
        why: &'static str,
    },
    /// A sealed change is not stored any more.
    Deleted {
        /// The source database of the chain.
        database: String,
        /// The block that sealed it.
        block: i64,
        /// The change.
        id: Uuid,
    },
    /// A sealed change is stored with other values.
    Edited {
        /// The source database of the chain.
        database: String,
        /// The block that sealed it.
        block: i64,
        /// The change.
        id: Uuid,
    },
    /// A seal published outside the database (an anchor) is not in it, or has another hash: the
    /// chain was rewritten or cut after the anchor was written.
    AnchorMismatch {
        /// The source database of the chain.
        database: String,
        /// The anchored block.
        block: i64,
        /// What does not match.
        why: &'static str,
    },
    /// A line of the anchor file is not an anchor.
    AnchorUnreadable {
        /// The line's number, from 1.
        line: usize,
    },
    /// A message of the anchors stream is not an anchor.
    AnchorMessageUnreadable {
        /// The message's stream sequence.
        sequence: u64,
    },
    /// A change is stored inside the sealed range that no seal holds (forged, or moved there
    /// by an edit of its id).
    Inserted {
        /// The source database of the chain.
        database: String,
        /// The block whose range holds it; `None` between two blocks.
        block: Option<i64>,
        /// The change.
        id: Uuid,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::SealBroken {
                database,
                block,
                why,
            } => write!(f, "{database}: seal {block} is broken: {why}"),
            Finding::Deleted {
                database,
                block,
                id,
            } => write!(
                f,
                "{database}: change {id} (sealed in block {block}) was deleted"
            ),
            Finding::Edited {
                database,
                block,
                id,
            } => write!(
                f,
                "{database}: change {id} (sealed in block {block}) was edited"
            ),
            Finding::Inserted {
                database,
                block: Some(block),
                id,
            } => write!(
                f,
                "{database}: change {id} in the range of block {block} was never sealed"
            ),
            Finding::Inserted {
                database,
                block: None,
                id,
            } => write!(
                f,
                "{database}: change {id} between two blocks was never sealed"
            ),
            Finding::AnchorMismatch {
                database,
                block,
                why,
            } => write!(f, "{database}: anchored seal {block}: {why}"),
            Finding::AnchorUnreadable { line } => {
                write!(f, "line {line} of the anchor file is not an anchor")
            }
            Finding::AnchorMessageUnreadable { sequence } => {
                write!(
                    f,
                    "message {sequence} of the anchors stream is not an anchor"
                )
            }
        }
    }
}

/// What `verify` checked and found.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Blocks checked against the changes.
    pub blocks: u64,
    /// Sealed changes found intact.
    pub intact: u64,
    /// Blocks whose changes are all older than the newest partition retention dropped (the end
    /// of its range, as `bemi.retention_runs` recorded it): their seals are checked, not their
    /// changes.
    pub expired_blocks: u64,
    /// Blocks outside `--from`/`--to`: checked against their headers and chained, their
    /// changes not read.
    pub outside_range: u64,
    /// Changes stored after the last seal (not sealed yet).
    pub unsealed_after: u64,
    /// Changes stored before the first seal (stored before sealing began).
    pub unsealed_before: u64,
    /// Anchors checked against the seals.
    pub anchors: u64,
    /// What does not match, in chain and id order.
    pub findings: Vec<Finding>,
}

impl VerifyReport {
    /// Whether every seal and every sealed change matched.
    pub fn is_intact(&self) -> bool {
        self.findings.is_empty()
    }
}
