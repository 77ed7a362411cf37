//! Retention of the partitioned `changes` table: whole partitions past the window dropped
//! (dry run first), legal holds keeping theirs, archives that read back, restore, and each run
//! recorded.

use std::collections::BTreeSet;
use std::time::Duration;

use bemi_core::QualifiedName;
use bemi_test_harness::test_database;
use bemi_worker::{Error, RetentionOptions};
use chrono::{DateTime, Utc};

use crate::support::{Fixture, fixture};

const DAY: u64 = 86_400;

/// Partitions from 23 months back, and 50 changes each of `orders` 600, 450 and 0 days back
/// and of `invoices` 520 days back: at least 70 days apart, so never in one month's partition.
async fn seeded(database: bemi_test_harness::TestDatabase) -> Fixture {
    let fixture = fixture(database, "").await;
    fixture
        .sql(
            "SELECT bemi.create_change_partitions('\"bemi\".\"changes_stored\"', now() - interval '23 months');\n\
             INSERT INTO bemi.changes_stored (primary_key, \"after\", context, database, schema, \"table\", \
               operation, committed_at, queued_at, transaction_id, position, commit_lsn, sequence) \
             SELECT i::text, jsonb_build_object('id', i, 'amount', 1.10 * i), \
                    jsonb_build_object('user', 'u' || i), 'db', 'public', t.name, 'CREATE', \
                    now() - make_interval(days => t.days, secs => i), now(), i, i, t.days * 1000 + i, 0 \
             FROM (VALUES ('orders', 600), ('orders', 450), ('orders', 0), ('invoices', 520)) AS t(name, days), \
                  generate_series(1, 50) AS i;",
        )
        .await;
    fixture
}

/// Partition name, upper bound and rows of every partition of `bemi.changes_stored`.
async fn partition_rows(client: &tokio_postgres::Client) -> Vec<(String, DateTime<Utc>, i64)> {
    let rows = client
        .query(
            bemi_core::setup::PARTITIONS_QUERY,
            &[&"\"bemi\".\"changes_stored\""],
        )
        .await
        .unwrap();
    let mut found = Vec::new();
    for row in rows {
        let name: String = row.get(1);
        let to: DateTime<Utc> = row.get(3);
        let count: i64 = client
            .query_one(&format!("SELECT count(*) FROM bemi.\"{name}\""), &[])
            .await
            .unwrap()
            .get(0);
        found.push((name, to, count));
    }
    found
}

