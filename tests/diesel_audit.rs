//! Typed history, time travel and revert of Diesel models (sync), against the real worker.

use bemi::diesel::{AuditedQueries, PgConnection, apply_revert, plan_revert};
use bemi::revert::{Conflict, Revert, RevertAction, StepOutcome};
use bemi::{Context, Error, FieldChange, Operation, enter_context};
use bemi_testing::audited_database;
use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use serde_json::json;

mod schema {
    diesel::table! {
        projects (id) {
            id -> Int4,
            name -> Text,
            secret -> Nullable<Text>,
        }
    }

    diesel::table! {
        tasks (id) {
            id -> Int4,
            project_id -> Int4,
            title -> Text,
            done -> Bool,
            updated_at -> Timestamptz,
        }
    }
}

use schema::{projects, tasks};

const SCHEMA: &str = "
    CREATE TABLE projects (id int PRIMARY KEY, name text NOT NULL, secret text);
    CREATE TABLE tasks (
        id int PRIMARY KEY,
        project_id int NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
        title text NOT NULL,
        done boolean NOT NULL DEFAULT false,
        updated_at timestamptz NOT NULL DEFAULT now()
    );";

#[derive(Queryable, Selectable, Debug, PartialEq, Clone, bemi::Audited)]
#[diesel(table_name = projects)]
struct Project {
    id: i32,
    name: String,
    #[bemi(redact)]
    secret: Option<String>,
}

#[derive(Queryable, Selectable, Debug, PartialEq, Clone, bemi::Audited)]
#[diesel(table_name = tasks)]
struct Task {
    id: i32,
    project_id: i32,
    #[diesel(column_name = title)]
    name: String,
    done: bool,
    #[bemi(ignore)]
    updated_at: DateTime<Utc>,
}

fn task(id: i32, project_id: i32, name: &str, done: bool) -> Task {
    Task {
        id,
        project_id,
        name: name.to_owned(),
        done,
        updated_at: DateTime::default(),
    }
}

fn request(id: &str) -> bemi::ContextGuard {
    enter_context(Context::new().with("request_id", id).with("user_id", 7))
}

fn just_before(at: DateTime<Utc>) -> DateTime<Utc> {
    at - Duration::microseconds(1)
}

fn current_tasks(conn: &mut PgConnection) -> Vec<(i32, String, bool)> {
    tasks::table
        .select((tasks::id, tasks::title, tasks::done))
        .order(tasks::id)
        .load(conn)
        .unwrap()
}

#[test]
fn derived_models_describe_their_tables() {
    use bemi::Audited;
    assert_eq!(Task::TABLE, "tasks");
    assert_eq!(Task::SCHEMA, "public");
    assert_eq!(Task::PRIMARY_KEY, ["id"]);
    assert_eq!(Task::IGNORED, ["updated_at"]);
    assert_eq!(Project::REDACTED, ["secret"]);
    assert_eq!(task(3, 1, "x", false).key(), 3);
}

