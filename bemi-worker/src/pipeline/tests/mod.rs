//! The stream state machine and the store task over in-memory ports (`fakes`): what is
//! confirmed is stored, batches are cut at their limits, keepalives confirm only an idle
//! stream, and a session failing at any write is followed by one that stores the rest exactly
//! once. Milliseconds each; the real-process tests (`bemi-worker/tests`) stay beside them.

mod fakes;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationEvent};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::change_row::ChangeRow;
use crate::pipeline::progress::Progress;
use crate::pipeline::stream::{Stream, StreamStart};
use crate::pipeline::{Metrics, Stored, WorkerConfig};
use crate::{ConnectionOptions, Result};
use fakes::{
    Failure, FaultySink, Ledger, MessageOnlyCatalog, ScriptedSource, Transaction, events,
    transactions,
};

/// A configuration that never connects anywhere.
fn config(batch_size: usize, batch_bytes: usize, flush_interval: Duration) -> WorkerConfig {
    let source = ConnectionOptions::parse("postgres://bemi@127.0.0.1:1/app")
        .unwrap_or_else(|error| panic!("a test URL: {error}"));
    let mut config = WorkerConfig::new(source);
    config.batch_size = batch_size;
    config.batch_bytes = batch_bytes;
    config.flush_interval = flush_interval;
    config.log_interval = Duration::from_secs(3_600);
    config
}

/// How a session ended: the stream's result and the store task's.
struct Ended {
    streamed: Result<()>,
    stored: Result<Stored>,
}

/// Runs one session (stream and store task) from `progress` until `body` completes (then it
/// shuts down as on SIGTERM) or the session fails, with `config.writers` clones of `sink`.
/// `body` gets the feed of the source and a receiver of how many events the stream has
/// handled.
async fn session<B, F>(
    config: &WorkerConfig,
    ledger: &Ledger,
    sink: FaultySink,
    progress: Option<Progress>,
    body: B,
) -> Ended
where
    B: FnOnce(mpsc::UnboundedSender<ReplicationEvent>, watch::Receiver<usize>) -> F,
    F: Future<Output = ()>,
{
    let metrics = Arc::new(Metrics::default());
    let (source, feed, handled) = ScriptedSource::new(ledger);
    let start = StreamStart {
        progress,
        recorded_shapes: HashMap::new(),
        newest_xid: 10_000,
        database: "app".to_owned(),
        source_id: "test-cluster".to_owned(),
    };
    let writers = vec![sink; config.writers.max(1)];
    let (mut stream, store_task) =
        Stream::start(config, &metrics, source, MessageOnlyCatalog, writers, start);
    let shutdown = std::pin::pin!(body(feed, handled));
    let streamed = stream.run(shutdown).await;
    drop(stream);
    let stored = store_task
        .await
        .unwrap_or_else(|error| panic!("the store task panicked: {error}"));
    Ended { streamed, stored }
}

/// Runs one session over `script` with a sink that never fails, until the last transaction is
/// confirmed; checks that it ended cleanly.
async fn run_to_the_end(config: &WorkerConfig, ledger: &Ledger, script: &[Transaction]) {
    let end = script.last().map_or(0, |transaction| transaction.end_lsn);
    let ended = session(config, ledger, FaultySink::new(ledger), None, |feed, _| {
        let ledger = ledger.clone();
        async move {
            feed_all(&feed, script);
            ledger
                .wait_for(|state| state.confirmed.contains(&end))
                .await;
        }
    })
    .await;
    assert!(ended.streamed.is_ok() && ended.stored.is_ok());
}

/// Feeds every event of `script`.
fn feed_all(feed: &mpsc::UnboundedSender<ReplicationEvent>, script: &[Transaction]) -> usize {
    let mut count = 0;
    for transaction in script {
        for event in events(transaction) {
            count += 1;
            feed.send(event)
                .unwrap_or_else(|_| panic!("the source is gone"));
        }
    }
    count
}

