//! `seals`: what sealing costs the worker, how soon after storing the changes are sealed, and
//! how fast `verify` reads a sealed trail back.
//!
//! The worker-throughput workload (rows of mixed sizes, 3/4 inserts, 1/4 updates, every
//! statement with a context) is generated once; per repetition, in rotated order, on identical
//! slots: the worker with sealing off, and the worker as it runs by default (sealing every 5 s),
//! timed until its slot confirmed the end, then until every change is sealed. Then `verify`
//! reads the sealed trail back, three times.

use std::time::{Duration, Instant};

use crate::environment::Environment;
use crate::stats::summary;
use crate::worker_process::{Tuning, WorkerProcess, wait_confirmed};
use crate::workload::{SCHEMA, mixed};

pub(crate) async fn sealed(env: &Environment) -> anyhow::Result<usize> {
    let count: i64 = env
        .client
        .query_one(
            "SELECT coalesce(sum(changes), 0)::int8 FROM bemi.seals",
            &[],
        )
        .await?
        .get(0);
    Ok(usize::try_from(count).unwrap_or_default())
}

/// One worker run from an empty table: seconds to stored and confirmed, and, when it seals,
/// seconds to everything sealed.
async fn run_worker(
    env: &Environment,
    slot: &str,
    target: &str,
    changes: usize,
    seal_interval_ms: u64,
) -> anyhow::Result<(f64, Option<f64>)> {
    run_tuned(
        env,
        slot,
        target,
        changes,
        Tuning {
            seal_interval_ms: Some(seal_interval_ms),
            ..Tuning::default()
        },
    )
    .await
}

