//! Erasure that keeps the proof: `erase` removes a subject's personal values (columns and
//! context keys declared personal) from every stored change, before and after the request,
//! leaves a marker and an audited record, touches no other subject, and `verify` still passes;
//! a worker that is stopped or behind carries the request out when it reaches it.

use std::time::Duration;

use bemi_core::QualifiedName;
use bemi_core::policy::ColumnAction;
use bemi_test_harness::{test_database, wait_until_async};
use bemi_worker::{ErasureOutcome, ErasureRequest, Finding, WorkerConfig};
use serde_json::json;

use crate::support::{Fixture, RunningWorker, TIMEOUT, fixture, verify, wait_all_sealed};

const TABLES: &str = "CREATE TABLE users (id int PRIMARY KEY, name text NOT NULL, \
    email text, phone text, notes jsonb); \
    CREATE TABLE orders (id int PRIMARY KEY, total numeric NOT NULL);";

/// Ann (42) is erased; Bob (7) is not.
const ANN: [&str; 4] = [
    "ann-secret@example.org",
    "ann-renamed@example.org",
    "+33 6 12 34 56 78",
    "ann-context@example.org",
];
const BOB: [&str; 2] = ["bob-kept@example.org", "bob-context@example.org"];

fn config(fixture: &Fixture) -> WorkerConfig {
    let mut config = fixture.config();
    config.seal_interval = Some(Duration::from_millis(20));
    config
        .column_policies
        .add_list(
            ColumnAction::Personal,
            "users.email, users.phone, users.notes",
        )
        .unwrap();
    config.personal_context = vec!["user_email".to_owned()];
    config
}

/// How many stored changes hold `text` anywhere (any column, as the row's text).
async fn holding(fixture: &Fixture, text: &str) -> i64 {
    fixture
        .client
        .query_one(
            "SELECT count(*) FROM bemi.changes_stored c WHERE strpos(c::text, $1) > 0",
            &[&text],
        )
        .await
        .unwrap()
        .get(0)
}

