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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotState {
    Missing,
    Free,
    Active(i32),
}

pub(crate) async fn slot_state(client: &Client, slot: &str) -> Result<SlotState> {
    let row = client
        .query_opt(
            "SELECT active_pid FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::postgres("read the replication slot"))?;
    Ok(match row {
        None => SlotState::Missing,
        Some(row) => match row.get::<_, Option<i32>>(0) {
            Some(pid) => SlotState::Active(pid),
            None => SlotState::Free,
        },
    })
}
