//! Sealing the stored prefix: the changes of one source database whose commit position is
//! below what the worker confirmed stored, in id order, in blocks chained to the last one.

use std::ops::Bound;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::pipeline::Stored;
use crate::seal::anchor::{Anchor, AnchorFile, hex};
use crate::seal::encoding::{ENCODING, Leaf, Lines, SETTINGS, copy_query, split_xmin};
use crate::seal::merkle::{BlockHeader, root};
use crate::seal::nats_anchor::NatsAnchors;
use crate::seal::written::Written;
use crate::sink::jetstream::NatsOptions;
use crate::{ConnectionOptions, Error, Result};

/// The most changes one block seals.
pub(crate) const BLOCK: usize = 10_000;

/// The most changes one read goes through looking for the worker's own, past others' (bounding
/// the memory a flood of forged rows could take).
const MOST_READ: usize = 64 * BLOCK;

/// Runs `query` (a `COPY` of [`copy_query`], with `xmin` when `with_xmin`) inside
/// `transaction`; its changes as leaves, with the `xmin` of each row version when asked.
pub(crate) async fn read_leaves(
    transaction: &tokio_postgres::Transaction<'_>,
    query: &str,
    with_xmin: bool,
) -> Result<Vec<(Leaf, Option<u32>)>> {
    let stream = transaction
        .copy_out(query)
        .await
        .map_err(Error::postgres("read changes to seal"))?;
    let mut stream = std::pin::pin!(stream);
    let mut lines = Lines::default();
    let mut leaves = Vec::new();
    let mut unreadable = 0_usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Error::postgres("read changes to seal"))?;
        lines.feed(&chunk, |line| {
            let read = if with_xmin {
                split_xmin(line)
                    .and_then(|(line, xmin)| Leaf::of_line(line).map(|leaf| (leaf, Some(xmin))))
            } else {
                Leaf::of_line(line).map(|leaf| (leaf, None))
            };
            match read {
                Some(read) => leaves.push(read),
                None => unreadable += 1,
            }
        });
    }
    if lines.is_partial() || unreadable > 0 {
        return Err(Error::Protocol(format!(
            "COPY of the changes to seal gave {unreadable} unreadable lines"
        )));
    }
    Ok(leaves)
}

