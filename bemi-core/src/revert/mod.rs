//! Conflict-aware revert: undo one change, a transaction, or everything done under a context
//! (e.g. every change of one API request), newest first.
//!
//! # How a revert runs
//!
//! 1. The selected changes are read from the `changes` table, newest first.
//! 2. Each change gets a compensating statement: a CREATE is undone by a DELETE, a DELETE by
//!    re-inserting the `before` row, an UPDATE by restoring the columns it changed. Rows are
//!    found by the table's primary key, read from the catalog.
//! 3. Before each statement the row is locked and compared with what the change left: a row is
//!    reverted only if its current state equals the change's `after` image (for a DELETE: only
//!    if the row is still absent). Otherwise the step is a [`Conflict`] naming the row, the
//!    columns, the expected and the found values.
//! 4. Statements run in one transaction of the source database, in newest-first order; one that
//!    breaks a foreign key or unique constraint (a child re-inserted before its parent) is rolled
//!    back to a savepoint and retried after the others.
//! 5. Every statement carries a context naming the change it reverts (`{"revert": {"change_id":
//!    ..., "of": ...}}`, merged over the caller's context), so the audit trail shows the undo.
//!
//! [`plan`] does all of that in a transaction the caller rolls back: a dry run whose steps
//! say what would happen. [`apply`] does it for real, and refuses (an
//! [`crate::Error::RevertConflicts`] carrying the plan) when a step conflicts, unless forced.
//! Forcing runs a conflicting step anyway where that means something (restore the changed
//! columns of a row that differs, delete a row that differs, overwrite a row that exists again
//! with its deleted state) and skips it where it does not (the row is gone, a TRUNCATE or
//! SNAPSHOT, a table without primary key).

mod execute;
mod statements;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::query::runner::{ROW_COLUMN, SqlRunner};
use crate::{AuditLog, Change, ChangeQuery, Context, Error, Image, JsonText, Order, Result};

pub use execute::run;

/// Which changes to revert.
#[derive(Clone, Debug, PartialEq)]
pub enum Selection {
    /// One change.
    Change(Uuid),
    /// Every change of one source transaction.
    Transaction(i64),
    /// Every change whose context contains this one (e.g. `{"request_id": "..."}`).
    Context(Context),
    /// Every change a query returns (its order is replaced by newest first).
    Query(Box<ChangeQuery>),
}

/// A revert to plan or apply.
///
/// # Examples
///
/// ```
/// use bemi_core::Context;
/// use bemi_core::revert::Revert;
///
/// let revert = Revert::context(Context::new().with("request_id", "req-42"))
///     .with_context(Context::new().with("user_id", 7));
/// assert_eq!(revert.description()["context"]["request_id"], "req-42");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Revert {
    selection: Selection,
    log: AuditLog,
    database: Option<String>,
    context: Context,
    force: bool,
}

impl Revert {
    /// Reverts one change.
    pub fn change(id: Uuid) -> Self {
        Self::new(Selection::Change(id))
    }

    /// Reverts every change of a source transaction.
    pub fn transaction(transaction_id: i64) -> Self {
        Self::new(Selection::Transaction(transaction_id))
    }

    /// Reverts every change whose context contains `context`.
    pub fn context(context: Context) -> Self {
        Self::new(Selection::Context(context))
    }

    /// Reverts every change `query` returns.
    pub fn query(query: ChangeQuery) -> Self {
        Self::new(Selection::Query(Box::new(query)))
    }

    /// Reverts `selection`.
    pub fn new(selection: Selection) -> Self {
        Self {
            selection,
            log: AuditLog::default(),
            database: None,
            context: Context::new(),
            force: false,
        }
    }

