//! The SQL comment that carries a [`Context`] to the database: `<sql> /*Bemi <json> Bemi*/`.
//!
//! This is Bemi's wire format. The payload is the context as compact JSON with two extra rules
//! that make it safe inside an SQL block comment and independent of the database encoding:
//!
//! - every `/` is written as `\u002f`, so the payload contains no `/` at all. It therefore can
//!   never contain `*/` (which would close the comment early), `/*` (PostgreSQL block comments
//!   nest, so an opener would leave the comment unterminated) or ` Bemi*/`. Escaping as `\/` is
//!   not enough: `\/*` still contains `/*`;
//! - every non-ASCII character is written as a `\uXXXX` escape, so the comment is pure ASCII and
//!   survives any client/server encoding conversion.
//!
//! Both are plain JSON escapes: the payload parses back to exactly the same JSON.
//!
//! Above a size cap (1,000,000 bytes by default) the payload is replaced by a small marker
//! context, `{"_bemi":{"dropped":"context_too_large","bytes":N}}`, and a warning is logged: the
//! write still runs and the audit trail shows that context was dropped.

pub(crate) mod statement;

use std::borrow::Cow;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::comment::statement::is_write;
use crate::{Context, Error, Result};

/// Opens a bemi comment. The payload follows.
pub const COMMENT_PREFIX: &str = "/*Bemi ";
/// Closes a bemi comment. It directly follows the payload.
pub const COMMENT_SUFFIX: &str = " Bemi*/";
/// The default cap on the encoded payload, in bytes (Bemi's limit).
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1_000_000;
/// The key of the marker context that replaces an oversized context.
pub const MARKER_KEY: &str = "_bemi";

/// Encodes contexts into comments and appends them to write statements.
///
/// # Examples
///
/// ```
/// use bemi_core::{CommentEncoder, Context, decode_payload, parse_payload};
///
/// let encoder = CommentEncoder::default();
/// let context = Context::new().with("endpoint", "/todo */ DROP TABLE todo; --");
/// let sql = encoder.tag("INSERT INTO todo (task) VALUES ($1)", &context);
/// assert_eq!(
///     sql,
///     r#"INSERT INTO todo (task) VALUES ($1) /*Bemi {"endpoint":"\u002ftodo *\u002f DROP TABLE todo; --"} Bemi*/"#
/// );
/// assert_eq!(parse_payload(decode_payload(&sql).unwrap())?, context);
///
/// // Reads are never tagged.
/// assert_eq!(encoder.tag("SELECT * FROM todo", &context), "SELECT * FROM todo");
/// # Ok::<(), bemi_core::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommentEncoder {
    max_payload_bytes: usize,
}

impl Default for CommentEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl CommentEncoder {
    /// An encoder with the default cap of [`DEFAULT_MAX_PAYLOAD_BYTES`].
    pub const fn new() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// An encoder whose payloads are at most `max_payload_bytes` long; larger contexts are
    /// replaced by the marker context.
    pub const fn with_max_payload_bytes(max_payload_bytes: usize) -> Self {
        Self { max_payload_bytes }
    }

    /// The payload cap in bytes.
    pub const fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    /// The comment for `context`, or `None` for an empty context (nothing to attach).
    pub fn comment(&self, context: &Context) -> Option<Comment> {
        if context.is_empty() {
            return None;
        }
        let payload = encode_payload(&context.clone().into_value());
        let payload = if payload.len() > self.max_payload_bytes {
            tracing::warn!(
                bytes = payload.len(),
                max_bytes = self.max_payload_bytes,
                "bemi context too large: the write carries a marker instead of the context"
            );
            encode_payload(&oversized_marker(payload.len()))
        } else {
            payload
        };
        let mut text = String::with_capacity(payload.len() + 15);
        text.push(' ');
        text.push_str(COMMENT_PREFIX);
        text.push_str(&payload);
        text.push_str(COMMENT_SUFFIX);
        Some(Comment { text })
    }

