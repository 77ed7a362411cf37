//! Typed history, time travel and revert for SeaORM models.

use std::future::Future;

use bemi_core::revert::{Revert, RevertPlan};
use bemi_core::time_travel::{model_all_as_of, model_as_of, model_history};
use bemi_core::{
    Audited, AuditedChange, ChangeQuery, Context, SqlParam, SqlRunner, current_context,
};
use chrono::{DateTime, Utc};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, RuntimeErr,
    Statement, TransactionSession, TransactionTrait, Value,
};

use crate::Connection;

/// A SeaORM error as bemi-core's, with the SQLSTATE when the server sent one.
fn database_error(error: DbErr) -> bemi_core::Error {
    let code = match &error {
        DbErr::Exec(RuntimeErr::SqlxError(inner)) | DbErr::Query(RuntimeErr::SqlxError(inner)) => {
            match &**inner {
                sea_orm::sqlx::Error::Database(database) => {
                    database.code().map(|code| code.into_owned())
                }
                _ => None,
            }
        }
        _ => None,
    };
    bemi_core::Error::database(code, error.to_string())
}

/// [`SqlRunner`] over any SeaORM connection or transaction.
pub struct SeaOrmRunner<'a, C>(pub &'a C);

impl<C> std::fmt::Debug for SeaOrmRunner<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeaOrmRunner").finish_non_exhaustive()
    }
}

fn statement(sql: &str, params: &[SqlParam]) -> Statement {
    Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        params.iter().map(|param| Value::String(param.clone())),
    )
}

impl<C: ConnectionTrait> SqlRunner for SeaOrmRunner<'_, C> {
    async fn query_rows(
        &mut self,
        sql: &str,
        params: &[SqlParam],
    ) -> bemi_core::Result<Vec<Option<String>>> {
        let rows = self
            .0
            .query_all_raw(statement(sql, params))
            .await
            .map_err(database_error)?;
        rows.iter()
            .map(|row| {
                row.try_get::<Option<String>>("", bemi_core::ROW_COLUMN)
                    .map_err(database_error)
            })
            .collect()
    }

    async fn execute(&mut self, sql: &str, params: &[SqlParam]) -> bemi_core::Result<u64> {
        self.0
            .execute_raw(statement(sql, params))
            .await
            .map(|result| result.rows_affected())
            .map_err(database_error)
    }
}

/// A SeaORM connection bemi's revert runs on: a `DatabaseConnection`, a
/// `DatabaseTransaction`, or bemi's [`Connection`] wrapper (whose context the revert's writes
/// then carry).
pub trait AuditConnection: Sync {
    /// The underlying connection (statements sent through it are not tagged again).
    type Raw: ConnectionTrait + TransactionTrait;

    /// The underlying connection.
    fn raw_connection(&self) -> &Self::Raw;

    /// The context the revert's writes carry, under bemi's own `revert` entry.
    fn revert_context(&self) -> Context;
}

impl AuditConnection for DatabaseConnection {
    type Raw = DatabaseConnection;

    fn raw_connection(&self) -> &DatabaseConnection {
        self
    }

    fn revert_context(&self) -> Context {
        current_context()
    }
}

impl AuditConnection for DatabaseTransaction {
    type Raw = DatabaseTransaction;

    fn raw_connection(&self) -> &DatabaseTransaction {
        self
    }

    fn revert_context(&self) -> Context {
        current_context()
    }
}

impl<C: ConnectionTrait + TransactionTrait> AuditConnection for Connection<C> {
    type Raw = C;

    fn raw_connection(&self) -> &C {
        self.inner()
    }

    fn revert_context(&self) -> Context {
        self.effective_context()
    }
}

