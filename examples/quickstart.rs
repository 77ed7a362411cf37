//! bemi-rs in one command: `cargo run --example quickstart`.
//!
//! Starts a throwaway PostgreSQL from the system's binaries (or, with `DATABASE_URL` set, uses a
//! fresh database on that server), sets bemi up, runs the worker in this process, makes a todo
//! app's writes through the Diesel wrapper with a request context each, waits for the worker and
//! prints the audit trail. Cleans everything up before exiting.

mod support;

use std::process::ExitCode;

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
    audit.print_changes(runtime, url, 5)
}
