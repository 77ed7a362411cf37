//! Typed history and time travel of a model of today's table across ADD, DROP and RENAME
//! COLUMN (what each kind of field shows is documented on `#[derive(Audited)]`).

use bemi::diesel::{AuditedQueries, PgConnection};
use bemi_testing::audited_database;
use diesel::Connection;

/// `notes` as it is after the migrations below.
#[derive(Debug, PartialEq, bemi::Audited)]
#[bemi(table = "notes")]
struct Note {
    id: i32,
    #[bemi(renamed_from = "body")]
    text_body: String,
    tag: Option<String>,
}

/// The same table, without saying the column was renamed.
#[derive(Debug, PartialEq, bemi::Audited)]
#[bemi(table = "notes")]
struct NoteWithoutAlias {
    id: i32,
    text_body: Option<String>,
}

fn note(text_body: &str, tag: Option<&str>) -> Note {
    Note {
        id: 1,
        text_body: text_body.to_owned(),
        tag: tag.map(str::to_owned),
    }
}

#[test]
fn a_model_of_todays_table_reads_history_across_add_drop_and_rename_column() {
    let db = audited_database!(
        "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, obsolete int);"
    );
    let mut conn = PgConnection::establish(&db.url()).unwrap();
    db.sql("INSERT INTO notes VALUES (1, 'first', 7)");
    db.sql("ALTER TABLE notes RENAME COLUMN body TO text_body");
    db.sql("UPDATE notes SET text_body = 'second' WHERE id = 1");
    db.sql("ALTER TABLE notes DROP COLUMN obsolete");
    db.sql("ALTER TABLE notes ADD COLUMN tag text");
    db.sql("UPDATE notes SET tag = 'x' WHERE id = 1");
    db.wait_for(3);

    let history = Note::history(&mut conn, 1).unwrap();
    let afters: Vec<&Note> = history
        .iter()
        .map(|change| change.after.as_ref().unwrap())
        .collect();
    assert_eq!(
        afters,
        [
            &note("first", None),
            &note("second", None),
            &note("second", Some("x"))
        ]
    );
    assert_eq!(history[1].before, Some(note("first", None)));
    // The column dropped since is still in the images (and in the untyped diff).
    assert_eq!(
        history[0].change.after.value("obsolete"),
        Some(serde_json::json!(7))
    );
    let first = history[0].change.committed_at;
    assert_eq!(
        Note::as_of(&mut conn, 1, first).unwrap(),
        Some(note("first", None))
    );

    // The table's changes, DDL included: the DDL changes are typed without rows.
    let all = Note::changes(&mut conn, bemi::ChangeQuery::new()).unwrap();
    let operations: Vec<(bemi::Operation, bool)> = all
        .iter()
        .map(|change| (change.change.operation, change.after.is_some()))
        .collect();
    use bemi::Operation::{Create, Ddl, Update};
    assert_eq!(
        operations,
        [
            (Create, true),
            (Ddl, false),
            (Update, true),
            (Ddl, false),
            (Ddl, false),
            (Update, true)
        ]
    );
    assert_eq!(
        all[1].change.after.value("command"),
        Some(serde_json::json!("ALTER TABLE"))
    );

    let without_alias = NoteWithoutAlias::history(&mut conn, 1).unwrap();
    assert_eq!(
        without_alias[0].after,
        Some(NoteWithoutAlias {
            id: 1,
            text_body: None
        })
    );
}
