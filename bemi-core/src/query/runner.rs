//! [`SqlRunner`]: the one thing bemi's query, time-travel and revert code needs from a database
//! connection.
//!
//! bemi-core builds every query itself and runs it through this trait, so the same logic serves
//! Diesel (sync and async), SeaORM and the worker's `tokio-postgres` client. The contract is kept
//! small on purpose:
//!
//! - parameters are all text (or NULL); the SQL casts them (`$1::text::jsonb`), so binding never
//!   depends on a driver's type inference, and no value is ever spliced into SQL text;
//! - queries return exactly one column, named `bemi_row`, of type `text` (usually a JSON
//!   document built by PostgreSQL).

use std::future::Future;

use crate::Result;

/// A statement parameter: text, or SQL NULL.
pub type SqlParam = Option<String>;

/// The name of the single column every [`SqlRunner::query_rows`] query returns.
pub const ROW_COLUMN: &str = "bemi_row";

/// Runs bemi's SQL on a connection.
///
/// Implemented by the integrations for their connection types (`bemi_diesel`, `bemi_seaorm`,
/// the worker). A synchronous connection returns futures that are already complete; see
/// [`block_on_ready`].
pub trait SqlRunner: Send {
    /// Runs a query returning one text column named [`ROW_COLUMN`]; returns its values in order.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`] with the SQLSTATE when the database rejects the query.
    fn query_rows(
        &mut self,
        sql: &str,
        params: &[SqlParam],
    ) -> impl Future<Output = Result<Vec<Option<String>>>> + Send;

    /// Runs a statement; returns the number of rows it affected.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Database`] with the SQLSTATE when the database rejects the statement.
    fn execute(
        &mut self,
        sql: &str,
        params: &[SqlParam],
    ) -> impl Future<Output = Result<u64>> + Send;
}

/// Completes a future whose every step is synchronous (a [`SqlRunner`] over a blocking
/// connection returns ready futures), without an async runtime.
///
/// # Errors
///
/// [`crate::Error::NotReady`] when the future does wait on something: it is never blocked on.
pub fn block_on_ready<F: Future>(future: F) -> Result<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut context) {
        std::task::Poll::Ready(output) => Ok(output),
        std::task::Poll::Pending => Err(crate::Error::NotReady),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_futures_complete_and_waiting_ones_are_reported() {
        assert_eq!(block_on_ready(async { 7 }).unwrap(), 7);
        assert!(matches!(
            block_on_ready(std::future::pending::<()>()),
            Err(crate::Error::NotReady)
        ));
    }
}
