//! The Merkle root of a block's leaves and the hash that chains blocks (RFC 6962's prefixes:
//! 0 for a leaf, 1 for an inner node, so a leaf can never pass for a node).

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The root over `leaves`, in order: pairs hashed level by level, an odd last node carried up.
pub(crate) fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return Sha256::digest(b"").into();
    }
    let mut level: Vec<[u8; 32]> = leaves.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => {
                    let mut digest = Sha256::new();
                    digest.update([1_u8]);
                    digest.update(left);
                    digest.update(right);
                    digest.finalize().into()
                }
                [single] => *single,
                _ => [0; 32],
            })
            .collect();
    }
    level[0]
}

/// What a block's hash covers.
#[derive(Debug)]
pub(crate) struct BlockHeader<'a> {
    pub(crate) encoding: i16,
    pub(crate) database: &'a str,
    pub(crate) block: i64,
    pub(crate) first_id: Uuid,
    pub(crate) last_id: Uuid,
    pub(crate) changes: i32,
    pub(crate) root: [u8; 32],
    pub(crate) previous: [u8; 32],
}

impl BlockHeader<'_> {
    /// The block's hash: every field, lengths fixed or given, so no two headers share bytes.
    pub(crate) fn hash(&self) -> [u8; 32] {
        let mut digest = Sha256::new();
        digest.update([2_u8]);
        digest.update(b"bemi seal v1\n");
        digest.update(self.encoding.to_be_bytes());
        digest.update((self.database.len() as u64).to_be_bytes());
        digest.update(self.database.as_bytes());
        digest.update(self.block.to_be_bytes());
        digest.update(self.first_id.as_bytes());
        digest.update(self.last_id.as_bytes());
        digest.update(self.changes.to_be_bytes());
        digest.update(self.root);
        digest.update(self.previous);
        digest.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(byte: u8) -> [u8; 32] {
        [byte; 32]
    }

    #[test]
    fn every_leaf_and_its_place_count() {
        let leaves: Vec<[u8; 32]> = (1..=5).map(leaf).collect();
        let base = root(&leaves);
        assert_eq!(base, root(&leaves), "deterministic");
        let mut swapped = leaves.clone();
        swapped.swap(1, 2);
        assert_ne!(root(&swapped), base);
        assert_ne!(root(&leaves[..4]), base);
        let mut edited = leaves.clone();
        edited[4] = leaf(9);
        assert_ne!(root(&edited), base);
        assert_eq!(root(&[leaf(7)]), leaf(7));
    }
}
