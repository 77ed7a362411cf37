//! `bemi-bench`: benchmarks of bemi-rs, each one command that starts its own PostgreSQL
//! (durable settings) and prints a Markdown table. Build in release mode:
//!
//! ```text
//! cargo run --release -p bemi-bench -- worker-throughput
//! cargo run --release -p bemi-bench -- worker-memory
//! cargo run --release -p bemi-bench -- write-path
//! cargo run --release -p bemi-bench -- trigger-cost
//! cargo run --release -p bemi-bench -- seaorm-insert
//! cargo run --release -p bemi-bench -- history-latency
//! cargo run --release -p bemi-bench -- lag
//! cargo run --release -p bemi-bench -- nats-scale
//! cargo run --release -p bemi-bench -- forged-messages
//! cargo run --release -p bemi-bench -- changes-bytes
//! cargo run --release -p bemi-bench -- read-targets
//! cargo run --release -p bemi-bench -- console-pages
//! cargo run --release -p bemi-bench -- seals
//! cargo run --release -p bemi-bench -- erasure
//! ```

mod changes_bytes;
mod console_pages;
mod environment;
mod erasure;
mod forged;
mod history_latency;
mod lag;
mod memory;
mod nats_scale;
mod read_targets;
mod seals;
mod seaorm_insert;
mod stats;
mod throughput;
mod trigger_cost;
mod worker_process;
mod workload;
mod write_path;

use clap::{Parser, Subcommand};

