//! `seaorm-insert`: single-row INSERT throughput through `bemi_seaorm::Connection` with a
//! context, against plain SeaORM without bemi and plain SeaORM with bemi's trigger but no
//! context, interleaved in one run.

use std::time::{Duration, Instant};

use bemi_core::{Context, with_context};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DbBackend, Statement};

use crate::environment::Environment;
use crate::stats::summary;

const SCHEMA: &str = "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false) \
    WITH (autovacuum_enabled = false);
    CREATE TABLE todo_untracked (LIKE todo INCLUDING ALL) WITH (autovacuum_enabled = false);";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Plain,
    Untagged,
    Tagged,
    /// Tagged with a new context (request id) for every insert, as per-request contexts are.
    TaggedDistinct,
}

fn insert(table: &str) -> Statement {
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!("INSERT INTO {table} (task) VALUES ($1)"),
        ["buy milk".into()],
    )
}

/// A suffix that differs between tasks and runs.
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

/// Runs `variant` with `clients` concurrent tasks for `duration`; returns inserts per second.
async fn run_variant(
    url: &str,
    variant: Variant,
    clients: u32,
    duration: Duration,
) -> anyhow::Result<f64> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(clients)
        .min_connections(clients)
        .sqlx_logging(false);
    let plain = Database::connect(options).await?;
    let wrapped = bemi_seaorm::Connection::new(plain.clone());
    let context = Context::new()
        .with("user_id", 187_234)
        .with("endpoint", "/todo")
        .with("method", "POST")
        .with("request_id", "8f14e45f-ceea-467f-a0e6-ab8f0d6e3b2c");
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (plain, wrapped, context) = (plain.clone(), wrapped.clone(), context.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + duration;
            let mut done = 0_u64;
            while Instant::now() < deadline {
                match variant {
                    Variant::Plain => plain.execute_raw(insert("todo_untracked")).await?,
                    Variant::Untagged => plain.execute_raw(insert("todo")).await?,
                    Variant::Tagged => {
                        with_context(context.clone(), wrapped.execute_raw(insert("todo"))).await?
                    }
                    Variant::TaggedDistinct => {
                        let request = context
                            .clone()
                            .with("request_id", format!("request-{done}-{}", rand_suffix()));
                        with_context(request, wrapped.execute_raw(insert("todo"))).await?
                    }
                };
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / duration.as_secs_f64())
}

pub(crate) async fn run(rounds: usize, seconds: u64, clients: u32) -> anyhow::Result<()> {
    let env = Environment::start_tracking("seaorm-insert", SCHEMA, &["todo"]).await?;
    let url = env.database.url();
    let duration = Duration::from_secs(seconds);
    let mut tps: Vec<(Variant, f64)> = Vec::new();
    for round in 0..rounds {
        let mut order = vec![
            Variant::Plain,
            Variant::Untagged,
            Variant::Tagged,
            Variant::TaggedDistinct,
        ];
        order.rotate_left(round % 4);
        if round % 2 == 1 {
            order.reverse();
        }
        for variant in order {
            env.client.batch_execute("CHECKPOINT").await?;
            let rate = run_variant(&url, variant, clients, duration).await?;
            eprintln!("round {}: {variant:?} {rate:.0} tps", round + 1);
            tps.push((variant, rate));
        }
    }
    let of = |variant: Variant| -> Vec<f64> {
        tps.iter()
            .filter(|(v, _)| *v == variant)
            .map(|(_, rate)| *rate)
            .collect()
    };
    let (plain, untagged, tagged, distinct) = (
        of(Variant::Plain),
        of(Variant::Untagged),
        of(Variant::Tagged),
        of(Variant::TaggedDistinct),
    );
    let ratio = |values: &[f64]| -> String {
        let ratios: Vec<f64> = values
            .iter()
            .zip(&plain)
            .map(|(value, base)| value / base)
            .collect();
        summary(&ratios, 2)
    };
    println!("## seaorm-insert: single-row INSERT, autocommit, {clients} concurrent tasks");
    println!();
    println!(
        "{}; {rounds} interleaved rounds of {seconds} s per variant; median [min–max]",
        env.machine().await?
    );
    println!();
    println!("| variant | tps | ratio to (a), per round |");
    println!("| --- | --- | --- |");
    println!(
        "| (a) plain SeaORM, table not tracked | {} | 1.00 |",
        summary(&plain, 0)
    );
    println!(
        "| (b) plain SeaORM, tracked table (trigger), no context | {} | {} |",
        summary(&untagged, 0),
        ratio(&untagged)
    );
    println!(
        "| (c) `bemi_seaorm::Connection`, tracked table, with a context | {} | {} |",
        summary(&tagged, 0),
        ratio(&tagged)
    );
    println!(
        "| (d) the same, a new context (request id) for every insert | {} | {} |",
        summary(&distinct, 0),
        ratio(&distinct)
    );
    Ok(())
}
