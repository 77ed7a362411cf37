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
    for command in ["setup", "run", "status", "teardown"] {
        assert!(help.contains(command), "{help}");
    }
    let run_help = text(&bemi_worker(&["run", "--help"], ""));
    for flag in [
        "--database-url",
        "--destination-url",
        "--slot",
        "--batch-size",
        "DATABASE_URL",
        "BEMI_DESTINATION_URL",
    ] {
        assert!(run_help.contains(flag), "{flag}: {run_help}");
    }
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
    assert!(status.status.success(), "{status_text}");
    assert!(
        status_text.contains(&format!(
            "slot:                {slot} (no worker connected)"
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

    let bad = bemi_worker(&["status"], &url.replace("@127.0.0.1", "@127.0.0.1:1"));
    let bad_text = text(&bad);
    assert!(!bad.status.success());
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
