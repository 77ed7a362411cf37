//! `/`: the search form and a page of matching changes, newest first, with a link to the next
//! page (keyset: the URL holds the last change's cursor, so pages never skip or repeat).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bemi_core::{ChangeCursor, ChangeQuery, Context, Operation, Order};
use chrono::{DateTime, NaiveDate, Utc};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use crate::console::Console;
use crate::console::layout::{self, visible};

/// Changes per page.
const PAGE: u64 = 50;

/// The search, as the form sends it (every field optional; empty means no filter).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
pub(crate) struct Search {
    #[serde(default)]
    table: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    context_key: String,
    #[serde(default)]
    context_value: String,
    #[serde(default)]
    transaction: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    until: String,
    /// A field the change changed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    changed: String,
    /// A JSON object the context contains (several keys at once, nested values).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    context_contains: String,
    /// A JSON object the row after the change contains.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    row_contains: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    after: String,
}

/// `text` as a JSON object, or what is wrong with it (`what` names the field).
fn json_object(text: &str, what: &str) -> Result<serde_json::Value, String> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(value) if value.is_object() => Ok(value),
        _ => Err(format!(
            "{what} takes a JSON object, e.g. {{\"status\": \"shipped\"}}"
        )),
    }
}

/// A time given as a date (`2026-12-01`, midnight UTC) or an RFC 3339 time.
pub(crate) fn instant(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc());
    }
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|_| format!("{text:?} is not a date (2026-12-01) or an RFC 3339 time"))
}

impl Search {
    /// The page's query, or what is wrong with the form.
    fn query(&self, log: bemi_core::AuditLog) -> Result<ChangeQuery, String> {
        let mut query = self.filters(log)?.limit(PAGE);
        if !self.after.is_empty() {
            let cursor: ChangeCursor = self
                .after
                .parse()
                .map_err(|_| "the page link is damaged: search again".to_owned())?;
            query = query.after_cursor(cursor);
        }
        Ok(query)
    }

    /// The query of an export: every match, `batch` at a time (the page cursor ignored).
    pub(crate) fn export_query(
        &self,
        log: bemi_core::AuditLog,
        batch: u64,
    ) -> Result<ChangeQuery, String> {
        Ok(self.filters(log)?.limit(batch))
    }

    /// The form's filters, newest first.
    fn filters(&self, log: bemi_core::AuditLog) -> Result<ChangeQuery, String> {
        let mut query = ChangeQuery::new().log(log).order(Order::NewestFirst);
        if !self.table.trim().is_empty() {
            query = query.table(layout::table_param(&self.table)?);
        }
        if !self.key.trim().is_empty() {
            query = query.primary_key(self.key.trim());
        }
        if !self.operation.is_empty() {
            let operation: Operation = self
                .operation
                .parse()
                .map_err(|_| format!("{:?} is not an operation", self.operation))?;
            query = query.operations([operation]);
        }
        let context_key = self.context_key.trim();
        if !context_key.is_empty() {
            // A JSON value as such (7, true, {"a":1}), anything else as a string.
            let value = serde_json::from_str(&self.context_value)
                .unwrap_or_else(|_| serde_json::Value::String(self.context_value.clone()));
            query = query.context_contains(Context::new().with(context_key, value));
        }
        if !self.transaction.trim().is_empty() {
            let id: i64 = self
                .transaction
                .trim()
                .parse()
                .map_err(|_| format!("{:?} is not a transaction id", self.transaction))?;
            query = query.transaction_id(id);
        }
        if !self.from.trim().is_empty() {
            query = query.from(instant(self.from.trim())?);
        }
        if !self.until.trim().is_empty() {
            query = query.until(instant(self.until.trim())?);
        }
        if !self.changed.trim().is_empty() {
            query = query.changed_field(self.changed.trim());
        }
        if !self.context_contains.trim().is_empty() {
            let context = Context::try_from(json_object(
                self.context_contains.trim(),
                "Context contains",
            )?)
            .map_err(|error| format!("Context contains: {error}"))?;
            query = query.context_contains(context);
        }
        if !self.row_contains.trim().is_empty() {
            query = query.after_contains(json_object(self.row_contains.trim(), "Row contains")?);
        }
        Ok(query)
    }

