//! `bemi-worker retention`: drops whole partitions of the `changes` table older than a window
//! (detach, then drop: never `DELETE`), archiving each first when asked, keeping those a legal
//! hold covers, and recording the run in `bemi.retention_runs`.

use std::path::PathBuf;
use std::time::Duration;

use bemi_core::QualifiedName;
use bemi_core::setup::{ACTIVE_HOLDS_QUERY, PARTITIONS_QUERY, Setup};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::admin::archive::{ArchiveManifest, archive_partition};
use crate::admin::holds::held_table;
use crate::{ConnectionOptions, Error, Result};

/// The shortest window accepted: retention is for months of history, not for emptying the
/// table by a typo.
pub const MIN_KEEP: Duration = Duration::from_secs(24 * 3600);

/// How many times dropping a partition tries to take the table's lock (5 s each).
const DROP_ATTEMPTS: u32 = 6;

/// What to keep and where to archive.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionOptions {
    /// Changes committed within this window are kept (a partition is dropped only when all of
    /// its range is older).
    pub keep: Duration,
    /// Say what would be dropped, drop nothing (the run is still recorded).
    pub dry_run: bool,
    /// Archive each partition into this folder before dropping it.
    pub archive: Option<PathBuf>,
}

impl RetentionOptions {
    /// Keeps `keep`, drops for real, without archives.
    pub fn new(keep: Duration) -> Self {
        Self {
            keep,
            dry_run: false,
            archive: None,
        }
    }
}

/// One partition retention looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetainedPartition {
    /// The partition.
    pub partition: QualifiedName,
    /// Its lower bound (`None`: `MINVALUE`).
    pub from: Option<DateTime<Utc>>,
    /// Its upper bound (exclusive).
    pub to: DateTime<Utc>,
    /// How many changes it held.
    pub rows: i64,
    /// The holds keeping it (empty when dropped or droppable).
    pub holds: Vec<i64>,
    /// Its archive, when one was written.
    pub archive: Option<ArchiveManifest>,
}

/// What a retention run did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionReport {
    /// Changes committed before this are past the window.
    pub cutoff: DateTime<Utc>,
    /// Whether nothing was dropped on purpose.
    pub dry_run: bool,
    /// The partitions dropped (or, in a dry run, that would be).
    pub dropped: Vec<RetainedPartition>,
    /// The partitions past the window that legal holds keep.
    pub held: Vec<RetainedPartition>,
    /// The run's id in `bemi.retention_runs`.
    pub run_id: i64,
}

/// Drops the partitions of the `changes` table of `setup` that hold only changes older than
/// `options.keep`, telling `progress` what it does.
///
/// # Errors
///
/// A window shorter than [`MIN_KEEP`] or a table that is not partitioned ([`Error::Config`]),
/// an archive that cannot be written or does not read back ([`Error::Io`], [`Error::Archive`]:
/// its partition is kept), a partition that changed after it was archived (kept), a lock
/// not granted within half a minute, and database errors.
pub async fn retention(
    destination: &ConnectionOptions,
    setup: &Setup,
    options: &RetentionOptions,
    progress: impl Fn(&str),
) -> Result<RetentionReport> {
    if options.keep < MIN_KEEP {
        return Err(Error::Config(format!(
            "a retention window of {} s is shorter than a day: refusing",
            options.keep.as_secs()
        )));
    }
    let changes = &setup.options().stored_changes_table();
    let client = destination.connect("bemi-worker retention").await?;
    let registered = client
        .query_opt(
            "SELECT 1 FROM bemi.partitioned_changes WHERE changes_table = $1",
            &[&changes.to_string()],
        )
        .await;
    match registered {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(Error::Config(format!(
                "{changes} is not partitioned: retention drops whole partitions; convert it \
                 with `bemi-worker partition-changes` first"
            )));
        }
        Err(error) if error.code() == Some(&SqlState::UNDEFINED_TABLE) => {
            return Err(Error::Config(
                "this destination predates partitions: run `bemi-worker setup` again, then \
                 `bemi-worker partition-changes`"
                    .into(),
            ));
        }
        Err(error) => return Err(Error::postgres("read bemi.partitioned_changes")(error)),
    }
    let keep_seconds = i64::try_from(options.keep.as_secs()).unwrap_or(i64::MAX);
    let row = client
        .query_one(
            "SELECT pg_catalog.now(), pg_catalog.now() - pg_catalog.make_interval(secs => $1::float8)",
            &[&(keep_seconds as f64)],
        )
        .await
        .map_err(Error::postgres("compute the cutoff"))?;
    let (started_at, cutoff): (DateTime<Utc>, DateTime<Utc>) = (row.get(0), row.get(1));
    progress(&format!(
        "keeping the changes committed since {} ({} days)",
        cutoff.to_rfc3339(),
        keep_seconds / 86_400
    ));
    let holds = active_holds(&client).await?;
    let mut dropped = Vec::new();
    let mut held = Vec::new();
    for (partition, from, to) in partitions(&client, changes).await? {
        if to > cutoff {
            continue;
        }
        let rows: i64 = client
            .query_one(&format!("SELECT pg_catalog.count(*) FROM {partition}"), &[])
            .await
            .map_err(Error::postgres(format!("count {partition}")))?
            .get(0);
        let mut entry = RetainedPartition {
            partition: partition.clone(),
            from,
            to,
            rows,
            holds: Vec::new(),
            archive: None,
        };
        for hold in &holds {
            if hold.covers(&client, &partition).await? {
                entry.holds.push(hold.id);
            }
        }
        if !entry.holds.is_empty() {
            progress(&format!(
                "{partition}: {rows} changes past the window, kept by legal hold(s) {:?}",
                entry.holds
            ));
            held.push(entry);
            continue;
        }
        if options.dry_run {
            progress(&format!("{partition}: {rows} changes, would be dropped"));
            dropped.push(entry);
            continue;
        }
        if let Some(folder) = &options.archive {
            progress(&format!(
                "{partition}: archiving {rows} changes into {}",
                folder.display()
            ));
            let manifest =
                archive_partition(&client, changes, &partition, (from, to), folder).await?;
            progress(&format!(
                "  {} ({} changes, SHA-256 {}) verified",
                manifest.file, manifest.rows, manifest.sha256
            ));
            entry.archive = Some(manifest);
        }
        drop_partition(&client, changes, &partition, entry.rows, &progress).await?;
        progress(&format!("{partition}: dropped ({rows} changes)"));
        dropped.push(entry);
    }
    let describe = |entry: &RetainedPartition| {
        json!({
            "partition": entry.partition.to_string(),
            "from": entry.from.map(|from| from.to_rfc3339()),
            "to": entry.to.to_rfc3339(),
            "rows": entry.rows,
            "holds": entry.holds,
            "archive": entry.archive.as_ref().map(|manifest| json!({
                "file": manifest.file,
                "sha256": manifest.sha256,
                "rows": manifest.rows,
            })),
        })
    };
    let dropped_json = serde_json::Value::Array(dropped.iter().map(describe).collect());
    let held_json = serde_json::Value::Array(held.iter().map(describe).collect());
    let run_id: i64 = client
        .query_one(
            "INSERT INTO bemi.retention_runs (changes_table, started_at, keep, cutoff, dry_run, dropped, held) \
             VALUES ($1, $2, pg_catalog.make_interval(secs => $3::float8), $4, $5, $6, $7) RETURNING id",
            &[
                &changes.to_string(),
                &started_at,
                &(keep_seconds as f64),
                &cutoff,
                &options.dry_run,
                &dropped_json,
                &held_json,
            ],
        )
        .await
        .map_err(Error::postgres("record the run in bemi.retention_runs"))?
        .get(0);
    Ok(RetentionReport {
        cutoff,
        dry_run: options.dry_run,
        dropped,
        held,
        run_id,
    })
}

