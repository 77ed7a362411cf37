//! Running a revert's steps: check each row, run or report, retry constraint failures.

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use serde_json::Value;

use super::statements::{TableShape, check_sql, delete_sql, describe_sql, insert_sql, restore_sql};
use super::{
    Conflict, Difference, Mode, Revert, RevertAction, RevertPlan, RevertStep, StepOutcome,
};
use crate::query::runner::{SqlParam, SqlRunner};
use crate::{Change, CommentEncoder, Error, Image, JsonText, Operation, QualifiedName, Result};

/// SQLSTATEs of constraint violations that another order of the statements may avoid:
/// foreign key, unique, exclusion.
const RETRYABLE: [&str; 3] = ["23503", "23505", "23P01"];

/// The savepoint around each step.
const SAVEPOINT: &str = "bemi_revert_step";

/// Runs the steps reverting `changes` (newest first) through `source`, which must be inside a
/// transaction: the caller rolls it back after [`Mode::Plan`], and after an error; commits after
/// [`Mode::Apply`] succeeded.
///
/// # Errors
///
/// [`Error::RevertConflicts`] in [`Mode::Apply`] when a step conflicts and the revert is not
/// forced;
/// [`Error::RevertStep`] when a statement fails (also after retrying it last); errors of the
/// runner.
pub async fn run<R: SqlRunner>(
    source: &mut R,
    revert: &Revert,
    changes: Vec<Change>,
    mode: Mode,
) -> Result<RevertPlan> {
    let force = revert.is_forced();
    let mut shapes: HashMap<QualifiedName, Option<TableShape>> = HashMap::new();
    let mut steps = Vec::with_capacity(changes.len());
    for change in changes {
        let table = QualifiedName::new(change.schema.clone(), change.table.clone())?;
        if !shapes.contains_key(&table) {
            let shape = describe(source, &table).await?;
            shapes.insert(table.clone(), shape);
        }
        steps.push(Pending {
            change,
            table,
            done: None,
        });
    }

    let mut pending: Vec<usize> = (0..steps.len()).collect();
    loop {
        let mut deferred = Vec::new();
        let mut blocked: HashSet<(QualifiedName, String)> = HashSet::new();
        let mut last_error = None;
        let mut progressed = false;
        for index in pending {
            let rows = steps[index].rows();
            if rows.iter().any(|row| blocked.contains(row)) {
                blocked.extend(rows);
                deferred.push(index);
                continue;
            }
            let step = &steps[index];
            let shape = shapes.get(&step.table).and_then(Option::as_ref);
            match attempt(source, revert, step, shape, force).await {
                Ok(done) => {
                    steps[index].done = Some(done);
                    progressed = true;
                }
                Err(Attempt::Retry(error)) => {
                    blocked.extend(rows);
                    deferred.push(index);
                    last_error = Some((steps[index].change.id, error));
                }
                Err(Attempt::Fail(error)) => {
                    return Err(Error::RevertStep {
                        change_id: steps[index].change.id,
                        source: Box::new(error),
                    });
                }
            }
        }
        if deferred.is_empty() {
            break;
        }
        if !progressed {
            let (change_id, error) = last_error.unwrap_or((
                steps[deferred[0]].change.id,
                Error::database(None, "no order of the statements satisfies the constraints"),
            ));
            return Err(Error::RevertStep {
                change_id,
                source: Box::new(error),
            });
        }
        pending = deferred;
    }

    let plan = RevertPlan::new(
        steps
            .into_iter()
            .map(|step| {
                let (action, statement, outcome) =
                    step.done
                        .unwrap_or((RevertAction::Nothing, None, StepOutcome::Clean));
                RevertStep {
                    change: step.change,
                    action,
                    statement,
                    outcome,
                }
            })
            .collect(),
    );
    if mode == Mode::Apply && plan.conflicts().next().is_some() {
        return Err(plan.into());
    }
    Ok(plan)
}

/// A step being worked on.
struct Pending {
    change: Change,
    table: QualifiedName,
    done: Option<(RevertAction, Option<String>, StepOutcome)>,
}

impl Pending {
    /// The rows (table, key) the step touches.
    fn rows(&self) -> Vec<(QualifiedName, String)> {
        [&self.change.primary_key, &self.change.previous_primary_key]
            .into_iter()
            .flatten()
            .map(|key| (self.table.clone(), key.clone()))
            .collect()
    }
}

/// Why an attempt did not finish.
enum Attempt {
    /// A constraint violation another order may avoid: retried after the other steps.
    Retry(Error),
    /// Anything else.
    Fail(Error),
}

