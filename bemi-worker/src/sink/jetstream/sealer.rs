//! Sealing what `ingest` processes stored. Several processes store batches of the stream in
//! any order, so the stored prefix is read from JetStream: every message up to the shared
//! consumer's acknowledgement floor is stored (a message is acknowledged after its batch
//! committed), and `capture` publishes in commit order. So:
//!
//! - while a message is not acknowledged, the changes of its source database committed before
//!   it are all stored: they are sealed up to its commit;
//! - when every message in the stream is acknowledged, every change stored is final: the
//!   highest id stored per database, read *before* looking at the stream, bounds what is
//!   sealed (a change counted there was stored, and every message before it acknowledged).
//!
//! Any ingest process may seal; the seals' advisory lock makes one of them do it at a time.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::seal::sealer::{Anchors, Connected, connect, seal_stored};
use crate::sink::jetstream::{NatsOptions, nats_error};
use crate::{ConnectionOptions, Error, Result};

/// The source databases whose changes this process stored (their chains are sealed).
pub(crate) type Databases = Arc<Mutex<BTreeSet<String>>>;

/// Seals, every `interval`, what the ingest processes stored; failures are logged and retried.
pub(crate) async fn run(
    jetstream: jetstream::Context,
    nats: NatsOptions,
    destination: ConnectionOptions,
    stored_table: String,
    databases: Databases,
    interval: Duration,
    mut anchors: Anchors,
) {
    let mut client: Option<Client> = None;
    loop {
        tokio::time::sleep(interval).await;
        if client.as_ref().is_none_or(Client::is_closed) {
            match connect(&destination, "bemi-worker ingest sealer").await {
                Connected::Ready(connected) => client = Some(connected),
                Connected::NoSeals => return,
                Connected::Later => continue,
            }
        }
        let Some(connected) = client.as_mut() else {
            continue;
        };
        match seal_once(connected, &jetstream, &nats, &stored_table, &databases).await {
            Ok(blocks) => anchors.publish(&blocks).await,
            Err(error) => tracing::warn!(
                error = %crate::error_chain(&error),
                "sealing the stored changes failed; retrying later"
            ),
        }
    }
}

/// One round: the bounds of what is stored, then the seals up to them.
async fn seal_once(
    client: &mut Client,
    jetstream: &jetstream::Context,
    nats: &NatsOptions,
    stored: &str,
    databases: &Databases,
) -> Result<Vec<crate::seal::anchor::Anchor>> {
    let mut known: BTreeSet<String> = databases
        .lock()
        .map(|databases| databases.clone())
        .unwrap_or_default();
    for row in client
        .query("SELECT DISTINCT database FROM bemi.seals", &[])
        .await
        .map_err(Error::postgres("read the sealed databases"))?
    {
        known.insert(row.get(0));
    }
    // Read first: what is counted here is stored, whatever the stream shows next.
    let mut highest = Vec::new();
    for database in &known {
        if let Some(top) = crate::seal::highest_stored(client, stored, database).await? {
            highest.push((database.clone(), top));
        }
    }
    let mut stream = crate::sink::jetstream::stream(jetstream, nats).await?;
    let last = stream
        .info()
        .await
        .map_err(nats_error("read the stream's state"))?
        .state
        .last_sequence;
    let mut consumer = crate::sink::jetstream::consumer(&stream, nats).await?;
    let floor = consumer
        .info()
        .await
        .map_err(nats_error("read the consumer's acknowledgement floor"))?
        .ack_floor
        .stream_sequence;
    let bounds: Vec<(String, Bound<Uuid>)> = if floor >= last {
        highest
            .into_iter()
            .map(|(database, top)| (database, Bound::Included(top)))
            .collect()
    } else {
        let message = stream
            .get_raw_message(floor + 1)
            .await
            .map_err(nats_error("read the first message not stored"))?;
        let row = crate::sink::jetstream::wire::decode(&message.payload)
            .map_err(|error| Error::Protocol(error.to_string()))?;
        let commit = u64::try_from(row.commit_lsn).unwrap_or_default();
        vec![(
            row.database.to_string(),
            Bound::Excluded(crate::change_row::change_id(0, commit, 0)),
        )]
    };
    let mut sealed = Vec::new();
    for (database, upper) in bounds {
        sealed.extend(seal_stored(client, stored, &database, upper, None).await?);
    }
    Ok(sealed)
}
