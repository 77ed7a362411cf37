//! Automatic, context-aware audit trails for PostgreSQL.
//!
//! See [`bemi_core`] for the concepts. This crate names what applications use and, behind
//! features, the ORM integrations; `use bemi::prelude::*` brings the everyday items.
//!
//! | feature | adds |
//! | --- | --- |
//! | `diesel` | module `diesel`: the wrapper for Diesel's `PgConnection`, `AuditedQueries`, revert |
//! | `diesel-async` | the wrapper for diesel-async's `AsyncPgConnection` (same audit API, futures) |
//! | `sea-orm` | module `sea_orm`: the wrapper for SeaORM connections |
//! | `tower` | `ContextLayer`: each HTTP request runs inside its context |

#![cfg_attr(docsrs, feature(doc_cfg))]

/// `#[derive(Audited)]`: see [`bemi_macros`] for its attributes.
pub use bemi_macros::Audited;

// The request side: contexts and their scopes.
#[cfg(feature = "tokio-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio-postgres")))]
pub use bemi_core::TokioPostgresRunner;
pub use bemi_core::scope;
pub use bemi_core::{
    Context, ContextGuard, WithContext, current_context, enter_context, enter_context_replaced,
    in_current_context, with_context, with_context_replaced, with_current_context,
};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use bemi_core::{ContextLayer, ContextService};

// Models and the audit trail.
pub use bemi_core::{
    AuditKey, AuditLog, Audited, AuditedChange, Change, ChangeCursor, ChangeQuery, FieldChange,
    Image, JsonText, KeyPart, Operation, Order, QualifiedName, REDACTED,
};
pub use bemi_core::{policy, revert, setup, time_travel};

// The wire format and the SQL port, for integrations of other drivers.
pub use bemi_core::{
    Comment, CommentEncoder, DEFAULT_MAX_PAYLOAD_BYTES, SqlParam, SqlRunner, is_write,
};

pub use bemi_core::{Error, Result};

/// Diesel integration (feature `diesel`).
#[cfg(feature = "diesel")]
#[cfg_attr(docsrs, doc(cfg(feature = "diesel")))]
pub use bemi_diesel as diesel;

/// SeaORM integration (feature `sea-orm`).
#[cfg(feature = "sea-orm")]
#[cfg_attr(docsrs, doc(cfg(feature = "sea-orm")))]
pub use bemi_seaorm as sea_orm;

/// The everyday items: `use bemi::prelude::*;`.
pub mod prelude {
    pub use crate::{Audited, Context, ContextGuard, current_context, enter_context, with_context};

    /// History, time travel and revert on Diesel connections (sync and async).
    #[cfg(feature = "diesel")]
    pub use crate::diesel::AuditedQueries;
}

/// What `#[derive(Audited)]` expands to needs; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use bemi_core::__private::*;
}
