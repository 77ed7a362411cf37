//! `bemi-worker`: set up, run, inspect and remove bemi's change capture.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bemi_core::QualifiedName;
use bemi_core::policy::{ColumnAction, ColumnPolicies};
use bemi_core::revert::Revert;
use bemi_core::setup::{Partitioning, Setup, SetupOptions};
use bemi_worker::{ConnectionOptions, Ingest, IngestConfig, NatsOptions, Worker, WorkerConfig};
use clap::{Args, Parser, Subcommand};

mod anchor_args;
mod console_args;
mod erase_args;
mod metrics_args;
mod time_args;
mod verify_args;

use console_args::ConsoleArgs;
use metrics_args::MetricsArgs;

/// Captures every row change of PostgreSQL, with the application context that caused it, into
/// a `changes` table.
#[derive(Debug, Parser)]
#[command(name = "bemi-worker", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text, or as one JSON object per line for log pipelines (each with the
    /// command, the slot and the stage it comes from, in `spans`).
    #[arg(
        long,
        global = true,
        value_enum,
        env = "BEMI_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

/// How log lines are written (on stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Command {
    /// The command's name and the slot it works on (`None` for `ingest`, which has none).
    fn describe(&self) -> (&'static str, Option<&str>) {
        match self {
            Command::Setup(args) => ("setup", Some(&args.common.slot)),
            Command::Run(args) => ("run", Some(&args.common.slot)),
            Command::Status(args) => ("status", Some(&args.common.slot)),
            Command::Capture(args) => ("capture", Some(&args.run.common.slot)),
            Command::Ingest(_) => ("ingest", None),
            Command::Console(_) => ("console", None),
            Command::Teardown(args) => ("teardown", Some(&args.common.slot)),
            Command::Snapshot(args) => ("snapshot", Some(&args.common.slot)),
            Command::Revert(args) => ("revert", Some(&args.common.slot)),
            Command::PartitionChanges(args) => ("partition-changes", Some(&args.common.slot)),
            Command::Retention(args) => ("retention", Some(&args.common.slot)),
            Command::RestoreArchive(args) => ("restore-archive", Some(&args.common.slot)),
            Command::Hold(args) => ("hold", Some(&args.common.slot)),
            Command::Verify(args) => ("verify", Some(&args.common.slot)),
            Command::Erase(args) => ("erase", Some(&args.common.slot)),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install triggers, publication, slot and the changes table (idempotent).
    Setup(SetupArgs),
    /// Stream changes into the changes table until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Show the slot's position, lag and retained WAL, and the last stored commit (and, with
    /// --nats-url, the JetStream stream and the ingest consumer's backlog).
    Status(StatusArgs),
    /// Like `run`, but publish the changes to NATS JetStream for `ingest` processes to store
    /// (scale storage out). The slot is confirmed once JetStream stored the changes.
    Capture(Box<CaptureArgs>),
    /// Store the changes `capture` published, sharing the work with any other `ingest`
    /// processes, until SIGINT or SIGTERM.
    Ingest(IngestArgs),
    /// Serve the console: a web UI to search changes, read a change's diff and follow a
    /// record's timeline (loopback by default; elsewhere with BEMI_CONSOLE_TOKEN).
    Console(ConsoleArgs),
    /// Remove triggers, publication and slot (the changes table is kept unless
    /// --drop-changes).
    Teardown(TeardownArgs),
    /// Record the current rows of tracked tables once, as SNAPSHOT changes: the baseline time
    /// travel needs for rows that never change. Each table is locked against writes (SHARE)
    /// while it is read.
    Snapshot(SnapshotArgs),
    /// Undo changes (one change, a source transaction, or everything done under a context),
    /// newest first, refusing rows changed since unless --force.
    Revert(RevertArgs),
    /// Convert a changes table made before time partitions into a partitioned one, while the
    /// worker runs: no row is copied, writers wait milliseconds. Run it as the table's owner;
    /// run it again to resume an interrupted conversion.
    PartitionChanges(PartitionChangesArgs),
    /// Drop the partitions of the changes table older than --keep (whole partitions, never
    /// DELETE), archiving each first with --archive, keeping those a legal hold covers. Each run
    /// is recorded in bemi.retention_runs.
    Retention(RetentionArgs),
    /// Bring the changes of an archive written by `retention --archive` back, after checking
    /// it against its manifest.
    RestoreArchive(RestoreArchiveArgs),
    /// Place, release or list legal holds: while one is in force, retention keeps the changes
    /// it covers.
    Hold(HoldArgs),
    /// Recompute the seals of the stored changes and name every change deleted, edited or
    /// inserted since it was sealed (exit 2), and every seal that does not match.
    Verify(verify_args::VerifyArgs),
    /// Erase a subject's personal values from every stored change, the seals still verifying
    /// (carried out by the worker where its stream reaches the request; exit 3 while pending).
    Erase(erase_args::EraseArgs),
}

#[derive(Debug, Args)]
struct RetentionArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Keep the changes committed within this window: days, weeks or hours (`400d`, `60w`,
    /// `72h`); at least a day. Required: retention never guesses a window.
    #[arg(long, value_parser = parse_window)]
    keep: Duration,
    /// Say what would be dropped, drop nothing.
    #[arg(long)]
    dry_run: bool,
    /// Archive each partition into this folder before dropping it (gzip NDJSON, with a
    /// manifest and its SHA-256, read back before the drop).
    #[arg(long)]
    archive: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RestoreArchiveArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// The archive's manifest (`<partition>.manifest.json`).
    manifest: PathBuf,
}

#[derive(Debug, Args)]
struct HoldArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Place a hold until this date (`2027-06-30` or an RFC 3339 time).
    #[arg(long, value_parser = time_args::end_of, requires = "reason", conflicts_with_all = ["release", "list"])]
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Only the changes of this table (`table` or `schema.table`) [default: every change].
    #[arg(long, requires = "until")]
    table: Option<QualifiedName>,
    /// Why (a case or request number): stored with the hold.
    #[arg(long)]
    reason: Option<String>,
    /// End the hold with this id now.
    #[arg(long, conflicts_with = "list")]
    release: Option<i64>,
    /// List the holds.
    #[arg(long)]
    list: bool,
}

