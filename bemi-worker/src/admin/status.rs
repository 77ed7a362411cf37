//! `bemi-worker status`: where the slot is, how far behind the worker is, and how much WAL the
//! slot keeps.

use std::fmt;

use bemi_core::setup::SetupOptions;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{ConnectionOptions, Error, Result};

/// The replication slot `slot` as the source sees it now, `None` when it does not exist.
///
/// # Errors
///
/// Query failures.
pub(crate) async fn slot_info(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<SlotInfo>> {
    Ok(client
        .query_opt(
            "SELECT s.active_pid, s.confirmed_flush_lsn::text, pg_catalog.pg_current_wal_lsn()::text, \
             pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, \
             pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), s.restart_lsn)::bigint, \
             s.wal_status, r.replay_lag::text, s.safe_wal_size \
             FROM pg_catalog.pg_replication_slots s \
             LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid \
             WHERE s.slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::postgres("read the replication slot"))?
        .map(|row| SlotInfo {
            active_pid: row.get(0),
            confirmed_flush_lsn: row.get(1),
            current_lsn: row.get(2),
            lag_bytes: row.get(3),
            retained_bytes: row.get(4),
            wal_status: row.get(5),
            replay_lag: row.get(6),
            wal_remaining_bytes: row.get(7),
        }))
}

/// The state of a bemi source and its worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The source, password masked.
    pub source: String,
    /// The slot's name.
    pub slot: String,
    /// The slot, when it exists.
    pub slot_info: Option<SlotInfo>,
    /// The newest stored commit, when anything was stored.
    pub last_stored_commit: Option<DateTime<Utc>>,
    /// When the worker last stored a batch.
    pub last_stored_at: Option<DateTime<Utc>>,
    /// Changes parked in `bemi.rejected` because the `changes` table refused them even with their
    /// values kept as text (`None`: no such table, the destination predates it).
    pub rejected_changes: Option<i64>,
    /// The time partitions of the `changes` table (`None`: one heap).
    pub partitions: Option<PartitionInfo>,
    /// The newest gap recorded in the source's `bemi.trail_gaps`: the slot was invalidated and
    /// recreated (`--on-slot-lost recreate`), and changes between the two positions are not in
    /// the trail. `None` when there is none (or no such table).
    pub last_trail_gap: Option<TrailGap>,
    /// The seals of this database's changes (`None`: no `bemi.seals`, the setup predates it).
    pub seals: Option<SealInfo>,
    /// The erasures asked for in this database (`None`: the setup predates erasure).
    pub erasures: Option<ErasureInfo>,
    /// What makes the trail incomplete or unreliable right now, one sentence each: tracked
    /// tables whose context trigger is missing or disabled, or whose replica identity is not
    /// `FULL` (old row images would hold only the key).
    pub warnings: Vec<String>,
}

/// How far the seals of one source database's changes reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct SealInfo {
    /// Blocks sealed.
    pub blocks: i64,
    /// Changes sealed.
    pub sealed_changes: i64,
    /// When the newest block was sealed.
    pub last_sealed_at: Option<DateTime<Utc>>,
    /// The commit time of the oldest change stored after the newest block: what `verify`
    /// cannot prove yet (`None`: every stored change is sealed).
    pub oldest_unsealed_commit: Option<DateTime<Utc>>,
}

/// The erasures asked for in one source database, and how many the worker carried out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ErasureInfo {
    /// Requests the worker carried out (`bemi.erasures`).
    pub carried_out: i64,
    /// Requests written after the last one carried out: the subjects' values are still stored
    /// until the worker reaches them.
    pub waiting: i64,
    /// When the oldest waiting request was made.
    pub oldest_waiting: Option<DateTime<Utc>>,
}