/// Seals the changes of `database` in `stored` with ids within `upper` (every change there is
/// stored: none with a lower id can come later) that no block seals yet; returns the blocks it
/// sealed. With `written`, only the row versions the worker's transactions wrote are sealed
/// (see [`Written`]); the others are left unsealed and logged.
pub(crate) async fn seal_stored(
    client: &mut Client,
    stored: &str,
    database: &str,
    upper: Bound<Uuid>,
    written: Option<&Written>,
) -> Result<Vec<Anchor>> {
    let mut sealed = Vec::new();
    loop {
        let transaction = client
            .transaction()
            .await
            .map_err(Error::postgres("begin sealing"))?;
        transaction
            .batch_execute(SETTINGS)
            .await
            .map_err(Error::postgres("set up sealing"))?;
        // One sealer per chain at a time.
        transaction
            .execute(
                "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtextextended('bemi.seals/' || $1, 0))",
                &[&database],
            )
            .await
            .map_err(Error::postgres("lock the seals"))?;
        let last = transaction
            .query_opt(
                "SELECT block, last_id, hash FROM bemi.seals WHERE database = $1 \
                 ORDER BY block DESC LIMIT 1",
                &[&database],
            )
            .await
            .map_err(Error::postgres("read the last seal"))?;
        let (block, after, previous) = match &last {
            Some(row) => (
                row.get::<_, i64>(0) + 1,
                Some(row.get::<_, Uuid>(1)),
                hash_of(row.get::<_, Vec<u8>>(2)),
            ),
            None => (1, None, [0; 32]),
        };
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        // Rows no transaction of the worker wrote do not count towards a block: read past them.
        let mut limit = BLOCK;
        let (mut leaves, foreign, read_all) = loop {
            let query = copy_query(
                stored,
                database,
                lower,
                upper,
                Some(limit),
                written.is_some(),
            );
            let rows = read_leaves(&transaction, &query, written.is_some()).await?;
            let read = rows.len();
            let (kept, foreign): (Vec<Leaf>, Vec<Uuid>) = match written {
                None => (rows.into_iter().map(|(leaf, _)| leaf).collect(), Vec::new()),
                Some(written) => {
                    let writers = written.writers();
                    let mut kept = Vec::with_capacity(read);
                    let mut foreign = Vec::new();
                    for (leaf, xmin) in rows {
                        if writers.wrote(leaf.id, xmin.unwrap_or_default()) {
                            kept.push(leaf);
                        } else {
                            foreign.push(leaf.id);
                        }
                    }
                    (kept, foreign)
                }
            };
            if kept.is_empty() && read == limit {
                if limit >= MOST_READ {
                    tracing::error!(
                        database,
                        changes = read,
                        "the next stored changes were all written by other transactions than \
                         this worker's (inserted by another role): sealing stops here; `verify` \
                         names them"
                    );
                    transaction
                        .commit()
                        .await
                        .map_err(Error::postgres("end sealing"))?;
                    return Ok(sealed);
                }
                limit = limit.saturating_mul(2);
                continue;
            }
            break (kept, foreign, read < limit);
        };
        let read_all = read_all && leaves.len() <= BLOCK;
        leaves.truncate(BLOCK);
        let (Some(first), Some(last)) = (leaves.first(), leaves.last()) else {
            transaction
                .commit()
                .await
                .map_err(Error::postgres("end sealing"))?;
            return Ok(sealed);
        };
        let skipped: Vec<&Uuid> = foreign.iter().filter(|id| **id < last.id).collect();
        if let Some(first_skipped) = skipped.first() {
            tracing::error!(
                database,
                changes = skipped.len(),
                first = %first_skipped,
                "stored changes that no transaction of this worker wrote (inserted or rewritten \
                 by another role): left unsealed; `verify` names them"
            );
        }
        let (Some(first_committed_at), Some(last_committed_at)) =
            (first.committed_at(), last.committed_at())
        else {
            return Err(Error::Protocol(
                "COPY of the changes to seal gave a commit time that is not one".into(),
            ));
        };
        let hashes: Vec<[u8; 32]> = leaves.iter().map(|leaf| leaf.hash).collect();
        let header = BlockHeader {
            encoding: ENCODING,
            database,
            block,
            first_id: first.id,
            last_id: last.id,
            changes: i32::try_from(leaves.len()).unwrap_or(i32::MAX),
            root: root(&hashes),
            previous,
        };
        let ids: Vec<u8> = leaves.iter().flat_map(|leaf| *leaf.id.as_bytes()).collect();
        let leaf_bytes: Vec<u8> = hashes.concat();
        transaction
            .execute(
                "INSERT INTO bemi.seals (database, block, first_id, last_id, first_committed_at, \
                 last_committed_at, changes, ids, leaves, root, previous, hash, encoding) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                &[
                    &database,
                    &block,
                    &header.first_id,
                    &header.last_id,
                    &first_committed_at,
                    &last_committed_at,
                    &header.changes,
                    &ids,
                    &leaf_bytes,
                    &header.root.as_slice(),
                    &previous.as_slice(),
                    &header.hash().as_slice(),
                    &ENCODING,
                ],
            )
            .await
            .map_err(Error::postgres("store a seal"))?;
        transaction
            .commit()
            .await
            .map_err(Error::postgres("commit a seal"))?;
        sealed.push(Anchor {
            database: database.to_owned(),
            block,
            hash: hex(&header.hash()),
            changes: header.changes,
        });
        if let Some(written) = written {
            written.forget_sealed(header.last_id);
        }
        if read_all {
            return Ok(sealed);
        }
    }
}

/// Where the hashes of new seals are published outside the database, besides the log.
#[derive(Debug, Default)]
pub(crate) struct Anchors {
    /// An append-only file.
    pub(crate) file: Option<AnchorFile>,
    /// A JetStream stream that refuses deletion.
    pub(crate) nats: Option<NatsOptions>,
    /// The connection to it, once made.
    connected: Option<NatsAnchors>,
}

impl Anchors {
    /// Anchors in `file` and on `nats`, either optional.
    pub(crate) fn new(file: Option<std::path::PathBuf>, nats: Option<NatsOptions>) -> Self {
        Self {
            file: file.map(AnchorFile::new),
            nats,
            connected: None,
        }
    }

