//! `bemi-worker console`: its options and how it starts.

use std::net::SocketAddr;

use anyhow::Context as _;
use bemi_core::QualifiedName;
use bemi_worker::console::ConsoleConfig;
use clap::Args;

/// Serve the console, a web UI over the trail.
#[derive(Debug, Args)]
pub(crate) struct ConsoleArgs {
    /// Where to listen. An address other than loopback needs BEMI_CONSOLE_TOKEN.
    #[arg(long, env = "BEMI_CONSOLE_LISTEN", default_value = "127.0.0.1:7777")]
    listen: SocketAddr,
    /// The database holding the changes table (a read-only role is enough; without it,
    /// DATABASE_URL).
    #[command(flatten)]
    destination: crate::DestinationArgs,
    /// The source database: the health page reads the slot there; also the destination when
    /// none is given.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The replication slot, for the health page.
    #[arg(long, env = "BEMI_SLOT", default_value = bemi_core::setup::DEFAULT_SLOT)]
    slot: String,
    /// The header an authenticating proxy sets to the signed-in user (e.g. X-Forwarded-User):
    /// required on every request; allows an address other than loopback. Only when the proxy
    /// is the one way in.
    #[arg(long, env = "BEMI_CONSOLE_USER_HEADER")]
    trusted_user_header: Option<String>,
    /// The changes table, `schema.table`.
    #[arg(long, env = "BEMI_CHANGES_TABLE", default_value = "bemi.changes")]
    changes_table: QualifiedName,
    /// Let users apply a revert (after its plan and a confirmation). Plans and reverts need
    /// --database-url with a role that may write the tracked tables.
    #[arg(long, env = "BEMI_CONSOLE_ALLOW_REVERT")]
    allow_revert: bool,
}

impl ConsoleArgs {
    /// Serves until `shutdown` completes.
    pub(crate) async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let destination = crate::connection_options(
            self.destination
                .destination_url
                .as_deref()
                .or(self.database_url.as_deref()),
            self.destination.destination_url_file.as_deref(),
        )?
        .context(
            "the database holding the changes table is required: --destination-url, \
             --destination-url-file or DATABASE_URL",
        )?;
        let token = std::env::var("BEMI_CONSOLE_TOKEN")
            .ok()
            .filter(|token| !token.is_empty());
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {} for the console", self.listen))?;
        let address = listener
            .local_addr()
            .with_context(|| format!("cannot listen on {} for the console", self.listen))?;
        tracing::info!(%address, destination = %destination, "serving the console");
        let source = crate::connection_options(self.database_url.as_deref(), None)?;
        let config = ConsoleConfig {
            destination,
            changes_table: self.changes_table,
            token,
            user_header: self.trusted_user_header,
            source,
            slot: self.slot,
            allow_revert: self.allow_revert,
        };
        bemi_worker::console::serve(listener, config, shutdown).await?;
        Ok(())
    }
}
