//! The worker under test, run as a separate process (this binary's hidden `__worker` command)
//! so its memory is measured alone.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// A running worker process.
pub(crate) struct WorkerProcess {
    child: Child,
    pid: u32,
}

/// How a measured worker is set up, where it differs from the worker's defaults.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Tuning {
    /// Destination connections storing in parallel.
    pub(crate) writers: Option<usize>,
    /// How often it seals, in milliseconds (0: never).
    pub(crate) seal_interval_ms: Option<u64>,
    /// Columns declared personal (`--personal-columns`).
    pub(crate) personal_columns: Option<&'static str>,
    /// Context keys declared personal (`--personal-context`).
    pub(crate) personal_context: Option<&'static str>,
}

impl WorkerProcess {
    /// Starts a worker streaming `slot` of the database at `url` into the `bemi.changes` of
    /// `destination` (default: the same database).
    pub(crate) fn spawn(url: &str, slot: &str, destination: Option<&str>) -> anyhow::Result<Self> {
        Self::spawn_tuned(url, slot, destination, Tuning::default())
    }

    /// Starts a worker as [`WorkerProcess::spawn`] does, set up as `tuning` says.
    pub(crate) fn spawn_tuned(
        url: &str,
        slot: &str,
        destination: Option<&str>,
        tuning: Tuning,
    ) -> anyhow::Result<Self> {
        let writers = tuning.writers.map(|writers| writers.to_string());
        let seal = tuning.seal_interval_ms.map(|millis| millis.to_string());
        let mut args = vec!["__worker", "--database-url", url, "--slot", slot];
        if let Some(writers) = &writers {
            args.extend(["--writers", writers]);
        }
        if let Some(seal) = &seal {
            args.extend(["--seal-interval-ms", seal]);
        }
        if let Some(columns) = tuning.personal_columns {
            args.extend(["--personal-columns", columns]);
        }
        if let Some(keys) = tuning.personal_context {
            args.extend(["--personal-context", keys]);
        }
        if let Some(destination) = destination {
            args.extend(["--destination-url", destination]);
        }
        Self::spawn_with(&args)
    }

    /// Starts this binary with `args` (a hidden worker command: `__worker`, `__ingest`).
    pub(crate) fn spawn_with(args: &[&str]) -> anyhow::Result<Self> {
        let child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("the worker process exited at once"))?;
        Ok(Self { child, pid })
    }

    /// The process's peak resident memory so far (`VmHWM`), in KiB.
    pub(crate) fn peak_rss_kib(&self) -> Option<u64> {
        status_field(self.pid, "VmHWM:")
    }

    /// The process's resident memory now (`VmRSS`), in KiB.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        status_field(self.pid, "VmRSS:")
    }

    /// Stops the worker with SIGTERM and waits for it.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        anyhow::ensure!(status.success(), "the worker exited with {status}");
        Ok(())
    }
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Waits until `slot` has confirmed `target` (all changes before it are stored); returns how
/// long that took. Polls every 20 ms.
pub(crate) async fn wait_confirmed(
    client: &tokio_postgres::Client,
    slot: &str,
    target: &str,
    started: Instant,
    timeout: Duration,
) -> anyhow::Result<Duration> {
    loop {
        let done: Option<bool> = client
            .query_one(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &target],
            )
            .await?
            .get(0);
        if done == Some(true) {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "the worker did not catch up within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one run of the worker measured.
pub(crate) struct Run {
    /// From process start until every change was stored and confirmed.
    pub(crate) elapsed: Duration,
    /// Peak resident memory, in KiB.
    pub(crate) peak_rss_kib: u64,
}

/// Runs a worker process on `slot` until it confirmed `target`, stops it, and checks that it
/// stored exactly `expected` changes in `destination` (`None`: the source database), set up as
/// `tuning` says.
pub(crate) async fn measure(
    env: &crate::environment::Environment,
    slot: &str,
    target: &str,
    expected: usize,
    destination: Option<(&str, &tokio_postgres::Client)>,
    tuning: Tuning,
) -> anyhow::Result<Run> {
    let started = Instant::now();
    let worker = WorkerProcess::spawn_tuned(
        &env.database.url(),
        slot,
        destination.map(|(url, _)| url),
        tuning,
    )?;
    let elapsed = wait_confirmed(
        &env.client,
        slot,
        target,
        started,
        Duration::from_secs(3_600),
    )
    .await?;
    let peak_rss_kib = worker.peak_rss_kib().unwrap_or(0);
    worker.stop().await?;
    let stored: i64 = destination
        .map_or(&env.client, |(_, client)| client)
        .query_one("SELECT count(*) FROM bemi.changes", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        usize::try_from(stored) == Ok(expected),
        "the worker stored {stored} of {expected} changes"
    );
    Ok(Run {
        elapsed,
        peak_rss_kib,
    })
}

/// Runs the worker in this process until SIGTERM (the `__worker` command).
pub(crate) async fn run_worker(
    url: &str,
    slot: &str,
    destination: Option<&str>,
    nats: Option<bemi_worker::NatsOptions>,
    tuning: Tuning,
) -> anyhow::Result<()> {
    let mut config = bemi_worker::WorkerConfig::new(bemi_worker::ConnectionOptions::parse(url)?);
    if let Some(destination) = destination {
        config.store_into(
            bemi_worker::ConnectionOptions::parse(destination)?,
            bemi_core::setup::SetupOptions::default()
                .changes_table_name()
                .clone(),
        );
    }
    if let Some(nats) = nats {
        config.output = bemi_worker::Output::JetStream(nats);
    }
    config.slot = slot.to_owned();
    if let Some(writers) = tuning.writers {
        config.writers = writers.max(1);
    }
    if let Some(millis) = tuning.seal_interval_ms {
        config.seal_interval = (millis > 0).then(|| Duration::from_millis(millis));
    }
    if let Some(columns) = tuning.personal_columns {
        config
            .column_policies
            .add_list(bemi_core::policy::ColumnAction::Personal, columns)?;
    }
    if let Some(keys) = tuning.personal_context {
        config.personal_context = keys.split(',').map(str::to_owned).collect();
    }
    config.status_interval = Duration::from_millis(100);
    let worker = bemi_worker::Worker::new(config);
    worker.run(terminated()).await?;
    Ok(())
}

/// Runs an ingest process in this process until SIGTERM (the `__ingest` command).
pub(crate) async fn run_ingest(
    destination: &str,
    nats: bemi_worker::NatsOptions,
) -> anyhow::Result<()> {
    let config =
        bemi_worker::IngestConfig::new(nats, bemi_worker::ConnectionOptions::parse(destination)?);
    bemi_worker::Ingest::new(config).run(terminated()).await?;
    Ok(())
}

/// Completes on SIGTERM.
async fn terminated() {
    if let Ok(mut terminate) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        terminate.recv().await;
    }
}
