//! `/revert`: undoing a change, a transaction or a request from the console.
//!
//! The plan comes first (`GET`): a dry run in the source database (the compensating statements
//! run and are rolled back), each step with its outcome and, for a row changed since, the
//! columns whose value is not the one the change left (expected / found). Applying is a second
//! step, only when the console runs with `--allow-revert`: a `POST` carrying the plan page's
//! CSRF token (also in a `SameSite=Strict` cookie: a page elsewhere can neither read nor send
//! it) and an explicit confirmation; a request from another site (`Origin`,
//! `Sec-Fetch-Site`) is refused whatever it carries. The revert's writes carry the console user
//! in their context, and the reverted change, as every bemi revert does.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bemi_core::Context;
use bemi_core::revert::{Conflict, Revert, RevertAction, RevertPlan, StepOutcome};
use maud::{Markup, html};
use serde::Deserialize;
use uuid::Uuid;

use crate::console::layout::{self, visible};
use crate::console::{Console, text};

/// The cookie holding the CSRF token of the last plan shown.
const CSRF_COOKIE: &str = "bemi_csrf";

/// What to revert: one change, one transaction, or everything done with a context value.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Target {
    #[serde(default)]
    change: String,
    #[serde(default)]
    transaction: String,
    #[serde(default)]
    context_key: String,
    #[serde(default)]
    context_value: String,
}

impl Target {
    /// The revert this target names, with a title; or what is wrong with it.
    fn revert(&self) -> Result<(Revert, String), &'static str> {
        if !self.change.trim().is_empty() {
            let id = Uuid::try_parse(self.change.trim()).map_err(|_| "Not a change id.")?;
            return Ok((Revert::change(id), format!("change {id}")));
        }
        if !self.transaction.trim().is_empty() {
            let id: i64 = self
                .transaction
                .trim()
                .parse()
                .map_err(|_| "Not a transaction id.")?;
            return Ok((Revert::transaction(id), format!("transaction {id}")));
        }
        let key = self.context_key.trim();
        if !key.is_empty() {
            let value = serde_json::from_str(&self.context_value)
                .unwrap_or_else(|_| serde_json::Value::String(self.context_value.clone()));
            let title = format!("everything done with {key}: {value}");
            return Ok((Revert::context(Context::new().with(key, value)), title));
        }
        Err("Give a change, a transaction, or a context key and value.")
    }

    /// The revert, its title and the source database it runs in; or why it cannot run.
    fn prepare(
        &self,
        console: &Console,
    ) -> Result<(Revert, String, crate::ConnectionOptions), (StatusCode, &'static str)> {
        let (revert, title) = self
            .revert()
            .map_err(|message| (StatusCode::BAD_REQUEST, message))?;
        let source = console.config.source.clone().ok_or((
            StatusCode::NOT_FOUND,
            "Reverting needs the source database: start the console with --database-url.",
        ))?;
        Ok((revert, title, source))
    }

    /// The target as hidden fields of the apply form.
    fn fields(&self) -> Markup {
        html! {
            input type="hidden" name="change" value=(self.change);
            input type="hidden" name="transaction" value=(self.transaction);
            input type="hidden" name="context_key" value=(self.context_key);
            input type="hidden" name="context_value" value=(self.context_value);
        }
    }
}

/// The apply form's fields.
#[derive(Debug, Default, Deserialize)]
struct Apply {
    #[serde(flatten)]
    target: Target,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    force: String,
}

/// The plan page: a dry run.
pub(crate) async fn plan(
    State(console): State<Arc<Console>>,
    Query(target): Query<Target>,
) -> Response {
    let (revert, title, source) = match target.prepare(&console) {
        Ok(prepared) => prepared,
        Err((status, message)) => return (status, layout::error(message)).into_response(),
    };
    let planned = crate::admin::revert::revert(
        &source,
        &console.config.destination,
        &console.config.changes_table,
        revert,
        true,
    )
    .await;
    let plan = match planned {
        Ok(plan) => plan,
        Err(error) => return failed("plan a revert", &error),
    };
    let token = Uuid::new_v4().simple().to_string();
    let conflicts = plan.conflicts().count();
    let body = html! {
        h1 { "Revert " (visible(&title)) }
        p.muted { "A dry run: the compensating statements ran in the source database and were rolled back." }
        (summary(&plan))
        (steps(&plan))
        @if plan.steps().is_empty() {
        } @else if console.config.allow_revert {
            form.apply method="post" action="/revert" {
                (target.fields())
                input type="hidden" name="csrf" value=(token);
                label {
                    input type="checkbox" name="confirm" value="yes" required;
                    " I confirm: write the compensating changes to the source database now"
                }
                @if conflicts > 0 {
                    label {
                        input type="checkbox" name="force" value="yes";
                        " Also revert the " (conflicts) " conflicting steps, overwriting what was changed since"
                    }
                }
                button type="submit" { "Revert" }
            }
        } @else {
            p.muted { "Applying is off: the console runs without --allow-revert." }
        }
    };
    let mut response = layout::page(&format!("Revert {title}"), body).into_response();
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "{CSRF_COOKIE}={token}; Path=/revert; HttpOnly; SameSite=Strict"
    )) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// The apply step.