/// Benchmarks of bemi-rs against the physical limits.
#[derive(Debug, Parser)]
#[command(name = "bemi-bench")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Worker changes/s vs the raw slot drain (read limit) and COPY (write limit).
    WorkerThroughput {
        /// Row changes to generate.
        #[arg(long, default_value_t = 200_000)]
        changes: usize,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
        /// With setup's image indexes (`--image-indexes`) on the changes tables.
        #[arg(long)]
        image_indexes: bool,
    },
    /// Worker peak RSS while storing one large transaction, and idle.
    WorkerMemory {
        /// Transaction sizes, in rows.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        rows: Vec<usize>,
        /// Rows of the wide-row case (one UPDATE of rows holding large bytea values).
        #[arg(long, default_value_t = 150)]
        wide_rows: usize,
        /// Bytes of bytea per row in the wide-row case.
        #[arg(long, default_value_t = 2 << 20)]
        wide_bytes: usize,
    },
    /// The delay a flood of forged `_bemi_snapshot` messages adds before the next change is
    /// stored.
    ForgedMessages {
        /// Forged messages in the flooding transaction.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Rounds (median reported).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Diesel write throughput and WAL per transaction: plain, tracked, tagged, and Bemi's
    /// row-trigger design, for single-row INSERT/UPDATE and a 1,000-row UPDATE.
    WritePath {
        /// Workloads to run.
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "insert,update1,update1000"
        )]
        workloads: Vec<write_path::Workload>,
        /// Interleaved rounds (each runs every variant once).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds per variant per round.
        #[arg(long, default_value_t = 4)]
        seconds: u64,
        /// Client threads.
        #[arg(long, default_value_t = 2)]
        clients: usize,
    },
    /// Single-row INSERT tps through bemi's SeaORM wrapper vs plain SeaORM.
    SeaormInsert {
        /// Interleaved rounds (each runs every variant once).
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Seconds per variant per round.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent tasks (and pool connections).
        #[arg(long, default_value_t = 2)]
        clients: u32,
    },
    /// Server time per single-row INSERT added by bemi's trigger, untagged and tagged.
    TriggerCost {
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 5)]
        repetitions: usize,
        /// INSERTs per measurement.
        #[arg(long, default_value_t = 20_000)]
        statements: u32,
    },
    /// Latency of history, as_of and context queries on a large changes table.
    HistoryLatency {
        /// Changes in the table.
        #[arg(long, default_value_t = 1_000_000)]
        changes: u64,
        /// Random probes per repetition.
        #[arg(long, default_value_t = 1_000)]
        probes: usize,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
    },
    /// Bytes per stored change (table and indexes) of bemi-rs's `changes` table against Bemi's
    /// layout of the same changes.
    ChangesBytes {
        /// Rows inserted (one CREATE change each).
        #[arg(long, default_value_t = 20_000)]
        rows: u64,
        /// UPDATE statements, each changing 5 rows.
        #[arg(long, default_value_t = 20_000)]
        updates: u64,
    },
    /// The reads of auditors and support desks on 10,000,000 changes in monthly partitions,
    /// against their targets.
    ReadTargets {
        /// Changes in the table (at least 1,000,000).
        #[arg(long, default_value_t = 10_000_000)]
        changes: u64,
        /// Random probes per repetition (the filters run a tenth).
        #[arg(long, default_value_t = 200)]
        probes: usize,
        /// Repetitions.
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
    },
    /// What personal values cost (storing, sealing, verify) and how long an erasure takes.
    Erasure {
        /// Row changes to generate.
        #[arg(long, default_value_t = 200_000)]
        changes: usize,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
    },
    /// What sealing costs the worker, how soon changes are sealed, and verify's speed.
    Seals {
        /// Row changes to generate.
        #[arg(long, default_value_t = 200_000)]
        changes: usize,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
    },
    /// The console's pages on the read-targets data set: time to the whole page, and bytes.
    ConsolePages {
        /// Changes in the table (at least 1,000,000).
        #[arg(long, default_value_t = 10_000_000)]
        changes: u64,
        /// Requests per page.
        #[arg(long, default_value_t = 40)]
        probes: usize,
    },
    /// Commit-to-stored latency (p50/p99) under a steady load at a fraction of the maximum rate.
    Lag {
        /// Seconds of steady load per run.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// The load, as a fraction of the maximum rate measured first.
        #[arg(long, default_value_t = 0.5)]
        fraction: f64,
        /// Runs (the median is reported).
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
    },
    /// Stored changes/s through NATS JetStream (capture + 1 or 2 ingest processes) vs `run`.
    NatsScale {
        /// Row changes to generate.
        #[arg(long, default_value_t = 200_000)]
        changes: usize,
        /// Repetitions (the median is reported).
        #[arg(long, default_value_t = 3)]
        repetitions: usize,
    },
    /// Runs an ingest process in this process until SIGTERM (used by nats-scale).
    #[command(name = "__ingest", hide = true)]
    Ingest {
        #[arg(long)]
        destination_url: String,
        #[arg(long)]
        nats_url: String,
        #[arg(long)]
        nats_stream: String,
        #[arg(long)]
        nats_subject: String,
    },
    /// Runs the worker in this process until SIGTERM (used by the scenarios).
    #[command(name = "__worker", hide = true)]
    Worker {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        slot: String,
        #[arg(long)]
        destination_url: Option<String>,
        /// Publish to NATS JetStream instead of storing (capture).
        #[arg(long, requires_all = ["nats_stream", "nats_subject"])]
        nats_url: Option<String>,
        #[arg(long)]
        nats_stream: Option<String>,
        #[arg(long)]
        nats_subject: Option<String>,
        /// Destination connections storing in parallel (the worker's default without).
        #[arg(long)]
        writers: Option<usize>,
        /// How often it seals, in milliseconds; 0: never (the worker's default without).
        #[arg(long)]
        seal_interval_ms: Option<u64>,
        /// Columns declared personal.
        #[arg(long)]
        personal_columns: Option<String>,
        /// Context keys declared personal.
        #[arg(long)]
        personal_context: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        // The worker processes run as `bemi-worker` does: on one thread, so that their memory
        // and speed are the binary's.
        scenario @ (Scenario::Ingest { .. } | Scenario::Worker { .. }) => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(worker(scenario))
        }
        scenario => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run(scenario)),
    }
}

