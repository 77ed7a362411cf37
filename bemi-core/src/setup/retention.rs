//! Retention of a partitioned `changes` table: whole partitions past a window are detached and
//! dropped (never `DELETE`), after an optional archive, unless a legal hold covers them; each
//! run is recorded.
//!
//! | table | holds |
//! | --- | --- |
//! | `bemi.legal_holds` | holds until a date, for every change or for one table's |
//! | `bemi.retention_runs` | every run: who, when, the window, what was dropped and held |

/// The holds and the record of runs, in the destination.
pub(super) const INSTALL: &str = r#"
CREATE TABLE IF NOT EXISTS bemi.legal_holds (
    id bigserial PRIMARY KEY,
    -- NULL schema and table: every change.
    schema_name text,
    table_name text,
    held_until timestamptz NOT NULL,
    reason text NOT NULL,
    created_by text NOT NULL DEFAULT current_user,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK ((schema_name IS NULL) = (table_name IS NULL))
);

CREATE TABLE IF NOT EXISTS bemi.retention_runs (
    id bigserial PRIMARY KEY,
    changes_table text NOT NULL,
    run_by text NOT NULL DEFAULT current_user,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    keep interval NOT NULL,
    cutoff timestamptz NOT NULL,
    dry_run boolean NOT NULL,
    -- [{partition, from, to, rows, archive}]
    dropped jsonb NOT NULL,
    -- [{partition, from, to, holds: [id]}]
    held jsonb NOT NULL
);
"#;

/// The partitions of the `changes` table `$1` (its text as `QualifiedName` prints it) other
/// than the default one: schema, name, lower bound (NULL for `MINVALUE`) and upper bound,
/// oldest first.
pub const PARTITIONS_QUERY: &str = "\
SELECT n.nspname::text, c.relname::text,
       CASE WHEN b.lower_bound = 'MINVALUE' THEN NULL
            ELSE pg_catalog.btrim(b.lower_bound, '''')::timestamptz END,
       pg_catalog.btrim(b.upper_bound, '''')::timestamptz
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
    SELECT pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid), 'FROM \\((.*)\\) TO') AS lower_bound,
           pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid), 'TO \\((.*)\\)$') AS upper_bound
) b
WHERE i.inhparent = pg_catalog.to_regclass($1)
  AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
ORDER BY 4";

/// The holds active now: id, schema and table (both NULL for a hold on every change), reason
/// and end.
pub const ACTIVE_HOLDS_QUERY: &str = "\
SELECT h.id, h.schema_name, h.table_name, h.reason, h.held_until FROM bemi.legal_holds h
WHERE h.held_until > pg_catalog.now() ORDER BY h.id";
