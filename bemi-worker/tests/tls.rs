//! TLS to PostgreSQL with libpq's `sslmode` semantics, for the replication, catalog and store
//! connections alike.

use bemi_core::setup::SetupOptions;
use bemi_test_harness::{TestCluster, TestDatabase};
use bemi_worker::ConnectionOptions;
use serde_json::json;

use crate::support::{RunningWorker, fixture_with, stored};

/// Connects (source and destination) by reading the status; returns the error text on failure.
async fn probe(url: &str) -> Result<(), String> {
    let options = ConnectionOptions::parse(url).map_err(|error| error.to_string())?;
    bemi_worker::status(&options, &options, &SetupOptions::default())
        .await
        .map(|_| ())
        .map_err(|error| bemi_worker::error_chain(&error))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_checks_certificates_and_host_names_like_libpq() {
    let cluster = TestCluster::dedicated_with_tls();
    let database = TestDatabase::new_in(&cluster, &format!("{}::tls", module_path!()));
    let root = cluster.root_cert().unwrap();
    let other = cluster.other_root_cert().unwrap();
    let url = |host: &str, query: String| {
        format!(
            "postgresql://postgres@{host}:{}/{}?{query}",
            cluster.port(),
            database.name()
        )
    };

    probe(&url("127.0.0.1", "sslmode=disable".into()))
        .await
        .unwrap();
    probe(&url("127.0.0.1", "sslmode=require".into()))
        .await
        .unwrap();
    // The certificate names localhost only: the chain is checked, the name is not...
    probe(&url(
        "127.0.0.1",
        format!("sslmode=verify-ca&sslrootcert={}", root.display()),
    ))
    .await
    .unwrap();
    // ...until verify-full, which accepts localhost and refuses 127.0.0.1.
    probe(&url(
        "localhost",
        format!("sslmode=verify-full&sslrootcert={}", root.display()),
    ))
    .await
    .unwrap();
    let wrong_host = probe(&url(
        "127.0.0.1",
        format!("sslmode=verify-full&sslrootcert={}", root.display()),
    ))
    .await
    .unwrap_err();
    assert!(
        wrong_host.contains(r#"certificate not valid for name "127.0.0.1""#),
        "{wrong_host}"
    );
    let wrong_root = probe(&url(
        "localhost",
        format!("sslmode=verify-full&sslrootcert={}", other.display()),
    ))
    .await
    .unwrap_err();
    assert!(
        wrong_root.contains("invalid peer certificate: UnknownIssuer"),
        "{wrong_root}"
    );
    // require with a root certificate checks the chain, as libpq does.
    let require_checked = probe(&url(
        "127.0.0.1",
        format!("sslmode=require&sslrootcert={}", other.display()),
    ))
    .await
    .unwrap_err();
    assert!(
        require_checked.contains("invalid peer certificate: UnknownIssuer"),
        "{require_checked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_streams_and_stores_over_verified_tls() {
    let cluster = TestCluster::dedicated_with_tls();
    let database = TestDatabase::new_in(&cluster, &format!("{}::worker", module_path!()));
    let url = format!(
        "postgresql://postgres@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
        cluster.port(),
        database.name(),
        cluster.root_cert().unwrap().display()
    );
    let mut fixture = fixture_with(
        database,
        "CREATE TABLE item (id int PRIMARY KEY);",
        SetupOptions::default(),
    )
    .await;
    fixture.source = ConnectionOptions::parse(&url).unwrap();
    let worker = RunningWorker::start(fixture.config());
    fixture
        .tagged("INSERT INTO item VALUES (1)", json!({"over": "tls"}))
        .await;
    let changes = fixture.wait_for(1).await;
    assert_eq!(
        changes,
        [stored(
            "item",
            "CREATE",
            Some("1"),
            json!({}),
            json!({"id": 1}),
            json!({"over": "tls"})
        )]
    );
    let sessions: Vec<(String, bool)> = fixture
        .client
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'bemi-worker' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // The catalog connection, one per writer (two by default), the replication connection.
    let backend = ("client backend".to_owned(), true);
    assert_eq!(
        sessions,
        [
            backend.clone(),
            backend.clone(),
            backend,
            ("walsender".to_owned(), true)
        ]
    );
    worker.stop().await.unwrap();
}
