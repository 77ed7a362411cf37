//! `/changes/{id}`: one change: where and when, who (its context), and the field diff with the
//! unchanged fields collapsed.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bemi_core::{Change, ChangeQuery};
use maud::{Markup, html};
use uuid::Uuid;

use crate::console::Console;
use crate::console::json_diff::{MOST_LISTED, differences};
use crate::console::layout::{self, visible};

/// Why a stored value reads as it does (redaction and the worker's markers).
fn marker(value: &str) -> Option<&'static str> {
    match value {
        "\"[REDACTED]\"" => Some("redacted by a column policy"),
        _ if value.contains(bemi_core::ERASED_KEY)
            && serde_json::from_str(value).is_ok_and(|parsed| bemi_core::is_erased(&parsed)) =>
        {
            Some("erased personal data: the seals keep its commitment, not the value")
        }
        _ if value.contains("\"_bemi\"") => Some("a marker of the worker: see the README"),
        _ => None,
    }
}

/// One value cell.
fn value(text: Option<&str>) -> Markup {
    html! {
        @match text {
            None => span.muted { "absent" },
            Some(text) => {
                (visible(text))
                @if let Some(why) = marker(text) { " " span.marker { (why) } }
            }
        }
    }
}

/// What each note the worker leaves under the context's `_bemi` key means, for a reader.
fn note_meaning(key: &str) -> &'static str {
    match key {
        "incomplete" => {
            "Only part of the row reached the WAL (a key-only old row, or a table without replica \
             identity FULL): these images hold the columns PostgreSQL sent; nothing was filled in."
        }
        "unavailable" => {
            "Unchanged large (TOAST) values without an old row image: these columns are left out \
             of the image, not set to NULL."
        }
        "key_unavailable" => {
            "The key is made of a generated column, which PostgreSQL publishes only from \
             version 18."
        }
        "kept_as_text" => {
            "Values the jsonb type cannot hold (a number beyond numeric, half a surrogate pair) \
             are kept as strings of their text."
        }
        "replaced_nul" => {
            "A \\u0000 in these values was replaced by U+FFFD (jsonb cannot hold it)."
        }
        "unstorable" => {
            "PostgreSQL refused this change's values: its images are kept as text, with the reason."
        }
        "partition" => "The row is in this partition of the partitioned table it is stored under.",
        "moved_from" => {
            "An UPDATE that moved the row out of this partition (PostgreSQL writes it as a DELETE \
             and an INSERT)."
        }
        "invalid_context" | "raw" => {
            "The context the application sent was not a JSON object: what could be read is kept."
        }
        "dropped" => "The context was larger than the worker's cap and was dropped.",
        "original" => "The application's own value of _bemi, kept.",
        _ => "A note from the worker (the README lists them).",
    }
}

/// The worker's notes on a change (its context's `_bemi` object), each with what it means.
fn worker_notes(change: &Change) -> Option<Markup> {
    let notes = change.context.get("_bemi")?.as_object()?;
    Some(html! {
        h2 { "Notes from the worker" }
        dl.facts.notes {
            @for (key, value) in notes {
                dt { (visible(key)) }
                dd {
                    div { (note_meaning(key)) }
                    div.value { (visible(&value.to_string())) }
                }
            }
        }
    })
}

