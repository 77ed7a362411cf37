//! Typed history, time travel and revert of SeaORM models, against the real worker.

use bemi::revert::{Conflict, Revert, StepOutcome};
use bemi::sea_orm::{AuditedQueries, Connection, apply_revert, plan_revert};
use bemi::{Context, Error, Operation, with_context};
use bemi_testing::audited_database;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, Database, EntityTrait, IntoActiveModel};

mod note {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, bemi::Audited)]
    #[sea_orm(table_name = "note")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub owner: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub slug: String,
        #[sea_orm(column_name = "body_text")]
        pub body: String,
        pub version: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn key(owner: &str, slug: &str) -> (String, String) {
    (owner.to_owned(), slug.to_owned())
}

fn model(body: &str, version: i32) -> note::Model {
    note::Model {
        owner: "ann".into(),
        slug: "todo".into(),
        body: body.into(),
        version,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seaorm_models_have_history_time_travel_and_revert() {
    let db = audited_database!(
        "CREATE TABLE note (owner text, slug text, body_text text NOT NULL, version int NOT NULL, \
         PRIMARY KEY (owner, slug));"
    );
    let conn = Connection::new(Database::connect(db.url()).await.unwrap());
    let edit = |body: &'static str, version: i32, who: &'static str| {
        let conn = conn.clone();
        with_context(Context::new().with("editor", who), async move {
            let mut active = model(body, version).into_active_model();
            if version == 1 {
                active.insert(&conn).await.unwrap();
            } else {
                active.body = Set(body.to_owned());
                active.version = Set(version);
                active.reset_all().update(&conn).await.unwrap();
            }
        })
    };
    edit("milk", 1, "ann").await;
    edit("milk, eggs", 2, "bob").await;
    edit("milk, eggs, tea", 3, "ann").await;
    db.wait_for_async(3).await;

    let history = note::Model::history(&conn, key("ann", "todo"))
        .await
        .unwrap();
    assert_eq!(
        history
            .iter()
            .map(|change| change.after.clone().unwrap())
            .collect::<Vec<_>>(),
        [
            model("milk", 1),
            model("milk, eggs", 2),
            model("milk, eggs, tea", 3)
        ]
    );
    assert_eq!(
        history[1]
            .diff()
            .iter()
            .map(|field| field.column.as_str())
            .collect::<Vec<_>>(),
        ["body_text", "version"]
    );
    let bobs_changes = note::Model::changes(
        &conn,
        bemi::ChangeQuery::new().context_contains(Context::new().with("editor", "bob")),
    )
    .await
    .unwrap();
    assert_eq!(bobs_changes.len(), 1);
    assert_eq!(bobs_changes[0].after, Some(model("milk, eggs", 2)));
    let second = history[1].change.committed_at;
    assert_eq!(
        note::Model::as_of(conn.inner(), key("ann", "todo"), second)
            .await
            .unwrap(),
        Some(model("milk, eggs", 2))
    );
    assert_eq!(
        note::Model::all_as_of(&conn, second).await.unwrap(),
        [model("milk, eggs", 2)]
    );

    // Bob's edit is not the latest: reverting it conflicts on both columns.
    let bobs = Revert::change(history[1].change.id);
    let plan = plan_revert(&conn, &bobs).await.unwrap();
    let StepOutcome::Conflict(Conflict::RowDiffers { differences }) = &plan.steps()[0].outcome
    else {
        panic!("expected a conflict: {plan}");
    };
    assert_eq!(
        differences
            .iter()
            .map(|difference| difference.column.as_str())
            .collect::<Vec<_>>(),
        ["body_text", "version"]
    );
    assert!(matches!(
        apply_revert(&conn, &bobs).await,
        Err(Error::RevertConflicts(_))
    ));

    // Ann's last edit reverts cleanly, through the wrapper with its own context.
    let anns = Revert::change(history[2].change.id);
    let reviewer = conn.with_context(Context::new().with("editor", "reviewer"));
    let applied = apply_revert(&reviewer, &anns).await.unwrap();
    assert_eq!(applied.steps()[0].outcome, StepOutcome::Clean);
    assert_eq!(applied.steps()[0].change.operation, Operation::Update);
    let now = note::Entity::find_by_id(key("ann", "todo"))
        .one(&conn)
        .await
        .unwrap();
    assert_eq!(now, Some(model("milk, eggs", 2)));
    let all = db.wait_for_async(4).await;
    assert_eq!(all[3].context["editor"], "reviewer");
    assert_eq!(
        all[3].context["revert"]["change_id"],
        history[2].change.id.to_string()
    );
}
