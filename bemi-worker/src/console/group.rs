//! `/group`: everything one transaction or one request (any context key and value) changed,
//! grouped by table, in commit order.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bemi_core::{Change, ChangeQuery, Context, Order};
use maud::html;
use serde::Deserialize;

use crate::console::Console;
use crate::console::layout::{self, visible};

/// The most changes one group page shows.
const LIMIT: u64 = 1_000;

/// A transaction, or a context key and value.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Group {
    #[serde(default)]
    transaction: String,
    #[serde(default)]
    context_key: String,
    #[serde(default)]
    context_value: String,
}

/// The names of the fields a change changed.
fn changed_fields(change: &Change) -> Vec<String> {
    let mut columns: Vec<&str> = change
        .before
        .columns()
        .chain(change.after.columns())
        .collect();
    columns.sort_unstable();
    columns.dedup();
    columns
        .into_iter()
        .filter(|column| {
            change.before.get(column).map(|value| value.as_str())
                != change.after.get(column).map(|value| value.as_str())
        })
        .map(str::to_owned)
        .collect()
}

/// The group page.
pub(crate) async fn page(
    State(console): State<Arc<Console>>,
    Query(group): Query<Group>,
) -> Response {
    let mut query = ChangeQuery::new()
        .log(console.audit_log())
        .order(Order::OldestFirst)
        .limit(LIMIT);
    let title;
    let revert_link;
    if !group.transaction.trim().is_empty() {
        let Ok(id) = group.transaction.trim().parse::<i64>() else {
            return (
                StatusCode::BAD_REQUEST,
                layout::error("Not a transaction id."),
            )
                .into_response();
        };
        query = query.transaction_id(id);
        title = format!("Transaction {id}");
        revert_link = format!("/revert?transaction={id}");
    } else if !group.context_key.trim().is_empty() {
        let value = serde_json::from_str(&group.context_value)
            .unwrap_or_else(|_| serde_json::Value::String(group.context_value.clone()));
        title = format!("{}: {}", group.context_key.trim(), value);
        revert_link = format!(
            "/revert?{}",
            serde_urlencoded::to_string([
                ("context_key", group.context_key.trim()),
                ("context_value", group.context_value.as_str()),
            ])
            .unwrap_or_default()
        );
        query = query.context_contains(Context::new().with(group.context_key.trim(), value));
    } else {
        return (
            StatusCode::BAD_REQUEST,
            layout::error("Give a transaction, or a context key and value."),
        )
            .into_response();
    }
    let changes = match console.fetch(&query).await {
        Ok(changes) => changes,
        Err(message) => return layout::unavailable("group", &message),
    };
    let mut tables: BTreeMap<String, Vec<&Change>> = BTreeMap::new();
    for change in &changes {
        tables
            .entry(layout::table_name(change))
            .or_default()
            .push(change);
    }
    let body = html! {
        h1 { (visible(&title)) }
        p.muted {
            (changes.len()) " changes in " (tables.len()) " tables"
            @if changes.len() as u64 == LIMIT { " (the first " (LIMIT) ": narrow the search for the rest)" }
        }
        @if changes.is_empty() { div.empty { "No change matches." } }
        @else if console.config.source.is_some() {
            p { a.action href=(revert_link) { "Plan a revert of all of these" } }
        }
        @for (table, rows) in &tables {
            h2 { (visible(table)) " " span.muted { "(" (rows.len()) ")" } }
            table {
                thead { tr { th { "Committed" } th { "" } th { "Key" } th { "Changed" } th { "Context" } th { "" } } }
                tbody {
                    @for change in rows {
                        tr {
                            td { (layout::time(change)) }
                            td { (layout::operation(change.operation)) }
                            td.value { (visible(change.primary_key.as_deref().unwrap_or("none"))) }
                            td.value { (visible(&changed_fields(change).join(", "))) }
                            td { (layout::context(change)) }
                            td { a href=(format!("/changes/{}", change.id)) { "Open" } }
                        }
                    }
                }
            }
        }
    };
    layout::page(&title, body).into_response()
}
