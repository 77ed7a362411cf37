//! `erasure`: what personal values cost, and how long an erasure takes.
//!
//! The worker-throughput workload (rows of mixed sizes, 3/4 inserts, 1/4 updates, every
//! statement with a context) is generated once; per repetition, in rotated order, on identical
//! slots: the worker sealing as it does by default, with nothing declared personal, and with
//! the item's `name` and `description` columns and the context's `user_id` declared personal
//! (every change then holds personal values: its leaf is hashed from commitments). Each is timed
//! until its slot confirmed the end, then until every change is sealed, and `verify` reads the
//! trail back. Last, with the personal trail, a worker runs and, once it has caught up, one item
//! is erased (with the contexts naming its author), timed from the request to the worker having
//! carried it out.

use std::time::{Duration, Instant};

use crate::environment::Environment;
use crate::seals::{measure_verify, prepare, run_tuned};
use crate::stats::summary;
use crate::worker_process::{Tuning, WorkerProcess};

/// The columns and context keys declared personal in the personal runs.
const PERSONAL_COLUMNS: &str = "item.name,item.description";
const PERSONAL_CONTEXT: &str = "user_id";

/// `verify` over the trail: wall seconds and the verifier's CPU seconds.
async fn verify(env: &Environment, changes: usize) -> anyhow::Result<(f64, f64)> {
    let (wall, own, _) = measure_verify(env, changes, bemi_worker::seal::DEFAULT_READERS).await?;
    Ok((wall, own))
}

pub(crate) async fn run(changes: usize, repetitions: usize) -> anyhow::Result<()> {
    let (env, target) = prepare("erasure", changes, repetitions, ["plain", "personal"]).await?;
    let personal = Tuning {
        seal_interval_ms: Some(5_000),
        personal_columns: Some(PERSONAL_COLUMNS),
        personal_context: Some(PERSONAL_CONTEXT),
        ..Tuning::default()
    };
    let plain = Tuning {
        seal_interval_ms: Some(5_000),
        ..Tuning::default()
    };
    let (mut stored, mut sealed, mut verify_wall, mut verify_cpu) = (
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
        [Vec::new(), Vec::new()],
    );
    for repetition in 0..repetitions {
        // Rotated, the personal run last in the last repetition: its trail is erased from.
        let personal_first = repetition % 2 == 1 && repetition + 1 < repetitions;
        let order = if personal_first { [1, 0] } else { [0, 1] };
        for kind in order {
            let (slot, tuning) = if kind == 1 {
                (format!("bench_personal_{repetition}"), personal)
            } else {
                (format!("bench_plain_{repetition}"), plain)
            };
            env.client.batch_execute("TRUNCATE bemi.erasures").await?;
            let (to_stored, to_sealed) = run_tuned(&env, &slot, &target, changes, tuning).await?;
            let (wall, cpu) = verify(&env, changes).await?;
            eprintln!(
                "repetition {}: {} {to_stored:.2} s stored, {:.2} s sealed, verify {wall:.2} s ({cpu:.2} CPU s)",
                repetition + 1,
                if kind == 1 { "personal" } else { "plain" },
                to_sealed.unwrap_or(f64::NAN)
            );
            stored[kind].push(to_stored);
            sealed[kind].push(to_sealed.unwrap_or(f64::NAN));
            verify_wall[kind].push(wall);
            verify_cpu[kind].push(cpu);
        }
    }
    let with_personal: i64 = env
        .client
        .query_one(
            "SELECT count(*) FROM bemi.changes_stored WHERE personal IS NOT NULL",
            &[],
        )
        .await?
        .get(0);

    // An erasure with the worker running: item 17 and the contexts of its author.
    let author: i64 = env
        .client
        .query_one(
            "SELECT (context ->> 'user_id')::int8 FROM bemi.changes WHERE \"table\" = 'item' \
             AND primary_key = '17' ORDER BY commit_lsn LIMIT 1",
            &[],
        )
        .await?
        .get(0);
    let slot = format!("bench_personal_{}", repetitions - 1);
    let worker = WorkerProcess::spawn_tuned(&env.database.url(), &slot, None, personal)?;
    // Timed from a worker that is streaming and caught up: this bench's source is also its
    // destination, so the slot has the other runs' writes to read through first.
    let now = env.current_lsn().await?;
    crate::worker_process::wait_confirmed(
        &env.client,
        &slot,
        &now,
        Instant::now(),
        Duration::from_secs(120),
    )
    .await?;
    let source = bemi_worker::ConnectionOptions::parse(&env.database.url())?;
    let request = bemi_worker::ErasureRequest::new("public.item".parse()?, "17", "benchmark")
        .context_key("user_id");
    let started = Instant::now();
    let requested_at = chrono::Utc::now();
    let outcome = bemi_worker::request_erasure(
        &source,
        &source,
        bemi_core::setup::SetupOptions::default().changes_table_name(),
        &request,
        Duration::from_secs(120),
    )
    .await?;
    let erase_s = started.elapsed().as_secs_f64();
    let bemi_worker::ErasureOutcome::Erased {
        changes: erased,
        erased_at,
        ..
    } = outcome
    else {
        anyhow::bail!("the erasure was not carried out: {outcome:?}");
    };
    // The erasure request is a change of its own, sealed with the others.
    let deadline = Instant::now() + Duration::from_secs(120);
    while crate::seals::sealed(&env).await? < changes + 1 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the erasure request was not sealed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.stop().await?;
    let (wall, _) = verify(&env, changes + 1).await?;

    let carried_s = (erased_at - requested_at).num_milliseconds() as f64 / 1000.0;
    let rate =
        |seconds: &[f64]| -> Vec<f64> { seconds.iter().map(|s| changes as f64 / s).collect() };
    let ratio =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(a, b)| a / b).collect() };
    println!(
        "## erasure: {changes} row changes, {repetitions} repetitions, {}",
        env.machine().await?
    );
    println!();
    println!("| measure | nothing personal | `name`, `description`, context `user_id` personal |");
    println!("| --- | --- | --- |");
    println!(
        "| worker to stored and confirmed, s | {} | {} |",
        summary(&stored[0], 2),
        summary(&stored[1], 2)
    );
    println!(
        "| the same, to every change sealed, s | {} | {} |",
        summary(&sealed[0], 2),
        summary(&sealed[1], 2)
    );
    println!(
        "| `verify`, changes/s (wall) | {} | {} |",
        summary(&rate(&verify_wall[0]), 0),
        summary(&rate(&verify_wall[1]), 0)
    );
    println!(
        "| `verify`, changes per CPU second of the verifier | {} | {} |",
        summary(&rate(&verify_cpu[0]), 0),
        summary(&rate(&verify_cpu[1]), 0)
    );
    println!();
    println!(
        "- storing, personal against plain (time): {} (per repetition)",
        summary(&ratio(&stored[1], &stored[0]), 2)
    );
    println!(
        "- verify CPU, personal against plain: {}",
        summary(&ratio(&verify_cpu[1], &verify_cpu[0]), 2)
    );
    println!("- changes holding personal values: {with_personal} of {changes}");
    println!(
        "- erasing item 17 and the contexts of its author (user {author}): {erased} changes, carried out {carried_s:.2} s after the request (worker running), {erase_s:.2} s with the VACUUM of the partition that held them; verify afterwards {wall:.2} s, intact"
    );
    Ok(())
}