/// `400d`, `60w`, `72h`.
fn parse_window(text: &str) -> std::result::Result<Duration, String> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let count: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and d, w or h (e.g. 400d)"))?;
    let seconds = match unit {
        "d" => 86_400,
        "w" => 7 * 86_400,
        "h" => 3_600,
        _ => {
            return Err(format!(
                "{text:?}: expected a number and d, w or h (e.g. 400d)"
            ));
        }
    };
    let window = Duration::from_secs(count.saturating_mul(seconds));
    if window < bemi_worker::MIN_KEEP {
        return Err(format!("{text:?}: a retention window is at least a day"));
    }
    Ok(window)
}

#[derive(Debug, Args)]
struct PartitionChangesArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// One partition per month, week or day (UTC).
    #[arg(long, default_value = "month", value_parser = parse_partitioning)]
    partitioning: Partitioning,
}

#[derive(Debug, Args)]
struct SnapshotArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Only these tables (comma-separated, `table` or `schema.table`) [default: every tracked
    /// table].
    #[arg(long, env = "BEMI_TABLES", value_delimiter = ',')]
    tables: Vec<QualifiedName>,
    /// Give up on a table whose lock is not granted within this many seconds.
    #[arg(long, default_value_t = 10)]
    lock_timeout_seconds: u64,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["change", "transaction", "context"])))]
struct RevertArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Revert one change (its id in the changes table).
    #[arg(long)]
    change: Option<uuid::Uuid>,
    /// Revert every change of this source transaction (`transaction_id` in the changes table).
    #[arg(long)]
    transaction: Option<i64>,
    /// Revert every change whose context contains this JSON object, e.g.
    /// '{"request_id":"req-42"}'.
    #[arg(long)]
    context: Option<String>,
    /// Show what would be done, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Revert conflicting rows too (restore the changed columns of rows changed since, delete
    /// rows that differ, overwrite re-created rows).
    #[arg(long)]
    force: bool,
}

