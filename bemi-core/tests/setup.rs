//! Installing and removing bemi on a real database.

use std::sync::{Arc, Mutex};

use bemi_core::QualifiedName;
use bemi_core::setup::{Setup, SetupOptions};
use bemi_test_harness::{TestDatabase, test_database};

use crate::support::{consume_wal, install, run_setup};

/// Everything setup may have touched, as sorted text lines.
fn catalog(client: &mut postgres::Client) -> Vec<String> {
    let queries = [
        "SELECT 'trigger ' || tgrelid::regclass::text || ' ' || tgname || ' ' || oid::text
         FROM pg_trigger WHERE tgname = '_bemi_context'",
        "SELECT 'identity ' || c.oid::regclass::text || ' ' || c.relreplident::text
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
           AND c.relkind IN ('r', 'p')",
        // bemi's proof and policy tables are always published (see `bemi published `).
        "SELECT 'published ' || p.pubname || ' ' || pr.prrelid::regclass::text
         FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
         WHERE pr.prrelid::regclass::text NOT LIKE 'bemi.%'",
        "SELECT 'bemi published ' || p.pubname || ' ' || pr.prrelid::regclass::text
         FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
         WHERE pr.prrelid::regclass::text LIKE 'bemi.%'",
        "SELECT 'publication ' || pubname || ' ' || pubinsert || pubupdate || pubdelete || pubtruncate
         FROM pg_publication",
        "SELECT 'event trigger ' || evtname || ' ' || oid::text FROM pg_event_trigger",
        "SELECT 'function ' || p.oid::regprocedure::text || ' ' || p.oid::text
         FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'bemi'",
        "SELECT 'relation ' || c.oid::regclass::text || ' ' || c.oid::text
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'bemi'",
        "SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname = 'bemi'",
    ];
    let mut lines: Vec<String> = queries
        .iter()
        .flat_map(|query| client.query(*query, &[]).unwrap())
        .map(|row| row.get::<_, String>(0))
        .collect();
    lines.sort();
    lines
}

fn lines_starting(catalog: &[String], prefix: &str) -> Vec<String> {
    catalog
        .iter()
        .filter(|line| line.starts_with(prefix))
        .map(|line| {
            // Drop trailing OIDs so expectations do not depend on them.
            match prefix {
                "trigger " | "event trigger " => line
                    .rsplit_once(' ')
                    .map_or(line.clone(), |(head, _)| head.to_owned()),
                _ => line.clone(),
            }
        })
        .collect()
}

fn strings(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|line| (*line).to_owned()).collect()
}

fn create_tables(client: &mut postgres::Client) {
    client
        .batch_execute(
            r#"CREATE TABLE todo (id serial PRIMARY KEY, task text);
               CREATE TABLE "Order Items" (id int PRIMARY KEY);
               CREATE TABLE "my-table" (k text);
               CREATE UNLOGGED TABLE scratch (x int);
               CREATE SCHEMA other;
               CREATE TABLE other.elsewhere (id int PRIMARY KEY);"#,
        )
        .unwrap();
}