#[test]
fn typed_history_and_time_travel() {
    let db = audited_database!(SCHEMA);
    let mut conn = PgConnection::establish(&db.url()).unwrap();
    {
        let _request = request("r1");
        diesel::insert_into(projects::table)
            .values((
                projects::id.eq(1),
                projects::name.eq("Home"),
                projects::secret.eq("s3cret"),
            ))
            .execute(&mut conn)
            .unwrap();
        for (id, title) in [(1, "Sleep"), (2, "Eat")] {
            diesel::insert_into(tasks::table)
                .values((
                    tasks::id.eq(id),
                    tasks::project_id.eq(1),
                    tasks::title.eq(title),
                ))
                .execute(&mut conn)
                .unwrap();
        }
    }
    {
        let _request = request("r2");
        diesel::update(tasks::table.find(1))
            .set((tasks::done.eq(true), tasks::updated_at.eq(diesel::dsl::now)))
            .execute(&mut conn)
            .unwrap();
    }
    {
        let _request = request("r3");
        diesel::delete(tasks::table.find(2))
            .execute(&mut conn)
            .unwrap();
    }
    db.wait_for(5);

    let history = Task::history(&mut conn, 1).unwrap();
    assert_eq!(
        history
            .iter()
            .map(|change| change.change.operation)
            .collect::<Vec<_>>(),
        [Operation::Create, Operation::Update]
    );
    assert_eq!(history[0].before, None);
    assert_eq!(history[0].after, Some(task(1, 1, "Sleep", false)));
    assert_eq!(history[1].before, Some(task(1, 1, "Sleep", false)));
    assert_eq!(history[1].after, Some(task(1, 1, "Sleep", true)));
    // `updated_at` changed too, but it is ignored by the model.
    assert_eq!(
        history[1].diff(),
        [FieldChange {
            column: "done".into(),
            before: Some(json!(false).into()),
            after: Some(json!(true).into()),
        }]
    );
    assert_eq!(
        history[1].change.context.get("request_id"),
        Some(&json!("r2"))
    );

    let created = history[0].change.committed_at;
    let updated = history[1].change.committed_at;
    assert_eq!(
        Task::as_of(&mut conn, 1, just_before(created)).unwrap(),
        None
    );
    assert_eq!(
        Task::as_of(&mut conn, 1, created).unwrap(),
        Some(task(1, 1, "Sleep", false))
    );
    assert_eq!(
        Task::as_of(&mut conn, 1, just_before(updated)).unwrap(),
        Some(task(1, 1, "Sleep", false))
    );
    assert_eq!(
        Task::as_of(&mut conn, 1, Utc::now()).unwrap(),
        Some(task(1, 1, "Sleep", true))
    );

    let deleted = Task::history(&mut conn, 2).unwrap()[1].change.committed_at;
    assert_eq!(
        Task::all_as_of(&mut conn, just_before(deleted)).unwrap(),
        [task(1, 1, "Sleep", true), task(2, 1, "Eat", false)]
    );
    assert_eq!(
        Task::all_as_of(&mut conn, Utc::now()).unwrap(),
        [task(1, 1, "Sleep", true)]
    );
    assert_eq!(Task::as_of(&mut conn, 2, deleted).unwrap(), None);

    // Any query, typed.
    let by_request = Task::changes(
        &mut conn,
        bemi::ChangeQuery::new().context_contains(Context::new().with("request_id", "r3")),
    )
    .unwrap();
    assert_eq!(by_request.len(), 1);
    assert_eq!(by_request[0].before, Some(task(2, 1, "Eat", false)));
    assert_eq!(by_request[0].after, None);

    // A redacted column never shows in typed history.
    let project = Project::history(&mut conn, 1).unwrap();
    assert_eq!(
        project[0].change.after.value("secret"),
        Some(json!(bemi::REDACTED))
    );
    assert_eq!(
        project[0].after,
        Some(Project {
            id: 1,
            name: "Home".into(),
            secret: None
        })
    );
}

#[test]
fn reverting_a_request_is_conflict_aware_forced_on_demand_and_audited() {
    let db = audited_database!(SCHEMA);
    let mut conn = PgConnection::establish(&db.url()).unwrap();
    db.sql(
        "INSERT INTO projects VALUES (1, 'Home', NULL);
         INSERT INTO tasks (id, project_id, title) VALUES (1, 1, 'Sleep'), (2, 1, 'Eat');",
    );
    {
        let _request = request("bad");
        diesel::update(tasks::table.find(1))
            .set(tasks::title.eq("Oops"))
            .execute(&mut conn)
            .unwrap();
        diesel::insert_into(tasks::table)
            .values((
                tasks::id.eq(3),
                tasks::project_id.eq(1),
                tasks::title.eq("Spam"),
            ))
            .execute(&mut conn)
            .unwrap();
        diesel::delete(tasks::table.find(2))
            .execute(&mut conn)
            .unwrap();
    }
    {
        // Someone else touches task 1 afterwards.
        let _request = request("other");
        diesel::update(tasks::table.find(1))
            .set(tasks::done.eq(true))
            .execute(&mut conn)
            .unwrap();
    }
    db.wait_for(7);
    let revert = Revert::context(Context::new().with("request_id", "bad"));

    let plan = plan_revert(&mut conn, &revert).unwrap();
    let outcomes: Vec<(Operation, &StepOutcome)> = plan
        .steps()
        .iter()
        .map(|step| (step.change.operation, &step.outcome))
        .collect();
    assert_eq!(outcomes.len(), 3);
    assert_eq!(outcomes[0], (Operation::Delete, &StepOutcome::Clean));
    assert_eq!(outcomes[1], (Operation::Create, &StepOutcome::Clean));
    let StepOutcome::Conflict(Conflict::RowDiffers { differences }) = outcomes[2].1 else {
        panic!("expected a conflict on task 1: {plan}");
    };
    assert_eq!(differences.len(), 1);
    assert_eq!(differences[0].column, "done");
    assert_eq!(differences[0].expected, Some(json!(false).into()));
    assert_eq!(differences[0].found, Some(json!(true).into()));
    assert_eq!(
        plan.steps()[2].action,
        RevertAction::Restore {
            columns: vec!["title".into()]
        }
    );
    assert!(
        plan.steps()[0]
            .statement
            .as_deref()
            .unwrap()
            .contains("/*Bemi {")
    );

    // Refused as a whole: nothing changes.
    let refused = apply_revert(&mut conn, &revert).unwrap_err();
    let Error::RevertConflicts(refused_plan) = &refused else {
        panic!("expected a refusal, got {refused}");
    };
    assert_eq!(refused_plan.conflicts().count(), 1);
    assert_eq!(
        current_tasks(&mut conn),
        [(1, "Oops".into(), true), (3, "Spam".into(), false)]
    );

    // Forced, under an admin's context: the changed column is restored, the later change kept.
    let applied = {
        let _admin = enter_context(Context::new().with("user_id", 1).with("reason", "undo bad"));
        apply_revert(&mut conn, &revert.clone().force()).unwrap()
    };
    assert!(matches!(applied.steps()[2].outcome, StepOutcome::Forced(_)));
    assert_eq!(
        current_tasks(&mut conn),
        [(1, "Sleep".into(), true), (2, "Eat".into(), false)]
    );

    let all = db.wait_for(10);
    for undo in &all[7..] {
        assert_eq!(undo.context["user_id"], 1, "{undo:?}");
        assert_eq!(undo.context["reason"], "undo bad");
        assert_eq!(
            undo.context["revert"]["of"],
            json!({"context": {"request_id": "bad"}})
        );
    }
    let undone: Vec<&str> = all[7..]
        .iter()
        .map(|change| change.operation.as_str())
        .collect();
    assert_eq!(undone, ["CREATE", "DELETE", "UPDATE"]);
}

