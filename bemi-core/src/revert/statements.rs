//! The SQL of a revert: describing a table, checking a row, and the compensating statements.
//!
//! Row images travel as one JSON text parameter and become typed rows in PostgreSQL with
//! `jsonb_populate_record(NULL::table, image)`, so every column gets its own type's input
//! function (exact numerics, timestamps, arrays, json) and no value is ever spliced into SQL.

use serde::Deserialize;

use crate::ident::quote_ident;
use crate::query::runner::{ROW_COLUMN, SqlParam};
use crate::{QualifiedName, Result};

/// What a revert needs to know about a table now.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub(crate) struct TableShape {
    /// The primary-key columns, in key order (empty without a primary key).
    #[serde(default)]
    pub(crate) key: Vec<String>,
    /// The writable columns (not dropped, not generated), in order.
    #[serde(default)]
    pub(crate) columns: Vec<String>,
    /// Whether bemi tracks the table now: its context trigger exists and it is published. A
    /// revert writes only to such tables.
    #[serde(default)]
    pub(crate) tracked: bool,
    /// Whether the table belongs to the system or to bemi (`pg_catalog`, `information_schema`,
    /// `pg_toast`, `bemi`): never written by a revert, whatever a `changes` row says.
    #[serde(default)]
    pub(crate) system: bool,
}

/// The query describing a table: one row (`{"key": [...], "columns": [...]}`), none when the
/// table does not exist.
pub(crate) fn describe_sql(table: &QualifiedName) -> (String, Vec<SqlParam>) {
    let sql = format!(
        "SELECT pg_catalog.json_build_object(\
           'key', (SELECT pg_catalog.json_agg(a.attname ORDER BY pg_catalog.array_position(i.indkey::int2[], a.attnum)) \
                   FROM pg_catalog.pg_index i \
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid \
                     AND a.attnum = ANY ((i.indkey::int2[])[0:i.indnkeyatts - 1]) \
                   WHERE i.indrelid = r.oid AND i.indisprimary), \
           'columns', (SELECT pg_catalog.json_agg(a.attname ORDER BY a.attnum) \
                   FROM pg_catalog.pg_attribute a \
                   WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), \
           'tracked', EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
                              JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
                              JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
                              WHERE t.tgrelid = r.oid AND t.tgname = '_bemi_context' \
                                AND p.proname = 'emit_context' AND pn.nspname = 'bemi') \
                      AND (EXISTS (SELECT 1 FROM pg_catalog.pg_publication_rel pr WHERE pr.prrelid = r.oid) \
                           OR EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt \
                                  JOIN pg_catalog.pg_class c ON c.relname = pt.tablename \
                                  JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace \
                                    AND cn.nspname = pt.schemaname \
                                  WHERE c.oid = r.oid)), \
           'system', (SELECT n.nspname IN ('pg_catalog', 'information_schema', 'pg_toast', 'bemi') \
                             OR n.nspname LIKE 'pg\\_temp\\_%' OR n.nspname LIKE 'pg\\_toast\\_temp\\_%' \
                      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                      WHERE c.oid = r.oid))::text \
           AS {ROW_COLUMN} \
         FROM (SELECT pg_catalog.to_regclass($1::text) AS oid) r WHERE r.oid IS NOT NULL"
    );
    (sql, vec![Some(table.to_string())])
}

/// `jsonb_populate_record` of parameter `$n` as table `t`'s row type.
fn populate(table: &QualifiedName, parameter: usize) -> String {
    format!("pg_catalog.jsonb_populate_record(NULL::{table}, ${parameter}::text::jsonb)")
}

/// `left.k1 = right.k1 AND ...` over the key columns.
fn key_match(shape: &TableShape, left: &str, right: &str) -> Result<String> {
    let parts: Result<Vec<String>> = shape
        .key
        .iter()
        .map(|column| {
            let column = quote_ident(column)?;
            Ok(format!("{left}.{column} = {right}.{column}"))
        })
        .collect();
    Ok(parts?.join(" AND "))
}