pub(crate) async fn apply(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !console.config.allow_revert {
        return (
            StatusCode::FORBIDDEN,
            layout::error("Applying is off: the console runs without --allow-revert."),
        )
            .into_response();
    }
    let Ok(form) = serde_urlencoded::from_bytes::<Apply>(&body) else {
        return (StatusCode::BAD_REQUEST, layout::error("Not a revert form.")).into_response();
    };
    if !same_site(&headers) || !csrf_matches(&headers, &form.csrf) {
        return (
            StatusCode::FORBIDDEN,
            layout::error("This form is stale or came from elsewhere: open the plan again."),
        )
            .into_response();
    }
    if form.confirm != "yes" {
        return (
            StatusCode::BAD_REQUEST,
            layout::error("Nothing was changed: confirm the revert on the plan's page."),
        )
            .into_response();
    }
    let (revert, title, source) = match form.target.prepare(&console) {
        Ok(prepared) => prepared,
        Err((status, message)) => return (status, layout::error(message)).into_response(),
    };
    let user = console.user(&headers);
    let mut revert = revert.with_context(
        Context::new()
            .with("tool", "bemi-worker console")
            .with("console_user", user.clone()),
    );
    if form.force == "yes" {
        revert = revert.force();
    }
    let applied = crate::admin::revert::revert(
        &source,
        &console.config.destination,
        &console.config.changes_table,
        revert,
        false,
    )
    .await;
    let (status, heading, plan) = match applied {
        Ok(plan) => (StatusCode::OK, "Reverted", plan),
        Err(crate::Error::Core(bemi_core::Error::RevertConflicts(plan))) => (
            StatusCode::CONFLICT,
            "Nothing was changed: the rows changed since the plan",
            *plan,
        ),
        Err(error) => return failed("apply a revert", &error),
    };
    tracing::info!(
        user = %user,
        target = %title,
        steps = plan.steps().len(),
        applied = status == StatusCode::OK,
        "revert from the console"
    );
    let body = html! {
        h1 { (heading) ": " (visible(&title)) }
        p { "By " span.value { (visible(&user)) } ", recorded in the context of every compensating change." }
        (summary(&plan))
        (steps(&plan))
    };
    (status, layout::page(&format!("Revert {title}"), body)).into_response()
}

/// Whether the request may come from the console's own pages: refused when a browser names
/// another site in `Sec-Fetch-Site`, or an `Origin` whose host is not the one addressed.
/// `Origin: null` is what a browser sends from a page with `Referrer-Policy: no-referrer`
/// (the console's): it proves nothing either way, and the token and its `SameSite=Strict`
/// cookie decide.
fn same_site(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if header("sec-fetch-site").is_some_and(|site| site != "same-origin" && site != "none") {
        return false;
    }
    match (
        header("origin").filter(|origin| *origin != "null"),
        header("host"),
    ) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority == host),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Whether the form's token is the one its page set in the cookie.
fn csrf_matches(headers: &HeaderMap, given: &str) -> bool {
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            pair.trim()
                .strip_prefix(CSRF_COOKIE)
                .and_then(|rest| rest.strip_prefix('='))
        });
    cookie.is_some_and(|cookie| {
        !given.is_empty() && text::constant_time_eq(given.as_bytes(), cookie.as_bytes())
    })
}

/// A failed revert: the reason to the log, a page that names nothing of the servers.
fn failed(action: &str, error: &crate::Error) -> Response {
    let reason = crate::error_chain(error);
    tracing::warn!(action, error = %reason, "a revert from the console failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        layout::error("The revert could not run; nothing was changed. The console's log says why."),
    )
        .into_response()
}

/// How many steps, clean and conflicting.
fn summary(plan: &RevertPlan) -> Markup {
    let conflicts = plan.conflicts().count();
    html! {
        p {
            (plan.steps().len()) @if plan.steps().len() == 1 { " step" } @else { " steps" } ", newest change first; "
            @if conflicts == 0 { "none conflicts." }
            @else { strong { (conflicts) " conflict" } " with the rows as they are now." }
        }
    }
}

/// Each step: the change, how it is undone, and its outcome.
fn steps(plan: &RevertPlan) -> Markup {
    html! {
        @if plan.steps().is_empty() { div.empty { "No change matches: nothing to revert." } }
        @else {
            table.steps {
                thead { tr { th { "Change" } th { "Table" } th { "Key" } th { "Undone by" } th { "Outcome" } } }
                tbody {
                    @for step in plan.steps() {
                        tr class=(outcome_class(&step.outcome)) {
                            td {
                                (layout::operation(step.change.operation)) " "
                                a href=(format!("/changes/{}", step.change.id)) { (layout::time(&step.change)) }
                            }
                            td { (visible(&layout::table_name(&step.change))) }
                            td.value { (visible(step.change.primary_key.as_deref().unwrap_or("none"))) }
                            td { (action(&step.action)) }
                            td { (outcome(&step.outcome)) }
                        }
                    }
                }
            }
        }
    }
}

