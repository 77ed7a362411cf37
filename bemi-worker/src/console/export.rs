//! `/export.csv` and `/export.ndjson`: every change the search matches (the same parameters as
//! `/`), streamed page by page, newest first.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bemi_core::{Change, ChangeCursor, ChangeQuery};
use futures_util::StreamExt as _;

use crate::console::Console;
use crate::console::layout;
use crate::console::search::Search;

/// Changes read per query while streaming.
const BATCH: u64 = 1_000;

/// The two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Csv,
    Ndjson,
}

/// The CSV columns.
const COLUMNS: [&str; 11] = [
    "id",
    "committed_at",
    "operation",
    "schema",
    "table",
    "primary_key",
    "transaction_id",
    "database",
    "context",
    "before",
    "after",
];

/// A cell as a spreadsheet may open it: text starting with `=`, `+`, `-`, `@`, a tab or a
/// carriage return is prefixed with `'`, so that no formula a user typed runs in the auditor's
/// spreadsheet.
fn cell(text: String) -> String {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text
    }
}

/// One change in `format`.
fn encode(change: &Change, format: Format, out: &mut Vec<u8>) -> Result<(), String> {
    match format {
        Format::Ndjson => {
            serde_json::to_writer(&mut *out, change).map_err(|error| error.to_string())?;
            out.push(b'\n');
        }
        Format::Csv => {
            let mut writer = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(&mut *out);
            let image = |image: &bemi_core::Image| serde_json::to_string(image).unwrap_or_default();
            writer
                .write_record([
                    change.id.to_string(),
                    change.committed_at.to_rfc3339(),
                    change.operation.as_str().to_owned(),
                    cell(change.schema.clone()),
                    cell(change.table.clone()),
                    cell(change.primary_key.clone().unwrap_or_default()),
                    change.transaction_id.to_string(),
                    cell(change.database.clone()),
                    cell(change.context.to_string()),
                    cell(image(&change.before)),
                    cell(image(&change.after)),
                ])
                .map_err(|error| error.to_string())?;
            writer.flush().map_err(|error| error.to_string())?;
        }
    }
    Ok(())
}

/// What the stream carries between pages.
struct Pages {
    console: Arc<Console>,
    query: ChangeQuery,
    cursor: Option<ChangeCursor>,
    format: Format,
    done: bool,
}

/// The next page, encoded; `None` after the last.
async fn next_page(mut pages: Pages) -> Option<(Result<Bytes, std::io::Error>, Pages)> {
    if pages.done {
        return None;
    }
    let mut query = pages.query.clone();
    if let Some(cursor) = pages.cursor {
        query = query.after_cursor(cursor);
    }
    let changes = match pages.console.fetch(&query).await {
        Ok(changes) => changes,
        Err(message) => {
            // The response has begun: end it broken, so that a partial file is not taken for
            // a whole one.
            tracing::warn!(error = %message, "the console's export stopped");
            pages.done = true;
            return Some((Err(std::io::Error::other("the export stopped")), pages));
        }
    };
    pages.done = (changes.len() as u64) < BATCH;
    pages.cursor = changes.last().map(ChangeCursor::of);
    let mut out = Vec::new();
    for change in &changes {
        if let Err(message) = encode(change, pages.format, &mut out) {
            tracing::warn!(error = %message, "the console's export stopped");
            pages.done = true;
            return Some((Err(std::io::Error::other("the export stopped")), pages));
        }
    }
    Some((Ok(Bytes::from(out)), pages))
}

async fn export(console: Arc<Console>, search: Search, format: Format) -> Response {
    let query = match search.export_query(console.audit_log(), BATCH) {
        Ok(query) => query,
        Err(message) => return (StatusCode::BAD_REQUEST, layout::error(&message)).into_response(),
    };
    let mut header_line = Vec::new();
    if format == Format::Csv {
        header_line.extend_from_slice(COLUMNS.join(",").as_bytes());
        header_line.push(b'\n');
    }
    let pages = Pages {
        console,
        query,
        cursor: None,
        format,
        done: false,
    };
    let body =
        futures_util::stream::once(
            async move { Ok::<_, std::io::Error>(Bytes::from(header_line)) },
        )
        .chain(futures_util::stream::unfold(pages, next_page));
    let (content_type, file) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "changes.csv"),
        Format::Ndjson => ("application/x-ndjson", "changes.ndjson"),
    };
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// `/export.csv`.
pub(crate) async fn csv(
    State(console): State<Arc<Console>>,
    Query(search): Query<Search>,
) -> Response {
    export(console, search, Format::Csv).await
}

/// `/export.ndjson`.
pub(crate) async fn ndjson(
    State(console): State<Arc<Console>>,
    Query(search): Query<Search>,
) -> Response {
    export(console, search, Format::Ndjson).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_kept_as_text() {
        for formula in ["=1+1", "+1", "-2", "@SUM(A1)", "\t=x", "\r=x"] {
            assert_eq!(cell(formula.to_owned()), format!("'{formula}"));
        }
        assert_eq!(cell("plain".to_owned()), "plain");
        assert_eq!(cell("{\"a\":\"=1\"}".to_owned()), "{\"a\":\"=1\"}");
    }
}
