//! The seals of the stored changes (tamper evidence): the worker seals the changes it stored,
//! in id order (commit position, then sequence) per source database, in blocks; each block
//! holds the ids and leaf hashes of its changes, their Merkle root, and the hash of the block
//! before it. `bemi-worker verify` recomputes them from the changes table.
//!
//! | column | holds |
//! | --- | --- |
//! | `database`, `block` | the chain (one per source database) and the block's number in it, from 1 |
//! | `first_id`, `last_id` | the block's first and last change, in id order |
//! | `first_committed_at`, `last_committed_at` | their commit times (retention drops by time) |
//! | `ids`, `leaves` | 16 and 32 bytes per change, in order: which changes, and their hashes |
//! | `root`, `previous`, `hash` | the Merkle root, the previous block's hash, this block's hash |
//! | `encoding` | how a change is encoded for its leaf hash (1: see the worker's `seal` module) |

/// The seals table, in the destination.
pub(super) const INSTALL: &str = r#"
CREATE TABLE IF NOT EXISTS bemi.seals (
    database text NOT NULL,
    block bigint NOT NULL,
    first_id uuid NOT NULL,
    last_id uuid NOT NULL,
    first_committed_at timestamptz NOT NULL,
    last_committed_at timestamptz NOT NULL,
    changes integer NOT NULL,
    ids bytea NOT NULL,
    leaves bytea NOT NULL,
    root bytea NOT NULL,
    previous bytea NOT NULL,
    hash bytea NOT NULL,
    encoding smallint NOT NULL,
    sealed_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    PRIMARY KEY (database, block)
);
"#;
