//! The page shell and the small pieces every page shows.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bemi_core::{Change, Operation};
use maud::{DOCTYPE, Markup, html};

use crate::console::text::pieces;

/// A whole page.
pub(crate) fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · bemi console" }
                link rel="stylesheet" href="/assets/console.css";
            }
            body {
                header {
                    a.brand href="/" { "bemi console" }
                    nav { a href="/" { "Search" } a href="/health" { "Health" } }
                }
                main { (body) }
            }
        }
    }
}

/// Text with its invisible characters shown by name.
pub(crate) fn visible(text: &str) -> Markup {
    html! {
        @for (invisible, piece) in pieces(text) {
            @if invisible { span.invisible title="an invisible character" { "⟨" (piece) "⟩" } }
            @else { (piece) }
        }
    }
}

/// A table as a form gives it: `schema.table`, or a name alone for one in `public`.
pub(crate) fn table_param(text: &str) -> Result<bemi_core::QualifiedName, String> {
    let text = text.trim();
    let (schema, name) = text.split_once('.').unwrap_or(("public", text));
    bemi_core::QualifiedName::new(schema, name)
        .map_err(|_| format!("{text:?} is not a table name (schema.table)"))
}

/// The operation as a badge.
pub(crate) fn operation(operation: Operation) -> Markup {
    html! { span class={ "op op-" (operation.as_str()) } { (operation.as_str()) } }
}

/// The commit time, to the second, in UTC.
pub(crate) fn time(change: &Change) -> String {
    change
        .committed_at
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// `schema.table` of a change.
pub(crate) fn table_name(change: &Change) -> String {
    format!("{}.{}", change.schema, change.table)
}

/// The context of a change, `key: value` pairs.
pub(crate) fn context(change: &Change) -> Markup {
    html! {
        @if change.context.is_empty() { span.muted { "no context" } }
        @for (key, value) in change.context.iter() {
            span.value { (visible(key)) ": " (visible(&value.to_string())) } " "
        }
    }
}

/// A page saying what went wrong, without internals.
pub(crate) fn error(message: &str) -> Markup {
    page("Error", html! { div.error { (message) } })
}

/// The answer when the trail cannot be read: the reason goes to the console's log (it may name
/// the server), the page says only that.
pub(crate) fn unavailable(page: &str, reason: &str) -> Response {
    tracing::warn!(page, error = %reason, "the console cannot read the trail");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        error("The trail cannot be read right now; the console's log says why."),
    )
        .into_response()
}
