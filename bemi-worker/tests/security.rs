//! Security and data protection: least privilege, column policies applied before anything is
//! stored, secrets kept out of logs, hostile names and contexts.

use bemi_core::policy::{ColumnAction, ColumnPolicies};
use bemi_core::setup::SetupOptions;
use bemi_core::{Audited, QualifiedName};
use bemi_test_harness::{test_database, wait_until_async};
use bemi_worker::ConnectionOptions;
use serde_json::{Value, json};

use crate::support::{RunningWorker, TIMEOUT, fixture, fixture_with, spawn_binary};

const USERS: &str = "
    CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text, api_token text,
                        name text, updated_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE sessions (id text PRIMARY KEY, api_token text);";

/// Every stored change's text, to grep for what must never be stored.
async fn stored_text(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT COALESCE(string_agg(c::text, E'\\n' ORDER BY commit_lsn, sequence), '') FROM bemi.changes c",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn images(client: &tokio_postgres::Client) -> Vec<(String, String, Value, Value)> {
    client
        .query(
            "SELECT \"table\", operation, \"before\", \"after\" FROM bemi.changes ORDER BY commit_lsn, sequence",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}

fn without_updated_at(mut image: Value) -> Value {
    if let Some(object) = image.as_object_mut() {
        object.remove("updated_at");
    }
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_policies_redact_drop_and_skip_noise_before_storing() {
    let fixture = fixture(test_database!(), USERS).await;
    let mut config = fixture.config();
    let mut policies = ColumnPolicies::default();
    policies
        .add_list(
            ColumnAction::Redact,
            "password_hash, *.api_token, sessions.id",
        )
        .unwrap();
    policies
        .add_list(ColumnAction::Drop, "users.email")
        .unwrap();
    policies
        .add_list(ColumnAction::Noise, "updated_at")
        .unwrap();
    config.column_policies = policies;
    let worker = RunningWorker::start(config);
    for sql in [
        "INSERT INTO users (id, email, password_hash, api_token, name) \
         VALUES (1, 'ann@example.com', 'hash-secret-1', 'token-secret-1', 'Ann')",
        // Only noise: not stored.
        "UPDATE users SET updated_at = now() + interval '1 minute' WHERE id = 1",
        "UPDATE users SET name = 'Anne', updated_at = now() + interval '2 minutes' WHERE id = 1",
        "UPDATE users SET password_hash = 'hash-secret-2' WHERE id = 1",
        "INSERT INTO sessions VALUES ('session-key', 'token-secret-3')",
        "DELETE FROM users WHERE id = 1",
    ] {
        fixture.sql(sql).await;
    }
    fixture.wait_for(5).await;

    let stored = stored_text(&fixture.client).await;
    for secret in ["secret", "ann@example.com", "email"] {
        assert!(!stored.contains(secret), "{secret} stored: {stored}");
    }
    let images: Vec<(String, String, Value, Value)> = images(&fixture.client)
        .await
        .into_iter()
        .map(|(table, operation, before, after)| {
            (
                table,
                operation,
                without_updated_at(before),
                without_updated_at(after),
            )
        })
        .collect();
    let user = |name: &str| json!({"id": 1, "password_hash": "[REDACTED]", "api_token": "[REDACTED]", "name": name});
    assert_eq!(
        images,
        [
            ("users".into(), "CREATE".into(), json!({}), user("Ann")),
            ("users".into(), "UPDATE".into(), user("Ann"), user("Anne")),
            ("users".into(), "UPDATE".into(), user("Anne"), user("Anne")),
            (
                "sessions".into(),
                "CREATE".into(),
                json!({}),
                // A key column is never redacted: history and revert find rows by it.
                json!({"id": "session-key", "api_token": "[REDACTED]"})
            ),
            ("users".into(), "DELETE".into(), user("Anne"), json!({})),
        ]
    );
    worker.stop().await.unwrap();
}

/// A model whose attributes say what the worker must protect.
struct Account;

impl Audited for Account {
    type Key = i32;
    const SCHEMA: &'static str = "public";
    const TABLE: &'static str = "users";
    const PRIMARY_KEY: &'static [&'static str] = &["id"];
    const IGNORED: &'static [&'static str] = &["email"];
    const REDACTED: &'static [&'static str] = &["password_hash"];
    const NOISE: &'static [&'static str] = &["updated_at"];

    fn key(&self) -> i32 {
        1
    }

    fn from_row(_: &bemi_core::Image) -> bemi_core::Result<Self> {
        Ok(Account)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_attributes_given_to_setup_protect_columns_with_least_privilege() {
    let options = SetupOptions::default().audited::<Account>().unwrap();
    let fixture = fixture_with(test_database!(), USERS, options).await;
    let role = fixture.role("least", "REPLICATION").await;
    let grants = fixture.setup.worker_grants_sql(&role).unwrap();
    fixture.sql(&grants.source).await;
    fixture.sql(&grants.destination).await;

    // The role has exactly the printed privileges: no superuser, nothing on `users`.
    let mut config = fixture.config();
    config.source =
        ConnectionOptions::parse(&fixture.database.url_for_user(&role, Some("bemi-test"))).unwrap();
    config.store_into(
        config.source.clone(),
        bemi_core::setup::SetupOptions::default()
            .changes_table_name()
            .clone(),
    );
    let worker = RunningWorker::start(config.clone());
    fixture
        .sql(
            "INSERT INTO users (id, email, password_hash, name) VALUES (1, 'a@b.c', 'hash-secret', 'Ann');
             UPDATE users SET updated_at = now() + interval '1 hour';
             UPDATE users SET name = 'Anne';",
        )
        .await;
    fixture.wait_for(2).await;
    worker.stop().await.unwrap();
    let images = images(&fixture.client).await;
    assert_eq!(
        images.len(),
        2,
        "the noise-only UPDATE is not stored: {images:?}"
    );
    assert_eq!(
        without_updated_at(images[1].3.clone()),
        json!({"id": 1, "password_hash": "[REDACTED]", "api_token": null, "name": "Anne"})
    );
    assert!(!stored_text(&fixture.client).await.contains("secret"));

    // A role granted before partitions existed (no SELECT on the registry, no EXECUTE on the
    // function) still stores: the table routes the changes; only the partitions ahead wait.
    fixture
        .sql(&format!(
            "REVOKE SELECT ON bemi.partitioned_changes FROM {role}; \
             REVOKE EXECUTE ON FUNCTION bemi.create_change_partitions(text, timestamptz) FROM {role};"
        ))
        .await;
    let worker = RunningWorker::start(config.clone());
    fixture.sql("UPDATE users SET name = 'Annie'").await;
    fixture.wait_for(3).await;
    worker.stop().await.unwrap();

    // Without the right to read the policies, the worker refuses to run (it would store what
    // they redact) and names the GRANT.
    fixture
        .sql(&format!(
            "REVOKE SELECT ON bemi.column_policies FROM {role}"
        ))
        .await;
    let error = RunningWorker::start(config).ended().await.unwrap_err();
    fixture
        .sql(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .await;
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "GRANT SELECT ON bemi.column_policies TO \"{role}\";"
        )),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_the_worker_logs() {
    let fixture = fixture(test_database!(), "CREATE TABLE item (id int PRIMARY KEY);").await;
    // The test server trusts connections: the password is ignored, and must never show.
    let url = fixture
        .database
        .url_for_user("postgres", Some("Pa55w0rdNeverLogged"));
    let slot = fixture.database.slot_name().to_owned();
    let (mut child, log) = spawn_binary(
        &[
            "run",
            "--database-url",
            &url,
            "--slot",
            &slot,
            "--log-interval-seconds",
            "1",
        ],
        &format!("password-{slot}"),
    );
    fixture.sql("INSERT INTO item VALUES (1)").await;
    fixture.wait_for(1).await;
    // A destination that cannot be reached: errors with the URL are logged and retried.
    let (head, tail) = url.split_once("@127.0.0.1:").unwrap();
    let database = &tail[tail.find('/').unwrap()..];
    let unreachable = format!("{head}@127.0.0.1:1{database}");
    let (mut failing, failing_log) = spawn_binary(
        &[
            "run",
            "--database-url",
            &url,
            "--destination-url",
            &unreachable,
            "--slot",
            &format!("{slot}_other"),
        ],
        &format!("password-failing-{slot}"),
    );
    wait_until_async("the failing worker to log its error", TIMEOUT, || async {
        let text = std::fs::read_to_string(&failing_log).unwrap_or_default();
        text.contains("reconnecting").then_some(())
    })
    .await;
    child.kill().unwrap();
    failing.kill().unwrap();
    let _ = (child.wait(), failing.wait());
    for path in [&log, &failing_log] {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(!text.is_empty());
        assert!(
            !text.contains("Pa55w0rdNeverLogged"),
            "password in {path:?}: {text}"
        );
    }
    let failing_text = std::fs::read_to_string(&failing_log).unwrap();
    assert!(failing_text.contains("postgres:***@"), "{failing_text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_quotes_spaces_and_unicode_are_captured_exactly() {
    let schema = "Ünïcode \"Schema\"";
    let table = "Tàble, with \"quotes\"";
    let column = "col \"q\" ,x";
    let sql = format!(
        "CREATE SCHEMA {schema_ident}; CREATE TABLE {schema_ident}.{table_ident} \
         ({column_ident} text PRIMARY KEY, \"ß\" int);",
        schema_ident = bemi_core::quote_ident(schema).unwrap(),
        table_ident = bemi_core::quote_ident(table).unwrap(),
        column_ident = bemi_core::quote_ident(column).unwrap(),
    );
    let options = SetupOptions::default().schemas([schema]);
    let fixture = fixture_with(test_database!(), &sql, options).await;
    let worker = RunningWorker::start(fixture.config());
    let qualified = QualifiedName::new(schema, table).unwrap();
    fixture
        .sql(&format!("INSERT INTO {qualified} VALUES ('kéy \"1\"', 7)"))
        .await;
    fixture.wait_for(1).await;
    let row = fixture
        .client
        .query_one(
            "SELECT schema, \"table\", primary_key, \"after\" FROM bemi.changes",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), schema);
    assert_eq!(row.get::<_, String>(1), table);
    assert_eq!(row.get::<_, String>(2), "kéy \"1\"");
    assert_eq!(row.get::<_, Value>(3), json!({column: "kéy \"1\"", "ß": 7}));
    worker.stop().await.unwrap();
}

/// A JSON object nested `depth` levels deep: `{"a":{"a":...1...}}`.
fn nested(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_deep_contexts_are_bounded_work() {
    let fixture = fixture(test_database!(), "CREATE TABLE item (id int PRIMARY KEY);").await;
    let worker = RunningWorker::start(fixture.config());
    let wide: serde_json::Map<String, Value> = (0..10_000)
        .map(|key| (format!("key{key}"), Value::from(key)))
        .collect();
    let wide = Value::Object(wide);
    fixture
        .tagged("INSERT INTO item VALUES (1)", wide.clone())
        .await;
    let deep_100: Value = serde_json::from_str(&nested(100)).unwrap();
    fixture
        .tagged("INSERT INTO item VALUES (2)", deep_100.clone())
        .await;
    // Far deeper than any JSON parser recurses: hand-written, past the encoder.
    fixture
        .sql(&format!(
            "INSERT INTO item VALUES (3) /*Bemi {} Bemi*/",
            nested(100_000)
        ))
        .await;
    let changes = fixture.wait_for(3).await;
    assert_eq!(changes[0].context, wide);
    assert_eq!(changes[1].context, deep_100);
    let reason = changes[2].context["_bemi"]["invalid_context"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("recursion limit"), "{reason}");
    // The marker keeps a bounded prefix of what was sent, not 600 kB.
    assert!(changes[2].context.to_string().len() < 20_000);
    worker.stop().await.unwrap();
}
