//! `bemi-worker verify`: its options and its report.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::Args;
use clap::builder::TypedValueParser;

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
    /// Only the blocks holding changes committed from this time (`2026-11-01`: its start, or an
    /// RFC 3339 time); every seal is still checked against its header and chained.
    #[arg(long, value_parser = crate::time_args::start_of)]
    from: Option<DateTime<Utc>>,
    /// Only the blocks holding changes committed up to this time (`2026-11-30`: its end, or an
    /// RFC 3339 time).
    #[arg(long, value_parser = crate::time_args::end_of)]
    to: Option<DateTime<Utc>>,
    /// How many connections read the changes at once, in one snapshot.
    #[arg(long, default_value_t = bemi_worker::seal::DEFAULT_READERS, value_parser = clap::value_parser!(u16).range(1..=64).map(usize::from))]
    readers: usize,
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
        let mut options = bemi_worker::VerifyOptions::new()
            .anchors(anchors)
            .readers(self.readers);
        if let Some(database) = self.database {
            options = options.database(database);
        }
        if let Some(from) = self.from {
            options = options.from(from);
        }
        if let Some(to) = self.to {
            options = options.to(to);
        }
        let report =
            bemi_worker::verify(&destination, &self.common.changes_table, &options).await?;
        println!(
            "verified {} blocks: {} changes intact; {} blocks expired by retention (seals checked); \
             {} blocks outside --from/--to (seals checked, changes not read); \
             {} changes stored after the last seal, {} before the first; {} anchors checked",
            report.blocks,
            report.intact,
            report.expired_blocks,
            report.outside_range,
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
