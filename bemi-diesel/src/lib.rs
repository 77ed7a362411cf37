//! Diesel integration of bemi-rs: every write Diesel sends carries the request's context.
//!
//! Replace `diesel::PgConnection` with [`PgConnection`] (and, with the `async` feature,
//! `diesel_async::AsyncPgConnection` with `AsyncPgConnection`): one line. Every INSERT, UPDATE,
//! DELETE, upsert, `RETURNING` query and `sql_query` write then carries the active
//! `bemi_core::Context` as a `/*Bemi ... Bemi*/` comment, which bemi's trigger copies into the
//! WAL for the worker. Reads are untouched. Both are instances of one generic wrapper,
//! [`TaggedConnection`], whose own context, encoder and inner connection work the same way.
//!
//! ```no_run
//! use bemi_core::{Context, with_context};
//! use diesel::prelude::*;
//!
//! # fn example() -> Result<(), Box<dyn std::error::Error>> {
//! // Was: let mut conn = diesel::PgConnection::establish(url)?;
//! let mut conn = bemi_diesel::PgConnection::establish("postgres://app@localhost/app")?;
//! let _request = bemi_core::enter_context(Context::new().with("user_id", 187234).with("endpoint", "/todo"));
//! diesel::sql_query("INSERT INTO todo (task) VALUES ('Sleep')").execute(&mut conn)?;
//! # Ok(())
//! # }
//! ```
//!
//! # Prepared statements
//!
//! A tagged statement's text changes with its context, so it is never put in Diesel's
//! prepared-statement cache (otherwise the first request's context would be reused for every later
//! one, and the cache would grow without bound). Writes without a context and all reads are
//! cached as usual.
//!
//! # History, time travel, revert
//!
//! For models with `#[derive(bemi::Audited)]`: [`AuditedQueries`] (`Todo::history(conn, 1)`,
//! `Todo::as_of(conn, 1, t)`, `Todo::all_as_of(conn, t)`), [`plan_revert`] and
//! [`apply_revert`], one API for every [`AuditConnection`]: on a sync connection they return
//! their result, on an async one (feature `async`) a future of it (`Todo::history(conn, 1).await`),
//! so one import serves both. [`DieselRunner`] (and `DieselAsyncRunner`) run any `bemi_core` query
//! (e.g. a `ChangeQuery`) on a Diesel connection.
//!
//! # Features
//!
//! - `async`: `AsyncPgConnection` for diesel-async 0.9, with its deadpool and bb8 pools.

#[cfg(feature = "async")]
mod async_connection;
mod audit;
#[cfg(feature = "async")]
mod audit_async;
mod connection;
mod runner;
mod tagged_connection;
mod tagged_query;
mod tagging;

#[cfg(feature = "async")]
pub use async_connection::AsyncPgConnection;
pub use audit::{AuditConnection, AuditedQueries, apply_revert, plan_revert};
#[cfg(feature = "async")]
pub use audit_async::{AuditFuture, DieselAsyncRunner};
pub use connection::PgConnection;
pub use runner::DieselRunner;
pub use tagged_connection::TaggedConnection;
