//! The trust boundary: every role that can connect may be hostile, and every value PostgreSQL
//! accepts reaches the worker. Nothing here may stop, forge or silence the trail.

use std::time::Duration;

use bemi_test_harness::test_database;
use serde_json::{Value, json};

use crate::support::{RunningWorker, fixture, stored};

/// A `json` value nested `depth` arrays deep, built by PostgreSQL itself (no parser involved).
fn deep_json_sql(depth: usize) -> String {
    format!(
        "DO $$ DECLARE v json := '1'; BEGIN \
           FOR i IN 1..{depth} LOOP v := json_build_array(v); END LOOP; \
           INSERT INTO doc VALUES (1, v); \
         END $$"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_nested_too_deep_for_the_destination_is_kept_as_text_and_capture_goes_on() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE doc (id int PRIMARY KEY, body json);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    // jsonb input refuses it with 54001 (stack depth limit exceeded).
    fixture.sql(&deep_json_sql(20_000)).await;
    fixture
        .tagged(
            "INSERT INTO doc VALUES (2, '[1]')",
            json!({"user": "after"}),
        )
        .await;
    let changes = fixture.wait_for(2).await;
    let unstorable = &changes[0].context["_bemi"]["unstorable"];
    let error = unstorable["error"].as_str().unwrap_or_default();
    assert!(error.contains("54001"), "{unstorable}");
    let kept = unstorable["after"].as_str().unwrap_or_default();
    assert!(
        kept.starts_with("{\"id\":1,\"body\":[[[["),
        "{}",
        &kept[..40]
    );
    assert_eq!(kept.matches('[').count(), 20_000);
    assert_eq!(changes[0].primary_key.as_deref(), Some("1"));
    assert_eq!(
        changes[1],
        stored(
            "doc",
            "CREATE",
            Some("2"),
            json!({}),
            json!({"id": 2, "body": [1]}),
            json!({"user": "after"})
        )
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_refused_even_as_text_is_parked_in_rejected_and_capture_goes_on() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE item (id int PRIMARY KEY, note text);",
    )
    .await;
    // A destination rule that refuses one row whatever its form, for a reason tied to it.
    refuse_key_in_destination(&fixture, "13").await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .sql("INSERT INTO item VALUES (12, 'a'), (13, 'poison'), (14, 'b')")
        .await;
    fixture.sql("INSERT INTO item VALUES (15, 'later')").await;
    let changes = fixture.wait_for(3).await;
    let keys: Vec<_> = changes
        .iter()
        .map(|change| change.primary_key.clone().unwrap_or_default())
        .collect();
    assert_eq!(keys, ["12", "14", "15"]);
    let parked = fixture
        .client
        .query_one(
            "SELECT \"table\", reason, convert_from(payload, 'UTF8')::jsonb, \
                    commit_lsn > 0 AND position > 0 AND transaction_id > 0 \
             FROM bemi.rejected",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(parked.get::<_, String>(0), "item");
    let reason: String = parked.get(1);
    assert!(
        reason.contains("key 13 is refused (SQLSTATE 22023)"),
        "{reason}"
    );
    let payload: Value = parked.get(2);
    assert_eq!(payload["after"], json!({"id": 13, "note": "poison"}));
    assert!(parked.get::<_, bool>(3));
    let status = bemi_worker::status(&fixture.source, &fixture.source, fixture.setup.options())
        .await
        .unwrap();
    assert_eq!(status.rejected_changes, Some(1));
    assert!(
        status.to_string().contains("rejected changes:    1"),
        "{status}"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_statement_timeout_and_a_locked_changes_table_only_delay_capture() {
    let fixture = fixture(test_database!(), "CREATE TABLE item (id int PRIMARY KEY);").await;
    fixture
        .sql(&format!(
            "ALTER DATABASE {} SET statement_timeout = '300ms'; \
             ALTER DATABASE {0} SET lock_timeout = '300ms'",
            bemi_core::quote_ident(fixture.database.name()).unwrap()
        ))
        .await;
    let worker = RunningWorker::start(fixture.config());
    fixture.sql("INSERT INTO item VALUES (1)").await;
    fixture.wait_for(1).await;
    // Hold the changes table for several times the timeouts while a change arrives.
    let locker = fixture.database.connect().await;
    locker
        .batch_execute(
            "SET statement_timeout = 0; BEGIN; LOCK TABLE bemi.changes IN ACCESS EXCLUSIVE MODE",
        )
        .await
        .unwrap();
    fixture.sql("INSERT INTO item VALUES (2)").await;
    let before = worker.metrics.sessions();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    locker.batch_execute("COMMIT").await.unwrap();
    let changes = fixture.wait_for(2).await;
    assert_eq!(changes[1].primary_key.as_deref(), Some("2"));
    // The same session waited: no timeout ended it.
    assert_eq!(worker.metrics.sessions(), before);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_replication_role_replica_cannot_make_a_statement_inherit_context() {
    let fixture = fixture(test_database!(), "CREATE TABLE item (id int PRIMARY KEY);").await;
    let worker = RunningWorker::start(fixture.config());
    let tagged = bemi_core::CommentEncoder::default().tag(
        "INSERT INTO item VALUES (1)",
        &bemi_core::Context::try_from(json!({"user": "alice"})).unwrap(),
    );
    // One statement per query, as an application sends them.
    for statement in [
        "BEGIN",
        &tagged,
        "SET LOCAL session_replication_role = replica",
        "INSERT INTO item VALUES (2)",
        "COMMIT",
    ] {
        fixture.sql(statement).await;
    }
    let changes = fixture.wait_for(2).await;
    assert_eq!(changes[0].context, json!({"user": "alice"}));
    assert_eq!(changes[1].context, json!({}));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_warns_about_disabled_triggers_and_key_only_replica_identity() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); \
         CREATE TABLE c (id int PRIMARY KEY);",
    )
    .await;
    let status = || async {
        bemi_worker::status(&fixture.source, &fixture.source, fixture.setup.options())
            .await
            .unwrap()
    };
    assert_eq!(status().await.warnings, Vec::<String>::new());
    fixture
        .sql(
            "ALTER TABLE a DISABLE TRIGGER _bemi_context; \
             ALTER TABLE b REPLICA IDENTITY DEFAULT; \
             DROP TRIGGER _bemi_context ON c;",
        )
        .await;
    let status = status().await;
    assert_eq!(status.warnings.len(), 3, "{:?}", status.warnings);
    assert!(status.warnings[0].starts_with("public.a: the context trigger is disabled"));
    assert!(status.warnings[1].starts_with("public.b: REPLICA IDENTITY is not FULL"));
    assert!(
        status.warnings[2].starts_with("public.c: the context trigger _bemi_context is missing")
    );
    assert!(status.to_string().contains("warning:"), "{status}");
}

/// A role name unique to the test's database (roles are shared by the cluster), short enough
/// for PostgreSQL's 63-byte names.
fn role_name(database: &bemi_test_harness::TestDatabase, suffix: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    database.name().hash(&mut hasher);
    format!("r{:016x}_{suffix}", hasher.finish())
}

/// A connection as a new login role with no privileges at all.
async fn unprivileged_role(
    fixture: &crate::support::Fixture,
    suffix: &str,
) -> tokio_postgres::Client {
    let (role, _) = role(&fixture.client, &fixture.database, suffix, "").await;
    connect_as(&fixture.database, &role).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_snapshot_messages_from_any_role_are_ignored_and_counted() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE account (id int PRIMARY KEY, role text);",
    )
    .await;
    let mallory = unprivileged_role(&fixture, "mallory").await;
    let worker = RunningWorker::start(fixture.config());
    let oid: u32 = fixture
        .client
        .query_one("SELECT 'account'::regclass::oid", &[])
        .await
        .unwrap()
        .get(0);
    // A header the catalog cannot resolve (a 64-character name, a NUL), one naming a real table
    // the role cannot read, and a forged row; then a flood of 20,000 headers.
    mallory
        .batch_execute(&format!(
            "BEGIN; \
             SELECT pg_logical_emit_message(true, '_bemi_snapshot', \
               '{{\"relation\":1,\"schema\":\"public\",\"table\":\"' || repeat('x', 64) || '\",\"columns\":[]}}'); \
             SELECT pg_logical_emit_message(true, '_bemi_snapshot', \
               '{{\"relation\":1,\"schema\":\"public\\u0000\",\"table\":\"t\",\"columns\":[]}}'); \
             SELECT pg_logical_emit_message(true, '_bemi_snapshot', \
               '{{\"relation\":{oid},\"schema\":\"public\",\"table\":\"account\",\"columns\":[[\"id\",23],[\"role\",25]]}}'); \
             SELECT pg_logical_emit_message(true, '_bemi_snapshot_row', '[\"1\",\"admin\"]'); \
             SELECT pg_logical_emit_message(false, '_bemi_snapshot_row', '[\"2\",\"admin\"]'); \
             COMMIT; \
             SELECT count(pg_logical_emit_message(true, '_bemi_snapshot', '{{\"relation\":1}}')) \
               FROM generate_series(1, 20000);"
        ))
        .await
        .unwrap();
    fixture.sql("INSERT INTO account VALUES (7, 'user')").await;
    let changes = fixture.wait_for(1).await;
    assert_eq!(
        changes,
        [stored(
            "account",
            "CREATE",
            Some("7"),
            json!({}),
            json!({"id": 7, "role": "user"}),
            json!({})
        )]
    );
    assert_eq!(worker.metrics.ignored_messages(), 5 + 20_000);
    assert_eq!(worker.metrics.sessions(), 1);
    // bemi's own snapshot still records rows, proven by its insert into bemi.message_proofs.
    bemi_worker::snapshot(
        &fixture.source,
        fixture.setup.options().publication_name(),
        &[],
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let changes = fixture.wait_for(2).await;
    assert_eq!(changes[1].operation, "SNAPSHOT");
    assert_eq!(changes[1].after, json!({"id": 7, "role": "user"}));
    // The role cannot prove anything: the proof table is closed to it.
    let refused = mallory
        .batch_execute("INSERT INTO bemi.message_proofs (kind) VALUES ('snapshot')")
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_of_any_shape_never_show_in_status_or_logs() {
    let fixture = fixture(test_database!(), "CREATE TABLE item (id int PRIMARY KEY);").await;
    let cluster = fixture.database.cluster();
    let secret = "Sl/ash?Pw9";
    // The test server trusts connections: the password is ignored, and must never show.
    let url = format!(
        "postgres://{}:{secret}@{}:{}/{}",
        cluster.user(),
        cluster.host(),
        cluster.port(),
        fixture.database.name()
    );
    let keywords = format!(
        "host={} port={} user={} dbname={} password = '{secret} x'",
        cluster.host(),
        cluster.port(),
        cluster.user(),
        fixture.database.name()
    );
    let slot = fixture.database.slot_name().to_owned();
    for (index, connection) in [url, keywords].into_iter().enumerate() {
        // From a file: nothing secret on the command line.
        let file = std::env::temp_dir().join(format!("{slot}-url-{index}"));
        std::fs::write(&file, &connection).unwrap();
        let file = file.to_str().unwrap().to_owned();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_bemi-worker"))
            .args(["status", "--database-url-file", &file, "--slot", &slot])
            .output()
            .unwrap();
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&status.stdout),
            String::from_utf8_lossy(&status.stderr)
        );
        // No worker streams yet: a warning, said by the exit code.
        assert_eq!(status.status.code(), Some(1), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        assert!(!shown.contains("Pw9"), "password shown: {shown}");

        let (mut child, log) = crate::support::spawn_binary(
            &["run", "--database-url-file", &file, "--slot", &slot],
            &format!("password-shapes-{index}-{slot}"),
        );
        fixture
            .sql(&format!("INSERT INTO item VALUES ({index})"))
            .await;
        fixture.wait_for(index + 1).await;
        child.kill().unwrap();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("streaming"), "{text}");
        assert!(!text.contains("Pw9"), "password logged: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revert_never_writes_where_a_forged_changes_row_points() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE item (id int PRIMARY KEY, note text);",
    )
    .await;
    let (victim, _) = role(&fixture.client, &fixture.database, "victim", "").await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .tagged(
            "INSERT INTO item VALUES (1, 'real')",
            json!({"request_id": "req-42"}),
        )
        .await;
    fixture.wait_for(1).await;
    // As the worker's role could: rows for a catalog, for bemi's own table and for a table bemi
    // does not track, under the same request.
    fixture
        .sql(
            "CREATE SCHEMA other; CREATE TABLE other.untracked (id int PRIMARY KEY, note text); \
             INSERT INTO other.untracked VALUES (5, 'keep')",
        )
        .await;
    let forge = |schema: &str,
                 table: &str,
                 operation: &str,
                 key: &str,
                 before: Value,
                 after: Value| {
        format!(
            "INSERT INTO bemi.changes_stored (primary_key, \"before\", \"after\", context, database, schema, \
               \"table\", operation, committed_at, queued_at, transaction_id, position, commit_lsn, sequence) \
             VALUES ('{key}', '{before}', '{after}', '{{\"request_id\":\"req-42\"}}', current_database(), \
               '{schema}', '{table}', '{operation}', now(), now(), 1, 1, 1, 0)"
        )
    };
    fixture
        .sql(&forge(
            "pg_catalog",
            "pg_authid",
            "UPDATE",
            &victim,
            json!({"rolname": victim, "rolsuper": true}),
            json!({"rolname": victim, "rolsuper": false}),
        ))
        .await;
    fixture
        .sql(&forge(
            "bemi",
            "column_policies",
            "CREATE",
            "x",
            json!({}),
            json!({"schema_name": "public", "table_name": "item", "column_name": "note", "action": "redact"}),
        ))
        .await;
    fixture
        .sql(&forge(
            "other",
            "untracked",
            "UPDATE",
            "5",
            json!({"id": 5, "note": "forged"}),
            json!({"id": 5, "note": "keep"}),
        ))
        .await;
    let changes_table = fixture.setup.options().changes_table_name().clone();
    let revert = |context: Value, force: bool| {
        let source = fixture.source.clone();
        let changes_table = changes_table.clone();
        async move {
            let revert = bemi_core::revert::Revert::context(
                bemi_core::Context::from_value(context).unwrap(),
            );
            let revert = if force { revert.force() } else { revert };
            bemi_worker::revert(&source, &source, &changes_table, revert, false).await
        }
    };
    let refused = revert(json!({"request_id": "req-42"}), false)
        .await
        .unwrap_err();
    let bemi_worker::Error::Core(bemi_core::Error::RevertConflicts(plan)) = refused else {
        panic!("expected conflicts, got {refused}");
    };
    let reasons: Vec<String> = plan
        .conflicts()
        .map(|step| match &step.outcome {
            bemi_core::revert::StepOutcome::Conflict(bemi_core::revert::Conflict::Refused {
                reason,
            }) => reason.clone(),
            other => panic!("unexpected outcome {other:?}"),
        })
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0].contains(r#""other"."untracked" is not tracked"#),
        "{reasons:?}"
    );
    assert!(reasons[1].contains(r#""bemi"."column_policies" belongs to the system or to bemi"#));
    assert!(reasons[2].contains(r#""pg_catalog"."pg_authid" belongs to the system or to bemi"#));
    // Forced: the real change is reverted; the refused ones are still never written.
    let plan = revert(json!({"request_id": "req-42"}), true).await.unwrap();
    assert_eq!(plan.steps().len(), 4);
    let state = fixture
        .client
        .query_one(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = $1), \
                    (SELECT count(*) FROM item), (SELECT note FROM other.untracked WHERE id = 5), \
                    (SELECT count(*) FROM bemi.column_policies)",
            &[&victim],
        )
        .await
        .unwrap();
    assert!(!state.get::<_, bool>(0));
    assert_eq!(state.get::<_, i64>(1), 0);
    assert_eq!(state.get::<_, String>(2), "keep");
    assert_eq!(state.get::<_, i64>(3), 0);
    // `{}` is contained in every context: refused before anything is read.
    let everything = revert(json!({}), true).await.unwrap_err();
    assert!(
        everything.to_string().contains("needs a non-empty context"),
        "{everything}"
    );
    worker.stop().await.unwrap();
}

/// Creates login role `name` (unique to the test's database) and returns its connection options.
async fn role(
    fixture_client: &tokio_postgres::Client,
    database: &bemi_test_harness::TestDatabase,
    suffix: &str,
    attributes: &str,
) -> (String, bemi_worker::ConnectionOptions) {
    let name = role_name(database, suffix);
    fixture_client
        .batch_execute(&format!(
            "CREATE ROLE {} LOGIN {attributes}",
            bemi_core::quote_ident(&name).unwrap()
        ))
        .await
        .unwrap();
    let options =
        bemi_worker::ConnectionOptions::parse(&database.url_for_user(&name, None)).unwrap();
    (name, options)
}

/// A connection as `role`.
async fn connect_as(
    database: &bemi_test_harness::TestDatabase,
    role: &str,
) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&database.url_for_user(role, None), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_refuses_a_bemi_schema_planted_by_another_role() {
    let database = test_database!();
    let admin = database.connect().await;
    let (app, _) = role(&admin, &database, "app", "").await;
    let app_ident = bemi_core::quote_ident(&app).unwrap();
    admin
        .batch_execute(&format!(
            "GRANT CREATE ON DATABASE {} TO {app_ident}; CREATE TABLE item (id int PRIMARY KEY)",
            bemi_core::quote_ident(database.name()).unwrap()
        ))
        .await
        .unwrap();
    // The application's role prepares the trap: the event trigger, running as a superuser,
    // would call this function on the next CREATE TABLE.
    let app_client = connect_as(&database, &app).await;
    app_client
        .batch_execute(&format!(
            "CREATE SCHEMA bemi; \
             CREATE FUNCTION bemi.is_excluded(rel oid) RETURNS boolean LANGUAGE plpgsql AS $$ \
             BEGIN EXECUTE 'ALTER ROLE {app_ident} SUPERUSER'; RETURN false; END $$;"
        ))
        .await
        .unwrap();
    let source = bemi_worker::ConnectionOptions::parse(&database.url()).unwrap();
    let setup = bemi_core::setup::Setup::new(
        bemi_core::setup::SetupOptions::default().slot(database.slot_name()),
    )
    .unwrap();
    let refused = bemi_worker::setup(&source, &source, &setup)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!("function bemi.is_excluded(oid) (owned by {app})")),
        "{refused}"
    );
    assert!(
        refused.contains(&format!("schema bemi (owned by {app})")),
        "{refused}"
    );
    assert!(refused.contains("ALTER SCHEMA bemi OWNER TO"), "{refused}");
    admin
        .batch_execute("CREATE TABLE later (id int)")
        .await
        .unwrap();
    let state = admin
        .query_one(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = $1), \
                    (SELECT count(*) FROM pg_event_trigger WHERE evtname = '_bemi_track_new_tables')",
            &[&app],
        )
        .await
        .unwrap();
    assert!(!state.get::<_, bool>(0));
    assert_eq!(state.get::<_, i64>(1), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_left_by_a_setup_as_the_application_role_must_be_handed_over_first() {
    let database = test_database!();
    let admin = database.connect().await;
    let (app, app_options) = role(&admin, &database, "app", "REPLICATION").await;
    let (auditor, _) = role(&admin, &database, "auditor", "").await;
    let app_ident = bemi_core::quote_ident(&app).unwrap();
    admin
        .batch_execute(&format!(
            "GRANT CREATE ON DATABASE {} TO {app_ident}; \
             CREATE TABLE item (id int PRIMARY KEY); ALTER TABLE item OWNER TO {app_ident}",
            bemi_core::quote_ident(database.name()).unwrap()
        ))
        .await
        .unwrap();
    let setup_as = |options: bemi_core::setup::SetupOptions| {
        bemi_core::setup::Setup::new(options.slot(database.slot_name())).unwrap()
    };
    // As the README once said: setup as the tables' owner first (no event trigger: not a
    // superuser), then again as a superuser for the event trigger.
    bemi_worker::setup(&app_options, &app_options, &setup_as(Default::default()))
        .await
        .unwrap();
    let source = bemi_worker::ConnectionOptions::parse(&database.url()).unwrap();
    let with_owner = setup_as(bemi_core::setup::SetupOptions::default().owner_role(&auditor));
    let refused = bemi_worker::error_chain(
        &bemi_worker::setup(&source, &source, &with_owner)
            .await
            .unwrap_err(),
    );
    assert!(
        refused.contains(&format!(
            "function bemi.track_new_tables() (owned by {app})"
        )),
        "{refused}"
    );
    assert!(
        refused.contains(&format!("table bemi.changes_stored (owned by {app})"))
            && refused.contains(&format!("view bemi.changes (owned by {app})")),
        "{refused}"
    );
    // The fix it prints, run as a superuser, makes the second setup pass.
    let fix = refused.split("run as a superuser: ").nth(1).unwrap();
    admin.batch_execute(fix).await.unwrap();
    bemi_worker::setup(&source, &source, &with_owner)
        .await
        .unwrap();
    let owners = admin
        .query_one(
            "SELECT (SELECT r.rolsuper FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner \
                     WHERE p.oid = 'bemi.track_new_tables()'::regprocedure), \
                    (SELECT r.rolname::text FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner \
                     WHERE c.oid = 'bemi.changes_stored'::regclass), \
                    (SELECT r.rolname::text FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner \
                     WHERE c.oid = 'bemi.column_policies'::regclass), \
                    (SELECT count(*) FROM pg_event_trigger WHERE evtname = '_bemi_track_new_tables')",
            &[],
        )
        .await
        .unwrap();
    assert!(owners.get::<_, bool>(0));
    assert_eq!(owners.get::<_, String>(1), auditor);
    assert_eq!(owners.get::<_, String>(2), auditor);
    assert_eq!(owners.get::<_, i64>(3), 1);
    // The application's role can neither delete audit rows nor rewrite bemi's code.
    let app_client = connect_as(&database, &app).await;
    for attack in [
        "DELETE FROM bemi.changes",
        "DELETE FROM bemi.changes_stored",
        "DELETE FROM bemi.column_policies",
        "CREATE OR REPLACE FUNCTION bemi.is_excluded(rel oid) RETURNS boolean LANGUAGE sql AS 'SELECT false'",
        "DROP FUNCTION bemi.is_excluded(oid)",
    ] {
        let error = app_client.batch_execute(attack).await.unwrap_err();
        assert!(
            matches!(
                error.code(),
                Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
            ),
            "{attack}: {error:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_setups_at_once_both_succeed() {
    let database = test_database!();
    database
        .connect()
        .await
        .batch_execute("CREATE TABLE item (id int PRIMARY KEY)")
        .await
        .unwrap();
    let source = bemi_worker::ConnectionOptions::parse(&database.url()).unwrap();
    let setup = bemi_core::setup::Setup::new(
        bemi_core::setup::SetupOptions::default().slot(database.slot_name()),
    )
    .unwrap();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (source, setup) = (source.clone(), setup.clone());
            tokio::spawn(async move { bemi_worker::setup(&source, &source, &setup).await })
        })
        .collect();
    for run in runs {
        run.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_cover_partitions_and_children_and_apply_from_the_next_change() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE users (id int, password_hash text, name text) PARTITION BY RANGE (id); \
         CREATE TABLE users_p1 PARTITION OF users FOR VALUES FROM (0) TO (100); \
         CREATE TABLE account (id int PRIMARY KEY, token text, name text); \
         CREATE TABLE admin_account () INHERITS (account); \
         CREATE TABLE note (id int PRIMARY KEY, body text);",
    )
    .await;
    let mut config = fixture.config();
    config
        .column_policies
        .add_list(
            bemi_core::policy::ColumnAction::Redact,
            "users.password_hash",
        )
        .unwrap();
    fixture
        .sql("INSERT INTO bemi.column_policies VALUES ('public', 'account', 'token', 'redact')")
        .await;
    let worker = RunningWorker::start(config);
    fixture
        .sql("INSERT INTO users VALUES (1, 'hash-1', 'ann')")
        .await;
    fixture
        .sql("INSERT INTO admin_account VALUES (2, 'token-2', 'bob')")
        .await;
    fixture.sql("INSERT INTO note VALUES (3, 'before')").await;
    // Read by a live worker (one that lags describes a table it has not seen yet with the
    // policies of the moment: stricter, never plainer).
    fixture.wait_for(4).await;
    // A policy stored while the worker streams applies from the next change on, in the same
    // transaction too: no window of plaintext, no reconnect needed.
    fixture
        .sql(
            "BEGIN; INSERT INTO note VALUES (4, 'still plain'); \
             INSERT INTO bemi.column_policies VALUES ('public', 'note', 'body', 'redact'); \
             INSERT INTO note VALUES (5, 'secret'); COMMIT;",
        )
        .await;
    let changes = fixture.wait_for(7).await;
    let after = |table: &str, id: i64| {
        changes
            .iter()
            .find(|change| change.table == table && change.after["id"] == id)
            .map(|change| change.after.clone())
            .unwrap_or_else(|| panic!("no change of {table} {id} in {changes:?}"))
    };
    // The partition's change is reported as the partitioned table's.
    assert_eq!(
        after("users", 1),
        json!({"id": 1, "password_hash": "[REDACTED]", "name": "ann"})
    );
    assert_eq!(
        after("admin_account", 2),
        json!({"id": 2, "token": "[REDACTED]", "name": "bob"})
    );
    assert_eq!(after("note", 3), json!({"id": 3, "body": "before"}));
    assert_eq!(after("note", 4), json!({"id": 4, "body": "still plain"}));
    assert_eq!(after("note", 5), json!({"id": 5, "body": "[REDACTED]"}));
    // Who changed a policy is audit data too.
    assert!(changes.iter().any(|change| change.table == "column_policies"
        && change.after["table_name"] == "note"));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_row_value_reaches_the_log_even_at_trace_level() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE users (id int PRIMARY KEY, password_hash text, name text);",
    )
    .await;
    // A destination rule refusing one row: the worker then stores row by row, with statement
    // parameters that tokio-postgres would log at debug level.
    refuse_key_in_destination(&fixture, "2").await;
    let slot = fixture.database.slot_name().to_owned();
    let url = fixture.database.url();
    let log = std::env::temp_dir().join(format!("trace-{slot}.log"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bemi-worker"))
        .args([
            "run",
            "--database-url",
            &url,
            "--slot",
            &slot,
            "--redact",
            "users.password_hash",
        ])
        .env("RUST_LOG", "trace")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    fixture
        .sql("INSERT INTO users VALUES (1, 'SecretHash1', 'VisibleName1'), (2, 'SecretHash2', 'VisibleName2')")
        .await;
    fixture.sql("INSERT INTO users VALUES (3, 'x', 'y')").await;
    let changes = fixture.wait_for(2).await;
    assert_eq!(changes[0].after["password_hash"], "[REDACTED]");
    child.kill().unwrap();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("replication event"), "trace logging is on");
    assert!(text.contains("storing the batch row by row"), "{text}");
    for value in ["SecretHash", "VisibleName"] {
        assert!(!text.contains(value), "{value} in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_only_old_image_is_marked_incomplete_and_never_restored() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE item (id int PRIMARY KEY, note text);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .sql(
            "INSERT INTO item VALUES (1, 'one'), (2, 'two'); \
             ALTER TABLE item REPLICA IDENTITY DEFAULT;",
        )
        .await;
    fixture
        .tagged("DELETE FROM item WHERE id = 1", json!({"request_id": "r1"}))
        .await;
    fixture
        .tagged(
            "UPDATE item SET note = 'TWO' WHERE id = 2",
            json!({"request_id": "r1"}),
        )
        .await;
    let changes = fixture.wait_for(4).await;
    assert_eq!(
        changes[2],
        stored(
            "item",
            "DELETE",
            Some("1"),
            json!({"id": 1}),
            json!({}),
            json!({"request_id": "r1", "_bemi": {"incomplete": ["before"]}})
        )
    );
    assert_eq!(changes[3].before, json!({}));
    assert_eq!(changes[3].context["_bemi"]["incomplete"], json!(["before"]));
    let plan = bemi_worker::revert(
        &fixture.source,
        &fixture.source,
        fixture.setup.options().changes_table_name(),
        bemi_core::revert::Revert::context(
            bemi_core::Context::from_value(json!({"request_id": "r1"})).unwrap(),
        )
        .force(),
        false,
    )
    .await
    .unwrap();
    for step in plan.steps() {
        let bemi_core::revert::StepOutcome::Skipped(bemi_core::revert::Conflict::NotRevertible {
            reason,
        }) = &step.outcome
        else {
            panic!("{:?}", step.outcome);
        };
        assert!(reason.contains("recorded with its key only"), "{reason}");
    }
    let rows: i64 = fixture
        .client
        .query_one(
            "SELECT count(*) FROM item WHERE id = 1 OR note = 'two'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "nothing restored from the incomplete images");
    worker.stop().await.unwrap();
}

/// A rule of the destination refusing the change of `key` whatever its form (a trigger raising
/// a data exception), as a value the `changes` table cannot take would.
async fn refuse_key_in_destination(fixture: &crate::support::Fixture, key: &str) {
    fixture
        .sql(&format!(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.primary_key = '{key}' THEN \
                 RAISE EXCEPTION 'key {key} is refused' USING ERRCODE = '22023'; \
               END IF; RETURN NEW; END $$; \
             CREATE TRIGGER refuse_poison BEFORE INSERT ON bemi.changes_stored \
               FOR EACH ROW EXECUTE FUNCTION refuse_poison();"
        ))
        .await;
}
