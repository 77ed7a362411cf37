//! `worker-memory`: the worker's peak resident memory while it stores one large transaction,
//! and while idle.

use std::time::Duration;

use crate::environment::Environment;
use crate::worker_process::{WorkerProcess, measure};
use crate::workload::{SCHEMA, insert};

/// For each size, stores one transaction of that many inserted rows and reports the worker's
/// peak RSS.
pub(crate) async fn run(sizes: &[usize]) -> anyhow::Result<()> {
    let first = Environment::start("memory-idle", SCHEMA).await?;
    let machine = first.machine().await?;
    // Idle: nothing to stream.
    first.create_slot("bench_idle").await?;
    let idle_worker = WorkerProcess::spawn(&first.database.url(), "bench_idle", None)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = idle_worker.rss_kib().unwrap_or(0);
    idle_worker.stop().await?;

    println!("## worker-memory: one transaction inserting N rows (one statement with a context)");
    println!();
    println!("{machine}; worker defaults (batch size 5,000)");
    println!();
    println!("| rows in the transaction | stored in (s) | changes/s | worker peak RSS (MiB) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| 0 (idle, 2 s after start) | - | - | {:.1} |",
        idle as f64 / 1024.0
    );
    for &rows in sizes {
        let env = Environment::in_cluster(first.cluster.clone(), &format!("memory-{rows}"), SCHEMA)
            .await?;
        env.create_slot("bench_memory").await?;
        env.client.batch_execute(&insert(0, rows)).await?;
        let target = env.current_lsn().await?;
        env.client.batch_execute("CHECKPOINT").await?;
        let run = measure(&env, "bench_memory", &target, rows, None).await?;
        let (elapsed, peak) = (run.elapsed, run.peak_rss_kib);
        println!(
            "| {rows} | {:.1} | {:.0} | {:.1} |",
            elapsed.as_secs_f64(),
            rows as f64 / elapsed.as_secs_f64(),
            peak as f64 / 1024.0
        );
    }
    Ok(())
}
