//! Time partitions of the `changes` table: range partitions on `committed_at` (one per month,
//! week or day, in UTC), created ahead by the worker through `bemi.create_change_partitions`,
//! with a default partition so that no change is ever refused for lack of one.
//!
//! Retention then drops whole partitions instead of deleting rows, and reads that filter on
//! time touch only the partitions of their range. A table made by an earlier version (one
//! heap) is converted while the worker runs by the steps of [`ConversionStep`]: the old table
//! becomes the partition of everything before a boundary, without copying a row.

use std::fmt;
use std::str::FromStr;

use crate::QualifiedName;
use crate::ident::{quote_ident, quote_literal};

/// How the `changes` table is partitioned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Partitioning {
    /// One heap, as before partitions (no retention by partition).
    None,
    /// One partition per UTC day.
    Daily,
    /// One partition per ISO week (from Monday, UTC).
    Weekly,
    /// One partition per UTC month (the default).
    #[default]
    Monthly,
}

impl Partitioning {
    /// The period's name in PostgreSQL's `date_trunc` (`day`, `week`, `month`); `None` for one
    /// heap.
    pub fn period(self) -> Option<&'static str> {
        match self {
            Partitioning::None => None,
            Partitioning::Daily => Some("day"),
            Partitioning::Weekly => Some("week"),
            Partitioning::Monthly => Some("month"),
        }
    }
}

impl fmt::Display for Partitioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.period().unwrap_or("none"))
    }
}

impl FromStr for Partitioning {
    type Err = crate::Error;

    /// `month`, `week`, `day` or `none` (also `monthly`, `weekly`, `daily`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "month" | "monthly" => Ok(Partitioning::Monthly),
            "week" | "weekly" => Ok(Partitioning::Weekly),
            "day" | "daily" => Ok(Partitioning::Daily),
            "none" => Ok(Partitioning::None),
            other => Err(crate::Error::InvalidPartitioning(other.to_owned())),
        }
    }
}

/// How many periods ahead partitions exist (the worker keeps at least this many).
pub const PARTITIONS_AHEAD: u32 = 3;

/// The longest partition prefix (the table's name, preceded by `schema_` when its schema is
/// not `bemi`) that still leaves room for a partition's suffix (`_p20261201`) within
/// PostgreSQL's 63 bytes.
pub const MAX_PARTITIONED_NAME_BYTES: usize = 53;

/// The partitioned tables and their period, and the function that creates their partitions.
///
/// `bemi.create_change_partitions(table, from_at)` creates, for the table registered in
/// `bemi.partitioned_changes`, the default partition if missing and one partition per period
/// from the one holding `from_at` (no further back than 36 periods, nor before the range of a
/// converted table's old heap) to `ahead` periods past now, moving any rows of a new range out
/// of the default partition. Partitions are created in schema `bemi` (named after the table,
/// prefixed with its schema when that is not `bemi`): a table created in a tracked schema is
/// tracked before it can be attached, and the trail would capture itself. It runs as the
/// table's owner (so the worker's role needs no more than EXECUTE), never creates more than the
/// configured horizon whatever it is asked, waits at most 2 s for locks (the worker retries
/// later), and returns when it should be called again: once changes reach the last period it
/// created.
pub(super) const INSTALL: &str = r#"
CREATE TABLE IF NOT EXISTS bemi.partitioned_changes (
    changes_table text PRIMARY KEY,
    period text NOT NULL CHECK (period IN ('day', 'week', 'month')),
    ahead integer NOT NULL DEFAULT 3 CHECK (ahead BETWEEN 1 AND 36),
    -- For a converted table: the end of its old heap's range (MINVALUE to here).
    legacy_until timestamptz,
    converted_at timestamptz
);

