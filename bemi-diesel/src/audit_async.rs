//! Typed history, time travel and revert for Diesel models on diesel-async's
//! `AsyncPgConnection` (feature `async`). The same API as the sync one at the crate root.

use std::future::Future;

use bemi_core::revert::{Revert, RevertPlan};
use bemi_core::time_travel::{model_all_as_of, model_as_of, model_history};
use bemi_core::{
    Audited, AuditedChange, ChangeQuery, Context, SqlParam, SqlRunner, current_context,
};
use chrono::{DateTime, Utc};
use diesel::sql_types::{Nullable, Text};
use diesel_async::{AnsiTransactionManager, RunQueryDsl, TransactionManager};

use crate::runner::{TextRow, database_error};

/// [`SqlRunner`] over diesel-async's `AsyncPgConnection`.
pub struct AsyncRunner<'a>(pub &'a mut diesel_async::AsyncPgConnection);

impl SqlRunner for AsyncRunner<'_> {
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

/// An async Diesel connection bemi's audit queries run on: diesel-async's own
/// `AsyncPgConnection` or bemi's wrapper (whose context the revert's writes then carry).
pub trait AuditConnection: Send {
    /// The underlying connection (statements sent through it are not tagged again).
    fn pg_connection(&mut self) -> &mut diesel_async::AsyncPgConnection;

    /// The context the revert's writes carry, under bemi's own `revert` entry.
    fn revert_context(&self) -> Context;
}

/// Connections checked out of diesel-async's deadpool and bb8 pools, as the pools hand them out
/// (no `&mut *conn` needed), for diesel-async's connection and bemi's wrapper.
macro_rules! pooled_audit_connection {
    ($($pooled:ty),* $(,)?) => {$(
        impl AuditConnection for $pooled {
            fn pg_connection(&mut self) -> &mut diesel_async::AsyncPgConnection {
                (**self).pg_connection()
            }

            fn revert_context(&self) -> Context {
                (**self).revert_context()
            }
        }
    )*};
}

pooled_audit_connection!(
    diesel_async::pooled_connection::deadpool::Object<diesel_async::AsyncPgConnection>,
    diesel_async::pooled_connection::deadpool::Object<crate::AsyncPgConnection>,
    diesel_async::pooled_connection::bb8::PooledConnection<'_, diesel_async::AsyncPgConnection>,
    diesel_async::pooled_connection::bb8::PooledConnection<'_, crate::AsyncPgConnection>,
);

impl AuditConnection for diesel_async::AsyncPgConnection {
    fn pg_connection(&mut self) -> &mut diesel_async::AsyncPgConnection {
        self
    }

    fn revert_context(&self) -> Context {
        current_context()
    }
}

impl AuditConnection for crate::AsyncPgConnection {
    fn pg_connection(&mut self) -> &mut diesel_async::AsyncPgConnection {
        self.inner_mut()
    }

    fn revert_context(&self) -> Context {
        self.effective_context()
    }
}

/// History and time travel for every [`Audited`] model, on diesel-async.
pub trait AuditedQueries: Audited {
    /// The row's changes, oldest first, typed.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when an image does not fit.
    fn history(
        conn: &mut impl AuditConnection,
        key: impl Into<Self::Key>,
    ) -> impl Future<Output = bemi_core::Result<Vec<AuditedChange<Self>>>> + Send
    where
        Self: Send,
        Self::Key: Send + Sync,
    {
        let key = key.into();
        async move { model_history::<Self, _>(&mut AsyncRunner(conn.pg_connection()), &key).await }
    }

    /// The row as it was at `at`, or `None` when it did not exist then.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when the image does not fit.
    fn as_of(
        conn: &mut impl AuditConnection,
        key: impl Into<Self::Key>,
        at: DateTime<Utc>,
    ) -> impl Future<Output = bemi_core::Result<Option<Self>>> + Send
    where
        Self: Send,
        Self::Key: Send + Sync,
    {
        let key = key.into();
        async move { model_as_of::<Self, _>(&mut AsyncRunner(conn.pg_connection()), &key, at).await }
    }

    /// Every row of the table as it was at `at`, including rows deleted since.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when an image does not fit.
    fn all_as_of(
        conn: &mut impl AuditConnection,
        at: DateTime<Utc>,
    ) -> impl Future<Output = bemi_core::Result<Vec<Self>>> + Send
    where
        Self: Send,
    {
        async move { model_all_as_of::<Self, _>(&mut AsyncRunner(conn.pg_connection()), at).await }
    }

    /// The changes of this model's table that `query` selects (its table is set to the
    /// model's), typed.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when an image does not fit.
    fn changes(
        conn: &mut impl AuditConnection,
        query: ChangeQuery,
    ) -> impl Future<Output = bemi_core::Result<Vec<AuditedChange<Self>>>> + Send
    where
        Self: Send,
    {
        async move {
            let query = query.for_model::<Self>()?;
            query
                .fetch_as::<Self, _>(&mut AsyncRunner(conn.pg_connection()))
                .await
        }
    }
}

impl<M: Audited> AuditedQueries for M {}

async fn in_transaction(
    conn: &mut impl AuditConnection,
    revert: &Revert,
    force: bool,
    commit_on_success: bool,
) -> bemi_core::Result<RevertPlan> {
    let revert = revert.clone().under(&conn.revert_context());
    let pg = conn.pg_connection();
    AnsiTransactionManager::begin_transaction(pg)
        .await
        .map_err(database_error)?;
    let result = {
        let mut runner = AsyncRunner(&mut *pg);
        if commit_on_success {
            bemi_core::revert::apply(&mut runner, &revert, force).await
        } else {
            bemi_core::revert::plan(&mut runner, &revert, force).await
        }
    };
    if commit_on_success && result.is_ok() {
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

/// A dry run of a revert: every step checked and run in a transaction that is rolled back.
///
/// # Errors
///
/// Database errors; [`bemi_core::Error::RevertStep`] when a statement fails for another
/// reason than a conflict.
pub async fn plan_revert(
    conn: &mut impl AuditConnection,
    revert: &Revert,
    force: bool,
) -> bemi_core::Result<RevertPlan> {
    in_transaction(conn, revert, force, false).await
}

/// Applies a revert in one transaction (a savepoint when one is open). Its writes carry the
/// connection's context with `{"revert": {"change_id": ..., "of": ...}}`.
///
/// # Errors
///
/// [`bemi_core::Error::RevertConflicts`] (nothing changed) when a step conflicts and `force`
/// is false; as [`plan_revert`] otherwise.
pub async fn apply_revert(
    conn: &mut impl AuditConnection,
    revert: &Revert,
    force: bool,
) -> bemi_core::Result<RevertPlan> {
    in_transaction(conn, revert, force, true).await
}

impl std::fmt::Debug for AsyncRunner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncRunner").finish_non_exhaustive()
    }
}