/// Ann's and Bob's rows, changed by themselves (the context names them) and by raw SQL.
async fn write_history(fixture: &Fixture) {
    fixture
        .tagged(
            &format!(
                "INSERT INTO users VALUES (42, 'Ann', '{}', '{}', '{{\"diet\": \"vegan\"}}'), \
                 (7, 'Bob', '{}', NULL, NULL)",
                ANN[0], ANN[2], BOB[0]
            ),
            json!({"user_id": 0, "user_email": "admin@example.org"}),
        )
        .await;
    fixture
        .tagged(
            &format!("UPDATE users SET email = '{}' WHERE id = 42", ANN[1]),
            json!({"user_id": 42, "user_email": ANN[3]}),
        )
        .await;
    fixture
        .tagged(
            "UPDATE users SET name = 'Ann B.' WHERE id = 42",
            json!({"user_id": "42", "user_email": ANN[3]}),
        )
        .await;
    fixture
        .tagged(
            "INSERT INTO orders VALUES (1, 9.99)",
            json!({"user_id": 42, "user_email": ANN[3]}),
        )
        .await;
    fixture
        .tagged(
            "INSERT INTO orders VALUES (2, 5.00)",
            json!({"user_id": 7, "user_email": BOB[1]}),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasing_a_subject_removes_its_values_everywhere_and_the_seals_still_verify() {
    let fixture = fixture(test_database!(), TABLES).await;
    let worker = RunningWorker::start(config(&fixture));
    write_history(&fixture).await;
    fixture.wait_for(6).await;
    wait_all_sealed(&fixture).await;
    assert!(verify(&fixture).await.is_intact());
    for text in ANN.iter().chain(&BOB) {
        assert!(holding(&fixture, text).await > 0, "{text} stored");
    }

    // A legal hold on the table keeps its evidence: erasure is refused while it holds.
    let hold = bemi_worker::place_hold(
        &fixture.source,
        Some(&QualifiedName::new("public", "users").unwrap()),
        chrono::Utc::now() + chrono::TimeDelta::days(30),
        "case 7",
    )
    .await
    .unwrap();
    let held = bemi_worker::request_erasure(
        &fixture.source,
        &fixture.source,
        fixture.setup.options().changes_table_name(),
        &ErasureRequest::new(
            QualifiedName::new("public", "users").unwrap(),
            "42",
            "GDPR-1234",
        ),
        TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(
        held.to_string().contains(&format!("{hold} (case 7)")),
        "{held}"
    );
    // Erasing despite it names the hold in the request's context.

    let request = ErasureRequest::new(
        QualifiedName::new("public", "users").unwrap(),
        "42",
        "GDPR-1234",
    )
    .context_key("user_id")
    .operator("dpo@example.org")
    .despite_holds();
    let outcome = bemi_worker::request_erasure(
        &fixture.source,
        &fixture.source,
        fixture.setup.options().changes_table_name(),
        &request,
        TIMEOUT,
    )
    .await
    .unwrap();
    let ErasureOutcome::Erased {
        changes,
        ref vacuumed,
        ..
    } = outcome
    else {
        panic!("not carried out: {outcome:?}");
    };
    // Ann's insert and two updates (images), the two of her updates and her order (contexts).
    assert_eq!(changes, 4, "{outcome:?}");
    assert!(!vacuumed.is_empty(), "{outcome:?}");

    // Reverting Ann's rename restores her name, and neither compares nor writes back her erased
    // email (the source row keeps its own).
    let renamed: uuid::Uuid = fixture
        .client
        .query_one(
            "SELECT id FROM bemi.changes WHERE \"table\" = 'users' AND primary_key = '42' \
             AND operation = 'UPDATE' ORDER BY commit_lsn DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let plan = bemi_worker::revert(
        &fixture.source,
        &fixture.source,
        fixture.setup.options().changes_table_name(),
        bemi_core::revert::Revert::change(renamed),
        false,
    )
    .await
    .unwrap();
    assert!(plan.is_clean(), "{plan:?}");
    let row = fixture
        .client
        .query_one("SELECT name, email FROM users WHERE id = 42", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("Ann".to_owned(), ANN[1].to_owned())
    );
    fixture.wait_for(7).await;

    // After the request, a change of Ann's row is erased before it is stored.
    fixture
        .tagged(
            "DELETE FROM users WHERE id = 42",
            json!({"user_id": 1, "user_email": "x@example.org"}),
        )
        .await;
    fixture.wait_for(9).await;
    wait_all_sealed(&fixture).await;
    for text in ANN {
        assert_eq!(holding(&fixture, text).await, 0, "{text} erased");
    }
    assert_eq!(
        holding(&fixture, "vegan").await,
        0,
        "a personal jsonb value"
    );
    // Bob, and what is not personal, untouched.
    for text in BOB.iter().chain(&["Ann B.", "9.99", "admin@example.org"]) {
        assert!(holding(&fixture, text).await > 0, "{text} kept");
    }
    // Every trace is a marker, read through the view as the ORMs read it.
    let images: Vec<serde_json::Value> = crate::support::first_column(
        &fixture.client,
        "SELECT coalesce(\"after\", '{}') || \"before\" FROM bemi.changes \
         WHERE \"table\" = 'users' AND primary_key = '42'",
        &[],
    )
    .await;
    assert_eq!(images.len(), 5);
    for image in &images {
        assert!(bemi_core::is_erased(&image["email"]), "{image}");
        assert!(!image["name"].is_null(), "{image}");
    }

    // The erasure itself is audited: a change of bemi.erasure_requests with its context, and
    // a record of what was done.
    let audited: Vec<serde_json::Value> = crate::support::first_column(
        &fixture.client,
        "SELECT jsonb_build_object('after', \"after\", 'context', context) FROM bemi.changes \
         WHERE \"table\" = 'erasure_requests'",
        &[],
    )
    .await;
    assert_eq!(audited.len(), 1, "{audited:?}");
    assert_eq!(audited[0]["after"]["reason"], "GDPR-1234");
    assert_eq!(audited[0]["after"]["key"], "42");
    assert_eq!(audited[0]["context"]["operator"], "dpo@example.org");
    assert_eq!(audited[0]["context"]["despite_holds"], json!([hold]));
    let recorded = fixture
        .client
        .query_one(
            "SELECT changes, reason, context_key FROM bemi.erasures",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(recorded.get::<_, i32>(0), 4);
    assert_eq!(recorded.get::<_, String>(1), "GDPR-1234");
    worker.stop().await.unwrap();

    // The seals verify: every change, erased or not, is intact.
    let report = verify(&fixture).await;
    assert!(report.is_intact(), "{report:?}");
    let total: i64 = fixture
        .client
        .query_one("SELECT count(*) FROM bemi.changes_stored", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(i64::try_from(report.intact).unwrap(), total);

    // A marker is no cover for tampering: another commitment in it is an edited change.
    let marked: uuid::Uuid = fixture
        .client
        .query_one(
            "SELECT id FROM bemi.changes_stored WHERE primary_key = '42' AND operation = 'CREATE'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    fixture
        .sql(&format!(
            "UPDATE bemi.changes_stored SET \"after\" = regexp_replace(\"after\"::text, \
             '\"bemi_erased\": \"[0-9a-f]', '\"bemi_erased\": \"g')::json WHERE id = '{marked}'"
        ))
        .await;
    let report = verify(&fixture).await;
    assert!(
        matches!(report.findings.as_slice(), [Finding::Edited { id, .. }] if *id == marked),
        "{report:?}"
    );
}

/// The worker is stopped when the erasure is asked for: `erase` says it is pending (exit 3);
/// the worker, started later, stores Ann's changes and the request in stream order and erases
/// them all, and the seals verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_carries_the_erasure_out_when_it_reaches_it() {
    let fixture = fixture(test_database!(), TABLES).await;
    write_history(&fixture).await;
    // Ann's key changes, and a value is written under the new key: erasing by the old key
    // follows it.
    fixture
        .sql(
            "UPDATE users SET id = 4200 WHERE id = 42; \
              UPDATE users SET phone = 'ann-rekeyed-phone' WHERE id = 4200",
        )
        .await;
    let url = fixture.database.url();
    let slot = fixture.setup.options().slot_name().to_owned();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bemi-worker"))
        .args([
            "erase",
            "--database-url",
            &url,
            "--slot",
            &slot,
            "--table",
            "users",
            "--key",
            "42",
            "--context-key",
            "user_id",
            "--reason",
            "GDPR-77",
            "--wait-seconds",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("not carried out yet"),
        "{output:?}"
    );

    // `status` shows the request waiting.
    let status = bemi_worker::status(&fixture.source, &fixture.source, fixture.setup.options())
        .await
        .unwrap();
    let erasures = status.erasures.clone().unwrap();
    assert_eq!((erasures.carried_out, erasures.waiting), (0, 1), "{status}");
    assert!(erasures.oldest_waiting.is_some());

    let worker = RunningWorker::start(config(&fixture));
    wait_until_async("the erasure carried out", TIMEOUT, || async {
        let done: i64 = fixture
            .client
            .query_one("SELECT count(*) FROM bemi.erasures", &[])
            .await
            .ok()?
            .get(0);
        (done == 1).then_some(())
    })
    .await;
    wait_all_sealed(&fixture).await;
    worker.stop().await.unwrap();
    for text in ANN.iter().chain(&["ann-rekeyed-phone"]) {
        assert_eq!(holding(&fixture, text).await, 0, "{text} erased");
    }
    for text in BOB {
        assert!(holding(&fixture, text).await > 0, "{text} kept");
    }
    let report = verify(&fixture).await;
    assert!(report.is_intact(), "{report:?}");
    let status = bemi_worker::status(&fixture.source, &fixture.source, fixture.setup.options())
        .await
        .unwrap();
    let erasures = status.erasures.clone().unwrap();
    assert_eq!((erasures.carried_out, erasures.waiting), (1, 0), "{status}");
    assert!(
        status
            .to_string()
            .contains("erasures:            1 carried out\n"),
        "{status}"
    );

    // Ann's row is still there under its new key; a worker started later learns that key from
    // the stored key change, and erases what she writes meanwhile before storing it.
    let stored: i64 = fixture
        .client
        .query_one("SELECT count(*) FROM bemi.changes_stored", &[])
        .await
        .unwrap()
        .get(0);
    fixture
        .sql("UPDATE users SET phone = 'ann-after-restart' WHERE id = 4200")
        .await;
    let worker = RunningWorker::start(config(&fixture));
    fixture.wait_for(usize::try_from(stored).unwrap() + 1).await;
    wait_all_sealed(&fixture).await;
    worker.stop().await.unwrap();
    assert_eq!(holding(&fixture, "ann-after-restart").await, 0);
    assert!(verify(&fixture).await.is_intact());
}
