//! [`Change`] and [`Operation`]: one row of the `changes` table.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Context, Error, Image, Result};

/// What happened to a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    /// The row was inserted (`INSERT`, or the insert of an upsert or `MERGE`).
    Create,
    /// The row was updated.
    Update,
    /// The row was deleted.
    Delete,
    /// The table was truncated (one change per table, without row values).
    Truncate,
    /// The row as it was when `bemi-worker snapshot` recorded the table: a baseline for time
    /// travel, not a write (`after` holds the row, `before` is empty).
    Snapshot,
    /// The table's shape changed (`CREATE`, `ALTER`, `DROP TABLE`, a table entering or leaving
    /// tracking): `before` and `after` are the shapes (`columns` with names, types and value
    /// kinds, `key`, `replica_identity`, `partition_root`, `schema_name`, `table_name`), `after`
    /// also holds the `command` and, unless setup was told not to record them, the `statement`;
    /// `primary_key` is empty. Never part of a row's history.
    Ddl,
}

impl Operation {
    /// The name stored in the `operation` column: `CREATE`, `UPDATE`, `DELETE`, `TRUNCATE`,
    /// `SNAPSHOT` or `DDL`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Truncate => "TRUNCATE",
            Operation::Snapshot => "SNAPSHOT",
            Operation::Ddl => "DDL",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "CREATE" => Ok(Operation::Create),
            "UPDATE" => Ok(Operation::Update),
            "DELETE" => Ok(Operation::Delete),
            "TRUNCATE" => Ok(Operation::Truncate),
            "SNAPSHOT" => Ok(Operation::Snapshot),
            "DDL" => Ok(Operation::Ddl),
            other => Err(Error::UnknownOperation(other.to_owned())),
        }
    }
}

/// One row change as stored in the `changes` table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Identifies the change; the same when the change is delivered twice.
    pub id: Uuid,
    /// The row's primary key: the value's text for a one-column key, a JSON array of the values'
    /// texts for a composite key (`["7","2024-01-01"]`), `None` for tables without a primary key
    /// and for TRUNCATE.
    pub primary_key: Option<String>,
    /// For an UPDATE that changed the row's primary key: the key before it (in `primary_key`'s
    /// format); `None` otherwise.
    #[serde(default)]
    pub previous_primary_key: Option<String>,
    /// The row before the change (empty for CREATE and TRUNCATE).
    pub before: Image,
    /// The row after the change (empty for DELETE and TRUNCATE).
    pub after: Image,
    /// The application context of the statement that made the change (empty when none).
    pub context: Context,
    /// The source database.
    pub database: String,
    /// The table's schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// What happened.
    pub operation: Operation,
    /// When the transaction committed.
    pub committed_at: DateTime<Utc>,
    /// When the worker received the change.
    pub queued_at: DateTime<Utc>,
    /// The source transaction's id, epoch-extended to 64 bits (as `pg_current_xact_id()`
    /// shows it), so it never repeats across wraparounds of the 32-bit counter.
    pub transaction_id: i64,
    /// The WAL position (LSN) of the change.
    pub position: i64,
    /// The WAL position (LSN) of the transaction's commit: changes in commit order sort by
    /// (`commit_lsn`, `sequence`).
    pub commit_lsn: i64,
    /// The change's index within its transaction, from 0.
    pub sequence: i32,
    /// When the change was stored.
    pub created_at: DateTime<Utc>,
}

impl Change {
    /// The names of the columns whose value differs between `before` and `after` (for UPDATE;
    /// every column of the one image that exists for CREATE and DELETE), sorted.
    ///
    /// # Examples
    ///
    /// ```
    /// # use bemi_core::{Change, Context, Operation};
    /// # use serde_json::json;
    /// # let at = chrono::Utc::now();
    /// # let mut change = Change {
    /// #     id: uuid::Uuid::nil(), primary_key: Some("1".into()), previous_primary_key: None,
    /// #     before: Default::default(),
    /// #     after: Default::default(), context: Context::new(), database: "app".into(),
    /// #     schema: "public".into(), table: "todo".into(), operation: Operation::Update,
    /// #     committed_at: at, queued_at: at, transaction_id: 1, position: 1, commit_lsn: 1,
    /// #     sequence: 0, created_at: at,
    /// # };
    /// change.before = serde_json::from_value(json!({"id": 1, "task": "Sleep", "done": false}))?;
    /// change.after = serde_json::from_value(json!({"id": 1, "task": "Sleep", "done": true}))?;
    /// assert_eq!(change.changed_fields(), ["done"]);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn changed_fields(&self) -> Vec<&str> {
        let mut fields: Vec<&str> = self
            .before
            .columns()
            .chain(self.after.columns())
            .filter(|key| self.before.get(key) != self.after.get(key))
            .collect();
        fields.sort_unstable();
        fields.dedup();
        fields
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_round_trip() {
        for operation in [
            Operation::Create,
            Operation::Update,
            Operation::Delete,
            Operation::Truncate,
            Operation::Snapshot,
            Operation::Ddl,
        ] {
            assert_eq!(operation.as_str().parse::<Operation>().unwrap(), operation);
            assert_eq!(
                serde_json::to_string(&operation).unwrap(),
                format!("\"{operation}\"")
            );
        }
        assert!(matches!(
            "INSERT".parse::<Operation>(),
            Err(Error::UnknownOperation(name)) if name == "INSERT"
        ));
    }
}
