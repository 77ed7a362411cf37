//! A chain's seals as `verify` reads them: their headers in block order (small: one row per
//! block), the lists of changes and leaves only for the blocks it checks, and each seal checked
//! against itself and the block before it.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Finding;
use crate::seal::encoding::KNOWN_ENCODINGS;
use crate::seal::merkle::{BlockHeader, root};
use crate::seal::sealer::hash_of;
use crate::{Error, Result};

/// A seal without its lists of changes and leaves.
#[derive(Debug)]
pub(super) struct SealHeader {
    pub(super) block: i64,
    pub(super) first_id: Uuid,
    pub(super) last_id: Uuid,
    pub(super) first_committed_at: DateTime<Utc>,
    pub(super) last_committed_at: DateTime<Utc>,
    changes: i32,
    root: [u8; 32],
    previous: [u8; 32],
    pub(super) hash: [u8; 32],
    encoding: i16,
}

/// A seal's lists: the ids of its changes and their leaves, in id order.
#[derive(Debug, Default)]
pub(super) struct SealLists {
    pub(super) ids: Vec<Uuid>,
    pub(super) leaves: Vec<[u8; 32]>,
}

/// The block before a seal in its chain.
#[derive(Debug, Clone, Copy)]
pub(super) struct Previous {
    pub(super) block: i64,
    pub(super) hash: [u8; 32],
}

impl Previous {
    /// What the first block of a chain follows.
    pub(super) const NONE: Self = Self {
        block: 0,
        hash: [0; 32],
    };
}

/// The headers of the seals of `database`, in block order.
pub(super) async fn headers(
    transaction: &tokio_postgres::Transaction<'_>,
    database: &str,
) -> Result<Vec<SealHeader>> {
    let rows = transaction
        .query(
            "SELECT block, first_id, last_id, first_committed_at, last_committed_at, changes, \
             root, previous, hash, encoding FROM bemi.seals WHERE database = $1 ORDER BY block",
            &[&database],
        )
        .await
        .map_err(Error::postgres("read the seals"))?;
    Ok(rows
        .iter()
        .map(|row| SealHeader {
            block: row.get(0),
            first_id: row.get(1),
            last_id: row.get(2),
            first_committed_at: row.get(3),
            last_committed_at: row.get(4),
            changes: row.get(5),
            root: hash_of(row.get(6)),
            previous: hash_of(row.get(7)),
            hash: hash_of(row.get(8)),
            encoding: row.get(9),
        })
        .collect())
}

/// The lists of the seal of `block` of `database` (empty when the row is gone).
pub(super) async fn lists(
    transaction: &tokio_postgres::Transaction<'_>,
    database: &str,
    block: i64,
) -> Result<SealLists> {
    let row = transaction
        .query_opt(
            "SELECT ids, leaves FROM bemi.seals WHERE database = $1 AND block = $2",
            &[&database, &block],
        )
        .await
        .map_err(Error::postgres("read a seal's changes"))?;
    let Some(row) = row else {
        return Ok(SealLists::default());
    };
    let (ids, leaves): (&[u8], &[u8]) = (row.get(0), row.get(1));
    Ok(SealLists {
        // A cut list keeps its partial last entry, which then matches nothing.
        ids: ids
            .chunks(16)
            .map(|chunk| Uuid::from_slice(chunk).unwrap_or_default())
            .collect(),
        leaves: leaves
            .chunks(32)
            .map(|chunk| <[u8; 32]>::try_from(chunk).unwrap_or([0; 32]))
            .collect(),
    })
}

/// Checks a seal against itself (with its `lists`, when read: a block outside the range is
/// checked by its header alone) and the block before it. Returns what is broken, and whether its
/// own content holds together, so that its changes can be checked by it.
pub(super) fn check(
    database: &str,
    seal: &SealHeader,
    lists: Option<&SealLists>,
    previous: Previous,
) -> (Option<Finding>, bool) {
    let header = BlockHeader {
        encoding: seal.encoding,
        database,
        block: seal.block,
        first_id: seal.first_id,
        last_id: seal.last_id,
        changes: seal.changes,
        root: seal.root,
        previous: seal.previous,
    };
    let own = if !KNOWN_ENCODINGS.contains(&seal.encoding) {
        Some("an encoding this worker does not know")
    } else if let Some(lists) = lists
        && (usize::try_from(seal.changes).ok() != Some(lists.ids.len())
            || lists.ids.len() != lists.leaves.len()
            || lists.ids.first() != Some(&seal.first_id)
            || lists.ids.last() != Some(&seal.last_id))
    {
        Some("its list of changes does not match its bounds")
    } else if lists.is_some_and(|lists| root(&lists.leaves) != seal.root) {
        Some("its leaves do not make its root")
    } else if header.hash() != seal.hash {
        Some("its hash does not match its content")
    } else {
        None
    };
    let why = own.or(if seal.block != previous.block + 1 {
        Some("the block before it is missing")
    } else if seal.previous != previous.hash {
        Some("it does not chain to the block before it")
    } else {
        None
    });
    let finding = why.map(|why| Finding::SealBroken {
        database: database.to_owned(),
        block: seal.block,
        why,
    });
    (finding, own.is_none())
}
