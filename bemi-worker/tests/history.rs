//! History, time travel and snapshots over what the real worker stored, read back with
//! bemi-core's queries through `TokioPostgresRunner`.

use std::collections::HashMap;

use bemi_core::TokioPostgresRunner;
use bemi_core::time_travel::{history, row_as_of, table_as_of};
use bemi_core::{
    AuditLog, Change, ChangeQuery, Context, Image, Operation, Order, QualifiedName, SqlParam,
};
use bemi_test_harness::{test_database, wait_until_async};
use chrono::{DateTime, Duration as Span, Utc};
use serde_json::{Value, json};

use crate::support::{RunningWorker, TIMEOUT, fixture, fixture_with};

fn table(name: &str) -> QualifiedName {
    QualifiedName::new("public", name).unwrap()
}

fn object(value: Value) -> Image {
    serde_json::from_value(value).unwrap()
}

async fn all_changes(client: &tokio_postgres::Client) -> Vec<Change> {
    ChangeQuery::new()
        .fetch(&mut TokioPostgresRunner(client))
        .await
        .unwrap()
}

/// Waits until `count` changes are stored; returns them in order.
async fn changes_once_stored(client: &tokio_postgres::Client, count: usize) -> Vec<Change> {
    wait_until_async("the changes to be stored", TIMEOUT, || async {
        let changes = all_changes(client).await;
        (changes.len() >= count).then_some(changes)
    })
    .await
}

async fn item_as_of(
    client: &tokio_postgres::Client,
    key: &str,
    at: DateTime<Utc>,
) -> Option<Image> {
    row_as_of(
        &mut TokioPostgresRunner(client),
        &AuditLog::default(),
        &table("item"),
        key,
        at,
    )
    .await
    .unwrap()
}

