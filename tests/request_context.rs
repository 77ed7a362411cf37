//! The facade's context scoping, end to end.

use std::time::Duration;

use bemi::setup::{Setup, SetupOptions};
use bemi::{CommentEncoder, Context, current_context, with_context};
use bemi_test_harness::{test_database, wait_until_async};
use bemi_worker::{ConnectionOptions, Worker, WorkerConfig};
use serde_json::{Value, json};

/// Writes through tokio-postgres, tagging with the context active in the calling task, as the
/// ORM wrappers do.
async fn write(client: &tokio_postgres::Client, sql: &str) {
    let tagged = CommentEncoder::default().tag(sql, &current_context());
    client.batch_execute(&tagged).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_keep_their_own_context_in_the_audit_trail() {
    let database = test_database!();
    let client = database.connect().await;
    client
        .batch_execute("CREATE TABLE todo (id int PRIMARY KEY, task text)")
        .await
        .unwrap();
    let source = ConnectionOptions::parse(&database.url()).unwrap();
    let setup = Setup::new(SetupOptions::default().slot(database.slot_name())).unwrap();
    bemi_worker::setup(&source, &source, &setup).await.unwrap();
    let mut config = WorkerConfig::new(source);
    config.slot = database.slot_name().to_owned();
    config.flush_interval = Duration::from_millis(20);
    let worker = Worker::new(config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
    });

    // 20 concurrent "requests", each with its own user, interleaving on the runtime.
    let mut requests = Vec::new();
    for user in 0..20 {
        let client = database.connect().await;
        let request = Context::new()
            .with("user_id", user)
            .with("endpoint", "/todo");
        requests.push(tokio::spawn(with_context(request, async move {
            for step in 0..3 {
                write(
                    &client,
                    &format!(
                        "INSERT INTO todo VALUES ({}, 'step {step}')",
                        user * 10 + step
                    ),
                )
                .await;
                tokio::task::yield_now().await;
            }
        })));
    }
    for request in requests {
        request.await.unwrap();
    }
    // A background job without a request context.
    write(&client, "INSERT INTO todo VALUES (1000, 'job')").await;

    let rows: Vec<(String, Value)> =
        wait_until_async("61 stored changes", Duration::from_secs(60), || async {
            let rows = client
                .query(
                    "SELECT primary_key, context FROM bemi.changes ORDER BY commit_lsn, sequence",
                    &[],
                )
                .await
                .unwrap();
            (rows.len() >= 61).then(|| rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        })
        .await;
    assert_eq!(rows.len(), 61);
    for (key, context) in &rows {
        let id: i64 = key.parse().unwrap();
        if id == 1000 {
            assert_eq!(context, &json!({}));
        } else {
            assert_eq!(
                context,
                &json!({"user_id": id / 10, "endpoint": "/todo"}),
                "row {id}"
            );
        }
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}
