//! Structural differences between two JSON documents: which paths changed, were added or were
//! removed, for a `jsonb` field (or a table's shape) whose whole value would be unreadable as
//! one before / after pair.

use serde_json::Value;

/// At most this many differences are listed for one field: the rest is counted.
pub(crate) const MOST_LISTED: usize = 200;

/// One path whose value differs: absent on one side when added or removed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PathDifference {
    /// `.key`, `[index]` steps from the field (`.a.b[2]`); keys that are not plain words are
    /// quoted (`."two words"`).
    pub(crate) path: String,
    pub(crate) before: Option<Value>,
    pub(crate) after: Option<Value>,
}

/// The differences between `before` and `after`, depth first, keys in order; `None` when
/// neither is a container (a plain value is diffed as a whole). Arrays are compared index by
/// index.
pub(crate) fn differences(before: &Value, after: &Value) -> Option<Vec<PathDifference>> {
    if !is_container(before) && !is_container(after) {
        return None;
    }
    let mut found = Vec::new();
    walk(String::new(), before, after, &mut found);
    Some(found)
}

fn is_container(value: &Value) -> bool {
    matches!(value, Value::Object(_) | Value::Array(_))
}

fn walk(path: String, before: &Value, after: &Value, found: &mut Vec<PathDifference>) {
    match (before, after) {
        (Value::Object(old), Value::Object(new)) => {
            let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                let step = format!("{path}.{}", key_step(key));
                match (old.get(key), new.get(key)) {
                    (Some(old), Some(new)) => walk(step, old, new, found),
                    (old, new) => found.push(PathDifference {
                        path: step,
                        before: old.cloned(),
                        after: new.cloned(),
                    }),
                }
            }
        }
        (Value::Array(old), Value::Array(new)) => {
            for index in 0..old.len().max(new.len()) {
                let step = format!("{path}[{index}]");
                match (old.get(index), new.get(index)) {
                    (Some(old), Some(new)) => walk(step, old, new, found),
                    (old, new) => found.push(PathDifference {
                        path: step,
                        before: old.cloned(),
                        after: new.cloned(),
                    }),
                }
            }
        }
        (old, new) if old != new => found.push(PathDifference {
            path: if path.is_empty() {
                "(whole)".to_owned()
            } else {
                path
            },
            before: Some(old.clone()),
            after: Some(new.clone()),
        }),
        _ => {}
    }
}

/// A key as a path step: plain words as they are, anything else quoted as JSON.
fn key_step(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || character == '_');
    if plain {
        key.to_owned()
    } else {
        Value::from(key).to_string()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn paths(before: &Value, after: &Value) -> Vec<(String, Option<Value>, Option<Value>)> {
        differences(before, after)
            .unwrap_or_default()
            .into_iter()
            .map(|found| (found.path, found.before, found.after))
            .collect()
    }

    #[test]
    fn nested_changes_additions_and_removals_are_named_by_path() {
        let before = json!({"a": {"b": 1, "gone": true}, "tags": ["x"], "same": [1, {"k": 2}]});
        let after =
            json!({"a": {"b": 2}, "tags": ["x", "y"], "same": [1, {"k": 2}], "two words": null});
        assert_eq!(
            paths(&before, &after),
            vec![
                (".a.b".to_owned(), Some(json!(1)), Some(json!(2))),
                (".a.gone".to_owned(), Some(json!(true)), None),
                (".tags[1]".to_owned(), None, Some(json!("y"))),
                (".\"two words\"".to_owned(), None, Some(Value::Null)),
            ]
        );
    }

    #[test]
    fn plain_values_and_changed_kinds() {
        assert_eq!(differences(&json!(1), &json!(2)), None);
        assert_eq!(
            paths(&json!({"a": 1}), &json!([1])),
            vec![(
                "(whole)".to_owned(),
                Some(json!({"a": 1})),
                Some(json!([1]))
            )]
        );
        assert_eq!(paths(&json!({"a": [1]}), &json!({"a": [1]})), vec![]);
    }

    fn document() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-5_i64..5).prop_map(Value::from),
            "[a-c ]{0,3}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map("[a-c]{1,2}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Applies the differences to `before` (at the paths they name): the result is `after`.
    fn apply(before: &Value, found: &[PathDifference], after: &Value) -> bool {
        // Every listed path holds its `after` value in `after` and its `before` value in
        // `before`; equal documents list nothing.
        found.iter().all(|difference| {
            difference.path == "(whole)"
                || (lookup(before, &difference.path) == difference.before.as_ref()
                    && lookup(after, &difference.path) == difference.after.as_ref())
        }) && (before != after || found.is_empty())
    }

    /// The value at a path of `.key` and `[index]` steps (keys of the generator: plain).
    fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
        let mut current = value;
        let mut rest = path;
        while !rest.is_empty() {
            if let Some(after_dot) = rest.strip_prefix('.') {
                let end = after_dot.find(['.', '[']).unwrap_or(after_dot.len());
                current = current.get(&after_dot[..end])?;
                rest = &after_dot[end..];
            } else if let Some(after_bracket) = rest.strip_prefix('[') {
                let end = after_bracket.find(']')?;
                current = current.get(after_bracket[..end].parse::<usize>().ok()?)?;
                rest = &after_bracket[end + 1..];
            } else {
                return None;
            }
        }
        Some(current)
    }

    proptest! {
        #[test]
        fn every_listed_path_holds_its_two_values(before in document(), after in document()) {
            if let Some(found) = differences(&before, &after) {
                prop_assert!(apply(&before, &found, &after), "{found:?}");
            }
        }
    }
}