impl RevertArgs {
    fn selection(&self) -> anyhow::Result<Revert> {
        Ok(match (&self.change, &self.transaction, &self.context) {
            (Some(id), _, _) => Revert::change(*id),
            (_, Some(id), _) => Revert::transaction(*id),
            (_, _, Some(json)) => {
                let value: serde_json::Value =
                    serde_json::from_str(json).context("--context is not valid JSON")?;
                Revert::context(bemi_core::Context::from_value(value)?)
            }
            _ => anyhow::bail!("give one of --change, --transaction or --context"),
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct CommonArgs {
    /// The database whose changes are captured (needs wal_level=logical and a role with
    /// REPLICATION). sslmode, sslrootcert, sslcert and sslkey are accepted as URL parameters.
    /// Without a password in it, PGPASSWORD or the password file (PGPASSFILE, ~/.pgpass) is
    /// used, as libpq does.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A file holding the source's URL (keeps the password off the command line, where `ps`
    /// shows it).
    #[arg(long, env = "BEMI_DATABASE_URL_FILE", conflicts_with = "database_url")]
    database_url_file: Option<PathBuf>,
    #[command(flatten)]
    destination: DestinationArgs,
    /// The replication slot.
    #[arg(long, env = "BEMI_SLOT", default_value = bemi_core::setup::DEFAULT_SLOT)]
    slot: String,
    /// The publication.
    #[arg(long, env = "BEMI_PUBLICATION", default_value = bemi_core::setup::DEFAULT_PUBLICATION)]
    publication: String,
    /// The changes table, `schema.table`.
    #[arg(long, env = "BEMI_CHANGES_TABLE", default_value = "bemi.changes")]
    changes_table: QualifiedName,
}

/// Where the changes table is, shared by the commands that read or write it.
#[derive(Debug, Args)]
struct DestinationArgs {
    /// The database holding the changes table [default: the source database].
    #[arg(long, env = "BEMI_DESTINATION_URL", hide_env_values = true)]
    destination_url: Option<String>,
    /// A file holding the destination's URL.
    #[arg(
        long,
        env = "BEMI_DESTINATION_URL_FILE",
        conflicts_with = "destination_url"
    )]
    destination_url_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SetupArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Track every table of this schema, including tables created later (repeatable).
    #[arg(
        long = "schema",
        env = "BEMI_SCHEMAS",
        value_delimiter = ',',
        conflicts_with = "tables"
    )]
    schemas: Vec<String>,
    /// Track exactly these tables (comma-separated, `table` or `schema.table`).
    #[arg(long, env = "BEMI_TABLES", value_delimiter = ',')]
    tables: Vec<QualifiedName>,
    /// Print the SQL a DBA runs instead of connecting: the destination's and the source's
    /// objects, the slot, and the least privileges of the worker's role.
    #[arg(long)]
    print_sql: bool,
    /// The worker's role in the printed GRANTs.
    #[arg(long, default_value = "bemi_worker", requires = "print_sql")]
    worker_role: String,
    /// The read-only role in the printed GRANTs (for `console` and auditors' SQL).
    #[arg(long, default_value = "bemi_reader", requires = "print_sql")]
    reader_role: String,
    /// Give the audit tables (changes, progress, rejected, column policies) to this role, so
    /// that the audited application's role can neither delete audit rows nor rewrite policies.
    /// Run setup as a superuser (or a member of the role).
    #[arg(long, env = "BEMI_OWNER_ROLE")]
    owner_role: Option<String>,
    /// Record DDL changes without their statement's text (command, shapes and context only),
    /// for migrations that may hold secrets.
    #[arg(long)]
    no_ddl_statements: bool,
    /// GIN indexes of the `before` and `after` images, for searches by image content
    /// (`before_contains`, `after_contains`): bytes on every change, time on every write. On a
    /// table with changes, building them holds the worker's writes until done.
    #[arg(long)]
    image_indexes: bool,
    /// How a new changes table is partitioned by commit time: month, week, day, or none for
    /// one table. The worker creates partitions ahead; an existing table keeps its layout
    /// (convert it with `partition-changes`).
    #[arg(long, default_value = "month", value_parser = parse_partitioning)]
    partitioning: Partitioning,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Changes per stored batch (bounds memory whatever the transaction size).
    #[arg(long, env = "BEMI_BATCH_SIZE", default_value_t = 5_000)]
    batch_size: usize,
    /// Bytes per stored batch: a batch is stored at --batch-size changes or this many bytes,
    /// whichever comes first (bounds memory when rows are wide).
    #[arg(long, env = "BEMI_BATCH_BYTES", default_value_t = 4 << 20)]
    batch_bytes: usize,
    /// Destination connections storing batches in parallel: a batch's COPY runs while the one
    /// before it is written; batches still commit in stream order. 1: one batch at a time.
    #[arg(long, env = "BEMI_WRITERS", default_value_t = 2)]
    writers: usize,
    /// An append-only file to add each seal's hash to, kept where the database's
    /// administrators cannot rewrite it (`verify --anchor-file` checks against it).
    #[arg(long, env = "BEMI_ANCHOR_FILE")]
    anchor_file: Option<PathBuf>,
    /// How often the stored changes are sealed, in milliseconds (0: never).
    #[arg(long, env = "BEMI_SEAL_INTERVAL_MS", default_value_t = 5_000)]
    seal_interval_ms: u64,
    #[command(flatten)]
    anchor_nats: anchor_args::AnchorNatsArgs,
    /// Longest time a change waits before its batch is stored, in milliseconds.
    #[arg(long, env = "BEMI_FLUSH_INTERVAL_MS", default_value_t = 100)]
    flush_interval_ms: u64,
    /// Largest context stored, in bytes; larger ones are replaced by a marker.
    #[arg(long, env = "BEMI_MAX_CONTEXT_BYTES", default_value_t = bemi_worker::DEFAULT_MAX_CONTEXT_BYTES)]
    max_context_bytes: usize,
    /// How often progress is logged, in seconds.
    #[arg(long, env = "BEMI_LOG_INTERVAL_SECONDS", default_value_t = 10)]
    log_interval_seconds: u64,
    /// Columns whose values are replaced by "[REDACTED]" before anything is stored:
    /// comma-separated `column`, `table.column` or `schema.table.column`, `*` for any part
    /// (e.g. `password_hash,*.token`). Added to the rules setup stored from `Audited` models.
    #[arg(long, env = "BEMI_REDACT", value_name = "PATTERNS")]
    redact: Option<String>,
    /// Columns left out of the stored row images (same patterns as --redact).
    #[arg(long, env = "BEMI_DROP_COLUMNS", value_name = "PATTERNS")]
    drop_columns: Option<String>,
    /// Columns whose changes alone are not stored: an UPDATE that changes only these (e.g.
    /// `updated_at`) is skipped (same patterns as --redact).
    #[arg(long, env = "BEMI_NOISE_COLUMNS", value_name = "PATTERNS")]
    noise_columns: Option<String>,
    /// Columns holding personal data (same patterns as --redact): stored, each value with a
    /// salted commitment the seals cover, so that `erase` can remove a subject's values later
    /// and the seals still verify.
    #[arg(long, env = "BEMI_PERSONAL_COLUMNS", value_name = "PATTERNS")]
    personal_columns: Option<String>,
    /// Context keys holding personal data (comma-separated, e.g. `user_email,ip`): erasable
    /// like personal columns, for the changes whose context names the erased subject.
    #[arg(
        long,
        env = "BEMI_PERSONAL_CONTEXT",
        value_name = "KEYS",
        value_delimiter = ','
    )]
    personal_context: Vec<String>,
    /// After this many seconds without a transaction in the source database, write a
    /// heartbeat through its WAL so that the slot advances while other databases of the
    /// cluster write (0: never).
    #[arg(long, env = "BEMI_HEARTBEAT_SECONDS", default_value_t = 60)]
    heartbeat_seconds: u64,
    /// When the server invalidated the slot (its WAL passed max_slot_wal_keep_size): `stop`
    /// and say what to run, or `recreate` it, recording the gap in the source's
    /// bemi.trail_gaps (the changes in between are lost), then run `snapshot`.
    #[arg(long, env = "BEMI_ON_SLOT_LOST", default_value = "stop", value_parser = parse_on_slot_lost)]
    on_slot_lost: bemi_worker::OnSlotLost,
    #[command(flatten)]
    metrics: MetricsArgs,
}

