//! `verify`: recomputes every seal from the changes table and names what does not match.

use std::cell::Cell;
use std::ops::Bound;
use std::path::PathBuf;

use bemi_core::QualifiedName;
use chrono::{DateTime, Utc};
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::seal::anchor;
use crate::seal::encoding::SETTINGS;
use crate::{ConnectionOptions, Error, NatsOptions, Result};

pub use report::{Finding, VerifyReport};

mod block;
mod chain;
mod report;

/// How many connections read the changes by default: PostgreSQL writing the rows out costs more
/// than hashing them, so a second connection puts a second server core to work.
pub const DEFAULT_READERS: usize = 2;

/// The anchors `verify` checks the seals against: published outside the database as the seals
/// were made.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AnchorSources {
    /// The anchor file (`run --anchor-file`).
    pub file: Option<PathBuf>,
    /// The anchors stream (`run --anchor-nats-url`).
    pub nats: Option<NatsOptions>,
}

impl AnchorSources {
    /// No anchors: the seals are checked against themselves and the changes only.
    pub fn none() -> Self {
        Self::default()
    }

    /// The anchors of the file `path`.
    #[must_use]
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// The anchors of the stream `options` names (its `stream` and `subject`).
    #[must_use]
    pub fn nats(mut self, options: NatsOptions) -> Self {
        self.nats = Some(options);
        self
    }
}

/// What `verify` checks, and how it reads.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifyOptions {
    /// Only the chain of this source database; `None`: every chain.
    pub database: Option<String>,
    /// Only the blocks holding changes committed at or after this time (every block is still
    /// checked against its header and chained).
    pub from: Option<DateTime<Utc>>,
    /// Only the blocks holding changes committed at or before this time.
    pub to: Option<DateTime<Utc>>,
    /// The anchors to check the seals against.
    pub anchors: AnchorSources,
    /// How many connections read blocks at once (at least 1), all in one snapshot.
    pub readers: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            database: None,
            from: None,
            to: None,
            anchors: AnchorSources::none(),
            readers: DEFAULT_READERS,
        }
    }
}

impl VerifyOptions {
    /// Every chain, every block, no anchors, [`DEFAULT_READERS`] connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only the chain of the source database `database`.
    #[must_use]
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Only the blocks holding changes committed at or after `from`.
    #[must_use]
    pub fn from(mut self, from: DateTime<Utc>) -> Self {
        self.from = Some(from);
        self
    }

    /// Only the blocks holding changes committed at or before `to`.
    #[must_use]
    pub fn to(mut self, to: DateTime<Utc>) -> Self {
        self.to = Some(to);
        self
    }

    /// Checks the seals against `anchors` too.
    #[must_use]
    pub fn anchors(mut self, anchors: AnchorSources) -> Self {
        self.anchors = anchors;
        self
    }

    /// Reads blocks over `readers` connections at once (at least 1).
    #[must_use]
    pub fn readers(mut self, readers: usize) -> Self {
        self.readers = readers.max(1);
        self
    }

    /// Whether the block `seal` holds changes of the range.
    fn covers(&self, seal: &chain::SealHeader) -> bool {
        self.from.is_none_or(|from| seal.last_committed_at >= from)
            && self.to.is_none_or(|to| seal.first_committed_at <= to)
    }
}

/// Recomputes the seals of `changes_table` in `destination` and compares them with the stored
/// changes and with the anchors, as `options` says.
///
/// Every seal of a chain is checked against its header and the block before it; the blocks in
/// the range are also checked against their lists of changes and the changes stored in their
/// range (and in the gap before it), read over `options.readers` connections that share one
/// repeatable-read snapshot.
///
/// # Errors
///
/// Connection and query errors; [`Error::Config`] when the destination has no seals table;
/// [`Error::Io`] when the anchor file cannot be read; [`Error::Nats`] when the anchors stream
/// cannot.
pub async fn verify(
    destination: &ConnectionOptions,
    changes_table: &QualifiedName,
    options: &VerifyOptions,
) -> Result<VerifyReport> {
    // One long read: on a runtime of its own thread, the connections' tasks and the readers
    // share that thread, and each row costs no wake-up across threads (a third less CPU per
    // change than on a multi-threaded runtime, measured).
    let (destination, changes_table) = (destination.clone(), changes_table.clone());
    let options = options.clone();
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                action: "start verify's runtime".to_owned(),
                source,
            })?;
        runtime.block_on(verify_on_this_thread(
            &destination,
            &changes_table,
            &options,
        ))
    })
    .await
    .map_err(|source| Error::Internal {
        action: "verify".to_owned(),
        source,
    })?
}

