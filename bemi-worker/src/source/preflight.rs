//! Checks and facts of the source before streaming: the slot's incarnation, the publication,
//! the worker's privileges, and the table shapes recorded before the slot's position.

use crate::pipeline::WorkerConfig;
use crate::source::recorded_shape::RecordedShape;
use crate::{Error, Result};

/// The newest incarnation of `slot` (see `bemi_core::setup::create_slot_sql`); `None` for a
/// setup that predates incarnations.
pub(crate) async fn slot_incarnation(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<String>> {
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('bemi.slot_incarnations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(Error::postgres("look for bemi.slot_incarnations"))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "SELECT incarnation::text FROM bemi.slot_incarnations WHERE slot_name = $1 \
             ORDER BY created_at DESC, created_lsn DESC LIMIT 1",
            &[&slot],
        )
        .await
        .map_err(Error::postgres("read the slot's incarnation"))?;
    Ok(row.map(|row| row.get(0)))
}

/// Refuses to start without the publication, which `bemi-worker setup` creates.
pub(crate) async fn ensure_publication(
    client: &tokio_postgres::Client,
    config: &WorkerConfig,
) -> Result<()> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(Error::postgres("read the publication"))?
        .is_some();
    if exists {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "publication {:?} does not exist in {}: run `bemi-worker setup`",
            config.publication, config.source
        )))
    }
}

/// Refuses to start when the worker's role cannot read the stored column policies (it would store
/// values they redact): names the GRANT to run.
/// The table shapes `bemi.schema_versions` recorded before the slot's confirmed position (what
/// the stream will not show again), oldest first: `capture`'s history of shapes at its start.
/// A shape recorded by a transaction still open at that position is taken a little early (it
/// comes again at its commit).
pub(crate) async fn load_source_shapes(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Vec<(u32, RecordedShape)>> {
    let rows = client
        .query(
            "SELECT pg_catalog.row_to_json(v)::text FROM bemi.schema_versions v \
             WHERE v.recorded_lsn <= (SELECT s.confirmed_flush_lsn FROM pg_catalog.pg_replication_slots s \
                                      WHERE s.slot_name = $1) \
             ORDER BY v.id",
            &[&slot],
        )
        .await
        .map_err(Error::postgres(
            "read the recorded table shapes in bemi.schema_versions (the worker's role needs \
             SELECT on it: see `bemi-worker setup --print-sql --worker-role`)",
        ))?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let version: serde_json::Value = serde_json::from_str(row.get(0)).ok()?;
            RecordedShape::from_version(&version)
        })
        .collect())
}

pub(crate) async fn check_source_privileges(client: &tokio_postgres::Client) -> Result<()> {
    let row = client
        .query_one(
            "SELECT current_user::text, c.oid IS NOT NULL, \
                    COALESCE(pg_catalog.has_schema_privilege(n.oid, 'USAGE'), false), \
                    pg_catalog.has_table_privilege(c.oid, 'SELECT'), \
                    COALESCE(pg_catalog.has_table_privilege(i.oid, 'SELECT') \
                             AND pg_catalog.has_table_privilege(i.oid, 'INSERT'), true) \
             FROM (SELECT 1) one \
             LEFT JOIN pg_catalog.pg_namespace n ON n.nspname = 'bemi' \
             LEFT JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = 'column_policies' \
             LEFT JOIN pg_catalog.pg_class i ON i.relnamespace = n.oid AND i.relname = 'slot_incarnations'",
            &[],
        )
        .await
        .map_err(Error::postgres("check the worker's privileges in the source"))?;
    let role = bemi_core::quote_ident(&row.get::<_, String>(0))?;
    let exists: bool = row.get(1);
    let usage: bool = row.get(2);
    let select: Option<bool> = row.get(3);
    let incarnations: bool = row.get(4);
    if !exists || (usage && select == Some(true) && incarnations) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !usage {
        missing.push(format!("GRANT USAGE ON SCHEMA \"bemi\" TO {role};"));
    }
    if select != Some(true) {
        missing.push(format!("GRANT SELECT ON bemi.column_policies TO {role};"));
    }
    if !incarnations {
        missing.push(format!(
            "GRANT SELECT, INSERT ON bemi.slot_incarnations TO {role};"
        ));
    }
    Err(Error::Config(format!(
        "the worker's role lacks privileges on bemi's tables in the source (the column policies say which columns to redact or drop; the slot incarnations keep progress apart across restores); run: {}",
        missing.join(" ")
    )))
}
