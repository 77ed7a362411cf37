//! Typed history, time travel and revert for Diesel models: one API for sync `PgConnection` and
//! (feature `async`) diesel-async's `AsyncPgConnection`. On a sync connection the functions return
//! their result; on an async one, a future of it. One trait, so importing it once serves both.

use std::future::Future;

use bemi_core::revert::{Revert, RevertPlan};
use bemi_core::time_travel::{model_all_as_of, model_as_of, model_history};
use bemi_core::{
    Audited, AuditedChange, ChangeQuery, Context, SqlRunner, block_on_ready, current_context,
};
use chrono::{DateTime, Utc};
use diesel::connection::{AnsiTransactionManager, TransactionManager};

use crate::runner::{DieselRunner, database_error};

/// A Diesel connection bemi's audit queries run on: Diesel's sync `PgConnection`, diesel-async's
/// `AsyncPgConnection` (feature `async`), bemi's wrappers of both (whose context the revert's
/// writes then carry), and connections as r2d2, deadpool and bb8 hand them out.
pub trait AuditConnection: Send {
    /// What an audit query gives on this connection: its result on a sync connection, a future
    /// of it on an async one.
    type Output<'a, T: Send + 'a>
    where
        Self: 'a;

    /// The runner bemi's SQL goes through on this connection.
    #[doc(hidden)]
    type Runner<'a>: SqlRunner
    where
        Self: 'a;

    /// Runs `query` with this connection's runner.
    #[doc(hidden)]
    fn run<'a, T, F, Fut>(&'a mut self, query: F) -> Self::Output<'a, T>
    where
        T: Send + 'a,
        F: FnOnce(Self::Runner<'a>) -> Fut + Send + 'a,
        Fut: Future<Output = bemi_core::Result<T>> + Send + 'a;

    /// Plans (`apply` false, rolled back) or applies a revert in a transaction of its own.
    #[doc(hidden)]
    fn run_revert(&mut self, revert: Revert, apply: bool) -> Self::Output<'_, RevertPlan>;

    /// The context the revert's writes carry, under bemi's own `revert` entry.
    fn revert_context(&self) -> Context;
}

/// The sync connections: the runner's futures are complete when created.
macro_rules! sync_audit_connection {
    ($($connection:ty => |$this:ident| $inner:expr, $context:expr;)*) => {$(
        impl AuditConnection for $connection {
            type Output<'a, T: Send + 'a> = bemi_core::Result<T> where Self: 'a;
            type Runner<'a> = DieselRunner<'a> where Self: 'a;

            fn run<'a, T, F, Fut>(&'a mut self, query: F) -> Self::Output<'a, T>
            where
                T: Send + 'a,
                F: FnOnce(Self::Runner<'a>) -> Fut + Send + 'a,
                Fut: Future<Output = bemi_core::Result<T>> + Send + 'a,
            {
                let $this = self;
                block_on_ready(query(DieselRunner($inner)))?
            }

            fn run_revert(
                &mut self,
                revert: Revert,
                apply: bool,
            ) -> Self::Output<'_, RevertPlan> {
                let revert = revert.under(&self.revert_context());
                let $this = self;
                revert_in_transaction($inner, &revert, apply)
            }

            fn revert_context(&self) -> Context {
                let $this = self;
                $context
            }
        }
    )*};
}

sync_audit_connection! {
    diesel::PgConnection => |this| this, { let _ = this; current_context() };
    crate::PgConnection => |this| this.inner_mut(), this.effective_context();
}

/// A connection checked out of an r2d2 pool (`diesel::r2d2::Pool`), as the pool hands it out:
/// no `&mut *conn` needed.
impl<M> AuditConnection for diesel::r2d2::PooledConnection<M>
where
    M: diesel::r2d2::ManageConnection,
    M::Connection: AuditConnection,
{
    type Output<'a, T: Send + 'a>
        = <M::Connection as AuditConnection>::Output<'a, T>
    where
        Self: 'a;
    type Runner<'a>
        = <M::Connection as AuditConnection>::Runner<'a>
    where
        Self: 'a;

    fn run<'a, T, F, Fut>(&'a mut self, query: F) -> Self::Output<'a, T>
    where
        T: Send + 'a,
        F: FnOnce(Self::Runner<'a>) -> Fut + Send + 'a,
        Fut: Future<Output = bemi_core::Result<T>> + Send + 'a,
    {
        (**self).run(query)
    }

    fn run_revert(&mut self, revert: Revert, apply: bool) -> Self::Output<'_, RevertPlan> {
        (**self).run_revert(revert, apply)
    }

    fn revert_context(&self) -> Context {
        (**self).revert_context()
    }
}

