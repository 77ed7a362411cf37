//! `console-pages`: the console's pages on the `read-targets` data set (10,000,000 changes over
//! a year in monthly partitions), as a browser asks for them: each page fetched whole over HTTP
//! from the console serving in this process, against the target (the first page of each
//! filter ≤ 200 ms p95), with its weight in bytes.

use std::time::Instant;

use bemi_worker::console::ConsoleConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::environment::Environment;
use crate::read_targets::{KEYS, TABLES, generate};
use crate::stats::{Probe, percentile, summary};

/// The path of a page for a random probe of the data set.
type PagePath = Box<dyn Fn(&mut Probe, &Sample) -> String>;

/// A page of the console, with its path for a random probe.
struct PageKind {
    name: &'static str,
    path: PagePath,
    /// Whether it is the first page of a search filter (the issue's ≤ 200 ms target).
    filter: bool,
}

/// Values of the data set the probes pick from.
struct Sample {
    changes: u64,
    ids: Vec<String>,
    now: chrono::DateTime<chrono::Utc>,
}

/// `GET path` over HTTP/1.0; the whole response's status and body length.
async fn fetch(port: u16, path: &str) -> anyhow::Result<(u16, usize)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let head_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP head from {path}"))?;
    let status = std::str::from_utf8(&response[..head_end])?
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status from {path}"))?;
    Ok((status, response.len() - head_end - 4))
}

