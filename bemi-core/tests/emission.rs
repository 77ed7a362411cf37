//! The emission rule on real WAL: one `_bemi` message per statement, and every row change
//! attributable to the context of its own statement.

use bemi_test_harness::test_database;

use crate::support::{attribute, consume_wal, emission_fixture, expected};

#[test]
fn contexts_are_exact_per_statement_in_a_mixed_transaction() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    // Each statement is sent on its own, as ORMs do.
    for statement in [
        "BEGIN",
        r#"INSERT INTO t VALUES (1, 'a'), (2, 'b') /*Bemi {"request":"A"} Bemi*/"#,
        "INSERT INTO t VALUES (3, 'c')",
        "INSERT INTO t VALUES (4, 'd')",
        r#"INSERT INTO u VALUES (1, 1), (2, 2) /*Bemi {"request":"B"} Bemi*/"#,
        "SAVEPOINT s1",
        r#"UPDATE t SET v = 'rolled back' /*Bemi {"request":"C"} Bemi*/"#,
        "ROLLBACK TO SAVEPOINT s1",
        "UPDATE t SET v = 'y' WHERE id = 1",
        r#"DELETE FROM t WHERE id = 2 /*Bemi {"request":"D"} Bemi*/"#,
        "COMMIT",
    ] {
        client.batch_execute(statement).unwrap();
    }
    let wal = consume_wal(&mut client, &slot);
    assert_eq!(
        attribute(&wal),
        expected(&[
            (
                r"public.t: INSERT: id[integer]:1 v[text]:'a'",
                r#"{"request":"A"}"#
            ),
            (
                r"public.t: INSERT: id[integer]:2 v[text]:'b'",
                r#"{"request":"A"}"#
            ),
            (r"public.t: INSERT: id[integer]:3 v[text]:'c'", "-"),
            (r"public.t: INSERT: id[integer]:4 v[text]:'d'", "-"),
            (
                r"public.u: INSERT: id[integer]:1 t_id[integer]:1",
                r#"{"request":"B"}"#
            ),
            (
                r"public.u: INSERT: id[integer]:2 t_id[integer]:2",
                r#"{"request":"B"}"#
            ),
            (
                r"public.t: UPDATE: old-key: id[integer]:1 v[text]:'a' new-tuple: id[integer]:1 v[text]:'y'",
                "-"
            ),
            (
                r"public.t: DELETE: id[integer]:2 v[text]:'b'",
                r#"{"request":"D"}"#
            ),
            // The FK cascade carries the statement's context.
            (
                r"public.u: DELETE: id[integer]:2 t_id[integer]:2",
                r#"{"request":"D"}"#
            ),
        ])
    );
    // Messages only where needed: A, the clear before the untagged inserts, B, the clear before
    // the untagged update, and D once per table touched by the DELETE (t and its cascade to u).
    let messages: Vec<&str> = wal
        .iter()
        .filter_map(|line| line.strip_prefix("message: "))
        .collect();
    assert_eq!(
        messages,
        [
            r#"{"request":"A"}"#,
            "",
            r#"{"request":"B"}"#,
            "",
            r#"{"request":"D"}"#,
            r#"{"request":"D"}"#
        ]
    );
}

#[test]
fn a_bulk_statement_emits_one_message_for_all_its_rows() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    client
        .batch_execute("INSERT INTO t SELECT i, 'x' FROM generate_series(1, 1000) AS i")
        .unwrap();
    consume_wal(&mut client, &slot);

    client
        .batch_execute(r#"UPDATE t SET v = 'y' /*Bemi {"job":"bulk"} Bemi*/"#)
        .unwrap();
    let wal = consume_wal(&mut client, &slot);
    let messages = wal
        .iter()
        .filter(|line| line.starts_with("message: "))
        .count();
    assert_eq!(messages, 1);
    let attributed = attribute(&wal);
    assert_eq!(attributed.len(), 1000);
    assert!(
        attributed
            .iter()
            .all(|(_, context)| context == r#"{"job":"bulk"}"#)
    );
}

#[test]
fn untagged_transactions_write_no_messages() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    client
        .batch_execute(
            "INSERT INTO t VALUES (1, 'a');
             UPDATE t SET v = 'b';
             DELETE FROM t;
             TRUNCATE t CASCADE;",
        )
        .unwrap();
    let wal = consume_wal(&mut client, &slot);
    assert!(!wal.is_empty());
    assert!(
        wal.iter().all(|line| !line.starts_with("message")),
        "{wal:#?}"
    );
}

#[test]
fn a_new_transaction_starts_without_context() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    client
        .batch_execute(r#"INSERT INTO t VALUES (1, 'a') /*Bemi {"n":1} Bemi*/"#)
        .unwrap();
    client
        .batch_execute("INSERT INTO t VALUES (2, 'b')")
        .unwrap();
    let wal = consume_wal(&mut client, &slot);
    assert_eq!(
        attribute(&wal),
        expected(&[
            (r"public.t: INSERT: id[integer]:1 v[text]:'a'", r#"{"n":1}"#),
            (r"public.t: INSERT: id[integer]:2 v[text]:'b'", "-"),
        ])
    );
    // The second transaction needed no message at all.
    assert_eq!(
        wal.iter()
            .filter(|line| line.starts_with("message"))
            .count(),
        1
    );
}

#[test]
fn rolling_back_a_savepoint_restores_the_outer_state() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    for statement in [
        "BEGIN",
        r#"INSERT INTO t VALUES (1, 'a') /*Bemi {"outer":1} Bemi*/"#,
        "SAVEPOINT s",
        // Clears the context inside the savepoint...
        "INSERT INTO t VALUES (2, 'b')",
        // ...which the rollback undoes, together with the row.
        "ROLLBACK TO SAVEPOINT s",
        // So this untagged statement must clear the context again.
        "INSERT INTO t VALUES (3, 'c')",
        r#"INSERT INTO t VALUES (4, 'd') /*Bemi {"outer":2} Bemi*/"#,
        "COMMIT",
    ] {
        client.batch_execute(statement).unwrap();
    }
    assert_eq!(
        attribute(&consume_wal(&mut client, &slot)),
        expected(&[
            (
                r"public.t: INSERT: id[integer]:1 v[text]:'a'",
                r#"{"outer":1}"#
            ),
            (r"public.t: INSERT: id[integer]:3 v[text]:'c'", "-"),
            (
                r"public.t: INSERT: id[integer]:4 v[text]:'d'",
                r#"{"outer":2}"#
            ),
        ])
    );
}

