//! `bemi-worker partition-changes`: converts a `changes` table made before time partitions into
//! one partitioned by `committed_at` while the worker writes to it, without copying a row (see
//! `bemi_core::setup::ConversionStep`). Every step is idempotent: an interrupted run resumes
//! where it stopped when run again.

use std::time::{Duration, Instant};

use bemi_core::setup::{ConversionStep, Setup, conversion, legacy_partition_name};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::{ConnectionOptions, Error, Result};

/// How many times the swap tries to take the table's lock (5 s each) before giving up.
const SWAP_ATTEMPTS: u32 = 12;

/// How often the index build reports its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Conversion {
    /// Whether the table was partitioned already (it was only registered).
    pub already_partitioned: bool,
    /// The partition now holding the old table: every change committed before `boundary`.
    pub legacy_partition: Option<String>,
    /// Where the old table's range ends (a period start, UTC), as PostgreSQL prints it.
    pub boundary: Option<String>,
}

/// Converts the `changes` table of `setup` into one partitioned with the setup's
/// [`bemi_core::setup::Partitioning`], telling `progress` what it does.
///
/// # Errors
///
/// A setup without partitioning ([`Error::Config`]), a missing table, missing privileges (run
/// it as the table's owner), a lock the swap could not take within a minute (run it again:
/// it resumes), and connection failures.
pub async fn partition_changes(
    destination: &ConnectionOptions,
    setup: &Setup,
    progress: impl Fn(&str),
) -> Result<Conversion> {
    let options = setup.options();
    let partitioning = options.partitioning_of_changes();
    let Some(period) = partitioning.period() else {
        return Err(Error::Config(
            "partition-changes needs a partitioning (month, week or day), not none".into(),
        ));
    };
    let view = options.changes_table_name();
    let changes = &bemi_core::setup::stored_changes_table(view);
    let client = destination.connect("bemi-worker partition-changes").await?;
    let relkind: Option<i8> = client
        .query_opt(
            "SELECT c.relkind::\"char\" FROM pg_catalog.pg_class c \
             WHERE c.oid = pg_catalog.to_regclass($1)",
            &[&changes.to_string()],
        )
        .await
        .map_err(Error::postgres("look for the changes table"))?
        .map(|row| row.get(0));
    let kind = match relkind {
        None => {
            return Err(Error::Config(format!(
                "{changes} does not exist: `bemi-worker setup` creates it partitioned"
            )));
        }
        Some(kind) => u8::try_from(kind).unwrap_or_default(),
    };
    // The partition registry and the function creating partitions: on an unpartitioned table
    // nothing else changes (the table exists, so the install's CREATE TABLE does nothing).
    client
        .batch_execute(&setup.destination_sql())
        .await
        .map_err(Error::postgres("install the partition registry"))?;
    if kind == b'p' {
        progress("the changes table is partitioned already: registered, partitions created ahead");
        return Ok(Conversion {
            already_partitioned: true,
            legacy_partition: None,
            boundary: None,
        });
    }

    announce(&progress, ConversionStep::BuildIndex);
    build_index(&client, destination, setup, &progress).await?;

    announce(&progress, ConversionStep::CheckRange);
    let boundary = check_range(&client, setup, period, &progress).await?;

    announce(&progress, ConversionStep::Swap);
    let swap = conversion::swap(changes, view, partitioning, &boundary);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match client.batch_execute(&swap).await {
            Ok(()) => break,
            Err(error) => {
                let _ = client.batch_execute("ROLLBACK").await;
                if error.code() != Some(&SqlState::LOCK_NOT_AVAILABLE) || attempt >= SWAP_ATTEMPTS {
                    // The check would refuse every change once its boundary passes: it does
                    // not outlive a failed conversion (a run again validates it again).
                    let _ = client.batch_execute(&conversion::drop_check(changes)).await;
                    return Err(Error::postgres("swap in the partitioned table")(error));
                }
                progress(&format!(
                    "the table is busy (attempt {attempt} of {SWAP_ATTEMPTS}): trying again"
                ));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let legacy = legacy_partition_name(changes);
    progress(&format!(
        "done: {changes} is partitioned by {period}; {legacy} holds the changes committed before {boundary}"
    ));
    Ok(Conversion {
        already_partitioned: false,
        legacy_partition: Some(legacy),
        boundary: Some(boundary),
    })
}

fn announce(progress: &impl Fn(&str), step: ConversionStep) {
    progress(match step {
        ConversionStep::BuildIndex => {
            "step 1 of 3: building the unique index (id, committed_at) concurrently (writers go on)"
        }
        ConversionStep::CheckRange => {
            "step 2 of 3: checking that every change is older than the boundary (writers go on)"
        }
        _ => "step 3 of 3: swapping in the partitioned table (writers wait milliseconds)",
    });
}

/// Builds the unique index `(id, committed_at)` concurrently (again, if an interrupted run
/// left it invalid), reporting the build's progress.
async fn build_index(
    client: &Client,
    destination: &ConnectionOptions,
    setup: &Setup,
    progress: &impl Fn(&str),
) -> Result<()> {
    let changes = &bemi_core::setup::stored_changes_table(setup.options().changes_table_name());
    let invalid: Option<bool> = client
        .query_opt(&conversion::invalid_index_query(changes), &[])
        .await
        .map_err(Error::postgres("look for an interrupted index build"))?
        .map(|row| row.get(0));
    if invalid == Some(true) {
        progress("dropping the invalid index an interrupted run left");
        client
            .batch_execute(&conversion::drop_invalid_index(changes))
            .await
            .map_err(Error::postgres("drop the invalid index"))?;
    }
    let watcher = destination
        .connect("bemi-worker partition-changes progress")
        .await?;
    let started = Instant::now();
    let sql = conversion::build_index(changes);
    let build = client.batch_execute(&sql);
    tokio::pin!(build);
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    tick.tick().await;
    let built = loop {
        tokio::select! {
            built = &mut build => break built,
            _ = tick.tick() => {
                if let Ok(Some(row)) = watcher
                    .query_opt(
                        "SELECT p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total \
                         FROM pg_catalog.pg_stat_progress_create_index p \
                         WHERE p.relid = pg_catalog.to_regclass($1)",
                        &[&changes.to_string()],
                    )
                    .await
                {
                    let (phase, blocks_done, blocks_total): (String, i64, i64) =
                        (row.get(0), row.get(1), row.get(2));
                    let (tuples_done, tuples_total): (i64, i64) = (row.get(3), row.get(4));
                    let percent = |done: i64, total: i64| {
                        if total > 0 { format!("{:.0}%", done as f64 * 100.0 / total as f64) } else { "-".to_owned() }
                    };
                    progress(&format!(
                        "  {phase}: blocks {}, tuples {} ({:.0} s)",
                        percent(blocks_done, blocks_total),
                        percent(tuples_done, tuples_total),
                        started.elapsed().as_secs_f64()
                    ));
                }
            }
        }
    };
    built.map_err(Error::postgres("build the unique index (id, committed_at)"))?;
    progress(&format!(
        "  built in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Makes sure the validated check `committed_at < boundary` holds, keeping the boundary of an
/// earlier run while it is more than an hour ahead and no further than a new one would be;
/// returns the boundary.
async fn check_range(
    client: &Client,
    setup: &Setup,
    period: &str,
    progress: &impl Fn(&str),
) -> Result<String> {
    let changes = &bemi_core::setup::stored_changes_table(setup.options().changes_table_name());
    client
        .batch_execute("SET timezone = 'UTC'")
        .await
        .map_err(Error::postgres("set the session's time zone"))?;
    // Two period starts ahead: the old table takes the changes until then, which leaves the
    // conversion at least one whole period to finish.
    let fresh: String = client
        .query_one(
            "SELECT (pg_catalog.date_trunc($1, pg_catalog.now()) \
             + 2 * pg_catalog.concat('1 ', $1)::interval)::text",
            &[&period],
        )
        .await
        .map_err(Error::postgres("compute the boundary"))?
        .get(0);
    let existing = client
        .query_opt(&conversion::existing_check_query(changes), &[])
        .await
        .map_err(Error::postgres("look for the range check"))?
        .map(|row| (row.get::<_, String>(0), row.get::<_, bool>(1)));
    let mut reusable = None;
    if let Some((definition, validated)) = existing {
        let row = client
            .query_one(
                // A check this command did not write (no timestamp literal) is replaced.
                "SELECT b::text, COALESCE(b > pg_catalog.now() + interval '1 hour' \
                 AND b <= $2::text::timestamptz, false) \
                 FROM (SELECT pg_catalog.substring($1, '''(\\d{4}-\\d\\d-\\d\\d[^'']*)''')::timestamptz AS b) s",
                &[&definition, &fresh],
            )
            .await
            .map_err(Error::postgres("read the range check's boundary"))?;
        if row.get::<_, bool>(1) {
            reusable = Some((row.get::<_, String>(0), validated));
        }
    }
    let (boundary, validated) = match reusable {
        Some(found) => found,
        None => {
            client
                .batch_execute(&conversion::add_check(changes, &fresh))
                .await
                .map_err(Error::postgres("add the range check"))?;
            (fresh, false)
        }
    };
    if !validated {
        progress(&format!(
            "  validating committed_at < {boundary} over the whole table"
        ));
        let started = Instant::now();
        client
            .batch_execute(&conversion::validate_check(changes))
            .await
            .map_err(Error::postgres("validate the range check"))?;
        progress(&format!(
            "  validated in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(boundary)
}
