//! `diesel-insert`: single-row INSERT throughput through `bemi_diesel::PgConnection` with a
//! context, against plain Diesel without bemi and plain Diesel with bemi's trigger but no
//! context, interleaved in one run.

use std::time::{Duration, Instant};

use bemi_core::{Context, enter_context};
use diesel::prelude::*;

use crate::environment::Environment;
use crate::stats::summary;

const SCHEMA: &str = "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false) \
    WITH (autovacuum_enabled = false);
    CREATE TABLE todo_untracked (id bigserial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false) \
    WITH (autovacuum_enabled = false);";

diesel::table! {
    todo (id) {
        id -> Int8,
        task -> Text,
        done -> Bool,
    }
}

diesel::table! {
    todo_untracked (id) {
        id -> Int8,
        task -> Text,
        done -> Bool,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// Plain Diesel, a table bemi does not track.
    Plain,
    /// Plain Diesel with its prepared-statement cache disabled (a statement is parsed for every
    /// execution, as a tagged one must be), a table bemi does not track.
    PlainUncached,
    /// Plain Diesel, a tracked table (trigger installed), no context.
    Untagged,
    /// bemi's wrapper, a tracked table, with a request context.
    Tagged,
}

/// Runs `variant` with `clients` threads for `duration`; returns transactions per second.
fn run_variant(
    url: &str,
    variant: Variant,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let context = Context::new()
        .with("user_id", 187_234)
        .with("endpoint", "/todo")
        .with("method", "POST")
        .with("request_id", "8f14e45f-ceea-467f-a0e6-ab8f0d6e3b2c");
    let counts = std::thread::scope(|scope| -> anyhow::Result<Vec<u64>> {
        let mut handles = Vec::new();
        for _ in 0..clients {
            let context = context.clone();
            handles.push(scope.spawn(move || -> anyhow::Result<u64> {
                let deadline = Instant::now() + duration;
                let mut done = 0;
                match variant {
                    Variant::Plain | Variant::PlainUncached | Variant::Untagged => {
                        let mut conn = diesel::PgConnection::establish(url)?;
                        if variant == Variant::PlainUncached {
                            conn.set_prepared_statement_cache_size(
                                diesel::connection::CacheSize::Disabled,
                            );
                        }
                        while Instant::now() < deadline {
                            if variant != Variant::Untagged {
                                diesel::insert_into(todo_untracked::table)
                                    .values(todo_untracked::task.eq("buy milk"))
                                    .execute(&mut conn)?;
                            } else {
                                diesel::insert_into(todo::table)
                                    .values(todo::task.eq("buy milk"))
                                    .execute(&mut conn)?;
                            }
                            done += 1;
                        }
                    }
                    Variant::Tagged => {
                        let mut conn = bemi_diesel::PgConnection::establish(url)?;
                        let _request = enter_context(context);
                        while Instant::now() < deadline {
                            diesel::insert_into(todo::table)
                                .values(todo::task.eq("buy milk"))
                                .execute(&mut conn)?;
                            done += 1;
                        }
                    }
                }
                Ok(done)
            }));
        }
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .map_err(|_| anyhow::anyhow!("a client panicked"))?
            })
            .collect()
    })?;
    Ok(counts.iter().sum::<u64>() as f64 / duration.as_secs_f64())
}

/// Interleaves the three variants over `rounds` rounds of `seconds` each, rotating the order.
pub(crate) async fn run(rounds: usize, seconds: u64, clients: usize) -> anyhow::Result<()> {
    let env = Environment::start_tracking("diesel-insert", SCHEMA, &["todo"]).await?;
    let url = env.database.url();
    let machine = env.machine().await?;
    let duration = Duration::from_secs(seconds);
    let mut tps: Vec<(Variant, f64)> = Vec::new();
    for round in 0..rounds {
        let mut order = vec![
            Variant::Plain,
            Variant::PlainUncached,
            Variant::Untagged,
            Variant::Tagged,
        ];
        order.rotate_left(round % 4);
        if round % 2 == 1 {
            order.reverse();
        }
        for variant in order {
            env.client.batch_execute("CHECKPOINT").await?;
            let url = url.clone();
            let rate =
                tokio::task::spawn_blocking(move || run_variant(&url, variant, clients, duration))
                    .await??;
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
    let (plain, uncached, untagged, tagged) = (
        of(Variant::Plain),
        of(Variant::PlainUncached),
        of(Variant::Untagged),
        of(Variant::Tagged),
    );
    let ratio = |values: &[f64], base: &[f64]| -> String {
        let ratios: Vec<f64> = values
            .iter()
            .zip(base)
            .map(|(value, base)| value / base)
            .collect();
        summary(&ratios, 2)
    };
    println!("## diesel-insert: single-row INSERT, autocommit, {clients} client threads");
    println!();
    println!("{machine}; {rounds} interleaved rounds of {seconds} s per variant; median [min–max]");
    println!();
    println!("| variant | tps | ratio to (a), per round | ratio to (a'), per round |");
    println!("| --- | --- | --- | --- |");
    let rows: [(&str, &[f64]); 4] = [
        (
            "(a) plain `diesel::PgConnection`, table not tracked",
            &plain,
        ),
        (
            "(a') the same, Diesel's statement cache disabled",
            &uncached,
        ),
        (
            "(b) plain `diesel::PgConnection`, tracked table (trigger), no context",
            &untagged,
        ),
        (
            "(c) `bemi_diesel::PgConnection`, tracked table, with a context",
            &tagged,
        ),
    ];
    for (name, values) in rows {
        println!(
            "| {name} | {} | {} | {} |",
            summary(values, 0),
            ratio(values, &plain),
            ratio(values, &uncached)
        );
    }
    println!();
    println!(
        "Target: (c) / (a) ≥ 0.90. A tagged statement's text changes with its context, so it is \
         parsed for every execution, as in (a')."
    );
    Ok(())
}
