//! Reads of the trail run through `bemi.read_trail`, which plans them with JIT compilation off.
//!
//! PostgreSQL compiles a plan to machine code when its estimated cost passes `jit_above_cost`.
//! A read of the `changes` table over months of partitions passes it however few rows it
//! returns (each partition adds its nodes to the estimate), and compiling took longer than
//! reading: on 10,000,000 changes, a request's changes took 420 ms with JIT and 30 ms without,
//! a table as of a month ago 1.2 s against 0.9 s. A session setting would change the caller's
//! connection (and a pool hands it to someone else next); the function's own `SET jit = off`
//! holds for the read alone.

use crate::Result;
use crate::query::runner::{ROW_COLUMN, SqlParam, SqlRunner};

/// The function, in schema `bemi` of the database holding the trail, that setup installs.
pub(crate) const READ_FUNCTION: &str = "read_trail";

/// The most parameters a read passed to [`READ_FUNCTION`] may have (`$1` to `$32`). A read
/// with more runs directly, with the connection's JIT setting.
pub(crate) const READ_PARAMETERS: usize = 32;

/// Runs `sql` (a query returning [`ROW_COLUMN`], with text parameters `$1` to `$n`) through
/// [`READ_FUNCTION`]: the same rows, planned without JIT. The query and its parameters are
/// themselves parameters of the call (the parameters as a JSON array of texts), so no value is
/// ever spliced into SQL text.
///
/// # Errors
///
/// [`crate::Error::Database`] from the runner, e.g. SQLSTATE 42883 when the database was set up
/// by a bemi without the function (run setup again: it is idempotent).
pub(crate) async fn read_trail<R: SqlRunner>(
    runner: &mut R,
    sql: &str,
    params: &[SqlParam],
) -> Result<Vec<Option<String>>> {
    if params.len() > READ_PARAMETERS {
        return runner.query_rows(sql, params).await;
    }
    let arguments = serde_json::Value::from(params.to_vec()).to_string();
    runner
        .query_rows(
            &format!(
                "SELECT r AS {ROW_COLUMN} FROM bemi.{READ_FUNCTION}($1::text, $2::text::jsonb) AS r"
            ),
            &[Some(sql.to_owned()), Some(arguments)],
        )
        .await
}
