//! TRUNCATE, tables created later, schema changes while streaming, and no feedback loop.

use bemi_core::QualifiedName;
use bemi_core::setup::SetupOptions;
use bemi_test_harness::test_database;
use serde_json::json;

use crate::support::{RunningWorker, fixture, fixture_with, stored};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_is_one_change_per_table_with_its_context() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent (id));
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .tagged("TRUNCATE parent CASCADE", json!({"job": "reset"}))
        .await;
    let changes = fixture.wait_for(2).await;
    let mut tables: Vec<&str> = changes.iter().map(|change| change.table.as_str()).collect();
    tables.sort_unstable();
    assert_eq!(tables, ["child", "parent"]);
    for change in &changes {
        assert_eq!(
            change,
            &stored(
                &change.table,
                "TRUNCATE",
                None,
                json!({}),
                json!({}),
                json!({"job": "reset"})
            )
        );
    }
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_created_after_setup_are_captured() {
    let fixture = fixture(test_database!(), "").await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .sql(r#"CREATE TABLE "Later Table" (id int PRIMARY KEY, note text)"#)
        .await;
    fixture
        .tagged(
            r#"INSERT INTO "Later Table" VALUES (1, 'new')"#,
            json!({"user": "ann"}),
        )
        .await;
    let changes = fixture.wait_for(1).await;
    assert_eq!(
        changes,
        [stored(
            "Later Table",
            "CREATE",
            Some("1"),
            json!({}),
            json!({"id": 1, "note": "new"}),
            json!({"user": "ann"})
        )]
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_while_streaming_are_followed() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE item (id int PRIMARY KEY, name text);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    fixture.sql("INSERT INTO item VALUES (1, 'a')").await;
    fixture.wait_for(1).await;
    fixture
        .sql(
            "ALTER TABLE item ADD COLUMN price numeric(10,2) DEFAULT 9.99;
             ALTER TABLE item RENAME COLUMN name TO title;
             INSERT INTO item VALUES (2, 'b', 1.50);",
        )
        .await;
    let changes = fixture.wait_for(2).await;
    assert_eq!(changes[0].after, json!({"id": 1, "name": "a"}));
    assert_eq!(
        changes[1].after,
        json!({"id": 2, "title": "b", "price": 1.50})
    );
    assert_eq!(changes[1].primary_key.as_deref(), Some("2"));
    // A new primary key: the relation is re-sent and its key read again from the catalog.
    fixture
        .sql(
            "ALTER TABLE item DROP CONSTRAINT item_pkey;
             ALTER TABLE item ADD PRIMARY KEY (title);
             UPDATE item SET price = 2 WHERE id = 2;",
        )
        .await;
    let changes = fixture.wait_for(3).await;
    assert_eq!(changes[2].primary_key.as_deref(), Some("b"));
    assert_eq!(
        changes[2].after,
        json!({"id": 2, "title": "b", "price": 2.00})
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_changes_table_is_never_captured_even_in_a_tracked_schema() {
    let fixture = fixture_with(
        test_database!(),
        "CREATE TABLE item (id int PRIMARY KEY);",
        SetupOptions::default().changes_table(QualifiedName::new("public", "changes").unwrap()),
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    for id in 1..=3 {
        fixture
            .sql(&format!("INSERT INTO item VALUES ({id})"))
            .await;
    }
    let changes = fixture.wait_for(3).await;
    // A feedback loop would show by the time the worker processed everything written so far.
    bemi_test_harness::wait_for_slot_to_catch_up(
        &fixture.client,
        fixture.database.slot_name(),
        crate::support::TIMEOUT,
    )
    .await;
    let changes_again = crate::support::changes(&fixture.client, &fixture.setup).await;
    assert_eq!(changes, changes_again);
    assert!(changes.iter().all(|change| change.table == "item"));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_rows_carry_source_and_position_columns() {
    let fixture = fixture(test_database!(), "CREATE TABLE item (id int PRIMARY KEY);").await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .sql("BEGIN; INSERT INTO item VALUES (1); INSERT INTO item VALUES (2); COMMIT;")
        .await;
    fixture.wait_for(2).await;
    let rows = fixture
        .client
        .query(
            "SELECT database, schema, transaction_id, position, commit_lsn, sequence, \
             committed_at <= queued_at AND queued_at <= created_at, committed_at > now() - interval '1 minute', \
             id::text FROM bemi.changes ORDER BY sequence",
            &[],
        )
        .await
        .unwrap();
    let database: String = rows[0].get(0);
    assert_eq!(database, fixture.database.name());
    let schema: String = rows[0].get(1);
    assert_eq!(schema, "public");
    let (xid_a, xid_b): (i64, i64) = (rows[0].get(2), rows[1].get(2));
    assert_eq!(xid_a, xid_b);
    let (position_a, position_b): (i64, i64) = (rows[0].get(3), rows[1].get(3));
    let (commit_a, commit_b): (i64, i64) = (rows[0].get(4), rows[1].get(4));
    assert!(
        position_a < position_b && position_b < commit_a,
        "{position_a} {position_b} {commit_a}"
    );
    assert_eq!(commit_a, commit_b);
    let sequences: Vec<i32> = rows.iter().map(|row| row.get(5)).collect();
    assert_eq!(sequences, [0, 1]);
    assert!(
        rows.iter()
            .all(|row| row.get::<_, bool>(6) && row.get::<_, bool>(7))
    );
    let ids: Vec<String> = rows.iter().map(|row| row.get(8)).collect();
    assert!(ids[0] < ids[1], "ids sort in commit order");
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_reported_as_their_table_and_a_moved_row_is_one_update() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE event (id int, at date, note text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE event_2024 PARTITION OF event FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');",
    )
    .await;
    // A partition created after setup is tracked too.
    fixture
        .sql("CREATE TABLE event_2025 PARTITION OF event FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')")
        .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .tagged(
            "INSERT INTO event VALUES (1, '2024-05-01', 'a'), (2, '2025-05-01', 'b')",
            json!({"via": "root"}),
        )
        .await;
    fixture
        .tagged(
            "UPDATE event_2025 SET note = 'c'",
            json!({"via": "partition"}),
        )
        .await;
    // Moves row 1 from event_2024 to event_2025 (PostgreSQL writes a DELETE and an INSERT).
    fixture
        .tagged(
            "UPDATE event SET at = '2025-06-01' WHERE id = 1",
            json!({"via": "move"}),
        )
        .await;
    fixture
        .tagged("DELETE FROM event WHERE id = 2", json!({"via": "delete"}))
        .await;
    let changes = fixture.wait_for(5).await;
    let partition = |name: &str, context: serde_json::Value| {
        let mut context = context;
        context["_bemi"] = json!({"partition": name});
        context
    };
    assert_eq!(
        changes,
        [
            stored(
                "event",
                "CREATE",
                Some(r#"["1","2024-05-01"]"#),
                json!({}),
                json!({"id": 1, "at": "2024-05-01", "note": "a"}),
                partition("public.event_2024", json!({"via": "root"}))
            ),
            stored(
                "event",
                "CREATE",
                Some(r#"["2","2025-05-01"]"#),
                json!({}),
                json!({"id": 2, "at": "2025-05-01", "note": "b"}),
                partition("public.event_2025", json!({"via": "root"}))
            ),
            stored(
                "event",
                "UPDATE",
                Some(r#"["2","2025-05-01"]"#),
                json!({"id": 2, "at": "2025-05-01", "note": "b"}),
                json!({"id": 2, "at": "2025-05-01", "note": "c"}),
                partition("public.event_2025", json!({"via": "partition"}))
            ),
            stored(
                "event",
                "UPDATE",
                Some(r#"["1","2025-06-01"]"#),
                json!({"id": 1, "at": "2024-05-01", "note": "a"}),
                json!({"id": 1, "at": "2025-06-01", "note": "a"}),
                json!({"via": "move", "_bemi": {"partition": "public.event_2025", "moved_from": "public.event_2024"}})
            ),
            stored(
                "event",
                "DELETE",
                Some(r#"["2","2025-05-01"]"#),
                json!({"id": 2, "at": "2025-05-01", "note": "c"}),
                json!({}),
                partition("public.event_2025", json!({"via": "delete"}))
            ),
        ]
    );
    let previous: Option<String> = fixture
        .client
        .query_one(
            "SELECT previous_primary_key FROM bemi.changes WHERE context->>'via' = 'move'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(previous.as_deref(), Some(r#"["1","2024-05-01"]"#));
    // Reverting the move by request puts the row back in its partition, through the table.
    let plan = bemi_worker::revert(
        &fixture.source,
        &fixture.source,
        fixture.setup.options().changes_table_name(),
        bemi_core::revert::Revert::context(
            bemi_core::Context::from_value(json!({"via": "move"})).unwrap(),
        ),
        false,
    )
    .await
    .unwrap();
    assert!(plan.is_clean(), "{plan:?}");
    let at: String = fixture
        .client
        .query_one("SELECT at::text FROM event_2024 WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(at, "2024-05-01");
    worker.stop().await.unwrap();
}
