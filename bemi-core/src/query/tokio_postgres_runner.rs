//! [`ClientRunner`]: bemi-core's [`SqlRunner`] over a `tokio-postgres` client or transaction,
//! for the worker's `revert` command and for tests.

use bemi_core::{SqlParam, SqlRunner};
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;

/// Runs bemi-core's queries (history, time travel, revert) on a `tokio_postgres::Client` or
/// `Transaction`.
///
/// # Examples
///
/// ```no_run
/// # async fn example(client: &tokio_postgres::Client) -> bemi_core::Result<()> {
/// use bemi_worker::ClientRunner;
///
/// let changes = bemi_core::ChangeQuery::new().limit(10).fetch(&mut ClientRunner(client)).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ClientRunner<'a, C>(pub &'a C);

fn params(params: &[SqlParam]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|param| param as &(dyn ToSql + Sync))
        .collect()
}

/// A driver error as bemi-core's, with the SQLSTATE and the server's detail.
fn database_error(error: &tokio_postgres::Error) -> bemi_core::Error {
    match error.as_db_error() {
        Some(db) => {
            let detail = db
                .detail()
                .map(|detail| format!(" ({detail})"))
                .unwrap_or_default();
            bemi_core::Error::database(
                Some(db.code().code().to_owned()),
                format!("{}{detail}", db.message()),
            )
        }
        None => bemi_core::Error::database(None, crate::error_chain(error)),
    }
}

impl<C: GenericClient + Sync> SqlRunner for ClientRunner<'_, C> {
    async fn query_rows(
        &mut self,
        sql: &str,
        values: &[SqlParam],
    ) -> bemi_core::Result<Vec<Option<String>>> {
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

    async fn execute(&mut self, sql: &str, values: &[SqlParam]) -> bemi_core::Result<u64> {
        self.0
            .execute(sql, &params(values))
            .await
            .map_err(|error| database_error(&error))
    }
}