fn outcome_class(outcome: &StepOutcome) -> &'static str {
    match outcome {
        StepOutcome::Clean => "clean",
        StepOutcome::Conflict(_) => "conflict",
        StepOutcome::Forced(_) => "forced",
        StepOutcome::Skipped(_) => "skipped",
    }
}

fn action(action: &RevertAction) -> Markup {
    html! {
        @match action {
            RevertAction::Delete => "deleting the row",
            RevertAction::Restore { columns } => { "restoring " span.value { (visible(&columns.join(", "))) } },
            RevertAction::Reinsert => "inserting the row again",
            RevertAction::Overwrite { columns } => { "overwriting " span.value { (visible(&columns.join(", "))) } },
            RevertAction::Nothing => span.muted { "nothing" },
        }
    }
}

fn outcome(outcome: &StepOutcome) -> Markup {
    html! {
        @match outcome {
            StepOutcome::Clean => "clean",
            StepOutcome::Conflict(conflict) => { strong { "conflict: " } (conflict_text(conflict)) },
            StepOutcome::Forced(conflict) => { strong { "forced over: " } (conflict_text(conflict)) },
            StepOutcome::Skipped(conflict) => { strong { "skipped: " } (conflict_text(conflict)) },
        }
    }
}

fn conflict_text(conflict: &Conflict) -> Markup {
    html! {
        @match conflict {
            Conflict::RowMissing => "the row is gone",
            Conflict::RowExists { .. } => "a row with this key exists again",
            Conflict::Refused { reason } | Conflict::NotRevertible { reason } => (visible(reason)),
            Conflict::RowDiffers { differences } => {
                "changed since"
                table.differences {
                    thead { tr { th { "Field" } th { "Expected (as the change left it)" } th { "Found now" } } }
                    tbody {
                        @for difference in differences {
                            tr {
                                td { (visible(&difference.column)) }
                                td.value { (json_cell(difference.expected.as_ref())) }
                                td.value { (json_cell(difference.found.as_ref())) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn json_cell(value: Option<&bemi_core::JsonText>) -> Markup {
    html! {
        @match value {
            Some(value) => (visible(value.as_str())),
            None => span.muted { "absent" },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                *name,
                HeaderValue::from_str(value).unwrap_or_else(|error| panic!("{error}")),
            );
        }
        headers
    }

    #[test]
    fn only_the_console_own_pages_may_apply() {
        assert!(same_site(&headers(&[("host", "127.0.0.1:7777")])));
        assert!(same_site(&headers(&[
            ("host", "127.0.0.1:7777"),
            ("origin", "http://127.0.0.1:7777"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_site(&headers(&[
            ("host", "127.0.0.1:7777"),
            ("origin", "https://evil.example"),
        ])));
        assert!(!same_site(&headers(&[
            ("host", "127.0.0.1:7777"),
            ("sec-fetch-site", "cross-site"),
        ])));
        assert!(!same_site(&headers(&[("origin", "http://127.0.0.1:7777")])));
        // What a page with `Referrer-Policy: no-referrer` sends: the token decides.
        assert!(same_site(&headers(&[
            ("host", "127.0.0.1:7777"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_site(&headers(&[
            ("host", "127.0.0.1:7777"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site"),
        ])));
    }

    #[test]
    fn the_token_must_match_its_cookie() {
        let with_cookie = headers(&[("cookie", "other=1; bemi_csrf=abc123; more=2")]);
        assert!(csrf_matches(&with_cookie, "abc123"));
        assert!(!csrf_matches(&with_cookie, "abc124"));
        assert!(!csrf_matches(&with_cookie, ""));
        assert!(!csrf_matches(&headers(&[]), "abc123"));
        assert!(!csrf_matches(&headers(&[("cookie", "bemi_csrf=")]), ""));
        assert!(!csrf_matches(
            &headers(&[("cookie", "bemi_csrfx=abc123")]),
            "abc123"
        ));
    }

    #[test]
    fn targets_name_one_revert() {
        let target = |change: &str, transaction: &str, key: &str, value: &str| Target {
            change: change.into(),
            transaction: transaction.into(),
            context_key: key.into(),
            context_value: value.into(),
        };
        assert!(target("not-a-uuid", "", "", "").revert().is_err());
        assert!(target("", "12x", "", "").revert().is_err());
        assert!(target("", "", "", "").revert().is_err());
        let (_, title) = target("", "42", "", "")
            .revert()
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(title, "transaction 42");
        let (_, title) = target("", "", "request", "r1")
            .revert()
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(title, "everything done with request: \"r1\"");
    }
}
