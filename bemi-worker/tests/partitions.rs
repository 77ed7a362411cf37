//! The `changes` table in time partitions: created ahead, a default partition for changes
//! that find none (moved out when theirs is created), pruned reads, and exactly once when
//! batches straddle a partition boundary through crashes.

use std::time::Duration;

use bemi_core::setup::Partitioning;
use bemi_core::{ChangeQuery, QualifiedName, TokioPostgresRunner};
use bemi_test_harness::{test_database, wait_until_async};
use chrono::{DateTime, Datelike, Months, TimeZone, Utc};

use crate::support::{
    RunningWorker, TIMEOUT, assert_exactly_once, count, first_column, fixture, insert_batch,
    spawn_binary,
};

const ITEM: &str = "CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL);";
const TODO: &str =
    "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, batch int NOT NULL);";

fn month_start(at: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
        .single()
        .unwrap()
}

fn partition_of(at: DateTime<Utc>) -> String {
    format!("changes_stored_p{}", month_start(at).format("%Y%m%d"))
}

async fn partitions(client: &tokio_postgres::Client) -> Vec<String> {
    let sql = "SELECT c.relname::text FROM pg_catalog.pg_inherits i \
               JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid \
               WHERE i.inhparent = 'bemi.changes_stored'::regclass ORDER BY 1";
    first_column(client, sql, &[]).await
}

