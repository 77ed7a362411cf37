//! The `bemi-worker` binary: setup, status, teardown, help; passwords never shown.

use std::process::{Command, Output};

use bemi_test_harness::test_database;

fn bemi_worker(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bemi-worker"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn help_explains_every_command() {
    let output = bemi_worker(&["--help"], "");
    let help = text(&output);
    assert!(output.status.success(), "{help}");
    for command in [
        "setup",
        "run",
        "status",
        "teardown",
        "snapshot",
        "revert",
        "capture",
        "ingest",
        "partition-changes",
        "retention",
        "restore-archive",
        "hold",
        "console",
    ] {
        assert!(help.contains(command), "{help}");
        let command_help = bemi_worker(&[command, "--help"], "");
        assert!(
            command_help.status.success(),
            "{command}: {}",
            text(&command_help)
        );
    }
    let run_help = text(&bemi_worker(&["run", "--help"], ""));
    for flag in [
        "--database-url",
        "--destination-url",
        "--slot",
        "--batch-size",
        "--batch-bytes",
        "--database-url-file",
        "DATABASE_URL",
        "BEMI_DESTINATION_URL",
    ] {
        assert!(run_help.contains(flag), "{flag}: {run_help}");
    }
}

#[test]
fn retention_refuses_to_run_without_an_explicit_window_of_a_day_or_more() {
    let database = test_database!();
    let url = database.url();
    let missing = bemi_worker(&["retention", "--dry-run"], &url);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("--keep"), "{}", text(&missing));
    for window in ["3h", "0d", "400", "400y"] {
        let refused = bemi_worker(&["retention", "--keep", window, "--dry-run"], &url);
        assert!(!refused.status.success(), "{window}");
        assert!(
            text(&refused).contains(window),
            "{window}: {}",
            text(&refused)
        );
    }
}

#[test]
fn holds_retention_and_status_through_the_binary() {
    let database = test_database!();
    let url = database.url();
    let slot = database.slot_name();
    let setup = bemi_worker(&["setup", "--slot", slot, "--partitioning", "week"], &url);
    assert!(setup.status.success(), "{}", text(&setup));

    let placed = bemi_worker(
        &[
            "hold",
            "--until",
            "2099-12-31",
            "--table",
            "public.orders",
            "--reason",
            "case 7",
        ],
        &url,
    );
    assert!(placed.status.success(), "{}", text(&placed));
    assert!(
        text(&placed).contains("legal hold 1 placed until 2099-12-31T23:59:59"),
        "{}",
        text(&placed)
    );
    let without_reason = bemi_worker(&["hold", "--until", "2099-12-31"], &url);
    assert!(!without_reason.status.success());
    let listed = text(&bemi_worker(&["hold", "--list"], &url));
    assert!(
        listed.contains("\"public\".\"orders\"") && listed.contains("case 7"),
        "{listed}"
    );

    let dry = bemi_worker(&["retention", "--keep", "400d", "--dry-run"], &url);
    let dry_text = text(&dry);
    assert!(dry.status.success(), "{dry_text}");
    assert!(dry_text.contains("would drop 0 partition(s)"), "{dry_text}");

    let released = text(&bemi_worker(&["hold", "--release", "1"], &url));
    assert!(released.contains("legal hold 1 released"), "{released}");
    let status = bemi_worker(&["status", "--slot", slot], &url);
    let status_text = text(&status);
    // No worker streams in this test: a warning, said by the exit code.
    assert_eq!(status.status.code(), Some(1), "{status_text}");
    assert!(status_text.contains("per week"), "{status_text}");
    assert!(
        status_text.contains("(dry run): 0 partition(s) dropped"),
        "{status_text}"
    );
}