/// [`run_worker`] with the worker set up as `tuning` says.
pub(crate) async fn run_tuned(
    env: &Environment,
    slot: &str,
    target: &str,
    changes: usize,
    tuning: Tuning,
) -> anyhow::Result<(f64, Option<f64>)> {
    let seal_interval_ms = tuning.seal_interval_ms.unwrap_or_default();
    env.client
        .batch_execute(
            "TRUNCATE bemi.changes_stored, bemi.seals; DELETE FROM bemi.worker_progress; CHECKPOINT",
        )
        .await?;
    let started = Instant::now();
    let worker = WorkerProcess::spawn_tuned(&env.database.url(), slot, None, tuning)?;
    let stored = wait_confirmed(
        &env.client,
        slot,
        target,
        started,
        Duration::from_secs(3_600),
    )
    .await?
    .as_secs_f64();
    let mut all_sealed = None;
    if seal_interval_ms > 0 {
        while sealed(env).await? < changes {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(3_600),
                "not sealed within an hour"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        all_sealed = Some(started.elapsed().as_secs_f64());
    }
    worker.stop().await?;
    Ok((stored, all_sealed))
}

/// CPU seconds this process and the whole machine have used so far (from `/proc`, in clock
/// ticks of 1/100 s).
fn cpu_seconds() -> anyhow::Result<(f64, f64)> {
    let ticks = |fields: &[&str]| -> f64 {
        fields
            .iter()
            .filter_map(|field| field.parse::<f64>().ok())
            .sum::<f64>()
            / 100.0
    };
    let own = std::fs::read_to_string("/proc/self/stat")?;
    // After the command name in parentheses: utime and stime are fields 14 and 15.
    let after_name = own
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/self/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let process = ticks(fields.get(11..13).unwrap_or_default());
    let machine = std::fs::read_to_string("/proc/stat")?;
    let cpu: Vec<&str> = machine
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    // user, nice, system, (idle, iowait skipped), irq, softirq, steal.
    let busy = ticks(cpu.get(1..4).unwrap_or_default()) + ticks(cpu.get(6..9).unwrap_or_default());
    Ok((process, busy))
}

/// A cluster named `name` with the worker-throughput workload of `changes` row changes, behind a
/// slot `bench_<kind>_<repetition>` per kind and repetition; with the position of its end.
pub(crate) async fn prepare(
    name: &str,
    changes: usize,
    repetitions: usize,
    kinds: [&str; 2],
) -> anyhow::Result<(Environment, String)> {
    let env = Environment::start(name, SCHEMA).await?;
    for repetition in 0..repetitions {
        for kind in kinds {
            env.create_slot(&format!("bench_{kind}_{repetition}"))
                .await?;
        }
    }
    for statement in mixed(changes, 1_000) {
        env.client.batch_execute(&statement).await?;
    }
    let target = env.current_lsn().await?;
    Ok((env, target))
}

/// One `verify` of the trail over `readers` connections, which must find `changes` changes
/// intact: wall seconds, and CPU seconds of this process and of the whole machine.
pub(crate) async fn measure_verify(
    env: &Environment,
    changes: usize,
    readers: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let destination = bemi_worker::ConnectionOptions::parse(&env.database.url())?;
    let changes_table = bemi_core::setup::SetupOptions::default()
        .changes_table_name()
        .clone();
    let started = Instant::now();
    let (process_before, machine_before) = cpu_seconds()?;
    let report = bemi_worker::verify(
        &destination,
        &changes_table,
        &bemi_worker::VerifyOptions::new().readers(readers),
    )
    .await?;
    let wall = started.elapsed().as_secs_f64();
    let (process_after, machine_after) = cpu_seconds()?;
    anyhow::ensure!(
        report.is_intact() && usize::try_from(report.intact) == Ok(changes),
        "verify: {report:?}"
    );
    Ok((
        wall,
        process_after - process_before,
        machine_after - machine_before,
    ))
}

/// A reader count and its measures: wall, verifier CPU and machine CPU seconds per run.
type Verified = (usize, Vec<f64>, Vec<f64>, Vec<f64>);

/// The reader counts `verify` is measured with, side by side.
const VERIFY_READERS: [usize; 3] = [1, 2, 4];

pub(crate) async fn run(changes: usize, repetitions: usize) -> anyhow::Result<()> {
    let (env, target) = prepare("seals", changes, repetitions, ["unsealed", "sealed"]).await?;
    let (mut unsealed_s, mut sealed_stored_s, mut sealed_all_s) =
        (Vec::new(), Vec::new(), Vec::new());
    for repetition in 0..repetitions {
        // Rotated: the sealed run last in even repetitions, so a sealed trail is left for verify.
        let sealed_first = repetition % 2 == 1 && repetition + 1 < repetitions;
        for sealing in if sealed_first {
            [true, false]
        } else {
            [false, true]
        } {
            if sealing {
                let (stored, all) = run_worker(
                    &env,
                    &format!("bench_sealed_{repetition}"),
                    &target,
                    changes,
                    5_000,
                )
                .await?;
                sealed_stored_s.push(stored);
                sealed_all_s.push(all.unwrap_or(f64::NAN));
                eprintln!(
                    "repetition {}: sealing worker {stored:.2} s stored, {:.2} s sealed",
                    repetition + 1,
                    all.unwrap_or(f64::NAN)
                );
            } else {
                let (stored, _) = run_worker(
                    &env,
                    &format!("bench_unsealed_{repetition}"),
                    &target,
                    changes,
                    0,
                )
                .await?;
                unsealed_s.push(stored);
                eprintln!(
                    "repetition {}: worker without sealing {stored:.2} s",
                    repetition + 1
                );
            }
        }
    }
    anyhow::ensure!(
        sealed(&env).await? == changes,
        "the last run left no sealed trail"
    );
    let seal_bytes: i64 = env
        .client
        .query_one(
            "SELECT pg_catalog.pg_total_relation_size('bemi.seals')",
            &[],
        )
        .await?
        .get(0);
    // Each reader count three times, rotated so that none always runs first.
    let mut verified: Vec<Verified> = VERIFY_READERS
        .iter()
        .map(|readers| (*readers, Vec::new(), Vec::new(), Vec::new()))
        .collect();
    for round in 0..3 {
        for offset in 0..verified.len() {
            let (readers, wall_s, verifier_s, machine_s) =
                &mut verified[(round + offset) % VERIFY_READERS.len()];
            let (wall, own, machine) = measure_verify(&env, changes, *readers).await?;
            wall_s.push(wall);
            verifier_s.push(own);
            machine_s.push(machine);
        }
    }
    let rate =
        |seconds: &[f64]| -> Vec<f64> { seconds.iter().map(|s| changes as f64 / s).collect() };
    let ratio: Vec<f64> = sealed_stored_s
        .iter()
        .zip(&unsealed_s)
        .map(|(sealed, unsealed)| unsealed / sealed)
        .collect();
    println!(
        "## seals: {changes} row changes, {repetitions} repetitions, {}",
        env.machine().await?
    );
    println!();
    println!("| measure | seconds | changes/s |");
    println!("| --- | --- | --- |");
    println!(
        "| worker without sealing, to stored and confirmed | {} | {} |",
        summary(&unsealed_s, 2),
        summary(&rate(&unsealed_s), 0)
    );
    println!(
        "| worker sealing (default, every 5 s), to stored and confirmed | {} | {} |",
        summary(&sealed_stored_s, 2),
        summary(&rate(&sealed_stored_s), 0)
    );
    println!(
        "| the same, to every change sealed | {} | - |",
        summary(&sealed_all_s, 2)
    );
    for (readers, verify_s, verifier_cpu_s, machine_cpu_s) in &verified {
        println!(
            "| `verify` over {readers} connection(s), wall time (3 runs) | {} | {} |",
            summary(verify_s, 2),
            summary(&rate(verify_s), 0)
        );
        println!(
            "| the same, per CPU second of the verifier process | {} | {} |",
            summary(verifier_cpu_s, 2),
            summary(&rate(verifier_cpu_s), 0)
        );
        println!(
            "| the same, per CPU second of the whole machine (PostgreSQL included) | {} | {} |",
            summary(machine_cpu_s, 2),
            summary(&rate(machine_cpu_s), 0)
        );
    }
    println!();
    println!(
        "- storing with sealing against without: {} (per repetition)",
        summary(&ratio, 2)
    );
    println!(
        "- seals: {:.1} bytes per change (ids, leaves, block rows, index)",
        seal_bytes as f64 / changes as f64
    );
    Ok(())
}
