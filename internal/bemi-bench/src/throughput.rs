//! `worker-throughput`: the worker's stored changes per second against the read limit (raw
//! drain of the slot) and the write limit (COPY of the same rows into an identical table).

use std::time::Instant;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};

use crate::environment::Environment;
use crate::stats::summary;
use crate::worker_process::measure;
use crate::workload::{SCHEMA, mixed};

const COLUMNS: &str = "id, primary_key, \"before\", \"after\", context, database, schema, \"table\", \
    operation, committed_at, queued_at, transaction_id, position, commit_lsn, sequence, after_changed";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Drain,
    Copy,
    /// The same COPY split over two connections, committed together.
    CopyTwo,
    Worker,
    /// The worker with one writer (one batch at a time).
    WorkerOneWriter,
    /// The worker storing into another database of the same cluster.
    WorkerSeparate,
}

/// Measures, on identical slots, the raw drain, COPY of the stored rows, and the worker; with
/// `image_indexes`, the changes tables have setup's image indexes.
pub(crate) async fn run(
    changes: usize,
    repetitions: usize,
    image_indexes: bool,
) -> anyhow::Result<()> {
    let env = Environment::start("throughput", SCHEMA).await?;
    let destination_sql = bemi_core::setup::Setup::new(
        bemi_core::setup::SetupOptions::default().image_indexes(image_indexes),
    )?
    .destination_sql();
    env.client.batch_execute(&destination_sql).await?;
    // The destination in another database of the cluster: the walsender then skips the
    // worker's own writes instead of decoding them.
    let audit = {
        let cluster = std::sync::Arc::clone(&env.cluster);
        tokio::task::spawn_blocking(move || {
            bemi_test_harness::TestDatabase::new_in(&cluster, "bench::throughput_audit")
        })
        .await?
    };
    let audit_client = audit.connect().await;
    audit_client.batch_execute(&destination_sql).await?;
    let audit_url = audit.url();
    let slot = |kind: &str, repetition: usize| format!("bench_{kind}_{repetition}");
    for repetition in 0..repetitions {
        env.create_slot(&slot("drain", repetition)).await?;
        env.create_slot(&slot("worker", repetition)).await?;
        env.create_slot(&slot("one_writer", repetition)).await?;
        env.create_slot(&slot("separate", repetition)).await?;
    }
    let generated = Instant::now();
    let statements = mixed(changes, 1_000);
    for statement in &statements {
        env.client.batch_execute(statement).await?;
    }
    let target = env.current_lsn().await?;
    let generation = generated.elapsed();
    env.client
        .batch_execute("CREATE TABLE bemi.changes_copy (LIKE bemi.changes_stored INCLUDING ALL)")
        .await?;

    let mut copy_data: Option<Vec<Bytes>> = None;
    let mut seconds: Vec<(Method, f64)> = Vec::new();
    let mut peak_rss = Vec::new();
    let mut separate_rss = Vec::new();
    for repetition in 0..repetitions {
        // Rotate the order; the first repetition runs the worker first (its rows feed COPY).
        let mut order = vec![
            Method::Worker,
            Method::Copy,
            Method::CopyTwo,
            Method::Drain,
            Method::WorkerOneWriter,
            Method::WorkerSeparate,
        ];
        order.rotate_right(repetition % 6);
        if copy_data.is_none() {
            order.retain(|method| *method != Method::Worker);
            order.insert(0, Method::Worker);
        }
        for method in order {
            env.client.batch_execute("CHECKPOINT").await?;
            let elapsed = match method {
                Method::Worker => {
                    let run =
                        measure_fresh(&env, &slot("worker", repetition), &target, changes, None)
                            .await?;
                    peak_rss.push(run.peak_rss_kib as f64 / 1024.0);
                    if copy_data.is_none() {
                        copy_data = Some(copy_out(&env.client).await?);
                    }
                    run.elapsed
                }
                Method::WorkerOneWriter => {
                    measure_fresh(
                        &env,
                        &slot("one_writer", repetition),
                        &target,
                        changes,
                        Some(1),
                    )
                    .await?
                    .elapsed
                }
                Method::WorkerSeparate => {
                    audit_client
                        .batch_execute(
                            "TRUNCATE bemi.changes_stored; DELETE FROM bemi.worker_progress;",
                        )
                        .await?;
                    env.client.batch_execute("CHECKPOINT").await?;
                    let run = measure(
                        &env,
                        &slot("separate", repetition),
                        &target,
                        changes,
                        Some((&audit_url, &audit_client)),
                        crate::worker_process::Tuning::default(),
                    )
                    .await?;
                    separate_rss.push(run.peak_rss_kib as f64 / 1024.0);
                    run.elapsed
                }
                Method::Copy => {
                    let data = fresh_copy(&env, copy_data.as_deref()).await?;
                    let started = Instant::now();
                    copy_in(&env.client, data).await?;
                    started.elapsed()
                }
                Method::CopyTwo => {
                    let data = fresh_copy(&env, copy_data.as_deref()).await?;
                    let second = env.database.connect().await;
                    let (first_half, second_half) = data.split_at(data.len() / 2);
                    let started = Instant::now();
                    let (first, second) = tokio::join!(
                        copy_in(&env.client, first_half),
                        copy_in(&second, second_half)
                    );
                    first?;
                    second?;
                    started.elapsed()
                }
                Method::Drain => {
                    let started = Instant::now();
                    drain(&env, &slot("drain", repetition), &target).await?;
                    started.elapsed()
                }
            };
            eprintln!(
                "repetition {}: {method:?} {:.2} s",
                repetition + 1,
                elapsed.as_secs_f64()
            );
            seconds.push((method, elapsed.as_secs_f64()));
        }
    }

    let of = |method: Method| -> Vec<f64> {
        seconds
            .iter()
            .filter(|(m, _)| *m == method)
            .map(|(_, seconds)| *seconds)
            .collect()
    };
    let (drain_s, copy_s, worker_s, separate_s) = (
        of(Method::Drain),
        of(Method::Copy),
        of(Method::Worker),
        of(Method::WorkerSeparate),
    );
    let copy_two_s = of(Method::CopyTwo);
    let one_writer_s = of(Method::WorkerOneWriter);
    let rate = |values: &[f64]| -> Vec<f64> { values.iter().map(|s| changes as f64 / s).collect() };
    let ratio = |numerator: &[f64], denominator: &[f64]| -> Vec<f64> {
        // Per repetition: time of the limit / time of the worker = rate ratio.
        numerator
            .iter()
            .zip(denominator)
            .map(|(worker, limit)| limit / worker)
            .collect()
    };
    println!(
        "## worker-throughput: {changes} row changes ({} transactions of 1,000; 3/4 inserts, 1/4 updates; every statement with a context){}",
        statements.len(),
        if image_indexes {
            "; changes tables with the image indexes"
        } else {
            ""
        }
    );
    println!();
    println!(
        "{}; generated in {:.1} s; median [min–max] of {repetitions} repetitions",
        env.machine().await?,
        generation.as_secs_f64()
    );
    println!();
    println!("| method | seconds | changes/s |");
    println!("| --- | --- | --- |");
    println!(
        "| (a) raw drain, `pg_recvlogical` (pgoutput, messages) — the read limit | {} | {} |",
        summary(&drain_s, 2),
        summary(&rate(&drain_s), 0)
    );
    println!(
        "| (b) `COPY` of the same rows into an identical `changes` table — the write limit | {} | {} |",
        summary(&copy_s, 2),
        summary(&rate(&copy_s), 0)
    );
    println!(
        "| (b2) the same `COPY` split over two connections, in parallel — the write limit of two writers | {} | {} |",
        summary(&copy_two_s, 2),
        summary(&rate(&copy_two_s), 0)
    );
    println!(
        "| (c) `bemi-worker` (two writers, the default), start to all stored and confirmed (`changes` in the source database) | {} | {} |",
        summary(&worker_s, 2),
        summary(&rate(&worker_s), 0)
    );
    println!(
        "| (c1) the same with one writer (`--writers 1`: one batch at a time) | {} | {} |",
        summary(&one_writer_s, 2),
        summary(&rate(&one_writer_s), 0)
    );
    println!(
        "| (c') the same, `changes` in another database of the cluster | {} | {} |",
        summary(&separate_s, 2),
        summary(&rate(&separate_s), 0)
    );
    println!();
    println!(
        "- (c) / (b): {}, (c') / (b): {} (target ≥ 0.9)",
        summary(&ratio(&worker_s, &copy_s), 2),
        summary(&ratio(&separate_s, &copy_s), 2)
    );
    println!(
        "- (c) / (a): {}, (c') / (a): {} (target ≥ 0.6)",
        summary(&ratio(&worker_s, &drain_s), 2),
        summary(&ratio(&separate_s, &drain_s), 2)
    );
    println!(
        "- (c1) / (a): {} (one writer); (c) / (c1): {} (two writers against one)",
        summary(&ratio(&one_writer_s, &drain_s), 2),
        summary(&ratio(&worker_s, &one_writer_s), 2)
    );
    println!(
        "- (b) / (a): {} (the most any writer into this table reaches against the read limit)",
        summary(&ratio(&copy_s, &drain_s), 2)
    );
    println!(
        "- (b2) / (a): {} (two writers)",
        summary(&ratio(&copy_two_s, &drain_s), 2)
    );
    println!(
        "- worker peak RSS: {} MiB, (c') {} MiB",
        summary(&peak_rss, 1),
        summary(&separate_rss, 1)
    );
    Ok(())
}

