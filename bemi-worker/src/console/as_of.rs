//! `/as-of?table=schema.table&key=K&at=TIME`: a record as it was at a chosen time; without a
//! key, the whole table (its first rows by key).

use std::collections::BTreeSet;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bemi_core::QualifiedName;
use maud::html;
use serde::Deserialize;

use crate::console::Console;
use crate::console::layout::{self, visible};
use crate::console::search::instant;

/// The record (or table) and the time asked for.
#[derive(Debug, Deserialize)]
pub(crate) struct AsOf {
    table: String,
    #[serde(default)]
    key: String,
    at: String,
}

/// The most rows a table as of a time shows.
const TABLE_ROWS: usize = 500;

/// The table as of `at`.
async fn table_page(
    console: &Console,
    table: &QualifiedName,
    name: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Response {
    let log = console.audit_log();
    let log = &log;
    let found = console
        .read(|client| async move {
            bemi_core::time_travel::table_as_of(
                &mut bemi_core::TokioPostgresRunner(&*client),
                log,
                table,
                at,
            )
            .await
        })
        .await;
    let rows = match found {
        Ok(rows) => rows,
        Err(message) => return layout::unavailable("table as of", &message),
    };
    let columns: BTreeSet<&str> = rows.iter().flat_map(|row| row.columns()).collect();
    let when = at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let body = html! {
        h1 { (visible(name)) " as of " (when) }
        p.muted {
            (rows.len()) " rows"
            @if rows.len() > TABLE_ROWS { ", the first " (TABLE_ROWS) " by key shown" }
        }
        @if rows.is_empty() { div.empty { "The trail holds no row of this table at that time." } }
        @else {
            table {
                thead { tr { @for column in &columns { th { (visible(column)) } } } }
                tbody {
                    @for row in rows.iter().take(TABLE_ROWS) {
                        tr { @for column in &columns {
                            td.value { (visible(row.get(column).map(|value| value.as_str()).unwrap_or(""))) }
                        } }
                    }
                }
            }
        }
    };
    layout::page(&format!("{name} as of {when}"), body).into_response()
}

/// The page.
pub(crate) async fn page(
    State(console): State<Arc<Console>>,
    Query(asked): Query<AsOf>,
) -> Response {
    let table = match layout::table_param(&asked.table) {
        Ok(table) => table,
        Err(message) => return (StatusCode::BAD_REQUEST, layout::error(&message)).into_response(),
    };
    let at = match instant(asked.at.trim()) {
        Ok(at) => at,
        Err(message) => return (StatusCode::BAD_REQUEST, layout::error(&message)).into_response(),
    };
    if asked.key.is_empty() {
        return table_page(&console, &table, &asked.table, at).await;
    }
    let log = console.audit_log();
    let (log, table_ref, key) = (&log, &table, &asked.key);
    let found = console
        .read(|client| async move {
            bemi_core::time_travel::row_as_of(
                &mut bemi_core::TokioPostgresRunner(&*client),
                log,
                table_ref,
                key,
                at,
            )
            .await
        })
        .await;
    let row = match found {
        Ok(row) => row,
        Err(message) => return layout::unavailable("as-of", &message),
    };
    let timeline = format!(
        "/record?{}",
        serde_urlencoded::to_string([("table", asked.table.as_str()), ("key", asked.key.as_str())])
            .unwrap_or_default()
    );
    let when = at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    let body = html! {
        h1 { "Record " span.value { (visible(&asked.key)) } " of " (visible(&asked.table)) " as of " (when) }
        p { a href=(timeline) { "The record's timeline" } }
        @match &row {
            None => div.empty { "The record did not exist at that time (or the trail holds nothing of it before then)." },
            Some(image) => table {
                thead { tr { th { "Field" } th { "Value" } } }
                tbody {
                    @for (column, value) in image.iter() {
                        tr { td { (visible(column)) } td.value { (visible(value.as_str())) } }
                    }
                }
            },
        }
    };
    layout::page(&format!("Record {} as of {when}", asked.key), body).into_response()
}