/// Runs a benchmark scenario.
async fn run(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::WorkerThroughput {
            changes,
            repetitions,
            image_indexes,
        } => throughput::run(changes, repetitions.max(1), image_indexes).await,
        Scenario::WorkerMemory {
            rows,
            wide_rows,
            wide_bytes,
        } => memory::run(&rows, wide_rows, wide_bytes).await,
        Scenario::ForgedMessages { messages, rounds } => forged::run(messages, rounds.max(1)).await,
        Scenario::SeaormInsert {
            rounds,
            seconds,
            clients,
        } => seaorm_insert::run(rounds.max(1), seconds.max(1), clients.max(1)).await,
        Scenario::TriggerCost {
            repetitions,
            statements,
        } => trigger_cost::run(repetitions.max(1), statements.max(1)).await,
        Scenario::WritePath {
            workloads,
            rounds,
            seconds,
            clients,
        } => {
            write_path::run(
                &workloads,
                rounds.max(1),
                seconds.max(1),
                clients.clamp(1, 50),
            )
            .await
        }
        Scenario::HistoryLatency {
            changes,
            probes,
            repetitions,
        } => history_latency::run(changes.max(100_000), probes.max(1), repetitions.max(1)).await,
        Scenario::ReadTargets {
            changes,
            probes,
            repetitions,
        } => read_targets::run(changes.max(1_000_000), probes.max(10), repetitions.max(1)).await,
        Scenario::Seals {
            changes,
            repetitions,
        } => seals::run(changes.max(1_000), repetitions.max(1)).await,
        Scenario::Erasure {
            changes,
            repetitions,
        } => erasure::run(changes.max(1_000), repetitions.max(1)).await,
        Scenario::ConsolePages { changes, probes } => {
            console_pages::run(changes.max(1_000_000), probes.max(5)).await
        }
        Scenario::ChangesBytes { rows, updates } => {
            changes_bytes::run(rows.max(100), updates).await
        }
        Scenario::Lag {
            seconds,
            fraction,
            repetitions,
        } => {
            lag::run(
                seconds.max(1),
                fraction.clamp(0.01, 1.0),
                repetitions.max(1),
            )
            .await
        }
        Scenario::NatsScale {
            changes,
            repetitions,
        } => nats_scale::run(changes.max(1_000), repetitions.max(1)).await,
        Scenario::Ingest { .. } | Scenario::Worker { .. } => {
            anyhow::bail!("the worker processes run on their own runtime")
        }
    }
}

/// Runs a worker process (`__worker`, `__ingest`) until SIGTERM.
async fn worker(scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Ingest {
            destination_url,
            nats_url,
            nats_stream,
            nats_subject,
        } => {
            let mut nats = bemi_worker::NatsOptions::new(nats_url);
            nats.stream = nats_stream;
            nats.subject = nats_subject;
            worker_process::run_ingest(&destination_url, nats).await
        }
        Scenario::Worker {
            database_url,
            slot,
            destination_url,
            nats_url,
            nats_stream,
            nats_subject,
            writers,
            seal_interval_ms,
            personal_columns,
            personal_context,
        } => {
            let nats = nats_url.map(|url| {
                let mut nats = bemi_worker::NatsOptions::new(url);
                nats.stream = nats_stream.unwrap_or_default();
                nats.subject = nats_subject.unwrap_or_default();
                nats
            });
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            worker_process::run_worker(
                &database_url,
                &slot,
                destination_url.as_deref(),
                nats,
                worker_process::Tuning {
                    writers,
                    seal_interval_ms,
                    // Leaked once per worker process: the tuning is `Copy`.
                    personal_columns: personal_columns.map(|text| &*text.leak()),
                    personal_context: personal_context.map(|text| &*text.leak()),
                },
            )
            .await
        }
        _ => anyhow::bail!("not a worker process"),
    }
}
