//! [`RecordedShape`]: a table's shape as `bemi.schema_versions` recorded it in the stream: the
//! key and how each column's values become JSON, as of the position being read.

use std::collections::HashMap;

use serde_json::Value;

use crate::stitch::values::ValueKind;

/// A recorded table shape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RecordedShape {
    /// The key columns, in key order (empty: no key recorded).
    pub(crate) key: Vec<String>,
    /// Each column's value kind, by name.
    pub(crate) kinds: HashMap<String, ValueKind>,
    /// The partitioned table the table was a partition of (schema, name), `Some(None)` when it
    /// was none, `None` when the version does not say (recorded by an older setup).
    pub(crate) partition_root: Option<Option<(String, String)>>,
    /// The shape as a JSON object (see [`shape_image`]): the `before` of the next DDL change.
    pub(crate) image: String,
}

/// The fields of a `bemi.schema_versions` row that describe the table's shape, as the image of
/// a DDL change.
pub(crate) fn shape_image(version: &Value) -> serde_json::Map<String, Value> {
    [
        "schema_name",
        "table_name",
        "columns",
        "key",
        "replica_identity",
        "partition_root",
    ]
    .into_iter()
    .filter_map(|field| Some((field.to_owned(), version.get(field)?.clone())))
    .collect()
}

impl RecordedShape {
    /// Reads a `bemi.schema_versions` row (as JSON): its relation and shape, or `None` when it
    /// is not one or records a drop (changes before a drop keep the shape recorded before it).
    pub(crate) fn from_version(version: &Value) -> Option<(u32, RecordedShape)> {
        let relid = relid_of(version)?;
        if version.get("dropped") == Some(&Value::Bool(true)) {
            return None;
        }
        let key = version
            .get("key")
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(|name| name.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let kinds = version
            .get("columns")
            .and_then(Value::as_array)
            .map(|columns| {
                columns
                    .iter()
                    .filter_map(|column| {
                        let name = column.get("name")?.as_str()?;
                        let kind = parse_kind(column.get("kind")?.as_str()?)?;
                        Some((name.to_owned(), kind))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let partition_root = match version.get("partition_root") {
            Some(Value::Bool(false)) => Some(None),
            Some(root @ Value::Object(_)) => Some(Some((
                root.get("schema")?.as_str()?.to_owned(),
                root.get("table")?.as_str()?.to_owned(),
            ))),
            _ => None,
        };
        Some((
            relid,
            RecordedShape {
                key,
                kinds,
                partition_root,
                image: Value::Object(shape_image(version)).to_string(),
            },
        ))
    }
}

/// The relation a `bemi.schema_versions` row is about: a number as the worker renders an
/// `oid`, a string as `row_to_json` does.
pub(crate) fn relid_of(version: &Value) -> Option<u32> {
    match version.get("relid")? {
        Value::Number(number) => u32::try_from(number.as_u64()?).ok(),
        Value::String(text) => text.parse().ok(),
        _ => None,
    }
}

/// Parses a kind as `bemi.value_kind` spells it: a type OID, or `[` + the array delimiter +
/// the element's kind.
fn parse_kind(spec: &str) -> Option<ValueKind> {
    match spec.as_bytes() {
        [b'[', delimiter, ..] if delimiter.is_ascii() => Some(ValueKind::Array {
            element: Box::new(parse_kind(&spec[2..])?),
            delimiter: *delimiter,
        }),
        _ => {
            let type_id: u32 = spec.parse().ok()?;
            Some(ValueKind::builtin(type_id).unwrap_or(ValueKind::Text))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn versions_give_keys_and_kinds() {
        let (relid, shape) = RecordedShape::from_version(&json!({
            "relid": 16384,
            "key": ["id"],
            "columns": [
                {"name": "id", "type": "integer", "kind": "23"},
                {"name": "price", "type": "money_domain", "kind": "1700"},
                {"name": "moods", "type": "mood[]", "kind": "[,16390"},
                {"name": "boxes", "type": "box[]", "kind": "[;603"},
                {"name": "old", "type": "text"}
            ]
        }))
        .unwrap();
        assert_eq!(relid, 16384);
        assert_eq!(shape.key, ["id"]);
        assert_eq!(shape.kinds["price"], ValueKind::Numeric);
        assert_eq!(
            shape.kinds["moods"],
            ValueKind::Array {
                element: Box::new(ValueKind::Text),
                delimiter: b','
            }
        );
        assert_eq!(
            shape.kinds["boxes"],
            ValueKind::Array {
                element: Box::new(ValueKind::Text),
                delimiter: b';'
            }
        );
        assert!(!shape.kinds.contains_key("old"));
        assert_eq!(shape.partition_root, None);
        let partition = |root: Value| {
            RecordedShape::from_version(&json!({"relid": 2, "partition_root": root}))
                .unwrap()
                .1
                .partition_root
        };
        assert_eq!(partition(json!(false)), Some(None));
        assert_eq!(
            partition(json!({"schema": "public", "table": "users"})),
            Some(Some(("public".to_owned(), "users".to_owned())))
        );
        assert!(RecordedShape::from_version(&json!({"relid": 1, "dropped": true})).is_none());
        assert_eq!(
            RecordedShape::from_version(&json!({"relid": "16384"})).map(|(relid, _)| relid),
            Some(16384)
        );
        assert_eq!(parse_kind("[é"), None);
    }
}
