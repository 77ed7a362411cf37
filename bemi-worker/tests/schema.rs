//! Keys and schema changes: the key of a change is the table's key as the change saw it.

use bemi_test_harness::test_database;
use serde_json::json;

use crate::support::{RunningWorker, fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_the_key_columns_only_and_never_silently_null() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE covered (id int, v text, PRIMARY KEY (id) INCLUDE (v)); \
         CREATE TABLE coded (code text NOT NULL, note text, maybe int UNIQUE); \
         CREATE UNIQUE INDEX coded_code ON coded (code); \
         CREATE TABLE generated (a int, id int GENERATED ALWAYS AS (a * 2) STORED PRIMARY KEY);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .sql(
            "INSERT INTO covered VALUES (1, 'a'); UPDATE covered SET v = 'b' WHERE id = 1; \
             INSERT INTO coded VALUES ('X-1', 'n', NULL); \
             INSERT INTO generated (a) VALUES (21);",
        )
        .await;
    let changes = fixture.wait_for(4).await;
    let keys: Vec<_> = changes
        .iter()
        .map(|change| {
            (
                change.table.as_str(),
                change.operation.as_str(),
                change.primary_key.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("covered", "CREATE", Some("1")),
            ("covered", "UPDATE", Some("1")),
            ("coded", "CREATE", Some("X-1")),
            ("generated", "CREATE", None),
        ]
    );
    // Updating an INCLUDE column is not a key change.
    let previous: Option<String> = fixture
        .client
        .query_one(
            "SELECT previous_primary_key FROM bemi.changes WHERE \"table\" = 'covered' AND operation = 'UPDATE'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(previous, None);
    // PostgreSQL before 18 does not publish generated columns: the key cannot be rendered, and
    // the change says which column is missing.
    assert_eq!(
        changes[3].context,
        json!({"_bemi": {"key_unavailable": ["id"]}})
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_ids_are_epoch_extended_so_they_never_repeat() {
    let cluster = bemi_test_harness::TestCluster::dedicated(&[]);
    // As after three wraparounds of the 32-bit counter.
    cluster.stop();
    cluster.reset_wal(&["-e", "3"]);
    cluster.restart();
    let database =
        bemi_test_harness::TestDatabase::new_in(&cluster, &format!("{}::epoch", module_path!()));
    let fixture = fixture(database, "CREATE TABLE item (id int PRIMARY KEY);").await;
    let worker = RunningWorker::start(fixture.config());
    let xid: String = fixture
        .client
        .query_one(
            "WITH inserted AS (INSERT INTO item VALUES (1) RETURNING id) \
             SELECT pg_current_xact_id()::text FROM inserted",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let xid: i64 = xid.parse().unwrap();
    assert!(xid > 3 << 32, "{xid}");
    fixture.wait_for(1).await;
    let stored: i64 = fixture
        .client
        .query_one("SELECT transaction_id FROM bemi.changes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, xid);
    // Revert by transaction finds it by that id.
    let plan = bemi_worker::revert(
        &fixture.source,
        &fixture.source,
        fixture.setup.options().changes_table_name(),
        bemi_core::revert::Revert::transaction(xid),
        true,
    )
    .await
    .unwrap();
    assert_eq!(plan.steps().len(), 1);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_restored_from_a_base_backup_is_a_new_incarnation_and_nothing_is_skipped() {
    let cluster = bemi_test_harness::TestCluster::dedicated(&[]);
    let source_database = bemi_test_harness::TestDatabase::new_in(
        &cluster,
        &format!("{}::restored_source", module_path!()),
    );
    // The audit trail lives elsewhere, and is not restored with the source.
    let destination_database = test_database!();
    let destination = bemi_worker::ConnectionOptions::parse(&destination_database.url()).unwrap();
    let destination_client = destination_database.connect().await;
    let source = bemi_worker::ConnectionOptions::parse(&source_database.url()).unwrap();
    let client = source_database.connect().await;
    client
        .batch_execute("CREATE TABLE item (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    let setup = bemi_core::setup::Setup::new(
        bemi_core::setup::SetupOptions::default().slot(source_database.slot_name()),
    )
    .unwrap();
    bemi_worker::setup(&source, &destination, &setup)
        .await
        .unwrap();
    let mut config = bemi_worker::WorkerConfig::new(source.clone());
    config.store_into(
        destination.clone(),
        bemi_core::setup::SetupOptions::default()
            .changes_table_name()
            .clone(),
    );
    config.slot = source_database.slot_name().to_owned();
    config.flush_interval = std::time::Duration::from_millis(20);
    config.status_interval = std::time::Duration::from_millis(200);
    let stored = |count: i64| {
        let destination_client = &destination_client;
        async move {
            bemi_test_harness::wait_until_async(
                &format!("{count} stored changes"),
                crate::support::TIMEOUT,
                || async {
                    let stored: i64 = destination_client
                        .query_one("SELECT count(*) FROM bemi.changes", &[])
                        .await
                        .unwrap()
                        .get(0);
                    (stored >= count).then_some(())
                },
            )
            .await
        }
    };
    let worker = RunningWorker::start(config.clone());
    client
        .batch_execute("INSERT INTO item SELECT i, 'before backup' FROM generate_series(1, 5) i")
        .await
        .unwrap();
    stored(5).await;
    let backup = cluster.base_backup();
    // Changes the restore loses, written after megabytes of WAL: their positions are far past
    // where the restored server will write next.
    client
        .batch_execute(
            "CREATE SCHEMA untracked; \
             CREATE TABLE untracked.filler AS SELECT repeat('x', 1000) AS pad FROM generate_series(1, 20000); \
             INSERT INTO item SELECT i, 'lost' FROM generate_series(6, 15) i",
        )
        .await
        .unwrap();
    stored(15).await;
    worker.stop().await.unwrap();
    drop(client);

    // The source goes back to the backup (its slot is gone, its WAL positions repeat); setup
    // is run again, which creates a new slot.
    cluster.restore(&backup);
    bemi_worker::setup(&source, &destination, &setup)
        .await
        .unwrap();
    let client = source_database.connect().await;
    let worker = RunningWorker::start(config);
    client
        .batch_execute("INSERT INTO item SELECT i, 'after restore' FROM generate_series(6, 20) i")
        .await
        .unwrap();
    stored(30).await;
    let after: i64 = destination_client
        .query_one(
            "SELECT count(DISTINCT id) FROM bemi.changes WHERE \"after\"->>'note' = 'after restore'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, 15, "all 15 changes after the restore are stored");
    let incarnations: i64 = client
        .query_one("SELECT count(*) FROM bemi.slot_incarnations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        incarnations, 2,
        "the backup's incarnation and the new slot's"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_as_of_each_change_across_renames_and_drops_read_late() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE account (id int PRIMARY KEY, note text); \
         CREATE TABLE scratch (code text PRIMARY KEY, note text);",
    )
    .await;
    // The worker is stopped across every change of shape: it reads them all afterwards.
    fixture
        .sql(
            "INSERT INTO account VALUES (1, 'before'); \
             ALTER TABLE account RENAME COLUMN id TO account_id; \
             INSERT INTO account VALUES (2, 'after rename'); \
             ALTER TABLE account ADD COLUMN code text NOT NULL DEFAULT 'x'; \
             ALTER TABLE account DROP CONSTRAINT account_pkey; \
             ALTER TABLE account ADD PRIMARY KEY (code, account_id); \
             INSERT INTO account VALUES (3, 'new key', 'c'); \
             INSERT INTO scratch VALUES ('s1', 'kept'); \
             DELETE FROM scratch; \
             DROP TABLE scratch;",
        )
        .await;
    let worker = RunningWorker::start(fixture.config());
    let changes = fixture.wait_for(5).await;
    // Everything read, the shapes recorded after the last row change included.
    bemi_test_harness::wait_for_slot_to_catch_up(
        &fixture.client,
        fixture.database.slot_name(),
        std::time::Duration::from_secs(60),
    )
    .await;
    let keys: Vec<(String, String, Option<String>)> = changes
        .iter()
        .filter(|change| change.table != "schema_versions")
        .map(|change| {
            (
                change.table.clone(),
                change.operation.clone(),
                change.primary_key.clone(),
            )
        })
        .collect();
    let expected = |table: &str, operation: &str, key: &str| {
        (table.to_owned(), operation.to_owned(), Some(key.to_owned()))
    };
    assert_eq!(
        keys,
        [
            expected("account", "CREATE", "1"),
            expected("account", "CREATE", "2"),
            expected("account", "CREATE", r#"["c","3"]"#),
            expected("scratch", "CREATE", "s1"),
            expected("scratch", "DELETE", "s1"),
        ]
    );
    // The changes of shape are in the trail too (bemi.schema_history, beside `changes`), each
    // with the table's key from then on.
    let shapes: Vec<(String, serde_json::Value, bool)> = fixture
        .client
        .query(
            "SELECT shape->>'command', shape->'key', (shape->>'dropped')::boolean \
             FROM bemi.schema_history WHERE shape->>'table_name' IN ('account', 'scratch') \
             ORDER BY commit_lsn, sequence",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert!(
        shapes.contains(&("ALTER TABLE".to_owned(), json!(["account_id"]), false)),
        "{shapes:?}"
    );
    assert!(
        shapes.contains(&(
            "ALTER TABLE".to_owned(),
            json!(["code", "account_id"]),
            false
        )),
        "{shapes:?}"
    );
    assert!(
        shapes
            .iter()
            .any(|(command, _, dropped)| command == "DROP TABLE" && *dropped),
        "{shapes:?}"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_by_create_table_as_and_select_into_are_recorded() {
    let fixture = fixture(test_database!(), "").await;
    let worker = RunningWorker::start(fixture.config());
    for statement in [
        "BEGIN",
        "SET LOCAL bemi.context = '{\"job\":\"ctas\"}'",
        "CREATE TABLE copied AS SELECT g AS id, 'x' || g AS note FROM generate_series(1, 3) g",
        "COMMIT",
        "SELECT 7 AS id INTO selected",
        "INSERT INTO copied VALUES (4, 'later')",
    ] {
        fixture.sql(statement).await;
    }
    let changes = fixture.wait_for(5).await;
    let rows: Vec<(&str, &str, serde_json::Value, serde_json::Value)> = changes
        .iter()
        .map(|change| {
            (
                change.table.as_str(),
                change.operation.as_str(),
                change.after.clone(),
                change.context.clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "copied",
                "CREATE",
                json!({"id": 1, "note": "x1"}),
                json!({"job": "ctas"})
            ),
            (
                "copied",
                "CREATE",
                json!({"id": 2, "note": "x2"}),
                json!({"job": "ctas"})
            ),
            (
                "copied",
                "CREATE",
                json!({"id": 3, "note": "x3"}),
                json!({"job": "ctas"})
            ),
            ("selected", "CREATE", json!({"id": 7}), json!({})),
            (
                "copied",
                "CREATE",
                json!({"id": 4, "note": "later"}),
                json!({})
            ),
        ]
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_entering_or_leaving_the_tracked_schemas_are_tracked_from_that_moment() {
    let fixture = fixture(
        test_database!(),
        "CREATE SCHEMA elsewhere; \
         CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY); \
         CREATE TABLE elsewhere.moved_in (id int PRIMARY KEY); \
         CREATE TABLE leaving (id int PRIMARY KEY); \
         CREATE TABLE marker (id int PRIMARY KEY);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .sql(
            "INSERT INTO scratch VALUES (0); \
             ALTER TABLE scratch SET LOGGED; \
             INSERT INTO scratch VALUES (1); \
             INSERT INTO elsewhere.moved_in VALUES (0); \
             ALTER TABLE elsewhere.moved_in SET SCHEMA public; \
             INSERT INTO moved_in VALUES (1); \
             INSERT INTO leaving VALUES (1); \
             ALTER TABLE leaving SET SCHEMA elsewhere; \
             INSERT INTO elsewhere.leaving VALUES (2); \
             INSERT INTO marker VALUES (1);",
        )
        .await;
    // Everything before the marker is processed once the marker is stored.
    let changes = fixture.wait_for(4).await;
    let rows: Vec<(&str, Option<&str>)> = changes
        .iter()
        .map(|change| (change.table.as_str(), change.primary_key.as_deref()))
        .collect();
    assert_eq!(
        rows,
        [
            ("scratch", Some("1")),
            ("moved_in", Some("1")),
            ("leaving", Some("1")),
            ("marker", Some("1")),
        ]
    );
    let untracked: i64 = fixture
        .client
        .query_one(
            "SELECT count(*) FROM bemi.schema_history \
             WHERE shape->>'table_name' = 'leaving' AND shape->>'command' = 'ALTER TABLE (untracked)'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(untracked, 1);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_statements_can_be_left_out_and_ddl_is_never_reverted() {
    use bemi_core::TokioPostgresRunner;
    use bemi_core::revert::{Conflict, Revert, StepOutcome};
    use bemi_core::setup::SetupOptions;
    use bemi_core::{ChangeQuery, Context, Operation};

    let fixture = crate::support::fixture_with(
        test_database!(),
        "CREATE TABLE account (id int PRIMARY KEY, note text);",
        SetupOptions::default().ddl_statements(false),
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .tagged(
            "INSERT INTO account VALUES (1, 'a')",
            json!({"request": "migrate"}),
        )
        .await;
    fixture
        .sql(
            "ALTER TABLE account ADD COLUMN secret text DEFAULT 'hunter2' \
             /*Bemi {\"request\":\"migrate\"} Bemi*/",
        )
        .await;
    fixture.wait_for(1).await;
    bemi_test_harness::wait_for_slot_to_catch_up(
        &fixture.client,
        fixture.database.slot_name(),
        std::time::Duration::from_secs(60),
    )
    .await;
    let ddl = ChangeQuery::new()
        .operations([Operation::Ddl])
        .fetch(&mut TokioPostgresRunner(&fixture.client))
        .await
        .unwrap();
    assert_eq!(ddl.len(), 1, "{ddl:?}");
    assert_eq!(ddl[0].context.get("request"), Some(&json!("migrate")));
    assert_eq!(ddl[0].after.value("command"), Some(json!("ALTER TABLE")));
    assert!(!ddl[0].after.contains("statement"), "{:?}", ddl[0].after);
    assert!(!ddl[0].after.to_json().contains("hunter2"));

    // Reverting the request undoes the row and refuses the DDL, even when forced.
    let revert = Revert::context(Context::new().with("request", "migrate")).force();
    let mut client = fixture.database.connect().await;
    let transaction = client.transaction().await.unwrap();
    let plan = bemi_core::revert::plan(&mut TokioPostgresRunner(&transaction), &revert)
        .await
        .unwrap();
    transaction.rollback().await.unwrap();
    let outcomes: Vec<(Operation, bool)> = plan
        .steps()
        .iter()
        .map(|step| {
            (
                step.change.operation,
                matches!(
                    step.outcome,
                    StepOutcome::Skipped(Conflict::NotRevertible { .. })
                ),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [(Operation::Ddl, true), (Operation::Create, false)]
    );
    worker.stop().await.unwrap();
}