    /// Forces the revert: a step that conflicts runs anyway where that means something (restore
    /// the changed columns of a row that differs, delete a row that differs, overwrite a row that
    /// exists again) and is skipped where it does not. Refused steps are never run.
    #[must_use]
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }

    /// Whether the revert is forced (see [`Revert::force`]).
    pub fn is_forced(&self) -> bool {
        self.force
    }

    /// Reads changes from another `changes` table.
    #[must_use]
    pub fn log(mut self, log: AuditLog) -> Self {
        self.log = log;
        self
    }

    /// Only reverts changes of this source database (by default: the database the revert runs
    /// in, when the changes are read through the same connection).
    #[must_use]
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Context merged into the revert's own writes (under the `revert` key bemi adds its own).
    #[must_use]
    pub fn with_context(mut self, context: Context) -> Self {
        self.context.merge(&context);
        self
    }

    /// This revert with `base` (typically the caller's current context) under its own context:
    /// the revert's context is merged over `base`.
    #[must_use]
    pub fn under(mut self, base: &Context) -> Self {
        self.context = base.merged(&self.context);
        self
    }

    /// The selection.
    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// The source database the changes are restricted to, if set.
    pub fn database_name(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// The selection as JSON, as recorded in the context of the revert's writes
    /// (`{"change_id": ...}`, `{"transaction_id": ...}`, `{"context": {...}}` or
    /// `{"query": true}`).
    pub fn description(&self) -> Value {
        let mut description = Map::new();
        match &self.selection {
            Selection::Change(id) => {
                description.insert("change_id".into(), Value::from(id.to_string()));
            }
            Selection::Transaction(id) => {
                description.insert("transaction_id".into(), Value::from(*id));
            }
            Selection::Context(context) => {
                description.insert("context".into(), context.clone().into_value());
            }
            Selection::Query(_) => {
                description.insert("query".into(), Value::Bool(true));
            }
        }
        Value::Object(description)
    }

    /// The query reading the selected changes, newest first.
    pub fn changes_query(&self) -> ChangeQuery {
        let query = match &self.selection {
            Selection::Change(id) => ChangeQuery::new().ids([*id]),
            Selection::Transaction(id) => ChangeQuery::new().transaction_id(*id),
            Selection::Context(context) => ChangeQuery::new().context_contains(context.clone()),
            Selection::Query(query) => (**query).clone(),
        };
        let query = query.log(self.log.clone()).order(Order::NewestFirst);
        match &self.database {
            Some(database) => query.database(database.clone()),
            None => query,
        }
    }

    /// Reads the selected changes, newest first, through `destination`.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] from the runner, [`Error::InvalidRow`] for a malformed row.
    pub async fn load<R: SqlRunner>(&self, destination: &mut R) -> Result<Vec<Change>> {
        self.check()?;
        self.changes_query().fetch(destination).await
    }

    /// Refuses selections that would match every change ever stored.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidRevert`] for a selection by an empty context (`{}` is contained in every
    /// context).
    pub fn check(&self) -> Result<()> {
        match &self.selection {
            Selection::Context(context) if context.is_empty() => {
                Err(Error::InvalidRevert(
                    "a revert by context needs a non-empty context: {} matches every change ever stored"
                        .into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The context of the statement reverting `change`: the revert's context with
    /// `{"revert": {"change_id": ..., "of": <description>}}` over it.
    pub(crate) fn statement_context(&self, change: &Change) -> Context {
        let mut revert = Map::new();
        revert.insert("change_id".into(), Value::from(change.id.to_string()));
        revert.insert("of".into(), self.description());
        self.context.clone().with("revert", Value::Object(revert))
    }
}

/// How a step undoes its change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RevertAction {
    /// Delete the row a CREATE inserted.
    Delete,
    /// Set these columns back to their values before an UPDATE.
    Restore {
        /// The columns.
        columns: Vec<String>,
    },
    /// Insert again the row a DELETE removed.
    Reinsert,
    /// Overwrite an existing row with the state a DELETE removed (forced revert of a DELETE
    /// whose row exists again).
    Overwrite {
        /// The columns.
        columns: Vec<String>,
    },
    /// Nothing to do (an UPDATE that changed no column) or nothing possible (TRUNCATE,
    /// SNAPSHOT, a table without primary key).
    Nothing,
}

/// Why a change cannot be reverted cleanly.
#[derive(Clone, Debug, PartialEq)]
pub enum Conflict {
    /// The row the change left is gone.
    RowMissing,
    /// A DELETE is reverted but a row with that key exists again.
    RowExists {
        /// The row found (as PostgreSQL's `to_jsonb`).
        found: Image,
    },
    /// The row was changed since: these columns differ from the change's `after` image.
    RowDiffers {
        /// The differing columns.
        differences: Vec<Difference>,
    },
    /// The change names a table a revert must never write: not tracked by bemi now, a system
    /// table or bemi's own. Skipped even when forced.
    Refused {
        /// Why.
        reason: String,
    },
    /// The change cannot be reverted at all.
    NotRevertible {
        /// Why (a TRUNCATE, a SNAPSHOT, a table without primary key, ...).
        reason: String,
    },
}

/// A column whose current value is not the one a change left.
#[derive(Clone, Debug, PartialEq)]
pub struct Difference {
    /// The column.
    pub column: String,
    /// The value the change left (from its `after` image); `None` when the image lacks it.
    pub expected: Option<JsonText>,
    /// The value found now (as PostgreSQL's `to_jsonb`); `None` when the column is gone.
    pub found: Option<JsonText>,
}

/// What happened, or would happen, to one step.
#[derive(Clone, Debug, PartialEq)]
pub enum StepOutcome {
    /// The row is as the change left it: the statement runs (in a plan: ran and was rolled
    /// back).
    Clean,
    /// The step conflicts and was not run.
    Conflict(Conflict),
    /// The step conflicts and was run anyway (forced).
    Forced(Conflict),
    /// The step conflicts, and forcing it means nothing: skipped.
    Skipped(Conflict),
}

/// One change and how it is undone.
#[derive(Clone, Debug, PartialEq)]
pub struct RevertStep {
    /// The change reverted.
    pub change: Change,
    /// The compensating action.
    pub action: RevertAction,
    /// The compensating statement (tagged with the revert's context), when there is one; its
    /// parameters are row images as JSON text.
    pub statement: Option<String>,
    /// The outcome.
    pub outcome: StepOutcome,
}

/// The steps of a revert, newest change first.
#[derive(Clone, Debug, PartialEq)]
pub struct RevertPlan {
    steps: Vec<RevertStep>,
}

impl RevertPlan {
    /// The steps, newest change first.
    pub fn steps(&self) -> &[RevertStep] {
        &self.steps
    }

    /// The steps that conflict and were not forced.
    pub fn conflicts(&self) -> impl Iterator<Item = &RevertStep> {
        self.steps
            .iter()
            .filter(|step| matches!(step.outcome, StepOutcome::Conflict(_)))
    }

    /// Whether every step is clean.
    pub fn is_clean(&self) -> bool {
        self.steps
            .iter()
            .all(|step| step.outcome == StepOutcome::Clean)
    }
}

/// Whether a revert's statements are for real.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A dry run: conflicts are reported in the plan (the caller rolls the transaction back).
    Plan,
    /// For real: conflicts make [`run`] fail with [`Error::RevertConflicts`] (the caller rolls
    /// back) unless forced.
    Apply,
}

/// The name of the database a runner is connected to.
///
/// # Errors
///
/// [`Error::Database`] from the runner.
pub async fn current_database<R: SqlRunner>(runner: &mut R) -> Result<String> {
    let rows = runner
        .query_rows(
            &format!("SELECT pg_catalog.current_database()::text AS {ROW_COLUMN}"),
            &[],
        )
        .await?;
    Ok(rows.into_iter().flatten().next().unwrap_or_default())
}

/// A dry run of `revert` through one connection to a database that is both source and
/// destination. Must run inside a transaction, which the caller then rolls back.
///
/// # Errors
///
/// [`Error::Database`] from the runner; [`Error::RevertStep`] when a statement fails for
/// another reason than a conflict.
pub async fn plan<R: SqlRunner>(runner: &mut R, revert: &Revert) -> Result<RevertPlan> {
    let revert = with_database(runner, revert).await?;
    let changes = revert.load(runner).await?;
    run(runner, &revert, changes, Mode::Plan).await
}

/// Applies `revert` through one connection to a database that is both source and destination.
/// Must run inside a transaction, which the caller commits on success and rolls back on error.
///
/// # Errors
///
/// [`Error::RevertConflicts`] when a step conflicts and the revert is not forced
/// ([`Revert::force`]); as [`plan`] otherwise.
pub async fn apply<R: SqlRunner>(runner: &mut R, revert: &Revert) -> Result<RevertPlan> {
    let revert = with_database(runner, revert).await?;
    let changes = revert.load(runner).await?;
    run(runner, &revert, changes, Mode::Apply).await
}

/// `revert`, restricted to the runner's database unless it names one.
async fn with_database<R: SqlRunner>(runner: &mut R, revert: &Revert) -> Result<Revert> {
    if revert.database.is_some() {
        return Ok(revert.clone());
    }
    let database = current_database(runner).await?;
    Ok(revert.clone().database(database))
}

impl RevertPlan {
    pub(crate) fn new(steps: Vec<RevertStep>) -> Self {
        Self { steps }
    }
}

impl From<RevertPlan> for Error {
    fn from(plan: RevertPlan) -> Self {
        Error::RevertConflicts(Box::new(plan))
    }
}

impl std::fmt::Display for RevertAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevertAction::Delete => f.write_str("delete the row"),
            RevertAction::Restore { columns } => write!(f, "restore {}", columns.join(", ")),
            RevertAction::Reinsert => f.write_str("insert the row again"),
            RevertAction::Overwrite { .. } => {
                f.write_str("overwrite the row with its state before the DELETE")
            }
            RevertAction::Nothing => f.write_str("nothing to run"),
        }
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |value: &Option<JsonText>| {
            value
                .as_ref()
                .map_or_else(|| "nothing".to_owned(), JsonText::to_string)
        };
        match self {
            Conflict::RowMissing => f.write_str("the row no longer exists"),
            Conflict::RowExists { .. } => f.write_str("a row with this key exists again"),
            Conflict::RowDiffers { differences } => {
                f.write_str("the row changed since: ")?;
                for (index, difference) in differences.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    write!(
                        f,
                        "{} is {} (expected {})",
                        difference.column,
                        show(&difference.found),
                        show(&difference.expected)
                    )?;
                }
                Ok(())
            }
            Conflict::NotRevertible { reason } | Conflict::Refused { reason } => {
                f.write_str(reason)
            }
        }
    }
}

impl std::fmt::Display for StepOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepOutcome::Clean => f.write_str("ok"),
            StepOutcome::Conflict(conflict) => write!(f, "CONFLICT: {conflict}"),
            StepOutcome::Forced(conflict) => write!(f, "forced despite: {conflict}"),
            StepOutcome::Skipped(conflict) => write!(f, "skipped: {conflict}"),
        }
    }
}

/// One line: the change, what undoes it, and the outcome.
impl std::fmt::Display for RevertStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}.{} key {} (change {}): {}: {}",
            self.change.operation,
            self.change.schema,
            self.change.table,
            self.change.primary_key.as_deref().unwrap_or("-"),
            self.change.id,
            self.action,
            self.outcome
        )
    }
}

/// One line per step.
impl std::fmt::Display for RevertPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for step in &self.steps {
            writeln!(f, "{step}")?;
        }
        Ok(())
    }
}
