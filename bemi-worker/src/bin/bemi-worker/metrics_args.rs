//! `--metrics-listen` and its companions, shared by `run`, `capture` and `ingest`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bemi_worker::ops::Readiness;
use bemi_worker::{ConnectionOptions, Metrics};
use clap::Args;

use crate::ByteSize;

/// Prometheus metrics and health endpoints.
#[derive(Debug, Args)]
pub(crate) struct MetricsArgs {
    /// Serve Prometheus metrics on `/metrics`, and `/healthz` and `/readyz`, at this address
    /// (e.g. `127.0.0.1:9187`; port 0 picks a free one, logged at start).
    #[arg(long, env = "BEMI_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// The most WAL the worker may be behind and still be ready (`/readyz`): bytes, or with a
    /// unit (`64MiB`, `1GB`).
    #[arg(long, env = "BEMI_READY_MAX_LAG", default_value = "1GiB")]
    ready_max_lag: ByteSize,
    /// How often the slot's lag and retained WAL are read from the source for the metrics, in
    /// seconds.
    #[arg(long, env = "BEMI_SLOT_POLL_SECONDS", default_value_t = 10)]
    slot_poll_seconds: u64,
}

impl MetricsArgs {
    /// Starts serving `metrics` when asked (and, given the source and slot, polling the slot),
    /// in the background for the life of the process.
    ///
    /// # Errors
    ///
    /// The address cannot be listened on.
    pub(crate) async fn start(
        &self,
        metrics: &Arc<Metrics>,
        slot: Option<(ConnectionOptions, String)>,
    ) -> anyhow::Result<()> {
        let Some(address) = self.metrics_listen else {
            return Ok(());
        };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} for --metrics-listen"))?;
        let bound = listener
            .local_addr()
            .with_context(|| format!("cannot listen on {address} for --metrics-listen"))?;
        tracing::info!(address = %bound, "serving metrics on /metrics, /healthz, /readyz");
        let readiness = Readiness {
            max_lag_bytes: self.ready_max_lag.0,
        };
        let served = Arc::clone(metrics);
        tokio::spawn(async move {
            let never = std::future::pending::<()>();
            if let Err(error) = bemi_worker::ops::serve(listener, served, readiness, never).await {
                tracing::error!(error = %bemi_worker::error_chain(&error), "serving metrics stopped");
            }
        });
        if let Some((source, slot)) = slot {
            tokio::spawn(bemi_worker::ops::watch_slot(
                source,
                slot,
                Arc::clone(metrics),
                Duration::from_secs(self.slot_poll_seconds.max(1)),
            ));
        }
        Ok(())
    }
}
