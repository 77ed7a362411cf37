//! Diesel integration of bemi-rs.
//!
//! The connection wrapper that appends the active [`bemi_core::Context`] to every write sent
//! through Diesel (sync `PgConnection` and, with the `async` feature, diesel-async) will live
//! here. Use it through the `bemi` crate's `diesel` and `diesel-async` features.

pub use bemi_core::Context;