/// The erasures of `database`: requests in the source, carried out in the destination.
async fn erasure_info(
    source: &tokio_postgres::Client,
    destination: &tokio_postgres::Client,
    database: &str,
) -> Result<Option<ErasureInfo>> {
    if !crate::postgres::table_exists(source, "bemi.erasure_requests").await?
        || !crate::postgres::table_exists(destination, "bemi.erasures").await?
    {
        return Ok(None);
    }
    let done = destination
        .query_one(
            "SELECT count(*), coalesce(max(request_id), 0) FROM bemi.erasures WHERE database = $1",
            &[&database],
        )
        .await
        .map_err(Error::postgres("read the erasures carried out"))?;
    let (carried_out, last): (i64, i64) = (done.get(0), done.get(1));
    let waiting = match source
        .query_one(
            "SELECT count(*), min(requested_at) FROM bemi.erasure_requests WHERE id > $1",
            &[&last],
        )
        .await
    {
        Ok(waiting) => waiting,
        // A role set up before erasure may not read the requests: the rest of the status stands.
        Err(error)
            if error.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            tracing::warn!(
                "cannot read bemi.erasure_requests: GRANT SELECT ON bemi.erasure_requests to this role to see waiting erasures"
            );
            return Ok(None);
        }
        Err(error) => return Err(Error::postgres("read the waiting erasure requests")(error)),
    };
    Ok(Some(ErasureInfo {
        carried_out,
        waiting: waiting.get(0),
        oldest_waiting: waiting.get(1),
    }))
}

/// How long a stored change may stay unsealed before `status` warns (the worker seals every
/// few seconds).
const UNSEALED_WARNING: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// The seals of `database`'s changes in the destination.
async fn seal_info(
    client: &tokio_postgres::Client,
    options: &bemi_core::setup::SetupOptions,
    database: &str,
) -> Result<Option<SealInfo>> {
    if !crate::seal::installed(client).await? {
        return Ok(None);
    }
    let row = client
        .query_one(
            "SELECT count(*), coalesce(sum(changes), 0)::int8, max(sealed_at), \
             (SELECT last_id FROM bemi.seals WHERE database = $1 ORDER BY block DESC LIMIT 1) \
             FROM bemi.seals WHERE database = $1",
            &[&database],
        )
        .await
        .map_err(Error::postgres("read the seals"))?;
    let last_id: Option<uuid::Uuid> = row.get(3);
    let oldest_unsealed_commit: Option<DateTime<Utc>> = client
        .query_one(
            &format!(
                "SELECT min(committed_at) FROM {} WHERE database = $1 \
                 AND ($2::uuid IS NULL OR id > $2)",
                options.stored_changes_table()
            ),
            &[&database, &last_id],
        )
        .await
        .map_err(Error::postgres("find the unsealed changes"))?
        .get(0);
    Ok(Some(SealInfo {
        blocks: row.get(0),
        sealed_changes: row.get(1),
        last_sealed_at: row.get(2),
        oldest_unsealed_commit,
    }))
}

/// A gap in the trail, as `bemi.trail_gaps` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TrailGap {
    /// How many gaps are recorded for the slot, this one included.
    pub count: i64,
    /// The last position confirmed before the loss, if known.
    pub lost_after_lsn: Option<String>,
    /// The newest commit stored before the loss, if known.
    pub lost_after: Option<DateTime<Utc>>,
    /// Where the recreated slot started.
    pub resumed_at_lsn: String,
    /// When the slot was recreated.
    pub resumed_at: DateTime<Utc>,
}

/// The time partitions of a partitioned `changes` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PartitionInfo {
    /// The period of one partition (`day`, `week`, `month`).
    pub period: String,
    /// How many partitions there are, the default one included.
    pub count: i64,
    /// The newest partition (the one furthest ahead).
    pub newest: Option<String>,
    /// Changes in the default partition: committed where no partition existed (the worker
    /// could not create one in time). Moved out when their partition is created.
    pub default_rows: i64,
    /// The last `retention` run, if any.
    pub last_retention: Option<RetentionRun>,
}

/// A `retention` run, as `bemi.retention_runs` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RetentionRun {
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// The role that ran it.
    pub run_by: String,
    /// Whether it dropped nothing on purpose.
    pub dry_run: bool,
    /// How many partitions it dropped (or would have).
    pub dropped: i32,
    /// How many partitions legal holds kept.
    pub held: i32,
}

