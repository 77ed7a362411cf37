//! Snapshots: recording the current rows of tracked tables once, through the WAL, so time travel
//! knows rows that never changed since setup.
//!
//! `bemi.snapshot_table` (installed by setup, see `bemi_core::setup`) emits a header message and
//! one message per row, at one WAL position consistent with the stream; the worker stores each
//! row as a `SNAPSHOT` change.

use std::time::Duration;

use bemi_core::QualifiedName;
use serde::Deserialize;

use crate::source::pgoutput::{Column, Relation};
use crate::{ConnectionOptions, Error, Result};

/// The header message of one table's snapshot.
#[derive(Debug, Deserialize)]
pub(crate) struct SnapshotHeader {
    relation: u32,
    schema: String,
    table: String,
    #[serde(default)]
    columns: Vec<(String, u32)>,
    /// The rows were written by the statement that created the table (`CREATE TABLE AS`,
    /// `SELECT INTO`), before it was tracked: they are that statement's CREATE changes.
    #[serde(default)]
    created: bool,
}

impl SnapshotHeader {
    /// Parses a `_bemi_snapshot` message.
    pub(crate) fn parse(content: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(content)
    }

    /// The operation the rows are stored as.
    pub(crate) fn operation(&self) -> bemi_core::Operation {
        if self.created {
            bemi_core::Operation::Create
        } else {
            bemi_core::Operation::Snapshot
        }
    }

    /// The table described as a Relation message would describe it.
    pub(crate) fn relation(&self) -> Relation {
        Relation {
            id: self.relation,
            namespace: self.schema.clone(),
            name: self.table.clone(),
            replica_identity: b'f',
            columns: self
                .columns
                .iter()
                .map(|(name, type_id)| Column {
                    is_key: false,
                    name: name.clone(),
                    type_id: *type_id,
                    type_modifier: -1,
                })
                .collect(),
        }
    }
}

/// Parses a `_bemi_snapshot_row` message: the columns' texts (NULL as `None`).
pub(crate) fn parse_row(content: &[u8]) -> serde_json::Result<Vec<Option<String>>> {
    serde_json::from_slice(content)
}

/// Records the current rows of `tables` (default: every table of the publication), one
/// transaction per table, each holding the table's SHARE lock (writers wait) while its rows are
/// read. Returns each table with its number of rows.
///
/// Run it once after `setup`, while or before the worker runs: the rows reach the `changes`
/// table through the slot like any change.
///
/// # Errors
///
/// A table that is not in the publication (its snapshot would be the only thing ever recorded
/// of it), a lock not obtained within `lock_timeout`, missing privileges (locking needs UPDATE,
/// DELETE or TRUNCATE on the table), and connection failures.
pub async fn snapshot(
    source: &ConnectionOptions,
    publication: &str,
    tables: &[QualifiedName],
    lock_timeout: Duration,
) -> Result<Vec<(QualifiedName, u64)>> {
    let mut client = source.connect("bemi-worker snapshot").await?;
    let published: Vec<QualifiedName> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables \
             WHERE pubname = $1 AND schemaname <> 'bemi' ORDER BY 1, 2",
            &[&publication],
        )
        .await
        .map_err(Error::postgres("list the publication's tables"))?
        .iter()
        .map(|row| QualifiedName::new(row.get::<_, String>(0), row.get::<_, String>(1)))
        .collect::<bemi_core::Result<_>>()?;
    let chosen = if tables.is_empty() {
        published
    } else {
        if let Some(missing) = tables.iter().find(|table| !published.contains(table)) {
            return Err(Error::Config(format!(
                "table {missing} is not tracked (not in publication {publication:?}): run setup for it first"
            )));
        }
        tables.to_vec()
    };
    let mut counts = Vec::with_capacity(chosen.len());
    for table in chosen {
        let transaction = client
            .transaction()
            .await
            .map_err(Error::postgres("begin a snapshot transaction"))?;
        transaction
            .execute(
                "SELECT pg_catalog.set_config('lock_timeout', $1, true)",
                &[&format!("{}ms", lock_timeout.as_millis())],
            )
            .await
            .map_err(Error::postgres("set lock_timeout"))?;
        let rows: i64 = transaction
            .query_one(
                "SELECT bemi.snapshot_table($1::text::regclass)",
                &[&table.to_string()],
            )
            .await
            .map_err(Error::postgres(format!("snapshot {table}")))?
            .get(0);
        transaction
            .commit()
            .await
            .map_err(Error::postgres(format!("commit the snapshot of {table}")))?;
        tracing::info!(%table, rows, "snapshot recorded");
        counts.push((table, u64::try_from(rows).unwrap_or_default()));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_rows_parse() {
        let header = SnapshotHeader::parse(
            br#"{"relation": 16384, "schema": "public", "table": "todo", "columns": [["id", 23], ["task", 25]]}"#,
        )
        .unwrap();
        let relation = header.relation();
        assert_eq!(relation.id, 16384);
        assert_eq!(relation.columns[1].name, "task");
        assert_eq!(relation.columns[1].type_id, 25);
        assert_eq!(
            parse_row(br#"["1", null]"#).unwrap(),
            vec![Some("1".to_owned()), None]
        );
        assert!(parse_row(b"{not json").is_err());
        assert!(SnapshotHeader::parse(br#"{"relation": "x"}"#).is_err());
    }
}
