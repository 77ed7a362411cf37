//! History and time travel: a row's changes, a row as it was at an instant, a whole table as it
//! was.
//!
//! The state of a row at `t` is the `after` image of its latest change committed at or before
//! `t`, where "latest" follows commit order and, within a transaction, WAL order. The row did
//! not exist at `t` when that change is a DELETE, when a later TRUNCATE of the table (at or
//! before `t`) wiped it, when an UPDATE moved it to another key, or when it has no change at
//! all. Rows that never changed since setup are known only through `bemi-worker snapshot`,
//! whose SNAPSHOT changes record every row once, consistently with the stream.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::audited::mask;
use crate::query::runner::{ROW_COLUMN, SqlParam, SqlRunner};
use crate::query::{Params, timestamp};
use crate::{
    AuditKey, AuditLog, Audited, AuditedChange, Change, ChangeQuery, Error, Image, Operation,
    QualifiedName, Result,
};

/// The order of the latest change first, for table alias `alias`.
fn newest_first(alias: &str) -> String {
    format!(
        "{alias}.committed_at DESC, {alias}.commit_lsn DESC, {alias}.sequence DESC, {alias}.id DESC"
    )
}

/// The changes of one row (key in the `primary_key` column's format), oldest first.
///
/// # Errors
///
/// [`Error::Database`] from the runner, [`Error::InvalidRow`] for a malformed row.
pub async fn history<R: SqlRunner>(
    runner: &mut R,
    log: &AuditLog,
    table: &QualifiedName,
    key: &str,
) -> Result<Vec<Change>> {
    ChangeQuery::new()
        .log(log.clone())
        .table(table.clone())
        .primary_key(key)
        .fetch(runner)
        .await
}

/// The SQL of [`row_as_of`]: up to three candidate changes (the row's latest change, the latest
/// UPDATE that moved it away from the key, the table's latest TRUNCATE), each at or before the
/// instant.
pub fn row_as_of_sql(
    log: &AuditLog,
    table: &QualifiedName,
    key: &str,
    at: &DateTime<Utc>,
) -> (String, Vec<SqlParam>) {
    let mut params = Params::default();
    let schema = params.text(table.schema());
    let name = params.text(table.name());
    let key = params.text(key);
    let at = params.text(&timestamp(at));
    let changes = log.changes_table();
    let order = newest_first("c");
    let candidate = |moved_away: bool, condition: &str| {
        format!(
            "(SELECT pg_catalog.row_to_json(c) AS change, {moved_away} AS moved_away FROM {changes} c \
             WHERE c.schema = {schema} AND c.\"table\" = {name} AND {condition} \
             AND c.committed_at <= {at}::timestamptz ORDER BY {order} LIMIT 1)"
        )
    };
    let sql = format!(
        "SELECT pg_catalog.row_to_json(x)::text AS {ROW_COLUMN} FROM ({} UNION ALL {} UNION ALL {}) x",
        candidate(false, &format!("c.primary_key = {key}")),
        candidate(true, &format!("c.previous_primary_key = {key}")),
        candidate(false, "c.primary_key IS NULL AND c.operation = 'TRUNCATE'"),
    );
    (sql, params.into_vec())
}

/// A candidate of [`row_as_of_sql`] (not flattened: images are kept as their text, which
/// serde's buffering of flattened fields cannot hold).
#[derive(Deserialize)]
struct Candidate {
    change: Change,
    moved_away: bool,
}

/// The row with this key as it was at `at` (its columns as JSON), or `None` when it did not
/// exist then (see the module documentation for the rule).
///
/// # Errors
///
/// [`Error::Database`] from the runner, [`Error::InvalidRow`] for a malformed row.
pub async fn row_as_of<R: SqlRunner>(
    runner: &mut R,
    log: &AuditLog,
    table: &QualifiedName,
    key: &str,
    at: DateTime<Utc>,
) -> Result<Option<Image>> {
    let (sql, params) = row_as_of_sql(log, table, key, &at);
    let mut candidates = Vec::new();
    for row in crate::query::read::read_trail(runner, &sql, &params).await? {
        let candidate: Candidate =
            serde_json::from_str(row.as_deref().unwrap_or("null")).map_err(|source| {
                Error::InvalidRow {
                    what: "a change",
                    source,
                }
            })?;
        candidates.push(candidate);
    }
    let latest = candidates.into_iter().max_by(|a, b| {
        let order = |c: &Candidate| {
            (
                c.change.committed_at,
                c.change.commit_lsn,
                c.change.sequence,
                c.change.id,
            )
        };
        order(a).cmp(&order(b))
    });
    Ok(latest.and_then(|candidate| {
        let gone = candidate.moved_away
            || matches!(
                candidate.change.operation,
                Operation::Delete | Operation::Truncate
            );
        (!gone).then_some(candidate.change.after)
    }))
}

