//! The `revert` command: conflict-aware undo of changes, with the source and the `changes` table
//! possibly in different databases.

use bemi_core::revert::{Mode, Revert, RevertPlan, current_database, run};
use bemi_core::{AuditLog, Context, QualifiedName};

use crate::{ConnectionOptions, Error, Result};
use bemi_core::TokioPostgresRunner;

/// Plans (`dry_run`) or applies a revert: reads the selected changes from `changes_table` in
/// `destination`, then runs the compensating statements in one transaction of `source`
/// (rolled back for a dry run). Only changes of the source database are selected. The revert's
/// writes carry the reverted change in their context, and `{"tool": "bemi-worker revert"}`
/// unless `revert`'s own context names another tool ([`Revert::with_context`]).
///
/// # Errors
///
/// [`Error::Core`] with [`bemi_core::Error::RevertConflicts`] when a step conflicts, the run is
/// not `dry_run` and the revert is not forced ([`Revert::force`]; nothing is changed), other
/// revert and connection errors.
pub async fn revert(
    source: &ConnectionOptions,
    destination: &ConnectionOptions,
    changes_table: &QualifiedName,
    revert: Revert,
    dry_run: bool,
) -> Result<RevertPlan> {
    let destination_client = destination.connect("bemi-worker revert").await?;
    let mut source_client = source.connect("bemi-worker revert").await?;
    let database = current_database(&mut TokioPostgresRunner(&source_client)).await?;
    let revert = revert
        .log(AuditLog::new(changes_table.clone()))
        .database(database)
        .under(&Context::new().with("tool", "bemi-worker revert"));
    let changes = revert
        .load(&mut TokioPostgresRunner(&destination_client))
        .await?;
    let transaction = source_client
        .transaction()
        .await
        .map_err(Error::postgres("begin the revert transaction"))?;
    let mode = if dry_run { Mode::Plan } else { Mode::Apply };
    let plan = run(
        &mut TokioPostgresRunner(&transaction),
        &revert,
        changes,
        mode,
    )
    .await?;
    if dry_run {
        transaction
            .rollback()
            .await
            .map_err(Error::postgres("roll back the dry run"))?;
    } else {
        transaction
            .commit()
            .await
            .map_err(Error::postgres("commit the revert"))?;
    }
    Ok(plan)
}
