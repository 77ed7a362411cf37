//! `lag`: commit-to-stored latency under a steady write load. pgbench (2 clients, tagged
//! single-row INSERTs, a custom script) first finds the maximum rate with the worker running,
//! then runs rate-limited at a fraction of it (default half); the latency of each change is its
//! `created_at` (the worker's write, `clock_timestamp()` per row) minus its `committed_at`.

use std::time::{Duration, Instant};

use crate::environment::Environment;
use crate::stats::summary;
use crate::worker_process::{WorkerProcess, wait_confirmed};

const SCHEMA: &str = "CREATE TABLE event (id bigserial PRIMARY KEY, kind text NOT NULL, \
    payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now());";

const SCRIPT: &str = r#"\set user random(1, 100000)
\set request random(1, 1000000000)
INSERT INTO event (kind, payload) VALUES ('page_view', '{"path": "/todo", "ms": 12}') /*Bemi {"user_id": :user,"endpoint":"\u002ftodo","request_id":"req-:request"} Bemi*/;
"#;

/// Runs pgbench with `extra` arguments; returns its reported tps.
async fn pgbench(
    env: &Environment,
    script: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<f64> {
    let program = env
        .cluster
        .bin_dir()
        .map_or_else(|| "pgbench".into(), |dir| dir.join("pgbench"));
    let script = script.display().to_string();
    let mut args = vec!["-n", "-c", "2", "-j", "2", "-f", &script];
    args.extend_from_slice(extra);
    let url = env.database.url();
    args.push(&url);
    let output = tokio::process::Command::new(program)
        .args(&args)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    text.lines()
        .find_map(|line| {
            line.strip_prefix("tps = ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|number| number.parse().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no tps in pgbench output: {text}"))
}

/// Waits until the worker stored and confirmed everything written so far.
async fn caught_up(env: &Environment, slot: &str) -> anyhow::Result<()> {
    let end = env.current_lsn().await?;
    wait_confirmed(
        &env.client,
        slot,
        &end,
        Instant::now(),
        Duration::from_secs(300),
    )
    .await?;
    Ok(())
}

pub(crate) async fn run(seconds: u64, fraction: f64, repetitions: usize) -> anyhow::Result<()> {
    let env = Environment::start("lag", SCHEMA).await?;
    let slot = format!("{}_lag", env.database.slot_name());
    env.create_slot(&slot).await?;
    let worker = WorkerProcess::spawn(&env.database.url(), &slot, None)?;
    let script = std::env::temp_dir().join(format!("bemi-lag-{}.sql", std::process::id()));
    std::fs::write(&script, SCRIPT)?;

    let mut maximum = Vec::new();
    let mut achieved = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    let mut worst = Vec::new();
    let mut counted = 0_i64;
    for _ in 0..repetitions {
        env.client.batch_execute("CHECKPOINT").await?;
        let max_tps = pgbench(&env, &script, &["-T", "10"]).await?;
        let rate = (max_tps * fraction).max(1.0);
        caught_up(&env, &slot).await?;
        env.client.batch_execute("CHECKPOINT").await?;
        let window_start: String = env
            .client
            .query_one("SELECT clock_timestamp()::text", &[])
            .await?
            .get(0);
        let seconds_text = seconds.to_string();
        let rate_text = format!("{rate:.0}");
        let steady = pgbench(&env, &script, &["-T", &seconds_text, "-R", &rate_text]).await?;
        caught_up(&env, &slot).await?;
        let row = env
            .client
            .query_one(
                "SELECT count(*), \
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), \
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), max(lag) \
                 FROM (SELECT (extract(epoch FROM created_at - committed_at) * 1000)::float8 AS lag \
                       FROM bemi.changes WHERE committed_at > $1::text::timestamptz) l",
                &[&window_start],
            )
            .await?;
        counted += row.get::<_, i64>(0);
        maximum.push(max_tps);
        achieved.push(steady);
        p50.push(row.get::<_, f64>(1));
        p99.push(row.get::<_, f64>(2));
        worst.push(row.get::<_, f64>(3));
        eprintln!(
            "max {max_tps:.0} tps; steady {steady:.0} tps; lag p50 {:.1} ms, p99 {:.1} ms",
            row.get::<_, f64>(1),
            row.get::<_, f64>(2)
        );
    }
    worker.stop().await?;
    let _ = std::fs::remove_file(&script);

    println!(
        "## lag: commit-to-stored latency at {:.0} % of the maximum rate, {seconds} s per run, {}",
        fraction * 100.0,
        env.machine().await?
    );
    println!();
    println!(
        "pgbench, 2 clients, tagged single-row INSERTs; worker defaults (batch 5,000, flush 100 ms); \
         {repetitions} runs, median [min–max]; {counted} changes measured"
    );
    println!();
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| maximum rate with the worker running (tps) | {} |",
        summary(&maximum, 0)
    );
    println!("| steady rate (tps) | {} |", summary(&achieved, 0));
    println!("| lag p50 (ms) | {} |", summary(&p50, 1));
    println!("| lag p99 (ms) | {} |", summary(&p99, 1));
    println!("| lag max (ms) | {} |", summary(&worst, 1));
    Ok(())
}
