//! [`ChangeQuery`]: filtering, ordering and paging the `changes` table.
//!
//! Changes are ordered by commit time, then by their position in the WAL (`commit_lsn`, then
//! `sequence` within the transaction), then by id: a total order, so keyset pagination
//! ([`ChangeQuery::after_cursor`]) never skips or repeats a change. Every filter is a bound
//! parameter; the plans use the `changes` indexes (`(table, primary_key, committed_at)`,
//! `committed_at`, `transaction_id`, and the GIN index on stored contexts for containment).

pub(crate) mod read;
pub(crate) mod runner;
pub mod time_travel;
#[cfg(feature = "tokio-postgres")]
pub(crate) mod tokio_postgres_runner;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use uuid::Uuid;

pub(crate) use crate::query::read::{READ_FUNCTION, READ_PARAMETERS};
use crate::query::runner::{ROW_COLUMN, SqlParam, SqlRunner};
use crate::{AuditLog, Change, Context, Error, Operation, QualifiedName, Result};

/// The direction of a [`ChangeQuery`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    #[default]
    OldestFirst,
    /// Newest first.
    NewestFirst,
}

/// Where a change sits in the order of all changes: the keyset for pagination.
///
/// Its text form (`Display`/`FromStr`) is opaque and URL-safe, for API page tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeCursor {
    committed_at: DateTime<Utc>,
    commit_lsn: i64,
    sequence: i32,
    id: Uuid,
}

impl ChangeCursor {
    /// The cursor of a change.
    pub fn of(change: &Change) -> Self {
        Self {
            committed_at: change.committed_at,
            commit_lsn: change.commit_lsn,
            sequence: change.sequence,
            id: change.id,
        }
    }
}

impl fmt::Display for ChangeCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_{}_{}_{}",
            self.committed_at.timestamp_micros(),
            self.commit_lsn,
            self.sequence,
            self.id.simple()
        )
    }
}

impl FromStr for ChangeCursor {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = || Error::InvalidCursor(text.to_owned());
        let mut parts = text.split('_');
        let mut next = || parts.next().ok_or_else(invalid);
        let micros: i64 = next()?.parse().map_err(|_| invalid())?;
        let commit_lsn = next()?.parse().map_err(|_| invalid())?;
        let sequence = next()?.parse().map_err(|_| invalid())?;
        let id = Uuid::try_parse(next()?).map_err(|_| invalid())?;
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Self {
            committed_at: DateTime::from_timestamp_micros(micros).ok_or_else(invalid)?,
            commit_lsn,
            sequence,
            id,
        })
    }
}

/// A query on the `changes` table.
///
/// # Examples
///
/// ```
/// use bemi_core::{ChangeQuery, Context, Operation, Order, QualifiedName};
///
/// let query = ChangeQuery::new()
///     .table(QualifiedName::new("public", "todo")?)
///     .operations([Operation::Update, Operation::Delete])
///     .context_contains(Context::new().with("user_id", 187234))
///     .order(Order::NewestFirst)
///     .limit(50);
/// let (sql, params) = query.to_sql();
/// assert!(sql.contains("c.context @> $"));
/// assert_eq!(params.len(), 5);
/// # Ok::<(), bemi_core::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChangeQuery {
    log: AuditLog,
    database: Option<String>,
    schema: Option<String>,
    table: Option<String>,
    primary_key: Option<String>,
    operations: Vec<Operation>,
    ids: Vec<Uuid>,
    transaction_id: Option<i64>,
    context_contains: Option<Value>,
    before_contains: Option<Value>,
    after_contains: Option<Value>,
    changed_field: Option<String>,
    from: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    order: Order,
    limit: Option<u64>,
    cursor: Option<ChangeCursor>,
}

impl ChangeQuery {
    /// All changes in `bemi.changes`, oldest first.
    pub fn new() -> Self {
        Self::default()
    }

    /// The changes of `M`'s table, in `M`'s audit log.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdentifier`] when the model's schema or table name is invalid.
    pub fn of<M: crate::Audited>() -> Result<Self> {
        Self::new().for_model::<M>()
    }

    /// This query, restricted to `M`'s table in `M`'s audit log.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdentifier`] when the model's schema or table name is invalid.
    pub fn for_model<M: crate::Audited>(self) -> Result<Self> {
        Ok(self.log(M::audit_log()).table(M::table()?))
    }

    /// Reads from another `changes` table.
    #[must_use]
    pub fn log(mut self, log: AuditLog) -> Self {
        self.log = log;
        self
    }