/// History and time travel for every [`Audited`] model, on any SeaORM connection (reads only:
/// the bemi wrapper or the plain connection both work).
///
/// ```no_run
/// use bemi_seaorm::AuditedQueries;
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
/// # async fn example(db: &sea_orm::DatabaseConnection) -> bemi_core::Result<()> {
/// let yesterday = chrono::Utc::now() - chrono::Duration::days(1);
/// let history = Todo::history(db, 1).await?;
/// let then: Option<Todo> = Todo::as_of(db, 1, yesterday).await?;
/// let all_then: Vec<Todo> = Todo::all_as_of(db, yesterday).await?;
/// # Ok(())
/// # }
/// ```
pub trait AuditedQueries: Audited {
    /// The row's changes, oldest first, typed.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when an image does not fit.
    fn history<C: ConnectionTrait>(
        conn: &C,
        key: impl Into<Self::Key>,
    ) -> impl Future<Output = bemi_core::Result<Vec<AuditedChange<Self>>>> + Send
    where
        Self: Send,
        Self::Key: Send + Sync,
    {
        let key = key.into();
        async move { model_history::<Self, _>(&mut SeaOrmRunner(conn), &key).await }
    }

    /// The row as it was at `at`, or `None` when it did not exist then.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when the image does not fit.
    fn as_of<C: ConnectionTrait>(
        conn: &C,
        key: impl Into<Self::Key>,
        at: DateTime<Utc>,
    ) -> impl Future<Output = bemi_core::Result<Option<Self>>> + Send
    where
        Self: Send,
        Self::Key: Send + Sync,
    {
        let key = key.into();
        async move { model_as_of::<Self, _>(&mut SeaOrmRunner(conn), &key, at).await }
    }

    /// Every row of the table as it was at `at`, including rows deleted since.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when an image does not fit.
    fn all_as_of<C: ConnectionTrait>(
        conn: &C,
        at: DateTime<Utc>,
    ) -> impl Future<Output = bemi_core::Result<Vec<Self>>> + Send
    where
        Self: Send,
    {
        async move { model_all_as_of::<Self, _>(&mut SeaOrmRunner(conn), at).await }
    }

    /// The changes of this model's table that `query` selects (its table is set to the
    /// model's), typed.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when an image does not fit.
    fn changes<C: ConnectionTrait>(
        conn: &C,
        query: ChangeQuery,
    ) -> impl Future<Output = bemi_core::Result<Vec<AuditedChange<Self>>>> + Send
    where
        Self: Send,
    {
        async move {
            let query = query.for_model::<Self>()?;
            query.fetch_as::<Self, _>(&mut SeaOrmRunner(conn)).await
        }
    }
}

impl<M: Audited> AuditedQueries for M {}

async fn in_transaction<C: AuditConnection>(
    conn: &C,
    revert: &Revert,
    commit_on_success: bool,
) -> bemi_core::Result<RevertPlan> {
    let revert = revert.clone().under(&conn.revert_context());
    let transaction = conn
        .raw_connection()
        .begin()
        .await
        .map_err(database_error)?;
    let result = {
        let mut runner = SeaOrmRunner(&transaction);
        if commit_on_success {
            bemi_core::revert::apply(&mut runner, &revert).await
        } else {
            bemi_core::revert::plan(&mut runner, &revert).await
        }
    };
    if commit_on_success && result.is_ok() {
        transaction.commit().await.map_err(database_error)?;
    } else {
        transaction.rollback().await.map_err(database_error)?;
    }
    result
}

/// A dry run of a revert: every step checked and run in a transaction that is rolled back.
///
/// # Errors
///
/// Database errors; [`bemi_core::Error::RevertStep`] when a statement fails for another
/// reason than a conflict.
pub async fn plan_revert<C: AuditConnection>(
    conn: &C,
    revert: &Revert,
) -> bemi_core::Result<RevertPlan> {
    in_transaction(conn, revert, false).await
}

/// Applies a revert in one transaction (a savepoint inside a transaction). Its writes carry
/// the connection's context with `{"revert": {"change_id": ..., "of": ...}}`.
///
/// # Errors
///
/// [`bemi_core::Error::RevertConflicts`] (nothing changed) when a step conflicts and the revert
/// is not forced ([`Revert::force`]); as [`plan_revert`] otherwise.
pub async fn apply_revert<C: AuditConnection>(
    conn: &C,
    revert: &Revert,
) -> bemi_core::Result<RevertPlan> {
    in_transaction(conn, revert, true).await
}
