//! Context attribution end to end: statements through PostgreSQL, the WAL and the worker into
//! whole `changes` rows.

use bemi_core::strategies::hostile_context;
use bemi_core::{CommentEncoder, Context};
use bemi_test_harness::test_database;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Value, json};

use crate::support::{RunningWorker, fixture, stored};

const TODO: &str = "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false);
    CREATE TABLE tag (id int PRIMARY KEY, todo_id bigint REFERENCES todo (id) ON DELETE CASCADE, label text);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_gets_the_context_of_its_own_statement() {
    let fixture = fixture(test_database!(), TODO).await;
    let worker = RunningWorker::start(fixture.config());

    fixture.sql("BEGIN").await;
    fixture
        .tagged(
            "INSERT INTO todo (task) VALUES ('Sleep'), ('Eat')",
            json!({"user_id": 187234, "endpoint": "/todo"}),
        )
        .await;
    fixture
        .sql("INSERT INTO todo (task) VALUES ('untagged')")
        .await;
    fixture
        .tagged(
            "INSERT INTO tag VALUES (1, 1, 'home')",
            json!({"user_id": 5, "endpoint": "/tag"}),
        )
        .await;
    fixture.sql("SAVEPOINT s").await;
    fixture
        .tagged("UPDATE todo SET done = true", json!({"rolled": "back"}))
        .await;
    fixture.sql("ROLLBACK TO SAVEPOINT s").await;
    fixture
        .sql("UPDATE todo SET done = true WHERE id = 2")
        .await;
    fixture
        .tagged(
            "DELETE FROM todo WHERE id = 1",
            json!({"endpoint": "/todo/delete"}),
        )
        .await;
    fixture.sql("COMMIT").await;

    let changes = fixture.wait_for(7).await;
    let todo = |id: i64, task: &str, done: bool| json!({"id": id, "task": task, "done": done});
    let user = json!({"user_id": 187234, "endpoint": "/todo"});
    assert_eq!(
        changes,
        [
            stored(
                "todo",
                "CREATE",
                Some("1"),
                json!({}),
                todo(1, "Sleep", false),
                user.clone()
            ),
            stored(
                "todo",
                "CREATE",
                Some("2"),
                json!({}),
                todo(2, "Eat", false),
                user
            ),
            stored(
                "todo",
                "CREATE",
                Some("3"),
                json!({}),
                todo(3, "untagged", false),
                json!({})
            ),
            stored(
                "tag",
                "CREATE",
                Some("1"),
                json!({}),
                json!({"id": 1, "todo_id": 1, "label": "home"}),
                json!({"user_id": 5, "endpoint": "/tag"})
            ),
            stored(
                "todo",
                "UPDATE",
                Some("2"),
                todo(2, "Eat", false),
                todo(2, "Eat", true),
                json!({})
            ),
            stored(
                "todo",
                "DELETE",
                Some("1"),
                todo(1, "Sleep", false),
                json!({}),
                json!({"endpoint": "/todo/delete"})
            ),
            // The FK cascade carries the statement's context.
            stored(
                "tag",
                "DELETE",
                Some("1"),
                json!({"id": 1, "todo_id": 1, "label": "home"}),
                json!({}),
                json!({"endpoint": "/todo/delete"})
            ),
        ]
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_statement_gives_every_row_its_context() {
    let fixture = fixture(test_database!(), TODO).await;
    fixture
        .sql("INSERT INTO todo (task) SELECT 'task ' || i FROM generate_series(1, 2000) AS i")
        .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .tagged(
            "UPDATE todo SET done = true",
            json!({"job": "complete-all"}),
        )
        .await;
    let changes = fixture.wait_for(4000).await;
    assert_eq!(changes.len(), 4000);
    let (inserts, updates) = changes.split_at(2000);
    assert!(
        inserts
            .iter()
            .all(|change| change.operation == "CREATE" && change.context == json!({}))
    );
    assert!(updates.iter().all(|change| change.operation == "UPDATE"
        && change.context == json!({"job": "complete-all"})
        && change.after["done"] == json!(true)));
    worker.stop().await.unwrap();
}

/// What the worker stores for a context: NUL characters, which jsonb cannot hold, become
/// U+FFFD and are noted.
fn as_stored(context: &Context) -> Value {
    fn replace(value: &Value) -> (Value, bool) {
        match value {
            Value::String(text) => (
                Value::String(text.replace('\0', "\u{fffd}")),
                text.contains('\0'),
            ),
            Value::Array(items) => {
                let mut any = false;
                let items = items
                    .iter()
                    .map(|item| {
                        let (item, replaced) = replace(item);
                        any |= replaced;
                        item
                    })
                    .collect();
                (Value::Array(items), any)
            }
            Value::Object(map) => {
                let mut any = false;
                let map = map
                    .iter()
                    .map(|(key, item)| {
                        let (item, replaced) = replace(item);
                        any |= replaced || key.contains('\0');
                        (key.replace('\0', "\u{fffd}"), item)
                    })
                    .collect();
                (Value::Object(map), any)
            }
            other => (other.clone(), false),
        }
    }
    let (mut value, replaced) = replace(&context.clone().into_value());
    if replaced {
        value["_bemi"] = json!({"replaced_nul": ["context"]});
    }
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_contexts_round_trip_into_the_changes_table() {
    let fixture = fixture(test_database!(), TODO).await;
    let worker = RunningWorker::start(fixture.config());
    let mut contexts: Vec<Context> = [
        json!({"a": "*/ DROP TABLE todo; --"}),
        json!({"a": "/* nested /* comment */"}),
        json!({"quote": "it's \"quoted\"", "backslash": "C:\\path\\", "slash": "\\/*"}),
        json!({"nul": "before\u{0}after", "key\u{0}": 1}),
        json!({"unicode": "Zoë 😀 日本", "newline": "a\nb\r\tc", "dollar": "$1 $$ $tag$"}),
        json!({"fake": " Bemi*/ /*Bemi {\"x\":1} Bemi*/"}),
    ]
    .into_iter()
    .map(|value| Context::try_from(value).unwrap())
    .collect();
    let mut runner = TestRunner::deterministic();
    for _ in 0..24 {
        contexts.push(hostile_context().new_tree(&mut runner).unwrap().current());
    }
    for (id, context) in contexts.iter().enumerate() {
        let sql =
            CommentEncoder::default().tag("INSERT INTO todo (id, task) VALUES ($1, $2)", context);
        fixture
            .client
            .execute(sql.as_ref(), &[&i64::try_from(id + 1).unwrap(), &"hostile"])
            .await
            .unwrap();
    }
    let changes = fixture.wait_for(contexts.len()).await;
    for (change, context) in changes.iter().zip(&contexts) {
        assert_eq!(change.context, as_stored(context), "for {context:?}");
        assert_eq!(change.after["task"], json!("hostile"));
    }
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_context_never_loses_the_change() {
    let fixture = fixture(test_database!(), TODO).await;
    let worker = RunningWorker::start(fixture.config());
    // Written by hand, not by the encoder.
    fixture
        .sql("INSERT INTO todo (task) VALUES ('not json') /*Bemi {oops Bemi*/")
        .await;
    fixture
        .sql("INSERT INTO todo (task) VALUES ('array') /*Bemi [1,2] Bemi*/")
        .await;
    fixture
        .sql("BEGIN; SET LOCAL bemi.context = 'plain words'; INSERT INTO todo (task) VALUES ('setting'); COMMIT;")
        .await;
    fixture
        .sql(r#"INSERT INTO todo (task) VALUES ('nul') /*Bemi {"a":"\u0000"} Bemi*/"#)
        .await;
    let changes = fixture.wait_for(4).await;
    let contexts: Vec<&Value> = changes.iter().map(|change| &change.context).collect();
    assert_eq!(
        contexts[0],
        &json!({"_bemi": {"invalid_context": "not JSON: key must be a string at line 1 column 2", "raw": "{oops"}})
    );
    assert_eq!(
        contexts[1],
        &json!({"_bemi": {"invalid_context": "not a JSON object", "raw": "[1,2]"}})
    );
    assert_eq!(
        contexts[2],
        &json!({"_bemi": {"invalid_context": "not JSON: expected value at line 1 column 1", "raw": "plain words"}})
    );
    assert_eq!(
        contexts[3],
        &json!({"a": "\u{fffd}", "_bemi": {"replaced_nul": ["context"]}})
    );
    let tasks: Vec<&Value> = changes.iter().map(|change| &change.after["task"]).collect();
    assert_eq!(
        tasks,
        [
            &json!("not json"),
            &json!("array"),
            &json!("setting"),
            &json!("nul")
        ]
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_contexts_are_stored_as_a_marker() {
    let fixture = fixture(test_database!(), TODO).await;
    let mut config = fixture.config();
    config.max_context_bytes = 1_000;
    let worker = RunningWorker::start(config);
    fixture
        .tagged(
            "INSERT INTO todo (task) VALUES ('big')",
            json!({"blob": "x".repeat(2_000)}),
        )
        .await;
    let changes = fixture.wait_for(1).await;
    assert_eq!(
        changes[0].context,
        json!({"_bemi": {"dropped": "context_too_large", "bytes": 2_011}})
    );
    worker.stop().await.unwrap();
}