/// The replication slot's position and retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SlotInfo {
    /// The walsender streaming from the slot, if one is.
    pub active_pid: Option<i32>,
    /// The newest position the worker confirmed as stored.
    pub confirmed_flush_lsn: Option<String>,
    /// The server's current WAL position.
    pub current_lsn: String,
    /// WAL written since the confirmed position: how far behind the worker is, in bytes.
    pub lag_bytes: Option<i64>,
    /// WAL the slot keeps on disk, in bytes.
    pub retained_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (PostgreSQL's `wal_status`).
    pub wal_status: Option<String>,
    /// WAL that can still be written before the server invalidates the slot
    /// (`max_slot_wal_keep_size` less what it retains; PostgreSQL's `safe_wal_size`), `None`
    /// without a limit.
    pub wal_remaining_bytes: Option<i64>,
    /// The time between a commit and the worker confirming it, as the server measured it last.
    pub replay_lag: Option<String>,
}

/// How healthy a trail is, for monitoring checks: `bemi-worker status` exits with
/// [`Health::exit_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Streaming, within the lag limits, nothing to look at.
    Healthy,
    /// Needs a look: no worker streaming, lag above the warning limit, rejected changes,
    /// changes in the default partition, an incomplete trail (see [`Status::warnings`]).
    Warning,
    /// Changes are lost or about to be: no slot, a slot the server invalidated or about to
    /// (`wal_status` `lost` or `unreserved`), lag above the critical limit.
    Critical,
}

impl Health {
    /// 0 healthy, 1 warning, 2 critical (the convention of monitoring checks).
    pub fn exit_code(self) -> u8 {
        match self {
            Health::Healthy => 0,
            Health::Warning => 1,
            Health::Critical => 2,
        }
    }
}

/// The lag limits of [`Status::health`], in bytes of WAL behind the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagLimits {
    /// A lag from here on is a warning.
    pub warn_bytes: i64,
    /// A lag from here on is critical.
    pub critical_bytes: i64,
}

impl Default for LagLimits {
    /// 64 MiB for a warning, 1 GiB critical.
    fn default() -> Self {
        Self {
            warn_bytes: 64 << 20,
            critical_bytes: 1 << 30,
        }
    }
}

/// What `bemi-worker status --json` prints: [`Status`] with its health, in a documented,
/// versioned shape (`format` changes when a field changes meaning or goes away; fields may be
/// added).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport<'a> {
    /// `bemi-status/1`.
    pub format: &'static str,
    /// The health, as the exit code says it.
    pub health: Health,
    /// Why the health is not `healthy`, one sentence each.
    pub reasons: Vec<String>,
    /// The status.
    #[serde(flatten)]
    pub status: &'a Status,
}

/// The version of [`StatusReport`]'s shape.
pub const STATUS_FORMAT: &str = "bemi-status/1";

impl Status {
    /// The health of the trail under `limits`, with the reasons for it.
    pub fn health(&self, limits: LagLimits) -> (Health, Vec<String>) {
        let mut reasons = Vec::new();
        let mut health = Health::Healthy;
        let mut raise = |level: Health, reason: String| {
            health = health.max(level);
            reasons.push(reason);
        };
        match &self.slot_info {
            None => raise(
                Health::Critical,
                format!(
                    "the replication slot {} does not exist: nothing is captured",
                    self.slot
                ),
            ),
            Some(slot) => {
                match slot.wal_status.as_deref() {
                    Some("lost") => raise(
                        Health::Critical,
                        format!(
                            "the server invalidated the slot {} (wal_status lost): WAL it needed \
                             was removed, so changes are missing from the trail",
                            self.slot
                        ),
                    ),
                    Some("unreserved") => raise(
                        Health::Critical,
                        format!(
                            "the slot {} keeps more WAL than max_slot_wal_keep_size allows \
                             (wal_status unreserved): the next checkpoint may invalidate it",
                            self.slot
                        ),
                    ),
                    _ => {}
                }
                if slot.active_pid.is_none() {
                    raise(
                        Health::Warning,
                        format!("no worker is streaming from the slot {}", self.slot),
                    );
                }
                match slot.lag_bytes {
                    Some(lag) if lag >= limits.critical_bytes => raise(
                        Health::Critical,
                        format!(
                            "the worker is {lag} bytes of WAL behind (critical from {})",
                            limits.critical_bytes
                        ),
                    ),
                    Some(lag) if lag >= limits.warn_bytes => raise(
                        Health::Warning,
                        format!(
                            "the worker is {lag} bytes of WAL behind (warning from {})",
                            limits.warn_bytes
                        ),
                    ),
                    _ => {}
                }
            }
        }
        if let Some(rejected) = self.rejected_changes.filter(|count| *count > 0) {
            raise(
                Health::Warning,
                format!("{rejected} changes are parked in bemi.rejected"),
            );
        }
        for warning in &self.warnings {
            raise(Health::Warning, warning.clone());
        }
        (health, reasons)
    }