impl RunArgs {
    fn column_policies(&self) -> anyhow::Result<ColumnPolicies> {
        let mut policies = ColumnPolicies::default();
        for (action, list) in [
            (ColumnAction::Redact, &self.redact),
            (ColumnAction::Drop, &self.drop_columns),
            (ColumnAction::Noise, &self.noise_columns),
            (ColumnAction::Personal, &self.personal_columns),
        ] {
            if let Some(list) = list {
                policies.add_list(action, list)?;
            }
        }
        Ok(policies)
    }
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Print the status as JSON (shape `bemi-status/1`, see the README), for monitoring. The
    /// exit code is the health either way: 0 healthy, 1 warning, 2 critical.
    #[arg(long)]
    json: bool,
    /// Lag (WAL behind the server) from which the status is a warning: bytes, or with a unit
    /// (`64MiB`, `1GB`).
    #[arg(long, default_value = "64MiB")]
    warn_lag: ByteSize,
    /// Lag from which the status is critical.
    #[arg(long, default_value = "1GiB")]
    critical_lag: ByteSize,
    /// Also show the JetStream stage (stream size, consumer backlog).
    #[arg(long, env = "BEMI_NATS_URL", hide_env_values = true)]
    nats_url: Option<String>,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Debug, Args)]
struct CaptureArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The NATS server(s), e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "BEMI_NATS_URL", hide_env_values = true)]
    nats_url: String,
    #[command(flatten)]
    nats: NatsArgs,
}

