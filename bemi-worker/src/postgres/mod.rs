//! Talking to PostgreSQL in either role (source or destination): connection settings and TLS.

pub(crate) mod connection;
pub mod tls;
