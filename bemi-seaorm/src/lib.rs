//! SeaORM integration of bemi-rs: every write SeaORM sends carries the request's context.
//!
//! Wrap the `DatabaseConnection` once, with [`Connection::new`]; use the wrapper wherever SeaORM
//! takes a connection. Every INSERT, UPDATE, DELETE (entities, `insert_many`, `update_many`,
//! `delete_many`, raw statements, also inside `transaction(...)` and `begin()`) then carries the
//! active `bemi_core::Context` as a `/*Bemi ... Bemi*/` comment; reads are untouched.
//!
//! ```no_run
//! use bemi_core::{Context, with_context};
//! use sea_orm::{ConnectionTrait, Database};
//!
//! # async fn example() -> Result<(), sea_orm::DbErr> {
//! let db = bemi_seaorm::Connection::new(Database::connect("postgres://app@localhost/app").await?);
//! with_context(Context::new().with("user_id", 187234).with("endpoint", "/todo"), async {
//!     db.execute_unprepared("UPDATE todo SET done = true WHERE id = 1").await
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # History, time travel, revert
//!
//! For models with `#[derive(bemi::Audited)]`: [`AuditedQueries`] (`todo::Model::history(&db,
//! 1)`, `as_of`, `all_as_of`), [`plan_revert`] and [`apply_revert`]. [`SeaOrmRunner`] runs any
//! `bemi_core` query (e.g. a `ChangeQuery`) on a SeaORM connection.
//!
//! # Prepared statements
//!
//! SeaORM runs every statement through sqlx as a named prepared statement, cached per connection
//! in an LRU of 100 (sqlx's default). A tagged statement's text changes with its context, so each
//! one is prepared once and later evicted: the number of prepared statements stays bounded by
//! the cache size, but tagged writes pay a Parse each and push frequently used reads out of the
//! cache. Do not set `statement_cache_capacity(0)` to avoid this: on sqlx 0.9.0 that leaks
//! named statements (transact-rs/sqlx#4328). SeaORM 2.0 has no per-statement switch to unnamed
//! statements.

mod audit;
mod connection;
mod tagging;

pub use audit::{AuditConnection, AuditedQueries, SeaOrmRunner, apply_revert, plan_revert};
pub use connection::{Connection, Transaction};