fn just_before(at: DateTime<Utc>) -> DateTime<Utc> {
    at - Span::microseconds(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_follows_updates_deletes_key_changes_and_truncates() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .sql("INSERT INTO item VALUES (1, 'one'), (2, 'two')")
        .await;
    fixture
        .sql("UPDATE item SET name = 'uno' WHERE id = 1")
        .await;
    fixture.sql("DELETE FROM item WHERE id = 2").await;
    fixture.sql("UPDATE item SET id = 100 WHERE id = 1").await;
    fixture.sql("INSERT INTO item VALUES (3, 'three')").await;
    fixture.sql("TRUNCATE item").await;
    fixture.sql("INSERT INTO item VALUES (4, 'four')").await;
    let changes = changes_once_stored(&fixture.client, 8).await;
    let operations: Vec<Operation> = changes.iter().map(|change| change.operation).collect();
    use Operation::{Create, Delete, Truncate, Update};
    assert_eq!(
        operations,
        [
            Create, Create, Update, Delete, Update, Create, Truncate, Create
        ]
    );
    let moved = &changes[4];
    assert_eq!(moved.primary_key.as_deref(), Some("100"));
    assert_eq!(moved.previous_primary_key.as_deref(), Some("1"));

    let log = AuditLog::default();
    let mut runner = TokioPostgresRunner(&fixture.client);
    let at = |index: usize| changes[index].committed_at;
    assert_eq!(
        item_as_of(&fixture.client, "1", just_before(at(0))).await,
        None
    );
    assert_eq!(
        item_as_of(&fixture.client, "1", at(0)).await,
        Some(object(json!({"id": 1, "name": "one"})))
    );
    assert_eq!(
        item_as_of(&fixture.client, "1", at(2)).await,
        Some(object(json!({"id": 1, "name": "uno"})))
    );
    assert_eq!(
        item_as_of(&fixture.client, "2", just_before(at(3))).await,
        Some(object(json!({"id": 2, "name": "two"})))
    );
    assert_eq!(item_as_of(&fixture.client, "2", at(3)).await, None);
    // The key change ends key 1 and starts key 100.
    assert_eq!(item_as_of(&fixture.client, "1", at(4)).await, None);
    assert_eq!(
        item_as_of(&fixture.client, "100", at(4)).await,
        Some(object(json!({"id": 100, "name": "uno"})))
    );
    // TRUNCATE wipes every row; later inserts live on.
    assert_eq!(item_as_of(&fixture.client, "100", at(6)).await, None);
    assert_eq!(
        item_as_of(&fixture.client, "4", Utc::now()).await,
        Some(object(json!({"id": 4, "name": "four"})))
    );

    let whole = |when| {
        let log = log.clone();
        let client = &fixture.client;
        async move {
            table_as_of(&mut TokioPostgresRunner(client), &log, &table("item"), when)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        whole(just_before(at(3))).await,
        [
            json!({"id": 1, "name": "uno"}),
            json!({"id": 2, "name": "two"})
        ]
        .map(object)
        .to_vec()
    );
    assert_eq!(
        whole(at(5)).await,
        [
            json!({"id": 100, "name": "uno"}),
            json!({"id": 3, "name": "three"})
        ]
        .map(object)
        .to_vec()
    );
    assert_eq!(
        whole(Utc::now()).await,
        vec![object(json!({"id": 4, "name": "four"}))]
    );

    // History of key 1 includes the UPDATE that moved it away.
    let history_of_1 = history(&mut runner, &log, &table("item"), "1")
        .await
        .unwrap();
    assert_eq!(
        history_of_1
            .iter()
            .map(|change| change.operation)
            .collect::<Vec<_>>(),
        [Create, Update, Update]
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_filter_order_and_page() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE item (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL DEFAULT 0);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    for id in 1..=5 {
        fixture
            .tagged(
                &format!("INSERT INTO item VALUES ({id}, 'item {id}')"),
                json!({"request_id": format!("r{}", id % 2), "user": {"id": id}}),
            )
            .await;
    }
    fixture
        .tagged(
            "UPDATE item SET qty = 7 WHERE id = 2",
            json!({"request_id": "r9"}),
        )
        .await;
    fixture
        .sql("UPDATE item SET name = 'renamed' WHERE id = 3")
        .await;
    let changes = changes_once_stored(&fixture.client, 7).await;
    let mut runner = TokioPostgresRunner(&fixture.client);

    let by_context = ChangeQuery::new()
        .context_contains(Context::new().with("request_id", "r1"))
        .fetch(&mut runner)
        .await
        .unwrap();
    assert_eq!(
        by_context
            .iter()
            .map(|change| change.primary_key.clone().unwrap())
            .collect::<Vec<_>>(),
        ["1", "3", "5"]
    );
    let nested = ChangeQuery::new()
        .context_contains(Context::try_from(json!({"user": {"id": 4}})).unwrap())
        .fetch(&mut runner)
        .await
        .unwrap();
    assert_eq!(nested.len(), 1);
    assert_eq!(nested[0].after.value("id"), Some(json!(4)));

    let qty_changes = ChangeQuery::new()
        .operations([Operation::Update])
        .changed_field("qty")
        .fetch(&mut runner)
        .await
        .unwrap();
    assert_eq!(qty_changes.len(), 1);
    assert_eq!(qty_changes[0].changed_fields(), ["qty"]);
    let by_after = ChangeQuery::new()
        .after_contains(json!({"name": "renamed"}))
        .fetch(&mut runner)
        .await
        .unwrap();
    assert_eq!(by_after.len(), 1);
    let of_transaction = ChangeQuery::new()
        .transaction_id(changes[5].transaction_id)
        .fetch(&mut runner)
        .await
        .unwrap();
    assert_eq!(of_transaction, vec![changes[5].clone()]);
    let by_id = ChangeQuery::new()
        .ids([changes[6].id])
        .fetch(&mut runner)
        .await
        .unwrap();
    assert_eq!(by_id, vec![changes[6].clone()]);
    let in_window = ChangeQuery::new()
        .from(changes[1].committed_at)
        .until(changes[3].committed_at)
        .fetch(&mut runner)
        .await
        .unwrap();
    assert_eq!(in_window, changes[1..3].to_vec());

    // Keyset pages, newest first, cover everything once.
    let mut pages = Vec::new();
    let mut query = ChangeQuery::new().order(Order::NewestFirst).limit(3);
    loop {
        let page = query.fetch(&mut runner).await.unwrap();
        let Some(last) = page.last() else { break };
        let cursor = bemi_core::ChangeCursor::of(last);
        // Cursors survive a round trip through text, as API page tokens do.
        let cursor: bemi_core::ChangeCursor = cursor.to_string().parse().unwrap();
        query = query.after_cursor(cursor);
        pages.push(page);
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 1]);
    let mut newest_first = changes.clone();
    newest_first.reverse();
    assert_eq!(pages.concat(), newest_first);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_never_changed_are_known_after_a_snapshot() {
    let database = test_database!();
    // Rows written before bemi is set up have no history.
    let setup_client = database.connect().await;
    setup_client
        .batch_execute(
            "CREATE TABLE price (sku text PRIMARY KEY, cents bigint, tags text[], note json, \
                                 total numeric GENERATED ALWAYS AS (cents * 2) STORED);
             INSERT INTO price (sku, cents, tags, note) VALUES
               ('a', 100, '{x,y}', '{\"k\": [1, 2]}'), ('b \"q\"', NULL, '{}', NULL);",
        )
        .await
        .unwrap();
    let fixture = fixture(database, "").await;
    let worker = RunningWorker::start(fixture.config());
    let mut runner = TokioPostgresRunner(&fixture.client);
    let log = AuditLog::default();
    assert_eq!(
        row_as_of(&mut runner, &log, &table("price"), "a", Utc::now())
            .await
            .unwrap(),
        None
    );

    let counts = bemi_worker::snapshot(
        &fixture.source,
        fixture.setup.options().publication_name(),
        &[],
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(counts, vec![(table("price"), 2)]);
    let changes = changes_once_stored(&fixture.client, 2).await;
    assert!(
        changes
            .iter()
            .all(|change| change.operation == Operation::Snapshot && change.before.is_empty())
    );
    // Values are converted as for any change (generated columns are not part of rows).
    assert_eq!(
        table_as_of(&mut runner, &log, &table("price"), Utc::now())
            .await
            .unwrap(),
        vec![
            object(json!({"sku": "a", "cents": 100, "tags": ["x", "y"], "note": {"k": [1, 2]}})),
            object(json!({"sku": "b \"q\"", "cents": null, "tags": [], "note": null})),
        ]
    );
    assert_eq!(
        row_as_of(
            &mut runner,
            &log,
            &table("price"),
            "b \"q\"",
            just_before(changes[0].committed_at)
        )
        .await
        .unwrap(),
        None
    );

    // Only tracked tables can be snapshotted.
    let error = bemi_worker::snapshot(
        &fixture.source,
        fixture.setup.options().publication_name(),
        &[table("nope")],
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("is not tracked"), "{error}");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_under_concurrent_writes_misses_and_doubles_nothing() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE account (id int PRIMARY KEY, balance int NOT NULL);",
    )
    .await;
    fixture
        .sql("INSERT INTO account SELECT i, 0 FROM generate_series(1, 300) i")
        .await;
    let worker = RunningWorker::start(fixture.config());

    // Two writers update, insert and delete rows while the snapshot runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..2 {
        let client = fixture.database.connect().await;
        let stop = std::sync::Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut step: i32 = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || step < 50 {
                step += 1;
                let id = (step * 7 + writer * 13) % 300 + 1;
                client
                    .batch_execute(&format!(
                        "UPDATE account SET balance = balance + 1 WHERE id = {id}"
                    ))
                    .await
                    .unwrap();
                let extra = 1000 + writer * 100_000 + step;
                client
                    .batch_execute(&format!(
                        "INSERT INTO account VALUES ({extra}, {step}); \
                         DELETE FROM account WHERE id = {} ",
                        extra - 1
                    ))
                    .await
                    .unwrap();
            }
            step
        }));
    }
    let counts = bemi_worker::snapshot(
        &fixture.source,
        fixture.setup.options().publication_name(),
        &[table("account")],
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let snapshotted = counts[0].1;

    // Everything is stored once the stream reflects the table as it is now.
    let current: Vec<Image> = fixture
        .client
        .query(
            "SELECT json_build_object('id', id, 'balance', balance)::text FROM account ORDER BY id::text",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap())
        .collect();
    wait_until_async("the stream to reach the current table", TIMEOUT, || async {
        let now = table_as_of(
            &mut TokioPostgresRunner(&fixture.client),
            &AuditLog::default(),
            &table("account"),
            Utc::now(),
        )
        .await
        .unwrap();
        (now == current).then_some(())
    })
    .await;

    // Replaying the stream: each SNAPSHOT row is exactly the row's state at its position, and
    // the snapshot has one row per row that existed then.
    let changes = all_changes(&fixture.client).await;
    let mut state: HashMap<String, Image> = HashMap::new();
    let mut snapshot_rows = 0;
    let mut snapshot_position = None;
    for change in &changes {
        let key = change.primary_key.clone().unwrap();
        match change.operation {
            Operation::Create | Operation::Update => {
                if change.operation == Operation::Update {
                    assert_eq!(state.get(&key), Some(&change.before), "{change:?}");
                }
                state.insert(key, change.after.clone());
            }
            Operation::Delete => {
                assert_eq!(state.remove(&key).as_ref(), Some(&change.before));
            }
            Operation::Snapshot => {
                snapshot_rows += 1;
                let position = (change.commit_lsn, change.transaction_id);
                assert!(snapshot_position.is_none_or(|seen| seen == position));
                snapshot_position = Some(position);
                assert_eq!(state.get(&key), Some(&change.after), "{change:?}");
            }
            Operation::Truncate | Operation::Ddl => unreachable!(),
        }
        if change.operation == Operation::Snapshot && snapshot_rows == snapshotted {
            assert_eq!(state.len() as u64, snapshotted, "one row per existing row");
        }
    }
    assert_eq!(snapshot_rows, snapshotted);
    worker.stop().await.unwrap();
}