#[derive(Debug, Args)]
struct IngestArgs {
    /// The database holding the changes table.
    #[arg(long, env = "BEMI_DESTINATION_URL", hide_env_values = true)]
    destination_url: String,
    /// The changes table, `schema.table`.
    #[arg(long, env = "BEMI_CHANGES_TABLE", default_value = "bemi.changes")]
    changes_table: QualifiedName,
    /// The NATS server(s), e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "BEMI_NATS_URL", hide_env_values = true)]
    nats_url: String,
    #[command(flatten)]
    nats: NatsArgs,
    /// Changes per stored batch.
    #[arg(long, env = "BEMI_BATCH_SIZE", default_value_t = 5_000)]
    batch_size: usize,
    /// Longest time a received change waits before its batch is stored, in milliseconds.
    #[arg(long, env = "BEMI_FLUSH_INTERVAL_MS", default_value_t = 100)]
    flush_interval_ms: u64,
    /// How often progress is logged, in seconds.
    #[arg(long, env = "BEMI_LOG_INTERVAL_SECONDS", default_value_t = 10)]
    log_interval_seconds: u64,
    /// An append-only file to add each seal's hash to (see `run --anchor-file`).
    #[arg(long, env = "BEMI_ANCHOR_FILE")]
    anchor_file: Option<std::path::PathBuf>,
    /// How often what the ingest processes stored is sealed, in milliseconds (0: never).
    #[arg(long, env = "BEMI_SEAL_INTERVAL_MS", default_value_t = 5_000)]
    seal_interval_ms: u64,
    #[command(flatten)]
    anchor_nats: anchor_args::AnchorNatsArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// The JetStream stream, consumer and connection settings shared by capture, ingest and status.
#[derive(Debug, Args)]
struct NatsArgs {
    /// The JetStream stream (created by capture or ingest if missing).
    #[arg(long, env = "BEMI_NATS_STREAM", default_value = "BEMI_CHANGES")]
    nats_stream: String,
    /// The subject changes are published to.
    #[arg(long, env = "BEMI_NATS_SUBJECT", default_value = "bemi.changes")]
    nats_subject: String,
    /// What the stream keeps: workqueue (until stored), limits (until the stream's limits), or
    /// interest.
    #[arg(long, env = "BEMI_NATS_RETENTION", default_value = "workqueue")]
    nats_retention: bemi_worker::Retention,
    /// Copies of the stream in a NATS cluster.
    #[arg(long, env = "BEMI_NATS_REPLICAS", default_value_t = 1)]
    nats_replicas: usize,
    /// How long JetStream drops re-published changes (a capture restart's replay), in seconds.
    #[arg(
        long,
        env = "BEMI_NATS_DUPLICATE_WINDOW_SECONDS",
        default_value_t = 120
    )]
    nats_duplicate_window_seconds: u64,
    /// The durable consumer ingest processes share.
    #[arg(long, env = "BEMI_NATS_CONSUMER", default_value = "bemi-ingest")]
    nats_consumer: String,
    /// Seconds a delivered change may stay unacknowledged before another ingest process gets it.
    #[arg(long, env = "BEMI_NATS_ACK_WAIT_SECONDS", default_value_t = 30)]
    nats_ack_wait_seconds: u64,
    /// Most changes delivered and unacknowledged, over all ingest processes.
    #[arg(long, env = "BEMI_NATS_MAX_ACK_PENDING", default_value_t = 20_000)]
    nats_max_ack_pending: i64,
    /// A NATS credentials file (.creds: JWT and NKey).
    #[arg(long, env = "BEMI_NATS_CREDS")]
    nats_creds: Option<std::path::PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "BEMI_NATS_USER", requires = "nats_password")]
    nats_user: Option<String>,
    /// NATS password.
    #[arg(
        long,
        env = "BEMI_NATS_PASSWORD",
        hide_env_values = true,
        requires = "nats_user"
    )]
    nats_password: Option<String>,
    /// NATS authentication token.
    #[arg(long, env = "BEMI_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,
    /// CA certificates (PEM) that verify the NATS server.
    #[arg(long, env = "BEMI_NATS_TLS_CA")]
    nats_tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with --nats-tls-key).
    #[arg(long, env = "BEMI_NATS_TLS_CERT", requires = "nats_tls_key")]
    nats_tls_cert: Option<std::path::PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long, env = "BEMI_NATS_TLS_KEY", requires = "nats_tls_cert")]
    nats_tls_key: Option<std::path::PathBuf>,
    /// Refuse a NATS connection without TLS.
    #[arg(long, env = "BEMI_NATS_REQUIRE_TLS")]
    nats_require_tls: bool,
}

impl NatsArgs {
    fn options(&self, url: &str) -> NatsOptions {
        let mut options = NatsOptions::new(url);
        options.stream = self.nats_stream.clone();
        options.subject = self.nats_subject.clone();
        options.retention = self.nats_retention;
        options.replicas = self.nats_replicas.max(1);
        options.duplicate_window = Duration::from_secs(self.nats_duplicate_window_seconds);
        options.consumer = self.nats_consumer.clone();
        options.ack_wait = Duration::from_secs(self.nats_ack_wait_seconds.max(1));
        options.max_ack_pending = self.nats_max_ack_pending.max(1);
        options.credentials_file = self.nats_creds.clone();
        options.user_and_password = self.nats_user.clone().zip(self.nats_password.clone());
        options.token = self.nats_token.clone();
        options.tls_ca = self.nats_tls_ca.clone();
        options.tls_client = self.nats_tls_cert.clone().zip(self.nats_tls_key.clone());
        options.require_tls = self.nats_require_tls;
        options
    }
}

impl RunArgs {
    /// The worker's configuration for `run` (and `capture`, which adds NATS), and the metrics
    /// options.
    fn config(self) -> anyhow::Result<(WorkerConfig, MetricsArgs)> {
        let (source, destination) = self.common.connections()?;
        let column_policies = self.column_policies()?;
        let mut config = WorkerConfig::new(source);
        config.column_policies = column_policies;
        config.personal_context = self
            .personal_context
            .iter()
            .map(|key| key.trim().to_owned())
            .filter(|key| !key.is_empty())
            .collect();
        config.store_into(destination, self.common.changes_table);
        config.slot = self.common.slot;
        config.publication = self.common.publication;
        config.batch_size = self.batch_size.max(1);
        config.batch_bytes = self.batch_bytes.max(1);
        config.writers = self.writers.max(1);
        config.anchor_file = self.anchor_file;
        config.anchor_nats = self.anchor_nats.options();
        config.seal_interval =
            (self.seal_interval_ms > 0).then(|| Duration::from_millis(self.seal_interval_ms));
        config.flush_interval = Duration::from_millis(self.flush_interval_ms);
        config.max_context_bytes = self.max_context_bytes;
        config.log_interval = Duration::from_secs(self.log_interval_seconds.max(1));
        config.heartbeat_interval =
            (self.heartbeat_seconds > 0).then(|| Duration::from_secs(self.heartbeat_seconds));
        config.on_slot_lost = self.on_slot_lost;
        Ok((config, self.metrics))
    }
}