    /// `sql` with the comment for `context` appended when `sql` is a write and `context` is not
    /// empty; otherwise `sql` unchanged.
    pub fn tag<'a>(&self, sql: &'a str, context: &Context) -> Cow<'a, str> {
        if !is_write(sql) {
            return Cow::Borrowed(sql);
        }
        match self.comment(context) {
            Some(comment) => Cow::Owned(comment.append_to(sql)),
            None => Cow::Borrowed(sql),
        }
    }
}

/// The marker context that replaces a context whose payload is `bytes` long.
pub fn oversized_marker(bytes: usize) -> Value {
    json!({ MARKER_KEY: { "dropped": "context_too_large", "bytes": bytes } })
}

/// An encoded comment, ready to append to a statement: ` /*Bemi <payload> Bemi*/` (with a
/// leading space).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment {
    text: String,
}

impl Comment {
    /// The comment text, starting with a space.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The JSON payload inside the comment.
    pub fn payload(&self) -> &str {
        let start = 1 + COMMENT_PREFIX.len();
        let end = self.text.len() - COMMENT_SUFFIX.len();
        self.text.get(start..end).unwrap_or_default()
    }

    /// `sql` followed by the comment. A trailing `;` and whitespace are kept after the comment,
    /// so `INSERT ...;` becomes `INSERT ... /*Bemi ... Bemi*/;`.
    pub fn append_to(&self, sql: &str) -> String {
        let body = sql.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
        let tail = &sql[body.len()..];
        let mut tagged = String::with_capacity(sql.len() + self.text.len());
        tagged.push_str(body);
        tagged.push_str(&self.text);
        tagged.push_str(tail);
        tagged
    }
}

/// Encodes a JSON value as a comment payload: compact JSON in which `/` and every non-ASCII
/// character are `\uXXXX` escapes. The result contains no `/` and only ASCII.
pub fn encode_payload(value: &Value) -> String {
    // `to_string` on a `Value` cannot fail: keys are strings and numbers are finite.
    let json = value.to_string();
    let mut payload = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '/' => payload.push_str("\\u002f"),
            c if c.is_ascii() => payload.push(c),
            c => {
                let mut units = [0_u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(payload, "\\u{unit:04x}");
                }
            }
        }
    }
    payload
}

/// Extracts the payload of the bemi comment in a statement's text, as the database trigger
/// does: the text between the *last* `/*Bemi ` and the first ` Bemi*/` after it.
///
/// Returns `None` when the statement carries no complete bemi comment.
///
/// # Examples
///
/// ```
/// use bemi_core::decode_payload;
///
/// assert_eq!(decode_payload(r#"DELETE FROM t /*Bemi {"a":1} Bemi*/"#), Some(r#"{"a":1}"#));
/// assert_eq!(decode_payload("DELETE FROM t"), None);
/// ```
pub fn decode_payload(sql: &str) -> Option<&str> {
    let start = sql.rfind(COMMENT_PREFIX)? + COMMENT_PREFIX.len();
    let rest = &sql[start..];
    let end = rest.find(COMMENT_SUFFIX)?;
    Some(&rest[..end])
}