/// History and time travel for every [`Audited`] model, on any [`AuditConnection`]: sync
/// connections return the result, async ones a future of it.
///
/// ```no_run
/// use bemi_diesel::AuditedQueries;
/// # #[derive(Debug)] struct Todo { id: i32 }
/// # impl bemi_core::Audited for Todo {
/// #     type Key = i32; const SCHEMA: &'static str = "public"; const TABLE: &'static str = "todo";
/// #     const PRIMARY_KEY: &'static [&'static str] = &["id"]; const IGNORED: &'static [&'static str] = &[];
/// #     const REDACTED: &'static [&'static str] = &[];
/// #     fn key(&self) -> i32 { self.id }
/// #     fn from_row(row: &bemi_core::Image) -> bemi_core::Result<Self> {
/// #         Ok(Self { id: bemi_core::read_field(row, "todo", "id")? }) }
/// # }
///
/// # fn example(conn: &mut bemi_diesel::PgConnection) -> bemi_core::Result<()> {
/// let last_tuesday = chrono::Utc::now() - chrono::Duration::days(4);
/// for change in Todo::history(conn, 1)? {
///     println!("{} by {}: {:?}", change.change.operation, change.change.context, change.diff());
/// }
/// let then: Option<Todo> = Todo::as_of(conn, 1, last_tuesday)?;
/// let all_then: Vec<Todo> = Todo::all_as_of(conn, last_tuesday)?;
/// # Ok(())
/// # }
/// ```
///
/// On diesel-async the same calls are awaited: `Todo::history(&mut conn, 1).await?`.
pub trait AuditedQueries: Audited + Send {
    /// The row's changes, oldest first, typed.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when an image does not fit.
    fn history<C: AuditConnection>(
        conn: &mut C,
        key: impl Into<Self::Key>,
    ) -> C::Output<'_, Vec<AuditedChange<Self>>>
    where
        Self::Key: Send + Sync,
    {
        let key = key.into();
        conn.run(move |mut runner| async move { model_history::<Self, _>(&mut runner, &key).await })
    }

    /// The row as it was at `at`, or `None` when it did not exist then.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when the image does not fit.
    fn as_of<C: AuditConnection>(
        conn: &mut C,
        key: impl Into<Self::Key>,
        at: DateTime<Utc>,
    ) -> C::Output<'_, Option<Self>>
    where
        Self::Key: Send + Sync,
    {
        let key = key.into();
        conn.run(
            move |mut runner| async move { model_as_of::<Self, _>(&mut runner, &key, at).await },
        )
    }

    /// Every row of the table as it was at `at`, including rows deleted since.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when an image does not fit.
    fn all_as_of<C: AuditConnection>(conn: &mut C, at: DateTime<Utc>) -> C::Output<'_, Vec<Self>> {
        conn.run(move |mut runner| async move { model_all_as_of::<Self, _>(&mut runner, at).await })
    }

    /// The changes of this model's table that `query` selects (its table is set to the
    /// model's), typed.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when an image does not fit.
    fn changes<C: AuditConnection>(
        conn: &mut C,
        query: ChangeQuery,
    ) -> C::Output<'_, Vec<AuditedChange<Self>>> {
        conn.run(move |mut runner| async move {
            query
                .for_model::<Self>()?
                .fetch_as::<Self, _>(&mut runner)
                .await
        })
    }
}

impl<M: Audited + Send> AuditedQueries for M {}

/// Plans or applies a revert in a transaction of its own on a sync connection.
fn revert_in_transaction(
    pg: &mut diesel::PgConnection,
    revert: &Revert,
    apply: bool,
) -> bemi_core::Result<RevertPlan> {
    AnsiTransactionManager::begin_transaction(pg).map_err(database_error)?;
    let result = {
        let mut runner = DieselRunner(&mut *pg);
        let run = async {
            if apply {
                bemi_core::revert::apply(&mut runner, revert).await
            } else {
                bemi_core::revert::plan(&mut runner, revert).await
            }
        };
        block_on_ready(run).and_then(|result| result)
    };
    if apply && result.is_ok() {
        AnsiTransactionManager::commit_transaction(pg).map_err(database_error)?;
    } else {
        AnsiTransactionManager::rollback_transaction(pg).map_err(database_error)?;
    }
    result
}

/// A dry run of a revert: every step checked and run in a transaction that is rolled back.
/// The plan lists each change, its compensating statement, and conflicts. Sync connections
/// return the plan, async ones a future of it.
///
/// # Errors
///
/// Database errors; [`bemi_core::Error::RevertStep`] when a statement fails for another
/// reason than a conflict.
pub fn plan_revert<'a, C: AuditConnection>(
    conn: &'a mut C,
    revert: &Revert,
) -> C::Output<'a, RevertPlan> {
    conn.run_revert(revert.clone(), false)
}

/// Applies a revert in one transaction (a savepoint when one is open). Its writes carry the
/// connection's context with `{"revert": {"change_id": ..., "of": ...}}`.
///
/// # Errors
///
/// [`bemi_core::Error::RevertConflicts`] (nothing changed) when a step conflicts and the revert
/// is not forced ([`Revert::force`]); as [`plan_revert`] otherwise.
pub fn apply_revert<'a, C: AuditConnection>(
    conn: &'a mut C,
    revert: &Revert,
) -> C::Output<'a, RevertPlan> {
    conn.run_revert(revert.clone(), true)
}
