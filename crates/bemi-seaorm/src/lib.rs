//! SeaORM integration of bemi-rs.
//!
//! The connection wrapper that appends the active [`bemi_core::Context`] to every write SeaORM
//! issues will live here. Use it through the `bemi` crate's `sea-orm` feature.

pub use bemi_core::Context;