#[test]
fn installs_every_object_and_tracks_the_schema_tables() {
    let database = test_database!();
    let mut client = database.connect_sync();
    create_tables(&mut client);
    install(&database, &mut client, SetupOptions::default());
    let catalog = catalog(&mut client);

    assert_eq!(
        lines_starting(&catalog, "trigger "),
        strings(&[
            r#"trigger "Order Items" _bemi_context"#,
            r#"trigger "my-table" _bemi_context"#,
            "trigger todo _bemi_context",
        ])
    );
    assert_eq!(
        lines_starting(&catalog, "bemi published "),
        strings(&[
            "bemi published bemi bemi.column_policies",
            "bemi published bemi bemi.erasure_requests",
            "bemi published bemi bemi.message_proofs",
            "bemi published bemi bemi.schema_versions"
        ])
    );
    assert_eq!(
        lines_starting(&catalog, "published "),
        strings(&[
            r#"published bemi "Order Items""#,
            r#"published bemi "my-table""#,
            "published bemi todo",
        ])
    );
    assert_eq!(
        lines_starting(&catalog, "publication "),
        strings(&["publication bemi truetruetruetrue"])
    );
    for table in [r#""Order Items""#, r#""my-table""#, "todo"] {
        assert!(
            catalog.contains(&format!("identity {table} f")),
            "{table}: {catalog:#?}"
        );
    }
    // Untracked: unlogged tables, other schemas, and bemi's own tables.
    assert!(catalog.contains(&"identity scratch d".to_owned()));
    assert!(catalog.contains(&"identity other.elsewhere d".to_owned()));
    assert!(catalog.contains(&"identity bemi.changes_stored d".to_owned()));
    assert_eq!(
        lines_starting(&catalog, "event trigger "),
        strings(&[
            "event trigger _bemi_record_ddl",
            "event trigger _bemi_record_drop",
            "event trigger _bemi_track_new_tables"
        ])
    );
    for function in [
        "bemi.emit_context()",
        "bemi.track_table(regclass)",
        "bemi.untrack_table(oid)",
        "bemi.sync_tracking(name[],regclass[])",
        "bemi.is_excluded(oid)",
        "bemi.track_new_tables()",
    ] {
        assert!(
            catalog
                .iter()
                .any(|line| line.starts_with(&format!("function {function} "))),
            "{function}"
        );
    }
    // The pgoutput slot exists.
    let plugin: String = client
        .query_one(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&database.slot_name()],
        )
        .unwrap()
        .get(0);
    assert_eq!(plugin, "pgoutput");
}

#[test]
fn running_setup_again_changes_nothing() {
    let database = test_database!();
    let mut client = database.connect_sync();
    create_tables(&mut client);
    let (setup, _) = install(&database, &mut client, SetupOptions::default());
    let before = catalog(&mut client);
    run_setup(&mut client, &setup);
    // Same objects with the same OIDs: nothing was dropped and recreated.
    let after = catalog(&mut client);
    let stable = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|line| !line.starts_with("function "))
            .cloned()
            .collect()
    };
    assert_eq!(stable(&before), stable(&after));
    // Functions are replaced in place (CREATE OR REPLACE keeps their OIDs).
    assert_eq!(before, after);
}

#[test]
fn teardown_removes_every_object_and_restores_replica_identities() {
    let database = test_database!();
    let mut client = database.connect_sync();
    client
        .batch_execute(
            "CREATE TABLE plain (id int PRIMARY KEY);
             CREATE TABLE nothing (id int PRIMARY KEY);
             ALTER TABLE nothing REPLICA IDENTITY NOTHING;
             CREATE TABLE by_index (id int NOT NULL, code text NOT NULL);
             CREATE UNIQUE INDEX by_index_code ON by_index (code);
             ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
             CREATE TABLE already_full (id int);
             ALTER TABLE already_full REPLICA IDENTITY FULL;",
        )
        .unwrap();
    let untouched = catalog(&mut client);
    let (setup, _) = install(&database, &mut client, SetupOptions::default());
    let installed = catalog(&mut client);
    for table in ["plain", "nothing", "by_index", "already_full"] {
        assert!(
            installed.contains(&format!("identity {table} f")),
            "{table}"
        );
    }
    client
        .batch_execute(
            "INSERT INTO bemi.changes (database, schema, \"table\", operation, committed_at, \
             queued_at, transaction_id, position, commit_lsn, sequence) \
             VALUES ('db', 'public', 'plain', 'CREATE', now(), now(), 1, 1, 1, 0)",
        )
        .unwrap();

    client.batch_execute(&setup.teardown_source_sql()).unwrap();
    client.batch_execute(&setup.drop_slot_sql()).unwrap();
    let torn_down = catalog(&mut client);
    // Source objects are gone and identities are back; the destination (audit data) is kept.
    let destination = |line: &&String| {
        [
            "identity bemi.changes",
            "identity bemi.worker_progress",
            "identity bemi.rejected",
            "identity bemi.schema_history",
            "identity bemi.partitioned_changes",
            "relation bemi.partitioned_changes",
            "function bemi.create_change_partitions",
            "function bemi.read_trail",
            "identity bemi.legal_holds",
            "relation bemi.legal_holds",
            "identity bemi.retention_runs",
            "relation bemi.retention_runs",
            "sequence bemi.legal_holds",
            "sequence bemi.retention_runs",
            "relation bemi.changes",
            "relation bemi.worker_progress",
            "relation bemi.rejected",
            "relation bemi.schema_history",
            "identity bemi.seals",
            "relation bemi.seals",
            "identity bemi.erasures",
            "relation bemi.erasures",
            "schema bemi",
        ]
        .iter()
        .any(|prefix| line.starts_with(prefix))
    };
    let mut expected: Vec<String> = untouched
        .iter()
        .chain(installed.iter().filter(destination))
        .cloned()
        .collect();
    expected.sort();
    assert_eq!(torn_down, expected);
    let kept: i64 = client
        .query_one("SELECT count(*) FROM bemi.changes", &[])
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&database.slot_name()],
        )
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);

    client
        .batch_execute(&setup.teardown_destination_sql())
        .unwrap();
    assert_eq!(catalog(&mut client), untouched);
    // Teardown is idempotent too.
    client.batch_execute(&setup.teardown_source_sql()).unwrap();
    client
        .batch_execute(&setup.teardown_destination_sql())
        .unwrap();
    assert_eq!(catalog(&mut client), untouched);
}