/// For a field holding a document (an object or an array) on both sides or one: the paths that
/// differ inside it, each with its two values.
fn nested(before: Option<String>, after: Option<String>) -> Option<Markup> {
    let parse = |text: Option<String>| {
        text.and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let found = differences(&parse(before), &parse(after))?;
    if found.len() < 2 && found.first().is_none_or(|only| only.path == "(whole)") {
        // One whole-value change reads as well in the row itself.
        return None;
    }
    let listed = &found[..found.len().min(MOST_LISTED)];
    let shown = |value: &Option<serde_json::Value>| match value {
        Some(value) => html! { (visible(&value.to_string())) },
        None => html! { span.muted { "absent" } },
    };
    Some(html! {
        table.paths {
            thead { tr { th { "Inside, by path" } th { "Before" } th { "After" } } }
            tbody {
                @for difference in listed {
                    tr {
                        td.value { (visible(&difference.path)) }
                        td.value.before { (shown(&difference.before)) }
                        td.value.after { (shown(&difference.after)) }
                    }
                }
            }
        }
        @if found.len() > listed.len() {
            p.muted { "and " (found.len() - listed.len()) " more paths" }
        }
    })
}

/// The diff: changed fields first, then the unchanged ones folded.
pub(crate) fn diff(change: &Change) -> Markup {
    let columns: BTreeSet<&str> = change
        .before
        .columns()
        .chain(change.after.columns())
        .collect();
    let text = |image: &bemi_core::Image, column: &str| {
        image.get(column).map(|value| value.as_str().to_owned())
    };
    let (changed, unchanged): (Vec<&str>, Vec<&str>) = columns
        .into_iter()
        .partition(|column| text(&change.before, column) != text(&change.after, column));
    html! {
        table.diff {
            thead { tr { th { "Field" } th { "Before" } th { "After" } } }
            tbody {
                @for column in &changed {
                    tr.changed {
                        td { (visible(column)) }
                        td.value.before { (value(text(&change.before, column).as_deref())) }
                        td.value.after { (value(text(&change.after, column).as_deref())) }
                    }
                    @if let Some(paths) = nested(text(&change.before, column), text(&change.after, column)) {
                        tr.nested { td {} td colspan="2" { (paths) } }
                    }
                }
            }
        }
        @if !unchanged.is_empty() {
            details {
                summary { (unchanged.len()) " unchanged fields" }
                table {
                    tbody {
                        @for column in &unchanged {
                            tr {
                                td { (visible(column)) }
                                td.value colspan="2" { (value(text(&change.after, column).as_deref())) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The change page.
pub(crate) async fn page(State(console): State<Arc<Console>>, Path(id): Path<String>) -> Response {
    let Ok(id) = Uuid::try_parse(&id) else {
        return (StatusCode::NOT_FOUND, layout::error("No such change.")).into_response();
    };
    let query = ChangeQuery::new()
        .log(console.audit_log())
        .ids([id])
        .limit(1);
    let found = console.fetch(&query).await;
    let change = match found {
        Ok(mut changes) if !changes.is_empty() => changes.remove(0),
        Ok(_) => return (StatusCode::NOT_FOUND, layout::error("No such change.")).into_response(),
        Err(message) => return layout::unavailable("change", &message),
    };
    let table = layout::table_name(&change);
    let group = |pairs: &[(&str, String)]| {
        format!(
            "/group?{}",
            serde_urlencoded::to_string(pairs).unwrap_or_default()
        )
    };
    let body = html! {
        h1 { (layout::operation(change.operation)) " " (visible(&table)) }
        dl.facts {
            dt { "Committed" } dd { (layout::time(&change)) }
            dt { "Key" } dd.value {
                @if let Some(key) = &change.primary_key {
                    a href=(format!("/record?{}", serde_urlencoded::to_string([("table", table.clone()), ("key", key.clone())]).unwrap_or_default())) { (visible(key)) }
                    " (the record's timeline)"
                } @else { span.muted { "none" } }
            }
            dt { "Transaction" } dd {
                a href=(group(&[("transaction", change.transaction_id.to_string())])) { (change.transaction_id) }
                " (everything it changed)"
            }
            dt { "Context" } dd {
                @if change.context.is_empty() { span.muted { "none: raw SQL, or a writer that set no context" } }
                @for (key, value) in change.context.iter() {
                    div.value {
                        (visible(key)) ": " (visible(&value.to_string())) " "
                        a href=(group(&[("context_key", key.clone()), ("context_value", value.to_string())])) { "everything done with it" }
                    }
                }
            }
            dt { "Database" } dd { (visible(&change.database)) }
            dt { "Change id" } dd.value { (change.id) }
        }
        h2 { "Fields" }
        (diff(&change))
        @if let Some(notes) = worker_notes(&change) { (notes) }
        @if console.config.source.is_some() {
            p { a.action href=(format!("/revert?change={}", change.id)) { "Plan a revert of this change" } }
        }
    };
    layout::page(&format!("{} {}", change.operation.as_str(), table), body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_say_why_a_value_reads_as_it_does() {
        assert_eq!(
            marker("\"[REDACTED]\""),
            Some("redacted by a column policy")
        );
        assert_eq!(
            marker(r#"{"bemi_erased": "00ff"}"#),
            Some("erased personal data: the seals keep its commitment, not the value")
        );
        assert_eq!(marker(r#"{"bemi_erased": "00ff", "other": 1}"#), None);
        assert_eq!(marker("\"ann@example.org\""), None);
    }
}
