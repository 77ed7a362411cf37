//! Scale-out through NATS JetStream: `capture` and `ingest` as real processes against a real
//! `nats-server -js` and PostgreSQL; every change stored exactly once through kills, a NATS
//! restart and a destination outage.

use std::process::Child;

use bemi_core::setup::{Setup, SetupOptions};
use bemi_test_harness::{NatsServer, TestDatabase, test_database, wait_until_async};
use bemi_worker::{ConnectionOptions, NatsOptions};

use crate::support::{
    Fixture, TIMEOUT, assert_exactly_once, count, fixture, insert_batch, spawn_binary,
};

const TODO: &str =
    "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, batch int NOT NULL);";

/// A child process killed when the test ends, however it ends.
struct Process {
    child: Child,
    log: std::path::PathBuf,
}

impl Process {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn capture(fixture: &Fixture, nats: &NatsServer, name: &str) -> Process {
    capture_with(fixture, nats, name, &[])
}

fn capture_with(fixture: &Fixture, nats: &NatsServer, name: &str, extra: &[&str]) -> Process {
    let url = fixture.database.url();
    let nats_url = nats.url();
    let mut args = vec![
        "capture",
        "--database-url",
        &url,
        "--slot",
        fixture.database.slot_name(),
        "--nats-url",
        &nats_url,
    ];
    if !extra.contains(&"--flush-interval-ms") {
        args.extend(["--flush-interval-ms", "20"]);
    }
    args.extend_from_slice(extra);
    let (child, log) = spawn_binary(
        &args,
        &format!("capture-{name}-{}", fixture.database.slot_name()),
    );
    Process { child, log }
}

fn ingest(destination: &str, nats: &NatsServer, name: &str) -> Process {
    ingest_with(destination, nats, name, &[])
}

fn ingest_with(destination: &str, nats: &NatsServer, name: &str, extra: &[&str]) -> Process {
    let nats_url = nats.url();
    let mut args = vec![
        "ingest",
        "--destination-url",
        destination,
        "--nats-url",
        &nats_url,
        "--nats-ack-wait-seconds",
        "2",
        "--batch-size",
        "500",
        "--flush-interval-ms",
        "20",
        "--seal-interval-ms",
        "100",
    ];
    args.extend_from_slice(extra);
    let (child, log) = spawn_binary(&args, &format!("ingest-{name}-{}", std::process::id()));
    Process { child, log }
}

/// What `wait_for_count` waits for; shown on timeout with the processes' logs.
struct StoredCount<'a> {
    expected: i64,
    processes: &'a [&'a Process],
}

impl std::fmt::Display for StoredCount<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let logs: Vec<String> = self.processes.iter().map(|process| process.log()).collect();
        write!(
            f,
            "{} stored changes; logs:\n{}",
            self.expected,
            logs.join("\n---\n")
        )
    }
}

/// Waits until `expected` changes are stored in the database of `client`.
async fn wait_for_count(
    client: &tokio_postgres::Client,
    setup: &Setup,
    expected: i64,
    processes: &[&Process],
) {
    let what = StoredCount {
        expected,
        processes,
    };
    wait_until_async(what, TIMEOUT, || async {
        (count(client, setup).await >= expected).then_some(())
    })
    .await;
}

/// Waits until every stored change is sealed (by the ingest processes), then verifies them.
async fn wait_sealed_and_verified(fixture: &Fixture) {
    crate::support::wait_all_sealed(fixture).await;
    let report = crate::support::verify(fixture).await;
    assert!(report.is_intact() && report.intact > 0, "{report:?}");
    assert_eq!(
        (report.unsealed_after, report.unsealed_before),
        (0, 0),
        "{report:?}"
    );
}

