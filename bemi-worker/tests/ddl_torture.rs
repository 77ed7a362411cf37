//! The DDL torture suite: each kind of schema change, read by a live worker, by a worker stopped
//! across it, and by a live worker sent the writes and the DDL back to back (so it reads the
//! writes after the DDL committed). Keys, values (with their JSON types) and contexts of the
//! changes around it, and the DDL events with their context, must be the same in all three.

use std::time::Duration;

use bemi_core::TokioPostgresRunner;
use bemi_core::{ChangeQuery, CommentEncoder, Context, Operation};
use bemi_test_harness::{test_database, wait_for_slot_to_catch_up};
use serde_json::{Value, json};

use crate::support::{Fixture, RunningWorker, Stored, fixture};

const TIMEOUT: Duration = Duration::from_secs(60);

const SCHEMA: &str = "
    CREATE TYPE mood AS ENUM ('happy', 'sad');
    CREATE DOMAIN price AS numeric(10, 2);
    CREATE TYPE tone AS ENUM ('a', 'b');
    CREATE TABLE t_dtype (id int PRIMARY KEY, t tone);
    CREATE TABLE t_add (id int PRIMARY KEY, v int);
    CREATE TABLE t_drop (id int PRIMARY KEY, v int, gone text);
    CREATE TABLE t_key (id int PRIMARY KEY, v int);
    CREATE TABLE t_newkey (id int PRIMARY KEY, code text NOT NULL);
    CREATE TABLE t_type (id int PRIMARY KEY, v int);
    CREATE TABLE t_old (id int PRIMARY KEY, v int);
    CREATE TABLE t_gone (id int PRIMARY KEY, v int);
    CREATE TABLE t_enum (id int PRIMARY KEY, m mood, ms mood[], p price);
    CREATE UNLOGGED TABLE t_unlogged (id int PRIMARY KEY, v int);
    CREATE SCHEMA elsewhere;
    CREATE TABLE elsewhere.t_in (id int PRIMARY KEY, v int);
    CREATE TABLE t_out (id int PRIMARY KEY, v int);
    CREATE TABLE p_att (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
    CREATE TABLE p_att_a PARTITION OF p_att FOR VALUES IN ('a');
    CREATE TABLE p_att_b (id int, region text, PRIMARY KEY (id, region));
    CREATE TABLE p_det (id int, region text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
    CREATE TABLE p_det_a PARTITION OF p_det FOR VALUES IN ('a');";

/// One kind of DDL: writes before it, the DDL, writes after it, and what must be stored.
struct Case {
    name: &'static str,
    before: &'static [&'static str],
    ddl: &'static str,
    after: &'static [&'static str],
    /// (table, operation, key, the image that exists: `after`, or `before` for a DELETE). Row 1
    /// is written before the DDL, the others after it. Last, the partition a change of a
    /// partitioned table came from.
    expected: Vec<(
        &'static str,
        &'static str,
        &'static str,
        Value,
        Option<&'static str>,
    )>,
    /// The table whose shape the DDL records (with the DDL's context).
    recorded: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "add column",
            before: &["INSERT INTO t_add VALUES (1, 10)"],
            ddl: "ALTER TABLE t_add ADD COLUMN note text",
            after: &["INSERT INTO t_add VALUES (2, 20, 'n')"],
            expected: vec![
                ("t_add", "CREATE", "1", json!({"id": 1, "v": 10}), None),
                (
                    "t_add",
                    "CREATE",
                    "2",
                    json!({"id": 2, "v": 20, "note": "n"}),
                    None,
                ),
            ],
            recorded: "t_add",
        },
        Case {
            name: "drop column",
            before: &["INSERT INTO t_drop VALUES (1, 10, 'g')"],
            ddl: "ALTER TABLE t_drop DROP COLUMN gone",
            after: &["INSERT INTO t_drop VALUES (2, 20)"],
            expected: vec![
                (
                    "t_drop",
                    "CREATE",
                    "1",
                    json!({"id": 1, "v": 10, "gone": "g"}),
                    None,
                ),
                ("t_drop", "CREATE", "2", json!({"id": 2, "v": 20}), None),
            ],
            recorded: "t_drop",
        },
        Case {
            name: "rename key column",
            before: &["INSERT INTO t_key VALUES (1, 10)"],
            ddl: "ALTER TABLE t_key RENAME COLUMN id TO key_id",
            after: &[
                "INSERT INTO t_key VALUES (2, 20)",
                "UPDATE t_key SET v = 21 WHERE key_id = 2",
            ],
            expected: vec![
                ("t_key", "CREATE", "1", json!({"id": 1, "v": 10}), None),
                ("t_key", "CREATE", "2", json!({"key_id": 2, "v": 20}), None),
                ("t_key", "UPDATE", "2", json!({"key_id": 2, "v": 21}), None),
            ],
            recorded: "t_key",
        },
        Case {
            name: "new key",
            before: &["INSERT INTO t_newkey VALUES (1, 'a')"],
            ddl: "ALTER TABLE t_newkey DROP CONSTRAINT t_newkey_pkey; \
                  ALTER TABLE t_newkey ADD PRIMARY KEY (code)",
            after: &["INSERT INTO t_newkey VALUES (2, 'b')"],
            expected: vec![
                (
                    "t_newkey",
                    "CREATE",
                    "1",
                    json!({"id": 1, "code": "a"}),
                    None,
                ),
                (
                    "t_newkey",
                    "CREATE",
                    "b",
                    json!({"id": 2, "code": "b"}),
                    None,
                ),
            ],
            recorded: "t_newkey",
        },
        Case {
            name: "alter column type",
            before: &["INSERT INTO t_type VALUES (1, 10)"],
            ddl: "ALTER TABLE t_type ALTER COLUMN v TYPE numeric USING v + 0.5",
            after: &["INSERT INTO t_type VALUES (2, 2.25)"],
            expected: vec![
                ("t_type", "CREATE", "1", json!({"id": 1, "v": 10}), None),
                ("t_type", "CREATE", "2", json!({"id": 2, "v": 2.25}), None),
            ],
            recorded: "t_type",
        },
        Case {
            name: "rename table",
            before: &["INSERT INTO t_old VALUES (1, 10)"],
            ddl: "ALTER TABLE t_old RENAME TO t_new",
            after: &["INSERT INTO t_new VALUES (2, 20)"],
            expected: vec![
                ("t_old", "CREATE", "1", json!({"id": 1, "v": 10}), None),
                ("t_new", "CREATE", "2", json!({"id": 2, "v": 20}), None),
            ],
            recorded: "t_new",
        },
        Case {
            name: "drop table",
            before: &["INSERT INTO t_gone VALUES (1, 10)", "DELETE FROM t_gone"],
            ddl: "DROP TABLE t_gone",
            after: &[],
            expected: vec![
                ("t_gone", "CREATE", "1", json!({"id": 1, "v": 10}), None),
                ("t_gone", "DELETE", "1", json!({"id": 1, "v": 10}), None),
            ],
            recorded: "t_gone",
        },
        Case {
            name: "drop the column types",
            before: &["INSERT INTO t_enum VALUES (1, 'happy', '{happy,sad}', 42.50)"],
            ddl: "DROP TABLE t_enum; DROP TYPE mood; DROP DOMAIN price",
            after: &[],
            expected: vec![(
                "t_enum",
                "CREATE",
                "1",
                json!({"id": 1, "m": "happy", "ms": ["happy", "sad"], "p": 42.50}),
                None,
            )],
            recorded: "t_enum",
        },
        Case {
            name: "drop a column's type",
            before: &["INSERT INTO t_dtype VALUES (1, 'a')"],
            ddl: "DROP TYPE tone CASCADE",
            after: &["INSERT INTO t_dtype VALUES (2)"],
            expected: vec![
                ("t_dtype", "CREATE", "1", json!({"id": 1, "t": "a"}), None),
                ("t_dtype", "CREATE", "2", json!({"id": 2}), None),
            ],
            recorded: "t_dtype",
        },
        Case {
            name: "set logged",
            before: &["INSERT INTO t_unlogged VALUES (1, 10)"],
            ddl: "ALTER TABLE t_unlogged SET LOGGED",
            after: &["INSERT INTO t_unlogged VALUES (2, 20)"],
            expected: vec![("t_unlogged", "CREATE", "2", json!({"id": 2, "v": 20}), None)],
            recorded: "t_unlogged",
        },
        Case {
            name: "set schema into a tracked one",
            before: &["INSERT INTO elsewhere.t_in VALUES (1, 10)"],
            ddl: "ALTER TABLE elsewhere.t_in SET SCHEMA public",
            after: &["INSERT INTO public.t_in VALUES (2, 20)"],
            expected: vec![("t_in", "CREATE", "2", json!({"id": 2, "v": 20}), None)],
            recorded: "t_in",
        },
        Case {
            name: "set schema out of the tracked ones",
            before: &["INSERT INTO t_out VALUES (1, 10)"],
            ddl: "ALTER TABLE t_out SET SCHEMA elsewhere",
            after: &["INSERT INTO elsewhere.t_out VALUES (2, 20)"],
            expected: vec![("t_out", "CREATE", "1", json!({"id": 1, "v": 10}), None)],
            recorded: "t_out",
        },
        Case {
            name: "attach partition",
            before: &["INSERT INTO p_att_b VALUES (1, 'b')"],
            ddl: "ALTER TABLE p_att ATTACH PARTITION p_att_b FOR VALUES IN ('b')",
            after: &["INSERT INTO p_att VALUES (2, 'b')"],
            expected: vec![
                (
                    "p_att_b",
                    "CREATE",
                    r#"["1","b"]"#,
                    json!({"id": 1, "region": "b"}),
                    None,
                ),
                (
                    "p_att",
                    "CREATE",
                    r#"["2","b"]"#,
                    json!({"id": 2, "region": "b"}),
                    Some("public.p_att_b"),
                ),
            ],
            recorded: "p_att",
        },
        Case {
            name: "detach partition",
            before: &["INSERT INTO p_det VALUES (1, 'a')"],
            ddl: "ALTER TABLE p_det DETACH PARTITION p_det_a",
            after: &["INSERT INTO p_det_a VALUES (2, 'a')"],
            expected: vec![
                (
                    "p_det",
                    "CREATE",
                    r#"["1","a"]"#,
                    json!({"id": 1, "region": "a"}),
                    Some("public.p_det_a"),
                ),
                (
                    "p_det_a",
                    "CREATE",
                    r#"["2","a"]"#,
                    json!({"id": 2, "region": "a"}),
                    None,
                ),
            ],
            recorded: "p_det",
        },
    ]
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Timing {
    /// The worker runs and has read everything before each next statement.
    Live,
    /// The worker is stopped across all of it.
    Stopped,
    /// The worker runs; the writes and the DDL are sent back to back.
    BackToBack,
}

