//! `/record?table=schema.table&key=K`: every change of one row, oldest first, with who changed
//! what at each step (a deletion and a re-creation included).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;
use serde::Deserialize;

use crate::console::Console;
use crate::console::change::diff;
use crate::console::layout::{self, visible};

/// The record asked for.
#[derive(Debug, Deserialize)]
pub(crate) struct Record {
    table: String,
    key: String,
}

/// The timeline page.
pub(crate) async fn page(
    State(console): State<Arc<Console>>,
    Query(record): Query<Record>,
) -> Response {
    let table = match layout::table_param(&record.table) {
        Ok(table) => table,
        Err(message) => return (StatusCode::BAD_REQUEST, layout::error(&message)).into_response(),
    };
    let log = console.audit_log();
    let (log, table, key) = (&log, &table, &record.key);
    let history = console
        .read(|client| async move {
            bemi_core::time_travel::history(
                &mut bemi_core::TokioPostgresRunner(&*client),
                log,
                table,
                key,
            )
            .await
        })
        .await;
    let changes = match history {
        Ok(changes) => changes,
        Err(message) => return layout::unavailable("timeline", &message),
    };
    let body = html! {
        h1 { "Record " span.value { (visible(&record.key)) } " of " (visible(&record.table)) }
        form.search method="get" action="/as-of" {
            input type="hidden" name="table" value=(record.table);
            input type="hidden" name="key" value=(record.key);
            label { "As of (a date or an RFC 3339 time)" input name="at" placeholder="2026-12-01T09:30:00Z"; }
            div.actions { button type="submit" { "Show the record then" } }
        }
        @if changes.is_empty() {
            div.empty { "No change of this record is in the trail." }
        }
        ol.timeline {
            @for change in &changes {
                li {
                    div {
                        (layout::operation(change.operation)) " "
                        strong { (layout::time(change)) } " · "
                        (layout::context(change)) " · "
                        a href=(format!("/changes/{}", change.id)) { "Open" }
                    }
                    (diff(change))
                }
            }
        }
    };
    layout::page(&format!("Record {}", record.key), body).into_response()
}
