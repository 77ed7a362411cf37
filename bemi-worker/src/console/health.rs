//! `/health`: the trail's health as `bemi-worker status` sees it (slot lag and retained WAL,
//! the last stored commit, whether a worker streams, rejected changes, warnings).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bemi_core::setup::SetupOptions;
use chrono::Utc;
use maud::html;

use crate::admin::status::{Health, LagLimits};
use crate::console::Console;
use crate::console::layout::{self, visible};

/// Bytes as KiB, MiB or GiB.
fn size(bytes: Option<i64>) -> String {
    match bytes {
        None => "-".to_owned(),
        Some(bytes) if bytes.abs() < 1 << 10 => format!("{bytes} B"),
        Some(bytes) if bytes.abs() < 1 << 20 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        Some(bytes) if bytes.abs() < 1 << 30 => format!("{:.1} MiB", bytes as f64 / 1048576.0),
        Some(bytes) => format!("{:.1} GiB", bytes as f64 / 1073741824.0),
    }
}

/// The health page.
pub(crate) async fn page(State(console): State<Arc<Console>>) -> Response {
    let config = &console.config;
    let Some(source) = &config.source else {
        let body = html! {
            h1 { "Health" }
            div.empty { "Start the console with --database-url (the source database) to see the slot and the worker." }
        };
        return layout::page("Health", body).into_response();
    };
    let options = SetupOptions::default()
        .slot(config.slot.clone())
        .changes_table(config.changes_table.clone());
    let status = match crate::admin::status::status(source, &config.destination, &options).await {
        Ok(status) => status,
        Err(error) => return layout::unavailable("health", &crate::error_chain(&error)),
    };
    let (health, reasons) = status.health(LagLimits::default());
    let level = match health {
        Health::Healthy => "healthy",
        Health::Warning => "warning",
        Health::Critical => "critical",
    };
    let slot = status.slot_info.as_ref();
    let body = html! {
        h1 { "Health: " span class={ "health health-" (level) } { (level) } }
        @if !reasons.is_empty() {
            ul { @for reason in &reasons { li { (visible(reason)) } } }
        }
        dl.facts {
            dt { "Slot" } dd { (visible(&status.slot)) }
            dt { "Worker" } dd {
                @match slot.and_then(|slot| slot.active_pid) {
                    Some(pid) => { "streaming (walsender " (pid) ")" },
                    None => span.muted { "not streaming" },
                }
            }
            dt { "Lag" } dd { (size(slot.and_then(|slot| slot.lag_bytes))) " of WAL behind" }
            dt { "Retained WAL" } dd {
                (size(slot.and_then(|slot| slot.retained_bytes)))
                @if let Some(status) = slot.and_then(|slot| slot.wal_status.as_deref()) { " (" (status) ")" }
                @if let Some(remaining) = slot.and_then(|slot| slot.wal_remaining_bytes) {
                    ", " (size(Some(remaining))) " more before the server invalidates the slot"
                }
            }
            dt { "Last stored commit" } dd {
                @match status.last_stored_commit {
                    Some(commit) => {
                        (commit.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                        " (" ((Utc::now() - commit).num_seconds()) " s ago)"
                    },
                    None => span.muted { "none yet" },
                }
            }
            dt { "Rejected changes" } dd { (status.rejected_changes.unwrap_or(0)) }
            @if let Some(gap) = &status.last_trail_gap {
                dt { "Trail gaps" } dd {
                    (gap.count) " (the newest: changes after "
                    (gap.lost_after_lsn.as_deref().unwrap_or("an unknown position"))
                    " and before " (gap.resumed_at_lsn) " are missing)"
                }
            }
        }
    };
    layout::page("Health", body).into_response()
}
