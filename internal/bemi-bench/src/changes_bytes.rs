//! `changes-bytes`: bytes per stored change (table with TOAST, and indexes) of the `changes`
//! table as bemi-rs lays it out, against Bemi's layout of the same changes (its columns, its
//! unique constraint, four btree and three GIN indexes: `../shared/research/bemi.md` §4).
//!
//! The workload goes through the real trigger, WAL and worker: a table of 20 columns, rows
//! inserted 100 per statement, then statements each updating 5 rows and changing one or two
//! columns, every statement with a request context of 5 keys. Bemi's copy is loaded from the
//! stored changes in commit order, so both hold exactly the same changes.

use std::time::{Duration, Instant};

use bemi_core::{CommentEncoder, Context};

use crate::environment::Environment;
use crate::worker_process::{WorkerProcess, wait_confirmed};

const WIDE: &str = "CREATE TABLE wide (
    id bigint PRIMARY KEY, sku text NOT NULL, title text NOT NULL, description text,
    price numeric(12, 2) NOT NULL, cost numeric(12, 2), quantity integer NOT NULL,
    reserved integer NOT NULL, weight_grams integer, active boolean NOT NULL,
    category text, brand text, color text, size text, barcode text,
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, version integer NOT NULL,
    attributes jsonb, owner_id bigint
);";