/// [`verify`], on the current runtime.
async fn verify_on_this_thread(
    destination: &ConnectionOptions,
    changes_table: &QualifiedName,
    options: &VerifyOptions,
) -> Result<VerifyReport> {
    let mut anchored = Vec::new();
    let mut unreadable_anchors = Vec::new();
    if let Some(path) = &options.anchors.file {
        let (found, unreadable) = anchor::read(path)?;
        anchored.extend(found);
        unreadable_anchors.extend(
            unreadable
                .into_iter()
                .map(|line| Finding::AnchorUnreadable { line }),
        );
    }
    if let Some(nats) = &options.anchors.nats {
        let (found, unreadable) = crate::seal::nats_anchor::read(nats).await?;
        anchored.extend(found);
        unreadable_anchors.extend(
            unreadable
                .into_iter()
                .map(|sequence| Finding::AnchorMessageUnreadable { sequence }),
        );
    }
    let mut client = destination.connect("bemi-worker verify").await?;
    let stored = bemi_core::setup::stored_changes_table(changes_table).to_string();
    let transaction = begin_reading(&mut client).await?;
    transaction
        .batch_execute(SETTINGS)
        .await
        .map_err(Error::postgres("set up verifying"))?;
    if !crate::seal::installed(&transaction).await? {
        return Err(Error::Config(
            "the destination has no bemi.seals: run `bemi-worker setup` again (sealing came in 0.1)"
                .into(),
        ));
    }
    // The other readers see what this transaction sees.
    let mut others = Vec::new();
    let snapshot: Option<String> = if options.readers > 1 {
        for _ in 1..options.readers {
            others.push(destination.connect("bemi-worker verify").await?);
        }
        Some(
            transaction
                .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
                .await
                .map_err(Error::postgres("export verify's snapshot"))?
                .get(0),
        )
    } else {
        None
    };
    let mut readers = Vec::with_capacity(options.readers);
    for other in &mut others {
        let reader = begin_reading(other).await?;
        let snapshot = snapshot.as_deref().unwrap_or_default();
        reader
            .batch_execute(&format!(
                "SET TRANSACTION SNAPSHOT {}; {SETTINGS}",
                bemi_core::quote_literal(snapshot)
            ))
            .await
            .map_err(Error::postgres("share verify's snapshot"))?;
        readers.push(reader);
    }
    let cutoff: Option<DateTime<Utc>> = transaction
        .query_one(
            "SELECT max((dropped_partition ->> 'to')::timestamptz) FROM bemi.retention_runs, \
             pg_catalog.jsonb_array_elements(dropped) AS dropped_partition \
             WHERE NOT dry_run AND changes_table = $1",
            &[&stored],
        )
        .await
        .map_err(Error::postgres("read the retention runs"))?
        .get(0);
    let databases: Vec<String> = transaction
        .query(
            "SELECT DISTINCT database FROM bemi.seals WHERE $1::text IS NULL OR database = $1 \
             ORDER BY database",
            &[&options.database],
        )
        .await
        .map_err(Error::postgres("read the sealed databases"))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut report = VerifyReport::default();
    readers.insert(0, transaction);
    for database in &databases {
        verify_chain(&readers, &stored, database, cutoff, options, &mut report).await?;
    }
    let transaction = readers.swap_remove(0);
    report.findings.extend(unreadable_anchors);
    for anchored in anchored.iter().filter(|anchored| {
        options
            .database
            .as_deref()
            .is_none_or(|only| only == anchored.database)
    }) {
        report.anchors += 1;
        let found: Option<Vec<u8>> = transaction
            .query_opt(
                "SELECT hash FROM bemi.seals WHERE database = $1 AND block = $2",
                &[&anchored.database, &anchored.block],
            )
            .await
            .map_err(Error::postgres("read an anchored seal"))?
            .map(|row| row.get(0));
        let why = match found {
            None => Some("the block is gone"),
            Some(hash) if anchor::hex(&hash) != anchored.hash => {
                Some("its hash is not the anchored one: the chain was rewritten")
            }
            Some(_) => None,
        };
        if let Some(why) = why {
            report.findings.push(Finding::AnchorMismatch {
                database: anchored.database.clone(),
                block: anchored.block,
                why,
            });
        }
    }
    Ok(report)
}