#[test]
fn setup_status_and_teardown_through_the_binary() {
    let database = test_database!();
    let mut client = database.connect_sync();
    client
        .batch_execute("CREATE TABLE item (id int PRIMARY KEY)")
        .unwrap();
    // The test server trusts connections, so the password is ignored: it must still never show.
    let url = database.url_for_user("postgres", Some("Sup3rS3cretPw"));
    let slot = database.slot_name();

    let setup = bemi_worker(&["setup", "--slot", slot, "--tables", "item"], &url);
    let setup_text = text(&setup);
    assert!(setup.status.success(), "{setup_text}");
    assert!(setup_text.contains("bemi is set up"), "{setup_text}");

    let status = bemi_worker(&["status", "--slot", slot], &url);
    let status_text = text(&status);
    assert_eq!(status.status.code(), Some(1), "{status_text}");
    assert!(
        status_text.contains(&format!(
            "slot:                {slot} (no worker connected)"
        )),
        "{status_text}"
    );
    assert!(
        status_text.contains(&format!(
            "health:              warning: no worker is streaming from the slot {slot}"
        )),
        "{status_text}"
    );
    assert!(
        status_text.contains("last stored commit:  none yet"),
        "{status_text}"
    );
    assert!(status_text.contains("postgres:***@"), "{status_text}");

    let refused = bemi_worker(&["teardown", "--slot", slot], &url);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("run it again with --yes to confirm"),
        "{}",
        text(&refused)
    );

    let teardown = bemi_worker(&["teardown", "--slot", slot, "--yes"], &url);
    assert!(teardown.status.success(), "{}", text(&teardown));
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
    // An error only an operator can fix (here a role that does not exist) stops the worker at
    // once with exit code 78 (EX_CONFIG), so that a supervisor does not restart into it.
    let refused_role = bemi_worker(
        &["run", "--slot", slot],
        &database.url_for_user("no_such_role", None),
    );
    assert_eq!(
        refused_role.status.code(),
        Some(78),
        "{}",
        text(&refused_role)
    );

    let bad = bemi_worker(&["status"], &url.replace("@127.0.0.1", "@127.0.0.1:1"));
    let bad_text = text(&bad);
    // A status that cannot be read is critical for a monitoring check.
    assert_eq!(bad.status.code(), Some(2), "{bad_text}");
    for output in [
        &setup_text,
        &status_text,
        &text(&refused),
        &text(&teardown),
        &bad_text,
    ] {
        assert!(
            !output.contains("Sup3rS3cretPw"),
            "password leaked: {output}"
        );
    }
}