/// The `orders` changes past a 400-day window, as `row_to_json` renders them.
async fn old_orders_image(client: &tokio_postgres::Client) -> BTreeSet<String> {
    let sql = "SELECT row_to_json(c)::text FROM bemi.changes c WHERE \"table\" = 'orders' \
               AND committed_at < now() - interval '400 days'";
    crate::support::first_column(client, sql, &[])
        .await
        .into_iter()
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

async fn total(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM bemi.changes WHERE \"table\" = $1",
            &[&table],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_partitions_past_the_window_after_a_dry_run() {
    let fixture = seeded(test_database!()).await;
    let before = partition_rows(&fixture.client).await;
    let keep = Duration::from_secs(400 * DAY);
    let mut options = RetentionOptions::new(keep);
    options.dry_run = true;
    let dry = bemi_worker::retention(&fixture.source, &fixture.setup, &options, |_| {})
        .await
        .unwrap();
    assert!(dry.dry_run);
    assert!(dry.dropped.iter().all(|entry| entry.to <= dry.cutoff));
    assert_eq!(dry.dropped.iter().map(|entry| entry.rows).sum::<i64>(), 150);
    assert_eq!(
        partition_rows(&fixture.client).await,
        before,
        "a dry run drops nothing"
    );

    let report = bemi_worker::retention(
        &fixture.source,
        &fixture.setup,
        &RetentionOptions::new(keep),
        |_| {},
    )
    .await
    .unwrap();
    let dropped: BTreeSet<String> = report
        .dropped
        .iter()
        .map(|entry| entry.partition.name().to_owned())
        .collect();
    let expected: BTreeSet<String> = before
        .iter()
        .filter(|(_, to, _)| *to <= report.cutoff)
        .map(|(name, _, _)| name.clone())
        .collect();
    assert_eq!(dropped, expected);
    let after = partition_rows(&fixture.client).await;
    assert!(
        after.iter().all(|(_, to, _)| *to > report.cutoff),
        "{after:?}"
    );
    // The changes inside the window, and the partition the cutoff falls in, are all there.
    assert_eq!(total(&fixture.client, "orders").await, 50);
    assert_eq!(total(&fixture.client, "invoices").await, 0);

    // status shows the last run.
    let status = bemi_worker::status(&fixture.source, &fixture.source, fixture.setup.options())
        .await
        .unwrap();
    let last = status
        .partitions
        .as_ref()
        .and_then(|info| info.last_retention.clone())
        .expect("the last run");
    assert!(!last.dry_run);
    assert_eq!(last.dropped, i32::try_from(dropped.len()).unwrap());
    assert!(status.to_string().contains("last retention:"), "{status}");

    // Both runs are in the trail: who, when, the window, what went.
    let runs = fixture
        .client
        .query(
            "SELECT run_by = current_user, dry_run, keep = interval '400 days', \
                    jsonb_array_length(dropped), cutoff \
             FROM bemi.retention_runs ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(runs.len(), 2);
    for (row, dry_run) in runs.iter().zip([true, false]) {
        assert!(row.get::<_, bool>(0));
        assert_eq!(row.get::<_, bool>(1), dry_run);
        assert!(row.get::<_, bool>(2));
        assert_eq!(row.get::<_, i32>(3), i32::try_from(dropped.len()).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_keep_partitions_and_archives_restore_the_dropped_ones() {
    let fixture = seeded(test_database!()).await;
    let invoices = QualifiedName::new("public", "invoices").unwrap();
    let tomorrow = Utc::now() + chrono::Duration::days(1);
    let hold = bemi_worker::place_hold(&fixture.source, Some(&invoices), tomorrow, "case 42")
        .await
        .unwrap();
    assert!(matches!(
        bemi_worker::place_hold(&fixture.source, None, tomorrow, " ").await,
        Err(Error::Config(_))
    ));
    // The changes of the partitions that will be archived, as stored.
    let old_orders = old_orders_image(&fixture.client).await;
    assert_eq!(old_orders.len(), 100);

    let folder = tempfile::tempdir().unwrap();
    let mut options = RetentionOptions::new(Duration::from_secs(400 * DAY));
    options.archive = Some(folder.path().to_owned());
    let lines = std::sync::Mutex::new(Vec::new());
    let report = bemi_worker::retention(&fixture.source, &fixture.setup, &options, |line| {
        lines.lock().unwrap().push(line.to_owned())
    })
    .await
    .unwrap();
    // The invoices' partition is held; the orders' are archived, then dropped.
    assert_eq!(report.held.len(), 1, "{report:?}");
    assert_eq!(report.held[0].holds, vec![hold]);
    assert_eq!(total(&fixture.client, "invoices").await, 50);
    assert_eq!(total(&fixture.client, "orders").await, 50);
    let archived: Vec<_> = report
        .dropped
        .iter()
        .filter_map(|entry| entry.archive.clone())
        .collect();
    assert_eq!(archived.len(), report.dropped.len());
    assert_eq!(
        archived.iter().map(|manifest| manifest.rows).sum::<u64>(),
        100
    );
    assert!(
        lines
            .into_inner()
            .unwrap()
            .iter()
            .any(|line| line.contains("verified")),
        "archives are read back before the drop"
    );

    // Restored: the same changes, byte for byte; a second restore adds nothing.
    let with_rows: Vec<_> = archived
        .iter()
        .filter(|manifest| manifest.rows > 0)
        .collect();
    for manifest in &with_rows {
        let path = folder
            .path()
            .join(format!("{}.manifest.json", manifest.partition));
        let restored = bemi_worker::restore_archive(&fixture.source, &path, |_| {})
            .await
            .unwrap();
        assert_eq!(restored.inserted, manifest.rows);
        let again = bemi_worker::restore_archive(&fixture.source, &path, |_| {})
            .await
            .unwrap();
        assert_eq!((again.inserted, again.already_stored), (0, manifest.rows));
    }
    assert_eq!(old_orders_image(&fixture.client).await, old_orders);

    // A manifest pointing outside its folder is refused.
    let path = folder
        .path()
        .join(format!("{}.manifest.json", with_rows[0].partition));
    let original = std::fs::read_to_string(&path).unwrap();
    let mut escaping: serde_json::Value = serde_json::from_str(&original).unwrap();
    escaping["file"] = serde_json::json!("../elsewhere.ndjson.gz");
    let escaping_path = folder.path().join("escaping.manifest.json");
    std::fs::write(&escaping_path, escaping.to_string()).unwrap();
    let refused = bemi_worker::restore_archive(&fixture.source, &escaping_path, |_| {}).await;
    assert!(matches!(refused, Err(Error::Archive(_))), "{refused:?}");

    // An archive edited to hold a change of today (with a matching checksum) is refused: the
    // change would not fit the partition's range.
    let forged_file = folder.path().join("forged.ndjson.gz");
    {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(
            std::fs::File::create(&forged_file).unwrap(),
            flate2::Compression::default(),
        );
        let today: String = fixture
            .client
            .query_one(
                "SELECT row_to_json(c)::text FROM bemi.changes c \
                 WHERE committed_at > now() - interval '1 day' LIMIT 1",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        writeln!(encoder, "{today}").unwrap();
        encoder.finish().unwrap();
    }
    let bytes = std::fs::read(&forged_file).unwrap();
    let mut forged: serde_json::Value = serde_json::from_str(&original).unwrap();
    forged["file"] = serde_json::json!("forged.ndjson.gz");
    forged["rows"] = serde_json::json!(1);
    forged["sha256"] = serde_json::json!(sha256_hex(&bytes));
    let forged_path = folder.path().join("forged.manifest.json");
    std::fs::write(&forged_path, forged.to_string()).unwrap();
    let refused = bemi_worker::restore_archive(&fixture.source, &forged_path, |_| {}).await;
    assert!(
        matches!(&refused, Err(Error::Postgres { .. })),
        "a change outside the partition's range: {refused:?}"
    );

    // A tampered archive is refused.
    let manifest = with_rows[0];
    let data = folder.path().join(&manifest.file);
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let path = folder
        .path()
        .join(format!("{}.manifest.json", manifest.partition));
    let refused = bemi_worker::restore_archive(&fixture.source, &path, |_| {}).await;
    assert!(
        matches!(refused, Err(Error::Archive(_)) | Err(Error::Io { .. })),
        "{refused:?}"
    );

    // Released, the hold keeps nothing: the next run drops the invoices' partition (and the
    // restored ones again).
    assert!(
        bemi_worker::release_hold(&fixture.source, hold)
            .await
            .unwrap()
    );
    let holds = bemi_worker::legal_holds(&fixture.source).await.unwrap();
    assert_eq!(holds.len(), 1);
    assert_eq!(holds[0].reason, "case 42");
    assert!(holds[0].held_until <= Utc::now());
    let report = bemi_worker::retention(
        &fixture.source,
        &fixture.setup,
        &RetentionOptions::new(Duration::from_secs(400 * DAY)),
        |_| {},
    )
    .await
    .unwrap();
    assert!(report.held.is_empty());
    assert_eq!(total(&fixture.client, "invoices").await, 0);
    assert_eq!(total(&fixture.client, "orders").await, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_refuses_a_table_without_partitions() {
    let fixture = crate::support::fixture_with(
        test_database!(),
        "",
        bemi_core::setup::SetupOptions::default()
            .partitioning(bemi_core::setup::Partitioning::None),
    )
    .await;
    let refused = bemi_worker::retention(
        &fixture.source,
        &fixture.setup,
        &RetentionOptions::new(Duration::from_secs(400 * DAY)),
        |_| {},
    )
    .await;
    assert!(
        matches!(&refused, Err(Error::Config(message)) if message.contains("partition-changes")),
        "{refused:?}"
    );
}
