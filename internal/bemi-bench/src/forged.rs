//! `forged-messages`: what a flood of forged `_bemi_snapshot` messages from any role costs the
//! trail: the delay they add before the next real change is stored.

use std::time::{Duration, Instant};

use crate::environment::Environment;
use crate::stats::summary;
use crate::worker_process::WorkerProcess;

const SCHEMA: &str = "CREATE TABLE item (id bigserial PRIMARY KEY, note text NOT NULL);";

/// Per round: the time from an insert's commit to its change stored, alone and right after a
/// committed transaction of `messages` forged snapshot headers.
pub(crate) async fn run(messages: usize, rounds: usize) -> anyhow::Result<()> {
    let env = Environment::start("forged", SCHEMA).await?;
    let machine = env.machine().await?;
    env.create_slot("bench_forged").await?;
    let worker = WorkerProcess::spawn(&env.database.url(), "bench_forged", None)?;
    let mut stored = 0_i64;
    // Warm up: the worker connects and streams.
    stored += 1;
    insert_and_wait(&env, stored, Duration::from_secs(120)).await?;
    let (mut alone, mut after_flood) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        stored += 1;
        alone.push(insert_and_wait(&env, stored, Duration::from_secs(30)).await?);
        env.client
            .batch_execute(&format!(
                "SELECT count(pg_catalog.pg_logical_emit_message(true, '_bemi_snapshot', \
                   '{{\"relation\":1,\"schema\":\"public\",\"table\":\"' || pg_catalog.repeat('x', 64) || '\",\"columns\":[]}}')) \
                 FROM generate_series(1, {messages})"
            ))
            .await?;
        stored += 1;
        after_flood.push(insert_and_wait(&env, stored, Duration::from_secs(30)).await?);
    }
    worker.stop().await?;
    let ms = |durations: &[Duration]| -> Vec<f64> {
        durations.iter().map(|d| d.as_secs_f64() * 1000.0).collect()
    };
    let middle = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let (alone, flood) = (ms(&alone), ms(&after_flood));
    println!(
        "## forged-messages: {messages} forged snapshot headers in one transaction, then an insert"
    );
    println!();
    println!(
        "{machine}; median [min–max] of {rounds} rounds, commit to stored (polled every 2 ms)"
    );
    println!();
    println!("| the insert | ms |");
    println!("| --- | --- |");
    println!("| alone | {} |", summary(&alone, 0));
    println!(
        "| right after the forged transaction committed | {} |",
        summary(&flood, 0)
    );
    println!();
    println!(
        "- delay added by the flood (difference of medians): {:.0} ms",
        middle(&flood) - middle(&alone)
    );
    Ok(())
}

/// Inserts one row and waits until `count` changes are stored; returns the time from the
/// insert's commit.
async fn insert_and_wait(
    env: &Environment,
    count: i64,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    env.client
        .batch_execute("INSERT INTO item (note) VALUES ('real')")
        .await?;
    let started = Instant::now();
    loop {
        let stored: i64 = env
            .client
            .query_one("SELECT count(*) FROM bemi.changes", &[])
            .await?
            .get(0);
        if stored >= count {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "the change was not stored in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
