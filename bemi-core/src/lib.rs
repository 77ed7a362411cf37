//! The core of bemi-rs: automatic, context-aware audit trails for PostgreSQL.
//!
//! bemi-rs captures every row change from PostgreSQL's write-ahead log and stores it, with the
//! application context that caused it, in a `changes` table. This crate holds what every other
//! part shares and needs no database connection:
//!
//! - [`Context`], the JSON object describing who/where/why, and its scoping:
//!   [`with_context`] for async tasks, [`enter_context`] for threads, [`current_context`] to read
//!   it (see [`scope`] for the rules);
//! - the wire format: [`CommentEncoder`] appends `/*Bemi {json} Bemi*/` to write statements
//!   ([`is_write`]), [`decode_payload`] and [`parse_payload`] read it back;
//! - [`setup`]: the SQL that installs the triggers, publication and `changes` table, and the
//!   attribution rule the worker applies;
//! - [`Change`] and [`Operation`], one row of `changes`;
//! - reading it back: [`ChangeQuery`] (filters, order, keyset pages), [`time_travel`] (a row's
//!   history, a row or a whole table as of an instant), [`revert`] (conflict-aware undo of a
//!   change, a transaction or a request), typed through [`Audited`] models. They run on any
//!   connection implementing [`SqlRunner`] (the ORM integrations and the worker do).
//!
//! # Example
//!
//! ```
//! use bemi_core::{CommentEncoder, Context, current_context, enter_context};
//!
//! let _request = enter_context(Context::new().with("user_id", 187234).with("endpoint", "/todo"));
//! let sql = CommentEncoder::default().tag("INSERT INTO todo (task) VALUES ($1)", &current_context());
//! assert_eq!(
//!     sql,
//!     r#"INSERT INTO todo (task) VALUES ($1) /*Bemi {"endpoint":"\u002ftodo","user_id":187234} Bemi*/"#
//! );
//! ```
//!
//! # Features
//!
//! - `tower`: [`ContextLayer`], a tower layer setting each HTTP request's context (axum, tonic).
//! - `proptest`: `strategies`, hostile contexts for property tests.
//! - `tokio-postgres`: [`TokioPostgresRunner`], reading history, time travel and revert through
//!   a `tokio-postgres` client or transaction.
//!
//! Users normally depend on the `bemi` facade crate, which re-exports this crate and adds the
//! ORM integrations behind the features `diesel`, `diesel-async` and `sea-orm`.

mod audited;
mod change;
mod comment;
mod context;
mod error;
mod ident;
mod image;
mod key;
pub mod policy;
mod query;
pub mod revert;
pub mod setup;
#[cfg(any(test, feature = "proptest"))]
pub mod strategies;

pub use audited::{
    AuditLog, Audited, AuditedChange, ERASED_KEY, FieldChange, REDACTED, is_erased, read_field,
    read_personal_field, read_renamed_field,
};
pub use change::{Change, Operation};
pub use comment::statement::{is_ddl, is_write};
pub use comment::{
    COMMENT_PREFIX, COMMENT_SUFFIX, Comment, CommentEncoder, DEFAULT_MAX_PAYLOAD_BYTES, MARKER_KEY,
    decode_payload, encode_payload, oversized_marker, parse_payload,
};
pub use context::Context;
#[cfg(feature = "tower")]
pub use context::layer::{ContextLayer, ContextService};
pub use context::scope;
pub use context::scope::{
    ContextGuard, WithContext, current_context, enter_context, enter_context_replaced,
    in_current_context, with_context, with_context_replaced, with_current_context,
};
pub use error::{Error, Result};
pub use ident::{QualifiedName, quote_ident, quote_literal};
pub use image::{Image, JsonText};
pub use key::{AuditKey, KeyPart};
pub use query::runner::{ROW_COLUMN, SqlParam, SqlRunner, block_on_ready};
pub use query::time_travel;
#[cfg(feature = "tokio-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio-postgres")))]
pub use query::tokio_postgres_runner::TokioPostgresRunner;
pub use query::{ChangeCursor, ChangeQuery, Order};

/// What `#[derive(Audited)]` expands to needs; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::{read_field, read_personal_field, read_renamed_field};
    pub use serde_json;

    /// A qualified name whose parts `#[derive(Audited)]` already validated.
    pub fn qualified_name(schema: &'static str, name: &'static str) -> crate::QualifiedName {
        crate::QualifiedName::from_static(schema, name)
    }
}
