//! Values and keys end to end: every type becomes exact JSON, every kind of key is found.

use bemi_test_harness::test_database;
use serde_json::json;

use crate::support::{RunningWorker, fixture, stored};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_every_kind_are_stored_exactly() {
    let fixture = fixture(
        test_database!(),
        "CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE DOMAIN positive AS numeric CHECK (VALUE > 0);
         CREATE TYPE pair AS (a int, b text);
         CREATE TABLE kinds (
             id int PRIMARY KEY,
             small smallint, big bigint, exact numeric, not_a_number numeric, money_like numeric(12,2),
             real_number double precision, infinite real,
             flag boolean, doc jsonb, raw_json json,
             at timestamptz, local_at timestamp, day date, clock time, span interval,
             bytes bytea, uid uuid, feeling mood, feelings mood[], amount positive,
             ints int[], grid int[][], texts text[], jsons jsonb[], numbers numeric[],
             tuple pair, range int4range, address inet, nothing text
         );",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .tagged(
            r#"INSERT INTO kinds VALUES (
                1, -32768, 9223372036854775807, 123456789012345678901234567890.123456789012, 'NaN', 1234567890.10,
                1.5e300, '-Infinity',
                true, '{"nested": {"list": [1, 2.50, null, "x"]}, "big": 12345678901234567890}', '{"dup": 1, "dup": 2}',
                '2024-02-29 23:59:59.123456+05:30', '2024-01-02 03:04:05', '2024-01-02', '13:14:15', '1 year 2 months 3 days 04:05:06',
                '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', '{happy,sad}', 42.5,
                '{1,NULL,3}', '{{1,2},{3,4}}', '{"a,b","quote\"d",NULL,"NULL"}', ARRAY['{"k": 1}'::jsonb, '[true]'], '{1.10,NaN}',
                ROW(7, 'seven'), '[1,10)', '192.168.0.1/24', NULL
            )"#,
            json!({"test": "values"}),
        )
        .await;
    let changes = fixture.wait_for(1).await;
    let after = &changes[0].after;
    assert_eq!(
        after,
        &json!({
            "id": 1, "small": -32768, "big": 9223372036854775807_i64,
            "exact": serde_json::from_str::<serde_json::Value>("123456789012345678901234567890.123456789012").unwrap(),
            "not_a_number": "NaN", "money_like": 1234567890.10,
            "real_number": 1.5e300, "infinite": "-Infinity",
            "flag": true, "doc": {"nested": {"list": [1, 2.50, null, "x"]}, "big": 12345678901234567890_u64}, "raw_json": {"dup": 2},
            "at": "2024-02-29T18:29:59.123456Z", "local_at": "2024-01-02T03:04:05", "day": "2024-01-02", "clock": "13:14:15",
            "span": "P1Y2M3DT4H5M6S",
            "bytes": "\\x00ff10", "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "feeling": "happy", "feelings": ["happy", "sad"],
            "amount": 42.5,
            "ints": [1, null, 3], "grid": [[1, 2], [3, 4]], "texts": ["a,b", "quote\"d", null, "NULL"],
            "jsons": [{"k": 1}, [true]], "numbers": [1.10, "NaN"],
            "tuple": "(7,seven)", "range": "[1,10)", "address": "192.168.0.1/24", "nothing": null,
        })
    );
    // Exactness is checked on the stored text, not through f64.
    let exact: String = fixture
        .client
        .query_one(
            &format!(
                "SELECT (\"after\"->'exact')::text || ' ' || (\"after\"->'big')::text || ' ' || (\"after\"->'doc'->'big')::text FROM {}",
                fixture.setup.options().changes_table_name()
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        exact,
        "123456789012345678901234567890.123456789012 9223372036854775807 12345678901234567890"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toasted_values_are_filled_from_the_old_row() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE doc (id int PRIMARY KEY, title text, body text);
         ALTER TABLE doc ALTER COLUMN body SET STORAGE EXTERNAL;",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    // Random-looking text that compression cannot shrink below the TOAST threshold.
    fixture
        .sql("INSERT INTO doc SELECT 1, 'v1', string_agg(md5(i::text), '') FROM generate_series(1, 2000) AS i")
        .await;
    fixture
        .tagged(
            "UPDATE doc SET title = 'v2' WHERE id = 1",
            json!({"edit": "title"}),
        )
        .await;
    let changes = fixture.wait_for(2).await;
    let body = changes[0].after["body"].as_str().unwrap().to_owned();
    assert_eq!(body.len(), 64_000);
    assert_eq!(
        changes[1].before,
        json!({"id": 1, "title": "v1", "body": body})
    );
    assert_eq!(
        changes[1].after,
        json!({"id": 1, "title": "v2", "body": body})
    );
    assert_eq!(changes[1].context, json!({"edit": "title"}));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_escapes_in_json_columns_are_replaced_and_marked() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE event (id int PRIMARY KEY, payload json);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .tagged(
            r#"INSERT INTO event VALUES (1, '{"text": "a\u0000b"}')"#,
            json!({"user": 1}),
        )
        .await;
    let changes = fixture.wait_for(1).await;
    assert_eq!(
        changes[0].after,
        json!({"id": 1, "payload": {"text": "a\u{fffd}b"}})
    );
    assert_eq!(
        changes[0].context,
        json!({"user": 1, "_bemi": {"replaced_nul": ["after.payload"]}})
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_values_jsonb_rejects_are_kept_as_text_in_place() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE event (id int PRIMARY KEY, payload json);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    // Valid `json`, but `jsonb` refuses them: a number beyond `numeric`, half a surrogate pair.
    fixture
        .tagged(
            r#"INSERT INTO event VALUES (1, '{"n": 1e1000000}'), (2, '["\ud800"]')"#,
            json!({"user": 1}),
        )
        .await;
    fixture
        .sql(r#"UPDATE event SET payload = '{"n": 1}' WHERE id = 1"#)
        .await;
    let changes = fixture.wait_for(3).await;
    assert_eq!(
        changes[0].after,
        json!({"id": 1, "payload": r#"{"n": 1e1000000}"#})
    );
    assert_eq!(
        changes[1].after,
        json!({"id": 2, "payload": r#"["\ud800"]"#})
    );
    for change in &changes[..2] {
        assert_eq!(
            change.context,
            json!({"user": 1, "_bemi": {"kept_as_text": ["after.payload"]}})
        );
    }
    // The next change reads back whole: `before` keeps the value as text too.
    assert_eq!(
        changes[2].before,
        json!({"id": 1, "payload": r#"{"n": 1e1000000}"#})
    );
    assert_eq!(changes[2].after, json!({"id": 1, "payload": {"n": 1}}));
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_postgresql_rejects_are_stored_with_their_images_as_text() {
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE event (id int PRIMARY KEY, payload text);",
    )
    .await;
    // The destination refuses images holding "poison" (a data exception, as a value the
    // stored table cannot take would raise), but takes the change with its images as text.
    fixture
        .sql(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF NEW.\"after\"::text LIKE '%poison%' THEN \
                 RAISE EXCEPTION 'poison is refused' USING ERRCODE = '22023'; \
               END IF; RETURN NEW; END $$; \
             CREATE TRIGGER refuse_poison BEFORE INSERT ON bemi.changes_stored \
               FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
        )
        .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .tagged("INSERT INTO event VALUES (1, 'poison')", json!({"user": 1}))
        .await;
    fixture.sql("INSERT INTO event VALUES (2, 'fine')").await;
    let changes = fixture.wait_for(2).await;
    assert_eq!(changes[0].after, json!({}));
    assert_eq!(changes[0].context["user"], json!(1));
    let unstorable = &changes[0].context["_bemi"]["unstorable"];
    assert_eq!(unstorable["after"], json!(r#"{"id":1,"payload":"poison"}"#));
    assert!(
        unstorable["error"]
            .as_str()
            .unwrap()
            .contains("poison is refused"),
        "{unstorable}"
    );
    // The next change is stored normally.
    assert_eq!(changes[1].after, json!({"id": 2, "payload": "fine"}));
    // Rows stored one by one (each under a savepoint, a subtransaction of its own) are sealed
    // like the others.
    crate::support::wait_all_sealed(&fixture).await;
    worker.stop().await.unwrap();
    let report = crate::support::verify(&fixture).await;
    assert!(report.is_intact() && report.intact == 2, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_keys_come_from_the_catalog() {
    let fixture = fixture(
        test_database!(),
        r#"CREATE TABLE composite (tenant text, day date, n int, PRIMARY KEY (tenant, day));
           CREATE TABLE named ("Code" text PRIMARY KEY, label text);
           CREATE TABLE keyless (note text);
           CREATE TABLE with_id_but_other_key (id int, sku text PRIMARY KEY);"#,
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    fixture
        .sql(
            r#"INSERT INTO composite VALUES ('acme', '2024-01-02', 1);
               INSERT INTO named VALUES ('A-1', 'first');
               INSERT INTO keyless VALUES ('no key');
               INSERT INTO with_id_but_other_key VALUES (9, 'SKU"9');
               DELETE FROM composite;"#,
        )
        .await;
    let changes = fixture.wait_for(5).await;
    let keys: Vec<(&str, Option<&str>)> = changes
        .iter()
        .map(|change| (change.table.as_str(), change.primary_key.as_deref()))
        .collect();
    assert_eq!(
        keys,
        [
            ("composite", Some(r#"["acme","2024-01-02"]"#)),
            ("named", Some("A-1")),
            ("keyless", None),
            ("with_id_but_other_key", Some("SKU\"9")),
            ("composite", Some(r#"["acme","2024-01-02"]"#)),
        ]
    );
    assert_eq!(
        changes[2],
        stored(
            "keyless",
            "CREATE",
            None,
            json!({}),
            json!({"note": "no key"}),
            json!({})
        )
    );
    worker.stop().await.unwrap();
}

/// A JSON text twice: as written (NUL characters as `\u0000` escapes) and as `jsonb` can hold
/// it (U+FFFD instead). `/` is written `\u002f` (a context payload holds none).
#[derive(Debug, Clone)]
struct JsonText {
    written: String,
    storable: String,
}

fn json_text() -> impl proptest::strategy::Strategy<Value = JsonText> {
    use proptest::prelude::*;
    let number = (
        proptest::bool::ANY,
        "[1-9][0-9]{0,39}",
        proptest::option::of("[0-9]{1,40}"),
        proptest::option::of(-30_i32..30),
    )
        .prop_map(|(negative, digits, fraction, exponent)| {
            let mut text = format!("{}{digits}", if negative { "-" } else { "" });
            if let Some(fraction) = fraction {
                text.push('.');
                text.push_str(&fraction);
            }
            if let Some(exponent) = exponent {
                text.push_str(&format!("e{exponent}"));
            }
            JsonText {
                written: text.clone(),
                storable: text,
            }
        });
    // Strings of pieces: plain text, a real NUL, and an escaped backslash before `u0000`.
    let string = proptest::collection::vec(
        prop_oneof![
            "[a-zé\"/ ]{0,4}".prop_map(|text| {
                let escaped = text.replace('"', "\\\"").replace('/', "\\u002f");
                (escaped.clone(), escaped)
            }),
            Just(("\\u0000".to_owned(), "\\ufffd".to_owned())),
            Just(("\\\\u0000".to_owned(), "\\\\u0000".to_owned())),
        ],
        0..4,
    )
    .prop_map(|pieces| {
        let (written, storable): (Vec<String>, Vec<String>) = pieces.into_iter().unzip();
        JsonText {
            written: format!("\"{}\"", written.concat()),
            storable: format!("\"{}\"", storable.concat()),
        }
    });
    let leaf = prop_oneof![number, string.clone()];
    leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| JsonText {
                written: format!(
                    "[{}]",
                    items
                        .iter()
                        .map(|item| item.written.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                storable: format!(
                    "[{}]",
                    items
                        .iter()
                        .map(|item| item.storable.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            }),
            proptest::collection::vec(("[a-z]{1,3}", inner), 0..4).prop_map(|members| JsonText {
                written: format!(
                    "{{{}}}",
                    members
                        .iter()
                        .map(|(key, value)| format!("\"{key}\":{}", value.written))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                storable: format!(
                    "{{{}}}",
                    members
                        .iter()
                        .map(|(key, value)| format!("\"{key}\":{}", value.storable))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            }),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_keep_every_digit_through_contexts_and_json_columns() {
    use proptest::strategy::{Strategy, ValueTree};
    let fixture = fixture(
        test_database!(),
        "CREATE TABLE doc (id int PRIMARY KEY, j json, jb jsonb, f float8);",
    )
    .await;
    let worker = RunningWorker::start(fixture.config());
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut cases: Vec<JsonText> = (0..48)
        .map(|_| json_text().new_tree(&mut runner).unwrap().current())
        .collect();
    // The cases the issue found, always.
    for fixed in [
        "123456789012345678901234567890",
        "18446744073709551616",
        "0.1000000000000000055511151231257827",
        "{\"a\":\"\\\\u0000\",\"n\":123456789012345678901234567890}",
    ] {
        cases.push(JsonText {
            written: fixed.to_owned(),
            storable: fixed.to_owned(),
        });
    }
    for (id, case) in cases.iter().enumerate() {
        // The context is written by hand, as any client may: `{"v": <value>}`.
        fixture
            .client
            .execute(
                &format!(
                    "INSERT INTO doc (id, j, jb) VALUES ($1, $2::text::json, $3::text::jsonb) \
                     /*Bemi {{\"v\":{}}} Bemi*/",
                    case.written
                ),
                &[&(id as i32), &case.written, &case.storable],
            )
            .await
            .unwrap();
    }
    fixture
        .sql("INSERT INTO doc (id, f) VALUES (-1, '-0'::float8)")
        .await;
    fixture.wait_for(cases.len() + 1).await;
    for (id, case) in cases.iter().enumerate() {
        let row = fixture
            .client
            .query_one(
                "SELECT (\"after\"->'j')::text, (\"after\"->'jb')::text, (context->'v')::text, \
                        ($2::text::jsonb)::text \
                 FROM bemi.changes WHERE primary_key = $1::int::text",
                &[&(id as i32), &case.storable],
            )
            .await
            .unwrap();
        let expected: String = row.get(3);
        for (what, column) in [("json column", 0), ("jsonb column", 1), ("context", 2)] {
            assert_eq!(row.get::<_, String>(column), expected, "{what} of {case:?}");
        }
    }
    let negative_zero: serde_json::Value = fixture
        .client
        .query_one(
            "SELECT \"after\"->'f' FROM bemi.changes WHERE primary_key = '-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(negative_zero, json!("-0"));
    worker.stop().await.unwrap();
}
