//! `bemi-worker verify`: its options and its report.

use std::process::ExitCode;

use clap::Args;

/// Recompute the seals of the stored changes and name every change deleted, edited or
/// inserted since it was sealed, and every seal that does not match.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    #[command(flatten)]
    pub(crate) common: crate::CommonArgs,
    /// Only the chain of this source database.
    #[arg(long)]
    database: Option<String>,
    /// The anchor file `run --anchor-file` appended the seals to: every anchored seal must be
    /// in the database with its hash (catches a chain rewritten whole).
    #[arg(long, env = "BEMI_ANCHOR_FILE")]
    anchor_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    anchor_nats: crate::anchor_args::AnchorNatsArgs,
}

impl VerifyArgs {
    /// Verifies and prints the report; exit 0 when everything sealed is intact, 2 otherwise.
    pub(crate) async fn run(self) -> anyhow::Result<ExitCode> {
        let (_, destination) = self.common.connections()?;
        let mut anchors = bemi_worker::seal::AnchorSources::none();
        if let Some(path) = &self.anchor_file {
            anchors = anchors.file(path);
        }
        if let Some(options) = self.anchor_nats.options() {
            anchors = anchors.nats(options);
        }
        let report = bemi_worker::verify(
            &destination,
            &self.common.changes_table,
            self.database.as_deref(),
            &anchors,
        )
        .await?;
        println!(
            "verified {} blocks: {} changes intact; {} blocks expired by retention (seals checked); \
             {} changes stored after the last seal, {} before the first; {} anchors checked",
            report.blocks,
            report.intact,
            report.expired_blocks,
            report.unsealed_after,
            report.unsealed_before,
            report.anchors
        );
        for finding in &report.findings {
            println!("TAMPERED: {finding}");
        }
        Ok(if report.is_intact() {
            println!("intact");
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        })
    }
}
