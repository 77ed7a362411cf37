//! `write-path`: what capturing context costs a Diesel application, per workload (single-row
//! INSERT, single-row UPDATE, one UPDATE of 1,000 rows), interleaved in one run:
//!
//! - (a) plain `diesel::PgConnection`, a table bemi does not track;
//! - (a') the same with Diesel's statement cache off (every statement parsed, as a tagged one is);
//! - (b) plain Diesel on a table bemi tracks (statement trigger, `REPLICA IDENTITY FULL`), no
//!   context;
//! - (c) `bemi_diesel::PgConnection` with a request context on that table;
//! - (d) Bemi's own design for comparison: the same tagged writes on a table with Bemi's
//!   row-level trigger (parses `current_query()` for every row, one logical message per row) and
//!   `REPLICA IDENTITY FULL`.
//!
//! Throughput is transactions per second over `clients` threads; WAL is bytes per transaction
//! (`pg_current_wal_lsn` difference over a measured batch, after a warm-up batch).

use std::time::{Duration, Instant};

use bemi_core::{Context, enter_context};
use diesel::prelude::*;

use crate::environment::Environment;
use crate::stats::summary;

/// Rows in each table before the run.
const ROWS: i64 = 100_000;

const SCHEMA: &str = "
    CREATE TABLE todo_plain (id bigserial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false,
                             updated_at timestamptz NOT NULL DEFAULT now()) WITH (autovacuum_enabled = false, fillfactor = 100);
    CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false,
                       updated_at timestamptz NOT NULL DEFAULT now()) WITH (autovacuum_enabled = false, fillfactor = 100);
    CREATE TABLE todo_bemi (id bigserial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false,
                            updated_at timestamptz NOT NULL DEFAULT now()) WITH (autovacuum_enabled = false, fillfactor = 100);
    INSERT INTO todo_plain (task) SELECT 'task ' || i FROM generate_series(1, 100000) i;
    INSERT INTO todo (task) SELECT 'task ' || i FROM generate_series(1, 100000) i;
    INSERT INTO todo_bemi (task) SELECT 'task ' || i FROM generate_series(1, 100000) i;
    -- Bemi's design, reproduced for comparison: a row trigger that parses current_query().
    CREATE OR REPLACE FUNCTION _bemi_row_trigger_func() RETURNS TRIGGER AS $$
    DECLARE
      _bemi_metadata TEXT;
    BEGIN
      SELECT split_part(split_part(current_query(), '/*Bemi ', 2), ' Bemi*/', 1) INTO _bemi_metadata;
      IF _bemi_metadata <> '' THEN
        PERFORM pg_logical_emit_message(true, '_bemi', _bemi_metadata);
      END IF;
      IF (TG_OP = 'DELETE') THEN RETURN OLD; ELSE RETURN NEW; END IF;
    END;
    $$ LANGUAGE plpgsql;
    CREATE TRIGGER _bemi_row_trigger_todo_bemi BEFORE INSERT OR UPDATE OR DELETE ON todo_bemi
      FOR EACH ROW EXECUTE FUNCTION _bemi_row_trigger_func();
    ALTER TABLE todo_bemi REPLICA IDENTITY FULL;";

diesel::table! {
    todo_plain (id) {
        id -> Int8,
        task -> Text,
        done -> Bool,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    todo (id) {
        id -> Int8,
        task -> Text,
        done -> Bool,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    todo_bemi (id) {
        id -> Int8,
        task -> Text,
        done -> Bool,
        updated_at -> Timestamptz,
    }
}

/// What a transaction does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Workload {
    /// `INSERT` of one row.
    Insert,
    /// `UPDATE` of one row, by a random id.
    Update1,
    /// One `UPDATE` of 1,000 consecutive rows (each client in its own half of the table).
    Update1000,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Insert => "single-row INSERT",
            Workload::Update1 => "single-row UPDATE",
            Workload::Update1000 => "UPDATE of 1,000 rows",
        }
    }

    /// Transactions in a WAL measurement batch.
    fn wal_batch(self) -> u64 {
        match self {
            Workload::Update1000 => 20,
            _ => 2_000,
        }
    }
}

