//! What the WAL does not say about a relation, read from the source's catalog: its real primary
//! key, and how to convert values of non-built-in types (domains, enums, arrays of those).

use std::collections::HashMap;
use std::sync::Arc;

use bemi_core::policy::{ColumnAction, ColumnFlags, ColumnPattern, ColumnPolicies};

use crate::source::pgoutput::Relation;
use crate::source::recorded_shape::RecordedShape;
use crate::stitch::values::ValueKind;
use crate::{Error, Result};

/// A relation ready for turning its tuples into changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RelationInfo {
    pub(crate) id: u32,
    pub(crate) schema: Arc<str>,
    pub(crate) table: Arc<str>,
    /// Column names, in order.
    pub(crate) columns: Vec<String>,
    /// How each column's values become JSON.
    pub(crate) kinds: Vec<ValueKind>,
    /// Columns whose type the catalog no longer has (dropped since the Relation message):
    /// their kind comes from the recorded shape when there is one, else they are text.
    pub(crate) types_gone: Vec<bool>,
    /// Positions of the primary-key columns, in key order; empty when the table has none.
    pub(crate) key: Vec<usize>,
    /// Whether each column is part of the replica identity (what a key-only old image holds).
    pub(crate) identity: Vec<bool>,
    /// Key columns the stream does not carry (generated columns before PostgreSQL 18): the
    /// changes' key cannot be rendered and is marked so.
    pub(crate) key_unavailable: Vec<String>,
    /// For a partition: its own name (`schema.table`), while `schema` and `table` name the
    /// partitioned table it belongs to, under which its changes are reported.
    pub(crate) partition: Option<Arc<str>>,
    /// The column policies that apply to each column (never redact or drop on key columns).
    pub(crate) flags: Vec<ColumnFlags>,
}

impl RelationInfo {
    /// Takes the key and the kinds of columns whose type is gone from a recorded schema version
    /// (`bemi.schema_versions`: the shape as of the change's position), by name, over what the
    /// catalog says now.
    pub(crate) fn apply_recorded_shape(&mut self, shape: &RecordedShape, relation: &Relation) {
        // Under which table the changes are reported: the partitioned table the relation
        // belonged to then (attached or detached since).
        match &shape.partition_root {
            Some(Some((schema, table))) => {
                self.schema = Arc::from(schema.as_str());
                self.table = Arc::from(table.as_str());
                self.partition = Some(Arc::from(
                    format!("{}.{}", relation.namespace, relation.name).as_str(),
                ));
            }
            Some(None) => {
                self.schema = Arc::from(relation.namespace.as_str());
                self.table = Arc::from(relation.name.as_str());
                self.partition = None;
            }
            None => {}
        }
        for (position, column) in self.columns.iter().enumerate() {
            if self.types_gone.get(position).copied().unwrap_or(false)
                && let Some(kind) = shape.kinds.get(column)
            {
                self.kinds[position] = kind.clone();
            }
        }
        self.apply_recorded_key(&shape.key);
    }

    fn apply_recorded_key(&mut self, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let positions: Vec<Option<usize>> = names
            .iter()
            .map(|name| self.columns.iter().position(|column| column == name))
            .collect();
        self.key_unavailable = names
            .iter()
            .zip(&positions)
            .filter(|(_, position)| position.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        self.key = if self.key_unavailable.is_empty() {
            positions.into_iter().flatten().collect()
        } else {
            Vec::new()
        };
    }

    /// Whether some column is noise (UPDATEs changing only noise columns are skipped).
    pub(crate) fn has_noise(&self) -> bool {
        self.flags.iter().any(|flags| flags.noise)
    }
}

/// Reads and caches catalog facts through a regular connection to the source database.
pub(crate) struct Catalog {
    client: tokio_postgres::Client,
    types: HashMap<u32, ValueKind>,
    /// The worker's configured column policies.
    policies: ColumnPolicies,
    /// Whether `bemi.column_policies` exists (a setup from before column policies has none).
    stored_policies: Option<bool>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("types", &self.types.len())
            .finish_non_exhaustive()
    }
}

