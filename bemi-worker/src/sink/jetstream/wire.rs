//! A change as a message between `capture` and `ingest`: one JSON object per change, with the
//! row images and context embedded as JSON (not as strings), so the stream is readable with
//! any NATS client.
//!
//! ```json
//! {"v":1,"id":"…","primary_key":"1","before":{},"after":{"id":1},"context":{"user_id":7},
//!  "database":"app","schema":"public","table":"todo","operation":"CREATE",
//!  "committed_at":"2026-11-29T05:00:00.000001Z","queued_at":"…","transaction_id":750,
//!  "position":23456,"commit_lsn":23500,"sequence":0,"previous_primary_key":null}
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use bemi_core::Operation;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::change_row::ChangeRow;

/// The version of the message format; a reader refuses others.
const VERSION: u32 = 1;

/// Why a message is not a change.
#[derive(Debug, thiserror::Error)]
#[error("not a bemi change message: {0}")]
pub(crate) struct WireError(String);

#[derive(Deserialize)]
struct Message<'a> {
    v: u32,
    id: Uuid,
    #[serde(borrow)]
    primary_key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    before: &'a RawValue,
    #[serde(borrow)]
    after: &'a RawValue,
    #[serde(borrow)]
    context: &'a RawValue,
    #[serde(borrow)]
    database: Cow<'a, str>,
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    table: Cow<'a, str>,
    operation: Operation,
    committed_at: DateTime<Utc>,
    queued_at: DateTime<Utc>,
    transaction_id: i64,
    position: i64,
    commit_lsn: i64,
    sequence: i32,
    #[serde(borrow)]
    previous_primary_key: Option<Cow<'a, str>>,
    /// Present only for an UPDATE stored compactly (see [`ChangeRow::after_changed`]).
    #[serde(default, borrow)]
    after_changed: Option<&'a RawValue>,
    /// Present only for a change to park in `bemi.rejected` (see [`ChangeRow::rejected`]).
    #[serde(default, borrow)]
    rejected: Option<Cow<'a, str>>,
    /// Present only for a change with personal values (see [`ChangeRow::personal`]): the
    /// `personal` column's list.
    #[serde(default, borrow)]
    personal: Option<&'a RawValue>,
}

/// The message for `row`, written directly: its row images and context are JSON the worker
/// built, embedded as they are (no re-parsing on the capture path).
pub(crate) fn encode(row: &ChangeRow) -> Vec<u8> {
    let mut out = String::with_capacity(
        row.before.len() + row.after.len() + row.context.len() + row.table.len() + 400,
    );
    let mut numbers = itoa::Buffer::new();
    let mut uuid = Uuid::encode_buffer();
    out.push_str("{\"v\":");
    out.push_str(numbers.format(VERSION));
    out.push_str(",\"id\":\"");
    out.push_str(row.id.hyphenated().encode_lower(&mut uuid));
    out.push_str("\",\"primary_key\":");
    push_optional_string(&mut out, row.primary_key.as_deref());
    for (name, json) in [
        ("before", row.before.as_str()),
        ("after", row.after.as_str()),
        ("context", &row.context),
    ] {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        out.push_str(json);
    }
    for (name, text) in [
        ("database", &row.database),
        ("schema", &row.schema),
        ("table", &row.table),
    ] {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        crate::stitch::json::push_string(&mut out, text);
    }
    out.push_str(",\"operation\":\"");
    out.push_str(row.operation.as_str());
    out.push('"');
    for (name, time) in [
        ("committed_at", row.committed_at),
        ("queued_at", row.queued_at),
    ] {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":\"");
        out.push_str(&time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
        out.push('"');
    }
    for (name, number) in [
        ("transaction_id", row.transaction_id),
        ("position", row.position),
        ("commit_lsn", row.commit_lsn),
        ("sequence", i64::from(row.sequence)),
    ] {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        out.push_str(numbers.format(number));
    }
    out.push_str(",\"previous_primary_key\":");
    push_optional_string(&mut out, row.previous_primary_key.as_deref());
    if let Some(changed) = &row.after_changed {
        out.push_str(",\"after_changed\":");
        out.push_str(changed);
    }
    if let Some(reason) = &row.rejected {
        out.push_str(",\"rejected\":");
        crate::stitch::json::push_string(&mut out, reason);
    }
    if let Some(personal) = crate::erasure::personal::to_stored(&row.personal) {
        out.push_str(",\"personal\":");
        out.push_str(&personal);
    }
    out.push('}');
    out.into_bytes()
}

