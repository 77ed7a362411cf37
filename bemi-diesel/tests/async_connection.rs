//! The diesel-async wrapper, `bemi_diesel::AsyncPgConnection`, alone and in deadpool and bb8
//! pools.

use bemi_core::{Context, in_current_context, with_context};
use bemi_diesel::AsyncPgConnection;
use bemi_testing::{audited_database, stored};
use diesel::result::Error as DieselError;
use diesel::{ExpressionMethods, QueryDsl, SelectableHelper};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use serde_json::json;

use crate::schema::{NewTodo, SCHEMA, Todo, todo};

fn ctx(value: serde_json::Value) -> Context {
    Context::try_from(value).unwrap()
}

fn todo_json(id: i64, task: &str, done: bool) -> serde_json::Value {
    json!({"id": id, "task": task, "done": done})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_carry_the_task_context_across_awaits() {
    let audited = audited_database!(SCHEMA);
    let mut conn = AsyncPgConnection::establish(&audited.url()).await.unwrap();
    with_context(ctx(json!({"user": "ann", "endpoint": "/todo"})), async {
        diesel::insert_into(todo::table)
            .values(NewTodo { task: "Sleep" })
            .execute(&mut conn)
            .await
            .unwrap();
        // Across an await that may move the task to another thread.
        tokio::task::yield_now().await;
        let eat: Todo = diesel::insert_into(todo::table)
            .values(NewTodo { task: "Eat" })
            .returning(Todo::as_returning())
            .get_result(&mut conn)
            .await
            .unwrap();
        assert_eq!(eat.id, 2);
        diesel::update(todo::table.find(1))
            .set(todo::done.eq(true))
            .execute(&mut conn)
            .await
            .unwrap();
        diesel::sql_query("DELETE FROM todo WHERE id = 2")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.batch_execute("INSERT INTO todo (task) VALUES ('raw')")
            .await
            .unwrap();
        // Reads are untouched (checked below: only the five writes are captured).
        let _: Vec<Todo> = todo::table.load(&mut conn).await.unwrap();
    })
    .await;
    diesel::insert_into(todo::table)
        .values(NewTodo { task: "no context" })
        .execute(&mut conn)
        .await
        .unwrap();

    let user = json!({"user": "ann", "endpoint": "/todo"});
    assert_eq!(
        audited.wait_for_async(6).await,
        [
            stored(
                "todo",
                "CREATE",
                Some("1"),
                json!({}),
                todo_json(1, "Sleep", false),
                user.clone()
            ),
            stored(
                "todo",
                "CREATE",
                Some("2"),
                json!({}),
                todo_json(2, "Eat", false),
                user.clone()
            ),
            stored(
                "todo",
                "UPDATE",
                Some("1"),
                todo_json(1, "Sleep", false),
                todo_json(1, "Sleep", true),
                user.clone()
            ),
            stored(
                "todo",
                "DELETE",
                Some("2"),
                todo_json(2, "Eat", false),
                json!({}),
                user.clone()
            ),
            stored(
                "todo",
                "CREATE",
                Some("3"),
                json!({}),
                todo_json(3, "raw", false),
                user
            ),
            stored(
                "todo",
                "CREATE",
                Some("4"),
                json!({}),
                todo_json(4, "no context", false),
                json!({})
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_transactions_roll_back_their_part_only() {
    let audited = audited_database!(SCHEMA);
    let mut conn = AsyncPgConnection::establish(&audited.url()).await.unwrap();
    with_context(ctx(json!({"request": "r-2"})), async {
        conn.transaction::<_, DieselError, _>(async |conn| {
            diesel::insert_into(todo::table)
                .values(NewTodo { task: "kept" })
                .execute(conn)
                .await?;
            let inner = conn
                .transaction::<(), DieselError, _>(async |conn| {
                    diesel::insert_into(todo::table)
                        .values(NewTodo { task: "gone" })
                        .execute(conn)
                        .await?;
                    Err(DieselError::RollbackTransaction)
                })
                .await;
            assert!(inner.is_err());
            diesel::update(todo::table)
                .set(todo::done.eq(true))
                .execute(conn)
                .await?;
            Ok(())
        })
        .await
        .unwrap();
    })
    .await;
    let context = json!({"request": "r-2"});
    assert_eq!(
        audited.wait_for_async(2).await,
        [
            stored(
                "todo",
                "CREATE",
                Some("1"),
                json!({}),
                todo_json(1, "kept", false),
                context.clone()
            ),
            stored(
                "todo",
                "UPDATE",
                Some("1"),
                todo_json(1, "kept", false),
                todo_json(1, "kept", true),
                context
            ),
        ]
    );
}

/// 20 concurrent requests, each writing through a pooled connection with its own context.
async fn concurrent_requests<F, Fut>(audited: &bemi_testing::AuditedDatabase, write: F)
where
    F: Fn(i64, i64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let mut requests = Vec::new();
    for user in 0..20_i64 {
        let write = write.clone();
        requests.push(tokio::spawn(with_context(
            ctx(json!({"user": user})),
            async move {
                for step in 0..3 {
                    write(user * 100 + step, user).await;
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
        assert_eq!(change.context, json!({"user": id / 100}), "row {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadpool_pool_keeps_each_request_context() {
    use diesel_async::pooled_connection::deadpool::Pool;
    let audited = audited_database!(SCHEMA);
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(audited.url());
    let pool = Pool::builder(manager).max_size(4).build().unwrap();
    concurrent_requests(&audited, move |id, _| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            diesel::insert_into(todo::table)
                .values((todo::id.eq(id), todo::task.eq("deadpool")))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bb8_pool_keeps_each_request_context() {
    use diesel_async::pooled_connection::bb8::Pool;
    let audited = audited_database!(SCHEMA);
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(audited.url());
    let pool = Pool::builder().max_size(4).build(manager).await.unwrap();
    concurrent_requests(&audited, move |id, _| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            diesel::insert_into(todo::table)
                .values((todo::id.eq(id), todo::task.eq("bb8")))
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_work_carries_the_context_only_when_asked() {
    let audited = audited_database!(SCHEMA);
    let url = audited.url();
    with_context(ctx(json!({"request": "parent"})), async {
        let url_a = url.clone();
        let carried = tokio::spawn(in_current_context(async move {
            let mut conn = AsyncPgConnection::establish(&url_a).await.unwrap();
            diesel::insert_into(todo::table)
                .values(NewTodo { task: "carried" })
                .execute(&mut conn)
                .await
                .unwrap();
        }));
        carried.await.unwrap();
        let detached = tokio::spawn(async move {
            let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
            diesel::insert_into(todo::table)
                .values(NewTodo { task: "detached" })
                .execute(&mut conn)
                .await
                .unwrap();
        });
        detached.await.unwrap();
    })
    .await;
    let contexts: Vec<_> = audited
        .wait_for_async(2)
        .await
        .into_iter()
        .map(|change| change.context)
        .collect();
    assert_eq!(contexts, [json!({"request": "parent"}), json!({})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_writes_leave_no_prepared_statements_behind() {
    use diesel::QueryableByName;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let audited = audited_database!(SCHEMA);
    let mut conn = AsyncPgConnection::establish(&audited.url()).await.unwrap();
    for request in 0..1_000 {
        with_context(ctx(json!({"request": request})), async {
            diesel::insert_into(todo::table)
                .values(NewTodo { task: "t" })
                .execute(&mut conn)
                .await
                .unwrap();
        })
        .await;
    }
    let prepared = diesel::sql_query("SELECT count(*) AS n FROM pg_prepared_statements")
        .get_result::<Count>(&mut conn)
        .await
        .unwrap()
        .n;
    assert!(
        prepared <= 2,
        "{prepared} prepared statements after 1,000 distinct contexts"
    );
    let changes = audited.wait_for_async(1_000).await;
    assert_eq!(changes[999].context, json!({"request": 999}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_context_never_reaches_the_next_user_of_deadpool_or_bb8() {
    let audited = audited_database!(SCHEMA);
    let insert = |task: &'static str| diesel::insert_into(todo::table).values(todo::task.eq(task));
    {
        use diesel_async::pooled_connection::deadpool::Pool;
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(audited.url());
        let pool = Pool::builder(manager).max_size(1).build().unwrap();
        {
            let mut first = pool.get().await.unwrap();
            first.set_context(ctx(json!({"job": "deadpool-first"})));
            insert("first").execute(&mut first).await.unwrap();
        }
        let mut next = pool.get().await.unwrap();
        insert("next").execute(&mut next).await.unwrap();
    }
    {
        use diesel_async::pooled_connection::bb8::Pool;
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(audited.url());
        let pool = Pool::builder().max_size(1).build(manager).await.unwrap();
        {
            let mut first = pool.get().await.unwrap();
            first.set_context(ctx(json!({"job": "bb8-first"})));
            insert("first").execute(&mut *first).await.unwrap();
        }
        let mut next = pool.get().await.unwrap();
        insert("next").execute(&mut *next).await.unwrap();
    }
    let changes = audited.wait_for_async(4).await;
    let contexts: Vec<_> = changes
        .iter()
        .map(|change| change.context.clone())
        .collect();
    assert_eq!(
        contexts,
        [
            json!({"job": "deadpool-first"}),
            json!({}),
            json!({"job": "bb8-first"}),
            json!({}),
        ]
    );
}