#[test]
fn truncate_carries_its_context() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    client
        .batch_execute("INSERT INTO t VALUES (1, 'a')")
        .unwrap();
    consume_wal(&mut client, &slot);
    client
        .batch_execute(r#"TRUNCATE t CASCADE /*Bemi {"op":"reset"} Bemi*/"#)
        .unwrap();
    assert_eq!(
        attribute(&consume_wal(&mut client, &slot)),
        expected(&[("public.t, public.u: TRUNCATE: cascade", r#"{"op":"reset"}"#)])
    );
}

#[test]
fn writes_made_by_triggers_and_functions_carry_the_statement_context() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    client
        .batch_execute(
            "CREATE FUNCTION log_t() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO u VALUES (NEW.id, NEW.id); RETURN NULL; END $$;
             CREATE TRIGGER log_t AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION log_t();",
        )
        .unwrap();
    consume_wal(&mut client, &slot);
    client
        .batch_execute(r#"INSERT INTO t VALUES (7, 'x') /*Bemi {"by":"trigger test"} Bemi*/"#)
        .unwrap();
    assert_eq!(
        attribute(&consume_wal(&mut client, &slot)),
        expected(&[
            (
                r"public.t: INSERT: id[integer]:7 v[text]:'x'",
                r#"{"by":"trigger test"}"#
            ),
            (
                r"public.u: INSERT: id[integer]:7 t_id[integer]:7",
                r#"{"by":"trigger test"}"#
            ),
        ])
    );
}

#[test]
fn only_a_comment_ending_the_statement_is_context_never_one_inside_the_data() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    for statement in [
        r#"INSERT INTO t VALUES (1, '/*Bemi {"forged":1} Bemi*/') /*Bemi {"real":1} Bemi*/"#,
        // Data that looks like a comment, in a statement the application did not tag.
        r#"INSERT INTO t VALUES (2, '/*Bemi {"forged":2} Bemi*/')"#,
        // A comment earlier in the text, then more SQL.
        r#"INSERT INTO t /*Bemi {"forged":3} Bemi*/ VALUES (3, 'x')"#,
        // Hand-written at the end, followed by a semicolon and blanks: it is a context.
        "INSERT INTO t VALUES (4, 'x') /*Bemi {\"dba\":\"ann\"} Bemi*/ ;\n ",
        // Degenerate comments carry nothing.
        "INSERT INTO t VALUES (5, 'x') /*Bemi Bemi*/",
    ] {
        client.batch_execute(statement).unwrap();
    }
    let attributed = attribute(&consume_wal(&mut client, &slot));
    let contexts: Vec<&str> = attributed
        .iter()
        .map(|(_, context)| context.as_str())
        .collect();
    assert_eq!(
        contexts,
        [r#"{"real":1}"#, "-", "-", r#"{"dba":"ann"}"#, "-"]
    );
}

#[test]
fn a_transaction_local_setting_gives_raw_sql_a_context() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    for statement in [
        "BEGIN",
        r#"SET LOCAL bemi.context = '{"user":"dba","ticket":"OPS-1"}'"#,
        "INSERT INTO t VALUES (1, 'a')",
        // A comment takes precedence over the setting.
        r#"INSERT INTO t VALUES (2, 'b') /*Bemi {"user":"app"} Bemi*/"#,
        "INSERT INTO t VALUES (3, 'c')",
        "COMMIT",
        "INSERT INTO t VALUES (4, 'd')",
    ] {
        client.batch_execute(statement).unwrap();
    }
    assert_eq!(
        attribute(&consume_wal(&mut client, &slot)),
        expected(&[
            (
                r"public.t: INSERT: id[integer]:1 v[text]:'a'",
                r#"{"user":"dba","ticket":"OPS-1"}"#
            ),
            (
                r"public.t: INSERT: id[integer]:2 v[text]:'b'",
                r#"{"user":"app"}"#
            ),
            (
                r"public.t: INSERT: id[integer]:3 v[text]:'c'",
                r#"{"user":"dba","ticket":"OPS-1"}"#
            ),
            (r"public.t: INSERT: id[integer]:4 v[text]:'d'", "-"),
        ])
    );
}

#[test]
fn extended_protocol_statements_are_tagged_too() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    // Prepared statement with parameters, as ORMs send them.
    client
        .execute(
            r#"INSERT INTO t VALUES ($1, $2) /*Bemi {"proto":"extended"} Bemi*/"#,
            &[&5_i32, &"p"],
        )
        .unwrap();
    assert_eq!(
        attribute(&consume_wal(&mut client, &slot)),
        expected(&[(
            r"public.t: INSERT: id[integer]:5 v[text]:'p'",
            r#"{"proto":"extended"}"#
        )])
    );
}
