//! A small todo HTTP API on axum and diesel-async, audited by bemi-rs.
//!
//! Two lines make it audited: the connection pool holds `bemi::diesel::AsyncPgConnection`
//! instead of diesel-async's, and the router has a [`bemi::ContextLayer`] that sets each
//! request's context (who, which endpoint). Handlers can add to it (the request's parameters).

use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::routing::{get, put};
use axum::{Json, Router};
use bemi::{Context, ContextLayer};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use serde::{Deserialize, Serialize};

/// The connection pool: bemi's wrapper instead of `diesel_async::AsyncPgConnection`.
pub type DbPool = Pool<bemi::diesel::AsyncPgConnection>;

/// The table the service needs.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS todo (id serial PRIMARY KEY, task text NOT NULL, is_completed boolean NOT NULL DEFAULT false)";

diesel::table! {
    /// Todos.
    todo (id) {
        /// The id.
        id -> Int4,
        /// What to do.
        task -> Text,
        /// Whether it is done.
        is_completed -> Bool,
    }
}

/// A todo, as stored and returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable)]
#[diesel(table_name = todo)]
pub struct Todo {
    /// The id.
    pub id: i32,
    /// What to do.
    pub task: String,
    /// Whether it is done.
    pub is_completed: bool,
}

/// The body of `POST /todos`.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewTodo {
    /// What to do.
    pub task: String,
}

/// A pool of audited connections to `database_url`.
///
/// # Errors
///
/// When the pool cannot be built.
pub fn pool(database_url: &str) -> anyhow::Result<DbPool> {
    let manager =
        AsyncDieselConnectionManager::<bemi::diesel::AsyncPgConnection>::new(database_url);
    Ok(Pool::builder(manager).max_size(8).build()?)
}

/// The service's routes, with bemi's context layer.
pub fn app(pool: DbPool) -> Router {
    Router::new()
        .route("/todos", get(list).post(create))
        .route("/todos/{id}/complete", put(complete))
        .route("/todos/{id}", axum::routing::delete(remove))
        .with_state(pool)
        // Who and where, for every write the request makes.
        .layer(ContextLayer::new(|request: &Request<axum::body::Body>| {
            let user = request
                .headers()
                .get("x-user-id")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("anonymous");
            Context::new()
                .with("userId", user)
                .with("endpoint", request.uri().path())
                .with("method", request.method().as_str())
        }))
}

type Response<T> = Result<T, (StatusCode, String)>;

fn internal(error: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

async fn list(State(pool): State<DbPool>) -> Response<Json<Vec<Todo>>> {
    let mut conn = pool.get().await.map_err(internal)?;
    let todos = todo::table
        .order(todo::id)
        .select(Todo::as_select())
        .load(&mut conn)
        .await
        .map_err(internal)?;
    Ok(Json(todos))
}

async fn create(
    State(pool): State<DbPool>,
    Json(new): Json<NewTodo>,
) -> Response<(StatusCode, Json<Todo>)> {
    // The request's parameters join the context the layer set.
    let params = Context::new().with("params", serde_json::json!({ "task": new.task }));
    bemi::with_context(params, async {
        let mut conn = pool.get().await.map_err(internal)?;
        let created = diesel::insert_into(todo::table)
            .values(todo::task.eq(&new.task))
            .returning(Todo::as_returning())
            .get_result(&mut conn)
            .await
            .map_err(internal)?;
        Ok((StatusCode::CREATED, Json(created)))
    })
    .await
}

async fn complete(State(pool): State<DbPool>, Path(id): Path<i32>) -> Response<Json<Todo>> {
    let mut conn = pool.get().await.map_err(internal)?;
    diesel::update(todo::table.find(id))
        .set(todo::is_completed.eq(true))
        .returning(Todo::as_returning())
        .get_result(&mut conn)
        .await
        .optional()
        .map_err(internal)?
        .map(Json)
        .ok_or((StatusCode::NOT_FOUND, format!("no todo {id}")))
}

async fn remove(State(pool): State<DbPool>, Path(id): Path<i32>) -> Response<StatusCode> {
    let mut conn = pool.get().await.map_err(internal)?;
    let deleted = diesel::delete(todo::table.find(id))
        .execute(&mut conn)
        .await
        .map_err(internal)?;
    Ok(if deleted == 0 {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::NO_CONTENT
    })
}
