//! SQL for the destination database: the `changes` table and the worker's progress.

use crate::QualifiedName;
use crate::ident::{quote_ident, quote_literal};
use crate::setup::partitions::{self, Partitioning};

/// Columns of the table that stores changes (`<changes>_stored`; the `changes` view shows them
/// with Bemi's columns). Bemi's columns come first, in Bemi's order and meaning, then bemi-rs's
/// own: `commit_lsn` and `sequence` order changes exactly (commit order, then order within the
/// transaction) and identify a change across redeliveries; `previous_primary_key` is the old key
/// of an UPDATE that changed the key (time travel needs to know the old key is gone).
///
/// Three things make the stored table about half the size of Bemi's, and cheaper to write:
/// - row images are `json`, the worker's text as it is (a fifth smaller than `jsonb`, and
///   checked rather than rebuilt on the way in; the worker keeps any value `jsonb` would refuse
///   as a string, so the view's casts never fail);
/// - an UPDATE with a complete old row keeps in `after_changed` (`jsonb`) only the columns whose
///   value changed, and `after` is NULL (the full image is `before || after_changed`);
/// - `context` is NULL when it equals the context of the change right before it in the same
///   transaction, which the same writer stored (rows of one statement share their request's
///   context): the view takes it from the nearest change before it that holds one, found
///   through the partial index `<changes>_stored_context_holders`.
const CHANGES_COLUMNS: &str = r#"(
    @ID@ DEFAULT pg_catalog.gen_random_uuid(),
    primary_key text,
    "before" json NOT NULL DEFAULT '{}',
    "after" json DEFAULT '{}',
    context jsonb DEFAULT '{}',
    database text NOT NULL,
    schema text NOT NULL,
    "table" text NOT NULL,
    operation text NOT NULL CONSTRAINT @OPERATION_CHECK@ CHECK (operation IN (@OPERATIONS@)),
    committed_at timestamptz NOT NULL,
    queued_at timestamptz NOT NULL,
    transaction_id bigint NOT NULL,
    position bigint NOT NULL,
    commit_lsn bigint NOT NULL,
    sequence integer NOT NULL,
    previous_primary_key text,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    after_changed jsonb,
    personal jsonb,
    CONSTRAINT @AFTER_CHECK@ CHECK (("after" IS NULL) <> (after_changed IS NULL))@KEY@
)"#;

/// The operations the `changes` table accepts.
const OPERATIONS: &str = "'CREATE', 'UPDATE', 'DELETE', 'TRUNCATE', 'SNAPSHOT', 'DDL'";

const PROGRESS_TABLE: &str = "CREATE TABLE IF NOT EXISTS bemi.worker_progress (
    source text PRIMARY KEY,
    commit_lsn bigint NOT NULL,
    stored_changes integer NOT NULL,
    complete boolean NOT NULL,
    committed_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
";

/// Changes the `changes` table refused even with their values kept as text (the last resort of
/// "bad data never stops capture"): the change's JSON as bytes, its place in the source's WAL
/// and the reason. `bemi-worker status` counts them.
const REJECTED_TABLE: &str = "CREATE TABLE IF NOT EXISTS bemi.rejected (
    change_id uuid PRIMARY KEY,
    source text NOT NULL,
    commit_lsn bigint NOT NULL,
    position bigint NOT NULL,
    transaction_id bigint NOT NULL,
    schema text NOT NULL,
    \"table\" text NOT NULL,
    reason text NOT NULL,
    payload bytea NOT NULL,
    rejected_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()
);
";

/// The shapes of tracked tables as the stream recorded them (rows of the source's
/// `bemi.schema_versions`, one per change of shape, with the DDL statement's context): the
/// worker renders each change with the key its table had at the change's position, also after
/// a restart. A companion of `changes`, not in it: DDL is not a row change.
const SCHEMA_HISTORY_TABLE: &str = "CREATE TABLE IF NOT EXISTS bemi.schema_history (
    id uuid PRIMARY KEY,
    database text NOT NULL,
    commit_lsn bigint NOT NULL,
    sequence integer NOT NULL,
    committed_at timestamptz NOT NULL,
    transaction_id bigint NOT NULL,
    context jsonb NOT NULL,
    shape jsonb NOT NULL
);
";

