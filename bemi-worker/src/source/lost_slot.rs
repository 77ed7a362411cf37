//! Recreating a slot the server invalidated (`--on-slot-lost recreate`), and recording the gap
//! it leaves in the trail.

use tokio_postgres::Client;

use crate::pipeline::{Output, WorkerConfig};
use crate::{Error, Result};

/// Drops the invalidated slot, creates it again (a new incarnation) and records the gap in the
/// source's `bemi.trail_gaps`: from the last position (and stored commit time) before the loss
/// to the new slot's start. Changes committed in between are not in the trail: said in the
/// record and in the log, with the snapshot to run.
///
/// # Errors
///
/// The worker's role may not record the gap (checked before the slot is touched, so that no
/// gap goes unrecorded), or dropping, creating or recording fails.
pub(crate) async fn recreate(
    client: &Client,
    config: &WorkerConfig,
    lost_after_lsn: Option<&str>,
) -> Result<()> {
    let slot = &config.slot;
    let may_record: bool = client
        .query_one(
            // CASE: the privilege functions raise an error for a table that does not exist.
            "SELECT CASE WHEN pg_catalog.to_regclass('bemi.trail_gaps') IS NULL THEN false \
               ELSE pg_catalog.has_table_privilege('bemi.trail_gaps', 'INSERT') \
                 AND pg_catalog.has_sequence_privilege('bemi.trail_gaps_id_seq', 'USAGE') END",
            &[],
        )
        .await
        .map_err(Error::postgres("check that the gap can be recorded"))?
        .get(0);
    if !may_record {
        return Err(Error::Config(
            "the slot is lost and --on-slot-lost recreate must record the gap in bemi.trail_gaps \
             first: run setup again (it creates the table), and as its owner \
             GRANT SELECT, INSERT ON bemi.trail_gaps TO <worker role>; \
             GRANT USAGE ON SEQUENCE bemi.trail_gaps_id_seq TO <worker role>;"
                .into(),
        ));
    }
    let lost_incarnation = crate::source::preflight::slot_incarnation(client, slot).await?;
    let lost_after = last_stored_commit(config, lost_incarnation.as_deref()).await;
    client
        .execute(
            "SELECT pg_catalog.pg_drop_replication_slot(slot_name) \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(Error::postgres(format!("drop the lost slot {slot:?}")))?;
    client
        .batch_execute(&bemi_core::setup::create_slot_sql(slot))
        .await
        .map_err(Error::postgres(format!("create the slot {slot:?} again")))?;
    let resumed_incarnation = crate::source::preflight::slot_incarnation(client, slot).await?;
    let resumed_at_lsn: String = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots \
             WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(Error::postgres("read the new slot's position"))?
        .get(0);
    client
        .execute(
            "INSERT INTO bemi.trail_gaps (slot_name, lost_incarnation, lost_after_lsn, lost_after, \
               resumed_incarnation, resumed_at_lsn, reason) \
             VALUES ($1, $2::text::uuid, $3::text::pg_lsn, $4, $5::text::uuid, $6::text::pg_lsn, $7)",
            &[
                slot,
                &lost_incarnation,
                &lost_after_lsn,
                &lost_after,
                &resumed_incarnation,
                &resumed_at_lsn,
                &"the server invalidated the slot (max_slot_wal_keep_size): changes committed \
                  after lost_after_lsn and before resumed_at_lsn are not in the trail",
            ],
        )
        .await
        .map_err(Error::postgres("record the gap in bemi.trail_gaps"))?;
    tracing::error!(
        slot = %slot,
        lost_after_lsn = lost_after_lsn.unwrap_or("unknown"),
        lost_after = ?lost_after,
        resumed_at_lsn = %resumed_at_lsn,
        "the server had invalidated the slot; it is created again and the gap is recorded in \
         bemi.trail_gaps: changes committed between these positions are NOT in the trail. Run \
         `bemi-worker snapshot` to record the rows as they are now"
    );
    Ok(())
}

/// The newest commit stored from the lost incarnation, when the worker stores into a table it
/// can read (best effort: `None` otherwise).
async fn last_stored_commit(
    config: &WorkerConfig,
    incarnation: Option<&str>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let Output::Store { destination, .. } = &config.output else {
        return None;
    };
    let suffix = match incarnation {
        Some(incarnation) => format!(
            "/{}/{}/{incarnation}",
            config.source.database(),
            config.slot
        ),
        None => format!("/{}/{}", config.source.database(), config.slot),
    };
    let client = destination.connect("bemi-worker").await.ok()?;
    client
        .query_one(
            "SELECT max(committed_at) FROM bemi.worker_progress \
             WHERE pg_catalog.right(source, pg_catalog.length($1)) = $1",
            &[&suffix],
        )
        .await
        .ok()?
        .get(0)
}
