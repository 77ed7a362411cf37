//! Running bemi's setup and teardown SQL (from `bemi_core::setup`) against real databases.

use bemi_core::setup::{ServerFacts, Setup};
use tokio_postgres::Client;

use crate::{ConnectionOptions, Error, Result};

/// Reads the facts `bemi_core::setup::ServerFacts::check_source` checks.
pub(crate) async fn server_facts(client: &Client) -> Result<ServerFacts> {
    let row = client
        .query_one(ServerFacts::QUERY, &[])
        .await
        .map_err(Error::postgres("read the server's settings"))?;
    Ok(ServerFacts {
        server_version_num: row.get(0),
        server_version: row.get(1),
        wal_level: row.get(2),
        max_replication_slots: row.get(3),
        max_wal_senders: row.get(4),
        role: row.get(5),
        superuser: row.get(6),
        replication: row.get(7),
    })
}

/// Installs bemi: checks the source's requirements, creates the `changes` table in the
/// destination, installs triggers and publication in the source, then creates the slot.
/// Idempotent.
///
/// # Errors
///
/// Unmet requirements ([`Error::Requirement`], saying what to run), missing privileges or tables,
/// and connection failures.
pub async fn setup(
    source: &ConnectionOptions,
    destination: &ConnectionOptions,
    setup: &Setup,
) -> Result<()> {
    let source_client = source.connect("bemi-worker setup").await?;
    server_facts(&source_client).await?.check_source()?;
    let destination_client = destination.connect("bemi-worker setup").await?;
    // One setup at a time per database (two at once raced on the catalog); the locks end
    // with the sessions. Two keys, taken in one order: source and destination may be one
    // database.
    for (client, key) in [
        (&source_client, "bemi setup: source"),
        (&destination_client, "bemi setup: destination"),
    ] {
        client
            .execute(
                "SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtext($1))",
                &[&key],
            )
            .await
            .map_err(Error::postgres("wait for another setup to finish"))?;
    }
    let owner_role = setup.options().owner_role_name();
    check_ownership(&source_client, source, owner_role).await?;
    check_ownership(&destination_client, destination, owner_role).await?;
    destination_client
        .batch_execute(&setup.destination_sql())
        .await
        .map_err(Error::postgres(format!(
            "create the changes table in {destination}"
        )))?;
    source_client
        .batch_execute(&setup.source_sql())
        .await
        .map_err(Error::postgres(format!(
            "install triggers and publication in {source}"
        )))?;
    source_client
        .batch_execute(&setup.create_slot_sql())
        .await
        .map_err(Error::postgres(format!(
            "create replication slot {:?}",
            setup.options().slot_name()
        )))?;
    tracing::info!(
        slot = setup.options().slot_name(),
        publication = setup.options().publication_name(),
        changes = %setup.options().changes_table_name(),
        "bemi is set up"
    );
    Ok(())
}