/// The install script for the destination database.
pub(super) fn install(
    changes: &QualifiedName,
    owner_role: Option<&str>,
    partitioning: Partitioning,
    image_indexes: bool,
) -> String {
    let mut sql = String::new();
    sql.push_str("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);\n");
    sql.push_str("CREATE SCHEMA IF NOT EXISTS bemi;\n");
    if changes.schema() != crate::setup::BEMI_SCHEMA {
        let schema = quote_ident(changes.schema()).unwrap_or_default();
        sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {schema};\n"));
    }
    let stored = crate::setup::stored_changes_table(changes);
    sql.push_str(&refuse_old_layout(changes));
    sql.push_str(&changes_table(&stored, partitioning));
    // Tables made before personal data was erasable.
    sql.push_str(&format!(
        "ALTER TABLE {stored} ADD COLUMN IF NOT EXISTS personal jsonb;\n"
    ));
    sql.push_str(&changes_indexes(&stored));
    if image_indexes {
        // Analyzed once built: the planner estimates a containment by the expression's
        // statistics, and without them walks the time index instead (10 s against 30 ms on
        // 10 million changes).
        let index = quote_literal(&format!(
            "{}.{}",
            quote_ident(stored.schema()).unwrap_or_default(),
            quote_ident(&after_images_index(&stored)).unwrap_or_default()
        ));
        sql.push_str(&format!(
            "DO $bemi$\n\
             BEGIN\n    \
                 IF pg_catalog.to_regclass({index}) IS NULL THEN\n        \
                     EXECUTE {create};\n        \
                     EXECUTE {analyze};\n    \
                 END IF;\n\
             END\n\
             $bemi$;\n",
            create = quote_literal(&image_indexes_sql(&stored)),
            analyze = quote_literal(&format!("ANALYZE {stored}")),
        ));
    }
    sql.push_str(&changes_view(changes, &stored));
    sql.push_str(&companion_tables(changes, &stored, owner_role));
    sql.push_str(&partitions::register(&stored, partitioning));
    sql
}

/// Creates the table that stores changes (`stored`, see [`stored_changes_table`]) unless it
/// exists, partitioned by `committed_at` unless `partitioning` is `None`.
///
/// [`stored_changes_table`]: crate::setup::stored_changes_table
pub(super) fn changes_table(stored: &QualifiedName, partitioning: Partitioning) -> String {
    let table = stored.to_string();
    let constraint =
        |suffix: &str| quote_ident(&format!("{}_{suffix}", stored.name())).unwrap_or_default();
    let (id, key) = match partitioning {
        Partitioning::None => ("id uuid PRIMARY KEY", String::new()),
        _ => (
            "id uuid NOT NULL",
            format!(
                ",\n    CONSTRAINT {} PRIMARY KEY (id, committed_at)",
                constraint("pkey")
            ),
        ),
    };
    let partition_by = match partitioning {
        Partitioning::None => "",
        _ => " PARTITION BY RANGE (committed_at)",
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {table} {}{partition_by};\n",
        CHANGES_COLUMNS
            .replace("@ID@", id)
            .replace("@KEY@", &key)
            .replace("@OPERATION_CHECK@", &constraint("operation_check"))
            .replace("@AFTER_CHECK@", &constraint("after_check"))
            .replace("@OPERATIONS@", OPERATIONS)
    )
}

/// The `changes` view: every change with Bemi's columns and today's meaning (full `after`
/// images, every change's context), over the compact `stored` table. Reads that filter on
/// what the stored table indexes (table and key, time, transaction) use its indexes through
/// the view; a change's context is looked up only for the changes a query returns.
pub(crate) fn changes_view(changes: &QualifiedName, stored: &QualifiedName) -> String {
    format!(
        "CREATE OR REPLACE VIEW {changes} AS\n\
         SELECT s.id, s.primary_key, s.\"before\"::jsonb AS \"before\",\n    \
             COALESCE(s.\"after\"::jsonb, s.\"before\"::jsonb || s.after_changed) AS \"after\",\n    \
             COALESCE(s.context, (\n        \
                 SELECT h.context FROM {stored} h\n        \
                 WHERE h.transaction_id = s.transaction_id AND h.committed_at = s.committed_at\n          \
                   AND h.commit_lsn = s.commit_lsn AND h.database = s.database\n          \
                   AND h.sequence < s.sequence AND h.context IS NOT NULL\n        \
                 ORDER BY h.transaction_id DESC, h.sequence DESC LIMIT 1), '{{}}'::jsonb) AS context,\n    \
             s.database, s.schema, s.\"table\", s.operation, s.committed_at, s.queued_at,\n    \
             s.transaction_id, s.position, s.commit_lsn, s.sequence, s.previous_primary_key,\n    \
             s.created_at\n\
         FROM {stored} s;\n"
    )
}