/// Plan node types, index names and relation names of `EXPLAIN (FORMAT JSON)` output.
fn scans(plan: &Value, found: &mut Vec<(String, String, String)>) {
    if let Some(node) = plan.get("Node Type").and_then(Value::as_str) {
        let text = |key: &str| {
            plan.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        found.push((node.to_owned(), text("Index Name"), text("Relation Name")));
    }
    if let Some(children) = plan.get("Plans").and_then(Value::as_array) {
        for child in children {
            scans(child, found);
        }
    }
}

/// The relations `sql` names (first column, as `regclass` text), without the `bemi.` prefix.
async fn relations(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<String> {
    client
        .query(sql, params)
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let name: String = row.get(0);
            name.trim_start_matches("bemi.").to_owned()
        })
        .collect()
}

/// An index of `bemi.changes_stored` and its partitions' copies of it.
async fn index_family(client: &tokio_postgres::Client, index: &str) -> Vec<String> {
    let sql = "SELECT relid::regclass::text \
               FROM pg_catalog.pg_partition_tree(('bemi.' || $1)::regclass)";
    relations(client, sql, &[&index]).await
}

/// Asserts that the `EXPLAIN (FORMAT JSON)` output `plan` scans `index` of
/// `bemi.changes_stored` (on a partitioned table, a partition's copy of it); returns the plan's
/// scans.
async fn assert_scans_index(
    client: &tokio_postgres::Client,
    plan: &Value,
    index: &str,
    name: &str,
) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    scans(&plan[0]["Plan"], &mut found);
    let family = index_family(client, index).await;
    assert!(
        found
            .iter()
            .any(|(node, used, _)| node.contains("Index") && family.contains(used)),
        "{name}: expected a scan of {index}, plan: {found:?}"
    );
    found
}