fn context(case: &Case, step: &str) -> Value {
    json!({"case": case.name, "step": step})
}

async fn run_case(fixture: &Fixture, case: &Case, timing: Timing) {
    let caught_up = || async {
        if timing == Timing::Live {
            wait_for_slot_to_catch_up(&fixture.client, fixture.database.slot_name(), TIMEOUT).await;
        }
    };
    for write in case.before {
        fixture.tagged(write, context(case, "before")).await;
        caught_up().await;
    }
    // The DDL carries its context as raw SQL does: a comment read by the event triggers.
    let ddl_context = Context::try_from(context(case, "ddl")).unwrap();
    let comment = CommentEncoder::default().comment(&ddl_context).unwrap();
    fixture.sql(&comment.append_to(case.ddl)).await;
    caught_up().await;
    for write in case.after {
        fixture.tagged(write, context(case, "after")).await;
        caught_up().await;
    }
}

async fn torture(fixture: Fixture, timing: Timing) {
    let cases = cases();
    let worker = (timing != Timing::Stopped).then(|| RunningWorker::start(fixture.config()));
    if worker.is_some() {
        wait_for_slot_to_catch_up(&fixture.client, fixture.database.slot_name(), TIMEOUT).await;
    }
    for case in &cases {
        run_case(&fixture, case, timing).await;
    }
    let worker = worker.unwrap_or_else(|| RunningWorker::start(fixture.config()));
    wait_for_slot_to_catch_up(&fixture.client, fixture.database.slot_name(), TIMEOUT).await;

    let stored: Vec<Stored> = fixture.wait_for(0).await;
    for case in &cases {
        let of_case: Vec<(String, String, Option<String>, Value, Value)> = stored
            .iter()
            .filter(|change| change.context.get("case") == Some(&json!(case.name)))
            .filter(|change| change.operation != "DDL")
            .map(|change| {
                let image = if change.operation == "DELETE" {
                    change.before.clone()
                } else {
                    change.after.clone()
                };
                (
                    change.table.clone(),
                    change.operation.clone(),
                    change.primary_key.clone(),
                    image,
                    json!({"case": change.context["case"], "step": change.context["step"],
                           "partition": change.context.pointer("/_bemi/partition")}),
                )
            })
            .collect();
        let expected: Vec<(String, String, Option<String>, Value, Value)> = case
            .expected
            .iter()
            .map(|(table, operation, key, image, partition)| {
                // Row 1 of each case is written before the DDL, the others after it.
                let step = if key.starts_with('1') || key.starts_with(r#"["1""#) {
                    "before"
                } else {
                    "after"
                };
                (
                    (*table).to_owned(),
                    (*operation).to_owned(),
                    Some((*key).to_owned()),
                    image.clone(),
                    json!({"case": case.name, "step": step, "partition": partition}),
                )
            })
            .collect();
        assert_eq!(of_case, expected, "{timing:?}: {}", case.name);
    }
    // Each DDL is a change of its table in `changes` (operation DDL, selectable with
    // ChangeQuery), with its context, its statement and the shapes before and after.
    let ddl = ChangeQuery::new()
        .operations([Operation::Ddl])
        .fetch(&mut TokioPostgresRunner(&fixture.client))
        .await
        .unwrap();
    for case in &cases {
        let event = ddl
            .iter()
            .find(|change| {
                change.table == case.recorded
                    && change.context.get("case") == Some(&json!(case.name))
            })
            .unwrap_or_else(|| panic!("{timing:?}: no DDL change of {} in {ddl:#?}", case.name));
        assert_eq!(event.primary_key, None);
        assert_eq!(
            event.after.read::<String>("statement").unwrap(),
            case.ddl,
            "{timing:?}: {}",
            case.name
        );
        assert!(event.after.contains("command"), "{event:?}");
    }
    // One statement, one DDL change: a column dropped by ALTER TABLE is not recorded again by
    // the drop trigger.
    assert_eq!(
        ddl.iter()
            .filter(|change| change.context.get("case") == Some(&json!("drop column")))
            .count(),
        1,
        "{timing:?}"
    );
    let renamed = ddl
        .iter()
        .find(|change| change.table == "t_key" && change.context.get("case").is_some())
        .unwrap();
    let names = |image: &bemi_core::Image| -> Vec<String> {
        image
            .value("columns")
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|column| column["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&renamed.before), ["id", "v"]);
    assert_eq!(names(&renamed.after), ["key_id", "v"]);
    // Each DDL is in the trail with its context and the table it changed.
    let events: Vec<(String, Value)> = fixture
        .client
        .query(
            "SELECT shape->>'table_name', context FROM bemi.schema_history \
             ORDER BY commit_lsn, sequence",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    for case in &cases {
        assert!(
            events.contains(&(case.recorded.to_owned(), context(case, "ddl"))),
            "{timing:?}: no event of {} with its context in {events:#?}",
            case.name
        );
    }
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_ddl_read_by_a_live_worker() {
    torture(fixture(test_database!(), SCHEMA).await, Timing::Live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_ddl_read_by_a_worker_stopped_across_it() {
    torture(fixture(test_database!(), SCHEMA).await, Timing::Stopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_ddl_sent_right_after_the_writes() {
    torture(fixture(test_database!(), SCHEMA).await, Timing::BackToBack).await;
}