/// Refuses a `changes` name that is a table: the layout of bemi-rs before 0.1 (full images, a
/// context per change), which this version neither writes nor converts.
fn refuse_old_layout(changes: &QualifiedName) -> String {
    let literal = changes.regclass_literal();
    format!(
        "DO $bemi$\n\
         BEGIN\n    \
             IF EXISTS (SELECT 1 FROM pg_catalog.pg_class c\n        \
                 WHERE c.oid = pg_catalog.to_regclass({literal}) AND c.relkind IN ('r', 'p')) THEN\n        \
                 RAISE EXCEPTION 'bemi: % is a table in the layout of bemi-rs before 0.1, which this version does not write', {literal}\n            \
                 USING HINT = 'Keep its changes by renaming it (ALTER TABLE ... RENAME TO ...), then run setup again: the changes are stored in a new table behind a view of that name.';\n    \
             END IF;\n\
         END\n\
         $bemi$;\n"
    )
}

/// The indexes of the table that stores changes (on a partitioned table, every partition gets
/// them; an equivalent index a partition already has is adopted, not built again).
pub(super) fn changes_indexes(stored: &QualifiedName) -> String {
    let table = stored.to_string();
    let index =
        |suffix: &str| quote_ident(&format!("{}_{suffix}", stored.name())).unwrap_or_default();
    let mut sql = String::new();
    sql.push_str(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {table} (\"table\", primary_key, committed_at);\n",
        index("key_idx")
    ));
    sql.push_str(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {table} (\"table\", previous_primary_key, committed_at) \
         WHERE previous_primary_key IS NOT NULL;\n",
        index("previous_key_idx")
    ));
    sql.push_str(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {table} (committed_at);\n",
        index("committed_at_idx")
    ));
    sql.push_str(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {table} (transaction_id);\n",
        index("transaction_id_idx")
    ));
    // A table's creations, deletions, truncations and changes of shape, newest first: rare
    // among its updates, so a page of them would otherwise walk back through every update.
    // Snapshots are left out (a snapshot is one change per row of the table).
    sql.push_str(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {table} (\"table\", committed_at) \
         WHERE operation NOT IN ('UPDATE', 'SNAPSHOT');\n",
        index("lifecycle_idx")
    ));
    // The changes that hold a context (the first of each statement, usually): the view finds
    // the context of the others here.
    sql.push_str(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {table} (transaction_id, sequence) \
         WHERE context IS NOT NULL;\n",
        index("context_holders")
    ));
    sql.push_str(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {table} USING gin (context jsonb_path_ops) \
         WHERE context IS NOT NULL;\n",
        index("context_idx")
    ));
    sql
}

/// The name of the GIN index of `after` images on `stored`; the one of `before` images ends in
/// `before_images_idx`.
pub(super) fn after_images_index(stored: &QualifiedName) -> String {
    format!("{}_after_images_idx", stored.name())
}

/// GIN indexes of the images as the view shows them (the expressions are the view's, so a
/// containment filter on `changes` uses them; see [`crate::setup::SetupOptions::image_indexes`]).
pub(super) fn image_indexes_sql(stored: &QualifiedName) -> String {
    let table = stored.to_string();
    let before = quote_ident(&format!("{}_before_images_idx", stored.name())).unwrap_or_default();
    let after = quote_ident(&after_images_index(stored)).unwrap_or_default();
    format!(
        "CREATE INDEX IF NOT EXISTS {before} ON {table} \
         USING gin ((\"before\"::jsonb) jsonb_path_ops);\n\
         CREATE INDEX IF NOT EXISTS {after} ON {table} \
         USING gin ((COALESCE(\"after\"::jsonb, \"before\"::jsonb || after_changed)) jsonb_path_ops);\n"
    )
}

