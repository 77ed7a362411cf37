//! End-to-end tests of the `bemi` crate.