    /// The report `status --json` prints.
    pub fn report(&self, limits: LagLimits) -> StatusReport<'_> {
        let (health, reasons) = self.health(limits);
        StatusReport {
            format: STATUS_FORMAT,
            health,
            reasons,
            status: self,
        }
    }
}

/// Reads the status of the slot named in `options` and the worker's stored progress.
///
/// # Errors
///
/// Connection and query failures.
pub async fn status(
    source: &ConnectionOptions,
    destination: &ConnectionOptions,
    options: &SetupOptions,
) -> Result<Status> {
    let client = source.connect("bemi-worker status").await?;
    let slot = options.slot_name();
    let slot_info = slot_info(&client, slot).await?;
    let destination_client = destination.connect("bemi-worker status").await?;
    // The progress of the slot's current incarnation (see `bemi_core::setup::create_slot_sql`).
    let incarnation = crate::source::preflight::slot_incarnation(&client, slot).await?;
    let suffix = match &incarnation {
        Some(incarnation) => format!("/{}/{slot}/{incarnation}", source.database()),
        None => format!("/{}/{slot}", source.database()),
    };
    let progress = destination_client
        .query_opt(
            "SELECT max(committed_at), max(updated_at) FROM bemi.worker_progress \
             WHERE pg_catalog.right(source, pg_catalog.length($1)) = $1",
            &[&suffix],
        )
        .await;
    let (last_stored_commit, last_stored_at) = match progress {
        Ok(Some(row)) => (row.get(0), row.get(1)),
        Ok(None) => (None, None),
        // No progress table: the destination was never set up.
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            (None, None)
        }
        Err(error) => return Err(Error::postgres("read the worker's progress")(error)),
    };
    // No progress row: `ingest` processes (NATS) store without one; the newest stored change
    // of this database tells the same (an index scan on committed_at).
    let last_stored_commit = match last_stored_commit {
        Some(commit) => Some(commit),
        None => newest_stored_commit(&destination_client, options, source.database()).await?,
    };
    let rejected_changes = match destination_client
        .query_one("SELECT pg_catalog.count(*) FROM bemi.rejected", &[])
        .await
    {
        Ok(row) => Some(row.get(0)),
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            None
        }
        Err(error) => return Err(Error::postgres("count the rejected changes")(error)),
    };
    let partitions = partition_info(&destination_client, options).await?;
    let mut warnings = tracking_warnings(&client, options).await?;
    if let Some(boundary) = interrupted_conversion(&destination_client, options).await? {
        warnings.push(format!(
            "an interrupted `bemi-worker partition-changes` left the check {boundary} on {}: it \
             refuses changes committed after that time; run partition-changes again to finish",
            options.stored_changes_table()
        ));
    }
    if let Some(partitions) = partitions.as_ref().filter(|info| info.default_rows > 0) {
        warnings.push(format!(
            "{} changes are in the default partition of {} (no partition existed for their \
             time: is the worker's role missing EXECUTE on bemi.create_change_partitions, or \
             were partitions dropped?); the worker moves them when it creates their partition",
            partitions.default_rows,
            options.stored_changes_table()
        ));
    }
    let seals = seal_info(&destination_client, options, source.database()).await?;
    match &seals {
        None => warnings.push(
            "the destination has no bemi.seals: run `bemi-worker setup` again so the worker \
             seals what it stores (`verify` proves nothing without seals)"
                .to_owned(),
        ),
        Some(SealInfo {
            oldest_unsealed_commit: Some(oldest),
            ..
        }) if Utc::now() - *oldest > UNSEALED_WARNING => warnings.push(format!(
            "changes committed since {} are stored but not sealed (the worker seals every few \
             seconds: is it stopped, or failing to seal? its log says)",
            oldest.to_rfc3339()
        )),
        Some(_) => {}
    }
    let erasures = erasure_info(&client, &destination_client, source.database()).await?;
    if let Some(ErasureInfo {
        waiting,
        oldest_waiting: Some(oldest),
        ..
    }) = &erasures
        && Utc::now() - *oldest > UNSEALED_WARNING
    {
        warnings.push(format!(
            "{waiting} erasure requests wait since {}: the subjects' personal values stay stored \
             until the worker reaches them (is it stopped, or behind?)",
            oldest.to_rfc3339()
        ));
    }
    let last_trail_gap = last_trail_gap(&client, slot).await?;
    Ok(Status {
        seals,
        erasures,
        partitions,
        last_trail_gap,
        source: source.to_string(),
        slot: slot.to_owned(),
        slot_info,
        last_stored_commit,
        last_stored_at,
        rejected_changes,
        warnings,
    })
}

