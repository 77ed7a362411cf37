//! Refusing to start, clearly, when the worker cannot work.

use bemi_core::setup::Problem;
use bemi_test_harness::{TestCluster, TestDatabase, test_database, wait_until_async};
use bemi_worker::{ConnectionOptions, Error, WorkerConfig};

use crate::support::{RunningWorker, TIMEOUT, fixture};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_is_refused_with_the_fix() {
    let cluster = TestCluster::dedicated(&["wal_level=replica"]);
    let database = TestDatabase::new_in(&cluster, &format!("{}::replica", module_path!()));
    let source = ConnectionOptions::parse(&database.url()).unwrap();
    let setup = bemi_core::setup::Setup::new(bemi_core::setup::SetupOptions::default()).unwrap();
    let error = bemi_worker::setup(&source, &source, &setup)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Requirement(requirement)
        if requirement.problems() == [Problem::WalLevel { found: "replica".into() }]),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("ALTER SYSTEM SET wal_level = logical;"),
        "{error}"
    );

    let worker = RunningWorker::start(WorkerConfig::new(source));
    let error = worker.ended().await.unwrap_err();
    assert!(matches!(error, Error::Requirement(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_slot_is_created() {
    let fixture = fixture(test_database!(), "CREATE TABLE item (id int PRIMARY KEY);").await;
    let mut config = fixture.config();
    config.slot = format!("{}_new", fixture.database.slot_name());
    let worker = RunningWorker::start(config.clone());
    // Creating a logical slot waits until the transactions running when it started are over,
    // as seen in xl_running_xacts records, which PostgreSQL 15 logs every 15 s: under the other
    // tests' concurrent writes this takes up to three such rounds.
    let slot_creation = TIMEOUT * 3;
    // The slot is `active` while it is being created; the worker streams (its walsender is in
    // pg_stat_replication) only once creation is done, from a point after which every commit
    // is captured.
    wait_until_async("the worker to create its slot and stream", slot_creation, || async {
        let streaming: bool = fixture
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_replication_slots s                  JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = $1)",
                &[&config.slot],
            )
            .await
            .unwrap()
            .get(0);
        streaming.then_some(())
    })
    .await;
    fixture.sql("INSERT INTO item VALUES (1)").await;
    assert_eq!(fixture.wait_for(1).await.len(), 1);
    worker.stop().await.unwrap();
}

/// The fixture's worker configuration, connecting as `role`.
fn config_for(fixture: &crate::support::Fixture, role: &str) -> WorkerConfig {
    let mut config = fixture.config();
    let url = fixture.database.url_for_user(role, Some("bemi-test"));
    config.source = ConnectionOptions::parse(&url).unwrap();
    config.store_into(
        config.source.clone(),
        bemi_core::setup::SetupOptions::default()
            .changes_table_name()
            .clone(),
    );
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_cannot_write_the_changes_table_is_told_what_to_grant() {
    let fixture = fixture(test_database!(), "").await;
    let role = format!("{}_worker", fixture.database.name());
    let create = format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN REPLICATION PASSWORD 'bemi-test';"
    );
    fixture.sql(&create).await;
    // In the source, reading the column policies comes first.
    let error = RunningWorker::start(config_for(&fixture, &role))
        .ended()
        .await
        .unwrap_err();
    let message = error.to_string();
    for grant in [
        format!("GRANT USAGE ON SCHEMA \"bemi\" TO \"{role}\";"),
        format!("GRANT SELECT ON bemi.column_policies TO \"{role}\";"),
        format!("GRANT SELECT, INSERT ON bemi.slot_incarnations TO \"{role}\";"),
    ] {
        assert!(message.contains(&grant), "{grant} in {message}");
    }
    fixture
        .sql(&format!(
            "GRANT SELECT ON bemi.column_policies TO {role}; \
             GRANT SELECT, INSERT ON bemi.slot_incarnations TO {role}"
        ))
        .await;

    // With the schema granted, the missing table privileges are named.
    fixture
        .sql(&format!("GRANT USAGE ON SCHEMA bemi TO {role}"))
        .await;
    let error = RunningWorker::start(config_for(&fixture, &role))
        .ended()
        .await
        .unwrap_err();
    fixture
        .sql(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
    let message = error.to_string();
    for grant in [
        format!("GRANT SELECT, INSERT ON \"bemi\".\"changes_stored\" TO \"{role}\";"),
        format!("GRANT SELECT, INSERT, UPDATE ON bemi.worker_progress TO \"{role}\";"),
    ] {
        assert!(message.contains(&grant), "{grant} in {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_held_by_another_consumer_is_refused() {
    let fixture = fixture(test_database!(), "CREATE TABLE item (id int PRIMARY KEY);").await;
    let first = RunningWorker::start(fixture.config());
    fixture.sql("INSERT INTO item VALUES (1)").await;
    fixture.wait_for(1).await;
    let error = RunningWorker::start(fixture.config())
        .ended()
        .await
        .unwrap_err();
    assert!(matches!(error, Error::SlotInUse { .. }), "{error}");
    assert!(
        error.to_string().contains("is in use by another consumer"),
        "{error}"
    );
    first.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_waits_for_a_held_slot_to_be_released() {
    // As after a crash: a new worker starts while the old walsender still holds the slot.
    let fixture = fixture(test_database!(), "CREATE TABLE item (id int PRIMARY KEY);").await;
    let first = RunningWorker::start(fixture.config());
    fixture.sql("INSERT INTO item VALUES (1)").await;
    fixture.wait_for(1).await;
    let mut config = fixture.config();
    config.slot_release_wait = TIMEOUT;
    let second = RunningWorker::start(config);
    wait_until_async(
        "the second worker to find the slot held",
        TIMEOUT,
        || async { (second.metrics.sessions() >= 2).then_some(()) },
    )
    .await;
    first.stop().await.unwrap();
    fixture.sql("INSERT INTO item VALUES (2)").await;
    assert_eq!(fixture.wait_for(2).await.len(), 2);
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_replication_is_told_what_to_run() {
    let fixture = fixture(test_database!(), "").await;
    let role = format!("{}_app", fixture.database.name());
    fixture
        .sql(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN NOSUPERUSER NOREPLICATION PASSWORD 'bemi-test';"
        ))
        .await;
    let mut config = fixture.config();
    config.source =
        ConnectionOptions::parse(&fixture.database.url_for_user(&role, Some("bemi-test"))).unwrap();
    let error = RunningWorker::start(config).ended().await.unwrap_err();
    fixture.sql(&format!("DROP ROLE {role}")).await;
    assert!(matches!(error, Error::Requirement(_)), "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("ALTER ROLE \"{role}\" WITH REPLICATION;")),
        "{error}"
    );
}