/// How the workload is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Plain,
    PlainUncached,
    Untagged,
    Tagged,
    BemiRowTrigger,
}

const VARIANTS: [Variant; 5] = [
    Variant::Plain,
    Variant::PlainUncached,
    Variant::Untagged,
    Variant::Tagged,
    Variant::BemiRowTrigger,
];

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Plain => "(a) plain Diesel, table not tracked",
            Variant::PlainUncached => "(a') the same, Diesel's statement cache off",
            Variant::Untagged => "(b) plain Diesel, tracked table, no context",
            Variant::Tagged => "(c) bemi's Diesel wrapper, tracked table, with a context",
            Variant::BemiRowTrigger => {
                "(d) Bemi's design: row trigger per row, RI FULL, with a context"
            }
        }
    }
}

/// A tiny deterministic generator for row ids.
struct Ids(u64);

impl Ids {
    fn next(&mut self, below: i64) -> i64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % below as u64) as i64 + 1
    }
}

/// Runs one transaction of `workload` on `table`, through `conn`.
macro_rules! transaction {
    ($conn:expr, $table:ident, $workload:expr, $ids:expr, $client:expr, $clients:expr) => {{
        match $workload {
            Workload::Insert => diesel::insert_into($table::table)
                .values($table::task.eq("buy milk"))
                .execute($conn),
            Workload::Update1 => {
                let id = $ids.next(ROWS);
                diesel::update($table::table.find(id))
                    .set((
                        $table::done.eq(diesel::dsl::not($table::done)),
                        $table::updated_at.eq(diesel::dsl::now),
                    ))
                    .execute($conn)
            }
            Workload::Update1000 => {
                // Each client updates within its own part: no lock waits between clients.
                let part = ROWS / ($clients as i64);
                let start = ($client as i64) * part + $ids.next(part - 1_000);
                diesel::update($table::table.filter($table::id.between(start, start + 999)))
                    .set((
                        $table::done.eq(diesel::dsl::not($table::done)),
                        $table::updated_at.eq(diesel::dsl::now),
                    ))
                    .execute($conn)
            }
        }
    }};
}

fn context() -> Context {
    Context::new()
        .with("user_id", 187_234)
        .with("endpoint", "/todo")
        .with("method", "POST")
        .with("request_id", "8f14e45f-ceea-467f-a0e6-ab8f0d6e3b2c")
}

/// Runs `count` transactions (or until `deadline`) of `workload` in `variant` on one
/// connection; returns how many ran.
fn client_loop(
    url: &str,
    variant: Variant,
    workload: Workload,
    (client, clients): (usize, usize),
    deadline: Option<Instant>,
    count: u64,
) -> anyhow::Result<u64> {
    let mut ids = Ids(0x9e37_79b9_7f4a_7c15 ^ (client as u64 + 1));
    let mut done = 0;
    let more =
        |done: u64| done < count && deadline.is_none_or(|deadline| Instant::now() < deadline);
    match variant {
        Variant::Plain | Variant::PlainUncached | Variant::Untagged => {
            let mut conn = diesel::PgConnection::establish(url)?;
            if variant == Variant::PlainUncached {
                conn.set_prepared_statement_cache_size(diesel::connection::CacheSize::Disabled);
            }
            while more(done) {
                if variant == Variant::Untagged {
                    transaction!(&mut conn, todo, workload, ids, client, clients)?;
                } else {
                    transaction!(&mut conn, todo_plain, workload, ids, client, clients)?;
                }
                done += 1;
            }
        }
        Variant::Tagged | Variant::BemiRowTrigger => {
            let mut conn = bemi_diesel::PgConnection::establish(url)?;
            let _request = enter_context(context());
            while more(done) {
                if variant == Variant::Tagged {
                    transaction!(&mut conn, todo, workload, ids, client, clients)?;
                } else {
                    transaction!(&mut conn, todo_bemi, workload, ids, client, clients)?;
                }
                done += 1;
            }
        }
    }
    Ok(done)
}

