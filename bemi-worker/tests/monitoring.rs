//! Operating the worker: Prometheus metrics and health endpoints scraped over HTTP from the real
//! binary, and the dashboard and alert rules checked against what it serves.

use std::collections::BTreeSet;

use bemi_test_harness::{test_database, wait_until_async};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TIMEOUT, fixture, insert_batch, spawn_binary, terminate};

const TODO: &str =
    "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, batch int NOT NULL);";

/// A free local port (bound, then released for the binary to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over HTTP/1.0: the status code and the body, `None` when nothing listens yet.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The value of the sample `name` (without labels) in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (metric, value) = line.split_once(' ')?;
        (metric == name).then(|| value.parse().ok())?
    })
}

/// The metric families a scrape declares (`# TYPE name type`), with their types.
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// Whether `used` (a name in a query: a family, a counter's `_total`, a histogram's series)
/// is served.
fn is_served(used: &str, families: &[(String, String)]) -> bool {
    families.iter().any(|(family, kind)| {
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        suffixes
            .iter()
            .any(|suffix| used == format!("{family}{suffix}"))
    })
}

/// The metric names a dashboard or rules file uses: `bemi_...` and `process_...` words.
fn used_metrics(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let bytes = text.as_bytes();
    for (at, _) in text.match_indices(['b', 'p']) {
        let word = &text[at..];
        if !(word.starts_with("bemi_") || word.starts_with("process_")) {
            continue;
        }
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let end = word
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(word.len());
        used.insert(word[..end].to_owned());
    }
    used
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served_while_the_binary_runs() {
    let fixture = fixture(test_database!(), TODO).await;
    let url = fixture.database.url();
    let slot = fixture.database.slot_name().to_owned();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (child, log) = spawn_binary(
        &[
            "run",
            "--database-url",
            &url,
            "--slot",
            &slot,
            "--metrics-listen",
            &listen,
            "--slot-poll-seconds",
            "1",
        ],
        &format!("metrics-{slot}"),
    );
    let healthy = wait_until_async("/healthz", TIMEOUT, || get(port, "/healthz")).await;
    assert_eq!(healthy, (200, "ok\n".to_owned()));
    wait_until_async("/readyz", TIMEOUT, || async {
        get(port, "/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
    insert_batch(&fixture.client, 1, 10).await;
    fixture.wait_for(10).await;
    // Stored, counted, and the slot polled since.
    let text = wait_until_async("the stored changes in /metrics", TIMEOUT, || async {
        let (status, text) = get(port, "/metrics").await?;
        assert_eq!(status, 200);
        (sample(&text, "bemi_changes_stored_total") == Some(10.0)
            && sample(&text, "bemi_retained_wal_bytes").is_some_and(|bytes| bytes > 0.0))
        .then_some(text)
    })
    .await;
    assert_eq!(
        sample(&text, "bemi_commit_to_stored_seconds_count"),
        Some(10.0)
    );
    assert!(sample(&text, "bemi_commit_to_stored_seconds_sum").unwrap() >= 0.0);
    assert!(sample(&text, "bemi_batches_total").unwrap() >= 1.0);
    // Each change's key, images and context: more than a hundred bytes apiece here.
    assert!(sample(&text, "bemi_change_bytes_total").unwrap() > 1_000.0);
    let newest = sample(&text, "bemi_last_stored_commit_timestamp_seconds").unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - 120.0..=now + 5.0).contains(&newest), "{newest}");
    assert_eq!(sample(&text, "bemi_streaming"), Some(1.0));
    assert_eq!(sample(&text, "bemi_reconnects_total"), Some(0.0));
    assert_eq!(sample(&text, "bemi_rejected_total"), Some(0.0));
    assert_eq!(sample(&text, "bemi_slot_lost"), Some(0.0));
    // The test cluster keeps WAL for slots without a limit.
    assert_eq!(sample(&text, "bemi_slot_wal_remaining_bytes"), Some(-1.0));
    assert!(sample(&text, "bemi_replication_lag_bytes").unwrap() >= 0.0);
    assert!(sample(&text, "process_resident_memory_bytes").unwrap() > 1e6);

    // Every metric the dashboard and the alert rules use is served.
    let families = families(&text);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    for file in ["grafana/bemi-worker.json", "prometheus/bemi-alerts.yml"] {
        let content = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let used = used_metrics(&content);
        assert!(used.len() >= 5, "{file}: {used:?}");
        for metric in used {
            assert!(
                is_served(&metric, &families),
                "{file} uses {metric}, which /metrics does not serve: {families:?}"
            );
        }
    }
    let exit = terminate(child).await;
    assert!(
        exit.success(),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The WAL the slot of `database` keeps, in bytes.
async fn retained_wal(client: &tokio_postgres::Client, slot: &str) -> i64 {
    client
        .query_one(
            "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

/// A tracked database that stays idle while another database of the cluster writes: the
/// worker's heartbeats (and the keepalives the server sends once it has caught up) move its slot
/// along, so the WAL it keeps stays bounded. The server's keepalive timer is off here
/// (`wal_sender_timeout=0`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_database_does_not_pin_the_wal_of_a_busy_cluster() {
    let cluster = bemi_test_harness::TestCluster::dedicated(&["wal_sender_timeout=0"]);
    let idle =
        bemi_test_harness::TestDatabase::new_in(&cluster, &format!("{}::idle", module_path!()));
    let fixture = fixture(idle, TODO).await;
    let slot = fixture.database.slot_name().to_owned();
    let mut config = fixture.config();
    config.heartbeat_interval = Some(std::time::Duration::from_secs(1));
    let worker = crate::support::RunningWorker::start(config);
    insert_batch(&fixture.client, 1, 3).await;
    fixture.wait_for(3).await;

    let busy =
        bemi_test_harness::TestDatabase::new_in(&cluster, &format!("{}::busy", module_path!()));
    let busy = busy.connect().await;
    busy.batch_execute("CREATE TABLE filler (id int, pad text)")
        .await
        .unwrap();
    let started: String = busy
        .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    // About 80 MB of WAL, with a checkpoint (and so a record of running transactions, from
    // which a slot may restart) every 5 MB.
    for round in 0..16 {
        busy.batch_execute(&format!(
            "INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series({}, {}) g; \
             CHECKPOINT;",
            round * 4000,
            round * 4000 + 3999
        ))
        .await
        .unwrap();
    }
    let written: i64 = busy
        .query_one(
            "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), $1::text::pg_lsn)::bigint",
            &[&started],
        )
        .await
        .unwrap()
        .get(0);
    assert!(written > 64 << 20, "{written} bytes of WAL written");
    let retained = wait_until_async("the idle slot to advance", TIMEOUT, || async {
        let retained = retained_wal(&fixture.client, &slot).await;
        (retained < 16 << 20).then_some(retained)
    })
    .await;
    // Heartbeats are written while the database stays idle (one per second here).
    wait_until_async("a heartbeat", TIMEOUT, || async {
        (worker.metrics.heartbeats() > 0).then_some(())
    })
    .await;
    // Nothing was stored for the heartbeats.
    assert_eq!(fixture.wait_for(3).await.len(), 3);
    worker.stop().await.unwrap();
    assert!(retained < written / 4, "{retained} of {written}");
}

/// The slot's `wal_status` (`reserved`, ..., `lost`).
async fn wal_status(client: &tokio_postgres::Client, slot: &str) -> Option<String> {
    client
        .query_one(
            "SELECT wal_status FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

/// The batches (`todo.batch`) whose rows are in the trail.
async fn stored_batches(client: &tokio_postgres::Client) -> Vec<i32> {
    crate::support::first_column(
        client,
        "SELECT DISTINCT (\"after\"->>'batch')::int FROM bemi.changes ORDER BY 1",
        &[],
    )
    .await
}

/// A slot the server invalidated (its WAL passed `max_slot_wal_keep_size` while the worker was
/// stopped): `status` is critical, the worker stops saying what to run, and with
/// `on_slot_lost = Recreate` it recreates the slot, records the gap and captures again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_loud_and_recreating_it_records_the_gap() {
    let cluster = bemi_test_harness::TestCluster::dedicated(&["max_slot_wal_keep_size=1MB"]);
    let database =
        bemi_test_harness::TestDatabase::new_in(&cluster, &format!("{}::lost", module_path!()));
    let fixture = fixture(
        database,
        &format!("{TODO} CREATE SCHEMA scratch; CREATE TABLE scratch.filler (id int, pad text);"),
    )
    .await;
    let slot = fixture.database.slot_name().to_owned();
    let worker = crate::support::RunningWorker::start(fixture.config());
    insert_batch(&fixture.client, 1, 3).await;
    fixture.wait_for(3).await;
    worker.stop().await.unwrap();

    // While the worker is stopped: changes it will never read, then WAL past the limit.
    insert_batch(&fixture.client, 2, 2).await;
    wait_until_async("the server to invalidate the slot", TIMEOUT, || async {
        fixture
            .client
            .batch_execute(
                "INSERT INTO scratch.filler SELECT g, repeat('x', 1000) FROM generate_series(1, 3000) g; \
                 SELECT pg_catalog.pg_switch_wal(); CHECKPOINT;",
            )
            .await
            .unwrap();
        let status = wal_status(&fixture.client, &slot).await;
        (status.as_deref() == Some("lost")).then_some(())
    })
    .await;
    let status = bemi_worker::status(&fixture.source, &fixture.source, fixture.setup.options())
        .await
        .unwrap();
    let (health, reasons) = status.health(bemi_worker::LagLimits::default());
    assert_eq!(health, bemi_worker::Health::Critical, "{reasons:?}");

    // By default the worker stops, saying what happened and what to run.
    let error = bemi_worker::Worker::new(fixture.config())
        .run(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(error, bemi_worker::Error::SlotLost { .. }),
        "{error}"
    );
    assert_eq!(error.kind(), bemi_worker::ErrorKind::Fatal);
    let message = error.to_string();
    for said in [
        "invalidated",
        "not in the trail",
        "--on-slot-lost recreate",
        "snapshot",
    ] {
        assert!(message.contains(said), "{message}");
    }

    // A worker role that may not record the gap refuses to recreate, and leaves the slot as
    // it is: no gap goes unrecorded.
    let role = fixture.role("gaps", "REPLICATION").await;
    let grants = fixture.setup.worker_grants_sql(&role).unwrap();
    fixture.sql(&grants.source).await;
    fixture.sql(&grants.destination).await;
    fixture
        .sql(&format!("REVOKE INSERT ON bemi.trail_gaps FROM {role}"))
        .await;
    let mut restricted = fixture.config();
    restricted.on_slot_lost = bemi_worker::OnSlotLost::Recreate;
    restricted.source = bemi_worker::ConnectionOptions::parse(
        &fixture.database.url_for_user(&role, Some("bemi-test")),
    )
    .unwrap();
    restricted.store_into(
        restricted.source.clone(),
        fixture.setup.options().changes_table_name().clone(),
    );
    let refused = bemi_worker::Worker::new(restricted)
        .run(std::future::pending())
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("GRANT SELECT, INSERT ON bemi.trail_gaps"),
        "{refused}"
    );
    let still_lost = wal_status(&fixture.client, &slot).await;
    assert_eq!(still_lost.as_deref(), Some("lost"));

    // Recreating: the gap is recorded, and capture goes on from the new slot.
    let mut config = fixture.config();
    config.on_slot_lost = bemi_worker::OnSlotLost::Recreate;
    let worker = crate::support::RunningWorker::start(config);
    let gap = wait_until_async("the gap to be recorded", TIMEOUT, || async {
        fixture
            .client
            .query_opt(
                "SELECT lost_after_lsn::text, lost_after IS NOT NULL, \
                        resumed_at_lsn > lost_after_lsn, lost_incarnation <> resumed_incarnation \
                 FROM bemi.trail_gaps WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .map(|row| {
                (
                    row.get::<_, Option<String>>(0),
                    row.get::<_, bool>(1),
                    row.get::<_, bool>(2),
                    row.get::<_, bool>(3),
                )
            })
    })
    .await;
    assert!(gap.0.is_some(), "{gap:?}");
    assert!(gap.1 && gap.2 && gap.3, "{gap:?}");
    insert_batch(&fixture.client, 3, 2).await;
    fixture.wait_for(5).await;
    worker.stop().await.unwrap();
    // The changes made while the slot was lost are not in the trail: the gap says so.
    assert_eq!(stored_batches(&fixture.client).await, vec![1, 3]);
    let status = bemi_worker::status(&fixture.source, &fixture.source, fixture.setup.options())
        .await
        .unwrap();
    assert_eq!(status.last_trail_gap.as_ref().map(|gap| gap.count), Some(1));
    assert!(status.to_string().contains("trail gaps:"), "{status}");
}