/// The partitions of `changes` other than the default one, oldest first.
async fn partitions(
    client: &Client,
    changes: &QualifiedName,
) -> Result<Vec<(QualifiedName, Option<DateTime<Utc>>, DateTime<Utc>)>> {
    let rows = client
        .query(PARTITIONS_QUERY, &[&changes.to_string()])
        .await
        .map_err(Error::postgres("list the partitions"))?;
    let mut partitions = Vec::with_capacity(rows.len());
    for row in rows {
        let schema: String = row.get(0);
        let name: String = row.get(1);
        let from: Option<DateTime<Utc>> = row.get(2);
        let to: DateTime<Utc> = row.get(3);
        partitions.push((QualifiedName::new(&schema, &name)?, from, to));
    }
    Ok(partitions)
}

/// A legal hold in force.
struct Hold {
    id: i64,
    table: Option<QualifiedName>,
}

impl Hold {
    /// Whether the hold keeps `partition`: a hold on every change does; a hold on a table does
    /// when the partition holds a change of it.
    async fn covers(&self, client: &Client, partition: &QualifiedName) -> Result<bool> {
        let Some(table) = &self.table else {
            return Ok(true);
        };
        let found = client
            .query_opt(
                &format!("SELECT 1 FROM {partition} WHERE \"table\" = $2 AND schema = $1 LIMIT 1"),
                &[&table.schema(), &table.name()],
            )
            .await
            .map_err(Error::postgres(format!(
                "look for held changes in {partition}"
            )))?;
        Ok(found.is_some())
    }
}

async fn active_holds(client: &Client) -> Result<Vec<Hold>> {
    let rows = client
        .query(ACTIVE_HOLDS_QUERY, &[])
        .await
        .map_err(Error::postgres("read the legal holds"))?;
    let mut holds = Vec::with_capacity(rows.len());
    for row in rows {
        holds.push(Hold {
            id: row.get(0),
            table: held_table(row.get(1), row.get(2))?,
        });
    }
    Ok(holds)
}

/// Detaches and drops `partition` in one transaction, after checking it still holds the
/// `rows` counted (and archived): a change stored into it since (a worker lagging beyond the
/// window) keeps it for the next run.
async fn drop_partition(
    client: &Client,
    changes: &QualifiedName,
    partition: &QualifiedName,
    rows: i64,
    progress: &impl Fn(&str),
) -> Result<()> {
    let sql = format!(
        "BEGIN;\n\
         SET LOCAL lock_timeout = '5s';\n\
         LOCK TABLE {partition} IN ACCESS EXCLUSIVE MODE;\n\
         DO $bemi$ BEGIN\n    \
             IF (SELECT pg_catalog.count(*) FROM {partition}) <> {rows} THEN\n        \
                 RAISE EXCEPTION 'bemi: % changed since it was counted: kept for the next run', '{partition_text}';\n    \
             END IF;\n\
         END $bemi$;\n\
         ALTER TABLE {changes} DETACH PARTITION {partition};\n\
         DROP TABLE {partition};\n\
         COMMIT;",
        partition_text = partition.to_string().replace('\'', "''"),
    );
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(error) => {
                let _ = client.batch_execute("ROLLBACK").await;
                if error.code() != Some(&SqlState::LOCK_NOT_AVAILABLE) || attempt >= DROP_ATTEMPTS {
                    return Err(Error::postgres(format!("drop {partition}"))(error));
                }
                progress(&format!(
                    "  {partition} is busy (attempt {attempt} of {DROP_ATTEMPTS}): trying again"
                ));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
