//! Turning the content of a `_bemi` message into the `context` stored with each change.
//!
//! Bad context is data, not an error: the change is stored anyway, and `context` holds a marker
//! under the reserved key `_bemi` saying what was wrong and what could be kept:
//!
//! | content | stored `context` |
//! | --- | --- |
//! | a JSON object | the object |
//! | an object with `\u0000` in a key or string | the object with U+FFFD instead, plus `"_bemi": {"replaced_nul": ["context"]}` |
//! | not UTF-8, not JSON, or nested deeper than 128 levels | `{"_bemi": {"invalid_context": "<why>", "raw": "<up to 10,000 characters of it>"}}` |
//! | JSON but not an object | `{"_bemi": {"invalid_context": "not a JSON object", "raw": "<its text, up to 10,000 characters>"}}` |
//! | longer than the cap (default 1 MiB) | `{"_bemi": {"dropped": "context_too_large", "bytes": N}}` |
//!
//! Each case is logged as a warning.

use std::sync::Arc;

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use bemi_core::MARKER_KEY;

/// The default cap on a context payload the worker stores, in bytes.
pub const DEFAULT_MAX_CONTEXT_BYTES: usize = 1 << 20;
/// The deepest nesting of a context stored as it is (serde_json's own limit).
const MAX_DEPTH: usize = 128;
/// How much of an invalid payload is kept in the marker, in characters.
const RAW_KEPT_CHARS: usize = 10_000;

/// The JSON text of an empty context.
pub(crate) fn empty() -> Arc<str> {
    Arc::from("{}")
}

/// The storable JSON object text for a `_bemi` message's content.
pub(crate) fn from_payload(content: &[u8], max_bytes: usize) -> Arc<str> {
    if content.len() > max_bytes {
        tracing::warn!(
            bytes = content.len(),
            max_bytes,
            "context too large: stored a marker instead"
        );
        return Arc::from(bemi_core::oversized_marker(content.len()).to_string());
    }
    let text = match std::str::from_utf8(content) {
        Ok(text) => text,
        Err(error) => {
            return invalid(
                &format!("not UTF-8: {error}"),
                &String::from_utf8_lossy(content),
            );
        }
    };
    // Checked without building numbers (which serde_json would round through f64): the text
    // is stored as it came, every digit kept.
    let raw = match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => raw,
        Err(error) => return invalid(&format!("not JSON: {error}"), text),
    };
    if !raw.get().starts_with('{') {
        return invalid("not a JSON object", text);
    }
    if crate::stitch::json::nesting_exceeds(raw.get(), MAX_DEPTH) {
        return invalid(
            &format!("nested deeper than {MAX_DEPTH} levels (recursion limit exceeded)"),
            text,
        );
    }
    match crate::stitch::json::replace_nul_escapes(raw.get()) {
        None => Arc::from(raw.get()),
        Some(replaced) => {
            tracing::warn!(
                "context contained \\u0000, which jsonb cannot store: replaced by U+FFFD"
            );
            let mut notes = Map::new();
            notes.insert("replaced_nul".into(), json!(["context"]));
            with_notes(&replaced, notes)
        }
    }
}

/// `context` (JSON object text) with `notes` merged under `_bemi`. The other members are kept
/// as raw text: no number is rounded.
pub(crate) fn with_notes(context: &str, notes: Map<String, Value>) -> Arc<str> {
    let mut object: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(context).unwrap_or_default();
    let mut marker = Map::new();
    if let Some(existing) = object.remove(MARKER_KEY) {
        marker.insert(
            MARKER_KEY.to_owned(),
            serde_json::from_str(existing.get()).unwrap_or(Value::Null),
        );
    }
    for (key, value) in notes {
        add_note(&mut marker, &key, value);
    }
    if let Some(Ok(raw)) = marker
        .remove(MARKER_KEY)
        .map(|value| RawValue::from_string(value.to_string()))
    {
        object.insert(MARKER_KEY.to_owned(), raw);
    }
    Arc::from(serde_json::to_string(&object).unwrap_or_else(|_| "{}".to_owned()))
}

fn invalid(reason: &str, raw: &str) -> Arc<str> {
    tracing::warn!(
        reason,
        "malformed context: stored a marker with what could be kept"
    );
    let kept: String = raw
        .chars()
        .take(RAW_KEPT_CHARS)
        .collect::<String>()
        .replace('\0', "\u{fffd}");
    Arc::from(json!({ MARKER_KEY: { "invalid_context": reason, "raw": kept } }).to_string())
}

/// Adds `key: value` to the object under `_bemi` (creating it; a non-object `_bemi` the
/// application set is kept under `_bemi.original`).
fn add_note(object: &mut Map<String, Value>, key: &str, value: Value) {
    let marker = object
        .entry(MARKER_KEY)
        .or_insert_with(|| Value::Object(Map::new()));
    if !marker.is_object() {
        let original = marker.take();
        *marker = json!({ "original": original });
    }
    if let Value::Object(marker) = marker {
        marker.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(content: &[u8]) -> Value {
        serde_json::from_str(&from_payload(content, DEFAULT_MAX_CONTEXT_BYTES)).unwrap()
    }

    #[test]
    fn objects_are_kept() {
        assert_eq!(
            parsed(br#"{"user_id":7,"path":"\u002ftodo"}"#),
            json!({"user_id": 7, "path": "/todo"})
        );
    }

    #[test]
    fn malformed_payloads_become_markers() {
        assert_eq!(
            parsed(b"{not json"),
            json!({"_bemi": {"invalid_context": "not JSON: key must be a string at line 1 column 2", "raw": "{not json"}})
        );
        assert_eq!(
            parsed(b"[1,2]"),
            json!({"_bemi": {"invalid_context": "not a JSON object", "raw": "[1,2]"}})
        );
        let marker = parsed(b"\xff\xfe{}");
        assert!(
            marker["_bemi"]["invalid_context"]
                .as_str()
                .unwrap()
                .starts_with("not UTF-8")
        );
        let long = format!("x{}", "y".repeat(20_000));
        let marker = parsed(long.as_bytes());
        assert_eq!(
            marker["_bemi"]["raw"].as_str().unwrap().chars().count(),
            10_000
        );
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let marker = parsed(deep.as_bytes());
        assert!(
            marker["_bemi"]["invalid_context"]
                .as_str()
                .unwrap()
                .contains("recursion limit")
        );
    }

    #[test]
    fn nul_is_replaced_and_noted() {
        assert_eq!(
            parsed(br#"{"a\u0000":"b\u0000","n":[{"c":"\u0000"}]}"#),
            json!({"a\u{fffd}": "b\u{fffd}", "n": [{"c": "\u{fffd}"}], "_bemi": {"replaced_nul": ["context"]}})
        );
    }

    #[test]
    fn oversized_payloads_are_dropped_with_their_size() {
        let context = from_payload(&[b' '; 100], 10);
        assert_eq!(
            serde_json::from_str::<Value>(&context).unwrap(),
            json!({"_bemi": {"dropped": "context_too_large", "bytes": 100}})
        );
    }

    #[test]
    fn notes_merge_under_the_marker_key() {
        let mut notes = Map::new();
        notes.insert("unavailable".into(), json!(["after.doc"]));
        let merged = with_notes(r#"{"user":1,"_bemi":"mine"}"#, notes);
        assert_eq!(
            serde_json::from_str::<Value>(&merged).unwrap(),
            json!({"user": 1, "_bemi": {"original": "mine", "unavailable": ["after.doc"]}})
        );
    }
}
