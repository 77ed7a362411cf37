//! The console: pages served from the real trail, hostile values shown as text, the safety
//! rules (headers, token off loopback), and the pages rendered by headless Chromium.

use std::path::{Path, PathBuf};

use bemi_test_harness::test_database;
use bemi_worker::console::ConsoleConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Fixture, RunningWorker, TIMEOUT, fixture};

const ORDERS: &str =
    "CREATE TABLE orders (id int PRIMARY KEY, customer text, note text, status text NOT NULL);";

/// What a user typed into an order and a request's context: markup, an attribute break-out,
/// a bidi override that would show `evil` + reversed `exe.txt`.
const SCRIPT: &str = "<script>document.title='pwned'</script>";
const BREAKOUT: &str = "\"><img src=x onerror=\"document.title='pwned'\">";
const BIDI: &str = "invoice\u{202E}txt.exe";

/// A response: status, headers (lowercase names) and body.
struct Page {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Page {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// `GET path` over HTTP/1.0, with a bearer token when given.
async fn get(port: u16, path: &str, token: Option<&str>) -> Page {
    let authorization = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|value| vec![("Authorization", value)])
        .unwrap_or_default();
    get_with(port, path, &headers).await
}

/// `GET path` over HTTP/1.0 with these request headers.
async fn get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Page {
    request(port, "GET", path, headers, "").await
}

/// `POST path` of a form body over HTTP/1.0 with these request headers.
async fn post(port: u16, path: &str, headers: &[(&str, &str)], form: &[(&str, &str)]) -> Page {
    let body = serde_urlencoded::to_string(form).unwrap();
    let mut headers = headers.to_vec();
    headers.push(("Content-Type", "application/x-www-form-urlencoded"));
    request(port, "POST", path, &headers, &body).await
}

/// One request over HTTP/1.0.
async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Page {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    if method == "POST" {
        extra.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    stream
        .write_all(
            format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{extra}\r\n{body}").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(key, value)| (key.to_ascii_lowercase(), value.to_owned()))
        .collect();
    Page {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Starts the console over the fixture's trail on a free loopback port.
async fn console(fixture: &Fixture, token: Option<&str>) -> u16 {
    let config = ConsoleConfig {
        destination: fixture.source.clone(),
        changes_table: fixture.setup.options().changes_table_name().clone(),
        token: token.map(str::to_owned),
        user_header: None,
        source: Some(fixture.source.clone()),
        slot: fixture.setup.options().slot_name().to_owned(),
        allow_revert: false,
    };
    serve(config).await
}

/// Serves the console with `config` on a free loopback port.
pub(crate) async fn serve(config: ConsoleConfig) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(bemi_worker::console::serve(
        listener,
        config,
        std::future::pending(),
    ));
    port
}

/// Two changes of order 1 by two requests, with hostile values in the row and the context.
pub(crate) async fn trail(database: bemi_test_harness::TestDatabase) -> Fixture {
    let fixture = fixture(database, ORDERS).await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .tagged(
            &format!(
                "INSERT INTO orders VALUES (1, {}, {}, 'open')",
                bemi_core::quote_literal(BREAKOUT),
                bemi_core::quote_literal(SCRIPT)
            ),
            json!({"request_id": "req-1", "user_id": 7, "who": SCRIPT, "file": BIDI}),
        )
        .await;
    fixture
        .tagged(
            "UPDATE orders SET status = 'shipped' WHERE id = 1",
            json!({"request_id": "req-2", "user_id": 8}),
        )
        .await;
    fixture.wait_for(2).await;
    worker.stop().await.unwrap();
    fixture
}

/// The id of the newest change (the UPDATE).
pub(crate) async fn newest_change(fixture: &Fixture) -> String {
    fixture
        .client
        .query_one(
            "SELECT id::text FROM bemi.changes ORDER BY commit_lsn DESC, sequence DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_change_and_timeline_show_hostile_values_as_text() {
    let fixture = trail(test_database!()).await;
    let port = console(&fixture, None).await;

    // Search by a context value (a JSON number as such): the request's change, escaped.
    let search = get(port, "/?context_key=user_id&context_value=7", None).await;
    assert_eq!(search.status, 200, "{}", search.body);
    assert!(search.body.contains("req-1"), "{}", search.body);
    assert!(!search.body.contains("req-2"), "{}", search.body);
    assert!(!search.body.contains("<script>"), "{}", search.body);
    assert!(search.body.contains("&lt;script&gt;"), "{}", search.body);
    assert!(
        search.body.contains("U+202E"),
        "the bidi override is shown: {}",
        search.body
    );
    assert!(!search.body.contains('\u{202E}'), "{}", search.body);
    let policy = search.header("content-security-policy").unwrap();
    assert!(policy.contains("default-src 'none'"), "{policy}");
    assert!(!policy.contains("script-src"), "{policy}");
    assert_eq!(search.header("x-frame-options"), Some("DENY"));

    // The UPDATE: the changed field first, the others folded, values escaped.
    let id = newest_change(&fixture).await;
    let change = get(port, &format!("/changes/{id}"), None).await;
    assert_eq!(change.status, 200, "{}", change.body);
    let changed = change.body.find("shipped").unwrap();
    let folded = change.body.find("unchanged fields").unwrap();
    assert!(changed < folded, "{}", change.body);
    assert!(
        change.body.contains("3 unchanged fields"),
        "{}",
        change.body
    );
    assert!(!change.body.contains("<img"), "{}", change.body);
    assert!(change.body.contains("&lt;img src=x"), "{}", change.body);

    // The record's timeline: both changes, oldest first.
    let timeline = get(port, "/record?table=public.orders&key=1", None).await;
    assert_eq!(timeline.status, 200, "{}", timeline.body);
    let created = timeline.body.find("req-1").unwrap();
    let updated = timeline.body.find("req-2").unwrap();
    assert!(created < updated, "{}", timeline.body);

    // Everything one request did, grouped by table; and one transaction.
    let request = get(
        port,
        "/group?context_key=request_id&context_value=req-1",
        None,
    )
    .await;
    assert_eq!(request.status, 200, "{}", request.body);
    assert!(
        request.body.contains("1 changes in 1 tables"),
        "{}",
        request.body
    );
    assert!(
        request.body.contains("<h2>public.orders"),
        "{}",
        request.body
    );
    let transaction: i64 = fixture
        .client
        .query_one(
            "SELECT transaction_id FROM bemi.changes WHERE operation = 'UPDATE'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let grouped = get(port, &format!("/group?transaction={transaction}"), None).await;
    assert_eq!(grouped.status, 200, "{}", grouped.body);
    assert!(
        grouped.body.contains("req-2") && !grouped.body.contains("req-1"),
        "{}",
        grouped.body
    );
    assert!(
        grouped.body.contains(">status<"),
        "the changed field: {}",
        grouped.body
    );

    // The record as of a time: before the UPDATE, after it, before it existed.
    let between: String = fixture
        .client
        .query_one(
            "SELECT to_char(committed_at AT TIME ZONE 'UTC' - interval '1 microsecond', \
                 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM bemi.changes WHERE operation = 'UPDATE'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let as_of = |at: String| {
        format!(
            "/as-of?{}",
            serde_urlencoded::to_string([("table", "public.orders"), ("key", "1"), ("at", &at)])
                .unwrap()
        )
    };
    let then = get(port, &as_of(between), None).await;
    assert_eq!(then.status, 200, "{}", then.body);
    assert!(
        then.body.contains("&quot;open&quot;") && !then.body.contains("shipped"),
        "{}",
        then.body
    );
    let now = get(port, &as_of(chrono::Utc::now().to_rfc3339()), None).await;
    assert!(now.body.contains("&quot;shipped&quot;"), "{}", now.body);
    let before = get(port, &as_of("2000-01-01".to_owned()), None).await;
    assert!(before.body.contains("did not exist"), "{}", before.body);
    assert_eq!(
        get(port, &as_of("yesterday".to_owned()), None).await.status,
        400
    );
    // The whole table as of now: its one row, with every column.
    let now = chrono::Utc::now().to_rfc3339();
    let table = get(
        port,
        &format!(
            "/as-of?{}",
            serde_urlencoded::to_string([("table", "public.orders"), ("at", now.as_str())])
                .unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(table.status, 200, "{}", table.body);
    assert!(table.body.contains("1 rows"), "{}", table.body);
    assert!(
        table.body.contains("<th>customer</th>") && table.body.contains("&quot;shipped&quot;"),
        "{}",
        table.body
    );

    // Exports of the search, streamed: NDJSON changes, CSV with the values as JSON cells.
    let ndjson = get(
        port,
        "/export.ndjson?context_key=user_id&context_value=7",
        None,
    )
    .await;
    assert_eq!(ndjson.status, 200, "{}", ndjson.body);
    assert_eq!(ndjson.header("content-type"), Some("application/x-ndjson"));
    let exported: Vec<bemi_core::Change> = ndjson
        .body
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0].context.get("who"), Some(&json!(SCRIPT)));
    let csv_page = get(port, "/export.csv?table=public.orders", None).await;
    assert_eq!(csv_page.status, 200, "{}", csv_page.body);
    let mut reader = csv::Reader::from_reader(csv_page.body.as_bytes());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(&headers[2], "operation");
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let operations: Vec<&str> = rows.iter().map(|row| &row[2]).collect();
    assert_eq!(operations, ["UPDATE", "CREATE"], "newest first");
    let after: serde_json::Value = serde_json::from_str(&rows[1][10]).unwrap();
    assert_eq!(after["note"], json!(SCRIPT));

    // The trail's health: the worker stopped, the last stored commit known.
    let health = get(port, "/health", None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(health.body.contains("Health: "), "{}", health.body);
    assert!(health.body.contains("not streaming"), "{}", health.body);
    assert!(health.body.contains(" s ago)"), "{}", health.body);

    // A changed field, JSON containment of the context and of the row.
    let search =
        |pairs: &[(&str, &str)]| format!("/?{}", serde_urlencoded::to_string(pairs).unwrap());
    // (A CREATE sets every field: the UPDATEs tell the fields apart.)
    let changed = get(
        port,
        &search(&[("changed", "status"), ("operation", "UPDATE")]),
        None,
    )
    .await;
    assert!(changed.body.contains("req-2"), "{}", changed.body);
    let unchanged = get(
        port,
        &search(&[("changed", "customer"), ("operation", "UPDATE")]),
        None,
    )
    .await;
    assert!(
        unchanged.body.contains("No change matches"),
        "{}",
        unchanged.body
    );
    let context = get(
        port,
        &search(&[(
            "context_contains",
            r#"{"user_id": 7, "request_id": "req-1"}"#,
        )]),
        None,
    )
    .await;
    assert!(
        context.body.contains("req-1") && !context.body.contains("req-2"),
        "{}",
        context.body
    );
    let row = get(
        port,
        &search(&[("row_contains", r#"{"status": "shipped"}"#)]),
        None,
    )
    .await;
    assert!(
        row.body.contains("req-2") && !row.body.contains("req-1"),
        "{}",
        row.body
    );
    let none = get(
        port,
        &search(&[("row_contains", r#"{"status": "lost"}"#)]),
        None,
    )
    .await;
    assert!(none.body.contains("No change matches"), "{}", none.body);
    assert_eq!(
        get(port, &search(&[("row_contains", "[1, 2]")]), None)
            .await
            .status,
        400
    );
    assert_eq!(
        get(port, &search(&[("context_contains", "not json")]), None)
            .await
            .status,
        400
    );

    // Bad input is a clear page, not a server error.
    assert_eq!(get(port, "/?transaction=abc", None).await.status, 400);
    assert_eq!(get(port, "/?after=not-a-cursor", None).await.status, 400);
    assert_eq!(get(port, "/changes/not-an-id", None).await.status, 404);
    assert_eq!(
        get(port, "/changes/00000000-0000-0000-0000-000000000000", None)
            .await
            .status,
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_loopback_the_console_needs_a_token() {
    let fixture = trail(test_database!()).await;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let refused = bemi_worker::console::serve(
        listener,
        ConsoleConfig {
            destination: fixture.source.clone(),
            changes_table: fixture.setup.options().changes_table_name().clone(),
            token: None,
            user_header: None,
            source: None,
            slot: "bemi".to_owned(),
            allow_revert: false,
        },
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("BEMI_CONSOLE_TOKEN"),
        "{refused}"
    );

    // Behind an authenticating proxy: the user header it sets is required.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let proxied = listener.local_addr().unwrap().port();
    tokio::spawn(bemi_worker::console::serve(
        listener,
        ConsoleConfig {
            destination: fixture.source.clone(),
            changes_table: fixture.setup.options().changes_table_name().clone(),
            token: None,
            user_header: Some("X-Forwarded-User".to_owned()),
            source: None,
            slot: "bemi".to_owned(),
            allow_revert: false,
        },
        std::future::pending(),
    ));
    let without = get_with(proxied, "/", &[]).await;
    assert_eq!(without.status, 401, "{}", without.body);
    assert_eq!(
        get_with(proxied, "/", &[("X-Forwarded-User", " ")])
            .await
            .status,
        401
    );
    let signed_in = get_with(proxied, "/", &[("X-Forwarded-User", "auditor@example.com")]).await;
    assert_eq!(signed_in.status, 200, "{}", signed_in.body);

    let port = console(&fixture, Some("s3cret-token")).await;
    assert_eq!(get(port, "/", None).await.status, 401);
    assert_eq!(get(port, "/", Some("wrong-token!")).await.status, 401);
    assert_eq!(get(port, "/", Some("s3cret-token")).await.status, 200);
}

/// Headless Chromium, or the line that installs it.
pub(crate) fn chromium() -> PathBuf {
    program(&["chromium", "chromium-browser", "google-chrome"])
}

/// The first of `names` on `PATH`, or a panic with the line that installs it.
pub(crate) fn program(names: &[&str]) -> PathBuf {
    names
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "{} is missing: install it (Debian: `{}`)",
                names[0],
                bemi_test_harness::INSTALL_LINE
            )
        })
}

/// How the tests run Chromium: headless, as root in a container (no sandbox), no GPU.
pub(crate) const CHROMIUM_FLAGS: [&str; 6] = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--hide-scrollbars",
];

/// Runs headless Chromium on `url` with `args`; returns its standard output.
async fn run_chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new(chromium());
    command
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true);
    let output = tokio::time::timeout(TIMEOUT, command.output())
        .await
        .expect("chromium did not finish")
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Each page rendered by a real browser: no injected script ran (the title is the page's),
/// the hostile values are text, not elements; a screenshot of each page is saved
/// (`BEMI_SCREENSHOTS=dir`, default the test's temp directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_in_headless_chromium_and_no_injected_script_runs() {
    let fixture = trail(test_database!()).await;
    let port = console(&fixture, None).await;
    let id = newest_change(&fixture).await;
    let profile = tempfile::tempdir().unwrap();
    let shots = std::env::var_os("BEMI_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| profile.path().join("screenshots"));
    std::fs::create_dir_all(&shots).unwrap();
    let pages = [
        (
            "search",
            "/?context_key=user_id&context_value=7".to_owned(),
            "Changes · bemi console",
        ),
        (
            "change",
            format!("/changes/{id}"),
            "UPDATE public.orders · bemi console",
        ),
        (
            "timeline",
            "/record?table=public.orders&key=1".to_owned(),
            "Record 1 · bemi console",
        ),
        ("health", "/health".to_owned(), "Health · bemi console"),
        (
            "request",
            "/group?context_key=request_id&context_value=req-1".to_owned(),
            "request_id: \"req-1\" · bemi console",
        ),
    ];
    for (name, path, title) in pages {
        let url = format!("http://127.0.0.1:{port}{path}");
        let dom = run_chromium(profile.path(), &url, &["--dump-dom"]).await;
        assert!(
            dom.contains(&format!("<title>{title}</title>")),
            "{name}: {dom}"
        );
        // An injected script would have set the title: it is the page's own.
        assert!(
            !dom.contains("<title>pwned"),
            "{name}: an injected script ran: {dom}"
        );
        // Every page but health shows the hostile values.
        assert!(
            name == "health" || dom.contains("&lt;script&gt;"),
            "{name}: the value is shown as text: {dom}"
        );
        assert!(!dom.contains("<img"), "{name}: markup was injected: {dom}");
        assert!(!dom.contains("<script"), "{name}: {dom}");
        let shot = shots.join(format!("console-{name}.png"));
        run_chromium(
            profile.path(),
            &url,
            &[
                "--window-size=1280,860",
                &format!("--screenshot={}", shot.display()),
            ],
        )
        .await;
        let png = std::fs::read(&shot).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{name}");
    }
}

/// The binary: `console` serves the pages; on an open address without a token it refuses to
/// start, with the operator's exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_the_console() {
    let fixture = trail(test_database!()).await;
    let url = fixture.database.url();
    let open = tokio::process::Command::new(env!("CARGO_BIN_EXE_bemi-worker"))
        .args([
            "console",
            "--listen",
            "0.0.0.0:0",
            "--destination-url",
            &url,
        ])
        .env_remove("BEMI_CONSOLE_TOKEN")
        .output();
    let open = tokio::time::timeout(TIMEOUT, open).await.unwrap().unwrap();
    assert_eq!(open.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&open.stderr).contains("BEMI_CONSOLE_TOKEN"),
        "{}",
        String::from_utf8_lossy(&open.stderr)
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let (child, log) = crate::support::spawn_binary(
        &["console", "--listen", &listen, "--destination-url", &url],
        &format!("console-{}", fixture.database.slot_name()),
    );
    let page = bemi_test_harness::wait_until_async("the console to answer", TIMEOUT, || async {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(_) => Some(get(port, "/?key=1", None).await),
            Err(_) => None,
        }
    })
    .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("req-2"), "{}", page.body);
    let exit = crate::support::terminate(child).await;
    assert!(
        exit.success(),
        "{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A trail that cannot be read answers 503 with a page that names nothing of the server (its
/// address and credentials go to the log only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_trail_is_a_503_that_names_nothing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = ConsoleConfig {
        destination: bemi_worker::ConnectionOptions::parse(
            "postgres://auditor:Sup3rS3cret@127.0.0.1:1/trail",
        )
        .unwrap(),
        changes_table: bemi_core::QualifiedName::new("bemi", "changes").unwrap(),
        token: None,
        user_header: None,
        source: None,
        slot: "bemi".to_owned(),
        allow_revert: false,
    };
    tokio::spawn(bemi_worker::console::serve(
        listener,
        config,
        std::future::pending(),
    ));
    for path in [
        "/",
        "/changes/00000000-0000-0000-0000-000000000001",
        "/record?table=public.t&key=1",
    ] {
        let page = get(port, path, None).await;
        assert_eq!(page.status, 503, "{path}: {}", page.body);
        assert!(
            page.body.contains("cannot be read right now"),
            "{}",
            page.body
        );
        for secret in ["Sup3rS3cret", "auditor", "127.0.0.1:1"] {
            assert!(!page.body.contains(secret), "{path}: {}", page.body);
        }
    }
}

/// The console runs as the read-only role setup prints: every page works, and the role can
/// write nothing to the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_runs_as_the_printed_read_only_role() {
    let fixture = trail(test_database!()).await;
    let role = fixture.role("reader", "").await;
    let grants = fixture.setup.reader_grants_sql(&role).unwrap();
    fixture.sql(&grants.destination).await;
    fixture.sql(&grants.source).await;
    let reader = bemi_worker::ConnectionOptions::parse(
        &fixture.database.url_for_user(&role, Some("bemi-test")),
    )
    .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(bemi_worker::console::serve(
        listener,
        ConsoleConfig {
            destination: reader.clone(),
            changes_table: fixture.setup.options().changes_table_name().clone(),
            token: None,
            user_header: None,
            source: Some(reader.clone()),
            slot: fixture.setup.options().slot_name().to_owned(),
            allow_revert: false,
        },
        std::future::pending(),
    ));
    let id = newest_change(&fixture).await;
    for path in [
        "/?context_key=user_id&context_value=7".to_owned(),
        format!("/changes/{id}"),
        "/record?table=public.orders&key=1".to_owned(),
        "/group?context_key=request_id&context_value=req-2".to_owned(),
        "/health".to_owned(),
        "/export.ndjson".to_owned(),
    ] {
        let page = get(port, &path, None).await;
        assert_eq!(page.status, 200, "{path}: {}", page.body);
    }
    let (client, connection) = tokio_postgres::connect(
        &fixture.database.url_for_user(&role, Some("bemi-test")),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let write = client
        .batch_execute("DELETE FROM bemi.changes_stored")
        .await
        .unwrap_err();
    assert_eq!(
        write.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{write}"
    );
}

/// The status of order 1 in the source.
pub(crate) async fn order_status(fixture: &Fixture) -> String {
    fixture
        .client
        .query_one("SELECT status FROM orders WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0)
}

/// The CSRF token a plan page set in its cookie, and its form repeats.
fn csrf_token(plan: &Page) -> String {
    let cookie = plan.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let token = cookie
        .strip_prefix("bemi_csrf=")
        .and_then(|rest| rest.split(';').next())
        .unwrap()
        .to_owned();
    assert!(token.len() >= 32, "{token}");
    assert!(
        plan.body
            .contains(&format!("name=\"csrf\" value=\"{token}\"")),
        "{}",
        plan.body
    );
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_is_planned_with_its_conflicts_then_applied_once_confirmed() {
    let fixture = trail(test_database!()).await;
    let config = |allow_revert| ConsoleConfig {
        destination: fixture.source.clone(),
        changes_table: fixture.setup.options().changes_table_name().clone(),
        token: None,
        user_header: Some("X-Forwarded-User".to_owned()),
        source: Some(fixture.source.clone()),
        slot: fixture.setup.options().slot_name().to_owned(),
        allow_revert,
    };
    let port = serve(config(true)).await;
    let user = ("X-Forwarded-User", "auditor@example.com");
    let plan_path = "/revert?context_key=request_id&context_value=req-2";

    // Someone changed the order since request req-2 shipped it: the plan shows the conflict,
    // the value the request left and the one found, and offers to force.
    fixture
        .sql("UPDATE orders SET status = 'cancelled' WHERE id = 1")
        .await;
    let plan = get_with(port, plan_path, &[user]).await;
    assert_eq!(plan.status, 200, "{}", plan.body);
    assert!(plan.body.contains("1 conflict"), "{}", plan.body);
    assert!(plan.body.contains("changed since"), "{}", plan.body);
    let expected = plan.body.find("&quot;shipped&quot;").unwrap();
    let found = plan.body.find("&quot;cancelled&quot;").unwrap();
    assert!(expected < found, "expected, then found: {}", plan.body);
    assert!(plan.body.contains("name=\"force\""), "{}", plan.body);
    // A dry run changed nothing.
    assert_eq!(order_status(&fixture).await, "cancelled");
    let token = csrf_token(&plan);
    let cookie = format!("bemi_csrf={token}");
    let form = |confirm: &'static str| {
        vec![
            ("context_key", "request_id"),
            ("context_value", "req-2"),
            ("confirm", confirm),
        ]
    };

    // Without the cookie, with another token, from another site, or unconfirmed: refused.
    let mut with_token = form("yes");
    with_token.push(("csrf", &token));
    let refused = post(port, "/revert", &[user], &with_token).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let mut other_token = form("yes");
    other_token.push(("csrf", "0123456789abcdef0123456789abcdef"));
    let refused = post(port, "/revert", &[user, ("Cookie", &cookie)], &other_token).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let cross_site = post(
        port,
        "/revert",
        &[
            user,
            ("Cookie", &cookie),
            ("Origin", "https://attacker.example"),
        ],
        &with_token,
    )
    .await;
    assert_eq!(cross_site.status, 403, "{}", cross_site.body);
    let mut unconfirmed = form("");
    unconfirmed.push(("csrf", &token));
    let refused = post(port, "/revert", &[user, ("Cookie", &cookie)], &unconfirmed).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(order_status(&fixture).await, "cancelled");

    // Confirmed but not forced, over the conflict: nothing is changed.
    let conflicted = post(port, "/revert", &[user, ("Cookie", &cookie)], &with_token).await;
    assert_eq!(conflicted.status, 409, "{}", conflicted.body);
    assert!(
        conflicted.body.contains("Nothing was changed"),
        "{}",
        conflicted.body
    );
    assert_eq!(order_status(&fixture).await, "cancelled");

    // The row as the request left it again: the plan is clean, and applying it undoes the
    // request, in the name of the signed-in user.
    fixture
        .sql("UPDATE orders SET status = 'shipped' WHERE id = 1")
        .await;
    let plan = get_with(port, plan_path, &[user]).await;
    assert!(plan.body.contains("none conflicts"), "{}", plan.body);
    let token = csrf_token(&plan);
    let cookie = format!("bemi_csrf={token}");
    let mut confirmed = form("yes");
    confirmed.push(("csrf", &token));
    let applied = post(
        port,
        "/revert",
        &[
            user,
            ("Cookie", &cookie),
            ("Origin", "http://127.0.0.1"),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        &confirmed,
    )
    .await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    assert!(applied.body.contains("Reverted"), "{}", applied.body);
    assert!(
        applied.body.contains("auditor@example.com"),
        "{}",
        applied.body
    );
    assert_eq!(order_status(&fixture).await, "open");

    // The compensating change is in the trail with the console user in its context.
    let worker = RunningWorker::start(fixture.config());
    let stored = fixture.wait_for(5).await;
    worker.stop().await.unwrap();
    let revert = stored
        .iter()
        .find(|change| change.context.get("console_user").is_some())
        .unwrap_or_else(|| panic!("no change by the console: {stored:#?}"));
    assert_eq!(
        revert.context.get("console_user"),
        Some(&json!("auditor@example.com"))
    );
    assert_eq!(
        revert.context.get("tool"),
        Some(&json!("bemi-worker console"))
    );
    assert!(revert.context.get("revert").is_some(), "{revert:#?}");

    // A console without --allow-revert shows plans only, and refuses the form.
    let read_only = serve(config(false)).await;
    let plan = get_with(read_only, plan_path, &[user]).await;
    assert_eq!(plan.status, 200, "{}", plan.body);
    assert!(plan.body.contains("Applying is off"), "{}", plan.body);
    assert!(!plan.body.contains("<form"), "{}", plan.body);
    let refused = post(
        read_only,
        "/revert",
        &[user, ("Cookie", &cookie)],
        &confirmed,
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
}

/// A document's change is shown path by path, and a record's timeline shows the schema changes
/// of its table in their place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_diffed_by_path_and_timelines_show_schema_changes() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE docs (id int PRIMARY KEY, doc jsonb);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .sql(r#"INSERT INTO docs VALUES (1, '{"a": {"b": 1, "gone": true}, "tags": ["x"], "k": "<b>"}')"#)
        .await;
    fixture
        .sql(r#"UPDATE docs SET doc = '{"a": {"b": 2}, "tags": ["x", "y"], "k": "<b>"}' WHERE id = 1"#)
        .await;
    // A migration names itself in a comment, as the ORM wrappers write it.
    fixture
        .sql(r#"ALTER TABLE docs ADD COLUMN note text /*Bemi {"job":"migrate-42"} Bemi*/"#)
        .await;
    fixture
        .sql("UPDATE docs SET note = 'after the migration' WHERE id = 1")
        .await;
    // A writer whose context is not a JSON object: the worker keeps it and says so.
    fixture
        .sql("INSERT INTO docs VALUES (2, NULL) /*Bemi [1,2] Bemi*/")
        .await;
    // Four row changes (DDL changes are left out of `wait_for`), then the DDL is stored too.
    fixture.wait_for(4).await;
    worker.stop().await.unwrap();
    let ddl: i64 = fixture
        .client
        .query_one(
            "SELECT count(*) FROM bemi.changes WHERE operation = 'DDL'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ddl, 1);
    let port = console(&fixture, None).await;

    let update: String = fixture
        .client
        .query_one(
            "SELECT id::text FROM bemi.changes WHERE operation = 'UPDATE' ORDER BY commit_lsn LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let change = get(port, &format!("/changes/{update}"), None).await;
    assert_eq!(change.status, 200, "{}", change.body);
    assert!(change.body.contains("Inside, by path"), "{}", change.body);
    for path in [".a.b", ".a.gone", ".tags[1]"] {
        assert!(
            change
                .body
                .contains(&format!("<td class=\"value\">{path}</td>")),
            "{path}: {}",
            change.body
        );
    }
    // An unchanged key inside the document is not listed; values stay escaped.
    assert!(
        !change.body.contains("<td class=\"value\">.k</td>"),
        "{}",
        change.body
    );
    assert!(!change.body.contains("<b>"), "{}", change.body);

    // The worker's note on the change with the broken context, explained.
    let noted: String = fixture
        .client
        .query_one(
            "SELECT id::text FROM bemi.changes WHERE primary_key = '2'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let noted = get(port, &format!("/changes/{noted}"), None).await;
    assert!(
        noted.body.contains("Notes from the worker"),
        "{}",
        noted.body
    );
    assert!(
        noted.body.contains("<dt>invalid_context</dt>"),
        "{}",
        noted.body
    );
    assert!(
        noted
            .body
            .contains("was not a JSON object: what could be read is kept"),
        "{}",
        noted.body
    );
    assert!(
        !change.body.contains("Notes from the worker"),
        "{}",
        change.body
    );

    let timeline = get(port, "/record?table=public.docs&key=1", None).await;
    assert_eq!(timeline.status, 200, "{}", timeline.body);
    let body = &timeline.body;
    let ddl = body
        .find("The table's schema changed")
        .unwrap_or_else(|| panic!("no schema change: {body}"));
    let first_update = body.find(".tags[1]").unwrap();
    let migrated = body.find("after the migration").unwrap();
    assert!(
        first_update < ddl && ddl < migrated,
        "in their place: {body}"
    );
    assert!(
        body.contains("ALTER TABLE docs ADD COLUMN note text"),
        "{body}"
    );
    assert!(
        body.contains("migrate-42"),
        "the migration's context: {body}"
    );
}
