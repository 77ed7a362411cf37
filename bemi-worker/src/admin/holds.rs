//! Legal holds: while a hold is in force, `retention` keeps every partition holding changes it
//! covers (all changes, or one table's), archived or not.

use bemi_core::QualifiedName;
use chrono::{DateTime, Utc};

use crate::{ConnectionOptions, Error, Result};

/// A legal hold, as stored in `bemi.legal_holds`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LegalHold {
    /// Its id.
    pub id: i64,
    /// The table whose changes it keeps; `None`: every change.
    pub table: Option<QualifiedName>,
    /// Until when it holds.
    pub held_until: DateTime<Utc>,
    /// Why (a case number, a request).
    pub reason: String,
    /// The role that placed it.
    pub created_by: String,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
}

/// Places a hold on the changes of `table` (or on every change) until `until`; returns its id.
///
/// # Errors
///
/// An empty reason or a date in the past ([`Error::Config`]), and database errors (the
/// destination must have been set up by this version: `bemi.legal_holds`).
pub async fn place_hold(
    destination: &ConnectionOptions,
    table: Option<&QualifiedName>,
    until: DateTime<Utc>,
    reason: &str,
) -> Result<i64> {
    if reason.trim().is_empty() {
        return Err(Error::Config("a legal hold needs a reason".into()));
    }
    if until <= Utc::now() {
        return Err(Error::Config(format!(
            "a legal hold until {} would already be over",
            until.to_rfc3339()
        )));
    }
    let client = destination.connect("bemi-worker hold").await?;
    let id = client
        .query_one(
            "INSERT INTO bemi.legal_holds (schema_name, table_name, held_until, reason) \
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[
                &table.map(QualifiedName::schema),
                &table.map(QualifiedName::name),
                &until,
                &reason,
            ],
        )
        .await
        .map_err(Error::postgres("place the legal hold"))?
        .get(0);
    Ok(id)
}

/// Ends hold `id` now (the row stays, with its end moved to now: the record of the hold is
/// kept). Returns whether it was in force.
///
/// # Errors
///
/// Database errors.
pub async fn release_hold(destination: &ConnectionOptions, id: i64) -> Result<bool> {
    let client = destination.connect("bemi-worker hold").await?;
    let updated = client
        .execute(
            "UPDATE bemi.legal_holds SET held_until = pg_catalog.now() \
             WHERE id = $1 AND held_until > pg_catalog.now()",
            &[&id],
        )
        .await
        .map_err(Error::postgres("release the legal hold"))?;
    Ok(updated == 1)
}

/// Every hold, in force or ended, newest first.
///
/// # Errors
///
/// Database errors.
pub async fn legal_holds(destination: &ConnectionOptions) -> Result<Vec<LegalHold>> {
    let client = destination.connect("bemi-worker hold").await?;
    let rows = client
        .query(
            "SELECT id, schema_name, table_name, held_until, reason, created_by, created_at \
             FROM bemi.legal_holds ORDER BY id DESC",
            &[],
        )
        .await
        .map_err(Error::postgres("read the legal holds"))?;
    let mut holds = Vec::with_capacity(rows.len());
    for row in rows {
        holds.push(LegalHold {
            id: row.get(0),
            table: held_table(row.get(1), row.get(2))?,
            held_until: row.get(3),
            reason: row.get(4),
            created_by: row.get(5),
            created_at: row.get(6),
        });
    }
    Ok(holds)
}

/// The table a hold covers, from its `schema_name` and `table_name` (both NULL: every change).
pub(crate) fn held_table(
    schema: Option<String>,
    table: Option<String>,
) -> Result<Option<QualifiedName>> {
    Ok(match (schema, table) {
        (Some(schema), Some(table)) => Some(QualifiedName::new(&schema, &table)?),
        _ => None,
    })
}
