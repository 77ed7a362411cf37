//! DDL events: a row of `bemi.schema_versions` recorded by bemi's event triggers becomes an
//! `Operation::Ddl` change of the table, with the shapes before and after and the context of
//! the statement that made it.

use std::sync::Arc;

use bemi_core::Operation;
use serde_json::{Map, Value};

use crate::change_row::ChangeRow;
use crate::source::recorded_shape::{RecordedShape, shape_image};

/// Commands recorded by setup and slot creation, not by DDL: no event.
const NOT_DDL: [&str; 2] = ["track", "slot created"];

/// The DDL change of `version` (a `bemi.schema_versions` row, stored as `row`), given the shape
/// recorded before it for the same table; `None` for shapes setup recorded. It keeps `row`'s id
/// and sequence: the caller numbers it as the next change (`Stitcher::next_derived`).
pub(crate) fn ddl_change(
    row: &ChangeRow,
    version: &Value,
    previous: Option<&RecordedShape>,
) -> Option<ChangeRow> {
    let command = version.get("command")?.as_str()?;
    if NOT_DDL.contains(&command) {
        return None;
    }
    let created = command.starts_with("CREATE") || command == "SELECT INTO";
    let before = match previous {
        Some(shape) if !created => shape.image.clone(),
        _ => "{}".to_owned(),
    };
    let dropped = version.get("dropped") == Some(&Value::Bool(true));
    let mut after = if dropped {
        Map::new()
    } else {
        shape_image(version)
    };
    after.insert("command".to_owned(), Value::from(command));
    if let Some(statement) = version.get("statement").filter(|value| value.is_string()) {
        after.insert("statement".to_owned(), statement.clone());
    }
    let name = |key: &str| -> Option<Arc<str>> { Some(Arc::from(version.get(key)?.as_str()?)) };
    Some(ChangeRow {
        operation: Operation::Ddl,
        primary_key: None,
        previous_primary_key: None,
        schema: name("schema_name")?,
        table: name("table_name")?,
        before,
        after: Value::Object(after).to_string(),
        ..row.clone()
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn version_row(after: &Value) -> ChangeRow {
        let at = chrono::Utc::now();
        ChangeRow {
            id: uuid::Uuid::nil(),
            primary_key: Some("1".into()),
            before: "{}".into(),
            after: after.to_string(),
            after_changed: None,
            context: Arc::from(r#"{"job":"migrate"}"#),
            database: Arc::from("app"),
            schema: Arc::from("bemi"),
            table: Arc::from("schema_versions"),
            operation: Operation::Create,
            committed_at: at,
            queued_at: at,
            transaction_id: 1,
            position: 1,
            commit_lsn: 1,
            sequence: 0,
            previous_primary_key: None,
            rejected: None,
            personal: Vec::new(),
        }
    }

    #[test]
    fn versions_recorded_by_ddl_become_ddl_changes_with_both_shapes() {
        let old = json!({"relid": 7, "schema_name": "public", "table_name": "todo", "key": ["id"],
            "columns": [{"name": "id", "type": "integer", "kind": "23"}], "command": "track"});
        let new = json!({"relid": 7, "schema_name": "public", "table_name": "todo", "key": ["id"],
            "columns": [{"name": "id", "type": "integer", "kind": "23"},
                        {"name": "due", "type": "date", "kind": "1082"}],
            "command": "ALTER TABLE", "statement": "ALTER TABLE todo ADD COLUMN due date",
            "replica_identity": "full", "partition_root": false});
        assert_eq!(ddl_change(&version_row(&old), &old, None), None);
        let (_, previous) = RecordedShape::from_version(&old).unwrap();
        let change = ddl_change(&version_row(&new), &new, Some(&previous)).unwrap();
        assert_eq!(change.operation, Operation::Ddl);
        assert_eq!((&*change.schema, &*change.table), ("public", "todo"));
        assert_eq!(change.primary_key, None);
        assert_eq!(&*change.context, r#"{"job":"migrate"}"#);
        let before: Value = serde_json::from_str(&change.before).unwrap();
        let after: Value = serde_json::from_str(&change.after).unwrap();
        assert_eq!(before["columns"].as_array().unwrap().len(), 1);
        assert_eq!(after["columns"].as_array().unwrap().len(), 2);
        assert_eq!(after["command"], "ALTER TABLE");
        assert_eq!(after["statement"], "ALTER TABLE todo ADD COLUMN due date");
        assert!(before.get("relid").is_none() && after.get("relid").is_none());

        let drop = json!({"relid": 7, "schema_name": "public", "table_name": "todo",
            "command": "DROP TABLE", "dropped": true, "statement": null});
        let change = ddl_change(&version_row(&drop), &drop, Some(&previous)).unwrap();
        assert_eq!(change.after, r#"{"command":"DROP TABLE"}"#);
        assert_ne!(change.before, "{}");
    }
}