    /// Only changes of this source database.
    #[must_use]
    pub fn database(mut self, database: impl Into<String>) -> Self {
        self.database = Some(database.into());
        self
    }

    /// Only changes of this table.
    #[must_use]
    pub fn table(mut self, table: QualifiedName) -> Self {
        self.schema = Some(table.schema().to_owned());
        self.table = Some(table.name().to_owned());
        self
    }

    /// Only changes of the row with this key, in the `primary_key` column's format (see
    /// [`crate::AuditKey::to_stored_key`]); includes the UPDATE that moved the row to another
    /// key, if any.
    #[must_use]
    pub fn primary_key(mut self, key: impl Into<String>) -> Self {
        self.primary_key = Some(key.into());
        self
    }

    /// Only these operations.
    #[must_use]
    pub fn operations(mut self, operations: impl IntoIterator<Item = Operation>) -> Self {
        self.operations = operations.into_iter().collect();
        self
    }

    /// Only changes with these ids.
    #[must_use]
    pub fn ids(mut self, ids: impl IntoIterator<Item = Uuid>) -> Self {
        self.ids = ids.into_iter().collect();
        self
    }

    /// Only changes of this source transaction.
    #[must_use]
    pub fn transaction_id(mut self, transaction_id: i64) -> Self {
        self.transaction_id = Some(transaction_id);
        self
    }

    /// Only changes whose context contains this one (`@>`: every key with an equal value;
    /// nested objects match partially).
    #[must_use]
    pub fn context_contains(mut self, context: Context) -> Self {
        self.context_contains = Some(context.into_value());
        self
    }

    /// Only changes whose `before` image contains this JSON (`@>`).
    #[must_use]
    pub fn before_contains(mut self, image: Value) -> Self {
        self.before_contains = Some(image);
        self
    }

    /// Only changes whose `after` image contains this JSON (`@>`).
    #[must_use]
    pub fn after_contains(mut self, image: Value) -> Self {
        self.after_contains = Some(image);
        self
    }

    /// Only changes that modified this column (its value differs between `before` and
    /// `after`; CREATE and DELETE modify every column of their image).
    #[must_use]
    pub fn changed_field(mut self, column: impl Into<String>) -> Self {
        self.changed_field = Some(column.into());
        self
    }

    /// Only changes committed at or after `from`.
    #[must_use]
    pub fn from(mut self, from: DateTime<Utc>) -> Self {
        self.from = Some(from);
        self
    }

    /// Only changes committed before `until`.
    #[must_use]
    pub fn until(mut self, until: DateTime<Utc>) -> Self {
        self.until = Some(until);
        self
    }

    /// The order (default oldest first).
    #[must_use]
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// At most this many changes.
    #[must_use]
    pub fn limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only changes after this one in the query's order: the next page.
    #[must_use]
    pub fn after_cursor(mut self, cursor: ChangeCursor) -> Self {
        self.cursor = Some(cursor);
        self
    }

    /// The `changes` table read.
    pub fn audit_log(&self) -> &AuditLog {
        &self.log
    }

