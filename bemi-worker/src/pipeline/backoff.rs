//! The capped exponential backoff between reconnection attempts of `run`/`capture` and `ingest`.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// The first wait, and the wait again after a session made progress.
const FIRST: Duration = Duration::from_millis(200);

/// Waits between attempts: 200 ms, doubling up to a maximum.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff doubling up to `max`.
    pub(crate) fn new(max: Duration) -> Self {
        Self { next: FIRST, max }
    }

    /// Starts over from the first wait (the last session made progress).
    pub(crate) fn reset(&mut self) {
        self.next = FIRST;
    }

    /// The wait before the next attempt.
    pub(crate) fn delay(&self) -> Duration {
        self.next
    }

    /// Waits [`Backoff::delay`] and doubles it; returns `false` when `shutdown` completed first.
    pub(crate) async fn wait<F: Future<Output = ()>>(&mut self, shutdown: Pin<&mut F>) -> bool {
        let waited = tokio::select! {
            () = shutdown => false,
            () = tokio::time::sleep(self.next) => true,
        };
        self.next = (self.next * 2).min(self.max);
        waited
    }
}
