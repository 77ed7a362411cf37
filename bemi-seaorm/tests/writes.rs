//! Every kind of SeaORM write carries the context; reads never do.

use bemi_core::{Context, with_context};
use bemi_seaorm::Connection;
use bemi_testing::{AuditedDatabase, audited_database, stored};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database,
    DbErr, EntityTrait, PaginatorTrait, QueryFilter, Statement, TransactionTrait,
};
use serde_json::json;

use crate::entities::{SCHEMA, todo};

fn ctx(value: serde_json::Value) -> Context {
    Context::try_from(value).unwrap()
}

fn todo_json(id: i64, task: &str, done: bool) -> serde_json::Value {
    json!({"id": id, "task": task, "done": done})
}

async fn connect(audited: &AuditedDatabase, max_connections: u32) -> Connection {
    let mut options = ConnectOptions::new(audited.url());
    options.max_connections(max_connections).sqlx_logging(false);
    Connection::new(Database::connect(options).await.unwrap())
}

fn new_todo(task: &str) -> todo::ActiveModel {
    todo::ActiveModel {
        task: Set(task.to_owned()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_write_carries_the_context() {
    let audited = audited_database!(SCHEMA);
    let db = connect(&audited, 4).await;
    let sleep = with_context(ctx(json!({"op": "insert"})), new_todo("Sleep").insert(&db))
        .await
        .unwrap();
    with_context(ctx(json!({"op": "insert_many"})), async {
        todo::Entity::insert_many([new_todo("Eat"), new_todo("Repeat")])
            .exec(&db)
            .await
    })
    .await
    .unwrap();
    let mut active: todo::ActiveModel = sleep.into();
    active.done = Set(true);
    let sleep = with_context(ctx(json!({"op": "update"})), active.update(&db))
        .await
        .unwrap();
    let mut active: todo::ActiveModel = sleep.into();
    active.task = Set("Sleep well".into());
    with_context(ctx(json!({"op": "save"})), active.save(&db))
        .await
        .unwrap();
    with_context(ctx(json!({"op": "update_many"})), async {
        todo::Entity::update_many()
            .col_expr(todo::Column::Done, Expr::value(true))
            .filter(todo::Column::Task.eq("Eat"))
            .exec(&db)
            .await
    })
    .await
    .unwrap();
    with_context(
        ctx(json!({"op": "delete"})),
        todo::Entity::delete_by_id(3_i64).exec(&db),
    )
    .await
    .unwrap();
    with_context(ctx(json!({"op": "delete_many"})), async {
        todo::Entity::delete_many()
            .filter(todo::Column::Task.eq("Eat"))
            .exec(&db)
            .await
    })
    .await
    .unwrap();
    with_context(ctx(json!({"op": "raw"})), async {
        db.execute_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "INSERT INTO todo (task) VALUES ($1)",
            ["raw".into()],
        ))
        .await?;
        db.execute_unprepared("INSERT INTO todo (task) VALUES ('unprepared')")
            .await
    })
    .await
    .unwrap();

    let changes = audited.wait_for_async(10).await;
    assert_eq!(
        changes,
        [
            stored(
                "todo",
                "CREATE",
                Some("1"),
                json!({}),
                todo_json(1, "Sleep", false),
                json!({"op": "insert"})
            ),
            stored(
                "todo",
                "CREATE",
                Some("2"),
                json!({}),
                todo_json(2, "Eat", false),
                json!({"op": "insert_many"})
            ),
            stored(
                "todo",
                "CREATE",
                Some("3"),
                json!({}),
                todo_json(3, "Repeat", false),
                json!({"op": "insert_many"})
            ),
            stored(
                "todo",
                "UPDATE",
                Some("1"),
                todo_json(1, "Sleep", false),
                todo_json(1, "Sleep", true),
                json!({"op": "update"})
            ),
            stored(
                "todo",
                "UPDATE",
                Some("1"),
                todo_json(1, "Sleep", true),
                todo_json(1, "Sleep well", true),
                json!({"op": "save"})
            ),
            stored(
                "todo",
                "UPDATE",
                Some("2"),
                todo_json(2, "Eat", false),
                todo_json(2, "Eat", true),
                json!({"op": "update_many"})
            ),
            stored(
                "todo",
                "DELETE",
                Some("3"),
                todo_json(3, "Repeat", false),
                json!({}),
                json!({"op": "delete"})
            ),
            stored(
                "todo",
                "DELETE",
                Some("2"),
                todo_json(2, "Eat", true),
                json!({}),
                json!({"op": "delete_many"})
            ),
            stored(
                "todo",
                "CREATE",
                Some("4"),
                json!({}),
                todo_json(4, "raw", false),
                json!({"op": "raw"})
            ),
            stored(
                "todo",
                "CREATE",
                Some("5"),
                json!({}),
                todo_json(5, "unprepared", false),
                json!({"op": "raw"})
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_transactions_are_tagged_and_rolled_back_ones_vanish() {
    let audited = audited_database!(SCHEMA);
    let db = connect(&audited, 2).await;
    with_context(ctx(json!({"request": "r-1"})), async {
        db.transaction::<_, (), DbErr>(|txn| {
            Box::pin(async move {
                new_todo("kept").insert(txn).await?;
                let inner = txn
                    .transaction::<_, (), DbErr>(|nested| {
                        Box::pin(async move {
                            new_todo("rolled back").insert(nested).await?;
                            Err(DbErr::Custom("undo".into()))
                        })
                    })
                    .await;
                assert!(inner.is_err());
                todo::Entity::update_many()
                    .col_expr(todo::Column::Done, Expr::value(true))
                    .exec(txn)
                    .await?;
                Ok(())
            })
        })
        .await
        .unwrap();
        // begin() / commit() as well.
        let txn = db.begin().await.unwrap();
        with_context(
            ctx(json!({"step": "begin"})),
            new_todo("explicit").insert(&txn),
        )
        .await
        .unwrap();
        txn.commit().await.unwrap();
    })
    .await;

    let changes = audited.wait_for_async(3).await;
    assert_eq!(
        changes,
        [
            stored(
                "todo",
                "CREATE",
                Some("1"),
                json!({}),
                todo_json(1, "kept", false),
                json!({"request": "r-1"})
            ),
            stored(
                "todo",
                "UPDATE",
                Some("1"),
                todo_json(1, "kept", false),
                todo_json(1, "kept", true),
                json!({"request": "r-1"})
            ),
            stored(
                "todo",
                "CREATE",
                Some("3"),
                json!({}),
                todo_json(3, "explicit", false),
                json!({"request": "r-1", "step": "begin"})
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_pool_keep_their_contexts() {
    let audited = audited_database!(SCHEMA);
    let db = connect(&audited, 4).await;
    let mut requests = Vec::new();
    for user in 0..20_i64 {
        let db = db.clone();
        requests.push(tokio::spawn(with_context(
            ctx(json!({"user": user})),
            async move {
                for step in 0..3 {
                    todo::ActiveModel {
                        id: Set(user * 100 + step),
                        task: Set("concurrent".into()),
                        ..Default::default()
                    }
                    .insert(&db)
                    .await
                    .unwrap();
                    tokio::task::yield_now().await;
                }
            },
        )));
    }
    for request in requests {
        request.await.unwrap();
    }
    let changes = audited.wait_for_async(60).await;
    assert_eq!(changes.len(), 60);
    for change in changes {
        let id: i64 = change.primary_key.unwrap().parse().unwrap();
        assert_eq!(change.context, json!({"user": id / 100}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_never_tagged() {
    use futures_lite::StreamExt;
    let audited = audited_database!(SCHEMA);
    let db = connect(&audited, 1).await;
    with_context(ctx(json!({"user": "reader"})), async {
        new_todo("x").insert(&db).await.unwrap();
        let _ = todo::Entity::find().all(&db).await.unwrap();
        let _ = todo::Entity::find_by_id(1_i64).one(&db).await.unwrap();
        let _ = todo::Entity::find().count(&db).await.unwrap();
        let mut stream = todo::Entity::find().stream(&db).await.unwrap();
        while let Some(row) = stream.next().await {
            row.unwrap();
        }
        drop(stream);
        db.execute_unprepared("SELECT 1").await.unwrap();
    })
    .await;
    assert_eq!(
        audited.wait_for_async(1).await[0].context,
        json!({"user": "reader"})
    );
    if let Some(logged) = audited.database().logged_statements() {
        let tagged: Vec<&String> = logged
            .iter()
            .filter(|sql| sql.trim_end().ends_with(" Bemi*/"))
            .collect();
        assert_eq!(tagged.len(), 1, "{logged:#?}");
        assert!(tagged[0].contains("INSERT INTO \"todo\""), "{tagged:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrapper_context_merges_over_the_scope() {
    let audited = audited_database!(SCHEMA);
    let db = connect(&audited, 2).await;
    let job = db.with_context(ctx(json!({"job": "import", "attempt": 2})));
    new_todo("a").insert(&job).await.unwrap();
    with_context(
        ctx(json!({"attempt": 1, "request": "r"})),
        new_todo("b").insert(&job),
    )
    .await
    .unwrap();
    new_todo("c").insert(&db).await.unwrap();
    let contexts: Vec<_> = audited
        .wait_for_async(3)
        .await
        .into_iter()
        .map(|change| change.context)
        .collect();
    assert_eq!(
        contexts,
        [
            json!({"job": "import", "attempt": 2}),
            json!({"job": "import", "attempt": 2, "request": "r"}),
            json!({}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_contexts_round_trip() {
    use proptest::strategy::{Strategy, ValueTree};
    let audited = audited_database!(SCHEMA);
    let db = connect(&audited, 2).await;
    let mut contexts: Vec<Context> = [
        json!({"a": "*/ DROP TABLE todo; --"}),
        json!({"b": "/* /* nested */", "c": "it's \"quoted\" \\ back\\slash", "d": "$1 $$ ?"}),
    ]
    .into_iter()
    .map(ctx)
    .collect();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    while contexts.len() < 20 {
        let context = bemi_core::strategies::hostile_context()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        if !context.to_string().contains("\\u0000") {
            contexts.push(context);
        }
    }
    for context in &contexts {
        with_context(context.clone(), new_todo("h").insert(&db))
            .await
            .unwrap();
    }
    let changes = audited.wait_for_async(contexts.len()).await;
    for (change, context) in changes.iter().zip(&contexts) {
        assert_eq!(change.context, context.clone().into_value());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_stay_bounded_by_the_sqlx_cache() {
    let audited = audited_database!(SCHEMA);
    let db = connect(&audited, 1).await;
    for request in 0..1_000 {
        with_context(ctx(json!({"request": request})), new_todo("t").insert(&db))
            .await
            .unwrap();
    }
    let prepared = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*) AS n FROM pg_prepared_statements",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert!(
        prepared <= 101,
        "{prepared} prepared statements after 1,000 distinct contexts"
    );
    let changes = audited.wait_for_async(1_000).await;
    assert_eq!(changes[999].context, json!({"request": 999}));
}