    fn form(&self) -> Markup {
        let operations = ["CREATE", "UPDATE", "DELETE", "TRUNCATE", "SNAPSHOT", "DDL"];
        html! {
            form.search method="get" action="/" {
                label { "Table" input name="table" placeholder="public.orders" value=(self.table); }
                label { "Key" input name="key" placeholder="42" value=(self.key); }
                label { "Operation"
                    select name="operation" {
                        option value="" { "any" }
                        @for operation in operations {
                            option value=(operation) selected[self.operation == operation] { (operation) }
                        }
                    }
                }
                label { "Transaction" input name="transaction" value=(self.transaction); }
                label { "Context key" input name="context_key" placeholder="user_id" value=(self.context_key); }
                label { "Context value" input name="context_value" placeholder="187234" value=(self.context_value); }
                label { "From" input name="from" placeholder="2026-12-01" value=(self.from); }
                label { "Until" input name="until" placeholder="2026-12-31" value=(self.until); }
                label { "Changed field" input name="changed" placeholder="status" value=(self.changed); }
                label { "Context contains (JSON)" input name="context_contains" placeholder=r#"{"user_id": 7, "endpoint": "/orders"}"# value=(self.context_contains); }
                label { "Row contains (JSON)" input name="row_contains" placeholder=r#"{"status": "shipped"}"# value=(self.row_contains); }
                div.actions {
                    button type="submit" { "Search" }
                    a.button.secondary href="/" { "Clear" }
                }
            }
            form.search method="get" action="/as-of" {
                label { "Table as of: table" input name="table" placeholder="public.orders"; }
                label { "at (a date or an RFC 3339 time)" input name="at" placeholder="2026-12-01T09:30:00Z"; }
                div.actions { button type="submit" { "Show the table then" } }
            }
        }
    }
}

/// The search page.
pub(crate) async fn page(
    State(console): State<Arc<Console>>,
    Query(search): Query<Search>,
) -> Response {
    let query = match search.query(console.audit_log()) {
        Ok(query) => query,
        Err(message) => {
            let body = html! { h1 { "Changes" } (search.form()) div.error { (message) } };
            return (StatusCode::BAD_REQUEST, layout::page("Changes", body)).into_response();
        }
    };
    let changes = match console.fetch(&query).await {
        Ok(changes) => changes,
        Err(message) => return layout::unavailable("search", &message),
    };
    let next = (changes.len() as u64 == PAGE)
        .then(|| changes.last().map(ChangeCursor::of))
        .flatten()
        .map(|cursor| {
            let next = Search {
                after: cursor.to_string(),
                ..search.clone()
            };
            format!(
                "/?{}",
                serde_urlencoded::to_string(&next).unwrap_or_default()
            )
        });
    let exported = serde_urlencoded::to_string(Search {
        after: String::new(),
        ..search.clone()
    })
    .unwrap_or_default();
    let body = html! {
        h1 { "Changes" }
        (search.form())
        h2 { "Newest first" }
        @if changes.is_empty() {
            div.empty { "No change matches." }
        } @else {
            table {
                thead { tr { th { "Committed" } th { "" } th { "Table" } th { "Key" } th { "Context" } th { "" } } }
                tbody {
                    @for change in &changes {
                        tr {
                            td { (layout::time(change)) }
                            td { (layout::operation(change.operation)) }
                            td { (visible(&layout::table_name(change))) }
                            td.value {
                                @if let Some(key) = &change.primary_key {
                                    a href=(format!("/record?{}", serde_urlencoded::to_string([("table", layout::table_name(change)), ("key", key.clone())]).unwrap_or_default())) { (visible(key)) }
                                } @else { span.muted { "none" } }
                            }
                            td { (layout::context(change)) }
                            td { a href=(format!("/changes/{}", change.id)) { "Open" } }
                        }
                    }
                }
            }
            div.pager {
                @if let Some(next) = next { a.button.secondary href=(next) { "Next page" } }
                a.button.secondary href=(format!("/export.csv?{exported}")) { "Export CSV" }
                a.button.secondary href=(format!("/export.ndjson?{exported}")) { "Export NDJSON" }
            }
        }
    };
    layout::page("Changes", body).into_response()
}