/// The worker's progress, the parked changes, the schema history, the partition registry,
/// and the ownership of the audit tables.
fn companion_tables(
    changes: &QualifiedName,
    stored: &QualifiedName,
    owner_role: Option<&str>,
) -> String {
    let mut sql = String::new();
    sql.push_str(PROGRESS_TABLE);
    sql.push_str(REJECTED_TABLE);
    sql.push_str(SCHEMA_HISTORY_TABLE);
    sql.push_str(partitions::INSTALL);
    sql.push_str(crate::setup::retention::INSTALL);
    sql.push_str(crate::setup::seals::INSTALL);
    sql.push_str(crate::setup::erasures::INSTALL);
    sql.push_str(&read_function());
    sql.push_str(&format!(
        "REVOKE ALL ON {changes}, {stored}, bemi.worker_progress, bemi.rejected, bemi.schema_history, \
         bemi.partitioned_changes, bemi.legal_holds, bemi.retention_runs, bemi.seals, \
         bemi.erasures FROM PUBLIC;\n"
    ));
    // The name was validated by `Setup::new`.
    if let Some(role) = owner_role.and_then(|role| quote_ident(role).ok()) {
        sql.push_str(&format!(
            "ALTER VIEW {changes} OWNER TO {role};\n\
             ALTER TABLE {stored} OWNER TO {role};\n\
             ALTER TABLE bemi.worker_progress OWNER TO {role};\n\
             ALTER TABLE bemi.rejected OWNER TO {role};\n\
             ALTER TABLE bemi.schema_history OWNER TO {role};\n\
             ALTER TABLE bemi.partitioned_changes OWNER TO {role};\n\
             ALTER TABLE bemi.legal_holds OWNER TO {role};\n\
             ALTER TABLE bemi.retention_runs OWNER TO {role};\n\
             ALTER TABLE bemi.seals OWNER TO {role};\n\
             ALTER TABLE bemi.erasures OWNER TO {role};\n"
        ));
    }
    sql
}

/// `bemi.read_trail(query, arguments)`: runs one of bemi's reads of the trail with JIT
/// compilation off (see `crate::query::read`). A read over a year of partitions has an
/// estimated cost past `jit_above_cost` however few rows it returns, and compiling its plan took
/// longer than running it (a request's changes: 420 ms against 30 ms on 10 million changes).
/// The function runs with its caller's rights and is `STABLE`, so it can only read what its
/// caller could; the query's `$1` to `$n` are the elements of `arguments`, a JSON array of texts.
fn read_function() -> String {
    let using: Vec<String> = (0..crate::query::READ_PARAMETERS)
        .map(|index| format!("arguments ->> {index}"))
        .collect();
    format!(
        "CREATE OR REPLACE FUNCTION bemi.{function}(query text, arguments jsonb)\n\
         RETURNS SETOF text LANGUAGE plpgsql STABLE\n\
         SET jit = off SET search_path = pg_catalog, pg_temp AS $bemi$\n\
         BEGIN\n    \
             RETURN QUERY EXECUTE query USING {using};\n\
         END\n\
         $bemi$;\n",
        function = crate::query::READ_FUNCTION,
        using = using.join(", ")
    )
}

/// The teardown script for the destination database: drops all audit data.
pub(super) fn teardown(changes: &QualifiedName) -> String {
    let stored = crate::setup::stored_changes_table(changes);
    format!(
        "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);\n\
         DROP VIEW IF EXISTS {changes};\n\
         DROP TABLE IF EXISTS {stored};\n\
         DROP TABLE IF EXISTS bemi.worker_progress;\n\
         DROP TABLE IF EXISTS bemi.rejected;\n\
         DROP TABLE IF EXISTS bemi.schema_history;\n\
         DROP TABLE IF EXISTS bemi.seals;\n\
         DROP TABLE IF EXISTS bemi.erasures;\n\
         DROP FUNCTION IF EXISTS bemi.create_change_partitions(text, timestamptz);\n\
         DROP FUNCTION IF EXISTS bemi.read_trail(text, jsonb);\n\
         DROP TABLE IF EXISTS bemi.partitioned_changes;\n\
         DROP TABLE IF EXISTS bemi.legal_holds;\n\
         DROP TABLE IF EXISTS bemi.retention_runs;\n\
         DO $bemi$\n\
         BEGIN\n    \
             DROP SCHEMA IF EXISTS bemi;\n\
         EXCEPTION WHEN dependent_objects_still_exist THEN\n    \
             NULL;\n\
         END\n\
         $bemi$;\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_the_table_and_index_names() {
        let sql = install(
            &QualifiedName::new("audit log", "My Changes").unwrap(),
            None,
            Partitioning::Monthly,
            false,
        );
        assert!(sql.contains(r#"CREATE SCHEMA IF NOT EXISTS "audit log";"#));
        assert!(sql.contains(r#"CREATE TABLE IF NOT EXISTS "audit log"."My Changes_stored" ("#));
        assert!(sql.contains(
            r#"CREATE INDEX IF NOT EXISTS "My Changes_stored_key_idx" ON "audit log"."My Changes_stored""#
        ));
        assert!(sql.contains(r#"CREATE OR REPLACE VIEW "audit log"."My Changes" AS"#));
        let teardown = teardown(&QualifiedName::new("a", "b").unwrap());
        assert!(teardown.contains(r#"DROP VIEW IF EXISTS "a"."b";"#));
        assert!(teardown.contains(r#"DROP TABLE IF EXISTS "a"."b_stored";"#));
    }
}