/// The key columns of relation `$1`, in key order, by the rule setup also records shapes with
/// (`bemi_core::setup::key_index_sql`).
fn key_query() -> String {
    format!(
        "WITH chosen AS ({}) \
         SELECT a.attname::text FROM chosen c \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = $1 AND a.attnum = ANY (c.columns[0:c.key_count - 1]) \
         ORDER BY pg_catalog.array_position(c.columns, a.attnum)",
        bemi_core::setup::key_index_sql("$1")
    )
}

/// Whether the 32-bit `xid` $1 is visible to a new snapshot; the epoch is taken from the
/// snapshot's xmax (an xid above xmax's low bits belongs to the previous epoch).
const VISIBLE: &str = "SELECT pg_catalog.pg_visible_in_snapshot(\
    (((x.xmax >> 32) << 32) + $1::bigint \
      - CASE WHEN $1::bigint > (x.xmax & 4294967295) THEN 4294967296 ELSE 0 END)::text::xid8, s.snap) \
    FROM (SELECT pg_catalog.pg_current_snapshot() AS snap) s, \
    LATERAL (SELECT pg_catalog.pg_snapshot_xmax(s.snap)::text::bigint AS xmax) x";

/// The partitioned tables and inheritance parents above relation $1, nearest first.
const ANCESTORS: &str = "WITH RECURSIVE up (oid, depth) AS ( \
        SELECT i.inhparent, 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = $1 \
        UNION \
        SELECT i.inhparent, up.depth + 1 FROM pg_catalog.pg_inherits i JOIN up ON i.inhrelid = up.oid \
        WHERE up.depth < 64) \
    SELECT n.nspname::text, c.relname::text FROM up \
    JOIN pg_catalog.pg_class c ON c.oid = up.oid \
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    ORDER BY up.depth";

/// The partitioned table at the top of relation $1's partition tree, when $1 is a partition.
const PARTITION_ROOT: &str = "SELECT n.nspname::text, c.relname::text \
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.oid = pg_catalog.pg_partition_root($1::oid::regclass) AND c.oid <> $1";

/// The stored policies of one table.
const STORED_POLICIES: &str = "SELECT column_name::text, action FROM bemi.column_policies \
    WHERE schema_name = $1 AND table_name = $2";

const TYPES: &str = "SELECT t.oid, t.typtype::text, t.typcategory::text, t.typelem, \
    t.typbasetype, e.typdelim::text \
    FROM pg_catalog.pg_type t \
    LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem \
    WHERE t.oid = ANY ($1)";

impl Catalog {
    pub(crate) fn new(client: tokio_postgres::Client, policies: ColumnPolicies) -> Self {
        Self {
            client,
            types: HashMap::new(),
            policies,
            stored_policies: None,
        }
    }

