//! Typed history, time travel and revert for Diesel models (sync `PgConnection`).

use bemi_core::revert::{Revert, RevertPlan};
use bemi_core::time_travel::{model_all_as_of, model_as_of, model_history};
use bemi_core::{Audited, AuditedChange, ChangeQuery, Context, block_on_ready, current_context};
use chrono::{DateTime, Utc};
use diesel::connection::{AnsiTransactionManager, TransactionManager};

use crate::runner::{SyncRunner, database_error};

/// A sync Diesel connection bemi's audit queries run on: Diesel's own `PgConnection` or
/// bemi's wrapper (whose context the revert's writes then carry).
pub trait AuditConnection {
    /// The underlying Diesel connection (statements sent through it are not tagged again).
    fn pg_connection(&mut self) -> &mut diesel::PgConnection;

    /// The context the revert's writes carry, under bemi's own `revert` entry.
    fn revert_context(&self) -> Context;
}

impl AuditConnection for diesel::PgConnection {
    fn pg_connection(&mut self) -> &mut diesel::PgConnection {
        self
    }

    fn revert_context(&self) -> Context {
        current_context()
    }
}

impl AuditConnection for crate::PgConnection {
    fn pg_connection(&mut self) -> &mut diesel::PgConnection {
        self.inner_mut()
    }

    fn revert_context(&self) -> Context {
        self.effective_context()
    }
}

/// A connection checked out of an r2d2 pool (`diesel::r2d2::Pool`), as the pool hands it out:
/// no `&mut *conn` needed.
impl<M> AuditConnection for diesel::r2d2::PooledConnection<M>
where
    M: diesel::r2d2::ManageConnection,
    M::Connection: AuditConnection,
{
    fn pg_connection(&mut self) -> &mut diesel::PgConnection {
        (**self).pg_connection()
    }

    fn revert_context(&self) -> Context {
        (**self).revert_context()
    }
}

/// History and time travel for every [`Audited`] model, on a sync Diesel connection.
///
/// ```no_run
/// use bemi_diesel::AuditedQueries;
/// # #[derive(Debug)] struct Todo { id: i32 }
/// # impl bemi_core::Audited for Todo {
/// #     type Key = i32; const SCHEMA: &'static str = "public"; const TABLE: &'static str = "todo";
/// #     const PRIMARY_KEY: &'static [&'static str] = &["id"]; const IGNORED: &'static [&'static str] = &[];
/// #     const REDACTED: &'static [&'static str] = &[];
/// #     fn key(&self) -> i32 { self.id }
/// #     fn from_row(row: &serde_json::Map<String, serde_json::Value>) -> bemi_core::Result<Self> {
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
pub trait AuditedQueries: Audited {
    /// The row's changes, oldest first, typed.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when an image does not fit.
    fn history(
        conn: &mut impl AuditConnection,
        key: impl Into<Self::Key>,
    ) -> bemi_core::Result<Vec<AuditedChange<Self>>> {
        let key = key.into();
        let mut runner = SyncRunner(conn.pg_connection());
        block_on_ready(model_history::<Self, _>(&mut runner, &key))?
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
    ) -> bemi_core::Result<Option<Self>> {
        let key = key.into();
        let mut runner = SyncRunner(conn.pg_connection());
        block_on_ready(model_as_of::<Self, _>(&mut runner, &key, at))?
    }

    /// Every row of the table as it was at `at`, including rows deleted since.
    ///
    /// # Errors
    ///
    /// Database errors, and [`bemi_core::Error::ModelField`] when an image does not fit.
    fn all_as_of(
        conn: &mut impl AuditConnection,
        at: DateTime<Utc>,
    ) -> bemi_core::Result<Vec<Self>> {
        let mut runner = SyncRunner(conn.pg_connection());
        block_on_ready(model_all_as_of::<Self, _>(&mut runner, at))?
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
    ) -> bemi_core::Result<Vec<AuditedChange<Self>>> {
        let query = query.for_model::<Self>()?;
        let mut runner = SyncRunner(conn.pg_connection());
        block_on_ready(query.fetch_as::<Self, _>(&mut runner))?
    }
}

impl<M: Audited> AuditedQueries for M {}

/// What a revert run does with its transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    RollBack,
    CommitOnSuccess,
}

fn in_transaction(
    conn: &mut impl AuditConnection,
    revert: &Revert,
    force: bool,
    finish: Finish,
) -> bemi_core::Result<RevertPlan> {
    let revert = revert.clone().under(&conn.revert_context());
    let pg = conn.pg_connection();
    AnsiTransactionManager::begin_transaction(pg).map_err(database_error)?;
    let result = {
        let mut runner = SyncRunner(&mut *pg);
        let run = async {
            match finish {
                Finish::RollBack => bemi_core::revert::plan(&mut runner, &revert, force).await,
                Finish::CommitOnSuccess => {
                    bemi_core::revert::apply(&mut runner, &revert, force).await
                }
            }
        };
        block_on_ready(run).and_then(|result| result)
    };
    match (&result, finish) {
        (Ok(_), Finish::CommitOnSuccess) => {
            AnsiTransactionManager::commit_transaction(pg).map_err(database_error)?;
        }
        _ => AnsiTransactionManager::rollback_transaction(pg).map_err(database_error)?,
    }
    result
}

/// A dry run of a revert: every step checked and run in a transaction that is rolled back.
/// The plan lists each change, its compensating statement, and conflicts.
///
/// # Errors
///
/// Database errors; [`bemi_core::Error::RevertStep`] when a statement fails for another
/// reason than a conflict.
pub fn plan_revert(
    conn: &mut impl AuditConnection,
    revert: &Revert,
    force: bool,
) -> bemi_core::Result<RevertPlan> {
    in_transaction(conn, revert, force, Finish::RollBack)
}

/// Applies a revert in one transaction (a savepoint when one is open). Its writes carry the
/// connection's context with `{"revert": {"change_id": ..., "of": ...}}`.
///
/// # Errors
///
/// [`bemi_core::Error::RevertConflicts`] (nothing changed) when a step conflicts and `force`
/// is false; as [`plan_revert`] otherwise.
pub fn apply_revert(
    conn: &mut impl AuditConnection,
    revert: &Revert,
    force: bool,
) -> bemi_core::Result<RevertPlan> {
    in_transaction(conn, revert, force, Finish::CommitOnSuccess)
}