/// Bemi's `changes` table and indexes, in its own schema.
const BEMI_LAYOUT: &str = "CREATE SCHEMA bemi_layout;
CREATE TABLE bemi_layout.changes (
    id uuid PRIMARY KEY, created_at timestamptz NOT NULL, primary_key varchar(255),
    \"before\" jsonb NOT NULL DEFAULT '{}', \"after\" jsonb NOT NULL DEFAULT '{}',
    context jsonb NOT NULL DEFAULT '{}', database varchar(255) NOT NULL,
    schema varchar(255) NOT NULL, \"table\" varchar(255) NOT NULL,
    operation text NOT NULL CHECK (operation IN ('CREATE', 'UPDATE', 'DELETE', 'TRUNCATE', 'MESSAGE')),
    committed_at timestamptz NOT NULL, queued_at timestamptz NOT NULL,
    transaction_id bigint NOT NULL, position bigint NOT NULL,
    CONSTRAINT changes_position_table_schema_database_operation_unique
        UNIQUE (position, \"table\", schema, database, operation)
);
CREATE INDEX ON bemi_layout.changes (committed_at);
CREATE INDEX ON bemi_layout.changes (\"table\");
CREATE INDEX ON bemi_layout.changes (primary_key);
CREATE INDEX ON bemi_layout.changes (operation);
CREATE INDEX ON bemi_layout.changes USING gin (\"before\" jsonb_path_ops);
CREATE INDEX ON bemi_layout.changes USING gin (\"after\" jsonb_path_ops);
CREATE INDEX ON bemi_layout.changes USING gin (context jsonb_path_ops);";

/// Sizes of one layout: changes, table bytes (heap, TOAST, maps), index bytes, and each index.
struct Sizes {
    changes: i64,
    table: i64,
    indexes: i64,
    per_index: Vec<(String, i64)>,
}

async fn sizes(env: &Environment, table: &str) -> anyhow::Result<Sizes> {
    let client = &env.client;
    let changes: i64 = client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0);
    let row = client
        .query_one(
            // A table that is not partitioned has no partition tree: itself.
            "SELECT COALESCE(sum(pg_table_size(relid)), pg_table_size($1::text::regclass))::bigint, \
                    COALESCE(sum(pg_indexes_size(relid)), pg_indexes_size($1::text::regclass))::bigint \
             FROM pg_partition_tree($1::text::regclass) WHERE isleaf",
            &[&table],
        )
        .await?;
    // Each index of the table (on a partitioned table: with its partitions' copies).
    let per_index = client
        .query(
            "SELECT i.indexrelid::regclass::text, \
                    COALESCE((SELECT sum(pg_relation_size(t.relid))::bigint \
                              FROM pg_partition_tree(i.indexrelid) t), \
                             pg_relation_size(i.indexrelid)) \
             FROM pg_index i WHERE i.indrelid = $1::text::regclass ORDER BY 2 DESC",
            &[&table],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(Sizes {
        changes,
        table: row.get(0),
        indexes: row.get(1),
        per_index,
    })
}

fn context(statement: u64) -> Context {
    Context::new()
        .with("request_id", format!("req-{statement:08}"))
        .with("user_id", statement % 977)
        .with("endpoint", "/api/products/:id")
        .with("method", "PATCH")
        .with(
            "ip",
            format!("10.0.{}.{}", statement % 256, statement % 199),
        )
}

pub(crate) async fn run(rows: u64, update_statements: u64) -> anyhow::Result<()> {
    let env = Environment::start("changes_bytes", WIDE).await?;
    env.create_slot("bytes").await?;
    let url = env.database.url();
    let worker = WorkerProcess::spawn(&url, "bytes", None)?;
    let encoder = CommentEncoder::default();
    let started = Instant::now();
    let mut statement = 0_u64;
    for first in (0..rows).step_by(100) {
        statement += 1;
        let sql = format!(
            "INSERT INTO wide SELECT i, 'SKU-' || i, 'Product ' || i, 'A product of the catalog, number ' || i, \
             (i % 1000) + 0.99, (i % 700) + 0.5, i % 50, 0, 100 + i % 5000, true, \
             'category ' || i % 40, 'brand ' || i % 90, 'blue', 'M', lpad(i::text, 13, '0'), \
             now(), now(), 1, jsonb_build_object('tags', jsonb_build_array('a', 'b')), i % 977 \
             FROM generate_series({first}, {}) AS i",
            (first + 99).min(rows - 1)
        );
        env.client
            .batch_execute(&encoder.tag(&sql, &context(statement)))
            .await?;
    }
    for update in 0..update_statements {
        statement += 1;
        let first = (update * 7_919) % rows.saturating_sub(5).max(1);
        let set = if update % 2 == 0 {
            "quantity = quantity + 1"
        } else {
            "price = price + 1, updated_at = now()"
        };
        let sql = format!(
            "UPDATE wide SET {set} WHERE id BETWEEN {first} AND {}",
            first + 4
        );
        env.client
            .batch_execute(&encoder.tag(&sql, &context(statement)))
            .await?;
    }
    let target = env.current_lsn().await?;
    wait_confirmed(
        &env.client,
        "bytes",
        &target,
        started,
        Duration::from_secs(1_800),
    )
    .await?;
    worker.stop().await?;
    env.client.batch_execute(BEMI_LAYOUT).await?;
    env.client
        .batch_execute(
            "INSERT INTO bemi_layout.changes SELECT id, created_at, primary_key, \"before\", \"after\", \
             context, database, schema, \"table\", operation, committed_at, queued_at, \
             transaction_id, position FROM bemi.changes WHERE operation <> 'DDL' \
             ORDER BY commit_lsn, sequence;\n\
             DELETE FROM bemi.changes_stored WHERE operation = 'DDL';",
        )
        .await?;
    // Each its own statement: VACUUM runs outside a transaction.
    for table in ["bemi.changes_stored", "bemi_layout.changes"] {
        env.client
            .batch_execute(&format!("VACUUM ANALYZE {table}"))
            .await?;
    }
    let ours = sizes(&env, "bemi.changes_stored").await?;
    let bemi = sizes(&env, "bemi_layout.changes").await?;
    anyhow::ensure!(
        ours.changes == bemi.changes,
        "both layouts hold the same changes"
    );
    let per_change = |bytes: i64| bytes as f64 / ours.changes.max(1) as f64;
    println!(
        "\n{} changes ({rows} CREATE, {} UPDATE of 1 or 2 of 20 columns), contexts of 5 keys, {}\n",
        ours.changes,
        ours.changes - i64::try_from(rows)?,
        env.machine().await?
    );
    println!("| layout | table + TOAST, B/change | indexes, B/change | total, B/change |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, sizes) in [("bemi-rs", &ours), ("Bemi", &bemi)] {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            per_change(sizes.table),
            per_change(sizes.indexes),
            per_change(sizes.table + sizes.indexes)
        );
    }
    println!(
        "\nbemi-rs / Bemi: {:.2}x\n",
        (ours.table + ours.indexes) as f64 / (bemi.table + bemi.indexes).max(1) as f64
    );
    for (name, sizes) in [("bemi-rs", &ours), ("Bemi", &bemi)] {
        println!("{name} indexes, B/change:");
        for (index, bytes) in &sizes.per_index {
            println!("- {index}: {:.0}", per_change(*bytes));
        }
    }
    Ok(())
}