/// Waits until the stream has handled `count` events (it asked for the next one).
async fn handled(handled: &mut watch::Receiver<usize>, count: usize) {
    handled
        .wait_for(|&seen| seen >= count)
        .await
        .unwrap_or_else(|_| panic!("the source is gone"));
}

fn keepalive(wal_end: u64) -> ReplicationEvent {
    ReplicationEvent::KeepAlive {
        wal_end: Lsn::from_u64(wal_end),
        reply_requested: false,
        server_time_micros: 0,
    }
}

/// Bounds a test: a pipeline that stops making progress fails instead of hanging.
async fn within<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), test)
        .await
        .unwrap_or_else(|_| panic!("the pipeline stalled"))
}

fn assert_kept_promises(ledger: &Ledger) {
    let state = ledger.state();
    assert!(state.violations.is_empty(), "{:#?}", state.violations);
    assert!(
        state.confirmed.windows(2).all(|pair| pair[0] <= pair[1]),
        "confirmations went backwards: {:?}",
        state.confirmed
    );
}

#[tokio::test]
async fn confirms_only_what_is_stored() {
    within(async {
        let script = transactions(&[3, 1], 10);
        let ledger = Ledger::new(script.clone());
        let config = config(2, 1 << 20, Duration::from_millis(5));
        let gate = Arc::new(Semaphore::new(0));
        let mut sink = FaultySink::new(&ledger);
        sink.gate = Some(Arc::clone(&gate));
        let last_end = script[1].end_lsn;
        let ended = session(&config, &ledger, sink, None, |feed, mut seen| {
            let ledger = ledger.clone();
            async move {
                let count = feed_all(&feed, &script);
                feed.send(keepalive(5_000)).ok();
                handled(&mut seen, count + 1).await;
                // Everything was read, nothing is durable: nothing may be confirmed, not
                // even by the keepalive.
                assert!(ledger.state().confirmed.is_empty());
                assert!(ledger.state().stored.is_empty());
                gate.add_permits(100);
                ledger
                    .wait_for(|state| state.confirmed.contains(&last_end))
                    .await;
                // Idle now: a keepalive confirms the server's position.
                feed.send(keepalive(5_000)).ok();
                ledger
                    .wait_for(|state| state.confirmed.contains(&5_000))
                    .await;
            }
        })
        .await;
        assert!(ended.streamed.is_ok() && ended.stored.is_ok());
        assert_eq!(ledger.state().stored.len(), 4);
        assert_kept_promises(&ledger);
    })
    .await;
}

#[tokio::test]
async fn keepalives_inside_a_transaction_or_before_storing_confirm_nothing() {
    within(async {
        let script = transactions(&[1, 2], 10);
        let ledger = Ledger::new(script.clone());
        let config = config(5_000, 1 << 20, Duration::from_millis(1));
        let gate = Arc::new(Semaphore::new(0));
        let mut sink = FaultySink::new(&ledger);
        sink.gate = Some(Arc::clone(&gate));
        let ended = session(&config, &ledger, sink, None, |feed, mut seen| {
            let ledger = ledger.clone();
            async move {
                let mut count = 0;
                for event in events(&script[0]) {
                    feed.send(event).ok();
                    count += 1;
                }
                // The first transaction's batch waits at the gate.
                feed.send(keepalive(1_990)).ok();
                count += 1;
                handled(&mut seen, count).await;
                assert!(ledger.state().confirmed.is_empty());
                // A keepalive in the middle of the second transaction.
                let mut second = events(&script[1]);
                let commit = second.pop();
                for event in second {
                    feed.send(event).ok();
                    count += 1;
                }
                feed.send(keepalive(2_990)).ok();
                count += 1;
                handled(&mut seen, count).await;
                // Everything read is stored now, the second transaction's rows too.
                gate.add_permits(100);
                ledger.wait_for(|state| state.stored.len() == 3).await;
                ledger
                    .wait_for(|state| state.confirmed.contains(&script[0].end_lsn))
                    .await;
                // The second transaction is still open: its position is not confirmed.
                feed.send(keepalive(2_995)).ok();
                count += 1;
                handled(&mut seen, count).await;
                assert!(ledger.confirmed() < script[1].commit_lsn);
                if let Some(commit) = commit {
                    feed.send(commit).ok();
                }
                ledger
                    .wait_for(|state| state.confirmed.contains(&script[1].end_lsn))
                    .await;
            }
        })
        .await;
        assert!(ended.streamed.is_ok() && ended.stored.is_ok());
        assert_eq!(ledger.state().stored.len(), 3);
        assert_kept_promises(&ledger);
    })
    .await;
}