/// A read-only, repeatable-read transaction on `client`.
async fn begin_reading(client: &mut tokio_postgres::Client) -> Result<Transaction<'_>> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(Error::postgres("begin verifying"))
}

/// How many changes of `database` are stored with ids above `above` and below `below`.
async fn count_range(
    transaction: &Transaction<'_>,
    stored: &str,
    database: &str,
    above: Option<Uuid>,
    below: Option<Uuid>,
) -> Result<u64> {
    let mut sql = format!("SELECT count(*) FROM {stored} WHERE database = $1");
    let mut bounds = Vec::new();
    for (bound, comparison) in [(above, '>'), (below, '<')] {
        if let Some(bound) = bound {
            bounds.push(bound);
            sql.push_str(&format!(" AND id {comparison} ${}", bounds.len() + 1));
        }
    }
    let mut parameters: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&database];
    parameters.extend(
        bounds
            .iter()
            .map(|bound| bound as &(dyn tokio_postgres::types::ToSql + Sync)),
    );
    let count: i64 = transaction
        .query_one(&sql, &parameters)
        .await
        .map_err(Error::postgres("count unsealed changes"))?
        .get(0);
    Ok(u64::try_from(count).unwrap_or_default())
}

/// Checks the chain of `database`: every header in block order, the blocks of the range over
/// `readers` (the first of which reads the rest), findings put back in chain order.
async fn verify_chain(
    readers: &[Transaction<'_>],
    stored: &str,
    database: &str,
    cutoff: Option<DateTime<Utc>>,
    options: &VerifyOptions,
    report: &mut VerifyReport,
) -> Result<()> {
    let Some(main) = readers.first() else {
        return Ok(());
    };
    let seals = chain::headers(main, database).await?;
    if let Some(first) = seals.first() {
        report.unsealed_before +=
            count_range(main, stored, database, None, Some(first.first_id)).await?;
    }
    let mut placed: Vec<(usize, Vec<Finding>)> = Vec::new();
    let mut jobs = Vec::new();
    let mut previous = chain::Previous::NONE;
    let mut previous_last: Option<Uuid> = None;
    for (index, seal) in seals.iter().enumerate() {
        if options.covers(seal) {
            // The gap after it too when the next block is outside the range (no job reads it).
            let upper = match seals.get(index + 1) {
                Some(next) if !options.covers(next) => Bound::Excluded(next.first_id),
                _ => Bound::Included(seal.last_id),
            };
            jobs.push(block::Job {
                index,
                seal,
                previous,
                lower: previous_last.map_or(Bound::Included(seal.first_id), Bound::Excluded),
                upper,
                expired: cutoff.is_some_and(|cutoff| seal.last_committed_at < cutoff),
                straddles: cutoff.is_some_and(|cutoff| seal.first_committed_at < cutoff),
            });
        } else {
            report.outside_range += 1;
            let (broken, _) = chain::check(database, seal, None, previous);
            placed.push((index, broken.into_iter().collect()));
        }
        previous = chain::Previous {
            block: seal.block,
            hash: seal.hash,
        };
        previous_last = Some(seal.last_id);
    }
    // Each reader takes the next block not taken yet: they run on this one thread, so a cell
    // is the queue.
    let next = Cell::new(0_usize);
    let read = readers.iter().map(|reader| {
        let (jobs, next) = (&jobs, &next);
        async move {
            let mut outcomes = Vec::new();
            while let Some(job) = jobs.get(next.get()) {
                next.set(next.get() + 1);
                outcomes.push(block::check(reader, stored, database, job).await?);
            }
            Ok::<_, Error>(outcomes)
        }
    });
    for outcome in futures_util::future::try_join_all(read)
        .await?
        .into_iter()
        .flatten()
    {
        report.blocks += u64::from(outcome.compared);
        report.expired_blocks += u64::from(outcome.expired);
        report.intact += outcome.intact;
        placed.push((outcome.index, outcome.findings));
    }
    placed.sort_by_key(|(index, _)| *index);
    report
        .findings
        .extend(placed.into_iter().flat_map(|(_, findings)| findings));
    if let Some(last) = seals.last() {
        report.unsealed_after +=
            count_range(main, stored, database, Some(last.last_id), None).await?;
    }
    Ok(())
}
