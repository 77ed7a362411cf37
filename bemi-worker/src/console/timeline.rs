//! `/record?table=schema.table&key=K`: every change of one row, oldest first, with who changed
//! what at each step (a deletion and a re-creation included), and the table's schema changes
//! (DDL) since the row's first change, in their place.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bemi_core::{ChangeQuery, Operation, Order};
use maud::html;
use serde::Deserialize;

use crate::console::Console;
use crate::console::change::diff;
use crate::console::layout::{self, visible};

/// The most schema changes of the table one timeline shows.
const MOST_DDL: u64 = 100;

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
    let mut changes = match history {
        Ok(changes) => changes,
        Err(message) => return layout::unavailable("timeline", &message),
    };
    // The table's schema changes since the record's first change, in their place.
    if let Some(first) = changes.first() {
        let ddl = ChangeQuery::new()
            .log(console.audit_log())
            .table(table.clone())
            .operations([Operation::Ddl])
            .from(first.committed_at)
            .order(Order::OldestFirst)
            .limit(MOST_DDL);
        match console.fetch(&ddl).await {
            Ok(found) => changes.extend(found),
            Err(message) => return layout::unavailable("timeline", &message),
        }
        changes.sort_by_key(|change| (change.commit_lsn, change.sequence));
    }
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
                li.ddl[change.operation == Operation::Ddl] {
                    div {
                        (layout::operation(change.operation)) " "
                        strong { (layout::time(change)) } " · "
                        (layout::context(change)) " · "
                        a href=(format!("/changes/{}", change.id)) { "Open" }
                    }
                    @if change.operation == Operation::Ddl {
                        @if let Some(statement) = change.after.get("statement").and_then(|text| text.parse::<String>().ok()) {
                            p { "The table's schema changed: " span.value { (visible(&statement)) } }
                        } @else {
                            p { "The table's schema changed." }
                        }
                    }
                    (diff(change))
                }
            }
        }
    };
    layout::page(&format!("Record {}", record.key), body).into_response()
}
