//! Anchors in a NATS JetStream stream: each seal's hash published as one message, in a stream
//! made to refuse deletion and purging (`deny_delete`, `deny_purge`, limits retention without
//! age), so that whoever administers the database, and anyone with only publish rights on the
//! subject, cannot take an anchor back. `verify --anchor-nats-url` reads every message of the
//! stream back and checks each anchored block as the anchor file's.

use async_nats::jetstream::{self, stream::RetentionPolicy, stream::StorageType};

use crate::seal::anchor::Anchor;
use crate::sink::jetstream::{NatsOptions, connect, nats_error};
use crate::{Error, Result};

/// The default stream of anchors.
pub const DEFAULT_ANCHOR_STREAM: &str = "BEMI_ANCHORS";

/// The default subject of anchors.
pub const DEFAULT_ANCHOR_SUBJECT: &str = "bemi.anchors";

/// A connection publishing anchors.
#[derive(Debug)]
pub(crate) struct NatsAnchors {
    jetstream: jetstream::Context,
    subject: String,
}

/// The anchors stream (`options.stream` on `options.subject`), created if missing.
async fn anchor_stream(
    jetstream: &jetstream::Context,
    options: &NatsOptions,
) -> Result<jetstream::stream::Stream> {
    jetstream
        .get_or_create_stream(jetstream::stream::Config {
            name: options.stream.clone(),
            subjects: vec![options.subject.clone()],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: options.replicas.max(1),
            deny_delete: true,
            deny_purge: true,
            description: Some("bemi seal anchors: never deleted".to_owned()),
            ..Default::default()
        })
        .await
        .map_err(nats_error(format!(
            "create or open the anchors stream {}",
            options.stream
        )))
}

impl NatsAnchors {
    /// Connects and makes sure the anchors stream exists.
    pub(crate) async fn connect(options: &NatsOptions) -> Result<Self> {
        let jetstream = jetstream::new(connect(options).await?);
        anchor_stream(&jetstream, options).await?;
        Ok(Self {
            jetstream,
            subject: options.subject.clone(),
        })
    }

    /// Publishes `anchor` and waits until JetStream stored it.
    pub(crate) async fn publish(&self, anchor: &Anchor) -> Result<()> {
        let payload = serde_json::to_vec(anchor)
            .map_err(|error| Error::Protocol(format!("encode an anchor: {error}")))?;
        self.jetstream
            .publish(self.subject.clone(), payload.into())
            .await
            .map_err(nats_error("publish a seal's anchor"))?
            .await
            .map_err(nats_error("have JetStream store a seal's anchor"))?;
        Ok(())
    }
}

/// Every anchor of the stream, with the sequences of the messages that are not anchors.
pub(crate) async fn read(options: &NatsOptions) -> Result<(Vec<Anchor>, Vec<u64>)> {
    let jetstream = jetstream::new(connect(options).await?);
    let mut stream = anchor_stream(&jetstream, options).await?;
    let state = stream
        .info()
        .await
        .map_err(nats_error("read the anchors stream's state"))?
        .state
        .clone();
    let (mut anchors, mut unreadable) = (Vec::new(), Vec::new());
    if state.messages == 0 {
        return Ok((anchors, unreadable));
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let message = stream
            .get_raw_message(sequence)
            .await
            .map_err(nats_error("read an anchor"))?;
        match serde_json::from_slice::<Anchor>(&message.payload) {
            Ok(anchor) => anchors.push(anchor),
            Err(_) => unreadable.push(sequence),
        }
    }
    Ok((anchors, unreadable))
}
