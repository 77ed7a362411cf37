//! Polls the source for the slot's lag, retained WAL and state, into [`Metrics`].

use std::sync::Arc;
use std::time::Duration;

use crate::{ConnectionOptions, Metrics};

/// Every `interval`, reads the slot `slot` on `source` (as `bemi-worker status` does) and sets
/// the slot's gauges of `metrics`: replication lag, retained WAL, WAL left before
/// `max_slot_wal_keep_size` (-1 without a limit) and whether the server invalidated the slot
/// (a slot that does not exist leaves the gauges as they were).
/// Runs until dropped; a failed poll is logged (once per failure streak) and retried on the
/// next tick over a new connection.
pub async fn watch_slot(
    source: ConnectionOptions,
    slot: String,
    metrics: Arc<Metrics>,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client: Option<tokio_postgres::Client> = None;
    let mut failing = false;
    loop {
        ticks.tick().await;
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            client = match source.connect("bemi-worker metrics").await {
                Ok(connected) => Some(connected),
                Err(error) => {
                    if !failing {
                        tracing::warn!(error = %crate::error_chain(&error), "cannot read the slot for the metrics");
                    }
                    failing = true;
                    continue;
                }
            };
        }
        let Some(connected) = &client else {
            continue;
        };
        match crate::admin::status::slot_info(connected, &slot).await {
            Ok(info) => {
                failing = false;
                // No slot yet leaves the gauges: the worker creates a missing one when it
                // starts (and `status` says so); it is not a lost slot.
                if let Some(info) = info {
                    let gauges = &metrics.slot;
                    gauges.replication_lag.set(info.lag_bytes.unwrap_or(0));
                    gauges.retained_wal.set(info.retained_bytes.unwrap_or(0));
                    gauges
                        .wal_remaining
                        .set(info.wal_remaining_bytes.unwrap_or(-1));
                    gauges
                        .lost
                        .set(i64::from(info.wal_status.as_deref() == Some("lost")));
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(error = %crate::error_chain(&error), "cannot read the slot for the metrics");
                }
                failing = true;
                client = None;
            }
        }
    }
}