/// The rows of `parent` and `child`, as text, in key order.
async fn rows(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT 'parent ' || p::text FROM parent p UNION ALL SELECT 'child ' || c::text FROM child c ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_a_request_through_the_binary() {
    let fixture = crate::support::fixture(
        test_database!(),
        "CREATE TABLE parent (id int PRIMARY KEY, name text NOT NULL);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id) ON DELETE CASCADE);
         INSERT INTO parent VALUES (1, 'one'), (3, 'three');
         INSERT INTO child VALUES (10, 1), (11, 1);",
    )
    .await;
    let worker = crate::support::RunningWorker::start(fixture.config());
    let before = rows(&fixture.client).await;
    let request = serde_json::json!({"request_id": "req-1", "user_id": 7});
    for sql in [
        "INSERT INTO parent VALUES (2, 'two')",
        "INSERT INTO child VALUES (20, 2)",
        "UPDATE parent SET name = 'THREE' WHERE id = 3",
        // Cascades to children 10 and 11: re-inserting them needs parent 1 first.
        "DELETE FROM parent WHERE id = 1",
    ] {
        fixture.tagged(sql, request.clone()).await;
    }
    fixture.wait_for(6).await;
    let url = fixture.database.url();
    let slot = fixture.database.slot_name().to_owned();
    let revert = |extra: &[&str]| {
        let mut args = vec![
            "revert",
            "--slot",
            &slot,
            "--context",
            r#"{"request_id":"req-1"}"#,
        ];
        args.extend_from_slice(extra);
        bemi_worker(&args, &url)
    };

    let dry_run = revert(&["--dry-run"]);
    let dry_text = text(&dry_run);
    assert!(dry_run.status.success(), "{dry_text}");
    assert!(dry_text.contains("would revert 6 change(s)"), "{dry_text}");
    assert!(dry_text.contains("restore name"), "{dry_text}");
    // A dry run changes nothing.
    assert_eq!(
        rows(&fixture.client).await,
        ["child (20,2)", "parent (2,two)", "parent (3,THREE)"]
    );

    let applied = revert(&[]);
    let applied_text = text(&applied);
    assert!(applied.status.success(), "{applied_text}");
    assert!(
        applied_text.contains("reverted 6 change(s)"),
        "{applied_text}"
    );
    assert_eq!(rows(&fixture.client).await, before);

    // The undo is audited: each compensating change names the change it reverts.
    let all = fixture.wait_for(12).await;
    for undo in &all[6..] {
        assert_eq!(undo.context["tool"], "bemi-worker revert", "{undo:?}");
        assert_eq!(
            undo.context["revert"]["of"]["context"]["request_id"],
            "req-1"
        );
        assert!(undo.context["revert"]["change_id"].is_string(), "{undo:?}");
    }

    // Reverting again finds the rows changed since (by the revert itself): refused, nothing
    // changed, exit status 1.
    let again = revert(&[]);
    let again_text = text(&again);
    assert!(!again.status.success(), "{again_text}");
    assert!(again_text.contains("CONFLICT"), "{again_text}");
    assert!(again_text.contains("nothing was reverted"), "{again_text}");
    assert_eq!(rows(&fixture.client).await, before);
    worker.stop().await.unwrap();
}

/// `status --json`: the documented shape, and the exit code of a monitoring check.
fn status_json(url: &str, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut all = vec!["status", "--json"];
    all.extend_from_slice(args);
    let output = bemi_worker(&all, url);
    let json = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", text(&output)));
    (output.status.code(), json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_and_exit_codes_say_the_health() {
    let fixture =
        crate::support::fixture(test_database!(), "CREATE TABLE item (id int PRIMARY KEY);").await;
    let url = fixture.database.url();
    let slot = fixture.setup.options().slot_name().to_owned();

    // Set up, no worker: a warning.
    let (code, json) = status_json(&url, &["--slot", &slot]);
    assert_eq!(code, Some(1), "{json:#}");
    assert_eq!(json["format"], "bemi-status/1");
    assert_eq!(json["health"], "warning");
    assert_eq!(json["slot"], slot.as_str());
    assert_eq!(json["slot_info"]["active_pid"], serde_json::Value::Null);
    assert!(json["slot_info"]["lag_bytes"].is_i64(), "{json:#}");
    assert!(json["partitions"]["count"].is_i64(), "{json:#}");
    assert_eq!(json["rejected_changes"], 0);
    assert_eq!(
        json["reasons"],
        serde_json::json!([format!("no worker is streaming from the slot {slot}")])
    );

    // A worker streaming and caught up: healthy.
    let worker = crate::support::RunningWorker::start(fixture.config());
    fixture.sql("INSERT INTO item VALUES (1)").await;
    fixture.wait_for(1).await;
    let healthy = bemi_test_harness::wait_until_async(
        "a healthy status",
        crate::support::TIMEOUT,
        || async {
            let (code, json) = status_json(&url, &["--slot", &slot]);
            (code == Some(0)).then_some(json)
        },
    )
    .await;
    assert_eq!(healthy["health"], "healthy");
    assert_eq!(healthy["reasons"], serde_json::json!([]));
    assert!(healthy["slot_info"]["active_pid"].is_i64(), "{healthy:#}");
    assert!(healthy["last_stored_commit"].is_string(), "{healthy:#}");

    // Lag limits: any lag at all is past a limit of 0 bytes.
    let (code, json) = status_json(&url, &["--slot", &slot, "--warn-lag", "0"]);
    assert_eq!(
        (code, &json["health"]),
        (Some(1), &"warning".into()),
        "{json:#}"
    );
    let (code, json) = status_json(&url, &["--slot", &slot, "--critical-lag", "0B"]);
    assert_eq!(
        (code, &json["health"]),
        (Some(2), &"critical".into()),
        "{json:#}"
    );
    let refused = bemi_worker(&["status", "--warn-lag", "64 parsecs"], &url);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    worker.stop().await.unwrap();

    // No slot: critical.
    let (code, json) = status_json(&url, &["--slot", "bemi_no_such_slot"]);
    assert_eq!(code, Some(2), "{json:#}");
    assert_eq!(json["health"], "critical");
    assert_eq!(json["slot_info"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_slot_and_the_stage_on_every_line() {
    let fixture =
        crate::support::fixture(test_database!(), "CREATE TABLE item (id int PRIMARY KEY);").await;
    let url = fixture.database.url();
    let slot = fixture.setup.options().slot_name().to_owned();
    let (child, log) = crate::support::spawn_binary(
        &[
            "run",
            "--database-url",
            &url,
            "--slot",
            &slot,
            "--log-format",
            "json",
        ],
        &format!("json-logs-{slot}"),
    );
    fixture.sql("INSERT INTO item VALUES (1)").await;
    fixture.wait_for(1).await;
    let exit = crate::support::terminate(child).await;
    let log = std::fs::read_to_string(log).unwrap();
    assert!(exit.success(), "{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    let mut stages = std::collections::BTreeSet::new();
    for line in &lines {
        let spans = line["spans"].as_array().unwrap_or_else(|| panic!("{line}"));
        assert_eq!(spans[0]["command"], "run", "{line}");
        assert_eq!(spans[0]["slot"], slot.as_str(), "{line}");
        if let Some(stage) = spans.iter().rev().find_map(|span| span["stage"].as_str()) {
            stages.insert(stage.to_owned());
        }
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    // The session's lines say where they come from.
    assert!(
        stages.contains("prepare") && stages.contains("stream"),
        "{stages:?}: {log}"
    );
}
