//! SQL for the destination database: the `changes` table and the worker's progress.

use crate::QualifiedName;
use crate::ident::quote_ident;
use crate::setup::partitions::{self, Partitioning};

/// Columns of the `changes` table. Bemi's columns come first, in Bemi's order and meaning, then
/// bemi-rs's own: `commit_lsn` and `sequence` order changes exactly (commit order, then order
/// within the transaction) and identify a change across redeliveries; `previous_primary_key`
/// is the old key of an UPDATE that changed the key (time travel needs to know the old key is
/// gone).
const CHANGES_COLUMNS: &str = r#"(
    @ID@ DEFAULT pg_catalog.gen_random_uuid(),
    primary_key text,
    "before" jsonb NOT NULL DEFAULT '{}',
    "after" jsonb NOT NULL DEFAULT '{}',
    context jsonb NOT NULL DEFAULT '{}',
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
    created_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp()@KEY@
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
) -> String {
    let mut sql = String::new();
    sql.push_str("SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);\n");
    sql.push_str("CREATE SCHEMA IF NOT EXISTS bemi;\n");
    if changes.schema() != crate::setup::BEMI_SCHEMA {
        let schema = quote_ident(changes.schema()).unwrap_or_default();
        sql.push_str(&format!("CREATE SCHEMA IF NOT EXISTS {schema};\n"));
    }
    sql.push_str(&changes_table(changes, partitioning));
    sql.push_str(&changes_indexes(changes));
    sql.push_str(&companion_tables(changes, owner_role));
    sql.push_str(&partitions::register(changes, partitioning));
    sql
}

/// Creates the `changes` table unless it exists (partitioned by `committed_at` unless
/// `partitioning` is `None`), and widens the operations an older table accepts.
pub(super) fn changes_table(changes: &QualifiedName, partitioning: Partitioning) -> String {
    let table = changes.to_string();
    let operation_check =
        quote_ident(&format!("{}_operation_check", changes.name())).unwrap_or_default();
    let (id, key) = match partitioning {
        Partitioning::None => ("id uuid PRIMARY KEY", String::new()),
        _ => (
            "id uuid NOT NULL",
            format!(
                ",\n    CONSTRAINT {} PRIMARY KEY (id, committed_at)",
                quote_ident(&format!("{}_pkey", changes.name())).unwrap_or_default()
            ),
        ),
    };
    let partition_by = match partitioning {
        Partitioning::None => "",
        _ => " PARTITION BY RANGE (committed_at)",
    };
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS {table} {}{partition_by};\n",
        CHANGES_COLUMNS
            .replace("@ID@", id)
            .replace("@KEY@", &key)
            .replace("@OPERATION_CHECK@", &operation_check)
            .replace("@OPERATIONS@", OPERATIONS)
    );
    // Tables made by earlier versions accept the operations added since (`DDL`).
    sql.push_str(&format!(
        "DO $bemi$\n\
         BEGIN\n    \
             IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c\n        \
                 WHERE c.conrelid = {literal}::regclass AND c.contype = 'c'\n          \
                   AND pg_catalog.pg_get_constraintdef(c.oid) LIKE '%''DDL''%') THEN\n        \
                 ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {operation_check};\n        \
                 ALTER TABLE {table} ADD CONSTRAINT {operation_check} CHECK (operation IN ({OPERATIONS}));\n    \
             END IF;\n\
         END\n\
         $bemi$;\n",
        literal = changes.regclass_literal(),
    ));
    sql
}

/// The indexes of the `changes` table (on a partitioned table, every partition gets them; an
/// equivalent index a partition already has is adopted, not built again).
pub(super) fn changes_indexes(changes: &QualifiedName) -> String {
    let table = changes.to_string();
    let index =
        |suffix: &str| quote_ident(&format!("{}_{suffix}", changes.name())).unwrap_or_default();
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
    sql.push_str(&format!(
        "CREATE INDEX IF NOT EXISTS {} ON {table} USING gin (context jsonb_path_ops);\n",
        index("context_idx")
    ));
    sql
}

/// The worker's progress, the parked changes, the schema history, the partition registry,
/// and the ownership of the audit tables.
fn companion_tables(changes: &QualifiedName, owner_role: Option<&str>) -> String {
    let table = changes.to_string();
    let mut sql = String::new();
    sql.push_str(PROGRESS_TABLE);
    sql.push_str(REJECTED_TABLE);
    sql.push_str(SCHEMA_HISTORY_TABLE);
    sql.push_str(partitions::INSTALL);
    sql.push_str(crate::setup::retention::INSTALL);
    sql.push_str(&format!(
        "REVOKE ALL ON {table}, bemi.worker_progress, bemi.rejected, bemi.schema_history, \
         bemi.partitioned_changes, bemi.legal_holds, bemi.retention_runs FROM PUBLIC;\n"
    ));
    // The name was validated by `Setup::new`.
    if let Some(role) = owner_role.and_then(|role| quote_ident(role).ok()) {
        sql.push_str(&format!(
            "ALTER TABLE {table} OWNER TO {role};\n\
             ALTER TABLE bemi.worker_progress OWNER TO {role};\n\
             ALTER TABLE bemi.rejected OWNER TO {role};\n\
             ALTER TABLE bemi.schema_history OWNER TO {role};\n\
             ALTER TABLE bemi.partitioned_changes OWNER TO {role};\n\
             ALTER TABLE bemi.legal_holds OWNER TO {role};\n\
             ALTER TABLE bemi.retention_runs OWNER TO {role};\n"
        ));
    }
    sql
}

/// The teardown script for the destination database: drops all audit data.
pub(super) fn teardown(changes: &QualifiedName) -> String {
    format!(
        "SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);\n\
         DROP TABLE IF EXISTS {changes};\n\
         DROP TABLE IF EXISTS bemi.worker_progress;\n\
         DROP TABLE IF EXISTS bemi.rejected;\n\
         DROP TABLE IF EXISTS bemi.schema_history;\n\
         DROP FUNCTION IF EXISTS bemi.create_change_partitions(text, timestamptz);\n\
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
        );
        assert!(sql.contains(r#"CREATE SCHEMA IF NOT EXISTS "audit log";"#));
        assert!(sql.contains(r#"CREATE TABLE IF NOT EXISTS "audit log"."My Changes" ("#));
        assert!(sql.contains(
            r#"CREATE INDEX IF NOT EXISTS "My Changes_key_idx" ON "audit log"."My Changes""#
        ));
        assert!(
            teardown(&QualifiedName::new("a", "b").unwrap())
                .contains(r#"DROP TABLE IF EXISTS "a"."b";"#)
        );
    }
}