    /// The SQL and its parameters. The query returns each change as a JSON document in the
    /// column `bemi_row`.
    pub fn to_sql(&self) -> (String, Vec<SqlParam>) {
        let mut params = Params::default();
        let mut conditions = Vec::new();
        if let Some(database) = &self.database {
            conditions.push(format!("c.database = {}", params.text(database)));
        }
        if let Some(schema) = &self.schema {
            conditions.push(format!("c.schema = {}", params.text(schema)));
        }
        if let Some(table) = &self.table {
            conditions.push(format!("c.\"table\" = {}", params.text(table)));
        }
        if let Some(key) = &self.primary_key {
            let key = params.text(key);
            conditions.push(format!(
                "(c.primary_key = {key} OR c.previous_primary_key = {key})"
            ));
        }
        if !self.operations.is_empty() {
            // Said as a constant, so that any plan (generic ones too) may use the index of a
            // table's changes other than updates and snapshots.
            if !self
                .operations
                .iter()
                .any(|op| matches!(op, Operation::Update | Operation::Snapshot))
            {
                conditions.push("c.operation NOT IN ('UPDATE', 'SNAPSHOT')".to_owned());
            }
            let names: Vec<&str> = self.operations.iter().map(|op| op.as_str()).collect();
            conditions.push(format!(
                "c.operation = ANY ({}::text[])",
                params.text(&format!("{{{}}}", names.join(",")))
            ));
        }
        if !self.ids.is_empty() {
            let ids: Vec<String> = self.ids.iter().map(Uuid::to_string).collect();
            conditions.push(format!(
                "c.id = ANY ({}::text::uuid[])",
                params.text(&format!("{{{}}}", ids.join(",")))
            ));
        }
        if let Some(transaction_id) = self.transaction_id {
            conditions.push(format!(
                "c.transaction_id = {}::bigint",
                params.text(&transaction_id.to_string())
            ));
        }
        // Most changes do not store their context (the change before them in the transaction
        // holds it): the transactions holding a matching context are found first, through the
        // stored table's GIN index, then their changes, each checked for the context. The
        // lookup drives the plan (a lateral subquery the planner cannot flatten): walking the
        // time index and probing each change would read the whole table for a rare context.
        let mut source = format!("{} c", self.log.changes_table());
        if let Some(context) = &self.context_contains {
            let context = params.text(&context.to_string());
            let stored = crate::setup::stored_changes_table(self.log.changes_table());
            let mut holders = format!(
                "SELECT DISTINCT h.transaction_id, h.committed_at FROM {stored} h \
                 WHERE h.context @> {context}::jsonb"
            );
            if let Some(from) = &self.from {
                holders.push_str(&format!(
                    " AND h.committed_at >= {}::timestamptz",
                    params.text(&timestamp(from))
                ));
            }
            if let Some(until) = &self.until {
                holders.push_str(&format!(
                    " AND h.committed_at < {}::timestamptz",
                    params.text(&timestamp(until))
                ));
            }
            source = format!(
                "({holders}) m CROSS JOIN LATERAL (SELECT * FROM {} v \
                 WHERE v.transaction_id = m.transaction_id AND v.committed_at = m.committed_at \
                 OFFSET 0) c",
                self.log.changes_table()
            );
            conditions.push(format!("c.context @> {context}::jsonb"));
        }
        for (column, image) in [
            ("\"before\"", &self.before_contains),
            ("\"after\"", &self.after_contains),
        ] {
            if let Some(image) = image {
                conditions.push(format!(
                    "c.{column} @> {}::jsonb",
                    params.text(&image.to_string())
                ));
            }
        }
        if let Some(column) = &self.changed_field {
            let column = params.text(column);
            conditions.push(format!(
                "(c.\"before\" -> {column}) IS DISTINCT FROM (c.\"after\" -> {column})"
            ));
        }
        if let Some(from) = &self.from {
            conditions.push(format!(
                "c.committed_at >= {}::timestamptz",
                params.text(&timestamp(from))
            ));
        }
        if let Some(until) = &self.until {
            conditions.push(format!(
                "c.committed_at < {}::timestamptz",
                params.text(&timestamp(until))
            ));
        }
        let (comparison, direction) = match self.order {
            Order::OldestFirst => (">", "ASC"),
            Order::NewestFirst => ("<", "DESC"),
        };
        if let Some(cursor) = &self.cursor {
            conditions.push(format!(
                "(c.committed_at, c.commit_lsn, c.sequence, c.id) {comparison} \
                 ({}::timestamptz, {}::bigint, {}::integer, {}::uuid)",
                params.text(&timestamp(&cursor.committed_at)),
                params.text(&cursor.commit_lsn.to_string()),
                params.text(&cursor.sequence.to_string()),
                params.text(&cursor.id.to_string()),
            ));
        }
        let mut sql =
            format!("SELECT pg_catalog.row_to_json(c)::text AS {ROW_COLUMN} FROM {source}");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(
            " ORDER BY c.committed_at {direction}, c.commit_lsn {direction}, \
             c.sequence {direction}, c.id {direction}"
        ));
        if let Some(limit) = self.limit {
            sql.push_str(&format!(
                " LIMIT {}::bigint",
                params.text(&limit.to_string())
            ));
        }
        (sql, params.into_vec())
    }

    /// Runs the query.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] from the runner; [`Error::InvalidRow`] when a row is not a change
    /// (the table is not a bemi `changes` table).
    pub async fn fetch<R: SqlRunner>(&self, runner: &mut R) -> Result<Vec<Change>> {
        let (sql, params) = self.to_sql();
        let rows = read::read_trail(runner, &sql, &params).await?;
        rows.into_iter()
            .map(|row| parse_change(row.as_deref()))
            .collect()
    }
}