/// The SQL of [`table_as_of`]: the `after` image of every row that existed at the instant,
/// ordered by key text.
pub fn table_as_of_sql(
    log: &AuditLog,
    table: &QualifiedName,
    at: &DateTime<Utc>,
) -> (String, Vec<SqlParam>) {
    let mut params = Params::default();
    let schema = params.text(table.schema());
    let name = params.text(table.name());
    let at = params.text(&timestamp(at));
    // The stored table, not the view: an UPDATE's full image (`before || after_changed`) is
    // built for the latest change of each row only, not for every change read.
    let changes = crate::setup::stored_changes_table(log.changes_table());
    let order = newest_first("c");
    let sql = format!(
        "WITH latest AS ( \
           SELECT DISTINCT ON (k.key) k.key, k.moved_away, c.operation, c.\"after\", \
                  c.\"before\", c.after_changed, c.committed_at, c.commit_lsn, c.sequence \
           FROM {changes} c \
           CROSS JOIN LATERAL (VALUES (c.primary_key, false), (c.previous_primary_key, true)) k(key, moved_away) \
           WHERE c.schema = {schema} AND c.\"table\" = {name} AND c.committed_at <= {at}::timestamptz \
             AND k.key IS NOT NULL \
           ORDER BY k.key, {order}), \
         truncated AS ( \
           SELECT c.committed_at, c.commit_lsn, c.sequence FROM {changes} c \
           WHERE c.schema = {schema} AND c.\"table\" = {name} AND c.primary_key IS NULL \
             AND c.operation = 'TRUNCATE' AND c.committed_at <= {at}::timestamptz \
           ORDER BY {order} LIMIT 1) \
         SELECT COALESCE(l.\"after\"::jsonb, l.\"before\"::jsonb || l.after_changed)::text AS {ROW_COLUMN} \
         FROM latest l \
         WHERE NOT l.moved_away AND l.operation NOT IN ('DELETE', 'TRUNCATE') \
           AND NOT EXISTS (SELECT 1 FROM truncated t \
             WHERE (t.committed_at, t.commit_lsn, t.sequence) > (l.committed_at, l.commit_lsn, l.sequence)) \
         ORDER BY l.key"
    );
    (sql, params.into_vec())
}

/// Every row of the table as it was at `at` (columns as JSON), including rows deleted since.
///
/// # Errors
///
/// [`Error::Database`] from the runner, [`Error::InvalidRow`] for a malformed row.
pub async fn table_as_of<R: SqlRunner>(
    runner: &mut R,
    log: &AuditLog,
    table: &QualifiedName,
    at: DateTime<Utc>,
) -> Result<Vec<Image>> {
    let (sql, params) = table_as_of_sql(log, table, &at);
    crate::query::read::read_trail(runner, &sql, &params)
        .await?
        .into_iter()
        .map(|row| {
            serde_json::from_str(row.as_deref().unwrap_or("null")).map_err(|source| {
                Error::InvalidRow {
                    what: "a row image",
                    source,
                }
            })
        })
        .collect()
}

/// The typed changes of one row of `M`, oldest first.
///
/// # Errors
///
/// As [`history`], and [`Error::ModelField`] when an image does not fit the model.
pub async fn model_history<M: Audited, R: SqlRunner>(
    runner: &mut R,
    key: &M::Key,
) -> Result<Vec<AuditedChange<M>>> {
    let table = M::table()?;
    history(runner, &M::audit_log(), &table, &key.to_stored_key())
        .await?
        .into_iter()
        .map(AuditedChange::from_change)
        .collect()
}

/// The row of `M` with this key as it was at `at`, or `None` when it did not exist then.
///
/// # Errors
///
/// As [`row_as_of`], and [`Error::ModelField`] when the image does not fit the model.
pub async fn model_as_of<M: Audited, R: SqlRunner>(
    runner: &mut R,
    key: &M::Key,
    at: DateTime<Utc>,
) -> Result<Option<M>> {
    let table = M::table()?;
    let row = row_as_of(runner, &M::audit_log(), &table, &key.to_stored_key(), at).await?;
    row.map(|mut image| {
        mask(&mut image, M::IGNORED, M::REDACTED);
        M::from_row(&image)
    })
    .transpose()
}

/// Every row of `M`'s table as it was at `at`, including rows deleted since.
///
/// # Errors
///
/// As [`table_as_of`], and [`Error::ModelField`] when an image does not fit the model.
pub async fn model_all_as_of<M: Audited, R: SqlRunner>(
    runner: &mut R,
    at: DateTime<Utc>,
) -> Result<Vec<M>> {
    let table = M::table()?;
    table_as_of(runner, &M::audit_log(), &table, at)
        .await?
        .into_iter()
        .map(|mut image| {
            mask(&mut image, M::IGNORED, M::REDACTED);
            M::from_row(&image)
        })
        .collect()
}
