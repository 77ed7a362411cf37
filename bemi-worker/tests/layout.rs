//! The compact layout of stored changes: an UPDATE keeps only the columns it changed, a change
//! keeps its context only when the change before it in its transaction has another one, and the
//! `changes` view shows every change whole (Bemi's columns, full images, every context).

use bemi_test_harness::test_database;
use serde_json::{Value, json};

use crate::support::{RunningWorker, fixture, stored};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL, \
                     note text, doc jsonb);";

/// Per stored change, in order: whether `after` is stored whole, `after_changed`, and the
/// stored context (NULL when the change before it holds it).
async fn stored_forms(
    client: &tokio_postgres::Client,
) -> Vec<(bool, Option<Value>, Option<Value>)> {
    client
        .query(
            "SELECT \"after\" IS NOT NULL, after_changed, context FROM bemi.changes_stored \
             WHERE \"table\" = 'items' ORDER BY commit_lsn, sequence",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_keep_what_changed_and_statements_keep_one_context() {
    updates_keep_what_changed(fixture(test_database!(), ITEMS).await, 1).await;
}

/// With parallel writers a batch cannot rely on the one before it (not committed when it is
/// written): the first change of each batch holds its context again, and the view is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_writers_store_a_context_per_batch_and_the_view_is_the_same() {
    updates_keep_what_changed(fixture(test_database!(), ITEMS).await, 2).await;
}

/// Changes of the same statements stored by `writers` writers, in batches of two; with one
/// writer, a run of equal contexts is stored once whatever the batches.
async fn updates_keep_what_changed(fixture: crate::support::Fixture, writers: usize) {
    let mut config = fixture.config();
    // Small batches: one transaction's changes span several writes.
    config.batch_size = 2;
    config.writers = writers;
    let worker = RunningWorker::start(config);
    fixture
        .tagged(
            "INSERT INTO items SELECT i, 'item ' || i, i, NULL, '{\"tags\":[\"a\"]}' \
             FROM generate_series(1, 5) i",
            json!({"request": "create"}),
        )
        .await;
    // One transaction: a statement of five rows, another context, then the first again.
    let request = json!({"request": "r1", "user": 7});
    let other = json!({"request": "r2"});
    let encoder = bemi_core::CommentEncoder::default();
    let tag = |sql: &str, context: &Value| {
        encoder
            .tag(sql, &bemi_core::Context::try_from(context.clone()).unwrap())
            .into_owned()
    };
    // Each statement its own query: a query string of several tagged statements is
    // ambiguous, and gets no context.
    fixture.sql("BEGIN").await;
    fixture
        .sql(&tag("UPDATE items SET qty = qty + 10", &request))
        .await;
    fixture
        .sql(&tag(
            "UPDATE items SET note = 'checked', doc = NULL WHERE id = 2",
            &other,
        ))
        .await;
    fixture
        .sql(&tag("DELETE FROM items WHERE id = 5", &request))
        .await;
    fixture.sql("COMMIT").await;
    // Raw SQL: no context at all, and an UPDATE that changes nothing.
    fixture
        .sql("UPDATE items SET name = name WHERE id = 1")
        .await;
    let all = fixture.wait_for(13).await;
    worker.stop().await.unwrap();

    // The view shows every change whole.
    let item = |id: i64, qty: i64, note: Value, doc: Value| json!({"id": id, "name": format!("item {id}"), "qty": qty, "note": note, "doc": doc});
    let tags = json!({"tags": ["a"]});
    let mut expected = Vec::new();
    for id in 1..=5 {
        expected.push(stored(
            "items",
            "CREATE",
            Some(&id.to_string()),
            json!({}),
            item(id, id, Value::Null, tags.clone()),
            json!({"request": "create"}),
        ));
    }
    for id in 1..=5 {
        expected.push(stored(
            "items",
            "UPDATE",
            Some(&id.to_string()),
            item(id, id, Value::Null, tags.clone()),
            item(id, id + 10, Value::Null, tags.clone()),
            request.clone(),
        ));
    }
    expected.push(stored(
        "items",
        "UPDATE",
        Some("2"),
        item(2, 12, Value::Null, tags.clone()),
        item(2, 12, json!("checked"), Value::Null),
        other.clone(),
    ));
    expected.push(stored(
        "items",
        "DELETE",
        Some("5"),
        item(5, 15, Value::Null, tags.clone()),
        json!({}),
        request.clone(),
    ));
    expected.push(stored(
        "items",
        "UPDATE",
        Some("1"),
        item(1, 11, Value::Null, tags.clone()),
        item(1, 11, Value::Null, tags.clone()),
        json!({}),
    ));
    assert_eq!(all, expected);

    // What is stored: the changed columns only, one context per run of equal contexts.
    let forms = stored_forms(&fixture.client).await;
    let creates = &forms[..5];
    assert!(
        creates
            .iter()
            .all(|(whole, changed, _)| *whole && changed.is_none())
    );
    assert_eq!(creates[0].2, Some(json!({"request": "create"})));
    // A context stored again is the same one.
    let held = |forms: &[(bool, Option<Value>, Option<Value>)], context: &Value| {
        forms
            .iter()
            .filter(|(_, _, held)| {
                held.as_ref().inspect(|held| assert_eq!(*held, context));
                held.is_some()
            })
            .count()
    };
    let held_by_creates = held(&creates[1..], &json!({"request": "create"}));
    let held_by_updates = held(&forms[6..10], &request);
    if writers == 1 {
        assert_eq!(
            held_by_creates + held_by_updates,
            0,
            "only a statement's first change"
        );
    } else {
        // At most the first change of each batch of two (which writer takes a batch depends
        // on timing: a batch may follow its predecessor on the same writer).
        assert!(
            held_by_creates + held_by_updates <= 4,
            "{held_by_creates} + {held_by_updates}"
        );
    }
    assert_eq!(forms[5].2, Some(request.clone()));
    for (id, (whole, changed, _)) in (1..).zip(&forms[5..10]) {
        assert!(!whole);
        assert_eq!(changed, &Some(json!({"qty": id + 10})));
    }
    assert_eq!(
        forms[10],
        (
            false,
            Some(json!({"note": "checked", "doc": null})),
            Some(other.clone())
        )
    );
    // The DELETE's context differs from the change before it: stored again.
    assert_eq!(forms[11], (true, None, Some(request.clone())));
    // Nothing changed: an empty change, the raw transaction's empty context stored.
    assert_eq!(forms[12], (false, Some(json!({})), Some(json!({}))));

    // Context searches find every change of the request, not only the one that stores it.
    let found = bemi_core::ChangeQuery::new()
        .context_contains(bemi_core::Context::new().with("request", "r1"))
        .fetch(&mut bemi_core::TokioPostgresRunner(&fixture.client))
        .await
        .unwrap();
    let keys: Vec<(String, Option<String>)> = found
        .iter()
        .map(|change| {
            (
                change.operation.as_str().to_owned(),
                change.primary_key.clone(),
            )
        })
        .collect();
    let mut wanted: Vec<(String, Option<String>)> = (1..=5)
        .map(|id| ("UPDATE".to_owned(), Some(id.to_string())))
        .collect();
    wanted.push(("DELETE".to_owned(), Some("5".to_owned())));
    assert_eq!(keys, wanted);
}

/// Every read of the trail (a query, a record's history, a row and a table as of an instant)
/// goes through `bemi.read_trail`, which plans it with JIT off whatever the session says, and
/// leaves the session's setting as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_the_trail_run_without_jit() {
    let fixture = fixture(test_database!(), ITEMS).await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .sql("INSERT INTO items VALUES (1, 'one', 1, NULL, NULL), (2, 'two', 2, NULL, NULL)")
        .await;
    fixture.sql("UPDATE items SET qty = 5 WHERE id = 1").await;
    fixture.wait_for(3).await;
    worker.stop().await.unwrap();

    let client = &fixture.client;
    // JIT for every plan, as a session could ask; calls of PL functions counted.
    client
        .batch_execute(
            "BEGIN; SET LOCAL jit = on; SET LOCAL jit_above_cost = 0; \
             SET LOCAL track_functions = 'pl'",
        )
        .await
        .unwrap();
    let log = bemi_core::AuditLog::default();
    let items = bemi_core::QualifiedName::new("public", "items").unwrap();
    let mut runner = bemi_core::TokioPostgresRunner(client);
    let all = bemi_core::ChangeQuery::new()
        .fetch(&mut runner)
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let history = bemi_core::time_travel::history(&mut runner, &log, &items, "1")
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    let now = chrono::Utc::now();
    let row = bemi_core::time_travel::row_as_of(&mut runner, &log, &items, "1", now)
        .await
        .unwrap();
    assert_eq!(
        row.unwrap().get("qty").map(|qty| qty.as_str().to_owned()),
        Some("5".to_owned())
    );
    let table = bemi_core::time_travel::table_as_of(&mut runner, &log, &items, now)
        .await
        .unwrap();
    assert_eq!(table.len(), 2);
    let calls: i64 = client
        .query_one(
            "SELECT calls FROM pg_stat_xact_user_functions \
             WHERE schemaname = 'bemi' AND funcname = 'read_trail'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(calls, 4, "one call per read");
    // Inside, JIT is off; the session's setting is untouched after the call.
    let inside: String = client
        .query_one(
            "SELECT r FROM bemi.read_trail('SELECT pg_catalog.current_setting(''jit'')', '[]') r",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(inside, "off");
    let after: String = client
        .query_one("SELECT pg_catalog.current_setting('jit')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(after, "on");
    // The function only reads.
    let write = client
        .query(
            "SELECT r FROM bemi.read_trail('INSERT INTO public.items VALUES (3, ''x'', 3, NULL, NULL) \
             RETURNING name', '[]') r",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        write.code(),
        Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED),
        "{write}"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
}