/// Empties the source database's changes table and progress, then measures a worker with
/// `writers` storing into it.
async fn measure_fresh(
    env: &Environment,
    slot: &str,
    target: &str,
    changes: usize,
    writers: Option<usize>,
) -> anyhow::Result<crate::worker_process::Run> {
    let tuning = crate::worker_process::Tuning {
        writers,
        ..crate::worker_process::Tuning::default()
    };
    env.client
        .batch_execute("TRUNCATE bemi.changes_stored; DELETE FROM bemi.worker_progress;")
        .await?;
    env.client.batch_execute("CHECKPOINT").await?;
    measure(env, slot, target, changes, None, tuning).await
}

/// Empties the copy table; the rows the first worker run stored, to copy into it.
async fn fresh_copy<'a>(
    env: &Environment,
    data: Option<&'a [Bytes]>,
) -> anyhow::Result<&'a [Bytes]> {
    let data = data.ok_or_else(|| anyhow::anyhow!("no rows to copy"))?;
    env.client
        .batch_execute("TRUNCATE bemi.changes_copy; CHECKPOINT;")
        .await?;
    Ok(data)
}

async fn copy_out(client: &tokio_postgres::Client) -> anyhow::Result<Vec<Bytes>> {
    let stream = client
        .copy_out(&format!(
            "COPY (SELECT {COLUMNS} FROM bemi.changes_stored) TO STDOUT"
        ))
        .await?;
    let mut stream = std::pin::pin!(stream);
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk?);
    }
    Ok(chunks)
}

async fn copy_in(client: &tokio_postgres::Client, data: &[Bytes]) -> anyhow::Result<()> {
    client.batch_execute("BEGIN").await?;
    let sink = client
        .copy_in(&format!("COPY bemi.changes_copy ({COLUMNS}) FROM STDIN"))
        .await?;
    let mut sink = std::pin::pin!(sink);
    for chunk in data {
        sink.feed(chunk.clone()).await?;
    }
    sink.as_mut().finish().await?;
    client.batch_execute("COMMIT").await?;
    Ok(())
}

async fn drain(env: &Environment, slot: &str, target: &str) -> anyhow::Result<()> {
    let program = env
        .cluster
        .bin_dir()
        .map_or_else(|| "pg_recvlogical".into(), |dir| dir.join("pg_recvlogical"));
    let status = tokio::process::Command::new(program)
        .args([
            "-d",
            &env.database.url(),
            "--slot",
            slot,
            "--start",
            "--endpos",
            target,
            "--no-loop",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=bemi",
            "-o",
            "messages=true",
            "-f",
            "/dev/null",
        ])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "pg_recvlogical failed: {status}");
    Ok(())
}
