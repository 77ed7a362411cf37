//! Automatic, context-aware audit trails for PostgreSQL.
//!
//! See [`bemi_core`] for the concepts. This crate re-exports it and, behind features, the ORM
//! integrations:
//!
//! | feature | adds |
//! | --- | --- |
//! | `diesel` | module `diesel`: the wrapper for Diesel's `PgConnection` |
//! | `diesel-async` | the wrapper for diesel-async's `AsyncPgConnection` |
//! | `sea-orm` | module `sea_orm`: the wrapper for SeaORM connections |

pub use bemi_core::*;
/// `#[derive(Audited)]`: see [`bemi_macros`] for its attributes.
pub use bemi_macros::Audited;

/// Diesel integration (feature `diesel`).
#[cfg(feature = "diesel")]
pub use bemi_diesel as diesel;

/// SeaORM integration (feature `sea-orm`).
#[cfg(feature = "sea-orm")]
pub use bemi_seaorm as sea_orm;
