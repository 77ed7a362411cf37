//! Derive macros for bemi-rs.
//!
//! `#[derive(Audited)]`, which describes a Diesel or SeaORM model's table and key to bemi's
//! history, time travel and revert API, will live here. Use the macros through the `bemi`
//! crate.
