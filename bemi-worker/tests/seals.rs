//! Seals: the worker seals what it stored, and `verify` names every tampering of the changes
//! or the seals: an edited value, a deleted change, a forged change inserted in the sealed
//! range, two changes' values swapped, a truncated partition, a rewritten or removed seal.

use std::time::Duration;

use bemi_test_harness::{test_database, wait_until_async};
use bemi_worker::seal::AnchorSources;
use bemi_worker::{Finding, VerifyReport};

use crate::support::{Fixture, RunningWorker, TIMEOUT, fixture, verify, verify_with};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL);";

/// How many changes the seals hold.
async fn sealed(fixture: &Fixture) -> i64 {
    fixture
        .client
        .query_one(
            "SELECT coalesce(sum(changes), 0)::int8 FROM bemi.seals",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn wait_sealed(fixture: &Fixture, count: i64) {
    wait_until_async(format!("{count} sealed changes"), TIMEOUT, || async {
        (sealed(fixture).await >= count).then_some(())
    })
    .await;
}

/// `verify` with the anchor file `anchors`.
async fn verify_with_file(fixture: &Fixture, anchors: &std::path::Path) -> VerifyReport {
    verify_anchored(fixture, &AnchorSources::none().file(anchors)).await
}

async fn verify_anchored(fixture: &Fixture, anchors: &AnchorSources) -> VerifyReport {
    verify_with(
        fixture,
        &bemi_worker::VerifyOptions::new().anchors(anchors.clone()),
    )
    .await
}

/// The ids of the stored changes, in id order.
async fn ids(fixture: &Fixture) -> Vec<uuid::Uuid> {
    crate::support::first_column(
        &fixture.client,
        "SELECT id FROM bemi.changes_stored ORDER BY id",
        &[],
    )
    .await
}

/// Runs `tamper`, checks that verify finds exactly `expected` (given the ids in id order),
/// then runs `restore` and checks the trail is intact again.
async fn detects<F>(fixture: &Fixture, tamper: &str, restore: &str, expected: F)
where
    F: Fn(&[uuid::Uuid]) -> Vec<Finding>,
{
    let ids = ids(fixture).await;
    fixture.sql(tamper).await;
    let report = verify(fixture).await;
    assert_eq!(report.findings, expected(&ids), "after: {tamper}");
    fixture.sql(restore).await;
    let report = verify(fixture).await;
    assert!(report.is_intact(), "after restoring {restore}: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_every_tampering_of_the_changes_and_the_seals() {
    let fixture = fixture(test_database!(), ITEMS).await;
    let mut config = fixture.config();
    config.seal_interval = Some(Duration::from_millis(20));
    let worker = RunningWorker::start(config);
    fixture
        .sql("INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 5) i")
        .await;
    fixture.wait_for(5).await;
    wait_sealed(&fixture, 5).await;
    // A second block, after the first.
    fixture
        .sql("UPDATE items SET title = 'renamed' WHERE id IN (2, 3)")
        .await;
    fixture.sql("DELETE FROM items WHERE id = 5").await;
    fixture.wait_for(8).await;
    wait_sealed(&fixture, 8).await;
    worker.stop().await.unwrap();

    let report = verify(&fixture).await;
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.intact, 8);
    // `status` says how far the seals reach.
    let status = bemi_worker::status(&fixture.source, &fixture.source, fixture.setup.options())
        .await
        .unwrap();
    let seals = status.seals.clone().unwrap();
    assert_eq!(seals.sealed_changes, 8, "{status:?}");
    assert_eq!(seals.oldest_unsealed_commit, None, "{status:?}");
    assert!(
        status
            .to_string()
            .contains("seals:               8 changes in"),
        "{status}"
    );
    assert!(report.blocks >= 2, "{report:?}");
    assert_eq!((report.unsealed_after, report.unsealed_before), (0, 0));
    let blocks: Vec<(i64, i32)> = fixture
        .client
        .query("SELECT block, changes FROM bemi.seals ORDER BY block", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let first_block_changes = usize::try_from(blocks[0].1).unwrap();
    let block_of = |index: usize| if index < first_block_changes { 1 } else { 2 };
    let database = fixture.database.name().to_owned();
    fixture
        .sql("CREATE TABLE saved AS SELECT * FROM bemi.changes_stored")
        .await;

    // An edited value.
    let edited = |ids: &[uuid::Uuid]| {
        vec![Finding::Edited {
            database: database.clone(),
            block: block_of(1),
            id: ids[1],
        }]
    };
    let second = "(SELECT id FROM bemi.changes_stored ORDER BY id OFFSET 1 LIMIT 1)";
    detects(
        &fixture,
        &format!(
            "UPDATE bemi.changes_stored SET \"after\" = '{{\"id\": 2, \"title\": \"forged\"}}' \
             WHERE id = {second}"
        ),
        "UPDATE bemi.changes_stored c SET \"after\" = s.\"after\" FROM saved s WHERE s.id = c.id",
        edited,
    )
    .await;

    // A deleted change.
    detects(
        &fixture,
        &format!("DELETE FROM bemi.changes_stored WHERE id = {second}"),
        "INSERT INTO bemi.changes_stored SELECT * FROM saved s \
         WHERE NOT EXISTS (SELECT 1 FROM bemi.changes_stored c WHERE c.id = s.id)",
        |ids| {
            vec![Finding::Deleted {
                database: database.clone(),
                block: block_of(1),
                id: ids[1],
            }]
        },
    )
    .await;

    // A forged change inside the sealed range: a copy of the second with another id just
    // after it (same position, another source).
    let forged_id = {
        let ids = ids(&fixture).await;
        let mut bytes = *ids[1].as_bytes();
        bytes[15] ^= 0x01;
        uuid::Uuid::from_bytes(bytes)
    };
    detects(
        &fixture,
        &format!(
            "INSERT INTO bemi.changes_stored SELECT '{forged_id}', primary_key, \"before\", \
             \"after\", context, database, schema, \"table\", operation, committed_at, queued_at, \
             transaction_id, position, commit_lsn, sequence, previous_primary_key, created_at, \
             after_changed FROM bemi.changes_stored WHERE id = {second}"
        ),
        &format!("DELETE FROM bemi.changes_stored WHERE id = '{forged_id}'"),
        |_| {
            vec![Finding::Inserted {
                database: database.clone(),
                block: Some(block_of(1)),
                id: forged_id,
            }]
        },
    )
    .await;

    // Two changes' images swapped: both are edited.
    detects(
        &fixture,
        "WITH pair AS (SELECT id, \"after\" FROM bemi.changes_stored ORDER BY id LIMIT 2) \
         UPDATE bemi.changes_stored c SET \"after\" = o.\"after\" FROM pair p, pair o \
         WHERE c.id = p.id AND o.id <> p.id",
        "UPDATE bemi.changes_stored c SET \"after\" = s.\"after\" FROM saved s WHERE s.id = c.id",
        |ids| {
            (0..2)
                .map(|index| Finding::Edited {
                    database: database.clone(),
                    block: block_of(index),
                    id: ids[index],
                })
                .collect()
        },
    )
    .await;

    // The partition holding them truncated: every sealed change is reported deleted.
    let partition: String = fixture
        .client
        .query_one(
            "SELECT tableoid::regclass::text FROM bemi.changes_stored LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    detects(
        &fixture,
        &format!("TRUNCATE {partition}"),
        "INSERT INTO bemi.changes_stored SELECT * FROM saved",
        |ids| {
            ids.iter()
                .enumerate()
                .map(|(index, id)| Finding::Deleted {
                    database: database.clone(),
                    block: block_of(index),
                    id: *id,
                })
                .collect()
        },
    )
    .await;

    // Seals rewritten: a leaf replaced (its root no longer matches), a root recomputed by
    // hand is not possible without the hash, and a block removed breaks the chain.
    fixture
        .sql("CREATE TABLE saved_seals AS SELECT * FROM bemi.seals")
        .await;
    let broken = |block: i64, why: &'static str| {
        vec![Finding::SealBroken {
            database: database.clone(),
            block,
            why,
        }]
    };
    detects(
        &fixture,
        "UPDATE bemi.seals SET leaves = set_byte(leaves, 0, get_byte(leaves, 0) # 255) WHERE block = 1",
        "UPDATE bemi.seals c SET leaves = s.leaves FROM saved_seals s WHERE s.block = c.block",
        |_| broken(1, "its leaves do not make its root"),
    )
    .await;
    detects(
        &fixture,
        "UPDATE bemi.seals SET hash = set_byte(hash, 0, get_byte(hash, 0) # 255) WHERE block = 1",
        "UPDATE bemi.seals c SET hash = s.hash FROM saved_seals s WHERE s.block = c.block",
        |_| {
            let mut found = broken(1, "its hash does not match its content");
            found.extend(broken(2, "it does not chain to the block before it"));
            found
        },
    )
    .await;
    detects(
        &fixture,
        "DELETE FROM bemi.seals WHERE block = 1",
        "INSERT INTO bemi.seals SELECT * FROM saved_seals WHERE block = 1",
        |ids| {
            // The changes of the removed block are no longer sealed: before the first seal.
            let _ = ids;
            broken(2, "the block before it is missing")
        },
    )
    .await;

    // Retention dropped the partition (recorded in bemi.retention_runs as `retention` records
    // it, the stored table's quoted name): its blocks expired, nothing is missing.
    fixture
        .sql(&format!(
            "TRUNCATE {partition}; \
             INSERT INTO bemi.retention_runs (changes_table, started_at, keep, cutoff, dry_run, \
               dropped, held) \
             VALUES ('\"bemi\".\"changes_stored\"', now(), interval '400 days', now(), false, \
               jsonb_build_array(jsonb_build_object('partition', '{partition}', 'from', NULL, \
                 'to', now() + interval '1 hour', 'rows', 8)), '[]')"
        ))
        .await;
    let report = verify(&fixture).await;
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.expired_blocks, report.blocks), (2, 0), "{report:?}");
}