/// Parses a payload (from [`decode_payload`] or a `_bemi` logical message) into a context.
///
/// # Errors
///
/// [`Error::InvalidPayload`] when the payload is not JSON and [`Error::ContextNotAnObject`] when
/// it is JSON but not an object.
pub fn parse_payload(payload: &str) -> Result<Context> {
    let value: Value = serde_json::from_str(payload).map_err(Error::InvalidPayload)?;
    Context::from_value(value)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::strategies::{hostile_context, hostile_json};

    #[test]
    fn escapes_slashes_and_non_ascii() {
        let payload = encode_payload(&json!({"path": "/a/*b*/", "name": "Zoë 😀"}));
        assert_eq!(
            payload,
            r#"{"name":"Zo\u00eb \ud83d\ude00","path":"\u002fa\u002f*b*\u002f"}"#
        );
        assert!(payload.is_ascii());
        assert!(!payload.contains('/'));
    }

    #[test]
    fn comment_goes_before_a_trailing_semicolon() {
        let comment = CommentEncoder::new()
            .comment(&Context::new().with("a", 1))
            .unwrap();
        assert_eq!(
            comment.append_to("DELETE FROM t;\n"),
            "DELETE FROM t /*Bemi {\"a\":1} Bemi*/;\n"
        );
        assert_eq!(comment.payload(), r#"{"a":1}"#);
    }

    #[test]
    fn empty_context_and_reads_are_not_tagged() {
        let encoder = CommentEncoder::new();
        assert_eq!(
            encoder.tag("DELETE FROM t", &Context::new()),
            "DELETE FROM t"
        );
        assert!(encoder.comment(&Context::new()).is_none());
        let context = Context::new().with("a", 1);
        for read in ["SELECT 1", "SHOW wal_level", "BEGIN", "SET x = 1", "COMMIT"] {
            assert!(
                matches!(encoder.tag(read, &context), Cow::Borrowed(_)),
                "{read}"
            );
        }
    }

    #[test]
    fn oversized_context_becomes_a_marker() {
        let encoder = CommentEncoder::with_max_payload_bytes(64);
        let context = Context::new().with("blob", "x".repeat(100));
        let comment = encoder.comment(&context).unwrap();
        let parsed = parse_payload(comment.payload()).unwrap();
        assert_eq!(
            parsed.into_value(),
            json!({"_bemi": {"dropped": "context_too_large", "bytes": 111}})
        );
        // Exactly at the cap is kept.
        let exact = Context::new().with("b", "x".repeat(64 - 8));
        assert_eq!(encode_payload(&exact.clone().into_value()).len(), 64);
        assert_eq!(
            parse_payload(encoder.comment(&exact).unwrap().payload()).unwrap(),
            exact
        );
    }

    #[test]
    fn decoder_takes_the_last_comment_and_rejects_incomplete_ones() {
        let sql = r#"INSERT INTO t VALUES ('/*Bemi {"fake":1} Bemi*/') /*Bemi {"real":1} Bemi*/"#;
        assert_eq!(decode_payload(sql), Some(r#"{"real":1}"#));
        assert_eq!(decode_payload("UPDATE t SET a = 1 /*Bemi {}"), None);
        assert_eq!(decode_payload("/*Bemi  Bemi*/"), Some(""));
    }

    #[test]
    fn parse_errors_are_typed() {
        assert!(matches!(parse_payload("{"), Err(Error::InvalidPayload(_))));
        assert!(matches!(
            parse_payload("[1]"),
            Err(Error::ContextNotAnObject { found: "array" })
        ));
    }

    proptest! {
        #[test]
        fn payload_has_no_slash_and_round_trips(value in hostile_json()) {
            let payload = encode_payload(&value);
            prop_assert!(!payload.contains('/'));
            prop_assert!(payload.is_ascii());
            let parsed: Value = serde_json::from_str(&payload).unwrap();
            prop_assert_eq!(parsed, value);
        }

        #[test]
        fn the_comment_is_the_only_comment_and_decodes_back(context in hostile_context()) {
            let sql = "UPDATE todo SET done = true WHERE id = $1";
            let tagged = CommentEncoder::new().tag(sql, &context).into_owned();
            prop_assert!(tagged.starts_with(sql));
            let comment = &tagged[sql.len()..];
            prop_assert!(comment.starts_with(" /*Bemi "));
            prop_assert!(comment.ends_with(" Bemi*/"));
            // Exactly one opener and one closer: the comment cannot be closed early or nested.
            prop_assert_eq!(tagged.matches("/*").count(), 1);
            prop_assert_eq!(tagged.matches("*/").count(), 1);
            prop_assert_eq!(parse_payload(decode_payload(&tagged).unwrap()).unwrap(), context);
        }
    }
}