#[tokio::test]
async fn batches_are_cut_at_the_row_limit() {
    within(async {
        let script = transactions(&[7], 10);
        let ledger = Ledger::new(script.clone());
        let config = config(3, 1 << 20, Duration::from_millis(1));
        run_to_the_end(&config, &ledger, &script).await;
        // The last batch carries the seventh row and the commit.
        assert_eq!(ledger.state().batches, vec![3, 3, 1]);
        assert_kept_promises(&ledger);
    })
    .await;
}

#[tokio::test]
async fn batches_are_cut_when_they_reach_the_byte_limit() {
    within(async {
        let script = transactions(&[6], 600);
        let ledger = Ledger::new(script.clone());
        let limit = 1_500;
        let config = config(5_000, limit, Duration::from_millis(1));
        run_to_the_end(&config, &ledger, &script).await;
        let state = ledger.state();
        assert!(state.batches.len() > 1, "{:?}", state.batches);
        // Every batch is stored as soon as it reaches the limit: without its last row it
        // was under it.
        let mut rows = state.stored.iter();
        for &count in state.batches.iter().filter(|&&count| count > 0) {
            let sizes: Vec<usize> = rows.by_ref().take(count).map(ChangeRow::size).collect();
            let before_last: usize = sizes[..sizes.len() - 1].iter().sum();
            assert!(before_last < limit, "{sizes:?} in {:?}", state.batches);
        }
        drop(state);
        assert_kept_promises(&ledger);
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_lone_change_waits_the_flush_interval_and_no_longer() {
    let script = transactions(&[1], 10);
    let ledger = Ledger::new(script.clone());
    let interval = Duration::from_millis(100);
    let config = config(5_000, 1 << 20, interval);
    let written = Arc::new(std::sync::Mutex::new(None));
    let ended = session(
        &config,
        &ledger,
        FaultySink::new(&ledger),
        None,
        |feed, mut seen| {
            let ledger = ledger.clone();
            let written = Arc::clone(&written);
            async move {
                let count = feed_all(&feed, &script);
                handled(&mut seen, count).await;
                let fed = tokio::time::Instant::now();
                ledger.wait_for(|state| !state.stored.is_empty()).await;
                *written.lock().unwrap_or_else(|e| e.into_inner()) = Some(fed.elapsed());
            }
        },
    )
    .await;
    assert!(ended.streamed.is_ok() && ended.stored.is_ok());
    // The clock is the runtime's, paused: it moves only to the next timer, so the wait is
    // exactly what the stream asked for.
    let waited = written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .unwrap_or_else(|| panic!("nothing was written"));
    assert_eq!(waited, interval);
}

/// Runs `script` through sessions, the first failing at write `fail_at`, each next one
/// starting from what the sink holds (its progress) and the slot's confirmed position (the
/// server re-sends every transaction ending after it), until all is confirmed. Returns the
/// ledger and how many sessions it took.
async fn run_with_failure(
    script: &[Transaction],
    config: &WorkerConfig,
    fail_at: Option<(usize, Failure)>,
) -> (Ledger, usize) {
    let ledger = Ledger::new(script.to_vec());
    let last_end = script.last().map_or(0, |transaction| transaction.end_lsn);
    let mut sessions = 0;
    let mut failure = fail_at;
    while ledger.confirmed() < last_end {
        sessions += 1;
        assert!(sessions <= 3, "no progress after {sessions} sessions");
        let confirmed = ledger.confirmed();
        let progress = ledger.state().progress;
        let resent: Vec<Transaction> = script
            .iter()
            .filter(|transaction| transaction.end_lsn > confirmed)
            .copied()
            .collect();
        let mut sink = FaultySink::new(&ledger);
        sink.fail_at = failure.take();
        let ended = session(config, &ledger, sink, progress, |feed, _| {
            let ledger = ledger.clone();
            async move {
                feed_all(&feed, &resent);
                ledger
                    .wait_for(|state| state.confirmed.contains(&last_end))
                    .await;
            }
        })
        .await;
        if ended.stored.is_err() {
            assert!(
                ended.streamed.is_err(),
                "the stream outlived its store task"
            );
        }
    }
    (ledger, sessions)
}

#[tokio::test]
async fn a_session_failing_at_any_write_is_followed_by_one_storing_the_rest_exactly_once() {
    within(async {
        // Batches of 3 rows cut transactions in the middle: progress is partial there. With
        // several writers, the batches after a failed one may be written already and must
        // not commit.
        let script = transactions(&[2, 5, 1, 4], 10);
        for writers in 1..=3 {
            let mut config = config(3, 1 << 20, Duration::from_millis(1));
            config.writers = writers;
            let (reference, sessions) = run_with_failure(&script, &config, None).await;
            assert_eq!(sessions, 1);
            assert_kept_promises(&reference);
            let expected: Vec<ChangeRow> = reference.state().stored.clone();
            assert_eq!(expected.len(), 12);
            let writes = reference.state().batches.len();
            assert!(writes >= 4, "{writes} writes");
            for at in 1..=writes {
                for failure in [Failure::Before, Failure::After] {
                    let (ledger, sessions) =
                        run_with_failure(&script, &config, Some((at, failure))).await;
                    let case = format!("{writers} writers, failing write {at} {failure:?}");
                    assert_eq!(sessions, 2, "{case}");
                    assert_kept_promises(&ledger);
                    let mut stored: Vec<ChangeRow> = ledger.state().stored.clone();
                    stored.sort_by_key(|row| (row.commit_lsn, row.sequence));
                    let ids = |rows: &[ChangeRow]| -> Vec<_> {
                        rows.iter()
                            .map(|row| (row.id, row.commit_lsn, row.sequence, row.after.clone()))
                            .collect()
                    };
                    assert_eq!(ids(&stored), ids(&expected), "{case}");
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn parallel_writers_overlap_and_commit_in_stream_order() {
    within(async {
        // Six batches of 2 rows; the first write waits at the gate (a slow COPY) until the
        // test opens it, while the second is written: it must wait for the first to commit.
        let script = transactions(&[4, 4, 4], 10);
        let ledger = Ledger::new(script.clone());
        let mut config = config(2, 1 << 20, Duration::from_millis(1));
        config.writers = 2;
        let gate = Arc::new(Semaphore::new(0));
        let mut sink = FaultySink::new(&ledger);
        sink.held = Some((1, Arc::clone(&gate)));
        let last_end = script[2].end_lsn;
        let ended = session(&config, &ledger, sink, None, |feed, _| {
            let ledger = ledger.clone();
            async move {
                feed_all(&feed, &script);
                ledger
                    .wait_for(|state| state.writing == 2 && state.ready_to_commit == 1)
                    .await;
                // The second batch is written and ready; the first is not: nothing is
                // stored, nothing confirmed.
                assert!(ledger.state().stored.is_empty());
                assert!(ledger.state().confirmed.is_empty());
                gate.add_permits(1);
                ledger
                    .wait_for(|state| state.confirmed.contains(&last_end))
                    .await;
            }
        })
        .await;
        assert!(ended.streamed.is_ok() && ended.stored.is_ok());
        let state = ledger.state();
        assert_eq!(state.most_writing, 2);
        let order: Vec<(i64, i32)> = state
            .stored
            .iter()
            .map(|row| (row.commit_lsn, row.sequence))
            .collect();
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(order, sorted, "stored out of stream order");
        assert_eq!(order.len(), 12);
        drop(state);
        assert_kept_promises(&ledger);
    })
    .await;
}
