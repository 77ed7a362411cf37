//! `proptest` strategies for hostile contexts, shared by the tests of every bemi crate
//! (feature `proptest`).

use proptest::prelude::*;
use serde_json::Value;

use crate::Context;

/// Strings built from fragments that matter to SQL and to comments (`*/`, `/*`, ` Bemi*/`,
/// quotes, backslashes, `--`, `$1`, `$$`, newlines, NUL, `;`) mixed with arbitrary Unicode.
pub fn hostile_string() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("*/".to_owned()),
            Just("/*".to_owned()),
            Just(" Bemi*/".to_owned()),
            Just("/*Bemi ".to_owned()),
            Just("'".to_owned()),
            Just("\"".to_owned()),
            Just("\\".to_owned()),
            Just("--".to_owned()),
            Just("$1".to_owned()),
            Just("$$".to_owned()),
            Just("\n".to_owned()),
            Just("\0".to_owned()),
            Just(";".to_owned()),
            Just("\\/".to_owned()),
            any::<String>(),
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

/// Arbitrary JSON (nested up to 4 levels) whose strings and keys are [`hostile_string`]s.
pub fn hostile_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        hostile_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(hostile_string(), inner, 0..8)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Non-empty contexts with hostile keys and values.
pub fn hostile_context() -> impl Strategy<Value = Context> {
    prop::collection::btree_map(hostile_string(), hostile_json(), 1..6)
        .prop_map(|map| map.into_iter().collect())
}
