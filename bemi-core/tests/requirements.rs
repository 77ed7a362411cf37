//! Requirement checks read from a real server.

use bemi_core::setup::{Problem, ServerFacts};
use bemi_test_harness::test_database;

fn facts(client: &mut postgres::Client) -> ServerFacts {
    let row = client.query_one(ServerFacts::QUERY, &[]).unwrap();
    ServerFacts {
        server_version_num: row.get(0),
        server_version: row.get(1),
        wal_level: row.get(2),
        max_replication_slots: row.get(3),
        max_wal_senders: row.get(4),
        role: row.get(5),
        superuser: row.get(6),
        replication: row.get(7),
    }
}

#[test]
fn the_test_server_meets_every_requirement() {
    let database = test_database!();
    let facts = facts(&mut database.connect_sync());
    assert_eq!(facts.wal_level, "logical");
    assert!(facts.server_version_num >= 140_000);
    facts.check_source().unwrap();
}

#[test]
fn a_role_without_replication_is_told_what_to_run() {
    let database = test_database!();
    let role = format!("{}_app", database.name());
    let mut admin = database.connect_sync();
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; \
             CREATE ROLE {role} LOGIN NOSUPERUSER NOREPLICATION PASSWORD 'bemi-test';"
        ))
        .unwrap();
    let url = database.url_for_user(&role, Some("bemi-test"));
    let checked = {
        let mut app = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        facts(&mut app).check_source()
    };
    admin.batch_execute(&format!("DROP ROLE {role}")).unwrap();

    let error = checked.unwrap_err();
    assert_eq!(
        error.problems(),
        [Problem::NoReplicationPrivilege { role: role.clone() }]
    );
    assert!(
        error
            .to_string()
            .contains(&format!("ALTER ROLE \"{role}\" WITH REPLICATION;")),
        "{error}"
    );
}
