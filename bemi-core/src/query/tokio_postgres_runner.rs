//! [`TokioPostgresRunner`]: the [`SqlRunner`] over a `tokio-postgres` client or transaction
//! (feature `tokio-postgres`), used by the worker's `revert` command and by applications that
//! read history with `tokio-postgres`.

use crate::{SqlParam, SqlRunner};
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;

/// Runs bemi-core's queries (history, time travel, revert) on a `tokio_postgres::Client` or
/// `Transaction`.
///
/// # Examples
///
/// ```no_run
/// # async fn example(client: &tokio_postgres::Client) -> bemi_core::Result<()> {
/// use bemi_core::TokioPostgresRunner;
///
/// let changes = bemi_core::ChangeQuery::new()
///     .limit(10)
///     .fetch(&mut TokioPostgresRunner(client))
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct TokioPostgresRunner<'a, C>(pub &'a C);

fn params(params: &[SqlParam]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|param| param as &(dyn ToSql + Sync))
        .collect()
}

/// A driver error as bemi-core's, with the SQLSTATE and the server's detail.
fn database_error(error: &tokio_postgres::Error) -> crate::Error {
    match error.as_db_error() {
        Some(db) => {
            let detail = db
                .detail()
                .map(|detail| format!(" ({detail})"))
                .unwrap_or_default();
            crate::Error::database(
                Some(db.code().code().to_owned()),
                format!("{}{detail}", db.message()),
            )
        }
        None => {
            // The driver's message and its causes (an I/O error, a TLS failure, ...).
            let mut message = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                message.push_str(": ");
                message.push_str(&cause.to_string());
                source = cause.source();
            }
            crate::Error::database(None, message)
        }
    }
}

impl<C: GenericClient + Sync> SqlRunner for TokioPostgresRunner<'_, C> {
    async fn query_rows(
        &mut self,
        sql: &str,
        values: &[SqlParam],
    ) -> crate::Result<Vec<Option<String>>> {
        let rows = self
            .0
            .query(sql, &params(values))
            .await
            .map_err(|error| database_error(&error))?;
        rows.iter()
            .map(|row| {
                row.try_get::<_, Option<String>>(0)
                    .map_err(|error| database_error(&error))
            })
            .collect()
    }

    async fn execute(&mut self, sql: &str, values: &[SqlParam]) -> crate::Result<u64> {
        self.0
            .execute(sql, &params(values))
            .await
            .map_err(|error| database_error(&error))
    }
}
