//! `/metrics`, `/healthz` and `/readyz` over HTTP, for Prometheus and orchestrators.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::{Error, Metrics, Result};

/// What `/readyz` requires besides a streaming session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// The most WAL the worker may be behind the source and still be ready, in bytes (the lag
    /// as [`watch_slot`](crate::ops::watch_slot) last polled it; not checked before the first
    /// poll, nor for an ingest process, which has no slot).
    pub max_lag_bytes: i64,
}

#[derive(Clone)]
struct Served {
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

/// Serves on `listener`, until `shutdown` completes:
///
/// - `/metrics`: [`Metrics::encode`], as OpenMetrics text (which Prometheus reads);
/// - `/healthz`: 200 while the process runs (its event loop answers);
/// - `/readyz`: 200 when a session streams and the lag is within [`Readiness`], 503 with the
///   reason otherwise.
///
/// # Errors
///
/// [`Error::Io`] when serving fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Served { metrics, readiness });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::Io {
            action: "serve metrics".into(),
            source,
        })
}

async fn metrics_text(State(served): State<Served>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        served.metrics.encode(),
    )
}

async fn ready(State(served): State<Served>) -> (StatusCode, String) {
    if !served.metrics.is_streaming() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not streaming: connecting or reconnecting\n".to_owned(),
        );
    }
    match served.metrics.replication_lag_bytes() {
        Some(lag) if lag > served.readiness.max_lag_bytes => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{lag} bytes of WAL behind (ready up to {})\n",
                served.readiness.max_lag_bytes
            ),
        ),
        _ => (StatusCode::OK, "ready\n".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn readiness(metrics: &Arc<Metrics>, max_lag_bytes: i64) -> StatusCode {
        ready(State(Served {
            metrics: Arc::clone(metrics),
            readiness: Readiness { max_lag_bytes },
        }))
        .await
        .0
    }

    #[tokio::test]
    async fn ready_only_while_streaming_within_the_lag() {
        let metrics = Arc::new(Metrics::default());
        assert_eq!(
            readiness(&metrics, 1_000).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        metrics.set_streaming(true);
        // Before the slot was polled: streaming is enough.
        assert_eq!(readiness(&metrics, 1_000).await, StatusCode::OK);
        metrics.confirmed(16);
        metrics.slot.replication_lag.set(5_000);
        assert_eq!(
            readiness(&metrics, 1_000).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(readiness(&metrics, 5_000).await, StatusCode::OK);
        metrics.session_failed(crate::ErrorKind::Transient);
        assert_eq!(
            readiness(&metrics, 5_000).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let text = metrics.encode();
        assert!(
            text.contains("bemi_errors_total{kind=\"transient\"} 1"),
            "{text}"
        );
    }
}
