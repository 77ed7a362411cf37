//! What the examples share: a PostgreSQL to run against, bemi set up with the worker running,
//! and printing the audit trail.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bemi::setup::{Setup, SetupOptions};
use bemi_test_harness::TestCluster;
use bemi_worker::{ConnectionOptions, Worker, WorkerConfig};

/// Where an example runs.
pub enum Server {
    /// A cluster started for the example (stopped when dropped).
    Embedded(Arc<TestCluster>),
    /// A database created on the server of `DATABASE_URL` (dropped at the end).
    Existing { admin_url: String, database: String },
}

/// A throwaway PostgreSQL from the system's binaries, or a fresh database on the server of
/// `DATABASE_URL` when it is set; returns it and the URL of the database to use.
pub fn start_server(
    runtime: &tokio::runtime::Runtime,
    name: &str,
) -> anyhow::Result<(Server, String)> {
    match std::env::var("DATABASE_URL") {
        Ok(admin_url) if !admin_url.is_empty() => {
            let database = format!("bemi_{name}_{}", std::process::id());
            let options = ConnectionOptions::parse(&admin_url)?;
            println!("Using the server of DATABASE_URL ({options}), database {database}");
            runtime.block_on(async {
                let (client, connection) =
                    tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                client
                    .batch_execute(&format!("CREATE DATABASE {database}"))
                    .await?;
                anyhow::Ok(())
            })?;
            let url = with_database(&admin_url, &database);
            Ok((
                Server::Existing {
                    admin_url,
                    database,
                },
                url,
            ))
        }
        _ => {
            println!(
                "Starting a throwaway PostgreSQL (wal_level=logical) from the system's binaries..."
            );
            let cluster =
                TestCluster::try_dedicated(&["log_statement=none"]).map_err(anyhow::Error::msg)?;
            let url = cluster.url("postgres");
            Ok((Server::Embedded(cluster), url))
        }
    }
}

/// `url` pointing at `database` instead.
fn with_database(url: &str, database: &str) -> String {
    if let Some(scheme_end) = url.find("://") {
        let (base, query) = url
            .split_once('?')
            .map_or((url, None), |(base, query)| (base, Some(query)));
        let authority_end = base[scheme_end + 3..]
            .find('/')
            .map_or(base.len(), |end| scheme_end + 3 + end);
        let mut result = format!("{}/{database}", &base[..authority_end]);
        if let Some(query) = query {
            result.push('?');
            result.push_str(query);
        }
        result
    } else {
        format!("{url} dbname={database}")
    }
}

/// Stops the embedded cluster, or drops the example's database.
pub fn cleanup(runtime: &tokio::runtime::Runtime, server: Server) -> anyhow::Result<()> {
    match server {
        // Stops the cluster and removes its files.
        Server::Embedded(cluster) => drop(cluster),
        Server::Existing { admin_url, database } => runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1",
                    &[&database],
                )
                .await?;
            client.batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)")).await?;
            anyhow::Ok(())
        })?,
    }
    Ok(())
}

/// bemi set up in the database at `url` and the worker running in this process.
pub struct Audit {
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<bemi_worker::Result<()>>,
}

impl Audit {
    /// Installs bemi (tracking schema `public`) and starts the worker.
    pub fn start(runtime: &tokio::runtime::Runtime, url: &str) -> anyhow::Result<Self> {
        let source = ConnectionOptions::parse(url)?;
        let setup = Setup::new(SetupOptions::default().slot("bemi_example"))?;
        runtime.block_on(bemi_worker::setup(&source, &source, &setup))?;
        let mut config = WorkerConfig::new(source);
        config.slot = "bemi_example".into();
        config.flush_interval = Duration::from_millis(20);
        let worker = Worker::new(config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = runtime.spawn(async move {
            worker
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Self { stop, running })
    }

    /// Waits until `count` changes are stored, stops the worker and prints the changes.
    pub fn print_changes(
        self,
        runtime: &tokio::runtime::Runtime,
        url: &str,
        count: usize,
    ) -> anyhow::Result<()> {
        let rows = runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let rows = client
                    .query(
                        "SELECT coalesce(primary_key, ''), \"table\", operation, \"before\"::text, \"after\"::text, \
                         context::text, to_char(committed_at, 'YYYY-MM-DD HH24:MI:SS.MS') \
                         FROM bemi.changes ORDER BY commit_lsn, sequence",
                        &[],
                    )
                    .await?;
                if rows.len() >= count {
                    break anyhow::Ok(rows);
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the worker stored {} of {count} changes in 30 s",
                    rows.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })?;
        let _ = self.stop.send(());
        runtime.block_on(self.running)??;
        let header = [
            "primary_key",
            "table",
            "operation",
            "before",
            "after",
            "context",
            "committed_at",
        ];
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|row| {
                (0..header.len())
                    .map(|column| row.get::<_, String>(column))
                    .collect()
            })
            .collect();
        println!();
        print_table(&header, &cells);
        println!();
        println!(
            "Every change is in bemi.changes, with the context of the request or job that made it."
        );
        Ok(())
    }
}

fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .chain([header[column].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        println!("{}", padded.join(" | ").trim_end());
    };
    line(header.to_vec());
    println!(
        "{}",
        widths
            .iter()
            .map(|width| "-".repeat(*width))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}