#[test]
fn a_missing_row_is_a_conflict_that_force_skips() {
    let db = audited_database!(SCHEMA);
    let mut conn = PgConnection::establish(&db.url()).unwrap();
    db.sql("INSERT INTO projects VALUES (1, 'Home', NULL)");
    {
        let _request = request("create");
        diesel::insert_into(tasks::table)
            .values((
                tasks::id.eq(9),
                tasks::project_id.eq(1),
                tasks::title.eq("Later"),
            ))
            .execute(&mut conn)
            .unwrap();
    }
    db.sql("DELETE FROM tasks WHERE id = 9");
    db.wait_for(3);
    let created = Task::history(&mut conn, 9).unwrap()[0].change.id;
    let revert = Revert::change(created);
    let plan = plan_revert(&mut conn, &revert).unwrap();
    assert_eq!(
        plan.steps()[0].outcome,
        StepOutcome::Conflict(Conflict::RowMissing)
    );
    let forced = apply_revert(&mut conn, &revert.clone().force()).unwrap();
    assert_eq!(
        forced.steps()[0].outcome,
        StepOutcome::Skipped(Conflict::RowMissing)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audited_models_select_the_tracked_tables() {
    use bemi::setup::{Setup, SetupOptions};
    let database = bemi_test_harness::test_database!();
    let client = database.connect().await;
    client
        .batch_execute(&format!(
            "{SCHEMA} CREATE TABLE noise (id int PRIMARY KEY);"
        ))
        .await
        .unwrap();
    let options = SetupOptions::default()
        .slot(database.slot_name())
        .audited::<Task>()
        .unwrap()
        .audited::<Project>()
        .unwrap();
    let source = bemi_worker::ConnectionOptions::parse(&database.url()).unwrap();
    bemi_worker::setup(&source, &source, &Setup::new(options).unwrap())
        .await
        .unwrap();
    let published: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = 'bemi' \
             AND schemaname <> 'bemi' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(published, ["projects", "tasks"]);
}

#[test]
fn the_audit_api_takes_connections_as_the_r2d2_pool_hands_them_out() {
    use diesel::r2d2::{ConnectionManager, Pool};
    let db = audited_database!(SCHEMA);
    let pool = Pool::builder()
        .max_size(1)
        .build(ConnectionManager::<PgConnection>::new(db.url()))
        .unwrap();
    let mut conn = pool.get().unwrap();
    {
        let _request = enter_context(Context::new().with("request_id", "pooled"));
        diesel::insert_into(projects::table)
            .values((projects::id.eq(1), projects::name.eq("Pool")))
            .execute(&mut conn)
            .unwrap();
    }
    db.wait_for(1);
    let history = Project::history(&mut conn, 1).unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].change.operation, Operation::Create);
    let revert = Revert::context(Context::new().with("request_id", "pooled"));
    let plan = plan_revert(&mut conn, &revert).unwrap();
    assert!(plan.is_clean());
}
