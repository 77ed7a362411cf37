//! `nats-scale`: stored changes per second through NATS JetStream (`capture` + 1 or 2 `ingest`
//! processes) against the single `run` process, on identical slots, in one run.

use std::time::{Duration, Instant};

use bemi_test_harness::NatsServer;

use crate::environment::Environment;
use crate::stats::summary;
use crate::worker_process::WorkerProcess;
use crate::workload::{SCHEMA, mixed};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Run,
    Nats(usize),
}

/// Waits until `bemi.changes` holds `expected` rows; returns the time since `started`.
async fn wait_stored(
    client: &tokio_postgres::Client,
    expected: i64,
    started: Instant,
) -> anyhow::Result<Duration> {
    loop {
        let stored: i64 = client
            .query_one("SELECT count(*) FROM bemi.changes", &[])
            .await?
            .get(0);
        anyhow::ensure!(
            stored <= expected,
            "{stored} changes stored, {expected} expected"
        );
        if stored == expected {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1_800),
            "not stored within 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn run(changes: usize, repetitions: usize) -> anyhow::Result<()> {
    let env = Environment::start("nats_scale", SCHEMA).await?;
    let nats = tokio::task::spawn_blocking(NatsServer::start).await?;
    let methods = [Method::Run, Method::Nats(1), Method::Nats(2)];
    let slot = |method: Method, repetition: usize| match method {
        Method::Run => format!("bench_run_{repetition}"),
        Method::Nats(ingest) => format!("bench_nats{ingest}_{repetition}"),
    };
    for repetition in 0..repetitions {
        for method in methods {
            env.create_slot(&slot(method, repetition)).await?;
        }
    }
    for statement in mixed(changes, 1_000) {
        env.client.batch_execute(&statement).await?;
    }
    let expected = i64::try_from(changes)?;
    let url = env.database.url();
    let nats_url = nats.url();
    let mut seconds: Vec<(Method, f64)> = Vec::new();
    for repetition in 0..repetitions {
        let mut order = methods.to_vec();
        order.rotate_right(repetition % methods.len());
        for method in order {
            env.client
                .batch_execute(
                    "TRUNCATE bemi.changes_stored; DELETE FROM bemi.worker_progress; CHECKPOINT;",
                )
                .await?;
            let slot = slot(method, repetition);
            let stream = format!("BENCH_{slot}");
            let subject = format!("bench.{slot}");
            let started = Instant::now();
            let children = match method {
                Method::Run => vec![WorkerProcess::spawn(&url, &slot, None)?],
                Method::Nats(ingest) => {
                    let nats_args = [
                        "--nats-url",
                        nats_url.as_str(),
                        "--nats-stream",
                        stream.as_str(),
                        "--nats-subject",
                        subject.as_str(),
                    ];
                    let mut capture = vec!["__worker", "--database-url", &url, "--slot", &slot];
                    capture.extend(nats_args);
                    let mut children = vec![WorkerProcess::spawn_with(&capture)?];
                    for _ in 0..ingest {
                        let mut args = vec!["__ingest", "--destination-url", &url];
                        args.extend(nats_args);
                        children.push(WorkerProcess::spawn_with(&args)?);
                    }
                    children
                }
            };
            let elapsed = wait_stored(&env.client, expected, started).await?;
            for child in children {
                child.stop().await?;
            }
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
    let rate = |values: &[f64]| -> Vec<f64> { values.iter().map(|s| changes as f64 / s).collect() };
    let ratio = |method: Method| -> Vec<f64> {
        of(Method::Run)
            .iter()
            .zip(of(method))
            .map(|(run, other)| run / other)
            .collect()
    };
    println!("## nats-scale: {changes} row changes, start to all stored");
    println!();
    println!(
        "{}; nats-server with JetStream (file storage) on the same machine; median [min–max] of {repetitions} repetitions",
        env.machine().await?
    );
    println!();
    println!("| method | seconds | changes/s | rate / `run` |");
    println!("| --- | --- | --- | --- |");
    for (method, label) in [
        (Method::Run, "`run` (one process, in-process channel)"),
        (Method::Nats(1), "`capture` + 1 `ingest`"),
        (Method::Nats(2), "`capture` + 2 `ingest`"),
    ] {
        println!(
            "| {label} | {} | {} | {} |",
            summary(&of(method), 2),
            summary(&rate(&of(method)), 0),
            summary(&ratio(method), 2)
        );
    }
    Ok(())
}