/// The table's key and columns, `None` when it does not exist.
async fn describe<R: SqlRunner>(
    source: &mut R,
    table: &QualifiedName,
) -> Result<Option<TableShape>> {
    let (sql, params) = describe_sql(table);
    let rows = source.query_rows(&sql, &params).await?;
    rows.into_iter()
        .flatten()
        .next()
        .map(|row| {
            serde_json::from_str(&row).map_err(|source| Error::InvalidRow {
                what: "a table description",
                source,
            })
        })
        .transpose()
}

/// Runs one step inside a savepoint.
async fn attempt<R: SqlRunner>(
    source: &mut R,
    revert: &Revert,
    step: &Pending,
    shape: Option<&TableShape>,
    force: bool,
) -> Result<(RevertAction, Option<String>, StepOutcome), Attempt> {
    let change = &step.change;
    let not_revertible = |reason: String| {
        let conflict = Conflict::NotRevertible { reason };
        let outcome = if force {
            StepOutcome::Skipped(conflict)
        } else {
            StepOutcome::Conflict(conflict)
        };
        Ok((RevertAction::Nothing, None, outcome))
    };
    match change.operation {
        Operation::Truncate => return not_revertible("a TRUNCATE cannot be reverted".into()),
        Operation::Snapshot => {
            return not_revertible("a SNAPSHOT records a row, it changed nothing".into());
        }
        Operation::Ddl => {
            return not_revertible("a change of a table's shape (DDL) cannot be reverted".into());
        }
        Operation::Create => {}
        Operation::Update | Operation::Delete => {
            if has_incomplete_before(change) {
                return not_revertible(
                    "the row before the change was recorded with its key only (the table's \
                     REPLICA IDENTITY was not FULL): there is nothing to restore from"
                        .into(),
                );
            }
        }
    }
    if let Some(shape) = shape {
        let refused = if shape.system {
            Some(format!(
                "table {} belongs to the system or to bemi: a revert never writes there",
                step.table
            ))
        } else if !shape.tracked {
            Some(format!(
                "table {} is not tracked by bemi now (no context trigger or not published): a \
                 revert writes only to tracked tables",
                step.table
            ))
        } else {
            None
        };
        if let Some(reason) = refused {
            // Never run, forced or not: the changes table is writable by the worker's role, so
            // its rows are not proof that a table is the application's.
            let conflict = Conflict::Refused { reason };
            let outcome = if force {
                StepOutcome::Skipped(conflict)
            } else {
                StepOutcome::Conflict(conflict)
            };
            return Ok((RevertAction::Nothing, None, outcome));
        }
    }
    let Some(shape) = shape.filter(|shape| !shape.key.is_empty()) else {
        return not_revertible(format!(
            "table {} has no primary key or no longer exists",
            step.table
        ));
    };
    source
        .execute(&format!("SAVEPOINT {SAVEPOINT}"), &[])
        .await
        .map_err(Attempt::Fail)?;
    match check_and_act(source, revert, step, shape, force).await {
        Ok(done) => {
            source
                .execute(&format!("RELEASE SAVEPOINT {SAVEPOINT}"), &[])
                .await
                .map_err(Attempt::Fail)?;
            Ok(done)
        }
        Err(error) => {
            let retry = error
                .sqlstate()
                .is_some_and(|code| RETRYABLE.contains(&code));
            if !retry {
                return Err(Attempt::Fail(error));
            }
            source
                .execute(&format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}"), &[])
                .await
                .map_err(Attempt::Fail)?;
            source
                .execute(&format!("RELEASE SAVEPOINT {SAVEPOINT}"), &[])
                .await
                .map_err(Attempt::Fail)?;
            Err(Attempt::Retry(error))
        }
    }
}

/// The row found by a check, and the change's image typed the same way.
#[derive(Deserialize)]
struct Checked {
    found: Image,
    expected: Image,
}