async fn relkind(client: &tokio_postgres::Client) -> u8 {
    let kind: i8 = client
        .query_one(
            "SELECT relkind::\"char\" FROM pg_catalog.pg_class WHERE oid = 'bemi.changes_stored'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    kind as u8
}

/// Where each stored change of `table` lives: its partition's name, per change.
async fn homes(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    let sql = "SELECT tableoid::regclass::text FROM bemi.changes_stored WHERE \"table\" = $1 \
               ORDER BY committed_at";
    first_column(client, sql, &[&table]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_partitions_by_month_ahead_and_changes_land_in_their_month() {
    let fixture = fixture(test_database!(), ITEM).await;
    assert_eq!(relkind(&fixture.client).await, b'p');
    let now = Utc::now();
    let existing = partitions(&fixture.client).await;
    assert!(
        existing.contains(&"changes_stored_default".to_owned()),
        "{existing:?}"
    );
    // This month and the three after it, at least.
    for ahead in 0..=3 {
        let month = now.checked_add_months(Months::new(ahead)).unwrap();
        assert!(existing.contains(&partition_of(month)), "{existing:?}");
    }

    let worker = RunningWorker::start(fixture.config());
    fixture
        .sql("INSERT INTO item VALUES (1, 'one'), (2, 'two'); UPDATE item SET name = 'uno' WHERE id = 1")
        .await;
    fixture.wait_for(3).await;
    worker.stop().await.unwrap();
    let month = format!("bemi.{}", partition_of(Utc::now()));
    assert_eq!(homes(&fixture.client, "item").await, vec![month.clone(); 3]);

    let status = bemi_worker::status(&fixture.source, &fixture.source, fixture.setup.options())
        .await
        .unwrap();
    let info = status.partitions.clone().expect("partition facts");
    assert_eq!(info.period, "month");
    assert_eq!(info.default_rows, 0);
    assert!(info.count >= 5, "{info:?}");
    assert!(
        status.to_string().contains("default partition: empty"),
        "{status}"
    );

    // A read of one day prunes to that day's month: no other partition, not the default.
    let day = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let plan: Vec<String> = first_column(
        &fixture.client,
        &format!(
            "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) \
             SELECT * FROM bemi.changes WHERE committed_at >= '{}' AND committed_at < '{}'",
            day.to_rfc3339(),
            (day + chrono::Duration::hours(12)).to_rfc3339()
        ),
        &[],
    )
    .await;
    // The view looks up contexts in the partition of each change's time: the others are
    // pruned while it runs (never executed).
    let plan: Vec<String> = plan
        .into_iter()
        .filter(|line| !line.contains("never executed"))
        .collect();
    let plan = plan.join("\n");
    let scanned: Vec<&String> = existing
        .iter()
        .filter(|name| plan.contains(name.as_str()))
        .collect();
    assert_eq!(scanned, vec![&partition_of(day)], "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_without_a_partition_wait_in_the_default_one_and_move_when_it_exists() {
    let fixture = fixture(test_database!(), ITEM).await;
    let month = partition_of(Utc::now());
    // An operator dropped this month's partition, and a long read holds the default one: the
    // worker cannot attach a new partition (it waits 2 s for the lock, then gives up).
    fixture
        .sql(&format!(
            "ALTER TABLE bemi.changes_stored DETACH PARTITION bemi.{month}; DROP TABLE bemi.{month};"
        ))
        .await;
    let reader = fixture.database.connect().await;
    reader
        .batch_execute("BEGIN; LOCK TABLE bemi.changes_stored_default IN ACCESS SHARE MODE;")
        .await
        .unwrap();
    let worker = RunningWorker::start(fixture.config());
    fixture.sql("INSERT INTO item VALUES (1, 'one')").await;
    fixture.wait_for(1).await;
    assert_eq!(
        homes(&fixture.client, "item").await,
        vec!["bemi.changes_stored_default"]
    );
    let status = bemi_worker::status(&fixture.source, &fixture.source, fixture.setup.options())
        .await
        .unwrap();
    assert_eq!(
        status.partitions.as_ref().map(|info| info.default_rows),
        Some(1)
    );
    assert!(
        status
            .warnings
            .iter()
            .any(|warning| warning.contains("default partition")),
        "{status}"
    );
    reader.batch_execute("COMMIT").await.unwrap();

    // The next call (the worker's, a minute later, or an operator's now) moves it.
    fixture
        .sql("SELECT bemi.create_change_partitions('\"bemi\".\"changes_stored\"', now())")
        .await;
    let expected = format!("bemi.{month}");
    assert_eq!(homes(&fixture.client, "item").await, vec![expected.clone()]);
    fixture.sql("UPDATE item SET name = 'uno'").await;
    fixture.wait_for(2).await;
    worker.stop().await.unwrap();
    assert_eq!(
        homes(&fixture.client, "item").await,
        vec![expected.clone(), expected]
    );
    // Read back whole: the moved change is the same change.
    let changes = ChangeQuery::new()
        .table(QualifiedName::new("public", "item").unwrap())
        .fetch(&mut TokioPostgresRunner(&fixture.client))
        .await
        .unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(
        changes[0].after.get("name").map(|name| name.as_str()),
        Some("\"one\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_worker_stores_changes_on_both_sides_of_a_partition_boundary_once() {
    let fixture = fixture(test_database!(), TODO).await;
    // This month's partition cut in two, a few seconds from now: the stream crosses it.
    let boundary: DateTime<Utc> = fixture
        .client
        .query_one("SELECT now() + interval '3 seconds'", &[])
        .await
        .unwrap()
        .get(0);
    let month = partition_of(Utc::now());
    let next = month_start(Utc::now())
        .checked_add_months(Months::new(1))
        .unwrap();
    fixture
        .sql(&format!(
            "ALTER TABLE bemi.changes_stored DETACH PARTITION bemi.{month}; DROP TABLE bemi.{month};\n\
             CREATE TABLE bemi.changes_before_cut PARTITION OF bemi.changes_stored FOR VALUES FROM ('{}') TO ('{}');\n\
             CREATE TABLE bemi.changes_after_cut PARTITION OF bemi.changes_stored FOR VALUES FROM ('{}') TO ('{}');",
            month_start(Utc::now()).to_rfc3339(),
            boundary.to_rfc3339(),
            boundary.to_rfc3339(),
            next.to_rfc3339(),
        ))
        .await;
    let url = fixture.database.url();
    let slot = fixture.database.slot_name().to_owned();
    let args = crate::support::quick_run_args(&url, &slot);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let writer_client = fixture.database.connect().await;
    let writer = tokio::spawn(async move {
        let mut batch = 0;
        // Until well past the boundary, and at least 20 transactions.
        while batch < 20 || Utc::now() < boundary + chrono::Duration::seconds(1) {
            batch += 1;
            insert_batch(&writer_client, batch, 200).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        batch
    });
    for (round, threshold) in [500, 1_500].into_iter().enumerate() {
        let (mut child, _) = spawn_binary(&args, &format!("cut-{slot}-{round}"));
        wait_until_async("the worker to store more", TIMEOUT, || async {
            (count(&fixture.client, &fixture.setup).await >= threshold).then_some(())
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let batches = i64::from(writer.await.unwrap());
    let (mut child, _) = spawn_binary(&args, &format!("cut-{slot}-final"));
    fixture
        .wait_for(usize::try_from(batches * 200).unwrap())
        .await;
    bemi_test_harness::wait_for_slot_to_catch_up(&fixture.client, &slot, TIMEOUT).await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_exactly_once(&fixture.client, batches * 200).await;
    let per_partition = fixture
        .client
        .query(
            "SELECT tableoid::regclass::text, count(*) FROM bemi.changes_stored GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let sides: Vec<(String, i64)> = per_partition
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(sides.len(), 2, "{sides:?}");
    assert!(
        sides
            .iter()
            .any(|(name, _)| name == "bemi.changes_after_cut"),
        "{sides:?}"
    );
    assert!(
        sides
            .iter()
            .any(|(name, _)| name == "bemi.changes_before_cut"),
        "{sides:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpartitioned_table_is_converted_under_load_and_the_run_resumes() {
    let fixture = crate::support::fixture_with(
        test_database!(),
        TODO,
        bemi_core::setup::SetupOptions::default()
            .partitioning(Partitioning::None)
            .image_indexes(true),
    )
    .await;
    assert_eq!(relkind(&fixture.client).await, b'r');
    let worker = RunningWorker::start(fixture.config());
    for batch in 1..=10 {
        insert_batch(&fixture.client, batch, 100).await;
    }
    fixture.wait_for(1_000).await;
    // An earlier run that stopped after its first steps: the index is built, the check added
    // but not validated. The status says so; the conversion goes on from there.
    fixture
        .sql(
            "CREATE UNIQUE INDEX changes_stored_legacy_idc ON bemi.changes_stored (id, committed_at);\n\
             ALTER TABLE bemi.changes_stored ADD CONSTRAINT changes_stored_legacy_range CHECK (committed_at < \
             (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months') AT TIME ZONE 'UTC') NOT VALID;",
        )
        .await;
    let status = bemi_worker::status(&fixture.source, &fixture.source, fixture.setup.options())
        .await
        .unwrap();
    assert!(
        status
            .warnings
            .iter()
            .any(|warning| warning.contains("partition-changes")),
        "{status}"
    );
    assert!(status.partitions.is_none());
    assert!(status.to_string().contains("none (one table"), "{status}");

    // Writers go on during the conversion.
    let writer_client = fixture.database.connect().await;
    let writer = tokio::spawn(async move {
        for batch in 11..=40 {
            insert_batch(&writer_client, batch, 100).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let setup = bemi_core::setup::Setup::new(
        fixture
            .setup
            .options()
            .clone()
            .partitioning(Partitioning::Monthly),
    )
    .unwrap();
    let lines = std::sync::Mutex::new(Vec::new());
    let conversion = bemi_worker::partition_changes(&fixture.source, &setup, |line| {
        lines.lock().unwrap().push(line.to_owned())
    })
    .await
    .unwrap();
    let lines = lines.into_inner().unwrap();
    assert!(!conversion.already_partitioned);
    assert_eq!(
        conversion.legacy_partition.as_deref(),
        Some("changes_stored_legacy")
    );
    assert!(
        lines.iter().any(|line| line.starts_with("step 3 of 3")),
        "{lines:?}"
    );
    writer.await.unwrap();
    fixture.wait_for(4_000).await;
    bemi_test_harness::wait_for_slot_to_catch_up(
        &fixture.client,
        fixture.database.slot_name(),
        TIMEOUT,
    )
    .await;
    worker.stop().await.unwrap();

    assert_eq!(relkind(&fixture.client).await, b'p');
    assert_exactly_once(&fixture.client, 4_000).await;
    // The old table is the partition of everything before the boundary; the months after it
    // have their own.
    let boundary: DateTime<Utc> = fixture
        .client
        .query_one(
            "SELECT legacy_until FROM bemi.partitioned_changes WHERE changes_table = '\"bemi\".\"changes_stored\"'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        boundary,
        month_start(Utc::now())
            .checked_add_months(Months::new(2))
            .unwrap()
    );
    let existing = partitions(&fixture.client).await;
    assert!(
        existing.contains(&"changes_stored_legacy".to_owned()),
        "{existing:?}"
    );
    assert!(
        existing.contains(&"changes_stored_default".to_owned()),
        "{existing:?}"
    );
    assert!(existing.contains(&partition_of(boundary)), "{existing:?}");
    assert!(
        !existing.contains(&partition_of(Utc::now())),
        "{existing:?}"
    );
    let homes = homes(&fixture.client, "todo").await;
    assert!(
        homes
            .iter()
            .all(|home| home == "bemi.changes_stored_legacy"),
        "{homes:?}"
    );
    // Its indexes were adopted, not built again: one index per definition.
    let indexes: i64 = fixture
        .client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_index WHERE indrelid = 'bemi.changes_stored_legacy'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        indexes, 11,
        "the old key, seven indexes, two of images and (id, committed_at)"
    );
    // The image indexes are the partitioned table's too: on the old heap and every partition.
    let partitions: i64 = fixture
        .client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_partition_tree('bemi.changes_stored') WHERE isleaf",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for index in [
        "changes_stored_after_images_idx",
        "changes_stored_before_images_idx",
    ] {
        let covered: i64 = fixture
            .client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_partition_tree(('bemi.' || $1)::regclass) \
                 WHERE isleaf",
                &[&index],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(covered, partitions, "{index}");
    }
    // Reads work as before.
    let history = ChangeQuery::new()
        .table(QualifiedName::new("public", "todo").unwrap())
        .primary_key("1")
        .fetch(&mut TokioPostgresRunner(&fixture.client))
        .await
        .unwrap();
    assert_eq!(history.len(), 1);

    // Running it again finds the work done.
    let again = bemi_worker::partition_changes(&fixture.source, &setup, |_| {})
        .await
        .unwrap();
    assert!(again.already_partitioned);
}

/// The relations an `EXPLAIN (FORMAT JSON)` of `sql` reads, and the indexes it uses.
async fn plan_reads(
    client: &tokio_postgres::Client,
    (sql, params): (String, Vec<bemi_core::SqlParam>),
) -> (Vec<String>, Vec<String>) {
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
        .iter()
        .map(|param| param as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = client
        .query(
            &format!("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) {sql}"),
            &params,
        )
        .await
        .unwrap();
    let plan: serde_json::Value = rows[0].get(0);
    // What the query read: nodes never executed (partitions pruned while it runs, as the
    // view's lookups of contexts are) read nothing.
    fn walk(node: &serde_json::Value, relations: &mut Vec<String>, indexes: &mut Vec<String>) {
        if node.get("Actual Loops").and_then(serde_json::Value::as_u64) == Some(0) {
            return;
        }
        if let Some(relation) = node
            .get("Relation Name")
            .and_then(serde_json::Value::as_str)
        {
            relations.push(relation.to_owned());
        }
        if let Some(index) = node.get("Index Name").and_then(serde_json::Value::as_str) {
            indexes.push(index.to_owned());
        }
        for child in node
            .get("Plans")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            walk(child, relations, indexes);
        }
    }
    let (mut relations, mut indexes) = (Vec::new(), Vec::new());
    walk(&plan[0]["Plan"], &mut relations, &mut indexes);
    (relations, indexes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_bounded_reads_touch_only_their_partitions() {
    let fixture = fixture(test_database!(), "").await;
    // Six months of changes, a user's among them.
    fixture
        .sql(
            "SELECT bemi.create_change_partitions('\"bemi\".\"changes_stored\"', now() - interval '6 months');\n\
             INSERT INTO bemi.changes_stored (primary_key, \"after\", context, database, schema, \"table\", \
               operation, committed_at, queued_at, transaction_id, position, commit_lsn, sequence) \
             SELECT (i % 1000)::text, jsonb_build_object('id', i % 1000, 'n', i), \
                    jsonb_build_object('user_id', i % 97, 'request_id', 'r' || i), 'db', 'public', \
                    't' || (i % 5), 'UPDATE', now() - make_interval(secs => i * 300), now(), i, i, i, 0 \
             FROM generate_series(1, 50000) i;\n\
             ANALYZE bemi.changes_stored;",
        )
        .await;
    let now = Utc::now();
    let window_start = now - chrono::Duration::days(30);
    let older: Vec<String> = partitions(&fixture.client)
        .await
        .into_iter()
        .filter(|name| {
            name.strip_prefix("changes_stored_p")
                .and_then(|day| chrono::NaiveDate::parse_from_str(day, "%Y%m%d").ok())
                .is_some_and(|day| {
                    day.checked_add_months(Months::new(1)).is_some_and(|end| {
                        end.and_hms_opt(0, 0, 0).unwrap().and_utc() <= window_start
                    })
                })
        })
        .collect();
    assert!(older.len() >= 4, "{older:?}");

    // A user's changes of the last 30 days: in the partitions of the window only.
    let (relations, indexes) = plan_reads(
        &fixture.client,
        ChangeQuery::new()
            .context_contains(bemi_core::Context::new().with("user_id", 42))
            .from(window_start)
            .order(bemi_core::Order::NewestFirst)
            .limit(50)
            .to_sql(),
    )
    .await;
    assert!(
        relations.iter().all(|relation| !older.contains(relation)),
        "{relations:?} reads partitions older than the window {older:?}"
    );
    // The holders of the context are found in the window's partitions (through the GIN on
    // context, or by scanning them when, as here, one change in 97 is the user's: the planner
    // picks either with its sampled statistics); each transaction's changes by index.
    assert!(
        indexes.iter().any(|index| index.ends_with("context_idx")
            || index.ends_with("committed_at_idx")
            || index.ends_with("transaction_id_idx")),
        "{indexes:?}"
    );

    // A table as of three months ago: nothing after that month.
    let at = now - chrono::Duration::days(90);
    let (relations, _) = plan_reads(
        &fixture.client,
        bemi_core::time_travel::table_as_of_sql(
            &bemi_core::AuditLog::default(),
            &QualifiedName::new("public", "t1").unwrap(),
            &at,
        ),
    )
    .await;
    let later = partition_of(at.checked_add_months(Months::new(1)).unwrap());
    assert!(
        !relations.contains(&later) && !relations.contains(&partition_of(now)),
        "{relations:?} reads partitions after {at}"
    );
    assert!(relations.contains(&partition_of(at)), "{relations:?}");
}
