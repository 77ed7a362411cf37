//! Talking to PostgreSQL in either role (source or destination): connection settings and TLS.

pub(crate) mod connection;
pub mod tls;

use crate::{Error, Result};

/// Whether the table `name` (`schema.table`) exists in the database `client` is connected to
/// (tables of a setup that predates them do not).
pub(crate) async fn table_exists<C: tokio_postgres::GenericClient>(
    client: &C,
    name: &str,
) -> Result<bool> {
    Ok(client
        .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&name])
        .await
        .map_err(Error::postgres(format!("look for {name}")))?
        .get(0))
}