fn query(pairs: &[(&str, String)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

fn kinds() -> Vec<PageKind> {
    let table = |probe: &mut Probe| format!("public.table_{}", 1 + probe.next(TABLES));
    let request =
        |probe: &mut Probe, sample: &Sample| format!("req-{}", probe.next(sample.changes / 3));
    vec![
        PageKind {
            name: "search: newest changes, no filter",
            path: Box::new(|_, _| "/".to_owned()),
            filter: true,
        },
        PageKind {
            name: "search: table",
            path: Box::new(move |probe, _| format!("/?{}", query(&[("table", table(probe))]))),
            filter: true,
        },
        PageKind {
            name: "search: table + operation CREATE",
            path: Box::new(move |probe, _| {
                format!(
                    "/?{}",
                    query(&[("table", table(probe)), ("operation", "CREATE".to_owned())])
                )
            }),
            filter: true,
        },
        PageKind {
            name: "search: table + key",
            path: Box::new(move |probe, _| {
                format!(
                    "/?{}",
                    query(&[
                        ("table", table(probe)),
                        ("key", probe.next(KEYS).to_string())
                    ])
                )
            }),
            filter: true,
        },
        PageKind {
            name: "search: transaction",
            path: Box::new(|probe, sample| {
                format!("/?transaction={}", probe.next(sample.changes / 3))
            }),
            filter: true,
        },
        PageKind {
            name: "search: context request_id",
            path: Box::new(move |probe, sample| {
                format!(
                    "/?{}",
                    query(&[
                        ("context_key", "request_id".to_owned()),
                        ("context_value", request(probe, sample)),
                    ])
                )
            }),
            filter: true,
        },
        PageKind {
            name: "search: user X, last 30 days",
            path: Box::new(|probe, sample| {
                format!(
                    "/?{}",
                    query(&[
                        ("context_key", "user_id".to_owned()),
                        ("context_value", probe.next(1_000).to_string()),
                        (
                            "from",
                            (sample.now - chrono::Duration::days(30)).to_rfc3339()
                        ),
                    ])
                )
            }),
            filter: true,
        },
        PageKind {
            name: "search: an hour, any table",
            path: Box::new(|probe, sample| {
                let from = sample.now
                    - chrono::Duration::hours(i64::try_from(1 + probe.next(24 * 360)).unwrap_or(1));
                format!(
                    "/?{}",
                    query(&[
                        ("from", from.to_rfc3339()),
                        ("until", (from + chrono::Duration::hours(1)).to_rfc3339()),
                    ])
                )
            }),
            filter: true,
        },
        PageKind {
            name: "a change",
            path: Box::new(|probe, sample| {
                let index = usize::try_from(probe.next(sample.ids.len() as u64)).unwrap_or(0);
                format!(
                    "/changes/{}",
                    sample.ids.get(index).map_or("", String::as_str)
                )
            }),
            filter: false,
        },
        PageKind {
            name: "a record's timeline (10 changes)",
            path: Box::new(move |probe, _| {
                format!(
                    "/record?{}",
                    query(&[
                        ("table", table(probe)),
                        ("key", probe.next(KEYS).to_string())
                    ])
                )
            }),
            filter: false,
        },
        PageKind {
            name: "a record as of a month ago",
            path: Box::new(move |probe, sample| {
                format!(
                    "/as-of?{}",
                    query(&[
                        ("table", table(probe)),
                        ("key", probe.next(KEYS).to_string()),
                        ("at", (sample.now - chrono::Duration::days(30)).to_rfc3339()),
                    ])
                )
            }),
            filter: false,
        },
        PageKind {
            name: "a request, grouped by table",
            path: Box::new(move |probe, sample| {
                format!(
                    "/group?{}",
                    query(&[
                        ("context_key", "request_id".to_owned()),
                        ("context_value", request(probe, sample)),
                    ])
                )
            }),
            filter: false,
        },
        PageKind {
            name: "a transaction, grouped by table",
            path: Box::new(|probe, sample| {
                format!("/group?transaction={}", probe.next(sample.changes / 3))
            }),
            filter: false,
        },
        PageKind {
            name: "a 100,000-row table as of a month ago (first 500 rows)",
            path: Box::new(|_, sample| {
                format!(
                    "/as-of?{}",
                    query(&[
                        ("table", "public.table_0".to_owned()),
                        ("at", (sample.now - chrono::Duration::days(30)).to_rfc3339()),
                    ])
                )
            }),
            filter: false,
        },
    ]
}

pub(crate) async fn run(changes: u64, probes: usize) -> anyhow::Result<()> {
    let env = Environment::start("console-pages", "").await?;
    generate(&env, changes).await?;
    let size = env.changes_size().await?;
    let ids: Vec<String> = env
        .client
        .query(
            "SELECT id::text FROM bemi.changes_stored TABLESAMPLE SYSTEM (1) LIMIT 1000",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    anyhow::ensure!(!ids.is_empty(), "no change sampled");
    let sample = Sample {
        changes,
        ids,
        now: chrono::Utc::now(),
    };
    let destination = bemi_worker::ConnectionOptions::parse(&env.database.url())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let config = ConsoleConfig {
        destination,
        changes_table: bemi_core::setup::SetupOptions::default()
            .changes_table_name()
            .clone(),
        token: None,
        user_header: None,
        source: None,
        slot: bemi_core::setup::DEFAULT_SLOT.to_owned(),
        allow_revert: false,
    };
    tokio::spawn(bemi_worker::console::serve(
        listener,
        config,
        std::future::pending(),
    ));
    let (status, stylesheet) = fetch(port, "/assets/console.css").await?;
    anyhow::ensure!(status == 200, "the stylesheet answered {status}");
    // One page first: the connection is opened, the catalog is warm.
    fetch(port, "/").await?;

    println!(
        "## console-pages: {changes} changes ({size} with indexes) in monthly partitions, {probes} probes per page, {}",
        env.machine().await?
    );
    println!();
    println!("| page | p50 ms | p95 ms | bytes (median [min–max]) | target |");
    println!("| --- | --- | --- | --- | --- |");
    for kind in kinds() {
        let mut probe = Probe(0x2545_f491_4f6c_dd1d);
        let mut millis = Vec::with_capacity(probes);
        let mut bytes = Vec::with_capacity(probes);
        for _ in 0..probes {
            let path = (kind.path)(&mut probe, &sample);
            let timer = Instant::now();
            let (status, length) = fetch(port, &path).await?;
            millis.push(timer.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(status == 200, "{} answered {status} for {path}", kind.name);
            bytes.push(length as f64);
        }
        let p50 = percentile(&mut millis, 0.5);
        let p95 = percentile(&mut millis, 0.95);
        println!(
            "| {} | {p50:.1} | {p95:.1} | {} | {} |",
            kind.name,
            summary(&bytes, 0),
            if kind.filter {
                if p95 <= 200.0 {
                    "≤ 200 ms: met"
                } else {
                    "≤ 200 ms: **not met**"
                }
            } else {
                "-"
            }
        );
        eprintln!("{}: p95 {p95:.1} ms", kind.name);
    }
    println!();
    println!(
        "Every page also loads the one stylesheet, {stylesheet} bytes (cached by nothing: the \
         console sends `Cache-Control: no-store`); no script, no font, no image."
    );
    Ok(())
}