/// Transactions per second of `variant` with `clients` threads for `duration`.
fn throughput(
    url: &str,
    variant: Variant,
    workload: Workload,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let deadline = Instant::now() + duration;
    let counts = std::thread::scope(|scope| -> anyhow::Result<Vec<u64>> {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                scope.spawn(move || {
                    client_loop(
                        url,
                        variant,
                        workload,
                        (client, clients),
                        Some(deadline),
                        u64::MAX,
                    )
                })
            })
            .collect();
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

/// WAL bytes per transaction of `variant`, one client, after a warm-up batch.
async fn wal_per_transaction(
    env: &Environment,
    variant: Variant,
    workload: Workload,
) -> anyhow::Result<f64> {
    let url = env.database.url();
    let batch = workload.wal_batch();
    let warm = url.clone();
    tokio::task::spawn_blocking(move || client_loop(&warm, variant, workload, (0, 1), None, batch))
        .await??;
    let before = env.current_lsn().await?;
    tokio::task::spawn_blocking(move || client_loop(&url, variant, workload, (0, 1), None, batch))
        .await??;
    let bytes: f64 = env
        .client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
            &[&before],
        )
        .await?
        .get(0);
    Ok(bytes / batch as f64)
}

pub(crate) async fn run(
    workloads: &[Workload],
    rounds: usize,
    seconds: u64,
    clients: usize,
) -> anyhow::Result<()> {
    let env = Environment::start_tracking("write-path", SCHEMA, &["todo"]).await?;
    for table in ["todo_plain", "todo", "todo_bemi"] {
        env.client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    let url = env.database.url();
    let machine = env.machine().await?;
    let duration = Duration::from_secs(seconds);
    for &workload in workloads {
        let mut tps: Vec<(Variant, f64)> = Vec::new();
        for round in 0..rounds {
            let mut order = VARIANTS.to_vec();
            order.rotate_left(round % VARIANTS.len());
            if round % 2 == 1 {
                order.reverse();
            }
            for variant in order {
                env.client.batch_execute("CHECKPOINT").await?;
                let url = url.clone();
                let rate = tokio::task::spawn_blocking(move || {
                    throughput(&url, variant, workload, clients, duration)
                })
                .await??;
                eprintln!(
                    "{}: round {}: {variant:?} {rate:.0} tps",
                    workload.name(),
                    round + 1
                );
                tps.push((variant, rate));
            }
        }
        let mut wal = Vec::new();
        for variant in VARIANTS {
            wal.push(wal_per_transaction(&env, variant, workload).await?);
        }
        report(workload, &machine, rounds, seconds, clients, &tps, &wal);
    }
    Ok(())
}

fn report(
    workload: Workload,
    machine: &str,
    rounds: usize,
    seconds: u64,
    clients: usize,
    tps: &[(Variant, f64)],
    wal: &[f64],
) {
    let of = |variant: Variant| -> Vec<f64> {
        tps.iter()
            .filter(|(v, _)| *v == variant)
            .map(|(_, rate)| *rate)
            .collect()
    };
    let plain = of(Variant::Plain);
    let ratio = |values: &[f64]| -> String {
        let ratios: Vec<f64> = values
            .iter()
            .zip(&plain)
            .map(|(value, base)| value / base)
            .collect();
        summary(&ratios, 2)
    };
    println!(
        "## write-path: {}, autocommit, {clients} client threads",
        workload.name()
    );
    println!();
    println!(
        "{machine}; {rounds} interleaved rounds of {seconds} s per variant; median [min–max]; \
         ratios per round to (a)"
    );
    println!();
    println!("| variant | tps | tps / (a) | WAL bytes per transaction | WAL / (a) |");
    println!("| --- | --- | --- | --- | --- |");
    for (index, variant) in VARIANTS.iter().enumerate() {
        let values = of(*variant);
        println!(
            "| {} | {} | {} | {:.0} | {:.2} |",
            variant.label(),
            summary(&values, 0),
            ratio(&values),
            wal[index],
            wal[index] / wal[0]
        );
    }
    println!();
}