CREATE OR REPLACE FUNCTION bemi.create_change_partitions(changes_table text, from_at timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET timezone = 'UTC'
SET lock_timeout = '2s'
AS $bemi$
DECLARE
    config bemi.partitioned_changes;
    parent oid;
    parent_owner name;
    parent_schema text;
    parent_name text;
    step interval;
    horizon timestamptz;
    lower_bound timestamptz;
    upper_bound timestamptz;
    partition_name text;
    -- Partitions live in schema bemi, which is never tracked: a table created in a tracked
    -- schema would be tracked, and published, before it is attached (captured into itself).
    prefix text;
    default_name text;
    -- The default partition, quoted, whatever its name.
    default_partition text;
    moved bigint;
BEGIN
    SELECT * INTO config FROM bemi.partitioned_changes p
    WHERE p.changes_table = create_change_partitions.changes_table;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'bemi: % is not a partitioned changes table (not in bemi.partitioned_changes)', changes_table;
    END IF;
    SELECT c.oid, pg_catalog.pg_get_userbyid(c.relowner), n.nspname, c.relname
    INTO parent, parent_owner, parent_schema, parent_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = pg_catalog.to_regclass(config.changes_table) AND c.relkind = 'p';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'bemi: % is not a partitioned table', config.changes_table;
    END IF;
    prefix := CASE WHEN parent_schema = 'bemi' THEN parent_name ELSE parent_schema || '_' || parent_name END;
    IF pg_catalog.octet_length(prefix) > 53 THEN
        RAISE EXCEPTION 'bemi: the name of % is too long for partition names (53 bytes at most)', config.changes_table;
    END IF;
    step := pg_catalog.concat('1 ', config.period)::interval;
    default_name := prefix || '_default';
    SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) INTO default_partition
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE i.inhparent = parent AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';
    IF default_partition IS NULL THEN
        default_partition := pg_catalog.format('bemi.%I', default_name);
        EXECUTE pg_catalog.format('CREATE TABLE %s PARTITION OF %I.%I DEFAULT',
            default_partition, parent_schema, parent_name);
        -- Partitions belong to the table's owner (who runs retention), not to this function's.
        IF parent_owner <> current_user THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO %I', default_partition, parent_owner);
        END IF;
    END IF;
    -- Never more than `ahead` periods past now, nor further back than 36 periods.
    horizon := pg_catalog.now() + config.ahead * step;
    from_at := LEAST(COALESCE(from_at, pg_catalog.now()), pg_catalog.now());
    from_at := GREATEST(from_at, pg_catalog.now() - 36 * step, COALESCE(config.legacy_until, '-infinity'));
    lower_bound := pg_catalog.date_trunc(config.period, from_at);
    WHILE lower_bound <= horizon LOOP
        upper_bound := lower_bound + step;
        partition_name := prefix || '_p' || pg_catalog.to_char(lower_bound, 'YYYYMMDD');
        IF pg_catalog.to_regclass(pg_catalog.format('bemi.%I', partition_name)) IS NULL THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE TABLE bemi.%I (LIKE %I.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                    partition_name, parent_schema, parent_name);
                IF parent_owner <> current_user THEN
                    EXECUTE pg_catalog.format('ALTER TABLE bemi.%I OWNER TO %I', partition_name, parent_owner);
                END IF;
                -- Rows of this range in the default partition would fail the attach: move them.
                EXECUTE pg_catalog.format('WITH moved AS (DELETE FROM %s WHERE committed_at >= %L AND committed_at < %L RETURNING *) '
                    'INSERT INTO bemi.%I SELECT * FROM moved',
                    default_partition, lower_bound, upper_bound, partition_name);
                GET DIAGNOSTICS moved = ROW_COUNT;
                EXECUTE pg_catalog.format('ALTER TABLE %I.%I ATTACH PARTITION bemi.%I FOR VALUES FROM (%L) TO (%L)',
                    parent_schema, parent_name, partition_name, lower_bound, upper_bound);
                IF moved > 0 THEN
                    RAISE WARNING 'bemi: moved % changes from the default partition of % into its new partition %',
                        moved, config.changes_table, partition_name;
                END IF;
            EXCEPTION WHEN invalid_object_definition THEN
                -- Another partition (a converted table's old heap) covers part of the range.
                RAISE NOTICE 'bemi: % overlaps an existing partition: not created', partition_name;
            END;
        END IF;
        lower_bound := upper_bound;
    END LOOP;
    -- Call again once changes reach the last period created.
    RETURN lower_bound - step;
END
$bemi$;
REVOKE ALL ON FUNCTION bemi.create_change_partitions(text, timestamptz) FROM PUBLIC;
"#;

/// The SQL that registers `changes` (already partitioned) with `partitioning` and creates its
/// first partitions; nothing for one heap. A table that is not partitioned is left as it is
/// (convert it with `bemi-worker partition-changes`).
pub(super) fn register(changes: &QualifiedName, partitioning: Partitioning) -> String {
    let Some(period) = partitioning.period() else {
        return String::new();
    };
    let name = quote_literal(&changes.to_string());
    format!(
        "INSERT INTO bemi.partitioned_changes (changes_table, period) \
         SELECT {name}, '{period}' FROM pg_catalog.pg_class c \
         WHERE c.oid = {name}::regclass AND c.relkind = 'p' \
         ON CONFLICT (changes_table) DO UPDATE SET period = EXCLUDED.period;\n\
         SELECT bemi.create_change_partitions({name}, pg_catalog.now()) \
         FROM bemi.partitioned_changes WHERE changes_table = {name};\n"
    )
}

/// `name` cut to at most `bytes` bytes, at a character boundary.
fn truncated(name: &str, bytes: usize) -> &str {
    let mut end = name.len().min(bytes);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// The name of the partition holding a converted table's old heap.
pub fn legacy_partition_name(changes: &QualifiedName) -> String {
    format!(
        "{}_legacy",
        truncated(changes.name(), MAX_PARTITIONED_NAME_BYTES)
    )
}

/// Quotes `name` in `changes`'s schema.
fn sibling(changes: &QualifiedName, name: &str) -> String {
    format!(
        "{}.{}",
        quote_ident(changes.schema()).unwrap_or_default(),
        quote_ident(name).unwrap_or_default()
    )
}

/// The name of the unique index a conversion builds on the old heap, `(id, committed_at)`,
/// which the partitioned table's primary key adopts.
pub fn conversion_index_name(changes: &QualifiedName) -> String {
    format!("{}_idc", legacy_partition_name(changes))
}

/// The steps converting an unpartitioned table of stored changes into a partitioned one while
/// the worker writes to it: none copies a row, each is idempotent, and only the last takes a lock that
/// blocks writers, for milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConversionStep {
    /// `CREATE UNIQUE INDEX CONCURRENTLY` on `(id, committed_at)` (outside a transaction;
    /// writers go on).
    BuildIndex,
    /// Adds the range check `committed_at < boundary` without validation, then validates it
    /// (writers go on during the validation scan).
    CheckRange,
    /// One short transaction: rename the old table and its indexes, create the partitioned
    /// table, attach the old heap as the partition of everything before the boundary (implied
    /// by the check: no scan), create the indexes (adopting the old ones), copy the grants and
    /// the owner, register the table and create the partitions from the boundary on.
    Swap,
}

/// SQL for the steps of [`ConversionStep`].
pub mod conversion {
    use super::*;

    /// Builds the unique index the partitioned table's key adopts (run outside a transaction).
    /// An invalid index left by an interrupted build is dropped first by
    /// [`drop_invalid_index`].
    pub fn build_index(changes: &QualifiedName) -> String {
        format!(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {} ON {changes} (id, committed_at)",
            quote_ident(&conversion_index_name(changes)).unwrap_or_default()
        )
    }

    /// Drops the conversion's index if an interrupted `CREATE INDEX CONCURRENTLY` left it
    /// invalid (run outside a transaction), so [`build_index`] builds it again.
    pub fn invalid_index_query(changes: &QualifiedName) -> String {
        format!(
            "SELECT NOT i.indisvalid FROM pg_catalog.pg_index i \
             WHERE i.indexrelid = pg_catalog.to_regclass({})",
            quote_literal(&sibling(changes, &conversion_index_name(changes)))
        )
    }

    /// Drops the conversion's index (see [`invalid_index_query`]).
    pub fn drop_invalid_index(changes: &QualifiedName) -> String {
        format!(
            "DROP INDEX CONCURRENTLY IF EXISTS {}",
            sibling(changes, &conversion_index_name(changes))
        )
    }

    /// The name of the range check.
    pub fn check_name(changes: &QualifiedName) -> String {
        format!("{}_range", legacy_partition_name(changes))
    }

    /// Adds the check `committed_at < boundary` (not validated) unless it exists with this
    /// boundary; a check with another boundary (an earlier, interrupted run) is replaced.
    pub fn add_check(changes: &QualifiedName, boundary: &str) -> String {
        let check = quote_ident(&check_name(changes)).unwrap_or_default();
        let boundary = quote_literal(boundary);
        format!(
            "SET lock_timeout = '5s';\n\
             ALTER TABLE {changes} DROP CONSTRAINT IF EXISTS {check};\n\
             ALTER TABLE {changes} ADD CONSTRAINT {check} CHECK (committed_at < {boundary}::timestamptz) NOT VALID;\n\
             RESET lock_timeout;\n"
        )
    }

    /// The boundary of an existing range check, as PostgreSQL shows it, if there is one.
    pub fn existing_check_query(changes: &QualifiedName) -> String {
        format!(
            "SELECT pg_catalog.pg_get_constraintdef(c.oid), c.convalidated \
             FROM pg_catalog.pg_constraint c \
             WHERE c.conrelid = {}::regclass AND c.conname = {}",
            changes.regclass_literal(),
            quote_literal(&check_name(changes))
        )
    }

    /// The swap, one transaction: see [`ConversionStep::Swap`]. `boundary` is the validated
    /// check's (a period start, in UTC); waits at most 5 s for the lock on the old table.
    /// The `changes` view (`view`) is created again over the new table, in the same
    /// transaction.
    pub fn swap(
        changes: &QualifiedName,
        view: &QualifiedName,
        partitioning: Partitioning,
        boundary: &str,
    ) -> String {
        let table = changes.to_string();
        let legacy_name = legacy_partition_name(changes);
        let legacy = sibling(changes, &legacy_name);
        let legacy_ident = quote_ident(&legacy_name).unwrap_or_default();
        let index = quote_ident(&conversion_index_name(changes)).unwrap_or_default();
        let boundary = quote_literal(boundary);
        let name = quote_literal(&table);
        let period = partitioning.period().unwrap_or("month");
        let mut sql = format!(
            "BEGIN;\n\
             SELECT pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);\n\
             SET LOCAL lock_timeout = '5s';\n\
             LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;\n\
             ALTER TABLE {table} RENAME TO {legacy_ident};\n\
             ALTER TABLE {legacy} ADD CONSTRAINT {index} UNIQUE USING INDEX {index};\n"
        );
        // The old indexes keep their definitions under new names: the partitioned table's
        // indexes take the names and adopt them.
        sql.push_str(&format!(
            "DO $bemi$\n\
             DECLARE index_name text; schema_name text;\n\
             BEGIN\n    \
                 FOR schema_name, index_name IN\n        \
                     SELECT n.nspname, c.relname FROM pg_catalog.pg_index i\n        \
                     JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid\n        \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n        \
                     WHERE i.indrelid = {legacy_literal}::regclass AND c.relname <> {index_literal}\n    \
                 LOOP\n        \
                     EXECUTE pg_catalog.format('ALTER INDEX %I.%I RENAME TO %I', schema_name, index_name,\n            \
                         pg_catalog.left(index_name, 50) || '_legacy');\n    \
                 END LOOP;\n\
             END\n\
             $bemi$;\n",
            legacy_literal = quote_literal(&legacy),
            index_literal = quote_literal(&conversion_index_name(changes)),
        ));
        sql.push_str(&super::super::destination_sql::changes_table(
            changes,
            partitioning,
        ));
        sql.push_str(&format!(
            "ALTER TABLE {table} ATTACH PARTITION {legacy} FOR VALUES FROM (MINVALUE) TO ({boundary});\n"
        ));
        // The partition bound says the same now.
        sql.push_str(&format!(
            "ALTER TABLE {legacy} DROP CONSTRAINT {};\n",
            quote_ident(&check_name(changes)).unwrap_or_default()
        ));
        sql.push_str(&super::super::destination_sql::changes_indexes(changes));
        // Image indexes (the only expression GIN indexes bemi makes) stay where they were: on
        // every partition, the old heap's adopted.
        sql.push_str(&format!(
            "DO $bemi$\n\
             BEGIN\n    \
                 IF EXISTS (SELECT 1 FROM pg_catalog.pg_index i\n        \
                     JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid\n        \
                     JOIN pg_catalog.pg_am a ON a.oid = c.relam\n        \
                     WHERE i.indrelid = {legacy_literal}::regclass AND a.amname = 'gin'\n          \
                       AND i.indexprs IS NOT NULL) THEN\n        \
                     EXECUTE {images};\n    \
                 END IF;\n\
             END\n\
             $bemi$;\n",
            legacy_literal = quote_literal(&legacy),
            images = quote_literal(&super::super::destination_sql::image_indexes_sql(changes)),
        ));
        // A view refers to its table by identity: it would go on showing the old heap alone.
        sql.push_str(&super::super::destination_sql::changes_view(view, changes));
        // The owner and the grants of the old table.
        sql.push_str(&format!(
            "DO $bemi$\n\
             DECLARE grant_row record;\n\
             BEGIN\n    \
                 EXECUTE pg_catalog.format('ALTER TABLE %s OWNER TO %I', {name},\n        \
                     (SELECT pg_catalog.pg_get_userbyid(c.relowner) FROM pg_catalog.pg_class c WHERE c.oid = {legacy_literal}::regclass));\n    \
                 FOR grant_row IN\n        \
                     SELECT a.privilege_type, pg_catalog.pg_get_userbyid(a.grantee) AS grantee\n        \
                     FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a\n        \
                     WHERE c.oid = {legacy_literal}::regclass AND a.grantee <> 0 AND a.grantee <> c.relowner\n    \
                 LOOP\n        \
                     EXECUTE pg_catalog.format('GRANT %s ON %s TO %I', grant_row.privilege_type, {name}, grant_row.grantee);\n    \
                 END LOOP;\n\
             END\n\
             $bemi$;\n\
             REVOKE ALL ON {table} FROM PUBLIC;\n\
             INSERT INTO bemi.partitioned_changes (changes_table, period, legacy_until, converted_at)\n\
             VALUES ({name}, '{period}', {boundary}, pg_catalog.now())\n\
             ON CONFLICT (changes_table) DO UPDATE SET period = EXCLUDED.period,\n    \
                 legacy_until = EXCLUDED.legacy_until, converted_at = EXCLUDED.converted_at;\n\
             SELECT bemi.create_change_partitions({name}, pg_catalog.now());\n\
             COMMIT;\n",
            legacy_literal = quote_literal(&legacy),
        ));
        sql
    }

    /// Drops the range check (after a failed swap: it would refuse every change committed
    /// after its boundary).
    pub fn drop_check(changes: &QualifiedName) -> String {
        format!(
            "ALTER TABLE {changes} DROP CONSTRAINT IF EXISTS {}",
            quote_ident(&check_name(changes)).unwrap_or_default()
        )
    }

    /// Validates the range check (a scan; writers go on).
    pub fn validate_check(changes: &QualifiedName) -> String {
        format!(
            "ALTER TABLE {changes} VALIDATE CONSTRAINT {}",
            quote_ident(&check_name(changes)).unwrap_or_default()
        )
    }
}
