//! Helpers shared by the integration tests.

use bemi_core::setup::{Setup, SetupOptions};
use bemi_test_harness::TestDatabase;

/// Installs bemi (destination, source, pgoutput slot) with `options`, plus a `test_decoding`
/// slot to read the WAL as text; returns the setup and the text slot's name.
pub fn install(
    database: &TestDatabase,
    client: &mut postgres::Client,
    options: SetupOptions,
) -> (Setup, String) {
    let setup = Setup::new(options.slot(database.slot_name())).unwrap();
    run_setup(client, &setup);
    let text_slot = format!("{}_text", database.slot_name());
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&text_slot],
        )
        .unwrap();
    (setup, text_slot)
}

/// Runs the whole setup: destination, source, slot.
pub fn run_setup(client: &mut postgres::Client, setup: &Setup) {
    client.batch_execute(&setup.destination_sql()).unwrap();
    client.batch_execute(&setup.source_sql()).unwrap();
    client.batch_execute(&setup.create_slot_sql()).unwrap();
}

/// The WAL since the last call, as test_decoding lines without transaction ids:
/// `BEGIN`, `COMMIT`, `message: <content>` and `table public.t: INSERT: ...`.
pub fn consume_wal(client: &mut postgres::Client, slot: &str) -> Vec<String> {
    client
        .query(
            "SELECT data FROM pg_logical_slot_get_changes($1, NULL, NULL)",
            &[&slot],
        )
        .unwrap()
        .into_iter()
        .map(|row| {
            let line: String = row.get(0);
            if line.starts_with("BEGIN") {
                "BEGIN".to_owned()
            } else if line.starts_with("COMMIT") {
                "COMMIT".to_owned()
            } else if let Some(rest) =
                line.strip_prefix("message: transactional: 1 prefix: _bemi, sz: ")
            {
                let content = rest
                    .split_once(" content:")
                    .map_or("", |(_, content)| content);
                format!("message: {content}")
            } else {
                line
            }
        })
        .collect()
}

/// Applies the attribution rule of `bemi_core::setup` to test_decoding lines: each row change
/// with the context in force at that point (`-` for none).
pub fn attribute(lines: &[String]) -> Vec<(String, String)> {
    let mut context = None;
    let mut attributed = Vec::new();
    for line in lines {
        if line == "BEGIN" || line == "COMMIT" {
            context = None;
        } else if let Some(content) = line.strip_prefix("message: ") {
            context = (!content.is_empty()).then(|| content.to_owned());
        } else if let Some(change) = line.strip_prefix("table ") {
            attributed.push((
                change.to_owned(),
                context.clone().unwrap_or_else(|| "-".to_owned()),
            ));
        }
    }
    attributed
}

/// `[("public.t: INSERT: id[integer]:1", "{\"a\":1}"), ...]` from string slices.
pub fn expected(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(change, context)| ((*change).to_owned(), (*context).to_owned()))
        .collect()
}

/// Installs bemi tracking `public` and creates the tables the emission tests use.
pub fn emission_fixture(database: &TestDatabase) -> (postgres::Client, String) {
    let mut client = database.connect_sync();
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, v text);
             CREATE TABLE u (id int PRIMARY KEY, t_id int REFERENCES t (id) ON DELETE CASCADE);",
        )
        .unwrap();
    let (_, text_slot) = install(database, &mut client, SetupOptions::default());
    (client, text_slot)
}