#[derive(Debug, Args)]
struct TeardownArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Also drop the changes table and all audit data in it.
    #[arg(long)]
    drop_changes: bool,
    /// Confirm the removal.
    #[arg(long)]
    yes: bool,
}

/// The connection given as a URL or in a file, with libpq's password sources.
fn connection_options(
    url: Option<&str>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<ConnectionOptions>> {
    let url = match (url, file) {
        (Some(url), _) => url.to_owned(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("read the connection URL from {}", file.display()))?
            .trim()
            .to_owned(),
        (None, None) => return Ok(None),
    };
    Ok(Some(ConnectionOptions::parse_with_password_sources(&url)?))
}

impl CommonArgs {
    fn connections(&self) -> anyhow::Result<(ConnectionOptions, ConnectionOptions)> {
        let source = connection_options(
            self.database_url.as_deref(),
            self.database_url_file.as_deref(),
        )?
        .context(
            "the source database is required: --database-url, --database-url-file or DATABASE_URL",
        )?;
        let destination = connection_options(
            self.destination.destination_url.as_deref(),
            self.destination.destination_url_file.as_deref(),
        )?
        .unwrap_or_else(|| source.clone());
        Ok((source, destination))
    }

    fn setup_options(&self) -> SetupOptions {
        SetupOptions::default()
            .slot(&self.slot)
            .publication(&self.publication)
            .changes_table(self.changes_table.clone())
    }
}

fn parse_on_slot_lost(text: &str) -> std::result::Result<bemi_worker::OnSlotLost, String> {
    match text {
        "stop" => Ok(bemi_worker::OnSlotLost::Stop),
        "recreate" => Ok(bemi_worker::OnSlotLost::Recreate),
        other => Err(format!("{other:?}: expected stop or recreate")),
    }
}

fn parse_partitioning(text: &str) -> std::result::Result<Partitioning, String> {
    text.parse()
        .map_err(|error: bemi_core::Error| error.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // tokio-postgres logs the parameters of every statement at debug level: row values, which
    // column policies may redact and which no log may hold, whatever RUST_LOG says.
    if let Ok(quiet) = "tokio_postgres=info".parse() {
        filter = filter.add_directive(quiet);
    }
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .init(),
    }
    // Every line carries the command and the slot; the worker's lines also their stage.
    let (command, slot) = cli.command.describe();
    let span = tracing::info_span!("bemi", command, slot = slot.unwrap_or_default());
    // One thread: the worker's CPU work is light next to PostgreSQL's, and allocating and freeing
    // change rows on the same thread keeps the allocator fast and memory low (measured: the
    // same throughput as a multi-threaded runtime with mimalloc, a third less peak memory).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tracing::Instrument::instrument(run(cli), span)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            exit_code(&error)
        }
    }
}

