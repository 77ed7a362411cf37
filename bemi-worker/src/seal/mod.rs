//! Seals: tamper evidence for the stored changes.
//!
//! The worker seals the changes it stored, per source database, in id order (commit position,
//! then sequence: ids sort so), in blocks of at most 10,000: each change's leaf hash is SHA-256
//! over its canonical encoding (the stored row as `COPY` writes it), a block holds its changes'
//! ids and leaves, their Merkle root and the hash of the block before it, in `bemi.seals`.
//! [`verify()`] reads the seals
//! and the changes in one snapshot and names every change deleted, edited or inserted inside
//! the sealed range, and every seal that does not match itself or its chain. Someone who can
//! rewrite the changes and every seal consistently is caught only by anchors: the seal
//! hashes the worker logs and appends to a file outside the database.

pub(crate) mod anchor;
pub(crate) mod encoding;
pub(crate) mod merkle;
pub(crate) mod nats_anchor;
pub(crate) mod sealer;
pub mod verify;
pub(crate) mod written;

pub use nats_anchor::{DEFAULT_ANCHOR_STREAM, DEFAULT_ANCHOR_SUBJECT};
pub use verify::{AnchorSources, DEFAULT_READERS, Finding, VerifyOptions, VerifyReport, verify};

use crate::Result;

/// The highest id of the changes of `database` stored in `stored`, if any. (No `max(uuid)`
/// before PostgreSQL 16: the id index read backwards.)
pub(crate) async fn highest_stored<C: tokio_postgres::GenericClient>(
    client: &C,
    stored: &str,
    database: &str,
) -> Result<Option<uuid::Uuid>> {
    Ok(client
        .query_opt(
            &format!("SELECT id FROM {stored} WHERE database = $1 ORDER BY id DESC LIMIT 1"),
            &[&database],
        )
        .await
        .map_err(crate::Error::postgres("read the newest stored change"))?
        .map(|row| row.get(0)))
}

/// Whether the destination `client` is connected to has `bemi.seals` (setups before sealing
/// do not).
pub(crate) async fn installed<C: tokio_postgres::GenericClient>(client: &C) -> Result<bool> {
    crate::postgres::table_exists(client, "bemi.seals").await
}