/// Every object of bemi's (its schema, tables, functions, the event trigger) whose owner is not
/// a superuser, the role running setup, nor (for tables) the `owner_role`: `(kind, name, owner,
/// the statement handing it back)`.
const FOREIGN_OWNED: &str = "
    WITH objects (kind, name, owner, is_table) AS (
        SELECT 'SCHEMA', 'bemi', n.nspowner, false
        FROM pg_catalog.pg_namespace n WHERE n.nspname = 'bemi'
        UNION ALL
        SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                    WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
               c.oid::regclass::text, c.relowner, c.relkind IN ('r', 'p')
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'bemi' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          -- A sequence owned by a column follows its table's owner.
          AND NOT (c.relkind = 'S' AND EXISTS (
              SELECT 1 FROM pg_catalog.pg_depend d
              WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
                AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')))
        UNION ALL
        SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
               p.oid::regprocedure::text, p.proowner, false
        FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'bemi'
        UNION ALL
        SELECT 'TYPE', t.oid::regtype::text, t.typowner, false
        FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'bemi' AND t.typtype IN ('b', 'c', 'd', 'e', 'r', 'm') AND t.typrelid = 0
          AND t.typelem = 0
        UNION ALL
        SELECT 'EVENT TRIGGER', pg_catalog.quote_ident(e.evtname), e.evtowner, false
        FROM pg_catalog.pg_event_trigger e WHERE e.evtname IN ('_bemi_track_new_tables', '_bemi_record_ddl', '_bemi_record_drop')
    )
    SELECT o.kind, o.name, r.rolname::text
    FROM objects o JOIN pg_catalog.pg_roles r ON r.oid = o.owner
    WHERE NOT r.rolsuper
      AND r.rolname <> current_user
      AND NOT (o.is_table AND r.rolname IS NOT DISTINCT FROM $1)
    ORDER BY 1, 2";

/// Refuses to install over objects another ordinary role owns: such a role could replace a
/// function that a superuser's event trigger or another role's writes then run (a way to
/// superuser), or delete audit rows. Names each object, its owner and the statement to run.
async fn check_ownership(
    client: &Client,
    database: &ConnectionOptions,
    owner_role: Option<&str>,
) -> Result<()> {
    let rows = client
        .query(FOREIGN_OWNED, &[&owner_role])
        .await
        .map_err(Error::postgres("check the owners of bemi's objects"))?;
    if rows.is_empty() {
        return Ok(());
    }
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(Error::postgres("read the current role"))?
        .get(0);
    let role = bemi_core::quote_ident(&role)?;
    let mut objects = Vec::new();
    let mut fixes = Vec::new();
    for row in rows {
        let (kind, name, owner): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        objects.push(format!("{} {name} (owned by {owner})", kind.to_lowercase()));
        fixes.push(format!("ALTER {kind} {name} OWNER TO {role};"));
    }
    Err(Error::Config(format!(
        "bemi's objects in {database} belong to another role, which could change what bemi runs \
         or delete audit rows: {}. Check them (or drop them), then run as a superuser: {}",
        objects.join(", "),
        fixes.join(" ")
    )))
}

/// Removes triggers, functions, publication and slot from the source, restoring replica
/// identities. With `drop_changes`, also drops the `changes` table and all its audit data.
///
/// # Errors
///
/// [`Error::SlotInUse`] while a worker is streaming from the slot; connection and privilege
/// errors.
pub async fn teardown(
    source: &ConnectionOptions,
    destination: &ConnectionOptions,
    setup: &Setup,
    drop_changes: bool,
) -> Result<()> {
    let source_client = source.connect("bemi-worker teardown").await?;
    let slot = setup.options().slot_name();
    if let SlotState::Active(pid) = slot_state(&source_client, slot).await? {
        return Err(Error::SlotInUse {
            slot: slot.to_owned(),
            pid,
        });
    }
    source_client
        .batch_execute(&setup.teardown_source_sql())
        .await
        .map_err(Error::postgres(format!("remove bemi from {source}")))?;
    source_client
        .batch_execute(&setup.drop_slot_sql())
        .await
        .map_err(Error::postgres(format!("drop replication slot {slot:?}")))?;
    if drop_changes {
        let destination_client = destination.connect("bemi-worker teardown").await?;
        destination_client
            .batch_execute(&setup.teardown_destination_sql())
            .await
            .map_err(Error::postgres(format!(
                "drop the changes table in {destination}"
            )))?;
    }
    tracing::info!(slot, drop_changes, "bemi is removed");
    Ok(())
}

/// Whether a replication slot exists and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SlotState {
    Missing,
    Free,
    Active(i32),
    /// Invalidated by the server (`wal_status` `lost`), with its last confirmed position.
    Lost {
        confirmed_flush_lsn: Option<String>,
    },
}

pub(crate) async fn slot_state(client: &Client, slot: &str) -> Result<SlotState> {
    let row = client
        .query_opt(
            "SELECT active_pid, wal_status = 'lost', confirmed_flush_lsn::text \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::postgres("read the replication slot"))?;
    Ok(match row {
        None => SlotState::Missing,
        Some(row) => match row.get::<_, Option<i32>>(0) {
            Some(pid) => SlotState::Active(pid),
            None if row.get::<_, Option<bool>>(1) == Some(true) => SlotState::Lost {
                confirmed_flush_lsn: row.get(2),
            },
            None => SlotState::Free,
        },
    })
}