/// A comma-separated list of `prefix.column` (or bare columns without a prefix).
fn column_list(columns: &[String], prefix: Option<&str>) -> Result<String> {
    let parts: Result<Vec<String>> = columns
        .iter()
        .map(|column| {
            let column = quote_ident(column)?;
            Ok(match prefix {
                Some(prefix) => format!("{prefix}.{column}"),
                None => column,
            })
        })
        .collect();
    Ok(parts?.join(", "))
}

/// Locks the row whose key is in image `$1` and returns `{"found": <row>, "expected": <image
/// as typed row>}` (both through `to_jsonb`, so they compare column by column); no row when
/// there is no such row.
pub(crate) fn check_sql(table: &QualifiedName, shape: &TableShape) -> Result<String> {
    Ok(format!(
        "SELECT pg_catalog.json_build_object('found', pg_catalog.to_jsonb(cur), 'expected', pg_catalog.to_jsonb(e))::text \
           AS {ROW_COLUMN} \
         FROM {table} cur, {} e WHERE {} FOR UPDATE OF cur",
        populate(table, 1),
        key_match(shape, "cur", "e")?
    ))
}

/// Deletes the row whose key is in image `$1`.
pub(crate) fn delete_sql(table: &QualifiedName, shape: &TableShape) -> Result<String> {
    Ok(format!(
        "DELETE FROM {table} cur USING {} e WHERE {}",
        populate(table, 1),
        key_match(shape, "cur", "e")?
    ))
}

/// Sets `columns` of the row whose key is in image `$1` to their values in image `$2`.
pub(crate) fn restore_sql(
    table: &QualifiedName,
    shape: &TableShape,
    columns: &[String],
) -> Result<String> {
    Ok(format!(
        "UPDATE {table} cur SET ({}) = (SELECT {} FROM {} b) FROM {} e WHERE {}",
        column_list(columns, None)?,
        column_list(columns, Some("b"))?,
        populate(table, 2),
        populate(table, 1),
        key_match(shape, "cur", "e")?
    ))
}

/// Inserts `columns` of image `$1` (identity columns keep the image's values).
pub(crate) fn insert_sql(table: &QualifiedName, columns: &[String]) -> Result<String> {
    Ok(format!(
        "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE SELECT {} FROM {} b",
        column_list(columns, None)?,
        column_list(columns, Some("b"))?,
        populate(table, 1)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> TableShape {
        TableShape {
            key: vec!["id".into(), "Region \"x\"".into()],
            columns: vec!["id".into(), "Region \"x\"".into(), "name".into()],
            tracked: true,
            system: false,
        }
    }

    #[test]
    fn names_are_quoted_and_values_are_parameters() {
        let table = QualifiedName::new("public", "Order Items").unwrap();
        let check = check_sql(&table, &shape()).unwrap();
        assert!(
            check.contains(r#"FROM "public"."Order Items" cur"#),
            "{check}"
        );
        assert!(
            check.contains(r#"cur."Region ""x""" = e."Region ""x""""#),
            "{check}"
        );
        assert!(check.contains("$1::text::jsonb"));
        let restore = restore_sql(&table, &shape(), &["name".into()]).unwrap();
        assert!(
            restore.contains(r#"SET ("name") = (SELECT b."name" FROM"#),
            "{restore}"
        );
        let insert = insert_sql(&table, &shape().columns).unwrap();
        assert!(insert.starts_with(r#"INSERT INTO "public"."Order Items" ("id", "Region ""x""", "name") OVERRIDING SYSTEM VALUE"#), "{insert}");
        let (describe, params) = describe_sql(&table);
        assert!(describe.contains("to_regclass($1::text)"));
        assert_eq!(params, vec![Some(r#""public"."Order Items""#.to_owned())]);
    }
}
