//! Waiting for a condition with a deadline, instead of sleeping a fixed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `condition` until it returns `Some`, and returns that value.
///
/// # Panics
///
/// When `timeout` passes first; the message names `what` was awaited (formatted only then, so
/// it may gather diagnostics such as process logs).
pub fn wait_until<T>(
    what: impl std::fmt::Display,
    timeout: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Polls the async `condition` until it returns `Some`, and returns that value.
///
/// # Panics
///
/// When `timeout` passes first; the message names `what` was awaited (formatted only then).
pub async fn wait_until_async<T, F, Fut>(
    what: impl std::fmt::Display,
    timeout: Duration,
    mut condition: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until replication slot `slot` has confirmed the server's WAL position at the time of
/// the call: every change written before is then processed and stored by the worker streaming
/// from it, so what is not stored by then never will be (the barrier for checks of absence,
/// instead of a sleep).
///
/// # Panics
///
/// When `timeout` passes first, or a query fails.
pub async fn wait_for_slot_to_catch_up(
    client: &tokio_postgres::Client,
    slot: &str,
    timeout: Duration,
) {
    let target: String = client
        .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
        .await
        .expect("read the current WAL position")
        .get(0);
    wait_until_async(
        &format!("slot {slot} to confirm {target}"),
        timeout,
        || async {
            let done: Option<bool> = client
                .query_one(
                    "SELECT confirmed_flush_lsn >= $2::text::pg_lsn \
                 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                    &[&slot, &target],
                )
                .await
                .expect("read the slot's confirmed position")
                .get(0);
            (done == Some(true)).then_some(())
        },
    )
    .await;
}