#[test]
fn tables_created_later_in_a_tracked_schema_are_tracked() {
    let database = test_database!();
    let mut client = database.connect_sync();
    client.batch_execute("CREATE SCHEMA other").unwrap();
    let (_, slot) = install(&database, &mut client, SetupOptions::default());
    client
        .batch_execute(
            r#"CREATE TABLE later (id bigserial PRIMARY KEY, note text);
               CREATE TABLE "Made As" AS SELECT 1 AS x;
               CREATE TABLE other.not_tracked (id int);"#,
        )
        .unwrap();
    let catalog = catalog(&mut client);
    assert_eq!(
        lines_starting(&catalog, "published "),
        strings(&[r#"published bemi "Made As""#, "published bemi later"])
    );
    assert!(catalog.contains(&"identity later f".to_owned()));
    assert!(catalog.contains(&r#"identity "Made As" f"#.to_owned()));
    assert!(catalog.contains(&"identity other.not_tracked d".to_owned()));

    consume_wal(&mut client, &slot);
    client
        .batch_execute(r#"INSERT INTO later (note) VALUES ('hi') /*Bemi {"new":true} Bemi*/"#)
        .unwrap();
    let wal = consume_wal(&mut client, &slot);
    assert!(
        wal.contains(&r#"message: {"new":true}"#.to_owned()),
        "{wal:#?}"
    );
}

#[test]
fn an_explicit_table_list_is_applied_declaratively() {
    let database = test_database!();
    let mut client = database.connect_sync();
    client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY);
             CREATE TABLE b (id int PRIMARY KEY);
             CREATE TABLE c (id int PRIMARY KEY);",
        )
        .unwrap();
    let table = |name: &str| QualifiedName::new("public", name).unwrap();
    let options = SetupOptions::default().slot(database.slot_name());
    let first = Setup::new(options.clone().tables([table("a"), table("b")])).unwrap();
    run_setup(&mut client, &first);
    let catalog_first = catalog(&mut client);
    assert_eq!(
        lines_starting(&catalog_first, "published "),
        strings(&["published bemi a", "published bemi b"])
    );
    // No event trigger tracks new tables; the DDL recorders are there (a superuser ran setup).
    assert_eq!(
        lines_starting(&catalog_first, "event trigger "),
        strings(&[
            "event trigger _bemi_record_ddl",
            "event trigger _bemi_record_drop"
        ])
    );

    let second = Setup::new(options.tables([table("b")])).unwrap();
    run_setup(&mut client, &second);
    let catalog_second = catalog(&mut client);
    assert_eq!(
        lines_starting(&catalog_second, "published "),
        strings(&["published bemi b"])
    );
    assert_eq!(
        lines_starting(&catalog_second, "trigger "),
        strings(&["trigger b _bemi_context"])
    );
    assert!(catalog_second.contains(&"identity a d".to_owned()));
    assert!(catalog_second.contains(&"identity b f".to_owned()));
    assert!(catalog_second.contains(&"identity c d".to_owned()));
}

#[test]
fn a_missing_table_in_the_list_is_a_clear_error() {
    let database = test_database!();
    let mut client = database.connect_sync();
    let setup = Setup::new(
        SetupOptions::default()
            .slot(database.slot_name())
            .tables([QualifiedName::new("public", "nope").unwrap()]),
    )
    .unwrap();
    client.batch_execute(&setup.destination_sql()).unwrap();
    let error = client.batch_execute(&setup.source_sql()).unwrap_err();
    assert!(
        error
            .as_db_error()
            .unwrap()
            .message()
            .contains(r#"relation "public.nope" does not exist"#),
        "{error}"
    );
}

#[test]
fn a_changes_table_inside_a_tracked_schema_is_never_captured() {
    let database = test_database!();
    let mut client = database.connect_sync();
    client
        .batch_execute("CREATE TABLE todo (id int PRIMARY KEY)")
        .unwrap();
    install(
        &database,
        &mut client,
        SetupOptions::default().changes_table(QualifiedName::new("public", "changes").unwrap()),
    );
    // Partitions the worker creates later, with the event triggers in place.
    client
        .batch_execute(
            "SELECT bemi.create_change_partitions('\"public\".\"changes_stored\"', now() - interval '5 months')",
        )
        .unwrap();
    let catalog = catalog(&mut client);
    assert_eq!(
        lines_starting(&catalog, "published "),
        strings(&["published bemi todo"])
    );
    assert_eq!(
        lines_starting(&catalog, "trigger "),
        strings(&["trigger todo _bemi_context"])
    );
    assert!(catalog.contains(&"identity changes_stored d".to_owned()));
}

#[test]
fn a_source_without_the_changes_table_tracks_its_tables() {
    let database = test_database!();
    let mut client = database.connect_sync();
    client
        .batch_execute("CREATE TABLE todo (id int PRIMARY KEY)")
        .unwrap();
    let setup = Setup::new(SetupOptions::default().slot(database.slot_name())).unwrap();
    // The changes table lives in another database: only the source part runs here.
    client.batch_execute(&setup.source_sql()).unwrap();
    let catalog = catalog(&mut client);
    assert_eq!(
        lines_starting(&catalog, "published "),
        strings(&["published bemi todo"])
    );
    assert_eq!(
        lines_starting(&catalog, "trigger "),
        strings(&["trigger todo _bemi_context"])
    );
}

#[test]
fn names_that_need_quotes_work_end_to_end() {
    let database = test_database!();
    let mut client = database.connect_sync();
    client
        .batch_execute(
            r#"CREATE SCHEMA "Sales Dept";
               CREATE TABLE "Sales Dept"."Order Items" ("Item Id" int PRIMARY KEY, "qty-n" int);"#,
        )
        .unwrap();
    let options = SetupOptions::default()
        .schemas(["Sales Dept"])
        .publication("audit \"pub\"")
        .changes_table(QualifiedName::new("audit log", "My Changes").unwrap());
    let (setup, slot) = install(&database, &mut client, options);
    let catalog = catalog(&mut client);
    assert_eq!(
        lines_starting(&catalog, "published "),
        strings(&[r#"published audit "pub" "Sales Dept"."Order Items""#])
    );
    client
        .batch_execute(
            r#"INSERT INTO "Sales Dept"."Order Items" VALUES (1, 2) /*Bemi {"quoted":"yes"} Bemi*/"#,
        )
        .unwrap();
    let wal = consume_wal(&mut client, &slot);
    assert!(
        wal.contains(&r#"message: {"quoted":"yes"}"#.to_owned()),
        "{wal:#?}"
    );
    assert!(
        wal.iter()
            .any(|line| line.starts_with(r#"table "Sales Dept"."Order Items": INSERT"#)),
        "{wal:#?}"
    );
    let changes_columns: i64 = client
        .query_one(
            r#"SELECT count(*) FROM information_schema.columns
               WHERE table_schema = 'audit log' AND table_name = 'My Changes'"#,
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(changes_columns, 17);

    client.batch_execute(&setup.teardown_source_sql()).unwrap();
    let after = self::catalog(&mut client);
    assert!(lines_starting(&after, "published ").is_empty());
    assert!(lines_starting(&after, "trigger ").is_empty());
    assert!(after.contains(&r#"identity "Sales Dept"."Order Items" d"#.to_owned()));
}

#[test]
fn slot_creation_is_idempotent() {
    let database = test_database!();
    let mut client = database.connect_sync();
    let (setup, _) = install(&database, &mut client, SetupOptions::default());
    client.batch_execute(&setup.create_slot_sql()).unwrap();
    let count = |client: &mut postgres::Client| -> i64 {
        client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&database.slot_name()],
            )
            .unwrap()
            .get(0)
    };
    assert_eq!(count(&mut client), 1);
    client.batch_execute(&setup.drop_slot_sql()).unwrap();
    assert_eq!(count(&mut client), 0);
}

/// Connects as `user`, collecting the server's notices.
fn connect_collecting_notices(
    database: &TestDatabase,
    user: &str,
) -> (postgres::Client, Arc<Mutex<Vec<String>>>) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&notices);
    let mut config: postgres::Config = database
        .url_for_user(user, Some("bemi-test"))
        .parse()
        .unwrap();
    config.notice_callback(move |notice| sink.lock().unwrap().push(notice.message().to_owned()));
    (config.connect(postgres::NoTls).unwrap(), notices)
}

#[test]
fn without_superuser_tables_created_later_get_a_notice_instead() {
    let database = test_database!();
    let owner = format!("{}_owner", database.name());
    let mut admin = database.connect_sync();
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {owner};
             CREATE ROLE {owner} LOGIN NOSUPERUSER PASSWORD 'bemi-test';
             GRANT CREATE ON DATABASE {db} TO {owner};
             GRANT CREATE ON SCHEMA public TO {owner};",
            db = database.name()
        ))
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let (mut client, notices) = connect_collecting_notices(&database, &owner);
        client
            .batch_execute("CREATE TABLE owned (id int PRIMARY KEY)")
            .unwrap();
        let setup = Setup::new(SetupOptions::default().slot(database.slot_name())).unwrap();
        client.batch_execute(&setup.destination_sql()).unwrap();
        client.batch_execute(&setup.source_sql()).unwrap();
        let notices = notices.lock().unwrap().clone();
        let catalog = catalog(&mut client);
        client.batch_execute(&setup.teardown_source_sql()).unwrap();
        client
            .batch_execute(&setup.teardown_destination_sql())
            .unwrap();
        client.batch_execute("DROP TABLE owned").unwrap();
        (notices, catalog)
    }));
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM {owner}; REVOKE ALL ON SCHEMA public FROM {owner}; \
             DROP OWNED BY {owner}; DROP ROLE {owner};",
            db = database.name()
        ))
        .unwrap();
    let (notices, catalog) = result.unwrap();
    assert!(
        notices
            .iter()
            .any(|notice| notice.contains(
                "bemi could not create event trigger _bemi_track_new_tables (permission denied"
            ) && notice.contains("run the setup again after creating tables")),
        "{notices:#?}"
    );
    assert_eq!(
        lines_starting(&catalog, "published "),
        strings(&["published bemi owned"])
    );
    assert!(lines_starting(&catalog, "event trigger ").is_empty());
}