/// Checks the row, decides, and runs the compensating statement when it should run.
async fn check_and_act<R: SqlRunner>(
    source: &mut R,
    revert: &Revert,
    step: &Pending,
    shape: &TableShape,
    force: bool,
) -> Result<(RevertAction, Option<String>, StepOutcome)> {
    let change = &step.change;
    let table = &step.table;
    let image = |image: &Image| Some(image.to_json());
    // Columns that exist now and whose value the change knows (not redacted by the worker).
    let writable = |columns: Vec<&str>| -> Vec<String> {
        columns
            .into_iter()
            .filter(|column| shape.columns.iter().any(|existing| existing == column))
            .filter(|column| !is_redacted(change.before.get(column)))
            .filter(|column| !is_redacted(change.after.get(column)))
            .map(str::to_owned)
            .collect()
    };
    let located = match change.operation {
        Operation::Delete => &change.before,
        _ => &change.after,
    };
    let rows = source
        .query_rows(&check_sql(table, shape)?, &[image(located)])
        .await?;
    let checked: Option<Checked> = rows
        .into_iter()
        .flatten()
        .next()
        .map(|row| {
            serde_json::from_str(&row).map_err(|source| Error::InvalidRow {
                what: "a row check",
                source,
            })
        })
        .transpose()?;

    let conflict = match (&change.operation, &checked) {
        (Operation::Delete, None) => None,
        (Operation::Delete, Some(checked)) => Some(Conflict::RowExists {
            found: checked.found.clone(),
        }),
        (_, None) => Some(Conflict::RowMissing),
        (_, Some(checked)) => {
            let differences = differences(&change.after, checked);
            (!differences.is_empty()).then_some(Conflict::RowDiffers { differences })
        }
    };

    // (action, statement, parameters) when something should run.
    let before_columns = || writable(change.before.columns().collect());
    let planned: Option<(RevertAction, String, Vec<SqlParam>)> =
        match (&change.operation, &conflict) {
            (_, Some(Conflict::RowMissing)) => None,
            (Operation::Create, _) => Some((
                RevertAction::Delete,
                delete_sql(table, shape)?,
                vec![image(&change.after)],
            )),
            (Operation::Update, _) => {
                let columns = writable(change.changed_fields());
                if columns.is_empty() {
                    None
                } else {
                    Some((
                        RevertAction::Restore {
                            columns: columns.clone(),
                        },
                        restore_sql(table, shape, &columns)?,
                        vec![image(&change.after), image(&change.before)],
                    ))
                }
            }
            (Operation::Delete, Some(Conflict::RowExists { .. })) => {
                let columns = before_columns();
                Some((
                    RevertAction::Overwrite {
                        columns: columns.clone(),
                    },
                    restore_sql(table, shape, &columns)?,
                    vec![image(&change.before), image(&change.before)],
                ))
            }
            (Operation::Delete, _) => Some((
                RevertAction::Reinsert,
                insert_sql(table, &before_columns())?,
                vec![image(&change.before)],
            )),
            (Operation::Truncate | Operation::Snapshot | Operation::Ddl, _) => None,
        };

    let Some((action, sql, params)) = planned else {
        let outcome = match conflict {
            None => StepOutcome::Clean,
            Some(conflict) if force => StepOutcome::Skipped(conflict),
            Some(conflict) => StepOutcome::Conflict(conflict),
        };
        return Ok((RevertAction::Nothing, None, outcome));
    };
    let statement = CommentEncoder::default()
        .tag(&sql, &revert.statement_context(change))
        .into_owned();
    let outcome = match conflict {
        None => StepOutcome::Clean,
        Some(conflict) if force => StepOutcome::Forced(conflict),
        Some(conflict) => return Ok((action, Some(statement), StepOutcome::Conflict(conflict))),
    };
    let affected = source.execute(&statement, &params).await?;
    if affected != 1 {
        return Err(Error::database(
            None,
            format!("the compensating statement affected {affected} rows instead of 1"),
        ));
    }
    Ok((action, Some(statement), outcome))
}

/// The columns of the change's `after` image whose current value differs.
fn differences(after: &Image, checked: &Checked) -> Vec<Difference> {
    let mut differences: Vec<Difference> = after
        .iter()
        .filter(|(_, value)| !is_redacted(Some(value)))
        .filter_map(|(column, value)| {
            let found = checked.found.get(column);
            let same = found.is_some() && found == checked.expected.get(column);
            (!same).then(|| Difference {
                column: column.to_owned(),
                expected: Some(value.clone()),
                found: found.cloned(),
            })
        })
        .collect();
    differences.sort_by(|a, b| a.column.cmp(&b.column));
    differences
}

/// Whether the worker marked the change's `before` image incomplete (`_bemi.incomplete`).
fn has_incomplete_before(change: &Change) -> bool {
    change
        .context
        .get(crate::MARKER_KEY)
        .and_then(|marker| marker.get("incomplete"))
        .and_then(Value::as_array)
        .is_some_and(|images| images.iter().any(|image| image == "before"))
}

/// Whether a stored value is the worker's redaction marker or what erasure left of a personal
/// value: its real value is unknown, so it is neither compared nor written back.
fn is_redacted(value: Option<&JsonText>) -> bool {
    value.is_some_and(|value| {
        value
            .parse::<String>()
            .is_ok_and(|text| text == crate::REDACTED)
            || value
                .parse::<Value>()
                .is_ok_and(|value| crate::is_erased(&value))
    })
}