    /// The policies of a table: the configured ones and those stored in
    /// `bemi.column_policies` (from `Audited` models).
    async fn table_policies(&mut self, schema: &str, table: &str) -> Result<ColumnPolicies> {
        let mut policies = self.policies.clone();
        let exists = match self.stored_policies {
            Some(exists) => exists,
            None => {
                let exists: bool = self
                    .client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c \
                         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = 'bemi' AND c.relname = 'column_policies')",
                        &[],
                    )
                    .await
                    .map_err(Error::postgres("look for bemi.column_policies"))?
                    .get(0);
                self.stored_policies = Some(exists);
                exists
            }
        };
        if !exists {
            return Ok(policies);
        }
        let rows = self
            .client
            .query(STORED_POLICIES, &[&schema, &table])
            .await
            .map_err(Error::postgres(format!(
                "read the column policies of {schema}.{table}"
            )))?;
        for row in rows {
            let column: String = row.get(0);
            let action: String = row.get(1);
            match action.parse::<ColumnAction>() {
                Ok(action) => policies.add(ColumnPattern::exact(schema, table, &column), action),
                Err(error) => {
                    tracing::warn!(%error, schema, table, column, "ignoring a stored column policy")
                }
            }
        }
        Ok(policies)
    }

    /// Forgets what is known about the stored policies: the next [`Catalog::describe`] reads
    /// them again (called when the stream shows `bemi.column_policies` changed).
    pub(crate) fn forget_policies(&mut self) {
        self.stored_policies = None;
    }

    /// The connection (also used for status queries).
    pub(crate) fn client(&self) -> &tokio_postgres::Client {
        &self.client
    }

    /// Waits until transaction `xid` is visible to new snapshots of the catalog connection.
    ///
    /// The server streams a transaction once its commit record is flushed, which can be a
    /// moment before the committing session makes it visible to others. A Relation message
    /// re-sent after DDL in that same transaction must be described from the catalog as that
    /// transaction left it. Gives up (with a warning) after 5 seconds.
    async fn wait_visible(&self, xid: u32) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let visible: bool = self
                .client
                .query_one(VISIBLE, &[&i64::from(xid)])
                .await
                .map_err(Error::postgres("check a transaction's visibility"))?
                .get(0);
            if visible {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                tracing::warn!(
                    xid,
                    "transaction still invisible after 5 s: describing the relation from the current catalog"
                );
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Describes a relation from its Relation message and the catalog, as transaction `xid`
    /// (the one being streamed) left it.
    ///
    /// The primary key comes from the catalog (a table whose replica identity is `FULL` marks
    /// every column as key in the WAL). When the catalog has no primary key (no key, or the
    /// table is gone by now), the replica identity key columns are used if the WAL marks a
    /// proper subset of the columns.
    pub(crate) async fn describe(
        &mut self,
        relation: &Relation,
        xid: Option<u32>,
    ) -> Result<RelationInfo> {
        if let Some(xid) = xid {
            self.wait_visible(xid).await?;
        }
        let type_ids: Vec<u32> = relation
            .columns
            .iter()
            .map(|column| column.type_id)
            .collect();
        self.resolve_types(&type_ids).await?;
        let types_gone: Vec<bool> = type_ids
            .iter()
            .map(|type_id| !self.types.contains_key(type_id))
            .collect();
        let kinds = type_ids
            .iter()
            .map(|type_id| self.types.get(type_id).cloned().unwrap_or(ValueKind::Text))
            .collect();
        let columns: Vec<String> = relation
            .columns
            .iter()
            .map(|column| column.name.clone())
            .collect();

        let key_names: Vec<String> = self
            .client
            .query(&key_query(), &[&relation.id])
            .await
            .map_err(Error::postgres(format!(
                "read the primary key of {}.{}",
                relation.namespace, relation.name
            )))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let mut key: Vec<usize> = key_names
            .iter()
            .filter_map(|name| columns.iter().position(|column| column == name))
            .collect();
        // Key columns the stream does not carry (a generated column: PostgreSQL publishes them
        // from version 18 on): the key cannot be rendered, and the changes say so.
        let key_unavailable: Vec<String> = key_names
            .iter()
            .filter(|name| !columns.contains(name))
            .cloned()
            .collect();
        if !key_unavailable.is_empty() {
            key.clear();
        }
        if key_names.is_empty() {
            let flagged: Vec<usize> = relation
                .columns
                .iter()
                .enumerate()
                .filter(|(_, column)| column.is_key)
                .map(|(position, _)| position)
                .collect();
            if !flagged.is_empty() && flagged.len() < columns.len() {
                key = flagged;
            }
        }

        // A policy written for a partitioned table or an inheritance parent covers its
        // partitions and children: the changes arrive under their own names.
        let mut names = vec![(relation.namespace.clone(), relation.name.clone())];
        names.extend(
            self.client
                .query(ANCESTORS, &[&relation.id])
                .await
                .map_err(Error::postgres(format!(
                    "read the parents of {}.{}",
                    relation.namespace, relation.name
                )))?
                .iter()
                .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1))),
        );
        let mut policies = Vec::with_capacity(names.len());
        for (schema, table) in &names {
            policies.push((schema, table, self.table_policies(schema, table).await?));
        }
        let flags = columns
            .iter()
            .enumerate()
            .map(|(position, column)| {
                let mut flags = ColumnFlags::default();
                for (schema, table, policies) in &policies {
                    let found = policies.for_column(schema, table, column);
                    flags.redact |= found.redact;
                    flags.drop |= found.drop;
                    flags.noise |= found.noise;
                    flags.personal |= found.personal;
                }
                if key.contains(&position) && (flags.redact || flags.drop || flags.personal) {
                    tracing::warn!(
                        table = %relation.name, column,
                        "primary-key columns are never redacted, dropped or erased: policy ignored"
                    );
                    flags.redact = false;
                    flags.drop = false;
                    flags.personal = false;
                }
                flags
            })
            .collect();
        // A partition is one table to its users: its changes are reported under the partitioned
        // table's name, the partition kept in the change.
        let root = self
            .client
            .query_opt(PARTITION_ROOT, &[&relation.id])
            .await
            .map_err(Error::postgres(format!(
                "read the partitioned table of {}.{}",
                relation.namespace, relation.name
            )))?
            .map(|row| (row.get::<_, String>(0), row.get::<_, String>(1)));
        let (schema, table, partition) = match root {
            Some((schema, table)) => (
                schema,
                table,
                Some(Arc::from(
                    format!("{}.{}", relation.namespace, relation.name).as_str(),
                )),
            ),
            None => (relation.namespace.clone(), relation.name.clone(), None),
        };
        Ok(RelationInfo {
            key_unavailable,
            partition,
            identity: relation
                .columns
                .iter()
                .map(|column| column.is_key)
                .collect(),
            id: relation.id,
            schema: Arc::from(schema.as_str()),
            table: Arc::from(table.as_str()),
            columns,
            kinds,
            types_gone,
            key,
            flags,
        })
    }

    /// Resolves the value kinds of `type_ids` (and, recursively, of array elements and domain
    /// base types) into the cache.
    async fn resolve_types(&mut self, type_ids: &[u32]) -> Result<()> {
        let mut pending: Vec<u32> = type_ids
            .iter()
            .copied()
            .filter(|id| !self.types.contains_key(id))
            .collect();
        let mut rows: HashMap<u32, TypeRow> = HashMap::new();
        // Fetch unknown types level by level (arrays → elements, domains → base types).
        while !pending.is_empty() {
            pending.sort_unstable();
            pending.dedup();
            for id in pending.iter().copied() {
                if let Some(kind) = ValueKind::builtin(id) {
                    self.types.insert(id, kind);
                }
            }
            pending.retain(|id| !self.types.contains_key(id) && !rows.contains_key(id));
            if pending.is_empty() {
                break;
            }
            let fetched = self
                .client
                .query(TYPES, &[&pending])
                .await
                .map_err(Error::postgres("read column types"))?;
            let mut next = Vec::new();
            for row in fetched {
                let type_row = TypeRow {
                    kind: row.get::<_, String>(1),
                    category: row.get::<_, String>(2),
                    element: row.get(3),
                    base: row.get(4),
                    delimiter: row.get::<_, Option<String>>(5),
                };
                if type_row.element != 0 {
                    next.push(type_row.element);
                }
                if type_row.base != 0 {
                    next.push(type_row.base);
                }
                rows.insert(row.get(0), type_row);
            }
            pending = next;
        }
        for id in type_ids {
            if !self.types.contains_key(id)
                && let Some(kind) = self.kind_of(*id, &rows, 0)
            {
                self.types.insert(*id, kind);
            }
        }
        Ok(())
    }

    /// The kind of type `id`; `None` when the catalog does not have it (or a type it is built
    /// on) any more.
    fn kind_of(&self, id: u32, rows: &HashMap<u32, TypeRow>, depth: usize) -> Option<ValueKind> {
        if let Some(kind) = self.types.get(&id) {
            return Some(kind.clone());
        }
        if depth >= 16 {
            return Some(ValueKind::Text);
        }
        let row = rows.get(&id)?;
        if row.kind == "d" && row.base != 0 {
            return self.kind_of(row.base, rows, depth + 1);
        }
        if row.category == "A" && row.element != 0 {
            let delimiter = row
                .delimiter
                .as_deref()
                .and_then(|text| text.bytes().next())
                .unwrap_or(b',');
            return Some(ValueKind::Array {
                element: Box::new(self.kind_of(row.element, rows, depth + 1)?),
                delimiter,
            });
        }
        Some(ValueKind::Text)
    }
}

#[derive(Debug)]
struct TypeRow {
    kind: String,
    category: String,
    element: u32,
    base: u32,
    delimiter: Option<String>,
}