impl ChangeQuery {
    /// Runs the query and types each change as `M` (see [`crate::AuditedChange`]).
    ///
    /// # Errors
    ///
    /// As [`ChangeQuery::fetch`], and [`Error::ModelField`] when an image does not fit `M`.
    pub async fn fetch_as<M: crate::Audited, R: SqlRunner>(
        &self,
        runner: &mut R,
    ) -> Result<Vec<crate::AuditedChange<M>>> {
        self.fetch(runner)
            .await?
            .into_iter()
            .map(crate::AuditedChange::from_change)
            .collect()
    }
}

/// Parses one change returned as JSON.
pub(crate) fn parse_change(row: Option<&str>) -> Result<Change> {
    serde_json::from_str(row.unwrap_or("null")).map_err(|source| Error::InvalidRow {
        what: "a change",
        source,
    })
}

/// A timestamp as a `timestamptz` literal text.
pub(crate) fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Collects text parameters and hands out their placeholders, each cast from `text` so the
/// parameter's type never depends on a driver's inference.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<SqlParam>);

impl Params {
    /// Adds a text parameter; returns `$n::text`.
    pub(crate) fn text(&mut self, value: &str) -> String {
        self.0.push(Some(value.to_owned()));
        format!("${}::text", self.0.len())
    }

    /// The parameters, in placeholder order.
    pub(crate) fn into_vec(self) -> Vec<SqlParam> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_a_parameter() {
        let hostile = "x'); DROP TABLE todo; --";
        let (sql, params) = ChangeQuery::new()
            .database(hostile)
            .primary_key(hostile)
            .changed_field(hostile)
            .context_contains(Context::new().with("who", hostile))
            .to_sql();
        assert!(!sql.contains("DROP"), "{sql}");
        assert_eq!(params.len(), 4);
        assert!(params.iter().flatten().all(|param| param.contains("DROP")));
    }

    #[test]
    fn a_query_with_every_filter_fits_the_read_function() {
        let id = Uuid::from_u128(1);
        let (_, params) = ChangeQuery::new()
            .database("db")
            .table(QualifiedName::new("public", "todo").unwrap())
            .primary_key("1")
            .operations([Operation::Create])
            .ids([id])
            .transaction_id(7)
            .context_contains(Context::new().with("who", "x"))
            .before_contains(serde_json::json!({"a": 1}))
            .after_contains(serde_json::json!({"a": 2}))
            .changed_field("a")
            .from(Utc::now())
            .until(Utc::now())
            .after_cursor(ChangeCursor {
                committed_at: Utc::now(),
                commit_lsn: 1,
                sequence: 0,
                id,
            })
            .limit(10)
            .to_sql();
        assert!(params.len() <= READ_PARAMETERS, "{}", params.len());
    }

    #[test]
    fn operations_and_ids_are_arrays() {
        let id = Uuid::from_u128(1);
        let (sql, params) = ChangeQuery::new()
            .operations([Operation::Create, Operation::Delete])
            .ids([id, id])
            .to_sql();
        assert!(
            sql.contains("c.operation = ANY ($1::text::text[])"),
            "{sql}"
        );
        assert_eq!(params[0].as_deref(), Some("{CREATE,DELETE}"));
        assert_eq!(
            params[1].as_deref(),
            Some("{00000000-0000-0000-0000-000000000001,00000000-0000-0000-0000-000000000001}")
        );
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let cursor = ChangeCursor {
            committed_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            commit_lsn: 987_654,
            sequence: 3,
            id: Uuid::from_u128(42),
        };
        assert_eq!(cursor.to_string().parse::<ChangeCursor>().unwrap(), cursor);
        for garbage in [
            "",
            "1_2_3",
            "a_b_c_d",
            "1_2_3_nope",
            "1_2_3_0000000000000000000000000000002a_9",
        ] {
            assert!(garbage.parse::<ChangeCursor>().is_err(), "{garbage}");
        }
    }

    #[test]
    fn pages_continue_in_the_query_direction() {
        let cursor = ChangeCursor {
            committed_at: DateTime::from_timestamp_micros(0).unwrap(),
            commit_lsn: 1,
            sequence: 0,
            id: Uuid::nil(),
        };
        let (newest, _) = ChangeQuery::new()
            .order(Order::NewestFirst)
            .after_cursor(cursor)
            .limit(10)
            .to_sql();
        assert!(newest.contains("(c.committed_at, c.commit_lsn, c.sequence, c.id) < ("));
        assert!(newest.contains("ORDER BY c.committed_at DESC"));
        let (oldest, _) = ChangeQuery::new().after_cursor(cursor).to_sql();
        assert!(oldest.contains(") > ("));
    }
}