fn push_optional_string(out: &mut String, text: Option<&str>) {
    match text {
        Some(text) => crate::stitch::json::push_string(out, text),
        None => out.push_str("null"),
    }
}

/// The change in a message.
pub(crate) fn decode(payload: &[u8]) -> Result<ChangeRow, WireError> {
    let message: Message<'_> =
        serde_json::from_slice(payload).map_err(|error| WireError(error.to_string()))?;
    if message.v != VERSION {
        return Err(WireError(format!(
            "message format version {} (this worker reads {VERSION})",
            message.v
        )));
    }
    let personal = match message.personal {
        Some(list) => crate::erasure::personal::from_stored(list.get())
            .ok_or_else(|| WireError("a personal list that is not one".to_owned()))?,
        None => Vec::new(),
    };
    Ok(ChangeRow {
        id: message.id,
        primary_key: message.primary_key.map(Cow::into_owned),
        before: message.before.get().to_owned(),
        after: message.after.get().to_owned(),
        after_changed: message
            .after_changed
            .map(|changed| changed.get().to_owned()),
        context: Arc::from(message.context.get()),
        database: Arc::from(message.database.as_ref()),
        schema: Arc::from(message.schema.as_ref()),
        table: Arc::from(message.table.as_ref()),
        operation: message.operation,
        committed_at: message.committed_at,
        queued_at: message.queued_at,
        transaction_id: message.transaction_id,
        position: message.position,
        commit_lsn: message.commit_lsn,
        sequence: message.sequence,
        previous_primary_key: message.previous_primary_key.map(Cow::into_owned),
        rejected: message.rejected.map(|reason| Arc::from(reason.as_ref())),
        personal,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn row(text: &str, key: Option<String>) -> ChangeRow {
        let json = serde_json::json!({ "name": text, "n": 12345678901234567890_u64 }).to_string();
        ChangeRow {
            id: crate::change_row::change_id(7, 1_000, 3),
            primary_key: key.clone(),
            before: "{}".to_owned(),
            after: json.clone(),
            after_changed: key.as_ref().map(|_| json.clone()),
            context: Arc::from(json.as_str()),
            database: Arc::from(text),
            schema: Arc::from("public"),
            table: Arc::from(text),
            operation: Operation::Update,
            committed_at: DateTime::from_timestamp(1_764_000_000, 123_456_000).unwrap_or_default(),
            queued_at: DateTime::from_timestamp(1_764_000_001, 0).unwrap_or_default(),
            transaction_id: 750,
            position: 23_456,
            commit_lsn: 23_500,
            sequence: 3,
            previous_primary_key: key,
            rejected: None,
            personal: Vec::new(),
        }
    }

    proptest! {
        #[test]
        fn changes_round_trip(
            text in "(?s).{0,40}",
            key in proptest::option::of("(?s).{0,20}"),
            rejected in proptest::option::of("(?s).{0,20}"),
            personal in proptest::option::of("(?s).{0,20}"),
        ) {
            let mut row = row(&text, key);
            row.rejected = rejected.map(|reason| Arc::from(reason.as_str()));
            if let Some(column) = personal {
                row.personal = vec![
                    crate::erasure::PersonalValue::fresh(crate::erasure::Place::After, &column),
                    crate::erasure::PersonalValue { place: crate::erasure::Place::Context, key: column, salt: None },
                ];
            }
            let payload = encode(&row);
            let decoded = decode(&payload).map_err(|error| TestCaseError::fail(error.to_string()))?;
            prop_assert_eq!(decoded, row);
        }

        #[test]
        fn arbitrary_payloads_are_refused_not_panicked_on(payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&payload);
        }
    }

    #[test]
    fn other_versions_and_garbage_are_refused_with_a_reason() {
        let payload = encode(&row("t", None));
        let text = String::from_utf8(payload).unwrap_or_default();
        let future = text.replacen("\"v\":1", "\"v\":2", 1);
        let error = decode(future.as_bytes())
            .err()
            .map(|error| error.to_string());
        assert_eq!(
            error.as_deref(),
            Some("not a bemi change message: message format version 2 (this worker reads 1)")
        );
        assert!(decode(b"hello").is_err());
        assert!(decode(b"{\"v\":1}").is_err());
    }
}
