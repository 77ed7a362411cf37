//! bemi-rs in one command: `cargo run --example quickstart`.
//!
//! Starts a throwaway PostgreSQL from the system's binaries (or, with `DATABASE_URL` set, uses a
//! fresh database on that server), sets bemi up, runs the worker in this process, makes a todo
//! app's writes through the Diesel wrapper with a request context each, waits for the worker and
//! prints the audit trail. Cleans everything up before exiting.

mod support;

use std::process::ExitCode;

use bemi::diesel::AuditedQueries;
use bemi::revert::Revert;
use bemi::{Context, enter_context};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::json;

diesel::table! {
    /// The todo app's table.
    todo (id) {
        /// The todo's id.
        id -> Int4,
        /// What to do.
        task -> Text,
        /// Whether it is done.
        is_completed -> Bool,
    }
}

/// A todo, audited: its history, past states and reverts are typed.
#[derive(Queryable, Selectable, bemi::Audited)]
#[diesel(table_name = todo)]
struct Todo {
    id: i32,
    task: String,
    is_completed: bool,
}

impl std::fmt::Display for Todo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let done = if self.is_completed { "x" } else { " " };
        write!(f, "[{done}] #{} {}", self.id, self.task)
    }
}

/// A list of todos, one per line.
fn list(todos: &[Todo]) -> String {
    todos.iter().map(|todo| format!("\n    {todo}")).collect()
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
    let (server, url) = support::start_server(&runtime, "quickstart")?;
    let outcome = todo_app(&runtime, &url);
    support::cleanup(&runtime, server)?;
    outcome
}

fn todo_app(runtime: &tokio::runtime::Runtime, url: &str) -> anyhow::Result<()> {
    // One line: bemi's connection instead of diesel::PgConnection.
    let mut conn = bemi::diesel::PgConnection::establish(url)?;
    conn.batch_execute(
        "CREATE TABLE todo (id serial PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL DEFAULT false)",
    )?;
    let audit = support::Audit::start(runtime, url)?;

    // The app's requests, each with its context (a web app sets it in a middleware instead, see
    // examples/axum-todo).
    let request = |endpoint: &str, params: serde_json::Value| {
        Context::new()
            .with("userId", 187234)
            .with("endpoint", endpoint)
            .with("params", params)
    };
    for task in ["Sleep", "Eat", "Repeat"] {
        let _request = enter_context(request("/todo", json!({"task": task})));
        diesel::insert_into(todo::table)
            .values(todo::task.eq(task))
            .execute(&mut conn)?;
    }
    {
        let _request = enter_context(request("/todo/complete", json!({"id": 1})));
        diesel::update(todo::table.find(1))
            .set(todo::is_completed.eq(true))
            .execute(&mut conn)?;
    }
    {
        let _request = enter_context(request("/todo/delete", json!({"id": 2})));
        diesel::delete(todo::table.find(2)).execute(&mut conn)?;
    }
    audit.print_changes(runtime, url, 5)?;
    time_travel(&mut conn)
}

/// History, time travel and revert of the todos.
fn time_travel(conn: &mut bemi::diesel::PgConnection) -> anyhow::Result<()> {
    println!("\nTodo 1's history:");
    let history = Todo::history(conn, 1)?;
    for change in &history {
        let after = change.after.as_ref().map(Todo::to_string);
        println!(
            "  {} by {}: {}",
            change.change.operation,
            change.change.context,
            after.unwrap_or_default()
        );
    }
    let before_completion = history[1].change.committed_at - chrono::Duration::microseconds(1);
    let then = Todo::as_of(conn, 1, before_completion)?;
    println!(
        "Todo 1 just before it was completed: {}",
        then.map(|todo| todo.to_string()).unwrap_or_default()
    );
    println!(
        "Every todo at that time:{}",
        list(&Todo::all_as_of(conn, before_completion)?)
    );

    // Undo everything the delete request did, as an admin: the undo is audited too.
    let _admin = enter_context(
        Context::new()
            .with("userId", 1)
            .with("endpoint", "/admin/undo"),
    );
    let revert = Revert::context(Context::new().with("endpoint", "/todo/delete"));
    let plan = bemi::diesel::apply_revert(conn, &revert)?;
    print!("\nReverted the delete request:\n{plan}");
    let todos: Vec<Todo> = todo::table
        .select(Todo::as_select())
        .order(todo::id)
        .load(conn)?;
    println!("Todos now:{}", list(&todos));
    Ok(())
}
