//! The destination's check before storing: the tables exist and the worker's role may write
//! them.

use bemi_core::QualifiedName;

use crate::{ConnectionOptions, Error, Result};

/// Refuses to start when the `changes` or progress table is missing, or the worker's role
/// cannot write them (naming the GRANT to run).
pub(crate) async fn check_destination_privileges(
    client: &tokio_postgres::Client,
    destination: &ConnectionOptions,
    changes_table: &QualifiedName,
) -> Result<()> {
    let changes = bemi_core::setup::stored_changes_table(changes_table).to_string();
    let schema_usage = |schema: &str| {
        format!(
            "(SELECT pg_catalog.has_schema_privilege(n.oid, 'USAGE') FROM pg_catalog.pg_namespace n \
             WHERE n.nspname = {})",
            bemi_core::quote_literal(schema)
        )
    };
    let row = client
        .query_one(
            &format!(
                "SELECT current_user::text, {}, {}",
                schema_usage(bemi_core::setup::BEMI_SCHEMA),
                schema_usage(changes_table.schema())
            ),
            &[],
        )
        .await
        .map_err(Error::postgres(
            "check the worker's privileges in the destination",
        ))?;
    let role = bemi_core::quote_ident(&row.get::<_, String>(0))?;
    let setup_needed = || {
        Error::Config(format!(
            "{changes} or one of bemi's tables (worker_progress, rejected, schema_history) does not exist in {destination}: run `bemi-worker setup`"
        ))
    };
    let mut missing = Vec::new();
    for (column, schema) in [
        (1, bemi_core::setup::BEMI_SCHEMA),
        (2, changes_table.schema()),
    ] {
        match row.get::<_, Option<bool>>(column) {
            None => return Err(setup_needed()),
            Some(false) => missing.push(format!(
                "GRANT USAGE ON SCHEMA {} TO {role};",
                bemi_core::quote_ident(schema)?
            )),
            Some(true) => {}
        }
    }
    missing.dedup();
    if missing.is_empty() {
        let row = client
            .query_one(
                "SELECT pg_catalog.to_regclass($1) IS NOT NULL \
                 AND pg_catalog.to_regclass('bemi.worker_progress') IS NOT NULL \
                 AND pg_catalog.to_regclass('bemi.rejected') IS NOT NULL \
                 AND pg_catalog.to_regclass('bemi.schema_history') IS NOT NULL",
                &[&changes],
            )
            .await
            .map_err(Error::postgres("look for the changes table"))?;
        if !row.get::<_, bool>(0) {
            return Err(setup_needed());
        }
        // A table made before personal values has no `personal` column: setup adds it.
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
                 WHERE attrelid = $1::text::regclass AND attname = 'personal' AND NOT attisdropped)",
                &[&changes],
            )
            .await
            .map_err(Error::postgres("look for the personal column"))?;
        if !row.get::<_, bool>(0) {
            return Err(Error::Config(format!(
                "{changes} has no `personal` column (it was made by an older bemi-worker): run `bemi-worker setup` again"
            )));
        }
        let row = client
            .query_one(
                "SELECT pg_catalog.has_table_privilege($1, 'INSERT') AND pg_catalog.has_table_privilege($1, 'SELECT'), \
                 pg_catalog.has_table_privilege('bemi.worker_progress', 'INSERT') \
                 AND pg_catalog.has_table_privilege('bemi.worker_progress', 'SELECT') \
                 AND pg_catalog.has_table_privilege('bemi.worker_progress', 'UPDATE'), \
                 pg_catalog.has_table_privilege('bemi.rejected', 'INSERT'), \
                 pg_catalog.has_table_privilege('bemi.schema_history', 'INSERT') \
                 AND pg_catalog.has_table_privilege('bemi.schema_history', 'SELECT')",
                &[&changes],
            )
            .await
            .map_err(Error::postgres("check the worker's privileges on the changes table"))?;
        if !row.get::<_, bool>(0) {
            missing.push(format!("GRANT SELECT, INSERT ON {changes} TO {role};"));
        }
        if !row.get::<_, bool>(1) {
            missing.push(format!(
                "GRANT SELECT, INSERT, UPDATE ON bemi.worker_progress TO {role};"
            ));
        }
        if !row.get::<_, bool>(2) {
            missing.push(format!("GRANT SELECT, INSERT ON bemi.rejected TO {role};"));
        }
        if !row.get::<_, bool>(3) {
            missing.push(format!(
                "GRANT SELECT, INSERT ON bemi.schema_history TO {role};"
            ));
        }
        // Erasure (a destination set up before it has no bemi.erasures: nothing to check).
        let row = client
            .query_one(
                "SELECT CASE WHEN pg_catalog.to_regclass('bemi.erasures') IS NULL THEN true \
                 ELSE (pg_catalog.has_table_privilege('bemi.erasures', 'SELECT') \
                     AND pg_catalog.has_table_privilege('bemi.erasures', 'INSERT') \
                     AND pg_catalog.has_column_privilege($1, 'personal', 'UPDATE') \
                     AND pg_catalog.has_column_privilege($1, 'context', 'UPDATE') \
                     AND pg_catalog.has_column_privilege($1, 'before', 'UPDATE') \
                     AND pg_catalog.has_column_privilege($1, 'after', 'UPDATE') \
                     AND pg_catalog.has_column_privilege($1, 'after_changed', 'UPDATE')) END",
                &[&changes],
            )
            .await
            .map_err(Error::postgres("check the worker's privileges to erase"))?;
        if !row.get::<_, bool>(0) {
            missing.push(format!(
                "GRANT SELECT, INSERT ON bemi.erasures TO {role}; \
                 GRANT USAGE ON SEQUENCE bemi.erasures_sequence_seq TO {role}; \
                 GRANT UPDATE (\"before\", \"after\", after_changed, context, personal) ON {changes} TO {role};"
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "the worker's role cannot store changes in {destination}: run {}",
            missing.join(" ")
        )))
    }
}
