//! `worker-memory`: the worker's peak resident memory while it stores one large transaction,
//! and while idle.

use std::time::Duration;

use crate::environment::Environment;
use crate::worker_process::{Tuning, WorkerProcess, measure};
use crate::workload::{SCHEMA, insert};

/// For each size, stores one transaction of that many inserted rows and reports the worker's
/// peak RSS; then the wide-row case: one UPDATE of `wide_rows` rows holding `wide_bytes` of
/// `bytea` each.
pub(crate) async fn run(
    sizes: &[usize],
    wide_rows: usize,
    wide_bytes: usize,
) -> anyhow::Result<()> {
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
        if rows == 0 {
            continue;
        }
        let env = Environment::in_cluster(
            std::sync::Arc::clone(&first.cluster),
            &format!("memory-{rows}"),
            SCHEMA,
        )
        .await?;
        env.create_slot("bench_memory").await?;
        env.client.batch_execute(&insert(0, rows)).await?;
        let target = env.current_lsn().await?;
        env.client.batch_execute("CHECKPOINT").await?;
        let run = measure(&env, "bench_memory", &target, rows, None, Tuning::default()).await?;
        let (elapsed, peak) = (run.elapsed, run.peak_rss_kib);
        println!(
            "| {rows} | {:.1} | {:.0} | {:.1} |",
            elapsed.as_secs_f64(),
            rows as f64 / elapsed.as_secs_f64(),
            peak as f64 / 1024.0
        );
    }
    wide(&first, wide_rows, wide_bytes).await
}

/// One UPDATE of `rows` rows of `bytes` bytes of `bytea` each (replica identity FULL, as bemi
/// sets it: the old image carries the whole value).
async fn wide(first: &Environment, rows: usize, bytes: usize) -> anyhow::Result<()> {
    let schema = "CREATE TABLE blob (id int PRIMARY KEY, note text, data bytea) \
                  WITH (autovacuum_enabled = false); ALTER TABLE blob REPLICA IDENTITY FULL;";
    let env = Environment::in_cluster(std::sync::Arc::clone(&first.cluster), "memory-wide", schema)
        .await?;
    // Random bytes: incompressible, so TOAST stores them at full size.
    env.client
        .batch_execute(&format!(
            "INSERT INTO blob SELECT i, 'a', \
               (SELECT string_agg(pg_catalog.decode(md5(i::text || '-' || j::text), 'hex'), ''::bytea) \
                FROM generate_series(1, {}) AS j) \
             FROM generate_series(1, {rows}) AS i",
            bytes.div_ceil(16)
        ))
        .await?;
    env.create_slot("bench_memory").await?;
    env.client
        .batch_execute("UPDATE blob SET note = 'b' /*Bemi {\"job\":\"wide\"} Bemi*/")
        .await?;
    let target = env.current_lsn().await?;
    let run = measure(&env, "bench_memory", &target, rows, None, Tuning::default()).await?;
    let stored: i64 = env
        .client
        .query_one(
            "SELECT max(pg_catalog.octet_length(\"before\"::text))::bigint FROM bemi.changes",
            &[],
        )
        .await?
        .get(0);
    let largest = stored as f64 / f64::from(1 << 20);
    let peak = run.peak_rss_kib as f64 / 1024.0;
    println!();
    println!(
        "One UPDATE of {rows} rows holding {:.1} MiB of bytea each (replica identity FULL): \
         stored in {:.1} s; worker peak RSS {peak:.1} MiB; largest row image as stored {largest:.1} MiB \
         (bound: 64 MiB + 3 x {largest:.1} = {:.1} MiB)",
        bytes as f64 / f64::from(1 << 20),
        run.elapsed.as_secs_f64(),
        64.0 + 3.0 * largest
    );
    Ok(())
}