    /// Publishes the hashes of sealed `blocks`: in the log (whoever rewrites the database cannot
    /// rewrite it), the anchor file and the anchors stream. A failure is logged: the next
    /// anchored block binds the ones before it anyway.
    pub(crate) async fn publish(&mut self, blocks: &[Anchor]) {
        for block in blocks {
            tracing::info!(
                database = %block.database,
                block = block.block,
                changes = block.changes,
                hash = %block.hash,
                "sealed"
            );
            if let Some(file) = &self.file
                && let Err(error) = file.append(block)
            {
                tracing::error!(error = %crate::error_chain(&error), "cannot write the seal to the anchor file");
            }
            if let Err(error) = self.publish_to_nats(block).await {
                self.connected = None;
                tracing::error!(error = %crate::error_chain(&error), "cannot publish the seal to the anchors stream");
            }
        }
    }

    async fn publish_to_nats(&mut self, block: &Anchor) -> Result<()> {
        let Some(options) = &self.nats else {
            return Ok(());
        };
        if self.connected.is_none() {
            self.connected = Some(NatsAnchors::connect(options).await?);
        }
        match &self.connected {
            Some(connected) => connected.publish(block).await,
            None => Ok(()),
        }
    }
}

/// What connecting a sealer gave.
pub(crate) enum Connected {
    /// A connection to a destination with `bemi.seals`.
    Ready(Client),
    /// The destination has no `bemi.seals` (logged): sealing stops.
    NoSeals,
    /// A failure (logged): try again later.
    Later,
}

/// Connects a sealer as `application` to `destination` and checks for the seals table, once
/// per connection.
pub(crate) async fn connect(destination: &ConnectionOptions, application: &str) -> Connected {
    let connected = match destination.connect(application).await {
        Ok(connected) => connected,
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot connect to seal the stored changes; retrying later");
            return Connected::Later;
        }
    };
    match crate::seal::installed(&connected).await {
        Ok(true) => Connected::Ready(connected),
        Ok(false) => {
            tracing::warn!(
                "the destination has no bemi.seals: run `bemi-worker setup` again to seal the stored changes"
            );
            Connected::NoSeals
        }
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot look for bemi.seals; retrying later");
            Connected::Later
        }
    }
}

/// A 32-byte hash from a stored `bytea` (zeros when it has another length: it then fails to
/// chain, which `verify` reports).
pub(crate) fn hash_of(bytes: Vec<u8>) -> [u8; 32] {
    bytes.try_into().unwrap_or([0; 32])
}

/// The worker's sealer: after the store task reports a new stored position, at most every
/// `interval`, seals the changes of `database` committed before it. Failures are logged and
/// retried at the next report: sealing never stops capture.
pub(crate) async fn run(
    destination: ConnectionOptions,
    stored_table: String,
    database: String,
    mut stored: watch::Receiver<Stored>,
    interval: Duration,
    mut anchors: Anchors,
    written: Option<std::sync::Arc<Written>>,
) {
    let mut client: Option<Client> = None;
    loop {
        if stored.changed().await.is_err() {
            return;
        }
        let below_lsn = stored.borrow_and_update().lsn();
        if below_lsn == 0 {
            continue;
        }
        if client.as_ref().is_none_or(Client::is_closed) {
            match connect(&destination, "bemi-worker sealer").await {
                Connected::Ready(connected) => client = Some(connected),
                Connected::NoSeals => {
                    if let Some(written) = &written {
                        written.close();
                    }
                    return;
                }
                Connected::Later => {
                    tokio::time::sleep(interval).await;
                    continue;
                }
            }
        }
        let Some(connected) = client.as_mut() else {
            continue;
        };
        let below = Bound::Excluded(crate::change_row::change_id(0, below_lsn, 0));
        match seal_stored(
            connected,
            &stored_table,
            &database,
            below,
            written.as_deref(),
        )
        .await
        {
            Ok(blocks) => anchors.publish(&blocks).await,
            Err(error) => tracing::warn!(
                error = %crate::error_chain(&error),
                "sealing the stored changes failed; retrying later"
            ),
        }
        tokio::time::sleep(interval).await;
    }
}