/// 78 (`EX_CONFIG`) for an error only an operator can fix (configuration, credentials,
/// privileges, a lost slot): a supervisor should not restart into it. 1 for any other.
fn exit_code(error: &anyhow::Error) -> ExitCode {
    let fatal = error.chain().any(|cause| {
        cause
            .downcast_ref::<bemi_worker::Error>()
            .is_some_and(|error| error.kind() == bemi_worker::ErrorKind::Fatal)
    });
    if fatal {
        ExitCode::from(78)
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the command; its exit code (`status` says the trail's health by it).
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Setup(args) => {
            let mut options = args.common.setup_options();
            options = if args.tables.is_empty() {
                let schemas = if args.schemas.is_empty() {
                    vec!["public".to_owned()]
                } else {
                    args.schemas
                };
                options.schemas(schemas)
            } else {
                options.tables(args.tables)
            };
            if let Some(role) = &args.owner_role {
                options = options.owner_role(role);
            }
            options = options
                .ddl_statements(!args.no_ddl_statements)
                .partitioning(args.partitioning)
                .image_indexes(args.image_indexes);
            let setup = Setup::new(options)?;
            if args.print_sql {
                print!(
                    "{}",
                    print_sql(&setup, &args.worker_role, &args.reader_role)?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let (source, destination) = args.common.connections()?;
            bemi_worker::setup(&source, &destination, &setup).await?;
            println!(
                "bemi is set up on {source}: run `bemi-worker run` to start capturing changes"
            );
        }
        Command::Run(args) => {
            let (config, metrics) = args.config()?;
            let slot = (config.source.clone(), config.slot.clone());
            let worker = Worker::new(config);
            metrics.start(&worker.metrics(), Some(slot)).await?;
            worker.run(shutdown_signal()).await?;
        }
        Command::Capture(args) => {
            let nats = args.nats.options(&args.nats_url);
            let (mut config, metrics) = args.run.config()?;
            config.output = bemi_worker::Output::JetStream(nats);
            let slot = (config.source.clone(), config.slot.clone());
            let worker = Worker::new(config);
            metrics.start(&worker.metrics(), Some(slot)).await?;
            worker.run(shutdown_signal()).await?;
        }
        Command::Ingest(args) => {
            let nats = args.nats.options(&args.nats_url);
            let destination =
                ConnectionOptions::parse_with_password_sources(&args.destination_url)?;
            let mut config = IngestConfig::new(nats, destination);
            config.changes_table = args.changes_table;
            config.batch_size = args.batch_size.max(1);
            config.flush_interval = Duration::from_millis(args.flush_interval_ms);
            config.log_interval = Duration::from_secs(args.log_interval_seconds.max(1));
            config.anchor_file = args.anchor_file;
            config.anchor_nats = args.anchor_nats.options();
            config.seal_interval =
                (args.seal_interval_ms > 0).then(|| Duration::from_millis(args.seal_interval_ms));
            let ingest = Ingest::new(config);
            args.metrics.start(&ingest.metrics(), None).await?;
            ingest.run(shutdown_signal()).await?;
        }
        Command::Console(args) => args.serve(shutdown_signal()).await?,
        Command::Verify(args) => return args.run().await,
        Command::Erase(args) => return args.run().await,
        Command::Status(args) => {
            // A monitoring check: a status that cannot be read is critical too.
            return Ok(match print_status(&args).await {
                Ok(health) => ExitCode::from(health.exit_code()),
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::from(bemi_worker::Health::Critical.exit_code())
                }
            });
        }
        Command::Teardown(args) => {
            if !args.yes {
                anyhow::bail!(
                    "teardown removes bemi's triggers, publication and replication slot{}: run it again with --yes to confirm",
                    if args.drop_changes {
                        " and drops the changes table with all audit data"
                    } else {
                        ""
                    }
                );
            }
            let (source, destination) = args.common.connections()?;
            let setup = Setup::new(args.common.setup_options())?;
            bemi_worker::teardown(&source, &destination, &setup, args.drop_changes)
                .await
                .context("teardown failed")?;
            println!("bemi is removed from {source}");
        }
        Command::PartitionChanges(args) => {
            let (_, destination) = args.common.connections()?;
            let setup = Setup::new(args.common.setup_options().partitioning(args.partitioning))?;
            bemi_worker::partition_changes(&destination, &setup, |line| println!("{line}")).await?;
        }
        Command::Retention(args) => {
            let (_, destination) = args.common.connections()?;
            let setup = Setup::new(args.common.setup_options())?;
            let mut options = bemi_worker::RetentionOptions::new(args.keep);
            options.dry_run = args.dry_run;
            options.archive = args.archive.clone();
            let report =
                bemi_worker::retention(&destination, &setup, &options, |line| println!("{line}"))
                    .await?;
            let rows: i64 = report.dropped.iter().map(|entry| entry.rows).sum();
            println!(
                "{} {} partition(s), {rows} changes; {} kept by legal holds (run {} in bemi.retention_runs)",
                if report.dry_run {
                    "would drop"
                } else {
                    "dropped"
                },
                report.dropped.len(),
                report.held.len(),
                report.run_id
            );
        }
        Command::RestoreArchive(args) => {
            let (_, destination) = args.common.connections()?;
            let restored = bemi_worker::restore_archive(&destination, &args.manifest, |line| {
                println!("{line}")
            })
            .await?;
            println!(
                "restored {} changes of {} ({} were stored already); retention drops them again \
                 unless a legal hold covers them",
                restored.inserted, restored.manifest.partition, restored.already_stored
            );
        }
        Command::Hold(args) => {
            let (_, destination) = args.common.connections()?;
            if let Some(until) = args.until {
                let reason = args.reason.as_deref().unwrap_or_default();
                let id = bemi_worker::place_hold(&destination, args.table.as_ref(), until, reason)
                    .await?;
                println!("legal hold {id} placed until {}", until.to_rfc3339());
            } else if let Some(id) = args.release {
                if bemi_worker::release_hold(&destination, id).await? {
                    println!("legal hold {id} released");
                } else {
                    println!("legal hold {id} was not in force");
                }
            } else {
                for hold in bemi_worker::legal_holds(&destination).await? {
                    println!(
                        "{}\t{}\tuntil {}\t{}\t(by {} at {})",
                        hold.id,
                        hold.table
                            .as_ref()
                            .map_or_else(|| "every change".to_owned(), ToString::to_string),
                        hold.held_until.to_rfc3339(),
                        hold.reason,
                        hold.created_by,
                        hold.created_at.to_rfc3339()
                    );
                }
            }
        }
        Command::Snapshot(args) => {
            let (source, _) = args.common.connections()?;
            let counts = bemi_worker::snapshot(
                &source,
                &args.common.publication,
                &args.tables,
                Duration::from_secs(args.lock_timeout_seconds),
            )
            .await?;
            for (table, rows) in &counts {
                println!("{table}: {rows} rows");
            }
            println!(
                "snapshot of {} table(s) recorded: the worker stores the rows as SNAPSHOT changes",
                counts.len()
            );
        }
        Command::Revert(args) => {
            let (source, destination) = args.common.connections()?;
            let selection = args.selection()?;
            let result = bemi_worker::revert(
                &source,
                &destination,
                &args.common.changes_table,
                if args.force {
                    selection.force()
                } else {
                    selection
                },
                args.dry_run,
            )
            .await;
            match result {
                Ok(plan) => {
                    print!("{plan}");
                    let verb = if args.dry_run {
                        "would revert"
                    } else {
                        "reverted"
                    };
                    println!("{verb} {} change(s)", plan.steps().len());
                    if args.dry_run && plan.conflicts().next().is_some() {
                        println!("conflicts found: apply with --force to revert them anyway");
                    }
                }
                Err(bemi_worker::Error::Core(bemi_core::Error::RevertConflicts(plan))) => {
                    print!("{plan}");
                    anyhow::bail!(
                        "nothing was reverted: {} change(s) conflict with the current rows (use --force to revert anyway)",
                        plan.conflicts().count()
                    );
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the status (as text, or as JSON with `--json`) and returns its health.
async fn print_status(args: &StatusArgs) -> anyhow::Result<bemi_worker::Health> {
    let (source, destination) = args.common.connections()?;
    let status = bemi_worker::status(&source, &destination, &args.common.setup_options()).await?;
    let limits = bemi_worker::LagLimits {
        warn_bytes: args.warn_lag.0,
        critical_bytes: args.critical_lag.0,
    };
    let report = status.report(limits);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{status}");
        println!("health:              {}", health_line(&report));
        if let Some(url) = &args.nats_url {
            print!(
                "{}",
                bemi_worker::nats_status(&args.nats.options(url)).await?
            );
        }
    }
    Ok(report.health)
}

/// `healthy`, or the level and its reasons.
fn health_line(report: &bemi_worker::StatusReport<'_>) -> String {
    let level = match report.health {
        bemi_worker::Health::Healthy => return "healthy".to_owned(),
        bemi_worker::Health::Warning => "warning",
        bemi_worker::Health::Critical => "critical",
    };
    format!("{level}: {}", report.reasons.join("; "))
}

/// A size in bytes: a number with an optional unit (`B`, `kB`, `MB`, `GB`, `KiB`, `MiB`,
/// `GiB`), as `64MiB`.
#[derive(Debug, Clone, Copy)]
struct ByteSize(i64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: i64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size such as 64MiB"))?;
        let factor: i64 = match unit.trim() {
            "" | "B" => 1,
            "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown size unit {other:?} (B, kB, MB, GB, KiB, MiB, GiB)"
                ));
            }
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

/// Everything setup does, as SQL for a DBA, with the worker role's least privileges.
fn print_sql(setup: &Setup, role: &str, reader: &str) -> anyhow::Result<String> {
    let grants = setup.worker_grants_sql(role)?;
    let reader_grants = setup.reader_grants_sql(reader)?;
    Ok(format!(
        "-- bemi setup, step by step. Run each part with psql -v ON_ERROR_STOP=1.\n\
         \n\
         -- 1. The worker's role (in the cluster; on RDS: GRANT rds_replication instead of REPLICATION).\n\
         {role_sql}\n\
         -- 2. Destination database (where the changes table lives; the source by default),\n\
         --    as a role that may create schema `bemi`:\n\
         {destination}\n\
         -- 3. Source database, as the owner of the tracked tables (triggers and REPLICA IDENTITY\n\
         --    need ownership; the event trigger that tracks tables created later needs a superuser,\n\
         --    without one setup prints a notice and tables created later need setup again):\n\
         {source}\n\
         -- 4. Source database, outside a transaction, after step 3 committed:\n\
         {slot};\n\
         \n\
         -- 5. The worker's least privileges: no superuser, nothing on the tracked tables\n\
         --    (it reads the WAL). In the source database:\n\
         {source_grants}\n\
         --    In the destination database:\n\
         {destination_grants}\n\
         -- 6. A read-only role for `bemi-worker console` and auditors' SQL (CREATE ROLE {reader_name}\n\
         --    LOGIN PASSWORD '...'): it reads the trail and the health, and writes nothing.\n\
         --    In the destination database:\n\
         {reader_destination}\
         --    In the source database (health: the slot's incarnations and recorded gaps):\n\
         {reader_source}",
        role_sql = grants.role_sql,
        destination = setup.destination_sql(),
        source = setup.source_sql(),
        slot = setup.create_slot_sql(),
        source_grants = grants.source,
        destination_grants = grants.destination,
        reader_name = reader,
        reader_destination = reader_grants.destination,
        reader_source = reader_grants.source,
    ))
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: storing and confirming what was received");
}
