//! The async side of the audit API (feature `async`): bemi's SQL over diesel-async's
//! `AsyncPgConnection`, and the [`AuditConnection`] implementations whose queries are futures.

use std::future::Future;
use std::pin::Pin;

use bemi_core::revert::{Revert, RevertPlan};
use bemi_core::{Context, SqlParam, SqlRunner, current_context};
use diesel::sql_types::{Nullable, Text};
use diesel_async::{AnsiTransactionManager, RunQueryDsl, TransactionManager};

use crate::audit::AuditConnection;
use crate::runner::{TextRow, database_error};

/// [`SqlRunner`] over diesel-async's `AsyncPgConnection`.
pub struct DieselAsyncRunner<'a>(pub &'a mut diesel_async::AsyncPgConnection);

impl SqlRunner for DieselAsyncRunner<'_> {
    async fn query_rows(
        &mut self,
        sql: &str,
        params: &[SqlParam],
    ) -> bemi_core::Result<Vec<Option<String>>> {
        let mut query = diesel::sql_query(sql).into_boxed();
        for param in params {
            query = query.bind::<Nullable<Text>, _>(param.clone());
        }
        query
            .load::<TextRow>(self.0)
            .await
            .map(|rows| rows.into_iter().map(|row| row.bemi_row).collect())
            .map_err(database_error)
    }

    async fn execute(&mut self, sql: &str, params: &[SqlParam]) -> bemi_core::Result<u64> {
        let mut query = diesel::sql_query(sql).into_boxed();
        for param in params {
            query = query.bind::<Nullable<Text>, _>(param.clone());
        }
        query
            .execute(self.0)
            .await
            .map(|rows| rows as u64)
            .map_err(database_error)
    }
}

/// What an audit query gives on an async connection: a future of its result.
pub type AuditFuture<'a, T> = Pin<Box<dyn Future<Output = bemi_core::Result<T>> + Send + 'a>>;

/// The async connections: diesel-async's, bemi's wrapper, and both as deadpool and bb8 hand
/// them out (no `&mut *conn` needed).
macro_rules! async_audit_connection {
    ($($connection:ty => |$this:ident| $inner:expr, $context:expr;)*) => {$(
        impl AuditConnection for $connection {
            type Output<'a, T: Send + 'a> = AuditFuture<'a, T> where Self: 'a;
            type Runner<'a> = DieselAsyncRunner<'a> where Self: 'a;

            fn run<'a, T, F, Fut>(&'a mut self, query: F) -> Self::Output<'a, T>
            where
                T: Send + 'a,
                F: FnOnce(Self::Runner<'a>) -> Fut + Send + 'a,
                Fut: Future<Output = bemi_core::Result<T>> + Send + 'a,
            {
                let $this = self;
                Box::pin(query(DieselAsyncRunner($inner)))
            }

            fn run_revert(
                &mut self,
                revert: Revert,
                apply: bool,
            ) -> Self::Output<'_, RevertPlan> {
                let revert = revert.under(&self.revert_context());
                let $this = self;
                Box::pin(revert_in_transaction($inner, revert, apply))
            }

            fn revert_context(&self) -> Context {
                let $this = self;
                $context
            }
        }
    )*};
}

async_audit_connection! {
    diesel_async::AsyncPgConnection => |this| this, { let _ = this; current_context() };
    crate::AsyncPgConnection => |this| this.inner_mut(), this.effective_context();
    diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncPgConnection>
        => |this| &mut **this, { let _ = this; current_context() };
    diesel_async::pooled_connection::deadpool::Object<crate::AsyncPgConnection>
        => |this| this.inner_mut(), this.effective_context();
    diesel_async::pooled_connection::bb8::PooledConnection<'_, diesel_async::AsyncPgConnection>
        => |this| &mut **this, { let _ = this; current_context() };
    diesel_async::pooled_connection::bb8::PooledConnection<'_, crate::AsyncPgConnection>
        => |this| this.inner_mut(), this.effective_context();
}

/// Plans or applies a revert in a transaction of its own on an async connection.
async fn revert_in_transaction(
    pg: &mut diesel_async::AsyncPgConnection,
    revert: Revert,
    apply: bool,
) -> bemi_core::Result<RevertPlan> {
    AnsiTransactionManager::begin_transaction(pg)
        .await
        .map_err(database_error)?;
    let result = {
        let mut runner = DieselAsyncRunner(&mut *pg);
        if apply {
            bemi_core::revert::apply(&mut runner, &revert).await
        } else {
            bemi_core::revert::plan(&mut runner, &revert).await
        }
    };
    if apply && result.is_ok() {
        AnsiTransactionManager::commit_transaction(pg)
            .await
            .map_err(database_error)?;
    } else {
        AnsiTransactionManager::rollback_transaction(pg)
            .await
            .map_err(database_error)?;
    }
    result
}

impl std::fmt::Debug for DieselAsyncRunner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DieselAsyncRunner").finish_non_exhaustive()
    }
}
