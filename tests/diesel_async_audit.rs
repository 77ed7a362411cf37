//! Typed history and revert of Diesel models on diesel-async, against the real worker.

use bemi::diesel::AsyncPgConnection;
use bemi::diesel::{AuditedQueries, apply_revert, plan_revert};
use bemi::revert::{Revert, StepOutcome};
use bemi::{Context, Operation, with_context};
use bemi_testing::audited_database;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

mod schema {
    diesel::table! {
        order_lines (order_id, line) {
            order_id -> Int8,
            line -> Int4,
            product -> Text,
            quantity -> Int4,
        }
    }
}

use schema::order_lines;

#[derive(Queryable, Selectable, Debug, PartialEq, Clone, bemi::Audited)]
#[diesel(table_name = order_lines, primary_key(order_id, line))]
struct OrderLine {
    order_id: i64,
    line: i32,
    product: String,
    quantity: i32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys_history_and_transaction_revert() {
    let db = audited_database!(
        "CREATE TABLE order_lines (order_id bigint, line int, product text NOT NULL, \
         quantity int NOT NULL, PRIMARY KEY (order_id, line));"
    );
    let mut conn = AsyncPgConnection::establish(&db.url()).await.unwrap();
    with_context(Context::new().with("job", "import"), async {
        diesel::insert_into(order_lines::table)
            .values((
                order_lines::order_id.eq(1_i64),
                order_lines::line.eq(1),
                order_lines::product.eq("tea"),
                order_lines::quantity.eq(2),
            ))
            .execute(&mut conn)
            .await
            .unwrap();
    })
    .await;
    with_context(Context::new().with("job", "fix"), async {
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            diesel::update(order_lines::table.find((1_i64, 1)))
                .set(order_lines::quantity.eq(3))
                .execute(conn)
                .await?;
            diesel::insert_into(order_lines::table)
                .values((
                    order_lines::order_id.eq(1_i64),
                    order_lines::line.eq(2),
                    order_lines::product.eq("milk"),
                    order_lines::quantity.eq(1),
                ))
                .execute(conn)
                .await?;
            Ok(())
        })
        .await
        .unwrap();
    })
    .await;
    db.wait_for_async(3).await;

    let history = OrderLine::history(&mut conn, (1_i64, 1)).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(
        history[1].change.primary_key.as_deref(),
        Some(r#"["1","1"]"#)
    );
    assert_eq!(history[1].after.as_ref().unwrap().quantity, 3);
    assert_eq!(history[1].change.context.get("job").unwrap(), "fix");
    let fixes = OrderLine::changes(
        &mut conn,
        bemi::ChangeQuery::new().context_contains(Context::new().with("job", "fix")),
    )
    .await
    .unwrap();
    assert_eq!(fixes.len(), 2);
    let first = history[0].change.committed_at;
    assert_eq!(
        OrderLine::as_of(&mut conn, (1_i64, 1), first)
            .await
            .unwrap()
            .unwrap()
            .quantity,
        2
    );
    assert_eq!(
        OrderLine::all_as_of(&mut conn, first).await.unwrap().len(),
        1
    );

    // Undo the whole "fix" transaction.
    let revert = Revert::transaction(history[1].change.transaction_id);
    let plan = plan_revert(&mut conn, &revert).await.unwrap();
    assert!(plan.is_clean(), "{plan}");
    assert_eq!(
        plan.steps()
            .iter()
            .map(|step| step.change.operation)
            .collect::<Vec<_>>(),
        [Operation::Create, Operation::Update]
    );
    let applied = apply_revert(&mut conn, &revert).await.unwrap();
    assert!(
        applied
            .steps()
            .iter()
            .all(|step| step.outcome == StepOutcome::Clean)
    );
    let lines: Vec<(i64, i32, i32)> = order_lines::table
        .select((
            order_lines::order_id,
            order_lines::line,
            order_lines::quantity,
        ))
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(lines, [(1, 1, 2)]);
    let all = db.wait_for_async(5).await;
    assert_eq!(
        all[3].context["revert"]["of"]["transaction_id"],
        history[1].change.transaction_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_api_takes_connections_as_deadpool_and_bb8_hand_them_out() {
    use diesel_async::pooled_connection::AsyncDieselConnectionManager;
    let db = audited_database!(
        "CREATE TABLE order_lines (order_id bigint, line int, product text NOT NULL, \
         quantity int NOT NULL, PRIMARY KEY (order_id, line));"
    );
    let deadpool =
        diesel_async::pooled_connection::deadpool::Pool::builder(AsyncDieselConnectionManager::<
            AsyncPgConnection,
        >::new(db.url()))
        .max_size(1)
        .build()
        .unwrap();
    let mut conn = deadpool.get().await.unwrap();
    with_context(Context::new().with("request_id", "pooled"), async {
        diesel::insert_into(order_lines::table)
            .values((
                order_lines::order_id.eq(7_i64),
                order_lines::line.eq(1),
                order_lines::product.eq("tea"),
                order_lines::quantity.eq(1),
            ))
            .execute(&mut conn)
            .await
            .unwrap();
    })
    .await;
    db.wait_for_async(1).await;
    let history = OrderLine::history(&mut conn, (7, 1)).await.unwrap();
    assert_eq!(history.len(), 1);
    let revert = Revert::context(Context::new().with("request_id", "pooled"));
    assert!(plan_revert(&mut conn, &revert).await.unwrap().is_clean());

    let bb8 = diesel_async::pooled_connection::bb8::Pool::builder()
        .max_size(1)
        .build(AsyncDieselConnectionManager::<AsyncPgConnection>::new(
            db.url(),
        ))
        .await
        .unwrap();
    let mut conn = bb8.get().await.unwrap();
    let history = OrderLine::history(&mut conn, (7, 1)).await.unwrap();
    assert_eq!(history[0].change.operation, Operation::Create);
    assert!(plan_revert(&mut conn, &revert).await.unwrap().is_clean());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_import_serves_sync_and_async_connections() {
    // Both connections in one module, one trait in scope: no ambiguity.
    let db = audited_database!(
        "CREATE TABLE order_lines (order_id bigint, line int, product text NOT NULL, \
         quantity int NOT NULL, PRIMARY KEY (order_id, line));"
    );
    let mut async_conn = AsyncPgConnection::establish(&db.url()).await.unwrap();
    diesel::insert_into(order_lines::table)
        .values((
            order_lines::order_id.eq(3_i64),
            order_lines::line.eq(1),
            order_lines::product.eq("tea"),
            order_lines::quantity.eq(1),
        ))
        .execute(&mut async_conn)
        .await
        .unwrap();
    db.wait_for_async(1).await;
    let from_async = OrderLine::history(&mut async_conn, (3, 1)).await.unwrap();
    let url = db.url();
    let from_sync = tokio::task::spawn_blocking(move || {
        use diesel::Connection;
        let mut sync_conn = bemi::diesel::PgConnection::establish(&url).unwrap();
        let history = OrderLine::history(&mut sync_conn, (3, 1)).unwrap();
        let plan = plan_revert(
            &mut sync_conn,
            &Revert::transaction(history[0].change.transaction_id),
        )
        .unwrap();
        (history, plan)
    })
    .await
    .unwrap();
    assert_eq!(from_sync.0, from_async);
    assert!(from_sync.1.is_clean());
}