/// Waits until the ingest consumer has nothing pending or unacknowledged.
async fn wait_for_drained_consumer(nats: &NatsServer) -> bemi_worker::NatsStatus {
    let options = NatsOptions::new(nats.url());
    wait_until_async("the consumer to be drained", TIMEOUT, || async {
        let status = bemi_worker::nats_status(&options).await.ok()?;
        (status.pending == Some(0) && status.ack_pending == Some(0)).then_some(status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_and_two_ingest_processes_store_every_change_once() {
    let fixture = fixture(test_database!(), TODO).await;
    let nats = NatsServer::start();
    let destination = fixture.database.url();
    let ingest_a = ingest(&destination, &nats, "a1");
    let ingest_b = ingest(&destination, &nats, "b1");
    let capture = capture(&fixture, &nats, "1");
    for batch in 1..=6 {
        insert_batch(&fixture.client, batch, 1_000).await;
    }
    wait_for_count(
        &fixture.client,
        &fixture.setup,
        6_000,
        &[&capture, &ingest_a, &ingest_b],
    )
    .await;
    let status = wait_for_drained_consumer(&nats).await;
    assert_exactly_once(&fixture.client, 6_000).await;
    // Two processes stored batches in any order; the seals cover them all, in id order.
    wait_sealed_and_verified(&fixture).await;
    // Work-queue retention: what is stored is gone from the stream.
    assert_eq!(status.messages, 0, "{status}");

    // The status command shows the JetStream stage.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bemi-worker"))
        .args(["status", "--database-url", &destination, "--slot"])
        .arg(fixture.database.slot_name())
        .args(["--nats-url", &nats.url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    // Healthy while `capture` streams; a warning if it just reconnected. Never critical.
    assert!(
        matches!(output.status.code(), Some(0 | 1)),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!text.contains("last stored commit:  none yet"), "{text}");
    assert!(
        text.contains("JetStream stream BEMI_CHANGES: 0 changes")
            && text
                .contains("ingest consumer bemi-ingest: 0 pending, 0 delivered and unacknowledged"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_ingest_process_loses_and_doubles_nothing() {
    let fixture = fixture(test_database!(), TODO).await;
    let nats = NatsServer::start();
    let destination = fixture.database.url();
    let mut ingest_a = ingest(&destination, &nats, "a2");
    let capture = capture(&fixture, &nats, "2");
    for batch in 1..=3 {
        insert_batch(&fixture.client, batch, 1_000).await;
    }
    wait_for_count(
        &fixture.client,
        &fixture.setup,
        3_000,
        &[&capture, &ingest_a],
    )
    .await;
    wait_for_drained_consumer(&nats).await;
    // Frozen with its request for more outstanding and everything so far acknowledged: what
    // the server delivers to it from now on stays unacknowledged. Killed then, its changes go
    // to the other process after the ack wait (stored once: the change id is the key).
    let pid = ingest_a.child.id().to_string();
    let frozen = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(frozen.success());
    let writer_client = fixture.database.connect().await;
    let writer = tokio::spawn(async move {
        for batch in 4..=20 {
            insert_batch(&writer_client, batch, 1_000).await;
        }
    });
    let options = NatsOptions::new(nats.url());
    let in_flight = wait_until_async(
        "changes delivered to the frozen process",
        TIMEOUT,
        || async {
            let status = bemi_worker::nats_status(&options).await.ok()?;
            status.ack_pending.filter(|pending| *pending > 0)
        },
    )
    .await;
    ingest_a.kill();
    let ingest_b = ingest(&destination, &nats, "b2");
    writer.await.unwrap();
    wait_for_count(
        &fixture.client,
        &fixture.setup,
        20_000,
        &[&capture, &ingest_b],
    )
    .await;
    let status = wait_for_drained_consumer(&nats).await;
    assert_exactly_once(&fixture.client, 20_000).await;
    wait_sealed_and_verified(&fixture).await;
    let deliveries = status.deliveries.unwrap_or_default();
    assert!(
        deliveries >= 20_000 + u64::try_from(in_flight).unwrap_or_default(),
        "the {in_flight} changes the killed process held were delivered again: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_killed_mid_transaction_and_restarted_stores_once() {
    let fixture = fixture(test_database!(), TODO).await;
    let nats = NatsServer::start();
    let destination = fixture.database.url();
    let ingest = ingest(&destination, &nats, "a3");
    let mut first = capture(&fixture, &nats, "3a");
    // One transaction of 30,000 changes: capture publishes it in batches of 5,000 and confirms
    // the slot only at its end.
    insert_batch(&fixture.client, 1, 30_000).await;
    wait_for_count(&fixture.client, &fixture.setup, 1, &[&first, &ingest]).await;
    first.kill();
    let stored_at_kill = count(&fixture.client, &fixture.setup).await;
    assert!(
        stored_at_kill < 30_000,
        "the kill came too late to test a replay ({stored_at_kill} stored)"
    );
    // The restarted capture publishes the whole transaction again; JetStream's duplicate window
    // drops what it already has.
    let second = capture(&fixture, &nats, "3b");
    wait_for_count(&fixture.client, &fixture.setup, 30_000, &[&second, &ingest]).await;
    wait_for_drained_consumer(&nats).await;
    assert_exactly_once(&fixture.client, 30_000).await;
    assert!(
        second
            .log()
            .contains("JetStream already had some of these changes"),
        "{}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_while_both_run_loses_and_doubles_nothing() {
    let fixture = fixture(test_database!(), TODO).await;
    let nats = NatsServer::start();
    let destination = fixture.database.url();
    let ingest = ingest(&destination, &nats, "a4");
    let capture = capture(&fixture, &nats, "4");
    insert_batch(&fixture.client, 1, 2_000).await;
    wait_for_count(&fixture.client, &fixture.setup, 2_000, &[&capture, &ingest]).await;
    nats.stop();
    // Written while NATS is down: the slot keeps them until capture can publish.
    for batch in 2..=4 {
        insert_batch(&fixture.client, batch, 2_000).await;
    }
    nats.restart();
    for batch in 5..=6 {
        insert_batch(&fixture.client, batch, 2_000).await;
    }
    wait_for_count(
        &fixture.client,
        &fixture.setup,
        12_000,
        &[&capture, &ingest],
    )
    .await;
    wait_for_drained_consumer(&nats).await;
    assert_exactly_once(&fixture.client, 12_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_wait_in_the_stream_while_the_destination_is_down() {
    let source = TestDatabase::new("nats_destination_down_source");
    let target = TestDatabase::new("nats_destination_down_target");
    let fixture = {
        let client = source.connect().await;
        client.batch_execute(TODO).await.unwrap();
        let options = SetupOptions::default().slot(source.slot_name());
        let setup = Setup::new(options).unwrap();
        let source_options = ConnectionOptions::parse(&source.url()).unwrap();
        let target_options = ConnectionOptions::parse(&target.url()).unwrap();
        bemi_worker::setup(&source_options, &target_options, &setup)
            .await
            .unwrap();
        Fixture {
            database: source,
            client,
            source: source_options,
            setup,
        }
    };
    let target_client = target.connect().await;
    let nats = NatsServer::start();
    let capture = capture(&fixture, &nats, "5");
    let ingest = ingest(&target.url(), &nats, "a5");
    insert_batch(&fixture.client, 1, 1_000).await;
    wait_for_count(&target_client, &fixture.setup, 1_000, &[&capture, &ingest]).await;

    // The destination goes away: no connections accepted, the open ones ended.
    let admin = fixture.database.connect().await;
    let name = target.name().to_owned();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false"
        ))
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .unwrap();
    for batch in 2..=4 {
        insert_batch(&fixture.client, batch, 1_000).await;
    }
    // Captured and waiting in the stream.
    let options = NatsOptions::new(nats.url());
    wait_until_async("the changes to wait in the stream", TIMEOUT, || async {
        let status = bemi_worker::nats_status(&options).await.ok()?;
        (status.messages == 3_000).then_some(())
    })
    .await;

    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true"
        ))
        .await
        .unwrap();
    let target_client = target.connect().await;
    wait_for_count(&target_client, &fixture.setup, 4_000, &[&capture, &ingest]).await;
    wait_for_drained_consumer(&nats).await;
    assert_exactly_once(&target_client, 4_000).await;
    assert!(
        ingest.log().contains("ingest session ended: reconnecting"),
        "{}",
        ingest.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_a_change_is_kept_and_does_not_block_the_rest() {
    let fixture = fixture(test_database!(), TODO).await;
    let nats = NatsServer::start();
    let destination = fixture.database.url();
    let capture = capture(&fixture, &nats, "6");
    insert_batch(&fixture.client, 1, 10).await;
    // Someone else publishes to the subject.
    publish_raw(&nats, "{\"hello\": \"world\"}".to_owned()).await;
    let options = NatsOptions::new(nats.url());
    let ingest = ingest(&destination, &nats, "a6");
    insert_batch(&fixture.client, 2, 10).await;
    wait_for_count(&fixture.client, &fixture.setup, 20, &[&capture, &ingest]).await;
    assert_exactly_once(&fixture.client, 20).await;
    // The stranger is still in the stream, for an operator to look at.
    wait_until_async("only the stranger left in the stream", TIMEOUT, || async {
        let status = bemi_worker::nats_status(&options).await.ok()?;
        (status.messages == 1).then_some(())
    })
    .await;
    assert!(
        ingest.log().contains("is not a bemi change"),
        "{}",
        ingest.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_are_used_and_a_wrong_password_is_a_clear_error() {
    let fixture = fixture(test_database!(), TODO).await;
    let nats = NatsServer::start_with(&["--user", "bemi", "--pass", "s3cret-nats"]);
    let destination = fixture.database.url();

    // A wrong password is not retried forever: capture exits with the reason, without the
    // password.
    let mut refused = capture_with(
        &fixture,
        &nats,
        "7a",
        &["--nats-user", "bemi", "--nats-password", "wrong-pass"],
    );
    let exit = bemi_test_harness::wait_until("capture to give up", TIMEOUT, || {
        refused.child.try_wait().ok().flatten()
    });
    let log = refused.log();
    assert!(!exit.success(), "{log}");
    assert!(log.contains("authorization violation"), "{log}");
    assert!(!log.contains("wrong-pass"), "{log}");

    let credentials = ["--nats-user", "bemi", "--nats-password", "s3cret-nats"];
    let capture = capture_with(&fixture, &nats, "7b", &credentials);
    let ingest = ingest_with(&destination, &nats, "a7", &credentials);
    insert_batch(&fixture.client, 1, 100).await;
    wait_for_count(&fixture.client, &fixture.setup, 100, &[&capture, &ingest]).await;
    assert_exactly_once(&fixture.client, 100).await;
    for process in [&capture, &ingest] {
        assert!(!process.log().contains("s3cret-nats"), "{}", process.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_larger_than_a_nats_message_stops_capture_with_the_reason() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE document (id int PRIMARY KEY, body text NOT NULL);",
    )
    .await;
    let nats = NatsServer::start();
    let mut capture = capture(&fixture, &nats, "8");
    let before: String = fixture
        .client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    // nats-server's default max_payload is 1 MiB.
    fixture
        .sql("INSERT INTO document VALUES (1, repeat('x', 2000000))")
        .await;
    let exit = bemi_test_harness::wait_until("capture to stop", TIMEOUT, || {
        capture.child.try_wait().ok().flatten()
    });
    let log = capture.log();
    assert!(!exit.success(), "{log}");
    assert!(
        log.contains("(public.document) does not fit in one NATS message")
            && log.contains("raise max_payload"),
        "{log}"
    );
    // Nothing was confirmed: the change is still in the slot.
    let pending: bool = fixture
        .client
        .query_one(
            "SELECT confirmed_flush_lsn <= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
            &[&fixture.database.slot_name(), &before],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_over_tls_verifies_the_server() {
    let fixture = fixture(test_database!(), TODO).await;
    let nats = NatsServer::start_with_tls();
    let url = fixture.database.url();
    let nats_url = nats.tls_url();
    let slot = fixture.database.slot_name().to_owned();
    let run = |command: &str, ca: &std::path::Path, name: &str| {
        let ca = ca.display().to_string();
        let mut args = vec![command];
        if command == "capture" {
            args.extend(["--database-url", &url, "--slot", &slot]);
        } else {
            args.extend(["--destination-url", &url]);
        }
        args.extend([
            "--flush-interval-ms",
            "20",
            "--nats-url",
            &nats_url,
            "--nats-tls-ca",
            &ca,
            "--nats-require-tls",
        ]);
        let (child, log) = spawn_binary(&args, &format!("tls-{name}-{slot}"));
        Process { child, log }
    };

    // A server certificate from another CA is refused, once, with the reason.
    let mut refused = run("capture", &nats.other_root_cert(), "refused");
    let exit = bemi_test_harness::wait_until("capture to give up", TIMEOUT, || {
        refused.child.try_wait().ok().flatten()
    });
    let log = refused.log();
    assert!(!exit.success(), "{log}");
    assert!(
        log.contains("connect to NATS at nats://localhost:"),
        "{log}"
    );
    assert!(log.to_lowercase().contains("certificate"), "{log}");

    let capture = run("capture", &nats.root_cert(), "capture");
    let ingest = run("ingest", &nats.root_cert(), "ingest");
    insert_batch(&fixture.client, 1, 100).await;
    wait_for_count(&fixture.client, &fixture.setup, 100, &[&capture, &ingest]).await;
    assert_exactly_once(&fixture.client, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_larger_than_the_acknowledgement_window_are_published() {
    let fixture = fixture(test_database!(), TODO).await;
    let nats = NatsServer::start();
    // Batches of 12,000: more than async-nats lets await acknowledgement at once (5,000).
    let capture = capture_with(
        &fixture,
        &nats,
        "9",
        &["--batch-size", "12000", "--flush-interval-ms", "5000"],
    );
    let ingest = ingest(&fixture.database.url(), &nats, "a9");
    insert_batch(&fixture.client, 1, 15_000).await;
    wait_for_count(
        &fixture.client,
        &fixture.setup,
        15_000,
        &[&capture, &ingest],
    )
    .await;
    assert_exactly_once(&fixture.client, 15_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_marked_rejected_is_parked_by_ingest_not_stored() {
    let fixture = fixture(test_database!(), TODO).await;
    let nats = NatsServer::start();
    let destination = fixture.database.url();
    let capture = capture(&fixture, &nats, "9");
    insert_batch(&fixture.client, 1, 3).await;
    // What capture publishes for a replication message it cannot render.
    let parked = serde_json::json!({
        "v": 1, "id": "00000000-0000-8000-8000-000000000001", "primary_key": null,
        "before": {}, "after": {"pgoutput": "\\x4900"}, "context": {},
        "database": "app", "schema": "", "table": "", "operation": "CREATE",
        "committed_at": "2026-11-30T00:00:00Z", "queued_at": "2026-11-30T00:00:00Z",
        "transaction_id": 750, "position": 23456, "commit_lsn": 23500, "sequence": 0,
        "previous_primary_key": null,
        "rejected": "pgoutput message: truncated while reading a tuple"
    });
    publish_raw(&nats, parked.to_string()).await;
    let ingest = ingest(&destination, &nats, "a9");
    wait_for_count(&fixture.client, &fixture.setup, 3, &[&capture, &ingest]).await;
    let row = wait_until_async("the parked change", TIMEOUT, || async {
        fixture
            .client
            .query_opt(
                "SELECT reason, position, convert_from(payload, 'UTF8')::jsonb -> 'after' \
                 FROM bemi.rejected",
                &[],
            )
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        row.get::<_, String>(0),
        "pgoutput message: truncated while reading a tuple"
    );
    assert_eq!(row.get::<_, i64>(1), 23_456);
    assert_eq!(
        row.get::<_, serde_json::Value>(2),
        serde_json::json!({"pgoutput": "\\x4900"})
    );
    assert_exactly_once(&fixture.client, 3).await;
}

/// Publishes `payload` to the changes subject as another client would, once capture created
/// the stream.
async fn publish_raw(nats: &NatsServer, payload: String) {
    let options = NatsOptions::new(nats.url());
    wait_until_async("capture to create the stream", TIMEOUT, || async {
        bemi_worker::nats_status(&options).await.ok()
    })
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .publish("bemi.changes", payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_capture_renders_keys_with_the_shapes_recorded_before_its_start() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE account (id int PRIMARY KEY, note text);",
    )
    .await;
    let nats = NatsServer::start();
    let destination = fixture.database.url();
    let ingest = ingest(&destination, &nats, "shapes");
    let mut first = capture(&fixture, &nats, "shapes-a");
    fixture
        .sql("INSERT INTO account VALUES (1, 'a'); ALTER TABLE account RENAME COLUMN id TO account_id")
        .await;
    wait_for_count(&fixture.client, &fixture.setup, 1, &[&first, &ingest]).await;
    bemi_test_harness::wait_for_slot_to_catch_up(
        &fixture.client,
        fixture.database.slot_name(),
        TIMEOUT,
    )
    .await;
    first.kill();
    // Written under the key `account_id`, read by a new capture after the catalog moved on:
    // the shape recorded before its start (the rename) names the key, not the catalog.
    fixture
        .sql("INSERT INTO account VALUES (2, 'b'); ALTER TABLE account RENAME COLUMN account_id TO acc")
        .await;
    let second = capture(&fixture, &nats, "shapes-b");
    wait_for_count(&fixture.client, &fixture.setup, 2, &[&second, &ingest]).await;
    bemi_test_harness::wait_for_slot_to_catch_up(
        &fixture.client,
        fixture.database.slot_name(),
        TIMEOUT,
    )
    .await;
    wait_for_drained_consumer(&nats).await;
    // The renames travelled through JetStream too, as DDL changes with their statements.
    let statements: Vec<String> = fixture
        .client
        .query(
            "SELECT \"after\"->>'statement' FROM bemi.changes \
             WHERE \"table\" = 'account' AND operation = 'DDL' ORDER BY commit_lsn, sequence",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        statements,
        [
            "INSERT INTO account VALUES (1, 'a'); ALTER TABLE account RENAME COLUMN id TO account_id",
            "INSERT INTO account VALUES (2, 'b'); ALTER TABLE account RENAME COLUMN account_id TO acc",
        ]
    );
    let keys: Vec<Option<String>> = fixture
        .client
        .query(
            "SELECT primary_key FROM bemi.changes \
             WHERE \"table\" = 'account' AND operation <> 'DDL' ORDER BY commit_lsn, sequence",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        keys,
        [Some("1".to_owned()), Some("2".to_owned())],
        "{}",
        second.log()
    );
}
