//! `bemi-bench`: benchmarks of bemi-rs, each one command that starts its own PostgreSQL
//! (durable settings) and prints a Markdown table. Build in release mode:
//!
//! ```text
//! cargo run --release -p bemi-bench -- worker-throughput
//! cargo run --release -p bemi-bench -- worker-memory
//! cargo run --release -p bemi-bench -- diesel-insert
//! cargo run --release -p bemi-bench -- trigger-cost
//! cargo run --release -p bemi-bench -- seaorm-insert
//! cargo run --release -p bemi-bench -- history-latency
//! ```

mod diesel_insert;
mod environment;
mod history_latency;
mod memory;
mod seaorm_insert;
mod stats;
mod throughput;
mod trigger_cost;
mod worker_process;
mod workload;

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
    },
    /// Worker peak RSS while storing one large transaction, and idle.
    WorkerMemory {
        /// Transaction sizes, in rows.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        rows: Vec<usize>,
    },
    /// Single-row INSERT tps through bemi's Diesel wrapper vs plain Diesel.
    DieselInsert {
        /// Interleaved rounds (each runs every variant once).
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Seconds per variant per round.
        #[arg(long, default_value_t = 5)]
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
    /// Runs the worker in this process until SIGTERM (used by the scenarios).
    #[command(name = "__worker", hide = true)]
    Worker {
        #[arg(long)]
        database_url: String,
        #[arg(long)]
        slot: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::WorkerThroughput {
            changes,
            repetitions,
        } => throughput::run(changes, repetitions.max(1)).await,
        Scenario::WorkerMemory { rows } => memory::run(&rows).await,
        Scenario::SeaormInsert {
            rounds,
            seconds,
            clients,
        } => seaorm_insert::run(rounds.max(1), seconds.max(1), clients.max(1)).await,
        Scenario::TriggerCost {
            repetitions,
            statements,
        } => trigger_cost::run(repetitions.max(1), statements.max(1)).await,
        Scenario::DieselInsert {
            rounds,
            seconds,
            clients,
        } => diesel_insert::run(rounds.max(1), seconds.max(1), clients.max(1)).await,
        Scenario::HistoryLatency {
            changes,
            probes,
            repetitions,
        } => history_latency::run(changes.max(100_000), probes.max(1), repetitions.max(1)).await,
        Scenario::Worker { database_url, slot } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            worker_process::run_worker(&database_url, &slot).await
        }
    }
}
