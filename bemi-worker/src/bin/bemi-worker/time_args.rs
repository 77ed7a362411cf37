//! Times given on the command line: a date (`2026-11-30`, UTC) or an RFC 3339 time.

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

/// A date is its first instant (`--from`).
pub(crate) fn start_of(text: &str) -> Result<DateTime<Utc>, String> {
    parse(text, |date| date.and_hms_opt(0, 0, 0))
}

/// A date is its last instant (`--to`, `--until`).
pub(crate) fn end_of(text: &str) -> Result<DateTime<Utc>, String> {
    parse(text, |date| date.and_hms_micro_opt(23, 59, 59, 999_999))
}

fn parse(
    text: &str,
    instant: impl Fn(NaiveDate) -> Option<NaiveDateTime>,
) -> Result<DateTime<Utc>, String> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return instant(date)
            .map(|time| time.and_utc())
            .ok_or_else(|| format!("{text:?}: not a date"));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| format!("{text:?}: expected 2026-11-30 or an RFC 3339 time ({error})"))
}