/// `verify` of a range reads only the blocks holding changes of it, over as many connections
/// as asked, and still checks every seal against its header and the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_of_a_range_reads_its_blocks_and_chains_every_seal() {
    let fixture = fixture(test_database!(), ITEMS).await;
    let mut config = fixture.config();
    config.seal_interval = Some(Duration::from_millis(20));
    let worker = RunningWorker::start(config);
    let mut expected = 0;
    for round in 0..4 {
        fixture
            .sql(&format!(
                "INSERT INTO items SELECT i, 'item ' || i FROM generate_series({0} * 10 + 1, {0} * 10 + 10) i",
                round
            ))
            .await;
        expected += 10;
        fixture.wait_for(expected).await;
        wait_sealed(&fixture, i64::try_from(expected).unwrap()).await;
    }
    worker.stop().await.unwrap();
    let seals: Vec<(
        i64,
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
    )> = fixture
        .client
        .query(
            "SELECT block, first_committed_at, last_committed_at FROM bemi.seals ORDER BY block",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert!(seals.len() >= 4, "{seals:?}");
    let options = bemi_worker::VerifyOptions::new;
    let run = |options: bemi_worker::VerifyOptions| {
        let fixture = &fixture;
        async move { verify_with(fixture, &options).await }
    };
    for readers in [1, 3] {
        let whole = run(options().readers(readers)).await;
        assert!(whole.is_intact(), "{whole:?}");
        assert_eq!(
            (whole.blocks, whole.intact, whole.outside_range),
            (seals.len() as u64, 40, 0)
        );
    }
    // Only the last block's time: the others are outside, their changes unread.
    let (last_block, last_from, _) = *seals.last().unwrap();
    let last = run(options().from(last_from)).await;
    assert!(last.is_intact(), "{last:?}");
    assert_eq!(last.blocks, 1, "{last:?}");
    assert_eq!(last.outside_range, seals.len() as u64 - 1, "{last:?}");

    // A change of the first block edited: a range without it does not see it, one with it does,
    // in block order whatever reader finishes first.
    let (first_block, _, first_to) = seals[0];
    fixture
        .sql(
            "UPDATE bemi.changes_stored SET \"after\" = '{\"id\": 1, \"title\": \"forged\"}' \
             WHERE id = (SELECT id FROM bemi.changes_stored ORDER BY id LIMIT 1)",
        )
        .await;
    fixture
        .sql(
            "UPDATE bemi.changes_stored SET \"after\" = '{\"forged\": true}' \
             WHERE id = (SELECT id FROM bemi.changes_stored ORDER BY id DESC LIMIT 1)",
        )
        .await;
    assert!(
        run(options().from(last_from).to(last_from))
            .await
            .findings
            .iter()
            .all(
                |finding| matches!(finding, Finding::Edited { block, .. } if *block == last_block)
            )
    );
    for readers in [1, 3] {
        let found = run(options().readers(readers)).await.findings;
        let blocks: Vec<i64> = found
            .iter()
            .map(|finding| match finding {
                Finding::Edited { block, .. } => *block,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(blocks, [first_block, last_block], "{found:?}");
    }
    let early = run(options().to(first_to)).await;
    assert_eq!(early.findings.len(), 1, "{early:?}");
    // A change forged between the first block and the second, outside the range: the gap after
    // the range's last block is read too.
    let first_last: uuid::Uuid = fixture
        .client
        .query_one("SELECT last_id FROM bemi.seals WHERE block = 1", &[])
        .await
        .unwrap()
        .get(0);
    let forged_id = uuid::Uuid::from_u128(first_last.as_u128() + 1);
    fixture
        .sql(&format!(
            "INSERT INTO bemi.changes_stored SELECT '{forged_id}', primary_key, \"before\", \
             \"after\", context, database, schema, \"table\", operation, committed_at, queued_at, \
             transaction_id, position, commit_lsn, sequence, previous_primary_key, created_at, \
             after_changed FROM bemi.changes_stored WHERE id = '{first_last}'"
        ))
        .await;
    let early = run(options().to(first_to)).await;
    assert_eq!(
        early.findings.last(),
        Some(&Finding::Inserted {
            database: fixture.database.name().to_owned(),
            block: None,
            id: forged_id,
        }),
        "{early:?}"
    );
    assert_eq!(early.findings.len(), 2, "{early:?}");
    fixture
        .sql("UPDATE bemi.seals SET hash = set_byte(hash, 0, get_byte(hash, 0) # 255) WHERE block = 1")
        .await;
    // The first block's seal is outside the range, but its header and the chain are checked.
    let late = run(options().from(last_from)).await;
    let database = fixture.database.name().to_owned();
    assert_eq!(
        late.findings[..2],
        [
            Finding::SealBroken {
                database: database.clone(),
                block: first_block,
                why: "its hash does not match its content",
            },
            Finding::SealBroken {
                database,
                block: first_block + 1,
                why: "it does not chain to the block before it",
            },
        ],
        "{late:?}"
    );
}

/// A role that may write the changes table inserts a change with an id just ahead of the
/// worker's (one the worker then passes): the sealer seals only row versions the worker's own
/// transactions wrote, so the forged change is never sealed, and `verify` names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_forged_ahead_of_the_worker_is_never_sealed() {
    let fixture = fixture(test_database!(), ITEMS).await;
    let mut config = fixture.config();
    config.seal_interval = Some(Duration::from_millis(20));
    let worker = RunningWorker::start(config);
    fixture
        .sql("INSERT INTO items VALUES (1, 'one'), (2, 'two')")
        .await;
    fixture.wait_for(2).await;
    wait_sealed(&fixture, 2).await;
    let last = *ids(&fixture).await.last().unwrap();
    let forged_id = uuid::Uuid::from_u128(last.as_u128() + 1);
    fixture
        .sql(&format!(
            "INSERT INTO bemi.changes_stored SELECT '{forged_id}', primary_key, \"before\", \
             '{{\"id\": 3, \"title\": \"forged\"}}', context, database, schema, \"table\", \
             operation, committed_at, queued_at, transaction_id, position, commit_lsn, sequence, \
             previous_primary_key, created_at, after_changed FROM bemi.changes_stored \
             WHERE id = '{last}'"
        ))
        .await;
    // The worker stores and seals past it.
    fixture
        .sql("UPDATE items SET title = 'renamed' WHERE id = 1")
        .await;
    wait_sealed(&fixture, 3).await;
    worker.stop().await.unwrap();
    let (stored, sealed): (i64, i64) = {
        let row = fixture
            .client
            .query_one(
                "SELECT (SELECT count(*) FROM bemi.changes_stored), \
                 (SELECT sum(changes)::int8 FROM bemi.seals)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((stored, sealed), (4, 3));
    let report = verify(&fixture).await;
    assert_eq!(
        report.findings,
        [Finding::Inserted {
            database: fixture.database.name().to_owned(),
            block: None,
            id: forged_id,
        }],
        "{report:?}"
    );
}

/// The binary: `verify` exits 0 on an intact trail and 2, naming the change, on a tampered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verify_command_exits_2_and_names_the_change() {
    let fixture = fixture(test_database!(), ITEMS).await;
    let mut config = fixture.config();
    config.seal_interval = Some(Duration::from_millis(20));
    let worker = RunningWorker::start(config);
    fixture.sql("INSERT INTO items VALUES (1, 'one')").await;
    fixture.wait_for(1).await;
    wait_sealed(&fixture, 1).await;
    worker.stop().await.unwrap();
    let url = fixture.database.url();
    let run_with = |more: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_bemi-worker"))
            .args(["verify", "--database-url", &url])
            .args(more)
            .output()
            .unwrap()
    };
    let run = || run_with(&[]);
    let intact = run();
    assert_eq!(intact.status.code(), Some(0), "{intact:?}");
    assert!(String::from_utf8_lossy(&intact.stdout).contains("1 changes intact"));
    fixture
        .sql("UPDATE bemi.changes_stored SET \"before\" = '{\"forged\": true}'")
        .await;
    let tampered = run();
    assert_eq!(tampered.status.code(), Some(2), "{tampered:?}");
    // A range after the change leaves its block unread; one that holds it reads it.
    let later = run_with(&["--from", "2999-01-01"]);
    assert_eq!(later.status.code(), Some(0), "{later:?}");
    assert!(
        String::from_utf8_lossy(&later.stdout).contains("1 blocks outside --from/--to"),
        "{later:?}"
    );
    let holding = run_with(&["--to", "2999-12-31", "--readers", "1"]);
    assert_eq!(holding.status.code(), Some(2), "{holding:?}");
    let refused = run_with(&["--from", "yesterday"]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("expected 2026-11-30 or an RFC 3339 time"),
        "{refused:?}"
    );
    let id: uuid::Uuid = fixture
        .client
        .query_one("SELECT id FROM bemi.changes_stored", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        String::from_utf8_lossy(&tampered.stdout).contains(&format!(
            "TAMPERED: {}: change {id}",
            fixture.database.name()
        )),
        "{}",
        String::from_utf8_lossy(&tampered.stdout)
    );
}

/// Someone who can write the changes and the seals edits a change and has the whole chain
/// sealed again: the seals agree with the changes, but not with the hashes the worker
/// published outside the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_rewritten_whole_is_caught_by_its_anchors() {
    let fixture = fixture(test_database!(), ITEMS).await;
    let folder = tempfile::tempdir().unwrap();
    let anchors = folder.path().join("anchors.ndjson");
    let nats = bemi_test_harness::NatsServer::start();
    let mut stream_options = bemi_worker::NatsOptions::new(nats.url());
    stream_options.stream = bemi_worker::seal::DEFAULT_ANCHOR_STREAM.to_owned();
    stream_options.subject = bemi_worker::seal::DEFAULT_ANCHOR_SUBJECT.to_owned();
    let mut config = fixture.config();
    config.seal_interval = Some(Duration::from_millis(20));
    config.anchor_file = Some(anchors.clone());
    config.anchor_nats = Some(stream_options.clone());
    let worker = RunningWorker::start(config);
    fixture
        .sql("INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 3) i")
        .await;
    fixture.wait_for(3).await;
    wait_sealed(&fixture, 3).await;
    // The seal's hash reaches the anchors stream right after the seal is stored.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let mut anchors_stream = wait_until_async("an anchor in NATS", TIMEOUT, || async {
        let mut stream = jetstream
            .get_stream(bemi_worker::seal::DEFAULT_ANCHOR_STREAM)
            .await
            .ok()?;
        let messages = stream.info().await.ok()?.state.messages;
        (messages >= 1).then_some(stream)
    })
    .await;
    worker.stop().await.unwrap();
    let report = verify_with_file(&fixture, &anchors).await;
    assert!(report.is_intact(), "{report:?}");
    assert!(report.anchors >= 1, "{report:?}");
    let in_nats = AnchorSources::none().nats(stream_options.clone());
    let report = verify_anchored(&fixture, &in_nats).await;
    assert!(report.is_intact() && report.anchors >= 1, "{report:?}");
    // The anchors stream refuses to take an anchor back.
    assert!(anchors_stream.info().await.unwrap().config.deny_delete);
    assert!(anchors_stream.delete_message(1).await.is_err());
    assert!(anchors_stream.purge().await.is_err());
    let anchored = std::fs::read_to_string(&anchors).unwrap();
    assert!(anchored.contains("\"block\":1"), "{anchored}");

    // The rewrite: a value edited, every seal dropped and made again from the edited changes
    // (by a sealer of the attacker's, without the anchor file).
    fixture
        .sql(
            "UPDATE bemi.changes_stored SET \"after\" = '{\"id\": 1, \"title\": \"forged\"}' \
              WHERE primary_key = '1'",
        )
        .await;
    fixture.sql("DELETE FROM bemi.seals").await;
    let mut config = fixture.config();
    config.seal_interval = Some(Duration::from_millis(20));
    let worker = RunningWorker::start(config);
    fixture.sql("INSERT INTO items VALUES (4, 'item 4')").await;
    fixture.wait_for(4).await;
    wait_sealed(&fixture, 4).await;
    worker.stop().await.unwrap();

    // The seals alone are consistent again; the anchors are not, in the file or in NATS.
    assert!(verify(&fixture).await.is_intact());
    let database = fixture.database.name().to_owned();
    let rewritten = Finding::AnchorMismatch {
        database,
        block: 1,
        why: "its hash is not the anchored one: the chain was rewritten",
    };
    let report = verify_with_file(&fixture, &anchors).await;
    assert!(report.findings.contains(&rewritten), "{report:?}");
    let report = verify_anchored(&fixture, &in_nats).await;
    assert!(report.findings.contains(&rewritten), "{report:?}");

    // A damaged anchor file says which line.
    std::fs::write(&anchors, format!("{anchored}garbage\n")).unwrap();
    let report = verify_with_file(&fixture, &anchors).await;
    let lines = anchored.lines().count();
    assert!(
        report
            .findings
            .contains(&Finding::AnchorUnreadable { line: lines + 1 }),
        "{report:?}"
    );
}
