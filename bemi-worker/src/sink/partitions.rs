//! Keeping the partitions of a partitioned `changes` table ahead of the changes stored: before a
//! batch is written, `bemi.create_change_partitions` is called when the batch reaches the last
//! period created (and once per store, for the first batch), so a change never waits for, and
//! is never refused for, a partition. When the call fails (a lock held for long, a missing
//! grant) the batch is written anyway (into the default partition if need be, which `status`
//! reports and the next successful call empties) and the call is retried a minute later.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::change_row::ChangeRow;
use crate::{Error, Result};

/// How long after a failed call the next one is tried.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// How often an unpartitioned table is looked at again (`partition-changes` converts it while
/// the worker runs).
const RECHECK_AFTER: Duration = Duration::from_secs(600);

/// Whether and how the `changes` table's partitions are kept.
#[derive(Debug)]
pub(crate) enum PartitionUpkeep {
    /// Not known yet: read on the first batch.
    Unknown,
    /// One heap (or a setup from before partitions): nothing to keep, until a look again.
    Unpartitioned {
        /// When it was found so.
        checked_at: Instant,
    },
    /// Registered in `bemi.partitioned_changes`.
    Kept {
        /// Changes committed from here on need the next call.
        refresh_after: Option<DateTime<Utc>>,
        /// After a failed call: not before this.
        retry_at: Option<Instant>,
    },
}

impl PartitionUpkeep {
    /// Makes sure the partitions for `rows` exist, as far as it can (failures are logged, and
    /// the rows go to the default partition until the next call succeeds).
    ///
    /// # Errors
    ///
    /// Only a failure to read whether the table is partitioned (the connection is gone).
    /// Returns whether it called `bemi.create_change_partitions` and the call succeeded (it may
    /// have moved changes out of the default partition).
    pub(crate) async fn prepare(
        &mut self,
        client: &Client,
        changes: &str,
        rows: &[ChangeRow],
    ) -> Result<bool> {
        let stale = match self {
            PartitionUpkeep::Unknown => true,
            PartitionUpkeep::Unpartitioned { checked_at } => checked_at.elapsed() >= RECHECK_AFTER,
            PartitionUpkeep::Kept { .. } => false,
        };
        if stale {
            *self = Self::load(client, changes).await?;
        }
        let PartitionUpkeep::Kept {
            refresh_after,
            retry_at,
        } = self
        else {
            return Ok(false);
        };
        let Some(newest) = rows.iter().map(|row| row.committed_at).max() else {
            return Ok(false);
        };
        let due = refresh_after.is_none_or(|after| newest >= after || Utc::now() >= after);
        if !due || retry_at.is_some_and(|at| Instant::now() < at) {
            return Ok(false);
        }
        let oldest = rows
            .iter()
            .map(|row| row.committed_at)
            .min()
            .unwrap_or(newest);
        match client
            .query_one(
                "SELECT bemi.create_change_partitions($1, $2)",
                &[&changes, &oldest],
            )
            .await
        {
            Ok(row) => {
                *refresh_after = Some(row.get(0));
                *retry_at = None;
                tracing::debug!(refresh_after = ?refresh_after, "partitions of the changes table are ready");
                return Ok(true);
            }
            Err(source) => {
                *retry_at = Some(Instant::now() + RETRY_AFTER);
                let error = crate::error_chain(&Error::Postgres {
                    action: format!("create the partitions of {changes} ahead"),
                    source,
                });
                tracing::warn!(
                    %error,
                    retry_in = ?RETRY_AFTER,
                    "changes without a partition go to the default partition until this succeeds"
                );
            }
        }
        Ok(false)
    }

    /// Reads whether `changes` is a registered partitioned table.
    async fn load(client: &Client, changes: &str) -> Result<Self> {
        let registered: bool = client
            .query_one(
                "SELECT pg_catalog.to_regclass('bemi.partitioned_changes') IS NOT NULL \
                 AND pg_catalog.to_regprocedure('bemi.create_change_partitions(text, timestamptz)') IS NOT NULL",
                &[],
            )
            .await
            .map_err(Error::postgres("look for bemi.partitioned_changes"))?
            .get(0);
        let unpartitioned = PartitionUpkeep::Unpartitioned {
            checked_at: Instant::now(),
        };
        if !registered {
            return Ok(unpartitioned);
        }
        let kept = match client
            .query_opt(
                "SELECT 1 FROM bemi.partitioned_changes WHERE changes_table = $1",
                &[&changes],
            )
            .await
        {
            Ok(row) => row.is_some(),
            // A worker role granted before partitions existed: changes are still stored (the
            // table routes them), only not ahead of time; said, and looked at again later.
            Err(error) if error.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                tracing::warn!(
                    "the worker's role cannot read bemi.partitioned_changes, so it cannot create \
                     partitions ahead: run the destination grants of `bemi-worker setup \
                     --print-sql --worker-role ROLE` (SELECT on bemi.partitioned_changes, EXECUTE \
                     on bemi.create_change_partitions)"
                );
                false
            }
            Err(error) => return Err(Error::postgres("read bemi.partitioned_changes")(error)),
        };
        Ok(if kept {
            PartitionUpkeep::Kept {
                refresh_after: None,
                retry_at: None,
            }
        } else {
            unpartitioned
        })
    }
}
