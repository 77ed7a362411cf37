//! Hostile contexts appended to real statements: the statement runs, and the payload the
//! trigger extracts into the WAL parses back to exactly the same context.

use std::cell::{Cell, RefCell};

use bemi_core::strategies::hostile_context;
use bemi_core::{CommentEncoder, Context, parse_payload};
use bemi_test_harness::test_database;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

use crate::support::{consume_wal, emission_fixture};

/// The contents of the `_bemi` messages in `lines`.
fn messages(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix("message: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn hostile_contexts_round_trip_through_postgresql() {
    let database = test_database!();
    let (client, slot) = emission_fixture(&database);
    let client = RefCell::new(client);
    let encoder = CommentEncoder::default();
    let id = Cell::new(0_i32);
    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    runner
        .run(&hostile_context(), |context| {
            id.set(id.get() + 1);
            let sql = encoder.tag("INSERT INTO t (id, v) VALUES ($1, $2)", &context);
            let mut client = client.borrow_mut();
            client
                .execute(sql.as_ref(), &[&id.get(), &"row"])
                .map_err(|error| TestCaseError::fail(format!("{error}: {sql}")))?;
            let wal = consume_wal(&mut client, &slot);
            let found = messages(&wal);
            prop_assert_eq!(found.len(), 1, "{:?}", wal);
            prop_assert_eq!(parse_payload(&found[0]).unwrap(), context);
            Ok(())
        })
        .unwrap();
}

#[test]
fn oversized_contexts_become_a_marker_and_the_write_still_runs() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    let huge = Context::new().with("blob", "x".repeat(1_100_000));
    let sql = CommentEncoder::default().tag("INSERT INTO t VALUES (1, 'kept')", &huge);
    client.batch_execute(&sql).unwrap();
    let wal = consume_wal(&mut client, &slot);
    let found = messages(&wal);
    assert_eq!(found.len(), 1);
    assert_eq!(
        parse_payload(&found[0]).unwrap().into_value(),
        json!({"_bemi": {"dropped": "context_too_large", "bytes": 1_100_011}})
    );
    assert!(wal.iter().any(|line| line.contains("v[text]:'kept'")));
}

#[test]
fn a_context_just_under_the_cap_is_kept_whole() {
    let database = test_database!();
    let (mut client, slot) = emission_fixture(&database);
    let context = Context::new().with("blob", "y".repeat(999_000));
    let sql = CommentEncoder::default().tag("INSERT INTO t VALUES (1, 'big')", &context);
    client.batch_execute(&sql).unwrap();
    let found = messages(&consume_wal(&mut client, &slot));
    assert_eq!(parse_payload(&found[0]).unwrap(), context);
}