/// The newest gap recorded for `slot` in the source's `bemi.trail_gaps`, with how many there are.
async fn last_trail_gap(client: &tokio_postgres::Client, slot: &str) -> Result<Option<TrailGap>> {
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('bemi.trail_gaps') IS NOT NULL",
            &[],
        )
        .await
        .map_err(Error::postgres("look for bemi.trail_gaps"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT count(*) OVER (), lost_after_lsn::text, lost_after, resumed_at_lsn::text, \
             resumed_at FROM bemi.trail_gaps WHERE slot_name = $1 ORDER BY id DESC LIMIT 1",
            &[&slot],
        )
        .await;
    match row {
        Ok(row) => Ok(row.map(|row| TrailGap {
            count: row.get(0),
            lost_after_lsn: row.get(1),
            lost_after: row.get(2),
            resumed_at_lsn: row.get(3),
            resumed_at: row.get(4),
        })),
        // A role that may not read it (status needs no grant of its own for it).
        Err(error)
            if error.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            Ok(None)
        }
        Err(error) => Err(Error::postgres("read bemi.trail_gaps")(error)),
    }
}

/// The range check an interrupted conversion left on the unpartitioned `changes` table, as
/// PostgreSQL prints it.
async fn interrupted_conversion(
    client: &tokio_postgres::Client,
    options: &SetupOptions,
) -> Result<Option<String>> {
    let changes = &options.stored_changes_table();
    let row = client
        .query_opt(
            "SELECT pg_catalog.pg_get_constraintdef(c.oid) FROM pg_catalog.pg_constraint c \
             JOIN pg_catalog.pg_class t ON t.oid = c.conrelid \
             WHERE c.conrelid = pg_catalog.to_regclass($1) AND c.conname = $2 AND t.relkind = 'r'",
            &[
                &changes.to_string(),
                &bemi_core::setup::conversion::check_name(changes),
            ],
        )
        .await
        .map_err(Error::postgres("look for an interrupted conversion"))?;
    Ok(row.map(|row| row.get(0)))
}

/// The partitions of the `changes` table, if it is registered as partitioned.
async fn partition_info(
    client: &tokio_postgres::Client,
    options: &SetupOptions,
) -> Result<Option<PartitionInfo>> {
    let changes = &options.stored_changes_table();
    let registered = client
        .query_opt(
            "SELECT p.period, \
                    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_inherits i \
                     WHERE i.inhparent = pg_catalog.to_regclass(p.changes_table)), \
                    (SELECT max(c.relname::text) FROM pg_catalog.pg_inherits i \
                     JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
                     WHERE i.inhparent = pg_catalog.to_regclass(p.changes_table) \
                       AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT' \
                       AND c.relname::text LIKE '%\\_p________'), \
                    (SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
                     FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     WHERE i.inhparent = pg_catalog.to_regclass(p.changes_table) \
                       AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT') \
             FROM bemi.partitioned_changes p WHERE p.changes_table = $1 \
               AND pg_catalog.to_regclass(p.changes_table) IS NOT NULL",
            &[&changes.to_string()],
        )
        .await;
    let row = match registered {
        Ok(Some(row)) => row,
        Ok(None) => return Ok(None),
        // No registry: a setup from before partitions.
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(None);
        }
        Err(error) => {
            return Err(Error::postgres("read the partitions of the changes table")(
                error,
            ));
        }
    };
    // Its name was quoted by `format('%I.%I')`.
    let default_rows = match row.get::<_, Option<String>>(3) {
        Some(default_partition) => client
            .query_one(
                &format!("SELECT pg_catalog.count(*) FROM {default_partition}"),
                &[],
            )
            .await
            .map_err(Error::postgres("count the default partition's changes"))?
            .get(0),
        None => 0,
    };
    let last_retention = client
        .query_opt(
            "SELECT finished_at, run_by, dry_run, pg_catalog.jsonb_array_length(dropped), \
                    pg_catalog.jsonb_array_length(held) \
             FROM bemi.retention_runs WHERE changes_table = $1 ORDER BY id DESC LIMIT 1",
            &[&changes.to_string()],
        )
        .await;
    let last_retention = match last_retention {
        Ok(row) => row.map(|row| RetentionRun {
            finished_at: row.get(0),
            run_by: row.get(1),
            dry_run: row.get(2),
            dropped: row.get(3),
            held: row.get(4),
        }),
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            None
        }
        Err(error) => return Err(Error::postgres("read the last retention run")(error)),
    };
    Ok(Some(PartitionInfo {
        period: row.get(0),
        count: row.get(1),
        newest: row.get(2),
        default_rows,
        last_retention,
    }))
}

