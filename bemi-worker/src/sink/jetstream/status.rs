//! `status` of the JetStream stage: what the stream holds and how far ingest is behind.

use std::fmt;

use async_nats::jetstream;

use crate::Result;
use crate::sink::jetstream::{NatsOptions, nats_error};

/// The stream's and the ingest consumer's state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsStatus {
    /// The stream's name.
    pub stream: String,
    /// Changes held by the stream.
    pub messages: u64,
    /// Bytes held by the stream.
    pub bytes: u64,
    /// The consumer's name.
    pub consumer: String,
    /// Changes not yet delivered to any ingest process (`None`: no consumer yet).
    pub pending: Option<u64>,
    /// Changes delivered and not yet acknowledged.
    pub ack_pending: Option<usize>,
    /// Changes delivered more than once and not yet acknowledged.
    pub redelivered: Option<usize>,
    /// Deliveries since the consumer was created, redeliveries included.
    pub deliveries: Option<u64>,
}

impl fmt::Display for NatsStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "JetStream stream {}: {} changes, {} bytes",
            self.stream, self.messages, self.bytes
        )?;
        match (
            self.pending,
            self.ack_pending,
            self.redelivered,
            self.deliveries,
        ) {
            (Some(pending), Some(ack_pending), Some(redelivered), Some(deliveries)) => writeln!(
                f,
                "ingest consumer {}: {pending} pending, {ack_pending} delivered and unacknowledged, {redelivered} of them redelivered, {deliveries} deliveries in all",
                self.consumer
            ),
            _ => writeln!(
                f,
                "ingest consumer {}: not created yet (no ingest process has run)",
                self.consumer
            ),
        }
    }
}

/// Reads the stream's and the consumer's state, creating nothing.
///
/// # Errors
///
/// When NATS is unreachable or the stream does not exist.
pub async fn nats_status(options: &NatsOptions) -> Result<NatsStatus> {
    let client = crate::sink::jetstream::connect(options).await?;
    let context = jetstream::new(client);
    let mut stream = context
        .get_stream(&options.stream)
        .await
        .map_err(nats_error(format!(
            "open the JetStream stream {} (capture creates it)",
            options.stream
        )))?;
    let info = stream
        .info()
        .await
        .map_err(nats_error("read the stream's state"))?;
    let (messages, bytes) = (info.state.messages, info.state.bytes);
    let consumer = stream.consumer_info(&options.consumer).await.ok();
    Ok(NatsStatus {
        stream: options.stream.clone(),
        messages,
        bytes,
        consumer: options.consumer.clone(),
        pending: consumer.as_ref().map(|info| info.num_pending),
        ack_pending: consumer.as_ref().map(|info| info.num_ack_pending),
        redelivered: consumer.as_ref().map(|info| info.num_redelivered),
        deliveries: consumer
            .as_ref()
            .map(|info| info.delivered.consumer_sequence),
    })
}