/// The partitions of `bemi.changes_stored` holding rows.
async fn filled_partitions(client: &tokio_postgres::Client) -> Vec<String> {
    let sql = "SELECT DISTINCT tableoid::regclass::text FROM bemi.changes_stored";
    relations(client, sql, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_use_the_indexes_on_100_000_changes() {
    let fixture = fixture(test_database!(), "").await;
    fixture
        .sql(
            "INSERT INTO bemi.changes_stored (primary_key, \"after\", context, database, schema, \"table\", \
               operation, committed_at, queued_at, transaction_id, position, commit_lsn, sequence) \
             SELECT (i % 10000)::text, jsonb_build_object('id', i % 10000, 'n', i), \
                    jsonb_build_object('request_id', 'r' || (i % 20000)), 'db', 'public', 't' || (i % 10), \
                    CASE WHEN i % 50 = 0 THEN 'DELETE' ELSE 'UPDATE' END, \
                    now() - make_interval(secs => 100000 - i), now(), i / 3, i, i, i % 3 \
             FROM generate_series(1, 100000) i; \
             ANALYZE bemi.changes_stored;",
        )
        .await;
    let filled = filled_partitions(&fixture.client).await;
    let key_table = table("t7");
    let at = Utc::now() - Span::seconds(50_000);
    let log = AuditLog::default();
    type Sql = (String, Vec<SqlParam>);
    let queries: Vec<(&str, Sql, &str)> = vec![
        (
            "history",
            ChangeQuery::new()
                .table(key_table.clone())
                .primary_key("77")
                .to_sql(),
            "changes_stored_key_idx",
        ),
        (
            "as_of",
            bemi_core::time_travel::row_as_of_sql(&log, &key_table, "77", &at),
            "changes_stored_key_idx",
        ),
        (
            "context",
            ChangeQuery::new()
                .context_contains(Context::new().with("request_id", "r42"))
                .to_sql(),
            "changes_stored_context_idx",
        ),
        (
            "transaction",
            ChangeQuery::new().transaction_id(4242).to_sql(),
            "changes_stored_transaction_id_idx",
        ),
        (
            "time range",
            ChangeQuery::new()
                .from(at)
                .until(at + Span::seconds(60))
                .to_sql(),
            "changes_stored_committed_at_idx",
        ),
        (
            "a table's deletions, newest first",
            ChangeQuery::new()
                .table(key_table.clone())
                .operations([Operation::Delete])
                .order(Order::NewestFirst)
                .limit(50)
                .to_sql(),
            "changes_stored_lifecycle_idx",
        ),
        (
            "newest page",
            ChangeQuery::new()
                .order(Order::NewestFirst)
                .limit(50)
                .to_sql(),
            "changes_stored_committed_at_idx",
        ),
    ];
    for (name, (sql, params), index) in queries {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|param| param as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let rows = fixture
            .client
            .query(&format!("EXPLAIN (FORMAT JSON) {sql}"), &params)
            .await
            .unwrap();
        let plan: Value = rows[0].get(0);
        // Empty partitions (the months ahead) may be read sequentially: they have no rows.
        let found = assert_scans_index(&fixture.client, &plan, index, name).await;
        assert!(
            !found
                .iter()
                .any(|(node, _, relation)| node == "Seq Scan" && filled.contains(relation)),
            "{name}: sequential scan of a partition with rows in {found:?}"
        );
    }
}

/// With `image_indexes`, searches by image content use the GIN indexes of the images as the
/// view shows them (an UPDATE's `after` rebuilt from its changed columns included), and find
/// the same changes as without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_searches_use_the_image_indexes() {
    let fixture = fixture_with(
        test_database!(),
        "",
        bemi_core::setup::SetupOptions::default().image_indexes(true),
    )
    .await;
    // 20,000 rows created, then each updated once (its status only).
    fixture
        .sql(
            "INSERT INTO bemi.changes_stored (primary_key, \"before\", \"after\", after_changed, context, \
               database, schema, \"table\", operation, committed_at, queued_at, transaction_id, position, \
               commit_lsn, sequence) \
             SELECT (i % 20000)::text, \
                    CASE WHEN i < 20000 THEN '{}'::json \
                         ELSE json_build_object('id', i % 20000, 'status', 'open') END, \
                    CASE WHEN i < 20000 THEN json_build_object('id', i, 'status', 'open') END, \
                    CASE WHEN i >= 20000 THEN jsonb_build_object('status', 'closed ' || (i % 20000)) END, \
                    '{}'::jsonb, 'db', 'public', 'items', \
                    CASE WHEN i < 20000 THEN 'CREATE' ELSE 'UPDATE' END, \
                    now() - make_interval(secs => 40000 - i), now(), i, i, i, 0 \
             FROM generate_series(0, 39999) i; \
             ANALYZE bemi.changes_stored;",
        )
        .await;
    let searches = [
        (
            ChangeQuery::new().after_contains(json!({"status": "closed 77"})),
            "changes_stored_after_images_idx",
            ("UPDATE", "77"),
        ),
        (
            ChangeQuery::new().before_contains(json!({"id": 78, "status": "open"})),
            "changes_stored_before_images_idx",
            ("UPDATE", "78"),
        ),
    ];
    for (query, index, (operation, key)) in searches {
        let (sql, params) = query.to_sql();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|param| param as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let plan: Value = fixture
            .client
            .query_one(&format!("EXPLAIN (FORMAT JSON) {sql}"), &params)
            .await
            .unwrap()
            .get(0);
        assert_scans_index(&fixture.client, &plan, index, "image search").await;
        let changes = query
            .fetch(&mut TokioPostgresRunner(&fixture.client))
            .await
            .unwrap();
        let found: Vec<(&str, Option<&str>)> = changes
            .iter()
            .map(|change| (change.operation.as_str(), change.primary_key.as_deref()))
            .collect();
        assert_eq!(found, vec![(operation, Some(key))]);
    }
}
