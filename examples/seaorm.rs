//! bemi-rs with SeaORM: `cargo run --example seaorm`.
//!
//! The same todo app as the quickstart, through SeaORM entities and the SeaORM wrapper, plus a
//! background job with a context of its own. Starts a throwaway PostgreSQL (or uses a fresh
//! database on `DATABASE_URL`'s server), prints the audit trail and cleans up.

mod support;

use std::process::ExitCode;

use bemi::{Context, with_context};
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, Database, EntityTrait, QueryFilter};
use serde_json::json;

/// The todo entity (SeaORM's derives expect public items).
#[allow(unreachable_pub)]
mod todo {
    use sea_orm::entity::prelude::*;

    /// A todo.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "todo")]
    pub struct Model {
        /// The id.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// What to do.
        pub task: String,
        /// Whether it is done.
        pub is_completed: bool,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (server, url) = support::start_server(&runtime, "seaorm")?;
    let outcome = todo_app(&runtime, &url);
    support::cleanup(&runtime, server)?;
    outcome
}

fn todo_app(runtime: &tokio::runtime::Runtime, url: &str) -> anyhow::Result<()> {
    // One line: bemi's wrapper around SeaORM's connection.
    let db = bemi::sea_orm::Connection::new(runtime.block_on(Database::connect(url))?);
    runtime.block_on(db.execute_unprepared(
        "CREATE TABLE todo (id serial PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL DEFAULT false)",
    ))?;
    let audit = support::Audit::start(runtime, url)?;

    runtime.block_on(async {
        // Requests (a web app sets this context in bemi::ContextLayer).
        let request = |endpoint: &str, params: serde_json::Value| {
            Context::new()
                .with("userId", 187234)
                .with("endpoint", endpoint)
                .with("params", params)
        };
        for task in ["Sleep", "Eat", "Repeat"] {
            let todo = todo::ActiveModel {
                task: Set(task.to_owned()),
                ..Default::default()
            };
            with_context(request("/todo", json!({"task": task})), todo.insert(&db)).await?;
        }
        let sleep = todo::ActiveModel {
            id: Set(1),
            is_completed: Set(true),
            ..Default::default()
        };
        with_context(
            request("/todo/complete", json!({"id": 1})),
            sleep.update(&db),
        )
        .await?;
        with_context(
            request("/todo/delete", json!({"id": 2})),
            todo::Entity::delete_by_id(2).exec(&db),
        )
        .await?;

        // A background job: its own context for everything it writes.
        with_context(Context::new().with("job", "archive-completed"), async {
            todo::Entity::update_many()
                .col_expr(todo::Column::Task, Expr::cust("task || ' (archived)'"))
                .filter(todo::Column::IsCompleted.eq(true))
                .exec(&db)
                .await
        })
        .await?;
        anyhow::Ok(())
    })?;
    audit.print_changes(runtime, url, 6)
}
