//! `bemi-worker erase`: its options and its report.

use std::process::ExitCode;
use std::time::Duration;

use bemi_core::QualifiedName;
use bemi_worker::{ErasureOutcome, ErasureRequest};
use clap::Args;

/// Erase a subject's personal values (columns and context keys declared personal) from every
/// stored change, keeping the seals valid: writes a request into the source's
/// bemi.erasure_requests, which the worker carries out where its stream reaches it, and waits
/// for it (exit 3 when the wait ends first: the worker carries it out later).
#[derive(Debug, Args)]
pub(crate) struct EraseArgs {
    #[command(flatten)]
    pub(crate) common: crate::CommonArgs,
    /// The subject's table (`users` or `schema.table`).
    #[arg(long)]
    table: String,
    /// The subject's primary key as the changes table stores it (`42`, or `["7","eu"]` for a
    /// composite key).
    #[arg(long)]
    key: String,
    /// Why (a ticket, a legal basis): stored with the erasure.
    #[arg(long)]
    reason: String,
    /// The context key that names the subject as the author of changes (e.g. `user_id`): the
    /// personal context values of the changes whose context names it are erased too.
    #[arg(long)]
    context_key: Option<String>,
    /// Who asks, recorded in the request's context (the database role is recorded anyway).
    #[arg(long, env = "BEMI_OPERATOR")]
    operator: Option<String>,
    /// Erase even where a legal hold in force covers the subject's changes (the holds are
    /// named in the request's context).
    #[arg(long)]
    despite_hold: bool,
    /// How long to wait for the worker, in seconds.
    #[arg(long, default_value_t = 60)]
    wait_seconds: u64,
}

impl EraseArgs {
    /// Requests the erasure and prints what became of it.
    pub(crate) async fn run(self) -> anyhow::Result<ExitCode> {
        let (source, destination) = self.common.connections()?;
        let table = match self.table.split_once('.') {
            Some((schema, table)) => QualifiedName::new(schema, table)?,
            None => QualifiedName::new("public", &self.table)?,
        };
        let mut request = ErasureRequest::new(table.clone(), self.key.clone(), self.reason);
        if let Some(context_key) = self.context_key {
            request = request.context_key(context_key);
        }
        if let Some(operator) = self.operator {
            request = request.operator(operator);
        }
        if self.despite_hold {
            request = request.despite_holds();
        }
        let outcome = bemi_worker::request_erasure(
            &source,
            &destination,
            &self.common.changes_table,
            &request,
            Duration::from_secs(self.wait_seconds),
        )
        .await?;
        Ok(match outcome {
            ErasureOutcome::Erased {
                request_id,
                changes,
                erased_at,
                vacuumed,
                not_vacuumed,
                ..
            } => {
                println!(
                    "erased {table} {}: personal values removed from {changes} stored changes at {erased_at} (request {request_id}); the seals still verify",
                    self.key
                );
                if !vacuumed.is_empty() {
                    println!("vacuumed {}", vacuumed.join(", "));
                }
                for (partition, why) in &not_vacuumed {
                    println!(
                        "not vacuumed {partition} ({why}): run VACUUM {partition} as its owner to remove the old row versions"
                    );
                }
                ExitCode::SUCCESS
            }
            ErasureOutcome::Pending { request_id } => {
                println!(
                    "requested (request {request_id}), not carried out yet: the worker erases the values when its stream reaches the request"
                );
                ExitCode::from(3)
            }
            _ => ExitCode::FAILURE,
        })
    }
}
