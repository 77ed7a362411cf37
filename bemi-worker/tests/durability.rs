//! Nothing lost, nothing doubled: stops, crashes, lost connections and server restarts.

use std::time::Duration;

use bemi_test_harness::{TestCluster, TestDatabase, test_database, wait_until_async};
use bemi_worker::ConnectionOptions;

use crate::support::{
    RunningWorker, TIMEOUT, assert_exactly_once, count, fixture, insert_batch, spawn_binary,
    terminate,
};

const TODO: &str =
    "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, batch int NOT NULL);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_the_worker_is_stopped_are_captured_once() {
    let fixture = fixture(test_database!(), TODO).await;
    let worker = RunningWorker::start(fixture.config());
    insert_batch(&fixture.client, 1, 3).await;
    fixture.wait_for(3).await;
    worker.stop().await.unwrap();

    // The stop confirmed what was stored.
    let (confirmed, positions): (bool, String) = fixture
        .client
        .query_one(
            "SELECT confirmed_flush_lsn > (SELECT '0/0'::pg_lsn + max(commit_lsn) FROM bemi.changes), \
             confirmed_flush_lsn::text || ' vs ' || (SELECT '0/0'::pg_lsn + max(commit_lsn) FROM bemi.changes)::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&fixture.database.slot_name()],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert!(
        confirmed,
        "slot confirmed past the stored commit: {positions}"
    );

    insert_batch(&fixture.client, 2, 4).await;
    insert_batch(&fixture.client, 3, 5).await;
    let worker = RunningWorker::start(fixture.config());
    fixture.wait_for(12).await;
    worker.stop().await.unwrap();
    assert_exactly_once(&fixture.client, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_larger_than_a_batch_is_stored_in_chunks() {
    let fixture = fixture(test_database!(), TODO).await;
    let mut config = fixture.config();
    config.batch_size = 100;
    let worker = RunningWorker::start(config);
    insert_batch(&fixture.client, 1, 5_000).await;
    fixture.wait_for(5_000).await;
    let metrics = std::sync::Arc::clone(&worker.metrics);
    worker.stop().await.unwrap();
    assert_eq!(metrics.stored_changes(), 5_000);
    assert_exactly_once(&fixture.client, 5_000).await;
    let progress: (i32, bool) = fixture
        .client
        .query_one(
            "SELECT stored_changes, complete FROM bemi.worker_progress",
            &[],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(progress, (5_000, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_worker_mid_stream_loses_and_doubles_nothing() {
    let fixture = fixture(test_database!(), TODO).await;
    let url = fixture.database.url();
    let slot = fixture.database.slot_name().to_owned();
    let args = crate::support::quick_run_args(&url, &slot);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let writer_client = fixture.database.connect().await;
    let writer = tokio::spawn(async move {
        for batch in 1..=60 {
            insert_batch(&writer_client, batch, 300).await;
        }
    });
    // Kill the worker three times mid-stream, each time after it stored past a threshold.
    for (round, threshold) in [3_000, 7_000, 12_000].into_iter().enumerate() {
        let (mut child, log) = spawn_binary(&args, &format!("sigkill-{slot}-{round}"));
        wait_until_async("the worker to store more", TIMEOUT, || async {
            (count(&fixture.client, &fixture.setup).await >= threshold).then_some(())
        })
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
        let log = std::fs::read_to_string(log).unwrap_or_default();
        assert!(log.contains("streaming"), "{log}");
    }
    writer.await.unwrap();
    let (mut child, _) = spawn_binary(&args, &format!("sigkill-{slot}-final"));
    fixture.wait_for(18_000).await;
    // A duplicate, if any, is stored by the time the worker processed everything written.
    bemi_test_harness::wait_for_slot_to_catch_up(&fixture.client, &slot, crate::support::TIMEOUT)
        .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert_exactly_once(&fixture.client, 18_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stores_confirms_and_exits_cleanly() {
    let fixture = fixture(test_database!(), TODO).await;
    let url = fixture.database.url();
    let slot = fixture.database.slot_name().to_owned();
    let (child, log) = spawn_binary(
        &["run", "--database-url", &url, "--slot", &slot],
        &format!("sigterm-{slot}"),
    );
    insert_batch(&fixture.client, 1, 10).await;
    fixture.wait_for(10).await;
    let exit = terminate(child).await;
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(exit.success(), "exit {exit:?}: {log}");
    assert!(log.contains("shutting down"), "{log}");
    let confirmed: bool = fixture
        .client
        .query_one(
            "SELECT confirmed_flush_lsn > (SELECT '0/0'::pg_lsn + max(commit_lsn) FROM bemi.changes) \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(confirmed, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_source_connections_are_reestablished() {
    let fixture = fixture(test_database!(), TODO).await;
    let worker = RunningWorker::start(fixture.config());
    insert_batch(&fixture.client, 1, 5).await;
    fixture.wait_for(5).await;
    // Cut the replication and catalog connections.
    fixture
        .client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'bemi-worker'",
            &[],
        )
        .await
        .unwrap();
    insert_batch(&fixture.client, 2, 5).await;
    fixture.wait_for(10).await;
    assert!(worker.metrics.sessions() >= 2, "reconnected");
    worker.stop().await.unwrap();
    assert_exactly_once(&fixture.client, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_destination_connections_are_reestablished() {
    let source_database = test_database!();
    let destination_database = TestDatabase::new(&format!("{}::destination", module_path!()));
    let source = ConnectionOptions::parse(&source_database.url()).unwrap();
    let destination = ConnectionOptions::parse(&destination_database.url()).unwrap();
    let source_client = source_database.connect().await;
    source_client.batch_execute(TODO).await.unwrap();
    let setup = bemi_core::setup::Setup::new(
        bemi_core::setup::SetupOptions::default().slot(source_database.slot_name()),
    )
    .unwrap();
    bemi_worker::setup(&source, &destination, &setup)
        .await
        .unwrap();
    let destination_client = destination_database.connect().await;

    let mut config = bemi_worker::WorkerConfig::new(source);
    config.store_into(
        destination,
        bemi_core::setup::SetupOptions::default()
            .changes_table_name()
            .clone(),
    );
    config.slot = source_database.slot_name().to_owned();
    config.flush_interval = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(500);
    let worker = RunningWorker::start(config);
    insert_batch(&source_client, 1, 5).await;
    crate::support::wait_for_changes(&destination_client, &setup, 5).await;
    destination_client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'bemi-worker'",
            &[],
        )
        .await
        .unwrap();
    insert_batch(&source_client, 2, 5).await;
    crate::support::wait_for_changes(&destination_client, &setup, 10).await;
    worker.stop().await.unwrap();
    assert_exactly_once(&destination_client, 10).await;
    // Nothing was written into the source's own changes table.
    let in_source: Option<i64> = source_client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = 'changes'",
            &[],
        )
        .await
        .map(|row| row.get(0))
        .ok();
    assert_eq!(in_source, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconnects_when_the_database_restarts() {
    let cluster = TestCluster::dedicated(&[]);
    let database = TestDatabase::new_in(&cluster, &format!("{}::restart", module_path!()));
    let fixture = fixture(database, TODO).await;
    let worker = RunningWorker::start(fixture.config());
    insert_batch(&fixture.client, 1, 5).await;
    fixture.wait_for(5).await;

    let restarted = std::sync::Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || {
        restarted.stop();
        restarted.restart();
    })
    .await
    .unwrap();
    let client = fixture.database.connect().await;
    insert_batch(&client, 2, 5).await;
    crate::support::wait_for_changes(&client, &fixture.setup, 10).await;
    assert!(worker.metrics.sessions() >= 2);
    worker.stop().await.unwrap();
    assert_exactly_once(&client, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_slot_is_its_own_incarnation_with_its_own_ids_and_progress() {
    let fixture = fixture(test_database!(), TODO).await;
    // A second slot sees the same transactions at the same commit positions; created as bemi
    // creates slots, it is a new incarnation (as after a restore, where positions repeat for
    // other transactions): its ids and progress never collide with the first slot's.
    let second_slot = format!("{}_second", fixture.database.slot_name());
    fixture
        .sql(&bemi_core::setup::create_slot_sql(&second_slot))
        .await;
    insert_batch(&fixture.client, 1, 500).await;
    insert_batch(&fixture.client, 2, 500).await;
    let first = RunningWorker::start(fixture.config());
    fixture.wait_for(1_000).await;
    first.stop().await.unwrap();

    let mut config = fixture.config();
    config.slot = second_slot.clone();
    let second = RunningWorker::start(config);
    insert_batch(&fixture.client, 3, 10).await;
    wait_until_async("the second worker to catch up", TIMEOUT, || async {
        let progress: Option<bool> = fixture
            .client
            .query_opt(
                "SELECT complete FROM bemi.worker_progress WHERE source LIKE '%/' || $1 || '/%'",
                &[&second_slot],
            )
            .await
            .unwrap()
            .map(|row| row.get(0));
        (progress == Some(true)).then_some(())
    })
    .await;
    let metrics = std::sync::Arc::clone(&second.metrics);
    second.stop().await.unwrap();
    assert_eq!(
        metrics.stored_changes(),
        1_010,
        "the second worker handled every change"
    );
    let row = fixture
        .client
        .query_one(
            "SELECT count(*), count(DISTINCT id), \
                    (SELECT count(*) FROM bemi.worker_progress) FROM bemi.changes",
            &[],
        )
        .await
        .unwrap();
    let (total, distinct, progress_rows): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((total, distinct), (2_010, 2_010));
    assert_eq!(progress_rows, 2, "one progress row per incarnation");
}