/// Tracked tables (those of the publication) whose trail is incomplete: no context trigger, a
/// disabled one or one that `session_replication_role = replica` skips, or a replica identity
/// other than `FULL`.
async fn tracking_warnings(
    client: &tokio_postgres::Client,
    options: &SetupOptions,
) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT pg_catalog.format('%I.%I', p.schemaname, p.tablename), c.relreplident::text, \
                    (SELECT t.tgenabled::text FROM pg_catalog.pg_trigger t \
                     WHERE t.tgrelid = c.oid AND t.tgname = '_bemi_context') \
             FROM pg_catalog.pg_publication_tables p \
             JOIN pg_catalog.pg_namespace n ON n.nspname = p.schemaname \
             JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
             WHERE p.pubname = $1 AND n.nspname <> 'bemi' \
             ORDER BY 1",
            &[&options.publication_name()],
        )
        .await
        .map_err(Error::postgres("check the tracked tables"))?;
    let mut warnings = Vec::new();
    for row in rows {
        let table: String = row.get(0);
        let identity: String = row.get(1);
        let trigger: Option<String> = row.get(2);
        match trigger.as_deref() {
            None => warnings.push(format!(
                "{table}: the context trigger _bemi_context is missing, so its changes carry no \
                 context; run `bemi-worker setup` again"
            )),
            Some("A") => {}
            Some("D") => warnings.push(format!(
                "{table}: the context trigger is disabled, so its changes carry no context; run \
                 `ALTER TABLE {table} ENABLE ALWAYS TRIGGER _bemi_context`"
            )),
            Some(_) => warnings.push(format!(
                "{table}: the context trigger is skipped under some session_replication_role; run \
                 `ALTER TABLE {table} ENABLE ALWAYS TRIGGER _bemi_context`"
            )),
        }
        if identity != "f" {
            warnings.push(format!(
                "{table}: REPLICA IDENTITY is not FULL, so UPDATE and DELETE record only the key \
                 of the old row (marked incomplete); run `ALTER TABLE {table} REPLICA IDENTITY FULL`"
            ));
        }
    }
    Ok(warnings)
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "source:              {}", self.source)?;
        let Some(slot) = &self.slot_info else {
            return writeln!(
                f,
                "slot:                {} (missing: run `bemi-worker setup`)",
                self.slot
            );
        };
        let state = slot.active_pid.map_or_else(
            || "no worker connected".to_owned(),
            |pid| format!("streaming (walsender pid {pid})"),
        );
        writeln!(f, "slot:                {} ({state})", self.slot)?;
        writeln!(
            f,
            "confirmed position:  {} (server at {})",
            slot.confirmed_flush_lsn.as_deref().unwrap_or("-"),
            slot.current_lsn
        )?;
        writeln!(f, "lag:                 {}", bytes(slot.lag_bytes))?;
        if let Some(replay_lag) = &slot.replay_lag {
            writeln!(f, "replay lag:          {replay_lag}")?;
        }
        let limit = match slot.wal_remaining_bytes {
            Some(remaining) => format!(
                ", {} more before max_slot_wal_keep_size invalidates the slot",
                bytes(Some(remaining))
            ),
            None => String::new(),
        };
        writeln!(
            f,
            "WAL retained:        {} ({}{limit})",
            bytes(slot.retained_bytes),
            slot.wal_status.as_deref().unwrap_or("-")
        )?;
        match self.last_stored_commit {
            Some(commit) => {
                let age = (Utc::now() - commit).num_seconds();
                writeln!(
                    f,
                    "last stored commit:  {} ({age} s ago)",
                    commit.to_rfc3339()
                )?
            }
            None => writeln!(f, "last stored commit:  none yet")?,
        }
        if let Some(seals) = &self.seals {
            writeln!(
                f,
                "seals:               {} changes in {} blocks, newest sealed {}{}",
                seals.sealed_changes,
                seals.blocks,
                seals
                    .last_sealed_at
                    .map_or_else(|| "never".to_owned(), |at| at.to_rfc3339()),
                seals
                    .oldest_unsealed_commit
                    .map_or_else(String::new, |oldest| format!(
                        "; not sealed yet: changes since {}",
                        oldest.to_rfc3339()
                    ))
            )?;
        }
        if let Some(erasures) = &self.erasures {
            writeln!(
                f,
                "erasures:            {} carried out{}",
                erasures.carried_out,
                erasures
                    .oldest_waiting
                    .map_or_else(String::new, |oldest| format!(
                        ", {} waiting since {}",
                        erasures.waiting,
                        oldest.to_rfc3339()
                    ))
            )?;
        }
        if self.partitions.is_none() {
            writeln!(
                f,
                "partitions:          none (one table: `bemi-worker partition-changes` converts it, \
                 retention needs partitions)"
            )?;
        }
        if let Some(partitions) = &self.partitions {
            writeln!(
                f,
                "partitions:          {} per {} (newest {}), default partition: {}",
                partitions.count,
                partitions.period,
                partitions.newest.as_deref().unwrap_or("-"),
                match partitions.default_rows {
                    0 => "empty".to_owned(),
                    rows => format!("{rows} changes"),
                }
            )?;
            match &partitions.last_retention {
                Some(run) => writeln!(
                    f,
                    "last retention:      {} by {}{}: {} partition(s) dropped, {} held",
                    run.finished_at.to_rfc3339(),
                    run.run_by,
                    if run.dry_run { " (dry run)" } else { "" },
                    run.dropped,
                    run.held
                )?,
                None => writeln!(
                    f,
                    "last retention:      never (`bemi-worker retention --keep ...` drops old partitions)"
                )?,
            }
        }
        if let Some(gap) = &self.last_trail_gap {
            writeln!(
                f,
                "trail gaps:          {} (the newest: changes committed after {} and before {} \
                 are missing; the slot was recreated at {})",
                gap.count,
                gap.lost_after_lsn
                    .as_deref()
                    .unwrap_or("an unknown position"),
                gap.resumed_at_lsn,
                gap.resumed_at.to_rfc3339()
            )?;
        }
        if let Some(rejected) = self.rejected_changes.filter(|count| *count > 0) {
            writeln!(
                f,
                "rejected changes:    {rejected} (refused by the changes table: see bemi.rejected)"
            )?;
        }
        for warning in &self.warnings {
            writeln!(f, "warning:             {warning}")?;
        }
        Ok(())
    }
}

fn bytes(value: Option<i64>) -> String {
    match value {
        None => "-".to_owned(),
        Some(bytes) if bytes < 1024 => format!("{bytes} B"),
        Some(bytes) if bytes < 1 << 20 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        Some(bytes) => format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20)),
    }
}

/// The commit time of the newest change of `database` in the changes table (`None`: none, or
/// no changes table yet).
async fn newest_stored_commit(
    client: &tokio_postgres::Client,
    options: &SetupOptions,
    database: &str,
) -> Result<Option<DateTime<Utc>>> {
    let sql = format!(
        "SELECT max(committed_at) FROM {} WHERE database = $1",
        options.stored_changes_table()
    );
    match client.query_one(&sql, &[&database]).await {
        Ok(row) => Ok(row.get(0)),
        Err(error) if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            Ok(None)
        }
        Err(error) => Err(Error::postgres("read the newest stored change")(error)),
    }
}
